/* tests/test_rl.c — RL stages through the trainer: a GRPO stage runs end to
 * end and logs its metrics; DAPO dynamic sampling refills a batch after
 * dropping groups, trains on what it kept at the round limit, and gives up
 * with a clear error (and a checkpoint) when every group's rewards are equal;
 * GRPO raises a learnable reward within seconds (against a no-learning
 * control); micro-batches sorted by length give the update of the whole
 * mini-batch (GRPO, and PPO with a critic, a reference and two mini-batches). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/rl_internal.h"
#include "trainer/train.h"

/* A small model on configs/YAML with the run in dir; extra overrides last. */
static PonderConfig rl_config_from(const char *yaml, const char *dir, int n_extra, char **extra) {
    char dir_kv[600];
    snprintf(dir_kv, sizeof dir_kv, "run.dir=%s", dir);
    char *base[] = {dir_kv, "model.d_model=32", "model.n_layer=1", "model.n_head=2",
                    "model.max_seq_len=64", "stages.0.steps=2", "stages.0.batch_size=4",
                    "stages.1.prompts_per_step=2", "stages.1.num_generations=4",
                    "stages.1.max_new_tokens=12", "data.eval_size=4", "eval.max_new_tokens=12",
                    "runtime.threads=1"};
    char *all[32];
    int n = 0;
    for (size_t i = 0; i < sizeof base / sizeof base[0]; i++) all[n++] = base[i];
    for (int i = 0; i < n_extra; i++) all[n++] = extra[i];
    PonderConfig c;
    PonderError err = {0};
    char path[600];
    snprintf(path, sizeof path, PONDER_SOURCE_DIR "/configs/%s", yaml);
    cr_assert_eq(config_load(&c, path, n, all, &err), 0, "%s", err.msg);
    return c;
}

static PonderConfig rl_config(const char *dir, int n_extra, char **extra) {
    return rl_config_from("grpo_arith.yaml", dir, n_extra, extra);
}

static void remove_dir(const char *d) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", d);
    cr_expect_eq(system(cmd), 0);
}

Test(rl, grpo_stage_runs_and_logs_metrics, .timeout = 120) {
    char d[] = "/tmp/ponder_rl_XXXXXX";
    cr_assert(mkdtemp(d));
    char *extra[] = {"stages.1.steps=2"};
    PonderConfig c = rl_config(d, 1, extra);
    TrainOptions o = {0};
    TrainSummary s;
    PonderError err = {0};
    cr_assert_eq(train_run(&c, &o, &s, &err), 0, "%s", err.msg);
    cr_expect_eq(s.steps_done, 4);
    char cmd[800];
    snprintf(cmd, sizeof cmd,
             "test $(grep -c '\"kind\":\"rl\"' %s/metrics.jsonl) -eq 2 && "
             "grep -q '\"reward/correct\"' %s/metrics.jsonl && grep -q '\"logp_mismatch\"' %s/metrics.jsonl",
             d, d, d);
    cr_expect_eq(system(cmd), 0, "metrics.jsonl lacks the RL lines");
    remove_dir(d);
}

/* An untrained model never answers correctly and the format reward is off,
 * so every group is constant: dynamic sampling must give up and say so. */
Test(rl, dynamic_sampling_gives_up_with_a_message, .timeout = 120) {
    char d[] = "/tmp/ponder_ds_XXXXXX";
    cr_assert(mkdtemp(d));
    char *extra[] = {"stages.1.steps=2", "stages.1.dynamic_sampling=true",
                     "stages.1.max_resample_rounds=2", "rewards.1.weight=0"};
    PonderConfig c = rl_config(d, 4, extra);
    TrainOptions o = {0};
    TrainSummary s;
    PonderError err = {0};
    int rc = train_run(&c, &o, &s, &err);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "dynamic sampling: every group had equal rewards after 3 rounds") != NULL,
              "%s", err.msg);
    cr_expect(s.last_checkpoint[0] != '\0', "no checkpoint written before stopping");
    remove_dir(d);
}

/* A number after "key": in a JSON line (the metrics are flat objects). */
static double json_number(const char *line, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(line, pat);
    cr_assert(p != NULL, "no %s in %s", key, line);
    return strtod(p + strlen(pat), NULL);
}

/* Runs 3 DAPO steps with a length reward (most groups of an untrained model
 * are constant: every sample runs to max_new_tokens) and a round limit;
 * counts the steps that refilled the batch and those stopped by the limit. */
static void refill_run(const char *max_rounds, int *rl_lines, int *refilled, int *limited) {
    char d[] = "/tmp/ponder_rl_refill_XXXXXX";
    cr_assert(mkdtemp(d));
    char rounds_kv[64];
    snprintf(rounds_kv, sizeof rounds_kv, "stages.1.max_resample_rounds=%s", max_rounds);
    char *extra[] = {"stages.1.steps=3", "stages.1.prompts_per_step=6", "stages.1.num_generations=2",
                     "stages.1.dynamic_sampling=true", rounds_kv,
                     "rewards.0.type=length", "rewards.0.cap=12", "rewards.1.weight=0"};
    PonderConfig c = rl_config(d, 8, extra);
    TrainOptions o = {0};
    TrainSummary s;
    PonderError err = {0};
    cr_assert_eq(train_run(&c, &o, &s, &err), 0, "%s", err.msg);
    char path[700], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", d);
    FILE *f = fopen(path, "r");
    cr_assert(f != NULL);
    const double limit = strtod(max_rounds, NULL);
    *rl_lines = *refilled = *limited = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"kind\":\"rl\"")) continue;
        (*rl_lines)++;
        double groups = json_number(line, "groups"), rounds = json_number(line, "resample_rounds");
        double zero = json_number(line, "zero_variance_groups");
        cr_expect(groups >= 1 && groups <= 6, "groups %g", groups);
        cr_expect(rounds <= limit, "more rounds (%g) than the limit %g", rounds, limit);
        if (rounds >= 1 && groups == 6) (*refilled)++;
        if (rounds == limit && groups < 6) (*limited)++;
        if (rounds >= 1) cr_expect(zero > 0, "resampled without dropping a group");
        /* every generated token counts, kept or dropped: at least the kept ones */
        double tokens = json_number(line, "tokens_generated"), samples = json_number(line, "samples");
        double kept_tokens = samples * json_number(line, "completion_length");
        cr_expect(tokens >= kept_tokens - 0.5 && tokens > 0, "tokens_generated %g < %g kept", tokens,
                  kept_tokens);
        if (rounds >= 1) cr_expect(tokens > kept_tokens, "dropped groups' tokens not counted");
    }
    fclose(f);
    remove_dir(d);
}

/* DAPO refill: with room for 40 rounds every step refills its 6 groups
 * (measured: 12, 19 and 14 rounds); with 1 round every step stops at the
 * limit and trains on the groups it kept (measured: 2, 1 and 2 of 6). */
Test(rl, dynamic_sampling_refills_dropped_groups, .timeout = 120) {
    int lines, refilled, limited;
    refill_run("40", &lines, &refilled, &limited);
    cr_expect_eq(lines, 3);
    cr_expect_eq(refilled, 3, "only %d of 3 steps refilled their batch", refilled);
    refill_run("1", &lines, &refilled, &limited);
    cr_expect_eq(lines, 3);
    cr_expect(limited >= 1, "no step stopped at the round limit with fewer groups");
}

/* Mean reward of RL metric lines [from, to) of a run directory. */
static double mean_reward(const char *dir, int from, int to) {
    char path[700], line[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f != NULL);
    double sum = 0;
    int i = 0, n = 0;
    while (fgets(line, sizeof line, f)) {
        if (!strstr(line, "\"kind\":\"rl\"")) continue;
        if (i >= from && i < to) sum += json_number(line, "reward"), n++;
        i++;
    }
    fclose(f);
    cr_assert_eq(n, to - from, "only %d RL lines in [%d, %d)", n, from, to);
    return sum / n;
}

/* GRPO learns: an untrained model writes until max_new_tokens, and the
 * overlong reward (-1 there, 0 at 2 tokens or fewer) pays for stopping early,
 * which the policy can learn from its own samples. 40 steps take under a
 * second. Measured with these seeds: mean reward of steps 1-5 -0.957, of
 * steps 36-40 -0.135; with the learning rate at 1e-9 (the control: the same
 * samples' chance fluctuation) -0.957 and -0.922. Required: a rise of at
 * least 0.5 when learning, under 0.1 in the control. */
static double reward_rise(const char *lr) {
    char d[] = "/tmp/ponder_rl_learn_XXXXXX";
    cr_assert(mkdtemp(d));
    char lr_kv[64];
    snprintf(lr_kv, sizeof lr_kv, "stages.1.lr=%s", lr);
    char *extra[] = {"stages.0.steps=1", "stages.1.steps=40", lr_kv, "stages.1.prompts_per_step=8",
                     "rewards.0.type=overlong", "rewards.0.max_len=12", "rewards.0.buffer=10",
                     "rewards.1.weight=0"};
    PonderConfig c = rl_config(d, 8, extra);
    TrainOptions o = {0};
    TrainSummary s;
    PonderError err = {0};
    cr_assert_eq(train_run(&c, &o, &s, &err), 0, "%s", err.msg);
    double first = mean_reward(d, 0, 5), last = mean_reward(d, 35, 40);
    printf("GRPO lr %s: mean reward steps 1-5 %.3f, steps 36-40 %.3f\n", lr, first, last);
    remove_dir(d);
    return last - first;
}

Test(rl, grpo_learns_to_raise_its_reward, .timeout = 120) {
    double rise = reward_rise("1e-2"), control = reward_rise("1e-9");
    cr_expect(rise >= 0.5, "GRPO raised the mean reward by only %.3f (need >= 0.5)", rise);
    cr_expect(fabs(control) < 0.1, "the control moved by %.3f without learning", control);
}

/* ------------------------------------------------------- micro-batches ---- */

/* Six rows: prompts left-padded to Pmax 5, completions of 10, 3, 7, 10, 1
 * and 0 tokens; every model cell holds a code of its row and column. */
static TrainBatch six_rows(void) {
    static int32_t start[6] = {0, 2, 4, 1, 3, 0}, clen[6] = {10, 3, 7, 10, 1, 0};
    static int32_t tokens[6 * 14], targets[6 * 14];
    static float mask[6 * 14], cmask[6 * 10], logp[6 * 10];
    static int64_t group[6] = {0, 0, 1, 1, 2, 2};
    for (int i = 0; i < 6 * 14; i++) tokens[i] = 1000 + i, targets[i] = 2000 + i, mask[i] = (float)i;
    for (int i = 0; i < 6 * 10; i++) cmask[i] = (float)(i % 10 < clen[i / 10]), logp[i] = -(float)i;
    TrainBatch b = {6, 14, 10, 5, tokens, targets, start, mask, cmask, logp, group, clen};
    return b;
}

Test(rl_micro, plan_sorts_rows_and_keeps_the_budget) {
    TrainBatch b = six_rows();
    PonderError err = {0};
    RlMicroPlan p;
    cr_assert_eq(rl_micro_plan(&b, 0, 6, 30, &p, &err), 0, "%s", err.msg);
    /* completion length, then prompt length (Pmax - start), descending */
    const int64_t order[6] = {0, 3, 2, 1, 4, 5};
    for (int k = 0; k < 6; k++) cr_expect_eq(p.row[k], order[k], "row %d: %lld", k, (long long)p.row[k]);
    cr_expect_eq(p.first[0], 0);
    cr_expect_eq(p.first[p.n], 6);
    for (int64_t k = 0; k < p.n; k++) {
        int64_t lo = 99, hi = 0, n = p.first[k + 1] - p.first[k];
        cr_expect_gt(n, 0);
        for (int64_t j = p.first[k]; j < p.first[k + 1]; j++) {
            int64_t i = p.row[j], e = b.Pmax + b.clen[i] - 1;
            lo = b.start[i] < lo ? b.start[i] : lo;
            hi = (e > b.start[i] ? e : b.start[i] + 1) > hi ? (e > b.start[i] ? e : b.start[i] + 1) : hi;
        }
        cr_expect(n == 1 || n * (hi - lo) <= 30, "micro-batch %lld: %lld rows x %lld columns",
                  (long long)k, (long long)n, (long long)(hi - lo));
    }
    /* rows 0 and 3 span columns 0-13 and 1-13: 2 x 14 = 28 fits, a third does not */
    cr_expect_eq(p.first[1], 2);
    rl_micro_plan_free(&p);
    /* budget 1: one row each; a large budget: one micro-batch; rows 2..5 only */
    cr_assert_eq(rl_micro_plan(&b, 0, 6, 1, &p, &err), 0);
    cr_expect_eq(p.n, 6);
    rl_micro_plan_free(&p);
    cr_assert_eq(rl_micro_plan(&b, 2, 4, 1 << 20, &p, &err), 0);
    cr_expect_eq(p.n, 1);
    cr_expect_eq(p.row[0], 3);
    cr_expect_eq(p.row[3], 5);
    rl_micro_plan_free(&p);
    cr_expect_neq(rl_micro_plan(&b, 0, 6, 0, &p, &err), 0, "a zero budget was accepted");
}

/* Where one micro-batch would be mostly padding, the plan cuts even under
 * the budget: 4 rows of 100 completion tokens and 4 of 5 (prompts of 4)
 * cost 8 x 103 = 824 padded tokens in one pass, and 4 x 103 + 4 x 8 = 444
 * plus one more pass's charge in two; equal lengths stay in one. */
Test(rl_micro, plan_cuts_where_padding_costs_more_than_a_pass) {
    int32_t start[8] = {0}, clen[8];
    for (int i = 0; i < 8; i++) clen[i] = i % 2 ? 100 : 5;
    TrainBatch b = {8, 104, 100, 4, NULL, NULL, start, NULL, NULL, NULL, NULL, clen};
    PonderError err = {0};
    RlMicroPlan p;
    cr_assert_eq(rl_micro_plan(&b, 0, 8, 1 << 20, &p, &err), 0, "%s", err.msg);
    cr_expect_eq(p.n, 2, "%lld micro-batches", (long long)p.n);
    cr_expect_eq(p.first[1], 4);
    for (int k = 0; k < 8; k++)
        cr_expect_eq(clen[p.row[k]], k < 4 ? 100 : 5, "row %d: completion %d", k, clen[p.row[k]]);
    rl_micro_plan_free(&p);
    for (int i = 0; i < 8; i++) clen[i] = 100;
    cr_assert_eq(rl_micro_plan(&b, 0, 8, 1 << 20, &p, &err), 0, "%s", err.msg);
    cr_expect_eq(p.n, 1, "rows of one length were split into %lld", (long long)p.n);
    rl_micro_plan_free(&p);
}

Test(rl_micro, batch_keeps_each_rows_cells) {
    TrainBatch b = six_rows(), mb;
    PonderError err = {0};
    const int64_t idx[2] = {2, 4}; /* starts 4 and 3, completions 7 and 1 */
    cr_assert_eq(rl_micro_batch(&b, idx, 2, &mb, &err), 0, "%s", err.msg);
    /* columns 3 .. Pmax + 7 - 1 = 11: T 8, Pmax 2, Tc 7 */
    cr_expect_eq(mb.T, 8);
    cr_expect_eq(mb.Pmax, 2);
    cr_expect_eq(mb.Tc, 7);
    cr_expect_eq(mb.start[0], 1);
    cr_expect_eq(mb.start[1], 0);
    for (int k = 0; k < 2; k++)
        for (int c = 0; c < mb.T; c++) {
            int64_t at = idx[k] * b.T + 3 + c;
            cr_expect_eq(mb.tokens[k * mb.T + c], b.tokens[at]);
            cr_expect_eq(mb.targets[k * mb.T + c], b.targets[at]);
            cr_expect_eq(mb.mask[k * mb.T + c], b.mask[at]);
        }
    for (int k = 0; k < 2; k++)
        for (int t = 0; t < mb.Tc; t++) {
            cr_expect_eq(mb.cmask[k * mb.Tc + t], b.cmask[idx[k] * b.Tc + t]);
            cr_expect_eq(mb.sample_logp[k * mb.Tc + t], b.sample_logp[idx[k] * b.Tc + t]);
        }
    cr_expect_eq(mb.group[0], 1);
    cr_expect_eq(mb.group[1], 2);
    /* scatter puts a micro-batch array back where gather took it from */
    float back[60];
    for (int i = 0; i < 60; i++) back[i] = 7.0f;
    rl_micro_scatter(&b, &mb, idx, mb.sample_logp, back);
    for (int i = 0; i < 60; i++) {
        int row = i / 10, t = i % 10, in = (row == 2 || row == 4) && t < 7;
        cr_expect_eq(back[i], in ? b.sample_logp[i] : 7.0f, "cell %d", i);
    }
    rl_train_batch_free(&mb);
}

/* The last RL metrics line of a run directory. */
static void last_rl_line(const char *dir, char *line, size_t n) {
    char path[700], buf[8192];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    cr_assert(f != NULL);
    line[0] = '\0';
    while (fgets(buf, sizeof buf, f))
        if (strstr(buf, "\"kind\":\"rl\"")) snprintf(line, n, "%s", buf);
    fclose(f);
    cr_assert(line[0] != '\0', "no RL line in %s", path);
}

/* One SFT step and one RL step (unless extra says otherwise) of the config
 * with micro-batches of `budget` tokens; the run's directory in dir. */
static void micro_run(const char *yaml, const char *budget, char *dir, int n_extra, char **extra) {
    strcpy(dir, "/tmp/ponder_micro_XXXXXX");
    cr_assert(mkdtemp(dir));
    char budget_kv[64];
    snprintf(budget_kv, sizeof budget_kv, "stages.1.micro_batch_tokens=%s", budget);
    char *all[24] = {budget_kv, "stages.0.steps=1", "stages.1.steps=1"};
    int n = 3;
    for (int i = 0; i < n_extra; i++) all[n++] = extra[i];
    PonderConfig c = rl_config_from(yaml, dir, n, all);
    PonderError err = {0};
    TrainOptions o = {0};
    TrainSummary s;
    cr_assert_eq(train_run(&c, &o, &s, &err), 0, "%s", err.msg);
}

/* ckpt_compare of the latest checkpoints of two run directories. */
static CkptDiff compare_last_checkpoints(const char *run_a, const char *run_b) {
    char da[200], db[200], ca[700], cb[700];
    snprintf(da, sizeof da, "%s/checkpoints", run_a);
    snprintf(db, sizeof db, "%s/checkpoints", run_b);
    PonderError err = {0};
    cr_assert_eq(ckpt_find_latest(da, ca, sizeof ca, &err), 0, "%s", err.msg);
    cr_assert_eq(ckpt_find_latest(db, cb, sizeof cb, &err), 0, "%s", err.msg);
    CkptDiff d;
    cr_assert_eq(ckpt_compare(ca, cb, &d, &err), 0, "%s", err.msg);
    return d;
}

/* The same rollout (same seeds, same weights before the update) through one
 * pass and through micro-batches of at most 44 padded tokens (rows of up to
 * 20 columns: two or three rows each) must give the same update up to
 * the order of the sums: weights within 1e-5 of the largest entry of each
 * tensor, and the same metrics. The bits must differ somewhere, or the
 * micro-batch path did not run. */
static void expect_same_update(const char *yaml, int n_extra, char **extra) {
    char one[64], micro[64], la[8192], lb[8192];
    micro_run(yaml, "0", one, n_extra, extra);
    micro_run(yaml, "44", micro, n_extra, extra);
    CkptDiff d = compare_last_checkpoints(one, micro);
    printf("%s: micro-batched update worst relative difference %.3g (%s), %lld of %lld bits differ\n",
           yaml, d.worst_rel, d.worst_tensor, (long long)d.differing, (long long)d.params);
    cr_expect_lt(d.worst_rel, 1e-5, "%s: %s differs by %.3g", yaml, d.worst_tensor, d.worst_rel);
    cr_expect_gt(d.differing, 0, "%s: bit-identical weights: the micro-batch path did not run", yaml);
    last_rl_line(one, la, sizeof la);
    last_rl_line(micro, lb, sizeof lb);
    cr_expect_gt(json_number(la, "grad_norm"), 0.0, "%s: a zero gradient tests nothing", yaml);
    const char *keys[] = {"reward", "policy_loss", "grad_norm", "entropy", "clip_low", "clip_high",
                          "kl", "value_loss", "value_clip", "logp_mismatch"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
        double a = json_number(la, keys[k]), b = json_number(lb, keys[k]);
        cr_expect_leq(fabs(a - b), 1e-4 * fabs(a) + 1e-6, "%s %s: %.9g one pass, %.9g micro-batched",
                      yaml, keys[k], a, b);
    }
    remove_dir(one);
    remove_dir(micro);
}

/* A length reward: every sample of the first step runs to max_new_tokens
 * (equal rewards, no update, the same weights in both runs); in the second
 * some stop early, so its advantages are not all zero. */
Test(rl_micro, grpo_update_is_the_same_micro_batched, .timeout = 120) {
    char *extra[] = {"stages.1.steps=2", "rewards.0.type=length", "rewards.0.cap=12",
                     "rewards.1.weight=0"};
    expect_same_update("grpo_arith.yaml", 4, extra);
}

/* A mini-batch that fits the budget padded as it is runs in one pass, with
 * the bits of a run without micro-batches. */
Test(rl_micro, a_mini_batch_within_the_budget_is_not_cut, .timeout = 120) {
    char *extra[] = {"stages.1.steps=2", "rewards.0.type=length", "rewards.0.cap=12",
                     "rewards.1.weight=0"};
    char one[64], fits[64];
    micro_run("grpo_arith.yaml", "0", one, 4, extra);
    micro_run("grpo_arith.yaml", "100000", fits, 4, extra);
    CkptDiff d = compare_last_checkpoints(one, fits);
    cr_expect_eq(d.differing, 0, "%lld parameters differ", (long long)d.differing);
    remove_dir(one);
    remove_dir(fits);
}

/* PPO scores old log-probs, reference log-probs and values before the
 * update, and runs value losses, over two mini-batches and two epochs. */
Test(rl_micro, ppo_update_is_the_same_micro_batched, .timeout = 120) {
    char *extra[] = {"stages.1.steps=2", "stages.1.beta=0.05", "stages.1.entropy_coef=0.01",
                     "rewards.0.type=length", "rewards.0.cap=12", "rewards.1.weight=0"};
    expect_same_update("ppo_arith.yaml", 6, extra);
}
