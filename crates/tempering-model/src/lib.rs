//! Tensors to logits. This crate holds the model configuration, the Llama-family decoder (one
//! implementation for training and cached inference), the fused differentiable ops it is built from,
//! LoRA adapters (PEFT's format), loading and saving of HF safetensors directories and GGUF files,
//! the tokenizer and chat templates, and the workspace's atomic file write (`write_atomic`).
//!
//! Where things live: [`config`] and [`transformer`] (with its fused [`ops`]) compute logits, and
//! the transformer's one gather (`Transformer::hidden_at`, `Transformer::token_logprobs_at`) is how
//! every objective and score head reads hidden states or token log-probabilities at positions;
//! [`weights`] reads and writes tensors (GGUF headers checked first by `gguf_check`), [`loader`] opens
//! a model whatever its format; [`lora`] holds the adapters (`attach` puts them on a model, `peft`
//! reads and writes PEFT's files); [`heads`] the score heads of reward models; [`tokenizer`] the
//! tokenizer (its special tokens, GGUF vocabularies and pre-tokenizers in submodules); [`chat`] the
//! chat template, rendered under limits since it comes from a model directory that may not be
//! trusted, with its Jinja/Python compatibility layer apart.
//!
//! It knows nothing of training loops, datasets, generation strategies or search: those live in the
//! crates above it and reach the model only through the types exported here.

pub mod chat;
pub mod config;
pub mod error;
mod gguf_check;
pub mod heads;
pub mod known;
pub mod loader;
pub mod lora;
pub mod ops;
mod rng;
pub mod tokenizer;
pub mod transformer;
pub mod weights;

pub use chat::{ChatMessage, ChatTemplate, RenderLimits};
pub use config::{Architecture, ModelConfig};
pub use error::{ModelError, Result, TemplateLimit};
pub use heads::{save_classifier, Classifier, ClassifierSave, HeadKind, ScoreHead};
pub use loader::{ModelFiles, ModelFormat, ModelInfo};
pub use lora::{load_peft, save_peft, DropoutRng, LoraConfig, LoraLinear, LoraTarget, PeftAdapter};
pub use tokenizer::Tokenizer;
pub use transformer::{InferenceWeights, KvCache, TokenLayout, Transformer};
pub use weights::{write_atomic, Weights};
