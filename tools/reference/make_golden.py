#!/usr/bin/env python3
"""make_golden.py — golden reference files for ponder's model (tests/data/ref_*.h5).

An independent float64 PyTorch implementation of ponder's two architectures
(llama: RMSNorm, RoPE "rotate_half", grouped-query attention, SwiGLU, optional
q/k/v biases; gpt2: LayerNorm, learned positions, fused c_attn, gelu_tanh),
written out with plain tensor operations (no Hugging Face transformers). For
each case it draws random float32 parameters, a right-padded [B,T] batch, runs
forward and backward in float64 with autograd, and writes an HDF5 file that
tests/test_reference.c loads into the C model.

Conventions (the contract of model/model.h):
  * linear weights are stored [out, in]: y = x W^T + b (for gpt2 this is the
    TRANSPOSE of Hugging Face's Conv1D storage);
  * logp[b,t] = log_softmax(logits[b,t])[targets[b,t]],
    entropy[b,t] = -sum_v p_v log p_v, value[b,t] = h_final . score.weight[0]
    + score.bias[0]; all three are 0 where mask == 0;
  * loss = sum mask*(-logp - 0.01*entropy)/N (+ sum mask*0.5*(value -
    value_target)^2/N with a scalar head), N = sum(mask); /grads/<name> is
    d loss / d param (a tied embedding's gradient includes the lm-head part).

File layout:
  /config    attributes arch (str), vocab_size, d_model, n_layer, n_head,
             n_kv_head, d_ff, max_seq_len (int64), norm_eps, rope_theta
             (float64), tie_embeddings, qkv_bias, scalar_head (int64 0/1)
  /params/<name>   float32, Hugging Face names, shapes as in model.h
  /inputs/tokens, /inputs/targets int32 [B,T]; /inputs/mask float32 [B,T];
  /inputs/value_targets float32 [B,T] (scalar-head cases)
  /expected/logp, /expected/entropy, /expected/values (scalar-head cases)
             float32 [B,T]; /expected/logits float32 [B,T,V];
             /expected/loss float64 scalar
  /grads/<name>    float32, same names and shapes as /params

Usage:  python make_golden.py [--out DIR] [--check]
  --check also verifies the building blocks against torch's built-ins
  (layer_norm, gelu(approximate="tanh"), scaled_dot_product_attention,
  rms_norm), that each right-padded row equals that sequence run alone, and —
  if the `transformers` package happens to be importable — the whole forward
  against Hugging Face's Llama / Qwen2 / GPT-2 models. It writes nothing new
  when a check fails.
"""

import argparse
import math
import os
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

DT = torch.float64

B, T = 3, 7
LENGTHS = [7, 5, 3]
ENTROPY_COEF = 0.01

_LLAMA = dict(arch="llama", vocab_size=37, d_model=32, n_layer=2, n_head=4, n_kv_head=4,
              d_ff=48, max_seq_len=16, norm_eps=1e-5, rope_theta=10000.0,
              tie_embeddings=True, qkv_bias=False, scalar_head=False)
_GPT2 = dict(arch="gpt2", vocab_size=37, d_model=32, n_layer=2, n_head=4, n_kv_head=4,
             d_ff=128, max_seq_len=16, norm_eps=1e-5, rope_theta=10000.0,
             tie_embeddings=True, qkv_bias=False, scalar_head=False)

CASES = [
    ("ref_llama_tied.h5", 1001, dict(_LLAMA)),
    ("ref_llama_gqa_untied_bias.h5", 1002,
     dict(_LLAMA, n_kv_head=2, tie_embeddings=False, qkv_bias=True, scalar_head=True)),
    ("ref_gpt2_tied.h5", 1003, dict(_GPT2)),
    ("ref_gpt2_untied_scalar.h5", 1004, dict(_GPT2, tie_embeddings=False, scalar_head=True)),
]


# ------------------------------------------------------------------ params --
def param_specs(cfg):
    """(name, shape, kind) in model order; kind in weight / bias / norm."""
    C, F_, V = cfg["d_model"], cfg["d_ff"], cfg["vocab_size"]
    NH, KV = cfg["n_head"], cfg["n_kv_head"]
    hd = C // NH
    specs = []
    if cfg["arch"] == "llama":
        specs.append(("model.embed_tokens.weight", (V, C), "weight"))
        for l in range(cfg["n_layer"]):
            p = f"model.layers.{l}."
            specs.append((p + "input_layernorm.weight", (C,), "norm"))
            for proj, rows in (("q_proj", NH * hd), ("k_proj", KV * hd), ("v_proj", KV * hd)):
                specs.append((p + f"self_attn.{proj}.weight", (rows, C), "weight"))
                if cfg["qkv_bias"]:
                    specs.append((p + f"self_attn.{proj}.bias", (rows,), "bias"))
            specs.append((p + "self_attn.o_proj.weight", (C, NH * hd), "weight"))
            specs.append((p + "post_attention_layernorm.weight", (C,), "norm"))
            specs.append((p + "mlp.gate_proj.weight", (F_, C), "weight"))
            specs.append((p + "mlp.up_proj.weight", (F_, C), "weight"))
            specs.append((p + "mlp.down_proj.weight", (C, F_), "weight"))
        specs.append(("model.norm.weight", (C,), "norm"))
    elif cfg["arch"] == "gpt2":
        specs.append(("transformer.wte.weight", (V, C), "weight"))
        specs.append(("transformer.wpe.weight", (cfg["max_seq_len"], C), "weight"))
        for l in range(cfg["n_layer"]):
            p = f"transformer.h.{l}."
            specs.append((p + "ln_1.weight", (C,), "norm"))
            specs.append((p + "ln_1.bias", (C,), "bias"))
            specs.append((p + "attn.c_attn.weight", (3 * C, C), "weight"))
            specs.append((p + "attn.c_attn.bias", (3 * C,), "bias"))
            specs.append((p + "attn.c_proj.weight", (C, C), "weight"))
            specs.append((p + "attn.c_proj.bias", (C,), "bias"))
            specs.append((p + "ln_2.weight", (C,), "norm"))
            specs.append((p + "ln_2.bias", (C,), "bias"))
            specs.append((p + "mlp.c_fc.weight", (F_, C), "weight"))
            specs.append((p + "mlp.c_fc.bias", (F_,), "bias"))
            specs.append((p + "mlp.c_proj.weight", (C, F_), "weight"))
            specs.append((p + "mlp.c_proj.bias", (C,), "bias"))
        specs.append(("transformer.ln_f.weight", (C,), "norm"))
        specs.append(("transformer.ln_f.bias", (C,), "bias"))
    else:
        raise ValueError(cfg["arch"])
    if not cfg["tie_embeddings"]:
        specs.append(("lm_head.weight", (V, C), "weight"))
    if cfg["scalar_head"]:
        specs.append(("score.weight", (1, C), "weight"))
        specs.append(("score.bias", (1,), "bias"))
    return specs


def make_params(cfg, rng):
    """Random float32 parameters (returned as float32 numpy arrays)."""
    out = {}
    for name, shape, kind in param_specs(cfg):
        z = rng.standard_normal(shape)
        if kind == "norm":
            a = 1.0 + 0.1 * z
        else:  # weights and biases alike: 0.1 * normal
            a = 0.1 * z
        out[name] = a.astype(np.float32)
    return out


# ------------------------------------------------------------------ blocks --
def linear(x, w, b=None):
    y = x @ w.transpose(0, 1)
    return y if b is None else y + b


def rms_norm(x, w, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * w


def layer_norm(x, w, b, eps):
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)  # biased
    return (x - mu) / torch.sqrt(var + eps) * w + b


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x * torch.sigmoid(x)


def rope_cos_sin(T_, hd, theta):
    """cos/sin [T, hd]: angle(pos, i) = pos * theta^(-2i/hd) for i < hd/2,
    duplicated into both halves (Hugging Face rotate_half layout)."""
    i = torch.arange(hd // 2, dtype=DT)
    inv_freq = theta ** (-2.0 * i / hd)
    pos = torch.arange(T_, dtype=DT)
    ang = pos[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], dim=-1)


def apply_rope(x, cos, sin):  # x [B, H, T, hd]
    return x * cos + rotate_half(x) * sin


def split_heads(x, n):  # [B, T, n*hd] -> [B, n, T, hd]
    B_, T_, D = x.shape
    return x.view(B_, T_, n, D // n).transpose(1, 2)


def merge_heads(x):  # [B, n, T, hd] -> [B, T, n*hd]
    B_, n, T_, hd = x.shape
    return x.transpose(1, 2).reshape(B_, T_, n * hd)


def causal_attention(q, k, v):
    """q [B,NH,T,hd], k/v [B,KV,T,hd]; query head h reads kv head h // (NH/KV)."""
    NH, KV, T_, hd = q.shape[1], k.shape[1], q.shape[2], q.shape[3]
    rep = NH // KV
    kv_of = torch.arange(NH) // rep
    k = k[:, kv_of]
    v = v[:, kv_of]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    future = torch.triu(torch.ones(T_, T_, dtype=torch.bool), diagonal=1)
    s = s.masked_fill(future, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


# ------------------------------------------------------------------ models --
def final_hidden(cfg, P, tokens):
    """tokens LongTensor [B,T] -> hidden after the final norm [B,T,C]."""
    NH, KV = cfg["n_head"], cfg["n_kv_head"]
    eps = cfg["norm_eps"]
    T_ = tokens.shape[1]
    if cfg["arch"] == "llama":
        hd = cfg["d_model"] // NH
        cos, sin = rope_cos_sin(T_, hd, cfg["rope_theta"])
        h = P["model.embed_tokens.weight"][tokens]
        for l in range(cfg["n_layer"]):
            p = f"model.layers.{l}."
            a = p + "self_attn."
            n = rms_norm(h, P[p + "input_layernorm.weight"], eps)
            q = linear(n, P[a + "q_proj.weight"], P.get(a + "q_proj.bias"))
            k = linear(n, P[a + "k_proj.weight"], P.get(a + "k_proj.bias"))
            v = linear(n, P[a + "v_proj.weight"], P.get(a + "v_proj.bias"))
            q = apply_rope(split_heads(q, NH), cos, sin)
            k = apply_rope(split_heads(k, KV), cos, sin)
            v = split_heads(v, KV)
            x = h + linear(merge_heads(causal_attention(q, k, v)), P[a + "o_proj.weight"])
            n = rms_norm(x, P[p + "post_attention_layernorm.weight"], eps)
            m = p + "mlp."
            g = silu(linear(n, P[m + "gate_proj.weight"])) * linear(n, P[m + "up_proj.weight"])
            h = x + linear(g, P[m + "down_proj.weight"])
        return rms_norm(h, P["model.norm.weight"], eps)
    # gpt2
    C = cfg["d_model"]
    h = P["transformer.wte.weight"][tokens] + P["transformer.wpe.weight"][:T_][None]
    for l in range(cfg["n_layer"]):
        p = f"transformer.h.{l}."
        n = layer_norm(h, P[p + "ln_1.weight"], P[p + "ln_1.bias"], eps)
        qkv = linear(n, P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"])
        q, k, v = qkv[..., :C], qkv[..., C:2 * C], qkv[..., 2 * C:]
        y = causal_attention(split_heads(q, NH), split_heads(k, NH), split_heads(v, NH))
        x = h + linear(merge_heads(y), P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"])
        n = layer_norm(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"], eps)
        f = gelu_tanh(linear(n, P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"]))
        h = x + linear(f, P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"])
    return layer_norm(h, P["transformer.ln_f.weight"], P["transformer.ln_f.bias"], eps)


def lm_weight(cfg, P):
    if not cfg["tie_embeddings"]:
        return P["lm_head.weight"]
    return P["model.embed_tokens.weight" if cfg["arch"] == "llama" else "transformer.wte.weight"]


def forward(cfg, P, tokens, targets, mask):
    """Returns dict with logits, logp, entropy, values (None without a head)."""
    h = final_hidden(cfg, P, tokens)
    logits = h @ lm_weight(cfg, P).transpose(0, 1)
    lsm = torch.log_softmax(logits, dim=-1)
    logp = lsm.gather(-1, targets[..., None])[..., 0] * mask
    entropy = -(lsm.exp() * lsm).sum(dim=-1) * mask
    values = None
    if cfg["scalar_head"]:
        values = (h @ P["score.weight"][0] + P["score.bias"][0]) * mask
    return dict(logits=logits, logp=logp, entropy=entropy, values=values)


def loss_of(cfg, out, mask, value_targets):
    N = mask.sum()
    loss = (mask * (-out["logp"] - ENTROPY_COEF * out["entropy"])).sum() / N
    if cfg["scalar_head"]:
        loss = loss + (mask * 0.5 * (out["values"] - value_targets) ** 2).sum() / N
    return loss


# ------------------------------------------------------------------ inputs --
def make_inputs(cfg, rng):
    V = cfg["vocab_size"]
    tokens = np.zeros((B, T), np.int32)
    targets = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.float32)
    vt = np.zeros((B, T), np.float32)
    for b, n in enumerate(LENGTHS):
        seq = rng.integers(1, V, size=n + 1)  # real tokens avoid the pad id 0
        tokens[b, :n] = seq[:n]
        targets[b, :n] = seq[1:]  # next-token targets
        mask[b, :n] = 1.0
        vt[b, :n] = rng.standard_normal(n).astype(np.float32)
    return tokens, targets, mask, vt


# ------------------------------------------------------------------ checks --
def check_blocks():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 16, dtype=DT, generator=g)
    w = torch.randn(16, dtype=DT, generator=g)
    b = torch.randn(16, dtype=DT, generator=g)
    errs = {}
    errs["layer_norm"] = (layer_norm(x, w, b, 1e-5) - F.layer_norm(x, (16,), w, b, 1e-5)).abs().max()
    errs["gelu_tanh"] = (gelu_tanh(x) - F.gelu(x, approximate="tanh")).abs().max()
    errs["silu"] = (silu(x) - F.silu(x)).abs().max()
    if hasattr(F, "rms_norm"):
        errs["rms_norm"] = (rms_norm(x, w, 1e-5) - F.rms_norm(x, (16,), w, 1e-5)).abs().max()
    q = torch.randn(2, 4, 6, 8, dtype=DT, generator=g)
    k = torch.randn(2, 2, 6, 8, dtype=DT, generator=g)
    v = torch.randn(2, 2, 6, 8, dtype=DT, generator=g)
    # Hugging Face repeat_kv: [B,KV,T,hd] -> [B,KV*rep,T,hd] via expand (kv0,kv0,kv1,kv1)
    krep = k[:, :, None].expand(2, 2, 2, 6, 8).reshape(2, 4, 6, 8)
    vrep = v[:, :, None].expand(2, 2, 2, 6, 8).reshape(2, 4, 6, 8)
    ref = F.scaled_dot_product_attention(q, krep, vrep, is_causal=True)
    errs["gqa_attention"] = (causal_attention(q, k, v) - ref).abs().max()
    # RoPE against the complex-number formulation of the same rotate_half pairing
    hd, T_ = 8, 6
    cos, sin = rope_cos_sin(T_, hd, 10000.0)
    xr = apply_rope(q, cos, sin)
    z = torch.complex(q[..., : hd // 2], q[..., hd // 2:])
    inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=DT) / hd)
    ang = torch.arange(T_, dtype=DT)[:, None] * inv[None]
    zr = z * torch.polar(torch.ones_like(ang), ang)
    errs["rope"] = (xr - torch.cat([zr.real, zr.imag], -1)).abs().max()
    ok = True
    for k_, e in errs.items():
        print(f"  check {k_:14s} max abs err {float(e):.3e}")
        ok &= float(e) < 1e-12
    return ok


def check_padding(cfg, P, tokens, targets, mask, out):
    """Each right-padded row must equal that sequence run alone."""
    worst = 0.0
    for b, n in enumerate(LENGTHS):
        o = forward(cfg, P, tokens[b:b + 1, :n], targets[b:b + 1, :n], mask[b:b + 1, :n])
        for key in ("logp", "entropy", "values"):
            if out[key] is not None:
                worst = max(worst, float((o[key][0] - out[key][b, :n]).abs().max()))
    print(f"  check padding        max abs err {worst:.3e}")
    return worst < 1e-12


def check_hf(cfg, P, tokens):
    """Optional: compare logits with Hugging Face transformers (if installed)."""
    try:
        import transformers as tf
    except ImportError:
        print("  check hf             skipped (transformers not installed)")
        return True
    C, V = cfg["d_model"], cfg["vocab_size"]
    if cfg["arch"] == "llama":
        common = dict(vocab_size=V, hidden_size=C, intermediate_size=cfg["d_ff"],
                      num_hidden_layers=cfg["n_layer"], num_attention_heads=cfg["n_head"],
                      num_key_value_heads=cfg["n_kv_head"], max_position_embeddings=cfg["max_seq_len"],
                      rms_norm_eps=cfg["norm_eps"], rope_theta=cfg["rope_theta"],
                      tie_word_embeddings=cfg["tie_embeddings"], hidden_act="silu")
        if cfg["qkv_bias"]:
            model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
        else:
            model = tf.LlamaForCausalLM(tf.LlamaConfig(**common, attention_bias=False, mlp_bias=False))
        sd = {k: v for k, v in P.items() if not k.startswith("score.")}
    else:
        model = tf.GPT2LMHeadModel(tf.GPT2Config(
            vocab_size=V, n_positions=cfg["max_seq_len"], n_embd=C, n_layer=cfg["n_layer"],
            n_head=cfg["n_head"], n_inner=cfg["d_ff"], layer_norm_epsilon=cfg["norm_eps"],
            activation_function="gelu_new", tie_word_embeddings=cfg["tie_embeddings"],
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        sd = {}
        for k, v in P.items():
            if k.startswith("score."):
                continue
            conv1d = any(s in k for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight"))
            sd[k] = v.t() if conv1d else v  # HF Conv1D stores [in, out]
    model = model.to(DT).eval()
    sd = {k: v.detach().clone() for k, v in sd.items()}
    if cfg["tie_embeddings"]:
        sd.pop("lm_head.weight", None)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if m != "lm_head.weight" and "attn.bias" not in m
               and "masked_bias" not in m]
    if missing or unexpected:
        print(f"  check hf             state dict mismatch: missing {missing} unexpected {unexpected}")
        return False
    with torch.no_grad():
        hf = model(input_ids=tokens).logits
        ours = forward(cfg, P, tokens, torch.zeros_like(tokens), torch.ones(tokens.shape, dtype=DT))
    err = float((hf - ours["logits"]).abs().max())
    # Even in a float64 model HF computes RMSNorm and the RoPE angles in float32,
    # so llama agrees to ~2e-7 only (emulating both makes the difference exactly 0).
    print(f"  check hf             max abs logit err {err:.3e} ({type(model).__name__})")
    return err < 1e-5


# ------------------------------------------------------------------ output --
def write_case(path, cfg, params32, tokens, targets, mask, vt, out, loss, grads):
    def ds(g, name, arr):
        arr = np.ascontiguousarray(arr)
        kw = {}
        if arr.size >= 1024:  # shuffle+deflate: the sign/exponent bytes compress
            kw = dict(compression="gzip", compression_opts=9, shuffle=True, chunks=arr.shape)
        g.create_dataset(name, data=arr, track_times=False, **kw)

    with h5py.File(path, "w", libver=("v110", "v110"), track_order=False) as f:
        c = f.create_group("config", track_order=False)
        c.attrs["arch"] = np.bytes_(cfg["arch"])  # fixed-length ASCII
        for key in ("vocab_size", "d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "max_seq_len"):
            c.attrs[key] = np.int64(cfg[key])
        c.attrs["norm_eps"] = np.float64(cfg["norm_eps"])
        c.attrs["rope_theta"] = np.float64(cfg["rope_theta"])
        for key in ("tie_embeddings", "qkv_bias", "scalar_head"):
            c.attrs[key] = np.int64(1 if cfg[key] else 0)
        gp = f.create_group("params")
        for name, _, _ in param_specs(cfg):
            ds(gp, name, params32[name])
        gi = f.create_group("inputs")
        ds(gi, "tokens", tokens)
        ds(gi, "targets", targets)
        ds(gi, "mask", mask)
        if cfg["scalar_head"]:
            ds(gi, "value_targets", vt)
        ge = f.create_group("expected")
        ds(ge, "logp", out["logp"].detach().numpy().astype(np.float32))
        ds(ge, "entropy", out["entropy"].detach().numpy().astype(np.float32))
        if cfg["scalar_head"]:
            ds(ge, "values", out["values"].detach().numpy().astype(np.float32))
        ds(ge, "logits", out["logits"].detach().numpy().astype(np.float32))
        ge.create_dataset("loss", data=np.float64(loss), track_times=False)
        gg = f.create_group("grads")
        for name, _, _ in param_specs(cfg):
            ds(gg, name, grads[name].numpy().astype(np.float32))


def run_case(fname, seed, cfg, out_dir, check):
    rng = np.random.default_rng(seed)
    params32 = make_params(cfg, rng)
    tokens, targets, mask, vt = make_inputs(cfg, rng)
    # The C model sees float32 parameters and float32 norm_eps / rope_theta:
    # compute with exactly those values, in float64.
    cfg64 = dict(cfg, norm_eps=float(np.float32(cfg["norm_eps"])),
                 rope_theta=float(np.float32(cfg["rope_theta"])))
    P = {k: torch.tensor(v, dtype=DT, requires_grad=True) for k, v in params32.items()}
    tok = torch.tensor(tokens, dtype=torch.long)
    tgt = torch.tensor(targets, dtype=torch.long)
    msk = torch.tensor(mask, dtype=DT)
    vtt = torch.tensor(vt, dtype=DT)
    out = forward(cfg64, P, tok, tgt, msk)
    loss = loss_of(cfg64, out, msk, vtt)
    gl = torch.autograd.grad(loss, [P[k] for k in params32])
    grads = {k: g.detach() for k, g in zip(params32, gl)}
    print(f"{fname}: loss {loss.item():.10f}")
    ok = True
    if check:
        with torch.no_grad():
            ok &= check_padding(cfg64, P, tok, tgt, msk, out)
            ok &= check_hf(cfg64, P, tok)
    if not ok:
        print(f"{fname}: CHECK FAILED, not written", file=sys.stderr)
        return False
    path = os.path.join(out_dir, fname)
    write_case(path, cfg, params32, tokens, targets, mask, vt, out, loss.item(), grads)
    print(f"  wrote {path} ({os.path.getsize(path)} bytes)")
    return True


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.normpath(os.path.join(here, "..", "..", "tests", "data")))
    ap.add_argument("--check", action="store_true", help="run self-checks before writing")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    ok = True
    if args.check:
        ok &= check_blocks()
    if ok:
        for fname, seed, cfg in CASES:
            ok &= run_case(fname, seed, cfg, args.out, args.check)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
