/* tests/tools/dump_logits.c - dstrain's main-head logits for a fixed batch, for the Hugging
 * Face interop check (tests/interop/check_hf.py). A test tool, not part of dstrain.
 * Usage: dump_logits CKPT_DIR TOKENS_OUT LOGITS_OUT [B]
 * Writes B x T token ids (T = the checkpoint's train.seq_len; ids from a fixed seed) as raw
 * little-endian int32, and the logits at every position, B x T x V, as raw float32. */
#include <stdio.h>
#include <stdlib.h>

#include "checkpoint/ckpt.h"
#include "checkpoint/ckpt_config.h"
#include "model/model_internal.h"

static void write_all(const char *path, const void *p, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes || fclose(f) != 0) DIE("cannot write '%s'", path);
}

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: dump_logits CKPT_DIR TOKENS_OUT LOGITS_OUT [B]\n");
        return 2;
    }
    const int B = argc == 5 ? atoi(argv[4]) : 2;
    if (B < 1) DIE("B must be >= 1");
    Config c;
    char err[1024];
    if (ckpt_load_config(argv[1], &c, err, sizeof err) != 0) DIE("%s", err);
    const int T = c.train.seq_len, V = c.model.vocab_size;
    Ops *o = ops_cpu_create(1, PREC_FP32);
    Model *m = model_create(&c.model, o, B, T, 0);
    float *host = xmalloc(m->table.total * sizeof(float));
    if (ckpt_load(argv[1], &m->table, host, NULL, NULL, NULL, err, sizeof err) != 0) DIE("%s", err);
    o->upload(o, m->params, host, m->table.total * sizeof(float));
    free(host);

    int32_t *window = xcalloc((size_t)B * (T + 1), sizeof(int32_t));
    int32_t *tokens = xcalloc((size_t)B * T, sizeof(int32_t));
    Rng r;
    rng_seed(&r, 1234);
    for (int b = 0; b < B; b++)
        for (int t = 0; t <= T; t++) window[b * (T + 1) + t] = (int32_t)(rng_u32(&r) % (uint32_t)V);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) tokens[b * T + t] = window[b * (T + 1) + t];
    ModelLoss l;
    model_forward(m, window, 0, &l);
    float *logits = xmalloc((size_t)B * T * V * sizeof(float));
    o->download(o, logits, m->sl->logits, (size_t)B * T * V * sizeof(float));
    write_all(argv[2], tokens, (size_t)B * T * sizeof(int32_t));
    write_all(argv[3], logits, (size_t)B * T * V * sizeof(float));
    printf("dump_logits: %d x %d tokens, logits %d x %d x %d, main loss %.6f\n", B, T, B, T, V, l.main);
    free(window);
    free(tokens);
    free(logits);
    model_destroy(m);
    ops_destroy(o);
    return 0;
}
