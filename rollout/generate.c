/* rollout/generate.c — continuous-batching generation over a shared-prompt KV
 * cache (see generate.h).
 *
 * Slots 0..n_slots-1 hold running samples; the n_prompt slots after them
 * hold prompts, each prefilled once and read by the samples of its group
 * (or copied into their slots where the backend cannot share). Requests are
 * ordered prompt-major, so a group's samples are admitted one after another
 * and a prompt slot is filled once per group; it is free again when no
 * running sample reads it. */
#include "rollout/generate.h"

#include <omp.h>    /* omp_get_max_threads, omp_get_thread_num */
#include <stdlib.h> /* calloc, free, realloc */
#include <string.h> /* memcpy, strlen */

const char *gen_finish_name(GenFinish f) {
    switch (f) {
    case GEN_FINISH_EOS: return "eos";
    case GEN_FINISH_STOP: return "stop";
    case GEN_FINISH_LENGTH: return "length";
    }
    return "unknown";
}

void gen_samples_free(GenSample *s, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        free(s[i].tokens);
        free(s[i].logp);
        s[i].tokens = NULL;
        s[i].logp = NULL;
    }
}

/* Rows x vocabulary below which a decode step samples on one thread. */
#define SAMPLE_PAR_MIN ((int64_t)1 << 12)

typedef struct Running {
    int64_t request;     /* index into out[], -1 when the slot is free */
    int64_t prompt_slot; /* the prompt slot it reads, -1: none (its own copy) */
    int64_t cap;
    Rng rng;
    int32_t last;
} Running;

typedef struct Engine {
    Model *m;
    const GenPrompt *prompts;
    const GenConfig *gc;
    GenSample *out;
    ModelKVCache *kv;
    int own_kv; /* kv was made by this call (else the caller's GenConfig.kv) */
    Sampler *samplers; /* one per OpenMP thread: a decode step's rows sample in parallel */
    int64_t n_samplers;
    Running *slots;
    int64_t n_slots, V, max_len;
    /* prompt slots n_slots .. n_slots + n_prompt - 1, readers[i] running
     * samples reading slot n_slots + i; the staged prompt (the group being
     * admitted) is in staged_slot, -1: none */
    int64_t n_prompt, *readers, staged_prompt, staged_slot;
    int share; /* the cache shares prompts (else copies them) */
    float *prompt_logits; /* [V] logits after the staged prompt */
    float *own_logits;    /* [V] logits after a prompt prefilled in a sample's slot */
    float *logits;        /* [n_slots, V] */
    int64_t *active;      /* slot ids decoded this step */
    int32_t *feed;
    int32_t *picked;      /* [n_slots] this step's tokens */
    float *picked_logp;   /* [n_slots] their log-probs */
    GenStats stats;
} Engine;

static int append_token(GenSample *s, Running *r, int32_t tok, float lp) {
    if (s->n == r->cap) {
        int64_t cap = r->cap ? 2 * r->cap : 32;
        int32_t *t = realloc(s->tokens, (size_t)cap * sizeof(int32_t));
        if (!t) return PONDER_ERR_NOMEM;
        s->tokens = t;
        float *l = realloc(s->logp, (size_t)cap * sizeof(float));
        if (!l) return PONDER_ERR_NOMEM;
        s->logp = l;
        r->cap = cap;
    }
    s->tokens[s->n] = tok;
    s->logp[s->n] = lp;
    s->n++;
    return PONDER_OK;
}

/* Whether the decoded tail of the completion ends with a stop string. */
static int ends_with_stop(const Engine *e, const GenSample *s) {
    const GenConfig *gc = e->gc;
    if (gc->n_stop == 0 || !gc->tokenizer) return 0;
    size_t longest = 0;
    for (int i = 0; i < gc->n_stop; i++)
        if (strlen(gc->stop[i]) > longest) longest = strlen(gc->stop[i]);
    /* every token decodes to at least one byte, so this many tokens suffice */
    int64_t tail = (int64_t)longest < s->n ? (int64_t)longest : s->n;
    char *text = NULL;
    if (tokenizer_decode(gc->tokenizer, s->tokens + s->n - tail, tail, &text, NULL)) return 0;
    size_t len = strlen(text);
    int hit = 0;
    for (int i = 0; i < gc->n_stop && !hit; i++) {
        size_t k = strlen(gc->stop[i]);
        hit = k > 0 && k <= len && memcmp(text + len - k, gc->stop[i], k) == 0;
    }
    free(text);
    return hit;
}

/* Records token for the sample in slot; sets its finish reason when done. */
static int take_token(Engine *e, int64_t slot, int32_t tok, float lp, int *done) {
    Running *r = &e->slots[slot];
    GenSample *s = &e->out[r->request];
    if (append_token(s, r, tok, lp)) return PONDER_ERR_NOMEM;
    r->last = tok;
    int64_t context = e->prompts[s->prompt].n + s->n;
    if (tok == e->gc->eos_id) s->finish = GEN_FINISH_EOS;
    else if (ends_with_stop(e, s)) s->finish = GEN_FINISH_STOP;
    else if (s->n >= e->gc->sampling.max_new_tokens || context >= e->max_len)
        s->finish = GEN_FINISH_LENGTH;
    *done = s->finish != 0;
    return PONDER_OK;
}

/* A prompt slot that no running sample reads (any, when prompts are
 * copied), or -1. */
static int64_t free_prompt_slot(const Engine *e) {
    for (int64_t i = 0; i < e->n_prompt; i++)
        if (!e->share || e->readers[i] == 0) return e->n_slots + i;
    return -1;
}

/* Prefills prompt p into a free prompt slot unless it is there already:
 * *ps its slot, or -1 when every prompt slot is being read. */
static int stage_prompt(Engine *e, int64_t p, int64_t *ps, PonderError *err) {
    *ps = -1;
    const GenPrompt *gp = &e->prompts[p];
    if (gp->n <= 0 || gp->n >= e->max_len)
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "generate: prompt %lld has %lld tokens; need 1..%lld (the model's "
                            "context)",
                            (long long)p, (long long)gp->n, (long long)(e->max_len - 1));
    if (e->staged_prompt == p && e->staged_slot >= 0) {
        *ps = e->staged_slot;
        return PONDER_OK;
    }
    const int64_t slot = free_prompt_slot(e);
    if (slot < 0) return PONDER_OK;
    e->staged_prompt = -1, e->staged_slot = -1;
    model_kv_reset(e->kv, slot);
    int rc = model_prefill(e->m, e->kv, slot, gp->tokens, gp->n, e->prompt_logits, err);
    if (rc) return rc;
    e->stats.prefill_tokens += gp->n;
    e->staged_prompt = p, e->staged_slot = slot, *ps = slot;
    return PONDER_OK;
}

/* Gives sample slot `slot` prompt p: read from (or copied from) its prompt
 * slot, else prefilled in the slot itself; *logits: those after the prompt. */
static int give_prompt(Engine *e, int64_t slot, int64_t p, const float **logits,
                       PonderError *err) {
    int64_t ps;
    int rc = stage_prompt(e, p, &ps, err);
    if (rc) return rc;
    Running *r = &e->slots[slot];
    model_kv_reset(e->kv, slot);
    r->prompt_slot = -1;
    if (ps < 0) {
        const GenPrompt *gp = &e->prompts[p];
        rc = model_prefill(e->m, e->kv, slot, gp->tokens, gp->n, e->own_logits, err);
        e->stats.prefill_tokens += gp->n;
        *logits = e->own_logits;
        return rc;
    }
    if (e->share && model_kv_share_prefix(e->kv, slot, ps)) {
        r->prompt_slot = ps;
        e->readers[ps - e->n_slots]++;
        e->stats.shared_prompts++;
    } else {
        model_kv_copy_slot(e->kv, slot, ps);
    }
    *logits = e->prompt_logits;
    return PONDER_OK;
}

/* The sample in slot is done: the slot and its prompt slot are free for others. */
static void release_slot(Engine *e, int64_t slot) {
    Running *r = &e->slots[slot];
    if (r->prompt_slot >= 0) e->readers[r->prompt_slot - e->n_slots]--;
    r->prompt_slot = -1;
    r->request = -1;
}

/* Puts request `req` into free slot `slot` and samples its first token from
 * the prompt's logits; *done when that token already finishes it. */
static int admit(Engine *e, int64_t slot, int64_t req, int *done, PonderError *err) {
    const GenConfig *gc = e->gc;
    const int64_t G = gc->num_generations, p = req / G, g = req % G;
    const float *prompt_logits = NULL;
    int rc = give_prompt(e, slot, p, &prompt_logits, err);
    if (rc) return rc;
    Running *r = &e->slots[slot];
    r->request = req;
    r->cap = 0;
    r->rng = rng_derive(gc->seed, (uint64_t)gc->step, (uint64_t)e->prompts[p].index, (uint64_t)g);
    GenSample *s = &e->out[req];
    s->prompt = p, s->sample = g, s->group = p, s->policy_version = gc->policy_version;
    float lp;
    int32_t tok = sampler_pick(&e->samplers[0], prompt_logits, &gc->sampling, &r->rng, &lp);
    if (take_token(e, slot, tok, lp, done))
        return ponder_error(err, PONDER_ERR_NOMEM, "generate: out of memory");
    return PONDER_OK;
}

/* Fills free slots from the queue; returns the number of running slots. */
static int fill_slots(Engine *e, int64_t *next_req, int64_t total, PonderError *err) {
    for (int64_t s = 0; s < e->n_slots; s++) {
        while (e->slots[s].request < 0 && *next_req < total) {
            int done = 0;
            int rc = admit(e, s, (*next_req)++, &done, err);
            if (rc) return rc;
            if (done) release_slot(e, s);
        }
    }
    return PONDER_OK;
}

static int decode_step(Engine *e, PonderError *err) {
    int64_t n = 0;
    for (int64_t s = 0; s < e->n_slots; s++)
        if (e->slots[s].request >= 0) {
            e->active[n] = s;
            e->feed[n] = e->slots[s].last;
            n++;
        }
    if (n == 0) return PONDER_OK;
    int rc = model_decode(e->m, e->kv, e->active, e->feed, n, e->logits, err);
    if (rc) return rc;
    e->stats.decode_tokens += n;
    e->stats.decode_steps++;
    /* Each row draws from its own stream, so the tokens do not depend on
     * which thread samples it; bookkeeping stays serial, in row order. */
#pragma omp parallel for if (n * e->V >= SAMPLE_PAR_MIN && e->n_samplers > 1) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        Sampler *sp = &e->samplers[omp_get_thread_num() % e->n_samplers];
        e->picked[i] = sampler_pick(sp, e->logits + i * e->V, &e->gc->sampling,
                                    &e->slots[e->active[i]].rng, &e->picked_logp[i]);
    }
    for (int64_t i = 0; i < n; i++) {
        int done = 0;
        if (take_token(e, e->active[i], e->picked[i], e->picked_logp[i], &done))
            return ponder_error(err, PONDER_ERR_NOMEM, "generate: out of memory");
        if (done) release_slot(e, e->active[i]);
    }
    return PONDER_OK;
}

static int any_running(const Engine *e) {
    for (int64_t s = 0; s < e->n_slots; s++)
        if (e->slots[s].request >= 0) return 1;
    return 0;
}

static void engine_free(Engine *e) {
    if (e->own_kv) model_kv_free(e->kv);
    for (int64_t i = 0; i < e->n_samplers; i++) sampler_free(&e->samplers[i]);
    free(e->samplers);
    free(e->picked);
    free(e->picked_logp);
    free(e->slots);
    free(e->readers);
    free(e->prompt_logits);
    free(e->own_logits);
    free(e->logits);
    free(e->active);
    free(e->feed);
}

/* Whether the call's samples share their group's prompt slot: not for
 * groups of one, whose rows would read two blocks for nothing (a batch-64
 * decode of rows that each read a prompt of their own from a second block
 * ran 4-19% slower than over copies; groups of 2 were level, of 8 4-8%
 * faster, bench/RESULTS.md "Fourteenth session"). */
static int shares_prompts(const Model *m, const GenConfig *gc) {
    return model_kv_shares_prefixes(m) && !gc->copy_prompts && gc->num_generations > 1;
}

/* Sample slots and prompt slots of a call over `total` samples. Prompt
 * slots where samples share them: gc->prompt_slots, by default one per
 * group that fits in the sample slots plus two, for the groups whose last
 * samples are still running when the next ones start; a group that finds
 * none prefills its samples' own slots. Where prompts are copied, one. */
static void slot_counts(const Model *m, const GenConfig *gc, int64_t total, int64_t *n_slots,
                        int64_t *n_prompt) {
    const int64_t G = gc->num_generations;
    *n_slots = gc->max_batch < total ? gc->max_batch : total;
    *n_prompt = !shares_prompts(m, gc) ? 1
                : gc->prompt_slots > 0 ? gc->prompt_slots
                                       : (*n_slots + G - 1) / G + 2;
}

int64_t rollout_kv_slots(const Model *m, const GenConfig *gc, int64_t P) {
    int64_t n_slots, n_prompt;
    slot_counts(m, gc, P * gc->num_generations, &n_slots, &n_prompt);
    return n_slots + n_prompt;
}

static int engine_init(Engine *e, Model *m, const GenPrompt *prompts, int64_t total,
                       const GenConfig *gc, GenSample *out, PonderError *err) {
    memset(e, 0, sizeof *e);
    e->m = m, e->prompts = prompts, e->gc = gc, e->out = out;
    const ModelConfig *c = model_config(m);
    e->V = c->vocab_size;
    e->max_len = c->max_seq_len;
    slot_counts(m, gc, total, &e->n_slots, &e->n_prompt);
    e->share = shares_prompts(m, gc);
    e->staged_prompt = -1, e->staged_slot = -1;
    const int64_t need = e->n_slots + e->n_prompt;
    int rc = PONDER_OK;
    if (gc->kv && model_kv_slots(gc->kv) >= need && model_kv_max_len(gc->kv) == e->max_len) {
        e->kv = gc->kv;
        for (int64_t s = 0; s < need; s++) model_kv_reset(e->kv, s);
    } else {
        rc = model_kv_create(&e->kv, m, need, e->max_len, err);
        e->own_kv = 1;
    }
    if (rc) return rc;
    const int64_t nt = omp_get_max_threads();
    e->samplers = calloc((size_t)nt, sizeof(Sampler));
    if (!e->samplers) return ponder_error(err, PONDER_ERR_NOMEM, "generate: out of memory");
    for (; e->n_samplers < nt; e->n_samplers++) {
        rc = sampler_init(&e->samplers[e->n_samplers], e->V, err);
        if (rc) return rc;
    }
    e->slots = calloc((size_t)e->n_slots, sizeof(Running));
    e->readers = calloc((size_t)e->n_prompt, sizeof(int64_t));
    e->prompt_logits = calloc((size_t)e->V, sizeof(float));
    e->own_logits = calloc((size_t)e->V, sizeof(float));
    e->logits = calloc((size_t)(e->n_slots * e->V), sizeof(float));
    e->active = calloc((size_t)e->n_slots, sizeof(int64_t));
    e->feed = calloc((size_t)e->n_slots, sizeof(int32_t));
    e->picked = calloc((size_t)e->n_slots, sizeof(int32_t));
    e->picked_logp = calloc((size_t)e->n_slots, sizeof(float));
    if (!e->slots || !e->readers || !e->prompt_logits || !e->own_logits || !e->logits ||
        !e->active || !e->feed || !e->picked || !e->picked_logp)
        return ponder_error(err, PONDER_ERR_NOMEM, "generate: out of memory");
    for (int64_t s = 0; s < e->n_slots; s++) e->slots[s].request = -1, e->slots[s].prompt_slot = -1;
    return PONDER_OK;
}

int rollout_generate_stats(Model *m, const GenPrompt *prompts, int64_t P, const GenConfig *gc,
                           GenSample *out, GenStats *stats, PonderError *err) {
    int rc = sampling_validate(&gc->sampling, err);
    if (rc) return rc;
    if (gc->num_generations <= 0 || gc->max_batch <= 0 || P <= 0 || gc->prompt_slots < 0)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "generate: need prompts > 0, num_generations > 0, max_batch > 0 and "
                            "prompt_slots >= 0");
    const int64_t total = P * gc->num_generations;
    memset(out, 0, (size_t)total * sizeof(GenSample));
    Engine e;
    rc = engine_init(&e, m, prompts, total, gc, out, err);
    int64_t next = 0;
    model_weights_frozen(m, 1);
    while (rc == PONDER_OK && (next < total || any_running(&e))) {
        rc = fill_slots(&e, &next, total, err);
        if (rc == PONDER_OK) rc = decode_step(&e, err);
    }
    model_weights_frozen(m, 0);
    if (stats) *stats = e.stats;
    engine_free(&e);
    if (rc) gen_samples_free(out, total);
    return rc;
}

int rollout_generate(Model *m, const GenPrompt *prompts, int64_t P, const GenConfig *gc,
                     GenSample *out, PonderError *err) {
    return rollout_generate_stats(m, prompts, P, gc, out, NULL, err);
}
