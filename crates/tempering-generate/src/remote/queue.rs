//! The remote backend's work queue: each request's samples as jobs of at most the server's `n`,
//! shared by the worker threads, with jobs handed back when a server refuses or caps `n`. Knows
//! nothing of HTTP or the wire format.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::request::Completion;

/// Samples `first..first + n` of one request.
#[derive(Clone, Debug)]
pub(super) struct Job {
    pub(super) req: usize,
    pub(super) first: usize,
    pub(super) n: usize,
}

pub(super) struct JobOut {
    pub(super) job: Job,
    pub(super) completions: Vec<Completion>,
    /// Jobs this one handed back (a refused or capped `n`).
    pub(super) rest: Vec<Job>,
}

/// Samples `first..first + n` of request `req` as jobs of at most `cap` samples.
pub(super) fn split(req: usize, first: usize, n: usize, cap: usize) -> Vec<Job> {
    let cap = cap.max(1);
    (0..n)
        .step_by(cap)
        .map(|k| Job {
            req,
            first: first + k,
            n: cap.min(n - k),
        })
        .collect()
}

/// The work queue the workers share.
pub(super) struct Queue {
    pub(super) jobs: Mutex<(VecDeque<Job>, usize)>,
    pub(super) ready: Condvar,
    pub(super) abort: AtomicBool,
}

impl Queue {
    /// The next job, waiting while others are out (they may hand jobs back); `None` when done.
    pub(super) fn take(&self) -> Option<Job> {
        let mut g = self.jobs.lock().ok()?;
        loop {
            if self.abort.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(j) = g.0.pop_front() {
                g.1 += 1;
                return Some(j);
            }
            if g.1 == 0 {
                return None;
            }
            g = self.ready.wait(g).ok()?;
        }
    }

    /// A job finished, handing back `rest`.
    pub(super) fn done(&self, rest: Vec<Job>) {
        if let Ok(mut g) = self.jobs.lock() {
            g.1 -= 1;
            g.0.extend(rest);
        }
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_every_sample_once() {
        let jobs = split(3, 2, 7, 3);
        let firsts: Vec<(usize, usize)> = jobs.iter().map(|j| (j.first, j.n)).collect();
        assert_eq!(firsts, vec![(2, 3), (5, 3), (8, 1)]);
        assert!(jobs.iter().all(|j| j.req == 3));
        assert_eq!(split(0, 0, 4, usize::MAX).len(), 1);
    }
}
