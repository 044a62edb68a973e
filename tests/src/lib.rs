//! Test harness for nsbypass's end-to-end tests and demo.
//!
//! A [`Testbed`] is a throwaway container host: two network namespaces joined
//! by a veth pair (the MACVLAN parent "NIC" and a peer machine on its wire)
//! and a private runc root, so tests run real `runc` containers with the real
//! `nsbypass` hook without touching the machine's own network, and many tests
//! can run at once. [`Testbed::podman`] and [`Testbed::dockerd`] run podman
//! and a private dockerd the same way, in the testbed's host netns with their
//! state in its directory. Everything is removed on drop, also when a test
//! panics.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use nsbypass_testbed::{require_tools, skip_unless_root, Testbed};
//! if skip_unless_root() {
//!     return Ok(());
//! }
//! require_tools();
//! let tb = Testbed::new()?;
//! let c = tb.container("web").create()?;
//! c.start()?;
//! println!("{}", c.exec_ok(&["ip", "addr"])?);
//! c.kill_and_delete()?;
//! # Ok(())
//! # }
//! ```
//!
//! Needs root, `runc`, a static busybox at `/bin/busybox`, iproute2's `ip` and
//! util-linux's `nsenter` (see [`require_tools`]).

mod cmd;
mod container;
mod docker;
mod files;
mod podman;
mod procs;
mod rootfs;
mod runc;
mod testbed;

pub use container::{Container, ContainerBuilder, HOOK_ENV, HOOK_TIMEOUT_SECS};
pub use docker::Dockerd;
pub use files::{mknod_char, symlink_in};
pub use podman::{Podman, PodmanContainer, PodmanRun};
pub use testbed::{Testbed, DEFAULT_PREFIX};

use anyhow::{bail, Context, Result};

/// What installs the tools the testbed needs, named in error messages so a
/// failing run says how to fix itself.
pub const SETUP_HINT: &str = "run scripts/setup.sh as root \
     (or: apt-get install -y runc busybox-static iproute2 util-linux)";

/// Returns true, after printing `skipping: <why>` to stderr, when the caller
/// (a test) cannot run here and should return early: network namespaces and
/// runc need root. A missing tool is not a reason to skip but a broken setup;
/// see [`require_tools`].
pub fn skip_unless_root() -> bool {
    match effective_uid() {
        Ok(0) => false,
        Ok(uid) => {
            eprintln!("skipping: needs root for network namespaces and runc (euid is {uid})");
            true
        }
        Err(e) => {
            eprintln!("skipping: cannot tell whether this runs as root: {e:#}");
            true
        }
    }
}

/// Panics with a message naming every missing tool and [`SETUP_HINT`], so a
/// machine without them fails loudly instead of skipping tests silently.
pub fn require_tools() {
    if let Err(e) = check_tools() {
        panic!("{e:#}");
    }
}

/// The check behind [`require_tools`], also run by [`Testbed::new`].
pub(crate) fn check_tools() -> Result<()> {
    let mut missing: Vec<String> = ["runc", "ip", "nsenter", "nft"]
        .into_iter()
        .filter(|tool| cmd::which(tool).is_none())
        .map(str::to_owned)
        .collect();
    let busybox = std::path::Path::new(rootfs::BUSYBOX);
    if !busybox.exists() {
        missing.push(format!("busybox (static, at {})", rootfs::BUSYBOX));
    } else if !rootfs::is_static(busybox)? {
        missing.push(format!(
            "a static busybox ({} is dynamically linked and cannot run in a bare rootfs)",
            rootfs::BUSYBOX
        ));
    }
    if !missing.is_empty() {
        bail!("missing test tools: {}; {SETUP_HINT}", missing.join(", "));
    }
    Ok(())
}

/// What [`Testbed::new_cgroup2`] needs beyond [`check_tools`]: util-linux's
/// `unshare` and `mount` and a `sh` to put cgroup2 over `/sys/fs/cgroup` in
/// runc's mount namespace, and a kernel that has cgroup2.
pub(crate) fn check_cgroup2_tools() -> Result<()> {
    let missing: Vec<&str> = ["unshare", "mount", "sh"]
        .into_iter()
        .filter(|tool| cmd::which(tool).is_none())
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing tools for a cgroup v2 testbed: {}; {SETUP_HINT}",
            missing.join(", ")
        );
    }
    let filesystems =
        std::fs::read_to_string("/proc/filesystems").context("reading /proc/filesystems")?;
    if !filesystems.lines().any(|l| l.ends_with("\tcgroup2")) {
        bail!("the kernel has no cgroup2 filesystem for a cgroup v2 testbed");
    }
    Ok(())
}

/// The effective uid, from /proc (std has no geteuid and this crate needs no
/// libc for one number).
fn effective_uid() -> Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .context("no Uid line in /proc/self/status")?;
    // Fields: real, effective, saved, filesystem.
    line.split_whitespace()
        .nth(1)
        .context("short Uid line in /proc/self/status")?
        .parse()
        .context("parsing the effective uid")
}

#[cfg(test)]
mod tests {
    //! Checks of the harness itself, without nsbypass: each would otherwise
    //! surface as a puzzling failure in an end-to-end test.

    use super::*;
    use serde_json::json;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    /// Skips without root, panics without tools; true means "return now".
    fn skip() -> bool {
        if skip_unless_root() {
            return true;
        }
        require_tools();
        false
    }

    /// Whether `pid` runs; a zombie does not count (the machine's init
    /// reaps orphans such as killed container inits only after a while).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| !stat.rsplit(") ").next().unwrap_or("").starts_with('Z'))
    }

    fn netns_exists(name: &str) -> bool {
        Path::new("/run/netns").join(name).exists()
    }

    #[test]
    fn names_fit_ifnamsiz() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        for name in [&tb.parent, &tb.peer_link] {
            assert!(name.len() <= 15, "{name} is longer than IFNAMSIZ allows");
        }
        Ok(())
    }

    #[test]
    fn container_without_hooks_starts_and_execs() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let c = tb.container("plain").create()?;
        assert_eq!(c.status()?, "created");
        assert_eq!(c.exec_ok(&["echo", "before start"])?, "before start\n");
        c.start()?;
        assert_eq!(c.status()?, "running");
        assert_eq!(c.exec_ok(&["ls", "-d", "/proc/1"])?, "/proc/1\n");
        let failed = c.exec(&["false"])?;
        assert!(!failed.status.success(), "`false` succeeded: {failed:?}");
        assert_eq!(tb.runc_list()?, ["plain"]);
        let deleted = c.kill_and_delete()?;
        assert!(deleted.status.success(), "runc delete: {deleted:?}");
        assert!(tb.runc_list()?.is_empty());
        Ok(())
    }

    #[test]
    fn new_container_netns_has_only_lo() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let c = tb.container("alone").create()?;
        let links = c.netns_exec_ok(&["ip", "-o", "link", "show"])?;
        let names: Vec<&str> = links.lines().filter_map(|l| l.split(": ").nth(1)).collect();
        assert_eq!(names, ["lo"], "links: {links}");
        // The container's own view (busybox ip) agrees.
        let inside = c.exec_ok(&["ip", "-o", "link"])?;
        assert_eq!(inside.lines().count(), 1, "links inside: {inside}");
        Ok(())
    }

    #[test]
    fn join_netns_of_shares_the_netns() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let first = tb.container("first").create()?;
        let second = tb.container("second").join_netns_of(&first).create()?;
        let other = tb.container("other").create()?;
        assert_eq!(first.netns_inode()?, second.netns_inode()?);
        assert_ne!(first.netns_inode()?, other.netns_inode()?);
        Ok(())
    }

    #[test]
    fn peer_is_reachable_over_the_wire() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let host_cidr = format!("{}/24", tb.addr(2));
        tb.in_host_ok(&["ip", "addr", "add", &host_cidr, "dev", &tb.parent])?;
        // The machine has no iputils ping; busybox's serves.
        let ping = tb.in_host(&[
            "busybox",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &tb.peer_ip.to_string(),
        ]);
        tb.in_host_ok(&["ip", "addr", "del", &host_cidr, "dev", &tb.parent])?;
        let ping = ping?;
        assert!(ping.status.success(), "ping from the host netns: {ping:?}");
        // The parent is left as nsbypass expects it: up, no address.
        let addrs = tb.in_host_ok(&["ip", "-o", "-4", "addr", "show", "dev", &tb.parent])?;
        assert_eq!(addrs, "");
        Ok(())
    }

    /// The hooks run where nsbypass will run: in the testbed's host netns,
    /// with the arguments and environment `hooks()` promises.
    #[test]
    fn hooks_run_in_the_host_netns_with_the_given_arguments() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let record = tb.dir.join("hook-calls");
        let fake = tb.dir.join("fake-nsbypass");
        let script = format!(
            "#!/bin/sh\necho \"$* netns=$(readlink /proc/self/ns/net) $PATH\" >> {}\n",
            record.display()
        );
        std::fs::write(&fake, script)?;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))?;
        let config = tb.write_config("# unused by the fake\n")?;

        let c = tb
            .container("hooked")
            .hooks(&fake, &config, &["prestart", "poststop"])
            .create()?;
        let deleted = c.kill_and_delete()?;
        assert!(deleted.status.success(), "runc delete: {deleted:?}");

        let host_ns = std::fs::metadata(Path::new("/run/netns").join(&tb.host_ns))?;
        let calls = std::fs::read_to_string(&record)?;
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 2, "hook calls: {calls}");
        for (line, stage) in lines.iter().zip(["prestart", "poststop"]) {
            let want = format!(
                "--config {} hook {stage} netns=net:[{}] {}",
                config.display(),
                host_ns.ino(),
                HOOK_ENV.trim_start_matches("PATH="),
            );
            assert_eq!(*line, want);
        }
        Ok(())
    }

    #[test]
    fn create_err_returns_the_hooks_stderr_and_leaves_nothing() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let err = tb
            .container("refused")
            .edit_spec(|spec| {
                spec["hooks"]["prestart"] = json!([{
                    "path": "/bin/sh",
                    "args": ["sh", "-c", "echo 'fake-hook: no network for you' >&2; exit 3"],
                }]);
            })
            .create_err();
        assert!(
            err.contains("fake-hook: no network for you"),
            "runc said: {err}"
        );
        assert!(tb.runc_list()?.is_empty());
        Ok(())
    }

    #[test]
    fn create_err_panics_when_create_succeeds_and_leaves_nothing() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            tb.container("fine").create_err()
        }));
        let payload = outcome.expect_err("create_err returned although create succeeded");
        let message = payload.downcast_ref::<String>().map_or("", String::as_str);
        assert!(message.contains("to fail, but it succeeded"), "{message}");
        assert!(tb.runc_list()?.is_empty());
        Ok(())
    }

    /// Testbeds of one process never collide, even with the same container
    /// ids (runc's default cgroup path is the id, shared by all runc roots).
    #[test]
    fn parallel_testbeds_are_independent() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| -> Result<String> {
                    let tb = Testbed::new()?;
                    let c = tb.container("same-id").create()?;
                    c.start()?;
                    c.exec_ok(&["true"])?;
                    Ok(tb.tag.clone())
                })
            })
            .collect();
        let mut tags = Vec::new();
        for t in threads {
            tags.push(t.join().expect("testbed thread panicked")?);
        }
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), 4);
        Ok(())
    }

    /// Drop cleans up during a panic, and also when the testbed goes before
    /// its containers.
    #[test]
    fn a_panicking_test_leaves_nothing_behind() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let made = std::sync::Mutex::new(None);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let tb = Testbed::new().expect("testbed");
            let c = tb.container("doomed").create().expect("create");
            c.start().expect("start");
            *made.lock().unwrap() = Some((
                tb.host_ns.clone(),
                tb.peer_ns.clone(),
                tb.dir.clone(),
                c.pid,
            ));
            panic!("deliberate panic: the testbed must clean up while unwinding");
        }));
        assert!(outcome.is_err());
        let (host_ns, peer_ns, dir, pid) = made.into_inner().unwrap().expect("testbed was made");
        assert!(!netns_exists(&host_ns) && !netns_exists(&peer_ns));
        assert!(!dir.exists(), "{} is left", dir.display());
        assert!(!alive(pid), "container init {pid} lives");

        let tb = Testbed::new()?;
        let c = tb.container("orphan").create()?;
        let (host_ns, pid) = (tb.host_ns.clone(), c.pid);
        drop(tb);
        assert!(!netns_exists(&host_ns));
        assert!(!alive(pid), "container init {pid} lives");
        drop(c);
        Ok(())
    }

    /// The cgroup of `pid` in the hierarchy of `controller` (`"devices"`, or
    /// `""` for the cgroup v2 line `0::<path>`), as this process sees it.
    fn cgroup_of(pid: u32, controller: &str) -> Result<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        text.lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (names, path) = rest.split_once(':')?;
                (names.split(',').any(|n| n == controller)).then(|| path.to_owned())
            })
            .with_context(|| format!("no {controller:?} line in /proc/{pid}/cgroup: {text}"))
    }

    /// Where the machine mounts the cgroup2 hierarchy, if it does.
    fn unified_mount() -> Option<&'static Path> {
        ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.controllers").exists())
    }

    /// In a cgroup v2 testbed, runc (and its hooks) see cgroup2 and put the
    /// container in a cgroup of its own in the unified hierarchy, leaving v1
    /// alone; delete removes that cgroup.
    #[test]
    fn cgroup2_testbed_runs_containers_under_cgroup_v2() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new_cgroup2()?;
        assert!(tb.cgroup2());
        let seen = tb.dir.join("hook-saw");
        let hook_cmd = format!("stat -f -c %T /sys/fs/cgroup > {}", seen.display());
        let c = tb
            .container("v2")
            .edit_spec(|spec| {
                spec["hooks"]["prestart"] = json!([{
                    "path": "/bin/sh",
                    "args": ["sh", "-c", hook_cmd],
                    "env": [HOOK_ENV],
                }]);
            })
            .create()?;
        assert_eq!(std::fs::read_to_string(&seen)?, "cgroup2fs\n");
        c.start()?;
        assert_eq!(c.exec_ok(&["echo", "in v2"])?, "in v2\n");

        let own = format!("/{}-v2", tb.tag);
        let unified = cgroup_of(c.pid, "")?;
        assert!(
            unified != "/" && unified.ends_with(&own),
            "0::{unified} is not the container's own cgroup"
        );
        let devices = cgroup_of(c.pid, "devices")?;
        assert!(!devices.ends_with(&own), "v1 devices:{devices} was used");
        let dir = unified_mount().map(|m| m.join(unified.trim_start_matches('/')));
        if let Some(dir) = &dir {
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
        let deleted = c.kill_and_delete()?;
        assert!(deleted.status.success(), "runc delete: {deleted:?}");
        if let Some(dir) = &dir {
            assert!(!dir.exists(), "runc delete left {}", dir.display());
        }
        assert!(tb.runc_list()?.is_empty());
        Ok(())
    }

    /// A default testbed's runc uses the machine's v1 devices controller.
    #[test]
    fn default_testbed_runs_containers_in_a_v1_devices_cgroup() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        assert!(!tb.cgroup2());
        let c = tb.container("v1").create()?;
        let devices = cgroup_of(c.pid, "devices")?;
        assert!(
            devices.ends_with(&format!("/{}-v1", tb.tag)),
            "devices:{devices} is not the container's own cgroup"
        );
        Ok(())
    }

    /// A node from `mknod_char` is a working device in a container, and the
    /// device cgroup (v1 or v2) refuses one runc did not allow: the tests of
    /// device grants rely on both.
    #[test]
    fn mknod_char_nodes_work_and_device_cgroups_police_them() -> Result<()> {
        if skip() {
            return Ok(());
        }
        for tb in [Testbed::new()?, Testbed::new_cgroup2()?] {
            let rootfs = tb.new_rootfs("nodes")?;
            let null = rootfs.join("tmp/null");
            mknod_char(&null, 1, 3)?;
            // An unassigned major runc's default allow-list does not name.
            mknod_char(&rootfs.join("tmp/denied"), 240, 7)?;
            let meta = std::fs::metadata(&null)?;
            assert_eq!(meta.mode(), 0o20666, "mode of {}", null.display());
            assert_eq!(meta.rdev(), nix::sys::stat::makedev(1, 3));
            assert!(mknod_char(&null, 1, 3).is_err(), "mknod over a node");

            let c = tb.container("nodes").rootfs(rootfs).create()?;
            c.exec_ok(&["sh", "-c", "echo x > /tmp/null"])?;
            let denied = c.exec(&["cat", "/tmp/denied"])?;
            let stderr = String::from_utf8_lossy(&denied.stderr);
            assert!(
                !denied.status.success() && stderr.contains("Operation not permitted"),
                "cgroup2={}: {denied:?}",
                tb.cgroup2()
            );
        }
        Ok(())
    }

    const HELLO_C: &str = r#"
#include <stdio.h>
int main(void) { puts("hello from a dynamic program"); return 0; }
"#;

    /// A program and a preload library from `build_c` run in a container
    /// whose rootfs `new_rootfs_with` made, from real copies of their
    /// libraries.
    #[test]
    fn build_c_programs_run_in_a_new_rootfs_with_them() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let hello = tb.build_c("hello", HELLO_C, false)?;
        assert_eq!(hello, tb.dir.join("c/hello"));
        let greet = tb.build_c(
            "greet",
            "#include <stdio.h>\n\
             __attribute__((constructor)) static void greet(void) { fputs(\"preloaded\\n\", stderr); }\n",
            true,
        )?;
        assert_eq!(greet, tb.dir.join("c/libgreet.so"));
        let err = tb.build_c("broken", "int main(void) { return nope; }\n", false);
        let err = format!("{:#}", err.expect_err("broken C compiled"));
        assert!(err.contains("nope") && err.contains("error"), "{err}");

        let rootfs = tb.new_rootfs_with("dyn", &[&hello, &greet])?;
        for inside in [
            "usr/local/bin/hello",
            "usr/local/bin/libgreet.so",
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libc.so.6",
        ] {
            let meta = std::fs::symlink_metadata(rootfs.join(inside))
                .with_context(|| format!("{inside} in the rootfs"))?;
            assert!(meta.is_file(), "{inside} is not a regular file");
        }
        let tmp = std::fs::metadata(rootfs.join("tmp"))?;
        assert_eq!(tmp.mode() & 0o7777, 0o1777);
        assert_eq!(std::fs::read_dir(rootfs.join("etc"))?.count(), 0);

        let c = tb
            .container("dyn")
            .rootfs(rootfs)
            .env("LD_PRELOAD=/usr/local/bin/libgreet.so")
            .create()?;
        c.start()?;
        let out = c.exec(&["hello"])?;
        assert!(out.status.success(), "hello: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello from a dynamic program\n"
        );
        assert_eq!(String::from_utf8_lossy(&out.stderr), "preloaded\n");
        Ok(())
    }

    /// `peer_udp`'s socket listens in the peer netns, and making it leaves
    /// the caller's thread in its own netns.
    #[test]
    fn peer_udp_receives_in_the_peer_netns() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let before = std::fs::read_link("/proc/thread-self/ns/net")?;
        let socket = tb.peer_udp(40123)?;
        assert_eq!(std::fs::read_link("/proc/thread-self/ns/net")?, before);
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        // Debian's busybox nc has no -u; bash's /dev/udp sends a datagram.
        tb.in_peer_ok(&["bash", "-c", "echo hi > /dev/udp/127.0.0.1/40123"])?;
        let mut buf = [0u8; 64];
        let (n, _) = socket
            .recv_from(&mut buf)
            .context("receiving from the peer")?;
        // Sent to 127.0.0.1 in the peer netns: only a socket there gets it.
        assert_eq!(&buf[..n], b"hi\n");
        Ok(())
    }

    #[test]
    fn symlink_in_plants_verbatim_links_and_replaces_what_was_there() -> Result<()> {
        if skip() {
            return Ok(());
        }
        let tb = Testbed::new()?;
        let rootfs = tb.new_rootfs("hostile")?;
        symlink_in(&rootfs, "/etc/ld.so.preload", "/tmp/host-dir")?;
        assert_eq!(
            std::fs::read_link(rootfs.join("etc/ld.so.preload"))?,
            Path::new("/tmp/host-dir")
        );
        std::fs::create_dir_all(rootfs.join("usr/lib/bypass/sub"))?;
        std::fs::write(rootfs.join("usr/lib/bypass/sub/file"), "x")?;
        symlink_in(&rootfs, "usr/lib/bypass", "../../../../tmp/host-dir")?;
        assert_eq!(
            std::fs::read_link(rootfs.join("usr/lib/bypass"))?,
            Path::new("../../../../tmp/host-dir")
        );
        symlink_in(&rootfs, "new/dirs/link", "x")?;
        assert!(rootfs.join("new/dirs").is_dir());
        symlink_in(&rootfs, "new/dirs/link", "y")?;
        assert_eq!(
            std::fs::read_link(rootfs.join("new/dirs/link"))?,
            Path::new("y")
        );
        assert!(symlink_in(&rootfs, "etc/../../escape", "x").is_err());
        assert!(symlink_in(&rootfs, "/", "x").is_err());
        Ok(())
    }
}
