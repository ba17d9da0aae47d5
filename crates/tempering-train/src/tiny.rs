//! The tiny-model recipe: a small Llama-style decoder trained from scratch, with a character-level
//! tokenizer fitted to a built-in task, on the task's worked solutions (SFT, loss on the completion).
//! It is the project's embedded default model: it learns a task on a laptop CPU in minutes. Knows the
//! tasks and the trainer; nothing of generation or evaluation (the caller measures accuracy).

use std::path::Path;

use candle_core::{DType, Device};
use tempering_model::config::{Architecture, ModelConfig};
use tempering_model::{Tokenizer, Transformer};
use tempering_tasks::{generate, GenerateSpec, Problem, Split, Task};

use crate::error::{Result, TrainError};
use crate::schedule::ScheduleKind;
use crate::sft::{SftObjective, SftSequence};
use crate::trainer::{FitSummary, TrainConfig, Trainer};

/// What the recipe trains: sizes of the model and of the run. The defaults are the recorded recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct TinyOptions {
    pub level: u32,
    /// Other levels mixed into the training problems (e.g. the one a retain set measures), with
    /// `mix_fraction` of the problems shared equally among them.
    pub mix_levels: Vec<u32>,
    pub mix_fraction: f64,
    pub train_problems: usize,
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub progress: bool,
}

impl TinyOptions {
    /// The recipe for `task` at its hardest level.
    pub fn for_task(task: &dyn Task) -> Self {
        TinyOptions {
            level: *task.levels().end(),
            mix_levels: Vec::new(),
            mix_fraction: 0.25,
            train_problems: 20_000,
            seed: 1,
            steps: 600,
            batch_size: 32,
            learning_rate: 3e-3,
            hidden_size: 128,
            num_layers: 4,
            num_heads: 4,
            intermediate_size: 352,
            max_positions: 256,
            progress: true,
        }
    }
}

/// A trained tiny model with its tokenizer.
pub struct TinyModel {
    pub model: Transformer,
    pub tokenizer: Tokenizer,
    pub summary: FitSummary,
}

/// The character tokenizer for a task: its alphabet plus the specials.
pub fn task_tokenizer(task: &dyn Task) -> Result<Tokenizer> {
    Ok(Tokenizer::char_level(task.alphabet())?)
}

/// The decoder configuration of the recipe for a vocabulary of `vocab_size` tokens.
pub fn tiny_config(opts: &TinyOptions, tokenizer: &Tokenizer) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: tokenizer.vocab_size(),
        hidden_size: opts.hidden_size,
        intermediate_size: opts.intermediate_size,
        num_layers: opts.num_layers,
        num_heads: opts.num_heads,
        num_kv_heads: opts.num_heads,
        head_dim: opts.hidden_size / opts.num_heads.max(1),
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: None,
        max_position_embeddings: opts.max_positions,
        tie_word_embeddings: true,
        attention_bias: false,
        sliding_window: None,
        bos_token_id: None,
        eos_token_ids: tokenizer
            .eos_token()
            .map(|(id, _)| id)
            .into_iter()
            .collect(),
    }
}

/// Prompt tokens, then completion tokens and EOS as targets.
pub fn problem_sequence(p: &Problem, tokenizer: &Tokenizer) -> Result<SftSequence> {
    let prompt = tokenizer.encode(&p.prompt, false)?;
    let mut ids = prompt.clone();
    ids.extend(tokenizer.encode(&p.solution, false)?);
    let eos = tokenizer
        .eos_token()
        .ok_or_else(|| TrainError::config("tokenizer", "the tiny recipe needs an EOS token"))?;
    ids.push(eos.0);
    let targets = (0..ids.len()).map(|i| i >= prompt.len()).collect();
    Ok(SftSequence { ids, targets })
}

/// The recipe's training problems: `train_problems` of `level`, or with `mix_levels` that many in
/// all, `mix_fraction` of them shared equally among the mixed levels (the trainer shuffles them).
pub fn training_problems(task: &dyn Task, opts: &TinyOptions) -> Result<Vec<Problem>> {
    let levels = task.levels();
    for &l in std::iter::once(&opts.level).chain(&opts.mix_levels) {
        if !levels.contains(&l) {
            return Err(TrainError::config(
                "level",
                format!(
                    "{} has levels {}..={}, not {l}",
                    task.name(),
                    levels.start(),
                    levels.end()
                ),
            ));
        }
    }
    if !(0.0..1.0).contains(&opts.mix_fraction) {
        return Err(TrainError::config(
            "mix_fraction",
            format!("expected a fraction in [0, 1), got {}", opts.mix_fraction),
        ));
    }
    let mixed = if opts.mix_levels.is_empty() {
        0
    } else {
        (opts.train_problems as f64 * opts.mix_fraction).round() as usize
    };
    let mut shares = vec![(opts.level, opts.train_problems - mixed)];
    let k = opts.mix_levels.len().max(1);
    for (i, &l) in opts.mix_levels.iter().enumerate() {
        shares.push((l, mixed / k + usize::from(i < mixed % k)));
    }
    let mut out = Vec::with_capacity(opts.train_problems);
    for (i, (level, n)) in shares.into_iter().enumerate() {
        if n == 0 {
            continue;
        }
        out.extend(generate(
            task,
            &GenerateSpec {
                level,
                n,
                // The main level keeps the recipe's seed, so its problems are as without mixing.
                seed: opts.seed + i as u64 * 1_000_003,
                split: Split::Train,
                unique: false,
            },
        )?);
    }
    Ok(out)
}

/// Trains the recipe on `task`, writing checkpoints and metrics into `run_dir`.
pub fn train_tiny(task: &dyn Task, opts: &TinyOptions, run_dir: &Path) -> Result<TinyModel> {
    let tokenizer = task_tokenizer(task)?;
    let problems = training_problems(task, opts)?;
    let data: Vec<SftSequence> = problems
        .iter()
        .map(|p| problem_sequence(p, &tokenizer))
        .collect::<Result<_>>()?;
    if let Some(long) = data.iter().find(|s| s.len() > opts.max_positions) {
        return Err(TrainError::config(
            "max_positions",
            format!(
                "a problem needs {} tokens, more than the model's {} positions",
                long.len(),
                opts.max_positions
            ),
        ));
    }
    let config = tiny_config(opts, &tokenizer);
    let mut model = Transformer::init_random(&config, opts.seed, &Device::Cpu, DType::F32)?;
    let params = model.make_trainable(|_| true)?;
    let train_config = TrainConfig {
        learning_rate: opts.learning_rate,
        schedule: ScheduleKind::Cosine,
        warmup_steps: opts.steps / 20,
        min_lr_ratio: 0.1,
        max_steps: opts.steps,
        epochs: 1,
        batch_size: opts.batch_size,
        grad_accum: 1,
        max_grad_norm: 1.0,
        seed: opts.seed,
        progress: opts.progress,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(train_config, params, run_dir)?;
    let pad = tokenizer.pad_token().map(|(id, _)| id).unwrap_or(0);
    let mut objective = SftObjective::new(model.clone(), pad);
    let summary = trainer.fit(&mut objective, &data, None)?;
    Ok(TinyModel {
        model: objective.model().clone(),
        tokenizer,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempering_tasks::task_by_name;

    #[test]
    fn mixed_levels_take_their_share_and_keep_the_main_levels_problems() {
        let task = task_by_name("arithmetic").unwrap();
        let mut opts = TinyOptions::for_task(task.as_ref());
        opts.level = 3;
        opts.train_problems = 1000;
        let alone = training_problems(task.as_ref(), &opts).unwrap();
        assert!(alone.iter().all(|p| p.level == 3));
        opts.mix_levels = vec![1, 2];
        opts.mix_fraction = 0.25;
        let mixed = training_problems(task.as_ref(), &opts).unwrap();
        let count = |l: u32| mixed.iter().filter(|p| p.level == l).count();
        assert_eq!((count(3), count(1), count(2)), (750, 125, 125));
        // The main level's problems are the first 750 of the unmixed draw.
        assert_eq!(mixed[..750], alone[..750]);
        opts.mix_levels = vec![9];
        let e = training_problems(task.as_ref(), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not 9"), "{e}");
    }
}
