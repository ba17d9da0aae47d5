//! Prefill throughput of a model (default SmolLM2-135M): batch B x T tokens, f32, the LM head at the
//! last position only (what generation needs). Prints one JSON line. Used by scripts/bench/prefill.sh.
//!
//! cargo run --release -p tempering-model --example bench_prefill -- [MODEL] [--batch 8] [--len 128] [--iters 5]

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tempering_model::{ModelFiles, TokenLayout};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let model_path = match args.first().filter(|a| !a.starts_with("--")) {
        Some(p) => std::path::PathBuf::from(p),
        None => tempering_model::known::smollm2_gguf()
            .ok_or("SmolLM2 not found: run scripts/fetch-smollm2.sh")?,
    };
    let (b, t, iters) = (flag("--batch", 8), flag("--len", 128), flag("--iters", 5));
    let files = ModelFiles::open(&model_path, DType::F32, &Device::Cpu)?;
    let model = files.transformer()?;
    let vocab = files.config.vocab_size as u32;
    // Deterministic pseudo-random ids.
    let ids: Vec<u32> = (0..b * t)
        .map(|i| ((i as u64 * 2654435761) % vocab as u64) as u32)
        .collect();
    let input = Tensor::from_vec(ids, (b, t), &Device::Cpu)?;
    let layout = TokenLayout::contiguous(b, t, 0);
    let run = || -> Result<Vec<f64>, candle_core::Error> {
        let _ = model.forward_last(&input, &layout, None); // warm-up
        let mut times = Vec::new();
        for _ in 0..iters {
            let start = Instant::now();
            let out = model
                .forward_last(&input, &layout, None)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            out.to_vec2::<f32>()?;
            times.push(start.elapsed().as_secs_f64());
        }
        Ok(times)
    };
    // `IN_POOL=1`: on a rayon worker, as `temper` runs its main thread.
    let mut times = if std::env::var_os("IN_POOL").is_some() {
        let mut res = None;
        rayon::scope(|s| s.spawn(|_| res = Some(run())));
        res.ok_or("no result")??
    } else {
        run()?
    };
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"system\": \"tempering\", \"batch\": {b}, \"len\": {t}, \"median_s\": {median:.4}, \"tokens_per_s\": {:.1}, \"threads\": {}}}",
        (b * t) as f64 / median,
        candle_core::utils::get_num_threads()
    );
    Ok(())
}
