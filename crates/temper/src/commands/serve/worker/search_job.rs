//! Searches as requests: a `temper` strategy run through the search crate on the local engine or
//! the remote backend (either gives up once the client has gone, failing the search at that model
//! call), with the engine counted (`usage.temper.samples`, and the tokens on `/metrics` as they
//! come) and the rule or learned step scorer asked for.

use std::time::Instant;

use serde_json::{json, Value};
use tempering_generate::{Backend, Completion, GenEvent, GenRequest};
use tempering_reward::StepScorer;
use tempering_search::{solve, Scorers, SearchContext, SearchProblem, TokenizerEncoder};

use super::super::api::{self, ApiError, Job, Msg, Output, PromptIn};
use super::super::metrics::Metrics;
use super::{Runs, Worker};
use crate::commands::search::rule_step_checker;

impl Worker {
    pub(super) fn search(&self, e: &dyn Runs, job: &Job) -> Result<Output, ApiError> {
        let s = job.search.as_ref().expect("a search job");
        let (ids, text, special) = match &job.prompt {
            PromptIn::Ids(_) => {
                return Err(ApiError::bad(
                    "a temper strategy needs a text prompt (or messages), not token ids",
                    "prompt",
                ))
            }
            _ => self.prompt_ids(e, job)?,
        };
        let mut config = s.config.clone();
        config.sampling.max_new_tokens = self.fit(e, job, &ids, 256)?;
        let rule: Option<Box<dyn StepScorer>> = match s.scorer.as_deref() {
            Some("rule") => Some(
                rule_step_checker(
                    "scorer: rule",
                    Some(s.task.as_deref().unwrap_or("arithmetic")),
                )
                .map_err(|e| ApiError::bad(format!("{e:#}"), "temper.scorer"))?,
            ),
            _ => None,
        };
        let step: Option<&dyn StepScorer> = match s.scorer.as_deref() {
            Some("rule") => rule.as_deref(),
            Some("prm") => match &self.m.prm {
                Some(p) => Some(p.as_ref()),
                None => {
                    return Err(ApiError::bad(
                        "scorer `prm` needs the server started with --prm DIR",
                        "temper.scorer",
                    ))
                }
            },
            _ => None,
        };
        let encoder = TokenizerEncoder {
            tokenizer: e.tokenizer(),
            add_special_tokens: special,
        };
        let scorers = Scorers {
            verifier: None,
            step,
        };
        let _ = job.tx.send(Msg::Started);
        Self::stream_prompt_ids(job, &ids);
        let started = Instant::now();
        let counting = Counting {
            inner: e as &dyn Backend,
            samples: std::cell::Cell::new(0),
            metrics: &self.metrics,
        };
        let mut ctx = SearchContext::new(&counting, &encoder, scorers, config, s.budget);
        let sol = solve(s.strategy.as_ref(), &SearchProblem::new(text), &mut ctx)
            .map_err(ApiError::from_search)?;
        let c = sol.cost;
        let budget = json!({
            "max_tokens": s.budget.max_tokens,
            "max_calls": s.budget.max_calls,
            "max_seconds": s.budget.max_wall.map(|d| d.as_secs_f64()),
        });
        let _ = job.tx.send(Msg::Token {
            token: None,
            logprobs: None,
            index: 0,
            text: sol.text.clone(),
        });
        Ok(Output {
            choices: vec![api::ChoiceOut {
                text: sol.text.clone(),
                finish_reason: if sol.budget_cut { "length" } else { "stop" },
                logprobs: Value::Null,
                token_ids: None,
            }],
            prompt_token_ids: job.return_token_ids.then(|| ids.clone()),
            prompt_logprobs: None,
            usage: json!({
                "prompt_tokens": ids.len(),
                "completion_tokens": c.generated_tokens,
                "total_tokens": ids.len() + c.generated_tokens,
                "temper": {
                    "strategy": sol.strategy,
                    "answer": sol.answer,
                    "score": sol.score,
                    "samples": counting.samples.get(),
                    "model_calls": c.model_calls,
                    "scorer_calls": c.scorer_calls,
                    "generated_tokens": c.generated_tokens,
                    "prompt_tokens_processed": c.prompt_tokens,
                    "budget": budget,
                    "budget_cut": sol.budget_cut,
                    "wall_s": c.wall_s.max(started.elapsed().as_secs_f64()),
                    "trace_nodes": sol.trace.nodes.len(),
                },
            }),
        })
    }
}

/// The engine (local or remote), counting the sequences a search asks of it
/// (`usage.temper.samples`) and, on `/metrics`, the tokens it generates as they come.
struct Counting<'a> {
    inner: &'a dyn Backend,
    samples: std::cell::Cell<usize>,
    metrics: &'a Metrics,
}

impl Backend for Counting<'_> {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> tempering_generate::Result<Vec<Vec<Completion>>> {
        let n: usize = reqs.iter().map(|r| r.n).sum();
        self.samples.set(self.samples.get() + n);
        self.inner.generate_with(reqs, &mut |ev| {
            if let GenEvent::Token { .. } = ev {
                self.metrics.search_tokens(1);
            }
            on_event(ev)
        })
    }
}
