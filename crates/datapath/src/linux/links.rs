//! TCX links on interfaces, pinned under `<pin_dir>/links/` so that they outlive the agent; a
//! restarted agent swaps its freshly loaded program into the pinned link without a gap.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::sys::SyscallError;
use aya::Ebpf;

use super::kernel;
use crate::DatapathError;

fn is_not_found(e: &LinkError) -> bool {
    matches!(e, LinkError::SyscallError(SyscallError { io_error, .. }) if io_error.kind() == io::ErrorKind::NotFound)
}

/// Attaches `prog_name` of `bpf` to the interface, or swaps it into the link pinned at `pin`.
/// `fresh` holds the links this process has already attached or swapped: those are left alone.
/// Returns whether a new link was made.
pub(super) fn attach_tcx(
    bpf: &mut Ebpf,
    fresh: &mut HashSet<PathBuf>,
    prog_name: &str,
    ifname: &str,
    at: TcAttachType,
    pin: &Path,
) -> Result<bool, DatapathError> {
    if fresh.contains(pin) && pin.exists() {
        return Ok(false);
    }
    let prog: &mut SchedClassifier = bpf
        .program_mut(prog_name)
        .ok_or_else(|| DatapathError::Unsupported(format!("program {prog_name} missing")))?
        .try_into()
        .map_err(kernel(format!("{prog_name} is not a classifier")))?;
    let (id, created) = match PinnedLink::from_pin(pin) {
        Ok(old) => {
            let link = FdLink::from(old).try_into().map_err(kernel(format!(
                "pinned link {} is not a TCX link",
                pin.display()
            )))?;
            let id = prog
                .attach_to_link(link)
                .map_err(kernel(format!("swap {prog_name} into {}", pin.display())))?;
            (id, false)
        }
        Err(e) if is_not_found(&e) => {
            let id = prog
                .attach_with_options(ifname, at, TcAttachOptions::TcxOrder(LinkOrder::default()))
                .map_err(kernel(format!("attach {prog_name} to {ifname}")))?;
            (id, true)
        }
        Err(e) => {
            return Err(DatapathError::kernel(
                format!("open pinned link {}", pin.display()),
                e,
            ))
        }
    };
    // Take the link out of the program so that dropping the program never detaches it.
    let link = prog.take_link(id).map_err(kernel("take link"))?;
    let fd_link: FdLink = link.try_into().map_err(kernel("TCX link as fd link"))?;
    if created {
        fd_link
            .pin(pin)
            .map_err(kernel(format!("pin {}", pin.display())))?;
    }
    fresh.insert(pin.to_path_buf());
    Ok(created)
}

/// Removes the link pinned at `pin`; a link that is not there is not an error.
pub(super) fn unpin(pin: &Path) -> Result<(), DatapathError> {
    match PinnedLink::from_pin(pin) {
        // Removing the last reference detaches the program from the interface.
        Ok(link) => link
            .unpin()
            .map(drop)
            .map_err(kernel(format!("unpin {}", pin.display()))),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(DatapathError::kernel(
            format!("open pinned link {}", pin.display()),
            e,
        )),
    }
}
