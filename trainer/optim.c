/* trainer/optim.c — AdamW, clipping and schedules (see optim.h). */
#include "trainer/optim.h"

#include <math.h>   /* cos, sqrt, isfinite */
#include <stdlib.h> /* calloc, free */

#include "model/model_internal.h" /* Model's ops table */

OptimSettings optim_settings_default(void) {
    OptimSettings s = {.lr = 3e-4f,
                       .beta1 = 0.9f,
                       .beta2 = 0.95f,
                       .eps = 1e-8f,
                       .weight_decay = 0.1f,
                       .grad_clip = 1.0f,
                       .schedule = LR_COSINE,
                       .warmup_steps = 0,
                       .total_steps = 1,
                       .min_lr_ratio = 0.1f,
                       .decay_norms_and_biases = false,
                       .decay_embeddings = false};
    return s;
}

int optim_create(Optimizer *opt, const Model *model, const OptimSettings *s, PonderError *err) {
    opt->s = *s;
    opt->step = 0;
    opt->n = model_num_params(model);
    opt->ops = model->ops;
    opt->m = opt->ops->alloc(opt->n * sizeof(float)); /* zero-filled */
    opt->v = opt->ops->alloc(opt->n * sizeof(float));
    if (!opt->m || !opt->v) {
        optim_free(opt);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for AdamW moments (%zu MiB)",
                            opt->n * 8 / (1024 * 1024));
    }
    return PONDER_OK;
}

void optim_free(Optimizer *opt) {
    if (opt->ops) {
        opt->ops->free(opt->m);
        opt->ops->free(opt->v);
    }
    opt->m = opt->v = NULL;
}

float optim_lr_at(const OptimSettings *s, int64_t step) {
    if (s->warmup_steps > 0 && step < s->warmup_steps)
        return s->lr * (float)(step + 1) / (float)s->warmup_steps;
    if (s->schedule == LR_CONSTANT) return s->lr;
    int64_t span = s->total_steps - s->warmup_steps;
    double progress = span > 0 ? (double)(step - s->warmup_steps) / (double)span : 1.0;
    if (progress > 1.0) progress = 1.0;
    double floor_lr = (double)s->lr * s->min_lr_ratio;
    double shape = s->schedule == LR_LINEAR ? 1.0 - progress
                                            : 0.5 * (1.0 + cos(3.14159265358979323846 * progress));
    return (float)(floor_lr + ((double)s->lr - floor_lr) * shape);
}

bool optim_decays(const OptimSettings *s, const ModelTensor *t) {
    switch (t->kind) {
    case MODEL_TENSOR_WEIGHT: return true;
    case MODEL_TENSOR_EMBEDDING: return s->decay_embeddings;
    default: return s->decay_norms_and_biases;
    }
}

static float decay_of(const OptimSettings *s, const ModelTensor *t) {
    return optim_decays(s, t) ? s->weight_decay : 0.0f;
}

int optim_step(Optimizer *opt, Model *model, OptimStepInfo *info, PonderError *err) {
    const ModelOps *o = model->ops;
    float *p = model->params, *g = model->grads; /* backend memory, not the host views */
    double norm = sqrt(o->sum_squares(g, (int64_t)opt->n));
    if (!isfinite(norm))
        return ponder_error(err, PONDER_ERR_RUNTIME,
                            "non-finite gradient norm at update %lld; parameters unchanged",
                            (long long)opt->step + 1);
    float scale = 1.0f;
    if (opt->s.grad_clip > 0.0f && norm > opt->s.grad_clip)
        scale = (float)(opt->s.grad_clip / (norm + 1e-6));
    float lr = optim_lr_at(&opt->s, opt->step);
    int64_t t = opt->step + 1;
    size_t count;
    const ModelTensor *tensors = model_tensors(model, &count);
    /* Adjacent tensors with the same decay go in one call: the update is
     * elementwise, and one call over a run parallelises where each small
     * tensor alone would run on one thread. */
    for (size_t i = 0; i < count;) {
        const ModelTensor *tt = &tensors[i];
        const float wd = decay_of(&opt->s, tt);
        int64_t n = (int64_t)tt->numel;
        size_t j = i + 1;
        for (; j < count && tensors[j].offset == tt->offset + (size_t)n &&
               decay_of(&opt->s, &tensors[j]) == wd;
             j++)
            n += (int64_t)tensors[j].numel;
        o->adamw(p + tt->offset, g + tt->offset, opt->m + tt->offset, opt->v + tt->offset, n, lr,
                 opt->s.beta1, opt->s.beta2, opt->s.eps, wd, scale, t);
        i = j;
    }
    opt->step = t;
    if (info) {
        info->lr = lr;
        info->grad_norm = norm;
        info->clip_scale = scale;
    }
    return PONDER_OK;
}
