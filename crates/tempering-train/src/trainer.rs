//! The one training loop. It knows trainable parameters, an [`Objective`], a list of examples and
//! this config; nothing of what the examples are or what the loss means. Read `fit` top to bottom:
//! draw micro-batches, backward, accumulate, clip, step AdamW, log, evaluate, checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::checkpoint::{self, TrainState};
use crate::data::{DataOrder, DataPosition};
use crate::error::{Result, TrainError};
use crate::metrics::MetricsLog;
use crate::objective::{Mode, Objective, StepContext};
use crate::optim::{accumulate, sum_squares, AdamW, AdamWConfig};
use crate::rng::Rng;
use crate::schedule::{Schedule, ScheduleKind};

/// The largest micro-batch (and number of micro-batches per step) a config may ask for.
pub const MAX_BATCH: usize = 1 << 20;

/// Everything the loop needs to know; algorithm settings live in the objective.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub learning_rate: f64,
    pub schedule: ScheduleKind,
    pub warmup_steps: usize,
    pub min_lr_ratio: f64,
    /// Optimiser steps; 0 means `epochs` passes over the data.
    pub max_steps: usize,
    pub epochs: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimiser step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this; 0 disables clipping.
    pub max_grad_norm: f64,
    pub adamw: AdamWConfig,
    /// Evaluate every this many steps (and at the end); 0: only at the end.
    pub eval_every: usize,
    pub eval_batch_size: usize,
    /// Checkpoint every this many steps (and always at the end); 0: only at the end.
    pub save_every: usize,
    /// Checkpoints kept (the newest ones).
    pub keep_checkpoints: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            learning_rate: 2e-5,
            schedule: ScheduleKind::Linear,
            warmup_steps: 0,
            min_lr_ratio: 0.0,
            max_steps: 0,
            epochs: 1,
            batch_size: 8,
            grad_accum: 1,
            max_grad_norm: 1.0,
            adamw: AdamWConfig::default(),
            eval_every: 0,
            eval_batch_size: 8,
            save_every: 0,
            keep_checkpoints: 2,
            seed: 42,
            shuffle: true,
            progress: true,
        }
    }
}

impl TrainConfig {
    /// Rejects values the loop cannot run with, naming the key.
    pub fn validate(&self) -> Result<()> {
        let positive = |key: &str, ok: bool, msg: &str| {
            if ok {
                Ok(())
            } else {
                Err(TrainError::config(key, msg))
            }
        };
        positive(
            "learning_rate",
            self.learning_rate.is_finite() && self.learning_rate > 0.0,
            &format!("expected a positive number, got {}", self.learning_rate),
        )?;
        // Batches are allocated at their configured size: a number from a config file must be
        // one that fits in memory (a crafted `batch_size = 2^62` is an error, not an abort).
        let sized = |n: usize| (1..=MAX_BATCH).contains(&n);
        let range = format!("expected 1 to {MAX_BATCH}");
        positive("batch_size", sized(self.batch_size), &range)?;
        positive("grad_accum", sized(self.grad_accum), &range)?;
        positive("eval_batch_size", sized(self.eval_batch_size), &range)?;
        positive(
            "epochs",
            self.max_steps > 0 || self.epochs > 0,
            "expected at least 1 when max_steps is 0",
        )?;
        positive(
            "min_lr_ratio",
            (0.0..=1.0).contains(&self.min_lr_ratio),
            "expected a number in [0, 1]",
        )?;
        positive(
            "max_grad_norm",
            self.max_grad_norm >= 0.0,
            "expected 0 (off) or a positive number",
        )?;
        positive(
            "weight_decay",
            self.adamw.weight_decay >= 0.0,
            "expected 0 or a positive number",
        )?;
        positive(
            "adam_beta1",
            (0.0..1.0).contains(&self.adamw.beta1),
            "expected a number in [0, 1)",
        )?;
        positive(
            "adam_beta2",
            (0.0..1.0).contains(&self.adamw.beta2),
            "expected a number in [0, 1)",
        )?;
        positive(
            "adam_eps",
            self.adamw.eps > 0.0,
            "expected a positive number",
        )
    }

    /// Optimiser steps for a dataset of `n` examples.
    pub fn total_steps(&self, n: usize) -> usize {
        if self.max_steps > 0 {
            return self.max_steps;
        }
        let per_step = self.batch_size.saturating_mul(self.grad_accum).max(1);
        n.saturating_mul(self.epochs).div_ceil(per_step).max(1)
    }
}

/// What one optimiser step did; metrics are already divided by the summed weight.
#[derive(Debug, Clone, PartialEq)]
pub struct StepOutcome {
    pub loss: f64,
    pub weight: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub backward_s: f64,
    pub metrics: Vec<(String, f64)>,
}

/// What a finished `fit` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct FitSummary {
    pub steps: usize,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    pub last_eval_loss: Option<f64>,
    pub tokens_seen: u64,
    pub checkpoint: PathBuf,
}

pub struct Trainer {
    pub config: TrainConfig,
    run_dir: PathBuf,
    opt: AdamW,
    state: TrainState,
    resumed: bool,
}

impl Trainer {
    /// A fresh run over `params` writing into `run_dir`.
    pub fn new(config: TrainConfig, params: Vec<(String, Var)>, run_dir: &Path) -> Result<Self> {
        config.validate()?;
        if params.is_empty() {
            return Err(TrainError::Param {
                name: "<all>".into(),
                msg: "nothing to train: no trainable parameters".into(),
            });
        }
        std::fs::create_dir_all(run_dir).map_err(|e| TrainError::io(run_dir, e))?;
        let state = TrainState {
            step: 0,
            data: DataPosition {
                epoch: 0,
                offset: 0,
            },
            rng: Rng::derived(config.seed, 0),
            optimizer_steps: 0,
            tokens_seen: 0,
            extra: serde_json::Value::Null,
        };
        Ok(Trainer {
            opt: AdamW::new(params, config.adamw)?,
            config,
            run_dir: run_dir.to_path_buf(),
            state,
            resumed: false,
        })
    }

    /// Continues the run in `run_dir` from its newest checkpoint: weights, moments, step, data
    /// position and RNG state are restored into `params` and the optimiser.
    pub fn resume(config: TrainConfig, params: Vec<(String, Var)>, run_dir: &Path) -> Result<Self> {
        let dir = checkpoint::latest(run_dir)?;
        let mut t = Trainer::new(config, params, run_dir)?;
        t.state = checkpoint::load(&dir, &mut t.opt)?;
        t.resumed = true;
        Ok(t)
    }

    pub fn step(&self) -> usize {
        self.state.step
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Trains until the configured number of steps, evaluating and checkpointing on the way.
    pub fn fit<O: Objective>(
        &mut self,
        objective: &mut O,
        train: &[O::Example],
        eval: Option<&[O::Example]>,
    ) -> Result<FitSummary> {
        if train.is_empty() {
            return Err(TrainError::EmptyData {
                what: "training data".into(),
                why: None,
            });
        }
        let c = self.config.clone();
        let total = c.total_steps(train.len());
        let schedule = Schedule {
            kind: c.schedule,
            lr: c.learning_rate,
            warmup_steps: c.warmup_steps,
            total_steps: total,
            min_lr_ratio: c.min_lr_ratio,
        };
        let mut order = DataOrder::new(train.len(), c.seed, c.shuffle, self.state.data);
        let mut log = MetricsLog::open(&self.run_dir, self.resumed.then_some(self.state.step))?;
        let bar = progress_bar(c.progress, total, self.state.step);
        let (mut last_loss, mut last_eval) = (None, None);
        let mut saved_at = self.resumed.then_some(self.state.step);
        if self.resumed {
            crate::interrupt::announce_resume(&self.run_dir, self.state.step, total);
        }
        let _armed = crate::interrupt::arm();

        while self.state.step < total {
            let step = self.state.step;
            let started = Instant::now();
            let lr = schedule.lr_at(step);

            let micro: Vec<Vec<&O::Example>> = (0..c.grad_accum)
                .map(|_| {
                    order
                        .take(c.batch_size)
                        .into_iter()
                        .map(|i| &train[i])
                        .collect()
                })
                .collect();
            let out = self.optimizer_step(objective, &micro, lr)?;
            let StepOutcome {
                loss,
                grad_norm,
                tokens,
                backward_s,
                ..
            } = out;
            let metric_sums = out.metrics;
            self.state.data = order.position();
            last_loss = Some(loss);

            // Log this step.
            let secs = started.elapsed().as_secs_f64();
            let mut rec = Map::new();
            rec.insert("step".into(), json!(self.state.step));
            rec.insert(
                "epoch".into(),
                json!(
                    self.state.data.epoch as f64
                        + self.state.data.offset as f64 / train.len() as f64
                ),
            );
            rec.insert("loss".into(), json!(loss));
            rec.insert("lr".into(), json!(lr));
            rec.insert("grad_norm".into(), json!(grad_norm));
            rec.insert("tokens".into(), json!(tokens));
            rec.insert("tokens_per_s".into(), json!(tokens as f64 / secs));
            rec.insert("step_s".into(), json!(secs));
            rec.insert("forward_backward_s".into(), json!(backward_s));
            rec.insert("optimizer_s".into(), json!(secs - backward_s));
            let derived = objective.derived_metrics(&metric_sums);
            for (k, v) in metric_sums.iter().cloned().chain(derived) {
                rec.insert(k, json!(v));
            }
            log.write(rec)?;
            bar.set_position(self.state.step as u64);
            bar.set_message(format!(
                "loss {loss:.4}  lr {lr:.2e}  {:.0} tok/s{}",
                tokens as f64 / secs,
                last_eval
                    .map(|e: f64| format!("  eval {e:.4}"))
                    .unwrap_or_default()
            ));

            // Evaluate and checkpoint when due (and always at the end).
            let done = self.state.step == total;
            if let Some(eval) = eval {
                if done || (c.eval_every > 0 && self.state.step.is_multiple_of(c.eval_every)) {
                    let (eval_loss, eval_metrics) = self.evaluate(objective, eval)?;
                    let mut rec = Map::new();
                    rec.insert("step".into(), json!(self.state.step));
                    rec.insert("eval_loss".into(), json!(eval_loss));
                    for (k, v) in eval_metrics {
                        rec.insert(format!("eval_{k}"), json!(v));
                    }
                    log.write(rec)?;
                    last_eval = Some(eval_loss);
                }
            }
            if done || (c.save_every > 0 && self.state.step.is_multiple_of(c.save_every)) {
                checkpoint::save(&self.run_dir, &self.state, &self.opt, c.keep_checkpoints)?;
                saved_at = Some(self.state.step);
            }
            if let (Some(signal), false) = (crate::interrupt::requested(), done) {
                if saved_at != Some(self.state.step) {
                    checkpoint::save(&self.run_dir, &self.state, &self.opt, c.keep_checkpoints)?;
                }
                bar.abandon();
                return Err(self.interrupted(total, signal));
            }
        }
        bar.finish();
        if saved_at != Some(self.state.step) {
            checkpoint::save(&self.run_dir, &self.state, &self.opt, c.keep_checkpoints)?;
        }
        Ok(FitSummary {
            steps: self.state.step,
            last_loss,
            last_eval_loss: last_eval,
            tokens_seen: self.state.tokens_seen,
            checkpoint: checkpoint::latest(&self.run_dir)?,
        })
    }

    /// One optimiser step over `micro_batches` (forward and backward on each, gradients summed,
    /// the global norm clipped, one AdamW step at `lr`). Advances the step counter and the tokens
    /// seen; logging, data order and checkpoints are the caller's. Online algorithms (GRPO, PPO)
    /// call this directly with the rollouts they just made.
    pub fn optimizer_step<O: Objective>(
        &mut self,
        objective: &mut O,
        micro_batches: &[Vec<&O::Example>],
        lr: f64,
    ) -> Result<StepOutcome> {
        let started = Instant::now();
        let step = self.state.step;
        // Forward and backward over each micro-batch; gradients of the summed losses add up.
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.params().len()];
        let (mut loss_sum, mut weight, mut tokens) = (0.0, 0.0, 0usize);
        let mut metric_sums: Vec<(String, f64)> = Vec::new();
        for batch in micro_batches {
            let mut ctx = StepContext {
                mode: Mode::Train,
                step,
                rng: &mut self.state.rng,
            };
            let out = objective.loss(batch, &mut ctx)?;
            {
                let mut store = out.loss_sum.backward()?;
                for (slot, p) in grads.iter_mut().zip(self.opt.params()) {
                    if let Some(g) = store.remove(p.var.as_tensor()) {
                        match slot {
                            Some(acc) => accumulate(acc, &g)?,
                            None => *slot = Some(g),
                        }
                    }
                }
                loss_sum += out
                    .loss_sum
                    .to_dtype(candle_core::DType::F64)?
                    .to_scalar::<f64>()?;
            }
            weight += out.weight;
            tokens += out.tokens;
            add_metrics(&mut metric_sums, out.metrics);
        }
        let loss = loss_sum / weight.max(f64::MIN_POSITIVE);
        if !loss.is_finite() {
            return Err(TrainError::NonFinite { step, value: loss });
        }
        let backward_s = started.elapsed().as_secs_f64();

        // The gradient of the mean loss, clipped by its global norm, then one AdamW step.
        let mut sq = 0.0;
        for g in grads.iter().flatten() {
            sq += sum_squares(g)?;
        }
        let w = weight.max(f64::MIN_POSITIVE);
        let grad_norm = sq.sqrt() / w;
        let clip = if self.config.max_grad_norm > 0.0 && grad_norm > self.config.max_grad_norm {
            self.config.max_grad_norm / (grad_norm + 1e-6)
        } else {
            1.0
        };
        self.opt.step(&grads, lr, clip / w)?;
        drop(grads);
        self.state.step += 1;
        self.state.optimizer_steps = self.opt.steps;
        self.state.tokens_seen += tokens as u64;
        Ok(StepOutcome {
            loss,
            weight,
            grad_norm,
            tokens,
            backward_s,
            metrics: metric_sums.into_iter().map(|(k, v)| (k, v / w)).collect(),
        })
    }

    /// Writes a checkpoint of the current state (with `extra`, the caller's own resumable state)
    /// and keeps the configured number of them.
    pub fn save_checkpoint(&mut self, extra: serde_json::Value) -> Result<PathBuf> {
        self.state.extra = extra;
        checkpoint::save(
            &self.run_dir,
            &self.state,
            &self.opt,
            self.config.keep_checkpoints,
        )
    }

    /// The error that reports a stop at the current step, asked for by `signal`.
    pub fn interrupted(&self, total: usize, signal: i32) -> TrainError {
        crate::interrupt::stopped(self.state.step, total, &self.run_dir, signal)
    }

    /// The caller's state stored with the checkpoint this run resumed from (`Null` otherwise).
    pub fn resumed_extra(&self) -> Option<&serde_json::Value> {
        self.resumed.then_some(&self.state.extra)
    }

    /// Whether this run continues from a checkpoint.
    pub fn is_resumed(&self) -> bool {
        self.resumed
    }

    /// The trainer's random stream (checkpointed).
    pub fn rng_mut(&mut self) -> &mut Rng {
        &mut self.state.rng
    }

    pub fn data_position(&self) -> DataPosition {
        self.state.data
    }

    pub fn set_data_position(&mut self, pos: DataPosition) {
        self.state.data = pos;
    }

    /// The trainable parameters, in the optimiser's order.
    pub fn params(&self) -> &[crate::optim::Param] {
        self.opt.params()
    }

    /// The objective's loss over all of `data`, in order, without gradients or dropout; the metrics
    /// are divided by the summed weight. Draws from its own stream, so evaluating never changes
    /// training.
    pub fn evaluate<O: Objective>(
        &self,
        objective: &mut O,
        data: &[O::Example],
    ) -> Result<(f64, Vec<(String, f64)>)> {
        if data.is_empty() {
            return Err(TrainError::EmptyData {
                what: "evaluation data".into(),
                why: None,
            });
        }
        let mut rng = Rng::derived(self.config.seed, u64::MAX);
        let (mut loss_sum, mut weight) = (0.0, 0.0);
        let mut metric_sums = Vec::new();
        for chunk in data.chunks(self.config.eval_batch_size) {
            let batch: Vec<&O::Example> = chunk.iter().collect();
            let mut ctx = StepContext {
                mode: Mode::Eval,
                step: self.state.step,
                rng: &mut rng,
            };
            let out = objective.loss(&batch, &mut ctx)?;
            loss_sum += out
                .loss_sum
                .detach()
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            weight += out.weight;
            add_metrics(&mut metric_sums, out.metrics);
        }
        let w = weight.max(f64::MIN_POSITIVE);
        let mut averaged: Vec<(String, f64)> =
            metric_sums.into_iter().map(|(k, v)| (k, v / w)).collect();
        let derived = objective.derived_metrics(&averaged);
        averaged.extend(derived);
        Ok((loss_sum / w, averaged))
    }
}

fn add_metrics(sums: &mut Vec<(String, f64)>, new: Vec<(String, f64)>) {
    for (k, v) in new {
        match sums.iter_mut().find(|(n, _)| *n == k) {
            Some((_, s)) => *s += v,
            None => sums.push((k, v)),
        }
    }
}

fn progress_bar(show: bool, total: usize, at: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "step {pos}/{len} [{bar:30}] {msg}  [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_position(at as u64);
    bar.reset_eta();
    bar
}

/// Used by `metrics.jsonl` readers: the value of `key` in a record as f64.
pub fn metric(rec: &Map<String, Value>, key: &str) -> Option<f64> {
    rec.get(key).and_then(|v| v.as_f64())
}
