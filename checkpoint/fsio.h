/* checkpoint/fsio.h - file-system helpers of the checkpoint code, and its error convention.
 *
 * Error convention (STYLE.md "Errors", checkpoint I/O returns errors): every function that
 * can fail returns 0 (or a non-NULL pointer) on success and -1 (or NULL) on failure, with one
 * lower-case line in err[errlen] naming the file and what went wrong. ckpt_fail formats it
 * and returns -1 so a failure path reads `return ckpt_fail(err, errlen, "...", ...)` or, in
 * functions with resources, sets rc and jumps to their one cleanup label.
 *
 * Durability (the redis / SQLite recipe): a file is complete only after fsync; a name is
 * switched only by rename after that fsync; the rename is durable only after an fsync of the
 * directory holding it.
 * Not here: anything that knows the checkpoint layout (ckpt.c) or HDF5 (h5.c).
 */
#ifndef DSTRAIN_CKPT_FSIO_H
#define DSTRAIN_CKPT_FSIO_H

#include <stddef.h>
#include <stdint.h>

int ckpt_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Create path and missing parents (mode 0755); existing directories are fine. */
int fsio_mkdirs(const char *path, char *err, size_t errlen);
/* fsync an existing file (opened read-only). */
int fsio_fsync_file(const char *path, char *err, size_t errlen);
/* fsync a directory so renames and creations inside it are durable. File systems that do not
 * support fsync on a directory (EINVAL, ENOTSUP) are accepted silently. */
int fsio_fsync_dir(const char *path, char *err, size_t errlen);
/* Size in bytes and XXH64 of a whole regular file (read in 1 MiB blocks). */
int fsio_hash_file(const char *path, uint64_t *sum, long long *bytes, char *err, size_t errlen);
/* Write data to path durably: path.tmp, write, fsync, rename over path, fsync the directory. */
int fsio_write_durable(const char *path, const void *data, size_t len, char *err, size_t errlen);
/* The whole file as a NUL-terminated string (caller frees); *len the byte count (may be NULL).
 * Refuses non-regular files and files above max_bytes (a damaged or hostile file never makes
 * us allocate more than that). */
char *fsio_read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t errlen);
/* Remove a directory and everything under it (symbolic links are removed, never followed).
 * A path that does not exist is not an error. */
int fsio_remove_tree(const char *path, char *err, size_t errlen);
/* 1 when path names a directory (following links), 0 otherwise. */
int fsio_is_dir(const char *path);
/* The last component of a path ("a/b/" gives "b"), into out. */
void fsio_basename(const char *path, char *out, size_t outlen);

#endif
