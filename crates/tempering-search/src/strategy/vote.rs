//! Strategies over independent whole completions: self-consistency (majority vote, or a vote
//! weighted by a verifier / RM / PRM), best-of-N, and the two that decide how many samples to draw
//! from the samples so far: early stopping when the vote is decided, and adaptive N by estimated
//! difficulty.

use super::{Candidate, Needs, Strategy};
use crate::context::{Sample, SearchContext, SearchProblem};
use crate::error::Result;
use crate::vote::{answer_of, argmax, tally, vote, Aggregation};

/// Adds samples to the trace, returning their node ids and answers.
fn record(ctx: &mut SearchContext<'_>, samples: &[Sample]) -> (Vec<usize>, Vec<Option<String>>) {
    samples
        .iter()
        .map(|s| {
            let id = ctx.trace.add(vec![], "sample", &s.text, s.tokens);
            let a = answer_of(&s.text);
            ctx.trace.set_answer(id, a.clone());
            (id, a)
        })
        .unzip()
}

/// The majority (or weighted) winner among samples; the score is its share of the weight.
fn pick(
    samples: &[Sample],
    nodes: &[usize],
    answers: &[Option<String>],
    weights: &[f64],
) -> Candidate {
    let items: Vec<(Option<&str>, f64)> = answers
        .iter()
        .zip(weights)
        .map(|(a, w)| (a.as_deref(), *w))
        .collect();
    let total: f64 = items.iter().filter(|i| i.0.is_some()).map(|i| i.1).sum();
    match vote(&items) {
        Some((_, w, i)) => Candidate::new(
            samples[i].text.clone(),
            Some(if total > 0.0 { w / total } else { 0.0 }),
            Some(nodes[i]),
        ),
        // No sample had an answer: return the first one as it is.
        None => samples
            .first()
            .map(|s| Candidate::new(s.text.clone(), None, nodes.first().copied()))
            .unwrap_or_default(),
    }
}

/// Self-consistency over `n` samples: majority vote, or with `weighted` each sample votes with
/// its score (verifier / RM, else the PRM's steps folded by the aggregation).
pub struct SelfConsistency {
    pub n: usize,
    pub weighted: Option<Aggregation>,
}

impl Strategy for SelfConsistency {
    fn name(&self) -> String {
        match self.weighted {
            None => format!("sc@{}", self.n),
            Some(a) => format!("wsc@{}:{}", self.n, a.as_str()),
        }
    }

    fn needs(&self) -> Needs {
        if self.weighted.is_some() {
            Needs::CompletionScore
        } else {
            Needs::Nothing
        }
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let samples = ctx.complete(&problem.prompt, self.n, false)?;
        let (nodes, answers) = record(ctx, &samples);
        let weights = match self.weighted {
            None => vec![1.0; samples.len()],
            Some(agg) => {
                let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
                let w = ctx.score_completions(&problem.prompt, &texts, agg)?;
                for (&id, &s) in nodes.iter().zip(&w) {
                    ctx.trace.set_score(id, s);
                }
                w
            }
        };
        Ok(pick(&samples, &nodes, &answers, &weights))
    }
}

/// Best-of-N: the sample with the highest score (first on ties).
pub struct BestOfN {
    pub n: usize,
    pub aggregation: Aggregation,
}

impl Strategy for BestOfN {
    fn name(&self) -> String {
        format!("bon@{}:{}", self.n, self.aggregation.as_str())
    }

    fn needs(&self) -> Needs {
        Needs::CompletionScore
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let samples = ctx.complete(&problem.prompt, self.n, false)?;
        let (nodes, _) = record(ctx, &samples);
        let texts: Vec<&str> = samples.iter().map(|s| s.text.as_str()).collect();
        let scores = ctx.score_completions(&problem.prompt, &texts, self.aggregation)?;
        for (&id, &s) in nodes.iter().zip(&scores) {
            ctx.trace.set_score(id, s);
        }
        Ok(match argmax(&scores) {
            Some(i) => Candidate::new(samples[i].text.clone(), Some(scores[i]), Some(nodes[i])),
            None => Candidate::default(),
        })
    }
}

/// Self-consistency that samples `window` at a time and stops when the vote is decided: the
/// leader cannot be caught with the samples left, or a whole window agreed (early-stopping
/// self-consistency).
pub struct EarlyStopping {
    pub n: usize,
    pub window: usize,
}

impl Strategy for EarlyStopping {
    fn name(&self) -> String {
        format!("esc@{}:w={}", self.n, self.window)
    }

    fn needs(&self) -> Needs {
        Needs::Nothing
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let mut samples = vec![];
        let mut nodes = vec![];
        let mut answers: Vec<Option<String>> = vec![];
        while samples.len() < self.n {
            let want = self.window.min(self.n - samples.len());
            let batch = ctx.complete(&problem.prompt, want, false)?;
            if batch.is_empty() {
                break;
            }
            let (ids, ans) = record(ctx, &batch);
            let unanimous =
                batch.len() == want && ans[0].is_some() && ans.iter().all(|a| *a == ans[0]);
            samples.extend(batch);
            nodes.extend(ids);
            answers.extend(ans);
            let counts = tally(&answers);
            let lead = counts.first().map_or(0, |c| c.1);
            let second = counts.get(1).map_or(0, |c| c.1);
            if unanimous || lead > second + (self.n - samples.len()) {
                break;
            }
        }
        Ok(pick(&samples, &nodes, &answers, &vec![1.0; samples.len()]))
    }
}

/// Adaptive N: `window` samples estimate the problem's difficulty by how much they disagree,
/// then the rest of the `n` samples are spent in proportion (none when they all agree, all when
/// they disagree as much as `window` samples can); the majority of all samples wins.
pub struct Adaptive {
    pub n: usize,
    pub window: usize,
}

impl Adaptive {
    /// Total samples to draw after a first window whose leading answer got `lead` of `window`.
    pub fn target(&self, lead: usize, window: usize) -> usize {
        if window <= 1 || lead >= window {
            return window;
        }
        let disagreement = 1.0 - lead as f64 / window as f64;
        let most = 1.0 - 1.0 / window as f64;
        let extra = ((self.n - window) as f64 * (disagreement / most)).ceil() as usize;
        (window + extra).min(self.n)
    }
}

impl Strategy for Adaptive {
    fn name(&self) -> String {
        format!("adaptive@{}:w={}", self.n, self.window)
    }

    fn needs(&self) -> Needs {
        Needs::Nothing
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let mut samples = ctx.complete(&problem.prompt, self.window.min(self.n), false)?;
        let (mut nodes, mut answers) = record(ctx, &samples);
        let lead = tally(&answers).first().map_or(0, |c| c.1);
        let target = self.target(lead, samples.len());
        if target > samples.len() {
            let more = ctx.complete(&problem.prompt, target - samples.len(), false)?;
            let (ids, ans) = record(ctx, &more);
            samples.extend(more);
            nodes.extend(ids);
            answers.extend(ans);
        }
        Ok(pick(&samples, &nodes, &answers, &vec![1.0; samples.len()]))
    }
}
