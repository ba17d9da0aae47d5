#!/usr/bin/env python3
"""Golden tokenizer fixtures for SmolLM2 from llama.cpp (through llama-cpp-python).

Writes fixtures/tokenizer/smollm2_llamacpp.json: for a corpus of tricky strings, the token ids that
llama.cpp gives with parse_special=True and no BOS, the text llama.cpp's detokenizer gives back, and
whether llama.cpp adds a BOS for this model when asked to add special tokens.

Also writes fixtures/tokenizer/tiny_spm.gguf, a vocabulary-only GGUF of `llama` (SentencePiece) type
built from a 600-piece SentencePiece BPE model trained here on a fixed text (byte fallback, one
user-defined token `<|user|>`), and fixtures/tokenizer/tiny_spm_llamacpp.json with llama.cpp's ids for
the same corpus on it: no real SentencePiece GGUF is small enough to commit.

Optionally (--hf-check DIR) it also loads DIR/tokenizer.json, written by the Rust side's
`Tokenizer::save_hf` (run `TEMPER_SAVE_TOKENIZER_DIR=DIR cargo test -p tempering-model --test
tokenizer save_hf` first), with transformers' PreTrainedTokenizerFast and records whether it gives
the same ids as llama.cpp on the whole corpus.

Usage (from the workspace root):
    /work/pyref/venv/bin/python scripts/reference/tokenizer_fixtures.py \
        [--model models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf] [--hf-check /tmp/smollm2-tok]
Needs: llama-cpp-python, sentencepiece, gguf (and transformers for --hf-check).
"""

import argparse
import json
import os
import sys

CORPUS = [
    # plain text
    "Hello world",
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "hello",
    "HELLO WORLD",
    # digits and numbers
    "1234567890",
    "3.14159",
    "In 2024, 1,000,000 people paid $12.50 each.",
    "x=42; y=-17; z=0.5e-3",
    "12345678901234567890123456789",
    "Phone: +1 (555) 123-4567",
    "Version v2.3.10-rc1",
    "٣٤٥ and ①②③ and ²³",
    # whitespace
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n\n",
    " leading space",
    "trailing space ",
    "  two leading and two trailing  ",
    "many     spaces     inside",
    "tab\tseparated\tvalues",
    "line one\nline two\n",
    "windows\r\nline\r\nendings\r\n",
    "mixed \t \n \r\n whitespace",
    "    indented by four",
    "\u00a0non-breaking\u00a0space",
    "ideographic\u3000space",
    # unicode
    "café naïve résumé",
    "Ünïcödé çhäràctérs",
    "日本語のテキストです。",
    "中文测试：你好，世界！",
    "한국어 텍스트",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "مرحبا بالعالم",
    "שלום עולם",
    "हिन्दी पाठ",
    "emoji 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "🤗",
    "math: ∑ ∫ √ ≤ ≥ ≠ ∞ π",
    "e\u0301 combining accent",
    # contractions
    "I'm sure it's fine, we're done, they'll come, you've seen, he'd go, don't",
    "IT'S LOUD, WE'RE HERE",
    "'s 're 'll 've 'm 'd 't",
    "rock 'n' roll",
    # code
    "def f(x):\n    return x**2 + 1\n",
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "const x = () => { return {a: 1, b: [2, 3]}; };",
    "SELECT * FROM users WHERE id = 42;",
    "<div class=\"main\">Hello</div>",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "if x != None and y >= 3:\n\tpass",
    "$ ls -la | grep '.rs' > out.txt 2>&1",
    # punctuation
    "!!!???...",
    "Wait... what?!",
    "---===+++***",
    "(((nested)))[[[brackets]]]{{{braces}}}",
    "a/b\\c|d~e^f`g",
    "\"quoted\" and 'single' and `backtick`",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    # special tokens inline
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|endoftext|>more text",
    " <|im_start|> spaced <|im_end|> ",
    "<|im_start|><|im_end|><|im_start|>",
    "<|im_start",
    "<| im_start |>",
    "<repo_name>tempering<file_sep>src/main.rs",
    # odd
    "a",
    "A",
    ".",
    "ab ab ab ab ab ab ab ab",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The answer is \\boxed{42}.",
    "#### 1,234",
    "Step 1: 3 + 4 = 7\nStep 2: 7 * 2 = 14\nAnswer: 14",
]


SPM_TRAINING_TEXT = """Tempering post-trains language models to reason, and scales their reasoning at test time.
One Rust binary does supervised fine-tuning, reward modelling, preference optimisation and online RL.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Numbers like 12, 345 and 6789 appear in maths problems: 3 + 4 = 7, 7 * 2 = 14.
Café, naïve, résumé; 日本語; 中文; Привет; مرحبا; emoji 😀.
def f(x):
    return x**2 + 1
"""


def llamacpp_cases(llm, corpus):
    cases = []
    for text in corpus:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        back = llm.detokenize(ids, special=True).decode("utf-8", errors="replace")
        cases.append({"text": text, "ids": ids, "llamacpp_detokenized": back})
    probe = "Hello"
    with_bos = llm.tokenize(probe.encode(), add_bos=True, special=True)
    without = llm.tokenize(probe.encode(), add_bos=False, special=True)
    return cases, len(with_bos) > len(without), with_bos


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def make_tiny_spm(out_dir):
    """Trains a tiny SentencePiece BPE model and writes it as a vocabulary-only `llama` GGUF."""
    import tempfile

    import gguf
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        train = os.path.join(tmp, "train.txt")
        with open(train, "w", encoding="utf-8") as f:
            f.write(SPM_TRAINING_TEXT * 3 + "\n".join(CORPUS))
        spm.SentencePieceTrainer.train(
            input=train, model_prefix=os.path.join(tmp, "tiny"), vocab_size=600, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, user_defined_symbols=["<|user|>"],
            split_digits=True, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False,
            normalization_rule_name="identity", num_threads=1, minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=os.path.join(tmp, "tiny.model"))
    n = sp.get_piece_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]

    def token_type(i):  # llama.cpp's LLAMA_TOKEN_TYPE_*
        if sp.is_unknown(i):
            return 2
        if sp.is_control(i):
            return 3
        if sp.is_byte(i):
            return 6
        if sp.is_unused(i):
            return 5
        return 4 if tokens[i] == "<|user|>" else 1

    path = os.path.join(out_dir, "tiny_spm.gguf")
    w = gguf.GGUFWriter(path, "llama")
    # Minimal hyper-parameters so that llama.cpp accepts the file with vocab_only=True.
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(8)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types([token_type(i) for i in range(n)])
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--out", default="fixtures/tokenizer/smollm2_llamacpp.json")
    ap.add_argument("--hf-check", default=None, help="directory holding a tokenizer.json saved by save_hf")
    ap.add_argument("--skip-spm", action="store_true", help="do not rebuild the tiny SentencePiece fixture")
    args = ap.parse_args()

    import llama_cpp

    if not args.skip_spm:
        out_dir = os.path.dirname(args.out)
        os.makedirs(out_dir, exist_ok=True)
        spm_path = make_tiny_spm(out_dir)
        spm_llm = llama_cpp.Llama(model_path=spm_path, vocab_only=True, verbose=False)
        spm_cases, spm_bos, spm_with_bos = llamacpp_cases(spm_llm, CORPUS)
        write_json(os.path.join(out_dir, "tiny_spm_llamacpp.json"), {
            "source": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
            "model_file": os.path.basename(spm_path),
            "settings": "tokenize(text, add_bos=False, special=True); detokenize(ids, special=True)",
            "llamacpp_adds_bos": spm_bos,
            "llamacpp_ids_with_add_special_for_Hello": spm_with_bos,
            "bos_token_id": spm_llm.token_bos(),
            "eos_token_id": spm_llm.token_eos(),
            "n_vocab": spm_llm.n_vocab(),
            "cases": spm_cases,
        })
        print(f"wrote {spm_path} and its llama.cpp ids ({len(spm_cases)} cases, adds BOS: {spm_bos})")

    llm = llama_cpp.Llama(model_path=args.model, vocab_only=True, verbose=False)
    cases, adds_bos, with_bos = llamacpp_cases(llm, CORPUS)

    fixture = {
        "source": "llama.cpp via llama-cpp-python " + llama_cpp.__version__,
        "model_file": os.path.basename(args.model),
        "settings": "tokenize(text, add_bos=False, special=True); detokenize(ids, special=True)",
        "llamacpp_adds_bos": adds_bos,
        "llamacpp_ids_with_add_special_for_Hello": with_bos,
        "bos_token_id": llm.token_bos(),
        "eos_token_id": llm.token_eos(),
        "n_vocab": llm.n_vocab(),
        "cases": cases,
    }

    if args.hf_check:
        from transformers import PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.hf_check, "tokenizer.json"))
        mismatches = []
        for c in cases:
            hf_ids = tok(c["text"], add_special_tokens=False)["input_ids"]
            if hf_ids != c["ids"]:
                mismatches.append({"text": c["text"], "hf": hf_ids, "llamacpp": c["ids"]})
        import transformers

        fixture["transformers_check"] = {
            "what": "PreTrainedTokenizerFast(tokenizer_file=<save_hf output>) ids vs llama.cpp, add_special_tokens=False",
            "transformers_version": transformers.__version__,
            "cases": len(cases),
            "mismatches": mismatches,
        }
        print(f"transformers on saved tokenizer.json: {len(cases) - len(mismatches)}/{len(cases)} match")

    write_json(args.out, fixture)
    print(f"wrote {args.out}: {len(cases)} cases, llama.cpp adds BOS: {adds_bos}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
