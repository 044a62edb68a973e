//! Host reach (`host_shim`) and `bc_queue_len` against the real kernel,
//! driving the hook directly (see common/direct.rs): the testbed's host
//! namespace `<tag>-h`, where the hook runs, reaches a container only
//! through the shim; the shim lives while the network has an attachment;
//! a hook killed at any shim step leaves what the next run repairs.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use common::direct::*;
use common::{config_with_range, ifaces_in, testbed, Iface};
use nsbypass_testbed::Testbed;

/// Every shim failpoint, with the step its error line names.
const SHIM_FAILPOINTS: &[(&str, &str)] = &[
    ("shim-lease", "host shim: lease address"),
    ("shim-write-intent", "host shim: write record"),
    ("shim-create", "host shim: create link"),
    ("shim-arp-notify", "host shim: set arp_notify"),
    ("shim-add-address", "host shim: add address"),
    ("shim-link-up", "host shim: set link up"),
    ("shim-add-route", "host shim: add route"),
    ("shim-write-final", "host shim: write record"),
];

#[test]
fn shim_failpoints_match_the_hooks() {
    let source = include_str!("../../hook/src/failpoint.rs");
    let start = source
        .find("pub const ALL: &[&str] = &[")
        .expect("failpoint::ALL");
    let end = start + source[start..].find("];").expect("end of failpoint::ALL");
    let all: BTreeSet<&str> = source[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|n| n.starts_with("shim-"))
        .collect();
    let mut here: BTreeSet<&str> = SHIM_FAILPOINTS.iter().map(|(n, _)| *n).collect();
    // Reached by teardown, covered below on its own.
    here.insert("shim-delete");
    assert_eq!(all, here);
}

/// Pool .100-.103: the shim and up to three containers.
fn shim_config(tb: &Testbed, extra: &str) -> PathBuf {
    config_with_range(tb, 100, 103, &format!("host_shim = true\n{extra}"))
}

fn host_netns(tb: &Testbed) -> PathBuf {
    Path::new("/run/netns").join(&tb.host_ns)
}

/// The MACVLANs in the host namespace: host shims.
fn shims(tb: &Testbed) -> Vec<Iface> {
    ifaces_in(&host_netns(tb))
        .into_iter()
        .filter(|i| i.kind == "macvlan")
        .collect()
}

fn shim_record(tb: &Testbed) -> Option<serde_json::Value> {
    let path = tb.state_dir().join("shims").join("fast.json");
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).expect("a shim record is JSON"))
}

/// Whether the host namespace gets an answer from `address`.
fn host_pings(tb: &Testbed, address: Ipv4Addr) -> bool {
    let a = address.to_string();
    tb.in_host(&["busybox", "ping", "-c", "1", "-W", "2", &a])
        .expect("running ping")
        .status
        .success()
}

/// Exactly one shim, up, in bridge mode, `arp_notify` on, with its
/// recorded /32 from the pool, leased to the shim, routes to the range
/// through it. Returns its name.
fn assert_one_shim(tb: &Testbed, when: &str) -> String {
    let found = shims(tb);
    assert_eq!(found.len(), 1, "{when}: {found:?}");
    let shim = &found[0];
    assert!(
        shim.name.starts_with("nsbs-") && shim.up,
        "{when}: {shim:?}"
    );
    assert_eq!(shim.mode, "bridge", "{when}");
    let arp_notify = format!("/proc/sys/net/ipv4/conf/{}/arp_notify", shim.name);
    let arp_notify = tb.in_host_ok(&["cat", &arp_notify]).unwrap();
    assert_eq!(arp_notify.trim(), "1", "{when}: arp_notify");
    assert_eq!(shim.ipv4.len(), 1, "{when}: {shim:?}");
    let (address, prefix) = shim.ipv4[0].split_once('/').unwrap();
    assert_eq!(prefix, "32", "{when}");
    let address: Ipv4Addr = address.parse().unwrap();
    assert!(
        (tb.addr(100)..=tb.addr(103)).contains(&address),
        "{when}: {address}"
    );
    let record = shim_record(tb).unwrap_or_else(|| panic!("{when}: no shim record"));
    assert_eq!(record["ifname"], shim.name.as_str(), "{when}");
    assert_eq!(record["mac"], shim.mac.as_str(), "{when}");
    assert!(record.get("pending").is_none(), "{when}: {record}");
    let lease = &leases_on(tb)[&address];
    assert_eq!(
        (lease["netns"].as_str(), lease["container"].as_str()),
        (Some("host-shim"), Some("shim:fast")),
        "{when}: {lease}"
    );
    let routes = tb
        .in_host_ok(&["ip", "-4", "route", "show", "dev", &shim.name])
        .unwrap();
    assert!(
        routes
            .lines()
            .any(|r| r.starts_with(&format!("{}/30 ", tb.addr(100))) && r.contains("scope link")),
        "{when}: {routes}"
    );
    shim.name.clone()
}

fn assert_no_shim(tb: &Testbed, when: &str) {
    assert_eq!(shims(tb), [], "{when}");
    assert_eq!(shim_record(tb), None, "{when}");
    let shim_leases: Vec<_> = leases_on(tb)
        .into_iter()
        .filter(|(_, h)| h["netns"] == "host-shim")
        .collect();
    assert!(shim_leases.is_empty(), "{when}: {shim_leases:?}");
}

fn prestart(tb: &Testbed, config: &Path, id: &str, init: &Sleeper) -> HookResult {
    let b = bundle(tb, id, None);
    HookRun::prestart(tb, config, id, init.pid, &b).run()
}

fn poststop(tb: &Testbed, config: &Path, id: &str) -> HookResult {
    let b = bundle(tb, id, None);
    HookRun::poststop(tb, config, id, &b).run()
}

#[test]
fn the_host_reaches_its_containers_through_the_shim_until_the_last_detach() {
    let Some(tb) = testbed() else { return };
    // Without a shim the host cannot reach its container: the test can fail.
    let plain = config_with_range(&tb, 100, 103, "");
    let c0 = Sleeper::own_netns(&tb);
    prestart(&tb, &plain, "c0", &c0).assert_ok();
    let a0 = only_addr(&c0.netns());
    assert!(!host_pings(&tb, a0), "reached {a0} without a shim");
    assert_no_shim(&tb, "without host_shim");
    c0.kill();
    poststop(&tb, &plain, "c0").assert_ok();

    let config = shim_config(&tb, "");
    let c1 = Sleeper::own_netns(&tb);
    prestart(&tb, &config, "c1", &c1).assert_ok();
    let name = assert_one_shim(&tb, "c1 attached");
    let a1 = only_addr(&c1.netns());
    assert!(host_pings(&tb, a1), "the host does not reach c1 at {a1}");
    // The peer on the wire still does.
    let peer = tb
        .in_peer(&["busybox", "ping", "-c", "1", "-W", "2", &a1.to_string()])
        .unwrap();
    assert!(peer.status.success(), "the peer lost c1");

    let c2 = Sleeper::own_netns(&tb);
    prestart(&tb, &config, "c2", &c2).assert_ok();
    assert_eq!(assert_one_shim(&tb, "c2 attached"), name);
    let a2 = only_addr(&c2.netns());
    assert!(host_pings(&tb, a2), "the host does not reach c2 at {a2}");

    c1.kill();
    poststop(&tb, &config, "c1").assert_ok();
    assert_eq!(assert_one_shim(&tb, "c2 still attached"), name);
    assert!(host_pings(&tb, a2));
    c2.kill();
    poststop(&tb, &config, "c2").assert_ok();
    assert_no_shim(&tb, "after the last detach");
    assert_state_empty(&tb, "after the last detach");
    assert_eq!(state_files(&tb, "shims"), Vec::<String>::new());
}

#[test]
fn every_shim_failpoint_that_fails_or_kills_leaves_what_the_next_run_repairs() {
    let Some(tb) = testbed() else { return };
    let config = shim_config(&tb, "");
    for (point, step) in SHIM_FAILPOINTS {
        // Failing: one line naming the step, nothing left.
        let c1 = Sleeper::own_netns(&tb);
        let b1 = bundle(&tb, "c1", None);
        let failed = HookRun::prestart(&tb, &config, "c1", c1.pid, &b1)
            .failpoint(&format!("{point}=error"))
            .run();
        assert_eq!(
            failed.error_line(),
            format!("nsbypass: hook prestart: container c1: network fast: {step}: failpoint {point}: injected failure")
        );
        assert_eq!(c1.links(), Vec::<String>::new(), "{point}");
        assert_no_shim(&tb, point);
        assert_state_empty(&tb, point);

        // Killed, then its own poststop: nothing left.
        HookRun::prestart(&tb, &config, "c1", c1.pid, &b1)
            .failpoint(&format!("{point}=kill"))
            .run()
            .assert_killed();
        poststop(&tb, &config, "c1").assert_ok();
        assert_no_shim(&tb, &format!("{point}: killed, then poststop"));
        assert_state_empty(&tb, point);

        // Killed, then another container's prestart: one shim, remade.
        HookRun::prestart(&tb, &config, "c1", c1.pid, &b1)
            .failpoint(&format!("{point}=kill"))
            .run()
            .assert_killed();
        let c2 = Sleeper::own_netns(&tb);
        prestart(&tb, &config, "c2", &c2).assert_ok();
        assert_one_shim(&tb, &format!("{point}: killed, then c2"));
        assert!(host_pings(&tb, only_addr(&c2.netns())), "{point}");
        assert_eq!(leases_on(&tb).len(), 2, "{point}: {:?}", leases_on(&tb));
        c1.kill();
        poststop(&tb, &config, "c1").assert_ok();
        assert_one_shim(&tb, &format!("{point}: c2 still attached"));
        c2.kill();
        poststop(&tb, &config, "c2").assert_ok();
        assert_no_shim(&tb, point);
        assert_state_empty(&tb, point);
    }

    // Killed while deleting the shim at the last poststop: the next run
    // (a poststop again, as a runtime retries) finishes.
    let c1 = Sleeper::own_netns(&tb);
    prestart(&tb, &config, "c1", &c1).assert_ok();
    c1.kill();
    let b1 = bundle(&tb, "c1", None);
    HookRun::poststop(&tb, &config, "c1", &b1)
        .failpoint("shim-delete=kill")
        .run()
        .assert_killed();
    assert_eq!(shims(&tb).len(), 1, "killed before the delete");
    poststop(&tb, &config, "c1").assert_ok();
    assert_no_shim(&tb, "after a kill at shim-delete");
    assert_state_empty(&tb, "after a kill at shim-delete");
}

#[test]
fn a_link_with_the_shims_name_that_is_not_ours_is_refused() {
    let Some(tb) = testbed() else { return };
    let config = shim_config(&tb, "");
    // Learn the name, then put a veth of someone else's there.
    let c1 = Sleeper::own_netns(&tb);
    prestart(&tb, &config, "c1", &c1).assert_ok();
    let name = assert_one_shim(&tb, "c1");
    c1.kill();
    poststop(&tb, &config, "c1").assert_ok();
    let peer = format!("{}x", tb.tag);
    tb.in_host_ok(&[
        "ip", "link", "add", &name, "type", "veth", "peer", "name", &peer,
    ])
    .unwrap();
    let c2 = Sleeper::own_netns(&tb);
    let refused = prestart(&tb, &config, "c2", &c2);
    assert_eq!(
        refused.error_line(),
        format!("nsbypass: hook prestart: container c2: network fast: host shim: check: interface {name} already exists in the host's network namespace and no shim record names it: it is not nsbypass's (remove it, or turn host_shim off)")
    );
    assert_eq!(c2.links(), Vec::<String>::new());
    assert_state_empty(&tb, "refused");
    tb.in_host_ok(&["ip", "link", "del", &name]).unwrap();
}

/// `ip -d link show IFNAME` in the namespace at `netns`.
fn link_details(netns: &Path, ifname: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-d", "link", "show", ifname])
        .output()
        .expect("nsenter ip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bc_queue_len_reaches_the_kernel_which_uses_the_largest_asked_for() {
    let Some(tb) = testbed() else { return };
    let big = config_with_range(&tb, 100, 103, "bc_queue_len = 3000");
    let c1 = Sleeper::own_netns(&tb);
    prestart(&tb, &big, "c1", &c1).assert_ok();
    let shown = link_details(&c1.netns(), "net1");
    assert!(
        shown.contains("bcqueuelen 3000 usedbcqueuelen 3000"),
        "{shown}"
    );
    // A child asking for less gets the parent's largest all the same.
    let small = config_with_range(&tb, 100, 103, "bc_queue_len = 500");
    let c2 = Sleeper::own_netns(&tb);
    prestart(&tb, &small, "c2", &c2).assert_ok();
    let shown = link_details(&c2.netns(), "net1");
    assert!(
        shown.contains("bcqueuelen 500 usedbcqueuelen 3000"),
        "{shown}"
    );
    // Without the key, the kernel's default.
    let plain = config_with_range(&tb, 100, 103, "");
    let c3 = Sleeper::own_netns(&tb);
    prestart(&tb, &plain, "c3", &c3).assert_ok();
    let shown = link_details(&c3.netns(), "net1");
    assert!(shown.contains("bcqueuelen 1000 "), "{shown}");
    for (id, c) in [("c1", c1), ("c2", c2), ("c3", c3)] {
        c.kill();
        poststop(&tb, &plain, id).assert_ok();
    }
    assert_state_empty(&tb, "after");
}
