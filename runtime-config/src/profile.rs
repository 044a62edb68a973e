//! Bypass-stack profiles: the device nodes, host files and preload a stack
//! like Onload needs inside a container.
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
}

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

/// A host file or directory bound read-only into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: PathBuf,
    pub target: PathBuf,
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
    target: String,
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
                RawPath::Pair(pair) => DeviceSpec {
                    source: absolute(&pair.source).map_err(|m| ("devices", m))?,
                    target: Some(target(&pair.target).map_err(|m| ("devices", m))?),
                },
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
            let (source, to) = match entry {
                RawPath::Same(path) => (path.clone(), path),
                RawPath::Pair(pair) => (pair.source, pair.target),
            };
            let source = absolute(&source).map_err(|m| ("mounts", m))?;
            if source.to_str().is_some_and(|s| s.contains(['*', '?', '['])) {
                return Err((
                    "mounts",
                    format!("{}: globs are for devices only", source.display()),
                ));
            }
            mounts.push(MountSpec {
                source,
                target: target(&to).map_err(|m| ("mounts", m))?,
            });
        }
        let mut targets: Vec<&Path> = mounts.iter().map(|m| m.target.as_path()).collect();
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
                if !mounts.iter().any(|m| path.starts_with(&m.target)) {
                    return Err(format!(
                        "{} is not mounted by this profile: add it to mounts",
                        path.display()
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
        Ok(Profile {
            name: name.to_owned(),
            devices,
            mounts,
            preload,
            env: raw.env,
            requires,
            allow_namespaces: crate::config::validate_namespaces(raw.allow_namespaces)?,
        })
    }
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
                "mounts = [\"/lib/*.so\"]",
                "mounts: /lib/*.so: globs are for devices only",
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
    fn preload_may_lie_inside_a_mounted_directory() {
        let c = parse(
            "[profiles.p]\nmounts = [\"/opt/stack/lib\"]\npreload = [\"/opt/stack/lib/libx.so\"]\n",
        )
        .unwrap();
        assert_eq!(c.profiles["p"].preload.len(), 1);
    }
}
