/* checkpoint/ckpt_stream.h - a checkpoint read one tensor at a time, whatever layout wrote it.
 *
 * For tools that must not hold the whole model (`dstrain export`, issue 14: a 671B model is
 * 2.7 TB of FP32): each tensor is gathered from the row blocks of whichever rank files hold it
 * (manifest.h "row_blocks"; a format 1 checkpoint holds every tensor whole in one file) into
 * one caller buffer of that tensor's size, so memory is bounded by the largest tensor plus
 * HDF5's per-file state for at most CKPT_STREAM_OPEN_FILES open files (each with one dataset's
 * chunk cache, 1 MiB, while it is read).
 *
 * Trust: ckpt_stream_open verifies the checkpoint first (ckpt_verify: the manifest's own
 * checksum, every file's size and XXH64), then checks the manifest against the table before
 * any .h5 is opened: every listed tensor is in the table, and the blocks of every table
 * tensor cover its rows exactly once (no gap, no overlap). Each .h5, when first opened, must
 * say the rank and world size the manifest gives it. Every dataset read is checked by
 * ckpt_h5_read_tensor (shape, slice, type, filters) before a byte reaches the buffer.
 *
 * Calling sequence:
 *   CkptStream *s = ckpt_stream_open(dir, table, err, n);   (table: the checkpoint's full
 *                                                             table, params_build of its config)
 *   ckpt_stream_info(s) ... ckpt_stream_read(s, i, "ema" or NULL, buf, err, n) for table
 *   entries i in any order ... ckpt_stream_close(s)
 * Errors follow fsio.h, prefixed "checkpoint '<dir>': ".
 */
#ifndef DSTRAIN_CKPT_STREAM_H
#define DSTRAIN_CKPT_STREAM_H

#include <stddef.h>

#include "../model/params.h"

#define CKPT_STREAM_OPEN_FILES 16   /* rank files kept open at once (least recently used closes) */

typedef struct CkptStream CkptStream;

/* What the manifest says about the checkpoint. */
typedef struct CkptStreamInfo {
    int step;
    long long tokens;
    int world_size;             /* rank files */
    int has_ema;                /* "<name>.ema" datasets are there */
    long long blocks;           /* row blocks over all files and tensors */
} CkptStreamInfo;

/* NULL + err on failure (nothing left open). */
CkptStream *ckpt_stream_open(const char *ckpt_dir, const ParamTable *table, char *err, size_t errlen);
CkptStreamInfo ckpt_stream_info(const CkptStream *s);
/* Table entry i (its numel floats, row-major) into out; suffix NULL for the weights, "ema" for
 * their EMA (an error naming the tensor when the checkpoint holds none). */
int ckpt_stream_read(CkptStream *s, int i, const char *suffix, float *out, char *err, size_t errlen);
void ckpt_stream_close(CkptStream *s);

#endif
