#!/usr/bin/env python3
"""algos_golden.py — golden data for ponder's advantage estimators and losses
(tests/data/algos_golden.h5, checked by tests/test_algos_golden.c).

An independent float64 PyTorch transcription of the formulas as TRL's
GRPOTrainer and verl's core_algos implement them (METHODS.md 1.2, 1.5, 1.6,
1.7): written from METHODS.md's description in the shape of those libraries'
code (tensors, masks, autograd for the gradients), sharing nothing with the C
implementation. Inputs are drawn in float64, rounded to float32 (what the C
side receives) and stored as float32; the references run in float64 on those
rounded values. Per-token gradients come from torch.autograd.

File layout: one HDF5 group per case. Each holds
  /<case>/in/<name>    inputs (float32 per-token [S,T] arrays, float64 rewards,
                       int64 group ids)
  /<case>/param/<name> float64 scalars: the settings the C test must use
  /<case>/out/<name>   expected outputs (float64)
Cases:
  grpo_trl            TRL advantages, scale_rewards group / batch / none, G = 4
  rloo_verl           verl RLOO (groups of 1..4), per token
  rpp_baseline_verl   verl REINFORCE++-baseline (groups of 1..4), per token
  rpp_verl            verl apply_kl_penalty (k1) + REINFORCE++ returns/whitening
  gae_verl            verl GAE (mask with holes) + masked_whiten; returns
  policy_trl_<loss_type>_<level>  TRL clipped surrogate + beta*k3, loss and
                      d loss / d logp; loss_type grpo/bnpo/dr_grpo/dapo, level
                      token/sequence
  policy_verl_<mode>  verl vanilla policy loss (log-ratio clamp 20, dual clip
                      3.0) + low_var_kl loss (clamped) - entropy bonus, loss_agg
                      token-mean / seq-mean-token-mean; d/d logp, d/d entropy
  value_verl          verl compute_value_loss (cliprange 0.5, token-mean)
  bt                  Bradley-Terry -logsigmoid(c - r).mean()
  kl_ctl_verl         AdaptiveKLController over a sequence of updates

Usage: python algos_golden.py [--out DIR]   (default tests/data)
"""

import argparse
import os
from collections import defaultdict

import h5py
import numpy as np
import torch

DT = torch.float64
SEED = 20240611


# ------------------------------------------------------------------ helpers --
def f32(x):
    """Round to float32 (what C receives), back to float64 for the reference."""
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def t(x):
    return torch.tensor(np.asarray(x, dtype=np.float64), dtype=DT)


def right_padded_mask(lengths, T):
    m = np.zeros((len(lengths), T))
    for i, n in enumerate(lengths):
        m[i, :n] = 1.0
    return m


# verl utils/torch_functional (METHODS.md 1.5): masked mean, Bessel var, whiten.
def masked_mean(values, mask, axis=None):
    return (values * mask).sum(axis=axis) / mask.sum(axis=axis)


def masked_var(values, mask):
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    mask_sum = mask.sum()
    return variance * (mask_sum / (mask_sum - 1))


def masked_whiten(values, mask):
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    return (values - mean) * torch.rsqrt(var + 1e-8)


def place_scores(scores, mask):
    """verl reward manager: the score on the last valid token."""
    out = torch.zeros_like(mask)
    for i in range(mask.shape[0]):
        idx = torch.nonzero(mask[i]).flatten()
        if len(idx):
            out[i, idx[-1]] = scores[i]
    return out


# ------------------------------------------------------------- advantages --
def trl_grpo(rewards, G, scale):
    """TRL GRPOTrainer._generate_and_score_completions (METHODS.md 1.2)."""
    grouped = rewards.view(-1, G)
    mean = grouped.mean(dim=1).repeat_interleave(G)
    if scale == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        std = grouped.std(dim=1).repeat_interleave(G)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return adv


def verl_rloo(token_level_rewards, mask, index):
    scores = token_level_rewards.sum(dim=-1)
    id2score, id2mean = defaultdict(list), {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        id2mean[idx] = torch.tensor(0.0, dtype=DT) if len(id2score[idx]) == 1 else torch.mean(
            torch.stack(id2score[idx]))
    for i in range(len(scores)):
        n = len(id2score[index[i]])
        if n > 1:
            scores[i] = scores[i] * n / (n - 1) - id2mean[index[i]] * n / (n - 1)
    return scores.unsqueeze(-1) * mask


def verl_rpp_baseline(token_level_rewards, mask, index):
    scores = token_level_rewards.sum(dim=-1)
    id2score, id2mean = defaultdict(list), {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        id2mean[idx] = torch.tensor(0.0, dtype=DT) if len(id2score[idx]) == 1 else torch.mean(
            torch.stack(id2score[idx]))
    for i in range(len(scores)):
        scores[i] = scores[i] - id2mean[index[i]]
    scores = scores.unsqueeze(-1).tile([1, mask.shape[1]]) * mask
    return masked_whiten(scores, mask) * mask


def verl_kl_penalty(logprob, ref_logprob, kind):
    if kind == "k1":
        return logprob - ref_logprob
    if kind == "k2":
        return 0.5 * (logprob - ref_logprob).square()
    kl = torch.clamp(ref_logprob - logprob, min=-20, max=20)
    return torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)


def verl_apply_kl_penalty(scores_tok, old, ref, mask, beta):
    kld = verl_kl_penalty(old, ref, "k1") * mask
    rewards = scores_tok - beta * kld
    current_kl = torch.mean(masked_mean(kld, mask, axis=-1)).item()
    return rewards, current_kl


def verl_rpp(token_level_rewards, mask, gamma):
    returns = torch.zeros_like(token_level_rewards)
    running = 0
    for k in reversed(range(token_level_rewards.shape[1])):
        running = token_level_rewards[:, k] + gamma * running
        returns[:, k] = running
        running = running * mask[:, k]
    return masked_whiten(returns, mask) * mask, returns


def verl_gae(token_level_rewards, values, mask, gamma, lam):
    nextvalues, lastgaelam, rev = 0, 0, []
    for k in reversed(range(token_level_rewards.shape[-1])):
        delta = token_level_rewards[:, k] + gamma * nextvalues - values[:, k]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, k] * mask[:, k] + (1 - mask[:, k]) * nextvalues
        lastgaelam = lastgaelam_ * mask[:, k] + (1 - mask[:, k]) * lastgaelam
        rev.append(lastgaelam)
    adv = torch.stack(rev[::-1], dim=1)
    returns = adv + values
    return masked_whiten(adv, mask), returns


# ------------------------------------------------------------------ losses --
def trl_policy_loss(logp, old, ref, adv, mask, level, loss_type, eps_lo, eps_hi, beta, L, nitems):
    """TRL GRPOTrainer._compute_loss (METHODS.md 1.2), advantages per token."""
    per_token_kl = torch.exp(ref - logp) - (ref - logp) - 1
    log_ratio = logp - old
    if level == "token":
        log_iw = log_ratio
    else:
        log_iw = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    coef_1 = torch.exp(log_iw)
    coef_2 = torch.clamp(coef_1, 1 - eps_lo, 1 + eps_hi)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv) + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * L)
    else:
        loss = (per_token_loss * mask).sum() / nitems
    cnt = mask.sum().clamp(min=1.0)
    c1 = coef_1.expand_as(adv)  # per-token metrics (ponder's convention)
    low = (((c1 < 1 - eps_lo) & (adv < 0)).double() * mask).sum() / cnt
    high = (((c1 > 1 + eps_hi) & (adv > 0)).double() * mask).sum() / cnt
    kl_mean = (per_token_kl * mask).sum() / cnt
    return loss, dict(clip_low=low, clip_high=high, kl_mean=kl_mean,
                      ratio_mean=(c1 * mask).sum() / cnt)


def verl_agg(loss_mat, mask, mode):
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    seq = torch.sum(loss_mat * mask, dim=-1) / torch.sum(mask, dim=-1)
    return torch.mean(seq)


def verl_policy_loss(logp, old, ref, ent, adv, mask, mode, eps_lo, eps_hi, clip_c, kl_coef, ent_coef):
    """verl compute_policy_loss_vanilla + use_kl_loss (low_var_kl) + entropy (METHODS.md 1.5)."""
    neg_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    ppo_kl = masked_mean(-neg_kl, mask)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - eps_lo, 1 + eps_hi)
    c1 = torch.maximum(pg1, pg2)
    clipfrac = masked_mean(torch.gt(pg2, pg1).double(), mask)
    pg3 = -adv * clip_c
    c2 = torch.min(pg3, c1)
    clipfrac_lower = masked_mean(torch.gt(c1, pg3).double() * (adv < 0).double(), mask)
    pg = torch.where(adv < 0, c2, c1)
    pg_loss = verl_agg(pg, mask, mode)
    kld = verl_kl_penalty(logp, ref, "k3")
    kl_loss = verl_agg(kld, mask, mode)
    ent_loss = verl_agg(ent, mask, mode)
    loss = pg_loss + kl_loss * kl_coef - ent_coef * ent_loss
    return loss, dict(pg_loss=pg_loss, kl_loss=kl_loss, entropy_loss=ent_loss, clipfrac=clipfrac,
                      clipfrac_lower=clipfrac_lower, ppo_kl=ppo_kl, kl_mean=masked_mean(kld, mask))


def verl_value_loss(vpreds, returns, values, mask, cliprange_value):
    vclip = torch.max(torch.min(vpreds, values + cliprange_value), values - cliprange_value)
    l1 = (vpreds - returns) ** 2
    l2 = (vclip - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(l1, l2), mask)
    return loss, masked_mean(torch.gt(l2, l1).double(), mask)


# ------------------------------------------------------------------- cases --
class Writer:
    def __init__(self, path):
        self.f = h5py.File(path, "w", track_order=True)

    def case(self, name, inputs, params, outputs):
        g = self.f.create_group(name)
        for sub, d in (("in", inputs), ("param", params), ("out", outputs)):
            h = g.create_group(sub)
            for k, v in d.items():
                if isinstance(v, torch.Tensor):
                    v = v.detach().numpy()
                arr = np.asarray(v)
                if sub == "in" and arr.dtype == np.float64 and k not in ("rewards", "scores", "kls"):
                    arr = arr.astype(np.float32)
                elif sub != "in":
                    arr = arr.astype(np.float64)
                h.create_dataset(k, data=arr, track_times=False)

    def close(self):
        self.f.close()


def case_grpo(w, rng):
    G, n = 4, 24
    r = rng.integers(0, 3, size=n).astype(np.float64) + rng.normal(0, 0.1, size=n) * (rng.random(n) < 0.5)
    r[4:8] = 1.0  # a group with all rewards equal: std 0 -> A = 0
    group = np.repeat(np.arange(n // G) * 10 + 3, G).astype(np.int64)
    out = {f"adv_{s}": trl_grpo(t(r), G, s) for s in ("group", "batch", "none")}
    w.case("grpo_trl", dict(rewards=r, group=group), dict(std_eps=1e-4), out)


def group_layout(rng, sizes):
    group = np.concatenate([np.full(s, 100 + 7 * k) for k, s in enumerate(sizes)]).astype(np.int64)
    return group, len(group)


def case_outcome_verl(w, rng):
    group, S = group_layout(rng, [4, 1, 3, 2, 4, 1])
    T = 7
    mask = right_padded_mask(rng.integers(1, T + 1, size=S), T)
    scores = rng.normal(0, 1, size=S)
    tok = place_scores(t(scores), t(mask))
    w.case("rloo_verl", dict(rewards=scores, group=group, mask=mask), {},
           dict(adv=verl_rloo(tok.clone(), t(mask), group)))
    w.case("rpp_baseline_verl", dict(rewards=scores, group=group, mask=mask), {},
           dict(adv=verl_rpp_baseline(tok.clone(), t(mask), group)))


def case_rpp(w, rng):
    S, T, beta, gamma = 5, 8, 0.05, 0.99
    mask = right_padded_mask([8, 5, 3, 6, 1], T)
    scores = rng.normal(0, 1, size=S)
    old = f32(rng.normal(-1.5, 0.5, size=(S, T)))
    ref = f32(old + rng.normal(0, 0.2, size=(S, T)))
    rewards, current_kl = verl_apply_kl_penalty(place_scores(t(scores), t(mask)), t(old), t(ref), t(mask), beta)
    adv, returns = verl_rpp(rewards, t(mask), gamma)
    w.case("rpp_verl", dict(scores=scores, mask=mask, old_logp=old, ref_logp=ref),
           dict(kl_coef=beta, gamma=gamma),
           dict(token_rewards=rewards * t(mask), adv=adv, returns=returns * t(mask),
                current_kl=current_kl))


def case_gae(w, rng):
    S, T, gamma, lam = 4, 9, 0.95, 0.9
    mask = right_padded_mask([9, 6, 4, 7], T)
    mask[0, 3] = mask[0, 4] = 0.0  # observation tokens inside a row
    mask[3, 2] = 0.0
    rewards = f32(rng.normal(0, 0.3, size=(S, T)) * mask)
    values = f32(rng.normal(0.2, 0.5, size=(S, T)))
    adv, returns = verl_gae(t(rewards), t(values), t(mask), gamma, lam)
    w.case("gae_verl", dict(mask=mask, token_rewards=rewards, values=values),
           dict(gamma=gamma, lam=lam), dict(adv=adv * t(mask), returns=returns * t(mask)))


def policy_inputs(rng, S, T, lengths, spread):
    mask = right_padded_mask(lengths, T)
    logp = f32(rng.normal(-1.2, 0.6, size=(S, T)).clip(max=-0.01))
    old = f32(logp + rng.normal(0, spread, size=(S, T)))
    ref = f32(logp + rng.normal(0, 0.3, size=(S, T)))
    adv = f32(np.repeat(rng.normal(0, 1, size=(S, 1)), T, axis=1) + rng.normal(0, 0.3, size=(S, T)))
    return mask, logp, old, ref, adv


def case_policy_trl(w, rng):
    S, T = 6, 7
    mask, logp, old, ref, adv = policy_inputs(rng, S, T, [7, 4, 0, 6, 2, 5], 0.3)
    eps_lo, eps_hi, beta, L = 0.2, 0.28, 0.04, 10
    nitems = 19.0  # as if the global batch had more tokens than this micro-batch
    for level in ("token", "sequence"):
        for lt in ("grpo", "bnpo", "dr_grpo", "dapo"):
            lp = t(logp).requires_grad_(True)
            loss, m = trl_policy_loss(lp, t(old), t(ref), t(adv), t(mask), level, lt, eps_lo, eps_hi,
                                      beta, L, nitems)
            loss.backward()
            out = dict(loss=loss, dlogp=lp.grad)
            if level == "token":
                out.update(m)
            w.case(f"policy_trl_{lt}_{level}",
                   dict(mask=mask, logp=logp, old_logp=old, ref_logp=ref, advantages=adv),
                   dict(epsilon_low=eps_lo, epsilon_high=eps_hi, beta=beta,
                        max_completion_length=L, normalizer=nitems,
                        sequence=1.0 if level == "sequence" else 0.0), out)


def case_policy_verl(w, rng):
    S, T = 5, 8
    mask, logp, old, ref, adv = policy_inputs(rng, S, T, [8, 5, 3, 7, 6], 0.6)
    logp[0, 1], old[0, 1], adv[0, 1] = -0.5, -25.5, -1.0  # log-ratio 25 -> clamp 20 and dual clip
    logp[0, 2], old[0, 2], adv[0, 2] = -26.0, -1.0, 0.7   # log-ratio -25 -> clamp -20
    adv = f32(adv)  # 0.7 is not a float32
    ent = f32(rng.uniform(0.1, 3.0, size=(S, T)))
    for mode in ("token-mean", "seq-mean-token-mean"):
        lp = t(logp).requires_grad_(True)
        en = t(ent).requires_grad_(True)
        loss, m = verl_policy_loss(lp, t(old), t(ref), en, t(adv), t(mask), mode, 0.2, 0.28, 3.0,
                                   0.01, 0.01)
        loss.backward()
        name = "token_mean" if mode == "token-mean" else "seq_mean_token_mean"
        w.case(f"policy_verl_{name}",
               dict(mask=mask, logp=logp, old_logp=old, ref_logp=ref, advantages=adv, entropy=ent),
               dict(epsilon_low=0.2, epsilon_high=0.28, clip_ratio_c=3.0, kl_coef=0.01,
                    entropy_coef=0.01, seq_mean=0.0 if mode == "token-mean" else 1.0),
               dict(loss=loss, dlogp=lp.grad, dentropy=en.grad, **m))


def case_value(w, rng):
    S, T = 4, 6
    mask = right_padded_mask([6, 3, 5, 2], T)
    old_v = f32(rng.normal(0, 1, size=(S, T)))
    v = f32(old_v + rng.normal(0, 1.2, size=(S, T)))
    ret = f32(old_v + rng.normal(0, 1.0, size=(S, T)))
    v[0, 0], ret[0, 0] = old_v[0, 0] + 1.0, old_v[0, 0] + 2.0  # the clipped error is larger
    v[1, 1], ret[1, 1] = old_v[1, 1] - 0.9, old_v[1, 1] - 2.0  # likewise, below
    v, ret = f32(v), f32(ret)  # the edits above must be float32 too
    vp = t(v).requires_grad_(True)
    loss, clipfrac = verl_value_loss(vp, t(ret), t(old_v), t(mask), 0.5)
    loss.backward()
    w.case("value_verl", dict(mask=mask, values=v, old_values=old_v, returns=ret),
           dict(clip_range=0.5), dict(loss=loss, dvalues=vp.grad, clip_frac=clipfrac))


def case_bt(w, rng):
    n = 9
    c = f32(rng.normal(0, 2, size=n))
    r = f32(rng.normal(0, 2, size=n))
    c[0], r[0] = 30.0, -10.0  # large margins: the stable softplus path
    c[1], r[1] = -20.0, 15.0
    ct, rt = t(c).requires_grad_(True), t(r).requires_grad_(True)
    loss = -torch.nn.functional.logsigmoid(ct - rt).mean()
    loss.backward()
    w.case("bt", dict(chosen=c, rejected=r), {}, dict(loss=loss, d_chosen=ct.grad, d_rejected=rt.grad))


def case_kl_ctl(w, rng):
    init, target, horizon, n_steps = 0.05, 0.1, 10000.0, 256
    kls = np.array([0.3, 0.02, 0.11, 0.095, 0.5, 0.0])
    value, values = init, []
    for kl in kls:  # verl AdaptiveKLController.update
        err = np.clip(kl / target - 1, -0.2, 0.2)
        value *= 1 + err * n_steps / horizon
        values.append(value)
    w.case("kl_ctl_verl", dict(kls=kls), dict(init=init, target=target, horizon=horizon,
                                              n_steps=n_steps), dict(values=np.array(values)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "data"))
    args = ap.parse_args()
    path = os.path.join(args.out, "algos_golden.h5")
    rng = np.random.default_rng(SEED)
    w = Writer(path)
    for fn in (case_grpo, case_outcome_verl, case_rpp, case_gae, case_policy_trl, case_policy_verl,
               case_value, case_bt, case_kl_ctl):
        fn(w, rng)
    w.close()
    print(f"wrote {os.path.normpath(path)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
