//! The pre-tokenizers that GGUF's `tokenizer.ggml.pre` names, rebuilt from `tokenizers` parts.
//!
//! Each entry reproduces what llama.cpp's `llm_tokenizer_bpe` (src/llama-vocab.cpp) runs for that
//! name: an ordered list of regexes, each splitting every piece left by the one before it into its
//! matches and the text between them (HF's `Split` with `Isolated` behaviour), then the GPT-2 byte to
//! unicode mapping. Where llama.cpp rewrote a model's original `tokenizer.json` regex into a form
//! `std::regex` accepts, the original regex is used here: the model was trained with it, and the two
//! differ only on characters whose case folding leaves ASCII (such as `ſ` in `'ſ`).

use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::error::{ModelError, Result};

/// GPT-2's regex, as HF's `ByteLevel(use_regex=true)` applies it.
pub(crate) const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's regex (from its `tokenizer.json`).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex (from its `tokenizer.json`): Llama 3's with single digits.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How a byte-level BPE vocabulary named by `tokenizer.ggml.pre` splits text before merging.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreTokenizerSpec {
    /// The family this name belongs to (`gpt2`, `llama3`, `qwen2`, `smollm`, `default`).
    pub family: &'static str,
    /// Regexes applied in order before the GPT-2 regex-free byte mapping.
    pub regexes: Vec<&'static str>,
    /// Whether the final byte-level step also applies the GPT-2 regex.
    pub byte_level_regex: bool,
    /// llama.cpp's `ignore_merges`: a pre-token that is itself in the vocabulary is kept whole.
    pub ignore_merges: bool,
    /// llama.cpp's default for `add_bos` when the GGUF does not say.
    pub add_bos_default: bool,
}

/// Every `tokenizer.ggml.pre` value this module understands, by family.
pub(crate) const KNOWN_NAMES: &[&str] = &[
    "default",
    "gpt-2",
    "phi-2",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "exaone4",
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "pixtral",
    "dbrx",
    "smaug-bpe",
    "qwen2",
    "deepseek-r1-qwen",
    "stablelm2",
    "megrez",
    "hunyuan",
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
];

/// The pre-tokenizer llama.cpp runs for `name` (`None`: the key is absent, which llama.cpp treats as
/// `default` with a warning). Unknown names are an error: a wrong pre-tokenizer silently changes
/// every token id, which is worse than refusing.
pub(crate) fn spec_for(name: Option<&str>) -> std::result::Result<PreTokenizerSpec, String> {
    let spec = |family, regexes: Vec<&'static str>, byte_level_regex, ignore_merges, add_bos| {
        PreTokenizerSpec {
            family,
            regexes,
            byte_level_regex,
            ignore_merges,
            add_bos_default: add_bos,
        }
    };
    let name = match name {
        Some(n) => n,
        None => {
            tracing::warn!(
                "GGUF has no `tokenizer.ggml.pre`: using llama.cpp's `default` pre-tokenizer (tokenization may differ from the original model)"
            );
            "default"
        }
    };
    Ok(match name {
        // LLAMA_VOCAB_PRE_TYPE_DEFAULT.
        "default" => spec(
            "default",
            vec![
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            false,
            false,
            false,
        ),
        // LLAMA_VOCAB_PRE_TYPE_GPT2 / MPT / OLMO / JAIS / TRILLION / GRANITE_DOCLING.
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "trillion" | "granite-docling"
        | "exaone4" => spec("gpt2", vec![], true, false, false),
        // LLAMA_VOCAB_PRE_TYPE_LLAMA3 (ignore_merges, add_bos).
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => {
            spec("llama3", vec![LLAMA3_REGEX], false, true, true)
        }
        // LLAMA_VOCAB_PRE_TYPE_DBRX / SMAUG: the Llama 3 regex without llama3's flags.
        "dbrx" | "smaug-bpe" => spec("llama3", vec![LLAMA3_REGEX], false, false, false),
        // LLAMA_VOCAB_PRE_TYPE_QWEN2 / STABLELM2 / HUNYUAN.
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" | "hunyuan" => {
            spec("qwen2", vec![QWEN2_REGEX], false, false, false)
        }
        // LLAMA_VOCAB_PRE_TYPE_SMOLLM / STARCODER / REFACT / COMMAND_R / CODESHELL / EXAONE /
        // MINERVA: every digit alone, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            spec("smollm", vec![r"\p{N}"], true, false, false)
        }
        other => {
            return Err(format!(
                "GGUF `tokenizer.ggml.pre` = {other:?} is not a pre-tokenizer this build knows; known: {}",
                KNOWN_NAMES.join(", ")
            ))
        }
    })
}

impl PreTokenizerSpec {
    /// The `tokenizers` pre-tokenizer: the regex splits in order, then the byte-level mapping.
    pub(crate) fn build(&self) -> Result<PreTokenizerWrapper> {
        let mut parts: Vec<PreTokenizerWrapper> = Vec::with_capacity(self.regexes.len() + 1);
        for re in &self.regexes {
            let split = Split::new(
                SplitPattern::Regex((*re).to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| ModelError::Tokenizer(format!("pre-tokenizer regex {re:?}: {e}")))?;
            parts.push(split.into());
        }
        parts.push(ByteLevel::new(false, true, self.byte_level_regex).into());
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Sequence::new(parts).into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_name_builds() {
        for name in KNOWN_NAMES {
            let spec = spec_for(Some(name)).expect(name);
            spec.build().expect(name);
        }
    }

    #[test]
    fn unknown_name_is_an_error_naming_it() {
        let err = spec_for(Some("no-such-pre")).unwrap_err();
        assert!(err.contains("no-such-pre"), "{err}");
        assert!(err.contains("smollm"), "{err}");
    }

    #[test]
    fn missing_name_means_default() {
        assert_eq!(spec_for(None).unwrap().family, "default");
    }
}
