//! The slot's synchronisation primitives: std's, or loom's when model-checking
//! (`RUSTFLAGS="--cfg tokengate_loom" cargo test -p tokengate --lib loom`).

use std::mem::MaybeUninit;

#[cfg(not(tokengate_loom))]
pub(super) use std::sync::atomic::{AtomicU32, Ordering};

#[cfg(tokengate_loom)]
pub(super) use loom::sync::atomic::{AtomicU32, Ordering};

#[cfg(not(tokengate_loom))]
pub(super) use atomic_waker::AtomicWaker;

/// loom's model of the waker cell, with `atomic_waker`'s method names.
#[cfg(tokengate_loom)]
pub(super) struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(tokengate_loom)]
impl AtomicWaker {
    pub(super) fn new() -> Self {
        AtomicWaker(loom::future::AtomicWaker::new())
    }

    pub(super) fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    pub(super) fn wake(&self) {
        self.0.wake();
    }
}

#[cfg(not(tokengate_loom))]
type Cell<T> = std::cell::UnsafeCell<MaybeUninit<T>>;

#[cfg(tokengate_loom)]
type Cell<T> = loom::cell::UnsafeCell<MaybeUninit<T>>;

/// Reads a state word through `&mut` (no other thread can see it).
pub(super) fn load_mut(state: &mut AtomicU32) -> u32 {
    #[cfg(not(tokengate_loom))]
    return *state.get_mut();
    #[cfg(tokengate_loom)]
    // SAFETY: `&mut` excludes every other access.
    return unsafe { state.unsync_load() };
}

/// Storage for a token's result; the state machine decides who may touch it.
pub(super) struct ResultCell<T>(Cell<T>);

impl<T> ResultCell<T> {
    pub(super) fn new() -> Self {
        ResultCell(Cell::new(MaybeUninit::uninit()))
    }

    /// # Safety
    /// The caller is the only thread touching the cell (it won the CAS into
    /// `WRITING`), and the cell holds no value.
    pub(super) unsafe fn write(&self, value: T) {
        #[cfg(not(tokengate_loom))]
        // SAFETY: exclusive access, per this function's contract.
        unsafe {
            (*self.0.get()).write(value);
        }
        #[cfg(tokengate_loom)]
        // SAFETY: exclusive access, per this function's contract; loom checks it.
        self.0.with_mut(|cell| unsafe {
            (*cell).write(value);
        });
    }

    /// # Safety
    /// The cell holds a value that nobody else reads, and this is its last read.
    pub(super) unsafe fn take(&self) -> T {
        #[cfg(not(tokengate_loom))]
        // SAFETY: initialised and exclusive, per this function's contract.
        return unsafe { (*self.0.get()).assume_init_read() };
        #[cfg(tokengate_loom)]
        // SAFETY: initialised and exclusive, per this function's contract.
        return self.0.with_mut(|cell| unsafe { (*cell).assume_init_read() });
    }

    /// # Safety
    /// The cell holds a value that was never taken.
    pub(super) unsafe fn drop_in_place(&mut self) {
        // SAFETY: initialised and untaken, per this function's contract.
        drop(unsafe { self.take() });
    }
}
