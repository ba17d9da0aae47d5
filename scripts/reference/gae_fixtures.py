"""Fixtures for PPO/TRPO's numbers: per-token RLHF rewards, GAE, whitening, explained variance, the
adaptive KL controller and PPO's clipped policy and value losses, from a plain NumPy reference written
from the formulas (Schulman et al. 2016 for GAE; Ziegler et al. 2019 and TRL's PPO trainer for the
reward, whitening, controller and losses). GAE is computed in closed form as a discounted sum of TD
residuals (a matrix product), not by the backward recursion the Rust code uses.

    python scripts/reference/gae_fixtures.py      # writes fixtures/rl/actor_critic.json

Deterministic: inputs come from a seeded generator and are rounded to float32 (what the Rust side
feeds its f32 tensors); the reference arithmetic is float64.
"""

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "rl" / "actor_critic.json"


def f32(x):
    return np.asarray(x, dtype=np.float32).astype(np.float64)


def kl(logp, ref, est):
    d = ref - logp
    if est == "k1":
        return -d
    if est == "k2":
        return 0.5 * d * d
    return np.exp(d) - d - 1.0


def token_rewards(score, logp, ref, coef, est):
    r = -coef * kl(logp, ref, est)
    r[-1] += score
    return r


def gae_closed_form(r, v, gamma, lam):
    n = len(r)
    v_next = np.append(v[1:], 0.0)
    delta = r + gamma * v_next - v
    # A_t = sum_{l >= 0} (gamma lam)^l delta_{t+l}: an upper-triangular matrix of powers.
    idx = np.arange(n)
    power = idx[None, :] - idx[:, None]
    m = np.where(power >= 0, (gamma * lam) ** np.maximum(power, 0), 0.0)
    adv = m @ delta
    return adv, adv + v


def whiten(x, shift_mean):
    mean = x.mean()
    var = x.var(ddof=1) if len(x) > 1 else 0.0
    w = (x - mean) / np.sqrt(var + 1e-8)
    return w if shift_mean else w + mean


def explained_variance(v, ret):
    return 1.0 - np.var(ret - v) / np.var(ret)


def ppo_losses(lp, old, adv, v, old_v, ret, clip, clip_v):
    ratio = np.exp(lp - old)
    pg = np.maximum(-adv * ratio, -adv * np.clip(ratio, 1 - clip, 1 + clip))
    vc = np.clip(v, old_v - clip_v, old_v + clip_v)
    vf = 0.5 * np.maximum((v - ret) ** 2, (vc - ret) ** 2)
    return pg, vf


def main():
    rng = np.random.default_rng(20240909)
    cases = []
    for i, (n, gamma, lam, est) in enumerate(
        [(1, 1.0, 0.95, "k1"), (5, 1.0, 0.95, "k1"), (7, 0.99, 0.9, "k3"), (12, 0.9, 0.5, "k2"), (4, 1.0, 1.0, "k1")]
    ):
        logp = f32(-rng.gamma(1.0, 1.0, n))
        ref = f32(logp + rng.normal(0, 0.3, n))
        values = f32(rng.normal(0, 1, n))
        score = float(f32(rng.normal(0.5, 1.0)))
        coef = 0.05 * (i + 1)
        r = token_rewards(score, logp, ref, coef, est)
        adv, ret = gae_closed_form(r, values, gamma, lam)
        cases.append(
            dict(score=score, logprobs=logp.tolist(), ref_logprobs=ref.tolist(), kl_coef=coef,
                 estimator=est, values=values.tolist(), gamma=gamma, lam=lam,
                 rewards=r.tolist(), advantages=adv.tolist(), returns=ret.tolist())
        )
    x = f32(rng.normal(1.5, 2.0, 23))
    v = f32(rng.normal(0, 1, 23))
    ret = f32(v + rng.normal(0, 0.5, 23))

    n = 40
    lp = f32(-rng.gamma(1.0, 1.0, n))
    old = f32(lp + rng.normal(0, 0.25, n))
    adv = f32(rng.normal(0, 1, n))
    val = f32(rng.normal(0, 1, n))
    old_v = f32(val + rng.normal(0, 0.3, n))
    rets = f32(rng.normal(0, 1, n))
    clip, clip_v = 0.2, 0.2
    pg, vf = ppo_losses(lp, old, adv, val, old_v, rets, clip, clip_v)

    ctl = dict(init=0.2, target=6.0, horizon=10000.0, updates=[[3.0, 64], [12.0, 64], [6.3, 128], [0.0, 32], [7.0, 512]])
    value, values_after = ctl["init"], []
    for cur, ns in ctl["updates"]:
        err = np.clip(cur / ctl["target"] - 1.0, -0.2, 0.2)
        value *= 1.0 + err * ns / ctl["horizon"]
        values_after.append(value)
    ctl["values"] = values_after

    out = dict(
        gae=cases,
        whiten=dict(x=x.tolist(), shift=whiten(x, True).tolist(), keep_mean=whiten(x, False).tolist()),
        explained_variance=dict(values=v.tolist(), returns=ret.tolist(), ev=float(explained_variance(v, ret))),
        ppo_loss=dict(logprobs=lp.tolist(), old_logprobs=old.tolist(), advantages=adv.tolist(),
                      values=val.tolist(), old_values=old_v.tolist(), returns=rets.tolist(),
                      clip=clip, clip_value=clip_v, pg=pg.tolist(), vf=vf.tolist(),
                      pg_mean=float(pg.mean()), vf_mean=float(vf.mean()),
                      clipfrac=float(np.mean(np.abs(np.exp(lp - old) - 1.0) > clip))),
        kl_controller=ctl,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
