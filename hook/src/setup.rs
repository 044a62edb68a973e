//! Setup: decide everything, check it against the host, then wire it with
//! an undo log, so a failure at any step (that step included) leaves the
//! host as it was.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use nsutil::netlink::{format_mac, MacvlanMode};
use nsutil::ns::NetnsId;
use runtime_config::{Config, Ipv4Pool, MacvlanMode as Mode, Network, Request};

use crate::derive;
use crate::failure::{no_such, Failure, Step, StepExt};
use crate::kernel::{self, Kernel, MacvlanSpec, Reach};
use crate::lease::{check_assignable, Holder, LeaseError, LeaseStore};
use crate::records::{ContainerRecord, LinkRecord, Member, NetnsRecord, StateDir};
use crate::teardown;

/// Who is being set up, and where.
pub struct Context<'a> {
    pub container: &'a str,
    /// Mixed into MACs so that same-named containers on two hosts of one L2
    /// do not collide (`/etc/machine-id`).
    pub host_id: &'a str,
    pub netns: NetnsId,
    /// The container init's `/proc/<pid>/ns/net`, and the spec's namespace
    /// path if it leads to the same namespace (see `records::Member`).
    pub process: PathBuf,
    pub pinned: Option<PathBuf>,
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
    RestoreContainer(Option<ContainerRecord>),
    RestoreNetns(NetnsRecord),
}

/// The stores setup reads and writes, all under the state lock.
pub struct Stores<'a> {
    pub state: &'a StateDir,
    pub leases: &'a mut dyn LeaseStore,
    pub reach: &'a mut dyn Reach,
}

/// Wires `ctx.container` into the networks it requested.
pub fn setup(
    ctx: &Context,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
) -> Result<Vec<Wired>, Failure> {
    let key = ctx.netns.key();
    let wanted = resolve(ctx.request, ctx.config)?;
    let previous_pointer = clear_stale_container(ctx, stores)?;
    let mut record = match stores.state.netns(&key).step(Step::ReadRecords)? {
        Some(found) => prune(found, kernel, stores, &key)?,
        None => NetnsRecord::new(ctx.netns),
    };
    let before = record.clone();

    let mut wired = Vec::new();
    let mut plans = Vec::new();
    for want in &wanted {
        match record.link(&want.network.name) {
            Some(link) => {
                check_shared_address(link, want)?;
                wired.push(Wired::from_record(link, ctx.container));
            }
            None => plans.push(plan(want, &record, kernel, stores, &key)?),
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
            let link = wire(ctx, plan, kernel, stores, &key, &mut undo)?;
            wired.push(Wired::from_record(&link, ctx.container));
            record.links.push(link);
        }
        add_member(&mut record, ctx, &wanted);
        // The pointer first: should the hook die before the namespace
        // record is written, poststop still finds its way here.
        let pointer = ContainerRecord {
            netns: Some(key.clone()),
            profiles: previous_pointer.as_ref().and_then(|p| p.profiles.clone()),
        };
        undo.push(Undo::RestoreContainer(previous_pointer));
        stores
            .state
            .put_container(ctx.container, &pointer)
            .step(Step::WriteRecord)?;
        undo.push(Undo::RestoreNetns(before));
        stores.state.put_netns(&record).step(Step::WriteRecord)
    })();

    match applied {
        Ok(()) => Ok(wired),
        Err(mut failure) => {
            let problems = roll_back(undo, ctx.container, kernel, stores, &key);
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

/// A record of this container id in another namespace means its poststop
/// never ran; finish that teardown first. Unless that namespace is still in
/// use by it: then two runtimes use one id, and wiring the second would
/// tear the first down. Returns the pointer as it was, for rollback.
fn clear_stale_container(
    ctx: &Context,
    stores: &mut Stores,
) -> Result<Option<ContainerRecord>, Failure> {
    let Some(old) = stores
        .state
        .container(ctx.container)
        .step(Step::ReadRecords)?
    else {
        return Ok(None);
    };
    let Some(old_netns) = old.netns.clone().filter(|k| *k != ctx.netns.key()) else {
        return Ok(Some(old));
    };
    if let Some(record) = stores.state.netns(&old_netns).step(Step::ReadRecords)? {
        if let Some(member) = record.members.get(ctx.container) {
            if kernel::alive(stores.reach, member, record.id()) {
                return Err(Failure::new(
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
    teardown::teardown(ctx.container, stores.reach, stores.state, stores.leases).map_err(
        |mut f| {
            f.message = format!(
                "clearing the stale record of this container id: {}",
                f.message
            );
            f
        },
    )?;
    Ok(None)
}

/// Brings a namespace record found on disk up to date: members whose
/// processes no longer run in the namespace are dropped (their poststop
/// never came, or the record outlived its namespace and the inode was
/// reused), and links that are no longer in the namespace are dropped and
/// their addresses freed.
fn prune(
    mut record: NetnsRecord,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
    key: &str,
) -> Result<NetnsRecord, Failure> {
    let id = record.id();
    record.members.retain(|container, member| {
        let alive = kernel::alive(stores.reach, member, id);
        if !alive {
            tracing::warn!(
                container,
                "dropping a member that no longer runs in this namespace"
            );
        }
        alive
    });
    if record.links.is_empty() {
        return Ok(record);
    }
    let present = kernel.links().step(Step::Validate)?;
    let (kept, vanished): (Vec<_>, Vec<_>) = std::mem::take(&mut record.links)
        .into_iter()
        .partition(|link| link.find_in(&present).is_some());
    record.links = kept;
    for link in vanished {
        tracing::warn!(network = %link.network, ifname = %link.ifname, "recorded link is gone; dropping it");
        for address in &link.addresses {
            stores
                .leases
                .release(&link.network, address.addr(), key)
                .step_on(Step::ReleaseAddress, &link.network)?;
        }
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
    stores: &mut Stores,
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
        if let Some(holder) = stores
            .leases
            .holder(name, address)
            .step_on(Step::Validate, name)?
        {
            if holder.netns != key && lease_in_use(name, address, &holder, stores)? {
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
    stores: &mut Stores,
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
        let address = lease(name, pool, &holder, plan.address, stores)?;
        undo.push(Undo::Release {
            network: name.to_owned(),
            address,
        });
        tracing::debug!(network = name, %address, "address leased");
        addresses.push(
            IpNet::new(address, pool.subnet.prefix_len()).expect("prefix from a valid subnet"),
        );
    }

    let spec = MacvlanSpec {
        name: plan.ifname.clone(),
        parent_index: plan.parent_index,
        mode: match network.mode {
            Mode::Bridge => MacvlanMode::Bridge,
            Mode::Private => MacvlanMode::Private,
            Mode::Vepa => MacvlanMode::Vepa,
            Mode::Passthru => MacvlanMode::Passthru,
        },
        mac: derive::mac(ctx.host_id, ctx.container, name),
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
    if let Some(pool) = &network.ipv4 {
        if let Some(gateway) = pool.gateway {
            for route in &pool.routes {
                kernel
                    .add_route(link.index, *route, gateway)
                    .step_on(Step::AddRoute, name)?;
            }
        }
    }
    tracing::debug!(network = name, addresses = ?addresses, "link configured and up");
    Ok(LinkRecord {
        network: name.to_owned(),
        ifname: plan.ifname.clone(),
        index: link.index,
        // Passthru links take the parent's MAC: record what the kernel made.
        mac: format_mac(&link.mac.unwrap_or(spec.mac)),
        parent: network.parent.clone(),
        addresses,
        created_by: ctx.container.to_owned(),
    })
}

/// Leases an address; when the pool seems full or the wanted address
/// taken, first frees leases that nothing accounts for any more, then tries
/// once more.
fn lease(
    network: &str,
    pool: &Ipv4Pool,
    holder: &Holder,
    want: Option<IpAddr>,
    stores: &mut Stores,
) -> Result<IpAddr, Failure> {
    match stores.leases.acquire(network, pool, holder, want) {
        Err(e @ (LeaseError::Exhausted { .. } | LeaseError::Taken { .. })) => {
            if reclaim(network, &holder.netns, stores)? == 0 {
                return Err(Failure::on(Step::LeaseAddress, network, e));
            }
            stores
                .leases
                .acquire(network, pool, holder, want)
                .step_on(Step::LeaseAddress, network)
        }
        other => other.step_on(Step::LeaseAddress, network),
    }
}

/// Frees the leases on `network` that no live record accounts for: left by
/// a hook killed between leasing and recording, or by a namespace that died
/// without a poststop. Returns how many.
fn reclaim(network: &str, current: &str, stores: &mut Stores) -> Result<usize, Failure> {
    let mut freed = 0;
    for (address, holder) in stores
        .leases
        .list(network)
        .step_on(Step::LeaseAddress, network)?
    {
        if holder.netns == current || lease_in_use(network, address, &holder, stores)? {
            continue;
        }
        tracing::warn!(network, %address, container = %holder.container, "freeing a lease nothing uses");
        stores
            .leases
            .release(network, address, &holder.netns)
            .step_on(Step::LeaseAddress, network)?;
        freed += 1;
    }
    Ok(freed)
}

/// Whether a lease is accounted for: its namespace is recorded with a link
/// on `network` holding `address`, and a member still runs there.
fn lease_in_use(
    network: &str,
    address: IpAddr,
    holder: &Holder,
    stores: &mut Stores,
) -> Result<bool, Failure> {
    let Some(record) = stores
        .state
        .netns(&holder.netns)
        .step_on(Step::Validate, network)?
    else {
        return Ok(false);
    };
    let recorded = record
        .links
        .iter()
        .any(|l| l.network == network && l.addresses.iter().any(|a| a.addr() == address));
    Ok(recorded
        && record
            .members
            .values()
            .any(|m| kernel::alive(stores.reach, m, record.id())))
}

fn add_member(record: &mut NetnsRecord, ctx: &Context, wanted: &[Wanted]) {
    let member = record
        .members
        .entry(ctx.container.to_owned())
        .or_insert_with(|| Member {
            networks: Vec::new(),
            process: ctx.process.clone(),
            pinned: None,
        });
    member.process = ctx.process.clone();
    member.pinned = ctx.pinned.clone();
    for want in wanted {
        if !member.networks.contains(&want.network.name) {
            member.networks.push(want.network.name.clone());
        }
    }
}

/// Undoes in reverse order; keeps going past failures and reports them.
fn roll_back(
    undo: Vec<Undo>,
    container: &str,
    kernel: &mut dyn Kernel,
    stores: &mut Stores,
    key: &str,
) -> Vec<String> {
    let mut problems = Vec::new();
    for action in undo.into_iter().rev() {
        let result = match &action {
            Undo::Release { network, address } => stores
                .leases
                .release(network, *address, key)
                .map_err(|e| format!("network {network}: release {address}: {e}")),
            Undo::DeleteLink { network, index } => kernel
                .delete(*index)
                .map_err(|e| format!("network {network}: {e}")),
            Undo::RestoreContainer(Some(record)) => stores
                .state
                .put_container(container, record)
                .map_err(|e| e.to_string()),
            Undo::RestoreContainer(None) => stores
                .state
                .remove_container(container)
                .map_err(|e| e.to_string()),
            Undo::RestoreNetns(record) => stores.state.put_netns(record).map_err(|e| e.to_string()),
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
