//! Preference data as token sequences: paired rows (`prompt`/`chosen`/`rejected`) and unpaired rows
//! (`prompt`/`completion`/`label`, KTO), plain or conversational, tokenised exactly as SFT tokenises a
//! prompt-completion row. Truncation only ever shortens the prompt, from its start: a completion is
//! never cut, and a row whose completion cannot fit is dropped and counted (its line reported).
//! Knows the tokenizer and chat template; nothing of models or losses.

use std::path::Path;

use tempering_model::{ChatTemplate, Tokenizer};
use tempering_tasks::dataset::{
    read_rows_numbered, PreferenceExample, SftExample, TextOrChat, UnpairedExample,
};

use crate::error::{Result, TrainError};
use crate::sft::tokenize;

/// A prompt followed by a completion: the tokens from `start` on are the completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptCompletion {
    pub ids: Vec<u32>,
    pub start: usize,
}

impl PromptCompletion {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn completion_len(&self) -> usize {
        self.ids.len() - self.start
    }
}

/// One preference pair, with its reference log-probs once computed (`--precompute-ref`).
#[derive(Debug, Clone, PartialEq)]
pub struct PairSequence {
    /// Line (or row) of the data file, for reports.
    pub line: usize,
    pub chosen: PromptCompletion,
    pub rejected: PromptCompletion,
    /// Summed reference log-probs of the chosen and rejected completions.
    pub reference: Option<(f64, f64)>,
}

/// One unpaired example (KTO) and its mismatched KL sequence: this prompt with the previous row's
/// completion, as TRL pairs them.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpairedSequence {
    pub line: usize,
    pub seq: PromptCompletion,
    pub kl: PromptCompletion,
    pub desirable: bool,
    /// Summed reference log-probs of the completion and of the KL completion.
    pub reference: Option<(f64, f64)>,
}

/// Length limits, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreferenceDataOptions {
    /// Prompt plus completion. Longer prompts lose their first tokens; a completion that cannot fit
    /// with at least one prompt token drops the row.
    pub max_length: usize,
    /// Prompts longer than this lose their first tokens (0: no separate limit).
    pub max_prompt_length: usize,
}

impl Default for PreferenceDataOptions {
    fn default() -> Self {
        PreferenceDataOptions {
            max_length: 1024,
            max_prompt_length: 0,
        }
    }
}

/// What preparing a dataset did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreferenceReport {
    pub rows: usize,
    /// Rows kept.
    pub kept: usize,
    /// Rows whose prompt was shortened.
    pub prompts_truncated: usize,
    /// Lines of rows dropped: a completion empty, without a prompt token before it, or too long.
    pub dropped_lines: Vec<usize>,
    pub tokens: usize,
}

impl PreferenceReport {
    /// One line for the log; names the first dropped lines.
    pub fn summary(&self, what: &Path, opts: &PreferenceDataOptions) -> String {
        let mut s = format!(
            "{}: {} rows -> {} kept, {} tokens; {} prompts shortened from the start to fit max_length {}{}",
            what.display(),
            self.rows,
            self.kept,
            self.tokens,
            self.prompts_truncated,
            opts.max_length,
            if opts.max_prompt_length > 0 {
                format!(" / max_prompt_length {}", opts.max_prompt_length)
            } else {
                String::new()
            }
        );
        if !self.dropped_lines.is_empty() {
            let shown: Vec<String> = self
                .dropped_lines
                .iter()
                .take(5)
                .map(|l| l.to_string())
                .collect();
            s.push_str(&format!(
                "; {} dropped because a completion is empty or does not fit after a prompt token (lines {}{})",
                self.dropped_lines.len(),
                shown.join(", "),
                if self.dropped_lines.len() > 5 { ", ..." } else { "" }
            ));
        }
        s
    }
}

enum Fit {
    Kept,
    PromptCut,
    TooLong,
}

/// Shortens the prompt from its start to the limits; never touches the completion.
fn fit(s: &mut PromptCompletion, opts: &PreferenceDataOptions) -> Fit {
    // No completion, or no prompt token for the first completion token to be predicted from.
    if s.completion_len() == 0 || s.start == 0 {
        return Fit::TooLong;
    }
    let mut cut = 0;
    if opts.max_prompt_length > 0 && s.start > opts.max_prompt_length {
        cut = s.start - opts.max_prompt_length;
    }
    if s.len() - cut > opts.max_length {
        cut = s.len() - opts.max_length;
    }
    if cut == 0 {
        return Fit::Kept;
    }
    // The first completion token needs at least one prompt token before it.
    if cut >= s.start {
        return Fit::TooLong;
    }
    s.ids.drain(..cut);
    s.start -= cut;
    Fit::PromptCut
}

fn prompt_completion(
    prompt: &TextOrChat,
    completion: &TextOrChat,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
) -> Result<PromptCompletion> {
    let ex = SftExample::PromptCompletion {
        prompt: prompt.clone(),
        completion: completion.clone(),
    };
    let seq = tokenize(&ex, tokenizer, template, true)?;
    let start = seq.targets.iter().position(|&t| t).unwrap_or(seq.ids.len());
    Ok(PromptCompletion {
        ids: seq.ids,
        start,
    })
}

fn check_limits(opts: &PreferenceDataOptions) -> Result<()> {
    if opts.max_length < 2 {
        return Err(TrainError::config(
            "max_length",
            format!("expected at least 2 tokens, got {}", opts.max_length),
        ));
    }
    Ok(())
}

fn nothing_left(path: &Path, report: &PreferenceReport) -> TrainError {
    TrainError::EmptyData {
        what: path.display().to_string(),
        why: Some(format!(
            "all {} rows were dropped: no completion fits max_length",
            report.rows
        )),
    }
}

/// Tokenises numbered preference examples (line numbers for errors and reports) and fits them.
pub fn prepare_pairs(
    examples: &[(usize, PreferenceExample)],
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    opts: &PreferenceDataOptions,
) -> Result<(Vec<PairSequence>, PreferenceReport)> {
    check_limits(opts)?;
    let mut report = PreferenceReport {
        rows: examples.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(examples.len());
    for (line, ex) in examples {
        let err = |e: TrainError| TrainError::Example {
            path: path.to_path_buf(),
            line: *line,
            msg: e.to_string(),
        };
        let mut chosen =
            prompt_completion(&ex.prompt, &ex.chosen, tokenizer, template).map_err(err)?;
        let mut rejected =
            prompt_completion(&ex.prompt, &ex.rejected, tokenizer, template).map_err(err)?;
        match (fit(&mut chosen, opts), fit(&mut rejected, opts)) {
            (Fit::TooLong, _) | (_, Fit::TooLong) => {
                report.dropped_lines.push(*line);
                continue;
            }
            (Fit::PromptCut, _) | (_, Fit::PromptCut) => report.prompts_truncated += 1,
            _ => {}
        }
        report.tokens += chosen.len() + rejected.len();
        out.push(PairSequence {
            line: *line,
            chosen,
            rejected,
            reference: None,
        });
    }
    report.kept = out.len();
    if out.is_empty() {
        return Err(nothing_left(path, &report));
    }
    Ok((out, report))
}

/// Reads a JSONL or Parquet preference dataset and tokenises it. Errors name the file and line.
pub fn load_pairs(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    opts: &PreferenceDataOptions,
) -> Result<(Vec<PairSequence>, PreferenceReport)> {
    let rows = read_rows_numbered(path)?;
    let mut examples = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        examples.push((*line, PreferenceExample::from_row(row, path, *line)?));
    }
    prepare_pairs(&examples, path, tokenizer, template, opts)
}

/// Tokenises numbered unpaired examples and their KL sequences (prompt `i` with completion `i - 1`,
/// cyclically). The KL sequence only estimates a baseline, so it keeps its start when too long.
pub fn prepare_unpaired(
    examples: &[(usize, UnpairedExample)],
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    opts: &PreferenceDataOptions,
) -> Result<(Vec<UnpairedSequence>, PreferenceReport)> {
    check_limits(opts)?;
    let mut report = PreferenceReport {
        rows: examples.len(),
        ..Default::default()
    };
    let n = examples.len();
    let mut out = Vec::with_capacity(n);
    for (i, (line, ex)) in examples.iter().enumerate() {
        let err = |e: TrainError| TrainError::Example {
            path: path.to_path_buf(),
            line: *line,
            msg: e.to_string(),
        };
        let mut seq =
            prompt_completion(&ex.prompt, &ex.completion, tokenizer, template).map_err(err)?;
        let previous = &examples[(i + n - 1) % n].1;
        let mut kl = prompt_completion(&ex.prompt, &previous.completion, tokenizer, template)
            .map_err(err)?;
        match fit(&mut seq, opts) {
            Fit::TooLong => {
                report.dropped_lines.push(*line);
                continue;
            }
            Fit::PromptCut => report.prompts_truncated += 1,
            Fit::Kept => {}
        }
        if let Fit::TooLong = fit(&mut kl, opts) {
            kl.ids.truncate(opts.max_length);
            kl.start = kl.start.min(opts.max_length - 1);
        }
        if kl.completion_len() == 0 {
            // An empty previous completion: estimate on this row's own completion instead.
            kl = seq.clone();
        }
        report.tokens += seq.len();
        out.push(UnpairedSequence {
            line: *line,
            seq,
            kl,
            desirable: ex.label,
            reference: None,
        });
    }
    report.kept = out.len();
    if out.is_empty() {
        return Err(nothing_left(path, &report));
    }
    Ok((out, report))
}

/// Reads a JSONL or Parquet unpaired dataset (`prompt`, `completion`, `label`) and tokenises it.
pub fn load_unpaired(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    opts: &PreferenceDataOptions,
) -> Result<(Vec<UnpairedSequence>, PreferenceReport)> {
    let rows = read_rows_numbered(path)?;
    let mut examples = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        examples.push((*line, UnpairedExample::from_row(row, path, *line)?));
    }
    prepare_unpaired(&examples, path, tokenizer, template, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pc(prompt: usize, completion: usize) -> PromptCompletion {
        PromptCompletion {
            ids: (0..(prompt + completion) as u32).collect(),
            start: prompt,
        }
    }

    #[test]
    fn truncation_cuts_the_prompt_start_and_never_the_completion() {
        let opts = PreferenceDataOptions {
            max_length: 10,
            max_prompt_length: 0,
        };
        let mut s = pc(8, 4);
        assert!(matches!(fit(&mut s, &opts), Fit::PromptCut));
        assert_eq!((s.len(), s.start, s.completion_len()), (10, 6, 4));
        assert_eq!(s.ids[0], 2, "the prompt lost its first tokens");
        // A completion of 10 tokens leaves no room for a prompt token: dropped.
        assert!(matches!(fit(&mut pc(3, 10), &opts), Fit::TooLong));
        assert!(matches!(fit(&mut pc(3, 9), &opts), Fit::PromptCut));
        assert!(matches!(fit(&mut pc(3, 0), &opts), Fit::TooLong));
        assert!(matches!(fit(&mut pc(3, 7), &opts), Fit::Kept));
        let opts = PreferenceDataOptions {
            max_length: 100,
            max_prompt_length: 4,
        };
        let mut s = pc(9, 3);
        assert!(matches!(fit(&mut s, &opts), Fit::PromptCut));
        assert_eq!((s.start, s.completion_len(), s.ids[0]), (4, 3, 5));
    }
}
