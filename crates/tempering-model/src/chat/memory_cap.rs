//! A memory cap on chat-template rendering. minijinja has no hook on string concatenation, so a
//! template that doubles a string (`s ~ s` in a loop or a recursive macro) allocates 2^k bytes in k
//! steps, long before it runs out of fuel or writes a byte. The cap is enforced where every
//! allocation passes: [`RenderMemoryCap`], a global allocator wrapping the process's own, counts the
//! bytes a rendering thread holds; past its budget it marks the rendering as over the limit and parks
//! that thread for good (an allocator may neither fail softly nor unwind), and the caller, waiting on
//! the rendering thread, returns `TemplateLimit::Memory` and abandons the thread with what it holds
//! (at most the budget).
//!
//! This module knows allocation and threads only: nothing of templates, messages or minijinja. The
//! wrapper must be the process's `#[global_allocator]` (the `temper` binary installs it over mimalloc);
//! [`installed`] says whether it is, and without it renderings run uncapped on the calling thread.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A global allocator that counts what a capped rendering thread allocates, over the allocator `A`:
/// `#[global_allocator] static GLOBAL: RenderMemoryCap<mimalloc::MiMalloc> = RenderMemoryCap(mimalloc::MiMalloc);`
pub struct RenderMemoryCap<A>(pub A);

/// Set by the first allocation through [`RenderMemoryCap`].
static INSTALLED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The budget of the rendering running on this thread; null on every other thread.
    static BUDGET: Cell<*const Budget> = const { Cell::new(std::ptr::null()) };
}

/// What one capped rendering may hold, and whether it went past.
pub(super) struct Budget {
    max_bytes: isize,
    held: AtomicIsize,
    exceeded: AtomicBool,
}

impl Budget {
    pub(super) fn new(max_bytes: usize) -> Arc<Self> {
        Arc::new(Budget {
            max_bytes: isize::try_from(max_bytes).unwrap_or(isize::MAX),
            held: AtomicIsize::new(0),
            exceeded: AtomicBool::new(false),
        })
    }

    /// Whether the rendering went past the budget (its thread is then parked for good).
    pub(super) fn exceeded(&self) -> bool {
        self.exceeded.load(Ordering::Acquire)
    }

    /// Counts `bytes` more held; past the budget, never returns.
    fn take(&self, bytes: usize) {
        let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
        let held = self
            .held
            .fetch_add(bytes, Ordering::Relaxed)
            .saturating_add(bytes);
        if held > self.max_bytes {
            self.exceeded.store(true, Ordering::Release);
            // Nothing here may allocate: `sleep` is a bare system call.
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }

    fn give(&self, bytes: usize) {
        let bytes = isize::try_from(bytes).unwrap_or(isize::MAX);
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Whether [`RenderMemoryCap`] is the process's global allocator.
pub fn installed() -> bool {
    // Something has allocated by the time anyone asks (the runtime's own set-up does).
    INSTALLED.load(Ordering::Relaxed)
}

/// Counts this thread's allocations against `budget` until the guard drops. The caller keeps the
/// `Arc` alive for as long as the guard lives.
pub(super) struct BudgetGuard;

impl BudgetGuard {
    pub(super) fn enter(budget: &Arc<Budget>) -> BudgetGuard {
        BUDGET.with(|b| b.set(Arc::as_ptr(budget)));
        BudgetGuard
    }
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        BUDGET.with(|b| b.set(std::ptr::null()));
    }
}

fn with_budget(f: impl FnOnce(&Budget)) {
    // `try_with`: during thread teardown the slot may be gone; nothing is counted then.
    let _ = BUDGET.try_with(|b| {
        let p = b.get();
        if !p.is_null() {
            // SAFETY: the pointer is set only by `BudgetGuard::enter`, whose caller keeps the
            // `Arc<Budget>` alive until the guard has cleared it again.
            f(unsafe { &*p });
        }
    });
}

// SAFETY: every call is forwarded to `A` unchanged; the wrapper only counts sizes beside it.
unsafe impl<A: GlobalAlloc> GlobalAlloc for RenderMemoryCap<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !INSTALLED.load(Ordering::Relaxed) {
            INSTALLED.store(true, Ordering::Relaxed);
        }
        with_budget(|b| b.take(layout.size()));
        self.0.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        with_budget(|b| b.take(layout.size()));
        self.0.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        with_budget(|b| b.give(layout.size()));
        self.0.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        with_budget(|b| {
            if new_size >= layout.size() {
                b.take(new_size - layout.size());
            } else {
                b.give(layout.size() - new_size);
            }
        });
        self.0.realloc(ptr, layout, new_size)
    }
}
