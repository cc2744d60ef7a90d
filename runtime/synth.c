/* runtime/synth.c - the synthetic Markov source of synth.h: table, stationary distribution,
 * exact entropies, stream generation, and writing it as a data directory.
 * Not here: the shard format (data.c). Reference: entropy rate of a stationary Markov chain,
 * Cover & Thomas, Elements of Information Theory, theorem 4.2.4. */
#define _GNU_SOURCE
#include "synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PI_RESIDUAL 1e-12        /* stop power iteration when ||pi P - pi||_1 <= this */
#define PI_MAX_ITERS 1000000

SynthParams synth_default_params(uint64_t seed)
{
    SynthParams p = { SYNTH_DEFAULT_ALPHABET, SYNTH_DEFAULT_ORDER, SYNTH_DEFAULT_SUCCESSORS, seed };
    return p;
}

static void check_params(const SynthParams *p)
{
    if (p->alphabet < 2 || p->alphabet > 65536)
        DIE("synthetic: alphabet %d is out of range (2..65536)", p->alphabet);
    if (p->order < 1 || p->order > DATA_MAX_ORDER)
        DIE("synthetic: order %d is out of range (1..%d)", p->order, DATA_MAX_ORDER);
    if (p->successors < 2 || p->successors > p->alphabet)
        DIE("synthetic: successors %d is out of range (2..alphabet = %d)", p->successors,
            p->alphabet);
    double n_ctx = pow(p->alphabet, p->order);
    if (n_ctx > SYNTH_MAX_CONTEXTS)
        DIE("synthetic: alphabet^order = %d^%d = %.0f contexts is more than %d; use a smaller "
            "alphabet or order", p->alphabet, p->order, n_ctx, SYNTH_MAX_CONTEXTS);
}

/* Uniform on [0, 1) with 53 random bits. */
static double uniform53(Rng *r)
{
    uint64_t hi = rng_u32(r) >> 5, lo = rng_u32(r) >> 6;   /* 27 + 26 bits */
    return (double)(hi * 67108864ull + lo) * (1.0 / 9007199254740992.0);
}

static int next_ctx(const SynthSource *s, int c, int x)
{
    return (int)(((int64_t)c * s->p.alphabet + x) % s->n_ctx);
}

/* One table: for each context, S distinct successors (a partial Fisher-Yates shuffle of a
 * running permutation) with weights uniform in [1, 3), normalised. */
static void draw_table(SynthSource *s, Rng *rng, int32_t *perm)
{
    int A = s->p.alphabet, S = s->p.successors;
    for (int c = 0; c < s->n_ctx; c++) {
        double sum = 0;
        for (int k = 0; k < S; k++) {
            int j = k + (int)(rng_u32(rng) % (uint32_t)(A - k));
            int32_t t = perm[k]; perm[k] = perm[j]; perm[j] = t;
            double w = 1.0 + 2.0 * uniform53(rng);
            s->succ[(size_t)c * S + k] = perm[k];
            s->prob[(size_t)c * S + k] = w;
            sum += w;
        }
        for (int k = 0; k < S; k++) s->prob[(size_t)c * S + k] /= sum;
    }
}

/* mark[c] = 1 for every context reachable from z (z included). */
static void reach_forward(const SynthSource *s, int z, uint8_t *mark, int *queue)
{
    memset(mark, 0, (size_t)s->n_ctx);
    int head = 0, tail = 0;
    mark[z] = 1;
    queue[tail++] = z;
    while (head < tail) {
        int c = queue[head++];
        for (int k = 0; k < s->p.successors; k++) {
            int d = next_ctx(s, c, s->succ[(size_t)c * s->p.successors + k]);
            if (!mark[d]) { mark[d] = 1; queue[tail++] = d; }
        }
    }
}

/* mark[c] = 1 for every context from which z can be reached (z included). Sweeps until no
 * change: each sweep extends the marked set by at least one edge, so at most n_ctx sweeps,
 * in practice about the graph's diameter. */
static void reach_backward(const SynthSource *s, int z, uint8_t *mark)
{
    memset(mark, 0, (size_t)s->n_ctx);
    mark[z] = 1;
    for (int changed = 1; changed;) {
        changed = 0;
        for (int c = 0; c < s->n_ctx; c++) {
            if (mark[c]) continue;
            for (int k = 0; k < s->p.successors && !mark[c]; k++) {
                int d = next_ctx(s, c, s->succ[(size_t)c * s->p.successors + k]);
                if (mark[d]) mark[c] = changed = 1;
            }
        }
    }
}

/* If the context graph has exactly one recurrent (closed, strongly connected) class, mark it
 * in `cls` and return its size; else return 0. Finds a context z in some closed class by
 * walking: if a context y reachable from z cannot reach z, move to y (reach(y) is a strict
 * subset of reach(z), so this ends). Then z's class is reach(z), and it is the only closed
 * class iff every context can reach z. */
static int recurrent_class(const SynthSource *s, uint8_t *cls)
{
    uint8_t *back = xmalloc((size_t)s->n_ctx);
    int *queue = xmalloc((size_t)s->n_ctx * sizeof(int));
    int z = 0, y;
    for (;;) {
        reach_forward(s, z, cls, queue);
        reach_backward(s, z, back);
        for (y = 0; y < s->n_ctx; y++)
            if (cls[y] && !back[y]) break;
        if (y == s->n_ctx) break;
        z = y;
    }
    int size = 0, unique = 1;
    for (int c = 0; c < s->n_ctx; c++) {
        size += cls[c];
        unique &= back[c];
    }
    free(back);
    free(queue);
    return unique ? size : 0;
}

/* pi on the recurrent class by power iteration of the lazy chain (P + I)/2, from uniform. */
static void stationary(SynthSource *s, const uint8_t *cls)
{
    int n = s->n_ctx, S = s->p.successors;
    double *next = xmalloc((size_t)n * sizeof(double));   /* (n_ctx) */
    for (int c = 0; c < n; c++) s->pi[c] = cls[c] ? 1.0 / s->recurrent : 0.0;
    for (int it = 0;; it++) {
        if (it == PI_MAX_ITERS)
            DIE("synthetic: the stationary distribution did not converge in %d iterations "
                "(alphabet %d, order %d, successors %d); try another seed", PI_MAX_ITERS,
                s->p.alphabet, s->p.order, S);
        for (int c = 0; c < n; c++) next[c] = 0.5 * s->pi[c];
        for (int c = 0; c < n; c++) {
            if (s->pi[c] == 0) continue;
            for (int k = 0; k < S; k++) {
                size_t e = (size_t)c * S + k;
                next[next_ctx(s, c, s->succ[e])] += 0.5 * s->pi[c] * s->prob[e];
            }
        }
        double sum = 0, diff = 0;
        for (int c = 0; c < n; c++) sum += next[c];
        for (int c = 0; c < n; c++) {
            next[c] /= sum;
            diff += fabs(next[c] - s->pi[c]);
            s->pi[c] = next[c];
        }
        /* next - pi = (pi P - pi) / 2 for the lazy chain */
        if (2 * diff <= PI_RESIDUAL) break;
    }
    free(next);
}

static double entropy_of(const double *p, long long n)
{
    double h = 0;
    for (long long i = 0; i < n; i++)
        if (p[i] > 0) h -= p[i] * log(p[i]);
    return h;
}

/* rate, the marginal, and prefix[j] = H(j+1-gram) - H(j-gram) for j < K, where the j-gram
 * distribution is pi summed over all but the last j symbols of the context (stationarity
 * makes it the distribution of any j consecutive tokens). */
static void entropies(SynthSource *s)
{
    int A = s->p.alphabet, S = s->p.successors, K = s->p.order;
    s->rate = 0;
    for (int c = 0; c < s->n_ctx; c++)
        if (s->pi[c] > 0) s->rate += s->pi[c] * entropy_of(s->prob + (size_t)c * S, S);
    double *q = xmalloc((size_t)s->n_ctx * sizeof(double));   /* (A^j) j-gram distribution */
    double h_prev = 0;
    long long size = 1;
    for (int j = 1; j <= K; j++) {
        size *= A;
        memset(q, 0, (size_t)size * sizeof(double));
        for (int c = 0; c < s->n_ctx; c++) q[c % size] += s->pi[c];
        double h = entropy_of(q, size);
        s->prefix[j - 1] = h - h_prev;
        h_prev = h;
        if (j == 1) memcpy(s->marginal, q, (size_t)A * sizeof(double));
    }
    s->unigram = s->prefix[0];
    free(q);
}

SynthSource *synth_create(const SynthParams *p)
{
    check_params(p);
    SynthSource *s = xcalloc(1, sizeof *s);
    s->p = *p;
    s->n_ctx = 1;
    for (int j = 0; j < p->order; j++) s->n_ctx *= p->alphabet;
    size_t entries = (size_t)s->n_ctx * (size_t)p->successors;
    s->succ = xmalloc(entries * sizeof(int32_t));
    s->prob = xmalloc(entries * sizeof(double));
    s->pi = xmalloc((size_t)s->n_ctx * sizeof(double));
    s->marginal = xmalloc((size_t)p->alphabet * sizeof(double));
    uint8_t *cls = xmalloc((size_t)s->n_ctx);
    int32_t *perm = xmalloc((size_t)p->alphabet * sizeof(int32_t));
    for (int a = 0; a < p->alphabet; a++) perm[a] = a;
    Rng rng;
    rng_seed(&rng, p->seed);
    for (s->draws = 1;; s->draws++) {
        if (s->draws > SYNTH_MAX_DRAWS)
            DIE("synthetic: no table with a single recurrent class in %d draws (alphabet %d, "
                "order %d, successors %d); use more successors", SYNTH_MAX_DRAWS, p->alphabet,
                p->order, p->successors);
        draw_table(s, &rng, perm);
        s->recurrent = recurrent_class(s, cls);
        if (s->recurrent > 0) break;
    }
    stationary(s, cls);
    entropies(s);
    free(cls);
    free(perm);
    return s;
}

void synth_free(SynthSource *s)
{
    if (!s) return;
    free(s->succ);
    free(s->prob);
    free(s->pi);
    free(s->marginal);
    free(s);
}

double synth_entropy_rate(const SynthParams *p)
{
    SynthSource *s = synth_create(p);
    double h = s->rate;
    synth_free(s);
    return h;
}

double synth_unigram_entropy(const SynthParams *p)
{
    SynthSource *s = synth_create(p);
    double h = s->unigram;
    synth_free(s);
    return h;
}

void synth_stream_init(SynthStream *st, const SynthSource *s, uint64_t seed)
{
    st->s = s;
    rng_seed(&st->rng, seed);
    /* the initial context is a draw from pi; the last context with mass absorbs rounding */
    double u = uniform53(&st->rng), acc = 0;
    st->ctx = -1;
    for (int c = 0; c < s->n_ctx; c++) {
        if (s->pi[c] <= 0) continue;
        st->ctx = c;
        acc += s->pi[c];
        if (u < acc) break;
    }
    CHECK(st->ctx >= 0);
    st->pending = s->p.order;
}

void synth_fill(void *stream, uint32_t *tokens, long long n)
{
    SynthStream *st = stream;
    const SynthSource *s = st->s;
    int A = s->p.alphabet, S = s->p.successors;
    for (long long i = 0; i < n; i++) {
        if (st->pending > 0) {
            /* emit the initial context's symbols, oldest (most significant digit) first */
            int c = st->ctx;
            for (int j = 1; j < st->pending; j++) c /= A;
            tokens[i] = (uint32_t)(c % A);
            st->pending--;
            continue;
        }
        const double *p = s->prob + (size_t)st->ctx * S;
        const int32_t *x = s->succ + (size_t)st->ctx * S;
        double u = uniform53(&st->rng), acc = 0;
        int k = 0;
        while (k < S - 1 && u >= (acc += p[k])) k++;
        tokens[i] = (uint32_t)x[k];
        st->ctx = next_ctx(s, st->ctx, x[k]);
    }
}

void synth_prepare_params(const char *dir, long long tokens, const SynthParams *p,
                          int vocab_size, long long shard_tokens, DataMeta *out)
{
    if (vocab_size < p->alphabet)
        DIE("synthetic: vocab_size %d is smaller than the source's alphabet %d; raise the "
            "vocabulary or lower the alphabet", vocab_size, p->alphabet);
    if (tokens < 20)
        DIE("synthetic: %lld tokens are too few; need at least 20 (10%% of them are val)", tokens);
    SynthSource *s = synth_create(p);
    SynthStream st;
    /* the stream's seed differs from the table's so the two draws are unrelated */
    synth_stream_init(&st, s, p->seed ^ 0xD1B54A32D192ED03ull);
    long long val = tokens / 10, train = tokens - val;
    int version = data_shard_version(vocab_size);

    DataMeta m;
    memset(&m, 0, sizeof m);
    data_begin_write(dir);
    m.train_shards = data_write_split(dir, "train", train, shard_tokens, version, vocab_size,
                                      synth_fill, &st);
    m.val_shards = data_write_split(dir, "val", val, shard_tokens, version, vocab_size,
                                    synth_fill, &st);
    m.format_version = DATA_META_FORMAT_VERSION;
    snprintf(m.tokenizer, sizeof m.tokenizer, "synthetic");
    m.vocab_size = vocab_size;
    m.train_tokens = train;
    m.val_tokens = val;
    m.has_entropy = 1;
    m.seed = p->seed;
    m.alphabet = p->alphabet;
    m.order = p->order;
    m.successors = p->successors;
    m.recurrent_contexts = s->recurrent;
    m.table_draws = s->draws;
    m.entropy_rate_nats = s->rate;
    m.unigram_entropy_nats = s->unigram;
    memcpy(m.prefix_entropy_nats, s->prefix, sizeof m.prefix_entropy_nats);
    data_write_meta(dir, &m);
    synth_free(s);
    if (out) *out = m;
}

void synth_prepare(const char *dir, long long tokens, uint64_t seed, int vocab_size)
{
    SynthParams p = synth_default_params(seed);
    synth_prepare_params(dir, tokens, &p, vocab_size, SYNTH_DEFAULT_SHARD_TOKENS, NULL);
}
