//! `nsbypass doctor`: is this host ready for the config? One line per
//! check, `ok` or `FAIL` with the fix, so an admin can fix a host before a
//! container start fails on it.
//!
//! Doctor loads the config itself rather than through `Node::open`: it must
//! still say something useful (capabilities, cgroups) when the config is
//! broken, and it must not write the log; it takes the state lock only
//! to read the links' records (for their guards), briefly. It changes
//! nothing on the host: the one thing it makes, a probe MACVLAN (with the
//! address guard's filter on it), lives in a scratch network namespace of
//! its own and is deleted (and would go with that namespace anyway).

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use nsutil::dir::{ancestor_problem, root_problem, Unsafe};
use nsutil::netlink::{Link, Netlink, NewMacvlan};
use nsutil::nftables::{Batch, Nftables};
use nsutil::ns::Netns;
use runtime_config::config::ConfigError;
use runtime_config::leases::LeaseConfig;
use runtime_config::{Config, Network, Profile};

use crate::guard::{self, Guard, RealHostGuard};
use crate::kernel::{self, Presence, RealReach};
use crate::node;
use crate::operate;
use crate::profile;
use crate::reconcile::Stores;
use crate::records::StateDir;

/// The name of the probe MACVLAN in its scratch namespace.
const PROBE: &str = "nsbprobe0";

/// One check's result: what was found, or what is wrong and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    subject: String,
    verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ok(String),
    Fail { what: String, fix: String },
}

impl Check {
    fn ok(subject: impl Into<String>, found: impl Into<String>) -> Check {
        Check {
            subject: subject.into(),
            verdict: Verdict::Ok(found.into()),
        }
    }

    fn fail(subject: impl Into<String>, what: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            subject: subject.into(),
            verdict: Verdict::Fail {
                what: what.into(),
                fix: fix.into(),
            },
        }
    }

    fn failed(&self) -> bool {
        matches!(self.verdict, Verdict::Fail { .. })
    }
}

/// `ok   SUBJECT: FOUND` or `FAIL SUBJECT: WHAT; fix: FIX`: the two words
/// line up, and `grep ^FAIL` finds every problem.
impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Ok(found) => write!(f, "ok   {}: {found}", self.subject),
            Verdict::Fail { what, fix } => write!(f, "FAIL {}: {what}; fix: {fix}", self.subject),
        }
    }
}

/// Prints each check as soon as it is made (a slow or hanging one shows
/// where it is). A closed stdout must not crash doctor.
struct Report {
    failed: bool,
}

impl Report {
    fn add(&mut self, check: Check) {
        self.failed |= check.failed();
        let _ = writeln!(std::io::stdout().lock(), "{check}");
    }
}

/// Runs every check against the config at `config_path`; true if all are ok.
pub fn run(config_path: &Path) -> bool {
    let mut report = Report { failed: false };
    let config = Config::load(config_path);
    report.add(config_check(config_path, &config));
    report.add(capabilities_check());
    report.add(cgroup_check(Path::new("/sys/fs/cgroup")));
    if let Ok(config) = &config {
        let state = state_dir_check(&config.state_dir, nix::unistd::geteuid().as_raw());
        // The records are read only from a state directory that passed.
        let state_safe = !state.failed();
        report.add(state);
        lease_checks(config, &mut report);
        network_checks(config, &mut report);
        if state_safe {
            link_guard_checks(config, &mut report);
        }
        for profile in config.profiles.values() {
            profile_checks(config, profile, &mut report);
        }
    }
    !report.failed
}

fn config_check(path: &Path, config: &Result<Config, ConfigError>) -> Check {
    let subject = format!("config {}", path.display());
    match config {
        Ok(c) => Check::ok(
            subject,
            format!(
                "parses: {} network(s), {} profile(s)",
                c.networks.len(),
                c.profiles.len()
            ),
        ),
        Err(ConfigError::Read { source, .. }) if source.kind() == ErrorKind::NotFound => {
            Check::fail(
                subject,
                "does not exist",
                "write it (see README), or name another with --config or $NSBYPASS_CONFIG",
            )
        }
        Err(ConfigError::Read { source, .. }) => Check::fail(
            subject,
            format!("cannot be read: {source}"),
            "make it readable by root",
        ),
        Err(ConfigError::Syntax {
            line, col, message, ..
        }) => Check::fail(
            subject,
            format!("line {line}:{col}: {message}"),
            "correct the TOML there",
        ),
        Err(ConfigError::Invalid {
            section,
            key,
            message,
            ..
        }) => Check::fail(
            subject,
            format!("{section}: {key}: {message}"),
            format!("correct {key} in {section}"),
        ),
    }
}

/// The lease store: which, and for etcd that every endpoint answers, that
/// the cluster has quorum (a linearizable read succeeds) and that this
/// node's name is not registered to another host. Reads only.
fn lease_checks(config: &Config, report: &mut Report) {
    use crate::lease::etcd::{node_name, EtcdLeases};
    let etcd = match &config.leases {
        LeaseConfig::File => {
            report.add(Check::ok(
                "leases",
                format!(
                    "file store in {} (this host's leases only)",
                    config.state_dir.join("leases").display()
                ),
            ));
            return;
        }
        LeaseConfig::Etcd(etcd) => etcd,
    };
    let node = match node_name(etcd) {
        Ok(node) => node,
        Err(e) => {
            report.add(Check::fail(
                "leases",
                e.to_string(),
                "set [leases] node to this host's name in the cluster",
            ));
            return;
        }
    };
    report.add(Check::ok(
        "leases",
        format!(
            "etcd, prefix {}, node {node}, {} endpoint(s), {} ms per operation",
            etcd.prefix,
            etcd.endpoints.len(),
            etcd.timeout.as_millis()
        ),
    ));
    let machine = match node::this_machine_id() {
        Ok(id) => id,
        Err(failure) => {
            report.add(Check::fail(
                "leases",
                failure.to_string(),
                "systemd-machine-id-setup makes one",
            ));
            return;
        }
    };
    let store = EtcdLeases::new(etcd, &node, &machine);
    for (index, endpoint) in etcd.endpoints.iter().enumerate() {
        let subject = format!("leases etcd {endpoint}");
        let status = store.client().status_of(index);
        report.add(match status {
            Ok(status) => {
                let field = |k: &str| {
                    status
                        .get(k)
                        .and_then(|v| v.as_str())
                        .unwrap_or("?")
                        .to_owned()
                };
                let member = status["header"]["member_id"]
                    .as_str()
                    .unwrap_or("?")
                    .to_owned();
                Check::ok(
                    subject,
                    format!(
                        "answers: etcd {}, member {member}, leader {}",
                        field("version"),
                        field("leader")
                    ),
                )
            }
            Err(why) => Check::fail(
                subject,
                format!("does not answer: {why}"),
                "start that member, or take it out of [leases] endpoints",
            ),
        });
    }
    // A linearizable read needs a majority of members behind the leader.
    let members = store
        .client()
        .call("/v3/cluster/member/list", &serde_json::json!({}))
        .map(|v| v["members"].as_array().map_or(0, Vec::len));
    let registered = members.and_then(|members| store.registered(&node).map(|r| (members, r)));
    let key = store.node_key(&node);
    match registered {
        Ok((members, registered)) => {
            report.add(Check::ok(
                "leases etcd quorum",
                format!("a linearizable read answered ({members} member(s))"),
            ));
            report.add(match registered {
                None => Check::ok(
                    format!("leases etcd node {node}"),
                    format!("{key} is not there yet: this host's first lease writes its host id there"),
                ),
                Some(id) if id == store.host_id() => Check::ok(
                    format!("leases etcd node {node}"),
                    format!("{key} names this host"),
                ),
                Some(other) => Check::fail(
                    format!("leases etcd node {node}"),
                    format!("{key} names another host (host id {other}; this host's is {}), so this host cannot lease", store.host_id()),
                    format!("give this host its own [leases] node; if that host is gone for good, nsbypass gc --node {node}"),
                ),
            });
        }
        Err(e) => report.add(Check::fail(
            "leases etcd quorum",
            format!("no linearizable read answered: {e}"),
            "bring enough members back that a majority of the cluster runs",
        )),
    }
}

fn capabilities_check() -> Check {
    let needed = node::NEEDED_CAPABILITIES.join(" and ");
    match node::missing_capabilities() {
        Ok(missing) if missing.is_empty() => Check::ok("capabilities", format!("{needed} held")),
        Ok(missing) => Check::fail(
            "capabilities",
            format!("lacks {} (the hook needs {needed})", missing.join(" and ")),
            "run nsbypass as root (runtimes run their hooks so)",
        ),
        Err(e) => Check::fail(
            "capabilities",
            format!("cannot read this process's capabilities: {e}"),
            "check that /proc is mounted",
        ),
    }
}

/// Which cgroup hierarchy device grants go through: v2 (an eBPF program
/// per cgroup) or the v1 devices controller (also on a hybrid host).
fn cgroup_check(root: &Path) -> Check {
    use nix::sys::statfs::{
        statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC, SYSFS_MAGIC, TMPFS_MAGIC,
    };
    let subject = "cgroup";
    let kind = |p: &Path| statfs(p).ok().map(|s| s.filesystem_type());
    let at = root.display();
    match kind(root) {
        Some(t) if t == CGROUP2_SUPER_MAGIC => Check::ok(
            subject,
            format!("v2 (unified) at {at}: devices are granted by eBPF"),
        ),
        Some(t) if t == CGROUP_SUPER_MAGIC => Check::ok(
            subject,
            format!("v1 at {at}: devices are granted by the devices controller"),
        ),
        Some(t) if t == TMPFS_MAGIC => {
            let v1: Vec<String> = std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| kind(&e.path()) == Some(CGROUP_SUPER_MAGIC))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let unified = root.join("unified");
            let hybrid = kind(&unified) == Some(CGROUP2_SUPER_MAGIC);
            let devices = if v1.iter().any(|c| c.split(',').any(|c| c == "devices")) {
                "devices are granted by the v1 devices controller"
            } else {
                "no v1 devices controller is mounted, so profiles with devices cannot be granted them"
            };
            match (v1.is_empty(), hybrid) {
                (true, false) => Check::fail(
                    subject,
                    format!("{at} is a tmpfs with no cgroup hierarchy mounted in it"),
                    "boot with cgroups mounted (systemd does this), or mount cgroup2 on it",
                ),
                (true, true) => Check::ok(
                    subject,
                    format!("cgroup2 only at {}, no v1 controllers", unified.display()),
                ),
                (false, true) => Check::ok(
                    subject,
                    format!(
                        "hybrid: v1 controllers at {at}, cgroup2 at {}; {devices}",
                        unified.display()
                    ),
                ),
                (false, false) => Check::ok(subject, format!("v1 at {at}; {devices}")),
            }
        }
        Some(t) if t == SYSFS_MAGIC => Check::fail(
            subject,
            format!("nothing is mounted at {at} in this mount namespace (a fresh sysfs, as `ip netns exec` mounts one)"),
            "run doctor where the runtime runs its hooks (nsenter --net keeps the mounts; ip netns exec does not)",
        ),
        _ => Check::fail(
            subject,
            format!("no cgroup filesystem at {at}"),
            "boot with cgroups mounted (systemd does this), or mount cgroup2 on it",
        ),
    }
}

/// Whether [`nsutil::dir::Dir::open_root`] would accept `path` as the state
/// root, by the same rules, without creating it: every ancestor (as
/// `canonicalize` resolves the parent) owned by root and writable by
/// nobody else unless sticky; the root itself, if it exists, a real
/// directory owned by `euid` and writable by nobody else. Stricter in one
/// thing: a symlink on the way must be root's, for whoever owns a link can
/// point it (and so the state) elsewhere.
fn state_dir_check(path: &Path, euid: u32) -> Check {
    let subject = format!("state_dir {}", path.display());
    let fail = |u: Unsafe| Check::fail(&subject, u.what, u.fix);
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Check::fail(
            &subject,
            "does not name a directory below /",
            "set state_dir to a path such as /run/nsbypass",
        );
    };
    if !path.is_absolute() {
        return Check::fail(
            &subject,
            "is not an absolute path",
            "set state_dir to an absolute path such as /run/nsbypass",
        );
    }
    // Links on the way, as written.
    let mut at = PathBuf::from("/");
    for component in parent.components() {
        let Component::Normal(c) = component else {
            continue;
        };
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() && meta.uid() != 0 && meta.uid() != euid => {
                return Check::fail(
                    &subject,
                    format!(
                        "parent {} is a symlink owned by uid {}",
                        at.display(),
                        meta.uid()
                    ),
                    "set state_dir to a path without links that only root can write",
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Check::fail(
                    &subject,
                    format!("parent {} does not exist", at.display()),
                    "create the parent (owned by root, mode 0755) or choose another state_dir",
                );
            }
            Err(e) => {
                return Check::fail(
                    &subject,
                    format!("cannot inspect parent {}: {e}", at.display()),
                    "choose another state_dir",
                )
            }
        }
    }
    let parent = match std::fs::canonicalize(parent) {
        Ok(p) => p,
        Err(e) => {
            return Check::fail(
                &subject,
                format!("cannot resolve its parent {}: {e}", parent.display()),
                "create the parent (owned by root, mode 0755) or choose another state_dir",
            )
        }
    };
    // Every ancestor, from / down, as open_root walks them.
    let mut at = PathBuf::from("/");
    let ancestors = std::iter::once(None).chain(parent.components().map(Some));
    for component in ancestors {
        match component {
            Some(Component::Normal(c)) => at.push(c),
            Some(_) => continue,
            None => {}
        }
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => m,
            Ok(_) => {
                return Check::fail(
                    &subject,
                    format!("parent {} is not a directory", at.display()),
                    "choose another state_dir",
                )
            }
            Err(e) => {
                return Check::fail(
                    &subject,
                    format!("cannot inspect parent {}: {e}", at.display()),
                    "choose another state_dir",
                )
            }
        };
        if let Some(u) = ancestor_problem(&at, meta.uid(), meta.mode(), euid) {
            return fail(u);
        }
    }
    let full = parent.join(name);
    match std::fs::symlink_metadata(&full) {
        Err(e) if e.kind() == ErrorKind::NotFound => Check::ok(
            &subject,
            "does not exist yet; nsbypass creates it (mode 0700) on first use, and its parents are safe",
        ),
        Err(e) => Check::fail(
            &subject,
            format!("cannot inspect it: {e}"),
            "choose another state_dir",
        ),
        Ok(meta) if meta.file_type().is_symlink() => {
            let to = std::fs::read_link(&full)
                .map(|t| t.display().to_string())
                .unwrap_or_default();
            Check::fail(
                &subject,
                format!("it is a symlink (to {to}); nsbypass never follows links in its state directory"),
                "set state_dir to the real directory",
            )
        }
        Ok(meta) if !meta.is_dir() => Check::fail(
            &subject,
            "it is not a directory",
            "remove it or choose another state_dir",
        ),
        Ok(meta) => match root_problem(meta.uid(), meta.mode(), euid) {
            Some(u) => fail(u),
            None => Check::ok(
                &subject,
                format!(
                    "a directory owned by uid {}, mode {:04o}, and its parents are safe",
                    meta.uid(),
                    meta.mode() & 0o7777
                ),
            ),
        },
    }
}

/// Per network: its parent, its MTU, a probe MACVLAN; then, once per
/// parent, whether its unicast filter has overflowed.
fn network_checks(config: &Config, report: &mut Report) {
    if config.networks.is_empty() {
        return;
    }
    let nl = match Netlink::connect() {
        Ok(nl) => nl,
        Err(e) => {
            for name in config.networks.keys() {
                report.add(Check::fail(
                    format!("network {name}"),
                    format!("cannot ask the kernel: {e}"),
                    "run nsbypass doctor as root",
                ));
            }
            return;
        }
    };
    let mut parents: Vec<Link> = Vec::new();
    for (name, network) in &config.networks {
        let Some(parent) = parent_check(&nl, name, network, report) else {
            continue;
        };
        let check = mtu_check(name, network, &parent);
        let fits = !check.failed();
        report.add(check);
        let mut guard = None;
        report.add(macvlan_probe(&nl, name, network, &parent, fits, &mut guard));
        if let Some(check) = guard {
            report.add(check);
        }
        if !parents.iter().any(|p| p.index == parent.index) {
            parents.push(parent);
        }
    }
    for parent in &parents {
        report.add(unicast_filter_check(&nl, parent));
    }
}

/// Exists, up, has a carrier; the parent's link if it exists.
fn parent_check(nl: &Netlink, name: &str, network: &Network, report: &mut Report) -> Option<Link> {
    let p = &network.parent;
    let subject = format!("network {name}: parent {p}");
    let found = nl.link_by_name(p).and_then(|l| Ok((l, nl.link_status(p)?)));
    let (link, status) = match found {
        Ok((Some(link), Some(status))) => (link, status),
        Ok(_) => {
            report.add(Check::fail(
                subject,
                "does not exist in this network namespace",
                format!(
                    "set parent of network {name} to an existing link (ip link lists them), or create {p}"
                ),
            ));
            return None;
        }
        Err(e) => {
            report.add(Check::fail(
                subject,
                format!("cannot look it up: {e}"),
                "run nsbypass doctor as root",
            ));
            return None;
        }
    };
    let operstate = status.operstate.as_deref().unwrap_or("UNKNOWN");
    let check = if !link.up {
        Check::fail(subject, "is down", format!("ip link set {p} up"))
    } else if status.carrier == Some(false)
        || matches!(operstate, "DOWN" | "LOWERLAYERDOWN" | "NOTPRESENT")
    {
        Check::fail(
            subject,
            format!("is up but has no carrier (operstate {operstate})"),
            format!("connect {p} (cable, switch port; for a veth, bring its peer up)"),
        )
    } else {
        Check::ok(
            subject,
            format!(
                "exists (index {}), up, operstate {operstate}, mtu {}",
                link.index, link.mtu
            ),
        )
    };
    report.add(check);
    Some(link)
}

fn mtu_check(name: &str, network: &Network, parent: &Link) -> Check {
    let subject = format!("network {name}: mtu");
    let p = &network.parent;
    match network.mtu {
        None => Check::ok(subject, format!("inherits parent {p}'s {}", parent.mtu)),
        Some(mtu) if mtu <= parent.mtu => {
            Check::ok(subject, format!("{mtu} fits parent {p}'s {}", parent.mtu))
        }
        Some(mtu) => Check::fail(
            subject,
            format!("{mtu} is above parent {p}'s {}", parent.mtu),
            format!(
                "lower mtu of network {name} to at most {}, or raise {p}'s (ip link set {p} mtu {mtu})",
                parent.mtu
            ),
        ),
    }
}

/// Makes a MACVLAN of the network's mode on the parent, straight into a
/// scratch namespace (as setup makes one into a container's), never up,
/// so that it never joins the parent's address filter; then deletes it.
/// Dropping the namespace would remove it too, whatever fails.
fn macvlan_probe(
    nl: &Netlink,
    name: &str,
    network: &Network,
    parent: &Link,
    mtu_fits: bool,
    guard: &mut Option<Check>,
) -> Check {
    let subject = format!("network {name}: macvlan");
    let mode = format!("{:?}", network.mode).to_lowercase();
    let p = &network.parent;
    let scratch = match Netns::unshared() {
        Ok(ns) => ns,
        Err(e) => {
            return Check::fail(subject, e.to_string(), "run nsbypass doctor as root");
        }
    };
    let mac = match random_mac() {
        Ok(mac) => mac,
        Err(e) => {
            return Check::fail(
                subject,
                format!("read /dev/urandom: {e}"),
                "make /dev/urandom readable",
            )
        }
    };
    let made = nl.add_macvlan(&NewMacvlan {
        name: PROBE,
        parent_index: parent.index,
        mode: network.mode.kernel_value(),
        mac,
        mtu: network.mtu.filter(|_| mtu_fits),
        netns: Some(scratch.fd()),
        bc_queue_len: network.bc_queue_len,
    });
    if let Err(e) = made {
        let fix = match e.errno() {
            Some(nix::libc::EOPNOTSUPP) | Some(nix::libc::ENOENT) => {
                "load the macvlan module (modprobe macvlan)".to_owned()
            }
            _ if network.mode.kernel_value() == nsutil::netlink::MACVLAN_MODE_PASSTHRU => format!(
                "a passthru MACVLAN needs {p} to itself: remove its other MACVLANs, or use another mode"
            ),
            _ => format!(
                "check that {p} can take MACVLANs (not a bridge or bond port, not another MACVLAN's passthru parent) and see dmesg"
            ),
        };
        return Check::fail(
            subject,
            format!("the kernel refused a {mode} MACVLAN on {p}: {}", e.cause),
            fix,
        );
    }
    if network.guard {
        *guard = Some(guard_probe(&scratch, name, network, mac));
    }
    let deleted = scratch
        .run(|| -> nsutil::Result<()> {
            let inner = nl.connect_here()?;
            match inner.link_by_name(PROBE)? {
                Some(link) => inner.delete(link.index),
                None => Ok(()),
            }
        })
        .and_then(|r| r);
    drop(scratch);
    match deleted {
        Ok(()) => Check::ok(
            subject,
            format!("a {mode} MACVLAN was made on {p} in a scratch namespace and removed"),
        ),
        Err(e) => Check::fail(
            subject,
            format!("made a {mode} MACVLAN on {p}, but deleting it failed ({e}); it goes with its scratch namespace"),
            "report this: the kernel made a link it would not delete",
        ),
    }
}

/// Makes the address guard's filter (the one setup makes in a container's
/// namespace) on the probe link in its scratch namespace, and removes it:
/// whether this kernel has nftables' netdev egress hook.
fn guard_probe(scratch: &Netns, name: &str, network: &Network, mac: [u8; 6]) -> Check {
    let subject = format!("network {name}: guard");
    let probe = Guard {
        mac,
        v4: network.ipv4.iter().map(|p| p.first).collect(),
        v6: network.ipv6.iter().map(|p| p.first).collect(),
        ethertypes: network.guard_allow_ethertypes.clone(),
        passthru: false,
    };
    let made = scratch
        .run(|| -> nsutil::Result<()> {
            let nft = Nftables::connect()?;
            nft.apply(
                &probe.inner(PROBE),
                "make the guard's filter on the probe link",
            )?;
            let mut remove = Batch::new();
            remove.destroy_table(&guard::inner_table(PROBE));
            nft.apply(&remove, "remove the guard's filter from the probe link")
        })
        .and_then(|r| r);
    match made {
        Ok(()) => Check::ok(
            subject,
            "an nftables egress filter was made on the probe link and removed",
        ),
        Err(e) => Check::fail(
            subject,
            format!("the kernel refused the address guard's nftables filter: {e}"),
            format!(
                "use a kernel with nftables' netdev egress hook (Linux 5.16 or later, CONFIG_NF_TABLES_NETDEV, CONFIG_NETFILTER_EGRESS), or set guard = false on network {name}"
            ),
        ),
    }
}

/// One line per recorded link of a live namespace: whether its guard's
/// filters are all in place (`list --json`'s `guard`). Reads the records
/// under the state lock, briefly, and changes nothing.
fn link_guard_checks(config: &Config, report: &mut Report) {
    if !config.state_dir.exists() {
        return;
    }
    let state = match StateDir::lock(&config.state_dir, std::time::Duration::from_secs(1)) {
        Ok(state) => state,
        Err(e) => {
            report.add(Check::fail(
                "links: guard",
                format!("cannot read the records: {e}"),
                "run nsbypass doctor as root, again when no hook holds the lock",
            ));
            return;
        }
    };
    let mut reach = RealReach::default();
    let mut guards = RealHostGuard::default();
    let mut leases = state.leases();
    let mut stores = Stores {
        state: &state,
        leases: &mut leases,
        reach: &mut reach,
        host: "",
        machine: "",
        guards: &mut guards,
    };
    for key in stores.state.netns_keys().unwrap_or_default() {
        let Ok(Some(record)) = stores.state.netns(&key) else {
            continue;
        };
        let mut inside = match kernel::presence(stores.reach, &record) {
            Ok(Presence::Reachable(kernel)) => Some(kernel),
            Ok(Presence::Unreachable) => None,
            _ => continue,
        };
        for link in record.links.iter().filter(|l| !l.pending) {
            let subject = format!(
                "link {} of {} ({})",
                link.ifname, link.created_by, link.network
            );
            let found = operate::guard_state(link, inside.as_mut(), false, &mut stores);
            report.add(match found.as_str() {
                "on" => Check::ok(subject, "guarded: in its namespace and on the parent"),
                "off" => Check::ok(subject, format!("not guarded (network {} has guard = false)", link.network)),
                partial => Check::fail(
                    subject,
                    format!("guard {partial}"),
                    format!(
                        "detach and attach it again, or restart the container; a container that deletes its filter holds CAP_NET_ADMIN: drop that capability ({} stays guarded off the host meanwhile)",
                        link.parent
                    ),
                ),
            });
        }
    }
}

/// A locally administered unicast MAC, so the probe can clash with nobody.
fn random_mac() -> std::io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut mac)?;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    Ok(mac)
}

/// A NIC filters unicast frames in hardware for a limited number of
/// addresses. Every MACVLAN child that is up adds its MAC; when the list
/// does not fit (or the device has no unicast filter at all, as a veth
/// has none), the kernel makes the device promiscuous itself. That shows
/// only in `IFLA_PROMISCUITY`: the flags (and so `ip link`) report PROMISC
/// only when a user set it. The parent then takes in every frame on the
/// wire and the MACVLAN layer sorts them in software.
fn unicast_filter_check(nl: &Netlink, parent: &Link) -> Check {
    let p = &parent.name;
    let subject = format!("parent {p}: unicast filter");
    let found = nl
        .link_status(p)
        .and_then(|s| Ok((s, nl.unicast_macs(parent.index)?.len())));
    let (status, addresses) = match found {
        Ok((Some(status), addresses)) => (status, addresses),
        Ok((None, _)) => {
            return Check::fail(
                subject,
                "went away while doctor looked at it",
                "run nsbypass doctor again",
            )
        }
        Err(e) => {
            return Check::fail(
                subject,
                format!("cannot read it: {e}"),
                "run nsbypass doctor as root",
            )
        }
    };
    promiscuity_verdict(subject, status.promiscuity, status.user_promisc, addresses)
}

/// The verdict on a parent with promiscuity count `promiscuity`, IFF_PROMISC
/// reported (`user`), and `addresses` unicast addresses (up MACVLAN
/// children, mostly) in its filter.
fn promiscuity_verdict(subject: String, promiscuity: u32, user: bool, addresses: usize) -> Check {
    if promiscuity == 0 {
        return Check::ok(
            subject,
            format!("not promiscuous, {addresses} unicast address(es) of MACVLAN children in its filter"),
        );
    }
    if user {
        return Check::ok(
            subject,
            format!("promiscuous because it was set so (ip link shows PROMISC; promiscuity {promiscuity})"),
        );
    }
    if addresses == 0 {
        return Check::ok(
            subject,
            format!(
                "promiscuous (promiscuity {promiscuity}) for something other than its filter (a passthru MACVLAN, a bridge, a packet capture); no child's address is in its filter"
            ),
        );
    }
    Check::fail(
        subject,
        format!(
            "the kernel made it promiscuous (promiscuity {promiscuity}, not shown by ip link) with {addresses} unicast address(es) of MACVLAN children in its filter: the filter overflowed, or the device has none (a veth has none), so it takes in every frame on the wire (unless a packet capture is what made it so)"
        ),
        "use a NIC with a larger unicast filter, cap the children on this parent ([parents.NAME] max_links), or use mode passthru (one child that owns the NIC)",
    )
}

/// Each `requires` path, each device and mount source, then the hook's own
/// plan of the profile (sharing, nesting, env) if every source was fine.
fn profile_checks(config: &Config, profile: &Profile, report: &mut Report) {
    let n = &profile.name;
    let mut all_ok = true;
    let mut add = |check: Check| {
        all_ok &= !check.failed();
        report.add(check);
    };
    for required in &profile.requires {
        let subject = format!("profile {n}: requires {}", required.display());
        add(match std::fs::metadata(required) {
            Ok(_) => Check::ok(subject, "present"),
            Err(e) => Check::fail(
                subject,
                format!("this host lacks it ({})", e_text(&e)),
                "load the driver or install the stack that provides it, or drop it from requires",
            ),
        });
    }
    for spec in &profile.devices {
        let subject = format!("profile {n}: source {}", spec.source.display());
        if !spec.is_glob() {
            add(match source_kind(&spec.source) {
                Ok(found @ Found::Device(..)) => Check::ok(subject, found.to_string()),
                Ok(found) => Check::fail(
                    subject,
                    format!("is {found}, not a device node"),
                    format!("name a device node in profile {n}'s devices, or move it to mounts"),
                ),
                Err((what, fix)) => Check::fail(subject, what, fix),
            });
            continue;
        }
        let pattern = spec.source.to_string_lossy();
        let matches: Vec<PathBuf> = match glob::glob(&pattern) {
            Ok(paths) => paths.filter_map(Result::ok).collect(),
            Err(e) => {
                add(Check::fail(
                    subject,
                    format!("is not a valid pattern: {e}"),
                    format!("correct it in profile {n}"),
                ));
                continue;
            }
        };
        if matches.is_empty() {
            add(Check::fail(
                subject,
                "matches nothing on this host",
                "load the driver that makes these device nodes, or correct the pattern",
            ));
            continue;
        }
        let bad = matches.iter().find_map(|m| match source_kind(m) {
            Ok(Found::Device(..)) => None,
            Ok(found) => Some(format!("{} is {found}, not a device node", m.display())),
            Err((what, _)) => Some(what),
        });
        add(match bad {
            Some(what) => Check::fail(
                subject,
                what,
                "narrow the pattern to device nodes, or remove what matched",
            ),
            None => Check::ok(subject, format!("matches {} device node(s)", matches.len())),
        });
    }
    for spec in &profile.mounts {
        let subject = format!("profile {n}: source {}", spec.source.display());
        if spec.is_glob() {
            let pattern = spec.source.to_string_lossy();
            let matches: Vec<PathBuf> = glob::glob(&pattern)
                .map(|paths| paths.filter_map(Result::ok).collect())
                .unwrap_or_default();
            let links = matches.iter().filter(|m| m.is_symlink()).count();
            add(match matches.len() {
                0 => Check::fail(
                    subject,
                    "matches nothing on this host",
                    "install the stack that provides these files, or correct the pattern",
                ),
                n => Check::ok(
                    subject,
                    format!("matches {} file(s) and {links} symlink(s)", n - links),
                ),
            });
            continue;
        }
        add(match source_kind(&spec.source) {
            Ok(found @ (Found::File | Found::Dir)) => Check::ok(subject, found.to_string()),
            Ok(found) => Check::fail(
                subject,
                format!("is {found}, neither a file nor a directory"),
                format!(
                    "name a file or directory in profile {n}'s mounts (device nodes go in devices)"
                ),
            ),
            Err((what, fix)) => Check::fail(subject, what, fix),
        });
    }
    if !profile.capabilities.is_empty() || !profile.rlimits.is_empty() {
        add(process_needs(n, profile));
    }
    if profile.bpffs {
        let subject = format!("profile {n}: bpffs");
        let known = std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("bpf"))
        });
        add(match known {
            true => Check::ok(
                subject,
                "this kernel has bpffs; each container gets its own at /sys/fs/bpf",
            ),
            false => Check::fail(
                subject,
                "this kernel has no bpf filesystem (not in /proc/filesystems)",
                "use a kernel built with CONFIG_BPF_SYSCALL, or drop bpffs from the profile",
            ),
        });
    }
    if all_ok {
        let subject = format!("profile {n}: plan");
        report.add(match profile::plan(std::slice::from_ref(n), config) {
            Ok(_) => Check::ok(subject, "the hook can plan it"),
            Err(e) => Check::fail(subject, e.to_string(), format!("correct profile {n}")),
        });
    }
}

/// What the profile asks of the container's process, and whether a
/// runtime on this host can give it: a limit above this host's hard limit
/// needs CAP_SYS_RESOURCE in the runtime, which these machines may lack.
fn process_needs(n: &str, profile: &runtime_config::Profile) -> Check {
    let subject = format!("profile {n}: process");
    let flags: Vec<String> = profile
        .capabilities
        .iter()
        .map(|c| format!("--cap-add {}", c.trim_start_matches("CAP_")))
        .chain(profile.rlimits.iter().map(|l| l.ulimit_flag()))
        .collect();
    let own = std::process::id() as i32;
    let can_raise = nix::unistd::Uid::effective().is_root()
        && std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                // bit 24: CAP_SYS_RESOURCE
                .is_some_and(|caps| caps & (1 << 24) != 0)
        });
    for limit in &profile.rlimits {
        let Ok((_, hard)) = nsutil::rlimit::of(own, limit.name) else {
            continue;
        };
        if hard < limit.spec_value() && !can_raise {
            return Check::fail(
                subject,
                format!(
                    "needs {} {} but this host's hard limit is {hard} and no runtime here can raise it (no CAP_SYS_RESOURCE)",
                    limit.spec_name(),
                    limit.value.map_or("unlimited".to_owned(), |v| v.to_string())
                ),
                "raise the hard limit for the runtime (systemd LimitMEMLOCK=, limits.conf), or use CAP_IPC_LOCK instead of memlock",
            );
        }
    }
    Check::ok(
        subject,
        format!(
            "the docker runtime entry adds these to the spec; with podman, CRI-O or CDI the hook refuses a container without {}",
            flags.join(" ")
        ),
    )
}

/// What a source path is, looked at as the hook opens it: without
/// following a link at its last component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Device(&'static str, u64, u64),
    File,
    Dir,
    Other,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Device(kind, major, minor) => write!(f, "a {kind} device {major}:{minor}"),
            Found::File => write!(f, "a file"),
            Found::Dir => write!(f, "a directory"),
            Found::Other => write!(f, "neither a file, a directory nor a device node"),
        }
    }
}

/// The kind of `path`, or (what is wrong, fix) if it is missing or a link.
fn source_kind(path: &Path) -> Result<Found, (String, String)> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| {
        (
            format!("{} on this host", e_text(&e)),
            "install the stack that provides it, or correct the path".to_owned(),
        )
    })?;
    let t = meta.file_type();
    if t.is_symlink() {
        let to = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        return Err((
            format!(
                "is a symlink (to {to}); the hook binds exactly what is named and refuses links"
            ),
            "name the file itself, with a target if the path in the container matters".to_owned(),
        ));
    }
    let rdev = meta.rdev();
    let (major, minor) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
    Ok(if t.is_char_device() {
        Found::Device("character", major, minor)
    } else if t.is_block_device() {
        Found::Device("block", major, minor)
    } else if t.is_file() {
        Found::File
    } else if t.is_dir() {
        Found::Dir
    } else {
        Found::Other
    })
}

/// "No such file or directory", without the "(os error 2)".
fn e_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn euid() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn lines_are_ok_or_fail_with_the_fix() {
        assert_eq!(
            Check::ok("capabilities", "CAP_NET_ADMIN held").to_string(),
            "ok   capabilities: CAP_NET_ADMIN held"
        );
        let fail = Check::fail(
            "network fast: mtu",
            "9000 is above parent eth1's 1500",
            "lower it",
        );
        assert!(fail.failed());
        assert_eq!(
            fail.to_string(),
            "FAIL network fast: mtu: 9000 is above parent eth1's 1500; fix: lower it"
        );
    }

    #[test]
    fn a_state_dir_to_be_made_under_safe_parents_is_ok() {
        let dir = tempfile::TempDir::new().unwrap();
        let check = state_dir_check(&dir.path().join("state"), euid());
        assert!(!check.failed(), "{check}");
        assert!(check.to_string().contains("does not exist yet"), "{check}");

        let sticky = dir.path().join("sticky");
        std::fs::create_dir(&sticky).unwrap();
        chmod(&sticky, 0o1777);
        let check = state_dir_check(&sticky.join("state"), euid());
        assert!(!check.failed(), "a sticky parent is safe: {check}");

        let state = dir.path().join("made");
        std::fs::create_dir(&state).unwrap();
        chmod(&state, 0o700);
        let check = state_dir_check(&state, euid());
        assert!(
            check.to_string().starts_with("ok   state_dir ")
                && check.to_string().contains("mode 0700"),
            "{check}"
        );
    }

    #[test]
    fn unsafe_state_dirs_fail_naming_the_culprit() {
        let dir = tempfile::TempDir::new().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let check = state_dir_check(&open.join("deeper").join("state"), euid()).to_string();
        // The missing "deeper" is found first; an open parent of an
        // existing one is the problem.
        assert!(check.contains("does not exist"), "{check}");
        std::fs::create_dir(open.join("deeper")).unwrap();
        let check = state_dir_check(&open.join("deeper").join("state"), euid()).to_string();
        assert!(
            check.starts_with("FAIL state_dir ")
                && check.contains(&format!(
                    "parent {} is writable by others (mode 0777)",
                    open.display()
                ))
                && check.contains("; fix: use a directory only root can write"),
            "{check}"
        );

        let wide = dir.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        chmod(&wide, 0o770);
        let check = state_dir_check(&wide, euid()).to_string();
        assert!(
            check.contains("it is writable by group (mode 0770); fix: chmod 0700 it"),
            "{check}"
        );

        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        let check = state_dir_check(&link, euid()).to_string();
        assert!(
            check.starts_with("FAIL") && check.contains("it is a symlink (to "),
            "{check}"
        );

        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        let check = state_dir_check(&file, euid()).to_string();
        assert!(check.contains("it is not a directory"), "{check}");

        let check = state_dir_check(Path::new("relative/state"), euid()).to_string();
        assert!(check.contains("not an absolute path"), "{check}");
    }

    #[test]
    fn a_link_on_the_way_must_be_roots() {
        let dir = tempfile::TempDir::new().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        symlink(&real, &link).unwrap();
        let check = state_dir_check(&link.join("state"), euid());
        assert!(!check.failed(), "the owner's own link: {check}");
        if euid() != 0 {
            eprintln!("skipping the foreign link: needs root to lchown");
            return;
        }
        std::os::unix::fs::lchown(&link, Some(1000), None).unwrap();
        let check = state_dir_check(&link.join("state"), euid()).to_string();
        assert!(
            check.contains(&format!(
                "parent {} is a symlink owned by uid 1000",
                link.display()
            )),
            "{check}"
        );
    }

    #[test]
    fn promiscuity_fails_only_when_the_filter_is_why() {
        let s = || "parent eth1: unicast filter".to_owned();
        assert!(!promiscuity_verdict(s(), 0, false, 40).failed());
        assert!(
            !promiscuity_verdict(s(), 1, true, 3).failed(),
            "set by the user"
        );
        assert!(
            !promiscuity_verdict(s(), 1, false, 0).failed(),
            "passthru, bridge"
        );
        let fail = promiscuity_verdict(s(), 1, false, 3).to_string();
        assert!(
            fail.starts_with("FAIL parent eth1: unicast filter: the kernel made it promiscuous")
                && fail.contains("3 unicast address(es)")
                && fail.contains("; fix: use a NIC with a larger unicast filter"),
            "{fail}"
        );
    }

    #[test]
    fn sources_are_told_apart_without_following_links() {
        let dir = tempfile::TempDir::new().unwrap();
        assert!(matches!(
            source_kind(Path::new("/dev/null")),
            Ok(Found::Device("character", 1, 3))
        ));
        assert_eq!(source_kind(dir.path()), Ok(Found::Dir));
        let link = dir.path().join("null");
        symlink("/dev/null", &link).unwrap();
        let (what, _) = source_kind(&link).unwrap_err();
        assert!(what.starts_with("is a symlink (to /dev/null)"), "{what}");
        let (what, _) = source_kind(&dir.path().join("missing")).unwrap_err();
        assert_eq!(what, "No such file or directory on this host");
    }
}
