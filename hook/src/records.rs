//! What setup did and is about to do, written down for teardown (which
//! gets no pid), for the next setup and for reclaim.
//!
//! Layout under `state_dir`, every directory 0700 and reached only through
//! directory fds that never follow a symlink (see `nsutil::dir`):
//!
//! ```text
//! lock                     0600, flock held by every hook while it reads or changes state
//! leases/<network>/<addr>  one file per leased address (see lease.rs)
//! netns/<key>.json         one per wired network namespace: its links and member containers
//! containers/<id>.json     which namespace a container joined (poststop starts here)
//! shims/<network>.json     the host's own MACVLAN on a network with host_shim (see shim.rs)
//! pods/<digest>.json       which namespace holds a Kubernetes pod's derived MACs (see PodRecord)
//! tmp/                     temporaries and scratch files; anything here under the lock is a leftover
//! ```
//!
//! Setup is keyed by the namespace, not the container: containers of a pod
//! share one namespace and so one link per network, which lives until the
//! last of them stops.
//!
//! **Intent before effect.** Setup writes the namespace record with the
//! links it is about to make (network, name, MAC, address) marked
//! `pending`, and the member marked `pending`, before it touches the
//! namespace; only the final write clears the marks. Everything a killed
//! hook may have made is therefore named in a record. Setups hold the lock
//! from start to end, so whoever holds the lock and sees a pending entry
//! knows its writer is dead.
//!
//! Every write goes to `tmp/` first and is renamed into place, so a hook
//! killed mid-write leaves either the old record or the new. There is no
//! fsync: the state directory belongs on tmpfs, where a power loss also
//! ends every container the records describe.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use nsutil::dir::{Dir, LockGuard};
use nsutil::netlink::Link;
use nsutil::ns::NetnsId;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::lease::FileLeases;
pub use crate::shim::ShimRecord;

/// How long a hook waits for the state lock: well inside the 10 s hook
/// timeout nsbypass's generated hook definitions set, so that a stuck lock
/// (or a local user holding it) is reported by nsbypass, naming the lock,
/// rather than by the runtime killing a silent hook.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Records are small; anything larger is not one of ours.
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// A state directory operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Dir(#[from] nsutil::Error),
    #[error(transparent)]
    Lock(#[from] nsutil::dir::LockError),
    #[error("parse {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// What setup did for one container: the namespace record it is a member
/// of, and the profiles carried into it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<ProfilesRecord>,
    /// When `nsbypass detach` removed this id (seconds since the epoch):
    /// a second detach then succeeds while an id never seen is an error.
    /// `gc` removes these markers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detached: Option<u64>,
}

/// A marker with its time: `draining/<key>.json` for a namespace whose
/// links drain (its last member left while the kernel was still destroying
/// it, or it was out of reach), so that every run can look at just those
/// records; `claims/<container>.json` for a setup about to lease (see
/// [`StateDir::put_claim`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// When it began to drain (seconds since the epoch).
    pub since: u64,
}

/// Which lease store the records' leases are in (`<state_dir>/store.json`):
/// records name leases by network and address only, so a config that
/// moves to another store, prefix or node name while records hold links
/// would lose those leases, and hand their addresses out again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStamp {
    /// `file` or `etcd`.
    pub store: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// How an attachment was made: by the OCI hook, or by `nsbypass attach`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    #[default]
    Hook,
    Attach,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Hook => "hook",
            Source::Attach => "attach",
        }
    }

    fn is_hook(&self) -> bool {
        *self == Source::Hook
    }
}

/// Seconds since the epoch, for `since` fields.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Profiles applied to one container instance. Nothing needs undoing at
/// poststop (the mounts, overlays and device grants die with the
/// container's mount namespace and cgroup); the record makes a second
/// setup stage a no-op.
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
    /// The namespace's id in the hook's own namespace (RTM_NEWNSID). The
    /// kernel keeps it exactly as long as the namespace lives, so it tells
    /// a namespace that is gone from one nobody recorded a way into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsid: Option<i32>,
    /// The namespace's cookie (`SO_NETNS_COOKIE`), never another
    /// namespace's while the machine runs: (dev, ino) and the id are reused
    /// once it is gone, so a namespace reached again must show it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<u64>,
    /// Containers using the namespace, by id.
    pub members: BTreeMap<String, Member>,
    pub links: Vec<LinkRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The networks this container asked for.
    pub networks: Vec<String>,
    /// `/proc/<pid>/ns/net` of the container's init: the member runs while
    /// this leads to the namespace and `pid` is still the process that
    /// started at `start` (pids are reused).
    pub process: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The init's start time, in clock ticks since boot (`/proc/<pid>/stat`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
    /// The spec's namespace path, when it led to the namespace at setup: a
    /// way back in that may outlive every member (a pinned pod namespace).
    pub pinned: Option<PathBuf>,
    /// Written before setup touched anything; cleared by its last write.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// Hook or `attach`. A member made by `attach --netns` has no process:
    /// it is there while its path leads to the namespace, until `detach`.
    #[serde(default, skip_serializing_if = "Source::is_hook")]
    pub source: Source,
}

/// A recorded namespace's identity: (dev, ino) while it lives, and its
/// cookie, which no later namespace shares (when the kernel has cookies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub id: NetnsId,
    pub cookie: Option<u64>,
}

/// A MACVLAN nsbypass created, or is about to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub network: String,
    pub ifname: String,
    /// Interface index inside the namespace: fixed for the link's life,
    /// unlike its name or MAC (a container with NET_ADMIN may change
    /// either). Unknown while the link is pending.
    #[serde(default)]
    pub index: Option<u32>,
    /// `aa:bb:...`: derived before creation, as the kernel reported it after
    /// (passthru links take the parent's MAC).
    pub mac: String,
    pub parent: String,
    pub addresses: Vec<IpNet>,
    /// The container whose setup created it.
    pub created_by: String,
    /// The name the link is created under when the final one clashes in
    /// the namespace the request came from; recorded so a killed setup's
    /// link can be found under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporary_name: Option<String>,
    /// A passthru link takes the parent's MAC, so a pending one is known
    /// by its recorded names instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passthru: bool,
    /// Written before the link was made; cleared once it is configured.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// How the link was made, and when (seconds since the epoch; unknown
    /// in records older than the field).
    #[serde(default, skip_serializing_if = "Source::is_hook")]
    pub source: Source,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// The address guard the link was made with (see [`crate::guard`]);
    /// recorded with the intent, so a killed setup's filters are found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<crate::guard::Guarded>,
    /// The Kubernetes pod (`NAMESPACE/NAME`) whose setup made the link,
    /// when its spec said (see `Request::pod`): what its address slot, and
    /// unless another namespace held it (see [`PodRecord`]), its MAC were
    /// derived from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// `pods/<digest>.json`: the namespace whose links carry the MACs derived
/// from pod `pod` (one per network), so that the setup of the pod's next
/// incarnation (new container ids, new namespace: a re-created
/// StatefulSet pod) finds the last one. A MAC must not be on one parent
/// twice (the kernel refuses to bring the second up), and a namespace's
/// MACs on its parent are how nsbypass tells a dying namespace from a gone
/// one, so no two records may hold one: the new incarnation takes the
/// pod's MACs only once the old namespace is gone (see
/// `setup::claim_pod_macs`). Written before the record that holds them,
/// so it is never missing for one; it may outlive it (then it names a
/// record that no longer holds them, which means nothing), until that
/// record goes or `gc` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub pod: String,
    pub netns: String,
}

impl LinkRecord {
    /// Whether `link`, seen in whatever namespace now has the recorded id
    /// (ids are reused), is this one: what [`LinkRecord::is`] says, and the
    /// recorded MAC, which another namespace's link will not have.
    pub fn is_by_mac(&self, link: &Link) -> bool {
        self.is(link)
            && link.mac.map(|m| nsutil::netlink::format_mac(&m)).as_deref() == Some(&self.mac)
    }

    /// Whether `link` (in the record's namespace) is this one: same index
    /// once known; before that, a MACVLAN with the derived MAC, or for
    /// passthru one of the recorded names.
    pub fn is(&self, link: &Link) -> bool {
        if link.kind.as_deref() != Some("macvlan") {
            return false;
        }
        match self.index {
            Some(index) => link.index == index,
            None => {
                let named =
                    link.name == self.ifname || Some(&link.name) == self.temporary_name.as_ref();
                link.mac.map(|m| nsutil::netlink::format_mac(&m)).as_deref() == Some(&self.mac)
                    || (self.passthru && named)
            }
        }
    }
}

impl NetnsRecord {
    pub fn new(id: NetnsId) -> NetnsRecord {
        NetnsRecord {
            dev: id.dev,
            ino: id.ino,
            nsid: None,
            cookie: None,
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

    /// What a namespace reached through a path must match to be this one.
    pub fn identity(&self) -> Identity {
        Identity {
            id: self.id(),
            cookie: self.cookie,
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

    /// Whether the record holds `address` on `network`, pending or not.
    pub fn holds(&self, network: &str, address: std::net::IpAddr) -> bool {
        self.links
            .iter()
            .any(|l| l.network == network && l.addresses.iter().any(|a| a.addr() == address))
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.links.is_empty()
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
    tmp: Dir,
    containers: Dir,
    netns: Dir,
    leases: Dir,
    shims: Dir,
    draining: Dir,
    claims: Dir,
    pods: Dir,
    root: Dir,
    _lock: LockGuard,
}

impl StateDir {
    /// Opens `root` (creating it 0700 if needed, after checking it and
    /// every parent: root writes and removes files there by names that
    /// containers choose), waits at most `timeout` for its lock, and
    /// removes what killed runs left in `tmp/`. Every hook on the host
    /// serialises here, which is what makes concurrent setups hand out
    /// distinct addresses and agree on shared namespaces.
    pub fn lock(root: &Path, timeout: Duration) -> Result<StateDir, RecordError> {
        let root = Dir::open_root(root)?;
        let lock = root.lock("lock", timeout)?;
        let tmp = root.subdir("tmp")?;
        let swept = tmp.sweep()?;
        if swept > 0 {
            tracing::warn!(swept, "removed temporaries of a killed nsbypass run");
        }
        Ok(StateDir {
            containers: root.subdir("containers")?,
            netns: root.subdir("netns")?,
            leases: root.subdir("leases")?,
            shims: root.subdir("shims")?,
            draining: root.subdir("draining")?,
            claims: root.subdir("claims")?,
            pods: root.subdir("pods")?,
            root,
            tmp,
            _lock: lock,
        })
    }

    /// Whether `root` holds a record of `container`, without taking the lock:
    /// a cheap probe for poststop of containers that never asked for
    /// anything. Only decides whether to look properly.
    pub fn has_container(root: &Path, container: &str) -> bool {
        std::fs::symlink_metadata(root.join("containers").join(format!("{container}.json"))).is_ok()
    }

    /// The directory for files that exist only long enough to be
    /// bind-mounted (the composed ld.so.preload); emptied under the lock.
    pub fn scratch(&self) -> &Dir {
        &self.tmp
    }

    pub fn leases(&self) -> FileLeases<'_> {
        FileLeases::new(&self.leases, &self.tmp)
    }

    pub fn container(&self, id: &str) -> Result<Option<ContainerRecord>, RecordError> {
        read_json(&self.containers, &format!("{id}.json"))
    }

    pub fn put_container(&self, id: &str, record: &ContainerRecord) -> Result<(), RecordError> {
        write_json(&self.containers, &format!("{id}.json"), record, &self.tmp)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), RecordError> {
        Ok(self.containers.remove(format!("{id}.json"))?)
    }

    pub fn netns(&self, key: &str) -> Result<Option<NetnsRecord>, RecordError> {
        read_json(&self.netns, &format!("{key}.json"))
    }

    /// The keys of every namespace record.
    pub fn netns_keys(&self) -> Result<Vec<String>, RecordError> {
        json_names(&self.netns)
    }

    /// The ids of every container record.
    pub fn container_ids(&self) -> Result<Vec<String>, RecordError> {
        json_names(&self.containers)
    }

    /// Writes `record`, or removes it (with its draining marker and the
    /// pod index entries that name it) once nothing is left in it.
    pub fn put_netns(&self, record: &NetnsRecord) -> Result<(), RecordError> {
        let name = format!("{}.json", record.key());
        if record.is_empty() {
            // Which pods it was for is in the record on disk, not in the
            // empty one. The record goes first: an index entry that
            // outlives its record means nothing, while a record holding a
            // pod's MACs that no entry names would let the pod's next
            // incarnation take them (see PodRecord).
            let old = read_json::<NetnsRecord>(&self.netns, &name)?;
            self.netns.remove(&name)?;
            self.draining.remove(&name)?;
            crate::failpoint::hit("remove-record").map_err(|e| {
                RecordError::Dir(nsutil::Error::new(
                    "remove-record",
                    std::io::Error::other(e),
                ))
            })?;
            match old {
                Some(old) => self.forget_pods(&old),
                None => Ok(()),
            }
        } else {
            write_json(&self.netns, &name, record, &self.tmp)
        }
    }

    /// Removes the pod index entries of `record`'s pods that name it.
    fn forget_pods(&self, record: &NetnsRecord) -> Result<(), RecordError> {
        let key = record.key();
        let pods: BTreeSet<&str> = record
            .links
            .iter()
            .filter_map(|l| l.pod.as_deref())
            .collect();
        for pod in pods {
            if self.pod(pod)?.is_some_and(|p| p.netns == key) {
                self.remove_pod(pod)?;
            }
        }
        Ok(())
    }

    /// The pod index entry of `pod` (see [`PodRecord`]).
    pub fn pod(&self, pod: &str) -> Result<Option<PodRecord>, RecordError> {
        let found: Option<PodRecord> = read_json(&self.pods, &pod_file(pod))?;
        // A digest's collision (or a planted file) is not this pod's.
        Ok(found.filter(|p| p.pod == pod))
    }

    pub fn put_pod(&self, record: &PodRecord) -> Result<(), RecordError> {
        write_json(&self.pods, &pod_file(&record.pod), record, &self.tmp)
    }

    pub fn remove_pod(&self, pod: &str) -> Result<(), RecordError> {
        Ok(self.pods.remove(pod_file(pod))?)
    }

    /// Every pod index entry, for gc, with the name of its file: one whose
    /// name is not its pod's (a planted or mangled file) is `None`, so that
    /// gc removes that file and never the pod's own.
    pub fn pods(&self) -> Result<Vec<(String, Option<PodRecord>)>, RecordError> {
        let mut out = Vec::new();
        for name in json_names(&self.pods)? {
            let file = format!("{name}.json");
            if let Some(record) = read_json::<PodRecord>(&self.pods, &file)? {
                let ours = pod_file(&record.pod) == file;
                out.push((file, ours.then_some(record)));
            }
        }
        Ok(out)
    }

    /// Removes the pod index file `file` (a name [`StateDir::pods`] gave).
    pub fn remove_pod_file(&self, file: &str) -> Result<(), RecordError> {
        Ok(self.pods.remove(file)?)
    }
}

/// A pod's index file name: a digest, since `NAMESPACE/NAME` holds a `/`
/// and may be longer than a file name.
fn pod_file(pod: &str) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(pod.as_bytes());
    let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.json")
}

/// The `<name>` of every `<name>.json` in `dir`; anything else is not a record.
fn json_names(dir: &Dir) -> Result<Vec<String>, RecordError> {
    let mut names: Vec<String> = dir
        .names()?
        .into_iter()
        .filter_map(|n| n.to_str()?.strip_suffix(".json").map(str::to_owned))
        .collect();
    names.sort();
    Ok(names)
}

impl StateDir {
    pub fn shim(&self, network: &str) -> Result<Option<ShimRecord>, RecordError> {
        read_json(&self.shims, &format!("{network}.json"))
    }

    pub fn put_shim(&self, record: &ShimRecord) -> Result<(), RecordError> {
        let name = format!("{}.json", record.network);
        write_json(&self.shims, &name, record, &self.tmp)
    }

    pub fn remove_shim(&self, network: &str) -> Result<(), RecordError> {
        Ok(self.shims.remove(format!("{network}.json"))?)
    }

    /// The lease store the records were written with (see [`StoreStamp`]);
    /// `None` before the first run of a version that writes it.
    pub fn store_stamp(&self) -> Result<Option<StoreStamp>, RecordError> {
        read_json(&self.root, "store.json")
    }

    pub fn put_store_stamp(&self, stamp: &StoreStamp) -> Result<(), RecordError> {
        write_json(&self.root, "store.json", stamp, &self.tmp)
    }

    /// Indexes namespace `key` as draining (see [`Marker`]): its record
    /// drains (see [`crate::reconcile::sweep_draining`]).
    pub fn mark_draining(&self, key: &str) -> Result<(), RecordError> {
        let marker = Marker { since: now() };
        write_json(&self.draining, &format!("{key}.json"), &marker, &self.tmp)
    }

    pub fn unmark_draining(&self, key: &str) -> Result<(), RecordError> {
        Ok(self.draining.remove(format!("{key}.json"))?)
    }

    /// The keys of the draining namespaces, with their markers.
    pub fn draining(&self) -> Result<Vec<(String, Marker)>, RecordError> {
        let mut out = Vec::new();
        for key in json_names(&self.draining)? {
            if let Some(marker) = read_json(&self.draining, &format!("{key}.json"))? {
                out.push((key, marker));
            }
        }
        Ok(out)
    }

    /// Notes that `container`'s setup is about to lease addresses that no
    /// record names until its pointer is written: should it be killed in
    /// between, its poststop (which finds no record) knows to look for
    /// them, and only then (listing every lease is one etcd read of the
    /// whole cluster's keys per network).
    pub fn put_claim(&self, container: &str) -> Result<(), RecordError> {
        let marker = Marker { since: now() };
        write_json(
            &self.claims,
            &format!("{container}.json"),
            &marker,
            &self.tmp,
        )
    }

    pub fn remove_claim(&self, container: &str) -> Result<(), RecordError> {
        Ok(self.claims.remove(format!("{container}.json"))?)
    }

    pub fn has_claim(&self, container: &str) -> Result<bool, RecordError> {
        Ok(read_json::<Marker>(&self.claims, &format!("{container}.json"))?.is_some())
    }

    /// The containers with a claim (see [`StateDir::put_claim`]).
    pub fn claim_ids(&self) -> Result<Vec<String>, RecordError> {
        json_names(&self.claims)
    }

    /// The networks that have a shim record, sorted.
    pub fn shim_networks(&self) -> Result<Vec<String>, RecordError> {
        let mut networks: Vec<String> = self
            .shims
            .names()?
            .iter()
            .filter_map(|n| n.to_str()?.strip_suffix(".json").map(str::to_owned))
            .collect();
        networks.sort();
        Ok(networks)
    }
}

fn read_json<T: DeserializeOwned>(dir: &Dir, name: &str) -> Result<Option<T>, RecordError> {
    match dir.read(name, MAX_RECORD_BYTES)? {
        Some(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| RecordError::Parse {
                    path: dir.path().join(name),
                    source,
                })
        }
        None => Ok(None),
    }
}

fn write_json<T: Serialize>(
    dir: &Dir,
    name: &str,
    value: &T,
    tmp: &Dir,
) -> Result<(), RecordError> {
    let body = serde_json::to_vec_pretty(value).expect("records serialise");
    Ok(dir.replace(name, &body, tmp)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(root: &Path) -> StateDir {
        StateDir::lock(root, LOCK_TIMEOUT).unwrap()
    }

    #[test]
    fn records_round_trip_and_empty_namespaces_disappear() {
        let dir = tempfile::TempDir::new().unwrap();
        let state = lock(&dir.path().join("state"));
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
                pid: Some(1),
                start: Some(42),
                pinned: None,
                pending: false,
                source: Source::Hook,
            },
        );
        state.put_netns(&ns).unwrap();
        state
            .put_container(
                "c1",
                &ContainerRecord {
                    netns: Some(ns.key()),
                    ..Default::default()
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
        let state = lock(dir.path());
        std::fs::write(dir.path().join("containers/c1.json"), "{").unwrap();
        let e = state.container("c1").unwrap_err().to_string();
        assert!(
            e.starts_with("parse ") && e.contains("containers/c1.json"),
            "{e}"
        );
    }

    #[test]
    fn records_of_an_older_version_still_read() {
        // Before intent records: index always known, no nsid, no pids.
        let old = r#"{"dev":4,"ino":9,"members":{"c":{"networks":["fast"],
            "process":"/proc/7/ns/net","pinned":null}},
            "links":[{"network":"fast","ifname":"net1","index":3,"mac":"02:00:00:00:00:01",
            "parent":"eth0","addresses":["10.0.0.5/24"],"created_by":"c"}]}"#;
        let r: NetnsRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.links[0].index, Some(3));
        assert!(!r.links[0].pending && !r.members["c"].pending);
        assert_eq!(r.nsid, None);
    }

    #[test]
    fn a_pending_link_is_recognised_by_mac_or_recorded_name() {
        let link = |index, name: &str, mac: [u8; 6]| Link {
            index,
            name: name.into(),
            mtu: 1500,
            up: false,
            mac: Some(mac),
            kind: Some("macvlan".into()),
            parent_index: None,
            parent_netnsid: None,
        };
        let mut r = LinkRecord {
            network: "fast".into(),
            ifname: "net1".into(),
            index: None,
            mac: "02:00:00:00:00:01".into(),
            parent: "eth0".into(),
            addresses: vec![],
            created_by: "c".into(),
            temporary_name: Some("nsb0000abcd".into()),
            passthru: false,
            pending: true,
            source: Source::Hook,
            since: None,
            guard: None,
            pod: None,
        };
        assert!(r.is(&link(5, "other", [2, 0, 0, 0, 0, 1])));
        assert!(!r.is(&link(5, "nsb0000abcd", [2, 9, 9, 9, 9, 9])));
        assert!(!r.is(&link(5, "other", [2, 9, 9, 9, 9, 9])));
        r.passthru = true;
        assert!(r.is(&link(5, "nsb0000abcd", [2, 9, 9, 9, 9, 9])));
        let mut veth = link(5, "net1", [2, 0, 0, 0, 0, 1]);
        veth.kind = Some("veth".into());
        assert!(!r.is(&veth), "only MACVLANs are ours");
        r.index = Some(6);
        assert!(
            !r.is(&link(5, "net1", [2, 0, 0, 0, 0, 1])),
            "once known, the index decides"
        );
        assert!(r.is(&link(6, "renamed", [2, 9, 9, 9, 9, 9])));
    }
}
