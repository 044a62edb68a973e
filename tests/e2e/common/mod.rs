//! What every end-to-end test needs on top of the testbed: the hook binary,
//! a config for the testbed's NIC, and ways to observe what nsbypass did.

#![allow(dead_code)] // each test target uses its own subset

pub mod direct;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nsbypass_testbed::{Container, ContainerBuilder, Testbed, HOOK_ENV};
use serde_json::Value;

/// The hook under test; cargo builds it for this package's test targets.
///
/// `NSBYPASS_TEST_BINARY=PATH` points every test at another build instead,
/// e.g. an older nsbypass, to see which tests it fails. (Tests that arm
/// failpoints need a build with the `failpoints` feature.)
pub fn nsbypass() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match std::env::var_os("NSBYPASS_TEST_BINARY") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_nsbypass")),
    })
}

/// A testbed, or `None` (after saying why) when the test cannot run here.
/// scripts/test.sh sets `NSBYPASS_E2E=1`: there, not running is a failure.
pub fn testbed() -> Option<Testbed> {
    if nsbypass_testbed::skip_unless_root() {
        assert!(
            std::env::var_os("NSBYPASS_E2E").is_none(),
            "NSBYPASS_E2E is set, so end-to-end tests must run: run them as root"
        );
        return None;
    }
    nsbypass_testbed::require_tools();
    Some(Testbed::new().expect("building the testbed"))
}

/// Config with network `fast` on the testbed's NIC, the peer host as gateway,
/// plus whatever `extra` TOML adds.
pub fn config(tb: &Testbed, extra: &str) -> PathBuf {
    config_with_range(tb, 100, 199, extra)
}

/// Like [`config`], with the pool `.<first>`-`.<last>` of the subnet.
pub fn config_with_range(tb: &Testbed, first: u8, last: u8, extra: &str) -> PathBuf {
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
routes = ["10.20.0.0/16"]
{extra}
"#,
        state = tb.state_dir().display(),
        dir = tb.dir.display(),
        parent = tb.parent,
        subnet = tb.subnet,
        a = tb.addr(first),
        b = tb.addr(last),
        peer = tb.peer_ip,
    );
    tb.write_config(&text).expect("writing config")
}

/// A container with nsbypass registered at every setup stage and poststop.
pub fn hooked<'a>(tb: &'a Testbed, config: &Path, id: &str) -> ContainerBuilder<'a> {
    tb.container(id).hooks(
        nsbypass(),
        config,
        &["prestart", "createRuntime", "poststop"],
    )
}

/// One interface as `ip -d -j addr` shows it inside a container's namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    pub kind: String,
    pub mode: String,
    pub mtu: u64,
    pub up: bool,
    pub ipv4: Vec<String>,
}

/// Every interface in `c`'s network namespace.
pub fn ifaces(c: &Container) -> Vec<Iface> {
    ifaces_of(c.pid)
}

/// Every interface in the network namespace of process `pid` (a container
/// init, whichever runtime started it).
pub fn ifaces_of(pid: u32) -> Vec<Iface> {
    ifaces_in(Path::new(&format!("/proc/{pid}/ns/net")))
}

/// Every interface in the network namespace at `netns` (a process's
/// `/proc/<pid>/ns/net`, a `/run/netns/<name>`, an fd's `/proc/<pid>/fd/<n>`).
pub fn ifaces_in(netns: &Path) -> Vec<Iface> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(["ip", "-d", "-j", "addr", "show"])
        .output()
        .expect("nsenter ip addr");
    assert!(
        out.status.success(),
        "ip addr in {}: {}",
        netns.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).unwrap();
    let list: Vec<Value> = serde_json::from_str(&json).expect("ip -j output");
    list.iter()
        .map(|i| Iface {
            name: i["ifname"].as_str().unwrap_or_default().to_owned(),
            mac: i["address"].as_str().unwrap_or_default().to_owned(),
            kind: i["linkinfo"]["info_kind"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            mode: i["linkinfo"]["info_data"]["mode"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            mtu: i["mtu"].as_u64().unwrap_or_default(),
            up: i["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "UP")),
            ipv4: i["addr_info"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["family"] == "inet")
                .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
                .collect(),
        })
        .collect()
}

/// The interface `name` in `c`'s namespace; panics listing what is there if absent.
pub fn iface(c: &Container, name: &str) -> Iface {
    iface_of(c.pid, name)
}

/// The interface `name` in process `pid`'s network namespace.
pub fn iface_of(pid: u32, name: &str) -> Iface {
    let all = ifaces_of(pid);
    all.iter()
        .find(|i| i.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name} in the namespace of {pid}: {all:?}"))
}

/// Polls `check` for up to 5 s: poststop runs after the runtime returns.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address (without prefix) of `name` in `c`.
pub fn address(c: &Container, name: &str) -> String {
    let i = iface(c, name);
    assert_eq!(i.ipv4.len(), 1, "{i:?}");
    i.ipv4[0].split('/').next().unwrap().to_owned()
}

/// Leased addresses, as `network/address`, read from the state directory.
pub fn leases(tb: &Testbed) -> Vec<String> {
    files_under(&tb.state_dir().join("leases"))
}

/// Container and namespace records left in the state directory.
pub fn records(tb: &Testbed) -> Vec<String> {
    let mut out = files_under(&tb.state_dir().join("containers"));
    out.extend(files_under(&tb.state_dir().join("netns")));
    out
}

/// Every non-directory entry below `dir`, as sorted relative paths (none
/// if `dir` is missing).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            for inner in files_under(&path) {
                out.push(format!("{}/{inner}", entry.file_name().to_string_lossy()));
            }
        } else {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// MACs in the parent NIC's unicast filter: a MACVLAN child's MAC is there
/// while the child exists, in whatever namespace it lives.
pub fn parent_macs(tb: &Testbed) -> Vec<String> {
    let out = tb
        .in_host_ok(&["bridge", "fdb", "show", "dev", &tb.parent])
        .expect("bridge fdb show");
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Waits up to 5 s for `mac` to leave the parent: the kernel destroys a
/// dead container's namespace, and the MACVLANs in it, asynchronously.
pub fn assert_mac_leaves_parent(tb: &Testbed, mac: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while parent_macs(tb).iter().any(|m| m == mac) {
        assert!(
            Instant::now() < deadline,
            "{mac} is still on parent {}",
            tb.parent
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Gives the peer host `address`/64, without DAD so it answers at once.
pub fn give_the_peer_ipv6(tb: &Testbed, address: &str) {
    tb.in_peer_ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{address}/64"),
        "dev",
        &tb.peer_link,
        "nodad",
    ])
    .expect("an IPv6 address for the peer");
}

/// `busybox ping` from inside `c`; true if `target` answered.
pub fn pings(c: &Container, target: &str) -> bool {
    c.exec(&["ping", "-c", "1", "-W", "2", target])
        .expect("runc exec ping")
        .status
        .success()
}

/// Deletes `c` (running poststop) and asserts the hooks reported no error.
pub fn delete(c: Container) {
    let id = c.id.clone();
    let out = c.kill_and_delete().expect("runc delete");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("level=error"),
        "deleting {id}: {stderr}"
    );
}

/// The nsbypass line runc quoted from a failing hook's stderr, checked to
/// be the only line the hook wrote.
pub fn hook_line(runc_stderr: &str) -> String {
    let start = runc_stderr
        .find("nsbypass: hook")
        .unwrap_or_else(|| panic!("no nsbypass line in: {runc_stderr}"));
    // runc quotes the hook's stderr in a Go string: up to the first
    // unescaped quote, with \" and \n escapes.
    let quoted = &runc_stderr[start..];
    let mut text = String::new();
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next() {
                Some('n') => text.push('\n'),
                Some(other) => text.push(other),
                None => break,
            },
            c => text.push(c),
        }
    }
    let text = text.trim_end();
    assert!(
        !text.contains('\n'),
        "the hook wrote more than one line: {text:?}"
    );
    text.to_owned()
}

/// OCI state as a runtime hands it to a setup hook.
pub fn setup_state(id: &str, pid: u32, bundle: &Path) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": "creating",
        "pid": pid,
        "bundle": bundle,
    })
    .to_string()
}

/// OCI state as a runtime hands it to poststop: stopped, no pid.
pub fn stopped_state(id: &str, bundle: &Path) -> String {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "id": id,
        "status": "stopped",
        "bundle": bundle,
    })
    .to_string()
}

/// Writes a bundle `<dir>/direct/<name>` whose `config.json` is `spec`,
/// for hooks run by hand (no runtime reads it).
pub fn direct_bundle(tb: &Testbed, name: &str, spec: &Value) -> PathBuf {
    let dir = tb.dir.join("direct").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir
}

/// A minimal spec asking for what `annotations` say, with `root` (a host
/// path) as its rootfs if given.
pub fn direct_spec(annotations: Value, root: Option<&Path>) -> Value {
    let mut spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": { "args": ["sleep", "600"], "env": [HOOK_ENV], "cwd": "/" },
        "annotations": annotations,
    });
    if let Some(root) = root {
        spec["root"] = serde_json::json!({ "path": root, "readonly": false });
    }
    spec
}

/// The hook binary run by hand, as a runtime would run it, inside the
/// testbed's host netns: `nsenter --net=/run/netns/<tag>-h nsbypass
/// --config CFG hook STAGE`, with only [`HOOK_ENV`] (plus [`DirectHook::env`])
/// in its environment and the state document on stdin.
pub struct DirectHook<'a> {
    tb: &'a Testbed,
    config: PathBuf,
    stage: String,
    env: Vec<String>,
    umask000: bool,
    timeout: Duration,
}

/// What one hook run did.
pub struct HookRun {
    /// `None` if the test had to kill it at its timeout.
    pub status: Option<ExitStatus>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl std::fmt::Debug for HookRun {
    /// Shows at most 2000 bytes of stderr: a broken hook may write megabytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut end = self.stderr.len().min(2000);
        while !self.stderr.is_char_boundary(end) {
            end -= 1;
        }
        f.debug_struct("HookRun")
            .field("status", &self.status)
            .field("elapsed", &self.elapsed)
            .field("stderr_bytes", &self.stderr.len())
            .field("stderr", &&self.stderr[..end])
            .finish()
    }
}

impl HookRun {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Asserts the run failed with exactly one line on stderr; returns it.
    pub fn one_line(&self) -> String {
        assert!(
            self.status.is_some_and(|s| !s.success()),
            "the hook should have failed: {self:?}"
        );
        let text = self
            .stderr
            .strip_suffix('\n')
            .unwrap_or_else(|| panic!("stderr is not one line ending in a newline: {self:?}"));
        assert!(!text.contains('\n'), "more than one line: {self:?}");
        text.to_owned()
    }
}

/// A hook started by [`DirectHook::spawn`].
pub struct RunningHook {
    child: Child,
    started: Instant,
    stderr: PathBuf,
}

impl<'a> DirectHook<'a> {
    pub fn new(tb: &'a Testbed, config: &Path, stage: &str) -> DirectHook<'a> {
        DirectHook {
            tb,
            config: config.to_owned(),
            stage: stage.to_owned(),
            env: Vec::new(),
            umask000: false,
            timeout: Duration::from_secs(30),
        }
    }

    /// Adds `KEY=VALUE` to the hook's environment (e.g. `NSBYPASS_FAILPOINT=...`).
    pub fn env(mut self, key_eq_value: &str) -> Self {
        self.env.push(key_eq_value.to_owned());
        self
    }

    /// Runs the hook under umask 000: `sh -c 'umask 000; exec "$@"'`.
    pub fn umask000(mut self) -> Self {
        self.umask000 = true;
        self
    }

    /// How long [`DirectHook::run`] lets it run before killing it (30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts the hook with `state` on stdin. Its pid is the hook's own
    /// (`nsenter` and `sh` exec).
    pub fn spawn(&self, state: &str) -> RunningHook {
        use std::io::Write;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let stderr = self.tb.dir.join(format!(
            "hook-stderr-{}",
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.tb.host_ns))
            .arg("--");
        if self.umask000 {
            cmd.args(["sh", "-c", "umask 000; exec \"$@\"", "sh"]);
        }
        cmd.arg(nsbypass())
            .arg("--config")
            .arg(&self.config)
            .args(["hook", &self.stage])
            .env_clear()
            .env("PATH", HOOK_ENV.trim_start_matches("PATH="));
        for kv in &self.env {
            let (k, v) = kv.split_once('=').expect("KEY=VALUE");
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting the hook");
        let started = Instant::now();
        // A hook that fails before reading stdin closes it: not our error.
        let _ = child.stdin.take().unwrap().write_all(state.as_bytes());
        RunningHook {
            child,
            started,
            stderr,
        }
    }

    /// Runs the hook to its end (or kills it at the timeout).
    pub fn run(&self, state: &str) -> HookRun {
        self.spawn(state).wait(self.timeout)
    }
}

impl RunningHook {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the hook; kills it (by its pid) after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> HookRun {
        let deadline = self.started + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        let stderr = String::from_utf8_lossy(&std::fs::read(&self.stderr).unwrap()).into_owned();
        let _ = std::fs::remove_file(&self.stderr);
        HookRun {
            status,
            stderr,
            elapsed,
        }
    }
}

impl Drop for RunningHook {
    /// A test that fails while the hook runs does not leave it running.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Every entry below `root` (not following links), by path relative to
/// it: type, mode, size, mtime (and a link's target). Two equal snapshots
/// mean nothing was created, removed, written or renamed there.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let t = meta.file_type();
            let kind = if t.is_symlink() {
                format!("link to {}", std::fs::read_link(&path).unwrap().display())
            } else if t.is_dir() {
                "dir".to_owned()
            } else if t.is_file() {
                "file".to_owned()
            } else if t.is_char_device() || t.is_block_device() {
                format!("device {:x}", meta.rdev())
            } else {
                "other".to_owned()
            };
            let line = format!(
                "{kind} mode {:o} size {} mtime {}.{:09}",
                meta.mode(),
                meta.size(),
                meta.mtime(),
                meta.mtime_nsec()
            );
            out.insert(path.strip_prefix(root).unwrap().to_owned(), line);
            if t.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    let meta = std::fs::symlink_metadata(root).unwrap();
    out.insert(
        PathBuf::from("."),
        format!(
            "dir mode {:o} mtime {}.{:09}",
            meta.mode(),
            meta.mtime(),
            meta.mtime_nsec()
        ),
    );
    walk(root, root, &mut out);
    out
}

/// Asserts two snapshots are equal, listing only the entries that differ.
pub fn assert_same_tree(
    before: &BTreeMap<PathBuf, String>,
    after: &BTreeMap<PathBuf, String>,
    what: &str,
) {
    let mut differences = Vec::new();
    for (path, was) in before {
        match after.get(path) {
            Some(now) if now == was => {}
            Some(now) => differences.push(format!("changed {}: {was} -> {now}", path.display())),
            None => differences.push(format!("removed {}", path.display())),
        }
    }
    for (path, now) in after {
        if !before.contains_key(path) {
            differences.push(format!("added {}: {now}", path.display()));
        }
    }
    assert!(
        differences.is_empty(),
        "{what}:\n{}",
        differences.join("\n")
    );
}

/// The mount points of `pid`'s mount namespace (`"self"` for this
/// process's) that are `under` or below it, in table order.
pub fn mounts_under(pid: &str, under: &Path) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(under))
        .map(str::to_owned)
        .collect()
}
