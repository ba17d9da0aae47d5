//! Text to token ids for the backend: the [`TextEncoder`] trait and its implementation for the
//! model layer's tokenizer. Strategies work on text (steps, votes, critiques); backends take ids.
//! Knows nothing of strategies.

/// Turns a prompt text into the token ids a backend takes.
pub trait TextEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String>;
}

/// A model's tokenizer; `add_special_tokens` follows the model's BOS rule (as `temper generate`
/// does for plain prompts).
pub struct TokenizerEncoder<'a> {
    pub tokenizer: &'a tempering_model::Tokenizer,
    pub add_special_tokens: bool,
}

impl TextEncoder for TokenizerEncoder<'_> {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, self.add_special_tokens)
            .map_err(|e| e.to_string())
    }
}
