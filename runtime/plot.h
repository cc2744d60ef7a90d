/* runtime/plot.h - a run's curves as one SVG file, written directly (no plotting library),
 * from <run>/metrics.jsonl (the records of runtime/metrics.h).
 *
 * Four panels over the step axis: losses (main cross-entropy, each MTP module's, validation
 * main and MTP, and the synthetic source's loss floor when the run recorded one; log y axis),
 * learning rate (linear), gradient norm before clipping (log), MaxVio (mean and max over MoE
 * layers; linear). Each curve is an SVG <polyline> with id "series-<key>" (keys: loss,
 * mtp_loss_<k> (k from 1), val_loss, val_mtp_loss_<k>, loss_floor, lr, grad_norm, maxvio,
 * maxvio_max) and a legend entry. Non-finite values (null in the JSON) leave a point out. After
 * a resume the file may hold steps again that were already logged: a record whose step is not
 * past the series' last point replaces the points from that step on. Series longer than
 * PLOT_MAX_POINTS are drawn as that many bucket means (the SVG stays small however long the run).
 *
 * Calling sequence:
 *   plot_run(run_dir, NULL, err, sizeof err)      writes <run_dir>/loss.svg (or out)
 *   plot_refresh(run_dir)                         the same from the training loop: a failure is
 *                                                 one line on stderr, never fatal
 */
#ifndef DSTRAIN_PLOT_H
#define DSTRAIN_PLOT_H

#include <stddef.h>

#define PLOT_MAX_POINTS 1000

/* Reads <run_dir>/metrics.jsonl and writes the SVG to out (NULL: <run_dir>/loss.svg) through
 * a temporary file and a rename, so a reader never sees half a picture. 0 on success; -1 with
 * err naming the file (and line) otherwise. */
int plot_run(const char *run_dir, const char *out, char *err, size_t errlen);

/* plot_run(run_dir, NULL, ...) with any error printed as one "plot: ..." line on stderr. */
void plot_refresh(const char *run_dir);

#endif
