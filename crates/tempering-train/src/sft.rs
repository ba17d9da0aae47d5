//! Supervised fine-tuning: turning TRL-format rows (`text`; `prompt`/`completion`; `messages`) into
//! token sequences with a per-token target mask (completion or assistant tokens only by default),
//! truncation and optional packing, and the SFT objective (summed negative log-likelihood of the
//! target tokens). Knows the tokenizer, the chat template and the decoder's forward; nothing of
//! optimisers, schedules or checkpoints.

use std::path::Path;

use candle_core::Tensor;
use tempering_model::{ChatMessage, ChatTemplate, Tokenizer, Transformer};
use tempering_tasks::dataset::{read_rows_numbered, Message, SftExample, TextOrChat};

use crate::error::{Result, TrainError};
use crate::objective::{DropoutPolicy, LossOutput, Objective, StepContext};

/// One training sequence: token ids, and whether each token is a target (predicted from the tokens
/// before it). The first token is never a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftSequence {
    pub ids: Vec<u32>,
    pub targets: Vec<bool>,
}

impl SftSequence {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn num_targets(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&t| t).count()
    }
}

/// How rows become sequences.
#[derive(Debug, Clone, PartialEq)]
pub struct SftDataOptions {
    /// Sequences are cut to this many tokens (the end is dropped).
    pub max_length: usize,
    /// Train on completion / assistant tokens only (`false`: on every token, prompt included).
    pub completion_only_loss: bool,
    /// Pack whole sequences into rows of up to `max_length` tokens (best fit, longest first).
    /// Attention then runs across the packed examples, as in TRL's packing without padding-free
    /// attention.
    pub packing: bool,
}

impl Default for SftDataOptions {
    fn default() -> Self {
        SftDataOptions {
            max_length: 1024,
            completion_only_loss: true,
            packing: false,
        }
    }
}

/// What preparing a dataset did, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepareReport {
    pub rows: usize,
    /// Sequences cut at `max_length`.
    pub truncated: usize,
    /// Rows left with no target token (e.g. the prompt filled `max_length`), dropped.
    pub dropped: usize,
    /// Sequences after packing (equal to the kept rows without packing).
    pub sequences: usize,
    pub tokens: usize,
    pub target_tokens: usize,
}

/// Reads a JSONL or Parquet SFT dataset and tokenises it. Errors name the file and line.
pub fn load_sft_sequences(
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    opts: &SftDataOptions,
) -> Result<(Vec<SftSequence>, PrepareReport)> {
    let rows = read_rows_numbered(path)?;
    let mut examples = Vec::with_capacity(rows.len());
    for (line, row) in &rows {
        let ex = SftExample::from_row(row, path, *line)?;
        examples.push((*line, ex));
    }
    prepare(&examples, path, tokenizer, template, opts)
}

/// Tokenises numbered examples (line numbers for errors), truncates, drops rows without targets and
/// packs if asked.
pub fn prepare(
    examples: &[(usize, SftExample)],
    path: &Path,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    opts: &SftDataOptions,
) -> Result<(Vec<SftSequence>, PrepareReport)> {
    if opts.max_length < 2 {
        return Err(TrainError::config(
            "max_length",
            format!("expected at least 2 tokens, got {}", opts.max_length),
        ));
    }
    let mut report = PrepareReport {
        rows: examples.len(),
        ..Default::default()
    };
    let mut seqs = Vec::with_capacity(examples.len());
    for (line, ex) in examples {
        let err = |msg: String| TrainError::Example {
            path: path.to_path_buf(),
            line: *line,
            msg,
        };
        let mut s = tokenize(ex, tokenizer, template, opts.completion_only_loss)
            .map_err(|e| err(e.to_string()))?;
        if s.ids.len() > opts.max_length {
            s.ids.truncate(opts.max_length);
            s.targets.truncate(opts.max_length);
            report.truncated += 1;
        }
        if let Some(t) = s.targets.first_mut() {
            *t = false;
        }
        if s.num_targets() == 0 {
            report.dropped += 1;
            continue;
        }
        seqs.push(s);
    }
    if seqs.is_empty() {
        return Err(TrainError::EmptyData {
            what: path.display().to_string(),
            why: Some(format!(
                "all {} rows were left without a target token at max_length {}",
                report.rows, opts.max_length
            )),
        });
    }
    if opts.packing {
        seqs = pack(seqs, opts.max_length);
    }
    report.sequences = seqs.len();
    report.tokens = seqs.iter().map(|s| s.len()).sum();
    report.target_tokens = seqs.iter().map(|s| s.num_targets()).sum();
    Ok((seqs, report))
}

fn chat(messages: &[Message]) -> Vec<ChatMessage> {
    messages
        .iter()
        .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
        .collect()
}

/// Ids of `text` plus EOS (when the tokenizer has one and the text does not already end with it).
fn with_eos(mut ids: Vec<u32>, tokenizer: &Tokenizer) -> Vec<u32> {
    if let Some((eos, _)) = tokenizer.eos_token() {
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
    }
    ids
}

/// A sequence whose tokens from `start` on are targets (all of them when `completion_only` is off).
fn masked(ids: Vec<u32>, start: usize, completion_only: bool) -> SftSequence {
    let targets = (0..ids.len())
        .map(|i| !completion_only || i >= start)
        .collect();
    SftSequence { ids, targets }
}

/// One example's tokens and targets, following TRL: plain text is tokenised with the tokenizer's
/// special tokens and ends with EOS; conversations are rendered with the chat template and tokenised
/// without adding special tokens (the template writes them); the prompt's tokens are those of the
/// prompt tokenised alone.
pub fn tokenize(
    ex: &SftExample,
    tokenizer: &Tokenizer,
    template: Option<&ChatTemplate>,
    completion_only: bool,
) -> Result<SftSequence> {
    let need_template = || {
        template.ok_or_else(|| {
            TrainError::config(
                "data",
                "a conversational example needs a chat template, and the model has none",
            )
        })
    };
    Ok(match ex {
        SftExample::Text { text } => {
            let ids = with_eos(tokenizer.encode(text, true)?, tokenizer);
            masked(ids, 0, false)
        }
        SftExample::PromptCompletion {
            prompt: TextOrChat::Text(p),
            completion: TextOrChat::Text(c),
        } => {
            let prompt_len = tokenizer.encode(p, true)?.len();
            let ids = with_eos(tokenizer.encode(&format!("{p}{c}"), true)?, tokenizer);
            masked(ids, prompt_len, completion_only)
        }
        SftExample::PromptCompletion { prompt, completion } => {
            let (TextOrChat::Chat(p), TextOrChat::Chat(c)) = (prompt, completion) else {
                return Err(TrainError::config(
                    "data",
                    "`prompt` and `completion` must both be strings or both lists of messages",
                ));
            };
            let t = need_template()?;
            let p = chat(p);
            let mut all = p.clone();
            all.extend(chat(c));
            let prompt_len = tokenizer.encode(&t.render(&p, true)?, false)?.len();
            let ids = tokenizer.encode(&t.render(&all, false)?, false)?;
            masked(ids, prompt_len, completion_only)
        }
        SftExample::Messages { messages } => {
            let t = need_template()?;
            let msgs = chat(messages);
            let ids = tokenizer.encode(&t.render(&msgs, false)?, false)?;
            if !completion_only {
                return Ok(masked(ids, 0, false));
            }
            // Each assistant turn spans from the end of the conversation before it (with the
            // generation prompt) to the end of the conversation including it.
            let mut targets = vec![false; ids.len()];
            for (i, m) in msgs.iter().enumerate() {
                if m.role != "assistant" {
                    continue;
                }
                let start = tokenizer.encode(&t.render(&msgs[..i], true)?, false)?.len();
                let end = tokenizer
                    .encode(&t.render(&msgs[..=i], false)?, false)?
                    .len()
                    .min(ids.len());
                for x in targets.iter_mut().take(end).skip(start) {
                    *x = true;
                }
            }
            SftSequence { ids, targets }
        }
    })
}

/// Best-fit-decreasing packing of whole sequences into rows of at most `max_len` tokens.
pub fn pack(mut seqs: Vec<SftSequence>, max_len: usize) -> Vec<SftSequence> {
    // Longest first; ties keep the data order (stable sort), so packing is deterministic.
    seqs.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut rows: Vec<SftSequence> = Vec::new();
    // (free space, row index), kept sorted for a binary search of the tightest fit.
    let mut free: Vec<(usize, usize)> = Vec::new();
    for s in seqs {
        let pos = free.partition_point(|&(f, _)| f < s.len());
        if pos < free.len() {
            let (f, r) = free.remove(pos);
            rows[r].ids.extend_from_slice(&s.ids);
            rows[r].targets.extend_from_slice(&s.targets);
            let left = f - s.len();
            let at = free.partition_point(|&x| x < (left, r));
            free.insert(at, (left, r));
        } else {
            let left = max_len - s.len();
            rows.push(s);
            let r = rows.len() - 1;
            let at = free.partition_point(|&x| x < (left, r));
            free.insert(at, (left, r));
        }
    }
    rows
}

/// Summed negative log-likelihood of the target tokens. Only the target positions go through the LM
/// head (the prompt's and padding's logits are never computed), and log-probabilities come from the
/// fused op that never materialises a full log-softmax.
pub struct SftObjective {
    /// The model as trained (LoRA dropout on) and as saved (off).
    policy: DropoutPolicy,
    pad_id: u32,
}

impl SftObjective {
    /// `model` must already carry its trainable `Var`s (full fine-tuning or LoRA).
    pub fn new(model: Transformer, pad_id: u32) -> Self {
        SftObjective {
            policy: DropoutPolicy::new(model),
            pad_id,
        }
    }

    /// The trained model with dropout off (what to save or evaluate).
    pub fn model(&self) -> &Transformer {
        self.policy.model()
    }
}

impl Objective for SftObjective {
    type Example = SftSequence;

    fn name(&self) -> &str {
        "sft"
    }

    fn loss(&mut self, batch: &[&SftSequence], ctx: &mut StepContext<'_>) -> Result<LossOutput> {
        let model = self.policy.for_step(ctx);
        let device = model.device().clone();
        let mut positions = Vec::with_capacity(batch.len());
        let mut labels = Vec::new();
        for s in batch {
            let mut pos = Vec::new();
            for j in 1..s.len() {
                if s.targets[j] {
                    pos.push(j - 1);
                    labels.push(s.ids[j]);
                }
            }
            positions.push(pos);
        }
        let n = labels.len();
        let tokens = batch.iter().map(|s| s.len()).sum();
        if n == 0 {
            return Ok(LossOutput {
                loss_sum: Tensor::zeros((), model.dtype(), &device)?,
                weight: 0.0,
                tokens,
                metrics: vec![],
            });
        }
        let seqs: Vec<&[u32]> = batch.iter().map(|s| s.ids.as_slice()).collect();
        let lp = model.label_logprobs_at(&seqs, &positions, labels, self.pad_id, 1.0)?;
        let loss_sum = lp.sum_all()?.neg()?;
        Ok(LossOutput {
            loss_sum,
            weight: n as f64,
            tokens,
            metrics: vec![],
        })
    }
}
