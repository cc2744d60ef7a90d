/* runtime/guard.h - what keeps a training job safe from its surroundings: the stop signals,
 * the run-directory lock and the exit statuses a job ends with (DESIGN.md "Operations").
 * Not here: the decisions taken at the end of a step (runtime/train.c), the watchdog of hung
 * collectives (comm/watchdog.h).
 *
 * Exit statuses of `dstrain train` (also in `dstrain train --help` and README.md):
 *   0   TRAIN_EXIT_DONE       trained to train.steps, final checkpoint saved
 *   1   (DIE)                 bad input or environment; also a second trainer on a locked run
 *   3   TRAIN_EXIT_DIVERGED   train.max_bad_steps non-finite steps in a row
 *   4   TRAIN_EXIT_HUNG       the watchdog found an operation past train.watchdog_s
 *   5   TRAIN_EXIT_SDC        the DP replicas' weights differ (train.sdc_every check)
 *   74  TRAIN_EXIT_SAVE       train.max_failed_saves failed saves in a row, or the final (or the
 *                             stop) checkpoint could not be saved
 *   75  TRAIN_EXIT_STOPPED    stopped by SIGTERM, SIGINT or SIGUSR1 after the checkpoint of the
 *                             step in flight was saved: resumable (`--resume auto`)
 *   128+N                     a second stop signal N ended the process at once (no checkpoint)
 *
 * Signals: guard_install_signals() makes the first SIGTERM, SIGINT or SIGUSR1 only set a flag
 * (guard_stop_signal() reads it); the trainer looks at it at the end of every step, all ranks
 * agreeing by one all-reduce. A second one of these signals restores the default action and
 * re-raises it, so the process ends at once with the signal's status.
 *
 * Lock: guard_lock_run_dir holds an exclusive flock(2) on <run_dir>/lock for the life of the
 * process (the kernel drops it when the process dies, however it dies, so a stale lock of a
 * dead process is no lock), and writes "host <name> pid <pid>" into it for the message a
 * refused second trainer prints. The file is never deleted (deleting a locked file lets two
 * processes hold locks on different files of the same name).
 */
#ifndef DSTRAIN_GUARD_H
#define DSTRAIN_GUARD_H

#include <stddef.h>

enum {
    TRAIN_EXIT_DONE = 0,
    TRAIN_EXIT_DIVERGED = 3,
    TRAIN_EXIT_HUNG = 4,
    TRAIN_EXIT_SDC = 5,
    TRAIN_EXIT_SAVE = 74,
    TRAIN_EXIT_STOPPED = 75,
};

/* SIGTERM, SIGINT, SIGUSR1 -> the stop flag (first) or the default action (second). */
void guard_install_signals(void);
/* The first stop signal received (its number), or 0. Async-signal-safe to read. */
int guard_stop_signal(void);
/* "SIGTERM", "SIGINT", "SIGUSR1" or "signal N". */
const char *guard_signal_name(int sig);

/* The lock of run_dir: an open file descriptor (keep it open; guard_unlock closes it), or -1
 * with one line in err naming the holder ("... in use by host H pid P ...") or the failure. */
int guard_lock_run_dir(const char *run_dir, char *err, size_t errlen);
void guard_unlock(int fd);

#endif
