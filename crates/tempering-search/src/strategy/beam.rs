//! Step-level search guided by a step scorer: beam search (keep the `width` best partial
//! solutions, expand each `expansions` times), diverse verifier tree search (independent subtrees
//! that each keep their best path, for diversity) and lookahead search (rank a candidate step by
//! the score a few greedy steps further). One engine does all three: groups of paths, each keeping
//! its best few.

use super::{Candidate, Needs, Strategy};
use crate::context::{SearchConfig, SearchContext, SearchProblem};
use crate::error::Result;
use crate::vote::{argmax, Aggregation};

/// A partial (or finished) solution.
#[derive(Clone, Debug)]
struct Path {
    steps: Vec<String>,
    /// Step scores of `steps`.
    scores: Vec<f64>,
    node: Option<usize>,
    group: usize,
    last: bool,
    /// What ranks it: the last step's score, or the lookahead's.
    value: f64,
}

/// How a step-level search is shaped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepSearch {
    /// Independent groups (1 for beam search, the subtree count for DVTS).
    pub groups: usize,
    /// Paths each group keeps per depth.
    pub keep: usize,
    /// Children of each kept path.
    pub expansions: usize,
    /// Greedy steps rolled out to rank a candidate (0: rank by its own last step).
    pub lookahead: usize,
    /// How the finished paths' step scores are folded to pick the answer.
    pub aggregation: Aggregation,
}

/// A named step search: beam, DVTS or lookahead.
pub struct StepSearchStrategy {
    pub label: String,
    pub shape: StepSearch,
}

impl StepSearchStrategy {
    pub fn beam(width: usize, expansions: usize, aggregation: Aggregation) -> Self {
        StepSearchStrategy {
            label: format!("beam:{width}x{expansions}:{}", aggregation.as_str()),
            shape: StepSearch {
                groups: 1,
                keep: width,
                expansions,
                lookahead: 0,
                aggregation,
            },
        }
    }

    pub fn dvts(subtrees: usize, expansions: usize, aggregation: Aggregation) -> Self {
        StepSearchStrategy {
            label: format!("dvts:{subtrees}x{expansions}:{}", aggregation.as_str()),
            shape: StepSearch {
                groups: subtrees,
                keep: 1,
                expansions,
                lookahead: 0,
                aggregation,
            },
        }
    }

    pub fn lookahead(width: usize, expansions: usize, steps: usize, agg: Aggregation) -> Self {
        StepSearchStrategy {
            label: format!("lookahead:{width}x{expansions}:k={steps}:{}", agg.as_str()),
            shape: StepSearch {
                groups: 1,
                keep: width,
                expansions,
                lookahead: steps,
                aggregation: agg,
            },
        }
    }
}

impl Strategy for StepSearchStrategy {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn needs(&self) -> Needs {
        Needs::StepScore
    }

    fn unit_tokens(&self, config: &SearchConfig) -> usize {
        config.step_max_tokens
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let s = self.shape;
        let prompt = problem.prompt.as_str();
        let mut active = vec![Path {
            steps: vec![],
            scores: vec![],
            node: None,
            group: 0,
            last: false,
            value: 0.0,
        }];
        let mut finished: Vec<Path> = vec![];
        let mut first = true;
        while !active.is_empty() {
            // The first round draws every group's children from the problem itself.
            let k = if first {
                s.groups * s.keep * s.expansions
            } else {
                s.expansions
            };
            let parents: Vec<&[String]> = active.iter().map(|p| p.steps.as_slice()).collect();
            let children = ctx.expand(prompt, &parents, k, false)?;
            let mut cands = vec![];
            for (p, kids) in active.iter().zip(children) {
                for (j, st) in kids.into_iter().enumerate() {
                    let node =
                        ctx.trace
                            .add(p.node.into_iter().collect(), "step", &st.text, st.tokens);
                    let mut steps = p.steps.clone();
                    steps.push(st.text);
                    cands.push(Path {
                        steps,
                        scores: vec![],
                        node: Some(node),
                        group: if first {
                            j / (s.keep * s.expansions)
                        } else {
                            p.group
                        },
                        last: st.last,
                        value: 0.0,
                    });
                }
            }
            first = false;
            if cands.is_empty() {
                break;
            }
            self.score(ctx, prompt, &mut cands)?;
            active = vec![];
            for g in 0..s.groups {
                let done = finished.iter().filter(|p| p.group == g).count();
                let mut mine: Vec<Path> = cands.iter().filter(|p| p.group == g).cloned().collect();
                // Stable sort: equal values keep generation order.
                mine.sort_by(|a, b| {
                    b.value
                        .partial_cmp(&a.value)
                        .unwrap_or(std::cmp::Ordering::Equal)
                });
                mine.truncate(s.keep.saturating_sub(done));
                for p in mine {
                    if p.last {
                        finished.push(p);
                    } else {
                        active.push(p);
                    }
                }
            }
        }
        // Unfinished paths compete only when nothing finished (the budget ran out first).
        let pool = if finished.is_empty() {
            active
        } else {
            finished
        };
        let finals: Vec<f64> = pool
            .iter()
            .map(|p| s.aggregation.apply(&p.scores))
            .collect();
        Ok(match argmax(&finals) {
            Some(i) => Candidate::new(pool[i].steps.join("\n"), Some(finals[i]), pool[i].node),
            None => Candidate::default(),
        })
    }
}

impl StepSearchStrategy {
    /// Fills each candidate's step scores and value (with lookahead: the score at the end of a
    /// greedy rollout of a few steps, whose prefix scores are the candidate's own).
    fn score(&self, ctx: &mut SearchContext<'_>, prompt: &str, cands: &mut [Path]) -> Result<()> {
        let mut ext: Vec<Vec<String>> = cands.iter().map(|p| p.steps.clone()).collect();
        let mut open: Vec<bool> = cands.iter().map(|p| !p.last).collect();
        for _ in 0..self.shape.lookahead {
            let idx: Vec<usize> = (0..ext.len()).filter(|&i| open[i]).collect();
            if idx.is_empty() {
                break;
            }
            let parents: Vec<&[String]> = idx.iter().map(|&i| ext[i].as_slice()).collect();
            let next = ctx.expand(prompt, &parents, 1, true)?;
            for (&i, mut kids) in idx.iter().zip(next) {
                match kids.pop() {
                    Some(st) => {
                        if let Some(n) = cands[i].node {
                            ctx.trace.add(vec![n], "lookahead", &st.text, st.tokens);
                        }
                        open[i] = !st.last;
                        ext[i].push(st.text);
                    }
                    None => open[i] = false,
                }
            }
        }
        let refs: Vec<&[String]> = ext.iter().map(Vec::as_slice).collect();
        let scores = ctx.score_steps(prompt, &refs)?;
        for (p, sc) in cands.iter_mut().zip(scores) {
            p.value = Aggregation::Last.apply(&sc);
            p.scores = sc.into_iter().take(p.steps.len()).collect();
            if let Some(n) = p.node {
                ctx.trace.set_score(n, p.value);
            }
        }
        Ok(())
    }
}
