//! The Kubernetes objects Ciliate reads, as Kubernetes writes them: `v1/Service`,
//! `discovery.k8s.io/v1/EndpointSlice` and `v1/Endpoints` for the load balancer, and
//! `v1/Namespace` for the namespace labels policies select on.
//!
//! Field names are Kubernetes' own (camelCase, `clusterIP`, `externalIPs`, ...), so manifests
//! written for kubectl, and what `kubectl get -o yaml` prints, load unchanged. Only the fields
//! Ciliate uses are modelled; others (annotations, `status.conditions`, `ipFamilies`, ...) are
//! ignored when read, as kubectl ignores what it does not know. A `null` value reads as the
//! field's absence, as it does in Kubernetes.
//!
//! These types hold what was written; [`crate::manifest`] decodes them from documents and
//! checks their values, and `crates/lb` turns them into frontends and backends.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::lb::L4Proto;
pub use crate::small_string::SmallString;

/// The label an EndpointSlice carries to name the Service it serves.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// `spec.sessionAffinityConfig.clientIP.timeoutSeconds` when not given (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// Longest `timeoutSeconds` Kubernetes accepts (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Reads `null` as the type's default, as the Kubernetes API server does for optional fields.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads a list as [`nullable`] does, without spare room: a decoded object is kept as long as
/// it is in force, and a list read element by element has room for four (at 10,000 Services,
/// the spare room of their ports, endpoints and addresses was 550 bytes per Service).
fn nullable_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    let mut v = Option::<Vec<T>>::deserialize(d)?.unwrap_or_default();
    v.shrink_to_fit();
    Ok(v)
}

fn tcp() -> L4Proto {
    L4Proto::Tcp
}

fn is_tcp(p: &L4Proto) -> bool {
    *p == L4Proto::Tcp
}

/// The kinds of object Ciliate reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `v1/Service`.
    Service,
    /// `discovery.k8s.io/v1/EndpointSlice`.
    EndpointSlice,
    /// `v1/Endpoints`.
    Endpoints,
    /// `v1/Namespace` (cluster-scoped: its key's namespace is empty).
    Namespace,
}

impl Kind {
    /// Every kind, in the order they are listed to users.
    pub const ALL: [Kind; 4] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Endpoints,
        Kind::Namespace,
    ];

    /// The `apiVersion` objects of this kind carry.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::Service | Self::Endpoints | Self::Namespace => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    /// The `kind` field's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Endpoints => "Endpoints",
            Self::Namespace => "Namespace",
        }
    }

    /// The lowercase name kubectl prints in `service/web created`.
    pub fn resource(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::EndpointSlice => "endpointslice",
            Self::Endpoints => "endpoints",
            Self::Namespace => "namespace",
        }
    }

    /// Whether its objects live in a namespace (all but `Namespace`).
    pub fn is_namespaced(self) -> bool {
        self != Self::Namespace
    }

    /// The kind with this `apiVersion` and `kind`.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        Self::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies an object: its kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKey {
    /// The kind.
    pub kind: Kind,
    /// The namespace.
    pub namespace: SmallString,
    /// The name.
    pub name: SmallString,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind.is_namespaced() {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        } else {
            write!(f, "{} {}", self.kind, self.name)
        }
    }
}

/// String keys to string values (`metadata.labels`, `spec.selector`), as a list sorted by
/// key: what a `BTreeMap` reads and writes, in a fraction of its memory. Objects carry one or
/// two labels, and a B-tree's smallest node has room for eleven (about 540 bytes for one
/// label; 10,000 Services and their EndpointSlices held 11 MB of such nodes).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct StringMap(Box<[(SmallString, SmallString)]>);

impl StringMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Sets `key` to `value`; the value it had.
    pub fn insert(
        &mut self,
        key: impl Into<SmallString>,
        value: impl Into<SmallString>,
    ) -> Option<SmallString> {
        let (key, value) = (key.into(), value.into());
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.insert(i, (key, value));
                self.0 = v.into_boxed_slice();
                None
            }
        }
    }

    /// The entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<SmallString>, V: Into<SmallString>> FromIterator<(K, V)> for StringMap {
    /// As a `BTreeMap` collects: sorted by key, the last value of a key given twice.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut all: Vec<(SmallString, SmallString)> = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        // Stable: of equal keys, the one given last stays last.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(SmallString, SmallString)> = Vec::with_capacity(all.len());
        for (k, v) in all {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = v,
                _ => out.push((k, v)),
            }
        }
        Self(out.into_boxed_slice())
    }
}

impl From<BTreeMap<String, String>> for StringMap {
    fn from(m: BTreeMap<String, String>) -> Self {
        Self(m.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl From<StringMap> for BTreeMap<String, String> {
    fn from(m: StringMap) -> Self {
        m.0.into_vec()
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    }
}

impl<'a> IntoIterator for &'a StringMap {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (SmallString, SmallString)>,
        fn(&'a (SmallString, SmallString)) -> (&'a str, &'a str),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl Serialize for StringMap {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry::<SmallString, SmallString>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        d.deserialize_map(V)
    }
}

/// `metadata`: the part every object has. Other metadata fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name.
    #[serde(default, deserialize_with = "nullable")]
    pub name: SmallString,
    /// The namespace; [`crate::manifest`] fills in `default` when none is given.
    #[serde(default, deserialize_with = "nullable")]
    pub namespace: SmallString,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "StringMap::is_empty"
    )]
    pub labels: StringMap,
}

/// `spec.type`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum ServiceType {
    /// Reachable at its cluster IP.
    #[default]
    ClusterIP,
    /// Also at every node address, on the port's `nodePort`.
    NodePort,
    /// Also at the load balancer's ingress addresses (`status.loadBalancer.ingress`).
    LoadBalancer,
    /// A DNS alias: nothing to balance.
    ExternalName,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
            Self::ExternalName => "ExternalName",
        })
    }
}

/// `spec.sessionAffinity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SessionAffinity {
    /// Each connection picks a backend.
    #[default]
    None,
    /// Connections from one client address go to the same backend for a while.
    ClientIP,
}

/// `spec.internalTrafficPolicy` / `spec.externalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Any backend of the cluster.
    #[default]
    Cluster,
    /// Only backends on this node (`nodeName` equal to the agent's node name).
    Local,
}

/// Kubernetes' `IntOrString`: a port number or a named port (`targetPort`, policy ports, ICMP
/// types). Kept as written; the field's validation decides what a string means and checks
/// ranges, so an out-of-range number gets a message naming the field.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntOrString {
    /// A number as written.
    Int(i64),
    /// A string as written (a port name, or a number in a string).
    String(String),
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::String(s) => f.write_str(s),
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(n) => s.serialize_i64(*n),
            Self::String(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    // By hand rather than `untagged`, so that a wrong type says what was expected.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a port name")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrString::String(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The port's name; required when the Service has more than one port.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub name: SmallString,
    /// TCP (the default), UDP or SCTP.
    #[serde(default = "tcp", skip_serializing_if = "is_tcp")]
    pub protocol: L4Proto,
    /// The port the Service listens on.
    pub port: i32,
    /// Where backends listen: a number, or a name resolved through the EndpointSlices.
    /// Defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<IntOrString>,
    /// The port on every node address (NodePort and LoadBalancer Services).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<i32>,
}

/// `spec.sessionAffinityConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    /// `clientIP`.
    #[serde(
        default,
        rename = "clientIP",
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ip: Option<ClientIpConfig>,
}

/// `spec.sessionAffinityConfig.clientIP`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    /// How long a client sticks to its backend after its last connection, in seconds
    /// (default 10800, at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
}

/// `spec` of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// ClusterIP (the default), NodePort, LoadBalancer or ExternalName.
    #[serde(default, rename = "type", deserialize_with = "nullable")]
    pub service_type: ServiceType,
    /// The virtual address, or `None` for a headless Service.
    #[serde(
        default,
        rename = "clusterIP",
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub cluster_ip: SmallString,
    /// All cluster addresses; the first one equals `clusterIP`.
    #[serde(
        default,
        rename = "clusterIPs",
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_ips: Vec<SmallString>,
    /// Further addresses the Service answers on.
    #[serde(
        default,
        rename = "externalIPs",
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_ips: Vec<SmallString>,
    /// The ports.
    #[serde(
        default,
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<ServicePort>,
    /// Which pods back the Service; the EndpointSlices say which they are, so this is kept
    /// for display only.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "StringMap::is_empty"
    )]
    pub selector: StringMap,
    /// None (the default) or ClientIP.
    #[serde(default, deserialize_with = "nullable")]
    pub session_affinity: SessionAffinity,
    /// Settings of `ClientIP` affinity.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Option::is_none"
    )]
    pub session_affinity_config: Option<SessionAffinityConfig>,
    /// Whether the cluster IP reaches only node-local backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_traffic_policy: Option<TrafficPolicy>,
    /// Whether node ports, external and load-balancer addresses reach only node-local backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_traffic_policy: Option<TrafficPolicy>,
    /// The DNS name of an ExternalName Service.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub external_name: SmallString,
}

impl ServiceSpec {
    /// Whether the Service is headless (`clusterIP: None`): it has no virtual address.
    pub fn is_headless(&self) -> bool {
        self.cluster_ip == "None"
    }

    /// The `ClientIP` affinity timeout in seconds, when affinity is on.
    pub fn affinity_timeout(&self) -> Option<u32> {
        if self.session_affinity != SessionAffinity::ClientIP {
            return None;
        }
        let given = self
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds);
        Some(match given {
            Some(t) => u32::try_from(t.clamp(1, i64::from(MAX_AFFINITY_TIMEOUT)))
                .unwrap_or(MAX_AFFINITY_TIMEOUT),
            None => DEFAULT_AFFINITY_TIMEOUT,
        })
    }
}

/// One entry of `status.loadBalancer.ingress`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerIngress {
    /// The load balancer's address (entries with only a `hostname` are ignored).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub ip: SmallString,
}

/// `status.loadBalancer`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerStatus {
    /// The addresses the load balancer sends traffic from.
    #[serde(
        default,
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ingress: Vec<LoadBalancerIngress>,
}

/// `status` of a Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The load balancer, for LoadBalancer Services.
    #[serde(default, deserialize_with = "nullable")]
    pub load_balancer: LoadBalancerStatus,
}

/// A `v1/Service`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// Name, namespace, labels.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    /// What the Service is; in a block of its own, so that an [`Object`] (the size of its
    /// largest kind) is the size of an EndpointSlice, not of a Service (248 bytes with the
    /// spec in place: each EndpointSlice took as much).
    #[serde(default, deserialize_with = "nullable")]
    pub spec: Box<ServiceSpec>,
    /// Where a load balancer put it.
    #[serde(default, deserialize_with = "nullable")]
    pub status: ServiceStatus,
}

/// The label Kubernetes puts on every namespace, with the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `v1/Namespace`: only its labels matter (namespace selectors of policies select on them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Name and labels; `metadata.namespace` is ignored, as Kubernetes ignores it on
    /// cluster-scoped objects.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
}

impl Namespace {
    /// Its labels with `kubernetes.io/metadata.name`, which Kubernetes always sets to the name.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self.metadata.labels.clone().into();
        out.insert(
            NAMESPACE_NAME_LABEL.to_owned(),
            self.metadata.name.to_string(),
        );
        out
    }
}

/// `addressType` of an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AddressType {
    /// IPv4 addresses: the only kind Ciliate balances to.
    IPv4,
    /// IPv6 addresses (read, then refused with a clear message).
    IPv6,
    /// Domain names (read, then refused with a clear message).
    FQDN,
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IPv4 => "IPv4",
            Self::IPv6 => "IPv6",
            Self::FQDN => "FQDN",
        })
    }
}

/// `conditions` of an endpoint. Absent values read as Kubernetes documents them: `ready`
/// unknown counts as ready, `serving` unknown as `ready`, `terminating` unknown as false.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Ready for new connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Able to serve, whether terminating or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// Shutting down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

impl EndpointConditions {
    /// `ready`, unknown counting as true.
    pub fn is_ready(&self) -> bool {
        self.ready.unwrap_or(true)
    }

    /// `serving`, unknown counting as [`Self::is_ready`].
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or_else(|| self.is_ready())
    }

    /// `terminating`, unknown counting as false.
    pub fn is_terminating(&self) -> bool {
        self.terminating.unwrap_or(false)
    }
}

/// `addresses` of an endpoint: nearly always one (kube-proxy and Ciliate use the first), kept
/// in place; more (or none) in one block of exactly their number. A vector of one was a block
/// of its own for each endpoint (64 bytes of chunks per Service at two endpoints each).
/// Reads and writes as a JSON list; derefs to a slice.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Addresses(AddressesRepr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum AddressesRepr {
    One(SmallString),
    Other(Box<[SmallString]>),
}

impl Addresses {
    /// A list of one address.
    pub fn one(address: impl Into<SmallString>) -> Self {
        Self(AddressesRepr::One(address.into()))
    }
}

impl Default for Addresses {
    fn default() -> Self {
        Self(AddressesRepr::Other(Box::default()))
    }
}

impl std::ops::Deref for Addresses {
    type Target = [SmallString];
    fn deref(&self) -> &[SmallString] {
        match &self.0 {
            AddressesRepr::One(a) => std::slice::from_ref(a),
            AddressesRepr::Other(all) => all,
        }
    }
}

impl<T: Into<SmallString>> From<Vec<T>> for Addresses {
    fn from(v: Vec<T>) -> Self {
        v.into_iter().collect()
    }
}

impl<T: Into<SmallString>> FromIterator<T> for Addresses {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut iter = iter.into_iter();
        let Some(first) = iter.next() else {
            return Self::default();
        };
        let Some(second) = iter.next() else {
            return Self::one(first);
        };
        let all: Vec<SmallString> = [first.into(), second.into()]
            .into_iter()
            .chain(iter.map(Into::into))
            .collect();
        Self(AddressesRepr::Other(all.into_boxed_slice()))
    }
}

impl fmt::Debug for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Addresses;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of addresses")
            }
            // One address is read without a vector in between.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let Some(first) = seq.next_element::<SmallString>()? else {
                    return Ok(Addresses::default());
                };
                let Some(second) = seq.next_element::<SmallString>()? else {
                    return Ok(Addresses::one(first));
                };
                let mut all = vec![first, second];
                while let Some(a) = seq.next_element()? {
                    all.push(a);
                }
                Ok(Addresses(AddressesRepr::Other(all.into_boxed_slice())))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One entry of an EndpointSlice's `endpoints`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SliceEndpoint {
    /// Its addresses; like kube-proxy, Ciliate uses the first.
    #[serde(default, deserialize_with = "nullable")]
    pub addresses: Addresses,
    /// Ready, serving, terminating.
    #[serde(default, deserialize_with = "nullable")]
    pub conditions: EndpointConditions,
    /// The node it runs on (for `Local` traffic policies).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub node_name: SmallString,
}

/// One entry of an EndpointSlice's (or an Endpoints subset's) `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// The name: the Service port's name it serves (kube-proxy matches on it).
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub name: SmallString,
    /// TCP (the default), UDP or SCTP.
    #[serde(default = "tcp", skip_serializing_if = "is_tcp")]
    pub protocol: L4Proto,
    /// The port backends listen on.
    pub port: i32,
}

/// A `discovery.k8s.io/v1/EndpointSlice`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// Name, namespace, and the `kubernetes.io/service-name` label.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    /// IPv4, IPv6 or FQDN; only IPv4 is accepted.
    pub address_type: AddressType,
    /// The endpoints.
    #[serde(default, deserialize_with = "nullable_list")]
    pub endpoints: Vec<SliceEndpoint>,
    /// The ports every endpoint of the slice serves.
    #[serde(default, deserialize_with = "nullable_list")]
    pub ports: Vec<EndpointPort>,
}

impl EndpointSlice {
    /// The Service the slice serves (its `kubernetes.io/service-name` label).
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get(SERVICE_NAME_LABEL)
    }
}

/// One address of an Endpoints subset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointAddress {
    /// The address.
    #[serde(default, deserialize_with = "nullable")]
    pub ip: SmallString,
    /// The node it runs on.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "str::is_empty"
    )]
    pub node_name: SmallString,
}

/// One subset of an Endpoints object: addresses that all serve the same ports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    /// Ready addresses.
    #[serde(
        default,
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub addresses: Vec<EndpointAddress>,
    /// Addresses not ready (never balanced to).
    #[serde(
        default,
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_ready_addresses: Vec<EndpointAddress>,
    /// The ports.
    #[serde(
        default,
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ports: Vec<EndpointPort>,
}

/// A `v1/Endpoints`: the older form of EndpointSlices, named like its Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// Name (the Service's) and namespace.
    #[serde(default, deserialize_with = "nullable")]
    pub metadata: ObjectMeta,
    /// The subsets.
    #[serde(
        default,
        deserialize_with = "nullable_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub subsets: Vec<EndpointSubset>,
}

impl Endpoints {
    /// The same endpoints as EndpointSlices, one per subset, as Kubernetes' mirroring
    /// controller would write them: ready addresses are ready, not-ready ones neither ready
    /// nor serving.
    pub fn to_slices(&self) -> Vec<EndpointSlice> {
        self.subsets
            .iter()
            .enumerate()
            .map(|(i, subset)| {
                let endpoint = |a: &EndpointAddress, ready: bool| SliceEndpoint {
                    addresses: Addresses::one(a.ip.clone()),
                    conditions: EndpointConditions {
                        ready: Some(ready),
                        serving: Some(ready),
                        terminating: Some(false),
                    },
                    node_name: a.node_name.clone(),
                };
                let mut labels = StringMap::new();
                labels.insert(SERVICE_NAME_LABEL, &self.metadata.name);
                EndpointSlice {
                    metadata: ObjectMeta {
                        name: format!("{}-subset-{i}", self.metadata.name).into(),
                        namespace: self.metadata.namespace.clone(),
                        labels,
                    },
                    address_type: AddressType::IPv4,
                    endpoints: subset
                        .addresses
                        .iter()
                        .map(|a| endpoint(a, true))
                        .chain(
                            subset
                                .not_ready_addresses
                                .iter()
                                .map(|a| endpoint(a, false)),
                        )
                        .collect(),
                    ports: subset.ports.clone(),
                }
            })
            .collect()
    }
}

/// One object of a kind Ciliate reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    /// A Service.
    Service(Service),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// An Endpoints.
    Endpoints(Endpoints),
    /// A Namespace.
    Namespace(Namespace),
}

impl Object {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Endpoints(_) => Kind::Endpoints,
            Self::Namespace(_) => Kind::Namespace,
        }
    }

    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Endpoints(o) => &o.metadata,
            Self::Namespace(o) => &o.metadata,
        }
    }

    /// Its metadata, to change.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Service(o) => &mut o.metadata,
            Self::EndpointSlice(o) => &mut o.metadata,
            Self::Endpoints(o) => &mut o.metadata,
            Self::Namespace(o) => &mut o.metadata,
        }
    }

    /// What identifies it.
    pub fn key(&self) -> ObjectKey {
        let m = self.metadata();
        ObjectKey {
            kind: self.kind(),
            namespace: m.namespace.clone(),
            name: m.name.clone(),
        }
    }

    /// The object as a manifest document: `apiVersion` and `kind` first, then its fields.
    pub fn to_value(&self) -> serde_json::Value {
        let fields = match self {
            Self::Service(o) => serde_json::to_value(o),
            Self::EndpointSlice(o) => serde_json::to_value(o),
            Self::Endpoints(o) => serde_json::to_value(o),
            Self::Namespace(o) => serde_json::to_value(o),
        };
        let mut out = serde_json::Map::new();
        out.insert("apiVersion".into(), self.kind().api_version().into());
        out.insert("kind".into(), self.kind().as_str().into());
        // Plain structs of strings, numbers and maps with string keys always serialise.
        if let Ok(serde_json::Value::Object(fields)) = fields {
            out.extend(fields);
        }
        serde_json::Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_default_as_kubernetes_documents() {
        let c = EndpointConditions::default();
        assert!(c.is_ready() && c.is_serving() && !c.is_terminating());
        let c = EndpointConditions {
            ready: Some(false),
            ..Default::default()
        };
        assert!(!c.is_serving(), "serving unknown follows ready");
    }

    #[test]
    fn affinity_timeout_defaults_and_is_bounded() {
        let mut spec = ServiceSpec::default();
        assert_eq!(spec.affinity_timeout(), None);
        spec.session_affinity = SessionAffinity::ClientIP;
        assert_eq!(spec.affinity_timeout(), Some(DEFAULT_AFFINITY_TIMEOUT));
        spec.session_affinity_config = Some(SessionAffinityConfig {
            client_ip: Some(ClientIpConfig {
                timeout_seconds: Some(60),
            }),
        });
        assert_eq!(spec.affinity_timeout(), Some(60));
    }

    #[test]
    fn endpoints_become_one_slice_per_subset() {
        let ep = Endpoints {
            metadata: ObjectMeta {
                name: "web".into(),
                namespace: "default".into(),
                labels: StringMap::new(),
            },
            subsets: vec![EndpointSubset {
                addresses: vec![EndpointAddress {
                    ip: "10.0.0.1".into(),
                    node_name: "n1".into(),
                }],
                not_ready_addresses: vec![EndpointAddress {
                    ip: "10.0.0.2".into(),
                    node_name: Default::default(),
                }],
                ports: vec![EndpointPort {
                    name: "http".into(),
                    protocol: L4Proto::Tcp,
                    port: 8080,
                }],
            }],
        };
        let slices = ep.to_slices();
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].service_name(), Some("web"));
        assert!(slices[0].endpoints[0].conditions.is_ready());
        assert!(!slices[0].endpoints[1].conditions.is_serving());
    }

    #[test]
    fn an_object_is_the_size_of_an_endpoint_slice() {
        use std::mem::size_of;
        assert_eq!(size_of::<Addresses>(), size_of::<SmallString>());
        assert!(size_of::<Service>() <= size_of::<EndpointSlice>());
        assert!(size_of::<Object>() <= 128, "{} bytes", size_of::<Object>());
    }

    #[test]
    fn addresses_read_and_write_as_a_list() {
        for text in [
            r#"[]"#,
            r#"["10.0.0.1"]"#,
            r#"["10.0.0.1","10.0.0.2","10.0.0.3"]"#,
        ] {
            let a: Addresses = serde_json::from_str(text).expect("a list");
            let v: Vec<String> = serde_json::from_str(text).expect("a list");
            assert_eq!(a.iter().map(|s| s.as_str()).collect::<Vec<_>>(), v);
            assert_eq!(serde_json::to_string(&a).expect("json"), text);
            assert_eq!(Addresses::from(v.clone()), a);
        }
        assert!(serde_json::from_str::<Addresses>(r#""10.0.0.1""#).is_err());
        let e: SliceEndpoint = serde_json::from_str(r#"{"addresses":null}"#).expect("null");
        assert!(e.addresses.is_empty());
    }

    proptest::proptest! {
        /// What a Service and a slice hold writes back as what was read (as `-o json` prints
        /// it): names short enough to stay in place and longer ones, escapes, any number of
        /// addresses and labels.
        #[test]
        fn objects_write_back_what_was_read(
            name in "[a-z0-9.\\-\"é]{1,40}",
            ns in "[a-z]{1,30}",
            labels in proptest::collection::btree_map("[a-z./-]{1,30}", "[a-z0-9]{0,30}", 0..3),
            addresses in proptest::collection::vec("[0-9.]{7,15}", 0..4),
            node in "[a-z]{0,30}",
        ) {
            let slice = serde_json::json!({
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "addressType": "IPv4",
                "endpoints": [{"addresses": addresses, "conditions": {"ready": true}, "nodeName": node}],
                "ports": [{"name": name, "port": 80}],
            });
            let typed: EndpointSlice = serde_json::from_value(slice.clone()).expect("reads");
            let mut want = slice;
            if node.is_empty() {
                want["endpoints"][0].as_object_mut().expect("map").remove("nodeName");
            }
            if labels.is_empty() {
                want["metadata"].as_object_mut().expect("map").remove("labels");
            }
            proptest::prop_assert_eq!(serde_json::to_value(&typed).expect("writes"), want);
            let svc = serde_json::json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "externalIPs": addresses,
                         "sessionAffinity": "None", "ports": [{"name": name, "port": 80}]},
                "status": {"loadBalancer": {}},
            });
            let typed: Service = serde_json::from_value(svc.clone()).expect("reads");
            let mut want = svc;
            if addresses.is_empty() {
                want["spec"].as_object_mut().expect("map").remove("externalIPs");
            }
            proptest::prop_assert_eq!(serde_json::to_value(&typed).expect("writes"), want);
        }
    }

    #[test]
    fn to_value_carries_api_version_and_kind() {
        let v = Object::Service(Service::default()).to_value();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Service");
    }
}
