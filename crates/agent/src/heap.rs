//! Giving the allocator's free memory back to the kernel after start-up and after a large batch.
//!
//! glibc's allocator returns freed memory only from the top of each arena; a batch of 10,000
//! Services frees its request (parsed documents, answers) between the objects the store
//! keeps, so the agent stayed at its peak RSS after deleting them all (218 MB where the heap
//! held 37 MB). `malloc_trim(0)` releases the free pages inside every arena too. It walks
//! every arena under its lock (a few ms at that size), so it runs after large batches only, and
//! once when start-up is done.

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

/// How many malloc arenas the agent's threads share, unless `MALLOC_ARENA_MAX` says otherwise.
///
/// glibc gives each new thread its own arena up to 8 per CPU, and an arena keeps what its
/// threads freed. The agent's threads (the runtime's workers, its blocking pool, the observer
/// and history threads) came to 10 arenas holding 14 MB for 7 MB in use after pod2pod's traffic
/// (`malloc_stats`); with 2 the heap after that traffic was ~2 MB smaller, and the agent's CPU
/// per connection changed less than its spread (bench/README.md, "Agent memory (session 9)").
pub const ARENAS: i32 = 2;

/// Caps the allocator's arenas at [`ARENAS`]: call before any thread starts. An operator's
/// `MALLOC_ARENA_MAX` (which glibc reads itself) wins. Does nothing with another allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    // SAFETY: mallopt takes no pointer; M_ARENA_MAX only bounds how many arenas later
    // threads may create (glibc takes its own lock to change it).
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

/// Caps the allocator's arenas at [`ARENAS`]: call before any thread starts. An operator's
/// `MALLOC_ARENA_MAX` (which glibc reads itself) wins. Does nothing with another allocator.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_arenas() {}
