//! Where a training step's time goes on SmolLM2-135M (batch 4 x 128, f32): forward, backward and
//! the optimiser, timed separately for full fine-tuning and LoRA r=8 on q,v. Skips when the model
//! file is absent. `cargo run -p tempering-train --example train_step` (dev profile, optimised)

use std::time::Instant;

use candle_core::{DType, Device};
use tempering_model::{known, LoraConfig, LoraTarget, ModelFiles};
use tempering_train::objective::{Mode, StepContext};
use tempering_train::{AdamW, AdamWConfig, Objective, Rng, SftObjective, SftSequence};

fn main() {
    let Some(path) = known::smollm2_or_skip("train_step bench") else {
        return;
    };
    let files = ModelFiles::open(&path, DType::F32, &Device::Cpu).expect("model");
    let (b, t) = (4, 128);
    let seqs: Vec<SftSequence> = (0..b)
        .map(|i| SftSequence {
            ids: (0..t)
                .map(|j| ((i * 7919 + j * 104729) % 49000) as u32 + 1)
                .collect(),
            targets: (0..t).map(|j| j > 0).collect(),
        })
        .collect();
    let batch: Vec<&SftSequence> = seqs.iter().collect();
    for mode in ["full", "lora"] {
        let mut model = files.transformer().expect("transformer");
        let vars = if mode == "full" {
            model.make_trainable(|_| true).expect("vars")
        } else {
            let cfg = LoraConfig::new(8, 16.0, 0.05, vec![LoraTarget::Q, LoraTarget::V]);
            model.add_lora(&cfg, 0).expect("lora")
        };
        let mut opt = AdamW::new(vars.clone(), AdamWConfig::default()).expect("opt");
        let mut obj = SftObjective::new(model, 0);
        let mut rng = Rng::new(0);
        for step in 0..4 {
            let t0 = Instant::now();
            let mut ctx = StepContext {
                mode: Mode::Train,
                step,
                rng: &mut rng,
            };
            let out = obj.loss(&batch, &mut ctx).expect("loss");
            let t1 = Instant::now();
            let mut grads = out.loss_sum.backward().expect("backward");
            let t2 = Instant::now();
            let g: Vec<_> = vars
                .iter()
                .map(|(_, v)| grads.remove(v.as_tensor()))
                .collect();
            opt.step(&g, 1e-5, 1.0 / out.weight).expect("step");
            drop(g);
            let t3 = Instant::now();
            println!(
                "{mode} step {step}: forward {:.3} s, backward {:.3} s, optimiser {:.3} s, total {:.3} s",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                (t3 - t2).as_secs_f64(),
                (t3 - t0).as_secs_f64()
            );
        }
    }
}
