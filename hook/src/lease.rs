//! Address leases: which address of a network's pool belongs to whom.
//!
//! The store is a trait so a cluster-wide backend (etcd, for nodes sharing
//! one L2) can replace the node-local files without touching setup. The
//! file store keeps one file per leased address, `leases/<network>/<addr>`,
//! written to a temporary name and renamed into place without replacing,
//! so a crash never leaves a half-written lease and two hooks can never
//! both win one address.

use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use runtime_config::Ipv4Pool;
use serde::{Deserialize, Serialize};

use crate::derive;

/// Who holds a lease: the network namespace the address is configured in
/// (a pod's containers share it) and the container that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub netns: String,
    pub container: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("{address} is outside the range {range}")]
    OutOfRange { address: IpAddr, range: String },
    #[error("{address} is the network's gateway")]
    Gateway { address: IpAddr },
    #[error("{address} is taken by container {container}")]
    Taken { address: IpAddr, container: String },
    #[error("no free address left in {range}")]
    Exhausted { range: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Lease bookkeeping. Callers hold the state lock around every call.
pub trait LeaseStore {
    /// The holder of `address` on `network`, if it is leased.
    fn holder(&self, network: &str, address: IpAddr) -> Result<Option<Holder>, LeaseError>;

    /// Leases `want`, or else a free address of `pool`. The search starts
    /// at a slot derived from the holder's container, so a restarted
    /// container tends to get its address back. Leasing an address the
    /// holder's namespace already holds succeeds and changes nothing.
    fn acquire(
        &mut self,
        network: &str,
        pool: &Ipv4Pool,
        holder: &Holder,
        want: Option<IpAddr>,
    ) -> Result<IpAddr, LeaseError>;

    /// Gives `address` back if `netns` holds it. A free address, or one
    /// another namespace holds, is left alone.
    fn release(&mut self, network: &str, address: IpAddr, netns: &str) -> Result<(), LeaseError>;

    /// Every lease on `network`, for finding ones nothing accounts for.
    fn list(&self, network: &str) -> Result<Vec<(IpAddr, Holder)>, LeaseError>;
}

/// Leases as files under `<state_dir>/leases`.
pub struct FileLeases {
    dir: PathBuf,
}

impl FileLeases {
    pub fn new(dir: PathBuf) -> FileLeases {
        FileLeases { dir }
    }

    fn path(&self, network: &str, address: IpAddr) -> PathBuf {
        self.dir.join(network).join(address.to_string())
    }

    /// Creates the lease file for `address` unless one exists.
    /// `Ok(false)`: somebody holds it already.
    fn try_create(
        &self,
        network: &str,
        address: IpAddr,
        holder: &Holder,
    ) -> Result<bool, LeaseError> {
        let dir = self.dir.join(network);
        let io = |op, path: &Path| {
            let path = path.to_owned();
            move |source| LeaseError::Io { op, path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let tmp = dir.join(format!(".{address}.{}", unique_suffix()));
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        let body = serde_json::to_vec(holder).expect("a holder serialises");
        file.write_all(&body).map_err(io("write", &tmp))?;
        let path = self.path(network, address);
        let renamed = nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &tmp,
            nix::fcntl::AT_FDCWD,
            &path,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        );
        let _ = std::fs::remove_file(&tmp);
        match renamed {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EEXIST) => Ok(false),
            Err(e) => Err(LeaseError::Io {
                op: "rename lease to",
                path,
                source: e.into(),
            }),
        }
    }
}

impl LeaseStore for FileLeases {
    fn holder(&self, network: &str, address: IpAddr) -> Result<Option<Holder>, LeaseError> {
        let path = self.path(network, address);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LeaseError::Io {
                    op: "parse lease",
                    path,
                    source: e.into(),
                }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LeaseError::Io {
                op: "read lease",
                path,
                source,
            }),
        }
    }

    fn acquire(
        &mut self,
        network: &str,
        pool: &Ipv4Pool,
        holder: &Holder,
        want: Option<IpAddr>,
    ) -> Result<IpAddr, LeaseError> {
        if let Some(address) = want {
            check_assignable(pool, address)?;
            if self.try_create(network, address, holder)? {
                return Ok(address);
            }
            return match self.holder(network, address)? {
                Some(h) if h.netns == holder.netns => Ok(address),
                Some(h) => Err(LeaseError::Taken {
                    address,
                    container: h.container,
                }),
                // Released between our attempt and our look: try once more.
                None if self.try_create(network, address, holder)? => Ok(address),
                None => Err(LeaseError::Taken {
                    address,
                    container: "(unknown)".into(),
                }),
            };
        }
        let len = pool.size();
        let start = (derive::address_seed(&holder.container, network) % u64::from(len)) as u32;
        for step in 0..len {
            let address = pool.nth((start + step) % len);
            if Some(address) == pool.gateway {
                continue;
            }
            if self.try_create(network, IpAddr::V4(address), holder)? {
                return Ok(IpAddr::V4(address));
            }
        }
        Err(LeaseError::Exhausted {
            range: pool.range_text(),
        })
    }

    fn release(&mut self, network: &str, address: IpAddr, netns: &str) -> Result<(), LeaseError> {
        match self.holder(network, address)? {
            Some(h) if h.netns == netns => {
                let path = self.path(network, address);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => Err(LeaseError::Io {
                        op: "remove lease",
                        path,
                        source: e,
                    }),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn list(&self, network: &str) -> Result<Vec<(IpAddr, Holder)>, LeaseError> {
        let dir = self.dir.join(network);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(LeaseError::Io {
                    op: "list leases in",
                    path: dir,
                    source,
                })
            }
        };
        let mut leases = Vec::new();
        for entry in entries.flatten() {
            // Temporary files start with '.', and parse as no address.
            let Some(address) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(holder) = self.holder(network, address)? {
                leases.push((address, holder));
            }
        }
        leases.sort_by_key(|(address, _)| *address);
        Ok(leases)
    }
}

/// Unique among this host's processes and this process's calls.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether `address` may be requested from `pool`, with the reason if not.
pub fn check_assignable(pool: &Ipv4Pool, address: IpAddr) -> Result<Ipv4Addr, LeaseError> {
    let out_of_range = || LeaseError::OutOfRange {
        address,
        range: pool.range_text(),
    };
    let IpAddr::V4(v4) = address else {
        return Err(out_of_range());
    };
    if Some(v4) == pool.gateway {
        return Err(LeaseError::Gateway { address });
    }
    if !pool.assignable(v4) {
        return Err(out_of_range());
    }
    Ok(v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(range: &str, gateway: Option<&str>) -> Ipv4Pool {
        let (a, b) = range.split_once('-').unwrap();
        Ipv4Pool {
            subnet: "10.9.0.0/24".parse().unwrap(),
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
            gateway: gateway.map(|g| g.parse().unwrap()),
            routes: vec![],
        }
    }

    fn holder(netns: &str, container: &str) -> Holder {
        Holder {
            netns: netns.into(),
            container: container.into(),
        }
    }

    fn store() -> (tempfile::TempDir, FileLeases) {
        let dir = tempfile::TempDir::new().unwrap();
        let leases = FileLeases::new(dir.path().join("leases"));
        (dir, leases)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn hands_out_every_address_once_then_reports_exhaustion() {
        let (_dir, mut leases) = store();
        let pool = pool("10.9.0.1-10.9.0.5", Some("10.9.0.3"));
        let mut got = Vec::new();
        for i in 0..4 {
            let h = holder(&format!("ns{i}"), &format!("c{i}"));
            got.push(leases.acquire("fast", &pool, &h, None).unwrap());
        }
        got.sort();
        assert_eq!(
            got,
            ["10.9.0.1", "10.9.0.2", "10.9.0.4", "10.9.0.5"].map(ip)
        );
        let e = leases
            .acquire("fast", &pool, &holder("ns9", "c9"), None)
            .unwrap_err();
        assert_eq!(e.to_string(), "no free address left in 10.9.0.1-10.9.0.5");
    }

    #[test]
    fn same_container_gets_same_address_after_release() {
        let (_dir, mut leases) = store();
        let pool = pool("10.9.0.10-10.9.0.250", None);
        let first = leases
            .acquire("fast", &pool, &holder("ns1", "web"), None)
            .unwrap();
        leases.release("fast", first, "ns1").unwrap();
        let again = leases
            .acquire("fast", &pool, &holder("ns2", "web"), None)
            .unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn requested_addresses() {
        let (_dir, mut leases) = store();
        let pool = pool("10.9.0.10-10.9.0.20", Some("10.9.0.15"));
        let a = holder("nsA", "a");
        assert_eq!(
            leases
                .acquire("fast", &pool, &a, Some(ip("10.9.0.12")))
                .unwrap(),
            ip("10.9.0.12")
        );
        // Asking again from the same namespace is a no-op, from another is refused.
        assert_eq!(
            leases
                .acquire("fast", &pool, &a, Some(ip("10.9.0.12")))
                .unwrap(),
            ip("10.9.0.12")
        );
        let e = leases
            .acquire("fast", &pool, &holder("nsB", "b"), Some(ip("10.9.0.12")))
            .unwrap_err();
        assert_eq!(e.to_string(), "10.9.0.12 is taken by container a");
        let e = leases
            .acquire("fast", &pool, &a, Some(ip("10.9.0.21")))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.9.0.21 is outside the range 10.9.0.10-10.9.0.20"
        );
        let e = leases
            .acquire("fast", &pool, &a, Some(ip("10.9.0.15")))
            .unwrap_err();
        assert_eq!(e.to_string(), "10.9.0.15 is the network's gateway");
        let e = leases
            .acquire("fast", &pool, &a, Some(ip("fd00::1")))
            .unwrap_err();
        assert!(matches!(e, LeaseError::OutOfRange { .. }));
        assert_eq!(leases.holder("fast", ip("10.9.0.12")).unwrap(), Some(a));
    }

    #[test]
    fn release_only_frees_the_holders_address() {
        let (_dir, mut leases) = store();
        let pool = pool("10.9.0.10-10.9.0.20", None);
        let got = leases
            .acquire("fast", &pool, &holder("nsA", "a"), None)
            .unwrap();
        leases.release("fast", got, "nsB").unwrap();
        assert!(
            leases.holder("fast", got).unwrap().is_some(),
            "another namespace cannot free it"
        );
        leases.release("fast", got, "nsA").unwrap();
        assert_eq!(leases.holder("fast", got).unwrap(), None);
        leases.release("fast", got, "nsA").unwrap();
    }

    #[test]
    fn networks_are_separate_and_no_temporary_files_remain() {
        let (dir, mut leases) = store();
        let pool = pool("10.9.0.10-10.9.0.10", None);
        leases
            .acquire("a", &pool, &holder("n1", "c"), None)
            .unwrap();
        leases
            .acquire("b", &pool, &holder("n2", "c"), None)
            .unwrap();
        for net in ["a", "b"] {
            let names: Vec<_> = std::fs::read_dir(dir.path().join("leases").join(net))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            assert_eq!(names, ["10.9.0.10"]);
        }
    }

    #[test]
    fn concurrent_processes_never_share_an_address() {
        // Leases are taken under the state lock in the hook; the rename
        // without replace is the second line of defence, exercised here by
        // threads that do not take the lock at all.
        let (dir, _) = store();
        let pool = pool("10.9.0.1-10.9.0.40", None);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let root = dir.path().join("leases");
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut leases = FileLeases::new(root);
                    (0..5)
                        .map(|i| {
                            let h = holder(&format!("ns{t}-{i}"), "same-container");
                            leases.acquire("fast", &pool, &h, None).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let before = all.len();
        all.dedup();
        assert_eq!(before, 40);
        assert_eq!(all.len(), 40, "an address was handed out twice");
    }
}
