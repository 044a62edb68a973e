//! Issue 9, the soak: 500 container lifecycles through the hook by 8
//! concurrent workers, with a mix of networks, static addresses, profiles
//! and pods. No address is ever live twice, and nothing leaks: no lease,
//! link, record, mount or device grant outlives its container, and the
//! hook is as fast at the end as at the start.
//!
//! One testbed, one config with three networks on its parent: `fast`
//! (pooled, the peer host as gateway, one route), `slow` (pooled, its own
//! subnet and a range that does not overlap `fast`'s) and `l2` (layer 2
//! only), plus profile `soak` (a host library bound into the container and
//! preloaded, and a harmless device node granted in its device cgroup).
//!
//! Each worker runs its share of lifecycles, drawn from a seeded xorshift
//! (so a run is reproducible from its seed, printed at the start):
//!
//! - **sleeper** (most): a [`Sleeper`] in a netns of its own, a random
//!   non-empty set of networks, sometimes static addresses from the
//!   worker's own slice of each range (slices are disjoint, so two live
//!   pins never collide; a pin may still meet an address the pool handed
//!   to another worker's container, which must be refused, naming a
//!   container that was live then);
//! - **refused pin**: a holder gets a pooled address, a second container
//!   pins that address: refused with exactly one line, leaving nothing,
//!   and its poststop leaves the holder alone;
//! - **pod**: a [`PinnedNetns`] with 2 or 3 member sleepers, prestarts and
//!   poststops interleaved; all share one link per network, which goes
//!   with the last member; then the namespace is deleted;
//! - **runc** (1 in 5): a real runc container (its own mount namespace and
//!   device cgroup, cgroup v1 here) with profile `soak`, mostly with
//!   `fast` too: the mounts and the preload are in its mount table, the
//!   grant is in its `devices.list` (and sometimes the device is opened
//!   inside); after `runc delete` its cgroup is gone.
//!
//! Every lifecycle checks what the kernel has against a shared registry of
//! live addresses (a duplicate fails at once) and the lease files, sends a
//! datagram to the peer now and then, kills the init before poststop (as
//! runtimes do), and checks its records, leases and MACs are gone after.
//! Three times during the run all workers stop at a "quiet point" with
//! their containers live and no hook running, and one of them compares the
//! whole state directory with the kernel: exactly the live addresses are
//! leased, exactly the live containers and namespaces have records, and
//! the parent's unicast list holds exactly the live links' MACs. At the
//! end everything is empty, and the host's mount table is as it was.
//!
//! Timing: 40 sequential prestart+poststop of a one-network container are
//! timed before the soak (reported) and, after it, 40 on the soaked state
//! directory alternated with 40 on a fresh one of the same config; the
//! soaked median must be within 1.2 times the fresh one (the hook's
//! `elapsed_us` from its log, setup plus teardown, and its wall time as the
//! test sees it). Alternating, rather than comparing with the runs before
//! the soak, keeps what else loads the machine out of the ratio: on a
//! 2-core CI machine the kernel is still destroying the soak's namespaces
//! for a while after it, and that alone once made the runs after 1.25
//! times slower than those before.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use common::direct::*;
use common::{files_under, hooked, ifaces_in, parent_macs, testbed, Iface};
use nsbypass_testbed::{mknod_char, Testbed};
use serde_json::{json, Value};

const LIFECYCLES: usize = 500;
const WORKERS: usize = 8;
/// Lifecycle indices (of every worker) at which all workers meet.
const QUIET_AT: [usize; 3] = [15, 30, 45];
const TIMING_RUNS: usize = 40;
/// Allowed growth of the hook's median time from before the soak to after.
const SLOWDOWN: f64 = 1.2;
const DEFAULT_SEED: u64 = 0x5eed_0009;

/// A network of the soak's config.
struct Net {
    name: &'static str,
    ifname: &'static str,
    /// The /24's first three octets for a pooled network, `None` for l2.
    prefix: Option<[u8; 3]>,
    range: (u8, u8),
    /// First address of worker 0's pin slice; worker `w` pins
    /// `.pins + 3w .. .pins + 3w + 2`.
    pins: u8,
}

const FAST: Net = Net {
    name: "fast",
    ifname: "nfast",
    prefix: Some([10, 77, 0]),
    range: (100, 227),
    pins: 200,
};
const SLOW: Net = Net {
    name: "slow",
    ifname: "nslow",
    prefix: Some([10, 78, 0]),
    range: (10, 137),
    pins: 100,
};
const L2: Net = Net {
    name: "l2",
    ifname: "nl2",
    prefix: None,
    range: (0, 0),
    pins: 0,
};
const NETS: [&Net; 3] = [&FAST, &SLOW, &L2];
const POOLED: [&Net; 2] = [&FAST, &SLOW];

impl Net {
    fn addr(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix.expect("a pooled network");
        Ipv4Addr::new(a, b, c, host)
    }

    fn in_range(&self, addr: Ipv4Addr) -> bool {
        let [a, b, c, d] = addr.octets();
        self.prefix == Some([a, b, c]) && (self.range.0..=self.range.1).contains(&d)
    }

    fn pin(&self, worker: usize, k: usize) -> Ipv4Addr {
        self.addr(self.pins + (3 * worker + k) as u8)
    }
}

/// xorshift64*: deterministic, no crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut rng = Rng(seed ^ (stream.wrapping_add(1)).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        if rng.0 == 0 {
            rng.0 = 1;
        }
        for _ in 0..4 {
            rng.next();
        }
        rng
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

#[derive(Default, Debug)]
struct Stats {
    lifecycles: usize,
    sleepers: usize,
    pinned: usize,
    refused: usize,
    collisions: usize,
    pods: usize,
    pod_members: usize,
    runc: usize,
    device_opens: usize,
    datagrams: usize,
    quiet_checks: usize,
}

/// A live network namespace as the registry knows it.
struct LiveNs {
    path: PathBuf,
    /// Containers in it whose setup is done and whose poststop has not run.
    ids: BTreeSet<String>,
    /// MACs of the links nsbypass made in it.
    macs: Vec<String>,
}

/// Workers meeting at a quiet point; a worker that panics releases the
/// others (they then fail too) instead of leaving them waiting.
struct Quiet {
    state: Mutex<(usize, u64)>,
    cv: Condvar,
    failed: AtomicBool,
}

impl Quiet {
    /// Waits for all workers; true for the one that arrived last.
    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = state.1;
        state.0 += 1;
        if state.0 == WORKERS {
            *state = (0, generation + 1);
            self.cv.notify_all();
            return true;
        }
        loop {
            let (guard, _) = self
                .cv
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            state = guard;
            if state.1 != generation {
                return false;
            }
            assert!(
                !self.failed.load(Ordering::SeqCst),
                "another worker failed (see its panic)"
            );
        }
    }
}

/// Marks the soak failed when a worker's thread unwinds.
struct FailGuard<'a>(&'a Quiet);

impl Drop for FailGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
            self.0.cv.notify_all();
        }
    }
}

struct Shared<'a> {
    tb: &'a Testbed,
    config: PathBuf,
    host: String,
    device: (u32, u32),
    /// Live addresses: (network, address) -> the label of the namespace.
    addrs: Mutex<HashMap<(&'static str, Ipv4Addr), String>>,
    /// Live namespaces by label.
    live: Mutex<BTreeMap<String, LiveNs>>,
    /// Each container's window, from the start of its prestart to the end
    /// of its poststop (`None` while open): a refused pin must name a
    /// container whose window overlapped the refused prestart.
    windows: Mutex<HashMap<String, (Instant, Option<Instant>)>>,
    /// The parent's unicast list before any container.
    parent_baseline: BTreeSet<String>,
    quiet: Quiet,
    stats: Mutex<Stats>,
}

impl Shared<'_> {
    fn open_window(&self, id: &str) {
        let old = self
            .windows
            .lock()
            .unwrap()
            .insert(id.to_owned(), (Instant::now(), None));
        assert!(old.is_none(), "container id {id} used twice");
    }

    fn close_window(&self, id: &str) {
        self.windows.lock().unwrap().get_mut(id).unwrap().1 = Some(Instant::now());
    }

    fn count(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.stats.lock().unwrap());
    }

    /// A quiet point: all workers meet with their containers live and no
    /// hook running; the last to arrive checks everything.
    fn pause(&self, worker: usize, at: usize) {
        if self.quiet.wait() {
            let started = Instant::now();
            full_check(self, &format!("quiet point at lifecycle {at}"));
            self.count(|s| s.quiet_checks += 1);
            println!(
                "soak: quiet point at lifecycle {at} (checked by worker {worker}): {} live namespaces, {} live addresses, checked in {:?}",
                self.live.lock().unwrap().len(),
                self.addrs.lock().unwrap().len(),
                started.elapsed()
            );
        }
        self.quiet.wait();
    }

    /// Records `label`'s addresses as live; panics on one live elsewhere.
    fn register(&self, label: &str, seen: &[(&'static str, Ipv4Addr)]) {
        let mut addrs = self.addrs.lock().unwrap();
        for &(net, addr) in seen {
            if let Some(other) = addrs.insert((net, addr), label.to_owned()) {
                panic!("{net} {addr} is live twice: in {other} and in {label}");
            }
        }
    }

    fn unregister(&self, seen: &[(&'static str, Ipv4Addr)]) {
        let mut addrs = self.addrs.lock().unwrap();
        for &(net, addr) in seen {
            addrs.remove(&(net, addr)).expect("a registered address");
        }
    }
}

fn config_text(tb: &Testbed, state: &Path, device: &Path, library: &Path) -> String {
    let mut text = format!(
        "state_dir = \"{state}\"\n[log]\nfile = \"{dir}/nsbypass.log\"\nlevel = \"info\"\n",
        state = state.display(),
        dir = tb.dir.display(),
    );
    assert_eq!(
        FAST.addr(0).to_string() + "/24",
        tb.subnet,
        "fast is the wire's subnet"
    );
    for net in NETS {
        text += &format!(
            "\n[networks.{}]\nparent = \"{}\"\nifname = \"{}\"\n",
            net.name, tb.parent, net.ifname
        );
        if net.prefix.is_some() {
            text += &format!(
                "subnet = \"{}/24\"\nrange = \"{}-{}\"\n",
                net.addr(0),
                net.addr(net.range.0),
                net.addr(net.range.1)
            );
        }
        if net.name == FAST.name {
            text += &format!(
                "gateway = \"{}\"\nroutes = [\"10.20.0.0/16\"]\n",
                tb.peer_ip
            );
        }
    }
    text += &format!(
        "\n[profiles.soak]\ndevices = [{{ source = \"{}\", target = \"/dev/nsbsoak\" }}]\n\
         mounts = [{{ source = \"{}\", target = \"/usr/lib/nsbypass/libsoak.so\" }}]\n\
         preload = [\"/usr/lib/nsbypass/libsoak.so\"]\n",
        device.display(),
        library.display()
    );
    text
}

/// Writes `<dir>/direct/<id>/config.json` asking for `nets` (and `pins`),
/// in `netns` if given (a pod's).
fn write_bundle(
    tb: &Testbed,
    id: &str,
    nets: &[&Net],
    pins: &[(&'static str, Ipv4Addr)],
    netns: Option<&Path>,
) -> PathBuf {
    let names: Vec<&str> = nets.iter().map(|n| n.name).collect();
    let mut notes = serde_json::Map::new();
    notes.insert("nsbypass.io/network".into(), names.join(",").into());
    if !pins.is_empty() {
        let pins: Vec<String> = pins.iter().map(|(n, a)| format!("{n}={a}")).collect();
        notes.insert("nsbypass.io/ip".into(), pins.join(",").into());
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "annotations": notes,
    });
    if let Some(path) = netns {
        spec["linux"] = json!({"namespaces": [{"type": "network", "path": path}]});
    }
    let dir = tb.dir.join("direct").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir
}

/// What nsbypass made in one namespace.
struct Wired {
    addrs: Vec<(&'static str, Ipv4Addr)>,
    macs: Vec<String>,
}

/// Checks the namespace at `netns` has exactly the links of `nets`, up,
/// each pooled one with one address in its range (the pinned one if
/// pinned), each leased to this host and this namespace.
fn observe(
    sh: &Shared,
    label: &str,
    netns: &Path,
    nets: &[&Net],
    pins: &[(&'static str, Ipv4Addr)],
) -> Wired {
    let ifaces = ifaces_in(netns);
    let macvlans: BTreeMap<&str, &Iface> = ifaces
        .iter()
        .filter(|i| i.kind == "macvlan")
        .map(|i| (i.name.as_str(), i))
        .collect();
    let want: BTreeSet<&str> = nets.iter().map(|n| n.ifname).collect();
    assert_eq!(
        macvlans.keys().copied().collect::<BTreeSet<_>>(),
        want,
        "{label}: the MACVLANs in its namespace: {ifaces:?}"
    );
    let key = netns_key(netns);
    let mut wired = Wired {
        addrs: Vec::new(),
        macs: Vec::new(),
    };
    for net in nets {
        let link = macvlans[net.ifname];
        assert!(link.up, "{label}: {} is down: {link:?}", net.ifname);
        wired.macs.push(link.mac.clone());
        if net.prefix.is_none() {
            assert!(
                link.ipv4.is_empty(),
                "{label}: l2 with an address: {link:?}"
            );
            continue;
        }
        assert_eq!(link.ipv4.len(), 1, "{label}: {link:?}");
        let (addr, prefix) = link.ipv4[0].split_once('/').unwrap();
        let addr: Ipv4Addr = addr.parse().unwrap();
        assert_eq!(prefix, "24", "{label}: {link:?}");
        assert!(
            net.in_range(addr),
            "{label}: {addr} outside {}'s range",
            net.name
        );
        if let Some((_, pin)) = pins.iter().find(|(n, _)| *n == net.name) {
            assert_eq!(addr, *pin, "{label}: the pinned address");
        }
        let lease = leases_of(sh.tb, net.name)
            .remove(&addr)
            .unwrap_or_else(|| panic!("{label}: {} {addr} is live without a lease", net.name));
        assert_eq!(
            (lease["host"].as_str(), lease["netns"].as_str()),
            (Some(sh.host.as_str()), Some(key.as_str())),
            "{label}: the lease of {addr} names another holder: {lease}"
        );
        wired.addrs.push((net.name, addr));
    }
    wired
}

/// After a container (or a pod's last member) is gone: no record, no
/// lease naming any of `ids` but those of a namespace left to drain (see
/// [`common::direct::assert_state_empty`]), and every MAC off the parent.
fn assert_released(sh: &Shared, ids: &[String], macs: &[String]) {
    for id in ids {
        let record = sh
            .tb
            .state_dir()
            .join("containers")
            .join(format!("{id}.json"));
        assert!(!record.exists(), "{id}'s record outlived its poststop");
    }
    for net in POOLED {
        for (addr, lease) in leases_of(sh.tb, net.name) {
            let holder = lease["container"].as_str().unwrap_or_default();
            let key = lease["netns"].as_str().unwrap_or_default();
            let drains = sh
                .tb
                .state_dir()
                .join("draining")
                .join(format!("{key}.json"))
                .exists();
            assert!(
                !ids.iter().any(|id| id == holder) || drains,
                "{} {addr} is still leased to {holder} after its poststop: {lease}",
                net.name
            );
        }
    }
    for mac in macs {
        common::assert_mac_leaves_parent(sh.tb, mac);
    }
}

fn remove_bundle(tb: &Testbed, id: &str) {
    let _ = std::fs::remove_dir_all(tb.dir.join("direct").join(id));
}

/// Sends a datagram from the namespace's `fast` address to the peer and
/// checks it arrives from that address.
fn datagram(sh: &Shared, peer: &UdpSocket, netns: &Path, from: Ipv4Addr, label: &str) {
    let port = peer.local_addr().unwrap().port();
    let payload = format!("soak {label}");
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "bash", "-c"])
        .arg(format!(
            "echo -n '{payload}' > /dev/udp/{}/{port}",
            sh.tb.peer_ip
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{label}: sending: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 128];
    loop {
        let (n, src) = peer
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{label}: no datagram at the peer: {e}"));
        if buf[..n] == *payload.as_bytes() {
            assert_eq!(src.ip(), from, "{label}: the datagram's source");
            break;
        }
    }
    sh.count(|s| s.datagrams += 1);
}

/// Every live container and namespace against the state directory and the
/// parent; called with no hook running, once what poststops left to drain
/// is swept.
fn full_check(sh: &Shared, when: &str) {
    common::direct::sweep_drained(sh.tb, when);
    let live = sh.live.lock().unwrap();
    let registered = sh.addrs.lock().unwrap();
    // The kernel, namespace by namespace, against the lease files.
    let mut keys = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let mut macs: BTreeSet<String> = sh.parent_baseline.clone();
    let mut kernel: BTreeMap<(&str, Ipv4Addr), String> = BTreeMap::new();
    for (label, ns) in live.iter() {
        let key = netns_key(&ns.path);
        assert!(keys.insert(key.clone()), "{when}: {label} listed twice");
        ids.extend(ns.ids.iter().map(|id| format!("{id}.json")));
        macs.extend(ns.macs.iter().cloned());
        for iface in ifaces_in(&ns.path)
            .into_iter()
            .filter(|i| i.kind == "macvlan")
        {
            let Some(net) = NETS.iter().find(|n| n.ifname == iface.name) else {
                panic!("{when}: a MACVLAN nsbypass did not name in {label}: {iface:?}")
            };
            for a in &iface.ipv4 {
                let addr: Ipv4Addr = a.split('/').next().unwrap().parse().unwrap();
                if let Some(other) = kernel.insert((net.name, addr), label.clone()) {
                    panic!(
                        "{when}: {} {addr} is live in {other} and in {label}",
                        net.name
                    );
                }
            }
        }
    }
    let leased: BTreeMap<(&str, Ipv4Addr), Value> = POOLED
        .iter()
        .flat_map(|n| {
            leases_of(sh.tb, n.name)
                .into_iter()
                .map(move |(a, l)| ((n.name, a), l))
        })
        .collect();
    for ((net, addr), label) in &kernel {
        let lease = leased
            .get(&(*net, *addr))
            .unwrap_or_else(|| panic!("{when}: {net} {addr} is live in {label} without a lease"));
        let key = netns_key(&live[label].path);
        assert_eq!(
            (lease["host"].as_str(), lease["netns"].as_str()),
            (Some(sh.host.as_str()), Some(key.as_str())),
            "{when}: the lease of {net} {addr} (live in {label}) names another holder"
        );
        assert_eq!(
            registered.get(&(*net, *addr)),
            Some(label),
            "{when}: the registry disagrees about {net} {addr}"
        );
    }
    let leaked: Vec<_> = leased.keys().filter(|k| !kernel.contains_key(*k)).collect();
    assert!(
        leaked.is_empty(),
        "{when}: leases no live namespace holds: {leaked:?}"
    );
    assert_eq!(registered.len(), kernel.len(), "{when}: registry vs kernel");
    let l2 = files_under(&sh.tb.state_dir().join("leases").join(L2.name));
    assert!(l2.is_empty(), "{when}: leases on l2: {l2:?}");
    // Records: exactly the live containers and namespaces.
    let keys: BTreeSet<String> = keys.into_iter().map(|k| format!("{k}.json")).collect();
    assert_eq!(
        state_files(sh.tb, "containers")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        ids,
        "{when}: container records"
    );
    assert_eq!(
        state_files(sh.tb, "netns")
            .into_iter()
            .collect::<BTreeSet<_>>(),
        keys,
        "{when}: namespace records"
    );
    for sub in ["tmp", "shims"] {
        let files = state_files(sh.tb, sub);
        assert!(files.is_empty(), "{when}: {sub}/ holds {files:?}");
    }
    // The parent's unicast list: exactly the live links (a dying
    // namespace's may linger some milliseconds). Its multicast entries
    // follow the live links' IPv6 link-local addresses (solicited-node
    // groups): the end of the soak compares those with the start.
    let macs: BTreeSet<String> = macs.into_iter().filter(|m| unicast(m)).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now: BTreeSet<String> = parent_macs(sh.tb)
            .into_iter()
            .filter(|m| unicast(m))
            .collect();
        if now == macs {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: the parent's unicast list {now:?}, the live links' and its own {macs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `mac` (`aa:bb:...`) is a unicast address (group bit clear).
fn unicast(mac: &str) -> bool {
    u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 0)
}

/// The pooled networks of `nets` that get a pin this time, from the
/// worker's slices.
fn draw_pins(rng: &mut Rng, worker: usize, nets: &[&Net]) -> Vec<(&'static str, Ipv4Addr)> {
    let mut pins = Vec::new();
    for net in nets.iter().filter(|n| n.prefix.is_some()) {
        if rng.chance(35) {
            pins.push((net.name, net.pin(worker, rng.below(3))));
        }
    }
    pins
}

/// A pin refused because the pool had handed that address to another
/// container: the line must name one whose window overlapped the prestart.
fn accept_collision(
    sh: &Shared,
    id: &str,
    run: &HookResult,
    started: Instant,
    ended: Instant,
    pins: &[(&'static str, Ipv4Addr)],
) -> bool {
    let line = run.error_line();
    for (net, addr) in pins {
        for step in ["validate", "lease address"] {
            let head = format!(
                "nsbypass: hook prestart: container {id}: network {net}: {step}: {addr} is taken by container "
            );
            if let Some(holder) = line.strip_prefix(&head) {
                let window = sh.windows.lock().unwrap().get(holder).copied();
                let (from, to) = window.unwrap_or_else(|| {
                    panic!("{id}: refused for {holder}, no container of the soak")
                });
                assert!(
                    holder != id && from <= ended && to.is_none_or(|t| t >= started),
                    "{id}: refused for {holder}, which was not live then: {line}"
                );
                return true;
            }
        }
    }
    false
}

/// A sleeper in a netns of its own, on some networks, maybe pinned.
fn sleeper_life(sh: &Shared, rng: &mut Rng, w: usize, i: usize, quiet: bool, peer: &UdpSocket) {
    let id = format!("s{w}-{i}");
    let mask = 1 + rng.below(7);
    let nets: Vec<&Net> = (0..3)
        .filter(|b| mask & (1 << b) != 0)
        .map(|b| NETS[b])
        .collect();
    let pins = draw_pins(rng, w, &nets);
    let init = Sleeper::own_netns(sh.tb);
    let bundle = write_bundle(sh.tb, &id, &nets, &pins, None);
    sh.open_window(&id);
    let started = Instant::now();
    let run = HookRun::prestart(sh.tb, &sh.config, &id, init.pid, &bundle).run();
    let ended = Instant::now();
    if !run.success() {
        assert!(
            accept_collision(sh, &id, &run, started, ended, &pins),
            "{id}: prestart failed: {run:?}"
        );
        // Refused: nothing made, nothing recorded; poststop is a no-op.
        assert_eq!(links_in(&init.netns()), ["lo"], "{id}: refused but wired");
        init.kill();
        HookRun::poststop(sh.tb, &sh.config, &id, &bundle)
            .run()
            .assert_ok();
        sh.close_window(&id);
        assert_released(sh, std::slice::from_ref(&id), &[]);
        remove_bundle(sh.tb, &id);
        sh.count(|s| s.collisions += 1);
        if quiet {
            sh.pause(w, i);
        }
        return;
    }
    run.assert_ok();
    let wired = observe(sh, &id, &init.netns(), &nets, &pins);
    sh.register(&id, &wired.addrs);
    sh.live.lock().unwrap().insert(
        id.clone(),
        LiveNs {
            path: init.netns(),
            ids: BTreeSet::from([id.clone()]),
            macs: wired.macs.clone(),
        },
    );
    if let Some(&(_, addr)) = wired.addrs.iter().find(|(n, _)| *n == FAST.name) {
        if rng.chance(30) {
            datagram(sh, peer, &init.netns(), addr, &id);
        }
    }
    if quiet {
        sh.pause(w, i);
    }
    sh.live.lock().unwrap().remove(&id);
    sh.unregister(&wired.addrs);
    init.kill();
    HookRun::poststop(sh.tb, &sh.config, &id, &bundle)
        .run()
        .assert_ok();
    sh.close_window(&id);
    assert_released(sh, std::slice::from_ref(&id), &wired.macs);
    remove_bundle(sh.tb, &id);
    sh.count(|s| {
        s.sleepers += 1;
        s.pinned += usize::from(!pins.is_empty());
    });
}

/// A holder with a pooled address, and a second container pinning it.
fn refused_life(sh: &Shared, rng: &mut Rng, w: usize, i: usize, quiet: bool) {
    let hid = format!("q{w}-{i}h");
    let rid = format!("q{w}-{i}r");
    let nets: Vec<&Net> = if rng.chance(50) {
        vec![&FAST]
    } else {
        vec![&FAST, &SLOW]
    };
    let holder = Sleeper::own_netns(sh.tb);
    let hbundle = write_bundle(sh.tb, &hid, &nets, &[], None);
    sh.open_window(&hid);
    HookRun::prestart(sh.tb, &sh.config, &hid, holder.pid, &hbundle)
        .run()
        .assert_ok();
    let wired = observe(sh, &hid, &holder.netns(), &nets, &[]);
    sh.register(&hid, &wired.addrs);
    sh.live.lock().unwrap().insert(
        hid.clone(),
        LiveNs {
            path: holder.netns(),
            ids: BTreeSet::from([hid.clone()]),
            macs: wired.macs.clone(),
        },
    );
    let (net, taken) = wired.addrs[rng.below(wired.addrs.len())];
    let pins = [(net, taken)];
    let refused = Sleeper::own_netns(sh.tb);
    let rbundle = write_bundle(sh.tb, &rid, &nets, &pins, None);
    sh.open_window(&rid);
    let run = HookRun::prestart(sh.tb, &sh.config, &rid, refused.pid, &rbundle).run();
    assert_eq!(
        run.error_line(),
        format!(
            "nsbypass: hook prestart: container {rid}: network {net}: validate: {taken} is taken by container {hid}"
        )
    );
    assert_eq!(
        links_in(&refused.netns()),
        ["lo"],
        "{rid}: refused but wired"
    );
    assert!(
        !sh.tb
            .state_dir()
            .join("containers")
            .join(format!("{rid}.json"))
            .exists(),
        "{rid}: refused but recorded"
    );
    // The runtime's poststop after the failed prestart leaves the holder be.
    refused.kill();
    HookRun::poststop(sh.tb, &sh.config, &rid, &rbundle)
        .run()
        .assert_ok();
    sh.close_window(&rid);
    assert_released(sh, std::slice::from_ref(&rid), &[]);
    let again = observe(sh, &hid, &holder.netns(), &nets, &wired.addrs);
    assert_eq!(again.addrs, wired.addrs, "{hid} after {rid}'s refusal");
    remove_bundle(sh.tb, &rid);
    if quiet {
        sh.pause(w, i);
    }
    sh.live.lock().unwrap().remove(&hid);
    sh.unregister(&wired.addrs);
    holder.kill();
    HookRun::poststop(sh.tb, &sh.config, &hid, &hbundle)
        .run()
        .assert_ok();
    sh.close_window(&hid);
    assert_released(sh, std::slice::from_ref(&hid), &wired.macs);
    remove_bundle(sh.tb, &hid);
    sh.count(|s| s.refused += 1);
}

/// A pinned namespace with 2 or 3 members, joining and leaving interleaved.
fn pod_life(sh: &Shared, rng: &mut Rng, w: usize, i: usize, quiet: bool, peer: &UdpSocket) {
    let label = format!("pod{w}-{i}");
    let nets: Vec<&Net> = if rng.chance(50) {
        vec![&FAST]
    } else {
        vec![&FAST, &L2]
    };
    let size = 2 + rng.below(2);
    // With three members, sometimes the first leaves before the third joins.
    let early_leave = size == 3 && rng.chance(50);
    let pod = PinnedNetns::new(sh.tb, &format!("p{w}x{i}"));
    let mut members: Vec<(String, Sleeper, PathBuf)> = Vec::new();
    let mut wired: Option<Wired> = None;
    let mut all_ids = Vec::new();

    let join =
        |k: usize, members: &mut Vec<(String, Sleeper, PathBuf)>, wired: &mut Option<Wired>| {
            let id = format!("m{w}-{i}-{k}");
            let init = Sleeper::in_netns(&pod.path);
            let bundle = write_bundle(sh.tb, &id, &nets, &[], Some(&pod.path));
            sh.open_window(&id);
            HookRun::prestart(sh.tb, &sh.config, &id, init.pid, &bundle)
                .run()
                .assert_ok();
            let seen = observe(sh, &id, &pod.path, &nets, &[]);
            match wired {
                None => {
                    sh.register(&label, &seen.addrs);
                    sh.live.lock().unwrap().insert(
                        label.clone(),
                        LiveNs {
                            path: pod.path.clone(),
                            ids: BTreeSet::from([id.clone()]),
                            macs: seen.macs.clone(),
                        },
                    );
                    *wired = Some(seen);
                }
                Some(first) => {
                    assert_eq!(
                        (&seen.addrs, &seen.macs),
                        (&first.addrs, &first.macs),
                        "{id} joined {label}: one link per network, shared"
                    );
                    sh.live
                        .lock()
                        .unwrap()
                        .get_mut(&label)
                        .unwrap()
                        .ids
                        .insert(id.clone());
                }
            }
            members.push((id, init, bundle));
        };
    let leave = |member: (String, Sleeper, PathBuf), last: bool, wired: &Wired| {
        let (id, init, bundle) = member;
        if last {
            sh.live.lock().unwrap().remove(&label);
            sh.unregister(&wired.addrs);
        } else {
            sh.live
                .lock()
                .unwrap()
                .get_mut(&label)
                .unwrap()
                .ids
                .remove(&id);
        }
        init.kill();
        HookRun::poststop(sh.tb, &sh.config, &id, &bundle)
            .run()
            .assert_ok();
        remove_bundle(sh.tb, &id);
        if !last {
            // The others still use the link and its address.
            let seen = observe(sh, &label, &pod.path, &nets, &[]);
            assert_eq!(
                (&seen.addrs, &seen.macs),
                (&wired.addrs, &wired.macs),
                "{label} after {id} left"
            );
        }
    };

    for k in 0..size {
        if early_leave && k == 2 {
            let first = members.remove(0);
            leave(first, false, wired.as_ref().unwrap());
        }
        join(k, &mut members, &mut wired);
        all_ids.push(format!("m{w}-{i}-{k}"));
    }
    let wired = wired.unwrap();
    if rng.chance(30) {
        datagram(sh, peer, &pod.path, wired.addrs[0].1, &label);
    }
    if quiet {
        sh.pause(w, i);
    }
    while !members.is_empty() {
        let member = members.remove(rng.below(members.len()));
        leave(member, members.is_empty(), &wired);
    }
    // A pod's lease names the member whose setup made the link for as long
    // as the namespace holds it, also once that member is gone: a pin
    // refused meanwhile names that member. So members' windows close with
    // the pod's last member.
    for id in &all_ids {
        sh.close_window(id);
    }
    // The last member took the links out of the still pinned namespace.
    assert_eq!(links_in(&pod.path), ["lo"], "{label} after its last member");
    assert_released(sh, &all_ids, &wired.macs);
    assert!(
        !sh.tb
            .state_dir()
            .join("netns")
            .join(format!("{}.json", pod.key()))
            .exists(),
        "{label}: namespace record outlived its last member"
    );
    pod.delete();
    sh.count(|s| {
        s.pods += 1;
        s.pod_members += size;
    });
}

/// The devices cgroup (v1) of process `pid`, as a path under /sys/fs/cgroup/devices.
fn devices_cgroup(pid: u32) -> PathBuf {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroup
        .lines()
        .find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_owned()))
        .unwrap_or_else(|| panic!("no devices cgroup in {cgroup}"));
    PathBuf::from(format!("/sys/fs/cgroup/devices{path}"))
}

/// A real runc container with profile `soak`, mostly on `fast` too.
fn runc_life(sh: &Shared, rng: &mut Rng, w: usize, i: usize, quiet: bool) {
    let id = format!("r{w}-{i}");
    let with_net = rng.chance(70);
    let mut builder = hooked(sh.tb, &sh.config, &id).annotation("nsbypass.io/profile", "soak");
    if with_net {
        builder = builder.annotation("nsbypass.io/network", FAST.name);
    }
    sh.open_window(&id);
    let c = builder.create().unwrap_or_else(|e| panic!("{id}: {e:#}"));
    // The profile: two read-only binds and the preload in its mount table.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid)).unwrap();
    for (target, options) in [
        ("/usr/lib/nsbypass/libsoak.so", "ro,nosuid,nodev"),
        ("/etc/ld.so.preload", "ro,nosuid,nodev"),
        ("/dev/nsbsoak", "ro,nosuid,noexec"),
    ] {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(target))
            .unwrap_or_else(|| panic!("{id}: {target} is not mounted: {mounts}"));
        let got = line.split(' ').nth(5).unwrap();
        assert!(got.starts_with(options), "{id}: {target} is {got}");
        assert!(!line.contains("shared:"), "{id}: propagates: {line}");
    }
    let preload =
        std::fs::read_to_string(format!("/proc/{}/root/etc/ld.so.preload", c.pid)).unwrap();
    assert_eq!(preload, "/usr/lib/nsbypass/libsoak.so\n", "{id}: preload");
    // The grant, exactly once.
    let cgroup = devices_cgroup(c.pid);
    let list = std::fs::read_to_string(cgroup.join("devices.list")).unwrap();
    let rule = format!("c {}:{} ", sh.device.0, sh.device.1);
    assert_eq!(
        list.lines().filter(|l| l.starts_with(&rule)).count(),
        1,
        "{id}: devices.list: {list}"
    );
    if rng.chance(40) {
        c.exec_ok(&["sh", "-c", "exec 3<>/dev/nsbsoak"])
            .unwrap_or_else(|e| panic!("{id}: opening the granted device: {e:#}"));
        sh.count(|s| s.device_opens += 1);
    }
    let netns = PathBuf::from(format!("/proc/{}/ns/net", c.pid));
    let wired = if with_net {
        let wired = observe(sh, &id, &netns, &[&FAST], &[]);
        sh.register(&id, &wired.addrs);
        sh.live.lock().unwrap().insert(
            id.clone(),
            LiveNs {
                path: netns,
                ids: BTreeSet::from([id.clone()]),
                macs: wired.macs.clone(),
            },
        );
        Some(wired)
    } else {
        None
    };
    // A quiet point compares records with live namespaces: one without a
    // network meets the others after its delete instead.
    if quiet && wired.is_some() {
        sh.pause(w, i);
    }
    if let Some(wired) = &wired {
        sh.live.lock().unwrap().remove(&id);
        sh.unregister(&wired.addrs);
    }
    let out = c.kill_and_delete().expect("runc delete");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("level=error"),
        "{id}: runc delete: {stderr}"
    );
    sh.close_window(&id);
    assert!(
        !cgroup.exists(),
        "{id}: its cgroup {} outlived it",
        cgroup.display()
    );
    let macs = wired.map(|w| w.macs).unwrap_or_default();
    assert_released(sh, std::slice::from_ref(&id), &macs);
    if quiet && macs.is_empty() {
        sh.pause(w, i);
    }
    sh.count(|s| s.runc += 1);
}

fn worker(sh: &Shared, seed: u64, w: usize) {
    let _guard = FailGuard(&sh.quiet);
    let mut rng = Rng::new(seed, w as u64);
    let peer = sh.tb.peer_udp(9100 + w as u16).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let share = LIFECYCLES / WORKERS + usize::from(w < LIFECYCLES % WORKERS);
    for i in 0..share {
        let quiet = QUIET_AT.contains(&i);
        match rng.below(100) {
            0..=19 => runc_life(sh, &mut rng, w, i, quiet),
            20..=29 => pod_life(sh, &mut rng, w, i, quiet, &peer),
            30..=37 => refused_life(sh, &mut rng, w, i, quiet),
            _ => sleeper_life(sh, &mut rng, w, i, quiet, &peer),
        }
        sh.count(|s| s.lifecycles += 1);
    }
}

/// The hook's wall times as the test sees them, and the in-process
/// `elapsed_us` it logs, for sequential prestart+poststop of a one-network
/// container.
#[derive(Default)]
struct Timing {
    wall_us: Vec<u64>,
    logged_us: Vec<u64>,
}

/// One prestart+poststop of container `id` under `config`; returns its wall
/// time as the test sees it.
fn time_one(sh: &Shared, config: &Path, id: &str) -> u64 {
    let init = Sleeper::own_netns(sh.tb);
    let bundle = write_bundle(sh.tb, id, &[&FAST], &[], None);
    let pre = HookRun::prestart(sh.tb, config, id, init.pid, &bundle).run();
    pre.assert_ok();
    let macs: Vec<String> = ifaces_in(&init.netns())
        .into_iter()
        .filter(|i| i.kind == "macvlan")
        .map(|i| i.mac)
        .collect();
    assert_eq!(macs.len(), 1, "{id}: one MACVLAN in its namespace");
    // The namespace is gone before poststop (its link off the parent), so
    // that poststop times the hook's own work, not the kernel's destruction
    // of the namespace, which it would wait for: that takes some tens of
    // milliseconds on a workqueue the whole machine shares, and varies with
    // what else runs.
    init.kill();
    common::assert_mac_leaves_parent(sh.tb, &macs[0]);
    let post = HookRun::poststop(sh.tb, config, id, &bundle).run();
    post.assert_ok();
    remove_bundle(sh.tb, id);
    (pre.elapsed + post.elapsed).as_micros() as u64
}

/// The hook's own figures for `ids`, from its log: setup done + teardown
/// done.
fn logged_us(sh: &Shared, ids: &[String]) -> Vec<u64> {
    let log = std::fs::read_to_string(sh.tb.dir.join("nsbypass.log")).unwrap();
    let mut logged: HashMap<String, u64> = HashMap::new();
    let mut lines: HashMap<String, usize> = HashMap::new();
    for line in log.lines() {
        if !line.contains("setup done") && !line.contains("teardown done") {
            continue;
        }
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(name))
                .map(str::to_owned)
        };
        let (Some(id), Some(us)) = (field("container="), field("elapsed_us=")) else {
            continue;
        };
        if std::env::var_os("NSBYPASS_SOAK_TRACE").is_some() {
            println!(
                "soak: timing {id}: {}",
                &line[line.find("done").unwrap_or(0)..]
            );
        }
        *logged.entry(id.clone()).or_default() += us.parse::<u64>().unwrap();
        *lines.entry(id).or_default() += 1;
    }
    ids.iter()
        .map(|id| {
            assert_eq!(
                lines.get(id),
                Some(&2),
                "{id}: setup and teardown lines in the log"
            );
            logged[id]
        })
        .collect()
}

/// `TIMING_RUNS` lifecycles under each of `configs`, alternated run by run,
/// so that whatever else loads the machine meanwhile weighs on each alike.
fn timing(sh: &Shared, configs: &[&Path], phase: &str) -> Vec<Timing> {
    let mut ids = vec![Vec::new(); configs.len()];
    let mut out: Vec<Timing> = configs.iter().map(|_| Timing::default()).collect();
    for i in 0..TIMING_RUNS {
        for (c, config) in configs.iter().enumerate() {
            let id = format!("t{phase}{c}-{i}");
            out[c].wall_us.push(time_one(sh, config, &id));
            ids[c].push(id);
        }
    }
    for (t, ids) in out.iter_mut().zip(&ids) {
        t.logged_us = logged_us(sh, ids);
    }
    out
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v[v.len() / 2]
}

/// This process's mount table, without the mounts other users of the
/// machine (other testbeds, engines) make and remove meanwhile.
fn host_mounts(tb: &Testbed) -> BTreeSet<String> {
    let mine = format!("/run/netns/{}-", tb.tag);
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            let point = l.split(' ').nth(4).unwrap_or_default();
            let foreign_netns = point.starts_with("/run/netns/") && !point.starts_with(&mine);
            let foreign_testbed =
                point.contains("nsbypass-testbed-") && !point.starts_with(tb.dir.to_str().unwrap());
            // scripts/bench.py's podman runs, if one runs meanwhile.
            let bench = point.contains("/nsbypass-bench-");
            let engines = [
                "/run/containerd",
                "/run/docker",
                "/var/lib/docker",
                "/var/lib/containers",
                "/run/containers",
                "/run/user",
            ]
            .iter()
            .any(|p| point.starts_with(p));
            !(foreign_netns || foreign_testbed || bench || engines)
        })
        .map(str::to_owned)
        .collect()
}

/// The MACVLANs in the testbed's host namespace (there should be none:
/// `host_shim` is off).
fn host_macvlans(tb: &Testbed) -> Vec<String> {
    let out = tb.in_host_ok(&["ip", "-d", "-j", "link", "show"]).unwrap();
    let links: Vec<Value> = serde_json::from_str(&out).unwrap();
    links
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "macvlan")
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn five_hundred_lifecycles_by_eight_workers_leak_nothing_and_stay_fast() {
    let Some(tb) = testbed() else { return };
    assert!(!tb.cgroup2(), "the runc lifecycles check v1 device grants");
    let seed = std::env::var("NSBYPASS_SOAK_SEED")
        .ok()
        .map(|s| s.parse().expect("NSBYPASS_SOAK_SEED is a number"))
        .unwrap_or(DEFAULT_SEED);
    println!("soak: seed {seed} (NSBYPASS_SOAK_SEED=N to change)");
    let soak_start = Instant::now();

    let rdev = std::fs::metadata("/dev/fuse").expect("/dev/fuse").rdev();
    let device = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    let node = tb.dir.join("dev-nsbsoak");
    mknod_char(&node, device.0, device.1).unwrap();
    let library = tb
        .build_c("libsoak", "int nsbypass_soak_marker = 9;\n", true)
        .unwrap();
    let config = tb
        .write_config(&config_text(&tb, &tb.state_dir(), &node, &library))
        .unwrap();
    // The same networks and profile on a state directory of their own,
    // which the soak never touches: the yardstick after the soak.
    let fresh = tb.dir.join("config-fresh.toml");
    let fresh_state = tb.dir.join("state-fresh");
    std::fs::write(&fresh, config_text(&tb, &fresh_state, &node, &library)).unwrap();

    let mounts_before = host_mounts(&tb);
    let sh = Shared {
        tb: &tb,
        config,
        host: machine_id(),
        device,
        addrs: Mutex::new(HashMap::new()),
        live: Mutex::new(BTreeMap::new()),
        windows: Mutex::new(HashMap::new()),
        parent_baseline: parent_macs(&tb).into_iter().collect(),
        quiet: Quiet {
            state: Mutex::new((0, 0)),
            cv: Condvar::new(),
            failed: AtomicBool::new(false),
        },
        stats: Mutex::new(Stats::default()),
    };

    let [before]: [Timing; 1] = timing(&sh, &[&sh.config], "a").try_into().ok().unwrap();
    full_check(&sh, "after the first timing run");

    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let sh = &sh;
                s.spawn(move || worker(sh, seed, w))
            })
            .collect();
        let mut failed = 0;
        for h in workers {
            failed += usize::from(h.join().is_err());
        }
        assert_eq!(failed, 0, "{failed} workers failed");
    });
    let soak_time = started.elapsed();

    // Nothing left: leases, records, links, MACs, mounts, grants.
    assert!(sh.live.lock().unwrap().is_empty());
    full_check(&sh, "after the soak");
    assert_state_empty(&tb, "after the soak");
    let leases = files_under(&tb.state_dir().join("leases"));
    assert!(leases.is_empty(), "leases left: {leases:?}");
    assert_eq!(
        host_macvlans(&tb),
        Vec::<String>::new(),
        "MACVLANs in the host namespace"
    );
    common::eventually("the parent's address lists as at the start", || {
        parent_macs(&tb).into_iter().collect::<BTreeSet<_>>() == sh.parent_baseline
    });
    let pins: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", tb.tag)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        pins,
        [tb.host_ns.clone(), tb.peer_ns.clone()],
        "pinned namespaces left"
    );
    assert_eq!(
        tb.runc_list().unwrap(),
        Vec::<String>::new(),
        "runc containers left"
    );
    let cgroups: Vec<String> = std::fs::read_dir("/sys/fs/cgroup/devices")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("{}-", tb.tag)))
        .collect();
    assert!(cgroups.is_empty(), "device cgroups left: {cgroups:?}");
    let mounts_after = host_mounts(&tb);
    let added: Vec<_> = mounts_after.difference(&mounts_before).collect();
    let removed: Vec<_> = mounts_before.difference(&mounts_after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the host's mount table changed:\nadded {added:#?}\nremoved {removed:#?}"
    );

    // The soaked state directory against a fresh one, alternated run by
    // run: a slowdown the soak left behind (state that grew, leftovers read
    // at every run) shows in the soaked runs only, while what else loads
    // these 2 cores (other builds, the kernel still destroying the soak's
    // namespaces and holding RTNL meanwhile) weighs on both alike. A median
    // over the limit is measured again, at most twice more.
    let within = |fresh: &Timing, soaked: &Timing| {
        let ok = |a: u64, b: u64| b as f64 <= SLOWDOWN * a as f64;
        ok(median(&fresh.logged_us), median(&soaked.logged_us))
            && ok(median(&fresh.wall_us), median(&soaked.wall_us))
    };
    let paired = |phase: &str| -> (Timing, Timing) {
        let [soaked, fresh]: [Timing; 2] = timing(&sh, &[&sh.config, &fresh], phase)
            .try_into()
            .ok()
            .unwrap();
        (fresh, soaked)
    };
    let (mut fresh_t, mut after) = paired("b");
    for again in 1..=2 {
        if within(&fresh_t, &after) {
            break;
        }
        println!(
            "soak: medians after the soak {} us logged, {} us wall, against {} and {} on a fresh state directory: over {SLOWDOWN}x, measuring again",
            median(&after.logged_us),
            median(&after.wall_us),
            median(&fresh_t.logged_us),
            median(&fresh_t.wall_us)
        );
        (fresh_t, after) = paired(&format!("b{again}"));
    }
    assert_state_empty(&tb, "after the second timing run");
    let fresh_leases = files_under(&fresh_state.join("leases"));
    assert!(
        fresh_leases.is_empty(),
        "leases left in the fresh state directory: {fresh_leases:?}"
    );

    let stats = sh.stats.lock().unwrap();
    let (wall_a, wall_b) = (median(&fresh_t.wall_us), median(&after.wall_us));
    let (log_a, log_b) = (median(&fresh_t.logged_us), median(&after.logged_us));
    println!(
        "soak: {} lifecycles by {WORKERS} workers in {:.1?} ({} sleepers of which {} pinned, {} pin collisions, {} refused pins, {} pods with {} members, {} runc containers with {} device opens, {} datagrams, {} quiet checks); whole test {:.1?}",
        stats.lifecycles,
        soak_time,
        stats.sleepers,
        stats.pinned,
        stats.collisions,
        stats.refused,
        stats.pods,
        stats.pod_members,
        stats.runc,
        stats.device_opens,
        stats.datagrams,
        stats.quiet_checks,
        soak_start.elapsed(),
    );
    println!(
        "soak: medians of {TIMING_RUNS} prestart+poststop before the soak: logged elapsed_us {}, wall {} us",
        median(&before.logged_us),
        median(&before.wall_us)
    );
    println!(
        "soak: medians of {TIMING_RUNS} prestart+poststop after it, alternated: logged elapsed_us {log_a} fresh, {log_b} soaked ({:.2}x); wall {wall_a} us fresh, {wall_b} us soaked ({:.2}x)",
        log_b as f64 / log_a as f64,
        wall_b as f64 / wall_a as f64,
    );
    assert_eq!(stats.lifecycles, LIFECYCLES);
    assert_eq!(stats.quiet_checks, QUIET_AT.len());
    assert!(
        stats.refused > 0 && stats.pods > 0 && stats.runc > 0 && stats.pinned > 0,
        "the mix: {stats:?}"
    );
    assert!(
        log_b as f64 <= SLOWDOWN * log_a as f64,
        "the hook's median time on the soaked state is {log_b} us against {log_a} us on a fresh one (logged elapsed_us)"
    );
    assert!(
        wall_b as f64 <= SLOWDOWN * wall_a as f64,
        "the hook's median wall time on the soaked state is {wall_b} us against {wall_a} us on a fresh one"
    );
}
