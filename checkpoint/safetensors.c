/* checkpoint/safetensors.c - safetensors files (write, checked read) and hf_import; the
 * format and the trust rules are in safetensors.h.
 * Not here: config.json and the export directory layout (hf_export.c).
 * Reference: the safetensors format description (huggingface/safetensors README). */
#define _GNU_SOURCE
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsio.h"

#define IO_BLOCK ((size_t)1 << 20)
#define INDEX_NAME "model.safetensors.index.json"

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* ---- writing ---- */

static char *header_text(const StTensor *t, int n, size_t *len)
{
    json_t *root = json_pack("{s:{s:s}}", "__metadata__", "format", "pt");
    long long at = 0;
    for (int i = 0; root && i < n; i++) {
        long long bytes = (long long)sizeof(float) * t[i].shape[0] * (t[i].ndim > 1 ? t[i].shape[1] : 1);
        json_t *shape = t[i].ndim > 1 ? json_pack("[I,I]", (json_int_t)t[i].shape[0], (json_int_t)t[i].shape[1])
                                      : json_pack("[I]", (json_int_t)t[i].shape[0]);
        json_t *e = json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape, "data_offsets", (json_int_t)at,
                              (json_int_t)(at + bytes));
        if (!e || json_object_set_new(root, t[i].name, e)) {
            json_decref(root);
            return NULL;
        }
        at += bytes;
    }
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text) return NULL;
    size_t raw = strlen(text), padded = (raw + 7) / 8 * 8;   /* data starts at 8 + padded: aligned */
    char *out = realloc(text, padded + 1);
    if (!out) {
        free(text);
        return NULL;
    }
    memset(out + raw, ' ', padded - raw);
    out[padded] = 0;
    *len = padded;
    return out;
}

int st_write_stream(const char *path, const StTensor *t, int n, StSource src, void *ctx, char *err, size_t errlen)
{
    if (!host_is_little_endian()) return ckpt_fail(err, errlen, "safetensors export needs a little-endian host");
    int rc = -1;
    size_t len = 0;
    char *header = header_text(t, n, &len);
    FILE *f = NULL;
    if (!header) {
        ckpt_fail(err, errlen, "cannot build the header of '%s' (tensor names must be UTF-8)", path);
        goto done;
    }
    f = fopen(path, "wb");
    if (!f) {
        ckpt_fail(err, errlen, "cannot create '%s': %s", path, strerror(errno));
        goto done;
    }
    unsigned char n8[8];
    for (int i = 0; i < 8; i++) n8[i] = (unsigned char)((uint64_t)len >> (8 * i));
    int ok = fwrite(n8, 1, 8, f) == 8 && fwrite(header, 1, len, f) == len;
    for (int i = 0; ok && i < n; i++) {
        size_t numel = (size_t)t[i].shape[0] * (size_t)(t[i].ndim > 1 ? t[i].shape[1] : 1);
        const float *data = t[i].data;
        if (src && src(ctx, i, &data, err, errlen)) goto done;   /* its own message */
        ok = fwrite(data, sizeof(float), numel, f) == numel;
    }
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (!ok) {
        ckpt_fail(err, errlen, "cannot write '%s': %s", path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    if (f && fclose(f) != 0 && rc == 0) rc = ckpt_fail(err, errlen, "cannot close '%s': %s", path, strerror(errno));
    free(header);
    return rc;
}

int st_write_file(const char *path, const StTensor *t, int n, char *err, size_t errlen)
{
    return st_write_stream(path, t, n, NULL, NULL, err, errlen);
}

/* ---- reading ---- */

static int pread_all(int fd, void *buf, size_t n, long long at)
{
    char *p = buf;
    while (n > 0) {
        ssize_t got = pread(fd, p, n, (off_t)at);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return -1;
        p += got;
        n -= (size_t)got;
        at += got;
    }
    return 0;
}

static StDtype parse_dtype(const char *s)
{
    if (!strcmp(s, "F32")) return ST_F32;
    if (!strcmp(s, "BF16")) return ST_BF16;
    return ST_OTHER;
}

static long long dtype_bytes(StDtype d) { return d == ST_F32 ? 4 : d == ST_BF16 ? 2 : 0; }

/* One header entry, every field checked against the data section's size. */
static int parse_entry(const char *path, const char *name, json_t *v, long long data_bytes, StEntry *e, char *err,
                       size_t errlen)
{
    json_t *dtype = json_object_get(v, "dtype"), *shape = json_object_get(v, "shape");
    json_t *offs = json_object_get(v, "data_offsets");
    if (strlen(name) >= SAFETENSORS_NAME_MAX) return ckpt_fail(err, errlen, "'%s': a tensor name is too long", path);
    snprintf(e->name, sizeof e->name, "%s", name);
    if (!json_is_object(v) || !json_is_string(dtype) || !json_is_array(shape) || !json_is_array(offs) ||
        json_array_size(offs) != 2 || json_array_size(shape) > SAFETENSORS_MAX_DIMS)
        return ckpt_fail(err, errlen, "'%s': tensor '%s' lacks a valid dtype, shape or data_offsets", path, name);
    snprintf(e->dtype_name, sizeof e->dtype_name, "%.15s", json_string_value(dtype));
    e->dtype = parse_dtype(json_string_value(dtype));
    e->ndim = (int)json_array_size(shape);
    long long numel = 1;
    for (int d = 0; d < e->ndim; d++) {
        json_t *x = json_array_get(shape, (size_t)d);
        long long dim = json_is_integer(x) ? json_integer_value(x) : -1;
        if (dim < 0 || (dim > 0 && numel > LLONG_MAX / 8 / dim))
            return ckpt_fail(err, errlen, "'%s': tensor '%s' has an invalid shape", path, name);
        e->shape[d] = dim;
        numel *= dim;
    }
    json_t *b = json_array_get(offs, 0), *en = json_array_get(offs, 1);
    e->begin = json_is_integer(b) ? json_integer_value(b) : -1;
    e->end = json_is_integer(en) ? json_integer_value(en) : -1;
    if (e->begin < 0 || e->end < e->begin || e->end > data_bytes)
        return ckpt_fail(err, errlen, "'%s': tensor '%s' has data_offsets outside the file (file truncated?)", path,
                         name);
    if (e->dtype != ST_OTHER && e->end - e->begin != numel * dtype_bytes(e->dtype))
        return ckpt_fail(err, errlen, "'%s': tensor '%s' has %lld data bytes for %lld %s elements", path, name,
                         e->end - e->begin, numel, e->dtype_name);
    return 0;
}

static int parse_header(StFile *f, json_t *root, long long data_bytes, char *err, size_t errlen)
{
    if (!json_is_object(root)) return ckpt_fail(err, errlen, "'%s': the header is not a JSON object", f->path);
    f->entries = calloc(json_object_size(root) + 1, sizeof *f->entries);
    if (!f->entries) return ckpt_fail(err, errlen, "out of memory reading '%s'", f->path);
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) continue;
        if (parse_entry(f->path, key, v, data_bytes, &f->entries[f->n], err, errlen)) return -1;
        f->n++;
    }
    return 0;
}

int st_open(const char *path, StFile *f, char *err, size_t errlen)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    snprintf(f->path, sizeof f->path, "%s", path);
    int rc = -1;
    char *header = NULL;
    json_t *root = NULL;
    struct stat st;
    unsigned char n8[8];
    f->fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);   /* a FIFO must not block; refused below */
    if (f->fd < 0 || fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ckpt_fail(err, errlen, "cannot open '%s': %s", path, f->fd < 0 ? strerror(errno) : "not a regular file");
        goto done;
    }
    uint64_t hlen = 0;
    if (st.st_size < 8 || pread_all(f->fd, n8, 8, 0)) {
        ckpt_fail(err, errlen, "'%s' is too short for a safetensors file", path);
        goto done;
    }
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | n8[i];
    if (hlen > (uint64_t)st.st_size - 8 || hlen > SAFETENSORS_MAX_HEADER) {
        ckpt_fail(err, errlen, "'%s': header length %llu does not fit the file (file damaged?)", path,
                  (unsigned long long)hlen);
        goto done;
    }
    header = malloc(hlen ? hlen : 1);
    json_error_t jerr;
    if (!header || pread_all(f->fd, header, hlen, 8)) {
        ckpt_fail(err, errlen, "cannot read the header of '%s'", path);
        goto done;
    }
    root = json_loadb(header, hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        ckpt_fail(err, errlen, "'%s': the header is not valid JSON (%s)", path, jerr.text);
        goto done;
    }
    f->data_start = 8 + (long long)hlen;
    rc = parse_header(f, root, (long long)st.st_size - f->data_start, err, errlen);
done:
    json_decref(root);
    free(header);
    if (rc) st_close(f);
    return rc;
}

int st_read_f32(const StFile *f, const StEntry *e, float *out, char *err, size_t errlen)
{
    if (!host_is_little_endian()) return ckpt_fail(err, errlen, "safetensors import needs a little-endian host");
    long long bytes = e->end - e->begin;
    if (e->dtype == ST_F32) {
        if (pread_all(f->fd, out, (size_t)bytes, f->data_start + e->begin))
            return ckpt_fail(err, errlen, "cannot read tensor '%s' from '%s'", e->name, f->path);
        return 0;
    }
    if (e->dtype != ST_BF16)
        return ckpt_fail(err, errlen, "'%s': tensor '%s' is %s; only F32 and BF16 are read", f->path, e->name,
                         e->dtype_name);
    uint16_t *buf = malloc(IO_BLOCK);
    if (!buf) return ckpt_fail(err, errlen, "out of memory");
    int rc = 0;
    for (long long done = 0; rc == 0 && done < bytes;) {
        size_t chunk = (size_t)(bytes - done) < IO_BLOCK ? (size_t)(bytes - done) : IO_BLOCK;
        if (pread_all(f->fd, buf, chunk, f->data_start + e->begin + done)) {
            rc = ckpt_fail(err, errlen, "cannot read tensor '%s' from '%s'", e->name, f->path);
            break;
        }
        for (size_t i = 0; i < chunk / 2; i++) {
            uint32_t u = (uint32_t)buf[i] << 16;   /* BF16 is the top half of an FP32 */
            memcpy(&out[done / 2 + (long long)i], &u, sizeof u);
        }
        done += (long long)chunk;
    }
    free(buf);
    return rc;
}

void st_close(StFile *f)
{
    if (f->fd >= 0) close(f->fd);
    free(f->entries);
    f->entries = NULL;
    f->n = 0;
    f->fd = -1;
}

/* ---- import ---- */

typedef struct Found {
    const StEntry *e;
    const StFile *f;
} Found;

static int cmp_found(const void *a, const void *b)
{
    return strcmp(((const Found *)a)->e->name, ((const Found *)b)->e->name);
}

/* The safetensors files of dir: the index's files, or model.safetensors; plus mtp.safetensors. */
static int list_files(const char *dir, char names[][128], int cap, int *n, char *err, size_t errlen)
{
    char path[4096];
    *n = 0;
    snprintf(path, sizeof path, "%s/%s", dir, INDEX_NAME);
    if (access(path, F_OK) == 0) {
        char *text = fsio_read_file(path, SAFETENSORS_MAX_HEADER, NULL, err, errlen);
        if (!text) return -1;
        json_t *root = json_loads(text, 0, NULL), *map = json_object_get(root, "weight_map"), *v;
        free(text);
        const char *key;
        int rc = json_is_object(map) ? 0 : ckpt_fail(err, errlen, "'%s' has no weight_map object", path);
        json_object_foreach(map, key, v) {
            const char *file = json_string_value(v);
            if (rc || !file) {
                rc = rc ? rc : ckpt_fail(err, errlen, "'%s': weight_map value of '%s' is not a file name", path, key);
                break;
            }
            int seen = 0;
            for (int i = 0; i < *n; i++) seen |= !strcmp(names[i], file);
            if (seen) continue;
            if (strchr(file, '/') || file[0] == '.' || strlen(file) >= 128 || *n == cap - 1)
                rc = ckpt_fail(err, errlen, "'%s': file '%.128s' is not a plain file name, or too many files", path,
                               file);
            else snprintf(names[(*n)++], 128, "%s", file);
        }
        json_decref(root);
        if (rc) return -1;
    } else {
        snprintf(names[(*n)++], 128, "model.safetensors");
    }
    snprintf(path, sizeof path, "%s/mtp.safetensors", dir);
    if (access(path, F_OK) == 0) snprintf(names[(*n)++], 128, "mtp.safetensors");
    return 0;
}

/* mtp_missing NULL: every table tensor must be there. Otherwise MTP tensors may be absent, all
 * of them or none (a transformers save has none): then they stay as params holds them and
 * *mtp_missing = 1. */
static int import_tensors(const char *dir, const ParamTable *t, float *params, Found *all, int n,
                          int *mtp_missing, char *err, size_t errlen)
{
    int n_mtp = 0, absent = 0;
    const char *first_absent = NULL;
    qsort(all, (size_t)n, sizeof *all, cmp_found);
    for (int i = 1; i < n; i++)
        if (!strcmp(all[i].e->name, all[i - 1].e->name))
            return ckpt_fail(err, errlen, "'%s': tensor '%s' appears twice", dir, all[i].e->name);
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        StEntry key;
        snprintf(key.name, sizeof key.name, "%s", p->name);
        Found probe = { &key, NULL };
        const Found *hit = bsearch(&probe, all, (size_t)n, sizeof *all, cmp_found);
        n_mtp += p->mtp;
        if (!hit && mtp_missing && p->mtp) {
            if (!first_absent) first_absent = p->name;
            absent++;
            continue;
        }
        if (!hit) return ckpt_fail(err, errlen, "'%s': tensor '%s' is missing", dir, p->name);
        const StEntry *e = hit->e;
        int same = e->ndim == p->ndim && e->shape[0] == p->rows && (p->ndim == 1 || e->shape[1] == p->cols);
        if (!same)
            return ckpt_fail(err, errlen, "'%s': tensor '%s' has another shape than the model's (%ld,%ld)",
                             hit->f->path, p->name, p->rows, p->cols);
        if (st_read_f32(hit->f, e, params + p->offset, err, errlen)) return -1;
    }
    if (absent > 0 && absent < n_mtp)
        return ckpt_fail(err, errlen, "'%s': MTP tensor '%s' is missing while others are there", dir, first_absent);
    if (mtp_missing) *mtp_missing = absent > 0;
    if (n != t->n - absent) {
        /* a rank's selection (model/params.h params_select) leaves out the other ranks'
         * routed experts, a pipeline rank's (filtered) the other stages' tensors */
        for (int i = 0; i < n; i++)
            if (!params_find(t, all[i].e->name) && !t->filtered &&
                !(t->selected && strstr(all[i].e->name, ".mlp.experts.")))
                return ckpt_fail(err, errlen, "'%s': tensor '%s' is not in the model (config differs?)", dir,
                                 all[i].e->name);
    }
    return 0;
}

int hf_import(const char *dir, const ParamTable *t, float *params, char *err, size_t errlen)
{
    return hf_import_tensors(dir, t, params, NULL, err, errlen);
}

int hf_import_tensors(const char *dir, const ParamTable *t, float *params, int *mtp_missing, char *err,
                      size_t errlen)
{
    enum { MAX_FILES = 1024 };
    char (*names)[128] = calloc(MAX_FILES, 128);
    StFile *files = calloc(MAX_FILES, sizeof *files);
    Found *all = NULL;
    int n_files = 0, opened = 0, rc = -1, total = 0;
    if (!names || !files) {
        ckpt_fail(err, errlen, "out of memory");
        goto done;
    }
    if (list_files(dir, names, MAX_FILES, &n_files, err, errlen)) goto done;
    char path[4096];
    for (; opened < n_files; opened++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[opened]);
        if (st_open(path, &files[opened], err, errlen)) goto done;
        total += files[opened].n;
    }
    all = calloc((size_t)total + 1, sizeof *all);
    if (!all) {
        ckpt_fail(err, errlen, "out of memory");
        goto done;
    }
    int k = 0;
    for (int i = 0; i < n_files; i++)
        for (int j = 0; j < files[i].n; j++) all[k++] = (Found){ &files[i].entries[j], &files[i] };
    rc = import_tensors(dir, t, params, all, total, mtp_missing, err, errlen);
done:
    for (int i = 0; files && i < opened; i++) st_close(&files[i]);
    free(all);
    free(files);
    free(names);
    return rc;
}
