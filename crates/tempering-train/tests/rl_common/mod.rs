//! Shared by the online-RL tests: a tiny SFT model on a built-in task, a task-verifier reward, and
//! greedy accuracy through the local engine; a small random model with a reward that has spread on
//! random text.

#![allow(dead_code)]

use std::path::Path;

use candle_core::{DType, Device};
use tempering_generate::{Backend, GenRequest, LocalEngine, SamplingParams};
use tempering_model::{Tokenizer, Transformer};
use tempering_reward::{ScoreInput, Scored, Verifier};
use tempering_tasks::{generate, task_by_name, GenerateSpec, Problem, Split, Task};
use tempering_train::rl::PromptItem;
use tempering_train::tiny::{task_tokenizer, tiny_config, train_tiny, TinyOptions};

/// A measurement override from the environment, or `default`.
pub fn knob<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn task() -> &'static dyn Task {
    static TASK: std::sync::OnceLock<Box<dyn Task>> = std::sync::OnceLock::new();
    TASK.get_or_init(|| task_by_name("arithmetic").unwrap())
        .as_ref()
}

/// The committed tiny SFT model (`fixtures/models/tiny-arith-sft`: the default recipe, arithmetic
/// level 3).
pub fn sft_fixture() -> (Transformer, Tokenizer) {
    open_fixture("tiny-arith-sft")
}

/// A committed model of `fixtures/models/` and its tokenizer, f32 on the CPU.
pub fn open_fixture(name: &str) -> (Transformer, Tokenizer) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/models")
        .join(name);
    let files =
        tempering_model::ModelFiles::open(&dir, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let tok = files.tokenizer.clone().unwrap();
    (files.transformer().unwrap(), tok)
}

/// A copy of `m` that shares no storage and no autograd history (`copy` alone keeps a link to the
/// `Var`s it came from): a trained model's weights are `Var`s, and a clone made
/// trainable would share (and move) them.
pub fn deep_copy(m: &Transformer) -> Transformer {
    let tensors = m
        .named_tensors()
        .into_iter()
        .map(|(n, t)| (n, t.detach().copy().unwrap()))
        .collect();
    Transformer::from_weights(
        &m.config,
        &tempering_model::weights::Weights::new(tensors, "copy".into()),
    )
    .unwrap()
}

/// The tiny recipe at `level` for `steps` steps.
pub fn sft_tiny(level: u32, steps: usize, dir: &Path) -> (Transformer, Tokenizer) {
    let mut o = TinyOptions::for_task(task());
    o.level = level;
    o.steps = steps;
    o.train_problems = 4000;
    o.progress = false;
    let m = train_tiny(task(), &o, dir).unwrap();
    (m.model, m.tokenizer)
}

/// `n` distinct problems, or `n` with repeats when the level has fewer distinct ones.
pub fn problems(level: u32, n: usize, seed: u64, split: Split) -> Vec<Problem> {
    let spec = |unique| GenerateSpec {
        level,
        n,
        seed,
        split,
        unique,
    };
    generate(task(), &spec(true)).unwrap_or_else(|_| generate(task(), &spec(false)).unwrap())
}

pub fn prompt_items(ps: &[Problem], tok: &Tokenizer) -> Vec<PromptItem> {
    ps.iter()
        .map(|p| PromptItem {
            text: p.prompt.clone(),
            ids: tok.encode(&p.prompt, false).unwrap(),
            reference: Some(p.answer.clone()),
        })
        .collect()
}

/// Greedy correctness of `model` on each of `ps`.
pub fn greedy_correct(model: &Transformer, tok: &Tokenizer, ps: &[Problem]) -> Vec<bool> {
    let engine = LocalEngine::new(model.clone(), tok.clone());
    let reqs: Vec<GenRequest> = ps
        .iter()
        .map(|p| {
            GenRequest::new(
                tok.encode(&p.prompt, false).unwrap(),
                1,
                SamplingParams::greedy(96),
            )
        })
        .collect();
    let out = engine.generate(&reqs).unwrap();
    ps.iter()
        .zip(&out)
        .map(|(p, c)| task().verify(p, &c[0].text).is_correct())
        .collect()
}

/// Greedy accuracy of `model` on `ps`.
pub fn greedy_accuracy(model: &Transformer, tok: &Tokenizer, ps: &[Problem]) -> f64 {
    let ok = greedy_correct(model, tok, ps)
        .iter()
        .filter(|&&c| c)
        .count();
    ok as f64 / ps.len() as f64
}

/// The built-in task's verifier as a reward (the rule-reward module offers the same by name).
pub struct TaskReward {
    pub invert: bool,
}

impl Verifier for TaskReward {
    fn name(&self) -> &str {
        if self.invert {
            "wrong_answer"
        } else {
            "task_verifier"
        }
    }

    fn score(&self, input: &ScoreInput<'_>) -> tempering_reward::Result<Scored> {
        let reference = input.reference.unwrap_or_default();
        let p = task().problem_from_record(input.prompt, reference, 1)?;
        let ok = task().verify(&p, input.completion).is_correct();
        let ok = ok != self.invert;
        Ok(Scored {
            score: ok as u8 as f64,
            correct: Some(ok),
        })
    }
}

/// The distinct problems of a split at `level` (at most 200) among 4000 draws.
pub fn distinct_problems(level: u32, split: Split) -> Vec<Problem> {
    let all = generate(
        task(),
        &GenerateSpec {
            level,
            n: 4000,
            seed: 99,
            split,
            unique: false,
        },
    )
    .unwrap();
    let mut seen = std::collections::HashSet::new();
    all.into_iter()
        .filter(|p| seen.insert(p.prompt.clone()))
        .take(200)
        .collect()
}

/// The problems the gain tests train on: 400 seeded train-split draws at `level` (with repeats).
pub fn rl_problems(level: u32) -> Vec<Problem> {
    generate(
        task(),
        &GenerateSpec {
            level,
            n: 400,
            seed: 5,
            split: Split::Train,
            unique: false,
        },
    )
    .unwrap()
}

/// The RL prompts of the gain tests: [`rl_problems`] as prompt items.
pub fn rl_prompts(level: u32, tok: &Tokenizer) -> Vec<PromptItem> {
    prompt_items(&rl_problems(level), tok)
}

/// The policy to train from `model` (weights not `Var`s): LoRA of rank `lora_r` (alpha 2r) on
/// `targets`, whose reference is the base with adapters off (`None`), or, with `lora_r == 0`, full
/// fine-tuning against `model` itself as the frozen reference.
pub fn trainable_policy(
    model: &Transformer,
    lora_r: usize,
    targets: &str,
) -> (
    Transformer,
    Vec<(String, candle_core::Var)>,
    Option<Transformer>,
) {
    let mut policy = model.clone();
    if lora_r > 0 {
        let cfg = tempering_model::LoraConfig::new(
            lora_r,
            2.0 * lora_r as f64,
            0.0,
            tempering_model::LoraTarget::parse_list(targets).unwrap(),
        );
        let params = policy.add_lora(&cfg, 1).unwrap();
        (policy, params, None)
    } else {
        let params = policy.make_trainable(|_| true).unwrap();
        (policy, params, Some(model.clone()))
    }
}

/// A random model (hidden 32, two layers) with the task's character tokenizer.
pub fn random_model(seed: u64) -> (Transformer, Tokenizer) {
    let tok = task_tokenizer(task()).unwrap();
    let mut o = TinyOptions::for_task(task());
    o.hidden_size = 32;
    o.num_layers = 2;
    o.num_heads = 2;
    o.intermediate_size = 64;
    let cfg = tiny_config(&o, &tok);
    (
        Transformer::init_random(&cfg, seed, &Device::Cpu, DType::F32).unwrap(),
        tok,
    )
}

/// A reward with spread on random text: the share of digits in the completion.
pub struct DigitShare;

impl Verifier for DigitShare {
    fn name(&self) -> &str {
        "digit_share"
    }
    fn score(&self, i: &ScoreInput<'_>) -> tempering_reward::Result<Scored> {
        let n = i.completion.chars().count().max(1) as f64;
        let d = i.completion.chars().filter(|c| c.is_ascii_digit()).count() as f64;
        Ok(Scored {
            score: d / n,
            correct: None,
        })
    }
}
