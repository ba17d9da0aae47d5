//! Tokenizer tests: SmolLM2 from GGUF against llama.cpp's ids (fixtures/tokenizer/, written by
//! scripts/reference/tokenizer_fixtures.py), round trips through decode and through `save_hf`, the
//! HF `tokenizer_config.json` rules, and the SentencePiece (`llama`) conversion on a hand-built vocabulary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
use tempering_model::known;
use tempering_model::tokenizer::Tokenizer;
use tempering_model::ModelError;

struct Case {
    text: String,
    ids: Vec<u32>,
}

struct Fixture {
    cases: Vec<Case>,
    adds_bos: bool,
    bos: u32,
    eos: u32,
    n_vocab: usize,
}

fn fixture() -> Fixture {
    fixture_named("smollm2_llamacpp.json")
}

fn fixture_named(name: &str) -> Fixture {
    let path = known::fixtures_dir().join("tokenizer").join(name);
    let text = std::fs::read_to_string(&path).expect("fixture present (committed)");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let cases = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().expect("text").to_string(),
            ids: c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|i| i.as_u64().expect("id") as u32)
                .collect(),
        })
        .collect::<Vec<_>>();
    assert!(
        cases.len() >= 60,
        "fixture corpus too small: {}",
        cases.len()
    );
    Fixture {
        cases,
        adds_bos: json["llamacpp_adds_bos"].as_bool().expect("adds_bos"),
        bos: json["bos_token_id"].as_u64().expect("bos") as u32,
        eos: json["eos_token_id"].as_u64().expect("eos") as u32,
        n_vocab: json["n_vocab"].as_u64().expect("n_vocab") as usize,
    }
}

fn smollm2(test: &str) -> Option<(Tokenizer, PathBuf)> {
    let path = known::smollm2_or_skip(test)?;
    let mut f = std::fs::File::open(&path).expect("open gguf");
    let content = Content::read(&mut f).expect("read gguf");
    let tok = Tokenizer::from_gguf(&content, &path).expect("tokenizer from gguf");
    Some((tok, path))
}

/// Every case whose ids differ, formatted for the assertion message.
fn mismatches(tok: &Tokenizer, cases: &[Case]) -> Vec<String> {
    cases
        .iter()
        .filter_map(|c| {
            let got = tok.encode(&c.text, false).expect("encode");
            (got != c.ids).then(|| format!("{:?}: got {got:?}, llama.cpp {:?}", c.text, c.ids))
        })
        .collect()
}

#[test]
fn smollm2_gguf_matches_llamacpp_on_the_whole_corpus() {
    let Some((tok, _)) = smollm2("smollm2_gguf_matches_llamacpp_on_the_whole_corpus") else {
        return;
    };
    let fx = fixture();
    let bad = mismatches(&tok, &fx.cases);
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        fx.cases.len(),
        bad.join("\n")
    );

    // BOS rules as llama.cpp applies them to this file.
    assert_eq!(tok.adds_bos(), fx.adds_bos);
    for c in &fx.cases {
        let with = tok.encode(&c.text, true).unwrap();
        let expected: Vec<u32> = fx
            .adds_bos
            .then_some(fx.bos)
            .into_iter()
            .chain(c.ids.iter().copied())
            .collect();
        assert_eq!(with, expected, "{:?} with add_special_tokens", c.text);
    }
    assert_eq!(tok.bos_token().map(|t| t.0), Some(fx.bos));
    assert_eq!(tok.eos_token().map(|t| t.0), Some(fx.eos));
    assert_eq!(tok.vocab_size(), fx.n_vocab);
}

#[test]
fn smollm2_decode_inverts_encode() {
    let Some((tok, _)) = smollm2("smollm2_decode_inverts_encode") else {
        return;
    };
    for c in &fixture().cases {
        let ids = tok.encode(&c.text, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), c.text, "ids {ids:?}");
        // Token by token, the pieces' bytes concatenate to the text too.
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.piece_bytes(id)).collect();
        assert_eq!(String::from_utf8(bytes).unwrap(), c.text);
    }
    let ids = tok
        .encode("<|im_start|>user\nHi<|im_end|>\n", false)
        .unwrap();
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nHi\n");
    assert!(tok.decode(&[u32::MAX], false).is_err());
}

#[test]
fn smollm2_names_its_tokens() {
    let Some((tok, _)) = smollm2("smollm2_names_its_tokens") else {
        return;
    };
    let kind = tok.kind();
    assert!(
        kind.contains("byte-level BPE") && kind.contains("49152") && kind.contains("smollm"),
        "{kind}"
    );
    assert!(kind.contains("GGUF"), "{kind}");
    assert_eq!(tok.bos_token(), Some((1, "<|im_start|>".to_string())));
    assert_eq!(tok.eos_token(), Some((2, "<|im_end|>".to_string())));
    assert_eq!(tok.pad_token(), Some((2, "<|im_end|>".to_string())));
    assert_eq!(tok.pad_id(), 2);
    let specials = tok.special_tokens();
    assert_eq!(specials.len(), 17, "{specials:?}");
    assert_eq!(specials[0], (0, "<|endoftext|>".to_string()));
    let stops = tok.stop_token_ids();
    assert_eq!(stops[0], 2);
    assert!(stops.contains(&0), "{stops:?}");
    assert!(!stops.contains(&1), "{stops:?}");
    // Raw entries versus display text.
    let the = tok.encode(" the", false).unwrap();
    assert_eq!(the.len(), 1);
    assert_eq!(tok.id_to_piece(the[0]).as_deref(), Some("Ġthe"));
    assert_eq!(tok.piece_text(the[0]), " the");
    assert_eq!(tok.token_to_id("Ġthe"), Some(the[0]));
    assert_eq!(tok.piece_text(1), "<|im_start|>");
    let nl = tok.encode("\n", false).unwrap();
    assert_eq!(tok.piece_text(nl[0]), "\n");
    // Every digit stands alone (the `smollm` pre-tokenizer), in contrast to plain GPT-2 splitting.
    let digits = tok.encode("2024", false).unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
}

#[test]
fn smollm2_save_hf_reloads_identically() {
    let Some((tok, _)) = smollm2("smollm2_save_hf_reloads_identically") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // Set TEMPER_SAVE_TOKENIZER_DIR to keep the file for the Python transformers check.
    let dir = std::env::var_os("TEMPER_SAVE_TOKENIZER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("out"));
    tok.save_hf(&dir).unwrap();
    let file = dir.join("tokenizer.json");
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let back = Tokenizer::from_file(&file).unwrap();
    let fx = fixture();
    let bad = mismatches(&back, &fx.cases);
    assert!(
        bad.is_empty(),
        "reloaded tokenizer.json differs:\n{}",
        bad.join("\n")
    );
    assert_eq!(back.vocab_size(), tok.vocab_size());
    assert_eq!(back.special_tokens(), tok.special_tokens());
    assert!(back.kind().starts_with("byte-level BPE"), "{}", back.kind());
    for c in &fx.cases {
        let ids = back.encode(&c.text, false).unwrap();
        assert_eq!(back.decode(&ids, false).unwrap(), c.text);
    }
}

#[test]
fn tokenizer_config_names_tokens_and_bos_rule() {
    let Some((tok, _)) = smollm2("tokenizer_config_names_tokens_and_bos_rule") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    tok.save_hf(tmp.path()).unwrap();
    let file = tmp.path().join("tokenizer.json");
    let config = tmp.path().join("tokenizer_config.json");

    // No config: nothing is named, nothing added.
    let bare = Tokenizer::from_file(&file).unwrap();
    assert_eq!(bare.bos_token(), None);
    assert_eq!(
        bare.encode("Hi", true).unwrap(),
        bare.encode("Hi", false).unwrap()
    );
    // <|im_end|> and <|endoftext|> are still stop tokens by name.
    assert_eq!(bare.stop_token_ids(), vec![2, 0]);

    std::fs::write(
        &config,
        r#"{"bos_token": {"content": "<|im_start|>", "special": true}, "eos_token": "<|im_end|>",
            "pad_token": null, "add_bos_token": true,
            "added_tokens_decoder": {"49152": {"content": "<think>", "special": false}}}"#,
    )
    .unwrap();
    let t = Tokenizer::from_file(&file).unwrap();
    assert_eq!(t.bos_token(), Some((1, "<|im_start|>".into())));
    assert_eq!(t.eos_token(), Some((2, "<|im_end|>".into())));
    assert_eq!(t.pad_token(), None);
    // Batches are padded with EOS when there is no padding token.
    assert_eq!(t.pad_id(), 2);
    assert!(t.adds_bos());
    let plain = t.encode("Hi there", false).unwrap();
    let with = t.encode("Hi there", true).unwrap();
    assert_eq!(with[0], 1);
    assert_eq!(&with[1..], &plain[..]);
    // The token only the config declares is added with its declared id.
    assert_eq!(t.token_to_id("<think>"), Some(49152));
    assert_eq!(t.encode("a<think>b", false).unwrap()[1], 49152);
    assert_eq!(t.vocab_size(), 49153);
    // The rebuilt BOS rule survives save_hf.
    let out = tmp.path().join("again");
    t.save_hf(&out).unwrap();
    let again = Tokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    assert_eq!(again.encode("Hi there", true).unwrap(), with);
    let fields = t.hf_config_fields();
    assert_eq!(fields["bos_token"], "<|im_start|>");
    assert_eq!(fields["add_bos_token"], true);

    // Errors name the file and the field.
    std::fs::write(&config, r#"{"bos_token": 5}"#).unwrap();
    let err = Tokenizer::from_file(&file).unwrap_err().to_string();
    assert!(
        err.contains("tokenizer_config.json") && err.contains("bos_token"),
        "{err}"
    );
    std::fs::write(&config, "{not json").unwrap();
    let err = Tokenizer::from_file(&file).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json"), "{err}");
}

#[test]
fn from_file_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope/tokenizer.json");
    match Tokenizer::from_file(&missing) {
        Err(ModelError::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected an Io error, got {other:?}"),
    }
    let bad = tmp.path().join("tokenizer.json");
    std::fs::write(&bad, r#"{"model": 3}"#).unwrap();
    let err = Tokenizer::from_file(&bad).unwrap_err().to_string();
    assert!(err.contains(&bad.display().to_string()), "{err}");
}

#[test]
fn sentencepiece_gguf_matches_llamacpp_on_the_whole_corpus() {
    // A 600-piece SentencePiece BPE vocabulary (scores, byte fallback, a user-defined token) written
    // as a `llama` GGUF by scripts/reference/tokenizer_fixtures.py, with llama.cpp's ids for it.
    let path = known::fixtures_dir().join("tokenizer/tiny_spm.gguf");
    let mut f = std::fs::File::open(&path).expect("committed fixture");
    let content = Content::read(&mut f).expect("read gguf");
    let tok = Tokenizer::from_gguf(&content, &path).unwrap();
    let fx = fixture_named("tiny_spm_llamacpp.json");
    let bad = mismatches(&tok, &fx.cases);
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        fx.cases.len(),
        bad.join("\n")
    );
    assert_eq!(tok.adds_bos(), fx.adds_bos);
    assert_eq!(tok.bos_token().map(|t| t.0), Some(fx.bos));
    assert_eq!(tok.eos_token().map(|t| t.0), Some(fx.eos));
    assert_eq!(tok.vocab_size(), fx.n_vocab);
    for c in &fx.cases {
        let with = tok.encode(&c.text, true).unwrap();
        assert_eq!(with[0], fx.bos);
        assert_eq!(&with[1..], &c.ids[..]);
    }
    // Through save_hf and back, the same ids (TEMPER_SAVE_TOKENIZER_DIR keeps the file).
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var_os("TEMPER_SAVE_TOKENIZER_DIR")
        .map(|d| PathBuf::from(d).join("tiny_spm"))
        .unwrap_or_else(|| tmp.path().to_path_buf());
    tok.save_hf(&dir).unwrap();
    let back = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let bad = mismatches(&back, &fx.cases);
    assert!(bad.is_empty(), "after save_hf:\n{}", bad.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Hand-built GGUF metadata.

fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

fn content(md: Vec<(&str, Value)>) -> Content {
    Content {
        magic: VersionedMagic::GgufV3,
        metadata: md
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<HashMap<_, _>>(),
        tensor_infos: HashMap::new(),
        tensor_data_offset: 0,
    }
}

/// A tiny SentencePiece vocabulary: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, then scored pieces.
fn spm_content(extra: Vec<(&str, Value)>) -> (Content, Vec<String>) {
    let pieces: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("a", -2.0),
        ("x", -3.0),
        ("y", -3.0),
        ("z", -3.0),
        ("u", -3.0),
        ("v", -3.0),
        ("w", -3.0),
        ("ll", -4.0),
        ("he", -5.0),
        ("hell", -6.0),
        ("hello", -7.0),
        ("▁hello", -8.0),
        ("▁a", -9.0),
        // Scores decide which pair merges first: xy beats yz, vw beats uv.
        ("xy", -10.0),
        ("yz", -11.0),
        ("uv", -13.0),
        ("vw", -12.0),
        ("<|user|>", 0.0),
    ];
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types: Vec<Value> = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
    let mut scores: Vec<Value> = vec![Value::F32(0.0); 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(Value::I32(6));
        scores.push(Value::F32(0.0));
    }
    for (p, s) in pieces {
        tokens.push(p.to_string());
        types.push(Value::I32(if *p == "<|user|>" { 4 } else { 1 }));
        scores.push(Value::F32(*s));
    }
    let mut md = vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&tokens.iter().map(String::as_str).collect::<Vec<_>>()),
        ),
        ("tokenizer.ggml.scores", Value::Array(scores)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ];
    md.extend(extra);
    (content(md), tokens)
}

fn pieces(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    ids.iter().map(|&i| tok.id_to_piece(i).unwrap()).collect()
}

#[test]
fn spm_vocabulary_merges_by_score_with_prefix_and_byte_fallback() {
    let (c, _) = spm_content(vec![]);
    let tok = Tokenizer::from_gguf(&c, Path::new("tiny-spm.gguf")).unwrap();
    assert!(
        tok.kind().starts_with("SentencePiece BPE"),
        "{}",
        tok.kind()
    );
    let enc = |s: &str| pieces(&tok, &tok.encode(s, false).unwrap());

    assert_eq!(enc("hello"), ["▁hello"]);
    assert_eq!(enc("hello hello"), ["▁hello", "▁hello"]);
    assert_eq!(enc("a"), ["▁a"]);
    // Higher score merges first.
    assert_eq!(enc("xyz"), ["▁", "xy", "z"]);
    assert_eq!(enc("uvw"), ["▁", "u", "vw"]);
    // Unknown characters fall back to their UTF-8 bytes; newline is <0x0A>.
    assert_eq!(enc("a\n"), ["▁a", "<0x0A>"]);
    assert_eq!(enc("é"), ["▁", "<0xC3>", "<0xA9>"]);
    // Special and user-defined tokens inline; text after them gets the space prefix again.
    assert_eq!(enc("<s>hello</s>"), ["<s>", "▁hello", "</s>"]);
    assert_eq!(enc("hello<|user|>a"), ["▁hello", "<|user|>", "▁a"]);
    // BOS by default for llama vocabularies.
    assert!(tok.adds_bos());
    let with = tok.encode("hello", true).unwrap();
    assert_eq!(pieces(&tok, &with), ["<s>", "▁hello"]);
    assert_eq!(tok.bos_token(), Some((1, "<s>".into())));
    assert_eq!(tok.stop_token_ids(), vec![2]);
    assert_eq!(
        tok.special_tokens(),
        vec![(0, "<unk>".into()), (1, "<s>".into()), (2, "</s>".into())]
    );

    // Decoding drops the prefix space and reassembles bytes.
    for s in [
        "hello",
        "hello hello",
        "a\né",
        "xyz uvw",
        "  hello",
        "hello<|user|>",
    ] {
        let ids = tok.encode(s, false).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "{ids:?}");
    }
    assert_eq!(tok.decode(&with, true).unwrap(), "hello");
    let nl = tok.token_to_id("<0x0A>").unwrap();
    assert_eq!(tok.piece_text(nl), "\n");
    assert_eq!(tok.piece_text(tok.token_to_id("▁hello").unwrap()), " hello");

    // The same ids after a save_hf round trip.
    let tmp = tempfile::tempdir().unwrap();
    tok.save_hf(tmp.path()).unwrap();
    let back = Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap();
    for s in ["hello", "xyz uvw", "a\né", "<s>hello</s>", "hello<|user|>a"] {
        assert_eq!(
            back.encode(s, false).unwrap(),
            tok.encode(s, false).unwrap(),
            "{s:?}"
        );
    }
    assert_eq!(back.encode("hello", true).unwrap(), with);
}

#[test]
fn spm_without_space_prefix_or_bos() {
    let (c, _) = spm_content(vec![
        ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ]);
    let tok = Tokenizer::from_gguf(&c, Path::new("tiny-spm.gguf")).unwrap();
    let ids = tok.encode("hello hello", true).unwrap();
    assert_eq!(pieces(&tok, &ids), ["hello", "▁hello"]);
    assert!(!tok.adds_bos());
    assert_eq!(tok.decode(&ids, false).unwrap(), "hello hello");
}

/// A tiny byte-level vocabulary where `1 2` is a merge: it shows whether digits are split first.
fn bpe_content(pre: Option<&str>, merges: bool) -> Content {
    let tokens = [
        "<|endoftext|>",
        "a",
        "b",
        "1",
        "2",
        "Ġ",
        "ab",
        "12",
        "Ġa",
        "Ġab",
    ];
    let mut types = vec![Value::I32(1); tokens.len()];
    types[0] = Value::I32(3);
    let mut md = vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    if merges {
        md.push((
            "tokenizer.ggml.merges",
            strings(&["Ġ a", "a b", "1 2", "Ġa b"]),
        ));
    }
    if let Some(p) = pre {
        md.push(("tokenizer.ggml.pre", Value::String(p.into())));
    }
    content(md)
}

#[test]
fn bpe_pre_tokenizer_follows_the_named_one() {
    let path = Path::new("tiny-bpe.gguf");
    let smol = Tokenizer::from_gguf(&bpe_content(Some("smollm"), true), path).unwrap();
    let gpt2 = Tokenizer::from_gguf(&bpe_content(Some("gpt-2"), true), path).unwrap();
    let enc = |t: &Tokenizer, s: &str| pieces(t, &t.encode(s, false).unwrap());
    assert_eq!(enc(&smol, "ab 12"), ["ab", "Ġ", "1", "2"]);
    assert_eq!(enc(&gpt2, "ab 12"), ["ab", "Ġ", "12"]);
    assert_eq!(
        enc(&smol, "ab<|endoftext|> ab"),
        ["ab", "<|endoftext|>", "Ġab"]
    );
    assert!(!smol.adds_bos());
    assert_eq!(smol.eos_token(), Some((0, "<|endoftext|>".into())));
    assert!(
        smol.kind().contains("pre-tokenizer smollm"),
        "{}",
        smol.kind()
    );
    assert_eq!(
        smol.decode(&smol.encode("ab 12 ab", false).unwrap(), false)
            .unwrap(),
        "ab 12 ab"
    );
}

#[test]
fn gguf_errors_name_the_key_or_value() {
    let path = Path::new("tiny-bpe.gguf");
    let err = Tokenizer::from_gguf(&bpe_content(Some("no-such-pre"), true), path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-pre") && err.contains("tokenizer.ggml.pre"),
        "{err}"
    );
    let err = Tokenizer::from_gguf(&bpe_content(Some("smollm"), false), path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tokenizer.ggml.merges") && err.contains("tiny-bpe.gguf"),
        "{err}"
    );
    let mut c = bpe_content(Some("smollm"), true);
    c.metadata
        .insert("tokenizer.ggml.model".into(), Value::String("t5".into()));
    let err = Tokenizer::from_gguf(&c, path).unwrap_err().to_string();
    assert!(err.contains("\"t5\""), "{err}");
    let mut c = bpe_content(Some("smollm"), true);
    c.metadata
        .insert("tokenizer.ggml.token_type".into(), Value::U32(3));
    let err = Tokenizer::from_gguf(&c, path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.token_type"), "{err}");
    let mut c = bpe_content(Some("smollm"), true);
    c.metadata.remove("tokenizer.ggml.tokens");
    let err = Tokenizer::from_gguf(&c, path).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.tokens"), "{err}");
}

#[test]
fn char_level_tokenizer_round_trips_and_saves() {
    use tempering_model::Tokenizer;
    let tok = Tokenizer::char_level("0123456789+-*/()=: \nAnswerMakfom".chars()).unwrap();
    let text = "Make 24 from: 2 3 4\n3*4=12\nAnswer: 3*4*2";
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    assert_eq!(tok.eos_token().map(|e| e.0), Some(1));
    assert_eq!(tok.stop_token_ids()[0], 1);
    assert_eq!(tok.unknown_chars("Make €5 é"), vec!['é', '€']);
    let dir = tempfile::tempdir().unwrap();
    tok.save_hf(dir.path()).unwrap();
    let back = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
    assert_eq!(back.encode(text, false).unwrap(), ids);
    assert_eq!(back.decode(&ids, false).unwrap(), text);
}
