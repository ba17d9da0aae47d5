"""Load generator for scripts/bench/serve.sh (standard library only): streams `/v1/completions` from
an OpenAI-compatible server at concurrency C and prints one JSON line of requests/s, tokens/s,
time to first token and inter-token latency (p50/p99).

    python3 serve_client.py URL MODEL PROMPTS_FILE CONCURRENCY REQUESTS MAX_TOKENS LABEL

Each request asks for greedy decoding with EOS ignored (so every request generates MAX_TOKENS) and
the usage chunk; a server that sends no usage has its tokens counted as content chunks.
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def one(url, model, prompt, max_tokens):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps(
        {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
    stamps, usage, chunks = [], None, 0
    for raw in resp:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            break
        v = json.loads(data)
        if v.get("usage"):
            usage = v["usage"]
        for c in v.get("choices") or []:
            if c.get("text"):
                stamps.append(time.perf_counter())
                chunks += 1
    conn.close()
    t1 = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    ttft = stamps[0] - t0 if stamps else float("nan")
    itl = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"tokens": tokens, "ttft": ttft, "itl": itl, "latency": t1 - t0}


def main():
    url, model, prompts_file, conc, n, max_tokens, label = sys.argv[1:8]
    conc, n, max_tokens = int(conc), int(n), int(max_tokens)
    prompts = [l.rstrip("\n") for l in open(prompts_file) if l.strip()]
    results, errors, lock = [], [], threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= n:
                    return
                next_i[0] += 1
            try:
                r = one(url, model, prompts[i % len(prompts)], max_tokens)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    itl = [x for r in results for x in r["itl"]]
    ttft = [r["ttft"] for r in results]
    out = {
        "server": label,
        "concurrency": conc,
        "requests": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "ttft_p50_ms": pct(ttft, 50) * 1e3,
        "ttft_p99_ms": pct(ttft, 99) * 1e3,
        "itl_p50_ms": pct(itl, 50) * 1e3,
        "itl_p99_ms": pct(itl, 99) * 1e3,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
