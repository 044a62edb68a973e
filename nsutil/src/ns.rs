//! Namespaces: identity, handles, and running code inside one.
//!
//! A namespace is known by the (device, inode) of its nsfs file. For network
//! namespaces that pair is what lets two containers of one pod be recognised
//! as sharing one, and what teardown checks before it trusts a recorded
//! path. Mount namespaces are entered to attach mounts inside a container.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::{Error, Result};

/// `NS_GET_NSTYPE` from linux/nsfs.h: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Identity of a network namespace while it lives (inodes are recycled after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsId {
    pub dev: u64,
    pub ino: u64,
}

impl NetnsId {
    /// A file-name-safe key, unique among live namespaces.
    pub fn key(&self) -> String {
        format!("{}-{}", self.dev, self.ino)
    }
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// The namespace kinds nsbypass enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Net,
    Mnt,
}

impl Kind {
    fn flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Mnt => CloneFlags::CLONE_NEWNS,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Net => "network",
            Kind::Mnt => "mount",
        }
    }

    fn current(self) -> &'static Path {
        Path::new(match self {
            Kind::Net => "/proc/thread-self/ns/net",
            Kind::Mnt => "/proc/thread-self/ns/mnt",
        })
    }
}

/// An open namespace of some kind; the typed wrappers below are the API.
#[derive(Debug)]
struct Ns {
    fd: OwnedFd,
    id: NetnsId,
    kind: Kind,
}

impl Ns {
    fn open(path: &Path, kind: Kind) -> Result<Ns> {
        let op = || format!("open {} namespace {}", kind.name(), path.display());
        let file = File::open(path).map_err(|e| Error::new(op(), e))?;
        let meta = file.metadata().map_err(|e| Error::new(op(), e))?;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype != kind.flag().bits() {
            let why = if nstype < 0 {
                std::io::Error::last_os_error().to_string()
            } else {
                "a namespace of another kind".to_owned()
            };
            return Err(Error::new(
                op(),
                std::io::Error::other(format!("not a {} namespace ({why})", kind.name())),
            ));
        }
        Ok(Ns {
            fd: file.into(),
            id: NetnsId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            kind,
        })
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let home = Ns::open(self.kind.current(), self.kind)?;
        if home.id == self.id {
            return Ok(f());
        }
        if self.kind == Kind::Mnt {
            // Inside, /proc may be the container's (see procfs).
            crate::procfs::pin()?;
        }
        setns(self.fd.as_fd(), self.kind.flag()).map_err(|e| {
            Error::new(
                format!("enter {} namespace {}", self.kind.name(), self.id),
                std::io::Error::from(e),
            )
        })?;
        let out = f();
        if let Err(e) = setns(home.fd.as_fd(), self.kind.flag()) {
            // Carrying on would do host work inside a container's namespace.
            eprintln!(
                "nsbypass: cannot return to {} namespace {}: {e}",
                self.kind.name(),
                home.id
            );
            std::process::abort();
        }
        Ok(out)
    }
}

/// An open network namespace. Holding it keeps the namespace alive.
#[derive(Debug)]
pub struct Netns(Ns);

/// `/proc/<pid>/ns/net`.
pub fn pid_path(pid: i32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/{pid}/ns/net"))
}

impl Netns {
    /// Opens the namespace file at `path` and checks that it is a network namespace.
    pub fn open(path: &Path) -> Result<Netns> {
        Ns::open(path, Kind::Net).map(Netns)
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<Netns> {
        Netns::open(Kind::Net.current())
    }

    /// A new, empty network namespace (only `lo`, down) that nothing but
    /// the returned handle keeps alive: a short-lived thread unshares into
    /// it and exits, so the caller never leaves its own namespace. Dropping
    /// the handle destroys the namespace and whatever links are left in it.
    /// It has no name: nothing appears under `/run/netns`.
    pub fn unshared() -> Result<Netns> {
        std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| Error::new("create a network namespace", std::io::Error::from(e)))?;
            Netns::current()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    pub fn id(&self) -> NetnsId {
        self.0.id
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.fd.as_fd()
    }

    /// Runs `f` with the calling thread inside this namespace, then returns to
    /// the namespace it was in. Sockets opened by `f` stay bound to this
    /// namespace; files under `/proc/sys/net` opened by `f` are this
    /// namespace's. The process must be single-threaded with respect to
    /// namespace-sensitive work, which nsbypass is.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.0.run(f)
    }
}

/// An open mount namespace: a container's, to attach mounts inside it.
#[derive(Debug)]
pub struct Mntns(Ns);

impl Mntns {
    /// Opens `/proc/<pid>/ns/mnt`-like `path`, checking its kind.
    pub fn open(path: &Path) -> Result<Mntns> {
        Ns::open(path, Kind::Mnt).map(Mntns)
    }

    /// The mount namespace the calling thread is in now.
    pub fn current() -> Result<Mntns> {
        Mntns::open(Kind::Mnt.current())
    }

    /// Identity (an nsfs inode), to tell a container's namespace from ours.
    pub fn id(&self) -> NetnsId {
        self.0.id
    }

    /// Runs `f` inside this mount namespace, then returns. Entering a mount
    /// namespace also moves the caller's root and working directory to the
    /// namespace's root: after `run` the working directory is `/`. The
    /// process must be single-threaded (the kernel refuses otherwise).
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.0.run(f)
    }
}

/// The identity of whatever `path` leads to now, without opening it: a
/// cheap check that a recorded path still names a namespace.
pub fn id_of(path: &Path) -> Result<NetnsId> {
    let meta =
        std::fs::metadata(path).map_err(|e| Error::new(format!("stat {}", path.display()), e))?;
    Ok(NetnsId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

impl Netns {
    /// Opens the network namespace at `path` only if it is the namespace `id`;
    /// `Ok(None)` if the path is gone or leads elsewhere now.
    ///
    /// For paths recorded earlier, which may since have been replaced by
    /// anything (a FIFO would block a plain open, a device node would be
    /// opened as root): the path is opened with `O_PATH`, which neither
    /// blocks nor has side effects, checked, and only then reopened.
    pub fn open_if(path: &Path, id: NetnsId) -> Result<Option<Netns>> {
        use std::os::unix::fs::OpenOptionsExt;
        let probe = match File::options()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(path)
        {
            Ok(file) => file,
            Err(_) => return Ok(None),
        };
        let meta = probe
            .metadata()
            .map_err(|e| Error::new(format!("stat {}", path.display()), e))?;
        if (meta.dev(), meta.ino()) != (id.dev, id.ino) {
            return Ok(None);
        }
        let reopened = format!("/proc/self/fd/{}", probe.as_raw_fd());
        let file =
            File::open(&reopened).map_err(|e| Error::new(format!("open {}", path.display()), e))?;
        // Inode numbers are shared by namespaces of every kind, and reused:
        // one of another kind with the recorded number is not it.
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if nstype != Kind::Net.flag().bits() {
            return Ok(None);
        }
        Ok(Some(Netns(Ns {
            fd: file.into(),
            id,
            kind: Kind::Net,
        })))
    }

    /// The namespace's cookie: a number the kernel gives each network
    /// namespace and never gives another while the machine runs (Linux
    /// 5.14+; `None` before), unlike its inode number or its id. Read from
    /// a socket made inside it.
    pub fn cookie(&self) -> Result<Option<u64>> {
        const SO_NETNS_COOKIE: libc::c_int = 71;
        self.run(|| {
            // SAFETY: socket returns a new fd we own, or -1.
            let fd =
                unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                return Err(Error::new("socket", std::io::Error::last_os_error()));
            }
            // SAFETY: the kernel just returned this fd to us.
            let socket = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
            let rc = unsafe {
                libc::getsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
                    return Ok(None);
                }
                return Err(Error::new("getsockopt SO_NETNS_COOKIE", e));
            }
            Ok(Some(cookie))
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unshared_namespace_is_new_and_leaves_the_caller_home() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root to create a network namespace");
            return;
        }
        let home = Netns::current().unwrap().id();
        let scratch = Netns::unshared().unwrap();
        assert_ne!(scratch.id(), home);
        assert_eq!(Netns::current().unwrap().id(), home, "the caller stays");
        let inside = scratch.run(|| Netns::current().unwrap().id()).unwrap();
        assert_eq!(inside, scratch.id());
    }

    #[test]
    fn own_namespace_has_a_stable_identity() {
        let a = Netns::current().unwrap();
        let b = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        assert_eq!(a.id(), b.id());
        assert_eq!(id_of(Path::new("/proc/self/ns/net")).unwrap(), a.id());
        // Running "inside" the namespace we are in is a plain call.
        assert_eq!(a.run(|| 7).unwrap(), 7);
    }

    #[test]
    fn open_if_checks_the_identity() {
        let own = Netns::current().unwrap().id();
        let path = Path::new("/proc/self/ns/net");
        assert_eq!(Netns::open_if(path, own).unwrap().unwrap().id(), own);
        let other = NetnsId {
            dev: own.dev,
            ino: own.ino + 1,
        };
        assert!(Netns::open_if(path, other).unwrap().is_none());
        assert!(Netns::open_if(Path::new("/nonexistent/ns"), own)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_namespace_of_another_kind_with_the_number_is_not_it() {
        // Our mount namespace's number, asked for as a network namespace.
        let mnt = id_of(Path::new("/proc/self/ns/mnt")).unwrap();
        assert!(Netns::open_if(Path::new("/proc/self/ns/mnt"), mnt)
            .unwrap()
            .is_none());
    }

    #[test]
    fn cookies_are_one_per_namespace() {
        let a = Netns::current().unwrap();
        let b = Netns::open(Path::new("/proc/self/ns/net")).unwrap();
        let cookie = a.cookie().unwrap();
        assert!(cookie.is_some(), "this kernel has namespace cookies");
        assert_eq!(cookie, b.cookie().unwrap());
        let other = std::thread::spawn(|| {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET).unwrap();
            Netns::current().unwrap().cookie().unwrap()
        })
        .join()
        .unwrap();
        assert_ne!(other, cookie);
    }

    #[test]
    fn other_namespace_kinds_are_refused() {
        let e = Netns::open(Path::new("/proc/self/ns/mnt")).unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
        let e = Netns::open(Path::new("/etc/hostname")).unwrap_err();
        assert!(e.to_string().contains("not a network namespace"), "{e}");
    }
}
