//! What a strategy works with: the [`SearchContext`] holds the backend (behind a text-level
//! interface), the scorers, the settings shared by every strategy, the budget's [`Meter`] and the
//! [`Trace`]. Every generation and every score goes through it, so cost accounting and the budget
//! cannot be bypassed. Knows nothing of any one strategy.

use tempering_generate::{Backend, FinishReason, GenRequest, SamplingParams};
use tempering_reward::{ScoreInput, StepScorer, Verifier};
use tempering_tasks::{ANSWER_MARKER, STEP_SEPARATOR};

use crate::budget::{Budget, Cost, Meter};
use crate::error::{Result, SearchError};
use crate::text::TextEncoder;
use crate::trace::Trace;
use crate::vote::Aggregation;

/// One problem to solve: the prompt text the model continues (a task prompt, or a template
/// applied to a question), and the reference answer when a verifier may use it (a rule verifier
/// given the reference is an oracle: leave it out for honest best-of-N).
#[derive(Clone, Debug, PartialEq)]
pub struct SearchProblem {
    pub prompt: String,
    pub reference: Option<String>,
}

impl SearchProblem {
    pub fn new(prompt: impl Into<String>) -> Self {
        SearchProblem {
            prompt: prompt.into(),
            reference: None,
        }
    }
}

/// Settings every strategy shares.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchConfig {
    /// Sampling for sampled completions and steps; `max_new_tokens` is one whole completion.
    pub sampling: SamplingParams,
    /// Most tokens of one reasoning step.
    pub step_max_tokens: usize,
    /// Most steps of a step-level search; a partial solution this deep is final.
    pub max_depth: usize,
    /// Seeds every request (each request gets its own stream derived from this and its order).
    pub seed: u64,
    /// How a PRM's step scores become a completion's score where a strategy needs one.
    pub aggregation: Aggregation,
    /// The fewest tokens a sample capped to what is left of the token budget may get; below it no
    /// more samples are drawn (one that short could not finish).
    pub min_sample_tokens: usize,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig {
            sampling: SamplingParams {
                max_new_tokens: 256,
                temperature: 0.8,
                ..SamplingParams::default()
            },
            step_max_tokens: 64,
            max_depth: 16,
            seed: 0,
            aggregation: Aggregation::Min,
            min_sample_tokens: 8,
        }
    }
}

/// The scorers a strategy may use.
#[derive(Clone, Copy, Default)]
pub struct Scorers<'a> {
    /// Scores whole completions: an outcome verifier or reward model.
    pub verifier: Option<&'a dyn Verifier>,
    /// Scores each step: a process reward model or self-evaluation.
    pub step: Option<&'a dyn StepScorer>,
}

/// One generated sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub text: String,
    pub tokens: usize,
    pub finish: FinishReason,
}

/// One generated reasoning step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub text: String,
    pub tokens: usize,
    /// The solution ends with this step (an answer line, a stop token, or the length limit).
    pub last: bool,
}

pub struct SearchContext<'a> {
    backend: &'a dyn Backend,
    encoder: &'a dyn TextEncoder,
    pub scorers: Scorers<'a>,
    pub config: SearchConfig,
    pub(crate) reference: Option<String>,
    meter: Meter,
    pub trace: Trace,
    requests: u64,
    cut: bool,
}

/// SplitMix64's finaliser: independent-looking seeds from (seed, index).
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The prompt that continues `steps` after the problem prompt.
pub fn continuation(prompt: &str, steps: &[String]) -> String {
    let mut s = prompt.to_string();
    for st in steps {
        s.push_str(st);
        s.push_str(STEP_SEPARATOR);
    }
    s
}

/// Whether a step is a final answer line.
pub fn is_answer_step(step: &str) -> bool {
    step.contains(ANSWER_MARKER.trim_end())
}

impl<'a> SearchContext<'a> {
    pub fn new(
        backend: &'a dyn Backend,
        encoder: &'a dyn TextEncoder,
        scorers: Scorers<'a>,
        config: SearchConfig,
        budget: Budget,
    ) -> Self {
        SearchContext {
            backend,
            encoder,
            scorers,
            config,
            reference: None,
            meter: Meter::new(budget),
            trace: Trace::default(),
            requests: 0,
            cut: false,
        }
    }

    pub fn budget(&self) -> &Budget {
        self.meter.budget()
    }

    pub fn cost(&self) -> Cost {
        self.meter.cost()
    }

    /// Whether the budget refused (part of) some request.
    pub fn was_cut(&self) -> bool {
        self.cut
    }

    /// Whether a sample of at most `max_new` tokens would be granted now (with its full length
    /// reserved, or capped to what is left of the budget).
    pub fn can_sample(&self, max_new: usize) -> bool {
        self.meter
            .wave(&[(1, max_new)], self.min_sample_tokens(max_new))[0]
            .n
            > 0
    }

    /// The minimum of a capped sample: the config's, never more than a full sample.
    fn min_sample_tokens(&self, max_new: usize) -> usize {
        self.config.min_sample_tokens.min(max_new)
    }

    /// Generates `n` samples for each prompt with `params` (each request's seed is replaced by one
    /// derived from the context's seed and the request's order). The budget is spent in waves
    /// ([`Meter::wave`]): the samples that fit with their full length reserved run together, the
    /// tokens they did not use are granted to the next wave, and so on until every request has
    /// its samples or the budget grants nothing more; a request's group is then shorter than asked,
    /// or empty. A sample capped to what was left and cut there ends with
    /// [`FinishReason::Length`], as one cut by `max_new_tokens` does.
    pub fn generate(
        &mut self,
        reqs: &[(String, usize)],
        params: &SamplingParams,
    ) -> Result<Vec<Vec<Sample>>> {
        let mut out: Vec<Vec<Sample>> = vec![vec![]; reqs.len()];
        let mut missing: Vec<usize> = reqs.iter().map(|(_, n)| *n).collect();
        let min = self.min_sample_tokens(params.max_new_tokens);
        let mut ids: Vec<Option<Vec<u32>>> = vec![None; reqs.len()];
        loop {
            let wanted: Vec<(usize, usize)> = missing
                .iter()
                .map(|&n| (n, params.max_new_tokens))
                .collect();
            let grants = self.meter.wave(&wanted, min);
            let mut batch = vec![];
            let mut slots = vec![];
            for (i, g) in grants.iter().enumerate() {
                if g.n == 0 {
                    continue;
                }
                let prompt_ids = match &ids[i] {
                    Some(p) => p.clone(),
                    None => {
                        let p = self
                            .encoder
                            .encode(&reqs[i].0)
                            .map_err(SearchError::Encode)?;
                        ids[i] = Some(p.clone());
                        p
                    }
                };
                let mut p = params.clone();
                p.max_new_tokens = g.max_new;
                p.seed = mix(self.config.seed, self.requests);
                self.requests += 1;
                batch.push(GenRequest::new(prompt_ids, g.n, p));
                slots.push(i);
                // Counted as granted whatever comes back, so every wave makes progress.
                missing[i] -= g.n;
            }
            if batch.is_empty() {
                break;
            }
            let groups = self.backend.generate(&batch)?;
            for ((req, group), slot) in batch.iter().zip(groups).zip(slots) {
                let generated: usize = group.iter().map(|c| c.tokens.len()).sum();
                self.meter.charge_call(req.prompt.len(), generated);
                out[slot].extend(group.into_iter().map(|c| Sample {
                    tokens: c.tokens.len(),
                    text: c.text,
                    finish: c.finish_reason,
                }));
            }
        }
        if missing.iter().any(|&n| n > 0) {
            self.cut = true;
        }
        Ok(out)
    }

    /// Sampling parameters for a whole completion; greedy when `greedy`.
    pub fn completion_params(&self, greedy: bool) -> SamplingParams {
        let mut p = self.config.sampling.clone();
        if greedy {
            p.temperature = 0.0;
        }
        p
    }

    /// Sampling parameters for one step: stops at the step separator.
    pub fn step_params(&self, greedy: bool) -> SamplingParams {
        let mut p = self.completion_params(greedy);
        p.max_new_tokens = self.config.step_max_tokens;
        if !p.stop.iter().any(|s| s == STEP_SEPARATOR) {
            p.stop.push(STEP_SEPARATOR.to_string());
        }
        p
    }

    /// `n` whole completions of one prompt.
    pub fn complete(&mut self, prompt: &str, n: usize, greedy: bool) -> Result<Vec<Sample>> {
        let params = self.completion_params(greedy);
        Ok(self
            .generate(&[(prompt.to_string(), n)], &params)?
            .pop()
            .unwrap_or_default())
    }

    /// `k` next steps for each partial solution (all in one backend call).
    pub fn expand(
        &mut self,
        prompt: &str,
        partials: &[&[String]],
        k: usize,
        greedy: bool,
    ) -> Result<Vec<Vec<Step>>> {
        let params = self.step_params(greedy);
        let reqs: Vec<(String, usize)> = partials
            .iter()
            .map(|steps| (continuation(prompt, steps), k))
            .collect();
        let groups = self.generate(&reqs, &params)?;
        let max_depth = self.config.max_depth;
        Ok(groups
            .into_iter()
            .zip(partials)
            .map(|(g, steps)| {
                g.into_iter()
                    .map(|s| Step {
                        last: s.finish != FinishReason::StopString
                            || is_answer_step(&s.text)
                            || steps.len() + 1 >= max_depth,
                        text: s.text,
                        tokens: s.tokens,
                    })
                    .collect()
            })
            .collect())
    }

    /// Scores of each step of each partial solution, from the step scorer.
    pub fn score_steps(&mut self, prompt: &str, partials: &[&[String]]) -> Result<Vec<Vec<f64>>> {
        let scorer = self.scorers.step.ok_or(SearchError::MissingScorer {
            strategy: "this".into(),
            what: "a step scorer",
            hint: "--prm DIR or --scorer self-eval",
        })?;
        let items: Vec<(&str, Vec<&str>)> = partials
            .iter()
            .map(|s| (prompt, s.iter().map(String::as_str).collect()))
            .collect();
        let out = scorer.score_steps_batch(&items)?;
        if out.len() != items.len() {
            return Err(SearchError::ScorerShape {
                scorer: scorer.name().to_string(),
                got: out.len(),
                want: items.len(),
            });
        }
        self.meter.charge_scores(items.len());
        Ok(out)
    }

    /// The value of each partial solution: its last step's score (0 for no steps).
    pub fn values(&mut self, prompt: &str, partials: &[&[String]]) -> Result<Vec<f64>> {
        Ok(self
            .score_steps(prompt, partials)?
            .into_iter()
            .map(|s| Aggregation::Last.apply(&s))
            .collect())
    }

    /// One score per whole completion: the verifier's where there is one, else the step
    /// scorer's step scores folded by `aggregation`.
    pub fn score_completions(
        &mut self,
        prompt: &str,
        texts: &[&str],
        aggregation: Aggregation,
    ) -> Result<Vec<f64>> {
        if let Some(v) = self.scorers.verifier {
            let inputs: Vec<ScoreInput<'_>> = texts
                .iter()
                .map(|t| ScoreInput::new(prompt, t).with_reference(self.reference.as_deref()))
                .collect();
            let out = v.score_batch(&inputs)?;
            if out.len() != texts.len() {
                return Err(SearchError::ScorerShape {
                    scorer: v.name().to_string(),
                    got: out.len(),
                    want: texts.len(),
                });
            }
            self.meter.charge_scores(texts.len());
            return Ok(out.into_iter().map(|s| s.score).collect());
        }
        let steps: Vec<Vec<String>> = texts
            .iter()
            .map(|t| {
                t.split(STEP_SEPARATOR)
                    .filter(|s| !s.trim().is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        let refs: Vec<&[String]> = steps.iter().map(Vec::as_slice).collect();
        Ok(self
            .score_steps(prompt, &refs)?
            .iter()
            .map(|s| aggregation.apply(s))
            .collect())
    }
}
