//! The OCI state a runtime writes to a hook's stdin.
//!
//! Parsed leniently on purpose: crun adds a `root` key and reports `status`
//! values that oci-spec's strict enum rejects, and podman's poststop sends no
//! pid. Only what nsbypass uses is read; everything else is ignored.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::names::check_container_id;

/// Hook stdin larger than this is not a state document.
pub const MAX_STATE_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state on stdin is not OCI state JSON: {0}")]
    Json(String),
    #[error("state on stdin: {0}")]
    Invalid(String),
}

/// What a hook learns about its container from stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub id: String,
    pub status: String,
    /// The container's init as seen from the host; absent at poststop.
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawState {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    pid: Option<i64>,
    bundle: PathBuf,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

impl State {
    pub fn parse(bytes: &[u8]) -> Result<State, StateError> {
        if bytes.len() > MAX_STATE_BYTES {
            return Err(StateError::Invalid(format!(
                "{} bytes is more than the {MAX_STATE_BYTES} a state document may have",
                bytes.len()
            )));
        }
        let raw: RawState =
            serde_json::from_slice(bytes).map_err(|e| StateError::Json(e.to_string()))?;
        check_container_id(&raw.id).map_err(StateError::Invalid)?;
        if !raw.bundle.is_absolute() {
            return Err(StateError::Invalid(format!(
                "bundle {} is not an absolute path",
                raw.bundle.display().to_string().escape_debug()
            )));
        }
        let pid = match raw.pid {
            None | Some(0) => None,
            Some(p) if p > 0 && p <= i64::from(i32::MAX) => Some(p as i32),
            Some(p) => return Err(StateError::Invalid(format!("pid {p} is not a process id"))),
        };
        Ok(State {
            id: raw.id,
            status: raw.status.unwrap_or_default(),
            pid,
            bundle: raw.bundle,
            annotations: raw.annotations.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_state() {
        let s = State::parse(
            br#"{"ociVersion":"1.0.2-dev","id":"c1","status":"creating","pid":4242,"bundle":"/b","annotations":{"nsbypass.io/network":"fast"}}"#,
        )
        .unwrap();
        assert_eq!(s.id, "c1");
        assert_eq!(s.pid, Some(4242));
        assert_eq!(s.annotations["nsbypass.io/network"], "fast");
    }

    #[test]
    fn crun_and_podman_quirks_are_accepted() {
        // crun: extra "root" key, status "created"; podman poststop: no pid, no annotations.
        let s = State::parse(br#"{"ociVersion":"1.0.0","id":"c","status":"created","pid":7,"bundle":"/b","root":"/r"}"#).unwrap();
        assert_eq!(s.status, "created");
        let s = State::parse(br#"{"ociVersion":"1.0.0","id":"c","status":"stopped","bundle":"/b","annotations":null}"#).unwrap();
        assert_eq!(s.pid, None);
        let s = State::parse(br#"{"id":"c","status":"stopped","pid":0,"bundle":"/b"}"#).unwrap();
        assert_eq!(s.pid, None);
    }

    #[test]
    fn malformed_state_is_one_clear_error() {
        for (input, want) in [
            (&b"not json"[..], "not OCI state JSON"),
            (br#"{"id":"c"}"#, "missing field `bundle`"),
            (
                br#"{"id":"a/../x","bundle":"/b"}"#,
                "container id \"a/../x\" may not contain '/'",
            ),
            (
                br#"{"id":"c","bundle":"rel"}"#,
                "bundle rel is not an absolute path",
            ),
            // Caught by the one-line check of fuzz/fuzz_targets/state.rs.
            (
                br#"{"id":"c","bundle":"a\nb"}"#,
                "bundle a\\nb is not an absolute path",
            ),
            (
                br#"{"id":"c","bundle":"/b","pid":-5}"#,
                "pid -5 is not a process id",
            ),
        ] {
            let e = State::parse(input).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
