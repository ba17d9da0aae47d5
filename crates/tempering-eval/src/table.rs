//! The summary table: one row per strategy (accuracy with its 95% Wilson score interval and the
//! number of problems, mean generated tokens, mean model calls, mean scorer calls, wall time per
//! problem and, for strategies that draw whole candidate answers, what sampling bought: sampled
//! pass@1 and pass@N), as Markdown and CSV. Knows the per-problem results, nothing of how they
//! were produced, drawn or laid out on a page.

use serde::Serialize;

use crate::run::ProblemResult;

/// The normal quantile of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The 95% Wilson score interval of a proportion with `successes` out of `n` trials, as
/// fractions in [0, 1]. `successes` may be fractional (a mean of per-problem fractions times `n`:
/// the interval is then conservative, since a variable in [0, 1] with mean p varies at most as a
/// Bernoulli(p) does). With `n == 0` nothing is known: [0, 1].
pub fn wilson(successes: f64, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = (successes / n).clamp(0.0, 1.0);
    let z2 = Z95 * Z95;
    let d = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / d;
    let half = Z95 / d * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// A rate over problems with its 95% interval, all as fractions in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rate {
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
    /// The problems it was measured on.
    pub n: usize,
}

impl Rate {
    /// `successes` of `n` (fractional successes allowed, see [`wilson`]).
    pub fn new(successes: f64, n: usize) -> Self {
        let (lo, hi) = wilson(successes, n);
        Rate {
            value: if n == 0 { 0.0 } else { successes / n as f64 },
            lo,
            hi,
            n,
        }
    }

    /// `53.3% [45.4, 61.1] (n=150)`.
    pub fn text(&self) -> String {
        format!("{} (n={})", self.text_short(), self.n)
    }

    /// `53.3% [45.4, 61.1]`.
    pub fn text_short(&self) -> String {
        format!(
            "{:.1}% [{:.1}, {:.1}]",
            100.0 * self.value,
            100.0 * self.lo,
            100.0 * self.hi
        )
    }
}

/// What sampling bought, for a strategy that draws whole candidate answers (sc, wsc, bon, esc,
/// adaptive): how often one candidate is right and how often any is.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Sampled {
    /// The mean over problems of the fraction of candidates that are correct (a problem that
    /// drew none counts 0); its interval is Wilson's over problems, conservative.
    pub pass1: Rate,
    /// Problems where at least one candidate is correct: the ceiling of a perfect selector.
    pub pass_n: Rate,
    /// Candidates drawn per problem, on average (esc and adaptive draw fewer than N).
    pub mean_candidates: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrategyRow {
    pub strategy: String,
    /// The strategy's family (the spec before `@` or `:`): one plot line per family.
    pub family: String,
    pub problems: usize,
    pub accuracy: f64,
    pub mean_tokens: f64,
    pub mean_calls: f64,
    pub mean_scorer_calls: f64,
    pub wall_s_per_problem: f64,
    /// Problems where the budget stopped the search early.
    pub budget_cut: usize,
    /// Problems answered correctly.
    pub correct: usize,
    /// The 95% Wilson interval of `accuracy`, as fractions.
    pub accuracy_lo: f64,
    pub accuracy_hi: f64,
    /// For strategies that draw whole candidates; `None` for greedy and step-level search.
    pub sampled: Option<Sampled>,
}

impl StrategyRow {
    /// The accuracy with its interval and `n`.
    pub fn accuracy_rate(&self) -> Rate {
        Rate {
            value: self.accuracy,
            lo: self.accuracy_lo,
            hi: self.accuracy_hi,
            n: self.problems,
        }
    }
}

/// The family of a strategy name: its sample count `@N` dropped (`sc@16` -> `sc`, `bon@8:min` ->
/// `bon:min`), so one plot line joins a family's points; other specs are their own family.
pub fn family(strategy: &str) -> String {
    match strategy.split_once('@') {
        Some((name, rest)) => match rest.split_once(':') {
            Some((_, args)) => format!("{name}:{args}"),
            None => name.to_string(),
        },
        None => strategy.to_string(),
    }
}

/// One row per strategy, in first-seen order.
pub fn summarise(results: &[ProblemResult]) -> Vec<StrategyRow> {
    let mut names: Vec<&str> = vec![];
    for r in results {
        if !names.contains(&r.strategy.as_str()) {
            names.push(&r.strategy);
        }
    }
    names
        .into_iter()
        .map(|name| {
            let rs: Vec<&ProblemResult> = results.iter().filter(|r| r.strategy == name).collect();
            let n = rs.len().max(1) as f64;
            let mean = |f: &dyn Fn(&ProblemResult) -> f64| rs.iter().map(|r| f(r)).sum::<f64>() / n;
            let correct = rs.iter().filter(|r| r.correct).count();
            let acc = Rate::new(correct as f64, rs.len());
            let sampled = if rs.iter().all(|r| r.candidates.is_some()) && !rs.is_empty() {
                let c: Vec<_> = rs.iter().filter_map(|r| r.candidates).collect();
                let pass1: f64 = c
                    .iter()
                    .map(|c| {
                        if c.drawn == 0 {
                            0.0
                        } else {
                            c.correct as f64 / c.drawn as f64
                        }
                    })
                    .sum();
                let any = c.iter().filter(|c| c.correct > 0).count();
                Some(Sampled {
                    pass1: Rate::new(pass1, c.len()),
                    pass_n: Rate::new(any as f64, c.len()),
                    mean_candidates: c.iter().map(|c| c.drawn as f64).sum::<f64>() / n,
                })
            } else {
                None
            };
            StrategyRow {
                strategy: name.to_string(),
                family: family(name),
                problems: rs.len(),
                accuracy: acc.value,
                mean_tokens: mean(&|r| r.cost.generated_tokens as f64),
                mean_calls: mean(&|r| r.cost.model_calls as f64),
                mean_scorer_calls: mean(&|r| r.cost.scorer_calls as f64),
                wall_s_per_problem: mean(&|r| r.cost.wall_s),
                budget_cut: rs.iter().filter(|r| r.budget_cut).count(),
                correct,
                accuracy_lo: acc.lo,
                accuracy_hi: acc.hi,
                sampled,
            }
        })
        .collect()
}

/// The header cells of the human-readable table (Markdown, HTML), in order.
pub const HEADERS: [&str; 11] = [
    "strategy",
    "problems",
    "accuracy [95% CI]",
    "pass@1 sampled [95% CI]",
    "pass@N: any right [95% CI]",
    "candidates / problem",
    "mean generated tokens",
    "mean model calls",
    "mean scorer calls",
    "wall s / problem",
    "budget cut",
];

/// The candidates drawn per problem: `16` when the mean is whole, else `3.2` (the mean).
fn candidates_text(mean: f64) -> String {
    if (mean - mean.round()).abs() < 1e-9 {
        format!("{}", mean.round())
    } else {
        format!("{mean:.1}")
    }
}

/// The cells of one row under [`HEADERS`]; the sampling columns are `-` where they do not apply.
pub fn cells(r: &StrategyRow) -> Vec<String> {
    let (pass1, pass_n, drawn) = match &r.sampled {
        Some(s) => (
            s.pass1.text_short(),
            s.pass_n.text_short(),
            candidates_text(s.mean_candidates),
        ),
        None => ("-".to_string(), "-".to_string(), "-".to_string()),
    };
    vec![
        r.strategy.clone(),
        r.problems.to_string(),
        r.accuracy_rate().text(),
        pass1,
        pass_n,
        drawn,
        format!("{:.1}", r.mean_tokens),
        format!("{:.2}", r.mean_calls),
        format!("{:.2}", r.mean_scorer_calls),
        format!("{:.3}", r.wall_s_per_problem),
        r.budget_cut.to_string(),
    ]
}

pub fn markdown(rows: &[StrategyRow]) -> String {
    let mut s = format!("| {} |\n| --- |", HEADERS.join(" | "));
    s.push_str(&" ---: |".repeat(HEADERS.len() - 1));
    s.push('\n');
    for r in rows {
        let c: Vec<String> = cells(r).iter().map(|c| c.replace('|', "\\|")).collect();
        s.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    s
}

/// The CSV header. The first nine columns are the original ones, in place (readers index them);
/// new columns are appended.
pub const CSV_HEADER: &str = "strategy,family,problems,accuracy,mean_tokens,mean_calls,mean_scorer_calls,wall_s_per_problem,budget_cut,correct,accuracy_lo,accuracy_hi,pass@1_sampled,pass@1_sampled_lo,pass@1_sampled_hi,pass@n,pass@n_lo,pass@n_hi,mean_candidates";

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub fn csv(rows: &[StrategyRow]) -> String {
    let mut s = format!("{CSV_HEADER}\n");
    for r in rows {
        let sampled = match &r.sampled {
            Some(x) => format!(
                "{},{},{},{},{},{},{}",
                x.pass1.value,
                x.pass1.lo,
                x.pass1.hi,
                x.pass_n.value,
                x.pass_n.lo,
                x.pass_n.hi,
                x.mean_candidates
            ),
            None => ",,,,,,".to_string(),
        };
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            quoted(&r.strategy),
            quoted(&r.family),
            r.problems,
            r.accuracy,
            r.mean_tokens,
            r.mean_calls,
            r.mean_scorer_calls,
            r.wall_s_per_problem,
            r.budget_cut,
            r.correct,
            r.accuracy_lo,
            r.accuracy_hi,
            sampled
        ));
    }
    s
}

/// Splits one CSV line into fields: `"..."` quoted with `""` for a quote, else up to the comma.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Reads a `table.csv` written by [`csv`] back into rows (for pages that gather several runs).
/// Files from before the interval columns are read too: the interval is recomputed from the
/// accuracy and the problem count, and the sampling columns are absent.
pub fn read_csv(path: &std::path::Path) -> crate::error::Result<Vec<StrategyRow>> {
    use crate::error::EvalError;
    let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
    let mut lines = text.lines().enumerate();
    let header = match lines.next() {
        Some((_, h)) => split_csv(h),
        None => return Err(EvalError::Empty(format!("{}: no header", path.display()))),
    };
    let mut rows = vec![];
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |msg: String| EvalError::Row {
            path: path.to_path_buf(),
            line: i + 1,
            msg,
        };
        let f = split_csv(line);
        let field = |name: &str| -> Option<&str> {
            let k = header.iter().position(|h| h == name)?;
            f.get(k).map(|s| s.as_str()).filter(|s| !s.is_empty())
        };
        let num = |name: &str| -> crate::error::Result<f64> {
            let v =
                field(name).ok_or_else(|| bad(format!("expected a value in column `{name}`")))?;
            v.parse()
                .map_err(|_| bad(format!("column `{name}`: `{v}` is not a number")))
        };
        let opt = |name: &str| -> crate::error::Result<Option<f64>> {
            match field(name) {
                None => Ok(None),
                Some(_) => num(name).map(Some),
            }
        };
        let strategy = field("strategy")
            .ok_or_else(|| bad("expected a value in column `strategy`".into()))?
            .to_string();
        let problems = num("problems")? as usize;
        let accuracy = num("accuracy")?;
        let correct = opt("correct")?.map_or((accuracy * problems as f64).round() as usize, |c| {
            c as usize
        });
        let (lo, hi) = match (opt("accuracy_lo")?, opt("accuracy_hi")?) {
            (Some(lo), Some(hi)) => (lo, hi),
            _ => wilson(accuracy * problems as f64, problems),
        };
        let rate = |v: &str, l: &str, h: &str| -> crate::error::Result<Option<Rate>> {
            Ok(match (opt(v)?, opt(l)?, opt(h)?) {
                (Some(value), Some(lo), Some(hi)) => Some(Rate {
                    value,
                    lo,
                    hi,
                    n: problems,
                }),
                _ => None,
            })
        };
        let sampled = match (
            rate("pass@1_sampled", "pass@1_sampled_lo", "pass@1_sampled_hi")?,
            rate("pass@n", "pass@n_lo", "pass@n_hi")?,
        ) {
            (Some(pass1), Some(pass_n)) => Some(Sampled {
                pass1,
                pass_n,
                mean_candidates: opt("mean_candidates")?.unwrap_or(0.0),
            }),
            _ => None,
        };
        rows.push(StrategyRow {
            family: field("family").map_or_else(|| family(&strategy), str::to_string),
            strategy,
            problems,
            accuracy,
            mean_tokens: num("mean_tokens")?,
            mean_calls: opt("mean_calls")?.unwrap_or(0.0),
            mean_scorer_calls: opt("mean_scorer_calls")?.unwrap_or(0.0),
            wall_s_per_problem: opt("wall_s_per_problem")?.unwrap_or(0.0),
            budget_cut: opt("budget_cut")?.unwrap_or(0.0) as usize,
            correct,
            accuracy_lo: lo,
            accuracy_hi: hi,
            sampled,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: (f64, f64), b: (f64, f64)) -> bool {
        (a.0 - b.0).abs() < 1e-4 && (a.1 - b.1).abs() < 1e-4
    }

    #[test]
    fn wilson_matches_hand_computed_intervals() {
        // 0/10: lo = 0, hi = z^2 / (n + z^2) = 3.84146 / 13.84146.
        let z2 = Z95 * Z95;
        assert!(close(wilson(0.0, 10), (0.0, z2 / (10.0 + z2))));
        assert!(close(wilson(0.0, 10), (0.0, 0.27753)));
        // 10/10: the mirror image, lo = n / (n + z^2).
        assert!(close(wilson(10.0, 10), (0.72247, 1.0)));
        // 53/100: centre (0.53 + 0.019207) / 1.038415 = 0.528891, half-width
        // 1.959964 / 1.038415 * sqrt(0.2491/100 + 3.841459/40000) = 0.096002.
        assert!(
            close(wilson(53.0, 100), (0.43289, 0.62489)),
            "{:?}",
            wilson(53.0, 100)
        );
        // 5/10 is symmetric about one half.
        let (lo, hi) = wilson(5.0, 10);
        assert!((lo + hi - 1.0).abs() < 1e-12 && close((lo, hi), (0.23659, 0.76341)));
        assert_eq!(wilson(0.0, 0), (0.0, 1.0));
    }

    #[test]
    fn a_rate_prints_value_interval_and_n() {
        assert_eq!(Rate::new(80.0, 150).text(), "53.3% [45.4, 61.1] (n=150)");
        assert_eq!(Rate::new(0.0, 10).text_short(), "0.0% [0.0, 27.8]");
    }

    #[test]
    fn a_written_table_reads_back_and_an_old_one_too() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("table.csv");
        let rows = vec![StrategyRow {
            strategy: "sc@4".into(),
            family: "sc".into(),
            problems: 10,
            accuracy: 0.5,
            mean_tokens: 120.5,
            mean_calls: 1.0,
            mean_scorer_calls: 0.0,
            wall_s_per_problem: 0.25,
            budget_cut: 1,
            correct: 5,
            accuracy_lo: wilson(5.0, 10).0,
            accuracy_hi: wilson(5.0, 10).1,
            sampled: Some(Sampled {
                pass1: Rate::new(3.0, 10),
                pass_n: Rate::new(8.0, 10),
                mean_candidates: 4.0,
            }),
        }];
        std::fs::write(&p, csv(&rows)).unwrap();
        assert_eq!(read_csv(&p).unwrap(), rows);
        // Before the interval columns: nine columns; the interval is recomputed.
        std::fs::write(
            &p,
            "strategy,family,problems,accuracy,mean_tokens,mean_calls,mean_scorer_calls,wall_s_per_problem,budget_cut\n\"greedy\",\"greedy\",10,0.5,40,1,0,0.1,0\n",
        )
        .unwrap();
        let old = read_csv(&p).unwrap();
        assert_eq!((old[0].accuracy_lo, old[0].accuracy_hi), wilson(5.0, 10));
        assert_eq!((old[0].correct, old[0].sampled), (5, None));
        std::fs::write(
            &p,
            "strategy,problems,accuracy,mean_tokens\n\"x\",10,abc,3\n",
        )
        .unwrap();
        let e = read_csv(&p).unwrap_err().to_string();
        assert!(e.contains("table.csv:2") && e.contains("`accuracy`"), "{e}");
    }

    #[test]
    fn families_drop_the_sample_count() {
        assert_eq!(family("sc@16"), "sc");
        assert_eq!(family("bon@8:min"), "bon:min");
        assert_eq!(family("beam:4x4"), "beam:4x4");
    }
}
