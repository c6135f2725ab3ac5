/* trainer/checkpoint.h — one HDF5 file per checkpoint: save, verified load,
 * directory utilities and a human-readable inspection.
 *
 * Layout (format version 1):
 *   /model/<name>             float32, the tensor's shape (Hugging Face names)
 *   /optim/m/<name>, /optim/v/<name>   float32 AdamW moments (absent: weights-only)
 *   /optim/step               int64 scalar, updates taken
 *   /rng/<i>                  uint64[4], xoshiro state of stream i (one per rank)
 *   /data/cursor              int64[n], data-loader position
 *   /config                   string, the run's YAML
 *   /metrics                  string, the metrics history (JSONL, may be empty)
 *   /meta (group attributes)  format_version, stage, stage_index, step and the
 *                             model config (arch string; sizes int64; norm_eps,
 *                             rope_theta float64; flags int64 0/1)
 *
 * Saving writes <path>.tmp, flushes, fsyncs and renames, so a crash never
 * leaves a half-written file under the final name. Loading verifies every
 * name, shape, dtype and the model config into temporaries before touching
 * the model or optimizer, so a failed load changes nothing and its message
 * says exactly what is wrong. HDF5's own error printing is silenced during
 * these calls: errors arrive only through PonderError. */
#ifndef PONDER_TRAINER_CHECKPOINT_H
#define PONDER_TRAINER_CHECKPOINT_H

#include <stddef.h> /* size_t */
#include <stdint.h> /* int64_t */
#include <stdio.h>  /* FILE */

#include "model/model.h"   /* Model, ModelConfig */
#include "trainer/optim.h" /* Optimizer */
#include "util/error.h"    /* PonderError */
#include "util/rng.h"      /* Rng */

#define CKPT_FORMAT_VERSION 1

typedef struct CkptMeta {
    char stage[64];
    int64_t stage_index;
    int64_t step; /* global step */
    int64_t format_version;
} CkptMeta;

typedef struct CkptWrite {
    const Model *model;
    const Optimizer *opt; /* NULL = weights-only */
    const Rng *rngs;      /* written as /rng/<i> uint64[4] */
    int64_t n_rngs;
    const int64_t *data_cursor; /* /data/cursor int64[n_cursor] */
    int64_t n_cursor;
    const char *stage; /* at most 63 bytes; NULL = "" */
    int64_t stage_index;
    int64_t step;
    const char *config_yaml;   /* /config; NULL = "" */
    const char *metrics_jsonl; /* /metrics; NULL = "" */
} CkptWrite;

/* Writes a checkpoint atomically (see above); an existing file at path is
 * replaced only once the new one is complete. */
int ckpt_save(const char *path, const CkptWrite *w, PonderError *err);

/* The model config stored in /meta, to build a model before ckpt_load.
 * init_std is not stored (it only matters before training) and is set to
 * model_config_default()'s. */
int ckpt_read_model_config(const char *path, ModelConfig *out, PonderError *err);

typedef struct CkptRead {
    Model *model;   /* required; its config must match the checkpoint's */
    Optimizer *opt; /* NULL = skip optimizer state */
    Rng *rngs;      /* NULL = skip; else room for max_rngs streams */
    int64_t max_rngs;
    int64_t n_rngs;       /* out: streams in the file (0 when rngs is NULL) */
    int64_t *data_cursor; /* NULL = skip; else room for max_cursor entries */
    int64_t max_cursor;
    int64_t n_cursor;    /* out: entries in the file (0 when data_cursor is NULL) */
    CkptMeta meta;       /* out */
    char *config_yaml;   /* out: malloc'd, caller frees */
    char *metrics_jsonl; /* out: malloc'd, caller frees */
} CkptRead;

/* Loads a checkpoint into r->model (and r->opt, r->rngs, r->data_cursor when
 * given). Everything is read and checked first; on any error nothing in *r
 * or the model/optimizer is modified and the outputs stay as they were. */
int ckpt_load(const char *path, CkptRead *r, PonderError *err);

/* <dir>/step_00000123.h5. Returns 0, or PONDER_ERR_CONFIG when out (n bytes)
 * is too small or step is negative. */
int ckpt_path_for_step(const char *dir, int64_t step, char *out, size_t n);

/* The step_<digits>.h5 file in dir with the highest step (other files and
 * *.tmp are ignored). PONDER_ERR_IO, saying so, when there is none or dir
 * cannot be read. */
int ckpt_find_latest(const char *dir, char *out, size_t n, PonderError *err);

/* Deletes step_<digits>.h5 files in dir beyond the keep_last highest steps.
 * Never touches other files (in particular another writer's *.tmp).
 * keep_last must be >= 1. */
int ckpt_prune(const char *dir, int64_t keep_last, PonderError *err);

/* Writes a description to out: meta (version, stage, step), the model config,
 * every tensor in /model, /optim/m and /optim/v (name, shape, dtype, L2 norm),
 * the optimizer step, the number of rng streams, the data cursor, the config
 * text and the size of the metrics history. Tolerates missing parts (it is a
 * diagnosis tool); fails only when the file cannot be opened. */
int ckpt_inspect(const char *path, FILE *out, PonderError *err);

/* How far apart the weights of two checkpoints of the same model are: per
 * tensor, max |a - b| / max |a| (a's largest magnitude, so entries near zero
 * do not inflate it); the worst tensor is reported. */
typedef struct CkptDiff {
    double worst_rel;      /* over tensors */
    char worst_tensor[128];
    double max_abs;        /* largest |a - b| anywhere */
    int64_t differing;     /* parameters whose bits differ */
    int64_t params;
    int64_t step_a, step_b;
} CkptDiff;
int ckpt_compare(const char *path_a, const char *path_b, CkptDiff *out, PonderError *err);

#endif
