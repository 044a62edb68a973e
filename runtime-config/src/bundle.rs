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
    /// `linux.namespaces[type=network].path`: the container joins this netns
    /// instead of getting a new one (pods, `ip netns`, CNI-managed sandboxes).
    pub netns_path: Option<PathBuf>,
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
}

#[derive(Deserialize, Default)]
struct RawProcess {
    #[serde(default)]
    env: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct RawRoot {
    path: PathBuf,
}

#[derive(Deserialize, Default)]
struct RawLinux {
    #[serde(default)]
    namespaces: Option<Vec<RawNamespace>>,
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
        let raw: RawSpec = serde_json::from_slice(spec).map_err(|e| BundleError::Json {
            path: spec_path(bundle),
            message: e.to_string(),
        })?;
        let netns_path = raw
            .linux
            .and_then(|l| l.namespaces)
            .unwrap_or_default()
            .into_iter()
            .find(|ns| ns.kind == "network")
            .and_then(|ns| ns.path);
        Ok(Bundle {
            annotations: raw.annotations.unwrap_or_default(),
            env: raw.process.and_then(|p| p.env).unwrap_or_default(),
            root: raw.root.map(|r| bundle.join(r.path)),
            netns_path,
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
        assert_eq!(b.netns_path, Some(PathBuf::from("/run/netns/pod")));
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
