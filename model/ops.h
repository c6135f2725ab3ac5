/* model/ops.h — the backend ops table: every computation the model performs.
 *
 * model.c calls only these functions, so a backend (CPU today, CUDA next)
 * supplies one table and the model, rollout, losses and trainer do not change.
 * Conventions, as in llm.c: outputs first, then inputs, then weights, then
 * sizes; N = rows (B*T tokens), C = channels. Backward functions ACCUMULATE
 * into every gradient they write (inputs and weights alike), so residual
 * branches add up without special cases; callers zero what must start at zero.
 * Matrices are row-major and weights are [out, in] (y = x W^T + b). */
#ifndef PONDER_MODEL_OPS_H
#define PONDER_MODEL_OPS_H

#include <stddef.h> /* size_t */
#include <stdint.h> /* int64_t, int32_t */

/* A strided view of heads inside a row-major activation: element (n, h, d) is
 * at base[n*row_stride + h*head_dim + d]. q, k and v of one layer live in one
 * packed [N, (NH + 2*KV) * hd] buffer, so each is a view into it. */
typedef struct OpsHeads {
    float *base;
    int64_t row_stride;
} OpsHeads;

/* The positions that the rows of a decode step read from a cache other than
 * their own: row n's positions [0, len[n]) come from k[n] and v[n], blocks
 * laid out as the row's own cache ([KV, max_len, hd], the same max_len and
 * format), the rest from its own cache at their own positions. len[n] == 0:
 * none (k[n] and v[n] unused). This lets the samples of a group share one
 * copy of their prompt: read once per step from one place, not once per
 * sample from copies of it. */
typedef struct OpsPrefix {
    const void *const *k, *const *v;
    const int64_t *len;
} OpsPrefix;

/* A llama block of a decode step (ModelOps.decode_block): its weights, the
 * attention's caches as attention_decode_bf16 takes them, and scratch. */
typedef struct OpsDecodeBlock {
    const float *ln1_w, *qkv_w, *qkv_b, *o_w, *ln2_w, *fc_w, *proj_w; /* qkv_b may be NULL */
    int64_t C, F, NH, KV, hd;
    float eps;
    const float *cos_sin; /* RoPE table as for rope */
    uint16_t *const *k_cache, *const *v_cache;
    const int64_t *len;
    int64_t max_len;
    const OpsPrefix *prefix; /* NULL: none */
    float *qkv, *atty, *fc;  /* [N, (NH + 2 KV) hd], [N, NH hd], [N, 2F] */
} OpsDecodeBlock;

/* linear_fused's prologue (norm) and activation (act). */
enum { OPS_NORM_NONE = 0, OPS_NORM_RMS = 1, OPS_NORM_LAYER = 2 };
enum { OPS_ACT_NONE = 0, OPS_ACT_GELU = 1 };

/* The policy loss's configuration for the policy_loss op: algos/loss.h's
 * AlgoPolicyConfig resolved to plain numbers (the model does not depend on
 * algos/; trainer/rl_device.c converts). Passed by value: host data. */
typedef struct OpsPolicyLoss {
    double epsilon_low, epsilon_high; /* clip range [1 - low, 1 + high] */
    double dual_clip_c;               /* 0 = off, else > 1 */
    double log_ratio_clamp;           /* 0 = no clamp */
    int sequence_ratio;               /* 1: one ratio per row (GSPO), 0: per token */
    int kl_estimator;                 /* AlgoKlEstimator: 0 k1, 1 k2, 2 k3 */
    int kl_clamp;                     /* verl's k3 clamps */
    double kl_coef;                   /* 0: KL only as a metric (when ref_logp is given) */
    double entropy_coef;
    int loss_type; /* AlgoLossType: 0 (grpo) weighs row i's tokens 1 / (max(1, n_i) D), others 1 / D */
    double denom;  /* D > 0, as algo_agg_denominator resolves it */
} OpsPolicyLoss;

/* What policy_loss reduces to (the fields of AlgoPolicySums, in order):
 * sums of weight * term for the loss parts, plain sums for the metrics. */
enum {
    OPS_POLICY_PG = 0,  /* sum w * pg */
    OPS_POLICY_KL,      /* sum w * KL (only when kl_coef != 0) */
    OPS_POLICY_ENT,     /* sum w * H (when entropy is given) */
    OPS_POLICY_TOKENS,  /* mask-1 tokens */
    OPS_POLICY_LOW,     /* low-clipped tokens */
    OPS_POLICY_HIGH,    /* high-clipped tokens */
    OPS_POLICY_DUAL,    /* dual-clipped tokens */
    OPS_POLICY_RATIO,   /* sum rho */
    OPS_POLICY_KL_SUM,  /* sum KL (when ref_logp is given) */
    OPS_POLICY_OLD_KL,  /* sum (old - logp), clamped */
    OPS_POLICY_ENT_SUM, /* sum H */
    OPS_POLICY_NSUMS
};

/* The value loss's configuration (algos/loss.h AlgoValueConfig resolved). */
typedef struct OpsValueLoss {
    double clip_range; /* 0 = no clipping */
    int loss_type;     /* as OpsPolicyLoss.loss_type */
    double denom;      /* D > 0 */
} OpsValueLoss;

/* What value_loss reduces to (AlgoValueSums, in order). */
enum {
    OPS_VALUE_LOSS = 0, /* sum w * max((V - R)^2, (Vc - R)^2), before the 0.5 */
    OPS_VALUE_CLIPPED,  /* tokens where the clipped error is strictly larger */
    OPS_VALUE_TOKENS,   /* mask-1 tokens */
    OPS_VALUE_SUM,      /* sum V */
    OPS_VALUE_NSUMS
};

/* Token-level advantages for the token_advantages op (algos/advantage.h and
 * kl.h resolved to plain numbers): token rewards = the row's score on its
 * last mask-1 token minus kl_coef * KL(old, ref) at mask-1 tokens
 * (algo_token_rewards), then GAE (algo_gae, OPS_ADV_GAE) or discounted
 * returns (algo_returns_discounted, OPS_ADV_RETURNS). */
enum { OPS_ADV_GAE = 0, OPS_ADV_RETURNS = 1 };
typedef struct OpsAdvantage {
    int kind;         /* OPS_ADV_GAE or OPS_ADV_RETURNS */
    int kl_estimator; /* AlgoKlEstimator of the KL in the reward */
    int kl_clamp;
    double kl_coef;   /* 0: scores only (the KL mean is still reduced) */
    double gamma, lambda;
} OpsAdvantage;

typedef struct ModelOps {
    const char *name;

    /* ---- memory ---- */
    /* Every pointer an op takes is backend memory from alloc (device memory
     * when `device` is set), except where a comment says host. */
    void *(*alloc)(size_t bytes); /* zero-filled; NULL on failure */
    void (*free)(void *p);
    void (*zero)(void *p, size_t bytes);
    void (*copy)(void *dst, const void *src, size_t bytes); /* backend to backend */
    /* Nonzero when alloc returns memory the host cannot touch (a GPU). The model
     * then moves host data with upload/download; on host backends (device == 0)
     * it reads and writes the caller's arrays directly and never calls them. */
    int device;
    void (*upload)(void *dst, const void *src_host, size_t bytes);   /* host -> backend */
    void (*download)(void *dst_host, const void *src, size_t bytes); /* backend -> host; waits */

    /* ---- linear ---- */
    /* out[N,OC] = inp[N,C] w[OC,C]^T (+ bias[OC]); overwrites out. */
    void (*matmul_forward)(float *out, const float *inp, const float *w, const float *bias,
                           int64_t N, int64_t C, int64_t OC);
    /* dinp[N,C] += dout w ; dw[OC,C] += dout^T inp ; dbias[OC] += sum_n dout.
     * Any of dinp, dw, dbias may be NULL (skipped). */
    void (*matmul_backward)(float *dinp, float *dw, float *dbias, const float *dout,
                            const float *inp, const float *w, int64_t N, int64_t C, int64_t OC);
    /* Optional (NULL: the model zeroes dinp, then calls matmul_backward): the
     * same with dinp = dout w written, not added, which saves zeroing and
     * reading it. dw and dbias still accumulate. */
    void (*matmul_backward_set)(float *dinp, float *dw, float *dbias, const float *dout,
                                const float *inp, const float *w, int64_t N, int64_t C,
                                int64_t OC);

    /* ---- embeddings ---- */
    /* out[n] = wte[tokens[n]] (+ wpe[pos[n]] when wpe != NULL); overwrites. */
    void (*embedding_forward)(float *out, const int32_t *tokens, const int32_t *pos,
                              const float *wte, const float *wpe, int64_t N, int64_t C);
    void (*embedding_backward)(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                               const int32_t *pos, int64_t N, int64_t C);

    /* ---- norms ---- */
    /* out = inp / sqrt(mean(inp^2) + eps) * w ; rstd[N] saved for backward. */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *w, int64_t N,
                            int64_t C, float eps);
    void (*rmsnorm_backward)(float *dinp, float *dw, const float *dout, const float *inp,
                             const float *w, const float *rstd, int64_t N, int64_t C);
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *inp,
                              const float *w, const float *b, int64_t N, int64_t C, float eps);
    void (*layernorm_backward)(float *dinp, float *dw, float *db, const float *dout,
                               const float *inp, const float *w, const float *mean,
                               const float *rstd, int64_t N, int64_t C);

    /* ---- rotary positions (Hugging Face rotate_half convention) ---- */
    /* Rotates H heads of x in place by angle pos[n] * theta^(-2i/hd); with
     * inverse != 0 rotates by the negative angle (the backward pass).
     * cos_sin is [max_pos, hd/2, 2]. */
    void (*rope)(OpsHeads x, const int32_t *pos, const float *cos_sin, int64_t N, int64_t H,
                 int64_t hd, int inverse);

    /* ---- attention ---- */
    /* Causal attention over a [B,T] batch. out[B*T, NH*hd]; att[B,NH,T,T] saves
     * the probabilities. start[b] (NULL = 0) masks keys before the sequence's
     * first real token. Query head h reads kv head h / (NH/KV). */
    void (*attention_forward)(float *out, float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                              const int32_t *start, int64_t B, int64_t T, int64_t NH, int64_t KV,
                              int64_t hd);
    /* dq, dk, dv accumulate; the O(T^2) form, parallel over (batch, kv head). */
    void (*attention_backward)(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout, const float *att, OpsHeads q, OpsHeads k,
                               OpsHeads v, const int32_t *start, int64_t B, int64_t T,
                               int64_t NH, int64_t KV, int64_t hd);
    /* Optional (NULL: the model zeroes dq, dk and dv, then attention_backward):
     * writes them instead of adding onto them (rows before a sequence's
     * start as zeros), with the same bits. */
    void (*attention_backward_set)(OpsHeads dq, OpsHeads dk, OpsHeads dv, const float *dout,
                                   const float *att, OpsHeads q, OpsHeads k, OpsHeads v,
                                   const int32_t *start, int64_t B, int64_t T, int64_t NH,
                                   int64_t KV, int64_t hd);
    /* Cached attention for inference: row n (a token of some sequence) attends
     * to positions [0, len[n]) of its own cache, where k_cache[n] and v_cache[n]
     * point at that sequence's [KV, max_len, hd] block. */
    void (*attention_cached)(float *out, OpsHeads q, float *const *k_cache,
                             float *const *v_cache, const int64_t *len, int64_t N, int64_t NH,
                             int64_t KV, int64_t hd, int64_t max_len);
    /* Optional, host backends: attention_cached over caches held as bf16
     * (the upper 16 bits of each fp32 value rounded to nearest even). A
     * backend with it gets bf16 KV caches from model_kv_create: half the
     * memory, and half the bytes each decode step reads. */
    void (*attention_cached_bf16)(float *out, OpsHeads q, const uint16_t *const *k_cache,
                                  const uint16_t *const *v_cache, const int64_t *len, int64_t N,
                                  int64_t NH, int64_t KV, int64_t hd, int64_t max_len);
    /* With attention_cached_bf16: rounds one head's hd k or v values to bf16
     * and stores them at dst in the order attention_cached_bf16 reads (the
     * backend's own order, not necessarily 0..hd-1). */
    void (*kv_store_bf16)(uint16_t *dst, const float *src, int64_t hd);
    /* Optional (NULL: the model copies with memcpy, host backends only). For
     * row i < N: copies KV heads of k (row i of k) and of v into k_cache[i] and
     * v_cache[i] at position pos[i]; caches laid out as for attention_cached. */
    void (*kv_write)(float *const *k_cache, float *const *v_cache, OpsHeads k, OpsHeads v,
                     const int32_t *pos, int64_t N, int64_t KV, int64_t hd, int64_t max_len);
    /* Optional (NULL: kv_write, then attention_cached with len[i] = pos[i] + 1).
     * The two in one op, for steps whose rows write to pairwise different
     * caches (k_cache[i] != k_cache[j] for i != j: one decode token per
     * slot); row i attends to positions [0, pos[i]] of its cache, its own
     * key and value included. */
    void (*attention_cached_write)(float *out, OpsHeads q, OpsHeads k, OpsHeads v,
                                   float *const *k_cache, float *const *v_cache,
                                   const int32_t *pos, int64_t N, int64_t NH, int64_t KV,
                                   int64_t hd, int64_t max_len);

    /* Optional, host backends (NULL: rope, the cache stores, then
     * attention_cached or attention_cached_bf16). A decode step's attention
     * in one op, for rows whose caches are pairwise different (one token per
     * slot): row i's q and k heads rotated by RoPE at position len[i] - 1
     * (cos_sin as for rope; NULL: no rotation), its KV heads of k and v
     * stored at that position of k_cache[i] and v_cache[i], then attention
     * over positions [0, len[i]) as attention_cached. Same bits as those ops
     * in turn; q and k are rotated in place. attention_decode_bf16 is the
     * same over bf16 caches (kv_store_bf16's format). With prefix (NULL:
     * none), row i reads its first prefix->len[i] positions from the prefix's
     * blocks, with the bits it would get from those values in its own cache;
     * its new position must come after them. */
    void (*attention_decode)(float *out, OpsHeads q, OpsHeads k, OpsHeads v, const float *cos_sin,
                             float *const *k_cache, float *const *v_cache, const int64_t *len,
                             int64_t N, int64_t NH, int64_t KV, int64_t hd, int64_t max_len,
                             const OpsPrefix *prefix);
    void (*attention_decode_bf16)(float *out, OpsHeads q, OpsHeads k, OpsHeads v,
                                  const float *cos_sin, uint16_t *const *k_cache,
                                  uint16_t *const *v_cache, const int64_t *len, int64_t N,
                                  int64_t NH, int64_t KV, int64_t hd, int64_t max_len,
                                  const OpsPrefix *prefix);

    /* ---- activations ---- */
    /* gate_up is [N, 2F] (gate in the first F columns, up in the next F);
     * out[N,F] = silu(gate) * up. */
    void (*swiglu_forward)(float *out, const float *gate_up, int64_t N, int64_t F);
    void (*swiglu_backward)(float *dgate_up, const float *dout, const float *gate_up, int64_t N,
                            int64_t F);
    /* Optional (NULL: the model zeroes dgate_up, then swiglu_backward):
     * writes dgate_up instead of adding onto it, with the same bits. */
    void (*swiglu_backward_set)(float *dgate_up, const float *dout, const float *gate_up,
                                int64_t N, int64_t F);
    /* Optional (NULL: swiglu_backward_set into a buffer, then
     * matmul_backward_set on it): the gate/up projection's backward through
     * SwiGLU, gate_up = inp w^T with w [2F, C]. d(gate_up) is formed from
     * dout [N,F] and gate_up as swiglu_backward_set forms it, a few rows at a
     * time, and used at once as the product's output gradient: dinp = it w
     * (written), dw += it^T inp. The same bits, without writing d(gate_up)
     * out and reading it back. No bias. */
    void (*swiglu_matmul_backward_set)(float *dinp, float *dw, const float *dout,
                                       const float *gate_up, const float *inp, const float *w,
                                       int64_t N, int64_t C, int64_t F);
    /* tanh-approximated GELU, elementwise over n values. */
    void (*gelu_forward)(float *out, const float *inp, int64_t n);
    void (*gelu_backward)(float *dinp, const float *inp, const float *dout, int64_t n);
    /* out = a + b, elementwise. */
    void (*add)(float *out, const float *a, const float *b, int64_t n);
    /* acc += a */
    void (*accumulate)(float *acc, const float *a, int64_t n);
    /* Optional (NULL: the model loops, host backends only): out = s * inp. */
    void (*scale)(float *out, const float *inp, float s, int64_t n);
    /* Optional; the model shares the forward and backward of rows' common
     * prefixes only where this is set (model_train.c). Row r of dst
     * ([n, width]) is, with offsets NULL, row idx[r] of src, or zeros where
     * idx[r] < 0; with offsets ([n+1]), the sum of the src rows
     * idx[offsets[r]] .. idx[offsets[r+1]-1] added in that order (the first
     * copied, so a single row keeps its bits), or zeros for none. src and
     * dst must not overlap. */
    void (*rows_gather)(float *dst, const float *src, const int32_t *idx, const int32_t *offsets,
                        int64_t n, int64_t width);

    /* ---- fused linear sublayer (optional; NULL on the fp32 CPU table) ---- */
    /* What the ops named on the right compute, in one op (inference: the
     * norm's mean and rstd are not saved):
     *   h   = norm(inp)        rmsnorm_forward (OPS_NORM_RMS, norm_w) or
     *                          layernorm_forward (OPS_NORM_LAYER, norm_w, norm_b)
     *                          with eps; h = inp for OPS_NORM_NONE
     *   y   = h w^T + bias     matmul_forward (bias may be NULL)
     *   y   = gelu(y)          gelu_forward, for OPS_ACT_GELU
     *   out = resid + y        add, when resid != NULL (resid may be out: out += y);
     *                          else out = y
     * out, resid [N,OC]; inp [N,C] (must not overlap out); w [OC,C]. NULL:
     * the model calls those ops one by one. */
    void (*linear_fused)(float *out, const float *inp, const float *resid, const float *w,
                         const float *bias, const float *norm_w, const float *norm_b,
                         int64_t N, int64_t C, int64_t OC, int norm, float eps, int act);
    /* Optional: out = (resid +) swiglu(gate_up) w^T, the bits of swiglu_forward
     * then linear_fused with no norm, bias or activation (a llama block's
     * down projection in one region). gate_up [N, 2F] (must not overlap
     * out), w [OC, F], out and resid [N, OC] (resid may be out or NULL). */
    void (*linear_swiglu)(float *out, const float *gate_up, const float *resid, const float *w,
                          int64_t N, int64_t F, int64_t OC);
    /* Optional, host backends with bf16 caches: n_blocks llama blocks (no
     * biases but qkv_b), b[0] first, of a decode step of N rows of pairwise
     * different slots, x [N, C] updated in place, in one parallel region,
     * with the bits of the ops one by one for each block: linear_fused
     * (RMSNorm, QKV), attention_decode_bf16, linear_fused (O, residual),
     * linear_fused (RMSNorm, gate/up), linear_swiglu (down, residual).
     * Returns 0, having done nothing, where it does not apply (weights not
     * frozen): the model then calls those ops. */
    int (*decode_block)(float *x, int64_t N, const OpsDecodeBlock *b, int64_t n_blocks);

    /* ---- language-model head ---- */
    /* For rows with mask != 0: logp[n] = log softmax(h[n] w^T)[targets[n]] and
     * entropy[n] (entropy may be NULL); masked rows get 0. lse[N] saved for
     * backward. Works through rows in chunks so memory stays O(chunk * V). */
    void (*lm_head_forward)(float *logp, float *entropy, float *lse, const float *h,
                            const float *w, const int32_t *targets, const float *mask, int64_t N,
                            int64_t C, int64_t V);
    /* dh[N,C] += ; dw[V,C] += ; from per-row dlogp and dentropy (NULL = 0). */
    void (*lm_head_backward)(float *dh, float *dw, const float *dlogp, const float *dentropy,
                             const float *h, const float *w, const int32_t *targets,
                             const float *lse, const float *mask, int64_t N, int64_t C,
                             int64_t V);
    /* Optional pair (NULL on the CUDA table): lm_head_forward that also
     * leaves the logits h[n] w^T of the mask != 0 rows, in row order, in
     * logits[A * V] (A = those rows); and lm_head_backward starting from
     * them instead of recomputing h w^T (it overwrites them). Between the
     * two, h, w, targets and mask must not change. Results equal the pair
     * above bit for bit; the model keeps the logits when N * V is small. */
    void (*lm_head_forward_keep)(float *logp, float *entropy, float *lse, float *logits,
                                 const float *h, const float *w, const int32_t *targets,
                                 const float *mask, int64_t N, int64_t C, int64_t V);
    void (*lm_head_backward_kept)(float *dh, float *dw, float *logits, const float *dlogp,
                                  const float *dentropy, const float *h, const float *w,
                                  const int32_t *targets, const float *lse, const float *mask,
                                  int64_t N, int64_t C, int64_t V);

    /* ---- frozen weights (optional) ---- */
    /* on = 1: until the matching call with 0 on the same thread, the caller
     * promises that the weights it passes to matmul_forward do not change
     * (generation), so the backend may reuse converted copies of them, keyed
     * by address and shape. The cpu-bf16 table keeps each weight packed in
     * bf16 instead of packing it on every decode step. */
    void (*weights_frozen)(int on);

    /* ---- replayable steps (optional; NULL on the CPU table) ---- */
    /* graph_capture records the ops that body(ctx) issues, without running
     * them, as one step that graph_launch replays in order with other ops;
     * NULL when this step cannot be captured (the caller then calls body
     * itself). A replay re-issues the same ops with the same arguments, so
     * body must read everything that varies between replays from backend
     * memory, and ctx must stay valid and unchanged until graph_free. */
    void *(*graph_capture)(void (*body)(void *ctx), void *ctx);
    void (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);

    /* ---- RL losses on the backend (optional; NULL on the CPU table) ---- */
    /* So that a device-resident RL update needs no per-token copy to the
     * host: the trainer keeps logp / entropy / values where the model left
     * them (model_forward_backend), computes the loss here and hands the
     * per-token gradients straight to model_backward_backend. With these
     * NULL the trainer runs algos/ on host copies (the CPU backend always).
     * Per-token arrays are [S,T] row-major; each op writes every position of
     * its gradient outputs (0 at mask-0 tokens); `sums` is backend memory. */

    /* algo_policy_loss (algos/loss.h) with the same formulas, tie rules and
     * metrics; entropy, old_logp (NULL: old = logp detached), ref_logp
     * (NULL: no KL, cfg.kl_coef must be 0) and dentropy (NULL: not written)
     * may be NULL. sums[OPS_POLICY_NSUMS] receives AlgoPolicySums
     * (algos/loss_core.h) in its order. */
    void (*policy_loss)(float *dlogp, float *dentropy, double *sums, const float *logp,
                        const float *entropy, const float *old_logp, const float *ref_logp,
                        const float *advantages, const float *mask, OpsPolicyLoss cfg, int64_t S,
                        int64_t T);
    /* algo_value_loss: dvalues [S,T]; old_values may be NULL when
     * cfg.clip_range is 0. sums[OPS_VALUE_NSUMS] receives AlgoValueSums. */
    void (*value_loss)(float *dvalues, double *sums, const float *values, const float *old_values,
                       const float *returns, const float *mask, OpsValueLoss cfg, int64_t S,
                       int64_t T);
    /* out[0] = max |a - b| over the n positions with mask != 0 (in double; 0
     * when there is none; NaN at mask-0 positions is never read). */
    void (*masked_max_abs_diff)(double *out, const float *a, const float *b, const float *mask,
                                int64_t n);
    /* Token-level advantages of a rollout [S,T]: rewards written into
     * `returns` first, then GAE (adv and returns, both un-whitened) or the
     * discounted returns (returns only; adv untouched, may be NULL). scores
     * [S] (double) are the rows' sequence rewards; values is read for GAE
     * only. kl_sum[0] = sum over rows with tokens of the row's mean KL
     * (algo_token_rewards' kl_seq_mean_sum). */
    void (*token_advantages)(float *adv, float *returns, double *kl_sum, const double *scores,
                             const float *old_logp, const float *ref_logp, const float *values,
                             const float *mask, OpsAdvantage cfg, int64_t S, int64_t T);
    /* out[0..3) = count, sum and sum of squares (double) of x over the n
     * positions with mask != 0 (algo_moments_tokens). */
    void (*masked_moments)(double *out, const float *x, const float *mask, int64_t n);
    /* out = (x - mean) * scale at mask-1 positions, 0 elsewhere, in double then
     * rounded (algo_whiten_apply with the moments' mean and scale); out may be x. */
    void (*whiten)(float *out, const float *x, const float *mask, double mean, double scale,
                   int64_t n);
    /* Strided block copy, backend to backend: dst[r*dst_stride + c] =
     * src[r*src_stride + c] for r < rows, c < cols (the blocks must not
     * overlap). Optional on its own: NULL means one `copy` per row. */
    void (*copy_2d)(float *dst, int64_t dst_stride, const float *src, int64_t src_stride,
                    int64_t rows, int64_t cols);

    /* ---- optimizer ---- */
    /* sum of squares of x[0..n): float within 4096-value blocks, blocks added
     * in double, in a fixed order (independent of the thread count). */
    double (*sum_squares)(const float *x, int64_t n);
    /* AdamW on n values: g = grad*grad_scale; m,v moments; bias-corrected with
     * step t (1-based); decoupled decay p -= lr*wd*p. */
    void (*adamw)(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, float grad_scale,
                  int64_t t);
} ModelOps;

/* The CPU backend (OpenBLAS/BLIS + OpenMP). */
const ModelOps *ops_cpu(void);

/* The CPU backend with bf16 products ("cpu-bf16", model.precision: bf16):
 * the linear layers' and the LM head's matrix products round both operands
 * to bf16 and sum in fp32 (model/cpu/gemm_bf16.h); weights, gradients,
 * optimizer state, activations, attention, norms and losses stay fp32.
 * NULL when this CPU lacks AVX512-BF16. */
const ModelOps *ops_cpu_bf16(void);

/* The CUDA backend (cuBLAS + model/cuda kernels, fp32) on the current device.
 * NULL when this build has no CUDA (PONDER_HAVE_CUDA unset) or no usable GPU
 * is present; ops_cuda_status() then says why (never NULL). */
const ModelOps *ops_cuda(void);
const char *ops_cuda_status(void);
/* Chooses the GPU that ops_cuda() initialises: index modulo the number of
 * devices (several MPI ranks on a node pass their node-local rank). Call
 * before the first ops_cuda(); returns 0, or -1 once the backend runs on a
 * different device (and always -1 in a build without CUDA). Without a
 * choice the device is PONDER_CUDA_DEVICE, else 0. */
int ops_cuda_choose_device(int index);

#endif
