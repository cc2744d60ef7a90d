/* runtime/metrics.c - console lines, metrics.jsonl (jansson) and log.txt.
 * Not here: how figures are computed (runtime/train.c). */
#include "metrics.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../checkpoint/fsio.h"
#include "common.h"

struct Metrics {
    FILE *jsonl, *log;
};

/* Keep the lines of text that are whole JSON records with no "step" past `step`; *dropped
 * counts the others. Returns the kept text (caller frees). */
static char *keep_records(char *text, int step, int *dropped)
{
    size_t len = strlen(text), used = 0;
    char *out = xmalloc(len + 1);
    *dropped = 0;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        size_t n = end ? (size_t)(end - line) : strlen(line);
        json_t *r = end ? json_loadb(line, n, 0, NULL) : NULL;   /* no newline: a torn last line */
        json_t *st = r ? json_object_get(r, "step") : NULL;
        if (r && (!json_is_integer(st) || json_integer_value(st) <= step)) {
            memcpy(out + used, line, n + 1);
            used += n + 1;
        } else if (n > 0) {
            (*dropped)++;
        }
        json_decref(r);
        line += n + (end != NULL);
    }
    out[used] = 0;
    return out;
}

/* metrics.jsonl without the records past `step` (a resume redoes those steps), rewritten
 * atomically (temp file, fsync, rename) when anything goes. */
static void truncate_history(const char *path, int step)
{
    char err[1024];
    if (access(path, F_OK) != 0) return;
    char *text = fsio_read_file(path, (size_t)1 << 34, NULL, err, sizeof err);
    if (!text) DIE("metrics: %s", err);
    int dropped;
    char *kept = keep_records(text, step, &dropped);
    if (dropped > 0) {
        if (fsio_write_durable(path, kept, strlen(kept), err, sizeof err) != 0) DIE("metrics: %s", err);
        printf("metrics: dropped %d record%s past step %d from '%s' (those steps are run again)\n", dropped,
               dropped == 1 ? "" : "s", step, path);
    }
    free(kept);
    free(text);
}

Metrics *metrics_open(const char *run_dir, int step)
{
    Metrics *m = xcalloc(1, sizeof *m);
    char *p = xasprintf("%s/metrics.jsonl", run_dir);
    truncate_history(p, step);
    m->jsonl = fopen(p, "a");
    if (!m->jsonl) DIE("cannot open '%s': %s", p, strerror(errno));
    free(p);
    p = xasprintf("%s/log.txt", run_dir);
    m->log = fopen(p, "a");
    if (!m->log) DIE("cannot open '%s': %s", p, strerror(errno));
    free(p);
    return m;
}

void metrics_close(Metrics *m)
{
    if (!m) return;
    fclose(m->jsonl);
    fclose(m->log);
    free(m);
}

void metrics_log(Metrics *m, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    va_start(ap, fmt);
    vfprintf(m->log, fmt, ap);
    va_end(ap);
    fflush(stdout);
    fflush(m->log);
}

static void emit(Metrics *m, json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (!s) DIE("metrics: cannot encode a record");
    fprintf(m->jsonl, "%s\n", s);
    fflush(m->jsonl);
    free(s);
    json_decref(o);
}

/* JSON has no NaN/Inf: such values are written as null. Reals carry 17 significant digits,
 * so a logged loss reads back to the same double (the resume tests compare them bit for bit). */
static json_t *num(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static json_t *mtp_array(int n, const double *mtp)
{
    json_t *a = json_array();
    for (int k = 0; k < n; k++) json_array_append_new(a, num(mtp[k]));
    return a;
}

static void format_eta(char *buf, size_t n, double s)
{
    if (!(s >= 0) || s > 1e8) { snprintf(buf, n, "?"); return; }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    else snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
}

void metrics_start(Metrics *m, double params, double active_params, double flops_per_token,
                   double tokens_per_step, double peak_flops)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("start"));
    json_object_set_new(o, "params", num(params));
    json_object_set_new(o, "active_params", num(active_params));
    json_object_set_new(o, "flops_per_token", num(flops_per_token));
    json_object_set_new(o, "tokens_per_step", num(tokens_per_step));
    json_object_set_new(o, "peak_flops", num(peak_flops));
    emit(m, o);
}

void metrics_step(Metrics *m, const StepMetrics *s)
{
    char eta[32], mtp[64] = "", nodes[32] = "";
    format_eta(eta, sizeof eta, s->eta_s);
    if (s->n_mtp > 0) {
        double avg = 0;
        for (int k = 0; k < s->n_mtp; k++) avg += s->mtp[k] / s->n_mtp;
        snprintf(mtp, sizeof mtp, " | mtp %.4f", avg);
    }
    if (s->max_nodes > 0) snprintf(nodes, sizeof nodes, " | nodes %d", s->max_nodes);
    metrics_log(m, "step %5d/%d | loss %.4f%s | lr %.2e | gnorm %.3f | %.0f tok/s | MFU %.1f%% | "
                   "maxvio %.3f%s | %.3f s/step | ETA %s%s\n",
                s->step, s->steps, s->loss, mtp, s->lr, s->grad_norm, s->tokens_per_s, 100.0 * s->mfu,
                s->maxvio, nodes, s->step_s, eta, s->skipped ? " | SKIPPED (not finite)" : "");
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("step"));
    json_object_set_new(o, "step", json_integer(s->step));
    json_object_set_new(o, "steps", json_integer(s->steps));
    json_object_set_new(o, "tokens", json_integer(s->tokens));
    json_object_set_new(o, "loss", num(s->loss));
    json_object_set_new(o, "mtp_loss", mtp_array(s->n_mtp, s->mtp));
    json_object_set_new(o, "balance_loss", num(s->balance));
    json_object_set_new(o, "lr", num(s->lr));
    json_object_set_new(o, "grad_norm", num(s->grad_norm));
    json_object_set_new(o, "tokens_per_s", num(s->tokens_per_s));
    json_object_set_new(o, "mfu", num(s->mfu));
    json_object_set_new(o, "maxvio", num(s->maxvio));
    json_object_set_new(o, "maxvio_max", num(s->maxvio_max));
    json_object_set_new(o, "max_nodes", json_integer(s->max_nodes));
    json_object_set_new(o, "step_s", num(s->step_s));
    json_object_set_new(o, "eta_s", num(s->eta_s));
    json_object_set_new(o, "skipped", json_boolean(s->skipped));
    emit(m, o);
}

void metrics_val(Metrics *m, int step, double loss, int n_mtp, const double *mtp)
{
    metrics_log(m, "val  %5d | loss %.4f\n", step, loss);
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("val"));
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "val_loss", num(loss));
    json_object_set_new(o, "val_mtp_loss", mtp_array(n_mtp, mtp));
    emit(m, o);
}

void metrics_final(Metrics *m, int step, double val_loss, double entropy_rate, double loss_floor,
                   double unigram_entropy)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string("final"));
    json_object_set_new(o, "step", json_integer(step));
    json_object_set_new(o, "val_loss", num(val_loss));
    if (entropy_rate >= 0) {
        double ratio = val_loss / loss_floor;
        metrics_log(m, "final validation loss %.4f nats | source entropy rate %.4f nats "
                       "(%.4f over a window, counting its first positions) | unigram entropy %.4f nats "
                       "| val / floor = %.3f\n",
                    val_loss, entropy_rate, loss_floor, unigram_entropy, ratio);
        json_object_set_new(o, "entropy_rate", num(entropy_rate));
        json_object_set_new(o, "loss_floor", num(loss_floor));
        json_object_set_new(o, "unigram_entropy", num(unigram_entropy));
        json_object_set_new(o, "val_over_floor", num(ratio));
    } else {
        metrics_log(m, "final validation loss %.4f nats\n", val_loss);
    }
    emit(m, o);
}
