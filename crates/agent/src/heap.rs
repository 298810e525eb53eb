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

/// glibc's starting thresholds, kept: blocks of at least this many bytes get a mapping of
/// their own (returned to the kernel when freed), and free memory at the top of an arena past
/// it is returned at once.
///
/// Left to itself glibc raises both after freeing a large block (up to 32 and 64 MB), so that
/// the next one of that size comes from the arena: after pod2pod's traffic the agent's queues
/// and batches (each a few hundred KB at a burst's height) stayed in the arenas once freed.
/// With them fixed the agent's heap and arenas after that traffic and 100 endpoints were
/// 1.1 MB smaller (`GLIBC_TUNABLES=glibc.malloc.trim_threshold=131072:glibc.malloc.mmap_threshold=131072`
/// on the same binary, bench/README.md "Agent memory (session 11)"). The agent's steady
/// per-event allocations are far smaller than this, so they do not pay for a mapping each.
pub const FIXED_THRESHOLD: i32 = 128 * 1024;

/// Fixes the allocator's mmap and trim thresholds at [`FIXED_THRESHOLD`], unless the operator
/// set either (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`, or `GLIBC_TUNABLES`, which
/// glibc reads itself). Does nothing with another allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn fix_thresholds() {
    let set = |name: &str| std::env::var_os(name).is_some();
    if set("MALLOC_MMAP_THRESHOLD_") || set("MALLOC_TRIM_THRESHOLD_") || set("GLIBC_TUNABLES") {
        return;
    }
    // SAFETY: mallopt takes no pointer; both only change when glibc maps a block of its own
    // and when it trims (it takes its own lock to change them).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, FIXED_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, FIXED_THRESHOLD);
    }
}

/// Fixes the allocator's mmap and trim thresholds (glibc only; nothing here).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn fix_thresholds() {}

/// Decides when a burst of flows is over, from the flows seen per interval: then the queues
/// and batches it grew have been freed and [`release_free_memory`] can return the pages
/// between what stays (trimming every interval under steady traffic would only hand back
/// pages the next interval takes again).
#[derive(Debug, Default)]
pub struct BurstEnd {
    /// The most flows seen in one interval since the last release.
    peak: u64,
}

/// A burst is an interval with at least this many flows; ~0.2 MB of queued events.
pub const BURST_FLOWS: u64 = 2_000;

impl BurstEnd {
    /// `flows` were seen in the last interval: whether a burst just ended (this interval
    /// saw under a tenth of the busiest one since the last time this said so).
    pub fn ended(&mut self, flows: u64) -> bool {
        self.peak = self.peak.max(flows);
        if self.peak >= BURST_FLOWS && flows < self.peak / 10 {
            self.peak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_ends_when_the_rate_falls_below_a_tenth_of_its_peak() {
        let mut b = BurstEnd::default();
        // Quiet, or a trickle: never a burst.
        assert!(!b.ended(0));
        assert!(!b.ended(BURST_FLOWS - 1));
        assert!(!b.ended(0));
        // A burst, still going, then slowing but not yet over.
        assert!(!b.ended(50_000));
        assert!(!b.ended(40_000));
        assert!(!b.ended(5_000));
        // Over: once, not again while quiet.
        assert!(b.ended(4_999));
        assert!(!b.ended(0));
        assert!(!b.ended(0));
        // A second burst ends on its own peak.
        assert!(!b.ended(3_000));
        assert!(b.ended(299));
    }
}
