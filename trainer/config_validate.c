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
#include <stdarg.h>   /* va_list */
#include <stdio.h>    /* snprintf, vsnprintf */
#include <string.h>   /* memchr, memcpy, strchr, strcmp */

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

/* "<where>path: message", where is the location of path, else of other. */
static int fail(const Check *c, const char *path, const char *other, const char *fmt, ...) {
    const ConfigLoc *loc = loc_of(c, path);
    if (!loc) loc = loc_of(c, other);
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
        if (keys[i].type != CONFIG_STAGES && check_field(c, &keys[i], keys[i].path, c->cfg)) return c->err->code;
    if (c->cfg->n_stages < 1 || c->cfg->n_stages > CONFIG_MAX_STAGES)
        return fail(c, "stages", NULL, "needs 1 to %d stages, found %d", CONFIG_MAX_STAGES, c->cfg->n_stages);
    const ConfigKey *stage_keys = config_stage_keys(&n);
    for (int s = 0; s < c->cfg->n_stages; s++) {
        for (size_t i = 0; i < n; i++) {
            char path[160];
            snprintf(path, sizeof path, "stages.%d.%s", s, stage_keys[i].path);
            if (check_field(c, &stage_keys[i], path, &c->cfg->stages[s])) return c->err->code;
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
    for (int t = 0; t < s; t++) {
        if (strcmp(config_stage_name(c->cfg, t), config_stage_name(c->cfg, s))) continue;
        snprintf(path, sizeof path, "stages.%d.name", s);
        return fail(c, path, other, "'%s' is also the name of stages.%d; stage names must differ",
                    config_stage_name(c->cfg, s), t);
    }
    return 0;
}

/* ---------------------------------------------------------------- entry -----*/

int config_validate_at(const PonderConfig *cfg, const ConfigLoc *locs, PonderError *err) {
    PonderError scratch;
    Check c = {.cfg = cfg, .locs = locs, .err = err ? err : &scratch};
    if (check_fields(&c) || check_model(&c) || check_data(&c) || check_run_and_eval(&c)) return c.err->code;
    for (int s = 0; s < cfg->n_stages; s++)
        if (check_stage(&c, s)) return c.err->code;
    return 0;
}

int config_validate(const PonderConfig *cfg, PonderError *err) { return config_validate_at(cfg, NULL, err); }
