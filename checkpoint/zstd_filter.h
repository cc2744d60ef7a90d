/* checkpoint/zstd_filter.h - the Zstandard HDF5 filter, registered in-process.
 *
 * Filter id 32015 is Zstandard's registered HDF5 filter id, so h5py + hdf5plugin (or any
 * HDF5 with the zstd plugin on HDF5_PLUGIN_PATH) reads our files with no help from us.
 * Encoding, as that convention has it: cd_values[0] = compression level, one zstd frame per
 * chunk, the frame header carrying the decompressed size.
 * dstrain extension: cd_values[1] = the chunk's raw bytes. Our decoder requires the frame's
 * content size to equal it (other decoders ignore the value), so a damaged or hostile frame
 * can never make HDF5 believe a chunk is shorter or longer than its layout says. Frames
 * whose size is unknown, above CKPT_ZSTD_MAX_CHUNK, or that are followed by trailing bytes
 * are refused.
 *
 * Calling sequence: ckpt_zstd_register() before creating or reading a dataset with the
 * filter (idempotent, thread-safe); then H5Pset_filter(dcpl, CKPT_ZSTD_FILTER_ID,
 * H5Z_FLAG_MANDATORY, 2, {level, chunk_bytes}).
 */
#ifndef DSTRAIN_CKPT_ZSTD_FILTER_H
#define DSTRAIN_CKPT_ZSTD_FILTER_H

#include <stddef.h>

#define CKPT_ZSTD_FILTER_ID 32015
#define CKPT_ZSTD_MAX_CHUNK ((size_t)64 << 20)   /* no chunk we write is above 1 MiB */

/* Register the filter with HDF5 once per process. 0, or -1 with err. */
int ckpt_zstd_register(char *err, size_t errlen);

/* The filter callback itself (HDF5's H5Z_func_t signature), exposed for tests and fuzzing.
 * Forward: compress *buf (nbytes) into a new malloc'd buffer that replaces *buf.
 * Reverse (flags & H5Z_FLAG_REVERSE): decompress likewise. Returns the new byte count, or 0
 * on failure with *buf untouched (the reason is ckpt_zstd_last_error()). */
size_t ckpt_zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                        size_t *buf_size, void **buf);

/* Why this thread's last filter call failed ("" when it did not). */
const char *ckpt_zstd_last_error(void);

#endif
