//! Reward specs as a user types them on a command line or in TOML, parsed into a [`RewardSpec`]
//! and built into a [`Verifier`]. The syntax:
//!
//! ```text
//! SPEC  := TERM { ('+' | '-') TERM }          0.8*math_answer + 0.2*format
//! TERM  := [NUMBER '*'] RULE                  a weight, 1 when absent
//! RULE  := NAME [ '(' [ARG {',' ARG}] ')' ]   length_penalty(coef=0.001, target=256)
//! ARG   := [KEY '='] VALUE                    a bare VALUE is the rule's main parameter
//! VALUE := NUMBER | WORD | "text" | 'text'    inside quotes all is verbatim; "" (or '') is one quote
//! ```
//!
//! and one shorthand for a single rule with its main parameter: `NAME=VALUE`, where everything
//! after the first `=` is the value verbatim (`format=^<think>.*</think>` is
//! `format("^<think>.*</think>")`). In TOML a spec is that string, or an array of tables
//! `[[reward]] name = "format"  weight = 0.2  pattern = '...'`. A spec prints back in the canonical
//! form, which parses to the same spec.
//!
//! Knows the rule registry ([`crate::rules`]) and the weighted sum; nothing of learned models.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::compose::WeightedSum;
use crate::error::{Result, RewardError};
use crate::rules;
use crate::scorer::Verifier;

/// A parsed reward spec: a weighted sum of rules, each with its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    pub terms: Vec<RewardTerm>,
}

/// One weighted rule of a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardTerm {
    pub weight: f64,
    pub rule: String,
    pub args: Vec<RewardArg>,
}

/// One argument: `key=value`, or a bare value (`key` = `None`): the rule's main parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewardArg {
    pub key: Option<String>,
    pub value: String,
}

/// What a rule may need from its surroundings beyond the spec: the task of the run, for
/// `task_verifier` when the spec names none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewardContext {
    /// The built-in task the data comes from.
    pub task: Option<String>,
    /// The task level the data was generated at (labels rebuilt problems; verification ignores it).
    pub level: Option<u32>,
}

impl RewardSpec {
    /// Parses `text` (see the module docs for the syntax).
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(RewardError::spec(
                "",
                format!(
                    "empty reward spec; expected e.g. `task_verifier` or `0.8*math_answer+0.2*format`; known rewards: {}",
                    rules::RULE_NAMES.join(", ")
                ),
            ));
        }
        if let Some(term) = shorthand(text) {
            return Ok(RewardSpec { terms: vec![term] });
        }
        let mut p = Parser {
            text,
            pos: 0,
            spec: text,
        };
        let spec = p.spec()?;
        Ok(spec)
    }

    /// Builds the scorer: the rule itself for a single rule of weight 1, else a weighted sum.
    pub fn build(&self, ctx: &RewardContext) -> Result<Box<dyn Verifier>> {
        let mut parts = Vec::with_capacity(self.terms.len());
        for t in &self.terms {
            parts.push((t.weight, rules::build_rule(&t.rule, &t.args, ctx)?));
        }
        if parts.len() == 1 && parts[0].0 == 1.0 {
            return Ok(parts.remove(0).1);
        }
        Ok(Box::new(WeightedSum::new(self.to_string(), parts)?))
    }
}

impl FromStr for RewardSpec {
    type Err = RewardError;
    fn from_str(s: &str) -> Result<Self> {
        RewardSpec::parse(s)
    }
}

/// Parses and builds in one go: what a command does with `--reward SPEC`.
pub fn build_reward(spec: &str, ctx: &RewardContext) -> Result<Box<dyn Verifier>> {
    RewardSpec::parse(spec)?.build(ctx)
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `NAME=VALUE` with no parenthesis before the `=`.
fn shorthand(text: &str) -> Option<RewardTerm> {
    let (name, value) = text.split_once('=')?;
    let name = name.trim();
    let ok = name.starts_with(is_ident_start) && name.chars().all(is_ident);
    ok.then(|| RewardTerm {
        weight: 1.0,
        rule: name.to_string(),
        args: vec![RewardArg {
            key: None,
            value: value.trim().to_string(),
        }],
    })
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
    spec: &'a str,
}

impl Parser<'_> {
    fn err(&self, msg: impl fmt::Display) -> RewardError {
        RewardError::spec(
            self.spec,
            format!(
                "at character {}: {msg}",
                self.text[..self.pos].chars().count() + 1
            ),
        )
    }

    fn skip_ws(&mut self) {
        let rest = &self.text[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.text[self.pos..].chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.pos;
        let rest = &self.text[start..];
        let len = rest.find(|c: char| !f(c)).unwrap_or(rest.len());
        self.pos += len;
        &self.text[start..start + len]
    }

    fn spec(&mut self) -> Result<RewardSpec> {
        let mut terms = Vec::new();
        let mut sign = if self.eat('-') { -1.0 } else { 1.0 };
        loop {
            let mut t = self.term()?;
            t.weight *= sign;
            terms.push(t);
            match self.peek() {
                None => break,
                Some('+') => sign = 1.0,
                Some('-') => sign = -1.0,
                Some('=') => {
                    return Err(
                        self.err("`NAME=VALUE` stands alone; inside a sum write `NAME(\"VALUE\")`")
                    )
                }
                Some(c) => {
                    return Err(self.err(format!("expected `+`, `-` or the end, found `{c}`")))
                }
            }
            self.pos += 1;
        }
        Ok(RewardSpec { terms })
    }

    fn term(&mut self) -> Result<RewardTerm> {
        let weight = match self.peek() {
            Some(c) if c.is_ascii_digit() || c == '.' => {
                let w = self.number()?;
                if !self.eat('*') {
                    return Err(self.err("expected `*` after a weight, as in `0.5*format`"));
                }
                w
            }
            _ => 1.0,
        };
        self.skip_ws();
        let rule = self.take_while(is_ident).to_string();
        if rule.is_empty() || !rule.starts_with(is_ident_start) {
            return Err(self.err(format!(
                "expected a reward name; known rewards: {}",
                rules::RULE_NAMES.join(", ")
            )));
        }
        let mut args = Vec::new();
        if self.eat('(') && !self.eat(')') {
            loop {
                args.push(self.arg()?);
                if self.eat(')') {
                    break;
                }
                if !self.eat(',') {
                    return Err(self.err("expected `,` or `)` in the argument list"));
                }
            }
        }
        Ok(RewardTerm { weight, rule, args })
    }

    fn number(&mut self) -> Result<f64> {
        self.skip_ws();
        let t = self.take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E'));
        let t = t.to_string();
        t.parse::<f64>()
            .ok()
            .filter(|w| w.is_finite())
            .ok_or_else(|| self.err(format!("`{t}` is not a number")))
    }

    fn arg(&mut self) -> Result<RewardArg> {
        self.skip_ws();
        let save = self.pos;
        let key = self.take_while(is_ident).to_string();
        if !key.is_empty() && key.starts_with(is_ident_start) && self.eat('=') {
            let value = self.value()?;
            return Ok(RewardArg {
                key: Some(key),
                value,
            });
        }
        self.pos = save;
        Ok(RewardArg {
            key: None,
            value: self.value()?,
        })
    }

    fn value(&mut self) -> Result<String> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.pos += 1;
                let mut out = String::new();
                let mut chars = self.text[self.pos..].char_indices().peekable();
                while let Some((i, c)) = chars.next() {
                    if c != q {
                        out.push(c);
                    } else if chars.peek().is_some_and(|&(_, n)| n == q) {
                        // A doubled quote is one quote character.
                        out.push(q);
                        chars.next();
                    } else {
                        self.pos += i + 1;
                        return Ok(out);
                    }
                }
                self.pos = self.text.len();
                Err(self.err(format!("unterminated quoted value (missing closing {q})")))
            }
            _ => {
                let v = self
                    .take_while(|c| {
                        !matches!(c, ',' | ')' | '(' | '"' | '\'') && !c.is_whitespace()
                    })
                    .to_string();
                if v.is_empty() {
                    return Err(self.err(
                        "expected a value; quote values holding spaces, commas or parentheses",
                    ));
                }
                Ok(v)
            }
        }
    }
}

impl fmt::Display for RewardSpec {
    /// The canonical form: `0.8*math_answer + 0.2*format("^<think>")`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.terms.iter().enumerate() {
            let w = if i == 0 {
                if t.weight < 0.0 {
                    f.write_str("-")?;
                }
                t.weight.abs()
            } else {
                f.write_str(if t.weight < 0.0 { " - " } else { " + " })?;
                t.weight.abs()
            };
            if w != 1.0 {
                write!(f, "{w}*")?;
            }
            write!(f, "{t}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RewardTerm {
    /// The rule and its arguments, without the weight.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rule)?;
        if self.args.is_empty() {
            return Ok(());
        }
        f.write_str("(")?;
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if let Some(k) = &a.key {
                write!(f, "{k}=")?;
            }
            write!(f, "{}", quote_if_needed(&a.value))?;
        }
        f.write_str(")")
    }
}

fn quote_if_needed(v: &str) -> String {
    let bare = !v.is_empty()
        && !v
            .chars()
            .any(|c| matches!(c, ',' | ')' | '(' | '"' | '\'' | '=') || c.is_whitespace());
    if bare {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('"', "\"\""))
    }
}

impl Serialize for RewardSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A spec in a config file: the string form, or a list of `{ name, weight, ...args }` tables.
#[derive(Deserialize)]
#[serde(untagged)]
enum SpecInConfig {
    Text(String),
    Tables(Vec<BTreeMap<String, serde_json::Value>>),
}

impl<'de> Deserialize<'de> for RewardSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        match SpecInConfig::deserialize(d)? {
            SpecInConfig::Text(t) => RewardSpec::parse(&t).map_err(D::Error::custom),
            SpecInConfig::Tables(tables) => tables
                .into_iter()
                .enumerate()
                .map(|(i, table)| {
                    term_from_table(table).map_err(|m| format!("reward #{}: {m}", i + 1))
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map(|terms| RewardSpec { terms })
                .map_err(D::Error::custom),
        }
    }
}

fn term_from_table(
    mut table: BTreeMap<String, serde_json::Value>,
) -> std::result::Result<RewardTerm, String> {
    use serde_json::Value;
    let rule = match table.remove("name") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(format!(
                "expected `name = \"...\"`, one of: {}",
                rules::RULE_NAMES.join(", ")
            ))
        }
    };
    let weight = match table.remove("weight") {
        None => 1.0,
        Some(Value::Number(n)) => n.as_f64().ok_or("`weight` must be a number")?,
        Some(_) => return Err(format!("{rule}: `weight` must be a number")),
    };
    let args = table
        .into_iter()
        .map(|(key, v)| {
            let value = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!(
                        "{rule}: `{key}` must be a string, number or boolean, not {other}"
                    ))
                }
            };
            Ok(RewardArg {
                key: Some(key),
                value,
            })
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(RewardTerm { weight, rule, args })
}
