/* tests/test_rewards_external.c — rewards that run user code: the `external`
 * reward (a Python script speaking JSON lines; happy path, batching, named
 * outputs, and each failure with its message: timeout, crash, signal,
 * malformed and wrong-shaped answers, a dead pipe, a missing command) and the
 * `plugin` reward (shared objects compiled here from tests/data/rewards/plugin_*.c:
 * load, version mismatch, missing symbol, failing calls). The shipped example
 * examples/rewards/length_reward.py runs too. Timeouts are at most 0.5 s. */
#include <criterion/criterion.h>

#include <math.h>     /* fabs */
#include <signal.h>   /* kill */
#include <stdio.h>    /* snprintf */
#include <stdlib.h>   /* malloc, free, system, mkdtemp */
#include <string.h>   /* memset, strstr */
#include <time.h>     /* clock_gettime */
#include <unistd.h>   /* unlink, rmdir, usleep */

#include "rewards/plugin_abi.h"
#include "rewards/reward.h"
#include "rewards/reward_external.h"
#include "rewards/reward_plugin.h"
#include "rewards/reward_set.h"

#define FAKE PONDER_TEST_DATA "/rewards/fake_reward.py"

/* ---------------------------------------------------------------- helpers --*/

/* The external tests run Python scripts: say so plainly when there is none. */
static void require_python3(void) {
    const char *path = getenv("PATH");
    char dir[4096], file[4200];
    for (const char *p = path ? path : ""; *p;) {
        size_t n = strcspn(p, ":");
        snprintf(dir, sizeof dir, "%.*s", (int)n, p);
        snprintf(file, sizeof file, "%s/python3", n ? dir : ".");
        if (access(file, X_OK) == 0) return;
        p += n + (p[n] == ':');
    }
    cr_assert_fail("python3 is not on PATH: the external-reward tests run Python scripts "
                   "(install python3, e.g. add it to launch/setup's packages)");
}

TestSuite(external, .init = require_python3);

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static RewardExternal *start_mode(const char *mode, double timeout_s) {
    const char *argv[] = {"python3", FAKE, mode, NULL};
    RewardExternalSpec spec = {.name = "fake", .argv = argv, .timeout_s = timeout_s};
    RewardExternal *x = NULL;
    PonderError err = {0};
    cr_assert_eq(reward_external_start(&x, &spec, &err), 0, "%s", err.msg);
    return x;
}

static void expect_msg(const PonderError *err, const char *needle) {
    cr_expect(strstr(err->msg, needle), "message \"%s\"\n  lacks \"%s\"", err->msg, needle);
}

/* Scores one sample in `mode` and expects an error with every needle. */
static void expect_failure(const char *mode, int code, const char *const *needles) {
    RewardExternal *x = start_mode(mode, 0.5);
    RewardInput in = {.prompt = "2+2=", .completion = "<answer>4</answer>", .answer = "4"};
    RewardValue v;
    PonderError err = {0};
    cr_assert_neq(reward_external_score(x, &in, 1, &v, &err), 0, "mode %s should fail", mode);
    cr_expect_eq(err.code, code, "mode %s: code %d, message %s", mode, err.code, err.msg);
    expect_msg(&err, "external reward \"fake\" (command: python3 ");
    expect_msg(&err, "fake_reward.py");
    for (int i = 0; needles[i]; i++) expect_msg(&err, needles[i]);
    cr_expect_eq(reward_external_pid(x), -1, "the process is gone after a failure");
    PonderError again = {0};
    cr_expect_neq(reward_external_score(x, &in, 1, &v, &again), 0);
    expect_msg(&again, "is stopped after an earlier failure");
    reward_external_free(x);
}

/* ---------------------------------------------------------------- external: happy paths */

Test(external, happy_path_keeps_one_process) {
    RewardExternal *x = start_mode("echo", 5);
    pid_t pid = reward_external_pid(x);
    cr_assert_gt(pid, 0);
    RewardInput in[3] = {
        {.prompt = "ab", .completion = "hello"},                       /* 2*1000 + 5 */
        {.prompt = "", .completion = "x", .row_json = "{\"na\": true}"}, /* null -> n/a */
        {.prompt = "p", .completion = "", .row_json = "{\"id\": 3}", .answer = "bonus"},
    };
    RewardValue v[3];
    PonderError err = {0};
    cr_assert_eq(reward_external_score(x, in, 3, v, &err), 0, "%s", err.msg);
    cr_expect(v[0].applicable && v[0].value == 2005, "got %g", v[0].value);
    cr_expect(!v[1].applicable);
    cr_expect(v[2].applicable && v[2].value == 1000.5, "got %g", v[2].value);
    cr_assert_eq(reward_external_score(x, in, 1, v, &err), 0, "%s", err.msg);
    cr_expect_eq(reward_external_pid(x), pid, "started once, reused");
    cr_expect_eq(reward_external_stop(x, 1.0, &err), 0, "%s", err.msg);
    cr_expect_eq(reward_external_pid(x), -1);
    cr_expect_neq(reward_external_score(x, in, 1, v, &err), 0);
    expect_msg(&err, "external reward \"fake\" is not running (it was stopped)");
    reward_external_free(x);
}

Test(external, shell_command) {
    RewardExternalSpec spec = {.name = "sh", .command = "python3 '" FAKE "' echo", .timeout_s = 5};
    RewardExternal *x;
    PonderError err = {0};
    cr_assert_eq(reward_external_start(&x, &spec, &err), 0, "%s", err.msg);
    RewardInput in = {.prompt = "", .completion = "four"};
    RewardValue v;
    cr_assert_eq(reward_external_score(x, &in, 1, &v, &err), 0, "%s", err.msg);
    cr_expect(v.applicable && v.value == 4);
    reward_external_free(x);
}

/* 200 requests of 20 kB each (4 MB, far beyond a pipe's 64 kB) in one batch:
 * writing and reading in one poll loop must not deadlock. */
Test(external, large_batch_does_not_deadlock) {
    enum { N = 200, LEN = 20000 };
    char *text = malloc(LEN + 1);
    memset(text, 'a', LEN);
    text[LEN] = '\0';
    RewardInput *in = calloc(N, sizeof *in);
    RewardValue *v = calloc(N, sizeof *v);
    for (int i = 0; i < N; i++) in[i] = (RewardInput){.prompt = "", .completion = text + i};
    RewardExternal *x = start_mode("echo", 5);
    PonderError err = {0};
    cr_assert_eq(reward_external_score(x, in, N, v, &err), 0, "%s", err.msg);
    for (int i = 0; i < N; i++) cr_expect(v[i].applicable && v[i].value == LEN - i, "sample %d: %g", i, v[i].value);
    reward_external_free(x);
    free(text), free(in), free(v);
}

Test(external, named_outputs_through_a_reward_set) {
    RewardSpec spec;
    reward_spec_defaults(&spec, REWARD_EXTERNAL, "judge");
    const char *argv[] = {"python3", FAKE, "multi", NULL};
    spec.argv = argv;
    spec.timeout_s = 5;
    spec.weight = 2;
    spec.n_outputs = 2;
    spec.outputs[0] = "chars", spec.outputs[1] = "lines";
    spec.output_weights[0] = 1, spec.output_weights[1] = 0.25;
    RewardSet *set;
    PonderError err = {0};
    cr_assert_eq(reward_set_create(&set, &spec, 1, REWARD_COMBINE_SUM, 1e-6, &err), 0, "%s", err.msg);
    cr_assert_eq(reward_set_n_components(set), 2);
    cr_assert_str_eq(reward_set_component_name(set, 0), "judge.chars");
    cr_assert_str_eq(reward_set_component_name(set, 1), "judge.lines");
    cr_assert_eq(reward_set_component_weight(set, 1), 0.5);
    RewardInput in[2] = {{.completion = "ab\ncd"}, {.completion = "xyz"}};
    RewardScores sc = {0};
    cr_assert_eq(reward_set_score(set, in, 2, (RewardGroups){NULL, 2}, &sc, &err), 0, "%s", err.msg);
    cr_expect_eq(sc.components[0].value, 5);
    cr_expect_eq(sc.components[2].value, 2);
    cr_expect_eq(sc.combined[0].value, 2 * 5 + 0.5 * 2); /* 11 */
    cr_expect_eq(sc.combined[1].value, 2 * 3 + 0.5 * 1); /* 6.5 */
    reward_scores_free(&sc);
    reward_set_free(set);
}

Test(external, invalid_utf8_is_replaced) {
    RewardExternal *x = start_mode("replacement", 5);
    RewardInput in = {.prompt = "", .completion = "cut in a character: \xe2\x88"};
    RewardValue v;
    PonderError err = {0};
    cr_assert_eq(reward_external_score(x, &in, 1, &v, &err), 0, "%s", err.msg);
    cr_expect(v.applicable && v.value == 1, "the script saw U+FFFD");
    reward_external_free(x);
}

Test(external, shipped_example_script) {
    RewardExternalSpec spec = {
        .name = "thought_length", .command = "python3 " PONDER_SOURCE_DIR "/examples/rewards/length_reward.py 10",
        .timeout_s = 5};
    RewardExternal *x;
    PonderError err = {0};
    cr_assert_eq(reward_external_start(&x, &spec, &err), 0, "%s", err.msg);
    RewardInput in[2] = {{.completion = "<think>abcde</think><answer>1</answer>"}, {.completion = "1"}};
    RewardValue v[2];
    cr_assert_eq(reward_external_score(x, in, 2, v, &err), 0, "%s", err.msg);
    cr_expect(v[0].applicable && fabs(v[0].value - 0.5) < 1e-12, "5 of 10 characters: %g", v[0].value);
    cr_expect(!v[1].applicable, "no thought: not applicable");
    cr_expect_eq(reward_external_stop(x, 1.0, &err), 0, "%s", err.msg);
    reward_external_free(x);
}

/* ---------------------------------------------------------------- external: failures */

Test(external, timeout_kills_the_process) {
    double t0 = now_s();
    const char *needles[] = {"no answer within timeout_s = 0.5 s while ponder waited for answer 1 of 1",
                             "to the request \"{\\\"prompt\\\":\\\"2+2=\\\"", "the process was killed", NULL};
    expect_failure("sleep", PONDER_ERR_TIMEOUT, needles);
    cr_expect_lt(now_s() - t0, 3.0, "the timeout did not hold");
}

Test(external, crash_reports_exit_status_and_stderr) {
    const char *needles[] = {"the process exited with status 3 while ponder waited for answer 1 of 1",
                             "\"completion\\\":\\\"<answer>4</answer>\\\"",
                             "stderr ends with: \"Traceback: boom, cannot score this\"", NULL};
    expect_failure("crash", PONDER_ERR_RUNTIME, needles);
}

Test(external, death_by_signal_is_named) {
    const char *needles[] = {"the process was killed by signal 11 (SIGSEGV, Segmentation fault)", NULL};
    expect_failure("segv", PONDER_ERR_RUNTIME, needles);
}

Test(external, malformed_answer_is_quoted) {
    const char *needles[] = {"answer 1 of 1 is not valid JSON", ": \"this is not json\"",
                             "expected one line {\"reward\": number|null}", NULL};
    expect_failure("malformed", PONDER_ERR_PARSE, needles);
}

Test(external, wrong_shape_is_named) {
    const char *type[] = {"answer 1 of 1 has \"reward\" a string, not a number or null",
                          "\"{\\\"reward\\\": \\\"high\\\"}\"", NULL};
    expect_failure("wrong_type", PONDER_ERR_PARSE, type);
    const char *key[] = {"answer 1 of 1 has \"reward\" missing", NULL};
    expect_failure("missing_key", PONDER_ERR_PARSE, key);
}

Test(external, missing_named_output) {
    const char *argv[] = {"python3", FAKE, "echo", NULL};
    const char *outputs[] = {"score"};
    RewardExternalSpec spec = {.name = "fake", .argv = argv, .timeout_s = 5, .n_outputs = 1, .outputs = outputs};
    RewardExternal *x;
    PonderError err = {0};
    cr_assert_eq(reward_external_start(&x, &spec, &err), 0, "%s", err.msg);
    RewardInput in = {.prompt = "", .completion = "a"};
    RewardValue v;
    cr_assert_neq(reward_external_score(x, &in, 1, &v, &err), 0);
    expect_msg(&err, "has no \"rewards\" object (it gave one \"reward\"; this reward declares outputs)");
    reward_external_free(x);
}

Test(external, extra_answer_lines_are_an_error) {
    RewardExternal *x = start_mode("extra_line", 5);
    RewardInput in = {.prompt = "", .completion = "a"};
    RewardValue v;
    PonderError err = {0};
    int rc = reward_external_score(x, &in, 1, &v, &err);
    if (rc == 0) { /* the extra line came after the answer: caught by the next call */
        usleep(200 * 1000);
        rc = reward_external_score(x, &in, 1, &v, &err);
    }
    cr_assert_neq(rc, 0);
    cr_expect(strstr(err.msg, "one line too many") || strstr(err.msg, "wrote output nobody asked for: \"{\\\"reward"),
              "%s", err.msg);
    reward_external_free(x);
}

/* The child exits after one line while 3 MB of requests are still being
 * written: the write fails with EPIPE, SIGPIPE must not kill this process,
 * and the report is the child's exit, not a write error. */
Test(external, dead_pipe_is_reported_as_a_crash) {
    enum { N = 50, LEN = 64000 };
    char *text = malloc(LEN + 1);
    memset(text, 'b', LEN);
    text[LEN] = '\0';
    RewardInput *in = calloc(N, sizeof *in);
    RewardValue *v = calloc(N, sizeof *v);
    for (int i = 0; i < N; i++) in[i] = (RewardInput){.prompt = "", .completion = text};
    RewardExternal *x = start_mode("crash", 5);
    PonderError err = {0};
    cr_assert_neq(reward_external_score(x, in, N, v, &err), 0);
    expect_msg(&err, "the process exited with status 3");
    reward_external_free(x);
    free(text), free(in), free(v);
}

Test(external, missing_program) {
    const char *argv[] = {"/nonexistent/ponder-reward", NULL};
    RewardExternalSpec spec = {.name = "gone", .argv = argv, .timeout_s = 1};
    RewardExternal *x = NULL;
    PonderError err = {0};
    cr_assert_neq(reward_external_start(&x, &spec, &err), 0);
    expect_msg(&err, "external reward \"gone\": could not start \"/nonexistent/ponder-reward\": No such file");
    cr_assert_null(x);

    RewardExternalSpec sh = {.name = "typo", .command = "ponder-no-such-command-xyz", .timeout_s = 1};
    cr_assert_eq(reward_external_start(&x, &sh, &err), 0, "%s", err.msg);
    RewardInput in = {.prompt = "", .completion = "a"};
    RewardValue v;
    cr_assert_neq(reward_external_score(x, &in, 1, &v, &err), 0);
    expect_msg(&err, "exited with status 127 (the shell could not find the command)");
    expect_msg(&err, "ponder-no-such-command-xyz");
    reward_external_free(x);
}

Test(external, stop_kills_a_process_that_ignores_eof) {
    RewardExternal *x = start_mode("ignore_eof", 5);
    RewardInput in = {.prompt = "", .completion = "a"};
    RewardValue v;
    PonderError err = {0};
    cr_assert_eq(reward_external_score(x, &in, 1, &v, &err), 0, "%s", err.msg);
    pid_t pid = reward_external_pid(x);
    cr_assert_neq(reward_external_stop(x, 0.3, &err), 0);
    expect_msg(&err, "did not exit within 0.3 s after its input was closed, so it was killed");
    cr_expect_eq(reward_external_pid(x), -1);
    cr_expect_neq(kill(pid, 0), 0, "the child is gone");
    reward_external_free(x);
}

Test(external, bad_row_json) {
    RewardExternal *x = start_mode("echo", 5);
    RewardInput in[2] = {{.completion = "a", .row_json = "{}"}, {.completion = "b", .row_json = "{oops"}};
    RewardValue v[2];
    PonderError err = {0};
    cr_assert_neq(reward_external_score(x, in, 2, v, &err), 0);
    cr_expect_eq(err.code, PONDER_ERR_PARSE);
    expect_msg(&err, "external reward \"fake\": the row of sample 1 is not a JSON object");
    reward_external_free(x);
}

/* ---------------------------------------------------------------- plugin ---*/

typedef struct Built {
    char dir[64];
    char path[160];
} Built;

/* Compiles tests/data/rewards/<name>.c into a shared object in a temp dir. */
static void build_plugin(const char *name, Built *b) {
    snprintf(b->dir, sizeof b->dir, "/tmp/ponder_plugin_XXXXXX");
    cr_assert_not_null(mkdtemp(b->dir));
    snprintf(b->path, sizeof b->path, "%s/%s.so", b->dir, name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cc -shared -fPIC -O1 -I%s -o %s %s/rewards/%s.c", PONDER_SOURCE_DIR, b->path,
             PONDER_TEST_DATA, name);
    cr_assert_eq(system(cmd), 0, "could not compile: %s", cmd);
}

static void remove_plugin(Built *b) {
    unlink(b->path);
    rmdir(b->dir);
}

Test(plugin, load_and_score) {
    Built b;
    build_plugin("plugin_ok", &b);
    RewardPlugin *p;
    PonderError err = {0};
    cr_assert_eq(reward_plugin_open(&p, "contains", b.path, "{\"scale\": 2.5}", &err), 0, "%s", err.msg);
    RewardInput in[3] = {
        {.prompt = "q", .completion = "the answer is 12", .answer = "12"},
        {.prompt = "q", .completion = "13", .answer = "12"},
        {.prompt = "q", .completion = "13", .answer = NULL},
    };
    RewardValue v[3];
    cr_assert_eq(reward_plugin_score(p, in, 3, v, &err), 0, "%s", err.msg);
    cr_expect(v[0].applicable && v[0].value == 2.5);
    cr_expect(v[1].applicable && v[1].value == 0);
    cr_expect(!v[2].applicable);
    RewardInput bad = {.completion = "fail", .answer = "x"};
    cr_assert_neq(reward_plugin_score(p, &bad, 1, v, &err), 0);
    expect_msg(&err, "plugin reward \"contains\" (");
    expect_msg(&err, "ponder_reward_score returned -2 for sample 0: the plugin refuses to score \"fail\"");
    RewardInput nan = {.completion = "nan", .answer = "x"};
    cr_assert_neq(reward_plugin_score(p, &nan, 1, v, &err), 0);
    expect_msg(&err, "ponder_reward_score gave nan for sample 0 (a reward must be finite");
    reward_plugin_close(p);
    remove_plugin(&b);
}

Test(plugin, through_a_reward_set) {
    Built b;
    build_plugin("plugin_ok", &b);
    RewardSpec spec;
    reward_spec_defaults(&spec, REWARD_PLUGIN, "contains");
    spec.path = b.path;
    spec.weight = 3;
    RewardSet *set;
    PonderError err = {0};
    cr_assert_eq(reward_set_create(&set, &spec, 1, REWARD_COMBINE_SUM, 1e-6, &err), 0, "%s", err.msg);
    RewardInput in[2] = {{.completion = "is 7", .answer = "7"}, {.completion = "is 8", .answer = "7"}};
    RewardScores sc = {0};
    cr_assert_eq(reward_set_score(set, in, 2, (RewardGroups){NULL, 1}, &sc, &err), 0, "%s", err.msg);
    cr_expect_eq(sc.combined[0].value, 3);
    cr_expect_eq(sc.combined[1].value, 0);
    reward_scores_free(&sc);
    reward_set_free(set);
    remove_plugin(&b);
}

Test(plugin, version_mismatch) {
    Built b;
    build_plugin("plugin_bad_version", &b);
    RewardPlugin *p = NULL;
    PonderError err = {0};
    cr_assert_neq(reward_plugin_open(&p, "future", b.path, NULL, &err), 0);
    cr_assert_null(p);
    expect_msg(&err, "plugin reward \"future\": ");
    expect_msg(&err, b.path);
    expect_msg(&err, "was built for reward ABI version 2, but this ponder speaks version 1: rebuild the plugin");
    remove_plugin(&b);
}

Test(plugin, missing_symbol) {
    Built b;
    build_plugin("plugin_no_score", &b);
    RewardPlugin *p = NULL;
    PonderError err = {0};
    cr_assert_neq(reward_plugin_open(&p, "partial", b.path, NULL, &err), 0);
    expect_msg(&err, b.path);
    expect_msg(&err, "does not export the required symbol ponder_reward_score");
    remove_plugin(&b);
}

Test(plugin, failing_init_and_missing_file) {
    Built b;
    build_plugin("plugin_ok", &b);
    RewardPlugin *p = NULL;
    PonderError err = {0};
    cr_assert_neq(reward_plugin_open(&p, "picky", b.path, "{\"fail_init\": true}", &err), 0);
    expect_msg(&err, "ponder_reward_init in ");
    expect_msg(&err, "failed (returned NULL) for config {\"fail_init\": true}");
    remove_plugin(&b);
    cr_assert_neq(reward_plugin_open(&p, "gone", "/nonexistent/reward.so", NULL, &err), 0);
    expect_msg(&err, "plugin reward \"gone\": cannot load /nonexistent/reward.so");
    cr_assert_neq(reward_plugin_open(&p, "bare", "bare_name.so", NULL, &err), 0);
    expect_msg(&err, "cannot load ./bare_name.so"); /* a bare name means a file, not a library search */
}
