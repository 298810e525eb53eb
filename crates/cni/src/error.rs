//! The plugin's error: a CNI error code plus a message for whoever reads the runtime's logs.
//!
//! Codes 1-99 are the spec's well-known ones; 100 and up are ours (the spec leaves them to
//! plugins). Every message names what it is about (variable, field, path, link, container) and,
//! where there is one, what to do.

use std::fmt;

use ciliate_client::ClientError;
use ciliate_datapath::netlink::NetlinkError;
use ciliate_datapath::netns::NetnsError;

/// The error codes this plugin returns.
pub mod code {
    /// The configuration's `cniVersion` is not one we speak.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// The container (its network namespace) does not exist; the runtime need not clean up.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// A `CNI_*` environment variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// Reading stdin failed.
    pub const IO: u32 = 5;
    /// stdin is not JSON.
    pub const DECODE: u32 = 6;
    /// The network configuration is JSON but not a valid configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition (agent not reachable, not answering): retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot serve ADD now.
    pub const NOT_AVAILABLE: u32 = 50;
    /// The attachment (endpoint, host veth or pod interface) already exists.
    pub const ALREADY_EXISTS: u32 = 100;
    /// The agent refused the request; its message says why.
    pub const AGENT: u32 = 101;
    /// A kernel (netlink, namespace, sysctl) operation failed.
    pub const KERNEL: u32 = 102;
    /// CHECK found the attachment not as it should be.
    pub const CHECK_FAILED: u32 = 103;
}

/// An error as the runtime receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniError {
    /// The CNI error code (see [`code`]).
    pub code: u32,
    /// What went wrong, short, naming the thing it is about.
    pub msg: String,
    /// More: the underlying cause or a hint; may be empty.
    pub details: String,
}

impl CniError {
    /// An error with a code, message and details.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A required environment variable is missing or empty.
    pub fn missing_env(var: &str) -> Self {
        Self::new(
            code::INVALID_ENV,
            format!("{var} is not set"),
            format!("the runtime must set {var} for this command"),
        )
    }

    /// An environment variable holds something unusable.
    pub fn invalid_env(var: &str, why: impl Into<String>) -> Self {
        Self::new(
            code::INVALID_ENV,
            format!("{var} is invalid: {}", why.into()),
            "",
        )
    }

    /// The network configuration is not valid.
    pub fn invalid_config(why: impl Into<String>) -> Self {
        Self::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {}", why.into()),
            "",
        )
    }

    /// A call to the agent failed while doing `op` (e.g. "registering the endpoint").
    pub fn agent(op: &str, e: &ClientError) -> Self {
        match e {
            ClientError::Unreachable { socket, source } => Self::new(
                code::TRY_AGAIN_LATER,
                format!(
                    "{op}: cannot reach ciliate-agent at {}: is ciliate-agent running?",
                    socket.display()
                ),
                source.to_string(),
            ),
            ClientError::Timeout { .. } | ClientError::Protocol(_) => {
                Self::new(code::TRY_AGAIN_LATER, format!("{op}: {e}"), "")
            }
            ClientError::Api { status, error } => Self::new(
                if error.kind == "conflict" {
                    code::ALREADY_EXISTS
                } else {
                    code::AGENT
                },
                format!("{op}: ciliate-agent refused: {}", error.message),
                format!("HTTP {status}, kind {}", error.kind),
            ),
            other => Self::new(code::AGENT, format!("{op}: {other}"), ""),
        }
    }

    /// A kernel operation failed.
    pub fn kernel(e: &NetlinkError) -> Self {
        Self::new(code::KERNEL, e.to_string(), "")
    }

    /// A network namespace could not be opened: `CNI_NETNS` names a namespace that is gone
    /// (code 3: nothing to clean up) or something that is not a namespace (code 4).
    pub fn netns(e: &NetnsError) -> Self {
        if e.is_not_found() {
            Self::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "the container's network namespace {} does not exist",
                    e.path().display()
                ),
                e.to_string(),
            )
        } else {
            Self::invalid_env("CNI_NETNS", e.to_string())
        }
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[code {}] {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

impl From<NetlinkError> for CniError {
    fn from(e: NetlinkError) -> Self {
        Self::kernel(&e)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io;
    use std::time::Duration;

    use ciliate_model::api::ApiError;

    use super::*;

    #[test]
    fn unreachable_agent_is_try_again_and_says_where() {
        let e = CniError::agent(
            "registering the endpoint",
            &ClientError::Unreachable {
                socket: "/run/x/agent.sock".into(),
                source: io::Error::from(io::ErrorKind::NotFound),
            },
        );
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(e.msg.contains("/run/x/agent.sock"), "{e}");
        assert!(e.msg.contains("is ciliate-agent running?"), "{e}");
        assert!(e.msg.starts_with("registering the endpoint"), "{e}");
    }

    #[test]
    fn timeouts_are_try_again() {
        let e = CniError::agent(
            "x",
            &ClientError::Timeout {
                socket: "/s".into(),
                after: Duration::from_secs(3),
            },
        );
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
    }

    #[test]
    fn agent_refusals_carry_its_message_and_conflicts_are_exists() {
        let refuse = |kind: &str| {
            CniError::agent(
                "registering the endpoint",
                &ClientError::Api {
                    status: 409,
                    error: ApiError {
                        kind: kind.into(),
                        message: "pod cidr exhausted".into(),
                    },
                },
            )
        };
        let e = refuse("exhausted");
        assert_eq!(e.code, code::AGENT);
        assert!(e.msg.contains("pod cidr exhausted"), "{e}");
        assert!(e.details.contains("exhausted"), "{e}");
        assert_eq!(refuse("conflict").code, code::ALREADY_EXISTS);
    }

    #[test]
    fn missing_netns_is_unknown_container_other_netns_errors_are_invalid_env() {
        let gone = ciliate_datapath::netns::NetNs::open("/var/run/netns/ciliate-gone").unwrap_err();
        let e = CniError::netns(&gone);
        assert_eq!(e.code, code::UNKNOWN_CONTAINER);
        assert!(e.msg.contains("/var/run/netns/ciliate-gone"), "{e}");

        let not_ns = ciliate_datapath::netns::NetNs::open("/proc/self/status").unwrap_err();
        let e = CniError::netns(&not_ns);
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(
            e.msg.contains("CNI_NETNS") && e.msg.contains("/proc/self/status"),
            "{e}"
        );
    }
}
