//! Automatic step labels in the Math-Shepherd way: sample solutions from a policy, then continue
//! each solution from every step prefix with `k` rollouts and label the step by how many of them
//! reach a verified answer (any of them, or at least a given fraction). The last step needs no
//! rollout: the solution's own verdict labels it. Rows come out in TRL's stepwise format
//! (`prompt`, `completions`, `labels`), with the fraction of correct rollouts per step as `values`.
//! [`label_steps_by_checker`] labels the same sampled solutions with a step checker instead (a rule
//! verifier standing in for human step labels, as PRM800K's): no rollouts, and a label that depends
//! only on the step, never on how hard the problem is.
//!
//! Knows a generation backend, a tokenizer and the built-in tasks' verifiers; nothing of training.

use serde::Serialize;
use tempering_generate::{Backend, FinishReason, GenRequest, SamplingParams};
use tempering_model::Tokenizer;
use tempering_tasks::{Problem, Task};

use crate::error::{Result, RewardError};
use crate::learned::split_steps;
use crate::scorer::StepScorer;

/// When a step counts as correct, from the fraction of its rollouts that reach a verified answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LabelRule {
    /// At least one rollout is correct (Math-Shepherd's hard estimation).
    Any,
    /// At least this fraction of rollouts is correct (soft estimation, thresholded).
    AtLeast(f64),
}

impl LabelRule {
    pub fn label(self, fraction: f64) -> bool {
        match self {
            LabelRule::Any => fraction > 0.0,
            LabelRule::AtLeast(t) => fraction >= t,
        }
    }
}

/// How to sample and label.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelOptions {
    /// Solutions sampled per problem.
    pub samples: usize,
    /// Rollouts continued from each step prefix.
    pub rollouts: usize,
    pub temperature: f32,
    pub max_new_tokens: usize,
    pub seed: u64,
    pub rule: LabelRule,
    /// Splits a solution into steps.
    pub separator: String,
    /// Keep, per problem, as many correct as incorrect solutions (problems whose samples all agree
    /// are dropped), so that a PRM trained on the rows cannot score a problem's difficulty in
    /// place of its solution.
    pub balance: bool,
}

impl Default for LabelOptions {
    fn default() -> Self {
        LabelOptions {
            samples: 4,
            rollouts: 8,
            temperature: 1.0,
            max_new_tokens: 256,
            seed: 0,
            rule: LabelRule::Any,
            separator: tempering_tasks::STEP_SEPARATOR.to_string(),
            balance: false,
        }
    }
}

impl LabelOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: &str| {
            Err(RewardError::spec("label-steps", format!("{field}: {msg}")))
        };
        if self.samples == 0 {
            return bad("samples", "expected at least 1");
        }
        if self.rollouts == 0 {
            return bad("rollouts", "expected at least 1");
        }
        if self.separator.is_empty() {
            return bad("separator", "expected a non-empty string");
        }
        if let LabelRule::AtLeast(t) = self.rule {
            if !(t > 0.0 && t <= 1.0) {
                return bad("threshold", "expected a fraction in (0, 1]");
            }
        }
        Ok(())
    }
}

/// One labelled solution: a stepwise row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepwiseRow {
    pub prompt: String,
    /// The steps, without separators.
    pub completions: Vec<String>,
    pub labels: Vec<bool>,
    /// Fraction of rollouts from each step that reached a correct answer.
    pub values: Vec<f64>,
    /// The reference answer.
    pub answer: String,
    /// Whether the sampled solution itself is correct.
    pub correct: bool,
}

/// Labels `opts.samples` sampled solutions of each problem. `on_progress(done, total)` is called as
/// problems finish.
pub fn label_steps(
    backend: &dyn Backend,
    tokenizer: &Tokenizer,
    task: &dyn Task,
    problems: &[Problem],
    opts: &LabelOptions,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<StepwiseRow>> {
    opts.validate()?;
    let sep = opts.separator.as_str();
    let mut seeds = Seeds::new(opts.seed);
    // Problems in chunks, so that one chunk's rollouts fill the engine's batches.
    in_chunks(problems, 8, opts, on_progress, |chunk| {
        let pending = sample_solutions(backend, tokenizer, task, chunk, opts, &mut seeds)?;
        // One rollout request per step but the last.
        let mut rollout_reqs = Vec::new();
        for (pi, steps, _) in &pending {
            let p = &chunk[*pi];
            for i in 0..steps.len() - 1 {
                let prefix = prefix_text(&steps[..=i], sep);
                rollout_reqs.push(GenRequest::new(
                    tokenizer.encode(&format!("{}{prefix}", p.prompt), true)?,
                    opts.rollouts,
                    sampling(opts, seeds.next()),
                ));
            }
        }
        let rollouts = backend.generate(&rollout_reqs)?;
        let mut results = rollouts.into_iter();
        let mut rows = Vec::with_capacity(pending.len());
        for (pi, steps, correct) in pending {
            let p = &chunk[pi];
            let mut values = Vec::with_capacity(steps.len());
            for i in 0..steps.len() - 1 {
                let prefix = prefix_text(&steps[..=i], sep);
                let outs = results.next().ok_or_else(|| {
                    RewardError::spec(
                        "label-steps",
                        "the backend returned fewer groups than asked",
                    )
                })?;
                let ok = outs
                    .iter()
                    .filter(|o| task.verify(p, &format!("{prefix}{}", o.text)).is_correct())
                    .count();
                values.push(ok as f64 / outs.len().max(1) as f64);
            }
            values.push(if correct { 1.0 } else { 0.0 });
            let labels = values.iter().map(|&v| opts.rule.label(v)).collect();
            rows.push(StepwiseRow::new(p, steps, labels, values, correct));
        }
        Ok(rows)
    })
}

/// Labels `opts.samples` sampled solutions of each problem with `checker`'s step scores (a step is
/// correct when its score is at least one half; the last step also needs the solution's verified
/// answer). `values` holds the scores. `opts.rollouts` is not used.
pub fn label_steps_by_checker(
    backend: &dyn Backend,
    tokenizer: &Tokenizer,
    task: &dyn Task,
    problems: &[Problem],
    opts: &LabelOptions,
    checker: &dyn StepScorer,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<StepwiseRow>> {
    opts.validate()?;
    let mut seeds = Seeds::new(opts.seed);
    // Sampling alone is cheap: larger chunks fill the engine's batches.
    in_chunks(problems, 64, opts, on_progress, |chunk| {
        let pending = sample_solutions(backend, tokenizer, task, chunk, opts, &mut seeds)?;
        let items: Vec<(&str, Vec<&str>)> = pending
            .iter()
            .map(|(pi, steps, _)| {
                (
                    chunk[*pi].prompt.as_str(),
                    steps.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        let scores = checker.score_steps_batch(&items)?;
        if scores.len() != pending.len() {
            return Err(RewardError::spec(
                "label-steps",
                format!(
                    "step checker `{}` scored {} solutions of {}",
                    checker.name(),
                    scores.len(),
                    pending.len()
                ),
            ));
        }
        let mut rows = Vec::with_capacity(pending.len());
        for ((pi, steps, correct), mut values) in pending.into_iter().zip(scores) {
            if values.len() != steps.len() {
                return Err(RewardError::spec(
                    "label-steps",
                    format!(
                        "step checker `{}` gave {} scores for {} steps",
                        checker.name(),
                        values.len(),
                        steps.len()
                    ),
                ));
            }
            if let Some(last) = values.last_mut() {
                *last = last.min(if correct { 1.0 } else { 0.0 });
            }
            let labels = values.iter().map(|&v| v >= 0.5).collect();
            rows.push(StepwiseRow::new(&chunk[pi], steps, labels, values, correct));
        }
        Ok(rows)
    })
}

/// Labels `opts.samples` sampled solutions of each problem by their outcome alone: every step
/// gets the verified answer's label (what an implicit PRM or an outcome model trains on; no
/// rollouts, no step checker). `values` holds 1 or 0. `opts.rollouts` is not used.
pub fn label_steps_by_outcome(
    backend: &dyn Backend,
    tokenizer: &Tokenizer,
    task: &dyn Task,
    problems: &[Problem],
    opts: &LabelOptions,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<StepwiseRow>> {
    opts.validate()?;
    let mut seeds = Seeds::new(opts.seed);
    in_chunks(problems, 64, opts, on_progress, |chunk| {
        let pending = sample_solutions(backend, tokenizer, task, chunk, opts, &mut seeds)?;
        Ok(pending
            .into_iter()
            .map(|(pi, steps, correct)| {
                let n = steps.len();
                let value = if correct { 1.0 } else { 0.0 };
                StepwiseRow::new(&chunk[pi], steps, vec![correct; n], vec![value; n], correct)
            })
            .collect())
    })
}

impl StepwiseRow {
    fn new(
        p: &Problem,
        steps: Vec<String>,
        labels: Vec<bool>,
        values: Vec<f64>,
        correct: bool,
    ) -> Self {
        StepwiseRow {
            prompt: p.prompt.clone(),
            completions: steps,
            labels,
            values,
            answer: p.answer.clone(),
            correct,
        }
    }
}

/// Labels `problems` `size` at a time with `label_chunk`, balancing each chunk's rows when asked and
/// reporting progress after each.
fn in_chunks(
    problems: &[Problem],
    size: usize,
    opts: &LabelOptions,
    on_progress: &mut dyn FnMut(usize, usize),
    mut label_chunk: impl FnMut(&[Problem]) -> Result<Vec<StepwiseRow>>,
) -> Result<Vec<StepwiseRow>> {
    let mut rows = Vec::new();
    let mut done = 0;
    for chunk in problems.chunks(size) {
        let chunk_rows = label_chunk(chunk)?;
        if opts.balance {
            rows.extend(balanced(chunk_rows));
        } else {
            rows.extend(chunk_rows);
        }
        done += chunk.len();
        on_progress(done, problems.len());
    }
    Ok(rows)
}

/// The sampling seeds, one per request, derived from the options' seed.
struct Seeds(u64);

impl Seeds {
    fn new(seed: u64) -> Self {
        Seeds(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        self.0
    }
}

fn sampling(opts: &LabelOptions, seed: u64) -> SamplingParams {
    SamplingParams {
        max_new_tokens: opts.max_new_tokens,
        temperature: opts.temperature,
        seed,
        ..Default::default()
    }
}

/// `opts.samples` solutions of each problem of `chunk`, as (problem index, steps, verified):
/// solutions cut at the length limit or without a step are left out.
fn sample_solutions(
    backend: &dyn Backend,
    tokenizer: &Tokenizer,
    task: &dyn Task,
    chunk: &[Problem],
    opts: &LabelOptions,
    seeds: &mut Seeds,
) -> Result<Vec<(usize, Vec<String>, bool)>> {
    let reqs: Vec<GenRequest> = chunk
        .iter()
        .map(|p| {
            Ok(GenRequest::new(
                tokenizer.encode(&p.prompt, true)?,
                opts.samples,
                sampling(opts, seeds.next()),
            ))
        })
        .collect::<Result<_>>()?;
    let solutions = backend.generate(&reqs)?;
    let mut out = Vec::new();
    for (pi, (p, samples)) in chunk.iter().zip(&solutions).enumerate() {
        for c in samples {
            // A solution cut at the length limit has no answer step to label.
            if c.finish_reason == FinishReason::Length {
                continue;
            }
            let steps: Vec<String> = split_steps(&c.text, &opts.separator)
                .into_iter()
                .map(str::to_string)
                .collect();
            if steps.is_empty() {
                continue;
            }
            let correct = task.verify(p, &c.text).is_correct();
            out.push((pi, steps, correct));
        }
    }
    Ok(out)
}

/// Per prompt (in order of first appearance), the first `k` correct and first `k` incorrect rows,
/// `k` the smaller of the two counts.
fn balanced(rows: Vec<StepwiseRow>) -> Vec<StepwiseRow> {
    let mut prompts: Vec<&str> = Vec::new();
    for r in &rows {
        if !prompts.contains(&r.prompt.as_str()) {
            prompts.push(&r.prompt);
        }
    }
    let mut keep = vec![false; rows.len()];
    for p in prompts {
        let of = |c: bool| -> Vec<usize> {
            (0..rows.len())
                .filter(|&i| rows[i].prompt == p && rows[i].correct == c)
                .collect()
        };
        let (good, bad) = (of(true), of(false));
        let k = good.len().min(bad.len());
        for &i in good[..k].iter().chain(&bad[..k]) {
            keep[i] = true;
        }
    }
    rows.into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect()
}

/// The steps joined, each followed by the separator: where a rollout continues.
fn prefix_text(steps: &[String], sep: &str) -> String {
    let mut s = String::new();
    for step in steps {
        s.push_str(step);
        s.push_str(sep);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_label_fractions() {
        assert!(LabelRule::Any.label(0.125));
        assert!(!LabelRule::Any.label(0.0));
        assert!(LabelRule::AtLeast(0.5).label(0.5));
        assert!(!LabelRule::AtLeast(0.5).label(0.375));
        let bad = LabelOptions {
            rule: LabelRule::AtLeast(1.5),
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("threshold"));
        assert_eq!(prefix_text(&["a".into(), "b".into()], "\n"), "a\nb\n");
    }

    /// Answers `Compute: 2+3` with one right and one wrong solution; from a prefix, always
    /// answers 5 after a right first step and alternates 5 and 6 after a wrong one.
    struct Scripted(Tokenizer);

    impl Backend for Scripted {
        fn generate_with(
            &self,
            reqs: &[GenRequest],
            _on_event: &mut dyn FnMut(&tempering_generate::GenEvent<'_>),
        ) -> tempering_generate::Result<Vec<Vec<tempering_generate::Completion>>> {
            let done = |text: &str| tempering_generate::Completion {
                tokens: vec![],
                text: text.to_string(),
                logprobs: None,
                top_logprobs: None,
                finish_reason: FinishReason::Stop,
                stop_string: None,
            };
            Ok(reqs
                .iter()
                .map(|r| {
                    let prompt = self.0.decode(&r.prompt, false).unwrap();
                    (0..r.n)
                        .map(|j| {
                            if prompt.ends_with("2+3=5\n") {
                                done("Answer: 5")
                            } else if prompt.ends_with("2+3=6\n") {
                                done(if j % 2 == 0 { "Answer: 5" } else { "Answer: 6" })
                            } else if j % 2 == 0 {
                                done("2+3=5\nAnswer: 5")
                            } else {
                                done("2+3=6\nAnswer: 6")
                            }
                        })
                        .collect()
                })
                .collect())
        }
    }

    #[test]
    fn steps_are_labelled_by_their_rollouts_and_the_last_by_the_verdict() {
        let task = tempering_tasks::task_by_name("arithmetic").unwrap();
        let problem = task.problem_from_record("Compute: 2+3\n", "5", 1).unwrap();
        let tok = Tokenizer::char_level(task.alphabet()).unwrap();
        let backend = Scripted(tok.clone());
        let opts = LabelOptions {
            samples: 2,
            rollouts: 4,
            ..Default::default()
        };
        let rows = label_steps(
            &backend,
            &tok,
            task.as_ref(),
            std::slice::from_ref(&problem),
            &opts,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].completions, vec!["2+3=5", "Answer: 5"]);
        assert_eq!(
            (rows[0].values.clone(), rows[0].labels.clone()),
            (vec![1.0, 1.0], vec![true, true])
        );
        assert!(rows[0].correct && !rows[1].correct);
        assert_eq!(
            (rows[1].values.clone(), rows[1].labels.clone()),
            (vec![0.5, 0.0], vec![true, false])
        );
        let strict = LabelOptions {
            rule: LabelRule::AtLeast(0.75),
            ..opts
        };
        let rows = label_steps(
            &backend,
            &tok,
            task.as_ref(),
            &[problem],
            &strict,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(rows[1].labels, vec![false, false]);
    }

    #[test]
    fn a_step_checker_labels_each_step_without_rollouts() {
        let task = tempering_tasks::task_by_name("arithmetic").unwrap();
        let problem = task.problem_from_record("Compute: 2+3\n", "5", 1).unwrap();
        let tok = Tokenizer::char_level(task.alphabet()).unwrap();
        let backend = Scripted(tok.clone());
        let opts = LabelOptions {
            samples: 2,
            ..Default::default()
        };
        let rows = label_steps_by_checker(
            &backend,
            &tok,
            task.as_ref(),
            &[problem],
            &opts,
            &crate::rules::ArithmeticSteps,
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].completions, vec!["2+3=5", "Answer: 5"]);
        assert_eq!(rows[0].labels, vec![true, true]);
        // `2+3=6` is wrong by the rule, whatever a rollout from it might reach.
        assert_eq!(rows[1].completions, vec!["2+3=6", "Answer: 6"]);
        assert_eq!(rows[1].labels, vec![false, false]);
        assert_eq!(rows[1].values, vec![0.0, 0.0]);
    }

    #[test]
    fn balancing_keeps_as_many_correct_as_incorrect_per_problem() {
        let row = |p: &str, c: bool, tag: &str| StepwiseRow {
            prompt: p.into(),
            completions: vec![tag.into()],
            labels: vec![c],
            values: vec![if c { 1.0 } else { 0.0 }],
            answer: String::new(),
            correct: c,
        };
        let rows = vec![
            row("a", true, "a1"),
            row("a", false, "a2"),
            row("a", false, "a3"),
            row("b", true, "b1"),
            row("b", true, "b2"),
            row("c", false, "c1"),
            row("c", true, "c2"),
            row("c", true, "c3"),
            row("c", false, "c4"),
        ];
        let tags: Vec<String> = balanced(rows)
            .into_iter()
            .map(|r| r.completions[0].clone())
            .collect();
        assert_eq!(tags, vec!["a1", "a2", "c1", "c2", "c3", "c4"]);
    }
}
