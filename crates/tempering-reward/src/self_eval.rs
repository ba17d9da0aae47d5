//! Self-evaluation: a language model (typically the policy itself) prompted to judge an answer or
//! the latest step of a solution, turned into a score from its next-token distribution:
//! `P(yes) / (P(yes) + P(no))`, where `P(yes)` sums the probabilities of the tokens that start a
//! "yes" verdict (`Yes`, ` Yes`, ...) and likewise for "no". One forward pass per judged text, no
//! sampling. Implements [`Verifier`] (answers) and [`StepScorer`] (each step prefix).
//!
//! Knows the model layer (transformer, tokenizer, chat template); nothing of generation engines
//! or of how scores are used.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use tempering_model::{ChatMessage, ChatTemplate, ModelFiles, TokenLayout, Tokenizer, Transformer};

use crate::error::{Result, RewardError};
use crate::scorer::{ScoreInput, Scored, StepScorer, Verifier};

/// The judging prompts and verdict words. Templates fill `{problem}`, `{answer}` (the completion),
/// `{steps}` (the steps so far, the last one being judged) and `{step}` (that last step).
#[derive(Debug, Clone, PartialEq)]
pub struct SelfEvalConfig {
    pub answer_template: String,
    pub step_template: String,
    /// Words whose token counts as "yes": every spelling the model might start its verdict with.
    /// Words that are one token count; when none is, the first token of each word counts.
    pub yes_words: Vec<String>,
    pub no_words: Vec<String>,
    /// Render the judging prompt with the model's chat template when it has one.
    pub use_chat_template: bool,
    /// Prompts per forward pass.
    pub batch_size: usize,
}

impl Default for SelfEvalConfig {
    fn default() -> Self {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect();
        SelfEvalConfig {
            answer_template: "Problem:\n{problem}\n\nProposed solution:\n{answer}\n\n\
                Is the proposed solution correct? Reply with Yes or No.\nVerdict:"
                .to_string(),
            step_template: "Problem:\n{problem}\n\nSolution so far:\n{steps}\n\n\
                Is the last step, \"{step}\", correct? Reply with Yes or No.\nVerdict:"
                .to_string(),
            yes_words: words(&["Yes", " Yes", "yes", " yes", "YES", " YES"]),
            no_words: words(&["No", " No", "no", " no", "NO", " NO"]),
            use_chat_template: true,
            batch_size: 8,
        }
    }
}

pub struct SelfEvaluator {
    model: Transformer,
    tokenizer: Tokenizer,
    chat: Option<ChatTemplate>,
    yes_ids: Vec<u32>,
    no_ids: Vec<u32>,
    config: SelfEvalConfig,
}

impl SelfEvaluator {
    /// The judge from its parts. Errors when no verdict word maps to a token of its own, or when
    /// "yes" and "no" would share every token (a tokenizer without those letters).
    pub fn new(
        model: Transformer,
        tokenizer: Tokenizer,
        chat: Option<ChatTemplate>,
        config: SelfEvalConfig,
    ) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(RewardError::spec(
                "self_eval",
                "`batch_size` must be at least 1",
            ));
        }
        // Whole-word tokens when the vocabulary has them (` Yes`); else each word's first token
        // (a character-level vocabulary), since a first token like `Y` also starts other words.
        let verdict_ids = |words: &[String]| -> Result<Vec<u32>> {
            let mut whole = Vec::new();
            let mut first = Vec::new();
            for w in words {
                if !tokenizer.unknown_chars(w).is_empty() {
                    continue;
                }
                let ids = tokenizer.encode(w, false)?;
                if ids.len() == 1 {
                    whole.push(ids[0]);
                }
                first.extend(ids.first());
            }
            let mut ids = if whole.is_empty() { first } else { whole };
            ids.sort_unstable();
            ids.dedup();
            Ok(ids)
        };
        let (yes, no) = (
            verdict_ids(&config.yes_words)?,
            verdict_ids(&config.no_words)?,
        );
        // A token that starts both verdicts (a bare space) tells nothing.
        let yes_ids: Vec<u32> = yes.iter().copied().filter(|i| !no.contains(i)).collect();
        let no_ids: Vec<u32> = no.iter().copied().filter(|i| !yes.contains(i)).collect();
        if yes_ids.is_empty() || no_ids.is_empty() {
            return Err(RewardError::spec(
                "self_eval",
                format!(
                    "the tokenizer has no token that starts only a yes verdict ({:?}) or only a no verdict ({:?})",
                    config.yes_words, config.no_words
                ),
            ));
        }
        let chat = if config.use_chat_template { chat } else { None };
        Ok(SelfEvaluator {
            model,
            tokenizer,
            chat,
            yes_ids,
            no_ids,
            config,
        })
    }

    /// The model at `path` (HF directory or GGUF) as its own judge, in f32.
    pub fn open(path: &Path, device: &Device, config: SelfEvalConfig) -> Result<Self> {
        let files = ModelFiles::open(path, DType::F32, device)?;
        let tokenizer = files.tokenizer.clone().ok_or_else(|| RewardError::Format {
            path: path.to_path_buf(),
            msg: "no tokenizer (expected tokenizer.json or GGUF tokenizer metadata)".into(),
        })?;
        let model = files.transformer()?;
        Self::new(model, tokenizer, files.chat_template.clone(), config)
    }

    /// The token ids counted as "yes" and as "no".
    pub fn verdict_ids(&self) -> (&[u32], &[u32]) {
        (&self.yes_ids, &self.no_ids)
    }

    /// The judging text for a whole completion (before any chat template).
    pub fn answer_prompt(&self, problem: &str, answer: &str) -> String {
        self.config
            .answer_template
            .replace("{problem}", problem.trim_end())
            .replace("{answer}", answer.trim_end())
    }

    /// The judging text for the last of `steps`.
    pub fn step_prompt(&self, problem: &str, steps: &[&str]) -> String {
        let last = steps.last().copied().unwrap_or("");
        self.config
            .step_template
            .replace("{problem}", problem.trim_end())
            .replace("{steps}", &steps.join("\n"))
            .replace("{step}", last)
    }

    /// Token ids the model sees for a judging text: the chat template's user turn with the
    /// assistant turn opened, or the text with the tokenizer's special tokens.
    pub fn encode_judgement(&self, text: &str) -> Result<Vec<u32>> {
        match &self.chat {
            Some(t) => {
                let rendered = t.render(&[ChatMessage::new("user", text)], true)?;
                Ok(self.tokenizer.encode(&rendered, false)?)
            }
            None => Ok(self.tokenizer.encode(text, true)?),
        }
    }

    /// `P(yes) / (P(yes) + P(no))` at the position after each text.
    pub fn p_yes(&self, texts: &[String]) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.config.batch_size) {
            let rows = chunk
                .iter()
                .map(|t| self.encode_judgement(t))
                .collect::<Result<Vec<_>>>()?;
            out.extend(self.p_yes_ids(&rows)?);
        }
        Ok(out)
    }

    /// [`Self::p_yes`] on token ids: one left-padded forward pass, logits at the last column.
    pub fn p_yes_ids(&self, rows: &[Vec<u32>]) -> Result<Vec<f64>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        if rows.iter().any(|r| r.is_empty()) {
            return Err(RewardError::spec(
                "self_eval",
                "a judging prompt encodes to no tokens",
            ));
        }
        let t = rows.iter().map(Vec::len).max().unwrap_or(0);
        let lengths: Vec<usize> = rows.iter().map(Vec::len).collect();
        let mut ids = Vec::with_capacity(rows.len() * t);
        for r in rows {
            ids.extend(std::iter::repeat_n(0u32, t - r.len()));
            ids.extend_from_slice(r);
        }
        let input = Tensor::from_vec(ids, (rows.len(), t), self.model.device())?;
        let layout = TokenLayout::left_padded(&lengths, t);
        let logits = self
            .model
            .forward_last(&input, &layout, None)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        Ok(logits.iter().map(|l| self.verdict_probability(l)).collect())
    }

    /// From one row of logits: softmax mass on the yes tokens over the mass on yes and no tokens,
    /// computed as a sigmoid of the difference of their log-sum-exps (stable for any logits).
    fn verdict_probability(&self, logits: &[f32]) -> f64 {
        let lse = |ids: &[u32]| {
            let xs: Vec<f64> = ids.iter().map(|&i| f64::from(logits[i as usize])).collect();
            let m = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            m + xs.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
        };
        let d = lse(&self.yes_ids) - lse(&self.no_ids);
        1.0 / (1.0 + (-d).exp())
    }
}

impl Verifier for SelfEvaluator {
    fn name(&self) -> &str {
        "self_eval"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        Ok(self.score_batch(std::slice::from_ref(input))?.remove(0))
    }

    fn score_batch(&self, inputs: &[ScoreInput<'_>]) -> Result<Vec<Scored>> {
        let texts: Vec<String> = inputs
            .iter()
            .map(|i| self.answer_prompt(i.prompt, i.completion))
            .collect();
        Ok(self
            .p_yes(&texts)?
            .into_iter()
            .map(|score| Scored {
                score,
                correct: None,
            })
            .collect())
    }
}

impl StepScorer for SelfEvaluator {
    fn name(&self) -> &str {
        "self_eval"
    }

    fn score_steps(&self, prompt: &str, steps: &[&str]) -> Result<Vec<f64>> {
        Ok(self
            .score_steps_batch(&[(prompt, steps.to_vec())])?
            .remove(0))
    }

    /// One judging prompt per step prefix, all items' prefixes batched together.
    fn score_steps_batch(&self, items: &[(&str, Vec<&str>)]) -> Result<Vec<Vec<f64>>> {
        let mut texts = Vec::new();
        for (prompt, steps) in items {
            for k in 1..=steps.len() {
                texts.push(self.step_prompt(prompt, &steps[..k]));
            }
        }
        let mut scores = self.p_yes(&texts)?.into_iter();
        Ok(items
            .iter()
            .map(|(_, steps)| scores.by_ref().take(steps.len()).collect())
            .collect())
    }
}
