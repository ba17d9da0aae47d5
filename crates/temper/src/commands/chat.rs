//! `temper chat`: an interactive conversation in the terminal, streaming the model's replies.
//! Holds the conversation and the slash commands; the engine generates.

use super::model_arg::ModelPath;
use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tempering_generate::{render_chat, Backend, GenEvent, GenRequest};
use tempering_model::ChatMessage;

use crate::commands::generate::{check_flags, load_engine_with_config, GenDefaults, SamplingArgs};
use crate::commands::model::DeviceArgs;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelPath,
    /// A PEFT LoRA adapter directory to run on top of the model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

const HELP: &str = "commands: /reset (forget the conversation), /system TEXT (set the system message and reset), /quit";

pub fn chat(a: ChatArgs) -> Result<()> {
    check_flags(&a.sampling.params())?;
    let (engine, template, gen_config) =
        load_engine_with_config(a.model.path(), a.adapter.as_deref(), &a.device, 1)?;
    // As transformers and vLLM: the model's own sampling settings unless a flag says otherwise.
    let defaults = GenDefaults::from_config(gen_config.as_ref());
    let mut params = a.sampling.params_over(&defaults);
    check_flags(&params)?;
    eprintln!(
        "sampling: temperature {}, top_p {}, top_k {}, min_p {} (defaults: {})",
        params.temperature,
        params.top_p,
        params.top_k,
        params.min_p,
        defaults.describe()
    );
    let template = template
        .with_context(|| format!("{}: chat needs a chat template", a.model.path().display()))?;
    let context = engine.model().config.max_position_embeddings;
    let mut system = a.system.clone();
    let fresh = |system: &Option<String>| -> Vec<ChatMessage> {
        system
            .iter()
            .map(|s| ChatMessage::new("system", s.clone()))
            .collect()
    };
    let mut messages = fresh(&system);
    eprintln!("{HELP}");
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    let mut turn = 0u64;
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break; // end of input
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                messages = fresh(&system);
                eprintln!("[conversation reset]");
                continue;
            }
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            s if s.starts_with("/system") => {
                let text = s["/system".len()..].trim();
                system = (!text.is_empty()).then(|| text.to_string());
                messages = fresh(&system);
                eprintln!("[system message set; conversation reset]");
                continue;
            }
            s if s.starts_with('/') => {
                eprintln!("unknown command {s}; {HELP}");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", line));
        let text = render_chat(&template, &messages, true)?;
        let ids = engine.tokenizer().encode(&text, false)?;
        if ids.len() >= context {
            messages.pop();
            eprintln!(
                "[the conversation is {} tokens, the model's context is {context}: /reset to start over]",
                ids.len()
            );
            continue;
        }
        // A new stream each turn, so asking again gives a new answer.
        params.seed = a.sampling.seed.wrapping_add(turn);
        turn += 1;
        let req = GenRequest::new(ids, 1, params.clone());
        let out = engine.generate_with(&[req], &mut |ev| {
            if let GenEvent::Token { text, .. } = ev {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        });
        println!();
        let c = out?.remove(0).remove(0);
        messages.push(ChatMessage::new("assistant", c.text));
    }
    Ok(())
}
