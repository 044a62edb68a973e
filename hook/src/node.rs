//! The composition root: nsbypass on this node. Builds the real things
//! (config, logging, this host's identity, the locked state directory, the
//! lease store, netlink) and drives setup, profiles and teardown with
//! them. The hook is one front end (OCI state on stdin); commands that
//! wire a namespace by hand are another, on the same code path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nsutil::ns::{self, Netns, NetnsId};
use runtime_config::leases::LeaseConfig;
use runtime_config::{Config, Request};

use crate::failpoint;
use crate::failure::{Failure, Step, StepExt};
use crate::guard::RealHostGuard;
use crate::kernel::{self, RealKernel, RealReach};
use crate::lease::etcd::{self, EtcdLeases};
use crate::lease::LeaseStore;
use crate::logging;
use crate::profile;
use crate::reconcile::{self, Stores};
use crate::records::{self, ContainerRecord, ProfilesRecord, Source, StateDir, LOCK_TIMEOUT};
use crate::setup::{self, Wired};
use crate::shim;
use crate::teardown::{self, Leaving, Look, Outcome};

/// The file naming this host; mixed into MACs and written into every lease.
const MACHINE_ID: &str = "/etc/machine-id";

/// nsbypass on this node: its config and identity.
pub struct Node {
    pub config: Config,
    host_id: String,
    /// The name this host's leases carry: its machine id in the file
    /// store, its `[leases] node` (or host name) in etcd.
    lease_host: String,
}

/// A container to set up, however it was described.
pub struct Target<'a> {
    pub container: &'a str,
    /// Its init, as the host sees it; `None` for a bare namespace
    /// (`nsbypass attach --netns`), which `netns_path` then names.
    pub pid: Option<i32>,
    /// The network namespace path its spec names, if any (a pod's).
    pub netns_path: Option<&'a Path>,
    /// Its rootfs as a host path, and whether the spec makes it read-only.
    pub rootfs: Option<&'a Path>,
    pub readonly: bool,
    pub source: Source,
}

/// What one setup did, for the log line.
pub struct Done {
    pub wired: Vec<Wired>,
    pub profiles: Vec<String>,
    /// How long the state lock was held: every setup and teardown on the
    /// host serialises there, so this bounds how many run per second.
    pub locked: Duration,
}

/// The host-side mechanisms a locked run's [`Stores`] work through.
#[derive(Default)]
struct Host {
    reach: RealReach,
    guards: RealHostGuard,
}

impl Node {
    /// Config, logging, privileges and identity: what every working run
    /// needs first.
    pub fn open(config_path: &Path) -> Result<Node, Failure> {
        let config = Config::load(config_path).step(Step::LoadConfig)?;
        logging::init(&config.log).step(Step::OpenLog)?;
        check_capabilities()?;
        let host_id = machine_id(Path::new(MACHINE_ID))?;
        let lease_host = match &config.leases {
            LeaseConfig::File => host_id.clone(),
            LeaseConfig::Etcd(etcd) => etcd::node_name(etcd).step(Step::Validate)?,
        };
        Ok(Node {
            config,
            host_id,
            lease_host,
        })
    }

    /// The configured lease store. The etcd one connects at its first
    /// request: a run that leases nothing never talks to etcd.
    pub fn leases<'a>(&self, state: &'a StateDir) -> Box<dyn LeaseStore + 'a> {
        match &self.config.leases {
            LeaseConfig::File => Box::new(state.leases()),
            LeaseConfig::Etcd(config) => {
                Box::new(EtcdLeases::new(config, &self.lease_host, &self.host_id))
            }
        }
    }

    /// The name this host's leases carry (see [`Node::leases`]).
    pub fn lease_host(&self) -> &str {
        &self.lease_host
    }

    /// The locked state with this host's lease store and reach, once the
    /// namespaces that finished draining are swept (see
    /// [`reconcile::sweep_draining`]). A sweep that fails is only logged:
    /// it must not stop the run, and the next one tries again.
    fn stores<'a>(
        &'a self,
        state: &'a StateDir,
        leases: &'a mut dyn LeaseStore,
        host: &'a mut Host,
        sweep: reconcile::Sweep,
    ) -> Stores<'a> {
        let mut stores = Stores {
            state,
            leases,
            reach: &mut host.reach,
            host: &self.lease_host,
            machine: &self.host_id,
            guards: &mut host.guards,
        };
        match reconcile::sweep_draining(&mut stores, sweep) {
            Ok(0) => {}
            Ok(swept) => tracing::debug!(swept, "freed the addresses of namespaces that drained"),
            Err(failure) => tracing::warn!(%failure, "sweeping namespaces that drain"),
        }
        stores
    }

    /// The state directory, locked for the rest of the run.
    pub fn lock(&self) -> Result<StateDir, Failure> {
        let state = StateDir::lock(&self.config.state_dir, LOCK_TIMEOUT).step(Step::LockState)?;
        self.check_store(&state)?;
        Ok(state)
    }

    /// Refuses a lease store other than the one the records' leases are in
    /// (see [`records::StoreStamp`]) while namespace records exist; with
    /// none, this store becomes the records' store.
    fn check_store(&self, state: &StateDir) -> Result<(), Failure> {
        let want = match &self.config.leases {
            LeaseConfig::File => records::StoreStamp {
                store: "file".into(),
                ..records::StoreStamp::default()
            },
            LeaseConfig::Etcd(etcd) => records::StoreStamp {
                store: "etcd".into(),
                prefix: Some(etcd.prefix.clone()),
                node: Some(self.lease_host.clone()),
            },
        };
        let stamp = state.store_stamp().step(Step::ReadRecords)?;
        if stamp.as_ref() == Some(&want) {
            return Ok(());
        }
        // State from before the stamp was written is the file store's.
        let have = stamp.unwrap_or_else(|| records::StoreStamp {
            store: "file".into(),
            ..records::StoreStamp::default()
        });
        if have != want && !state.netns_keys().step(Step::ReadRecords)?.is_empty() {
            let describe = |s: &records::StoreStamp| match (&s.prefix, &s.node) {
                (Some(prefix), Some(node)) => format!("{} (prefix {prefix}, node {node})", s.store),
                _ => s.store.clone(),
            };
            return Err(Failure::refuse(
                Step::LoadConfig,
                format!(
                    "the lease store is now {} but recorded namespaces hold leases in {}: detach them, or stop their containers, with the old config first",
                    describe(&want),
                    describe(&have)
                ),
            ));
        }
        state.put_store_stamp(&want).step(Step::WriteRecord)
    }

    /// Runs `work` with the state locked and this host's stores, for the
    /// commands that read or repair state as a whole (`list`, `gc`): they
    /// sweep every draining namespace first, however young or old.
    pub fn with_stores<T>(
        &self,
        work: impl FnOnce(&mut Stores) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let state = self.lock()?;
        let mut leases = self.leases(&state);
        let mut host = Host::default();
        let mut stores = self.stores(&state, leases.as_mut(), &mut host, reconcile::Sweep::All);
        work(&mut stores)
    }

    /// Sets `target` up as `request` asks, carrying the profiles `plan`
    /// holds (the requested ones the spec does not carry already, their
    /// host sources opened and checked).
    /// Everything is checked before anything changes: the profile sources
    /// (by the caller, planning), then the networks against config, records
    /// and host. Then the profiles are carried in and the networks wired; a
    /// network that fails undoes the profiles too.
    pub fn setup(
        &self,
        target: &Target,
        request: &Request,
        plan: Option<profile::Plan>,
    ) -> Result<Done, Failure> {
        let plan = match plan {
            None => None,
            Some(plan) => {
                let (Some(rootfs), Some(pid)) = (target.rootfs, target.pid) else {
                    return Err(Failure::refuse(
                        Step::OpenRootfs,
                        "profiles need a container process and its root",
                    ));
                };
                Some((plan, rootfs, pid))
            }
        };
        let mut network = match request.networks.is_empty() {
            true => None,
            false => Some(NetworkTarget::open(target)?),
        };
        let state = self.lock()?;
        let locked_at = Instant::now();
        tracing::debug!("state locked");
        let mut leases = self.leases(&state);
        let mut host = Host::default();
        let mut stores = self.stores(&state, leases.as_mut(), &mut host, reconcile::Sweep::Due);

        let ctx = network.as_ref().map(|n| n.context(target, self, request));
        let prepared = match (&ctx, &mut network) {
            (Some(ctx), Some(n)) => Some(setup::prepare(ctx, &mut n.kernel, &mut stores)?),
            _ => None,
        };

        // Profiles, unless this container instance has them already.
        let mut applied = None;
        let mut profiles_record = None;
        if let Some((plan, rootfs, pid)) = &plan {
            let pid = *pid;
            let mntns = mount_namespace(pid)?;
            let previous = state
                .container(target.container)
                .step(Step::ReadRecords)?
                .and_then(|r| r.profiles);
            let already = previous.as_ref().is_some_and(|p| {
                p.pid == pid && p.mntns == mntns && plan.names.iter().all(|n| p.names.contains(n))
            });
            if !already {
                applied = Some(profile::apply(
                    plan,
                    pid,
                    rootfs,
                    target.readonly,
                    state.scratch(),
                )?);
                profiles_record = Some(ProfilesRecord {
                    pid,
                    mntns,
                    names: plan.names.clone(),
                });
            }
        }
        let undo_profiles = |failure: Failure, applied: Option<profile::Applied>| match applied {
            Some(applied) => failure.with_rollback(applied.roll_back()),
            None => failure,
        };

        let mut done = Done {
            wired: Vec::new(),
            profiles: plan.map(|(p, _, _)| p.names).unwrap_or_default(),
            locked: Duration::ZERO,
        };
        match (prepared, &ctx, &mut network) {
            (Some(prepared), Some(ctx), Some(n)) => {
                // Host shims first, so the host reaches the container as
                // soon as it is wired; a failure converges them back.
                let kernel = &mut n.kernel;
                let left = prepared.left.clone();
                let mut host = shim::RealHost::default();
                let wired = shim::around_setup(
                    &self.config,
                    &request.networks,
                    &mut host,
                    &mut stores,
                    |stores| prepared.apply(ctx, kernel, stores, profiles_record),
                );
                // A stale record of this id that was cleared left networks
                // whose shims may be unwanted now.
                let left = shim::touched(&self.config, &left, &stores)?;
                // That is not this container's business: a failure there
                // is logged, and gc or the network's next teardown retries.
                let converged = shim::converge_each(&left, &self.config, &mut host, &mut stores);
                let wired = match (wired, converged) {
                    (wired, Ok(())) => wired,
                    (Ok(wired), Err(failure)) => {
                        tracing::warn!(%failure, "a host shim the cleared stale record left");
                        Ok(wired)
                    }
                    (Err(wiring), Err(failure)) => Err(wiring.with_rollback(vec![failure])),
                };
                match wired {
                    Ok(wired) => done.wired = wired,
                    Err(failure) => return Err(undo_profiles(failure, applied)),
                }
            }
            _ => {
                if let Some(profiles) = profiles_record {
                    let mut record = state
                        .container(target.container)
                        .step(Step::ReadRecords)?
                        .unwrap_or_default();
                    record.profiles = Some(profiles);
                    let written = failpoint::hit("profile-record")
                        .step(Step::WriteRecord)
                        .and_then(|()| {
                            state
                                .put_container(target.container, &record)
                                .step(Step::WriteRecord)
                        });
                    if let Err(failure) = written {
                        return Err(undo_profiles(failure, applied));
                    }
                }
            }
        }
        done.locked = locked_at.elapsed();
        Ok(done)
    }

    /// Tears `container` down from its records, after its runtime said it
    /// stopped (see [`Leaving::Stopped`]).
    pub fn teardown(&self, container: &str) -> Result<Outcome, Failure> {
        if !self.config.state_dir.exists() {
            return Ok(Outcome::NotRecorded);
        }
        self.leave(container, Leaving::Stopped)
    }

    /// Undoes `nsbypass attach` (or a hook's setup) for `id`, whether or
    /// not its process still runs, and leaves a marker so that detaching
    /// again succeeds. An id nothing was ever recorded for is an error.
    pub fn detach(&self, id: &str) -> Result<Detached, Failure> {
        {
            let state = self.lock()?;
            match state.container(id).step(Step::ReadRecords)? {
                Some(r) if r.detached.is_some() => return Ok(Detached::Already),
                Some(_) => {}
                // An attach killed between its first lease and its
                // pointer leaves its claim: those leases are this id's,
                // and teardown frees them.
                None if state.has_claim(id).step(Step::ReadRecords)? => {}
                None => {
                    return Err(Failure::refuse(
                        Step::ReadRecords,
                        format!("nothing is attached as {id:?} (see nsbypass list)"),
                    ))
                }
            }
        }
        self.leave(id, Leaving::Detached).map(Detached::Done)
    }

    /// Tears `container` down, under the lock. A namespace the kernel is
    /// still destroying is not waited for: its leases drain (see
    /// [`reconcile::sweep_draining`]). With leases other nodes want (etcd),
    /// it is looked at fully and then waited for, without the lock, so
    /// that its addresses are free for the cluster at once.
    fn leave(&self, container: &str, leaving: Leaving) -> Result<Outcome, Failure> {
        let look = match self.config.leases {
            LeaseConfig::File => Look::Quick,
            LeaseConfig::Etcd(_) => Look::Full,
        };
        let outcome = self.leave_locked(container, leaving, look)?;
        if look == Look::Full && matches!(&outcome, Outcome::Left { kept, .. } if !kept.is_empty())
        {
            self.drain_now();
        }
        Ok(outcome)
    }

    /// Waits, without the lock and at most [`kernel::DYING_WAIT`], for the
    /// links of draining namespaces to leave their parents, then takes the
    /// lock again, which sweeps what drained (see [`Node::stores`]). Best
    /// effort: what is not gone by then drains as it would have.
    fn drain_now(&self) {
        let macs = match self.with_stores(reconcile::draining_macs) {
            Ok(macs) => macs,
            Err(failure) => return tracing::warn!(%failure, "reading the namespaces that drain"),
        };
        let waited = kernel::await_macs_gone(&mut RealReach::default(), &macs, kernel::DYING_WAIT);
        if let Err(e) = waited {
            tracing::warn!(error = %e, "waiting for the namespaces that drain");
        }
        if let Err(failure) = self.with_stores(|_| Ok(())) {
            tracing::warn!(%failure, "sweeping the namespaces that drain");
        }
    }

    /// [`Node::leave`] under the lock.
    fn leave_locked(
        &self,
        container: &str,
        leaving: Leaving,
        look: Look,
    ) -> Result<Outcome, Failure> {
        let state = self.lock()?;
        let mut leases = self.leases(&state);
        let mut host = Host::default();
        let mut stores = self.stores(&state, leases.as_mut(), &mut host, reconcile::Sweep::Due);
        shim::around_teardown(
            &self.config,
            container,
            &mut shim::RealHost::default(),
            &mut stores,
            |stores| {
                let outcome = teardown::leave(container, stores, leaving, look)?;
                // A setup killed between its first lease and its first
                // record write leaves only leases, and its claim: this is
                // the one teardown that can know them. Without a claim
                // there is nothing to look for (listing every lease would
                // cost a poststop of a container that was never wired one
                // etcd read of the whole cluster per network).
                if outcome != Outcome::StillRunning
                    && stores.state.has_claim(container).step(Step::ReadRecords)?
                {
                    for name in self.pooled_networks() {
                        reconcile::release_unaccounted(name, container, stores)?;
                    }
                    stores
                        .state
                        .remove_claim(container)
                        .step(Step::WriteRecord)?;
                }
                // Before the shims converge: whatever fails there, the
                // container is detached.
                if leaving == Leaving::Detached {
                    let marker = ContainerRecord {
                        detached: Some(records::now()),
                        ..ContainerRecord::default()
                    };
                    stores
                        .state
                        .put_container(container, &marker)
                        .step(Step::WriteRecord)?;
                }
                Ok(outcome)
            },
        )
    }

    /// The networks with an address pool, whose leases a killed run may
    /// have left.
    pub fn pooled_networks(&self) -> impl Iterator<Item = &str> {
        self.config
            .networks
            .iter()
            .filter(|(_, n)| n.has_pool())
            .map(|(name, _)| name.as_str())
    }
}

/// What `detach` did.
#[derive(Debug)]
pub enum Detached {
    Done(Outcome),
    /// Detached before (and not gc'ed since).
    Already,
}

/// The inode of `pid`'s mount namespace: with the pid, it tells one
/// container instance from a later one.
fn mount_namespace(pid: i32) -> Result<u64, Failure> {
    Ok(
        nsutil::ns::Mntns::open(Path::new(&format!("/proc/{pid}/ns/mnt")))
            .step(Step::OpenRootfs)?
            .id()
            .ino,
    )
}

/// The container's own network namespace, and netlink into it.
struct NetworkTarget {
    kernel: RealKernel,
    netns: NetnsId,
    process: PathBuf,
    pinned: Option<PathBuf>,
    start: Option<u64>,
}

impl NetworkTarget {
    fn open(target: &Target) -> Result<NetworkTarget, Failure> {
        let (process, start, pinned_path) = match (target.pid, target.netns_path) {
            (Some(pid), path) => {
                // Read before the namespace is opened: a pid that is reused
                // in between then fails the identity checks later, not
                // silently.
                (ns::pid_path(pid), kernel::start_time(pid), path)
            }
            // A bare namespace: its path is its member's only way in.
            (None, Some(path)) => (path.to_owned(), None, None),
            (None, None) => {
                return Err(Failure::refuse(
                    Step::OpenNamespace,
                    "neither a process nor a namespace path to wire",
                ))
            }
        };
        let netns = Netns::open(&process).step(Step::OpenNamespace)?;
        let home = Netns::current().step(Step::OpenNamespace)?;
        if netns.id() == home.id() {
            return Err(Failure::refuse(
                Step::OpenNamespace,
                "the container shares the host's network namespace; nsbypass needs it to have its own",
            ));
        }
        // The spec's path is recorded as a second way back in only if it
        // leads to this very namespace.
        let id = netns.id();
        let pinned = pinned_path
            .filter(|p| ns::id_of(p).is_ok_and(|found| found == id))
            .map(Path::to_owned);
        let kernel = RealKernel::new(netns).step(Step::OpenNamespace)?;
        tracing::debug!(netns = %id, "netlink open in host and container namespaces");
        Ok(NetworkTarget {
            kernel,
            netns: id,
            process,
            pinned,
            start,
        })
    }

    fn context<'a>(
        &self,
        target: &Target<'a>,
        node: &'a Node,
        request: &'a Request,
    ) -> setup::Context<'a> {
        setup::Context {
            container: target.container,
            host_id: &node.host_id,
            netns: self.netns,
            process: self.process.clone(),
            pid: target.pid,
            start: self.start,
            pinned: self.pinned.clone(),
            request,
            config: &node.config,
            source: target.source,
        }
    }
}

/// This host's machine id (from `/etc/machine-id`), for doctor.
pub fn this_machine_id() -> Result<String, Failure> {
    machine_id(Path::new(MACHINE_ID))
}

/// This host's machine id. Leases name their host with it and MACs are
/// derived from it, so a host without one (or with an empty one) is an
/// error, not a silent empty string shared with every other such host.
fn machine_id(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::refuse(
            Step::ReadMachineId,
            format!(
                "{}: {e}; nsbypass names this host by it (systemd-machine-id-setup makes one)",
                path.display()
            ),
        )
    })?;
    let id = text.trim();
    if id.is_empty() || id.len() > 128 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Failure::refuse(
            Step::ReadMachineId,
            format!(
                "{} holds no machine id; nsbypass names this host by it (systemd-machine-id-setup makes one)",
                path.display()
            ),
        ));
    }
    Ok(id.to_owned())
}

/// Network setup needs CAP_NET_ADMIN; entering another namespace needs
/// CAP_SYS_ADMIN. Say so up front instead of failing halfway with EPERM.
fn check_capabilities() -> Result<(), Failure> {
    let missing = missing_capabilities().step(Step::CheckCapabilities)?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(Failure::refuse(
        Step::CheckCapabilities,
        format!(
            "nsbypass needs {} but lacks {}; run it as root from the runtime's hooks",
            NEEDED_CAPABILITIES.join(" and "),
            missing.join(" and ")
        ),
    ))
}

/// The capabilities every hook run needs, by name.
pub const NEEDED_CAPABILITIES: [&str; 2] = ["CAP_NET_ADMIN", "CAP_SYS_ADMIN"];

/// Which of [`NEEDED_CAPABILITIES`] this process lacks in its effective
/// set: shared by the hook's check and `nsbypass doctor`.
pub fn missing_capabilities() -> Result<Vec<&'static str>, caps::errors::CapsError> {
    use caps::{CapSet, Capability};
    let effective = caps::read(None, CapSet::Effective)?;
    Ok([Capability::CAP_NET_ADMIN, Capability::CAP_SYS_ADMIN]
        .into_iter()
        .zip(NEEDED_CAPABILITIES)
        .filter(|(cap, _)| !effective.contains(cap))
        .map(|(_, name)| name)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_machine_id_is_an_error_naming_the_file() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("machine-id");
        let e = machine_id(&path).unwrap_err().to_string();
        assert!(
            e.starts_with("read machine id: ") && e.contains("No such file"),
            "{e}"
        );
        std::fs::write(&path, "\n").unwrap();
        let e = machine_id(&path).unwrap_err().to_string();
        assert!(e.contains("holds no machine id"), "{e}");
        std::fs::write(&path, "3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        assert_eq!(
            machine_id(&path).unwrap(),
            "3d1219c7c4c5404aaa1f6d2a48adfda4"
        );
    }
}
