//! Is an endpoint's datapath still what the agent attached? Someone (a tool, another agent, a
//! bug) can unpin or detach a link or swap another program into it behind the agent's back;
//! traffic then flows outside policy. These checks compare the kernel's view with what was
//! attached: for each direction, the link pinned for the veth exists, carries our program and
//! is attached to the veth (the program is in the interface's TCX chain).

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType};

/// One direction of an endpoint as attached: the link pin, where, and which program.
#[derive(Clone, Debug)]
pub struct ExpectedLink {
    /// The link's pin.
    pub pin: PathBuf,
    /// Ingress or egress of the host veth.
    pub at: TcAttachType,
    /// The program's name (for messages).
    pub program: &'static str,
    /// The id of the program this agent loaded.
    pub program_id: u32,
}

/// What is wrong with one direction, or `None` when it is as attached.
pub fn check_link(ifname: &str, want: &ExpectedLink) -> Option<String> {
    let pin = &want.pin;
    if !pin.exists() {
        return Some(format!(
            "{} link of {ifname} is not pinned ({} is missing): the program is detached",
            want.program,
            pin.display()
        ));
    }
    let info = match PinnedLink::from_pin(pin) {
        Ok(link) => match FdLink::from(link).info() {
            Ok(i) => i,
            Err(e) => return Some(format!("cannot read link {}: {e}", pin.display())),
        },
        Err(e) => return Some(format!("cannot open link {}: {e}", pin.display())),
    };
    if info.program_id() != want.program_id {
        return Some(format!(
            "link {} runs program id {}, not {} ({}) as attached",
            pin.display(),
            info.program_id(),
            want.program_id,
            want.program
        ));
    }
    match SchedClassifier::query_tcx(ifname, want.at) {
        Ok((_, progs)) if progs.iter().any(|p| p.id() == want.program_id) => None,
        Ok(_) => Some(format!(
            "{} is not attached to {ifname} any more (link {} is detached)",
            want.program,
            pin.display()
        )),
        Err(e) => Some(format!("cannot list the TCX programs of {ifname}: {e}")),
    }
}

/// Removes a pin whose link is broken, so that the link can be made again. Unpinning a link
/// that is still attached (with a foreign program) detaches it.
pub fn drop_pin(pin: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(pin) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether interface `ifname` exists with index `ifindex` in the calling thread's namespace.
pub fn link_present(ifname: &str, ifindex: u32) -> bool {
    nix::net::if_::if_nametoindex(ifname).is_ok_and(|i| i == ifindex)
}
