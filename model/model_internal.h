/* model/model_internal.h — the Model struct, shared by model.c (parameters),
 * model_train.c (forward/backward) and model_infer.c (KV-cache decoding).
 * Not part of the public contract. */
#ifndef PONDER_MODEL_MODEL_INTERNAL_H
#define PONDER_MODEL_MODEL_INTERNAL_H

#include "model/model.h" /* public types */
#include "model/ops.h"   /* ModelOps */

/* Offsets (in floats) of each stacked block in the parameter buffer. */
typedef struct ParamLayout {
    size_t wte, wpe, ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc_w, fc_b, proj_w,
        proj_b, lnf_w, lnf_b, lm, score_w, score_b;
} ParamLayout;

/* One layer's tensors inside a buffer; NULL where the architecture has none.
 * llama: fc_w is [gate; up] (2F x C), proj_w is down_proj. gpt2: fc_w is
 * c_fc, proj_w is mlp.c_proj. */
typedef struct LayerView {
    float *ln1_w, *ln1_b, *qkv_w, *qkv_b, *o_w, *o_b, *ln2_w, *ln2_b, *fc_w, *fc_b, *proj_w,
        *proj_b;
} LayerView;

/* Activations of the last training forward, sized for capacity_n rows,
 * capacity_b sequences and capacity_att attention entries per layer. */
typedef struct Activations {
    int64_t B, T, capacity_n, capacity_b, capacity_att;
    float *resid;  /* [L+1, N, C]: input of each layer, then the final residual */
    float *ln1;    /* [L, N, C] */
    float *ln1_mean, *ln1_rstd; /* [L, N] */
    float *qkv;    /* [L, N, QKV], q and k after RoPE */
    float *att;    /* [L, B, NH, T, T] */
    float *atty;   /* [L, N, NH*hd] */
    float *resid2; /* [L, N, C]: after attention */
    float *ln2;    /* [L, N, C] */
    float *ln2_mean, *ln2_rstd;
    float *fc;     /* [L, N, FC] */
    float *act;    /* [L, N, F] */
    float *lnf;    /* [N, C] */
    float *lnf_scaled; /* [N, C]: lnf / temperature, the LM head's input when T != 1 */
    float head_scale;  /* 1 / temperature of the last forward */
    float *lnf_mean, *lnf_rstd, *lse; /* [N] */
    /* The LM head's logits of the last forward's active rows, for the
     * backward (ops lm_head_forward_keep / lm_head_backward_kept): [N, V]
     * when the backend has the pair and N * V <= MODEL_LM_KEEP_MAX, else
     * NULL. lm_kept: they are there and not yet consumed by a backward. */
    float *lm_logits;
    int lm_kept;
    int32_t *tokens, *targets, *pos, *start; /* copies of the batch */
    float *mask;
    /* gradient scratch, reused layer by layer */
    float *dresid, *dln, *datty, *dqkv, *dfc, *dact, *dlnf; /* dln, dlnf: [N,C] */
    float *dvalues; /* [N] masked */
    /* Device backends only (all NULL on host backends, which stage straight
     * into the fields above): host copies of the staged batch, and device
     * buffers for the per-token inputs and outputs of the host-facing API. */
    int32_t *h_tokens, *h_targets, *h_pos, *h_start;
    float *h_mask, *h_rows;             /* h_rows: [N] host scratch */
    float *d_logp, *d_entropy, *d_values, *d_dlogp, *d_dentropy; /* [N] device */
    /* Shared prefixes (model_train.c): rows whose first positions hold the
     * same tokens, targets and mask (a GRPO group's prompt) compute those
     * positions once. The per-token ops then run on Nu <= N unique rows;
     * attention, which needs the [B,T] layout, reads q, k and v expanded back
     * to N rows. Positions no loss can read (after a row's last masked-in
     * one, masked-out ones before its start) get no unique row at all.
     * shared = 0 (Nu = N, maps unused) where too little is saved.
     * sh_unique [N]: each position's unique row, or -1; sh_rep [Nu]: the
     * position that computes a unique row's attention (its first);
     * sh_grad [N]: the unique row at representative positions, else -1;
     * sh_off [Nu+1] and sh_idx [N]: each unique row's positions in order. */
    int64_t Nu;
    int shared;
    int32_t *sh_unique, *sh_rep, *sh_grad, *sh_off, *sh_idx;
    float *qkv_u;  /* [Nu, QKV]: q, k, v before expansion; d(qkv) after summing */
    float *atty_x; /* [N, AD]: attention's output, then d(output), at N rows */
    /* the heads' per-token outputs and gradients at Nu rows */
    float *u_logp, *u_entropy, *u_values, *u_dlogp, *u_dentropy, *u_dvalues;
    int has_forward;
} Activations;

struct Model {
    ModelConfig cfg;
    const ModelOps *ops;
    int64_t head_dim, attn_dim, qkv_dim, fc_dim;
    ModelTensor *tensors;
    size_t n_tensors;
    ParamLayout lay;
    size_t num_params;
    float *params, *grads; /* backend memory (device memory on a device backend) */
    float *host_params, *host_grads; /* device backends: host mirrors that model_params()
                                        and model_grads() return; NULL on host backends */
    float *rope; /* [max_seq_len, hd/2, 2] cos/sin; llama only */
    int share_prefixes; /* model_share_prefixes; 1 by default */
    Activations act;
};

/* Logits kept between the LM head's forward and backward: up to 16M floats
 * (64 MB), the CPU backend's own chunk budget. */
#define MODEL_LM_KEEP_MAX ((int64_t)16 * 1024 * 1024)

LayerView model_layer_view(const Model *m, float *base, int64_t l);
void model_free_activations(Model *m);

#endif
