//! The few fields of a bundle's `config.json` that nsbypass reads.
//!
//! A minimal serde view rather than oci-spec's `Spec`: runtimes and engines put
//! values in `config.json` (new capabilities, namespace kinds) that a strict
//! model rejects, and a hook must never fail a container over a field it does
//! not use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Spec files larger than this are refused rather than read into memory.
pub const MAX_SPEC_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an OCI runtime spec: {message}")]
    Json { path: PathBuf, message: String },
}

/// What nsbypass needs from `config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub annotations: BTreeMap<String, String>,
    /// `process.env`, `KEY=VALUE` strings.
    pub env: Vec<String>,
    /// `root.path`, made absolute against the bundle directory.
    pub root: Option<PathBuf>,
    /// `root.readonly`: the runtime makes the rootfs read-only, and
    /// nsbypass must not write it either.
    pub readonly: bool,
    /// `linux.namespaces[type=network].path`: the container joins this netns
    /// instead of getting a new one (pods, `ip netns`, CNI-managed sandboxes).
    pub netns_path: Option<PathBuf>,
    /// `mounts`, in spec order. An entry of an odd shape (no destination, a
    /// non-string option) is left out rather than failing the container.
    pub mounts: Vec<SpecMount>,
    /// `linux.devices`, in spec order; odd entries are left out likewise.
    pub devices: Vec<SpecDevice>,
    /// `process.capabilities`, each set as listed (absent: empty).
    pub capabilities: SpecCapabilities,
    /// `process.rlimits`; odd entries are left out.
    pub rlimits: Vec<SpecRlimit>,
    /// `process.user.uid` (absent: 0).
    pub uid: u32,
}

/// The capability sets of `process.capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SpecCapabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// One `process.rlimits` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpecRlimit {
    /// `RLIMIT_MEMLOCK`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub soft: u64,
    pub hard: u64,
}

/// One `mounts` entry of the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SpecMount {
    pub destination: PathBuf,
    #[serde(default)]
    pub source: Option<PathBuf>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

impl SpecMount {
    /// A bind mount, as runc tells one: type `bind` or a `bind`/`rbind` option.
    pub fn is_bind(&self) -> bool {
        self.kind.as_deref() == Some("bind")
            || self
                .options
                .iter()
                .flatten()
                .any(|o| o == "bind" || o == "rbind")
    }
}

/// One `linux.devices` entry of the spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct SpecDevice {
    pub path: PathBuf,
    /// `c`, `b`, `u` or `p`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
}

#[derive(Deserialize, Default)]
struct RawSpec {
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    process: Option<RawProcess>,
    #[serde(default)]
    root: Option<RawRoot>,
    #[serde(default)]
    linux: Option<RawLinux>,
    #[serde(default)]
    mounts: Lenient<SpecMount>,
}

#[derive(Deserialize, Default)]
struct RawProcess {
    /// Checked for strings by hand, to say which entry is not one.
    #[serde(default)]
    env: Option<Vec<serde_json::Value>>,
    /// Read leniently: an odd shape is one nsbypass finds nothing in.
    #[serde(default)]
    capabilities: Option<serde_json::Value>,
    #[serde(default)]
    rlimits: Lenient<SpecRlimit>,
    #[serde(default)]
    user: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawRoot {
    path: PathBuf,
    #[serde(default)]
    readonly: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawLinux {
    #[serde(default)]
    namespaces: Option<Vec<RawNamespace>>,
    #[serde(default)]
    devices: Lenient<SpecDevice>,
}

/// A list of which only the well-formed entries are kept; anything but a
/// list reads as empty. For fields nsbypass only looks things up in: an odd
/// entry there is one nsbypass does not find, never a failed container.
struct Lenient<T>(Vec<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(Vec::new())
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = match serde_json::Value::deserialize(d)? {
            serde_json::Value::Array(entries) => entries,
            _ => Vec::new(),
        };
        Ok(Lenient(
            entries
                .into_iter()
                .filter_map(|e| serde_json::from_value(e).ok())
                .collect(),
        ))
    }
}

#[derive(Deserialize)]
struct RawNamespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<PathBuf>,
}

/// Path of the spec inside a bundle.
pub fn spec_path(bundle: &Path) -> PathBuf {
    bundle.join("config.json")
}

/// Reads `<bundle>/config.json` as bytes, so the caller can decide cheaply
/// whether it needs parsing at all (see [`mentions_nsbypass`]).
pub fn read_spec_bytes(bundle: &Path) -> Result<Vec<u8>, BundleError> {
    use std::io::Read;
    let path = spec_path(bundle);
    let read = || -> std::io::Result<Vec<u8>> {
        let file = std::fs::File::open(&path)?;
        let mut bytes = Vec::new();
        file.take(MAX_SPEC_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            return Err(std::io::Error::other(format!(
                "larger than {MAX_SPEC_BYTES} bytes"
            )));
        }
        Ok(bytes)
    };
    read().map_err(|source| BundleError::Read { path, source })
}

/// True when the spec could carry an nsbypass request. Lets a container that
/// asks for nothing leave the hook without a JSON parse.
pub fn mentions_nsbypass(spec: &[u8]) -> bool {
    contains(spec, b"nsbypass.io/") || contains(spec, b"NSBYPASS_")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Bundle {
    /// Parses spec bytes read from `bundle`.
    pub fn parse(bundle: &Path, spec: &[u8]) -> Result<Bundle, BundleError> {
        let fail = |message: String| BundleError::Json {
            path: spec_path(bundle),
            message,
        };
        let raw: RawSpec = serde_json::from_slice(spec).map_err(|e| fail(e.to_string()))?;
        let mut process = raw.process.unwrap_or_default();
        let capabilities = process
            .capabilities
            .take()
            .and_then(|c| serde_json::from_value(c).ok())
            .unwrap_or_default();
        let rlimits = std::mem::take(&mut process.rlimits.0);
        let uid = process
            .user
            .as_ref()
            .and_then(|u| u.get("uid"))
            .and_then(serde_json::Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
            .unwrap_or(0);
        // Every runtime refuses such an env: say which entry, not a column.
        let env = process
            .env
            .take()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, e)| match e {
                serde_json::Value::String(s) => Ok(s),
                other => Err(fail(format!("process.env[{i}] is not a string: {other}"))),
            })
            .collect::<Result<Vec<String>, BundleError>>()?;
        let (namespaces, devices) = match raw.linux {
            Some(l) => (l.namespaces.unwrap_or_default(), l.devices.0),
            None => Default::default(),
        };
        let netns_path = namespaces
            .into_iter()
            .find(|ns| ns.kind == "network")
            .and_then(|ns| ns.path);
        Ok(Bundle {
            annotations: raw.annotations.unwrap_or_default(),
            env,
            readonly: raw.root.as_ref().and_then(|r| r.readonly).unwrap_or(false),
            root: raw.root.map(|r| bundle.join(r.path)),
            netns_path,
            mounts: raw.mounts.0,
            devices,
            capabilities,
            rlimits,
            uid,
        })
    }

    /// The value of `key` in the process environment, if set.
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_nsbypass_needs_and_ignores_the_rest() {
        let spec = br#"{
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "env": ["PATH=/bin", "NSBYPASS_NETWORK=fast", "NSBYPASS_NETWORK=slow"],
                        "capabilities": {"bounding": ["CAP_FROM_THE_FUTURE"]}},
            "root": {"path": "rootfs", "readonly": true},
            "annotations": {"nsbypass.io/network": "fast"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/run/netns/pod"}, {"type": "time"}]}
        }"#;
        assert!(mentions_nsbypass(spec));
        let b = Bundle::parse(Path::new("/bundles/c1"), spec).unwrap();
        assert_eq!(b.annotations["nsbypass.io/network"], "fast");
        assert_eq!(
            b.env_var("NSBYPASS_NETWORK"),
            Some("slow"),
            "the last assignment wins, as in execve"
        );
        assert_eq!(b.env_var("NSBYPASS"), None);
        assert_eq!(b.root, Some(PathBuf::from("/bundles/c1/rootfs")));
        assert!(b.readonly);
        assert_eq!(b.netns_path, Some(PathBuf::from("/run/netns/pod")));
    }

    #[test]
    fn reads_mounts_and_devices_in_order() {
        let spec = br#"{
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/usr/lib64/librt.so", "type": "bind", "source": "/host/librt.so",
                 "options": ["bind", "ro"], "uidMappings": [], "future": {"x": 1}},
                {"destination": "/data", "source": "/srv/data", "options": ["rbind"]}
            ],
            "linux": {"devices": [
                {"path": "/dev/rtdev", "type": "c", "major": 1, "minor": 3, "fileMode": 438, "uid": 0},
                {"path": "/dev/sdz", "type": "b"}
            ]}
        }"#;
        let b = Bundle::parse(Path::new("/b"), spec).unwrap();
        assert_eq!(b.mounts.len(), 3);
        assert_eq!(
            b.mounts[1].destination,
            PathBuf::from("/usr/lib64/librt.so")
        );
        assert_eq!(b.mounts[1].source, Some(PathBuf::from("/host/librt.so")));
        assert_eq!(b.mounts[1].kind.as_deref(), Some("bind"));
        assert_eq!(
            b.mounts[1].options,
            Some(vec!["bind".to_owned(), "ro".to_owned()])
        );
        assert!(!b.mounts[0].is_bind() && b.mounts[1].is_bind() && b.mounts[2].is_bind());
        assert_eq!(
            b.devices,
            [
                SpecDevice {
                    path: "/dev/rtdev".into(),
                    kind: "c".into(),
                    major: Some(1),
                    minor: Some(3)
                },
                SpecDevice {
                    path: "/dev/sdz".into(),
                    kind: "b".into(),
                    major: None,
                    minor: None
                }
            ]
        );
    }

    #[test]
    fn odd_mounts_and_devices_are_left_out_never_fatal() {
        let spec = br#"{
            "mounts": [
                {"source": "/no/destination"},
                {"destination": "/x", "options": ["ro", 5]},
                {"destination": 7},
                "not an object",
                null,
                {"destination": "/kept", "source": null, "options": null, "type": null}
            ],
            "linux": {"devices": [
                {"path": "/dev/a", "type": "c", "major": "1", "minor": 3},
                {"path": "/dev/b"},
                {"path": "/dev/c", "type": "c", "major": -1, "minor": 1.5},
                {"path": "/dev/kept", "type": "u", "major": 10, "minor": 200}
            ]}
        }"#;
        let b = Bundle::parse(Path::new("/b"), spec).unwrap();
        assert_eq!(
            b.mounts,
            [SpecMount {
                destination: "/kept".into(),
                ..SpecMount::default()
            }]
        );
        assert_eq!(b.devices.len(), 1);
        assert_eq!(b.devices[0].path, PathBuf::from("/dev/kept"));
        for odd in [
            r#"{"mounts": {"destination": "/x"}}"#,
            r#"{"mounts": "none", "linux": {"devices": {"path": "/dev/x"}}}"#,
            r#"{"mounts": null, "linux": {"devices": null}}"#,
            r#"{"mounts": 3, "linux": {"devices": false}}"#,
        ] {
            let b = Bundle::parse(Path::new("/b"), odd.as_bytes()).unwrap();
            assert!(b.mounts.is_empty() && b.devices.is_empty(), "{odd}");
        }
    }

    #[test]
    fn an_env_entry_that_is_not_a_string_is_named() {
        let e = Bundle::parse(
            Path::new("/b"),
            br#"{"process":{"env":["NSBYPASS_NETWORK=fast", 5, null]}}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "/b/config.json: not an OCI runtime spec: process.env[1] is not a string: 5"
        );
    }

    #[test]
    fn a_spec_without_requests_is_recognised_without_parsing() {
        assert!(!mentions_nsbypass(
            br#"{"process":{"env":["PATH=/bin"]},"annotations":{"io.podman":"x"}}"#
        ));
        assert!(mentions_nsbypass(
            br#"{"process":{"env":["NSBYPASS_NETWORK=fast"]}}"#
        ));
    }

    #[test]
    fn empty_spec_and_bad_json() {
        let b = Bundle::parse(Path::new("/b"), b"{}").unwrap();
        assert_eq!(b, Bundle::default());
        let e = Bundle::parse(Path::new("/b"), b"{")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/b/config.json: not an OCI runtime spec"),
            "{e}"
        );
    }

    #[test]
    fn missing_spec_names_the_path() {
        let e = read_spec_bytes(Path::new("/nonexistent-bundle"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent-bundle/config.json: No such file"),
            "{e}"
        );
    }
}
