/* tests/test_checkpoint.c — HDF5 checkpoints: bit-exact round trips (llama and
 * gpt2 untied with a scalar head), every malformed-file error by its message,
 * loads that fail leave the model untouched, atomic saves, directory
 * utilities, inspection, and no HDF5 handle left open after any call. */
#include <criterion/criterion.h>
#include <criterion/redirect.h>
#include <dirent.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "trainer/checkpoint.h"
#include "trainer/optim.h"
#include "util/rng.h"

/* ------------------------------------------------------------ fixtures --- */

static char g_dir[256];

static void setup(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/ponder_ckpt_XXXXXX");
    cr_assert_not_null(mkdtemp(g_dir));
}

/* The directory is flat: remove its files, then it. */
static void teardown(void) {
    DIR *d = opendir(g_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(g_dir);
}

TestSuite(checkpoint, .init = setup, .fini = teardown);

static void in_dir(const char *name, char *out, size_t n) {
    snprintf(out, n, "%s/%s", g_dir, name);
}

static ModelConfig llama_cfg(void) {
    ModelConfig c = model_config_default();
    c.vocab_size = 128;
    c.d_model = 64;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = 2;
    c.d_ff = 96;
    c.max_seq_len = 32;
    return c;
}

static ModelConfig gpt2_cfg(void) {
    ModelConfig c = model_config_default();
    c.arch = MODEL_ARCH_GPT2;
    c.vocab_size = 50;
    c.d_model = 32;
    c.n_layer = 2;
    c.n_head = 4;
    c.n_kv_head = 4;
    c.d_ff = 128;
    c.max_seq_len = 24;
    c.tie_embeddings = false;
    c.scalar_head = true;
    return c;
}

static Model *make_model(const ModelConfig *c, uint64_t seed) {
    Model *m = NULL;
    PonderError err = {0};
    cr_assert_eq(model_create(&m, c, &err), 0, "%s", err.msg);
    model_init_weights(m, seed);
    return m;
}

/* Moments filled with noise so a mix-up of m, v or tensors shows. */
static void make_opt(Optimizer *o, const Model *m, uint64_t seed, int64_t step) {
    OptimSettings s = optim_settings_default();
    PonderError err = {0};
    cr_assert_eq(optim_create(o, m, &s, &err), 0, "%s", err.msg);
    Rng r = rng_from_seed(seed);
    for (size_t i = 0; i < o->n; i++) {
        o->m[i] = (float)rng_normal(&r);
        o->v[i] = rng_uniform(&r);
    }
    o->step = step;
}

static void assert_no_open_handles(void) {
    cr_assert_eq(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0, "HDF5 ids left open");
}

typedef struct State {
    Model *model;
    Optimizer opt;
    Rng rngs[3];
    int64_t cursor[5];
} State;

static const char *YAML = "model:\n  arch: llama\nstages:\n  - name: grpo\n";
static const char *METRICS = "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"loss\":2.25}\n";

static void state_init(State *s, const ModelConfig *c, uint64_t seed) {
    s->model = make_model(c, seed);
    make_opt(&s->opt, s->model, seed + 1, 7);
    for (int i = 0; i < 3; i++) s->rngs[i] = rng_derive(seed, (uint64_t)i, 2, 3);
    for (int i = 0; i < 5; i++) s->cursor[i] = (int64_t)(seed * 10 + (uint64_t)i);
}

static void state_free(State *s) {
    optim_free(&s->opt);
    model_free(s->model);
}

static CkptWrite writer(const State *s, bool with_opt) {
    CkptWrite w = {.model = s->model,
                   .opt = with_opt ? &s->opt : NULL,
                   .rngs = s->rngs,
                   .n_rngs = 3,
                   .data_cursor = s->cursor,
                   .n_cursor = 5,
                   .stage = "grpo",
                   .stage_index = 2,
                   .step = 1234,
                   .config_yaml = YAML,
                   .metrics_jsonl = METRICS};
    return w;
}

static void save_ok(const char *path, const CkptWrite *w) {
    PonderError err = {0};
    cr_assert_eq(ckpt_save(path, w, &err), 0, "%s", err.msg);
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    cr_assert_neq(access(tmp, F_OK), 0, "%s left behind", tmp);
    cr_assert_eq(access(path, F_OK), 0);
    assert_no_open_handles();
}

/* A standard checkpoint of a llama state at <dir>/<name>; returns the state. */
static void save_llama(State *s, const char *name, char *path, size_t n, bool with_opt) {
    ModelConfig c = llama_cfg();
    state_init(s, &c, 1);
    in_dir(name, path, n);
    CkptWrite w = writer(s, with_opt);
    save_ok(path, &w);
}

/* ------------------------------------------------- editing files by hand --- */

static hid_t open_rw(const char *path) {
    hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    cr_assert_geq(f, 0);
    return f;
}

static void h5_delete(const char *path, const char *obj) {
    hid_t f = open_rw(path);
    cr_assert_geq(H5Ldelete(f, obj, H5P_DEFAULT), 0, "deleting %s", obj);
    H5Fclose(f);
}

/* A zero-filled dataset (HDF5's default fill value). */
static void h5_add(const char *path, const char *obj, hid_t type, int ndim, const hsize_t *dims) {
    hid_t f = open_rw(path);
    hid_t sp = H5Screate_simple(ndim, dims, NULL);
    hid_t d = H5Dcreate2(f, obj, type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    cr_assert_geq(d, 0, "creating %s", obj);
    H5Dclose(d);
    H5Sclose(sp);
    H5Fclose(f);
}

static void h5_set_meta_i64(const char *path, const char *attr, int64_t v) {
    hid_t f = open_rw(path), g = H5Gopen2(f, "meta", H5P_DEFAULT);
    hid_t a = H5Aopen(g, attr, H5P_DEFAULT);
    cr_assert_geq(a, 0);
    cr_assert_geq(H5Awrite(a, H5T_NATIVE_INT64, &v), 0);
    H5Aclose(a);
    H5Gclose(g);
    H5Fclose(f);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* ------------------------------------------------------------ checks ---- */

/* A load that must fail: right code, message containing needle, and the
 * model, optimizer and outputs exactly as before. */
static void expect_load_error(const char *path, Model *m, Optimizer *o, int code,
                              const char *needle) {
    size_t n = model_num_params(m);
    float *before = malloc(n * sizeof(float)), *m_before = NULL;
    memcpy(before, model_params(m), n * sizeof(float));
    if (o) {
        m_before = malloc(o->n * sizeof(float));
        memcpy(m_before, o->m, o->n * sizeof(float));
    }
    Rng rngs[4] = {{{0}}};
    int64_t cursor[8] = {0};
    CkptRead r = {
        .model = m, .opt = o, .rngs = rngs, .max_rngs = 4, .data_cursor = cursor, .max_cursor = 8};
    PonderError err = {0};
    int rc = ckpt_load(path, &r, &err);
    cr_assert_eq(rc, code, "rc %d, message: %s", rc, err.msg);
    cr_assert_not_null(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
    cr_assert_eq(memcmp(before, model_params(m), n * sizeof(float)), 0, "params changed");
    if (o) cr_assert_eq(memcmp(m_before, o->m, o->n * sizeof(float)), 0, "moments changed");
    cr_assert_null(r.config_yaml);
    cr_assert_null(r.metrics_jsonl);
    cr_assert_eq(r.n_rngs, 0);
    cr_assert_eq(rngs[0].s[0], 0);
    assert_no_open_handles();
    free(before);
    free(m_before);
}

/* A fresh model of the same config with different weights, as a load target. */
static Model *target_like(const Model *m) { return make_model(model_config(m), 99); }

/* Field by field: the struct has padding, so memcmp would compare garbage. */
static void assert_same_config(const ModelConfig *a, const ModelConfig *b) {
    cr_assert_eq(a->arch, b->arch);
    cr_assert_eq(a->vocab_size, b->vocab_size);
    cr_assert_eq(a->d_model, b->d_model);
    cr_assert_eq(a->n_layer, b->n_layer);
    cr_assert_eq(a->n_head, b->n_head);
    cr_assert_eq(a->n_kv_head, b->n_kv_head);
    cr_assert_eq(a->d_ff, b->d_ff);
    cr_assert_eq(a->max_seq_len, b->max_seq_len);
    cr_assert_eq(a->norm_eps, b->norm_eps);
    cr_assert_eq(a->rope_theta, b->rope_theta);
    cr_assert_eq(a->tie_embeddings, b->tie_embeddings);
    cr_assert_eq(a->qkv_bias, b->qkv_bias);
    cr_assert_eq(a->scalar_head, b->scalar_head);
}

static void round_trip(const ModelConfig *c) {
    State s;
    state_init(&s, c, 5);
    char path[512];
    in_dir("rt.h5", path, sizeof path);
    CkptWrite w = writer(&s, true);
    save_ok(path, &w);

    PonderError err = {0};
    ModelConfig rc;
    cr_assert_eq(ckpt_read_model_config(path, &rc, &err), 0, "%s", err.msg);
    assert_same_config(&rc, c);

    Model *m = target_like(s.model);
    Optimizer o;
    make_opt(&o, m, 42, 0);
    Rng rngs[4];
    int64_t cursor[8];
    CkptRead r = {
        .model = m, .opt = &o, .rngs = rngs, .max_rngs = 4, .data_cursor = cursor, .max_cursor = 8};
    cr_assert_eq(ckpt_load(path, &r, &err), 0, "%s", err.msg);
    assert_no_open_handles();
    size_t n = model_num_params(m);
    cr_assert_eq(memcmp(model_params(m), model_params(s.model), n * sizeof(float)), 0);
    cr_assert_eq(memcmp(o.m, s.opt.m, n * sizeof(float)), 0);
    cr_assert_eq(memcmp(o.v, s.opt.v, n * sizeof(float)), 0);
    cr_assert_eq(o.step, 7);
    cr_assert_eq(r.n_rngs, 3);
    cr_assert_eq(memcmp(rngs, s.rngs, 3 * sizeof(Rng)), 0);
    cr_assert_eq(r.n_cursor, 5);
    cr_assert_eq(memcmp(cursor, s.cursor, sizeof s.cursor), 0);
    cr_assert_str_eq(r.meta.stage, "grpo");
    cr_assert_eq(r.meta.stage_index, 2);
    cr_assert_eq(r.meta.step, 1234);
    cr_assert_eq(r.meta.format_version, CKPT_FORMAT_VERSION);
    cr_assert_str_eq(r.config_yaml, YAML);
    cr_assert_str_eq(r.metrics_jsonl, METRICS);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    optim_free(&o);
    model_free(m);
    state_free(&s);
}

/* -------------------------------------------------------------- tests --- */

Test(checkpoint, round_trip_llama_bit_exact) {
    ModelConfig c = llama_cfg();
    round_trip(&c);
}

Test(checkpoint, round_trip_gpt2_untied_scalar_head_bit_exact) {
    ModelConfig c = gpt2_cfg();
    round_trip(&c);
}

Test(checkpoint, empty_strings_no_rngs_no_cursor) {
    ModelConfig c = llama_cfg();
    State s;
    state_init(&s, &c, 3);
    char path[512];
    in_dir("empty.h5", path, sizeof path);
    CkptWrite w = {.model = s.model, .stage = "", .metrics_jsonl = "", .config_yaml = NULL};
    save_ok(path, &w);
    Model *m = target_like(s.model);
    Rng rngs[1];
    int64_t cursor[1];
    CkptRead r = {.model = m, .rngs = rngs, .max_rngs = 1, .data_cursor = cursor, .max_cursor = 1};
    PonderError err = {0};
    cr_assert_eq(ckpt_load(path, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.n_rngs, 0);
    cr_assert_eq(r.n_cursor, 0);
    cr_assert_str_eq(r.meta.stage, "");
    cr_assert_str_eq(r.config_yaml, "");
    cr_assert_str_eq(r.metrics_jsonl, "");
    cr_assert_eq(
        memcmp(model_params(m), model_params(s.model), model_num_params(m) * sizeof(float)), 0);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    model_free(m);
    state_free(&s);
    assert_no_open_handles();
}

Test(checkpoint, overwrite_replaces_atomically) {
    State s;
    char path[512];
    save_llama(&s, "ow.h5", path, sizeof path, true);
    CkptWrite w = writer(&s, true);
    w.step = 5678;
    save_ok(path, &w);
    CkptRead r = {.model = s.model};
    PonderError err = {0};
    cr_assert_eq(ckpt_load(path, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.meta.step, 5678);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    state_free(&s);
}

Test(checkpoint, save_to_missing_directory_fails_cleanly) {
    ModelConfig c = llama_cfg();
    State s;
    state_init(&s, &c, 1);
    CkptWrite w = writer(&s, true);
    PonderError err = {0};
    char path[512];
    in_dir("no/such/dir/x.h5", path, sizeof path);
    cr_assert_eq(ckpt_save(path, &w, &err), PONDER_ERR_IO);
    cr_assert_not_null(strstr(err.msg, "cannot create checkpoint file"), "%s", err.msg);
    assert_no_open_handles();
    w.stage = "a-stage-name-that-is-far-too-long-to-fit-in-sixty-three-bytes-of-room";
    in_dir("x.h5", path, sizeof path);
    cr_assert_eq(ckpt_save(path, &w, &err), PONDER_ERR_CONFIG);
    cr_assert_not_null(strstr(err.msg, "longer than 63 bytes"), "%s", err.msg);
    cr_assert_neq(access(path, F_OK), 0);
    state_free(&s);
}

Test(checkpoint, weights_only_loads_without_optimizer_and_names_missing_state) {
    State s;
    char path[512];
    save_llama(&s, "w.h5", path, sizeof path, false);
    Model *m = target_like(s.model);
    CkptRead r = {.model = m};
    PonderError err = {0};
    cr_assert_eq(ckpt_load(path, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(
        memcmp(model_params(m), model_params(s.model), model_num_params(m) * sizeof(float)), 0);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    model_init_weights(m, 77);
    Optimizer o;
    make_opt(&o, m, 8, 3);
    expect_load_error(path, m, &o, PONDER_ERR_SHAPE, "no optimizer state (/optim is missing");
    cr_assert_eq(o.step, 3);
    optim_free(&o);
    model_free(m);
    state_free(&s);
}

Test(checkpoint, missing_moment_tensor) {
    State s;
    char path[512];
    save_llama(&s, "mm.h5", path, sizeof path, true);
    h5_delete(path, "/optim/v/model.layers.1.mlp.up_proj.weight");
    Model *m = target_like(s.model);
    Optimizer o;
    make_opt(&o, m, 8, 3);
    expect_load_error(path, m, &o, PONDER_ERR_SHAPE,
                      ": tensor 'model.layers.1.mlp.up_proj.weight' is missing from /optim/v");
    /* Without an optimizer the same file loads: moments are not needed. */
    CkptRead r = {.model = m};
    PonderError err = {0};
    cr_assert_eq(ckpt_load(path, &r, &err), 0, "%s", err.msg);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    optim_free(&o);
    model_free(m);
    state_free(&s);
}

Test(checkpoint, missing_tensor) {
    State s;
    char path[512];
    save_llama(&s, "mt.h5", path, sizeof path, true);
    h5_delete(path, "/model/model.norm.weight");
    Model *m = target_like(s.model);
    char needle[600];
    snprintf(needle, sizeof needle, "%s: tensor 'model.norm.weight' is missing from /model", path);
    expect_load_error(path, m, NULL, PONDER_ERR_SHAPE, needle);
    model_free(m);
    state_free(&s);
}

Test(checkpoint, unexpected_tensor) {
    State s;
    char path[512];
    save_llama(&s, "ut.h5", path, sizeof path, true);
    hsize_t dims[1] = {64};
    h5_add(path, "/model/model.extra.weight", H5T_IEEE_F32LE, 1, dims);
    Model *m = target_like(s.model);
    expect_load_error(path, m, NULL, PONDER_ERR_SHAPE,
                      "unexpected tensor 'model.extra.weight' in /model");
    model_free(m);
    state_free(&s);
}

Test(checkpoint, wrong_shape) {
    State s;
    char path[512];
    save_llama(&s, "ws.h5", path, sizeof path, true);
    h5_delete(path, "/model/model.embed_tokens.weight");
    hsize_t dims[2] = {64, 128};
    h5_add(path, "/model/model.embed_tokens.weight", H5T_IEEE_F32LE, 2, dims);
    Model *m = target_like(s.model);
    expect_load_error(path, m, NULL, PONDER_ERR_SHAPE,
                      "tensor 'model.embed_tokens.weight' in /model: expected [128,64], found "
                      "[64,128]");
    model_free(m);
    state_free(&s);
}

Test(checkpoint, wrong_dtype) {
    State s;
    char path[512];
    save_llama(&s, "wd.h5", path, sizeof path, true);
    h5_delete(path, "/model/model.norm.weight");
    hsize_t dims[1] = {64};
    h5_add(path, "/model/model.norm.weight", H5T_IEEE_F64LE, 1, dims);
    Model *m = target_like(s.model);
    expect_load_error(path, m, NULL, PONDER_ERR_SHAPE,
                      "tensor 'model.norm.weight' in /model: expected float32, found float64");
    model_free(m);
    state_free(&s);
}

Test(checkpoint, truncated_file) {
    State s;
    char path[512];
    save_llama(&s, "tr.h5", path, sizeof path, true);
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size / 2), 0);
    Model *m = target_like(s.model);
    expect_load_error(path, m, NULL, PONDER_ERR_IO, "is not a readable HDF5 file");
    PonderError err = {0};
    ModelConfig c;
    cr_assert_eq(ckpt_read_model_config(path, &c, &err), PONDER_ERR_IO);
    cr_assert_not_null(strstr(err.msg, "is not a readable HDF5 file"), "%s", err.msg);
    cr_assert_eq(ckpt_inspect(path, stdout, &err), PONDER_ERR_IO);
    assert_no_open_handles();
    model_free(m);
    state_free(&s);
}

Test(checkpoint, text_file_is_not_hdf5) {
    char path[512];
    in_dir("notes.h5", path, sizeof path);
    write_text(path, "model:\n  arch: llama\n");
    ModelConfig c = llama_cfg();
    Model *m = make_model(&c, 1);
    char needle[600];
    snprintf(needle, sizeof needle, "%s is not a readable HDF5 file", path);
    expect_load_error(path, m, NULL, PONDER_ERR_IO, needle);
    in_dir("absent.h5", path, sizeof path);
    expect_load_error(path, m, NULL, PONDER_ERR_IO, "No such file or directory");
    model_free(m);
}

Test(checkpoint, unknown_format_version) {
    State s;
    char path[512];
    save_llama(&s, "v.h5", path, sizeof path, true);
    h5_set_meta_i64(path, "format_version", 99);
    Model *m = target_like(s.model);
    const char *needle = "format version 99 is not supported (this build reads 1)";
    expect_load_error(path, m, NULL, PONDER_ERR_CONFIG, needle);
    PonderError err = {0};
    ModelConfig c;
    cr_assert_eq(ckpt_read_model_config(path, &c, &err), PONDER_ERR_CONFIG);
    cr_assert_not_null(strstr(err.msg, needle), "%s", err.msg);
    assert_no_open_handles();
    model_free(m);
    state_free(&s);
}

Test(checkpoint, missing_meta_attribute_and_bad_flag) {
    State s;
    char path[512];
    save_llama(&s, "ma.h5", path, sizeof path, true);
    h5_set_meta_i64(path, "scalar_head", 2);
    Model *m = target_like(s.model);
    expect_load_error(path, m, NULL, PONDER_ERR_SHAPE,
                      "/meta attribute 'scalar_head': expected 0 or 1, found 2");
    hid_t f = open_rw(path);
    cr_assert_geq(H5Adelete_by_name(f, "meta", "d_ff", H5P_DEFAULT), 0);
    H5Fclose(f);
    expect_load_error(path, m, NULL, PONDER_ERR_SHAPE, "/meta attribute 'd_ff' is missing");
    model_free(m);
    state_free(&s);
}

Test(checkpoint, model_config_mismatch) {
    State s;
    char path[512];
    save_llama(&s, "cm.h5", path, sizeof path, true);
    ModelConfig c = llama_cfg();
    c.d_model = 32;
    Model *m = make_model(&c, 1);
    expect_load_error(path, m, NULL, PONDER_ERR_CONFIG,
                      "model config mismatch: d_model is 64 in the checkpoint, 32 in this run");
    model_free(m);
    c = llama_cfg();
    c.tie_embeddings = false;
    m = make_model(&c, 1);
    expect_load_error(path, m, NULL, PONDER_ERR_CONFIG,
                      "tie_embeddings is true in the checkpoint, false in this run");
    model_free(m);
    c = llama_cfg();
    c.rope_theta = 500000.0f;
    m = make_model(&c, 1);
    expect_load_error(path, m, NULL, PONDER_ERR_CONFIG,
                      "rope_theta is 10000 in the checkpoint, 500000 in this run");
    model_free(m);
    c = gpt2_cfg();
    m = make_model(&c, 1);
    expect_load_error(path, m, NULL, PONDER_ERR_CONFIG,
                      "arch is llama in the checkpoint, gpt2 in this run");
    model_free(m);
    state_free(&s);
}

Test(checkpoint, rng_and_cursor_capacity) {
    State s;
    char path[512];
    save_llama(&s, "cap.h5", path, sizeof path, true);
    Model *m = target_like(s.model);
    Rng rngs[2];
    CkptRead r = {.model = m, .rngs = rngs, .max_rngs = 2};
    PonderError err = {0};
    cr_assert_eq(ckpt_load(path, &r, &err), PONDER_ERR_CONFIG);
    cr_assert_not_null(strstr(err.msg, "has 3 rng streams, room for only 2"), "%s", err.msg);
    int64_t cursor[4];
    CkptRead r2 = {.model = m, .data_cursor = cursor, .max_cursor = 4};
    cr_assert_eq(ckpt_load(path, &r2, &err), PONDER_ERR_CONFIG);
    cr_assert_not_null(strstr(err.msg, "/data/cursor has 5 entries, room for only 4"), "%s",
                       err.msg);
    h5_delete(path, "/rng/1");
    Rng big[8];
    CkptRead r3 = {.model = m, .rngs = big, .max_rngs = 8};
    cr_assert_eq(ckpt_load(path, &r3, &err), PONDER_ERR_SHAPE);
    cr_assert_not_null(strstr(err.msg, "/rng/1 is missing"), "%s", err.msg);
    assert_no_open_handles();
    model_free(m);
    state_free(&s);
}

Test(checkpoint, hdf5_errors_are_silent_and_printing_is_restored) {
    char path[512];
    in_dir("junk.h5", path, sizeof path);
    write_text(path, "not hdf5");
    H5E_auto2_t before_fn, after_fn;
    void *before_data, *after_data;
    H5Eget_auto2(H5E_DEFAULT, &before_fn, &before_data);
    cr_assert_not_null(before_fn, "HDF5 printing should be on by default");
    cr_redirect_stderr();
    ModelConfig c;
    PonderError err = {0};
    cr_assert_neq(ckpt_read_model_config(path, &c, &err), 0);
    fflush(stderr);
    cr_assert_stderr_eq_str("");
    H5Eget_auto2(H5E_DEFAULT, &after_fn, &after_data);
    cr_assert_eq((void *)after_fn, (void *)before_fn);
    cr_assert_eq(after_data, before_data);
}

Test(checkpoint, path_for_step) {
    char out[64];
    cr_assert_eq(ckpt_path_for_step("/runs/a", 123, out, sizeof out), 0);
    cr_assert_str_eq(out, "/runs/a/step_00000123.h5");
    cr_assert_eq(ckpt_path_for_step("/runs/a/", 7, out, sizeof out), 0);
    cr_assert_str_eq(out, "/runs/a/step_00000007.h5");
    cr_assert_eq(ckpt_path_for_step("/runs/a", 123456789012, out, sizeof out), 0);
    cr_assert_str_eq(out, "/runs/a/step_123456789012.h5");
    cr_assert_eq(ckpt_path_for_step("/runs/a", 1, out, 10), PONDER_ERR_CONFIG);
    cr_assert_eq(ckpt_path_for_step("/runs/a", -1, out, sizeof out), PONDER_ERR_CONFIG);
}

Test(checkpoint, find_latest_and_prune) {
    char out[512], p[512];
    PonderError err = {0};
    cr_assert_eq(ckpt_find_latest(g_dir, out, sizeof out, &err), PONDER_ERR_IO);
    cr_assert_not_null(strstr(err.msg, "no checkpoints (step_*.h5) in"), "%s", err.msg);
    cr_assert_eq(ckpt_find_latest("/nonexistent/ponder", out, sizeof out, &err), PONDER_ERR_IO);
    cr_assert_not_null(strstr(err.msg, "cannot open checkpoint directory '/nonexistent/ponder'"),
                       "%s", err.msg);
    /* Only names matter here, so empty files stand in for checkpoints. */
    const char *names[] = {
        "step_00000005.h5", "step_00000100.h5", "step_00000020.h5", "step_00000200.h5.tmp",
        "notes.txt",        "step_abc.h5",      "step_9.h5x"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        in_dir(names[i], p, sizeof p);
        write_text(p, "");
    }
    cr_assert_eq(ckpt_find_latest(g_dir, out, sizeof out, &err), 0, "%s", err.msg);
    in_dir("step_00000100.h5", p, sizeof p);
    cr_assert_str_eq(out, p);
    cr_assert_eq(ckpt_find_latest(g_dir, out, 8, &err), PONDER_ERR_CONFIG);

    cr_assert_eq(ckpt_prune(g_dir, 0, &err), PONDER_ERR_CONFIG);
    cr_assert_eq(ckpt_prune(g_dir, 2, &err), 0, "%s", err.msg);
    const char *kept[] = {"step_00000100.h5", "step_00000020.h5", "step_00000200.h5.tmp",
                          "notes.txt",        "step_abc.h5",      "step_9.h5x"};
    for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++) {
        in_dir(kept[i], p, sizeof p);
        cr_assert_eq(access(p, F_OK), 0, "%s was deleted", kept[i]);
    }
    in_dir("step_00000005.h5", p, sizeof p);
    cr_assert_neq(access(p, F_OK), 0, "step 5 should be pruned");
    cr_assert_eq(ckpt_prune(g_dir, 1, &err), 0, "%s", err.msg);
    in_dir("step_00000020.h5", p, sizeof p);
    cr_assert_neq(access(p, F_OK), 0);
    cr_assert_eq(ckpt_prune(g_dir, 5, &err), 0, "%s", err.msg); /* fewer than keep: no-op */
    cr_assert_eq(ckpt_find_latest(g_dir, out, sizeof out, &err), 0);
    in_dir("step_00000100.h5", p, sizeof p);
    cr_assert_str_eq(out, p);
}

Test(checkpoint, real_checkpoints_in_a_directory) {
    ModelConfig c = llama_cfg();
    State s;
    state_init(&s, &c, 1);
    CkptWrite w = writer(&s, false);
    char path[512];
    for (int64_t step = 10; step <= 40; step += 10) {
        cr_assert_eq(ckpt_path_for_step(g_dir, step, path, sizeof path), 0);
        w.step = step;
        save_ok(path, &w);
    }
    PonderError err = {0};
    cr_assert_eq(ckpt_prune(g_dir, 2, &err), 0, "%s", err.msg);
    char latest[512];
    cr_assert_eq(ckpt_find_latest(g_dir, latest, sizeof latest, &err), 0, "%s", err.msg);
    CkptRead r = {.model = s.model};
    cr_assert_eq(ckpt_load(latest, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.meta.step, 40);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    cr_assert_eq(ckpt_path_for_step(g_dir, 20, path, sizeof path), 0);
    cr_assert_neq(access(path, F_OK), 0);
    cr_assert_eq(ckpt_path_for_step(g_dir, 30, path, sizeof path), 0);
    cr_assert_eq(access(path, F_OK), 0);
    state_free(&s);
}

Test(checkpoint, inspect_describes_everything) {
    State s;
    char path[512];
    save_llama(&s, "in.h5", path, sizeof path, true);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    PonderError err = {0};
    cr_assert_eq(ckpt_inspect(path, out, &err), 0, "%s", err.msg);
    fclose(out);
    assert_no_open_handles();
    size_t nt;
    model_tensors(s.model, &nt);
    char counts[3][64];
    snprintf(counts[0], sizeof counts[0], "/model: %zu tensors\n", nt);
    snprintf(counts[1], sizeof counts[1], "/optim/m: %zu tensors\n", nt);
    snprintf(counts[2], sizeof counts[2], "/optim/v: %zu tensors\n", nt);
    const char *want[] = {
        "format version: 1\n",
        "stage: 'grpo' (index 2), step 1234\n",
        "model: arch=llama vocab_size=128 d_model=64 n_layer=2 n_head=4 n_kv_head=2 d_ff=96",
        counts[0],
        "  model.embed_tokens.weight",
        "[128,64]     float32  l2=",
        "optimizer step: 7\n",
        counts[1],
        counts[2],
        "rng streams: 3\n",
        "data cursor: 5 entries [10, 11, 12, 13, 14]\n",
        "metrics: 2 lines,",
        YAML,
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        cr_assert_not_null(strstr(text, want[i]), "inspect output lacks '%s':\n%s", want[i], text);
    /* Norm weights start at one: ||1_64|| = 8. Listing follows model order. */
    const char *norm = strstr(text, "  model.norm.weight");
    cr_assert_not_null(norm);
    cr_assert_not_null(strstr(norm, "[64]         float32  l2=8\n"), "%s", text);
    cr_assert_lt(strstr(text, "model.embed_tokens.weight"), strstr(text, "model.norm.weight"));
    free(text);
    state_free(&s);
}

Test(checkpoint, inspect_weights_only_and_unsupported_version) {
    State s;
    char path[512];
    save_llama(&s, "iw.h5", path, sizeof path, false);
    h5_set_meta_i64(path, "format_version", 99);
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    PonderError err = {0};
    cr_assert_eq(ckpt_inspect(path, out, &err), 0, "%s", err.msg);
    fclose(out);
    cr_assert_not_null(strstr(text, "format version: 99 (not supported by this build)"), "%s",
                       text);
    cr_assert_not_null(strstr(text, "optimizer: none (weights-only checkpoint)"), "%s", text);
    free(text);
    assert_no_open_handles();
    state_free(&s);
}

/* h5py writes str as variable-length strings; a config edited that way loads. */
Test(checkpoint, reads_variable_length_strings) {
    State s;
    char path[512];
    save_llama(&s, "vl.h5", path, sizeof path, false);
    h5_delete(path, "/config");
    hid_t f = open_rw(path), t = H5Tcopy(H5T_C_S1), sp = H5Screate(H5S_SCALAR);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    hid_t d = H5Dcreate2(f, "/config", t, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    const char *text = "edited: by h5py\n";
    cr_assert_geq(H5Dwrite(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text), 0);
    H5Dclose(d);
    H5Sclose(sp);
    H5Tclose(t);
    H5Fclose(f);
    CkptRead r = {.model = s.model};
    PonderError err = {0};
    cr_assert_eq(ckpt_load(path, &r, &err), 0, "%s", err.msg);
    cr_assert_str_eq(r.config_yaml, text);
    free(r.config_yaml);
    free(r.metrics_jsonl);
    assert_no_open_handles();
    state_free(&s);
}
