/* tests/test_reference.c — the C model against golden files computed by an
 * independent float64 PyTorch implementation (tools/reference/make_golden.py).
 *
 * Each tests/data/ref_*.h5 holds a config, float32 parameters under Hugging Face
 * names, a right-padded [B,T] batch, the expected per-token logp / entropy /
 * values / logits, the loss
 *     loss = sum mask*(-logp - 0.01*entropy)/N (+ sum mask*0.5*(v - v_target)^2/N)
 * and its gradient for every parameter. The test loads the parameters into a
 * fresh model by name (every model tensor must be in the file with the same
 * shape, and nothing else may be), runs forward and backward with the
 * per-token upstream gradients of that loss, and compares every output and
 * every gradient tensor with relative error max|a-b| / max(max|b|, 1e-6). */
#include <criterion/criterion.h>
#include <hdf5.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"

#define REL_TOL 1e-4
#define ENTROPY_COEF 0.01

/* ------------------------------------------------------------ HDF5 reader -- */

typedef struct H5Array {
    void *data;
    int ndim;
    hsize_t dims[4];
    size_t n; /* elements */
} H5Array;

static hid_t h5_open(const char *file) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* we report errors ourselves */
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", PONDER_TEST_DATA, file);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    cr_assert(f >= 0, "cannot open %s (regenerate with tools/reference/make_golden.py)", path);
    return f;
}

/* True when every component of the '/'-separated path exists. */
static bool h5_exists(hid_t loc, const char *path) {
    char buf[512];
    size_t len = strlen(path);
    cr_assert(len < sizeof buf);
    memcpy(buf, path, len + 1);
    for (char *p = buf; (p = strchr(p + 1, '/')) != NULL;) {
        *p = '\0';
        if (H5Lexists(loc, buf, H5P_DEFAULT) <= 0) return false;
        *p = '/';
    }
    return H5Lexists(loc, buf, H5P_DEFAULT) > 0;
}

/* Reads a whole dataset converted to mem_type (e.g. H5T_NATIVE_FLOAT). */
static H5Array h5_read(hid_t loc, const char *path, hid_t mem_type) {
    H5Array a = {0};
    cr_assert(h5_exists(loc, path), "dataset %s missing", path);
    hid_t d = H5Dopen2(loc, path, H5P_DEFAULT);
    cr_assert(d >= 0, "cannot open dataset %s", path);
    hid_t s = H5Dget_space(d);
    int nd = H5Sget_simple_extent_ndims(s);
    cr_assert(nd >= 0 && nd <= 4, "dataset %s: rank %d", path, nd);
    a.ndim = nd;
    H5Sget_simple_extent_dims(s, a.dims, NULL);
    a.n = 1;
    for (int i = 0; i < nd; i++) a.n *= (size_t)a.dims[i];
    a.data = malloc((a.n ? a.n : 1) * H5Tget_size(mem_type));
    cr_assert(a.data != NULL);
    herr_t rc = H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, a.data);
    cr_assert(rc >= 0, "cannot read dataset %s", path);
    H5Sclose(s);
    H5Dclose(d);
    return a;
}

static float *h5_read_f32(hid_t loc, const char *path, size_t expect_n) {
    H5Array a = h5_read(loc, path, H5T_NATIVE_FLOAT);
    cr_assert_eq(a.n, expect_n, "dataset %s: %zu elements, expected %zu", path, a.n, expect_n);
    return a.data;
}

static int32_t *h5_read_i32(hid_t loc, const char *path, size_t expect_n) {
    H5Array a = h5_read(loc, path, H5T_NATIVE_INT32);
    cr_assert_eq(a.n, expect_n, "dataset %s: %zu elements, expected %zu", path, a.n, expect_n);
    return a.data;
}

static double h5_read_scalar_f64(hid_t loc, const char *path) {
    H5Array a = h5_read(loc, path, H5T_NATIVE_DOUBLE);
    cr_assert_eq(a.n, (size_t)1, "dataset %s is not a scalar", path);
    double v = *(double *)a.data;
    free(a.data);
    return v;
}

static void h5_attr_read(hid_t obj, const char *name, hid_t mem_type, void *out) {
    cr_assert(H5Aexists(obj, name) > 0, "attribute %s missing", name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    cr_assert(H5Aread(a, mem_type, out) >= 0, "cannot read attribute %s", name);
    H5Aclose(a);
}

static int64_t h5_attr_i64(hid_t obj, const char *name) {
    int64_t v = 0;
    h5_attr_read(obj, name, H5T_NATIVE_INT64, &v);
    return v;
}

static double h5_attr_f64(hid_t obj, const char *name) {
    double v = 0;
    h5_attr_read(obj, name, H5T_NATIVE_DOUBLE, &v);
    return v;
}

/* A string attribute, fixed-length or variable-length. */
static void h5_attr_str(hid_t obj, const char *name, char *buf, size_t cap) {
    cr_assert(H5Aexists(obj, name) > 0, "attribute %s missing", name);
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    hid_t ft = H5Aget_type(a);
    cr_assert_eq(H5Tget_class(ft), H5T_STRING, "attribute %s is not a string", name);
    hid_t mt = H5Tcopy(H5T_C_S1);
    if (H5Tis_variable_str(ft) > 0) {
        char *s = NULL;
        H5Tset_size(mt, H5T_VARIABLE);
        cr_assert(H5Aread(a, mt, &s) >= 0);
        snprintf(buf, cap, "%s", s ? s : "");
        H5free_memory(s);
    } else {
        size_t sz = H5Tget_size(ft);
        char *tmp = calloc(sz + 1, 1);
        H5Tset_size(mt, sz + 1);
        H5Tset_strpad(mt, H5T_STR_NULLTERM);
        cr_assert(H5Aread(a, mt, tmp) >= 0);
        snprintf(buf, cap, "%s", tmp);
        free(tmp);
    }
    H5Tclose(mt);
    H5Tclose(ft);
    H5Aclose(a);
}

/* Names of the links in a group (caller frees each and the array). */
static char **h5_group_names(hid_t loc, const char *group, size_t *count) {
    hid_t g = H5Gopen2(loc, group, H5P_DEFAULT);
    cr_assert(g >= 0, "group %s missing", group);
    H5G_info_t info;
    H5Gget_info(g, &info);
    char **names = calloc(info.nlinks ? info.nlinks : 1, sizeof *names);
    for (hsize_t i = 0; i < info.nlinks; i++) {
        ssize_t len =
            H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, NULL, 0, H5P_DEFAULT);
        cr_assert(len > 0);
        names[i] = malloc((size_t)len + 1);
        H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, names[i], (size_t)len + 1,
                           H5P_DEFAULT);
    }
    H5Gclose(g);
    *count = (size_t)info.nlinks;
    return names;
}

/* ------------------------------------------------------------ the cases ---- */

typedef struct Case {
    const char *file;
    hid_t f;
    ModelConfig cfg;
    Model *m;
    int64_t B, T, V;
    int32_t *tokens, *targets;
    float *mask, *value_targets; /* value_targets: scalar head only */
    ModelBatch batch;
} Case;

static ModelConfig read_config(hid_t f) {
    hid_t g = H5Gopen2(f, "config", H5P_DEFAULT);
    cr_assert(g >= 0, "group /config missing");
    char arch[32];
    h5_attr_str(g, "arch", arch, sizeof arch);
    ModelConfig c = model_config_default();
    if (strcmp(arch, "llama") == 0) {
        c.arch = MODEL_ARCH_LLAMA;
    } else if (strcmp(arch, "gpt2") == 0) {
        c.arch = MODEL_ARCH_GPT2;
    } else {
        cr_assert_fail("unknown arch '%s'", arch);
    }
    c.vocab_size = h5_attr_i64(g, "vocab_size");
    c.d_model = h5_attr_i64(g, "d_model");
    c.n_layer = h5_attr_i64(g, "n_layer");
    c.n_head = h5_attr_i64(g, "n_head");
    c.n_kv_head = h5_attr_i64(g, "n_kv_head");
    c.d_ff = h5_attr_i64(g, "d_ff");
    c.max_seq_len = h5_attr_i64(g, "max_seq_len");
    c.norm_eps = (float)h5_attr_f64(g, "norm_eps");
    c.rope_theta = (float)h5_attr_f64(g, "rope_theta");
    c.init_std = 0.02f;
    c.tie_embeddings = h5_attr_i64(g, "tie_embeddings") != 0;
    c.qkv_bias = h5_attr_i64(g, "qkv_bias") != 0;
    c.scalar_head = h5_attr_i64(g, "scalar_head") != 0;
    H5Gclose(g);
    return c;
}

/* Loads /params into the model: every model tensor must be in the file with the
 * same shape, and every file tensor must be a model tensor. */
static void load_params(Case *c) {
    size_t nt = 0;
    const ModelTensor *ts = model_tensors(c->m, &nt);
    float *params = model_params(c->m);
    for (size_t i = 0; i < nt; i++) {
        const ModelTensor *t = &ts[i];
        char path[256];
        snprintf(path, sizeof path, "params/%s", t->name);
        cr_assert(h5_exists(c->f, path), "%s: model tensor %s is not in the file", c->file,
                  t->name);
        H5Array a = h5_read(c->f, path, H5T_NATIVE_FLOAT);
        bool same = a.ndim == t->ndim && a.n == t->numel;
        for (int d = 0; same && d < t->ndim; d++) same = (int64_t)a.dims[d] == t->shape[d];
        cr_assert(same, "%s: %s has shape [%lld,%lld] (ndim %d) in the model, ndim %d [%llu,%llu] in the file",
                  c->file, t->name, (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
                  t->ndim, a.ndim, (unsigned long long)a.dims[0],
                  (unsigned long long)(a.ndim > 1 ? a.dims[1] : 0));
        memcpy(params + t->offset, a.data, t->numel * sizeof(float));
        free(a.data);
    }
    size_t nf = 0;
    char **names = h5_group_names(c->f, "params", &nf);
    for (size_t i = 0; i < nf; i++) {
        cr_assert(model_find_tensor(c->m, names[i]) != NULL,
                  "%s: file tensor %s is not a model tensor", c->file, names[i]);
        free(names[i]);
    }
    free(names);
    cr_assert_eq(nf, nt, "%s: %zu tensors in the file, %zu in the model", c->file, nf, nt);
}

static void case_open(Case *c, const char *file) {
    memset(c, 0, sizeof *c);
    c->file = file;
    c->f = h5_open(file);
    c->cfg = read_config(c->f);
    PonderError err = {0};
    int rc = model_create(&c->m, &c->cfg, &err);
    cr_assert_eq(rc, 0, "%s: model_create: %s", file, err.msg);
    load_params(c);

    H5Array tok = h5_read(c->f, "inputs/tokens", H5T_NATIVE_INT32);
    cr_assert_eq(tok.ndim, 2);
    c->B = (int64_t)tok.dims[0];
    c->T = (int64_t)tok.dims[1];
    c->V = c->cfg.vocab_size;
    c->tokens = tok.data;
    size_t bt = (size_t)(c->B * c->T);
    c->targets = h5_read_i32(c->f, "inputs/targets", bt);
    c->mask = h5_read_f32(c->f, "inputs/mask", bt);
    if (c->cfg.scalar_head) c->value_targets = h5_read_f32(c->f, "inputs/value_targets", bt);
    c->batch = (ModelBatch){.B = c->B, .T = c->T, .tokens = c->tokens, .targets = c->targets,
                            .mask = c->mask, .start = NULL};
}

static void case_close(Case *c) {
    model_free(c->m);
    free(c->tokens);
    free(c->targets);
    free(c->mask);
    free(c->value_targets);
    H5Fclose(c->f);
}

/* Relative error of got vs want over elements i with (select == NULL or
 * select[i / group] != 0); prints one line and records a non-fatal failure. */
static double compare(const Case *c, const char *what, const float *got, const float *want,
                      size_t n, const float *select, size_t group) {
    double max_abs = 0.0, max_ref = 0.0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (select && select[i / group] == 0.0f) continue;
        double d = fabs((double)got[i] - (double)want[i]);
        if (!(d <= max_abs)) { /* also catches NaN */
            max_abs = isnan(d) ? INFINITY : d;
            worst = i;
        }
        if (fabs((double)want[i]) > max_ref) max_ref = fabs((double)want[i]);
    }
    double rel = max_abs / (max_ref > 1e-6 ? max_ref : 1e-6);
    printf("%-30s %-52s max_abs %.3e  max_ref %.3e  rel %.3e%s\n", c->file, what, max_abs,
           max_ref, rel, rel <= REL_TOL ? "" : "  <-- MISMATCH");
    fflush(stdout);
    cr_expect(rel <= REL_TOL,
              "%s: %s rel err %.3e > %.0e (max abs diff %.3e at flat index %zu: got %.8g want %.8g)",
              c->file, what, rel, REL_TOL, max_abs, worst, (double)got[worst],
              (double)want[worst]);
    return rel;
}

/* Values that must be exactly 0 where mask == 0. */
static void expect_zero_masked(const Case *c, const char *what, const float *got) {
    for (int64_t i = 0; i < c->B * c->T; i++) {
        if (c->mask[i] != 0.0f) continue;
        cr_expect(got[i] == 0.0f, "%s: %s[b=%lld,t=%lld] = %g at a masked position, expected 0",
                  c->file, what, (long long)(i / c->T), (long long)(i % c->T), (double)got[i]);
    }
}

static void check_forward_backward(const char *file) {
    Case c;
    case_open(&c, file);
    size_t bt = (size_t)(c.B * c.T);
    float *logp = calloc(bt, sizeof(float));
    float *ent = calloc(bt, sizeof(float));
    float *vals = c.cfg.scalar_head ? calloc(bt, sizeof(float)) : NULL;
    PonderError err = {0};
    int rc = model_forward(c.m, &c.batch, logp, ent, vals, &err);
    cr_assert_eq(rc, 0, "%s: model_forward: %s", file, err.msg);

    float *want_logp = h5_read_f32(c.f, "expected/logp", bt);
    float *want_ent = h5_read_f32(c.f, "expected/entropy", bt);
    compare(&c, "forward logp", logp, want_logp, bt, c.mask, 1);
    compare(&c, "forward entropy", ent, want_ent, bt, c.mask, 1);
    expect_zero_masked(&c, "logp", logp);
    expect_zero_masked(&c, "entropy", ent);
    float *want_vals = NULL;
    if (c.cfg.scalar_head) {
        want_vals = h5_read_f32(c.f, "expected/values", bt);
        compare(&c, "forward values", vals, want_vals, bt, c.mask, 1);
        expect_zero_masked(&c, "values", vals);
    }

    /* the loss, and its per-token upstream gradients */
    double N = 0.0, loss = 0.0;
    for (size_t i = 0; i < bt; i++) N += c.mask[i];
    cr_assert(N > 0);
    float *dlogp = calloc(bt, sizeof(float));
    float *dent = calloc(bt, sizeof(float));
    float *dval = c.cfg.scalar_head ? calloc(bt, sizeof(float)) : NULL;
    for (size_t i = 0; i < bt; i++) {
        double mk = c.mask[i];
        loss += mk * (-(double)logp[i] - ENTROPY_COEF * (double)ent[i]) / N;
        dlogp[i] = (float)(-mk / N);
        dent[i] = (float)(-ENTROPY_COEF * mk / N);
        if (c.cfg.scalar_head) {
            double dv = (double)vals[i] - (double)c.value_targets[i];
            loss += mk * 0.5 * dv * dv / N;
            dval[i] = (float)(mk * dv / N);
        }
    }
    double want_loss = h5_read_scalar_f64(c.f, "expected/loss");
    double loss_rel = fabs(loss - want_loss) / fmax(fabs(want_loss), 1e-6);
    printf("%-30s %-52s got %.9f  want %.9f  rel %.3e%s\n", file, "loss", loss, want_loss,
           loss_rel, loss_rel <= REL_TOL ? "" : "  <-- MISMATCH");
    cr_expect(loss_rel <= REL_TOL, "%s: loss %.9f vs %.9f (rel %.3e)", file, loss, want_loss,
              loss_rel);

    /* gradients */
    model_zero_grad(c.m);
    rc = model_backward(c.m, dlogp, dent, dval, &err);
    cr_assert_eq(rc, 0, "%s: model_backward: %s", file, err.msg);
    size_t nt = 0;
    const ModelTensor *ts = model_tensors(c.m, &nt);
    const float *grads = model_grads(c.m);
    for (size_t i = 0; i < nt; i++) {
        char path[256], what[160];
        snprintf(path, sizeof path, "grads/%s", ts[i].name);
        snprintf(what, sizeof what, "grad %s", ts[i].name);
        float *want = h5_read_f32(c.f, path, ts[i].numel);
        compare(&c, what, grads + ts[i].offset, want, ts[i].numel, NULL, 1);
        free(want);
    }
    size_t ng = 0;
    char **names = h5_group_names(c.f, "grads", &ng);
    for (size_t i = 0; i < ng; i++) free(names[i]);
    free(names);
    cr_expect_eq(ng, nt, "%s: %zu gradient tensors in the file, %zu in the model", file, ng, nt);

    free(logp);
    free(ent);
    free(vals);
    free(want_logp);
    free(want_ent);
    free(want_vals);
    free(dlogp);
    free(dent);
    free(dval);
    case_close(&c);
}

static void check_logits(const char *file) {
    Case c;
    case_open(&c, file);
    size_t n = (size_t)(c.B * c.T * c.V);
    float *logits = calloc(n, sizeof(float));
    PonderError err = {0};
    int rc = model_forward_logits(c.m, &c.batch, logits, &err);
    cr_assert_eq(rc, 0, "%s: model_forward_logits: %s", file, err.msg);
    float *want = h5_read_f32(c.f, "expected/logits", n);
    /* real positions only: what a padded position's logits hold is not specified */
    compare(&c, "logits (mask=1 positions)", logits, want, n, c.mask, (size_t)c.V);
    free(want);
    free(logits);
    case_close(&c);
}

#define REFERENCE_CASE(id, file)                                          \
    Test(reference, id##_forward_backward) { check_forward_backward(file); } \
    Test(reference, id##_logits) { check_logits(file); }

REFERENCE_CASE(llama_tied, "ref_llama_tied.h5")
REFERENCE_CASE(llama_gqa_untied_bias, "ref_llama_gqa_untied_bias.h5")
REFERENCE_CASE(gpt2_tied, "ref_gpt2_tied.h5")
REFERENCE_CASE(gpt2_untied_scalar, "ref_gpt2_untied_scalar.h5")
