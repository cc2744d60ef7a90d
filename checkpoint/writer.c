/* checkpoint/writer.c - the background checkpoint writer (calling sequence in ckpt.h).
 *
 * One worker thread per writer, started at creation. A save starts the child process that
 * writes it (below) and returns; the worker waits for the child and keeps its result. At most
 * one save is in flight: the next ckpt_save_async waits for it first. Nothing is copied: the
 * child's copy-on-write view of the caller's buffers, taken by fork at the call, is the
 * snapshot (a second host copy of weights and moments cost the trainer its size in memory and
 * a copy inside the training stall; the fork shares every page of the trainer either way).
 *
 *   trainer:  step | step | fork | step | step | step | wait+fork | step ...
 *   child:                  [ write ckpt-N to disk ]               [ write ckpt-M ]
 *
 * The save runs in a child process forked by ckpt_save_async on the caller's thread (it sees
 * the buffers copy-on-write as they were at the call and reports its one-line error through a
 * pipe): HDF5 1.10 keeps a file whose close failed (ENOSPC, EIO, EDQUOT while flushing)
 * half-open, leaking its metadata cache (~2.7 MB per failed save on tiny) and crashing at exit
 * (SIGSEGV in H5_term_library's H5F__close_cb, seen as exit status 139). In a child whatever
 * HDF5 leaves behind ends with it (_exit, no atexit handlers), and a crash of the child is a
 * failed save, not a dead trainer.
 * The child ignores the stop signals (a second Ctrl-C ends the trainer; the child finishes or
 * abandons its save, which is atomic either way) and holds the run-directory lock with it (an
 * inherited descriptor), so no second trainer starts while it writes. A crash point
 * (DSTRAIN_CKPT_CRASH_AT) kills the child with SIGKILL; the worker then kills the trainer the
 * same way, so the kill-during-save tests see what `kill -9` of a trainer does.
 *
 * Not here: what a save writes (ckpt.c).
 */
#define _GNU_SOURCE
#include "ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/common.h"
#include "fsio.h"

struct CkptWriter {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int pending;                /* a job is handed over and not finished */
    int quit;
    CkptRequest job;            /* the request in flight (its pointers: the caller's, which the
                                 * child sees as they were at the call; here only state.step) */
    /* results */
    char job_err[1024];         /* the last failed save's message */
    int job_failed;             /* the last save failed (reported by the next call) */
    int unreported;             /* a save finished and ckpt_writer_poll has not reported it */
    int job_step;               /* the step of the save in flight or last finished */
    pid_t child;                /* the process writing the save in flight (-1: it did not start) */
    int child_fd;               /* its message pipe */
    char start_err[512];        /* why it did not start */
    double started;             /* when it started */
    char first_err[1024];       /* the first failure since creation (ckpt_writer_finish) */
    int any_failed;
    double copy_s, write_s, wait_s;
};

/* The child: the save, its message to the pipe, and out without atexit handlers. */
static _Noreturn void child_save(const CkptRequest *job, int out)
{
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGUSR1, SIG_IGN);
    char err[1024] = "";
    int rc = ckpt_save(job, err, sizeof err);
    for (size_t put = 0, n = rc ? strlen(err) : 0; put < n;) {
        ssize_t k = write(out, err + put, n - put);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        put += (size_t)k;
    }
    _exit(rc ? 1 : 0);
}

/* Fork the child that runs ckpt_save(job) (see the top of this file): called on the thread
 * that asked for the save, at a quiet moment of the step loop, never on the worker, whose fork
 * could land while another thread holds an allocator lock the child then waits on forever (seen
 * with ASan's allocator: the child hung in its first malloc). *fd: the read end of the child's
 * message pipe. -1 + err when it cannot start. */
static pid_t start_child(const CkptRequest *job, int *fd, char *err, size_t errlen)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        ckpt_fail(err, errlen, "checkpoint of step %d: cannot make a pipe: %s", job->state.step, strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        ckpt_fail(err, errlen, "checkpoint of step %d: cannot start the writer process: %s", job->state.step,
                  strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        child_save(job, fds[1]);
    }
    close(fds[1]);
    *fd = fds[0];
    return pid;
}

/* Wait for the child of start_child: 0 when its save succeeded, else -1 + its message. */
static int reap_child(const CkptRequest *job, pid_t pid, int fd, char *err, size_t errlen)
{
    char msg[1024];
    size_t got = 0;
    for (;;) {
        ssize_t k = read(fd, msg + got, sizeof msg - 1 - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        got += (size_t)k;
        if (got == sizeof msg - 1) break;
    }
    msg[got] = 0;
    close(fd);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return ckpt_fail(err, errlen, "checkpoint of step %d: lost the writer process: %s", job->state.step,
                             strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && getenv("DSTRAIN_CKPT_CRASH_AT")) raise(SIGKILL);
    if (WIFEXITED(status) && got > 0) return ckpt_fail(err, errlen, "%s", msg);
    if (WIFSIGNALED(status))
        return ckpt_fail(err, errlen, "checkpoint of step %d: the writer process died of signal %d", job->state.step,
                         WTERMSIG(status));
    return ckpt_fail(err, errlen, "checkpoint of step %d: the writer process failed (status %d)", job->state.step,
                     WEXITSTATUS(status));
}

static void *worker_main(void *arg)
{
    CkptWriter *w = arg;
    pthread_mutex_lock(&w->mu);
    for (;;) {
        while (!w->pending && !w->quit) pthread_cond_wait(&w->cv, &w->mu);
        if (!w->pending) break;   /* quit with nothing left to do */
        pthread_mutex_unlock(&w->mu);
        char err[1024] = "";
        int rc = w->child < 0 ? ckpt_fail(err, sizeof err, "%s", w->start_err)
                              : reap_child(&w->job, w->child, w->child_fd, err, sizeof err);
        double dt = now_seconds() - w->started;
        pthread_mutex_lock(&w->mu);
        w->write_s = dt;
        w->job_failed = rc != 0;
        w->unreported = 1;
        if (rc) {
            snprintf(w->job_err, sizeof w->job_err, "%s", err);
            if (!w->any_failed) snprintf(w->first_err, sizeof w->first_err, "%s", err);
            w->any_failed = 1;
        }
        w->pending = 0;
        pthread_cond_broadcast(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

CkptWriter *ckpt_writer_create(void)
{
    CkptWriter *w = xcalloc(1, sizeof *w);
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) DIE("cannot start the checkpoint writer thread");
    return w;
}

/* Wait until no save is in flight; returns with the mutex held. */
static void wait_idle(CkptWriter *w)
{
    pthread_mutex_lock(&w->mu);
    while (w->pending) pthread_cond_wait(&w->cv, &w->mu);
}

/* A request the child can run (the caller's buffers are not copied: see the top). */
static int check_request(const CkptRequest *req, char *err, size_t errlen)
{
    if (!req->table || !req->params || !req->config_text || !req->run_dir)
        return ckpt_fail(err, errlen, "incomplete request (run_dir, config_text, table and params are required)");
    return 0;
}

int ckpt_save_async(CkptWriter *w, const CkptRequest *req, char *err, size_t errlen)
{
    double t0 = now_seconds();
    wait_idle(w);
    double t1 = now_seconds();
    int rc = 0;
    if (w->job_failed) {
        rc = ckpt_fail(err, errlen, "%s", w->job_err);
        w->job_failed = 0;
    }
    w->unreported = 0;
    w->job_step = req->state.step;
    char serr[512];
    if (check_request(req, serr, sizeof serr) == 0) {
        w->job = *req;
        w->started = now_seconds();
        w->child = start_child(&w->job, &w->child_fd, w->start_err, sizeof w->start_err);
        w->pending = 1;
        pthread_cond_broadcast(&w->cv);
    } else {
        rc = ckpt_fail(err, errlen, "checkpoint of step %d not saved: %s", req->state.step, serr);
        if (!w->any_failed) snprintf(w->first_err, sizeof w->first_err, "%s", err);
        w->any_failed = 1;
    }
    w->wait_s = t1 - t0;
    w->copy_s = now_seconds() - t1;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ckpt_writer_poll(CkptWriter *w, int wait, int *step, char *err, size_t errlen)
{
    if (wait) wait_idle(w);
    else pthread_mutex_lock(&w->mu);
    int rc = 0;
    if (!w->pending && w->unreported) {
        rc = w->job_failed ? ckpt_fail(err, errlen, "%s", w->job_err) : 1;
        if (step) *step = w->job_step;
        w->unreported = 0;
        w->job_failed = 0;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int ckpt_writer_finish(CkptWriter *w, char *err, size_t errlen)
{
    wait_idle(w);
    int rc = w->any_failed ? ckpt_fail(err, errlen, "%s", w->first_err) : 0;
    w->job_failed = 0;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void ckpt_writer_destroy(CkptWriter *w)
{
    if (!w) return;
    pthread_mutex_lock(&w->mu);
    w->quit = 1;   /* the worker finishes a pending save first */
    pthread_cond_broadcast(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

void ckpt_writer_times(const CkptWriter *w, double *copy_s, double *write_s)
{
    CkptWriter *m = (CkptWriter *)w;   /* the lock is not part of the logical state */
    pthread_mutex_lock(&m->mu);
    if (copy_s) *copy_s = m->copy_s;
    if (write_s) *write_s = m->write_s;
    pthread_mutex_unlock(&m->mu);
}

double ckpt_writer_wait_seconds(const CkptWriter *w)
{
    CkptWriter *m = (CkptWriter *)w;
    pthread_mutex_lock(&m->mu);
    double s = m->wait_s;
    pthread_mutex_unlock(&m->mu);
    return s;
}
