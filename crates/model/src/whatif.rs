//! `policy whatif`: the request and the report of replaying recorded flows through a
//! proposed policy set (`POST /v1/policy/whatif`).

use serde::{Deserialize, Serialize};

use crate::manifest::ApplyDocument;

/// Body of `POST /v1/policy/whatif`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhatIfRequest {
    /// The proposed policies (manifests, as `policy import` sends them).
    pub documents: Vec<ApplyDocument>,
    /// Replace every policy in force by the proposed ones, instead of adding them (and
    /// replacing those of the same kind, namespace and name).
    #[serde(default)]
    pub replace_all: bool,
    /// Replay the flows of the last this many seconds; all recorded flows when absent.
    #[serde(default)]
    pub since_seconds: Option<u64>,
}

/// One group of recorded flows whose verdict would change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhatIfChange {
    /// `allowed → denied` or `denied → allowed`, as `allowed-to-denied` / `denied-to-allowed`.
    pub change: String,
    /// The source: `namespace/pod`, or the identity's name (`reserved:world`, a CIDR).
    pub source: String,
    /// The destination, named the same way.
    pub destination: String,
    /// Destination port (ICMP: the type); 0 for protocols without ports.
    pub port: u16,
    /// `TCP`, `UDP`, `SCTP`, `ICMP` or the protocol number.
    pub protocol: String,
    /// Recorded flows in the group.
    pub flows: u64,
    /// Why the proposed set decides as it does (the deciding rule or policies).
    pub proposed_rule: String,
    /// Why the current set decides as it does.
    pub current_rule: String,
    /// First and last time a flow of the group was recorded (RFC 3339).
    pub first_seen: String,
    /// Last time.
    pub last_seen: String,
}

/// What `policy whatif` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhatIfReport {
    /// The proposed policies (`kind/namespace/name`) that are new.
    pub added: Vec<String>,
    /// Policies in force that the proposed ones replace (same kind, namespace and name).
    pub replaced: Vec<String>,
    /// Policies in force left out of the proposed set (`replaceAll`).
    pub removed: Vec<String>,
    /// Warnings about the proposed policies (fields parsed but not enforced).
    pub warnings: Vec<String>,
    /// Whether the agent keeps a flow history (without one only the ring's flows are replayed).
    pub history: bool,
    /// Time of the oldest and newest flow read (RFC 3339), when any.
    pub from: Option<String>,
    /// Time of the newest.
    pub to: Option<String>,
    /// Flows read in the time range.
    pub flows_read: u64,
    /// Of those, the policy decisions replayed: L3/L4 flows between identities where either
    /// side is an endpoint, forwarded or dropped by policy, replies left out.
    pub flows_replayed: u64,
    /// Replayed flows whose recorded verdict differs from what the current policies decide
    /// (the policies changed since they were recorded).
    pub flows_recorded_differently: u64,
    /// Identities no longer in the identity table, judged by the labels their flows recorded.
    pub identities_from_flows: u64,
    /// The groups whose verdict would change, most flows first.
    pub changes: Vec<WhatIfChange>,
}
