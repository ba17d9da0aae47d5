#!/usr/bin/env python3
"""Golden fixtures for the preference losses (fixtures/dpo/losses.json), computed by TRL's own code.

TRL's loss code lives inside its trainers' loss methods, which read a handful of attributes and call the
model. Each case below builds a minimal stand-in object carrying exactly those attributes and a stand-in
model returning fixed outputs, then calls the unbound TRL method on it:

- DPO family (sigmoid, ipo, hinge, robust, and sigmoid + "sft" as the RPO-style NLL term):
  `DPOTrainer._compute_loss`, with precomputed reference log-probs and a model returning per-token
  log-probs.
- SimPO: `CPOTrainer.get_batch_loss_metrics` (loss_type="simpo", through its `concatenated_forward`,
  `get_batch_logps` and `cpo_loss`) on fixed logits.
- ORPO: `ORPOTrainer.get_batch_loss_metrics` (through `concatenated_forward` and `odds_ratio_loss`) on
  fixed logits. Its NLL term averages over the whole chosen sequence, prompt included (TRL's choice),
  so the case also stores those per-token log-probs (`chosen_sequence_token_logps`).
- KTO: `KTOTrainer._compute_loss`, with precomputed reference log-probs and KL log-probs.

Every case stores the per-token log-probabilities of each completion (what the Rust side sums or
averages itself), the reference sums, the settings, and TRL's loss and logged metrics.

Usage: /work/pyref/venv/bin/python scripts/reference/dpo_fixtures.py [OUT_JSON]
Needs trl (1.16.0 for the committed file), torch, transformers; see setup.sh.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import trl
from trl.experimental.cpo.cpo_trainer import CPOTrainer
from trl.experimental.orpo.orpo_trainer import ORPOTrainer
from trl.trainer.dpo_trainer import DPOTrainer
from trl.trainer.kto_trainer import KTOTrainer

torch.set_default_dtype(torch.float64)
OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures/dpo/losses.json")


class Accelerator:
    device = torch.device("cpu")

    def gather(self, x):
        return x

    def gather_for_metrics(self, x):
        return x

    def unwrap_model(self, m):
        return m


def stand_in(**attrs):
    base = dict(
        accelerator=Accelerator(),
        model=SimpleNamespace(training=True),
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        args=SimpleNamespace(discopop_tau=0.05),
    )
    base.update(attrs)
    return SimpleNamespace(**base)


def random_batch(gen, n_rows, t, lengths):
    """Completion masks (prompt of 2 tokens, then `lengths[i]` completion tokens, then padding)."""
    mask = torch.zeros(n_rows, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, 2 : 2 + n] = 1
    attention = torch.zeros(n_rows, t, dtype=torch.long)
    for i, n in enumerate(lengths):
        attention[i, : 2 + n] = 1
    ids = torch.randint(3, 50, (n_rows, t), generator=gen) * attention
    return ids, attention, mask


def per_token(gen, mask, lo=-3.0, hi=-0.05):
    """Per-token log-probs [rows, t-1] for the shifted completion positions, zero elsewhere."""
    shift = mask[:, 1:]
    lp = lo + (hi - lo) * torch.rand(shift.shape, generator=gen)
    return lp * shift


def token_lists(lp, mask):
    shift = mask[:, 1:].bool()
    return [[float(v) for v in row[m]] for row, m in zip(lp, shift)]


KEPT = ("nll_loss", "log_odds_ratio", "log_odds_chosen", "kl")


def metrics_of(m):
    """The logged rewards/*, logps/* and loss-specific metrics (last value where TRL keeps lists)."""
    out = {}
    for k, v in m.items():
        if k.split("/")[0] in ("rewards", "logps") or k in KEPT:
            out[k] = float(v[-1] if isinstance(v, list) else v)
    return out


def dpo_case(name, gen, loss_types, loss_weights, beta, label_smoothing=0.0, same_ref=False):
    b, t = 4, 9
    chosen_len = [3, 5, 2, 6]
    rejected_len = [4, 2, 6, 3]
    ids, attention, mask = random_batch(gen, 2 * b, t, chosen_len + rejected_len)
    lp = per_token(gen, mask)
    sums = lp.sum(1)
    if same_ref:
        ref = sums.clone()
    else:
        ref = sums + torch.empty_like(sums).uniform_(-1.5, 1.5, generator=gen)
    outputs = SimpleNamespace(
        log_probs=lp,
        entropy=torch.zeros_like(lp),
        mean_logits=torch.zeros_like(lp),
        is_top1=torch.zeros_like(lp, dtype=torch.bool),
    )
    model = lambda **kw: outputs  # noqa: E731
    s = stand_in(
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=loss_types,
        loss_weights=loss_weights,
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
    )
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "completion_mask": mask,
        "ref_chosen_logps": ref[:b],
        "ref_rejected_logps": ref[b:],
    }
    loss = DPOTrainer._compute_loss(s, model, inputs, return_outputs=False)
    tokens = token_lists(lp, mask)
    expected = metrics_of(s._metrics["train"])
    expected["loss"] = float(loss)
    rpo_alpha = dict(zip(loss_types, loss_weights)).get("sft", 0.0)
    return {
        "name": name,
        "trainer": "DPOTrainer._compute_loss",
        "loss_type": loss_types[0],
        "beta": beta,
        "label_smoothing": label_smoothing,
        "rpo_alpha": rpo_alpha,
        "chosen_token_logps": tokens[:b],
        "rejected_token_logps": tokens[b:],
        "ref_chosen_logps": [float(x) for x in ref[:b]],
        "ref_rejected_logps": [float(x) for x in ref[b:]],
        "expected": expected,
    }


def pair_logits_batch(gen, b, t, v, chosen_len, rejected_len):
    """Fixed logits [2b, t, v] and TRL-style per-side batches (labels -100 outside completions)."""
    logits = 2.0 * torch.randn(2 * b, t, v, generator=gen)
    batch = {}
    rows = {}
    for side, lens, off in (("chosen", chosen_len, 0), ("rejected", rejected_len, b)):
        ids, attention, mask = random_batch(gen, b, t, lens)
        labels = ids.masked_fill(mask == 0, -100)
        batch[f"{side}_input_ids"] = ids
        batch[f"{side}_attention_mask"] = attention
        batch[f"{side}_labels"] = labels
        # Per-token log-probs of the completion tokens exactly as TRL computes them.
        lab = labels[:, 1:].clone()
        keep = lab != -100
        lab[~keep] = 0
        lp = trl.trainer.utils.selective_log_softmax(logits[off : off + b, :-1, :], lab)
        rows[side] = [[float(x) for x in r[k]] for r, k in zip(lp, keep)]
        # Every attended token after the first (prompt included): what ORPO's NLL averages.
        full = ids[:, 1:].clone()
        attended = attention[:, 1:] == 1
        lp_full = trl.trainer.utils.selective_log_softmax(logits[off : off + b, :-1, :], full)
        rows[f"{side}_full"] = [[float(x) for x in r[k]] for r, k in zip(lp_full, attended)]
    return logits, batch, rows


def cpo_case(name, gen, beta, simpo_gamma, cpo_alpha, label_smoothing=0.0):
    b, t, v = 3, 8, 64
    logits, batch, rows = pair_logits_batch(gen, b, t, v, [3, 5, 2], [4, 2, 5])
    model = lambda *a, **kw: SimpleNamespace(logits=logits)  # noqa: E731
    s = stand_in(
        is_encoder_decoder=False,
        pad_token_id=0,
        loss_type="simpo",
        alpha=0.0,
        beta=beta,
        simpo_gamma=simpo_gamma,
        cpo_alpha=cpo_alpha,
        label_smoothing=label_smoothing,
    )
    s.concatenated_inputs = CPOTrainer.concatenated_inputs
    s.get_batch_logps = CPOTrainer.get_batch_logps
    s.concatenated_forward = lambda m, bt: CPOTrainer.concatenated_forward(s, m, bt)
    s.cpo_loss = lambda c, r: CPOTrainer.cpo_loss(s, c, r)
    loss, metrics = CPOTrainer.get_batch_loss_metrics(s, model, batch)
    expected = metrics_of(metrics)
    expected["loss"] = float(loss)
    return {
        "name": name,
        "trainer": "CPOTrainer.get_batch_loss_metrics (loss_type=simpo)",
        "loss_type": "simpo",
        "beta": beta,
        "simpo_gamma": simpo_gamma,
        "rpo_alpha": cpo_alpha,
        "label_smoothing": label_smoothing,
        "chosen_token_logps": rows["chosen"],
        "rejected_token_logps": rows["rejected"],
        "expected": expected,
    }


def orpo_case(name, gen, beta):
    b, t, v = 3, 8, 64
    logits, batch, rows = pair_logits_batch(gen, b, t, v, [2, 4, 5], [5, 3, 2])
    model = lambda *a, **kw: SimpleNamespace(logits=logits)  # noqa: E731
    s = stand_in(is_encoder_decoder=False, padding_value=0, beta=beta)
    s.concatenated_inputs = ORPOTrainer.concatenated_inputs
    s.get_batch_logps = ORPOTrainer.get_batch_logps
    s.concatenated_forward = lambda m, bt: ORPOTrainer.concatenated_forward(s, m, bt)
    s.odds_ratio_loss = lambda c, r: ORPOTrainer.odds_ratio_loss(s, c, r)
    loss, metrics = ORPOTrainer.get_batch_loss_metrics(s, model, batch)
    expected = metrics_of(metrics)
    expected["loss"] = float(loss)
    return {
        "name": name,
        "trainer": "ORPOTrainer.get_batch_loss_metrics",
        "loss_type": "orpo",
        "beta": beta,
        "rpo_alpha": 1.0,
        "chosen_sequence_token_logps": rows["chosen_full"],
        "chosen_token_logps": rows["chosen"],
        "rejected_token_logps": rows["rejected"],
        "expected": expected,
    }


def kto_case(name, gen, beta, desirable_weight, undesirable_weight, labels):
    n, t = len(labels), 9
    lens = [3, 5, 2, 6, 4, 3][:n]
    kl_lens = lens[-1:] + lens[:-1]  # TRL pairs each prompt with the previous example's completion
    ids, attention, mask = random_batch(gen, n, t, lens)
    kl_ids, kl_attention, kl_mask = random_batch(gen, n, t, kl_lens)
    lp = per_token(gen, mask)
    kl_lp = per_token(gen, kl_mask)
    ref = lp.sum(1) + torch.empty(n).uniform_(-1.5, 1.5, generator=gen)
    ref_kl = kl_lp.sum(1) + torch.empty(n).uniform_(-1.0, 0.5, generator=gen)
    outputs = SimpleNamespace(
        log_probs=lp,
        entropy=torch.zeros_like(lp),
        mean_logits=torch.zeros_like(lp),
    )
    model = lambda **kw: outputs  # noqa: E731
    s = stand_in(
        calculate_KL=True,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    s._compute_kl_logps = lambda m, bt: kl_lp.sum(1)
    inputs = {
        "input_ids": ids,
        "attention_mask": attention,
        "completion_mask": mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": kl_attention,
        "KL_completion_mask": kl_mask,
        "label": torch.tensor(labels),
        "ref_logps": ref,
        "ref_KL_logps": ref_kl,
    }
    loss = KTOTrainer._compute_loss(s, model, inputs, return_outputs=False)
    expected = metrics_of(s._metrics["train"])
    expected["loss"] = float(loss)
    return {
        "name": name,
        "trainer": "KTOTrainer._compute_loss",
        "loss_type": "kto",
        "beta": beta,
        "desirable_weight": desirable_weight,
        "undesirable_weight": undesirable_weight,
        "labels": labels,
        "token_logps": token_lists(lp, mask),
        "kl_token_logps": token_lists(kl_lp, kl_mask),
        "ref_logps": [float(x) for x in ref],
        "ref_kl_logps": [float(x) for x in ref_kl],
        "expected": expected,
    }


def main():
    gen = torch.Generator().manual_seed(7)
    cases = [
        dpo_case("sigmoid", gen, ["sigmoid"], [1.0], beta=0.1),
        dpo_case("sigmoid_beta_0.5", gen, ["sigmoid"], [1.0], beta=0.5),
        dpo_case("sigmoid_reference_equals_policy", gen, ["sigmoid"], [1.0], beta=0.1, same_ref=True),
        dpo_case("ipo", gen, ["ipo"], [1.0], beta=0.1),
        dpo_case("hinge", gen, ["hinge"], [1.0], beta=0.2),
        dpo_case("robust", gen, ["robust"], [1.0], beta=0.1, label_smoothing=0.1),
        dpo_case("sigmoid_with_nll", gen, ["sigmoid", "sft"], [1.0, 0.5], beta=0.1),
        cpo_case("simpo", gen, beta=2.0, simpo_gamma=0.5, cpo_alpha=0.0),
        cpo_case("simpo_with_nll", gen, beta=2.5, simpo_gamma=1.0, cpo_alpha=1.0, label_smoothing=0.1),
        orpo_case("orpo", gen, beta=0.1),
        kto_case("kto", gen, beta=0.1, desirable_weight=1.0, undesirable_weight=1.0,
                 labels=[True, False, True, True, False, False]),
        kto_case("kto_weighted", gen, beta=0.3, desirable_weight=1.33, undesirable_weight=0.8,
                 labels=[False, True, True, False, True]),
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "produced_by": "scripts/reference/dpo_fixtures.py",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "cases": cases,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT}")
    for c in cases:
        print(f"  {c['name']:<34} loss {c['expected']['loss']:.6f}")


if __name__ == "__main__":
    main()
