/* checkpoint/ckpt.h - training checkpoints: everything an exact continuation needs.
 *
 * On disk (DESIGN.md "Checkpoints", SPEC.md section 9): a directory <run>/ckpt-<step>/ with
 * one HDF5 file per rank (rank-00000.h5, ...), datasets named by the Hugging Face
 * DeepseekV3 parameter names, chunked and compressed with zstd (HDF5 filter id 32015, HDF5's
 * shuffle in front), attributes giving the slice of the full tensor each file holds; the
 * optimizer moments as "<name>.exp_avg" / "<name>.exp_avg_sq"; the optional EMA of the weights
 * as "<name>.ema" (manifest "ema": true); the training state as
 * attributes/datasets under "/state"; and manifest.json, written last, naming every file with
 * its size and checksum, the step, tokens seen, the resolved config, the parallel layout and
 * the format version. Formats: checkpoint/h5.h and checkpoint/manifest.h.
 *
 * Save protocol: write into ckpt-<step>.tmp/, fsync every file, (barrier across ranks),
 * write the manifest (temp + fsync + rename), rename the directory, fsync the parent. A
 * directory without a verified manifest is never taken. The slow part runs on a background
 * process over a copy-on-write view of the host buffers (checkpoint/writer.c), so training
 * continues while the bytes go to disk.
 *
 * Errors are returned, not fatal (STYLE.md): every function that can fail returns 0 on success
 * and -1 with a one-line message in err (naming the file and the step) so a failed save can
 * be reported and retried.
 *
 * Calling sequence (one rank):
 *   CkptWriter *w = ckpt_writer_create();
 *   ... every checkpoint_every steps:
 *   ckpt_save_async(w, &req, err, n);   (forks the process that writes the host buffers as
 *                                        they are now, returns; waits first for the previous save)
 *   ... each step (optional): ckpt_writer_poll(w, 0, &step, err, n)   (a finished save's result)
 *   ... at exit: ckpt_writer_finish(w, err, n) (waits, reports), ckpt_writer_destroy(w)
 *   resume: ckpt_find_latest(run_dir, dir, n, log) or a given dir; ckpt_load(dir, ...)
 *   tests and tools: ckpt_save (synchronous), ckpt_verify, ckpt_read_config
 *
 * Files of this module: ckpt.c (save protocol, retention, verify, find_latest, load),
 * writer.c (background writer), h5.c (the HDF5 file layout), zstd_filter.c (HDF5 filter
 * 32015), manifest.c (manifest.json), fsio.c / hash.c (durable files, XXH64 checksums),
 * safetensors.c / hf_export.c (Hugging Face export and import, safetensors.h), ckpt_stream.c
 * (a checkpoint read tensor by tensor, for export: ckpt_stream.h).
 *
 * Retention: after a save completes, the checkpoint just written and the newest keep-1 other
 * ckpt-<N> directories (by N) are kept, older ones deleted (renamed to ckpt-<N>.del first, so
 * an interrupted delete never leaves a half directory under a valid name); leftover
 * ckpt-*.tmp and ckpt-*.del directories are removed. keep <= 0 keeps everything. Nothing is
 * deleted before the new checkpoint is complete, so the checkpoint a run resumed from
 * survives until a newer one exists. A stale ckpt-<step>.tmp from a killed save is removed
 * when that step is saved again; an existing ckpt-<step> is replaced only after the new one
 * is complete (it is moved to ckpt-<step>.del, the new one renamed in, then it is deleted).
 *
 * Crash points, for the kill-during-save tests: when the environment variable
 * DSTRAIN_CKPT_CRASH_AT names a phase, the save raises SIGKILL on itself (exactly what
 * `kill -9` does) when it reaches that phase; DSTRAIN_CKPT_CRASH_STEP=N limits this to the
 * save of step N (unset: every save). Phases, in save order:
 *   during-tmp-files   half the tensors written to ckpt-<step>.tmp/rank-00000.h5
 *   after-tmp-files    the .h5 closed and fsynced, no manifest yet
 *   after-manifest     manifest.json written (temp + fsync + rename) inside the .tmp dir
 *   before-rename      just before ckpt-<step>.tmp is renamed to ckpt-<step>
 *   after-rename       renamed and the run directory fsynced, before retention
 * In every case the newest complete checkpoint before this save stays valid, and
 * ckpt_find_latest never takes the .tmp directory.
 *
 * Threads: HDF5 (a thread-safe build) runs on the writer thread during a background save;
 * ckpt_verify / ckpt_load may run on other threads, but not on a directory being written.
 */
#ifndef DSTRAIN_CKPT_H
#define DSTRAIN_CKPT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../model/params.h"
#include "../runtime/data.h"

/* 2: manifest files list row blocks, a tensor may be split over several rank files (format 1,
 * whole tensors in one file, is still read) */
#define CKPT_FORMAT_VERSION 2

/* Scalar training state carried by a checkpoint. A field added here must also get a row in
 * STATE_FIELDS (checkpoint/h5.c), which a static assertion on sizeof(CkptState) enforces. */
typedef struct CkptState {
    int step;                   /* optimizer steps completed */
    long long tokens;           /* tokens seen (drives LR, gamma, lambda and batch schedules) */
    DataState data;             /* train loader position */
    uint64_t rng;               /* trainer RNG state (Rng.state) */
} CkptState;

/* The parallel layout a checkpoint was written under (manifest.json "layout"). */
typedef struct CkptLayout {
    int world_size, pp, dp, ep;
} CkptLayout;

/* What one rank saves: host buffers in parameter-table order (table.total floats each). */
typedef struct CkptRequest {
    const char *run_dir;        /* the checkpoint goes to <run_dir>/ckpt-<step>/ */
    const char *config_text;    /* the resolved config (config_write output) */
    const ParamTable *table;
    const float *params;        /* FP32 master weights incl. router biases */
    const float *adam_m, *adam_v;   /* AdamW moments (FP32 values; may hold BF16-rounded values) */
    const float *ema;           /* EMA of the weights ("<name>.ema"), or NULL */
    CkptState state;
    int keep;                   /* keep the newest `keep` checkpoints, delete older ones */
    CkptLayout layout;          /* zeros mean one rank: world_size = pp = dp = ep = 1 */
    int rank;                   /* this rank (0 for ckpt_save and ckpt_save_async) */
    /* (table->n each, or NULL: every tensor whole) the rows [row_start, row_start + row_count)
     * of each tensor this rank's file holds; row_count 0: the tensor is not in the file */
    const long long *row_start, *row_count;
} CkptRequest;

/* Save synchronously: the whole protocol above, then retention. */
int ckpt_save(const CkptRequest *req, char *err, size_t errlen);

/* Multi-rank save (DESIGN.md "Checkpoints": two-phase commit), synchronous, driven by the
 * caller's collectives (runtime/ckpt_shard.h):
 *   rank 0:     ckpt_save_begin(run_dir, step)      fresh <run_dir>/ckpt-<step>.tmp/
 *   (barrier; everyone learns whether it worked)
 *   every rank: ckpt_save_rank(&req, &bytes, &sum)  rank-<rank>.h5 in it, fsynced, hashed
 *   (gather every rank's bytes, checksum and success to rank 0)
 *   rank 0:     ckpt_save_commit(&req, files, world) manifest listing every file with its
 *               tensors' row blocks, fsync, rename to ckpt-<step>, retention
 * req->layout.world_size is the job's; each rank's req names its own rank, table and blocks.
 * A rank killed anywhere in between leaves ckpt-<step>.tmp without a manifest (or unrenamed):
 * never taken, removed by the next save's retention. Crash points as above; "during-tmp-files"
 * and "after-tmp-files" fire on every rank, the others on rank 0. */
typedef struct CkptRankFile {
    int rank;
    long long bytes;
    uint64_t checksum;
    const ParamTable *table;    /* that rank's table (model/params.h params_select) */
    const long long *row_start, *row_count;     /* its blocks, as in CkptRequest */
} CkptRankFile;
int ckpt_save_begin(const char *run_dir, int step, char *err, size_t errlen);
int ckpt_save_rank(const CkptRequest *req, long long *bytes, uint64_t *checksum, char *err, size_t errlen);
int ckpt_save_commit(const CkptRequest *req, const CkptRankFile *files, int n, char *err, size_t errlen);

typedef struct CkptWriter CkptWriter;

CkptWriter *ckpt_writer_create(void);
/* Write the request's host buffers, as they are at the call, in a forked child process (its
 * copy-on-write view is the snapshot: nothing is copied, no memory is set aside for it); a
 * background thread waits for it. Waits for the previous save first; returns its error if it
 * failed (the new save is started in any case, so a transient failure is retried by the next
 * save). The caller may change its buffers as soon as this returns; while the save runs, each
 * page the caller writes is duplicated once (the child keeps the original). */
int ckpt_save_async(CkptWriter *w, const CkptRequest *req, char *err, size_t errlen);
/* The result of the last save, once: 1 when it finished and succeeded, -1 when it failed (its
 * message in err), 0 when none finished since the last report (or one is still running and
 * wait is 0). wait = 1 waits for the save in flight first. *step (may be NULL): its step.
 * A failure this reports is not reported again by ckpt_save_async. */
int ckpt_writer_poll(CkptWriter *w, int wait, int *step, char *err, size_t errlen);
/* Wait for the save in flight; 0 if it (and every earlier one) succeeded. */
int ckpt_writer_finish(CkptWriter *w, char *err, size_t errlen);
void ckpt_writer_destroy(CkptWriter *w);
/* Seconds the last save spent starting its child (the fork: stall) and writing (background).
 * write_s is that of the last save that finished (0 before any). */
void ckpt_writer_times(const CkptWriter *w, double *copy_s, double *write_s);
/* Seconds the last ckpt_save_async waited for the previous save before forking; the whole
 * stall the caller saw is this plus copy_s. */
double ckpt_writer_wait_seconds(const CkptWriter *w);

/* Check the manifest and every file's size and checksum. 0 when it verifies. */
int ckpt_verify(const char *ckpt_dir, char *err, size_t errlen);
/* The newest <run_dir>/ckpt-* that verifies, into out; each skipped one is reported on log
 * with its reason. -1 when none verifies. */
int ckpt_find_latest(const char *run_dir, char *out, size_t outlen, FILE *log);
/* The resolved config text stored in a checkpoint (caller frees). NULL + err on failure.
 * Checks the manifest (its own checksum included) but not the data files: call ckpt_verify
 * or ckpt_load for those. */
char *ckpt_read_config(const char *ckpt_dir, char *err, size_t errlen);
/* Load into host buffers sized by table (which must match the checkpoint's tensors: a name,
 * shape or count mismatch is an error naming the tensor; a rank's selection of the table,
 * params_select, reads the tensors it holds). adam_m / adam_v may be NULL.
 * state may be NULL. Verifies first (ckpt_verify), then checks the manifest's tensor list
 * against the table before the .h5 is opened; state->step and ->tokens agree with the
 * manifest. */
int ckpt_load(const char *ckpt_dir, const ParamTable *table, float *params, float *adam_m, float *adam_v,
              CkptState *state, char *err, size_t errlen);
/* The EMA of the weights ("<name>.ema", table order) into ema (table->total floats). Verifies
 * first; 1 (ema untouched) when the checkpoint holds none, 0 when loaded, -1 + err on failure. */
int ckpt_load_ema(const char *ckpt_dir, const ParamTable *table, float *ema, char *err, size_t errlen);

#endif
