//! Self-refinement: answer, then `rounds` times critique the best answer so far and revise it,
//! keeping the best by score. The critique and revision prompts are plain text templates appended
//! to the problem prompt (below), so any model that continues text can follow them.

use super::{Candidate, Needs, Strategy};
use crate::context::{SearchContext, SearchProblem};
use crate::error::Result;
use crate::vote::argmax;

/// Follows a solution to ask for a one-line critique.
pub const CRITIQUE: &str = "\nCritique: ";
/// Follows the critique to ask for a revised solution.
pub const REVISE: &str = "\nRevised solution:\n";

/// The prompt asking to critique `solution`.
pub fn critique_prompt(prompt: &str, solution: &str) -> String {
    format!("{prompt}{solution}{CRITIQUE}")
}

/// The prompt asking to revise `solution` given `critique`.
pub fn revise_prompt(prompt: &str, solution: &str, critique: &str) -> String {
    format!("{prompt}{solution}{CRITIQUE}{critique}{REVISE}")
}

pub struct SelfRefine {
    pub rounds: usize,
}

impl Strategy for SelfRefine {
    fn name(&self) -> String {
        format!("refine:{}", self.rounds)
    }

    fn needs(&self) -> Needs {
        Needs::CompletionScore
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let prompt = problem.prompt.as_str();
        let agg = ctx.config.aggregation;
        let Some(first) = ctx.complete(prompt, 1, false)?.pop() else {
            return Ok(Candidate::default());
        };
        let node = ctx.trace.add(vec![], "sample", &first.text, first.tokens);
        let score = ctx.score_completions(prompt, &[&first.text], agg)?[0];
        ctx.trace.set_score(node, score);
        let mut kept = vec![(first.text, score, node)];
        for _ in 0..self.rounds {
            let scores: Vec<f64> = kept.iter().map(|k| k.1).collect();
            let (best, _, best_node) = kept[argmax(&scores).unwrap_or(0)].clone();
            let params = ctx.step_params(false);
            let Some(critique) = ctx
                .generate(&[(critique_prompt(prompt, &best), 1)], &params)?
                .pop()
                .and_then(|mut g| g.pop())
            else {
                break;
            };
            let cnode = ctx
                .trace
                .add(vec![best_node], "critique", &critique.text, critique.tokens);
            let Some(rev) = ctx
                .complete(&revise_prompt(prompt, &best, &critique.text), 1, false)?
                .pop()
            else {
                break;
            };
            let rnode = ctx
                .trace
                .add(vec![cnode], "revision", &rev.text, rev.tokens);
            let s = ctx.score_completions(prompt, &[&rev.text], agg)?[0];
            ctx.trace.set_score(rnode, s);
            kept.push((rev.text, s, rnode));
        }
        let scores: Vec<f64> = kept.iter().map(|k| k.1).collect();
        let i = argmax(&scores).unwrap_or(0);
        let (text, s, n) = kept.swap_remove(i);
        Ok(Candidate::new(text, Some(s), Some(n)))
    }
}
