//! Setup and teardown logic against a fake kernel: every step's rollback,
//! pod sharing, idempotence, teardown without a namespace. The real kernel
//! is exercised end to end in tests/e2e.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nsutil::netlink::Link;
use nsutil::ns::NetnsId;
use runtime_config::{Config, Request};

use crate::failure::{Failure, Step};
use crate::kernel::{Kernel, MacvlanSpec, Reach};
use crate::lease::{FileLeases, LeaseStore};
use crate::records::StateDir;
use crate::setup::{self, Context, Stores, Wired};
use crate::teardown;

/// One container namespace plus the host's parents, as the fake sees them.
#[derive(Default)]
struct FakeNs {
    parents: BTreeMap<String, Link>,
    links: Vec<Link>,
    /// Every mutating call, in order, e.g. "create net1", "route 10.2.0.0/16".
    calls: Vec<String>,
    /// Armed failures: the first call starting with a prefix fails with its errno, once.
    fail: Vec<(String, i32)>,
    next_index: u32,
}

#[derive(Clone)]
struct FakeKernel(Rc<RefCell<FakeNs>>);

impl FakeKernel {
    fn new() -> FakeKernel {
        let mut ns = FakeNs {
            next_index: 10,
            ..FakeNs::default()
        };
        for (index, name, up) in [(2, "nic0", true), (3, "down0", false)] {
            ns.parents.insert(
                name.into(),
                Link {
                    index,
                    name: name.into(),
                    mtu: 1500,
                    up,
                    mac: Some([0, 1, 2, 3, 4, index as u8]),
                    kind: Some("veth".into()),
                },
            );
        }
        FakeKernel(Rc::new(RefCell::new(ns)))
    }

    fn fail_on(&self, call: &str, errno: i32) {
        self.0.borrow_mut().fail.push((call.into(), errno));
    }

    fn link_names(&self) -> Vec<String> {
        self.0
            .borrow()
            .links
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    fn calls(&self) -> Vec<String> {
        self.0.borrow().calls.clone()
    }

    /// Records `call`, failing it if it is the armed failure.
    fn call(&self, call: String) -> nsutil::Result<()> {
        let mut ns = self.0.borrow_mut();
        if let Some(armed) = ns
            .fail
            .iter()
            .position(|(prefix, _)| call.starts_with(prefix.as_str()))
        {
            let (_, errno) = ns.fail.remove(armed);
            return Err(nsutil::Error::new(
                call,
                std::io::Error::from_raw_os_error(errno),
            ));
        }
        ns.calls.push(call);
        Ok(())
    }
}

impl Kernel for FakeKernel {
    fn host_link(&mut self, name: &str) -> nsutil::Result<Option<Link>> {
        Ok(self.0.borrow().parents.get(name).cloned())
    }

    fn link(&mut self, name: &str) -> nsutil::Result<Option<Link>> {
        Ok(self
            .0
            .borrow()
            .links
            .iter()
            .find(|l| l.name == name)
            .cloned())
    }

    fn links(&mut self) -> nsutil::Result<Vec<Link>> {
        Ok(self.0.borrow().links.clone())
    }

    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> nsutil::Result<Link> {
        self.call(format!("create {}", spec.name))?;
        let mut ns = self.0.borrow_mut();
        ns.next_index += 1;
        let link = Link {
            index: ns.next_index,
            name: spec.name.clone(),
            mtu: spec.mtu.unwrap_or(1500),
            up: false,
            mac: Some(spec.mac),
            kind: Some("macvlan".into()),
        };
        ns.links.push(link.clone());
        Ok(link)
    }

    fn rename(&mut self, index: u32, name: &str) -> nsutil::Result<()> {
        self.call(format!("rename {name}"))?;
        let mut ns = self.0.borrow_mut();
        let link = ns.links.iter_mut().find(|l| l.index == index).unwrap();
        link.name = name.into();
        Ok(())
    }

    fn delete(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("delete {index}"))?;
        self.0.borrow_mut().links.retain(|l| l.index != index);
        Ok(())
    }

    fn arp_notify(&mut self, ifname: &str) -> nsutil::Result<()> {
        self.call(format!("arp_notify {ifname}"))
    }

    fn add_address(&mut self, _: u32, address: ipnet::IpNet) -> nsutil::Result<()> {
        self.call(format!("address {address}"))
    }

    fn set_up(&mut self, index: u32) -> nsutil::Result<()> {
        self.call(format!("up {index}"))
    }

    fn add_route(
        &mut self,
        _: u32,
        destination: ipnet::Ipv4Net,
        gateway: std::net::Ipv4Addr,
    ) -> nsutil::Result<()> {
        self.call(format!("route {destination} via {gateway}"))
    }
}

/// Which fake "/proc/<container>/ns/net" paths lead to which namespace now.
type Live = Rc<RefCell<BTreeMap<PathBuf, NetnsId>>>;

/// Teardown's and pruning's way back in: a path leads to a namespace while
/// its container "runs"; entering any live namespace yields the fake kernel.
struct FakeReach {
    kernel: FakeKernel,
    live: Live,
}

impl Reach for FakeReach {
    fn leads_to(&mut self, path: &Path, id: NetnsId) -> bool {
        self.live.borrow().get(path) == Some(&id)
    }

    fn enter(&mut self, path: &Path, id: NetnsId) -> nsutil::Result<Option<Box<dyn Kernel>>> {
        Ok(self
            .leads_to(path, id)
            .then(|| Box::new(self.kernel.clone()) as Box<dyn Kernel>))
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
"#;

struct Bed {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: Config,
    kernel: FakeKernel,
    live: Live,
}

/// A container init's path to its namespace: live while the container runs.
fn member_path(container: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{container}/ns/net"))
}

/// A pinned path to namespace `ino` (like /run/netns/X, or CRI-O's pod
/// sandbox): live while the namespace exists, with or without members.
fn pin_path(ino: u64) -> PathBuf {
    PathBuf::from(format!("/run/netns/ns{ino}"))
}

impl Bed {
    fn new() -> Bed {
        let dir = tempfile::TempDir::new().unwrap();
        let root = dir.path().join("state");
        let config = Config::parse(CONFIG, Path::new("/etc/nsbypass/config.toml")).unwrap();
        Bed {
            _dir: dir,
            root,
            config,
            kernel: FakeKernel::new(),
            live: Live::default(),
        }
    }

    fn reach(&self) -> FakeReach {
        FakeReach {
            kernel: self.kernel.clone(),
            live: self.live.clone(),
        }
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
            request.addresses.insert(n.into(), a.parse().unwrap());
        }
        let netns = NetnsId { dev: 4, ino };
        // The namespace exists and the container's init runs in it.
        self.live.borrow_mut().insert(pin_path(ino), netns);
        self.live.borrow_mut().insert(member_path(container), netns);
        let ctx = Context {
            container,
            host_id: "test-host",
            netns,
            process: member_path(container),
            pinned: Some(pin_path(ino)),
            request: &request,
            config: &self.config,
        };
        let state = StateDir::lock(&self.root).unwrap();
        let mut leases = state.leases();
        let mut kernel = self.kernel.clone();
        let mut reach = self.reach();
        let mut stores = Stores {
            state: &state,
            leases: &mut leases,
            reach: &mut reach,
        };
        setup::setup(&ctx, &mut kernel, &mut stores)
    }

    fn setup(&self, container: &str, networks: &str) -> Result<Vec<Wired>, Failure> {
        self.setup_in(container, 1000, networks, "")
    }

    /// The container's processes are gone (its namespace may live on).
    fn stop(&self, container: &str) {
        self.live.borrow_mut().remove(&member_path(container));
    }

    /// Stops `container` and runs its poststop. With `namespace_alive`, the
    /// namespace outlives it (pinned); without, it is gone, and so are the
    /// fake's links, as the kernel would do.
    fn teardown(
        &self,
        container: &str,
        namespace_alive: bool,
    ) -> Result<Option<Vec<teardown::Released>>, Failure> {
        self.stop(container);
        if !namespace_alive {
            self.live.borrow_mut().clear();
            self.kernel.0.borrow_mut().links.clear();
        }
        let state = StateDir::lock(&self.root).unwrap();
        let mut leases = state.leases();
        teardown::teardown(container, &mut self.reach(), &state, &mut leases)
    }

    /// Every file under the state dir except the lock.
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

    fn leases(&self) -> FileLeases {
        FileLeases::new(self.root.join("leases"))
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
        bed.kernel.calls(),
        [
            "create net1".to_owned(),
            "arp_notify net1".into(),
            format!("address {address}"),
            "up 11".into(),
            "route 10.20.0.0/16 via 10.9.0.1".into(),
            "route 0.0.0.0/0 via 10.9.0.1".into(),
        ]
    );
    assert_eq!(bed.kernel.link_names(), ["net1"]);
    let holder = bed
        .leases()
        .holder("fast", address.addr())
        .unwrap()
        .unwrap();
    assert_eq!(holder.container, "c1");
    assert_eq!(
        bed.state_files(),
        [
            "containers/c1.json".to_owned(),
            format!("leases/fast/{}", address.addr()),
            "netns/4-1000.json".into()
        ]
    );
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
    let calls = bed.kernel.calls().len();
    let second = bed.setup("c1", "fast").unwrap();
    assert_eq!(first, second);
    assert_eq!(
        bed.kernel.calls().len(),
        calls,
        "the second stage touches nothing"
    );
}

#[test]
fn a_pod_shares_one_link_until_its_last_container_leaves() {
    let bed = Bed::new();
    let a = bed.setup("infra", "fast").unwrap();
    let b = bed.setup("app", "fast").unwrap();
    assert_eq!(bed.kernel.link_names(), ["net1"]);
    assert!(b[0].shared);
    assert_eq!(a[0].addresses, b[0].addresses);

    assert_eq!(bed.teardown("infra", true).unwrap(), Some(vec![]));
    assert_eq!(bed.kernel.link_names(), ["net1"], "app still uses it");
    let released = bed.teardown("app", true).unwrap().unwrap();
    assert_eq!(released.len(), 1);
    assert!(bed.kernel.link_names().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn a_pod_member_asking_for_more_networks_gets_them_added() {
    let bed = Bed::new();
    bed.setup("infra", "fast").unwrap();
    let wired = bed.setup("app", "fast,slow").unwrap();
    assert_eq!(bed.kernel.link_names(), ["net1", "net2"]);
    assert!(wired[0].shared && !wired[1].shared);
    // infra leaving keeps both; app leaving removes both.
    bed.teardown("infra", true).unwrap();
    assert_eq!(bed.kernel.link_names().len(), 2);
    bed.teardown("app", true).unwrap();
    assert!(bed.kernel.link_names().is_empty());
    assert!(bed.state_files().is_empty());
}

#[test]
fn teardown_after_the_namespace_is_gone_frees_the_address_and_can_run_twice() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    let released = bed.teardown("c1", false).unwrap().unwrap();
    assert_eq!(released[0].network, "fast");
    assert!(bed.state_files().is_empty());
    assert_eq!(bed.teardown("c1", false).unwrap(), None);
    assert_eq!(bed.teardown("never-seen", true).unwrap(), None);
}

#[test]
fn a_failed_link_delete_keeps_the_lease_and_a_retry_finishes() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    bed.kernel.fail_on("delete", libc_ebusy());
    let e = bed.teardown("c1", true).unwrap_err();
    assert_eq!(e.step, Step::DeleteLink);
    assert!(
        bed.state_files()
            .iter()
            .any(|f| f.starts_with("leases/fast/")),
        "address still leased"
    );
    bed.teardown("c1", true).unwrap();
    assert!(bed.kernel.link_names().is_empty());
    assert!(bed.state_files().is_empty());
}

fn libc_ebusy() -> i32 {
    nix::errno::Errno::EBUSY as i32
}

/// Setup fails at `call`; afterwards nothing it made may remain.
fn assert_rolls_back(networks: &str, call: &str, step: Step) {
    let bed = Bed::new();
    bed.kernel.fail_on(call, libc_ebusy());
    let e = bed.setup("c1", networks).unwrap_err();
    assert_eq!(e.step, step, "failing {call}: {e}");
    assert!(
        bed.kernel.link_names().is_empty(),
        "failing {call}: links left: {:?}",
        bed.kernel.link_names()
    );
    assert!(
        bed.state_files().is_empty(),
        "failing {call}: state left: {:?}",
        bed.state_files()
    );
}

#[test]
fn every_setup_step_rolls_back_itself_and_everything_before_it() {
    for (call, step) in [
        ("create net1", Step::CreateLink),
        ("arp_notify", Step::ArpNotify),
        ("address", Step::AddAddress),
        ("up", Step::LinkUp),
        ("route 10.20", Step::AddRoute),
        ("route 0.0.0.0", Step::AddRoute),
    ] {
        assert_rolls_back("fast", call, step);
    }
    // The second network failing undoes the first, which had fully succeeded.
    for (call, step) in [
        ("create net2", Step::CreateLink),
        ("route 0.0.0.0", Step::AddRoute),
    ] {
        assert_rolls_back("slow,fast", call, step);
    }
}

#[test]
fn name_clash_falls_back_to_a_temporary_name_and_rename() {
    let eexist = nix::errno::Errno::EEXIST as i32;
    let bed = Bed::new();
    bed.kernel.fail_on("create net1", eexist);
    bed.setup("c1", "fast").unwrap();
    assert_eq!(bed.kernel.link_names(), ["net1"]);
    let calls = bed.kernel.calls();
    assert!(
        calls[0].starts_with("create nsb") && calls[1] == "rename net1",
        "{calls:?}"
    );

    // The rename failing deletes the temporary link too.
    let bed = Bed::new();
    bed.kernel.fail_on("create net1", eexist);
    bed.kernel.fail_on("rename", libc_ebusy());
    let e = bed.setup("c1", "fast").unwrap_err();
    assert_eq!(e.step, Step::RenameLink);
    assert!(
        bed.kernel.link_names().is_empty(),
        "{:?}",
        bed.kernel.link_names()
    );
    assert!(bed.state_files().is_empty());
}

#[test]
fn validation_failures_touch_nothing() {
    let cases: &[(&str, &str, &str)] = &[
        ("nope", "", "network nope: validate: no such network in /etc/nsbypass/config.toml (configured: down, fast, jumbo, l2, nowhere, slow)"),
        ("nowhere", "", "network nowhere: validate: parent missing0 does not exist"),
        ("down", "", "network down: validate: parent down0 is down"),
        ("jumbo", "", "network jumbo: validate: mtu 9000 is above parent nic0's 1500"),
        ("fast", "fast=10.9.0.13", "network fast: validate: 10.9.0.13 is outside the range 10.9.0.10-10.9.0.12"),
        ("fast", "fast=10.9.0.1", "network fast: validate: 10.9.0.1 is the network's gateway"),
        ("l2", "l2=10.0.0.1", "network l2: validate: cannot take 10.0.0.1: the network has no subnet"),
    ];
    for (networks, ip, want) in cases {
        let bed = Bed::new();
        let e = bed.setup_in("c1", 1000, networks, ip).unwrap_err();
        assert_eq!(e.to_string(), *want);
        assert!(
            bed.kernel.calls().is_empty(),
            "{networks}: {:?}",
            bed.kernel.calls()
        );
        assert!(bed.state_files().is_empty());
    }
}

#[test]
fn a_taken_address_or_interface_name_is_refused_before_anything_is_made() {
    let bed = Bed::new();
    bed.setup_in("c1", 1000, "fast", "fast=10.9.0.11").unwrap();
    // c2 lives in another namespace: the fake's links are c1's, not its.
    bed.kernel.0.borrow_mut().links.clear();
    let calls = bed.kernel.calls().len();
    let e = bed
        .setup_in("c2", 2000, "slow,fast", "fast=10.9.0.11")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "network fast: validate: 10.9.0.11 is taken by container c1"
    );
    assert_eq!(bed.kernel.calls().len(), calls);

    // Something else (another CNI, the image) already made net1.
    let bed = Bed::new();
    bed.kernel.0.borrow_mut().links.push(Link {
        index: 7,
        name: "net1".into(),
        mtu: 1500,
        up: true,
        mac: Some([2, 0, 0, 0, 0, 7]),
        kind: Some("veth".into()),
    });
    let e = bed.setup("c3", "slow").unwrap_err();
    assert_eq!(e.to_string(), "network slow: validate: interface net1 already exists in the container's network namespace");
    assert!(bed.kernel.calls().is_empty());
    assert!(bed.state_files().is_empty());
}

#[test]
fn exhausted_pool_rolls_back_earlier_networks() {
    let bed = Bed::new();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        bed.setup_in(c, 100 + i as u64, "fast", "").unwrap();
        // Separate namespaces: forget the fake's links so names do not clash.
        bed.kernel.0.borrow_mut().links.clear();
    }
    let before = bed.state_files();
    let e = bed.setup_in("d", 200, "slow,fast", "").unwrap_err();
    assert_eq!(
        e.to_string(),
        "network fast: lease address: no free address left in 10.9.0.10-10.9.0.12"
    );
    assert!(bed.kernel.link_names().is_empty());
    assert_eq!(bed.state_files(), before);
}

#[test]
fn a_stale_record_of_the_same_container_in_another_namespace_is_cleared() {
    let bed = Bed::new();
    let old = bed.setup_in("c1", 1000, "fast", "").unwrap();
    // Its namespace died without a poststop; the container id comes back.
    bed.kernel.0.borrow_mut().links.clear();
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
    bed.kernel.0.borrow_mut().links.clear();
    let wired = bed.setup("c2", "fast").unwrap();
    assert!(!wired[0].shared, "the link was made again, not shared");
    assert_eq!(bed.kernel.link_names(), ["net1"]);
    let leases: Vec<_> = bed
        .state_files()
        .into_iter()
        .filter(|f| f.starts_with("leases/"))
        .collect();
    assert_eq!(
        leases.len(),
        1,
        "the vanished link's address was freed: {leases:?}"
    );
}

#[test]
fn a_vanished_link_drops_only_that_link_never_a_running_member() {
    let bed = Bed::new();
    bed.setup("infra", "fast,slow").unwrap();
    // Someone deletes net2 inside the running pod.
    bed.kernel.0.borrow_mut().links.retain(|l| l.name != "net2");
    bed.setup("app", "fast").unwrap();
    // app leaving must not take infra's net1 with it.
    bed.teardown("app", true).unwrap();
    assert_eq!(bed.kernel.link_names(), ["net1"]);
    assert_eq!(
        bed.state_files()
            .iter()
            .filter(|f| f.starts_with("leases/fast/"))
            .count(),
        1
    );
    assert!(
        !bed.state_files()
            .iter()
            .any(|f| f.starts_with("leases/slow/")),
        "net2's address was freed"
    );
    bed.teardown("infra", true).unwrap();
    assert!(bed.kernel.link_names().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}

#[test]
fn teardown_finds_a_link_whose_name_and_mac_were_changed() {
    let bed = Bed::new();
    bed.setup("c1", "fast").unwrap();
    {
        let mut ns = bed.kernel.0.borrow_mut();
        ns.links[0].name = "renamed".into();
        ns.links[0].mac = Some([2, 9, 9, 9, 9, 9]);
    }
    bed.teardown("c1", true).unwrap();
    assert!(bed.kernel.link_names().is_empty());
}

#[test]
fn a_member_that_died_without_poststop_does_not_keep_links_alive() {
    let bed = Bed::new();
    bed.setup("infra", "fast").unwrap();
    bed.setup("app", "fast").unwrap();
    bed.stop("infra"); // killed; its poststop never comes
    bed.teardown("app", true).unwrap();
    assert!(bed.kernel.link_names().is_empty());
    assert!(
        !bed.state_files().iter().any(|f| f.starts_with("leases/")),
        "{:?}",
        bed.state_files()
    );
}

#[test]
fn leases_nothing_accounts_for_are_reclaimed_when_the_pool_runs_dry() {
    let bed = Bed::new();
    // A hook killed between leasing and recording leaves leases behind.
    let pool = bed.config.networks["fast"].ipv4.clone().unwrap();
    {
        let state = StateDir::lock(&bed.root).unwrap();
        let mut leases = state.leases();
        for i in 0..3 {
            let orphan = crate::lease::Holder {
                netns: format!("4-{}", 900 + i),
                container: format!("killed{i}"),
            };
            leases.acquire("fast", &pool, &orphan, None).unwrap();
        }
    }
    let wired = bed.setup("c1", "fast").unwrap();
    assert_eq!(wired[0].addresses.len(), 1);
    // A live holder is never reclaimed: the pool is now really full.
    bed.kernel.0.borrow_mut().links.clear();
    for c in ["c2", "c3"] {
        bed.setup_in(
            c,
            2000 + c.len() as u64 + c.as_bytes()[1] as u64,
            "fast",
            "",
        )
        .unwrap();
        bed.kernel.0.borrow_mut().links.clear();
    }
    let e = bed.setup_in("c4", 4000, "fast", "").unwrap_err();
    assert_eq!(e.step, Step::LeaseAddress, "{e}");
}

#[test]
fn the_same_id_live_in_another_namespace_is_refused_and_left_alone() {
    let bed = Bed::new();
    bed.setup_in("web", 1000, "fast", "").unwrap();
    // A second runtime starts its own "web" while the first still runs:
    // its init's path is a different one.
    let calls = bed.kernel.calls().len();
    bed.live.borrow_mut().insert(
        PathBuf::from("/proc/web/ns/net"),
        NetnsId { dev: 4, ino: 1000 },
    );
    let e = {
        let mut request = Request::default();
        request.networks.push("fast".into());
        let netns = NetnsId { dev: 4, ino: 2000 };
        let ctx = Context {
            container: "web",
            host_id: "test-host",
            netns,
            process: PathBuf::from("/proc/web-second/ns/net"),
            pinned: None,
            request: &request,
            config: &bed.config,
        };
        let state = StateDir::lock(&bed.root).unwrap();
        let mut leases = state.leases();
        let mut reach = bed.reach();
        let mut stores = Stores {
            state: &state,
            leases: &mut leases,
            reach: &mut reach,
        };
        setup::setup(&ctx, &mut bed.kernel.clone(), &mut stores).unwrap_err()
    };
    assert!(
        e.message
            .contains("already wired into another live network namespace"),
        "{e}"
    );
    assert_eq!(bed.kernel.calls().len(), calls);
    assert_eq!(bed.kernel.link_names(), ["net1"]);
}

#[test]
fn a_failed_record_write_rolls_everything_back() {
    let bed = Bed::new();
    // A directory where the namespace record's temporary file goes: the
    // record cannot be written, after link and lease were made.
    std::fs::create_dir_all(bed.root.join("netns/4-1000.json.tmp")).unwrap();
    let e = bed.setup("c1", "fast").unwrap_err();
    assert_eq!(e.step, Step::WriteRecord);
    assert!(bed.kernel.link_names().is_empty());
    assert!(bed.state_files().is_empty(), "{:?}", bed.state_files());
}
