//! Mechanism for nsbypass: namespaces, netlink, sysctl, mounts inside a
//! container's rootfs, device cgroups.
//!
//! Nothing here decides anything. Each function does one system operation
//! and reports failure as an [`Error`] that names the operation, so callers
//! can compose them into steps with rollback and clear messages.

pub mod bpf;
pub mod devices;
pub mod dir;
pub mod mount;
pub mod mountinfo;
pub mod netlink;
pub mod nftables;
pub mod ns;
pub mod procfs;
pub mod rlimit;
pub mod rootfs;
pub mod sysctl;

use std::io;

/// A failed system operation: what was attempted and what the kernel said.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {cause}")]
pub struct Error {
    pub op: String,
    pub cause: io::Error,
}

impl Error {
    pub fn new(op: impl Into<String>, cause: io::Error) -> Error {
        Error {
            op: op.into(),
            cause,
        }
    }

    /// The errno behind the failure, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        self.cause.raw_os_error()
    }
}

pub type Result<T> = std::result::Result<T, Error>;
