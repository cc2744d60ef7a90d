/* runtime/sample.c - `dstrain sample --ckpt DIR --prompt TEXT`: generate text from a trained
 * checkpoint with the main head (temperature + top-k sampling). Byte-level corpora print as
 * text; other vocabularies print token ids. Each new token reruns the forward over the last
 * seq_len tokens (no KV cache: this is a check of what the model learned, not a server).
 */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint/ckpt.h"
#include "../checkpoint/ckpt_config.h"
#include "../model/model.h"
#include "commands.h"
#include "common.h"
#include "config.h"
#include "data.h"

typedef struct SampleArgs {
    const char *ckpt, *prompt;
    int tokens, top_k;
    double temperature;
    unsigned long long seed;
} SampleArgs;

static void sample_usage(FILE *f)
{
    fprintf(f, "usage: dstrain sample --ckpt DIR --prompt TEXT [--tokens 200] [--temperature 0.8]\n"
               "                      [--top-k 40] [--seed 1]\n"
               "Generates --tokens tokens after TEXT with the checkpoint's main head. With a\n"
               "byte-level corpus (dstrain prepare --text) TEXT is bytes; otherwise it is a list of\n"
               "token ids separated by spaces.\n");
}

static int parse_int_arg(const char *name, const char *v, int lo)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == 0 || *end || x < lo || x > 1000000) DIE("sample: '%s' = '%s' is not an integer >= %d", name, v, lo);
    return (int)x;
}

static void parse_args(int argc, char **argv, SampleArgs *a)
{
    *a = (SampleArgs){ NULL, NULL, 200, 40, 0.8, 1 };
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) { sample_usage(stdout); exit(0); }
        if (s[0] != '-' || i + 1 >= argc) DIE("sample: unexpected argument '%s' (see dstrain sample --help)", s);
        const char *v = argv[++i];
        if (!strcmp(s, "--ckpt")) a->ckpt = v;
        else if (!strcmp(s, "--prompt")) a->prompt = v;
        else if (!strcmp(s, "--tokens")) a->tokens = parse_int_arg(s, v, 1);
        else if (!strcmp(s, "--top-k")) a->top_k = parse_int_arg(s, v, 0);
        else if (!strcmp(s, "--seed")) a->seed = (unsigned long long)parse_int_arg(s, v, 0);
        else if (!strcmp(s, "--temperature")) {
            char *end;
            a->temperature = strtod(v, &end);
            if (!*v || *end || !isfinite(a->temperature) || a->temperature < 0)
                DIE("sample: '--temperature' = '%s' is not a finite number >= 0", v);
        } else DIE("sample: unknown option '%s' (see dstrain sample --help)", s);
    }
    if (!a->ckpt) DIE("sample: '--ckpt DIR' is required");
    if (!a->prompt) DIE("sample: '--prompt TEXT' is required");
}

/* Prompt to token ids: bytes for a byte-level corpus, else space-separated ids. */
static int encode_prompt(const char *p, int bytes, int V, int32_t *out, int cap)
{
    int n = 0;
    if (bytes) {
        for (const unsigned char *c = (const unsigned char *)p; *c && n < cap; c++) out[n++] = *c;
        return n;
    }
    char *end;
    for (const char *s = p; *s && n < cap; s = end) {
        while (*s == ' ') s++;
        if (!*s) break;
        long id = strtol(s, &end, 10);
        if (end == s || id < 0 || id >= V) DIE("sample: prompt token '%.20s' is not an id in [0, %d)", s, V);
        out[n++] = (int32_t)id;
    }
    return n;
}

/* Temperature + top-k sampling from logits (V); temperature 0 is greedy. */
static int sample_token(float *logits, int V, double temp, int top_k, Rng *r)
{
    int best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
    if (temp <= 0) return best;
    float kth = -INFINITY;
    if (top_k > 0 && top_k < V) {   /* the k-th largest logit, by repeated max below a bound */
        float bound = INFINITY;
        for (int j = 0; j < top_k; j++) {
            float m = -INFINITY;
            for (int i = 0; i < V; i++) if (logits[i] < bound && logits[i] > m) m = logits[i];
            bound = m;
        }
        kth = bound;
    }
    /* logits[] is overwritten with weights below, so keep the maximum apart */
    const double max = logits[best];
    double sum = 0;
    for (int i = 0; i < V; i++) {
        double p = logits[i] >= kth ? exp((logits[i] - max) / temp) : 0.0;
        logits[i] = (float)p;
        sum += p;
    }
    double u = rng_uniform(r) * sum;
    for (int i = 0; i < V; i++) {
        u -= logits[i];
        if (u <= 0) return i;
    }
    return best;
}


int cmd_sample(int argc, char **argv)
{
    SampleArgs a;
    parse_args(argc, argv, &a);
    Config c;
    char err[1024];
    if (ckpt_load_config(a.ckpt, &c, err, sizeof err) != 0) DIE("sample: %s", err);
    const int T = c.train.seq_len, V = c.model.vocab_size;
    DataMeta meta;
    int bytes = data_read_meta(c.data.dir, &meta) == 0 ? !strcmp(meta.tokenizer, "bytes") : V == 256;

    Ops *o = ops_cpu_create(c.train.threads, PREC_FP32);
    Model *m = model_create(&c.model, o, 1, T, 0);
    const ParamTable *pt = model_table(m);
    float *host = xmalloc(pt->total * sizeof(float));
    CkptState st;
    if (ckpt_load(a.ckpt, pt, host, NULL, NULL, &st, err, sizeof err) != 0) DIE("sample: %s", err);
    o->upload(o, model_params(m), host, pt->total * sizeof(float));
    free(host);

    const int cap = (int)strlen(a.prompt) + a.tokens + 1;
    int32_t *seq = xcalloc((size_t)cap, sizeof(int32_t)), *window = xcalloc((size_t)T + 1, sizeof(int32_t));
    float *logits = xmalloc((size_t)V * sizeof(float));
    int n = encode_prompt(a.prompt, bytes, V, seq, cap);
    if (n == 0) DIE("sample: the prompt is empty");
    Rng r;
    rng_seed(&r, a.seed);
    fputs(bytes ? a.prompt : "", stdout);
    for (int i = 0; i < a.tokens; i++) {
        int start = n > T ? n - T : 0, len = n - start;
        memset(window, 0, sizeof(int32_t) * (size_t)(T + 1));
        memcpy(window, seq + start, sizeof(int32_t) * (size_t)len);
        ModelLoss l;
        model_forward(m, window, 0, &l);
        model_logits(m, len - 1, logits);
        seq[n++] = sample_token(logits, V, a.temperature, a.top_k, &r);
        if (bytes) putchar(seq[n - 1]);
        else printf("%d ", seq[n - 1]);
        fflush(stdout);
    }
    putchar('\n');
    free(seq);
    free(window);
    free(logits);
    model_destroy(m);
    ops_destroy(o);
    return 0;
}
