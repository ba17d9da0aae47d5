//! `temper generate`: complete one prompt (`--prompt`) or a JSONL file of prompts (`--input`,
//! `--output`), with the local generation engine or a remote server (`--backend`). Parses flags and
//! files, shows progress, writes results; the backend does the rest.

use super::model_arg::ModelPath;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use tempering_generate::{
    render_chat, Completion, EngineOptions, GenError, GenEvent, GenRequest, LocalEngine,
    SamplingParams,
};
use tempering_model::{ChatMessage, ChatTemplate, InferenceWeights, ModelFiles, Tokenizer};

use crate::commands::backend_flags::{open_generator, BackendFlags, Opened};
use crate::commands::model::DeviceArgs;
use crate::device::device_and_dtype;

/// Sampling flags shared by `generate` and `chat`.
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// Most new tokens per completion.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy [default: 1; `temper chat`: the model's
    /// generation_config.json, else 1].
    #[arg(long, allow_hyphen_values = true)]
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0: all) [default: 0; `temper chat`: the model's
    /// generation_config.json, else 0].
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1]
    /// [default: 1; `temper chat`: the model's generation_config.json, else 1].
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than this fraction of the most likely one, in [0, 1] [default: 0;
    /// `temper chat`: the model's generation_config.json, else 0].
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Stop when the text contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The flags as given, OpenAI's defaults for the rest (temperature 1, no filters).
    pub fn params(&self) -> SamplingParams {
        self.params_over(&GenDefaults::default())
    }

    /// The flags as given, `defaults` (a model's generation config) for the rest, then OpenAI's.
    pub fn params_over(&self, defaults: &GenDefaults) -> SamplingParams {
        SamplingParams {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature.or(defaults.temperature).unwrap_or(1.0),
            top_k: self.top_k.or(defaults.top_k).unwrap_or(0),
            top_p: self.top_p.or(defaults.top_p).unwrap_or(1.0),
            min_p: self.min_p.or(defaults.min_p).unwrap_or(0.0),
            seed: self.seed,
            stop: self.stop.clone(),
            ..Default::default()
        }
    }
}

/// Sampling defaults from a model's `generation_config.json`, as vLLM takes them: `temperature`,
/// `top_p`, `top_k` and `min_p` where present and in range (`do_sample` is not read, as in vLLM).
/// A request's or a flag's own value wins; OpenAI's defaults fill what neither sets.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
}

impl GenDefaults {
    pub fn from_config(config: Option<&Value>) -> Self {
        let Some(c) = config else {
            return GenDefaults::default();
        };
        let num = |k: &str| c.get(k).and_then(|v| v.as_f64()).filter(|x| x.is_finite());
        GenDefaults {
            temperature: num("temperature").filter(|&t| t >= 0.0).map(|t| t as f32),
            top_p: num("top_p")
                .filter(|&p| p > 0.0 && p <= 1.0)
                .map(|p| p as f32),
            top_k: c.get("top_k").and_then(|v| v.as_u64()).map(|k| k as usize),
            min_p: num("min_p")
                .filter(|&p| (0.0..=1.0).contains(&p))
                .map(|p| p as f32),
        }
    }

    /// What a start-up line says about them.
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(t) = self.temperature {
            parts.push(format!("temperature {t}"));
        }
        if let Some(p) = self.top_p {
            parts.push(format!("top_p {p}"));
        }
        if let Some(k) = self.top_k {
            parts.push(format!("top_k {k}"));
        }
        if let Some(p) = self.min_p {
            parts.push(format!("min_p {p}"));
        }
        if parts.is_empty() {
            "temperature 1, top_p 1 (the model's generation_config.json sets none)".into()
        } else {
            format!(
                "{} from the model's generation_config.json (the rest as OpenAI's)",
                parts.join(", ")
            )
        }
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelPath,
    /// A PEFT LoRA adapter directory to run on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// The prompt to complete.
    #[arg(long, required_unless_present = "input", conflicts_with = "input")]
    pub prompt: Option<String>,
    /// A JSONL file of prompts: each line has `prompt` (text) or `messages` (a chat).
    #[arg(long, requires = "output")]
    pub input: Option<PathBuf>,
    /// Where to write one JSON line per input line (lines are flushed as they finish).
    #[arg(long, requires = "input")]
    pub output: Option<PathBuf>,
    /// Completions per prompt (they share one prefill).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Include each token's log-probability.
    #[arg(long)]
    pub logprobs: bool,
    /// Also include this many most likely alternatives per token.
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    /// Apply the model's chat template (a `prompt` becomes one user message).
    #[arg(long)]
    pub chat: bool,
    /// Print one JSON object (single prompt).
    #[arg(long)]
    pub json: bool,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    pub batch_rows: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub backend: BackendFlags,
}

/// The sampling flags' ranges, checked before the (slow) model load, named as flags.
pub fn check_flags(params: &SamplingParams) -> Result<()> {
    match params.validate(0) {
        Err(GenError::InvalidParam {
            field,
            got,
            expected,
            ..
        }) => bail!(
            "--{}: got {got}, expected {expected}",
            field.replace('_', "-")
        ),
        other => Ok(other?),
    }
}

/// The engine for a model path, with its chat template.
pub fn load_engine(
    model: &Path,
    adapter: Option<&Path>,
    device: &DeviceArgs,
    batch_rows: usize,
) -> Result<(LocalEngine, Option<ChatTemplate>)> {
    load_engine_with_config(model, adapter, device, batch_rows).map(|(e, t, _)| (e, t))
}

/// [`load_engine`], also returning the model's `generation_config.json` (if it has one).
pub fn load_engine_with_config(
    model: &Path,
    adapter: Option<&Path>,
    device: &DeviceArgs,
    batch_rows: usize,
) -> Result<(LocalEngine, Option<ChatTemplate>, Option<Value>)> {
    // Q8_0 is an inference format of our own making: the model loads in f32, then quantizes.
    let q8 = device.dtype.as_deref() == Some("q8_0");
    let asked = if q8 {
        Some("f32")
    } else {
        device.dtype.as_deref()
    };
    let (dev, dtype) = device_and_dtype(&device.device, asked)?;
    if q8 && !dev.is_cpu() {
        bail!(
            "--dtype q8_0: for inference on the CPU only (--device {})",
            device.device
        );
    }
    // On the CPU, bf16 means bf16 matrices beside f32 activations (as llama.cpp runs a bf16
    // GGUF): decode streams half the bytes, and only the weights' rounding changes results. The
    // weights load in bf16 (never all in f32 at once), then the norms widen.
    let stored = match (q8, dev.is_cpu() && dtype == DType::BF16) {
        (true, _) => Some(InferenceWeights::Q8_0),
        (false, true) => Some(InferenceWeights::Bf16),
        (false, false) => None,
    };
    let files = ModelFiles::open(model, dtype, &dev)
        .with_context(|| format!("loading {}", model.display()))?;
    let tok = files.require_tokenizer()?.clone();
    let mut transformer = files.transformer()?;
    let ModelFiles {
        chat_template,
        generation_config,
        ..
    } = files;
    if let Some(kind) = stored {
        let flag = if q8 { "--dtype q8_0" } else { "--dtype bf16" };
        transformer.store_inference_weights(kind).context(flag)?;
        tracing::info!("{flag}: projection and LM head weights as {kind:?}, activations in f32");
        if !tempering_model::ops::few_rows::available() {
            tracing::warn!(
                "{flag}: this CPU lacks AVX-512 (F, VL and BW), so every product widens its matrix \
                 to f32 first: slower than --dtype f32"
            );
        }
    }
    if let Some(dir) = adapter {
        transformer
            .apply_peft(dir)
            .with_context(|| format!("--adapter {}", dir.display()))?;
    }
    if batch_rows == 0 {
        bail!("--batch-rows: expected at least 1");
    }
    let engine = LocalEngine::new(transformer, tok).with_options(EngineOptions {
        max_batch_rows: batch_rows,
    });
    Ok((engine, chat_template, generation_config))
}

/// Prompt ids for plain text (with the model's BOS rule) or for a chat (the template writes any
/// special tokens itself, so none are added, as transformers' `apply_chat_template` does).
fn prompt_ids(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    text: Option<&str>,
    messages: Option<Vec<ChatMessage>>,
    chat: bool,
) -> Result<Vec<u32>> {
    let messages = match (messages, text) {
        (Some(m), _) => Some(m),
        (None, Some(t)) if chat => Some(vec![ChatMessage::new("user", t)]),
        (None, Some(t)) => return Ok(tok.encode(t, true)?),
        (None, None) => bail!("expected a `prompt` or `messages` field"),
    };
    let template = template.context("--chat (or a `messages` field) needs a chat template")?;
    let text = render_chat(template, &messages.unwrap_or_default(), true)?;
    Ok(tok.encode(&text, false)?)
}

fn completion_json(c: &Completion) -> Value {
    let mut v = json!({
        "text": c.text,
        "tokens": c.tokens,
        "finish_reason": c.finish_reason.as_str(),
    });
    if let Some(s) = &c.stop_string {
        v["stop_string"] = json!(s);
    }
    if let Some(l) = &c.logprobs {
        v["logprobs"] = json!(l);
    }
    if let Some(t) = &c.top_logprobs {
        v["top_logprobs"] = json!(t
            .iter()
            .map(|step| step
                .iter()
                .map(|a| json!({"token": a.token, "logprob": a.logprob}))
                .collect::<Vec<_>>())
            .collect::<Vec<_>>());
    }
    v
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let mut params = a.sampling.params();
    params.logprobs = a.logprobs;
    params.top_logprobs = a.top_logprobs;
    // Check the flags before the (slow) model load.
    check_flags(&params)?;
    if a.n == 0 {
        bail!("--n: expected at least 1");
    }
    let opened = open_generator(
        a.model.path(),
        a.adapter.as_deref(),
        &a.device,
        a.batch_rows,
        &a.backend,
    )?;
    match (&a.prompt, &a.input, &a.output) {
        (Some(p), _, _) => single(&opened, &a, p, params),
        (None, Some(i), Some(o)) => file(&opened, &a, i, o, params),
        _ => bail!("give --prompt, or --input with --output"),
    }
}

fn single(opened: &Opened, a: &GenerateArgs, prompt: &str, params: SamplingParams) -> Result<()> {
    let tok = opened.generator.tokenizer();
    let ids = prompt_ids(tok, opened.template.as_ref(), Some(prompt), None, a.chat)
        .context("--prompt")?;
    let req = GenRequest::new(ids.clone(), a.n, params);
    let stream = !a.json && a.n == 1;
    let mut stdout = std::io::stdout();
    let out = opened
        .generator
        .backend()
        .generate_with(&[req], &mut |ev| {
            if let (true, GenEvent::Token { text, .. }) = (stream, ev) {
                // A closed stdout only loses the display; the result still comes back.
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        })
        .context("--prompt")?
        .remove(0);
    if a.json {
        let v = json!({
            "prompt": prompt,
            "prompt_tokens": ids,
            "completions": out.iter().map(completion_json).collect::<Vec<_>>(),
        });
        writeln!(stdout, "{}", serde_json::to_string(&v)?)?;
    } else if stream {
        writeln!(stdout)?;
        eprintln!("[finish: {}]", out[0].finish_reason.as_str());
    } else {
        for (j, c) in out.iter().enumerate() {
            writeln!(stdout, "--- sample {j} ({}) ---", c.finish_reason.as_str())?;
            writeln!(stdout, "{}", c.text)?;
        }
    }
    Ok(())
}

/// One input line, read.
struct Line {
    number: usize,
    record: Value,
    ids: Vec<u32>,
}

fn read_lines(
    tok: &Tokenizer,
    template: Option<&ChatTemplate>,
    path: &Path,
    chat: bool,
) -> Result<Vec<Line>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in BufReader::new(f).lines().enumerate() {
        let at = || format!("{} line {}", path.display(), i + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(&line).with_context(at)?;
        let text = record.get("prompt").and_then(|v| v.as_str());
        let messages = match record
            .get("messages")
            .or(record.get("prompt").filter(|v| v.is_array()))
        {
            Some(m) => Some(
                serde_json::from_value::<Vec<ChatMessage>>(m.clone()).with_context(|| {
                    format!("{}: `messages`: expected a list of {{role, content}}", at())
                })?,
            ),
            None => None,
        };
        let ids = prompt_ids(tok, template, text, messages, chat).with_context(at)?;
        lines.push(Line {
            number: i + 1,
            record,
            ids,
        });
    }
    Ok(lines)
}

fn file(
    opened: &Opened,
    a: &GenerateArgs,
    input: &Path,
    output: &Path,
    params: SamplingParams,
) -> Result<()> {
    let backend = opened.generator.backend();
    let lines = read_lines(
        opened.generator.tokenizer(),
        opened.template.as_ref(),
        input,
        a.chat,
    )?;
    let reqs: Vec<GenRequest> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            // Each line its own stream, so equal prompts on two lines give different samples.
            let p = SamplingParams {
                seed: params.seed.wrapping_add(i as u64),
                ..params.clone()
            };
            GenRequest::new(l.ids.clone(), a.n, p)
        })
        .collect();
    // Every line is checked before any compute, and a bad one is named by its line number.
    let (context, vocab) = (opened.context, opened.vocab);
    for (r, l) in reqs.iter().zip(&lines) {
        r.validate(0, context, vocab).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.strip_prefix("request 0: ").unwrap_or(&msg).to_string();
            anyhow::anyhow!("{} line {}: {msg}", input.display(), l.number)
        })?;
    }
    let mut out = File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let bar = ProgressBar::new(reqs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} prompts  {msg}  [{elapsed} < {eta}]")
            .context("progress style")?,
    );
    let start = Instant::now();
    let mut new_tokens = 0usize;
    // Chunks of about one batch, so finished lines reach the file (and survive Ctrl-C) early.
    let per_chunk = (a.batch_rows / a.n).max(1);
    for (c, chunk) in reqs.chunks(per_chunk).enumerate() {
        let base = c * per_chunk;
        let results = backend
            .generate_with(chunk, &mut |ev| {
                if let GenEvent::Token { .. } = ev {
                    new_tokens += 1;
                    if new_tokens.is_multiple_of(16) {
                        let rate = new_tokens as f64 / start.elapsed().as_secs_f64();
                        bar.set_message(format!("{new_tokens} tokens, {rate:.1} tok/s"));
                    }
                }
            })
            .map_err(|e| {
                // The engine names requests by their index in the chunk; the user knows lines.
                anyhow::anyhow!("{}: prompt {} onwards: {e}", input.display(), base + 1)
            })?;
        for (k, comps) in results.iter().enumerate() {
            let line = &lines[base + k];
            let mut v = json!({"index": base + k});
            if let Some(id) = line.record.get("id") {
                v["id"] = id.clone();
            }
            v["prompt"] = line
                .record
                .get("prompt")
                .or(line.record.get("messages"))
                .cloned()
                .unwrap_or(Value::Null);
            v["completions"] = json!(comps.iter().map(completion_json).collect::<Vec<_>>());
            let mut s = serde_json::to_string(&v)?;
            s.push('\n');
            out.write_all(s.as_bytes())
                .and_then(|_| out.flush())
                .with_context(|| format!("writing {}", output.display()))?;
            bar.inc(1);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    bar.finish_with_message(format!(
        "{new_tokens} tokens in {secs:.1}s, {:.1} tok/s",
        new_tokens as f64 / secs
    ));
    eprintln!("wrote {} lines to {}", reqs.len(), output.display());
    Ok(())
}
