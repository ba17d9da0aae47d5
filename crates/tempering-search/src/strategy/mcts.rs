//! Monte Carlo tree search over reasoning steps: select by UCT, expand a leaf with `k` sampled
//! steps, value each new child by the step scorer (PRM) or by a sampled rollout to the end scored
//! as a whole completion, back the values up. The answer is the best-valued finished solution
//! met (a finished step or a rollout); if none, the most visited path completed greedily.

use super::{Candidate, Needs, Strategy};
use crate::context::{continuation, SearchConfig, SearchContext, SearchProblem};
use crate::error::Result;
use crate::vote::argmax;

struct Node {
    steps: Vec<String>,
    children: Vec<usize>,
    parent: Option<usize>,
    visits: f64,
    total: f64,
    last: bool,
    trace: Option<usize>,
}

pub struct Mcts {
    pub iterations: usize,
    pub k: usize,
    /// UCT's exploration constant.
    pub c: f64,
    /// Value by rollout and completion score instead of by the PRM's step score.
    pub rollout: bool,
}

impl Mcts {
    fn select(&self, nodes: &[Node]) -> usize {
        let mut i = 0;
        while !nodes[i].children.is_empty() && !nodes[i].last {
            let parent_visits = nodes[i].visits.max(1.0);
            let uct = |&j: &usize| {
                let n = &nodes[j];
                if n.visits == 0.0 {
                    f64::INFINITY
                } else {
                    n.total / n.visits + self.c * (parent_visits.ln() / n.visits).sqrt()
                }
            };
            let vals: Vec<f64> = nodes[i].children.iter().map(uct).collect();
            i = nodes[i].children[argmax(&vals).unwrap_or(0)];
        }
        i
    }
}

impl Strategy for Mcts {
    fn name(&self) -> String {
        format!(
            "mcts:{}:k={}:c={}{}",
            self.iterations,
            self.k,
            self.c,
            if self.rollout { ":rollout" } else { "" }
        )
    }

    fn needs(&self) -> Needs {
        if self.rollout {
            Needs::CompletionScore
        } else {
            Needs::StepScore
        }
    }

    fn unit_tokens(&self, config: &SearchConfig) -> usize {
        config.step_max_tokens
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let prompt = problem.prompt.as_str();
        let mut nodes = vec![Node {
            steps: vec![],
            children: vec![],
            parent: None,
            visits: 0.0,
            total: 0.0,
            last: false,
            trace: None,
        }];
        // Finished solutions met: (text, value, trace node).
        let mut finals: Vec<(String, f64, Option<usize>)> = vec![];
        for _ in 0..self.iterations {
            let leaf = self.select(&nodes);
            let mut new: Vec<(usize, f64)> = vec![];
            if nodes[leaf].last {
                let v = nodes[leaf].total / nodes[leaf].visits.max(1.0);
                new.push((leaf, v));
            } else {
                let kids = ctx
                    .expand(prompt, &[nodes[leaf].steps.as_slice()], self.k, false)?
                    .pop()
                    .unwrap_or_default();
                if kids.is_empty() {
                    break;
                }
                let first = nodes.len();
                for st in kids {
                    let tr = ctx.trace.add(
                        nodes[leaf].trace.into_iter().collect(),
                        "step",
                        &st.text,
                        st.tokens,
                    );
                    let mut steps = nodes[leaf].steps.clone();
                    steps.push(st.text);
                    nodes.push(Node {
                        steps,
                        children: vec![],
                        parent: Some(leaf),
                        visits: 0.0,
                        total: 0.0,
                        last: st.last,
                        trace: Some(tr),
                    });
                    let id = nodes.len() - 1;
                    nodes[leaf].children.push(id);
                }
                let ids: Vec<usize> = (first..nodes.len()).collect();
                let values = if self.rollout {
                    self.rollouts(ctx, prompt, &nodes, &ids, &mut finals)?
                } else {
                    let refs: Vec<&[String]> =
                        ids.iter().map(|&i| nodes[i].steps.as_slice()).collect();
                    ctx.values(prompt, &refs)?
                };
                for (&i, &v) in ids.iter().zip(&values) {
                    if let Some(t) = nodes[i].trace {
                        ctx.trace.set_score(t, v);
                    }
                    if nodes[i].last && !self.rollout {
                        finals.push((nodes[i].steps.join("\n"), v, nodes[i].trace));
                    }
                    new.push((i, v));
                }
            }
            for (i, v) in new {
                let mut cur = Some(i);
                while let Some(c) = cur {
                    nodes[c].visits += 1.0;
                    nodes[c].total += v;
                    cur = nodes[c].parent;
                }
            }
        }
        let values: Vec<f64> = finals.iter().map(|f| f.1).collect();
        if let Some(i) = argmax(&values) {
            let (text, v, node) = finals.swap_remove(i);
            return Ok(Candidate::new(text, Some(v), node));
        }
        // Nothing finished: follow the most visited children and complete greedily.
        let mut i = 0;
        while !nodes[i].children.is_empty() {
            let visits: Vec<f64> = nodes[i].children.iter().map(|&c| nodes[c].visits).collect();
            i = nodes[i].children[argmax(&visits).unwrap_or(0)];
        }
        let head = nodes[i].steps.join("\n");
        let tail = ctx
            .complete(&continuation(prompt, &nodes[i].steps), 1, true)?
            .pop();
        Ok(match tail {
            Some(t) => {
                let id = ctx.trace.add(
                    nodes[i].trace.into_iter().collect(),
                    "rollout",
                    &t.text,
                    t.tokens,
                );
                let text = if head.is_empty() {
                    t.text
                } else {
                    format!("{head}\n{}", t.text)
                };
                Candidate::new(text, None, Some(id))
            }
            None => Candidate::new(head, None, nodes[i].trace),
        })
    }
}

impl Mcts {
    /// Values of new children by a sampled rollout to the end, scored as a whole completion; a
    /// child that is already finished is scored as it is.
    fn rollouts(
        &self,
        ctx: &mut SearchContext<'_>,
        prompt: &str,
        nodes: &[Node],
        ids: &[usize],
        finals: &mut Vec<(String, f64, Option<usize>)>,
    ) -> Result<Vec<f64>> {
        let open: Vec<usize> = ids.iter().copied().filter(|&i| !nodes[i].last).collect();
        let reqs: Vec<(String, usize)> = open
            .iter()
            .map(|&i| (continuation(prompt, &nodes[i].steps), 1))
            .collect();
        let params = ctx.completion_params(false);
        let outs = ctx.generate(&reqs, &params)?;
        let mut texts: Vec<(usize, String, Option<usize>)> = vec![];
        for (&i, mut out) in open.iter().zip(outs) {
            if let Some(r) = out.pop() {
                let t = ctx.trace.add(
                    nodes[i].trace.into_iter().collect(),
                    "rollout",
                    &r.text,
                    r.tokens,
                );
                texts.push((
                    i,
                    format!("{}\n{}", nodes[i].steps.join("\n"), r.text),
                    Some(t),
                ));
            }
        }
        for &i in ids.iter().filter(|&&i| nodes[i].last) {
            texts.push((i, nodes[i].steps.join("\n"), nodes[i].trace));
        }
        let refs: Vec<&str> = texts.iter().map(|t| t.1.as_str()).collect();
        let scores = ctx.score_completions(prompt, &refs, ctx.config.aggregation)?;
        // A child whose rollout was refused by the budget gets no value (0).
        let mut values = vec![0.0; ids.len()];
        for ((i, text, node), s) in texts.into_iter().zip(scores) {
            if let Some(pos) = ids.iter().position(|&x| x == i) {
                values[pos] = s;
            }
            if let Some(n) = node {
                ctx.trace.set_score(n, s);
            }
            finals.push((text, s, node));
        }
        Ok(values)
    }
}
