//! Where each profile target lands in a container's rootfs, checked before
//! anything is mounted, and what has to be made for the targets the image
//! lacks.
//!
//! Every target (and `/etc/ld.so.preload`) is resolved to its canonical
//! place in the image, so that two spellings of one place (Debian's
//! `/lib -> usr/lib`) are caught as one target, and a target inside
//! another's mounted directory is caught however it is spelled. A target
//! on a mount that propagates (an rshared volume, a shared rootfs) is
//! refused: a bind there would reach the host and outlive the container.
//!
//! A missing target is never created in the image: it gets a *room*, an
//! overlay of its nearest existing directory on a fresh tmpfs, made inside
//! the container's mount namespace, which dies with it. Entries are made
//! directly only where they cannot reach an image: on a filesystem that
//! exists in the container alone (runc's `/dev` tmpfs), and on a rootfs
//! that is an overlayfs, the container's own writable layer, when the spec
//! does not make it read-only. A missing target on a volume is refused: an
//! overlay there would take the container's writes away from the volume.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::stat::{fstat, SFlag};
use nsutil::mountinfo::{self, MountEntry};
use nsutil::rootfs::{is_pseudo_fs, Canonical, Rootfs, TargetKind};

use super::SourceKind;
use crate::failure::{Failure, Refusal, Step};

/// Where the composed preload list is bound.
pub const PRELOAD: &str = "/etc/ld.so.preload";

/// One thing to bind, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Index into the plan's sources; the preload file is `sources.len()`.
    pub source: usize,
    /// Its canonical place in the rootfs.
    pub target: PathBuf,
    pub kind: TargetKind,
}

/// Entries to make below one existing directory of the rootfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Room {
    /// The directory, canonical.
    pub anchor: PathBuf,
    /// Paths relative to it, with what each must be; parents are made as
    /// needed.
    pub entries: Vec<(PathBuf, TargetKind)>,
    /// Symlinks to make (relative path, link text), after the entries.
    pub links: Vec<(PathBuf, PathBuf)>,
    /// On an overlay (the directory is the image's or a volume's), or
    /// directly (its filesystem is the container's alone).
    pub overlay: bool,
}

/// What carrying the plan in makes, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub rooms: Vec<Room>,
    pub binds: Vec<Placed>,
}

/// One target before layout: who asked for it, where, as what.
pub struct Wanted<'a> {
    pub source: usize,
    pub profile: &'a str,
    /// As the admin wrote it, for messages.
    pub target: &'a Path,
    pub kind: TargetKind,
    /// The host source and its kind: the same thing wanted twice is one bind.
    pub host: &'a Path,
    pub source_kind: Option<SourceKind>,
    /// A symlink to make, reading this, rather than a bind.
    pub link: Option<&'a Path>,
}

/// The mount tables layout consults.
pub struct Tables {
    /// The container's (`/proc/<pid>/mountinfo`).
    pub container: Vec<MountEntry>,
    /// Filesystems mounted in the hook's own mount namespace.
    pub host_devices: HashSet<(u32, u32)>,
    /// The mount the rootfs itself is (the image's).
    pub rootfs_mount: u64,
    /// The spec's `root.readonly`: nothing may be written there.
    pub readonly: bool,
}

/// Whether `fd` lies on an overlayfs.
fn is_overlayfs(fd: &OwnedFd) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    nix::sys::statfs::fstatfs(fd).is_ok_and(|fs| fs.filesystem_type().0 == OVERLAYFS_SUPER_MAGIC)
}

/// Resolves and checks every target; touches nothing.
pub fn layout(wanted: &[Wanted], root: &Rootfs, tables: &Tables) -> Result<Layout, Failure> {
    let mut resolved: Vec<(&Wanted, Canonical)> = Vec::new();
    // Links the image has already, exactly as wanted.
    let mut present: Vec<PathBuf> = Vec::new();
    for want in wanted {
        let fail = |e: nsutil::Error| fail(want, Step::Mount, e);
        let canonical = match want.link {
            None => root.canonical(want.target).map_err(fail)?,
            // The link itself is looked at, never followed.
            Some(text) => {
                let (Some(parent), Some(name)) = (want.target.parent(), want.target.file_name())
                else {
                    return Err(fail(nsutil::Error::new(
                        "link",
                        std::io::Error::other("no name"),
                    )));
                };
                let mut canonical = root.canonical(parent).map_err(fail)?;
                if canonical.exists() && image_link(root, &canonical.existing, name, text, want)? {
                    present.push(canonical.existing.join(name));
                }
                canonical.missing.push(name.to_owned());
                canonical
            }
        };
        resolved.push((want, canonical));
    }
    check_aliases(&resolved)?;

    let mut layout = Layout::default();
    let mut seen: Vec<PathBuf> = Vec::new();
    for (want, canonical) in &resolved {
        let path = canonical.path();
        if seen.contains(&path) {
            continue; // the same thing twice (check_aliases made sure)
        }
        seen.push(path.clone());
        let fail = |message: String| fail(want, Step::Mount, Refusal(message));
        // Kernel interfaces live there (under cgroup v1 runc's
        // /sys/fs/cgroup is a tmpfs, so the filesystem check alone would
        // not say so).
        if path.starts_with("/proc") || path.starts_with("/sys") {
            return Err(fail(format!(
                "{} leads into {} (in the image: {}), where nsbypass mounts nothing",
                want.target.display(),
                if path.starts_with("/proc") {
                    "/proc"
                } else {
                    "/sys"
                },
                path.display()
            )));
        }
        let at = root
            .open_plain(&canonical.existing)
            .map_err(|e| fail(e.to_string()))?;
        if is_pseudo_fs(&at) {
            return Err(fail(format!(
                "{} leads into a kernel filesystem (/proc, /sys, cgroup, ...)",
                want.target.display()
            )));
        }
        check_propagation(want, &at, &tables.container)?;
        if present.contains(&path) {
            continue; // the image's own link, the same
        }
        if canonical.exists() {
            check_kind(want, &at)?;
        } else {
            let stat = fstat(&at).map_err(|e| fail(std::io::Error::from(e).to_string()))?;
            let dev = (
                nix::sys::stat::major(stat.st_dev) as u32,
                nix::sys::stat::minor(stat.st_dev) as u32,
            );
            // A filesystem only the container has (runc's /dev tmpfs) dies
            // with it: entries are made there directly.
            let private = !tables.host_devices.contains(&dev);
            // An overlay of a volume would take the container's writes to
            // it (and the user's data) onto a tmpfs: only the image's own
            // directories get one.
            let on_image = mountinfo::mount_id(at.as_fd()).map_err(|e| fail(e.to_string()))?
                == tables.rootfs_mount;
            // A rootfs that is an overlayfs is the container's own writable
            // layer (podman, docker, containerd): mount points made there
            // stay out of the image, as the runtime's own do, and the
            // container's writes to that directory keep reaching its layer.
            // Unless the spec makes the rootfs read-only.
            let own_layer = on_image && !tables.readonly && is_overlayfs(&at);
            let overlay = !private && !own_layer;
            if overlay && !on_image {
                return Err(fail(format!(
                    "the image lacks {}, and it would go on a volume or other mount ({}), which nsbypass neither writes nor overlays; mount the file there yourself or choose a target in the image",
                    path.display(),
                    canonical.existing.display()
                )));
            }
            if overlay && canonical.existing == Path::new("/") {
                return Err(fail(format!(
                    "the image lacks /{}; nsbypass does not overlay an image's root directory (give the image that directory, or choose a target below one it has)",
                    canonical.missing[0].to_string_lossy()
                )));
            }
            add_room(&mut layout.rooms, canonical, want.kind, want.link, overlay);
        }
        if want.link.is_some() {
            continue;
        }
        layout.binds.push(Placed {
            source: want.source,
            target: path,
            kind: want.kind,
        });
    }
    Ok(layout)
}

/// Whether the image has `name` in its directory `dir` already as a
/// symlink reading `text` (then nothing is made); `false` if it has
/// nothing there; refused if it has anything else.
fn image_link(
    root: &Rootfs,
    dir: &Path,
    name: &std::ffi::OsStr,
    text: &Path,
    want: &Wanted,
) -> Result<bool, Failure> {
    let fail = |message: String| fail(want, Step::Mount, Refusal(message));
    let at = root.open_plain(dir).map_err(|e| fail(e.to_string()))?;
    match nix::sys::stat::fstatat(&at, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(fail(format!("{}: {}", want.target.display(), std::io::Error::from(e)))),
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK => {
            let has = nix::fcntl::readlinkat(&at, name).map_err(|e| {
                fail(format!("{}: {}", want.target.display(), std::io::Error::from(e)))
            })?;
            if Path::new(&has) == text {
                return Ok(true);
            }
            Err(fail(format!(
                "{}: the image has a link to {} there, where the profile makes one to {}",
                want.target.display(),
                Path::new(&has).display(),
                text.display()
            )))
        }
        Ok(_) => Err(fail(format!(
            "{}: the image has a file there, where the profile makes a link to {} (the host's is a link)",
            want.target.display(),
            text.display()
        ))),
    }
}

fn fail(want: &Wanted, step: Step, cause: impl Into<crate::failure::Cause>) -> Failure {
    if want.profile.is_empty() {
        Failure::new(Step::Preload, cause)
    } else {
        Failure::profile(step, want.profile, cause)
    }
}

/// Two spellings of one place, and targets inside another's mounted
/// directory, compared by canonical path.
fn check_aliases(resolved: &[(&Wanted, Canonical)]) -> Result<(), Failure> {
    for (i, (a, ca)) in resolved.iter().enumerate() {
        let pa = ca.path();
        for (b, cb) in &resolved[i + 1..] {
            let pb = cb.path();
            let same_thing = a.host == b.host && a.source_kind == b.source_kind;
            if pa == pb && !same_thing {
                let message = if a.target == b.target {
                    format!("{} is wanted twice", a.target.display())
                } else {
                    format!(
                        "{} and {} are one place in the image ({}): the mounts would stack",
                        a.target.display(),
                        b.target.display(),
                        pa.display()
                    )
                };
                return Err(fail(b, Step::Validate, Refusal(message)));
            }
            for ((outer, po), (inner, pi)) in [((a, &pa), (b, &pb)), ((b, &pb), (a, &pa))] {
                if outer.kind == TargetKind::Dir && pi != po && pi.starts_with(po) {
                    return Err(fail(
                        inner,
                        Step::Validate,
                        Refusal(format!(
                            "{} would be hidden under the mount on {}{}",
                            inner.target.display(),
                            outer.target.display(),
                            if *pi == inner.target && *po == outer.target {
                                String::new()
                            } else {
                                format!(" (in the image: {} in {})", pi.display(), po.display())
                            }
                        )),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A bind attached on a shared mount is copied to every peer of that
/// mount, the host's mounts included, and stays there after the container
/// is gone (an image link into a bidirectional volume, or a rootfs with
/// shared propagation). Refused, before anything is made.
fn check_propagation(want: &Wanted, at: &OwnedFd, table: &[MountEntry]) -> Result<(), Failure> {
    let id = mountinfo::mount_id(at.as_fd()).map_err(|e| fail(want, Step::Mount, e))?;
    let Some(mount) = table.iter().find(|m| m.id == id) else {
        return Err(fail(
            want,
            Step::Mount,
            Refusal(format!(
                "{}: its mount is not in the container's mount table",
                want.target.display()
            )),
        ));
    };
    if let Some(group) = mount.shared {
        return Err(fail(
            want,
            Step::Mount,
            Refusal(format!(
                "{} lies on {}, a mount with shared propagation (peer group {group}): a mount there would reach the host; nsbypass mounts only where nothing propagates",
                want.target.display(),
                mount.point.display()
            )),
        ));
    }
    Ok(())
}

fn check_kind(want: &Wanted, target: &OwnedFd) -> Result<(), Failure> {
    let stat = fstat(target).map_err(|e| fail(want, Step::Mount, std::io::Error::from(e)))?;
    let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
    let fits = match want.kind {
        TargetKind::Dir => format == SFlag::S_IFDIR,
        TargetKind::File => format == SFlag::S_IFREG,
        TargetKind::Device => matches!(format, SFlag::S_IFREG | SFlag::S_IFCHR | SFlag::S_IFBLK),
    };
    if fits {
        return Ok(());
    }
    let kind = match want.kind {
        TargetKind::Dir => "a directory",
        TargetKind::File => "a regular file",
        TargetKind::Device => "a file or device node",
    };
    Err(fail(
        want,
        Step::Mount,
        Refusal(format!(
            "mount onto {}: the image has something other than {kind} there",
            want.target.display()
        )),
    ))
}

/// Adds a missing target to the room of its directory, or of a directory
/// above it that gets a room of the same kind anyway (one overlay, not
/// overlays stacked on overlays).
fn add_room(
    rooms: &mut Vec<Room>,
    target: &Canonical,
    kind: TargetKind,
    link: Option<&Path>,
    overlay: bool,
) {
    let anchor = &target.existing;
    let relative: PathBuf = target.missing.iter().collect();
    let add = |room: &mut Room, path: PathBuf| match link {
        Some(text) => room.links.push((path, text.to_owned())),
        None => room.entries.push((path, kind)),
    };
    if let Some(room) = rooms
        .iter_mut()
        .find(|r| r.overlay == overlay && anchor.starts_with(&r.anchor))
    {
        let below = anchor
            .strip_prefix(&room.anchor)
            .expect("checked")
            .join(&relative);
        add(room, below);
        return;
    }
    // Rooms below this anchor fold into its room.
    let mut room = Room {
        anchor: anchor.clone(),
        entries: Vec::new(),
        links: Vec::new(),
        overlay,
    };
    add(&mut room, relative);
    rooms.retain(|r| {
        if r.overlay == overlay && r.anchor.starts_with(anchor) {
            let below = r.anchor.strip_prefix(anchor).expect("checked");
            room.entries
                .extend(r.entries.iter().map(|(p, k)| (below.join(p), *k)));
            room.links
                .extend(r.links.iter().map(|(p, t)| (below.join(p), t.clone())));
            false
        } else {
            true
        }
    });
    rooms.push(room);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(existing: &str, missing: &[&str]) -> Canonical {
        Canonical {
            existing: existing.into(),
            missing: missing.iter().map(Into::into).collect(),
        }
    }

    #[test]
    fn rooms_fold_into_the_topmost_directory_of_their_kind() {
        let mut rooms = Vec::new();
        add_room(
            &mut rooms,
            &canonical("/usr/lib/x86_64-linux-gnu", &["librte.so"]),
            TargetKind::File,
            None,
            true,
        );
        add_room(
            &mut rooms,
            &canonical("/usr", &["lib64", "libonload.so"]),
            TargetKind::File,
            None,
            true,
        );
        add_room(
            &mut rooms,
            &canonical("/usr/lib", &["nsb", "x.so"]),
            TargetKind::File,
            None,
            true,
        );
        add_room(
            &mut rooms,
            &canonical("/dev", &["onload"]),
            TargetKind::Device,
            None,
            false,
        );
        add_room(
            &mut rooms,
            &canonical("/usr/lib", &["nsb", "x.so.1"]),
            TargetKind::File,
            Some(Path::new("x.so")),
            true,
        );
        assert_eq!(
            rooms,
            [
                Room {
                    anchor: "/usr".into(),
                    entries: vec![
                        ("lib64/libonload.so".into(), TargetKind::File),
                        ("lib/x86_64-linux-gnu/librte.so".into(), TargetKind::File),
                        ("lib/nsb/x.so".into(), TargetKind::File),
                    ],
                    links: vec![("lib/nsb/x.so.1".into(), "x.so".into())],
                    overlay: true,
                },
                Room {
                    anchor: "/dev".into(),
                    entries: vec![("onload".into(), TargetKind::Device)],
                    links: vec![],
                    overlay: false,
                },
            ]
        );
    }

    fn wanted<'a>(source: usize, target: &'a str, kind: TargetKind, host: &'a str) -> Wanted<'a> {
        Wanted {
            source,
            profile: "dpdk",
            target: Path::new(target),
            kind,
            host: Path::new(host),
            source_kind: Some(SourceKind::File),
            link: None,
        }
    }

    #[test]
    fn aliases_and_hidden_targets_are_caught_by_their_place_in_the_image() {
        let a = wanted(
            0,
            "/lib/x86_64-linux-gnu/librte.so",
            TargetKind::File,
            "/h/a",
        );
        let b = wanted(
            1,
            "/usr/lib/x86_64-linux-gnu/librte.so",
            TargetKind::File,
            "/h/b",
        );
        let ca = canonical("/usr/lib/x86_64-linux-gnu", &["librte.so"]);
        let e = check_aliases(&[(&a, ca.clone()), (&b, ca.clone())]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "profile dpdk: validate: /lib/x86_64-linux-gnu/librte.so and /usr/lib/x86_64-linux-gnu/librte.so \
             are one place in the image (/usr/lib/x86_64-linux-gnu/librte.so): the mounts would stack"
        );
        // The same host file wanted twice is one bind, not a clash.
        let same = wanted(
            1,
            "/usr/lib/x86_64-linux-gnu/librte.so",
            TargetKind::File,
            "/h/a",
        );
        check_aliases(&[(&a, ca.clone()), (&same, ca.clone())]).unwrap();

        let dir = wanted(2, "/lib/dpdk", TargetKind::Dir, "/h/dir");
        let inner = wanted(3, "/usr/lib/dpdk/pmd.so", TargetKind::File, "/h/pmd");
        let e = check_aliases(&[
            (&dir, canonical("/usr/lib", &["dpdk"])),
            (&inner, canonical("/usr/lib", &["dpdk", "pmd.so"])),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "profile dpdk: validate: /usr/lib/dpdk/pmd.so would be hidden under the mount on /lib/dpdk \
             (in the image: /usr/lib/dpdk/pmd.so in /usr/lib/dpdk)"
        );
    }
}
