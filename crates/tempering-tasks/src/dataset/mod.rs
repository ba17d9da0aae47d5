//! Datasets in TRL's column conventions: rows read from JSONL or Parquet as JSON maps, and typed views
//! for each kind of training data (SFT, preference, unpaired preference, stepwise supervision, RL
//! prompts) with errors that name the file, the line and the column. Knows nothing of tokenizers, chat
//! templates or trainers: conversations stay lists of messages here.

#[cfg(feature = "parquet")]
mod parquet;

use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, TaskError};

/// One dataset row: column name to value.
pub type Row = serde_json::Map<String, Value>;

/// Reads a JSONL file: one JSON object per line, blank lines skipped. A malformed line is an error naming
/// the file and line; a file without rows is an error naming the file.
pub fn read_jsonl(path: &Path) -> Result<Vec<Row>> {
    Ok(read_jsonl_numbered(path)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Like [`read_jsonl`], each row with its 1-based line number.
pub fn read_jsonl_numbered(path: &Path) -> Result<Vec<(usize, Row)>> {
    let file = std::fs::File::open(path).map_err(|e| TaskError::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| TaskError::Parse {
            path: path.to_path_buf(),
            line: line_no,
            msg: format!("cannot read the line: {e}"),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| TaskError::Parse {
            path: path.to_path_buf(),
            line: line_no,
            msg: format!("malformed JSON: {e}"),
        })?;
        match value {
            Value::Object(map) => rows.push((line_no, map)),
            other => {
                return Err(TaskError::Parse {
                    path: path.to_path_buf(),
                    line: line_no,
                    msg: format!("expected a JSON object, found {}", kind(&other)),
                })
            }
        }
    }
    if rows.is_empty() {
        return Err(TaskError::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    Ok(rows)
}

/// Reads a Parquet file into the same row maps as [`read_jsonl`]: strings, booleans, integers, floats,
/// lists and structs (so `list<struct<role, content>>` becomes a list of message objects). Binary values
/// that are not UTF-8 (images, audio) read as null; dates, times and decimals as their text.
#[cfg(feature = "parquet")]
pub fn read_parquet(path: &Path) -> Result<Vec<Row>> {
    Ok(parquet::read_numbered(path)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Rows of a `.jsonl`/`.ndjson` or `.parquet` file, chosen by extension, each with its 1-based line (JSONL)
/// or row (Parquet) number.
pub fn read_rows_numbered(path: &Path) -> Result<Vec<(usize, Row)>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jsonl" | "ndjson" => read_jsonl_numbered(path),
        #[cfg(feature = "parquet")]
        "parquet" => parquet::read_numbered(path),
        #[cfg(not(feature = "parquet"))]
        "parquet" => Err(TaskError::format(
            path,
            "Parquet support is not compiled in (feature `parquet` of tempering-tasks)",
        )),
        _ => Err(TaskError::format(
            path,
            format!("unknown dataset extension `{ext}`; expected .jsonl, .ndjson or .parquet"),
        )),
    }
}

/// Rows of a JSONL or Parquet file, chosen by extension.
pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    Ok(read_rows_numbered(path)?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A prompt or completion in TRL's plain form (a string) or conversational form (a list of messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextOrChat {
    Text(String),
    Chat(Vec<Message>),
}

impl TextOrChat {
    pub fn is_chat(&self) -> bool {
        matches!(self, TextOrChat::Chat(_))
    }
}

/// A supervised fine-tuning example in one of TRL's three forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SftExample {
    Text {
        text: String,
    },
    PromptCompletion {
        prompt: TextOrChat,
        completion: TextOrChat,
    },
    Messages {
        messages: Vec<Message>,
    },
}

/// A paired preference: one prompt, a chosen and a rejected completion. Rows without a `prompt` column
/// (TRL's implicit-prompt form) get the longest common prefix of `chosen` and `rejected` as prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreferenceExample {
    pub prompt: TextOrChat,
    pub chosen: TextOrChat,
    pub rejected: TextOrChat,
}

/// An unpaired preference (KTO): one completion labelled desirable (`true`) or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpairedExample {
    pub prompt: TextOrChat,
    pub completion: TextOrChat,
    pub label: bool,
}

/// Stepwise supervision (process reward models): one label per reasoning step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepwiseExample {
    pub prompt: String,
    pub completions: Vec<String>,
    pub labels: Vec<bool>,
}

/// A prompt for online RL, with its reference answer when the dataset names an answer column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RlPrompt {
    pub prompt: TextOrChat,
    pub answer: Option<String>,
}

/// Where a row came from, for errors.
#[derive(Clone, Copy)]
struct Loc<'a> {
    row: &'a Row,
    path: &'a Path,
    line: usize,
}

impl<'a> Loc<'a> {
    fn missing(&self, column: &str, expected: &str) -> TaskError {
        TaskError::MissingColumn {
            path: self.path.to_path_buf(),
            line: self.line,
            column: column.to_string(),
            expected: expected.to_string(),
            found: self.row.keys().cloned().collect(),
        }
    }

    fn bad(&self, column: &str, expected: &str, found: &Value) -> TaskError {
        TaskError::BadColumn {
            path: self.path.to_path_buf(),
            line: self.line,
            column: column.to_string(),
            expected: expected.to_string(),
            found: kind(found),
        }
    }

    fn get(&self, column: &str, expected: &str) -> Result<&'a Value> {
        self.row
            .get(column)
            .ok_or_else(|| self.missing(column, expected))
    }

    fn string(&self, column: &str, v: &Value) -> Result<String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.bad(column, "a string", other)),
        }
    }

    fn boolean(&self, column: &str, v: &Value) -> Result<bool> {
        // Parquet files written from pandas sometimes hold labels as 0/1 integers.
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(false),
            Value::Number(n) if n.as_u64() == Some(1) => Ok(true),
            other => Err(self.bad(column, "a boolean (or 0/1)", other)),
        }
    }

    fn messages(&self, column: &str, v: &Value) -> Result<Vec<Message>> {
        let Value::Array(items) = v else {
            return Err(self.bad(column, "a list of {role, content} messages", v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let Value::Object(obj) = m else {
                    return Err(self.bad(
                        &format!("{column}[{i}]"),
                        "a {role, content} message",
                        m,
                    ));
                };
                let field = |name: &str| -> Result<String> {
                    let col = format!("{column}[{i}].{name}");
                    match obj.get(name) {
                        Some(Value::String(s)) => Ok(s.clone()),
                        Some(other) => Err(self.bad(&col, "a string", other)),
                        None => Err(self.bad(&col, "a string", &Value::Null)),
                    }
                };
                Ok(Message {
                    role: field("role")?,
                    content: field("content")?,
                })
            })
            .collect()
    }

    fn text_or_chat(&self, column: &str, v: &Value) -> Result<TextOrChat> {
        match v {
            Value::String(s) => Ok(TextOrChat::Text(s.clone())),
            Value::Array(_) => Ok(TextOrChat::Chat(self.messages(column, v)?)),
            other => Err(self.bad(
                column,
                "a string or a list of {role, content} messages",
                other,
            )),
        }
    }

    fn list<T>(
        &self,
        column: &str,
        v: &Value,
        item: impl Fn(&str, &Value) -> Result<T>,
    ) -> Result<Vec<T>> {
        let Value::Array(items) = v else {
            return Err(self.bad(column, "a list", v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, x)| item(&format!("{column}[{i}]"), x))
            .collect()
    }

    /// Conversational and plain parts cannot be mixed within one example.
    fn same_form(&self, parts: &[(&str, &TextOrChat)]) -> Result<()> {
        let (first, f) = parts[0];
        for (name, p) in &parts[1..] {
            if p.is_chat() != f.is_chat() {
                let form = |c: &TextOrChat| {
                    if c.is_chat() {
                        "a list of messages"
                    } else {
                        "a string"
                    }
                };
                return Err(TaskError::BadColumn {
                    path: self.path.to_path_buf(),
                    line: self.line,
                    column: name.to_string(),
                    expected: format!("the same form as `{first}` ({})", form(f)),
                    found: form(p).to_string(),
                });
            }
        }
        Ok(())
    }
}

/// A short description of a JSON value's type, for errors.
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

impl SftExample {
    /// `messages` if present, else `prompt` + `completion`, else `text`.
    pub fn from_row(row: &Row, file: &Path, line: usize) -> Result<Self> {
        let loc = Loc {
            row,
            path: file,
            line,
        };
        if let Some(v) = row.get("messages") {
            return Ok(SftExample::Messages {
                messages: loc.messages("messages", v)?,
            });
        }
        if let Some(p) = row.get("prompt") {
            let prompt = loc.text_or_chat("prompt", p)?;
            let completion = loc.text_or_chat(
                "completion",
                loc.get("completion", "a prompt-completion row needs `completion`")?,
            )?;
            return Ok(SftExample::PromptCompletion { prompt, completion });
        }
        let text = loc.get(
            "text",
            "an SFT row needs `text`, `prompt` and `completion`, or `messages`",
        )?;
        Ok(SftExample::Text {
            text: loc.string("text", text)?,
        })
    }
}

impl PreferenceExample {
    pub fn from_row(row: &Row, file: &Path, line: usize) -> Result<Self> {
        let loc = Loc {
            row,
            path: file,
            line,
        };
        let need = "a preference row needs `chosen` and `rejected` (and usually `prompt`)";
        let chosen = loc.text_or_chat("chosen", loc.get("chosen", need)?)?;
        let rejected = loc.text_or_chat("rejected", loc.get("rejected", need)?)?;
        loc.same_form(&[("chosen", &chosen), ("rejected", &rejected)])?;
        let Some(p) = row.get("prompt") else {
            let (prompt, chosen, rejected) = split_implicit_prompt(chosen, rejected);
            return Ok(PreferenceExample {
                prompt,
                chosen,
                rejected,
            });
        };
        let prompt = loc.text_or_chat("prompt", p)?;
        loc.same_form(&[
            ("prompt", &prompt),
            ("chosen", &chosen),
            ("rejected", &rejected),
        ])?;
        Ok(PreferenceExample {
            prompt,
            chosen,
            rejected,
        })
    }
}

/// TRL's `extract_prompt`: the longest common prefix of the two sides becomes the prompt (whole messages
/// for conversations; for text, a space just before the point of difference stays with the completions).
fn split_implicit_prompt(
    chosen: TextOrChat,
    rejected: TextOrChat,
) -> (TextOrChat, TextOrChat, TextOrChat) {
    match (chosen, rejected) {
        (TextOrChat::Chat(c), TextOrChat::Chat(r)) => {
            let n = c.iter().zip(&r).take_while(|(a, b)| a == b).count();
            (
                TextOrChat::Chat(c[..n].to_vec()),
                TextOrChat::Chat(c[n..].to_vec()),
                TextOrChat::Chat(r[n..].to_vec()),
            )
        }
        (TextOrChat::Text(c), TextOrChat::Text(r)) => {
            let mut n = c
                .char_indices()
                .zip(r.chars())
                .find(|((_, a), b)| a != b)
                .map(|((i, _), _)| i)
                .unwrap_or_else(|| c.len().min(r.len()));
            // Keep whole characters on both sides: the shorter string may end mid-way.
            while !c.is_char_boundary(n) || !r.is_char_boundary(n) {
                n -= 1;
            }
            if n > 0 && c[..n].ends_with(' ') {
                n -= 1;
            }
            (
                TextOrChat::Text(c[..n].to_string()),
                TextOrChat::Text(c[n..].to_string()),
                TextOrChat::Text(r[n..].to_string()),
            )
        }
        // from_row checked that both sides have the same form.
        (c, r) => (TextOrChat::Text(String::new()), c, r),
    }
}

impl UnpairedExample {
    pub fn from_row(row: &Row, file: &Path, line: usize) -> Result<Self> {
        let loc = Loc {
            row,
            path: file,
            line,
        };
        let need = "an unpaired preference row needs `prompt`, `completion` and `label`";
        let prompt = loc.text_or_chat("prompt", loc.get("prompt", need)?)?;
        let completion = loc.text_or_chat("completion", loc.get("completion", need)?)?;
        loc.same_form(&[("prompt", &prompt), ("completion", &completion)])?;
        let label = loc.boolean("label", loc.get("label", need)?)?;
        Ok(UnpairedExample {
            prompt,
            completion,
            label,
        })
    }
}

impl StepwiseExample {
    pub fn from_row(row: &Row, file: &Path, line: usize) -> Result<Self> {
        let loc = Loc {
            row,
            path: file,
            line,
        };
        let need = "a stepwise row needs `prompt`, `completions` and `labels`";
        let prompt = loc.string("prompt", loc.get("prompt", need)?)?;
        let completions = loc.list("completions", loc.get("completions", need)?, |c, v| {
            loc.string(c, v)
        })?;
        let labels = loc.list("labels", loc.get("labels", need)?, |c, v| loc.boolean(c, v))?;
        if completions.is_empty() || completions.len() != labels.len() {
            return Err(TaskError::BadColumn {
                path: file.to_path_buf(),
                line,
                column: "labels".to_string(),
                expected: format!(
                    "one label per step ({} steps in `completions`, at least one)",
                    completions.len()
                ),
                found: format!("{} labels", labels.len()),
            });
        }
        Ok(StepwiseExample {
            prompt,
            completions,
            labels,
        })
    }
}

impl RlPrompt {
    /// `answer_column`: the column holding the reference answer (strings or numbers), if any.
    pub fn from_row(
        row: &Row,
        answer_column: Option<&str>,
        file: &Path,
        line: usize,
    ) -> Result<Self> {
        let loc = Loc {
            row,
            path: file,
            line,
        };
        let prompt = loc.text_or_chat("prompt", loc.get("prompt", "an RL row needs `prompt`")?)?;
        let answer = match answer_column {
            None => None,
            Some(col) => {
                let v = loc.get(col, "the answer column given for this dataset")?;
                Some(match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => return Err(loc.bad(col, "a string or a number", other)),
                })
            }
        };
        Ok(RlPrompt { prompt, answer })
    }
}

fn load<T>(path: &Path, f: impl Fn(&Row, usize) -> Result<T>) -> Result<Vec<T>> {
    read_rows_numbered(path)?
        .iter()
        .map(|(line, row)| f(row, *line))
        .collect()
}

pub fn load_sft(path: &Path) -> Result<Vec<SftExample>> {
    load(path, |r, l| SftExample::from_row(r, path, l))
}

pub fn load_preference(path: &Path) -> Result<Vec<PreferenceExample>> {
    load(path, |r, l| PreferenceExample::from_row(r, path, l))
}

pub fn load_unpaired(path: &Path) -> Result<Vec<UnpairedExample>> {
    load(path, |r, l| UnpairedExample::from_row(r, path, l))
}

pub fn load_stepwise(path: &Path) -> Result<Vec<StepwiseExample>> {
    load(path, |r, l| StepwiseExample::from_row(r, path, l))
}

pub fn load_rl_prompts(path: &Path, answer_column: Option<&str>) -> Result<Vec<RlPrompt>> {
    load(path, |r, l| RlPrompt::from_row(r, answer_column, path, l))
}
