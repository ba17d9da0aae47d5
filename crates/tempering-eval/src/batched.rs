//! Batching a grid across problems without changing what any problem sees: a backend wrapper
//! that remembers every request it has answered (the same request, byte for byte and seed for
//! seed, gets the same completions) and, while recording, defers the requests it has not seen
//! instead of running them. The grid runs every unsolved problem up to its first unseen request,
//! sends all those requests to the real backend as one batch, and runs the problems again, until
//! every problem finishes without a deferral.
//!
//! Because a sample's tokens depend only on its request's seed (never on the rest of the batch),
//! each problem gets the completions it would get alone; the only cost is re-running a strategy's
//! own bookkeeping (and its scorer calls) once per round. Knows nothing of strategies or tables.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use tempering_generate::{Backend, Completion, GenError, GenEvent, GenRequest};

/// A request's identity: every field that can change its completions.
fn key(req: &GenRequest) -> String {
    format!("{:?}|{}|{:?}", req.prompt, req.n, req.params)
}

/// Remembers answered requests; while recording, defers unseen ones (see the module docs).
pub struct MemoBackend<'a> {
    inner: &'a dyn Backend,
    answered: RefCell<HashMap<String, Vec<Completion>>>,
    recording: Cell<bool>,
    deferred: RefCell<Vec<GenRequest>>,
}

impl<'a> MemoBackend<'a> {
    pub fn new(inner: &'a dyn Backend) -> Self {
        MemoBackend {
            inner,
            answered: RefCell::new(HashMap::new()),
            recording: Cell::new(false),
            deferred: RefCell::new(Vec::new()),
        }
    }

    /// While on, a request not answered before is deferred: the call fails and the request is
    /// kept for [`MemoBackend::run_deferred`].
    pub fn set_recording(&self, on: bool) {
        self.recording.set(on);
    }

    /// Whether any request was deferred since the last [`MemoBackend::take_deferred`].
    pub fn has_deferred(&self) -> bool {
        !self.deferred.borrow().is_empty()
    }

    /// The deferred requests, in the order they came.
    pub fn take_deferred(&self) -> Vec<GenRequest> {
        std::mem::take(&mut *self.deferred.borrow_mut())
    }

    /// Runs `reqs` on the real backend in one call and remembers their answers (duplicates run
    /// once).
    pub fn run_deferred(&self, reqs: Vec<GenRequest>) -> Result<(), GenError> {
        let mut unique: Vec<GenRequest> = Vec::new();
        {
            let answered = self.answered.borrow();
            let mut seen = std::collections::HashSet::new();
            for r in reqs {
                let k = key(&r);
                if !answered.contains_key(&k) && seen.insert(k) {
                    unique.push(r);
                }
            }
        }
        if unique.is_empty() {
            return Ok(());
        }
        let groups = self.inner.generate(&unique)?;
        let mut answered = self.answered.borrow_mut();
        for (r, g) in unique.iter().zip(groups) {
            answered.insert(key(r), g);
        }
        Ok(())
    }
}

impl Backend for MemoBackend<'_> {
    fn generate_with(
        &self,
        reqs: &[GenRequest],
        on_event: &mut dyn FnMut(&GenEvent<'_>),
    ) -> Result<Vec<Vec<Completion>>, GenError> {
        let known: Vec<Option<Vec<Completion>>> = {
            let answered = self.answered.borrow();
            reqs.iter()
                .map(|r| answered.get(&key(r)).cloned())
                .collect()
        };
        if known.iter().all(Option::is_some) {
            return Ok(known.into_iter().flatten().collect());
        }
        if self.recording.get() {
            let mut deferred = self.deferred.borrow_mut();
            deferred.extend(
                reqs.iter()
                    .zip(&known)
                    .filter(|(_, k)| k.is_none())
                    .map(|(r, _)| r.clone()),
            );
            return Err(GenError::Unsupported(
                "deferred: this request runs in the next batch".into(),
            ));
        }
        let groups = self.inner.generate_with(reqs, on_event)?;
        let mut answered = self.answered.borrow_mut();
        for (r, g) in reqs.iter().zip(&groups) {
            answered.insert(key(r), g.clone());
        }
        Ok(groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempering_generate::{FinishReason, SamplingParams};

    /// Answers each request with `n` completions whose text names the prompt, sample and seed;
    /// counts its calls and the requests in each.
    struct Echo {
        calls: RefCell<Vec<usize>>,
    }

    impl Backend for Echo {
        fn generate_with(
            &self,
            reqs: &[GenRequest],
            _: &mut dyn FnMut(&GenEvent<'_>),
        ) -> Result<Vec<Vec<Completion>>, GenError> {
            self.calls.borrow_mut().push(reqs.len());
            Ok(reqs
                .iter()
                .map(|r| {
                    (0..r.n)
                        .map(|j| Completion {
                            tokens: vec![1; j + 1],
                            text: format!("{:?}/{j}/{}", r.prompt, r.params.seed),
                            logprobs: None,
                            top_logprobs: None,
                            finish_reason: FinishReason::Length,
                            stop_string: None,
                        })
                        .collect()
                })
                .collect())
        }
    }

    fn req(prompt: u32, n: usize, seed: u64) -> GenRequest {
        GenRequest::new(
            vec![prompt],
            n,
            SamplingParams {
                seed,
                ..SamplingParams::default()
            },
        )
    }

    #[test]
    fn deferred_requests_run_in_one_call_and_are_then_answered_from_memory() {
        let echo = Echo {
            calls: RefCell::new(vec![]),
        };
        let memo = MemoBackend::new(&echo);
        memo.set_recording(true);
        assert!(memo.generate(&[req(1, 2, 7)]).is_err());
        assert!(memo.generate(&[req(2, 3, 7)]).is_err());
        assert!(memo.has_deferred());
        assert!(
            echo.calls.borrow().is_empty(),
            "nothing ran while recording"
        );
        memo.run_deferred(memo.take_deferred()).unwrap();
        assert_eq!(*echo.calls.borrow(), vec![2], "both in one backend call");
        let a = memo.generate(&[req(1, 2, 7)]).unwrap();
        let b = memo.generate(&[req(2, 3, 7)]).unwrap();
        assert_eq!(a[0].len(), 2);
        assert_eq!(b[0][2].text, "[2]/2/7");
        assert!(!memo.has_deferred());
        assert_eq!(echo.calls.borrow().len(), 1, "answered from memory");
    }

    #[test]
    fn another_seed_or_count_is_another_request() {
        let echo = Echo {
            calls: RefCell::new(vec![]),
        };
        let memo = MemoBackend::new(&echo);
        let first = memo.generate(&[req(1, 2, 7)]).unwrap();
        assert_eq!(memo.generate(&[req(1, 2, 7)]).unwrap(), first);
        assert_eq!(echo.calls.borrow().len(), 1);
        let other_seed = memo.generate(&[req(1, 2, 8)]).unwrap();
        assert_ne!(other_seed, first);
        memo.generate(&[req(1, 3, 7)]).unwrap();
        assert_eq!(echo.calls.borrow().len(), 3);
        // Duplicates among deferred requests run once.
        memo.set_recording(true);
        let _ = memo.generate(&[req(9, 1, 1)]);
        let _ = memo.generate(&[req(9, 1, 1)]);
        memo.run_deferred(memo.take_deferred()).unwrap();
        assert_eq!(echo.calls.borrow().last(), Some(&1));
    }
}
