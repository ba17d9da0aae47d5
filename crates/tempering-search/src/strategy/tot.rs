//! Tree of Thoughts over reasoning steps, with a state evaluator (a PRM or self-evaluation behind
//! the step scorer): breadth-first (propose `k` distinct thoughts per state, keep the `breadth` best
//! states above a threshold) and depth-first (follow the best thought first, prune below the
//! threshold, backtrack, stop at the first finished solution that clears it).

use super::{Candidate, Needs, Strategy};
use crate::context::{SearchConfig, SearchContext, SearchProblem};
use crate::error::Result;
use crate::vote::argmax;

#[derive(Clone, Debug)]
struct State {
    steps: Vec<String>,
    node: Option<usize>,
    value: f64,
    last: bool,
}

/// Children of `states`, `k` proposals each with duplicates among siblings dropped, valued by the
/// step scorer.
fn propose(
    ctx: &mut SearchContext<'_>,
    prompt: &str,
    states: &[State],
    k: usize,
) -> Result<Vec<State>> {
    let parents: Vec<&[String]> = states.iter().map(|s| s.steps.as_slice()).collect();
    let groups = ctx.expand(prompt, &parents, k, false)?;
    let mut out = vec![];
    for (s, kids) in states.iter().zip(groups) {
        let mut seen: Vec<String> = vec![];
        for st in kids {
            let node = ctx
                .trace
                .add(s.node.into_iter().collect(), "thought", &st.text, st.tokens);
            if seen.contains(&st.text) {
                continue;
            }
            seen.push(st.text.clone());
            let mut steps = s.steps.clone();
            steps.push(st.text);
            out.push(State {
                steps,
                node: Some(node),
                value: 0.0,
                last: st.last,
            });
        }
    }
    if out.is_empty() {
        return Ok(out);
    }
    let refs: Vec<&[String]> = out.iter().map(|s| s.steps.as_slice()).collect();
    let values = ctx.values(prompt, &refs)?;
    for (s, v) in out.iter_mut().zip(values) {
        s.value = v;
        if let Some(n) = s.node {
            ctx.trace.set_score(n, v);
        }
    }
    Ok(out)
}

fn best(pool: &[State]) -> Candidate {
    let values: Vec<f64> = pool.iter().map(|s| s.value).collect();
    match argmax(&values) {
        Some(i) => Candidate::new(pool[i].steps.join("\n"), Some(values[i]), pool[i].node),
        None => Candidate::default(),
    }
}

pub struct TotBfs {
    pub breadth: usize,
    pub k: usize,
    /// States valued below this are dropped.
    pub threshold: f64,
}

impl Strategy for TotBfs {
    fn name(&self) -> String {
        format!("tot-bfs:{}x{}:thr={}", self.breadth, self.k, self.threshold)
    }

    fn needs(&self) -> Needs {
        Needs::StepScore
    }

    fn unit_tokens(&self, config: &SearchConfig) -> usize {
        config.step_max_tokens
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let mut frontier = vec![State {
            steps: vec![],
            node: None,
            value: 0.0,
            last: false,
        }];
        let mut finished: Vec<State> = vec![];
        let mut seen_partial: Vec<State> = vec![];
        while !frontier.is_empty() {
            let mut kids = propose(ctx, &problem.prompt, &frontier, self.k)?;
            if kids.is_empty() {
                break;
            }
            kids.retain(|s| s.value >= self.threshold);
            kids.sort_by(|a, b| {
                b.value
                    .partial_cmp(&a.value)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            kids.truncate(self.breadth);
            frontier = vec![];
            for s in kids {
                if s.last {
                    finished.push(s);
                } else {
                    seen_partial.push(s.clone());
                    frontier.push(s);
                }
            }
        }
        Ok(best(if finished.is_empty() {
            &seen_partial
        } else {
            &finished
        }))
    }
}

pub struct TotDfs {
    pub k: usize,
    pub threshold: f64,
    /// Most states expanded (DFS can otherwise wander for long under a loose budget).
    pub max_expansions: usize,
}

impl Strategy for TotDfs {
    fn name(&self) -> String {
        format!(
            "tot-dfs:{}:thr={}:nodes={}",
            self.k, self.threshold, self.max_expansions
        )
    }

    fn needs(&self) -> Needs {
        Needs::StepScore
    }

    fn unit_tokens(&self, config: &SearchConfig) -> usize {
        config.step_max_tokens
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let mut stack = vec![State {
            steps: vec![],
            node: None,
            value: 0.0,
            last: false,
        }];
        let mut finished: Vec<State> = vec![];
        let mut seen: Vec<State> = vec![];
        let mut expansions = 0;
        while let Some(s) = stack.pop() {
            if expansions == self.max_expansions {
                break;
            }
            expansions += 1;
            let mut kids = propose(ctx, &problem.prompt, std::slice::from_ref(&s), self.k)?;
            if kids.is_empty() && !ctx.can_sample(ctx.config.step_max_tokens) {
                break;
            }
            kids.sort_by(|a, b| {
                b.value
                    .partial_cmp(&a.value)
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            seen.extend(kids.iter().cloned());
            if let Some(win) = kids.iter().find(|c| c.last && c.value >= self.threshold) {
                return Ok(best(std::slice::from_ref(win)));
            }
            finished.extend(kids.iter().filter(|c| c.last).cloned());
            // Best child on top of the stack.
            for c in kids.into_iter().rev() {
                if !c.last && c.value >= self.threshold {
                    stack.push(c);
                }
            }
        }
        Ok(best(if finished.is_empty() {
            &seen
        } else {
            &finished
        }))
    }
}
