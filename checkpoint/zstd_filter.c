/* checkpoint/zstd_filter.c - HDF5 filter 32015 (Zstandard) in-process; see zstd_filter.h.
 * Not here: which datasets use it or their chunking (h5.c).
 * Reference: HDF5 H5Z_class2_t filter interface; zstd frame format (RFC 8878). */
#include "zstd_filter.h"

#include <hdf5.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <zstd.h>

#include "fsio.h"

static _Thread_local char last_error[160];

const char *ckpt_zstd_last_error(void) { return last_error; }

static size_t filter_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static size_t filter_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return 0;
}

static size_t compress_chunk(size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes, size_t *buf_size,
                             void **buf)
{
    int level = cd_nelmts > 0 ? (int)cd_values[0] : 1;
    if (level < 1 || level > ZSTD_maxCLevel()) level = 1;
    size_t cap = ZSTD_compressBound(nbytes);
    void *out = malloc(cap ? cap : 1);
    if (!out) return filter_error("out of memory compressing a chunk of %zu bytes", nbytes);
    size_t n = ZSTD_compress(out, cap, *buf, nbytes, level);
    if (ZSTD_isError(n)) {
        free(out);
        return filter_error("zstd compression failed: %s", ZSTD_getErrorName(n));
    }
    free(*buf);
    *buf = out;
    *buf_size = cap;
    return n;
}

static size_t decompress_chunk(size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                               size_t *buf_size, void **buf)
{
    unsigned long long size = ZSTD_getFrameContentSize(*buf, nbytes);
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN)
        return filter_error("chunk is not a zstd frame with a known size (%zu stored bytes)", nbytes);
    if (size > CKPT_ZSTD_MAX_CHUNK)
        return filter_error("zstd frame claims %llu bytes, more than the %zu allowed", size, CKPT_ZSTD_MAX_CHUNK);
    if (cd_nelmts >= 2 && size != cd_values[1])
        return filter_error("zstd frame holds %llu bytes, the chunk has %u", size, cd_values[1]);
    size_t frame = ZSTD_findFrameCompressedSize(*buf, nbytes);
    if (ZSTD_isError(frame) || frame != nbytes)
        return filter_error("chunk of %zu bytes is not exactly one zstd frame", nbytes);
    void *out = malloc(size ? (size_t)size : 1);
    if (!out) return filter_error("out of memory decompressing a chunk of %llu bytes", size);
    size_t n = ZSTD_decompress(out, (size_t)size, *buf, nbytes);
    if (ZSTD_isError(n) || n != size) {
        free(out);
        if (ZSTD_isError(n)) return filter_error("zstd frame is damaged: %s", ZSTD_getErrorName(n));
        return filter_error("zstd frame decoded to %zu bytes instead of %llu", n, size);
    }
    free(*buf);
    *buf = out;
    *buf_size = (size_t)size ? (size_t)size : 1;
    return n;
}

size_t ckpt_zstd_filter(unsigned int flags, size_t cd_nelmts, const unsigned int cd_values[], size_t nbytes,
                        size_t *buf_size, void **buf)
{
    last_error[0] = 0;
    if (flags & H5Z_FLAG_REVERSE) return decompress_chunk(cd_nelmts, cd_values, nbytes, buf_size, buf);
    return compress_chunk(cd_nelmts, cd_values, nbytes, buf_size, buf);
}

static const H5Z_class2_t ZSTD_CLASS = {
    H5Z_CLASS_T_VERS, (H5Z_filter_t)CKPT_ZSTD_FILTER_ID, 1, 1, "zstd (dstrain)", NULL, NULL, ckpt_zstd_filter,
};

static pthread_once_t register_once = PTHREAD_ONCE_INIT;
static herr_t register_status = -1;

static void register_filter(void) { register_status = H5Zregister(&ZSTD_CLASS); }

int ckpt_zstd_register(char *err, size_t errlen)
{
    pthread_once(&register_once, register_filter);
    if (register_status < 0)
        return ckpt_fail(err, errlen, "cannot register the zstd HDF5 filter (id %d)", CKPT_ZSTD_FILTER_ID);
    return 0;
}
