/* trainer/plot.c — `ponder plot RUN_DIR`: the main curves of a run as one SVG
 * file, readable in any browser, from metrics.jsonl alone.
 *
 * Panels: SFT loss; held-out accuracy (evaluations); and for RL steps reward,
 * training accuracy, completion length, think_ratio and KL. A panel with no
 * data is left out. */
#include "trainer/plot.h"

#include <errno.h>   /* errno */
#include <jansson.h> /* json_loads */
#include <math.h>    /* floor, log10, pow, isfinite */
#include <stdio.h>   /* FILE */
#include <stdlib.h>  /* realloc, free */
#include <string.h>  /* strcmp, strerror */

typedef struct Series {
    const char *title;
    const char *kind;  /* metrics line kind: "train", "rl", "eval" */
    const char *path;  /* key, or "eval.all.accuracy" style path */
    double *x, *y;
    size_t n, cap;
} Series;

static int series_add(Series *s, double x, double y) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        double *nx = realloc(s->x, cap * sizeof(double));
        if (!nx) return -1;
        s->x = nx;
        double *ny = realloc(s->y, cap * sizeof(double));
        if (!ny) return -1;
        s->y = ny;
        s->cap = cap;
    }
    s->x[s->n] = x;
    s->y[s->n] = y;
    s->n++;
    return 0;
}

/* Follows a dotted path through nested objects. */
static json_t *lookup(json_t *o, const char *path) {
    char key[128];
    while (o && *path) {
        const char *dot = strchr(path, '.');
        size_t len = dot ? (size_t)(dot - path) : strlen(path);
        if (len >= sizeof key) return NULL;
        memcpy(key, path, len);
        key[len] = '\0';
        o = json_object_get(o, key);
        path = dot ? dot + 1 : path + len;
    }
    return o;
}

static int read_metrics(const char *path, Series *series, int n_series, PonderError *err) {
    FILE *f = fopen(path, "r");
    if (!f) return ponder_error(err, PONDER_ERR_IO, "cannot read %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int rc = PONDER_OK;
    while (rc == PONDER_OK && getline(&line, &cap, f) > 0) {
        lineno++;
        json_error_t je;
        json_t *o = json_loads(line, 0, &je);
        if (!o) {
            rc = ponder_error(err, PONDER_ERR_PARSE, "%s:%ld: %s", path, lineno, je.text);
            break;
        }
        const char *kind = json_string_value(json_object_get(o, "kind"));
        json_t *step = json_object_get(o, "step");
        for (int i = 0; kind && json_is_number(step) && i < n_series; i++) {
            if (strcmp(kind, series[i].kind) != 0) continue;
            json_t *v = lookup(o, series[i].path);
            if (json_is_number(v) && isfinite(json_number_value(v)) &&
                series_add(&series[i], json_number_value(step), json_number_value(v)))
                rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
        }
        json_decref(o);
    }
    free(line);
    fclose(f);
    return rc;
}

/* A "nice" tick step (1, 2 or 5 times a power of ten) for a span. */
static double tick_step(double span) {
    if (!(span > 0)) return 1.0;
    double raw = span / 4.0, mag = pow(10.0, floor(log10(raw))), r = raw / mag;
    return (r < 1.5 ? 1.0 : r < 3.5 ? 2.0 : r < 7.5 ? 5.0 : 10.0) * mag;
}

enum { PANEL_W = 360, PANEL_H = 230, MARGIN_L = 56, MARGIN_B = 34, MARGIN_T = 28, MARGIN_R = 16 };

static void draw_panel(FILE *f, const Series *s, double ox, double oy) {
    double x0 = s->x[0], x1 = s->x[0], y0 = s->y[0], y1 = s->y[0];
    for (size_t i = 1; i < s->n; i++) {
        x0 = fmin(x0, s->x[i]), x1 = fmax(x1, s->x[i]);
        y0 = fmin(y0, s->y[i]), y1 = fmax(y1, s->y[i]);
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + (y0 == 0 ? 1 : fabs(y0) * 0.1);
    const double w = PANEL_W - MARGIN_L - MARGIN_R, h = PANEL_H - MARGIN_T - MARGIN_B;
    const double px = ox + MARGIN_L, py = oy + MARGIN_T;
#define SX(v) (px + ((v) - x0) / (x1 - x0) * w)
#define SY(v) (py + h - ((v) - y0) / (y1 - y0) * h)
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='13' font-weight='bold'>%s</text>\n", px,
            oy + 18, s->title);
    fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%.1f' fill='none' stroke='#888'/>\n",
            px, py, w, h);
    double ys = tick_step(y1 - y0), xs = tick_step(x1 - x0);
    for (double t = ceil(y0 / ys) * ys; t <= y1 + 1e-12; t += ys)
        fprintf(f,
                "<line x1='%.1f' y1='%.1f' x2='%.1f' y2='%.1f' stroke='#ddd'/>"
                "<text x='%.1f' y='%.1f' font-size='10' text-anchor='end'>%g</text>\n",
                px, SY(t), px + w, SY(t), px - 4, SY(t) + 3, t);
    for (double t = ceil(x0 / xs) * xs; t <= x1 + 1e-12; t += xs)
        fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' text-anchor='middle'>%g</text>\n",
                SX(t), py + h + 14, t);
    fprintf(f, "<text x='%.1f' y='%.1f' font-size='10' text-anchor='middle'>step</text>\n",
            px + w / 2, py + h + 28);
    fprintf(f, "<polyline fill='none' stroke='#1f77b4' stroke-width='1.5' points='");
    for (size_t i = 0; i < s->n; i++) fprintf(f, "%.1f,%.1f ", SX(s->x[i]), SY(s->y[i]));
    fprintf(f, "'/>\n");
    if (s->n <= 40)
        for (size_t i = 0; i < s->n; i++)
            fprintf(f, "<circle cx='%.1f' cy='%.1f' r='2.5' fill='#1f77b4'/>\n", SX(s->x[i]),
                    SY(s->y[i]));
#undef SX
#undef SY
}

int plot_run(const char *run_dir, char *out_path, size_t out_size, PonderError *err) {
    Series series[] = {
        {.title = "SFT loss", .kind = "train", .path = "loss"},
        {.title = "held-out accuracy", .kind = "eval", .path = "eval.all.accuracy"},
        {.title = "held-out think_ratio", .kind = "eval", .path = "eval.all.think_ratio"},
        {.title = "reward", .kind = "rl", .path = "reward"},
        {.title = "training accuracy", .kind = "rl", .path = "accuracy"},
        {.title = "completion length", .kind = "rl", .path = "completion_length"},
        {.title = "think_ratio (rollouts)", .kind = "rl", .path = "think_ratio"},
        {.title = "KL to reference", .kind = "rl", .path = "kl"},
    };
    const int n = (int)(sizeof series / sizeof series[0]);
    char metrics[1024];
    snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", run_dir);
    int rc = read_metrics(metrics, series, n, err);
    int shown = 0;
    for (int i = 0; i < n; i++) shown += series[i].n > 0;
    if (rc == PONDER_OK && shown == 0)
        rc = ponder_error(err, PONDER_ERR_CONFIG, "%s has no curves to plot", metrics);
    FILE *f = NULL;
    if (rc == PONDER_OK) {
        snprintf(out_path, out_size, "%s/curves.svg", run_dir);
        f = fopen(out_path, "w");
        if (!f) rc = ponder_error(err, PONDER_ERR_IO, "cannot write %s: %s", out_path, strerror(errno));
    }
    if (rc == PONDER_OK) {
        const int cols = shown < 3 ? shown : 3, rows = (shown + cols - 1) / cols;
        fprintf(f,
                "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
                "font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n",
                cols * PANEL_W, rows * PANEL_H + 24);
        fprintf(f, "<text x='8' y='16' font-size='12' fill='#444'>%s</text>\n", run_dir);
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (series[i].n == 0) continue;
            draw_panel(f, &series[i], (k % cols) * PANEL_W, 24 + (k / cols) * PANEL_H);
            k++;
        }
        fprintf(f, "</svg>\n");
        if (fclose(f) != 0) rc = ponder_error(err, PONDER_ERR_IO, "cannot write %s", out_path);
    }
    for (int i = 0; i < n; i++) free(series[i].x), free(series[i].y);
    return rc;
}
