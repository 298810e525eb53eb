//! Tests of the endpoint manager against the fake datapath.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use ciliate_datapath::{CtGcStats, FakeDatapath};
use ciliate_model::api::{Attachment, CtEntry, DatapathStatus};
use ciliate_model::bpf_policy::{EndpointPolicy, IpcacheEntry, PolicySyncStats};
use ciliate_model::lb::{LbState, LbSyncStats};
use ciliate_model::monitor::MonitorEvent;
use ciliate_model::MacAddr;
use tokio::sync::broadcast;

use super::*;
use crate::state::TMP_FILE;

const NODE: &str = "node-a";

fn settings(cidr: &str) -> ManagerSettings {
    ManagerSettings {
        node_name: NODE.to_owned(),
        pod_cidr: cidr.parse().expect("test CIDR"),
        mtu: 1450,
    }
}

fn open_with(dir: &Path, cidr: &str, dp: Arc<dyn Datapath>) -> Result<EndpointManager, OpenError> {
    let store = StateStore::open(dir).expect("state dir opens");
    EndpointManager::open(settings(cidr), store, dp)
}

fn open(dir: &Path, dp: Arc<FakeDatapath>) -> EndpointManager {
    open_with(dir, "10.200.0.0/24", dp).expect("manager opens")
}

fn req(cid: &str, ifindex: u32) -> EndpointCreateRequest {
    EndpointCreateRequest {
        container_id: cid.to_owned(),
        ifname: "eth0".to_owned(),
        netns: format!("/var/run/netns/{cid}"),
        pod: Some(PodRef {
            namespace: "default".to_owned(),
            name: format!("pod-{cid}"),
        }),
        labels: Labels::parse_list("app=web", "k8s").expect("labels"),
        named_ports: Vec::new(),
        host_ifname: format!("lxc{ifindex}"),
        host_ifindex: ifindex,
        host_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        mac: MacAddr([2, 0, 0, 0, 0, 2]),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

#[test]
fn create_allocates_programs_and_persists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), dp.clone());
    let created = m.create(&req("c1", 10)).expect("created");
    let ep = &created.endpoint;
    assert_eq!(ep.id, 1);
    assert_eq!(ep.ipv4, ip("10.200.0.2"));
    assert_eq!(created.address.to_string(), "10.200.0.2/32");
    assert_eq!(created.gateway, GATEWAY_IPV4);
    assert_eq!(created.mtu, 1450);
    assert_eq!(ep.state, EndpointState::Ready);
    assert_eq!(ep.identity, 256);
    assert_eq!(
        ep.labels.to_string(),
        "k8s:app=web,k8s:io.kubernetes.pod.namespace=default"
    );
    assert_eq!(dp.programmed(), vec![spec_of(ep)]);
    let id = m.identity(256).expect("identity in use");
    assert_eq!((id.references, id.reserved), (1, false));

    // On disk before the answer.
    let raw = std::fs::read_to_string(tmp.path().join("state.json")).expect("state written");
    let state: PersistedState = serde_json::from_str(&raw).expect("parses");
    assert_eq!(state.endpoints, vec![ep.clone()]);
    assert_eq!(
        state.ipam.allocations.get(&ep.ipv4).map(String::as_str),
        Some("c1")
    );
}

#[test]
fn same_labels_share_an_identity_and_namespace_separates() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
    let a = m.create(&req("a", 1)).expect("a").endpoint;
    let b = m.create(&req("b", 2)).expect("b").endpoint;
    let mut other_ns = req("c", 3);
    other_ns.pod = Some(PodRef {
        namespace: "prod".to_owned(),
        name: "x".to_owned(),
    });
    // A pod cannot claim another namespace through its labels.
    other_ns
        .labels
        .insert(Label::new(SOURCE_K8S, POD_NAMESPACE_LABEL, "default"));
    let c = m.create(&other_ns).expect("c").endpoint;
    assert_eq!(a.identity, b.identity);
    assert_ne!(a.identity, c.identity);
    assert_eq!(c.labels.get(SOURCE_K8S, POD_NAMESPACE_LABEL), Some("prod"));
    assert_eq!(m.identity(a.identity).expect("shared").references, 2);
    m.delete("a").expect("deleted");
    assert_eq!(
        m.identity(a.identity).expect("still used by b").references,
        1
    );
    m.delete("b").expect("deleted");
    assert!(
        m.identity(a.identity).is_none(),
        "freed with the last reference"
    );
}

#[test]
fn conflicts_are_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
    m.create(&req("c1", 10)).expect("created");
    let err = m.create(&req("c1", 11)).expect_err("same container");
    assert_eq!(err.kind(), "conflict");
    assert!(err.to_string().contains("DELETE /v1/endpoints/c1"), "{err}");
    let err = m.create(&req("c2", 10)).expect_err("same ifindex");
    assert_eq!(err.kind(), "conflict");
    assert!(err.to_string().contains("ifindex 10"), "{err}");
    assert_eq!(m.list().len(), 1);
    assert_eq!(
        m.status().ipam.allocated,
        1,
        "a refused request allocates nothing"
    );
}

#[test]
fn invalid_requests_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
    type Mutation = Box<dyn Fn(&mut EndpointCreateRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("containerId is empty", Box::new(|r| r.container_id.clear())),
        (
            "not a valid container id",
            Box::new(|r| r.container_id = "a/b".to_owned()),
        ),
        ("ifname is empty", Box::new(|r| r.ifname.clear())),
        ("hostIfname is empty", Box::new(|r| r.host_ifname.clear())),
        (
            "not a valid interface name",
            Box::new(|r| r.host_ifname = "a-very-long-interface".to_owned()),
        ),
        ("hostIfindex is 0", Box::new(|r| r.host_ifindex = 0)),
        (
            "reserved",
            Box::new(|r| r.labels.insert(Label::new(SOURCE_RESERVED, "host", ""))),
        ),
        (
            "namespace and name must both be set",
            Box::new(|r| {
                r.pod = Some(PodRef {
                    namespace: String::new(),
                    name: "x".to_owned(),
                })
            }),
        ),
        (
            "pod namespace",
            Box::new(|r| {
                r.pod = Some(PodRef {
                    namespace: "bad ns".to_owned(),
                    name: "x".to_owned(),
                })
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut r = req("c1", 10);
        mutate(&mut r);
        let err = m.create(&r).expect_err(want);
        assert_eq!(err.kind(), "invalid", "{want}: {err}");
        assert!(err.to_string().contains(want), "want {want:?} in {err}");
    }
    assert!(m.list().is_empty());
}

#[test]
fn datapath_failure_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), dp.clone());
    dp.fail_next_upsert("veth vanished");
    let err = m.create(&req("c1", 10)).expect_err("injected");
    assert_eq!(err.kind(), "datapath");
    let msg = err.to_string();
    assert!(
        msg.contains("c1") && msg.contains("lxc10") && msg.contains("veth vanished"),
        "{msg}"
    );
    assert!(m.list().is_empty());
    let st = m.status();
    assert_eq!((st.endpoints, st.identities, st.ipam.allocated), (0, 0, 0));
    assert!(dp.programmed().is_empty());
    assert_eq!(m.identities().len(), 8, "only the reserved identities");
    let on_disk: PersistedState =
        serde_json::from_slice(&std::fs::read(tmp.path().join("state.json")).expect("read"))
            .expect("parses");
    assert!(
        on_disk.endpoints.is_empty()
            && on_disk.ipam.allocations.is_empty()
            && on_disk.identities.identities.is_empty()
    );
    // The retry gets what the failed attempt would have had.
    let ep = m.create(&req("c1", 10)).expect("retry works").endpoint;
    assert_eq!((ep.id, ep.ipv4, ep.identity), (1, ip("10.200.0.2"), 256));
}

#[test]
fn persist_failure_undoes_the_datapath_and_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), dp.clone());
    let blocker = tmp.path().join(TMP_FILE);
    std::fs::create_dir(&blocker).expect("block the temporary file");
    let err = m.create(&req("c1", 10)).expect_err("cannot persist");
    assert_eq!(err.kind(), "state");
    assert!(err.to_string().contains(TMP_FILE), "{err}");
    assert!(dp.programmed().is_empty(), "datapath entry removed again");
    assert!(m.list().is_empty());
    assert_eq!(m.status().ipam.allocated, 0);
    std::fs::remove_dir(&blocker).expect("unblock");
    m.create(&req("c1", 10)).expect("works once writable");
}

#[test]
fn delete_is_idempotent_and_releases() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), dp.clone());
    let ep = m.create(&req("c1", 10)).expect("created").endpoint;
    let d = m.delete("c1").expect("deleted");
    assert_eq!(d.endpoint.as_ref().map(|e| e.id), Some(ep.id));
    assert_eq!(d.released, Some(ep.ipv4));
    assert!(dp.programmed().is_empty());
    assert_eq!(m.status().ipam.allocated, 0);
    let again = m.delete("c1").expect("idempotent");
    assert_eq!((again.endpoint, again.released), (None, None));
    assert_eq!(
        m.delete("never-existed").expect("idempotent").endpoint,
        None
    );
}

/// The fake datapath, with removals that fail on demand.
#[derive(Debug, Default)]
struct FlakyRemove {
    inner: FakeDatapath,
    fail_remove: AtomicBool,
}

impl Datapath for FlakyRemove {
    fn status(&self) -> DatapathStatus {
        self.inner.status()
    }
    fn upsert_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        self.inner.upsert_endpoint(ep)
    }
    fn remove_endpoint(&self, ep: &EndpointSpec) -> Result<(), DatapathError> {
        if self.fail_remove.load(Ordering::SeqCst) {
            return Err(DatapathError::Injected("map busy".into()));
        }
        self.inner.remove_endpoint(ep)
    }
    fn list_endpoints(&self) -> Result<Vec<EndpointSpec>, DatapathError> {
        self.inner.list_endpoints()
    }
    fn ct_entries(&self) -> Result<Vec<CtEntry>, DatapathError> {
        self.inner.ct_entries()
    }
    fn ct_gc(&self) -> Result<CtGcStats, DatapathError> {
        self.inner.ct_gc()
    }
    fn sync_lb(&self, desired: &LbState) -> Result<LbSyncStats, DatapathError> {
        self.inner.sync_lb(desired)
    }
    fn update_lb(
        &self,
        diff: &ciliate_model::lb_diff::LbDiff,
    ) -> Result<LbSyncStats, DatapathError> {
        self.inner.update_lb(diff)
    }
    fn lb_state(&self) -> Result<LbState, DatapathError> {
        self.inner.lb_state()
    }
    fn set_endpoint_policy(
        &self,
        ep: &EndpointSpec,
        policy: &EndpointPolicy,
    ) -> Result<PolicySyncStats, DatapathError> {
        self.inner.set_endpoint_policy(ep, policy)
    }
    fn endpoint_policy(&self, ep: &EndpointSpec) -> Result<EndpointPolicy, DatapathError> {
        self.inner.endpoint_policy(ep)
    }
    fn sync_ipcache(&self, desired: &[IpcacheEntry]) -> Result<PolicySyncStats, DatapathError> {
        self.inner.sync_ipcache(desired)
    }
    fn ipcache(&self) -> Result<Vec<IpcacheEntry>, DatapathError> {
        self.inner.ipcache()
    }
    fn subscribe_events(&self) -> broadcast::Receiver<MonitorEvent> {
        self.inner.subscribe_events()
    }
}

#[test]
fn delete_that_the_datapath_refuses_keeps_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FlakyRemove::default());
    let m = open_with(tmp.path(), "10.200.0.0/24", dp.clone()).expect("opens");
    m.create(&req("c1", 10)).expect("created");
    dp.fail_remove.store(true, Ordering::SeqCst);
    let err = m.delete("c1").expect_err("refused");
    assert_eq!(err.kind(), "datapath");
    assert!(err.to_string().contains("map busy"), "{err}");
    assert_eq!(m.list().len(), 1, "kept so the delete can be retried");
    assert_eq!(m.status().ipam.allocated, 1);
    // GC: nothing removable is an error; the endpoint stays.
    let err = m
        .gc(&GcRequest {
            valid_attachments: vec![],
        })
        .expect_err("refused");
    assert_eq!(err.kind(), "datapath");
    dp.fail_remove.store(false, Ordering::SeqCst);
    assert!(m.delete("c1").expect("retry").endpoint.is_some());
}

#[test]
fn gc_removes_what_the_runtime_no_longer_lists() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), dp.clone());
    for (cid, idx) in [("a", 1), ("b", 2), ("c", 3)] {
        m.create(&req(cid, idx)).expect("created");
    }
    let keep = |cid: &str, ifname: &str| Attachment {
        container_id: cid.to_owned(),
        ifname: ifname.to_owned(),
    };
    let res = m
        .gc(&GcRequest {
            // "c" is listed with another interface name: its eth0 is stale.
            valid_attachments: vec![keep("a", "eth0"), keep("c", "net1"), keep("zzz", "eth0")],
        })
        .expect("gc");
    let removed: Vec<&str> = res
        .removed
        .iter()
        .map(|e| e.container_id.as_str())
        .collect();
    assert_eq!(removed, vec!["b", "c"]);
    assert_eq!(
        m.list()
            .iter()
            .map(|e| e.container_id.clone())
            .collect::<Vec<_>>(),
        vec!["a"]
    );
    assert_eq!(dp.programmed().len(), 1);
    assert_eq!(m.status().ipam.allocated, 1);
    assert!(m
        .gc(&GcRequest {
            valid_attachments: vec![keep("a", "eth0")]
        })
        .expect("gc")
        .removed
        .is_empty());
}

#[test]
fn lowest_free_endpoint_id_is_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
    for (cid, idx) in [("a", 1), ("b", 2), ("c", 3)] {
        m.create(&req(cid, idx)).expect("created");
    }
    m.delete("b").expect("deleted");
    let d = m.create(&req("d", 4)).expect("created").endpoint;
    assert_eq!(d.id, 2);
    // But not its address: round-robin goes on.
    assert_eq!(d.ipv4, ip("10.200.0.5"));
}

#[test]
fn lookup_by_id_container_or_pod() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
    m.create(&req("abc", 1)).expect("created");
    m.create(&req("12345", 2)).expect("digits");
    let found = |s: &str| m.get(&EndpointRef::parse(s)).map(|e| e.container_id);
    assert_eq!(found("1").as_deref(), Some("abc"));
    assert_eq!(found("abc").as_deref(), Some("abc"));
    assert_eq!(found("default/pod-abc").as_deref(), Some("abc"));
    assert_eq!(
        found("12345").as_deref(),
        Some("12345"),
        "a digit container id is found too"
    );
    assert_eq!(found("7"), None);
    assert_eq!(found("prod/pod-abc"), None);
    assert_eq!(
        EndpointRef::parse("ns/p"),
        EndpointRef::Pod(PodRef {
            namespace: "ns".into(),
            name: "p".into()
        })
    );
}

#[test]
fn exhausted_cidr_is_refused_and_rolled_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open_with(tmp.path(), "10.0.0.4/30", dp.clone()).expect("opens");
    let only = m.create(&req("a", 1)).expect("one address").endpoint;
    assert_eq!(only.ipv4, ip("10.0.0.6"));
    let err = m.create(&req("b", 2)).expect_err("full");
    assert_eq!(err.kind(), "exhausted");
    assert!(err.to_string().contains("10.0.0.4/30"), "{err}");
    assert_eq!(m.list().len(), 1);
    assert_eq!(dp.programmed().len(), 1);
    m.delete("a").expect("deleted");
    m.create(&req("b", 2)).expect("free again");
}

#[test]
fn restart_keeps_everything_and_never_reallocates_a_live_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let before = {
        let m = open(tmp.path(), dp.clone());
        for (cid, idx) in [("a", 1), ("b", 2), ("c", 3)] {
            m.create(&req(cid, idx)).expect("created");
        }
        m.delete("b").expect("deleted");
        m.list()
    };
    // Same kernel (pinned datapath), new agent.
    let m = open(tmp.path(), dp.clone());
    assert_eq!(m.list(), before);
    assert_eq!(m.identity(256).expect("kept").references, 2);
    let live: Vec<Ipv4Addr> = before.iter().map(|e| e.ipv4).collect();
    for (cid, idx) in [("d", 4), ("e", 5)] {
        let ep = m.create(&req(cid, idx)).expect("created").endpoint;
        assert!(!live.contains(&ep.ipv4), "{} handed out twice", ep.ipv4);
        assert_ne!(
            ep.ipv4,
            ip("10.200.0.3"),
            "b's address is not reused at once"
        );
    }
    assert_eq!(dp.programmed().len(), 4);
}

#[test]
fn restart_marks_unprogrammable_endpoints_not_ready_and_keeps_their_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
        m.create(&req("a", 1)).expect("created");
    }
    // A rebooted node: the datapath is empty and a's veth is gone.
    let dp = Arc::new(FakeDatapath::new());
    dp.fail_next_upsert("no such interface lxc1");
    let m = open(tmp.path(), dp.clone());
    let ep = m.get(&EndpointRef::Container("a".into())).expect("kept");
    assert_eq!(ep.state, EndpointState::NotReady);
    assert!(ep
        .status_message
        .as_deref()
        .is_some_and(|s| s.contains("no such interface lxc1")));
    let st = m.status();
    assert_eq!(st.ipam.allocated, 1);
    assert_eq!(st.problems.len(), 1);
    assert!(
        st.problems[0].contains("not-ready") && st.problems[0].contains("default/pod-a"),
        "{:?}",
        st.problems
    );
    let other = m.create(&req("b", 2)).expect("created").endpoint;
    assert_ne!(other.ipv4, ep.ipv4);
    // CNI DEL releases it.
    assert_eq!(m.delete("a").expect("deleted").released, Some(ep.ipv4));
}

#[test]
fn restart_removes_datapath_endpoints_the_state_does_not_know() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let kept = {
        let m = open(tmp.path(), dp.clone());
        m.create(&req("a", 1)).expect("created").endpoint
    };
    // A crash between programming the datapath and persisting an add.
    let orphan = EndpointSpec {
        id: 2,
        ifname: "lxc9".into(),
        ifindex: 9,
        ipv4: ip("10.200.0.3"),
        mac: MacAddr::default(),
        host_mac: MacAddr::default(),
        identity: 257,
    };
    dp.upsert_endpoint(&orphan).expect("fake");
    let m = open(tmp.path(), dp.clone());
    assert_eq!(dp.programmed(), vec![spec_of(&kept)]);
    assert_eq!(m.list(), vec![kept]);
}

#[test]
fn corrupt_state_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("state.json"), b"{ not json").expect("write");
    let err =
        open_with(tmp.path(), "10.200.0.0/24", Arc::new(FakeDatapath::new())).expect_err("corrupt");
    let msg = err.to_string();
    assert!(
        msg.contains("state.json") && msg.contains("corrupt"),
        "{msg}"
    );
}

#[test]
fn cidr_change_with_live_addresses_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
        m.create(&req("a", 1)).expect("created");
    }
    let err =
        open_with(tmp.path(), "10.201.0.0/24", Arc::new(FakeDatapath::new())).expect_err("orphans");
    let msg = err.to_string();
    assert!(
        msg.contains("10.200.0.0/24") && msg.contains("10.201.0.0/24"),
        "{msg}"
    );
    // Without live addresses the change is fine.
    {
        let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
        m.delete("a").expect("deleted");
    }
    let m = open_with(tmp.path(), "10.201.0.0/24", Arc::new(FakeDatapath::new()))
        .expect("no live address");
    assert_eq!(
        m.create(&req("b", 2)).expect("created").endpoint.ipv4,
        ip("10.201.0.2")
    );
}

#[test]
fn inconsistent_state_stops_the_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let m = open(tmp.path(), Arc::new(FakeDatapath::new()));
        m.create(&req("a", 1)).expect("created");
    }
    let path = tmp.path().join("state.json");
    let mut state: PersistedState =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("parses");
    state.ipam.allocations.clear();
    std::fs::write(&path, serde_json::to_vec(&state).expect("serialises")).expect("write");
    let err = open_with(tmp.path(), "10.200.0.0/24", Arc::new(FakeDatapath::new()))
        .expect_err("inconsistent");
    let msg = err.to_string();
    assert!(
        msg.contains("inconsistent") && msg.contains("container a"),
        "{msg}"
    );
}

#[test]
fn lost_state_file_is_rebuilt_from_the_datapath_and_its_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let mut web = req("web", 11);
    web.labels = Labels::parse_list("app=web", "k8s").expect("labels");
    let mut db = req("db", 12);
    db.labels = Labels::parse_list("app=db", "k8s").expect("labels");
    let (a, b) = {
        let m = open(tmp.path(), Arc::clone(&dp));
        (
            m.create(&web).expect("web").endpoint,
            m.create(&db).expect("db").endpoint,
        )
    };
    std::fs::remove_file(tmp.path().join(crate::state::STATE_FILE)).expect("state removed");

    let m = open(tmp.path(), Arc::clone(&dp));
    let list = m.list();
    assert_eq!(list.len(), 2, "{list:?}");
    for (want, got) in [(&a, &list[0]), (&b, &list[1])] {
        assert_eq!(got.id, want.id);
        assert_eq!(got.container_id, want.container_id);
        assert_eq!(got.ipv4, want.ipv4);
        assert_eq!(got.identity, want.identity);
        assert_eq!(got.labels, want.labels);
        assert_eq!(got.pod, want.pod);
        assert_eq!(got.state, EndpointState::Ready);
    }
    assert_eq!(dp.programmed().len(), 2, "nothing was detached");
    assert!(m.status().problems.is_empty(), "{:?}", m.status().problems);
    // A new pod gets a fresh address and identity number; the old ones are still taken.
    let c = m.create(&req("new", 13)).expect("new").endpoint;
    assert!(c.ipv4 != a.ipv4 && c.ipv4 != b.ipv4, "{c:?}");
    assert_eq!(c.identity, a.identity, "same labels, same identity");
    // The rebuilt state is the agent's state again: saved, deletable by container id.
    assert!(tmp.path().join(crate::state::STATE_FILE).exists());
    let del = m.delete("db").expect("delete");
    assert_eq!(del.released, Some(b.ipv4));
}

#[test]
fn an_endpoint_without_record_is_kept_not_ready_with_its_address() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let a = {
        let m = open(tmp.path(), Arc::clone(&dp));
        m.create(&req("web", 11)).expect("web").endpoint
    };
    dp.remove_endpoint_record(11).expect("record dropped");
    std::fs::remove_file(tmp.path().join(crate::state::STATE_FILE)).expect("state removed");

    let m = open(tmp.path(), Arc::clone(&dp));
    let list = m.list();
    assert_eq!(list.len(), 1);
    let got = &list[0];
    assert_eq!((got.id, got.ipv4, got.identity), (a.id, a.ipv4, a.identity));
    assert_eq!(got.state, EndpointState::NotReady);
    assert_eq!(got.container_id, recover::unrecovered_container(11));
    let problems = m.status().problems;
    assert!(
        problems.iter().any(|p| p.contains("without its record")),
        "{problems:?}"
    );
    assert_eq!(dp.programmed().len(), 1, "still programmed");
    // Its address and its identity number are not handed out again.
    let mut other = req("other", 12);
    other.labels = Labels::parse_list("app=other", "k8s").expect("labels");
    let b = m.create(&other).expect("other").endpoint;
    assert_ne!(b.ipv4, a.ipv4);
    assert_ne!(b.identity, a.identity);
    // It stays not ready across a restart with the state it now has.
    drop(m);
    let m = open(tmp.path(), Arc::clone(&dp));
    assert_eq!(
        m.get(&EndpointRef::Id(a.id)).expect("kept").state,
        EndpointState::NotReady
    );
}

#[test]
fn a_broken_datapath_is_reported_until_repaired_and_counted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), Arc::clone(&dp));
    let a = m.create(&req("web", 11)).expect("web").endpoint;
    assert_eq!(
        m.check_datapath(None),
        health::CheckReport {
            checked: 1,
            ..Default::default()
        }
    );

    dp.break_endpoint(11, "from_container link detached");
    dp.fail_repairs(Some("link busy"));
    let r = m.check_datapath(None);
    assert_eq!(r.broken, vec![a.id]);
    let st = m.status();
    assert_eq!(st.datapath_repairs, 0);
    assert!(
        st.problems
            .iter()
            .any(|p| p.contains("from_container link detached") && p.contains("link busy")),
        "degraded with the reason: {:?}",
        st.problems
    );

    dp.fail_repairs(None);
    let r = m.check_datapath(Some(11));
    assert_eq!(r.repaired, vec![a.id]);
    let st = m.status();
    assert_eq!(st.datapath_repairs, 1);
    assert!(st.problems.is_empty(), "{:?}", st.problems);
}

#[test]
fn an_endpoint_whose_veth_vanished_is_removed_and_its_address_reused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), Arc::clone(&dp));
    let a = m.create(&req("gone", 11)).expect("gone").endpoint;
    let b = m.create(&req("stays", 12)).expect("stays").endpoint;
    // An event for a link that is still there changes nothing.
    assert_eq!(m.remove_vanished(11), None);

    dp.remove_link(11, "lxc11");
    let r = m.check_datapath(None);
    assert_eq!(r.vanished, vec![a.id]);
    assert_eq!(
        m.list().iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![b.id]
    );
    assert!(
        dp.programmed().iter().all(|s| s.ifindex != 11),
        "removed from the datapath"
    );
    assert_eq!(m.status().endpoints_vanished, 1);
    assert!(dp
        .endpoint_records()
        .expect("records")
        .iter()
        .all(|(i, _)| *i != 11));
    // Its address is free again (the allocator hands out the lowest free one after the cursor,
    // so fill the CIDR until it comes back).
    let mut seen = false;
    for i in 0..300u32 {
        match m.create(&req(&format!("c{i}"), 100 + i)) {
            Ok(c) if c.endpoint.ipv4 == a.ipv4 => {
                seen = true;
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(seen, "address {} handed out again", a.ipv4);
}

#[test]
fn the_watch_removes_an_endpoint_on_its_link_event() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dp = Arc::new(FakeDatapath::new());
        let m = Arc::new(open(tmp.path(), Arc::clone(&dp)));
        m.create(&req("gone", 11)).expect("gone");
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        // A long interval: only the event can explain a quick removal.
        let task = tokio::spawn(crate::endpoints_watch::run_endpoint_watch(
            Arc::clone(&m),
            std::time::Duration::from_secs(3600),
            stop,
        ));
        // Let the first pass and the subscription happen.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        dp.remove_link(11, "lxc11");
        let mut gone = false;
        for _ in 0..50 {
            if m.list().is_empty() {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(gone, "removed on the event");
        let _ = stop_tx.send(true);
        task.await.expect("watch ends");
    });
}

#[test]
fn attachments_are_keyed_by_container_and_interface() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dp = Arc::new(FakeDatapath::new());
    let m = open(tmp.path(), Arc::clone(&dp));
    let other = m.create(&req("other", 11)).expect("other").endpoint;
    assert_eq!(other.id, 1);
    // Container "1" is not endpoint 1.
    let c0 = m.create(&req("1", 12)).expect("container 1").endpoint;
    let mut r1 = req("1", 13);
    r1.ifname = "eth1".to_owned();
    let c1 = m.create(&r1).expect("container 1, eth1").endpoint;
    assert!(matches!(m.create(&r1), Err(EndpointError::Conflict(_))));
    assert_eq!(m.get_attachment("1", "eth0").map(|e| e.id), Some(c0.id));
    assert_eq!(m.get_attachment("1", "eth1").map(|e| e.id), Some(c1.id));
    assert_eq!(m.get_attachment("1", "eth2"), None);
    // A DEL without the interface cannot choose.
    assert!(matches!(m.delete("1"), Err(EndpointError::Conflict(_))));
    // DEL of eth1 leaves eth0 (and survives a restart that reads the state back).
    let d = m.delete_attachment("1", "eth1").expect("delete eth1");
    assert_eq!(d.endpoint.map(|e| e.id), Some(c1.id));
    assert_eq!(
        m.delete_attachment("1", "eth1").expect("again").endpoint,
        None
    );
    drop(m);
    let m = open(tmp.path(), Arc::clone(&dp));
    let ids: Vec<u16> = m.list().iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![other.id, c0.id]);
    // With one attachment left, the old DEL by container id still works.
    assert_eq!(
        m.delete("1").expect("delete").endpoint.map(|e| e.id),
        Some(c0.id)
    );
}

mod kubernetes {
    //! Kubernetes mode: labels and named ports from the Pod object, and the relabel
    //! transaction.

    use std::time::Duration;

    use ciliate_k8s::{PodInfo, PodPhase};
    use ciliate_model::lb::L4Proto;

    use super::*;
    use crate::pods::PodCache;

    fn pod(name: &str, labels: &[(&str, &str)], http_port: u16) -> PodInfo {
        PodInfo {
            namespace: "prod".to_owned(),
            name: name.to_owned(),
            uid: format!("uid-{name}"),
            node_name: Some(NODE.to_owned()),
            host_network: false,
            pod_ips: Vec::new(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            named_ports: vec![NamedPort {
                name: "http".to_owned(),
                protocol: L4Proto::Tcp,
                port: http_port,
            }],
            phase: PodPhase::Pending,
        }
    }

    fn pod_req(name: &str, ifindex: u32) -> EndpointCreateRequest {
        let mut r = req(&format!("c-{name}"), ifindex);
        r.pod = Some(PodRef {
            namespace: "prod".to_owned(),
            name: name.to_owned(),
        });
        r.labels = Labels::parse_list("app=from-cni-args", "k8s").expect("labels");
        r
    }

    fn k8s_manager(dir: &Path, dp: Arc<FakeDatapath>) -> (EndpointManager, Arc<PodCache>) {
        let m = open(dir, dp);
        let cache = Arc::new(PodCache::new());
        m.attach_pods(Arc::clone(&cache), Duration::from_millis(50));
        (m, cache)
    }

    fn on_disk(dir: &Path) -> PersistedState {
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).expect("read"))
            .expect("parses")
    }

    #[test]
    fn an_endpoint_takes_its_pods_labels_and_ports_not_the_requests() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (m, cache) = k8s_manager(tmp.path(), Arc::new(FakeDatapath::new()));
        cache.apply(pod(
            "web-0",
            &[("app", "web"), ("pod-template-hash", "x1")],
            8080,
        ));
        let ep = m.create(&pod_req("web-0", 10)).expect("created").endpoint;
        assert_eq!(
            ep.labels.to_string(),
            "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod"
        );
        assert_eq!(ep.named_ports[0].port, 8080);
        // A request without a pod (standalone use) keeps its CNI_ARGS labels.
        let mut bare = req("bare", 11);
        bare.pod = None;
        let ep = m.create(&bare).expect("created").endpoint;
        assert_eq!(ep.labels.to_string(), "k8s:app=web");
    }

    #[test]
    fn an_endpoint_whose_pod_never_comes_fails_and_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dp = Arc::new(FakeDatapath::new());
        let (m, cache) = k8s_manager(tmp.path(), dp.clone());
        let err = m.create(&pod_req("late", 10)).expect_err("no Pod yet");
        assert_eq!(err.kind(), "unavailable");
        let msg = err.to_string();
        assert!(
            msg.contains("prod/late") && msg.contains("retries"),
            "{msg}"
        );
        assert!(m.list().is_empty() && dp.programmed().is_empty());
        assert_eq!(m.status().ipam.allocated, 0);
        // Once the Pod is here the retried ADD works.
        cache.apply(pod("late", &[("app", "late")], 80));
        m.create(&pod_req("late", 10)).expect("retry works");
    }

    #[test]
    fn relabel_moves_the_endpoint_to_the_new_identity_and_releases_the_old() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dp = Arc::new(FakeDatapath::new());
        let (m, cache) = k8s_manager(tmp.path(), dp.clone());
        cache.apply(pod("a", &[("app", "web")], 8080));
        cache.apply(pod("b", &[("app", "web")], 8080));
        let a = m.create(&pod_req("a", 10)).expect("a").endpoint;
        let b = m.create(&pod_req("b", 11)).expect("b").endpoint;
        assert_eq!(a.identity, b.identity);

        let relabelled = m
            .relabel_pod(&pod("a", &[("app", "api")], 9090))
            .expect("relabelled");
        assert_eq!(relabelled.len(), 1);
        let now = m.get(&EndpointRef::Id(a.id)).expect("still there");
        assert_ne!(now.identity, a.identity);
        assert_eq!(
            now.labels.to_string(),
            "k8s:app=api,k8s:io.kubernetes.pod.namespace=prod"
        );
        assert_eq!(now.named_ports[0].port, 9090);
        assert_eq!((now.ipv4, now.id), (a.ipv4, a.id), "same address, same id");
        // The datapath carries the new identity; the state file has it.
        let spec = dp
            .programmed()
            .into_iter()
            .find(|s| s.id == a.id)
            .expect("programmed");
        assert_eq!(spec.identity, now.identity);
        assert_eq!(
            on_disk(tmp.path())
                .endpoints
                .iter()
                .find(|e| e.id == a.id)
                .expect("persisted")
                .identity,
            now.identity
        );
        assert_eq!(m.identity(a.identity).expect("b keeps it").references, 1);
        assert_eq!(m.identity(now.identity).expect("new").references, 1);

        // Unchanged labels and ports: nothing to do.
        assert!(m
            .relabel_pod(&pod("a", &[("app", "api")], 9090))
            .expect("no-op")
            .is_empty());
        // A pod without an endpoint here: nothing to do.
        assert!(m
            .relabel_pod(&pod("elsewhere", &[("app", "x")], 1))
            .expect("no-op")
            .is_empty());
        // b moves too: the old identity's last reference goes.
        m.relabel_pod(&pod("b", &[("app", "api")], 9090))
            .expect("relabelled");
        assert!(m.identity(a.identity).is_none(), "old identity released");
        assert_eq!(m.identity(now.identity).expect("shared").references, 2);

        // A restart keeps the new labels.
        drop(m);
        let m = open(tmp.path(), dp);
        assert_eq!(
            m.get(&EndpointRef::Id(a.id)).expect("restored").identity,
            now.identity
        );
    }

    #[test]
    fn a_failed_relabel_leaves_the_old_state_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dp = Arc::new(FakeDatapath::new());
        let (m, cache) = k8s_manager(tmp.path(), dp.clone());
        cache.apply(pod("a", &[("app", "web")], 8080));
        let a = m.create(&pod_req("a", 10)).expect("a").endpoint;
        let before_disk = on_disk(tmp.path());
        let check_whole = |m: &EndpointManager| {
            assert_eq!(m.get(&EndpointRef::Id(a.id)).expect("kept"), a);
            assert_eq!(dp.programmed(), vec![spec_of(&a)]);
            assert_eq!(m.status().identities, 1, "no new identity held");
            assert_eq!(on_disk(tmp.path()), before_disk);
        };

        dp.fail_next_upsert("map full");
        let err = m
            .relabel_pod(&pod("a", &[("app", "api")], 8080))
            .expect_err("datapath refuses");
        assert_eq!(err.kind(), "datapath");
        assert!(err.to_string().contains("map full"), "{err}");
        check_whole(&m);

        // The state cannot be saved after the datapath was written: put back.
        let blocker = tmp.path().join(TMP_FILE);
        std::fs::create_dir(&blocker).expect("block the temporary file");
        let err = m
            .relabel_pod(&pod("a", &[("app", "api")], 8080))
            .expect_err("cannot persist");
        assert_eq!(err.kind(), "state");
        check_whole(&m);
        std::fs::remove_dir(&blocker).expect("unblock");

        // The retry works.
        let moved = m
            .relabel_pod(&pod("a", &[("app", "api")], 8080))
            .expect("relabelled");
        assert_ne!(moved[0].identity, a.identity);
    }

    /// A cluster that numbers label sets from 7000 and counts this node's references.
    #[derive(Debug, Default)]
    struct FakeCluster {
        numbers: std::sync::Mutex<BTreeMap<Labels, NumericIdentity>>,
        refs: std::sync::Mutex<BTreeMap<String, i64>>,
        up: std::sync::Mutex<Vec<(Ipv4Addr, NumericIdentity)>>,
        down: AtomicBool,
    }

    impl FakeCluster {
        fn refs(&self, labels: &str) -> i64 {
            self.refs
                .lock()
                .expect("lock")
                .get(labels)
                .copied()
                .unwrap_or(0)
        }
    }

    impl ClusterHooks for FakeCluster {
        fn allocate_identity(&self, labels: &Labels) -> Result<NumericIdentity, String> {
            if self.down.load(Ordering::SeqCst) {
                return Err("etcd is down".to_owned());
            }
            let mut numbers = self.numbers.lock().expect("lock");
            let next = 7000 + u32::try_from(numbers.len()).expect("few");
            let id = *numbers.entry(labels.clone()).or_insert(next);
            *self
                .refs
                .lock()
                .expect("lock")
                .entry(labels.to_string())
                .or_default() += 1;
            Ok(id)
        }
        fn release_identity(&self, labels: &Labels) {
            *self
                .refs
                .lock()
                .expect("lock")
                .entry(labels.to_string())
                .or_default() -= 1;
        }
        fn endpoint_up(&self, ep: &Endpoint) {
            self.up.lock().expect("lock").push((ep.ipv4, ep.identity));
        }
        fn endpoint_down(&self, _ep: &Endpoint) {}
    }

    #[test]
    fn in_a_cluster_a_relabel_moves_the_references_and_republishes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (m, cache) = k8s_manager(tmp.path(), Arc::new(FakeDatapath::new()));
        let cluster = Arc::new(FakeCluster::default());
        m.attach_cluster(Arc::clone(&cluster) as Arc<dyn ClusterHooks>);
        cache.apply(pod("a", &[("app", "web")], 80));
        let a = m.create(&pod_req("a", 10)).expect("a").endpoint;
        let web = "k8s:app=web,k8s:io.kubernetes.pod.namespace=prod";
        let api = "k8s:app=api,k8s:io.kubernetes.pod.namespace=prod";
        assert_eq!((a.identity, cluster.refs(web)), (7000, 1));

        // etcd down: nothing changes, no reference is left behind.
        cluster.down.store(true, Ordering::SeqCst);
        let err = m
            .relabel_pod(&pod("a", &[("app", "api")], 80))
            .expect_err("etcd down");
        assert_eq!(err.kind(), "cluster");
        assert_eq!(m.get(&EndpointRef::Id(a.id)).expect("kept"), a);
        assert_eq!((cluster.refs(web), cluster.refs(api)), (1, 0));

        cluster.down.store(false, Ordering::SeqCst);
        let moved = m
            .relabel_pod(&pod("a", &[("app", "api")], 80))
            .expect("relabelled");
        assert_eq!(moved[0].identity, 7001, "the cluster's number");
        assert_eq!((cluster.refs(web), cluster.refs(api)), (0, 1));
        assert_eq!(
            cluster.up.lock().expect("lock").last(),
            Some(&(a.ipv4, 7001)),
            "the address is published with its new identity"
        );
    }
}
