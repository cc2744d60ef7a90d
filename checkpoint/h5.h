/* checkpoint/h5.h - one rank's HDF5 checkpoint file: FP32 tensors and the training state.
 *
 * File layout (format version CKPT_FORMAT_VERSION; a reader refuses a newer version):
 *   /                          root group, links kept in creation order (table order)
 *     @format_version (int64)  @rank (int64)  @world_size (int64)
 *     <name>                   float32 (little-endian) dataset, 1-D or 2-D, for every tensor
 *       @full_shape  int64[ndim]  shape of the whole logical tensor
 *       @slice_start int64[ndim]  where this file's block starts in it (zeros for one rank)
 *     /state                   group; one scalar 64-bit integer attribute per CkptState field:
 *       @step @tokens (int64) @data_seed @data_cursor @rng (uint64)
 * Every dataset is chunked (at most CKPT_H5_CHUNK_BYTES of raw data a chunk: whole rows
 * where a row fits) and filtered by HDF5's byte shuffle, then zstd (zstd_filter.h, level
 * CKPT_H5_ZSTD_LEVEL, cd_values {level, raw chunk bytes}). Object times are not recorded,
 * so the same contents give the same bytes. Files use the HDF5 1.10 format (metadata
 * checksums on superblock, object headers and chunk indexes).
 *
 * The reader trusts nothing in the file: every dataset it reads must be a hard link to a
 * float32 dataset whose rank, dims, chunk dims, filter pipeline and slice attributes are
 * exactly what the caller expects before a byte of data is read into the caller's buffer;
 * every attribute's type and size is checked before it is read. It never enumerates the
 * links of a group: HDF5 1.10.8 builds a link table for that (H5Lget_name_by_idx,
 * H5Literate) and crashes freeing it when a crafted file makes the build fail halfway (found
 * by tests/fuzz/fuzz_ckpt.sh within seconds). Every object is looked up by a name that comes
 * from the verified manifest, and only hard links are followed.
 *
 * Errors follow fsio.h: "'<path>': <what>", and for a failed HDF5 call its name and HDF5's
 * own description (the library's automatic error printing is switched off).
 *
 * Calling sequence:
 *   write: h = ckpt_h5_create(path, rank, world_size); ckpt_h5_write_tensor(h, ...) ...;
 *          ckpt_h5_write_state(h, &state); ckpt_h5_close(h)  (close reports flush errors)
 *   read:  h = ckpt_h5_open(path); ckpt_h5_read_layout / _read_tensor / _read_state /
 *          _count / _info; ckpt_h5_close(h)
 */
#ifndef DSTRAIN_CKPT_H5_H
#define DSTRAIN_CKPT_H5_H

#include <stddef.h>

#include "ckpt.h"

#define CKPT_H5_CHUNK_BYTES ((size_t)1 << 20)
#define CKPT_H5_ZSTD_LEVEL 1     /* ENVIRONMENT.md: as small as higher levels for FP32 weights, faster */
#define CKPT_H5_MAX_DIMS 2       /* tensors are 1-D or 2-D */
#define CKPT_H5_NAME_MAX 256

typedef struct CkptH5 CkptH5;

/* A block of a tensor: this file holds shape[] elements starting at slice_start[] of a
 * logical tensor of full_shape[]. For one rank, shape == full_shape and slice_start = 0. */
typedef struct CkptH5Slice {
    int ndim;
    long long shape[CKPT_H5_MAX_DIMS];
    long long full_shape[CKPT_H5_MAX_DIMS];
    long long slice_start[CKPT_H5_MAX_DIMS];
} CkptH5Slice;

/* The whole tensor (one rank): shape = full_shape = (rows, cols) or (rows). */
CkptH5Slice ckpt_h5_whole(int ndim, long long rows, long long cols);

/* What ckpt_h5_info reports about one dataset. */
typedef struct CkptH5Info {
    int ndim;                   /* <= CKPT_H5_MAX_LIST_DIMS */
    long long dims[8];
    char dtype[32];             /* "float32", or a description of another type */
    long long stored_bytes;     /* on disk, after compression */
    long long raw_bytes;        /* elements x element size */
} CkptH5Info;
#define CKPT_H5_MAX_LIST_DIMS 8

/* Create (truncate) path for writing. NULL + err on failure. */
CkptH5 *ckpt_h5_create(const char *path, int rank, int world_size, char *err, size_t errlen);
/* One tensor dataset: data holds prod(shape) floats in row-major order. */
int ckpt_h5_write_tensor(CkptH5 *h, const char *name, const CkptH5Slice *s, const float *data, char *err,
                         size_t errlen);
int ckpt_h5_write_state(CkptH5 *h, const CkptState *s, char *err, size_t errlen);

/* Open an existing file read-only; checks @format_version. NULL + err on failure. */
CkptH5 *ckpt_h5_open(const char *path, char *err, size_t errlen);
int ckpt_h5_read_layout(CkptH5 *h, int *rank, int *world_size, char *err, size_t errlen);
/* Read tensor `name` into out (prod(want->shape) floats) after checking everything the file
 * says about it against want; the error names the tensor. */
int ckpt_h5_read_tensor(CkptH5 *h, const char *name, const CkptH5Slice *want, float *out, char *err,
                        size_t errlen);
int ckpt_h5_read_state(CkptH5 *h, CkptState *s, char *err, size_t errlen);
/* Number of links in the root group (tensors + "state"), from the group's own count. */
int ckpt_h5_count(CkptH5 *h, long long *n, char *err, size_t errlen);
/* Shape, type and sizes of dataset `name` (any rank up to CKPT_H5_MAX_LIST_DIMS, any type). */
int ckpt_h5_info(CkptH5 *h, const char *name, CkptH5Info *info, char *err, size_t errlen);

/* Close and free (NULL allowed). A writer's close flushes; its failure is returned. */
int ckpt_h5_close(CkptH5 *h, char *err, size_t errlen);

#endif
