//! `chrf`: the character n-gram F-score of a completion against its reference (Popović 2015), as
//! sacrebleu computes a sentence score (chrF: character orders 1..=6, beta 2, whitespace dropped;
//! `word_order=2` gives chrF++), scaled to `[0, 1]`. Checked against sacrebleu's numbers
//! (`fixtures/reward/chrf.json`, from `scripts/reference/chrf_fixtures.py`).

use std::collections::HashMap;

use crate::error::{Result, RewardError};
use crate::rules::Args;
use crate::scorer::{ScoreInput, Scored, Verifier};

/// sacrebleu's `CHRF` defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChrfParams {
    pub char_order: usize,
    pub word_order: usize,
    pub beta: f64,
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams.
    pub whitespace: bool,
}

impl Default for ChrfParams {
    fn default() -> Self {
        ChrfParams {
            char_order: 6,
            word_order: 0,
            beta: 2.0,
            lowercase: false,
            whitespace: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Chrf {
    pub params: ChrfParams,
}

impl Chrf {
    pub(crate) fn from_args(a: &mut Args) -> Result<Self> {
        let d = ChrfParams::default();
        let params = ChrfParams {
            char_order: a.count("char_order", false)?.unwrap_or(d.char_order),
            word_order: a.count("word_order", false)?.unwrap_or(d.word_order),
            beta: a.number("beta", false)?.unwrap_or(d.beta),
            lowercase: a.flag("lowercase")?.unwrap_or(d.lowercase),
            whitespace: a.flag("whitespace")?.unwrap_or(d.whitespace),
        };
        if params.char_order + params.word_order == 0 {
            return Err(a.error("`char_order` + `word_order` must be at least 1"));
        }
        if params.beta < 0.0 {
            return Err(a.error("`beta` must be >= 0"));
        }
        Ok(Chrf { params })
    }
}

impl Verifier for Chrf {
    fn name(&self) -> &str {
        "chrf"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let reference = input.reference.ok_or_else(|| {
            RewardError::spec(
                "chrf",
                "needs a reference text for each prompt (the dataset's reference column)",
            )
        })?;
        Ok(Scored {
            score: chrf_score(input.completion, reference, &self.params),
            correct: None,
        })
    }
}

/// The sentence-level chrF of `hypothesis` against one `reference`, in `[0, 1]`.
pub fn chrf_score(hypothesis: &str, reference: &str, p: &ChrfParams) -> f64 {
    let prep = |s: &str| {
        if p.lowercase {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let (hyp, rf) = (prep(hypothesis), prep(reference));
    let mut stats = Vec::with_capacity(p.char_order + p.word_order);
    let (hc, rc) = (char_ngrams(&hyp, p), char_ngrams(&rf, p));
    stats.extend(hc.iter().zip(&rc).map(|(h, r)| match_stats(h, r)));
    if p.word_order > 0 {
        let (hw, rw) = (split_punctuation(&hyp), split_punctuation(&rf));
        for n in 1..=p.word_order {
            stats.push(match_stats(&word_ngrams(&hw, n), &word_ngrams(&rw, n)));
        }
    }
    f_score(&stats, p.beta)
}

type Counts = HashMap<String, usize>;

fn char_ngrams(line: &str, p: &ChrfParams) -> Vec<Counts> {
    let chars: Vec<char> = if p.whitespace {
        line.chars().collect()
    } else {
        line.split_whitespace().flat_map(str::chars).collect()
    };
    (1..=p.char_order)
        .map(|n| {
            let mut c = Counts::new();
            for w in chars.windows(n) {
                *c.entry(w.iter().collect()).or_default() += 1;
            }
            c
        })
        .collect()
}

fn word_ngrams(words: &[String], n: usize) -> Counts {
    let mut c = Counts::new();
    for w in words.windows(n) {
        *c.entry(w.join(" ")).or_default() += 1;
    }
    c
}

/// chrF++'s word split: a punctuation mark at the end (else the start) of a word is its own token.
fn split_punctuation(s: &str) -> Vec<String> {
    const PUNCTS: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
    let mut out = Vec::new();
    for w in s.split_whitespace() {
        let mut cs = w.chars();
        let (first, last) = (cs.next(), w.chars().next_back());
        if w.chars().count() == 1 {
            out.push(w.to_string());
        } else if let Some(l) = last.filter(|c| PUNCTS.contains(*c)) {
            out.push(w[..w.len() - l.len_utf8()].to_string());
            out.push(l.to_string());
        } else if let Some(f) = first.filter(|c| PUNCTS.contains(*c)) {
            out.push(f.to_string());
            out.push(w[f.len_utf8()..].to_string());
        } else {
            out.push(w.to_string());
        }
    }
    out
}

/// (hypothesis n-grams, reference n-grams, matches); hypothesis n-grams count only when the
/// reference has some at this order (sacrebleu's rule).
fn match_stats(hyp: &Counts, rf: &Counts) -> (usize, usize, usize) {
    let hyp_count: usize = hyp.values().sum();
    let matches: usize = hyp
        .iter()
        .map(|(g, &c)| rf.get(g).map_or(0, |&r| c.min(r)))
        .sum();
    let hyp_count = if rf.is_empty() { 0 } else { hyp_count };
    (hyp_count, rf.values().sum(), matches)
}

/// Precision and recall averaged over the orders where both sides have n-grams, then F-beta.
fn f_score(stats: &[(usize, usize, usize)], beta: f64) -> f64 {
    let factor = beta * beta;
    let (mut prec, mut rec, mut effective) = (0.0, 0.0, 0usize);
    for &(h, r, m) in stats {
        if h > 0 && r > 0 {
            prec += m as f64 / h as f64;
            rec += m as f64 / r as f64;
            effective += 1;
        }
    }
    if effective == 0 {
        return 0.0;
    }
    let (prec, rec) = (prec / effective as f64, rec / effective as f64);
    if prec + rec == 0.0 {
        return 0.0;
    }
    (1.0 + factor) * prec * rec / (factor * prec + rec)
}
