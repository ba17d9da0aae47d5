"""GRPO losses from TRL's own GRPOTrainer._compute_loss on fixed inputs, for tests/grpo_trl.rs.

The trainer method is called on a stand-in object carrying only the attributes it reads; the
model forward (`_get_per_token_logps_and_entropies`) is replaced by fixed per-token logprobs that
require grad, so the fixture holds TRL's loss and its gradient with respect to each token's logprob.
Advantages follow GRPOTrainer._generate_and_score_completions (group mean, nanstd, 1e-4), written
out here because TRL computes them inline.

Run: /work/pyref/venv/bin/python scripts/reference/grpo_fixtures.py (TRL version recorded).
"""

import json
import types
from collections import defaultdict

import torch
import trl
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.utils import nanstd

torch.manual_seed(0)
B, T, G = 4, 5, 2
lengths = [5, 3, 4, 1]
mask = torch.zeros(B, T)
for i, n in enumerate(lengths):
    mask[i, :n] = 1
logps = (-torch.rand(B, T) * 2.0).double()
old = logps + (torch.rand(B, T).double() - 0.5) * 0.6
ref = logps + (torch.rand(B, T).double() - 0.5) * 0.8
rewards = torch.tensor([1.0, 0.0, 0.5, 2.0], dtype=torch.float64)


def advantages(scale):
    mean = rewards.view(-1, G).mean(dim=1).repeat_interleave(G)
    if scale == "group":
        std = nanstd(rewards.view(-1, G), dim=1).repeat_interleave(G)
    else:
        std = nanstd(rewards).expand_as(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return adv


class Acc:
    num_processes = 1
    sync_gradients = True

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def trl_loss(loss_type, beta, eps_lo, eps_hi, adv, use_old, max_len=8):
    lp = logps.clone().requires_grad_(True)
    s = types.SimpleNamespace()
    s.top_entropy_quantile = 1.0
    s.aux_loss_enabled = False
    s.off_policy_mask_threshold = None
    s.importance_sampling_level = "token"
    s.beta = beta
    s.args = types.SimpleNamespace(use_bias_correction_kl=False, delta=None)
    s.loss_type = loss_type
    s.epsilon_low = eps_lo
    s.epsilon_high = eps_hi
    s.use_vllm = False
    s.model = types.SimpleNamespace(training=True)
    s.current_gradient_accumulation_steps = 1
    s.max_completion_length = max_len
    s.accelerator = Acc()
    s._entropy_bonus_enabled = False
    s._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    s.args.steps_per_generation = 1
    s._get_per_token_logps_and_entropies = lambda *a, **k: (lp, torch.ones_like(lp), None)
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask,
        "advantages": adv,
        "num_items_in_batch": mask.sum(),
    }
    if use_old:
        inputs["old_per_token_logps"] = old
    if beta != 0.0:
        inputs["ref_per_token_logps"] = ref
    loss = GRPOTrainer._compute_loss(s, None, inputs)
    loss.backward()
    metrics = {k: v[-1] for k, v in s._metrics["train"].items()}
    return loss.item(), lp.grad, metrics


cases = []
for loss_type in ["grpo", "dr_grpo", "dapo", "bnpo"]:
    for scale in ["group", "batch", "none"]:
        for beta, use_old, eps_hi in [(0.0, False, 0.2), (0.04, True, 0.28)]:
            adv = advantages(scale)
            loss, grad, metrics = trl_loss(loss_type, beta, 0.2, eps_hi, adv, use_old)
            cases.append(
                {
                    "loss_type": loss_type,
                    "scale_rewards": scale,
                    "beta": beta,
                    "epsilon_low": 0.2,
                    "epsilon_high": eps_hi,
                    "use_old": use_old,
                    "max_completion_length": 8,
                    "advantages": adv.tolist(),
                    "loss": loss,
                    "grad": [grad[i, : lengths[i]].tolist() for i in range(B)],
                    "metrics": metrics,
                }
            )

kl = {}
d = ref - logps
kl["k1"] = (-d).tolist()
kl["k2"] = (0.5 * d * d).tolist()
kl["k3"] = (torch.exp(d) - d - 1).tolist()

out = {
    "trl_version": trl.__version__,
    "group": G,
    "lengths": lengths,
    "rewards": rewards.tolist(),
    "logps": [logps[i, : lengths[i]].tolist() for i in range(B)],
    "old": [old[i, : lengths[i]].tolist() for i in range(B)],
    "ref": [ref[i, : lengths[i]].tolist() for i in range(B)],
    "kl": {k: [v[i][: lengths[i]] for i in range(B)] for k, v in kl.items()},
    "cases": cases,
}
with open("fixtures/rl/grpo_trl.json", "w") as f:
    json.dump(out, f, indent=1)
print(f"{len(cases)} cases from TRL {trl.__version__}")
