//! Issue 11: leases across nodes in a real etcd cluster.
//!
//! A three-member etcd cluster runs on 127.0.0.1 inside the testbed's host
//! namespace (fresh ports there; data under the testbed's directory; each
//! member killed by its pid), and two "nodes" (two configs, each with its
//! own `state_dir` and `[leases] node`) attach `ip netns` namespaces
//! concurrently on the one parent. Checked: every address unique across
//! both nodes and exactly one key per lease; a member down changes
//! nothing; without quorum an attach fails within the timeout with one
//! line and leaves no link, record or key, and a detach keeps its record
//! (the link goes, the lease stays) for a later one; with quorum back everything
//! detaches and no lease key remains; `gc` touches only its node's leases
//! and `gc --node` releases a dead node's; a node name another host uses
//! is refused, and doctor says so. Over TLS (client certificates
//! required) leases work, and an untrusted server or a missing client
//! certificate fails at once with one line. With every member killed, a
//! prestart and a poststop of a container that asks for nothing succeed
//! at once; with a member SIGSTOPped (it accepts, never answers), attaches
//! and detaches still succeed within the timeout.
//!
//! Needs `etcd`, `etcdctl` and `openssl` (Debian's etcd-server, etcd-client
//! and openssl, which scripts/setup.sh installs): without them the tests skip, saying so,
//! unless `NSBYPASS_E2E` is set (scripts/test.sh), where that is a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::direct::{HookRun, PinnedNetns, Sleeper};
use common::ifaces_in;
use nsbypass_testbed::Testbed;
use serde_json::Value;

const PREFIX: &str = "/nsbypass-e2e";
/// Above etcd's time to replace a killed leader (an election timeout and
/// a vote) even on a loaded CI machine.
const TIMEOUT_MS: u64 = 3000;

/// A testbed, or `None` when these tests cannot run here (not root, or
/// no etcd).
fn testbed() -> Option<Testbed> {
    let missing: Vec<&str> = ["etcd", "etcdctl", "openssl"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("NSBYPASS_E2E").is_none(),
            "NSBYPASS_E2E is set, so these tests must run: {} missing ({})",
            missing.join(" and "),
            nsbypass_testbed::SETUP_HINT
        );
        eprintln!(
            "skipping: {} not installed (apt-get install etcd-server etcd-client)",
            missing.join(" and ")
        );
        return None;
    }
    common::testbed()
}

/// One etcd member, its process and where it keeps its data.
struct Member {
    name: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Members on 127.0.0.1 of the testbed's host namespace. Dropping it
/// kills every member still running, by pid.
struct Cluster {
    host_ns: String,
    members: Vec<Member>,
    initial: String,
    /// With TLS for clients (and client certificates required): the
    /// directory of [`make_certs`]'s files.
    tls: Option<PathBuf>,
}

impl Cluster {
    /// Starts `n` members and waits until the cluster answers. etcd's
    /// default timing (100 ms heartbeats, 1 s election timeout): a lost
    /// leader is replaced well within [`TIMEOUT_MS`].
    fn start(tb: &Testbed, n: usize) -> Cluster {
        Cluster::start_with(tb, n, None)
    }

    fn start_with(tb: &Testbed, n: usize, tls: Option<PathBuf>) -> Cluster {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: 23790 + i as u16,
                peer: 23890 + i as u16,
                data: tb.dir.join(format!("etcd/m{i}")),
                log: tb.dir.join(format!("etcd/m{i}.log")),
                child: None,
            })
            .collect();
        std::fs::create_dir_all(tb.dir.join("etcd")).unwrap();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            host_ns: tb.host_ns.clone(),
            members,
            initial,
            tls,
        };
        for i in 0..n {
            cluster.start_member(i);
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>());
        cluster
    }

    fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let scheme = self.scheme();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("--")
            .arg("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data)
            .arg(format!(
                "--listen-client-urls={scheme}://127.0.0.1:{}",
                m.client
            ))
            .arg(format!(
                "--advertise-client-urls={scheme}://127.0.0.1:{}",
                m.client
            ));
        if let Some(dir) = &self.tls {
            cmd.arg(format!("--cert-file={}", dir.join("server.pem").display()))
                .arg(format!("--key-file={}", dir.join("server.key").display()))
                .arg(format!(
                    "--trusted-ca-file={}",
                    dir.join("ca.pem").display()
                ))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer
            ))
            .arg(format!("--initial-cluster={}", self.initial))
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "nsbypass-e2e"])
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        // nsenter execs etcd: this pid is the member's.
        self.members[i].child = Some(child);
    }

    /// SIGKILLs member `i` by its pid and reaps it.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs member `i` by its pid: it keeps its sockets and answers
    /// nothing.
    fn stop(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP);
    }

    /// SIGCONTs member `i`.
    fn cont(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let child = self.members[i].child.as_ref().expect("a running member");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, signal).unwrap();
    }

    /// Starts member `i` again on its data.
    fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none());
        self.start_member(i);
    }

    fn scheme(&self) -> &'static str {
        match self.tls {
            Some(_) => "https",
            None => "http",
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://127.0.0.1:{}", self.scheme(), m.client))
            .collect()
    }

    /// `etcdctl ARGS` against the members `on`.
    fn etcdctl_on(&self, on: &[usize], args: &[&str]) -> Output {
        let endpoints: Vec<String> = on
            .iter()
            .map(|&i| format!("{}://127.0.0.1:{}", self.scheme(), self.members[i].client))
            .collect();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.host_ns))
            .arg("--")
            .arg("etcdctl")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .args(["--dial-timeout=1s", "--command-timeout=3s"]);
        if let Some(dir) = &self.tls {
            cmd.arg(format!("--cacert={}", dir.join("ca.pem").display()))
                .arg(format!("--cert={}", dir.join("client.pem").display()))
                .arg(format!("--key={}", dir.join("client.key").display()));
        }
        cmd.args(args)
            .env("ETCDCTL_API", "3")
            .stdin(Stdio::null())
            .output()
            .expect("running etcdctl")
    }

    /// `etcdctl ARGS` against the running members; panics unless it works.
    fn etcdctl(&self, args: &[&str]) -> String {
        let running: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .collect();
        let out = self.etcdctl_on(&running, args);
        assert!(
            out.status.success(),
            "etcdctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn wait_healthy(&self, members: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.etcdctl_on(members, &["endpoint", "health"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .members
                    .iter()
                    .map(|m| std::fs::read_to_string(&m.log).unwrap_or_default())
                    .map(|l| l.lines().rev().take(5).collect::<Vec<_>>().join("\n"))
                    .collect();
                panic!(
                    "etcd did not become healthy: {}\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    logs.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every lease key under the prefix, with its value.
    fn leases(&self) -> BTreeMap<String, Value> {
        let text = self.etcdctl(&["get", "--prefix", &format!("{PREFIX}/leases/")]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.len().is_multiple_of(2), "{text}");
        lines
            .chunks(2)
            .map(|kv| {
                let value = serde_json::from_str(kv[1]).unwrap_or_else(|e| panic!("{kv:?}: {e}"));
                (kv[0].to_owned(), value)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// This host's id as `<prefix>/nodes/<node>` holds it: hex SHA-256 of
/// `nsbypass-node-id:` and the machine id (README's key table).
fn host_id() -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("nsbypass-node-id:{}", common::direct::machine_id()));
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node: a config with its own state_dir and node name.
struct NodeConfig {
    name: String,
    path: PathBuf,
    state: PathBuf,
}

fn node_config(tb: &Testbed, name: &str, endpoints: &[String]) -> NodeConfig {
    node_config_with(tb, name, endpoints, "")
}

/// [`node_config`] with `extra` lines in `[leases]`.
fn node_config_with(tb: &Testbed, name: &str, endpoints: &[String], extra: &str) -> NodeConfig {
    let state = tb.dir.join(format!("state-{name}"));
    let path = tb.dir.join(format!("{name}.toml"));
    let endpoints: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        r#"
state_dir = "{state}"
[log]
file = "{dir}/{name}.log"
level = "debug"

[networks.fast]
parent = "{parent}"
subnet = "{subnet}"
range = "{a}-{b}"

[leases]
store = "etcd"
endpoints = [{endpoints}]
prefix = "{PREFIX}"
node = "{name}"
timeout_ms = {TIMEOUT_MS}
{extra}
"#,
        state = state.display(),
        dir = tb.dir.display(),
        parent = tb.parent,
        subnet = tb.subnet,
        a = tb.addr(100),
        b = tb.addr(139),
        endpoints = endpoints.join(", "),
    );
    std::fs::write(&path, text).unwrap();
    NodeConfig {
        name: name.to_owned(),
        path,
        state,
    }
}

/// `nsbypass --config CONFIG ARGS` in the testbed's host namespace, with
/// `PATH` only.
fn command(tb: &Testbed, config: &Path, args: &[&str]) -> Command {
    common::direct::cli(tb, config, args)
}

fn ok(tb: &Testbed, config: &Path, args: &[&str]) -> String {
    let out = command(tb, config, args).output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "nsbypass {}: {}: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs the command; returns its one stderr line and how long it took.
fn fails(tb: &Testbed, config: &Path, args: &[&str]) -> (String, Duration) {
    let started = Instant::now();
    let out = command(tb, config, args).output().unwrap();
    let took = started.elapsed();
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
    (line.to_owned(), took)
}

/// `attach --netns PATH --id ID --network fast` for each (node, id,
/// namespace), all at once; panics unless each succeeds.
fn attach_all(tb: &Testbed, all: &[(&NodeConfig, String, &PinnedNetns)]) {
    let children: Vec<_> = all
        .iter()
        .map(|(node, id, ns)| {
            let path = ns.path.to_str().unwrap();
            command(
                tb,
                &node.path,
                &["attach", "--netns", path, "--id", id, "--network", "fast"],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for ((node, id, _), child) in all.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "attach {id} on {}: {}: {}",
            node.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The IPv4 address of the MACVLAN in `ns`, if there is one.
fn address_in(ns: &Path) -> Option<Ipv4Addr> {
    let ifaces = ifaces_in(ns);
    let macvlans: Vec<_> = ifaces.iter().filter(|i| i.kind == "macvlan").collect();
    assert!(macvlans.len() <= 1, "{macvlans:?}");
    let i = macvlans.first()?;
    assert_eq!(i.ipv4.len(), 1, "{i:?}");
    Some(i.ipv4[0].split('/').next().unwrap().parse().unwrap())
}

/// Every attached namespace has its own address, and etcd holds exactly
/// one key per attachment: that address, naming the node and namespace
/// that attached it.
fn assert_unique_and_one_key_each(
    cluster: &Cluster,
    attached: &[(&NodeConfig, String, &PinnedNetns)],
) {
    assert_keys(cluster, attached, BTreeMap::new());
}

/// [`assert_unique_and_one_key_each`], with `also` keys (key -> node,
/// namespace key, id) whose namespaces have no link any more.
fn assert_keys(
    cluster: &Cluster,
    attached: &[(&NodeConfig, String, &PinnedNetns)],
    also: BTreeMap<String, (String, String, String)>,
) {
    let mut seen = BTreeSet::new();
    let mut want = also;
    for (node, id, ns) in attached {
        let address = address_in(&ns.path).unwrap_or_else(|| panic!("{id} has no MACVLAN"));
        assert!(
            seen.insert(address),
            "{address} is on two namespaces ({id})"
        );
        want.insert(
            format!("{PREFIX}/leases/fast/{address}"),
            (node.name.clone(), ns.key(), id.clone()),
        );
    }
    let keys = cluster.leases();
    let got: BTreeMap<String, (String, String, String)> = keys
        .iter()
        .map(|(k, v)| {
            let field = |f: &str| v[f].as_str().unwrap_or_default().to_owned();
            (
                k.clone(),
                (field("node"), field("netns"), field("container")),
            )
        })
        .collect();
    assert_eq!(got, want, "etcd holds one key per lease, naming its holder");
}

#[test]
fn two_nodes_share_a_pool_through_etcd_and_survive_a_member_but_not_quorum_loss() {
    let Some(tb) = testbed() else { return };
    let started = Instant::now();
    let mut cluster = Cluster::start(&tb, 3);
    let endpoints = cluster.endpoints();
    let a = node_config(&tb, "node-a", &endpoints);
    let b = node_config(&tb, "node-b", &endpoints);

    // Both nodes at once, 8 attaches each, on one parent and one pool.
    let namespaces: Vec<PinnedNetns> = (0..25)
        .map(|i| PinnedNetns::new(&tb, &format!("e{i}")))
        .collect();
    let mut attached = Vec::new();
    let mut batch = Vec::new();
    for (i, ns) in namespaces.iter().enumerate().take(16) {
        let node = if i % 2 == 0 { &a } else { &b };
        batch.push((node, format!("{}-{i}", node.name), ns));
    }
    attach_all(&tb, &batch);
    attached.extend(batch);
    assert_unique_and_one_key_each(&cluster, &attached);
    let registered = cluster.etcdctl(&[
        "get",
        "--prefix",
        &format!("{PREFIX}/nodes/"),
        "--keys-only",
    ]);
    let registered: Vec<&str> = registered.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(
        registered,
        [
            format!("{PREFIX}/nodes/node-a"),
            format!("{PREFIX}/nodes/node-b")
        ]
    );
    // Registered by an id of nsbypass's own, never the machine id itself.
    let value = cluster.etcdctl(&[
        "get",
        "--print-value-only",
        &format!("{PREFIX}/nodes/node-a"),
    ]);
    assert_eq!(value.trim(), host_id(), "{value}");
    assert!(!value.contains(&common::direct::machine_id()), "{value}");

    // One member down (whichever leads or not): attaches go on.
    cluster.kill(0);
    let mut batch = Vec::new();
    for (i, ns) in namespaces.iter().enumerate().take(24).skip(16) {
        let node = if i % 2 == 0 { &a } else { &b };
        batch.push((node, format!("{}-{i}", node.name), ns));
    }
    attach_all(&tb, &batch);
    attached.extend(batch);
    assert_unique_and_one_key_each(&cluster, &attached);

    // Quorum lost: the next attach fails within the timeout, one line
    // naming the store, and leaves no link and no record.
    cluster.kill(1);
    let lost = &namespaces[24];
    let path = lost.path.to_str().unwrap();
    let (line, took) = fails(
        &tb,
        &a.path,
        &[
            "attach",
            "--netns",
            path,
            "--id",
            "lost",
            "--network",
            "fast",
        ],
    );
    assert!(
        line.starts_with("nsbypass: attach lost: network fast: lease address: etcd: no endpoint answered within 3000 ms ("),
        "{line}"
    );
    assert!(
        took < Duration::from_millis(TIMEOUT_MS + 1500),
        "the attach took {took:?}, its timeout is {TIMEOUT_MS} ms"
    );
    assert_eq!(address_in(&lost.path), None, "no link left");
    assert!(
        !a.state.join("containers/lost.json").exists(),
        "no record left"
    );
    assert!(!a.state.join(format!("netns/{}.json", lost.key())).exists());

    // A detach without quorum: the link goes, the lease cannot; the record
    // keeps the link and the member, so a later detach finishes.
    let (kept_node, kept_id, kept_ns) = &attached[0];
    let kept_key = format!(
        "{PREFIX}/leases/fast/{}",
        address_in(&kept_ns.path).unwrap()
    );
    let (line, _) = fails(&tb, &kept_node.path, &["detach", "--id", kept_id]);
    assert!(
        line.starts_with(&format!("nsbypass: detach {kept_id}: network fast: release address: etcd: no endpoint answered within ")),
        "{line}"
    );
    assert_eq!(address_in(&kept_ns.path), None, "the link went");
    assert!(
        kept_node
            .state
            .join(format!("containers/{kept_id}.json"))
            .exists(),
        "its record stays"
    );

    // Quorum back: nothing of the failed attach, and everything detaches
    // until no lease key is left.
    cluster.restart(0);
    cluster.restart(1);
    cluster.wait_healthy(&[0, 1, 2]);
    // The failed detach kept its lease, and nothing else changed.
    let kept = (kept_node.name.clone(), kept_ns.key(), kept_id.clone());
    assert_keys(&cluster, &attached[1..], [(kept_key, kept)].into());
    for (i, (node, id, _)) in attached.iter().enumerate() {
        let out = ok(&tb, &node.path, &["detach", "--id", id]);
        // The one whose link went already finishes its release.
        let want = match i {
            0 => format!("detached {id}\n"),
            _ => format!("detached {id} from fast: net1 "),
        };
        assert!(out.starts_with(&want), "{out}");
    }
    for (_, _, ns) in &attached {
        assert_eq!(address_in(&ns.path), None);
    }
    assert_eq!(cluster.leases(), BTreeMap::new(), "no lease key is left");
    for node in [&a, &b] {
        let table = ok(&tb, &node.path, &["list"]);
        assert_eq!(
            table.lines().last().unwrap(),
            format!(
                "leases: etcd {PREFIX} at {}, node {}",
                endpoints.join(","),
                node.name
            ),
            "{table}"
        );
    }
    eprintln!("took {:?}", started.elapsed());
}

#[test]
fn gc_frees_only_its_own_nodes_leases_and_gc_node_releases_a_dead_nodes() {
    let Some(tb) = testbed() else { return };
    let cluster = Cluster::start(&tb, 1);
    let endpoints = cluster.endpoints();
    let a = node_config(&tb, "node-a", &endpoints);
    let b = node_config(&tb, "node-b", &endpoints);
    let x1 = PinnedNetns::new(&tb, "x1");
    let x2 = PinnedNetns::new(&tb, "x2");
    let y1 = PinnedNetns::new(&tb, "y1");
    let y2 = PinnedNetns::new(&tb, "y2");
    attach_all(
        &tb,
        &[
            (&a, "x1".into(), &x1),
            (&a, "x2".into(), &x2),
            (&b, "y1".into(), &y1),
            (&b, "y2".into(), &y2),
        ],
    );
    // An orphan of each node: a lease no record names (a killed run's).
    for (node, address) in [("node-a", tb.addr(138)), ("node-b", tb.addr(139))] {
        let value = format!(r#"{{"node":"{node}","netns":"9-999","container":"ghost"}}"#);
        cluster.etcdctl(&["put", &format!("{PREFIX}/leases/fast/{address}"), &value]);
    }
    let by_node = |node: &str| -> BTreeSet<String> {
        cluster
            .leases()
            .into_iter()
            .filter(|(_, v)| v["node"] == node)
            .map(|(_, v)| v["container"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        by_node("node-a"),
        ["ghost", "x1", "x2"].map(String::from).into()
    );
    assert_eq!(
        by_node("node-b"),
        ["ghost", "y1", "y2"].map(String::from).into()
    );

    // Node A's gc frees its own orphan only.
    let out = ok(&tb, &a.path, &["gc"]);
    assert!(
        out.contains(&format!(
            "freed lease fast {} (taken for ghost)",
            tb.addr(138)
        )),
        "{out}"
    );
    assert!(out.ends_with("gc: freed 1 leases, 0 namespace records, 0 container records; 2 live links untouched\n"), "{out}");
    assert_eq!(by_node("node-a"), ["x1", "x2"].map(String::from).into());
    assert_eq!(
        by_node("node-b"),
        ["ghost", "y1", "y2"].map(String::from).into()
    );

    // Node B dies for good (its host crashed: state and namespaces gone).
    drop(y1);
    drop(y2);
    std::fs::remove_dir_all(&b.state).unwrap();
    let out = ok(&tb, &a.path, &["gc"]);
    assert!(out.starts_with("gc: freed 0 leases"), "{out}");
    assert_eq!(
        by_node("node-b").len(),
        3,
        "gc never touches another node's"
    );

    let (line, _) = fails(&tb, &a.path, &["gc", "--node", "node-a"]);
    assert_eq!(line, "nsbypass: gc --node node-a: validate: --node node-a is this node; plain gc frees what it no longer uses");
    let out = ok(&tb, &a.path, &["gc", "--node", "node-b"]);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        out.ends_with(&format!(
            "gc --node node-b: freed 3 leases; {PREFIX}/nodes/node-b is no longer registered\n"
        )),
        "{out}"
    );
    assert_eq!(by_node("node-b"), BTreeSet::new());
    assert_eq!(by_node("node-a"), ["x1", "x2"].map(String::from).into());
    let nodes = cluster.etcdctl(&[
        "get",
        "--prefix",
        &format!("{PREFIX}/nodes/"),
        "--keys-only",
    ]);
    assert_eq!(nodes.trim(), format!("{PREFIX}/nodes/node-a"));

    // A node name registered to another host: refused, and doctor says so.
    cluster.etcdctl(&[
        "put",
        &format!("{PREFIX}/nodes/node-c"),
        "0123456789abcdef0123456789abcdef",
    ]);
    let c = node_config(&tb, "node-c", &endpoints);
    let z = PinnedNetns::new(&tb, "z");
    let (line, _) = fails(
        &tb,
        &c.path,
        &[
            "attach",
            "--netns",
            z.path.to_str().unwrap(),
            "--id",
            "z",
            "--network",
            "fast",
        ],
    );
    assert!(
        line.starts_with(&format!("nsbypass: attach z: network fast: lease address: etcd: node \"node-c\" is used by another host (host id 0123456789abcdef0123456789abcdef, not this host's {}); ", host_id())),
        "{line}"
    );
    assert_eq!(address_in(&z.path), None);
    assert_eq!(by_node("node-c"), BTreeSet::new());
    let doctor = |config: &Path| -> Vec<String> {
        let out = command(&tb, config, &["doctor"]).output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| l.contains(" leases"))
            .map(str::to_owned)
            .collect()
    };
    let lines = doctor(&c.path);
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "FAIL leases etcd node node-c: {PREFIX}/nodes/node-c names another host (host id 0123456789abcdef0123456789abcdef; this host's is {}), so this host cannot lease",
            host_id()
        ))),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| !l.contains(&common::direct::machine_id())),
        "doctor never prints the machine id: {lines:#?}"
    );
    let lines = doctor(&a.path);
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines.iter().all(|l| l.starts_with("ok   ")), "{lines:#?}");
    assert_eq!(
        lines[3],
        format!("ok   leases etcd node node-a: {PREFIX}/nodes/node-a names this host")
    );

    // The file store has no other nodes.
    let file = common::config(&tb, "");
    let (line, _) = fails(&tb, &file, &["gc", "--node", "node-b"]);
    assert!(
        line.contains("--node is for [leases] store = \"etcd\""),
        "{line}"
    );

    for id in ["x1", "x2"] {
        ok(&tb, &a.path, &["detach", "--id", id]);
    }
    assert_eq!(cluster.leases(), BTreeMap::new());
}

/// A CA, a second CA nobody uses, a server certificate for 127.0.0.1 and a
/// client certificate (EC P-256 keys, PKCS#8) in `dir`, made with openssl.
fn make_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subject) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN=nsbypass-e2e-{ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subject,
        ]);
        openssl(&args);
    }
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"),
        ("client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
    ] {
        let (key, csr, pem, cnf) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.cnf"),
        );
        let subject = format!("/CN={name}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
        openssl(&args);
        std::fs::write(dir.join(&cnf), ext).unwrap();
        openssl(&[
            "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", &pem, "-days", "2", "-extfile", &cnf,
        ]);
    }
}

#[test]
fn leases_over_tls_with_a_client_certificate_and_one_line_when_trust_fails() {
    let Some(tb) = testbed() else { return };
    let certs = tb.dir.join("certs");
    make_certs(&certs);
    let cluster = Cluster::start_with(&tb, 1, Some(certs.clone()));
    let endpoints = cluster.endpoints();
    let files = |ca: &str, client: bool| {
        let mut text = format!("ca_file = \"{}\"\n", certs.join(ca).display());
        if client {
            text += &format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"\n",
                certs.join("client.pem").display(),
                certs.join("client.key").display()
            );
        }
        text
    };
    let good = node_config_with(&tb, "node-t", &endpoints, &files("ca.pem", true));
    let ns = PinnedNetns::new(&tb, "t");
    attach_all(&tb, &[(&good, "t".into(), &ns)]);
    assert_unique_and_one_key_each(&cluster, &[(&good, "t".into(), &ns)]);
    let out = command(&tb, &good.path, &["doctor"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "ok   leases etcd {}: answers: etcd 3.",
            endpoints[0]
        )) && text.contains("ok   leases etcd quorum"),
        "{text}"
    );

    // A server we do not trust, and a server that wants our certificate:
    // one line each, at once (waiting cannot fix either), nothing made.
    for (name, extra, why) in [
        (
            "node-u",
            files("other-ca.pem", true),
            "tls: invalid peer certificate: UnknownIssuer",
        ),
        (
            "node-v",
            files("ca.pem", false),
            "tls: received fatal alert: ",
        ),
    ] {
        let bad = node_config_with(&tb, name, &endpoints, &extra);
        let other = PinnedNetns::new(&tb, name);
        let other_path = other.path.to_str().unwrap();
        let (line, took) = fails(
            &tb,
            &bad.path,
            &[
                "attach",
                "--netns",
                other_path,
                "--id",
                name,
                "--network",
                "fast",
            ],
        );
        assert!(
            line.starts_with(&format!(
                "nsbypass: attach {name}: network fast: lease address: etcd: no endpoint would do TLS with us ({}: {why}",
                endpoints[0]
            )),
            "{line}"
        );
        assert!(took < Duration::from_millis(TIMEOUT_MS), "{took:?}");
        assert_eq!(address_in(&other.path), None);
    }
    ok(&tb, &good.path, &["detach", "--id", "t"]);
    assert_eq!(cluster.leases(), BTreeMap::new());
}

/// A bundle whose spec mentions nothing of nsbypass (no annotation, no
/// `NSBYPASS_` variable), as most containers on a node have.
fn plain_bundle(tb: &Testbed, name: &str) -> PathBuf {
    let dir = tb.dir.join("direct").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sleep", "600"], "env": ["PATH=/usr/bin:/bin"]},
        "annotations": {"io.kubernetes.pod.namespace": "default"},
    });
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir
}

#[test]
fn hooks_that_ask_for_nothing_need_no_etcd() {
    let Some(tb) = testbed() else { return };
    let mut cluster = Cluster::start(&tb, 1);
    let a = node_config(&tb, "node-a", &cluster.endpoints());
    cluster.kill(0);
    // Every member is gone: a prestart and a poststop of a container that
    // asks for nothing succeed at once, without a word to etcd.
    let bundle = plain_bundle(&tb, "plain");
    let init = Sleeper::own_netns(&tb);
    for run in [
        HookRun::prestart(&tb, &a.path, "plain", init.pid, &bundle),
        HookRun::poststop(&tb, &a.path, "plain", &bundle),
    ] {
        let result = run.run();
        result.assert_ok();
        assert!(
            result.elapsed < Duration::from_millis(TIMEOUT_MS / 3),
            "{} took {:?}",
            result.what,
            result.elapsed
        );
    }
    assert!(init.links().is_empty());
    // The store is really out of reach: a hook that asks does fail.
    let asks = common::direct::bundle(&tb, "asks", None);
    let line = HookRun::prestart(&tb, &a.path, "asks", init.pid, &asks)
        .run()
        .error_line()
        .to_owned();
    assert!(
        line.contains("lease address: etcd: no endpoint answered within"),
        "{line}"
    );
}

#[test]
fn a_stopped_member_costs_an_attach_its_share_of_the_timeout_not_the_attach() {
    let Some(tb) = testbed() else { return };
    let mut cluster = Cluster::start(&tb, 3);
    let endpoints = cluster.endpoints();
    let a = node_config(&tb, "node-a", &endpoints);
    // SIGSTOP: the member's sockets stay, the kernel accepts connections
    // to it, nothing ever answers (a hung machine, from the network).
    cluster.stop(0);
    cluster.wait_healthy(&[1, 2]);
    let log = tb.dir.join("node-a.log");
    let stalls = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.contains("etcd endpoint did not answer")
                    && l.contains(&endpoints[0])
                    && l.contains("timed out")
            })
            .count()
    };
    // The first endpoint a run tries follows from its pid: attach until
    // some runs have met the stopped member first.
    let namespaces: Vec<PinnedNetns> = (0..15)
        .map(|i| PinnedNetns::new(&tb, &format!("s{i}")))
        .collect();
    let mut attached = Vec::new();
    let mut slowest = Duration::ZERO;
    for (i, ns) in namespaces.iter().enumerate() {
        let id = format!("s{i}");
        let started = Instant::now();
        let path = ns.path.to_str().unwrap();
        ok(
            &tb,
            &a.path,
            &["attach", "--netns", path, "--id", &id, "--network", "fast"],
        );
        slowest = slowest.max(started.elapsed());
        attached.push((&a, id, ns));
        if stalls() >= 2 {
            break;
        }
    }
    assert!(
        stalls() >= 1,
        "no attach of {} met the stopped member",
        attached.len()
    );
    assert!(
        slowest < Duration::from_millis(TIMEOUT_MS),
        "an attach took {slowest:?}, its timeout is {TIMEOUT_MS} ms"
    );
    eprintln!(
        "{} attaches, {} met the stopped member first, slowest {slowest:?}",
        attached.len(),
        stalls()
    );
    assert_unique_and_one_key_each(&cluster, &attached);
    for (_, id, _) in &attached {
        let started = Instant::now();
        ok(&tb, &a.path, &["detach", "--id", id]);
        assert!(started.elapsed() < Duration::from_millis(TIMEOUT_MS));
    }
    cluster.cont(0);
    cluster.kill(0);
    assert_eq!(cluster.leases(), BTreeMap::new(), "no lease key is left");
}
