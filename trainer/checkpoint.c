/* trainer/checkpoint.c — HDF5 checkpoints (see checkpoint.h for the layout).
 *
 * Every function closes every HDF5 id it opens on every path: helpers take
 * ids that may be "never opened" (< 0) so each has one exit. Public entry
 * points silence HDF5's error-stack printing and restore it on return, so
 * errors surface only as PonderError messages naming file, object and fault. */
#include "trainer/checkpoint.h"

#include <dirent.h>   /* opendir, readdir */
#include <errno.h>    /* errno */
#include <fcntl.h>    /* open */
#include <hdf5.h>     /* H5* */
#include <math.h>     /* sqrt */
#include <stdbool.h>  /* bool */
#include <stddef.h>   /* offsetof */
#include <stdlib.h>   /* malloc, calloc, free, qsort, strtoll */
#include <string.h>   /* strlen, strcmp, memcpy, strerror */

#include "model/ops.h" /* ModelOps: optimizer moments may live on a device */
#include <sys/stat.h> /* stat */
#include <unistd.h>   /* fsync, close, unlink */

#define PATH_MAX_LEN 4096
#define STAGE_MAX ((int)sizeof(((CkptMeta *)0)->stage))

/* ------------------------------------------------------ HDF5 plumbing --- */

typedef struct H5Quiet {
    H5E_auto2_t func;
    void *data;
} H5Quiet;

/* HDF5 prints its whole error stack to stderr by default; library code must
 * not print, and our messages already say what went wrong. */
static H5Quiet h5_quiet(void) {
    H5Quiet q = {NULL, NULL};
    H5Eget_auto2(H5E_DEFAULT, &q.func, &q.data);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    return q;
}

static void h5_restore(H5Quiet q) { H5Eset_auto2(H5E_DEFAULT, q.func, q.data); }

static void close_d(hid_t id) {
    if (id >= 0) H5Dclose(id);
}
static void close_s(hid_t id) {
    if (id >= 0) H5Sclose(id);
}
static void close_t(hid_t id) {
    if (id >= 0) H5Tclose(id);
}
static void close_g(hid_t id) {
    if (id >= 0) H5Gclose(id);
}
static void close_a(hid_t id) {
    if (id >= 0) H5Aclose(id);
}

/* "float32", "int64", "string", ... for messages. */
static const char *dtype_name(hid_t t, char *buf, size_t n) {
    size_t bits = H5Tget_size(t) * 8;
    switch (H5Tget_class(t)) {
    case H5T_FLOAT: snprintf(buf, n, "float%zu", bits); break;
    case H5T_INTEGER:
        snprintf(buf, n, "%sint%zu", H5Tget_sign(t) == H5T_SGN_NONE ? "u" : "", bits);
        break;
    case H5T_STRING: snprintf(buf, n, "string"); break;
    case H5T_COMPOUND: snprintf(buf, n, "compound"); break;
    case H5T_ENUM: snprintf(buf, n, "enum"); break;
    case H5T_ARRAY: snprintf(buf, n, "array"); break;
    default: snprintf(buf, n, "an unsupported HDF5 type"); break;
    }
    return buf;
}

static const char *dataset_dtype_name(hid_t d, char *buf, size_t n) {
    hid_t t = H5Dget_type(d);
    if (t < 0) return snprintf(buf, n, "an unreadable type"), buf;
    dtype_name(t, buf, n);
    H5Tclose(t);
    return buf;
}

/* "[128,64]"; "[]" for a scalar. */
static const char *shape_str(int ndim, const hsize_t *dims, char *buf, size_t n) {
    size_t used = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%llu", i ? "," : "",
                                 (unsigned long long)dims[i]);
    if (used < n) snprintf(buf + used, n - used, "]");
    return buf;
}

/* Rank (0 = scalar) and dims of a dataset; -1 when unreadable. */
static int dataset_dims(hid_t d, hsize_t dims[H5S_MAX_RANK]) {
    hid_t sp = H5Dget_space(d);
    int nd = sp < 0 ? -1 : H5Sget_simple_extent_ndims(sp);
    if (nd > 0 && H5Sget_simple_extent_dims(sp, dims, NULL) < 0) nd = -1;
    close_s(sp);
    return nd;
}

/* H5Lexists on "/a/b/c" fails rather than answering 0 when "/a" is absent, so
 * each prefix is checked in turn. */
static bool link_exists(hid_t f, const char *path) {
    char buf[512];
    size_t n = strlen(path);
    if (n >= sizeof buf) return false;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != '\0') continue;
        char saved = buf[i];
        buf[i] = '\0';
        bool ok = H5Lexists(f, buf, H5P_DEFAULT) > 0;
        buf[i] = saved;
        if (!ok) return false;
    }
    return true;
}

static int64_t group_size(hid_t g) {
    H5G_info_t info;
    return H5Gget_info(g, &info) < 0 ? -1 : (int64_t)info.nlinks;
}

/* Name of link i of g (in creation order when the group tracks it, which
 * ours do, so listings follow the model's order; else alphabetical). */
static void link_name(hid_t g, bool crt_order, hsize_t i, char *buf, size_t n) {
    H5_index_t idx = crt_order ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME;
    if (H5Lget_name_by_idx(g, ".", idx, H5_ITER_INC, i, buf, n, H5P_DEFAULT) < 0)
        snprintf(buf, n, "?");
}

static bool tracks_creation_order(hid_t g) {
    hid_t gcpl = H5Gget_create_plist(g);
    unsigned flags = 0;
    if (gcpl >= 0) {
        if (H5Pget_link_creation_order(gcpl, &flags) < 0) flags = 0;
        H5Pclose(gcpl);
    }
    return (flags & H5P_CRT_ORDER_INDEXED) != 0;
}

/* ------------------------------------------------------------- writing --- */

static hid_t make_group(hid_t loc, const char *name) {
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0) return -1;
    hid_t g = -1;
    if (H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) >= 0)
        g = H5Gcreate2(loc, name, H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    return g;
}

/* Contiguous and uncompressed: checkpoints are written often and read rarely,
 * and float weights barely compress. ndim 0 writes a scalar. */
static int write_array(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int ndim,
                       const hsize_t *dims, const void *data) {
    hid_t sp = ndim ? H5Screate_simple(ndim, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t d = sp < 0 ? -1 : H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    bool ok = d >= 0;
    if (ok && H5Sget_simple_extent_npoints(sp) > 0)
        ok = H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0;
    close_d(d);
    close_s(sp);
    return ok ? 0 : -1;
}

/* Fixed-length UTF-8 text, NUL-terminated, so h5py and h5dump show it as a
 * string. HDF5 rejects size 0, so "" is stored as a single NUL. */
static hid_t string_type(size_t len) {
    hid_t t = H5Tcopy(H5T_C_S1);
    if (t < 0) return -1;
    if (H5Tset_size(t, len + 1) < 0 || H5Tset_strpad(t, H5T_STR_NULLTERM) < 0 ||
        H5Tset_cset(t, H5T_CSET_UTF8) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

static int write_string(hid_t loc, const char *name, const char *s) {
    hid_t t = string_type(strlen(s));
    int rc = t < 0 ? -1 : write_array(loc, name, t, t, 0, NULL, s);
    close_t(t);
    return rc;
}

static int write_attr(hid_t loc, const char *name, hid_t ftype, hid_t mtype, const void *v) {
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = sp < 0 ? -1 : H5Acreate2(loc, name, ftype, sp, H5P_DEFAULT, H5P_DEFAULT);
    bool ok = a >= 0 && H5Awrite(a, mtype, v) >= 0;
    close_a(a);
    close_s(sp);
    return ok ? 0 : -1;
}

static int attr_i64(hid_t loc, const char *name, int64_t v) {
    return write_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &v);
}

static int attr_f64(hid_t loc, const char *name, double v) {
    return write_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &v);
}

static int attr_str(hid_t loc, const char *name, const char *s) {
    hid_t t = string_type(strlen(s));
    int rc = t < 0 ? -1 : write_attr(loc, name, t, t, s);
    close_t(t);
    return rc;
}

/* The model config fields stored in /meta, shared by write, read and compare
 * so the three cannot drift apart. init_std is left out: it only shapes a
 * fresh initialisation, never a loaded model. */
typedef enum { FIELD_I64, FIELD_F32, FIELD_BOOL } FieldKind;
typedef struct CfgField {
    const char *name;
    FieldKind kind;
    size_t off;
    bool llama_only; /* ignored by gpt2, so a difference there is no mismatch */
} CfgField;

static const CfgField CFG_FIELDS[] = {
    {"vocab_size", FIELD_I64, offsetof(ModelConfig, vocab_size), false},
    {"d_model", FIELD_I64, offsetof(ModelConfig, d_model), false},
    {"n_layer", FIELD_I64, offsetof(ModelConfig, n_layer), false},
    {"n_head", FIELD_I64, offsetof(ModelConfig, n_head), false},
    {"n_kv_head", FIELD_I64, offsetof(ModelConfig, n_kv_head), false},
    {"d_ff", FIELD_I64, offsetof(ModelConfig, d_ff), false},
    {"max_seq_len", FIELD_I64, offsetof(ModelConfig, max_seq_len), false},
    {"norm_eps", FIELD_F32, offsetof(ModelConfig, norm_eps), false},
    {"rope_theta", FIELD_F32, offsetof(ModelConfig, rope_theta), true},
    {"tie_embeddings", FIELD_BOOL, offsetof(ModelConfig, tie_embeddings), false},
    {"qkv_bias", FIELD_BOOL, offsetof(ModelConfig, qkv_bias), true},
    {"scalar_head", FIELD_BOOL, offsetof(ModelConfig, scalar_head), false},
};
#define N_CFG_FIELDS (sizeof CFG_FIELDS / sizeof CFG_FIELDS[0])

static const char *arch_name(ModelArch a) { return a == MODEL_ARCH_GPT2 ? "gpt2" : "llama"; }

static int write_config_field(hid_t g, const ModelConfig *c, const CfgField *f) {
    const char *p = (const char *)c + f->off;
    switch (f->kind) {
    case FIELD_I64: return attr_i64(g, f->name, *(const int64_t *)p);
    case FIELD_F32: return attr_f64(g, f->name, (double)*(const float *)p);
    default: return attr_i64(g, f->name, *(const bool *)p ? 1 : 0);
    }
}

static int write_meta(hid_t f, const CkptWrite *w) {
    const ModelConfig *c = model_config(w->model);
    hid_t g = make_group(f, "meta");
    if (g < 0) return -1;
    int rc = attr_i64(g, "format_version", CKPT_FORMAT_VERSION);
    rc |= attr_str(g, "stage", w->stage ? w->stage : "");
    rc |= attr_i64(g, "stage_index", w->stage_index);
    rc |= attr_i64(g, "step", w->step);
    rc |= attr_str(g, "arch", arch_name(c->arch));
    for (size_t i = 0; i < N_CFG_FIELDS; i++) rc |= write_config_field(g, c, &CFG_FIELDS[i]);
    close_g(g);
    return rc ? -1 : 0;
}

static int write_tensors(hid_t parent, const char *group, const Model *model, const float *buf) {
    hid_t g = make_group(parent, group);
    if (g < 0) return -1;
    size_t count;
    const ModelTensor *ts = model_tensors(model, &count);
    int rc = 0;
    for (size_t i = 0; i < count && rc == 0; i++) {
        hsize_t dims[2] = {(hsize_t)ts[i].shape[0], (hsize_t)ts[i].shape[1]};
        rc = write_array(g, ts[i].name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, ts[i].ndim, dims,
                         buf + ts[i].offset);
    }
    close_g(g);
    return rc;
}

/* Moments on a device are copied to host buffers first (NULL: out of memory). */
static float *host_moments(const Optimizer *opt, const float *src, float **owned) {
    *owned = NULL;
    if (!opt->ops || !opt->ops->device) return (float *)src;
    *owned = malloc(opt->n * sizeof(float));
    if (*owned) opt->ops->download(*owned, src, opt->n * sizeof(float));
    return *owned;
}

static int write_optim(hid_t f, const Model *model, const Optimizer *opt) {
    hid_t g = make_group(f, "optim");
    if (g < 0) return -1;
    float *m_owned, *v_owned;
    const float *m = host_moments(opt, opt->m, &m_owned), *v = host_moments(opt, opt->v, &v_owned);
    int rc = (m && v) ? write_tensors(g, "m", model, m) : -1;
    if (rc == 0) rc = write_tensors(g, "v", model, v);
    free(m_owned);
    free(v_owned);
    if (rc == 0) rc = write_array(g, "step", H5T_STD_I64LE, H5T_NATIVE_INT64, 0, NULL, &opt->step);
    close_g(g);
    return rc;
}

static int write_rngs(hid_t f, const Rng *rngs, int64_t n) {
    hid_t g = make_group(f, "rng");
    if (g < 0) return -1;
    int rc = 0;
    for (int64_t i = 0; i < n && rc == 0; i++) {
        char name[32];
        hsize_t dims[1] = {4};
        snprintf(name, sizeof name, "%lld", (long long)i);
        rc = write_array(g, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, 1, dims, rngs[i].s);
    }
    close_g(g);
    return rc;
}

static int write_cursor(hid_t f, const int64_t *cursor, int64_t n) {
    hid_t g = make_group(f, "data");
    if (g < 0) return -1;
    hsize_t dims[1] = {(hsize_t)n};
    int rc = write_array(g, "cursor", H5T_STD_I64LE, H5T_NATIVE_INT64, 1, dims, cursor);
    close_g(g);
    return rc;
}

static int write_fail(PonderError *err, const char *tmp, const char *what) {
    return ponder_error(err, PONDER_ERR_IO, "%s: writing %s failed (disk full or not writable?)",
                        tmp, what);
}

static int write_contents(hid_t f, const char *tmp, const CkptWrite *w, PonderError *err) {
    if (write_meta(f, w) < 0) return write_fail(err, tmp, "/meta");
    /* model_params takes a non-const Model only because it also serves
     * writers; reading through it here changes nothing. */
    if (write_tensors(f, "model", w->model, model_params((Model *)w->model)) < 0)
        return write_fail(err, tmp, "/model");
    if (w->opt && write_optim(f, w->model, w->opt) < 0) return write_fail(err, tmp, "/optim");
    if (write_rngs(f, w->rngs, w->n_rngs) < 0) return write_fail(err, tmp, "/rng");
    if (write_cursor(f, w->data_cursor, w->n_cursor) < 0)
        return write_fail(err, tmp, "/data/cursor");
    if (write_string(f, "config", w->config_yaml ? w->config_yaml : "") < 0)
        return write_fail(err, tmp, "/config");
    if (write_string(f, "metrics", w->metrics_jsonl ? w->metrics_jsonl : "") < 0)
        return write_fail(err, tmp, "/metrics");
    return PONDER_OK;
}

static int check_write(const CkptWrite *w, PonderError *err) {
    if (!w || !w->model) return ponder_error(err, PONDER_ERR_CONFIG, "ckpt_save: no model to save");
    if (w->opt && w->opt->n != model_num_params(w->model))
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "ckpt_save: optimizer has %zu moments but the model %zu parameters",
                            w->opt->n, model_num_params(w->model));
    if (w->n_rngs < 0 || (w->n_rngs > 0 && !w->rngs))
        return ponder_error(err, PONDER_ERR_CONFIG, "ckpt_save: %lld rng streams but no array",
                            (long long)w->n_rngs);
    if (w->n_cursor < 0 || (w->n_cursor > 0 && !w->data_cursor))
        return ponder_error(err, PONDER_ERR_CONFIG, "ckpt_save: %lld cursor entries but no array",
                            (long long)w->n_cursor);
    if (w->stage && strlen(w->stage) >= (size_t)STAGE_MAX)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "ckpt_save: stage name '%s' is longer than %d bytes", w->stage,
                            STAGE_MAX - 1);
    return PONDER_OK;
}

/* fsync makes the data durable before the rename publishes it; without it a
 * power loss can leave a complete-looking name over empty blocks. */
static int fsync_path(const char *path, PonderError *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fsync(fd) != 0) {
        int e = errno;
        if (fd >= 0) close(fd);
        return ponder_error(err, PONDER_ERR_IO, "%s: fsync failed: %s", path, strerror(e));
    }
    close(fd);
    return PONDER_OK;
}

/* Makes the rename itself durable. Best effort: some file systems refuse to
 * fsync a directory, and the checkpoint is complete either way. */
static void fsync_parent(const char *path) {
    char dir[PATH_MAX_LEN];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path) + (slash == path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static int save_impl(const char *path, const CkptWrite *w, PonderError *err) {
    int rc = check_write(w, err);
    if (rc) return rc;
    char tmp[PATH_MAX_LEN];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp)
        return ponder_error(err, PONDER_ERR_CONFIG, "checkpoint path too long: %s", path);
    hid_t f = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (f < 0)
        return ponder_error(err, PONDER_ERR_IO,
                            "%s: cannot create checkpoint file (does the directory exist and is "
                            "it writable?)",
                            tmp);
    rc = write_contents(f, tmp, w, err);
    if (rc == PONDER_OK && H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) rc = write_fail(err, tmp, "(flush)");
    if (H5Fclose(f) < 0 && rc == PONDER_OK) rc = write_fail(err, tmp, "(close)");
    if (rc == PONDER_OK) rc = fsync_path(tmp, err);
    if (rc == PONDER_OK && rename(tmp, path) != 0)
        rc = ponder_error(err, PONDER_ERR_IO, "renaming %s to %s failed: %s", tmp, path,
                          strerror(errno));
    if (rc != PONDER_OK) {
        unlink(tmp); /* never leave a partial file behind, even under the .tmp name */
        return rc;
    }
    fsync_parent(path);
    return PONDER_OK;
}

int ckpt_save(const char *path, const CkptWrite *w, PonderError *err) {
    H5Quiet q = h5_quiet();
    int rc = save_impl(path, w, err);
    h5_restore(q);
    return rc;
}

/* ------------------------------------------------------------- reading --- */

static int open_checkpoint(const char *path, hid_t *f, PonderError *err) {
    struct stat st;
    *f = -1;
    if (stat(path, &st) != 0)
        return ponder_error(err, PONDER_ERR_IO, "%s: cannot open checkpoint: %s", path,
                            strerror(errno));
    if (!S_ISREG(st.st_mode))
        return ponder_error(err, PONDER_ERR_IO, "%s: is not a regular file", path);
    *f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (*f < 0)
        return ponder_error(err, PONDER_ERR_IO,
                            "%s is not a readable HDF5 file (truncated by an interrupted copy, "
                            "corrupt, or not a checkpoint)",
                            path);
    return PONDER_OK;
}

/* Scalar numeric attribute of /meta, converted to mtype. Integers must be
 * stored as integers (a float would be silently truncated); floats may be
 * either. */
static int read_attr_num(hid_t g, const char *file, const char *name, bool want_int, hid_t mtype,
                         void *out, PonderError *err) {
    if (H5Aexists(g, name) <= 0)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: /meta attribute '%s' is missing", file,
                            name);
    hid_t a = H5Aopen(g, name, H5P_DEFAULT);
    hid_t t = a < 0 ? -1 : H5Aget_type(a), sp = a < 0 ? -1 : H5Aget_space(a);
    int rc = PONDER_OK;
    char dt[64];
    H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
    bool numeric = cls == H5T_INTEGER || (!want_int && cls == H5T_FLOAT);
    if (t < 0 || sp < 0)
        rc = ponder_error(err, PONDER_ERR_IO, "%s: /meta attribute '%s' is unreadable", file, name);
    else if (!numeric || H5Sget_simple_extent_npoints(sp) != 1)
        rc = ponder_error(err, PONDER_ERR_SHAPE,
                          "%s: /meta attribute '%s': expected one %s, found %s", file, name,
                          want_int ? "integer" : "number", dtype_name(t, dt, sizeof dt));
    else if (H5Aread(a, mtype, out) < 0)
        rc = ponder_error(err, PONDER_ERR_IO, "%s: /meta attribute '%s' is unreadable", file, name);
    close_t(t);
    close_s(sp);
    close_a(a);
    return rc;
}

static void vlen_free(hid_t mt, hid_t sp, void *buf) {
#if H5_VERSION_GE(1, 12, 0)
    H5Treclaim(mt, sp, H5P_DEFAULT, buf);
#else
    H5Dvlen_reclaim(mt, sp, H5P_DEFAULT, buf);
#endif
}

/* Reads the single string of an attribute or dataset, fixed-length (as we
 * write) or variable-length (as h5py writes), into a malloc'd buffer.
 * Returns 0, -1 on a read failure, -2 when it is not one string. */
static int read_string_obj(hid_t obj, bool is_attr, char **out) {
    hid_t ft = is_attr ? H5Aget_type(obj) : H5Dget_type(obj);
    hid_t sp = is_attr ? H5Aget_space(obj) : H5Dget_space(obj);
    hid_t mt = H5Tcopy(H5T_C_S1);
    char *buf = NULL, *vs = NULL;
    int rc = -1;
    if (ft < 0 || sp < 0 || mt < 0) goto done;
    rc = -2;
    if (H5Tget_class(ft) != H5T_STRING || H5Sget_simple_extent_npoints(sp) != 1) goto done;
    rc = -1;
    bool vlen = H5Tis_variable_str(ft) > 0;
    size_t size = vlen ? 0 : H5Tget_size(ft);
    if (H5Tset_cset(mt, H5Tget_cset(ft)) < 0) goto done;
    if (vlen ? H5Tset_size(mt, H5T_VARIABLE) < 0
             : (H5Tset_size(mt, size) < 0 || H5Tset_strpad(mt, H5T_STR_NULLPAD) < 0))
        goto done;
    void *dst = vlen ? (void *)&vs : (void *)(buf = calloc(size + 1, 1));
    if (!dst) goto done;
    herr_t r =
        is_attr ? H5Aread(obj, mt, dst) : H5Dread(obj, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst);
    if (r < 0) goto done;
    if (vlen) {
        buf = strdup(vs ? vs : "");
        vlen_free(mt, sp, &vs);
    }
    rc = buf ? 0 : -1;
done:
    if (rc != 0) free(buf);
    *out = rc == 0 ? buf : NULL;
    close_t(mt);
    close_s(sp);
    close_t(ft);
    return rc;
}

static int read_attr_str(hid_t g, const char *file, const char *name, char **out,
                         PonderError *err) {
    if (H5Aexists(g, name) <= 0)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: /meta attribute '%s' is missing", file,
                            name);
    hid_t a = H5Aopen(g, name, H5P_DEFAULT);
    int r = a < 0 ? -1 : read_string_obj(a, true, out);
    close_a(a);
    if (r == -2)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: /meta attribute '%s': expected a string",
                            file, name);
    if (r < 0)
        return ponder_error(err, PONDER_ERR_IO, "%s: /meta attribute '%s' is unreadable", file,
                            name);
    return PONDER_OK;
}

/* A string dataset (/config, /metrics) into a malloc'd buffer. */
static int read_string_dataset(hid_t f, const char *file, const char *path, char **out,
                               PonderError *err) {
    if (!link_exists(f, path))
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: %s is missing", file, path);
    hid_t d = H5Dopen2(f, path, H5P_DEFAULT);
    int r = d < 0 ? -2 : read_string_obj(d, false, out);
    close_d(d);
    if (r == -2)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: %s: expected one string dataset", file,
                            path);
    if (r < 0) return ponder_error(err, PONDER_ERR_IO, "%s: reading %s failed", file, path);
    return PONDER_OK;
}

/* -------------------------------------------------------------- /meta --- */

static hid_t open_meta(hid_t f, const char *file, PonderError *err) {
    hid_t g = H5Lexists(f, "meta", H5P_DEFAULT) > 0 ? H5Gopen2(f, "meta", H5P_DEFAULT) : -1;
    if (g < 0)
        ponder_error(err, PONDER_ERR_SHAPE, "%s: no /meta group: not a ponder checkpoint", file);
    return g;
}

static int check_version(hid_t g, const char *file, int64_t *version, PonderError *err) {
    int rc = read_attr_num(g, file, "format_version", true, H5T_NATIVE_INT64, version, err);
    if (rc) return rc;
    if (*version != CKPT_FORMAT_VERSION)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "%s: format version %lld is not supported (this build reads %d)", file,
                            (long long)*version, CKPT_FORMAT_VERSION);
    return PONDER_OK;
}

/* stage, stage_index, step (format_version is checked separately). */
static int read_meta_progress(hid_t g, const char *file, CkptMeta *m, PonderError *err) {
    char *stage = NULL;
    int rc = read_attr_str(g, file, "stage", &stage, err);
    if (rc) return rc;
    if (strlen(stage) >= (size_t)STAGE_MAX)
        rc = ponder_error(err, PONDER_ERR_SHAPE, "%s: /meta stage name is longer than %d bytes",
                          file, STAGE_MAX - 1);
    else
        snprintf(m->stage, sizeof m->stage, "%s", stage);
    free(stage);
    if (!rc)
        rc = read_attr_num(g, file, "stage_index", true, H5T_NATIVE_INT64, &m->stage_index, err);
    if (!rc) rc = read_attr_num(g, file, "step", true, H5T_NATIVE_INT64, &m->step, err);
    return rc;
}

static int read_config_field(hid_t g, const char *file, const CfgField *f, ModelConfig *c,
                             PonderError *err) {
    char *p = (char *)c + f->off;
    int64_t i = 0;
    double d = 0;
    int rc;
    switch (f->kind) {
    case FIELD_I64: return read_attr_num(g, file, f->name, true, H5T_NATIVE_INT64, p, err);
    case FIELD_F32:
        rc = read_attr_num(g, file, f->name, false, H5T_NATIVE_DOUBLE, &d, err);
        *(float *)p = (float)d;
        return rc;
    default:
        rc = read_attr_num(g, file, f->name, true, H5T_NATIVE_INT64, &i, err);
        if (rc == PONDER_OK && i != 0 && i != 1)
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "%s: /meta attribute '%s': expected 0 or 1, found %lld", file,
                                f->name, (long long)i);
        *(bool *)p = i == 1;
        return rc;
    }
}

static int read_model_config(hid_t g, const char *file, ModelConfig *c, PonderError *err) {
    *c = model_config_default();
    char *arch = NULL;
    int rc = read_attr_str(g, file, "arch", &arch, err);
    if (rc) return rc;
    if (!strcmp(arch, "llama"))
        c->arch = MODEL_ARCH_LLAMA;
    else if (!strcmp(arch, "gpt2"))
        c->arch = MODEL_ARCH_GPT2;
    else
        rc = ponder_error(err, PONDER_ERR_SHAPE,
                          "%s: /meta arch '%s' is unknown (this build knows llama, gpt2)", file,
                          arch);
    free(arch);
    for (size_t i = 0; i < N_CFG_FIELDS && rc == PONDER_OK; i++)
        rc = read_config_field(g, file, &CFG_FIELDS[i], c, err);
    return rc;
}

/* Version check, then progress and model config: a newer format may have
 * moved anything, so nothing else is trusted until the version is known. */
static int read_meta(hid_t f, const char *file, CkptMeta *meta, ModelConfig *cfg,
                     PonderError *err) {
    hid_t g = open_meta(f, file, err);
    if (g < 0) return PONDER_ERR_SHAPE;
    int rc = check_version(g, file, &meta->format_version, err);
    if (!rc) rc = read_meta_progress(g, file, meta, err);
    if (!rc) rc = read_model_config(g, file, cfg, err);
    close_g(g);
    return rc;
}

static void field_str(const ModelConfig *c, const CfgField *f, char *buf, size_t n, bool precise) {
    const char *p = (const char *)c + f->off;
    switch (f->kind) {
    case FIELD_I64: snprintf(buf, n, "%lld", (long long)*(const int64_t *)p); break;
    case FIELD_F32: snprintf(buf, n, precise ? "%.9g" : "%g", (double)*(const float *)p); break;
    default: snprintf(buf, n, "%s", *(const bool *)p ? "true" : "false"); break;
    }
}

static bool field_equal(const ModelConfig *a, const ModelConfig *b, const CfgField *f) {
    const char *pa = (const char *)a + f->off, *pb = (const char *)b + f->off;
    switch (f->kind) {
    case FIELD_I64: return *(const int64_t *)pa == *(const int64_t *)pb;
    case FIELD_F32: return *(const float *)pa == *(const float *)pb;
    default: return *(const bool *)pa == *(const bool *)pb;
    }
}

/* Names the first field where the checkpoint's model and the run's differ;
 * caught here it reads as a config problem instead of a shape error. */
static int compare_config(const char *file, const ModelConfig *ck, const ModelConfig *run,
                          PonderError *err) {
    if (ck->arch != run->arch)
        return ponder_error(
            err, PONDER_ERR_CONFIG,
            "%s: model config mismatch: arch is %s in the checkpoint, %s in this run", file,
            arch_name(ck->arch), arch_name(run->arch));
    for (size_t i = 0; i < N_CFG_FIELDS; i++) {
        const CfgField *f = &CFG_FIELDS[i];
        if ((f->llama_only && run->arch != MODEL_ARCH_LLAMA) || field_equal(ck, run, f)) continue;
        char a[64], b[64];
        field_str(ck, f, a, sizeof a, false);
        field_str(run, f, b, sizeof b, false);
        if (!strcmp(a, b)) { /* floats that differ beyond %g's digits */
            field_str(ck, f, a, sizeof a, true);
            field_str(run, f, b, sizeof b, true);
        }
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "%s: model config mismatch: %s is %s in the checkpoint, %s in this run",
                            file, f->name, a, b);
    }
    return PONDER_OK;
}

/* ------------------------------------------------------------ tensors --- */

/* Opens group/<t->name> and checks it is a float32 dataset of t's shape. */
static int open_tensor(hid_t g, const char *file, const char *group, const ModelTensor *t, hid_t *d,
                       PonderError *err) {
    *d = -1;
    if (H5Lexists(g, t->name, H5P_DEFAULT) <= 0)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: tensor '%s' is missing from %s", file,
                            t->name, group);
    *d = H5Dopen2(g, t->name, H5P_DEFAULT);
    if (*d < 0)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: %s/%s is not a dataset", file, group,
                            t->name);
    hid_t ty = H5Dget_type(*d);
    bool f32 = ty >= 0 && H5Tget_class(ty) == H5T_FLOAT && H5Tget_size(ty) == 4;
    close_t(ty);
    hsize_t got[H5S_MAX_RANK], want[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
    int nd = dataset_dims(*d, got);
    bool same = nd == t->ndim && got[0] == want[0] && (nd < 2 || got[1] == want[1]);
    char s1[64], s2[64];
    int rc = PONDER_OK;
    if (!f32)
        rc =
            ponder_error(err, PONDER_ERR_SHAPE, "%s: tensor '%s' in %s: expected float32, found %s",
                         file, t->name, group, dataset_dtype_name(*d, s1, sizeof s1));
    else if (!same)
        rc = ponder_error(err, PONDER_ERR_SHAPE, "%s: tensor '%s' in %s: expected %s, found %s",
                          file, t->name, group, shape_str(t->ndim, want, s1, sizeof s1),
                          shape_str(nd < 0 ? 0 : nd, got, s2, sizeof s2));
    if (rc) {
        H5Dclose(*d);
        *d = -1;
    }
    return rc;
}

/* Every link in the group must be one of the model's tensors: an extra one
 * means the file was made for a different model (or edited by hand). */
static int check_no_extra(hid_t g, const char *file, const char *group, const Model *model,
                          size_t expected, PonderError *err) {
    int64_t n = group_size(g);
    if (n < 0) return ponder_error(err, PONDER_ERR_IO, "%s: cannot list %s", file, group);
    if ((size_t)n == expected) return PONDER_OK; /* all expected names exist, so no extras */
    for (int64_t i = 0; i < n; i++) {
        char name[256];
        link_name(g, false, (hsize_t)i, name, sizeof name);
        if (!model_find_tensor(model, name))
            return ponder_error(err, PONDER_ERR_SHAPE,
                                "%s: unexpected tensor '%s' in %s: this model has no such "
                                "parameter (checkpoint from a different model?)",
                                file, name, group);
    }
    return PONDER_OK;
}

/* Checks that group holds exactly the model's tensors as float32 with the
 * model's shapes (all metadata first, so a bad file is rejected before
 * gigabytes are read), then reads them into buf in the parameter layout. */
static int read_tensor_group(hid_t f, const char *file, const char *group, const Model *model,
                             float *buf, PonderError *err) {
    if (!link_exists(f, group))
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: group %s is missing", file, group);
    hid_t g = H5Gopen2(f, group, H5P_DEFAULT), d = -1;
    if (g < 0) return ponder_error(err, PONDER_ERR_SHAPE, "%s: %s is not a group", file, group);
    size_t count;
    const ModelTensor *ts = model_tensors(model, &count);
    int rc = PONDER_OK;
    for (size_t i = 0; i < count && rc == PONDER_OK; i++) {
        rc = open_tensor(g, file, group, &ts[i], &d, err);
        close_d(d);
    }
    if (rc == PONDER_OK) rc = check_no_extra(g, file, group, model, count, err);
    for (size_t i = 0; i < count && rc == PONDER_OK; i++) {
        rc = open_tensor(g, file, group, &ts[i], &d, err);
        if (rc == PONDER_OK &&
            H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf + ts[i].offset) < 0)
            rc = ponder_error(err, PONDER_ERR_IO,
                              "%s: reading %s/%s failed (file truncated or corrupt?)", file, group,
                              ts[i].name);
        close_d(d);
    }
    close_g(g);
    return rc;
}

/* ------------------------------------------------- integers, rng, cursor --- */

/* Opens an integer dataset of rank 0 (scalar) or 1 and gives its length.
 * Dtypes are checked so a float or string put there is named, not converted. */
static int open_int_dataset(hid_t f, const char *file, const char *path, int rank, size_t bytes,
                            hid_t *d, int64_t *len, PonderError *err) {
    *d = -1;
    if (!link_exists(f, path))
        return ponder_error(err, PONDER_ERR_SHAPE, "%s: %s is missing", file, path);
    *d = H5Dopen2(f, path, H5P_DEFAULT);
    if (*d < 0) return ponder_error(err, PONDER_ERR_SHAPE, "%s: %s is not a dataset", file, path);
    hid_t t = H5Dget_type(*d);
    bool ok = t >= 0 && H5Tget_class(t) == H5T_INTEGER && (!bytes || H5Tget_size(t) == bytes);
    close_t(t);
    hsize_t dims[H5S_MAX_RANK];
    int nd = dataset_dims(*d, dims);
    char dt[64];
    int rc = PONDER_OK;
    if (!ok)
        rc = ponder_error(err, PONDER_ERR_SHAPE, "%s: %s: expected %s, found %s", file, path,
                          bytes == 8 ? "a 64-bit integer" : "an integer",
                          dataset_dtype_name(*d, dt, sizeof dt));
    else if (nd != rank)
        rc = ponder_error(err, PONDER_ERR_SHAPE, "%s: %s: expected %s, found rank %d", file, path,
                          rank ? "a vector" : "a scalar", nd);
    *len = rank ? (int64_t)dims[0] : 1;
    if (rc) {
        H5Dclose(*d);
        *d = -1;
    }
    return rc;
}

static int read_ints(hid_t d, const char *file, const char *path, hid_t mtype, int64_t len,
                     void *dst, PonderError *err) {
    if (len > 0 && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) < 0)
        return ponder_error(err, PONDER_ERR_IO,
                            "%s: reading %s failed (file truncated or corrupt?)", file, path);
    return PONDER_OK;
}

static int read_rng(hid_t f, const char *file, int64_t i, Rng *dst, PonderError *err) {
    char path[64];
    snprintf(path, sizeof path, "/rng/%lld", (long long)i);
    hid_t d;
    int64_t len;
    int rc = open_int_dataset(f, file, path, 1, 8, &d, &len, err);
    if (rc == PONDER_OK && len != 4)
        rc = ponder_error(err, PONDER_ERR_SHAPE, "%s: %s: expected [4], found [%lld]", file, path,
                          (long long)len);
    if (rc == PONDER_OK) rc = read_ints(d, file, path, H5T_NATIVE_UINT64, 4, dst->s, err);
    close_d(d);
    return rc;
}

/* /rng/0 .. /rng/<n-1>: n is the group size, and every index must exist. */
static int read_rngs(hid_t f, const char *file, int64_t max, Rng **out, int64_t *n,
                     PonderError *err) {
    hid_t g = link_exists(f, "/rng") ? H5Gopen2(f, "/rng", H5P_DEFAULT) : -1;
    if (g < 0) return ponder_error(err, PONDER_ERR_SHAPE, "%s: group /rng is missing", file);
    *n = group_size(g);
    close_g(g);
    if (*n < 0) return ponder_error(err, PONDER_ERR_IO, "%s: cannot list /rng", file);
    if (*n > max)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "%s: checkpoint has %lld rng streams, room for only %lld", file,
                            (long long)*n, (long long)max);
    *out = calloc((size_t)(*n ? *n : 1), sizeof(Rng));
    if (!*out) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for rng states");
    int rc = PONDER_OK;
    for (int64_t i = 0; i < *n && rc == PONDER_OK; i++) rc = read_rng(f, file, i, &(*out)[i], err);
    return rc;
}

static int read_cursor(hid_t f, const char *file, int64_t max, int64_t **out, int64_t *n,
                       PonderError *err) {
    hid_t d;
    int rc = open_int_dataset(f, file, "/data/cursor", 1, 0, &d, n, err);
    if (rc == PONDER_OK && *n > max)
        rc = ponder_error(err, PONDER_ERR_CONFIG,
                          "%s: /data/cursor has %lld entries, room for only %lld", file,
                          (long long)*n, (long long)max);
    if (rc == PONDER_OK && !(*out = calloc((size_t)(*n ? *n : 1), sizeof(int64_t))))
        rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory for the data cursor");
    if (rc == PONDER_OK) rc = read_ints(d, file, "/data/cursor", H5T_NATIVE_INT64, *n, *out, err);
    close_d(d);
    return rc;
}

/* ---------------------------------------------------------------- load --- */

/* Everything read from the file, held until all of it has been verified. */
typedef struct LoadTmp {
    float *params, *m, *v;
    int64_t opt_step;
    Rng *rngs;
    int64_t n_rngs;
    int64_t *cursor;
    int64_t n_cursor;
    CkptMeta meta;
    char *config, *metrics;
} LoadTmp;

static void load_tmp_free(LoadTmp *t) {
    free(t->params);
    free(t->m);
    free(t->v);
    free(t->rngs);
    free(t->cursor);
    free(t->config);
    free(t->metrics);
}

static float *alloc_floats(size_t n) { return malloc((n ? n : 1) * sizeof(float)); }

static int read_optim(hid_t f, const char *file, const CkptRead *r, LoadTmp *t, PonderError *err) {
    size_t n = model_num_params(r->model);
    if (r->opt->n != n)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "ckpt_load: optimizer has %zu moments but the model %zu parameters",
                            r->opt->n, n);
    if (!link_exists(f, "/optim"))
        return ponder_error(err, PONDER_ERR_SHAPE,
                            "%s: no optimizer state (/optim is missing: a weights-only "
                            "checkpoint); load it without an optimizer to start AdamW fresh",
                            file);
    if (!(t->m = alloc_floats(n)) || !(t->v = alloc_floats(n)))
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for AdamW moments");
    int rc = read_tensor_group(f, file, "/optim/m", r->model, t->m, err);
    if (!rc) rc = read_tensor_group(f, file, "/optim/v", r->model, t->v, err);
    hid_t d = -1;
    int64_t len;
    if (!rc) rc = open_int_dataset(f, file, "/optim/step", 0, 0, &d, &len, err);
    if (!rc) rc = read_ints(d, file, "/optim/step", H5T_NATIVE_INT64, 1, &t->opt_step, err);
    close_d(d);
    return rc;
}

static int load_contents(hid_t f, const char *file, const CkptRead *r, LoadTmp *t,
                         PonderError *err) {
    ModelConfig cfg;
    int rc = read_meta(f, file, &t->meta, &cfg, err);
    if (!rc) rc = compare_config(file, &cfg, model_config(r->model), err);
    if (!rc && !(t->params = alloc_floats(model_num_params(r->model))))
        rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory for checkpoint parameters");
    if (!rc) rc = read_tensor_group(f, file, "/model", r->model, t->params, err);
    if (!rc && r->opt) rc = read_optim(f, file, r, t, err);
    if (!rc && r->rngs) rc = read_rngs(f, file, r->max_rngs, &t->rngs, &t->n_rngs, err);
    if (!rc && r->data_cursor)
        rc = read_cursor(f, file, r->max_cursor, &t->cursor, &t->n_cursor, err);
    if (!rc) rc = read_string_dataset(f, file, "/config", &t->config, err);
    if (!rc) rc = read_string_dataset(f, file, "/metrics", &t->metrics, err);
    return rc;
}

/* Only reached once everything is verified, so it cannot fail halfway. */
static void commit(CkptRead *r, LoadTmp *t) {
    memcpy(model_params(r->model), t->params, model_num_params(r->model) * sizeof(float));
    model_params_upload(r->model); /* a device model keeps a host copy; push it */
    if (r->opt && r->opt->ops && r->opt->ops->device) {
        r->opt->ops->upload(r->opt->m, t->m, r->opt->n * sizeof(float));
        r->opt->ops->upload(r->opt->v, t->v, r->opt->n * sizeof(float));
    } else if (r->opt) {
        memcpy(r->opt->m, t->m, r->opt->n * sizeof(float));
        memcpy(r->opt->v, t->v, r->opt->n * sizeof(float));
        r->opt->step = t->opt_step;
    }
    if (r->rngs) memcpy(r->rngs, t->rngs, (size_t)t->n_rngs * sizeof(Rng));
    r->n_rngs = r->rngs ? t->n_rngs : 0;
    if (r->data_cursor) memcpy(r->data_cursor, t->cursor, (size_t)t->n_cursor * sizeof(int64_t));
    r->n_cursor = r->data_cursor ? t->n_cursor : 0;
    r->meta = t->meta;
    r->config_yaml = t->config;
    r->metrics_jsonl = t->metrics;
    t->config = t->metrics = NULL; /* ownership passed to the caller */
}

static int load_impl(const char *path, CkptRead *r, PonderError *err) {
    if (!r || !r->model)
        return ponder_error(err, PONDER_ERR_CONFIG, "ckpt_load: no model to load into");
    hid_t f;
    int rc = open_checkpoint(path, &f, err);
    if (rc) return rc;
    LoadTmp t = {0};
    rc = load_contents(f, path, r, &t, err);
    H5Fclose(f);
    if (rc == PONDER_OK) commit(r, &t);
    load_tmp_free(&t);
    return rc;
}

int ckpt_load(const char *path, CkptRead *r, PonderError *err) {
    H5Quiet q = h5_quiet();
    int rc = load_impl(path, r, err);
    h5_restore(q);
    return rc;
}

static int read_config_impl(const char *path, ModelConfig *out, PonderError *err) {
    hid_t f;
    int rc = open_checkpoint(path, &f, err);
    if (rc) return rc;
    hid_t g = open_meta(f, path, err);
    int64_t version;
    rc = g < 0 ? PONDER_ERR_SHAPE : check_version(g, path, &version, err);
    ModelConfig c;
    if (!rc) rc = read_model_config(g, path, &c, err);
    if (!rc) *out = c;
    close_g(g);
    H5Fclose(f);
    return rc;
}

int ckpt_read_model_config(const char *path, ModelConfig *out, PonderError *err) {
    H5Quiet q = h5_quiet();
    int rc = read_config_impl(path, out, err);
    h5_restore(q);
    return rc;
}

/* ------------------------------------------------------------- files ---- */

int ckpt_path_for_step(const char *dir, int64_t step, char *out, size_t n) {
    if (step < 0 || !out || n == 0) return PONDER_ERR_CONFIG;
    size_t len = strlen(dir);
    const char *sep = (len && dir[len - 1] == '/') ? "" : "/";
    int w = snprintf(out, n, "%s%sstep_%08lld.h5", dir, sep, (long long)step);
    return (w < 0 || (size_t)w >= n) ? PONDER_ERR_CONFIG : PONDER_OK;
}

/* step_<digits>.h5 exactly; anything else (step_*.h5.tmp, notes) is not ours. */
static bool parse_step_name(const char *name, int64_t *step) {
    if (strncmp(name, "step_", 5) != 0) return false;
    const char *p = name + 5, *q = p;
    while (*q >= '0' && *q <= '9') q++;
    if (q == p || q - p > 18 || strcmp(q, ".h5") != 0) return false; /* 18 digits fit int64 */
    *step = strtoll(p, NULL, 10);
    return true;
}

typedef struct StepFile {
    int64_t step;
    char name[256];
} StepFile;

static int cmp_step_desc(const void *a, const void *b) {
    int64_t x = ((const StepFile *)a)->step, y = ((const StepFile *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

/* The checkpoint files in dir, highest step first. */
static int list_steps(const char *dir, StepFile **out, size_t *n, PonderError *err) {
    *out = NULL;
    *n = 0;
    DIR *d = opendir(dir);
    if (!d)
        return ponder_error(err, PONDER_ERR_IO, "cannot open checkpoint directory '%s': %s", dir,
                            strerror(errno));
    size_t cap = 0;
    int rc = PONDER_OK;
    struct dirent *e;
    while ((e = readdir(d)) && rc == PONDER_OK) {
        int64_t step;
        if (!parse_step_name(e->d_name, &step)) continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            StepFile *grown = realloc(*out, cap * sizeof **out);
            if (!grown) {
                rc = ponder_error(err, PONDER_ERR_NOMEM, "out of memory listing '%s'", dir);
                break;
            }
            *out = grown;
        }
        (*out)[*n].step = step;
        snprintf((*out)[*n].name, sizeof(*out)[*n].name, "%s", e->d_name);
        (*n)++;
    }
    closedir(d);
    if (rc == PONDER_OK && *n) qsort(*out, *n, sizeof **out, cmp_step_desc);
    return rc;
}

static int join_path(const char *dir, const char *name, char *out, size_t n, PonderError *err) {
    size_t len = strlen(dir);
    const char *sep = (len && dir[len - 1] == '/') ? "" : "/";
    int w = snprintf(out, n, "%s%s%s", dir, sep, name);
    if (w < 0 || (size_t)w >= n)
        return ponder_error(err, PONDER_ERR_CONFIG, "path %s%s%s does not fit in %zu bytes", dir,
                            sep, name, n);
    return PONDER_OK;
}

int ckpt_find_latest(const char *dir, char *out, size_t n, PonderError *err) {
    StepFile *files;
    size_t count;
    int rc = list_steps(dir, &files, &count, err);
    if (rc == PONDER_OK && count == 0)
        rc = ponder_error(err, PONDER_ERR_IO, "no checkpoints (step_*.h5) in '%s'", dir);
    if (rc == PONDER_OK) rc = join_path(dir, files[0].name, out, n, err);
    free(files);
    return rc;
}

int ckpt_prune(const char *dir, int64_t keep_last, PonderError *err) {
    if (keep_last < 1)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "ckpt_prune: keep_last must be >= 1, found %lld (refusing to delete "
                            "every checkpoint)",
                            (long long)keep_last);
    StepFile *files;
    size_t count;
    int rc = list_steps(dir, &files, &count, err);
    for (size_t i = (size_t)keep_last; rc == PONDER_OK && i < count; i++) {
        char path[PATH_MAX_LEN];
        rc = join_path(dir, files[i].name, path, sizeof path, err);
        if (rc == PONDER_OK && unlink(path) != 0 && errno != ENOENT) /* ENOENT: pruned by another */
            rc = ponder_error(err, PONDER_ERR_IO, "cannot delete old checkpoint %s: %s", path,
                              strerror(errno));
    }
    free(files);
    return rc;
}

/* ------------------------------------------------------------ inspect --- */

/* L2 norm of a numeric dataset, read in blocks of rows so inspecting a large
 * embedding needs no full-size buffer. NAN when unreadable. */
static double dataset_l2(hid_t d) {
    hsize_t dims[H5S_MAX_RANK], start[H5S_MAX_RANK] = {0}, cnt[H5S_MAX_RANK];
    int nd = dataset_dims(d, dims);
    if (nd < 0) return NAN;
    if (nd == 0) dims[0] = 1; /* a scalar reads as one row of one */
    hsize_t row = 1;
    for (int i = 1; i < nd; i++) row *= dims[i];
    if (row == 0 || dims[0] == 0) return 0.0;
    hsize_t block = row >= (1u << 20) ? 1 : (1u << 20) / row;
    double *buf = malloc((size_t)(block * row) * sizeof(double)), sum = 0.0;
    hid_t fs = H5Dget_space(d);
    bool ok = buf && fs >= 0;
    for (hsize_t r0 = 0; ok && r0 < dims[0]; r0 += block) {
        hsize_t nr = dims[0] - r0 < block ? dims[0] - r0 : block, nm = nr * row;
        for (int i = 0; i < nd; i++) cnt[i] = i ? dims[i] : nr;
        start[0] = r0;
        hid_t ms = H5Screate_simple(1, &nm, NULL);
        if (nd > 0) ok = H5Sselect_hyperslab(fs, H5S_SELECT_SET, start, NULL, cnt, NULL) >= 0;
        ok = ok && ms >= 0 && H5Dread(d, H5T_NATIVE_DOUBLE, ms, fs, H5P_DEFAULT, buf) >= 0;
        for (hsize_t i = 0; ok && i < nm; i++) sum += buf[i] * buf[i];
        close_s(ms);
    }
    close_s(fs);
    free(buf);
    return ok ? sqrt(sum) : NAN;
}

static void inspect_tensor(hid_t g, const char *name, FILE *out, int64_t *values) {
    hid_t d = H5Oexists_by_name(g, name, H5P_DEFAULT) > 0 ? H5Dopen2(g, name, H5P_DEFAULT) : -1;
    if (d < 0) {
        fprintf(out, "  %-48s (not a dataset)\n", name);
        return;
    }
    hsize_t dims[H5S_MAX_RANK];
    char shape[64], dt[64];
    int nd = dataset_dims(d, dims);
    hid_t t = H5Dget_type(d);
    H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
    close_t(t);
    int64_t numel = 1;
    for (int i = 0; i < nd; i++) numel *= (int64_t)dims[i];
    *values += numel;
    fprintf(out, "  %-48s %-12s %-8s", name, shape_str(nd < 0 ? 0 : nd, dims, shape, sizeof shape),
            dataset_dtype_name(d, dt, sizeof dt));
    if (cls == H5T_FLOAT || cls == H5T_INTEGER)
        fprintf(out, " l2=%.6g\n", dataset_l2(d));
    else
        fprintf(out, " l2=-\n");
    close_d(d);
}

static void inspect_group(hid_t f, const char *group, FILE *out) {
    hid_t g = link_exists(f, group) ? H5Gopen2(f, group, H5P_DEFAULT) : -1;
    if (g < 0) {
        fprintf(out, "%s: (missing)\n", group);
        return;
    }
    int64_t n = group_size(g), values = 0;
    bool crt = tracks_creation_order(g);
    fprintf(out, "%s: %lld tensors\n", group, (long long)n);
    for (int64_t i = 0; i < n; i++) {
        char name[256];
        link_name(g, crt, (hsize_t)i, name, sizeof name);
        inspect_tensor(g, name, out, &values);
    }
    fprintf(out, "%s: %lld values in all\n", group, (long long)values);
    close_g(g);
}

static void inspect_meta(hid_t f, const char *file, FILE *out) {
    PonderError e = {0};
    hid_t g = open_meta(f, file, &e);
    if (g < 0) {
        fprintf(out, "meta: %s\n", e.msg);
        return;
    }
    int64_t version = 0;
    CkptMeta m = {0};
    ModelConfig c;
    if (read_attr_num(g, file, "format_version", true, H5T_NATIVE_INT64, &version, &e) == 0)
        fprintf(out, "format version: %lld%s\n", (long long)version,
                version == CKPT_FORMAT_VERSION ? "" : " (not supported by this build)");
    else
        fprintf(out, "format version: %s\n", e.msg);
    if (read_meta_progress(g, file, &m, &e) == 0)
        fprintf(out, "stage: '%s' (index %lld), step %lld\n", m.stage, (long long)m.stage_index,
                (long long)m.step);
    else
        fprintf(out, "stage/step: %s\n", e.msg);
    if (read_model_config(g, file, &c, &e) == 0) {
        fprintf(out, "model: arch=%s", arch_name(c.arch));
        for (size_t i = 0; i < N_CFG_FIELDS; i++) {
            char v[64];
            field_str(&c, &CFG_FIELDS[i], v, sizeof v, false);
            fprintf(out, " %s=%s", CFG_FIELDS[i].name, v);
        }
        fprintf(out, "\n");
    } else
        fprintf(out, "model: %s\n", e.msg);
    close_g(g);
}

static void inspect_optim(hid_t f, const char *file, FILE *out) {
    if (!link_exists(f, "/optim")) {
        fprintf(out, "optimizer: none (weights-only checkpoint)\n");
        return;
    }
    PonderError e = {0};
    hid_t d;
    int64_t len, step = 0;
    if (open_int_dataset(f, file, "/optim/step", 0, 0, &d, &len, &e) == 0 &&
        read_ints(d, file, "/optim/step", H5T_NATIVE_INT64, 1, &step, &e) == 0)
        fprintf(out, "optimizer step: %lld\n", (long long)step);
    else
        fprintf(out, "optimizer step: %s\n", e.msg);
    close_d(d);
    inspect_group(f, "/optim/m", out);
    inspect_group(f, "/optim/v", out);
}

static void inspect_rng_cursor(hid_t f, const char *file, FILE *out) {
    hid_t g = link_exists(f, "/rng") ? H5Gopen2(f, "/rng", H5P_DEFAULT) : -1;
    if (g >= 0)
        fprintf(out, "rng streams: %lld\n", (long long)group_size(g));
    else
        fprintf(out, "rng streams: (missing /rng)\n");
    close_g(g);
    PonderError e = {0};
    hid_t d;
    int64_t n = 0, v[16];
    if (open_int_dataset(f, file, "/data/cursor", 1, 0, &d, &n, &e) != 0) {
        fprintf(out, "data cursor: %s\n", e.msg);
        return;
    }
    fprintf(out, "data cursor: %lld entries", (long long)n);
    if (n > 0 && n <= 16 && read_ints(d, file, "/data/cursor", H5T_NATIVE_INT64, n, v, &e) == 0)
        for (int64_t i = 0; i < n; i++) fprintf(out, "%s%lld", i ? ", " : " [", (long long)v[i]);
    fprintf(out, "%s\n", n > 0 && n <= 16 ? "]" : "");
    close_d(d);
}

static void inspect_text(hid_t f, const char *file, FILE *out) {
    PonderError e = {0};
    char *s = NULL;
    if (read_string_dataset(f, file, "/metrics", &s, &e) == 0) {
        size_t lines = 0, len = strlen(s);
        for (size_t i = 0; i < len; i++) lines += s[i] == '\n' || (i + 1 == len);
        fprintf(out, "metrics: %zu lines, %zu bytes\n", lines, len);
    } else
        fprintf(out, "metrics: %s\n", e.msg);
    free(s);
    s = NULL;
    if (read_string_dataset(f, file, "/config", &s, &e) == 0) {
        size_t len = strlen(s);
        fprintf(out, "config (%zu bytes):\n%s%s", len, s, len && s[len - 1] != '\n' ? "\n" : "");
    } else
        fprintf(out, "config: %s\n", e.msg);
    free(s);
}

static int inspect_impl(const char *path, FILE *out, PonderError *err) {
    hid_t f;
    int rc = open_checkpoint(path, &f, err);
    if (rc) return rc;
    fprintf(out, "checkpoint: %s\n", path);
    inspect_meta(f, path, out);
    inspect_group(f, "/model", out);
    inspect_optim(f, path, out);
    inspect_rng_cursor(f, path, out);
    inspect_text(f, path, out);
    H5Fclose(f);
    if (ferror(out)) return ponder_error(err, PONDER_ERR_IO, "writing the description failed");
    return PONDER_OK;
}

int ckpt_inspect(const char *path, FILE *out, PonderError *err) {
    H5Quiet q = h5_quiet();
    int rc = inspect_impl(path, out, err);
    h5_restore(q);
    return rc;
}

/* ------------------------------------------------------------ compare --- */

static int load_for_compare(const char *path, const ModelConfig *mc, Model **m, int64_t *step,
                            PonderError *err) {
    int rc = model_create(m, mc, err);
    if (rc) return rc;
    CkptRead rd = {.model = *m};
    rc = ckpt_load(path, &rd, err);
    free(rd.config_yaml);
    free(rd.metrics_jsonl);
    *step = rd.meta.step;
    return rc;
}

int ckpt_compare(const char *path_a, const char *path_b, CkptDiff *out, PonderError *err) {
    memset(out, 0, sizeof *out);
    ModelConfig ca, cb;
    int rc = ckpt_read_model_config(path_a, &ca, err);
    if (rc == PONDER_OK) rc = ckpt_read_model_config(path_b, &cb, err);
    if (rc) return rc;
    if (memcmp(&ca, &cb, sizeof ca) != 0)
        return ponder_error(err, PONDER_ERR_SHAPE, "%s and %s hold models of different configurations",
                            path_a, path_b);
    Model *a = NULL, *b = NULL;
    rc = load_for_compare(path_a, &ca, &a, &out->step_a, err);
    if (rc == PONDER_OK) rc = load_for_compare(path_b, &cb, &b, &out->step_b, err);
    if (rc == PONDER_OK) {
        size_t n;
        const ModelTensor *ts = model_tensors(a, &n);
        const float *pa = model_params(a), *pb = model_params(b);
        for (size_t i = 0; i < n; i++) {
            double scale = 0.0, diff = 0.0;
            for (size_t k = ts[i].offset; k < ts[i].offset + ts[i].numel; k++) {
                double d = fabs((double)pa[k] - (double)pb[k]);
                scale = fmax(scale, fabs((double)pa[k]));
                diff = fmax(diff, d);
                out->differing += memcmp(&pa[k], &pb[k], sizeof(float)) != 0;
            }
            double rel = scale > 0 ? diff / scale : diff;
            out->max_abs = fmax(out->max_abs, diff);
            if (rel > out->worst_rel || i == 0) {
                out->worst_rel = rel;
                snprintf(out->worst_tensor, sizeof out->worst_tensor, "%s", ts[i].name);
            }
        }
        out->params = (int64_t)model_num_params(a);
    }
    model_free(a);
    model_free(b);
    return rc;
}
