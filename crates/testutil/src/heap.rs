//! A global allocator for memory tests: the system allocator, counting the blocks and bytes
//! asked for, and what glibc's allocator spends on them (each block rounded up to its chunk:
//! 8 bytes of header, 16-byte steps, 32 bytes at least; blocks of 128 KiB or more mapped by
//! the page), which is what a process's RSS pays for a block kept. Deterministic, so a test
//! can hold a bound on it. Install it in the test binary:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: ciliate_testutil::heap::Counting = ciliate_testutil::heap::Counting;
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counting allocator.
#[derive(Debug)]
pub struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static FREES: AtomicU64 = AtomicU64::new(0);
static ASKED: AtomicU64 = AtomicU64::new(0);
static ASKED_FREED: AtomicU64 = AtomicU64::new(0);
static CHUNKS: AtomicU64 = AtomicU64::new(0);
static CHUNKS_FREED: AtomicU64 = AtomicU64::new(0);

/// glibc's chunk for a block of `size` bytes (x86-64: glibc's `M_MMAP_THRESHOLD` as the agent
/// fixes it, 128 KiB).
pub fn chunk(size: usize) -> u64 {
    let c = if size >= 128 * 1024 {
        (size + 16 + 4095) & !4095
    } else {
        ((size + 8 + 15) & !15).max(32)
    };
    c as u64
}

fn counted(size: usize) {
    ALLOCS.fetch_add(1, Relaxed);
    ASKED.fetch_add(size as u64, Relaxed);
    CHUNKS.fetch_add(chunk(size), Relaxed);
}

fn uncounted(size: usize) {
    FREES.fetch_add(1, Relaxed);
    ASKED_FREED.fetch_add(size as u64, Relaxed);
    CHUNKS_FREED.fetch_add(chunk(size), Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; only counters change.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        counted(l.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        uncounted(l.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        counted(l.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        uncounted(l.size());
        counted(new);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(p, l, new) }
    }
}

/// The counters at one moment (since the process started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blocks allocated (a reallocation counts as a free and an allocation).
    pub allocations: u64,
    /// Blocks freed.
    pub frees: u64,
    /// Bytes asked for.
    pub bytes_allocated: u64,
    /// Bytes freed.
    pub bytes_deallocated: u64,
    /// glibc chunk bytes of the blocks allocated.
    pub chunks: u64,
    /// glibc chunk bytes of the blocks freed.
    pub chunks_freed: u64,
}

impl Stats {
    /// The counters now.
    pub fn now() -> Self {
        Self {
            allocations: ALLOCS.load(Relaxed),
            frees: FREES.load(Relaxed),
            bytes_allocated: ASKED.load(Relaxed),
            bytes_deallocated: ASKED_FREED.load(Relaxed),
            chunks: CHUNKS.load(Relaxed),
            chunks_freed: CHUNKS_FREED.load(Relaxed),
        }
    }

    /// Bytes live (asked for).
    pub fn live(&self) -> i64 {
        self.bytes_allocated as i64 - self.bytes_deallocated as i64
    }

    /// Blocks live.
    pub fn blocks(&self) -> i64 {
        self.allocations as i64 - self.frees as i64
    }

    /// glibc chunk bytes live.
    pub fn chunk_bytes(&self) -> i64 {
        self.chunks as i64 - self.chunks_freed as i64
    }

    /// What was taken between `before` and `self`: (bytes, blocks, chunk bytes).
    pub fn since(&self, before: &Stats) -> (i64, i64, i64) {
        (
            self.live() - before.live(),
            self.blocks() - before.blocks(),
            self.chunk_bytes() - before.chunk_bytes(),
        )
    }
}
