/* comm/watchdog.h - ends a job whose step, collective or transfer hangs (DESIGN.md
 * "Operations": a rank stopped, a peer lost without its process dying, a wedged network).
 *
 * A background thread looks twice a second at what this process is waiting for: the step in
 * flight (train.c marks it), and inside it the collective or transfer in flight (comm.c marks
 * every blocking collective and comm_wait; train.c the host<->device transfers). When either
 * has run longer than the limit, it prints one line
 *   [rank R] dstrain: watchdog: 'allreduce' did not finish within 10 s (step 37); ending the job
 * (the rank, the operation, the step) and ends the process at once with status 4 (_exit: a hung peer may hold locks an orderly exit
 * would wait on). Under mpirun, a rank that exits without MPI_Finalize makes mpirun end every
 * other rank, so the whole job ends within the limit plus the thread's half-second look and
 * the launcher's teardown.
 *
 * Not here: which operations exist (comm.h), what the job does at a normal stop (train.c).
 *
 * Calling sequence (one process):
 *   watchdog_start(limit_s, rank);        limit_s <= 0: off, every other call does nothing
 *   per step: watchdog_step_begin(step) ... watchdog_step_end()
 *   around an operation: watchdog_op_begin("allreduce") ... watchdog_op_end()   (no nesting)
 *   watchdog_stop();                       before exit
 */
#ifndef DSTRAIN_WATCHDOG_H
#define DSTRAIN_WATCHDOG_H

#define WATCHDOG_EXIT 4     /* the status of a job the watchdog ended (TRAIN_EXIT_HUNG) */

void watchdog_start(double limit_s, int rank);
void watchdog_stop(void);
void watchdog_step_begin(int step);
void watchdog_step_end(void);
/* op: a string literal (kept by pointer) */
void watchdog_op_begin(const char *op);
void watchdog_op_end(void);

#endif
