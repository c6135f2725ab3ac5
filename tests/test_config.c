/* tests/test_config.c — the YAML config: schema defaults, parsing, extends,
 * overrides, every error message (checked by text, since naming file, line and
 * key is the feature), the exact write/read round trip, the shipped configs and
 * the `ponder config` command. */
#include <criterion/criterion.h>

#include <dirent.h> /* opendir, readdir */
#include <math.h>   /* NAN */
#include <stdio.h>  /* FILE, fopen, snprintf */
#include <stdlib.h> /* free, system */
#include <string.h> /* memcmp, strcmp, strstr */
#include <sys/wait.h> /* WEXITSTATUS */
#include <unistd.h>   /* getpid */

#include "trainer/config.h"
#include "rewards/reward_set.h"    /* reward_set_create: config rewards build real ones */
#include "trainer/config_schema.h" /* config_keys: the coverage test walks the table */

#define DATA PONDER_TEST_DATA "/config/"

/* ---------------------------------------------------------------- helpers ---*/

static int load_text(PonderConfig *cfg, const char *yaml, int n, char **overrides, PonderError *err) {
    return config_load_string(cfg, yaml, "t.yaml", n, overrides, err);
}

static void expect_ok(PonderConfig *cfg, const char *yaml, int n, char **overrides) {
    PonderError err = {0};
    int rc = load_text(cfg, yaml, n, overrides, &err);
    cr_assert_eq(rc, 0, "unexpected error: %s", err.msg);
}

/* Loads yaml (with overrides) and checks the error message contains needle. */
static void expect_error_n(const char *yaml, int n, char **overrides, const char *needle) {
    PonderConfig cfg;
    PonderError err = {0};
    int rc = load_text(&cfg, yaml, n, overrides, &err);
    cr_assert_neq(rc, 0, "expected an error containing \"%s\"", needle);
    cr_assert_eq(rc, err.code);
    cr_assert(strstr(err.msg, needle), "message \"%s\"\n  lacks \"%s\"", err.msg, needle);
}

static void expect_error(const char *yaml, const char *needle) { expect_error_n(yaml, 0, NULL, needle); }

static void expect_override_error(const char *override, const char *needle) {
    char *overrides[] = {(char *)override};
    expect_error_n("", 1, overrides, needle);
}

static void expect_file_error(const char *path, const char *needle) {
    PonderConfig cfg;
    PonderError err = {0};
    cr_assert_neq(config_load(&cfg, path, 0, NULL, &err), 0, "expected an error loading %s", path);
    cr_assert(strstr(err.msg, needle), "message \"%s\"\n  lacks \"%s\"", err.msg, needle);
}

/* ---------------------------------------------------------------- schema ----*/

Test(config_schema, table_is_well_formed) {
    PonderError err = {0};
    cr_assert_eq(config_schema_check(&err), 0, "%s", err.msg);
}

Test(config_schema, defaults_match_the_documented_values) {
    PonderConfig c;
    config_defaults(&c);
    cr_assert_str_eq(c.run.name, "run");
    cr_assert_str_eq(c.run.dir, "");
    cr_assert_eq(c.run.seed, 1234);
    cr_assert_eq(c.model.arch, MODEL_ARCH_LLAMA);
    cr_assert_eq(c.model.vocab_size, 0);
    cr_assert_eq(c.model.d_model, 128);
    cr_assert_eq(c.model.n_layer, 4);
    cr_assert_eq(c.model.n_head, 4);
    cr_assert_eq(c.model.n_kv_head, 0);
    cr_assert_eq(c.model.d_ff, 0);
    cr_assert_eq(c.model.max_seq_len, 256);
    cr_assert_eq(c.model.norm_eps, 1e-5);
    cr_assert_eq(c.model.rope_theta, 10000);
    cr_assert_eq(c.model.init_std, 0.02);
    cr_assert(c.model.tie_embeddings && !c.model.qkv_bias && !c.model.scalar_head);
    cr_assert_eq(c.model.device, CONFIG_DEVICE_CPU);
    cr_assert_eq(c.model.precision, CONFIG_PRECISION_FP32);
    cr_assert_eq(c.tokenizer.type, CONFIG_TOKENIZER_CHAR);
    cr_assert_eq(c.optim.lr, 3e-4);
    cr_assert_eq(c.optim.beta1, 0.9);
    cr_assert_eq(c.optim.beta2, 0.95);
    cr_assert_eq(c.optim.eps, 1e-8);
    cr_assert_eq(c.optim.weight_decay, 0.1);
    cr_assert_eq(c.optim.grad_clip, 1.0);
    cr_assert_eq(c.optim.schedule, CONFIG_SCHEDULE_COSINE);
    cr_assert_eq(c.optim.min_lr_ratio, 0.1);
    cr_assert_str_eq(c.runtime.blas, "auto");
    cr_assert_eq(c.data.task, CONFIG_TASK_ARITH);
    cr_assert_str_eq(c.data.prompt_key, "prompt");
    cr_assert_str_eq(c.data.ops, "+");
    cr_assert_eq(c.data.eval_size, 500);
    cr_assert_eq(c.checkpoint.every, 100);
    cr_assert_eq(c.checkpoint.keep_last, 3);
    cr_assert_eq(c.eval.max_new_tokens, 64);
    cr_assert_eq(c.eval.top_p, 1.0);
    cr_assert_eq(c.n_stages, 1);
    cr_assert_eq(c.stages[0].type, CONFIG_STAGE_SFT);
    cr_assert_eq(c.stages[0].steps, 100);
    cr_assert_eq(c.stages[0].batch_size, 32);
    cr_assert_eq(c.stages[0].grad_accum, 1);
    PonderError err = {0};
    cr_assert_eq(config_validate(&c, &err), 0, "%s", err.msg);
}

Test(config_schema, empty_text_gives_exactly_the_defaults) {
    PonderConfig loaded, defaults;
    config_defaults(&defaults);
    expect_ok(&loaded, "", 0, NULL);
    cr_assert_eq(memcmp(&loaded, &defaults, sizeof loaded), 0);
    expect_ok(&loaded, "# only a comment\nmodel:\n", 0, NULL);
    cr_assert_eq(memcmp(&loaded, &defaults, sizeof loaded), 0);
}

/* ---------------------------------------------------------------- parsing ---*/

Test(config_parse, block_and_flow_values) {
    PonderConfig c;
    expect_ok(&c,
              "run: {name: demo, seed: 9}\n"
              "model:\n  arch: gpt2\n  d_model: \"64\"\n  n_head: 4\n  tie_embeddings: no\n"
              "optim:\n  lr: 1e-3\n  beta2: 0.99\n  schedule: linear\n"
              "data:\n  ops: '+-'\n  train: ~\n"
              "stages:\n  - {type: grpo, steps: 7}\n  - name: last\n    max_bad_steps: 2\n",
              0, NULL);
    cr_assert_str_eq(c.run.name, "demo");
    cr_assert_eq(c.run.seed, 9);
    cr_assert_eq(c.model.arch, MODEL_ARCH_GPT2);
    cr_assert_eq(c.model.d_model, 64);
    cr_assert_not(c.model.tie_embeddings);
    cr_assert_eq(c.optim.lr, 1e-3);
    cr_assert_eq(c.optim.schedule, CONFIG_SCHEDULE_LINEAR);
    cr_assert_str_eq(c.data.ops, "+-");
    cr_assert_str_eq(c.data.train, "");
    cr_assert_eq(c.n_stages, 2);
    cr_assert_eq(c.stages[0].type, CONFIG_STAGE_GRPO);
    cr_assert_eq(c.stages[0].steps, 7);
    cr_assert_eq(c.stages[0].batch_size, 32, "stage keys not given keep their defaults");
    cr_assert_str_eq(c.stages[1].name, "last");
    cr_assert_eq(c.stages[1].max_bad_steps, 2);
    cr_assert_str_eq(config_stage_name(&c, 0), "grpo");
    cr_assert_str_eq(config_stage_name(&c, 1), "last");
}

Test(config_parse, aliases_resolve) {
    PonderConfig c;
    expect_ok(&c, "model:\n  d_model: &w 64\n  n_head: 4\neval:\n  max_new_tokens: *w\n", 0, NULL);
    cr_assert_eq(c.eval.max_new_tokens, 64);
}

Test(config_parse, quoted_null_word_is_a_string) {
    PonderConfig c;
    expect_ok(&c, "run:\n  name: \"null\"\nmodel:\n  init_from: null\n", 0, NULL);
    cr_assert_str_eq(c.run.name, "null");
    cr_assert_str_eq(c.model.init_from, "");
}

/* ---------------------------------------------------------------- syntax ----*/

Test(config_errors, yaml_syntax_error_has_file_line_column_and_problem) {
    expect_error("model:\n  d_model: [1, 2\n", "t.yaml:3:1: did not find expected ',' or ']'");
    expect_error("model:\n\td_model: 1\n", "t.yaml:2:1: found character that cannot start any token");
    expect_error("a: \"open\n", "t.yaml:2:1: found unexpected end of stream");
}

Test(config_errors, yaml_syntax_error_in_a_file_names_the_file) {
    expect_file_error(DATA "bad_syntax.yaml", "config/bad_syntax.yaml:3:6: did not find expected ',' or ']'");
}

Test(config_errors, second_document_is_an_error) {
    expect_error("run: {name: a}\n---\nrun: {name: b}\n", "t.yaml:3:1: expected one YAML document, found a second");
}

Test(config_errors, undefined_alias) { expect_error("model:\n  d_model: *nope\n", "t.yaml:2:12: found undefined alias"); }

Test(config_errors, top_level_must_be_a_mapping) {
    expect_error("- a\n- b\n", "t.yaml:1:1: expected a mapping of sections at the top level, found a sequence");
}

/* ---------------------------------------------------------------- keys ------*/

Test(config_errors, unknown_key_suggests_the_nearest) {
    expect_error("model:\n  d_modle: 128\n", "t.yaml:2:3: unknown key 'model.d_modle'; did you mean 'model.d_model'?");
}

Test(config_errors, unknown_key_suggests_across_sections) {
    expect_error("model:\n  lr: 0.1\n", "t.yaml:2:3: unknown key 'model.lr'; did you mean 'optim.lr'?");
}

Test(config_errors, unknown_section_suggests_the_nearest) {
    expect_error("modle:\n  d_model: 128\n", "t.yaml:1:1: unknown key 'modle'; did you mean 'model'?");
}

Test(config_errors, unknown_key_far_from_all_gets_no_suggestion) {
    PonderConfig c;
    PonderError err = {0};
    cr_assert_neq(load_text(&c, "model:\n  banana: 1\n", 0, NULL, &err), 0);
    cr_assert_str_eq(err.msg, "t.yaml:2:3: unknown key 'model.banana'");
}

Test(config_errors, unknown_stage_key) {
    expect_error("stages:\n  - type: sft\n    step: 5\n",
                 "t.yaml:3:5: unknown key 'stages.0.step'; did you mean 'stages.0.steps'?");
}

Test(config_errors, extends_is_top_level_only) {
    expect_error("model:\n  extends: x.yaml\n", "t.yaml:2:3: unknown key 'model.extends'");
}

Test(config_errors, duplicate_key) {
    expect_error("model:\n  d_model: 128\n  d_model: 256\n", "t.yaml:3:3: duplicate key 'model.d_model' (first at 2:3)");
    expect_error("run: {seed: 1}\nmodel: {}\nrun: {seed: 2}\n", "t.yaml:3:1: duplicate key 'run' (first at 1:1)");
    expect_error("stages:\n  - steps: 1\n    steps: 2\n", "t.yaml:3:5: duplicate key 'stages.0.steps' (first at 2:5)");
}

/* ---------------------------------------------------------------- types -----*/

Test(config_errors, wrong_type_integer) {
    expect_error("model:\n  n_layer: four\n", "t.yaml:2:12: model.n_layer: expected an integer, found 'four'");
    expect_error("model:\n  n_layer: 4.5\n", "model.n_layer: expected an integer, found '4.5'");
    expect_error("run:\n  seed: 99999999999999999999\n", "run.seed: expected an integer, found '99999999999999999999'");
}

Test(config_errors, wrong_type_float) {
    expect_error("optim:\n  lr: fast\n", "t.yaml:2:7: optim.lr: expected a number, found 'fast'");
    expect_error("optim:\n  lr: .nan\n", "optim.lr: expected a number, found '.nan'");
    expect_error("optim:\n  lr: inf\n", "optim.lr: expected a number, found 'inf'");
}

Test(config_errors, wrong_type_bool) {
    expect_error("model:\n  qkv_bias: maybe\n", "t.yaml:2:13: model.qkv_bias: expected true or false, found 'maybe'");
}

Test(config_errors, wrong_type_enum_lists_allowed_values) {
    expect_error("model: {arch: lama}\n",
                 "t.yaml:1:15: model.arch: expected one of [llama, gpt2], found 'lama'; did you mean 'llama'?");
    expect_error("stages:\n  - type: q_learning\n",
                 "t.yaml:2:11: stages.0.type: expected one of [sft, grpo, ppo, rloo, reinforce_pp], found 'q_learning'");
}

Test(config_errors, collection_where_a_value_belongs) {
    expect_error("model:\n  d_model: {a: 1}\n", "t.yaml:2:12: model.d_model: expected an integer, found a mapping");
    expect_error("model: 3\n", "t.yaml:1:8: model: expected a mapping of keys, found a scalar");
    expect_error("stages: {type: sft}\n", "t.yaml:1:9: stages: expected a list of stages, found a mapping");
    expect_error("stages:\n  - sft\n", "t.yaml:2:5: stages.0: expected a mapping of stage keys, found a scalar");
}

Test(config_errors, string_too_long) {
    char yaml[600];
    snprintf(yaml, sizeof yaml, "run:\n  name: %0200d\n", 0);
    expect_error(yaml, "t.yaml:2:9: run.name: at most 127 bytes, found 200");
}

/* ---------------------------------------------------------------- ranges ----*/

Test(config_errors, out_of_range) {
    expect_error("optim:\n  lr: -1\n", "t.yaml:2:7: optim.lr: must be > 0, found -1");
    expect_error("optim:\n  beta1: 1\n", "t.yaml:2:10: optim.beta1: must be in [0, 1), found 1");
    expect_error("optim:\n  min_lr_ratio: 1.5\n", "optim.min_lr_ratio: must be in [0, 1], found 1.5");
    expect_error("model:\n  d_model: 0\n", "model.d_model: must be in [1, 1048576], found 0");
    expect_error("checkpoint:\n  keep_last: 0\n", "checkpoint.keep_last: must be >= 1, found 0");
    expect_error("stages:\n  - steps: 0\n", "t.yaml:2:12: stages.0.steps: must be >= 1, found 0");
    expect_error("eval:\n  top_p: 0\n", "eval.top_p: must be in (0, 1], found 0");
}

Test(config_errors, stage_count) {
    expect_error("stages: []\n", "t.yaml:1:9: stages: needs at least one stage");
    expect_error("stages: [{}, {}, {}, {}, {}, {}, {}, {}, {}]\n", "stages: at most 8 stages, found 9");
}

/* ---------------------------------------------------------------- contradictions */

Test(config_contradictions, n_head_must_divide_d_model) {
    expect_error("model:\n  d_model: 128\n  n_head: 3\n", "t.yaml:3:11: model.n_head: 3 does not divide model.d_model (128)");
}

Test(config_contradictions, falls_back_to_the_other_key_location) {
    /* n_head still holds its default, so the message points at d_model. */
    expect_error("model:\n  d_model: 130\n", "t.yaml:2:12: model.n_head: 4 does not divide model.d_model (130)");
}

Test(config_contradictions, n_kv_head_must_divide_n_head) {
    expect_error("model:\n  n_kv_head: 3\n", "t.yaml:2:14: model.n_kv_head: 3 does not divide model.n_head (4)");
}

Test(config_contradictions, gpt2_has_no_grouped_query_attention) {
    expect_error("model:\n  arch: gpt2\n  n_kv_head: 2\n",
                 "t.yaml:3:14: model.n_kv_head: gpt2 has no grouped-query attention; use 0 or model.n_head (4), found 2");
}

Test(config_contradictions, tf32_needs_cuda) {
    expect_error("model: {precision: tf32}\n",
                 "t.yaml:1:20: model.precision: tf32 needs model.device: cuda");
    expect_error("model:\n  device: cpu\n  precision: tf32\n",
                 "t.yaml:3:14: model.precision: tf32 needs model.device: cuda");
}

Test(config_contradictions, bf16_is_valid_on_the_cpu) {
    PonderConfig cfg;
    expect_ok(&cfg, "model: {device: cpu, precision: bf16}\n", 0, NULL);
    cr_expect_eq(cfg.model.precision, CONFIG_PRECISION_BF16);
    cr_expect_eq(cfg.model.device, CONFIG_DEVICE_CPU);
}

Test(config_contradictions, nccl_needs_cuda) {
    expect_error("dist: {grad_allreduce: nccl}\n",
                 "dist.grad_allreduce: nccl sums gradients on GPUs, which needs model.device: cuda");
}

Test(config_contradictions, gpt2_qkv_bias) {
    expect_error("model: {arch: gpt2, qkv_bias: true}\n", "model.qkv_bias: applies to llama only");
}

Test(config_contradictions, rope_needs_even_head_size) {
    expect_error("model: {d_model: 96, n_head: 32}\n",
                 "model.n_head: RoPE needs an even head size, but model.d_model / model.n_head = 3");
}

Test(config_contradictions, stage_seq_len_beyond_max_seq_len) {
    expect_error("stages:\n  - seq_len: 512\n", "t.yaml:2:14: stages.0.seq_len: 512 exceeds model.max_seq_len (256)");
    char *overrides[] = {"model.max_seq_len=64"};
    expect_error_n("", 1, overrides,
                   "override 'model.max_seq_len=64': eval.max_new_tokens: 64 leaves no room for a prompt");
}

Test(config_contradictions, jsonl_needs_train_file) {
    expect_error("data:\n  task: jsonl\n", "t.yaml:2:9: data.train: data.task is jsonl, which needs a training file");
}

Test(config_contradictions, digit_ranges) {
    expect_error("data: {min_digits: 4}\n", "t.yaml:1:20: data.min_digits: 4 is more than data.max_digits (3)");
    expect_error("data: {eval_max_digits: 1, eval_min_digits: 2}\n",
                 "data.eval_min_digits: 2 is more than data.eval_max_digits (1)");
}

Test(config_contradictions, arith_operators) {
    expect_error("data: {ops: '+/'}\n", "data.ops: '/' is not an operator; use + - *");
    expect_error("data: {ops: ''}\n", "data.ops: needs at least one operator");
}

Test(config_contradictions, bpe_needs_a_path) {
    expect_error("tokenizer: {type: bpe}\n", "t.yaml:1:19: tokenizer.path: tokenizer.type is bpe");
}

Test(config_contradictions, batch_size_and_grad_accum) {
    expect_error("stages:\n  - batch_size: 10\n    grad_accum: 4\n",
                 "t.yaml:3:17: stages.0.grad_accum: 4 does not divide stages.0.batch_size (10)");
}

Test(config_contradictions, thought_dropout_is_for_sft) {
    expect_error("stages:\n  - type: grpo\n    thought_dropout: 0.2\n",
                 "stages.0.thought_dropout: thought dropout applies to sft stages, not grpo");
}

Test(config_contradictions, stage_names_differ) {
    expect_error("stages:\n  - steps: 1\n  - steps: 2\n", "stages.1.name: 'sft' is also the name of stages.0");
}

Test(config_contradictions, greedy_samples_are_identical) {
    expect_error("eval: {num_samples: 4}\n", "eval.num_samples: 4 samples at eval.temperature 0 (greedy)");
}

Test(config_contradictions, run_name_is_a_directory_name) {
    expect_error("run: {name: a/b}\n", "run.name: must be a non-empty name without '/'");
    expect_error("run: {name: ''}\n", "run.name: must be a non-empty name");
}

Test(config_contradictions, validate_checks_ranges_of_code_built_configs) {
    PonderConfig c;
    PonderError err = {0};
    config_defaults(&c);
    c.optim.lr = -2;
    cr_assert_neq(config_validate(&c, &err), 0);
    cr_assert_str_eq(err.msg, "optim.lr: must be > 0, found -2.0");
    config_defaults(&c);
    c.n_stages = 0;
    cr_assert_neq(config_validate(&c, &err), 0);
    cr_assert(strstr(err.msg, "stages: needs 1 to 8 stages, found 0"), "%s", err.msg);
}

/* ---------------------------------------------------------------- overrides -*/

Test(config_overrides, apply_in_order_after_the_file) {
    PonderConfig c;
    char *overrides[] = {"model.n_layer=8", "optim.lr=1e-3", "model.n_layer=6", "run.name=a b: c",
                         "stages.0.steps=10", "stages.1.type=grpo", "stages.1.name=rl", "model.init_from="};
    expect_ok(&c, "model:\n  n_layer: 2\n  init_from: x.h5\n", 8, overrides);
    cr_assert_eq(c.model.n_layer, 6);
    cr_assert_eq(c.optim.lr, 1e-3);
    cr_assert_str_eq(c.run.name, "a b: c");
    cr_assert_str_eq(c.model.init_from, "");
    cr_assert_eq(c.n_stages, 2, "stages.<n_stages>.* appends a stage");
    cr_assert_eq(c.stages[0].steps, 10);
    cr_assert_eq(c.stages[1].type, CONFIG_STAGE_GRPO);
    cr_assert_eq(c.stages[1].steps, 100, "an appended stage starts at the stage defaults");
}

Test(config_overrides, unknown_key) {
    expect_override_error("model.n_layr=3", "override 'model.n_layr=3': unknown key 'model.n_layr'; did you mean 'model.n_layer'?");
    expect_override_error("stages.0.stpes=3", "override 'stages.0.stpes=3': unknown key 'stages.0.stpes'; did you mean 'stages.0.steps'?");
}

Test(config_overrides, wrong_type) {
    expect_override_error("model.n_layer=four", "override 'model.n_layer=four': model.n_layer: expected an integer, found 'four'");
    expect_override_error("model.arch=bert", "override 'model.arch=bert': model.arch: expected one of [llama, gpt2], found 'bert'");
    expect_override_error("optim.lr=0", "override 'optim.lr=0': optim.lr: must be > 0, found 0");
}

Test(config_overrides, malformed) {
    expect_override_error("model.n_layer", "override 'model.n_layer': expected key=value");
    expect_override_error("=3", "override '=3': expected key=value with a key");
    expect_override_error("model=3", "override 'model=3': model: is a section; override one of its keys");
    expect_override_error("stages=[]", "override 'stages=[]': stages: override one stage key, as stages.<i>.<key>");
    expect_override_error("stages.x.steps=1", "override 'stages.x.steps=1': stages.x.steps: override one stage key");
    expect_override_error("stages.3.steps=1", "override 'stages.3.steps=1': stages.3: no such stage; there are 1");
    expect_override_error("run.name=\xff", "override 'run.name=\xff': run.name: not valid UTF-8");
}

Test(config_overrides, contradiction_names_the_override) {
    expect_override_error("model.n_head=3", "override 'model.n_head=3': model.n_head: 3 does not divide model.d_model (128)");
}

Test(config_overrides, apply_override_on_a_loaded_config) {
    PonderConfig c;
    PonderError err = {0};
    config_defaults(&c);
    cr_assert_eq(config_apply_override(&c, "eval.top_k=5", &err), 0, "%s", err.msg);
    cr_assert_eq(c.eval.top_k, 5);
    cr_assert_neq(config_apply_override(&c, "eval.top_k=-1", &err), 0);
    cr_assert_str_eq(err.msg, "override 'eval.top_k=-1': eval.top_k: must be >= 0, found -1");
}

/* ---------------------------------------------------------------- files -----*/

Test(config_files, missing_file) {
    expect_file_error(DATA "nope.yaml", "cannot open config '" DATA "nope.yaml': No such file or directory");
}

Test(config_files, extends_merges_key_by_key_and_replaces_stages) {
    PonderConfig c;
    PonderError err = {0};
    cr_assert_eq(config_load(&c, DATA "child.yaml", 0, NULL, &err), 0, "%s", err.msg);
    cr_assert_str_eq(c.run.name, "child", "child overrides the parent");
    cr_assert_eq(c.run.seed, 7, "parent keys the child leaves alone survive");
    cr_assert_eq(c.model.d_model, 256);
    cr_assert_eq(c.model.n_head, 8);
    cr_assert_eq(c.model.n_layer, 6, "the child wins even though extends comes later in the file");
    cr_assert_eq(c.optim.lr, 0.001);
    cr_assert_eq(c.n_stages, 1, "the child's stages replace the parent's list whole");
    cr_assert_eq(c.stages[0].type, CONFIG_STAGE_PPO);
    cr_assert_eq(c.stages[0].steps, 5);
    cr_assert_str_eq(c.stages[0].name, "");
    cr_assert_eq(c.stages[1].steps, 0, "unused stage slots are cleared");
}

Test(config_files, extends_keeps_parent_stages_when_child_has_none) {
    PonderConfig c;
    PonderError err = {0};
    cr_assert_eq(config_load(&c, DATA "child_keeps_stages.yaml", 0, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_stages, 2);
    cr_assert_str_eq(c.stages[1].name, "rl");
    cr_assert_eq(c.optim.weight_decay, 0.0);
}

Test(config_files, extends_is_relative_to_the_including_file) {
    PonderConfig c;
    PonderError err = {0};
    cr_assert_eq(config_load(&c, DATA "sub/grandchild.yaml", 0, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(c.model.d_ff, 1024);
    cr_assert_eq(c.model.n_layer, 6);
    cr_assert_eq(c.run.seed, 7);
}

Test(config_files, extends_from_a_string_is_relative_to_its_name) {
    PonderConfig c;
    PonderError err = {0};
    int rc = config_load_string(&c, "extends: base.yaml\nrun: {seed: 3}\n", DATA "inline.yaml", 0, NULL, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_assert_eq(c.model.d_model, 256);
    cr_assert_eq(c.run.seed, 3);
}

Test(config_files, missing_parent_names_both_files) {
    expect_file_error(DATA "missing_parent.yaml", "missing_parent.yaml:3:10: extends: cannot open '" DATA
                                                  "does_not_exist.yaml': No such file or directory");
}

Test(config_files, extends_cycle_names_the_chain) {
    expect_file_error(DATA "cycle_a.yaml", "cycle_b.yaml:3:10: extends cycle: " DATA "cycle_a.yaml -> " DATA
                                           "cycle_b.yaml -> " DATA "cycle_a.yaml");
    expect_file_error(DATA "self_cycle.yaml", "extends cycle: " DATA "self_cycle.yaml -> " DATA "self_cycle.yaml");
}

Test(config_files, contradiction_after_merge_points_into_the_child) {
    expect_file_error(DATA "child_bad_head.yaml", "child_bad_head.yaml:3:11: model.n_head: 3 does not divide model.d_model (256)");
}

Test(config_files, extends_value_must_be_a_path) {
    expect_error("extends: [a, b]\n", "t.yaml:1:10: extends: expected a file path, found a sequence");
}

/* ---------------------------------------------------------------- writing ---*/

static void expect_round_trip(const PonderConfig *c) {
    char *text = config_to_yaml_string(c);
    cr_assert_not_null(text);
    PonderConfig back;
    PonderError err = {0};
    int rc = config_load_string(&back, text, "written.yaml", 0, NULL, &err);
    cr_assert_eq(rc, 0, "written config does not load: %s\n%s", err.msg, text);
    cr_assert_eq(memcmp(c, &back, sizeof back), 0, "round trip changed the config:\n%s", text);
    char *again = config_to_yaml_string(&back);
    cr_assert_str_eq(again, text);
    free(again);
    free(text);
}

Test(config_write, defaults_round_trip_exactly) {
    PonderConfig c;
    config_defaults(&c);
    expect_round_trip(&c);
}

Test(config_write, every_key_round_trips_exactly) {
    PonderConfig c;
    PonderError err = {0};
    cr_assert_eq(config_load(&c, DATA "all_keys.yaml", 0, NULL, &err), 0, "%s", err.msg);
    cr_assert_str_eq(c.run.name, "all \"keys\" run: #1 \\ é");
    cr_assert_eq(c.n_stages, 3);
    expect_round_trip(&c);
}

Test(config_write, strings_with_control_characters_round_trip) {
    PonderConfig c;
    char *overrides[] = {"run.dir=a\tb\nc\x01d\x7f", "data.eval=yes", "data.train=123", "runtime.blas='x'"};
    expect_ok(&c, "", 4, overrides);
    cr_assert_str_eq(c.run.dir, "a\tb\nc\x01d\x7f");
    expect_round_trip(&c);
}

Test(config_write, awkward_floats_round_trip) {
    PonderConfig c;
    char *overrides[] = {"optim.lr=0.30000000000000004", "optim.eps=4.9406564584124654e-324",
                         "model.rope_theta=1e300", "model.init_std=-0", "optim.beta1=0.1"};
    expect_ok(&c, "", 5, overrides);
    expect_round_trip(&c);
}

/* A new schema key must get a non-default value in all_keys.yaml, or the round
 * trip above would not cover it. A list item key (stages.*.x, rewards.*.x)
 * must differ from its default in at least one item. */
Test(config_write, all_keys_fixture_covers_every_key) {
    /* gpt2 (non-default arch) forbids qkv_bias, so the fixture cannot set both. */
    static const char *const exempt[] = {"model.qkv_bias"};
    static PonderConfig c, d; /* large */
    PonderError err = {0};
    cr_assert_eq(config_load(&c, DATA "all_keys.yaml", 0, NULL, &err), 0, "%s", err.msg);
    config_defaults(&d);
    size_t n;
    const ConfigKey *keys = config_keys(&n);
    for (size_t i = 0; i < n; i++) {
        if (keys[i].type == CONFIG_LIST || !strcmp(keys[i].path, exempt[0])) continue;
        cr_assert_neq(memcmp((char *)&c + keys[i].offset, (char *)&d + keys[i].offset, keys[i].size), 0,
                      "all_keys.yaml leaves %s at its default", keys[i].path);
    }
    const ConfigList *lists = config_lists(&n);
    cr_assert_eq(n, 2);
    for (size_t l = 0; l < n; l++) {
        const ConfigList *list = &lists[l];
        union {
            ConfigStage stage;
            ConfigReward reward;
        } item;
        config_list_item_defaults(list, &item);
        const char *item_default = (const char *)&item;
        int count = config_list_count(list, &c);
        cr_assert_geq(count, 2, "all_keys.yaml has at least two %ss", list->item);
        for (size_t i = 0; i < list->n_keys; i++) {
            const ConfigKey *k = &list->keys[i];
            bool covered = false;
            for (int s = 0; s < count; s++)
                covered |= memcmp((const char *)config_list_item_const(list, &c, s) + k->offset, item_default + k->offset,
                                  k->size) != 0;
            cr_assert(covered, "all_keys.yaml leaves %s.*.%s at its default in every %s", list->path, k->path, list->item);
        }
    }
}

Test(config_write, output_lists_every_key_with_its_doc) {
    PonderConfig c;
    config_defaults(&c);
    char *text = config_to_yaml_string(&c);
    cr_assert_not_null(text);
    cr_assert(strstr(text, "model:\n  arch: llama "));
    cr_assert(strstr(text, "  d_model: 128 "));
    cr_assert(strstr(text, "  lr: 0.0003 "));
    cr_assert(strstr(text, "  rope_theta: 10000.0 "));
    cr_assert(strstr(text, "stages: "));
    cr_assert(strstr(text, "  - name: \"\" "));
    cr_assert(strstr(text, "# width of the residual stream"));
    free(text);
}

/* ---------------------------------------------------------------- RL stages -*/

Test(config_rl, defaults_match_the_brief) {
    PonderConfig c;
    config_defaults(&c);
    const ConfigStage *s = &c.stages[0];
    cr_assert_eq(s->num_generations, 8);
    cr_assert_eq(s->prompts_per_step, 16);
    cr_assert_eq(s->mini_batches, 1);
    cr_assert_eq(s->num_iterations, 1);
    cr_assert_eq(s->temperature, 1.0);
    cr_assert_eq(s->top_p, 1.0);
    cr_assert_eq(s->top_k, 0);
    cr_assert_eq(s->min_p, 0.0);
    cr_assert_eq(s->max_new_tokens, 64);
    cr_assert_eq(s->scale_rewards, ALGO_SCALE_GROUP);
    cr_assert_eq(s->loss_type, ALGO_LOSS_DAPO);
    cr_assert_eq(s->epsilon, 0.2);
    cr_assert_eq(s->epsilon_high, 0.0);
    cr_assert_eq(s->dual_clip, 0.0);
    cr_assert_eq(s->ratio_level, ALGO_RATIO_TOKEN);
    cr_assert_eq(s->beta, 0.0);
    cr_assert_eq(s->kl_estimator, ALGO_KL_K3);
    cr_assert_not(s->kl_in_reward);
    cr_assert_eq(s->kl_target, 0.0);
    cr_assert_eq(s->kl_horizon, 10000);
    cr_assert_eq(s->entropy_coef, 0.0);
    cr_assert_not(s->rpp_baseline);
    cr_assert_not(s->dynamic_sampling);
    cr_assert_eq(s->max_resample_rounds, 3);
    cr_assert_not(s->mask_truncated);
    cr_assert_eq(s->gamma, 1.0);
    cr_assert_eq(s->lam, 0.95);
    cr_assert_eq(s->value_lr, 0.0);
    cr_assert_eq(s->cliprange_value, 0.2);
    cr_assert_eq(c.n_rewards, 0, "no rewards = the task's default");
    cr_assert_eq(c.scoring.combine, REWARD_COMBINE_SUM);
    cr_assert_eq(c.scoring.eps, 1e-6);
}

/* The schema's enum names index the algos/ and rewards/ enums directly. */
Test(config_rl, enum_names_map_to_the_module_enums) {
    PonderConfig c;
    expect_ok(&c,
              "stages:\n  - type: grpo\n    loss_type: grpo\n    scale_rewards: none\n    kl_estimator: k2\n"
              "    ratio_level: sequence\n  - type: ppo\n    loss_type: dr_grpo\n    scale_rewards: batch\n"
              "    kl_estimator: k1\n  - type: rloo\n    loss_type: bnpo\n"
              "scoring: {combine: sum_then_normalize}\n"
              "rewards:\n  - {name: a, type: exact}\n  - {name: b, type: think_format}\n"
              "  - {name: c, type: length, cap: 3, unit: steps}\n",
              0, NULL);
    cr_assert_eq(c.stages[0].loss_type, ALGO_LOSS_GRPO);
    cr_assert_eq(c.stages[0].scale_rewards, ALGO_SCALE_NONE);
    cr_assert_eq(c.stages[0].kl_estimator, ALGO_KL_K2);
    cr_assert_eq(c.stages[0].ratio_level, ALGO_RATIO_SEQUENCE);
    cr_assert_eq(c.stages[1].loss_type, ALGO_LOSS_DR_GRPO);
    cr_assert_eq(c.stages[1].scale_rewards, ALGO_SCALE_BATCH);
    cr_assert_eq(c.stages[1].kl_estimator, ALGO_KL_K1);
    cr_assert_eq(c.stages[2].loss_type, ALGO_LOSS_BNPO);
    cr_assert_eq(c.scoring.combine, REWARD_COMBINE_SUM_THEN_NORMALIZE);
    cr_assert_eq(c.rewards[0].type, REWARD_EXACT);
    cr_assert_eq(c.rewards[1].type, REWARD_THINK_FORMAT);
    cr_assert_eq(c.rewards[2].type, REWARD_LENGTH);
    cr_assert_eq(c.rewards[2].unit, REWARD_LENGTH_STEPS);
    expect_ok(&c, "scoring: {combine: normalize_then_sum}\n", 0, NULL);
    cr_assert_eq(c.scoring.combine, REWARD_COMBINE_NORMALIZE_THEN_SUM);
}

Test(config_rl, ranges_of_rl_keys) {
    expect_error("stages:\n  - num_generations: 0\n", "t.yaml:2:22: stages.0.num_generations: must be >= 1, found 0");
    expect_error("stages:\n  - epsilon: 1\n", "stages.0.epsilon: must be in (0, 1), found 1");
    expect_error("stages:\n  - epsilon: 0\n", "stages.0.epsilon: must be in (0, 1), found 0");
    expect_error("stages:\n  - temperature: 0\n", "stages.0.temperature: must be > 0, found 0");
    expect_error("stages:\n  - top_p: 1.5\n", "stages.0.top_p: must be in (0, 1], found 1.5");
    expect_error("stages:\n  - min_p: 1\n", "stages.0.min_p: must be in [0, 1), found 1");
    expect_error("stages:\n  - gamma: 1.01\n", "stages.0.gamma: must be in [0, 1], found 1.01");
    expect_error("stages:\n  - lam: -0.1\n", "stages.0.lam: must be in [0, 1], found -0.1");
    expect_error("stages:\n  - kl_horizon: 0\n", "stages.0.kl_horizon: must be >= 1, found 0");
    expect_error("stages:\n  - max_resample_rounds: -1\n", "stages.0.max_resample_rounds: must be >= 0, found -1");
    expect_error("stages:\n  - loss_type: dapo2\n",
                 "t.yaml:2:16: stages.0.loss_type: expected one of [grpo, bnpo, dr_grpo, dapo], found 'dapo2'; "
                 "did you mean 'dapo'?");
    expect_error("stages:\n  - kl_estimator: k4\n", "stages.0.kl_estimator: expected one of [k1, k2, k3], found 'k4'");
    expect_error("stages:\n  - scale_rewards: true\n",
                 "stages.0.scale_rewards: expected one of [group, batch, none], found 'true'");
    expect_error("stages:\n  - ratio_level: seq\n", "stages.0.ratio_level: expected one of [token, sequence], found 'seq'");
    expect_error("scoring: {eps: 0}\n", "t.yaml:1:16: scoring.eps: must be > 0, found 0");
    expect_error("scoring: {combine: normalise_then_sum}\n",
                 "scoring.combine: expected one of [sum, sum_then_normalize, normalize_then_sum], found "
                 "'normalise_then_sum'; did you mean 'normalize_then_sum'?");
}

Test(config_rl, mini_batches_hold_whole_groups) {
    expect_error("stages:\n  - type: grpo\n    mini_batches: 17\n",
                 "t.yaml:3:19: stages.0.mini_batches: 17 is more than stages.0.prompts_per_step (16): a "
                 "mini-batch holds whole groups, so there are at most as many as prompts");
    /* from overrides; any count up to the prompts passes, divisor or not */
    char *overrides[] = {"stages.0.type=ppo", "stages.0.prompts_per_step=5", "stages.0.num_generations=3",
                         "stages.0.mini_batches=6"};
    expect_error_n("", 4, overrides, "override 'stages.0.mini_batches=6': stages.0.mini_batches: 6 is more than "
                                     "stages.0.prompts_per_step (5)");
    PonderConfig c;
    expect_ok(&c, "stages:\n  - {type: ppo, prompts_per_step: 5, num_generations: 3, mini_batches: 2}\n", 0, NULL);
    expect_ok(&c, "stages:\n  - {type: ppo, prompts_per_step: 5, num_generations: 3, mini_batches: 5}\n", 0, NULL);
    expect_ok(&c, "stages:\n  - {type: sft, mini_batches: 70}\n", 0, NULL); /* sft ignores the RL keys */
}

Test(config_rl, rollout_size_overflow) {
    expect_error("stages:\n  - {type: ppo, prompts_per_step: 4611686018427387904, num_generations: 4}\n",
                 "stages.0.prompts_per_step: 4611686018427387904 prompts of 4 samples each overflow");
}

Test(config_rl, max_new_tokens_leaves_room_for_a_prompt) {
    expect_error("stages:\n  - type: rloo\n    max_new_tokens: 256\n",
                 "t.yaml:3:21: stages.0.max_new_tokens: 256 leaves no room for a prompt within model.max_seq_len (256)");
    /* max_new_tokens at its default: the message points at model.max_seq_len */
    expect_error("model: {max_seq_len: 64}\neval: {max_new_tokens: 8}\nstages:\n  - type: grpo\n",
                 "t.yaml:1:22: stages.0.max_new_tokens: 64 leaves no room for a prompt within model.max_seq_len (64)");
    PonderConfig c;
    expect_ok(&c, "model: {max_seq_len: 64}\neval: {max_new_tokens: 8}\nstages:\n  - type: sft\n", 0, NULL);
}

Test(config_rl, group_algorithms_need_two_samples) {
    expect_error("stages:\n  - type: grpo\n    num_generations: 1\n",
                 "t.yaml:3:22: stages.0.num_generations: grpo needs at least 2 samples per prompt: the group mean "
                 "and std that its advantage uses are undefined with one sample, found 1");
    expect_error("stages:\n  - type: rloo\n    num_generations: 1\n",
                 "t.yaml:3:22: stages.0.num_generations: rloo needs at least 2 samples per prompt: the leave-one-out "
                 "baseline (the mean of the other samples) is undefined with one sample, found 1");
    expect_error("stages:\n  - {type: reinforce_pp, rpp_baseline: true, num_generations: 1}\n",
                 "stages.0.num_generations: reinforce_pp with rpp_baseline needs at least 2 samples per prompt");
    /* num_generations at its default 8 is fine; a type changed by override is judged too */
    char *overrides[] = {"stages.0.num_generations=1", "stages.0.type=grpo"};
    expect_error_n("", 2, overrides, "override 'stages.0.num_generations=1': stages.0.num_generations: grpo needs");
    PonderConfig c;
    expect_ok(&c, "stages:\n  - {type: ppo, num_generations: 1}\n  - {type: reinforce_pp, num_generations: 1}\n", 0,
              NULL);
}

Test(config_rl, dynamic_sampling_needs_group_advantages) {
    expect_error("stages:\n  - type: ppo\n    dynamic_sampling: true\n",
                 "t.yaml:3:23: stages.0.dynamic_sampling: drops groups whose rewards are all equal, which only changes "
                 "group-based advantages (grpo, rloo, or reinforce_pp with rpp_baseline), not ppo");
    expect_error("stages:\n  - {type: reinforce_pp, dynamic_sampling: true}\n",
                 "stages.0.dynamic_sampling: drops groups whose rewards are all equal, which only changes group-based "
                 "advantages (grpo, rloo, or reinforce_pp with rpp_baseline), not reinforce_pp without rpp_baseline");
    PonderConfig c;
    expect_ok(&c,
              "stages:\n  - {type: grpo, dynamic_sampling: true}\n  - {type: rloo, dynamic_sampling: true}\n"
              "  - {type: reinforce_pp, rpp_baseline: true, dynamic_sampling: true}\n"
              "  - {type: sft, dynamic_sampling: true}\n",
              0, NULL);
}

Test(config_rl, dual_clip_is_off_or_above_one) {
    expect_error("stages:\n  - type: grpo\n    dual_clip: 0.5\n",
                 "t.yaml:3:16: stages.0.dual_clip: must be 0 (off) or > 1 (the bound on -A * ratio for A < 0), "
                 "found 0.5");
    expect_error("stages:\n  - {type: ppo, dual_clip: 1}\n", "stages.0.dual_clip: must be 0 (off) or > 1");
    expect_error("stages:\n  - {type: ppo, dual_clip: -3}\n", "stages.0.dual_clip: must be >= 0, found -3");
    PonderConfig c;
    expect_ok(&c, "stages:\n  - {type: ppo, dual_clip: 3}\n  - {type: grpo, dual_clip: 0, name: b}\n", 0, NULL);
    cr_assert_eq(c.stages[0].dual_clip, 3.0);
}

Test(config_rl, adaptive_kl_needs_a_starting_beta) {
    expect_error("stages:\n  - type: ppo\n    kl_target: 0.1\n",
                 "t.yaml:3:16: stages.0.kl_target: the adaptive KL controller scales stages.0.beta, which stays 0 "
                 "when it starts at 0; set beta > 0 or kl_target 0");
    PonderConfig c;
    expect_ok(&c, "stages:\n  - {type: ppo, kl_target: 0.1, beta: 0.01, kl_in_reward: true, kl_estimator: k1}\n", 0, NULL);
}

Test(config_rl, rl_rules_apply_to_every_rl_type) {
    /* The same stage, each RL type: the rules that are not type-specific fire for all. */
    static const char *const types[] = {"grpo", "ppo", "rloo", "reinforce_pp"};
    for (size_t i = 0; i < 4; i++) {
        char yaml[256];
        snprintf(yaml, sizeof yaml, "stages:\n  - {type: %s, mini_batches: 17}\n", types[i]);
        expect_error(yaml, "stages.0.mini_batches: 17 is more than stages.0.prompts_per_step (16)");
        snprintf(yaml, sizeof yaml, "stages:\n  - {type: %s, max_new_tokens: 300}\n", types[i]);
        expect_error(yaml, "stages.0.max_new_tokens: 300 leaves no room for a prompt");
        snprintf(yaml, sizeof yaml, "stages:\n  - {type: %s, dual_clip: 0.9}\n", types[i]);
        expect_error(yaml, "stages.0.dual_clip: must be 0 (off) or > 1");
        snprintf(yaml, sizeof yaml, "stages:\n  - {type: %s, thought_dropout: 0.1}\n", types[i]);
        expect_error(yaml, "stages.0.thought_dropout: thought dropout applies to sft stages");
    }
}

Test(config_rl, derived_stage_values) {
    PonderConfig c;
    expect_ok(&c,
              "optim: {lr: 0.01}\nstages:\n  - {type: grpo, epsilon: 0.1}\n"
              "  - {type: ppo, epsilon_high: 0.28, lr: 0.002, value_lr: 0.5}\n  - {type: ppo, name: p2, lr: 0.003}\n",
              0, NULL);
    cr_assert_eq(config_stage_epsilon_high(&c, 0), 0.1, "0 = epsilon");
    cr_assert_eq(config_stage_epsilon_high(&c, 1), 0.28);
    cr_assert_eq(config_stage_value_lr(&c, 0), 0.01, "0 = the stage's lr, which is 0 = optim.lr");
    cr_assert_eq(config_stage_value_lr(&c, 1), 0.5);
    cr_assert_eq(config_stage_value_lr(&c, 2), 0.003);
    cr_assert_not(config_stage_is_rl(CONFIG_STAGE_SFT));
    cr_assert(config_stage_is_rl(CONFIG_STAGE_GRPO) && config_stage_is_rl(CONFIG_STAGE_PPO) &&
              config_stage_is_rl(CONFIG_STAGE_RLOO) && config_stage_is_rl(CONFIG_STAGE_REINFORCE_PP));
}

/* ---------------------------------------------------------------- rewards ---*/

Test(config_rewards, list_parses_with_defaults_for_unlisted_keys) {
    PonderConfig c;
    expect_ok(&c,
              "rewards:\n  - {name: correct, type: math_verify, weight: 1.0}\n"
              "  - name: format\n    type: think_format\n    weight: 0.1\n"
              "  - {name: long, type: overlong, max_len: 40, buffer: 8}\n",
              0, NULL);
    cr_assert_eq(c.n_rewards, 3);
    cr_assert_str_eq(c.rewards[0].name, "correct");
    cr_assert_eq(c.rewards[0].type, REWARD_MATH_VERIFY);
    cr_assert_eq(c.rewards[0].tolerance, 1e-6);
    cr_assert_eq(c.rewards[0].timeout_s, 10.0);
    cr_assert_str_eq(c.rewards[1].name, "format");
    cr_assert_eq(c.rewards[1].type, REWARD_THINK_FORMAT);
    cr_assert_eq(c.rewards[1].weight, 0.1);
    cr_assert_eq(c.rewards[2].max_len, 40);
    cr_assert_eq(c.rewards[2].buffer, 8);
    cr_assert_eq(c.rewards[2].factor, 1.0);
    cr_assert_eq(c.rewards[2].weight, 1.0);
    cr_assert_eq(c.rewards[3].name[0], '\0', "unused slots stay zero");
}

Test(config_rewards, absent_null_or_empty_list_means_the_task_default) {
    PonderConfig c, d;
    config_defaults(&d);
    expect_ok(&c, "rewards: []\n", 0, NULL);
    cr_assert_eq(c.n_rewards, 0);
    cr_assert_eq(memcmp(&c, &d, sizeof c), 0);
    expect_ok(&c, "rewards:\n", 0, NULL);
    cr_assert_eq(memcmp(&c, &d, sizeof c), 0);
    expect_ok(&c, "rewards: ~\nstages: [{type: grpo}]\n", 0, NULL);
    cr_assert_eq(c.n_rewards, 0);
}

Test(config_rewards, list_shape_errors) {
    expect_error("rewards: {name: a}\n", "t.yaml:1:10: rewards: expected a list of rewards, found a mapping");
    expect_error("rewards: [correct]\n", "t.yaml:1:11: rewards.0: expected a mapping of reward keys, found a scalar");
    expect_error("rewards: [{name: a}, {name: b}, {name: c}, {name: d}, {name: e}, {name: f}, {name: g}, {name: h},"
                 " {name: i}]\n",
                 "t.yaml:1:10: rewards: at most 8 rewards, found 9");
    expect_error("rewards:\n  - name: a\n    wieght: 2\n",
                 "t.yaml:3:5: unknown key 'rewards.0.wieght'; did you mean 'rewards.0.weight'?");
    expect_error("rewards:\n  - {name: a, name: b}\n", "duplicate key 'rewards.0.name' (first at 2:6)");
    expect_error("rewards:\n  - {name: a, type: exactt}\n",
                 "t.yaml:2:21: rewards.0.type: expected one of [math_verify, exact, think_format, overlong, length, "
                 "external, plugin], found 'exactt'; did you mean 'exact'?");
    expect_error("rewards:\n  - {name: a, unit: lines}\n", "rewards.0.unit: expected one of [tokens, steps], found 'lines'");
    expect_error("rewards:\n  - {name: a, timeout_s: 0}\n", "t.yaml:2:26: rewards.0.timeout_s: must be > 0, found 0");
    expect_error("rewards:\n  - {name: a, tolerance: -1}\n", "rewards.0.tolerance: must be >= 0, found -1");
    expect_error("rewards:\n  - {name: a, cap: -1}\n", "rewards.0.cap: must be >= 0, found -1");
    expect_error("rewards:\n  - {name: a, weight: lots}\n", "rewards.0.weight: expected a number, found 'lots'");
    char yaml[256];
    snprintf(yaml, sizeof yaml, "rewards:\n  - name: %064d\n", 0);
    expect_error(yaml, "t.yaml:2:11: rewards.0.name: at most 63 bytes, found 64");
}

Test(config_rewards, names_are_required_well_formed_and_unique) {
    /* name left out: the message points at the type, else at the item */
    expect_error("rewards:\n  - {type: exact}\n",
                 "t.yaml:2:12: rewards.0.name: every reward needs a name (it labels the reward's metrics)");
    expect_error("rewards:\n  - {weight: 2}\n", "t.yaml:2:5: rewards.0.name: every reward needs a name");
    expect_error("rewards:\n  - name: ''\n", "t.yaml:2:11: rewards.0.name: every reward needs a name");
    expect_error("rewards:\n  - {name: a b}\n",
                 "t.yaml:2:12: rewards.0.name: \"a b\" may use only letters, digits, '_' and '-' (it becomes a metric name)");
    expect_error("rewards:\n  - {name: x.y}\n", "rewards.0.name: \"x.y\" may use only letters");
    expect_error("rewards:\n  - {name: ok}\n  - {name: fine, type: exact}\n  - {name: ok, type: think_format}\n",
                 "t.yaml:4:12: rewards.2.name: 'ok' is also the name of rewards.0; reward names must differ");
}

Test(config_rewards, type_specific_fields) {
    expect_error("rewards:\n  - {name: judge, type: external}\n",
                 "t.yaml:2:25: rewards.0.command: an external reward needs a command (a shell line that answers JSON lines)");
    expect_error("rewards:\n  - {name: p, type: plugin, config: '{}'}\n",
                 "t.yaml:2:21: rewards.0.path: a plugin reward needs path (a shared object)");
    expect_error("rewards:\n  - name: long\n    type: overlong\n    max_len: 40\n",
                 "t.yaml:3:11: rewards.0.buffer: overlong needs 0 < buffer <= max_len (the penalty ramps over the last "
                 "buffer tokens before max_len), found max_len 40, buffer 0 (DAPO: max_len 20480, buffer 4096)");
    expect_error("rewards:\n  - name: long\n    type: overlong\n    max_len: 40\n    buffer: 41\n",
                 "t.yaml:5:13: rewards.0.buffer: overlong needs 0 < buffer <= max_len");
    expect_error("rewards:\n  - {name: long, type: overlong, buffer: 8}\n",
                 "t.yaml:2:24: rewards.0.max_len: overlong needs 0 < buffer <= max_len");
    expect_error("rewards:\n  - {name: len, type: length, unit: steps}\n",
                 "t.yaml:2:23: rewards.0.cap: length needs cap > 0 (the step count that earns the full reward), found 0");
    expect_error("rewards:\n  - {name: len, type: length}\n", "rewards.0.cap: length needs cap > 0 (the token count");
    expect_error("rewards:\n  - {name: m, tolerance: 1}\n",
                 "t.yaml:2:26: rewards.0.tolerance: math_verify needs a relative tolerance in [0, 1), found 1");
    /* fields of other types are ignored */
    PonderConfig c;
    expect_ok(&c,
              "rewards:\n  - {name: a, type: think_format, tolerance: 5, max_len: 1, buffer: 9}\n"
              "  - {name: b, type: overlong, max_len: 8, buffer: 8, cap: 0}\n"
              "  - {name: c, type: external, command: 'true', path: ''}\n  - {name: d, type: plugin, path: x.so}\n",
              0, NULL);
}

Test(config_rewards, extends_replaces_the_list_whole) {
    PonderConfig c;
    PonderError err = {0};
    cr_assert_eq(config_load(&c, DATA "rewards_base.yaml", 0, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_rewards, 2);
    cr_assert_eq(c.scoring.combine, REWARD_COMBINE_SUM_THEN_NORMALIZE);
    int rc = config_load_string(&c, "extends: rewards_base.yaml\nrewards:\n  - {name: only, type: exact}\n",
                                DATA "inline.yaml", 0, NULL, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_assert_eq(c.n_rewards, 1, "the child's list replaces the parent's");
    cr_assert_str_eq(c.rewards[0].name, "only");
    cr_assert_eq(c.rewards[0].weight, 1.0, "replaced items start from the defaults, not the parent's item");
    cr_assert_eq(c.rewards[1].name[0], '\0', "slots past the new list are cleared");
    cr_assert_eq(c.scoring.combine, REWARD_COMBINE_SUM_THEN_NORMALIZE, "scoring merges key by key");
    rc = config_load_string(&c, "extends: rewards_base.yaml\nscoring: {eps: 0.5}\n", DATA "inline.yaml", 0, NULL, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_assert_eq(c.n_rewards, 2, "a child without rewards keeps the parent's");
    cr_assert_eq(c.rewards[1].weight, 0.1);
    cr_assert_eq(c.scoring.eps, 0.5);
    rc = config_load_string(&c, "extends: rewards_base.yaml\nrewards: []\n", DATA "inline.yaml", 0, NULL, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    cr_assert_eq(c.n_rewards, 0, "an empty list in the child goes back to the task's default");
    cr_assert_eq(c.rewards[0].name[0], '\0');
}

Test(config_rewards, error_after_merge_points_into_the_child) {
    PonderError err = {0};
    PonderConfig c;
    int rc = config_load_string(&c, "extends: rewards_base.yaml\nrewards:\n  - {name: a}\n  - {name: a}\n",
                                DATA "inline.yaml", 0, NULL, &err);
    cr_assert_neq(rc, 0);
    cr_assert(strstr(err.msg, "inline.yaml:4:12: rewards.1.name: 'a' is also the name of rewards.0"), "%s", err.msg);
}

Test(config_rewards, overrides_set_and_append) {
    PonderConfig c;
    char *overrides[] = {"rewards.0.weight=3", "rewards.2.name=fmt", "rewards.2.type=think_format",
                         "rewards.3.type=length", "rewards.3.name=len", "rewards.3.cap=12", "scoring.eps=0.01"};
    expect_ok(&c, "rewards:\n  - {name: a}\n  - {name: b, type: exact}\n", 7, overrides);
    cr_assert_eq(c.n_rewards, 4, "rewards.<n_rewards>.* appends");
    cr_assert_eq(c.rewards[0].weight, 3.0);
    cr_assert_str_eq(c.rewards[2].name, "fmt");
    cr_assert_eq(c.rewards[2].type, REWARD_THINK_FORMAT);
    cr_assert_eq(c.rewards[2].weight, 1.0, "an appended reward starts at the defaults");
    cr_assert_eq(c.rewards[3].cap, 12);
    cr_assert_eq(c.scoring.eps, 0.01);
    char *onto_empty[] = {"rewards.0.name=correct"};
    expect_ok(&c, "", 1, onto_empty);
    cr_assert_eq(c.n_rewards, 1);
    cr_assert_eq(c.rewards[0].type, REWARD_MATH_VERIFY);
    expect_round_trip(&c);
}

Test(config_rewards, override_errors) {
    expect_override_error("rewards.1.name=x", "override 'rewards.1.name=x': rewards.1: no such reward; there are 0 "
                                              "(rewards.0.* appends one, up to 8)");
    expect_override_error("rewards=[]", "override 'rewards=[]': rewards: override one reward key, as rewards.<i>.<key>");
    expect_override_error("rewards.a.name=x", "override 'rewards.a.name=x': rewards.a.name: override one reward key");
    expect_override_error("rewards.0=x", "override 'rewards.0=x': rewards.0: override one reward key");
    expect_override_error("rewards.0.nmae=x",
                          "override 'rewards.0.nmae=x': unknown key 'rewards.0.nmae'; did you mean 'rewards.0.name'?");
    expect_override_error("rewards.0.weight=heavy",
                          "override 'rewards.0.weight=heavy': rewards.0.weight: expected a number, found 'heavy'");
    /* the append itself is valid; the missing name is found by validation, at the override */
    expect_override_error("rewards.0.type=external",
                          "override 'rewards.0.type=external': rewards.0.name: every reward needs a name");
    char *eight[9];
    char text[9][32];
    for (int i = 0; i < 9; i++) {
        snprintf(text[i], sizeof text[i], "rewards.%d.name=r%d", i, i);
        eight[i] = text[i];
    }
    PonderConfig c;
    expect_ok(&c, "", 8, eight);
    cr_assert_eq(c.n_rewards, 8);
    expect_error_n("", 9, eight, "override 'rewards.8.name=r8': rewards.8: no such reward; there are 8");
}

Test(config_rewards, a_failed_override_leaves_the_item_unchanged) {
    PonderConfig c;
    PonderError err = {0};
    expect_ok(&c, "rewards: [{name: a, weight: 2}]\n", 0, NULL);
    cr_assert_neq(config_apply_override(&c, "rewards.0.timeout_s=-1", &err), 0);
    cr_assert_str_eq(err.msg, "override 'rewards.0.timeout_s=-1': rewards.0.timeout_s: must be > 0, found -1");
    cr_assert_eq(c.rewards[0].timeout_s, 10.0);
    cr_assert_neq(config_apply_override(&c, "rewards.1.timeout_s=-1", &err), 0);
    cr_assert_eq(c.n_rewards, 1, "a failed append appends nothing");
}

Test(config_rewards, specs_from_the_config) {
    PonderConfig c;
    PonderError err = {0};
    expect_ok(&c,
              "rewards:\n  - {name: correct, type: math_verify, weight: 1.0, tolerance: 0.01}\n"
              "  - {name: format, type: think_format, weight: 0.1}\n"
              "  - {name: long, type: overlong, max_len: 40, buffer: 8, factor: 0.5}\n"
              "  - {name: steps, type: length, unit: steps, cap: 4}\n"
              "  - {name: judge, type: external, command: 'cat', timeout_s: 3}\n"
              "  - {name: plug, type: plugin, path: lib.so, config: '{\"a\": 1}'}\n",
              0, NULL);
    RewardSpec specs[CONFIG_MAX_REWARDS];
    int n = -1;
    cr_assert_eq(config_reward_specs(&c, specs, CONFIG_MAX_REWARDS, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 6);
    cr_assert_eq(specs[0].name, c.rewards[0].name, "names point into the config");
    cr_assert_eq(specs[0].type, REWARD_MATH_VERIFY);
    cr_assert_eq(specs[0].tolerance, 0.01);
    cr_assert_null(specs[0].command, "\"\" reads as NULL");
    cr_assert_null(specs[0].path);
    cr_assert_null(specs[0].config_json);
    cr_assert_null(specs[0].argv);
    cr_assert_eq(specs[0].n_outputs, 0);
    cr_assert_eq(specs[1].type, REWARD_THINK_FORMAT);
    cr_assert_eq(specs[1].weight, 0.1);
    cr_assert_eq(specs[2].max_len, 40);
    cr_assert_eq(specs[2].buffer, 8);
    cr_assert_eq(specs[2].factor, 0.5);
    cr_assert_eq(specs[3].unit, REWARD_LENGTH_STEPS);
    cr_assert_eq(specs[3].cap, 4);
    cr_assert_str_eq(specs[4].command, "cat");
    cr_assert_eq(specs[4].timeout_s, 3.0);
    cr_assert_str_eq(specs[5].path, "lib.so");
    cr_assert_str_eq(specs[5].config_json, "{\"a\": 1}");
    for (int i = 0; i < n; i++) cr_assert_eq(reward_spec_validate(&specs[i], &err), 0, "%s", err.msg);
    /* room for fewer than configured */
    cr_assert_neq(config_reward_specs(&c, specs, 2, &n, &err), 0);
    cr_assert_str_eq(err.msg, "rewards: 6 rewards configured, room for 2");
    cr_assert_eq(n, 0);
    /* none configured: the caller uses the task's default */
    config_defaults(&c);
    n = -1;
    cr_assert_eq(config_reward_specs(&c, specs, CONFIG_MAX_REWARDS, &n, &err), 0);
    cr_assert_eq(n, 0);
}

Test(config_rewards, the_specs_build_real_rewards) {
    PonderConfig c;
    PonderError err = {0};
    expect_ok(&c, "rewards:\n  - {name: correct, type: math_verify}\n  - {name: format, type: think_format, weight: 0.1}\n",
              0, NULL);
    RewardSpec specs[CONFIG_MAX_REWARDS];
    int n;
    cr_assert_eq(config_reward_specs(&c, specs, CONFIG_MAX_REWARDS, &n, &err), 0, "%s", err.msg);
    RewardSet *set = NULL;
    cr_assert_eq(reward_set_create(&set, specs, n, c.scoring.combine, c.scoring.eps, &err), 0, "%s", err.msg);
    cr_assert_eq(reward_set_n_components(set), 2);
    cr_assert_str_eq(reward_set_component_name(set, 1), "format");
    cr_assert_eq(reward_set_component_weight(set, 1), 0.1);
    reward_set_free(set);
}

Test(config_rewards, validate_checks_code_built_rewards) {
    static PonderConfig c;
    PonderError err = {0};
    config_defaults(&c);
    c.n_rewards = 9;
    cr_assert_neq(config_validate(&c, &err), 0);
    cr_assert_str_eq(err.msg, "rewards: needs 0 to 8 rewards, found 9");
    config_defaults(&c);
    c.n_rewards = 1;
    snprintf(c.rewards[0].name, sizeof c.rewards[0].name, "w");
    c.rewards[0].type = REWARD_THINK_FORMAT;
    c.rewards[0].timeout_s = 10;
    c.rewards[0].weight = NAN; /* no range on weight: the reward module's own check catches it */
    cr_assert_neq(config_validate(&c, &err), 0);
    cr_assert_str_eq(err.msg, "rewards.0: reward \"w\": weight must be finite, got nan");
    cr_assert_neq(config_reward_specs(&c, (RewardSpec[1]){0}, 1, &(int){0}, &err), 0);
    cr_assert_str_eq(err.msg, "rewards.0: reward \"w\": weight must be finite, got nan");
    c.rewards[0].weight = 1;
    c.rewards[0].type = (RewardType)42;
    cr_assert_neq(config_validate(&c, &err), 0);
    cr_assert_str_eq(err.msg, "rewards.0.type: enum value 42 is out of range");
}

Test(config_rewards, written_list_round_trips) {
    PonderConfig c;
    config_defaults(&c);
    char *text = config_to_yaml_string(&c);
    cr_assert(strstr(text, "\nrewards: [] "), "%s", text);
    cr_assert(strstr(text, "\nscoring:\n  combine: sum "), "%s", text);
    free(text);
    expect_ok(&c, "rewards:\n  - {name: a, config: \"{\\\"x\\\": \\\"\\\\n\\\"}\", command: \"a\\tb\"}\n", 0, NULL);
    cr_assert_str_eq(c.rewards[0].config, "{\"x\": \"\\n\"}");
    cr_assert_str_eq(c.rewards[0].command, "a\tb");
    text = config_to_yaml_string(&c);
    cr_assert(strstr(text, "\nrewards:  "), "%s", text);
    cr_assert(strstr(text, "\n  - name: \"a\" "), "%s", text);
    free(text);
    expect_round_trip(&c);
}

Test(config_rewards, long_strings_round_trip) {
    static PonderConfig c;
    static char yaml[8192], override[2048];
    /* the longest command, every byte escaped when written */
    char command[CONFIG_TEXT_MAX];
    memset(command, '\x01', sizeof command - 1);
    command[sizeof command - 1] = '\0';
    snprintf(override, sizeof override, "rewards.0.command=%s", command);
    char *overrides[] = {"rewards.0.name=x", "rewards.0.type=external", override};
    snprintf(yaml, sizeof yaml, "%s", "");
    expect_ok(&c, yaml, 3, overrides);
    cr_assert_eq(strlen(c.rewards[0].command), CONFIG_TEXT_MAX - 1);
    expect_round_trip(&c);
}

/* ---------------------------------------------------------------- derived ---*/

Test(config_derived, model_config_resolves_zeros) {
    PonderConfig c;
    PonderError err = {0};
    ModelConfig m;
    config_defaults(&c);
    cr_assert_eq(config_model(&c, &m, 40, &err), 0, "%s", err.msg);
    cr_assert_eq(m.arch, MODEL_ARCH_LLAMA);
    cr_assert_eq(m.vocab_size, 40);
    cr_assert_eq(m.n_kv_head, 4);
    cr_assert_eq(m.d_ff, 352, "ceil(4*128*2/3) = 342, rounded up to a multiple of 32");
    cr_assert_eq(m.max_seq_len, 256);
    cr_assert_float_eq(m.norm_eps, 1e-5f, 1e-12);
    cr_assert(m.tie_embeddings);
    char *overrides[] = {"model.arch=gpt2", "model.d_model=768", "model.n_head=12"};
    expect_ok(&c, "", 3, overrides);
    cr_assert_eq(config_model(&c, &m, 40, &err), 0, "%s", err.msg);
    cr_assert_eq(m.d_ff, 3072);
    cr_assert_eq(m.n_kv_head, 12);
}

Test(config_derived, model_config_explicit_values_win) {
    PonderConfig c;
    PonderError err = {0};
    ModelConfig m;
    char *overrides[] = {"model.d_ff=100", "model.n_kv_head=2", "model.vocab_size=64"};
    expect_ok(&c, "", 3, overrides);
    cr_assert_eq(config_model(&c, &m, 40, &err), 0, "%s", err.msg);
    cr_assert_eq(m.d_ff, 100);
    cr_assert_eq(m.n_kv_head, 2);
    cr_assert_eq(m.vocab_size, 64);
}

Test(config_derived, model_config_vocab_errors) {
    PonderConfig c;
    PonderError err = {0};
    ModelConfig m;
    config_defaults(&c);
    cr_assert_neq(config_model(&c, &m, 0, &err), 0);
    cr_assert(strstr(err.msg, "model.vocab_size: 0 means the tokenizer's size"), "%s", err.msg);
    c.model.vocab_size = 30;
    cr_assert_neq(config_model(&c, &m, 40, &err), 0);
    cr_assert(strstr(err.msg, "model.vocab_size: 30 is smaller than the tokenizer's vocabulary (40)"), "%s", err.msg);
}

Test(config_derived, stage_and_directory_helpers) {
    PonderConfig c;
    PonderError err = {0};
    char dir[64];
    char *overrides[] = {"stages.0.lr=0.5", "stages.1.eval_every=9", "stages.1.seq_len=16", "stages.1.name=b",
                         "eval.every=4", "run.name=r1"};
    expect_ok(&c, "", 6, overrides);
    cr_assert_eq(config_stage_lr(&c, 0), 0.5);
    cr_assert_eq(config_stage_lr(&c, 1), 3e-4);
    cr_assert_eq(config_stage_seq_len(&c, 0), 256);
    cr_assert_eq(config_stage_seq_len(&c, 1), 16);
    cr_assert_eq(config_stage_eval_every(&c, 0), 4);
    cr_assert_eq(config_stage_eval_every(&c, 1), 9);
    cr_assert_eq(config_run_dir(&c, dir, sizeof dir, &err), 0);
    cr_assert_str_eq(dir, "runs/r1");
    cr_assert_eq(config_checkpoint_dir(&c, dir, sizeof dir, &err), 0);
    cr_assert_str_eq(dir, "runs/r1/checkpoints");
    cr_assert_neq(config_checkpoint_dir(&c, dir, 8, &err), 0);
    cr_assert(strstr(err.msg, "checkpoint.dir: path longer than 7 bytes"), "%s", err.msg);
}

/* ---------------------------------------------------------------- shipped ---*/

Test(config_shipped, every_config_loads) {
    const char *folder = PONDER_SOURCE_DIR "/configs";
    DIR *dir = opendir(folder);
    cr_assert_not_null(dir, "cannot open %s", folder);
    int loaded = 0;
    for (struct dirent *e; (e = readdir(dir));) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".yaml")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", folder, e->d_name);
        PonderConfig c;
        PonderError err = {0};
        int rc = config_load(&c, path, 0, NULL, &err);
        if (rc) closedir(dir);
        cr_assert_eq(rc, 0, "%s: %s", e->d_name, err.msg);
        expect_round_trip(&c);
        loaded++;
    }
    closedir(dir);
    cr_assert_geq(loaded, 3);
}

static void load_shipped(PonderConfig *c, const char *name) {
    char path[1024];
    PonderError err = {0};
    snprintf(path, sizeof path, "%s/configs/%s", PONDER_SOURCE_DIR, name);
    cr_assert_eq(config_load(c, path, 0, NULL, &err), 0, "%s: %s", name, err.msg);
}

Test(config_shipped, rl_recipes) {
    static const struct {
        const char *file, *stage;
        ConfigStageType type;
        int n_rewards;
    } recipes[] = {
        {"grpo_arith.yaml", "grpo", CONFIG_STAGE_GRPO, 2},
        {"dapo_arith.yaml", "dapo", CONFIG_STAGE_GRPO, 3},
        {"ppo_arith.yaml", "ppo", CONFIG_STAGE_PPO, 2},
        {"rloo_arith.yaml", "rloo", CONFIG_STAGE_RLOO, 2},
    };
    for (size_t i = 0; i < sizeof recipes / sizeof recipes[0]; i++) {
        PonderConfig c;
        load_shipped(&c, recipes[i].file);
        cr_assert_eq(c.n_stages, 2, "%s", recipes[i].file);
        cr_assert_eq(c.stages[0].type, CONFIG_STAGE_SFT);
        cr_assert_eq(c.stages[0].thought_dropout, 0.3);
        cr_assert_str_eq(config_stage_name(&c, 1), recipes[i].stage);
        const ConfigStage *rl = &c.stages[1];
        cr_assert_eq(rl->type, recipes[i].type, "%s", recipes[i].file);
        cr_assert_eq(rl->prompts_per_step, 16);
        cr_assert_eq(rl->num_generations, 8);
        cr_assert_eq(rl->temperature, 1.0);
        cr_assert_eq(rl->max_new_tokens, 48);
        cr_assert_eq(rl->loss_type, ALGO_LOSS_DAPO);
        cr_assert_eq(rl->beta, 0.0);
        /* steps and lr are tuned per recipe (README "Results"): only sanity here */
        cr_assert_gt(rl->steps, 0);
        cr_assert(config_stage_lr(&c, 1) > 0 && config_stage_lr(&c, 1) < c.optim.lr);
        cr_assert_eq(c.data.min_digits, 1);
        cr_assert_eq(c.data.max_digits, 3);
        cr_assert_eq(c.data.eval_min_digits, 3);
        cr_assert_eq(c.data.eval_max_digits, 3);
        cr_assert_eq(c.n_rewards, recipes[i].n_rewards, "%s", recipes[i].file);
        cr_assert_str_eq(c.rewards[0].name, "correct");
        cr_assert_eq(c.rewards[0].type, REWARD_MATH_VERIFY);
        cr_assert_eq(c.rewards[0].weight, 1.0);
        cr_assert_str_eq(c.rewards[1].name, "format");
        cr_assert_eq(c.rewards[1].type, REWARD_THINK_FORMAT);
        cr_assert_eq(c.rewards[1].weight, 0.1);
        RewardSpec specs[CONFIG_MAX_REWARDS];
        int n;
        PonderError err = {0};
        cr_assert_eq(config_reward_specs(&c, specs, CONFIG_MAX_REWARDS, &n, &err), 0, "%s", err.msg);
    }
    PonderConfig c;
    load_shipped(&c, "dapo_arith.yaml");
    cr_assert_eq(config_stage_epsilon_high(&c, 1), 0.28);
    cr_assert(c.stages[1].dynamic_sampling);
    cr_assert_eq(c.rewards[2].type, REWARD_OVERLONG);
    cr_assert_eq(c.rewards[2].max_len, c.stages[1].max_new_tokens);
    load_shipped(&c, "ppo_arith.yaml");
    cr_assert_eq(c.stages[1].num_iterations, 2);
    cr_assert_eq(c.stages[1].mini_batches, 2);
}

Test(config_shipped, gpt2_124m_shapes) {
    PonderConfig c;
    PonderError err = {0};
    ModelConfig m;
    cr_assert_eq(config_load(&c, PONDER_SOURCE_DIR "/configs/gpt2_124m.yaml", 0, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(config_model(&c, &m, 100, &err), 0, "%s", err.msg);
    cr_assert_eq(m.arch, MODEL_ARCH_GPT2);
    cr_assert_eq(m.vocab_size, 50257);
    cr_assert_eq(m.d_model, 768);
    cr_assert_eq(m.n_layer, 12);
    cr_assert_eq(m.n_head, 12);
    cr_assert_eq(m.d_ff, 3072);
    cr_assert_eq(m.max_seq_len, 1024);
    cr_assert(m.tie_embeddings);
}

/* ---------------------------------------------------------------- command ---*/

/* Runs `ponder args`, capturing stdout and stderr; returns the exit status. */
static int run_ponder(const char *args, char *out, size_t out_size) {
    char cmd[2048], capture[1024];
    /* one file per process: Criterion runs tests in parallel processes */
    snprintf(capture, sizeof capture, "%s/test_config_cli_%ld.txt", PONDER_BINARY_DIR, (long)getpid());
    snprintf(cmd, sizeof cmd, "%s/ponder %s > %s 2>&1", PONDER_BINARY_DIR, args, capture);
    int status = system(cmd);
    FILE *f = fopen(capture, "rb");
    size_t n = f ? fread(out, 1, out_size - 1, f) : 0;
    out[n] = '\0';
    if (f) fclose(f);
    remove(capture);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(config_cli, config_prints_the_resolved_yaml) {
    static char out[65536];
    cr_assert_eq(run_ponder("config " PONDER_SOURCE_DIR "/configs/tiny.yaml model.n_layer=2", out, sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "  n_layer: 2 "), "%s", out);
    PonderConfig c;
    expect_ok(&c, out, 0, NULL);
    cr_assert_eq(c.model.n_layer, 2);
}

Test(config_cli, config_prints_the_rl_recipes) {
    static char out[65536];
    cr_assert_eq(run_ponder("config " PONDER_SOURCE_DIR "/configs/dapo_arith.yaml stages.1.dual_clip=10", out,
                            sizeof out), 0, "%s", out);
    cr_assert(strstr(out, "\n  - name: \"overlong\" "), "%s", out);
    PonderConfig c;
    expect_ok(&c, out, 0, NULL);
    cr_assert_eq(c.stages[1].dual_clip, 10.0);
    cr_assert_eq(c.n_rewards, 3);
    cr_assert_eq(run_ponder("config " PONDER_SOURCE_DIR "/configs/grpo_arith.yaml stages.1.mini_batches=17", out,
                            sizeof out), 2);
    cr_assert(strstr(out, "override 'stages.1.mini_batches=17': stages.1.mini_batches: 17 is more than"), "%s", out);
}

Test(config_cli, config_errors_exit_2) {
    static char out[65536];
    cr_assert_eq(run_ponder("config " PONDER_SOURCE_DIR "/configs/tiny.yaml model.n_layr=2", out, sizeof out), 2);
    cr_assert(strstr(out, "unknown key 'model.n_layr'; did you mean 'model.n_layer'?"), "%s", out);
    cr_assert_eq(run_ponder("config", out, sizeof out), 2);
    cr_assert(strstr(out, "usage: ponder config CONFIG"), "%s", out);
}

Test(config_cli, config_errors_of_other_commands_and_unknown_commands_exit_2) {
    static char out[4096];
    cr_assert_eq(run_ponder("train x.yaml", out, sizeof out), 2);
    cr_assert(strstr(out, "ponder train: cannot open config 'x.yaml'"), "%s", out);
    cr_assert_eq(run_ponder("frobnicate", out, sizeof out), 2);
    cr_assert(strstr(out, "unknown command 'frobnicate'"), "%s", out);
    cr_assert_eq(run_ponder("--help", out, sizeof out), 0);
    cr_assert(strstr(out, "generate"), "%s", out);
}
