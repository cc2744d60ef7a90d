/* checkpoint/fsio.c - durable writes, hashing, reading and removing files (see fsio.h).
 * Not here: the checkpoint layout or its save protocol (ckpt.c). */
#define _GNU_SOURCE
#include "fsio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hash.h"

#define READ_BLOCK (1 << 20)
#define MAX_TREE_DEPTH 16       /* checkpoint directories are flat; deeper trees are refused */

int ckpt_fail(char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return -1;
}

int fsio_mkdirs(const char *path, char *err, size_t errlen)
{
    char buf[4096];
    if (!*path) return ckpt_fail(err, errlen, "empty directory name");
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ckpt_fail(err, errlen, "path too long: '%s'", path);
    for (char *s = buf + 1;; s++) {
        char c = *s;
        if (c != '/' && c != 0) continue;
        *s = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ckpt_fail(err, errlen, "cannot create directory '%s': %s", buf, strerror(errno));
        *s = c;
        if (!c) break;
    }
    if (!fsio_is_dir(path)) return ckpt_fail(err, errlen, "'%s' exists and is not a directory", path);
    return 0;
}

int fsio_fsync_file(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ckpt_fail(err, errlen, "cannot open '%s': %s", path, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0) rc = ckpt_fail(err, errlen, "cannot fsync '%s': %s", path, strerror(errno));
    close(fd);
    return rc;
}

int fsio_fsync_dir(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return ckpt_fail(err, errlen, "cannot open directory '%s': %s", path, strerror(errno));
    int rc = 0;
    if (fsync(fd) != 0 && errno != EINVAL && errno != ENOTSUP)
        rc = ckpt_fail(err, errlen, "cannot fsync directory '%s': %s", path, strerror(errno));
    close(fd);
    return rc;
}

int fsio_hash_file(const char *path, uint64_t *sum, long long *bytes, char *err, size_t errlen)
{
    int rc = -1;
    unsigned char *buf = NULL;
    /* O_NONBLOCK: a FIFO must not block the open (fstat refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        ckpt_fail(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        goto done;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ckpt_fail(err, errlen, "'%s' is not a regular file", path);
        goto done;
    }
    buf = malloc(READ_BLOCK);
    if (!buf) {
        ckpt_fail(err, errlen, "out of memory hashing '%s'", path);
        goto done;
    }
    CkptHash h;
    ckpt_hash_init(&h);
    for (;;) {
        ssize_t got = read(fd, buf, READ_BLOCK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            ckpt_fail(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        ckpt_hash_update(&h, buf, (size_t)got);
    }
    *sum = ckpt_hash_final(&h);
    *bytes = (long long)h.total;
    rc = 0;
done:
    free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t put = write(fd, p, len);
        if (put < 0 && errno == EINTR) continue;
        if (put < 0) return -1;
        p += put;
        len -= (size_t)put;
    }
    return 0;
}

static void parent_dir(const char *path, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s", path);
    char *slash = strrchr(out, '/');
    if (!slash) snprintf(out, outlen, ".");
    else if (slash == out) out[1] = 0;
    else *slash = 0;
}

int fsio_write_durable(const char *path, const void *data, size_t len, char *err, size_t errlen)
{
    char tmp[4096], dir[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return ckpt_fail(err, errlen, "path too long: '%s'", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return ckpt_fail(err, errlen, "cannot create '%s': %s", tmp, strerror(errno));
    int rc = 0;
    if (write_all(fd, data, len) != 0) rc = ckpt_fail(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
    else if (fsync(fd) != 0) rc = ckpt_fail(err, errlen, "cannot fsync '%s': %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = ckpt_fail(err, errlen, "cannot close '%s': %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = ckpt_fail(err, errlen, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    if (rc != 0) {
        unlink(tmp);
        return rc;
    }
    parent_dir(path, dir, sizeof dir);
    return fsio_fsync_dir(dir, err, errlen);
}

char *fsio_read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t errlen)
{
    char *buf = NULL;
    /* O_NONBLOCK: a FIFO must not block the open (fstat refuses it); no effect on files */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        ckpt_fail(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ckpt_fail(err, errlen, "'%s' is not a regular file", path);
        goto fail;
    }
    if ((unsigned long long)st.st_size > max_bytes) {
        ckpt_fail(err, errlen, "'%s' is %lld bytes, more than the %zu allowed (file damaged?)", path,
                  (long long)st.st_size, max_bytes);
        goto fail;
    }
    size_t want = (size_t)st.st_size, have = 0;
    buf = malloc(want + 1);
    if (!buf) {
        ckpt_fail(err, errlen, "out of memory reading '%s'", path);
        goto fail;
    }
    while (have < want) {   /* the size may shrink under us; never read past `want` */
        ssize_t got = read(fd, buf + have, want - have);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            ckpt_fail(err, errlen, "cannot read '%s': %s", path, strerror(errno));
            goto fail;
        }
        if (got == 0) break;
        have += (size_t)got;
    }
    buf[have] = 0;
    if (len) *len = have;
    close(fd);
    return buf;
fail:
    free(buf);
    close(fd);
    return NULL;
}

static int remove_at(int parent, const char *name, const char *shown, int depth, char *err, size_t errlen)
{
    if (unlinkat(parent, name, 0) == 0 || errno == ENOENT) return 0;
    if (errno != EISDIR && errno != EPERM)
        return ckpt_fail(err, errlen, "cannot remove '%s': %s", shown, strerror(errno));
    if (depth >= MAX_TREE_DEPTH) return ckpt_fail(err, errlen, "'%s' is nested too deeply to remove", shown);
    int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return ckpt_fail(err, errlen, "cannot open '%s': %s", shown, strerror(errno));
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return ckpt_fail(err, errlen, "cannot list '%s': %s", shown, strerror(errno));
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        rc = remove_at(dirfd(d), e->d_name, shown, depth + 1, err, errlen);
    }
    closedir(d);
    if (rc == 0 && unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT)
        rc = ckpt_fail(err, errlen, "cannot remove directory '%s': %s", shown, strerror(errno));
    return rc;
}

int fsio_remove_tree(const char *path, char *err, size_t errlen)
{
    return remove_at(AT_FDCWD, path, path, 0, err, errlen);
}

int fsio_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

void fsio_basename(const char *path, char *out, size_t outlen)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t start = n;
    while (start > 0 && path[start - 1] != '/') start--;
    snprintf(out, outlen, "%.*s", (int)(n - start), path + start);
}
