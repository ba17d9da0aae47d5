"""Drives a running `temper serve` with the official `openai` Python client and checks what it gets.

Run by crates/temper/tests/cli_openai.rs (which starts the server on loopback with the tiny
arithmetic model plus a chat template) in the venv of scripts/setup-openai-venv.sh:

    TEMPER_BASE_URL=http://127.0.0.1:PORT/v1 TEMPER_MODEL=tiny .venv-openai/bin/python scripts/openai_client_check.py

Covers: models, completions, chat, `n`, logprobs (both layouts), streaming with exactly one usage
chunk, strategies by body (`extra_body`) and by model name, vLLM extras through `extra_body`, and
errors raised as `openai.BadRequestError` / `openai.NotFoundError`. Exits 1 naming the first check
that failed; prints `ALL OK (N checks)` otherwise.
"""

import os
import sys

import openai

BASE = os.environ["TEMPER_BASE_URL"]
MODEL = os.environ["TEMPER_MODEL"]
PROMPT = "Compute: 3+4*2\n"
MESSAGES = [{"role": "user", "content": "Compute: 3+4*2"}]

client = openai.OpenAI(base_url=BASE, api_key="unused", max_retries=0, timeout=120)
passed = 0


def check(name, cond, detail=""):
    global passed
    if not cond:
        print(f"FAILED: {name}: {detail}", file=sys.stderr)
        sys.exit(1)
    passed += 1


def raises(name, exc, call):
    try:
        call()
    except exc as e:
        check(name + " (status)", e.status_code in (400, 404), e.status_code)
        body = e.body if isinstance(e.body, dict) else {}
        check(name + " (message)", bool(body.get("message")), e.body)
        return e
    except Exception as e:  # noqa: BLE001 - any other exception is the failure reported
        check(name, False, f"raised {type(e).__name__}: {e}")
    check(name, False, f"no {exc.__name__} raised")


# Models.
ids = [m.id for m in client.models.list().data]
check("models lists the served model", MODEL in ids, ids)

# Completions, greedy.
c = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, seed=1)
check("completion object", c.object == "text_completion", c.object)
greedy = c.choices[0].text
check("completion text", len(greedy) > 0, c)
check("prompt tokens", c.usage.prompt_tokens == len(PROMPT), c.usage)
check(
    "total tokens",
    c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens,
    c.usage,
)
check("finish reason", c.choices[0].finish_reason in ("stop", "length"), c.choices[0])

# n samples, seeded: reproducible.
c1 = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, seed=5)
c2 = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, n=3, seed=5)
check("n choices", sorted(ch.index for ch in c1.choices) == [0, 1, 2], c1.choices)
check("seeded n reproducible", [ch.text for ch in c1.choices] == [ch.text for ch in c2.choices])

# Legacy logprobs on completions.
c = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
lp = c.choices[0].logprobs
k = c.usage.completion_tokens
check("logprobs tokens", len(lp.tokens) == len(lp.token_logprobs) == k, lp)
check("logprobs <= 0", all(x <= 0 for x in lp.token_logprobs), lp.token_logprobs)
check("top logprobs", all(len(t) == 2 for t in lp.top_logprobs), lp.top_logprobs)

# Chat: the template renders the message as the plain prompt, so the greedy answer is the same.
r = client.chat.completions.create(
    model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0, logprobs=True, top_logprobs=2
)
check("chat object", r.object == "chat.completion", r.object)
check("chat role", r.choices[0].message.role == "assistant", r.choices[0].message)
check("chat content", r.choices[0].message.content == greedy, (r.choices[0].message.content, greedy))
content = r.choices[0].logprobs.content
check("chat logprobs", len(content) == r.usage.completion_tokens, len(content))
check("chat top logprobs", all(len(t.top_logprobs) == 2 for t in content))

# Streaming chat with include_usage: deltas that add up, exactly one usage chunk, last.
chunks = list(
    client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
)
usage_chunks = [ch for ch in chunks if ch.usage is not None]
check("one usage chunk", len(usage_chunks) == 1, [ch.usage for ch in chunks])
check("usage chunk last", chunks[-1].usage is not None and chunks[-1].choices == [])
check("stream usage", usage_chunks[0].usage.completion_tokens == r.usage.completion_tokens)
text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
check("stream text", text == greedy, (text, greedy))
finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
check("stream finish", len(finishes) == 1, finishes)

# Streamed logprobs: one entry per token across the chunks, the numbers of the whole answer.
chunks = list(
    client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=24,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
        stream=True,
    )
)
streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs for t in ch.choices[0].logprobs.content]
check("stream chat logprobs count", len(streamed) == len(content), (len(streamed), len(content)))
check(
    "stream chat logprobs values",
    all(abs(a.logprob - b.logprob) < 1e-4 and a.token == b.token for a, b in zip(streamed, content)),
)
check("stream chat top logprobs", all(len(t.top_logprobs) == 2 for t in streamed))
whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2)
chunks = list(
    client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2, stream=True
    )
)
lps = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.token_logprobs]
want = whole.choices[0].logprobs.token_logprobs
check("stream completion logprobs", len(lps) == len(want) and all(abs(a - b) < 1e-4 for a, b in zip(lps, want)), (lps, want))
offsets = [x for ch in chunks if ch.choices and ch.choices[0].logprobs for x in ch.choices[0].logprobs.text_offset]
check("stream text offsets", offsets == whole.choices[0].logprobs.text_offset, (offsets, whole.choices[0].logprobs.text_offset))

# Streaming completions without include_usage: no usage chunk at all.
chunks = list(
    client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
)
check("no usage chunk unasked", all(ch.usage is None for ch in chunks))
check("stream completion text", "".join(ch.choices[0].text for ch in chunks if ch.choices) == greedy)

# Strategies: by body (extra_body) and by model name; usage.temper says what ran.
r = client.completions.create(
    model=MODEL, prompt=PROMPT, max_tokens=24, extra_body={"temper": {"strategy": "sc@3"}}
)
t = r.usage.to_dict().get("temper", {})
check("strategy by body", t.get("samples") == 3 and t.get("strategy", "").startswith("sc"), t)
check("strategy tokens", r.usage.completion_tokens == t.get("generated_tokens"), (r.usage, t))
r = client.chat.completions.create(model=f"sc@2@{MODEL}", messages=MESSAGES, max_tokens=24)
t = r.usage.to_dict().get("temper", {})
check("strategy by name", t.get("samples") == 2, t)
check("strategy model echoed", r.model == f"sc@2@{MODEL}", r.model)

# vLLM extras through extra_body.
c = client.completions.create(
    model=MODEL,
    prompt=PROMPT,
    max_tokens=5,
    temperature=0,
    extra_body={"return_token_ids": True, "ignore_eos": True},
)
extra = c.choices[0].to_dict()
check("token_ids", len(extra.get("token_ids", [])) == 5, extra)
check("prompt_token_ids", len(extra.get("prompt_token_ids", [])) == len(PROMPT), extra)

# Errors: the client's own exception classes.
raises(
    "unknown model", openai.NotFoundError, lambda: client.completions.create(model="nope", prompt=PROMPT)
)
raises(
    "unknown strategy",
    openai.NotFoundError,
    lambda: client.completions.create(
        model=MODEL, prompt=PROMPT, extra_body={"temper": {"strategy": "nope@3"}}
    ),
)
raises(
    "max_tokens past the context",
    openai.BadRequestError,
    lambda: client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=100000),
)
raises(
    "negative temperature",
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=-1),
)
raises(
    "empty messages",
    openai.BadRequestError,
    lambda: client.chat.completions.create(model=MODEL, messages=[]),
)
e = raises(
    "n too large",
    openai.BadRequestError,
    lambda: client.completions.create(model=MODEL, prompt=PROMPT, n=10000),
)
check("error names the field", (e.body or {}).get("param") == "n", e.body)

print(f"ALL OK ({passed} checks)")
