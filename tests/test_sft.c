/* tests/test_sft.c — the SFT stage: TON thought dropout, the loss mask, exact
 * resume (2N steps == N steps + stop + resume + N steps, bit for bit), the
 * non-finite guard, and a short learning run that must reach a stated accuracy. */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include <criterion/criterion.h>
#include <sched.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "algos/sft.h"
#include "model/ops.h" /* ops_cpu_bf16 */
#include "model/tokenizer.h"
#include "rollout/dataset.h"
#include "rollout/task_arith.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/train.h"

#include <sys/wait.h> /* WEXITSTATUS */

/* Accuracy the learning test must reach (measured: see the test's log line). */
#define LEARN_BAR 0.80

/* rm -rf of a test's temporary directory (a mkdtemp result). */
static void remove_dir(const char *dir) {
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0, "could not remove %s", dir);
}

static Tokenizer *char_tokenizer(void) {
    Tokenizer *t = NULL;
    PonderError err = {0};
    cr_assert_eq(tokenizer_create_char(&t, &err), 0, "%s", err.msg);
    return t;
}

static DataItem arith_data_item(int64_t index) {
    ArithSpec spec = {.min_digits = 1, .max_digits = 3, .ops = "+"};
    ArithItem it;
    PonderError err = {0};
    cr_assert_eq(arith_item(&spec, 7, index, DATA_SPLIT_TRAIN, &it, &err), 0, "%s", err.msg);
    DataItem d = {strdup(it.prompt), strdup(it.response), strdup(it.answer), NULL, it.difficulty};
    return d;
}

/* -------------------------------------------------------- thought dropout -- */

Test(sft, drop_thought_gives_exact_empty_block) {
    char *out = NULL;
    PonderError err = {0};
    cr_assert_eq(sft_drop_thought("<think>7+5=12\n</think><answer>12</answer>", &out, &err), 0);
    cr_expect_str_eq(out, "<think>\n\n</think><answer>12</answer>");
    Tokenizer *t = char_tokenizer();
    int32_t *ids = NULL;
    int64_t n = 0, cap = 0;
    cr_assert_eq(tokenizer_encode(t, SFT_EMPTY_THOUGHT, &ids, &n, &cap, &err), 0);
    /* exactly: <think> '\n' '\n' </think> */
    cr_assert_eq(n, 4);
    cr_expect_eq(ids[0], tokenizer_special(t, TOK_THINK));
    int32_t nl = ids[1];
    cr_expect_str_eq(tokenizer_token_text(t, nl), "\n");
    cr_expect_eq(ids[2], nl);
    cr_expect_eq(ids[3], tokenizer_special(t, TOK_END_THINK));
    free(ids);
    free(out);
    cr_expect_neq(sft_drop_thought("<answer>3</answer>", &out, &err), 0);
    cr_expect(strstr(err.msg, "no <think>") != NULL, "%s", err.msg);
    tokenizer_free(t);
}

Test(sft, dropout_rate_within_binomial_tolerance) {
    Tokenizer *t = char_tokenizer();
    const int64_t n = 64, batches = 40;
    const double p = 0.3;
    DataItem items[64];
    for (int64_t i = 0; i < n; i++) items[i] = arith_data_item(i);
    int64_t dropped = 0;
    PonderError err = {0};
    for (int64_t b = 0; b < batches; b++) {
        Rng rng = rng_derive(1, 0, (uint64_t)b, 1);
        SftBatch sb;
        cr_assert_eq(sft_batch_build(&sb, t, items, n, 127, p, &rng, &err), 0, "%s", err.msg);
        dropped += sb.dropped;
        sft_batch_free(&sb);
    }
    double total = (double)(n * batches), sd = sqrt(total * p * (1 - p));
    cr_log_info("dropped %lld of %.0f (expected %.0f +- %.1f)", (long long)dropped, total, total * p, sd);
    cr_expect(fabs((double)dropped - total * p) < 4 * sd, "dropout count %lld far from %.0f",
              (long long)dropped, total * p);
    for (int64_t i = 0; i < n; i++) data_item_free(&items[i]);
    tokenizer_free(t);
}

/* ------------------------------------------------------------- loss mask -- */

Test(sft, mask_covers_exactly_the_completion) {
    Tokenizer *t = char_tokenizer();
    DataItem items[2] = {arith_data_item(1), arith_data_item(2)};
    Rng rng = rng_from_seed(1);
    SftBatch b;
    PonderError err = {0};
    cr_assert_eq(sft_batch_build(&b, t, items, 2, 127, 0.0, &rng, &err), 0, "%s", err.msg);
    for (int64_t i = 0; i < 2; i++) {
        int64_t prompt_len = (int64_t)strlen(items[i].prompt); /* char tokenizer: 1 token per char */
        int32_t *ids = NULL;
        int64_t n = 0, cap = 0;
        cr_assert_eq(tokenizer_encode(t, items[i].response, &ids, &n, &cap, &err), 0);
        int64_t completion = n + 1; /* response and <eos> */
        for (int64_t tt = 0; tt < b.T; tt++) {
            float m = b.mask[i * b.T + tt];
            /* target at position tt is sequence token tt+1; the prompt is tokens 1..prompt_len */
            int expect = tt + 1 > prompt_len && tt < prompt_len + completion;
            cr_expect_eq(m, (float)expect, "item %lld position %lld: mask %g", (long long)i,
                         (long long)tt, (double)m);
        }
        /* the last masked target is <eos> */
        cr_expect_eq(b.targets[i * b.T + prompt_len + completion - 1], tokenizer_special(t, TOK_EOS));
        free(ids);
    }
    float logp[512], d[512];
    for (int64_t i = 0; i < b.B * b.T; i++) logp[i] = -0.5f;
    double loss = sft_loss(logp, b.mask, b.B * b.T, (double)b.target_tokens, d);
    cr_expect_float_eq(loss, 0.5, 1e-9);
    for (int64_t i = 0; i < b.B * b.T; i++)
        cr_expect_float_eq(d[i], -b.mask[i] / (float)b.target_tokens, 1e-9);
    sft_batch_free(&b);
    data_item_free(&items[0]);
    data_item_free(&items[1]);
    tokenizer_free(t);
}

/* ---------------------------------------------------------------- resume -- */

static PonderConfig tiny_run_at(const char *dir, int64_t steps, const char *precision) {
    PonderConfig c;
    PonderError err = {0};
    char precision_kv[64];
    snprintf(precision_kv, sizeof precision_kv, "model.precision=%s", precision);
    char dir_kv[600];
    snprintf(dir_kv, sizeof dir_kv, "run.dir=%s", dir);
    char steps_kv[64];
    snprintf(steps_kv, sizeof steps_kv, "stages.0.steps=%lld", (long long)steps);
    char *over[] = {dir_kv, steps_kv, "model.d_model=32", "model.n_layer=2", "model.n_head=2",
                    "model.max_seq_len=64", "stages.0.batch_size=8", "stages.0.grad_accum=2",
                    "stages.0.thought_dropout=0.3", "checkpoint.every=3", "checkpoint.keep_last=5",
                    "data.eval_size=8", "eval.max_new_tokens=40", "runtime.threads=2",
                    precision_kv};
    int rc = config_load(&c, PONDER_SOURCE_DIR "/configs/sft_arith.yaml",
                         (int)(sizeof over / sizeof over[0]), over, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    return c;
}

static PonderConfig tiny_run(const char *dir, int64_t steps) { return tiny_run_at(dir, steps, "fp32"); }

static void load_final(const char *dir, int64_t step, Model **m, Optimizer *opt) {
    char path[700];
    snprintf(path, sizeof path, "%s/checkpoints/step_%08lld.h5", dir, (long long)step);
    PonderError err = {0};
    ModelConfig mc;
    cr_assert_eq(ckpt_read_model_config(path, &mc, &err), 0, "%s", err.msg);
    cr_assert_eq(model_create(m, &mc, &err), 0);
    OptimSettings s = optim_settings_default();
    cr_assert_eq(optim_create(opt, *m, &s, &err), 0);
    CkptRead rd = {.model = *m, .opt = opt};
    cr_assert_eq(ckpt_load(path, &rd, &err), 0, "%s", err.msg);
    free(rd.config_yaml);
    free(rd.metrics_jsonl);
}

/* 2N steps straight and N + stop + resume + N give the same bits; returns
 * the final weights (caller frees). */
static float *check_resume(const char *precision, size_t *n_params) {
    char a[] = "/tmp/ponder_resume_a_XXXXXX", b[] = "/tmp/ponder_resume_b_XXXXXX";
    cr_assert(mkdtemp(a) && mkdtemp(b));
    const int64_t N = 6;
    PonderError err = {0};
    TrainSummary s;
    PonderConfig ca = tiny_run_at(a, 2 * N, precision), cb = tiny_run_at(b, 2 * N, precision);
    /* each checkpoint is taken after a step, so the one written at the end of
     * the stage (step 2N) compares the full state of both runs */
    ca.checkpoint.every = 2 * N;
    TrainOptions straight = {0};
    cr_assert_eq(train_run(&ca, &straight, &s, &err), 0, "%s", err.msg);
    TrainOptions first = {.stop_at_step = N};
    cr_assert_eq(train_run(&cb, &first, &s, &err), 0, "%s", err.msg);
    cr_assert(s.stopped_early);
    cr_assert_eq(s.steps_done, N);
    TrainOptions resume = {.resume = true};
    cr_assert_eq(train_run(&cb, &resume, &s, &err), 0, "%s", err.msg);
    cr_assert_eq(s.steps_done, 2 * N);

    Model *ma = NULL, *mb = NULL;
    Optimizer oa, ob;
    load_final(a, 2 * N, &ma, &oa);
    load_final(b, 2 * N, &mb, &ob);
    size_t n = model_num_params(ma);
    cr_expect_eq(memcmp(model_params(ma), model_params(mb), n * sizeof(float)), 0,
                 "weights differ after resume");
    cr_expect_eq(memcmp(oa.m, ob.m, n * sizeof(float)), 0, "first moments differ");
    cr_expect_eq(memcmp(oa.v, ob.v, n * sizeof(float)), 0, "second moments differ");
    cr_expect_eq(oa.step, ob.step);
    /* sanity: the comparison is not vacuous — training moved the weights */
    Model *m0 = NULL;
    ModelConfig mc = *model_config(ma);
    cr_assert_eq(model_create(&m0, &mc, &err), 0);
    model_init_weights(m0, (uint64_t)ca.run.seed);
    cr_expect_neq(memcmp(model_params(ma), model_params(m0), n * sizeof(float)), 0);
    model_free(m0);
    float *weights = malloc(n * sizeof(float));
    memcpy(weights, model_params(ma), n * sizeof(float));
    *n_params = n;
    optim_free(&oa), optim_free(&ob);
    model_free(ma), model_free(mb);
    remove_dir(a);
    remove_dir(b);
    return weights;
}

Test(sft, resume_is_bit_identical, .timeout = 120) {
    size_t n;
    free(check_resume("fp32", &n));
}

/* bf16 products on the CPU resume bit for bit too, and really are another
 * computation (the weights differ from the fp32 run's). */
Test(sft, bf16_resume_is_bit_identical, .timeout = 120) {
    if (!ops_cpu_bf16()) cr_skip_test("this CPU has no AVX512-BF16: bf16 resume untested here");
    size_t n, n32;
    float *w16 = check_resume("bf16", &n), *w32 = check_resume("fp32", &n32);
    cr_assert_eq(n, n32);
    cr_expect_neq(memcmp(w16, w32, n * sizeof(float)), 0, "bf16 training gave fp32's weights");
    free(w16), free(w32);
}

Test(sft, resume_without_checkpoint_is_a_clear_error) {
    char d[] = "/tmp/ponder_noresume_XXXXXX";
    cr_assert(mkdtemp(d));
    PonderConfig c = tiny_run(d, 2);
    TrainOptions o = {.resume = true};
    TrainSummary s;
    PonderError err = {0};
    cr_expect_neq(train_run(&c, &o, &s, &err), 0);
    cr_expect(strstr(err.msg, "--resume") != NULL, "%s", err.msg);
    remove_dir(d);
}

/* --------------------------------------------------------- non-finite guard */

Test(sft, non_finite_steps_stop_with_a_checkpoint) {
    char d[] = "/tmp/ponder_nan_XXXXXX";
    cr_assert(mkdtemp(d));
    PonderConfig c = tiny_run(d, 20);
    c.optim.lr = 1e38; /* the first update overflows the weights; later losses are NaN */
    c.optim.grad_clip = 0;
    c.optim.warmup_steps = 0;
    c.stages[0].max_bad_steps = 3;
    TrainOptions o = {0};
    TrainSummary s;
    PonderError err = {0};
    int rc = train_run(&c, &o, &s, &err);
    cr_expect_neq(rc, 0);
    cr_expect(strstr(err.msg, "non-finite steps in a row") != NULL, "%s", err.msg);
    cr_expect_eq(s.skipped_steps, 3);
    cr_expect(s.last_checkpoint[0] != '\0', "no checkpoint written");
    remove_dir(d);
}

/* -------------------------------------------------------------- learning -- */

/* A small model learns 1–2 digit addition with its chain of thought from
 * scratch; the bar is well below what it reaches so that the test is stable,
 * and far above chance (a wrong format or a broken gradient gives 0). */
Test(sft, learns_two_digit_addition, .timeout = 240) {
    char d[] = "/tmp/ponder_learn_XXXXXX";
    cr_assert(mkdtemp(d));
    PonderConfig c;
    PonderError err = {0};
    char dir_kv[600];
    snprintf(dir_kv, sizeof dir_kv, "run.dir=%s", d);
    char *over[] = {dir_kv, "model.d_model=64", "model.n_layer=2", "model.n_head=4",
                    "model.max_seq_len=64", "data.max_digits=2", "data.eval_max_digits=2",
                    "data.eval_size=200", "stages.0.steps=600", "stages.0.batch_size=32",
                    "stages.0.thought_dropout=0", "optim.lr=3e-3", "optim.warmup_steps=20",
                    "checkpoint.every=0", "eval.every=0", "eval.max_new_tokens=40",
                    "runtime.threads=2"};
    cr_assert_eq(config_load(&c, PONDER_SOURCE_DIR "/configs/sft_arith.yaml",
                             (int)(sizeof over / sizeof over[0]), over, &err), 0, "%s", err.msg);
    TrainOptions o = {0};
    TrainSummary s;
    cr_assert_eq(train_run(&c, &o, &s, &err), 0, "%s", err.msg);
    cr_log_info("2-digit addition after %lld steps: accuracy %.3f in %.1fs",
                (long long)s.steps_done, s.final_accuracy, s.seconds);
    cr_expect(s.final_accuracy >= LEARN_BAR, "accuracy %.3f below %.2f", s.final_accuracy, LEARN_BAR);
    remove_dir(d);
}

/* ---------------------------------------------------------- the command -- */

/* Command-line overrides for a model small enough to start in milliseconds. */
#define CLI_TINY_MODEL "model.d_model=32 model.n_layer=1 model.n_head=2 model.max_seq_len=64 "

/* Ctrl-C during `ponder train` writes a checkpoint, exits 130, and
 * `--resume` finishes the run. */
Test(sft, sigint_checkpoints_and_resumes, .timeout = 120) {
    char d[] = "/tmp/ponder_sigint_XXXXXX";
    cr_assert(mkdtemp(d));
    char cmd[1400];
    const char *common = CLI_TINY_MODEL "stages.0.steps=100000 stages.0.batch_size=4 checkpoint.every=0 "
                         "data.eval_size=4 runtime.threads=1";
    snprintf(cmd, sizeof cmd,
             "timeout --preserve-status -s INT 3 %s/ponder train %s/configs/sft_arith.yaml run.dir=%s %s > %s/out.txt 2>&1",
             PONDER_BINARY_DIR, PONDER_SOURCE_DIR, d, common, d);
    int st = system(cmd);
    cr_expect_eq(WEXITSTATUS(st), 130, "exit status %d", WEXITSTATUS(st));
    char latest[1024];
    char ckdir[700];
    snprintf(ckdir, sizeof ckdir, "%s/checkpoints", d);
    PonderError err = {0};
    cr_assert_eq(ckpt_find_latest(ckdir, latest, sizeof latest, &err), 0, "%s", err.msg);
    CkptMeta meta;
    ModelConfig mc;
    cr_assert_eq(ckpt_read_model_config(latest, &mc, &err), 0, "%s", err.msg);
    Model *m = NULL;
    cr_assert_eq(model_create(&m, &mc, &err), 0);
    CkptRead rd = {.model = m};
    cr_assert_eq(ckpt_load(latest, &rd, &err), 0, "%s", err.msg);
    meta = rd.meta;
    free(rd.config_yaml), free(rd.metrics_jsonl);
    model_free(m);
    cr_expect_gt(meta.step, 0, "stopped before any step");
    /* resume with a finite budget just past the stop point */
    snprintf(cmd, sizeof cmd,
             "%s/ponder train %s/configs/sft_arith.yaml --resume run.dir=%s %s "
             "stages.0.steps=%lld > %s/out2.txt 2>&1",
             PONDER_BINARY_DIR, PONDER_SOURCE_DIR, d, common, (long long)meta.step + 2, d);
    st = system(cmd);
    cr_expect_eq(WEXITSTATUS(st), 0, "resume exit status %d", WEXITSTATUS(st));
    snprintf(cmd, sizeof cmd, "grep -q 'resumed from' %s/out2.txt", d);
    cr_expect_eq(system(cmd), 0, "no 'resumed from' line");
    remove_dir(d);
}

/* OMP_PROC_BIND makes libgomp bind the first image to one place before
 * `ponder` re-executes itself for its spin count; the new image must still
 * get every CPU (it had put both threads on one, at half the speed), and a
 * process confined to fewer CPUs than threads says so. */
Test(sft, bound_threads_keep_every_cpu, .timeout = 120) {
    cpu_set_t allowed;
    cr_assert_eq(sched_getaffinity(0, sizeof allowed, &allowed), 0);
    if (CPU_COUNT(&allowed) < 2) cr_skip_test("needs 2 CPUs");
    int first = 0;
    while (!CPU_ISSET(first, &allowed)) first++;
    char d[] = "/tmp/ponder_bind_XXXXXX";
    cr_assert(mkdtemp(d));
    char cmd[1400];
    const char *common = CLI_TINY_MODEL "stages.0.steps=2 stages.0.batch_size=4 checkpoint.every=0 "
                                        "eval.every=0 data.eval_size=4 runtime.threads=2";
    char prefix[2][64];
    snprintf(prefix[0], sizeof prefix[0], "OMP_PROC_BIND=close");
    snprintf(prefix[1], sizeof prefix[1], "taskset -c %d", first);
    /* bound: every CPU and no warning; confined to one CPU: the warning */
    const char *cpus[2] = {"([2-9]|[1-9][0-9]+)", "1"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd,
                 "env -u GOMP_SPINCOUNT -u OMP_WAIT_POLICY %s %s/ponder train %s/configs/sft_arith.yaml "
                 "run.dir=%s/r%d %s > %s/out%d.txt 2>&1",
                 prefix[i], PONDER_BINARY_DIR, PONDER_SOURCE_DIR, d, i, common, d, i);
        cr_assert_eq(system(cmd), 0, "%s: ponder failed", prefix[i]);
        snprintf(cmd, sizeof cmd, "grep -Eq '2 threads on %s CPUs' %s/out%d.txt", cpus[i], d, i);
        cr_expect_eq(system(cmd), 0, "%s: not the expected 'threads on CPUs' line", prefix[i]);
        snprintf(cmd, sizeof cmd, "grep -q 'warning: 2 threads share' %s/out%d.txt", d, i);
        const int warned = system(cmd) == 0;
        cr_expect_eq(warned, i == 1, "%s: the threads-share-CPUs warning %s", prefix[i],
                     warned ? "appeared" : "is missing");
    }
    remove_dir(d);
}

/* model.init_from starts a new run from a checkpoint's weights (a step at a
 * vanishing learning rate leaves them bit-identical). */
Test(sft, init_from_starts_from_checkpoint_weights, .timeout = 120) {
    char a[] = "/tmp/ponder_init_a_XXXXXX", b[] = "/tmp/ponder_init_b_XXXXXX";
    cr_assert(mkdtemp(a) && mkdtemp(b));
    PonderError err = {0};
    TrainSummary s;
    TrainOptions o = {0};
    PonderConfig ca = tiny_run(a, 3);
    cr_assert_eq(train_run(&ca, &o, &s, &err), 0, "%s", err.msg);
    PonderConfig cb = tiny_run(b, 1);
    snprintf(cb.model.init_from, sizeof cb.model.init_from, "%s/checkpoints/step_00000003.h5", a);
    cb.optim.lr = 1e-30;
    cb.optim.warmup_steps = 0;
    cr_assert_eq(train_run(&cb, &o, &s, &err), 0, "%s", err.msg);
    Model *ma = NULL, *mb = NULL;
    Optimizer oa, ob;
    load_final(a, 3, &ma, &oa);
    load_final(b, 1, &mb, &ob);
    cr_expect_eq(memcmp(model_params(ma), model_params(mb), model_num_params(ma) * sizeof(float)), 0,
                 "the new run did not start from the checkpoint's weights");
    optim_free(&oa), optim_free(&ob);
    model_free(ma), model_free(mb);
    remove_dir(a);
    remove_dir(b);
}

/* `ponder eval` creates a missing --out directory and builds its model on
 * the config's backend (model.precision=bf16 is honoured where the CPU has
 * it), writing the report and the samples. */
Test(sft, eval_command_writes_into_a_new_directory, .timeout = 120) {
    char d[] = "/tmp/ponder_evalcli_XXXXXX";
    cr_assert(mkdtemp(d));
    PonderError err = {0};
    TrainSummary s;
    TrainOptions o = {0};
    PonderConfig c = tiny_run(d, 3);
    cr_assert_eq(train_run(&c, &o, &s, &err), 0, "%s", err.msg);
    const char *precisions[2] = {"fp32", "bf16"};
    for (int i = 0; i < (ops_cpu_bf16() ? 2 : 1); i++) {
        char cmd[2048];
        snprintf(cmd, sizeof cmd,
                 "%s/ponder eval %s/configs/sft_arith.yaml --ckpt %s/checkpoints/step_00000003.h5 "
                 "--out %s/new/%s model.d_model=32 model.n_layer=2 model.n_head=2 "
                 "model.max_seq_len=64 data.eval_size=8 eval.max_new_tokens=40 "
                 "model.precision=%s > %s/eval_%s.txt 2>&1",
                 PONDER_BINARY_DIR, PONDER_SOURCE_DIR, d, d, precisions[i], precisions[i], d,
                 precisions[i]);
        int st = system(cmd);
        cr_expect_eq(WEXITSTATUS(st), 0, "%s: exit status %d", precisions[i], WEXITSTATUS(st));
        snprintf(cmd, sizeof cmd, "grep -q '\"items\":8' %s/new/%s/eval_report.json && test -s %s/new/%s/eval_samples.jsonl",
                 d, precisions[i], d, precisions[i]);
        cr_expect_eq(system(cmd), 0, "%s: no report or samples in the new directory", precisions[i]);
    }
    remove_dir(d);
}

/* Where the CPU has no AVX512-BF16 (simulated with PONDER_CPU_BF16=0),
 * model.precision: bf16 on the CPU stops `ponder train` before it starts,
 * saying what is missing and what to use instead. */
Test(sft, bf16_without_avx512_bf16_is_a_clear_error, .timeout = 60) {
    char d[] = "/tmp/ponder_nobf16_XXXXXX";
    cr_assert(mkdtemp(d));
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "PONDER_CPU_BF16=0 %s/ponder train %s/configs/sft_arith.yaml run.dir=%s/run "
             "model.precision=bf16 stages.0.steps=2 > %s/out.txt 2>&1",
             PONDER_BINARY_DIR, PONDER_SOURCE_DIR, d, d);
    int st = system(cmd);
    cr_expect_neq(WEXITSTATUS(st), 0, "ponder train accepted bf16 without AVX512-BF16");
    snprintf(cmd, sizeof cmd,
             "grep -q 'model.precision: bf16 on the CPU needs AVX512-BF16, which this CPU lacks; "
             "use fp32' %s/out.txt",
             d);
    cr_expect_eq(system(cmd), 0, "the message does not say what is missing");
    snprintf(cmd, sizeof cmd, "test ! -e %s/run/checkpoints || test -z \"$(ls %s/run/checkpoints)\"", d, d);
    cr_expect_eq(system(cmd), 0, "a checkpoint was written");
    remove_dir(d);
}
