/* runtime/train_cmd.c - `dstrain train CONFIG [--set section.key=value ...] [--resume
 * latest|DIR]`: arguments, the run directory, resume with a compatibility check, the
 * start-up report (build, sizes, memory plan, the MFU peak), then the loop of train.c.
 * Under MPI it lays out the groups from [parallel] (data, expert and pipeline parallelism;
 * pipelines in runtime/train_pp.h) and silences stdout on every rank but the root,
 * so the job prints one report and one line per step.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../checkpoint/ckpt_config.h"
#include "../checkpoint/safetensors.h"
#include "../comm/watchdog.h"
#include "../model/flops.h"
#include "commands.h"
#include "common.h"
#include "gpu_peak.h"
#include "guard.h"
#include "plan.h"
#include "train.h"
#include "train_pp.h"
#ifdef DSTRAIN_HAVE_CUDA
#include "../kernels/cuda/cuda_ops.h"
#endif

typedef struct TrainArgs {
    const char *config;
    const char *resume;         /* NULL, "latest", "auto" or a checkpoint directory */
    const char *init_from;      /* NULL or a Hugging Face model directory (dstrain export) */
    int n_sets;
    char **sets;
} TrainArgs;

static World *the_world;

void train_set_world(World *w)
{
    the_world = w;
}

/* The groups of [parallel] over the world (a layout the world cannot hold ends every rank with
 * one message from rank 0). */
static Groups *make_groups(World *w, const ParallelConfig *p)
{
    return groups_create(w, p->pp, p->dp, p->ep);
}

static void train_usage(FILE *f)
{
    fprintf(f,
            "usage: dstrain train CONFIG [--set section.key=value ...] [--resume auto|latest|DIR]\n"
            "                            [--init-from HF_DIR]\n"
            "\n"
            "Trains the model CONFIG describes; output goes to <train.run_dir>/<train.name>/:\n"
            "config.toml (resolved), metrics.jsonl, log.txt, ckpt-<step>/.\n"
            "  --set section.key=value   override one config key (repeatable)\n"
            "  --resume latest           continue from the newest checkpoint of the run that verifies\n"
            "  --resume auto             the same, or start fresh when the run has no checkpoint yet\n"
            "                            (for requeued batch jobs)\n"
            "  --resume DIR              continue from checkpoint directory DIR\n"
            "  --init-from HF_DIR        start from the weights of a Hugging Face DeepseekV3 directory\n"
            "                            (dstrain export or transformers save_pretrained); its\n"
            "                            config.json must match the [model] keys; MTP modules it\n"
            "                            lacks start fresh (a transformers save has none)\n"
            "\n"
            "SIGTERM, SIGINT or SIGUSR1 (e.g. sbatch --signal=USR1@120) stops the run at the end of the\n"
            "step: every rank saves the checkpoint of that step and the run exits with status 75; a\n"
            "second signal ends it at once. Under mpirun send SIGUSR1 to mpirun (it forwards it) or\n"
            "the signal to the ranks; mpirun itself ends a job hard on SIGTERM. One trainer at a time\n"
            "uses a run directory (flock on <run>/lock; a second one is refused).\n"
            "exit status: 0 done; 1 bad input or environment, or the run directory is in use;\n"
            "  3 diverged (train.max_bad_steps non-finite steps in a row; their updates were skipped);\n"
            "  4 hung (an operation took longer than train.watchdog_s);\n"
            "  5 silent data corruption (the data-parallel replicas' weights differ; train.sdc_every);\n"
            "  74 checkpoint saves failed (train.max_failed_saves in a row, or the final one);\n"
            "  75 stopped by a signal, checkpoint saved: resumable with --resume auto;\n"
            "  128+N killed by signal N (a second stop signal)\n"
            "\nconfig keys (section, key, type, default, meaning):\n");
    config_print_help(f);
}

static void parse_args(int argc, char **argv, TrainArgs *a)
{
    memset(a, 0, sizeof *a);
    a->sets = xcalloc((size_t)argc, sizeof(char *));
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            train_usage(stdout);
            exit(0);
        } else if (!strcmp(s, "--set") || !strcmp(s, "--resume") || !strcmp(s, "--init-from")) {
            if (i + 1 >= argc) DIE("train: '%s' needs a value (see dstrain train --help)", s);
            if (!strcmp(s, "--set")) a->sets[a->n_sets++] = argv[++i];
            else if (!strcmp(s, "--resume")) a->resume = argv[++i];
            else a->init_from = argv[++i];
        } else if (!strncmp(s, "--set=", 6)) {
            a->sets[a->n_sets++] = argv[i] + 6;
        } else if (s[0] == '-') {
            DIE("train: unknown option '%s' (see dstrain train --help)", s);
        } else if (a->config) {
            DIE("train: more than one config given ('%s' and '%s')", a->config, s);
        } else {
            a->config = s;
        }
    }
    if (!a->config) DIE("train: no config file given (usage: dstrain train CONFIG; try configs/tiny.toml)");
}

static char *config_to_text(const Config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) DIE("out of memory");
    config_write(c, f);
    fclose(f);
    return buf;
}


/* Resume compatibility: every [model] key must match; other changes are allowed and listed.
 * Walks the key lists of config.h, so no key is forgotten. */
#define CMP_INT(k) (pa->k != pb->k)
#define CMP_I64(k) (pa->k != pb->k)
#define CMP_BOOL(k) (pa->k != pb->k)
#define CMP_F64(k) (pa->k != pb->k)
#define CMP_STR(k) (strcmp(pa->k, pb->k) != 0)
#define CMP_KEY(type, key, def, help) \
    if (CMP_##type(key)) { changed++; report_change(sec, #key, strict); }
#define CMP_SECTION(name, member, KEYS, T) \
    { const char *sec = name; const T *pa = &a->member, *pb = &b->member; \
      int strict = !strncmp(sec, "model", 5); KEYS(CMP_KEY) }

static void report_change(const char *sec, const char *key, int strict)
{
    if (strict)
        DIE("resume: '%s.%s' differs between the checkpoint and the config; the model shape must match", sec, key);
    printf("resume: '%s.%s' changed from the checkpoint's config\n", sec, key);
}

static int config_compare(const Config *a, const Config *b)
{
    int changed = 0;
    CONFIG_SECTIONS(CMP_SECTION)
    return changed;
}

/* A ckpt-<N> entry (verified or not) in run_dir; interrupted saves (.tmp) do not count. */
static int has_checkpoint_dir(const char *run_dir)
{
    DIR *d = opendir(run_dir);
    if (!d) return 0;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        const char *p = e->d_name;
        if (strncmp(p, "ckpt-", 5) != 0 || !p[5]) continue;
        p += 5;
        while (*p >= '0' && *p <= '9') p++;
        found = *p == 0;
    }
    closedir(d);
    return found;
}

/* The checkpoint to resume from: a directory, the newest that verifies ("latest"), or that or
 * NULL for a fresh start when the run has no checkpoint directory at all ("auto"; one that
 * exists but does not verify is an error, never silently trained over). */
static char *resolve_resume(const char *resume, const char *run_dir, int root)
{
    if (!strcmp(resume, "auto") && !has_checkpoint_dir(run_dir)) {
        printf("resume: no checkpoint in '%s' yet; starting fresh (--resume auto)\n", run_dir);
        return NULL;
    }
    if (strcmp(resume, "latest") != 0 && strcmp(resume, "auto") != 0) {
        char err[1024];
        if (ckpt_verify(resume, err, sizeof err) != 0) DIE("resume: %s", err);
        return xstrdup(resume);
    }
    /* Why each newer checkpoint was skipped is a warning on stderr (root only: every rank
     * looks) when an older one is used, and the one error line (every reason joined by "; ")
     * when none verifies. */
    char dir[4096], *log = NULL;
    size_t log_len = 0;
    FILE *f = open_memstream(&log, &log_len);
    if (!f) DIE("out of memory");
    int rc = ckpt_find_latest(run_dir, dir, sizeof dir, f);
    fclose(f);
    if (rc == 0) {
        for (char *save = NULL, *line = strtok_r(log, "\n", &save); root && line; line = strtok_r(NULL, "\n", &save))
            fprintf(stderr, "resume: %s\n", line);
        free(log);
        return xstrdup(dir);
    }
    char joined[1800] = "";   /* fatal() holds 2048 bytes; a longer list is cut */
    for (char *save = NULL, *line = strtok_r(log, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        snprintf(joined + strlen(joined), sizeof joined - strlen(joined), "%s%s", *joined ? "; " : "", line);
    free(log);
    DIE("resume: %s (train without --resume to start fresh)", joined);
}

/* The MFU denominator of one rank. cuda: the device's datasheet dense BF16 peak
 * (runtime/gpu_peak.h; a measured GEMM through the BF16 copy path runs far under it, and MFU
 * against it would read 3-6x too high), named on the start-up line through peak_device;
 * elsewhere, and on a GPU the table does not know, the measured 1024^3 GEMM rate. */
static char peak_device[320];

static double mfu_peak_flops(Ops *o)
{
#ifdef DSTRAIN_HAVE_CUDA
    if (!strcmp(o->name, "cuda")) {
        CudaMemStats ms;
        cuda_memory_stats(o, &ms);
        const char *model;
        double tflops = gpu_dense_bf16_tflops(ms.device_name, &model);
        if (tflops > 0) {
            snprintf(peak_device, sizeof peak_device, " (%s: %s, dense BF16 peak %.0f TFLOP/s)", ms.device_name,
                     model, tflops);
            return tflops * 1e12;
        }
        snprintf(peak_device, sizeof peak_device, "%s", "");
        printf("peak: GPU '%s' is not in runtime/gpu_peak.c's table: MFU against a measured GEMM\n",
               ms.device_name);
    }
#endif
    return ops_measure_gemm_flops(o, 1024);
}

/* The recipe's compute copies (model_copies) beside dstrain plan's (its weights less the FP32
 * state), under bf16/fp8. They differ by two terms, both printed: plan counts a BF16 copy (2 B)
 * of every trained value, also those this code reads from the FP32 master (compute type FP32:
 * embedding, norms, router), and one scale per 128x128 block of each FP8 tensor, where the
 * model quantises per bound weight (gate and up fused, kv_a_proj as its latent and rope rows):
 * the same count when those dimensions are multiples of 128. */
static void print_copies_vs_plan(Trainer *t, const ParamTable *pt, double planned)
{
    ModelCopies mc;
    model_copies(t->model, &mc);
    size_t kept = 0, blocks = 0;
    for (int i = 0; i < pt->n; i++) {
        const Param *q = &pt->p[i];
        if (!q->trained) continue;
        WgtType type = params_compute_type(q, t->o->precision);
        if (type == WGT_FP32) kept += q->numel;
        if (type == WGT_FP8) blocks += (size_t)((q->rows + 127) / 128) * (size_t)((q->cols + 127) / 128);
    }
    const double mine = (double)model_copies_bytes(&mc);
    const double diff = 2.0 * kept + 4.0 * ((double)blocks - (double)mc.fp8_blocks);
    printf("  %-24s %10.0f bytes  (dstrain plan: %.0f bytes = these + 2 B x %zu values kept FP32 here + 4 B x "
           "(%zu - %zu) blocks per tensor less per weight: %s)\n", "compute copies (recipe)", mine, planned, kept,
           blocks, mc.fp8_blocks, mine + diff == planned ? "agrees" : "DIFFERS");
}

/* This rank's parameters + gradients + optimizer state beside dstrain plan's figure for the
 * same config and layout (runtime/plan.h: its ranks are alike within a stage). */
static void print_rank_state(Trainer *t, const ParamTable *pt)
{
    const double MiB = 1048576.0;
    const double mine = (2.0 * pt->total + shard_optim_floats(&t->shard)) * sizeof(float);
    Plan p;
    plan_compute(&p, &t->cfg);
    const PlanRank *r = &p.ranks[0];
    const double planned = r->weight_bytes + r->grad_bytes + r->optim_bytes;
    printf("  %-24s %10.3f MiB  (dstrain plan: %.3f MiB; %zu of the model's parameters here)\n",
           "params+grads+optimizer", mine / MiB, planned / MiB, pt->total);
    ModelMemory mm;
    model_memory(t->model, &mm);
    printf("  activations %zu + backward scratch %zu bytes (train.recompute = %s; dstrain plan: %.0f + %.0f bytes)\n",
           mm.acts, mm.scratch, t->cfg.train.recompute ? "true" : "false", p.build_act_bytes, p.build_scratch_bytes);
    if (t->o->precision != PREC_FP32)    /* plan's weights less the FP32 state */
        print_copies_vs_plan(t, pt, r->weight_bytes - 4.0 * (r->params - r->replicated - r->expert));
    plan_free(&p);
}

static void print_banner(Trainer *t)
{
    const Config *c = &t->cfg;
    const ParamTable *pt = trainer_table(t);
    ParamTable full;            /* the whole model (a rank may hold a selection of it) */
    params_build(&full, &c->model);
    double active = params_active(&full, &c->model);
    printf("%s", "dstrain train: ");
    printf("%s | device %s%s | %s\n", c->train.name, t->o->name, peak_device, c->train.precision);
    printf("model: %.2fM parameters (%.2fM active per token) | %d layers (%d dense) + %d MTP | "
           "%d experts top-%d | %.1f MFLOP/token (train)\n",
           full.total / 1e6, active / 1e6, c->model.num_hidden_layers, c->model.first_k_dense_replace,
           c->model.num_nextn_predict_layers, c->model.n_routed_experts, c->model.num_experts_per_tok,
           t->flops_per_token / 1e6);
    const int dp = t->groups->dp;
    if (dp > 1 && t->groups->pp == 1)
        printf("parallel: %d ranks | dp %d | ep %d (%d routed experts per rank)\n", dp, dp, t->groups->ep,
               c->model.n_routed_experts / t->groups->ep);
    if (t->groups->pp > 1)
        printf("parallel: %d ranks | pp %d | dp %d | ep %d | schedule %s | %d micro-batches per step\n",
               t->groups->pp * dp, t->groups->pp, dp, t->groups->ep, c->parallel.schedule, c->train.grad_accum);
    /* 64-bit: config_validate bounds the product by 2^32, past an int */
    printf("batch: %d micro-batches x %d sequences x %d tokens x %d dp ranks = %lld tokens/step\n",
           c->train.grad_accum, c->train.micro_batch_size, c->train.seq_len, dp,
           (long long)c->train.grad_accum * c->train.micro_batch_size * c->train.seq_len * dp);
    if (c->train.batch_ramp_start > 0)
        printf("batch ramp: %d micro-batches per step at the start, growing linearly to %d over %lld tokens "
               "(now %d)\n", c->train.batch_ramp_start, c->train.grad_accum, c->train.batch_ramp_tokens,
               train_accum_at(&c->train, t->tokens));
    if (!t->pp) {
        model_print_memory(t->model, stdout);
        printf("  %-24s %10.1f MiB  (AdamW m, v%s)\n", "optimizer state",
               shard_optim_floats(&t->shard) * sizeof(float) / 1048576.0, dp > 1 ? ": this rank's ZeRO-1 slice" : "");
        /* live saves stage nothing (the EMA's per-step weight download excepted) */
        const int live = trainer_saves_live(t);
        printf("  %-24s %10.1f MiB  (%s)\n", "checkpoint staging",
               (live ? (t->ema != NULL) : 3.0) * pt->total * sizeof(float) / 1048576.0,
               !live ? "weights and moments downloaded for checkpoints, touched at start-up"
               : t->ema ? "the EMA's weight download only: a save's writer process reads the live weights and "
                          "moments copy-on-write"
               : "none: a save's writer process reads the live weights and moments copy-on-write");
        memplan_print(&t->mem, &t->mem_limit, !strcmp(t->o->name, "cpu"), stdout);
        print_rank_state(t, pt);
    } else {    /* the stages' rows follow (pp_print_memory) */
        printf("  %-24s %10.1f MiB  (host snapshot of rank 0's stages for checkpoints)\n", "checkpoint staging",
               3.0 * pt->total * sizeof(float) / 1048576.0);
    }
    if (peak_device[0])
        printf("peak: datasheet dense BF16 %.1f TFLOP/s%s (the MFU denominator)\n", t->peak_flops / 1e12,
               dp > 1 ? ", summed over the dp ranks" : "");
    else
        printf("peak: measured %s GEMM %.1f GFLOP/s%s (the MFU denominator)\n", t->o->name, t->peak_flops / 1e9,
               dp > 1 ? ", summed over the dp ranks" : "");
    metrics_start(t->metrics, (double)full.total, active, t->flops_per_token,
                  (double)c->train.grad_accum * c->train.micro_batch_size * c->train.seq_len * dp, t->peak_flops);
    params_free(&full);
}

_Static_assert(TRAIN_EXIT_HUNG == WATCHDOG_EXIT, "the watchdog exit status is documented as TRAIN_EXIT_HUNG");

int cmd_train(int argc, char **argv)
{
    TrainArgs a;
    parse_args(argc, argv, &a);
    Config cfg;
    config_defaults(&cfg);
    config_load(&cfg, a.config);
    for (int i = 0; i < a.n_sets; i++) config_set(&cfg, a.sets[i]);
    char fit_note[512];
    const int fitted = config_fit_pipeline(&cfg, fit_note, sizeof fit_note);
    config_validate(&cfg);
    CHECK(the_world != NULL);
    /* these read and write the whole model's weights in one place, which a pipeline rank lacks */
    if (cfg.parallel.pp > 1 && (cfg.train.ema_decay > 0 || cfg.train.sdc_every > 0 || cfg.train.batch_ramp_start > 0))
        DIE("config: 'train.ema_decay', 'train.sdc_every' and 'train.batch_ramp_start' are not supported with "
            "'parallel.pp' = %d > 1 yet (set them to 0)", cfg.parallel.pp);
    /* the EMA lives on the root, which under per-rank checkpoints holds only its own experts */
    if (the_world->size > 1 && cfg.train.ema_decay > 0)
        DIE("config: 'train.ema_decay' = %g is not supported with more than one rank yet (set it to 0)",
            cfg.train.ema_decay);
    Groups *g = make_groups(the_world, &cfg.parallel);
    const int root = g->dp_rank == 0 && g->stage == 0;
    if (!root && !freopen("/dev/null", "w", stdout))
        DIE("cannot silence stdout of rank %d: %s", the_world->rank, strerror(errno));
    if (fitted) printf("%s\n", fit_note);

    guard_install_signals();   /* from here a stop signal is a flag, looked at after each step */
    char *run_dir = xasprintf("%s/%s", cfg.train.run_dir, cfg.train.name);
    int lock_fd = -1;
    int32_t locked = 1;
    char lock_err[1024] = "";
    if (root) {
        mkdir_p(run_dir);
        lock_fd = guard_lock_run_dir(run_dir, lock_err, sizeof lock_err);
        locked = lock_fd >= 0;
    }
    if (the_world->size > 1) comm_broadcast(the_world->comm, &locked, 1, COMM_I32, 0);   /* also the barrier after mkdir */
    if (!locked) world_exit_all(the_world, 1, "%s", lock_err);
    char *ckpt_dir = a.resume ? resolve_resume(a.resume, run_dir, root) : NULL;
    if (ckpt_dir) {
        char err[1024];
        Config old;
        if (ckpt_load_config(ckpt_dir, &old, err, sizeof err) != 0) DIE("resume: %s", err);
        int changed = config_compare(&old, &cfg);
        printf("resume: from '%s' (%d config key%s changed)\n", ckpt_dir, changed, changed == 1 ? "" : "s");
    }
    char *text = config_to_text(&cfg);
    char *cfg_path = xasprintf("%s/config.toml", run_dir);
    FILE *f = root ? fopen(cfg_path, "w") : NULL;
    if (root && (!f || fputs(text, f) < 0 || fclose(f) != 0))
        DIE("cannot write '%s': %s", cfg_path, strerror(errno));

    Trainer t;
    trainer_setup(&t, &cfg, text, run_dir, the_world, g);
    if (a.init_from && ckpt_dir) DIE("train: give --resume or --init-from, not both");
    if (ckpt_dir) trainer_resume(&t, ckpt_dir);
    if (a.init_from) trainer_init_from(&t, a.init_from);
    if (t.ema) trainer_init_ema(&t, ckpt_dir);
    if (root) t.metrics = metrics_open(run_dir, t.step);
    /* the MFU denominator is the job's: every rank takes its peak (measured: at the same time,
     * so ranks sharing cores are counted as they run) and the peaks add up */
    t.peak_flops = mfu_peak_flops(t.o);
    if (the_world->size > 1) comm_allreduce(the_world->comm, &t.peak_flops, 1, COMM_F64, COMM_SUM);
    if (root) print_banner(&t);
    if (t.pp) pp_print_memory(&t, stdout);     /* collective; the root's stdout prints */
    watchdog_start(cfg.train.watchdog_s, the_world->rank);
    int status = train_run(&t);
    watchdog_stop();
    trainer_free(&t);
    groups_free(g);
    guard_unlock(lock_fd);
    fflush(stdout);
    free(ckpt_dir);
    free(cfg_path);
    free(text);
    free(run_dir);
    free(a.sets);
    return status;
}

void trainer_resume(Trainer *t, const char *ckpt_dir)
{
    const ParamTable *pt = trainer_table(t);
    const size_t bytes = pt->total * sizeof(float);
    CkptState st;
    char err[1024];
    if (ckpt_load(ckpt_dir, pt, t->host_params, t->host_m, t->host_v, &st, err, sizeof err) != 0)
        DIE("resume: %s", err);
    if (t->pp) {
        pp_restore(t, st.step);
    } else {
        t->o->upload(t->o, model_params(t->model), t->host_params, bytes);
        shard_load_moments(&t->shard, t->o, t->host_m, t->host_v, st.step);
    }
    t->step = st.step;
    t->tokens = st.tokens;
    t->rng.state = st.rng;
    data_set_state(t->train, st.data);
    printf("resume: step %d, %lld tokens seen\n", t->step, t->tokens);
}

void trainer_init_ema(Trainer *t, const char *ckpt_dir)
{
    const ParamTable *pt = model_table(t->model);
    char err[1024];
    int rc = ckpt_dir ? ckpt_load_ema(ckpt_dir, pt, t->ema, err, sizeof err) : 1;
    if (rc < 0) DIE("resume: %s", err);
    if (rc == 0) {
        printf("ema: resumed from '%s'\n", ckpt_dir);
        return;
    }
    t->o->download(t->o, t->ema, model_params(t->model), pt->total * sizeof(float));
    printf("ema: starts from the %s weights (decay %g per step)\n", ckpt_dir ? "resumed" : "initial",
           t->cfg.train.ema_decay);
}

/* Weights from a Hugging Face directory (safetensors by parameter name); the optimizer and
 * the schedules start fresh. Its config.json, when there, must describe the same model as the
 * TOML (hf_config_check names the first key that differs), and the routing must be one
 * transformers computes as dstrain does (the export rule). Every tensor of the table must be
 * there (hf_import names the first one missing), except the MTP modules, which a transformers
 * save_pretrained never holds: without any of them they start from the table's init rules
 * (the weights a fresh run of this seed would have). */
void trainer_init_from(Trainer *t, const char *hf_dir)
{
    const ParamTable *pt = trainer_table(t);
    const ModelConfig *mc = &t->cfg.model;
    char err[1024], *json = xasprintf("%s/config.json", hf_dir);
    if (hf_check_router("init-from", mc, err, sizeof err) != 0) DIE("%s", err);
    int has_json = access(json, F_OK) == 0;
    if (has_json && hf_config_check(json, mc, err, sizeof err) != 0) DIE("%s", err);
    params_init(pt, mc, t->host_params, (unsigned long long)t->cfg.train.seed);
    int mtp_fresh = 0;
    if (hf_import_tensors(hf_dir, pt, t->host_params, &mtp_fresh, err, sizeof err) != 0) DIE("init-from: %s", err);
    if (t->pp) {    /* every stage's weights; fresh (zero) moments */
        memset(t->host_m, 0, pt->total * sizeof(float));
        memset(t->host_v, 0, pt->total * sizeof(float));
        pp_restore(t, 0);
    } else {
        t->o->upload(t->o, model_params(t->model), t->host_params, pt->total * sizeof(float));
    }
    printf("init-from: %zu parameters from '%s'%s\n", pt->total, hf_dir,
           has_json ? ", config.json matches the config" : " (no config.json to compare)");
    if (mtp_fresh)
        printf("init-from: '%s' holds no MTP weights (a transformers save never does): the %d MTP module%s "
               "start fresh (init std %g, seed %lld)\n", hf_dir, mc->num_nextn_predict_layers,
               mc->num_nextn_predict_layers == 1 ? "" : "s", mc->initializer_range, (long long)t->cfg.train.seed);
    free(json);
}
