"""PyTorch side of scripts/bench/train.sh: SmolLM2-135M training steps on the same JSONL texts, f32 on
the CPU, full fine-tuning with AdamW or LoRA (PEFT) on q,v. Prints one JSON line: median seconds per
step (first step excluded as warm-up), tokens/s and peak RSS."""

import argparse
import json
import resource
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("--gguf", required=True)
p.add_argument("--data", required=True)
p.add_argument("--mode", choices=["full", "lora"], required=True)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--length", type=int, default=128)
p.add_argument("--steps", type=int, default=6)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

torch.manual_seed(0)
torch.set_num_threads(a.threads)
d, f = a.gguf.rsplit("/", 1)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32)
model.config.use_cache = False
if a.mode == "lora":
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        model,
        LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
model.train()
texts = [json.loads(l)["text"] for l in open(a.data) if l.strip()]
enc = tok(texts, truncation=True, max_length=a.length, return_tensors="pt", padding="longest")
ids = enc["input_ids"]
assert ids.shape[1] == a.length, ids.shape
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)

times = []
for step in range(a.steps):
    rows = [(step * a.batch + i) % ids.shape[0] for i in range(a.batch)]
    x = ids[rows]
    t0 = time.perf_counter()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t0)
    print(f"torch {a.mode} step {step}: {times[-1]:.3f} s loss {out.loss.item():.4f}", flush=True)
med = statistics.median(times[1:])
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"system": "pytorch", "mode": a.mode, "s_per_step": med, "tokens_per_s": a.batch * a.length / med, "peak_rss_mb": rss}))
