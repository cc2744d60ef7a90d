/* runtime/data.h - token shards on disk, the deterministic batch loader, and meta.json.
 *
 * What this is: the one definition of the data directory format and the one reader of it.
 * `dstrain prepare` (runtime/prepare.c, runtime/synth.c) writes a directory with the writer
 * functions below; training and evaluation read it with data_open / data_next.
 * What it is not: a tokenizer (prepare.c maps bytes to ids; synth.c makes ids directly), a
 * shuffler with a buffer (positions are a pure function of seed and counter), or anything
 * that knows about the model beyond its vocabulary size.
 * Reference: the shard layout is the one karpathy/llm.c uses (256-int32 header, then the
 * tokens), written here from its description.
 *
 * ## Directory layout
 *
 *   DIR/train_000000.bin, DIR/train_000001.bin, ...   training shards, indices from 0, no gaps
 *   DIR/val_000000.bin, ...                           validation shards, same rule
 *   DIR/meta.json                                     what made the shards (written last)
 *
 * ## Shard format (version rule: a reader refuses a version it does not know)
 *
 *   int32 header[256], little-endian:
 *     header[0] = DATA_SHARD_MAGIC (20240520)
 *     header[1] = version: 1 = tokens are uint16, 2 = tokens are uint32
 *     header[2] = number of tokens n (the file is exactly 1024 + n * width bytes)
 *     header[3] = vocabulary size of the writer (0 if unknown); a reader refuses a shard
 *                 written for a larger vocabulary than its model's
 *     header[4..255] = 0
 *   then n token ids, little-endian, each of the version's width.
 * Version 1 is used whenever every id fits in 16 bits (vocab_size <= 65535), 2 otherwise.
 *
 * ## meta.json (version rule: format_version is bumped only when a key changes meaning;
 * new keys are added without a bump; a reader refuses a format_version above its own)
 *
 *   { "format_version": 1, "tokenizer": "bytes" | "synthetic", "vocab_size": V,
 *     "token_dtype": "uint16" | "uint32",
 *     "splits": { "train": {"tokens": n, "shards": k}, "val": {"tokens": n, "shards": k} },
 *     "text":      { "file": path, "bytes": n, "val_fraction": f }            (bytes only)
 *     "synthetic": { "kind": "markov", "alphabet": A, "order": K, "successors": S,
 *                    "seed": s, "recurrent_contexts": n, "table_draws": d,
 *                    "entropy_rate_nats": h, "entropy_rate_bits": h / ln 2,
 *                    "unigram_entropy_nats": u, "unigram_entropy_bits": u / ln 2,
 *                    "rate_over_unigram": h / u,
 *                    "prefix_entropy_nats": [H(X0), H(X1|X0), ..., H(X_{K-1}|X_0..X_{K-2})] }
 *                                                                          (synthetic only) }
 * Every file is written durably: a temp file beside it, fsync, rename, fsync of the directory.
 *
 * ## Which window each sequence is (the determinism rule)
 *
 * Sequences are numbered globally: g = 0, 1, 2, ... over the whole run and all data-parallel
 * ranks. DataState.cursor is the number of sequences all ranks together have consumed. A call
 * of data_next on rank r of n with B sequences gives sequences
 *     g = cursor + r*B + b,   b = 0..B-1,
 * then advances cursor by n*B (every rank holds the same cursor). So in one step the ranks
 * take disjoint, adjacent ranges of g, and the union over the n ranks is exactly the batch a
 * single rank with batch n*B would take: a DP run sees the same sequences as a serial run,
 * and a checkpointed cursor resumes on any (B, n) with the same n*B.
 *   train: sequence g is the T+1 tokens starting at window start u(seed, g), where u is
 *     uniform over all valid starts of all shards together (a start s in a shard of n tokens
 *     is valid when s + T + 1 <= n; windows never cross a shard boundary). u depends on
 *     (seed, g) only, by a 64-bit mixing hash with rejection, so it is exactly uniform.
 *   val: the shards are cut into consecutive windows of T+1 tokens with stride T (each token
 *     after a shard's first is a target exactly once); sequence g is window g mod W, W the
 *     number of windows. The seed is ignored.
 * data_rewind sets cursor to 0 (the first batch of the run, or the start of val).
 *
 * ## Calling sequence
 *
 *   DataLoader *d = data_open(dir, "train", B, T, V, seed, rank, nranks);  // validates, DIEs
 *   data_set_state(d, saved);            // optional, on resume
 *   for each micro-batch: data_next(d, tokens);   // tokens: (B, T+1) int32
 *   DataState s = data_get_state(d);     // store in the checkpoint
 *   data_close(d);
 */
#ifndef DSTRAIN_DATA_H
#define DSTRAIN_DATA_H

#include <stdint.h>

#define DATA_SHARD_MAGIC 20240520
#define DATA_SHARD_HEADER_INTS 256
#define DATA_META_FORMAT_VERSION 1
#define DATA_MAX_ORDER 8           /* longest context of a synthetic source in meta.json */

/* The loader's whole position: checkpoint these two numbers to resume exactly. */
typedef struct DataState {
    uint64_t seed;      /* the stream's seed (train only; val ignores it) */
    uint64_t cursor;    /* sequences consumed by all ranks together (see the rule above) */
} DataState;

typedef struct DataLoader DataLoader;

/* Open the `split` ("train" or "val") shards of `dir` for batches of B sequences of T+1
 * tokens, for data-parallel rank `rank` of `nranks`. Maps every shard and checks all of it;
 * DIEs with one line naming the file when: the directory or its `<split>_*.bin` shards are
 * missing (with a hint to run dstrain prepare), a shard index is missing, a shard is not a
 * regular file (a FIFO, a directory), the magic or version is wrong, the header's writer
 * vocabulary exceeds vocab_size, the size does not match the header's count, a token id is
 * >= vocab_size (shard, position and value named), or a shard is shorter than T+1 tokens.
 * Requires B >= 1, T >= 1, vocab_size >= 1, 0 <= rank < nranks. The state starts at
 * {seed, 0}. */
DataLoader *data_open(const char *dir, const char *split, int B, int T, int vocab_size,
                      uint64_t seed, int rank, int nranks);

/* Fill tokens (B, T+1) with this rank's next B sequences and advance the cursor by
 * nranks*B. Row b holds sequence g = cursor + rank*B + b; inputs are row[0..T-1], targets
 * row[1..T]. Never fails once open. */
void data_next(DataLoader *d, int32_t *tokens);

/* The current position (seed and cursor; set replaces both). After
 * data_set_state(d2, data_get_state(d)) a loader d2 opened on
 * the same directory, split, B, T and nranks gives the same batches as d. */
DataState data_get_state(const DataLoader *d);
void data_set_state(DataLoader *d, DataState s);

/* Back to the first batch: cursor = 0, seed kept. */
void data_rewind(DataLoader *d);

/* Number of distinct sequences: train, the valid window starts over all shards; val, the
 * windows W of one pass (so ceil(W / (nranks*B)) batches evaluate every val token once). */
long long data_num_sequences(const DataLoader *d);

/* Tokens in all shards of the loader's split. */
long long data_num_tokens(const DataLoader *d);

/* Unmap and free; NULL is allowed. */
void data_close(DataLoader *d);

/* What meta.json says. Fields of the other source are zero / empty. */
typedef struct DataMeta {
    int format_version;
    char tokenizer[16];               /* "bytes" or "synthetic" */
    int vocab_size;                   /* ids are < vocab_size */
    long long train_tokens, val_tokens;
    int train_shards, val_shards;
    /* tokenizer "bytes": where the text came from */
    char text_file[1024];
    long long text_bytes;
    double val_fraction;
    /* tokenizer "synthetic": the source (runtime/synth.h) and its exact entropies */
    int has_entropy;                  /* 1 for a synthetic source, 0 otherwise */
    uint64_t seed;
    int alphabet, order, successors;
    int recurrent_contexts, table_draws;
    double entropy_rate_nats;         /* H(X_t | X_{t-K..t-1}) of the stationary chain */
    double unigram_entropy_nats;      /* H(X_t) of the stationary marginal */
    double prefix_entropy_nats[DATA_MAX_ORDER]; /* [j] = H(X_j | X_0..X_{j-1}), j < order */
} DataMeta;

/* Read DIR/meta.json into m. Returns 0, or -1 when there is no meta.json (m zeroed). DIEs
 * naming the file when it exists but is not valid JSON, misses a required key, or has a
 * format_version above DATA_META_FORMAT_VERSION. */
int data_read_meta(const char *dir, DataMeta *m);

/* Write DIR/meta.json from m (durably). Bits are derived from nats on the way out. */
void data_write_meta(const char *dir, const DataMeta *m);

/* The smallest mean next-token loss (nats) any model can reach on a window of T+1 tokens
 * of this source, averaged over its T predictions: the first predictions see fewer than
 * `order` tokens of context, so this is slightly above the entropy rate:
 *   (sum_{j=1}^{T} H(X_j | X_0..X_{j-1})) / T, with H(X_j | ...) = rate for j >= order.
 * Requires m->has_entropy and T >= 1. */
double data_meta_loss_floor(const DataMeta *m, int T);

/* ---- writing shards (used by prepare) ---- */

/* Produces the next n tokens of a stream into tokens[0..n-1]. */
typedef void (*DataFill)(void *ctx, uint32_t *tokens, long long n);

/* The shard version for a vocabulary: 1 when every id fits uint16 (vocab_size <= 65535). */
int data_shard_version(int vocab_size);

/* Write one shard of n tokens at `path` durably. Requires version 1 or 2, every token below
 * vocab_size (when vocab_size > 0) and below 65536 for version 1 (CHECKed), n < 2^31. */
void data_write_shard(const char *path, const uint32_t *tokens, long long n, int version,
                      int vocab_size);

/* Write n_tokens tokens pulled from fill() as DIR/<split>_000000.bin, ... with at most
 * shard_tokens tokens each, the count spread evenly (shard sizes differ by at most one, so
 * no short tail shard), then remove stale `<split>_*.bin` files of a larger earlier write.
 * Memory used is bounded by one chunk, not by n_tokens. Returns the number of shards. */
int data_write_split(const char *dir, const char *split, long long n_tokens,
                     long long shard_tokens, int version, int vocab_size, DataFill fill,
                     void *ctx);

/* Start writing into dir: create it (and parents) and remove its meta.json, so that a
 * directory whose writing was interrupted has no meta.json. Write meta.json last. */
void data_begin_write(const char *dir);

/* The path of shard `index` of `split` in dir (caller frees). */
char *data_shard_path(const char *dir, const char *split, int index);

#endif
