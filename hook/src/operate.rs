//! The operator's commands: `attach`, `detach`, `list` and `gc`. Each is a
//! thin front end to the composition root ([`Node`]) the hook uses, so a
//! namespace wired by hand gets the same validation, leases, records and
//! rollback as one wired by a runtime.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use runtime_config::names::check_container_id;
use runtime_config::Request;
use serde::Serialize;

use runtime_config::leases::LeaseConfig;

use crate::failure::{Failure, Step, StepExt};
use crate::guard::Guard;
use crate::kernel::{self, Kernel, Presence};
use crate::node::{Detached, Node, Target};
use crate::profile;
use crate::reconcile::Stores;
use crate::records::{LinkRecord, Source};
use crate::setup::addresses;
use crate::teardown::{Outcome, Released};

/// Where `attach` wires: a process's namespace, or a namespace by path.
pub enum Place {
    Pid(i32),
    Netns(PathBuf),
}

/// `nsbypass attach`, as parsed from its flags.
pub struct Attach {
    pub place: Place,
    pub id: String,
    pub networks: String,
    pub ip: Option<String>,
    pub profiles: Option<String>,
}

/// Wires the namespace `attach.place` names into the networks asked for,
/// exactly as the hook would wire a container with that id, and prints
/// one line per network.
pub fn attach(config: &Path, attach: &Attach) -> anyhow::Result<()> {
    check_container_id(&attach.id)
        .map_err(|m| Failure::refuse(Step::Validate, format!("--id: {m}")))?;
    let request = Request::from_values(
        Some(("--network".to_owned(), attach.networks.clone())),
        attach.ip.clone().map(|v| ("--ip".to_owned(), v)),
        attach.profiles.clone().map(|v| ("--profile".to_owned(), v)),
    )
    .step(Step::ReadRequest)?;
    let (pid, netns_path, root) = match &attach.place {
        // A running process's root, as it sees it: `/` (the carrier
        // reaches it through /proc/PID/root, inside its mount namespace).
        Place::Pid(pid) => (Some(*pid), None, Some(PathBuf::from("/"))),
        Place::Netns(path) => {
            if !request.profiles.is_empty() {
                return Err(Failure::refuse(
                    Step::Validate,
                    "--profile needs --pid: a profile goes into a process's mount namespace and root, which a namespace path does not have",
                )
                .into());
            }
            let path = std::path::absolute(path).step(Step::OpenNamespace)?;
            (None, Some(path), None)
        }
    };
    if let Some(pid) = pid {
        if kernel::start_time(pid).is_none() {
            return Err(Failure::refuse(Step::OpenNamespace, format!("no process {pid}")).into());
        }
        if !request.profiles.is_empty() {
            if same_inode(pid, "ns/mnt")? {
                return Err(Failure::refuse(
                    Step::Validate,
                    format!("--profile: process {pid} shares nsbypass's mount namespace; its mounts would reach the host (attach a container's process)"),
                )
                .into());
            }
            if same_inode(pid, "root")? {
                return Err(Failure::refuse(
                    Step::Validate,
                    format!("--profile: process {pid} has the host's root directory; a profile goes into a container's root (attach a container's process)"),
                )
                .into());
            }
        }
    }
    let node = Node::open(config)?;
    let plan = match request.profiles.is_empty() {
        true => None,
        false => Some(profile::plan(&request.profiles, &node.config)?),
    };
    let target = Target {
        container: &attach.id,
        pid,
        netns_path: netns_path.as_deref(),
        rootfs: root.as_deref(),
        readonly: pid.is_some_and(|pid| read_only(Path::new(&format!("/proc/{pid}/root")))),
        source: Source::Attach,
    };
    let done = node.setup(&target, &request, plan)?;
    let mut out = String::new();
    for w in &done.wired {
        let _ = writeln!(
            out,
            "attached {} to {}: {} {} {}{}",
            attach.id,
            w.network,
            w.ifname,
            w.mac,
            addresses(&w.addresses),
            if w.shared { " (shared)" } else { "" }
        );
    }
    for p in &done.profiles {
        let _ = writeln!(out, "attached {} to profile {p}", attach.id);
    }
    print!("{out}");
    Ok(())
}

/// Undoes `attach` (or a hook's setup) for `id`.
pub fn detach(config: &Path, id: &str) -> anyhow::Result<()> {
    check_container_id(id).map_err(|m| Failure::refuse(Step::Validate, format!("--id: {m}")))?;
    let node = Node::open(config)?;
    match node.detach(id)? {
        Detached::Already => println!("{id} is detached already"),
        Detached::Done(Outcome::Left { released, kept }) => {
            for r in &released {
                println!("detached {id} from {}: {}", r.network, describe(r));
            }
            for r in &kept {
                println!(
                    "detached {id} from {}: {} stays leased: its namespace lives on out of reach",
                    r.network,
                    describe(r)
                );
            }
            if released.is_empty() && kept.is_empty() {
                println!("detached {id}");
            }
        }
        Detached::Done(_) => println!("detached {id}"),
    }
    Ok(())
}

/// One live attachment, as `list --json` prints it. The field names are a
/// contract for scripts: add to them, never rename.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The container (or attach id) whose setup made the link.
    pub id: String,
    /// Every member of the namespace that asks for this network (a pod's
    /// containers share one link).
    pub ids: Vec<String>,
    pub network: String,
    pub ifname: String,
    pub mac: String,
    pub addresses: Vec<String>,
    pub parent: String,
    /// A path that leads to the namespace (`/proc/PID/ns/net`, a pinned
    /// path, or the one `attach --netns` was given).
    pub netns: String,
    /// The namespace's key in the state directory (`DEV-INO`).
    pub netns_key: String,
    /// `hook` or `attach`.
    pub source: &'static str,
    /// When the link was made, RFC 3339 UTC; empty if not recorded.
    pub since: String,
    /// `reachable`, `unreachable` for a namespace that lives on where no
    /// recorded path leads (its address stays leased), or `stale` for one
    /// that is gone while its records still hold the lease (its runtime
    /// has not run poststop yet: CRI-O runs it when the pod is removed,
    /// not when it stops); `gc`, or a setup that needs the address, frees
    /// it.
    pub state: &'static str,
    /// Whether the link was made with the address guard (the network's
    /// `guard`).
    pub guarded: bool,
    /// What of the guard is in place now: `on` (every filter the link
    /// needs), `off` (made without one), or `partial: ...` naming what is
    /// missing: a container with CAP_NET_ADMIN can delete the filter in
    /// its namespace; the parent's stays.
    pub guard: String,
    /// The Kubernetes pod (`NAMESPACE/NAME`) the link was made for, from
    /// its pod annotations; empty for other containers and attachments.
    pub pod: String,
}

/// Prints every live attachment on this host, and every stale one (its
/// namespace gone, its lease still held), as a table or as JSON.
pub fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let node = Node::open(config)?;
    let rows = node.with_stores(|stores| {
        let mut rows = Vec::new();
        for key in stores.state.netns_keys().step(Step::ReadRecords)? {
            let Some(record) = stores.state.netns(&key).step(Step::ReadRecords)? else {
                continue;
            };
            let presence = kernel::presence(stores.reach, &record).step(Step::OpenNamespace)?;
            let state = match &presence {
                Presence::Reachable(_) => "reachable",
                Presence::Unreachable => "unreachable",
                // Still being destroyed: its leases go in a moment.
                Presence::Dying => continue,
                // Gone, but not freed until a run that frees reads it.
                Presence::Gone => "stale",
            };
            let mut inside = match presence {
                Presence::Reachable(kernel) => Some(kernel),
                _ => None,
            };
            let netns = record
                .netns_paths()
                .into_iter()
                .find(|p| stores.reach.leads_to(p, record.id()))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            for link in record.links.iter().filter(|l| !l.pending) {
                let guard = guard_state(link, inside.as_mut(), state == "stale", stores);
                rows.push(Row {
                    id: link.created_by.clone(),
                    ids: record
                        .members
                        .iter()
                        .filter(|(_, m)| !m.pending && m.networks.contains(&link.network))
                        .map(|(id, _)| id.clone())
                        .collect(),
                    network: link.network.clone(),
                    ifname: link.ifname.clone(),
                    mac: link.mac.clone(),
                    addresses: link.addresses.iter().map(ToString::to_string).collect(),
                    parent: link.parent.clone(),
                    netns: netns.clone(),
                    netns_key: key.clone(),
                    source: link.source.name(),
                    since: link.since.map(rfc3339).unwrap_or_default(),
                    state,
                    guarded: link.guard.is_some(),
                    guard,
                    pod: link.pod.clone().unwrap_or_default(),
                });
            }
        }
        Ok(rows)
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).expect("rows serialise")
        );
        return Ok(());
    }
    let store = store_line(&node);
    println!(
        "{:<20} {:<10} {:<8} {:<22} {:<17} {:<7} {:<20} NETNS",
        "ID", "NETWORK", "IFNAME", "ADDRESSES", "MAC", "SOURCE", "SINCE"
    );
    for r in &rows {
        let addresses = match r.addresses.is_empty() {
            true => "l2-only".to_owned(),
            false => r.addresses.join(","),
        };
        println!(
            "{:<20} {:<10} {:<8} {:<22} {:<17} {:<7} {:<20} {}{}{}",
            r.ids.join(",").chars().take(20).collect::<String>(),
            r.network,
            r.ifname,
            addresses,
            r.mac,
            r.source,
            r.since,
            r.netns,
            match r.state {
                "reachable" => "",
                "stale" => " (stale: gone; gc frees it)",
                _ => " (out of reach)",
            },
            match r.guard.as_str() {
                "on" => String::new(),
                "off" => " (unguarded)".to_owned(),
                other => format!(" (guard {other})"),
            }
        );
    }
    if let Some(line) = store {
        println!("{line}");
    }
    Ok(())
}

/// What of `link`'s guard is in place (see [`Row::guard`]); `inside` is
/// a kernel for its namespace when a recorded path reaches it.
pub(crate) fn guard_state(
    link: &LinkRecord,
    inside: Option<&mut Box<dyn Kernel>>,
    gone: bool,
    stores: &mut Stores,
) -> String {
    let Some(guard) = Guard::of(link) else {
        return "off".into();
    };
    let mut missing = Vec::new();
    // A namespace that is gone took its link and filter with it.
    match inside.map(|k| k.has_guard(&link.ifname)) {
        _ if gone => {}
        Some(Ok(true)) => {}
        Some(Ok(false)) => missing.push("the filter in the namespace is gone"),
        Some(Err(_)) | None => missing.push("the filter in the namespace cannot be read"),
    }
    if guard.on_parent()
        && !stores
            .guards
            .holds(&link.parent, guard.mac)
            .unwrap_or(false)
    {
        missing.push("the parent's filter lacks the link");
    }
    if missing.is_empty() {
        "on".into()
    } else {
        format!("partial: {}", missing.join("; "))
    }
}

/// The lease store, as `list` ends its table with it: for etcd only (the
/// file store's table is as it always was).
fn store_line(node: &Node) -> Option<String> {
    let LeaseConfig::Etcd(etcd) = &node.config.leases else {
        return None;
    };
    let endpoints: Vec<String> = etcd.endpoints.iter().map(ToString::to_string).collect();
    Some(format!(
        "leases: etcd {} at {}, node {}",
        etcd.prefix,
        endpoints.join(","),
        node.lease_host()
    ))
}

/// Frees what no live namespace accounts for, and says what.
pub fn gc(config: &Path) -> anyhow::Result<()> {
    let node = Node::open(config)?;
    let networks: Vec<&str> = node.pooled_networks().collect();
    let collected = node.with_stores(|stores| {
        let mut collected = crate::reconcile::collect(stores, &networks)?;
        // Host shims follow what is left: one per network still attached.
        if let Err(failure) = crate::shim::converge_all(&node.config, stores) {
            collected.failures.push(failure);
        }
        Ok(collected)
    })?;
    for (network, address, container) in &collected.leases {
        println!("freed lease {network} {address} (taken for {container})");
    }
    for key in &collected.namespaces {
        println!("removed the record of namespace {key}: it is gone");
    }
    for id in &collected.containers {
        println!("removed the record of container {id}");
    }
    println!(
        "gc: freed {} leases, {} namespace records, {} container records; {} live links untouched",
        collected.leases.len(),
        collected.namespaces.len(),
        collected.containers.len(),
        collected.live_links
    );
    let mut failures = collected.failures.into_iter();
    match failures.next() {
        None => Ok(()),
        Some(first) => Err(first.with_rollback(failures.collect()).into()),
    }
}

/// Releases every lease of `name`, another node of the etcd store that is
/// gone for good, and its name's registration; says what. Takes no lock:
/// none of it is this host's.
pub fn gc_node(config: &Path, name: &str) -> anyhow::Result<()> {
    let node = Node::open(config)?;
    let LeaseConfig::Etcd(etcd) = &node.config.leases else {
        return Err(Failure::refuse(
            Step::Validate,
            "--node is for [leases] store = \"etcd\": the file store holds this host's leases only (plain gc frees them)",
        )
        .into());
    };
    runtime_config::leases::check_node_name(name)
        .map_err(|m| Failure::refuse(Step::Validate, format!("--node: {m}")))?;
    if name == node.lease_host() {
        return Err(Failure::refuse(
            Step::Validate,
            format!("--node {name} is this node; plain gc frees what it no longer uses"),
        )
        .into());
    }
    let store = crate::lease::etcd::EtcdLeases::new(etcd, node.lease_host(), "");
    let freed = store.release_node(name).step(Step::ReleaseAddress)?;
    for (network, address, container) in &freed {
        println!("freed lease {network} {address} (taken for {container} on node {name})");
    }
    println!(
        "gc --node {name}: freed {} leases; {} is no longer registered",
        freed.len(),
        store.node_key(name)
    );
    Ok(())
}

/// Whether `/proc/PID/<what>` is the same inode as nsbypass's own or the
/// host's init's (`ns/mnt`: the mount namespace; `root`: the root
/// directory): nsbypass may itself run in a debug pod that sees host pids.
fn same_inode(pid: i32, what: &str) -> Result<bool, Failure> {
    use std::os::unix::fs::MetadataExt;
    let id = |who: &str| {
        std::fs::metadata(format!("/proc/{who}/{what}"))
            .map(|m| (m.dev(), m.ino()))
            .step(Step::OpenRootfs)
    };
    let theirs = id(&pid.to_string())?;
    Ok(theirs == id("self")? || id("1").is_ok_and(|init| init == theirs))
}

/// Whether the filesystem at `root` is mounted read-only.
fn read_only(root: &Path) -> bool {
    nix::sys::statvfs::statvfs(root)
        .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
}

fn describe(r: &Released) -> String {
    format!("{} {}", r.ifname, addresses(&r.addresses))
}

/// `secs` since the epoch as RFC 3339 UTC (`2026-12-01T11:34:15Z`).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_125_455), "2026-12-01T11:44:15Z");
    }
}
