/* tests/tools/ckpt_compare.c - are two checkpoints of the same model identical, or close?
 * Usage: ckpt_compare CKPT_A CKPT_B [TOL]. Loads both (each verified by ckpt_load) into host
 * buffers sized by the parameter table built from A's config, and checks the training state
 * (step, tokens, data seed and cursor, rng) for equality.
 *   without TOL: master weights, AdamW moments and state bit for bit (the resume tests);
 *   with TOL: for every tensor the largest weight difference relative to the tensor's scale,
 *       d = max_i |a_i - b_i| / max_i |a_i|     (0 for an all-zero tensor of A equal in B),
 *     must be <= TOL (relative to the tensor, not element by element: elements near zero
 *     would make an element-wise ratio meaningless; the parallel-equals-serial tests).
 * Prints what it found; exit 0 when the check holds, 1 when not, 2 on a load error or bad
 * usage. A test tool, not part of dstrain. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/ckpt_config.h"
#include "model/params.h"
#include "runtime/common.h"
#include "runtime/config.h"

/* d of the tensor above for n floats of a and b. */
static double tensor_diff(const float *a, const float *b, size_t n)
{
    double scale = 0, diff = 0;
    for (size_t i = 0; i < n; i++) {
        scale = fmax(scale, fabs((double)a[i]));
        diff = fmax(diff, fabs((double)a[i] - (double)b[i]));
    }
    if (diff == 0) return 0;
    return scale > 0 ? diff / scale : INFINITY;
}

/* The first tensor (weight or moment) that differs in any bit, printed; 1 if one does. */
static int bitwise_differ(const ParamTable *t, float *buf[2][3])
{
    static const char *what[3] = { "weight", "exp_avg", "exp_avg_sq" };
    for (int i = 0; i < t->n; i++)
        for (int j = 0; j < 3; j++)
            if (memcmp(buf[0][j] + t->p[i].offset, buf[1][j] + t->p[i].offset, t->p[i].numel * sizeof(float))) {
                printf("differ: %s (%s)\n", t->p[i].name, what[j]);
                return 1;
            }
    return 0;
}

/* The largest d over the tensors, printed; 1 if it exceeds tol. */
static int not_close(const ParamTable *t, float *buf[2][3], double tol)
{
    double worst = 0;
    int worst_i = 0;
    for (int i = 0; i < t->n; i++) {
        double d = tensor_diff(buf[0][0] + t->p[i].offset, buf[1][0] + t->p[i].offset, t->p[i].numel);
        if (d > worst || isnan(d)) {
            worst = d;
            worst_i = i;
        }
    }
    printf("largest weight difference %.3e of the tensor's scale (%s), tolerance %.3e\n", worst,
           t->p[worst_i].name, tol);
    return !(worst <= tol);
}

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: ckpt_compare CKPT_A CKPT_B [TOL]\n");
        return 2;
    }
    Config c;
    char err[1024];
    if (ckpt_load_config(argv[1], &c, err, sizeof err) != 0) {
        fprintf(stderr, "ckpt_compare: %s\n", err);
        return 2;
    }
    ParamTable t;
    params_build(&t, &c.model);
    float *buf[2][3];
    CkptState st[2];
    for (int k = 0; k < 2; k++) {
        for (int j = 0; j < 3; j++) buf[k][j] = xmalloc(t.total * sizeof(float));
        if (ckpt_load(argv[1 + k], &t, buf[k][0], buf[k][1], buf[k][2], &st[k], err, sizeof err) != 0) {
            fprintf(stderr, "ckpt_compare: %s\n", err);
            return 2;
        }
    }
    int differ = argc == 4 ? not_close(&t, buf, atof(argv[3])) : bitwise_differ(&t, buf);
    int same_state = st[0].step == st[1].step && st[0].tokens == st[1].tokens && st[0].rng == st[1].rng &&
                     st[0].data.seed == st[1].data.seed && st[0].data.cursor == st[1].data.cursor;
    if (!same_state) printf("differ: training state\n");
    else if (!differ && argc == 3) printf("identical: %d tensors, step %d\n", t.n, st[0].step);
    for (int k = 0; k < 2; k++)
        for (int j = 0; j < 3; j++) free(buf[k][j]);
    params_free(&t);
    return differ || !same_state;
}
