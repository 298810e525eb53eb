//! The Kubernetes API as a source of Ciliate's desired state.
//!
//! [`spawn`] lists and watches, with kube-rs's [`watcher`](kube::runtime::watcher()), the
//! objects an agent needs: Pods (optionally only its node's), Namespaces, Nodes, Services,
//! EndpointSlices, NetworkPolicies, and Cilium's CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy CRDs. The watcher does the protocol: list with paging,
//! watch from the list's `resourceVersion` with bookmarks, resume from the last version seen
//! when a stream breaks, relist on 410 Gone; errors are retried with a backoff (kube's
//! `default_backoff()` unless [`Options::backoff`] says otherwise).
//!
//! Every kind comes out in one shape, on one channel: [`SourceEvent`] (`Init`, `InitApply`,
//! `InitDone`, `Apply`, `Delete`, as the watcher has them) carrying a [`Document`], the object
//! as JSON with `apiVersion` and `kind` filled in and without `managedFields` or kubectl's
//! last-applied copy. [`SourceEvent`]'s documentation states what a consumer must do on a
//! relist. Every kind is read as untyped JSON, built-in ones too: the agent decodes documents
//! with its own model (`ciliate_model`), so typed k8s-openapi structs would only be an extra
//! copy that drops fields newer than the pinned API version; for Cilium's CRDs there is no
//! typed struct to use anyway short of duplicating `ciliate_model::policy`. (Not kube's
//! `DynamicObject` either: it decodes through serde's `flatten` and would be encoded again;
//! see `raw.rs`.)
//!
//! Policy objects are reconciled with the agent's strict policy model: fields it does not know
//! are dropped and named in [`Document::warnings`] (see [`strip_unknown_fields`]), where a
//! manifest file with the same field is rejected.
//!
//! [`PodInfo`] and [`NodeInfo`] read the fields the agent needs from Pod and Node documents,
//! so no other crate needs k8s-openapi. [`client`] builds a client from a kubeconfig file or
//! the in-cluster environment. [`Stats`] counts events, relists, errors and warnings per kind.
//!
//! ```no_run
//! use ciliate_k8s::{client, spawn, Options, PodInfo, ResourceKind, SourceEvent};
//!
//! # async fn agent() -> Result<(), ciliate_k8s::K8sError> {
//! let opts = Options {
//!     node_name: Some("node-a".into()),
//!     ..Options::default()
//! };
//! let mut source = spawn(client(None).await?, opts);
//! while let Some(event) = source.events.recv().await {
//!     match event {
//!         SourceEvent::InitApply(doc) | SourceEvent::Apply(doc) if doc.kind == ResourceKind::Pod => {
//!             let pod = PodInfo::from_document(&doc)?;
//!             println!("{}/{} at {:?}", pod.namespace, pod.name, pod.pod_ips);
//!         }
//!         SourceEvent::InitDone(kind) => println!("{kind} listed"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The k8s-openapi version feature is chosen here (`latest`) rather than in a binary: this is
//! the only crate of the workspace that uses k8s-openapi.

#![forbid(unsafe_code)]

mod client;
mod convert;
mod document;
mod error;
mod kind;
mod raw;
mod source;
mod stats;
mod unknown_fields;

pub use client::client;
pub use convert::{NodeInfo, PodInfo, PodPhase};
pub use document::{Document, LAST_APPLIED_ANNOTATION};
pub use error::K8sError;
pub use kind::ResourceKind;
pub use source::{spawn, Backoff, Options, Source, SourceEvent};
pub use stats::{KindStats, Stats};
pub use unknown_fields::strip_unknown_fields;

/// Re-exported so that callers can build a [`client`]-less client (tests, a custom config)
/// without naming kube in their own manifest.
pub use kube::Client;
