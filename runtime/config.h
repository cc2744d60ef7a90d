/* runtime/config.h - the run configuration: every section and key, with defaults and help.
 *
 * Files are TOML-style (sections, `key = value`, `#` comments) read with libinih; values may
 * be quoted strings, numbers or true/false. Overrides: `--set section.key=value`.
 * Every key is validated before anything is allocated; an unknown key is an error naming the
 * nearest valid key.
 *
 * Calling sequence:
 *   Config c; config_defaults(&c);
 *   config_load(&c, path);                 (DIE on a bad file/key/value)
 *   config_set(&c, "optim.lr=1e-3") ...    (DIE likewise)
 *   config_validate(&c);                   (DIE on the first inconsistency, naming keys)
 *   config_write(&c, f);                   (the resolved config; config_load reads it back)
 *
 * Sections and their X-macro key lists (model keys live in model/config.h):
 *   [model] [model.rope_scaling] [train] [optim] [moe] [mtp] [data] [parallel] [cluster]
 */
#ifndef DSTRAIN_RUNTIME_CONFIG_H
#define DSTRAIN_RUNTIME_CONFIG_H

#include <stdio.h>
#include <string.h>

#include "../model/config.h"

#define TRAIN_KEYS(X) \
    X(STR, name, "run", "run name: output goes to <run_dir>/<name>/") \
    X(STR, run_dir, "runs", "directory holding run directories") \
    X(I64, seed, "1337", "seed of weights init, data order and every other random choice") \
    X(INT, steps, "100", "optimizer steps to run") \
    X(INT, micro_batch_size, "4", "sequences per micro-batch B") \
    X(INT, seq_len, "64", "tokens per sequence T") \
    X(INT, grad_accum, "1", "micro-batches per optimizer step (per data-parallel rank), at most 2^20") \
    X(INT, batch_ramp_start, "0", "batch-size ramp: micro-batches per step at the start (0: no ramp)") \
    X(I64, batch_ramp_tokens, "0", "batch-size ramp: tokens over which they grow linearly to grad_accum") \
    X(STR, device, "cpu", "compute backend: cpu or cuda") \
    X(STR, precision, "fp32", "fp32, bf16 or fp8 (emulated on cpu)") \
    X(INT, threads, "0", "CPU threads, at most 1024 (0: all cores)") \
    X(INT, log_every, "1", "print a metrics line every N steps") \
    X(INT, val_every, "50", "validation loss every N steps (0: only at the end)") \
    X(INT, val_batches, "8", "micro-batches per validation (>= 1)") \
    X(STR, bf16_moments, "auto", "store AdamW moments rounded to BF16: true, false, or auto (true under " \
      "precision bf16 and fp8, the FP8 recipe's BF16 moments; false at fp32)") \
    X(BOOL, recompute, "false", "drop RMSNorm and MLA up-projection outputs, recompute them in backward") \
    X(INT, checkpoint_every, "0", "save a checkpoint every N steps (0: only at the end)") \
    X(INT, keep_checkpoints, "3", "checkpoints kept in the run directory") \
    X(STR, trace_steps, "", "steps to record in <run>/trace.json (Perfetto), e.g. \"5,6\" or \"3-5\" (empty: none)") \
    X(INT, max_failed_saves, "3", "failed checkpoint saves in a row that stop the run (exit 74)") \
    X(INT, max_bad_steps, "5", "non-finite (skipped) steps in a row that stop the run (exit 3)") \
    X(F64, spike_factor, "4", "report a loss above this multiple of its running mean (0: off)") \
    X(F64, watchdog_s, "0", "abort the job when a step or collective takes longer (s; 0: off)") \
    X(INT, sdc_every, "0", "compare the DP replicas' weight checksums every N steps (0: off)") \
    X(F64, ema_decay, "0", "EMA of the weights on the host, decay per step (0: off; e.g. 0.999)")

#define OPTIM_KEYS(X) \
    X(F64, lr, "1e-3", "peak learning rate") \
    X(F64, lr_min, "1e-4", "learning-rate floor reached by the cosine decay") \
    X(INT, warmup_steps, "10", "linear warm-up steps from 0 to lr") \
    X(INT, constant_steps, "0", "steps at lr after warm-up before the cosine decay") \
    X(INT, decay_steps, "0", "cosine decay steps down to lr_min (0: until the last step)") \
    X(F64, beta1, "0.9", "AdamW beta1") \
    X(F64, beta2, "0.95", "AdamW beta2") \
    X(F64, eps, "1e-8", "AdamW epsilon") \
    X(F64, weight_decay, "0.1", "decoupled weight decay (not on norms or router bias)") \
    X(F64, grad_clip, "1.0", "clip the global gradient norm to this (0: off)")

#define MOE_KEYS(X) \
    X(F64, bias_update_speed, "0.001", "gamma: router bias step per optimizer step") \
    X(I64, bias_update_stop_tokens, "0", "tokens after which gamma becomes 0 (0: never)") \
    X(BOOL, bias_zero_mean, "false", "subtract the mean of each bias update") \
    X(F64, balance_alpha, "0.0001", "alpha: weight of the sequence-wise balance loss") \
    X(INT, max_nodes, "4", "node limit M for node-limited routing") \
    X(F64, capacity_factor, "4", "expert rows a rank keeps per MoE layer and micro-batch, as a multiple of the " \
      "mean B*T*K (at most parallel.ep x; 0: that worst case); more rows stop the run with an error")

#define MTP_KEYS(X) \
    X(F64, lambda, "0.3", "MTP loss weight lambda") \
    X(F64, lambda_later, "0.1", "MTP loss weight after lambda_switch_tokens") \
    X(I64, lambda_switch_tokens, "0", "tokens after which lambda_later applies (0: never)")

#define DATA_KEYS(X) \
    X(STR, dir, "data/synth", "directory of token shards (train_*.bin, val_*.bin) from dstrain prepare") \
    X(BOOL, synthetic, "false", "if dir has no shards, write the built-in synthetic corpus there first") \
    X(I64, synthetic_tokens, "2000000", "tokens of the synthetic corpus (train + val)")

#define PARALLEL_KEYS(X) \
    X(INT, pp, "1", "pipeline-parallel stages") \
    X(INT, dp, "1", "data-parallel ranks") \
    X(INT, ep, "1", "expert-parallel ranks (divides dp)") \
    X(STR, schedule, "1f1b", "pipeline schedule: 1f1b, zb1p, dualpipe, dualpipev (C: train.grad_accum)")

/* [cluster]: the machine a run is planned for (dstrain plan); figures per GPU. */
#define CLUSTER_KEYS(X) \
    X(INT, gpus_per_node, "8", "GPUs per node (ranks sharing NVLink)") \
    X(INT, nodes, "1", "nodes in the job") \
    X(F64, peak_tflops_bf16, "989", "dense BF16 peak TFLOP/s per GPU") \
    X(F64, peak_tflops_fp8, "1979", "dense FP8 peak TFLOP/s per GPU") \
    X(F64, hbm_gib, "80", "GPU memory GiB") \
    X(F64, nvlink_gbps, "160", "NVLink bandwidth per GPU, GB/s") \
    X(F64, ib_gbps, "50", "InfiniBand bandwidth per GPU, GB/s") \
    X(F64, nvlink_latency_us, "2", "NVLink latency per message, microseconds") \
    X(F64, ib_latency_us, "5", "InfiniBand latency per message, microseconds") \
    X(F64, mfu, "0.35", "assumed model FLOPs utilisation for time estimates")

typedef struct TrainConfig { TRAIN_KEYS(CONFIG_FIELD) } TrainConfig;
typedef struct OptimConfig { OPTIM_KEYS(CONFIG_FIELD) } OptimConfig;
typedef struct MoeConfig { MOE_KEYS(CONFIG_FIELD) } MoeConfig;
typedef struct MtpConfig { MTP_KEYS(CONFIG_FIELD) } MtpConfig;
typedef struct DataConfig { DATA_KEYS(CONFIG_FIELD) } DataConfig;
typedef struct ParallelConfig { PARALLEL_KEYS(CONFIG_FIELD) } ParallelConfig;
typedef struct ClusterConfig { CLUSTER_KEYS(CONFIG_FIELD) } ClusterConfig;

typedef struct Config {
    ModelConfig model;
    TrainConfig train;
    OptimConfig optim;
    MoeConfig moe;
    MtpConfig mtp;
    DataConfig data;
    ParallelConfig parallel;
    ClusterConfig cluster;
} Config;

/* Every section once: S(section name in files, member of Config, key list, struct type).
 * config.c iterates this; adding a section is one line here. */
#define CONFIG_SECTIONS(S) \
    S("model", model, MODEL_KEYS, ModelConfig) \
    S("model.rope_scaling", model.rope_scaling, ROPE_SCALING_KEYS, RopeScaling) \
    S("train", train, TRAIN_KEYS, TrainConfig) \
    S("optim", optim, OPTIM_KEYS, OptimConfig) \
    S("moe", moe, MOE_KEYS, MoeConfig) \
    S("mtp", mtp, MTP_KEYS, MtpConfig) \
    S("data", data, DATA_KEYS, DataConfig) \
    S("parallel", parallel, PARALLEL_KEYS, ParallelConfig) \
    S("cluster", cluster, CLUSTER_KEYS, ClusterConfig)

/* train.bf16_moments resolved (config_validate has checked it is auto, true or false) */
static inline int train_bf16_moments(const TrainConfig *t)
{
    return !strcmp(t->bf16_moments, "auto") ? strcmp(t->precision, "fp32") != 0 : !strcmp(t->bf16_moments, "true");
}

void config_defaults(Config *c);
/* Reads an ini/TOML-style file over what c holds. DIE: missing file, syntax error (line
 * number), unknown section or key (with the nearest valid one), unparsable value. */
void config_load(Config *c, const char *path);
/* The same from text in memory (a config stored in a checkpoint); origin names it in
 * messages in place of a file name. */
void config_load_text(Config *c, const char *text, const char *origin);
/* One override "section.key=value" (section may contain dots: model.rope_scaling.factor). */
void config_set(Config *c, const char *assignment);
/* DIE on the first inconsistency, naming the key(s) and value(s). */
void config_validate(const Config *c);
/* Under parallel.pp > 1, a step whose micro-batches are fewer than the schedule takes is split
 * into the fewest micro-batches it takes that divide its sequences (micro_batch_size and
 * grad_accum change, their product stays; val_batches keeps the validation sequences). 1 and a
 * one-line note when it changed c; 0 when nothing needed fitting or nothing fits (then
 * config_validate refuses the layout). Before config_validate (runtime/config_fit.c). */
int config_fit_pipeline(Config *c, char *note, size_t n);
/* The resolved config in the file format, every key. */
void config_write(const Config *c, FILE *f);
/* Every section and key with its default and meaning, for --help. */
void config_print_help(FILE *f);

#endif
