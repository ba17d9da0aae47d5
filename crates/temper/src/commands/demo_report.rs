//! The page a person reads after `temper demo`: the tables (accuracy with 95% Wilson intervals per
//! strategy and model, the paired difference RL made on the same held-out problems, sampled pass@1
//! and pass@k, the PRM's step AUC, retain-set accuracy for forgetting, the hacking runs), the
//! plots, and a "what this run shows" paragraph written from the numbers; the numbers themselves
//! are computed in `measures`. Knows the measures and the RL metrics' keys; runs nothing.

use anyhow::Result;
use serde_json::{json, Map, Value};
use tempering_eval::curves::{plot_svg, Plot, Series, Smooth};
use tempering_eval::page::{escape, html_table, inline_svg, page};

mod measures;

pub use measures::{
    paired_difference, prm_auc, EvalSummary, PrmAuc, RetainRow, StrategyResult, VerifierRow,
};
use measures::{pct_ci, wilson};

/// A run's `metrics.jsonl` records, by run name.
pub type RunMetrics = Vec<(String, Vec<Map<String, Value>>)>;

/// Everything the demo measured.
pub struct Report {
    pub task: String,
    pub level: u32,
    pub seed: u64,
    pub fast: bool,
    pub model: String,
    pub test_problems: usize,
    /// SFT first, then the RL policy.
    pub evals: Vec<EvalSummary>,
    pub retain: Vec<RetainRow>,
    pub prm_auc: Option<PrmAuc>,
    /// The PRM's verifier model alone, where the PRM has one beside the policy.
    pub verifier: Option<VerifierRow>,
    /// (run name, metrics.jsonl records) of each GRPO run.
    pub rl_metrics: RunMetrics,
    pub hacking: Option<RunMetrics>,
    pub timings: Vec<(String, f64)>,
    pub seconds: f64,
}

fn series(recs: &[Map<String, Value>], x: &str, key: &str) -> Vec<(f64, f64)> {
    recs.iter()
        .filter_map(|r| Some((r.get(x)?.as_f64()?, r.get(key)?.as_f64()?)))
        .collect()
}

fn mean_of(points: &[(f64, f64)]) -> Option<f64> {
    (!points.is_empty()).then(|| points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64)
}

/// The mean of `key` over the first and the last quarter of the run's rollout batches.
fn first_last(recs: &[Map<String, Value>], key: &str) -> Option<(f64, f64)> {
    let s = series(recs, "rollout_step", key);
    let q = (s.len() / 4).max(1);
    Some((
        mean_of(&s[..q.min(s.len())])?,
        mean_of(&s[s.len().saturating_sub(q)..])?,
    ))
}

/// The first sampling round's mean reward. Dynamic sampling replaces groups whose rewards all
/// tie, which biases the batch's own `reward` towards mixed groups; this is what the policy
/// earned on fresh prompts.
const FRESH_REWARD: &str = "reward_before_filter";

/// Whether a run logged [`FRESH_REWARD`] (GRPO with dynamic sampling).
fn logs_fresh_reward(recs: &[Map<String, Value>]) -> bool {
    recs.iter().any(|r| r.contains_key(FRESH_REWARD))
}

fn warnings(recs: &[Map<String, Value>]) -> Vec<String> {
    let mut w: Vec<String> = recs
        .iter()
        .flat_map(|r| r.keys().filter(|k| k.starts_with("warning/")).cloned())
        .collect();
    w.sort();
    w.dedup();
    w
}

impl Report {
    fn sft(&self) -> Option<&EvalSummary> {
        self.evals.first()
    }

    fn rl(&self) -> Option<&EvalSummary> {
        self.evals.get(1)
    }

    fn greedy_gain(&self) -> Option<(f64, f64, f64)> {
        paired_difference(self.sft()?.get("greedy")?, self.rl()?.get("greedy")?)
    }

    /// The results table: one row per strategy, SFT and RL side by side.
    fn table_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut header = vec!["strategy".to_string()];
        for e in &self.evals {
            header.push(format!("{} accuracy", e.model));
            header.push(format!("{} tokens", e.model));
        }
        let mut rows = Vec::new();
        let names: Vec<String> = self
            .sft()
            .map(|e| e.rows.iter().map(|r| r.strategy.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let mut row = vec![name.clone()];
            for e in &self.evals {
                match e.get(&name) {
                    Some(r) => {
                        row.push(pct_ci(r.correct, r.n));
                        row.push(format!("{:.0}", r.mean_tokens));
                    }
                    None => row.extend(["-".to_string(), "-".to_string()]),
                }
            }
            rows.push(row);
        }
        // What sampling reaches: the candidates' own accuracy and the any-correct ceiling.
        for (label, pick) in [
            ("sampled pass@1 (candidates of ", 0usize),
            ("pass@k: any candidate correct (", 1),
        ] {
            let names: Vec<String> = self
                .sft()
                .map(|e| {
                    e.rows
                        .iter()
                        .filter(|r| r.candidates.is_some() && r.strategy.starts_with("sc@"))
                        .map(|r| r.strategy.clone())
                        .collect()
                })
                .unwrap_or_default();
            for name in names {
                let mut row = vec![format!("{label}{name})")];
                for e in &self.evals {
                    match e.get(&name).and_then(|r| Some((r, r.candidates?))) {
                        Some((r, (p1, any))) => {
                            row.push(if pick == 0 {
                                format!("{:.1}%", 100.0 * p1)
                            } else {
                                pct_ci(any, r.n)
                            });
                            row.push("-".to_string());
                        }
                        None => row.extend(["-".to_string(), "-".to_string()]),
                    }
                }
                rows.push(row);
            }
        }
        (header, rows)
    }

    /// What this run shows, written from the numbers (including what did not work).
    fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let n = self.test_problems;
        if let (Some(sft), Some(rl)) = (self.sft(), self.rl()) {
            if let (Some(a), Some(b), Some((d, lo, hi))) =
                (sft.get("greedy"), rl.get("greedy"), self.greedy_gain())
            {
                let verdict = if lo > 0.0 {
                    "RL generalised: the gain is above zero at 95% confidence"
                } else if hi < 0.0 {
                    "RL made held-out accuracy worse"
                } else {
                    "the difference is within the noise of this many problems"
                };
                out.push(format!(
                    "Greedy accuracy on {n} held-out problems went from {:.1}% (SFT) to {:.1}% \
                     after GRPO: {:+.1} points, 95% interval [{:+.1}, {:+.1}] on the same \
                     problems; {verdict}.",
                    100.0 * a.accuracy(),
                    100.0 * b.accuracy(),
                    100.0 * d,
                    100.0 * lo,
                    100.0 * hi
                ));
            }
            // Search against greedy, per model: the best strategy and what voting alone does.
            for e in [sft, rl] {
                let greedy = e.get("greedy").map(|r| r.accuracy()).unwrap_or(0.0);
                let best = e
                    .rows
                    .iter()
                    .filter(|r| r.strategy != "greedy")
                    .max_by(|x, y| x.accuracy().total_cmp(&y.accuracy()));
                if let Some(best) = best.filter(|b| b.accuracy() <= greedy) {
                    out.push(format!(
                        "{}: no search strategy beat greedy's {:.1}% (the best, {}, reached {:.1}% \
                         with {:.0} tokens a problem).",
                        e.model,
                        100.0 * greedy,
                        best.strategy,
                        100.0 * best.accuracy(),
                        best.mean_tokens
                    ));
                } else if let Some(best) = best {
                    out.push(format!(
                        "{}: the best strategy is {} at {:.1}% ({:.0} tokens a problem) against \
                         greedy's {:.1}%.",
                        e.model,
                        best.strategy,
                        100.0 * best.accuracy(),
                        best.mean_tokens,
                        100.0 * greedy
                    ));
                }
                // The learned PRM against voting at the largest equal budget.
                let big = e
                    .rows
                    .iter()
                    .filter(|r| r.strategy.starts_with("sc@"))
                    .max_by_key(|r| r.n_samples());
                if let Some(sc) = big {
                    let k = sc.n_samples();
                    for scorer in ["PRM", "rule"] {
                        if let Some(bon) = e.get(&format!("bon@{k}:min ({scorer})")) {
                            let word = if bon.accuracy() > sc.accuracy() {
                                "above"
                            } else if bon.accuracy() < sc.accuracy() {
                                "below"
                            } else {
                                "level with"
                            };
                            out.push(format!(
                                "{}: best-of-{k} with the {} is {word} self-consistency at {k} \
                                 ({:.1}% against {:.1}%).",
                                e.model,
                                if scorer == "PRM" {
                                    "learned PRM"
                                } else {
                                    "rule step checker"
                                },
                                100.0 * bon.accuracy(),
                                100.0 * sc.accuracy()
                            ));
                        }
                    }
                }
            }
        }
        if let Some(auc) = self.prm_auc {
            let within = match auc.within_problem {
                Some((w, k)) => format!(
                    "; between completions of the same problem (what best-of-N needs) it is {w:.3} over {k} problems"
                ),
                None => String::new(),
            };
            out.push(format!(
                "The learned PRM's step AUC on held-out labelled steps is {:.3}{within} (0.5 is chance).",
                auc.step
            ));
        }
        if let Some(v) = self.verifier {
            out.push(format!(
                "The PRM's language model (the SFT model trained {} steps further on worked \
                 solutions) solves {} of the held-out problems greedily by itself: it knows more \
                 arithmetic than the policy it verifies, which is why it can check the policy's \
                 steps; on this task more SFT is also the cheaper route to accuracy.",
                v.extra_steps,
                pct_ci(v.correct, v.n)
            ));
        }
        if self.retain.len() >= 2 {
            let parts: Vec<String> = self
                .retain
                .iter()
                .map(|r| format!("{} {}", r.model, pct_ci(r.correct, r.n)))
                .collect();
            out.push(format!(
                "Retain-set greedy accuracy (a neighbouring level RL never trains on): {}.",
                parts.join(", ")
            ));
        }
        for (name, recs) in &self.rl_metrics {
            let (key, what) = if logs_fresh_reward(recs) {
                (
                    FRESH_REWARD,
                    "training reward on fresh prompts (before dynamic sampling)",
                )
            } else {
                ("reward", "training reward")
            };
            if let Some((r0, r1)) = first_last(recs, key) {
                let w = warnings(recs);
                out.push(format!(
                    "{name}: {what} {r0:.3} -> {r1:.3} (first and last quarter of the \
                     batches); guard warnings: {}.",
                    if w.is_empty() {
                        "none".into()
                    } else {
                        w.join(", ")
                    }
                ));
            }
        }
        if let Some(h) = &self.hacking {
            for (name, recs) in h {
                let proxy = first_last(recs, "reward");
                let verifier = first_last(recs, "verifier_reward");
                let w = warnings(recs);
                if let (Some((p0, p1)), Some((v0, v1))) = (proxy, verifier) {
                    out.push(format!(
                        "{name}: proxy reward {p0:.3} -> {p1:.3}, held-out verifier \
                         {v0:.3} -> {v1:.3}; guard warnings: {}.",
                        if w.is_empty() {
                            "none".into()
                        } else {
                            w.join(", ")
                        }
                    ));
                }
            }
        }
        out
    }

    /// The terminal's summary: the table and the findings.
    pub fn terminal(&self) -> String {
        let (header, rows) = self.table_rows();
        let mut s = format!("| {} |\n|", header.join(" | "));
        for (i, _) in header.iter().enumerate() {
            s.push_str(if i == 0 { " --- |" } else { " ---: |" });
        }
        s.push('\n');
        for r in &rows {
            s.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        s.push_str(&format!(
            "\n{} held-out problems; accuracy with its 95% Wilson interval.\n",
            self.test_problems
        ));
        for f in self.findings() {
            s.push_str(&format!("- {f}\n"));
        }
        s
    }

    /// Training curves of one quantity on its own axis: each run smoothed, its raw points faint.
    fn curve(
        runs: &[(String, Vec<Map<String, Value>>)],
        x: &str,
        key: &str,
        title: &str,
    ) -> Option<String> {
        let mut plot = Plot::new(title, "rollout batch", key);
        for (name, recs) in runs {
            let raw = series(recs, x, key);
            if !raw.is_empty() {
                plot = plot.series(Series::new(name.clone(), raw).smoothed(Smooth::Ema(0.8)));
            }
        }
        (!plot.series.is_empty()).then(|| inline_svg(&plot_svg(&plot)).to_string())
    }

    /// The self-contained page.
    pub fn html(&self) -> Result<String> {
        let (header, rows) = self.table_rows();
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let table = html_table(&header, &rows);
        let findings: String = self
            .findings()
            .iter()
            .map(|f| format!("<li>{}</li>\n", escape(f)))
            .collect();
        let retain_rows: Vec<Vec<String>> = self
            .retain
            .iter()
            .map(|r| vec![r.model.clone(), pct_ci(r.correct, r.n), r.n.to_string()])
            .collect();
        let retain = html_table(
            &[
                "model",
                "retain-set greedy accuracy [95% interval]",
                "problems",
            ],
            &retain_rows,
        );
        let mut plots = String::new();
        let reward = if self
            .rl_metrics
            .iter()
            .any(|(_, recs)| logs_fresh_reward(recs))
        {
            (
                FRESH_REWARD,
                "Training reward on fresh prompts (task verifier, before dynamic sampling)",
                "rollout_step",
            )
        } else {
            ("reward", "Training reward (task verifier)", "rollout_step")
        };
        for (key, title, x) in [
            reward,
            (
                "verifier_reward",
                "Held-out verifier on the rollouts (math_answer)",
                "rollout_step",
            ),
            ("kl", "KL to the SFT model (per token)", "rollout_step"),
            ("retain_loss", "Retain-set loss", "step"),
        ] {
            if let Some(svg) = Self::curve(&self.rl_metrics, x, key, title) {
                plots.push_str(&format!("<figure>{svg}</figure>\n"));
            }
        }
        let mut hacking = String::new();
        if let Some(h) = &self.hacking {
            for (key, title) in [
                (
                    "reward",
                    "Hacking: the proxy reward (pays for an even answer)",
                ),
                ("verifier_reward", "Hacking: the held-out verifier"),
                ("completion_length", "Hacking: completion length (tokens)"),
                ("kl", "Hacking: KL to the SFT model (per token)"),
            ] {
                if let Some(svg) = Self::curve(h, "rollout_step", key, title) {
                    hacking.push_str(&format!("<figure>{svg}</figure>\n"));
                }
            }
        }
        // Accuracy against generated tokens on a log axis, one line per model and strategy
        // family, every point marked (single-budget strategies too), with its 95% interval.
        let mut acc = Plot::new(
            "Held-out accuracy against generated tokens",
            "generated tokens per problem",
            "accuracy (%)",
        )
        .log_x()
        .size(900, 480);
        for e in &self.evals {
            let mut fams: Vec<(String, Vec<&StrategyResult>)> = Vec::new();
            for r in &e.rows {
                let key = format!("{} {}", e.model, r.family);
                match fams.iter_mut().find(|f| f.0 == key) {
                    Some(f) => f.1.push(r),
                    None => fams.push((key, vec![r])),
                }
            }
            for (name, mut rs) in fams {
                rs.sort_by(|x, y| x.mean_tokens.total_cmp(&y.mean_tokens));
                let points = rs
                    .iter()
                    .map(|r| (r.mean_tokens.max(1.0), 100.0 * r.accuracy()))
                    .collect();
                let intervals = rs
                    .iter()
                    .map(|r| {
                        let (lo, hi) = wilson(r.correct, r.n);
                        (100.0 * lo, 100.0 * hi)
                    })
                    .collect();
                let mut s = Series::new(name, points).with_intervals(intervals);
                if e.model != "sft" {
                    s = s.dashed();
                }
                acc = acc.series(s);
            }
        }
        let timings: String = self
            .timings
            .iter()
            .map(|(n, t)| format!("{n} {t:.0} s"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut body = format!(
            "<p class=\"note\">model {model}, seed {seed}{fast}; {secs:.0} s on this machine \
             ({timings}).</p>\n<h2>What this run shows</h2>\n<ul>\n{findings}</ul>\n\
             <h2>Held-out accuracy ({n} problems never trained on)</h2>\n{table}\n\
             <p class=\"note\">Accuracy with its 95% Wilson interval; tokens are generated tokens \
             per problem, every sample and step of a search included. (PRM): steps scored by the \
             learned process reward model; (rule): by the task's rule step checker, which sees no \
             reference answer.</p>\n\
             <h2>Accuracy against compute</h2>\n<figure>{acc}</figure>\n\
             <h2>Forgetting</h2>\n{retain}\n<h2>Training</h2>\n{plots}\n",
            model = escape(&self.model),
            seed = self.seed,
            fast = if self.fast { ", --fast" } else { "" },
            secs = self.seconds,
            n = self.test_problems,
            acc = inline_svg(&plot_svg(&acc)),
        );
        if !hacking.is_empty() {
            body.push_str(&format!("<h2>Reward hacking</h2>\n{hacking}\n"));
        }
        Ok(page(
            &format!("temper demo: {} level {}", self.task, self.level),
            &body,
        ))
    }

    /// `demo.json`: the headline numbers, machine-readable.
    pub fn record(&self) -> Value {
        let acc = |e: Option<&EvalSummary>, s: &str| e.and_then(|e| e.get(s)).map(|r| r.accuracy());
        let best = self.rl().and_then(|e| {
            e.rows
                .iter()
                .max_by(|x, y| x.accuracy().total_cmp(&y.accuracy()))
        });
        let last = |k: &str| {
            self.rl_metrics
                .first()
                .and_then(|(_, recs)| recs.iter().rev().find_map(|r| r.get(k)?.as_f64()))
        };
        let first = |k: &str| {
            self.rl_metrics
                .first()
                .and_then(|(_, recs)| recs.iter().find_map(|r| r.get(k)?.as_f64()))
        };
        let gain = self.greedy_gain();
        json!({
            "status": "done",
            "task": self.task,
            "level": self.level,
            "seed": self.seed,
            "fast": self.fast,
            "model": self.model,
            "test_problems": self.test_problems,
            "sft_greedy_accuracy": acc(self.sft(), "greedy"),
            "grpo_greedy_accuracy": acc(self.rl(), "greedy"),
            "greedy_gain": gain.map(|g| g.0),
            "greedy_gain_ci95": gain.map(|g| [g.1, g.2]),
            "best_accuracy": best.map(|b| b.accuracy()),
            "best_strategy": best.map(|b| b.strategy.clone()),
            "prm_step_auc": self.prm_auc.map(|a| a.step),
            "verifier_greedy": self.verifier.map(|v| json!({
                "extra_sft_steps": v.extra_steps,
                "correct": v.correct,
                "problems": v.n,
            })),
            "prm_within_problem_auc": self.prm_auc.and_then(|a| a.within_problem.map(|w| w.0)),
            "retain_accuracy": self.retain.iter().map(|r| (r.model.clone(), json!(r.correct as f64 / r.n.max(1) as f64))).collect::<Map<String, Value>>(),
            "kl": last("kl"),
            "retain_loss_before": first("retain_loss"),
            "retain_loss_after": last("retain_loss"),
            "warnings": self.rl_metrics.first().map(|(_, r)| warnings(r)).unwrap_or_default(),
            "hacking": self.hacking.as_ref().map(|h| h.iter().map(|(n, r)| (n.clone(), json!({
                "reward": first_last(r, "reward"),
                "verifier_reward": first_last(r, "verifier_reward"),
                "warnings": warnings(r),
            }))).collect::<Map<String, Value>>()),
            "seconds": self.seconds,
            "stage_seconds": self.timings.iter().map(|(n, t)| (n.clone(), json!(t))).collect::<Map<String, Value>>(),
            "strategies": self.evals.iter().map(|e| (e.model.clone(), json!(e.rows.iter().map(|r| json!({
                "strategy": r.strategy,
                "accuracy": r.accuracy(),
                "ci95": wilson(r.correct, r.n),
                "problems": r.n,
                "mean_tokens": r.mean_tokens,
                "sampled_pass_at_1": r.candidates.map(|c| c.0),
                "pass_at_k": r.candidates.map(|c| c.1 as f64 / r.n.max(1) as f64),
            })).collect::<Vec<_>>()))).collect::<Map<String, Value>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn row(strategy: &str, per: &[bool], tokens: f64) -> StrategyResult {
        StrategyResult {
            strategy: strategy.into(),
            family: strategy.split('@').next().unwrap_or(strategy).into(),
            correct: per.iter().filter(|&&c| c).count(),
            n: per.len(),
            mean_tokens: tokens,
            per_problem: per.iter().copied().enumerate().collect::<BTreeMap<_, _>>(),
            candidates: None,
        }
    }

    fn report(evals: Vec<EvalSummary>) -> Report {
        Report {
            task: "countdown".into(),
            level: 4,
            seed: 1,
            fast: false,
            model: "m".into(),
            test_problems: 4,
            evals,
            retain: vec![],
            prm_auc: None,
            verifier: None,
            rl_metrics: vec![],
            hacking: None,
            timings: vec![],
            seconds: 1.0,
        }
    }

    #[test]
    fn the_reward_plot_shows_the_reward_before_dynamic_sampling_when_logged() {
        let rec = |step: u64, r: f64, before: Option<f64>| {
            let mut m = Map::new();
            m.insert("rollout_step".into(), json!(step));
            m.insert("reward".into(), json!(r));
            if let Some(b) = before {
                m.insert("reward_before_filter".into(), json!(b));
            }
            m
        };
        let mut plain = report(vec![]);
        plain.rl_metrics = vec![("grpo".into(), vec![rec(1, 0.5, None), rec(2, 0.6, None)])];
        let page = plain.html().unwrap();
        assert!(page.contains("Training reward (task verifier)"));
        let mut filtered = report(vec![]);
        filtered.rl_metrics = vec![(
            "grpo".into(),
            vec![rec(1, 0.5, Some(0.2)), rec(2, 0.6, Some(0.3))],
        )];
        let page = filtered.html().unwrap();
        assert!(page.contains("before dynamic sampling"), "{page}");
        assert!(!page.contains("Training reward (task verifier)"));
    }

    #[test]
    fn findings_say_when_no_search_strategy_beats_greedy() {
        let sft = EvalSummary {
            model: "SFT".into(),
            rows: vec![
                row("greedy", &[true, true, false, false], 20.0),
                row("sc@4", &[true, false, false, false], 80.0),
            ],
        };
        let rl = EvalSummary {
            model: "GRPO".into(),
            rows: vec![
                row("greedy", &[true, false, false, false], 20.0),
                row("sc@4", &[true, true, true, false], 80.0),
            ],
        };
        let text = report(vec![sft, rl]).findings().join("\n");
        assert!(
            text.contains(
                "SFT: no search strategy beat greedy's 50.0% (the best, sc@4, reached 25.0%"
            ),
            "{text}"
        );
        assert!(
            text.contains("GRPO: the best strategy is sc@4 at 75.0% (80 tokens a problem) against greedy's 25.0%"),
            "{text}"
        );
    }
}
