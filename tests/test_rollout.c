/* tests/test_rollout.c — the sampler and the generation engine: exact support
 * of top-k/top-p/min-p, the greedy limit of temperature, per-sample random
 * streams independent of batching, prompt-cache sharing, stop strings across
 * tokens, and logp_mismatch between sampling and the learner's recompute. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/tokenizer.h"
#include "rollout/evaluate.h"
#include "rollout/generate.h"
#include "rollout/sampler.h"

/* ------------------------------------------------------------- sampler --- */

/* logits with probabilities 0.4, 0.3, 0.15, 0.1, 0.05 at ids 3, 0, 4, 1, 2 */
static void five_logits(float *z) {
    const float p[5] = {0.3f, 0.1f, 0.05f, 0.4f, 0.15f};
    for (int i = 0; i < 5; i++) z[i] = logf(p[i]);
}

static void expect_support(const SamplingParams *p, const char *want /* 5 chars of 0/1 */) {
    Sampler s;
    cr_assert_eq(sampler_init(&s, 5, NULL), 0);
    float z[5];
    five_logits(z);
    uint8_t keep[5];
    sampler_support(&s, z, p, keep);
    char got[6] = {0};
    for (int i = 0; i < 5; i++) got[i] = keep[i] ? '1' : '0';
    cr_expect_str_eq(got, want, "T=%g k=%lld p=%g min_p=%g", (double)p->temperature,
                     (long long)p->top_k, (double)p->top_p, (double)p->min_p);
    sampler_free(&s);
}

Test(sampler, supports_are_exact) {
    SamplingParams p = {1.0f, 0, 1.0f, 0.0f, 8};
    expect_support(&p, "11111");
    p.top_k = 2;
    expect_support(&p, "10010"); /* ids 3 and 0 */
    p.top_k = 0, p.top_p = 0.7f;
    expect_support(&p, "10010"); /* 0.4 + 0.3 reaches 0.7 */
    p.top_p = 0.71f;
    expect_support(&p, "10011"); /* needs 0.15 too */
    p.top_p = 1.0f, p.min_p = 0.3f;
    expect_support(&p, "10011"); /* keep p >= 0.12 */
    p.min_p = 0.24f;
    expect_support(&p, "11011"); /* keep p >= 0.096: 0.1 is in, 0.05 out */
}

Test(sampler, frequencies_match_the_truncated_distribution) {
    Sampler s;
    cr_assert_eq(sampler_init(&s, 5, NULL), 0);
    float z[5];
    five_logits(z);
    SamplingParams p = {1.0f, 3, 1.0f, 0.0f, 8}; /* ids 3, 0, 4 renormalised over 0.85 */
    Rng r = rng_from_seed(5);
    int64_t count[5] = {0};
    const int64_t n = 200000;
    for (int64_t i = 0; i < n; i++) count[sampler_pick(&s, z, &p, &r, NULL)]++;
    const double want[5] = {0.3 / 0.85, 0, 0, 0.4 / 0.85, 0.15 / 0.85};
    for (int i = 0; i < 5; i++) {
        double f = (double)count[i] / (double)n, sd = sqrt(want[i] * (1 - want[i]) / (double)n);
        cr_expect(fabs(f - want[i]) <= 5 * sd + 1e-12, "id %d: %.4f vs %.4f", i, f, want[i]);
    }
    sampler_free(&s);
}

Test(sampler, low_temperature_is_greedy_and_logp_is_of_the_scaled_distribution) {
    Sampler s;
    cr_assert_eq(sampler_init(&s, 5, NULL), 0);
    float z[5];
    five_logits(z);
    SamplingParams p = {1e-3f, 0, 1.0f, 0.0f, 8};
    Rng r = rng_from_seed(1);
    for (int i = 0; i < 1000; i++) cr_assert_eq(sampler_pick(&s, z, &p, &r, NULL), 3);
    SamplingParams g = sampling_greedy(8);
    float lp;
    cr_expect_eq(sampler_pick(&s, z, &g, &r, &lp), 3);
    cr_expect_float_eq(lp, logf(0.4f), 1e-6);
    /* T = 2: p ~ sqrt(p), log-prob of the chosen id under that distribution */
    SamplingParams t2 = {2.0f, 0, 1.0f, 0.0f, 8};
    int32_t id = sampler_pick(&s, z, &t2, &r, &lp);
    double norm = 0;
    for (int i = 0; i < 5; i++) norm += exp(z[i] / 2.0);
    cr_expect_float_eq(lp, z[id] / 2.0 - log(norm), 1e-5);
    sampler_free(&s);
}

Test(sampler, rejects_bad_parameters) {
    PonderError err = {0};
    SamplingParams p = {-1.0f, 0, 1.0f, 0.0f, 8};
    cr_expect_neq(sampling_validate(&p, &err), 0);
    cr_expect(strstr(err.msg, "temperature") != NULL);
    p = (SamplingParams){1.0f, 0, 0.0f, 0.0f, 8};
    cr_expect_neq(sampling_validate(&p, &err), 0);
    cr_expect(strstr(err.msg, "top_p") != NULL);
    p = (SamplingParams){1.0f, 0, 1.0f, 0.0f, 0};
    cr_expect_neq(sampling_validate(&p, &err), 0);
    cr_expect(strstr(err.msg, "max_new_tokens") != NULL);
}

/* ---------------------------------------------------------- generation --- */

static Model *random_model(ModelArch arch) {
    ModelConfig c = model_config_default();
    c.arch = arch;
    c.vocab_size = 103; /* the char tokenizer's */
    c.d_model = 32, c.n_layer = 2, c.n_head = 4, c.n_kv_head = arch == MODEL_ARCH_LLAMA ? 2 : 4;
    c.d_ff = 64, c.max_seq_len = 48, c.init_std = 0.2f;
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create(&m, &c, &err), 0, "%s", err.msg);
    model_init_weights(m, 3);
    return m;
}

typedef struct Prompts {
    GenPrompt p[4];
    int32_t ids[4][8];
} Prompts;

static void make_prompts(Prompts *ps) {
    const int64_t lens[4] = {3, 5, 2, 7};
    for (int i = 0; i < 4; i++) {
        for (int t = 0; t < lens[i]; t++) ps->ids[i][t] = (int32_t)(8 + (i * 7 + t * 3) % 90);
        ps->p[i] = (GenPrompt){ps->ids[i], lens[i], 100 + i};
    }
}

static GenConfig sampled_config(int64_t G, int64_t max_batch) {
    GenConfig gc = {.sampling = {1.0f, 0, 0.95f, 0.0f, 12},
                    .num_generations = G,
                    .max_batch = max_batch,
                    .seed = 42,
                    .step = 3,
                    .eos_id = 1};
    return gc;
}

static void expect_same_samples(const GenSample *a, const GenSample *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        cr_assert_eq(a[i].n, b[i].n, "sample %lld: %lld vs %lld tokens", (long long)i,
                     (long long)a[i].n, (long long)b[i].n);
        cr_expect_eq(memcmp(a[i].tokens, b[i].tokens, (size_t)a[i].n * sizeof(int32_t)), 0,
                     "sample %lld tokens differ", (long long)i);
        cr_expect_eq(a[i].finish, b[i].finish);
        for (int64_t t = 0; t < a[i].n; t++)
            cr_expect_float_eq(a[i].logp[t], b[i].logp[t], 1e-5);
    }
}

/* Continuous batching with 3 slots, one slot at a time, and everything at
 * once give the same samples: streams depend only on (seed, step, prompt, g). */
Test(generate, samples_do_not_depend_on_batching) {
    Model *m = random_model(MODEL_ARCH_LLAMA);
    Prompts ps;
    make_prompts(&ps);
    const int64_t G = 3, n = 4 * G;
    GenSample a[12], b[12], c[12];
    PonderError err = {0};
    GenConfig ga = sampled_config(G, 3), gb = sampled_config(G, 1), gcfg = sampled_config(G, 64);
    cr_assert_eq(rollout_generate(m, ps.p, 4, &ga, a, &err), 0, "%s", err.msg);
    cr_assert_eq(rollout_generate(m, ps.p, 4, &gb, b, &err), 0, "%s", err.msg);
    cr_assert_eq(rollout_generate(m, ps.p, 4, &gcfg, c, &err), 0, "%s", err.msg);
    expect_same_samples(a, b, n);
    expect_same_samples(a, c, n);
    /* a different batch composition: prompt 2 alone gives the same group */
    GenSample d[3];
    cr_assert_eq(rollout_generate(m, &ps.p[2], 1, &ga, d, &err), 0, "%s", err.msg);
    expect_same_samples(a + 2 * G, d, G);
    /* and the group's samples are not all identical (sampling is live) */
    int differ = 0;
    for (int64_t g = 1; g < G; g++)
        differ |= a[g].n != a[0].n || memcmp(a[g].tokens, a[0].tokens, (size_t)a[0].n * 4) != 0;
    cr_expect(differ, "all samples of a group are identical");
    gen_samples_free(a, n), gen_samples_free(b, n), gen_samples_free(c, n), gen_samples_free(d, G);
    model_free(m);
}

/* A cache kept by the caller across calls (GenConfig.kv, as an RL stage
 * does) gives the same samples as a fresh cache per call, also when the
 * previous call left longer sequences in its slots; a cache too small for
 * the call is not used (the call makes its own). */
Test(generate, reused_cache_gives_the_same_samples) {
    Model *m = random_model(MODEL_ARCH_LLAMA);
    Prompts ps;
    make_prompts(&ps);
    const int64_t G = 3, n = 4 * G;
    GenSample fresh[12], first[12], again[12], small[12];
    PonderError err = {0};
    GenConfig gc = sampled_config(G, 5);
    cr_assert_eq(rollout_generate(m, ps.p, 4, &gc, fresh, &err), 0, "%s", err.msg);
    ModelKVCache *kv = NULL, *tiny = NULL;
    cr_assert_eq(model_kv_create(&kv, m, rollout_kv_slots(m, &gc, 4), model_config(m)->max_seq_len,
                                 &err),
                 0, "%s", err.msg);
    cr_assert_eq(model_kv_create(&tiny, m, 2, model_config(m)->max_seq_len, &err), 0, "%s", err.msg);
    cr_expect_eq(rollout_kv_slots(m, &gc, 4), 5 + 2 + 2, "5 sample slots, 2 groups' prompts + 2");
    GenConfig reuse = gc, too_small = gc;
    reuse.kv = kv, too_small.kv = tiny;
    cr_assert_eq(rollout_generate(m, ps.p, 4, &reuse, first, &err), 0, "%s", err.msg);
    cr_assert_eq(rollout_generate(m, ps.p, 4, &reuse, again, &err), 0, "%s", err.msg);
    cr_assert_eq(rollout_generate(m, ps.p, 4, &too_small, small, &err), 0, "%s", err.msg);
    expect_same_samples(fresh, first, n);
    expect_same_samples(fresh, again, n);
    expect_same_samples(fresh, small, n);
    cr_expect_eq(model_kv_length(tiny, 0), 0, "a too-small cache was written to");
    gen_samples_free(fresh, n), gen_samples_free(first, n), gen_samples_free(again, n);
    gen_samples_free(small, n);
    model_kv_free(kv), model_kv_free(tiny);
    model_free(m);
}

/* Prompts read from their group's prompt slot, copied into each sample's
 * slot, or, with one prompt slot for groups that overlap (3 samples per
 * group in 4 slots), prefilled in the samples' own slots while the slot is
 * read: the same samples, and each path taken as intended (groups of one
 * copy). */
Test(generate, shared_copied_and_own_prompts_give_the_same_samples) {
    Model *m = random_model(MODEL_ARCH_LLAMA);
    cr_assert(model_kv_shares_prefixes(m));
    Prompts ps;
    make_prompts(&ps);
    const int64_t G = 3, n = 4 * G;
    GenSample shared[12], copied[12], own[12];
    GenStats st[3];
    PonderError err = {0};
    GenConfig gs = sampled_config(G, 4), gcopy = gs, gone = gs;
    gcopy.copy_prompts = 1, gone.prompt_slots = 1;
    cr_assert_eq(rollout_generate_stats(m, ps.p, 4, &gs, shared, &st[0], &err), 0, "%s", err.msg);
    cr_assert_eq(rollout_generate_stats(m, ps.p, 4, &gcopy, copied, &st[1], &err), 0, "%s", err.msg);
    cr_assert_eq(rollout_generate_stats(m, ps.p, 4, &gone, own, &st[2], &err), 0, "%s", err.msg);
    expect_same_samples(shared, copied, n);
    expect_same_samples(shared, own, n);
    const int64_t prompt_tokens = 3 + 5 + 2 + 7;
    cr_expect_eq(st[0].shared_prompts, n, "every sample reads its group's prompt slot");
    cr_expect_eq(st[0].prefill_tokens, prompt_tokens, "each prompt prefilled once");
    cr_expect_eq(st[1].shared_prompts, 0);
    cr_expect_eq(st[1].prefill_tokens, prompt_tokens);
    cr_log_info("one prompt slot: %lld of %lld samples shared, %lld prompt tokens prefilled",
                (long long)st[2].shared_prompts, (long long)n, (long long)st[2].prefill_tokens);
    cr_expect(st[2].shared_prompts > 0 && st[2].shared_prompts < n);
    cr_expect(st[2].prefill_tokens > prompt_tokens, "no sample prefilled its own prompt");
    GenConfig single = sampled_config(1, 4); /* groups of one copy: nothing to share */
    GenSample one[4];
    cr_assert_eq(rollout_generate_stats(m, ps.p, 4, &single, one, &st[0], &err), 0, "%s", err.msg);
    cr_expect_eq(st[0].shared_prompts, 0);
    gen_samples_free(one, 4);
    GenConfig bad = gs;
    bad.prompt_slots = -1;
    cr_expect_neq(rollout_generate(m, ps.p, 4, &bad, own + 0, &err), 0);
    cr_expect(strstr(err.msg, "prompt_slots") != NULL, "%s", err.msg);
    gen_samples_free(shared, n), gen_samples_free(copied, n), gen_samples_free(own, n);
    model_free(m);
}

/* The group's shared prompt cache gives the same tokens as prefilling each
 * sample's prompt on its own (G = 1 calls with the sample's stream). */
Test(generate, shared_prompt_cache_equals_independent_prefill) {
    Model *m = random_model(MODEL_ARCH_GPT2);
    Prompts ps;
    make_prompts(&ps);
    const int64_t G = 4;
    GenSample shared[4];
    PonderError err = {0};
    GenConfig gc = sampled_config(G, 8);
    cr_assert_eq(rollout_generate(m, &ps.p[1], 1, &gc, shared, &err), 0, "%s", err.msg);
    for (int64_t g = 0; g < G; g++) {
        /* an independent run: its G = g + 1 group, of which we keep sample g */
        GenConfig one = sampled_config(g + 1, 1);
        GenSample alone[4];
        cr_assert_eq(rollout_generate(m, &ps.p[1], 1, &one, alone, &err), 0, "%s", err.msg);
        expect_same_samples(&shared[g], &alone[g], 1);
        gen_samples_free(alone, g + 1);
    }
    gen_samples_free(shared, G);
    model_free(m);
}

/* Greedy generation: a stop string spanning several tokens ends the sample
 * (finish = stop) right after its last token. */
Test(generate, stop_string_across_tokens) {
    Model *m = random_model(MODEL_ARCH_LLAMA);
    Tokenizer *tok = NULL;
    PonderError err = {0};
    cr_assert_eq(tokenizer_create_char(&tok, &err), 0);
    Prompts ps;
    make_prompts(&ps);
    GenConfig gc = {.sampling = sampling_greedy(20), .num_generations = 1, .max_batch = 1,
                    .seed = 1, .eos_id = 1};
    GenSample free_run;
    cr_assert_eq(rollout_generate(m, &ps.p[0], 1, &gc, &free_run, &err), 0, "%s", err.msg);
    cr_assert_geq(free_run.n, 6, "need a longer greedy completion for this test");
    /* stop string = decoded tokens 3..5 of the unconstrained completion */
    char *text = NULL;
    cr_assert_eq(tokenizer_decode(tok, free_run.tokens + 3, 3, &text, &err), 0);
    gc.tokenizer = tok;
    gc.stop[0] = text;
    gc.n_stop = 1;
    GenSample stopped;
    cr_assert_eq(rollout_generate(m, &ps.p[0], 1, &gc, &stopped, &err), 0, "%s", err.msg);
    char *full = NULL;
    cr_assert_eq(tokenizer_decode(tok, free_run.tokens, free_run.n, &full, &err), 0);
    /* the first occurrence of the stop string may come earlier than token 3 */
    const char *hit = strstr(full, text);
    cr_assert(hit);
    char *got = NULL;
    cr_assert_eq(tokenizer_decode(tok, stopped.tokens, stopped.n, &got, &err), 0);
    cr_expect_eq(stopped.finish, GEN_FINISH_STOP);
    cr_expect_eq(strlen(got), (size_t)(hit - full) + strlen(text), "'%s' vs '%s'", got, full);
    free(got), free(full), free(text);
    gen_samples_free(&free_run, 1), gen_samples_free(&stopped, 1);
    tokenizer_free(tok);
    model_free(m);
}

/* ------------------------------------------------------- logp_mismatch --- */

/* The learner's recomputed log-probs (model_forward over prompt+completion,
 * right- or left-padded in one batch) match the sampling log-probs. */
static void check_logp_mismatch(ModelArch arch, int left_pad, float temperature) {
    Model *m = random_model(arch);
    Prompts ps;
    make_prompts(&ps);
    const int64_t G = 2, n = 4 * G;
    GenSample s[8];
    PonderError err = {0};
    GenConfig gc = sampled_config(G, 3);
    gc.sampling.temperature = temperature;
    cr_assert_eq(rollout_generate(m, ps.p, 4, &gc, s, &err), 0, "%s", err.msg);
    int64_t T = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t len = ps.p[s[i].prompt].n + s[i].n - 1;
        if (len > T) T = len;
    }
    int32_t *tok = calloc((size_t)(n * T), 4), *tgt = calloc((size_t)(n * T), 4),
            *start = calloc((size_t)n, 4);
    float *mask = calloc((size_t)(n * T), 4), *lp = calloc((size_t)(n * T), 4);
    for (int64_t i = 0; i < n; i++) {
        const GenPrompt *p = &ps.p[s[i].prompt];
        int64_t len = p->n + s[i].n - 1, off = left_pad ? T - len : 0;
        start[i] = (int32_t)off;
        for (int64_t t = 0; t < len; t++) {
            int32_t cur = t < p->n ? p->tokens[t] : s[i].tokens[t - p->n];
            int32_t nxt = t + 1 < p->n ? p->tokens[t + 1] : s[i].tokens[t + 1 - p->n];
            tok[i * T + off + t] = cur;
            tgt[i * T + off + t] = nxt;
            mask[i * T + off + t] = t + 1 >= p->n ? 1.0f : 0.0f;
        }
    }
    ModelBatch b = {n, T, tok, tgt, mask, left_pad ? start : NULL, temperature};
    cr_assert_eq(model_forward(m, &b, lp, NULL, NULL, &err), 0, "%s", err.msg);
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const GenPrompt *p = &ps.p[s[i].prompt];
        int64_t off = left_pad ? T - (p->n + s[i].n - 1) : 0;
        for (int64_t k = 0; k < s[i].n; k++)
            worst = fmax(worst, fabs((double)lp[i * T + off + p->n - 1 + k] - s[i].logp[k]));
    }
    cr_log_info("logp_mismatch (%s, %s padding): max |d| = %.3g", arch == MODEL_ARCH_LLAMA ? "llama" : "gpt2",
                left_pad ? "left" : "right", worst);
    cr_expect(worst <= 1e-4, "logp_mismatch %.3g > 1e-4", worst);
    free(tok), free(tgt), free(start), free(mask), free(lp);
    gen_samples_free(s, n);
    model_free(m);
}

Test(logp_mismatch, llama_right_padding) { check_logp_mismatch(MODEL_ARCH_LLAMA, 0, 1.0f); }
Test(logp_mismatch, llama_left_padding) { check_logp_mismatch(MODEL_ARCH_LLAMA, 1, 1.0f); }
Test(logp_mismatch, gpt2_right_padding) { check_logp_mismatch(MODEL_ARCH_GPT2, 0, 1.0f); }
Test(logp_mismatch, gpt2_left_padding) { check_logp_mismatch(MODEL_ARCH_GPT2, 1, 1.0f); }
Test(logp_mismatch, llama_temperature_0_7) { check_logp_mismatch(MODEL_ARCH_LLAMA, 0, 0.7f); }

/* --------------------------------------------------------- evaluation ---- */

Test(evaluate, answer_extraction_think_detection_and_pass_at_k) {
    char buf[64];
    cr_expect(eval_extract_answer("<think>x</think><answer> 12 </answer>", buf, sizeof buf));
    cr_expect_str_eq(buf, "12");
    cr_expect(eval_extract_answer("<answer>1</answer><answer>2</answer>", buf, sizeof buf));
    cr_expect_str_eq(buf, "2");
    cr_expect_not(eval_extract_answer("<answer>7", buf, sizeof buf));
    cr_expect_not(eval_extract_answer("no tags", buf, sizeof buf));
    cr_expect(eval_thinks("<think>3+4=7</think>"));
    cr_expect_not(eval_thinks("<think>\n\n</think><answer>7</answer>"));
    cr_expect_not(eval_thinks("<answer>7</answer>"));
    /* pass@k: n = 5, c = 2, k = 2 -> 1 - C(3,2)/C(5,2) = 1 - 3/10 */
    cr_expect_float_eq(eval_pass_at_k(5, 2, 2), 0.7, 1e-12);
    cr_expect_float_eq(eval_pass_at_k(5, 0, 3), 0.0, 1e-12);
    cr_expect_float_eq(eval_pass_at_k(5, 3, 3), 1.0, 1e-12);
    cr_expect_float_eq(eval_pass_at_k(4, 1, 1), 0.25, 1e-12);
}
