/* trainer/optim.h — AdamW over the model's flat parameter buffer, global-norm
 * gradient clipping, and learning-rate schedules.
 *
 * The moments are two flat arrays in the parameter layout, so one update is
 * one pass per tensor (tensors differ only in whether they are decayed) and a
 * checkpoint stores them as named views like the parameters. */
#ifndef PONDER_TRAINER_OPTIM_H
#define PONDER_TRAINER_OPTIM_H

#include <stdbool.h> /* bool */
#include <stdint.h>  /* int64_t */

#include "model/model.h" /* Model */
#include "util/error.h"  /* PonderError */

typedef enum { LR_CONSTANT = 0, LR_LINEAR = 1, LR_COSINE = 2 } LrSchedule;

typedef struct OptimSettings {
    float lr, beta1, beta2, eps, weight_decay;
    float grad_clip;             /* max global L2 norm; 0 = no clipping */
    LrSchedule schedule;
    int64_t warmup_steps;        /* linear warm-up from lr/warmup to lr */
    int64_t total_steps;         /* schedule length (decay ends here) */
    float min_lr_ratio;          /* floor of linear/cosine decay, as a share of lr */
    bool decay_norms_and_biases; /* AdamW decay on norm weights and biases */
    bool decay_embeddings;       /* AdamW decay on embedding tables */
} OptimSettings;

OptimSettings optim_settings_default(void);

typedef struct Optimizer {
    OptimSettings s;
    int64_t step; /* updates taken so far */
    size_t n;     /* number of parameters */
    float *m, *v; /* first and second moments [n], in the model backend's memory
                     (device memory for a model on a device backend) */
    const struct ModelOps *ops; /* the backend that allocated m and v */
} Optimizer;

int optim_create(Optimizer *opt, const Model *model, const OptimSettings *s, PonderError *err);
void optim_free(Optimizer *opt);

/* Learning rate for 0-based update index `step`. */
float optim_lr_at(const OptimSettings *s, int64_t step);

/* Result of one update, for metrics. */
typedef struct OptimStepInfo {
    float lr;
    double grad_norm; /* before clipping */
    float clip_scale; /* 1 when not clipped */
} OptimStepInfo;

/* Clips by global norm, applies AdamW to every parameter, and counts the step.
 * The model's gradients are left unchanged (callers zero them). A non-finite
 * gradient norm is an error and nothing is updated. */
int optim_step(Optimizer *opt, Model *model, OptimStepInfo *info, PonderError *err);

/* Whether AdamW decays this tensor under the settings. */
bool optim_decays(const OptimSettings *s, const ModelTensor *t);

#endif
