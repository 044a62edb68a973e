//! Setup, teardown and reclaim against a fake kernel: every step's
//! rollback, a kill at every step, pod sharing, namespaces that outlive
//! their containers or live on out of reach, leases of other hosts. The
//! real kernel is exercised end to end in tests/e2e.
//!
//! The fake is a small world of network namespaces: each has links and,
//! once assigned, an id in the host's table (gone when the namespace is);
//! paths lead to a namespace while a test says so (a member's init runs, a
//! pin exists); a MACVLAN that is up has its MAC on the parent.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nsutil::netlink::{format_mac, Link};
use nsutil::ns::NetnsId;
use runtime_config::{Config, Pool, Request};

use crate::failpoint;
use crate::failure::{Failure, Step};
use crate::guard::{Guard, HostGuard};
use crate::kernel::{Kernel, MacvlanSpec, Reach};
use crate::lease::Holder;
use crate::reconcile::{self, Stores};
use crate::records::{Identity, Source, StateDir, LOCK_TIMEOUT};
use crate::setup::{self, Context, Wired};
use crate::shim::{self, HostNet};
use crate::teardown::{self, Outcome};

#[derive(Default)]
struct FakeNs {
    links: Vec<Link>,
    nsid: Option<i32>,
    cookie: u64,
}

/// The host's parents, every container namespace, and what was called.
#[derive(Default)]
struct World {
    parents: BTreeMap<String, Link>,
    namespaces: BTreeMap<NetnsId, FakeNs>,
    /// Which paths lead to which namespace now.
    paths: BTreeMap<PathBuf, NetnsId>,
    /// Namespaces someone keeps where discovery finds them (an engine's
    /// bind mount, a process, an fd).
    discoverable: Vec<NetnsId>,
    /// Every mutating call, in order, e.g. "create net1", "route 10.2.0.0/16".
    calls: Vec<String>,
    /// Armed failures: the first call starting with a prefix fails with its errno, once.
    fail: Vec<(String, i32)>,
    next_index: u32,
    /// The last cookie given to a namespace.
    cookies: u64,
    /// Namespaces being destroyed: their links go at the given time (the
    /// kernel's destruction takes some tens of milliseconds).
    dies_at: BTreeMap<NetnsId, std::time::Instant>,
    /// The guard's filters: inside namespaces, by link name, and the MACs
    /// each parent's table holds (a table with none is no table).
    inner_guards: BTreeSet<(NetnsId, String)>,
    parent_guards: BTreeMap<String, BTreeSet<[u8; 6]>>,
}

impl World {
    /// A new namespace with number `id` (maybe a number reused).
    fn make(&mut self, id: NetnsId) {
        self.cookies += 1;
        let cookie = self.cookies;
        self.namespaces.insert(
            id,
            FakeNs {
                cookie,
                ..FakeNs::default()
            },
        );
    }
}

type Shared = Rc<RefCell<World>>;

/// A kernel bound to one namespace of the world.
#[derive(Clone)]
struct FakeKernel {
    world: Shared,
    ns: NetnsId,
}

impl FakeKernel {
    /// Records `call`, failing it if it is the armed failure.
    fn call(&self, call: String) -> nsutil::Result<()> {
        let mut w = self.world.borrow_mut();
        if let Some(armed) = w
            .fail
            .iter()
            .position(|(prefix, _)| call.starts_with(prefix.as_str()))
        {
            let (_, errno) = w.fail.remove(armed);
            return Err(nsutil::Error::new(
                call,
                std::io::Error::from_raw_os_error(errno),
            ));
        }
        w.calls.push(call);
        Ok(())
    }

    fn with_ns<T>(&self, f: impl FnOnce(&mut FakeNs) -> T) -> T {
        let mut w = self.world.borrow_mut();
        f(w.namespaces
            .get_mut(&self.ns)
            .expect("the namespace exists"))
    }
}

impl Kernel for FakeKernel {
    fn host_link(&mut self, name: &str) -> nsutil::Result<Option<Link>> {
        Ok(self.world.borrow().parents.get(name).cloned())
    }

    fn link(&mut self, name: &str) -> nsutil::Result<Option<Link>> {
        Ok(self.with_ns(|ns| ns.links.iter().find(|l| l.name == name).cloned()))
    }

    fn link_by_index(&mut self, index: u32) -> nsutil::Result<Option<Link>> {
        Ok(self.with_ns(|ns| ns.links.iter().find(|l| l.index == index).cloned()))
    }

    fn links(&mut self) -> nsutil::Result<Vec<Link>> {
        Ok(self.with_ns(|ns| ns.links.clone()))
    }

    fn assign_nsid(&mut self) -> nsutil::Result<i32> {
        self.call("nsid".into())?;
        let mut w = self.world.borrow_mut();
        if let Some(id) = w.namespaces[&self.ns].nsid {
            return Ok(id);
        }
        // The lowest free id, as the kernel picks it.
        let taken: Vec<i32> = w.namespaces.values().filter_map(|n| n.nsid).collect();
        let id = (0..).find(|i| !taken.contains(i)).unwrap();
        w.namespaces.get_mut(&self.ns).unwrap().nsid = Some(id);
        Ok(id)
    }

    fn cookie(&mut self) -> nsutil::Result<Option<u64>> {
        Ok(Some(self.with_ns(|ns| ns.cookie)))
    }

    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> nsutil::Result<Link> {
        self.call(format!("create {}", spec.name))?;
        let index = {
            let mut w = self.world.borrow_mut();
            w.next_index += 1;
            w.next_index
        };
        let link = Link {
            index,
            name: spec.name.clone(),
            mtu: spec.mtu.unwrap_or(1500),
            up: false,
            mac: Some(spec.mac),
            kind: Some("macvlan".into()),
            parent_index: Some(spec.parent_index),
            parent_netnsid: Some(0),
        };
        self.with_ns(|ns| ns.links.push(link.clone()));
        Ok(link)
    }

    fn rename(&mut self, index: u32, name: &str) -> nsutil::Result<()> {
        self.call(format!("rename {name}"))?;
        self.with_ns(|ns| {
            let link = ns.links.iter_mut().find(|l| l.index == index).unwrap();
            link.name = name.into();
        });
        Ok(())
    }

    fn delete(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("delete {index}"))?;
        self.with_ns(|ns| ns.links.retain(|l| l.index != index));
        Ok(())
    }

    fn arp_notify(&mut self, index: u32, _eui64: bool) -> nsutil::Result<()> {
        self.call(format!("arp_notify {index}"))
    }

    fn ndisc_notify(&mut self, ifname: &str) -> nsutil::Result<()> {
        self.call(format!("ndisc_notify {ifname}"))
    }

    fn guard_link(&mut self, ifname: &str, _: &Guard) -> nsutil::Result<()> {
        self.call(format!("guard {ifname}"))?;
        let ns = self.ns;
        self.world
            .borrow_mut()
            .inner_guards
            .insert((ns, ifname.to_owned()));
        Ok(())
    }

    fn has_guard(&mut self, ifname: &str) -> nsutil::Result<bool> {
        let w = self.world.borrow();
        Ok(w.inner_guards.contains(&(self.ns, ifname.to_owned())))
    }

    fn unguard_link(&mut self, ifname: &str) -> nsutil::Result<()> {
        self.call(format!("unguard {ifname}"))?;
        let ns = self.ns;
        self.world
            .borrow_mut()
            .inner_guards
            .remove(&(ns, ifname.to_owned()));
        Ok(())
    }

    fn add_address(&mut self, _: u32, address: ipnet::IpNet) -> nsutil::Result<()> {
        self.call(format!("address {address}"))
    }

    fn set_up(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("up {index}"))?;
        self.with_ns(|ns| {
            if let Some(l) = ns.links.iter_mut().find(|l| l.index == index) {
                l.up = true;
            }
        });
        Ok(())
    }

    fn add_route(
        &mut self,
        _: u32,
        destination: ipnet::IpNet,
        gateway: std::net::IpAddr,
    ) -> nsutil::Result<()> {
        self.call(format!("route {destination} via {gateway}"))
    }
}

/// The host namespace: the parents, and the host shims made beside them.
struct FakeHost(Shared);

impl FakeHost {
    fn call(&self, call: String) -> nsutil::Result<()> {
        FakeKernel {
            world: self.0.clone(),
            ns: ns(0),
        }
        .call(call)
    }
}

impl HostNet for FakeHost {
    fn link(&mut self, name: &str) -> nsutil::Result<Option<Link>> {
        Ok(self.0.borrow().parents.get(name).cloned())
    }

    fn link_by_index(&mut self, index: u32) -> nsutil::Result<Option<Link>> {
        let w = self.0.borrow();
        Ok(w.parents.values().find(|l| l.index == index).cloned())
    }

    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> nsutil::Result<Link> {
        self.call(format!("host create {}", spec.name))?;
        let mut w = self.0.borrow_mut();
        w.next_index += 1;
        let link = Link {
            index: w.next_index,
            name: spec.name.clone(),
            mtu: spec.mtu.unwrap_or(1500),
            up: false,
            mac: Some(spec.mac),
            kind: Some("macvlan".into()),
            parent_index: Some(spec.parent_index),
            parent_netnsid: None,
        };
        w.parents.insert(spec.name.clone(), link.clone());
        Ok(link)
    }

    fn delete(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("host delete {index}"))?;
        self.0.borrow_mut().parents.retain(|_, l| l.index != index);
        Ok(())
    }

    fn arp_notify(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("host arp_notify {index}"))
    }

    fn add_address(&mut self, _: u32, address: ipnet::IpNet) -> nsutil::Result<()> {
        self.call(format!("host address {address}"))
    }

    fn set_up(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("host up {index}"))?;
        let mut w = self.0.borrow_mut();
        if let Some(l) = w.parents.values_mut().find(|l| l.index == index) {
            l.up = true;
        }
        Ok(())
    }

    fn add_route(&mut self, _: u32, destination: ipnet::Ipv4Net) -> nsutil::Result<()> {
        self.call(format!("host route {destination}"))
    }
}

/// The guard's tables on the parents.
struct FakeGuards(Shared);

impl HostGuard for FakeGuards {
    fn add(&mut self, parent: &str, guard: &Guard) -> nsutil::Result<()> {
        FakeHost(self.0.clone()).call(format!("guard-parent {parent}"))?;
        let mut w = self.0.borrow_mut();
        w.parent_guards
            .entry(parent.to_owned())
            .or_default()
            .insert(guard.mac);
        Ok(())
    }

    fn remove(&mut self, parent: &str, guard: &Guard) -> nsutil::Result<()> {
        FakeHost(self.0.clone()).call(format!("unguard-parent {parent}"))?;
        let mut w = self.0.borrow_mut();
        if let Some(macs) = w.parent_guards.get_mut(parent) {
            macs.remove(&guard.mac);
            if macs.is_empty() {
                w.parent_guards.remove(parent);
            }
        }
        Ok(())
    }

    fn converge(&mut self, wanted: &BTreeMap<String, Vec<Guard>>) -> nsutil::Result<Vec<String>> {
        let mut w = self.0.borrow_mut();
        let before: Vec<String> = w.parent_guards.keys().cloned().collect();
        w.parent_guards = wanted
            .iter()
            .filter(|(_, guards)| !guards.is_empty())
            .map(|(parent, guards)| (parent.clone(), guards.iter().map(|g| g.mac).collect()))
            .collect();
        Ok(before
            .into_iter()
            .filter(|p| !w.parent_guards.contains_key(p))
            .collect())
    }

    fn holds(&mut self, parent: &str, mac: [u8; 6]) -> nsutil::Result<bool> {
        let w = self.0.borrow();
        Ok(w.parent_guards
            .get(parent)
            .is_some_and(|m| m.contains(&mac)))
    }
}

/// Teardown's and reclaim's way back in.
struct FakeReach(Shared);

impl FakeReach {
    /// Whether the namespace with `who`'s number is `who` (not a later one).
    fn is(&self, who: &Identity) -> bool {
        let w = self.0.borrow();
        w.namespaces
            .get(&who.id)
            .is_some_and(|n| who.cookie.is_none_or(|c| c == n.cookie))
    }
}

impl Reach for FakeReach {
    fn leads_to(&mut self, path: &Path, id: NetnsId) -> bool {
        let w = self.0.borrow();
        w.paths.get(path) == Some(&id) && w.namespaces.contains_key(&id)
    }

    fn enter(&mut self, path: &Path, who: &Identity) -> nsutil::Result<Option<Box<dyn Kernel>>> {
        let same = self.leads_to(path, who.id) && self.is(who);
        Ok(same.then(|| {
            Box::new(FakeKernel {
                world: self.0.clone(),
                ns: who.id,
            }) as Box<dyn Kernel>
        }))
    }

    fn started_at(&mut self, _: i32, _: u64) -> bool {
        true
    }

    fn live_nsids(&mut self) -> nsutil::Result<Vec<i32>> {
        Ok(self
            .0
            .borrow()
            .namespaces
            .values()
            .filter_map(|n| n.nsid)
            .collect())
    }

    fn discover_mounted(&mut self, who: &Identity) -> nsutil::Result<Option<Box<dyn Kernel>>> {
        self.discover(who)
    }

    fn discover(&mut self, who: &Identity) -> nsutil::Result<Option<Box<dyn Kernel>>> {
        let found = self.0.borrow().discoverable.contains(&who.id) && self.is(who);
        Ok(found.then(|| {
            Box::new(FakeKernel {
                world: self.0.clone(),
                ns: who.id,
            }) as Box<dyn Kernel>
        }))
    }

    fn links_in(&mut self, nsid: i32) -> nsutil::Result<Vec<Link>> {
        let w = self.0.borrow();
        Ok(w.namespaces
            .values()
            .find(|n| n.nsid == Some(nsid))
            .map(|n| n.links.clone())
            .unwrap_or_default())
    }

    fn macs_on(&mut self, _parent: &str) -> nsutil::Result<Vec<String>> {
        let mut w = self.0.borrow_mut();
        let now = std::time::Instant::now();
        let gone: Vec<NetnsId> = w
            .dies_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            w.dies_at.remove(&id);
            w.namespaces.remove(&id);
        }
        Ok(w.namespaces
            .values()
            .flat_map(|n| &n.links)
            .filter(|l| l.up && l.kind.as_deref() == Some("macvlan"))
            .filter_map(|l| l.mac.map(|m| format_mac(&m)))
            .collect())
    }
}

/// A MACVLAN nsbypass did not make (another container's, another tool's).
fn someone_elses_macvlan(index: u32, name: &str, up: bool) -> Link {
    Link {
        index,
        name: name.into(),
        mtu: 1500,
        up,
        mac: Some([2, 7, 7, 7, 7, 7]),
        kind: Some("macvlan".into()),
        parent_index: Some(2),
        parent_netnsid: Some(0),
    }
}

const CONFIG: &str = r#"
[networks.fast]
parent = "nic0"
subnet = "10.9.0.0/24"
range = "10.9.0.10-10.9.0.12"
gateway = "10.9.0.1"
routes = ["10.20.0.0/16", "default"]

[networks.slow]
parent = "nic0"
subnet = "10.8.0.0/24"

[networks.l2]
parent = "nic0"
ifname = "raw0"

[networks.nowhere]
parent = "missing0"

[networks.down]
parent = "down0"

[networks.jumbo]
parent = "nic0"
mtu = 9000

[networks.dual]
parent = "nic0"
subnet = "10.7.0.0/24"
range = "10.7.0.10-10.7.0.12"
gateway = "10.7.0.1"
subnet6 = "fd00:7::/64"
range6 = "fd00:7::10-fd00:7::11"
gateway6 = "fd00:7::1"
routes = ["fd00:20::/48", "default"]

[networks.six]
parent = "nic0"
subnet6 = "fd00:6::/64"
"#;

const HOST: &str = "test-host";

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: Config,
    world: Shared,
}

/// A container init's path to its namespace: live while the container runs.
fn member_path(container: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{container}/ns/net"))
}

/// A pinned path to namespace `ino` (like /run/netns/X, or CRI-O's pod
/// sandbox): live while the pin exists, with or without members.
fn pin_path(ino: u64) -> PathBuf {
    PathBuf::from(format!("/run/netns/ns{ino}"))
}

fn ns(ino: u64) -> NetnsId {
    NetnsId { dev: 4, ino }
}

fn ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

impl Bed {
    fn new() -> Bed {
        Bed::with(CONFIG)
    }

    /// A bed whose config is `config`.
    fn with(config: &str) -> Bed {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("state");
        let config = Config::parse(config, Path::new("/etc/nsbypass/config.toml")).unwrap();
        let mut world = World {
            next_index: 10,
            ..World::default()
        };
        for (index, name, up) in [(2, "nic0", true), (3, "down0", false)] {
            world.parents.insert(
                name.into(),
                Link {
                    index,
                    name: name.into(),
                    mtu: 1500,
                    up,
                    mac: Some([0, 1, 2, 3, 4, index as u8]),
                    kind: Some("veth".into()),
                    parent_index: None,
                    parent_netnsid: None,
                },
            );
        }
        Bed {
            _dir: dir,
            root,
            config,
            world: Rc::new(RefCell::new(world)),
        }
    }

    fn kernel(&self, ino: u64) -> FakeKernel {
        FakeKernel {
            world: self.world.clone(),
            ns: ns(ino),
        }
    }

    /// Runs `f` with the locked stores, as a hook of this host would.
    fn with_stores<T>(&self, host: &str, f: impl FnOnce(&mut Stores) -> T) -> T {
        let state = StateDir::lock(&self.root, LOCK_TIMEOUT).unwrap();
        let mut leases = state.leases();
        let mut reach = FakeReach(self.world.clone());
        let mut guards = FakeGuards(self.world.clone());
        let mut stores = Stores {
            state: &state,
            leases: &mut leases,
            reach: &mut reach,
            host,
            machine: host,
            guards: &mut guards,
        };
        f(&mut stores)
    }

    /// The namespace `ino` exists (pinned at `pin_path`) and `container`'s
    /// init runs in it.
    fn enter(&self, container: &str, ino: u64) {
        let mut w = self.world.borrow_mut();
        if !w.namespaces.contains_key(&ns(ino)) {
            w.make(ns(ino));
        }
        w.paths.insert(pin_path(ino), ns(ino));
        w.paths.insert(member_path(container), ns(ino));
    }

    fn setup_in(
        &self,
        container: &str,
        ino: u64,
        networks: &str,
        ip: &str,
    ) -> Result<Vec<Wired>, Failure> {
        let mut request = Request {
            networks: networks.split(',').map(str::to_owned).collect(),
            ..Request::default()
        };
        for pair in ip.split(',').filter(|s| !s.is_empty()) {
            let (n, a) = pair.split_once('=').unwrap();
            let pinned = request.addresses.entry(n.into()).or_default();
            pinned.push(a.parse().unwrap());
        }
        self.setup_request(container, ino, &request)
    }

    /// Sets `container` up in namespace `ino` as `request` asks.
    fn setup_request(
        &self,
        container: &str,
        ino: u64,
        request: &Request,
    ) -> Result<Vec<Wired>, Failure> {
        self.enter(container, ino);
        let ctx = Context {
            container,
            host_id: HOST,
            netns: ns(ino),
            process: member_path(container),
            pid: None,
            start: None,
            pinned: Some(pin_path(ino)),
            request,
            config: &self.config,
            source: Source::Hook,
        };
        let mut kernel = self.kernel(ino);
        // As the node runs it: prepare, then host shims and apply.
        self.with_stores(HOST, |stores| {
            let prepared = setup::prepare(&ctx, &mut kernel, stores)?;
            shim::around_setup(
                &self.config,
                &request.networks,
                &mut FakeHost(self.world.clone()),
                stores,
                |stores| prepared.apply(&ctx, &mut kernel, stores, None),
            )
        })
    }

    fn setup(&self, container: &str, networks: &str) -> Result<Vec<Wired>, Failure> {
        self.setup_in(container, 1000, networks, "")
    }

    /// The container's processes are gone (its namespace may live on).
    fn stop(&self, container: &str) {
        self.world
            .borrow_mut()
            .paths
            .remove(&member_path(container));
    }

    /// The namespace is gone, and its links, filters and id with it.
    fn destroy(&self, ino: u64) {
        let mut w = self.world.borrow_mut();
        w.namespaces.remove(&ns(ino));
        w.inner_guards.retain(|(id, _)| *id != ns(ino));
        w.paths.retain(|_, id| *id != ns(ino));
    }

    /// Its last process is gone: the namespace loses its id at once and its
    /// links after `after` (see [`World::dies_at`]).
    fn dying(&self, ino: u64, after: std::time::Duration) {
        self.unpin(ino);
        let mut w = self.world.borrow_mut();
        w.namespaces.get_mut(&ns(ino)).unwrap().nsid = None;
        w.dies_at.insert(ns(ino), std::time::Instant::now() + after);
    }

    /// Every path to the namespace is gone, but something else keeps it.
    fn unpin(&self, ino: u64) {
        self.world.borrow_mut().paths.retain(|_, id| *id != ns(ino));
    }

    /// The container's poststop, as the node runs it once it has waited
    /// for a dying namespace (the fake's namespaces die at once).
    fn poststop(&self, container: &str) -> Result<Outcome, Failure> {
        self.with_stores(HOST, |stores| {
            shim::around_teardown(
                &self.config,
                container,
                &mut FakeHost(self.world.clone()),
                stores,
                |stores| teardown::teardown(container, stores),
            )
        })
    }

    /// Stops `container` and runs its poststop. With `namespace_alive`, the
    /// namespace outlives it (pinned); without, it is gone.
    fn teardown(&self, container: &str, namespace_alive: bool) -> Result<Outcome, Failure> {
        let home = self
            .world
            .borrow()
            .paths
            .get(&member_path(container))
            .copied();
        self.stop(container);
        if let (false, Some(home)) = (namespace_alive, home) {
            self.destroy(home.ino);
        }
        self.poststop(container)
    }

    fn namespaces(&self) -> Vec<u64> {
        self.world
            .borrow()
            .namespaces
            .keys()
            .map(|id| id.ino)
            .collect()
    }

    fn link_names(&self, ino: u64) -> Vec<String> {
        self.world
            .borrow()
            .namespaces
            .get(&ns(ino))
            .map(|n| n.links.iter().map(|l| l.name.clone()).collect())
            .unwrap_or_default()
    }

    fn calls(&self) -> Vec<String> {
        self.world.borrow().calls.clone()
    }

    /// Every guard filter left: inside namespaces and on parents.
    fn guards(&self) -> Vec<String> {
        let w = self.world.borrow();
        let inner = w
            .inner_guards
            .iter()
            .map(|(id, ifname)| format!("{} {ifname}", id.ino));
        let outer = w
            .parent_guards
            .iter()
            .map(|(parent, macs)| format!("{parent} {}", macs.len()));
        inner.chain(outer).collect()
    }

    fn fail_on(&self, call: &str, errno: i32) {
        self.world.borrow_mut().fail.push((call.into(), errno));
    }

    /// Every file under the state dir except the lock (and the empty
    /// directories setup makes).
    fn state_files(&self) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else if path.file_name().unwrap() != "lock" {
                    out.push(path.strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &self.root, &mut out);
        out.sort();
        out
    }

    fn leases(&self) -> Vec<(std::net::IpAddr, Holder)> {
        self.with_stores(HOST, |s| s.leases.list("fast").unwrap())
    }

    /// Whether the world breaks the rule nsbypass exists to keep: an
    /// address configured (a MACVLAN that exists) in two namespaces, or in
    /// a live namespace without a lease of this host naming that namespace.
    fn check_no_address_live_twice_or_unleased(&self) {
        let recorded: Vec<(u64, String, std::net::IpAddr)> = {
            // The records say which link holds which address.
            let mut out = Vec::new();
            for ino in self.namespaces() {
                let record = self.with_stores(HOST, |s| s.state.netns(&ns(ino).key()).unwrap());
                for link in record.into_iter().flat_map(|r| r.links) {
                    for a in &link.addresses {
                        out.push((ino, link.mac.clone(), a.addr()));
                    }
                }
            }
            out
        };
        let w = self.world.borrow();
        let leases = self.with_stores(HOST, |s| {
            let mut all = Vec::new();
            for network in ["fast", "slow", "dual", "six"] {
                all.extend(s.leases.list(network).unwrap());
            }
            all
        });
        let mut live = Vec::new();
        for (id, n) in &w.namespaces {
            for link in &n.links {
                let mac = link.mac.map(|m| format_mac(&m)).unwrap();
                // A link in a namespace whose record does not name it would
                // be an orphan holding an address nobody leases.
                let addresses: Vec<_> = recorded
                    .iter()
                    .filter(|(i, m, _)| *i == id.ino && *m == mac)
                    .map(|(_, _, a)| *a)
                    .collect();
                if addresses.is_empty() {
                    panic!("an unrecorded link {} in namespace {}", link.name, id.ino);
                }
                for address in addresses {
                    assert!(
                        leases
                            .iter()
                            .any(|(a, h)| *a == address && h.netns == id.key()),
                        "{address} is live in namespace {} without its lease: {leases:?}",
                        id.ino
                    );
                    live.push(address);
                }
            }
        }
        let before = live.len();
        live.sort();
        live.dedup();
        assert_eq!(live.len(), before, "an address is live twice");
    }
}

#[test]
fn setup_wires_one_link_with_address_routes_and_records() {
    let bed = Bed::new();
    let wired = bed.setup("c1", "fast").unwrap();
    assert_eq!(wired.len(), 1);
    let w = &wired[0];
    assert_eq!(
        (w.network.as_str(), w.ifname.as_str(), w.shared),
        ("fast", "net1", false)
    );
    let address = w.addresses[0];
    assert_eq!(address.prefix_len(), 24);
    assert_eq!(
        bed.calls(),
        [
            "nsid".to_owned(),
            "create net1".into(),
            "arp_notify 11".into(),
            format!("address {address}"),
            // Guarded before it is up, inside and on the parent.
            "guard net1".into(),
            "guard-parent nic0".into(),
            "up 11".into(),
            "route 10.20.0.0/16 via 10.9.0.1".into(),
            "route 0.0.0.0/0 via 10.9.0.1".into(),
        ]
    );
    assert_eq!(bed.link_names(1000), ["net1"]);
    let holder = bed.with_stores(HOST, |s| {
        s.leases.holder("fast", address.addr()).unwrap().unwrap()
    });
    assert_eq!(
        holder,
        Holder {
            host: HOST.into(),
            netns: ns(1000).key(),
            container: "c1".into()
        }
    );
    assert_eq!(
        bed.state_files(),
        [
            "containers/c1.json".to_owned(),
            format!("leases/fast/{}", address.addr()),
            "netns/4-1000.json".into()
        ]
    );
    let record = bed.with_stores(HOST, |s| s.state.netns("4-1000").unwrap().unwrap());
    assert_eq!(record.nsid, Some(0));
    assert!(!record.links[0].pending && !record.members["c1"].pending);
    assert_eq!(record.links[0].index, Some(11));
    assert_eq!(bed.guards(), ["1000 net1", "nic0 1"]);
    bed.teardown("c1", true).unwrap();
    assert!(bed.guards().is_empty(), "{:?}", bed.guards());
}

#[test]
fn dual_stack_leases_records_and_configures_both_families() {
    let bed = Bed::new();
    let wired = bed.setup("c1", "dual").unwrap();
    let addresses = wired[0].addresses.clone();
    let text: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    assert_eq!(addresses.len(), 2, "{text:?}");
    assert!(addresses[0].addr().is_ipv4() && addresses[1].addr().is_ipv6());
    assert_eq!(
        (addresses[0].prefix_len(), addresses[1].prefix_len()),
        (24, 64)
    );
    assert_eq!(
        bed.calls(),
        [
            "nsid".to_owned(),
            "create net1".into(),
            "arp_notify 11".into(),
            "ndisc_notify net1".into(),
            format!("address {}", text[0]),
            format!("address {}", text[1]),
            "guard net1".into(),
            "guard-parent nic0".into(),
            "up 11".into(),
            "route 0.0.0.0/0 via 10.7.0.1".into(),
            "route fd00:20::/48 via fd00:7::1".into(),
            "route ::/0 via fd00:7::1".into(),
        ]
    );
    let record = bed.with_stores(HOST, |s| s.state.netns("4-1000").unwrap().unwrap());
    assert_eq!(record.links[0].addresses, addresses);
    let mut files = bed.state_files();
    files.retain(|f| f.starts_with("leases/"));
    assert_eq!(
        files,
        [
            format!("leases/dual/{}", addresses[0].addr()),
            format!("leases/dual/{}", addresses[1].addr()),
        ]
    );
    bed.check_no_address_live_twice_or_unleased();
    // The same container again, elsewhere: the same two addresses.
    let Outcome::Left { released, .. } = bed.teardown("c1", false).unwrap() else {
        panic!()
    };
    assert_eq!(released[0].addresses, addresses);
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
    let again = bed.setup_in("c1", 2000, "dual", "").unwrap();
    assert_eq!(again[0].addresses, addresses);
}

#[test]
fn pins_of_both_families_and_an_ipv6_only_network() {
    let bed = Bed::new();
    let wired = bed
        .setup_in(
            "c1",
            1000,
            "dual,six",
            "dual=fd00:7::11,dual=10.7.0.11,six=fd00:6::abc",
        )
        .unwrap();
    let text = |w: &Wired| -> Vec<String> { w.addresses.iter().map(ToString::to_string).collect() };
    assert_eq!(text(&wired[0]), ["10.7.0.11/24", "fd00:7::11/64"]);
    assert_eq!(text(&wired[1]), ["fd00:6::abc/64"]);
    // Only the IPv6 pin: the IPv4 address comes from the pool.
    let other = bed.setup_in("c2", 2000, "dual", "dual=fd00:7::10").unwrap();
    assert_eq!(other[0].addresses[1].to_string(), "fd00:7::10/64");
    assert_ne!(other[0].addresses[0], wired[0].addresses[0]);
    // A pod member naming an address the shared link lacks is refused.
    let e = bed
        .setup_in("c3", 1000, "dual", "dual=fd00:7::10")
        .unwrap_err();
    assert!(
        e.to_string().contains("it cannot also take fd00:7::10"),
        "{e}"
    );
    // An IPv6-only network has no IPv4 route or address to make.
    assert!(!bed
        .calls()
        .iter()
        .any(|c| c.contains("fd00:6") && c.starts_with("route")));
    bed.teardown("c1", false).unwrap();
    bed.teardown("c2", false).unwrap();
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn an_exhausted_ipv6_pool_gives_the_ipv4_lease_back() {
    let bed = Bed::new();
    // Three IPv4 addresses, two IPv6 ones: the third container finds an
    // IPv4 address but no IPv6 one.
    bed.setup_in("a", 100, "dual", "").unwrap();
    bed.setup_in("c", 300, "dual", "").unwrap();
    let before = bed.state_files();
    let e = bed.setup_in("b", 200, "dual", "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "network dual: lease address: no free address left in fd00:7::10-fd00:7::11"
    );
    assert_eq!(bed.state_files(), before, "10.7.0.11 was given back");
}

#[test]
fn interface_names_follow_request_order_unless_configured() {
    let bed = Bed::new();
    let wired = bed.setup("c1", "slow,l2,fast").unwrap();
    let names: Vec<_> = wired
        .iter()
        .map(|w| (w.network.as_str(), w.ifname.as_str()))
        .collect();
    assert_eq!(names, [("slow", "net1"), ("l2", "raw0"), ("fast", "net3")]);
    assert!(
        wired[1].addresses.is_empty(),
        "a network without subnet is layer 2 only"
    );
}

#[test]
fn repeated_setup_is_a_no_op_with_the_same_address() {
    let bed = Bed::new();
    let first = bed.setup("c1", "fast").unwrap();
    let calls = bed.calls().len();
    let second = bed.setup("c1", "fast").unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(second[0].addresses, first[0].addresses);
    assert_eq!(bed.calls().len(), calls, "the second stage touches nothing");
}

#[test]
fn a_pod_shares_one_link_until_its_last_container_leaves() {
    let bed = Bed::new();
    let a = bed.setup("infra", "fast").unwrap();
    let b = bed.setup("app", "fast").unwrap();
    assert_eq!(bed.link_names(1000), ["net1"]);
    assert!(b[0].shared);
    assert_eq!(a[0].addresses, b[0].addresses);

    assert!(
        matches!(bed.teardown("infra", true).unwrap(), Outcome::Left { released, .. } if released.is_empty())
    );
    assert_eq!(bed.link_names(1000), ["net1"], "app still uses it");
    let Outcome::Left { released, .. } = bed.teardown("app", true).unwrap() else {
        panic!()
    };
    assert_eq!(released.len(), 1);
    assert!(bed.link_names(1000).is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_pod_member_asking_for_more_networks_gets_them_added() {
    let bed = Bed::new();
    bed.setup("infra", "fast").unwrap();
    let wired = bed.setup("app", "fast,slow").unwrap();
    assert_eq!(bed.link_names(1000), ["net1", "net2"]);
    assert!(wired[0].shared && !wired[1].shared);
    bed.teardown("infra", true).unwrap();
    assert_eq!(bed.link_names(1000).len(), 2);
    bed.teardown("app", true).unwrap();
    assert!(bed.link_names(1000).is_empty());
    assert!(bed.state_files().is_empty());
}

#[test]
fn teardown_after_the_namespace_is_gone_frees_the_address_and_can_run_twice() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    let Outcome::Left { released, kept } = bed.teardown("c1", false).unwrap() else {
        panic!()
    };
    assert_eq!((released[0].network.as_str(), kept.len()), ("fast", 0));
    assert!(bed.state_files().is_empty());
    assert_eq!(bed.teardown("c1", false).unwrap(), Outcome::NotRecorded);
    assert_eq!(
        bed.teardown("never-seen", true).unwrap(),
        Outcome::NotRecorded
    );
}

#[test]
fn a_failed_link_delete_keeps_the_lease_and_a_retry_finishes() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    bed.fail_on("delete", ebusy());
    let e = bed.teardown("c1", true).unwrap_err();
    assert_eq!(e.step, Step::DeleteLink);
    assert_eq!(bed.leases().len(), 1, "address still leased");
    bed.teardown("c1", true).unwrap();
    assert!(bed.link_names(1000).is_empty());
    assert!(bed.state_files().is_empty());
}

/// Setup fails at `call` (a kernel call) or at failpoint `point`;
/// afterwards nothing it made may remain.
fn assert_rolls_back(networks: &str, call: Option<&str>, point: Option<&str>, step: Step) {
    let bed = Bed::new();
    if let Some(call) = call {
        bed.fail_on(call, ebusy());
    }
    if let Some(point) = point {
        failpoint::arm(point, "error");
    }
    let what = call.or(point).unwrap();
    let e = bed.setup("c1", networks).unwrap_err();
    assert_eq!(e.step, step, "failing {what}: {e}");
    assert!(
        e.rollback.is_empty(),
        "failing {what}: the rollback failed: {e}"
    );
    assert!(
        bed.link_names(1000).is_empty(),
        "failing {what}: links left: {:?}",
        bed.link_names(1000)
    );
    assert!(
        bed.state_files().is_empty(),
        "failing {what}: state left: {:?}",
        bed.state_files()
    );
    assert!(
        bed.guards().is_empty(),
        "failing {what}: guards left: {:?}",
        bed.guards()
    );
}

#[test]
fn every_setup_step_rolls_back_itself_and_everything_before_it() {
    for (call, step) in [
        ("nsid", Step::AssignNsid),
        ("create net1", Step::CreateLink),
        ("arp_notify", Step::ArpNotify),
        ("address", Step::AddAddress),
        ("guard net1", Step::GuardLink),
        ("guard-parent nic0", Step::GuardParent),
        ("up", Step::LinkUp),
        ("route 10.20", Step::AddRoute),
        ("route 0.0.0.0", Step::AddRoute),
    ] {
        assert_rolls_back("fast", Some(call), None, step);
    }
    // The second network failing undoes the first, which had fully succeeded.
    for (call, step) in [
        ("create net2", Step::CreateLink),
        ("route 0.0.0.0", Step::AddRoute),
    ] {
        assert_rolls_back("slow,fast", Some(call), None, step);
    }
    // Dual stack: the IPv6 steps, and the IPv6 address and routes after
    // the IPv4 ones succeeded.
    for (call, step) in [
        ("ndisc_notify", Step::NdiscNotify),
        ("address 10.7", Step::AddAddress),
        ("address fd00:7", Step::AddAddress),
        ("route 0.0.0.0", Step::AddRoute),
        ("route fd00:20", Step::AddRoute),
        ("route ::/0", Step::AddRoute),
    ] {
        assert_rolls_back("dual", Some(call), None, step);
        assert_rolls_back("fast,dual", Some(call), None, step);
    }
    assert_rolls_back("six", Some("ndisc_notify"), None, Step::NdiscNotify);
    assert_rolls_back("six", Some("address fd00:6"), None, Step::AddAddress);
    // Every failpoint of network setup, the record writes included.
    for (point, step) in [
        ("assign-nsid", Step::AssignNsid),
        ("lease", Step::LeaseAddress),
        ("write-intent", Step::WriteRecord),
        ("write-pointer", Step::WriteRecord),
        ("create-link", Step::CreateLink),
        ("arp-notify", Step::ArpNotify),
        ("add-address", Step::AddAddress),
        ("guard-link", Step::GuardLink),
        ("guard-parent", Step::GuardParent),
        ("link-up", Step::LinkUp),
        ("add-route", Step::AddRoute),
        ("write-final", Step::WriteRecord),
    ] {
        assert_rolls_back("slow,fast", None, Some(point), step);
        assert_rolls_back("slow,dual", None, Some(point), step);
    }
    assert_rolls_back("slow,dual", None, Some("ndisc-notify"), Step::NdiscNotify);
}

#[test]
fn name_clash_falls_back_to_the_recorded_temporary_name_and_rename() {
    let eexist = nix::errno::Errno::EEXIST as i32;
    let bed = Bed::new();
    bed.fail_on("create net1", eexist);
    bed.setup("c1", "fast").unwrap();
    assert_eq!(bed.link_names(1000), ["net1"]);
    let calls = bed.calls();
    let temporary = crate::derive::temporary_ifname("4-1000", "c1", "fast");
    assert_eq!(
        calls[1..3],
        [format!("create {temporary}"), "rename net1".into()]
    );

    // The rename failing deletes the temporary link too.
    let bed = Bed::new();
    bed.fail_on("create net1", eexist);
    bed.fail_on("rename", ebusy());
    let e = bed.setup("c1", "fast").unwrap_err();
    assert_eq!(e.step, Step::RenameLink);
    assert!(
        bed.link_names(1000).is_empty(),
        "{:?}",
        bed.link_names(1000)
    );
    assert!(bed.state_files().is_empty());
}

#[test]
fn validation_failures_touch_nothing() {
    let cases: &[(&str, &str, &str)] = &[
        ("nope", "", "network nope: validate: no such network in /etc/nsbypass/config.toml (configured: down, dual, fast, jumbo, l2, nowhere, six, slow)"),
        ("nowhere", "", "network nowhere: validate: parent missing0 does not exist"),
        ("down", "", "network down: validate: parent down0 is down"),
        ("jumbo", "", "network jumbo: validate: mtu 9000 is above parent nic0's 1500"),
        ("fast", "fast=10.9.0.13", "network fast: validate: 10.9.0.13 is outside the range 10.9.0.10-10.9.0.12"),
        ("fast", "fast=10.9.0.1", "network fast: validate: 10.9.0.1 is the network's gateway"),
        ("l2", "l2=10.0.0.1", "network l2: validate: cannot take 10.0.0.1: the network has no subnet"),
        ("fast", "fast=fd00:7::10", "network fast: validate: cannot take fd00:7::10: the network has no subnet6"),
        ("six", "six=10.7.0.10", "network six: validate: cannot take 10.7.0.10: the network has no subnet"),
        ("dual", "dual=fd00:7::12", "network dual: validate: fd00:7::12 is outside the range fd00:7::10-fd00:7::11"),
        ("dual", "dual=fd00:7::1", "network dual: validate: fd00:7::1 is the network's gateway"),
    ];
    for (networks, ip, want) in cases {
        let bed = Bed::new();
        let e = bed.setup_in("c1", 1000, networks, ip).unwrap_err();
        assert_eq!(e.to_string(), *want);
        assert!(bed.calls().is_empty(), "{networks}: {:?}", bed.calls());
        assert!(bed.state_files().is_empty());
    }
}

#[test]
fn a_taken_address_or_interface_name_is_refused_before_anything_is_made() {
    let bed = Bed::new();
    bed.setup_in("c1", 1000, "fast", "fast=10.9.0.11").unwrap();
    let calls = bed.calls().len();
    let e = bed
        .setup_in("c2", 2000, "slow,fast", "fast=10.9.0.11")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "network fast: validate: 10.9.0.11 is taken by container c1"
    );
    assert_eq!(bed.calls().len(), calls);

    // Something else (another CNI, the image) already made net1.
    let bed = Bed::new();
    bed.enter("c3", 1000);
    bed.kernel(1000).with_ns(|n| {
        n.links.push(Link {
            index: 7,
            name: "net1".into(),
            mtu: 1500,
            up: true,
            mac: Some([2, 0, 0, 0, 0, 7]),
            kind: Some("veth".into()),
            parent_index: None,
            parent_netnsid: None,
        })
    });
    let e = bed.setup("c3", "slow").unwrap_err();
    assert_eq!(e.to_string(), "network slow: validate: interface net1 already exists in the container's network namespace");
    assert!(bed.calls().is_empty());
    assert!(bed.state_files().is_empty());
}

#[test]
fn exhausted_pool_rolls_back_earlier_networks() {
    let bed = Bed::new();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        bed.setup_in(c, 100 + i as u64, "fast", "").unwrap();
    }
    let before = bed.state_files();
    let e = bed.setup_in("d", 200, "slow,fast", "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "network fast: lease address: no free address left in 10.9.0.10-10.9.0.12"
    );
    assert!(bed.link_names(200).is_empty());
    assert_eq!(bed.state_files(), before);
}

#[test]
fn a_stale_record_of_the_same_container_in_another_namespace_is_cleared() {
    let bed = Bed::new();
    let old = bed.setup_in("c1", 1000, "fast", "").unwrap();
    // Its namespace died without a poststop; the container id comes back.
    bed.destroy(1000);
    let new = bed.setup_in("c1", 2000, "fast", "").unwrap();
    assert_eq!(
        old[0].addresses, new[0].addresses,
        "same container, same address"
    );
    assert!(
        !bed.state_files().iter().any(|f| f == "netns/4-1000.json"),
        "{:?}",
        bed.state_files()
    );
}

#[test]
fn a_record_whose_link_vanished_is_repaired() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    bed.kernel(1000).with_ns(|n| n.links.clear());
    let wired = bed.setup("c2", "fast").unwrap();
    assert!(!wired[0].shared, "the link was made again, not shared");
    assert_eq!(bed.link_names(1000), ["net1"]);
    assert_eq!(
        bed.leases().len(),
        1,
        "the vanished link's address was freed"
    );
}

#[test]
fn a_vanished_link_drops_only_that_link_never_a_running_member() {
    let bed = Bed::new();
    bed.setup("infra", "fast,slow").unwrap();
    // Someone deletes net2 inside the running pod.
    bed.kernel(1000)
        .with_ns(|n| n.links.retain(|l| l.name != "net2"));
    bed.setup("app", "fast").unwrap();
    // app leaving must not take infra's net1 with it.
    bed.teardown("app", true).unwrap();
    assert_eq!(bed.link_names(1000), ["net1"]);
    assert!(
        !bed.state_files()
            .iter()
            .any(|f| f.starts_with("leases/slow/")),
        "net2's address was freed"
    );
    bed.teardown("infra", true).unwrap();
    assert!(bed.link_names(1000).is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn teardown_finds_a_link_whose_name_and_mac_were_changed() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    bed.kernel(1000).with_ns(|n| {
        n.links[0].name = "renamed".into();
        n.links[0].mac = Some([2, 9, 9, 9, 9, 9]);
    });
    bed.teardown("c1", true).unwrap();
    assert!(bed.link_names(1000).is_empty());
}

#[test]
fn a_member_that_died_without_poststop_does_not_keep_links_alive() {
    let bed = Bed::new();
    bed.setup("infra", "fast").unwrap();
    bed.setup("app", "fast").unwrap();
    bed.stop("infra"); // killed; its poststop never comes
    bed.teardown("app", true).unwrap();
    assert!(bed.link_names(1000).is_empty());
    assert!(bed.leases().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn leases_nothing_accounts_for_are_reclaimed_when_the_pool_runs_dry() {
    let bed = Bed::new();
    // A hook killed between leasing and recording leaves leases behind.
    let pool = bed.config.networks["fast"].ipv4.clone().unwrap();
    bed.with_stores(HOST, |s| {
        for i in 0..3 {
            let orphan = s.holder(&format!("4-{}", 900 + i), &format!("killed{i}"));
            s.leases
                .acquire("fast", Pool::V4(&pool), &orphan, None)
                .unwrap();
        }
    });
    let wired = bed.setup("c1", "fast").unwrap();
    assert_eq!(wired[0].addresses.len(), 1);
    // A live holder is never reclaimed: the pool is now really full.
    bed.setup_in("c2", 2001, "fast", "").unwrap();
    bed.setup_in("c3", 2002, "fast", "").unwrap();
    let e = bed.setup_in("c4", 4000, "fast", "").unwrap_err();
    assert_eq!(e.step, Step::LeaseAddress, "{e}");
    bed.check_no_address_live_twice_or_unleased();
}

#[test]
fn reclaim_never_frees_an_address_whose_namespace_lives_on() {
    // Defect 1: a pod member's init dies before its poststop; the pinned
    // namespace lives on with net1 up on its address. Reclaim must go by
    // the namespace, not by member processes.
    let bed = Bed::new();
    let web = bed.setup_in("web", 1000, "fast", "").unwrap();
    bed.stop("web");
    for (c, ino) in [("f1", 2001), ("f2", 2002)] {
        bed.setup_in(c, ino, "fast", "").unwrap();
    }
    let e = bed.setup_in("f3", 2003, "fast", "").unwrap_err();
    assert_eq!(
        e.step,
        Step::LeaseAddress,
        "the pod's address was reclaimed: {e}"
    );
    bed.check_no_address_live_twice_or_unleased();
    // The same with the pin gone but the namespace kept alive by someone
    // else (an fd): still live, still leased.
    bed.unpin(1000);
    let e = bed.setup_in("f3", 2003, "fast", "").unwrap_err();
    assert_eq!(e.step, Step::LeaseAddress, "{e}");
    bed.check_no_address_live_twice_or_unleased();
    // Once the namespace is really gone, its address is free again.
    bed.destroy(1000);
    let f3 = bed.setup_in("f3", 2003, "fast", "").unwrap();
    assert_eq!(f3[0].addresses, web[0].addresses);
    bed.check_no_address_live_twice_or_unleased();
    // And web's late poststop frees nothing of f3's.
    assert!(matches!(
        bed.poststop("web").unwrap(),
        Outcome::NotRecorded | Outcome::Left { .. }
    ));
    assert_eq!(bed.leases().len(), 3);
}

#[test]
fn a_recorded_path_swapped_while_the_namespace_lives_keeps_the_lease() {
    // Defect 8: the pin is replaced (a FIFO, another namespace) while an fd
    // keeps the namespace and its link alive: poststop must not free it.
    let bed = Bed::new();
    bed.setup_in("pinned", 1000, "fast", "").unwrap();
    bed.stop("pinned");
    bed.unpin(1000);
    bed.world
        .borrow_mut()
        .namespaces
        .insert(ns(1001), FakeNs::default());
    bed.world
        .borrow_mut()
        .paths
        .insert(pin_path(1000), ns(1001));
    let Outcome::Left { released, kept } = bed.poststop("pinned").unwrap() else {
        panic!()
    };
    assert_eq!((released.len(), kept.len()), (0, 1));
    assert_eq!(bed.leases().len(), 1, "still live, still leased");
    bed.check_no_address_live_twice_or_unleased();
    // When the namespace finally goes, reclaim frees the address.
    bed.destroy(1000);
    bed.with_stores(HOST, |s| {
        assert_eq!(reconcile::reclaim("fast", s).unwrap(), 1)
    });
    assert!(bed.leases().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_namespace_an_engine_keeps_past_poststop_is_found_and_cleaned() {
    // dockerd holds a container's namespace (its own bind mount, not in the
    // spec) until after poststop: the link is deleted there, then freed.
    let bed = Bed::new();
    bed.setup_in("d1", 1000, "fast", "").unwrap();
    bed.stop("d1");
    bed.unpin(1000);
    bed.world.borrow_mut().discoverable.push(ns(1000));
    let Outcome::Left { released, kept } = bed.poststop("d1").unwrap() else {
        panic!()
    };
    assert_eq!((released.len(), kept.len()), (1, 0));
    assert!(
        bed.link_names(1000).is_empty(),
        "deleted in the kept namespace"
    );
    assert!(bed.leases().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_dying_namespace_is_gone_only_once_its_links_mac_leaves_the_parent() {
    // The kernel drops a dying namespace's id before it unregisters its
    // links: until the MAC is off the parent, the address may still answer.
    let bed = Bed::new();
    bed.setup_in("c1", 1000, "fast", "").unwrap();
    bed.stop("c1");
    bed.unpin(1000);
    bed.world
        .borrow_mut()
        .namespaces
        .get_mut(&ns(1000))
        .unwrap()
        .nsid = None;
    let record = bed.with_stores(HOST, |s| s.state.netns("4-1000").unwrap().unwrap());
    let mut reach = FakeReach(bed.world.clone());
    assert!(matches!(
        crate::kernel::presence(&mut reach, &record).unwrap(),
        crate::kernel::Presence::Dying
    ));
    // Teardown does not wait: the container leaves, and the record keeps
    // the link, so the address stays leased while it drains; reclaim keeps
    // it too.
    let outcome = bed.poststop("c1").unwrap();
    assert!(
        matches!(&outcome, Outcome::Left { released, kept } if released.is_empty() && kept.len() == 1),
        "{outcome:?}"
    );
    assert_eq!(bed.leases().len(), 1);
    bed.with_stores(HOST, |s| {
        assert!(s.state.container("c1").unwrap().is_none());
        let record = s.state.netns("4-1000").unwrap().unwrap();
        assert!(record.members.is_empty() && record.links.len() == 1);
        assert_eq!(reconcile::reclaim("fast", s).unwrap(), 0);
    });
    // Once the kernel is done, the next reclaim frees it.
    bed.destroy(1000);
    assert!(matches!(
        crate::kernel::presence(&mut reach, &record).unwrap(),
        crate::kernel::Presence::Gone
    ));
    bed.with_stores(HOST, |s| {
        assert_eq!(reconcile::reclaim("fast", s).unwrap(), 1)
    });
    assert!(bed.leases().is_empty());
}

#[test]
fn a_full_pool_or_a_pin_waits_for_an_address_that_drains() {
    // Poststop does not wait for the kernel to destroy a namespace; a
    // setup that needs its address does, under the lock, and then gets it.
    let bed = Bed::new();
    let mut drained = None;
    for (c, ino) in [("c1", 1000), ("c2", 1001), ("c3", 1002)] {
        drained = Some(bed.setup_in(c, ino, "fast", "").unwrap()[0].addresses[0].addr());
    }
    let drained = drained.unwrap();
    let holder_of = |address| {
        bed.leases()
            .into_iter()
            .find(|(a, _)| *a == address)
            .map(|(_, h)| h.container)
    };
    bed.stop("c3");
    bed.dying(1002, std::time::Duration::from_millis(50));
    bed.poststop("c3").unwrap();
    assert_eq!(
        holder_of(drained).as_deref(),
        Some("c3"),
        "the address drains"
    );
    let wired = bed.setup_in("c4", 1003, "fast", "").unwrap();
    assert_eq!(wired[0].addresses[0].addr(), drained);
    assert_eq!(holder_of(drained).as_deref(), Some("c4"));

    // The same for an address pinned right after its holder stopped.
    bed.stop("c4");
    bed.dying(1003, std::time::Duration::from_millis(50));
    bed.poststop("c4").unwrap();
    bed.setup_in("c5", 1004, "fast", &format!("fast={drained}"))
        .unwrap();
    assert_eq!(holder_of(drained).as_deref(), Some("c5"));
    bed.check_no_address_live_twice_or_unleased();
}

#[test]
fn a_quick_teardown_drains_what_no_path_or_bind_mount_reaches_and_cleans_what_one_does() {
    // Look::Quick (the file store's poststop) does not look through every
    // process and fd for a namespace no recorded path reaches: one still
    // dying drains, and the next run's sweep frees it. One an engine
    // bind-mounts (dockerd) is found through the mount table and cleaned
    // at once.
    let bed = Bed::new();
    bed.setup_in("q1", 1000, "fast", "").unwrap();
    bed.setup_in("q2", 1001, "fast", "").unwrap();
    bed.stop("q1");
    bed.dying(1000, std::time::Duration::from_millis(40));
    bed.stop("q2");
    bed.unpin(1001);
    bed.world.borrow_mut().discoverable.push(ns(1001));
    let quick = |c: &str| {
        bed.with_stores(HOST, |s| {
            teardown::leave(c, s, teardown::Leaving::Stopped, teardown::Look::Quick).unwrap()
        })
    };
    assert!(
        matches!(quick("q1"), Outcome::Left { released, kept } if released.is_empty() && kept.len() == 1)
    );
    assert!(
        matches!(quick("q2"), Outcome::Left { released, kept } if released.len() == 1 && kept.is_empty())
    );
    assert!(bed.link_names(1001).is_empty(), "deleted through the mount");
    assert_eq!(bed.leases().len(), 1, "q1's drains");
    std::thread::sleep(std::time::Duration::from_millis(50));
    bed.with_stores(HOST, |s| {
        assert_eq!(
            reconcile::sweep_draining(s, reconcile::Sweep::All).unwrap(),
            1
        )
    });
    assert!(bed.leases().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_drained_namespace_is_swept_by_the_next_run_once_the_kernel_is_done() {
    let bed = Bed::new();
    bed.setup_in("c1", 1000, "fast", "").unwrap();
    bed.stop("c1");
    bed.dying(1000, std::time::Duration::from_millis(40));
    bed.poststop("c1").unwrap();
    let files = bed.state_files();
    assert!(
        files.iter().any(|f| f.starts_with("draining/")),
        "{files:?}"
    );
    // Still dying: the sweep keeps it, and its lease.
    bed.with_stores(HOST, |s| {
        assert_eq!(
            reconcile::sweep_draining(s, reconcile::Sweep::All).unwrap(),
            0
        )
    });
    assert_eq!(bed.leases().len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(50));
    bed.with_stores(HOST, |s| {
        assert_eq!(
            reconcile::sweep_draining(s, reconcile::Sweep::All).unwrap(),
            1
        )
    });
    assert!(bed.leases().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn the_same_id_live_in_another_namespace_is_refused_and_its_poststop_changes_nothing() {
    // Defect 6: two runtimes start one id; the second setup is refused, and
    // the second runtime's poststop must not tear the first one down.
    let bed = Bed::new();
    bed.setup_in("web", 1000, "fast", "").unwrap();
    let calls = bed.calls().len();
    let e = {
        let request = Request {
            networks: vec!["fast".into()],
            ..Request::default()
        };
        bed.world
            .borrow_mut()
            .namespaces
            .insert(ns(2000), FakeNs::default());
        let ctx = Context {
            container: "web",
            host_id: HOST,
            netns: ns(2000),
            process: PathBuf::from("/proc/web-second/ns/net"),
            pid: None,
            start: None,
            pinned: None,
            request: &request,
            config: &bed.config,
            source: Source::Hook,
        };
        let mut kernel = bed.kernel(2000);
        bed.with_stores(HOST, |s| setup::setup(&ctx, &mut kernel, s).unwrap_err())
    };
    assert!(
        e.to_string()
            .contains("already wired into another live network namespace"),
        "{e}"
    );
    assert_eq!(bed.calls().len(), calls);
    assert_eq!(bed.poststop("web").unwrap(), Outcome::StillRunning);
    assert_eq!(bed.link_names(1000), ["net1"]);
    assert_eq!(bed.leases().len(), 1);
    // The first one's own poststop, after it stopped, works as ever.
    assert!(
        matches!(bed.teardown("web", true).unwrap(), Outcome::Left { released, .. } if released.len() == 1)
    );
    assert!(bed.leases().is_empty());
}

#[test]
fn leases_of_another_host_are_never_released_or_reclaimed() {
    // Defect 13: namespace keys repeat across hosts; a store shared by
    // nodes must not let one free another's lease.
    let bed = Bed::new();
    let pool = bed.config.networks["fast"].ipv4.clone().unwrap();
    let theirs = bed.with_stores("other-host", |s| {
        let holder = s.holder("4-1000", "c1");
        s.leases
            .acquire("fast", Pool::V4(&pool), &holder, None)
            .unwrap()
    });
    // The same key on this host: our teardown and reclaim leave it be.
    bed.setup_in("c1", 1000, "fast", "").unwrap();
    bed.teardown("c1", false).unwrap();
    bed.with_stores(HOST, |s| {
        assert_eq!(reconcile::reclaim("fast", s).unwrap(), 0)
    });
    let left = bed.leases();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].0, left[0].1.host.as_str()), (theirs, "other-host"));
}

/// Runs setup with failpoint `point` set to `panic`: the hook "dies" there,
/// its undo log never runs, exactly as with SIGKILL.
fn killed_setup(bed: &Bed, container: &str, ino: u64, networks: &str, point: &str) -> bool {
    failpoint::arm(point, "panic");
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        bed.setup_in(container, ino, networks, "")
    }));
    failpoint::disarm();
    result.is_err()
}

const NETWORK_POINTS: [&str; 10] = [
    "assign-nsid",
    "lease",
    "write-intent",
    "write-pointer",
    "create-link",
    "arp-notify",
    "add-address",
    "link-up",
    "add-route",
    "write-final",
];

#[test]
fn a_setup_killed_at_any_step_is_repaired_by_its_poststop() {
    // Defect 2: killed between link and records, in a namespace that
    // outlives the container; the pod's other members must still join.
    for point in NETWORK_POINTS {
        let bed = Bed::new();
        assert!(killed_setup(&bed, "victim", 1000, "fast", point), "{point}");
        bed.stop("victim");
        bed.poststop("victim")
            .unwrap_or_else(|e| panic!("{point}: poststop: {e}"));
        assert!(
            bed.link_names(1000).is_empty(),
            "{point}: {:?}",
            bed.link_names(1000)
        );
        bed.check_no_address_live_twice_or_unleased();
        // The pod's next member joins the network.
        bed.setup_in("sidecar", 1000, "fast", "")
            .unwrap_or_else(|e| panic!("{point}: the pod's next member: {e}"));
        bed.check_no_address_live_twice_or_unleased();
    }
}

#[test]
fn a_dual_stack_setup_killed_at_any_step_is_repaired_by_its_poststop() {
    for point in NETWORK_POINTS.iter().chain(&["ndisc-notify"]) {
        let bed = Bed::new();
        assert!(killed_setup(&bed, "victim", 1000, "dual", point), "{point}");
        bed.stop("victim");
        bed.poststop("victim")
            .unwrap_or_else(|e| panic!("{point}: poststop: {e}"));
        assert!(bed.link_names(1000).is_empty(), "{point}");
        bed.check_no_address_live_twice_or_unleased();
        let wired = bed
            .setup_in("sidecar", 1000, "dual", "")
            .unwrap_or_else(|e| panic!("{point}: the pod's next member: {e}"));
        assert_eq!(wired[0].addresses.len(), 2, "{point}");
        bed.check_no_address_live_twice_or_unleased();
    }
}

#[test]
fn a_setup_killed_at_any_step_is_repaired_by_the_next_setup_or_reclaim() {
    for point in NETWORK_POINTS {
        // No poststop ever comes (the runtime crashed). The pod's next
        // member cleans up what the killed setup left in the namespace.
        let bed = Bed::new();
        assert!(killed_setup(&bed, "victim", 1000, "fast", point), "{point}");
        bed.stop("victim");
        bed.setup_in("sidecar", 1000, "fast", "")
            .unwrap_or_else(|e| panic!("{point}: {e}"));
        bed.check_no_address_live_twice_or_unleased();
        assert_eq!(bed.link_names(1000), ["net1"], "{point}");

        // Or nobody else joins: the pool running dry reclaims the address
        // (the namespace lives on, but no link holds it).
        let bed = Bed::new();
        assert!(killed_setup(&bed, "victim", 1000, "fast", point), "{point}");
        bed.stop("victim");
        for (c, ino) in [("f1", 2001), ("f2", 2002), ("f3", 2003)] {
            bed.setup_in(c, ino, "fast", "")
                .unwrap_or_else(|e| panic!("{point}: {c}: {e}"));
            bed.check_no_address_live_twice_or_unleased();
        }
    }
}

#[test]
fn a_teardown_killed_anywhere_is_finished_by_the_next_one() {
    // A kill inside teardown (between link delete and release) is as if the
    // delete failed: the retry finishes.
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    bed.fail_on("delete", ebusy());
    assert!(bed.teardown("c1", true).is_err());
    bed.check_no_address_live_twice_or_unleased();
    bed.poststop("c1").unwrap();
    assert!(bed.state_files().is_empty());
}

#[test]
fn a_failed_record_write_rolls_everything_back() {
    let bed = Bed::new();
    // A directory where the namespace record's temporary goes: the record
    // cannot be written, after the lease was made.
    let blocker = bed
        .root
        .join(format!("tmp/4-1000.json.{}", std::process::id()));
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let e = bed.setup("c1", "fast").unwrap_err();
    assert_eq!(e.step, Step::WriteRecord, "{e}");
    assert!(bed.link_names(1000).is_empty());
    std::fs::remove_dir_all(&blocker).unwrap();
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_killed_second_setup_of_a_running_member_keeps_it_a_member() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    // The same running container asks for one more network; that run dies.
    assert!(killed_setup(&bed, "c1", 1000, "fast,slow", "create-link"));
    // The pod's next member reconciles the record: c1 still runs, so its
    // link stays; only the killed run's pending link went.
    bed.setup_in("c2", 1000, "fast", "").unwrap();
    assert_eq!(bed.link_names(1000), ["net1"]);
    bed.teardown("c2", true).unwrap();
    assert_eq!(bed.link_names(1000), ["net1"], "c1 still uses it");
    bed.check_no_address_live_twice_or_unleased();
}

#[test]
fn a_dead_namespaces_id_given_to_another_does_not_keep_its_lease() {
    // The kernel hands out the lowest free id: a namespace that died
    // without a poststop soon has its id on another namespace.
    let bed = Bed::new();
    bed.setup_in("a", 1000, "fast", "").unwrap();
    bed.stop("a");
    bed.destroy(1000);
    bed.world.borrow_mut().make(ns(3000));
    bed.world
        .borrow_mut()
        .namespaces
        .get_mut(&ns(3000))
        .unwrap()
        .nsid = Some(0);
    // Another container's MACVLAN, at the index a's net1 had.
    bed.kernel(3000)
        .with_ns(|n| n.links.push(someone_elses_macvlan(11, "net1", false)));
    let Outcome::Left { released, kept } = bed.poststop("a").unwrap() else {
        panic!()
    };
    assert_eq!(
        (released.len(), kept.len()),
        (1, 0),
        "a's link is not in the namespace that has the id now"
    );
    assert!(bed.leases().is_empty());
}

#[test]
fn a_later_namespace_with_a_dead_ones_number_is_left_alone() {
    // a dies without a poststop; a new namespace gets its inode number,
    // and has a MACVLAN of someone else's where a's net1 was.
    let bed = Bed::new();
    bed.setup_in("a", 1000, "fast", "").unwrap();
    bed.stop("a");
    bed.destroy(1000);
    bed.world.borrow_mut().make(ns(1000));
    bed.world
        .borrow_mut()
        .paths
        .insert(pin_path(1000), ns(1000));
    bed.kernel(1000)
        .with_ns(|n| n.links.push(someone_elses_macvlan(11, "theirs", true)));
    bed.poststop("a").unwrap();
    assert_eq!(
        bed.link_names(1000),
        ["theirs"],
        "another namespace's link was deleted"
    );
    assert!(
        bed.leases().is_empty(),
        "a's address is free: its namespace is gone"
    );
    // And a setup into the new namespace does not take the old record for its own.
    let b = bed.setup_in("b", 1000, "fast", "").unwrap();
    assert!(!b[0].shared);
    assert_eq!(bed.link_names(1000), ["theirs", "net1"]);
    assert_eq!(bed.leases().len(), 1);
}

#[test]
fn a_setup_into_a_namespace_with_a_dead_ones_number_starts_afresh() {
    // No poststop for a ever comes; the next setup into the namespace that
    // got a's number must not take a's record (and a's link) for its own.
    let bed = Bed::new();
    bed.setup_in("a", 1000, "fast", "").unwrap();
    bed.stop("a");
    bed.destroy(1000);
    bed.world.borrow_mut().make(ns(1000));
    bed.kernel(1000)
        .with_ns(|n| n.links.push(someone_elses_macvlan(11, "theirs", true)));
    let b = bed.setup_in("b", 1000, "fast", "").unwrap();
    assert!(!b[0].shared, "b was given a's link");
    assert_eq!(bed.link_names(1000), ["theirs", "net1"]);
    let leases = bed.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].1.container, "b");
}

/// A network with a host shim: four addresses, one of them the shim's.
const SHIM_CONFIG: &str = r#"
[networks.reach]
parent = "nic0"
subnet = "10.7.0.0/24"
range = "10.7.0.10-10.7.0.13"
host_shim = true

[networks.plain]
parent = "nic0"
subnet = "10.6.0.0/24"
"#;

fn shim_bed() -> Bed {
    Bed::with(SHIM_CONFIG)
}

impl Bed {
    /// The host shims: MACVLANs in the host namespace.
    fn shims(&self) -> Vec<Link> {
        let w = self.world.borrow();
        w.parents
            .values()
            .filter(|l| l.kind.as_deref() == Some("macvlan"))
            .cloned()
            .collect()
    }

    fn shim_record(&self) -> Option<shim::ShimRecord> {
        self.with_stores(HOST, |s| s.state.shim("reach").unwrap())
    }

    fn reach_leases(&self) -> Vec<(std::net::IpAddr, Holder)> {
        self.with_stores(HOST, |s| s.leases.list("reach").unwrap())
    }

    /// The shim is there exactly when `there`: one link, up, recorded
    /// (not pending) by its index, its address leased to the shim.
    fn assert_shim(&self, there: bool, when: &str) {
        let shims = self.shims();
        let record = self.shim_record();
        let shim_leases: Vec<_> = self
            .reach_leases()
            .into_iter()
            .filter(|(_, h)| h.netns == shim::HOLDER_NETNS)
            .collect();
        if !there {
            assert!(shims.is_empty(), "{when}: shim links left: {shims:?}");
            assert_eq!(record, None, "{when}: a shim record is left");
            assert!(shim_leases.is_empty(), "{when}: {shim_leases:?}");
            return;
        }
        assert_eq!(shims.len(), 1, "{when}: {shims:?}");
        let record = record.unwrap_or_else(|| panic!("{when}: no shim record"));
        assert!(!record.pending && shims[0].up, "{when}: {record:?}");
        assert_eq!(record.index, Some(shims[0].index), "{when}");
        assert_eq!(
            shim_leases,
            [(
                record.address.addr(),
                Holder {
                    host: HOST.into(),
                    netns: shim::HOLDER_NETNS.into(),
                    container: "shim:reach".into()
                }
            )],
            "{when}"
        );
    }
}

#[test]
fn a_host_shim_comes_with_the_first_attachment_and_goes_with_the_last() {
    let bed = shim_bed();
    bed.assert_shim(false, "before");
    let c1 = bed.setup_in("c1", 1000, "reach", "").unwrap();
    bed.assert_shim(true, "c1 attached");
    let record = bed.shim_record().unwrap();
    let ifname = crate::derive::shim_ifname("reach");
    assert_eq!(record.ifname, ifname);
    assert_eq!(record.address.prefix_len(), 32, "no connected route taken");
    assert_ne!(record.address.addr(), c1[0].addresses[0].addr());
    let index = record.index.unwrap();
    // The shim comes first, so the host reaches the container once wired.
    assert_eq!(
        bed.calls()[..6],
        [
            format!("host create {ifname}"),
            format!("host arp_notify {index}"),
            format!("host address {}", record.address),
            format!("host up {index}"),
            "host route 10.7.0.10/31".into(),
            "host route 10.7.0.12/31".into(),
        ]
    );
    assert_eq!(bed.calls()[6], "nsid");

    let calls = bed.calls().len();
    bed.setup_in("c2", 2000, "reach", "").unwrap();
    bed.assert_shim(true, "c2 attached");
    assert!(
        !bed.calls()[calls..].iter().any(|c| c.starts_with("host ")),
        "{:?}",
        &bed.calls()[calls..]
    );
    // A network without host_shim makes none, and its teardown keeps it.
    bed.setup_in("c3", 3000, "plain", "").unwrap();
    bed.teardown("c3", false).unwrap();
    bed.assert_shim(true, "a plain container came and went");

    bed.teardown("c1", false).unwrap();
    bed.assert_shim(true, "c2 still attached");
    bed.teardown("c2", true).unwrap();
    bed.assert_shim(false, "after the last detach");
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_pod_keeps_its_shim_until_its_link_goes() {
    let bed = shim_bed();
    bed.setup("infra", "reach").unwrap();
    bed.setup("app", "reach").unwrap();
    bed.teardown("infra", true).unwrap();
    bed.assert_shim(true, "app still uses the pod's link");
    bed.teardown("app", true).unwrap();
    bed.assert_shim(false, "the pod's link is gone");
}

/// The shim steps, as failpoints and as host calls, with their step.
const SHIM_POINTS: [(&str, &str, shim::ShimStep); 8] = [
    ("shim-lease", "", shim::ShimStep::Lease),
    ("shim-write-intent", "", shim::ShimStep::WriteRecord),
    ("shim-create", "host create", shim::ShimStep::CreateLink),
    (
        "shim-arp-notify",
        "host arp_notify",
        shim::ShimStep::ArpNotify,
    ),
    (
        "shim-add-address",
        "host address",
        shim::ShimStep::AddAddress,
    ),
    ("shim-link-up", "host up", shim::ShimStep::LinkUp),
    (
        "shim-add-route",
        "host route 10.7.0.12",
        shim::ShimStep::AddRoute,
    ),
    ("shim-write-final", "", shim::ShimStep::WriteRecord),
];

#[test]
fn every_shim_step_failure_rolls_back_the_shim_and_the_container() {
    for (point, call, step) in SHIM_POINTS {
        let mut ways = vec![(Some(point), None)];
        if !call.is_empty() {
            ways.push((None, Some(call)));
        }
        for (point, call) in ways {
            let what = point.or(call).unwrap();
            let bed = shim_bed();
            if let Some(point) = point {
                failpoint::arm(point, "error");
            }
            if let Some(call) = call {
                bed.fail_on(call, ebusy());
            }
            let e = bed.setup("c1", "reach").unwrap_err();
            failpoint::disarm();
            assert_eq!(e.step, Step::Shim(step), "{what}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("network reach: {}: ", step.name())),
                "{e}"
            );
            assert!(e.rollback.is_empty(), "{what}: {e}");
            bed.assert_shim(false, what);
            assert!(bed.link_names(1000).is_empty(), "{what}");
            assert!(
                bed.state_files().is_empty(),
                "{what}: {:?}",
                bed.state_files()
            );
        }
    }
    // A container step failing after its shim was made takes the shim too,
    for (call, step) in [("create net1", Step::CreateLink), ("up", Step::LinkUp)] {
        let bed = shim_bed();
        bed.fail_on(call, ebusy());
        let e = bed.setup("c1", "reach").unwrap_err();
        assert_eq!(e.step, step, "{e}");
        assert!(e.rollback.is_empty(), "{e}");
        bed.assert_shim(false, call);
        assert!(bed.link_names(1000).is_empty());
        assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
    }
    // ... unless another container is attached: then it stays.
    let bed = shim_bed();
    bed.setup_in("c1", 1000, "reach", "").unwrap();
    bed.fail_on("create net1", ebusy());
    bed.setup_in("c2", 2000, "reach", "").unwrap_err();
    bed.assert_shim(true, "c1 still attached");
    assert_eq!(bed.reach_leases().len(), 2, "the shim's and c1's");
}

#[test]
fn a_run_killed_at_any_shim_step_is_repaired_by_the_next_converge() {
    for (point, _, _) in SHIM_POINTS {
        // Its own poststop (no record of the container: every shim network
        // is converged) removes what the killed run made.
        let bed = shim_bed();
        assert!(
            killed_setup(&bed, "victim", 1000, "reach", point),
            "{point}"
        );
        bed.teardown("victim", false)
            .unwrap_or_else(|e| panic!("{point}: {e}"));
        bed.assert_shim(false, point);
        assert!(
            bed.state_files().is_empty(),
            "{point}: {:?}",
            bed.state_files()
        );

        // Or the next setup on the network finds the pending record and
        // makes the shim again, once, on the same address if it can.
        let bed = shim_bed();
        assert!(
            killed_setup(&bed, "victim", 1000, "reach", point),
            "{point}"
        );
        bed.stop("victim");
        bed.setup_in("next", 2000, "reach", "")
            .unwrap_or_else(|e| panic!("{point}: {e}"));
        bed.assert_shim(true, point);
        assert_eq!(
            bed.reach_leases().len(),
            2,
            "{point}: {:?}",
            bed.reach_leases()
        );
        bed.poststop("victim").unwrap();
        bed.assert_shim(true, point);
        bed.teardown("next", false).unwrap();
        bed.assert_shim(false, point);
        assert!(
            bed.state_files().is_empty(),
            "{point}: {:?}",
            bed.state_files()
        );
    }
    // A kill while deleting the shim: the next converge finishes.
    let bed = shim_bed();
    bed.setup("c1", "reach").unwrap();
    failpoint::arm("shim-delete", "panic");
    let killed = std::panic::catch_unwind(AssertUnwindSafe(|| bed.teardown("c1", false)));
    failpoint::disarm();
    assert!(killed.is_err());
    bed.with_stores(HOST, |s| {
        shim::converge_all_with(&bed.config, &mut FakeHost(bed.world.clone()), s).unwrap()
    });
    bed.assert_shim(false, "converged after a kill at shim-delete");
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn reclaim_never_frees_the_shims_lease() {
    let bed = shim_bed();
    for (c, ino) in [("c1", 1000), ("c2", 2000), ("c3", 3000)] {
        bed.setup_in(c, ino, "reach", "").unwrap();
    }
    bed.assert_shim(true, "three attached");
    // The pool (four addresses) is dry: the fourth container's setup
    // reclaims, and must not take the shim's address.
    let e = bed.setup_in("c4", 4000, "reach", "").unwrap_err();
    assert_eq!(e.step, Step::LeaseAddress, "{e}");
    bed.with_stores(HOST, |s| {
        assert_eq!(reconcile::reclaim("reach", s).unwrap(), 0)
    });
    bed.assert_shim(true, "after reclaim");
    // Nor may a container ask for it.
    let shim_address = bed.shim_record().unwrap().address.addr();
    bed.teardown("c3", false).unwrap();
    let e = bed
        .setup_in("c4", 4000, "reach", &format!("reach={shim_address}"))
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("network reach: validate: {shim_address} is taken by container shim:reach")
    );
    bed.assert_shim(true, "after a request for its address");
}

#[test]
fn a_shim_that_vanished_or_whose_name_is_taken() {
    // Someone deletes the shim: the next setup makes it again.
    let bed = shim_bed();
    bed.setup_in("c1", 1000, "reach", "").unwrap();
    bed.world
        .borrow_mut()
        .parents
        .retain(|_, l| l.kind.as_deref() != Some("macvlan"));
    bed.setup_in("c2", 2000, "reach", "").unwrap();
    bed.assert_shim(true, "remade");

    // A link of someone else's has the shim's name: refused, nothing made.
    let bed = shim_bed();
    let ifname = crate::derive::shim_ifname("reach");
    bed.world
        .borrow_mut()
        .parents
        .insert(ifname.clone(), someone_elses_macvlan(99, &ifname, true));
    let e = bed.setup("c1", "reach").unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("network reach: host shim: check: interface {ifname} already exists in the host's network namespace and no shim record names it: it is not nsbypass's (remove it, or turn host_shim off)")
    );
    assert_eq!(bed.shims().len(), 1, "theirs is left alone");
    assert!(bed.link_names(1000).is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_network_whose_host_shim_is_turned_off_loses_its_shim_at_converge() {
    let bed = shim_bed();
    bed.setup("c1", "reach").unwrap();
    let off = Config::parse(
        &SHIM_CONFIG.replace("host_shim = true", ""),
        Path::new("/etc/nsbypass/config.toml"),
    )
    .unwrap();
    bed.with_stores(HOST, |s| {
        shim::converge_all_with(&off, &mut FakeHost(bed.world.clone()), s).unwrap()
    });
    bed.assert_shim(false, "host_shim turned off");
    assert_eq!(
        bed.link_names(1000),
        ["net1"],
        "the container keeps its link"
    );
}

#[test]
fn max_links_refuses_the_next_link_and_creates_nothing() {
    let bed = Bed::with(&format!("{CONFIG}\n[parents.nic0]\nmax_links = 2\n"));
    bed.setup_in("c1", 2001, "fast", "").unwrap();
    bed.setup_in("c2", 2002, "l2", "").unwrap();
    let e = bed
        .setup_in("c3", 2003, "slow", "")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "network slow: validate: parent nic0 holds 2 nsbypass links and its max_links is 2 ([parents.nic0] in /etc/nsbypass/config.toml): detach one or raise the limit"
    );
    assert!(bed.link_names(2003).is_empty());
    assert_eq!(bed.leases().len(), 1, "only c1's lease: {:?}", bed.leases());
    // Two links in one request count as two.
    bed.destroy(2002);
    let e = bed.setup_in("c4", 2004, "slow,l2", "").unwrap_err();
    assert!(e.to_string().contains("holds 1 nsbypass links"), "{e}");
    // A namespace that is gone no longer counts: its record is pruned.
    bed.setup_in("c3", 2003, "slow", "").unwrap();
    bed.check_no_address_live_twice_or_unleased();
}

#[test]
fn gc_frees_what_killed_setups_and_gone_namespaces_left_and_nothing_live() {
    for point in NETWORK_POINTS {
        let bed = Bed::new();
        bed.setup_in("live", 2001, "fast", "").unwrap();
        assert!(killed_setup(&bed, "victim", 2002, "fast", point), "{point}");
        bed.setup_in("gone", 2003, "fast", "").unwrap();
        bed.destroy(2003);
        bed.destroy(2002);
        let collected = bed
            .with_stores(HOST, |s| reconcile::collect(s, &["fast"]))
            .unwrap();
        assert!(collected.failures.is_empty(), "{point}");
        assert_eq!(collected.live_links, 1, "{point}");
        let leases = bed.leases();
        assert_eq!(leases.len(), 1, "{point}: {leases:?}");
        assert_eq!(leases[0].1.container, "live", "{point}");
        assert_eq!(bed.link_names(2001), ["net1"], "{point}");
        let files = bed.state_files();
        assert!(
            !files
                .iter()
                .any(|f| f.contains("victim") || f.contains("gone")),
            "{point}: {files:?}"
        );
        bed.check_no_address_live_twice_or_unleased();
    }
}

#[test]
fn detach_removes_a_member_that_still_runs() {
    let bed = Bed::new();
    bed.setup_in("c1", 2001, "fast", "").unwrap();
    let outcome = bed
        .with_stores(HOST, |s| {
            teardown::leave("c1", s, teardown::Leaving::Detached, teardown::Look::Full)
        })
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Left { released, .. } if released.len() == 1),
        "{outcome:?}"
    );
    assert!(bed.link_names(2001).is_empty());
    assert!(bed.leases().is_empty());
}

#[test]
fn a_host_shim_counts_against_max_links() {
    let bed = Bed::with(&format!("{SHIM_CONFIG}\n[parents.nic0]\nmax_links = 2\n"));
    bed.setup_in("c1", 2001, "reach", "").unwrap();
    bed.assert_shim(true, "c1 attached");
    let e = bed.setup_in("c2", 2002, "plain", "").unwrap_err();
    assert!(
        e.to_string().contains("holds 2 nsbypass links"),
        "the shim and c1's link: {e}"
    );
    bed.destroy(2001);
    // c1's namespace is gone: pruning frees its link, converging its shim.
    let e = bed.setup_in("c3", 2003, "reach", "").map(|_| ());
    assert!(e.is_ok(), "{e:?}");
    bed.assert_shim(true, "c3 attached");
}

#[test]
fn a_shim_whose_host_shim_was_turned_off_goes_at_the_last_poststop() {
    let mut bed = shim_bed();
    bed.setup("c1", "reach").unwrap();
    bed.config = Config::parse(
        &SHIM_CONFIG.replace("host_shim = true", ""),
        Path::new("/etc/nsbypass/config.toml"),
    )
    .unwrap();
    bed.teardown("c1", false).unwrap();
    bed.assert_shim(false, "host_shim turned off, last poststop");
}

#[test]
fn pruning_for_max_links_does_not_count_a_killed_runs_shim() {
    let bed = Bed::with(&format!("{SHIM_CONFIG}\n[parents.nic0]\nmax_links = 2\n"));
    assert!(killed_setup(&bed, "victim", 2001, "reach", "shim-create"));
    bed.destroy(2001);
    bed.setup_in("c2", 2002, "plain", "").unwrap();
    // The killed run's pending shim record is not a live link.
    bed.setup_in("c3", 2003, "plain", "").unwrap();
}

/// A request for `networks` from a Kubernetes pod `pod` (`NAMESPACE/NAME`),
/// as CRI-O's annotations make it.
fn pod_request(networks: &str, pod: &str) -> Request {
    Request {
        networks: networks.split(',').map(str::to_owned).collect(),
        namespace: pod.split_once('/').map(|(ns, _)| ns.to_owned()),
        pod: Some(pod.to_owned()),
        ..Request::default()
    }
}

fn pod_mac(pod: &str, network: &str) -> String {
    format_mac(&crate::derive::mac(HOST, pod, network))
}

#[test]
fn a_re_created_pod_gets_its_mac_and_address_back_even_before_the_old_poststop() {
    let bed = Bed::new();
    // slow's pool is large: its address comes back by derivation, not by
    // chance.
    let web = pod_request("fast,slow", "trading/web-0");
    // Another pod takes a slot first, so that the address is not just the
    // pool's first.
    bed.setup_request("other", 3000, &pod_request("fast", "trading/db-0"))
        .unwrap();
    let first = bed.setup_request("c1", 1000, &web).unwrap();
    assert_eq!(first[0].mac, pod_mac("trading/web-0", "fast"));
    assert_ne!(
        first[0].mac,
        format_mac(&crate::derive::mac(HOST, "c1", "fast")),
        "the pod's MAC, not the container's"
    );
    // CRI-O stops the pod (its namespace is unpinned and goes) but runs
    // poststop only when it removes it; the pod is re-created meanwhile
    // with new container ids in a new namespace.
    bed.stop("c1");
    bed.destroy(1000);
    let again = bed.setup_request("c2", 2000, &web).unwrap();
    for (a, f) in again.iter().zip(&first) {
        assert_eq!(
            (&a.mac, &a.addresses),
            (&f.mac, &f.addresses),
            "{}",
            a.network
        );
    }
    let holders: Vec<String> = bed.leases().iter().map(|(_, h)| h.netns.clone()).collect();
    assert_eq!(holders.len(), 2, "{holders:?}");
    assert!(!holders.contains(&ns(1000).key()), "{holders:?}");
    bed.check_no_address_live_twice_or_unleased();
    // The old pod's poststop, when it comes, finds nothing to do and
    // leaves the new one alone.
    assert!(matches!(bed.poststop("c1").unwrap(), Outcome::Left { .. }));
    assert_eq!(bed.link_names(2000), ["net1", "net2"]);
    assert_eq!(bed.leases().len(), 2);
    // Its next incarnation, after a proper poststop, is the same again.
    bed.teardown("c2", false).unwrap();
    let third = bed.setup_request("c3", 4000, &web).unwrap();
    for (t, f) in third.iter().zip(&first) {
        assert_eq!(
            (&t.mac, &t.addresses),
            (&f.mac, &f.addresses),
            "{}",
            t.network
        );
    }
}

#[test]
fn a_pod_whose_earlier_namespace_lives_on_gets_its_containers_mac_and_another_address() {
    let bed = Bed::new();
    let web = pod_request("fast", "trading/web-0");
    let first = bed.setup_request("c1", 1000, &web).unwrap();
    // The old sandbox still runs (a force-deleted pod), or someone set the
    // same pod annotations on a second container.
    let second = bed.setup_request("c2", 2000, &web).unwrap();
    assert_eq!(
        second[0].mac,
        format_mac(&crate::derive::mac(HOST, "c2", "fast"))
    );
    assert_ne!(second[0].addresses, first[0].addresses);
    bed.check_no_address_live_twice_or_unleased();
    // Once both are gone, the pod's MAC is free again.
    bed.teardown("c1", false).unwrap();
    bed.teardown("c2", false).unwrap();
    let third = bed.setup_request("c3", 3000, &web).unwrap();
    assert_eq!(third[0].mac, first[0].mac);
    assert!(bed.state_files().iter().any(|f| f.starts_with("pods/")));
    bed.teardown("c3", false).unwrap();
    assert_eq!(
        bed.state_files(),
        Vec::<String>::new(),
        "the pod index goes with the last record naming it"
    );
}

#[test]
fn a_pods_earlier_namespace_still_dying_is_waited_for() {
    let bed = Bed::new();
    let web = pod_request("fast", "trading/web-0");
    let first = bed.setup_request("c1", 1000, &web).unwrap();
    bed.stop("c1");
    bed.dying(1000, std::time::Duration::from_millis(30));
    // Poststop came while the kernel was destroying it: it drains.
    match bed.poststop("c1").unwrap() {
        Outcome::Left { kept, .. } => assert_eq!(kept.len(), 1),
        other => panic!("{other:?}"),
    }
    let again = bed.setup_request("c2", 2000, &web).unwrap();
    assert_eq!(
        (&again[0].mac, &again[0].addresses),
        (&first[0].mac, &first[0].addresses)
    );
    assert!(!bed
        .state_files()
        .iter()
        .any(|f| f.contains(&ns(1000).key())));
    bed.check_no_address_live_twice_or_unleased();
}

#[test]
fn gc_forgets_a_pod_index_entry_no_record_backs() {
    let bed = Bed::new();
    bed.setup_request("c1", 1000, &pod_request("fast", "trading/web-0"))
        .unwrap();
    // The record goes another way than put_netns (a killed run, a hand).
    std::fs::remove_file(bed.root.join(format!("netns/{}.json", ns(1000).key()))).unwrap();
    bed.with_stores(HOST, |s| reconcile::collect(s, &["fast"]).unwrap());
    assert!(
        !bed.state_files().iter().any(|f| f.starts_with("pods/")),
        "{:?}",
        bed.state_files()
    );
}

impl Bed {
    /// Whether the world or the records break the MAC rule the pod
    /// identity must keep: one MAC up twice on a parent (the kernel would
    /// refuse the second), or one MAC held by two namespace records (the
    /// census would take the gone one's for living).
    fn check_no_mac_twice(&self) {
        let mut held: Vec<(String, String, String)> = Vec::new();
        self.with_stores(HOST, |s| {
            for key in s.state.netns_keys().unwrap() {
                for link in s
                    .state
                    .netns(&key)
                    .unwrap()
                    .into_iter()
                    .flat_map(|r| r.links)
                {
                    held.push((link.parent, link.mac, key.clone()));
                }
            }
        });
        let mut macs: Vec<(&str, &str)> = held
            .iter()
            .map(|(p, m, _)| (p.as_str(), m.as_str()))
            .collect();
        let before = macs.len();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), before, "one MAC in two records: {held:?}");
        let w = self.world.borrow();
        let mut up: Vec<String> = w
            .namespaces
            .values()
            .flat_map(|n| &n.links)
            .filter(|l| l.up)
            .filter_map(|l| l.mac.map(|m| format_mac(&m)))
            .collect();
        let before = up.len();
        up.sort();
        up.dedup();
        assert_eq!(up.len(), before, "one MAC up twice on the parent: {up:?}");
    }
}

/// Sets `container` up in `ino` for `request` with failpoint `point` set to
/// `panic`: the hook "dies" there, as with SIGKILL.
fn killed_pod_setup(bed: &Bed, container: &str, ino: u64, request: &Request, point: &str) -> bool {
    failpoint::arm(point, "panic");
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        bed.setup_request(container, ino, request)
    }));
    failpoint::disarm();
    result.is_err()
}

#[test]
fn a_re_created_pods_setup_killed_at_any_step_leaves_the_pod_its_mac_and_address() {
    // The pod's earlier incarnation is stopped but not removed (its index
    // entry names it), so the killed setup has moved the index and freed
    // the old lease before it died: whatever repairs the kill, the pod's
    // next setup gets the pod's MAC and address, and no MAC is ever held
    // twice.
    for point in NETWORK_POINTS {
        for repair in ["poststop", "gc", "none", "sibling"] {
            let what = format!("{point}, then {repair}");
            let bed = Bed::new();
            let web = pod_request("fast", "trading/web-0");
            let first = bed.setup_request("c1", 1000, &web).unwrap();
            bed.stop("c1");
            bed.destroy(1000);
            assert!(
                killed_pod_setup(&bed, "victim", 2000, &web, point),
                "{what}"
            );
            bed.stop("victim");
            bed.check_no_mac_twice();
            let (next, ino) = match repair {
                "poststop" => {
                    bed.poststop("victim")
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    // And what the node's poststop does after teardown
                    // (Node::leave_locked): a claim's leases go.
                    bed.with_stores(HOST, |s| {
                        if s.state.has_claim("victim").unwrap() {
                            reconcile::release_unaccounted("fast", "victim", s).unwrap();
                            s.state.remove_claim("victim").unwrap();
                        }
                    });
                    bed.destroy(2000);
                    ("c3", 3000)
                }
                "gc" => {
                    bed.destroy(2000);
                    let collected = bed.with_stores(HOST, |s| reconcile::collect(s, &["fast"]));
                    let collected = collected.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(collected.failures.is_empty(), "{what}");
                    ("c3", 3000)
                }
                // The sandbox went (StopPodSandbox), nothing else ran.
                "none" => {
                    bed.destroy(2000);
                    ("c3", 3000)
                }
                // The kubelet retries the container in the same sandbox.
                _ => ("c3", 2000),
            };
            let again = bed
                .setup_request(next, ino, &web)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(again[0].mac, first[0].mac, "{what}");
            // A lease only a killed setup's claim accounts for (killed
            // between its lease and its record) is held until that
            // setup's poststop, gc or a dry pool: without those the
            // address may be another. Every other kill left a record,
            // which the pod's next setup settles.
            let orphan_lease = point == "write-intent";
            if matches!(repair, "poststop" | "gc") || (repair == "none" && !orphan_lease) {
                assert_eq!(again[0].addresses, first[0].addresses, "{what}");
            }
            bed.check_no_mac_twice();
            bed.check_no_address_live_twice_or_unleased();
            // Everything removed, in any order: nothing is left.
            for c in ["c1", "victim", next] {
                bed.poststop(c)
                    .unwrap_or_else(|e| panic!("{what}: {c}: {e}"));
            }
            bed.destroy(ino);
            bed.poststop(next).unwrap();
            bed.with_stores(HOST, |s| reconcile::collect(s, &["fast"]).unwrap());
            assert_eq!(bed.state_files(), Vec::<String>::new(), "{what}");
        }
    }
}

#[test]
fn a_re_created_pods_setup_failing_at_any_step_rolls_the_pod_index_back() {
    for point in NETWORK_POINTS {
        let bed = Bed::new();
        let web = pod_request("fast", "trading/web-0");
        let first = bed.setup_request("c1", 1000, &web).unwrap();
        bed.stop("c1");
        bed.destroy(1000);
        failpoint::arm(point, "error");
        let e = bed.setup_request("c2", 2000, &web).unwrap_err();
        failpoint::disarm();
        assert!(e.rollback.is_empty(), "{point}: {e}");
        assert!(bed.link_names(2000).is_empty(), "{point}");
        bed.check_no_mac_twice();
        // The pod index names no namespace whose record holds nothing.
        let files = bed.state_files();
        assert!(
            !files.iter().any(|f| f.contains(&ns(2000).key())),
            "{point}: {files:?}"
        );
        // The next try, in the same sandbox, is the pod again.
        let again = bed.setup_request("c3", 2000, &web).unwrap();
        assert_eq!(
            (&again[0].mac, &again[0].addresses),
            (&first[0].mac, &first[0].addresses),
            "{point}"
        );
        bed.check_no_address_live_twice_or_unleased();
    }
}

#[test]
fn a_pods_first_container_re_created_beside_the_second_keeps_the_pods_link() {
    // No infra container: c1 made the link, c2 shares it; c1 is removed
    // and re-created (a crash, a restart) while c2 keeps the namespace.
    let bed = Bed::new();
    let web = pod_request("fast", "trading/web-0");
    let first = bed.setup_request("c1", 1000, &web).unwrap();
    assert!(bed.setup_request("c2", 1000, &web).unwrap()[0].shared);
    bed.teardown("c1", true).unwrap();
    assert_eq!(bed.link_names(1000), ["net1"]);
    let again = bed.setup_request("c1b", 1000, &web).unwrap();
    assert!(again[0].shared);
    assert_eq!(
        (&again[0].mac, &again[0].addresses),
        (&first[0].mac, &first[0].addresses)
    );
    // Now c2 goes and comes back while c1b holds it: still the pod's.
    bed.teardown("c2", true).unwrap();
    let c2 = bed.setup_request("c2b", 1000, &web).unwrap();
    assert_eq!(c2[0].mac, first[0].mac);
    bed.check_no_mac_twice();
    // Both gone, the namespace pinned: the link goes; a re-created member
    // in the same sandbox makes it again with the pod's MAC and address.
    bed.teardown("c1b", true).unwrap();
    bed.teardown("c2b", true).unwrap();
    assert!(bed.link_names(1000).is_empty());
    let c3 = bed.setup_request("c3", 1000, &web).unwrap();
    assert!(!c3[0].shared);
    assert_eq!(
        (&c3[0].mac, &c3[0].addresses),
        (&first[0].mac, &first[0].addresses)
    );
    bed.check_no_mac_twice();
    bed.check_no_address_live_twice_or_unleased();
}

#[test]
fn forged_pod_annotations_never_take_a_living_pods_mac_or_address() {
    // A podman container given another pod's annotations by hand, while
    // that pod lives: reachable, out of reach (its pin gone, a process
    // keeps it), or dying for longer than setup waits.
    for how in ["reachable", "unreachable", "dying"] {
        let bed = Bed::new();
        let web = pod_request("fast", "trading/web-0");
        let real = bed.setup_request("real", 1000, &web).unwrap();
        match how {
            "unreachable" => {
                bed.unpin(1000);
                bed.world.borrow_mut().discoverable.clear();
            }
            "dying" => {
                bed.stop("real");
                bed.dying(1000, std::time::Duration::from_secs(5));
            }
            _ => {}
        }
        let forged = bed.setup_request("forger", 2000, &web).unwrap();
        assert_ne!(forged[0].mac, real[0].mac, "{how}");
        assert_ne!(forged[0].addresses, real[0].addresses, "{how}");
        bed.check_no_mac_twice();
        assert_eq!(bed.link_names(1000), ["net1"], "{how}");
    }
}

#[test]
fn a_kill_while_a_pods_last_record_goes_never_leaves_it_unindexed() {
    // The pod's container leaves, its pinned namespace lives on: the link
    // goes, then the empty record and the pod index entry naming it. A
    // kill between those two removals must not leave a record holding
    // the pod's MACs that the index no longer names, or the pod's next
    // incarnation takes them while that record still does, and the census
    // takes the gone namespace for dying as long as the new one lives.
    let bed = Bed::new();
    let web = pod_request("fast", "trading/web-0");
    let first = bed.setup_request("c1", 1000, &web).unwrap();
    failpoint::arm("remove-record", "panic");
    let killed = std::panic::catch_unwind(AssertUnwindSafe(|| bed.teardown("c1", true)));
    failpoint::disarm();
    assert!(killed.is_err(), "the failpoint is reached");
    let (index, record) = bed.with_stores(HOST, |s| {
        (
            s.state.pod("trading/web-0").unwrap(),
            s.state.netns(&ns(1000).key()).unwrap(),
        )
    });
    if record.is_some_and(|r| r.links.iter().any(|l| l.mac == first[0].mac)) {
        assert_eq!(
            index.map(|i| i.netns),
            Some(ns(1000).key()),
            "a record holds the pod's MAC unindexed"
        );
    }
    // The sandbox goes without anything else running; the pod comes back.
    bed.destroy(1000);
    let again = bed.setup_request("c2", 2000, &web).unwrap();
    assert_eq!(again[0].mac, first[0].mac);
    bed.check_no_mac_twice();
    // gc repairs the rest: nothing of the old namespace is left.
    let collected = bed.with_stores(HOST, |s| reconcile::collect(s, &["fast"]).unwrap());
    assert!(collected.failures.is_empty());
    let files = bed.state_files();
    assert!(
        !files.iter().any(|f| f.contains(&ns(1000).key())),
        "{files:?}"
    );
}

#[test]
fn gc_removes_a_misnamed_pod_index_file_and_never_the_pods_own() {
    let bed = Bed::new();
    let web = pod_request("fast", "trading/web-0");
    let first = bed.setup_request("c1", 1000, &web).unwrap();
    // A file under another name that says it is web-0's, naming a
    // namespace without a record (a hand's, a mangled copy).
    let planted = bed.root.join("pods/00000000000000000000000000000000.json");
    std::fs::write(&planted, r#"{"pod":"trading/web-0","netns":"4-9999"}"#).unwrap();
    let collected = bed.with_stores(HOST, |s| reconcile::collect(s, &["fast"]).unwrap());
    assert!(collected.failures.is_empty());
    assert!(!planted.exists(), "the misnamed file goes");
    let index = bed.with_stores(HOST, |s| s.state.pod("trading/web-0").unwrap());
    assert_eq!(
        index.map(|i| i.netns),
        Some(ns(1000).key()),
        "the pod's own entry stays"
    );
    // So the pod's next incarnation, while the first lives, does not take
    // its MAC.
    let second = bed.setup_request("c2", 2000, &web).unwrap();
    assert_ne!(second[0].mac, first[0].mac);
    bed.check_no_mac_twice();
}
