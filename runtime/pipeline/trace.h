/* runtime/pipeline/trace.h - a timeline of what each rank did, written as Chrome trace-event
 * JSON (`trace.json`, opened by Perfetto's UI or chrome://tracing) so a user sees the
 * schedule, the overlap of communication with compute, and where the bubbles are.
 *
 * What it is: per rank, a preallocated array of events (nothing is allocated while
 * recording), each a begin, an end or an instant on a track, stamped from CLOCK_MONOTONIC;
 * a writer that merges several ranks' traces into one file (one process, e.g. the in-process
 * pipeline test) or gathers them over a comm to rank 0 (comm/comm.h; the MPI job). What it is
 * not: a profiler (no sampling, no GPU timestamps: on a GPU, spans measure the host's view), nor
 * a metrics log (runtime/metrics.c).
 *
 * The file (the "JSON Object Format" of Google's Trace Event Format document):
 *   {"traceEvents": [ ... ], "displayTimeUnit": "ms",
 *    "otherData": {"ranks": R, "clock_sync_rtt_us": X, "dropped_events": N}}
 *   - one process per rank: pid = rank, named "rank R" by a "process_name" metadata event;
 *   - one thread per track: tid = the TraceTrack number, named by "thread_name" (TRACK_NAMES);
 *   - spans are "B"/"E" pairs; instants are "i" with "s": "t"; "ts" is in microseconds from
 *     the job's earliest event; "args" hold "mb" (micro-batch), "chunk", "phase" ("F", "B",
 *     "W") and "step" where they are known, "cat" the track's kind (compute, ep, pp).
 * On every track of a rank the events are in time order and the spans nest (a stack per
 * track), so begin/end pairs match; tests/tools/check_trace.py checks all of this.
 *
 * Times of several processes: each rank stamps with its own monotonic clock. The gather puts
 * them on rank 0's clock: rank 0 ping-pongs each rank a few times, and the round trip with the
 * least time gives that rank's offset within half of it (otherData.clock_sync_rtt_us: the
 * worst such round trip). Traces merged in one process share the clock and are not shifted.
 *
 * Capacity: max_events is fixed at creation. A begin is recorded only if its end will fit too,
 * so a full trace stays balanced: later events are dropped and counted (dropped_events in the
 * file, and a line on stderr from the writer), never a crash in the step. Names longer than
 * TRACE_NAME_MAX - 1 bytes are cut.
 *
 * Calling sequence (an executor; t may be NULL everywhere: every call is then a no-op):
 *   Trace *t = trace_create(rank, max_events);                      once, at plan time
 *   trace_begin(t, TRACE_COMPUTE, "FB", mb, chunk);                  an instruction
 *     trace_begin_phase(t, TRACE_COMPUTE, "gate", 'F', mb, chunk);    one of its phases
 *       trace_begin(t, TRACE_EP_LANE_F, "dispatch", mb, chunk);       right before ep_dispatch_post
 *     trace_end(t, TRACE_COMPUTE);                                    the phase
 *     ... other phases; the comm span ends right after ep_dispatch_wait:
 *       trace_end(t, TRACE_EP_LANE_F);
 *   trace_end(t, TRACE_COMPUTE);                                      the instruction
 *   trace_instant(t, TRACE_PP_NEXT, "send F", mb, chunk);            a SEND (posted, never waits)
 *   trace_begin(t, TRACE_PP_PREV, "recv F", mb, chunk); ...wait...; trace_end(t, TRACE_PP_PREV);
 *   trace_write(traces, n, "trace.json", err, sizeof err);          in-process: n traces, pid = their rank
 *   trace_gather_write(t, comm, "trace.json", err, sizeof err);     or collective over comm; rank 0 writes
 *   trace_free(t);
 * Spans on one track must nest: two transfers in flight on one link are two instants (post)
 * and spans only around the time a rank actually waits. An end without a begin, or more than
 * TRACE_DEPTH open spans on a track, is a BUG.
 *
 * Traced steps (the trainer; `train.trace_steps`, e.g. "5,6" or "3-5,9": step numbers as the
 * console prints them, 1 = the first step of the run):
 *   Trace *t = trace_create_steps(rank, cfg.train.trace_steps, events_per_step, job_comm);
 *                                                       NULL when the key is empty
 *   per step k:  trace_step_begin(t, k);   records (and a span "step k") only if k is named
 *                ... trace_begin/trace_end inside the step ...
 *                trace_step_end(t);
 *   at the end:  trace_finish(t, run_dir);  collective over job_comm: <run_dir>/trace.json
 */
#ifndef DSTRAIN_TRACE_H
#define DSTRAIN_TRACE_H

#include <stddef.h>
#include <stdint.h>

#include "comm/comm.h"

typedef enum {
    TRACE_COMPUTE = 0,          /* instructions, phases, the optimizer: what the rank computes */
    TRACE_EP_LANE_F,            /* EP exchanges on dispatch lane EP_LANE_F (comm/dispatch.h) */
    TRACE_EP_LANE_B,            /* ... on lane EP_LANE_B */
    TRACE_PP_PREV,              /* pipeline link to the previous stage's rank (comm/p2p.c) */
    TRACE_PP_NEXT,              /* ... to the next stage's rank */
    TRACE_TRACKS
} TraceTrack;

#define TRACE_NAME_MAX 32       /* bytes of a stored name, with its terminator */
#define TRACE_DEPTH 16          /* open spans per track */
#define TRACE_MAX_STEPS 64      /* steps train.trace_steps may name */
#define TRACE_FILE "trace.json"

typedef struct Trace Trace;

/* Track names as written ("compute", "ep lane F", ...), and kinds ("compute", "ep", "pp"). */
extern const char *const TRACE_TRACK_NAMES[TRACE_TRACKS];

/* A trace of `rank` holding up to max_events events (>= 2), recording from the start. */
Trace *trace_create(int rank, size_t max_events);
void trace_free(Trace *t);      /* NULL is fine */

/* A span on track; mb, chunk < 0: not known (left out of args). */
void trace_begin(Trace *t, int track, const char *name, int mb, int chunk);
/* The same with the phase kind ('F', 'B' or 'W') in its args. */
void trace_begin_phase(Trace *t, int track, const char *name, char phase, int mb, int chunk);
/* Ends the innermost open span of track. */
void trace_end(Trace *t, int track);
/* A point in time on track. */
void trace_instant(Trace *t, int track, const char *name, int mb, int chunk);

/* Events recorded and dropped so far. */
size_t trace_events(const Trace *t);
size_t trace_dropped(const Trace *t);

/* One file from n traces of one process (pid = each trace's rank): 0, or -1 with the reason
 * in err. Written to a temporary file and renamed, so a reader never sees half a file. */
int trace_write(Trace *const *per_rank, int n, const char *path, char *err, size_t errlen);
/* Collective over c: every rank's trace (t may not be NULL) to rank 0 of c, which writes the
 * file; returns 0 or -1 with err on rank 0, 0 elsewhere. */
int trace_gather_write(Trace *t, Comm *c, const char *path, char *err, size_t errlen);

/* "5,6", "3-5,9": steps (1-based, ascending, distinct) into steps (cap); returns how many,
 * 0 for an empty spec, or -1 with a one-line reason in err. */
int trace_steps_parse(const char *spec, int *steps, int cap, char *err, size_t errlen);
/* NULL when spec names no step; else a trace of max(2, n_steps * events_per_step) events,
 * idle until trace_step_begin names one of the steps, and job (kept, not owned) for
 * trace_finish. DIE on a bad spec (config_validate has checked it already). */
Trace *trace_create_steps(int rank, const char *spec, size_t events_per_step, Comm *job);
void trace_step_begin(Trace *t, int step);
void trace_step_end(Trace *t);
/* Collective over the job comm: <run_dir>/trace.json (DIE if rank 0 cannot write it). */
void trace_finish(Trace *t, const char *run_dir);

#endif
