/* tests/unit/test_trace.c - the trace writer (runtime/pipeline/trace.h) in one process:
 * three "ranks" record nested spans, comm spans overlapping compute and instants on every
 * track; the merged file is read back line by line (the writer puts one event on a line) and
 * checked as tests/tools/check_trace.py does (fields, begin/end matching and time order per
 * track, one process per rank, names escaped and cut); a full trace drops events and stays
 * balanced; traced steps record only the named steps; the gather over a one-rank comm writes
 * the same bytes as the local merge; train.trace_steps parsing and its one-line reasons; misuse
 * is a BUG (forked children). A real run's file, and the gather over MPI ranks, are checked
 * by tests/cli/test_trace.sh and tests/mpi/test_mpi_trace.sh.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm/comm.h"
#include "runtime/common.h"
#include "runtime/pipeline/trace.h"
#include "tests/unit/testing.h"

static char dir[] = "/tmp/test_trace_XXXXXX";

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = xcalloc((size_t)n + 1, 1);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = 0;
    fclose(f);
    return s;
}

/* What check_lines found. */
typedef struct Scan {
    int events, meta, begins, ends, instants, problems;
    int ranks[8];               /* process_name seen per pid */
    int spans[8][TRACE_TRACKS]; /* B events per (pid, tid) */
} Scan;

/* Every event line: fields present, per-track time order, B/E matching by name. */
static Scan check_lines(const char *text)
{
    Scan s = { 0 };
    double last[8][TRACE_TRACKS];
    char stack[8][TRACE_TRACKS][TRACE_DEPTH][64];
    int depth[8][TRACE_TRACKS] = { { 0 } };
    for (int p = 0; p < 8; p++)
        for (int k = 0; k < TRACE_TRACKS; k++) last[p][k] = -1;
    for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL) {
        if (strncmp(l, "{\"name\":", 8) != 0) continue;
        char name[64] = "", ph = 0;
        double ts = -1;
        int pid = -1, tid = -1;
        const char *q;
        sscanf(l, "{\"name\":\"%63[^\"]", name);
        if ((q = strstr(l, "\"ph\":\""))) ph = q[6];
        if ((q = strstr(l, "\"ts\":"))) ts = atof(q + 5);
        if ((q = strstr(l, "\"pid\":"))) pid = atoi(q + 6);
        if ((q = strstr(l, "\"tid\":"))) tid = atoi(q + 6);
        if (pid < 0 || pid >= 8 || tid < 0 || tid >= TRACE_TRACKS || ts < 0 || !strchr("BEiM", ph ? ph : '?')) {
            s.problems++;
            continue;
        }
        if (ph == 'M') {
            s.meta++;
            if (!strcmp(name, "process_name")) s.ranks[pid] = 1;
            continue;
        }
        s.events++;
        s.problems += ts < last[pid][tid];
        last[pid][tid] = ts;
        if (ph == 'i') s.instants++;
        if (ph == 'B' && depth[pid][tid] == TRACE_DEPTH) s.problems++;
        else if (ph == 'B') {
            s.begins++;
            s.spans[pid][tid]++;
            memcpy(stack[pid][tid][depth[pid][tid]++], name, sizeof name);
        }
        if (ph == 'E') {
            s.ends++;
            s.problems += depth[pid][tid] == 0 || strcmp(stack[pid][tid][--depth[pid][tid]], name) != 0;
        }
    }
    for (int p = 0; p < 8; p++)
        for (int k = 0; k < TRACE_TRACKS; k++) s.problems += depth[p][k] != 0;
    return s;
}

static void sleep_us(long us)
{
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

/* One rank's pattern: an FB instruction whose forward dispatch spans its backward compute. */
static void record_rank(Trace *t, int r)
{
    for (int mb = 0; mb < 2; mb++) {
        trace_begin(t, TRACE_COMPUTE, "FB", mb, r % 2);
        trace_begin_phase(t, TRACE_COMPUTE, "gate", 'F', mb, 0);
        trace_begin(t, TRACE_EP_LANE_F, "dispatch", mb, 0);
        trace_end(t, TRACE_COMPUTE);
        trace_begin_phase(t, TRACE_COMPUTE, "experts", 'B', mb + 1, 1);
        trace_begin(t, TRACE_EP_LANE_B, "combine backward", mb + 1, 1);
        trace_end(t, TRACE_EP_LANE_B);
        trace_end(t, TRACE_COMPUTE);
        trace_end(t, TRACE_EP_LANE_F);
        trace_end(t, TRACE_COMPUTE);
        trace_instant(t, TRACE_PP_NEXT, "send F", mb, 0);
        trace_begin(t, TRACE_PP_PREV, "recv B", mb, 0);
        trace_end(t, TRACE_PP_PREV);
    }
}

static void test_merge(void)
{
    Trace *t[3];
    for (int r = 0; r < 3; r++) {
        t[r] = trace_create(r, 100);
        record_rank(t[r], r);
        EXPECT(trace_events(t[r]) == 2 * 13 && trace_dropped(t[r]) == 0, "rank %d: %zu events", r,
               trace_events(t[r]));
    }
    /* a name that needs escaping and one longer than TRACE_NAME_MAX - 1 bytes */
    trace_begin(t[1], TRACE_COMPUTE, "quote\" back\\slash", -1, -1);
    trace_end(t[1], TRACE_COMPUTE);
    trace_instant(t[1], TRACE_COMPUTE, "a name far longer than thirty-one bytes", -1, -1);
    /* a span measured around a sleep: nanosleep sleeps at least what it is asked (POSIX), so
     * the span is >= 2000 us; no upper bound (a loaded machine may take longer) */
    trace_begin(t[2], TRACE_COMPUTE, "sleep", -1, -1);
    sleep_us(2000);
    trace_end(t[2], TRACE_COMPUTE);

    char path[128], err[256];
    snprintf(path, sizeof path, "%s/merged.json", dir);
    EXPECT(trace_write(t, 3, path, err, sizeof err) == 0, "trace_write: %s", err);
    char *text = read_all(path);
    Scan s = text ? check_lines(text) : (Scan){ .problems = 1 };
    EXPECT(s.problems == 0 && s.begins == s.ends && s.events == 3 * 26 + 5,
           "merged file: %d problems, %d/%d B/E, %d events", s.problems, s.begins, s.ends, s.events);
    EXPECT(s.ranks[0] && s.ranks[1] && s.ranks[2] && !s.ranks[3], "one process per rank");
    int tracks = 1;
    for (int k = 0; k < TRACE_TRACKS; k++) tracks &= s.spans[0][k] + (k == TRACE_PP_NEXT) > 0;
    EXPECT(tracks, "rank 0 has spans on every track (instants on pp next)");
    EXPECT(text && strstr(text, "\"name\":\"quote\\\" back\\\\slash\""),
           "a name with a quote and a backslash is escaped");
    EXPECT(text && strstr(text, "\"name\":\"a name far longer than thirty-o\""), "a long name is cut to 31 bytes");
    EXPECT(text && strstr(text, "\"args\":{\"mb\":1,\"chunk\":1,\"phase\":\"B\"}"), "args carry mb, chunk and phase");
    EXPECT(text && strstr(text, "\"thread_name\",\"ph\":\"M\",\"ts\":0,\"pid\":2,\"tid\":2,"
                                "\"args\":{\"name\":\"ep lane B\"}"),
           "tracks are named");
    const char *b = text ? strstr(text, "\"name\":\"sleep\",\"cat\":\"compute\",\"ph\":\"B\"") : NULL;
    const char *e = b ? strstr(b, "\"name\":\"sleep\",\"cat\":\"compute\",\"ph\":\"E\"") : NULL;
    double dur = b && e ? atof(strstr(e, "\"ts\":") + 5) - atof(strstr(b, "\"ts\":") + 5) : -1;
    EXPECT(dur >= 2000, "a 2 ms sleep spans %.3f us (>= 2000)", dur);
    EXPECT(text && strstr(text, "\"dropped_events\":0}"), "no events dropped");

    /* the gather over a one-rank comm writes what the local merge of that rank writes */
    Comm *self = comm_single_create();
    char path2[128];
    snprintf(path2, sizeof path2, "%s/gathered.json", dir);
    EXPECT(trace_write(&t[0], 1, path, err, sizeof err) == 0, "trace_write rank 0: %s", err);
    EXPECT(trace_gather_write(t[0], self, path2, err, sizeof err) == 0, "trace_gather_write: %s", err);
    char *x = read_all(path), *y = read_all(path2);
    EXPECT(x && y && !strcmp(x, y), "gather over one rank == local merge");
    EXPECT(trace_write(t, 3, "/nonexistent-dir/t.json", err, sizeof err) == -1 && strstr(err, "cannot write"),
           "an unwritable path is an error: %s", err);
    free(x);
    free(y);
    free(text);
    comm_destroy(self);
    for (int r = 0; r < 3; r++) trace_free(t[r]);
}

/* A trace of 9 events: recording stops before a begin whose end would not fit. */
static void test_full(void)
{
    Trace *t = trace_create(0, 9);
    trace_begin(t, TRACE_COMPUTE, "outer", -1, -1);           /* 1 + its end held */
    for (int i = 0; i < 6; i++) {
        trace_begin(t, TRACE_EP_LANE_F, "inner", i, -1);
        trace_instant(t, TRACE_PP_NEXT, "mark", i, -1);
        trace_end(t, TRACE_EP_LANE_F);
    }
    trace_end(t, TRACE_COMPUTE);
    /* kept: outer B, two inner (B, i, E), the third's instant (7 + 1 held for outer E + 1 = 9
     * fits), outer E = 9; dropped: the third's B and E, all three of the last three = 11 */
    EXPECT(trace_events(t) == 9 && trace_dropped(t) == 11, "full trace holds %zu events, dropped %zu (want 9, 11)",
           trace_events(t), trace_dropped(t));
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/full.json", dir);
    EXPECT(trace_write(&t, 1, path, err, sizeof err) == 0, "trace_write: %s", err);
    char *text = read_all(path);
    Scan s = text ? check_lines(text) : (Scan){ .problems = 1 };
    EXPECT(s.problems == 0 && s.begins == s.ends && s.events == 9, "full trace: %d problems, %d/%d B/E", s.problems,
           s.begins, s.ends);
    char want[64];
    snprintf(want, sizeof want, "\"dropped_events\":%zu}", trace_dropped(t));
    EXPECT(text && strstr(text, want), "the file reports the dropped events (%s)", want);
    free(text);
    trace_free(t);
}

static void test_steps(void)
{
    EXPECT(trace_create_steps(0, "", 10, NULL) == NULL && trace_create_steps(0, "  ", 10, NULL) == NULL,
           "no steps, no trace");
    Comm *self = comm_single_create();
    Trace *t = trace_create_steps(0, "2,4", 8, self);
    for (int step = 1; step <= 5; step++) {
        trace_step_begin(t, step);
        trace_begin_phase(t, TRACE_COMPUTE, "forward", 'F', 0, 0);
        trace_instant(t, TRACE_PP_NEXT, "send", 0, 0);
        trace_end(t, TRACE_COMPUTE);
        trace_step_end(t);
    }
    EXPECT(trace_events(t) == 2 * 5 && trace_dropped(t) == 0, "two steps of 5 events: %zu", trace_events(t));
    trace_finish(t, dir);
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, TRACE_FILE);
    char *text = read_all(path);
    Scan s = text ? check_lines(text) : (Scan){ .problems = 1 };
    EXPECT(s.problems == 0 && s.events == 10, "steps trace: %d problems, %d events", s.problems, s.events);
    EXPECT(text && strstr(text, "\"name\":\"step 2\"") && strstr(text, "\"name\":\"step 4\"") &&
               !strstr(text, "\"step 3\"") && !strstr(text, "\"step\":3") && strstr(text, "\"step\":4,\"mb\":0"),
           "only steps 2 and 4, their events tagged with the step");
    /* NULL: every call a no-op */
    trace_begin(NULL, TRACE_COMPUTE, "x", 0, 0);
    trace_end(NULL, TRACE_COMPUTE);
    trace_instant(NULL, 0, "x", 0, 0);
    trace_step_begin(NULL, 1);
    trace_step_end(NULL);
    trace_finish(NULL, dir);
    EXPECT(trace_events(NULL) == 0, "NULL trace");
    free(text);
    trace_free(t);
    comm_destroy(self);
}

static void test_parse(void)
{
    static const struct { const char *spec; int n, steps[5]; } ok[] = {
        { "5,6", 2, { 5, 6 } }, { "3-5,9", 4, { 3, 4, 5, 9 } }, { " 7 ", 1, { 7 } }, { "", 0, { 0 } },
        { "1, 2 - 3", 3, { 1, 2, 3 } },
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        int steps[TRACE_MAX_STEPS];
        char err[256] = "";
        int n = trace_steps_parse(ok[i].spec, steps, TRACE_MAX_STEPS, err, sizeof err);
        int same = n == ok[i].n;
        for (int k = 0; same && k < n; k++) same = steps[k] == ok[i].steps[k];
        EXPECT(same, "'%s' parses to %d steps (%s)", ok[i].spec, n, err);
    }
    static const struct { const char *spec, *why; } bad[] = {
        { "0", "step 0: steps count from 1" },
        { "5,5", "steps must ascend without repeats (5 comes after 5)" },
        { "6,5", "(5 comes after 6)" },
        { "5-3", "range 5-3 runs backwards" },
        { "a", "'a' is not a step number or a range like 3-5" },
        { "5,", "'' is not a step number" },
        { ",5", "'' is not a step number" },
        { "5;6", "'5;6' is not a step number" },
        { "1-100", "names more than 64 steps" },
        { "99999999999", "step '99999999999' is too large" },
        { "-3", "'-3' is not a step number" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int steps[TRACE_MAX_STEPS];
        char err[256] = "";
        int n = trace_steps_parse(bad[i].spec, steps, TRACE_MAX_STEPS, err, sizeof err);
        EXPECT(n == -1 && strstr(err, bad[i].why) && !strchr(err, '\n'), "'%s': %d, '%s' (want '%s')", bad[i].spec, n,
               err, bad[i].why);
    }
}

enum { BAD_END, BAD_DEPTH, BAD_TRACK, BAD_OPEN };

static void misuse_child(void *arg)
{
    const int kind = *(const int *)arg;
    static Trace *t;   /* static: reachable when the BUG exits (no leak report) */
    t = trace_create(0, 100);
    char err[256], path[128];
    snprintf(path, sizeof path, "%s/misuse.json", dir);
    switch (kind) {
    case BAD_END: trace_end(t, TRACE_EP_LANE_B); break;
    case BAD_DEPTH:
        for (int i = 0; i <= TRACE_DEPTH; i++) trace_begin(t, TRACE_COMPUTE, "deep", i, 0);
        break;
    case BAD_TRACK: trace_begin(t, TRACE_TRACKS, "x", 0, 0); break;
    case BAD_OPEN:
        trace_begin(t, TRACE_COMPUTE, "open", 0, 0);
        trace_write(&t, 1, path, err, sizeof err);
        break;
    }
}

static void test_misuse(void)
{
    static const struct { int kind; const char *words; } cases[] = {
        { BAD_END, "trace: an end on track 'ep lane B' with no span open" },
        { BAD_DEPTH, "trace: more than 16 open spans on track 'compute' (at 'deep')" },
        { BAD_TRACK, "trace: track 5 is outside 0..4" },
        { BAD_OPEN, "trace: writing rank 0's trace with 1 span(s) still open" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[1024];
        int st = test_run_child(misuse_child, (void *)&cases[i].kind, err, sizeof err);
        EXPECT(st == 70 && strstr(err, cases[i].words), "misuse %zu: exit %d, '%s' (want 70, '%s')", i, st, err,
               cases[i].words);
    }
}

int main(void)
{
    if (!mkdtemp(dir)) DIE("test_trace: cannot make a temporary directory");
    test_merge();
    test_full();
    test_steps();
    test_parse();
    test_misuse();
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    EXPECT(system(cmd) == 0, "removed %s", dir);
    return test_finish();
}
