//! Issue 14: Kubernetes pods as CRI-O runs them, through the hooks.d files
//! `nsbypass install crio` writes.
//!
//! There is no CRI-O on these machines (Debian has none), so each test is
//! CRI-O here, doing what it does to a pod and its hooks:
//!
//! - the hooks.d files are those `install crio` writes; a hook runs for a
//!   container only if every `when.annotations` entry matches one of its
//!   annotations (key and value as unanchored regular expressions, as
//!   containers/common's `When.Match`), and a `prestart` entry runs at
//!   `createRuntime` (CRI-O's hooks library moves it there), with the
//!   file's path, arguments and environment;
//! - a pod has no infra container: its namespace is pinned (`ip netns
//!   add`, as CRI-O's pinns), each container's spec names that path, and
//!   the pod's annotations are copied into every container's spec, beside
//!   `io.kubernetes.pod.namespace`/`.name`; container ids are random;
//! - the state says `status: "creating"` with a pid at createRuntime, and
//!   `status: "stopped"` with no pid at poststop; bundles are
//!   `.../overlay-containers/<id>/userdata`;
//! - StopPodSandbox kills the containers and unpins the namespace, which
//!   goes; poststop runs only when the pod is removed (RemovePodSandbox),
//!   which the kubelet may do long after, or after the pod was re-created.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use common::direct::{assert_state_empty, leases_on, PinnedNetns, Sleeper};
use common::{assert_mac_leaves_parent, ifaces_in, nsbypass, testbed};
use nsbypass_testbed::Testbed;
use serde_json::{json, Value};

/// One hooks.d file, as CRI-O reads it.
struct HooksD {
    file: String,
    path: PathBuf,
    args: Vec<String>,
    env: Vec<String>,
    when: BTreeMap<String, String>,
    stages: Vec<String>,
}

impl HooksD {
    /// Whether CRI-O injects this hook into a container with
    /// `annotations`: every `when.annotations` entry matches some
    /// annotation, key and value, as unanchored regular expressions.
    fn matches(&self, annotations: &BTreeMap<String, String>) -> bool {
        self.when.iter().all(|(key, value)| {
            let key = regex::Regex::new(key).expect("a key pattern");
            let value = regex::Regex::new(value).expect("a value pattern");
            annotations
                .iter()
                .any(|(k, v)| key.is_match(k) && value.is_match(v))
        })
    }

    /// The OCI stages CRI-O puts it in: `prestart` becomes `createRuntime`.
    fn oci_stages(&self) -> Vec<&str> {
        self.stages
            .iter()
            .map(|s| match s.as_str() {
                "prestart" => "createRuntime",
                other => other,
            })
            .collect()
    }
}

/// A node as CRI-O sees it: nsbypass installed by `install crio` into the
/// testbed's directory, and the hooks.d files it wrote.
struct Node<'a> {
    tb: &'a Testbed,
    config: PathBuf,
    hooks: Vec<HooksD>,
}

impl<'a> Node<'a> {
    fn new(tb: &'a Testbed, config: PathBuf) -> Node<'a> {
        let hooks_dir = tb.dir.join("hooks.d");
        let dropin_dir = tb.dir.join("crio.conf.d");
        let out = nsbypass_cmd(tb, &config, &["install", "crio"])
            .arg("--hooks-dir")
            .arg(&hooks_dir)
            .arg("--dropin-dir")
            .arg(&dropin_dir)
            .arg("--binary")
            .arg(nsbypass())
            .output()
            .expect("running nsbypass install crio");
        assert!(out.status.success(), "install crio: {out:?}");
        let dropin = std::fs::read_to_string(dropin_dir.join("50-nsbypass.conf")).unwrap();
        assert!(
            dropin.contains(&format!("{:?}", hooks_dir.display().to_string())),
            "the drop-in puts the hooks dir on hooks_dir: {dropin}"
        );
        let mut hooks = Vec::new();
        for entry in std::fs::read_dir(&hooks_dir).unwrap().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            let v: Value = serde_json::from_str(&text).unwrap();
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_owned())
                    .collect()
            };
            hooks.push(HooksD {
                file: entry.file_name().to_string_lossy().into_owned(),
                path: v["hook"]["path"].as_str().unwrap().into(),
                args: strings(&v["hook"]["args"]),
                env: strings(&v["hook"]["env"]),
                when: serde_json::from_value(v["when"]["annotations"].clone()).unwrap(),
                stages: strings(&v["stages"]),
            });
        }
        hooks.sort_by(|a, b| a.file.cmp(&b.file));
        Node { tb, config, hooks }
    }

    /// The hooks CRI-O puts at OCI stage `stage` of a container with
    /// `annotations`.
    fn hooks_at(&self, annotations: &BTreeMap<String, String>, stage: &str) -> Vec<&HooksD> {
        self.hooks
            .iter()
            .filter(|h| h.oci_stages().contains(&stage) && h.matches(annotations))
            .collect()
    }

    /// Runs every hook of `stage` for `container` with `state` on stdin,
    /// in the testbed's host namespace, as runc runs them: the file's
    /// path, arguments (after its argv[0]) and environment only. Returns
    /// each run's output; none when no hook matches.
    fn run_stage(&self, container: &Ctr, stage: &str, state: &Value) -> Vec<Output> {
        self.hooks_at(&container.annotations, stage)
            .into_iter()
            .map(|hook| {
                let mut cmd = Command::new("nsenter");
                cmd.arg(format!("--net=/run/netns/{}", self.tb.host_ns))
                    .arg("--")
                    .arg(&hook.path)
                    .args(&hook.args[1..])
                    .env_clear();
                for kv in &hook.env {
                    let (k, v) = kv.split_once('=').unwrap();
                    cmd.env(k, v);
                }
                let mut child = cmd
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("starting a hook");
                let _ = child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(state.to_string().as_bytes());
                child.wait_with_output().expect("running a hook")
            })
            .collect()
    }

    /// createRuntime of `container`, which must succeed.
    fn create(&self, container: &Ctr) {
        let runs = self.run_stage(container, "createRuntime", &container.creating());
        assert_eq!(runs.len(), 1, "one nsbypass hook at createRuntime");
        for out in runs {
            assert!(
                out.status.success(),
                "createRuntime of {}: {out:?}",
                container.id
            );
        }
    }

    /// poststop of `container` (stopped, no pid), which must succeed.
    fn poststop(&self, container: &Ctr) {
        let runs = self.run_stage(container, "poststop", &container.stopped());
        assert_eq!(runs.len(), 1, "one nsbypass hook at poststop");
        for out in runs {
            assert!(
                out.status.success(),
                "poststop of {}: {out:?}",
                container.id
            );
        }
    }

    /// `nsbypass list --json`.
    fn list(&self) -> Vec<Value> {
        let out = nsbypass_cmd(self.tb, &self.config, &["list", "--json"])
            .output()
            .expect("running nsbypass list");
        assert!(out.status.success(), "list: {out:?}");
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("list --json is JSON")
            .as_array()
            .unwrap()
            .clone()
    }

    /// `nsbypass gc`'s stdout.
    fn gc(&self) -> String {
        let out = nsbypass_cmd(self.tb, &self.config, &["gc"])
            .output()
            .expect("running nsbypass gc");
        assert!(out.status.success(), "gc: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }
}

/// `nsenter --net=<host> nsbypass --config CONFIG ARGS` with a PATH only.
fn nsbypass_cmd(tb: &Testbed, config: &Path, args: &[&str]) -> Command {
    common::direct::cli(tb, config, args)
}

/// A pod: its pinned namespace and its annotations (the user's, which
/// CRI-O copies into every container's spec, and its own).
struct Pod {
    netns: PinnedNetns,
    annotations: BTreeMap<String, String>,
}

impl Pod {
    /// Pod `namespace/name` (a new incarnation each time: new uid, new
    /// sandbox) with the user's `annotations`.
    fn run(tb: &Testbed, namespace: &str, name: &str, annotations: &[(&str, &str)]) -> Pod {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut all: BTreeMap<String, String> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        all.insert("io.kubernetes.pod.namespace".into(), namespace.into());
        all.insert("io.kubernetes.pod.name".into(), name.into());
        all.insert(
            "io.kubernetes.pod.uid".into(),
            format!("uid-{}", random_id(n)),
        );
        all.insert("io.kubernetes.cri-o.SandboxID".into(), random_id(n + 1000));
        Pod {
            netns: PinnedNetns::new(tb, &format!("pod{n}")),
            annotations: all,
        }
    }

    /// A container of the pod, running in its namespace.
    fn container(&self, tb: &Testbed, name: &str) -> Ctr {
        let id = random_id(SEQ.fetch_add(1, Ordering::Relaxed));
        let mut annotations = self.annotations.clone();
        annotations.insert("io.kubernetes.container.name".into(), name.into());
        annotations.insert(
            "io.kubernetes.cri-o.ContainerType".into(),
            "container".into(),
        );
        let bundle = tb.dir.join("overlay-containers").join(&id).join("userdata");
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sleep", "600"], "cwd": "/"},
            "root": {"path": tb.dir.join("overlay").join(&id).join("merged")},
            "annotations": annotations,
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network", "path": self.netns.path},
            ]},
        });
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        Ctr {
            init: Some(Sleeper::in_netns(&self.netns.path)),
            id,
            bundle,
            annotations,
        }
    }

    /// StopPodSandbox: its containers are killed, the namespace unpinned,
    /// and the kernel destroys it; no poststop yet.
    fn stop(self, tb: &Testbed, containers: &mut [&mut Ctr]) {
        for c in containers.iter_mut() {
            c.init.take().expect("running").kill();
        }
        let macs: Vec<String> = ifaces_in(&self.netns.path)
            .into_iter()
            .filter(|i| i.kind == "macvlan")
            .map(|i| i.mac)
            .collect();
        self.netns.delete();
        for mac in macs {
            assert_mac_leaves_parent(tb, &mac);
        }
    }

    /// The pod's one MACVLAN: (MAC, IPv4 address).
    fn link(&self) -> (String, String) {
        let links: Vec<_> = ifaces_in(&self.netns.path)
            .into_iter()
            .filter(|i| i.kind == "macvlan")
            .collect();
        assert_eq!(links.len(), 1, "one MACVLAN in the pod: {links:?}");
        let address = links[0].ipv4.first().expect("an address").clone();
        (links[0].mac.clone(), address)
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

/// A 64-hex-digit id, as CRI-O makes them: different every time.
fn random_id(n: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut out = String::new();
    while out.len() < 64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// A container of a pod: its init, id, bundle and spec annotations.
struct Ctr {
    init: Option<Sleeper>,
    id: String,
    bundle: PathBuf,
    annotations: BTreeMap<String, String>,
}

impl Ctr {
    /// The state at createRuntime.
    fn creating(&self) -> Value {
        json!({
            "ociVersion": "1.0.2", "id": self.id, "status": "creating",
            "pid": self.init.as_ref().expect("running").pid,
            "bundle": self.bundle, "annotations": self.annotations,
        })
    }

    /// The state at poststop: no pid.
    fn stopped(&self) -> Value {
        json!({
            "ociVersion": "1.0.2", "id": self.id, "status": "stopped",
            "bundle": self.bundle, "annotations": self.annotations,
        })
    }
}

fn rows_of<'v>(rows: &'v [Value], pod: &str) -> Vec<&'v Value> {
    rows.iter().filter(|r| r["pod"] == pod).collect()
}

#[test]
fn a_re_created_statefulset_pod_keeps_its_mac_and_address_whenever_poststop_comes() {
    let Some(tb) = testbed() else { return };
    let node = Node::new(&tb, common::config(&tb, ""));
    let user = [("nsbypass.io/network", "fast")];

    // Another pod first, so that web-0's address is not simply the first.
    let db = Pod::run(&tb, "trading", "db-0", &user);
    let db_app = db.container(&tb, "app");
    node.create(&db_app);

    // web-0: two containers, no infra container; the first makes the link.
    let web = Pod::run(&tb, "trading", "web-0", &user);
    let mut app = web.container(&tb, "app");
    let mut sidecar = web.container(&tb, "sidecar");
    node.create(&app);
    node.create(&sidecar);
    let (mac, address) = web.link();
    let rows = node.list();
    let row = rows_of(&rows, "trading/web-0");
    assert_eq!(row.len(), 1, "{rows:?}");
    assert_eq!(row[0]["state"], "reachable");
    assert_eq!(row[0]["mac"], mac.as_str());
    assert_eq!(row[0]["addresses"], json!([address]));
    let mut ids: Vec<&str> = row[0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![app.id.as_str(), sidecar.id.as_str()];
    want.sort();
    assert_eq!(ids, want, "both containers share the link");

    // The StatefulSet rolls: CRI-O stops the pod; its poststop waits for
    // the removal. The lease is stale meanwhile, and list says so.
    web.stop(&tb, &mut [&mut app, &mut sidecar]);
    let rows = node.list();
    let row = rows_of(&rows, "trading/web-0");
    assert_eq!(row.len(), 1, "{rows:?}");
    assert_eq!(row[0]["state"], "stale", "{rows:?}");
    assert_eq!(row[0]["netns"], "");
    assert_eq!(row[0]["addresses"], json!([address]));

    // web-0 again: new sandbox, new container ids, same MAC and address.
    let web2 = Pod::run(&tb, "trading", "web-0", &user);
    let app2 = web2.container(&tb, "app");
    let sidecar2 = web2.container(&tb, "sidecar");
    assert_ne!(app2.id, app.id);
    node.create(&app2);
    node.create(&sidecar2);
    assert_eq!(web2.link(), (mac.clone(), address.clone()));
    let rows = node.list();
    let row = rows_of(&rows, "trading/web-0");
    assert_eq!(row.len(), 1, "the stale row is gone: {rows:?}");
    assert_eq!(row[0]["state"], "reachable");
    assert_eq!(row[0]["netns_key"], web2.netns.key().as_str());

    // The kubelet removes the old pod now: its poststops change nothing.
    node.poststop(&app);
    node.poststop(&sidecar);
    assert_eq!(web2.link(), (mac.clone(), address.clone()));
    let leases = leases_on(&tb);
    let ip: std::net::Ipv4Addr = address.split('/').next().unwrap().parse().unwrap();
    assert_eq!(
        leases[&ip]["netns"],
        web2.netns.key().as_str(),
        "the address is the new pod's: {leases:?}"
    );
    assert_eq!(leases.len(), 2, "{leases:?}");

    // Proper removal of both pods leaves nothing.
    let mut app2 = app2;
    let mut sidecar2 = sidecar2;
    web2.stop(&tb, &mut [&mut app2, &mut sidecar2]);
    node.poststop(&app2);
    node.poststop(&sidecar2);
    let mut db_app = db_app;
    db.stop(&tb, &mut [&mut db_app]);
    node.poststop(&db_app);
    assert_state_empty(&tb, "after both pods were removed");
}

#[test]
fn a_stopped_pods_stale_lease_goes_to_gc_or_to_the_next_setup_that_needs_it() {
    let Some(tb) = testbed() else { return };
    // A pool of one address.
    let node = Node::new(&tb, common::config_with_range(&tb, 150, 150, ""));
    let user = [("nsbypass.io/network", "fast")];

    // A completed Job: stopped, kept until the pod object is deleted.
    let job = Pod::run(&tb, "batch", "report-1", &user);
    let mut job_app = job.container(&tb, "app");
    node.create(&job_app);
    let (_, address) = job.link();
    job.stop(&tb, &mut [&mut job_app]);
    assert_eq!(node.list()[0]["state"], "stale");

    // Another pod needs the pool's only address: it gets it at once.
    let other = Pod::run(&tb, "batch", "report-2", &user);
    let mut other_app = other.container(&tb, "app");
    node.create(&other_app);
    assert_eq!(other.link().1, address);
    other.stop(&tb, &mut [&mut other_app]);

    // gc frees a stale lease just as well, and says so.
    let out = node.gc();
    assert!(
        out.contains(&format!(
            "freed lease fast {}",
            address.split('/').next().unwrap()
        )),
        "{out}"
    );
    assert!(leases_on(&tb).is_empty(), "{:?}", leases_on(&tb));
    assert!(node.list().is_empty());
    // The poststops, whenever they come, are fine with it.
    node.poststop(&job_app);
    node.poststop(&other_app);
    assert_state_empty(&tb, "after the removals");
}

#[test]
fn a_misspelled_or_empty_nsbypass_annotation_fails_the_pod_with_one_line() {
    let Some(tb) = testbed() else { return };
    let node = Node::new(&tb, common::config(&tb, ""));

    // A pod without nsbypass annotations never runs the hook.
    let plain = Pod::run(&tb, "web", "plain", &[("example.com/owner", "me")]);
    let plain_app = plain.container(&tb, "app");
    assert!(node
        .hooks_at(&plain_app.annotations, "createRuntime")
        .is_empty());
    assert!(node.hooks_at(&plain_app.annotations, "poststop").is_empty());
    assert!(node.hooks_at(&plain_app.annotations, "prestart").is_empty());

    for (key, value, says) in [
        (
            "nsbypass.io/netwrok",
            "fast",
            "annotation nsbypass.io/netwrok: unknown nsbypass annotation",
        ),
        (
            "nsbypass.io/network",
            "",
            "annotation nsbypass.io/network: empty network name",
        ),
    ] {
        let pod = Pod::run(&tb, "web", "typo", &[(key, value)]);
        let mut app = pod.container(&tb, "app");
        let runs = node.run_stage(&app, "createRuntime", &app.creating());
        assert_eq!(runs.len(), 1, "{key}={value:?} reaches the hook");
        let out = &runs[0];
        assert!(!out.status.success(), "{out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.strip_suffix('\n').expect("a line");
        assert!(!line.contains('\n'), "one line: {stderr}");
        assert!(
            line.starts_with(&format!(
                "nsbypass: hook prestart: container {}: read request: ",
                app.id
            )) && line.contains(says),
            "{line}"
        );
        assert!(ifaces_in(&pod.netns.path)
            .iter()
            .all(|i| i.kind != "macvlan"));
        // CRI-O destroys the container, whose poststop runs.
        app.init.take().unwrap().kill();
        node.poststop(&app);
        assert!(common::leases(&tb).is_empty() && common::records(&tb).is_empty());
    }
}
