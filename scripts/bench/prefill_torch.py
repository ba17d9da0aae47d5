"""Prefill throughput of SmolLM2-135M in PyTorch/transformers (f32), the same workload as
crates/tempering-model/examples/bench_prefill.rs: batch B x T ids, logits at the last position only
(logits_to_keep=1, as generation does). Prints one JSON line."""
import argparse, json, os, time

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("gguf")
ap.add_argument("--batch", type=int, default=8)
ap.add_argument("--len", type=int, default=128)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(a.gguf), gguf_file=os.path.basename(a.gguf), dtype=torch.float32
).eval()
vocab = model.config.vocab_size
ids = torch.tensor([(i * 2654435761) % vocab for i in range(a.batch * a.len)]).reshape(a.batch, a.len)
with torch.inference_mode():
    model(ids, logits_to_keep=1, use_cache=False)
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        model(ids, logits_to_keep=1, use_cache=False)
        times.append(time.perf_counter() - t0)
times.sort()
med = times[len(times) // 2]
print(json.dumps({"system": "pytorch", "batch": a.batch, "len": a.len, "median_s": round(med, 4),
                  "tokens_per_s": round(a.batch * a.len / med, 1), "threads": a.threads,
                  "torch": torch.__version__}))
