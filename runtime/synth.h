/* runtime/synth.h - a seeded random token source whose entropy rate is known exactly.
 *
 * What this is: an order-K Markov chain over an alphabet of A symbols (ids 0..A-1). Each
 * context (the last K symbols) has S distinct successors, drawn uniformly, with
 * probabilities proportional to weights drawn uniformly from [1, 3) (so no successor is more
 * than 3 times as likely as another: the table is not peaked and every entry must be
 * learned). A model that knows the table reaches the entropy rate
 *     h = sum_c pi(c) H(next | c),
 * pi the stationary distribution over contexts; a model that learns only token frequencies
 * reaches the unigram entropy H(X) of the stationary marginal, which is at least twice h for
 * the defaults (A = 16, K = 2, S = 3: h ~ 1.07 nats, H(X) ~ 2.76 nats, ratio ~ 0.39), and a
 * model that sees only the previous token is stuck near H(X_t | X_{t-1}) ~ 2.55 nats. The 256
 * contexts x 3 successors are chosen few enough for a small transformer to learn in a few
 * hundred steps; a second-order chain needs attention to the token two back, so it tests
 * attention.
 * What it is not: a language, or a source with long-range structure.
 *
 * Exactness: the table is redrawn (the same seed always gives the same table) until the
 * context graph has exactly one recurrent class, so pi is unique; pi comes from power
 * iteration of the lazy chain (P + I)/2 (same pi, and aperiodic) until ||pi P - pi||_1 <=
 * 1e-12; pi's error is then about that residual times the chain's mixing time (a few tens
 * of steps for these tables), far below any tolerance that uses the entropies. Generated
 * streams start from a context drawn from pi, so they are stationary from their first token.
 *
 * Calling sequence:
 *   SynthParams p = synth_default_params(seed);           // or set fields, then
 *   SynthSource *s = synth_create(&p);                   // DIEs on bad parameters
 *   SynthStream st; synth_stream_init(&st, s, stream_seed);
 *   synth_fill(&st, tokens, n);  ...                      // continues the same stream
 *   synth_free(s);
 * or, for a data directory, synth_prepare / synth_prepare_params.
 */
#ifndef DSTRAIN_SYNTH_H
#define DSTRAIN_SYNTH_H

#include <stdint.h>

#include "common.h"
#include "data.h"

#define SYNTH_DEFAULT_ALPHABET 16
#define SYNTH_DEFAULT_ORDER 2
#define SYNTH_DEFAULT_SUCCESSORS 3
#define SYNTH_MAX_CONTEXTS (1 << 22)     /* A^K: bounds the table's memory (~24 bytes x S each) */
#define SYNTH_MAX_DRAWS 100              /* tables tried for a single recurrent class */

typedef struct SynthParams {
    int alphabet;      /* A, 2..65536 */
    int order;         /* K, 1..DATA_MAX_ORDER, A^K <= SYNTH_MAX_CONTEXTS */
    int successors;    /* S, 2..A */
    uint64_t seed;     /* the table's seed (the stream's seed is derived from it) */
} SynthParams;

typedef struct SynthSource {
    SynthParams p;
    int n_ctx;          /* A^K; context c = x_{t-K} A^{K-1} + ... + x_{t-1} */
    int32_t *succ;      /* (n_ctx, S) successor symbols of each context, distinct */
    double *prob;       /* (n_ctx, S) P(succ | context); each row sums to 1 */
    double *pi;         /* (n_ctx) stationary distribution; 0 off the recurrent class */
    double *marginal;   /* (A) stationary symbol frequencies */
    int recurrent;      /* contexts in the recurrent class */
    int draws;          /* tables drawn until one had a single recurrent class (>= 1) */
    double rate;        /* entropy rate h, nats */
    double unigram;     /* H(X) of the marginal, nats */
    double prefix[DATA_MAX_ORDER]; /* [j] = H(X_j | X_0..X_{j-1}) of the stationary stream */
} SynthSource;

/* The defaults above with the given seed. */
SynthParams synth_default_params(uint64_t seed);

/* Draw the table and compute pi and the entropies. DIEs on parameters out of range (naming
 * the parameter) or when no table of SYNTH_MAX_DRAWS has a single recurrent class. */
SynthSource *synth_create(const SynthParams *p);
void synth_free(SynthSource *s);

/* Exact entropies (nats) of the source with parameters p (builds and frees the table). */
double synth_entropy_rate(const SynthParams *p);
double synth_unigram_entropy(const SynthParams *p);

/* A stream of the source: the first K tokens are a context drawn from pi, then each token
 * is drawn from P(. | last K tokens). Deterministic in (source, seed). */
typedef struct SynthStream {
    const SynthSource *s;
    Rng rng;
    int ctx;            /* the last K tokens as a context index */
    int pending;        /* initial-context symbols not yet emitted (K at start) */
} SynthStream;

void synth_stream_init(SynthStream *st, const SynthSource *s, uint64_t seed);

/* The next n tokens of the stream (a DataFill: stream is a SynthStream *). */
void synth_fill(void *stream, uint32_t *tokens, long long n);

/* Write a data directory of `tokens` tokens of the default source with `seed`: the first 90%
 * as train shards, the rest (the stream's continuation) as val shards, then meta.json with
 * the parameters and exact entropies. Ids are < A; DIEs if vocab_size < A or tokens < 20. */
void synth_prepare(const char *dir, long long tokens, uint64_t seed, int vocab_size);

/* The same with explicit parameters and tokens per shard; fills *out (if not NULL) with
 * what meta.json says. */
void synth_prepare_params(const char *dir, long long tokens, const SynthParams *p,
                          int vocab_size, long long shard_tokens, DataMeta *out);

#define SYNTH_DEFAULT_SHARD_TOKENS 100000000LL

#endif
