//! Lease policy: bringing records up to date with the kernel, and freeing
//! leases that nothing uses any more.
//!
//! The rule everything here follows: an address stays leased while the
//! namespace it may be configured in exists. Whether a member process
//! still runs does not matter (a pod's pinned namespace outlives its
//! containers, with the link and address in it); whether a recorded path
//! still leads there does not decide it either (a namespace can be kept by
//! an fd or bind mount nobody recorded) — the namespace's id in the host's
//! table does. A lease is freed only when its namespace is gone, when the
//! link it was for is provably not there, or when no record names it at
//! all (setup records intent before it makes anything, so an address no
//! record names was never configured).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use crate::failure::{Failure, Step, StepExt};
use crate::guard::{Guard, HostGuard};
use crate::kernel::{self, Kernel, Presence, Reach};
use crate::lease::{Holder, LeaseStore};
use crate::records::{LinkRecord, NetnsRecord, StateDir};

/// The stores setup, teardown and reclaim read and write, all under the
/// state lock, and this host's identity.
pub struct Stores<'a> {
    pub state: &'a StateDir,
    pub leases: &'a mut dyn LeaseStore,
    pub reach: &'a mut dyn Reach,
    /// The name this host's leases carry (its machine id in the file
    /// store, its node name in etcd): every lease it takes names it, and it
    /// frees only leases that do.
    pub host: &'a str,
    /// This host's machine id, mixed into the host shims' MACs.
    pub machine: &'a str,
    /// The address guard's filters on the parents (see [`crate::guard`]).
    pub guards: &'a mut dyn HostGuard,
}

impl Stores<'_> {
    /// The holder of a lease taken for `container` in namespace `key`.
    pub fn holder(&self, key: &str, container: &str) -> Holder {
        Holder {
            host: self.host.to_owned(),
            netns: key.to_owned(),
            container: container.to_owned(),
        }
    }

    /// Frees every address of `link`, which is gone or never was, once
    /// its guard's keys are off the parent: a lease outlives its guard
    /// never, so a retry after a failure here finds both.
    pub fn release_link(&mut self, key: &str, link: &LinkRecord) -> Result<(), Failure> {
        if let Some(guard) = Guard::of(link).filter(Guard::on_parent) {
            self.guards
                .remove(&link.parent, &guard)
                .step_on(Step::Unguard, &link.network)?;
        }
        let holder = self.holder(key, &link.created_by);
        for address in &link.addresses {
            self.leases
                .release(&link.network, address.addr(), &holder)
                .step_on(Step::ReleaseAddress, &link.network)?;
        }
        Ok(())
    }
}

/// Brings `record` up to date with its namespace, which `kernel` works
/// in (the namespace is reachable): members whose process is gone, and
/// members a killed setup left pending, are dropped; links a killed setup
/// left pending are deleted; links that are no longer there are dropped.
/// The addresses of dropped links are freed. Links nobody wants any more
/// stay: deciding that is teardown's (or gc's) job.
pub fn reconcile_in(
    mut record: NetnsRecord,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
) -> Result<NetnsRecord, Failure> {
    let id = record.id();
    let key = record.key();
    record.members.retain(|container, member| {
        if member.pending {
            tracing::warn!(container, "dropping a member a killed setup left pending");
            return false;
        }
        let alive = kernel::alive(stores.reach, member, id);
        if !alive {
            tracing::warn!(container, "dropping a member that no longer runs here");
        }
        alive
    });
    // Pending links are found by MAC or name: one dump of a container's
    // few links, and only after a killed setup.
    let mut dump = None;
    for link in std::mem::take(&mut record.links) {
        let network = link.network.clone();
        let found = match link.index {
            Some(index) if !link.pending => kernel
                .link_by_index(index)
                .step_on(Step::ReadRecords, &network)?
                .filter(|l| link.is(l)),
            _ => {
                if dump.is_none() {
                    dump = Some(kernel.links().step_on(Step::ReadRecords, &network)?);
                }
                dump.as_ref()
                    .expect("just listed")
                    .iter()
                    .find(|l| link.is(l))
                    .cloned()
            }
        };
        if found.is_none() || link.pending {
            // The guard's filter in the namespace, if it was made: it
            // would outlive the link.
            if link.guard.is_some() {
                kernel
                    .unguard_link(&link.ifname)
                    .step_on(Step::Unguard, &network)?;
            }
        }
        match (found, link.pending) {
            (Some(_), false) => record.links.push(link),
            (Some(made), true) => {
                tracing::warn!(network, ifname = %made.name, "deleting a link a killed setup left");
                kernel
                    .delete(made.index)
                    .step_on(Step::DeleteLink, &network)?;
                stores.release_link(&key, &link)?;
            }
            (None, pending) => {
                if !pending {
                    tracing::warn!(network, ifname = %link.ifname, "recorded link is gone; dropping it");
                }
                stores.release_link(&key, &link)?;
            }
        }
    }
    Ok(record)
}

/// Brings `record` up to date wherever its namespace stands (see
/// [`reconcile_in`]); a namespace that is gone frees everything, one that
/// lives on out of reach keeps its links and their leases. Writes the
/// record back if it changed. Returns it, with a kernel for the namespace
/// when a recorded path still leads there.
pub fn reconcile(
    record: NetnsRecord,
    stores: &mut Stores,
) -> Result<(NetnsRecord, Option<Box<dyn Kernel>>), Failure> {
    let before = record.clone();
    let presence = kernel::presence(stores.reach, &record).step(Step::OpenNamespace)?;
    let (record, kernel) = settle(record, presence, stores)?;
    if record != before {
        stores.state.put_netns(&record).step(Step::WriteRecord)?;
    }
    Ok((record, kernel))
}

/// The record once its namespace's `presence` is known.
pub fn settle(
    mut record: NetnsRecord,
    presence: Presence,
    stores: &mut Stores,
) -> Result<(NetnsRecord, Option<Box<dyn Kernel>>), Failure> {
    match presence {
        Presence::Reachable(mut kernel) => {
            let record = reconcile_in(record, kernel.as_mut(), stores)?;
            Ok((record, Some(kernel)))
        }
        // A dying namespace's links still answer for their addresses; they
        // stay leased until a later look finds them gone.
        Presence::Unreachable | Presence::Dying => {
            // Nobody can run in a namespace no member's path leads to.
            record.members.clear();
            Ok((record, None))
        }
        Presence::Gone => {
            let key = record.key();
            for link in std::mem::take(&mut record.links) {
                stores.release_link(&key, &link)?;
            }
            record.members.clear();
            Ok((record, None))
        }
    }
}

/// Frees this host's leases on `network` that nothing uses: no record
/// names them, or their record, brought up to date, no longer does.
/// Returns how many.
pub fn reclaim(network: &str, stores: &mut Stores) -> Result<usize, Failure> {
    free_unused(network, stores, |_| true)
}

/// A hook run looks at a draining namespace (see [`sweep_draining`]) only
/// once it began to drain at least this many seconds ago: the kernel is
/// normally done in some tens of milliseconds, and looking sooner would
/// have nearly every prestart of a churning host pay a dump of the
/// parent's unicast list (which grows with every MACVLAN on it) for the
/// poststop just before. A second later one run looks at all that are due
/// at once, with one dump.
pub const DRAINING_AFTER: u64 = 1;

/// A namespace still there this many seconds after it began to drain is
/// kept by someone; see [`sweep_draining`].
pub const DRAINING_KEPT: u64 = 2;

/// How long (seconds) a draining namespace is looked at by every hook run;
/// after that only `list`, `gc` and a setup that needs its address do.
/// Normally the kernel is done in some tens of milliseconds; one that
/// lives on out of reach (someone keeps it) would otherwise cost every run
/// a few netlink requests forever.
pub const DRAINING_LOOK: u64 = 60;

/// Frees the leases of draining namespaces the kernel has finished
/// destroying, and forgets those records: what poststop left to drain
/// rather than wait for (see [`crate::teardown`]). One still there a second
/// after it began to drain is kept by someone (a process, an fd): its links
/// are deleted there, as the poststop of its last member would have. Runs
/// at the start of every locked run; it reads only the draining index, so
/// it costs one directory read when nothing drains. Returns how many
/// namespaces went.
pub fn sweep_draining(stores: &mut Stores, sweep: Sweep) -> Result<usize, Failure> {
    let now = crate::records::now();
    let mut due = Vec::new();
    for (key, marker) in stores.state.draining().step(Step::ReadRecords)? {
        let age = now.saturating_sub(marker.since);
        let look = match sweep {
            Sweep::All => true,
            Sweep::Due => (DRAINING_AFTER..=DRAINING_LOOK).contains(&age),
        };
        if look {
            due.push((key, age));
        }
    }
    if due.is_empty() {
        return Ok(0);
    }
    let mut swept = 0;
    let mut kept = Vec::new();
    {
        // One dump of the ids and of each parent's unicast list for all
        // of them.
        let mut census = kernel::Census::new(stores.reach);
        let mut gone = Vec::new();
        for (key, age) in due {
            match stores.state.netns(&key).step(Step::ReadRecords)? {
                None => gone.push((key, None)),
                Some(record) if !record.members.is_empty() => gone.push((key, None)),
                Some(record) if census.gone(&record).step(Step::OpenNamespace)? => {
                    gone.push((key, Some(record)))
                }
                Some(record) => kept.push((key, age, record)),
            }
        }
        drop(census);
        for (key, record) in gone {
            if let Some(record) = record {
                let (record, _) = settle(record, Presence::Gone, stores)?;
                stores.state.put_netns(&record).step(Step::WriteRecord)?;
                swept += 1;
            }
            stores.state.unmark_draining(&key).step(Step::WriteRecord)?;
        }
    }
    // Not gone a while after its last member left: someone keeps it. Look
    // for it as a full teardown would (every process and fd) and remove the
    // links there, which nobody wants.
    for (_, age, record) in kept {
        if sweep == Sweep::All || age >= DRAINING_KEPT {
            let presence = kernel::presence(stores.reach, &record).step(Step::OpenNamespace)?;
            swept += usize::from(empty_kept(record, presence, stores)?);
        }
    }
    Ok(swept)
}

/// Which draining namespaces [`sweep_draining`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Those that began to drain between [`DRAINING_AFTER`] and
    /// [`DRAINING_LOOK`] seconds ago: what every hook run does.
    Due,
    /// All of them: what `list` and `gc` do.
    All,
}

/// Deletes the links of a memberless `record` in its namespace, if
/// `presence` reaches it (or frees them if it is gone); returns whether the
/// record is empty now.
fn empty_kept(
    record: NetnsRecord,
    presence: Presence,
    stores: &mut Stores,
) -> Result<bool, Failure> {
    let key = record.key();
    let (mut record, kernel) = settle(record, presence, stores)?;
    if let Some(mut kernel) = kernel {
        for link in std::mem::take(&mut record.links) {
            crate::teardown::remove_link(&link, kernel.as_mut(), stores, &key)?;
        }
    }
    stores.state.put_netns(&record).step(Step::WriteRecord)?;
    Ok(record.is_empty())
}

/// The (parent, MAC) of every link of a draining namespace (see
/// [`kernel::parent_macs`]).
pub fn draining_macs(stores: &mut Stores) -> Result<Vec<(String, String)>, Failure> {
    let mut macs = Vec::new();
    for (key, _) in stores.state.draining().step(Step::ReadRecords)? {
        if let Some(record) = stores.state.netns(&key).step(Step::ReadRecords)? {
            macs.extend(kernel::parent_macs(&record));
        }
    }
    Ok(macs)
}

/// Waits, up to `wait`, until the links on `network` of namespaces the
/// kernel is still destroying (records without members whose namespace is
/// dying or out of reach) have left their parents, so that a reclaim
/// after it frees their addresses.
///
/// Teardown does not wait for a dying namespace: the kernel takes some
/// tens of milliseconds to destroy one, and every poststop would pay for
/// it. Its addresses drain instead, and only a setup that finds nothing
/// else free (a full pool, or a pinned address still draining) waits for
/// them, holding the lock: that is rare, and short.
pub fn await_draining(network: &str, stores: &mut Stores, wait: Duration) -> Result<(), Failure> {
    let mut macs = Vec::new();
    for key in stores
        .state
        .netns_keys()
        .step_on(Step::ReadRecords, network)?
    {
        let Some(record) = stores
            .state
            .netns(&key)
            .step_on(Step::ReadRecords, network)?
        else {
            continue;
        };
        if !record.members.is_empty() || !record.links.iter().any(|l| l.network == network) {
            continue;
        }
        let presence =
            kernel::presence(stores.reach, &record).step_on(Step::OpenNamespace, network)?;
        if matches!(presence, Presence::Dying | Presence::Unreachable) {
            macs.extend(kernel::parent_macs(&record));
        }
    }
    kernel::await_macs_gone(stores.reach, &macs, wait).step_on(Step::OpenNamespace, network)
}

/// Frees this host's leases on `network` taken for `container` that no
/// record accounts for: a setup killed after leasing but before its first
/// record write leaves them, and its container's poststop finds no record.
/// Returns how many.
pub fn release_unaccounted(
    network: &str,
    container: &str,
    stores: &mut Stores,
) -> Result<usize, Failure> {
    free_unused(network, stores, |h| h.container == container)
}

/// Frees the leases on `network` of this host that `which` selects and
/// nothing uses.
fn free_unused(
    network: &str,
    stores: &mut Stores,
    which: impl Fn(&Holder) -> bool,
) -> Result<usize, Failure> {
    let leases = stores
        .leases
        .list(network)
        .step_on(Step::LeaseAddress, network)?;
    let mut freed = 0;
    for (address, holder) in leases {
        let ours = holder.host.is_empty() || holder.host == stores.host;
        if ours && which(&holder) && !in_use(network, address, &holder, stores)? {
            tracing::warn!(network, %address, container = %holder.container, "freeing a lease nothing uses");
            stores
                .leases
                .release(network, address, &holder)
                .step_on(Step::LeaseAddress, network)?;
            freed += 1;
        }
    }
    Ok(freed)
}

/// Whether the lease of `address` held by `holder` is accounted for, after
/// bringing its record up to date (which may free it).
pub fn in_use(
    network: &str,
    address: IpAddr,
    holder: &Holder,
    stores: &mut Stores,
) -> Result<bool, Failure> {
    // The host shim's lease has no namespace record: its shim record says.
    if holder.netns == crate::shim::HOLDER_NETNS {
        return crate::shim::holds(network, address, stores);
    }
    let Some(record) = stores
        .state
        .netns(&holder.netns)
        .step_on(Step::ReadRecords, network)?
    else {
        return Ok(false);
    };
    if !record.holds(network, address) {
        return Ok(false);
    }
    let (record, _) = reconcile(record, stores)?;
    Ok(record.holds(network, address)
        && stores
            .leases
            .holder(network, address)
            .step_on(Step::LeaseAddress, network)?
            .is_some())
}

/// Like [`in_use`], but a lease whose namespace is still being destroyed
/// is waited for (see [`await_draining`]): an address pinned again right
/// after its container's poststop is free a moment later.
pub fn in_use_unless_draining(
    network: &str,
    address: IpAddr,
    holder: &Holder,
    stores: &mut Stores,
) -> Result<bool, Failure> {
    if !in_use(network, address, holder, stores)? {
        return Ok(false);
    }
    // Looked at again whatever the wait found: the namespace may have gone
    // between the two looks.
    await_draining(network, stores, kernel::DYING_WAIT)?;
    in_use(network, address, holder, stores)
}

/// How many nsbypass links the records hold on `parent`, in every
/// namespace and as host shims, pending ones included. With `prune`, every record with a
/// link there is first brought up to date (see [`reconcile`]), so links of
/// namespaces that are gone do not count.
pub fn links_on(parent: &str, stores: &mut Stores, prune: bool) -> Result<usize, Failure> {
    let mut count = 0;
    let mut attached: BTreeSet<String> = BTreeSet::new();
    for key in stores.state.netns_keys().step(Step::ReadRecords)? {
        let Some(mut record) = stores.state.netns(&key).step(Step::ReadRecords)? else {
            continue;
        };
        let on_parent = |r: &NetnsRecord| r.links.iter().filter(|l| l.parent == parent).count();
        if prune && on_parent(&record) > 0 {
            record = reconcile(record, stores)?.0;
        }
        count += on_parent(&record);
        attached.extend(
            record
                .links
                .iter()
                .filter(|l| !l.pending)
                .map(|l| l.network.clone()),
        );
    }
    // The host shims are nsbypass links on their parent too. Pruning does
    // not count one a killed run left pending or one whose network has no
    // attachment left: the next converge on its network (or gc) removes
    // those.
    for network in stores.state.shim_networks().step(Step::ReadRecords)? {
        let Some(shim) = stores.state.shim(&network).step(Step::ReadRecords)? else {
            continue;
        };
        let live = !prune || (!shim.pending && attached.contains(&network));
        count += usize::from(shim.parent == parent && live);
    }
    Ok(count)
}

/// How long gc keeps a `detach` marker (seconds): a second `detach` of
/// the id succeeds that long.
pub const DETACHED_MARKER_AGE: u64 = 24 * 3600;

/// What [`collect`] freed, and what it could not.
#[derive(Debug, Default)]
pub struct Collected {
    /// Leases freed, as (network, address, container that held it).
    pub leases: Vec<(String, IpAddr, String)>,
    /// Namespace records removed: their namespaces are gone.
    pub namespaces: Vec<String>,
    /// Container records removed: their namespace record is gone, or they
    /// mark an id `detach` finished with more than a day ago.
    pub containers: Vec<String>,
    /// Links left in place: their namespaces live on.
    pub live_links: usize,
    pub failures: Vec<Failure>,
}

/// Frees everything of this host that no live namespace accounts for:
/// records of namespaces that are gone (and their leases), what killed
/// setups left pending, container records that lead nowhere, and leases no
/// record names, on `networks` and on every network the store has leases
/// for. A namespace that lives keeps its links and their leases, whether
/// or not anything runs in it; only `detach` or poststop removes those.
/// Keeps going past failures and returns them.
pub fn collect(stores: &mut Stores, networks: &[&str]) -> Result<Collected, Failure> {
    let mut collected = Collected::default();
    let mut pooled: BTreeSet<String> = networks.iter().map(|n| (*n).to_owned()).collect();
    pooled.extend(stores.leases.networks().step(Step::LeaseAddress)?);
    let leases_before = all_leases(stores, &pooled)?;

    // Namespaces whose last member left while they were out of reach:
    // their links go wherever someone keeps them.
    if let Err(failure) = sweep_draining(stores, Sweep::All) {
        collected.failures.push(failure);
    }
    for key in stores.state.netns_keys().step(Step::ReadRecords)? {
        let record = match stores.state.netns(&key).step(Step::ReadRecords) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(failure) => {
                collected.failures.push(failure);
                continue;
            }
        };
        match reconcile(record, stores) {
            Ok((record, _)) if record.is_empty() => collected.namespaces.push(key),
            Ok((record, _)) => collected.live_links += record.links.len(),
            Err(failure) => collected.failures.push(failure),
        }
    }

    for network in &pooled {
        if let Err(failure) = reclaim(network, stores) {
            collected.failures.push(failure);
        }
    }
    // After the leases: freeing one reconciles its record, which may
    // find the namespace gone only now.
    for id in stores.state.container_ids().step(Step::ReadRecords)? {
        match stale_pointer(stores.state, &id) {
            Ok(false) => {}
            Ok(true) => match stores.state.remove_container(&id).step(Step::WriteRecord) {
                Ok(()) => collected.containers.push(id),
                Err(failure) => collected.failures.push(failure),
            },
            Err(failure) => collected.failures.push(failure),
        }
    }

    // A pod index entry whose namespace no longer holds the pod's links
    // means nothing (see PodRecord); gc forgets it.
    for (file, entry) in stores.state.pods().step(Step::ReadRecords)? {
        let holds = match entry {
            Some(entry) => stores
                .state
                .netns(&entry.netns)
                .step(Step::ReadRecords)?
                .is_some_and(|r| r.links.iter().any(|l| l.pod.as_deref() == Some(&entry.pod))),
            // Not where its pod's entry would be: no setup reads it.
            None => false,
        };
        if !holds {
            if let Err(failure) = stores.state.remove_pod_file(&file).step(Step::WriteRecord) {
                collected.failures.push(failure);
            }
        }
    }

    // Every lease nothing accounts for is free now: the claims of killed
    // setups (see StateDir::put_claim) have nothing left to find.
    for id in stores.state.claim_ids().step(Step::ReadRecords)? {
        if stores
            .state
            .container(&id)
            .step(Step::ReadRecords)?
            .is_none()
        {
            if let Err(failure) = stores.state.remove_claim(&id).step(Step::WriteRecord) {
                collected.failures.push(failure);
            }
        }
    }

    // The parents' guard tables hold exactly the recorded links' keys:
    // a run killed between two steps, or records removed by hand, leave
    // none behind.
    if let Err(failure) = converge_guards(stores) {
        collected.failures.push(failure);
    }

    let leases_after = all_leases(stores, &pooled)?;
    collected.leases = leases_before
        .into_iter()
        .filter(|(network, address, _)| {
            !leases_after
                .iter()
                .any(|(n, a, _)| n == network && a == address)
        })
        .collect();
    Ok(collected)
}

/// Makes the parents' guard tables match the records (see
/// [`HostGuard::converge`]).
fn converge_guards(stores: &mut Stores) -> Result<(), Failure> {
    let mut wanted: std::collections::BTreeMap<String, Vec<Guard>> = Default::default();
    for key in stores.state.netns_keys().step(Step::ReadRecords)? {
        let Some(record) = stores.state.netns(&key).step(Step::ReadRecords)? else {
            continue;
        };
        for link in &record.links {
            if let Some(guard) = Guard::of(link).filter(Guard::on_parent) {
                wanted.entry(link.parent.clone()).or_default().push(guard);
            }
        }
    }
    for table in stores.guards.converge(&wanted).step(Step::Unguard)? {
        tracing::info!(table, "removed a guard table no recorded link needs");
    }
    Ok(())
}

/// Whether container record `id` leads nowhere: an old `detach` marker, a
/// pointer to a namespace record that is gone, or profiles whose
/// container instance no longer runs.
fn stale_pointer(state: &StateDir, id: &str) -> Result<bool, Failure> {
    let Some(record) = state.container(id).step(Step::ReadRecords)? else {
        return Ok(false);
    };
    if let Some(at) = record.detached {
        return Ok(crate::records::now().saturating_sub(at) >= DETACHED_MARKER_AGE);
    }
    if let Some(key) = &record.netns {
        return Ok(state.netns(key).step(Step::ReadRecords)?.is_none());
    }
    Ok(match &record.profiles {
        Some(profiles) => !kernel::same_mount_namespace(profiles.pid, profiles.mntns),
        None => true,
    })
}

/// This host's leases on `networks`, as (network, address, container).
fn all_leases(
    stores: &Stores,
    networks: &BTreeSet<String>,
) -> Result<Vec<(String, IpAddr, String)>, Failure> {
    let mut all = Vec::new();
    for network in networks {
        for (address, holder) in stores
            .leases
            .list(network)
            .step_on(Step::LeaseAddress, network)?
        {
            if holder.host.is_empty() || holder.host == stores.host {
                all.push((network.clone(), address, holder.container));
            }
        }
    }
    Ok(all)
}
