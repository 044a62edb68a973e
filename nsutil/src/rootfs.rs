//! A container's root filesystem, opened as a directory that path
//! resolution cannot leave.
//!
//! Every lookup is `openat2` with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`
//! from the rootfs fd: an absolute symlink, a `..`, or a `/proc/.../root`
//! link in the image resolves inside the rootfs or fails, never on the host.
//! Missing directories and mount-point files are created relative to
//! directory fds resolved that way, and every creation is reported so a
//! failed setup can remove it again.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::{Error, Result};

/// What a mount target must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A regular file, to bind a file over.
    File,
    /// A regular file or a device node, to bind a device node over.
    Device,
    /// A directory, to bind a directory over.
    Dir,
}

/// Filesystems nothing is read from or mounted into: kernel interfaces a
/// hostile image could point a link at (`/etc/ld.so.preload -> /proc/kmsg`,
/// a target under `/sys/fs/cgroup`), where the hook, as root, would leak
/// host data into the container or change host state.
pub fn is_pseudo_fs(fd: &OwnedFd) -> bool {
    const PSEUDO: [i64; 15] = [
        0x9fa0,      // proc
        0x6265_6572, // sysfs
        0x0027_e0eb, // cgroup
        0x6367_7270, // cgroup2
        0x1cd1,      // devpts
        0x1980_0202, // mqueue
        0x6462_6720, // debugfs
        0x7363_6673, // securityfs
        0xcafe_4a11, // bpf
        0x7472_6163, // tracefs
        0x6165_676c, // pstore
        0xde5e_81e4, // efivarfs
        0x6265_6570, // configfs
        0x6573_5543, // fusectl
        0x6e73_6673, // nsfs
    ];
    match nix::sys::statfs::fstatfs(fd) {
        Ok(fs) => PSEUDO.contains(&fs.filesystem_type().0),
        // Unknown is refused too.
        Err(_) => true,
    }
}

/// `openat2` returns EAGAIN when a concurrent rename or mount raced the
/// lookup; a few retries settle it.
fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> nix::Result<T> {
    for _ in 0..8 {
        match f() {
            Err(Errno::EAGAIN) => continue,
            other => return other,
        }
    }
    f()
}

/// A path inside a rootfs, resolved: see [`Rootfs::canonical`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    /// The deepest part that exists, absolute inside the rootfs, no links.
    pub existing: PathBuf,
    /// The components below it that do not exist (yet).
    pub missing: Vec<OsString>,
}

impl Canonical {
    /// The whole path, missing components included.
    pub fn path(&self) -> PathBuf {
        let mut path = self.existing.clone();
        path.extend(&self.missing);
        path
    }

    pub fn exists(&self) -> bool {
        self.missing.is_empty()
    }
}

/// The plain names of an admin's path (checked at config load: absolute,
/// no `.`, `..` or empty components).
fn normal_names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_owned()),
        _ => None,
    })
}

/// The names of a link's target, `..` kept (resolved against the walk).
fn link_names(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

/// Something the rootfs did not have until nsbypass made it.
#[derive(Debug)]
pub struct Created {
    parent: OwnedFd,
    name: OsString,
    dir: bool,
    /// Its path inside the rootfs, for messages.
    pub path: PathBuf,
}

impl Created {
    fn new(parent: &OwnedFd, name: &std::ffi::OsStr, dir: bool, path: &Path) -> Result<Created> {
        Ok(Created {
            parent: parent
                .try_clone()
                .map_err(|e| Error::new(format!("keep {}", path.display()), e))?,
            name: name.to_owned(),
            dir,
            path: path.to_owned(),
        })
    }

    /// Removes it again (rollback); only empty directories go.
    pub fn remove(&self) -> Result<()> {
        let flag = if self.dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(&self.parent, self.name.as_os_str(), flag)
            .map_err(|e| Error::new(format!("remove {}", self.path.display()), e.into()))
    }
}

/// An opened container rootfs.
#[derive(Debug)]
pub struct Rootfs {
    fd: OwnedFd,
    path: PathBuf,
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

impl Rootfs {
    /// Opens the rootfs directory at `path` (a host path, typically
    /// `/proc/<pid>/root/<root.path>` to see the container's mounts).
    pub fn open(path: &Path) -> Result<Rootfs> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::new(format!("open rootfs {}", path.display()), e.into()))?;
        Ok(Rootfs {
            fd,
            path: path.to_owned(),
        })
    }

    fn open_in(&self, path: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
        retry(|| openat2(&self.fd, path, how(flags)))
    }

    /// The contents of the regular file at `path` in the rootfs, or `None`
    /// if there is none. It is located with `O_PATH` (no side effects),
    /// must be a regular file on the rootfs's own filesystem (not a link
    /// into the container's /proc or /sys), and must not exceed `max`
    /// bytes; only then is it opened for reading.
    pub fn read(&self, path: &Path, max: u64) -> Result<Option<Vec<u8>>> {
        let op = || format!("read {} in the rootfs", path.display());
        let refuse = |why: &str| Error::new(op(), std::io::Error::other(why.to_owned()));
        let located = match self.open_in(path, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(Error::new(op(), e.into())),
        };
        let stat = fstat(&located).map_err(|e| Error::new(op(), e.into()))?;
        let root = fstat(&self.fd).map_err(|e| Error::new(op(), e.into()))?;
        if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(refuse("not a regular file"));
        }
        if stat.st_dev != root.st_dev {
            return Err(refuse("it lies outside the rootfs's own filesystem"));
        }
        if stat.st_size as u64 > max {
            return Err(refuse(&format!("larger than {max} bytes")));
        }
        let mut bytes = Vec::new();
        crate::procfs::reopen(located.as_fd())?
            .take(max)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::new(op(), e))?;
        Ok(Some(bytes))
    }

    /// `path` with every symlink in the image resolved the way
    /// `RESOLVE_IN_ROOT` resolves it (absolute links and `..` stay inside
    /// the rootfs): the part that exists, as a path without links, and the
    /// components below it that do not exist yet. Two paths that name one
    /// place in the image (Debian's `/lib -> usr/lib`) get one canonical
    /// form, so targets can be compared for aliases and nesting before
    /// anything is mounted. A link that leads nowhere inside the rootfs is
    /// refused, as is a path through something that is not a directory.
    pub fn canonical(&self, path: &Path) -> Result<Canonical> {
        const MAX_LINKS: usize = 40;
        let refuse = |why: &str| {
            Error::new(
                format!(
                    "resolve {} in rootfs {}",
                    path.display(),
                    self.path.display()
                ),
                std::io::Error::other(why.to_owned()),
            )
        };
        // Components still to walk, each marked with whether it came from
        // a link's target.
        let mut todo: std::collections::VecDeque<(OsString, bool)> =
            normal_names(path).map(|n| (n, false)).collect();
        let mut done = PathBuf::from("/");
        let mut dir = self
            .open_in(&done, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| self.err(&done, e))?;
        let mut missing = Vec::new();
        let mut links = 0;
        while let Some((name, from_link)) = todo.pop_front() {
            if !missing.is_empty() {
                missing.push(name);
                continue;
            }
            if name == ".." {
                done.pop();
                dir = self.open_plain(&done)?;
                continue;
            }
            match nix::sys::stat::fstatat(
                &dir,
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Err(Errno::ENOENT) if from_link => {
                    return Err(refuse("a symlink there leads nowhere inside the rootfs"))
                }
                Err(Errno::ENOENT) => missing.push(name),
                Err(e) => return Err(self.err(&done.join(&name), e)),
                Ok(stat) => {
                    let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                    if format == SFlag::S_IFLNK {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(refuse("too many symlinks"));
                        }
                        let target = nix::fcntl::readlinkat(&dir, name.as_os_str())
                            .map_err(|e| self.err(&done.join(&name), e))?;
                        let target = PathBuf::from(target);
                        if target.is_absolute() {
                            done = PathBuf::from("/");
                            dir = self.open_plain(&done)?;
                        }
                        let rest: Vec<(OsString, bool)> = todo.drain(..).collect();
                        todo.extend(link_names(&target).map(|n| (n, true)));
                        // What followed the link is the image's path again,
                        // unless the link itself came from a link.
                        todo.extend(rest);
                        continue;
                    }
                    done.push(&name);
                    if format == SFlag::S_IFDIR {
                        dir = self.open_plain(&done)?;
                    } else if !todo.is_empty() {
                        return Err(refuse("a part of the path is not a directory"));
                    }
                }
            }
        }
        Ok(Canonical {
            existing: done,
            missing,
        })
    }

    /// Opens a canonical path (one without links) as `O_PATH`; any link on
    /// the way is refused, so what is opened is exactly what was checked.
    pub fn open_plain(&self, path: &Path) -> Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_IN_ROOT
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS
                    | ResolveFlag::RESOLVE_NO_SYMLINKS,
            );
        retry(|| openat2(&self.fd, path, how)).map_err(|e| self.err(path, e))
    }

    /// The rootfs directory itself.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    fn err(&self, path: &Path, e: Errno) -> Error {
        let why = match e {
            Errno::ENOTDIR => "a part of the path is not a directory".to_owned(),
            Errno::ELOOP => "too many symlinks, or a /proc magic link".to_owned(),
            other => std::io::Error::from(other).to_string(),
        };
        Error::new(
            format!(
                "resolve {} in rootfs {}",
                path.display(),
                self.path.display()
            ),
            std::io::Error::other(why),
        )
    }
}

/// Makes the entry `relative` below the directory `dir`, and the
/// directories on the way to it that are missing, reporting each thing it
/// made as soon as it exists (for rollback). Every step is a plain name in
/// a directory fd, never following a link: `relative` is canonical.
pub fn make_entry(
    dir: BorrowedFd,
    relative: &Path,
    kind: TargetKind,
    created: &mut Vec<Created>,
) -> Result<()> {
    let op = || format!("create {}", relative.display());
    let names: Vec<&std::ffi::OsStr> = relative
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = names.split_last() else {
        return Err(Error::new(op(), std::io::Error::other("nothing to create")));
    };
    let mut at = dir.try_clone_to_owned().map_err(|e| Error::new(op(), e))?;
    let mut path = PathBuf::new();
    let open_dir = |at: &OwnedFd, name: &std::ffi::OsStr| {
        nix::fcntl::openat(
            at,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    for name in parents {
        path.push(name);
        match mkdirat(&at, *name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => created.push(Created::new(&at, name, true, &path)?),
            Err(Errno::EEXIST) => {}
            Err(e) => return Err(Error::new(op(), e.into())),
        }
        at = open_dir(&at, name).map_err(|e| Error::new(op(), e.into()))?;
    }
    path.push(last);
    let made = match kind {
        TargetKind::Dir => mkdirat(&at, *last, Mode::from_bits_truncate(0o755)),
        TargetKind::File | TargetKind::Device => nix::fcntl::openat(
            &at,
            *last,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map(drop),
    };
    made.map_err(|e| Error::new(op(), e.into()))?;
    created.push(Created::new(&at, last, kind == TargetKind::Dir, &path)?);
    Ok(())
}

/// Makes the symlink `relative` below the directory `dir`, reading `text`,
/// and the directories on the way to it that are missing, reporting each
/// thing made as [`make_entry`] does. The link is made, never followed.
pub fn make_link(
    dir: BorrowedFd,
    relative: &Path,
    text: &Path,
    created: &mut Vec<Created>,
) -> Result<()> {
    let op = || format!("create link {}", relative.display());
    let (Some(parent), Some(name)) = (relative.parent(), relative.file_name()) else {
        return Err(Error::new(op(), std::io::Error::other("nothing to create")));
    };
    let mut at = dir.try_clone_to_owned().map_err(|e| Error::new(op(), e))?;
    if !parent.as_os_str().is_empty() {
        let made = created.len();
        make_entry(dir, parent, TargetKind::Dir, created).or_else(|e| match e.errno() {
            Some(libc::EEXIST) => Ok(()),
            _ => Err(e),
        })?;
        debug_assert!(created.len() >= made);
        at = openat2_plain(dir, parent).map_err(|e| Error::new(op(), e.into()))?;
    }
    nix::unistd::symlinkat(text, &at, name).map_err(|e| Error::new(op(), e.into()))?;
    created.push(Created::new(&at, name, false, relative)?);
    Ok(())
}

/// The directory `relative` below `dir`, opened without following links.
fn openat2_plain(dir: BorrowedFd, relative: &Path) -> nix::Result<OwnedFd> {
    retry(|| {
        openat2(
            dir,
            relative,
            OpenHow::new()
                .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("rootfs");
        let host = dir.path().join("host");
        std::fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        (dir, root, host)
    }

    fn canonical(existing: &str, missing: &[&str]) -> Canonical {
        Canonical {
            existing: existing.into(),
            missing: missing.iter().map(Into::into).collect(),
        }
    }

    #[test]
    fn spellings_of_one_place_have_one_canonical_form() {
        let (_dir, root, _) = setup();
        // Debian 12: /lib -> usr/lib, /lib64 -> usr/lib64 (missing here).
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr/lib/x86_64-linux-gnu", root.join("usr/lib/triple")).unwrap();
        std::fs::write(root.join("usr/lib/x86_64-linux-gnu/libc.so.6"), "").unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        let want = canonical("/usr/lib/x86_64-linux-gnu", &["librte.so"]);
        for spelling in [
            "/lib/x86_64-linux-gnu/librte.so",
            "/usr/lib/x86_64-linux-gnu/librte.so",
            "/usr/lib/triple/librte.so",
            "/lib/triple/librte.so",
        ] {
            assert_eq!(
                rootfs.canonical(Path::new(spelling)).unwrap(),
                want,
                "{spelling}"
            );
        }
        let existing = rootfs
            .canonical(Path::new("/lib/triple/libc.so.6"))
            .unwrap();
        assert_eq!(
            existing,
            canonical("/usr/lib/x86_64-linux-gnu/libc.so.6", &[])
        );
        assert!(existing.exists());
        assert_eq!(
            rootfs.canonical(Path::new("/opt/x/y")).unwrap(),
            canonical("/", &["opt", "x", "y"])
        );
    }

    #[test]
    fn links_out_of_the_rootfs_resolve_inside_it() {
        let (_dir, root, host) = setup();
        // Absolute and ../.. forms, pointing at a real host directory.
        symlink(&host, root.join("abs")).unwrap();
        symlink(
            format!("../../../../../../../..{}", host.display()),
            root.join("rel"),
        )
        .unwrap();
        let inside = root.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        for link in ["/abs/a.so", "/rel/a.so"] {
            assert_eq!(
                rootfs.canonical(Path::new(link)).unwrap(),
                canonical(host.to_str().unwrap(), &["a.so"]),
                "{link}"
            );
        }
        // Made through the canonical path: inside the rootfs, never on the host.
        let c = rootfs.canonical(Path::new("/abs/sub/a.so")).unwrap();
        let at = rootfs.open_plain(&c.existing).unwrap();
        let mut created = Vec::new();
        let relative: PathBuf = c.missing.iter().collect();
        make_entry(at.as_fd(), &relative, TargetKind::File, &mut created).unwrap();
        assert!(inside.join("sub/a.so").is_file());
        assert_eq!(
            std::fs::read_dir(&host).unwrap().count(),
            0,
            "nothing on the host"
        );
        let paths: Vec<_> = created.iter().map(|c| c.path.clone()).collect();
        assert_eq!(paths, ["sub", "sub/a.so"].map(PathBuf::from));
        for c in created.iter().rev() {
            c.remove().unwrap();
        }
        assert!(!inside.join("sub").exists());
    }

    #[test]
    fn a_link_that_leads_nowhere_or_a_file_in_the_way_is_refused() {
        let (_dir, root, host) = setup();
        symlink(host.join("missing"), root.join("usr/lib64")).unwrap();
        std::fs::write(root.join("usr/file"), "").unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        let e = rootfs
            .canonical(Path::new("/usr/lib64/liby.so"))
            .unwrap_err();
        assert!(
            e.to_string().contains("a symlink there leads nowhere"),
            "{e}"
        );
        let e = rootfs.canonical(Path::new("/usr/file/x")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        symlink("loop", root.join("loop")).unwrap();
        let e = rootfs.canonical(Path::new("/loop/x")).unwrap_err();
        assert!(e.to_string().contains("too many symlinks"), "{e}");
        // open_plain never follows a link, even one inside the rootfs.
        symlink("usr", root.join("u")).unwrap();
        assert!(rootfs.open_plain(Path::new("/u/lib")).is_err());
        assert!(rootfs.open_plain(Path::new("/usr/lib")).is_ok());
    }

    #[test]
    fn links_into_kernel_filesystems_are_neither_read_nor_mounted_into() {
        let (_dir, root, _) = setup();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("/proc/self/status", root.join("etc/ld.so.preload")).unwrap();
        let host_root = Rootfs::open(Path::new("/")).unwrap();
        let e = host_root
            .read(Path::new("/proc/self/status"), 1 << 20)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("outside the rootfs's own filesystem"),
            "{e}"
        );
        let sys = host_root.open_plain(Path::new("/sys/kernel")).unwrap();
        assert!(is_pseudo_fs(&sys));
        assert!(!is_pseudo_fs(
            &host_root.open_plain(Path::new("/")).unwrap()
        ));
    }

    #[test]
    fn reads_files_and_refuses_kinds_that_do_not_fit() {
        let (_dir, root, _) = setup();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/ld.so.preload"), "/lib/a.so\n").unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        assert_eq!(
            rootfs
                .read(Path::new("/etc/ld.so.preload"), 100)
                .unwrap()
                .unwrap(),
            b"/lib/a.so\n"
        );
        assert_eq!(rootfs.read(Path::new("/etc/none"), 100).unwrap(), None);
        assert!(rootfs.read(Path::new("/etc"), 100).is_err());
        let etc = rootfs.open_plain(Path::new("/etc")).unwrap();
        let mut created = Vec::new();
        let e = make_entry(
            etc.as_fd(),
            Path::new("ld.so.preload"),
            TargetKind::File,
            &mut created,
        )
        .unwrap_err();
        assert!(e.to_string().contains("File exists"), "{e}");
        assert!(created.is_empty());
    }
}
