//! Issue 7, the network side: no address is ever live on two MACVLANs, no
//! lease of a live namespace is lost, and nothing a failed or killed hook
//! made survives the next poststop, setup or reclaim.
//!
//! The hook binary (built with the `failpoints` feature) runs directly as
//! a runtime would run it, in a testbed's host namespace (see
//! `common::direct`), so that a test can arm failpoints, SIGKILL it at any
//! moment, and run poststop when (and as often as) it wants. A poststop is
//! only ever run after the container's init is dead, as runtimes do; a
//! pod's pinned namespace may live on.
//!
//! Each test asserts what the kernel has (addresses on MACVLANs in every
//! live namespace of the test, via `ip` in the namespace) against what the
//! state directory holds (lease files naming host and namespace key,
//! records, scratch files).

mod common;

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::direct::*;
use common::{assert_mac_leaves_parent, ifaces_in, testbed};
use nsbypass_testbed::Testbed;

/// Every failpoint of network setup, in the order setup reaches them, with
/// the step its error line names (`network fast: ` for the steps on one
/// network). [`failpoints_match_the_hooks`] checks this against
/// `failpoint::ALL`.
const NETWORK_FAILPOINTS: &[(&str, &str)] = &[
    ("assign-nsid", "assign namespace id"),
    ("lease", "network fast: lease address"),
    ("write-intent", "write record"),
    ("write-pointer", "write record"),
    ("create-link", "network fast: create link"),
    ("rename-link", "network fast: rename link"),
    ("arp-notify", "network fast: set arp_notify"),
    ("add-address", "network fast: add address"),
    ("guard-link", "network fast: guard link"),
    ("guard-parent", "network fast: guard parent"),
    ("link-up", "network fast: set link up"),
    ("add-route", "network fast: add route"),
    ("write-final", "write record"),
];

#[test]
fn failpoints_match_the_hooks() {
    // The binary's list, read from its source (the hook is a binary crate:
    // there is nothing to import).
    let source = include_str!("../../hook/src/failpoint.rs");
    let start = source
        .find("pub const ALL: &[&str] = &[")
        .expect("failpoint::ALL");
    let end = start + source[start..].find("];").expect("end of failpoint::ALL");
    let all: BTreeSet<&str> = source[start..end]
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|n| !n.starts_with("profile-") && !n.starts_with("shim-"))
        // Reached only on a network with subnet6, which these tests'
        // config lacks: addressing.rs fails and kills the hook there.
        .filter(|n| *n != "ndisc-notify")
        // Teardown's, not setup's (hook/src/tests.rs kills there).
        .filter(|n| *n != "remove-record")
        .collect();
    let here: BTreeSet<&str> = NETWORK_FAILPOINTS.iter().map(|(n, _)| *n).collect();
    assert_eq!(all, here, "the network failpoints these tests cover");
}

/// A prestart of `id` with failpoint `name` armed as `action`.
///
/// `rename-link` is reached only when creating the link under its final
/// name fails with EEXIST. This kernel checks a new link's name only in
/// the namespace it is born in (a `net1` in the hook's own namespace does
/// not clash: tried), and setup has just checked that name free there. So
/// the clash is made for real in between: the hook sleeps at `create-link`
/// (after its records are written, before the create) while the test
/// creates a veth `net1` in the container's namespace; the create then
/// fails with EEXIST, the link is made under its temporary name, and the
/// rename's failpoint fires. The caller removes the clash with
/// [`remove_clash`].
fn prestart_at(
    tb: &Testbed,
    config: &Path,
    id: &str,
    init: &Sleeper,
    bundle: &Path,
    name: &str,
    action: &str,
) -> HookResult {
    let run = HookRun::prestart(tb, config, id, init.pid, bundle);
    if name != "rename-link" {
        return run.failpoint(&format!("{name}={action}")).run();
    }
    let running = run
        .failpoint(&format!("create-link=sleep-1500,rename-link={action}"))
        .spawn();
    let pointer = tb.state_dir().join("containers").join(format!("{id}.json"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pointer.exists() {
        assert!(
            Instant::now() < deadline,
            "{id}'s setup never wrote its records"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    in_netns_ok(
        &init.netns(),
        &[
            "ip", "link", "add", "net1", "type", "veth", "peer", "name", "clash1",
        ],
    );
    running.wait()
}

/// Removes the veth `net1` [`prestart_at`] made for `rename-link`.
fn remove_clash(netns: &Path) {
    in_netns_ok(netns, &["ip", "link", "del", "net1", "type", "veth"]);
}

fn in_netns_ok(netns: &Path, argv: &[&str]) {
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
}

fn no_free_address(tb: &Testbed, id: &str, first: u8, last: u8) -> String {
    format!(
        "nsbypass: hook prestart: container {id}: network fast: lease address: no free address left in {}-{}",
        tb.addr(first),
        tb.addr(last)
    )
}

/// Defect 1 (`repro_reclaim_pinned.sh`): a pod member's init dies before
/// its poststop; when the pool runs dry, its address, still configured in
/// the live pinned namespace, is not reclaimed. Only once the namespace is
/// gone does a later container get it.
#[test]
fn reclaim_leaves_the_address_of_a_live_pod_namespace_alone() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 101);
    let pod = PinnedNetns::new(&tb, "pod");
    let web = Sleeper::in_netns(&pod.path);
    let web_bundle = bundle(&tb, "web", Some(&pod.path));
    HookRun::prestart(&tb, &config, "web", web.pid, &web_bundle)
        .run()
        .assert_ok();
    let held = only_addr(&pod.path);
    let mac = ifaces_in(&pod.path)
        .into_iter()
        .find(|i| i.name == "net1")
        .expect("net1 in the pod")
        .mac;
    // web's init dies; its poststop has not run yet (or never will).
    web.kill();

    let f1 = Sleeper::own_netns(&tb);
    let f1_bundle = bundle(&tb, "f1", None);
    HookRun::prestart(&tb, &config, "f1", f1.pid, &f1_bundle)
        .run()
        .assert_ok();
    assert_ne!(only_addr(&f1.netns()), held);
    // The pool is dry: reclaim must not take the pod's address.
    let f2 = Sleeper::own_netns(&tb);
    let f2_bundle = bundle(&tb, "f2", None);
    let refused = HookRun::prestart(&tb, &config, "f2", f2.pid, &f2_bundle).run();
    assert_eq!(refused.error_line(), no_free_address(&tb, "f2", 100, 101));
    assert_eq!(links_in(&f2.netns()), ["lo"]);
    let live = || {
        vec![
            ("pod".to_owned(), pod.path.clone()),
            ("f1".to_owned(), f1.netns()),
            ("f2".to_owned(), f2.netns()),
        ]
    };
    let found = assert_unique_and_leased(&tb, &live());
    assert_eq!(found.get(&held).map(String::as_str), Some("pod"));
    assert_eq!(leases_on(&tb).len(), 2, "{:?}", leases_on(&tb));
    assert_eq!(leases_on(&tb)[&held]["container"], "web");
    let net1 = ifaces_in(&pod.path)
        .into_iter()
        .find(|i| i.name == "net1")
        .unwrap();
    assert!(net1.up, "the pod's net1 is still up: {net1:?}");

    // The pod ends: now its address can go to someone else.
    pod.delete();
    assert_mac_leaves_parent(&tb, &mac);
    HookRun::prestart(&tb, &config, "f2", f2.pid, &f2_bundle)
        .run()
        .assert_ok();
    assert_eq!(only_addr(&f2.netns()), held);
    let live = vec![("f1".to_owned(), f1.netns()), ("f2".to_owned(), f2.netns())];
    assert_eq!(assert_unique_and_leased(&tb, &live).len(), 2);
    // web's poststop, late, frees nothing of f2's.
    HookRun::poststop(&tb, &config, "web", &web_bundle)
        .run()
        .assert_ok();
    assert_eq!(leases_on(&tb)[&held]["container"], "f2");
    assert_eq!(assert_unique_and_leased(&tb, &live).len(), 2);

    for (c, b) in [(f1, &f1_bundle), (f2, &f2_bundle)] {
        let id = b.file_name().unwrap().to_str().unwrap().to_owned();
        c.kill();
        HookRun::poststop(&tb, &config, &id, b).run().assert_ok();
    }
    assert_state_empty(&tb, "after every poststop");
}

/// Defect 2, fault injection: each step of network setup fails. The hook
/// says so in one line naming the step and leaves nothing: no link in the
/// namespace, no lease, no record, no scratch file.
#[test]
fn every_network_failpoint_that_fails_leaves_nothing() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 102);
    for (name, step) in NETWORK_FAILPOINTS {
        let id = format!("err-{name}");
        let init = Sleeper::own_netns(&tb);
        let b = bundle(&tb, &id, None);
        let r = prestart_at(&tb, &config, &id, &init, &b, name, "error");
        assert_eq!(
            r.error_line(),
            format!(
                "nsbypass: hook prestart: container {id}: {step}: failpoint {name}: injected failure"
            )
        );
        if *name == "rename-link" {
            remove_clash(&init.netns());
        }
        assert_eq!(links_in(&init.netns()), ["lo"], "after {name}=error");
        assert_state_empty(&tb, &format!("after {name}=error"));
        init.kill();
    }
}

/// A pod's namespace (pinned as `<tag>-<suffix>`) whose member `<prefix>-
/// <failpoint>` had its prestart SIGKILLed at `failpoint`, and whose init
/// is dead since, as a runtime leaves it; with the member's id and bundle.
fn killed_in_a_pod(
    tb: &Testbed,
    config: &Path,
    suffix: &str,
    prefix: &str,
    failpoint: &str,
) -> (PinnedNetns, String, PathBuf) {
    let pod = PinnedNetns::new(tb, suffix);
    let id = format!("{prefix}-{failpoint}");
    let init = Sleeper::in_netns(&pod.path);
    let b = bundle(tb, &id, Some(&pod.path));
    prestart_at(tb, config, &id, &init, &b, failpoint, "kill").assert_killed();
    if failpoint == "rename-link" {
        remove_clash(&pod.path);
    }
    init.kill();
    (pod, id, b)
}

/// Defect 2 (`repro_killed_orphan_dup.sh`), fault injection: the hook is
/// SIGKILLed at each step of network setup, in a pod's namespace that
/// lives on. The container's poststop (after its init died) then leaves
/// no link, lease or record, and the pod's next member joins the network
/// in the same namespace.
#[test]
fn every_network_failpoint_killed_in_a_pod_is_undone_by_poststop() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 102);
    for (i, (name, _)) in NETWORK_FAILPOINTS.iter().enumerate() {
        let (pod, id, b) = killed_in_a_pod(&tb, &config, &format!("k{i}"), "kill", name);
        HookRun::poststop(&tb, &config, &id, &b).run().assert_ok();
        assert_eq!(links_in(&pod.path), ["lo"], "after {name}=kill, poststop");
        assert_state_empty(&tb, &format!("after {name}=kill, poststop"));

        let next_id = format!("next-{name}");
        let next = Sleeper::in_netns(&pod.path);
        let nb = bundle(&tb, &next_id, Some(&pod.path));
        HookRun::prestart(&tb, &config, &next_id, next.pid, &nb)
            .run()
            .assert_ok();
        let addr = only_addr(&pod.path);
        assert_eq!(
            assert_unique_and_leased(&tb, &[(pod.name.clone(), pod.path.clone())]).len(),
            1
        );
        let leases = leases_on(&tb);
        assert_eq!(leases.len(), 1, "after {name}: {leases:?}");
        assert_eq!(leases[&addr]["container"], next_id.as_str());
        next.kill();
        HookRun::poststop(&tb, &config, &next_id, &nb)
            .run()
            .assert_ok();
        assert_eq!(links_in(&pod.path), ["lo"]);
        assert_state_empty(&tb, &format!("after {name}: the next member left"));
        pod.delete();
    }
}

/// Defect 2, the same kills without a poststop (the runtime died too):
/// fresh containers fill the pool, and no address is ever live twice. The
/// whole pool goes to them (nothing is lost to the killed setup), what the
/// killed setup made in the pod is gone once reclaim had to look, and one
/// container more is refused.
#[test]
fn every_network_failpoint_killed_in_a_pod_is_undone_when_the_pool_runs_dry() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 102);
    for (i, (name, _)) in NETWORK_FAILPOINTS.iter().enumerate() {
        let (pod, id, b) = killed_in_a_pod(&tb, &config, &format!("d{i}"), "dry", name);

        let mut live = vec![(pod.name.clone(), pod.path.clone())];
        let mut fresh = Vec::new();
        for j in 0..3 {
            let fid = format!("fresh{i}-{j}");
            let s = Sleeper::own_netns(&tb);
            let fb = bundle(&tb, &fid, None);
            HookRun::prestart(&tb, &config, &fid, s.pid, &fb)
                .run()
                .assert_ok();
            live.push((fid.clone(), s.netns()));
            assert_unique_and_leased(&tb, &live);
            fresh.push((fid, s, fb));
        }
        let extra = Sleeper::own_netns(&tb);
        let eb = bundle(&tb, &format!("extra{i}"), None);
        let refused = HookRun::prestart(&tb, &config, &format!("extra{i}"), extra.pid, &eb).run();
        assert_eq!(
            refused.error_line(),
            no_free_address(&tb, &format!("extra{i}"), 100, 102),
            "after {name}=kill"
        );
        live.push(("extra".to_owned(), extra.netns()));
        let found = assert_unique_and_leased(&tb, &live);
        assert_eq!(found.len(), 3, "after {name}=kill: {found:?}");
        assert!(
            found.values().all(|who| who.starts_with("fresh")),
            "after {name}=kill: {found:?}"
        );
        assert_eq!(leases_on(&tb).len(), 3, "after {name}=kill");
        assert_eq!(links_in(&pod.path), ["lo"], "after {name}=kill, pool dry");

        for (fid, s, fb) in fresh {
            s.kill();
            HookRun::poststop(&tb, &config, &fid, &fb).run().assert_ok();
        }
        HookRun::poststop(&tb, &config, &id, &b).run().assert_ok();
        assert_state_empty(&tb, &format!("after {name}=kill and every poststop"));
        pod.delete();
    }
}

/// A small seeded random number generator (splitmix64): runs are
/// reproducible from the seed they print.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// What the kill-anywhere run did, for its report.
#[derive(Debug, Default)]
struct Tally {
    iterations: usize,
    prestart_failpoint_kills: usize,
    prestart_random_kills: usize,
    prestart_completed: usize,
    poststop_random_kills: usize,
    poststop_completed: usize,
    poststop_retried: usize,
    poststop_never: usize,
    pods_made: usize,
}

impl Tally {
    fn kills(&self) -> usize {
        self.prestart_failpoint_kills + self.prestart_random_kills + self.poststop_random_kills
    }
}

/// Starts `run`, SIGKILLs it after a random delay within `span` (about how
/// long it takes when left alone) and waits for it.
fn killed_at_random(run: HookRun, rng: &mut Rng, span: Duration) -> HookResult {
    let delay = Duration::from_micros(rng.below(span.as_micros() as usize + 1) as u64);
    let mut running = run.spawn();
    std::thread::sleep(delay);
    running.kill();
    running.wait()
}

/// The network failpoints a plain prestart reaches (`rename-link` needs
/// the clash [`prestart_at`] stages).
fn killable() -> Vec<&'static str> {
    NETWORK_FAILPOINTS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| *n != "rename-link")
        .collect()
}

/// Whether `mac` (`aa:bb:...`) is a unicast address (a MACVLAN child's on
/// the parent, not a multicast filter entry).
fn is_unicast(mac: &str) -> bool {
    u8::from_str_radix(&mac[..2], 16).is_ok_and(|b| b & 1 == 0)
}

/// Kill anywhere: at least 200 prestarts and poststops SIGKILLed, half
/// of the containers in pod namespaces that outlive them (kept, ended and
/// rejoined at random), half in namespaces of their own; prestarts die at
/// a random failpoint or after a random delay, poststops after a random
/// delay (and are retried, or not, or never run at all). Every completed
/// hook must succeed. Throughout and afterwards no address is live twice
/// and every live address has its lease; then a batch of fresh containers
/// gets every address not live in a pod, all distinct.
///
/// `NSBYPASS_KILL_SEED=N` replays a run; the seed is printed.
#[test]
fn hooks_killed_anywhere_never_leave_an_address_live_twice() {
    const FIRST: u8 = 100;
    const LAST: u8 = 111;
    const POOL: usize = (LAST - FIRST + 1) as usize;
    const MAX_PODS: usize = 5;
    const KILLS: usize = 200;
    let Some(tb) = testbed() else { return };
    let seed = std::env::var("NSBYPASS_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("kill-anywhere seed {seed} (replay: NSBYPASS_KILL_SEED={seed})");
    let mut rng = Rng(seed);
    let config = pool_config(&tb, FIRST, LAST);

    // How long a prestart and a poststop take here when left alone: the
    // random kills land within that.
    let probe = Sleeper::own_netns(&tb);
    let pb = bundle(&tb, "probe", None);
    let pre = HookRun::prestart(&tb, &config, "probe", probe.pid, &pb).run();
    pre.assert_ok();
    probe.kill();
    let post = HookRun::poststop(&tb, &config, "probe", &pb).run();
    post.assert_ok();
    let (pre_span, post_span) = (pre.elapsed * 5 / 4, post.elapsed * 5 / 4);
    println!(
        "undisturbed: prestart {:?}, poststop {:?}",
        pre.elapsed, post.elapsed
    );

    let killable = killable();
    let mut pods: VecDeque<PinnedNetns> = VecDeque::new();
    let mut tally = Tally::default();
    let started = Instant::now();
    let pod_list = |pods: &VecDeque<PinnedNetns>| -> Vec<(String, PathBuf)> {
        pods.iter()
            .map(|p| (p.name.clone(), p.path.clone()))
            .collect()
    };
    let mut i = 0;
    while i < 200 || tally.kills() < KILLS {
        assert!(
            started.elapsed() < Duration::from_secs(50),
            "seed {seed}: still short of {KILLS} kills after {i} rounds: {tally:?}"
        );
        let id = format!("k{i}");
        let netns = if i % 2 == 0 {
            let new_pod =
                pods.is_empty() || (pods.len() < MAX_PODS && rng.chance(50)) || rng.chance(15);
            if new_pod {
                if pods.len() >= MAX_PODS {
                    // The oldest pod ends, with whatever is in it.
                    pods.pop_front();
                }
                pods.push_back(PinnedNetns::new(&tb, &format!("k{i}")));
                tally.pods_made += 1;
            }
            Some(pods[rng.below(pods.len())].path.clone())
        } else {
            None
        };
        let init = match &netns {
            Some(path) => Sleeper::in_netns(path),
            None => Sleeper::own_netns(&tb),
        };
        let b = bundle(&tb, &id, netns.as_deref());
        let run = HookRun::prestart(&tb, &config, &id, init.pid, &b);
        let (r, by_failpoint) = if rng.chance(50) {
            let point = killable[rng.below(killable.len())];
            (run.failpoint(&format!("{point}=kill")).run(), true)
        } else {
            (killed_at_random(run, &mut rng, pre_span), false)
        };
        match (r.killed(), by_failpoint) {
            (true, true) => tally.prestart_failpoint_kills += 1,
            (true, false) => tally.prestart_random_kills += 1,
            // A pod member sharing its pod's link reaches no failpoint.
            (false, _) => {
                assert!(
                    r.success(),
                    "seed {seed}, round {i}: {} failed ({}): {}",
                    r.what,
                    r.status,
                    r.stderr
                );
                tally.prestart_completed += 1;
            }
        }
        init.kill();
        match rng.below(10) {
            0 | 1 => tally.poststop_never += 1,
            2..=5 => {
                HookRun::poststop(&tb, &config, &id, &b).run().assert_ok();
                tally.poststop_completed += 1;
            }
            _ => {
                let r = killed_at_random(
                    HookRun::poststop(&tb, &config, &id, &b),
                    &mut rng,
                    post_span,
                );
                if r.killed() {
                    tally.poststop_random_kills += 1;
                    if rng.chance(50) {
                        HookRun::poststop(&tb, &config, &id, &b).run().assert_ok();
                        tally.poststop_retried += 1;
                    }
                } else {
                    r.assert_ok();
                    tally.poststop_completed += 1;
                }
            }
        }
        if i % 25 == 24 {
            assert_unique_and_leased(&tb, &pod_list(&pods));
        }
        i += 1;
    }
    tally.iterations = i;
    println!(
        "seed {seed}: {} kills in {:?}: {tally:?}",
        tally.kills(),
        started.elapsed()
    );

    // The last containers' namespaces may still be dying (the kernel
    // destroys them asynchronously; until their links leave the parent,
    // their addresses may still answer): wait until the parent's only
    // MACVLAN children are the pods'.
    let pod_macs: BTreeSet<String> = pods
        .iter()
        .flat_map(|p| ifaces_in(&p.path))
        .filter(|i| i.kind == "macvlan")
        .map(|i| i.mac)
        .collect();
    let settled = Instant::now() + Duration::from_secs(5);
    while Instant::now() < settled
        && common::parent_macs(&tb)
            .iter()
            .any(|m| is_unicast(m) && !pod_macs.contains(m))
    {
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut live = pod_list(&pods);
    let in_pods = assert_unique_and_leased(&tb, &live);
    assert!(in_pods.len() <= pods.len(), "one link per pod: {in_pods:?}");
    // The addresses of pod links whose setup finished (not pending in the
    // pod's record): nothing may take them.
    let finished: Vec<std::net::IpAddr> = live
        .iter()
        .filter_map(|(_, path)| {
            let record = std::fs::read(
                tb.state_dir()
                    .join("netns")
                    .join(format!("{}.json", netns_key(path))),
            )
            .ok()?;
            let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
            Some(
                record["links"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|l| l["pending"] != serde_json::Value::Bool(true))
                    .flat_map(|l| l["addresses"].as_array().unwrap().clone())
                    .map(|a| {
                        a.as_str()
                            .unwrap()
                            .split('/')
                            .next()
                            .unwrap()
                            .parse()
                            .unwrap()
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .flatten()
        // A record may be a dead namespace's whose inode number a pod got
        // (the next setup there clears it): only what is live counts.
        .filter(|a| matches!(a, std::net::IpAddr::V4(v4) if in_pods.contains_key(v4)))
        .collect();
    // The fresh batch fills the pool: every address not held by a live
    // link is to be had. (A pod's address may be a killed setup's pending
    // link: reclaim deletes that leftover and hands its address on.)
    let mut fresh = Vec::new();
    for j in 0..=POOL {
        let fid = format!("fresh{j}");
        let s = Sleeper::own_netns(&tb);
        let fb = bundle(&tb, &fid, None);
        let r = HookRun::prestart(&tb, &config, &fid, s.pid, &fb).run();
        if !r.success() {
            assert!(
                r.stderr.contains("no free address left"),
                "seed {seed}: fresh container {j} (pods held {in_pods:?}): {}; leases: {:?}",
                r.stderr,
                leases_on(&tb)
            );
            break;
        }
        assert!(j < POOL, "seed {seed}: more containers than addresses");
        live.push((fid.clone(), s.netns()));
        fresh.push((fid, s, fb));
    }
    let all = assert_unique_and_leased(&tb, &live);
    assert_eq!(all.len(), POOL, "seed {seed}: the pool is full: {all:?}");
    for address in &finished {
        let std::net::IpAddr::V4(v4) = address else {
            continue;
        };
        assert!(
            all.get(v4).is_some_and(|who| !who.starts_with("fresh")),
            "seed {seed}: a finished pod link's {address} went to {:?}",
            all.get(v4)
        );
    }
    assert_eq!(leases_on(&tb).len(), POOL, "seed {seed}");

    for (fid, s, fb) in fresh {
        s.kill();
        HookRun::poststop(&tb, &config, &fid, &fb).run().assert_ok();
    }
}

/// Defect 6 (`dup_id.sh`): a second namespace wired under an id that is
/// already live elsewhere is refused; the refused container's poststop
/// (its init dead) leaves the first one's link and lease alone; the first
/// one's own poststop then frees everything.
#[test]
fn a_duplicate_id_is_refused_and_its_poststop_leaves_the_first_alone() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 103);
    let first = Sleeper::own_netns(&tb);
    let first_bundle = bundle(&tb, "web-first", None);
    HookRun::prestart(&tb, &config, "web", first.pid, &first_bundle)
        .run()
        .assert_ok();
    let addr = only_addr(&first.netns());
    let key = netns_key(&first.netns());

    let second = Sleeper::own_netns(&tb);
    let second_bundle = bundle(&tb, "web-second", None);
    let refused = HookRun::prestart(&tb, &config, "web", second.pid, &second_bundle).run();
    let line = refused.error_line();
    assert!(
        line.starts_with(
            "nsbypass: hook prestart: container web: validate: this container id is already wired into another live network namespace"
        ),
        "{line}"
    );
    assert_eq!(links_in(&second.netns()), ["lo"]);

    second.kill();
    HookRun::poststop(&tb, &config, "web", &second_bundle)
        .run()
        .assert_ok();
    assert_eq!(only_addr(&first.netns()), addr, "the first keeps its link");
    let live = [("first".to_owned(), first.netns())];
    assert_eq!(assert_unique_and_leased(&tb, &live).len(), 1);
    let leases = leases_on(&tb);
    assert_eq!(leases.len(), 1);
    assert_eq!(
        (
            leases[&addr]["netns"].as_str(),
            leases[&addr]["container"].as_str()
        ),
        (Some(key.as_str()), Some("web"))
    );
    assert_eq!(state_files(&tb, "containers"), ["web.json"]);
    assert_eq!(state_files(&tb, "netns"), [format!("{key}.json")]);

    first.kill();
    HookRun::poststop(&tb, &config, "web", &first_bundle)
        .run()
        .assert_ok();
    assert_state_empty(&tb, "after the first container's poststop");
}

/// Defect 8 (`pinned_swap.sh`): a pod's recorded namespace path is
/// replaced while the namespace lives on (held by an fd of the test): by a
/// FIFO, by a symlink to /dev/zero, by another namespace. Poststop neither
/// blocks nor touches what is there now; it finds the namespace through the
/// fd, deletes the link and frees the lease, so no address stays
/// configured in that namespace without its lease.
#[test]
fn a_swapped_pod_path_neither_blocks_poststop_nor_strands_an_address() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 103);
    for (i, kind) in ["fifo", "devzero", "othernetns"].into_iter().enumerate() {
        // Private: no `ip netns` command anywhere on the machine must come
        // across the FIFO (it would block opening it).
        let pod = PinnedNetns::private(&tb, &format!("s{i}"));
        let id = format!("swap-{kind}");
        let init = Sleeper::in_netns(&pod.path);
        let b = bundle(&tb, &id, Some(&pod.path));
        HookRun::prestart(&tb, &config, &id, init.pid, &b)
            .run()
            .assert_ok();
        only_addr(&pod.path);
        let key = pod.key();
        init.kill();

        // Only the test's fd keeps the namespace now; then the path changes.
        let held = File::open(&pod.path).expect("opening the pod's namespace");
        let held_path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            held.as_raw_fd()
        ));
        pod.unpin();
        match kind {
            "fifo" => {
                nix::unistd::mkfifo(&pod.path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .expect("mkfifo")
            }
            "devzero" => std::os::unix::fs::symlink("/dev/zero", &pod.path).expect("symlink"),
            _ => pod.pin(),
        }
        assert_eq!(netns_key(&held_path), key);

        let r = HookRun::poststop(&tb, &config, &id, &b).run();
        r.assert_ok();
        assert!(
            r.elapsed < Duration::from_secs(3),
            "{kind}: poststop took {:?}",
            r.elapsed
        );
        // Poststop looks only through recorded paths and bind mounts: the
        // link may live on in the namespace the fd keeps, but then its
        // address stays leased to it; gc, which looks through every fd,
        // deletes it there and frees the address.
        if links_in(&held_path).len() > 1 {
            let leases = leases_on(&tb);
            assert!(
                leases.values().any(|l| l["netns"] == key.as_str()),
                "{kind}: the link lives on without its lease: {leases:?}"
            );
        }
        gc(&tb, &config);
        assert_eq!(links_in(&held_path), ["lo"], "{kind}: the link is gone");
        assert_state_empty(&tb, &format!("{kind}: after poststop and gc"));
        match kind {
            "fifo" => assert!(std::fs::symlink_metadata(&pod.path)
                .unwrap()
                .file_type()
                .is_fifo()),
            "devzero" => assert_eq!(
                std::fs::read_link(&pod.path).unwrap(),
                Path::new("/dev/zero")
            ),
            _ => {
                assert_ne!(pod.key(), key);
                assert_eq!(
                    links_in(&pod.path),
                    ["lo"],
                    "the new namespace is untouched"
                );
            }
        }
        drop(held);
        drop(pod);
    }
}

/// Defect 13: leases name their host. A lease another host holds for a
/// namespace with the same key (keys repeat across hosts) and a container
/// of the same name is neither released by poststop (nor by the second
/// poststop, which looks for leases a killed setup of that id left) nor
/// reclaimed when the pool runs dry, nor handed out when asked for by name.
#[test]
fn another_hosts_lease_is_never_released_or_reclaimed() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 101);
    let a = Sleeper::own_netns(&tb);
    let ab = bundle(&tb, "a", None);
    HookRun::prestart(&tb, &config, "a", a.pid, &ab)
        .run()
        .assert_ok();
    let mine = only_addr(&a.netns());
    let key = netns_key(&a.netns());
    let lease = leases_on(&tb)[&mine].clone();
    assert_eq!(
        lease,
        serde_json::json!({"host": machine_id(), "netns": key, "container": "a"})
    );

    let other = if mine == tb.addr(100) {
        tb.addr(101)
    } else {
        tb.addr(100)
    };
    let planted = serde_json::json!({
        "host": "0123456789abcdef0123456789abcdef",
        "netns": key,
        "container": "a",
    })
    .to_string();
    let planted_path = tb
        .state_dir()
        .join("leases")
        .join(NETWORK)
        .join(other.to_string());
    std::fs::write(&planted_path, &planted).unwrap();
    let untouched = || {
        assert_eq!(
            std::fs::read_to_string(&planted_path).ok().as_deref(),
            Some(planted.as_str()),
            "the other host's lease"
        )
    };

    a.kill();
    HookRun::poststop(&tb, &config, "a", &ab).run().assert_ok();
    untouched();
    HookRun::poststop(&tb, &config, "a", &ab).run().assert_ok();
    untouched();
    sweep_drained(&tb, "after a's poststops");
    untouched();
    assert_eq!(leases_on(&tb).len(), 1);

    let f1 = Sleeper::own_netns(&tb);
    let f1b = bundle(&tb, "f1", None);
    HookRun::prestart(&tb, &config, "f1", f1.pid, &f1b)
        .run()
        .assert_ok();
    assert_eq!(only_addr(&f1.netns()), mine);
    let f2 = Sleeper::own_netns(&tb);
    let f2b = bundle(&tb, "f2", None);
    let refused = HookRun::prestart(&tb, &config, "f2", f2.pid, &f2b).run();
    assert_eq!(refused.error_line(), no_free_address(&tb, "f2", 100, 101));
    untouched();
    let f3b = bundle_with(
        &tb,
        "f3",
        None,
        &[("nsbypass.io/ip", &format!("fast={other}"))],
    );
    let refused = HookRun::prestart(&tb, &config, "f3", f2.pid, &f3b).run();
    assert_eq!(
        refused.error_line(),
        format!("nsbypass: hook prestart: container f3: network fast: lease address: {other} is taken by container a")
    );
    untouched();
    assert_eq!(links_in(&f2.netns()), ["lo"]);

    f1.kill();
    HookRun::poststop(&tb, &config, "f1", &f1b)
        .run()
        .assert_ok();
    sweep_drained(&tb, "after f1's poststop");
    untouched();
    assert_eq!(leases_on(&tb).len(), 1);
}

/// Defect 13: without a machine id the hook fails with one line naming the
/// file, and makes nothing. The file is hidden only in a private mount
/// namespace the hook runs in (an empty file bound over it; an empty tmpfs
/// over /etc); the machine's own is never touched.
#[test]
fn a_missing_or_empty_machine_id_fails_the_hook_with_one_line() {
    let Some(tb) = testbed() else { return };
    let before = std::fs::read("/etc/machine-id").expect("/etc/machine-id");
    let config = pool_config(&tb, 100, 101);
    let init = Sleeper::own_netns(&tb);
    let b = bundle(&tb, "noid", None);
    let empty = tb.dir.join("empty-machine-id");
    std::fs::write(&empty, "").unwrap();
    let private = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
    ];
    let cases = [
        (
            "mount --bind \"$0\" /etc/machine-id && exec \"$@\"",
            "/etc/machine-id holds no machine id;",
        ),
        (
            "mount -t tmpfs none /etc && exec \"$@\"",
            "/etc/machine-id: No such file or directory (os error 2);",
        ),
    ];
    for (script, cause) in cases {
        let mut argv: Vec<&std::ffi::OsStr> = private.iter().map(|a| a.as_ref()).collect();
        argv.push(script.as_ref());
        argv.push(empty.as_os_str());
        let r = HookRun::prestart(&tb, &config, "noid", init.pid, &b)
            .wrapped_in(&argv)
            .run();
        let line = r.error_line();
        let want = format!("nsbypass: hook prestart: container noid: read machine id: {cause}");
        assert!(
            line.starts_with(&want) && line.ends_with("(systemd-machine-id-setup makes one)"),
            "got:  {line}\nwant: {want} ..."
        );
        assert_eq!(links_in(&init.netns()), ["lo"]);
        assert_state_empty(&tb, script);
    }
    assert_eq!(std::fs::read("/etc/machine-id").unwrap(), before);
}

// Namespaces are told apart by numbers the kernel reuses. The tests below
// stage each reuse for certain: a namespace's id in the host's table (the
// `nsid` setup records) and its nsfs inode number (the `<dev>-<ino>` key)
// both go to the next namespace (of any kind, for inode numbers) that
// needs one: the kernel hands out the lowest free number. Each test runs
// on a testbed of its own per attempt and retries when another process on
// the machine took the number first.

/// How often a test retries when another process took the number it needs.
const ATTEMPTS: usize = 5;

/// A container wired in a namespace of its own, then dead without a
/// poststop, its namespace gone.
struct Dead {
    id: String,
    bundle: PathBuf,
    addr: std::net::Ipv4Addr,
    key: String,
    nsid: i64,
}

impl Dead {
    /// Wires container `id` and lets it die, waiting until its namespace
    /// is gone.
    fn new(tb: &Testbed, config: &Path, id: &str) -> Dead {
        let init = Sleeper::own_netns(tb);
        let bundle = bundle(tb, id, None);
        HookRun::prestart(tb, config, id, init.pid, &bundle)
            .run()
            .assert_ok();
        let addr = only_addr(&init.netns());
        let key = netns_key(&init.netns());
        let mac = ifaces_in(&init.netns())
            .into_iter()
            .find(|i| i.name == "net1")
            .expect("net1")
            .mac;
        let record = tb.state_dir().join("netns").join(format!("{key}.json"));
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&record).expect("a netns record"))
                .unwrap();
        let nsid = record["nsid"].as_i64().expect("an nsid in the record");
        init.kill();
        // Its links leave the parent after its id has left the table.
        assert_mac_leaves_parent(tb, &mac);
        Dead {
            id: id.to_owned(),
            bundle,
            addr,
            key,
            nsid,
        }
    }

    fn ino(&self) -> u64 {
        self.key.split_once('-').unwrap().1.parse().unwrap()
    }
}

/// Makes things with `make` (each returns what holds it and its nsfs
/// inode number), holding every one, until one has inode `target`: the
/// dead namespace's number goes to one of the next things made once the
/// kernel has finished destroying it (numbers freed with it may come
/// first). Returns it with the others made on the way, or `None` if the
/// number went to another process.
fn take_inode<T>(target: u64, mut make: impl FnMut(usize) -> (T, u64)) -> Option<(T, Vec<T>)> {
    let mut held = Vec::new();
    for n in 0..64 {
        let (thing, ino) = make(n);
        if ino == target {
            return Some((thing, held));
        }
        held.push(thing);
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// A UTS namespace, kept by a process in it (where discovery, which looks
/// at processes' network namespaces and at fds, cannot stumble over it).
fn uts_sleeper(_: usize) -> (Sleeper, u64) {
    let mut cmd = Command::new("unshare");
    cmd.args(["--uts", "sleep", "600"]);
    let s = Sleeper::start_command(cmd);
    let ino = std::fs::metadata(format!("/proc/{}/ns/uts", s.pid))
        .expect("a UTS namespace")
        .ino();
    (s, ino)
}

/// Gives `ns` the id `nsid` in the testbed's host namespace, as the kernel
/// (lowest free id) or any tool may.
fn set_nsid(tb: &Testbed, ns: &PinnedNetns, nsid: i64) {
    let out = tb
        .in_host(&["ip", "netns", "set", &ns.name, &nsid.to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "ip netns set {} {nsid}: {}",
        ns.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A dead container whose namespace's id now names another, live
/// namespace, and whose inode number is held where nothing can mistake it
/// for the dead namespace. `None` if another process took the number.
fn dead_with_nsid_reused(tb: &Testbed, config: &Path) -> Option<(Dead, PinnedNetns, Vec<Sleeper>)> {
    let dead = Dead::new(tb, config, "a");
    let (holder, mut held) = take_inode(dead.ino(), uts_sleeper)?;
    held.push(holder);
    let other = PinnedNetns::new(tb, "other");
    set_nsid(tb, &other, dead.nsid);
    Some((dead, other, held))
}

/// A namespace's recorded id names it only while it lives. A container's
/// namespace dies without a poststop, its id goes to another namespace,
/// the pool (one address) runs dry: the dead namespace's address must be
/// reclaimed.
#[test]
fn a_dead_namespaces_lease_is_reclaimed_though_its_nsid_went_to_another() {
    for _ in 0..ATTEMPTS {
        let Some(tb) = testbed() else { return };
        let config = pool_config(&tb, 100, 100);
        let Some((dead, other, _held)) = dead_with_nsid_reused(&tb, &config) else {
            continue;
        };
        let c = Sleeper::own_netns(&tb);
        let cb = bundle(&tb, "c", None);
        let r = HookRun::prestart(&tb, &config, "c", c.pid, &cb).run();
        assert!(
            r.success(),
            "c is refused, though a's namespace {} is gone and only its id {} lives on, in {}: {}",
            dead.key,
            dead.nsid,
            other.name,
            r.stderr
        );
        assert_eq!(only_addr(&c.netns()), dead.addr);
        assert_eq!(
            assert_unique_and_leased(&tb, &[("c".to_owned(), c.netns())]).len(),
            1
        );
        return;
    }
    panic!("another process took the dead namespace's number in {ATTEMPTS} attempts");
}

/// The same at poststop: the late poststop of the dead container frees
/// its lease, without waiting for a namespace that is gone.
#[test]
fn a_gone_namespaces_poststop_frees_its_lease_though_its_nsid_went_to_another() {
    for _ in 0..ATTEMPTS {
        let Some(tb) = testbed() else { return };
        let config = pool_config(&tb, 100, 100);
        let Some((dead, other, _held)) = dead_with_nsid_reused(&tb, &config) else {
            continue;
        };
        let r = HookRun::poststop(&tb, &config, &dead.id, &dead.bundle).run();
        r.assert_ok();
        // Drained, and freed by the next run.
        sweep_drained(&tb, "after a's poststop");
        assert!(
            leases_on(&tb).is_empty(),
            "a's namespace {} is gone (its id {} now names {}), but its lease stays: {:?}",
            dead.key,
            dead.nsid,
            other.name,
            leases_on(&tb)
        );
        assert!(
            r.elapsed < Duration::from_millis(900),
            "poststop waited {:?} for a namespace that is gone",
            r.elapsed
        );
        assert_state_empty(&tb, "after a's poststop");
        return;
    }
    panic!("another process took the dead namespace's number in {ATTEMPTS} attempts");
}

/// Inode numbers are shared by every kind of namespace. A container's
/// namespace dies without a poststop; a UTS namespace gets its number and
/// is held by an fd (of the test here; any process may hold one); the
/// dead namespace's id names another namespace, so poststop searches for
/// it, fds included. The UTS namespace is not it: poststop must pass it
/// by (and free the lease), not fail on it.
#[test]
fn a_namespace_of_another_kind_with_a_dead_namespaces_number_is_passed_by() {
    for _ in 0..ATTEMPTS {
        let Some(tb) = testbed() else { return };
        let config = pool_config(&tb, 100, 100);
        let dead = Dead::new(&tb, &config, "a");
        let uts = take_inode(dead.ino(), |n| {
            let (s, ino) = uts_sleeper(n);
            let fd = File::open(format!("/proc/{}/ns/uts", s.pid)).expect("a UTS namespace");
            (fd, ino)
        });
        let Some((_uts_fd, _others)) = uts else {
            continue;
        };
        let other = PinnedNetns::new(&tb, "other");
        set_nsid(&tb, &other, dead.nsid);

        let r = HookRun::poststop(&tb, &config, &dead.id, &dead.bundle).run();
        assert!(
            r.success(),
            "a's poststop fails on a UTS namespace that took its dead namespace's number {}: {}",
            dead.key,
            r.stderr
        );
        sweep_drained(&tb, "after a's poststop");
        assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));
        return;
    }
    panic!("another process took the dead namespace's number in {ATTEMPTS} attempts");
}

/// The same with a network namespace: it gets the dead namespace's inode
/// number and id, and holds a MACVLAN that nsbypass did not make, at the
/// index the dead namespace's link had. The dead container's late
/// poststop must leave that link alone: the namespace is another one.
#[test]
fn a_new_namespace_with_a_dead_namespaces_number_is_not_torn_down() {
    for attempt in 0..ATTEMPTS {
        let Some(tb) = testbed() else { return };
        let config = pool_config(&tb, 100, 100);
        let dead = Dead::new(&tb, &config, "a");
        let found = take_inode(dead.ino(), |n| {
            let ns = PinnedNetns::new(&tb, &format!("r{attempt}x{n}"));
            let ino = ns.key().split_once('-').unwrap().1.parse().unwrap();
            (ns, ino)
        });
        let Some((reused, _others)) = found else {
            continue;
        };
        // It gets the dead namespace's id (before anything makes the kernel
        // give it the lowest free one, which may be that one or another).
        set_nsid(&tb, &reused, dead.nsid);
        // Someone else's MACVLAN: born in the namespace, so at index 2,
        // where the dead namespace's net1 was.
        tb.in_host_ok(&[
            "ip",
            "link",
            "add",
            "theirs",
            "link",
            &tb.parent,
            "netns",
            &reused.name,
            "type",
            "macvlan",
            "mode",
            "bridge",
        ])
        .unwrap();
        let record = tb
            .state_dir()
            .join("netns")
            .join(format!("{}.json", dead.key));
        let record: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(record).unwrap()).unwrap();
        assert_eq!(record["links"][0]["index"], 2, "{record}");
        let theirs = Command::new("nsenter")
            .arg(format!("--net={}", reused.path.display()))
            .args(["ip", "-o", "link", "show", "theirs"])
            .output()
            .unwrap();
        assert!(
            theirs.stdout.starts_with(b"2: "),
            "precondition: their link has index 2: {}",
            String::from_utf8_lossy(&theirs.stdout)
        );

        let r = HookRun::poststop(&tb, &config, &dead.id, &dead.bundle).run();
        r.assert_ok();
        assert!(
            links_in(&reused.path).contains(&"theirs".to_owned()),
            "a's poststop deleted a link nsbypass did not make, in a namespace that only has its dead namespace's number {}: {:?}",
            dead.key,
            links_in(&reused.path)
        );
        return;
    }
    panic!("another process took the dead namespace's number in {ATTEMPTS} attempts");
}

/// A poststop that runs the moment the container's init is reaped finds
/// the namespace out of reach but not yet gone (for a moment it still has
/// its id and its links). It does not wait for the kernel: the address
/// stays leased while it drains, and the next container that pins it gets
/// it only once the old link is off the parent. A pool of four serves ten
/// containers back to back, and gc frees what is left once the kernel is
/// done.
#[test]
fn a_poststop_right_after_the_init_exits_lets_the_address_drain() {
    let Some(tb) = testbed() else { return };
    let config = pool_config(&tb, 100, 103);
    let mut pin: Option<(String, String)> = None;
    for i in 0..10 {
        let id = format!("quick{i}");
        let s = Sleeper::own_netns(&tb);
        let b = match &pin {
            Some((address, _)) => {
                let want = format!("{NETWORK}={address}");
                bundle_with(&tb, &id, None, &[("nsbypass.io/ip", want.as_str())])
            }
            None => bundle(&tb, &id, None),
        };
        HookRun::prestart(&tb, &config, &id, s.pid, &b)
            .run()
            .assert_ok();
        let link = ifaces_in(&s.netns())
            .into_iter()
            .find(|l| l.kind == "macvlan")
            .expect("a MACVLAN in the namespace");
        if let Some((address, old_mac)) = &pin {
            assert_eq!(
                link.ipv4,
                [format!("{address}/24")],
                "{id}: the pinned address"
            );
            assert!(
                !common::parent_macs(&tb).contains(old_mac),
                "{id} got {address} while the link that had it ({old_mac}) is still on the parent"
            );
        }
        if i % 2 == 0 {
            // Devices to destroy with it: the kernel unregisters its
            // MACVLAN at the end of that batch, so the address drains for
            // long enough that the next container surely pins it meanwhile.
            let script: String = (0..40)
                .map(|n| format!("link add slow{n}a type veth peer name slow{n}b\n"))
                .collect();
            std::fs::write(tb.dir.join("slow.batch"), script).unwrap();
            let made = Command::new("nsenter")
                .arg(format!("--net={}", s.netns().display()))
                .args(["ip", "-batch"])
                .arg(tb.dir.join("slow.batch"))
                .status()
                .unwrap();
            assert!(made.success(), "veth pairs in {id}'s namespace");
        }
        s.kill();
        HookRun::poststop(&tb, &config, &id, &b).run().assert_ok();
        assert!(
            state_files(&tb, "containers").is_empty(),
            "{id}: its record outlived its poststop"
        );
        // Every other container pins the address the one before had.
        pin = (i % 2 == 0).then(|| {
            let address = link.ipv4[0].split_once('/').unwrap().0.to_owned();
            (address, link.mac.clone())
        });
    }
    common::eventually("gc frees every drained lease", || {
        gc(&tb, &config);
        leases_on(&tb).is_empty()
    });
    assert_state_empty(&tb, "after gc");
}
