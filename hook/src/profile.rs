//! Profiles at setup: carry a bypass stack's device nodes, host files and
//! preload into a container, inside its mount namespace, before pivot_root.
//!
//! `plan` opens every host source (`O_PATH`, no symlink as the last
//! component) and checks it against the profile, touching nothing. `apply`
//! then clones each source into a detached read-only mount, resolves each
//! target inside the rootfs (seen through `/proc/<pid>/root`, so it is the
//! container's own mount tree), attaches the mounts from inside the
//! container's mount namespace, and grants the devices in its device
//! cgroup. Any failure undoes every step taken, the failing one included.

use std::collections::BTreeSet;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nsutil::devices::{Device, DeviceCgroup, Grant};
use nsutil::mount::{DetachedMount, Lockdown};
use nsutil::ns::Mntns;
use nsutil::rootfs::{Created, Rootfs, TargetKind};
use runtime_config::install::{CarriedDevice, CarriedMount, Carry};
use runtime_config::{Config, Profile};

use crate::failure::{no_such, Failure, Step, StepExt};

/// The most of an image's `/etc/ld.so.preload` that is carried over.
const MAX_PRELOAD_BYTES: u64 = 64 << 10;

/// One host file, directory or device node to bind into the container.
struct Source {
    profile: String,
    host: PathBuf,
    target: PathBuf,
    fd: OwnedFd,
    kind: SourceKind,
    /// The host node's mode, uid and gid, for runtimes that recreate it.
    mode: u32,
    uid: u32,
    gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    Device(Device),
    File,
    Dir,
}

/// Everything the requested profiles need, checked against the host.
pub struct Plan {
    pub names: Vec<String>,
    sources: Vec<Source>,
    preload: Vec<PathBuf>,
    env: Vec<(String, String)>,
}

/// Opens and checks every host source of `names`; touches nothing.
pub fn plan(names: &[String], config: &Config) -> Result<Plan, Failure> {
    let mut plan = Plan {
        names: names.to_vec(),
        sources: Vec::new(),
        preload: Vec::new(),
        env: Vec::new(),
    };
    for name in names {
        let profile = config.profiles.get(name).ok_or_else(|| {
            Failure::profile(
                Step::Validate,
                name,
                no_such("profile", &config.path, config.profiles.keys()),
            )
        })?;
        add_profile(&mut plan, profile)?;
    }
    check_nesting(&plan)?;
    Ok(plan)
}

/// Targets are resolved before anything is mounted, so one target inside
/// another (or `/etc/ld.so.preload` inside a mounted `/etc`) would land on
/// the image's file underneath and be hidden by the outer mount.
fn check_nesting(plan: &Plan) -> Result<(), Failure> {
    let preload = Path::new("/etc/ld.so.preload");
    for outer in &plan.sources {
        let inner = plan
            .sources
            .iter()
            .map(|s| s.target.as_path())
            .chain((!plan.preload.is_empty()).then_some(preload))
            .find(|inner| *inner != outer.target && inner.starts_with(&outer.target));
        if let Some(inner) = inner {
            return Err(Failure::profile(
                Step::Validate,
                &outer.profile,
                format!(
                    "{} would be hidden under the mount on {}",
                    inner.display(),
                    outer.target.display()
                ),
            ));
        }
    }
    Ok(())
}

fn add_profile(plan: &mut Plan, profile: &Profile) -> Result<(), Failure> {
    let fail = |message: String| Failure::profile(Step::Validate, &profile.name, message);
    for required in &profile.requires {
        if std::fs::metadata(required).is_err() {
            return Err(fail(format!(
                "requires {}, which this host lacks",
                required.display()
            )));
        }
    }
    for spec in &profile.devices {
        let hosts = if spec.is_glob() {
            let pattern = spec.source.to_string_lossy();
            let found: Vec<PathBuf> = glob::glob(&pattern)
                .map_err(|e| fail(format!("device pattern {pattern}: {e}")))?
                .filter_map(Result::ok)
                .collect();
            if found.is_empty() {
                return Err(fail(format!(
                    "device pattern {pattern} matches nothing on this host"
                )));
            }
            found
        } else {
            vec![spec.source.clone()]
        };
        for host in hosts {
            let target = spec.target.clone().unwrap_or_else(|| host.clone());
            let (fd, meta) = open_source(&host).map_err(fail)?;
            let file_type = meta.file_type();
            if !file_type.is_char_device() && !file_type.is_block_device() {
                return Err(fail(format!(
                    "device {} is not a device node",
                    host.display()
                )));
            }
            let rdev = meta.rdev();
            let device = Device {
                block: file_type.is_block_device(),
                major: nix::sys::stat::major(rdev) as u32,
                minor: nix::sys::stat::minor(rdev) as u32,
            };
            add_source(
                plan,
                &profile.name,
                host,
                target,
                (fd, &meta),
                SourceKind::Device(device),
            )?;
        }
    }
    for spec in &profile.mounts {
        let (fd, meta) = open_source(&spec.source).map_err(fail)?;
        let kind = if meta.is_dir() {
            SourceKind::Dir
        } else if meta.is_file() {
            SourceKind::File
        } else {
            return Err(fail(format!(
                "mount {} is neither a file nor a directory",
                spec.source.display()
            )));
        };
        add_source(
            plan,
            &profile.name,
            spec.source.clone(),
            spec.target.clone(),
            (fd, &meta),
            kind,
        )?;
    }
    for path in &profile.preload {
        if !plan.preload.contains(path) {
            plan.preload.push(path.clone());
        }
    }
    for (key, value) in &profile.env {
        match plan.env.iter().find(|(k, _)| k == key) {
            Some((_, v)) if v == value => {}
            Some((_, v)) => {
                return Err(fail(format!(
                    "env {key}={value} conflicts with {key}={v} of another profile"
                )))
            }
            None => plan.env.push((key.clone(), value.clone())),
        }
    }
    Ok(())
}

/// Opens a host source without following a symlink at its last component:
/// the admin names the file itself, so the bind is exactly what was named.
fn open_source(path: &Path) -> Result<(OwnedFd, std::fs::Metadata), String> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        format!(
            "{}: {} on this host",
            path.display(),
            std::io::Error::from(e)
        )
    })?;
    let meta = std::fs::File::from(fd.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?)
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.file_type().is_symlink() {
        let to = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Err(format!(
            "{} is a symlink (to {to}); name the file itself, with a target if the path matters",
            path.display()
        ));
    }
    Ok((fd, meta))
}

/// Adds a source unless another profile already binds the same thing to
/// the same target; two different things on one target are an error.
fn add_source(
    plan: &mut Plan,
    profile: &str,
    host: PathBuf,
    target: PathBuf,
    (fd, meta): (OwnedFd, &std::fs::Metadata),
    kind: SourceKind,
) -> Result<(), Failure> {
    if let Some(other) = plan.sources.iter().find(|s| s.target == target) {
        if other.host == host && other.kind == kind {
            return Ok(());
        }
        return Err(Failure::profile(
            Step::Validate,
            profile,
            format!(
                "{} would be mounted over profile {}'s {}",
                host.display(),
                other.profile,
                target.display()
            ),
        ));
    }
    plan.sources.push(Source {
        profile: profile.to_owned(),
        host,
        target,
        fd,
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
    });
    Ok(())
}

impl Plan {
    /// The plan as spec edits, for runtimes that take profiles through the
    /// spec (the docker runtime entry, CDI) rather than from the hook.
    pub fn carry(&self) -> Carry {
        let mut carry = Carry {
            profiles: self.names.clone(),
            preload: self.preload.clone(),
            env: self.env.clone(),
            ..Carry::default()
        };
        for source in &self.sources {
            match source.kind {
                SourceKind::Device(d) => carry.devices.push(CarriedDevice {
                    source: source.host.clone(),
                    target: source.target.clone(),
                    block: d.block,
                    major: d.major,
                    minor: d.minor,
                    mode: source.mode,
                    uid: source.uid,
                    gid: source.gid,
                }),
                SourceKind::File | SourceKind::Dir => carry.mounts.push(CarriedMount {
                    source: source.host.clone(),
                    target: source.target.clone(),
                    directory: source.kind == SourceKind::Dir,
                }),
            }
        }
        carry
    }
}

/// What `apply` did, to undo it.
pub struct Applied {
    pub mntns: Mntns,
    attached: Vec<DetachedMount>,
    created: Vec<Created>,
    grant: Option<Grant>,
}

impl Applied {
    /// Undoes everything, newest first; keeps going and reports problems.
    pub fn roll_back(self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(grant) = &self.grant {
            if let Err(e) = grant.revoke() {
                problems.push(e.to_string());
            }
        }
        let detached = self.mntns.run(|| {
            self.attached
                .iter()
                .rev()
                .filter_map(|m| m.detach().err().map(|e| e.to_string()))
                .collect::<Vec<_>>()
        });
        match detached {
            Ok(errors) => problems.extend(errors),
            Err(e) => problems.push(e.to_string()),
        }
        for created in self.created.iter().rev() {
            if let Err(e) = created.remove() {
                problems.push(e.to_string());
            }
        }
        problems
    }
}

/// Carries `plan` into the container whose init is `pid` and whose rootfs
/// is `rootfs` (a host path). `scratch` is a private directory for the
/// composed ld.so.preload. On failure everything done is undone.
pub fn apply(plan: &Plan, pid: i32, rootfs: &Path, scratch: &Path) -> Result<Applied, Failure> {
    let mntns = Mntns::open(Path::new(&format!("/proc/{pid}/ns/mnt"))).step(Step::OpenRootfs)?;
    if mntns.id() == Mntns::current().step(Step::OpenRootfs)?.id() {
        return Err(Failure::new(
            Step::OpenRootfs,
            "the container shares the host's mount namespace; nsbypass will not mount into it",
        ));
    }
    let mut applied = Applied {
        mntns,
        attached: Vec::new(),
        created: Vec::new(),
        grant: None,
    };
    match carry(plan, pid, rootfs, scratch, &mut applied) {
        Ok(()) => Ok(applied),
        Err(mut failure) => {
            let problems = applied.roll_back();
            if !problems.is_empty() {
                failure.message =
                    format!("{} (rollback: {})", failure.message, problems.join("; "));
            }
            Err(failure)
        }
    }
}

fn carry(
    plan: &Plan,
    pid: i32,
    rootfs: &Path,
    scratch: &Path,
    applied: &mut Applied,
) -> Result<(), Failure> {
    // The container's own view of its rootfs, runc's /dev tmpfs included.
    let through_proc = PathBuf::from(format!("/proc/{pid}/root{}", rootfs.display()));
    let root = Rootfs::open(&through_proc).step(Step::OpenRootfs)?;

    let mut mounts: Vec<(DetachedMount, OwnedFd)> = Vec::new();
    for source in &plan.sources {
        let on = |step| {
            move |e: nsutil::Error| {
                Failure::profile(
                    step,
                    &source.profile,
                    format!("{}: {e}", source.host.display()),
                )
            }
        };
        let mount = DetachedMount::clone_of(source.fd.as_fd(), source.kind == SourceKind::Dir)
            .map_err(on(Step::Mount))?;
        let lockdown = match source.kind {
            SourceKind::Device(_) => Lockdown::Devices,
            SourceKind::File | SourceKind::Dir => Lockdown::Files,
        };
        mount.lock_down(lockdown).map_err(on(Step::Mount))?;
        let kind = match source.kind {
            SourceKind::Device(_) => TargetKind::Device,
            SourceKind::File => TargetKind::File,
            SourceKind::Dir => TargetKind::Dir,
        };
        let target = root
            .mount_target(&source.target, kind, &mut applied.created)
            .map_err(on(Step::Mount))?;
        mounts.push((mount, target));
    }
    // The kernel will not bind a file that is already unlinked: the
    // composed preload file goes only once it is attached (or given up).
    let mut preload = None;
    if !plan.preload.is_empty() {
        let (mount, file) = preload_file(plan, &root, scratch)?;
        preload = Some(file);
        let target = root
            .mount_target(
                Path::new("/etc/ld.so.preload"),
                TargetKind::File,
                &mut applied.created,
            )
            .step(Step::Preload);
        match target {
            Ok(target) => mounts.push((mount, target)),
            Err(e) => {
                remove_scratch(preload.as_deref());
                return Err(e);
            }
        }
    }

    let attached = &mut applied.attached;
    let attaching = applied
        .mntns
        .run(|| -> Result<(), Failure> {
            for (mount, target) in mounts {
                mount.attach_to(target.as_fd()).step(Step::Mount)?;
                attached.push(mount);
            }
            Ok(())
        })
        .step(Step::Mount);
    remove_scratch(preload.as_deref());
    attaching??;

    let devices: BTreeSet<Device> = plan
        .sources
        .iter()
        .filter_map(|s| match s.kind {
            SourceKind::Device(d) => Some(d),
            _ => None,
        })
        .collect();
    if !devices.is_empty() {
        let cgroup = DeviceCgroup::of_pid(pid).step(Step::GrantDevices)?;
        let devices: Vec<Device> = devices.into_iter().collect();
        applied.grant = Some(cgroup.grant(&devices).step(Step::GrantDevices)?);
    }
    Ok(())
}

/// Removes scratch files of hooks that died before removing their own
/// (their pid is in the name and no longer runs). Runs under the state lock.
fn sweep_scratch(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name
            .to_str()
            .and_then(|n| n.rsplit('.').next())
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn remove_scratch(file: Option<&Path>) {
    if let Some(file) = file {
        let _ = std::fs::remove_file(file);
    }
}

/// The image's `/etc/ld.so.preload` with the profiles' libraries after it,
/// as a detached read-only mount of a scratch file, and that file, which
/// the caller removes once the mount is attached. Binding a file rather
/// than writing the image's works for read-only images and leaves the
/// image untouched.
fn preload_file(
    plan: &Plan,
    root: &Rootfs,
    scratch: &Path,
) -> Result<(DetachedMount, PathBuf), Failure> {
    let existing = root
        .read(Path::new("/etc/ld.so.preload"), MAX_PRELOAD_BYTES)
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
    sweep_scratch(scratch);
    let file = scratch.join(format!("ld.so.preload.{}", std::process::id()));
    let made = std::fs::write(&file, lines.join("\n") + "\n")
        .map_err(|e| nsutil::Error::new(format!("write {}", file.display()), e))
        .and_then(|()| {
            let fd = nix::fcntl::open(
                &file,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| nsutil::Error::new(format!("open {}", file.display()), e.into()))?;
            let mount = DetachedMount::clone_of(fd.as_fd(), false)?;
            mount.lock_down(Lockdown::Files)?;
            Ok(mount)
        });
    match made {
        Ok(mount) => Ok((mount, file)),
        Err(e) => {
            remove_scratch(Some(&file));
            Err(Failure::new(Step::Preload, e))
        }
    }
}
