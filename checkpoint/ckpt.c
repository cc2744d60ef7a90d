/* checkpoint/ckpt.c - the checkpoint directory: save protocol, retention, verify, find the
 * newest good checkpoint, load. Layout, protocol and crash points are documented in ckpt.h.
 * Not here: the HDF5 file (h5.c), manifest.json (manifest.c), the background thread
 * (writer.c). Reference: DESIGN.md "Checkpoints", SPEC.md section 9; durable rename as in
 * redis / SQLite. */
#define _GNU_SOURCE
#include "ckpt.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsio.h"
#include "h5.h"
#include "manifest.h"

#define PATH_CAP 4096
#define MOMENT_NAME_MAX (PARAM_NAME_MAX + 16)

static const char *const CRASH_PHASES[] = {
    "during-tmp-files", "after-tmp-files", "after-manifest", "before-rename", "after-rename",
};
#define N_CRASH_PHASES (int)(sizeof CRASH_PHASES / sizeof CRASH_PHASES[0])

/* ---- small helpers ---- */

static int join(char *out, const char *dir, const char *name, char *err, size_t errlen)
{
    if (snprintf(out, PATH_CAP, "%s/%s", dir, name) >= PATH_CAP)
        return ckpt_fail(err, errlen, "path too long: '%s'", dir);
    return 0;
}

/* "ckpt-<N>" followed by suffix ("" for a checkpoint, ".tmp", ".del"): 1 and *step, else 0. */
static int parse_ckpt_name(const char *name, const char *suffix, int *step)
{
    if (strncmp(name, "ckpt-", 5)) return 0;
    const char *p = name + 5;
    long long v = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        v = v * 10 + (*p - '0');
        if (v > 2147483647LL) return 0;
    }
    if (digits == 0 || strcmp(p, suffix)) return 0;
    *step = (int)v;
    return 1;
}

static void moment_name(char *out, const char *name, const char *suffix)
{
    snprintf(out, MOMENT_NAME_MAX, "%s.%s", name, suffix);
}

static CkptLayout normal_layout(CkptLayout l)
{
    if (l.world_size <= 0) l.world_size = 1;
    if (l.pp <= 0) l.pp = 1;
    if (l.dp <= 0) l.dp = 1;
    if (l.ep <= 0) l.ep = 1;
    return l;
}

/* The phase named by DSTRAIN_CKPT_CRASH_AT for this step, or NULL; -1 for an unknown name. */
static int crash_phase(int step, const char **phase, char *err, size_t errlen)
{
    *phase = NULL;
    const char *at = getenv("DSTRAIN_CKPT_CRASH_AT");
    if (!at || !*at) return 0;
    int known = 0;
    for (int i = 0; i < N_CRASH_PHASES; i++) known |= !strcmp(at, CRASH_PHASES[i]);
    if (!known)
        return ckpt_fail(err, errlen, "DSTRAIN_CKPT_CRASH_AT='%s' is not a save phase (during-tmp-files, "
                         "after-tmp-files, after-manifest, before-rename, after-rename)", at);
    const char *only = getenv("DSTRAIN_CKPT_CRASH_STEP");
    if (only && *only && atoi(only) != step) return 0;
    *phase = at;
    return 0;
}

static void crash_point(const char *armed, const char *phase, int step)
{
    if (!armed || strcmp(armed, phase)) return;
    fprintf(stderr, "dstrain: DSTRAIN_CKPT_CRASH_AT=%s: killing the process in the save of step %d\n", phase, step);
    fflush(stderr);
    raise(SIGKILL);
}

/* ---- save ---- */

/* Rows [start, start + count) of p as a slice of the whole tensor (count < 0: all of it). */
static CkptH5Slice block_slice(const Param *p, long long start, long long count)
{
    CkptH5Slice s = ckpt_h5_whole(p->ndim, p->rows, p->cols);
    if (count < 0) return s;
    s.shape[0] = count;
    s.slice_start[0] = start;
    return s;
}

static int write_tensors(CkptH5 *h, const CkptRequest *req, const char *crash, char *err, size_t errlen)
{
    const ParamTable *t = req->table;
    char name[MOMENT_NAME_MAX];
    for (int i = 0; i < t->n; i++) {
        const Param *p = &t->p[i];
        CkptH5Slice s = block_slice(p, req->row_start ? req->row_start[i] : 0, req->row_count ? req->row_count[i] : -1);
        if (s.shape[0] == 0) continue;      /* no rows of this tensor in this file */
        const size_t at = p->offset + (size_t)s.slice_start[0] * (size_t)p->cols;
        if (ckpt_h5_write_tensor(h, p->name, &s, req->params + at, err, errlen)) return -1;
        if (req->adam_m) {
            moment_name(name, p->name, "exp_avg");
            if (ckpt_h5_write_tensor(h, name, &s, req->adam_m + at, err, errlen)) return -1;
            moment_name(name, p->name, "exp_avg_sq");
            if (ckpt_h5_write_tensor(h, name, &s, req->adam_v + at, err, errlen)) return -1;
        }
        if (req->ema) {
            moment_name(name, p->name, "ema");
            if (ckpt_h5_write_tensor(h, name, &s, req->ema + at, err, errlen)) return -1;
        }
        if (i == t->n / 2) crash_point(crash, "during-tmp-files", req->state.step);
    }
    return 0;
}

/* rank-<rank>.h5 in dir, closed, fsynced and hashed into f. */
static int write_rank_file(const char *dir, const CkptRequest *req, const char *crash, CkptManifestFile *f,
                           char *err, size_t errlen)
{
    char path[PATH_CAP];
    snprintf(f->name, sizeof f->name, "rank-%05d.h5", req->rank);
    f->rank = req->rank;
    if (join(path, dir, f->name, err, errlen)) return -1;
    CkptLayout l = normal_layout(req->layout);
    CkptH5 *h = ckpt_h5_create(path, req->rank, l.world_size, err, errlen);
    if (!h) return -1;
    int rc = write_tensors(h, req, crash, err, errlen);
    if (rc == 0) rc = ckpt_h5_write_state(h, &req->state, err, errlen);
    if (ckpt_h5_close(h, rc == 0 ? err : NULL, errlen)) rc = -1;
    if (rc == 0) rc = fsio_fsync_file(path, err, errlen);
    if (rc == 0) rc = fsio_hash_file(path, &f->checksum, &f->bytes, err, errlen);
    return rc;
}

static int check_request(const CkptRequest *req, int multi, char *err, size_t errlen)
{
    CkptLayout l = normal_layout(req->layout);
    if (!req->run_dir || !*req->run_dir || !req->config_text || !req->table || !req->params)
        return ckpt_fail(err, errlen, "incomplete request (run_dir, config_text, table and params are required)");
    if (!req->adam_m != !req->adam_v) return ckpt_fail(err, errlen, "adam_m and adam_v must be given together");
    if (req->state.step < 0 || req->state.tokens < 0) return ckpt_fail(err, errlen, "negative step or tokens");
    if (multi && (req->rank < 0 || req->rank >= l.world_size))
        return ckpt_fail(err, errlen, "rank %d outside a world of %d", req->rank, l.world_size);
    if (!multi && (l.world_size != 1 || req->rank != 0))
        return ckpt_fail(err, errlen, "world size %d: a multi-rank job saves with ckpt_save_rank and "
                         "ckpt_save_commit", l.world_size);
    return 0;
}

/* Move ckpt-<step>.tmp to ckpt-<step>; an existing ckpt-<step> is replaced only now. */
static int install(const char *run_dir, const char *tmp, const char *final, char *err, size_t errlen)
{
    char del[PATH_CAP];
    if (snprintf(del, sizeof del, "%s.del", final) >= (int)sizeof del) return ckpt_fail(err, errlen, "path too long");
    int replacing = fsio_is_dir(final);
    if (replacing) {
        if (fsio_remove_tree(del, err, errlen)) return -1;
        if (rename(final, del) != 0)
            return ckpt_fail(err, errlen, "cannot move '%s' aside: %s", final, strerror(errno));
    }
    if (rename(tmp, final) != 0)
        return ckpt_fail(err, errlen, "cannot rename '%s' to '%s': %s", tmp, final, strerror(errno));
    if (fsio_fsync_dir(run_dir, err, errlen)) return -1;
    return replacing ? fsio_remove_tree(del, err, errlen) : 0;
}

static int cmp_desc(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x < y) - (x > y);
}

/* Steps of the ckpt-<N> directories in run_dir, newest first (caller frees); *n the count.
 * log (may be NULL) hears about every ckpt-*.tmp, which is never a checkpoint. */
static int *list_steps(const char *run_dir, int *n, FILE *log, char *err, size_t errlen)
{
    DIR *d = opendir(run_dir);
    if (!d) {
        ckpt_fail(err, errlen, "cannot list '%s': %s", run_dir, strerror(errno));
        return NULL;
    }
    int cap = 16, *steps = malloc((size_t)cap * sizeof *steps), step;
    *n = 0;
    struct dirent *e;
    while (steps && (e = readdir(d))) {
        if (parse_ckpt_name(e->d_name, ".tmp", &step) && log)
            fprintf(log, "ignoring '%s/%s' (an interrupted save)\n", run_dir, e->d_name);
        if (!parse_ckpt_name(e->d_name, "", &step)) continue;
        if (*n == cap) {
            cap *= 2;
            int *grown = realloc(steps, (size_t)cap * sizeof *steps);
            if (!grown) free(steps);
            steps = grown;
            if (!steps) break;
        }
        steps[(*n)++] = step;
    }
    closedir(d);
    if (!steps) ckpt_fail(err, errlen, "out of memory listing '%s'", run_dir);
    else qsort(steps, (size_t)*n, sizeof *steps, cmp_desc);
    return steps;
}

/* Remove a checkpoint safely: rename to .del first (never a half directory under a valid
 * name), make the rename durable, then delete. */
static int remove_ckpt(const char *run_dir, int step, char *err, size_t errlen)
{
    char path[PATH_CAP], del[PATH_CAP];
    if (snprintf(path, sizeof path, "%s/ckpt-%d", run_dir, step) >= PATH_CAP ||
        snprintf(del, sizeof del, "%s/ckpt-%d.del", run_dir, step) >= PATH_CAP)
        return ckpt_fail(err, errlen, "path too long: '%s'", run_dir);
    if (fsio_remove_tree(del, err, errlen)) return -1;
    if (rename(path, del) != 0) return ckpt_fail(err, errlen, "cannot rename '%s': %s", path, strerror(errno));
    if (fsio_fsync_dir(run_dir, err, errlen)) return -1;
    return fsio_remove_tree(del, err, errlen);
}

/* Leftover ckpt-*.tmp / ckpt-*.del directories of killed saves or deletes. */
static int sweep_leftovers(const char *run_dir, char *err, size_t errlen)
{
    DIR *d = opendir(run_dir);
    if (!d) return ckpt_fail(err, errlen, "cannot list '%s': %s", run_dir, strerror(errno));
    int rc = 0, step;
    struct dirent *e;
    char path[PATH_CAP];
    while (rc == 0 && (e = readdir(d))) {
        if (!parse_ckpt_name(e->d_name, ".tmp", &step) && !parse_ckpt_name(e->d_name, ".del", &step)) continue;
        rc = join(path, run_dir, e->d_name, err, errlen);
        if (rc == 0) rc = fsio_remove_tree(path, err, errlen);
    }
    closedir(d);
    return rc;
}

static int retention(const char *run_dir, int step, int keep, char *err, size_t errlen)
{
    int n, rc = 0, kept = 1;   /* the checkpoint just written is always kept */
    int *steps = list_steps(run_dir, &n, NULL, err, errlen);
    if (!steps) return -1;
    for (int i = 0; rc == 0 && i < n; i++) {
        if (steps[i] == step) continue;
        if (keep <= 0 || kept < keep) kept++;
        else rc = remove_ckpt(run_dir, steps[i], err, errlen);
    }
    free(steps);
    return rc == 0 ? sweep_leftovers(run_dir, err, errlen) : rc;
}

/* f's tensor names and row blocks: the entries of t with rows in the file (row_count > 0, or
 * whole tensors when the arrays are NULL). Caller frees f->tensors, row_start, row_count. */
static int list_file(CkptManifestFile *f, const ParamTable *t, const long long *row_start,
                     const long long *row_count, char *err, size_t errlen)
{
    f->tensors = malloc((size_t)t->n * sizeof *f->tensors + 1);
    f->row_start = malloc((size_t)t->n * sizeof *f->row_start + 1);
    f->row_count = malloc((size_t)t->n * sizeof *f->row_count + 1);
    if (!f->tensors || !f->row_start || !f->row_count) return ckpt_fail(err, errlen, "out of memory");
    f->n_tensors = 0;
    for (int i = 0; i < t->n; i++) {
        CkptH5Slice s = block_slice(&t->p[i], row_start ? row_start[i] : 0, row_count ? row_count[i] : -1);
        if (s.shape[0] == 0) continue;
        f->tensors[f->n_tensors] = t->p[i].name;
        f->row_start[f->n_tensors] = s.slice_start[0];
        f->row_count[f->n_tensors++] = s.shape[0];
    }
    return 0;
}

static void unlist_file(CkptManifestFile *f)
{
    free(f->tensors);
    free(f->row_start);
    free(f->row_count);
    f->tensors = NULL;
    f->row_start = f->row_count = NULL;
}

/* The last phases of a save, once ckpt-<step>.tmp holds every file and the manifest: rename
 * it to ckpt-<step> (the commit point), then retention. */
static int install_and_retain(const CkptRequest *req, const char *tmp, const char *final, const char *crash,
                              char *err, size_t errlen)
{
    const int step = req->state.step;
    crash_point(crash, "after-manifest", step);
    crash_point(crash, "before-rename", step);
    if (install(req->run_dir, tmp, final, err, errlen)) return -1;
    crash_point(crash, "after-rename", step);
    if (retention(req->run_dir, step, req->keep, err, errlen)) {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", err);
        return ckpt_fail(err, errlen, "'%s' is complete, but removing old checkpoints failed: %s", final, inner);
    }
    return 0;
}

static CkptManifest manifest_of(const CkptRequest *req)
{
    CkptManifest m = { .format_version = CKPT_MANIFEST_VERSION, .step = req->state.step,
                       .tokens = req->state.tokens, .layout = normal_layout(req->layout),
                       .has_moments = req->adam_m != NULL, .has_ema = req->ema != NULL,
                       .config = (char *)req->config_text };  /* only read */
    return m;
}

/* Everything inside ckpt-<step>.tmp: the rank file, then the manifest (written last). */
static int write_tmp(const CkptRequest *req, const char *tmp, const char *crash, char *err, size_t errlen)
{
    const int step = req->state.step;
    CkptManifest m = manifest_of(req);
    CkptManifestFile file = { .n_tensors = 0 };
    m.files = &file;
    m.n_files = 1;
    if (write_rank_file(tmp, req, crash, &file, err, errlen)) return -1;
    if (fsio_fsync_dir(tmp, err, errlen)) return -1;
    crash_point(crash, "after-tmp-files", step);
    int rc = list_file(&file, req->table, req->row_start, req->row_count, err, errlen);
    if (rc == 0) rc = ckpt_manifest_write(tmp, &m, err, errlen);
    unlist_file(&file);
    return rc;
}

static int save_steps(const CkptRequest *req, const char *crash, char *err, size_t errlen)
{
    const int step = req->state.step;
    char final[PATH_CAP], tmp[PATH_CAP];
    if (snprintf(final, sizeof final, "%s/ckpt-%d", req->run_dir, step) >= PATH_CAP - 8 ||
        snprintf(tmp, sizeof tmp, "%s.tmp", final) >= PATH_CAP)
        return ckpt_fail(err, errlen, "path too long: '%s'", req->run_dir);
    if (fsio_mkdirs(req->run_dir, err, errlen) || fsio_remove_tree(tmp, err, errlen) || fsio_mkdirs(tmp, err, errlen))
        return -1;
    if (write_tmp(req, tmp, crash, err, errlen)) {
        fsio_remove_tree(tmp, NULL, 0);   /* best effort: a failed save leaves no partial directory */
        return -1;
    }
    return install_and_retain(req, tmp, final, crash, err, errlen);
}

int ckpt_save(const CkptRequest *req, char *err, size_t errlen)
{
    const char *crash;
    int rc = check_request(req, 0, err, errlen);
    if (rc == 0) rc = crash_phase(req->state.step, &crash, err, errlen);
    if (rc == 0) rc = save_steps(req, crash, err, errlen);
    if (rc != 0) {
        char inner[1024];
        snprintf(inner, sizeof inner, "%s", err);
        ckpt_fail(err, errlen, "checkpoint of step %d: %s", req->state.step, inner);
    }
    return rc;
}

/* ---- multi-rank save: every rank its file into ckpt-<step>.tmp/, rank 0 commits ---- */

static int step_paths(const char *run_dir, int step, char final[PATH_CAP], char tmp[PATH_CAP], char *err,
                      size_t errlen)
{
    if (snprintf(final, PATH_CAP, "%s/ckpt-%d", run_dir, step) >= PATH_CAP - 8 ||
        snprintf(tmp, PATH_CAP, "%s.tmp", final) >= PATH_CAP)
        return ckpt_fail(err, errlen, "path too long: '%s'", run_dir);
    return 0;
}

/* "checkpoint of step N: <inner>" around err when rc != 0. */
static int in_step(int rc, int step, char *err, size_t errlen)
{
    if (rc == 0) return 0;
    char inner[1024];
    snprintf(inner, sizeof inner, "%s", err);
    return ckpt_fail(err, errlen, "checkpoint of step %d: %s", step, inner);
}

int ckpt_save_begin(const char *run_dir, int step, char *err, size_t errlen)
{
    char final[PATH_CAP], tmp[PATH_CAP];
    int rc = step_paths(run_dir, step, final, tmp, err, errlen);
    if (rc == 0) rc = fsio_mkdirs(run_dir, err, errlen);
    if (rc == 0) rc = fsio_remove_tree(tmp, err, errlen);
    if (rc == 0) rc = fsio_mkdirs(tmp, err, errlen);
    return in_step(rc, step, err, errlen);
}

int ckpt_save_rank(const CkptRequest *req, long long *bytes, uint64_t *checksum, char *err, size_t errlen)
{
    char final[PATH_CAP], tmp[PATH_CAP];
    const char *crash = NULL;
    CkptManifestFile f = { .n_tensors = 0 };
    int rc = check_request(req, 1, err, errlen);
    if (rc == 0) rc = crash_phase(req->state.step, &crash, err, errlen);
    if (rc == 0) rc = step_paths(req->run_dir, req->state.step, final, tmp, err, errlen);
    if (rc == 0) rc = write_rank_file(tmp, req, crash, &f, err, errlen);
    if (rc == 0) crash_point(crash, "after-tmp-files", req->state.step);
    *bytes = f.bytes;
    *checksum = f.checksum;
    return in_step(rc, req->state.step, err, errlen);
}

/* The manifest of a multi-rank save, then the rename and retention (rank 0). */
static int commit_steps(const CkptRequest *req, const CkptRankFile *files, int n, const char *crash,
                        CkptManifest *m, char *err, size_t errlen)
{
    const int step = req->state.step;
    char final[PATH_CAP], tmp[PATH_CAP];
    if (step_paths(req->run_dir, step, final, tmp, err, errlen)) return -1;
    for (int i = 0; i < n; i++) {
        CkptManifestFile *f = &m->files[i];
        snprintf(f->name, sizeof f->name, "rank-%05d.h5", files[i].rank);
        f->rank = files[i].rank;
        f->bytes = files[i].bytes;
        f->checksum = files[i].checksum;
        if (list_file(f, files[i].table, files[i].row_start, files[i].row_count, err, errlen)) return -1;
    }
    if (fsio_fsync_dir(tmp, err, errlen) || ckpt_manifest_write(tmp, m, err, errlen)) {
        fsio_remove_tree(tmp, NULL, 0);
        return -1;
    }
    return install_and_retain(req, tmp, final, crash, err, errlen);
}

int ckpt_save_commit(const CkptRequest *req, const CkptRankFile *files, int n, char *err, size_t errlen)
{
    const char *crash = NULL;
    CkptManifest m = manifest_of(req);
    int rc = check_request(req, 1, err, errlen);
    if (rc == 0 && n != m.layout.world_size)
        rc = ckpt_fail(err, errlen, "%d files for a world of %d ranks", n, m.layout.world_size);
    if (rc == 0) rc = crash_phase(req->state.step, &crash, err, errlen);
    m.files = rc == 0 ? calloc((size_t)n, sizeof *m.files) : NULL;
    if (rc == 0 && !m.files) rc = ckpt_fail(err, errlen, "out of memory");
    m.n_files = n;
    if (rc == 0) rc = commit_steps(req, files, n, crash, &m, err, errlen);
    for (int i = 0; m.files && i < n; i++) unlist_file(&m.files[i]);
    free(m.files);
    return in_step(rc, req->state.step, err, errlen);
}

/* ---- verify, find, load ---- */

static int verify_files(const char *dir, const CkptManifest *m, char *err, size_t errlen)
{
    char path[PATH_CAP];
    for (int i = 0; i < m->n_files; i++) {
        const CkptManifestFile *f = &m->files[i];
        struct stat st;
        uint64_t sum;
        long long bytes;
        if (join(path, dir, f->name, err, errlen)) return -1;
        /* lstat: a symlink could point into another run, whose bytes would then be loaded as
         * this checkpoint's (the checksum only proves they are the bytes saved there) */
        if (lstat(path, &st) != 0) return ckpt_fail(err, errlen, "'%s' is missing", f->name);
        if (S_ISLNK(st.st_mode))
            return ckpt_fail(err, errlen, "'%s' is a symbolic link; a checkpoint's files must be its own", f->name);
        if (!S_ISREG(st.st_mode)) return ckpt_fail(err, errlen, "'%s' is not a regular file", f->name);
        if ((long long)st.st_size != f->bytes)
            return ckpt_fail(err, errlen, "'%s' is %lld bytes, the manifest says %lld (file truncated?)", f->name,
                             (long long)st.st_size, f->bytes);
        if (fsio_hash_file(path, &sum, &bytes, err, errlen)) return -1;
        if (bytes != f->bytes || sum != f->checksum)
            return ckpt_fail(err, errlen, "'%s' checksum mismatch (file damaged?)", f->name);
    }
    return 0;
}

/* "checkpoint '<dir>': <inner>" around whatever err holds. */
static int in_ckpt(const char *dir, char *err, size_t errlen)
{
    char inner[1024];
    snprintf(inner, sizeof inner, "%s", err ? err : "");
    return ckpt_fail(err, errlen, "checkpoint '%s': %s", dir, inner);
}

static int verify_manifest(const char *dir, CkptManifest *m, char *err, size_t errlen)
{
    char base[256];
    int named_step;
    if (ckpt_manifest_read(dir, m, err, errlen)) return -1;
    fsio_basename(dir, base, sizeof base);
    if (parse_ckpt_name(base, "", &named_step) && named_step != m->step) {
        ckpt_fail(err, errlen, "'%s' says step %d, the directory name says %d", CKPT_MANIFEST_NAME, m->step,
                  named_step);
        ckpt_manifest_free(m);
        return -1;
    }
    return 0;
}

int ckpt_verify(const char *ckpt_dir, char *err, size_t errlen)
{
    CkptManifest m;
    int rc = verify_manifest(ckpt_dir, &m, err, errlen);
    if (rc == 0) rc = verify_files(ckpt_dir, &m, err, errlen);
    ckpt_manifest_free(&m);
    return rc ? in_ckpt(ckpt_dir, err, errlen) : 0;
}

int ckpt_find_latest(const char *run_dir, char *out, size_t outlen, FILE *log)
{
    char err[1024], path[PATH_CAP];
    int n;
    int *steps = list_steps(run_dir, &n, log, err, sizeof err);
    if (!steps) {
        if (log) fprintf(log, "no checkpoint: %s\n", err);
        return -1;
    }
    int found = -1;
    for (int i = 0; found < 0 && i < n; i++) {
        snprintf(path, sizeof path, "%s/ckpt-%d", run_dir, steps[i]);
        if (ckpt_verify(path, err, sizeof err) == 0) found = i;
        else if (log) fprintf(log, "skipping %s\n", err);
    }
    free(steps);
    if (found < 0) {
        if (log) fprintf(log, "no checkpoint in '%s' verifies\n", run_dir);
        return -1;
    }
    if (snprintf(out, outlen, "%s", path) >= (int)outlen) {
        if (log) fprintf(log, "checkpoint path '%s' is too long\n", path);
        return -1;
    }
    return 0;
}

char *ckpt_read_config(const char *ckpt_dir, char *err, size_t errlen)
{
    CkptManifest m;
    if (verify_manifest(ckpt_dir, &m, err, errlen)) {
        in_ckpt(ckpt_dir, err, errlen);
        return NULL;
    }
    char *text = m.config;
    m.config = NULL;
    ckpt_manifest_free(&m);
    return text;
}

/* ---- load = reshard: every tensor of the table from the blocks of whichever files hold it ---- */

static int cmp_param(const void *a, const void *b)
{
    return strcmp((*(const Param *const *)a)->name, (*(const Param *const *)b)->name);
}

/* The table's entries sorted by name, for lookups by the manifest's names. */
typedef struct Index {
    const ParamTable *t;
    const Param **sorted;       /* (t->n) */
    long long *rows_read;       /* (t->n) rows of each entry read so far, by table position */
} Index;

static const Param *index_find(const Index *x, const char *name)
{
    Param key;
    snprintf(key.name, sizeof key.name, "%s", name);
    const Param *kp = &key, **hit = bsearch(&kp, x->sorted, (size_t)x->t->n, sizeof *x->sorted, cmp_param);
    return hit ? *hit : NULL;
}

/* Tensor #k of file f (a block of rows) into params / moments at its place in the table. */
static int load_block(CkptH5 *h, const CkptManifestFile *f, int k, const Param *p, float *params, float *adam_m,
                      float *adam_v, char *err, size_t errlen)
{
    const long long start = f->row_count[k] < 0 ? 0 : f->row_start[k];
    const long long count = f->row_count[k] < 0 ? p->rows : f->row_count[k];
    if (count < 1 || start + count > p->rows)
        return ckpt_fail(err, errlen, "'%s' holds rows %lld..%lld of '%s', which has %ld (checkpoint of another "
                         "config?)", f->name, start, start + count - 1, p->name, p->rows);
    CkptH5Slice s = block_slice(p, start, f->row_count[k] < 0 ? -1 : count);
    const size_t at = p->offset + (size_t)start * (size_t)p->cols;
    char name[MOMENT_NAME_MAX];
    if (ckpt_h5_read_tensor(h, p->name, &s, params + at, err, errlen)) return -1;
    moment_name(name, p->name, "exp_avg");
    if (adam_m && ckpt_h5_read_tensor(h, name, &s, adam_m + at, err, errlen)) return -1;
    moment_name(name, p->name, "exp_avg_sq");
    if (adam_v && ckpt_h5_read_tensor(h, name, &s, adam_v + at, err, errlen)) return -1;
    return 0;
}

/* Every block of file f that the table holds (a full table must hold every one); rank 0's
 * file also gives the training state. */
static int load_file(const char *dir, const CkptManifest *m, const CkptManifestFile *f, Index *x, float *params,
                     float *adam_m, float *adam_v, CkptState *state, char *err, size_t errlen)
{
    char path[PATH_CAP];
    int rank, world;
    long long links, want = (long long)f->n_tensors * (m->has_moments ? 3 : 1) + 1;
    if (join(path, dir, f->name, err, errlen)) return -1;
    for (int k = 0; k < f->n_tensors; k++)    /* names first: every HDF5 lookup is by a known name */
        if (!index_find(x, f->tensors[k]) && !x->t->selected && !x->t->filtered)
            return ckpt_fail(err, errlen, "tensor '%s' is not in the model (checkpoint of another config?)",
                             f->tensors[k]);
    CkptH5 *h = ckpt_h5_open(path, err, errlen);
    if (!h) return -1;
    int rc = ckpt_h5_read_layout(h, &rank, &world, err, errlen);
    if (rc == 0 && (rank != f->rank || world != m->layout.world_size))
        rc = ckpt_fail(err, errlen, "'%s' says rank %d of %d, the manifest rank %d of %d", f->name, rank, world,
                       f->rank, m->layout.world_size);
    want = (long long)f->n_tensors * (1 + (m->has_moments ? 2 : 0) + (m->has_ema ? 1 : 0)) + 1;
    if (rc == 0) rc = ckpt_h5_count(h, &links, err, errlen);
    if (rc == 0 && links != want)
        rc = ckpt_fail(err, errlen, "'%s' holds %lld objects, the manifest lists %lld", f->name, links, want);
    for (int k = 0; rc == 0 && k < f->n_tensors; k++) {
        const Param *p = index_find(x, f->tensors[k]);
        if (!p) continue;   /* a tensor this rank does not hold */
        rc = load_block(h, f, k, p, params, adam_m, adam_v, err, errlen);
        if (rc == 0) x->rows_read[p - x->t->p] += f->row_count[k] < 0 ? p->rows : f->row_count[k];
    }
    CkptState s;
    if (rc == 0 && f->rank == 0) {
        rc = ckpt_h5_read_state(h, &s, err, errlen);
        if (rc == 0 && (s.step != m->step || s.tokens != m->tokens))
            rc = ckpt_fail(err, errlen, "'%s' holds step %d / %lld tokens, the manifest step %d / %lld", f->name,
                           s.step, s.tokens, m->step, m->tokens);
        if (rc == 0 && state) *state = s;
    }
    ckpt_h5_close(h, NULL, 0);
    return rc;
}

static int load_all(const char *dir, const CkptManifest *m, const ParamTable *t, float *params, float *adam_m,
                    float *adam_v, CkptState *state, char *err, size_t errlen)
{
    Index x = { t, malloc((size_t)t->n * sizeof(Param *) + 1), calloc((size_t)t->n + 1, sizeof(long long)) };
    int rc = x.sorted && x.rows_read ? 0 : ckpt_fail(err, errlen, "out of memory");
    for (int i = 0; rc == 0 && i < t->n; i++) x.sorted[i] = &t->p[i];
    if (rc == 0) qsort(x.sorted, (size_t)t->n, sizeof *x.sorted, cmp_param);
    if (rc == 0 && !ckpt_manifest_rank_file(m, 0)) rc = ckpt_fail(err, errlen, "no file for rank 0");
    for (int i = 0; rc == 0 && i < m->n_files; i++)
        rc = load_file(dir, m, &m->files[i], &x, params, adam_m, adam_v, state, err, errlen);
    /* every row of every tensor exactly once (blocks neither missing nor overlapping) */
    for (int i = 0; rc == 0 && i < t->n; i++)
        if (x.rows_read[i] != t->p[i].rows)
            rc = ckpt_fail(err, errlen, "tensor '%s' %s (%lld of its %ld rows in the files; checkpoint of another "
                           "config?)", t->p[i].name, x.rows_read[i] < t->p[i].rows ? "is missing" : "is held twice",
                           x.rows_read[i], t->p[i].rows);
    free(x.sorted);
    free(x.rows_read);
    return rc;
}

int ckpt_load(const char *ckpt_dir, const ParamTable *table, float *params, float *adam_m, float *adam_v,
              CkptState *state, char *err, size_t errlen)
{
    CkptManifest m;
    if (ckpt_verify(ckpt_dir, err, errlen)) return -1;
    int rc = verify_manifest(ckpt_dir, &m, err, errlen);
    if (rc == 0 && (adam_m || adam_v) && !m.has_moments)
        rc = ckpt_fail(err, errlen, "holds no optimizer moments (saved without them)");
    if (rc == 0) rc = load_all(ckpt_dir, &m, table, params, adam_m, adam_v, state, err, errlen);
    ckpt_manifest_free(&m);
    return rc ? in_ckpt(ckpt_dir, err, errlen) : 0;
}

int ckpt_load_ema(const char *ckpt_dir, const ParamTable *table, float *ema, char *err, size_t errlen)
{
    CkptManifest m;
    char path[PATH_CAP], name[MOMENT_NAME_MAX];
    if (ckpt_verify(ckpt_dir, err, errlen)) return -1;
    if (verify_manifest(ckpt_dir, &m, err, errlen)) return in_ckpt(ckpt_dir, err, errlen);
    int rc = m.has_ema ? 0 : 1;
    const CkptManifestFile *f = ckpt_manifest_rank_file(&m, 0);
    if (rc == 0 && (!f || m.layout.world_size != 1)) rc = ckpt_fail(err, errlen, "no single rank file to load from");
    if (rc == 0) rc = join(path, ckpt_dir, f->name, err, errlen);
    CkptH5 *h = rc == 0 ? ckpt_h5_open(path, err, errlen) : NULL;
    if (rc == 0 && !h) rc = -1;
    for (int i = 0; rc == 0 && i < table->n; i++) {
        const Param *p = &table->p[i];
        CkptH5Slice s = ckpt_h5_whole(p->ndim, p->rows, p->cols);
        moment_name(name, p->name, "ema");
        rc = ckpt_h5_read_tensor(h, name, &s, ema + p->offset, err, errlen);
    }
    if (h) ckpt_h5_close(h, NULL, 0);
    ckpt_manifest_free(&m);
    return rc < 0 ? in_ckpt(ckpt_dir, err, errlen) : rc;
}
