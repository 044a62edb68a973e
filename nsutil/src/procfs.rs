//! The host's `/proc`, reachable from inside a container's mount namespace.
//!
//! Code that runs inside a container's mount namespace sees the container's
//! `/proc` at `/proc` once the container has pivoted into its root (a
//! process `nsbypass attach --pid` wires, unlike one at prestart). That
//! procfs belongs to the container's pid namespace, where nsbypass has no
//! pid: `/proc/self` does not exist there. So the host's `/proc` is opened
//! once, before any mount namespace is entered ([`pin`], which
//! `Mntns::run` calls), and `self` lookups go through that fd.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::OnceLock;

use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::Mode;

use crate::{Error, Result};

static HOST_PROC: OnceLock<OwnedFd> = OnceLock::new();

/// Opens the host's `/proc` for later use from inside other mount
/// namespaces. Call before entering one; later calls do nothing.
pub fn pin() -> Result<()> {
    if HOST_PROC.get().is_some() {
        return Ok(());
    }
    let fd = nix::fcntl::open(
        "/proc",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::new("open /proc", e.into()))?;
    let _ = HOST_PROC.set(fd);
    Ok(())
}

/// The pinned `/proc`, or (never pinned: nothing entered a mount
/// namespace) the one at `/proc`.
fn proc_dir() -> Result<BorrowedFd<'static>> {
    pin()?;
    Ok(HOST_PROC.get().expect("pinned").as_fd())
}

/// The path of the file `fd` names, as the calling thread sees it
/// (`/proc/thread-self/fd/N`).
pub fn fd_path(fd: BorrowedFd) -> Result<PathBuf> {
    let link = format!("thread-self/fd/{}", fd.as_raw_fd());
    readlinkat(proc_dir()?, link.as_str())
        .map(PathBuf::from)
        .map_err(|e| Error::new("find the path of an open file", e.into()))
}

/// Opens the file `fd` names anew, for reading (an `O_PATH` fd cannot be
/// read).
pub fn reopen(fd: BorrowedFd) -> Result<File> {
    let link = format!("thread-self/fd/{}", fd.as_raw_fd());
    let opened = openat(
        proc_dir()?,
        link.as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::new("reopen an open file", e.into()))?;
    Ok(File::from(opened))
}

/// The calling thread's mount table text (`/proc/thread-self/mountinfo`).
pub fn own_mountinfo() -> Result<String> {
    let opened = openat(
        proc_dir()?,
        "thread-self/mountinfo",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::new("read /proc/thread-self/mountinfo", e.into()))?;
    let mut file = File::from(opened);
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| Error::new("read /proc/thread-self/mountinfo", e))?;
    Ok(text)
}

/// Unmounts (lazily) the mount whose root `fd` names, from inside its
/// namespace, without a path another process could swap.
pub fn detach_mount(fd: BorrowedFd) -> Result<()> {
    nix::unistd::fchdir(fd).map_err(|e| Error::new("umount", e.into()))?;
    let here = CString::new(".").expect("no NUL");
    // SAFETY: umount2 takes a NUL-terminated path and flags.
    let rc = unsafe { libc::umount2(here.as_ptr(), libc::MNT_DETACH) };
    let result = match rc {
        0 => Ok(()),
        _ => Err(Error::new("umount", std::io::Error::last_os_error())),
    };
    // Out of the detached mount again.
    let _ = nix::unistd::chdir("/");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_of_open_files_and_the_own_mount_table() {
        let file = File::open("/etc").unwrap();
        assert_eq!(fd_path(file.as_fd()).unwrap(), PathBuf::from("/etc"));
        let text = own_mountinfo().unwrap();
        assert!(text.lines().any(|l| l.contains(" / / ")), "{text}");
        let passwd = File::open("/etc/hostname").unwrap();
        let mut again = String::new();
        reopen(passwd.as_fd())
            .unwrap()
            .read_to_string(&mut again)
            .unwrap();
        assert_eq!(again, std::fs::read_to_string("/etc/hostname").unwrap());
    }
}
