//! nsbypass as a runc hook, end to end: real runc, real namespaces, real
//! MACVLANs on a veth "NIC" whose far end is a peer host.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn two_containers_are_wired_talk_to_each_other_and_the_peer_and_leave_nothing() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "\n[requests]\nfrom_env = true\n");
    let a = hooked(&tb, &config, "a")
        .annotation("nsbypass.io/network", "fast")
        .create()
        .unwrap();
    // Where the admin lets the environment count, the same request
    // through it.
    let b = hooked(&tb, &config, "b")
        .env("NSBYPASS_NETWORK=fast")
        .create()
        .unwrap();

    let (ia, ib) = (iface(&a, "net1"), iface(&b, "net1"));
    for i in [&ia, &ib] {
        assert_eq!(
            (i.kind.as_str(), i.mode.as_str(), i.up),
            ("macvlan", "bridge", true),
            "{i:?}"
        );
        assert_eq!(i.ipv4.len(), 1, "{i:?}");
        assert!(
            i.ipv4[0].starts_with("10.77.0.1") && i.ipv4[0].ends_with("/24"),
            "{i:?}"
        );
        let first = u8::from_str_radix(&i.mac[..2], 16).unwrap();
        assert_eq!(
            first & 0x03,
            0x02,
            "locally administered unicast: {}",
            i.mac
        );
    }
    assert_ne!(ia.mac, ib.mac);
    assert_ne!(ia.ipv4, ib.ipv4);
    for c in [&a, &b] {
        let routes = c.netns_exec_ok(&["ip", "route"]).unwrap();
        assert!(
            routes.contains("10.20.0.0/16 via 10.77.0.1 dev net1"),
            "{routes}"
        );
        let notify = c
            .netns_exec_ok(&["cat", "/proc/sys/net/ipv4/conf/net1/arp_notify"])
            .unwrap();
        assert_eq!(notify.trim(), "1");
    }
    let mut macs = parent_macs(&tb);
    assert!(macs.contains(&ia.mac) && macs.contains(&ib.mac), "{macs:?}");
    assert_eq!(leases(&tb).len(), 2);

    a.start().unwrap();
    b.start().unwrap();
    let (addr_a, addr_b) = (address(&a, "net1"), address(&b, "net1"));
    let peer = tb.peer_ip.to_string();
    assert!(pings(&a, &addr_b), "a cannot reach b");
    assert!(pings(&b, &addr_a), "b cannot reach a");
    assert!(
        pings(&a, &peer) && pings(&b, &peer),
        "containers cannot reach the peer host"
    );
    let from_peer = tb
        .in_peer(&["busybox", "ping", "-c", "1", "-W", "2", &addr_a])
        .unwrap();
    assert!(from_peer.status.success(), "the peer host cannot reach a");

    delete(a);
    delete(b);
    assert_eq!(
        leases(&tb),
        Vec::<String>::new(),
        "addresses are free again"
    );
    assert_eq!(records(&tb), Vec::<String>::new());
    assert_mac_leaves_parent(&tb, &ia.mac);
    assert_mac_leaves_parent(&tb, &ib.mac);
    macs = parent_macs(&tb);
    assert!(!macs.contains(&ia.mac), "{macs:?}");

    // a's address is free: a third container can have it by name.
    let c = hooked(&tb, &config, "c")
        .annotation("nsbypass.io/network", "fast")
        .annotation("nsbypass.io/ip", &format!("fast={addr_a}"))
        .create()
        .unwrap();
    assert_eq!(address(&c, "net1"), addr_a);
    delete(c);
    assert!(leases(&tb).is_empty());
}

#[test]
fn a_container_that_asks_for_nothing_is_untouched() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let c = hooked(&tb, &config, "plain").create().unwrap();
    let names: Vec<String> = ifaces(&c).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["lo"]);
    delete(c);
    // The hook left before loading its config: no state dir, no log.
    assert!(!tb.state_dir().exists());
    assert!(!tb.dir.join("nsbypass.log").exists());
}

#[test]
fn a_container_joining_anothers_namespace_shares_its_link() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let infra = hooked(&tb, &config, "infra")
        .annotation("nsbypass.io/network", "fast")
        .create()
        .unwrap();
    let app = hooked(&tb, &config, "app")
        .annotation("nsbypass.io/network", "fast")
        .join_netns_of(&infra)
        .create()
        .unwrap();
    assert_eq!(infra.netns_inode().unwrap(), app.netns_inode().unwrap());
    let macvlans: Vec<Iface> = ifaces(&app)
        .into_iter()
        .filter(|i| i.kind == "macvlan")
        .collect();
    assert_eq!(
        macvlans.len(),
        1,
        "one link per network per namespace: {macvlans:?}"
    );
    assert_eq!(macvlans[0], iface(&infra, "net1"));
    assert_eq!(leases(&tb).len(), 1);

    // The first container leaving keeps the link for the one still there.
    app.start().unwrap();
    delete(infra);
    assert_eq!(leases(&tb).len(), 1);
    assert!(
        pings(&app, &tb.peer_ip.to_string()),
        "app lost the shared link"
    );
    let mac = iface(&app, "net1").mac;
    delete(app);
    assert!(leases(&tb).is_empty());
    assert!(records(&tb).is_empty());
    assert_mac_leaves_parent(&tb, &mac);
}

#[test]
fn a_recreated_container_keeps_its_mac_and_address() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let make = || {
        hooked(&tb, &config, "web")
            .annotation("nsbypass.io/network", "fast")
            .create()
            .unwrap()
    };
    let first = make();
    let before = iface(&first, "net1");
    delete(first);
    // No waiting: the kernel may still be destroying the first namespace,
    // with a link of the same MAC on the parent.
    let second = make();
    let after = iface(&second, "net1");
    assert_eq!((before.mac, before.ipv4), (after.mac, after.ipv4));
    delete(second);
}

#[test]
fn containers_started_at_once_get_distinct_addresses() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let containers: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (tb, config) = (&tb, &config);
                s.spawn(move || {
                    hooked(tb, config, &format!("burst{i}"))
                        .annotation("nsbypass.io/network", "fast")
                        .create()
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses: Vec<String> = containers.iter().map(|c| address(c, "net1")).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 4, "{addresses:?}");
    assert_eq!(leases(&tb).len(), 4);
    for c in containers {
        delete(c);
    }
    assert!(leases(&tb).is_empty());
}

#[test]
fn layer2_network_with_mtu_and_custom_ifname() {
    let Some(tb) = testbed() else { return };
    let config = config(
        &tb,
        &format!("[networks.raw]\nparent = \"{}\"\nifname = \"bypass0\"\nmtu = 1400\nmode = \"private\"\n", tb.parent),
    );
    let c = hooked(&tb, &config, "l2")
        .annotation("nsbypass.io/network", "fast,raw")
        .create()
        .unwrap();
    let raw = iface(&c, "bypass0");
    assert_eq!(
        (raw.mtu, raw.mode.as_str(), raw.ipv4.len()),
        (1400, "private", 0),
        "{raw:?}"
    );
    assert_eq!(iface(&c, "net1").mtu, 1500, "inherits the parent's MTU");
    delete(c);
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());
}

#[test]
fn bad_requests_fail_with_one_clear_line_and_leave_nothing() {
    let Some(tb) = testbed() else { return };
    let config = config(
        &tb,
        "[networks.ghost]\nparent = \"nope0\"\n[networks.jumbo]\nparent = \"PARENT\"\nmtu = 9000\n"
            .replace("PARENT", &tb.parent)
            .as_str(),
    );
    let holder = hooked(&tb, &config, "holder")
        .annotation("nsbypass.io/network", "fast")
        .annotation("nsbypass.io/ip", "fast=10.77.0.150")
        .create()
        .unwrap();
    let cases = [
        ("fast,slow", "", "container bad: network slow: validate: no such network in"),
        ("fast", "fast=10.77.0.99", "container bad: network fast: validate: 10.77.0.99 is outside the range 10.77.0.100-10.77.0.199"),
        ("fast", "fast=10.77.0.150", "container bad: network fast: validate: 10.77.0.150 is taken by container holder"),
        ("fast", "fast=10.77.0.1", "container bad: network fast: validate: 10.77.0.1 is the network's gateway"),
        ("fast,ghost", "", "container bad: network ghost: validate: parent nope0 does not exist"),
        ("jumbo", "", &format!("container bad: network jumbo: validate: mtu 9000 is above parent {}'s 1500", tb.parent)),
        ("fast", "fast=10.77.0.300", "container bad: read request: annotation nsbypass.io/ip: \"10.77.0.300\" is not an IP address"),
    ];
    for (networks, ip, want) in cases {
        let mut builder = hooked(&tb, &config, "bad").annotation("nsbypass.io/network", networks);
        if !ip.is_empty() {
            builder = builder.annotation("nsbypass.io/ip", ip);
        }
        let line = hook_line(&builder.create_err());
        assert!(
            line.starts_with(&format!("nsbypass: hook prestart: {want}")),
            "got:  {line}\nwant: {want}"
        );
        assert_eq!(leases(&tb), ["fast/10.77.0.150"], "after {networks} {ip}");
        assert_eq!(
            records(&tb).len(),
            2,
            "only holder's records: {:?}",
            records(&tb)
        );
    }
    assert_eq!(tb.runc_list().unwrap(), ["holder"]);

    // An unknown config key fails just as clearly, naming file, line and key.
    let broken = tb.dir.join("broken.toml");
    std::fs::write(
        &broken,
        "[networks.fast]\nparent = \"x\"\nsubent = \"10.0.0.0/24\"\n",
    )
    .unwrap();
    let line = hook_line(
        &hooked(&tb, &broken, "bad")
            .annotation("nsbypass.io/network", "fast")
            .create_err(),
    );
    assert!(
        line.contains(&format!(
            "container bad: load config: config {}:3:1: unknown field `subent`",
            broken.display()
        )),
        "{line}"
    );
    delete(holder);
}

#[test]
fn a_failure_midway_undoes_the_links_already_made() {
    let Some(tb) = testbed() else { return };
    // A passthru MACVLAN cannot join a parent that already has a bridge
    // child: `fast` is made, then `pt` fails in the kernel.
    let config = config(
        &tb,
        &format!(
            "[networks.pt]\nparent = \"{}\"\nmode = \"passthru\"\n",
            tb.parent
        ),
    );
    // The container joins a namespace that outlives it, so what the failed
    // setup left (or did not leave) in it can be inspected.
    let ns = format!("{}-x", tb.tag);
    let kept = KeptNetns::new(&ns);
    let line = hook_line(
        &hooked(&tb, &config, "half")
            .annotation("nsbypass.io/network", "fast,pt")
            .netns_path(&format!("/run/netns/{ns}"))
            .create_err(),
    );
    assert!(
        line.starts_with("nsbypass: hook prestart: container half: network pt: create link: create macvlan net2: Invalid argument"),
        "{line}"
    );
    let links = Command::new("ip")
        .args(["-n", &ns, "-o", "link", "show"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "only lo may remain: {links}");
    assert!(leases(&tb).is_empty(), "{:?}", leases(&tb));
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
    drop(kept);
}

/// A named netns made by a test and deleted when dropped.
struct KeptNetns(String);

impl KeptNetns {
    fn new(name: &str) -> KeptNetns {
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip netns add {name}");
        KeptNetns(name.to_owned())
    }
}

impl Drop for KeptNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs the hook binary directly with `stdin` as the state document.
fn run_hook(stage: &str, config: &std::path::Path, stdin: &[u8]) -> (bool, String) {
    let mut child = Command::new(nsbypass())
        .args(["--config", &config.to_string_lossy(), "hook", stage])
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A hook that refuses its command line exits before reading stdin:
    // the write may then meet a closed pipe, which is no failure of ours.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8(out.stderr).unwrap())
}

#[test]
fn malformed_hook_input_is_one_clear_line() {
    // No namespaces needed: these fail before the hook touches anything.
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!("state_dir = \"{}/state\"\n", dir.path().display()),
    )
    .unwrap();

    let (ok, err) = run_hook("prestart", &config, b"{\"ociVersion\": ");
    assert!(!ok);
    assert!(
        err.starts_with(
            "nsbypass: hook prestart: read state: state on stdin is not OCI state JSON"
        ),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let state = format!(
        r#"{{"ociVersion":"1.0.2","id":"c9","status":"creating","pid":1,"bundle":"{}/gone"}}"#,
        dir.path().display()
    );
    let (ok, err) = run_hook("prestart", &config, state.as_bytes());
    assert!(!ok);
    assert_eq!(
        err.trim_end(),
        format!("nsbypass: hook prestart: container c9: read config.json: {}/gone/config.json: No such file or directory (os error 2)", dir.path().display())
    );

    // An unknown stage (a typo in a hook entry) is one line too.
    let (ok, err) = run_hook("prestrat", &config, b"{}");
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("nsbypass: invalid value 'prestrat'"),
        "{err}"
    );

    // Stages that do nothing, and a poststop for a container never set up, succeed quietly.
    for stage in ["createContainer", "startContainer", "poststart"] {
        assert_eq!(run_hook(stage, &config, b"garbage"), (true, String::new()));
    }
    assert_eq!(
        run_hook("poststop", &config, state.as_bytes()),
        (true, String::new())
    );
    assert!(!dir.path().join("state").join("containers").exists());
}

#[test]
fn missing_capabilities_are_named_plainly() {
    if nsbypass_testbed::skip_unless_root() {
        return;
    }
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}/state\"\n[networks.fast]\nparent = \"eth9\"\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("b")).unwrap();
    std::fs::write(
        dir.path().join("b/config.json"),
        r#"{"annotations":{"nsbypass.io/network":"fast"}}"#,
    )
    .unwrap();
    let state = format!(
        r#"{{"id":"c1","pid":1,"bundle":"{}/b"}}"#,
        dir.path().display()
    );
    // Root, but with CAP_NET_ADMIN and CAP_SYS_ADMIN out of the bounding set.
    let mut child = Command::new("setpriv")
        .args(["--bounding-set", "-net_admin,-sys_admin", "--"])
        .arg(nsbypass())
        .args(["--config", &config.to_string_lossy(), "hook", "prestart"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(state.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "nsbypass: hook prestart: container c1: check capabilities: nsbypass needs CAP_NET_ADMIN and CAP_SYS_ADMIN \
         but lacks CAP_NET_ADMIN and CAP_SYS_ADMIN; run it as root from the runtime's hooks"
    );
}
