/* runtime/plot.c - `dstrain plot` and loss.svg: metrics.jsonl (jansson) to an SVG of four
 * panels, written by hand (plot.h). Not here: any statistics beyond bucket means, or reading
 * anything but the metrics file.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "runtime/commands.h"
#include "runtime/common.h"
#include "runtime/plot.h"

#define PLOT_MTP 4              /* MTP modules drawn (DeepSeek-V3 uses 1) */
#define MAX_SERIES (6 + 2 * PLOT_MTP)
#define MAX_IN_PANEL (4 + 2 * PLOT_MTP)

typedef struct Series {
    char key[32], label[48];
    const char *color;
    int dashed, panel;
    double *x, *y;              /* (n) step, value */
    int n, cap;
} Series;

typedef struct Plot {
    Series s[MAX_SERIES];
    int ns;
    double floor;               /* the final record's loss_floor (NAN: none) */
    int last_step, steps;
} Plot;

enum { P_LOSS, P_LR, P_GNORM, P_MAXVIO, N_PANELS };

static const struct {
    const char *title, *ylabel;
    int log;                    /* log y axis when every value is positive */
} PANELS[N_PANELS] = {
    { "loss (nats)", "cross-entropy", 1 },
    { "learning rate", "lr", 0 },
    { "gradient norm (before clipping)", "norm", 1 },
    { "MaxVio (expert load: max / mean - 1)", "MaxVio", 0 },
};

static const char *const COLORS[] = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                      "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f" };

/* The series of `key`, made on first use (NULL when the table is full). */
static Series *series(Plot *p, const char *key, const char *label, int panel, int dashed)
{
    for (int i = 0; i < p->ns; i++)
        if (!strcmp(p->s[i].key, key)) return &p->s[i];
    if (p->ns == MAX_SERIES) return NULL;
    Series *s = &p->s[p->ns];
    memset(s, 0, sizeof *s);
    snprintf(s->key, sizeof s->key, "%s", key);
    snprintf(s->label, sizeof s->label, "%s", label);
    s->color = COLORS[p->ns % (int)(sizeof COLORS / sizeof COLORS[0])];
    s->panel = panel;
    s->dashed = dashed;
    p->ns++;
    return s;
}

/* Appends (x, y); a step not past the last point (a resumed run logging it again) first drops
 * the points from that step on. Non-finite y is left out. */
static void add_point(Series *s, double x, double y)
{
    if (!s || !isfinite(y)) return;
    while (s->n > 0 && s->x[s->n - 1] >= x) s->n--;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, (size_t)s->cap * sizeof *nx);
        if (nx) s->x = nx;
        double *ny = realloc(s->y, (size_t)s->cap * sizeof *ny);
        if (ny) s->y = ny;
        if (!nx || !ny) DIE("plot: out of memory at %d points", s->n);
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
}

static double num(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static void add_mtp(Plot *p, json_t *o, const char *key, const char *label, double step, int dashed)
{
    json_t *a = json_object_get(o, key);
    if (!json_is_array(a)) return;
    for (size_t k = 0; k < json_array_size(a) && k < PLOT_MTP; k++) {
        char sk[32], sl[48];
        snprintf(sk, sizeof sk, "%s_%zu", key, k + 1);
        snprintf(sl, sizeof sl, "%s %zu", label, k + 1);
        json_t *v = json_array_get(a, k);
        if (json_is_number(v)) add_point(series(p, sk, sl, P_LOSS, dashed), step, json_number_value(v));
    }
}

/* One metrics.jsonl record into the series. */
static void add_record(Plot *p, json_t *o)
{
    const char *type = json_string_value(json_object_get(o, "type"));
    double step = num(o, "step");
    if (!type || !isfinite(step)) return;
    if (!strcmp(type, "step")) {
        add_point(series(p, "loss", "loss", P_LOSS, 0), step, num(o, "loss"));
        add_mtp(p, o, "mtp_loss", "MTP loss", step, 0);
        add_point(series(p, "lr", "lr", P_LR, 0), step, num(o, "lr"));
        add_point(series(p, "grad_norm", "grad norm", P_GNORM, 0), step, num(o, "grad_norm"));
        add_point(series(p, "maxvio", "MaxVio (mean over layers)", P_MAXVIO, 0), step, num(o, "maxvio"));
        add_point(series(p, "maxvio_max", "MaxVio (worst layer)", P_MAXVIO, 1), step, num(o, "maxvio_max"));
        p->last_step = (int)step;
        double steps = num(o, "steps");
        if (isfinite(steps)) p->steps = (int)steps;
    } else if (!strcmp(type, "val")) {
        add_point(series(p, "val_loss", "validation loss", P_LOSS, 1), step, num(o, "val_loss"));
        add_mtp(p, o, "val_mtp_loss", "validation MTP loss", step, 1);
    } else if (!strcmp(type, "final")) {
        p->floor = num(o, "loss_floor");
    }
}

static void plot_free(Plot *p)
{
    for (int i = 0; i < p->ns; i++) {
        free(p->s[i].x);
        free(p->s[i].y);
    }
}

/* Reads every record of path; -1 with err naming the file and line on a line that is not a
 * JSON object. A last line without its newline (a writer cut off) is left out. */
static int read_metrics(Plot *p, const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, rc = 0;
    while ((len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[len - 1] != '\n') break;
        if (len == 1) continue;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (!json_is_object(o)) {
            snprintf(err, errlen, "'%s' line %d is not a JSON object (%s)", path, lineno,
                     o ? "another JSON value" : je.text);
            json_decref(o);
            rc = -1;
            break;
        }
        add_record(p, o);
        json_decref(o);
    }
    free(line);
    fclose(f);
    return rc;
}

/* ---- drawing ---- */

typedef struct Axis {
    double lo, hi;              /* data range shown (log10 of it when log) */
    int log;
    double px0, px1;            /* pixels of lo and hi */
} Axis;

static double axis_px(const Axis *a, double v)
{
    double t = a->log ? log10(v) : v;
    return a->px0 + (t - a->lo) / (a->hi - a->lo) * (a->px1 - a->px0);
}

/* A step of 1, 2 or 5 times a power of ten giving about `want` intervals over span. */
static double nice_step(double span, int want)
{
    double raw = span / want, mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

/* The tick values of an axis (at most max); for a log axis the powers of ten, or 1-2-5 (then
 * every integer) multiples of them when the range holds too few powers. */
static int axis_ticks(const Axis *a, double *t, int max)
{
    int n = 0;
    if (!a->log) {
        double st = nice_step(a->hi - a->lo, 5);
        for (double v = ceil(a->lo / st) * st; v <= a->hi + 1e-9 * st && n < max; v += st)
            t[n++] = fabs(v) < 1e-12 * st ? 0 : v;
        return n;
    }
    static const double MULT[3][9] = { { 1 }, { 1, 2, 5 }, { 1, 2, 3, 4, 5, 6, 7, 8, 9 } };
    static const int NMULT[3] = { 1, 3, 9 };
    for (int m = 0; m < 3; m++) {
        n = 0;
        for (int e = (int)floor(a->lo); e <= (int)ceil(a->hi) && n < max; e++)
            for (int k = 0; k < NMULT[m] && n < max; k++) {
                double v = MULT[m][k] * pow(10, e);
                if (log10(v) >= a->lo - 1e-9 && log10(v) <= a->hi + 1e-9) t[n++] = v;
            }
        if (n >= 3) return n;
    }
    /* less than a decade: evenly spaced values, placed on the log axis */
    Axis lin = { .lo = pow(10, a->lo), .hi = pow(10, a->hi) };
    return axis_ticks(&lin, t, max);
}

/* The range of the panel's values; a log axis when asked and every value is positive. */
static Axis y_axis(const Plot *p, int panel, double top, double bottom)
{
    double lo = DBL_MAX, hi = -DBL_MAX;
    for (int i = 0; i < p->ns; i++) {
        if (p->s[i].panel != panel) continue;
        for (int j = 0; j < p->s[i].n; j++) {
            lo = fmin(lo, p->s[i].y[j]);
            hi = fmax(hi, p->s[i].y[j]);
        }
    }
    if (panel == P_LOSS && isfinite(p->floor)) {
        lo = fmin(lo, p->floor);
        hi = fmax(hi, p->floor);
    }
    Axis a = { .log = PANELS[panel].log && lo > 0 && lo <= hi, .px0 = bottom, .px1 = top };
    if (lo > hi) lo = 0, hi = 1;                        /* no data */
    if (a.log) lo = log10(lo), hi = log10(hi);
    double pad = hi > lo ? 0.05 * (hi - lo) : (a.log ? 0.1 : fmax(fabs(hi) * 0.1, 1e-3));
    a.lo = lo - pad;
    a.hi = hi + pad;
    if (!a.log && lo >= 0 && a.lo < 0) a.lo = 0;      /* no negative axis for positive data */
    return a;
}

static void xml_text(FILE *f, const char *s)
{
    for (; *s; s++) {
        if (*s == '&') fputs("&amp;", f);
        else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '"') fputs("&quot;", f);
        else fputc(*s, f);
    }
}

static void fmt_value(char *buf, size_t len, double v)
{
    if (fabs(v) >= 1e5) snprintf(buf, len, "%.0e", v);
    else snprintf(buf, len, "%g", v);
}

/* Grid lines and tick labels of both axes of one panel. */
static void draw_axes(FILE *f, const Axis *xa, const Axis *ya)
{
    double t[64];
    char lab[32];
    int n = axis_ticks(xa, t, 64);
    for (int i = 0; i < n; i++) {
        double x = axis_px(xa, t[i]);
        fmt_value(lab, sizeof lab, t[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", x, ya->px0, x,
                ya->px1);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", x, ya->px0 + 16, lab);
    }
    n = axis_ticks(ya, t, 64);
    for (int i = 0; i < n; i++) {
        double y = axis_px(ya, t[i]);
        fmt_value(lab, sizeof lab, t[i]);
        fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>\n", xa->px0, y,
                xa->px1, y);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", xa->px0 - 5, y + 4, lab);
    }
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" class=\"frame\"/>\n", xa->px0,
            ya->px1, xa->px1 - xa->px0, ya->px0 - ya->px1);
}

/* One series as a polyline (bucket means past PLOT_MAX_POINTS); a short series also gets dots
 * so a single validation point shows. */
static void draw_series(FILE *f, const Series *s, const Axis *xa, const Axis *ya, int panel)
{
    int buckets = s->n > PLOT_MAX_POINTS ? PLOT_MAX_POINTS : s->n;
    fprintf(f, "<polyline id=\"series-%s\" class=\"series\" clip-path=\"url(#clip%d)\" stroke=\"%s\"%s points=\"",
            s->key, panel, s->color, s->dashed ? " stroke-dasharray=\"6 3\"" : "");
    for (int b = 0; b < buckets; b++) {
        int j0 = (int)((long long)b * s->n / buckets), j1 = (int)((long long)(b + 1) * s->n / buckets);
        double mx = 0, my = 0;
        for (int j = j0; j < j1; j++) mx += s->x[j], my += ya->log ? log10(s->y[j]) : s->y[j];
        mx /= j1 - j0;
        my /= j1 - j0;
        fprintf(f, "%s%.1f,%.1f", b ? " " : "", axis_px(xa, mx), axis_px(ya, ya->log ? pow(10, my) : my));
    }
    fprintf(f, "\"/>\n");
    if (s->n <= 50)
        for (int j = 0; j < s->n; j++)
            fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\" clip-path=\"url(#clip%d)\"/>\n",
                    axis_px(xa, s->x[j]), axis_px(ya, s->y[j]), s->color, panel);
}

static void legend_entry(FILE *f, double x, double y, const char *color, int dashed, const char *label)
{
    fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", x,
            y, x + 22, y, color, dashed ? " stroke-dasharray=\"6 3\"" : "");
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", x + 27, y + 4);
    xml_text(f, label);
    fprintf(f, "</text>\n");
}

/* One panel at (x0, y0) of size w x h: frame, grid, curves, title, axis labels, legend. */
static void draw_panel(FILE *f, const Plot *p, int panel, const Axis *xall, double x0, double y0, double w,
                       double h)
{
    Axis xa = *xall;
    xa.px0 = x0 + 70;
    xa.px1 = x0 + w - 15;
    Axis ya = y_axis(p, panel, y0 + 30, y0 + h - 40);
    fprintf(f, "<g id=\"panel-%d\">\n<clipPath id=\"clip%d\"><rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" "
               "height=\"%.1f\"/></clipPath>\n", panel, panel, xa.px0, ya.px1, xa.px1 - xa.px0, ya.px0 - ya.px1);
    draw_axes(f, &xa, &ya);
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" class=\"title\" text-anchor=\"middle\">%s%s</text>\n",
            (xa.px0 + xa.px1) / 2, y0 + 20, PANELS[panel].title, ya.log ? " - log scale" : "");
    fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", (xa.px0 + xa.px1) / 2,
            y0 + h - 8);
    fprintf(f, "<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
            x0 + 16, (ya.px0 + ya.px1) / 2, PANELS[panel].ylabel);
    int floor = panel == P_LOSS && isfinite(p->floor), rows = floor, row = 0;
    for (int i = 0; i < p->ns; i++) {
        if (p->s[i].panel != panel || p->s[i].n == 0) continue;
        draw_series(f, &p->s[i], &xa, &ya, panel);
        rows++;
    }
    if (floor) {
        double y = axis_px(&ya, p->floor);
        fprintf(f, "<polyline id=\"series-loss_floor\" class=\"series\" stroke=\"#000000\" "
                   "stroke-dasharray=\"2 3\" points=\"%.1f,%.1f %.1f,%.1f\"/>\n", xa.px0, y, xa.px1, y);
    }
    if (rows == 0) {
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no data</text>\n</g>\n",
                (xa.px0 + xa.px1) / 2, (ya.px0 + ya.px1) / 2);
        return;
    }
    /* the legend last, on a light box over the curves */
    fprintf(f, "<rect x=\"%.1f\" y=\"%.1f\" width=\"216\" height=\"%d\" fill=\"#ffffff\" "
               "fill-opacity=\"0.85\" stroke=\"#cccccc\"/>\n", xa.px1 - 220, ya.px1 + 4, 16 * rows + 4);
    for (int i = 0; i < p->ns; i++)
        if (p->s[i].panel == panel && p->s[i].n > 0)
            legend_entry(f, xa.px1 - 214, ya.px1 + 14 + 16 * row++, p->s[i].color, p->s[i].dashed, p->s[i].label);
    if (floor) legend_entry(f, xa.px1 - 214, ya.px1 + 14 + 16 * row, "#000000", 1, "loss floor (source entropy)");
    fprintf(f, "</g>\n");
}

static void draw(FILE *f, const Plot *p, const char *name)
{
    const double W = 1200, H = 820, TOP = 40;
    double xmax = 1;
    for (int i = 0; i < p->ns; i++)
        if (p->s[i].n) xmax = fmax(xmax, p->s[i].x[p->s[i].n - 1]);
    Axis xa = { .lo = 0, .hi = xmax, .log = 0 };
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
               "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
               "font-family=\"sans-serif\" font-size=\"12\">\n", W, H, W, H);
    fprintf(f, "<style>.grid{stroke:#dddddd;stroke-width:1}.frame{fill:none;stroke:#444444}"
               ".series{fill:none;stroke-width:1.5}.title{font-size:14px;font-weight:bold}</style>\n"
               "<rect width=\"100%%\" height=\"100%%\" fill=\"#ffffff\"/>\n");
    fprintf(f, "<text x=\"%.0f\" y=\"26\" text-anchor=\"middle\" font-size=\"18\">dstrain run ", W / 2);
    xml_text(f, name);
    fprintf(f, ": step %d of %d</text>\n", p->last_step, p->steps);
    for (int k = 0; k < N_PANELS; k++)
        draw_panel(f, p, k, &xa, (k % 2) * W / 2, TOP + (k / 2) * (H - TOP) / 2, W / 2, (H - TOP) / 2);
    fprintf(f, "</svg>\n");
}

int plot_run(const char *run_dir, const char *out, char *err, size_t errlen)
{
    Plot p;
    memset(&p, 0, sizeof p);
    p.floor = NAN;
    char *in = xasprintf("%s/metrics.jsonl", run_dir);
    char *dst = out ? xstrdup(out) : xasprintf("%s/loss.svg", run_dir);
    char *tmp = xasprintf("%s.tmp", dst);
    int rc = read_metrics(&p, in, err, errlen);
    if (rc == 0) {
        const char *name = strrchr(run_dir, '/') && strrchr(run_dir, '/')[1] ? strrchr(run_dir, '/') + 1 : run_dir;
        FILE *f = fopen(tmp, "w");
        if (!f) {
            snprintf(err, errlen, "cannot write '%s': %s", tmp, strerror(errno));
            rc = -1;
        } else {
            draw(f, &p, name);
            int bad = ferror(f);
            if (fclose(f) != 0 || bad || rename(tmp, dst) != 0) {
                snprintf(err, errlen, "cannot write '%s': %s", dst, strerror(errno));
                remove(tmp);
                rc = -1;
            }
        }
    }
    plot_free(&p);
    free(in);
    free(dst);
    free(tmp);
    return rc;
}

void plot_refresh(const char *run_dir)
{
    char err[1024];
    if (plot_run(run_dir, NULL, err, sizeof err) != 0) fprintf(stderr, "dstrain: plot: %s (training continues)\n", err);
}

static void plot_usage(FILE *f)
{
    fprintf(f, "usage: dstrain plot RUN_DIR [--out FILE]\n"
               "Draws RUN_DIR/metrics.jsonl as an SVG (default RUN_DIR/loss.svg; train writes the same\n"
               "file at each checkpoint and at the end): main, MTP and validation loss with the\n"
               "source's loss floor when known (log axis), learning rate, gradient norm (log axis)\n"
               "and MaxVio, against the step. Curves longer than %d points are drawn as %d bucket\n"
               "means.\n", PLOT_MAX_POINTS, PLOT_MAX_POINTS);
}

int cmd_plot(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (!strcmp(s, "--help") || !strcmp(s, "-h")) {
            plot_usage(stdout);
            return 0;
        }
        if (!strcmp(s, "--out")) {
            if (i + 1 >= argc) DIE("plot: '--out' needs a FILE (see dstrain plot --help)");
            out = argv[++i];
        } else if (s[0] == '-') DIE("plot: unknown option '%s' (see dstrain plot --help)", s);
        else if (dir) DIE("plot: unexpected argument '%s' (one RUN_DIR; see dstrain plot --help)", s);
        else dir = s;
    }
    if (!dir) DIE("plot: RUN_DIR is required (see dstrain plot --help)");
    char err[1024];
    if (plot_run(dir, out, err, sizeof err) != 0) DIE("plot: %s", err);
    char *dst = out ? xstrdup(out) : xasprintf("%s/loss.svg", dir);
    printf("plot: wrote %s\n", dst);
    free(dst);
    return 0;
}
