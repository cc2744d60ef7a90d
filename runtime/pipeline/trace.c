/* runtime/pipeline/trace.c - recording and writing Chrome trace-event JSON (see trace.h).
 * Reference: Google's "Trace Event Format" document (JSON object format, B/E/i/M phases).
 * Not here: what is traced (the executor, the training loop) or checking a file
 * (tests/tools/check_trace.py).
 */
#define _GNU_SOURCE
#include "runtime/pipeline/trace.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/common.h"

#define TRACE_TAG 7301          /* the gather's point-to-point tag */
#define SKIPPED SIZE_MAX        /* a stack entry whose begin came while idle */
#define DROPPED (SIZE_MAX - 1)  /* ... or found the trace full */

const char *const TRACE_TRACK_NAMES[TRACE_TRACKS] = { "compute", "ep lane F", "ep lane B", "pp prev", "pp next" };
static const char *const TRACK_KIND[TRACE_TRACKS] = { "compute", "ep", "ep", "pp", "pp" };

/* One event; plain data, sent as bytes by the gather (every rank runs the same binary). */
typedef struct TraceEvent {
    int64_t ns;                 /* CLOCK_MONOTONIC */
    int32_t mb, chunk, step;    /* < 0: not known */
    char ph;                    /* 'B', 'E' or 'i' */
    char phase;                 /* 'F', 'B', 'W' or 0 */
    uint8_t track;
    char name[TRACE_NAME_MAX];
} TraceEvent;

struct Trace {
    int rank;
    size_t cap, n, dropped;
    size_t open;                /* recorded begins not yet ended: their ends' slots are held */
    TraceEvent *ev;             /* (cap) */
    size_t stack[TRACE_TRACKS][TRACE_DEPTH];   /* event index of each open begin, SKIPPED or DROPPED */
    int depth[TRACE_TRACKS];
    int recording;              /* 0: idle (between traced steps) */
    int step, in_step;          /* the step being run (-1: none); its span is open */
    int steps[TRACE_MAX_STEPS], n_steps;
    Comm *job;                  /* trace_finish's comm (not owned) */
};

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

Trace *trace_create(int rank, size_t max_events)
{
    CHECK(max_events >= 2);
    Trace *t = xcalloc(1, sizeof *t);
    t->rank = rank;
    t->cap = max_events;
    t->ev = xcalloc(max_events, sizeof(TraceEvent));
    t->recording = 1;
    t->step = -1;
    return t;
}

void trace_free(Trace *t)
{
    if (!t) return;
    free(t->ev);
    free(t);
}

static void check_track(int track)
{
    if (track < 0 || track >= TRACE_TRACKS) BUG("trace: track %d is outside 0..%d", track, TRACE_TRACKS - 1);
}

static TraceEvent *push(Trace *t, char ph, int track, const char *name, char phase, int mb, int chunk)
{
    CHECK(name);
    TraceEvent *e = &t->ev[t->n++];
    e->ns = mono_ns();
    e->ph = ph;
    e->phase = phase;
    e->track = (uint8_t)track;
    e->mb = mb;
    e->chunk = chunk;
    e->step = t->step;
    snprintf(e->name, sizeof e->name, "%s", name);
    return e;
}

void trace_begin_phase(Trace *t, int track, const char *name, char phase, int mb, int chunk)
{
    if (!t) return;
    check_track(track);
    if (t->depth[track] == TRACE_DEPTH)
        BUG("trace: more than %d open spans on track '%s' (at '%s')", TRACE_DEPTH, TRACE_TRACK_NAMES[track], name);
    size_t at = SKIPPED;
    if (t->recording && t->n + t->open + 2 <= t->cap) {
        at = t->n;
        push(t, 'B', track, name, phase, mb, chunk);
        t->open++;
    } else if (t->recording) {
        at = DROPPED;
        t->dropped++;
    }
    t->stack[track][t->depth[track]++] = at;
}

void trace_begin(Trace *t, int track, const char *name, int mb, int chunk)
{
    trace_begin_phase(t, track, name, 0, mb, chunk);
}

void trace_end(Trace *t, int track)
{
    if (!t) return;
    check_track(track);
    if (t->depth[track] == 0) BUG("trace: an end on track '%s' with no span open", TRACE_TRACK_NAMES[track]);
    size_t at = t->stack[track][--t->depth[track]];
    if (at == SKIPPED || at == DROPPED) {
        t->dropped += at == DROPPED;
        return;
    }
    /* the begin held this slot: an end always fits */
    const TraceEvent b = t->ev[at];
    TraceEvent *e = push(t, 'E', track, b.name, b.phase, b.mb, b.chunk);
    e->step = b.step;
    t->open--;
}

void trace_instant(Trace *t, int track, const char *name, int mb, int chunk)
{
    if (!t) return;
    check_track(track);
    if (!t->recording) return;
    if (t->n + t->open + 1 <= t->cap) push(t, 'i', track, name, 0, mb, chunk);
    else t->dropped++;
}

size_t trace_events(const Trace *t) { return t ? t->n : 0; }
size_t trace_dropped(const Trace *t) { return t ? t->dropped : 0; }

/* ---- writing ---- */

/* One rank's events as the writer sees them: its own, or received by the gather. */
typedef struct View {
    int rank;
    const TraceEvent *ev;
    size_t n, dropped;
    int64_t shift;              /* ns added to express its times on the reference clock */
} View;

/* The output file and whether an event has been written (the next one needs a comma). */
typedef struct Out {
    FILE *f;
    int started;
} Out;

static FILE *next(Out *o)
{
    fputs(o->started ? ",\n" : "\n", o->f);
    o->started = 1;
    return o->f;
}

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void put_meta(Out *o, const char *what, int pid, int tid, const char *key, const char *name, int num)
{
    FILE *f = next(o);
    fprintf(f, "{\"name\":\"%s\",\"ph\":\"M\",\"ts\":0,\"pid\":%d,\"tid\":%d,\"args\":{\"%s\":", what, pid, tid, key);
    if (name) put_string(f, name);
    else fprintf(f, "%d", num);
    fputs("}}", f);
}

/* Metadata of one rank: its process and the tracks it used (compute always). */
static void put_rank_meta(Out *o, const View *v)
{
    char name[32];
    snprintf(name, sizeof name, "rank %d", v->rank);
    put_meta(o, "process_name", v->rank, 0, "name", name, 0);
    put_meta(o, "process_sort_index", v->rank, 0, "sort_index", NULL, v->rank);
    int used[TRACE_TRACKS] = { 1 };
    for (size_t i = 0; i < v->n; i++) used[v->ev[i].track] = 1;
    for (int k = 0; k < TRACE_TRACKS; k++) {
        if (!used[k]) continue;
        put_meta(o, "thread_name", v->rank, k, "name", TRACE_TRACK_NAMES[k], 0);
        put_meta(o, "thread_sort_index", v->rank, k, "sort_index", NULL, k);
    }
}

static void put_event(Out *o, const View *v, const TraceEvent *e, int64_t t0)
{
    CHECK(e->track < TRACE_TRACKS);
    FILE *f = next(o);
    fputs("{\"name\":", f);
    put_string(f, e->name);
    fprintf(f, ",\"cat\":\"%s\",\"ph\":\"%c\",\"ts\":%.3f,\"pid\":%d,\"tid\":%d", TRACK_KIND[e->track], e->ph,
            (double)(e->ns + v->shift - t0) / 1e3, v->rank, e->track);
    if (e->ph == 'i') fputs(",\"s\":\"t\"", f);
    if (e->ph != 'E') {
        fputs(",\"args\":{", f);
        const char *sep = "";
        if (e->step >= 0) fprintf(f, "%s\"step\":%d", sep, e->step), sep = ",";
        if (e->mb >= 0) fprintf(f, "%s\"mb\":%d", sep, e->mb), sep = ",";
        if (e->chunk >= 0) fprintf(f, "%s\"chunk\":%d", sep, e->chunk), sep = ",";
        if (e->phase) fprintf(f, "%s\"phase\":\"%c\"", sep, e->phase);
        fputc('}', f);
    }
    fputc('}', f);
}

/* The file from n views, through a temporary file renamed over path; rtt: the clock
 * alignment's worst round trip (ns; its error is at most half of it). */
static int write_views(const View *v, int n, int64_t rtt, const char *path, char *err, size_t errlen)
{
    int64_t t0 = INT64_MAX;
    size_t dropped = 0;
    for (int r = 0; r < n; r++) {
        if (v[r].n && v[r].ev[0].ns + v[r].shift < t0) t0 = v[r].ev[0].ns + v[r].shift;
        dropped += v[r].dropped;
    }
    if (t0 == INT64_MAX) t0 = 0;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, errlen, "trace: path '%s' is too long", path);
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        snprintf(err, errlen, "trace: cannot write '%s': %s", tmp, strerror(errno));
        return -1;
    }
    Out o = { f, 0 };
    fputs("{\"traceEvents\":[", f);
    for (int r = 0; r < n; r++) put_rank_meta(&o, &v[r]);
    for (int r = 0; r < n; r++)
        for (size_t i = 0; i < v[r].n; i++) put_event(&o, &v[r], &v[r].ev[i], t0);
    fprintf(f, "\n],\n\"displayTimeUnit\":\"ms\",\"otherData\":{\"ranks\":%d,\"clock_sync_rtt_us\":%.3f,"
               "\"dropped_events\":%zu}}\n", n, (double)rtt / 1e3, dropped);
    int bad = fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        snprintf(err, errlen, "trace: cannot write '%s': %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    if (dropped)
        fprintf(stderr, "dstrain: trace: %zu events dropped (a trace's event buffer was full); '%s' holds the rest\n",
                dropped, path);
    return 0;
}

static void check_closed(const Trace *t)
{
    if (t->open) BUG("trace: writing rank %d's trace with %zu span(s) still open", t->rank, t->open);
}

int trace_write(Trace *const *per_rank, int n, const char *path, char *err, size_t errlen)
{
    View *v = xcalloc((size_t)(n > 0 ? n : 1), sizeof(View));
    for (int r = 0; r < n; r++) {
        check_closed(per_rank[r]);
        v[r] = (View){ per_rank[r]->rank, per_rank[r]->ev, per_rank[r]->n, per_rank[r]->dropped, 0 };
    }
    int rc = write_views(v, n, 0, path, err, errlen);
    free(v);
    return rc;
}

/* shift[r] (ns to add to rank r's stamps to put them on rank 0's clock) and rtt[r], on rank 0,
 * by ping-pong: rank 0 sends at a, rank r stamps b and answers, rank 0 receives at z; b then
 * happened at (a + z) / 2 on rank 0's clock within (z - a) / 2, so the round trip with the
 * least time of TRACE_SYNC_ROUNDS gives the shift and bounds its error by rtt / 2. */
static void clock_shifts(Comm *c, int64_t *shift, int64_t *rtt)
{
    enum { TRACE_SYNC_ROUNDS = 8 };
    for (int r = 1; r < c->size; r++) {
        if (c->rank != 0 && c->rank != r) continue;
        rtt[r] = INT64_MAX;
        for (int k = 0; k < TRACE_SYNC_ROUNDS; k++) {
            int64_t a, b, z;
            if (c->rank == r) {
                comm_recv(c, &a, 1, COMM_I64, 0, TRACE_TAG);
                b = mono_ns();
                comm_send(c, &b, 1, COMM_I64, 0, TRACE_TAG);
                continue;
            }
            a = mono_ns();
            comm_send(c, &a, 1, COMM_I64, r, TRACE_TAG);
            comm_recv(c, &b, 1, COMM_I64, r, TRACE_TAG);
            z = mono_ns();
            if (z - a < rtt[r]) {
                rtt[r] = z - a;
                shift[r] = a + (z - a) / 2 - b;
            }
        }
    }
}

int trace_gather_write(Trace *t, Comm *c, const char *path, char *err, size_t errlen)
{
    CHECK(t);
    check_closed(t);
    const int P = c->size;
    int64_t *shift = xcalloc((size_t)P, sizeof(int64_t)), *rtt = xcalloc((size_t)P, sizeof(int64_t));
    clock_shifts(c, shift, rtt);
    int64_t mine[3] = { (int64_t)t->n, (int64_t)t->dropped, t->rank };
    int64_t *all = xcalloc((size_t)3 * P, sizeof(int64_t));   /* (P, 3) */
    comm_allgather(c, all, mine, 3, COMM_I64);
    int rc = 0;
    if (c->rank != 0) {
        if (t->n) comm_send(c, t->ev, t->n * sizeof(TraceEvent), COMM_BYTE, 0, TRACE_TAG);
    } else {
        View *v = xcalloc((size_t)P, sizeof(View));
        int64_t worst = 0;
        for (int r = 0; r < P; r++) {
            const int64_t *a = all + 3 * r;
            TraceEvent *ev = r == 0 ? t->ev : xcalloc(a[0] ? (size_t)a[0] : 1, sizeof(TraceEvent));
            if (r > 0 && a[0]) comm_recv(c, ev, (size_t)a[0] * sizeof(TraceEvent), COMM_BYTE, r, TRACE_TAG);
            v[r] = (View){ (int)a[2], ev, (size_t)a[0], (size_t)a[1], shift[r] };
            if (rtt[r] > worst) worst = rtt[r];
        }
        rc = write_views(v, P, worst, path, err, errlen);
        for (int r = 1; r < P; r++) free((void *)v[r].ev);
        free(v);
    }
    free(all);
    free(shift);
    free(rtt);
    return rc;
}

/* ---- traced steps ---- */

/* One number of a spec at *p (digits only); -1 with err when there is none or it is too big. */
static long parse_number(const char **p, char *err, size_t errlen, const char *item)
{
    const char *s = *p;
    while (*s == ' ') s++;
    if (*s < '0' || *s > '9') {
        snprintf(err, errlen, "'%s' is not a step number or a range like 3-5", item);
        return -1;
    }
    long v = 0;
    for (; *s >= '0' && *s <= '9'; s++) {
        v = v * 10 + (*s - '0');
        if (v > INT_MAX) {
            snprintf(err, errlen, "step '%s' is too large", item);
            return -1;
        }
    }
    while (*s == ' ') s++;
    *p = s;
    return v;
}

/* One item "N" or "A-B" into lo, hi; 0, or -1 with err. */
static int parse_item(const char *item, long *lo, long *hi, char *err, size_t errlen)
{
    const char *p = item;
    if ((*lo = parse_number(&p, err, errlen, item)) < 0) return -1;
    *hi = *lo;
    if (*p == '-') {
        p++;
        if ((*hi = parse_number(&p, err, errlen, item)) < 0) return -1;
    }
    if (*p) {
        snprintf(err, errlen, "'%s' is not a step number or a range like 3-5", item);
        return -1;
    }
    if (*lo < 1) {
        snprintf(err, errlen, "step %ld: steps count from 1", *lo);
        return -1;
    }
    if (*hi < *lo) {
        snprintf(err, errlen, "range %ld-%ld runs backwards", *lo, *hi);
        return -1;
    }
    return 0;
}

int trace_steps_parse(const char *spec, int *steps, int cap, char *err, size_t errlen)
{
    int n = 0;
    const char *s = spec;
    while (*s == ' ') s++;
    if (!*s) return 0;
    for (;;) {
        char item[64];
        size_t len = strcspn(s, ",");
        snprintf(item, sizeof item, "%.*s", (int)(len < sizeof item ? len : sizeof item - 1), s);
        long lo, hi;
        if (parse_item(item, &lo, &hi, err, errlen) != 0) return -1;
        for (long k = lo; k <= hi; k++) {
            if (n > 0 && k <= steps[n - 1]) {
                snprintf(err, errlen, "steps must ascend without repeats (%ld comes after %d)", k, steps[n - 1]);
                return -1;
            }
            if (n == cap) {
                snprintf(err, errlen, "names more than %d steps", cap);
                return -1;
            }
            steps[n++] = (int)k;
        }
        if (!s[len]) return n;
        s += len + 1;
    }
}

Trace *trace_create_steps(int rank, const char *spec, size_t events_per_step, Comm *job)
{
    int steps[TRACE_MAX_STEPS];
    char err[256];
    int n = trace_steps_parse(spec, steps, TRACE_MAX_STEPS, err, sizeof err);
    if (n < 0) DIE("config: 'train.trace_steps' = \"%s\": %s", spec, err);
    if (n == 0) return NULL;
    size_t cap = (size_t)n * events_per_step;
    Trace *t = trace_create(rank, cap < 2 ? 2 : cap);
    memcpy(t->steps, steps, (size_t)n * sizeof(int));
    t->n_steps = n;
    t->recording = 0;
    t->job = job;
    return t;
}

void trace_step_begin(Trace *t, int step)
{
    if (!t) return;
    CHECK(!t->in_step);
    t->step = step;
    int named = 0;
    for (int i = 0; i < t->n_steps && !named; i++) named = t->steps[i] == step;
    if (!named) return;
    char name[32];
    snprintf(name, sizeof name, "step %d", step);
    t->recording = 1;
    t->in_step = 1;
    trace_begin(t, TRACE_COMPUTE, name, -1, -1);
}

void trace_step_end(Trace *t)
{
    if (!t) return;
    if (t->in_step) trace_end(t, TRACE_COMPUTE);
    t->in_step = 0;
    t->recording = 0;
    t->step = -1;
}

void trace_finish(Trace *t, const char *run_dir)
{
    if (!t) return;
    CHECK(t->job);
    char path[4096], err[512];
    if (snprintf(path, sizeof path, "%s/%s", run_dir, TRACE_FILE) >= (int)sizeof path)
        DIE("trace: run directory path '%s' is too long", run_dir);
    if (trace_gather_write(t, t->job, path, err, sizeof err) != 0) DIE("%s", err);
    if (t->job->rank == 0) printf("trace: wrote %s (steps %d..%d)\n", path, t->steps[0], t->steps[t->n_steps - 1]);
}
