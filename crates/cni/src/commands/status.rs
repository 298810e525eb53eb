//! STATUS (CNI 1.1): can ADD be served now? Only when the agent answers and is healthy.

use ciliate_client::ClientError;

use crate::commands::client;
use crate::config::NetConf;
use crate::error::{code, CniError};

/// Runs STATUS: `Ok` when the agent is healthy, code 50 with the reason otherwise.
pub async fn run(conf: &NetConf) -> Result<(), CniError> {
    match client(conf).health().await {
        Ok(h) if h.status == "ok" => Ok(()),
        Ok(h) => Err(CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "ciliate-agent at {} reports {:?}, not \"ok\"",
                conf.agent_socket.display(),
                h.status
            ),
            "see `ciliate status` for the problems",
        )),
        Err(e) => Err(not_available(&e)),
    }
}

/// Any failure to get a health answer means the plugin cannot serve ADD: code 50, keeping the
/// words of the underlying error (which names the socket).
fn not_available(e: &ClientError) -> CniError {
    let mut err = CniError::agent("checking the agent's health", e);
    err.code = code::NOT_AVAILABLE;
    err
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn unreachable_is_not_available_and_says_where() {
        let e = not_available(&ClientError::Unreachable {
            socket: "/run/ciliate/agent.sock".into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        });
        assert_eq!(e.code, code::NOT_AVAILABLE);
        assert!(e.msg.contains("/run/ciliate/agent.sock"), "{e}");
        assert!(e.msg.contains("is ciliate-agent running?"), "{e}");
    }
}
