//! Scripted stand-ins for tests and examples: a backend that answers each prompt text from a
//! script, a byte-level encoder to go with it, and scorers made from closures. They make every
//! strategy's answer and cost computable by hand. Knows nothing of real models.

use std::collections::HashMap;
use std::sync::Mutex;

use tempering_generate::{Backend, Completion, FinishReason, GenError, GenEvent, GenRequest};
use tempering_reward::{ScoreInput, Scored, StepScorer, Verifier};

use crate::text::TextEncoder;

/// Token ids are the text's bytes.
pub struct ByteEncoder;

impl TextEncoder for ByteEncoder {
    fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }
}

/// Answers a prompt (decoded from [`ByteEncoder`]'s ids) with its scripted responses in turn,
/// cycling; with `by_seed`, sample `j` picks its response from the request's seed instead, so
/// different seeds give different draws. A completion costs one token per byte, plus one for the
/// stop token when it ends on its own; stop strings and `max_new_tokens` apply as in the engine.
#[derive(Default)]
pub struct ScriptedBackend {
    script: HashMap<String, Vec<String>>,
    fallback: Option<Vec<String>>,
    pub by_seed: bool,
    cursor: Mutex<HashMap<String, usize>>,
    /// Every request served: (prompt text, n).
    pub log: Mutex<Vec<(String, usize)>>,
}

impl ScriptedBackend {
    pub fn new() -> Self {
        ScriptedBackend::default()
    }

    /// Responses for one prompt text.
    pub fn on(mut self, prompt: &str, responses: &[&str]) -> Self {
        self.script.insert(
            prompt.to_string(),
            responses.iter().map(|s| s.to_string()).collect(),
        );
        self
    }

    /// Responses for any prompt without a script of its own.
    pub fn otherwise(mut self, responses: &[&str]) -> Self {
        self.fallback = Some(responses.iter().map(|s| s.to_string()).collect());
        self
    }

    pub fn requests(&self) -> Vec<(String, usize)> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn respond(&self, text: &str, req: &GenRequest) -> Completion {
        let p = &req.params;
        let (mut out, mut tokens, mut finish) =
            (text.to_string(), text.len() + 1, FinishReason::Stop);
        let mut stop_string = None;
        if let Some((pos, s)) = p
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i)
        {
            out = text[..pos].to_string();
            tokens = pos + s.len();
            finish = FinishReason::StopString;
            stop_string = Some(s.clone());
        }
        if tokens > p.max_new_tokens {
            let mut cut = p.max_new_tokens.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            out = text[..cut].to_string();
            tokens = p.max_new_tokens;
            finish = FinishReason::Length;
            stop_string = None;
        }
        Completion {
            tokens: vec![0; tokens],
            text: out,
            logprobs: None,
            top_logprobs: None,
            finish_reason: finish,
            stop_string,
        }
    }
}

fn mix(seed: u64, j: u64) -> u64 {
    let mut z = seed.wrapping_add(j.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Backend for ScriptedBackend {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        _on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> tempering_generate::Result<Vec<Vec<Completion>>> {
        let mut out = vec![];
        for (i, req) in reqs.iter().enumerate() {
            req.params.validate(i)?;
            let bytes: Vec<u8> = req.prompt.iter().map(|&t| t as u8).collect();
            let prompt = String::from_utf8_lossy(&bytes).into_owned();
            let responses = self
                .script
                .get(&prompt)
                .or(self.fallback.as_ref())
                .ok_or_else(|| GenError::Unsupported(format!("no script for prompt {prompt:?}")))?;
            if let Ok(mut l) = self.log.lock() {
                l.push((prompt.clone(), req.n));
            }
            let mut group = vec![];
            for j in 0..req.n {
                let k = if self.by_seed {
                    (mix(req.params.seed, j as u64) % responses.len() as u64) as usize
                } else {
                    let mut c = self
                        .cursor
                        .lock()
                        .map_err(|_| GenError::Unsupported("poisoned".into()))?;
                    let k = c.entry(prompt.clone()).or_insert(0);
                    *k += 1;
                    (*k - 1) % responses.len()
                };
                group.push(self.respond(&responses[k], req));
            }
            out.push(group);
        }
        Ok(out)
    }
}

type StepFn = dyn Fn(&str, &[&str]) -> Vec<f64> + Send + Sync;

/// A step scorer from a closure over (prompt, steps).
pub struct FnStepScorer(pub Box<StepFn>);

impl FnStepScorer {
    /// Each step scored on its own by `f(step)`.
    pub fn per_step(f: impl Fn(&str) -> f64 + Send + Sync + 'static) -> Self {
        FnStepScorer(Box::new(move |_, steps| {
            steps.iter().map(|s| f(s)).collect()
        }))
    }
}

impl StepScorer for FnStepScorer {
    fn name(&self) -> &str {
        "fn-step"
    }

    fn score_steps(&self, prompt: &str, steps: &[&str]) -> tempering_reward::Result<Vec<f64>> {
        Ok((self.0)(prompt, steps))
    }
}

/// A verifier from a closure over the completion text.
pub struct FnVerifier(pub Box<dyn Fn(&str) -> f64 + Send + Sync>);

impl Verifier for FnVerifier {
    fn name(&self) -> &str {
        "fn-verifier"
    }

    fn score(&self, input: &ScoreInput<'_>) -> tempering_reward::Result<Scored> {
        Ok(Scored {
            score: (self.0)(input.completion),
            correct: None,
        })
    }
}
