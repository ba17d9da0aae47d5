//! The model argument of the inference commands: positional, as they have always taken it, or
//! `--model`, as the training commands and `label-steps` spell it. Knows nothing of what the model
//! is used for.

use std::path::{Path, PathBuf};

use clap::Args;

/// `MODEL` or `--model MODEL`: exactly one of them.
#[derive(Args, Debug, Clone)]
pub struct ModelPath {
    /// The model: an HF model directory or a GGUF file (with --backend, where the command has it,
    /// only its tokenizer and chat template are read). May be given as --model instead.
    #[arg(value_name = "MODEL", required_unless_present = "model_flag")]
    model: Option<PathBuf>,
    /// The model, in the spelling the training commands use (the same as the positional MODEL).
    #[arg(
        long = "model",
        id = "model_flag",
        value_name = "MODEL",
        conflicts_with = "model"
    )]
    model_flag: Option<PathBuf>,
}

impl ModelPath {
    /// The path given, whichever way.
    pub fn path(&self) -> &Path {
        // clap requires exactly one of the two.
        self.model
            .as_deref()
            .or(self.model_flag.as_deref())
            .unwrap_or(Path::new(""))
    }
}
