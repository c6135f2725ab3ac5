/* trainer/config_schema.c — the schema table (one line per key) and the typed
 * parsing, range checking and formatting of a single value.
 *
 * To add a key: add the field to its struct in trainer/config.h and one KEY (or
 * STAGE_KEY) line below. Loading, overrides, error messages, range checks,
 * writing and the round-trip test pick it up from the table. */
#include "trainer/config_schema.h"

#include <errno.h>    /* errno, ERANGE */
#include <inttypes.h> /* PRId64 */
#include <math.h>     /* fabs, isfinite, isinf, INFINITY */
#include <stdint.h>   /* int64_t */
#include <stdio.h>    /* snprintf */
#include <stdlib.h>   /* strtod, strtoll, strtol */
#include <string.h>   /* memcpy, memset, strchr, strcmp, strlen, strncmp */
#include <strings.h>  /* strcasecmp */

/* ---------------------------------------------------------------- table -----
 * Ranges use interval notation; "inf" is unbounded. Upper caps on sizes keep
 * products such as d_model * n_layer far from int64 overflow in later checks. */

static const char *const ARCH_NAMES[] = {"llama", "gpt2", NULL};
static const char *const DEVICE_NAMES[] = {"cpu", "cuda", NULL};
static const char *const PRECISION_NAMES[] = {"fp32", "tf32", "bf16", NULL};
static const char *const TOKENIZER_NAMES[] = {"char", "bpe", NULL};
static const char *const SCHEDULE_NAMES[] = {"constant", "linear", "cosine", NULL};
static const char *const TASK_NAMES[] = {"arith", "jsonl", NULL};
static const char *const DIST_MODE_NAMES[] = {"colocated", "disaggregated", NULL};
static const char *const GRAD_ALLREDUCE_NAMES[] = {"auto", "mpi", "nccl", NULL};
static const char *const STAGE_TYPE_NAMES[] = {"sft", "grpo", "ppo", "rloo", "reinforce_pp", NULL};
/* The names below follow the C enums of algos/ and rewards/ in order;
 * config_schema_check compares them with those modules' own names. */
static const char *const SCALE_REWARDS_NAMES[] = {"group", "batch", "none", NULL};           /* AlgoScaleRewards */
static const char *const LOSS_TYPE_NAMES[] = {"grpo", "bnpo", "dr_grpo", "dapo", NULL};       /* AlgoLossType */
static const char *const RATIO_LEVEL_NAMES[] = {"token", "sequence", NULL};                  /* AlgoRatioLevel */
static const char *const KL_ESTIMATOR_NAMES[] = {"k1", "k2", "k3", NULL};                    /* AlgoKlEstimator */
static const char *const REWARD_TYPE_NAMES[] = {"math_verify", "exact", "think_format", "overlong",
                                                "length", "external", "plugin", NULL};       /* RewardType */
static const char *const LENGTH_UNIT_NAMES[] = {"tokens", "steps", NULL};                    /* RewardLengthUnit */
static const char *const COMBINE_NAMES[] = {"sum", "sum_then_normalize", "normalize_then_sum", NULL}; /* RewardCombine */

#define FIELD_SIZE(type, field) sizeof(((type *)0)->field)
#define KEY(path, kind, field, def, range, values, doc)                                      \
    {path, kind, offsetof(PonderConfig, field), FIELD_SIZE(PonderConfig, field), def, range, \
     values, doc}
#define STAGE_KEY(name, kind, field, def, range, values, doc)                              \
    {name, kind, offsetof(ConfigStage, field), FIELD_SIZE(ConfigStage, field), def, range, \
     values, doc}
#define REWARD_KEY(name, kind, field, def, range, values, doc)                               \
    {name, kind, offsetof(ConfigReward, field), FIELD_SIZE(ConfigReward, field), def, range, \
     values, doc}

static const ConfigKey KEYS[] = {
    KEY("run.name", CONFIG_STRING, run.name, "run", NULL, NULL, "names the run and its output directory"),
    KEY("run.dir", CONFIG_STRING, run.dir, "", NULL, NULL, "output directory; \"\" = runs/<run.name>"),
    KEY("run.seed", CONFIG_INT, run.seed, "1234", "[0,inf)", NULL, "seeds weights, data and sampling"),

    KEY("model.arch", CONFIG_ENUM, model.arch, "llama", NULL, ARCH_NAMES, "llama (RMSNorm, RoPE, SwiGLU) or gpt2"),
    KEY("model.vocab_size", CONFIG_INT, model.vocab_size, "0", "[0,2147483647]", NULL, "0 = the tokenizer's vocabulary size"),
    KEY("model.d_model", CONFIG_INT, model.d_model, "128", "[1,1048576]", NULL, "width of the residual stream (C)"),
    KEY("model.n_layer", CONFIG_INT, model.n_layer, "4", "[1,4096]", NULL, "transformer blocks (L)"),
    KEY("model.n_head", CONFIG_INT, model.n_head, "4", "[1,65536]", NULL, "query heads; divides d_model"),
    KEY("model.n_kv_head", CONFIG_INT, model.n_kv_head, "0", "[0,65536]", NULL, "key/value heads, divides n_head; 0 = n_head"),
    KEY("model.d_ff", CONFIG_INT, model.d_ff, "0", "[0,16777216]", NULL, "MLP hidden size; 0 = derive from arch and d_model"),
    KEY("model.max_seq_len", CONFIG_INT, model.max_seq_len, "256", "[1,16777216]", NULL, "longest sequence (positions)"),
    KEY("model.norm_eps", CONFIG_FLOAT, model.norm_eps, "1e-5", "(0,inf)", NULL, "RMSNorm / LayerNorm epsilon"),
    KEY("model.rope_theta", CONFIG_FLOAT, model.rope_theta, "10000", "(0,inf)", NULL, "RoPE base frequency (llama)"),
    KEY("model.init_std", CONFIG_FLOAT, model.init_std, "0.02", "[0,inf)", NULL, "std of the normal weight init"),
    KEY("model.tie_embeddings", CONFIG_BOOL, model.tie_embeddings, "true", NULL, NULL, "lm_head shares the token embedding"),
    KEY("model.qkv_bias", CONFIG_BOOL, model.qkv_bias, "false", NULL, NULL, "biases on q/k/v (llama, as Qwen2)"),
    KEY("model.scalar_head", CONFIG_BOOL, model.scalar_head, "false", NULL, NULL, "scalar head for a value or reward model"),
    KEY("model.device", CONFIG_ENUM, model.device, "cpu", NULL, DEVICE_NAMES, "where the model runs"),
    KEY("model.precision", CONFIG_ENUM, model.precision, "fp32", NULL, PRECISION_NAMES,
        "matmul precision: fp32, tf32 (cuda only) or bf16 (bf16 products, fp32 master weights)"),
    KEY("model.share_prefixes", CONFIG_BOOL, model.share_prefixes, "true", NULL, NULL,
        "training passes compute a prefix that rows share (a group's prompt) once (CPU); false = every row in full"),
    KEY("model.init_from", CONFIG_STRING, model.init_from, "", NULL, NULL, "checkpoint to start from; \"\" = random init"),

    KEY("tokenizer.type", CONFIG_ENUM, tokenizer.type, "char", NULL, TOKENIZER_NAMES, "char (built-in alphabet) or bpe"),
    KEY("tokenizer.path", CONFIG_STRING, tokenizer.path, "", NULL, NULL, "tokenizer.json for bpe"),

    KEY("optim.lr", CONFIG_FLOAT, optim.lr, "3e-4", "(0,inf)", NULL, "peak learning rate"),
    KEY("optim.beta1", CONFIG_FLOAT, optim.beta1, "0.9", "[0,1)", NULL, "AdamW first-moment decay"),
    KEY("optim.beta2", CONFIG_FLOAT, optim.beta2, "0.95", "[0,1)", NULL, "AdamW second-moment decay"),
    KEY("optim.eps", CONFIG_FLOAT, optim.eps, "1e-8", "(0,inf)", NULL, "AdamW denominator epsilon"),
    KEY("optim.weight_decay", CONFIG_FLOAT, optim.weight_decay, "0.1", "[0,inf)", NULL, "decoupled weight decay"),
    KEY("optim.grad_clip", CONFIG_FLOAT, optim.grad_clip, "1.0", "[0,inf)", NULL, "max global gradient norm; 0 = off"),
    KEY("optim.schedule", CONFIG_ENUM, optim.schedule, "cosine", NULL, SCHEDULE_NAMES, "lr after warm-up"),
    KEY("optim.warmup_steps", CONFIG_INT, optim.warmup_steps, "0", "[0,inf)", NULL, "linear warm-up steps"),
    KEY("optim.min_lr_ratio", CONFIG_FLOAT, optim.min_lr_ratio, "0.1", "[0,1]", NULL, "final lr / peak lr (linear, cosine)"),
    KEY("optim.decay_norms_and_biases", CONFIG_BOOL, optim.decay_norms_and_biases, "false", NULL, NULL, "apply weight decay to norms and biases"),
    KEY("optim.decay_embeddings", CONFIG_BOOL, optim.decay_embeddings, "false", NULL, NULL, "apply weight decay to embeddings"),

    KEY("runtime.threads", CONFIG_INT, runtime.threads, "0", "[0,4096]", NULL, "worker threads; 0 = all cores"),
    KEY("runtime.blas", CONFIG_STRING, runtime.blas, "auto", NULL, NULL, "BLAS library to load; auto = search"),

    KEY("dist.mode", CONFIG_ENUM, dist.mode, "colocated", NULL, DIST_MODE_NAMES, "under mpirun: every rank generates and trains (colocated) or rollout ranks apart (disaggregated)"),
    KEY("dist.rollout_ranks", CONFIG_INT, dist.rollout_ranks, "1", "[1,65536]", NULL, "disaggregated: ranks that only generate and score"),
    KEY("dist.max_staleness", CONFIG_INT, dist.max_staleness, "0", "[0,1000000]", NULL, "disaggregated: most policy versions a trained sample may lag; 0 = on-policy"),
    KEY("dist.timeout_s", CONFIG_FLOAT, dist.timeout_s, "600", "(0,inf)", NULL, "watchdog: longest wait for another rank before the job is ended"),
    KEY("dist.grad_allreduce", CONFIG_ENUM, dist.grad_allreduce, "auto", NULL, GRAD_ALLREDUCE_NAMES,
        "gradient sums over ranks: auto (NCCL when the model is on cuda and NCCL is built), mpi, nccl"),

    KEY("data.task", CONFIG_ENUM, data.task, "arith", NULL, TASK_NAMES, "built-in arith task or a jsonl dataset"),
    KEY("data.train", CONFIG_STRING, data.train, "", NULL, NULL, "training JSONL (task jsonl)"),
    KEY("data.eval", CONFIG_STRING, data.eval, "", NULL, NULL, "evaluation JSONL (task jsonl)"),
    KEY("data.prompt_key", CONFIG_STRING, data.prompt_key, "prompt", NULL, NULL, "JSONL column holding the prompt"),
    KEY("data.response_key", CONFIG_STRING, data.response_key, "response", NULL, NULL, "JSONL column holding the SFT target"),
    KEY("data.answer_key", CONFIG_STRING, data.answer_key, "answer", NULL, NULL, "JSONL column holding the answer"),
    KEY("data.min_digits", CONFIG_INT, data.min_digits, "1", "[1,18]", NULL, "arith: fewest digits per operand"),
    KEY("data.max_digits", CONFIG_INT, data.max_digits, "3", "[1,18]", NULL, "arith: most digits per operand"),
    KEY("data.ops", CONFIG_STRING, data.ops, "+", NULL, NULL, "arith: operators drawn from + - *"),
    KEY("data.eval_size", CONFIG_INT, data.eval_size, "500", "[1,inf)", NULL, "arith: evaluation problems"),
    KEY("data.eval_min_digits", CONFIG_INT, data.eval_min_digits, "1", "[1,18]", NULL, "arith: fewest digits in eval"),
    KEY("data.eval_max_digits", CONFIG_INT, data.eval_max_digits, "3", "[1,18]", NULL, "arith: most digits in eval"),

    KEY("checkpoint.every", CONFIG_INT, checkpoint.every, "100", "[0,inf)", NULL, "steps between checkpoints; 0 = only at the end"),
    KEY("checkpoint.keep_last", CONFIG_INT, checkpoint.keep_last, "3", "[1,inf)", NULL, "checkpoints kept on disk"),
    KEY("checkpoint.dir", CONFIG_STRING, checkpoint.dir, "", NULL, NULL, "\"\" = <run dir>/checkpoints"),

    KEY("eval.every", CONFIG_INT, eval.every, "0", "[0,inf)", NULL, "steps between evaluations; 0 = only at the end"),
    KEY("eval.max_new_tokens", CONFIG_INT, eval.max_new_tokens, "64", "[1,inf)", NULL, "generation budget per answer"),
    KEY("eval.temperature", CONFIG_FLOAT, eval.temperature, "0", "[0,inf)", NULL, "0 = greedy"),
    KEY("eval.top_k", CONFIG_INT, eval.top_k, "0", "[0,inf)", NULL, "0 = off"),
    KEY("eval.top_p", CONFIG_FLOAT, eval.top_p, "1.0", "(0,1]", NULL, "nucleus mass; 1 = off"),
    KEY("eval.min_p", CONFIG_FLOAT, eval.min_p, "0", "[0,1)", NULL, "min-p filter; 0 = off"),
    KEY("eval.max_batch", CONFIG_INT, eval.max_batch, "64", "[1,inf)", NULL, "sequences decoded together"),
    KEY("eval.num_samples", CONFIG_INT, eval.num_samples, "1", "[1,inf)", NULL, "samples per problem (pass@k, maj@k)"),

    KEY("rewards", CONFIG_LIST, rewards, NULL, NULL, NULL, "reward components; none = the task's default; at most 8"),
    KEY("scoring.combine", CONFIG_ENUM, scoring.combine, "sum", NULL, COMBINE_NAMES, "how reward components combine"),
    KEY("scoring.eps", CONFIG_FLOAT, scoring.eps, "1e-6", "(0,inf)", NULL, "std epsilon of the *normalize* combines"),

    KEY("stages", CONFIG_LIST, stages, NULL, NULL, NULL, "run in order; at most 8"),
};

static const ConfigKey STAGE_KEYS[] = {
    STAGE_KEY("name", CONFIG_STRING, name, "", NULL, NULL, "\"\" = the type's name"),
    STAGE_KEY("type", CONFIG_ENUM, type, "sft", NULL, STAGE_TYPE_NAMES, "training algorithm"),
    STAGE_KEY("steps", CONFIG_INT, steps, "100", "[1,inf)", NULL, "optimizer steps"),
    STAGE_KEY("batch_size", CONFIG_INT, batch_size, "32", "[1,inf)", NULL, "sequences per optimizer step"),
    STAGE_KEY("grad_accum", CONFIG_INT, grad_accum, "1", "[1,inf)", NULL, "micro-batches per step; divides batch_size"),
    STAGE_KEY("seq_len", CONFIG_INT, seq_len, "0", "[0,inf)", NULL, "0 = model.max_seq_len"),
    STAGE_KEY("lr", CONFIG_FLOAT, lr, "0", "[0,inf)", NULL, "0 = optim.lr"),
    STAGE_KEY("thought_dropout", CONFIG_FLOAT, thought_dropout, "0", "[0,1]", NULL, "TON: chance of dropping a thought (sft)"),
    STAGE_KEY("max_bad_steps", CONFIG_INT, max_bad_steps, "5", "[1,inf)", NULL, "non-finite steps in a row before stopping with a checkpoint"),
    STAGE_KEY("log_every", CONFIG_INT, log_every, "1", "[1,inf)", NULL, "steps between console lines"),
    STAGE_KEY("eval_every", CONFIG_INT, eval_every, "0", "[0,inf)", NULL, "0 = eval.every"),
    /* RL stages (grpo, ppo, rloo, reinforce_pp); sft ignores these. */
    STAGE_KEY("num_generations", CONFIG_INT, num_generations, "8", "[1,inf)", NULL, "RL: samples per prompt (G)"),
    STAGE_KEY("prompts_per_step", CONFIG_INT, prompts_per_step, "16", "[1,inf)", NULL, "RL: prompts per rollout"),
    STAGE_KEY("mini_batches", CONFIG_INT, mini_batches, "1", "[1,inf)", NULL, "RL: optimizer steps per pass, each over a range of whole groups; <= prompts_per_step"),
    STAGE_KEY("micro_batch_tokens", CONFIG_INT, micro_batch_tokens, "1024", "[0,inf)", NULL, "RL: padded tokens per forward/backward pass; a larger mini-batch is cut into length-sorted micro-batches (host losses; the CUDA loss path takes a mini-batch at once); 0 = one pass"),
    STAGE_KEY("num_iterations", CONFIG_INT, num_iterations, "1", "[1,inf)", NULL, "RL: passes over each rollout (PPO epochs)"),
    STAGE_KEY("temperature", CONFIG_FLOAT, temperature, "1.0", "(0,inf)", NULL, "RL: rollout sampling temperature"),
    STAGE_KEY("top_p", CONFIG_FLOAT, top_p, "1.0", "(0,1]", NULL, "RL: rollout nucleus mass; 1 = off"),
    STAGE_KEY("top_k", CONFIG_INT, top_k, "0", "[0,inf)", NULL, "RL: rollout top-k; 0 = off"),
    STAGE_KEY("min_p", CONFIG_FLOAT, min_p, "0", "[0,1)", NULL, "RL: rollout min-p; 0 = off"),
    STAGE_KEY("max_new_tokens", CONFIG_INT, max_new_tokens, "64", "[1,inf)", NULL, "RL: completion budget"),
    STAGE_KEY("rollout_batch", CONFIG_INT, rollout_batch, "0", "[0,inf)", NULL, "RL: completions decoded together (the KV cache holds this many + 1 sequences of model.max_seq_len); 0 = a rank's whole rollout"),
    STAGE_KEY("scale_rewards", CONFIG_ENUM, scale_rewards, "group", NULL, SCALE_REWARDS_NAMES, "RL: advantage std: group, batch or none"),
    STAGE_KEY("loss_type", CONFIG_ENUM, loss_type, "dapo", NULL, LOSS_TYPE_NAMES, "RL: token-loss aggregation (TRL loss_type)"),
    STAGE_KEY("epsilon", CONFIG_FLOAT, epsilon, "0.2", "(0,1)", NULL, "RL: ratio clip, low side"),
    STAGE_KEY("epsilon_high", CONFIG_FLOAT, epsilon_high, "0", "[0,inf)", NULL, "RL: ratio clip, high side; 0 = epsilon"),
    STAGE_KEY("dual_clip", CONFIG_FLOAT, dual_clip, "0", "[0,inf)", NULL, "RL: dual-clip c for A < 0; 0 = off, else > 1"),
    STAGE_KEY("ratio_level", CONFIG_ENUM, ratio_level, "token", NULL, RATIO_LEVEL_NAMES, "RL: importance ratio per token or sequence (GSPO)"),
    STAGE_KEY("beta", CONFIG_FLOAT, beta, "0", "[0,inf)", NULL, "RL: KL coefficient; 0 = no reference model"),
    STAGE_KEY("kl_estimator", CONFIG_ENUM, kl_estimator, "k3", NULL, KL_ESTIMATOR_NAMES, "RL: KL estimator"),
    STAGE_KEY("kl_in_reward", CONFIG_BOOL, kl_in_reward, "false", NULL, NULL, "RL: KL penalty in the reward, not the loss"),
    STAGE_KEY("kl_target", CONFIG_FLOAT, kl_target, "0", "[0,inf)", NULL, "RL: adaptive-KL target; 0 = fixed beta"),
    STAGE_KEY("kl_horizon", CONFIG_INT, kl_horizon, "10000", "[1,inf)", NULL, "RL: adaptive-KL horizon"),
    STAGE_KEY("entropy_coef", CONFIG_FLOAT, entropy_coef, "0", "[0,inf)", NULL, "RL: entropy bonus coefficient"),
    STAGE_KEY("rpp_baseline", CONFIG_BOOL, rpp_baseline, "false", NULL, NULL, "reinforce_pp: subtract the group mean first"),
    STAGE_KEY("dynamic_sampling", CONFIG_BOOL, dynamic_sampling, "false", NULL, NULL, "RL: drop groups with equal rewards, resample (DAPO)"),
    STAGE_KEY("max_resample_rounds", CONFIG_INT, max_resample_rounds, "3", "[0,inf)", NULL, "RL: extra rollouts to refill dropped groups"),
    STAGE_KEY("mask_truncated", CONFIG_BOOL, mask_truncated, "false", NULL, NULL, "RL: no loss on completions cut at max_new_tokens"),
    STAGE_KEY("gamma", CONFIG_FLOAT, gamma, "1.0", "[0,1]", NULL, "RL: discount (ppo GAE, reinforce_pp returns)"),
    STAGE_KEY("lam", CONFIG_FLOAT, lam, "0.95", "[0,1]", NULL, "ppo: GAE lambda"),
    STAGE_KEY("value_lr", CONFIG_FLOAT, value_lr, "0", "[0,inf)", NULL, "ppo: value-head lr; 0 = the stage's lr"),
    STAGE_KEY("cliprange_value", CONFIG_FLOAT, cliprange_value, "0.2", "[0,inf)", NULL, "ppo: value clip range"),
};

static const ConfigKey REWARD_KEYS[] = {
    REWARD_KEY("name", CONFIG_STRING, name, "", NULL, NULL, "required, unique; letters, digits, _ and -"),
    REWARD_KEY("type", CONFIG_ENUM, type, "math_verify", NULL, REWARD_TYPE_NAMES, "reward kind (rewards/reward.h)"),
    REWARD_KEY("weight", CONFIG_FLOAT, weight, "1.0", NULL, NULL, "weight in the combined reward"),
    REWARD_KEY("tolerance", CONFIG_FLOAT, tolerance, "1e-6", "[0,inf)", NULL, "math_verify: relative tolerance for decimals"),
    REWARD_KEY("max_len", CONFIG_INT, max_len, "0", "[0,inf)", NULL, "overlong: length where the penalty is full"),
    REWARD_KEY("buffer", CONFIG_INT, buffer, "0", "[0,inf)", NULL, "overlong: ramp length before max_len"),
    REWARD_KEY("factor", CONFIG_FLOAT, factor, "1.0", "[0,inf)", NULL, "overlong: full penalty"),
    REWARD_KEY("unit", CONFIG_ENUM, unit, "tokens", NULL, LENGTH_UNIT_NAMES, "length: count tokens or thought steps"),
    REWARD_KEY("cap", CONFIG_INT, cap, "0", "[0,inf)", NULL, "length: count giving the full reward"),
    REWARD_KEY("command", CONFIG_STRING, command, "", NULL, NULL, "external: shell line speaking JSON lines"),
    REWARD_KEY("timeout_s", CONFIG_FLOAT, timeout_s, "10", "(0,inf)", NULL, "external: seconds to wait for each answer"),
    REWARD_KEY("path", CONFIG_STRING, path, "", NULL, NULL, "plugin: shared object"),
    REWARD_KEY("config", CONFIG_STRING, config, "", NULL, NULL, "plugin: JSON text for its init; \"\" = {}"),
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const ConfigKey *config_keys(size_t *count) {
    *count = COUNT(KEYS);
    return KEYS;
}

const ConfigKey *config_stage_keys(size_t *count) {
    *count = COUNT(STAGE_KEYS);
    return STAGE_KEYS;
}

const ConfigKey *config_reward_keys(size_t *count) {
    *count = COUNT(REWARD_KEYS);
    return REWARD_KEYS;
}

/* In the order of their KEYS lines. */
static const ConfigList LISTS[] = {
    {"rewards", "reward", REWARD_KEYS, COUNT(REWARD_KEYS), offsetof(PonderConfig, rewards), sizeof(ConfigReward),
     offsetof(PonderConfig, n_rewards), 0, CONFIG_MAX_REWARDS},
    {"stages", "stage", STAGE_KEYS, COUNT(STAGE_KEYS), offsetof(PonderConfig, stages), sizeof(ConfigStage),
     offsetof(PonderConfig, n_stages), 1, CONFIG_MAX_STAGES},
};

const ConfigList *config_lists(size_t *count) {
    *count = COUNT(LISTS);
    return LISTS;
}

const ConfigList *config_find_list(const char *path) {
    for (size_t i = 0; i < COUNT(LISTS); i++)
        if (!strcmp(LISTS[i].path, path)) return &LISTS[i];
    return NULL;
}

int config_list_count(const ConfigList *list, const PonderConfig *cfg) {
    int n;
    memcpy(&n, (const char *)cfg + list->count_offset, sizeof n);
    return n;
}

void config_list_set_count(const ConfigList *list, PonderConfig *cfg, int n) {
    memcpy((char *)cfg + list->count_offset, &n, sizeof n);
}

void *config_list_item(const ConfigList *list, PonderConfig *cfg, int i) {
    return (char *)cfg + list->offset + (size_t)i * list->item_size;
}

const void *config_list_item_const(const ConfigList *list, const PonderConfig *cfg, int i) {
    return (const char *)cfg + list->offset + (size_t)i * list->item_size;
}

void config_list_item_defaults(const ConfigList *list, void *item) {
    memset(item, 0, list->item_size);
    for (size_t i = 0; i < list->n_keys; i++)
        config_parse_value(&list->keys[i], list->keys[i].path, list->keys[i].def, false, item, NULL);
}

void config_list_reset(const ConfigList *list, PonderConfig *cfg, int n) {
    memset(config_list_item(list, cfg, 0), 0, (size_t)list->max * list->item_size);
    for (int i = 0; i < n; i++) config_list_item_defaults(list, config_list_item(list, cfg, i));
    config_list_set_count(list, cfg, n);
}

const char *config_stage_type_name(ConfigStageType type) {
    if ((int)type < 0 || (size_t)type >= COUNT(STAGE_TYPE_NAMES) - 1) return "?";
    return STAGE_TYPE_NAMES[type];
}

/* ---------------------------------------------------------------- lookup ----*/

static long index_in(const ConfigKey *keys, size_t n, const char *path) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(keys[i].path, path) == 0) return (long)i;
    return -1;
}

const ConfigKey *config_find_key(const char *path) {
    long i = index_in(KEYS, COUNT(KEYS), path);
    return i < 0 ? NULL : &KEYS[i];
}

const ConfigKey *config_find_stage_key(const char *name) {
    long i = index_in(STAGE_KEYS, COUNT(STAGE_KEYS), name);
    return i < 0 ? NULL : &STAGE_KEYS[i];
}

const ConfigKey *config_find_item_key(const ConfigList *list, const char *name) {
    long i = index_in(list->keys, list->n_keys, name);
    return i < 0 ? NULL : &list->keys[i];
}

bool config_is_section(const char *path) {
    size_t n = strlen(path);
    for (size_t i = 0; i < COUNT(KEYS); i++)
        if (strncmp(KEYS[i].path, path, n) == 0 && KEYS[i].path[n] == '.') return true;
    return false;
}

void config_list_loc_slots(const ConfigList *list, size_t *first, size_t *count) {
    size_t slot = COUNT(KEYS);
    for (const ConfigList *l = LISTS; l < list; l++) slot += (size_t)l->max * (l->n_keys + 1);
    *first = slot;
    *count = (size_t)list->max * (list->n_keys + 1);
}

size_t config_loc_count(void) {
    size_t first, count;
    config_list_loc_slots(&LISTS[COUNT(LISTS) - 1], &first, &count);
    return first + count;
}

long config_loc_index(const char *path) {
    for (size_t l = 0; l < COUNT(LISTS); l++) {
        const ConfigList *list = &LISTS[l];
        size_t n = strlen(list->path);
        if (strncmp(path, list->path, n) != 0 || path[n] != '.') continue;
        const char *digits = path + n + 1;
        char *end;
        errno = 0;
        long item = strtol(digits, &end, 10);
        if (end == digits || !(*digits >= '0' && *digits <= '9') || errno || item >= list->max) return -1;
        if (*end && *end != '.') return -1;
        long key = *end ? index_in(list->keys, list->n_keys, end + 1) : (long)list->n_keys; /* the item itself */
        if (key < 0) return -1;
        size_t first, count;
        config_list_loc_slots(list, &first, &count);
        return (long)first + item * (long)(list->n_keys + 1) + key;
    }
    return index_in(KEYS, COUNT(KEYS), path);
}

void config_loc_format(const ConfigLoc *loc, char *buf, size_t size) {
    if (loc && loc->override)
        snprintf(buf, size, "override '%s': ", loc->override);
    else if (loc && loc->file)
        snprintf(buf, size, "%s:%d:%d: ", loc->file, loc->line, loc->col);
    else if (size)
        buf[0] = '\0';
}

/* ---------------------------------------------------------------- numbers ---*/

/* Text that reads back to exactly v, so written configs round-trip bit for bit,
 * and still looks like what a person wrote: the shortest %g (0.1, not
 * 0.1000...01), with whole numbers kept out of exponent form. point: write
 * whole numbers as 1.0, marking a float key in a written config; range
 * messages leave it off ("must be > 0"). */
static void format_double(double v, bool point, char *buf, size_t size) {
    if (fabs(v) < 1e15 && v == (double)(int64_t)v) {
        snprintf(buf, size, point ? "%.1f" : "%.0f", v);
        return;
    }
    char text[32]; /* the longest %.17g of a double is 24 bytes */
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(text, sizeof text, "%.*g", precision, v);
        if (strtod(text, NULL) == v) break;
    }
    snprintf(buf, size, "%s", text);
}

static bool parse_int(const char *text, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (end == text || *end != '\0' || errno == ERANGE) return false;
    if (text[0] == ' ' || text[0] == '\t') return false; /* strtoll skips blanks; YAML does not */
    *out = (int64_t)v;
    return true;
}

static bool parse_double(const char *text, double *out) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (end == text || *end != '\0' || !isfinite(v)) return false;
    if (text[0] == ' ' || text[0] == '\t') return false;
    *out = v;
    return true;
}

/* YAML 1.1 booleans, which libyaml users (and PyYAML) expect to work. */
static bool parse_bool(const char *text, bool *out) {
    static const char *const yes[] = {"true", "yes", "on"};
    static const char *const no[] = {"false", "no", "off"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(text, yes[i]) == 0) return *out = true, true;
        if (strcasecmp(text, no[i]) == 0) return *out = false, true;
    }
    return false;
}

static bool is_null_word(const char *text) {
    return !text[0] || !strcmp(text, "~") || !strcmp(text, "null") || !strcmp(text, "Null") ||
           !strcmp(text, "NULL");
}

/* Written configs are YAML, which must be UTF-8; an override from argv might not be. */
static bool valid_utf8(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
        if (n < 0 || (n == 1 && *p < 0xC2)) return false;
        p++;
        for (int i = 0; i < n; i++, p++)
            if ((*p & 0xC0) != 0x80) return false;
    }
    return true;
}

/* ---------------------------------------------------------------- ranges ----*/

typedef struct Range {
    double lo, hi;
    bool lo_open, hi_open;
} Range;

static bool parse_bound(const char *text, size_t n, double *out) {
    char buf[32];
    if (n == 0 || n >= sizeof buf) return false;
    memcpy(buf, text, n);
    buf[n] = '\0';
    if (!strcmp(buf, "inf")) return *out = INFINITY, true;
    if (!strcmp(buf, "-inf")) return *out = -INFINITY, true;
    return parse_double(buf, out);
}

static bool parse_range(const char *text, Range *r) {
    size_t n = strlen(text);
    const char *comma = strchr(text, ',');
    if (n < 5 || !comma || (text[0] != '[' && text[0] != '(')) return false;
    if (text[n - 1] != ']' && text[n - 1] != ')') return false;
    r->lo_open = text[0] == '(';
    r->hi_open = text[n - 1] == ')';
    return parse_bound(text + 1, (size_t)(comma - text - 1), &r->lo) &&
           parse_bound(comma + 1, (size_t)(text + n - 1 - comma - 1), &r->hi) && r->lo <= r->hi;
}

static bool in_range(const Range *r, double v) {
    bool lo_ok = r->lo_open ? v > r->lo : v >= r->lo;
    bool hi_ok = r->hi_open ? v < r->hi : v <= r->hi;
    return lo_ok && hi_ok;
}

/* "must be > 0", "must be >= 1", "must be in [0, 1)". */
static void describe_range(const Range *r, char *buf, size_t size) {
    char lo[32], hi[32];
    format_double(r->lo, false, lo, sizeof lo);
    format_double(r->hi, false, hi, sizeof hi);
    if (isinf(r->hi))
        snprintf(buf, size, "must be %s %s", r->lo_open ? ">" : ">=", lo);
    else if (isinf(r->lo))
        snprintf(buf, size, "must be %s %s", r->hi_open ? "<" : "<=", hi);
    else
        snprintf(buf, size, "must be in %c%s, %s%c", r->lo_open ? '(' : '[', lo, hi,
                 r->hi_open ? ')' : ']');
}

static double numeric_value(const ConfigKey *key, const void *field) {
    if (key->type == CONFIG_INT) {
        int64_t v;
        memcpy(&v, field, sizeof v);
        return (double)v;
    }
    double v;
    memcpy(&v, field, sizeof v);
    return v;
}

int config_check_range(const ConfigKey *key, const char *path, const void *base,
                       const char *found, PonderError *err) {
    Range r;
    if (!key->range || (key->type != CONFIG_INT && key->type != CONFIG_FLOAT)) return 0;
    if (!parse_range(key->range, &r))
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: bad range '%s' in the schema", path, key->range);
    const void *field = (const char *)base + key->offset;
    if (in_range(&r, numeric_value(key, field))) return 0;
    char rule[96], text[64];
    describe_range(&r, rule, sizeof rule);
    if (!found) {
        config_format_value(key, base, text, sizeof text);
        found = text;
    }
    return ponder_error(err, PONDER_ERR_CONFIG, "%s: %s, found %s", path, rule, found);
}

/* ---------------------------------------------------------------- parsing ---*/

static void list_values(const char *const *values, char *buf, size_t size) {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (size_t i = 0; values[i] && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", i ? ", " : "", values[i]);
    if (used < size) snprintf(buf + used, size - used, "]");
}

static int parse_enum(const ConfigKey *key, const char *path, const char *text, void *field,
                      PonderError *err) {
    for (int i = 0; key->values[i]; i++) {
        if (strcmp(key->values[i], text) == 0) {
            memcpy(field, &i, sizeof i);
            return 0;
        }
    }
    char allowed[256], hint[160];
    list_values(key->values, allowed, sizeof allowed);
    config_suggest_value(text, key->values, hint, sizeof hint);
    return ponder_error(err, PONDER_ERR_CONFIG, "%s: expected one of %s, found '%s'%s", path,
                        allowed, text, hint);
}

static int parse_string(const ConfigKey *key, const char *path, const char *text, bool plain,
                        void *field, PonderError *err) {
    if (plain && is_null_word(text)) text = "";
    size_t n = strlen(text);
    if (n >= key->size)
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: at most %zu bytes, found %zu", path,
                            key->size - 1, n);
    if (!valid_utf8(text))
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: not valid UTF-8", path);
    memset(field, 0, key->size); /* zero tails keep equal configs memcmp-equal */
    memcpy(field, text, n);
    return 0;
}

int config_parse_value(const ConfigKey *key, const char *path, const char *text, bool plain,
                       void *base, PonderError *err) {
    void *field = (char *)base + key->offset;
    switch (key->type) {
    case CONFIG_INT: {
        int64_t v;
        if (!parse_int(text, &v))
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: expected an integer, found '%s'", path, text);
        memcpy(field, &v, sizeof v);
        return config_check_range(key, path, base, text, err);
    }
    case CONFIG_FLOAT: {
        double v;
        if (!parse_double(text, &v))
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: expected a number, found '%s'", path, text);
        memcpy(field, &v, sizeof v);
        return config_check_range(key, path, base, text, err);
    }
    case CONFIG_BOOL: {
        bool v;
        if (!parse_bool(text, &v))
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: expected true or false, found '%s'", path, text);
        memcpy(field, &v, sizeof v);
        return 0;
    }
    case CONFIG_ENUM:
        return parse_enum(key, path, text, field, err);
    case CONFIG_STRING:
        return parse_string(key, path, text, plain, field, err);
    case CONFIG_LIST:
        break;
    }
    return ponder_error(err, PONDER_ERR_CONFIG, "%s: expected a list of mappings", path);
}

/* ---------------------------------------------------------------- formatting */

/* YAML double-quoted style: always quoting keeps "yes", "123" and "a: b" strings
 * strings when read back. */
static void quote_string(const char *s, char *buf, size_t size) {
    size_t used = 0;
    buf[used++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p && used + 6 < size; p++) {
        if (*p == '"' || *p == '\\') {
            buf[used++] = '\\';
            buf[used++] = (char)*p;
        } else if (*p == '\n') {
            buf[used++] = '\\', buf[used++] = 'n';
        } else if (*p == '\t') {
            buf[used++] = '\\', buf[used++] = 't';
        } else if (*p < 0x20 || *p == 0x7F) {
            used += (size_t)snprintf(buf + used, size - used, "\\x%02X", *p);
        } else {
            buf[used++] = (char)*p;
        }
    }
    buf[used++] = '"';
    buf[used] = '\0';
}

void config_format_value(const ConfigKey *key, const void *base, char *buf, size_t size) {
    const void *field = (const char *)base + key->offset;
    switch (key->type) {
    case CONFIG_INT: {
        int64_t v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, size, "%" PRId64, v);
        return;
    }
    case CONFIG_FLOAT: {
        double v;
        memcpy(&v, field, sizeof v);
        format_double(v, true, buf, size);
        return;
    }
    case CONFIG_BOOL: {
        bool v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, size, "%s", v ? "true" : "false");
        return;
    }
    case CONFIG_ENUM: {
        int v, n = 0;
        memcpy(&v, field, sizeof v);
        while (key->values[n]) n++;
        snprintf(buf, size, "%s", v >= 0 && v < n ? key->values[v] : "?");
        return;
    }
    case CONFIG_STRING:
        quote_string(field, buf, size);
        return;
    case CONFIG_LIST:
        break;
    }
    snprintf(buf, size, "[]");
}

/* ---------------------------------------------------------------- defaults --*/

void config_stage_defaults(ConfigStage *stage) {
    config_list_item_defaults(config_find_list("stages"), stage);
}

/* Lists start empty except stages, which start with one default (sft) stage. */
void config_defaults(PonderConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    for (size_t i = 0; i < COUNT(KEYS); i++)
        if (KEYS[i].type != CONFIG_LIST)
            config_parse_value(&KEYS[i], KEYS[i].path, KEYS[i].def, false, cfg, NULL);
    for (size_t i = 0; i < COUNT(LISTS); i++) config_list_reset(&LISTS[i], cfg, LISTS[i].min);
}

static size_t expected_size(const ConfigKey *key) {
    const ConfigList *list;
    switch (key->type) {
    case CONFIG_INT: return sizeof(int64_t);
    case CONFIG_FLOAT: return sizeof(double);
    case CONFIG_BOOL: return sizeof(bool);
    case CONFIG_ENUM: return sizeof(int);
    case CONFIG_STRING: return key->size; /* any char array */
    case CONFIG_LIST:
        list = config_find_list(key->path);
        return list && list->offset == key->offset ? (size_t)list->max * list->item_size : 0;
    }
    return 0;
}

static int check_table(const ConfigKey *keys, size_t n, void *scratch, PonderError *err) {
    for (size_t i = 0; i < n; i++) {
        const ConfigKey *k = &keys[i];
        Range r;
        if (k->size != expected_size(k) || (k->type == CONFIG_STRING && k->size < 2))
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: field size %zu does not fit its type", k->path, k->size);
        if (k->type == CONFIG_STRING && k->size > CONFIG_TEXT_MAX)
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: strings may hold at most CONFIG_TEXT_MAX bytes", k->path);
        if ((k->type == CONFIG_ENUM) != (k->values != NULL))
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: enum values must go with the enum type", k->path);
        if (k->range && !parse_range(k->range, &r))
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: bad range '%s'", k->path, k->range);
        if (k->type == CONFIG_LIST) continue;
        if (!k->def || !k->doc)
            return ponder_error(err, PONDER_ERR_CONFIG, "%s: needs a default and a doc", k->path);
        if (config_parse_value(k, k->path, k->def, false, scratch, err))
            return ponder_error_prefix(err, "schema default: ");
        for (size_t j = 0; j < i; j++)
            if (!strcmp(keys[j].path, k->path))
                return ponder_error(err, PONDER_ERR_CONFIG, "%s: listed twice", k->path);
    }
    return 0;
}

/* Each enum's names against the owning module's names, index by index. */
typedef const char *(*EnumNameFn)(int value);
static const char *scale_rewards_name(int v) {
    for (int i = 0; SCALE_REWARDS_NAMES[i]; i++) {
        AlgoScaleRewards s;
        if (!algo_scale_rewards_parse(SCALE_REWARDS_NAMES[i], &s, NULL) && (int)s == v) return SCALE_REWARDS_NAMES[i];
    }
    return "?";
}
static const char *loss_type_name(int v) { return algo_loss_type_name((AlgoLossType)v); }
static const char *kl_name(int v) { return algo_kl_name((AlgoKlEstimator)v); }
static const char *reward_type_name_of(int v) { return reward_type_name((RewardType)v); }
static const char *combine_name(int v) { return reward_combine_name((RewardCombine)v); }

static int check_enum_names(PonderError *err) {
    static const struct {
        const char *const *names;
        EnumNameFn module_name;
        int count;
    } enums[] = {
        {SCALE_REWARDS_NAMES, scale_rewards_name, 3},
        {LOSS_TYPE_NAMES, loss_type_name, 4},
        {KL_ESTIMATOR_NAMES, kl_name, 3},
        {REWARD_TYPE_NAMES, reward_type_name_of, REWARD_TYPE_COUNT},
        {COMBINE_NAMES, combine_name, 3},
    };
    for (size_t e = 0; e < COUNT(enums); e++) {
        int n = 0;
        while (enums[e].names[n]) n++;
        if (n != enums[e].count)
            return ponder_error(err, PONDER_ERR_CONFIG, "enum '%s...': %d names for %d values", enums[e].names[0], n,
                                enums[e].count);
        for (int i = 0; i < n; i++)
            if (strcmp(enums[e].names[i], enums[e].module_name(i)))
                return ponder_error(err, PONDER_ERR_CONFIG, "enum value %d is '%s' here but '%s' in its module", i,
                                    enums[e].names[i], enums[e].module_name(i));
    }
    return 0;
}

int config_schema_check(PonderError *err) {
    static PonderConfig scratch; /* large; tests call this once */
    memset(&scratch, 0, sizeof scratch);
    int rc = check_table(KEYS, COUNT(KEYS), &scratch, err);
    for (size_t i = 0; !rc && i < COUNT(LISTS); i++) {
        const ConfigKey *key = config_find_key(LISTS[i].path);
        if (!key || key->type != CONFIG_LIST || key->offset != LISTS[i].offset)
            rc = ponder_error(err, PONDER_ERR_CONFIG, "%s: the list needs a matching KEYS line", LISTS[i].path);
        if (!rc && (LISTS[i].min < 0 || LISTS[i].max < LISTS[i].min || LISTS[i].max < 1))
            rc = ponder_error(err, PONDER_ERR_CONFIG, "%s: bad item bounds", LISTS[i].path);
        if (!rc) rc = check_table(LISTS[i].keys, LISTS[i].n_keys, config_list_item(&LISTS[i], &scratch, 0), err);
    }
    if (!rc) rc = check_enum_names(err);
    return rc;
}
