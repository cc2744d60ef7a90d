/* checkpoint/manifest.c - write, read and check manifest.json (format in manifest.h).
 * Not here: checking the listed files themselves (ckpt.c does, with fsio_hash_file).
 * Reference: jansson's json_pack / json_loadb; the self-checksum rule is ours. */
#include "manifest.h"

#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsio.h"
#include "hash.h"

#define MAX_LAYOUT (1 << 24)   /* far above any real job; keeps products in range */

static void hex64(uint64_t v, char out[17]) { snprintf(out, 17, "%016" PRIx64, v); }

static int parse_hex64(const char *s, uint64_t *v)
{
    if (strlen(s) != 16) return -1;
    uint64_t x = 0;
    for (int i = 0; i < 16; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        x = x << 4 | (uint64_t)d;
    }
    *v = x;
    return 0;
}

/* XXH64 of the object without "manifest_checksum", compact with sorted keys. */
static int self_checksum(json_t *root, uint64_t *sum)
{
    json_t *copy = json_copy(root);
    if (!copy) return -1;
    json_object_del(copy, "manifest_checksum");
    char *text = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(copy);
    if (!text) return -1;
    *sum = ckpt_hash64(text, strlen(text));
    free(text);
    return 0;
}

/* [[start, count], ...] of a file's tensors; NULL when they are not given. */
static json_t *row_blocks_json(const CkptManifestFile *f)
{
    json_t *blocks = f->row_start && f->row_count ? json_array() : NULL;
    for (int k = 0; blocks && k < f->n_tensors; k++)
        if (json_array_append_new(blocks, json_pack("[I, I]", (json_int_t)f->row_start[k],
                                                    (json_int_t)f->row_count[k]))) {
            json_decref(blocks);
            blocks = NULL;
        }
    return blocks;
}

static json_t *files_json(const CkptManifest *m)
{
    json_t *files = json_array();
    for (int i = 0; files && i < m->n_files; i++) {
        const CkptManifestFile *f = &m->files[i];
        char hex[17];
        hex64(f->checksum, hex);
        json_t *names = json_array();
        for (int k = 0; names && k < f->n_tensors; k++)
            if (json_array_append_new(names, json_string(f->tensors[k]))) {
                json_decref(names);
                names = NULL;
            }
        json_t *e = names ? json_pack("{s:s, s:i, s:I, s:s, s:o}", "name", f->name, "rank", f->rank, "bytes",
                                      (json_int_t)f->bytes, "checksum", hex, "tensors", names) : NULL;
        /* format 2 lists each tensor's row block (format 1, written by tests only, does not) */
        if (e && m->format_version >= 2 && json_object_set_new(e, "row_blocks", row_blocks_json(f))) {
            json_decref(e);
            e = NULL;
        }
        if (!e || json_array_append_new(files, e)) {
            json_decref(files);
            return NULL;
        }
    }
    return files;
}

int ckpt_manifest_write(const char *dir, const CkptManifest *m, char *err, size_t errlen)
{
    int rc = -1;
    char *text = NULL, path[4096], hex[17];
    json_t *root = NULL;
    json_t *files = files_json(m);
    json_t *config = files ? json_string(m->config) : NULL;   /* NULL also for invalid UTF-8 */
    if (!files || !config) {
        json_decref(files);
        ckpt_fail(err, errlen, "cannot build '%s' (config text must be UTF-8)", CKPT_MANIFEST_NAME);
        goto done;
    }
    root = json_pack("{s:i, s:i, s:I, s:{s:i, s:i, s:i, s:i}, s:b, s:b, s:s, s:o, s:o}", "format_version",
                     m->format_version, "step", m->step, "tokens", (json_int_t)m->tokens, "layout", "world_size",
                     m->layout.world_size, "pp", m->layout.pp, "dp", m->layout.dp, "ep", m->layout.ep,
                     "optimizer_moments", m->has_moments, "ema", m->has_ema, "checksum_algorithm", "xxh64",
                     "files", files,
                     "config", config);
    uint64_t sum;
    if (!root || self_checksum(root, &sum)) {
        ckpt_fail(err, errlen, "out of memory building '%s'", CKPT_MANIFEST_NAME);
        goto done;
    }
    hex64(sum, hex);
    json_object_set_new(root, "manifest_checksum", json_string(hex));
    text = json_dumps(root, JSON_INDENT(1));
    if (!text) {
        ckpt_fail(err, errlen, "out of memory writing '%s'", CKPT_MANIFEST_NAME);
        goto done;
    }
    if (snprintf(path, sizeof path, "%s/%s", dir, CKPT_MANIFEST_NAME) >= (int)sizeof path) {
        ckpt_fail(err, errlen, "path too long: '%s'", dir);
        goto done;
    }
    rc = fsio_write_durable(path, text, strlen(text), err, errlen);
done:
    free(text);
    json_decref(root);
    return rc;
}

/* ---- reading: every key checked for type and range ---- */

static int get_int(json_t *obj, const char *key, long long lo, long long hi, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v)) return -1;
    long long x = json_integer_value(v);
    if (x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

static int plain_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= CKPT_FILE_NAME_MAX || s[0] == '.') return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-'))
            return 0;
    }
    return 1;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

/* The "tensors" list of a file entry: into one blob plus pointers, every rule of manifest.h checked. */
static int read_tensor_names(json_t *list, CkptManifestFile *f, char *err, size_t errlen)
{
    size_t n = json_array_size(list), bytes = 0;
    if (!json_is_array(list) || n > CKPT_MAX_TENSORS)
        return ckpt_fail(err, errlen, "'%s': file '%s' has no valid 'tensors' list", CKPT_MANIFEST_NAME, f->name);
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(list, i);
        const char *s = json_string_value(v);
        if (!s || !*s || strlen(s) != json_string_length(v) || strlen(s) >= CKPT_TENSOR_NAME_MAX || strchr(s, '/') ||
            !strcmp(s, "state") || ends_with(s, ".exp_avg") || ends_with(s, ".exp_avg_sq"))
            return ckpt_fail(err, errlen, "'%s': tensor name #%zu of '%s' is not a valid name", CKPT_MANIFEST_NAME, i,
                             f->name);
        bytes += strlen(s) + 1;
    }
    f->tensors = calloc(n + 1, sizeof *f->tensors);
    f->names_blob = malloc(bytes + 1);
    const char **sorted = calloc(n + 1, sizeof *sorted);
    if (!f->tensors || !f->names_blob || !sorted) {
        free(sorted);
        return ckpt_fail(err, errlen, "out of memory reading '%s'", CKPT_MANIFEST_NAME);
    }
    char *at = f->names_blob;
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(list, i));
        size_t len = strlen(s) + 1;
        memcpy(at, s, len);
        f->tensors[i] = sorted[i] = at;
        at += len;
    }
    f->n_tensors = (int)n;
    qsort(sorted, n, sizeof *sorted, cmp_name);
    int rc = 0;
    for (size_t i = 1; rc == 0 && i < n; i++)
        if (!strcmp(sorted[i], sorted[i - 1]))
            rc = ckpt_fail(err, errlen, "'%s': tensor '%s' is listed twice", CKPT_MANIFEST_NAME, sorted[i]);
    free(sorted);
    return rc;
}

/* "row_blocks" of a version-2 file entry (one [start, count] pair per tensor, both >= 0);
 * version 1: every tensor whole (count -1). */
static int read_row_blocks(json_t *list, int version, CkptManifestFile *f, char *err, size_t errlen)
{
    const size_t n = (size_t)f->n_tensors;
    f->row_start = calloc(n + 1, sizeof *f->row_start);
    f->row_count = calloc(n + 1, sizeof *f->row_count);
    if (!f->row_start || !f->row_count) return ckpt_fail(err, errlen, "out of memory reading '%s'", CKPT_MANIFEST_NAME);
    if (version < 2) {
        for (size_t i = 0; i < n; i++) f->row_count[i] = -1;
        return 0;
    }
    if (!json_is_array(list) || json_array_size(list) != n)
        return ckpt_fail(err, errlen, "'%s': file '%s' has no 'row_blocks' list of one block per tensor",
                         CKPT_MANIFEST_NAME, f->name);
    for (size_t i = 0; i < n; i++) {
        json_t *b = json_array_get(list, i), *a = json_array_get(b, 0), *c = json_array_get(b, 1);
        if (json_array_size(b) != 2 || !json_is_integer(a) || !json_is_integer(c) || json_integer_value(a) < 0 ||
            json_integer_value(c) < 0 || json_integer_value(a) > (1LL << 48) || json_integer_value(c) > (1LL << 48))
            return ckpt_fail(err, errlen, "'%s': row block #%zu of '%s' is not [start, count]", CKPT_MANIFEST_NAME, i,
                             f->name);
        f->row_start[i] = json_integer_value(a);
        f->row_count[i] = json_integer_value(c);
    }
    return 0;
}

static int read_file_entry(json_t *e, int world_size, int version, CkptManifestFile *f, char *err, size_t errlen)
{
    json_t *name = json_object_get(e, "name"), *sum = json_object_get(e, "checksum");
    long long rank, bytes;
    if (!json_is_object(e) || !json_is_string(name) || !json_is_string(sum) ||
        get_int(e, "rank", 0, world_size - 1, &rank) || get_int(e, "bytes", 0, LLONG_MAX, &bytes))
        return ckpt_fail(err, errlen, "'%s': a 'files' entry lacks name, rank, bytes or checksum (file damaged?)",
                         CKPT_MANIFEST_NAME);
    if (!plain_name(json_string_value(name)) || strlen(json_string_value(name)) != json_string_length(name))
        return ckpt_fail(err, errlen, "'%s': file name '%.64s' is not a plain file name", CKPT_MANIFEST_NAME,
                         json_string_value(name));
    snprintf(f->name, sizeof f->name, "%s", json_string_value(name));
    if (parse_hex64(json_string_value(sum), &f->checksum))
        return ckpt_fail(err, errlen, "'%s': checksum of '%s' is not 16 hex digits", CKPT_MANIFEST_NAME, f->name);
    f->rank = (int)rank;
    f->bytes = bytes;
    if (read_tensor_names(json_object_get(e, "tensors"), f, err, errlen)) return -1;
    return read_row_blocks(json_object_get(e, "row_blocks"), version, f, err, errlen);
}

static int read_files(json_t *root, CkptManifest *m, char *err, size_t errlen)
{
    json_t *files = json_object_get(root, "files");
    size_t n = json_array_size(files);
    if (!json_is_array(files) || n != (size_t)m->layout.world_size)
        return ckpt_fail(err, errlen, "'%s': 'files' must list one file per rank (%d) (file damaged?)",
                         CKPT_MANIFEST_NAME, m->layout.world_size);
    m->files = calloc(n, sizeof *m->files);
    char *seen = calloc(n, 1);
    int rc = m->files && seen ? 0 : ckpt_fail(err, errlen, "out of memory reading '%s'", CKPT_MANIFEST_NAME);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        rc = read_file_entry(json_array_get(files, i), m->layout.world_size, m->format_version, &m->files[i], err,
                             errlen);
        if (rc == 0 && seen[m->files[i].rank]++)
            rc = ckpt_fail(err, errlen, "'%s': rank %d is listed twice", CKPT_MANIFEST_NAME, m->files[i].rank);
        for (size_t j = 0; rc == 0 && j < i; j++)
            if (!strcmp(m->files[i].name, m->files[j].name))
                rc = ckpt_fail(err, errlen, "'%s': file '%s' is listed twice", CKPT_MANIFEST_NAME, m->files[i].name);
    }
    free(seen);
    m->n_files = (int)n;   /* even on failure: ckpt_manifest_free releases every entry's names */
    return rc;
}

static int read_layout(json_t *root, CkptLayout *l)
{
    json_t *o = json_object_get(root, "layout");
    long long w, pp, dp, ep;
    if (!json_is_object(o) || get_int(o, "world_size", 1, MAX_LAYOUT, &w) || get_int(o, "pp", 1, MAX_LAYOUT, &pp) ||
        get_int(o, "dp", 1, MAX_LAYOUT, &dp) || get_int(o, "ep", 1, MAX_LAYOUT, &ep) || w > CKPT_MAX_FILES)
        return -1;
    l->world_size = (int)w;
    l->pp = (int)pp;
    l->dp = (int)dp;
    l->ep = (int)ep;
    return 0;
}

static int read_fields(json_t *root, CkptManifest *m, char *err, size_t errlen)
{
    long long version, step, tokens;
    if (get_int(root, "format_version", 1, INT_MAX, &version))
        return ckpt_fail(err, errlen, "'%s': no valid 'format_version' (file damaged?)", CKPT_MANIFEST_NAME);
    if (version > CKPT_MANIFEST_VERSION)
        return ckpt_fail(err, errlen, "'%s': format version %lld is newer than this dstrain's %d (upgrade dstrain)",
                         CKPT_MANIFEST_NAME, version, CKPT_MANIFEST_VERSION);
    json_t *sum = json_object_get(root, "manifest_checksum"), *config = json_object_get(root, "config");
    json_t *moments = json_object_get(root, "optimizer_moments"), *algo = json_object_get(root, "checksum_algorithm");
    uint64_t stored, actual;
    if (!json_is_string(sum) || parse_hex64(json_string_value(sum), &stored))
        return ckpt_fail(err, errlen, "'%s': no valid 'manifest_checksum' (file damaged?)", CKPT_MANIFEST_NAME);
    if (self_checksum(root, &actual)) return ckpt_fail(err, errlen, "out of memory checking '%s'", CKPT_MANIFEST_NAME);
    if (stored != actual) return ckpt_fail(err, errlen, "'%s' checksum mismatch (file damaged?)", CKPT_MANIFEST_NAME);
    if (get_int(root, "step", 0, INT_MAX, &step) || get_int(root, "tokens", 0, LLONG_MAX, &tokens) ||
        !json_is_boolean(moments) || !json_is_string(algo) || strcmp(json_string_value(algo), "xxh64") ||
        !json_is_string(config) || strlen(json_string_value(config)) != json_string_length(config) ||
        read_layout(root, &m->layout))
        return ckpt_fail(err, errlen, "'%s': a key is missing or out of range (step, tokens, layout, "
                         "optimizer_moments, checksum_algorithm, config)", CKPT_MANIFEST_NAME);
    m->format_version = (int)version;
    m->step = (int)step;
    m->tokens = tokens;
    m->has_moments = json_is_true(moments);
    json_t *ema = json_object_get(root, "ema");   /* optional: manifests before EMA have none */
    if (ema && !json_is_boolean(ema)) return ckpt_fail(err, errlen, "'%s': 'ema' is not true or false", CKPT_MANIFEST_NAME);
    m->has_ema = json_is_true(ema);
    m->config = strdup(json_string_value(config));
    if (!m->config) return ckpt_fail(err, errlen, "out of memory reading '%s'", CKPT_MANIFEST_NAME);
    return read_files(root, m, err, errlen);
}

int ckpt_manifest_read(const char *dir, CkptManifest *m, char *err, size_t errlen)
{
    char path[4096];
    memset(m, 0, sizeof *m);
    if (snprintf(path, sizeof path, "%s/%s", dir, CKPT_MANIFEST_NAME) >= (int)sizeof path)
        return ckpt_fail(err, errlen, "path too long: '%s'", dir);
    /* lstat, not open: a FIFO would block the open, and a symlink could bring another run's
     * manifest (and with it that run's file list) into this directory */
    struct stat st;
    if (lstat(path, &st) != 0)
        return ckpt_fail(err, errlen, "no '%s' (an interrupted save, or not a checkpoint)", CKPT_MANIFEST_NAME);
    if (!S_ISREG(st.st_mode))
        return ckpt_fail(err, errlen, "'%s' is not a regular file%s", CKPT_MANIFEST_NAME,
                         S_ISLNK(st.st_mode) ? " (a symbolic link)" : "");
    size_t len;
    char *text = fsio_read_file(path, CKPT_MANIFEST_MAX_BYTES, &len, err, errlen);
    if (!text) return -1;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return ckpt_fail(err, errlen, "'%s' is not valid JSON (line %d: %s) (file damaged?)", CKPT_MANIFEST_NAME,
                         jerr.line, jerr.text);
    int rc = json_is_object(root) ? read_fields(root, m, err, errlen)
                                  : ckpt_fail(err, errlen, "'%s' is not a JSON object", CKPT_MANIFEST_NAME);
    json_decref(root);
    if (rc) ckpt_manifest_free(m);
    return rc;
}

void ckpt_manifest_free(CkptManifest *m)
{
    for (int i = 0; m->files && i < m->n_files; i++) {
        free(m->files[i].tensors);
        free(m->files[i].names_blob);
        free(m->files[i].row_start);
        free(m->files[i].row_count);
    }
    free(m->config);
    free(m->files);
    memset(m, 0, sizeof *m);
}

const CkptManifestFile *ckpt_manifest_rank_file(const CkptManifest *m, int rank)
{
    for (int i = 0; i < m->n_files; i++)
        if (m->files[i].rank == rank) return &m->files[i];
    return NULL;
}
