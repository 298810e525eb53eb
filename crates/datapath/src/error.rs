//! How a kernel failure is classified into [`DatapathError`] variants callers can match:
//! by the errno found anywhere in the error's source chain.

use std::error::Error;

use crate::DatapathError;

/// The errno somewhere in `e`'s chain (aya wraps it in a `SyscallError` holding an
/// `io::Error`; nix returns it bare), if any.
fn errno_of(e: &(dyn Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        if let Some(errno) = err.downcast_ref::<nix::errno::Errno>() {
            return Some(*errno as i32);
        }
        if matches!(
            err.downcast_ref::<aya::maps::MapError>(),
            Some(aya::maps::MapError::KeyNotFound)
        ) {
            return Some(libc::ENOENT);
        }
        cur = err.source();
    }
    None
}

/// Wraps `source` with the operation it interrupted, as the variant its errno calls for.
pub(crate) fn classify(op: String, source: Box<dyn Error + Send + Sync>) -> DatapathError {
    match errno_of(source.as_ref()) {
        Some(libc::ENOENT | libc::ENODEV | libc::ESRCH) => DatapathError::NotFound { op, source },
        Some(libc::EBUSY | libc::EAGAIN | libc::E2BIG | libc::ENOSPC | libc::EEXIST) => {
            DatapathError::Busy { op, source }
        }
        Some(libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EINVAL) if is_load(&op) => {
            DatapathError::Unsupported(format!("{op}: {source}"))
        }
        _ => DatapathError::Kernel { op, source },
    }
}

/// Loading or attaching programs: where EPERM/EINVAL mean the kernel or privileges cannot run
/// the datapath, rather than a transient failure.
fn is_load(op: &str) -> bool {
    op.starts_with("verify and load") || op.starts_with("load bpf/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(e: &DatapathError) -> &'static str {
        match e {
            DatapathError::Kernel { .. } => "kernel",
            DatapathError::NotFound { .. } => "not-found",
            DatapathError::Busy { .. } => "busy",
            DatapathError::Unsupported(_) => "unsupported",
            DatapathError::Injected(_) => "injected",
        }
    }

    #[test]
    fn errno_decides_the_variant_through_wrappers() {
        let e = DatapathError::kernel("attach x", std::io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(kind(&e), "busy");
        let e = DatapathError::kernel("look up lxc1", nix::errno::Errno::ENODEV);
        assert_eq!(kind(&e), "not-found");
        assert!(e.to_string().contains("look up lxc1"), "{e}");
        let e = DatapathError::kernel("read map", aya::maps::MapError::KeyNotFound);
        assert_eq!(kind(&e), "not-found");
        // aya's SyscallError keeps the io::Error as its source.
        let sys = aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(libc::E2BIG),
        };
        let e = DatapathError::kernel("write map", aya::maps::MapError::from(sys));
        assert_eq!(kind(&e), "busy");
        let e = DatapathError::kernel(
            "verify and load from_container",
            std::io::Error::from_raw_os_error(libc::EPERM),
        );
        assert_eq!(kind(&e), "unsupported");
        let e = DatapathError::kernel("write map", std::io::Error::other("no errno"));
        assert_eq!(kind(&e), "kernel");
    }
}
