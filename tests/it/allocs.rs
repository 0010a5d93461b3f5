//! Allocations per token, counted by a wrapping global allocator in a child process of
//! its own (so no other test's allocations are counted).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokengate::{Engine, Weight};

pub struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Allocations (all threads) while `f` runs.
fn count(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

#[test]
fn a_single_call_allocates_once_and_bulk_far_less() {
    if crate::in_child("allocs::a_single_call_allocates_once_and_bulk_far_less") {
        return;
    }
    let engine = Engine::builder().pin(false).build().unwrap();
    let inc = engine.register("inc", Weight::Light, |x: u64| x + 1).unwrap();
    for x in 0..1_000 {
        inc.submit(x).wait().unwrap(); // warm up: queues, index and thread-locals grow once
    }
    const CALLS: u64 = 10_000;
    let single = count(|| {
        for x in 0..CALLS {
            assert_eq!(inc.submit(x).wait(), Ok(x + 1));
        }
    });
    // Its chunk: the token's slot and the call's batch inline, the handle and the queue
    // entry in one; the lock-free queue adds a block every few dozen pushes.
    assert!(single <= CALLS + CALLS / 20, "{single} allocations for {CALLS} single calls");
    let tokens = inc.submit_many(0..100_000); // warm the bulk path too
    tokens.into_iter().for_each(|t| drop(t.wait()));
    let bulk = count(|| {
        let tokens = inc.submit_many(0..100_000);
        tokens.into_iter().for_each(|t| drop(t.wait()));
    });
    assert!(bulk <= 100_000 / 50, "{bulk} allocations for 100,000 bulk tokens");
    println!("allocations: {single} for {CALLS} single calls, {bulk} for 100,000 bulk tokens");
}
