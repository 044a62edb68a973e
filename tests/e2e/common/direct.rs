//! Driving the hook binary directly, as a runtime would, without runc: for
//! tests that must kill a hook at a chosen moment, arm its failpoints, or
//! run its poststop when and as often as they like.
//!
//! Everything happens inside a [`Testbed`]'s host namespace `<tag>-h`:
//!
//! - [`HookRun`] runs `nsenter --net=/run/netns/<tag>-h nsbypass --config
//!   CFG hook STAGE` with the OCI state on stdin and an environment of
//!   `PATH` only (plus `NSBYPASS_FAILPOINT` when armed; the binary is built
//!   with the `failpoints` feature for the tests). nsenter execs the hook,
//!   so a SIGKILL of the child is a SIGKILL of the hook, and a hook that
//!   kills itself shows up as `signal 9`.
//! - A "container" is its init: a [`Sleeper`], either in a network
//!   namespace of its own made from `<tag>-h` ([`Sleeper::own_netns`]; it
//!   dies with the sleeper) or inside a [`PinnedNetns`] (`ip netns add
//!   <tag>-<suffix>`, as a pod's infra namespace; it outlives its members),
//!   whose path the container's bundle then names in
//!   `linux.namespaces[type=network].path`, as a pod's would.
//! - [`ifaces_in`](super::ifaces_in), [`macvlan_addrs`], [`links_in`],
//!   [`leases_on`] and [`assert_unique_and_leased`] observe the outcome:
//!   what the kernel has in each namespace, and what the state directory
//!   holds.
//!
//! Every guard (running hook, sleeper, pinned namespace) undoes itself on
//! drop, by pid or by name, also when a test panics. Namespaces are named
//! with the testbed's tag so that scripts/test.sh's leftover check sees
//! any that escape.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nsbypass_testbed::Testbed;
use serde_json::{json, Value};

use super::{ifaces_in, nsbypass};

/// The only environment a hook gets (as nsbypass's generated hook
/// definitions give it), besides an armed failpoint.
pub const HOOK_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a hook may run before the test kills it and fails: well above
/// the hook's own lock timeout (5 s) and its 1 s wait for a dying namespace.
pub const HOOK_DEADLINE: Duration = Duration::from_secs(20);

/// The network every config below defines.
pub const NETWORK: &str = "fast";

/// A config for the testbed with network `fast` on its NIC and the small
/// pool `.<first>`-`.<last>` of its subnet (small, so reclaim paths are
/// hit), the peer host as gateway and one route (so every step of setup,
/// `add-route` included, runs). State in [`Testbed::state_dir`].
pub fn pool_config(tb: &Testbed, first: u8, last: u8) -> PathBuf {
    super::config_with_range(tb, first, last, "")
}

/// Writes a bundle `<dir>/direct/<name>/config.json` asking for network
/// `fast`, plus `annotations`; with `netns`, the spec names that path as
/// the container's network namespace. Returns the bundle directory.
pub fn bundle_with(
    tb: &Testbed,
    name: &str,
    netns: Option<&Path>,
    annotations: &[(&str, &str)],
) -> PathBuf {
    let dir = tb.dir.join("direct").join(name);
    std::fs::create_dir_all(&dir).expect("creating a bundle directory");
    let mut notes = serde_json::Map::new();
    notes.insert("nsbypass.io/network".into(), NETWORK.into());
    for (k, v) in annotations {
        notes.insert((*k).into(), (*v).into());
    }
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "annotations": notes,
    });
    if let Some(path) = netns {
        spec["linux"] = json!({"namespaces": [{"type": "network", "path": path}]});
    }
    std::fs::write(dir.join("config.json"), spec.to_string()).expect("writing config.json");
    dir
}

/// [`bundle_with`] without extra annotations.
pub fn bundle(tb: &Testbed, name: &str, netns: Option<&Path>) -> PathBuf {
    bundle_with(tb, name, netns, &[])
}

/// One hook invocation, described; [`HookRun::run`] or [`HookRun::spawn`]
/// starts it.
pub struct HookRun<'a> {
    tb: &'a Testbed,
    config: PathBuf,
    stage: &'static str,
    id: String,
    state: String,
    failpoint: Option<String>,
    wrapper: Vec<OsString>,
}

impl<'a> HookRun<'a> {
    /// A prestart of container `id` whose init is `pid`.
    pub fn prestart(tb: &'a Testbed, config: &Path, id: &str, pid: u32, bundle: &Path) -> Self {
        let state = json!({
            "ociVersion": "1.0.2", "id": id, "status": "creating",
            "pid": pid, "bundle": bundle,
        });
        Self::new(tb, config, "prestart", id, state)
    }

    /// A poststop of container `id`: no pid, as runtimes send it.
    pub fn poststop(tb: &'a Testbed, config: &Path, id: &str, bundle: &Path) -> Self {
        let state = json!({
            "ociVersion": "1.0.2", "id": id, "status": "stopped", "bundle": bundle,
        });
        Self::new(tb, config, "poststop", id, state)
    }

    fn new(tb: &'a Testbed, config: &Path, stage: &'static str, id: &str, state: Value) -> Self {
        HookRun {
            tb,
            config: config.to_owned(),
            stage,
            id: id.to_owned(),
            state: state.to_string(),
            failpoint: None,
            wrapper: Vec::new(),
        }
    }

    /// Arms failpoints: `NSBYPASS_FAILPOINT=<spec>`, e.g. `lease=kill` or
    /// `create-link=sleep-1500,rename-link=error`.
    pub fn failpoint(mut self, spec: &str) -> Self {
        self.failpoint = Some(spec.to_owned());
        self
    }

    /// Runs the whole `nsenter ... nsbypass ...` command line as the
    /// arguments of `argv` (e.g. `unshare --mount ... sh -c '...; exec
    /// "$@"' sh`), which must exec it with stdin untouched.
    pub fn wrapped_in(mut self, argv: &[&OsStr]) -> Self {
        self.wrapper = argv.iter().map(|a| a.to_os_string()).collect();
        self
    }

    fn command(&self) -> Command {
        let mut argv: Vec<OsString> = self.wrapper.clone();
        argv.push("nsenter".into());
        argv.push(format!("--net=/run/netns/{}", self.tb.host_ns).into());
        argv.push("--".into());
        argv.push(nsbypass().into());
        argv.push("--config".into());
        argv.push(self.config.clone().into());
        argv.extend(["hook".into(), self.stage.into()]);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env_clear().env("PATH", HOOK_PATH);
        if let Some(spec) = &self.failpoint {
            cmd.env("NSBYPASS_FAILPOINT", spec);
        }
        cmd
    }

    /// Starts the hook with the state written to its stdin.
    pub fn spawn(self) -> RunningHook {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let stderr_path = self.tb.dir.join(format!(".hook-{n}.err"));
        let stderr = File::create(&stderr_path).expect("creating the hook's stderr file");
        let what = format!(
            "{} of {}{}",
            self.stage,
            self.id,
            self.failpoint
                .as_deref()
                .map(|f| format!(" ({f})"))
                .unwrap_or_default()
        );
        let mut cmd = self.command();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(stderr);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        // A few hundred bytes fit the pipe: this never blocks, and a hook
        // that is killed before it reads them does not matter.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let _ = stdin.write_all(self.state.as_bytes());
        drop(stdin);
        RunningHook {
            child: Some(child),
            stderr_path,
            started,
            what,
        }
    }

    /// Runs the hook to its end (at most [`HOOK_DEADLINE`]).
    pub fn run(self) -> HookResult {
        self.spawn().wait()
    }
}

/// A hook process; dropping it kills it (by its pid) if it still runs.
pub struct RunningHook {
    child: Option<Child>,
    stderr_path: PathBuf,
    started: Instant,
    what: String,
}

impl RunningHook {
    /// SIGKILLs the hook (by pid), as a runtime's hook timeout would; a
    /// hook that already exited is left as it is.
    pub fn kill(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
        }
    }

    /// Waits for the hook to end; kills it and fails the test if it runs
    /// past [`HOOK_DEADLINE`].
    pub fn wait(mut self) -> HookResult {
        let mut child = self.child.take().expect("waited once");
        let deadline = self.started + HOOK_DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waiting for the hook") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} still ran after {HOOK_DEADLINE:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let elapsed = self.started.elapsed();
        let stderr = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        HookResult {
            status,
            stderr,
            elapsed,
            what: std::mem::take(&mut self.what),
        }
    }
}

impl Drop for RunningHook {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// How a hook run ended.
#[derive(Debug)]
pub struct HookResult {
    pub status: ExitStatus,
    pub stderr: String,
    pub elapsed: Duration,
    pub what: String,
}

impl HookResult {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Whether the hook died of SIGKILL.
    pub fn killed(&self) -> bool {
        self.status.signal() == Some(libc_sigkill())
    }

    /// Panics, with the hook's stderr, unless it exited 0 and wrote nothing.
    pub fn assert_ok(&self) {
        assert!(
            self.success() && self.stderr.is_empty(),
            "{} ended with {}: {}",
            self.what,
            self.status,
            self.stderr
        );
    }

    /// Panics unless the hook died of SIGKILL.
    pub fn assert_killed(&self) {
        assert!(
            self.killed(),
            "{} was to die of SIGKILL but ended with {}: {}",
            self.what,
            self.status,
            self.stderr
        );
    }

    /// The one line a failed hook wrote; panics unless the hook exited
    /// non-zero (not by a signal) with exactly one line on stderr.
    pub fn error_line(&self) -> &str {
        assert!(
            self.status.code().is_some_and(|c| c != 0),
            "{} was to fail but ended with {}: {}",
            self.what,
            self.status,
            self.stderr
        );
        let line = self.stderr.strip_suffix('\n').unwrap_or(&self.stderr);
        assert!(
            !line.is_empty() && !line.contains('\n'),
            "{} was to write exactly one line: {:?}",
            self.what,
            self.stderr
        );
        line
    }
}

fn libc_sigkill() -> i32 {
    nix::sys::signal::Signal::SIGKILL as i32
}

/// A container init stand-in: `sleep 600` in some network namespace,
/// killed (by its pid) and reaped on drop.
pub struct Sleeper {
    child: Option<Child>,
    pub pid: u32,
}

impl Sleeper {
    /// In a network namespace of its own, made from the testbed's host
    /// namespace (`nsenter --net=/run/netns/<tag>-h unshare -n sleep 600`);
    /// the namespace dies with it.
    pub fn own_netns(tb: &Testbed) -> Sleeper {
        Sleeper::new(tb, &["--net"])
    }

    /// `unshare FLAGS sleep 600`, started inside the testbed's host netns
    /// (so `--net` gives it a netns of its own below that one, and
    /// `--mount` a private copy of the machine's mount table).
    pub fn new(tb: &Testbed, unshare_flags: &[&str]) -> Sleeper {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", tb.host_ns))
            .args(["--", "unshare"])
            .args(unshare_flags)
            .args(["sleep", "600"]);
        Sleeper::start(cmd)
    }

    /// The key nsbypass files the sleeper's netns record under
    /// (`<dev>-<ino>`, as `netns/<key>.json`).
    pub fn netns_key(&self) -> String {
        netns_key(&self.netns())
    }

    /// The interfaces in the sleeper's netns other than `lo`.
    pub fn links(&self) -> Vec<String> {
        links_in(&self.netns())
            .into_iter()
            .filter(|n| n != "lo")
            .collect()
    }

    /// Inside the namespace at `netns` (`nsenter --net=<netns> sleep 600`),
    /// as a pod member joins its pod's namespace.
    pub fn in_netns(netns: &Path) -> Sleeper {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", netns.display()))
            .args(["--", "sleep", "600"]);
        Sleeper::start(cmd)
    }

    /// Runs `cmd` (which must end up exec'ing `sleep`) as a sleeper, e.g.
    /// `unshare --uts sleep 600` for a namespace of another kind.
    pub fn start_command(cmd: Command) -> Sleeper {
        Sleeper::start(cmd)
    }

    fn start(mut cmd: Command) -> Sleeper {
        cmd.env("PATH", HOOK_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("starting a sleeper");
        let pid = child.id();
        let sleeper = Sleeper {
            child: Some(child),
            pid,
        };
        // nsenter and unshare exec: once the process is `sleep`, it is in
        // its namespace for good.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .as_deref()
            != Some("sleep\n")
        {
            assert!(
                Instant::now() < deadline,
                "sleeper {pid} never became sleep"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        sleeper
    }

    /// `/proc/<pid>/ns/net`: the sleeper's namespace while it runs.
    pub fn netns(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/net", self.pid))
    }

    /// Kills it (by pid) and reaps it: the container's init is dead, as
    /// it is whenever a runtime runs poststop.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A pinned network namespace, as a pod's: named (`ip netns add
/// <tag>-<suffix>`, at `/run/netns/<tag>-<suffix>`) or private (bound at
/// `<dir>/pins/<tag>-<suffix>` by `unshare --net=PATH true`, where no
/// `ip netns` command on the machine looks: for tests that put a FIFO at
/// the path, which `ip netns list` would block opening). Deleted on drop
/// (the testbed unmounts whatever is left under its directory too);
/// whatever a test put at its path instead (a FIFO, a symlink) is removed.
pub struct PinnedNetns {
    pub name: String,
    pub path: PathBuf,
    private: bool,
}

impl PinnedNetns {
    pub fn new(tb: &Testbed, suffix: &str) -> PinnedNetns {
        let name = format!("{}-{suffix}", tb.tag);
        let path = Path::new("/run/netns").join(&name);
        assert!(
            !path.exists(),
            "{} exists already: a leftover?",
            path.display()
        );
        let pinned = PinnedNetns {
            name,
            path,
            private: false,
        };
        pinned.pin();
        pinned
    }

    /// A private one, under the testbed's directory.
    pub fn private(tb: &Testbed, suffix: &str) -> PinnedNetns {
        let name = format!("{}-{suffix}", tb.tag);
        let dir = tb.dir.join("pins");
        std::fs::create_dir_all(&dir).expect("creating the pins directory");
        let pinned = PinnedNetns {
            path: dir.join(&name),
            name,
            private: true,
        };
        pinned.pin();
        pinned
    }

    /// Makes a new namespace at the path (which must be free, or an empty
    /// file for a private one).
    pub fn pin(&self) {
        let out = if self.private {
            if std::fs::symlink_metadata(&self.path).is_err() {
                File::create(&self.path).expect("creating a pin file");
            }
            Command::new("unshare")
                .arg(format!("--net={}", self.path.display()))
                .arg("true")
                .output()
        } else {
            Command::new("ip")
                .args(["netns", "add", &self.name])
                .output()
        }
        .expect("pinning a namespace");
        assert!(
            out.status.success(),
            "pinning {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The namespace's record key, `<dev>-<ino>`.
    pub fn key(&self) -> String {
        netns_key(&self.path)
    }

    /// Deletes it now (as dropping does): the namespace goes once nothing
    /// else holds it.
    pub fn delete(self) {}

    /// Unpins it now and removes the path, keeping the guard (which then
    /// removes whatever the test puts there).
    pub fn unpin(&self) {
        let out = if self.private {
            // Detached, as `ip netns del` does: an open fd may hold it.
            Command::new("umount").arg("-l").arg(&self.path).output()
        } else {
            Command::new("ip")
                .args(["netns", "del", &self.name])
                .output()
        }
        .expect("unpinning a namespace");
        assert!(
            out.status.success(),
            "unpinning {}: {}",
            self.path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for PinnedNetns {
    fn drop(&mut self) {
        // Both detach the mount (if any, never opening the path) and the
        // path goes, whatever is there now.
        if std::fs::symlink_metadata(&self.path).is_ok() {
            if self.private {
                let _ = Command::new("umount").arg("-l").arg(&self.path).output();
            } else {
                let _ = Command::new("ip")
                    .args(["netns", "del", &self.name])
                    .output();
            }
        }
        if std::fs::symlink_metadata(&self.path).is_ok() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The record key of the namespace at `path`: `<dev>-<ino>` of its nsfs
/// inode, as nsbypass names it in `netns/<key>.json` and in leases.
pub fn netns_key(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    format!("{}-{}", meta.dev(), meta.ino())
}

/// Names of every link in the namespace at `netns`.
pub fn links_in(netns: &Path) -> Vec<String> {
    ifaces_in(netns).into_iter().map(|i| i.name).collect()
}

/// Every IPv4 address configured on a MACVLAN in the namespace at
/// `netns`, with its interface's name.
pub fn macvlan_addrs(netns: &Path) -> Vec<(String, Ipv4Addr)> {
    ifaces_in(netns)
        .into_iter()
        .filter(|i| i.kind == "macvlan")
        .flat_map(|i| {
            let name = i.name.clone();
            i.ipv4.into_iter().map(move |a| {
                let addr = a
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .expect("an IPv4 address");
                (name.clone(), addr)
            })
        })
        .collect()
}

/// The one address on a MACVLAN in `netns`; panics unless there is exactly one.
pub fn only_addr(netns: &Path) -> Ipv4Addr {
    let all = macvlan_addrs(netns);
    assert_eq!(
        all.len(),
        1,
        "one MACVLAN address in {}: {all:?}",
        netns.display()
    );
    all[0].1
}

/// The lease files of network `fast`: address -> holder JSON
/// (`{"host", "netns", "container"}`).
pub fn leases_on(tb: &Testbed) -> BTreeMap<Ipv4Addr, Value> {
    leases_of(tb, NETWORK)
}

/// Every lease file of network `fast`, IPv4 and IPv6 alike: address ->
/// holder JSON.
pub fn every_lease(tb: &Testbed) -> BTreeMap<String, Value> {
    let dir = tb.state_dir().join("leases").join(NETWORK);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        assert!(
            name.parse::<std::net::IpAddr>().is_ok(),
            "a file in {} that is no lease: {name}",
            dir.display()
        );
        let text = match std::fs::read_to_string(entry.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            read => read.expect("reading a lease"),
        };
        out.insert(name, serde_json::from_str(&text).expect("a lease is JSON"));
    }
    out
}

/// The IPv4 lease files of `network`, as [`leases_on`] reads `fast`'s; a
/// lease freed while it reads is left out.
pub fn leases_of(tb: &Testbed, network: &str) -> BTreeMap<Ipv4Addr, Value> {
    let dir = tb.state_dir().join("leases").join(network);
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(addr) = name.parse() else {
            panic!("a file in {} that is no lease: {name}", dir.display());
        };
        // A concurrent poststop may free it between the listing and the read.
        let text = match std::fs::read_to_string(entry.path()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            read => read.expect("reading a lease"),
        };
        out.insert(addr, serde_json::from_str(&text).expect("a lease is JSON"));
    }
    out
}

/// File names in `<state_dir>/<sub>` (`containers`, `netns`, `tmp`).
pub fn state_files(tb: &Testbed, sub: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tb.state_dir().join(sub))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Panics unless the state directory holds no lease, no record and no
/// scratch file, once what poststop left to drain has drained.
///
/// Poststop does not wait for the kernel to destroy a namespace whose last
/// process just exited: its record stays, without members and indexed in
/// `draining/`, holding its links' leases until a later run finds it gone.
/// So: right now, no container record and no scratch file, and every
/// namespace record and lease is such a draining one; then, once the
/// kernel is done, one locked nsbypass run leaves nothing.
pub fn assert_state_empty(tb: &Testbed, when: &str) {
    for sub in ["containers", "tmp", "claims"] {
        let files = state_files(tb, sub);
        assert!(files.is_empty(), "{when}: {sub}/ holds {files:?}");
    }
    let draining: Vec<String> = state_files(tb, "draining");
    for name in state_files(tb, "netns") {
        let text = std::fs::read_to_string(tb.state_dir().join("netns").join(&name))
            .expect("reading a namespace record");
        let record: Value = serde_json::from_str(&text).expect("a record is JSON");
        let members = record["members"].as_object().map_or(0, |m| m.len());
        assert!(
            members == 0 && draining.contains(&name),
            "{when}: netns/{name} is left, and not to drain: {record}"
        );
    }
    for (address, lease) in every_lease(tb) {
        let key = lease["netns"].as_str().unwrap_or_default();
        assert!(
            draining.contains(&format!("{key}.json")),
            "{when}: {address} is leased, and not to drain: {lease}"
        );
    }
    if draining.is_empty() {
        assert_no_guard_tables(tb, when);
        return;
    }
    sweep_drained(tb, when);
    let leases = every_lease(tb);
    assert!(
        leases.is_empty(),
        "{when}: leases left once drained: {leases:?}"
    );
    for sub in ["netns", "draining"] {
        let files = state_files(tb, sub);
        assert!(
            files.is_empty(),
            "{when}: {sub}/ holds {files:?} once drained"
        );
    }
    assert_no_guard_tables(tb, when);
}

/// The nftables tables of the address guard in the namespace at `netns`
/// (`nft list tables`: `nsbypass-parent-*` on the host, `nsbypass-link-*`
/// in a container's).
pub fn guard_tables_in(netns: &Path) -> Vec<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["--", "nft", "list", "tables"])
        .output()
        .expect("running nft");
    assert!(
        out.status.success(),
        "nft list tables in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("table netdev "))
        .filter(|t| t.starts_with("nsbypass-"))
        .map(str::to_owned)
        .collect()
}

/// With no records left, no guard table is left on the host either.
pub fn assert_no_guard_tables(tb: &Testbed, when: &str) {
    let host = PathBuf::from(format!("/run/netns/{}", tb.host_ns));
    let tables = guard_tables_in(&host);
    assert!(tables.is_empty(), "{when}: guard tables left: {tables:?}");
}

/// Runs `nsbypass gc` with `config` in the testbed's host namespace;
/// panics unless it succeeds.
pub fn gc(tb: &Testbed, config: &Path) {
    run_ok(tb, config, "gc", "");
}

/// `nsbypass --config CONFIG ARGS...` in the testbed's host namespace, as
/// an operator runs it: with `PATH` only, stdin empty.
pub fn cli(tb: &Testbed, config: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", tb.host_ns))
        .arg("--")
        .arg(super::nsbypass())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_clear()
        .env("PATH", HOOK_PATH)
        .stdin(Stdio::null());
    cmd
}

/// Runs `nsbypass --config CONFIG COMMAND` in the testbed's host namespace
/// with the hook's environment; panics (saying `when`) unless it succeeds.
fn run_ok(tb: &Testbed, config: &Path, command: &str, when: &str) {
    let out = cli(tb, config, &[command])
        .output()
        .expect("running nsbypass");
    assert!(
        out.status.success(),
        "{when}: nsbypass {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until the links of every draining namespace record are off the
/// parent (the kernel has destroyed them), then runs one locked nsbypass
/// command (`list`, which sweeps drained namespaces as every locked run
/// does), so that what poststop left to drain is gone.
pub fn sweep_drained(tb: &Testbed, when: &str) {
    sweep_drained_in(tb, &tb.state_dir(), when)
}

/// [`sweep_drained`] for the state directory `state`.
pub fn sweep_drained_in(tb: &Testbed, state: &Path, when: &str) {
    let draining = std::fs::read_dir(state.join("draining"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name());
    for name in draining {
        let path = state.join("netns").join(&name);
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let record: Value = serde_json::from_str(&text).expect("a record is JSON");
        for link in record["links"].as_array().into_iter().flatten() {
            super::assert_mac_leaves_parent(tb, link["mac"].as_str().unwrap_or_default());
        }
    }
    let config = tb.dir.join("sweep.toml");
    std::fs::write(&config, format!("state_dir = \"{}\"\n", state.display()))
        .expect("writing the sweep config");
    run_ok(tb, &config, "list", when);
}

/// This machine's id, as nsbypass names its host in leases.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .expect("reading /etc/machine-id")
        .trim()
        .to_owned()
}

/// The kernel's truth over `namespaces` (label, path; each must lead to a
/// live namespace; one namespace may be listed under several paths): no
/// IPv4 address is configured on MACVLANs twice, and each one that is has
/// a lease file naming this host and that namespace's key. Returns every
/// address found, with the label of its namespace.
pub fn assert_unique_and_leased(
    tb: &Testbed,
    namespaces: &[(String, PathBuf)],
) -> BTreeMap<Ipv4Addr, String> {
    let host = machine_id();
    let leases = leases_on(tb);
    let mut seen_keys = BTreeMap::new();
    let mut found: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
    for (label, path) in namespaces {
        let key = netns_key(path);
        if seen_keys.insert(key.clone(), label.clone()).is_some() {
            continue;
        }
        for (ifname, addr) in macvlan_addrs(path) {
            if let Some(other) = found.insert(addr, label.clone()) {
                panic!("{addr} is live twice: in {other} and on {ifname} in {label}");
            }
            let lease = leases.get(&addr).unwrap_or_else(|| {
                panic!("{addr} is live on {ifname} in {label} without a lease; leases: {leases:?}")
            });
            assert_eq!(
                (lease["host"].as_str(), lease["netns"].as_str()),
                (Some(host.as_str()), Some(key.as_str())),
                "the lease of {addr} (live in {label}) names another holder: {lease}"
            );
        }
    }
    found
}
