//! Peer identities from real pinned maps: lxc.o loaded with its maps pinned in a private
//! directory, entries written as the agent writes them, read back by the proxy's reader.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::HashMap as BpfHashMap;
use ciliate_datapath::abi::{EndpointInfo, IpcacheValue};
use ciliate_proxy::identity::{Identities, PinnedIdentities};
use ciliate_testutil::unique_name;

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn identities_come_from_the_endpoint_table_then_the_ipcache() {
    ciliate_testutil::privileged!();
    let pins = Pins(PathBuf::from("/sys/fs/bpf").join(unique_name("cilpx")));
    let ids = PinnedIdentities::new(pins.0.clone());
    // Maps not there yet (agent not started): world, no panic.
    assert_eq!(ids.identity_of(Ipv4Addr::new(10, 0, 0, 5)), 2);

    let mut bpf = ciliate_datapath::linux::load_endpoint_programs(&pins.0).expect("load lxc.o");
    let mut lxc: BpfHashMap<_, [u8; 4], EndpointInfo> =
        BpfHashMap::try_from(bpf.take_map("cil_lxc4").expect("cil_lxc4")).expect("hash");
    lxc.insert(
        [10, 0, 0, 5],
        EndpointInfo {
            ep_id: 5,
            sec_identity: 31000,
            ipv4: [10, 0, 0, 5],
            ..Default::default()
        },
        0,
    )
    .expect("insert endpoint");
    let mut ipc: LpmTrie<_, [u8; 4], IpcacheValue> =
        LpmTrie::try_from(bpf.take_map("cil_ipcache4").expect("cil_ipcache4")).expect("lpm");
    let v = |identity| IpcacheValue {
        identity,
        ..Default::default()
    };
    ipc.insert(&Key::new(16, [10, 1, 0, 0]), v(40000), 0)
        .expect("insert");
    ipc.insert(&Key::new(32, [10, 1, 2, 3]), v(40001), 0)
        .expect("insert");
    // The endpoint table wins over an ipcache entry for the same address.
    ipc.insert(&Key::new(32, [10, 0, 0, 5]), v(99), 0)
        .expect("insert");

    assert_eq!(ids.identity_of(Ipv4Addr::new(10, 0, 0, 5)), 31000);
    assert_eq!(
        ids.identity_of(Ipv4Addr::new(10, 1, 2, 3)),
        40001,
        "longest prefix"
    );
    assert_eq!(ids.identity_of(Ipv4Addr::new(10, 1, 9, 9)), 40000);
    assert_eq!(
        ids.identity_of(Ipv4Addr::new(192, 0, 2, 1)),
        2,
        "unknown is world"
    );
    // Changes are seen at once (no cache).
    lxc.remove(&[10, 0, 0, 5]).expect("remove");
    assert_eq!(ids.identity_of(Ipv4Addr::new(10, 0, 0, 5)), 99);
}
