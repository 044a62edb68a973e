//! What setup did, written down for teardown, which gets no pid.
//!
//! Layout under `state_dir`:
//!
//! ```text
//! lock                     flock held by every hook while it reads or changes state
//! leases/<network>/<addr>  one file per leased address (see lease.rs)
//! netns/<key>.json         one per wired network namespace: its links and member containers
//! containers/<id>.json     which namespace a container joined (poststop starts here)
//! ```
//!
//! Setup is keyed by the namespace, not the container: containers of a pod
//! share one namespace and so one link per network, which lives until the
//! last of them stops. Every write goes to a temporary file first and is
//! renamed into place, so a hook killed mid-write (a runtime's hook
//! timeout) leaves either the old record or the new. There is no fsync: the
//! state directory belongs on tmpfs, where a power loss also ends every
//! container the records describe.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};
use nsutil::netlink::Link;
use nsutil::ns::NetnsId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lease::FileLeases;

/// A state directory operation that failed, with the path it touched.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {message}", path.display())]
pub struct RecordError {
    pub op: &'static str,
    pub path: PathBuf,
    pub message: String,
}

impl RecordError {
    fn new(op: &'static str, path: &Path, message: impl ToString) -> RecordError {
        RecordError {
            op,
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// What setup did for one container: the namespace record it is a member
/// of, and the profiles carried into it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<ProfilesRecord>,
}

/// Profiles applied to one container instance. Nothing needs undoing at
/// poststop (the mounts and device grants die with the container's mount
/// namespace and cgroup); the record makes a second setup stage a no-op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfilesRecord {
    /// The container init they were applied for, and its mount namespace
    /// (a pid alone can be reused).
    pub pid: i32,
    pub mntns: u64,
    pub names: Vec<String>,
}

/// One wired network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsRecord {
    pub dev: u64,
    pub ino: u64,
    /// Containers using the namespace, by id.
    pub members: BTreeMap<String, Member>,
    pub links: Vec<LinkRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The networks this container asked for.
    pub networks: Vec<String>,
    /// `/proc/<pid>/ns/net` of the container's init: the member runs while
    /// this leads to the namespace (a reused pid leads elsewhere).
    pub process: PathBuf,
    /// The spec's namespace path, when it led to the namespace at setup: a
    /// way back in that may outlive every member (a pinned pod namespace).
    pub pinned: Option<PathBuf>,
}

/// A MACVLAN nsbypass created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub network: String,
    pub ifname: String,
    /// Interface index inside the namespace: fixed for the link's life,
    /// unlike its name or MAC (a container with NET_ADMIN may change
    /// either; passthru links take the parent's MAC).
    pub index: u32,
    /// `aa:bb:...` as the kernel reported it after creation.
    pub mac: String,
    pub parent: String,
    pub addresses: Vec<IpNet>,
    /// The container whose setup created it.
    pub created_by: String,
}

impl LinkRecord {
    /// This link among the namespace's `present` links, if it is still there.
    pub fn find_in<'a>(&self, present: &'a [Link]) -> Option<&'a Link> {
        present
            .iter()
            .find(|l| l.index == self.index && l.kind.as_deref() == Some("macvlan"))
    }
}

impl NetnsRecord {
    pub fn new(id: NetnsId) -> NetnsRecord {
        NetnsRecord {
            dev: id.dev,
            ino: id.ino,
            members: BTreeMap::new(),
            links: Vec::new(),
        }
    }

    pub fn id(&self) -> NetnsId {
        NetnsId {
            dev: self.dev,
            ino: self.ino,
        }
    }

    pub fn key(&self) -> String {
        self.id().key()
    }

    pub fn link(&self, network: &str) -> Option<&LinkRecord> {
        self.links.iter().find(|l| l.network == network)
    }

    /// Networks some member still asks for.
    pub fn wanted_networks(&self) -> BTreeSet<&str> {
        self.members
            .values()
            .flat_map(|m| m.networks.iter().map(String::as_str))
            .collect()
    }

    /// Every recorded way back into the namespace, without repeats. Teardown
    /// trusts one only while it leads to the recorded namespace identity.
    pub fn netns_paths(&self) -> Vec<&Path> {
        let mut paths: Vec<&Path> = Vec::new();
        let all = self
            .members
            .values()
            .flat_map(|m| std::iter::once(&m.process).chain(&m.pinned));
        for path in all {
            if !paths.contains(&path.as_path()) {
                paths.push(path);
            }
        }
        paths
    }
}

/// The locked state directory. Dropping it releases the lock.
pub struct StateDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl StateDir {
    /// Creates `root` if needed (mode 0700) and waits for its lock. Every
    /// hook on the host serialises here, which is what makes concurrent
    /// setups hand out distinct addresses and agree on shared namespaces.
    pub fn lock(root: &Path) -> Result<StateDir, RecordError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| RecordError::new("create", root, e))?;
        // Root writes and removes files here by names that containers
        // choose: nobody else may be able to plant links in it.
        let meta =
            std::fs::symlink_metadata(root).map_err(|e| RecordError::new("stat", root, e))?;
        if !meta.is_dir()
            || meta.uid() != nix::unistd::geteuid().as_raw()
            || meta.mode() & 0o022 != 0
        {
            return Err(RecordError::new(
                "use",
                root,
                "state_dir must be a directory owned by the hook's user and writable by nobody else",
            ));
        }
        let path = root.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| RecordError::new("open", &path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| RecordError::new("lock", &path, e))?;
        Ok(StateDir {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    /// Whether `root` holds a record of `container`, without taking the lock:
    /// a cheap check for poststop of containers that never asked for anything.
    pub fn has_container(root: &Path, container: &str) -> bool {
        root.join("containers")
            .join(format!("{container}.json"))
            .exists()
    }

    /// A private directory for files that exist only long enough to be
    /// bind-mounted (the composed ld.so.preload).
    pub fn scratch(&self) -> Result<PathBuf, RecordError> {
        let dir = self.root.join("tmp");
        std::fs::create_dir_all(&dir).map_err(|e| RecordError::new("create", &dir, e))?;
        Ok(dir)
    }

    pub fn leases(&self) -> FileLeases {
        FileLeases::new(self.root.join("leases"))
    }

    fn container_path(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(format!("{id}.json"))
    }

    fn netns_path(&self, key: &str) -> PathBuf {
        self.root.join("netns").join(format!("{key}.json"))
    }

    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, RecordError> {
        read_json(&self.container_path(id))
    }

    pub fn put_container(&self, id: &str, record: &ContainerRecord) -> Result<(), RecordError> {
        write_json(&self.container_path(id), record)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), RecordError> {
        remove(&self.container_path(id))
    }

    pub fn netns(&self, key: &str) -> Result<Option<NetnsRecord>, RecordError> {
        read_json(&self.netns_path(key))
    }

    /// Writes `record`, or removes it once nothing is left in it.
    pub fn put_netns(&self, record: &NetnsRecord) -> Result<(), RecordError> {
        let path = self.netns_path(&record.key());
        if record.members.is_empty() && record.links.is_empty() {
            remove(&path)
        } else {
            write_json(&path, record)
        }
    }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, RecordError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RecordError::new("parse", path, e)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RecordError::new("read", path, e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RecordError> {
    let dir = path.parent().expect("record paths have a directory");
    std::fs::create_dir_all(dir).map_err(|e| RecordError::new("create", dir, e))?;
    let tmp = path.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(value).expect("records serialise");
    let mut file = File::create(&tmp).map_err(|e| RecordError::new("create", &tmp, e))?;
    file.write_all(&body)
        .map_err(|e| RecordError::new("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RecordError::new("rename", path, e))
}

fn remove(path: &Path) -> Result<(), RecordError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(RecordError::new("remove", path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_empty_namespaces_disappear() {
        let dir = tempfile::TempDir::new().unwrap();
        let state = StateDir::lock(&dir.path().join("state")).unwrap();
        assert_eq!(state.container("c1").unwrap(), None);

        let mut ns = NetnsRecord::new(NetnsId {
            dev: 4,
            ino: 4026532000,
        });
        ns.members.insert(
            "c1".into(),
            Member {
                networks: vec!["fast".into()],
                process: "/proc/1/ns/net".into(),
                pinned: None,
            },
        );
        state.put_netns(&ns).unwrap();
        state
            .put_container(
                "c1",
                &ContainerRecord {
                    netns: Some(ns.key()),
                    profiles: None,
                },
            )
            .unwrap();
        assert_eq!(state.netns(&ns.key()).unwrap(), Some(ns.clone()));
        assert_eq!(
            state.container("c1").unwrap().unwrap().netns.as_deref(),
            Some("4-4026532000")
        );

        ns.members.clear();
        state.put_netns(&ns).unwrap();
        assert_eq!(state.netns(&ns.key()).unwrap(), None);
        state.remove_container("c1").unwrap();
        state.remove_container("c1").unwrap();
        assert_eq!(state.container("c1").unwrap(), None);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let state = StateDir::lock(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("containers")).unwrap();
        std::fs::write(dir.path().join("containers/c1.json"), "{").unwrap();
        let e = state.container("c1").unwrap_err().to_string();
        assert!(
            e.starts_with("parse ") && e.contains("containers/c1.json"),
            "{e}"
        );
    }
}
