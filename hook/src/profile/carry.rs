//! Carrying a laid-out profile into a container: rooms for the targets the
//! image lacks, the bind mounts, the device grants, each step with its
//! undo.
//!
//! The steps go through the narrow [`Carrier`] trait, so the order and the
//! rollback are tested against a fake that fails any step; [`RealCarrier`]
//! does them with the new mount API inside the container's mount namespace
//! (and the device cgroup from outside it).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nsutil::devices::{Device, DeviceCgroup, Grant};
use nsutil::dir::Dir;
use nsutil::mount::{DetachedMount, Lockdown, MovableMount};
use nsutil::mountinfo;
use nsutil::ns::Mntns;
use nsutil::rootfs::{self, Created, Rootfs, TargetKind};

use super::layout::{self, Layout, Placed, Room, Tables, Wanted, PRELOAD};
use super::{Plan, SourceKind};
use crate::failpoint;
use crate::failure::{Failure, Refusal, Step, StepExt};

/// The most of an image's `/etc/ld.so.preload` that is carried over.
const MAX_PRELOAD_BYTES: u64 = 64 << 10;

/// The changes carrying profiles makes in a container, each returning what
/// undoes it.
pub trait Carrier {
    type Undo;
    /// Makes the room's entries exist (see `layout::Room`). Either all of
    /// it is made, or nothing.
    fn make_room(&mut self, room: &Room) -> Result<Self::Undo, Failure>;
    /// Attaches source `bind.source` onto its target.
    fn bind(&mut self, bind: &Placed) -> Result<Self::Undo, Failure>;
    /// Mounts a fresh bpffs on the container's `/sys/fs/bpf`.
    fn bpffs(&mut self) -> Result<Self::Undo, Failure>;
    /// Lets the container's device cgroup open `devices`.
    fn grant(&mut self, devices: &[Device]) -> Result<Self::Undo, Failure>;
    fn undo(&mut self, undo: Self::Undo) -> Result<(), Failure>;
}

/// Makes every room, then every bind, then the bpffs, then the grant. On
/// failure undoes what was made, newest first, and reports what could not
/// be undone.
pub fn carry<C: Carrier>(
    carrier: &mut C,
    layout: &Layout,
    bpffs: bool,
    devices: &[Device],
) -> Result<Vec<C::Undo>, Failure> {
    let mut done = Vec::new();
    let made = (|| -> Result<(), Failure> {
        for room in &layout.rooms {
            done.push(carrier.make_room(room)?);
        }
        for bind in &layout.binds {
            done.push(carrier.bind(bind)?);
        }
        if bpffs {
            done.push(carrier.bpffs()?);
        }
        if !devices.is_empty() {
            done.push(carrier.grant(devices)?);
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok(done),
        Err(failure) => Err(failure.with_rollback(undo_all(carrier, done))),
    }
}

/// Undoes `done`, newest first, keeping going past failures.
pub fn undo_all<C: Carrier>(carrier: &mut C, done: Vec<C::Undo>) -> Vec<Failure> {
    done.into_iter()
        .rev()
        .filter_map(|undo| carrier.undo(undo).err())
        .collect()
}

/// What carrying did, to undo it should a later step of setup fail.
pub struct Applied {
    carrier: RealCarrier,
    done: Vec<Undo>,
}

impl Applied {
    /// Undoes everything, newest first; keeps going and reports problems.
    pub fn roll_back(mut self) -> Vec<Failure> {
        let done = std::mem::take(&mut self.done);
        undo_all(&mut self.carrier, done)
    }
}

/// Carries `plan` into the container whose init is `pid` and whose rootfs
/// is `rootfs` (a host path); `readonly` is the spec's `root.readonly`.
/// `scratch` holds the composed ld.so.preload until it is bound. On
/// failure everything done is undone.
pub fn apply(
    plan: &Plan,
    pid: i32,
    rootfs: &Path,
    readonly: bool,
    scratch: &Dir,
) -> Result<Applied, Failure> {
    let mntns = Mntns::open(Path::new(&format!("/proc/{pid}/ns/mnt"))).step(Step::OpenRootfs)?;
    if mntns.id() == Mntns::current().step(Step::OpenRootfs)?.id() {
        return Err(Failure::refuse(
            Step::OpenRootfs,
            "the container shares the host's mount namespace; nsbypass will not mount into it",
        ));
    }
    // The container's own view of its rootfs, runc's /dev tmpfs included.
    let through_proc = PathBuf::from(format!("/proc/{pid}/root{}", rootfs.display()));
    let root = Rootfs::open(&through_proc).step(Step::OpenRootfs)?;
    let tables = Tables {
        container: mountinfo::read(&pid.to_string()).step(Step::OpenRootfs)?,
        host_devices: mountinfo::devices(&mountinfo::read("self").step(Step::OpenRootfs)?),
        rootfs_mount: mountinfo::mount_id(root.fd()).step(Step::OpenRootfs)?,
        readonly,
    };

    let mut wanted: Vec<Wanted> = plan
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| Wanted {
            source: i,
            profile: &s.profile,
            target: &s.target,
            kind: match s.kind {
                SourceKind::Device(_) => TargetKind::Device,
                SourceKind::File => TargetKind::File,
                SourceKind::Dir => TargetKind::Dir,
            },
            host: &s.host,
            source_kind: Some(s.kind),
            link: None,
        })
        .collect();
    wanted.extend(plan.links.iter().map(|l| Wanted {
        source: usize::MAX,
        profile: &l.profile,
        target: &l.target,
        kind: TargetKind::File,
        host: &l.host,
        source_kind: None,
        link: Some(&l.text),
    }));
    if !plan.preload.is_empty() {
        wanted.push(Wanted {
            source: plan.sources.len(),
            profile: "",
            target: Path::new(PRELOAD),
            kind: TargetKind::File,
            host: Path::new(""),
            source_kind: None,
            link: None,
        });
    }
    failpoint::hit("profile-target").step(Step::Mount)?;
    let layout = layout::layout(&wanted, &root, &tables)?;

    // Every source as a detached, locked-down clone: nothing is attached
    // yet, so dropping them undoes them.
    let mut clones = Vec::new();
    for source in &plan.sources {
        let on = |e: &dyn std::fmt::Display| {
            Failure::profile(
                Step::Mount,
                &source.profile,
                Refusal(format!("{}: {e}", source.host.display())),
            )
        };
        failpoint::hit("profile-clone").map_err(|e| on(&e))?;
        let mount = DetachedMount::clone_of(source.fd.as_fd(), source.kind == SourceKind::Dir)
            .map_err(|e| on(&e))?;
        failpoint::hit("profile-lockdown").map_err(|e| on(&e))?;
        let lockdown = match source.kind {
            SourceKind::Device(_) => Lockdown::Devices,
            _ if source.writable => Lockdown::Writable,
            SourceKind::File | SourceKind::Dir => Lockdown::Files,
        };
        mount.lock_down(lockdown).map_err(|e| on(&e))?;
        clones.push(mount);
    }
    // The kernel will not bind a file that is already unlinked: the
    // composed preload file goes only once it is attached (or given up).
    let preload = match plan.preload.is_empty() {
        true => None,
        false => {
            let (mount, name) = preload_file(plan, &root, scratch)?;
            clones.push(mount);
            Some(name)
        }
    };
    let devices: Vec<Device> = {
        let mut set: Vec<Device> = plan
            .sources
            .iter()
            .filter_map(|s| match s.kind {
                SourceKind::Device(d) => Some(d),
                _ => None,
            })
            .collect();
        set.sort();
        set.dedup();
        set
    };

    let mut carrier = RealCarrier {
        mntns,
        root,
        clones,
        pid,
        readonly,
        container_mounts: tables.container,
        bpffs: None,
    };
    let bpffs = plan.bpffs.as_deref();
    let carried = carry(&mut carrier, &layout, bpffs.is_some(), &devices).map_err(|f| {
        match (bpffs, f.step) {
            (Some(profile), Step::Bpffs) => {
                f.subject(crate::failure::Subject::Profile(profile.into()))
            }
            _ => f,
        }
    });
    if let Some(name) = &preload {
        let _ = scratch.remove(name);
    }
    Ok(Applied {
        done: carried?,
        carrier,
    })
}

/// The image's `/etc/ld.so.preload` with the profiles' libraries after it,
/// as a detached read-only mount of a scratch file, and the file's name in
/// `scratch`, which the caller removes once the mount is attached. Binding
/// a file rather than writing the image's works for read-only images and
/// leaves the image untouched.
fn preload_file(
    plan: &Plan,
    root: &Rootfs,
    scratch: &Dir,
) -> Result<(DetachedMount, String), Failure> {
    failpoint::hit("profile-preload").step(Step::Preload)?;
    let existing = root
        .read(Path::new(PRELOAD), MAX_PRELOAD_BYTES)
        .step(Step::Preload)?
        .unwrap_or_default();
    let existing = String::from_utf8_lossy(&existing);
    // ld.so takes whitespace or colons between entries.
    let mut lines: Vec<String> = existing
        .split(|c: char| c.is_whitespace() || c == ':')
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    for path in &plan.preload {
        let path = path.display().to_string();
        if !lines.contains(&path) {
            lines.push(path);
        }
    }
    let name = format!("ld.so.preload.{}", std::process::id());
    let body = lines.join("\n") + "\n";
    let made = (|| -> nsutil::Result<DetachedMount> {
        // A leftover of a run whose pid this process has now: not ours.
        scratch.remove(&name)?;
        scratch.create_new(&name, body.as_bytes(), scratch)?;
        // Every user in the container reads it (ld.so runs as them).
        let file = nix::fcntl::openat(
            scratch.as_fd(),
            name.as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| nsutil::Error::new(format!("open {name}"), e.into()))?;
        nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(0o644))
            .map_err(|e| nsutil::Error::new(format!("chmod {name}"), e.into()))?;
        let mount = DetachedMount::clone_of(file.as_fd(), false)?;
        mount.lock_down(Lockdown::Files)?;
        Ok(mount)
    })();
    match made {
        Ok(mount) => Ok((mount, name)),
        Err(e) => {
            let _ = scratch.remove(&name);
            Err(Failure::new(Step::Preload, e))
        }
    }
}

/// The real carrier: the container's mount namespace, its rootfs, the
/// detached clones of every source.
struct RealCarrier {
    mntns: Mntns,
    root: Rootfs,
    clones: Vec<DetachedMount>,
    pid: i32,
    readonly: bool,
    /// The container's mount table, as layout read it.
    container_mounts: Vec<mountinfo::MountEntry>,
    /// The bpffs, once attached.
    bpffs: Option<DetachedMount>,
}

enum Undo {
    /// Entries made directly on a filesystem of the container's own.
    Made(Vec<Created>),
    /// An overlay attached on `anchor`, and the mounts moved onto it from
    /// below `anchor` (with their paths relative to it).
    Overlaid {
        overlay: DetachedMount,
        anchor: OwnedFd,
        moved: Vec<(MovableMount, PathBuf)>,
    },
    Bound(usize),
    Bpffs,
    Granted(Grant),
}

impl Carrier for RealCarrier {
    type Undo = Undo;

    fn make_room(&mut self, room: &Room) -> Result<Undo, Failure> {
        let fail = |e: nsutil::Error| {
            Failure::refuse(
                Step::Mount,
                format!(
                    "make room for missing targets in {}: {e}",
                    room.anchor.display()
                ),
            )
        };
        failpoint::hit("profile-overlay").step(Step::Mount)?;
        let anchor = self.root.open_plain(&room.anchor).map_err(fail)?;
        if !room.overlay {
            let mut made = Vec::new();
            let mut make = || -> nsutil::Result<()> {
                for (relative, kind) in &room.entries {
                    rootfs::make_entry(anchor.as_fd(), relative, *kind, &mut made)?;
                }
                for (relative, text) in &room.links {
                    rootfs::make_link(anchor.as_fd(), relative, text, &mut made)?;
                }
                Ok(())
            };
            if let Err(e) = make() {
                for c in made.iter().rev() {
                    let _ = c.remove();
                }
                return Err(fail(e));
            }
            return Ok(Undo::Made(made));
        }
        let readonly = self.readonly;
        self.mntns
            .run(|| overlay_room(anchor, room, readonly))
            .map_err(fail)?
            .map_err(fail)
    }

    fn bind(&mut self, bind: &Placed) -> Result<Undo, Failure> {
        failpoint::hit("profile-attach").step(Step::Mount)?;
        let (root, clones) = (&self.root, &self.clones);
        let attached = self.mntns.run(|| -> nsutil::Result<()> {
            let target = root.open_plain(&bind.target)?;
            if rootfs::is_pseudo_fs(&target) {
                return Err(nsutil::Error::new(
                    format!("mount onto {}", bind.target.display()),
                    std::io::Error::other("it leads into a kernel filesystem"),
                ));
            }
            clones[bind.source].attach_to(target.as_fd())
        });
        attached
            .map_err(|e| Failure::new(Step::Mount, e))?
            .map_err(|e| Failure::refuse(Step::Mount, format!("{}: {e}", bind.target.display())))?;
        Ok(Undo::Bound(bind.source))
    }

    fn bpffs(&mut self) -> Result<Undo, Failure> {
        failpoint::hit("profile-bpffs").step(Step::Bpffs)?;
        let (root, table) = (&self.root, &self.container_mounts);
        let target = Path::new(runtime_config::install::BPFFS_TARGET);
        let made = self.mntns.run(|| -> Result<DetachedMount, String> {
            let at = root.open_plain(target).map_err(|e| e.to_string())?;
            // The container's own sysfs, as the runtime mounted it.
            const SYSFS_MAGIC: i64 = 0x6265_6572;
            let fs = nix::sys::statfs::fstatfs(&at).map_err(|e| e.to_string())?;
            if fs.filesystem_type().0 != SYSFS_MAGIC {
                return Err(format!(
                    "{} is not on the container's sysfs (a bpffs or something else is there already)",
                    target.display()
                ));
            }
            let id = mountinfo::mount_id(at.as_fd()).map_err(|e| e.to_string())?;
            match table.iter().find(|m| m.id == id) {
                Some(m) if m.shared.is_some() => {
                    return Err(format!(
                        "{} lies on {}, a mount with shared propagation: a mount there would reach the host",
                        target.display(),
                        m.point.display()
                    ))
                }
                Some(_) => {}
                None => {
                    return Err(format!(
                        "{}: its mount is not in the container's mount table",
                        target.display()
                    ))
                }
            }
            let bpffs = DetachedMount::bpffs().map_err(|e| e.to_string())?;
            bpffs.attach_to(at.as_fd()).map_err(|e| e.to_string())?;
            Ok(bpffs)
        });
        let bpffs = made
            .map_err(|e| Failure::new(Step::Bpffs, e))?
            .map_err(|e| Failure::refuse(Step::Bpffs, e))?;
        self.bpffs = Some(bpffs);
        Ok(Undo::Bpffs)
    }

    fn grant(&mut self, devices: &[Device]) -> Result<Undo, Failure> {
        failpoint::hit("profile-grant").step(Step::GrantDevices)?;
        let cgroup = DeviceCgroup::of_pid(self.pid).step(Step::GrantDevices)?;
        Ok(Undo::Granted(
            cgroup.grant(devices).step(Step::GrantDevices)?,
        ))
    }

    fn undo(&mut self, undo: Undo) -> Result<(), Failure> {
        match undo {
            Undo::Made(made) => {
                for c in made.iter().rev() {
                    c.remove().step(Step::Mount)?;
                }
                Ok(())
            }
            Undo::Overlaid {
                overlay,
                anchor,
                moved,
            } => self
                .mntns
                .run(|| remove_overlay(&overlay, &anchor, &moved))
                .step(Step::Mount)?
                .step(Step::Mount),
            Undo::Bound(source) => {
                let clone = &self.clones[source];
                self.mntns
                    .run(|| clone.detach())
                    .step(Step::Mount)?
                    .step(Step::Mount)
            }
            Undo::Bpffs => match self.bpffs.take() {
                Some(bpffs) => self
                    .mntns
                    .run(|| bpffs.detach())
                    .step(Step::Bpffs)?
                    .step(Step::Bpffs),
                None => Ok(()),
            },
            Undo::Granted(grant) => grant.revoke().step(Step::GrantDevices),
        }
    }
}

/// Inside the container's mount namespace: an overlay of `anchor` on a
/// fresh tmpfs with the room's entries made in it, attached on `anchor`,
/// and the mounts that were below `anchor` moved onto it (an overlay shows
/// only the directory's own files; `/etc/hosts` bound by the runtime must
/// stay visible). All of it, or nothing.
fn overlay_room(anchor: OwnedFd, room: &Room, readonly: bool) -> nsutil::Result<Undo> {
    let here = nsutil::procfs::fd_path(anchor.as_fd())?;
    let id = mountinfo::mount_id(anchor.as_fd())?;
    let table = mountinfo::read("self")?;
    let mut below = Vec::new();
    for mount in mountinfo::children_below(&table, id, &here) {
        let relative = mount.point.strip_prefix(&here).expect("below").to_owned();
        below.push((MovableMount::at(anchor.as_fd(), &relative)?, relative));
    }
    let overlay = {
        let scratch = DetachedMount::tmpfs()?;
        DetachedMount::overlay(anchor.as_fd(), &scratch)?
    };
    for (relative, kind) in &room.entries {
        rootfs::make_entry(overlay.root(), relative, *kind, &mut Vec::new())?;
    }
    for (relative, text) in &room.links {
        rootfs::make_link(overlay.root(), relative, text, &mut Vec::new())?;
    }
    overlay.match_flags_of(anchor.as_fd(), readonly)?;
    overlay.attach_to(anchor.as_fd())?;
    let mut moved: Vec<(MovableMount, PathBuf)> = Vec::new();
    for (mount, relative) in below {
        if let Err(e) = mount.move_to(overlay.root(), &relative) {
            let _ = remove_overlay(&overlay, &anchor, &moved);
            return Err(e);
        }
        moved.push((mount, relative));
    }
    Ok(Undo::Overlaid {
        overlay,
        anchor,
        moved,
    })
}

/// Moves the mounts back below `anchor` (a lookup from the anchor's fd
/// starts under the overlay, where they were) and detaches the overlay.
fn remove_overlay(
    overlay: &DetachedMount,
    anchor: &OwnedFd,
    moved: &[(MovableMount, PathBuf)],
) -> nsutil::Result<()> {
    for (mount, relative) in moved.iter().rev() {
        mount.move_to(anchor.as_fd(), relative)?;
    }
    overlay.detach()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nsutil::rootfs::TargetKind;

    /// Records every step and its undo; fails the step with the given number.
    #[derive(Default)]
    struct Fake {
        fail_at: Option<usize>,
        steps: usize,
        made: Vec<String>,
        undone: Vec<String>,
        fail_undo: Option<String>,
    }

    impl Fake {
        fn step(&mut self, what: String) -> Result<String, Failure> {
            self.steps += 1;
            if self.fail_at == Some(self.steps) {
                return Err(Failure::refuse(Step::Mount, format!("{what} failed")));
            }
            self.made.push(what.clone());
            Ok(what)
        }
    }

    impl Carrier for Fake {
        type Undo = String;
        fn make_room(&mut self, room: &Room) -> Result<String, Failure> {
            self.step(format!("room {}", room.anchor.display()))
        }
        fn bind(&mut self, bind: &Placed) -> Result<String, Failure> {
            self.step(format!("bind {}", bind.target.display()))
        }
        fn bpffs(&mut self) -> Result<String, Failure> {
            self.step("bpffs".into())
        }
        fn grant(&mut self, devices: &[Device]) -> Result<String, Failure> {
            self.step(format!("grant {}", devices.len()))
        }
        fn undo(&mut self, undo: String) -> Result<(), Failure> {
            self.undone.push(undo.clone());
            match &self.fail_undo {
                Some(which) if *which == undo => {
                    Err(Failure::refuse(Step::Mount, format!("undo {undo} failed")))
                }
                _ => Ok(()),
            }
        }
    }

    fn layout() -> Layout {
        let room = |anchor: &str, overlay| Room {
            anchor: anchor.into(),
            entries: vec![("x".into(), TargetKind::File)],
            links: vec![],
            overlay,
        };
        let bind = |source, target: &str| Placed {
            source,
            target: target.into(),
            kind: TargetKind::File,
        };
        Layout {
            rooms: vec![room("/usr/lib", true), room("/dev", false)],
            binds: vec![
                bind(0, "/usr/lib/x"),
                bind(1, "/dev/x"),
                bind(2, "/etc/ld.so.preload"),
            ],
        }
    }

    fn devices() -> Vec<Device> {
        vec![Device {
            block: false,
            major: 10,
            minor: 229,
        }]
    }

    #[test]
    fn every_step_that_fails_undoes_every_step_before_it() {
        let all = {
            let mut fake = Fake::default();
            carry(&mut fake, &layout(), true, &devices()).unwrap();
            fake.made
        };
        assert_eq!(
            all,
            [
                "room /usr/lib",
                "room /dev",
                "bind /usr/lib/x",
                "bind /dev/x",
                "bind /etc/ld.so.preload",
                "bpffs",
                "grant 1"
            ]
        );
        for fail_at in 1..=all.len() {
            let mut fake = Fake {
                fail_at: Some(fail_at),
                ..Fake::default()
            };
            let e = carry(&mut fake, &layout(), true, &devices()).unwrap_err();
            assert_eq!(e.cause_text(), format!("{} failed", all[fail_at - 1]));
            let mut undone = fake.undone.clone();
            undone.reverse();
            assert_eq!(
                undone, fake.made,
                "failing step {fail_at}: everything made is undone, newest first"
            );
            assert_eq!(fake.made.len(), fail_at - 1);
        }
    }

    #[test]
    fn a_failed_undo_is_reported_and_the_rest_still_undone() {
        let mut fake = Fake {
            fail_at: Some(5),
            fail_undo: Some("room /dev".into()),
            ..Fake::default()
        };
        let e = carry(&mut fake, &layout(), true, &devices()).unwrap_err();
        assert_eq!(
            fake.undone,
            [
                "bind /dev/x",
                "bind /usr/lib/x",
                "room /dev",
                "room /usr/lib"
            ]
        );
        assert_eq!(
            e.to_string(),
            "mount: bind /etc/ld.so.preload failed (rollback: mount: undo room /dev failed)"
        );
    }

    #[test]
    fn applied_changes_are_undone_all_together_later() {
        let mut fake = Fake::default();
        let done = carry(&mut fake, &layout(), false, &[]).unwrap();
        assert!(undo_all(&mut fake, done).is_empty());
        assert_eq!(fake.undone.len(), 5, "no grant without devices");
        assert_eq!(fake.undone[0], "bind /etc/ld.so.preload");
    }
}
