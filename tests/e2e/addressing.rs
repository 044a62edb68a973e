//! Dual stack, end to end: a network with `subnet6` gives a container an
//! IPv6 address beside its IPv4 one, usable the moment the hook returns
//! (added without DAD, so never tentative), announced (`ndisc_notify`),
//! with IPv6 routes via `gateway6`; pins of either family; poststop gives
//! both back.
//!
//! The hook runs directly, as in integrity.rs (`common::direct`), for a
//! sleeper in a pinned namespace of its own (a pod's, so that poststop has
//! a live namespace to delete the link in). The peer gets `fd00:77::1` on
//! its end of the wire.

mod common;

use std::fs::File;
use std::net::{Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::direct::*;
use common::{leases, records, testbed};
use nsbypass_testbed::Testbed;
use serde_json::Value;

const PEER6: &str = "fd00:77::1";
const PORT: u16 = 7777;

/// Network `fast`, dual stack: the testbed's IPv4 pool and gateway, and
/// `fd00:77::100-fd00:77::1ff` via the peer's `fd00:77::1`, with a route of
/// each family.
fn dual_config(tb: &Testbed) -> PathBuf {
    let text = format!(
        r#"
state_dir = "{state}"
[log]
file = "{dir}/nsbypass.log"
level = "debug"

[networks.fast]
parent = "{parent}"
subnet = "{subnet}"
range = "{a}-{b}"
gateway = "{peer}"
subnet6 = "fd00:77::/64"
range6 = "fd00:77::100-fd00:77::1ff"
gateway6 = "{PEER6}"
routes = ["10.20.0.0/16", "fd00:20::/48"]
"#,
        state = tb.state_dir().display(),
        dir = tb.dir.display(),
        parent = tb.parent,
        subnet = tb.subnet,
        a = tb.addr(100),
        b = tb.addr(199),
        peer = tb.peer_ip,
    );
    tb.write_config(&text).expect("writing config")
}

fn give_the_peer_ipv6(tb: &Testbed) {
    common::give_the_peer_ipv6(tb, PEER6);
}

/// Runs `f` on a thread of its own inside the namespace at `netns`; a
/// socket made there stays there.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("a thread in a namespace panicked")
}

fn run_in(netns: &Path, argv: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(argv)
        .output()
        .expect("nsenter");
    assert!(
        out.status.success(),
        "{} in {}: {}",
        argv.join(" "),
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ip -j addr` entries of `ifname` in `netns`.
fn addr_info(netns: &Path, ifname: &str) -> Vec<Value> {
    let json = run_in(netns, &["ip", "-j", "addr", "show", "dev", ifname]);
    let list: Vec<Value> = serde_json::from_str(&json).expect("ip -j output");
    list[0]["addr_info"].as_array().cloned().unwrap_or_default()
}

/// The global address of `family` (`inet`, `inet6`) on `ifname`.
fn global(netns: &Path, ifname: &str, family: &str) -> Option<Value> {
    addr_info(netns, ifname)
        .into_iter()
        .find(|a| a["family"] == family && a["scope"] == "global")
}

fn sysctl(netns: &Path, ifname: &str, key: &str) -> String {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
    run_in(netns, &["cat", &path]).trim().to_owned()
}

/// An echo server on the peer's `[::]:PORT`, answering for `for_how_long`.
fn peer_echo(tb: &Testbed, for_how_long: Duration) -> std::thread::JoinHandle<()> {
    let peer = Path::new("/run/netns").join(&tb.peer_ns);
    let socket = in_netns(&peer, || {
        UdpSocket::bind(("::", PORT)).expect("bind on the peer")
    });
    socket.set_read_timeout(Some(for_how_long)).unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..n], from);
        }
    })
}

/// How long until `client` (a socket in the container's namespace) hears
/// the peer's echo of a datagram to `[PEER6]:PORT`, sending one every
/// 5 ms; `None` after 1 s.
fn first_reply(client: &UdpSocket) -> Option<Duration> {
    let start = Instant::now();
    let peer = SocketAddr::new(PEER6.parse::<Ipv6Addr>().unwrap().into(), PORT);
    client
        .set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    while start.elapsed() < Duration::from_secs(1) {
        // Fails (no usable source address) while an address is tentative.
        let _ = client.send_to(b"nsbypass", peer);
        if let Ok((_, from)) = client.recv_from(&mut buf) {
            if from == peer {
                return Some(start.elapsed());
            }
        }
    }
    None
}

#[test]
fn a_dual_stack_container_reaches_the_peer_over_ipv6_at_once() {
    let Some(tb) = testbed() else { return };
    give_the_peer_ipv6(&tb);
    let config = dual_config(&tb);
    let pod = PinnedNetns::new(&tb, "dual");
    let init = Sleeper::in_netns(&pod.path);
    let b = bundle(&tb, "dual", Some(&pod.path));
    let echo = peer_echo(&tb, Duration::from_secs(5));
    let client = in_netns(&pod.path, || UdpSocket::bind(("::", 0)).expect("bind"));

    let r = HookRun::prestart(&tb, &config, "dual", init.pid, &b).run();
    let reply = first_reply(&client);
    r.assert_ok();
    let reply = reply.expect("no IPv6 reply from the peer within 1 s of the hook returning");
    println!(
        "first IPv6 reply from the peer {:.1} ms after the hook returned (the hook took {:.1} ms)",
        reply.as_secs_f64() * 1e3,
        r.elapsed.as_secs_f64() * 1e3
    );
    assert!(
        reply < Duration::from_millis(100),
        "the first IPv6 reply took {reply:?}"
    );

    let v4 = global(&pod.path, "net1", "inet").expect("an IPv4 address");
    let v6 = global(&pod.path, "net1", "inet6").expect("an IPv6 address");
    assert_eq!(
        (v4["prefixlen"].as_u64(), v6["prefixlen"].as_u64()),
        (Some(24), Some(64))
    );
    let v6_text = v6["local"].as_str().unwrap().to_owned();
    let v6_addr: Ipv6Addr = v6_text.parse().unwrap();
    assert!(
        (0xfd00_0077_0000_0000_0000_0000_0000_0100..=0xfd00_0077_0000_0000_0000_0000_0000_01ff)
            .contains(&u128::from(v6_addr)),
        "{v6_text} is in range6"
    );
    assert!(v6.get("tentative").is_none(), "not tentative: {v6}");
    assert_eq!(v6["nodad"], true, "{v6}");
    assert_eq!(sysctl(&pod.path, "net1", "ndisc_notify"), "1");
    let route = run_in(&pod.path, &["ip", "-6", "route", "show", "fd00:20::/48"]);
    assert!(route.contains(&format!("via {PEER6} dev net1")), "{route}");

    let v4_text = v4["local"].as_str().unwrap();
    assert_eq!(
        leases(&tb),
        [format!("fast/{v4_text}"), format!("fast/{v6_text}")]
    );

    init.kill();
    HookRun::poststop(&tb, &config, "dual", &b)
        .run()
        .assert_ok();
    assert_eq!(links_in(&pod.path), ["lo"], "poststop deleted the link");
    assert!(
        leases(&tb).is_empty(),
        "both leases released: {:?}",
        leases(&tb)
    );
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
    drop(client);
    echo.join().unwrap();
}

#[test]
fn the_ipv6_address_is_announced_when_the_link_comes_up() {
    let Some(tb) = testbed() else { return };
    give_the_peer_ipv6(&tb);
    // The peer, a router (it is gateway6), takes an unsolicited neighbour
    // advertisement from its subnet as a new (stale) neighbour entry
    // (RFC 9131): how the test sees one was sent.
    let peer_link = tb.peer_link.as_str();
    for key in [
        "net.ipv6.conf.all.forwarding=1".to_owned(),
        "net.ipv6.conf.all.accept_untracked_na=2".to_owned(),
        format!("net.ipv6.conf.{peer_link}.accept_untracked_na=2"),
    ] {
        tb.in_peer_ok(&["sysctl", "-qw", &key])
            .expect("a peer sysctl");
    }
    let config = dual_config(&tb);
    let pod = PinnedNetns::new(&tb, "na");
    let init = Sleeper::in_netns(&pod.path);
    let b = bundle_with(
        &tb,
        "na",
        Some(&pod.path),
        &[("nsbypass.io/ip", "fast=fd00:77::160")],
    );
    HookRun::prestart(&tb, &config, "na", init.pid, &b)
        .run()
        .assert_ok();
    let returned = Instant::now();
    let mac = common::ifaces_in(&pod.path)
        .into_iter()
        .find(|i| i.name == "net1")
        .expect("net1")
        .mac;
    // Nothing is sent from the container: only the announcement can teach
    // the peer where fd00:77::160 is.
    let neighbour = || {
        let out = tb
            .in_peer_ok(&[
                "ip",
                "-6",
                "neigh",
                "show",
                "fd00:77::160",
                "dev",
                &tb.peer_link,
            ])
            .unwrap();
        out.contains(&format!("lladdr {mac}"))
    };
    while !neighbour() {
        assert!(
            returned.elapsed() < Duration::from_secs(1),
            "the peer never learnt fd00:77::160 is at {mac}: no unsolicited NA"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "the peer had the container's neighbour entry {:.1} ms after the hook returned",
        returned.elapsed().as_secs_f64() * 1e3
    );
}

#[test]
fn a_pinned_ipv6_address_is_honoured_and_a_namespace_without_ipv6_gets_it_on() {
    let Some(tb) = testbed() else { return };
    let config = dual_config(&tb);
    let pod = PinnedNetns::new(&tb, "pin6");
    // As docker leaves a container it gives no IPv6: disabled for every
    // link, the ones made later included.
    run_in(
        &pod.path,
        &["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
    );
    let init = Sleeper::in_netns(&pod.path);
    let b = bundle_with(
        &tb,
        "pin6",
        Some(&pod.path),
        &[("nsbypass.io/ip", "fast=fd00:77::150,fast=10.77.0.150")],
    );
    HookRun::prestart(&tb, &config, "pin6", init.pid, &b)
        .run()
        .assert_ok();
    assert_eq!(sysctl(&pod.path, "net1", "disable_ipv6"), "0");
    let v6 = global(&pod.path, "net1", "inet6").expect("an IPv6 address");
    assert_eq!(v6["local"], "fd00:77::150");
    assert_eq!(
        global(&pod.path, "net1", "inet").unwrap()["local"],
        "10.77.0.150"
    );
    assert_eq!(leases(&tb), ["fast/10.77.0.150", "fast/fd00:77::150"]);

    // Taken: another container pinning it is refused, in one line.
    let other = Sleeper::own_netns(&tb);
    let b2 = bundle_with(
        &tb,
        "pin6b",
        None,
        &[("nsbypass.io/ip", "fast=fd00:77::150")],
    );
    let r = HookRun::prestart(&tb, &config, "pin6b", other.pid, &b2).run();
    assert_eq!(
        r.error_line(),
        "nsbypass: hook prestart: container pin6b: network fast: validate: fd00:77::150 is taken by container pin6"
    );
    assert_eq!(other.links(), Vec::<String>::new());

    init.kill();
    HookRun::poststop(&tb, &config, "pin6", &b)
        .run()
        .assert_ok();
    assert_eq!(links_in(&pod.path), ["lo"]);
    assert!(leases(&tb).is_empty(), "{:?}", leases(&tb));
}

#[test]
fn an_ipv6_pin_on_a_network_without_subnet6_fails_and_leaves_nothing() {
    let Some(tb) = testbed() else { return };
    let config = common::config(&tb, "");
    let init = Sleeper::own_netns(&tb);
    let b = bundle_with(
        &tb,
        "v4only",
        None,
        &[("nsbypass.io/ip", "fast=fd00:77::150")],
    );
    let r = HookRun::prestart(&tb, &config, "v4only", init.pid, &b).run();
    assert_eq!(
        r.error_line(),
        "nsbypass: hook prestart: container v4only: network fast: validate: cannot take fd00:77::150: the network has no subnet6"
    );
    assert_eq!(init.links(), Vec::<String>::new());
    assert_state_empty(&tb, "after a refused IPv6 pin");
}

#[test]
fn the_ipv6_step_failing_or_killed_leaves_nothing() {
    let Some(tb) = testbed() else { return };
    let config = dual_config(&tb);
    let init = Sleeper::own_netns(&tb);
    let b = bundle(&tb, "nd-err", None);
    let r = HookRun::prestart(&tb, &config, "nd-err", init.pid, &b)
        .failpoint("ndisc-notify=error")
        .run();
    assert_eq!(
        r.error_line(),
        "nsbypass: hook prestart: container nd-err: network fast: enable IPv6 and ndisc_notify: failpoint ndisc-notify: injected failure"
    );
    assert_eq!(init.links(), Vec::<String>::new());
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());

    // Killed there in a pod: the poststop deletes the half-made link and
    // frees both addresses.
    let pod = PinnedNetns::new(&tb, "ndk");
    let init = Sleeper::in_netns(&pod.path);
    let b = bundle(&tb, "nd-kill", Some(&pod.path));
    HookRun::prestart(&tb, &config, "nd-kill", init.pid, &b)
        .failpoint("ndisc-notify=kill")
        .run()
        .assert_killed();
    assert_eq!(leases(&tb).len(), 2, "both leased before the kill");
    init.kill();
    HookRun::poststop(&tb, &config, "nd-kill", &b)
        .run()
        .assert_ok();
    assert_eq!(links_in(&pod.path), ["lo"]);
    assert!(leases(&tb).is_empty(), "{:?}", leases(&tb));
}
