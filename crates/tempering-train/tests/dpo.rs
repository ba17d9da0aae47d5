//! The DPO-family and KTO objectives on the tiny fixture model: at initialisation (reference = policy)
//! the sigmoid loss is log 2 and the rewards zero, for LoRA (adapters off) and full fine-tuning
//! (frozen copy); precomputed reference log-probs give the same loss; the sequence log-probs equal a
//! plain forward pass; training raises the chosen-over-rejected margin; conversational data and
//! prompt truncation that never cuts a completion.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use tempering_model::{LoraConfig, LoraTarget, Transformer};
use tempering_tasks::dataset::{Message, PreferenceExample, TextOrChat, UnpairedExample};
use tempering_train::dpo::logps::completion_logps;
use tempering_train::dpo::{
    prepare_pairs, prepare_unpaired, DpoObjective, KtoObjective, KtoParams, LossParams,
    PairSequence, PreferenceDataOptions, PreferenceLoss, Reference,
};
use tempering_train::objective::{Mode, StepContext};
use tempering_train::{metrics, Objective, Rng, ScheduleKind, TrainConfig, Trainer};

const PAIRS: [(&str, &str, &str); 6] = [
    ("2+2=", "4", "5"),
    ("3+1=", "4", "7"),
    ("1+1=", "2", "3"),
    ("5-2=", "3", "1"),
    ("4+4=", "8", "6"),
    ("9-3=", "6", "2"),
];

fn text(s: &str) -> TextOrChat {
    TextOrChat::Text(s.to_string())
}

fn pairs(dir: &Path) -> Vec<PairSequence> {
    let (tok, tmpl) = common::char_tokenizer(dir);
    let examples: Vec<(usize, PreferenceExample)> = PAIRS
        .iter()
        .enumerate()
        .map(|(i, (p, c, r))| {
            (
                i + 1,
                PreferenceExample {
                    prompt: text(p),
                    chosen: text(c),
                    rejected: text(r),
                },
            )
        })
        .collect();
    let (seqs, report) = prepare_pairs(
        &examples,
        Path::new("prefs.jsonl"),
        &tok,
        Some(&tmpl),
        &PreferenceDataOptions::default(),
    )
    .unwrap();
    assert_eq!(report.kept, PAIRS.len());
    seqs
}

fn lora_policy() -> (Transformer, Vec<(String, candle_core::Var)>) {
    let mut m = common::tiny_model();
    let cfg = LoraConfig::new(4, 8.0, 0.0, vec![LoraTarget::Q, LoraTarget::V]);
    let vars = m.add_lora(&cfg, 3).unwrap();
    (m, vars)
}

fn eval_loss<O: Objective>(o: &mut O, batch: &[&O::Example]) -> (f64, Vec<(String, f64)>, f64) {
    let mut rng = Rng::derived(1, 0);
    let mut ctx = StepContext {
        mode: Mode::Eval,
        step: 0,
        rng: &mut rng,
    };
    let out = o.loss(batch, &mut ctx).unwrap();
    let loss = out
        .loss_sum
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    (loss / out.weight, out.metrics, out.weight)
}

fn metric(m: &[(String, f64)], k: &str, w: f64) -> f64 {
    m.iter().find(|(n, _)| n == k).map(|(_, v)| v / w).unwrap()
}

#[test]
fn at_initialisation_the_loss_is_log_2_and_rewards_are_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = pairs(dir.path());
    let batch: Vec<&PairSequence> = data.iter().collect();
    let params = LossParams::new(PreferenceLoss::Sigmoid, 0.1);

    // LoRA: B starts at zero, so the policy is its base; the reference is the base, adapters off.
    let (policy, _) = lora_policy();
    let reference = Reference::for_policy(&params, &policy, None).unwrap();
    let mut lora = DpoObjective::new(policy, reference, params, 0).unwrap();
    // Full fine-tuning: the frozen copy taken before the weights became trainable.
    let mut model = common::tiny_model();
    let frozen = model.clone();
    model.make_trainable(|_| true).unwrap();
    let reference = Reference::for_policy(&params, &model, Some(frozen)).unwrap();
    let mut full = DpoObjective::new(model, reference, params, 0).unwrap();
    for (name, (loss, m, w)) in [
        ("lora", eval_loss(&mut lora, &batch)),
        ("full", eval_loss(&mut full, &batch)),
    ] {
        assert!(
            (loss - std::f64::consts::LN_2).abs() < 1e-9,
            "{name}: {loss}"
        );
        for k in ["rewards/chosen", "rewards/rejected", "rewards/margins"] {
            assert_eq!(metric(&m, k, w), 0.0, "{name}: {k}");
        }
        assert!(metric(&m, "logps/chosen", w) < 0.0);
    }
    // Full fine-tuning without a reference is an error that names the key.
    let mut model = common::tiny_model();
    model.make_trainable(|_| true).unwrap();
    let e = Reference::for_policy(&params, &model, None).err().unwrap();
    assert!(e.to_string().contains("ref_model"), "{e}");
}

#[test]
fn completion_logps_equal_a_plain_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let data = pairs(dir.path());
    let model = common::tiny_model();
    let rows: Vec<_> = data
        .iter()
        .map(|p| &p.chosen)
        .chain(data.iter().map(|p| &p.rejected))
        .collect();
    let got = completion_logps(&model, &rows, 0).unwrap();
    let sums = got.sums.to_vec1::<f32>().unwrap();
    for (i, row) in rows.iter().enumerate() {
        let input = Tensor::new(row.ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let logits = model.forward_causal(&input).unwrap().squeeze(0).unwrap();
        let lsm = tempering_model::ops::log_softmax_last_dim(&logits).unwrap();
        let lsm = lsm.to_vec2::<f32>().unwrap();
        let want: f32 = (row.start..row.len())
            .map(|j| lsm[j - 1][row.ids[j] as usize])
            .sum();
        assert!(
            (sums[i] - want).abs() < 1e-4,
            "row {i}: {} vs {want}",
            sums[i]
        );
        assert_eq!(got.lengths[i], row.completion_len());
    }
}

#[test]
fn precomputed_reference_gives_the_same_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = pairs(dir.path());
    let params = LossParams::new(PreferenceLoss::Ipo, 0.3);
    // A policy that differs from its reference: LoRA B set to non-zero values.
    let (policy, vars) = lora_policy();
    for (name, v) in &vars {
        if name.contains("lora_B") {
            v.set(
                &v.as_tensor()
                    .ones_like()
                    .unwrap()
                    .affine(0.01, 0.0)
                    .unwrap(),
            )
            .unwrap();
        }
    }
    let reference = Reference::for_policy(&params, &policy, None).unwrap();
    let mut live = DpoObjective::new(policy.clone(), reference, params, 0).unwrap();
    let batch: Vec<&PairSequence> = data.iter().collect();
    let (want, _, _) = eval_loss(&mut live, &batch);
    let reference = Reference::for_policy(&params, &policy, None).unwrap();
    let mut pre = DpoObjective::new(policy, reference, params, 0).unwrap();
    pre.precompute_reference(&mut [&mut data], 4).unwrap();
    assert!(data.iter().all(|p| p.reference.is_some()));
    let batch: Vec<&PairSequence> = data.iter().collect();
    let (got, _, _) = eval_loss(&mut pre, &batch);
    assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    assert!(
        (want - 1.0 / (2.0 * 0.3f64).powi(2)).abs() > 1e-6,
        "the policy moved"
    );
}

fn train_config(steps: usize) -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        schedule: ScheduleKind::Constant,
        max_steps: steps,
        batch_size: 3,
        progress: false,
        ..Default::default()
    }
}

#[test]
fn training_separates_chosen_from_rejected_for_every_loss() {
    let dir = tempfile::tempdir().unwrap();
    let data = pairs(&dir.path().join("tok"));
    for loss in PreferenceLoss::ALL {
        let mut params = LossParams::new(
            loss,
            if loss == PreferenceLoss::Simpo {
                2.0
            } else {
                0.1
            },
        );
        params.label_smoothing = if loss == PreferenceLoss::Robust {
            0.1
        } else {
            0.0
        };
        let (policy, vars) = lora_policy();
        let reference = Reference::for_policy(&params, &policy, None).unwrap();
        let mut o = DpoObjective::new(policy, reference, params, 0).unwrap();
        let run = dir.path().join(loss.name());
        let mut t = Trainer::new(train_config(12), vars, &run).unwrap();
        t.fit(&mut o, &data, Some(&data)).unwrap();
        let recs = metrics::read(&run.join("metrics.jsonl")).unwrap();
        let first = &recs[0];
        let eval = recs.last().unwrap();
        let margin =
            |r: &serde_json::Map<String, serde_json::Value>, k: &str| r[k].as_f64().unwrap();
        // The implicit reward margin grows (from 0 where the loss has a reference).
        assert!(
            margin(eval, "eval_rewards/margins") > margin(first, "rewards/margins") + 1e-3,
            "{loss}: {} -> {}",
            margin(first, "rewards/margins"),
            margin(eval, "eval_rewards/margins")
        );
        assert!(margin(eval, "eval_rewards/accuracies") >= 0.5, "{loss}");
        for k in [
            "rewards/chosen",
            "rewards/rejected",
            "logps/chosen",
            "logps/rejected",
        ] {
            assert!(first.contains_key(k), "{loss}: no {k} in {first:?}");
        }
    }
}

#[test]
fn kto_starts_at_one_half_and_learns_the_labels() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, tmpl) = common::char_tokenizer(dir.path());
    let examples: Vec<(usize, UnpairedExample)> = PAIRS
        .iter()
        .flat_map(|(p, c, r)| {
            [
                UnpairedExample {
                    prompt: text(p),
                    completion: text(c),
                    label: true,
                },
                UnpairedExample {
                    prompt: text(p),
                    completion: text(r),
                    label: false,
                },
            ]
        })
        .enumerate()
        .map(|(i, e)| (i + 1, e))
        .collect();
    let (data, _) = prepare_unpaired(
        &examples,
        Path::new("kto.jsonl"),
        &tok,
        Some(&tmpl),
        &PreferenceDataOptions::default(),
    )
    .unwrap();
    // The KL completion of row i is row i-1's completion, with row i's prompt.
    assert_eq!(
        data[1].kl.ids[data[1].kl.start..],
        data[0].seq.ids[data[0].seq.start..]
    );
    let params = KtoParams {
        beta: 0.1,
        desirable_weight: 1.0,
        undesirable_weight: 1.0,
    };
    let (policy, vars) = lora_policy();
    let reference = Reference::Model(Box::new(policy.without_adapters()));
    let mut o = KtoObjective::new(policy, reference, params, 0).unwrap();
    let batch: Vec<_> = data.iter().collect();
    let (loss, m, w) = eval_loss(&mut o, &batch);
    assert!((loss - 0.5).abs() < 1e-9, "{loss}");
    assert_eq!(metric(&m, "kl", w), 0.0);
    let run = dir.path().join("run");
    let mut t = Trainer::new(train_config(12), vars, &run).unwrap();
    t.fit(&mut o, &data, Some(&data)).unwrap();
    let recs = metrics::read(&run.join("metrics.jsonl")).unwrap();
    let eval = recs.last().unwrap();
    assert!(eval["eval_loss"].as_f64().unwrap() < 0.5, "{eval:?}");
    assert!(
        eval["eval_rewards/margins"].as_f64().unwrap() > 0.0,
        "{eval:?}"
    );
}

#[test]
fn conversations_and_truncation_never_cut_a_completion() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, tmpl) = common::char_tokenizer(dir.path());
    let msg = |role: &str, content: &str| Message {
        role: role.into(),
        content: content.into(),
    };
    let examples = vec![
        (
            1,
            PreferenceExample {
                prompt: TextOrChat::Chat(vec![msg("user", "What is 2+2?")]),
                chosen: TextOrChat::Chat(vec![msg("assistant", "4")]),
                rejected: TextOrChat::Chat(vec![msg("assistant", "five")]),
            },
        ),
        (
            2,
            PreferenceExample {
                prompt: text("a long prompt that will not fit whole"),
                chosen: text("yes"),
                rejected: text("no"),
            },
        ),
        (
            3,
            PreferenceExample {
                prompt: text("p"),
                chosen: text("a completion far too long to fit in twenty tokens"),
                rejected: text("no"),
            },
        ),
    ];
    let opts = PreferenceDataOptions {
        max_length: 20,
        max_prompt_length: 0,
    };
    let (seqs, report) =
        prepare_pairs(&examples, Path::new("p.jsonl"), &tok, Some(&tmpl), &opts).unwrap();
    assert_eq!(report.dropped_lines, vec![3]);
    assert_eq!(seqs.len(), 2);
    // The conversation: the chosen completion is the assistant turn as the template renders it.
    let text =
        |ids: &[u32]| -> String { ids.iter().map(|&i| tok.id_to_piece(i).unwrap()).collect() };
    let c = &seqs[0].chosen;
    assert_eq!(text(&c.ids[c.start..]), "4</s>", "{}", text(&c.ids));
    assert!(text(&c.ids[..c.start]).ends_with("2+2?</s><|assistant|>"));
    // The long prompt lost its start; both completions are whole, with EOS.
    let (c, r) = (&seqs[1].chosen, &seqs[1].rejected);
    assert_eq!(c.len(), 20);
    assert_eq!(text(&c.ids[c.start..]), "yes</s>");
    assert_eq!(text(&r.ids[r.start..]), "no</s>");
    assert!(text(&c.ids[..c.start]).ends_with("fit whole"));
    assert!(!text(&c.ids[..c.start]).starts_with("a long"));
    assert_eq!(
        report.prompts_truncated, 2,
        "both kept rows had their prompt shortened"
    );
    let summary = report.summary(Path::new("p.jsonl"), &opts);
    assert!(
        summary.contains("1 dropped") && summary.contains("lines 3"),
        "{summary}"
    );
}
