//! How text becomes the token ids a reward model reads, for training and scoring alike. An outcome
//! model reads `prompt + completion` followed by EOS (as TRL's reward trainer adds it), scored at
//! the last token; a process model reads the prompt, then each step followed by the step
//! separator, each step tokenised on its own (as TRL's PRM trainer does), scored at each step's
//! last token. Knows the tokenizer; nothing of models.

use tempering_model::Tokenizer;

use crate::error::Result;

/// `prompt + completion` with the tokenizer's special tokens, then EOS unless already last.
pub fn completion_tokens(
    tokenizer: &Tokenizer,
    prompt: &str,
    completion: &str,
) -> Result<Vec<u32>> {
    let mut ids = tokenizer.encode(&format!("{prompt}{completion}"), true)?;
    if let Some((eos, _)) = tokenizer.eos_token() {
        if ids.last() != Some(&eos) {
            ids.push(eos);
        }
    }
    Ok(ids)
}

/// A prompt and its steps as one sequence, with where each step ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTokens {
    pub ids: Vec<u32>,
    /// Tokens of the prompt (with its special tokens): the steps start here.
    pub prompt_len: usize,
    /// Index in `ids` of each step's last token (its separator), one per step.
    pub step_ends: Vec<usize>,
}

/// The prompt (with the tokenizer's special tokens), then each step followed by `separator`.
pub fn step_tokens(
    tokenizer: &Tokenizer,
    prompt: &str,
    steps: &[&str],
    separator: &str,
) -> Result<StepTokens> {
    let mut ids = tokenizer.encode(prompt, true)?;
    let prompt_len = ids.len();
    let mut step_ends = Vec::with_capacity(steps.len());
    for s in steps {
        let piece = tokenizer.encode(&format!("{s}{separator}"), false)?;
        ids.extend(piece);
        // A step that tokenises to nothing (impossible with a non-empty separator) would share
        // the previous end.
        step_ends.push(ids.len().saturating_sub(1));
    }
    Ok(StepTokens {
        ids,
        prompt_len,
        step_ends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ends_sit_on_the_separators() {
        let tok = Tokenizer::char_level("Compute: 1234567890+=\nAnswer".chars()).unwrap();
        let st = step_tokens(&tok, "Compute: 2+3\n", &["2+3=5", "Answer: 5"], "\n").unwrap();
        let text = tok.decode(&st.ids, false).unwrap();
        assert_eq!(text, "Compute: 2+3\n2+3=5\nAnswer: 5\n");
        assert_eq!(
            tok.decode(&st.ids[..st.prompt_len], false).unwrap(),
            "Compute: 2+3\n"
        );
        let nl = tok.encode("\n", false).unwrap()[0];
        assert_eq!(st.step_ends.len(), 2);
        for &e in &st.step_ends {
            assert_eq!(st.ids[e], nl);
        }
        assert_eq!(*st.step_ends.last().unwrap(), st.ids.len() - 1);

        let ids = completion_tokens(&tok, "Compute: 2+3\n", "2+3=5\nAnswer: 5").unwrap();
        assert_eq!(*ids.last().unwrap(), tok.eos_token().unwrap().0);
        assert_eq!(ids.len(), "Compute: 2+3\n2+3=5\nAnswer: 5".len() + 1);
    }
}
