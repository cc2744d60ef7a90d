/* comm/watchdog.c - the hang watchdog (watchdog.h). Not here: what is watched (comm.c,
 * runtime/train.c mark it). */
#define _GNU_SOURCE
#include "watchdog.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/common.h"

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int running, quit;
    double limit_s;
    int rank;
    int step;                   /* the step in flight, or the last one begun */
    double step_since;          /* < 0: no step in flight */
    const char *op;
    double op_since;            /* < 0: no operation in flight */
} wd = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, -1, NULL, -1 };

static _Noreturn void fire(const char *what, int step, double limit)
{
    char line[256];
    int n = snprintf(line, sizeof line,
                     "[rank %d] dstrain: watchdog: '%s' did not finish within %g s (step %d); ending the job\n",
                     wd.rank, what, limit, step);
    ssize_t put = write(STDERR_FILENO, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
    (void)put;
    _exit(WATCHDOG_EXIT);
}

static void *watch(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&wd.mu);
    while (!wd.quit) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 500000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&wd.cv, &wd.mu, &until);
        double now = now_seconds();
        /* the operation first: it says more than "step" */
        if (wd.op_since >= 0 && now - wd.op_since > wd.limit_s) fire(wd.op, wd.step, wd.limit_s);
        if (wd.step_since >= 0 && now - wd.step_since > wd.limit_s) fire("step", wd.step, wd.limit_s);
    }
    pthread_mutex_unlock(&wd.mu);
    return NULL;
}

void watchdog_start(double limit_s, int rank)
{
    if (limit_s <= 0 || wd.running) return;
    wd.limit_s = limit_s;
    wd.rank = rank;
    wd.quit = 0;
    if (pthread_create(&wd.thread, NULL, watch, NULL) != 0) DIE("cannot start the watchdog thread");
    wd.running = 1;
}

void watchdog_stop(void)
{
    if (!wd.running) return;
    pthread_mutex_lock(&wd.mu);
    wd.quit = 1;
    pthread_cond_broadcast(&wd.cv);
    pthread_mutex_unlock(&wd.mu);
    pthread_join(wd.thread, NULL);
    wd.running = 0;
    wd.step_since = wd.op_since = -1;
}

static void mark(double *since, int on, const char *op, int step)
{
    if (!wd.running) return;
    pthread_mutex_lock(&wd.mu);
    *since = on ? now_seconds() : -1;
    if (op) wd.op = op;
    if (step >= 0) wd.step = step;
    pthread_mutex_unlock(&wd.mu);
}

void watchdog_step_begin(int step) { mark(&wd.step_since, 1, NULL, step); }
void watchdog_step_end(void) { mark(&wd.step_since, 0, NULL, -1); }
void watchdog_op_begin(const char *op) { mark(&wd.op_since, 1, op, -1); }
void watchdog_op_end(void) { mark(&wd.op_since, 0, NULL, -1); }
