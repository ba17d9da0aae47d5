//! The run directory of an evaluation: `results.jsonl` (one line per strategy and problem),
//! `table.md`, `table.csv`, `accuracy_vs_tokens.{svg,png}` and `report.html`, a self-contained
//! page (the SVG inlined, no scripts, no network). Every file is written to a temporary name and
//! renamed.

use std::path::Path;

use crate::error::{write_atomic, EvalError, Result};
use crate::plot::write_plots;
use crate::run::ProblemResult;
use crate::table::{csv, markdown, StrategyRow};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML page: title, what was run, the table and the inlined plot.
pub fn html(title: &str, about: &str, rows: &[StrategyRow], svg: &str) -> String {
    let mut t = String::from("<table><tr><th>strategy</th><th>problems</th><th>accuracy</th><th>mean generated tokens</th><th>mean model calls</th><th>mean scorer calls</th><th>wall s / problem</th><th>budget cut</th></tr>\n");
    for r in rows {
        t.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td><td>{:.1}</td><td>{:.2}</td><td>{:.2}</td><td>{:.3}</td><td>{}</td></tr>\n",
            escape(&r.strategy), r.problems, 100.0 * r.accuracy, r.mean_tokens, r.mean_calls, r.mean_scorer_calls, r.wall_s_per_problem, r.budget_cut
        ));
    }
    t.push_str("</table>");
    // The SVG document's XML declaration is not allowed inside HTML.
    let svg = match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    };
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #999;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head>\n<body><h1>{title}</h1>\n<p>{about}</p>\n{t}\n<h2>Accuracy against generated tokens</h2>\n{svg}\n</body></html>\n",
        title = escape(title),
        about = escape(about),
    )
}

/// Writes every output of a run into `dir` (created if needed).
pub fn write_run(
    dir: &Path,
    title: &str,
    about: &str,
    results: &[ProblemResult],
    rows: &[StrategyRow],
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
    let mut jsonl = String::new();
    for r in results {
        jsonl.push_str(&serde_json::to_string(r).unwrap_or_default());
        jsonl.push('\n');
    }
    write_atomic(&dir.join("results.jsonl"), jsonl.as_bytes())?;
    write_atomic(&dir.join("table.md"), markdown(rows).as_bytes())?;
    write_atomic(&dir.join("table.csv"), csv(rows).as_bytes())?;
    let svg = write_plots(&dir.join("accuracy_vs_tokens"), rows, title)?;
    write_atomic(
        &dir.join("report.html"),
        html(title, about, rows, &svg).as_bytes(),
    )?;
    Ok(())
}
