/* model/model.c — parameters, training forward/backward and configuration of
 * the transformer (architectures llama and gpt2). KV-cache inference is in
 * model/model_infer.c; both run the ops of model/ops.h only.
 *
 * Parameter layout: one buffer, tensors stacked by type (all layers' q/k/v,
 * then all layers' o_proj, ...), each layer's q, k and v adjacent so one
 * matmul produces a packed qkv row, and llama's gate and up adjacent so one
 * matmul produces [gate | up]. Named views follow Hugging Face names; GPT-2
 * weights are stored [out, in], the transpose of HF's Conv1D storage. */
#include "model/model_internal.h"

#include <math.h>   /* sqrt, pow, cos, sin */
#include <stdio.h>  /* snprintf */
#include <stdlib.h> /* calloc, free */
#include <string.h> /* strcmp, memset */

#include "util/rng.h" /* Rng */

/* ------------------------------------------------------------- config ---- */

ModelConfig model_config_default(void) {
    ModelConfig c = {.arch = MODEL_ARCH_LLAMA,
                     .vocab_size = 64,
                     .d_model = 128,
                     .n_layer = 4,
                     .n_head = 4,
                     .n_kv_head = 4,
                     .d_ff = 352,
                     .max_seq_len = 256,
                     .norm_eps = 1e-5f,
                     .rope_theta = 10000.0f,
                     .init_std = 0.02f,
                     .tie_embeddings = true,
                     .qkv_bias = false,
                     .scalar_head = false};
    return c;
}

int model_config_validate(const ModelConfig *c, PonderError *err) {
    if (c->arch != MODEL_ARCH_LLAMA && c->arch != MODEL_ARCH_GPT2)
        return ponder_error(err, PONDER_ERR_CONFIG, "model.arch: expected llama or gpt2");
    struct {
        const char *name;
        int64_t v;
    } pos[] = {{"vocab_size", c->vocab_size}, {"d_model", c->d_model},
               {"n_layer", c->n_layer},       {"n_head", c->n_head},
               {"n_kv_head", c->n_kv_head},   {"d_ff", c->d_ff},
               {"max_seq_len", c->max_seq_len}};
    for (size_t i = 0; i < sizeof pos / sizeof pos[0]; i++)
        if (pos[i].v <= 0)
            return ponder_error(err, PONDER_ERR_CONFIG, "model.%s: must be > 0, found %lld",
                                pos[i].name, (long long)pos[i].v);
    if (c->d_model % c->n_head)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model.n_head (%lld) must divide model.d_model (%lld)",
                            (long long)c->n_head, (long long)c->d_model);
    if (c->n_head % c->n_kv_head)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model.n_kv_head (%lld) must divide model.n_head (%lld)",
                            (long long)c->n_kv_head, (long long)c->n_head);
    if (c->arch == MODEL_ARCH_GPT2 && c->n_kv_head != c->n_head)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model.n_kv_head (%lld) must equal model.n_head (%lld) for gpt2",
                            (long long)c->n_kv_head, (long long)c->n_head);
    if (c->arch == MODEL_ARCH_LLAMA && (c->d_model / c->n_head) % 2)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model: head size d_model/n_head = %lld must be even for RoPE",
                            (long long)(c->d_model / c->n_head));
    if (!(c->norm_eps > 0.0f))
        return ponder_error(err, PONDER_ERR_CONFIG, "model.norm_eps: must be > 0");
    if (c->arch == MODEL_ARCH_LLAMA && !(c->rope_theta > 0.0f))
        return ponder_error(err, PONDER_ERR_CONFIG, "model.rope_theta: must be > 0");
    return PONDER_OK;
}

/* ---------------------------------------------------------- parameters --- */

static int add_tensor(Model *m, size_t *offset, const char *name, int ndim, int64_t d0,
                      int64_t d1, ModelTensorKind kind) {
    ModelTensor *t = &m->tensors[m->n_tensors++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim == 2 ? d1 : 1;
    t->numel = (size_t)(d0 * t->shape[1]);
    t->offset = *offset;
    t->kind = kind;
    *offset += t->numel;
    return 0;
}

/* Builds the tensor table (or, with m->tensors == NULL, counts entries) and
 * records each stacked block's offset in m->lay. */
static size_t build_layout(Model *m) {
    const ModelConfig *c = &m->cfg;
    const int llama = c->arch == MODEL_ARCH_LLAMA;
    const int64_t C = c->d_model, L = c->n_layer, V = c->vocab_size, F = c->d_ff;
    const int64_t hd = C / c->n_head, QH = c->n_head * hd, KH = c->n_kv_head * hd;
    const int has_qkv_bias = !llama || c->qkv_bias;
    char name[MODEL_TENSOR_NAME_MAX];
    size_t off = 0;
    ParamLayout *ly = &m->lay;
    m->n_tensors = 0;
#define NAME(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
    ly->wte = off;
    add_tensor(m, &off, llama ? "model.embed_tokens.weight" : "transformer.wte.weight", 2, V, C,
               MODEL_TENSOR_EMBEDDING);
    if (!llama) {
        ly->wpe = off;
        add_tensor(m, &off, "transformer.wpe.weight", 2, c->max_seq_len, C,
                   MODEL_TENSOR_EMBEDDING);
    }
    ly->ln1_w = off;
    for (int64_t l = 0; l < L; l++)
        add_tensor(m, &off,
                   llama ? NAME("model.layers.%lld.input_layernorm.weight", (long long)l)
                         : NAME("transformer.h.%lld.ln_1.weight", (long long)l),
                   1, C, 0, MODEL_TENSOR_NORM);
    if (!llama) {
        ly->ln1_b = off;
        for (int64_t l = 0; l < L; l++)
            add_tensor(m, &off, NAME("transformer.h.%lld.ln_1.bias", (long long)l), 1, C, 0,
                       MODEL_TENSOR_BIAS);
    }
    ly->qkv_w = off;
    for (int64_t l = 0; l < L; l++) {
        if (llama) {
            add_tensor(m, &off, NAME("model.layers.%lld.self_attn.q_proj.weight", (long long)l),
                       2, QH, C, MODEL_TENSOR_WEIGHT);
            add_tensor(m, &off, NAME("model.layers.%lld.self_attn.k_proj.weight", (long long)l),
                       2, KH, C, MODEL_TENSOR_WEIGHT);
            add_tensor(m, &off, NAME("model.layers.%lld.self_attn.v_proj.weight", (long long)l),
                       2, KH, C, MODEL_TENSOR_WEIGHT);
        } else {
            add_tensor(m, &off, NAME("transformer.h.%lld.attn.c_attn.weight", (long long)l), 2,
                       3 * C, C, MODEL_TENSOR_WEIGHT);
        }
    }
    if (has_qkv_bias) {
        ly->qkv_b = off;
        for (int64_t l = 0; l < L; l++) {
            if (llama) {
                add_tensor(m, &off, NAME("model.layers.%lld.self_attn.q_proj.bias", (long long)l),
                           1, QH, 0, MODEL_TENSOR_BIAS);
                add_tensor(m, &off, NAME("model.layers.%lld.self_attn.k_proj.bias", (long long)l),
                           1, KH, 0, MODEL_TENSOR_BIAS);
                add_tensor(m, &off, NAME("model.layers.%lld.self_attn.v_proj.bias", (long long)l),
                           1, KH, 0, MODEL_TENSOR_BIAS);
            } else {
                add_tensor(m, &off, NAME("transformer.h.%lld.attn.c_attn.bias", (long long)l), 1,
                           3 * C, 0, MODEL_TENSOR_BIAS);
            }
        }
    }
    ly->o_w = off;
    for (int64_t l = 0; l < L; l++)
        add_tensor(m, &off,
                   llama ? NAME("model.layers.%lld.self_attn.o_proj.weight", (long long)l)
                         : NAME("transformer.h.%lld.attn.c_proj.weight", (long long)l),
                   2, C, QH, MODEL_TENSOR_WEIGHT);
    if (!llama) {
        ly->o_b = off;
        for (int64_t l = 0; l < L; l++)
            add_tensor(m, &off, NAME("transformer.h.%lld.attn.c_proj.bias", (long long)l), 1, C,
                       0, MODEL_TENSOR_BIAS);
    }
    ly->ln2_w = off;
    for (int64_t l = 0; l < L; l++)
        add_tensor(m, &off,
                   llama ? NAME("model.layers.%lld.post_attention_layernorm.weight", (long long)l)
                         : NAME("transformer.h.%lld.ln_2.weight", (long long)l),
                   1, C, 0, MODEL_TENSOR_NORM);
    if (!llama) {
        ly->ln2_b = off;
        for (int64_t l = 0; l < L; l++)
            add_tensor(m, &off, NAME("transformer.h.%lld.ln_2.bias", (long long)l), 1, C, 0,
                       MODEL_TENSOR_BIAS);
    }
    ly->fc_w = off;
    for (int64_t l = 0; l < L; l++) {
        if (llama) {
            add_tensor(m, &off, NAME("model.layers.%lld.mlp.gate_proj.weight", (long long)l), 2,
                       F, C, MODEL_TENSOR_WEIGHT);
            add_tensor(m, &off, NAME("model.layers.%lld.mlp.up_proj.weight", (long long)l), 2, F,
                       C, MODEL_TENSOR_WEIGHT);
        } else {
            add_tensor(m, &off, NAME("transformer.h.%lld.mlp.c_fc.weight", (long long)l), 2, F,
                       C, MODEL_TENSOR_WEIGHT);
        }
    }
    if (!llama) {
        ly->fc_b = off;
        for (int64_t l = 0; l < L; l++)
            add_tensor(m, &off, NAME("transformer.h.%lld.mlp.c_fc.bias", (long long)l), 1, F, 0,
                       MODEL_TENSOR_BIAS);
    }
    ly->proj_w = off;
    for (int64_t l = 0; l < L; l++)
        add_tensor(m, &off,
                   llama ? NAME("model.layers.%lld.mlp.down_proj.weight", (long long)l)
                         : NAME("transformer.h.%lld.mlp.c_proj.weight", (long long)l),
                   2, C, F, MODEL_TENSOR_WEIGHT);
    if (!llama) {
        ly->proj_b = off;
        for (int64_t l = 0; l < L; l++)
            add_tensor(m, &off, NAME("transformer.h.%lld.mlp.c_proj.bias", (long long)l), 1, C,
                       0, MODEL_TENSOR_BIAS);
    }
    ly->lnf_w = off;
    add_tensor(m, &off, llama ? "model.norm.weight" : "transformer.ln_f.weight", 1, C, 0,
               MODEL_TENSOR_NORM);
    if (!llama) {
        ly->lnf_b = off;
        add_tensor(m, &off, "transformer.ln_f.bias", 1, C, 0, MODEL_TENSOR_BIAS);
    }
    ly->lm = ly->wte;
    if (!c->tie_embeddings) {
        ly->lm = off;
        add_tensor(m, &off, "lm_head.weight", 2, V, C, MODEL_TENSOR_WEIGHT);
    }
    if (c->scalar_head) {
        ly->score_w = off;
        add_tensor(m, &off, "score.weight", 2, 1, C, MODEL_TENSOR_WEIGHT);
        ly->score_b = off;
        add_tensor(m, &off, "score.bias", 1, 1, 0, MODEL_TENSOR_BIAS);
    }
#undef NAME
    return off;
}

static size_t max_tensor_count(const ModelConfig *c) { return (size_t)(16 * c->n_layer + 16); }

/* Pointers into a buffer (params or grads) for one layer, from the layout. */
LayerView model_layer_view(const Model *m, float *base, int64_t l) {
    const ModelConfig *c = &m->cfg;
    const ParamLayout *ly = &m->lay;
    const int llama = c->arch == MODEL_ARCH_LLAMA;
    const int64_t C = c->d_model, F = c->d_ff, QKV = m->qkv_dim, FC = llama ? 2 * F : F;
    LayerView v = {0};
    v.ln1_w = base + ly->ln1_w + l * C;
    v.ln1_b = llama ? NULL : base + ly->ln1_b + l * C;
    v.qkv_w = base + ly->qkv_w + l * QKV * C;
    v.qkv_b = (!llama || c->qkv_bias) ? base + ly->qkv_b + l * QKV : NULL;
    v.o_w = base + ly->o_w + l * C * m->attn_dim;
    v.o_b = llama ? NULL : base + ly->o_b + l * C;
    v.ln2_w = base + ly->ln2_w + l * C;
    v.ln2_b = llama ? NULL : base + ly->ln2_b + l * C;
    v.fc_w = base + ly->fc_w + l * FC * C;
    v.fc_b = llama ? NULL : base + ly->fc_b + l * F;
    v.proj_w = base + ly->proj_w + l * C * F;
    v.proj_b = llama ? NULL : base + ly->proj_b + l * C;
    return v;
}

/* Fills the table in host memory (rope itself on a host backend, a temporary
 * that is uploaded on a device backend). Returns nonzero when out of memory. */
static int build_rope_table(Model *m) {
    const ModelConfig *c = &m->cfg;
    const int64_t hd = c->d_model / c->n_head, half = hd / 2;
    const size_t bytes = (size_t)(c->max_seq_len * hd) * sizeof(float);
    float *rope = m->ops->device ? malloc(bytes) : m->rope;
    if (!rope) return 1;
    for (int64_t p = 0; p < c->max_seq_len; p++)
        for (int64_t i = 0; i < half; i++) {
            double freq = pow((double)c->rope_theta, -2.0 * (double)i / (double)hd);
            rope[(p * half + i) * 2] = (float)cos((double)p * freq);
            rope[(p * half + i) * 2 + 1] = (float)sin((double)p * freq);
        }
    if (m->ops->device) {
        m->ops->upload(m->rope, rope, bytes);
        free(rope);
    }
    return 0;
}

int model_create(Model **out, const ModelConfig *cfg, PonderError *err) {
    return model_create_on(out, cfg, ops_cpu(), err);
}

int model_create_on(Model **out, const ModelConfig *cfg, const ModelOps *ops, PonderError *err) {
    *out = NULL;
    if (!ops)
        return ponder_error(err, PONDER_ERR_CONFIG,
                            "model: no backend (the CUDA backend is unavailable: %s)",
                            ops_cuda_status());
    if (model_config_validate(cfg, err)) return err ? err->code : PONDER_ERR_CONFIG;
    Model *m = calloc(1, sizeof *m);
    if (!m) return ponder_error(err, PONDER_ERR_NOMEM, "out of memory creating the model");
    m->cfg = *cfg;
    m->ops = ops;
    m->share_prefixes = 1;
    const int64_t hd = cfg->d_model / cfg->n_head;
    m->head_dim = hd;
    m->attn_dim = cfg->n_head * hd;
    m->qkv_dim = (cfg->n_head + 2 * cfg->n_kv_head) * hd;
    m->fc_dim = cfg->arch == MODEL_ARCH_LLAMA ? 2 * cfg->d_ff : cfg->d_ff;
    m->tensors = calloc(max_tensor_count(cfg), sizeof *m->tensors);
    if (!m->tensors) {
        model_free(m);
        return ponder_error(err, PONDER_ERR_NOMEM, "out of memory for the tensor table");
    }
    m->num_params = build_layout(m);
    m->params = m->ops->alloc(m->num_params * sizeof(float));
    m->grads = m->ops->alloc(m->num_params * sizeof(float));
    if (cfg->arch == MODEL_ARCH_LLAMA)
        m->rope = m->ops->alloc((size_t)(cfg->max_seq_len * hd) * sizeof(float));
    if (ops->device) {
        m->host_params = calloc(m->num_params ? m->num_params : 1, sizeof(float));
        m->host_grads = calloc(m->num_params ? m->num_params : 1, sizeof(float));
    }
    if (!m->params || !m->grads || (cfg->arch == MODEL_ARCH_LLAMA && !m->rope) ||
        (ops->device && (!m->host_params || !m->host_grads)) || (m->rope && build_rope_table(m))) {
        size_t mb = m->num_params * 8 / (1024 * 1024);
        model_free(m);
        return ponder_error(err, PONDER_ERR_NOMEM,
                            "out of memory for parameters and gradients (%zu MiB, backend %s)",
                            mb, ops->name);
    }
    *out = m;
    return PONDER_OK;
}

void model_free(Model *m) {
    if (!m) return;
    model_free_activations(m);
    if (m->ops) {
        m->ops->free(m->params);
        m->ops->free(m->grads);
        m->ops->free(m->rope);
    }
    free(m->host_params);
    free(m->host_grads);
    free(m->tensors);
    free(m);
}

const ModelConfig *model_config(const Model *m) { return &m->cfg; }
size_t model_num_params(const Model *m) { return m->num_params; }
float *model_params(Model *m) {
    if (!m->ops->device) return m->params;
    m->ops->download(m->host_params, m->params, m->num_params * sizeof(float));
    return m->host_params;
}

float *model_grads(Model *m) {
    if (!m->ops->device) return m->grads;
    m->ops->download(m->host_grads, m->grads, m->num_params * sizeof(float));
    return m->host_grads;
}

float *model_grads_backend(Model *m) { return m->grads; }

void model_params_upload(Model *m) {
    if (m->ops->device)
        m->ops->upload(m->params, m->host_params, m->num_params * sizeof(float));
}

void model_grads_upload(Model *m) {
    if (m->ops->device)
        m->ops->upload(m->grads, m->host_grads, m->num_params * sizeof(float));
}

const char *model_backend(const Model *m) { return m->ops->name; }
const struct ModelOps *model_ops(const Model *m) { return m->ops; }

const ModelTensor *model_tensors(const Model *m, size_t *count) {
    *count = m->n_tensors;
    return m->tensors;
}

const ModelTensor *model_find_tensor(const Model *m, const char *name) {
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, name) == 0) return &m->tensors[i];
    return NULL;
}

static int is_residual_projection(const char *name) {
    return strstr(name, "o_proj") || strstr(name, "down_proj") || strstr(name, "attn.c_proj") ||
           strstr(name, "mlp.c_proj");
}

void model_init_weights(Model *m, uint64_t seed) {
    Rng rng = rng_from_seed(seed);
    const double std = m->cfg.init_std;
    const double resid_std = std / sqrt(2.0 * (double)m->cfg.n_layer);
    for (size_t i = 0; i < m->n_tensors; i++) {
        const ModelTensor *t = &m->tensors[i];
        float *p = (m->ops->device ? m->host_params : m->params) + t->offset;
        if (t->kind == MODEL_TENSOR_NORM) {
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
        } else if (t->kind == MODEL_TENSOR_BIAS) {
            memset(p, 0, t->numel * sizeof(float));
        } else {
            double s = is_residual_projection(t->name) ? resid_std : std;
            if (strcmp(t->name, "transformer.wpe.weight") == 0) s = 0.01; /* as GPT-2 */
            for (size_t j = 0; j < t->numel; j++) p[j] = (float)(s * rng_normal(&rng));
        }
    }
    model_params_upload(m);
}

void model_zero_grad(Model *m) { m->ops->zero(m->grads, m->num_params * sizeof(float)); }

void model_share_prefixes(Model *m, int on) { m->share_prefixes = on != 0; }

void model_weights_frozen(Model *m, int on) {
    if (m->ops->weights_frozen) m->ops->weights_frozen(on);
}

#ifndef PONDER_HAVE_CUDA
/* This build has no CUDA backend (model/cuda is compiled only when CMake finds
 * nvcc and cuBLAS); the declarations in model/ops.h still resolve. */
const ModelOps *ops_cuda(void) { return NULL; }
int ops_cuda_choose_device(int index) {
    (void)index;
    return -1;
}
const char *ops_cuda_status(void) {
    return "this build has no CUDA backend (configure with -DPONDER_CUDA=ON on a machine with "
           "nvcc and cuBLAS)";
}
#endif
