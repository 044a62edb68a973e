//! Setup: decide everything and check it against the config, the records
//! and the host ([`prepare`]); then record what is about to be made and
//! make it, with an undo log ([`Prepared::apply`]), so that a failure at
//! any step (that step included) leaves the host as it was, and a SIGKILL
//! at any step leaves records naming everything that was made.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use nsutil::netlink::format_mac;
use nsutil::ns::NetnsId;
use runtime_config::{Config, MacvlanMode, Network, Pool, Request};

use crate::derive;
use crate::failpoint;
use crate::failure::{no_such, Failure, Refusal, Step, StepExt};
use crate::guard::{Guard, Guarded, HostGuard};
use crate::kernel::{self, Kernel, MacvlanSpec, Presence};
use crate::lease::{check_assignable, LeaseError};
use crate::reconcile::{self, Stores};
use crate::records::{
    self, ContainerRecord, LinkRecord, Member, NetnsRecord, PodRecord, ProfilesRecord, Source,
};
use crate::teardown;

/// Who is being set up, and where.
pub struct Context<'a> {
    pub container: &'a str,
    /// Mixed into MACs so that same-named containers on two hosts of one L2
    /// do not collide (`/etc/machine-id`).
    pub host_id: &'a str,
    pub netns: NetnsId,
    /// The container init's `/proc/<pid>/ns/net`, its pid and start time,
    /// and the spec's namespace path if it leads to the same namespace
    /// (see `records::Member`).
    pub process: PathBuf,
    pub pid: Option<i32>,
    pub start: Option<u64>,
    pub pinned: Option<PathBuf>,
    pub request: &'a Request,
    pub config: &'a Config,
    /// The hook, or `nsbypass attach`.
    pub source: Source,
}

impl Context<'_> {
    /// What the container's MACs and address slots are derived from: its
    /// pod (`NAMESPACE/NAME`) when the spec says, so that a re-created pod
    /// gets them back although its container ids are new; else its id.
    pub fn identity(&self) -> &str {
        self.request.pod.as_deref().unwrap_or(self.container)
    }
}

/// What a container has on one network once setup is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    pub network: String,
    pub ifname: String,
    pub mac: String,
    pub addresses: Vec<IpNet>,
    /// Another container of the namespace (its pod) made this link.
    pub shared: bool,
}

impl Wired {
    fn from_record(link: &LinkRecord, container: &str) -> Wired {
        Wired {
            network: link.network.clone(),
            ifname: link.ifname.clone(),
            mac: link.mac.clone(),
            addresses: link.addresses.clone(),
            shared: link.created_by != container,
        }
    }
}

/// A link's addresses for a log or output line: `10.0.0.5/24,fd00::5/64`,
/// or `l2-only`.
pub fn addresses(list: &[IpNet]) -> String {
    if list.is_empty() {
        return "l2-only".to_owned();
    }
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// One requested network, checked against the config.
struct Wanted<'a> {
    network: &'a Network,
    ifname: String,
    /// Pinned addresses, at most one per family.
    addresses: Vec<IpAddr>,
}

/// A link to create, decided in full before anything is touched.
struct Plan<'a> {
    network: &'a Network,
    ifname: String,
    parent_index: u32,
    /// Pinned addresses, at most one per family.
    addresses: Vec<IpAddr>,
}

/// What to undo if a later step fails, newest last.
enum Undo {
    RemoveClaim,
    Release {
        network: String,
        address: IpAddr,
    },
    DeleteLink {
        network: String,
        index: u32,
    },
    UnguardLink {
        network: String,
        ifname: String,
    },
    UnguardParent {
        network: String,
        parent: String,
        guard: Guard,
    },
    RestoreContainer(Option<ContainerRecord>),
    RestoreNetns(NetnsRecord),
    RestorePod(String, Option<PodRecord>),
}

/// Everything setup will do, checked; nothing of the request made yet.
pub struct Prepared<'a> {
    key: String,
    /// The namespace's record, brought up to date with the kernel.
    record: NetnsRecord,
    wanted: Vec<Wanted<'a>>,
    plans: Vec<Plan<'a>>,
    /// Links the namespace already has (its pod made them).
    shared: Vec<Wired>,
    /// This container's record as it was, for rollback.
    pointer: Option<ContainerRecord>,
    /// The networks a stale record of this container id was on: it left
    /// them (see [`clear_stale_container`]), so their host shims may be
    /// unwanted now.
    pub left: Vec<String>,
    /// Whether the new links take the MACs derived from the pod (see
    /// [`claim_pod_macs`]) rather than from the container id.
    pod_macs: bool,
}

/// Wires `ctx.container` into the networks it requested: [`prepare`],
/// then [`Prepared::apply`].
#[cfg(test)]
pub fn setup(
    ctx: &Context,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
) -> Result<Vec<Wired>, Failure> {
    prepare(ctx, kernel, stores)?.apply(ctx, kernel, stores, None)
}

/// Checks the request against the config, the records and the host.
/// Changes nothing the request asks for; it may repair what killed runs
/// left (a stale record of this container id, a killed setup's link).
pub fn prepare<'a>(
    ctx: &Context<'a>,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
) -> Result<Prepared<'a>, Failure> {
    let key = ctx.netns.key();
    let wanted = resolve(ctx.request, ctx.config)?;
    let (pointer, left) = clear_stale_container(ctx, stores)?;
    let cookie = kernel.cookie().step(Step::OpenNamespace)?;
    let record = match stores.state.netns(&key).step(Step::ReadRecords)? {
        // The record of a namespace that died without a poststop, whose
        // inode number this one got: what it held went with it.
        Some(found) if found.cookie.is_some() && found.cookie != cookie => {
            tracing::warn!(netns = %found.id(), "clearing the record of a namespace that is gone");
            let (gone, _) = reconcile::settle(found, Presence::Gone, stores)?;
            stores.state.put_netns(&gone).step(Step::WriteRecord)?;
            NetnsRecord {
                cookie,
                ..NetnsRecord::new(ctx.netns)
            }
        }
        Some(found) => {
            let before = found.clone();
            let mut record = reconcile::reconcile_in(found, kernel, stores)?;
            record.cookie = record.cookie.or(cookie);
            if record != before {
                stores.state.put_netns(&record).step(Step::WriteRecord)?;
            }
            record
        }
        None => NetnsRecord {
            cookie,
            ..NetnsRecord::new(ctx.netns)
        },
    };

    let mut shared = Vec::new();
    let mut plans = Vec::new();
    for want in &wanted {
        match record.link(&want.network.name) {
            Some(link) => {
                check_shared_address(link, want)?;
                shared.push(Wired::from_record(link, ctx.container));
            }
            None => plans.push(plan(want, &record, kernel, stores, &key)?),
        }
    }
    // Before the budget: an earlier incarnation of the pod that is gone
    // no longer counts.
    let pod_macs = !plans.is_empty() && claim_pod_macs(ctx, &key, stores)?;
    check_link_budget(&plans, ctx.config, stores)?;
    Ok(Prepared {
        key,
        record,
        wanted,
        plans,
        shared,
        pointer,
        left,
        pod_macs,
    })
}

impl Prepared<'_> {
    /// Whether applying would change anything.
    pub fn is_noop(&self, container: &str) -> bool {
        let member = self.record.members.get(container);
        self.plans.is_empty()
            && member.is_some_and(|m| {
                self.wanted
                    .iter()
                    .all(|w| m.networks.contains(&w.network.name))
            })
    }

    /// Records the intent, then makes each link; `profiles` goes into the
    /// container's record. On failure everything made is undone, newest
    /// first, the failing step included.
    pub fn apply(
        self,
        ctx: &Context,
        kernel: &mut dyn Kernel,
        stores: &mut Stores,
        profiles: Option<ProfilesRecord>,
    ) -> Result<Vec<Wired>, Failure> {
        if self.is_noop(ctx.container) && profiles.is_none() {
            return Ok(self.shared);
        }
        let mut undo = Vec::new();
        match self.make(ctx, kernel, stores, profiles, &mut undo) {
            Ok(wired) => Ok(wired),
            Err(failure) => Err(failure.with_rollback(roll_back(undo, ctx, kernel, stores))),
        }
    }

    fn make(
        self,
        ctx: &Context,
        kernel: &mut dyn Kernel,
        stores: &mut Stores,
        profiles: Option<ProfilesRecord>,
        undo: &mut Vec<Undo>,
    ) -> Result<Vec<Wired>, Failure> {
        let Prepared {
            key,
            mut record,
            wanted,
            plans,
            mut shared,
            pointer,
            left: _,
            pod_macs,
        } = self;
        let before = record.clone();
        // Whose MACs: the pod's, once the index names this namespace.
        let mac_of = match (&ctx.request.pod, pod_macs) {
            (Some(pod), true) => {
                let previous = stores.state.pod(pod).step(Step::ReadRecords)?;
                if previous.as_ref().is_none_or(|p| p.netns != key) {
                    undo.push(Undo::RestorePod(pod.clone(), previous));
                    stores
                        .state
                        .put_pod(&PodRecord {
                            pod: pod.clone(),
                            netns: key.clone(),
                        })
                        .step(Step::WriteRecord)?;
                }
                pod.as_str()
            }
            _ => ctx.container,
        };

        // Intent: the namespace's id (so its liveness can be told without
        // a path), the addresses, and every link about to be made.
        if !plans.is_empty() && record.nsid.is_none() {
            failpoint::hit("assign-nsid").step(Step::AssignNsid)?;
            record.nsid = Some(kernel.assign_nsid().step(Step::AssignNsid)?);
        }
        let leasing = plans.iter().any(|p| p.network.has_pool());
        if leasing {
            undo.push(Undo::RemoveClaim);
            stores
                .state
                .put_claim(ctx.container)
                .step(Step::WriteRecord)?;
        }
        for plan in &plans {
            let name = plan.network.name.as_str();
            // One address per family the network has a pool for, IPv4 first.
            let mut addresses = Vec::new();
            for pool in plan.network.pools() {
                let want = plan
                    .addresses
                    .iter()
                    .copied()
                    .find(|a| a.is_ipv6() == pool.is_ipv6());
                failpoint::hit("lease").step_on(Step::LeaseAddress, name)?;
                let address = lease(ctx, name, pool, want, &key, stores)?;
                undo.push(Undo::Release {
                    network: name.to_owned(),
                    address,
                });
                tracing::debug!(network = name, %address, "address leased");
                addresses.push(
                    IpNet::new(address, pool.prefix_len()).expect("prefix from a valid subnet"),
                );
            }
            record.links.push(LinkRecord {
                network: name.to_owned(),
                ifname: plan.ifname.clone(),
                index: None,
                mac: format_mac(&derive::mac(ctx.host_id, mac_of, name)),
                parent: plan.network.parent.clone(),
                addresses,
                created_by: ctx.container.to_owned(),
                temporary_name: Some(derive::temporary_ifname(&key, ctx.container, name)),
                passthru: plan.network.mode == MacvlanMode::Passthru,
                pending: true,
                source: ctx.source,
                since: Some(records::now()),
                guard: plan.network.guard.then(|| Guarded {
                    ethertypes: plan.network.guard_allow_ethertypes.clone(),
                }),
                pod: ctx.request.pod.clone(),
            });
        }
        add_member(&mut record, ctx, &wanted);
        undo.push(Undo::RestoreNetns(before));
        failpoint::hit("write-intent").step(Step::WriteRecord)?;
        stores.state.put_netns(&record).step(Step::WriteRecord)?;
        // The pointer: poststop, which has no pid, starts from it.
        let new_pointer = ContainerRecord {
            netns: Some(key.clone()),
            profiles: profiles.or_else(|| pointer.as_ref().and_then(|p| p.profiles.clone())),
            detached: None,
        };
        undo.push(Undo::RestoreContainer(pointer));
        failpoint::hit("write-pointer").step(Step::WriteRecord)?;
        stores
            .state
            .put_container(ctx.container, &new_pointer)
            .step(Step::WriteRecord)?;
        // Poststop starts from the pointer: it finds the leases now.
        if leasing {
            stores
                .state
                .remove_claim(ctx.container)
                .step(Step::WriteRecord)?;
        }

        // Effects.
        for plan in &plans {
            let at = record
                .links
                .iter()
                .position(|l| l.pending && l.network == plan.network.name)
                .expect("recorded above");
            wire(plan, &mut record.links[at], kernel, stores.guards, undo)?;
            shared.push(Wired::from_record(&record.links[at], ctx.container));
        }
        if let Some(member) = record.members.get_mut(ctx.container) {
            member.pending = false;
        }
        failpoint::hit("write-final").step(Step::WriteRecord)?;
        stores.state.put_netns(&record).step(Step::WriteRecord)?;
        // Report in request order.
        let order = |w: &Wired| wanted.iter().position(|x| x.network.name == w.network);
        shared.sort_by_key(order);
        Ok(shared)
    }
}

/// Checks the request against the config: known networks, distinct
/// interface names, requested addresses inside their ranges.
fn resolve<'a>(request: &Request, config: &'a Config) -> Result<Vec<Wanted<'a>>, Failure> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for (position, name) in request.networks.iter().enumerate() {
        let network = config.networks.get(name).ok_or_else(|| {
            Failure::on(
                Step::Validate,
                name,
                no_such("network", &config.path, config.networks.keys()),
            )
        })?;
        let ifname = network
            .ifname
            .clone()
            .unwrap_or_else(|| format!("net{}", position + 1));
        if let Some(other) = wanted.iter().find(|w| w.ifname == ifname) {
            return Err(Failure::on(
                Step::Validate,
                name,
                Refusal(format!(
                    "interface name {ifname} is also network {}'s",
                    other.network.name
                )),
            ));
        }
        let addresses = request.addresses.get(name).cloned().unwrap_or_default();
        for &address in &addresses {
            let pool = network.pool_for(address).ok_or_else(|| {
                let key = if address.is_ipv6() {
                    "subnet6"
                } else {
                    "subnet"
                };
                Failure::on(
                    Step::Validate,
                    name,
                    Refusal(format!("cannot take {address}: the network has no {key}")),
                )
            })?;
            check_assignable(pool, address).step_on(Step::Validate, name)?;
        }
        wanted.push(Wanted {
            network,
            ifname,
            addresses,
        });
    }
    Ok(wanted)
}

/// A record of this container id in another namespace means its poststop
/// never ran; finish that teardown first. Unless that namespace is still in
/// use by it: then two runtimes use one id, and wiring the second would
/// tear the first down. Returns the pointer as it was, for rollback, and
/// the networks the stale record was on.
fn clear_stale_container(
    ctx: &Context,
    stores: &mut Stores,
) -> Result<(Option<ContainerRecord>, Vec<String>), Failure> {
    let Some(old) = stores
        .state
        .container(ctx.container)
        .step(Step::ReadRecords)?
    else {
        return Ok((None, Vec::new()));
    };
    let Some(old_netns) = old.netns.clone().filter(|k| *k != ctx.netns.key()) else {
        return Ok((Some(old), Vec::new()));
    };
    let mut left = Vec::new();
    if let Some(record) = stores.state.netns(&old_netns).step(Step::ReadRecords)? {
        left = record.links.iter().map(|l| l.network.clone()).collect();
        if let Some(member) = record.members.get(ctx.container) {
            if kernel::alive(stores.reach, member, record.id()) {
                return Err(Failure::refuse(
                    Step::Validate,
                    format!(
                        "this container id is already wired into another live network namespace ({}); are two runtimes using one id?",
                        record.id()
                    ),
                ));
            }
        }
    }
    tracing::warn!(container = ctx.container, old = %old_netns, "clearing a stale record of this container id");
    teardown::teardown(ctx.container, stores).map_err(|f| {
        Failure::new(
            f.step,
            Refusal(format!(
                "clearing the stale record of this container id: {f}"
            )),
        )
    })?;
    Ok((None, left))
}

/// Whether this setup of a Kubernetes pod may give its new links the MACs
/// derived from the pod, which an earlier incarnation of the pod (same
/// namespace and name, another network namespace) may still hold: the
/// kernel refuses a MAC twice on one parent, and nsbypass tells a dying
/// namespace from a gone one by its MACs there, so no two records may
/// hold one. The earlier one's record (found through the pod index,
/// [`PodRecord`]) is brought up to date first: a namespace that is gone
/// (a pod CRI-O stopped but has not removed, whose poststop has not run)
/// frees its links' leases and MACs at once, so the new incarnation gets
/// its address back too; one the kernel is still destroying is waited
/// for, at most [`kernel::DYING_WAIT`], as a pool that is full waits. One
/// that lives on (a force-deleted pod still running, another container
/// with the same pod annotations, a namespace someone keeps) keeps them,
/// and this setup takes the MACs of its container id instead, as before
/// pods had an identity: a MAC that churns rather than a pod that fails.
fn claim_pod_macs(ctx: &Context, key: &str, stores: &mut Stores) -> Result<bool, Failure> {
    let Some(pod) = ctx.request.pod.as_deref() else {
        return Ok(false);
    };
    let Some(index) = stores.state.pod(pod).step(Step::ReadRecords)? else {
        return Ok(true);
    };
    if index.netns == key {
        return Ok(true);
    }
    let holds = |record: &NetnsRecord| {
        record.links.iter().any(|l| {
            l.pod.as_deref() == Some(pod)
                && l.mac == format_mac(&derive::mac(ctx.host_id, pod, &l.network))
        })
    };
    let mut waited = false;
    loop {
        let Some(old) = stores.state.netns(&index.netns).step(Step::ReadRecords)? else {
            return Ok(true);
        };
        if !holds(&old) {
            return Ok(true);
        }
        let before = old.clone();
        let presence = kernel::presence(stores.reach, &old).step(Step::OpenNamespace)?;
        let dying = matches!(presence, Presence::Dying);
        let (old, _) = reconcile::settle(old, presence, stores)?;
        if old != before {
            stores.state.put_netns(&old).step(Step::WriteRecord)?;
        }
        if !holds(&old) {
            tracing::info!(pod, old = %index.netns, "the pod's earlier namespace is gone; its MACs are free");
            return Ok(true);
        }
        if dying && !waited {
            let macs: Vec<_> = kernel::parent_macs(&old).collect();
            kernel::await_macs_gone(stores.reach, &macs, kernel::DYING_WAIT)
                .step(Step::OpenNamespace)?;
            waited = true;
            continue;
        }
        tracing::warn!(
            pod,
            old = %index.netns,
            container = ctx.container,
            "another network namespace still holds this pod's MACs; the new links get MACs of the container id"
        );
        return Ok(false);
    }
}

fn check_shared_address(link: &LinkRecord, want: &Wanted) -> Result<(), Failure> {
    let missing = want
        .addresses
        .iter()
        .find(|&&w| !link.addresses.iter().any(|a| a.addr() == w));
    match missing {
        Some(address) => Err(Failure::on(
            Step::Validate,
            &link.network,
            Refusal(format!(
                "this namespace is already on the network with {} (wired for container {}); it cannot also take {address}",
                list(&link.addresses),
                link.created_by
            )),
        )),
        _ => Ok(()),
    }
}

/// Checks one new link against the namespace and the host.
fn plan<'a>(
    want: &Wanted<'a>,
    record: &NetnsRecord,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
    key: &str,
) -> Result<Plan<'a>, Failure> {
    let network = want.network;
    let name = network.name.as_str();
    let fail = |message: String| Failure::on(Step::Validate, name, Refusal(message));

    if record.links.iter().any(|l| l.ifname == want.ifname)
        || kernel
            .link(&want.ifname)
            .step_on(Step::Validate, name)?
            .is_some()
    {
        return Err(fail(format!(
            "interface {} already exists in the container's network namespace",
            want.ifname
        )));
    }
    let parent = kernel
        .host_link(&network.parent)
        .step_on(Step::Validate, name)?
        .ok_or_else(|| fail(format!("parent {} does not exist", network.parent)))?;
    if !parent.up {
        return Err(fail(format!("parent {} is down", network.parent)));
    }
    if let Some(mtu) = network.mtu {
        if mtu > parent.mtu {
            return Err(fail(format!(
                "mtu {mtu} is above parent {}'s {}",
                network.parent, parent.mtu
            )));
        }
    }
    for &address in &want.addresses {
        if let Some(holder) = stores
            .leases
            .holder(name, address)
            .step_on(Step::Validate, name)?
        {
            let ours = holder.netns == key && holder.same_host(&stores.holder(key, ""));
            if !ours && reconcile::in_use_unless_draining(name, address, &holder, stores)? {
                return Err(fail(format!(
                    "{address} is taken by container {}",
                    holder.container
                )));
            }
        }
    }
    Ok(Plan {
        network,
        ifname: want.ifname.clone(),
        parent_index: parent.index,
        addresses: want.addresses.clone(),
    })
}

/// Refuses links that would take a parent past its `max_links`. The
/// count comes from the records; only when it is at the limit are they
/// brought up to date first, so the common case reads and changes nothing.
fn check_link_budget(plans: &[Plan], config: &Config, stores: &mut Stores) -> Result<(), Failure> {
    let mut checked: Vec<&str> = Vec::new();
    for plan in plans {
        let parent = plan.network.parent.as_str();
        if checked.contains(&parent) {
            continue;
        }
        checked.push(parent);
        let Some(max) = config.parents.get(parent).and_then(|p| p.max_links) else {
            continue;
        };
        let on_parent = || plans.iter().filter(|p| p.network.parent == parent);
        // A network's first link brings its host shim.
        let mut adding = on_parent().count();
        for plan in on_parent().filter(|p| p.network.host_shim) {
            let name = &plan.network.name;
            if stores
                .state
                .shim(name)
                .step_on(Step::Validate, name)?
                .is_none()
            {
                adding += 1;
            }
        }
        let mut held = reconcile::links_on(parent, stores, false)?;
        if held + adding > max as usize {
            held = reconcile::links_on(parent, stores, true)?;
        }
        if held + adding > max as usize {
            return Err(Failure::on(
                Step::Validate,
                &plan.network.name,
                Refusal(format!(
                    "parent {parent} holds {held} nsbypass links and its max_links is {max} ([parents.{parent}] in {}): detach one or raise the limit",
                    config.path.display()
                )),
            ));
        }
    }
    Ok(())
}

/// Creates and configures one recorded link, logging an undo for what is
/// made, and fills in what the kernel made of it.
fn wire(
    plan: &Plan,
    link: &mut LinkRecord,
    kernel: &mut dyn Kernel,
    guards: &mut dyn HostGuard,
    undo: &mut Vec<Undo>,
) -> Result<(), Failure> {
    let network = plan.network;
    let name = network.name.as_str();
    let spec = MacvlanSpec {
        name: plan.ifname.clone(),
        parent_index: plan.parent_index,
        mode: network.mode,
        mac: parse_mac(&link.mac),
        mtu: network.mtu,
        bc_queue_len: network.bc_queue_len,
    };
    failpoint::hit("create-link").step_on(Step::CreateLink, name)?;
    let made = match kernel.create_macvlan(&spec) {
        Ok(made) => {
            undo.push(Undo::DeleteLink {
                network: name.to_owned(),
                index: made.index,
            });
            made
        }
        // Some kernels check a new link's name in the namespace the request
        // came from as well: create it under the recorded temporary name,
        // then rename it inside the container's namespace.
        Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST as i32) => {
            let temporary = MacvlanSpec {
                name: link.temporary_name.clone().expect("recorded by setup"),
                ..spec
            };
            let made = kernel
                .create_macvlan(&temporary)
                .step_on(Step::CreateLink, name)?;
            undo.push(Undo::DeleteLink {
                network: name.to_owned(),
                index: made.index,
            });
            failpoint::hit("rename-link").step_on(Step::RenameLink, name)?;
            kernel
                .rename(made.index, &plan.ifname)
                .step_on(Step::RenameLink, name)?;
            made
        }
        Err(e) => return Err(Failure::on(Step::CreateLink, name, e)),
    };
    tracing::debug!(network = name, ifname = %plan.ifname, index = made.index, "link created");
    // Passthru links take the parent's MAC: record what the kernel made
    // (the guard checks it).
    if let Some(mac) = made.mac {
        link.mac = format_mac(&mac);
    }

    failpoint::hit("arp-notify").step_on(Step::ArpNotify, name)?;
    kernel
        .arp_notify(made.index, link.guard.is_some())
        .step_on(Step::ArpNotify, name)?;
    if network.ipv6.is_some() {
        failpoint::hit("ndisc-notify").step_on(Step::NdiscNotify, name)?;
        kernel
            .ndisc_notify(&plan.ifname)
            .step_on(Step::NdiscNotify, name)?;
    }
    for address in &link.addresses {
        failpoint::hit("add-address").step_on(Step::AddAddress, name)?;
        kernel
            .add_address(made.index, *address)
            .step_on(Step::AddAddress, name)?;
    }
    // Guarded before it is up: the first frames (the gratuitous ARP, IPv6
    // neighbour discovery) go out through the filters too.
    if let Some(guard) = Guard::of(link) {
        undo.push(Undo::UnguardLink {
            network: name.to_owned(),
            ifname: plan.ifname.clone(),
        });
        failpoint::hit("guard-link").step_on(Step::GuardLink, name)?;
        kernel
            .guard_link(&plan.ifname, &guard)
            .step_on(Step::GuardLink, name)?;
        if guard.on_parent() {
            undo.push(Undo::UnguardParent {
                network: name.to_owned(),
                parent: link.parent.clone(),
                guard: guard.clone(),
            });
            failpoint::hit("guard-parent").step_on(Step::GuardParent, name)?;
            guards
                .add(&link.parent, &guard)
                .step_on(Step::GuardParent, name)?;
        }
    }
    failpoint::hit("link-up").step_on(Step::LinkUp, name)?;
    kernel.set_up(made.index).step_on(Step::LinkUp, name)?;
    for pool in network.pools() {
        if let Some(gateway) = pool.gateway() {
            for route in pool.routes() {
                failpoint::hit("add-route").step_on(Step::AddRoute, name)?;
                kernel
                    .add_route(made.index, route, gateway)
                    .step_on(Step::AddRoute, name)?;
            }
        }
    }
    tracing::debug!(network = name, addresses = ?link.addresses, "link configured and up");
    link.index = Some(made.index);
    link.pending = false;
    Ok(())
}

fn parse_mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16).expect("a MAC setup formatted");
    }
    mac
}

/// Leases an address; when the pool seems full or the wanted address
/// taken, first frees leases that nothing uses any more (waiting for those
/// of namespaces still being destroyed if nothing else frees), then tries
/// once more.
fn lease(
    ctx: &Context,
    network: &str,
    pool: Pool<'_>,
    want: Option<IpAddr>,
    key: &str,
    stores: &mut Stores,
) -> Result<IpAddr, Failure> {
    let holder = stores.holder(key, ctx.container);
    let seed = ctx.identity();
    match stores
        .leases
        .acquire_from(network, pool, &holder, seed, want)
    {
        Err(
            e @ (LeaseError::Exhausted { .. }
            | LeaseError::NoneFree { .. }
            | LeaseError::Taken { .. }),
        ) => {
            if reconcile::reclaim(network, stores)? == 0 {
                reconcile::await_draining(network, stores, kernel::DYING_WAIT)?;
                if reconcile::reclaim(network, stores)? == 0 {
                    return Err(Failure::on(Step::LeaseAddress, network, e));
                }
            }
            stores
                .leases
                .acquire_from(network, pool, &holder, seed, want)
                .step_on(Step::LeaseAddress, network)
        }
        other => other.step_on(Step::LeaseAddress, network),
    }
}

fn add_member(record: &mut NetnsRecord, ctx: &Context, wanted: &[Wanted]) {
    let member = record
        .members
        .entry(ctx.container.to_owned())
        .or_insert_with(|| Member {
            networks: Vec::new(),
            process: ctx.process.clone(),
            pid: ctx.pid,
            start: ctx.start,
            pinned: None,
            pending: true,
            source: ctx.source,
        });
    member.process = ctx.process.clone();
    member.pid = ctx.pid;
    member.start = ctx.start;
    member.pinned = ctx.pinned.clone();
    // A member that was already done stays done: should this run be
    // killed, reconcile must not drop a container that runs. (Its new
    // networks' links are pending; those go.)
    for want in wanted {
        if !member.networks.contains(&want.network.name) {
            member.networks.push(want.network.name.clone());
        }
    }
}

/// Undoes in reverse order; keeps going past failures and returns them.
fn roll_back(
    undo: Vec<Undo>,
    ctx: &Context,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
) -> Vec<Failure> {
    let key = ctx.netns.key();
    let mut problems = Vec::new();
    for action in undo.into_iter().rev() {
        let result = match &action {
            // Last: kept while a lease could not be released, so that the
            // container's poststop still looks for it.
            Undo::RemoveClaim if !problems.is_empty() => Ok(()),
            Undo::RemoveClaim => stores
                .state
                .remove_claim(ctx.container)
                .step(Step::WriteRecord),
            Undo::Release { network, address } => stores
                .leases
                .release(network, *address, &stores.holder(&key, ctx.container))
                .step_on(Step::ReleaseAddress, network),
            Undo::DeleteLink { network, index } => {
                kernel.delete(*index).step_on(Step::DeleteLink, network)
            }
            Undo::UnguardLink { network, ifname } => {
                kernel.unguard_link(ifname).step_on(Step::Unguard, network)
            }
            Undo::UnguardParent {
                network,
                parent,
                guard,
            } => stores
                .guards
                .remove(parent, guard)
                .step_on(Step::Unguard, network),
            Undo::RestoreContainer(Some(record)) => stores
                .state
                .put_container(ctx.container, record)
                .step(Step::WriteRecord),
            Undo::RestoreContainer(None) => stores
                .state
                .remove_container(ctx.container)
                .step(Step::WriteRecord),
            Undo::RestoreNetns(record) => stores.state.put_netns(record).step(Step::WriteRecord),
            Undo::RestorePod(_, Some(record)) => {
                stores.state.put_pod(record).step(Step::WriteRecord)
            }
            Undo::RestorePod(pod, None) => stores.state.remove_pod(pod).step(Step::WriteRecord),
        };
        if let Err(problem) = result {
            problems.push(problem);
        }
    }
    problems
}

fn list(addresses: &[IpNet]) -> String {
    if addresses.is_empty() {
        return "no address".to_owned();
    }
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
