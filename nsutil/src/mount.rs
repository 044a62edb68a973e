//! Bind mounts through file descriptors (the new mount API), never by path.
//!
//! A source is opened on the host and cloned into a detached mount
//! (`open_tree`), made read-only and nosuid while still detached
//! (`mount_setattr`), and attached onto a target fd that was resolved
//! inside the container's rootfs (`move_mount`). No path string is looked
//! up twice, so nothing in the container image can redirect a mount.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::{Error, Result};

// From linux/mount.h; libc has the syscall numbers but not every flag.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x01;
const MOUNT_ATTR_NOSUID: u64 = 0x02;
const MOUNT_ATTR_NODEV: u64 = 0x04;
const MOUNT_ATTR_NOEXEC: u64 = 0x08;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_SET_FD: libc::c_uint = 5;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;

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
    /// A directory the admin made writable (a hugetlbfs, a shared ring
    /// directory): `nosuid,nodev`, as writable as its source mount.
    Writable,
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
        let set = match lockdown {
            Lockdown::Files => MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            Lockdown::Devices => MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
            Lockdown::Writable => MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        };
        self.set_attr(set, libc::MS_PRIVATE)
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

    /// A fresh, empty tmpfs (mode 0755), not attached anywhere: scratch
    /// space that lives exactly as long as the mounts built on it.
    pub fn tmpfs() -> Result<DetachedMount> {
        let fs = FsContext::open("tmpfs")?;
        fs.set("mode", "0755")?;
        fs.set("size", "1m")?;
        fs.mount()
    }

    /// A fresh bpffs instance (`nosuid,nodev,noexec`, private), not
    /// attached anywhere: what a container's `/sys/fs/bpf` gets, so that
    /// what its programs pin there is its own and goes with it. Make it in
    /// the mount namespace it will be attached in.
    pub fn bpffs() -> Result<DetachedMount> {
        let mount = FsContext::open("bpf")?.mount()?;
        mount.set_attr(
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            libc::MS_PRIVATE,
        )?;
        Ok(mount)
    }

    /// An overlay of the directory `lower` (an `O_PATH` fd) whose upper and
    /// work directories live on `scratch` (see [`DetachedMount::tmpfs`]):
    /// it shows `lower` and takes every change, so new entries can be made
    /// in it while the directory on disk stays untouched. Not attached yet.
    /// Must be made in the mount namespace it will be attached in (the
    /// kernel clones the layers privately from the caller's namespace).
    pub fn overlay(lower: BorrowedFd, scratch: &DetachedMount) -> Result<DetachedMount> {
        let op = |what: &str, e: nix::Error| Error::new(format!("overlay: {what}"), e.into());
        for dir in ["upper", "work"] {
            nix::sys::stat::mkdirat(
                scratch.fd.as_fd(),
                dir,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            )
            .map_err(|e| op(dir, e))?;
        }
        let open = |dir: &str| {
            nix::fcntl::openat(
                scratch.fd.as_fd(),
                dir,
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| op(dir, e))
        };
        let (upper, work) = (open("upper")?, open("work")?);
        let fs = FsContext::open("overlay")?;
        // Layers by fd (Linux 6.8+ for lower layers); older kernels take
        // the same directories as /proc/self/fd paths.
        if fs.set_fd("lowerdir+", lower).is_err() {
            fs.set("lowerdir", &format!("/proc/self/fd/{}", lower.as_raw_fd()))?;
            fs.set("upperdir", &format!("/proc/self/fd/{}", upper.as_raw_fd()))?;
            fs.set("workdir", &format!("/proc/self/fd/{}", work.as_raw_fd()))?;
        } else {
            fs.set_fd("upperdir", upper.as_fd())?;
            fs.set_fd("workdir", work.as_fd())?;
        }
        fs.mount()
    }

    /// The mount's root directory, to make entries in it (a tmpfs or an
    /// overlay built here) before it is attached.
    pub fn root(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Gives the mount the nosuid, nodev, noexec and read-only flags the
    /// mount of `like` has (an overlay shows that directory and must not
    /// loosen it), and read-only also when `readonly`.
    pub fn match_flags_of(&self, like: BorrowedFd, readonly: bool) -> Result<()> {
        use nix::sys::statvfs::{fstatvfs, FsFlags};
        let flags = fstatvfs(like)
            .map_err(|e| Error::new("statvfs", e.into()))?
            .flags();
        let mut set = 0;
        for (flag, attr) in [
            (FsFlags::ST_NOSUID, MOUNT_ATTR_NOSUID),
            (FsFlags::ST_NODEV, MOUNT_ATTR_NODEV),
            (FsFlags::ST_NOEXEC, MOUNT_ATTR_NOEXEC),
            (FsFlags::ST_RDONLY, MOUNT_ATTR_RDONLY),
        ] {
            if flags.contains(flag) {
                set |= attr;
            }
        }
        if readonly {
            set |= MOUNT_ATTR_RDONLY;
        }
        if set == 0 {
            return Ok(());
        }
        self.set_attr(set, 0)
    }

    fn set_attr(&self, set: u64, propagation: u64) -> Result<()> {
        let attr = MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation,
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

    /// Unmounts an attached mount again (lazily), from inside its namespace.
    pub fn detach(&self) -> Result<()> {
        // The fd names the mount's root.
        crate::procfs::detach_mount(self.fd.as_fd())
    }
}

/// A filesystem being configured (`fsopen`), to be made into a detached
/// mount (`fsmount`).
struct FsContext {
    fd: OwnedFd,
    fstype: &'static str,
}

impl FsContext {
    fn open(fstype: &'static str) -> Result<FsContext> {
        let name = CString::new(fstype).expect("no NUL");
        // SAFETY: fsopen takes a NUL-terminated name and flags, and returns an fd we own.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) };
        if fd < 0 {
            return Err(Error::new(
                format!("fsopen {fstype}"),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(FsContext {
            // SAFETY: the kernel just returned this fd to us.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            fstype,
        })
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: Option<&str>,
        value: *const libc::c_void,
        aux: i32,
    ) -> Result<()> {
        let key = key.map(|k| CString::new(k).expect("no NUL"));
        let key_ptr = key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        // SAFETY: fsconfig reads the key and value (a string or nothing) we pass.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                cmd,
                key_ptr,
                value,
                aux,
            )
        };
        if rc < 0 {
            let what = key
                .map(|k| k.to_string_lossy().into_owned())
                .unwrap_or_else(|| "create".into());
            return Err(Error::new(
                format!("configure {} ({what})", self.fstype),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    fn set(&self, key: &str, value: &str) -> Result<()> {
        let value = CString::new(value).expect("no NUL");
        self.config(FSCONFIG_SET_STRING, Some(key), value.as_ptr().cast(), 0)
    }

    fn set_fd(&self, key: &str, fd: BorrowedFd) -> Result<()> {
        self.config(FSCONFIG_SET_FD, Some(key), std::ptr::null(), fd.as_raw_fd())
    }

    fn mount(self) -> Result<DetachedMount> {
        self.config(FSCONFIG_CMD_CREATE, None, std::ptr::null(), 0)?;
        // SAFETY: fsmount takes the context fd and flags, and returns an fd we own.
        let fd =
            unsafe { libc::syscall(libc::SYS_fsmount, self.fd.as_raw_fd(), FSMOUNT_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::new(
                format!("fsmount {}", self.fstype),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(DetachedMount {
            // SAFETY: the kernel just returned this fd to us.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// An attached mount, held by its root so it can be moved: the mounts
/// below a directory about to be overlaid are moved onto the overlay, and
/// back if it has to go.
#[derive(Debug)]
pub struct MovableMount {
    fd: OwnedFd,
}

impl MovableMount {
    /// The mount whose root is `name` below the directory `dir` (no link is
    /// followed at the last component).
    pub fn at(dir: BorrowedFd, name: &Path) -> Result<MovableMount> {
        let path = CString::new(name.as_os_str().as_encoded_bytes()).map_err(|_| {
            Error::new(
                "open_tree",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        let flags = OPEN_TREE_CLOEXEC | libc::AT_SYMLINK_NOFOLLOW as libc::c_uint;
        // SAFETY: open_tree takes a dirfd, a NUL-terminated path and flags,
        // and returns a new fd that we own.
        let fd =
            unsafe { libc::syscall(libc::SYS_open_tree, dir.as_raw_fd(), path.as_ptr(), flags) };
        if fd < 0 {
            return Err(Error::new(
                format!("open_tree {}", name.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(MovableMount {
            // SAFETY: the kernel just returned this fd to us.
            fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }

    /// Moves the mount onto `name` below the directory `dir`, in the
    /// caller's mount namespace.
    pub fn move_to(&self, dir: BorrowedFd, name: &Path) -> Result<()> {
        let path = CString::new(name.as_os_str().as_encoded_bytes()).map_err(|_| {
            Error::new(
                "move_mount",
                std::io::Error::from(std::io::ErrorKind::InvalidInput),
            )
        })?;
        // SAFETY: move_mount takes two dirfd/path pairs and flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                c"".as_ptr(),
                dir.as_raw_fd(),
                path.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(Error::new(
                format!("move mount onto {}", name.display()),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}
