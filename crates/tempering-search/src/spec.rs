//! Strategy specs as users write them (`greedy`, `sc@16`, `bon@8:min`, `beam:4x4`, ...): parsing
//! one spec into a strategy, splitting a comma-separated list, and expanding ranges such as
//! `sc@1..64` into powers of two. Knows the strategies' constructors, nothing of how they run.

use crate::error::{Result, SearchError};
use crate::strategy::beam::StepSearchStrategy;
use crate::strategy::cot::ChainOfThought;
use crate::strategy::got::{builtin_graph, parse_ops, GraphOfThoughts};
use crate::strategy::mcts::Mcts;
use crate::strategy::refine::SelfRefine;
use crate::strategy::tot::{TotBfs, TotDfs};
use crate::strategy::vote::{Adaptive, BestOfN, EarlyStopping, SelfConsistency};
use crate::strategy::Strategy;
use crate::vote::Aggregation;

/// Every spec form, for help texts and errors.
pub const KNOWN: &[&str] = &[
    "greedy",
    "sample",
    "sc@N",
    "wsc@N[:AGG]",
    "esc@N[:w=W]",
    "adaptive@N[:w=W]",
    "bon@N[:AGG]",
    "beam:WxE[:AGG]",
    "dvts:SxE[:AGG]",
    "lookahead:WxE[:k=K][:AGG]",
    "tot-bfs:BxK[:thr=V]",
    "tot-dfs:K[:thr=V][:nodes=N]",
    "mcts:ITERS[:k=K][:c=C][:rollout]",
    "refine:K",
    "got[:OP>OP>...]",
];

pub fn known_list() -> String {
    KNOWN.join(", ") + &format!(" (AGG: {})", Aggregation::NAMES)
}

/// The parts of a spec: `name@n:arg:arg`.
struct Parts<'a> {
    spec: &'a str,
    n: Option<usize>,
    positional: Vec<&'a str>,
    keyed: Vec<(&'a str, &'a str)>,
}

impl<'a> Parts<'a> {
    fn bad(&self, msg: impl Into<String>) -> SearchError {
        SearchError::BadSpec {
            spec: self.spec.to_string(),
            msg: msg.into(),
        }
    }

    fn n(&self) -> Result<usize> {
        self.n
            .ok_or_else(|| self.bad("expected a sample count, e.g. `@16`"))
    }

    /// `WxE` from the first positional argument.
    fn shape(&self) -> Result<(usize, usize)> {
        let s = self
            .positional
            .first()
            .ok_or_else(|| self.bad("expected a shape `WxE`, e.g. `:4x4`"))?;
        let (a, b) = s
            .split_once('x')
            .ok_or_else(|| self.bad(format!("`{s}`: expected `WxE`")))?;
        match (a.parse::<usize>(), b.parse::<usize>()) {
            (Ok(a), Ok(b)) if a > 0 && b > 0 => Ok((a, b)),
            _ => Err(self.bad(format!("`{s}`: expected two positive integers `WxE`"))),
        }
    }

    fn count(&self, at: usize, what: &str) -> Result<usize> {
        let s = self
            .positional
            .get(at)
            .ok_or_else(|| self.bad(format!("expected {what}")))?;
        s.parse()
            .ok()
            .filter(|&v: &usize| v > 0)
            .ok_or_else(|| self.bad(format!("`{s}`: expected {what} (a positive integer)")))
    }

    fn key<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T> {
        match self.keyed.iter().find(|(k, _)| *k == key) {
            None => Ok(default),
            Some((_, v)) => v
                .parse()
                .map_err(|_| self.bad(format!("`{key}={v}`: not a valid value"))),
        }
    }

    /// The aggregation among the positional arguments (after any shape), or `default`.
    fn aggregation(&self, default: Aggregation) -> Result<Aggregation> {
        match self
            .positional
            .iter()
            .find(|p| !p.contains('x') && p.parse::<usize>().is_err())
        {
            None => Ok(default),
            Some(p) => p.parse().map_err(|_| {
                self.bad(format!(
                    "`{p}`: expected an aggregation ({})",
                    Aggregation::NAMES
                ))
            }),
        }
    }

    fn flag(&self, f: &str) -> bool {
        self.positional.contains(&f)
    }

    /// Errors on keys outside `allowed`.
    fn only_keys(&self, allowed: &[&str]) -> Result<()> {
        match self.keyed.iter().find(|(k, _)| !allowed.contains(k)) {
            Some((k, _)) => Err(self.bad(format!(
                "unknown option `{k}`{}",
                if allowed.is_empty() {
                    String::new()
                } else {
                    format!("; expected one of {}", allowed.join(", "))
                }
            ))),
            None => Ok(()),
        }
    }
}

/// Builds the strategy a spec names. `task` picks GoT's built-in graph.
pub fn parse_strategy(spec: &str, task: Option<&str>) -> Result<Box<dyn Strategy>> {
    let spec = spec.trim();
    let (head, args) = match spec.split_once(':') {
        Some((h, a)) => (h, Some(a)),
        None => (spec, None),
    };
    let (name, n) = match head.split_once('@') {
        Some((name, n)) => (
            name,
            Some(n.parse::<usize>().ok().filter(|&v| v > 0).ok_or_else(|| {
                SearchError::BadSpec {
                    spec: spec.to_string(),
                    msg: format!("`@{n}`: expected a positive sample count"),
                }
            })?),
        ),
        None => (head, None),
    };
    // GoT's graph holds its own syntax: take it whole.
    if name == "got" {
        let graph = match args {
            Some(g) => g.to_string(),
            None => builtin_graph(task.unwrap_or("arithmetic")).to_string(),
        };
        let ops = parse_ops(spec, &graph)?;
        return Ok(Box::new(GraphOfThoughts { graph, ops }));
    }
    let mut parts = Parts {
        spec,
        n,
        positional: vec![],
        keyed: vec![],
    };
    for a in args.into_iter().flat_map(|a| a.split(':')) {
        match a.split_once('=') {
            Some(kv) => parts.keyed.push(kv),
            None => parts.positional.push(a),
        }
    }
    let p = &parts;
    let s: Box<dyn Strategy> = match name {
        "greedy" | "sample" => {
            p.only_keys(&[])?;
            Box::new(ChainOfThought {
                greedy: name == "greedy",
            })
        }
        "sc" => {
            p.only_keys(&[])?;
            Box::new(SelfConsistency {
                n: p.n()?,
                weighted: None,
            })
        }
        "wsc" => Box::new(SelfConsistency {
            n: p.n()?,
            weighted: Some(p.aggregation(Aggregation::Min)?),
        }),
        "bon" => Box::new(BestOfN {
            n: p.n()?,
            aggregation: p.aggregation(Aggregation::Min)?,
        }),
        "esc" | "adaptive" => {
            p.only_keys(&["w"])?;
            let n = p.n()?;
            let window = p.key("w", 4usize.min(n))?;
            if window == 0 || window > n {
                return Err(p.bad(format!("w={window}: expected 1..={n}")));
            }
            if name == "esc" {
                Box::new(EarlyStopping { n, window })
            } else {
                Box::new(Adaptive { n, window })
            }
        }
        "beam" | "dvts" => {
            p.only_keys(&[])?;
            let (w, e) = p.shape()?;
            let agg = p.aggregation(Aggregation::Last)?;
            Box::new(if name == "beam" {
                StepSearchStrategy::beam(w, e, agg)
            } else {
                StepSearchStrategy::dvts(w, e, agg)
            })
        }
        "lookahead" => {
            p.only_keys(&["k"])?;
            let (w, e) = p.shape()?;
            Box::new(StepSearchStrategy::lookahead(
                w,
                e,
                p.key("k", 2usize)?,
                p.aggregation(Aggregation::Last)?,
            ))
        }
        "tot-bfs" => {
            p.only_keys(&["thr"])?;
            let (b, k) = p.shape()?;
            Box::new(TotBfs {
                breadth: b,
                k,
                threshold: p.key("thr", 0.0)?,
            })
        }
        "tot-dfs" => {
            p.only_keys(&["thr", "nodes"])?;
            Box::new(TotDfs {
                k: p.count(0, "the thoughts per state K")?,
                threshold: p.key("thr", 0.5)?,
                max_expansions: p.key("nodes", 64usize)?,
            })
        }
        "mcts" => {
            p.only_keys(&["k", "c"])?;
            Box::new(Mcts {
                iterations: p.count(0, "the iteration count")?,
                k: p.key("k", 3usize)?,
                c: p.key("c", 1.4f64)?,
                rollout: p.flag("rollout"),
            })
        }
        "refine" => {
            p.only_keys(&[])?;
            Box::new(SelfRefine {
                rounds: p.count(0, "the round count")?,
            })
        }
        _ => {
            return Err(SearchError::UnknownStrategy {
                name: spec.to_string(),
                known: known_list(),
            })
        }
    };
    Ok(s)
}

/// Splits a comma-separated list of specs and expands `@A..B` into the powers of two from A to B
/// (B included even when it is not one): `sc@1..8` is `sc@1,sc@2,sc@4,sc@8`.
pub fn expand_grid(list: &str) -> Result<Vec<String>> {
    let mut out = vec![];
    for spec in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (head, rest) = match spec.split_once(':') {
            Some((h, r)) => (h, Some(r)),
            None => (spec, None),
        };
        let range = head
            .split_once('@')
            .and_then(|(name, r)| r.split_once("..").map(|(a, b)| (name, a, b)));
        let Some((name, a, b)) = range else {
            out.push(spec.to_string());
            continue;
        };
        let bad = || SearchError::BadSpec {
            spec: spec.to_string(),
            msg: "expected a range `@A..B` of positive integers with A <= B".into(),
        };
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        if a == 0 || a > b {
            return Err(bad());
        }
        let mut n = a;
        loop {
            out.push(match rest {
                Some(r) => format!("{name}@{n}:{r}"),
                None => format!("{name}@{n}"),
            });
            if n >= b {
                break;
            }
            n = (n * 2).min(b);
        }
    }
    if out.is_empty() {
        return Err(SearchError::BadSpec {
            spec: list.to_string(),
            msg: format!("no strategy given; known: {}", known_list()),
        });
    }
    Ok(out)
}
