"""TRL side of scripts/bench/grpo.sh: GRPOTrainer steps (generation with transformers on the CPU,
scoring, update) on an HF model directory, optionally with a PEFT LoRA. Workload: 8 prompts x 8
generations x exactly 64 new tokens (min_new_tokens = max_completion_length), temperature 1, beta 0,
one iteration, f32. Prints one JSON line: median seconds per step (first step excluded as warm-up),
peak RSS and the mean completion length."""

import argparse
import json
import resource
import statistics
import time

import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

p = argparse.ArgumentParser()
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--prompts", type=int, default=8)
p.add_argument("--generations", type=int, default=8)
p.add_argument("--new-tokens", type=int, default=64)
p.add_argument("--lora-r", type=int, default=0)
p.add_argument("--out", required=True)
a = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(a.threads)
tok = AutoTokenizer.from_pretrained(a.model)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)


def answer_reward(completions, answer, **kw):
    # The same rule as Tempering's math_answer on these prompts, cheaply: the reference appears.
    return [float(str(ref) in c) for c, ref in zip(completions, answer)]


class Timer(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kw):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.t0)
        print(f"trl grpo step {state.global_step}: {self.times[-1]:.3f} s", flush=True)


lengths = []


class Lengths(TrainerCallback):
    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "completions/mean_length" in logs:
            lengths.append(logs["completions/mean_length"])


timer = Timer()
cfg = GRPOConfig(
    output_dir=a.out,
    per_device_train_batch_size=a.prompts * a.generations,
    gradient_accumulation_steps=1,
    num_generations=a.generations,
    max_completion_length=a.new_tokens,
    generation_kwargs={"min_new_tokens": a.new_tokens},
    temperature=1.0,
    beta=0.0,
    num_iterations=1,
    gradient_checkpointing=False,
    loss_type="dapo",
    max_steps=a.steps,
    learning_rate=1e-5,
    lr_scheduler_type="constant",
    use_cpu=True,
    bf16=False,
    report_to=[],
    save_strategy="no",
    logging_steps=1,
    dataloader_num_workers=0,
    seed=0,
)
peft = None
if a.lora_r > 0:
    peft = LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0,
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
trainer = GRPOTrainer(
    model=model,
    reward_funcs=answer_reward,
    args=cfg,
    train_dataset=load_dataset("json", data_files=a.data, split="train"),
    processing_class=tok,
    peft_config=peft,
    callbacks=[timer, Lengths()],
)
trainer.train()
med = statistics.median(timer.times[1:])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"system": "trl", "s_per_step": med, "peak_rss_mb": rss, "steps": timer.times,
                  "completion_length": statistics.mean(lengths) if lengths else None}))
