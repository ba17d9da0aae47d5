//! Final answers in free text: where a math answer sits (`\boxed{..}`, `<answer>..</answer>`,
//! `#### x`, `Answer: x`, `the answer is x`, else the last number), what value it denotes
//! (integers, decimals, fractions, `\frac`, thousands separators, signs; units and currency
//! dropped) and whether two answers are equivalent. Exact rationals where the text allows, so `0.75`, `3/4` and `\frac{3}{4}` agree.
//! Used by the `math_answer` rule and by anyone who votes over answers. Knows nothing of scorers.

use std::fmt;

/// How an answer was found in a completion, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSource {
    /// The last `\boxed{..}` (or `\fbox{..}`).
    Boxed,
    /// The whole content of the last `<answer>..</answer>` when it holds none of the markers below
    /// (a marker inside the tag is reported as that marker).
    AnswerTag,
    /// The rest of the line after the last `####` (GSM8K).
    Hashes,
    /// The rest of the line after the first `Answer:` (any case), as the built-in tasks write it.
    Marker,
    /// The rest of the sentence after the last `the answer is`.
    AnswerIs,
    /// The last number anywhere in the text.
    LastNumber,
}

/// An answer found in text: the raw span and how it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted<'a> {
    pub text: &'a str,
    pub source: AnswerSource,
}

/// Finds the final answer of a completion, trying each [`AnswerSource`] in order. `None` when the
/// text holds no marker and no number.
pub fn extract_final_answer(text: &str) -> Option<Extracted<'_>> {
    if let Some(b) = last_boxed(text) {
        return Some(Extracted {
            text: b,
            source: AnswerSource::Boxed,
        });
    }
    if let Some(inner) = answer_tag(text) {
        return marked_answer(inner).or_else(|| {
            (!inner.is_empty()).then_some(Extracted {
                text: inner,
                source: AnswerSource::AnswerTag,
            })
        });
    }
    marked_answer(text).or_else(|| {
        last_number(text).map(|t| Extracted {
            text: t,
            source: AnswerSource::LastNumber,
        })
    })
}

/// The trimmed content of the last `<answer>..</answer>` (to the end when unclosed).
fn answer_tag(text: &str) -> Option<&str> {
    let start = text.rfind("<answer>")? + "<answer>".len();
    let rest = &text[start..];
    Some(rest[..rest.find("</answer>").unwrap_or(rest.len())].trim())
}

/// An answer after `####`, `Answer:` or `the answer is`.
fn marked_answer(text: &str) -> Option<Extracted<'_>> {
    let found = |text, source| Some(Extracted { text, source });
    if let Some(i) = text.rfind("####") {
        let rest = line_after(text, i + 4);
        if !rest.is_empty() {
            return found(rest, AnswerSource::Hashes);
        }
    }
    let lower = text.to_ascii_lowercase();
    if let Some(i) = lower.find("answer:") {
        let rest = line_after(text, i + "answer:".len());
        // `Final Answer: The final answer is 5. I hope it is correct.` (Minerva's layout).
        let rest = match rest.to_ascii_lowercase().find("answer is") {
            Some(j) => sentence_after(&rest[j + "answer is".len()..]),
            None => rest,
        };
        if !rest.is_empty() {
            return found(rest, AnswerSource::Marker);
        }
    }
    if let Some(i) = lower.rfind("the answer is") {
        let rest = sentence_after(line_after(text, i + "the answer is".len()));
        if !rest.is_empty() {
            return found(rest, AnswerSource::AnswerIs);
        }
    }
    None
}

/// The text of a reference answer: what a marker in it points at (a GSM8K solution ending in
/// `#### 72`, a `\boxed{..}` solution), else the whole reference.
pub fn reference_answer(reference: &str) -> &str {
    if let Some(b) = last_boxed(reference) {
        return b;
    }
    if let Some(i) = reference.rfind("####") {
        let rest = line_after(reference, i + 4);
        if !rest.is_empty() {
            return rest;
        }
    }
    reference.trim()
}

/// The rest of a sentence: up to a full stop followed by a space (not a decimal point).
fn sentence_after(s: &str) -> &str {
    let s = s.trim_start_matches([':', ' ']);
    let end = s.find(". ").unwrap_or(s.len());
    s[..end].trim()
}

fn line_after(text: &str, start: usize) -> &str {
    text[start..]
        .split(['\n', '\r'])
        .next()
        .unwrap_or("")
        .trim()
}

/// The content of the last `\boxed{..}` / `\fbox{..}` with nested braces balanced, or the token
/// after `\boxed ` in the brace-less form. `None` when absent or unbalanced.
pub fn last_boxed(text: &str) -> Option<&str> {
    let i = match (text.rfind("\\boxed"), text.rfind("\\fbox")) {
        (Some(a), Some(b)) => a.max(b),
        (a, b) => a.or(b)?,
    };
    let cmd_len = if text[i..].starts_with("\\boxed") {
        6
    } else {
        5
    };
    let rest = &text[i + cmd_len..];
    let trimmed = rest.trim_start();
    if let Some(body) = trimmed.strip_prefix('{') {
        let mut depth = 1usize;
        for (j, c) in body.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(body[..j].trim());
                    }
                }
                _ => {}
            }
        }
        None
    } else if rest.starts_with(' ') {
        let tok = trimmed
            .split(|c: char| c.is_whitespace() || c == '$')
            .next()
            .unwrap_or("");
        (!tok.is_empty()).then_some(tok)
    } else {
        None
    }
}

/// The last number in `text` (with its sign, thousands separators, decimals or a `a/b` fraction).
pub fn last_number(text: &str) -> Option<&str> {
    number_spans(text).last().map(|&(s, e)| &text[s..e])
}

/// Byte spans of the numbers in `text`. A `-` counts as a sign only where it cannot be a binary
/// minus (not after a letter, digit or closing bracket).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts_digits =
            b[i].is_ascii_digit() || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        if !starts_digits
            || (i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1].is_ascii_alphabetic()))
        {
            i += 1;
            continue;
        }
        let Some(len) = plain_number_len(&text[i..]) else {
            i += 1;
            continue;
        };
        let mut start = i;
        let mut end = i + len;
        if let Some(den) = text[end..].strip_prefix('/') {
            if let Some(l) = plain_number_len(den).filter(|_| den.as_bytes()[0].is_ascii_digit()) {
                end += 1 + l;
            }
        }
        let before = text[..start].chars().next_back();
        if matches!(before, Some('-' | '−')) {
            let sign_at = start - before.map_or(0, char::len_utf8);
            let prev = text[..sign_at].chars().next_back();
            if !prev.is_some_and(|c| c.is_alphanumeric() || matches!(c, ')' | ']' | '}')) {
                start = sign_at;
            }
        }
        out.push((start, end));
        i = end;
    }
    out
}

/// Length in bytes of the unsigned decimal at the start of `s`: `1,234.5`, `12`, `.5`, `3.0e-2`.
/// Commas count only in groups of three digits. `None` when `s` does not start with one.
fn plain_number_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let digits = |from: usize| b[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = digits(0);
    if i > 0 && i <= 3 {
        // Thousands groups: `,ddd` not followed by a further digit.
        let mut j = i;
        while b.get(j) == Some(&b',') && digits(j + 1) == 3 {
            j += 4;
        }
        i = j;
    }
    if b.get(i) == Some(&b'.') && digits(i + 1) > 0 {
        i += 1 + digits(i + 1);
    }
    if i == 0 {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
        let d = digits(i + 1 + sign);
        // `3e` followed by a letter is a word, not an exponent.
        if d > 0 && !b.get(i + 1 + sign + d).is_some_and(u8::is_ascii_alphabetic) {
            i += 1 + sign + d;
        }
    }
    Some(i)
}

/// A number as exactly as its text allows: a reduced fraction when it fits `i128`, else a float.
#[derive(Debug, Clone, Copy)]
pub enum Number {
    Exact { num: i128, den: i128 },
    Approx(f64),
}

impl Number {
    fn exact(num: i128, den: i128) -> Option<Number> {
        if den == 0 {
            return None;
        }
        let g = gcd(num.unsigned_abs(), den.unsigned_abs()).max(1) as i128;
        let sign = if den < 0 { -1 } else { 1 };
        Some(Number::Exact {
            num: sign * num / g,
            den: sign * den / g,
        })
    }

    pub fn to_f64(self) -> f64 {
        match self {
            Number::Exact { num, den } => num as f64 / den as f64,
            Number::Approx(x) => x,
        }
    }

    fn neg(self) -> Number {
        match self {
            Number::Exact { num, den } => Number::Exact { num: -num, den },
            Number::Approx(x) => Number::Approx(-x),
        }
    }

    fn div(self, other: Number) -> Option<Number> {
        match (self, other) {
            (Number::Exact { num: a, den: b }, Number::Exact { num: c, den: d }) => {
                match (a.checked_mul(d), b.checked_mul(c)) {
                    (Some(n), Some(m)) => Number::exact(n, m),
                    _ => approx(self.to_f64() / other.to_f64()),
                }
            }
            _ => approx(self.to_f64() / other.to_f64()),
        }
    }
}

fn approx(x: f64) -> Option<Number> {
    x.is_finite().then_some(Number::Approx(x))
}

impl PartialEq for Number {
    /// Exact numbers compare exactly; a float compares with a relative tolerance of 1e-9.
    fn eq(&self, other: &Number) -> bool {
        match (self, other) {
            (Number::Exact { num: a, den: b }, Number::Exact { num: c, den: d }) => {
                a == c && b == d
            }
            _ => {
                let (x, y) = (self.to_f64(), other.to_f64());
                (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1e-300)
            }
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::Exact { num, den: 1 } => write!(f, "{num}"),
            Number::Exact { num, den } => write!(f, "{num}/{den}"),
            Number::Approx(x) => write!(f, "{x}"),
        }
    }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// What an answer denotes: a number, or normalised text when it is not one.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerValue {
    Number(Number),
    Text(String),
}

impl AnswerValue {
    /// A key equal for equivalent answers, for majority votes. Floats are rounded to 9 significant
    /// digits, so votes over floats group what [`answers_equivalent`] would call equal in practice.
    pub fn vote_key(&self) -> String {
        match self {
            AnswerValue::Number(Number::Approx(x)) => format!("{x:.8e}"),
            AnswerValue::Number(n) => n.to_string(),
            AnswerValue::Text(t) => t.clone(),
        }
    }
}

impl fmt::Display for AnswerValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnswerValue::Number(n) => n.fmt(f),
            AnswerValue::Text(t) => f.write_str(t),
        }
    }
}

/// Whether two answer texts denote the same answer (see [`parse_answer`]).
pub fn answers_equivalent(a: &str, b: &str) -> bool {
    parse_answer(a) == parse_answer(b)
}

/// Reads an answer text: a number when it is one (LaTeX wrappers, `$`, currency, a `x =` prefix,
/// a trailing full stop, `%` and units after the number are dropped), else the text with LaTeX
/// spacing and wrappers removed, whitespace dropped and lowercased.
pub fn parse_answer(text: &str) -> AnswerValue {
    let clean = strip_latex_noise(text);
    // `x = 5`: the value is the right-hand side.
    let rhs = match clean.rfind('=') {
        Some(i) if !clean[i + 1..].trim().is_empty() => clean[i + 1..].trim(),
        _ => clean.as_str(),
    };
    if let Some(n) = parse_number_with_unit(rhs) {
        return AnswerValue::Number(n);
    }
    let text: String = clean
        .chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    AnswerValue::Text(text.trim_end_matches('.').to_string())
}

/// Removes math delimiters, spacing commands, `\left`/`\right`, `\text{..}`-style wrappers (keeping
/// their content), `\dfrac`/`\tfrac` spellings and `{,}` thousands separators.
fn strip_latex_noise(text: &str) -> String {
    let mut s = text.trim().to_string();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", " "),
        ("\\$", "$"),
        ("\\%", "%"),
        ("{,}", ","),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("$", ""),
    ] {
        s = s.replace(from, to);
    }
    for wrapper in ["\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox"] {
        s = unwrap_command(&s, wrapper);
    }
    let s = s.trim();
    let s = s.strip_suffix('.').unwrap_or(s);
    s.trim().to_string()
}

/// `\cmd{x}` becomes ` x` (the space keeps `5\text{cm}` a number followed by a unit).
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(cmd) {
        let after = &rest[i + cmd.len()..];
        // `\text` must not match the start of `\textbf`.
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) || !after.starts_with('{') {
            out.push_str(&rest[..i + cmd.len()]);
            rest = after;
            continue;
        }
        match brace_group(after) {
            Some((inner, used)) => {
                out.push_str(&rest[..i]);
                out.push(' ');
                out.push_str(inner);
                rest = &after[used..];
            }
            None => {
                out.push_str(&rest[..i + cmd.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `{inner}rest` -> (inner, bytes used including both braces), braces balanced.
fn brace_group(s: &str) -> Option<(&str, usize)> {
    let body = s.strip_prefix('{')?;
    let mut depth = 1usize;
    for (j, c) in body.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&body[..j], j + 2));
                }
            }
            _ => {}
        }
    }
    None
}

/// A number followed only by a unit (letters, `%`, degrees), possibly after a currency sign.
fn parse_number_with_unit(s: &str) -> Option<Number> {
    let s = s.trim();
    let (n, rest) = parse_signed_number(s)?;
    is_unit(rest).then_some(n)
}

/// Letters, `%` and degrees; squares and cubes of units. Not a second answer (`3 or 4`).
fn is_unit(rest: &str) -> bool {
    if rest.split_whitespace().any(|w| {
        matches!(
            w.to_ascii_lowercase().as_str(),
            "or" | "and" | "to" | "plus" | "minus"
        )
    }) {
        return false;
    }
    let rest = rest
        .trim()
        .replace("^{2}", "")
        .replace("^{3}", "")
        .replace("^2", "")
        .replace("^3", "")
        .replace("^\\circ", "")
        .replace("^{\\circ}", "")
        .replace("\\circ", "")
        .replace("\\%", "");
    rest.chars().all(|c| {
        c.is_alphabetic() || c.is_whitespace() || matches!(c, '%' | '°' | '.' | '\'' | '"')
    })
}

/// A signed number at the start of `s` and what follows it: `-3`, `−1,234.5`, `+2/3`, `$5`,
/// `\frac{3}{4}`, `-\frac{-3}{4}`, `\frac34`.
fn parse_signed_number(s: &str) -> Option<(Number, &str)> {
    let s = s.trim_start();
    let (negative, s) = if let Some(r) = s.strip_prefix('-').or_else(|| s.strip_prefix('−')) {
        (true, r.trim_start())
    } else {
        (false, s.strip_prefix('+').unwrap_or(s).trim_start())
    };
    let s = ["$", "£", "€", "¥"]
        .iter()
        .find_map(|c| s.strip_prefix(c))
        .unwrap_or(s)
        .trim_start();
    let (n, rest) = if let Some(r) = s.strip_prefix("\\frac") {
        parse_frac(r)?
    } else {
        let len = plain_number_len(s)?;
        let mut n = parse_decimal(&s[..len])?;
        let mut rest = &s[len..];
        if let Some(den_text) = rest.strip_prefix('/') {
            let (den, r) = parse_signed_number(den_text)?;
            n = n.div(den)?;
            rest = r;
        }
        (n, rest)
    };
    Some((if negative { n.neg() } else { n }, rest))
}

/// After `\frac`: `{a}{b}` (each a signed number) or the short `34` form (one digit each).
fn parse_frac(s: &str) -> Option<(Number, &str)> {
    let s = s.trim_start();
    let arg = |s: &str| -> Option<(Number, usize)> {
        if s.starts_with('{') {
            let (inner, used) = brace_group(s)?;
            let (n, rest) = parse_signed_number(inner)?;
            rest.trim().is_empty().then_some((n, used))
        } else {
            let c = s.chars().next()?;
            let d = c.to_digit(10)?;
            Some((Number::exact(i128::from(d), 1)?, 1))
        }
    };
    let (num, used) = arg(s)?;
    let s = s[used..].trim_start();
    let (den, used) = arg(s)?;
    Some((num.div(den)?, &s[used..]))
}

/// An unsigned decimal as matched by [`plain_number_len`]: commas dropped, exact when it fits.
fn parse_decimal(s: &str) -> Option<Number> {
    let s: String = s.chars().filter(|&c| c != ',').collect();
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], s[i + 1..].parse::<i32>().ok()?),
        None => (s.as_str(), 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let scale = exp - frac.len() as i32;
    let exact = digits.parse::<i128>().ok().and_then(|m| {
        let p = 10i128.checked_pow(scale.unsigned_abs())?;
        if scale >= 0 {
            Number::exact(m.checked_mul(p)?, 1)
        } else {
            Number::exact(m, p)
        }
    });
    exact.or_else(|| approx(s.parse::<f64>().ok()?))
}
