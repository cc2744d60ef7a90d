/* runtime/eval.c - `dstrain eval CONFIG --ckpt DIR [--set ...] [--batches N]`: held-out loss
 * of a checkpoint's weights on the validation split of CONFIG's data (main head and each MTP
 * module), with the source's entropy rate beside it when the data has one. The model shape
 * comes from CONFIG and must match the checkpoint (ckpt_load names any tensor that differs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint/ckpt.h"
#include "../model/model.h"
#include "commands.h"
#include "common.h"
#include "config.h"
#include "data.h"

static void eval_usage(FILE *f)
{
    fprintf(f, "usage: dstrain eval CONFIG --ckpt DIR [--set section.key=value ...] [--batches N]\n"
               "Mean validation loss (main and MTP) of the checkpoint's weights over N micro-batches\n"
               "(default: train.val_batches) of the val split of data.dir.\n");
}

int cmd_eval(int argc, char **argv)
{
    const char *config = NULL, *ckpt = NULL;
    int batches = -1;
    Config c;
    config_defaults(&c);
    char **sets = xcalloc((size_t)argc, sizeof(char *));
    int n_sets = 0;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) { eval_usage(stdout); free(sets); return 0; }
        if (s[0] != '-') {
            if (config) DIE("eval: more than one config given ('%s' and '%s')", config, s);
            config = s;
            continue;
        }
        if (i + 1 >= argc) DIE("eval: '%s' needs a value (see dstrain eval --help)", s);
        const char *v = argv[++i];
        if (!strcmp(s, "--ckpt")) ckpt = v;
        else if (!strcmp(s, "--set")) sets[n_sets++] = argv[i];
        else if (!strcmp(s, "--batches")) {
            char *end;
            long n = strtol(v, &end, 10);
            if (*end || n < 1 || n > 1000000) DIE("eval: '--batches' = '%s' is not an integer >= 1", v);
            batches = (int)n;
        } else DIE("eval: unknown option '%s' (see dstrain eval --help)", s);
    }
    if (!config) DIE("eval: no config file given (usage: dstrain eval CONFIG --ckpt DIR)");
    if (!ckpt) DIE("eval: '--ckpt DIR' is required");
    config_load(&c, config);
    for (int i = 0; i < n_sets; i++) config_set(&c, sets[i]);
    free(sets);
    config_validate(&c);
    if (batches < 0) batches = c.train.val_batches > 0 ? c.train.val_batches : 1;

    const int B = c.train.micro_batch_size, T = c.train.seq_len, D = c.model.num_nextn_predict_layers;
    Ops *o = ops_cpu_create(c.train.threads, PREC_FP32);
    Model *m = model_create(&c.model, o, B, T, 0);
    const ParamTable *pt = model_table(m);
    float *host = xmalloc(pt->total * sizeof(float));
    CkptState st;
    char err[1024];
    if (ckpt_load(ckpt, pt, host, NULL, NULL, &st, err, sizeof err) != 0) DIE("eval: %s", err);
    o->upload(o, model_params(m), host, pt->total * sizeof(float));
    free(host);

    DataLoader *val = data_open(c.data.dir, "val", B, T, c.model.vocab_size, (uint64_t)c.train.seed, 0, 1);
    int32_t *win = xcalloc((size_t)B * (T + 1), sizeof(int32_t));
    double main_loss = 0, mtp[MTP_MAX] = { 0 };
    for (int i = 0; i < batches; i++) {
        ModelLoss l;
        data_next(val, win);
        model_forward(m, win, 0, &l);
        main_loss += l.main / batches;
        for (int k = 0; k < D; k++) mtp[k] += l.mtp[k] / batches;
    }
    printf("eval: %s (step %d) on %d x %d x %d val tokens of '%s'\n", ckpt, st.step, batches, B, T, c.data.dir);
    printf("val loss %.4f nats", main_loss);
    for (int k = 0; k < D; k++) printf(" | mtp%d %.4f", k + 1, mtp[k]);
    printf("\n");
    DataMeta meta;
    if (data_read_meta(c.data.dir, &meta) == 0 && meta.has_entropy)
        printf("source entropy rate %.4f nats (loss floor over a window %.4f), unigram entropy %.4f\n",
               meta.entropy_rate_nats, data_meta_loss_floor(&meta, T), meta.unigram_entropy_nats);
    free(win);
    data_close(val);
    model_destroy(m);
    ops_destroy(o);
    return 0;
}
