/* runtime/inspect.c - `dstrain inspect CKPT_DIR`: what a checkpoint holds, and whether it
 * verifies. Prints the manifest (step, tokens, layout, files), then, once every checksum
 * matched, each tensor (name, shape, dtype, stored and raw bytes), the totals with the
 * compression ratio, and the training state. Exit 0 when it verifies, 1 with one message
 * naming the damaged file otherwise.
 * Not here: reading tensors' values (that is ckpt_load) or any repair. Damaged files are
 * never opened with HDF5: only verified files are listed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoint/ckpt.h"
#include "../checkpoint/h5.h"
#include "../checkpoint/manifest.h"
#include "commands.h"
#include "common.h"

typedef struct Totals {
    long long tensors, elements, stored, raw;
} Totals;

static void inspect_usage(FILE *f)
{
    fprintf(f, "usage: dstrain inspect CKPT_DIR\n"
               "Lists what a checkpoint directory (ckpt-<step>/) holds - step, tokens, parallel\n"
               "layout, files, and every tensor with its shape, dtype, compressed and raw size - and\n"
               "verifies the manifest and every file's checksum. Exit status 0 when it verifies,\n"
               "1 with a message naming the damaged file otherwise.\n");
}

static void print_manifest(const char *dir, const CkptManifest *m)
{
    printf("checkpoint '%s'\n", dir);
    printf("  format version %d | step %d | tokens %lld | optimizer moments %s | ema %s\n", m->format_version,
           m->step, m->tokens, m->has_moments ? "yes" : "no", m->has_ema ? "yes" : "no");
    printf("  layout: world size %d (pp %d, dp %d, ep %d)\n", m->layout.world_size, m->layout.pp, m->layout.dp,
           m->layout.ep);
    for (int i = 0; i < m->n_files; i++)
        printf("  file %-20s rank %-5d %14lld bytes  xxh64 %016llx\n", m->files[i].name, m->files[i].rank,
               m->files[i].bytes, (unsigned long long)m->files[i].checksum);
}

static void print_tensor(const char *name, const CkptH5Info *info, Totals *t)
{
    char shape[96];
    size_t used = (size_t)snprintf(shape, sizeof shape, "(");
    long long n = 1;
    for (int d = 0; d < info->ndim && used < sizeof shape; d++) {
        used += (size_t)snprintf(shape + used, sizeof shape - used, d ? ",%lld" : "%lld", info->dims[d]);
        n *= info->dims[d];
    }
    if (used < sizeof shape) snprintf(shape + used, sizeof shape - used, ")");
    double ratio = info->stored_bytes > 0 ? (double)info->raw_bytes / (double)info->stored_bytes : 0.0;
    printf("  %-60s %-14s %-8s %12lld %12lld %6.3f\n", name, shape, info->dtype, info->stored_bytes,
           info->raw_bytes, ratio);
    t->tensors++;
    t->elements += n;
    t->stored += info->stored_bytes;
    t->raw += info->raw_bytes;
}

/* Every dataset the manifest says f holds, looked up by name (never by enumerating the
 * file, see checkpoint/h5.h), with the moments and the EMA when the checkpoint has them.
 * what: bit 0 moments, bit 1 EMA. */
static int list_tensors(CkptH5 *h, const CkptManifestFile *f, int what, Totals *tot, char *err, size_t errlen)
{
    static const char *const SUFFIX[4] = { "", ".exp_avg", ".exp_avg_sq", ".ema" };
    const int has[4] = { 1, what & 1, what & 1, what & 2 };
    char name[CKPT_H5_NAME_MAX];
    for (int i = 0; i < f->n_tensors; i++) {
        for (int k = 0; k < 4; k++) {
            if (!has[k]) continue;
            CkptH5Info info;
            snprintf(name, sizeof name, "%s%s", f->tensors[i], SUFFIX[k]);
            if (ckpt_h5_info(h, name, &info, err, errlen)) return -1;
            print_tensor(name, &info, tot);
        }
    }
    return 0;
}

/* Tensors and state of one verified rank file. */
static int list_file(const char *dir, const CkptManifestFile *f, int what, Totals *tot, char *err, size_t errlen)
{
    char *path = xasprintf("%s/%s", dir, f->name);
    CkptH5 *h = ckpt_h5_open(path, err, errlen);
    free(path);
    if (!h) return -1;
    printf("tensors in %s:\n  %-60s %-14s %-8s %12s %12s %6s\n", f->name, "name", "shape", "dtype", "stored", "raw",
           "ratio");
    CkptState s;
    int rc = list_tensors(h, f, what, tot, err, errlen);
    if (rc == 0) rc = ckpt_h5_read_state(h, &s, err, errlen);
    if (rc == 0)
        printf("state (%s): step %d | tokens %lld | data seed %llu | data cursor %llu | rng %llu\n", f->name, s.step,
               s.tokens, (unsigned long long)s.data.seed, (unsigned long long)s.data.cursor,
               (unsigned long long)s.rng);
    ckpt_h5_close(h, NULL, 0);
    return rc;
}

int cmd_inspect(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            inspect_usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-' || dir) DIE("inspect: unexpected argument '%s' (see dstrain inspect --help)", argv[i]);
        dir = argv[i];
    }
    if (!dir) DIE("inspect: a checkpoint directory is required (see dstrain inspect --help)");
    char err[1024];
    CkptManifest m;
    if (ckpt_manifest_read(dir, &m, err, sizeof err) == 0) print_manifest(dir, &m);
    if (ckpt_verify(dir, err, sizeof err) != 0) {
        ckpt_manifest_free(&m);
        fflush(stdout);
        fprintf(stderr, "dstrain: inspect: %s\n", err);
        return 1;
    }
    Totals tot = { 0, 0, 0, 0 };
    for (int i = 0; i < m.n_files; i++) {
        if (list_file(dir, &m.files[i], (m.has_moments ? 1 : 0) | (m.has_ema ? 2 : 0), &tot, err, sizeof err) != 0) {
            ckpt_manifest_free(&m);
            fflush(stdout);
            fprintf(stderr, "dstrain: inspect: checkpoint '%s': %s\n", dir, err);
            return 1;
        }
    }
    printf("totals: %lld tensors, %lld elements, stored %lld bytes (%.2f MiB), raw %lld bytes (%.2f MiB), "
           "compression ratio %.3f\n", tot.tensors, tot.elements, tot.stored, tot.stored / 1048576.0, tot.raw,
           tot.raw / 1048576.0, tot.stored > 0 ? (double)tot.raw / (double)tot.stored : 0.0);
    printf("verified: manifest.json and the checksums of all %d file(s) match\n", m.n_files);
    ckpt_manifest_free(&m);
    return 0;
}
