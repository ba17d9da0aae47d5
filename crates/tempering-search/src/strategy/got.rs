//! Graph of Thoughts: a pipeline of operations over a set of thoughts (whole candidate solutions),
//! written as `generate(4)>score>keep(2)>refine>score>keep(1)`. Operations: `generate(k)` samples
//! k solutions, `score` scores the unscored ones, `keep(n)` keeps the n best, `aggregate(k)` asks
//! the model to combine the k best into one, `refine` asks for a revision of each, `vote` keeps one
//! thought of the majority answer. Each task has a built-in graph. The answer is the best-scored
//! thought left (the first when none is scored).

use super::{Candidate, Needs, Strategy};
use crate::context::{SearchContext, SearchProblem};
use crate::error::{Result, SearchError};
use crate::strategy::refine::REVISE;
use crate::vote::{answer_of, tally};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GotOp {
    Generate(usize),
    Score,
    Keep(usize),
    Aggregate(usize),
    Refine,
    Vote,
}

/// Introduces the candidates shown to the model for aggregation.
pub const AGGREGATE_HEAD: &str = "Candidate solutions:\n";
/// Follows the candidates to ask for one combined solution.
pub const AGGREGATE_TAIL: &str = "Combined solution:\n";

/// The prompt asking to combine `thoughts` into one solution.
pub fn aggregate_prompt(prompt: &str, thoughts: &[&str]) -> String {
    let mut s = format!("{prompt}{AGGREGATE_HEAD}");
    for (i, t) in thoughts.iter().enumerate() {
        s.push_str(&format!("({})\n{t}\n", i + 1));
    }
    s.push_str(AGGREGATE_TAIL);
    s
}

/// The prompt asking to revise one thought (no critique: GoT's refine is one call).
pub fn refine_prompt(prompt: &str, thought: &str) -> String {
    format!("{prompt}{thought}{REVISE}")
}

/// The built-in graph for a task (by name); unknown tasks get the arithmetic one.
pub fn builtin_graph(task: &str) -> &'static str {
    match task {
        // Answers are checkable sums: several tries and a vote carry most of the gain.
        "countdown" => "generate(6)>score>keep(3)>aggregate(3)>score>keep(1)",
        "base-conversion" => "generate(4)>score>keep(2)>aggregate(2)>score>keep(1)",
        _ => "generate(4)>score>keep(2)>refine>score>keep(1)",
    }
}

/// Parses `op>op>...`.
pub fn parse_ops(spec: &str, text: &str) -> Result<Vec<GotOp>> {
    let bad = |msg: String| SearchError::BadSpec {
        spec: spec.to_string(),
        msg,
    };
    text.split('>')
        .map(|op| {
            let op = op.trim();
            let (name, arg) = match op.split_once('(') {
                Some((n, rest)) => {
                    let a = rest
                        .strip_suffix(')')
                        .ok_or_else(|| bad(format!("`{op}`: expected `name(N)`")))?;
                    let v: usize = a
                        .trim()
                        .parse()
                        .ok()
                        .filter(|&v| v > 0)
                        .ok_or_else(|| bad(format!("`{op}`: expected a positive count")))?;
                    (n, Some(v))
                }
                None => (op, None),
            };
            match (name, arg) {
                ("generate", Some(k)) => Ok(GotOp::Generate(k)),
                ("keep", Some(n)) => Ok(GotOp::Keep(n)),
                ("aggregate", Some(k)) => Ok(GotOp::Aggregate(k)),
                ("score", None) => Ok(GotOp::Score),
                ("refine", None) => Ok(GotOp::Refine),
                ("vote", None) => Ok(GotOp::Vote),
                _ => Err(bad(format!(
                    "unknown operation `{op}`: expected generate(K), score, keep(N), aggregate(K), refine or vote"
                ))),
            }
        })
        .collect()
}

#[derive(Clone, Debug)]
struct Thought {
    text: String,
    score: Option<f64>,
    node: usize,
}

pub struct GraphOfThoughts {
    pub graph: String,
    pub ops: Vec<GotOp>,
}

impl Strategy for GraphOfThoughts {
    fn name(&self) -> String {
        format!("got:{}", self.graph)
    }

    fn needs(&self) -> Needs {
        if self.ops.contains(&GotOp::Score) {
            Needs::CompletionScore
        } else {
            Needs::Nothing
        }
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let prompt = problem.prompt.as_str();
        let agg = ctx.config.aggregation;
        let mut thoughts: Vec<Thought> = vec![];
        for &op in &self.ops {
            match op {
                GotOp::Generate(k) => {
                    for s in ctx.complete(prompt, k, false)? {
                        let node = ctx.trace.add(vec![], "generate", &s.text, s.tokens);
                        thoughts.push(Thought {
                            text: s.text,
                            score: None,
                            node,
                        });
                    }
                }
                GotOp::Score => {
                    let idx: Vec<usize> = (0..thoughts.len())
                        .filter(|&i| thoughts[i].score.is_none())
                        .collect();
                    let texts: Vec<&str> = idx.iter().map(|&i| thoughts[i].text.as_str()).collect();
                    let scores = ctx.score_completions(prompt, &texts, agg)?;
                    for (&i, s) in idx.iter().zip(scores) {
                        thoughts[i].score = Some(s);
                        ctx.trace.set_score(thoughts[i].node, s);
                    }
                }
                GotOp::Keep(n) => {
                    thoughts.sort_by(|a, b| {
                        let (a, b) = (
                            a.score.unwrap_or(f64::NEG_INFINITY),
                            b.score.unwrap_or(f64::NEG_INFINITY),
                        );
                        b.partial_cmp(&a).unwrap_or(std::cmp::Ordering::Equal)
                    });
                    thoughts.truncate(n);
                }
                GotOp::Aggregate(k) => {
                    let used: Vec<&Thought> = thoughts.iter().take(k).collect();
                    if used.is_empty() {
                        continue;
                    }
                    let texts: Vec<&str> = used.iter().map(|t| t.text.as_str()).collect();
                    let parents: Vec<usize> = used.iter().map(|t| t.node).collect();
                    let req = aggregate_prompt(prompt, &texts);
                    if let Some(s) = ctx.complete(&req, 1, false)?.pop() {
                        let node = ctx.trace.add(parents, "aggregate", &s.text, s.tokens);
                        thoughts.push(Thought {
                            text: s.text,
                            score: None,
                            node,
                        });
                    }
                }
                GotOp::Refine => {
                    let reqs: Vec<(String, usize)> = thoughts
                        .iter()
                        .map(|t| (refine_prompt(prompt, &t.text), 1))
                        .collect();
                    let params = ctx.completion_params(false);
                    let outs = ctx.generate(&reqs, &params)?;
                    let parents: Vec<usize> = thoughts.iter().map(|t| t.node).collect();
                    for (p, mut out) in parents.into_iter().zip(outs) {
                        if let Some(s) = out.pop() {
                            let node = ctx.trace.add(vec![p], "refine", &s.text, s.tokens);
                            thoughts.push(Thought {
                                text: s.text,
                                score: None,
                                node,
                            });
                        }
                    }
                }
                GotOp::Vote => {
                    let answers: Vec<Option<String>> =
                        thoughts.iter().map(|t| answer_of(&t.text)).collect();
                    if let Some((winner, _)) = tally(&answers).into_iter().next() {
                        let i = answers
                            .iter()
                            .position(|a| a.as_deref() == Some(winner.as_str()))
                            .unwrap_or(0);
                        thoughts = vec![thoughts.swap_remove(i)];
                    }
                }
            }
        }
        let best = thoughts
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| {
                let (x, y) = (
                    a.score.unwrap_or(f64::NEG_INFINITY),
                    b.score.unwrap_or(f64::NEG_INFINITY),
                );
                x.partial_cmp(&y)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(j.cmp(i))
            })
            .map(|(_, t)| t.clone());
        Ok(match best {
            Some(t) => Candidate::new(t.text, t.score, Some(t.node)),
            None => Candidate::default(),
        })
    }
}
