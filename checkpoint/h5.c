/* checkpoint/h5.c - one rank's HDF5 checkpoint file (layout and trust rules in h5.h).
 * Not here: the directory, manifest and save protocol (ckpt.c), the filter (zstd_filter.c).
 * Reference: HDF5 1.10 C API; every call is checked by H5_CHECK, which names the call, the
 * file and HDF5's own reason. */
#include "h5.h"

#include <hdf5.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsio.h"
#include "zstd_filter.h"

struct CkptH5 {
    hid_t file;
    int writing;
    char path[4096];
};

/* One row per CkptState field: its attribute under /state, where it lives, and its sign. */
typedef struct StateField {
    const char *name;
    size_t offset, size;
    int is_signed;
} StateField;

static const StateField STATE_FIELDS[] = {
    { "step", offsetof(CkptState, step), sizeof(int), 1 },
    { "tokens", offsetof(CkptState, tokens), sizeof(long long), 1 },
    { "data_seed", offsetof(CkptState, data.seed), sizeof(uint64_t), 0 },
    { "data_cursor", offsetof(CkptState, data.cursor), sizeof(uint64_t), 0 },
    { "rng", offsetof(CkptState, rng), sizeof(uint64_t), 0 },
};
#define N_STATE_FIELDS (int)(sizeof STATE_FIELDS / sizeof STATE_FIELDS[0])
/* A field added to CkptState must get a row above, or a resume silently loses it. */
_Static_assert(sizeof(CkptState) == 40, "CkptState changed: update STATE_FIELDS in checkpoint/h5.c");

/* ---- errors ---- */

typedef struct StackText { char outer[160], inner[160]; } StackText;

/* One line from an HDF5 error description: a low-level I/O failure ("file write failed: time
 * = ...\n, filename = ..., errno = 28, error message = 'No space left on device'") becomes its
 * system message; any other text has its line breaks turned into spaces. */
static void describe(char *out, size_t n, const char *desc)
{
    const char *sys = desc ? strstr(desc, "error message = '") : NULL;
    if (sys) {
        sys += strlen("error message = '");
        snprintf(out, n, "%.*s", (int)strcspn(sys, "'"), sys);
    } else {
        snprintf(out, n, "%s", desc ? desc : "");
    }
    for (char *c = out; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
}

static herr_t stack_walk(unsigned n, const H5E_error2_t *e, void *data)
{
    StackText *t = data;
    if (n == 0) describe(t->outer, sizeof t->outer, e->desc);
    describe(t->inner, sizeof t->inner, e->desc);
    return 0;
}

/* "'path': H5Dopen2 failed: <outer> (<inner>)" from the expression text and HDF5's stack. */
static int h5_fail(const char *path, const char *expr, char *err, size_t errlen)
{
    const char *call = strstr(expr, "H5");
    int len = 0;
    while (call && call[len] && call[len] != '(' && len < 40) len++;
    StackText t = { "", "" };
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, stack_walk, &t);
    H5Eclear2(H5E_DEFAULT);
    const char *zerr = ckpt_zstd_last_error();
    if (*zerr) snprintf(t.inner, sizeof t.inner, "%s", zerr);
    if (!*t.outer) snprintf(t.outer, sizeof t.outer, "failed");
    if (*t.inner && strcmp(t.inner, t.outer))
        return ckpt_fail(err, errlen, "'%s': %.*s: %s (%s)", path, len, call ? call : expr, t.outer, t.inner);
    return ckpt_fail(err, errlen, "'%s': %.*s: %s", path, len, call ? call : expr, t.outer);
}

/* Inside functions with `int rc = -1;`, a `done:` label and err/errlen parameters. */
#define H5_CHECK(path, expr) do { if ((expr) < 0) { h5_fail(path, #expr, err, errlen); goto done; } } while (0)
#define FAIL(...) do { ckpt_fail(err, errlen, __VA_ARGS__); goto done; } while (0)

static void close_id(hid_t id)
{
    if (id < 0) return;
    switch (H5Iget_type(id)) {
    case H5I_FILE: H5Fclose(id); break;
    case H5I_GROUP: H5Gclose(id); break;
    case H5I_DATASET: H5Dclose(id); break;
    case H5I_DATASPACE: H5Sclose(id); break;
    case H5I_DATATYPE: H5Tclose(id); break;
    case H5I_ATTR: H5Aclose(id); break;
    case H5I_GENPROP_LST: H5Pclose(id); break;
    default: break;
    }
}

/* Per thread (HDF5 keeps an error stack per thread): no automatic printing; the filter. */
static int h5_begin(char *err, size_t errlen)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return ckpt_zstd_register(err, errlen);
}

CkptH5Slice ckpt_h5_whole(int ndim, long long rows, long long cols)
{
    CkptH5Slice s;
    memset(&s, 0, sizeof s);
    s.ndim = ndim;
    s.shape[0] = s.full_shape[0] = rows;
    if (ndim > 1) s.shape[1] = s.full_shape[1] = cols;
    return s;
}

/* ---- writing ---- */

static int write_i64_attr(hid_t obj, const char *path, const char *name, hid_t type, int n, const void *values,
                          char *err, size_t errlen)
{
    int rc = -1;
    hid_t space = -1, attr = -1;
    hsize_t dims[1] = { (hsize_t)n };
    H5_CHECK(path, space = n > 0 ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_SCALAR));
    H5_CHECK(path, attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT));
    H5_CHECK(path, H5Awrite(attr, type == H5T_STD_U64LE ? H5T_NATIVE_UINT64 : H5T_NATIVE_INT64, values));
    rc = 0;
done:
    close_id(attr);
    close_id(space);
    return rc;
}

CkptH5 *ckpt_h5_create(const char *path, int rank, int world_size, char *err, size_t errlen)
{
    int rc = -1;
    hid_t fcpl = -1, fapl = -1;
    CkptH5 *h = calloc(1, sizeof *h);
    if (!h) FAIL("out of memory creating '%s'", path);
    h->file = -1;
    h->writing = 1;
    snprintf(h->path, sizeof h->path, "%s", path);
    if (h5_begin(err, errlen)) goto done;
    H5_CHECK(path, fcpl = H5Pcreate(H5P_FILE_CREATE));
    H5_CHECK(path, H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED));
    H5_CHECK(path, H5Pset_obj_track_times(fcpl, 0));
    H5_CHECK(path, fapl = H5Pcreate(H5P_FILE_ACCESS));
    H5_CHECK(path, H5Pset_libver_bounds(fapl, H5F_LIBVER_V110, H5F_LIBVER_V110));
    H5_CHECK(path, H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG));
    H5_CHECK(path, H5Pset_file_locking(fapl, 0, 1));   /* one writer, in a private .tmp directory */
    H5_CHECK(path, h->file = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl));
    long long meta[3] = { CKPT_FORMAT_VERSION, rank, world_size };
    if (write_i64_attr(h->file, path, "format_version", H5T_STD_I64LE, 0, &meta[0], err, errlen) ||
        write_i64_attr(h->file, path, "rank", H5T_STD_I64LE, 0, &meta[1], err, errlen) ||
        write_i64_attr(h->file, path, "world_size", H5T_STD_I64LE, 0, &meta[2], err, errlen))
        goto done;
    rc = 0;
done:
    close_id(fapl);
    close_id(fcpl);
    if (rc != 0 && h) {
        close_id(h->file);
        free(h);
        h = NULL;
    }
    return h;
}

/* Whole rows per chunk where a row fits in CKPT_H5_CHUNK_BYTES, else a run of one row. */
static void choose_chunk(int ndim, const hsize_t *dims, hsize_t *chunk)
{
    const hsize_t max = CKPT_H5_CHUNK_BYTES / sizeof(float);
    if (ndim == 1) {
        chunk[0] = dims[0] < max ? dims[0] : max;
    } else if (dims[1] >= max) {
        chunk[0] = 1;
        chunk[1] = max;
    } else {
        chunk[1] = dims[1];
        chunk[0] = dims[0] < max / dims[1] ? dims[0] : max / dims[1];
    }
}

static int check_slice(const CkptH5Slice *s)
{
    if (s->ndim < 1 || s->ndim > CKPT_H5_MAX_DIMS) return -1;
    for (int d = 0; d < s->ndim; d++)
        if (s->shape[d] < 1 || s->slice_start[d] < 0 || s->slice_start[d] + s->shape[d] > s->full_shape[d]) return -1;
    return 0;
}

int ckpt_h5_write_tensor(CkptH5 *h, const char *name, const CkptH5Slice *s, const float *data, char *err,
                         size_t errlen)
{
    int rc = -1;
    hid_t space = -1, dcpl = -1, dset = -1;
    hsize_t dims[CKPT_H5_MAX_DIMS] = { 1, 1 }, chunk[CKPT_H5_MAX_DIMS] = { 1, 1 };
    if (check_slice(s)) FAIL("'%s': tensor '%s' has an invalid slice", h->path, name);
    for (int d = 0; d < s->ndim; d++) dims[d] = (hsize_t)s->shape[d];
    choose_chunk(s->ndim, dims, chunk);
    unsigned cd[2] = { CKPT_H5_ZSTD_LEVEL, (unsigned)(sizeof(float) * chunk[0] * (s->ndim > 1 ? chunk[1] : 1)) };
    H5_CHECK(h->path, space = H5Screate_simple(s->ndim, dims, NULL));
    H5_CHECK(h->path, dcpl = H5Pcreate(H5P_DATASET_CREATE));
    H5_CHECK(h->path, H5Pset_chunk(dcpl, s->ndim, chunk));
    H5_CHECK(h->path, H5Pset_shuffle(dcpl));
    H5_CHECK(h->path, H5Pset_filter(dcpl, CKPT_ZSTD_FILTER_ID, H5Z_FLAG_MANDATORY, 2, cd));
    H5_CHECK(h->path, H5Pset_obj_track_times(dcpl, 0));
    H5_CHECK(h->path, dset = H5Dcreate2(h->file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
    H5_CHECK(h->path, H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    if (write_i64_attr(dset, h->path, "full_shape", H5T_STD_I64LE, s->ndim, s->full_shape, err, errlen) ||
        write_i64_attr(dset, h->path, "slice_start", H5T_STD_I64LE, s->ndim, s->slice_start, err, errlen))
        goto done;
    rc = 0;
done:
    close_id(dset);
    close_id(dcpl);
    close_id(space);
    return rc;
}

int ckpt_h5_write_state(CkptH5 *h, const CkptState *s, char *err, size_t errlen)
{
    int rc = -1;
    hid_t gcpl = -1, group = -1;
    H5_CHECK(h->path, gcpl = H5Pcreate(H5P_GROUP_CREATE));
    H5_CHECK(h->path, H5Pset_obj_track_times(gcpl, 0));
    H5_CHECK(h->path, group = H5Gcreate2(h->file, "state", H5P_DEFAULT, gcpl, H5P_DEFAULT));
    for (int i = 0; i < N_STATE_FIELDS; i++) {
        const StateField *f = &STATE_FIELDS[i];
        const char *field = (const char *)s + f->offset;
        long long v = 0;
        if (f->size == sizeof(int)) {
            int iv;
            memcpy(&iv, field, sizeof iv);
            v = iv;
        } else {
            memcpy(&v, field, sizeof v);   /* int64 / uint64 bits, typed by the attribute */
        }
        if (write_i64_attr(group, h->path, f->name, f->is_signed ? H5T_STD_I64LE : H5T_STD_U64LE, 0, &v, err, errlen))
            goto done;
    }
    rc = 0;
done:
    close_id(group);
    close_id(gcpl);
    return rc;
}

/* ---- reading ---- */

CkptH5 *ckpt_h5_open(const char *path, char *err, size_t errlen)
{
    int rc = -1;
    hid_t fapl = -1;
    CkptH5 *h = calloc(1, sizeof *h);
    if (!h) FAIL("out of memory opening '%s'", path);
    h->file = -1;
    snprintf(h->path, sizeof h->path, "%s", path);
    if (h5_begin(err, errlen)) goto done;
    H5_CHECK(path, fapl = H5Pcreate(H5P_FILE_ACCESS));
    H5_CHECK(path, H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG));
    H5_CHECK(path, H5Pset_file_locking(fapl, 0, 1));
    H5_CHECK(path, h->file = H5Fopen(path, H5F_ACC_RDONLY, fapl));
    int rank, world_size;
    if (ckpt_h5_read_layout(h, &rank, &world_size, err, errlen)) goto done;
    rc = 0;
done:
    close_id(fapl);
    if (rc != 0 && h) {
        close_id(h->file);
        free(h);
        h = NULL;
    }
    return h;
}

/* An integer attribute of n values (n == 0: scalar) of 8 bytes and the given sign. */
static int read_i64_attr(hid_t obj, const char *path, const char *what, const char *name, int n, int is_signed,
                         void *out, char *err, size_t errlen)
{
    int rc = -1;
    hid_t attr = -1, type = -1, space = -1;
    htri_t exists;
    H5_CHECK(path, exists = H5Aexists(obj, name));
    if (!exists) FAIL("'%s': %s has no attribute '%s' (file damaged?)", path, what, name);
    H5_CHECK(path, attr = H5Aopen(obj, name, H5P_DEFAULT));
    H5_CHECK(path, type = H5Aget_type(attr));
    H5_CHECK(path, space = H5Aget_space(attr));
    H5S_class_t sclass = H5Sget_simple_extent_type(space);
    int ok = H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 8 &&
             H5Tget_sign(type) == (is_signed ? H5T_SGN_2 : H5T_SGN_NONE);
    if (n == 0) ok = ok && sclass == H5S_SCALAR;
    else ok = ok && sclass == H5S_SIMPLE && H5Sget_simple_extent_ndims(space) == 1 &&
              H5Sget_simple_extent_npoints(space) == n;
    if (!ok) FAIL("'%s': attribute '%s' of %s is not %s 64-bit integer%s", path, name, what,
                  is_signed ? "a signed" : "an unsigned", n ? "s of the expected count" : "");
    H5_CHECK(path, H5Aread(attr, is_signed ? H5T_NATIVE_INT64 : H5T_NATIVE_UINT64, out));
    rc = 0;
done:
    close_id(space);
    close_id(type);
    close_id(attr);
    return rc;
}

int ckpt_h5_read_layout(CkptH5 *h, int *rank, int *world_size, char *err, size_t errlen)
{
    int64_t v[3];
    if (read_i64_attr(h->file, h->path, "the file", "format_version", 0, 1, &v[0], err, errlen) ||
        read_i64_attr(h->file, h->path, "the file", "rank", 0, 1, &v[1], err, errlen) ||
        read_i64_attr(h->file, h->path, "the file", "world_size", 0, 1, &v[2], err, errlen))
        return -1;
    if (v[0] < 1 || v[0] > CKPT_FORMAT_VERSION)
        return ckpt_fail(err, errlen, "'%s': format version %lld is not one this dstrain reads (1..%d)", h->path,
                         (long long)v[0], CKPT_FORMAT_VERSION);
    if (v[2] < 1 || v[2] > INT_MAX || v[1] < 0 || v[1] >= v[2])
        return ckpt_fail(err, errlen, "'%s': rank %lld of world size %lld is impossible (file damaged?)", h->path,
                         (long long)v[1], (long long)v[2]);
    *rank = (int)v[1];
    *world_size = (int)v[2];
    return 0;
}

/* The dataset's chunking and filters must be what ckpt_h5_write_tensor makes: chunk of at
 * most CKPT_H5_CHUNK_BYTES, [shuffle(4-byte), zstd(level, chunk bytes)]. Only then is the
 * zstd frame size check of the filter tied to the true chunk size. */
static int check_pipeline(const CkptH5 *h, const char *name, hid_t dcpl, int ndim, const hsize_t *dims, char *err,
                          size_t errlen)
{
    int rc = -1;
    hsize_t chunk[CKPT_H5_MAX_DIMS + 1];
    unsigned cd[8], flags, config;
    size_t ncd = 8, bytes = sizeof(float);
    char fname[64];
    if (H5Pget_layout(dcpl) != H5D_CHUNKED)
        FAIL("'%s': tensor '%s' is not chunked (not written by dstrain?)", h->path, name);
    if (H5Pget_chunk(dcpl, CKPT_H5_MAX_DIMS + 1, chunk) != ndim)
        FAIL("'%s': tensor '%s' has a bad chunk rank", h->path, name);
    for (int d = 0; d < ndim; d++) {
        if (chunk[d] < 1 || chunk[d] > dims[d]) FAIL("'%s': tensor '%s' has a bad chunk shape", h->path, name);
        bytes *= chunk[d];
        if (bytes > CKPT_H5_CHUNK_BYTES)
            FAIL("'%s': tensor '%s' has chunks above %zu bytes", h->path, name, CKPT_H5_CHUNK_BYTES);
    }
    if (H5Pget_nfilters(dcpl) != 2) FAIL("'%s': tensor '%s' does not have the shuffle + zstd filters", h->path, name);
    H5Z_filter_t f0 = H5Pget_filter2(dcpl, 0, &flags, &ncd, cd, sizeof fname, fname, &config);
    if (f0 != H5Z_FILTER_SHUFFLE || ncd != 1 || cd[0] != sizeof(float))
        FAIL("'%s': tensor '%s' does not start with a 4-byte shuffle filter", h->path, name);
    ncd = 8;
    H5Z_filter_t f1 = H5Pget_filter2(dcpl, 1, &flags, &ncd, cd, sizeof fname, fname, &config);
    if (f1 != CKPT_ZSTD_FILTER_ID || ncd != 2 || cd[1] != bytes)
        FAIL("'%s': tensor '%s' does not end with the zstd filter for %zu-byte chunks", h->path, name, bytes);
    rc = 0;
done:
    H5Eclear2(H5E_DEFAULT);
    return rc;
}

static void format_dims(char *out, size_t cap, int ndim, const long long *dims)
{
    size_t used = (size_t)snprintf(out, cap, "(");
    for (int d = 0; d < ndim && used < cap; d++)
        used += (size_t)snprintf(out + used, cap - used, d ? ",%lld" : "%lld", dims[d]);
    if (used < cap) snprintf(out + used, cap - used, ")");
}

/* Open `name` only if it is a hard link to an object of the given type (no soft or external
 * link is followed: a hostile file must not make us open another file). */
static hid_t open_object(const CkptH5 *h, const char *name, H5I_type_t want, char *err, size_t errlen)
{
    int rc = -1;
    hid_t obj = -1;
    htri_t exists;
    H5L_info_t link;
    const char *kind = want == H5I_DATASET ? "tensor" : "group";
    H5_CHECK(h->path, exists = H5Lexists(h->file, name, H5P_DEFAULT));
    if (!exists) FAIL("'%s': %s '%s' is missing (checkpoint of another model?)", h->path, kind, name);
    H5_CHECK(h->path, H5Lget_info(h->file, name, &link, H5P_DEFAULT));
    if (link.type != H5L_TYPE_HARD) FAIL("'%s': '%s' is a link, not a %s", h->path, name, kind);
    H5_CHECK(h->path, obj = H5Oopen(h->file, name, H5P_DEFAULT));
    if (H5Iget_type(obj) != want) FAIL("'%s': '%s' is not a %s", h->path, name, kind);
    rc = 0;
done:
    if (rc != 0) {
        close_id(obj);
        return -1;
    }
    return obj;
}

static int check_shape(const CkptH5 *h, const char *name, hid_t dset, const CkptH5Slice *want, hsize_t *dims,
                       char *err, size_t errlen)
{
    int rc = -1;
    hid_t type = -1, space = -1;
    char got_s[96], want_s[96];
    H5_CHECK(h->path, type = H5Dget_type(dset));
    if (H5Tequal(type, H5T_IEEE_F32LE) <= 0) FAIL("'%s': tensor '%s' is not float32", h->path, name);
    H5_CHECK(h->path, space = H5Dget_space(dset));
    int ndim = H5Sget_simple_extent_type(space) == H5S_SIMPLE ? H5Sget_simple_extent_ndims(space) : -1;
    if (ndim < 1 || ndim > CKPT_H5_MAX_DIMS) FAIL("'%s': tensor '%s' has rank %d, not 1 or 2", h->path, name, ndim);
    H5_CHECK(h->path, H5Sget_simple_extent_dims(space, dims, NULL));
    long long got[CKPT_H5_MAX_DIMS];
    int same = ndim == want->ndim;
    for (int d = 0; d < ndim; d++) {
        got[d] = (long long)dims[d];
        same = same && got[d] == want->shape[d];
    }
    if (!same) {
        format_dims(got_s, sizeof got_s, ndim, got);
        format_dims(want_s, sizeof want_s, want->ndim, want->shape);
        FAIL("'%s': tensor '%s' has shape %s, the model expects %s", h->path, name, got_s, want_s);
    }
    rc = 0;
done:
    close_id(space);
    close_id(type);
    return rc;
}

static int check_slice_attrs(const CkptH5 *h, const char *name, hid_t dset, const CkptH5Slice *want, char *err,
                             size_t errlen)
{
    int64_t full[CKPT_H5_MAX_DIMS], start[CKPT_H5_MAX_DIMS];
    char what[CKPT_H5_NAME_MAX + 16];
    snprintf(what, sizeof what, "tensor '%s'", name);
    if (read_i64_attr(dset, h->path, what, "full_shape", want->ndim, 1, full, err, errlen) ||
        read_i64_attr(dset, h->path, what, "slice_start", want->ndim, 1, start, err, errlen))
        return -1;
    for (int d = 0; d < want->ndim; d++)
        if (full[d] != want->full_shape[d] || start[d] != want->slice_start[d])
            return ckpt_fail(err, errlen, "'%s': tensor '%s' holds another slice of the full tensor than this rank "
                             "needs (resharding is not supported)", h->path, name);
    return 0;
}

int ckpt_h5_read_tensor(CkptH5 *h, const char *name, const CkptH5Slice *want, float *out, char *err,
                        size_t errlen)
{
    int rc = -1;
    hid_t dset = -1, dcpl = -1;
    hsize_t dims[CKPT_H5_MAX_DIMS];
    if (check_slice(want)) FAIL("'%s': tensor '%s': invalid slice requested", h->path, name);
    if ((dset = open_object(h, name, H5I_DATASET, err, errlen)) < 0) goto done;
    if (check_shape(h, name, dset, want, dims, err, errlen)) goto done;
    H5_CHECK(h->path, dcpl = H5Dget_create_plist(dset));
    if (check_pipeline(h, name, dcpl, want->ndim, dims, err, errlen)) goto done;
    if (check_slice_attrs(h, name, dset, want, err, errlen)) goto done;
    H5_CHECK(h->path, H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, out));
    rc = 0;
done:
    if (rc != 0 && err && errlen && strstr(err, name) == NULL) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", err);
        ckpt_fail(err, errlen, "%s (reading tensor '%s')", inner, name);
    }
    close_id(dcpl);
    close_id(dset);
    return rc;
}

int ckpt_h5_read_state(CkptH5 *h, CkptState *s, char *err, size_t errlen)
{
    int rc = -1;
    hid_t group = -1;
    if ((group = open_object(h, "state", H5I_GROUP, err, errlen)) < 0) goto done;
    memset(s, 0, sizeof *s);
    for (int i = 0; i < N_STATE_FIELDS; i++) {
        const StateField *f = &STATE_FIELDS[i];
        int64_t v;
        if (read_i64_attr(group, h->path, "the training state", f->name, 0, f->is_signed, &v, err, errlen)) goto done;
        char *field = (char *)s + f->offset;
        if (f->size == sizeof(int)) {
            if (v < 0 || v > INT_MAX) FAIL("'%s': state '%s' = %lld is out of range", h->path, f->name, (long long)v);
            int iv = (int)v;
            memcpy(field, &iv, sizeof iv);
        } else {
            memcpy(field, &v, sizeof v);
        }
    }
    rc = 0;
done:
    close_id(group);
    return rc;
}

int ckpt_h5_count(CkptH5 *h, long long *n, char *err, size_t errlen)
{
    int rc = -1;
    H5G_info_t info;
    H5_CHECK(h->path, H5Gget_info(h->file, &info));
    *n = (long long)info.nlinks;
    rc = 0;
done:
    return rc;
}

int ckpt_h5_info(CkptH5 *h, const char *name, CkptH5Info *info, char *err, size_t errlen)
{
    int rc = -1;
    hid_t obj = -1, type = -1, space = -1;
    memset(info, 0, sizeof *info);
    if ((obj = open_object(h, name, H5I_DATASET, err, errlen)) < 0) goto done;
    H5_CHECK(h->path, type = H5Dget_type(obj));
    H5_CHECK(h->path, space = H5Dget_space(obj));
    int ndim = H5Sget_simple_extent_ndims(space);
    if (ndim < 0 || ndim > CKPT_H5_MAX_LIST_DIMS) FAIL("'%s': '%s' has rank %d", h->path, name, ndim);
    hsize_t dims[CKPT_H5_MAX_LIST_DIMS];
    H5_CHECK(h->path, H5Sget_simple_extent_dims(space, dims, NULL));
    info->ndim = ndim;
    long long n = 1;
    for (int d = 0; d < ndim; d++) {
        info->dims[d] = (long long)dims[d];
        n = (long long)dims[d] > 0 && n > LLONG_MAX / (long long)dims[d] ? LLONG_MAX : n * (long long)dims[d];
    }
    size_t tsize = H5Tget_size(type);
    if (H5Tequal(type, H5T_IEEE_F32LE) > 0) snprintf(info->dtype, sizeof info->dtype, "float32");
    else snprintf(info->dtype, sizeof info->dtype, "class %d, %zu bytes", (int)H5Tget_class(type), tsize);
    info->raw_bytes = tsize && n <= LLONG_MAX / (long long)tsize ? n * (long long)tsize : LLONG_MAX;
    info->stored_bytes = (long long)H5Dget_storage_size(obj);
    rc = 0;
done:
    H5Eclear2(H5E_DEFAULT);
    close_id(space);
    close_id(type);
    close_id(obj);
    return rc;
}

int ckpt_h5_close(CkptH5 *h, char *err, size_t errlen)
{
    if (!h) return 0;
    int rc = 0;
    if (h->file >= 0 && H5Fclose(h->file) < 0) {
        rc = -1;
        if (err) h5_fail(h->path, "H5Fclose", err, errlen);
        else H5Eclear2(H5E_DEFAULT);
    }
    free(h);
    return rc;
}
