/* trainer/config.c — writing a resolved config back out as YAML, and the values
 * derived from it (the model configuration, a stage's effective settings, the
 * output directories).
 *
 * The written text is what `ponder config` prints and what checkpoints store
 * under /config, so it lists every key (a reader never has to know the
 * defaults) and must parse back to the identical struct. */
#include "trainer/config.h"

#include <inttypes.h> /* PRId64 */
#include <stdio.h>    /* fprintf, open_memstream */
#include <stdlib.h>   /* free */
#include <string.h>   /* strchr, strncmp */

#include "trainer/config_schema.h" /* ConfigKey, config_keys, config_format_value */
#include "rewards/reward.h"        /* RewardSpec, reward_spec_defaults, reward_spec_validate */

/* ---------------------------------------------------------------- writing ---*/

/* Doc comments start at this column so the values read as a column. */
#define CONFIG_DOC_COLUMN 44

static void write_line(FILE *f, const char *lead, const char *name, const char *value, const char *doc) {
    int width = fprintf(f, "%s%s:%s%s", lead, name, value[0] ? " " : "", value);
    fprintf(f, "%*s# %s\n", width < CONFIG_DOC_COLUMN ? CONFIG_DOC_COLUMN - width : 1, "", doc);
}

/* A list of mappings, every key of every item; an empty list as `[]`. */
static void write_list(const PonderConfig *cfg, FILE *f, const ConfigKey *list_key) {
    char value[CONFIG_VALUE_TEXT_MAX];
    const ConfigList *list = config_find_list(list_key->path);
    int count = config_list_count(list, cfg);
    write_line(f, "", list_key->path, count ? "" : "[]", list_key->doc);
    for (int s = 0; s < count; s++) {
        const void *item = config_list_item_const(list, cfg, s);
        for (size_t i = 0; i < list->n_keys; i++) {
            config_format_value(&list->keys[i], item, value, sizeof value);
            write_line(f, i == 0 ? "  - " : "    ", list->keys[i].path, value, list->keys[i].doc);
        }
    }
}

int config_write_yaml(const PonderConfig *cfg, FILE *f) {
    char value[CONFIG_VALUE_TEXT_MAX];
    size_t n, section_len = 0;
    const ConfigKey *keys = config_keys(&n);
    const char *section = "";
    fprintf(f, "# ponder config, resolved: defaults, extends and overrides applied\n");
    for (size_t i = 0; i < n; i++) {
        const ConfigKey *k = &keys[i];
        if (k->type == CONFIG_LIST) {
            write_list(cfg, f, k);
            section = "", section_len = 0; /* a section after a list needs its header again */
            continue;
        }
        const char *dot = strchr(k->path, '.');
        size_t len = (size_t)(dot - k->path);
        if (len != section_len || strncmp(k->path, section, len)) {
            fprintf(f, "%.*s:\n", (int)len, k->path);
            section = k->path, section_len = len;
        }
        config_format_value(k, cfg, value, sizeof value);
        write_line(f, "  ", dot + 1, value, k->doc);
    }
    return ferror(f) ? PONDER_ERR_IO : 0;
}

char *config_to_yaml_string(const PonderConfig *cfg) {
    char *text = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&text, &size);
    if (!f) return NULL;
    int rc = config_write_yaml(cfg, f);
    if (fclose(f) || rc) {
        free(text);
        return NULL;
    }
    return text;
}

/* ---------------------------------------------------------------- derived ---*/

/* SwiGLU has three matrices where a GELU MLP has two; 2/3 of 4*d_model keeps
 * the parameter count, and a multiple of 32 keeps GEMM tiles full (LLaMA does
 * the same with 256). */
static int64_t derived_d_ff(const ConfigModel *m) {
    if (m->arch == MODEL_ARCH_GPT2) return 4 * m->d_model;
    int64_t d_ff = (8 * m->d_model + 2) / 3; /* ceil(4 * d_model * 2 / 3) */
    return (d_ff + 31) / 32 * 32;
}

int config_model(const PonderConfig *cfg, ModelConfig *out, int64_t vocab_size_from_tokenizer,
                 PonderError *err) {
    const ConfigModel *m = &cfg->model;
    int64_t vocab = m->vocab_size ? m->vocab_size : vocab_size_from_tokenizer;
    if (vocab <= 0)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model.vocab_size: 0 means the tokenizer's size, but the tokenizer gave %" PRId64,
                            vocab_size_from_tokenizer);
    if (m->vocab_size && m->vocab_size < vocab_size_from_tokenizer)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model.vocab_size: %" PRId64 " is smaller than the tokenizer's vocabulary (%" PRId64 ")",
                            m->vocab_size, vocab_size_from_tokenizer);
    *out = (ModelConfig){
        .arch = m->arch,
        .vocab_size = vocab,
        .d_model = m->d_model,
        .n_layer = m->n_layer,
        .n_head = m->n_head,
        .n_kv_head = m->n_kv_head ? m->n_kv_head : m->n_head,
        .d_ff = m->d_ff ? m->d_ff : derived_d_ff(m),
        .max_seq_len = m->max_seq_len,
        .norm_eps = (float)m->norm_eps,
        .rope_theta = (float)m->rope_theta,
        .init_std = (float)m->init_std,
        .tie_embeddings = m->tie_embeddings,
        .qkv_bias = m->qkv_bias,
        .scalar_head = m->scalar_head,
    };
    return 0;
}

int64_t config_stage_seq_len(const PonderConfig *cfg, int stage) {
    int64_t v = cfg->stages[stage].seq_len;
    return v ? v : cfg->model.max_seq_len;
}

double config_stage_lr(const PonderConfig *cfg, int stage) {
    double v = cfg->stages[stage].lr;
    return v != 0 ? v : cfg->optim.lr;
}

int64_t config_stage_eval_every(const PonderConfig *cfg, int stage) {
    int64_t v = cfg->stages[stage].eval_every;
    return v ? v : cfg->eval.every;
}

bool config_stage_is_rl(ConfigStageType type) {
    return type == CONFIG_STAGE_GRPO || type == CONFIG_STAGE_PPO || type == CONFIG_STAGE_RLOO ||
           type == CONFIG_STAGE_REINFORCE_PP;
}

double config_stage_epsilon_high(const PonderConfig *cfg, int stage) {
    const ConfigStage *s = &cfg->stages[stage];
    return s->epsilon_high != 0 ? s->epsilon_high : s->epsilon;
}

double config_stage_value_lr(const PonderConfig *cfg, int stage) {
    double v = cfg->stages[stage].value_lr;
    return v != 0 ? v : config_stage_lr(cfg, stage);
}

const char *config_stage_name(const PonderConfig *cfg, int stage) {
    const ConfigStage *s = &cfg->stages[stage];
    return s->name[0] ? s->name : config_stage_type_name(s->type);
}

static int fit(char *buf, size_t size, int written, const char *what, PonderError *err) {
    if (written < 0 || (size_t)written >= size)
        return ponder_error(err, PONDER_ERR_CONFIG, "%s: path longer than %zu bytes", what, size - 1);
    return 0;
}

int config_run_dir(const PonderConfig *cfg, char *buf, size_t size, PonderError *err) {
    if (cfg->run.dir[0]) return fit(buf, size, snprintf(buf, size, "%s", cfg->run.dir), "run.dir", err);
    return fit(buf, size, snprintf(buf, size, "runs/%s", cfg->run.name), "run.dir", err);
}

int config_checkpoint_dir(const PonderConfig *cfg, char *buf, size_t size, PonderError *err) {
    if (cfg->checkpoint.dir[0])
        return fit(buf, size, snprintf(buf, size, "%s", cfg->checkpoint.dir), "checkpoint.dir", err);
    char run[CONFIG_PATH_MAX + CONFIG_NAME_MAX]; /* holds either form of config_run_dir */
    int rc = config_run_dir(cfg, run, sizeof run, err);
    if (rc) return rc;
    return fit(buf, size, snprintf(buf, size, "%s/checkpoints", run), "checkpoint.dir", err);
}

/* ---------------------------------------------------------------- rewards ---*/

void config_reward_to_spec(const ConfigReward *r, RewardSpec *s) {
    reward_spec_defaults(s, r->type, r->name);
    s->weight = r->weight;
    s->tolerance = r->tolerance;
    s->max_len = r->max_len;
    s->buffer = r->buffer;
    s->factor = r->factor;
    s->unit = r->unit;
    s->cap = r->cap;
    s->command = r->command[0] ? r->command : NULL;
    s->timeout_s = r->timeout_s;
    s->path = r->path[0] ? r->path : NULL;
    s->config_json = r->config[0] ? r->config : NULL;
}

int config_reward_specs(const PonderConfig *cfg, RewardSpec *out, int max, int *n, PonderError *err) {
    *n = 0;
    if (cfg->n_rewards < 0 || cfg->n_rewards > CONFIG_MAX_REWARDS)
        return ponder_error(err, PONDER_ERR_CONFIG, "rewards: %d rewards, expected 0 to %d", cfg->n_rewards,
                            CONFIG_MAX_REWARDS);
    if (cfg->n_rewards > max)
        return ponder_error(err, PONDER_ERR_CONFIG, "rewards: %d rewards configured, room for %d", cfg->n_rewards, max);
    for (int i = 0; i < cfg->n_rewards; i++) {
        config_reward_to_spec(&cfg->rewards[i], &out[i]);
        int rc = reward_spec_validate(&out[i], err);
        if (rc) {
            ponder_error_prefix(err, "rewards.%d: ", i);
            return rc;
        }
    }
    *n = cfg->n_rewards;
    return 0;
}
