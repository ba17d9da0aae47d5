//! Interrupts (Ctrl-C, SIGTERM) as one process-wide flag. The binary's signal handler calls
//! [`on_signal`]; the training loops ([`crate::Trainer::fit`] and the online RL drivers) hold an
//! [`Armed`] guard while they run and look at [`requested`] after each step: when it is set they
//! write a checkpoint and return [`crate::TrainError::Interrupted`]. Outside an armed loop a signal
//! is not taken (the handler then does what the signal does by default), so Ctrl-C still stops a
//! command that is loading a model or writing its output at once; so does a second Ctrl-C.
//! Knows no signal API: only atomics, which a signal handler may touch.

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use crate::error::TrainError;

static REQUESTED: AtomicI32 = AtomicI32::new(0);
static ARMED: AtomicUsize = AtomicUsize::new(0);

/// Called from a signal handler (async-signal-safe: atomics only). Returns whether the signal was
/// taken as a request to stop after the current step; `false` (no training loop running, or a stop
/// already requested) means the caller should apply the signal's default action.
pub fn on_signal(signal: i32) -> bool {
    if ARMED.load(Ordering::SeqCst) == 0 {
        return false;
    }
    REQUESTED
        .compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// The signal that asked the training loop to stop, if one did.
pub fn requested() -> Option<i32> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// Asks the running training loop to stop after its current step, as a signal would (`signal`
/// is reported back by [`requested`]; use 2 for SIGINT).
pub fn request(signal: i32) {
    REQUESTED.store(signal.max(1), Ordering::SeqCst);
}

/// Forgets a request (a library caller that handled the interruption and goes on).
pub fn clear() {
    REQUESTED.store(0, Ordering::SeqCst);
}

/// While one of these lives, signals are taken as requests to stop after the current step.
#[must_use = "the loop is armed only while the guard lives"]
pub struct Armed(());

/// Arms the signal handler for the caller's loop (see [`Armed`]).
pub fn arm() -> Armed {
    ARMED.fetch_add(1, Ordering::SeqCst);
    Armed(())
}

impl Drop for Armed {
    fn drop(&mut self) {
        ARMED.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a resumed run prints first: `resuming DIR from step N of M`.
pub(crate) fn announce_resume(run_dir: &std::path::Path, step: usize, total: usize) {
    eprintln!("resuming {} from step {step} of {total}", run_dir.display());
}

/// The error a loop stopped by `signal` after step `step` of `total` returns.
pub(crate) fn stopped(step: usize, total: usize, dir: &std::path::Path, signal: i32) -> TrainError {
    TrainError::Interrupted {
        step,
        total,
        dir: dir.to_path_buf(),
        signal,
    }
}
