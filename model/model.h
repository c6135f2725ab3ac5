/* model/model.h — the transformer policy: configuration, parameters, forward,
 * backward and KV-cache decoding.
 *
 * The model knows nothing of RL. It maps a [B,T] batch of tokens to per-token
 * log-probabilities of the targets and per-token entropies (and, with a scalar
 * head, per-token values), and back-propagates per-token gradients of those.
 * Parameters and gradients each live in one contiguous float buffer carved into
 * views named as Hugging Face names them, so import, export, checkpoints and
 * inspection need no mapping tables. Compute goes through a backend ops table
 * (model/ops.h); today the CPU backend. */
#ifndef PONDER_MODEL_MODEL_H
#define PONDER_MODEL_MODEL_H

#include <stdbool.h> /* bool */
#include <stddef.h>  /* size_t */
#include <stdint.h>  /* int64_t, int32_t, uint64_t */

#include "util/error.h" /* PonderError */

typedef enum { MODEL_ARCH_LLAMA = 0, MODEL_ARCH_GPT2 = 1 } ModelArch;

typedef struct ModelConfig {
    ModelArch arch;
    int64_t vocab_size;
    int64_t d_model;     /* C */
    int64_t n_layer;     /* L */
    int64_t n_head;      /* NH: query heads */
    int64_t n_kv_head;   /* key/value heads (grouped-query attention), divides n_head */
    int64_t d_ff;        /* hidden size of the MLP */
    int64_t max_seq_len; /* positions (gpt2: learned table size; llama: RoPE limit) */
    float norm_eps;      /* RMSNorm / LayerNorm epsilon */
    float rope_theta;    /* llama only */
    float init_std;      /* normal init std for weights */
    bool tie_embeddings; /* lm_head shares the token embedding */
    bool qkv_bias;       /* llama: biases on q/k/v projections (Qwen2); gpt2 always has biases */
    bool scalar_head;    /* a [C] -> 1 head on the final hidden state (value / reward) */
} ModelConfig;

/* Returns 0 when the configuration is consistent, else an error naming the field. */
int model_config_validate(const ModelConfig *cfg, PonderError *err);
/* Sensible defaults for a tiny llama; callers overwrite fields. */
ModelConfig model_config_default(void);

typedef enum {
    MODEL_TENSOR_WEIGHT = 0, /* matmul weights: decayed by AdamW by default */
    MODEL_TENSOR_BIAS = 1,
    MODEL_TENSOR_NORM = 2,
    MODEL_TENSOR_EMBEDDING = 3,
} ModelTensorKind;

#define MODEL_TENSOR_NAME_MAX 96
typedef struct ModelTensor {
    char name[MODEL_TENSOR_NAME_MAX]; /* Hugging Face name */
    int ndim;
    int64_t shape[2];
    size_t offset; /* in floats, into the parameter (and gradient) buffer */
    size_t numel;
    ModelTensorKind kind;
} ModelTensor;

/* One training/scoring batch. tokens[b,t] is the input at position t and
 * targets[b,t] the token to predict there. mask[b,t] (0/1) marks positions whose
 * outputs matter; masked-out positions produce logp = entropy = value = 0 and receive
 * no gradient. Right padding needs nothing more. start[b] (may be NULL) is the
 * index of sequence b's first real token for left-padded batches: positions
 * before it are never attended to, and position ids count from it. */
typedef struct ModelBatch {
    int64_t B, T;
    const int32_t *tokens;  /* [B,T] */
    const int32_t *targets; /* [B,T] */
    const float *mask;      /* [B,T] */
    const int32_t *start;   /* [B] or NULL */
    /* logp and entropy are those of softmax(logits / temperature), the
     * distribution a sampler at that temperature draws from; 0 means 1. */
    float temperature;
} ModelBatch;

typedef struct Model Model;
struct ModelOps; /* model/ops.h */

/* A model on the CPU backend. */
int model_create(Model **out, const ModelConfig *cfg, PonderError *err);
/* A model on the given backend (ops_cpu(), ops_cuda(), ...). Every host-facing
 * argument of the functions below stays host memory whatever the backend; a
 * device backend copies to and from the device inside. */
int model_create_on(Model **out, const ModelConfig *cfg, const struct ModelOps *ops,
                    PonderError *err);
void model_free(Model *m);

const ModelConfig *model_config(const Model *m);
size_t model_num_params(const Model *m);
/* Host views of the parameters and gradients ([num_params], contiguous, same
 * layout). On the CPU backend these are the live buffers. On a device backend
 * they are host mirrors, refreshed from the device by each call; after writing
 * parameters through model_params() call model_params_upload(). */
float *model_params(Model *m);
float *model_grads(Model *m);
/* Pushes the host mirror of model_params() to the device; no-op on the CPU. */
void model_params_upload(Model *m);
/* Pushes the host mirror of model_grads() to the device (after an all-reduce
 * on the host, say); no-op on the CPU. */
void model_grads_upload(Model *m);
/* The gradient buffer itself, in backend memory (device memory on a GPU):
 * for transports that work on it in place (NCCL). */
float *model_grads_backend(Model *m);
/* Name of the backend the model runs on ("cpu", "cuda"). */
const char *model_backend(const Model *m);
/* The ops table the model runs on (to create siblings on the same backend). */
const struct ModelOps *model_ops(const Model *m);
const ModelTensor *model_tensors(const Model *m, size_t *count);
const ModelTensor *model_find_tensor(const Model *m, const char *name);

/* Normal(0, init_std) weights (output projections scaled by 1/sqrt(2L) as GPT-2
 * does), zero biases, unit norms; deterministic in seed. */
void model_init_weights(Model *m, uint64_t seed);
void model_zero_grad(Model *m);

/* Brackets code that only reads the weights (generation, or the
 * micro-batches before one optimizer step): between
 * model_weights_frozen(m, 1) and (m, 0), on the same thread, nothing may
 * write the parameters, and the backend may reuse converted copies of them
 * (ModelOps.weights_frozen). Does nothing on backends without it. */
void model_weights_frozen(Model *m, int on);

/* Rows of a training batch whose first positions hold the same tokens,
 * targets and mask (the prompt a GRPO group's samples share, or a preference
 * pair's) compute those positions' forward and backward once, where the
 * backend supports it (ModelOps.rows_gather) and enough is saved; positions
 * no loss can read (after a row's last mask-1 position, mask-0 ones before
 * its start) are then not computed at all. The outputs do not change (0 at
 * mask-0 positions, as always); the weights' gradients are the same sums
 * taken in another order. On by default; off computes every row in full. */
void model_share_prefixes(Model *m, int on);
/* Positions the last training forward computed: B*T of its batch, or fewer
 * where rows shared prefixes; 0 before any. */
int64_t model_last_rows(const Model *m);

/* Forward over a batch. logp and entropy are [B,T] (entropy may be NULL when not
 * needed); values is [B,T] and required iff the config has a scalar head.
 * Activations needed by model_backward are kept until the next forward. */
int model_forward(Model *m, const ModelBatch *batch, float *logp, float *entropy,
                  float *values, PonderError *err);

/* Accumulates into model_grads() the gradient of sum_bt (dlogp*logp +
 * dentropy*entropy + dvalues*values) for the batch of the last forward.
 * Any of dlogp, dentropy and dvalues may be NULL (treated as zero); with both
 * dlogp and dentropy NULL the LM head's backward is skipped. */
int model_backward(Model *m, const float *dlogp, const float *dentropy,
                   const float *dvalues, PonderError *err);

/* ------------------------------------------------- backend-resident I/O --
 * The same forward and backward with the per-token arrays left in (and taken
 * from) backend memory, for losses computed on the backend (model/ops.h
 * policy_loss): on a device nothing per-token crosses to the host. The
 * arrays are the model's own [B,T] buffers, valid until the next forward.
 * Differences from the host API, both about mask-0 positions: values are
 * NOT zeroed there (nothing downstream may read them), and dvalues must be
 * 0 there (the model does not mask them). logp and entropy are 0 at mask-0
 * positions as on the host API. entropy is computed when want_entropy is
 * set (else out->entropy is NULL); values iff the model has a scalar head. */
typedef struct ModelOutputs {
    const float *logp, *entropy, *values; /* backend memory, [B,T] */
} ModelOutputs;

int model_forward_backend(Model *m, const ModelBatch *batch, int want_entropy, ModelOutputs *out,
                          PonderError *err);
/* model_backward with dlogp / dentropy / dvalues in backend memory (any may
 * be NULL, as there). */
int model_backward_backend(Model *m, const float *dlogp, const float *dentropy,
                           const float *dvalues, PonderError *err);

/* Full logits [B,T,V] for the batch (tests and tools only: allocates B*T*V). */
int model_forward_logits(Model *m, const ModelBatch *batch, float *logits, PonderError *err);

/* ---------------------------------------------------------------- KV cache --
 * A cache has n_slots independent sequences of at most max_len positions. A
 * sequence is prefilled in a slot, may be copied to other slots (a group's
 * samples share their prompt), then extended one token per slot per step. */
typedef struct ModelKVCache ModelKVCache;

int model_kv_create(ModelKVCache **out, const Model *m, int64_t n_slots, int64_t max_len,
                    PonderError *err);
void model_kv_free(ModelKVCache *kv);
int64_t model_kv_length(const ModelKVCache *kv, int64_t slot);
int64_t model_kv_slots(const ModelKVCache *kv);
int64_t model_kv_max_len(const ModelKVCache *kv);
/* Bytes per cached key or value: 4 (fp32), or 2 where the backend keeps
 * bf16 caches (ModelOps.attention_cached_bf16: model.precision bf16 on the
 * CPU). */
int64_t model_kv_value_bytes(const ModelKVCache *kv);
void model_kv_reset(ModelKVCache *kv, int64_t slot);
/* dst holds what src holds (its own copy); src unchanged. */
void model_kv_copy_slot(ModelKVCache *kv, int64_t dst, int64_t src);
/* Whether this model's caches can share prefixes (model_kv_share_prefix):
 * a host backend whose decode reads them (ModelOps.attention_decode for the
 * cache's format). */
int model_kv_shares_prefixes(const Model *m);
/* dst continues the sequence in src without a copy: a decode step reads
 * dst's first model_kv_length(src) positions from src, with the bits a copy
 * would give (the samples of a group read their prompt from one place).
 * src must hold its own positions (no prefix of its own) and must not be
 * reset or refilled while dst refers to it; appending to either is safe.
 * A prefill into dst first copies the prefix into it. Returns 1 when
 * shared, 0 when the backend cannot (nothing changes; copy instead). */
int model_kv_share_prefix(ModelKVCache *kv, int64_t dst, int64_t src);

/* Runs tokens[0..n) through slot `slot` (appending to what it holds) and writes
 * the logits [V] after the last token. */
int model_prefill(Model *m, ModelKVCache *kv, int64_t slot, const int32_t *tokens, int64_t n,
                  float *logits, PonderError *err);

/* Appends tokens[i] to slot slots[i] for i < n and writes logits [n,V]. */
int model_decode(Model *m, ModelKVCache *kv, const int64_t *slots, const int32_t *tokens,
                 int64_t n, float *logits, PonderError *err);

#endif
