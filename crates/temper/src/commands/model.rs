//! Model-level commands: `inspect`, `convert`, `logits` and `tokenize`.

use super::model_arg::ModelPath;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use serde_json::json;
use tempering_model::loader::save_hf_dir;
use tempering_model::{ModelFiles, ModelFormat, ModelInfo};

use crate::device::device_and_dtype;

/// Where and how to run a model.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32 (default on CPU), bf16 (default on CUDA) or f16. For inference on the CPU
    /// (generate, chat, search, eval, serve), bf16 stores the projection weights in bf16 and keeps
    /// activations in f32: decode streams half the bytes; q8_0 (inference on the CPU only) stores
    /// them as Q8_0 (a byte per weight, a scale per 32): about a quarter.
    #[arg(long)]
    pub dtype: Option<String>,
}

#[derive(Args)]
pub struct InspectArgs {
    /// An HF model directory or a GGUF file.
    pub path: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The GGUF file (or HF directory) to convert.
    pub input: PathBuf,
    /// The HF model directory to write.
    pub output: PathBuf,
    /// Weight dtype on disk: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Write into an existing non-empty directory.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelPath,
    #[arg(long)]
    pub prompt: String,
    /// How many top next tokens to print.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    /// Render the prompt as one user message with the chat template first.
    #[arg(long)]
    pub chat: bool,
    #[arg(long)]
    pub json: bool,
    /// A PEFT LoRA adapter directory to run on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelPath,
    #[arg(long)]
    pub text: String,
    /// Add the model's BOS/EOS rules (special tokens written in the text are parsed either way).
    #[arg(long)]
    pub add_special_tokens: bool,
    #[arg(long)]
    pub json: bool,
}

fn human(n: usize) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// Groups tensor names by replacing the layer number with `*`.
fn tensor_groups(info: &ModelInfo) -> BTreeMap<(String, String), (Vec<usize>, usize)> {
    let mut groups: BTreeMap<(String, String), (Vec<usize>, usize)> = BTreeMap::new();
    for t in &info.stored {
        let parts: Vec<&str> = t.name.split('.').collect();
        let name = parts
            .iter()
            .map(|p| if p.parse::<usize>().is_ok() { "*" } else { p })
            .collect::<Vec<_>>()
            .join(".");
        let e = groups
            .entry((name, t.storage.clone()))
            .or_insert((t.shape.clone(), 0));
        e.1 += 1;
    }
    groups
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let info =
        ModelInfo::read(&a.path).with_context(|| format!("inspecting {}", a.path.display()))?;
    let c = &info.config;
    let groups = tensor_groups(&info);
    let stored_params: usize = info
        .stored
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let format = match info.format {
        ModelFormat::HfDir => "HF directory (safetensors)",
        ModelFormat::Gguf => "GGUF",
    };
    let tok = info.tokenizer.as_ref();
    if a.json {
        let v = json!({
            "path": a.path,
            "format": format,
            "architecture": c.architecture.model_type(),
            "parameters": stored_params,
            "config": c.to_hf_json("float32"),
            "tensor_groups": groups.iter().map(|((n, s), (shape, count))| json!({
                "name": n, "storage": s, "shape": shape, "count": count})).collect::<Vec<_>>(),
            "tokenizer": tok.map(|t| json!({
                "kind": t.kind(),
                "vocab_size": t.vocab_size(),
                "bos": t.bos_token(), "eos": t.eos_token(), "pad": t.pad_token(),
                "special_tokens": t.special_tokens(),
                "stop_token_ids": t.stop_token_ids(),
            })),
            "chat_template": info.chat_template.as_ref().map(|t| t.source()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("path:          {}", a.path.display());
    println!("format:        {format}");
    println!(
        "architecture:  {} ({})",
        c.architecture.model_type(),
        c.architecture.hf_class()
    );
    println!("parameters:    {} ({stored_params})", human(stored_params));
    println!(
        "layers:        {}  hidden {}  intermediate {}  vocab {}",
        c.num_layers, c.hidden_size, c.intermediate_size, c.vocab_size
    );
    println!(
        "attention:     {} heads, {} KV heads (GQA x{}), head dim {}{}{}",
        c.num_heads,
        c.num_kv_heads,
        c.num_heads / c.num_kv_heads,
        c.head_dim,
        if c.attention_bias { ", qkv bias" } else { "" },
        c.sliding_window
            .map(|w| format!(", sliding window {w}"))
            .unwrap_or_default()
    );
    println!(
        "positions:     context {}, RoPE theta {}{}",
        c.max_position_embeddings,
        c.rope_theta,
        match &c.rope_scaling {
            None => String::new(),
            Some(s) => format!(", scaling {s:?}"),
        }
    );
    println!("norm:          RMSNorm eps {}", c.rms_norm_eps);
    println!(
        "embeddings:    {}",
        if c.tie_word_embeddings {
            "tied to the LM head"
        } else {
            "separate LM head"
        }
    );
    println!("tensors:");
    for ((name, storage), (shape, count)) in &groups {
        let times = if *count > 1 {
            format!(" x{count}")
        } else {
            String::new()
        };
        println!("  {name:<48} {storage:<6} {shape:?}{times}");
    }
    match tok {
        None => println!("tokenizer:     none (no tokenizer.json)"),
        Some(t) => {
            println!("tokenizer:     {}", t.kind());
            let show = |x: Option<(u32, String)>| {
                x.map(|(i, s)| format!("{s:?} ({i})"))
                    .unwrap_or_else(|| "none".into())
            };
            println!(
                "               bos {}  eos {}  pad {}",
                show(t.bos_token()),
                show(t.eos_token()),
                show(t.pad_token())
            );
            let specials: Vec<String> = t
                .special_tokens()
                .into_iter()
                .take(24)
                .map(|(i, s)| format!("{s}={i}"))
                .collect();
            println!("               special tokens: {}", specials.join(" "));
            println!("               stop token ids: {:?}", t.stop_token_ids());
        }
    }
    match &info.chat_template {
        None => println!("chat template: none"),
        Some(t) => {
            println!("chat template:");
            for line in t.source().lines() {
                println!("  | {line}");
            }
        }
    }
    Ok(())
}

/// The on-disk weight dtype named by `--dtype`.
pub fn disk_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("--dtype {other}: expected f32, bf16 or f16"),
    })
}

/// Refuses to write a model into a non-empty directory unless `--force` was given.
pub fn check_output_dir(out: &Path, force: bool) -> Result<()> {
    if out.exists() {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some();
        if non_empty && !force {
            bail!(
                "{}: directory exists and is not empty (pass --force to write into it)",
                out.display()
            );
        }
    }
    Ok(())
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let dtype = disk_dtype(&a.dtype)?;
    check_output_dir(&a.output, a.force)?;
    let files = ModelFiles::open(&a.input, DType::F32, &candle_core::Device::Cpu)
        .with_context(|| format!("reading {}", a.input.display()))?;
    let model = files.transformer()?;
    save_hf_dir(
        &a.output,
        &model,
        files.tokenizer.as_ref(),
        files.chat_template.as_ref(),
        dtype,
    )
    .with_context(|| format!("writing {}", a.output.display()))?;
    println!(
        "wrote {} ({} {}, {} tensors, {})",
        a.output.display(),
        model.config.architecture.model_type(),
        human(model.config.num_parameters()),
        model.named_tensors().len(),
        a.dtype
    );
    Ok(())
}

pub fn logits(a: LogitsArgs) -> Result<()> {
    let (device, dtype) = device_and_dtype(&a.device.device, a.device.dtype.as_deref())?;
    let files = ModelFiles::open(a.model.path(), dtype, &device)
        .with_context(|| format!("loading {}", a.model.path().display()))?;
    let tok = files.require_tokenizer()?;
    let text = if a.chat {
        let t = files.chat_template.as_ref().with_context(|| {
            format!("{}: --chat needs a chat template", a.model.path().display())
        })?;
        t.render(
            &[tempering_model::ChatMessage {
                role: "user".into(),
                content: a.prompt.clone(),
            }],
            true,
        )?
    } else {
        a.prompt.clone()
    };
    let ids = tok.encode(&text, true)?;
    if ids.is_empty() {
        bail!("--prompt: the prompt encodes to no tokens");
    }
    if ids.len() > files.config.max_position_embeddings {
        bail!(
            "--prompt: {} tokens is longer than the model's context of {}",
            ids.len(),
            files.config.max_position_embeddings
        );
    }
    let mut model = files.transformer()?;
    if let Some(dir) = &a.adapter {
        model
            .apply_peft(dir)
            .with_context(|| format!("--adapter {}", dir.display()))?;
    }
    let input = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?;
    let last = model
        .forward_last(
            &input,
            &tempering_model::TokenLayout::contiguous(1, ids.len(), 0),
            None,
        )?
        .squeeze(0)?
        .to_dtype(DType::F32)?
        .to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..last.len()).collect();
    order.sort_by(|&x, &y| last[y].total_cmp(&last[x]));
    let top: Vec<_> = order
        .iter()
        .take(a.top)
        .map(|&i| (i as u32, last[i]))
        .collect();
    if a.json {
        let v = json!({
            "ids": ids,
            "top": top.iter().map(|(id, l)| json!({"id": id, "token": tok.piece_text(*id), "logit": l})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("ids ({}): {:?}", ids.len(), ids);
        println!("top {} next tokens:", top.len());
        for (rank, (id, l)) in top.iter().enumerate() {
            println!(
                "  {:>2}. {:>6} {:<20} {:>10.4}",
                rank + 1,
                id,
                format!("{:?}", tok.piece_text(*id)),
                l
            );
        }
    }
    Ok(())
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let info = ModelInfo::read(a.model.path())
        .with_context(|| format!("loading {}", a.model.path().display()))?;
    let tok = info.require_tokenizer()?;
    let ids = tok.encode(&a.text, a.add_special_tokens)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| tok.id_to_piece(i).unwrap_or_default())
        .collect();
    if a.json {
        println!(
            "{}",
            serde_json::to_string(&json!({"ids": ids, "tokens": pieces}))?
        );
    } else {
        println!("{} tokens", ids.len());
        for (i, p) in ids.iter().zip(&pieces) {
            println!("{i:>8}  {p:?}");
        }
    }
    Ok(())
}
