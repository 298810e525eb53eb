//! `ciliate-proxy`: the node's L7 proxy, and the supervisor the agent runs it with.
//!
//! - [`rules`]: a redirect's HTTP rules compiled to matchers (Cilium's semantics);
//! - [`policy`]: the redirects in force, replaced per command, read per request;
//! - [`identity`]: peer identities from the datapath's pinned maps;
//! - [`engine`]: one client connection: protocol detection, HTTP/1.1 and h2c, policy, upstream;
//! - [`h1`]: HTTP/1 connections by forwarding bytes (heads parsed and judged, bodies framed);
//! - [`kafka`]: connections of Kafka redirects: frames, requests and topics, refusals;
//! - [`listener`]: accept loops over inherited listening sockets, graceful drain;
//! - [`dns`]: the DNS proxy (queries judged by name, answers held for the agent);
//! - [`events`]: the queue of records and events from connections to the control socket;
//! - [`control`]: the agent's control socket (commands in, events out);
//! - [`sched`]: the DNS thread's short scheduler slice (latency under CPU contention);
//! - [`rt_budget`]: the DNS thread in the real-time class, within a CPU budget;
//! - [`supervisor`]: what the agent uses: listening sockets, the process, restarts.

pub mod control;
pub mod dns;
pub mod engine;
pub mod events;
pub mod h1;
pub mod identity;
pub mod kafka;
pub mod listener;
pub mod policy;
pub mod rt_budget;
pub mod rules;
pub mod sched;
pub mod supervisor;
