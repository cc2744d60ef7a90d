/* checkpoint/ckpt_stream.c - a checkpoint read tensor by tensor (contract in ckpt_stream.h).
 * Not here: loading a whole table for training (ckpt.c ckpt_load), the file formats (h5.c,
 * manifest.c). */
#define _GNU_SOURCE
#include "ckpt_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "fsio.h"
#include "h5.h"
#include "manifest.h"

#define PATH_CAP 4096

/* Rows [start, start + count) of table entry `tensor`, held by manifest file `file` as its
 * tensor #k (count -1 in the manifest, format 1: the whole tensor). */
typedef struct Block {
    int tensor, file, k;
    long long start, count;
} Block;

struct CkptStream {
    char dir[PATH_CAP];
    const ParamTable *t;
    CkptManifest m;
    Block *blocks;              /* (n_blocks) sorted by tensor, then start */
    long long n_blocks;
    long long *first;           /* (t->n + 1) the first block of each entry; first[t->n] = n_blocks */
    CkptH5 **h;                 /* (m.n_files) open handles, NULL where closed */
    unsigned long long *used;   /* (m.n_files) when each was last read (tick) */
    unsigned long long tick;
    int n_open;
};

/* "checkpoint '<dir>': <inner>" around whatever err holds. */
static int in_dir(const char *dir, char *err, size_t errlen)
{
    char inner[1024];
    snprintf(inner, sizeof inner, "%s", err ? err : "");
    return ckpt_fail(err, errlen, "checkpoint '%s': %s", dir, inner);
}

static int cmp_param(const void *a, const void *b)
{
    return strcmp((*(const Param *const *)a)->name, (*(const Param *const *)b)->name);
}

static int cmp_block(const void *a, const void *b)
{
    const Block *x = a, *y = b;
    if (x->tensor != y->tensor) return x->tensor < y->tensor ? -1 : 1;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Every block the manifest lists, each checked against its tensor's rows. */
static int list_blocks(CkptStream *s, const Param **sorted, char *err, size_t errlen)
{
    long long n = 0;
    for (int f = 0; f < s->m.n_files; f++) n += s->m.files[f].n_tensors;
    s->blocks = calloc((size_t)n + 1, sizeof *s->blocks);
    if (!s->blocks) return ckpt_fail(err, errlen, "out of memory");
    for (int f = 0; f < s->m.n_files; f++) {
        const CkptManifestFile *mf = &s->m.files[f];
        for (int k = 0; k < mf->n_tensors; k++) {
            Param key;
            snprintf(key.name, sizeof key.name, "%s", mf->tensors[k]);
            const Param *kp = &key, **hit = bsearch(&kp, sorted, (size_t)s->t->n, sizeof *sorted, cmp_param);
            if (!hit)
                return ckpt_fail(err, errlen, "tensor '%s' is not in the model (checkpoint of another config?)",
                                 mf->tensors[k]);
            const Param *p = *hit;
            Block b = { (int)(p - s->t->p), f, k, 0, p->rows };
            if (mf->row_count[k] >= 0) {
                b.start = mf->row_start[k];
                b.count = mf->row_count[k];
            }
            if (b.count < 1 || b.start < 0 || b.start + b.count > p->rows)
                return ckpt_fail(err, errlen, "'%s' holds rows %lld..%lld of '%s', which has %ld (checkpoint of "
                                 "another config?)", mf->name, b.start, b.start + b.count - 1, p->name, p->rows);
            s->blocks[s->n_blocks++] = b;
        }
    }
    qsort(s->blocks, (size_t)s->n_blocks, sizeof *s->blocks, cmp_block);
    return 0;
}

/* The blocks of every table entry cover its rows exactly once, in order. */
static int check_cover(CkptStream *s, char *err, size_t errlen)
{
    long long b = 0;
    for (int i = 0; i < s->t->n; i++) {
        const Param *p = &s->t->p[i];
        long long next = 0;
        s->first[i] = b;
        for (; b < s->n_blocks && s->blocks[b].tensor == i; b++) {
            const Block *x = &s->blocks[b];
            if (x->start != next)
                return ckpt_fail(err, errlen, "tensor '%s' %s rows %lld..%lld (checkpoint of another config?)",
                                 p->name, x->start > next ? "is missing" : "holds twice", x->start > next ? next
                                 : x->start, (x->start > next ? x->start : next) - 1);
            next = x->start + x->count;
        }
        if (next != p->rows)
            return ckpt_fail(err, errlen, "tensor '%s' is missing rows %lld..%ld (checkpoint of another config?)",
                             p->name, next, p->rows - 1);
    }
    s->first[s->t->n] = b;
    return 0;
}

static int build_index(CkptStream *s, char *err, size_t errlen)
{
    const Param **sorted = malloc((size_t)s->t->n * sizeof *sorted + 1);
    s->first = calloc((size_t)s->t->n + 1, sizeof *s->first);
    s->h = calloc((size_t)s->m.n_files + 1, sizeof *s->h);
    s->used = calloc((size_t)s->m.n_files + 1, sizeof *s->used);
    int rc = sorted && s->first && s->h && s->used ? 0 : ckpt_fail(err, errlen, "out of memory");
    for (int i = 0; rc == 0 && i < s->t->n; i++) sorted[i] = &s->t->p[i];
    if (rc == 0) qsort(sorted, (size_t)s->t->n, sizeof *sorted, cmp_param);
    if (rc == 0) rc = list_blocks(s, sorted, err, errlen);
    if (rc == 0) rc = check_cover(s, err, errlen);
    free(sorted);
    return rc;
}

CkptStream *ckpt_stream_open(const char *ckpt_dir, const ParamTable *table, char *err, size_t errlen)
{
    CkptStream *s = calloc(1, sizeof *s);
    if (!s) {
        ckpt_fail(err, errlen, "out of memory");
        return NULL;
    }
    s->t = table;
    if (snprintf(s->dir, sizeof s->dir, "%s", ckpt_dir) >= (int)sizeof s->dir) {
        free(s);
        ckpt_fail(err, errlen, "path too long: '%s'", ckpt_dir);
        return NULL;
    }
    if (ckpt_verify(ckpt_dir, err, errlen)) {   /* names the checkpoint itself */
        free(s);
        return NULL;
    }
    int rc = ckpt_manifest_read(ckpt_dir, &s->m, err, errlen);
    if (rc == 0) rc = build_index(s, err, errlen);
    if (rc == 0) return s;
    in_dir(ckpt_dir, err, errlen);
    ckpt_stream_close(s);
    return NULL;
}

CkptStreamInfo ckpt_stream_info(const CkptStream *s)
{
    CkptStreamInfo i = { s->m.step, s->m.tokens, s->m.n_files, s->m.has_ema, s->n_blocks };
    return i;
}

/* Rank file f opened and checked against the manifest (the least recently used one closed
 * first when CKPT_STREAM_OPEN_FILES are open). */
static CkptH5 *file_handle(CkptStream *s, int f, char *err, size_t errlen)
{
    s->used[f] = ++s->tick;
    if (s->h[f]) return s->h[f];
    if (s->n_open >= CKPT_STREAM_OPEN_FILES) {
        int lru = -1;
        for (int i = 0; i < s->m.n_files; i++)
            if (s->h[i] && (lru < 0 || s->used[i] < s->used[lru])) lru = i;
        ckpt_h5_close(s->h[lru], NULL, 0);
        s->h[lru] = NULL;
        s->n_open--;
    }
    const CkptManifestFile *mf = &s->m.files[f];
    char path[PATH_CAP];
    if (snprintf(path, sizeof path, "%s/%s", s->dir, mf->name) >= (int)sizeof path) {
        ckpt_fail(err, errlen, "path too long: '%s'", s->dir);
        return NULL;
    }
    CkptH5 *h = ckpt_h5_open(path, err, errlen);
    int rank, world;
    long long links, want = (long long)mf->n_tensors * (1 + (s->m.has_moments ? 2 : 0) + (s->m.has_ema ? 1 : 0)) + 1;
    int rc = h ? ckpt_h5_read_layout(h, &rank, &world, err, errlen) : -1;
    if (rc == 0 && (rank != mf->rank || world != s->m.layout.world_size))
        rc = ckpt_fail(err, errlen, "'%s' says rank %d of %d, the manifest rank %d of %d", mf->name, rank, world,
                       mf->rank, s->m.layout.world_size);
    if (rc == 0) rc = ckpt_h5_count(h, &links, err, errlen);
    if (rc == 0 && links != want)
        rc = ckpt_fail(err, errlen, "'%s' holds %lld objects, the manifest lists %lld", mf->name, links, want);
    if (rc) {
        ckpt_h5_close(h, NULL, 0);
        return NULL;
    }
    s->n_open++;
    return s->h[f] = h;
}

int ckpt_stream_read(CkptStream *s, int i, const char *suffix, float *out, char *err, size_t errlen)
{
    if (i < 0 || i >= s->t->n) return ckpt_fail(err, errlen, "no tensor #%d in the table", i);
    const Param *p = &s->t->p[i];
    char name[CKPT_H5_NAME_MAX];
    snprintf(name, sizeof name, "%s%s%s", p->name, suffix ? "." : "", suffix ? suffix : "");
    if (suffix && !strcmp(suffix, "ema") && !s->m.has_ema) {
        ckpt_fail(err, errlen, "holds no EMA of '%s'", p->name);
        return in_dir(s->dir, err, errlen);
    }
    for (long long b = s->first[i]; b < s->first[i + 1]; b++) {
        const Block *x = &s->blocks[b];
        CkptH5 *h = file_handle(s, x->file, err, errlen);
        CkptH5Slice sl = ckpt_h5_whole(p->ndim, p->rows, p->cols);
        if (s->m.files[x->file].row_count[x->k] >= 0) {   /* format 2: the block's own slice */
            sl.shape[0] = x->count;
            sl.slice_start[0] = x->start;
        }
        if (!h || ckpt_h5_read_tensor(h, name, &sl, out + (size_t)x->start * (size_t)p->cols, err, errlen))
            return in_dir(s->dir, err, errlen);
    }
    return 0;
}

void ckpt_stream_close(CkptStream *s)
{
    if (!s) return;
    for (int f = 0; s->h && f < s->m.n_files; f++) ckpt_h5_close(s->h[f], NULL, 0);
    ckpt_manifest_free(&s->m);
    free(s->blocks);
    free(s->first);
    free(s->h);
    free(s->used);
    free(s);
}
