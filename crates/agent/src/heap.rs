//! Giving the allocator's free memory back to the kernel after a large batch.
//!
//! glibc's allocator returns freed memory only from the top of each arena; a batch of 10,000
//! Services frees its request (parsed documents, answers) between the objects the store
//! keeps, so the agent stayed at its peak RSS after deleting them all (218 MB where the heap
//! held 37 MB). `malloc_trim(0)` releases the free pages inside every arena too. It walks
//! every arena under its lock (a few ms at that size), so it runs after large batches only.

/// Batches of at least this many documents are followed by [`release_free_memory`].
pub const LARGE_BATCH: usize = 1_000;

/// Asks the allocator to return the memory it holds free to the kernel; whether any was.
/// Does nothing where the allocator is not glibc's (their own policies decide).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_free_memory() -> bool {
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc takes each arena's
    // lock while it trims, so it is safe to call while other threads allocate.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Asks the allocator to return the memory it holds free to the kernel; whether any was.
/// Does nothing where the allocator is not glibc's (their own policies decide).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_free_memory() -> bool {
    false
}
