#!/usr/bin/env python3
"""bench/torch_train_step.py — PyTorch eager CPU training step, the peer
baseline for ponder's training benchmark (issue 2, point 7).

A GPT-2 124M-shaped model in plain torch with ponder's gpt2 architecture
(pre-LayerNorm blocks, learned positions, GELU tanh, tied embeddings, biases,
vocab 50257, C 768, L 12, NH 12), or ponder's default tiny llama (RMSNorm,
RoPE, SwiGLU, tied embeddings, vocab 64, d_model 128, 4 layers, 4 heads, d_ff
352). One step = forward, mean cross-entropy, backward, AdamW update; random
weights and tokens (step time does not depend on them). Warm-up steps, then
the median of timed steps; prints one JSON line per sequence length.

  python bench/torch_train_step.py --threads 2 --model gpt2 --B 4 --T 64,256
  python bench/torch_train_step.py --threads 2 --model tiny-llama --B 16 --T 64
  python bench/torch_train_step.py --threads 2 --model gpt2 --T 64 --bf16
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class GPT2Block(nn.Module):
    def __init__(self, C, NH, attn):
        super().__init__()
        self.NH, self.attn_impl = NH, attn
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.attn_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.NH, C // self.NH).transpose(1, 2) for t in (q, k, v))
        y = attention(q, k, v, self.attn_impl)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


def attention(q, k, v, impl):
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return att @ v


class GPT2(nn.Module):
    def __init__(self, V=50257, C=768, L=12, NH=12, maxT=1024, attn="sdpa"):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(maxT, C)
        self.h = nn.ModuleList(GPT2Block(C, NH, attn) for _ in range(L))
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for blk in self.h:
            x = blk(x)
        return F.linear(self.ln_f(x), self.wte.weight)  # tied lm_head


class RMSNorm(nn.Module):
    def __init__(self, C, eps=1e-5):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(C))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope(x, cos, sin):  # x [B, NH, T, hd], rotate-half convention (Hugging Face llama)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LlamaBlock(nn.Module):
    def __init__(self, C, NH, F_, attn):
        super().__init__()
        self.NH, self.attn_impl = NH, attn
        self.input_layernorm = RMSNorm(C)
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, C, bias=False)
        self.v_proj = nn.Linear(C, C, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C)
        self.gate_proj = nn.Linear(C, F_, bias=False)
        self.up_proj = nn.Linear(C, F_, bias=False)
        self.down_proj = nn.Linear(F_, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q, k, v = (p(h).view(B, T, self.NH, C // self.NH).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = attention(rope(q, cos, sin), rope(k, cos, sin), v, self.attn_impl)
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class TinyLlama(nn.Module):
    def __init__(self, V=64, C=128, L=4, NH=4, F_=352, theta=10000.0, attn="sdpa"):
        super().__init__()
        self.C, self.NH, self.theta = C, NH, theta
        self.embed_tokens = nn.Embedding(V, C)
        self.layers = nn.ModuleList(LlamaBlock(C, NH, F_, attn) for _ in range(L))
        self.norm = RMSNorm(C)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx):
        T, hd = idx.shape[1], self.C // self.NH
        inv = 1.0 / (self.theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        cos, sin = torch.cat((ang, ang), -1).cos(), torch.cat((ang, ang), -1).sin()
        x = self.embed_tokens(idx)
        for blk in self.layers:
            x = blk(x, cos, sin)
        return F.linear(self.norm(x), self.embed_tokens.weight)  # tied


def blas_info():
    cfg = torch.__config__.show()
    info = [l.strip() for l in cfg.splitlines() if "Math Kernel" in l or "OpenBLAS" in l
            or "MKL-DNN" in l or "oneDNN" in l]
    build = [s for s in cfg.replace(",", "\n").splitlines() if "BLAS_INFO" in s]
    return "; ".join(info + [b.strip() for b in build])


def run(args, T):
    torch.manual_seed(0)
    if args.model == "gpt2":
        model, V = GPT2(attn=args.attn), 50257
    else:
        model, V = TinyLlama(attn=args.attn), 64
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, V, (args.B, T), generator=g)
    y = torch.randint(0, V, (args.B, T), generator=g)

    def step():
        # --bf16: autocast's mixed precision (bf16 matmuls, fp32 master
        # weights), PyTorch's counterpart of ponder's model.precision: bf16
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.view(-1, V).float(), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    nparams = sum(p.numel() for p in model.parameters())
    return {
        "bench": "torch_train_step", "model": args.model, "attn": args.attn,
        "precision": "bf16-autocast" if args.bf16 else "fp32",
        "params": nparams, "B": args.B, "T": T, "threads": torch.get_num_threads(),
        "warmup": args.warmup, "steps": args.steps,
        "step_s_median": round(med, 4), "step_s_min": round(min(times), 4),
        "step_s_max": round(max(times), 4), "tokens_per_s": round(args.B * T / med, 2),
        "tokens_per_s_min": round(args.B * T / max(times), 2),
        "tokens_per_s_max": round(args.B * T / min(times), 2),
        "step_s_all": [round(t, 4) for t in times],
        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "blas": blas_info(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", choices=["gpt2", "tiny-llama"], default="gpt2")
    ap.add_argument("--B", type=int, default=None, help="batch (default 4 gpt2, 16 tiny-llama)")
    ap.add_argument("--T", default=None,
                    help="sequence lengths, comma-separated (default 64,256 gpt2, 64 tiny-llama)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--attn", choices=["sdpa", "manual"], default="sdpa")
    ap.add_argument("--bf16", action="store_true", help="autocast to bf16 (fp32 master weights)")
    args = ap.parse_args()
    if args.B is None:
        args.B = 4 if args.model == "gpt2" else 16
    if args.T is None:
        args.T = "64,256" if args.model == "gpt2" else "64"
    torch.set_num_threads(args.threads)
    for T in (int(t) for t in args.T.split(",")):
        print(json.dumps(run(args, T)), flush=True)


if __name__ == "__main__":
    main()
