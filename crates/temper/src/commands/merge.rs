//! `temper merge BASE ADAPTER OUT`: folds a PEFT LoRA adapter into its base model and writes the
//! merged model as an HF directory, with the base's tokenizer and chat template. The maths lives in
//! `tempering_model::lora`; this command only wires files together.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use tempering_model::loader::save_hf_dir;
use tempering_model::ModelFiles;

use crate::commands::model::{check_output_dir, disk_dtype};

#[derive(Args)]
pub struct MergeArgs {
    /// The base model: an HF directory or a GGUF file.
    pub base: PathBuf,
    /// The PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors).
    pub adapter: PathBuf,
    /// The HF model directory to write.
    pub output: PathBuf,
    /// Weight dtype on disk: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Write into an existing non-empty directory.
    #[arg(long)]
    pub force: bool,
}

pub fn merge(a: MergeArgs) -> Result<()> {
    let dtype = disk_dtype(&a.dtype)?;
    let same = |p: &PathBuf| std::fs::canonicalize(p).ok() == std::fs::canonicalize(&a.output).ok();
    if a.output.exists() && (same(&a.base) || same(&a.adapter)) {
        bail!(
            "{}: the output must differ from the base model and the adapter",
            a.output.display()
        );
    }
    check_output_dir(&a.output, a.force)?;
    // Merging runs in f32 whatever the stored dtype; `--dtype` only sets what is written.
    let files = ModelFiles::open(&a.base, DType::F32, &Device::Cpu)
        .with_context(|| format!("loading {}", a.base.display()))?;
    let mut model = files.transformer()?;
    let adapter = tempering_model::load_peft(&a.adapter)
        .with_context(|| format!("loading adapter {}", a.adapter.display()))?;
    model
        .apply_adapter(&adapter)
        .with_context(|| format!("applying {} to {}", a.adapter.display(), a.base.display()))?;
    let merged = model.merge_lora()?;
    save_hf_dir(
        &a.output,
        &merged,
        files.tokenizer.as_ref(),
        files.chat_template.as_ref(),
        dtype,
    )
    .with_context(|| format!("writing {}", a.output.display()))?;
    let c = &adapter.config;
    println!(
        "wrote {} ({} + LoRA r {} alpha {} on {}, {})",
        a.output.display(),
        a.base.display(),
        c.r,
        c.alpha,
        c.targets
            .iter()
            .map(|t| t.module_name())
            .collect::<Vec<_>>()
            .join(","),
        a.dtype
    );
    Ok(())
}
