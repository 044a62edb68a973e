//! Profiles at setup: carry a bypass stack's device nodes, host files and
//! preload into a container, inside its mount namespace, before pivot_root.
//!
//! [`plan`] opens every host source (`O_PATH`, no symlink as the last
//! component, every directory on the way root's and closed to others),
//! expands mount globs (host symlinks among the matches become symlinks in
//! the container to the bound files), and checks it all against the
//! profile, touching nothing.
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
use runtime_config::bundle::Bundle;
use runtime_config::install::{CarriedDevice, CarriedLink, CarriedMount, Carry};
use runtime_config::profile::Rlimit;
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
    /// Bound read-write (`writable = true`): directories only.
    writable: bool,
    /// The host path with every link resolved, to tell which source a
    /// host symlink leads to.
    real: PathBuf,
    /// The host node's mode, uid and gid, for runtimes that recreate it.
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A host symlink a mount glob matched, made again in the container: at
/// `target`, with `text` leading to the container path of the bound file
/// it resolves to on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub profile: String,
    pub wanted_by: Vec<String>,
    /// The host link, for messages.
    pub host: PathBuf,
    pub target: PathBuf,
    pub text: PathBuf,
    /// The bound file it leads to: host path and container path.
    pub leads_to: (PathBuf, PathBuf),
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
    links: Vec<Link>,
    preload: Vec<PathBuf>,
    env: Vec<(String, String)>,
    /// Who wants each capability and limit, checked against the spec.
    capabilities: Vec<(String, String)>,
    rlimits: Vec<(String, Rlimit)>,
    /// The first profile that wants a bpffs.
    bpffs: Option<String>,
}

/// Opens and checks every host source of `names`; touches nothing.
pub fn plan(names: &[String], config: &Config) -> Result<Plan, Failure> {
    let mut plan = Plan {
        names: names.to_vec(),
        sources: Vec::new(),
        links: Vec::new(),
        preload: Vec::new(),
        env: Vec::new(),
        capabilities: Vec::new(),
        rlimits: Vec::new(),
        bpffs: None,
    };
    let mut found_links = Vec::new();
    for name in names {
        let profile = config.profiles.get(name).ok_or_else(|| {
            Failure::profile(
                Step::Validate,
                name,
                no_such("profile", &config.path, config.profiles.keys()),
            )
        })?;
        add_profile(&mut plan, profile, &mut found_links)?;
    }
    for found in found_links {
        resolve_link(&mut plan, found)?;
    }
    check_nesting(&plan)?;
    Ok(plan)
}

/// A host symlink a glob matched, before it is known what it leads to.
struct FoundLink {
    profile: String,
    host: PathBuf,
    target: PathBuf,
}

/// A matched symlink must lead, through any chain of links, to a file the
/// plan binds (or into a bound directory): the container gets a link
/// straight to that file's place. One leading anywhere else is refused.
fn resolve_link(plan: &mut Plan, found: FoundLink) -> Result<(), Failure> {
    let fail = |message: String| Failure::profile(Step::Validate, &found.profile, message);
    let real = std::fs::canonicalize(&found.host).map_err(|e| {
        fail(format!(
            "mount {}: a symlink that leads nowhere on this host ({e})",
            found.host.display()
        ))
    })?;
    let bound = plan.sources.iter().find_map(|s| match s.kind {
        SourceKind::File if s.real == real => Some((s.host.clone(), s.target.clone())),
        SourceKind::Dir => real
            .strip_prefix(&s.real)
            .ok()
            .filter(|rest| !rest.as_os_str().is_empty())
            .map(|rest| (s.host.join(rest), s.target.join(rest))),
        _ => None,
    });
    let Some((host, inside)) = bound else {
        return Err(fail(format!(
            "mount {}: a symlink to {}, which the profile does not mount; add that file to mounts or narrow the glob",
            found.host.display(),
            real.display()
        )));
    };
    // Beside its file, the link names it alone; elsewhere by its path in
    // the container.
    let text = match inside.parent() == found.target.parent() {
        true => PathBuf::from(inside.file_name().expect("a file")),
        false => inside.clone(),
    };
    if let Some(other) = plan.links.iter_mut().find(|l| l.target == found.target) {
        if other.text == text {
            other.wanted_by.push(found.profile.clone());
            return Ok(());
        }
        return Err(fail(format!(
            "{} would be a link to {} and, for profile {}, to {}",
            found.target.display(),
            text.display(),
            other.profile,
            other.text.display()
        )));
    }
    if let Some(source) = plan.sources.iter().find(|s| s.target == found.target) {
        return Err(fail(format!(
            "{} would be a link and profile {}'s {}",
            found.target.display(),
            source.profile,
            source.host.display()
        )));
    }
    plan.links.push(Link {
        profile: found.profile.clone(),
        wanted_by: vec![found.profile],
        host: found.host,
        target: found.target,
        text,
        leads_to: (host, inside),
    });
    Ok(())
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
            .chain(plan.links.iter().map(|l| l.target.as_path()))
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

fn add_profile(
    plan: &mut Plan,
    profile: &Profile,
    links: &mut Vec<FoundLink>,
) -> Result<(), Failure> {
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
            expand("device", &spec.source).map_err(fail)?
        } else {
            vec![spec.source.clone()]
        };
        for host in hosts {
            let target = spec.target.clone().unwrap_or_else(|| host.clone());
            let (fd, meta) = open_source(&host)
                .map_err(fail)?
                .ok_or_else(|| fail(symlinked(&host)))?;
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
                (SourceKind::Device(device), false),
            )?;
        }
    }
    for spec in &profile.mounts {
        let matches = if spec.is_glob() {
            expand("mount", &spec.source).map_err(fail)?
        } else {
            vec![spec.source.clone()]
        };
        for host in matches {
            let target = match spec.is_glob() {
                true => spec
                    .target
                    .join(host.file_name().expect("a glob match has a name")),
                false => spec.target.clone(),
            };
            let Some((fd, meta)) = open_source(&host).map_err(fail)? else {
                if !spec.is_glob() {
                    return Err(fail(symlinked(&host)));
                }
                links.push(FoundLink {
                    profile: profile.name.clone(),
                    host,
                    target,
                });
                continue;
            };
            let kind = if meta.is_dir() {
                SourceKind::Dir
            } else if meta.is_file() {
                SourceKind::File
            } else {
                return Err(fail(format!(
                    "mount {} is neither a file nor a directory",
                    host.display()
                )));
            };
            if spec.writable && kind != SourceKind::Dir {
                return Err(fail(format!(
                    "mount {}: writable is for a directory (a hugetlbfs, a shared ring directory), never a file",
                    host.display()
                )));
            }
            add_source(
                plan,
                &profile.name,
                host,
                target,
                (fd, &meta),
                (kind, spec.writable),
            )?;
        }
    }
    for path in &profile.preload {
        if !plan.preload.contains(path) {
            plan.preload.push(path.clone());
        }
    }
    for cap in &profile.capabilities {
        plan.capabilities.push((profile.name.clone(), cap.clone()));
    }
    for limit in &profile.rlimits {
        plan.rlimits.push((profile.name.clone(), *limit));
    }
    if profile.bpffs && plan.bpffs.is_none() {
        plan.bpffs = Some(profile.name.clone());
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
/// `None` if it is a symlink. The directories on its way must be root's
/// and closed to others (see [`check_ancestors`]).
/// The host paths a `kind` (device or mount) glob matches, sorted; one
/// that matches nothing, or does not parse, is the error line.
fn expand(kind: &str, pattern: &Path) -> Result<Vec<PathBuf>, String> {
    let pattern = pattern.to_string_lossy();
    let mut found: Vec<PathBuf> = glob::glob(&pattern)
        .map_err(|e| format!("{kind} pattern {pattern}: {e}"))?
        .filter_map(Result::ok)
        .collect();
    if found.is_empty() {
        return Err(format!(
            "{kind} pattern {pattern} matches nothing on this host"
        ));
    }
    found.sort();
    Ok(found)
}

fn open_source(path: &Path) -> Result<Option<(OwnedFd, std::fs::Metadata)>, String> {
    check_ancestors(path)?;
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
        return Ok(None);
    }
    Ok(Some((fd, meta)))
}

fn symlinked(path: &Path) -> String {
    let to = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    format!(
        "{} is a symlink (to {to}); name the file itself, with a target if the path matters, or a glob that matches the link and its file",
        path.display()
    )
}

/// Whoever can write a directory on the way to a source could swap the
/// file the hook binds, as root, into every container: each directory the
/// path passes through (as written, and as it resolves) must be owned by
/// root and writable by no one else (a sticky one like `/tmp` is fine:
/// others cannot replace what they do not own), and a symlink on the way
/// must be root's.
pub fn check_ancestors(path: &Path) -> Result<(), String> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let refuse = |why: String| {
        format!(
            "{}: {why}; nsbypass binds only files whose directories only root can change",
            path.display()
        )
    };
    let mut at = PathBuf::from("/");
    for component in parent.components().skip(1) {
        at.push(component);
        let meta = std::fs::symlink_metadata(&at)
            .map_err(|e| format!("{}: {e} on this host", at.display()))?;
        if meta.file_type().is_symlink() && meta.uid() != 0 {
            return Err(refuse(format!(
                "{} is a symlink owned by uid {}, not by root",
                at.display(),
                meta.uid()
            )));
        }
    }
    let real = std::fs::canonicalize(parent)
        .map_err(|e| format!("{}: {e} on this host", parent.display()))?;
    let mut at = PathBuf::from("/");
    let check = |at: &Path| -> Result<(), String> {
        let meta = std::fs::metadata(at).map_err(|e| format!("{}: {e}", at.display()))?;
        match nsutil::dir::ancestor_problem(at, meta.uid(), meta.mode(), 0) {
            Some(problem) => Err(refuse(problem.what)),
            None => Ok(()),
        }
    };
    check(&at)?;
    for component in real.components().skip(1) {
        at.push(component);
        check(&at)?;
    }
    Ok(())
}

/// Adds a source unless another profile already binds the same thing to
/// the same target; two different things on one target are an error.
fn add_source(
    plan: &mut Plan,
    profile: &str,
    host: PathBuf,
    target: PathBuf,
    (fd, meta): (OwnedFd, &std::fs::Metadata),
    (kind, writable): (SourceKind, bool),
) -> Result<(), Failure> {
    if let Some(other) = plan.sources.iter_mut().find(|s| s.target == target) {
        if other.host == host && other.kind == kind && other.writable == writable {
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
    let real = std::fs::canonicalize(&host).unwrap_or_else(|_| host.clone());
    plan.sources.push(Source {
        profile: profile.to_owned(),
        wanted_by: vec![profile.to_owned()],
        host,
        target,
        fd,
        kind,
        writable,
        real,
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
            bpffs: self.bpffs.is_some(),
            ..Carry::default()
        };
        for (_, cap) in &self.capabilities {
            if !carry.capabilities.contains(cap) {
                carry.capabilities.push(cap.clone());
            }
        }
        for (_, limit) in &self.rlimits {
            add_limit(&mut carry.rlimits, *limit);
        }
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
                    writable: source.writable,
                }),
            }
        }
        for link in &self.links {
            carry.links.push(CarriedLink {
                target: link.target.clone(),
                source: link.leads_to.0.clone(),
            });
        }
        carry
    }

    /// What the hook must still carry in itself: the plan without what
    /// `bundle` verifiably has already (the docker runtime entry and CDI
    /// put pieces there), or `None` if that is everything. Each piece is
    /// checked on its own: runtime mode leaves to the hook the mounts an
    /// image on disk lacks (see `runtime.rs`). The in-spec marker variable
    /// is not read: an image can set it.
    pub fn not_in_spec(mut self, bundle: &Bundle) -> Option<Plan> {
        let carry = self.carry();
        let have = |piece: Carry| runtime_config::install::check_in_spec(&piece, bundle).is_ok();
        let mut keep = carry
            .devices
            .iter()
            .map(|d| {
                !have(Carry {
                    devices: vec![d.clone()],
                    ..Carry::default()
                })
            })
            .chain(carry.mounts.iter().map(|m| {
                !have(Carry {
                    mounts: vec![m.clone()],
                    ..Carry::default()
                })
            }));
        // carry() lists devices and mounts in the order of the sources.
        self.sources.retain(|_| keep.next().unwrap_or(true));
        self.links.retain(|l| {
            !have(Carry {
                links: vec![CarriedLink {
                    target: l.target.clone(),
                    source: l.leads_to.0.clone(),
                }],
                ..Carry::default()
            })
        });
        self.preload.retain(|p| {
            !have(Carry {
                preload: vec![p.clone()],
                ..Carry::default()
            })
        });
        if self.bpffs.is_some()
            && have(Carry {
                bpffs: true,
                ..Carry::default()
            })
        {
            self.bpffs = None;
        }
        let nothing = self.sources.is_empty()
            && self.links.is_empty()
            && self.preload.is_empty()
            && self.bpffs.is_none();
        (!nothing).then_some(self)
    }

    /// Whether the container's process, as `bundle` specifies it, has the
    /// capabilities and limits every planned profile needs; `live_limit`
    /// reads the limit the process has now, which it keeps where the spec
    /// sets none. Refuses with the first profile lacking something, naming
    /// everything it lacks and the runtime flags that give it.
    pub fn check_process(
        &self,
        bundle: &Bundle,
        live_limit: impl Fn(&str) -> Option<(u64, u64)>,
    ) -> Result<(), Failure> {
        for name in &self.names {
            let caps: Vec<String> = self
                .capabilities
                .iter()
                .filter(|(p, _)| p == name)
                .map(|(_, c)| c.clone())
                .collect();
            let limits: Vec<Rlimit> = self
                .rlimits
                .iter()
                .filter(|(p, _)| p == name)
                .map(|(_, l)| *l)
                .collect();
            if let Err(message) =
                runtime_config::install::check_process(&caps, &limits, bundle, &live_limit)
            {
                return Err(Failure::profile(
                    Step::CheckProcess,
                    name,
                    crate::failure::Refusal(message),
                ));
            }
        }
        Ok(())
    }
}

/// Adds `limit` to `limits`, keeping the larger of two of one name.
fn add_limit(limits: &mut Vec<Rlimit>, limit: Rlimit) {
    match limits.iter_mut().find(|l| l.name == limit.name) {
        Some(l) if l.spec_value() < limit.spec_value() => *l = limit,
        Some(_) => {}
        None => limits.push(limit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("/etc/nsbypass/config.toml")).unwrap()
    }

    #[test]
    fn one_bind_for_two_profiles_and_the_spec_takes_pieces_off_the_plan() {
        let dir = tempfile::TempDir::new().unwrap();
        let lib = dir.path().join("libshared.so");
        let other = dir.path().join("libother.so");
        std::fs::write(&lib, "").unwrap();
        std::fs::write(&other, "").unwrap();
        let config = config(&format!(
            "[profiles.a]\nmounts = [\"{lib}\"]\n\
             [profiles.b]\nmounts = [\"{lib}\", \"{other}\"]\npreload = [\"{lib}\"]\nenv = {{ X = \"1\" }}\n",
            lib = lib.display(),
            other = other.display()
        ));
        let plan = plan(&["a".into(), "b".into()], &config).unwrap();
        assert_eq!(plan.carry().mounts.len(), 2, "one bind for both");
        // A spec binding the shared library, with LD_PRELOAD, leaves the
        // other library to the hook.
        let spec = serde_json::json!({
            "process": { "env": [format!("LD_PRELOAD={}", lib.display())] },
            "mounts": [{ "destination": lib, "type": "bind", "source": lib, "options": ["bind", "ro"] }],
        });
        let bundle = Bundle::parse(Path::new("/b"), spec.to_string().as_bytes()).unwrap();
        let left = plan.not_in_spec(&bundle).unwrap();
        assert_eq!(left.sources.len(), 1);
        assert_eq!(left.sources[0].host, other);
        assert!(left.preload.is_empty());
        let full = serde_json::json!({
            "mounts": [
                { "destination": lib, "type": "bind", "source": lib },
                { "destination": other, "type": "bind", "source": other },
            ],
        });
        let bundle = Bundle::parse(Path::new("/b"), full.to_string().as_bytes()).unwrap();
        let again = super::plan(&["a".into()], &config).unwrap();
        assert!(again.not_in_spec(&bundle).is_none(), "nothing left");
    }

    #[test]
    fn glob_links_lead_to_bound_files_and_a_link_out_of_the_set_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::TempDir::new().unwrap();
        let d = dir.path();
        std::fs::write(d.join("librte_eal.so.23.0"), "").unwrap();
        symlink("librte_eal.so.23.0", d.join("librte_eal.so.23")).unwrap();
        std::fs::create_dir(d.join("pmds")).unwrap();
        std::fs::write(d.join("pmds/librte_net.so.23.0"), "").unwrap();
        symlink("pmds/librte_net.so.23.0", d.join("librte_net.so.23")).unwrap();
        let text = |extra: &str| {
            format!(
                "[profiles.dpdk]\nmounts = [\"{}/librte_*.so.23*\"{extra}]\n",
                d.display()
            )
        };
        let err = plan(&["dpdk".into()], &config(&text("")))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!(
                "profile dpdk: validate: mount {}/librte_net.so.23: a symlink to {}/pmds/librte_net.so.23.0, which the profile does not mount",
                d.display(),
                std::fs::canonicalize(d).unwrap().display()
            )),
            "{err}"
        );
        let extra = format!(
            ", {{ source = \"{}/pmds/*.so.23.0\", target = \"/opt/pmds\" }}",
            d.display()
        );
        let plan = plan(&["dpdk".into()], &config(&text(&extra))).unwrap();
        let links: Vec<(String, String)> = plan
            .links
            .iter()
            .map(|l| (l.target.display().to_string(), l.text.display().to_string()))
            .collect();
        assert_eq!(
            links,
            [
                (
                    format!("{}/librte_eal.so.23", d.display()),
                    "librte_eal.so.23.0".to_owned()
                ),
                (
                    format!("{}/librte_net.so.23", d.display()),
                    "/opt/pmds/librte_net.so.23.0".to_owned()
                ),
            ]
        );
        assert_eq!(plan.sources.len(), 2);
        // In a spec, each link is a bind of the file it leads to.
        let carry = plan.carry();
        assert_eq!(carry.spec_mounts().len(), 4);
    }

    #[test]
    fn a_source_below_a_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::TempDir::new().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(open.join("lib.so"), "").unwrap();
        let err = check_ancestors(&open.join("lib.so")).unwrap_err();
        assert!(err.contains("is writable by others (mode 0777)"), "{err}");
        // Sticky, like /tmp: others cannot replace what they do not own.
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_ancestors(&open.join("lib.so")).unwrap();
    }
}
