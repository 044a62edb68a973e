//! The host's own DPDK (Debian 12's 22.11, `dpdk-testpmd` over the
//! `net_af_xdp` PMD) carried by one short profile into containers of an
//! image that has its own glibc and no DPDK, each on its own MACVLAN: the
//! peer host's pings are answered by DPDK, never by the container's
//! kernel; one container's txonly frames reach the other's rxonly; the
//! docker runtime mode gives the process its capabilities from the profile
//! alone; and the image directory is exactly as it was afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nsbypass_testbed::{Container, ContainerBuilder, Testbed};
use serde_json::json;

const TESTPMD: &str = "/usr/bin/dpdk-testpmd";

/// The shipped example profile: the whole profile a user writes for
/// testpmd over AF_XDP (at most 10 lines besides comments; see the file for
/// what each line is for). CAP_IPC_LOCK rather than `memlock =
/// "unlimited"`: these machines let no one raise a hard rlimit.
const PROFILE: &str = include_str!("../../examples/profiles/dpdk-af-xdp.toml");

/// What a Debian 12 minbase image holds of the libraries testpmd needs:
/// glibc and the base system's own. Copied from the host, as debootstrap
/// would install the same packages; nothing of DPDK.
const IMAGE_LIBS: [&str; 12] = [
    "ld-linux-x86-64.so.2",
    "libc.so.6",
    "libm.so.6",
    "libz.so.1",
    "liblzma.so.5",
    "libzstd.so.1",
    "liblz4.so.1",
    "libgcrypt.so.20",
    "libgpg-error.so.0",
    "libcap.so.2",
    "libsystemd.so.0",
    "libmd.so.0",
];

const HELLO: &str = r#"
#include <stdio.h>
int main(void) { puts("hello from the image's own glibc"); return 0; }
"#;

/// A Debian-12-shaped image: busybox, `/lib -> usr/lib`, `/lib64 ->
/// usr/lib64`, the libraries above in `/usr/lib/x86_64-linux-gnu`, a
/// dynamically linked `hello`, `/run` and `/var/run -> /run`.
fn image(tb: &Testbed) -> PathBuf {
    let hello = tb.build_c("hello", HELLO, false).unwrap();
    let root = tb.new_rootfs("debianish").unwrap();
    let libdir = root.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&libdir).unwrap();
    for lib in IMAGE_LIBS {
        // fs::copy follows the host's soname link to the real file.
        std::fs::copy(
            Path::new("/usr/lib/x86_64-linux-gnu").join(lib),
            libdir.join(lib),
        )
        .unwrap();
    }
    std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
    std::os::unix::fs::symlink(
        "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        root.join("usr/lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", root.join("lib64")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy(hello, root.join("usr/bin/hello")).unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    std::fs::create_dir_all(root.join("var")).unwrap();
    std::os::unix::fs::symlink("/run", root.join("var/run")).unwrap();
    root
}

/// The image read-only (the container writes only its own tmpfs /run,
/// where EAL keeps its runtime directory), PATH with /usr/bin.
fn in_image<'a>(b: ContainerBuilder<'a>, image: &Path) -> ContainerBuilder<'a> {
    b.rootfs(image.to_owned())
        .env("PATH=/usr/bin:/bin")
        .edit_spec(|spec| {
            spec["root"]["readonly"] = true.into();
            spec["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/run", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=755"],
            }));
        })
}

/// Gives the process what the profile needs, as `--cap-add` would.
fn with_capabilities(spec: &mut serde_json::Value) {
    for set in ["bounding", "effective", "permitted"] {
        let list = spec["process"]["capabilities"][set].as_array_mut().unwrap();
        for cap in ["CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN", "CAP_IPC_LOCK"] {
            list.push(cap.into());
        }
    }
}

/// testpmd on net1 over AF_XDP in generic mode (a MACVLAN has no native
/// XDP), with `args` after EAL's; stopped by SIGINT after `secs`, when it
/// prints its totals. Its output.
fn testpmd(c: &Container, secs: u32, args: &[&str]) -> String {
    let mut argv = vec!["timeout", "-s", "INT"];
    let secs = secs.to_string();
    argv.push(&secs);
    argv.extend([
        "dpdk-testpmd",
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "-m",
        "128",
        "-l",
        "0-1",
        "--vdev",
        "net_af_xdp0,iface=net1,xdp_prog=/usr/lib/x86_64-linux-gnu/bpf/xsk_def_xdp_prog.o",
        "--",
        "--total-num-mbufs=16384",
        "--stats-period",
        "1",
    ]);
    argv.extend(args);
    let out = c.exec(&argv).unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The container's /sys/fs/bpf is a bpffs of its own.
fn assert_bpffs(c: &Container) {
    let table = c.exec_ok(&["cat", "/proc/self/mountinfo"]).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf ")),
        "{table}"
    );
}

/// Stops the testpmd running in `c` (SIGINT: it prints its totals), by
/// its pid in the container.
fn stop_testpmd(c: &Container) {
    c.exec_ok(&["sh", "-c", "kill -INT $(pidof dpdk-testpmd)"])
        .unwrap();
}

/// The last `NAME: N` testpmd printed (its totals at exit).
fn last_count(output: &str, name: &str) -> u64 {
    output
        .rsplit(&format!("{name}: "))
        .next()
        .filter(|_| output.contains(&format!("{name}: ")))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in testpmd's output:\n{output}"))
}

/// Whether an XDP program is attached to net1 in `c`'s namespace.
fn xdp_attached(c: &Container) -> bool {
    let out = c.netns_exec(&["ip", "link", "show", "net1"]).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Echo requests `c`'s kernel has received (`Icmp: InEchos`).
fn kernel_echo_requests(c: &Container) -> u64 {
    let snmp = c.netns_exec_ok(&["cat", "/proc/net/snmp"]).unwrap();
    let icmp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp: ")).collect();
    let names: Vec<&str> = icmp[0].split_whitespace().collect();
    let values: Vec<&str> = icmp[1].split_whitespace().collect();
    let at = names.iter().position(|n| *n == "InEchos").unwrap();
    values[at].parse().unwrap()
}

/// Polls `check` for up to `secs`; on time out, fails with `what` and
/// the output of the testpmd that should have done it.
fn wait_for(
    what: &str,
    secs: u64,
    mut check: impl FnMut() -> bool,
    run: &mut Option<std::thread::ScopedJoinHandle<String>>,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        if Instant::now() > deadline || run.as_ref().is_some_and(|r| r.is_finished()) {
            let output = run.take().map(|r| r.join().unwrap()).unwrap_or_default();
            panic!("{what} within {secs} s; testpmd said:\n{output}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// testpmd in icmpecho mode in `c`; the peer host pings `c`'s address
/// until three in a row are answered while `c`'s kernel receives no echo
/// request (the XDP program is attached a moment before the socket is in
/// its map, when the kernel still answers). Returns testpmd's output.
fn dpdk_answers_the_peers_pings(tb: &Testbed, c: &Container) -> String {
    let ip = address(c, "net1");
    std::thread::scope(|s| {
        let mut run = Some(s.spawn(|| testpmd(c, 40, &["--forward-mode=icmpecho"])));
        wait_for(
            "testpmd attaches its XDP program",
            15,
            || xdp_attached(c),
            &mut run,
        );
        let deadline = Instant::now() + Duration::from_secs(12);
        loop {
            let before = kernel_echo_requests(c);
            let ping = tb
                .in_peer(&["busybox", "ping", "-c", "3", "-i", "0.2", "-W", "1", &ip])
                .unwrap();
            if ping.status.success() && kernel_echo_requests(c) == before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the peer's pings of {ip} are not all answered by DPDK: {ping:?}, kernel echo requests {before} -> {}",
                kernel_echo_requests(c)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        stop_testpmd(c);
        let output = run.take().unwrap().join().unwrap();
        assert!(last_count(&output, "TX-packets") >= 3, "{output}");
        output
    })
}

#[test]
fn testpmd_over_af_xdp_from_a_ten_line_profile_in_a_foreign_image() {
    let Some(tb) = testbed() else { return };
    if !Path::new(TESTPMD).exists() {
        assert!(
            std::env::var_os("NSBYPASS_E2E").is_none(),
            "{TESTPMD} is missing: scripts/setup.sh installs dpdk-dev"
        );
        eprintln!("skipping: no {TESTPMD} (apt-get install dpdk dpdk-dev librte-net-af-xdp23)");
        return;
    }
    let lines = PROFILE
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(lines <= 10, "{lines} lines:\n{PROFILE}");
    let config = config(&tb, PROFILE);
    let image = image(&tb);
    let before = snapshot(&image);
    let image_has = |glob: &str| {
        std::fs::read_dir(image.join("usr/lib/x86_64-linux-gnu"))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().contains(glob))
    };
    assert!(
        !image_has("librte") && !image_has("libxdp"),
        "no DPDK in the image"
    );

    // Without the capabilities in the spec, one line says what to add.
    let err = in_image(hooked(&tb, &config, "nocaps"), &image)
        .annotation("nsbypass.io/network", "fast")
        .annotation("nsbypass.io/profile", "dpdk-af-xdp")
        .create_err();
    let line = hook_line(&err);
    assert!(
        line.contains("container nocaps: profile dpdk-af-xdp: check process: the container's process lacks CAP_NET_ADMIN, CAP_BPF, CAP_SYS_ADMIN, CAP_IPC_LOCK; start it with --cap-add NET_ADMIN --cap-add BPF --cap-add SYS_ADMIN --cap-add IPC_LOCK"),
        "{line}"
    );
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());
    assert_same_tree(&before, &snapshot(&image), "after the refused container");

    let container = |id: &str| {
        in_image(hooked(&tb, &config, id), &image)
            .annotation("nsbypass.io/network", "fast")
            .annotation("nsbypass.io/profile", "dpdk-af-xdp")
            .edit_spec(with_capabilities)
            .create()
            .unwrap()
    };
    let started = Instant::now();
    let a = container("dpdk-a");
    let b = container("dpdk-b");
    eprintln!("two containers carried in {:?}", started.elapsed());
    a.start().unwrap();
    b.start().unwrap();
    assert_bpffs(&a);
    assert_same_tree(&before, &snapshot(&image), "while they run");

    dpdk_answers_the_peers_pings(&tb, &a);

    // b's rxonly receives what a's txonly sends to b's MAC, sibling to
    // sibling on the parent.
    let b_mac = iface(&b, "net1").mac;
    let (sent, received) = std::thread::scope(|s| {
        let mut rx = Some(s.spawn(|| testpmd(&b, 30, &["--forward-mode=rxonly"])));
        wait_for(
            "b's testpmd attaches its XDP program",
            15,
            || xdp_attached(&b),
            &mut rx,
        );
        let peer = format!("--eth-peer=0,{b_mac}");
        let tx = testpmd(&a, 5, &["--forward-mode=txonly", &peer, "--txpkts=64"]);
        stop_testpmd(&b);
        (tx, rx.take().unwrap().join().unwrap())
    });
    let tx = last_count(&sent, "TX-packets");
    let rx = last_count(&received, "RX-packets");
    assert!(tx > 1000, "a sent {tx}:\n{sent}");
    assert!(
        rx > 100,
        "b's rxonly received {rx} of a's {tx}:\n{received}"
    );
    delete(a);
    delete(b);

    // The docker runtime mode: the same profile, no capabilities in the
    // spec but the profile's; mounts the image lacks are left to the hook.
    let d = in_image(tb.container("dpdk-rt"), &image)
        .through_runtime_mode(nsbypass(), &config)
        .env("NSBYPASS_NETWORK=fast")
        .env("NSBYPASS_PROFILE=dpdk-af-xdp")
        .create()
        .unwrap();
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.bundle.join("config.json")).unwrap()).unwrap();
    for cap in ["CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN", "CAP_IPC_LOCK"] {
        assert!(
            spec["process"]["capabilities"]["effective"]
                .as_array()
                .unwrap()
                .contains(&cap.into()),
            "{cap} from the profile: {}",
            spec["process"]["capabilities"]
        );
    }
    d.start().unwrap();
    assert_bpffs(&d);
    dpdk_answers_the_peers_pings(&tb, &d);
    delete(d);
    assert!(leases(&tb).is_empty(), "{:?}", leases(&tb));
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));

    // Nothing was left in the image; a container without the profile on
    // the same rootfs runs its own glibc, with no trace of DPDK.
    assert_same_tree(&before, &snapshot(&image), "after every container");
    let plain = in_image(tb.container("plain"), &image).create().unwrap();
    plain.start().unwrap();
    assert_eq!(
        plain.exec_ok(&["hello"]).unwrap(),
        "hello from the image's own glibc\n"
    );
    let out = plain
        .exec(&[
            "sh",
            "-c",
            "ls /usr/lib/x86_64-linux-gnu /usr/bin /sys/fs/bpf",
        ])
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listing.contains("librte") && !listing.contains("testpmd"),
        "{listing}"
    );
    delete(plain);
    assert_same_tree(&before, &snapshot(&image), "at the end");
}
