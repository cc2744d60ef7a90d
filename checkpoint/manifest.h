/* checkpoint/manifest.h - manifest.json: what a checkpoint directory holds, written last.
 *
 * Format (format_version CKPT_MANIFEST_VERSION; the version is bumped when a key changes
 * meaning, new keys are added without a bump; a reader refuses a version above its own):
 *   {
 *     "format_version": 2,
 *     "step": 40, "tokens": 10240,                 optimizer steps done, tokens seen
 *     "layout": {"world_size": 1, "pp": 1, "dp": 1, "ep": 1},
 *     "optimizer_moments": true,                   the .h5 files hold exp_avg / exp_avg_sq
 *     "checksum_algorithm": "xxh64",
 *     "files": [{"name": "rank-00000.h5", "rank": 0, "bytes": 123, "checksum": "<16 hex>",
 *                "tensors": ["model.embed_tokens.weight", ...],
 *                "row_blocks": [[0, 32], ...]}],
 *     "config": "<the resolved config text>",
 *     "manifest_checksum": "<16 hex>"
 *   }
 * Checksums are XXH64 (hash.h) in lower-case hex: of each whole file, and for
 * manifest_checksum of this object without that key, serialised compactly with sorted keys
 * (JSON_COMPACT | JSON_SORT_KEYS), so damage to the manifest itself is caught too.
 * There is one file per rank, ranks 0..world_size-1 each once; file names are plain
 * ([A-Za-z0-9._-], no leading dot, no path), so a hostile manifest cannot point outside its
 * directory. "tensors" lists the parameter datasets of that file in table order; with
 * optimizer_moments each also has "<name>.exp_avg" and "<name>.exp_avg_sq". Names are
 * non-empty, shorter than CKPT_TENSOR_NAME_MAX, free of '/', distinct, never "state" and
 * never end in a moment suffix.
 * "row_blocks" (version 2) gives, for each listed tensor, the rows [start, start + count) of the
 * whole tensor that file holds (a 1-D tensor's elements count as rows): a tensor may be split
 * over several files by rows, each file holding one block of it (so any layout can read the
 * blocks it needs from whichever files hold them). Version 1 manifests have no "row_blocks":
 * every listed tensor is whole in its file (row_start 0, row_count -1 when read).
 * Why the list: readers look every dataset up by a name from this (verified) list and never
 * enumerate the HDF5 file's links, the HDF5 1.10 code path that fuzzing showed crashing on
 * crafted files (see h5.h).
 */
#ifndef DSTRAIN_CKPT_MANIFEST_H
#define DSTRAIN_CKPT_MANIFEST_H

#include <stddef.h>
#include <stdint.h>

#include "ckpt.h"

#define CKPT_MANIFEST_NAME "manifest.json"
#define CKPT_MANIFEST_MAX_BYTES ((size_t)64 << 20)
#define CKPT_MAX_FILES 65536
#define CKPT_FILE_NAME_MAX 64
#define CKPT_TENSOR_NAME_MAX 200   /* leaves room for ".exp_avg_sq" within CKPT_H5_NAME_MAX */
#define CKPT_MAX_TENSORS (1 << 22)
#define CKPT_MANIFEST_VERSION CKPT_FORMAT_VERSION     /* 2: row_blocks; 1 (read): whole tensors */

typedef struct CkptManifestFile {
    char name[CKPT_FILE_NAME_MAX];
    int rank;
    long long bytes;
    uint64_t checksum;
    int n_tensors;
    const char **tensors;       /* (n_tensors) parameter names; read: point into names_blob */
    char *names_blob;           /* read: owned storage of the names (NULL when writing) */
    long long *row_start;       /* (n_tensors) first row of each tensor's block in this file */
    long long *row_count;       /* (n_tensors) its rows; -1: the whole tensor (version 1) */
} CkptManifestFile;

typedef struct CkptManifest {
    int format_version;
    int step;
    long long tokens;
    CkptLayout layout;
    int has_moments;
    int has_ema;                /* "ema": <name>.ema datasets (absent in older manifests: 0) */
    char *config;               /* owned, NUL-terminated */
    int n_files;
    CkptManifestFile *files;    /* (n_files), owned */
} CkptManifest;

/* Write dir/manifest.json durably (temp file, fsync, rename, fsync dir). */
int ckpt_manifest_write(const char *dir, const CkptManifest *m, char *err, size_t errlen);
/* Read and check dir/manifest.json: JSON, every key's type and range, the file list rules,
 * the format version and manifest_checksum. On failure m is left empty (safe to free). */
int ckpt_manifest_read(const char *dir, CkptManifest *m, char *err, size_t errlen);
void ckpt_manifest_free(CkptManifest *m);
/* The entry of the file of this rank, or NULL. */
const CkptManifestFile *ckpt_manifest_rank_file(const CkptManifest *m, int rank);

#endif
