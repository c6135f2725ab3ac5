/* trainer/train.h — the learner loop: a run is a list of stages executed in
 * order, with metrics, periodic evaluation, checkpoints and exact resume.
 *
 * Every random choice in a step is drawn from a stream named by (seed, stage,
 * step), and the data position is one cursor, so a run resumed from a
 * checkpoint continues bit-identically to one that never stopped. */
#ifndef PONDER_TRAINER_TRAIN_H
#define PONDER_TRAINER_TRAIN_H

#include <signal.h>  /* sig_atomic_t */
#include <stdbool.h> /* bool */
#include <stdio.h>   /* FILE */

#include "trainer/config.h" /* PonderConfig */
#include "trainer/dist.h"   /* Dist */
#include "util/error.h"     /* PonderError */

typedef struct TrainOptions {
    bool resume;                         /* continue from the newest checkpoint in the run */
    FILE *console;                       /* progress lines; NULL = silent */
    volatile sig_atomic_t *stop_request; /* set by a signal handler: checkpoint and stop */
    int64_t stop_at_step;                /* > 0: behave as if stopped when the global step gets here */
    Dist *dist;                          /* ranks of an mpirun job; NULL = one rank */
} TrainOptions;

typedef struct TrainSummary {
    int64_t steps_done;   /* global step reached */
    bool stopped_early;   /* by stop_request or the non-finite guard */
    int64_t skipped_steps;
    double final_accuracy; /* last evaluation's accuracy, -1 if none */
    double final_think_ratio;
    double seconds;
    char last_checkpoint[1024];
    /* bytes sent between ranks by the whole job (0 with one rank) */
    double bytes_collectives; /* all-reduces, gathers, broadcasts: gradients, counts, metrics */
    double bytes_weights;     /* disaggregated: learner 0 -> rollout ranks */
    double bytes_samples;     /* disaggregated: rollout ranks -> learners */
    double rl_steps;          /* RL steps taken in this run (to divide the above by) */
} TrainSummary;

/* Runs every stage of cfg. Returns 0 when the run completed or was stopped
 * on request (summary says which).
 *
 * With several ranks (opts->dist, dist.mode colocated) every rank runs this
 * with the same config: each takes a share of every batch (SFT: rows of each
 * micro-batch; RL: whole groups, rl_stage.h), gradients and normalisers are
 * summed over ranks, and all ranks hold the same weights. Rank 0 alone writes
 * metrics, checkpoints and console lines and runs evaluations. */
/* The ops table the config asks for: model.device (cpu or cuda) and
 * model.precision (on the CPU, bf16 selects ops_cpu_bf16; on CUDA it sets
 * the backend's tf32 / bf16 mode). A clear error when that backend is not
 * usable here. `ponder train` and `ponder eval` build their models on it. */
struct ModelOps;
int train_backend(const PonderConfig *cfg, const struct ModelOps **ops, PonderError *err);

/* mkdir -p: creates path and its missing parents (an error names the one
 * that could not be made). */
int train_make_dirs(const char *path, PonderError *err);

int train_run(const PonderConfig *cfg, const TrainOptions *opts, TrainSummary *summary,
              PonderError *err);

#endif
