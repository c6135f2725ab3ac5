/* trainer/config_validate.c — cross-field checks, run once everything is merged.
 *
 * Single values are range-checked as they are parsed; what is left are
 * contradictions between keys, which can only be judged after defaults, extends
 * and overrides have all been applied. Each message names the offending key and
 * where it was set (falling back to the other key involved when the offending
 * one still holds its default). A config built in code gets the per-key range
 * checks here too. */
#include "trainer/config_schema.h"

#include <inttypes.h> /* PRId64 */
#include <stdint.h>   /* INT64_MAX */
#include <stdarg.h>   /* va_list */
#include <stdio.h>    /* snprintf, vsnprintf */
#include <string.h>   /* memchr, memcpy, strchr, strcmp, strrchr, strspn */

typedef struct Check {
    const PonderConfig *cfg;
    const ConfigLoc *locs; /* may be NULL */
    PonderError *err;
} Check;

static const ConfigLoc *loc_of(const Check *c, const char *path) {
    long slot = path && c->locs ? config_loc_index(path) : -1;
    if (slot < 0) return NULL;
    const ConfigLoc *loc = &c->locs[slot];
    return loc->file || loc->override ? loc : NULL;
}

static int fail(const Check *c, const char *path, const char *other, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The location of the list item holding path ("rewards.1" for
 * "rewards.1.cap"), for a key the item leaves at its default. */
static const ConfigLoc *item_loc_of(const Check *c, const char *path) {
    const char *dot = strchr(path, '.');
    const char *last = strrchr(path, '.');
    if (!dot || dot == last) return NULL;
    char item[96];
    snprintf(item, sizeof item, "%.*s", (int)(last - path), path);
    return loc_of(c, item);
}

/* "<where>path: message", where is the location of path, else of other, else
 * of the list item holding path. */
static int fail(const Check *c, const char *path, const char *other, const char *fmt, ...) {
    const ConfigLoc *loc = loc_of(c, path);
    if (!loc) loc = loc_of(c, other);
    if (!loc) loc = item_loc_of(c, path);
    char where[768], msg[1024];
    config_loc_format(loc, where, sizeof where);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ponder_error(c->err, PONDER_ERR_CONFIG, "%s%s: %s", where, path, msg);
}

/* ---------------------------------------------------------------- per key ---*/

static int check_field(const Check *c, const ConfigKey *key, const char *path, const void *base) {
    const char *field = (const char *)base + key->offset;
    if (key->type == CONFIG_STRING && !memchr(field, '\0', key->size))
        return fail(c, path, NULL, "string is not terminated within %zu bytes", key->size);
    if (key->type == CONFIG_ENUM) {
        int v, n = 0;
        memcpy(&v, field, sizeof v);
        while (key->values[n]) n++;
        if (v < 0 || v >= n) return fail(c, path, NULL, "enum value %d is out of range", v);
    }
    if (config_check_range(key, path, base, NULL, c->err)) {
        char where[768];
        config_loc_format(loc_of(c, path), where, sizeof where);
        return ponder_error_prefix(c->err, "%s", where);
    }
    return 0;
}

static int check_fields(const Check *c) {
    size_t n;
    const ConfigKey *keys = config_keys(&n);
    for (size_t i = 0; i < n; i++)
        if (keys[i].type != CONFIG_LIST && check_field(c, &keys[i], keys[i].path, c->cfg)) return c->err->code;
    const ConfigList *lists = config_lists(&n);
    for (size_t l = 0; l < n; l++) {
        const ConfigList *list = &lists[l];
        int count = config_list_count(list, c->cfg);
        if (count < list->min || count > list->max)
            return fail(c, list->path, NULL, "needs %d to %d %ss, found %d", list->min, list->max, list->item, count);
        for (int s = 0; s < count; s++) {
            for (size_t i = 0; i < list->n_keys; i++) {
                char path[160];
                snprintf(path, sizeof path, "%s.%d.%s", list->path, s, list->keys[i].path);
                if (check_field(c, &list->keys[i], path, config_list_item_const(list, c->cfg, s))) return c->err->code;
            }
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- model -----*/

static int check_model(const Check *c) {
    const ConfigModel *m = &c->cfg->model;
    if (m->d_model % m->n_head)
        return fail(c, "model.n_head", "model.d_model", "%" PRId64 " does not divide model.d_model (%" PRId64 ")",
                    m->n_head, m->d_model);
    if (m->arch == MODEL_ARCH_GPT2 && m->n_kv_head && m->n_kv_head != m->n_head)
        return fail(c, "model.n_kv_head", "model.arch",
                    "gpt2 has no grouped-query attention; use 0 or model.n_head (%" PRId64 "), found %" PRId64,
                    m->n_head, m->n_kv_head);
    if (m->n_kv_head && m->n_head % m->n_kv_head)
        return fail(c, "model.n_kv_head", "model.n_head", "%" PRId64 " does not divide model.n_head (%" PRId64 ")",
                    m->n_kv_head, m->n_head);
    if (m->arch == MODEL_ARCH_LLAMA && (m->d_model / m->n_head) % 2)
        return fail(c, "model.n_head", "model.d_model",
                    "RoPE needs an even head size, but model.d_model / model.n_head = %" PRId64,
                    m->d_model / m->n_head);
    if (m->precision == CONFIG_PRECISION_TF32 && m->device != CONFIG_DEVICE_CUDA)
        return fail(c, "model.precision", "model.device",
                    "tf32 needs model.device: cuda (the CPU backend has fp32 and bf16)");
    if (c->cfg->dist.grad_allreduce == CONFIG_GRADS_NCCL && m->device != CONFIG_DEVICE_CUDA)
        return fail(c, "dist.grad_allreduce", "model.device",
                    "nccl sums gradients on GPUs, which needs model.device: cuda");
    if (m->arch == MODEL_ARCH_GPT2 && m->qkv_bias)
        return fail(c, "model.qkv_bias", "model.arch", "applies to llama only (gpt2 always has biases)");
    if (c->cfg->tokenizer.type == CONFIG_TOKENIZER_BPE && !c->cfg->tokenizer.path[0])
        return fail(c, "tokenizer.path", "tokenizer.type", "tokenizer.type is bpe, which needs a tokenizer.json path");
    return 0;
}

/* ---------------------------------------------------------------- data ------*/

static int check_data(const Check *c) {
    const ConfigData *d = &c->cfg->data;
    if (d->task == CONFIG_TASK_JSONL && !d->train[0])
        return fail(c, "data.train", "data.task", "data.task is jsonl, which needs a training file");
    if (d->min_digits > d->max_digits)
        return fail(c, "data.min_digits", "data.max_digits", "%" PRId64 " is more than data.max_digits (%" PRId64 ")",
                    d->min_digits, d->max_digits);
    if (d->eval_min_digits > d->eval_max_digits)
        return fail(c, "data.eval_min_digits", "data.eval_max_digits",
                    "%" PRId64 " is more than data.eval_max_digits (%" PRId64 ")", d->eval_min_digits,
                    d->eval_max_digits);
    if (d->task == CONFIG_TASK_ARITH && !d->ops[0]) return fail(c, "data.ops", NULL, "needs at least one operator");
    for (const char *op = d->ops; d->task == CONFIG_TASK_ARITH && *op; op++)
        if (!strchr("+-*", *op))
            return fail(c, "data.ops", NULL, "'%c' is not an operator; use + - *", *op);
    return 0;
}

/* ---------------------------------------------------------------- run, eval -*/

static int check_run_and_eval(const Check *c) {
    const PonderConfig *cfg = c->cfg;
    if (!cfg->run.name[0] || strchr(cfg->run.name, '/') || !strcmp(cfg->run.name, ".") || !strcmp(cfg->run.name, ".."))
        return fail(c, "run.name", NULL, "must be a non-empty name without '/', found \"%s\"", cfg->run.name);
    if (cfg->eval.num_samples > 1 && cfg->eval.temperature == 0)
        return fail(c, "eval.num_samples", "eval.temperature",
                    "%" PRId64 " samples at eval.temperature 0 (greedy) are all the same; raise the temperature",
                    cfg->eval.num_samples);
    if (cfg->eval.max_new_tokens >= cfg->model.max_seq_len)
        return fail(c, "eval.max_new_tokens", "model.max_seq_len",
                    "%" PRId64 " leaves no room for a prompt within model.max_seq_len (%" PRId64 ")",
                    cfg->eval.max_new_tokens, cfg->model.max_seq_len);
    return 0;
}

/* ---------------------------------------------------------------- stages ----*/

/* "stages.<s>.<key>" into buf. */
static const char *stage_path(char *buf, size_t size, int s, const char *key) {
    snprintf(buf, size, "stages.%d.%s", s, key);
    return buf;
}

/* The RL keys of a grpo, ppo, rloo or reinforce_pp stage. */
static int check_rl_stage(const Check *c, int s) {
    const ConfigStage *st = &c->cfg->stages[s];
    const char *type = config_stage_type_name(st->type);
    char path[64], other[64];
    if (st->prompts_per_step > INT64_MAX / st->num_generations) /* both >= 1 by their ranges */
        return fail(c, stage_path(path, sizeof path, s, "prompts_per_step"),
                    stage_path(other, sizeof other, s, "num_generations"),
                    "%" PRId64 " prompts of %" PRId64 " samples each overflow a 64-bit count", st->prompts_per_step,
                    st->num_generations);
    /* a mini-batch is a range of whole groups (trainer/rl_stage.h) */
    if (st->mini_batches > st->prompts_per_step)
        return fail(c, stage_path(path, sizeof path, s, "mini_batches"), stage_path(other, sizeof other, s, "prompts_per_step"),
                    "%" PRId64 " is more than stages.%d.prompts_per_step (%" PRId64 "): a mini-batch holds whole "
                    "groups, so there are at most as many as prompts",
                    st->mini_batches, s, st->prompts_per_step);
    if (st->max_new_tokens >= c->cfg->model.max_seq_len)
        return fail(c, stage_path(path, sizeof path, s, "max_new_tokens"), "model.max_seq_len",
                    "%" PRId64 " leaves no room for a prompt within model.max_seq_len (%" PRId64 ")",
                    st->max_new_tokens, c->cfg->model.max_seq_len);
    stage_path(path, sizeof path, s, "num_generations");
    stage_path(other, sizeof other, s, "type");
    if (st->num_generations < 2 && st->type == CONFIG_STAGE_GRPO)
        return fail(c, path, other,
                    "grpo needs at least 2 samples per prompt: the group mean and std that its advantage uses "
                    "are undefined with one sample, found %" PRId64, st->num_generations);
    if (st->num_generations < 2 && st->type == CONFIG_STAGE_RLOO)
        return fail(c, path, other,
                    "rloo needs at least 2 samples per prompt: the leave-one-out baseline (the mean of the "
                    "other samples) is undefined with one sample, found %" PRId64, st->num_generations);
    if (st->num_generations < 2 && st->type == CONFIG_STAGE_REINFORCE_PP && st->rpp_baseline)
        return fail(c, path, stage_path(other, sizeof other, s, "rpp_baseline"),
                    "reinforce_pp with rpp_baseline needs at least 2 samples per prompt: subtracting the group "
                    "mean of one sample leaves every advantage 0, found %" PRId64, st->num_generations);
    bool grouped = st->type == CONFIG_STAGE_GRPO || st->type == CONFIG_STAGE_RLOO ||
                   (st->type == CONFIG_STAGE_REINFORCE_PP && st->rpp_baseline);
    if (st->dynamic_sampling && !grouped)
        return fail(c, stage_path(path, sizeof path, s, "dynamic_sampling"), stage_path(other, sizeof other, s, "type"),
                    "drops groups whose rewards are all equal, which only changes group-based advantages "
                    "(grpo, rloo, or reinforce_pp with rpp_baseline), not %s%s",
                    type, st->type == CONFIG_STAGE_REINFORCE_PP ? " without rpp_baseline" : "");
    if (st->dual_clip != 0 && !(st->dual_clip > 1))
        return fail(c, stage_path(path, sizeof path, s, "dual_clip"), NULL,
                    "must be 0 (off) or > 1 (the bound on -A * ratio for A < 0), found %g", st->dual_clip);
    if (st->kl_target > 0 && st->beta == 0)
        return fail(c, stage_path(path, sizeof path, s, "kl_target"), stage_path(other, sizeof other, s, "beta"),
                    "the adaptive KL controller scales stages.%d.beta, which stays 0 when it starts at 0; "
                    "set beta > 0 or kl_target 0", s);
    return 0;
}

static int check_stage(const Check *c, int s) {
    const ConfigStage *st = &c->cfg->stages[s];
    char path[64], other[64];
    snprintf(path, sizeof path, "stages.%d.seq_len", s);
    if (st->seq_len > c->cfg->model.max_seq_len)
        return fail(c, path, "model.max_seq_len", "%" PRId64 " exceeds model.max_seq_len (%" PRId64 ")",
                    st->seq_len, c->cfg->model.max_seq_len);
    snprintf(path, sizeof path, "stages.%d.grad_accum", s);
    snprintf(other, sizeof other, "stages.%d.batch_size", s);
    if (st->batch_size % st->grad_accum)
        return fail(c, path, other, "%" PRId64 " does not divide stages.%d.batch_size (%" PRId64 ")",
                    st->grad_accum, s, st->batch_size);
    snprintf(path, sizeof path, "stages.%d.thought_dropout", s);
    snprintf(other, sizeof other, "stages.%d.type", s);
    if (st->thought_dropout > 0 && st->type != CONFIG_STAGE_SFT)
        return fail(c, path, other, "thought dropout applies to sft stages, not %s", config_stage_type_name(st->type));
    if (config_stage_is_rl(st->type) && check_rl_stage(c, s)) return c->err->code;
    for (int t = 0; t < s; t++) {
        if (strcmp(config_stage_name(c->cfg, t), config_stage_name(c->cfg, s))) continue;
        snprintf(path, sizeof path, "stages.%d.name", s);
        return fail(c, path, other, "'%s' is also the name of stages.%d; stage names must differ",
                    config_stage_name(c->cfg, s), t);
    }
    return 0;
}

/* ---------------------------------------------------------------- rewards ---*/

/* Mirrors reward_spec_validate (rewards/reward.c) key by key, so a config that
 * loads builds its rewards, and the messages point at the offending key. */
static int check_reward(const Check *c, int i) {
    static const char NAME_CHARS[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    const ConfigReward *r = &c->cfg->rewards[i];
    char path[64], other[64];
    snprintf(path, sizeof path, "rewards.%d.name", i);
    snprintf(other, sizeof other, "rewards.%d.type", i);
    if (!r->name[0]) return fail(c, path, other, "every reward needs a name (it labels the reward's metrics)");
    if (r->name[strspn(r->name, NAME_CHARS)])
        return fail(c, path, NULL, "\"%s\" may use only letters, digits, '_' and '-' (it becomes a metric name)",
                    r->name);
    for (int j = 0; j < i; j++)
        if (!strcmp(c->cfg->rewards[j].name, r->name))
            return fail(c, path, NULL, "'%s' is also the name of rewards.%d; reward names must differ", r->name, j);
    switch (r->type) {
    case REWARD_MATH_VERIFY:
        snprintf(path, sizeof path, "rewards.%d.tolerance", i);
        if (!(r->tolerance < 1))
            return fail(c, path, other, "math_verify needs a relative tolerance in [0, 1), found %g", r->tolerance);
        break;
    case REWARD_OVERLONG:
        snprintf(path, sizeof path, "rewards.%d.%s", i, r->max_len <= 0 ? "max_len" : "buffer");
        if (r->buffer <= 0 || r->max_len <= 0 || r->buffer > r->max_len)
            return fail(c, path, other,
                        "overlong needs 0 < buffer <= max_len (the penalty ramps over the last buffer tokens "
                        "before max_len), found max_len %" PRId64 ", buffer %" PRId64
                        " (DAPO: max_len 20480, buffer 4096)",
                        r->max_len, r->buffer);
        break;
    case REWARD_LENGTH:
        snprintf(path, sizeof path, "rewards.%d.cap", i);
        if (r->cap <= 0)
            return fail(c, path, other, "length needs cap > 0 (the %s count that earns the full reward), found %" PRId64,
                        r->unit == REWARD_LENGTH_STEPS ? "step" : "token", r->cap);
        break;
    case REWARD_EXTERNAL:
        snprintf(path, sizeof path, "rewards.%d.command", i);
        if (!r->command[0])
            return fail(c, path, other, "an external reward needs a command (a shell line that answers JSON lines)");
        break;
    case REWARD_PLUGIN:
        snprintf(path, sizeof path, "rewards.%d.path", i);
        if (!r->path[0]) return fail(c, path, other, "a plugin reward needs path (a shared object)");
        break;
    default:
        break;
    }
    /* The reward module's own word, in case it checks more than the above. */
    RewardSpec spec;
    config_reward_to_spec(r, &spec);
    if (reward_spec_validate(&spec, c->err)) {
        char where[768];
        snprintf(path, sizeof path, "rewards.%d", i);
        const ConfigLoc *loc = loc_of(c, path);
        config_loc_format(loc ? loc : loc_of(c, other), where, sizeof where);
        return ponder_error_prefix(c->err, "%s%s: ", where, path);
    }
    return 0;
}

/* ---------------------------------------------------------------- entry -----*/

int config_validate_at(const PonderConfig *cfg, const ConfigLoc *locs, PonderError *err) {
    PonderError scratch;
    Check c = {.cfg = cfg, .locs = locs, .err = err ? err : &scratch};
    if (check_fields(&c) || check_model(&c) || check_data(&c) || check_run_and_eval(&c)) return c.err->code;
    for (int i = 0; i < cfg->n_rewards; i++)
        if (check_reward(&c, i)) return c.err->code;
    for (int s = 0; s < cfg->n_stages; s++)
        if (check_stage(&c, s)) return c.err->code;
    return 0;
}

int config_validate(const PonderConfig *cfg, PonderError *err) { return config_validate_at(cfg, NULL, err); }
