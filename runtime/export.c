/* runtime/export.c - `dstrain export --ckpt DIR --out DIR`: a checkpoint's FP32 weights as a
 * Hugging Face model directory (config.json + safetensors, layout in
 * checkpoint/safetensors.h) that transformers' DeepseekV3ForCausalLM loads.
 * The checkpoint (any layout: per-rank files are gathered tensor by tensor, checkpoint/
 * ckpt_stream.h) is read one tensor at a time and each tensor written before the next is read,
 * so memory is the largest tensor plus fixed buffers, whatever the model's size (issue 14).
 * Not here: the formats themselves (checkpoint/hf_export.c, checkpoint/safetensors.c) or
 * the optimizer moments (an export holds weights only).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "../checkpoint/ckpt.h"
#include "../checkpoint/ckpt_config.h"
#include "../checkpoint/ckpt_stream.h"
#include "../checkpoint/safetensors.h"
#include "commands.h"
#include "common.h"
#include "config.h"

typedef struct ExportArgs {
    const char *ckpt, *out;
    size_t shard_bytes;
    int ema;                    /* --ema: the EMA of the weights instead of the weights */
} ExportArgs;

static void export_usage(FILE *f)
{
    fprintf(f, "usage: dstrain export --ckpt DIR --out DIR [--shard-bytes N] [--ema]\n"
               "Writes the checkpoint's weights as a Hugging Face model directory: config.json\n"
               "(DeepseekV3Config) and model.safetensors (FP32), split into\n"
               "model-0000k-of-0000n.safetensors + model.safetensors.index.json when the weights\n"
               "exceed --shard-bytes (default %zu = 2 GiB). Multi-token-prediction modules go to\n"
               "mtp.safetensors, outside what transformers loads. Under YaRN, config.json gives the\n"
               "cos/sin scale as rope_scaling.attention_factor. The checkpoint is verified first.\n"
               "--ema exports the EMA of the weights (a run with train.ema_decay > 0) instead.\n"
               "A checkpoint of any layout (per-rank files) is read and written one tensor at a time:\n"
               "memory stays near the largest tensor, whatever the model's size.\n",
            HF_DEFAULT_SHARD_BYTES);
}

static void parse_args(int argc, char **argv, ExportArgs *a)
{
    *a = (ExportArgs){ NULL, NULL, HF_DEFAULT_SHARD_BYTES, 0 };
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            export_usage(stdout);
            exit(0);
        }
        if (!strcmp(s, "--ema")) {
            a->ema = 1;
            continue;
        }
        if (s[0] != '-' || i + 1 >= argc) DIE("export: unexpected argument '%s' (see dstrain export --help)", s);
        const char *v = argv[++i];
        if (!strcmp(s, "--ckpt")) a->ckpt = v;
        else if (!strcmp(s, "--out")) a->out = v;
        else if (!strcmp(s, "--shard-bytes")) {
            char *end;
            errno = 0;
            unsigned long long x = strtoull(v, &end, 10);
            if (!*v || *end || errno || x < 1 || v[0] == '-')
                DIE("export: '--shard-bytes' = '%s' is not a positive integer", v);
            a->shard_bytes = (size_t)x;
        } else DIE("export: unknown option '%s' (see dstrain export --help)", s);
    }
    if (!a->ckpt) DIE("export: '--ckpt DIR' is required");
    if (!a->out) DIE("export: '--out DIR' is required");
}

/* Where hf_export_stream gets each tensor: read from the checkpoint into one buffer of the
 * largest tensor's size, so the export holds one tensor at a time (issue 14). Progress goes to
 * stdout every PROGRESS_S seconds of a long export. */
#define PROGRESS_S 5.0
typedef struct Fetch {
    CkptStream *s;
    const ParamTable *t;
    const char *suffix;         /* NULL: the weights; "ema" */
    float *buf;                 /* (largest numel) */
    int done;
    double bytes_done, t_last;
} Fetch;

static int fetch_tensor(void *ctx, const Param *p, const float **data, char *err, size_t errlen)
{
    Fetch *f = ctx;
    if (ckpt_stream_read(f->s, (int)(p - f->t->p), f->suffix, f->buf, err, errlen)) return -1;
    *data = f->buf;
    f->done++;
    f->bytes_done += (double)p->numel * sizeof(float);
    if (now_seconds() - f->t_last >= PROGRESS_S) {
        f->t_last = now_seconds();
        printf("export: tensor %d of %d (%.1f of %.1f GiB)\n", f->done, f->t->n, f->bytes_done / 1073741824.0,
               (double)f->t->total * sizeof(float) / 1073741824.0);
        fflush(stdout);
    }
    return 0;
}

/* Peak address space (VmPeak of /proc/self/status) in MiB, 0 where unknown. */
static double peak_address_mib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kib = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmPeak: %lld kB", &kib) == 1) break;
    if (f) fclose(f);
    return kib / 1024.0;
}

int cmd_export(int argc, char **argv)
{
    ExportArgs a;
    parse_args(argc, argv, &a);
    char err[1024];
    Config c;
    if (ckpt_load_config(a.ckpt, &c, err, sizeof err) != 0) DIE("export: %s", err);
    config_validate(&c);
    ParamTable t;
    params_build(&t, &c.model);
    size_t largest = 1;
    for (int i = 0; i < t.n; i++) largest = t.p[i].numel > largest ? t.p[i].numel : largest;
    double t0 = now_seconds();
    CkptStream *s = ckpt_stream_open(a.ckpt, &t, err, sizeof err);   /* verifies every checksum first */
    if (!s) DIE("export: %s", err);
    CkptStreamInfo info = ckpt_stream_info(s);
    if (a.ema && !info.has_ema) DIE("export: checkpoint '%s' holds no EMA (train with train.ema_decay > 0)", a.ckpt);
    Fetch f = { s, &t, a.ema ? "ema" : NULL, xmalloc(largest * sizeof(float)), 0, 0, now_seconds() };
    if (hf_export_stream(a.out, &c.model, &t, fetch_tensor, &f, a.shard_bytes, err, sizeof err) != 0)
        DIE("export: %s", err);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("exported %sstep %d (%zu weights, %.1f MiB FP32, from %d rank file%s) from '%s' to '%s' in %.2f s\n",
           a.ema ? "the EMA of " : "", info.step, t.total, t.total * sizeof(float) / 1048576.0, info.world_size,
           info.world_size == 1 ? "" : "s", a.ckpt, a.out, now_seconds() - t0);
    printf("export: one tensor at a time: largest %.1f MiB; peak resident %.1f MiB, peak address space %.1f MiB\n",
           largest * sizeof(float) / 1048576.0, ru.ru_maxrss / 1024.0, peak_address_mib());
    ckpt_stream_close(s);
    free(f.buf);
    params_free(&t);
    return 0;
}
