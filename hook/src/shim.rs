//! Host reach: the host's own MACVLAN on a network's parent (`host_shim`).
//!
//! A MACVLAN child cannot talk to its parent's IP stack: the parent hands
//! frames for its children only to the children or out of the wire, and
//! frames from a child to the parent's MAC never reach the host's stack.
//! So a host cannot reach its own containers. The classic fix, done here:
//! one more MACVLAN, in bridge mode, on the same parent but in the host's
//! namespace (a sibling the containers' links do talk to), with an address
//! from the network's pool as a /32 (so it takes no connected route from
//! any host interface) and routes to the pool's range through it.
//!
//! The shim exists while the network has at least one attachment: some
//! namespace record with a made (not pending) link on it. [`converge`]
//! makes that true for one network and is idempotent; setup calls
//! [`ensure`] before it wires a container (and converges again if that
//! fails), teardown converges the networks the container was on, gc calls
//! [`converge_all`]. Everything runs under the state lock.
//!
//! Intent before effect, as for container links: the lease is taken and
//! `shims/<network>.json` written `pending` before the link is made, so a
//! hook killed at any step leaves a record naming what may exist; whoever
//! holds the lock next and finds it pending deletes that link (found by its
//! derived name and MAC), frees the lease and starts again.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets};
use nsutil::netlink::{format_mac, Link, Netlink, NewMacvlan};
use runtime_config::{Config, MacvlanMode, Network, Pool};
use serde::{Deserialize, Serialize};

use crate::derive;
use crate::failpoint;
use crate::failure::{Failure, Refusal, Step, StepExt};
use crate::kernel::{MacvlanSpec, Result};
use crate::lease::{Holder, LeaseError};
use crate::reconcile::{self, Stores};
use crate::records::NetnsRecord;
use crate::teardown::Outcome;

/// The namespace key in every shim lease: no namespace record has it, so
/// reconcile asks this module instead ([`holds`]).
pub const HOLDER_NETNS: &str = "host-shim";

/// The container name in the lease of `network`'s shim.
pub fn holder_container(network: &str) -> String {
    format!("shim:{network}")
}

/// The steps of making and removing a shim, for the failure line
/// ("network fast: host shim: add route: ...").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShimStep {
    Check,
    Lease,
    WriteRecord,
    CreateLink,
    ArpNotify,
    AddAddress,
    LinkUp,
    AddRoute,
    DeleteLink,
    Release,
}

impl ShimStep {
    pub fn name(self) -> &'static str {
        match self {
            ShimStep::Check => "host shim: check",
            ShimStep::Lease => "host shim: lease address",
            ShimStep::WriteRecord => "host shim: write record",
            ShimStep::CreateLink => "host shim: create link",
            ShimStep::ArpNotify => "host shim: set arp_notify",
            ShimStep::AddAddress => "host shim: add address",
            ShimStep::LinkUp => "host shim: set link up",
            ShimStep::AddRoute => "host shim: add route",
            ShimStep::DeleteLink => "host shim: delete link",
            ShimStep::Release => "host shim: release address",
        }
    }
}

use ShimStep::*;

/// The calls a shim needs, all in the hook's own (host) namespace.
pub trait HostNet {
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>>;
    /// Creates a MACVLAN here; a failed create leaves nothing behind.
    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> Result<Link>;
    fn delete(&mut self, index: u32) -> Result<()>;
    /// Turns on `arp_notify` for link `index`, before it goes up.
    fn arp_notify(&mut self, index: u32) -> Result<()>;
    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    /// `destination dev index scope link`.
    fn add_route(&mut self, index: u32, destination: Ipv4Net) -> Result<()>;
}

/// The real host namespace; its netlink socket is opened on first use,
/// so runs that find nothing to do pay nothing.
#[derive(Default)]
pub struct RealHost {
    netlink: Option<Netlink>,
}

impl RealHost {
    fn nl(&mut self) -> Result<&Netlink> {
        if self.netlink.is_none() {
            self.netlink = Some(Netlink::connect()?);
        }
        Ok(self.netlink.as_ref().expect("just opened"))
    }
}

impl HostNet for RealHost {
    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.nl()?.link_by_name(name)
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.nl()?.link_by_index(index)
    }

    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> Result<Link> {
        let nl = self.nl()?;
        let echoed = nl.add_macvlan(&NewMacvlan {
            name: &spec.name,
            parent_index: spec.parent_index,
            mode: spec.mode.kernel_value(),
            mac: spec.mac,
            mtu: spec.mtu,
            netns: None,
            bc_queue_len: spec.bc_queue_len,
        })?;
        // Made here, the kernel echoes the new link; only a kernel that
        // does not needs the lookup.
        if let Some(link) = echoed {
            return Ok(link);
        }
        let found = nl.link_by_name(&spec.name).and_then(|link| {
            link.ok_or_else(|| {
                nsutil::Error::new(
                    format!("find new link {}", spec.name),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
        });
        if found.is_err() {
            let _ = nl.delete_by_name(&spec.name);
        }
        found
    }

    fn delete(&mut self, index: u32) -> Result<()> {
        self.nl()?.delete(index)
    }

    fn arp_notify(&mut self, index: u32) -> Result<()> {
        self.nl()?.set_arp_notify(index)
    }

    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()> {
        self.nl()?.add_address(index, address)
    }

    fn set_up(&mut self, index: u32) -> Result<()> {
        self.nl()?.set_up(index)
    }

    fn add_route(&mut self, index: u32, destination: Ipv4Net) -> Result<()> {
        self.nl()?.add_link_route_v4(index, destination)
    }
}

/// `shims/<network>.json`: the shim made, or about to be made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub network: String,
    pub ifname: String,
    pub parent: String,
    /// Interface index in the host namespace; unknown while pending.
    #[serde(default)]
    pub index: Option<u32>,
    pub mac: String,
    /// The leased address, as configured: a /32.
    pub address: IpNet,
    /// Routed through the shim: the pool's range as the fewest CIDRs.
    pub routes: Vec<Ipv4Net>,
    /// Written before the link was made; cleared once it is configured.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl ShimRecord {
    /// Whether `link` (in the host namespace) is this shim: a MACVLAN with
    /// the recorded MAC and index, or, while the index is unknown, the
    /// recorded name. The host namespace is everyone's: anything else
    /// there is left alone.
    fn is(&self, link: &Link) -> bool {
        link.kind.as_deref() == Some("macvlan")
            && link.mac.map(|m| format_mac(&m)).as_deref() == Some(self.mac.as_str())
            && match self.index {
                Some(index) => link.index == index,
                None => link.name == self.ifname,
            }
    }

    fn holder(&self, stores: &Stores) -> Holder {
        stores.holder(HOLDER_NETNS, &holder_container(&self.network))
    }
}

/// The shim `network` should have on this host.
struct Wanted {
    parent: String,
    ifname: String,
    mac: [u8; 6],
    routes: Vec<Ipv4Net>,
}

fn wanted(network: &Network, host: &str) -> Option<Wanted> {
    let pool = network.ipv4.as_ref().filter(|_| network.host_shim)?;
    Some(Wanted {
        parent: network.parent.clone(),
        ifname: derive::shim_ifname(&network.name),
        mac: derive::shim_mac(host, &network.name),
        routes: range_cidrs(pool.first, pool.last),
    })
}

/// The fewest CIDRs that cover `first..=last` exactly.
pub fn range_cidrs(first: std::net::Ipv4Addr, last: std::net::Ipv4Addr) -> Vec<Ipv4Net> {
    Ipv4Subnets::new(first, last, 0).collect()
}

/// Whether the lease of `address` on `network` held by the shim's holder
/// is in use: its shim record (pending or not) names it.
pub fn holds(
    network: &str,
    address: IpAddr,
    stores: &Stores,
) -> std::result::Result<bool, Failure> {
    Ok(stores
        .state
        .shim(network)
        .step_on(Step::ReadRecords, network)?
        .is_some_and(|r| r.address.addr() == address))
}

/// Whether some namespace record, not a draining one, has a made link on
/// `network`.
fn attached(network: &str, stores: &Stores) -> std::result::Result<bool, Failure> {
    let has = |r: &NetnsRecord| r.links.iter().any(|l| l.network == network && !l.pending);
    // A draining namespace's containers are gone: nothing there to reach.
    let draining: Vec<String> = stores
        .state
        .draining()
        .step_on(Step::ReadRecords, network)?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    for key in stores
        .state
        .netns_keys()
        .step_on(Step::ReadRecords, network)?
        .into_iter()
        .filter(|key| !draining.contains(key))
    {
        let record = stores
            .state
            .netns(&key)
            .step_on(Step::ReadRecords, network)?;
        if record.as_ref().is_some_and(has) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Makes `network`'s shim exist (setup, before wiring a container into
/// it). Does nothing for a network without `host_shim`.
pub fn ensure(
    network: &Network,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    converge_to(&network.name, Some(network), true, host, stores)
}

/// Brings network `name`'s shim to what it should be: there, matching
/// the config, while the network has `host_shim` and an attachment; gone
/// otherwise (a network no longer configured included). Repairs what a
/// killed run left.
pub fn converge(
    name: &str,
    config: &Config,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    converge_to(name, config.networks.get(name), false, host, stores)
}

/// [`converge`] for every network that has `host_shim` or a shim record:
/// what `gc` runs, under the state lock, after bringing the namespace
/// records up to date.
pub fn converge_all(config: &Config, stores: &mut Stores) -> std::result::Result<(), Failure> {
    converge_all_with(config, &mut RealHost::default(), stores)
}

/// [`converge_all`] against any host.
pub fn converge_all_with(
    config: &Config,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    let mut names: Vec<String> = stores
        .state
        .shim_networks()
        .step(Step::ReadRecords)?
        .into_iter()
        .chain(shim_networks(config))
        .collect();
    names.sort();
    names.dedup();
    converge_each(&names, config, host, stores)
}

/// Converges each of `names`, keeps going past failures, returns the first
/// with the rest as its rollback list.
pub fn converge_each(
    names: &[String],
    config: &Config,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    let mut failures: Vec<Failure> = names
        .iter()
        .filter_map(|name| converge(name, config, host, stores).err())
        .collect();
    if failures.is_empty() {
        return Ok(());
    }
    let first = failures.remove(0);
    Err(first.with_rollback(failures))
}

/// The configured networks with `host_shim`.
pub fn shim_networks(config: &Config) -> impl Iterator<Item = String> + '_ {
    config
        .networks
        .values()
        .filter(|n| n.host_shim)
        .map(|n| n.name.clone())
}

/// Setup's side: makes the shims of the requested networks that have
/// `host_shim`, then runs `wire`; if that fails, converges them again, so
/// that a shim made for this container alone goes with its rollback.
pub fn around_setup<T>(
    config: &Config,
    requested: &[String],
    host: &mut dyn HostNet,
    stores: &mut Stores,
    wire: impl FnOnce(&mut Stores) -> std::result::Result<T, Failure>,
) -> std::result::Result<T, Failure> {
    let shims: Vec<&Network> = requested
        .iter()
        .filter_map(|n| config.networks.get(n))
        .filter(|n| n.host_shim)
        .collect();
    let names: Vec<String> = shims.iter().map(|n| n.name.clone()).collect();
    for (done, network) in shims.iter().enumerate() {
        if let Err(failure) = ensure(network, host, stores) {
            let undone = converge_each(&names[..done], config, host, stores);
            return Err(failure.with_rollback(undone.err().into_iter().collect()));
        }
    }
    wire(stores).map_err(|failure| {
        let undone = converge_each(&names, config, host, stores);
        failure.with_rollback(undone.err().into_iter().collect())
    })
}

/// Teardown's side: runs `teardown` of `container`, then converges the
/// shims of the networks it was on, which go if nothing else is attached
/// there. Not when the teardown was not for it (nothing changed). A
/// namespace still being destroyed (draining) does not keep the shim.
pub fn around_teardown(
    config: &Config,
    container: &str,
    host: &mut dyn HostNet,
    stores: &mut Stores,
    teardown: impl FnOnce(&mut Stores) -> std::result::Result<Outcome, Failure>,
) -> std::result::Result<Outcome, Failure> {
    let touched = touched_by(config, container, stores)?;
    let outcome = teardown(stores)?;
    if outcome != Outcome::StillRunning {
        converge_each(&touched, config, host, stores)?;
    }
    Ok(outcome)
}

/// The shim networks (see [`touched_by`]) among `networks`.
pub fn touched(
    config: &Config,
    networks: &[String],
    stores: &Stores,
) -> std::result::Result<Vec<String>, Failure> {
    if networks.is_empty() {
        return Ok(Vec::new());
    }
    let records = stores.state.shim_networks().step(Step::ReadRecords)?;
    Ok(shim_networks(config)
        .chain(records)
        .filter(|n| networks.contains(n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect())
}

/// The networks whose shim leaving `container` may make unwanted, read
/// before teardown: those of its namespace record, or every shim network
/// when it has none (a setup killed before its first record write may
/// have made a shim). Shim networks are those with `host_shim` and those
/// with a shim record (a network whose `host_shim` was turned off, or that
/// left the config, keeps its shim only until its next teardown). Empty,
/// at the cost of one directory read, when there are none.
fn touched_by(
    config: &Config,
    container: &str,
    stores: &Stores,
) -> std::result::Result<Vec<String>, Failure> {
    let mut all: Vec<String> = shim_networks(config)
        .chain(stores.state.shim_networks().step(Step::ReadRecords)?)
        .collect();
    all.sort();
    all.dedup();
    if all.is_empty() {
        return Ok(all);
    }
    let key = stores
        .state
        .container(container)
        .step(Step::ReadRecords)?
        .and_then(|p| p.netns);
    let record = match key {
        Some(key) => stores.state.netns(&key).step(Step::ReadRecords)?,
        None => None,
    };
    let Some(record) = record else {
        return Ok(all);
    };
    let mine = record
        .members
        .get(container)
        .map(|m| m.networks.clone())
        .unwrap_or_default();
    Ok(all
        .into_iter()
        .filter(|n| mine.contains(n) || record.link(n).is_some())
        .collect())
}

fn converge_to(
    name: &str,
    network: Option<&Network>,
    force: bool,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    let target = network.and_then(|n| wanted(n, stores.machine).map(|w| (n, w)));
    let record = stores.state.shim(name).step_on(Step::ReadRecords, name)?;
    if target.is_none() && record.is_none() {
        return Ok(());
    }
    let record = match record {
        Some(record) => repair(record, target.as_ref().map(|(_, w)| w), host, stores)?,
        None => None,
    };
    let want = match &target {
        None => false,
        Some(_) if force => true,
        Some(_) => attached(name, stores)?,
    };
    match (want, record, target) {
        (true, None, Some((network, wanted))) => make(network, &wanted, host, stores),
        (false, Some(record), _) => remove(&record, host, stores),
        // A lease a run killed before its record write took.
        (false, None, _) => {
            reconcile::release_unaccounted(name, &holder_container(name), stores).map(|_| ())
        }
        _ => Ok(()),
    }
}

/// A recorded shim as it stands: `Some` if it is there, made and as
/// `wanted`; otherwise whatever exists of it is removed (a pending one, one
/// whose config changed) or dropped (one that vanished), and `None`.
fn repair(
    record: ShimRecord,
    wanted: Option<&Wanted>,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<Option<ShimRecord>, Failure> {
    let name = record.network.clone();
    let found = match record.index {
        Some(index) if !record.pending => host
            .link_by_index(index)
            .step_on(Step::Shim(Check), &name)?,
        _ => host
            .link(&record.ifname)
            .step_on(Step::Shim(Check), &name)?,
    }
    .filter(|l| record.is(l));
    let current = wanted.is_some_and(|w| {
        w.parent == record.parent
            && w.ifname == record.ifname
            && format_mac(&w.mac) == record.mac
            && w.routes == record.routes
    });
    match found {
        Some(_) if !record.pending && current => Ok(Some(record)),
        Some(_) => {
            if record.pending {
                tracing::warn!(network = %name, ifname = %record.ifname, "deleting a host shim a killed run left");
            } else {
                tracing::info!(network = %name, ifname = %record.ifname, "the network's config changed; remaking its host shim");
            }
            remove(&record, host, stores)?;
            Ok(None)
        }
        None => {
            if !record.pending {
                tracing::warn!(network = %name, ifname = %record.ifname, "the host shim is gone; dropping its record");
            }
            remove(
                &ShimRecord {
                    index: None,
                    ..record
                },
                host,
                stores,
            )?;
            Ok(None)
        }
    }
}

/// What to undo if a later step of [`make`] fails, newest last.
enum Undo {
    Release(IpAddr),
    RemoveRecord,
    DeleteLink(u32),
}

fn make(
    network: &Network,
    wanted: &Wanted,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    let mut undo = Vec::new();
    let made = make_steps(network, wanted, host, stores, &mut undo);
    let Err(failure) = made else {
        return Ok(());
    };
    let name = network.name.as_str();
    let holder = stores.holder(HOLDER_NETNS, &holder_container(name));
    let mut problems = Vec::new();
    for action in undo.into_iter().rev() {
        let result = match action {
            Undo::DeleteLink(index) => host.delete(index).step_on(Step::Shim(DeleteLink), name),
            Undo::RemoveRecord => stores
                .state
                .remove_shim(name)
                .step_on(Step::Shim(WriteRecord), name),
            Undo::Release(address) => stores
                .leases
                .release(name, address, &holder)
                .step_on(Step::Shim(Release), name),
        };
        problems.extend(result.err());
    }
    Err(failure.with_rollback(problems))
}

fn make_steps(
    network: &Network,
    wanted: &Wanted,
    host: &mut dyn HostNet,
    stores: &mut Stores,
    undo: &mut Vec<Undo>,
) -> std::result::Result<(), Failure> {
    let name = network.name.as_str();
    let refuse = |message: String| Failure::on(Step::Shim(Check), name, Refusal(message));
    let parent = host
        .link(&network.parent)
        .step_on(Step::Shim(Check), name)?
        .ok_or_else(|| refuse(format!("parent {} does not exist", network.parent)))?;
    if host
        .link(&wanted.ifname)
        .step_on(Step::Shim(Check), name)?
        .is_some()
    {
        return Err(refuse(format!(
            "interface {} already exists in the host's network namespace and no shim record names it: it is not nsbypass's (remove it, or turn host_shim off)",
            wanted.ifname
        )));
    }

    // Intent: the address, then the record naming what is about to exist.
    let pool = Pool::V4(network.ipv4.as_ref().expect("wanted() checked the pool"));
    let container = holder_container(name);
    // A lease a killed run took before its record write: free it, so the
    // search (from the same derived slot) can find that address again.
    reconcile::release_unaccounted(name, &container, stores)?;
    failpoint::hit("shim-lease").step_on(Step::Shim(Lease), name)?;
    let holder = stores.holder(HOLDER_NETNS, &container);
    let address = match stores.leases.acquire(name, pool, &holder, None) {
        Err(e @ (LeaseError::Exhausted { .. } | LeaseError::Taken { .. })) => {
            if reconcile::reclaim(name, stores)? == 0 {
                return Err(Failure::on(Step::Shim(Lease), name, e));
            }
            stores.leases.acquire(name, pool, &holder, None)
        }
        other => other,
    }
    .step_on(Step::Shim(Lease), name)?;
    undo.push(Undo::Release(address));
    let mut record = ShimRecord {
        network: name.to_owned(),
        ifname: wanted.ifname.clone(),
        parent: network.parent.clone(),
        index: None,
        mac: format_mac(&wanted.mac),
        address: IpNet::new(address, 32).expect("an IPv4 /32"),
        routes: wanted.routes.clone(),
        pending: true,
    };
    failpoint::hit("shim-write-intent").step_on(Step::Shim(WriteRecord), name)?;
    undo.push(Undo::RemoveRecord);
    stores
        .state
        .put_shim(&record)
        .step_on(Step::Shim(WriteRecord), name)?;

    // Effects.
    failpoint::hit("shim-create").step_on(Step::Shim(CreateLink), name)?;
    let link = host
        .create_macvlan(&MacvlanSpec {
            name: wanted.ifname.clone(),
            parent_index: parent.index,
            mode: MacvlanMode::Bridge,
            mac: wanted.mac,
            mtu: network.mtu,
            bc_queue_len: network.bc_queue_len,
        })
        .step_on(Step::Shim(CreateLink), name)?;
    undo.push(Undo::DeleteLink(link.index));
    failpoint::hit("shim-arp-notify").step_on(Step::Shim(ArpNotify), name)?;
    host.arp_notify(link.index)
        .step_on(Step::Shim(ArpNotify), name)?;
    failpoint::hit("shim-add-address").step_on(Step::Shim(AddAddress), name)?;
    host.add_address(link.index, record.address)
        .step_on(Step::Shim(AddAddress), name)?;
    failpoint::hit("shim-link-up").step_on(Step::Shim(LinkUp), name)?;
    host.set_up(link.index).step_on(Step::Shim(LinkUp), name)?;
    for route in &wanted.routes {
        failpoint::hit("shim-add-route").step_on(Step::Shim(AddRoute), name)?;
        host.add_route(link.index, *route)
            .step_on(Step::Shim(AddRoute), name)?;
    }
    record.index = Some(link.index);
    record.pending = false;
    failpoint::hit("shim-write-final").step_on(Step::Shim(WriteRecord), name)?;
    stores
        .state
        .put_shim(&record)
        .step_on(Step::Shim(WriteRecord), name)?;
    tracing::info!(network = name, ifname = %record.ifname, address = %record.address, "host shim made");
    Ok(())
}

/// Deletes the shim (by index, if it is still ours), frees its address,
/// drops its record; in that order, so a kill leaves a record for the rest.
fn remove(
    record: &ShimRecord,
    host: &mut dyn HostNet,
    stores: &mut Stores,
) -> std::result::Result<(), Failure> {
    let name = record.network.as_str();
    let found = match record.index {
        Some(index) => host
            .link_by_index(index)
            .step_on(Step::Shim(DeleteLink), name)?,
        None if record.pending => host
            .link(&record.ifname)
            .step_on(Step::Shim(DeleteLink), name)?,
        None => None,
    };
    if let Some(link) = found.filter(|l| record.is(l)) {
        failpoint::hit("shim-delete").step_on(Step::Shim(DeleteLink), name)?;
        host.delete(link.index)
            .step_on(Step::Shim(DeleteLink), name)?;
        tracing::info!(network = name, ifname = %record.ifname, "host shim removed");
    }
    let holder = record.holder(stores);
    stores
        .leases
        .release(name, record.address.addr(), &holder)
        .step_on(Step::Shim(Release), name)?;
    stores
        .state
        .remove_shim(name)
        .step_on(Step::Shim(WriteRecord), name)
}
