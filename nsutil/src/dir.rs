//! A state directory that nobody else can steer.
//!
//! nsbypass runs as root on every container start and keeps its state (a
//! lock, lease files, JSON records, scratch files) in an admin-chosen
//! directory. Anything that resolves a path string there more than once, or
//! follows a link, lets a local user who can plant an entry redirect root's
//! writes and deletions anywhere on the host. So a [`Dir`] is only ever
//! reached through its file descriptor, and every entry in it is a single
//! name opened, created, renamed or removed relative to that fd with
//! `O_NOFOLLOW` (or the `*at` call's equivalent, which never follows the
//! last component):
//!
//! - [`Dir::open_root`] checks every ancestor of the state root from `/`
//!   down, so nobody but root can swap a directory on the way;
//! - directories are created exactly 0700 and files exactly 0600 whatever
//!   the umask, and older, wider modes are tightened;
//! - files appear atomically: [`Dir::create_new`] links a fully written
//!   `O_TMPFILE` inode into place (there is never a temporary name), and
//!   [`Dir::replace`] writes into a dedicated scratch directory that
//!   [`Dir::sweep`] can empty after a process was killed;
//! - [`lock_exclusive`] waits for the state lock only so long, and says who
//!   holds it when it gives up.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{geteuid, linkat, unlinkat, UnlinkatFlags};

use crate::{Error, Result};

/// Exactly the mode of every directory nsbypass creates: only its own user
/// may list, enter or change it.
const DIR_MODE: u32 = 0o700;
/// Exactly the mode of every file nsbypass creates, the lock included: a
/// lock anyone can open is a lock anyone can hold forever.
const FILE_MODE: u32 = 0o600;

/// A refusal: the operation and, in one line, what is wrong and what to do.
fn refuse(op: impl Into<String>, why: impl Into<String>) -> Error {
    Error::new(op, io::Error::other(why.into()))
}

fn os(op: impl Into<String>, e: Errno) -> Error {
    Error::new(op, e.into())
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// What kind of file `st` is, for messages.
fn kind(st: &FileStat) -> &'static str {
    match file_type(st) {
        SFlag::S_IFLNK => "a symlink",
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        _ => "a file of unknown type",
    }
}

fn perm(st: &FileStat) -> u32 {
    st.st_mode & 0o7777
}

const SYMLINK: &str =
    "it is a symlink; nsbypass never follows links in its state directory (remove it)";

/// A directory reached only through its fd, whose entries are opened by
/// single names relative to that fd and never through a link.
///
/// Holding the fd (rather than a path) means a directory renamed or
/// replaced after it was checked cannot redirect anything: every operation
/// lands in the directory that was checked.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Why a directory on the way to a state root, or the root itself, is
/// unsafe, and what the admin can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    pub what: String,
    pub fix: String,
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.what, self.fix)
    }
}

/// What is wrong with `at` as an ancestor of a state root, given its
/// owner and mode (`st_mode`), for a process of euid `euid`; `None` if
/// nothing. An ancestor must be owned by root (or `euid`) and writable by
/// nobody else, unless it is sticky (like `/tmp`), where others cannot
/// replace entries they do not own: whoever could write it could swap the
/// state directory for one they control. [`Dir::open_root`] enforces this;
/// it is public so that a diagnosis applies the very same rule.
pub fn ancestor_problem(at: &Path, uid: u32, mode: u32, euid: u32) -> Option<Unsafe> {
    let fix = "use a directory only root can write".to_owned();
    if uid != 0 && uid != euid {
        return Some(Unsafe {
            what: format!("parent {} is owned by uid {uid}, not by root", at.display()),
            fix,
        });
    }
    let sticky = mode & libc::S_ISVTX != 0;
    for (bit, who) in [(0o002, "others"), (0o020, "group")] {
        if mode & bit != 0 && !sticky {
            return Some(Unsafe {
                what: format!(
                    "parent {} is writable by {who} (mode {:04o})",
                    at.display(),
                    mode & 0o7777
                ),
                fix,
            });
        }
    }
    None
}

/// What is wrong with an existing state root (a real directory) of owner
/// `uid` and mode `mode`, for a process of euid `euid`; `None` if nothing.
/// The rule [`Dir::open_root`] enforces, public for a diagnosis.
pub fn root_problem(uid: u32, mode: u32, euid: u32) -> Option<Unsafe> {
    if uid != euid {
        return Some(Unsafe {
            what: format!("it is owned by uid {uid}, not by uid {euid} that nsbypass runs as"),
            fix: "remove it (nsbypass recreates it) or chown it".to_owned(),
        });
    }
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 { "others" } else { "group" };
        return Some(Unsafe {
            what: format!("it is writable by {who} (mode {:04o})", mode & 0o7777),
            fix: "chmod 0700 it".to_owned(),
        });
    }
    None
}

impl Dir {
    /// Opens the state root `path`, creating it (exactly 0700) if missing.
    ///
    /// The directory containing `path` is first resolved with
    /// `canonicalize` (root-owned links such as `/var/run -> /run` are
    /// normal), then walked again from `/` one component at a time without
    /// following links. Every ancestor must be owned by root or by this
    /// process's euid and not writable by group or others, unless it is
    /// sticky (like `/tmp`), where others cannot replace entries they do
    /// not own. Otherwise whoever can write an ancestor could swap the
    /// state directory for one they control. The root itself must be a
    /// real directory (not a link), owned by the euid and not writable by
    /// group or others. [`Dir::path`] is the canonical path.
    pub fn open_root(path: &Path) -> Result<Dir> {
        let op = format!("state_dir {}", path.display());
        if !path.is_absolute() {
            return Err(refuse(
                op,
                "not an absolute path; set state_dir to an absolute path such as /run/nsbypass",
            ));
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(refuse(
                op,
                "does not name a directory below /; use a path such as /run/nsbypass",
            ));
        };
        let parent = std::fs::canonicalize(parent).map_err(|e| {
            refuse(
                &op,
                format!(
                    "cannot resolve its parent {}: {e}; create the parent (owned by root, mode 0755) or choose another state_dir",
                    parent.display()
                ),
            )
        })?;
        let euid = geteuid().as_raw();

        let check_ancestor = |at: &Path, st: &FileStat| -> Result<()> {
            match ancestor_problem(at, st.st_uid, st.st_mode, euid) {
                Some(problem) => Err(refuse(&op, problem.to_string())),
                None => Ok(()),
            }
        };

        let walk = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut at = PathBuf::from("/");
        let mut fd = nix::fcntl::open("/", walk, Mode::empty())
            .map_err(|e| os(format!("{op}: open /"), e))?;
        check_ancestor(
            &at,
            &fstat(&fd).map_err(|e| os(format!("{op}: stat /"), e))?,
        )?;
        for component in parent.components() {
            let Component::Normal(c) = component else {
                continue;
            };
            at.push(c);
            fd = match openat(&fd, c, walk, Mode::empty()) {
                Ok(fd) => fd,
                // canonicalize saw a directory here a moment ago.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(refuse(
                        &op,
                        format!(
                            "parent {} changed into something other than a directory while it was checked; look for whoever is replacing it",
                            at.display()
                        ),
                    ))
                }
                Err(e) => return Err(os(format!("{op}: open parent {}", at.display()), e)),
            };
            let st = fstat(&fd).map_err(|e| os(format!("{op}: stat {}", at.display()), e))?;
            check_ancestor(&at, &st)?;
        }

        let full = parent.join(name);
        let op = format!("state_dir {}", full.display());
        let created = match mkdirat(&fd, name, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(os(format!("{op}: create"), e)),
        };
        let root = match openat(
            &fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(root) => root,
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok();
                return Err(match st {
                    Some(st) if file_type(&st) == SFlag::S_IFLNK => refuse(
                        op,
                        "it is a symlink; nsbypass never follows links in its state directory; set state_dir to the real directory",
                    ),
                    Some(st) => refuse(
                        op,
                        format!(
                            "it is {}, not a directory; remove it or choose another state_dir",
                            kind(&st)
                        ),
                    ),
                    None => refuse(op, "it is not a directory; remove it or choose another state_dir"),
                });
            }
            Err(e) => return Err(os(format!("{op}: open"), e)),
        };
        if created {
            // mkdir applied the umask; the mode must not depend on it.
            fchmod(&root, Mode::from_bits_truncate(DIR_MODE))
                .map_err(|e| os(format!("{op}: chmod 0700"), e))?;
        }
        let st = fstat(&root).map_err(|e| os(format!("{op}: stat"), e))?;
        if let Some(problem) = root_problem(st.st_uid, st.st_mode, euid) {
            return Err(refuse(op, problem.to_string()));
        }
        Ok(Dir {
            fd: root,
            path: full,
        })
    }

    /// The path this directory was opened by, for messages only: nothing
    /// is ever resolved through it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` as a single path component, or a refusal: anything else
    /// (`a/b`, `..`) would leave this directory.
    fn entry<'a>(&self, name: &'a OsStr) -> Result<&'a OsStr> {
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes == b"."
            || bytes == b".."
            || bytes.contains(&b'/')
            || bytes.contains(&0)
        {
            return Err(refuse(
                format!("use {:?} in {}", name, self.path.display()),
                "not a single file name (empty, '.', '..', or contains '/' or NUL)",
            ));
        }
        Ok(name)
    }

    fn at(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// Explains why opening `name` as a directory failed with ELOOP or
    /// ENOTDIR: a symlink, or something else.
    fn not_a_dir(&self, name: &OsStr) -> Error {
        let op = format!("open {}", self.at(name).display());
        match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if file_type(&st) == SFlag::S_IFLNK => refuse(op, SYMLINK),
            Ok(st) => refuse(
                op,
                format!("it is {}, not a directory (remove it)", kind(&st)),
            ),
            Err(e) => os(op, e),
        }
    }

    /// Opens the existing subdirectory `name` and checks it, or `None`.
    fn open_subdir(&self, name: &OsStr) -> Result<Option<Dir>> {
        let path = self.at(name);
        let fd = match openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => return Err(self.not_a_dir(name)),
            Err(e) => return Err(os(format!("open {}", path.display()), e)),
        };
        let st = fstat(&fd).map_err(|e| os(format!("stat {}", path.display()), e))?;
        let euid = geteuid().as_raw();
        if st.st_uid != euid {
            return Err(refuse(
                format!("open {}", path.display()),
                format!(
                    "it is owned by uid {}, not by uid {euid} that nsbypass runs as; remove it",
                    st.st_uid
                ),
            ));
        }
        if perm(&st) != DIR_MODE {
            // Created by mkdir under the umask (or by an older nsbypass
            // that did not care): only the mode, never the owner, is ours
            // to fix.
            fchmod(&fd, Mode::from_bits_truncate(DIR_MODE))
                .map_err(|e| os(format!("chmod 0700 {}", path.display()), e))?;
        }
        Ok(Some(Dir { fd, path }))
    }

    /// Opens the subdirectory `name`, creating it (exactly 0700, whatever
    /// the umask) if missing.
    ///
    /// An existing entry that is a symlink or not a directory is refused,
    /// as is a directory owned by someone else; one of ours with a wider
    /// mode (an older nsbypass created them under the caller's umask) is
    /// tightened to 0700.
    pub fn subdir(&self, name: impl AsRef<OsStr>) -> Result<Dir> {
        let name = self.entry(name.as_ref())?;
        match mkdirat(&self.fd, name, Mode::from_bits_truncate(DIR_MODE)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(os(format!("create {}", self.at(name).display()), e)),
        }
        self.open_subdir(name)?.ok_or_else(|| {
            refuse(
                format!("open {}", self.at(name).display()),
                "it disappeared right after it was created; look for whoever removes it",
            )
        })
    }

    /// Like [`Dir::subdir`], but `None` when it does not exist: for readers
    /// (teardown, status) that must not leave directories behind.
    pub fn subdir_if_exists(&self, name: impl AsRef<OsStr>) -> Result<Option<Dir>> {
        let name = self.entry(name.as_ref())?;
        self.open_subdir(name)
    }

    /// The contents of the regular file `name`, or `None` if there is none.
    ///
    /// Opened with `O_NOFOLLOW|O_NONBLOCK` (a planted FIFO must not block
    /// the hook), then it must be a regular file owned by the euid (one
    /// nsbypass wrote, not one planted while a directory was still wide
    /// open) and at most `max_bytes` long.
    pub fn read(&self, name: impl AsRef<OsStr>, max_bytes: u64) -> Result<Option<Vec<u8>>> {
        let name = self.entry(name.as_ref())?;
        let op = || format!("read {}", self.at(name).display());
        let fd = match openat(
            &self.fd,
            name,
            OFlag::O_RDONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) => return Err(refuse(op(), SYMLINK)),
            Err(e) => return Err(os(op(), e)),
        };
        let st = fstat(&fd).map_err(|e| os(op(), e))?;
        if file_type(&st) != SFlag::S_IFREG {
            return Err(refuse(
                op(),
                format!("it is {}, not a regular file (remove it)", kind(&st)),
            ));
        }
        let euid = geteuid().as_raw();
        if st.st_uid != euid {
            return Err(refuse(
                op(),
                format!(
                    "it is owned by uid {}, not by uid {euid} that nsbypass runs as; nsbypass only reads files it wrote (remove it)",
                    st.st_uid
                ),
            ));
        }
        let too_big = || refuse(op(), format!("it is larger than {max_bytes} bytes"));
        if st.st_size as u64 > max_bytes {
            return Err(too_big());
        }
        let mut bytes = Vec::with_capacity(st.st_size as usize);
        File::from(fd)
            .take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| Error::new(op(), e))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_big());
        }
        Ok(Some(bytes))
    }

    /// Creates the file `name` with `bytes` (mode 0600) unless something
    /// by that name exists; `Ok(false)` then (a symlink counts, and is not
    /// followed).
    ///
    /// The file is written as an unnamed `O_TMPFILE` inode and linked into
    /// place only when complete, so nobody ever sees it half-written and a
    /// crash or ENOSPC leaves nothing behind. On a filesystem without
    /// `O_TMPFILE` it is written under a temporary name in `scratch` (a
    /// directory on the same filesystem that [`Dir::sweep`] empties) and
    /// hard-linked from there.
    pub fn create_new(&self, name: impl AsRef<OsStr>, bytes: &[u8], scratch: &Dir) -> Result<bool> {
        let name = self.entry(name.as_ref())?;
        let op = || format!("create {}", self.at(name).display());
        let fd = match openat(
            &self.fd,
            ".",
            OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(FILE_MODE),
        ) {
            Ok(fd) => fd,
            // No O_TMPFILE here (EISDIR: a kernel that predates it).
            Err(Errno::EOPNOTSUPP | Errno::EISDIR) => {
                return self.create_new_via(name, bytes, scratch)
            }
            Err(e) => return Err(os(op(), e)),
        };
        fchmod(&fd, Mode::from_bits_truncate(FILE_MODE)).map_err(|e| os(op(), e))?;
        let mut file = File::from(fd);
        // On failure the unnamed inode goes away with the fd.
        file.write_all(bytes).map_err(|e| Error::new(op(), e))?;
        let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
        let linked = match linkat(
            AT_FDCWD,
            proc_path.as_str(),
            &self.fd,
            name,
            AtFlags::AT_SYMLINK_FOLLOW,
        ) {
            // No /proc: AT_EMPTY_PATH does the same where it is allowed
            // (CAP_DAC_READ_SEARCH, or a kernel that allows it for files
            // the caller opened).
            Err(Errno::ENOENT) => linkat(&file, "", &self.fd, name, AtFlags::AT_EMPTY_PATH),
            other => other,
        };
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(os(op(), e)),
        }
    }

    /// [`Dir::create_new`] without `O_TMPFILE`: written in `scratch`, then
    /// hard-linked (which fails if `name` exists) and the temporary removed.
    fn create_new_via(&self, name: &OsStr, bytes: &[u8], scratch: &Dir) -> Result<bool> {
        let tmp = scratch.write_temporary(name, bytes)?;
        let linked = linkat(
            &scratch.fd,
            tmp.as_os_str(),
            &self.fd,
            name,
            AtFlags::empty(),
        );
        let _ = unlinkat(&scratch.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        match linked {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(self.cross(name, scratch, e)),
        }
    }

    fn cross(&self, name: &OsStr, scratch: &Dir, e: Errno) -> Error {
        let op = format!("write {}", self.at(name).display());
        if e == Errno::EXDEV {
            refuse(
                op,
                format!(
                    "scratch directory {} is on another filesystem; keep it inside the state directory",
                    scratch.path.display()
                ),
            )
        } else {
            os(op, e)
        }
    }

    /// Writes `bytes` to a new file `<for_name>.<pid>` in this (scratch)
    /// directory, mode 0600, and returns its name. A leftover by that name
    /// (a killed process whose pid came round again) is removed as a link,
    /// never followed, and creation tried once more. Nothing is left
    /// behind when writing fails.
    fn write_temporary(&self, for_name: &OsStr, bytes: &[u8]) -> Result<OsString> {
        let mut tmp = for_name.to_owned();
        tmp.push(format!(".{}", std::process::id()));
        let op = || format!("write {}", self.at(&tmp).display());
        let flags =
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
        let mode = Mode::from_bits_truncate(FILE_MODE);
        let fd = match openat(&self.fd, tmp.as_os_str(), flags, mode) {
            Err(Errno::EEXIST) => {
                unlinkat(&self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| os(format!("remove leftover {}", self.at(&tmp).display()), e))?;
                openat(&self.fd, tmp.as_os_str(), flags, mode)
            }
            other => other,
        }
        .map_err(|e| os(op(), e))?;
        let written = fchmod(&fd, mode)
            .map_err(io::Error::from)
            .and_then(|()| File::from(fd).write_all(bytes));
        if let Err(e) = written {
            let _ = unlinkat(&self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            return Err(Error::new(op(), e));
        }
        Ok(tmp)
    }

    /// Atomically replaces (or creates) the file `name` with `bytes`, mode
    /// 0600: written to `<name>.<pid>` in `scratch`, then renamed over
    /// `name`. Readers see the old or the new contents, never a mix. A
    /// symlink at `name` is replaced, not followed. On failure the
    /// temporary is removed; after a kill it is left only in `scratch`,
    /// for [`Dir::sweep`]. `scratch` must be on the same filesystem (a
    /// subdirectory of the state root).
    pub fn replace(&self, name: impl AsRef<OsStr>, bytes: &[u8], scratch: &Dir) -> Result<()> {
        let name = self.entry(name.as_ref())?;
        let tmp = scratch.write_temporary(name, bytes)?;
        renameat(&scratch.fd, tmp.as_os_str(), &self.fd, name).map_err(|e| {
            let _ = unlinkat(&scratch.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
            self.cross(name, scratch, e)
        })
    }

    /// Removes every entry of this directory that is not a directory and
    /// returns how many went. Meant for the scratch directory while the
    /// state lock is held, when anything there is a leftover of a killed
    /// process. Links are removed themselves (`unlinkat` never follows),
    /// so their targets are untouched; subdirectories are left alone.
    pub fn sweep(&self) -> Result<usize> {
        let mut removed = 0;
        for name in self.names()? {
            match unlinkat(&self.fd, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => removed += 1,
                Err(Errno::ENOENT | Errno::EISDIR) => {}
                Err(e) => return Err(os(format!("remove {}", self.at(&name).display()), e)),
            }
        }
        Ok(removed)
    }

    /// Removes the file (or link, never its target) `name`; one that does
    /// not exist is fine, since removal is what the caller wanted.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> Result<()> {
        let name = self.entry(name.as_ref())?;
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(os(format!("remove {}", self.at(name).display()), e)),
        }
    }

    /// Removes the subdirectory `name` if it is empty. `Ok(true)` when it is
    /// gone (removed now, or already absent), `Ok(false)` when it still has
    /// entries (another user of it came along): both are normal outcomes of
    /// cleaning up a per-network directory. A symlink there is an error,
    /// not followed.
    pub fn remove_dir(&self, name: impl AsRef<OsStr>) -> Result<bool> {
        let name = self.entry(name.as_ref())?;
        match unlinkat(&self.fd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(true),
            Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(false),
            Err(Errno::ENOTDIR) => Err(self.not_a_dir(name)),
            Err(e) => Err(os(format!("remove {}", self.at(name).display()), e)),
        }
    }

    /// The names in this directory (without `.` and `..`), sorted, read
    /// through a fresh fd for this directory, never through its path.
    pub fn names(&self) -> Result<Vec<OsString>> {
        let op = || format!("list {}", self.path.display());
        let mut dir = nix::dir::Dir::openat(
            &self.fd,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| os(op(), e))?;
        let mut names = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| os(op(), e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name.to_vec()));
            }
        }
        names.sort();
        Ok(names)
    }

    /// Whether anything (a dangling symlink included) is named `name`: a
    /// cheap check that neither follows links nor opens the entry. An
    /// invalid name exists nowhere.
    pub fn exists(&self, name: impl AsRef<OsStr>) -> bool {
        match self.entry(name.as_ref()) {
            Ok(name) => fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW).is_ok(),
            Err(_) => false,
        }
    }

    /// Opens (creating if needed) the lock file `name` for [`lock_exclusive`].
    ///
    /// It must be a regular file owned by the euid with a single link, and
    /// is set to exactly 0600: an older nsbypass made it 0644, so any local
    /// user could open it and `flock` it forever.
    pub fn open_lock(&self, name: impl AsRef<OsStr>) -> Result<File> {
        let name = self.entry(name.as_ref())?;
        let op = || format!("open lock {}", self.at(name).display());
        let fd = match openat(
            &self.fd,
            name,
            OFlag::O_RDWR
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY,
            Mode::from_bits_truncate(FILE_MODE),
        ) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Err(refuse(op(), SYMLINK)),
            Err(e) => return Err(os(op(), e)),
        };
        let st = fstat(&fd).map_err(|e| os(op(), e))?;
        let euid = geteuid().as_raw();
        if file_type(&st) != SFlag::S_IFREG {
            return Err(refuse(
                op(),
                format!("it is {}, not a regular file (remove it)", kind(&st)),
            ));
        }
        if st.st_uid != euid {
            return Err(refuse(
                op(),
                format!(
                    "it is owned by uid {}, not by uid {euid} that nsbypass runs as; remove it",
                    st.st_uid
                ),
            ));
        }
        if st.st_nlink != 1 {
            return Err(refuse(
                op(),
                format!(
                    "it has {} hard links; the lock must be nsbypass's own file (remove it)",
                    st.st_nlink
                ),
            ));
        }
        if perm(&st) != FILE_MODE {
            fchmod(&fd, Mode::from_bits_truncate(FILE_MODE))
                .map_err(|e| os(format!("chmod 0600 {}", self.at(name).display()), e))?;
        }
        Ok(File::from(fd))
    }

    /// [`Dir::open_lock`] then [`lock_exclusive`]: the state lock in one
    /// call, with the lock's path in every message.
    pub fn lock(
        &self,
        name: impl AsRef<OsStr>,
        timeout: Duration,
    ) -> std::result::Result<LockGuard, LockError> {
        let file = self.open_lock(name.as_ref())?;
        lock_exclusive(file, &self.at(name.as_ref()), timeout)
    }
}

/// A held `flock(LOCK_EX)`; dropping it releases the lock.
#[derive(Debug)]
pub struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// The locked file (to check it, or to keep it across a re-exec).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The lock's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        // Closing the fd would release it too, unless it was duplicated
        // (a forked child); unlocking says what is meant.
        // SAFETY: flock on an fd we own.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A process holding a lock, as `/proc/locks` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid, in this process's pid namespace.
    pub pid: u32,
    /// Its command (`/proc/<pid>/comm`), when it can still be read.
    pub comm: Option<String>,
}

/// Why [`lock_exclusive`] returned without the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone held the lock for the whole wait.
    #[error("{}", timed_out_message(path, *waited, holders))]
    TimedOut {
        /// The lock file.
        path: PathBuf,
        /// How long nsbypass waited.
        waited: Duration,
        /// Who holds it, from `/proc/locks` (empty when not found).
        holders: Vec<Holder>,
    },
    /// Opening or locking failed for another reason.
    #[error(transparent)]
    Failed(#[from] Error),
}

fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        if d.subsec_millis() == 0 {
            format!("{} s", d.as_secs())
        } else {
            format!("{:.1} s", d.as_secs_f64())
        }
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn timed_out_message(path: &Path, waited: Duration, holders: &[Holder]) -> String {
    let who = if holders.is_empty() {
        "held by another process (not found in /proc/locks)".to_owned()
    } else {
        let list: Vec<String> = holders
            .iter()
            .map(|h| match &h.comm {
                Some(comm) => format!("pid {} ({comm})", h.pid),
                None => format!("pid {}", h.pid),
            })
            .collect();
        format!("held by {}", list.join(", "))
    };
    format!(
        "lock {}: {who} for more than {}; nsbypass gave up well inside the runtime's hook timeout",
        path.display(),
        human(waited)
    )
}

/// Serialises the signal juggling below between threads of one process.
static ALARM: Mutex<()> = Mutex::new(());

extern "C" fn wake(_: libc::c_int) {}

/// A SIGALRM timer aimed at the calling thread, with a no-op handler
/// installed without `SA_RESTART` so a blocking `flock` returns EINTR.
/// Dropping it deletes the timer, then restores the handler and the
/// thread's signal mask.
struct Alarm {
    /// `None` until created. (Not a null check: glibc's `timer_t` is the
    /// kernel's timer id, and the first one is 0.)
    timer: Option<libc::timer_t>,
    old_action: nix::sys::signal::SigAction,
    old_mask: nix::sys::signal::SigSet,
}

impl Alarm {
    /// Fires first after `first`, then every `every` (so a signal that
    /// lands just before the thread enters `flock` is followed by another).
    fn arm(first: Duration, every: Duration) -> io::Result<Alarm> {
        use nix::sys::signal::{
            pthread_sigmask, sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
        };
        let action = SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, so it is async-signal-safe.
        let old_action = unsafe { sigaction(Signal::SIGALRM, &action) }?;
        let mut set = SigSet::empty();
        set.add(Signal::SIGALRM);
        let mut old_mask = SigSet::empty();
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&set), Some(&mut old_mask)) {
            // SAFETY: puts back what was there.
            let _ = unsafe { sigaction(Signal::SIGALRM, &old_action) };
            return Err(e.into());
        }
        let mut alarm = Alarm {
            timer: None,
            old_action,
            old_mask,
        };
        // SAFETY: sigevent is plain data; all-zero is a valid start.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = libc::SIGALRM;
        // SAFETY: gettid has no preconditions.
        event.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid pointers to an initialised sigevent and a timer_t.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) } != 0 {
            return Err(io::Error::last_os_error()); // Drop restores the rest.
        }
        alarm.timer = Some(timer);
        let spec = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let times = libc::itimerspec {
            it_interval: spec(every),
            // A zero value would disarm the timer instead.
            it_value: spec(first.max(Duration::from_nanos(1))),
        };
        // SAFETY: a timer we just created and a valid itimerspec.
        if unsafe { libc::timer_settime(timer, 0, &times, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error()); // Drop cleans up.
        }
        Ok(alarm)
    }

    fn restore(&mut self) {
        use nix::sys::signal::{pthread_sigmask, sigaction, SigmaskHow, Signal};
        if let Some(timer) = self.timer.take() {
            // SAFETY: a timer we created and have not deleted. Once this
            // returns, no more signals come; one already sent was delivered
            // to `wake` on the way back from the syscall, since SIGALRM is
            // unblocked here.
            unsafe { libc::timer_delete(timer) };
        }
        // SAFETY: puts back the handler that was there before.
        let _ = unsafe { sigaction(Signal::SIGALRM, &self.old_action) };
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Takes `flock(LOCK_EX)` on `file` (whose path is `path`, for messages),
/// waiting at most `timeout`.
///
/// Waiting forever let any process holding the lock stall every hook past
/// the runtime's hook timeout. The wait is a plain blocking `flock`
/// interrupted by a SIGALRM timer aimed at this thread (`timer_create`
/// with `SIGEV_THREAD_ID`, so neither a caller's `alarm`/`setitimer` nor
/// other threads are affected); the previous SIGALRM handler and the
/// thread's signal mask are restored before this returns. While it waits,
/// a SIGALRM from elsewhere only wakes the wait early. On timeout the
/// error names the holder(s) from `/proc/locks`.
pub fn lock_exclusive(
    file: File,
    path: &Path,
    timeout: Duration,
) -> std::result::Result<LockGuard, LockError> {
    let op = || format!("lock {}", path.display());
    let fd = file.as_raw_fd();
    let guard = |file| {
        Ok(LockGuard {
            file,
            path: path.to_owned(),
        })
    };
    // SAFETY: flock on an fd we own.
    match Errno::result(unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => return guard(file),
        Err(Errno::EWOULDBLOCK | Errno::EINTR) => {}
        Err(e) => return Err(os(op(), e).into()),
    }
    if !timeout.is_zero() {
        let started = Instant::now();
        let _one_at_a_time = ALARM.lock().unwrap_or_else(|p| p.into_inner());
        let left = timeout.saturating_sub(started.elapsed());
        let alarm = Alarm::arm(left, Duration::from_millis(20))
            .map_err(|e| Error::new(format!("{}: arm a timer", op()), e))?;
        loop {
            // SAFETY: flock on an fd we own.
            match Errno::result(unsafe { libc::flock(fd, libc::LOCK_EX) }) {
                Ok(_) => {
                    drop(alarm);
                    return guard(file);
                }
                Err(Errno::EINTR) if started.elapsed() < timeout => continue,
                Err(Errno::EINTR) => break,
                Err(e) => return Err(os(op(), e).into()),
            }
        }
        drop(alarm);
    }
    let holders = holders_of(&file);
    Err(LockError::TimedOut {
        path: path.to_owned(),
        waited: timeout,
        holders,
    })
}

/// Who holds a lock on the file `file` is open on, from `/proc/locks`.
fn holders_of(file: &File) -> Vec<Holder> {
    let Ok(st) = fstat(file) else {
        return Vec::new();
    };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else {
        return Vec::new();
    };
    let (major, minor) = (
        nix::sys::stat::major(st.st_dev),
        nix::sys::stat::minor(st.st_dev),
    );
    let held: Vec<(u32, u64, u64, u64)> = locks.lines().filter_map(parse_lock_line).collect();
    let mut pids: Vec<u32> = held
        .iter()
        .filter(|&&(_, ma, mi, ino)| (ma, mi, ino) == (major, minor, st.st_ino))
        .map(|&(pid, ..)| pid)
        .collect();
    if pids.is_empty() {
        // Some filesystems (btrfs subvolumes) report another device in
        // stat than the superblock's that /proc/locks prints.
        pids = held
            .iter()
            .filter(|&&(_, _, _, ino)| ino == st.st_ino)
            .map(|&(pid, ..)| pid)
            .collect();
    }
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        // 0: a holder outside this pid namespace.
        .filter(|&pid| pid != 0)
        .map(|pid| Holder {
            pid,
            comm: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|c| c.trim_end().to_owned()),
        })
        .collect()
}

/// A held FLOCK line of `/proc/locks` (`1: FLOCK  ADVISORY  WRITE 1234
/// 00:1a:5678 0 EOF`) as (pid, major, minor, inode); waiters (`1: -> ...`)
/// and other lock kinds are `None`.
fn parse_lock_line(line: &str) -> Option<(u32, u64, u64, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 6 || fields[1] != "FLOCK" {
        return None;
    }
    let pid = fields[4].parse().ok()?;
    let mut id = fields[5].split(':');
    let major = u64::from_str_radix(id.next()?, 16).ok()?;
    let minor = u64::from_str_radix(id.next()?, 16).ok()?;
    let inode = id.next()?.parse().ok()?;
    Some((pid, major, minor, inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};

    /// Cases that chown to another user need root; the rest run anywhere.
    fn skip_unless_root(why: &str) -> bool {
        let euid = geteuid().as_raw();
        if euid != 0 {
            eprintln!("skipping: needs root to {why} (euid is {euid})");
        }
        euid != 0
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A private temporary directory. tempfile leaves its mode to the
    /// umask, which one test sets to 000 while others run.
    fn top() -> tempfile::TempDir {
        let top = tempfile::TempDir::new().unwrap();
        chmod(top.path(), 0o700);
        top
    }

    /// A temporary directory with a state root `state` in it, and its
    /// scratch directory `state/tmp`.
    fn state() -> (tempfile::TempDir, Dir, Dir) {
        let top = top();
        let root = Dir::open_root(&top.path().join("state")).unwrap();
        let scratch = root.subdir("tmp").unwrap();
        (top, root, scratch)
    }

    /// A file outside the state directory that no link may lead to.
    fn victim(top: &Path) -> PathBuf {
        let outside = top.join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let victim = outside.join("victim");
        std::fs::write(&victim, "keep").unwrap();
        chmod(&victim, 0o644);
        victim
    }

    fn untouched(victim: &Path) {
        assert_eq!(std::fs::read_to_string(victim).unwrap(), "keep");
        assert_eq!(mode(victim), 0o644);
        let dir = victim.parent().unwrap();
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            1,
            "nothing created next to {}",
            victim.display()
        );
    }

    // The only test that changes the umask (process-wide, and tests run in
    // threads): every other test is umask-independent by design, so it
    // does not matter that they may run under umask 000 meanwhile.
    #[test]
    fn modes_are_exact_whatever_the_umask() {
        // 0o277 also strips the owner's write bit, which the fchmod fixes.
        for umask in [0o000, 0o277] {
            let old = nix::sys::stat::umask(Mode::from_bits_truncate(umask));
            let result = std::panic::catch_unwind(|| {
                let (top, root, scratch) = state();
                assert_eq!(mode(&top.path().join("state")), 0o700, "umask {umask:o}");
                let sub = root.subdir("leases").unwrap().subdir("net0").unwrap();
                assert_eq!(mode(&top.path().join("state/leases")), 0o700);
                assert_eq!(mode(&top.path().join("state/leases/net0")), 0o700);
                assert_eq!(mode(&top.path().join("state/tmp")), 0o700);
                assert!(sub.create_new("10.0.0.2", b"a", &scratch).unwrap());
                assert_eq!(mode(&top.path().join("state/leases/net0/10.0.0.2")), 0o600);
                assert!(sub
                    .create_new_via(OsStr::new("10.0.0.3"), b"a", &scratch)
                    .unwrap());
                assert_eq!(mode(&top.path().join("state/leases/net0/10.0.0.3")), 0o600);
                root.replace("record.json", b"{}", &scratch).unwrap();
                assert_eq!(mode(&top.path().join("state/record.json")), 0o600);
                root.open_lock("lock").unwrap();
                assert_eq!(mode(&top.path().join("state/lock")), 0o600);
            });
            nix::sys::stat::umask(old);
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
    }

    #[test]
    fn parents_writable_by_others_are_refused_and_sticky_ones_accepted() {
        let top = top();
        let open = top.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let e = Dir::open_root(&open.join("state")).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "state_dir {0}/state: parent {0} is writable by others (mode 0777); use a directory only root can write",
                open.display()
            )
        );
        assert!(!open.join("state").exists(), "nothing created");

        chmod(&open, 0o775);
        let e = Dir::open_root(&open.join("state")).unwrap_err().to_string();
        assert!(e.contains("writable by group (mode 0775)"), "{e}");

        // Deeper: a wide-open grandparent is refused too.
        chmod(&open, 0o777);
        std::fs::create_dir(open.join("inner")).unwrap();
        chmod(&open.join("inner"), 0o755);
        let e = Dir::open_root(&open.join("inner/state"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("parent {} is writable by others", open.display())),
            "{e}"
        );

        // Sticky, like /tmp: others cannot replace what is ours.
        chmod(&open, 0o1777);
        let root = Dir::open_root(&open.join("state")).unwrap();
        assert_eq!(root.path(), open.join("state"));
        assert_eq!(mode(&open.join("state")), 0o700);
        // Opening again finds the same directory.
        Dir::open_root(&open.join("state")).unwrap();
    }

    #[test]
    fn the_root_itself_must_be_a_private_real_directory() {
        let top = top();
        let e = Dir::open_root(Path::new("run/nsbypass"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an absolute path"), "{e}");
        let e = Dir::open_root(&top.path().join("missing/state"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot resolve its parent"), "{e}");

        // A link to a real directory is not followed.
        let real = top.path().join("real");
        std::fs::create_dir(&real).unwrap();
        chmod(&real, 0o700);
        symlink(&real, top.path().join("state")).unwrap();
        let e = Dir::open_root(&top.path().join("state"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("it is a symlink; nsbypass never follows links"),
            "{e}"
        );
        // A dangling one neither.
        symlink(top.path().join("nowhere"), top.path().join("dangling")).unwrap();
        let e = Dir::open_root(&top.path().join("dangling"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is a symlink"), "{e}");
        assert!(!top.path().join("nowhere").exists());

        std::fs::write(top.path().join("file"), "").unwrap();
        let e = Dir::open_root(&top.path().join("file"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("it is a regular file, not a directory"), "{e}");

        let wide = top.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        chmod(&wide, 0o757);
        let e = Dir::open_root(&wide).unwrap_err().to_string();
        assert!(
            e.contains("writable by others (mode 0757); chmod 0700 it"),
            "{e}"
        );

        // Links in the parent are resolved first (/var/run -> /run).
        symlink(&real, top.path().join("var-run")).unwrap();
        let root = Dir::open_root(&top.path().join("var-run/nsbypass")).unwrap();
        let canonical = std::fs::canonicalize(&real).unwrap().join("nsbypass");
        assert_eq!(root.path(), canonical);
        assert!(real.join("nsbypass").is_dir());
    }

    #[test]
    fn entries_owned_by_someone_else_are_refused() {
        if skip_unless_root("chown test directories to another user") {
            return;
        }
        let nobody = Some(65534);
        let top = top();
        let theirs = top.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chmod(&theirs, 0o755);
        lchown(&theirs, nobody, nobody).unwrap();
        let e = Dir::open_root(&theirs.join("state"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "parent {} is owned by uid 65534, not by root",
                theirs.display()
            )),
            "{e}"
        );
        let e = Dir::open_root(&theirs).unwrap_err().to_string();
        assert!(e.contains("it is owned by uid 65534, not by uid 0"), "{e}");

        let (top, root, _) = state();
        let state = top.path().join("state");
        std::fs::create_dir(state.join("leases")).unwrap();
        lchown(state.join("leases"), nobody, nobody).unwrap();
        for e in [
            root.subdir("leases").unwrap_err(),
            root.subdir_if_exists("leases").unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(e.contains("leases: it is owned by uid 65534"), "{e}");
        }
        std::fs::write(state.join("record.json"), "{}").unwrap();
        lchown(state.join("record.json"), nobody, nobody).unwrap();
        let e = root.read("record.json", 100).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        std::fs::write(state.join("lock"), "").unwrap();
        lchown(state.join("lock"), nobody, nobody).unwrap();
        let e = root.open_lock("lock").unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn planted_symlinks_are_refused_or_removed_as_links() {
        let (top, root, scratch) = state();
        let state = top.path().join("state");
        let victim = victim(top.path());
        let outside = victim.parent().unwrap().to_owned();

        // Directories: containers/, netns/, leases/<net>/ ...
        symlink(&outside, state.join("containers")).unwrap();
        let e = root.subdir("containers").unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "open {}/containers: it is a symlink; nsbypass never follows links in its state directory (remove it)",
                state.display()
            )
        );
        let e = root.subdir_if_exists("containers").unwrap_err().to_string();
        assert!(e.contains("is a symlink"), "{e}");
        assert!(root
            .remove_dir("containers")
            .unwrap_err()
            .to_string()
            .contains("is a symlink"));
        // ... also dangling ones: mkdir must not create the target.
        symlink(outside.join("made"), state.join("netns")).unwrap();
        assert!(root
            .subdir("netns")
            .unwrap_err()
            .to_string()
            .contains("is a symlink"));
        let leases = root.subdir("leases").unwrap();
        symlink(&outside, state.join("leases/net0")).unwrap();
        assert!(leases
            .subdir("net0")
            .unwrap_err()
            .to_string()
            .contains("is a symlink"));

        // The lock.
        symlink(&victim, state.join("lock")).unwrap();
        let e = root.open_lock("lock").unwrap_err().to_string();
        assert!(e.contains("lock: it is a symlink"), "{e}");

        // Files: read, create, replace, remove.
        symlink(&victim, state.join("a.json")).unwrap();
        let e = root.read("a.json", 100).unwrap_err().to_string();
        assert!(e.contains("a.json: it is a symlink"), "{e}");
        assert!(root.exists("a.json"));
        assert!(!root.create_new("a.json", b"new", &scratch).unwrap());
        assert!(!root
            .create_new_via(OsStr::new("a.json"), b"new", &scratch)
            .unwrap());
        root.replace("a.json", b"new", &scratch).unwrap();
        assert_eq!(root.read("a.json", 100).unwrap().unwrap(), b"new");
        symlink(&victim, state.join("b.json")).unwrap();
        root.remove("b.json").unwrap();
        assert!(!root.exists("b.json"));
        symlink(outside.join("absent"), state.join("dangling")).unwrap();
        assert!(root.exists("dangling"), "a dangling link is an entry too");

        // A leftover temporary name in scratch that is a link.
        let tmp = format!("c.json.{}", std::process::id());
        symlink(&victim, state.join("tmp").join(&tmp)).unwrap();
        root.replace("c.json", b"c", &scratch).unwrap();
        assert_eq!(root.read("c.json", 100).unwrap().unwrap(), b"c");
        assert!(scratch.names().unwrap().is_empty());

        // Sweep removes links as links.
        symlink(&victim, state.join("tmp/x")).unwrap();
        symlink(&outside, state.join("tmp/y")).unwrap();
        assert_eq!(scratch.sweep().unwrap(), 2);
        assert!(scratch.names().unwrap().is_empty());

        untouched(&victim);
        assert!(!outside.join("made").exists());
    }

    #[test]
    fn subdirectories_are_tightened_and_checked() {
        let (top, root, _) = state();
        let state = top.path().join("state");
        // An older version made them under the caller's umask.
        std::fs::create_dir(state.join("containers")).unwrap();
        chmod(&state.join("containers"), 0o777);
        let containers = root.subdir("containers").unwrap();
        assert_eq!(mode(&state.join("containers")), 0o700);
        assert_eq!(containers.path(), state.join("containers"));
        chmod(&state.join("containers"), 0o755);
        root.subdir_if_exists("containers").unwrap().unwrap();
        assert_eq!(mode(&state.join("containers")), 0o700);
        assert!(root.subdir_if_exists("netns").unwrap().is_none());
        assert!(!state.join("netns").exists(), "readers create nothing");

        std::fs::write(state.join("plain"), "").unwrap();
        let e = root.subdir("plain").unwrap_err().to_string();
        assert!(
            e.contains("plain: it is a regular file, not a directory"),
            "{e}"
        );

        for bad in ["", ".", "..", "a/b", "/etc", "a\0b"] {
            let e = root.subdir(bad).unwrap_err().to_string();
            assert!(e.contains("not a single file name"), "{bad:?}: {e}");
            assert!(root.read(bad, 10).is_err());
            assert!(root.remove(bad).is_err());
            assert!(!root.exists(bad));
        }

        // remove_dir: empty goes, non-empty stays, absent is fine.
        let net = root.subdir("net0").unwrap();
        std::fs::write(state.join("net0/10.0.0.2"), "").unwrap();
        assert!(!root.remove_dir("net0").unwrap());
        net.remove("10.0.0.2").unwrap();
        net.remove("10.0.0.2").unwrap();
        assert!(root.remove_dir("net0").unwrap());
        assert!(root.remove_dir("net0").unwrap());
        assert!(!state.join("net0").exists());
    }

    #[test]
    fn reads_only_small_regular_files_and_never_blocks() {
        let (top, root, scratch) = state();
        let state = top.path().join("state");
        assert_eq!(root.read("none", 10).unwrap(), None);
        root.replace("r.json", b"12345", &scratch).unwrap();
        assert_eq!(root.read("r.json", 5).unwrap().unwrap(), b"12345");
        let e = root.read("r.json", 4).unwrap_err().to_string();
        assert!(e.contains("larger than 4 bytes"), "{e}");
        nix::unistd::mkfifo(&state.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = root.read("fifo", 10).unwrap_err().to_string();
        assert!(e.contains("it is a FIFO, not a regular file"), "{e}");
        let e = root.read("tmp", 10).unwrap_err().to_string();
        assert!(e.contains("it is a directory, not a regular file"), "{e}");
        assert_eq!(
            root.names().unwrap(),
            ["fifo", "r.json", "tmp"].map(OsString::from)
        );
    }

    #[test]
    fn create_new_is_exclusive_and_leaves_no_temporary() {
        let (_top, root, scratch) = state();
        let net = root.subdir("leases").unwrap().subdir("net0").unwrap();
        assert!(net.create_new("10.0.0.2", b"first", &scratch).unwrap());
        assert!(!net.create_new("10.0.0.2", b"second", &scratch).unwrap());
        assert_eq!(net.read("10.0.0.2", 100).unwrap().unwrap(), b"first");
        // The path for filesystems without O_TMPFILE.
        assert!(net
            .create_new_via(OsStr::new("10.0.0.3"), b"third", &scratch)
            .unwrap());
        assert!(!net
            .create_new_via(OsStr::new("10.0.0.3"), b"x", &scratch)
            .unwrap());
        assert_eq!(net.read("10.0.0.3", 100).unwrap().unwrap(), b"third");
        assert_eq!(
            net.names().unwrap(),
            ["10.0.0.2", "10.0.0.3"].map(OsString::from)
        );
        assert!(scratch.names().unwrap().is_empty());
    }

    #[test]
    fn replace_leaves_no_temporary_and_nothing_on_failure() {
        let (top, root, scratch) = state();
        let state = top.path().join("state");
        root.replace("r.json", b"old", &scratch).unwrap();
        root.replace("r.json", b"new", &scratch).unwrap();
        assert_eq!(root.read("r.json", 100).unwrap().unwrap(), b"new");
        assert!(scratch.names().unwrap().is_empty());
        // Renaming a file over a directory fails: the temporary goes.
        std::fs::create_dir(state.join("d.json")).unwrap();
        root.replace("d.json", b"x", &scratch).unwrap_err();
        assert!(scratch.names().unwrap().is_empty());
        assert!(state.join("d.json").is_dir());
    }

    #[test]
    fn sweep_removes_leftovers_but_not_directories() {
        let (top, _root, scratch) = state();
        let tmp = top.path().join("state/tmp");
        std::fs::write(tmp.join("a.json.4242"), "").unwrap();
        std::fs::write(tmp.join(".10.0.0.2.4242.1"), "").unwrap();
        nix::unistd::mkfifo(&tmp.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(tmp.join("sub")).unwrap();
        assert_eq!(scratch.sweep().unwrap(), 3);
        assert_eq!(scratch.names().unwrap(), ["sub"].map(OsString::from));
        assert_eq!(scratch.sweep().unwrap(), 0);
    }

    #[test]
    fn the_lock_file_is_ours_and_0600() {
        let (top, root, _) = state();
        let lock = top.path().join("state/lock");
        std::fs::write(&lock, "").unwrap();
        chmod(&lock, 0o644);
        root.open_lock("lock").unwrap();
        assert_eq!(mode(&lock), 0o600);
        std::fs::hard_link(&lock, top.path().join("state/other")).unwrap();
        let e = root.open_lock("lock").unwrap_err().to_string();
        assert!(e.contains("it has 2 hard links"), "{e}");
        std::fs::remove_file(top.path().join("state/other")).unwrap();
        std::fs::remove_file(&lock).unwrap();
        std::fs::create_dir(&lock).unwrap();
        let e = root.open_lock("lock").unwrap_err().to_string();
        assert!(e.contains("lock"), "{e}");
    }

    /// The SIGALRM disposition, without changing it.
    fn sigalrm_handler() -> libc::sighandler_t {
        // SAFETY: a query only (no new action).
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            assert_eq!(
                libc::sigaction(libc::SIGALRM, std::ptr::null(), &mut old),
                0
            );
            old.sa_sigaction
        }
    }

    #[test]
    fn the_lock_wait_gives_up_and_names_the_holder() {
        let (top, root, _) = state();
        let path = top.path().join("state/lock");
        let before = sigalrm_handler();
        // flock locks belong to open file descriptions: two opens in one
        // process contend like two processes.
        let held = root.lock("lock", Duration::from_secs(1)).unwrap();
        assert_eq!(held.path(), path);
        let second = root.open_lock("lock").unwrap();
        let started = Instant::now();
        let e = lock_exclusive(second, &path, Duration::from_millis(200)).unwrap_err();
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(190) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        let LockError::TimedOut { ref holders, .. } = e else {
            panic!("{e}");
        };
        assert_eq!(holders.first().map(|h| h.pid), Some(std::process::id()));
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "lock {}: held by pid {} ({}) for more than 200 ms; nsbypass gave up well inside the runtime's hook timeout",
                path.display(),
                std::process::id(),
                comm.trim_end()
            )
        );
        assert_eq!(sigalrm_handler(), before, "SIGALRM handler restored");
        // A timer left running would now kill the process (SIG_DFL).
        std::thread::sleep(Duration::from_millis(100));

        // No wait at all.
        let e = root.lock("lock", Duration::ZERO).unwrap_err();
        assert!(matches!(e, LockError::TimedOut { .. }), "{e}");

        // Released: taken at once; and a wait that succeeds mid-way.
        drop(held);
        let held = root.lock("lock", Duration::from_millis(200)).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(held);
        });
        root.lock("lock", Duration::from_secs(5)).unwrap();
        release.join().unwrap();
        assert_eq!(sigalrm_handler(), before, "SIGALRM handler restored");
    }

    #[test]
    fn proc_locks_lines() {
        assert_eq!(
            parse_lock_line("1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF"),
            Some((1234, 0, 0x1a, 5678))
        );
        assert_eq!(
            parse_lock_line("1: -> FLOCK  ADVISORY  WRITE 99 00:1a:5678 0 EOF"),
            None
        );
        assert_eq!(
            parse_lock_line("2: POSIX  ADVISORY  WRITE 77 fd:01:42 0 EOF"),
            None
        );
        assert_eq!(human(Duration::from_secs(5)), "5 s");
        assert_eq!(human(Duration::from_millis(1500)), "1.5 s");
    }

    /// A tiny tmpfs in a mount namespace private to one thread (unshare
    /// `CLONE_NEWNS` affects only the calling thread, and it ends with it).
    fn on_tiny_tmpfs(test: impl FnOnce(&Path) + Send + 'static) {
        std::thread::spawn(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            // Nothing mounted here may propagate to the host.
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            let top = top();
            mount(
                Some("tmpfs"),
                top.path(),
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("size=8k,mode=0700"),
            )
            .unwrap();
            test(top.path());
            nix::mount::umount(top.path()).unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn enospc_while_writing_leaves_nothing_behind() {
        if skip_unless_root("mount a tiny tmpfs in a private mount namespace") {
            return;
        }
        on_tiny_tmpfs(|top| {
            let root = Dir::open_root(&top.join("state")).unwrap();
            let scratch = root.subdir("tmp").unwrap();
            let net = root.subdir("net0").unwrap();
            root.replace("r.json", b"old", &scratch).unwrap();
            let big = vec![b'x'; 64 << 10];
            for e in [
                net.create_new("10.0.0.2", &big, &scratch).unwrap_err(),
                net.create_new_via(OsStr::new("10.0.0.3"), &big, &scratch)
                    .unwrap_err(),
                root.replace("r.json", &big, &scratch).unwrap_err(),
            ] {
                assert_eq!(e.errno(), Some(libc::ENOSPC), "{e}");
            }
            assert!(net.names().unwrap().is_empty());
            assert!(scratch.names().unwrap().is_empty());
            assert_eq!(root.read("r.json", 100).unwrap().unwrap(), b"old");
            // And the space came back.
            assert!(net.create_new("10.0.0.2", b"small", &scratch).unwrap());
        });
    }
}
