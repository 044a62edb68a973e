//! What every end-to-end test needs on top of the testbed: the hook binary,
//! a config for the testbed's NIC, and ways to observe what nsbypass did.

#![allow(dead_code)] // each test target uses its own subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nsbypass_testbed::{Container, ContainerBuilder, Testbed};
use serde_json::Value;

/// The hook under test; cargo builds it for this package's test targets.
pub fn nsbypass() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nsbypass"))
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
        a = tb.addr(100),
        b = tb.addr(199),
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
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-d", "-j", "addr", "show"])
        .output()
        .expect("nsenter ip addr");
    assert!(
        out.status.success(),
        "ip addr in {pid}'s namespace: {}",
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

fn files_under(dir: &Path) -> Vec<String> {
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
