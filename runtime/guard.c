/* runtime/guard.c - stop signals and the run-directory lock (guard.h).
 * Not here: what a stop does (runtime/train.c). Reference: POSIX sigaction, flock(2). */
#define _GNU_SOURCE
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static volatile sig_atomic_t stop_signal;

static const int STOP_SIGNALS[] = { SIGTERM, SIGINT, SIGUSR1 };
#define N_STOP_SIGNALS (int)(sizeof STOP_SIGNALS / sizeof STOP_SIGNALS[0])

static void on_stop_signal(int sig)
{
    if (!stop_signal) {
        stop_signal = sig;
        return;
    }
    /* the second one: leave now, with the signal's own status (write(2) is async-signal-safe) */
    static const char msg[] = "dstrain: second stop signal: exiting at once, without a checkpoint\n";
    ssize_t put = write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)put;
    signal(sig, SIG_DFL);
    raise(sig);
}

void guard_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;   /* a signal never turns a write or a wait into an error */
    for (int i = 0; i < N_STOP_SIGNALS; i++) sigaction(STOP_SIGNALS[i], &sa, NULL);
}

int guard_stop_signal(void)
{
    return stop_signal;
}

const char *guard_signal_name(int sig)
{
    static char buf[32];
    switch (sig) {
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGUSR1: return "SIGUSR1";
    default: snprintf(buf, sizeof buf, "signal %d", sig); return buf;
    }
}

/* "host H pid P" of the holder, read from the lock file (best effort). */
static void read_holder(int fd, char *out, size_t n)
{
    char buf[300];
    ssize_t got = pread(fd, buf, sizeof buf - 1, 0);
    if (got <= 0) {
        snprintf(out, n, "another process (the lock file names none)");
        return;
    }
    buf[got] = 0;
    buf[strcspn(buf, "\n")] = 0;
    snprintf(out, n, "%s", buf);
}

int guard_lock_run_dir(const char *run_dir, char *err, size_t errlen)
{
    char path[4096], holder[320], host[256] = "?";
    if (snprintf(path, sizeof path, "%s/lock", run_dir) >= (int)sizeof path) {
        snprintf(err, errlen, "train: run directory path too long: '%s'", run_dir);
        return -1;
    }
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "train: cannot open the lock file '%s': %s", path, strerror(errno));
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            read_holder(fd, holder, sizeof holder);
            snprintf(err, errlen, "train: run directory '%s' is in use by %s (lock file '%s'; stop that "
                     "trainer or use another train.name)", run_dir, holder, path);
        } else {
            snprintf(err, errlen, "train: cannot lock '%s': %s", path, strerror(e));
        }
        close(fd);
        return -1;
    }
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    int len = snprintf(holder, sizeof holder, "host %s pid %ld\n", host, (long)getpid());
    if (ftruncate(fd, 0) != 0 || pwrite(fd, holder, (size_t)len, 0) != len) {
        snprintf(err, errlen, "train: cannot write the lock file '%s': %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

void guard_unlock(int fd)
{
    if (fd >= 0) close(fd);
}
