/* runtime/data.c - token shards (write, map, validate), the deterministic loader, meta.json.
 * The formats and the window rule are documented in data.h; this file implements them.
 * Not here: tokenization (prepare.c) or any synthetic source (synth.c). */
#define _GNU_SOURCE
#include "data.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define HEADER_BYTES (DATA_SHARD_HEADER_INTS * 4)
#define WRITE_CHUNK (1 << 20)          /* tokens encoded per write; bounds the writer's memory */
#define MAX_SHARDS 1000000             /* six-digit shard names */

/* Shards are mapped only while open_shards validates them; training reads windows with
 * pread(2), so a shard truncated (or shortened by a failing disk) under a running job is a
 * short read and one error naming the file, never a SIGBUS from touching a mapped page past the
 * new end of the file. */
typedef struct Shard {
    char *path;
    const uint8_t *map;    /* (HEADER_BYTES + n * width) bytes, read-only; NULL after validation */
    size_t map_bytes;
    int width;             /* bytes per token: 2 or 4 */
    long long n;           /* tokens */
    long long first;       /* global index of this shard's first sequence (window start) */
    long long count;       /* sequences in this shard */
} Shard;

struct DataLoader {
    int is_train;
    int B, T, rank, nranks;
    DataState state;
    int n_shards;
    Shard *shards;         /* (n_shards), in index order */
    long long n_tokens;    /* all shards */
    long long n_seqs;      /* sum of count */
    int fd;                /* the shard last read from (-1: none) */
    int fd_shard;          /* its index */
    uint8_t *window;       /* ((T+1) * 4) bytes: one window as stored */
};

/* ---- little-endian encoding, independent of the host's byte order ---- */

static uint32_t get_le(const uint8_t *p, int width)
{
    uint32_t v = (uint32_t)p[0] | (uint32_t)p[1] << 8;
    if (width == 4) v |= (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    return v;
}

static void put_le(uint8_t *p, uint32_t v, int width)
{
    for (int i = 0; i < width; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* ---- durable files: write to PATH.tmp, fsync, rename over PATH, fsync the directory ---- */

typedef struct Durable { const char *path; char *tmp; FILE *f; } Durable;

static Durable durable_open(const char *path)
{
    Durable d = { path, xasprintf("%s.tmp", path), NULL };
    d.f = fopen(d.tmp, "wb");
    if (!d.f) DIE("cannot create '%s': %s", d.tmp, strerror(errno));
    return d;
}

static void durable_write(Durable *d, const void *p, size_t n)
{
    if (n && fwrite(p, 1, n, d->f) != n) DIE("cannot write '%s': %s", d->tmp, strerror(errno));
}

/* Makes a directory's entries (creations, renames, removals) durable. Best effort: some
 * file systems refuse fsync on a directory. */
static void fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static void fsync_parent(const char *path)
{
    char *dir = xstrdup(path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    fsync_dir(slash ? (dir[0] ? dir : "/") : ".");
    free(dir);
}

static void durable_commit(Durable *d)
{
    if (fflush(d->f) != 0 || fsync(fileno(d->f)) != 0)
        DIE("cannot flush '%s' to disk: %s", d->tmp, strerror(errno));
    if (fclose(d->f) != 0) DIE("cannot close '%s': %s", d->tmp, strerror(errno));
    if (rename(d->tmp, d->path) != 0)
        DIE("cannot rename '%s' to '%s': %s", d->tmp, d->path, strerror(errno));
    fsync_parent(d->path);
    free(d->tmp);
}

/* ---- shard names ---- */

char *data_shard_path(const char *dir, const char *split, int index)
{
    return xasprintf("%s/%s_%06d.bin", dir, split, index);
}

/* The index of a file named `<split>_<digits>.bin`, or -1 for any other name. */
static int shard_index(const char *name, const char *split)
{
    size_t ls = strlen(split), ln = strlen(name);
    if (ln < ls + 6 || strncmp(name, split, ls) != 0 || name[ls] != '_') return -1;
    if (strcmp(name + ln - 4, ".bin") != 0) return -1;
    size_t digits = ln - 4 - (ls + 1);
    if (digits < 1 || digits > 9) return -1;
    int v = 0;
    for (size_t i = ls + 1; i < ln - 4; i++) {
        if (name[i] < '0' || name[i] > '9') return -1;
        v = 10 * v + (name[i] - '0');
    }
    return v;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Sorted indices of the split's shards in dir into *out (caller frees); returns the count,
 * or -1 when dir cannot be opened. */
static int list_shards(const char *dir, const char *split, int **out)
{
    DIR *dp = opendir(dir);
    if (!dp) return -1;
    int n = 0, cap = 16;
    int *idx = xmalloc((size_t)cap * sizeof(int));
    for (struct dirent *e; (e = readdir(dp));) {
        int i = shard_index(e->d_name, split);
        if (i < 0) continue;
        if (n == cap) {
            cap *= 2;
            int *grown = realloc(idx, (size_t)cap * sizeof(int));
            if (!grown) DIE("out of memory listing '%s'", dir);
            idx = grown;
        }
        idx[n++] = i;
    }
    closedir(dp);
    qsort(idx, (size_t)n, sizeof(int), cmp_int);
    *out = idx;
    return n;
}

/* ---- writing ---- */

void data_begin_write(const char *dir)
{
    mkdir_p(dir);
    char *path = xasprintf("%s/meta.json", dir);
    if (unlink(path) != 0 && errno != ENOENT) DIE("cannot remove '%s': %s", path, strerror(errno));
    free(path);
}

int data_shard_version(int vocab_size) { return vocab_size <= 65535 ? 1 : 2; }

static void write_shard_stream(const char *path, long long n, int version, int vocab_size,
                               DataFill fill, void *ctx)
{
    CHECK(version == 1 || version == 2);
    CHECK(n >= 0 && n <= INT32_MAX);
    int width = version == 1 ? 2 : 4;
    uint64_t limit = version == 1 ? (1ull << 16) : (1ull << 32);   /* ids must be below */
    if (vocab_size > 0 && (uint64_t)vocab_size < limit) limit = (uint64_t)vocab_size;

    uint8_t header[HEADER_BYTES] = { 0 };
    put_le(header + 0, DATA_SHARD_MAGIC, 4);
    put_le(header + 4, (uint32_t)version, 4);
    put_le(header + 8, (uint32_t)n, 4);
    put_le(header + 12, (uint32_t)(vocab_size > 0 ? vocab_size : 0), 4);

    Durable d = durable_open(path);
    durable_write(&d, header, sizeof header);
    uint32_t *tok = xmalloc(WRITE_CHUNK * sizeof(uint32_t));   /* (chunk) */
    uint8_t *bytes = xmalloc((size_t)WRITE_CHUNK * (size_t)width); /* (chunk * width) */
    for (long long done = 0; done < n;) {
        long long c = n - done < WRITE_CHUNK ? n - done : WRITE_CHUNK;
        fill(ctx, tok, c);
        for (long long i = 0; i < c; i++) {
            CHECK(tok[i] < limit);
            put_le(bytes + i * width, tok[i], width);
        }
        durable_write(&d, bytes, (size_t)c * (size_t)width);
        done += c;
    }
    free(tok);
    free(bytes);
    durable_commit(&d);
}

typedef struct ArrayFill { const uint32_t *p; } ArrayFill;

static void fill_from_array(void *ctx, uint32_t *tokens, long long n)
{
    ArrayFill *a = ctx;
    memcpy(tokens, a->p, (size_t)n * sizeof(uint32_t));
    a->p += n;
}

void data_write_shard(const char *path, const uint32_t *tokens, long long n, int version,
                      int vocab_size)
{
    ArrayFill a = { tokens };
    write_shard_stream(path, n, version, vocab_size, fill_from_array, &a);
}

int data_write_split(const char *dir, const char *split, long long n_tokens,
                     long long shard_tokens, int version, int vocab_size, DataFill fill,
                     void *ctx)
{
    CHECK(n_tokens >= 1 && shard_tokens >= 1 && shard_tokens <= INT32_MAX);
    long long k = (n_tokens + shard_tokens - 1) / shard_tokens;
    if (k > MAX_SHARDS)
        DIE("'%s' split would need %lld shards (more than %d); raise the tokens per shard",
            split, k, MAX_SHARDS);
    for (long long i = 0; i < k; i++) {
        /* even spread: each shard gets floor(n/k) or one more, never more than shard_tokens */
        long long n_i = n_tokens / k + (i < n_tokens % k ? 1 : 0);
        char *path = data_shard_path(dir, split, (int)i);
        write_shard_stream(path, n_i, version, vocab_size, fill, ctx);
        free(path);
    }
    int *idx = NULL;
    int n_old = list_shards(dir, split, &idx);
    for (int j = 0; j < n_old; j++) {
        if (idx[j] < k) continue;
        char *path = data_shard_path(dir, split, idx[j]);
        if (unlink(path) != 0) DIE("cannot remove stale shard '%s': %s", path, strerror(errno));
        free(path);
    }
    free(idx);
    fsync_dir(dir);
    return (int)k;
}

/* ---- opening and validating ---- */

/* What a non-regular file is, for messages. */
static const char *file_kind(mode_t mode)
{
    return S_ISDIR(mode) ? "directory" : S_ISFIFO(mode) ? "FIFO" : S_ISCHR(mode) ? "character device"
         : S_ISBLK(mode) ? "block device" : S_ISSOCK(mode) ? "socket" : "special file";
}

static void map_shard(Shard *s, int vocab_size, int T)
{
    /* O_NONBLOCK: opening a FIFO for reading would wait for a writer forever; it is refused
     * below like every other file that is not a regular one (no effect on regular files) */
    int fd = open(s->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) DIE("data: cannot open '%s': %s", s->path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) DIE("data: cannot stat '%s': %s", s->path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        DIE("data: '%s' is not a regular file (a %s); a shard must be a file written by dstrain "
            "prepare", s->path, file_kind(st.st_mode));
    size_t size = (size_t)st.st_size;
    if (size < HEADER_BYTES)
        DIE("data: '%s' is truncated: %zu bytes, shorter than the %d-byte header", s->path,
            size, HEADER_BYTES);
    void *m = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) DIE("data: cannot map '%s': %s", s->path, strerror(errno));
    close(fd);
    s->map = m;
    s->map_bytes = size;

    uint32_t magic = get_le(s->map, 4), version = get_le(s->map + 4, 4);
    int32_t count = (int32_t)get_le(s->map + 8, 4), writer_vocab = (int32_t)get_le(s->map + 12, 4);
    if (magic != DATA_SHARD_MAGIC)
        DIE("data: '%s' is not a token shard: magic %u, expected %d", s->path, magic,
            DATA_SHARD_MAGIC);
    if (version != 1 && version != 2)
        DIE("data: '%s' has unknown shard version %u (known: 1 = uint16, 2 = uint32 tokens)",
            s->path, version);
    if (count < 0) DIE("data: '%s' has a negative token count %d in its header", s->path, count);
    /* the writer's vocabulary: a shard made for a larger one holds ids this model cannot
     * embed, even where the ids of this file happen to fit (a smaller one is fine: a model
     * may pad its vocabulary) */
    if (writer_vocab < 0 || writer_vocab > vocab_size)
        DIE("data: '%s' was written for vocab_size %d (shard header), but 'model.vocab_size' is %d",
            s->path, writer_vocab, vocab_size);
    s->width = version == 1 ? 2 : 4;
    s->n = count;
    size_t want = HEADER_BYTES + (size_t)s->n * (size_t)s->width;
    if (size != want)
        DIE("data: '%s' is %s: the header says %lld tokens (%zu bytes) but the file has %zu bytes",
            s->path, size < want ? "truncated" : "too long", s->n, want, size);
    if (s->n < (long long)T + 1)
        DIE("data: '%s' has %lld tokens, fewer than one window of T+1 = %d; use a shorter "
            "sequence length or prepare more data", s->path, s->n, T + 1);

    char written_for[64] = "";
    if (writer_vocab > 0)
        snprintf(written_for, sizeof written_for, " (the shard was written for vocab_size %d)",
                 writer_vocab);
    const uint8_t *p = s->map + HEADER_BYTES;
    for (long long i = 0; i < s->n; i++) {
        uint32_t v = get_le(p + i * s->width, s->width);
        if (v >= (uint32_t)vocab_size)
            DIE("data: '%s' token %u at position %lld is >= vocab_size %d; the model's "
                "vocab_size is too small for this data%s", s->path, v, i, vocab_size,
                written_for);
    }
}

static void open_shards(DataLoader *d, const char *dir, const char *split, int vocab_size)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        DIE("data: directory '%s' does not exist; make token shards with: dstrain prepare "
            "--synthetic --out %s (or --text FILE --out %s)", dir, dir, dir);
    if (!S_ISDIR(st.st_mode))
        DIE("data: 'data.dir' = '%s' is not a directory (a %s)", dir,
            S_ISREG(st.st_mode) ? "regular file" : file_kind(st.st_mode));
    int *idx = NULL;
    int n = list_shards(dir, split, &idx);
    if (n < 0) DIE("data: cannot read directory '%s': %s", dir, strerror(errno));
    if (n == 0)
        DIE("data: no '%s_*.bin' shards in '%s'; make them with: dstrain prepare "
            "--synthetic --out %s (or --text FILE --out %s)", split, dir, dir, dir);
    for (int i = 0; i < n; i++)
        if (idx[i] != i)
            DIE("data: shard '%s/%s_%06d.bin' is missing (%d '%s' shards found, highest "
                "index %d); prepare the directory again", dir, split, i, n, split, idx[n - 1]);
    free(idx);

    d->n_shards = n;
    d->shards = xcalloc((size_t)n, sizeof(Shard));
    for (int i = 0; i < n; i++) {
        Shard *s = &d->shards[i];
        s->path = data_shard_path(dir, split, i);
        map_shard(s, vocab_size, d->T);
        munmap((void *)s->map, s->map_bytes);
        s->map = NULL;
        /* map_shard guarantees n >= T+1, so count >= 1 in both modes */
        s->count = d->is_train ? s->n - d->T : (s->n - 1) / d->T;
        s->first = d->n_seqs;
        d->n_seqs += s->count;
        d->n_tokens += s->n;
    }
}

DataLoader *data_open(const char *dir, const char *split, int B, int T, int vocab_size,
                      uint64_t seed, int rank, int nranks)
{
    CHECK(B >= 1 && T >= 1 && vocab_size >= 1 && nranks >= 1 && rank >= 0 && rank < nranks);
    if (strcmp(split, "train") != 0 && strcmp(split, "val") != 0)
        DIE("data: unknown split '%s' (expected train or val)", split);
    DataLoader *d = xcalloc(1, sizeof *d);
    d->is_train = strcmp(split, "train") == 0;
    d->B = B;
    d->T = T;
    d->rank = rank;
    d->nranks = nranks;
    d->state.seed = seed;
    d->fd = -1;
    d->window = xmalloc(((size_t)T + 1) * 4);
    open_shards(d, dir, split, vocab_size);
    return d;
}

/* ---- the stream ---- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* A window start uniform on [0, m) from (seed, g) only. Values below 2^64 mod m are
 * rejected (and rehashed), so the accepted range is a whole number of copies of [0, m) and
 * x mod m is exactly uniform. */
static long long window_start(uint64_t seed, uint64_t g, long long m)
{
    const uint64_t golden = 0x9E3779B97F4A7C15ull;
    uint64_t um = (uint64_t)m;
    uint64_t reject_below = (0 - um) % um;   /* 2^64 mod m */
    uint64_t x = mix64(mix64(seed) + (g + 1) * golden);
    while (x < reject_below) x = mix64(x + golden);
    return (long long)(x % um);
}

/* The shard holding global sequence index i (shards sorted by first). */
static const Shard *find_shard(const DataLoader *d, long long i)
{
    int lo = 0, hi = d->n_shards - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (d->shards[mid].first <= i) lo = mid;
        else hi = mid - 1;
    }
    return &d->shards[lo];
}

/* bytes of shard s from token off on, into d->window (one open descriptor kept, that of the
 * shard read last). DIE naming the file when it is gone or shorter than at open. */
static const uint8_t *read_window(DataLoader *d, const Shard *s, long long off, size_t bytes)
{
    int index = (int)(s - d->shards);
    if (d->fd < 0 || d->fd_shard != index) {
        if (d->fd >= 0) close(d->fd);
        d->fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (d->fd < 0) DIE("data: cannot open '%s' while training: %s", s->path, strerror(errno));
        d->fd_shard = index;
    }
    off_t at = (off_t)HEADER_BYTES + (off_t)off * s->width;
    size_t got = 0;
    while (got < bytes) {
        ssize_t k = pread(d->fd, d->window + got, bytes - got, at + (off_t)got);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) DIE("data: cannot read '%s' while training: %s", s->path, strerror(errno));
        if (k == 0)
            DIE("data: '%s' was truncated while training: it ends before byte %lld (it had %zu bytes when "
                "opened); restore the shard and resume", s->path, (long long)(at + (off_t)bytes), s->map_bytes);
        got += (size_t)k;
    }
    return d->window;
}

void data_next(DataLoader *d, int32_t *tokens)
{
    int T1 = d->T + 1;
    for (int b = 0; b < d->B; b++) {
        uint64_t g = d->state.cursor + (uint64_t)d->rank * (uint64_t)d->B + (uint64_t)b;
        long long i = d->is_train ? window_start(d->state.seed, g, d->n_seqs)
                                  : (long long)(g % (uint64_t)d->n_seqs);
        const Shard *s = find_shard(d, i);
        long long off = d->is_train ? i - s->first : (i - s->first) * d->T;
        const uint8_t *p = read_window(d, s, off, (size_t)T1 * (size_t)s->width);
        int32_t *row = tokens + (size_t)b * (size_t)T1;   /* (T+1) */
        for (int t = 0; t < T1; t++) row[t] = (int32_t)get_le(p + (size_t)t * s->width, s->width);
    }
    d->state.cursor += (uint64_t)d->nranks * (uint64_t)d->B;
}

DataState data_get_state(const DataLoader *d) { return d->state; }
void data_set_state(DataLoader *d, DataState s) { d->state = s; }
void data_rewind(DataLoader *d) { d->state.cursor = 0; }
long long data_num_sequences(const DataLoader *d) { return d->n_seqs; }
long long data_num_tokens(const DataLoader *d) { return d->n_tokens; }

void data_close(DataLoader *d)
{
    if (!d) return;
    for (int i = 0; i < d->n_shards; i++) {
        if (d->shards[i].map) munmap((void *)d->shards[i].map, d->shards[i].map_bytes);
        free(d->shards[i].path);
    }
    if (d->fd >= 0) close(d->fd);
    free(d->window);
    free(d->shards);
    free(d);
}

/* ---- meta.json ---- */

static void set_new(json_t *obj, const char *key, json_t *value)
{
    if (!value || json_object_set_new(obj, key, value) != 0)
        DIE("out of memory building meta.json ('%s')", key);
}

static json_t *meta_synthetic_json(const DataMeta *m)
{
    json_t *s = json_object();
    if (!s) DIE("out of memory building meta.json");
    set_new(s, "kind", json_string("markov"));
    set_new(s, "alphabet", json_integer(m->alphabet));
    set_new(s, "order", json_integer(m->order));
    set_new(s, "successors", json_integer(m->successors));
    /* JSON integers are signed 64-bit here; larger seeds are kept exactly as text */
    char seed_text[24];
    snprintf(seed_text, sizeof seed_text, "%llu", (unsigned long long)m->seed);
    if (m->seed <= (uint64_t)INT64_MAX) set_new(s, "seed", json_integer((json_int_t)m->seed));
    else set_new(s, "seed", json_string(seed_text));
    set_new(s, "recurrent_contexts", json_integer(m->recurrent_contexts));
    set_new(s, "table_draws", json_integer(m->table_draws));
    set_new(s, "entropy_rate_nats", json_real(m->entropy_rate_nats));
    set_new(s, "entropy_rate_bits", json_real(m->entropy_rate_nats / M_LN2));
    set_new(s, "unigram_entropy_nats", json_real(m->unigram_entropy_nats));
    set_new(s, "unigram_entropy_bits", json_real(m->unigram_entropy_nats / M_LN2));
    set_new(s, "rate_over_unigram", json_real(m->entropy_rate_nats / m->unigram_entropy_nats));
    json_t *prefix = json_array();
    if (!prefix) DIE("out of memory building meta.json");
    for (int j = 0; j < m->order; j++)
        json_array_append_new(prefix, json_real(m->prefix_entropy_nats[j]));
    set_new(s, "prefix_entropy_nats", prefix);
    return s;
}

void data_write_meta(const char *dir, const DataMeta *m)
{
    CHECK(m->order >= 0 && m->order <= DATA_MAX_ORDER);
    json_t *root = json_object();
    if (!root) DIE("out of memory building meta.json");
    set_new(root, "format_version", json_integer(DATA_META_FORMAT_VERSION));
    set_new(root, "tokenizer", json_string(m->tokenizer));
    set_new(root, "vocab_size", json_integer(m->vocab_size));
    int version = data_shard_version(m->vocab_size);
    set_new(root, "token_dtype", json_string(version == 1 ? "uint16" : "uint32"));
    json_t *splits = json_object();
    set_new(root, "splits", splits);
    set_new(splits, "train", json_pack("{sIsi}", "tokens", (json_int_t)m->train_tokens,
                                        "shards", m->train_shards));
    set_new(splits, "val", json_pack("{sIsi}", "tokens", (json_int_t)m->val_tokens,
                                      "shards", m->val_shards));
    if (m->has_entropy) set_new(root, "synthetic", meta_synthetic_json(m));
    else set_new(root, "text", json_pack("{sssIsf}", "file", m->text_file, "bytes",
                                         (json_int_t)m->text_bytes, "val_fraction", m->val_fraction));

    char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text) DIE("out of memory writing meta.json");
    char *path = xasprintf("%s/meta.json", dir);
    Durable d = durable_open(path);
    durable_write(&d, text, strlen(text));
    durable_write(&d, "\n", 1);
    durable_commit(&d);
    free(path);
    free(text);
    json_decref(root);
}

/* The value at dotted `key` of obj (e.g. "splits.train.tokens"), or DIE naming the file. */
static json_t *need(json_t *obj, const char *key, const char *path)
{
    char *copy = xstrdup(key), *save = NULL;
    json_t *v = obj;
    for (char *part = strtok_r(copy, ".", &save); part && v; part = strtok_r(NULL, ".", &save))
        v = json_is_object(v) ? json_object_get(v, part) : NULL;
    free(copy);
    if (!v) DIE("data: '%s' has no '%s'; prepare the directory again", path, key);
    return v;
}

static long long need_int(json_t *obj, const char *key, const char *path)
{
    json_t *v = need(obj, key, path);
    if (json_is_string(v)) return (long long)strtoull(json_string_value(v), NULL, 10);
    if (!json_is_integer(v)) DIE("data: '%s' key '%s' is not an integer", path, key);
    return json_integer_value(v);
}

static double need_real(json_t *obj, const char *key, const char *path)
{
    json_t *v = need(obj, key, path);
    if (!json_is_number(v)) DIE("data: '%s' key '%s' is not a number", path, key);
    return json_number_value(v);
}

static void read_synthetic(json_t *root, DataMeta *m, const char *path)
{
    m->has_entropy = 1;
    m->seed = (uint64_t)need_int(root, "synthetic.seed", path);
    m->alphabet = (int)need_int(root, "synthetic.alphabet", path);
    m->order = (int)need_int(root, "synthetic.order", path);
    m->successors = (int)need_int(root, "synthetic.successors", path);
    m->recurrent_contexts = (int)need_int(root, "synthetic.recurrent_contexts", path);
    m->table_draws = (int)need_int(root, "synthetic.table_draws", path);
    m->entropy_rate_nats = need_real(root, "synthetic.entropy_rate_nats", path);
    m->unigram_entropy_nats = need_real(root, "synthetic.unigram_entropy_nats", path);
    json_t *prefix = need(root, "synthetic.prefix_entropy_nats", path);
    if (m->order < 1 || m->order > DATA_MAX_ORDER || !json_is_array(prefix) ||
        (int)json_array_size(prefix) != m->order)
        DIE("data: '%s' synthetic.order %d does not match its prefix_entropy_nats", path, m->order);
    for (int j = 0; j < m->order; j++)
        m->prefix_entropy_nats[j] = json_number_value(json_array_get(prefix, j));
}

int data_read_meta(const char *dir, DataMeta *m)
{
    memset(m, 0, sizeof *m);
    char *path = xasprintf("%s/meta.json", dir);
    if (access(path, F_OK) != 0) {
        free(path);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) != 0) DIE("data: cannot stat '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))   /* a FIFO would block json_load_file forever */
        DIE("data: '%s' is not a regular file (a %s); prepare the directory again", path,
            file_kind(st.st_mode));
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) DIE("data: '%s' is not valid JSON: %s (line %d)", path, err.text, err.line);
    m->format_version = (int)need_int(root, "format_version", path);
    if (m->format_version > DATA_META_FORMAT_VERSION)
        DIE("data: '%s' has format_version %d, newer than this dstrain reads (%d)", path,
            m->format_version, DATA_META_FORMAT_VERSION);
    json_t *tok = need(root, "tokenizer", path);
    snprintf(m->tokenizer, sizeof m->tokenizer, "%s",
             json_is_string(tok) ? json_string_value(tok) : "");
    m->vocab_size = (int)need_int(root, "vocab_size", path);
    m->train_tokens = need_int(root, "splits.train.tokens", path);
    m->val_tokens = need_int(root, "splits.val.tokens", path);
    m->train_shards = (int)need_int(root, "splits.train.shards", path);
    m->val_shards = (int)need_int(root, "splits.val.shards", path);
    if (!strcmp(m->tokenizer, "synthetic")) {
        read_synthetic(root, m, path);
    } else if (!strcmp(m->tokenizer, "bytes")) {
        json_t *file = need(root, "text.file", path);
        snprintf(m->text_file, sizeof m->text_file, "%s",
                 json_is_string(file) ? json_string_value(file) : "");
        m->text_bytes = need_int(root, "text.bytes", path);
        m->val_fraction = need_real(root, "text.val_fraction", path);
    } else {
        DIE("data: '%s' has unknown tokenizer '%s' (known: bytes, synthetic)", path, m->tokenizer);
    }
    json_decref(root);
    free(path);
    return 0;
}

double data_meta_loss_floor(const DataMeta *m, int T)
{
    CHECK(m->has_entropy && T >= 1 && m->order >= 1);
    double sum = 0;
    for (int j = 1; j <= T; j++)
        sum += j < m->order ? m->prefix_entropy_nats[j] : m->entropy_rate_nats;
    return sum / T;
}
