/* runtime/export.c - `dstrain export --ckpt DIR --out DIR`: a checkpoint's FP32 weights as a
 * Hugging Face model directory (config.json + safetensors, layout in
 * checkpoint/safetensors.h) that transformers' DeepseekV3ForCausalLM loads.
 * Not here: the formats themselves (checkpoint/hf_export.c, checkpoint/safetensors.c) or
 * the optimizer moments (an export holds weights only).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint/ckpt.h"
#include "../checkpoint/ckpt_config.h"
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
               "--ema exports the EMA of the weights (a run with train.ema_decay > 0) instead.\n",
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
    float *params = xmalloc(t.total * sizeof(float));   /* (t.total) FP32 master weights */
    CkptState s;   /* ckpt_load verifies every checksum first */
    if (ckpt_load(a.ckpt, &t, params, NULL, NULL, &s, err, sizeof err) != 0) DIE("export: %s", err);
    int rc = a.ema ? ckpt_load_ema(a.ckpt, &t, params, err, sizeof err) : 0;
    if (rc < 0) DIE("export: %s", err);
    if (rc > 0) DIE("export: checkpoint '%s' holds no EMA (train with train.ema_decay > 0)", a.ckpt);
    double t0 = now_seconds();
    if (hf_export(a.out, &c.model, &t, params, a.shard_bytes, err, sizeof err) != 0) DIE("export: %s", err);
    printf("exported %sstep %d (%zu weights, %.1f MiB FP32) from '%s' to '%s' in %.2f s\n",
           a.ema ? "the EMA of " : "", s.step, t.total,
           t.total * sizeof(float) / 1048576.0, a.ckpt, a.out, now_seconds() - t0);
    free(params);
    params_free(&t);
    return 0;
}
