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
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
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
fn is_pseudo_fs(fd: &OwnedFd) -> bool {
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
        let reopened = PathBuf::from(format!("/proc/self/fd/{}", located.as_raw_fd()));
        let mut bytes = Vec::new();
        std::fs::File::open(reopened)
            .and_then(|f| f.take(max).read_to_end(&mut bytes))
            .map_err(|e| Error::new(op(), e))?;
        Ok(Some(bytes))
    }

    /// An `O_PATH` fd for `path` inside the rootfs to mount onto, creating
    /// missing parent directories and the target itself. Everything created
    /// is appended to `created` as soon as it exists, so the caller can
    /// remove it even when a later step fails.
    pub fn mount_target(
        &self,
        path: &Path,
        kind: TargetKind,
        created: &mut Vec<Created>,
    ) -> Result<OwnedFd> {
        let names: Vec<&std::ffi::OsStr> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let Some((last, parents)) = names.split_last() else {
            return Err(Error::new(
                format!("mount onto {}", path.display()),
                std::io::Error::other("not a path below the root"),
            ));
        };

        let mut prefix = PathBuf::from("/");
        let mut dir = self
            .open_in(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
            .map_err(|e| self.err(&prefix, e))?;
        for name in parents {
            prefix.push(name);
            dir = match self.open_in(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    self.create(&dir, name, &prefix, TargetKind::Dir, created)?;
                    self.open_in(&prefix, OFlag::O_PATH | OFlag::O_DIRECTORY)
                        .map_err(|e| self.err(&prefix, e))?
                }
                Err(e) => return Err(self.err(&prefix, e)),
            };
        }

        let target = match self.open_in(path, OFlag::O_PATH) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                self.create(&dir, last, path, kind, created)?;
                self.open_in(path, OFlag::O_PATH)
                    .map_err(|e| self.err(path, e))?
            }
            Err(e) => return Err(self.err(path, e)),
        };
        let stat = fstat(&target).map_err(|e| self.err(path, e))?;
        let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let fits = match kind {
            TargetKind::Dir => format == SFlag::S_IFDIR,
            TargetKind::File => format == SFlag::S_IFREG,
            TargetKind::Device => {
                matches!(format, SFlag::S_IFREG | SFlag::S_IFCHR | SFlag::S_IFBLK)
            }
        };
        if is_pseudo_fs(&target) {
            return Err(Error::new(
                format!("mount onto {}", path.display()),
                std::io::Error::other(
                    "it leads into a kernel filesystem (/proc, /sys, cgroup, ...)",
                ),
            ));
        }
        if !fits {
            let want = match kind {
                TargetKind::Dir => "a directory",
                TargetKind::File => "a regular file",
                TargetKind::Device => "a file or device node",
            };
            return Err(Error::new(
                format!("mount onto {}", path.display()),
                std::io::Error::other(format!("the image has something other than {want} there")),
            ));
        }
        Ok(target)
    }

    /// Makes `name` in the resolved directory `dir`: a plain name in a real
    /// directory fd, so no symlink is followed.
    fn create(
        &self,
        dir: &OwnedFd,
        name: &std::ffi::OsStr,
        path: &Path,
        kind: TargetKind,
        created: &mut Vec<Created>,
    ) -> Result<()> {
        if is_pseudo_fs(dir) {
            return Err(Error::new(
                format!("create {} in the rootfs", path.display()),
                std::io::Error::other(
                    "it leads into a kernel filesystem (/proc, /sys, cgroup, ...)",
                ),
            ));
        }
        let made = match kind {
            TargetKind::Dir => mkdirat(dir, name, Mode::from_bits_truncate(0o755)),
            TargetKind::File | TargetKind::Device => nix::fcntl::openat(
                dir,
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map(drop),
        };
        match made {
            Ok(()) => {
                created.push(Created {
                    parent: dir
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| Error::new(format!("keep {}", path.display()), e))?,
                    name: name.to_owned(),
                    dir: kind == TargetKind::Dir,
                    path: path.to_owned(),
                });
                Ok(())
            }
            // Something is there that resolution could not follow: a
            // symlink leading nowhere (or out of the rootfs, which is the
            // same thing here).
            Err(Errno::EEXIST) => Err(Error::new(
                format!("create {} in the rootfs", path.display()),
                std::io::Error::other("a symlink there leads nowhere inside the rootfs"),
            )),
            Err(e) => Err(Error::new(
                format!("create {} in the rootfs", path.display()),
                e.into(),
            )),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("rootfs");
        let host = dir.path().join("host");
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        (dir, root, host)
    }

    #[test]
    fn creates_missing_parents_and_the_target_inside_and_reports_them() {
        let (_dir, root, _) = setup();
        let rootfs = Rootfs::open(&root).unwrap();
        let mut created = Vec::new();
        rootfs
            .mount_target(
                Path::new("/usr/lib64/stack/libx.so"),
                TargetKind::File,
                &mut created,
            )
            .unwrap();
        assert!(root.join("usr/lib64/stack/libx.so").is_file());
        let paths: Vec<_> = created.iter().map(|c| c.path.clone()).collect();
        assert_eq!(
            paths,
            ["/usr/lib64", "/usr/lib64/stack", "/usr/lib64/stack/libx.so"].map(PathBuf::from)
        );
        for c in created.iter().rev() {
            c.remove().unwrap();
        }
        assert!(!root.join("usr/lib64").exists());
        assert!(
            root.join("usr/lib").exists(),
            "only what was created is removed"
        );
    }

    #[test]
    fn symlinks_out_of_the_rootfs_resolve_inside_it() {
        let (_dir, root, host) = setup();
        // Absolute and ../.. forms, pointing at a real host directory.
        symlink(&host, root.join("abs")).unwrap();
        symlink(
            format!("../../../../../../../..{}", host.display()),
            root.join("rel"),
        )
        .unwrap();
        std::fs::create_dir_all(root.join(host.strip_prefix("/").unwrap())).unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        let mut created = Vec::new();
        for link in ["/abs/a.so", "/rel/b.so"] {
            rootfs
                .mount_target(Path::new(link), TargetKind::File, &mut created)
                .unwrap();
        }
        assert_eq!(
            std::fs::read_dir(&host).unwrap().count(),
            0,
            "nothing created on the host"
        );
        let inside = root.join(host.strip_prefix("/").unwrap());
        assert!(inside.join("a.so").exists() && inside.join("b.so").exists());
    }

    #[test]
    fn a_dangling_symlink_or_a_symlinked_target_never_reaches_the_host() {
        let (_dir, root, host) = setup();
        symlink(host.join("missing"), root.join("usr/lib64")).unwrap();
        std::fs::write(host.join("secret"), "host").unwrap();
        symlink(host.join("secret"), root.join("usr/lib/libx.so")).unwrap();
        let rootfs = Rootfs::open(&root).unwrap();
        let mut created = Vec::new();
        let e = rootfs
            .mount_target(
                Path::new("/usr/lib64/liby.so"),
                TargetKind::File,
                &mut created,
            )
            .unwrap_err();
        assert!(
            e.to_string().contains("a symlink there leads nowhere"),
            "{e}"
        );
        // The target itself is a symlink to a host file: it resolves to the
        // same path inside the rootfs, which does not exist, so it is refused.
        let e = rootfs
            .mount_target(
                Path::new("/usr/lib/libx.so"),
                TargetKind::File,
                &mut created,
            )
            .unwrap_err();
        assert!(e.to_string().contains("leads nowhere"), "{e}");
        assert!(created.is_empty());
        assert!(!host.join("missing").exists());
        assert_eq!(
            std::fs::read_to_string(host.join("secret")).unwrap(),
            "host"
        );
    }

    #[test]
    fn links_into_kernel_filesystems_are_neither_read_nor_mounted_into() {
        let (_dir, root, _) = setup();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        // A rootfs with a procfs and sysfs inside, as at prestart.
        symlink("/proc/self/status", root.join("etc/ld.so.preload")).unwrap();
        symlink("/sys/kernel", root.join("kern")).unwrap();
        let host_root = Rootfs::open(Path::new("/")).unwrap();
        let e = host_root
            .read(Path::new("/proc/self/status"), 1 << 20)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("outside the rootfs's own filesystem"),
            "{e}"
        );
        let mut created = Vec::new();
        let e = host_root
            .mount_target(
                Path::new("/sys/kernel/nsbypass-test"),
                TargetKind::File,
                &mut created,
            )
            .unwrap_err();
        assert!(e.to_string().contains("kernel filesystem"), "{e}");
        let e = host_root
            .mount_target(
                Path::new("/proc/self/status"),
                TargetKind::File,
                &mut created,
            )
            .unwrap_err();
        assert!(e.to_string().contains("kernel filesystem"), "{e}");
        assert!(created.is_empty());
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
        let mut created = Vec::new();
        let e = rootfs
            .mount_target(Path::new("/etc"), TargetKind::File, &mut created)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("something other than a regular file"),
            "{e}"
        );
        rootfs
            .mount_target(Path::new("/etc"), TargetKind::Dir, &mut created)
            .unwrap();
    }
}
