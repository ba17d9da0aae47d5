"""TRL side of scripts/bench/dpo.sh: DPOTrainer steps on SmolLM2-135M (an HF directory) with a PEFT LoRA,
f32 on the CPU, batch 2 pairs, max_length 128. Prints one JSON line: median seconds per step (first step
excluded as warm-up) and peak RSS."""

import argparse
import json
import resource
import statistics
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--steps", type=int, default=4)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--out", required=True)
# TRL turns gradient checkpointing on by default (it recomputes activations: slower, less memory);
# Tempering keeps activations, so the like-for-like comparison is with it off.
p.add_argument("--gradient-checkpointing", choices=["on", "off"], default="off")
a = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(a.threads)
tok = AutoTokenizer.from_pretrained(a.model)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)


class Timer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t0)
        print(f"trl dpo step {state.global_step}: {self.times[-1]:.3f} s", flush=True)


timer = Timer()
cfg = DPOConfig(
    output_dir=a.out,
    per_device_train_batch_size=2,
    max_length=128,
    max_steps=a.steps,
    learning_rate=1e-5,
    lr_scheduler_type="constant",
    beta=0.1,
    loss_type="sigmoid",
    use_cpu=True,
    bf16=False,
    report_to=[],
    save_strategy="no",
    logging_steps=1,
    dataloader_num_workers=0,
    seed=0,
    gradient_checkpointing=a.gradient_checkpointing == "on",
)
trainer = DPOTrainer(
    model=model,
    args=cfg,
    train_dataset=load_dataset("json", data_files=a.data, split="train"),
    processing_class=tok,
    peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    callbacks=[timer],
)
trainer.train()
med = statistics.median(timer.times[1:])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"system": "trl" if a.gradient_checkpointing == "off" else "trl-checkpointing", "s_per_step": med, "peak_rss_mb": rss, "steps": timer.times}))
