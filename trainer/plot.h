/* trainer/plot.h — the main curves of a run (metrics.jsonl) as an SVG image. */
#ifndef PONDER_TRAINER_PLOT_H
#define PONDER_TRAINER_PLOT_H

#include <stddef.h> /* size_t */

#include "util/error.h" /* PonderError */

/* Reads RUN_DIR/metrics.jsonl and writes RUN_DIR/curves.svg (its path goes to
 * out_path). A malformed metrics line is an error naming file and line. */
int plot_run(const char *run_dir, char *out_path, size_t out_size, PonderError *err);

#endif
