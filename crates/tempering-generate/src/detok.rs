//! Text of a completion as it grows: incremental detokenisation (a token may end inside a UTF-8
//! character, and some decoders treat a sequence's first token specially, so each step decodes a
//! short window and keeps only the new, complete text), stop strings found across token boundaries,
//! and the part of the text safe to stream. Knows the tokenizer's `decode` only: nothing of models
//! or sampling.

use tempering_model::Tokenizer;

use crate::error::Result;

pub(crate) struct TextTracker {
    prefix_offset: usize,
    read_offset: usize,
    text: String,
    streamed: usize,
    stops: Vec<String>,
    max_stop: usize,
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl TextTracker {
    pub(crate) fn new(stops: &[String]) -> Self {
        TextTracker {
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            streamed: 0,
            stops: stops.to_vec(),
            max_stop: stops.iter().map(|s| s.len()).max().unwrap_or(0),
        }
    }

    /// Takes in the text of `ids` (all text tokens so far, the newest last). Returns the earliest
    /// stop string now present in the text, as (byte offset, index into the stop list).
    pub(crate) fn push(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<Option<(usize, usize)>> {
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset], false)?;
        let full = tok.decode(&ids[self.prefix_offset..], false)?;
        // A trailing U+FFFD means the last token ends inside a character: wait for the rest.
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') {
            return Ok(None);
        }
        let before = self.text.len();
        match full.get(prefix.len()..) {
            Some(delta) if full.starts_with(&prefix) => self.text.push_str(delta),
            // The window decoded differently from its prefix: take the window's text whole.
            _ => {
                let keep = self.text.len().saturating_sub(prefix.len());
                self.text.truncate(floor_boundary(&self.text, keep));
                self.text.push_str(&full);
            }
        }
        self.prefix_offset = self.read_offset;
        self.read_offset = ids.len();
        Ok(self.find_stop(before))
    }

    /// Appends whatever text is still held back (an incomplete character at the very end).
    pub(crate) fn flush(&mut self, tok: &Tokenizer, ids: &[u32]) -> Result<Option<(usize, usize)>> {
        if self.read_offset >= ids.len() {
            return Ok(None);
        }
        let prefix = tok.decode(&ids[self.prefix_offset..self.read_offset], false)?;
        let full = tok.decode(&ids[self.prefix_offset..], false)?;
        let before = self.text.len();
        if let Some(delta) = full.get(prefix.len()..) {
            self.text.push_str(delta);
        }
        self.read_offset = ids.len();
        Ok(self.find_stop(before))
    }

    fn find_stop(&self, before: usize) -> Option<(usize, usize)> {
        if self.stops.is_empty() {
            return None;
        }
        // A stop string completed by the new text starts at most max_stop - 1 bytes before it.
        let from = floor_boundary(&self.text, before.saturating_sub(self.max_stop - 1));
        self.stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.text[from..].find(s.as_str()).map(|p| (from + p, i)))
            .min()
    }

    /// Cuts the text at byte `at` (before a matched stop string).
    pub(crate) fn truncate(&mut self, at: usize) {
        self.text.truncate(at);
        self.streamed = self.streamed.min(at);
    }

    /// Text not yet streamed that can no longer turn out to be part of a stop string (all of it
    /// once `finished`).
    pub(crate) fn take_stream(&mut self, finished: bool) -> &str {
        let end = if finished || self.max_stop == 0 {
            self.text.len()
        } else {
            floor_boundary(
                &self.text,
                self.text.len().saturating_sub(self.max_stop - 1),
            )
        };
        let start = self.streamed.min(end);
        self.streamed = end.max(self.streamed);
        &self.text[start..end]
    }

    pub(crate) fn into_text(self) -> String {
        self.text
    }
}
