//! The run directory of an evaluation: `results.jsonl` (one line per strategy and problem),
//! `table.md`, `table.csv`, `accuracy_vs_tokens.{svg,png}` and `report.html`, a self-contained
//! page (the table with 95% intervals, the SVG plots inlined, no scripts, no network). Every file
//! is written to a temporary name and renamed.

use std::path::Path;

use crate::curves::plot_svg;
use crate::error::{write_atomic, EvalError, Result};
use crate::page::{escape, eval_table, inline_svg, page, EVAL_TABLE_NOTE};
use crate::plot::{sampling_plots, write_plots};
use crate::run::ProblemResult;
use crate::table::{csv, markdown, StrategyRow};

/// The HTML page: title, what was run, the table with 95% intervals (and what sampling bought),
/// the inlined accuracy plot `svg` and one plot per sampling family.
pub fn html(title: &str, about: &str, rows: &[StrategyRow], svg: &str) -> String {
    let mut body = format!(
        "<p>{}</p>\n{}\n<p class=\"note\">{}</p>\n<h2>Accuracy against generated tokens</h2>\n\
         <p class=\"note\">One line per strategy family; bars are 95% Wilson intervals.</p>\n<figure>{}</figure>\n",
        escape(about),
        eval_table(rows),
        escape(EVAL_TABLE_NOTE),
        inline_svg(svg),
    );
    let sampling = sampling_plots(rows);
    if !sampling.is_empty() {
        body.push_str(
            "<h2>What sampling bought</h2>\n<p class=\"note\">For each family that draws whole \
             candidates: one sampled candidate (pass@1), the strategy's chosen answer, and whether \
             any candidate was right (pass@N, dashed: the most a perfect selector could reach); \
             pass@N and pass@1 are nudged sideways so equal values stay visible.</p>\n",
        );
        for (_, plot) in &sampling {
            body.push_str(&format!("<figure>{}</figure>\n", plot_svg(plot)));
        }
    }
    page(title, &body)
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
