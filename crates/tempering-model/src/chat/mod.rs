//! Chat templates: Jinja sources from HF tokenizer configs (or GGUF metadata) rendered with minijinja
//! exactly as HF transformers' `apply_chat_template(..., tokenize=False)` renders them.
//!
//! The environment mirrors the one transformers builds: `trim_blocks` and `lstrip_blocks` on, no
//! trailing newline kept, loop controls, Python string and dict methods, the `raise_exception(msg)` and
//! `strftime_now(fmt)` globals, a `tojson` filter that writes what Python's `json.dumps` writes, and the
//! `{% generation %}` block (rendered transparently, as HF does when no assistant mask is asked for).
//! Values print as Python prints them (`True`, `None`, `['a', 1]`). That compatibility layer lives in
//! [`jinja_compat`]; this module holds the template: where it is read from, the variables it is
//! rendered with, and the limits it is rendered under.
//!
//! A template comes from a model directory, which may not be trusted: rendering runs under a fuel
//! budget (minijinja counts the instructions it executes), a cap on the output's size, a wall-clock
//! deadline and a cap on the memory it holds ([`RenderLimits`]). A template that loops or grows past
//! them ends with [`ModelError::TemplateLimit`] naming the template, never a hang or an
//! out-of-memory abort. The memory cap (and the deadline on a rendering that writes nothing) needs
//! [`RenderMemoryCap`] as the process's global allocator, as the `temper` binary has it: the
//! rendering then runs on a thread of its own, which is abandoned, parked, when it goes past a bound.
//!
//! This module turns messages into a prompt string and nothing else: it knows nothing of tokenizers,
//! token ids, models or where a conversation comes from.

mod jinja_compat;
mod memory_cap;

pub use memory_cap::{installed as memory_cap_installed, RenderMemoryCap};

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use minijinja::{Environment, Error as JinjaError, ErrorKind, Value};

use crate::error::{ModelError, Result, TemplateLimit};

/// One turn of a conversation, in the OpenAI / TRL `messages` form.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Name under which the compiled template lives in its environment (shown in error messages).
const TEMPLATE_NAME: &str = "chat_template";

/// The bounds one rendering runs under. The defaults leave real templates far inside them (a
/// ChatML or Llama-3 template spends tens of instructions per message) and stop a hostile one
/// within about a second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenderLimits {
    /// Instructions minijinja may execute (its "fuel"); a loop's body costs a few per iteration.
    pub fuel: u64,
    /// Bytes of rendered output.
    pub max_output_bytes: usize,
    /// Wall-clock time, checked each time the template writes output and, with the memory cap
    /// installed, by the caller waiting on the rendering thread.
    pub max_duration: Duration,
    /// Bytes the rendering may hold at once (its values, strings and output), enforced where
    /// [`RenderMemoryCap`] is the global allocator.
    pub max_memory_bytes: usize,
}

impl Default for RenderLimits {
    fn default() -> Self {
        RenderLimits {
            fuel: 10_000_000,
            max_output_bytes: 16 << 20,
            max_duration: Duration::from_secs(10),
            max_memory_bytes: 512 << 20,
        }
    }
}

/// A compiled chat template plus the special-token strings it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// What errors call the template: the file it was read from, or `chat template`.
    origin: String,
    limits: RenderLimits,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source", &self.source)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("origin", &self.origin)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Clone for ChatTemplate {
    fn clone(&self) -> Self {
        ChatTemplate {
            env: self.env.clone(),
            source: self.source.clone(),
            bos_token: self.bos_token.clone(),
            eos_token: self.eos_token.clone(),
            origin: self.origin.clone(),
            limits: self.limits,
        }
    }
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token` / `eos_token` become the template variables of the same name
    /// (left undefined when `None`, as HF leaves them when the tokenizer has no such token).
    /// A syntax error is reported with its line number and the text of that line. Renders under
    /// [`RenderLimits::default`]; errors call it `chat template` until [`Self::named`] says more.
    pub fn new(
        source: impl Into<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Self> {
        let source = source.into();
        let compiled = jinja_compat::rewrite_generation_blocks(&source);
        let limits = RenderLimits::default();
        let mut env = jinja_compat::environment();
        env.set_fuel(Some(limits.fuel));
        env.add_template_owned(TEMPLATE_NAME, compiled)
            .map_err(|e| ModelError::Template(describe_compile_error(&e, &source)))?;
        Ok(ChatTemplate {
            env,
            source,
            bos_token,
            eos_token,
            origin: "chat template".to_string(),
            limits,
        })
    }

    /// The same template, called `origin` in errors (the file it came from).
    pub fn named(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// The same template, rendered under `limits`.
    pub fn with_limits(mut self, limits: RenderLimits) -> Self {
        self.env.set_fuel(Some(limits.fuel));
        self.limits = limits;
        self
    }

    /// What errors call this template.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The bounds each rendering runs under.
    pub fn limits(&self) -> RenderLimits {
        self.limits
    }

    /// Reads the chat template of an HF model directory: `chat_template.jinja` when present (newer
    /// transformers save it there), else `tokenizer_config.json`'s `chat_template`, either a string
    /// or a list of `{name, template}` where the one named `default` wins. BOS/EOS strings come from
    /// `tokenizer_config.json` (plain strings or `{content: ..}` added-token objects), falling back
    /// to `special_tokens_map.json`. `Ok(None)` when the directory has no chat template.
    pub fn from_hf_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json_if_exists(&config_path)?;
        let special_path = dir.join("special_tokens_map.json");
        let special = read_json_if_exists(&special_path)?;

        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            let text =
                std::fs::read_to_string(&jinja_path).map_err(|e| ModelError::io(&jinja_path, e))?;
            Some((text, &jinja_path))
        } else {
            match config.as_ref().and_then(|c| c.get("chat_template")) {
                None | Some(serde_json::Value::Null) => None,
                Some(value) => Some((
                    template_from_config_value(value, &config_path)?,
                    &config_path,
                )),
            }
        };
        let Some((source, origin)) = source else {
            return Ok(None);
        };

        let token = |key: &str| -> Result<Option<String>> {
            if let Some(v) = config.as_ref().and_then(|c| c.get(key)) {
                if !v.is_null() {
                    return token_string(v, &config_path, key).map(Some);
                }
            }
            match special.as_ref().and_then(|c| c.get(key)) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => token_string(v, &special_path, key).map(Some),
            }
        };
        let bos = token("bos_token")?;
        let eos = token("eos_token")?;
        let origin = origin.display().to_string();
        Self::new(source, bos, eos).map(|t| Some(t.named(origin)))
    }

    /// The Jinja source as given (before any internal rewriting).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS string the template sees as `bos_token`, if any.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS string the template sees as `eos_token`, if any.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// Renders a conversation. Like transformers, `tools` and `documents` are passed as `None`.
    /// A `raise_exception(msg)` in the template becomes `ModelError::Template` carrying `msg`; a
    /// rendering past [`Self::limits`] stops with `ModelError::TemplateLimit`.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        if !memory_cap::installed() {
            return self.render_here(messages, add_generation_prompt);
        }
        let budget = memory_cap::Budget::new(self.limits.max_memory_bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        let (this, messages, thread_budget) = (self.clone(), messages.to_vec(), budget.clone());
        std::thread::Builder::new()
            .name("chat-template".into())
            // Deep template recursion must meet minijinja's own depth limit, not the stack's end.
            .stack_size(16 << 20)
            .spawn(move || {
                let guard = memory_cap::BudgetGuard::enter(&thread_budget);
                let rendered = this.render_here(&messages, add_generation_prompt);
                drop(guard);
                let _ = tx.send(rendered);
            })
            .map_err(|e| {
                ModelError::Template(format!("{}: cannot start rendering: {e}", self.origin))
            })?;
        let deadline = Instant::now() + self.limits.max_duration;
        let limit = loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(rendered) => return rendered,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(ModelError::Template(format!(
                        "{}: rendering failed (its thread panicked)",
                        self.origin
                    )))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if budget.exceeded() {
                        break TemplateLimit::Memory(self.limits.max_memory_bytes);
                    }
                    if Instant::now() > deadline {
                        break TemplateLimit::Duration(self.limits.max_duration);
                    }
                }
            }
        };
        // The rendering thread is left behind: parked for good past the memory cap, or running
        // on until its fuel ends past the deadline.
        Err(ModelError::TemplateLimit {
            template: self.origin.clone(),
            limit,
        })
    }

    /// Renders on the calling thread, under every limit but memory (and a deadline checked only
    /// when output is written).
    fn render_here(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ModelError::Template(e.to_string()))?;
        let mut vars: Vec<(&str, Value)> = vec![
            ("messages", Value::from_serialize(messages)),
            ("tools", Value::from(())),
            ("documents", Value::from(())),
            ("add_generation_prompt", Value::from(add_generation_prompt)),
        ];
        if let Some(bos) = &self.bos_token {
            vars.push(("bos_token", Value::from(bos.as_str())));
        }
        if let Some(eos) = &self.eos_token {
            vars.push(("eos_token", Value::from(eos.as_str())));
        }
        let ctx: Value = vars.into_iter().collect();
        let mut out = CappedOutput {
            buf: Vec::new(),
            max_bytes: self.limits.max_output_bytes,
            deadline: Instant::now() + self.limits.max_duration,
            max_duration: self.limits.max_duration,
            hit: None,
        };
        let rendered = template.render_captured_to(ctx, &mut out).map(|_| ());
        let limit = match (&rendered, out.hit) {
            (_, Some(hit)) => Some(hit),
            (Err(e), None) if e.kind() == ErrorKind::OutOfFuel => {
                Some(TemplateLimit::Fuel(self.limits.fuel))
            }
            _ => None,
        };
        if let Some(limit) = limit {
            return Err(ModelError::TemplateLimit {
                template: self.origin.clone(),
                limit,
            });
        }
        rendered.map_err(|e| ModelError::Template(describe_render_error(&e, &self.source)))?;
        String::from_utf8(out.buf).map_err(|_| {
            ModelError::Template(format!("{}: rendered text is not UTF-8", self.origin))
        })
    }
}

/// The writer a rendering goes to: refuses to grow past `max_bytes` or to write after `deadline`,
/// and remembers which of the two stopped it (minijinja reports only that a write failed).
struct CappedOutput {
    buf: Vec<u8>,
    max_bytes: usize,
    deadline: Instant,
    max_duration: Duration,
    hit: Option<TemplateLimit>,
}

impl io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max_bytes {
            self.hit = Some(TemplateLimit::OutputBytes(self.max_bytes));
        } else if Instant::now() > self.deadline {
            self.hit = Some(TemplateLimit::Duration(self.max_duration));
        }
        if self.hit.is_some() {
            return Err(io::Error::other("chat template rendering limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `chat_template` from `tokenizer_config.json`: a string, or a list of `{name, template}`.
fn template_from_config_value(value: &serde_json::Value, path: &Path) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Array(items) => {
            let mut named = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let name = item.get("name").and_then(|v| v.as_str());
                let template = item.get("template").and_then(|v| v.as_str());
                match (name, template) {
                    (Some(n), Some(t)) => named.push((n, t)),
                    _ => {
                        return Err(ModelError::format(
                            path,
                            format!(
                                "chat_template[{i}]: expected an object with string fields `name` and `template`"
                            ),
                        ))
                    }
                }
            }
            match named.iter().find(|(n, _)| *n == "default") {
                Some((_, t)) => Ok((*t).to_string()),
                None => {
                    let names: Vec<&str> = named.iter().map(|(n, _)| *n).collect();
                    Err(ModelError::format(
                        path,
                        format!(
                            "chat_template: several templates ({}) and none named `default`",
                            names.join(", ")
                        ),
                    ))
                }
            }
        }
        _ => Err(ModelError::format(
            path,
            "chat_template: expected a string or a list of {name, template}",
        )),
    }
}

/// A special token given as a string or as an added-token object `{"content": "..", ..}`.
fn token_string(value: &serde_json::Value, path: &Path, key: &str) -> Result<String> {
    match value {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Object(map) => match map.get("content") {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(ModelError::format(
                path,
                format!("`{key}`: added-token object without a string `content`"),
            )),
        },
        _ => Err(ModelError::format(
            path,
            format!("`{key}`: expected a string or an object with `content`"),
        )),
    }
}

fn read_json_if_exists(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))
}

/// `line N: detail` followed by the offending line of the template.
fn describe_compile_error(err: &JinjaError, source: &str) -> String {
    let detail = err.detail().unwrap_or("invalid template");
    match err.line() {
        Some(line) => {
            let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
            format!(
                "syntax error ({}) at template line {line}: {detail}\n  {line} | {text}",
                err.kind()
            )
        }
        None => format!("syntax error ({}): {detail}", err.kind()),
    }
}

fn describe_render_error(err: &JinjaError, source: &str) -> String {
    if let Some(msg) = jinja_compat::raised_message(err) {
        return format!("template raised an exception: {msg}");
    }
    let detail = err.detail().unwrap_or("render failed");
    match err.line() {
        Some(line) => {
            let text = source.lines().nth(line.saturating_sub(1)).unwrap_or("");
            format!(
                "render error ({}) at template line {line}: {detail}\n  {line} | {text}",
                err.kind()
            )
        }
        None => format!("render error ({}): {detail}", err.kind()),
    }
}
