/* trainer/rl_stage.c — one RL step: generate groups, score them, compute
 * advantages, update the policy (and the critic for ppo). See rl_stage.h.
 *
 * Layout. The model sees each sample as <bos> prompt completion, with prompts
 * right-aligned at column Pmax (left padding, masked by ModelBatch.start), so
 * completion token t of every sample sits at model column Pmax - 1 + t. The
 * algos/ arrays are [S, Tc] over completion tokens only; a strided copy moves
 * log-probs out of the model's [S, T] and gradients back in. */
#include "trainer/rl_stage.h"

#include <math.h>   /* sqrt, fabs, isfinite */
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* calloc, free */
#include <string.h> /* memcpy, strcmp */
#include <time.h>   /* clock_gettime */

#include "algos/advantage.h"    /* algo_adv_grpo, algo_adv_rloo, algo_adv_gae */
#include "algos/batch.h"        /* AlgoBatch */
#include "algos/loss.h"         /* algo_policy_loss, algo_value_loss */
#include "model/model_internal.h" /* tensor table for the critic copy */
#include "rollout/evaluate.h"   /* eval_thinks */
#include "rollout/generate.h"   /* rollout_generate */
#include "trainer/checkpoint.h" /* ckpt_save, ckpt_load */
#include "trainer/rl_device.h" /* the update's losses on a device backend */
#include "trainer/rl_internal.h" /* Rollout; the disaggregated side is in rl_remote.c */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ============================================================ set-up ===== */

static int copy_matching_tensors(Model *dst, const Model *src, PonderError *err) {
    size_t n;
    const ModelTensor *ts = model_tensors(dst, &n);
    float *dp = model_params(dst);
    const float *sp = model_params((Model *)src);
    for (size_t i = 0; i < n; i++) {
        const ModelTensor *s = model_find_tensor(src, ts[i].name);
        if (!s) continue; /* the critic's score head starts at zero */
        if (s->numel != ts[i].numel)
            return ponder_error(err, PONDER_ERR_SHAPE, "critic: tensor %s differs in size",
                                ts[i].name);
        memcpy(dp + ts[i].offset, sp + s->offset, s->numel * sizeof(float));
    }
    model_params_upload(dst);
    return PONDER_OK;
}

static OptimSettings critic_settings(const PonderConfig *cfg, int stage, const Optimizer *policy) {
    OptimSettings s = policy->s;
    const ConfigStage *cs = &cfg->stages[stage];
    if (cs->value_lr > 0) s.lr = (float)cs->value_lr;
    return s;
}

static void sibling_path(char *out, size_t n, const char *dir, const char *what, int64_t k) {
    snprintf(out, n, "%s/%s_%08lld.h5", dir, what, (long long)k);
}

static int load_weights(Model *m, Optimizer *opt, const char *path, PonderError *err) {
    CkptRead rd = {.model = m, .opt = opt};
    int rc = ckpt_load(path, &rd, err);
    free(rd.config_yaml);
    free(rd.metrics_jsonl);
    return rc;
}

static int save_weights(const Model *m, const Optimizer *opt, const char *path, const char *stage,
                        int stage_index, int64_t step, PonderError *err) {
    CkptWrite w = {.model = m, .opt = opt, .stage = stage, .stage_index = stage_index, .step = step};
    return ckpt_save(path, &w, err);
}

static int create_reference(RlStage *s, const char *dir, int resume, int64_t stage_start,
                            PonderError *err) {
    ModelConfig mc = *model_config(s->policy);
    int rc = model_create_on(&s->ref, &mc, model_ops(s->policy), err);
    if (rc) return rc;
    model_share_prefixes(s->ref, s->cfg->model.share_prefixes);
    char path[1100];
    sibling_path(path, sizeof path, dir, "reference", stage_start);
    if (resume) return load_weights(s->ref, NULL, path, err);
    memcpy(model_params(s->ref), model_params(s->policy), model_num_params(s->policy) * sizeof(float));
    model_params_upload(s->ref);
    if (s->dist->rank != 0) return PONDER_OK; /* every rank holds the same policy */
    return save_weights(s->ref, NULL, path, config_stage_name(s->cfg, s->stage), s->stage,
                        stage_start, err);
}

static int create_critic(RlStage *s, const char *dir, int resume, int64_t step, PonderError *err) {
    ModelConfig mc = *model_config(s->policy);
    mc.scalar_head = true;
    int rc = model_create_on(&s->critic, &mc, model_ops(s->policy), err);
    if (rc == PONDER_OK) model_share_prefixes(s->critic, s->cfg->model.share_prefixes);
    if (rc == PONDER_OK) rc = copy_matching_tensors(s->critic, s->policy, err);
    OptimSettings os = critic_settings(s->cfg, s->stage, s->opt);
    if (rc == PONDER_OK) rc = optim_create(&s->critic_opt, s->critic, &os, err);
    s->have_critic_opt = rc == PONDER_OK;
    if (rc == PONDER_OK && resume) {
        char path[1100];
        sibling_path(path, sizeof path, dir, "critic", step);
        rc = load_weights(s->critic, &s->critic_opt, path, err);
        if (rc == PONDER_OK) s->last_critic_step = step;
    }
    return rc;
}

static int create_rewards(RlStage *s, PonderError *err) {
    RewardSpec specs[8];
    int n = 0;
    int rc = config_reward_specs(s->cfg, specs, 8, &n, err);
    if (rc) return rc;
    if (n == 0) { /* the task's default: correctness of the final answer */
        reward_spec_defaults(&specs[0], REWARD_MATH_VERIFY, "correct");
        n = 1;
    }
    s->accuracy_component = -1;
    for (int i = 0; i < n; i++) {
        snprintf(s->reward_names[i], sizeof s->reward_names[i], "%s", specs[i].name);
        if (s->accuracy_component < 0 &&
            (specs[i].type == REWARD_MATH_VERIFY || specs[i].type == REWARD_EXACT))
            s->accuracy_component = i;
    }
    s->n_rewards = n;
    RewardCombine mode = (RewardCombine)s->cfg->scoring.combine;
    return reward_set_create(&s->rewards, specs, n, mode, s->cfg->scoring.eps, err);
}

int rl_stage_begin(RlStage *s, const RlRanks *ranks, const PonderConfig *cfg, int stage, Model *policy,
                   Optimizer *opt, const Tokenizer *tok, const Dataset *train,
                   const char *ckpt_dir, int resume, int64_t step, PonderError *err) {
    memset(s, 0, sizeof *s);
    s->ranks = *ranks;
    s->dist = ranks->comm;
    s->last_critic_step = -1;
    s->cfg = cfg, s->stage = stage, s->policy = policy, s->opt = opt, s->tok = tok,
    s->train = train;
    const ConfigStage *cs = &cfg->stages[stage];
    int64_t stage_start = 0;
    for (int i = 0; i < stage; i++) stage_start += cfg->stages[i].steps;
    const int learns = ranks->role != RL_ROLE_ROLLOUT; /* rollout ranks need no reference or critic */
    int rc = create_rewards(s, err);
    if (rc == PONDER_OK && learns && (cs->beta > 0 || cs->kl_in_reward))
        rc = create_reference(s, ckpt_dir, resume, stage_start, err);
    if (rc == PONDER_OK && learns && cs->type == CONFIG_STAGE_PPO)
        rc = create_critic(s, ckpt_dir, resume && step > stage_start, step, err);
    if (rc == PONDER_OK)
        rc = cs->kl_target > 0 ? algo_kl_ctl_adaptive(&s->klc, cs->beta, cs->kl_target,
                                                      (double)cs->kl_horizon, err)
                               : algo_kl_ctl_fixed(&s->klc, cs->beta, err);
    if (rc) rl_stage_end(s);
    return rc;
}

void rl_stage_end(RlStage *s) {
    rl_pending_free_all(s);
    model_free(s->ref);
    model_free(s->critic);
    if (s->have_critic_opt) optim_free(&s->critic_opt);
    reward_set_free(s->rewards);
    model_kv_free(s->gen_kv);
    memset(s, 0, sizeof *s);
}

int rl_stage_save(RlStage *s, const char *ckpt_dir, int64_t step, PonderError *err) {
    if (!s->critic) return PONDER_OK;
    char path[1100];
    sibling_path(path, sizeof path, ckpt_dir, "critic", step);
    int rc = save_weights(s->critic, &s->critic_opt, path, config_stage_name(s->cfg, s->stage),
                          s->stage, step, err);
    /* keep only the newest critic: resume starts from the newest policy checkpoint */
    if (rc == PONDER_OK && s->last_critic_step >= 0 && s->last_critic_step != step) {
        char old[1100];
        sibling_path(old, sizeof old, ckpt_dir, "critic", s->last_critic_step);
        remove(old);
    }
    if (rc == PONDER_OK) s->last_critic_step = step;
    return rc;
}

/* ========================================================== rollout ====== */

void rl_rollout_free(Rollout *r) {
    for (int64_t p = 0; p < r->P; p++) {
        data_item_free(&r->items[p]);
        free(r->prompt_ids[p]);
    }
    if (r->samples) gen_samples_free(r->samples, r->n);
    for (int64_t i = 0; i < r->n; i++) free(r->texts[i]);
    free(r->items), free(r->prompt_ids), free(r->prompt_len), free(r->samples), free(r->texts);
    free(r->reward), free(r->component);
    memset(r, 0, sizeof *r);
}

int rl_rollout_reserve(Rollout *r, int64_t groups, PonderError *err) {
    if (groups <= r->cap) return PONDER_OK;
    int64_t cap = groups, G = r->G;
#define GROW(field, count)                                                              \
    do {                                                                                \
        void *p = realloc(r->field, (size_t)(count) * sizeof *r->field);                \
        if (!p) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (rollout)"); \
        r->field = p;                                                                   \
    } while (0)
    GROW(items, cap);
    GROW(prompt_ids, cap);
    GROW(prompt_len, cap);
    GROW(samples, cap * G);
    GROW(texts, cap * G);
    GROW(reward, cap * G);
#undef GROW
    double *comp = calloc((size_t)(r->K * cap * G), sizeof(double));
    if (!comp) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (rollout)");
    for (int k = 0; k < r->K && r->component; k++)
        memcpy(comp + k * cap * G, r->component + k * r->cap * G, (size_t)(r->n) * sizeof(double));
    free(r->component);
    r->component = comp;
    r->cap = cap;
    return PONDER_OK;
}

/* A round's fresh groups, before the filter decides which to keep. */
typedef struct Round {
    int64_t P;
    DataItem *items;
    int32_t **ids;
    int64_t *len;
    GenSample *samples;
    char **texts;
    RewardScores scores;
} Round;

static void round_free(Round *rd, int64_t G) {
    for (int64_t p = 0; p < rd->P; p++) {
        if (rd->items) data_item_free(&rd->items[p]);
        if (rd->ids) free(rd->ids[p]);
    }
    if (rd->samples) gen_samples_free(rd->samples, rd->P * G);
    for (int64_t i = 0; rd->texts && i < rd->P * G; i++) free(rd->texts[i]);
    free(rd->items), free(rd->ids), free(rd->len), free(rd->samples), free(rd->texts);
    reward_scores_free(&rd->scores);
}

static int encode_prompt(const Tokenizer *tok, const char *prompt, int32_t **ids, int64_t *len,
                         PonderError *err) {
    int64_t cap = 64;
    *ids = malloc((size_t)cap * sizeof(int32_t));
    if (!*ids) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    (*ids)[0] = tokenizer_special(tok, TOK_BOS);
    *len = 1;
    return tokenizer_encode(tok, prompt, ids, len, &cap, err);
}

static int decode_completion(const Tokenizer *tok, const GenSample *g, char **text,
                             PonderError *err) {
    int64_t n = g->n;
    if (g->finish == GEN_FINISH_EOS && n > 0) n--; /* rewards see text without <eos> */
    return tokenizer_decode(tok, g->tokens, n, text, err);
}

/* Completions decoded together: the stage's rollout_batch, or every
 * completion of this rank's share of a rollout, so that a step decodes in
 * one wave of slots (each decode step costs about the same fixed work for
 * its parallel regions, whatever the batch). Samples do not depend on it. */
static int64_t rollout_batch(const RlStage *s) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    if (cs->rollout_batch > 0) return cs->rollout_batch;
    const int64_t R = s->dist->size;
    return (cs->prompts_per_step + R - 1) / R * cs->num_generations;
}

static int generate_round(RlStage *s, int64_t step, int64_t *cursor, int64_t P, Round *rd,
                          PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    const int64_t G = cs->num_generations;
    memset(rd, 0, sizeof *rd);
    if (P == 0) return PONDER_OK; /* a rank whose share of a round is empty */
    rd->P = P;
    rd->items = calloc((size_t)P, sizeof(DataItem));
    rd->ids = calloc((size_t)P, sizeof(int32_t *));
    rd->len = calloc((size_t)P, sizeof(int64_t));
    rd->samples = calloc((size_t)(P * G), sizeof(GenSample));
    rd->texts = calloc((size_t)(P * G), sizeof(char *));
    GenPrompt *gp = calloc((size_t)P, sizeof(GenPrompt));
    int rc = (!rd->items || !rd->ids || !rd->len || !rd->samples || !rd->texts || !gp)
                 ? ponder_error(err, PONDER_ERR_NOMEM, "out of memory (rollout)")
                 : PONDER_OK;
    for (int64_t p = 0; p < P && rc == PONDER_OK; p++) {
        int64_t index = *cursor + p;
        rc = dataset_get(s->train, (uint64_t)s->cfg->run.seed, index, &rd->items[p], err);
        if (rc == PONDER_OK) rc = encode_prompt(s->tok, rd->items[p].prompt, &rd->ids[p], &rd->len[p], err);
        gp[p] = (GenPrompt){rd->ids[p], rd->len[p], index};
    }
    if (rc == PONDER_OK) {
        *cursor += P;
        GenConfig gc = {.sampling = {(float)cs->temperature, cs->top_k, (float)cs->top_p,
                                     (float)cs->min_p, cs->max_new_tokens},
                        .num_generations = G,
                        .max_batch = rollout_batch(s),
                        .seed = (uint64_t)s->cfg->run.seed,
                        .step = step,
                        .eos_id = tokenizer_special(s->tok, TOK_EOS),
                        .policy_version = step};
        if (!s->gen_kv)
            rc = model_kv_create(&s->gen_kv, s->policy, rollout_kv_slots(s->policy, &gc, P),
                                 model_config(s->policy)->max_seq_len, err);
        gc.kv = s->gen_kv;
        if (rc == PONDER_OK) rc = rollout_generate(s->policy, gp, P, &gc, rd->samples, err);
        if (rc) memset(rd->samples, 0, (size_t)(P * G) * sizeof(GenSample));
    }
    for (int64_t i = 0; i < P * G && rc == PONDER_OK; i++)
        rc = decode_completion(s->tok, &rd->samples[i], &rd->texts[i], err);
    free(gp);
    return rc;
}

static int score_round(RlStage *s, Round *rd, PonderError *err) {
    const int64_t G = s->cfg->stages[s->stage].num_generations, n = rd->P * G;
    if (n == 0) return PONDER_OK;
    RewardInput *in = calloc((size_t)n, sizeof(RewardInput));
    if (!in) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (rewards)");
    for (int64_t i = 0; i < n; i++) {
        const DataItem *it = &rd->items[i / G];
        in[i] = (RewardInput){it->prompt, rd->texts[i], it->row_json, it->answer, rd->samples[i].n};
    }
    RewardGroups groups = {NULL, G};
    int rc = reward_set_score(s->rewards, in, n, groups, &rd->scores, err);
    free(in);
    return rc;
}

static double value_or_zero(RewardValue v) { return v.applicable ? v.value : 0.0; }

static int group_is_constant(const Round *rd, int64_t p, int64_t G) {
    double first = value_or_zero(rd->scores.combined[p * G]);
    for (int64_t g = 1; g < G; g++)
        if (value_or_zero(rd->scores.combined[p * G + g]) != first) return 0;
    return 1;
}

/* Moves group p of the round into the rollout (ownership of its buffers). */
static void adopt_group(Rollout *r, Round *rd, int64_t p) {
    const int64_t G = r->G, q = r->P, base = q * G;
    r->items[q] = rd->items[p];
    memset(&rd->items[p], 0, sizeof rd->items[p]);
    r->prompt_ids[q] = rd->ids[p];
    rd->ids[p] = NULL;
    r->prompt_len[q] = rd->len[p];
    for (int64_t g = 0; g < G; g++) {
        int64_t i = p * G + g;
        r->samples[base + g] = rd->samples[i];
        memset(&rd->samples[i], 0, sizeof rd->samples[i]);
        r->texts[base + g] = rd->texts[i];
        rd->texts[i] = NULL;
        r->reward[base + g] = value_or_zero(rd->scores.combined[i]);
        for (int k = 0; k < r->K; k++)
            r->component[k * r->cap * G + base + g] =
                value_or_zero(rd->scores.components[(int64_t)k * rd->P * G + i]);
    }
    r->P++;
    r->n += G;
}

/* Generates and scores prompts_per_step groups; with dynamic sampling drops
 * groups whose rewards are all equal and draws more, up to the round limit.
 * Each round's prompts (cursor .. cursor + want) are split into contiguous
 * shares, one per rank; the kept count is summed over ranks after each round,
 * so every rank agrees on whether to draw again. */
int rl_collect(RlStage *s, int64_t step, int64_t *cursor, Rollout *r, RlStepStats *st,
                   PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    const int64_t P = cs->prompts_per_step, G = cs->num_generations;
    const int64_t R = s->dist->size, me = s->dist->rank;
    r->G = G, r->K = s->n_rewards;
    int rc = rl_rollout_reserve(r, P, err);
    int64_t generated_groups = 0, constant_groups = 0, kept = 0;
    for (int64_t round = 0; rc == PONDER_OK && kept < P; round++) {
        if (round > 0 && (!cs->dynamic_sampling || round > cs->max_resample_rounds)) break;
        Round rd;
        double t0 = now_s();
        const int64_t want = round == 0 ? P : P - kept;
        const int64_t lo = want * me / R, hi = want * (me + 1) / R;
        int64_t share_cursor = *cursor + lo;
        *cursor += want;
        rc = generate_round(s, step, &share_cursor, hi - lo, &rd, err);
        double t1 = now_s();
        if (rc == PONDER_OK) rc = score_round(s, &rd, err);
        st->t_generate += t1 - t0;
        st->t_score += now_s() - t1;
        /* counted before adopt_group moves the samples out of the round */
        for (int64_t i = 0; i < rd.P * G && rc == PONDER_OK; i++)
            st->tokens_generated += rd.samples[i].n;
        for (int64_t p = 0; p < rd.P && rc == PONDER_OK; p++) {
            int constant = group_is_constant(&rd, p, G);
            constant_groups += constant;
            if (!cs->dynamic_sampling || !constant) adopt_group(r, &rd, p);
        }
        generated_groups += rd.P;
        st->resample_rounds = round;
        round_free(&rd, G);
        double counts[1] = {(double)r->P};
        if (rc == PONDER_OK)
            rc = dist_allreduce_f64(s->dist, counts, 1, DIST_SUM, "kept group count", err);
        kept = (int64_t)counts[0];
    }
    double groups[2] = {(double)generated_groups, (double)constant_groups};
    if (rc == PONDER_OK) rc = dist_allreduce_f64(s->dist, groups, 2, DIST_SUM, "group counts", err);
    st->zero_variance_groups = groups[0] > 0 ? groups[1] / groups[0] : 0;
    st->groups_kept = kept;
    if (rc == PONDER_OK && kept == 0)
        rc = ponder_error(err, PONDER_ERR_RUNTIME,
                          "dynamic sampling: every group had equal rewards after %lld rounds; "
                          "nothing to train on at step %lld (raise max_resample_rounds or "
                          "check the rewards)",
                          (long long)st->resample_rounds + 1, (long long)step + 1);
    return rc;
}

/* ============================================================ batch ====== */

static int build_batch(const Rollout *r, int mask_truncated, TrainBatch *b, PonderError *err) {
    memset(b, 0, sizeof *b);
    const int64_t S = r->n, G = r->G;
    if (S == 0) return PONDER_OK; /* this rank kept no group */
    for (int64_t p = 0; p < r->P; p++) b->Pmax = r->prompt_len[p] > b->Pmax ? r->prompt_len[p] : b->Pmax;
    for (int64_t i = 0; i < S; i++) b->Tc = r->samples[i].n > b->Tc ? r->samples[i].n : b->Tc;
    b->S = S, b->T = b->Pmax + b->Tc - 1;
    const size_t ST = (size_t)(S * b->T), SC = (size_t)(S * b->Tc);
    b->tokens = calloc(ST, sizeof(int32_t));
    b->targets = calloc(ST, sizeof(int32_t));
    b->start = calloc((size_t)S, sizeof(int32_t));
    b->mask = calloc(ST, sizeof(float));
    b->cmask = calloc(SC, sizeof(float));
    b->sample_logp = calloc(SC, sizeof(float));
    b->group = calloc((size_t)S, sizeof(int64_t));
    b->clen = calloc((size_t)S, sizeof(int32_t));
    if (!b->tokens || !b->targets || !b->start || !b->mask || !b->cmask || !b->sample_logp ||
        !b->group || !b->clen)
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (train batch)");
    for (int64_t i = 0; i < S; i++) {
        const int64_t p = i / G, Lp = r->prompt_len[p], off = b->Pmax - Lp;
        const GenSample *g = &r->samples[i];
        const int32_t *pr = r->prompt_ids[p];
        int keep = !(mask_truncated && g->finish == GEN_FINISH_LENGTH);
        b->start[i] = (int32_t)off;
        b->group[i] = p;
        b->clen[i] = (int32_t)g->n;
        for (int64_t k = 0; k < Lp + g->n - 1; k++) { /* input k predicts token k+1 */
            int64_t at = i * b->T + off + k;
            b->tokens[at] = k < Lp ? pr[k] : g->tokens[k - Lp];
            b->targets[at] = k + 1 < Lp ? pr[k + 1] : g->tokens[k + 1 - Lp];
            b->mask[at] = (k + 1 >= Lp && keep) ? 1.0f : 0.0f;
        }
        for (int64_t t = 0; t < g->n; t++) {
            b->cmask[i * b->Tc + t] = keep ? 1.0f : 0.0f;
            b->sample_logp[i * b->Tc + t] = g->logp[t];
        }
    }
    return PONDER_OK;
}

/* Completion block [rows, Tc] <-> model array [rows, T]: column Pmax-1+t. */
static void model_to_completion(const TrainBatch *b, int64_t r0, int64_t rows, const float *full,
                                float *comp) {
    for (int64_t i = 0; i < rows; i++)
        memcpy(comp + (r0 + i) * b->Tc, full + i * b->T + b->Pmax - 1, (size_t)b->Tc * sizeof(float));
}

static void completion_to_model(const TrainBatch *b, int64_t r0, int64_t rows, const float *comp,
                                float *full) {
    memset(full, 0, (size_t)(rows * b->T) * sizeof(float));
    for (int64_t i = 0; i < rows; i++)
        memcpy(full + i * b->T + b->Pmax - 1, comp + (r0 + i) * b->Tc, (size_t)b->Tc * sizeof(float));
}

static ModelBatch rows_of(const TrainBatch *b, int64_t r0, int64_t rows, float temperature) {
    ModelBatch mb = {rows, b->T, b->tokens + r0 * b->T, b->targets + r0 * b->T,
                     b->mask + r0 * b->T, b->start + r0, temperature};
    return mb;
}

/* Log-probs (and values for a critic) of rows [r0, r0 + rows), no gradient. */
static int score_rows(Model *m, const TrainBatch *b, int64_t r0, int64_t rows, float temperature,
                      float *logp_c, float *values_c, PonderError *err) {
    const size_t ST = (size_t)(rows * b->T) + 1;
    float *lp = malloc(ST * sizeof(float)), *v = values_c ? malloc(ST * sizeof(float)) : NULL;
    int rc = (!lp || (values_c && !v)) ? ponder_error(err, PONDER_ERR_NOMEM, "out of memory") : PONDER_OK;
    ModelBatch mb = rows_of(b, r0, rows, temperature);
    if (rc == PONDER_OK) rc = model_forward(m, &mb, lp, NULL, v, err);
    if (rc == PONDER_OK && logp_c) model_to_completion(b, r0, rows, lp, logp_c);
    if (rc == PONDER_OK && values_c) model_to_completion(b, r0, rows, v, values_c);
    free(lp);
    free(v);
    return rc;
}

/* ======================================================= micro-batches ==== */

/* Work on some rows of a batch: either b itself, rows [r0, r0 + rows), with
 * idx NULL; or a micro-batch b of its own (r0 0, all its rows) whose row k is
 * row idx[k] of the batch it was cut from. */
typedef int (*RowsFn)(const TrainBatch *b, const int64_t *idx, int64_t r0, int64_t rows, void *ctx,
                      PonderError *err);

/* fn on rows [r0, r0 + rows) of b as they are when there is no micro-batch
 * budget (stages.N.micro_batch_tokens 0) or they fit it padded as they are,
 * so the bits are those of a run without micro-batches; else fn once per
 * micro-batch (rl_internal.h). */
static int over_micro_batches(const TrainBatch *b, int64_t budget, int64_t r0, int64_t rows,
                              RowsFn fn, void *ctx, PonderError *err) {
    if (budget <= 0 || rows * b->T <= budget) return fn(b, NULL, r0, rows, ctx, err);
    RlMicroPlan plan;
    int rc = rl_micro_plan(b, r0, rows, budget, &plan, err);
    for (int64_t k = 0; rc == PONDER_OK && k < plan.n; k++) {
        const int64_t *idx = plan.row + plan.first[k];
        TrainBatch mb;
        rc = rl_micro_batch(b, idx, plan.first[k + 1] - plan.first[k], &mb, err);
        if (rc) break;
        rc = fn(&mb, idx, 0, mb.S, ctx, err);
        rl_train_batch_free(&mb);
    }
    rl_micro_plan_free(&plan);
    return rc;
}

typedef struct ScoreOut {
    Model *m;
    const TrainBatch *whole; /* the batch logp_c / values_c are laid out for */
    float temperature, *logp_c, *values_c;
} ScoreOut;

static int score_part(const TrainBatch *b, const int64_t *idx, int64_t r0, int64_t rows, void *ctx,
                      PonderError *err) {
    ScoreOut *o = ctx;
    if (!idx) return score_rows(o->m, b, r0, rows, o->temperature, o->logp_c, o->values_c, err);
    const size_t SC = (size_t)(b->S * b->Tc) + 1;
    float *lp = o->logp_c ? malloc(SC * sizeof(float)) : NULL;
    float *v = o->values_c ? malloc(SC * sizeof(float)) : NULL;
    int rc = (o->logp_c && !lp) || (o->values_c && !v)
                 ? ponder_error(err, PONDER_ERR_NOMEM, "out of memory")
                 : score_rows(o->m, b, 0, rows, o->temperature, lp, v, err);
    if (rc == PONDER_OK && lp) rl_micro_scatter(o->whole, b, idx, lp, o->logp_c);
    if (rc == PONDER_OK && v) rl_micro_scatter(o->whole, b, idx, v, o->values_c);
    free(lp), free(v);
    return rc;
}

/* score_rows over every row, in the stage's micro-batches. */
static int score_tokens(Model *m, const TrainBatch *b, int64_t budget, float temperature,
                        float *logp_c, float *values_c, PonderError *err) {
    if (b->S == 0) return PONDER_OK;
    ScoreOut o = {m, b, temperature, logp_c, values_c};
    model_weights_frozen(m, 1);
    int rc = over_micro_batches(b, budget, 0, b->S, score_part, &o, err);
    model_weights_frozen(m, 0);
    return rc;
}

static AlgoPolicyConfig policy_config(const RlStage *s) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    AlgoPolicyConfig pc = algo_policy_config_default();
    pc.epsilon_low = cs->epsilon;
    pc.epsilon_high = cs->epsilon_high > 0 ? cs->epsilon_high : cs->epsilon;
    pc.dual_clip_c = cs->dual_clip;
    pc.ratio_level = (AlgoRatioLevel)cs->ratio_level; /* same order: token, sequence */
    pc.agg.type = (AlgoLossType)cs->loss_type;
    pc.agg.max_completion_length = cs->max_new_tokens;
    pc.kl.estimator = (AlgoKlEstimator)cs->kl_estimator;
    pc.kl.coef = cs->kl_in_reward ? 0.0 : s->klc.value;
    pc.entropy_coef = cs->entropy_coef;
    return pc;
}

/* Whitens x over the mask-1 tokens of every rank's batch (verl masked_whiten
 * of the whole batch): local moments, summed over ranks, then applied. */
static int whiten_global(RlStage *s, const AlgoBatch *ab, const float *x, float *out,
                         PonderError *err) {
    AlgoMoments m = {0, 0, 0};
    int rc = ab->n_seq > 0 ? algo_moments_tokens(ab, x, &m, err) : PONDER_OK;
    double v[3] = {m.count, m.sum, m.sum_sq};
    if (rc == PONDER_OK) rc = dist_allreduce_f64(s->dist, v, 3, DIST_SUM, "whitening moments", err);
    m = (AlgoMoments){v[0], v[1], v[2]};
    if (rc == PONDER_OK && ab->n_seq > 0) rc = algo_whiten_apply(ab, x, &m, out, err);
    return rc;
}

/* GRPO's sequence advantages; scale_rewards batch takes the std of every
 * rank's rewards. */
static int grpo_advantages(RlStage *s, const Rollout *r, const TrainBatch *b, double *seq,
                           PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    const AlgoScaleRewards scale = (AlgoScaleRewards)cs->scale_rewards;
    AlgoMoments m = {0, 0, 0};
    int rc = PONDER_OK;
    if (scale == ALGO_SCALE_BATCH) {
        if (b->S > 0) rc = algo_moments_values(b->S, r->reward, &m, err);
        double v[3] = {m.count, m.sum, m.sum_sq};
        if (rc == PONDER_OK) rc = dist_allreduce_f64(s->dist, v, 3, DIST_SUM, "reward moments", err);
        m = (AlgoMoments){v[0], v[1], v[2]};
    }
    if (rc == PONDER_OK && b->S > 0)
        rc = algo_adv_grpo(b->S, r->reward, b->group, scale, ALGO_GRPO_STD_EPS,
                           scale == ALGO_SCALE_BATCH ? &m : NULL, seq, err);
    return rc;
}

static int advantages(RlStage *s, const Rollout *r, const TrainBatch *b, const float *old_logp,
                      const float *ref_logp, const float *values, float *adv, float *returns,
                      double *kl_sum, PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    AlgoBatch ab = {b->S, b->Tc, b->cmask};
    const int local = b->S > 0; /* a rank with no kept group still joins the reductions */
    double *seq = calloc((size_t)b->S + 1, sizeof(double));
    float *tok_rewards = calloc((size_t)(b->S * b->Tc) + 1, sizeof(float));
    int rc = (!seq || !tok_rewards) ? ponder_error(err, PONDER_ERR_NOMEM, "out of memory") : PONDER_OK;
    const int token_level = cs->type == CONFIG_STAGE_PPO ||
                            (cs->type == CONFIG_STAGE_REINFORCE_PP && !cs->rpp_baseline);
    if (rc == PONDER_OK && token_level && local) {
        AlgoKl kl = {(AlgoKlEstimator)ALGO_KL_K1, cs->kl_in_reward ? s->klc.value : 0.0, 0};
        rc = algo_token_rewards(&ab, r->reward, old_logp, ref_logp ? ref_logp : old_logp, &kl,
                                tok_rewards, kl_sum, err);
    }
    if (rc == PONDER_OK) switch (cs->type) {
        case CONFIG_STAGE_GRPO:
            rc = grpo_advantages(s, r, b, seq, err);
            if (rc == PONDER_OK && local) rc = algo_broadcast_seq(&ab, seq, adv, err);
            break;
        case CONFIG_STAGE_RLOO:
            if (local) rc = algo_adv_rloo(b->S, r->reward, b->group, seq, err);
            if (rc == PONDER_OK && local) rc = algo_broadcast_seq(&ab, seq, adv, err);
            break;
        case CONFIG_STAGE_REINFORCE_PP:
            if (cs->rpp_baseline) { /* group centring, then whitening over the batch */
                if (local) rc = algo_adv_group_center(b->S, r->reward, b->group, seq, err);
                if (rc == PONDER_OK && local) rc = algo_broadcast_seq(&ab, seq, adv, err);
                if (rc == PONDER_OK) rc = whiten_global(s, &ab, adv, adv, err);
            } else { /* discounted returns, whitened */
                if (local) rc = algo_returns_discounted(&ab, tok_rewards, cs->gamma, returns, err);
                if (rc == PONDER_OK) rc = whiten_global(s, &ab, returns, adv, err);
            }
            break;
        case CONFIG_STAGE_PPO:
            if (local) rc = algo_gae(&ab, tok_rewards, values, cs->gamma, cs->lam, adv, returns, err);
            if (rc == PONDER_OK) rc = whiten_global(s, &ab, adv, adv, err);
            break;
        default:
            rc = ponder_error(err, PONDER_ERR_CONFIG, "stage %d is not an RL stage", s->stage);
        }
    free(seq);
    free(tok_rewards);
    return rc;
}

/* ========================================================== updates ====== */

typedef struct UpdateInputs {
    const TrainBatch *b;
    int use_old; /* the loss's old log-probs are the rollout's (else logp detached) */
    /* host [S,Tc]; old_logp / ref_logp NULL when they were scored on the device */
    const float *old_logp, *ref_logp, *adv, *returns, *old_values;
    /* the same on the policy's device when its losses run there (rl_device.h);
     * NULL: the host path */
    RlDeviceBatch *dev;
    int dev_policy, dev_value; /* which of the two losses run on the device */
} UpdateInputs;

/* The loss's denominator over every rank's rows of this mini-batch (algos
 * loss.h: with one rank these equal the defaults). */
static double loss_normalizer(const AlgoAgg *agg, double seqs, double tokens) {
    switch (agg->type) {
    case ALGO_LOSS_GRPO: return seqs > 0 ? seqs : 1.0;
    case ALGO_LOSS_DR_GRPO: return (seqs > 0 ? seqs : 1.0) * (double)agg->max_completion_length;
    default: return tokens > 1.0 ? tokens : 1.0; /* bnpo, dapo */
    }
}

/* Sequences and mask-1 tokens of rows [r0, r0+rows), summed over ranks. */
static int minibatch_counts(RlStage *s, const TrainBatch *b, int64_t r0, int64_t rows,
                            double *seqs, double *tokens, PonderError *err) {
    double c[2] = {(double)rows, 0.0};
    for (int64_t i = 0; i < rows * b->Tc; i++) c[1] += b->cmask[r0 * b->Tc + i];
    int rc = dist_allreduce_f64(s->dist, c, 2, DIST_SUM, "mini-batch token counts", err);
    *seqs = c[0], *tokens = c[1];
    return rc;
}

/* Gradients summed over ranks, then one optimizer step (the same on every
 * rank: the same gradients and the same state). */
static int reduce_and_step(RlStage *s, Model *m, Optimizer *opt, OptimStepInfo *info, int *finite,
                           PonderError *err) {
    int rc = dist_allreduce_grads(s->dist, m, err);
    if (rc) return rc;
    PonderError local = {0};
    if (optim_step(opt, m, info, &local) != PONDER_OK) *finite = 0;
    return PONDER_OK;
}

/* The policy loss of rows [r0, r0 + rows) on host copies: forward (per-token
 * outputs downloaded on a device), algo_policy_loss, backward. *mismatch:
 * max |logp - sampler logp| when on-policy, else left as is. */
static int policy_loss_rows(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                            const AlgoPolicyConfig *pc, AlgoPolicyResult *res, double *mismatch,
                            PonderError *err) {
    const TrainBatch *b = u->b;
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    int rc = PONDER_OK;
    const size_t full = (size_t)(rows * b->T) + 1, comp = (size_t)(b->S * b->Tc) + 1;
    float *lp = malloc(full * sizeof(float)), *ent = malloc(full * sizeof(float));
    float *lpc = calloc(comp, sizeof(float)), *entc = calloc(comp, sizeof(float));
    float *dl = calloc(comp, sizeof(float)), *de = calloc(comp, sizeof(float));
    float *dfull = malloc(full * sizeof(float)), *defull = malloc(full * sizeof(float));
    if (!lp || !ent || !lpc || !entc || !dl || !de || !dfull || !defull)
        rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    ModelBatch mb = rows_of(b, r0, rows, (float)cs->temperature);
    if (rc == PONDER_OK) rc = model_forward(s->policy, &mb, lp, ent, NULL, err);
    if (rc == PONDER_OK) {
        model_to_completion(b, r0, rows, lp, lpc);
        model_to_completion(b, r0, rows, ent, entc);
        /* the algos batch is this mini-batch's rows: offset every array */
        const size_t o = (size_t)(r0 * b->Tc);
        AlgoBatch ab = {rows, b->Tc, b->cmask + o};
        AlgoPolicyInputs in = {lpc + o, u->old_logp ? u->old_logp + o : NULL,
                               u->ref_logp ? u->ref_logp + o : NULL, u->adv + o, entc + o};
        rc = algo_policy_loss(&ab, pc, &in, res, dl + o, de + o, err);
        if (rc == PONDER_OK && !u->old_logp) { /* on-policy: the sampler's log-probs are the old ones */
            for (int64_t i = 0; i < rows * b->Tc; i++) {
                if (b->cmask[o + i] == 0.0f) continue;
                double d = fabs((double)lpc[o + i] - b->sample_logp[o + i]);
                *mismatch = d > *mismatch ? d : *mismatch;
            }
        }
    }
    if (rc == PONDER_OK) {
        completion_to_model(b, r0, rows, dl, dfull);
        completion_to_model(b, r0, rows, de, defull);
        rc = model_backward(s->policy, dfull, cs->entropy_coef != 0 ? defull : NULL, NULL, err);
    }
    free(lp), free(ent), free(lpc), free(entc), free(dl), free(de), free(dfull), free(defull);
    return rc;
}

/* The same with the per-token arrays left on the policy's device. */
static int policy_loss_device(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                              const AlgoPolicyConfig *pc, AlgoPolicyResult *res, double *mismatch,
                              PonderError *err) {
    const TrainBatch *b = u->b;
    ModelBatch mb = rows_of(b, r0, rows, (float)s->cfg->stages[s->stage].temperature);
    AlgoBatch ab = {rows, b->Tc, b->cmask + r0 * b->Tc};
    double mm = 0.0;
    int rc = rl_device_policy_minibatch(s->policy, u->dev, &mb, r0, &ab, pc, u->use_old, res,
                                        u->use_old ? NULL : &mm, err);
    if (rc == PONDER_OK && mm > *mismatch) *mismatch = mm;
    return rc;
}

/* The value loss of rows [r0, r0 + rows) on host copies. */
static int value_loss_rows(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                           const AlgoValueConfig *vcfg, AlgoValueResult *res, PonderError *err) {
    const TrainBatch *b = u->b;
    int rc = PONDER_OK;
    const size_t full = (size_t)(rows * b->T) + 1, comp = (size_t)(b->S * b->Tc) + 1;
    float *lp = malloc(full * sizeof(float)), *v = malloc(full * sizeof(float));
    float *vc = calloc(comp, sizeof(float)), *dv = calloc(comp, sizeof(float));
    float *dvfull = malloc(full * sizeof(float));
    if (!lp || !v || !vc || !dv || !dvfull) rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    ModelBatch mb = rows_of(b, r0, rows, 1.0f);
    if (rc == PONDER_OK) rc = model_forward(s->critic, &mb, lp, NULL, v, err);
    if (rc == PONDER_OK) {
        model_to_completion(b, r0, rows, v, vc);
        const size_t o = (size_t)(r0 * b->Tc);
        AlgoBatch ab = {rows, b->Tc, b->cmask + o};
        rc = algo_value_loss(&ab, vcfg, vc + o, u->old_values + o, u->returns + o, res, dv + o, err);
    }
    if (rc == PONDER_OK) {
        completion_to_model(b, r0, rows, dv, dvfull);
        rc = model_backward(s->critic, NULL, NULL, dvfull, err); /* value head only */
    }
    free(lp), free(v), free(vc), free(dv), free(dvfull);
    return rc;
}

/* The update's inputs for some rows (RowsFn): u itself for rows of u->b, or
 * with the per-token arrays gathered for a micro-batch mb of u->b. */
typedef struct MicroInputs {
    UpdateInputs u;
    float *owned[5];
} MicroInputs;

static void micro_inputs_free(MicroInputs *mi) {
    for (int k = 0; k < 5; k++) free(mi->owned[k]);
}

static int micro_inputs(const UpdateInputs *u, const TrainBatch *mb, const int64_t *idx,
                        MicroInputs *mi, PonderError *err) {
    memset(mi, 0, sizeof *mi);
    mi->u = *u;
    if (!idx) return PONDER_OK;
    mi->u.b = mb;
    const float **field[5] = {&mi->u.old_logp, &mi->u.ref_logp, &mi->u.adv, &mi->u.returns,
                              &mi->u.old_values};
    for (int k = 0; k < 5; k++) {
        if (!*field[k]) continue;
        mi->owned[k] = malloc(((size_t)(mb->S * mb->Tc) + 1) * sizeof(float));
        if (!mi->owned[k]) {
            micro_inputs_free(mi);
            return ponder_error(err, PONDER_ERR_NOMEM, "out of memory (micro-batch inputs)");
        }
        rl_micro_gather(u->b, mb, idx, *field[k], mi->owned[k]);
        *field[k] = mi->owned[k];
    }
    return PONDER_OK;
}

/* Sums of micro-batch results: the loss parts add up (their denominators are
 * the mini-batch's), the token means are weighted by tokens. */
static void policy_result_add(AlgoPolicyResult *sum, const AlgoPolicyResult *p) {
    const double t = p->tokens;
    sum->loss += p->loss, sum->pg_loss += p->pg_loss;
    sum->kl_loss += p->kl_loss, sum->entropy_loss += p->entropy_loss;
    sum->tokens += t;
    sum->clip_low_frac += t * p->clip_low_frac, sum->clip_high_frac += t * p->clip_high_frac;
    sum->dual_clip_frac += t * p->dual_clip_frac, sum->ratio_mean += t * p->ratio_mean;
    sum->kl_mean += t * p->kl_mean, sum->approx_kl_old += t * p->approx_kl_old;
    sum->entropy_mean += t * p->entropy_mean;
}

static void policy_result_finish(AlgoPolicyResult *r) {
    const double n = r->tokens > 0.0 ? r->tokens : 1.0;
    r->clip_low_frac /= n, r->clip_high_frac /= n, r->dual_clip_frac /= n, r->ratio_mean /= n;
    r->kl_mean /= n, r->approx_kl_old /= n, r->entropy_mean /= n;
}

typedef struct PolicyParts {
    RlStage *s;
    const UpdateInputs *u;
    const AlgoPolicyConfig *pc;
    double *mismatch;
    AlgoPolicyResult sum, last;
    int64_t parts;
} PolicyParts;

static int policy_part(const TrainBatch *b, const int64_t *idx, int64_t r0, int64_t rows,
                       void *ctx, PonderError *err) {
    PolicyParts *p = ctx;
    MicroInputs mi;
    int rc = micro_inputs(p->u, b, idx, &mi, err);
    if (rc == PONDER_OK) rc = policy_loss_rows(p->s, &mi.u, r0, rows, p->pc, &p->last, p->mismatch, err);
    if (rc == PONDER_OK) policy_result_add(&p->sum, &p->last), p->parts++;
    micro_inputs_free(&mi);
    return rc;
}

/* policy_loss_rows over the stage's micro-batches (over_micro_batches). */
static int policy_loss_host(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                            const AlgoPolicyConfig *pc, AlgoPolicyResult *res, double *mismatch,
                            PonderError *err) {
    PolicyParts p = {.s = s, .u = u, .pc = pc, .mismatch = mismatch};
    model_weights_frozen(s->policy, 1); /* the optimizer steps only after the last micro-batch */
    int rc = over_micro_batches(u->b, s->cfg->stages[s->stage].micro_batch_tokens, r0, rows,
                                policy_part, &p, err);
    model_weights_frozen(s->policy, 0);
    if (p.parts > 1) policy_result_finish(&p.sum);
    *res = p.parts > 1 ? p.sum : p.last;
    return rc;
}

typedef struct ValueParts {
    RlStage *s;
    const UpdateInputs *u;
    const AlgoValueConfig *vcfg;
    AlgoValueResult sum, last; /* sum: clip_frac and value_mean weighted by tokens */
    int64_t parts;
} ValueParts;

static int value_part(const TrainBatch *b, const int64_t *idx, int64_t r0, int64_t rows, void *ctx,
                      PonderError *err) {
    ValueParts *p = ctx;
    MicroInputs mi;
    int rc = micro_inputs(p->u, b, idx, &mi, err);
    if (rc == PONDER_OK) rc = value_loss_rows(p->s, &mi.u, r0, rows, p->vcfg, &p->last, err);
    if (rc == PONDER_OK) {
        p->sum.loss += p->last.loss, p->sum.tokens += p->last.tokens;
        p->sum.clip_frac += p->last.tokens * p->last.clip_frac;
        p->sum.value_mean += p->last.tokens * p->last.value_mean;
        p->parts++;
    }
    micro_inputs_free(&mi);
    return rc;
}

/* The same for the value loss. */
static int value_loss_host(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                           const AlgoValueConfig *vcfg, AlgoValueResult *res, PonderError *err) {
    ValueParts p = {.s = s, .u = u, .vcfg = vcfg};
    model_weights_frozen(s->critic, 1);
    int rc = over_micro_batches(u->b, s->cfg->stages[s->stage].micro_batch_tokens, r0, rows,
                                value_part, &p, err);
    model_weights_frozen(s->critic, 0);
    const double n = p.sum.tokens > 0.0 ? p.sum.tokens : 1.0;
    p.sum.clip_frac /= n, p.sum.value_mean /= n;
    *res = p.parts > 1 ? p.sum : p.last;
    return rc;
}

/* seqs, tokens: the mini-batch's counts over every rank (minibatch_counts). */
static int policy_minibatch(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                            double seqs, double tokens, RlStepStats *st, double weight,
                            PonderError *err) {
    int rc = PONDER_OK;
    model_zero_grad(s->policy);
    if (rows > 0) {
        AlgoPolicyConfig pc = policy_config(s);
        pc.agg.normalizer = loss_normalizer(&pc.agg, seqs, tokens);
        AlgoPolicyResult res;
        rc = u->dev_policy ? policy_loss_device(s, u, r0, rows, &pc, &res, &st->logp_mismatch_max, err)
                           : policy_loss_host(s, u, r0, rows, &pc, &res, &st->logp_mismatch_max, err);
        if (rc == PONDER_OK) {
            /* token means become this rank's share of the global mean */
            const double share = res.tokens / (tokens > 0 ? tokens : 1.0);
            st->policy_loss += weight * res.loss;
            st->clip_low += weight * share * res.clip_low_frac;
            st->clip_high += weight * share * res.clip_high_frac;
            st->dual_clip += weight * share * res.dual_clip_frac;
            st->entropy += weight * share * res.entropy_mean;
            st->kl += weight * share * res.kl_mean;
        }
    }
    if (rc == PONDER_OK) {
        OptimStepInfo info = {0};
        int finite = 1;
        rc = reduce_and_step(s, s->policy, s->opt, &info, &finite, err);
        if (rc == PONDER_OK && finite) {
            st->grad_norm += weight * info.grad_norm;
            st->lr = info.lr;
        }
        if (!finite) st->finite = 0;
    }
    return rc;
}

static int critic_minibatch(RlStage *s, const UpdateInputs *u, int64_t r0, int64_t rows,
                            double seqs, double tokens, RlStepStats *st, double weight,
                            PonderError *err) {
    const TrainBatch *b = u->b;
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    int rc = PONDER_OK;
    model_zero_grad(s->critic);
    if (rows > 0) {
        AlgoValueConfig vcfg = {cs->cliprange_value, {ALGO_LOSS_BNPO, cs->max_new_tokens, 0}};
        vcfg.agg.normalizer = loss_normalizer(&vcfg.agg, seqs, tokens);
        AlgoValueResult res;
        if (u->dev_value) {
            ModelBatch mb = rows_of(b, r0, rows, 1.0f);
            AlgoBatch ab = {rows, b->Tc, b->cmask + r0 * b->Tc};
            rc = rl_device_value_minibatch(s->critic, u->dev, &mb, r0, &ab, &vcfg, &res, err);
        } else {
            rc = value_loss_host(s, u, r0, rows, &vcfg, &res, err);
        }
        if (rc == PONDER_OK) {
            st->value_loss += weight * res.loss;
            st->value_clip += weight * res.clip_frac * res.tokens / (tokens > 0 ? tokens : 1.0);
        }
    }
    int finite = 1;
    if (rc == PONDER_OK) rc = reduce_and_step(s, s->critic, &s->critic_opt, NULL, &finite, err);
    if (!finite) st->finite = 0;
    return rc;
}

/* Uploads the rollout's per-token inputs once when a loss runs on the
 * device (rl_device.h): the policy's, and the critic's when it has one;
 * whatever was scored on the device already (score_on_device) stays. A rank
 * without samples keeps the host path (it only joins the reductions). */
static int device_inputs(RlStage *s, UpdateInputs *u, RlDeviceBatch *dev, PonderError *err) {
    const TrainBatch *b = u->b;
    u->dev_policy = b->S > 0 && rl_device_policy_usable(s->policy);
    u->dev_value = b->S > 0 && s->critic && rl_device_value_usable(s->critic) &&
                   model_ops(s->critic) == model_ops(s->policy);
    if (!u->dev_policy && !u->dev_value) return PONDER_OK;
    int rc = PONDER_OK;
    if (!dev->ops) {
        RlDeviceInputs in = {b->cmask, NULL, NULL, NULL, NULL, NULL, NULL};
        rc = rl_device_batch_create(dev, model_ops(s->policy), b->S, b->T, b->Tc, b->Pmax, &in, err);
    }
    if (rc == PONDER_OK && !dev->adv) rc = rl_device_upload(dev, &dev->adv, u->adv, err);
    if (rc == PONDER_OK && u->dev_policy && u->use_old && !dev->old_logp)
        rc = rl_device_upload(dev, &dev->old_logp, u->old_logp, err);
    if (rc == PONDER_OK && u->dev_policy && u->ref_logp && !dev->ref_logp)
        rc = rl_device_upload(dev, &dev->ref_logp, u->ref_logp, err);
    if (rc == PONDER_OK && u->dev_policy && !u->use_old && !dev->sample_logp)
        rc = rl_device_upload(dev, &dev->sample_logp, b->sample_logp, err);
    if (rc == PONDER_OK && u->dev_value && !dev->returns)
        rc = rl_device_upload(dev, &dev->returns, u->returns, err);
    if (rc == PONDER_OK && u->dev_value && !dev->old_values)
        rc = rl_device_upload(dev, &dev->old_values, u->old_values, err);
    if (rc == PONDER_OK) u->dev = dev;
    return rc;
}

/* Mini-batches are ranges of the step's groups in global order (rank 0's
 * groups first), so they do not depend on how many ranks share the step. */
static int update(RlStage *s, const UpdateInputs *u, int64_t groups, RlStepStats *st,
                  PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    const int64_t G = cs->num_generations, R = s->dist->size;
    int64_t *all = calloc((size_t)R, sizeof(int64_t));
    if (!all) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory");
    int rc = dist_allgather(s->dist, &groups, all, sizeof(int64_t), "group counts", err);
    int64_t off = 0, total = 0;
    for (int64_t q = 0; q < R; q++) {
        if (q < s->dist->rank) off += all[q];
        total += all[q];
    }
    free(all);
    const int64_t M = cs->mini_batches < total ? cs->mini_batches : total;
    const double weight = 1.0 / (double)(M * cs->num_iterations);
    for (int64_t it = 0; it < cs->num_iterations && rc == PONDER_OK; it++)
        for (int64_t k = 0; k < M && rc == PONDER_OK; k++) {
            int64_t g0 = k * total / M - off, g1 = (k + 1) * total / M - off;
            g0 = g0 < 0 ? 0 : g0 > groups ? groups : g0;
            g1 = g1 < 0 ? 0 : g1 > groups ? groups : g1;
            const int64_t r0 = g0 * G, rows = (g1 - g0) * G;
            double seqs, tokens;
            rc = minibatch_counts(s, u->b, r0, rows, &seqs, &tokens, err);
            if (rc == PONDER_OK) rc = policy_minibatch(s, u, r0, rows, seqs, tokens, st, weight, err);
            if (rc == PONDER_OK && s->critic)
                rc = critic_minibatch(s, u, r0, rows, seqs, tokens, st, weight, err);
        }
    return rc;
}

/* ========================================================= the step ====== */

/* The step's metrics over every rank's samples: sums are reduced, times are
 * the slowest rank's. */
static int rollout_metrics(RlStage *s, const Rollout *r, RlStepStats *st, PonderError *err) {
    enum { N = 0, SUM, SQ, LEN, THINK, TRUNC, TOKENS, LOSS, CLIP_LO, CLIP_HI, DUAL, ENT, KL,
           VLOSS, VCLIP, COMP, NSUM = COMP + 8 };
    double v[NSUM] = {0};
    for (int64_t i = 0; i < r->n; i++) {
        v[SUM] += r->reward[i];
        v[SQ] += r->reward[i] * r->reward[i];
        v[LEN] += (double)r->samples[i].n;
        v[THINK] += eval_thinks(r->texts[i]);
        v[TRUNC] += r->samples[i].finish == GEN_FINISH_LENGTH;
    }
    v[N] = (double)r->n;
    v[TOKENS] = (double)st->tokens_generated;
    v[LOSS] = st->policy_loss, v[CLIP_LO] = st->clip_low, v[CLIP_HI] = st->clip_high;
    v[DUAL] = st->dual_clip, v[ENT] = st->entropy, v[KL] = st->kl;
    v[VLOSS] = st->value_loss, v[VCLIP] = st->value_clip;
    for (int k = 0; k < r->K && k < 8; k++)
        for (int64_t i = 0; i < r->n; i++) v[COMP + k] += r->component[k * r->cap * r->G + i];
    double mx[4] = {st->logp_mismatch_max, st->t_generate, st->t_score, st->t_train};
    int rc = dist_allreduce_f64(s->dist, v, NSUM, DIST_SUM, "step metrics", err);
    if (rc == PONDER_OK) rc = dist_allreduce_f64(s->dist, mx, 4, DIST_MAX, "step metrics", err);
    if (rc) return rc;
    const double n = v[N] > 0 ? v[N] : 1.0;
    st->samples = (int64_t)v[N];
    st->reward_mean = v[SUM] / n;
    st->reward_std = sqrt(fmax(0.0, v[SQ] / n - st->reward_mean * st->reward_mean));
    st->completion_length = v[LEN] / n;
    st->think_ratio = v[THINK] / n;
    st->truncated = v[TRUNC] / n;
    st->tokens_generated = (int64_t)v[TOKENS];
    st->policy_loss = v[LOSS], st->clip_low = v[CLIP_LO], st->clip_high = v[CLIP_HI];
    st->dual_clip = v[DUAL], st->entropy = v[ENT], st->kl = v[KL];
    st->value_loss = v[VLOSS], st->value_clip = v[VCLIP];
    for (int k = 0; k < r->K && k < 8; k++) st->component_mean[k] = v[COMP + k] / n;
    st->accuracy = s->accuracy_component >= 0 ? st->component_mean[s->accuracy_component] : -1.0;
    st->logp_mismatch_max = mx[0], st->t_generate = mx[1], st->t_score = mx[2], st->t_train = mx[3];
    return PONDER_OK;
}

/* Whether the advantages read per-token model outputs on the host (token
 * rewards with KL, GAE, discounted returns): as advantages() decides. */
static int token_advantages(const ConfigStage *cs) {
    return cs->type == CONFIG_STAGE_PPO ||
           (cs->type == CONFIG_STAGE_REINFORCE_PP && !cs->rpp_baseline);
}

/* Whether the token-level advantages can run on the device too: the
 * policy's table has the advantage ops, and ppo's critic (whose values GAE
 * reads) trains there. */
static int device_advantages(const RlStage *s) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    if (!token_advantages(cs) || !rl_device_advantages_usable(s->policy)) return 0;
    if (cs->type != CONFIG_STAGE_PPO) return 1;
    return s->critic && rl_device_value_usable(s->critic) &&
           model_ops(s->critic) == model_ops(s->policy);
}

/* The rollout scored without leaving the policy's device, when the losses
 * run there and the advantages need no per-token model output on the host
 * (grpo, rloo, reinforce_pp with baseline) or run there too: old and
 * reference log-probs (and the critic's values) go straight into the device
 * batch, and logp_mismatch is reduced there. The same numbers as
 * score_tokens and the host loop over the mismatch. */
static int score_on_device(RlStage *s, const TrainBatch *b, int need_old, int behaviour,
                           RlDeviceBatch *dev, RlStepStats *st, PonderError *err) {
    RlDeviceInputs in = {b->cmask, NULL, NULL, NULL, b->sample_logp, NULL, NULL};
    int rc = rl_device_batch_create(dev, model_ops(s->policy), b->S, b->T, b->Tc, b->Pmax, &in, err);
    ModelBatch all = rows_of(b, 0, b->S, (float)s->cfg->stages[s->stage].temperature);
    if (rc == PONDER_OK && behaviour) {
        rc = rl_device_upload(dev, &dev->old_logp, b->sample_logp, err);
    } else if (rc == PONDER_OK && need_old) {
        rc = rl_device_score_logp(s->policy, dev, &all, &dev->old_logp, err);
        if (rc == PONDER_OK) {
            double d = rl_device_max_abs_diff(dev, dev->old_logp, dev->sample_logp);
            st->logp_mismatch_max = d > st->logp_mismatch_max ? d : st->logp_mismatch_max;
        }
    }
    if (rc == PONDER_OK && s->ref) rc = rl_device_score_logp(s->ref, dev, &all, &dev->ref_logp, err);
    if (rc == PONDER_OK && s->critic && token_advantages(&s->cfg->stages[s->stage])) {
        ModelBatch plain = rows_of(b, 0, b->S, 1.0f); /* the critic scores at temperature 1 */
        rc = rl_device_score_values(s->critic, dev, &plain, &dev->old_values, err);
    }
    return rc;
}

/* whiten_global on the device: local moments (3 doubles down), summed over
 * ranks (the same collective as the host's), whitened in place there. */
static int whiten_global_device(RlStage *s, RlDeviceBatch *dev, const float *x, float **out,
                                PonderError *err) {
    AlgoMoments m;
    int rc = rl_device_moments(dev, x, &m, err);
    double v[3] = {m.count, m.sum, m.sum_sq};
    if (rc == PONDER_OK) rc = dist_allreduce_f64(s->dist, v, 3, DIST_SUM, "whitening moments", err);
    m = (AlgoMoments){v[0], v[1], v[2]};
    if (rc == PONDER_OK) rc = rl_device_whiten(dev, out, x, &m, err);
    return rc;
}

/* advantages() for ppo and reinforce_pp with every per-token array on the
 * device: token rewards (KL in the reward), GAE or discounted returns,
 * whitening. Ranks without samples take advantages() and join the same
 * collectives. */
static int advantages_on_device(RlStage *s, const Rollout *r, RlDeviceBatch *dev,
                                double *kl_sum, PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    const int gae = cs->type == CONFIG_STAGE_PPO;
    OpsAdvantage oa = {gae ? OPS_ADV_GAE : OPS_ADV_RETURNS, ALGO_KL_K1, 0,
                       cs->kl_in_reward ? s->klc.value : 0.0, cs->gamma, cs->lam};
    int rc = rl_device_token_advantages(dev, r->reward, &oa, kl_sum, err);
    if (rc == PONDER_OK) /* ppo whitens the advantages, reinforce_pp its returns into them */
        rc = whiten_global_device(s, dev, gae ? dev->adv : dev->returns, &dev->adv, err);
    return rc;
}

typedef struct StepArrays {
    float *old_logp, *ref_logp, *values, *adv, *returns;
} StepArrays;

static void step_arrays_free(StepArrays *a) {
    free(a->old_logp), free(a->ref_logp), free(a->values), free(a->adv), free(a->returns);
}

static int step_arrays_alloc(StepArrays *a, size_t n, int old, int ref, int values) {
    memset(a, 0, sizeof *a);
    a->adv = calloc(n + 1, sizeof(float));
    a->returns = calloc(n + 1, sizeof(float));
    if (old) a->old_logp = calloc(n + 1, sizeof(float));
    if (ref) a->ref_logp = calloc(n + 1, sizeof(float));
    if (values) a->values = calloc(n + 1, sizeof(float));
    return a->adv && a->returns && (!old || a->old_logp) && (!ref || a->ref_logp) &&
           (!values || a->values);
}

int rl_stage_step(RlStage *s, int64_t step, int64_t *cursor, RlStepStats *st, PonderError *err) {
    const ConfigStage *cs = &s->cfg->stages[s->stage];
    memset(st, 0, sizeof *st);
    st->finite = 1;
    Rollout r = {0};
    TrainBatch b = {0};
    StepArrays a = {0};
    const int remote = s->ranks.role == RL_ROLE_LEARNER;
    st->policy_version = step;
    int rc = remote ? rl_receive_rollout(s, step, cursor, &r, st, err) : rl_collect(s, step, cursor, &r, st, err);
    if (rc == PONDER_OK) rc = build_batch(&r, cs->mask_truncated, &b, err);
    double t0 = now_s();
    /* old log-probs are needed whenever the policy moves before a mini-batch
     * is used, or when a KL or token-level estimator reads them; samples that
     * may be off-policy take the behaviour policy's (the sampler's) */
    const int behaviour = remote && s->ranks.max_staleness > 0;
    const int multi = cs->num_iterations > 1 || cs->mini_batches > 1 || behaviour;
    const int token_level = cs->type == CONFIG_STAGE_PPO || cs->type == CONFIG_STAGE_REINFORCE_PP;
    const int need_old = multi || token_level || cs->kl_in_reward;
    RlDeviceBatch dev = {0};
    const int dev_policy = rc == PONDER_OK && b.S > 0 && rl_device_policy_usable(s->policy);
    const int dev_adv = dev_policy && device_advantages(s);
    const int dev_score = dev_policy && (!token_advantages(cs) || dev_adv);
    if (rc == PONDER_OK && !step_arrays_alloc(&a, (size_t)(b.S * b.Tc), need_old && !dev_score,
                                              s->ref != NULL && !dev_score,
                                              s->critic != NULL && !dev_adv))
        rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory (step arrays)");
    if (rc == PONDER_OK && dev_score)
        rc = score_on_device(s, &b, need_old, behaviour, &dev, st, err);
    else if (rc == PONDER_OK && behaviour)
        memcpy(a.old_logp, b.sample_logp, (size_t)(b.S * b.Tc) * sizeof(float));
    else if (rc == PONDER_OK && need_old) {
        rc = score_tokens(s->policy, &b, cs->micro_batch_tokens, (float)cs->temperature, a.old_logp, NULL, err);
        for (int64_t i = 0; rc == PONDER_OK && i < b.S * b.Tc; i++)
            if (b.cmask[i] != 0.0f) {
                double d = fabs((double)a.old_logp[i] - b.sample_logp[i]);
                st->logp_mismatch_max = d > st->logp_mismatch_max ? d : st->logp_mismatch_max;
            }
    }
    if (rc == PONDER_OK && s->ref && !dev_score)
        rc = score_tokens(s->ref, &b, cs->micro_batch_tokens, (float)cs->temperature, a.ref_logp, NULL, err);
    if (rc == PONDER_OK && s->critic && !dev_adv)
        rc = score_tokens(s->critic, &b, cs->micro_batch_tokens, 1.0f, NULL, a.values, err);
    double kl_sum = 0.0;
    if (rc == PONDER_OK && dev_adv)
        rc = advantages_on_device(s, &r, &dev, &kl_sum, err);
    else if (rc == PONDER_OK)
        rc = advantages(s, &r, &b, a.old_logp ? a.old_logp : b.sample_logp, a.ref_logp, a.values,
                        a.adv, a.returns, &kl_sum, err);
    if (rc == PONDER_OK) {
        UpdateInputs u = {&b,     multi,     multi ? a.old_logp : NULL, a.ref_logp, a.adv,
                          a.returns, a.values, NULL, 0, 0};
        rc = device_inputs(s, &u, &dev, err);
        if (rc == PONDER_OK) rc = update(s, &u, r.P, st, err);
    }
    rl_device_batch_free(&dev);
    if (rc == PONDER_OK && s->klc.adaptive && cs->kl_in_reward) {
        double kl[2] = {kl_sum, (double)b.S};
        rc = dist_allreduce_f64(s->dist, kl, 2, DIST_SUM, "KL sum", err);
        if (rc == PONDER_OK) rc = algo_kl_ctl_update(&s->klc, kl[0] / kl[1], (int64_t)kl[1], err);
    }
    st->t_train = now_s() - t0;
    if (rc == PONDER_OK) rc = rollout_metrics(s, &r, st, err);
    if (rc == PONDER_OK && remote && s->dist->rank == 0) /* the new policy, version step + 1 */
        rc = rl_send_weights(s, step + 1, *cursor, err);
    step_arrays_free(&a);
    rl_train_batch_free(&b);
    rl_rollout_free(&r);
    return rc;
}

/* ========================================================== metrics ====== */

char *rl_stats_json(const RlStage *s, const RlStepStats *st, int64_t step, int64_t stage_step) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    fprintf(f,
            "{\"kind\":\"rl\",\"stage\":\"%s\",\"step\":%lld,\"stage_step\":%lld,"
            "\"reward\":%.6f,\"reward_std\":%.6f",
            config_stage_name(s->cfg, s->stage), (long long)step, (long long)stage_step,
            st->reward_mean, st->reward_std);
    for (int k = 0; k < s->n_rewards && k < 8; k++)
        fprintf(f, ",\"reward/%s\":%.6f", s->reward_names[k], st->component_mean[k]);
    fprintf(f,
            ",\"accuracy\":%.6f,\"completion_length\":%.3f,\"think_ratio\":%.6f,"
            "\"truncated\":%.6f,\"kl\":%.6g,\"kl_coef\":%.6g,\"clip_low\":%.6f,\"clip_high\":%.6f,"
            "\"dual_clip\":%.6f,\"entropy\":%.6f,\"grad_norm\":%.6f,\"lr\":%.6g,"
            "\"policy_loss\":%.6g,\"value_loss\":%.6g,\"value_clip\":%.6f,"
            "\"logp_mismatch\":%.3g,\"zero_variance_groups\":%.4f,\"groups\":%lld,"
            "\"resample_rounds\":%lld,\"samples\":%lld,\"tokens_generated\":%lld,"
            "\"t_generate\":%.3f,\"t_score\":%.3f,\"t_train\":%.3f,"
            "\"gen_tokens_per_s\":%.1f,\"policy_version\":%lld,\"staleness_max\":%lld,"
            "\"elapsed_s\":%.3f,\"finite\":%s}",
            st->accuracy, st->completion_length, st->think_ratio, st->truncated, st->kl,
            s->klc.value, st->clip_low, st->clip_high, st->dual_clip, st->entropy, st->grad_norm,
            st->lr, st->policy_loss, st->value_loss, st->value_clip, st->logp_mismatch_max,
            st->zero_variance_groups, (long long)st->groups_kept, (long long)st->resample_rounds,
            (long long)st->samples, (long long)st->tokens_generated, st->t_generate, st->t_score,
            st->t_train, st->t_generate > 0 ? (double)st->tokens_generated / st->t_generate : 0.0,
            (long long)st->policy_version, (long long)st->staleness_max, st->elapsed_s,
            st->finite ? "true" : "false");
    fclose(f);
    return buf;
}
