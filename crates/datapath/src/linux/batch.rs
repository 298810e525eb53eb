//! Batched reads and writes of BPF hash maps: `BPF_MAP_LOOKUP_BATCH`, `BPF_MAP_UPDATE_BATCH`
//! and `BPF_MAP_DELETE_BATCH` (Linux 5.6), which aya 0.14 does not wrap. One `bpf()` call
//! writes a whole run of entries instead of one call per entry; at 10,000 Services (60,000
//! load-balancing entries) the per-entry calls were a fifth of the agent's time to program
//! them. Reading a map back entry by entry takes two calls per entry (next key, value): at
//! 50,000 Services, 400,000 calls of a restart; a batched read takes a few dozen.
//!
//! What a batch does when it fails part-way is the kernel's (`generic_map_update_batch`,
//! `generic_map_delete_batch`): entries are written in order and it stops at the first that
//! fails, reporting how many it wrote before. [`BatchError::Failed`] carries that count, so the
//! caller knows exactly which entries are in the map. A kernel or map type without batch
//! operations answers before writing anything ([`BatchError::Unsupported`]): the caller writes
//! entry by entry instead.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::IterableMap;
use aya::Pod;

/// `enum bpf_cmd` values (include/uapi/linux/bpf.h).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// The kernel's internal "not supported" (a map type without batch operations); it reaches
/// user space as this number, which libc does not name.
const ENOTSUPP: i32 = 524;

/// `union bpf_attr`'s `batch` member, as the kernel lays it out.
#[repr(C)]
#[derive(Debug, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Why a batch did not write everything.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BatchError {
    /// The kernel has no batch operation for this map (older than 5.6, or a map type without
    /// one); nothing was written.
    #[error("batch operations are not supported for this map: {0}")]
    Unsupported(#[source] io::Error),
    /// The first `done` entries were written, entry `done` failed, the rest were not tried.
    #[error("batch stopped after {done} entries: {error}")]
    Failed {
        /// Entries written, from the start.
        done: usize,
        /// Why entry `done` failed.
        #[source]
        error: io::Error,
    },
}

/// The most entries one call is given (the kernel's count is 32 bits).
const MAX_BATCH: usize = 1 << 20;

/// One batch command over `count` entries; `Ok` when all were processed, else how many were
/// and the error.
///
/// # Safety
/// `keys` must point at `count` readable keys of the map's key size, and `values` (unless
/// null) at `count` readable values of its value size.
unsafe fn batch_call(
    cmd: libc::c_long,
    fd: &impl AsFd,
    keys: *const u8,
    values: *const u8,
    count: usize,
) -> Result<(), (usize, io::Error)> {
    debug_assert!(count <= MAX_BATCH);
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: count as u32,
        map_fd: fd.as_fd().as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the kernel only reads `count` keys and values from the pointers, which the
    // caller vouches for.
    let Err(error) = (unsafe { sys_bpf(cmd, &mut attr) }) else {
        return Ok(());
    };
    // The kernel writes the count back only once it has started; an error before (bad
    // arguments, no memory) leaves ours, which cannot be a count of entries done since the
    // one that failed is among them.
    let done = attr.count as usize;
    Err((if done >= count { 0 } else { done }, error))
}

/// `bpf(cmd, attr)`.
///
/// # Safety
/// The buffers `attr` points at must be valid for what `cmd` reads and writes. `attr` itself
/// is a valid `bpf_attr` prefix of the size passed (the kernel zero-fills the rest and rejects
/// non-zero bytes beyond what it knows), and the kernel writes its counts back into it.
unsafe fn sys_bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: as the caller vouches.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn unsupported(e: &io::Error, done: usize) -> bool {
    // EINVAL: a kernel that does not know the command (checked before anything is written).
    done == 0
        && matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
        )
}

/// Pauses before the next try of a write that failed with `ENOMEM`, 1 ms doubling: 255 ms
/// in all. A non-preallocated hash map takes its elements from per-CPU caches that the kernel
/// refills asynchronously (irq_work, `kernel/bpf/memalloc.c`): a batch of tens of thousands of
/// new entries from user space can empty the cache faster than it refills, and the write fails
/// with `ENOMEM` while memory is plentiful (seen at 50,000 Services: entry 55,704 of 100,000
/// backends). Once the refill has run the same write succeeds; a real shortage still fails
/// after the last pause.
const ENOMEM_PAUSES_MS: [u64; 8] = [1, 2, 4, 8, 16, 32, 64, 128];

/// Inserts or overwrites `keys[i] → values[i]` in `map`, in order.
pub(crate) fn update<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    keys: &[K],
    values: &[V],
) -> Result<(), BatchError> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let fd = map.map().fd();
    let mut done = 0;
    let mut pauses = ENOMEM_PAUSES_MS.iter();
    while done < keys.len() {
        let end = keys.len().min(done + MAX_BATCH);
        let (k, v) = (&keys[done..end], &values[done..end]);
        // SAFETY: aya checked when the map was opened (`try_from`, `create`) that its key and
        // value sizes are those of `K` and `V`; the slices hold `k.len()` of each.
        let r = unsafe {
            batch_call(
                BPF_MAP_UPDATE_BATCH,
                fd,
                k.as_ptr().cast(),
                v.as_ptr().cast(),
                k.len(),
            )
        };
        match r {
            Ok(()) => done = end,
            Err((n, error)) if unsupported(&error, done + n) => {
                return Err(BatchError::Unsupported(error))
            }
            Err((n, error)) => {
                let pause = pauses
                    .next()
                    .filter(|_| error.raw_os_error() == Some(libc::ENOMEM));
                match pause {
                    // Entries before `done + n` are in the map: go on from the one that failed.
                    Some(ms) => {
                        done += n;
                        std::thread::sleep(std::time::Duration::from_millis(*ms));
                    }
                    None => {
                        return Err(BatchError::Failed {
                            done: done + n,
                            error,
                        })
                    }
                }
            }
        }
    }
    Ok(())
}

/// Entries read per call when reading a whole map; grown when one bucket holds more.
const LOOKUP_CHUNK: usize = 4096;

/// Every entry of the hash map `map`, in the kernel's bucket order, or
/// [`BatchError::Unsupported`] (nothing read) where the kernel has no batched lookup for it.
/// Entries written or deleted meanwhile may or may not be seen, as with any iteration.
pub(crate) fn lookup_all<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
) -> Result<Vec<(K, V)>, BatchError> {
    let fd = map.map().fd();
    let mut out = Vec::new();
    let mut chunk = LOOKUP_CHUNK;
    // The position where the last call stopped, opaque (a bucket index for hash maps, which
    // the kernel reads and writes as 4 bytes; 8 leave room).
    let mut position = [0u8; 8];
    let mut first = true;
    loop {
        // SAFETY: `K` and `V` are `Pod`: every bit pattern, zeros included, is a value.
        let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
        let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
        let mut next = [0u8; 8];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel writes at most `count` keys and values of the map's sizes (aya
        // checked they are `K`'s and `V`'s when the map was opened) into buffers that hold
        // `chunk` of each, and 4 bytes into `next`; it reads 4 from `position`.
        let error = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
        match error.as_ref().and_then(io::Error::raw_os_error) {
            // A whole chunk, or (ENOENT) the last entries: `attr.count` were read.
            None | Some(libc::ENOENT) => {
                let n = (attr.count as usize).min(chunk);
                keys.truncate(n);
                values.truncate(n);
                out.extend(keys.into_iter().zip(values));
                if error.is_some() {
                    return Ok(out);
                }
                position = next;
                first = false;
            }
            // One bucket holds more entries than the chunk: nothing was read; ask for more.
            Some(libc::ENOSPC) if chunk < MAX_BATCH => chunk *= 2,
            _ => {
                let error = error.unwrap_or_else(|| io::Error::other("no error"));
                if first && unsupported(&error, 0) {
                    return Err(BatchError::Unsupported(error));
                }
                return Err(BatchError::Failed {
                    done: out.len(),
                    error,
                });
            }
        }
    }
}

/// Deletes `keys` from `map`, in order; keys that are not there are skipped (the kernel stops
/// a batch at a missing key: the rest are retried after it).
pub(crate) fn delete<K: Pod, V: Pod>(
    map: &impl IterableMap<K, V>,
    keys: &[K],
) -> Result<(), BatchError> {
    let fd = map.map().fd();
    let mut start = 0;
    while start < keys.len() {
        let k = &keys[start..keys.len().min(start + MAX_BATCH)];
        // SAFETY: as in `update`; a delete reads keys only.
        let r = unsafe {
            batch_call(
                BPF_MAP_DELETE_BATCH,
                fd,
                k.as_ptr().cast(),
                std::ptr::null(),
                k.len(),
            )
        };
        match r {
            Ok(()) => start += k.len(),
            // Key `start + n` is absent: what a delete wants; go on after it.
            Err((n, e)) if e.raw_os_error() == Some(libc::ENOENT) => start += n + 1,
            Err((n, error)) if unsupported(&error, start + n) => {
                return Err(BatchError::Unsupported(error))
            }
            Err((n, error)) => {
                return Err(BatchError::Failed {
                    done: start + n,
                    error,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aya::maps::{HashMap as BpfHashMap, MapData};

    /// A small standalone hash map, or `None` (the test says why) without the privilege.
    fn small_map(max_entries: u32) -> Option<BpfHashMap<MapData, u32, u64>> {
        privileged(BpfHashMap::<MapData, u32, u64>::create(max_entries, 0))
    }

    fn privileged<M>(created: Result<M, aya::maps::MapError>) -> Option<M> {
        match created {
            Ok(m) => Some(m),
            Err(e) => {
                assert!(
                    std::env::var_os("CILIATE_REQUIRE_PRIVILEGED").is_none(),
                    "cannot create a BPF map: {e}"
                );
                eprintln!("SKIPPED: cannot create a BPF map (needs root / CAP_BPF): {e}");
                None
            }
        }
    }

    fn contents(m: &BpfHashMap<MapData, u32, u64>) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = m.iter().map(|r| r.expect("reads")).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn a_batch_writes_and_overwrites_every_entry() {
        let Some(m) = small_map(64) else { return };
        let keys: Vec<u32> = (0..40).collect();
        let values: Vec<u64> = keys.iter().map(|k| u64::from(*k) * 10).collect();
        update(&m, &keys, &values).expect("writes");
        update(&m, &[3], &[333]).expect("overwrites");
        let got = contents(&m);
        assert_eq!(got.len(), 40);
        assert_eq!(got[3], (3, 333));
        assert_eq!(got[39], (39, 390));
        update(&m, &[], &[]).expect("an empty batch is nothing");
    }

    #[test]
    fn a_batch_that_fails_part_way_reports_exactly_what_it_wrote() {
        // Room for 4: the fifth new key fails (E2BIG), the first four are in, none after.
        let Some(m) = small_map(4) else { return };
        let keys = [10u32, 11, 12, 13, 14, 15];
        let values = [1u64, 2, 3, 4, 5, 6];
        match update(&m, &keys, &values) {
            Err(BatchError::Failed { done, error }) => {
                assert_eq!(done, 4);
                assert_eq!(error.raw_os_error(), Some(libc::E2BIG), "{error}");
            }
            other => panic!("expected a failure after 4 entries, got {other:?}"),
        }
        assert_eq!(contents(&m), vec![(10, 1), (11, 2), (12, 3), (13, 4)]);
    }

    #[test]
    fn a_large_batch_into_a_non_preallocated_map_writes_every_entry() {
        // The LB maps' shape (BPF_F_NO_PREALLOC): 200,000 new elements in one batch outrun the
        // kernel's per-CPU element caches, which answer ENOMEM until their refill has run.
        const BPF_F_NO_PREALLOC: u32 = 1;
        const N: u32 = 200_000;
        let Some(m) = privileged(BpfHashMap::<MapData, u32, u64>::create(
            N,
            BPF_F_NO_PREALLOC,
        )) else {
            return;
        };
        let keys: Vec<u32> = (0..N).collect();
        let values: Vec<u64> = keys.iter().map(|k| u64::from(*k) + 1).collect();
        update(&m, &keys, &values).expect("writes every entry");
        let got = contents(&m);
        assert_eq!(got.len(), N as usize);
        assert!(got.iter().all(|(k, v)| u64::from(*k) + 1 == *v));
    }

    #[test]
    fn a_batched_read_returns_every_entry_once() {
        const BPF_F_NO_PREALLOC: u32 = 1;
        // Empty, one entry, several chunks' worth.
        for n in [0u32, 1, 3 * LOOKUP_CHUNK as u32 + 17] {
            let Some(m) = privileged(BpfHashMap::<MapData, u32, u64>::create(
                n.max(1),
                BPF_F_NO_PREALLOC,
            )) else {
                return;
            };
            let keys: Vec<u32> = (0..n).map(|k| k * 7 + 3).collect();
            let values: Vec<u64> = keys.iter().map(|k| u64::from(*k) << 20).collect();
            update(&m, &keys, &values).expect("writes");
            let mut got = lookup_all(&m).expect("reads");
            got.sort_unstable();
            assert_eq!(got, contents(&m), "{n} entries");
            assert_eq!(got.len(), n as usize);
        }
    }

    #[test]
    fn a_delete_batch_skips_missing_keys_and_deletes_the_rest() {
        let Some(m) = small_map(16) else { return };
        update(&m, &[1, 2, 3, 4, 5], &[1, 2, 3, 4, 5]).expect("writes");
        // 9 and 7 are not there; 7 twice, and 2 twice (absent the second time).
        delete(&m, &[9, 1, 7, 2, 7, 2, 5]).expect("deletes");
        assert_eq!(contents(&m), vec![(3, 3), (4, 4)]);
        delete(&m, &[]).expect("an empty batch is nothing");
    }

    #[test]
    fn only_a_refusal_before_any_entry_counts_as_no_batch_support() {
        // What a kernel without the command (EINVAL) or a map type without batch operations
        // (ENOTSUPP, EOPNOTSUPP) answers, before writing anything: fall back.
        for errno in [libc::EINVAL, ENOTSUPP, libc::EOPNOTSUPP] {
            assert!(
                unsupported(&io::Error::from_raw_os_error(errno), 0),
                "{errno}"
            );
        }
        // Anything after the first entry, or another error, is a failure of that entry.
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::EINVAL), 3));
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::E2BIG), 0));
        assert!(!unsupported(&io::Error::from_raw_os_error(libc::ENOMEM), 0));
    }
}
