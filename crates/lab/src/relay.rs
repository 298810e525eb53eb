//! The lab's `ciliate-relay`: one observer API for all nodes, in the host's namespace (where
//! the nodes' `hubble.sock` files are, and where `hubble observe --server localhost:4245`
//! reaches it). It reads each node's socket as a static peer: the lab's etcd is inside the
//! underlay, out of the host's reach.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::layout::LAB_ENV;
use crate::state::RelayState;
use crate::{sys, Lab, LabError};

/// Hubble relay's port, used when free.
pub const PORT: u16 = 4245;
/// How long the relay may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Its entry in `lab.json`'s processes.
pub const PROCESS: &str = "relay";

/// 127.0.0.1:4245 when free, else a free port of 127.0.0.1 (another lab's relay may hold
/// 4245).
fn pick_address() -> Result<SocketAddr, LabError> {
    let preferred = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    if TcpListener::bind(preferred).is_ok() {
        return Ok(preferred);
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| LabError::io("finding a free port for the relay", e))
}

/// Starts the relay over the lab's nodes and waits until it listens. `None` when
/// `ciliate-relay` was not built (the lab works without it).
pub fn start(lab: &mut Lab) -> Result<Option<RelayState>, LabError> {
    let Some(program) = lab.bins.relay.clone() else {
        return Ok(None);
    };
    let address = pick_address()?;
    let log = lab.layout.relay_log();
    let args = lab.layout.relay_args(lab.state.nodes.len(), address);
    let out = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let mut child = Command::new(&program)
        .args(&args)
        .env(LAB_ENV, lab.name())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // A Ctrl-C meant for `ciliate lab up` must not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::io(format!("starting {}", program.display()), e))?;
    lab.state.add_process(PROCESS, child.id(), None);
    let relay = RelayState {
        address: address.to_string(),
        socket: lab.layout.relay_socket(),
        log: log.clone(),
    };
    lab.state.relay = Some(relay.clone());
    lab.save()?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if answering(&relay) {
            return Ok(Some(relay));
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LabError::Failed(format!(
                "ciliate-relay exited with {status}; its log ({}) ends with:\n{}",
                log.display(),
                sys::tail(&log, 10)
            )));
        }
        if Instant::now() > deadline {
            return Err(LabError::Failed(format!(
                "ciliate-relay does not listen on {address} after {} s; its log ({}) ends with:\n{}",
                START_TIMEOUT.as_secs(),
                log.display(),
                sys::tail(&log, 10)
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the relay accepts connections on its TCP address.
pub fn answering(relay: &RelayState) -> bool {
    relay
        .address
        .parse::<SocketAddr>()
        .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok())
}
