//! Benchmark of the local engine's decode throughput (used by `scripts/bench/generate.sh`): greedy,
//! EOS ignored, on the first `BATCH` prompts of a prompt file (one per line, `\n` escaped), printing
//! one JSON line with new tokens/s, time to first token and peak resident memory.
//!
//! Usage: cargo run --example generate_bench -- MODEL PROMPTS BATCH NEW_TOKENS

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use tempering_generate::{
    Backend, EngineOptions, GenEvent, GenRequest, LocalEngine, SamplingParams,
};
use tempering_model::ModelFiles;

// The same allocator as the `temper` binary: candle allocates a buffer per op.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, prompts, batch, new_tokens] = args.as_slice() else {
        anyhow::bail!("usage: generate_bench MODEL PROMPTS BATCH NEW_TOKENS");
    };
    let batch: usize = batch.parse().context("BATCH")?;
    let new_tokens: usize = new_tokens.parse().context("NEW_TOKENS")?;
    // BF16=1: the matrices in bf16, activations in f32 (what `--dtype bf16` does on the CPU);
    // Q8=1: the matrices in Q8_0 (`--dtype q8_0`).
    let bf16 = std::env::var_os("BF16").is_some();
    let q8 = std::env::var_os("Q8").is_some();
    let dtype = if bf16 { DType::BF16 } else { DType::F32 };
    let files = ModelFiles::open(model.as_ref(), dtype, &Device::Cpu)?;
    let tok = files.tokenizer.clone().context("tokenizer")?;
    let mut transformer = files.transformer()?;
    // As `temper` does: the loaded weights go before the matrices are stored compactly.
    drop(files);
    if bf16 {
        transformer.store_inference_weights(tempering_model::InferenceWeights::Bf16)?;
    } else if q8 {
        transformer.store_inference_weights(tempering_model::InferenceWeights::Q8_0)?;
    }
    let engine = LocalEngine::new(transformer, tok).with_options(EngineOptions {
        max_batch_rows: batch,
    });
    let text = std::fs::read_to_string(prompts).context("PROMPTS")?;
    // `SAMPLES=N`: batch / N prompts, N samples each at temperature 1 with their logprobs (an RL
    // rollout's shape, the prompts' prefill shared); otherwise one greedy sample a prompt.
    let samples: usize = match std::env::var("SAMPLES") {
        Ok(v) => v.parse().context("SAMPLES")?,
        Err(_) => 1,
    };
    anyhow::ensure!(
        samples >= 1 && batch.is_multiple_of(samples),
        "SAMPLES must divide BATCH"
    );
    let params = if samples > 1 {
        SamplingParams {
            temperature: 1.0,
            logprobs: true,
            seed: 1,
            max_new_tokens: new_tokens,
            ignore_eos: true,
            ..SamplingParams::default()
        }
    } else {
        SamplingParams {
            ignore_eos: true,
            ..SamplingParams::greedy(new_tokens)
        }
    };
    let reqs: Vec<GenRequest> = text
        .lines()
        .take(batch / samples)
        .map(|l| {
            Ok(GenRequest::new(
                engine.encode(&l.replace("\\n", "\n"))?,
                samples,
                params.clone(),
            ))
        })
        .collect::<Result<_>>()?;
    anyhow::ensure!(
        reqs.len() * samples == batch,
        "the prompt file has fewer than {} lines",
        batch / samples
    );
    // Warm-up: one short run, so first-touch page faults do not count.
    engine.generate(&[GenRequest::new(
        reqs[0].prompt.clone(),
        1,
        SamplingParams::greedy(2),
    )])?;
    let start = Instant::now();
    let mut first = None;
    let mut run = || {
        engine.generate_with(&reqs, &mut |ev| {
            if let (None, GenEvent::Token { .. }) = (first, ev) {
                first = Some(start.elapsed().as_secs_f64());
            }
        })
    };
    let out = if std::env::var_os("IN_POOL").is_some() {
        let mut res = None;
        rayon::scope(|s| s.spawn(|_| res = Some(run())));
        res.context("no result")??
    } else {
        run()?
    };
    let total = start.elapsed().as_secs_f64();
    let n: usize = out.iter().flatten().map(|c| c.tokens.len()).sum();
    let ttft = first.unwrap_or(total);
    println!(
        "{}",
        serde_json::json!({
            "engine": if bf16 { "tempering-bf16" } else if q8 { "tempering-q8_0" } else { "tempering" },
            "batch": batch,
            "new_tokens": n,
            "seconds": total,
            "tokens_per_s": n as f64 / total,
            "decode_tokens_per_s": (n - batch) as f64 / (total - ttft),
            "ttft_s": ttft,
            "peak_rss_mib": peak_rss_mib(),
            "first_tokens": out[0][0].tokens.iter().take(8).collect::<Vec<_>>(),
        })
    );
    Ok(())
}
