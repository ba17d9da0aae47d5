//! The search trace: every node a strategy generated or built (samples, steps, critiques,
//! aggregations), with its parent, score and cost, written as JSONL and drawn as a text tree. Knows
//! nothing of any one strategy.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One node of the search tree (or graph: `parents` may hold several ids, for aggregation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceNode {
    pub id: usize,
    /// The nodes this one was built from; empty for a child of the problem itself.
    pub parents: Vec<usize>,
    /// What made it: `sample`, `step`, `rollout`, `critique`, `revision`, `aggregate`, ...
    pub kind: String,
    /// The text this node added (a step, a whole completion, a critique).
    pub text: String,
    /// Generated tokens of this node.
    pub tokens: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
    /// Part of the returned solution.
    pub chosen: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    pub nodes: Vec<TraceNode>,
}

impl Trace {
    pub fn add(&mut self, parents: Vec<usize>, kind: &str, text: &str, tokens: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(TraceNode {
            id,
            parents,
            kind: kind.to_string(),
            text: text.to_string(),
            tokens,
            score: None,
            answer: None,
            chosen: false,
        });
        id
    }

    pub fn set_score(&mut self, id: usize, score: f64) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.score = Some(score);
        }
    }

    pub fn set_answer(&mut self, id: usize, answer: Option<String>) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.answer = answer;
        }
    }

    /// Marks `id` and its first-parent ancestors as the chosen path.
    pub fn choose(&mut self, id: usize) {
        let mut cur = Some(id);
        while let Some(i) = cur {
            let Some(n) = self.nodes.get_mut(i) else {
                break;
            };
            if n.chosen {
                break;
            }
            n.chosen = true;
            cur = n.parents.first().copied();
        }
    }

    /// One JSON object per node.
    pub fn to_jsonl(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&serde_json::to_string(n).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// The tree as indented text, children under their first parent, the chosen path starred.
    pub fn render(&self) -> String {
        let mut children: Vec<Vec<usize>> = vec![vec![]; self.nodes.len()];
        let mut roots = vec![];
        for n in &self.nodes {
            match n.parents.first() {
                Some(&p) if p < n.id => children[p].push(n.id),
                _ => roots.push(n.id),
            }
        }
        let mut out = String::new();
        let mut stack: Vec<(usize, usize)> = roots.into_iter().rev().map(|r| (r, 0)).collect();
        while let Some((id, depth)) = stack.pop() {
            let n = &self.nodes[id];
            let mut text: String = n.text.replace('\n', "\\n");
            if text.chars().count() > 60 {
                text = text.chars().take(57).collect::<String>() + "...";
            }
            let _ = write!(
                out,
                "{}{} #{} {}",
                "  ".repeat(depth),
                if n.chosen { "*" } else { "-" },
                n.id,
                n.kind
            );
            if n.parents.len() > 1 {
                let _ = write!(out, " (from {:?})", n.parents);
            }
            if let Some(s) = n.score {
                let _ = write!(out, " score={s:.3}");
            }
            if let Some(a) = &n.answer {
                let _ = write!(out, " answer={a}");
            }
            let _ = writeln!(out, " [{} tok] {text:?}", n.tokens);
            for &c in children[id].iter().rev() {
                stack.push((c, depth + 1));
            }
        }
        out
    }
}
