/* tests/tools/ckpt_synth.c - a per-rank checkpoint of a large model without training it.
 * Usage: ckpt_synth CONFIG RUN_DIR DP EP [section.key=value ...]
 * Writes RUN_DIR/ckpt-1 as a job at (DP, EP) writes it (issue 14; runtime/ckpt_shard.c): DP
 * rank files, rank r holding the routed experts of EP slice r % EP and the row blocks
 * ckpt_shard_blocks gives it, through the same multi-rank save protocol (ckpt_save_begin,
 * ckpt_save_rank per rank, ckpt_save_commit). The weights are the model's initial weights
 * (params_init with train.seed, seeded per tensor, so every selection holds the values the
 * full table would); no optimizer moments. The ranks are written one after another in this
 * process, each from a buffer of its own selection only, so the tool's memory is a rank's
 * share of the model, not the model: tests/cli/test_export_stream.sh makes a checkpoint
 * larger than the memory limit it then exports under. A test tool, not part of dstrain.
 * Exit 0 on success; 1 with one line on stderr otherwise. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/ckpt.h"
#include "model/params.h"
#include "runtime/ckpt_shard.h"
#include "runtime/common.h"
#include "runtime/config.h"

static char *config_text(const Config *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) DIE("ckpt_synth: out of memory");
    config_write(c, f);
    if (fclose(f) != 0) DIE("ckpt_synth: out of memory");
    return text;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: ckpt_synth CONFIG RUN_DIR DP EP [section.key=value ...]\n");
        return 1;
    }
    Config c;
    config_defaults(&c);
    config_load(&c, argv[1]);
    for (int i = 5; i < argc; i++) config_set(&c, argv[i]);
    const int dp = atoi(argv[3]), ep = atoi(argv[4]);
    if (dp < 1 || ep < 1 || dp % ep || c.model.n_routed_experts % ep)
        DIE("ckpt_synth: DP = %d, EP = %d: EP must divide DP and n_routed_experts = %d", dp, ep,
            c.model.n_routed_experts);
    c.parallel.dp = dp;
    c.parallel.ep = ep;
    config_validate(&c);
    char *text = config_text(&c), err[1024];
    ParamTable full, *tables = xcalloc((size_t)ep, sizeof *tables);
    params_build(&full, &c.model);
    const int nl = c.model.n_routed_experts / ep;
    for (int e = 0; e < ep; e++)
        params_select(&tables[e], &full, ep > 1 ? e * nl : 0, ep > 1 ? nl : c.model.n_routed_experts, NULL, NULL);
    long long *blocks = xcalloc(2 * (size_t)dp * full.n + 1, sizeof(long long));
    CkptRankFile *files = xcalloc((size_t)dp, sizeof *files);
    CkptRequest req = { .run_dir = argv[2], .config_text = text, .state = { .step = 1, .tokens = 0 }, .keep = 0,
                        .layout = { dp, 1, dp, ep } };
    if (ckpt_save_begin(req.run_dir, 1, err, sizeof err)) DIE("ckpt_synth: %s", err);
    for (int r = 0; r < dp; r++) {
        const ParamTable *t = &tables[r % ep];
        long long *start = blocks + 2 * (size_t)r * full.n, *count = start + full.n;
        ckpt_shard_blocks(t, dp, r, ep, start, count);
        float *params = xmalloc(t->total * sizeof(float));
        params_init(t, &c.model, params, (unsigned long long)c.train.seed);
        req.table = t;
        req.params = params;
        req.rank = r;
        req.row_start = start;
        req.row_count = count;
        long long bytes = 0;
        uint64_t sum = 0;
        if (ckpt_save_rank(&req, &bytes, &sum, err, sizeof err)) DIE("ckpt_synth: %s", err);
        files[r] = (CkptRankFile){ r, bytes, sum, t, start, count };
        free(params);
    }
    static const float none = 0;
    req.params = &none;     /* the commit writes the manifest only (a request still names params) */
    req.table = &tables[0];
    if (ckpt_save_commit(&req, files, dp, err, sizeof err)) DIE("ckpt_synth: %s", err);
    printf("ckpt_synth: %s/ckpt-1: %d rank files (ep %d), %zu weights (%.1f MiB FP32)\n", req.run_dir, dp, ep,
           full.total, full.total * sizeof(float) / 1048576.0);
    for (int e = 0; e < ep; e++) params_free(&tables[e]);
    params_free(&full);
    free(blocks);
    free(files);
    free(text);
    return 0;
}
