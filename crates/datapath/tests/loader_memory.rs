//! The node's objects are loaded with the kernel's BTF parsed at most once and none of it kept
//! (issue #15: aya 0.14 parses /sys/kernel/btf/vmlinux in every `EbpfLoader::new`; one loader
//! per object parsed it four times at start, between the allocations of the objects already
//! loaded, and left the agent's heap about 4 MB larger for good). Counted by the allocator,
//! relative to what one parse allocates on this kernel: nothing here is timed.
//!
//! One test in this file: the allocator's counters are the whole process's.

mod common;

use std::alloc::System;

use ciliate_datapath::linux::ObjectLoader;
use common::{privileged, unique_name, PathBuf};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

struct PinDir(PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn loading_every_object_parses_the_kernel_btf_at_most_once_and_keeps_none_of_it() {
    privileged!();
    // What one parse of this kernel's BTF allocates.
    let region = Region::new(GLOBAL);
    let btf = aya::Btf::from_sys_fs();
    let one_parse = region.change().bytes_allocated;
    drop(btf);
    assert!(
        one_parse > 1 << 20,
        "this kernel's BTF ({one_parse} bytes parsed) is too small to tell a parse from a load"
    );

    let pins = PinDir(PathBuf::from("/sys/fs/bpf").join(unique_name("cilmem")));
    let region = Region::new(GLOBAL);
    let mut loader = ObjectLoader::new(&pins.0).expect("loader");
    let objects = [
        loader.endpoint_programs().expect("load lxc.o"),
        loader.overlay_program().expect("load overlay.o"),
        loader.host_programs().expect("load host.o"),
        loader.socket_programs().expect("load sock.o"),
    ];
    drop(loader);
    let during = region.change();
    let live = during.bytes_allocated as i64 - during.bytes_deallocated as i64;
    eprintln!(
        "one BTF parse allocates {one_parse} bytes; loading the four objects allocated {} \
         and keeps {live} live",
        during.bytes_allocated
    );
    assert!(
        during.bytes_allocated < 2 * one_parse,
        "loading the four objects allocated {} bytes, one BTF parse {one_parse}: the kernel's \
         BTF is parsed more than once (one ObjectLoader must serve every object)",
        during.bytes_allocated
    );
    assert!(
        live < (one_parse / 4) as i64,
        "the loaded objects keep {live} bytes, one BTF parse allocates {one_parse}: the \
         kernel's BTF is kept"
    );
    drop(objects);
}
