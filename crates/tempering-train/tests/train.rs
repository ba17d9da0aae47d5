//! The trainer and the SFT objective on the tiny fixture model: the loss falls and memorised
//! completions come back, kill-and-resume equals an uninterrupted run, accumulation equals a larger
//! batch, every trainable parameter gets a gradient, and bad input fails clearly.

mod common;

use std::path::Path;

use candle_core::{DType, Device, Var};
use serde_json::{Map, Value};
use tempering_model::{LoraConfig, LoraTarget, Transformer};
use tempering_tasks::dataset::SftExample;
use tempering_train::objective::{Mode, StepContext};
use tempering_train::sft::{prepare, SftDataOptions};
use tempering_train::{
    metrics, Objective, Rng, ScheduleKind, SftObjective, SftSequence, TrainConfig, TrainError,
    Trainer,
};

fn config(steps: usize, batch: usize, accum: usize) -> TrainConfig {
    TrainConfig {
        learning_rate: 1e-2,
        schedule: ScheduleKind::Cosine,
        warmup_steps: 2,
        max_steps: steps,
        batch_size: batch,
        grad_accum: accum,
        max_grad_norm: 1.0,
        progress: false,
        ..Default::default()
    }
}

const PAIRS: [(&str, &str); 6] = [
    ("a=", "apple"),
    ("b=", "banana"),
    ("c=", "cherry"),
    ("d=", "date"),
    ("e=", "elderberry"),
    ("f=", "fig"),
];

fn examples() -> Vec<(usize, SftExample)> {
    PAIRS
        .iter()
        .enumerate()
        .map(|(i, (p, c))| {
            (
                i + 1,
                SftExample::PromptCompletion {
                    prompt: tempering_tasks::dataset::TextOrChat::Text(p.to_string()),
                    completion: tempering_tasks::dataset::TextOrChat::Text(c.to_string()),
                },
            )
        })
        .collect()
}

fn sequences(dir: &Path) -> (Vec<SftSequence>, tempering_model::Tokenizer) {
    let (tok, tmpl) = common::char_tokenizer(dir);
    let (seqs, report) = prepare(
        &examples(),
        Path::new("pairs.jsonl"),
        &tok,
        Some(&tmpl),
        &SftDataOptions::default(),
    )
    .unwrap();
    assert_eq!(report.sequences, PAIRS.len());
    (seqs, tok)
}

fn full_ft() -> (Transformer, Vec<(String, Var)>) {
    let mut m = common::tiny_model();
    let vars = m.make_trainable(|_| true).unwrap();
    (m, vars)
}

fn steps_of(path: &Path) -> Vec<Map<String, Value>> {
    metrics::read(path).unwrap()
}

/// The numbers a resumed run must reproduce exactly (not the timings).
fn exact_view(recs: &[Map<String, Value>]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            [
                "step",
                "loss",
                "lr",
                "grad_norm",
                "tokens",
                "eval_loss",
                "epoch",
            ]
            .iter()
            .filter_map(|k| r.get(*k).map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" ")
        })
        .collect()
}

#[test]
fn loss_falls_and_memorised_completions_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (seqs, tok) = sequences(dir.path());
    let (model, vars) = full_ft();
    let mut obj = SftObjective::new(model, 0);
    let run = dir.path().join("run");
    let mut cfg = config(120, 6, 1);
    cfg.schedule = ScheduleKind::Constant;
    cfg.learning_rate = 3e-3;
    let mut trainer = Trainer::new(cfg, vars, &run).unwrap();
    let summary = trainer.fit(&mut obj, &seqs, Some(&seqs)).unwrap();
    let recs = steps_of(&run.join("metrics.jsonl"));
    let losses: Vec<f64> = recs
        .iter()
        .filter_map(|r| r.get("loss")?.as_f64())
        .collect();
    assert_eq!(losses.len(), 120);
    assert!(
        losses[0] > 3.0,
        "a random 256-token model starts near ln 256: {}",
        losses[0]
    );
    let last = summary.last_loss.unwrap();
    assert!(last < 0.05, "loss {} -> {last}", losses[0]);
    assert!(summary.last_eval_loss.unwrap() < 0.05);
    for (p, c) in PAIRS {
        let prompt = tok.encode(p, true).unwrap();
        let mut want = tok.encode(c, false).unwrap();
        want.push(2);
        let got = common::greedy(obj.model(), &prompt, want.len());
        assert_eq!(
            tok.decode(&got, false).unwrap(),
            tok.decode(&want, false).unwrap()
        );
    }
}

/// An objective that fails at a given step, standing in for a kill in the middle of a step.
struct Crashing<'a> {
    inner: &'a mut SftObjective,
    at_step: usize,
}

impl Objective for Crashing<'_> {
    type Example = SftSequence;
    fn name(&self) -> &str {
        "crashing"
    }
    fn loss(
        &mut self,
        batch: &[&SftSequence],
        ctx: &mut StepContext<'_>,
    ) -> tempering_train::Result<tempering_train::LossOutput> {
        if ctx.mode == Mode::Train && ctx.step == self.at_step {
            return Err(TrainError::config("test", "killed"));
        }
        self.inner.loss(batch, ctx)
    }
}

fn lora_model(seed: u64) -> (Transformer, Vec<(String, Var)>) {
    let mut m = common::tiny_model();
    let cfg = LoraConfig::new(
        4,
        8.0,
        0.1,
        vec![LoraTarget::Q, LoraTarget::V, LoraTarget::Down],
    );
    let vars = m.add_lora(&cfg, seed).unwrap();
    (m, vars)
}

fn kill_and_resume(make: impl Fn(u64) -> (Transformer, Vec<(String, Var)>)) {
    let dir = tempfile::tempdir().unwrap();
    let (seqs, _) = sequences(dir.path());
    let mut cfg = config(7, 2, 2);
    cfg.save_every = 3;
    cfg.eval_every = 2;
    cfg.weight_decay_test_value();

    // Uninterrupted.
    let full = dir.path().join("full");
    let (m, vars) = make(1);
    let mut obj = SftObjective::new(m, 0);
    Trainer::new(cfg.clone(), vars, &full)
        .unwrap()
        .fit(&mut obj, &seqs, Some(&seqs[..3]))
        .unwrap();

    // Killed during step 5 (after the checkpoint at step 3), then resumed in a fresh process:
    // a model initialised differently, whose weights the checkpoint must overwrite.
    let run = dir.path().join("killed");
    let (m, vars) = make(1);
    let mut obj = SftObjective::new(m, 0);
    let mut crashing = Crashing {
        inner: &mut obj,
        at_step: 4,
    };
    let err = Trainer::new(cfg.clone(), vars, &run)
        .unwrap()
        .fit(&mut crashing, &seqs, Some(&seqs[..3]))
        .unwrap_err();
    assert!(err.to_string().contains("killed"));
    let (m, vars) = make(99);
    let mut obj = SftObjective::new(m, 0);
    let mut t = Trainer::resume(cfg.clone(), vars, &run).unwrap();
    assert_eq!(t.step(), 3);
    t.fit(&mut obj, &seqs, Some(&seqs[..3])).unwrap();

    let a = exact_view(&steps_of(&full.join("metrics.jsonl")));
    let b = exact_view(&steps_of(&run.join("metrics.jsonl")));
    assert_eq!(a.len(), 7 + 4, "7 steps and 4 evaluations");
    assert_eq!(a, b);
    // And the final weights are bit-identical.
    let wa = candle_core::safetensors::load(
        full.join("checkpoints/step-0000007/params.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let wb = candle_core::safetensors::load(
        run.join("checkpoints/step-0000007/params.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    for (name, x) in &wa {
        let y = &wb[name];
        let d = (x - y)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
    // Only the newest checkpoints are kept.
    let kept: Vec<usize> = tempering_train::checkpoint::list(&run)
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(kept, vec![6, 7]);
}

trait WeightDecay {
    fn weight_decay_test_value(&mut self);
}
impl WeightDecay for TrainConfig {
    fn weight_decay_test_value(&mut self) {
        self.adamw.weight_decay = 0.01;
    }
}

#[test]
fn kill_and_resume_equals_uninterrupted_full_fine_tuning() {
    kill_and_resume(|seed| {
        let (mut m, _) = full_ft();
        if seed != 1 {
            // A different starting point, overwritten by the checkpoint.
            m = Transformer::init_random(&m.config, seed, &Device::Cpu, DType::F32).unwrap();
        }
        let vars = m.make_trainable(|_| true).unwrap();
        (m, vars)
    });
}

#[test]
fn kill_and_resume_equals_uninterrupted_lora_with_dropout() {
    kill_and_resume(lora_model);
}

#[test]
fn accumulation_4x2_equals_batch_8() {
    let dir = tempfile::tempdir().unwrap();
    let (mut seqs, _) = sequences(dir.path());
    // Eight sequences of different lengths and target counts.
    seqs.extend(seqs[..2].to_vec());
    seqs[6].targets[1] = true;
    let run = |batch: usize, accum: usize| {
        let (m, vars) = full_ft();
        let mut obj = SftObjective::new(m, 0);
        let mut cfg = config(1, batch, accum);
        cfg.shuffle = false;
        cfg.max_grad_norm = 0.0;
        let out = dir.path().join(format!("b{batch}x{accum}"));
        let s = Trainer::new(cfg, vars.clone(), &out)
            .unwrap()
            .fit(&mut obj, &seqs, None)
            .unwrap();
        let rec = steps_of(&out.join("metrics.jsonl")).remove(0);
        (
            s.last_loss.unwrap(),
            rec["grad_norm"].as_f64().unwrap(),
            vars,
        )
    };
    let (l8, g8, v8) = run(8, 1);
    let (l2, g2, v2) = run(2, 4);
    assert!((l8 - l2).abs() < 1e-5 * l8, "{l8} vs {l2}");
    assert!((g8 - g2).abs() < 1e-4 * g8, "{g8} vs {g2}");
    let mut moved = 0.0f32;
    for ((n, a), (_, b)) in v8.iter().zip(&v2) {
        let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap();
        let d = d.max_all().unwrap().to_scalar::<f32>().unwrap();
        // AdamW's first step moves each weight by about lr; rounding differences stay far below.
        assert!(d < 1e-4, "{n}: {d}");
        moved = moved.max(d);
    }
    // Compare with a genuinely different step (batch 2, no accumulation) to show the check bites.
    let (l1, _, _) = run(2, 1);
    assert!((l1 - l8).abs() > 1e-3, "{l1} vs {l8}");
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let (seqs, _) = sequences(dir.path());
    let batch: Vec<&SftSequence> = seqs.iter().collect();
    let mut rng = Rng::new(0);
    let check = |obj: &mut SftObjective, vars: &[(String, Var)], rng: &mut Rng, only: &str| {
        let mut ctx = StepContext {
            mode: Mode::Train,
            step: 0,
            rng,
        };
        let out = obj.loss(&batch, &mut ctx).unwrap();
        let grads = out.loss_sum.backward().unwrap();
        for (name, v) in vars {
            if !name.contains(only) {
                continue;
            }
            let g = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            let n = tempering_train::optim::sum_squares(g).unwrap();
            assert!(n > 0.0, "{name}: zero gradient");
        }
    };
    let (m, vars) = full_ft();
    assert_eq!(vars.len(), m.named_tensors().len());
    let mut obj = SftObjective::new(m, 0);
    check(&mut obj, &vars, &mut rng, "");
    // LoRA: B starts at zero, so only B has a gradient at first; after one step A has one too.
    let (m, vars) = lora_model(3);
    let mut obj = SftObjective::new(m, 0);
    check(&mut obj, &vars, &mut rng, "lora_B");
    let mut cfg = config(1, 6, 1);
    cfg.progress = false;
    Trainer::new(cfg, vars.clone(), &dir.path().join("lora"))
        .unwrap()
        .fit(&mut obj, &seqs, None)
        .unwrap();
    check(&mut obj, &vars, &mut rng, "lora_");
}

#[test]
fn completion_only_masks_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, tmpl) = common::char_tokenizer(dir.path());
    let ex = |p: &str, c: &str| SftExample::PromptCompletion {
        prompt: tempering_tasks::dataset::TextOrChat::Text(p.into()),
        completion: tempering_tasks::dataset::TextOrChat::Text(c.into()),
    };
    let chat = SftExample::Messages {
        messages: vec![
            tempering_tasks::dataset::Message {
                role: "user".into(),
                content: "hi".into(),
            },
            tempering_tasks::dataset::Message {
                role: "assistant".into(),
                content: "yo".into(),
            },
        ],
    };
    let rows = vec![
        (1, ex("ab", "cd")),
        (2, chat.clone()),
        (3, ex("0123456789", "x")),
    ];
    let opts = SftDataOptions {
        max_length: 10,
        ..Default::default()
    };
    let (seqs, report) = prepare(&rows, Path::new("x.jsonl"), &tok, Some(&tmpl), &opts).unwrap();
    // "ab" + "cd" + EOS: targets c, d, EOS.
    assert_eq!(seqs[0].targets, vec![false, false, true, true, true]);
    // <|user|>hi</s><|assistant|>yo</s>: cut at 10 tokens, which ends inside the user turn...
    assert_eq!(report.truncated, 2);
    // ...so it has no targets and is dropped, as is the third (its prompt fills max_length).
    assert_eq!(report.dropped, 2);
    assert_eq!(seqs.len(), 1);
    // Without truncation the assistant's "yo</s>" (3 tokens) is the only target.
    let long = SftDataOptions::default();
    let (s, _) = prepare(
        &[(1, chat.clone())],
        Path::new("x"),
        &tok,
        Some(&tmpl),
        &long,
    )
    .unwrap();
    let text: String = s[0]
        .ids
        .iter()
        .zip(&s[0].targets)
        .filter(|(_, t)| **t)
        .map(|(i, _)| tok.decode(&[*i], false).unwrap())
        .collect();
    assert_eq!(text, "yo</s>");
    // --completion-only-loss false: every token after the first.
    let all = SftDataOptions {
        completion_only_loss: false,
        ..Default::default()
    };
    let (s, _) = prepare(&[(1, chat)], Path::new("x"), &tok, Some(&tmpl), &all).unwrap();
    assert_eq!(s[0].num_targets(), s[0].len() - 1);
}

#[test]
fn packing_fills_rows_without_splitting_examples() {
    let mk = |n: usize| SftSequence {
        ids: vec![7; n],
        targets: (0..n).map(|i| i > 0).collect(),
    };
    let seqs = vec![mk(6), mk(3), mk(5), mk(2), mk(4)];
    let packed = tempering_train::sft::pack(seqs, 8);
    let lens: Vec<usize> = packed.iter().map(|s| s.len()).collect();
    // 6+2, 5+3, 4: best fit, longest first.
    assert_eq!(lens, vec![8, 8, 4]);
    let total_targets: usize = packed
        .iter()
        .map(|s| s.targets.iter().filter(|t| **t).count())
        .sum();
    assert_eq!(total_targets, 5 + 2 + 4 + 1 + 3);
}

#[test]
fn resume_without_checkpoint_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("notes.txt"), "keep").unwrap();
    let (_, vars) = full_ft();
    let err = Trainer::resume(config(3, 2, 1), vars, &run).err().unwrap();
    assert!(matches!(err, TrainError::NoCheckpoint { .. }));
    assert!(err.to_string().contains("no checkpoint"), "{err}");
    let names: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
}

#[test]
fn bad_data_and_config_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, tmpl) = common::char_tokenizer(dir.path());
    let opts = SftDataOptions::default();
    let load = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        match tempering_train::sft::load_sft_sequences(&p, &tok, Some(&tmpl), &opts) {
            Ok(_) => panic!("{name}: accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = load("bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
    assert!(e.contains("bad.jsonl:2"), "{e}");
    let e = load(
        "cols.jsonl",
        "{\"text\": \"ok\"}\n{\"prompt_x\": \"a\", \"answer\": \"b\"}\n",
    );
    assert!(
        e.contains("cols.jsonl:2") && e.contains("prompt_x") && e.contains("answer"),
        "{e}"
    );
    let e = load("empty.jsonl", "\n");
    assert!(e.contains("empty"), "{e}");
    std::fs::write(
        dir.path().join("long.jsonl"),
        "{\"prompt\": \"aaaaaaaaaaaaaaaaaaaa\", \"completion\": \"b\"}\n",
    )
    .unwrap();
    let short = SftDataOptions {
        max_length: 4,
        ..Default::default()
    };
    let p = dir.path().join("long.jsonl");
    let e = tempering_train::sft::load_sft_sequences(&p, &tok, Some(&tmpl), &short)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("without a target token"), "{e}");
    // A conversation without a chat template names the file and line.
    let p = dir.path().join("chat.jsonl");
    std::fs::write(
        &p,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}\n",
    )
    .unwrap();
    let e = tempering_train::sft::load_sft_sequences(&p, &tok, None, &opts)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("chat.jsonl:1") && e.contains("chat template"),
        "{e}"
    );
    // A non-positive learning rate is refused before anything is written.
    let (_, vars) = full_ft();
    let mut cfg = config(3, 2, 1);
    cfg.learning_rate = 0.0;
    let run = dir.path().join("never");
    let e = Trainer::new(cfg, vars, &run).err().unwrap().to_string();
    assert!(e.contains("learning_rate"), "{e}");
    assert!(!run.exists());
}
