/* tests/tools/ckpt_compare.c - are two checkpoints of the same model bit-identical?
 * Usage: ckpt_compare CKPT_A CKPT_B. Loads both (each verified by ckpt_load) into host buffers
 * sized by the parameter table built from A's config, and compares master weights, AdamW
 * moments and the training state bit for bit. Prints the first differing tensor; exit 0 when
 * identical, 1 when they differ, 2 on a load error. A test tool, not part of dstrain. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/ckpt_config.h"
#include "model/params.h"
#include "runtime/common.h"
#include "runtime/config.h"


int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: ckpt_compare CKPT_A CKPT_B\n");
        return 2;
    }
    Config c;
    char cerr[1024];
    if (ckpt_load_config(argv[1], &c, cerr, sizeof cerr) != 0) {
        fprintf(stderr, "ckpt_compare: %s\n", cerr);
        return 2;
    }
    ParamTable t;
    params_build(&t, &c.model);
    float *buf[2][3];
    CkptState st[2];
    for (int k = 0; k < 2; k++) {
        char err[1024];
        for (int j = 0; j < 3; j++) buf[k][j] = xmalloc(t.total * sizeof(float));
        if (ckpt_load(argv[1 + k], &t, buf[k][0], buf[k][1], buf[k][2], &st[k], err, sizeof err) != 0) {
            fprintf(stderr, "ckpt_compare: %s\n", err);
            return 2;
        }
    }
    static const char *what[3] = { "weight", "exp_avg", "exp_avg_sq" };
    int differ = 0;
    for (int i = 0; i < t.n && !differ; i++)
        for (int j = 0; j < 3 && !differ; j++)
            if (memcmp(buf[0][j] + t.p[i].offset, buf[1][j] + t.p[i].offset, t.p[i].numel * sizeof(float))) {
                printf("differ: %s (%s)\n", t.p[i].name, what[j]);
                differ = 1;
            }
    if (!differ && (st[0].step != st[1].step || st[0].tokens != st[1].tokens || st[0].rng != st[1].rng ||
                    st[0].data.seed != st[1].data.seed || st[0].data.cursor != st[1].data.cursor)) {
        printf("differ: training state\n");
        differ = 1;
    }
    if (!differ) printf("identical: %d tensors, step %d\n", t.n, st[0].step);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++) free(buf[k][j]);
    params_free(&t);
    return differ;
}
