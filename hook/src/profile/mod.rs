//! Profiles at setup: carry a bypass stack's device nodes, host files and
//! preload into a container, inside its mount namespace, before pivot_root.
//!
//! [`plan`] opens every host source (`O_PATH`, no symlink as the last
//! component) and checks it against the profile, touching nothing.
//! [`apply`] then resolves every target inside the rootfs and checks the
//! result ([`layout`]: aliases, nesting, propagation, kernel filesystems),
//! and carries it in ([`carry`]): room for missing targets (an overlay, so
//! the image on disk is never written), the bind mounts, the device grants.
//! Any failure undoes every step taken, the failing one included.

mod carry;
mod layout;

pub use carry::{apply, Applied};

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nsutil::devices::Device;
use runtime_config::install::{CarriedDevice, CarriedMount, Carry};
use runtime_config::{Config, Profile};

use crate::failure::{no_such, Failure, Step};

/// One host file, directory or device node to bind into the container.
struct Source {
    profile: String,
    /// Every requested profile that binds this (the first is `profile`).
    wanted_by: Vec<String>,
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
    if let Some(other) = plan.sources.iter_mut().find(|s| s.target == target) {
        if other.host == host && other.kind == kind {
            other.wanted_by.push(profile.to_owned());
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
        wanted_by: vec![profile.to_owned()],
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
        self.carry_where(
            Carry {
                profiles: self.names.clone(),
                preload: self.preload.clone(),
                env: self.env.clone(),
                ..Carry::default()
            },
            |_| true,
        )
    }

    /// What of the plan is `profile`'s alone, as spec edits: to tell
    /// whether a spec already carries that one profile.
    pub fn carry_of(&self, profile: &Profile) -> Carry {
        self.carry_where(
            Carry {
                profiles: vec![profile.name.clone()],
                preload: profile.preload.clone(),
                env: profile
                    .env
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ..Carry::default()
            },
            |s| s.wanted_by.contains(&profile.name),
        )
    }

    fn carry_where(&self, mut carry: Carry, wanted: impl Fn(&Source) -> bool) -> Carry {
        for source in self.sources.iter().filter(|s| wanted(s)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profiles_own_carry_includes_what_it_shares_with_another() {
        let dir = tempfile::TempDir::new().unwrap();
        let lib = dir.path().join("libshared.so");
        std::fs::write(&lib, "").unwrap();
        let text = format!(
            "[profiles.a]\nmounts = [\"{lib}\"]\n\
             [profiles.b]\nmounts = [\"{lib}\"]\npreload = [\"{lib}\"]\nenv = {{ X = \"1\" }}\n",
            lib = lib.display()
        );
        let config = Config::parse(&text, Path::new("/etc/nsbypass/config.toml")).unwrap();
        let plan = plan(&["a".into(), "b".into()], &config).unwrap();
        assert_eq!(plan.carry().mounts.len(), 1, "one bind for both");
        let b = plan.carry_of(&config.profiles["b"]);
        assert_eq!(b.profiles, ["b"]);
        assert_eq!(
            b.mounts.len(),
            1,
            "b's needs include the bind a planned first"
        );
        assert_eq!(b.preload, vec![lib]);
        assert_eq!(b.env, [("X".to_owned(), "1".to_owned())]);
        let a = plan.carry_of(&config.profiles["a"]);
        assert!(a.preload.is_empty() && a.env.is_empty() && a.mounts.len() == 1);
    }
}
