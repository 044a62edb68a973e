//! Bind mounts through file descriptors (the new mount API), never by path.
//!
//! A source is opened on the host and cloned into a detached mount
//! (`open_tree`), made read-only and nosuid while still detached
//! (`mount_setattr`), and attached onto a target fd that was resolved
//! inside the container's rootfs (`move_mount`). No path string is looked
//! up twice, so nothing in the container image can redirect a mount.

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

// From linux/mount.h; libc has the syscall numbers but not every flag.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_NOSUID: u64 = 0x02;
const MOUNT_ATTR_NODEV: u64 = 0x04;
const MOUNT_ATTR_NOEXEC: u64 = 0x08;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// How a bind is locked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lockdown {
    /// Files and directories: `ro,nosuid,nodev`.
    Files,
    /// Device nodes: `ro,nosuid,noexec` (nodev would make them unusable;
    /// read-only does not stop I/O to a device, only changes to the node).
    Devices,
}

/// A mount that is not attached anywhere yet, or one this process attached.
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
}

impl DetachedMount {
    /// Clones the file or directory `source` (an `O_PATH` fd) into a new
    /// detached mount; `recursive` takes submounts of a directory along.
    pub fn clone_of(source: BorrowedFd, recursive: bool) -> Result<DetachedMount> {
        let mut flags =
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
        if recursive {
            flags |= libc::AT_RECURSIVE as libc::c_uint;
        }
        // SAFETY: open_tree takes a dirfd, a NUL-terminated path and flags,
        // and returns a new fd that we own.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, source.as_raw_fd(), c"".as_ptr(), flags) };
        if fd < 0 {
            return Err(Error::new("open_tree", std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(DetachedMount {
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Sets the lockdown flags on the whole (detached) tree, and makes it
    /// private: a clone starts in its source's peer group, through which a
    /// mount made on it inside the container would reach the host's file
    /// (and the host's mounts would reach the container unlocked).
    pub fn lock_down(&self, lockdown: Lockdown) -> Result<()> {
        let attr = MountAttr {
            attr_set: MOUNT_ATTR_RDONLY
                | MOUNT_ATTR_NOSUID
                | match lockdown {
                    Lockdown::Files => MOUNT_ATTR_NODEV,
                    Lockdown::Devices => MOUNT_ATTR_NOEXEC,
                },
            attr_clr: 0,
            propagation: libc::MS_PRIVATE,
            userns_fd: 0,
        };
        let flags = libc::AT_EMPTY_PATH | libc::AT_RECURSIVE;
        // SAFETY: mount_setattr reads `attr` (of the size we pass) and the path.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                flags as libc::c_uint,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc < 0 {
            return Err(Error::new("mount_setattr", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Attaches the mount onto `target`, an fd resolved in the mount
    /// namespace the caller is in now.
    pub fn attach_to(&self, target: BorrowedFd) -> Result<()> {
        // SAFETY: move_mount takes two dirfd/path pairs and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                target.as_raw_fd(),
                c"".as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(Error::new("move_mount", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Unmounts an attached mount again (lazily), from inside its namespace.
    pub fn detach(&self) -> Result<()> {
        // The fd names the mount's root, so its /proc/self/fd link is a
        // path to exactly this mount.
        let path = CString::new(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).expect("no NUL");
        // SAFETY: umount2 takes a NUL-terminated path and flags.
        let rc = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        if rc < 0 {
            return Err(Error::new("umount", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}
