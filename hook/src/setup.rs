//! Setup: decide everything, check it against the host, then wire it with
//! an undo log, so a failure at any step (that step included) leaves the
//! host as it was.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use nsutil::netlink::{format_mac, MacvlanMode};
use nsutil::netns::NetnsId;
use runtime_config::{Config, MacvlanMode as Mode, Network, Request};

use crate::derive;
use crate::failure::{Failure, Step, StepExt};
use crate::kernel::{Kernel, MacvlanSpec, Reach};
use crate::lease::{check_assignable, Holder, LeaseStore};
use crate::records::{ContainerRecord, LinkRecord, Member, NetnsRecord, StateDir};
use crate::teardown;

/// Who is being set up, and where.
pub struct Context<'a> {
    pub container: &'a str,
    pub netns: NetnsId,
    /// Ways back into the namespace for teardown (see `records::Member`).
    pub netns_paths: Vec<PathBuf>,
    pub request: &'a Request,
    pub config: &'a Config,
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
    fn from_record(link: &LinkRecord, shared: bool) -> Wired {
        Wired {
            network: link.network.clone(),
            ifname: link.ifname.clone(),
            mac: link.mac.clone(),
            addresses: link.addresses.clone(),
            shared,
        }
    }
}

/// One requested network, checked against the config.
struct Wanted<'a> {
    network: &'a Network,
    ifname: String,
    address: Option<IpAddr>,
}

/// A link to create, decided in full before anything is touched.
struct Plan<'a> {
    network: &'a Network,
    ifname: String,
    parent_index: u32,
    address: Option<IpAddr>,
}

/// What to undo if a later step fails, newest last.
enum Undo {
    Release { network: String, address: IpAddr },
    DeleteLink { network: String, index: u32 },
    RestoreNetns(NetnsRecord),
}

/// Wires `ctx.container` into the networks it requested.
pub fn setup(
    ctx: &Context,
    kernel: &mut dyn Kernel,
    reach: &mut dyn Reach,
    state: &StateDir,
    leases: &mut dyn LeaseStore,
) -> Result<Vec<Wired>, Failure> {
    let key = ctx.netns.key();
    let wanted = resolve(ctx.request, ctx.config)?;

    // This container id was wired into another namespace and its poststop
    // never ran: finish that teardown first.
    if let Some(old) = state.container(ctx.container).step(Step::ReadRecords)? {
        if old.netns != key {
            tracing::warn!(container = ctx.container, old = %old.netns, "clearing a stale record of this container");
            teardown::teardown(ctx.container, reach, state, leases)?;
        }
    }
    let mut record = match state.netns(&key).step(Step::ReadRecords)? {
        Some(found) => prune_vanished_links(found, kernel, leases, &key)?,
        None => NetnsRecord::new(ctx.netns),
    };
    let before = record.clone();

    let mut wired = Vec::new();
    let mut plans = Vec::new();
    for want in &wanted {
        let name = want.network.name.as_str();
        match record.link(name) {
            Some(link) => {
                check_shared_address(link, want)?;
                wired.push(Wired::from_record(link, link.created_by != ctx.container));
            }
            None => plans.push(plan(want, &record, kernel, leases, &key)?),
        }
    }
    let already_member = record
        .members
        .get(ctx.container)
        .is_some_and(|m| wanted.iter().all(|w| m.networks.contains(&w.network.name)));
    if plans.is_empty() && already_member {
        return Ok(wired);
    }

    let mut undo = Vec::new();
    let applied = (|| {
        for plan in &plans {
            let link = wire(ctx, plan, kernel, leases, &key, &mut undo)?;
            wired.push(Wired::from_record(&link, false));
            record.links.push(link);
        }
        let member = record
            .members
            .entry(ctx.container.to_owned())
            .or_insert_with(|| Member {
                networks: Vec::new(),
                netns_paths: Vec::new(),
            });
        for want in &wanted {
            if !member.networks.contains(&want.network.name) {
                member.networks.push(want.network.name.clone());
            }
        }
        for path in &ctx.netns_paths {
            if !member.netns_paths.contains(path) {
                member.netns_paths.push(path.clone());
            }
        }
        undo.push(Undo::RestoreNetns(before));
        state.put_netns(&record).step(Step::WriteRecord)?;
        state
            .put_container(ctx.container, &ContainerRecord { netns: key.clone() })
            .step(Step::WriteRecord)
    })();

    match applied {
        Ok(()) => Ok(wired),
        Err(mut failure) => {
            let problems = roll_back(undo, kernel, leases, state, &key);
            if !problems.is_empty() {
                failure.message =
                    format!("{} (rollback: {})", failure.message, problems.join("; "));
            }
            Err(failure)
        }
    }
}

/// Checks the request against the config: known networks, distinct
/// interface names, requested addresses inside their ranges.
fn resolve<'a>(request: &Request, config: &'a Config) -> Result<Vec<Wanted<'a>>, Failure> {
    let mut wanted: Vec<Wanted> = Vec::new();
    for (position, name) in request.networks.iter().enumerate() {
        let network = config.networks.get(name).ok_or_else(|| {
            let known: Vec<&str> = config.networks.keys().map(String::as_str).collect();
            Failure::on(
                Step::Validate,
                name,
                format!(
                    "no such network in {} (configured: {})",
                    config.path.display(),
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
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
                format!(
                    "interface name {ifname} is also network {}'s",
                    other.network.name
                ),
            ));
        }
        let address = request.addresses.get(name).copied();
        if let Some(address) = address {
            let pool = network.ipv4.as_ref().ok_or_else(|| {
                Failure::on(
                    Step::Validate,
                    name,
                    format!("cannot take {address}: the network has no subnet"),
                )
            })?;
            check_assignable(pool, address).step_on(Step::Validate, name)?;
        }
        wanted.push(Wanted {
            network,
            ifname,
            address,
        });
    }
    Ok(wanted)
}

/// Drops links from a namespace record that are no longer in the namespace
/// (someone deleted them, or the record outlived its namespace and the
/// inode was reused) and frees their addresses.
fn prune_vanished_links(
    mut record: NetnsRecord,
    kernel: &mut dyn Kernel,
    leases: &mut dyn LeaseStore,
    key: &str,
) -> Result<NetnsRecord, Failure> {
    if record.links.is_empty() {
        return Ok(record);
    }
    let present = kernel.links().step(Step::Validate)?;
    let (kept, vanished): (Vec<_>, Vec<_>) = record.links.into_iter().partition(|l| {
        present
            .iter()
            .any(|p| p.mac.as_ref().map(format_mac).as_deref() == Some(l.mac.as_str()))
    });
    for link in &vanished {
        tracing::warn!(network = %link.network, ifname = %link.ifname, "recorded link is gone; dropping it");
        for address in &link.addresses {
            leases
                .release(&link.network, address.addr(), key)
                .step_on(Step::ReleaseAddress, &link.network)?;
        }
    }
    record.links = kept;
    if !vanished.is_empty() {
        // Members recorded for a namespace whose links vanished are stale too.
        record.members.retain(|_, m| {
            !m.networks
                .iter()
                .any(|n| vanished.iter().any(|l| &l.network == n))
        });
    }
    Ok(record)
}

fn check_shared_address(link: &LinkRecord, want: &Wanted) -> Result<(), Failure> {
    match want.address {
        Some(address) if !link.addresses.iter().any(|a| a.addr() == address) => Err(Failure::on(
            Step::Validate,
            &link.network,
            format!(
                "this namespace is already on the network with {} (wired for container {}); it cannot also take {address}",
                list(&link.addresses),
                link.created_by
            ),
        )),
        _ => Ok(()),
    }
}

/// Checks one new link against the namespace and the host.
fn plan<'a>(
    want: &Wanted<'a>,
    record: &NetnsRecord,
    kernel: &mut dyn Kernel,
    leases: &dyn LeaseStore,
    key: &str,
) -> Result<Plan<'a>, Failure> {
    let network = want.network;
    let name = network.name.as_str();
    let fail = |message: String| Failure::on(Step::Validate, name, message);

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
    if let Some(address) = want.address {
        if let Some(holder) = leases.holder(name, address).step_on(Step::Validate, name)? {
            if holder.netns != key {
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
        address: want.address,
    })
}

/// Creates and configures one link, logging an undo for each thing made.
fn wire(
    ctx: &Context,
    plan: &Plan,
    kernel: &mut dyn Kernel,
    leases: &mut dyn LeaseStore,
    key: &str,
    undo: &mut Vec<Undo>,
) -> Result<LinkRecord, Failure> {
    let network = plan.network;
    let name = network.name.as_str();

    let mut addresses = Vec::new();
    if let Some(pool) = &network.ipv4 {
        let holder = Holder {
            netns: key.to_owned(),
            container: ctx.container.to_owned(),
        };
        let address = leases
            .acquire(name, pool, &holder, plan.address)
            .step_on(Step::LeaseAddress, name)?;
        tracing::debug!(network = name, %address, "address leased");
        undo.push(Undo::Release {
            network: name.to_owned(),
            address,
        });
        addresses.push(
            IpNet::new(address, pool.subnet.prefix_len()).expect("prefix from a valid subnet"),
        );
    }

    let mac = derive::mac(ctx.container, name);
    let spec = MacvlanSpec {
        name: plan.ifname.clone(),
        parent_index: plan.parent_index,
        mode: match network.mode {
            Mode::Bridge => MacvlanMode::Bridge,
            Mode::Private => MacvlanMode::Private,
            Mode::Vepa => MacvlanMode::Vepa,
            Mode::Passthru => MacvlanMode::Passthru,
        },
        mac,
        mtu: network.mtu,
    };
    let link = match kernel.create_macvlan(&spec) {
        Ok(link) => {
            undo.push(Undo::DeleteLink {
                network: name.to_owned(),
                index: link.index,
            });
            link
        }
        // Some kernels check a new link's name in the namespace the request
        // came from as well: create it under a temporary name, then rename
        // it inside the container's namespace.
        Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST as i32) => {
            let temporary = MacvlanSpec {
                name: derive::temporary_ifname(),
                ..spec
            };
            let link = kernel
                .create_macvlan(&temporary)
                .step_on(Step::CreateLink, name)?;
            undo.push(Undo::DeleteLink {
                network: name.to_owned(),
                index: link.index,
            });
            kernel
                .rename(link.index, &plan.ifname)
                .step_on(Step::RenameLink, name)?;
            link
        }
        Err(e) => return Err(Failure::on(Step::CreateLink, name, e)),
    };
    tracing::debug!(network = name, ifname = %plan.ifname, index = link.index, "link created");

    kernel
        .arp_notify(&plan.ifname)
        .step_on(Step::ArpNotify, name)?;
    for address in &addresses {
        kernel
            .add_address(link.index, *address)
            .step_on(Step::AddAddress, name)?;
    }
    kernel.set_up(link.index).step_on(Step::LinkUp, name)?;
    tracing::debug!(network = name, addresses = ?addresses, "link configured and up");
    if let Some(pool) = &network.ipv4 {
        if let Some(gateway) = pool.gateway {
            for route in &pool.routes {
                kernel
                    .add_route(link.index, *route, gateway)
                    .step_on(Step::AddRoute, name)?;
            }
        }
    }
    Ok(LinkRecord {
        network: name.to_owned(),
        ifname: plan.ifname.clone(),
        mac: format_mac(&mac),
        parent: network.parent.clone(),
        addresses,
        created_by: ctx.container.to_owned(),
    })
}

/// Undoes in reverse order; keeps going past failures and reports them.
fn roll_back(
    undo: Vec<Undo>,
    kernel: &mut dyn Kernel,
    leases: &mut dyn LeaseStore,
    state: &StateDir,
    key: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for action in undo.into_iter().rev() {
        let result = match &action {
            Undo::Release { network, address } => leases
                .release(network, *address, key)
                .map_err(|e| format!("network {network}: release {address}: {e}")),
            Undo::DeleteLink { network, index } => kernel
                .delete(*index)
                .map_err(|e| format!("network {network}: {e}")),
            Undo::RestoreNetns(record) => state.put_netns(record).map_err(|e| e.to_string()),
        };
        if let Err(problem) = result {
            tracing::error!(%problem, "rollback step failed");
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
