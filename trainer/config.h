/* trainer/config.h — the run configuration: a typed YAML schema with defaults.
 *
 * A run is fully described by one YAML file (principle 2, "runs are data"). This
 * header holds the resolved configuration as a plain struct of fixed-size fields,
 * so it can be copied, compared and stored without ownership rules. The schema
 * (trainer/config_schema.c) is a table with one line per key: dotted path, type,
 * struct offset, default, allowed range or values, and a one-line doc. Loading,
 * validation, error messages and writing all walk that table, so adding a key is
 * adding a struct field and a table line.
 *
 * Resolution order: schema defaults, then the file (its `extends:` parent first),
 * then command-line overrides `a.b=value`, then cross-field validation.
 *
 * `extends: parent.yaml` (top level; path relative to the including file) loads
 * the parent first and lets the child override it key by key: mappings merge
 * deeply, but a `stages:` list in the child REPLACES the parent's list whole —
 * merging lists by index silently mixes two pipelines when their lengths differ.
 * To change one stage of a parent, override it: `stages.0.steps=10`. The
 * `rewards:` list follows the same rule (a child's list, even `rewards: []`,
 * replaces the parent's). Cycles are an error naming every file in the cycle.
 *
 * Rewards: `rewards:` lists up to CONFIG_MAX_REWARDS named, weighted reward
 * components (rewards/reward.h), combined as `scoring:` says
 * (rewards/reward_set.h). An absent or empty list means "the task's default":
 * the trainer supplies the rewards then, so n_rewards == 0 is valid.
 * config_reward_specs() turns the list into RewardSpecs.
 *
 * RL stage keys (num_generations ... cliprange_value) are used by the stage
 * types grpo, ppo, rloo and reinforce_pp; an sft stage ignores them but they
 * are still parsed, validated for range and written, so a config round-trips.
 *
 * Zero means "derive" for several keys (model.vocab_size, model.n_kv_head,
 * model.d_ff, run.dir, checkpoint.dir, stage name/seq_len/lr/eval_every/
 * epsilon_high/value_lr). The struct keeps the 0 so a written config
 * round-trips exactly; config_model() and the config_stage_*() /
 * config_*_dir() helpers return resolved values.
 *
 * Errors carry `file:line:column: ` (1-based) for keys from a file and
 * `override 'k=v': ` for keys from the command line. */
#ifndef PONDER_TRAINER_CONFIG_H
#define PONDER_TRAINER_CONFIG_H

#include <stdbool.h> /* bool */
#include <stddef.h>  /* size_t */
#include <stdint.h>  /* int64_t */
#include <stdio.h>   /* FILE */

#include "algos/advantage.h"   /* AlgoScaleRewards */
#include "algos/kl.h"          /* AlgoKlEstimator */
#include "algos/loss.h"        /* AlgoLossType, AlgoRatioLevel */
#include "model/model.h"       /* ModelConfig, ModelArch */
#include "rewards/reward.h"    /* RewardSpec, RewardType, RewardLengthUnit, REWARD_NAME_MAX */
#include "rewards/reward_set.h" /* RewardCombine */
#include "util/error.h"        /* PonderError */

#define CONFIG_MAX_STAGES 8
#define CONFIG_MAX_REWARDS 8
#define CONFIG_NAME_MAX 128  /* names, short strings */
#define CONFIG_PATH_MAX 512  /* file paths */
#define CONFIG_TEXT_MAX 1024 /* shell lines, JSON text; the longest string field */

typedef enum { CONFIG_DEVICE_CPU = 0, CONFIG_DEVICE_CUDA = 1 } ConfigDevice;
/* Matmul precision: fp32 everywhere (the default), TF32 tensor cores (CUDA
 * only), or bf16 products with fp32 master weights (CUDA tensor cores, or
 * the CPU's AVX512-BF16 through the cpu-bf16 ops table). */
typedef enum { CONFIG_PRECISION_FP32 = 0, CONFIG_PRECISION_TF32 = 1, CONFIG_PRECISION_BF16 = 2 } ConfigPrecision;
typedef enum { CONFIG_TOKENIZER_CHAR = 0, CONFIG_TOKENIZER_BPE = 1 } ConfigTokenizerType;
typedef enum {
    CONFIG_SCHEDULE_CONSTANT = 0,
    CONFIG_SCHEDULE_LINEAR = 1,
    CONFIG_SCHEDULE_COSINE = 2,
} ConfigSchedule;
typedef enum { CONFIG_TASK_ARITH = 0, CONFIG_TASK_JSONL = 1 } ConfigTask;
typedef enum {
    CONFIG_STAGE_SFT = 0,
    CONFIG_STAGE_GRPO = 1,
    CONFIG_STAGE_PPO = 2,
    CONFIG_STAGE_RLOO = 3,
    CONFIG_STAGE_REINFORCE_PP = 4,
} ConfigStageType;

typedef struct ConfigRun {
    char name[CONFIG_NAME_MAX];
    char dir[CONFIG_PATH_MAX]; /* "" = runs/<name> */
    int64_t seed;
} ConfigRun;

typedef struct ConfigModel {
    ModelArch arch;
    int64_t vocab_size; /* 0 = from the tokenizer */
    int64_t d_model;
    int64_t n_layer;
    int64_t n_head;
    int64_t n_kv_head; /* 0 = n_head */
    int64_t d_ff;      /* 0 = derived from arch and d_model */
    int64_t max_seq_len;
    double norm_eps;
    double rope_theta;
    double init_std;
    bool tie_embeddings;
    bool qkv_bias;
    bool scalar_head;
    ConfigDevice device;
    ConfigPrecision precision;
    bool share_prefixes; /* model_share_prefixes */
    char init_from[CONFIG_PATH_MAX]; /* checkpoint to start from, "" = fresh init */
} ConfigModel;

typedef struct ConfigTokenizer {
    ConfigTokenizerType type;
    char path[CONFIG_PATH_MAX];
} ConfigTokenizer;

typedef struct ConfigOptim {
    double lr;
    double beta1;
    double beta2;
    double eps;
    double weight_decay;
    double grad_clip; /* 0 = off */
    ConfigSchedule schedule;
    int64_t warmup_steps;
    double min_lr_ratio;
    bool decay_norms_and_biases;
    bool decay_embeddings;
} ConfigOptim;

typedef struct ConfigRuntime {
    int64_t threads; /* 0 = all cores */
    char blas[CONFIG_NAME_MAX];
} ConfigRuntime;

typedef enum { CONFIG_DIST_COLOCATED = 0, CONFIG_DIST_DISAGGREGATED = 1 } ConfigDistMode;
/* How gradients are summed over ranks: NCCL on the GPUs when the model is on
 * cuda and the build has NCCL (auto), always through MPI, or NCCL required. */
typedef enum { CONFIG_GRADS_AUTO = 0, CONFIG_GRADS_MPI = 1, CONFIG_GRADS_NCCL = 2 } ConfigGradAllreduce;

/* Ranks under mpirun (trainer/dist.h); ignored by a single rank. */
typedef struct ConfigDist {
    ConfigDistMode mode;
    int64_t rollout_ranks; /* disaggregated: ranks that only generate and score */
    int64_t max_staleness; /* disaggregated: oldest policy version trained on, in steps */
    double timeout_s;      /* watchdog: longest wait for a collective, samples or weights */
    ConfigGradAllreduce grad_allreduce;
} ConfigDist;

typedef struct ConfigData {
    ConfigTask task;
    char train[CONFIG_PATH_MAX];
    char eval[CONFIG_PATH_MAX];
    char prompt_key[CONFIG_NAME_MAX];
    char response_key[CONFIG_NAME_MAX];
    char answer_key[CONFIG_NAME_MAX];
    int64_t min_digits;
    int64_t max_digits;
    char ops[CONFIG_NAME_MAX];
    int64_t eval_size;
    int64_t eval_min_digits;
    int64_t eval_max_digits;
} ConfigData;

typedef struct ConfigCheckpoint {
    int64_t every; /* 0 = only at the end */
    int64_t keep_last;
    char dir[CONFIG_PATH_MAX]; /* "" = <run dir>/checkpoints */
} ConfigCheckpoint;

typedef struct ConfigEval {
    int64_t every; /* 0 = only at the end */
    int64_t max_new_tokens;
    double temperature; /* 0 = greedy */
    int64_t top_k;      /* 0 = off */
    double top_p;
    double min_p;
    int64_t num_samples;
    int64_t max_batch; /* sequences decoded together */
} ConfigEval;

typedef struct ConfigStage {
    char name[CONFIG_NAME_MAX]; /* "" = the type's name; see config_stage_name() */
    ConfigStageType type;
    int64_t steps;
    int64_t batch_size; /* sequences per optimizer step */
    int64_t grad_accum; /* micro-batches per step; divides batch_size */
    int64_t seq_len;    /* 0 = model.max_seq_len */
    double lr;          /* 0 = optim.lr */
    double thought_dropout;
    int64_t max_bad_steps; /* non-finite steps in a row before stopping */
    int64_t log_every;
    int64_t eval_every; /* 0 = eval.every */

    /* RL stages (grpo, ppo, rloo, reinforce_pp); ignored by sft. One step is
     * one rollout of prompts_per_step * num_generations completions, trained
     * on for num_iterations passes of mini_batches optimizer steps each. */
    int64_t num_generations;  /* G: samples per prompt */
    int64_t prompts_per_step;
    int64_t mini_batches;     /* optimizer steps per pass; divides prompts_per_step * num_generations */
    int64_t micro_batch_tokens; /* padded tokens per forward/backward pass; 0 = a mini-batch at once */
    int64_t num_iterations;   /* passes over each rollout (PPO epochs) */
    double temperature;       /* rollout sampling */
    double top_p;
    int64_t top_k; /* 0 = off */
    double min_p;  /* 0 = off */
    int64_t max_new_tokens;
    int64_t rollout_batch; /* completions decoded together; 0 = a rank's whole rollout */
    AlgoScaleRewards scale_rewards;
    AlgoLossType loss_type;
    double epsilon;      /* lower clip */
    double epsilon_high; /* 0 = epsilon */
    double dual_clip;    /* 0 = off, else > 1 */
    AlgoRatioLevel ratio_level;
    double beta; /* KL coefficient; 0 = no reference model */
    AlgoKlEstimator kl_estimator;
    bool kl_in_reward;  /* false: KL in the loss */
    double kl_target;   /* 0 = fixed beta; else the adaptive controller's target */
    int64_t kl_horizon; /* adaptive controller horizon */
    double entropy_coef;
    bool rpp_baseline; /* reinforce_pp: subtract the group mean */
    bool dynamic_sampling;
    int64_t max_resample_rounds;
    bool mask_truncated;
    double gamma, lam;     /* GAE (ppo), discount (reinforce_pp) */
    double value_lr;       /* 0 = the stage's lr */
    double cliprange_value;
} ConfigStage;

/* One reward component; fields a type does not use are ignored (rewards/reward.h). */
typedef struct ConfigReward {
    char name[REWARD_NAME_MAX]; /* unique; labels the reward's metrics */
    RewardType type;
    double weight;
    double tolerance;        /* math_verify */
    int64_t max_len, buffer; /* overlong */
    double factor;           /* overlong */
    RewardLengthUnit unit;   /* length */
    int64_t cap;             /* length */
    char command[CONFIG_TEXT_MAX]; /* external: run as /bin/sh -c command */
    double timeout_s;              /* external */
    char path[CONFIG_PATH_MAX];    /* plugin: the shared object */
    char config[CONFIG_TEXT_MAX];  /* plugin: JSON text for ponder_reward_init; "" = {} */
} ConfigReward;

typedef struct ConfigScoring {
    RewardCombine combine;
    double eps;
} ConfigScoring;

typedef struct PonderConfig {
    ConfigRun run;
    ConfigModel model;
    ConfigTokenizer tokenizer;
    ConfigOptim optim;
    ConfigRuntime runtime;
    ConfigDist dist;
    ConfigData data;
    ConfigCheckpoint checkpoint;
    ConfigEval eval;
    int n_rewards; /* 0 = the task's default rewards */
    ConfigReward rewards[CONFIG_MAX_REWARDS];
    ConfigScoring scoring;
    int n_stages;
    ConfigStage stages[CONFIG_MAX_STAGES];
} PonderConfig;

/* ---------------------------------------------------------------- loading ---
 * All loaders fill *cfg completely (defaults first) and return 0, or return an
 * error code with err filled; *cfg is then unspecified. overrides are
 * "a.b=value" strings (argv-style), applied in order after the file; stage keys
 * are addressed as "stages.<i>.<key>", and i == n_stages appends a stage;
 * reward keys likewise as "rewards.<i>.<key>" (i == n_rewards appends). */

/* Zeroes *cfg (padding and string tails included, so equal configs memcmp
 * equal) and sets every schema default: one sft stage, no rewards. */
void config_defaults(PonderConfig *cfg);

int config_load(PonderConfig *cfg, const char *path, int n_overrides, char *const *overrides,
                PonderError *err);

/* As config_load, from text. name_for_errors prefixes messages and anchors a
 * relative `extends:` (its directory). */
int config_load_string(PonderConfig *cfg, const char *yaml_text, const char *name_for_errors,
                       int n_overrides, char *const *overrides, PonderError *err);

/* Applies one "a.b=value" override to an already loaded config, without
 * re-validating (call config_validate after the last one). */
int config_apply_override(PonderConfig *cfg, const char *assignment, PonderError *err);

/* Cross-field checks (divisibility, lengths, task needs); messages name keys but
 * no locations. The loaders run this themselves, with locations. */
int config_validate(const PonderConfig *cfg, PonderError *err);

/* Checks the schema table itself: every default parses and lies in its range,
 * every range string is well formed, field sizes match their types. For tests. */
int config_schema_check(PonderError *err);

/* ---------------------------------------------------------------- writing ---
 * Every key, in schema order, with its doc as a comment; parses back with
 * config_load_string into a struct that memcmp-equals cfg. Returns 0 or
 * PONDER_ERR_IO. */
int config_write_yaml(const PonderConfig *cfg, FILE *f);
/* The same text, malloc'd (caller frees); NULL when out of memory. */
char *config_to_yaml_string(const PonderConfig *cfg);

/* ---------------------------------------------------------------- derived ---
 * The model configuration with every derived value resolved: vocab_size from
 * the tokenizer when the config says 0 (a non-zero config value must be at
 * least the tokenizer's), n_kv_head = n_head when 0, d_ff when 0 = llama
 * 4*d_model*2/3 rounded up to a multiple of 32 (SwiGLU keeps the MLP's
 * parameter count of a 4x GELU MLP), gpt2 4*d_model. */
int config_model(const PonderConfig *cfg, ModelConfig *out, int64_t vocab_size_from_tokenizer,
                 PonderError *err);

int64_t config_stage_seq_len(const PonderConfig *cfg, int stage);
double config_stage_lr(const PonderConfig *cfg, int stage);
int64_t config_stage_eval_every(const PonderConfig *cfg, int stage);
/* Resolved run and checkpoint directories; 0, or PONDER_ERR_CONFIG when buf is too small. */
int config_run_dir(const PonderConfig *cfg, char *buf, size_t size, PonderError *err);
int config_checkpoint_dir(const PonderConfig *cfg, char *buf, size_t size, PonderError *err);

/* The stage's name, or its type's name ("sft") when the config leaves it "". */
const char *config_stage_name(const PonderConfig *cfg, int stage);
const char *config_stage_type_name(ConfigStageType type);
/* True for grpo, ppo, rloo and reinforce_pp: the stages that use the RL keys. */
bool config_stage_is_rl(ConfigStageType type);
/* The stage's epsilon_high (epsilon when 0) and value_lr (the stage's lr when 0). */
double config_stage_epsilon_high(const PonderConfig *cfg, int stage);
double config_stage_value_lr(const PonderConfig *cfg, int stage);

/* ---------------------------------------------------------------- rewards ---
 * Fills out[0..*n) with one RewardSpec per configured reward (reward_spec_defaults,
 * then every field the config sets; "" command, path and config read as NULL)
 * and checks each with reward_spec_validate. *n = 0 when the config lists no
 * rewards: the caller then uses the task's default rewards. The specs' strings
 * point into cfg: they stay valid while cfg is alive and unchanged, which is
 * all reward_create / reward_set_create need (they copy them). Fails with
 * PONDER_ERR_CONFIG when cfg has more than max rewards. */
int config_reward_specs(const PonderConfig *cfg, RewardSpec *out, int max, int *n, PonderError *err);

#endif
