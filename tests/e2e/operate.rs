//! Issue 8, by hand and at scale: `nsbypass attach`, `detach`, `list` and
//! `gc` driven as an operator would, inside a testbed's host namespace,
//! checked against what the kernel has in each namespace and what the
//! state directory holds.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::direct::*;
use common::{ifaces_in, testbed};
use nsbypass_testbed::Testbed;
use serde_json::Value;

/// `nsbypass --config CONFIG ARGS...` in the testbed's host namespace,
/// with `PATH` only, and `NSBYPASS_FAILPOINT=failpoint` if given.
fn command(tb: &Testbed, config: &Path, args: &[&str], failpoint: Option<&str>) -> Command {
    let mut cmd = common::direct::cli(tb, config, args);
    if let Some(spec) = failpoint {
        cmd.env("NSBYPASS_FAILPOINT", spec);
    }
    cmd
}

fn run(tb: &Testbed, config: &Path, args: &[&str]) -> Output {
    command(tb, config, args, None)
        .output()
        .expect("running nsbypass")
}

/// Runs the command and returns its stdout; panics unless it exits 0
/// with nothing on stderr.
fn ok(tb: &Testbed, config: &Path, args: &[&str]) -> String {
    let out = run(tb, config, args);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "nsbypass {}: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the command and returns its one stderr line; panics unless it
/// exits non-zero with exactly one line.
fn fails(tb: &Testbed, config: &Path, args: &[&str]) -> String {
    let out = run(tb, config, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "nsbypass {} was to fail: {stderr}",
        args.join(" ")
    );
    let line = stderr.strip_suffix('\n').unwrap_or(&stderr);
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "one line: {stderr:?}"
    );
    line.to_owned()
}

fn list_json(tb: &Testbed, config: &Path) -> Vec<Value> {
    let text = ok(tb, config, &["list", "--json"]);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("list --json: {e}: {text}"))
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `attach --netns PATH --id ID --network fast`.
fn attach_netns(path: &Path, id: &str) -> Vec<String> {
    [
        "attach",
        "--netns",
        path_str(path),
        "--id",
        id,
        "--network",
        "fast",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs every command line of `all` at once and panics unless each exits 0.
fn run_concurrently(tb: &Testbed, config: &Path, all: &[Vec<String>]) {
    let children: Vec<_> = all
        .iter()
        .map(|args| {
            command(tb, config, &strs(args), None)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting nsbypass")
        })
        .collect();
    for (args, child) in all.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nsbypass {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The MACVLAN `net1` in `netns`: (MAC, addresses as `A.B.C.D/N`).
fn net1(netns: &Path) -> (String, Vec<String>) {
    let all = ifaces_in(netns);
    let i = all
        .iter()
        .find(|i| i.name == "net1" && i.kind == "macvlan")
        .unwrap_or_else(|| panic!("no MACVLAN net1 in {}: {all:?}", netns.display()));
    (i.mac.clone(), i.ipv4.clone())
}

/// Checks one `list --json` row field by field against the kernel.
fn check_row(row: &Value, tb: &Testbed, id: &str, netns: &Path, source: &str) {
    let (mac, addresses) = net1(netns);
    assert_eq!(row["id"], id, "{row}");
    assert_eq!(row["ids"], serde_json::json!([id]), "{row}");
    assert_eq!(row["network"], "fast", "{row}");
    assert_eq!(row["ifname"], "net1", "{row}");
    assert_eq!(row["mac"], mac.as_str(), "{row}");
    assert_eq!(row["addresses"], serde_json::json!(addresses), "{row}");
    assert_eq!(row["parent"], tb.parent.as_str(), "{row}");
    assert_eq!(row["netns"], path_str(netns), "{row}");
    assert_eq!(row["netns_key"], netns_key(netns).as_str(), "{row}");
    assert_eq!(row["source"], source, "{row}");
    assert_eq!(row["state"], "reachable", "{row}");
    let since = row["since"].as_str().unwrap();
    let year = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT"])
        .output()
        .unwrap();
    assert!(
        since.starts_with(String::from_utf8_lossy(&year.stdout).trim())
            && since.ends_with('Z')
            && since.len() == 20,
        "since is RFC 3339 UTC of today: {since}"
    );
}

fn row_of<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no row for {id}: {rows:?}"))
}

#[test]
fn attach_list_detach_round_trip_on_ip_netns_and_an_unshare_process() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 199);
    let pinned = PinnedNetns::new(&tb, "x");

    let out = ok(&tb, &config, &strs(&attach_netns(&pinned.path, "x")));
    let (mac_x, addr_x) = net1(&pinned.path);
    assert_eq!(
        out,
        format!("attached x to fast: net1 {mac_x} {}\n", addr_x[0]),
        "one line per network"
    );
    // Attaching again changes nothing.
    ok(&tb, &config, &strs(&attach_netns(&pinned.path, "x")));
    assert_eq!(net1(&pinned.path), (mac_x.clone(), addr_x.clone()));

    // A process made with `unshare -n`, with a pinned address.
    let sleeper = Sleeper::own_netns(&tb);
    let pid = sleeper.pid.to_string();
    let pinned_ip = tb.addr(150).to_string();
    ok(
        &tb,
        &config,
        &[
            "attach",
            "--pid",
            &pid,
            "--id",
            "y",
            "--network",
            "fast",
            "--ip",
            &format!("fast={pinned_ip}"),
        ],
    );
    assert_eq!(net1(&sleeper.netns()).1, [format!("{pinned_ip}/24")]);

    // And a container wired by the hook, listed beside them.
    let hooked = Sleeper::own_netns(&tb);
    let bundle = bundle(&tb, "z", None);
    HookRun::prestart(&tb, &config, "z", hooked.pid, &bundle)
        .run()
        .assert_ok();

    let rows = list_json(&tb, &config);
    assert_eq!(rows.len(), 3, "{rows:?}");
    check_row(row_of(&rows, "x"), &tb, "x", &pinned.path, "attach");
    check_row(row_of(&rows, "y"), &tb, "y", &sleeper.netns(), "attach");
    check_row(row_of(&rows, "z"), &tb, "z", &hooked.netns(), "hook");
    let table = ok(&tb, &config, &["list"]);
    assert_eq!(table.lines().count(), 4, "a header and three rows: {table}");
    assert!(
        table.contains(&mac_x) && table.contains(&pinned_ip),
        "{table}"
    );

    // Leases name each namespace.
    assert_unique_and_leased(
        &tb,
        &[
            ("x".into(), pinned.path.clone()),
            ("y".into(), sleeper.netns()),
            ("z".into(), hooked.netns()),
        ],
    );

    // --profile needs a process: refused before anything changes.
    let line = fails(
        &tb,
        &config,
        &[
            "attach",
            "--netns",
            path_str(&pinned.path),
            "--id",
            "w",
            "--network",
            "fast",
            "--profile",
            "onload",
        ],
    );
    assert!(
        line.starts_with("nsbypass: attach w: validate: --profile needs --pid"),
        "{line}"
    );
    // Nor may a profile reach the host through a process that shares its
    // mounts or its root.
    let line = fails(
        &tb,
        &config,
        &[
            "attach",
            "--pid",
            &pid,
            "--id",
            "w",
            "--network",
            "fast",
            "--profile",
            "onload",
        ],
    );
    assert!(line.contains("shares nsbypass's mount namespace"), "{line}");
    let private_mounts = Sleeper::new(&tb, &["--net", "--mount"]);
    let line = fails(
        &tb,
        &config,
        &[
            "attach",
            "--pid",
            &private_mounts.pid.to_string(),
            "--id",
            "w",
            "--network",
            "fast",
            "--profile",
            "onload",
        ],
    );
    assert!(line.contains("has the host's root directory"), "{line}");
    assert!(private_mounts.links().is_empty());
    // A bad request names the flag.
    let line = fails(
        &tb,
        &config,
        &[
            "attach",
            "--pid",
            &pid,
            "--id",
            "w",
            "--network",
            "fast",
            "--ip",
            "slow=10.0.0.1",
        ],
    );
    assert!(line.contains("--ip: "), "{line}");

    // Detach: the link and lease go; twice is fine; unknown is an error.
    let out = ok(&tb, &config, &["detach", "--id", "x"]);
    assert_eq!(out, format!("detached x from fast: net1 {}\n", addr_x[0]));
    assert!(ifaces_in(&pinned.path).iter().all(|i| i.kind != "macvlan"));
    assert_eq!(
        ok(&tb, &config, &["detach", "--id", "x"]),
        "x is detached already\n"
    );
    let line = fails(&tb, &config, &["detach", "--id", "never"]);
    assert_eq!(
        line,
        "nsbypass: detach never: read records: nothing is attached as \"never\" (see nsbypass list)"
    );
    // A process that still runs is detached too (detach is the operator's word).
    ok(&tb, &config, &["detach", "--id", "y"]);
    assert!(sleeper.links().is_empty(), "{:?}", sleeper.links());
    HookRun::poststop(&tb, &config, "z", &bundle)
        .run()
        .assert_ok();
    // poststop runs once init is dead, but this namespace still is.
    assert_eq!(list_json(&tb, &config).len(), 1, "z's init still runs");
    drop(hooked);
    HookRun::poststop(&tb, &config, "z", &bundle)
        .run()
        .assert_ok();
    sweep_drained(&tb, "after z's poststop");

    assert!(list_json(&tb, &config).is_empty());
    assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));
    // Only the detach markers remain; gc keeps them a day, so that a
    // second detach still succeeds.
    assert_eq!(state_files(&tb, "containers"), ["x.json", "y.json"]);
    let out = ok(&tb, &config, &["gc"]);
    assert!(
        out.ends_with("gc: freed 0 leases, 0 namespace records, 0 container records; 0 live links untouched\n"),
        "{out}"
    );
    assert_eq!(
        ok(&tb, &config, &["detach", "--id", "y"]),
        "y is detached already\n"
    );
    // A marker a day old goes.
    let marker = tb.state_dir().join("containers/x.json");
    let aged = r#"{"detached": 1}"#;
    std::fs::write(&marker, aged).unwrap();
    let out = ok(&tb, &config, &["gc"]);
    assert!(out.contains("removed the record of container x\n"), "{out}");
    assert_eq!(state_files(&tb, "containers"), ["y.json"]);
    for sub in ["netns", "tmp"] {
        assert!(state_files(&tb, sub).is_empty(), "{sub}");
    }
    assert!(leases_on(&tb).is_empty());
}

/// Sends `payload` to `to` from inside the namespace at `netns`, on a
/// thread of its own (only that thread enters the namespace).
fn send_from(netns: &Path, to: SocketAddr, payload: Vec<u8>) {
    let netns = File::open(netns).unwrap();
    std::thread::spawn(move || {
        nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        socket.send_to(&payload, to).unwrap();
    })
    .join()
    .unwrap();
}

#[test]
fn two_hundred_concurrent_attaches_get_unique_addresses_and_reach_the_peer() {
    const N: usize = 200;
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 2, 254);
    let namespaces: Vec<PinnedNetns> = (0..N)
        .map(|i| PinnedNetns::new(&tb, &format!("a{i}")))
        .collect();

    let started = Instant::now();
    let attaches: Vec<Vec<String>> = namespaces
        .iter()
        .enumerate()
        .map(|(i, ns)| attach_netns(&ns.path, &format!("a{i}")))
        .collect();
    run_concurrently(&tb, &config, &attaches);
    eprintln!("{N} concurrent attaches took {:?}", started.elapsed());

    let labelled: Vec<(String, PathBuf)> = namespaces
        .iter()
        .map(|ns| (ns.name.clone(), ns.path.clone()))
        .collect();
    let found = assert_unique_and_leased(&tb, &labelled);
    assert_eq!(found.len(), N, "one address per namespace");
    let macs: BTreeSet<String> = namespaces.iter().map(|ns| net1(&ns.path).0).collect();
    assert_eq!(macs.len(), N, "one MAC per namespace");

    // Every namespace reaches the peer host.
    let peer = tb.peer_udp(40800).unwrap();
    peer.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let to = SocketAddr::from((tb.peer_ip, 40800));
    let mut heard: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for _round in 0..3 {
        for ns in &namespaces {
            let addr = only_addr(&ns.path);
            if !heard.contains(&addr) {
                send_from(&ns.path, to, ns.name.clone().into_bytes());
            }
        }
        let mut buf = [0u8; 64];
        while let Ok((_, from)) = peer.recv_from(&mut buf) {
            if let SocketAddr::V4(v4) = from {
                heard.insert(*v4.ip());
            }
        }
        if heard.len() == N {
            break;
        }
    }
    let expected: BTreeSet<Ipv4Addr> = found.keys().copied().collect();
    assert_eq!(
        heard, expected,
        "every namespace's address reached the peer"
    );
    assert_eq!(list_json(&tb, &config).len(), N);

    let detaches: Vec<Vec<String>> = (0..N)
        .map(|i| {
            ["detach", "--id", &format!("a{i}")]
                .map(str::to_owned)
                .to_vec()
        })
        .collect();
    run_concurrently(&tb, &config, &detaches);
    assert!(list_json(&tb, &config).is_empty());
    assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));
    for ns in &namespaces {
        assert!(ifaces_in(&ns.path).iter().all(|i| i.kind != "macvlan"));
    }
}

/// Every failpoint of network setup.
const POINTS: &[&str] = &[
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
fn gc_after_killed_attaches_and_hooks_and_deleted_namespaces_makes_the_pool_whole() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 199);
    // Live attachments gc must leave alone: an attach, a hook's container,
    // and a pod namespace whose container died without a poststop.
    let live = PinnedNetns::new(&tb, "live");
    ok(&tb, &config, &strs(&attach_netns(&live.path, "live")));
    let running = Sleeper::own_netns(&tb);
    let running_bundle = bundle(&tb, "running", None);
    HookRun::prestart(&tb, &config, "running", running.pid, &running_bundle)
        .run()
        .assert_ok();
    let pod = PinnedNetns::new(&tb, "pod");
    let pod_bundle = bundle(&tb, "podc", Some(&pod.path));
    let member = Sleeper::in_netns(&pod.path);
    HookRun::prestart(&tb, &config, "podc", member.pid, &pod_bundle)
        .run()
        .assert_ok();
    member.kill();
    let before: Vec<(String, Vec<String>)> = [&live.path, &running.netns(), &pod.path]
        .iter()
        .map(|p| net1(p))
        .collect();

    // Killed midway, at every step, both ways in; then the namespaces go
    // without detach or poststop.
    let mut doomed = Vec::new();
    for (i, point) in POINTS.iter().enumerate() {
        let ns = PinnedNetns::new(&tb, &format!("k{i}"));
        let out = command(
            &tb,
            &config,
            &strs(&attach_netns(&ns.path, &format!("k{i}"))),
            Some(&format!("{point}=kill")),
        )
        .output()
        .unwrap();
        assert!(
            std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(9),
            "attach killed at {point}: {}",
            out.status
        );
        doomed.push(ns);
        let sleeper = Sleeper::own_netns(&tb);
        let b = bundle(&tb, &format!("h{i}"), None);
        HookRun::prestart(&tb, &config, &format!("h{i}"), sleeper.pid, &b)
            .failpoint(&format!("{point}=kill"))
            .run()
            .assert_killed();
        sleeper.kill();
    }
    // Finished setups whose runtime never ran poststop.
    for i in 0..3 {
        let sleeper = Sleeper::own_netns(&tb);
        let b = bundle(&tb, &format!("n{i}"), None);
        HookRun::prestart(&tb, &config, &format!("n{i}"), sleeper.pid, &b)
            .run()
            .assert_ok();
        sleeper.kill();
        let ns = PinnedNetns::new(&tb, &format!("d{i}"));
        ok(
            &tb,
            &config,
            &strs(&attach_netns(&ns.path, &format!("d{i}"))),
        );
        doomed.push(ns);
    }
    drop(doomed);
    // Namespaces die asynchronously; gc keeps a dying one's lease (its
    // link still answers for it), so wait until their MACs are gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while leases_on(&tb).len() > 3 && Instant::now() < deadline {
        let out = ok(&tb, &config, &["gc"]);
        if out.contains("freed 0 leases") {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let leases = leases_on(&tb);
    let holders: BTreeSet<&str> = leases
        .values()
        .map(|h| h["container"].as_str().unwrap())
        .collect();
    assert_eq!(
        holders,
        BTreeSet::from(["live", "running", "podc"]),
        "only live attachments keep leases: {leases:?}"
    );
    let after: Vec<(String, Vec<String>)> = [&live.path, &running.netns(), &pod.path]
        .iter()
        .map(|p| net1(p))
        .collect();
    assert_eq!(before, after, "live links untouched");
    assert!(
        state_files(&tb, "tmp").is_empty(),
        "{:?}",
        state_files(&tb, "tmp")
    );
    let mut records = state_files(&tb, "netns");
    records.sort();
    let mut want = vec![
        format!("{}.json", live.key()),
        format!("{}.json", running_key(&running)),
        format!("{}.json", pod.key()),
    ];
    want.sort();
    assert_eq!(records, want);
    assert_eq!(
        state_files(&tb, "containers"),
        ["live.json", "podc.json", "running.json"]
    );
    // The whole pool is free but for the three: 97 more attach.
    let out = ok(&tb, &config, &["gc"]);
    assert!(
        out.contains("freed 0 leases") && out.contains("3 live links untouched"),
        "{out}"
    );

    // What was live still tears down as usual.
    ok(&tb, &config, &["detach", "--id", "live"]);
    drop(running);
    HookRun::poststop(&tb, &config, "running", &running_bundle)
        .run()
        .assert_ok();
    HookRun::poststop(&tb, &config, "podc", &pod_bundle)
        .run()
        .assert_ok();
    // running's namespace drains until the kernel is done with it.
    sweep_drained(&tb, "after the poststops");
    ok(&tb, &config, &["gc"]);
    assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));
    for sub in ["netns", "tmp"] {
        assert!(state_files(&tb, sub).is_empty(), "{sub}");
    }
    assert_eq!(
        state_files(&tb, "containers"),
        ["live.json"],
        "the detach marker"
    );
}

fn running_key(s: &Sleeper) -> String {
    s.netns_key()
}

#[test]
fn max_links_refuses_the_next_attach_and_makes_nothing() {
    let Some(tb) = testbed() else { return };
    let config = common::config(&tb, &format!("[parents.{}]\nmax_links = 2\n", tb.parent));
    let a = PinnedNetns::new(&tb, "m0");
    let b = PinnedNetns::new(&tb, "m1");
    let c = PinnedNetns::new(&tb, "m2");
    for (ns, id) in [(&a, "m0"), (&b, "m1")] {
        ok(&tb, &config, &strs(&attach_netns(&ns.path, id)));
    }
    let line = fails(&tb, &config, &strs(&attach_netns(&c.path, "m2")));
    assert_eq!(
        line,
        format!(
            "nsbypass: attach m2: network fast: validate: parent {p} holds 2 nsbypass links and its max_links is 2 ([parents.{p}] in {}): detach one or raise the limit",
            config.display(),
            p = tb.parent
        )
    );
    assert!(ifaces_in(&c.path).iter().all(|i| i.kind != "macvlan"));
    assert_eq!(leases_on(&tb).len(), 2);
    assert!(!state_files(&tb, "containers").contains(&"m2.json".to_owned()));
    // A namespace that is gone frees its place.
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = run(&tb, &config, &strs(&attach_netns(&c.path, "m2")));
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&tb, &config, &["detach", "--id", "m1"]);
    ok(&tb, &config, &["detach", "--id", "m2"]);
}

#[test]
fn attach_by_pid_carries_a_profile_into_a_container() {
    let Some(tb) = testbed() else { return };
    let library = tb.dir.join("libstack.so.1");
    std::fs::write(&library, "the host's stack\n").unwrap();
    let config = common::config(
        &tb,
        &format!(
            "[profiles.stack]\nmounts = [{{ source = \"{}\", target = \"/usr/lib/libstack.so.1\" }}]\n",
            library.display()
        ),
    );
    // A container no runtime hook knows of: its own namespaces and root.
    let c = tb.container("plain").create().unwrap();
    c.start().unwrap();
    let pid = c.pid.to_string();
    let out = ok(
        &tb,
        &config,
        &[
            "attach",
            "--pid",
            &pid,
            "--id",
            "plain",
            "--network",
            "fast",
            "--profile",
            "stack",
        ],
    );
    assert!(out.ends_with("attached plain to profile stack\n"), "{out}");
    assert_eq!(
        c.exec_ok(&["cat", "/usr/lib/libstack.so.1"]).unwrap(),
        "the host's stack\n"
    );
    let rows = list_json(&tb, &config);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["source"], "attach");
    // Nothing of it on the host or in the image.
    assert!(!Path::new("/usr/lib/libstack.so.1").exists());
    assert!(!tb.rootfs().join("usr/lib/libstack.so.1").exists());
    ok(&tb, &config, &["detach", "--id", "plain"]);
    assert!(list_json(&tb, &config).is_empty());
    assert!(leases_on(&tb).is_empty());
}

/// The host shims in the testbed's host namespace (MACVLANs there).
fn shims(tb: &Testbed) -> Vec<common::Iface> {
    ifaces_in(&Path::new("/run/netns").join(&tb.host_ns))
        .into_iter()
        .filter(|i| i.kind == "macvlan")
        .collect()
}

fn host_pings(tb: &Testbed, address: &str) -> bool {
    tb.in_host(&["busybox", "ping", "-c", "1", "-W", "2", address])
        .expect("running ping")
        .status
        .success()
}

#[test]
fn the_host_reaches_attached_namespaces_through_its_shim_until_the_last_detach_or_gc() {
    let Some(tb) = testbed() else { return };
    let config = common::config(&tb, "host_shim = true\n");
    let x = PinnedNetns::new(&tb, "sx");
    let attach = |ns: &PinnedNetns, id: &str| ok(&tb, &config, &strs(&attach_netns(&ns.path, id)));
    attach(&x, "sx");
    let addr = only_addr(&x.path).to_string();
    assert_eq!(shims(&tb).len(), 1);
    assert!(
        host_pings(&tb, &addr),
        "the host reaches sx through the shim"
    );
    // The shim holds a lease of its own, not shown as an attachment.
    assert_eq!(leases_on(&tb).len(), 2);
    assert_eq!(list_json(&tb, &config).len(), 1);

    ok(&tb, &config, &["detach", "--id", "sx"]);
    assert!(shims(&tb).is_empty(), "the last detach takes the shim");
    assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));

    // A namespace that goes without a detach: gc takes its lease and the
    // shim it was the last reason for.
    let y = PinnedNetns::new(&tb, "sy");
    attach(&y, "sy");
    assert_eq!(shims(&tb).len(), 1);
    drop(y);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shims(&tb).is_empty() {
        assert!(Instant::now() < deadline, "gc never took the shim");
        ok(&tb, &config, &["gc"]);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));
    assert_eq!(state_files(&tb, "shims"), Vec::<String>::new());
}

#[test]
fn list_shows_both_families_of_a_dual_stack_attachment() {
    let Some(tb) = testbed() else { return };
    let config = common::config(
        &tb,
        "subnet6 = \"fd00:77::/64\"\nrange6 = \"fd00:77::100-fd00:77::1ff\"\n",
    );
    let x = PinnedNetns::new(&tb, "dx");
    ok(
        &tb,
        &config,
        &[
            "attach",
            "--netns",
            path_str(&x.path),
            "--id",
            "dx",
            "--network",
            "fast",
            "--ip",
            &format!("fast={},fast=fd00:77::150", tb.addr(150)),
        ],
    );
    let rows = list_json(&tb, &config);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["addresses"],
        serde_json::json!([format!("{}/24", tb.addr(150)), "fd00:77::150/64"])
    );
    let table = ok(&tb, &config, &["list"]);
    assert!(table.contains("fd00:77::150/64"), "{table}");
    ok(&tb, &config, &["detach", "--id", "dx"]);
    assert!(list_json(&tb, &config).is_empty());
}

/// Records name their leases by network and address only: a config that
/// moves them to another store (here from the files to etcd) while a
/// namespace holds an address is refused with one line, and changes
/// nothing; once nothing is attached, the new store is taken.
#[test]
fn a_new_lease_store_is_refused_while_records_hold_leases() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 199);
    let pinned = PinnedNetns::new(&tb, "st");
    ok(&tb, &config, &strs(&attach_netns(&pinned.path, "st")));
    let before = leases_on(&tb);

    let text = std::fs::read_to_string(&config).unwrap();
    let moved = tb.dir.join("config-etcd.toml");
    std::fs::write(
        &moved,
        format!("{text}\n[leases]\nstore = \"etcd\"\nendpoints = [\"http://127.0.0.1:9\"]\nnode = \"st-node\"\n"),
    )
    .unwrap();
    let line = fails(&tb, &moved, &["list"]);
    assert!(
        line.contains("the lease store is now etcd (prefix /nsbypass, node st-node)")
            && line.contains("hold leases in file"),
        "{line}"
    );
    assert_eq!(leases_on(&tb), before, "nothing changed");
    assert_eq!(net1(&pinned.path).1.len(), 1, "the attachment is intact");

    ok(&tb, &config, &["detach", "--id", "st"]);
    let out = run(&tb, &moved, &["list"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("the lease store is now"),
        "taken once nothing is attached: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
