//! Bypass-stack profiles: the device nodes, host files and preload a stack
//! like Onload needs inside a container, and what its process must be
//! allowed (capabilities, rlimits, a bpffs).
//!
//! Every path here comes from the admin and is checked at load time:
//! absolute, no `.`/`..`, no empty components, so that what the hook later
//! resolves inside a container's rootfs is exactly what the admin wrote.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::names::check_network_name;

/// A validated profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub name: String,
    pub devices: Vec<DeviceSpec>,
    pub mounts: Vec<MountSpec>,
    /// Container paths listed in `/etc/ld.so.preload`; each lies on a mount target.
    pub preload: Vec<PathBuf>,
    /// Applied only where the spec can be edited (runtime entry, CDI): a
    /// prestart hook cannot change the process environment.
    pub env: BTreeMap<String, String>,
    /// Host paths the stack needs (a loaded driver module, ...).
    pub requires: Vec<PathBuf>,
    /// The Kubernetes namespaces whose containers may have it; `None`:
    /// every container may.
    pub allow_namespaces: Option<Vec<String>>,
    /// Capabilities the container's process needs (`CAP_BPF`, ...), in the
    /// spec's spelling: added where the spec can be edited, checked where
    /// it cannot.
    pub capabilities: Vec<String>,
    /// Resource limits the process needs at least (soft and hard), by
    /// their lower-case name without `RLIMIT_` (`memlock`).
    pub rlimits: Vec<Rlimit>,
    /// A fresh bpffs at `/sys/fs/bpf` in the container (libxdp's
    /// dispatcher pins its programs there).
    pub bpffs: bool,
}

/// A resource limit a profile needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    /// One of [`RLIMITS`].
    pub name: &'static str,
    /// `None`: unlimited.
    pub value: Option<u64>,
}

impl Rlimit {
    /// The spec's name: `RLIMIT_MEMLOCK`.
    pub fn spec_name(&self) -> String {
        format!("RLIMIT_{}", self.name.to_uppercase())
    }

    /// The spec's number for it (`u64::MAX` is unlimited, as runc reads it).
    pub fn spec_value(&self) -> u64 {
        self.value.unwrap_or(u64::MAX)
    }

    /// `memlock=-1`, as docker's and podman's `--ulimit` take it.
    pub fn ulimit_flag(&self) -> String {
        match self.value {
            None => format!("--ulimit {}=-1", self.name),
            Some(n) => format!("--ulimit {}={n}", self.name),
        }
    }
}

/// The resource limits a profile may name (Linux's, as runc sets them).
pub const RLIMITS: [&str; 16] = [
    "as",
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// Linux's capabilities (6.x), without `CAP_`.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Host device node(s) to make usable in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// A host path, or a glob (`/dev/infiniband/uverbs*`) expanded at hook time.
    pub source: PathBuf,
    /// Where it appears in the container; `None`: at the same path.
    pub target: Option<PathBuf>,
}

impl DeviceSpec {
    pub fn is_glob(&self) -> bool {
        self.source
            .to_str()
            .is_some_and(|s| s.contains(['*', '?', '[']))
    }
}

/// A host file or directory bound into the container (read-only unless
/// `writable`), or every entry a glob's last component matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// A host path, or a glob in its last component
    /// (`/usr/lib/x86_64-linux-gnu/librte_*.so.23*`), expanded at hook time.
    pub source: PathBuf,
    /// Where it appears; for a glob, the directory its matches appear in
    /// (by default the glob's own directory).
    pub target: PathBuf,
    /// Bound read-write (a hugetlbfs, a shared ring directory); never a
    /// glob, never under a preloaded library.
    pub writable: bool,
}

impl MountSpec {
    pub fn is_glob(&self) -> bool {
        is_glob(&self.source)
    }
}

fn is_glob(path: &Path) -> bool {
    path.to_str().is_some_and(|s| s.contains(['*', '?', '[']))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    #[serde(default)]
    devices: Vec<RawPath>,
    #[serde(default)]
    mounts: Vec<RawPath>,
    #[serde(default)]
    preload: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    requires: Vec<String>,
    allow_namespaces: Option<Vec<String>>,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    rlimits: BTreeMap<String, RawLimit>,
    #[serde(default)]
    bpffs: bool,
}

/// `"unlimited"` or a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawLimit {
    Number(u64),
    Word(String),
}

/// `"/path"` (same path on both sides) or `{ source = "...", target = "..." }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPath {
    Same(String),
    Pair(RawPair),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    source: String,
    /// Required for devices; for mounts it defaults to the source (for a
    /// glob, the glob's directory).
    target: Option<String>,
    writable: Option<bool>,
}

type KeyError = (&'static str, String);

impl Profile {
    pub(crate) fn validate(name: &str, raw: RawProfile) -> Result<Profile, KeyError> {
        check_network_name(name)
            .map_err(|m| ("name", m.replace("network name", "profile name")))?;
        let mut devices = Vec::new();
        for entry in raw.devices {
            let device = match entry {
                RawPath::Same(source) => DeviceSpec {
                    source: absolute(&source).map_err(|m| ("devices", m))?,
                    target: None,
                },
                RawPath::Pair(pair) => {
                    if pair.writable.is_some() {
                        return Err((
                            "devices",
                            format!("{}: writable is for mounts", pair.source),
                        ));
                    }
                    let Some(to) = pair.target else {
                        return Err((
                            "devices",
                            format!("{}: a table needs a target", pair.source),
                        ));
                    };
                    DeviceSpec {
                        source: absolute(&pair.source).map_err(|m| ("devices", m))?,
                        target: Some(target(&to).map_err(|m| ("devices", m))?),
                    }
                }
            };
            if device.is_glob() && device.target.is_some() {
                return Err((
                    "devices",
                    format!("{}: a glob cannot have one target", device.source.display()),
                ));
            }
            devices.push(device);
        }
        let mut mounts = Vec::new();
        for entry in raw.mounts {
            let (source, to, writable) = match entry {
                RawPath::Same(path) => (path, None, false),
                RawPath::Pair(pair) => (pair.source, pair.target, pair.writable.unwrap_or(false)),
            };
            let source = absolute(&source).map_err(|m| ("mounts", m))?;
            let glob = is_glob(&source);
            let parent = source.parent().unwrap_or(Path::new("/"));
            if glob && is_glob(parent) {
                return Err((
                    "mounts",
                    format!(
                        "{}: a glob may match only the last component",
                        source.display()
                    ),
                ));
            }
            if glob && writable {
                return Err((
                    "mounts",
                    format!(
                        "{}: a glob cannot be writable (writable is for one directory, such as a hugetlbfs; never for libraries)",
                        source.display()
                    ),
                ));
            }
            let target = match (to, glob) {
                (Some(to), _) => target(&to).map_err(|m| ("mounts", m))?,
                (None, true) => parent.to_owned(),
                (None, false) => source.clone(),
            };
            mounts.push(MountSpec {
                source,
                target,
                writable,
            });
        }
        // A glob's target is a directory its matches land in, which other
        // globs may share.
        let mut targets: Vec<&Path> = mounts
            .iter()
            .filter(|m| !m.is_glob())
            .map(|m| m.target.as_path())
            .collect();
        targets.extend(devices.iter().filter_map(|d| d.target.as_deref()));
        for (i, t) in targets.iter().enumerate() {
            if targets[..i].contains(t) {
                return Err((
                    "mounts",
                    format!("{} is the target of two entries", t.display()),
                ));
            }
        }
        let preload = raw
            .preload
            .iter()
            .map(|p| {
                let path = absolute(p)?;
                let Some(mount) = mounts.iter().find(|m| mounts_path(m, &path)) else {
                    return Err(format!(
                        "{} is not mounted by this profile: add it to mounts",
                        path.display()
                    ));
                };
                if mount.writable {
                    return Err(format!(
                        "{} lies on the writable mount {}: libraries are never writable",
                        path.display(),
                        mount.target.display()
                    ));
                }
                Ok(path)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ("preload", m))?;
        for (key, value) in &raw.env {
            if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
                return Err((
                    "env",
                    format!("{key:?} is not a usable environment variable"),
                ));
            }
        }
        let requires = raw
            .requires
            .iter()
            .map(|p| absolute(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ("requires", m))?;
        let mut capabilities: Vec<String> = Vec::new();
        for cap in &raw.capabilities {
            let bare = cap.strip_prefix("CAP_").unwrap_or(cap);
            if !CAPABILITIES.contains(&bare) {
                return Err((
                    "capabilities",
                    format!("{cap:?} is not a Linux capability (write them as CAP_NET_RAW)"),
                ));
            }
            let spelled = format!("CAP_{bare}");
            if !capabilities.contains(&spelled) {
                capabilities.push(spelled);
            }
        }
        let mut rlimits = Vec::new();
        for (key, value) in &raw.rlimits {
            let Some(name) = RLIMITS.iter().find(|n| **n == key.as_str()) else {
                return Err((
                    "rlimits",
                    format!(
                        "{key:?} is not a resource limit (one of {})",
                        RLIMITS.join(", ")
                    ),
                ));
            };
            let value = match value {
                RawLimit::Number(n) => Some(*n),
                RawLimit::Word(w) if w == "unlimited" => None,
                RawLimit::Word(w) => {
                    return Err((
                        "rlimits",
                        format!("{key} = {w:?}: a number or \"unlimited\""),
                    ))
                }
            };
            rlimits.push(Rlimit { name, value });
        }
        Ok(Profile {
            name: name.to_owned(),
            devices,
            mounts,
            preload,
            env: raw.env,
            requires,
            allow_namespaces: crate::config::validate_namespaces(raw.allow_namespaces)?,
            capabilities,
            rlimits,
            bpffs: raw.bpffs,
        })
    }
}

/// Whether `mount` puts something at container path `path`: inside its
/// target, or for a glob, a match of the glob in its target directory.
fn mounts_path(mount: &MountSpec, path: &Path) -> bool {
    if !mount.is_glob() {
        return path.starts_with(&mount.target);
    }
    let pattern = mount
        .source
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    path.parent() == Some(mount.target.as_path())
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|name| glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name)))
}

/// An absolute path without `.`, `..` or empty components.
fn absolute(text: &str) -> Result<PathBuf, String> {
    let plain = text.strip_prefix('/').is_some_and(|rest| {
        rest.split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
    });
    if !plain || text.contains('\0') {
        return Err(format!("{text:?} is not a plain absolute path"));
    }
    Ok(PathBuf::from(text))
}

/// A container path to mount onto: absolute, plain, and not `/` itself.
fn target(text: &str) -> Result<PathBuf, String> {
    if text == "/" {
        return Err("cannot mount over the container's root".into());
    }
    absolute(text)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/nsbypass/config.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            r#"
[profiles.onload]
devices  = ["/dev/onload", "/dev/onload_epoll", "/dev/sfc_char", "/dev/infiniband/uverbs*"]
mounts   = ["/usr/lib64/libonload.so", "/usr/lib64/libonload_ext.so",
            { source = "/opt/onload/bin", target = "/usr/local/onload/bin" }]
preload  = ["/usr/lib64/libonload.so"]
env      = { EF_POLL_USEC = "100000" }
requires = ["/sys/module/onload"]
"#,
        )
        .unwrap();
        let p = &c.profiles["onload"];
        assert_eq!(p.devices.len(), 4);
        assert!(p.devices[3].is_glob() && !p.devices[0].is_glob());
        assert_eq!(p.mounts[2].target, Path::new("/usr/local/onload/bin"));
        assert_eq!(p.mounts[0].source, p.mounts[0].target);
        assert_eq!(p.env["EF_POLL_USEC"], "100000");
        assert_eq!(p.requires, [Path::new("/sys/module/onload")]);
    }

    #[test]
    fn every_profile_error_names_profile_and_key() {
        let cases = [
            (
                "devices = [\"dev/onload\"]",
                "profile p: devices: \"dev/onload\" is not a plain absolute path",
            ),
            (
                "devices = [\"/dev/../etc/shadow\"]",
                "devices: \"/dev/../etc/shadow\" is not a plain absolute path",
            ),
            (
                "devices = [{ source = \"/dev/x*\", target = \"/dev/y\" }]",
                "devices: /dev/x*: a glob cannot have one target",
            ),
            (
                "mounts = [\"/usr/lib/./x\"]",
                "mounts: \"/usr/lib/./x\" is not a plain absolute path",
            ),
            (
                "mounts = [{ source = \"/a\", target = \"/\" }]",
                "mounts: cannot mount over the container's root",
            ),
            (
                "mounts = [\"/lib/*/x.so\"]",
                "mounts: /lib/*/x.so: a glob may match only the last component",
            ),
            (
                "mounts = [{ source = \"/lib/*.so\", target = \"/l\", writable = true }]",
                "mounts: /lib/*.so: a glob cannot be writable",
            ),
            (
                "mounts = [{ source = \"/hp\", writable = true }]\npreload = [\"/hp/lib.so\"]",
                "preload: /hp/lib.so lies on the writable mount /hp: libraries are never writable",
            ),
            (
                "capabilities = [\"CAP_BFP\"]",
                "capabilities: \"CAP_BFP\" is not a Linux capability",
            ),
            (
                "rlimits = { memlok = 1 }",
                "rlimits: \"memlok\" is not a resource limit",
            ),
            (
                "rlimits = { memlock = \"lots\" }",
                "rlimits: memlock = \"lots\": a number or \"unlimited\"",
            ),
            (
                "devices = [{ source = \"/dev/x\" }]",
                "devices: /dev/x: a table needs a target",
            ),
            (
                "mounts = [\"/a\", { source = \"/b\", target = \"/a\" }]",
                "mounts: /a is the target of two entries",
            ),
            (
                "mounts = [{ source = \"/a\", targt = \"/b\" }]",
                "data did not match any variant",
            ),
            (
                "preload = [\"/usr/lib/libx.so\"]",
                "preload: /usr/lib/libx.so is not mounted by this profile: add it to mounts",
            ),
            (
                "env = { \"A=B\" = \"1\" }",
                "env: \"A=B\" is not a usable environment variable",
            ),
            (
                "requires = [\"sys/module/x\"]",
                "requires: \"sys/module/x\" is not a plain absolute path",
            ),
            ("device = [\"/dev/x\"]", "unknown field `device`"),
        ];
        for (body, want) in cases {
            let got = parse(&format!("[profiles.p]\n{body}\n")).unwrap_err();
            assert!(got.contains(want), "for {body}\n got: {got}\nwant: {want}");
            assert!(got.starts_with("config /etc/nsbypass/config.toml"), "{got}");
        }
        let got = parse("[profiles.\"a/b\"]\n").unwrap_err();
        assert!(
            got.contains("profile a/b: name: profile name \"a/b\" may not contain '/'"),
            "{got}"
        );
    }

    #[test]
    fn globs_land_in_a_directory_and_capabilities_and_limits_are_spelled_as_the_spec_does() {
        let c = parse(
            r#"
[profiles.dpdk]
mounts = ["/usr/lib/x86_64-linux-gnu/librte_*.so.23*",
          { source = "/usr/lib64/libx*.so*", target = "/usr/lib/x86_64-linux-gnu" },
          { source = "/dev/hugepages", writable = true }]
preload = ["/usr/lib/x86_64-linux-gnu/librte_eal.so.23"]
capabilities = ["NET_RAW", "CAP_BPF", "CAP_NET_RAW"]
rlimits = { memlock = "unlimited", nofile = 4096 }
bpffs = true
"#,
        )
        .unwrap();
        let p = &c.profiles["dpdk"];
        assert!(p.mounts[0].is_glob() && !p.mounts[2].is_glob());
        assert_eq!(p.mounts[0].target, Path::new("/usr/lib/x86_64-linux-gnu"));
        assert_eq!(p.mounts[1].target, Path::new("/usr/lib/x86_64-linux-gnu"));
        assert!(p.mounts[2].writable && !p.mounts[0].writable);
        assert_eq!(p.mounts[2].target, Path::new("/dev/hugepages"));
        assert_eq!(p.capabilities, ["CAP_NET_RAW", "CAP_BPF"]);
        assert_eq!(p.rlimits[0].spec_name(), "RLIMIT_MEMLOCK");
        assert_eq!(p.rlimits[0].spec_value(), u64::MAX);
        assert_eq!(p.rlimits[0].ulimit_flag(), "--ulimit memlock=-1");
        assert_eq!(p.rlimits[1].ulimit_flag(), "--ulimit nofile=4096");
        assert!(p.bpffs);
        let got = parse(
            "[profiles.p]
mounts = [\"/l/*.so\"]
preload = [\"/l/x.a\"]
",
        )
        .unwrap_err();
        assert!(
            got.contains("/l/x.a is not mounted by this profile"),
            "{got}"
        );
    }

    #[test]
    fn preload_may_lie_inside_a_mounted_directory() {
        let c = parse(
            "[profiles.p]\nmounts = [\"/opt/stack/lib\"]\npreload = [\"/opt/stack/lib/libx.so\"]\n",
        )
        .unwrap();
        assert_eq!(c.profiles["p"].preload.len(), 1);
    }
}
