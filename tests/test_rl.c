/* tests/test_rl.c — RL stages through the trainer: a GRPO stage runs end to
 * end and logs its metrics; DAPO dynamic sampling gives up with a clear error
 * (and a checkpoint) when every group's rewards are equal. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/train.h"

static PonderConfig rl_config(const char *dir, int n_extra, char **extra) {
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
    cr_assert_eq(config_load(&c, PONDER_SOURCE_DIR "/configs/grpo_arith.yaml", n, all, &err), 0,
                 "%s", err.msg);
    return c;
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
