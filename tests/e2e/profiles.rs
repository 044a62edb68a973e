//! Bypass-stack profiles end to end: a real preloaded shim intercepting a
//! real program's sends, device access granted exactly on cgroup v1 and v2,
//! and hostile images that try to steer mounts onto the host.

mod common;

use std::net::UdpSocket;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use nsbypass_testbed::{mknod_char, symlink_in, Container, Testbed};
use serde_json::json;

/// A stand-in for libonload: interposes sendto(), opens the stack's device
/// node once, and records both in /tmp/shim.log inside the container.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void record(const char *what, const char *detail) {
    FILE *f = fopen("/tmp/shim.log", "a");
    if (f) { fprintf(f, "%s %s\n", what, detail); fclose(f); }
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags,
               const struct sockaddr *to, socklen_t tolen) {
    static ssize_t (*real)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    static int opened;
    if (!real) real = dlsym(RTLD_NEXT, "sendto");
    if (!opened) {
        int dev = open("/dev/nsbtest", O_RDWR);
        record("open", dev >= 0 ? "ok" : strerror(errno));
        if (dev >= 0) close(dev);
        opened = 1;
    }
    char size[32];
    snprintf(size, sizeof size, "%zu", len);
    record("sendto", size);
    return real(fd, buf, len, flags, to, tolen);
}
"#;

/// A dynamically linked program that sends COUNT datagrams to HOST:PORT.
const SENDER: &str = r#"
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int main(int argc, char **argv) {
    if (argc != 4) return 2;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    for (int i = 0; i < atoi(argv[3]); i++) {
        char msg[32];
        int n = snprintf(msg, sizeof msg, "datagram %d", i);
        if (sendto(s, msg, n, 0, (struct sockaddr *)&to, sizeof to) != n) { perror("sendto"); return 1; }
    }
    return 0;
}
"#;

/// Major and minor of a real, harmless device runc does not allow by
/// default: /dev/fuse (opening it only creates an unused connection).
fn fuse() -> (u32, u32) {
    let rdev = std::fs::metadata("/dev/fuse")
        .expect("this machine has /dev/fuse")
        .rdev();
    (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    )
}

/// A "host device node" for the profile, made in the testbed's directory.
fn host_device(tb: &Testbed) -> PathBuf {
    let path = tb.dir.join("dev-nsbtest");
    if !path.exists() {
        let (major, minor) = fuse();
        mknod_char(&path, major, minor).unwrap();
    }
    path
}

/// Config with network `fast` and profile `stack`: the test device, the
/// shim (if built) and its preload.
fn stack_config(tb: &Testbed, shim: Option<&Path>) -> PathBuf {
    let device = host_device(tb);
    let mut profile = format!(
        "[profiles.stack]\ndevices = [{{ source = \"{}\", target = \"/dev/nsbtest\" }}]\n",
        device.display()
    );
    if let Some(shim) = shim {
        profile += &format!(
            "mounts = [{{ source = \"{}\", target = \"/usr/lib/nsbypass/libnsbshim.so\" }}]\n\
             preload = [\"/usr/lib/nsbypass/libnsbshim.so\"]\n",
            shim.display()
        );
    }
    config(tb, &profile)
}

/// Opens `path` read-write inside the container; the shell's error on failure.
fn open_in(c: &Container, path: &str) -> Result<(), String> {
    let out = c.exec(&["sh", "-c", &format!("exec 3<>{path}")]).unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_preloaded_shim_intercepts_sends_over_net1_and_opens_the_device() {
    let Some(tb) = testbed() else { return };
    let shim = tb.build_c("nsbshim", SHIM, true).unwrap();
    let sender = tb.build_c("udpsend", SENDER, false).unwrap();
    // The shim lives on a shared mount, as /usr does on systemd hosts: a
    // clone of it would join that peer group unless made private.
    let _shared = SharedMount::new(shim.parent().unwrap());
    let config = stack_config(&tb, Some(&shim));
    let rootfs = tb.new_rootfs_with("shim", &[&sender]).unwrap();
    let c = hooked(&tb, &config, "shim")
        .rootfs(rootfs.clone())
        .annotation("nsbypass.io/network", "fast")
        .annotation("nsbypass.io/profile", "stack")
        .create()
        .unwrap();
    c.start().unwrap();

    let peer = tb.peer_udp(9999).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let sent = c
        .exec(&["udpsend", &tb.peer_ip.to_string(), "9999", "3"])
        .unwrap();
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(receive(&peer));
    }
    assert_eq!(got, ["datagram 0", "datagram 1", "datagram 2"]);

    let log = c.exec_ok(&["cat", "/tmp/shim.log"]).unwrap();
    assert_eq!(
        log, "open ok\nsendto 10\nsendto 10\nsendto 10\n",
        "the shim's record"
    );
    let preload = c.exec_ok(&["cat", "/etc/ld.so.preload"]).unwrap();
    assert_eq!(preload, "/usr/lib/nsbypass/libnsbshim.so\n");

    // The profile's files are read-only, its device usable but not writable as a node.
    for path in ["/etc/ld.so.preload", "/usr/lib/nsbypass/libnsbshim.so"] {
        let out = c.exec(&["sh", "-c", &format!("echo x >> {path}")]).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Read-only file system"),
            "{path}: {err}"
        );
    }
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid)).unwrap();
    let options = |target: &str| -> String {
        mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some(target))
            .unwrap_or_else(|| panic!("{target} is not a mount point: {mounts}"))
            .split_whitespace()
            .nth(5)
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        options("/usr/lib/nsbypass/libnsbshim.so"),
        "ro,nosuid,nodev,relatime"
    );
    assert_eq!(options("/etc/ld.so.preload"), "ro,nosuid,nodev,relatime");
    assert_eq!(options("/dev/nsbtest"), "ro,nosuid,noexec,relatime");
    // Private: no peer group through which mounts could cross to the host.
    for line in mounts
        .lines()
        .filter(|l| l.contains("nsbtest") || l.contains("nsbypass") || l.contains("ld.so.preload"))
    {
        assert!(!line.contains("shared:"), "propagates: {line}");
    }
    // The image on disk is untouched: the preload file is a bound copy,
    // and the mount points the image lacked live on an overlay.
    assert!(!rootfs.join("etc/ld.so.preload").exists());
    assert!(!rootfs.join("usr/lib/nsbypass").exists());

    delete(c);
    assert!(
        leases(&tb).is_empty() && records(&tb).is_empty(),
        "{:?}",
        records(&tb)
    );
}

/// A directory bind-mounted onto itself and made shared, for the test's
/// duration (host mount namespace; removed on drop).
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        for args in [vec!["--bind", "DIR", "DIR"], vec!["--make-shared", "DIR"]] {
            let args: Vec<String> = args
                .iter()
                .map(|a| a.replace("DIR", &dir.display().to_string()))
                .collect();
            let ok = std::process::Command::new("mount")
                .args(&args)
                .status()
                .unwrap()
                .success();
            assert!(ok, "mount {args:?}");
        }
        SharedMount(dir.to_owned())
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        // Recursively: with whatever a broken hook let propagate onto it.
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(&self.0)
            .status();
    }
}

fn receive(socket: &UdpSocket) -> String {
    let mut buf = [0u8; 64];
    let n = socket
        .recv(&mut buf)
        .expect("a datagram from the container");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Without the profile the device is refused, with it exactly the named
/// device opens, on the cgroup version `tb` runs runc with.
fn device_access_is_exact(tb: &Testbed) {
    let config = stack_config(tb, None);
    let (major, minor) = fuse();
    // The same device, and an unnamed one (loop-control's numbers), shipped
    // inside the image where the container can reach them.
    let rootfs = tb.new_rootfs("devices").unwrap();
    std::fs::create_dir_all(rootfs.join("opt")).unwrap();
    mknod_char(&rootfs.join("opt/same"), major, minor).unwrap();
    mknod_char(&rootfs.join("opt/unnamed"), 10, 237).unwrap();

    let plain = hooked(tb, &config, "plain")
        .rootfs(rootfs.clone())
        .create()
        .unwrap();
    let err = open_in(&plain, "/opt/same").unwrap_err();
    assert!(
        err.contains("Operation not permitted"),
        "without the profile: {err}"
    );
    delete(plain);

    let stack = hooked(tb, &config, "stack")
        .rootfs(rootfs)
        .annotation("nsbypass.io/profile", "stack")
        .create()
        .unwrap();
    open_in(&stack, "/dev/nsbtest").unwrap();
    open_in(&stack, "/opt/same").unwrap();
    let err = open_in(&stack, "/opt/unnamed").unwrap_err();
    assert!(
        err.contains("Operation not permitted"),
        "a device nobody named: {err}"
    );
    if !tb.cgroup2() {
        // The second setup stage (createRuntime) granted nothing twice.
        let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", stack.pid)).unwrap();
        let path = cgroup
            .lines()
            .find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_owned()))
            .unwrap();
        let list =
            std::fs::read_to_string(format!("/sys/fs/cgroup/devices{path}/devices.list")).unwrap();
        let rule = format!("c {major}:{minor} ");
        assert_eq!(
            list.lines().filter(|l| l.starts_with(&rule)).count(),
            1,
            "{list}"
        );
    }
    delete(stack);
    assert!(records(tb).is_empty(), "{:?}", records(tb));
}

#[test]
fn device_access_is_granted_exactly_on_cgroup_v1() {
    let Some(tb) = testbed() else { return };
    assert!(!tb.cgroup2());
    device_access_is_exact(&tb);
}

#[test]
fn device_access_is_granted_exactly_on_cgroup_v2() {
    let Some(_) = testbed() else { return };
    let tb = Testbed::new_cgroup2().unwrap();
    device_access_is_exact(&tb);
}

/// Mount points of `pid`'s mount namespace.
fn mount_points(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn hostile_images_cannot_steer_anything_onto_the_host() {
    let Some(tb) = testbed() else { return };
    let shim = tb.build_c("nsbshim", SHIM, true).unwrap();
    let config = stack_config(&tb, Some(&shim));
    let victim = tb.dir.join("host-victim");
    let abs = victim.display().to_string();
    let climb = format!("../../../../../../../../..{abs}");
    let canary = format!("{abs}/canary");
    // (name, link in the image, its target, whether the image also has a
    // directory at the target's path inside itself). With that mirror the
    // links resolve inside the rootfs and setup must succeed there; an
    // implementation that followed them onto the host would fail (or worse).
    let variants: [(&str, &str, &str, bool); 7] = [
        ("usr-abs", "/usr", &abs, true),
        ("usrlib-climb", "/usr/lib", &climb, true),
        ("etc-abs", "/etc", &abs, true),
        ("etc-climb", "/etc", &climb, false),
        ("dev-abs", "/dev", &abs, true),
        (
            "target-abs",
            "/usr/lib/nsbypass/libnsbshim.so",
            &canary,
            true,
        ),
        (
            "target-dangling",
            "/usr/lib/nsbypass/libnsbshim.so",
            &canary,
            false,
        ),
    ];
    for (name, link, target, mirror) in variants {
        // What the image does to the host with runc alone (runc 1.1.5
        // follows an image's /dev link out of the rootfs for its own /dev
        // entries), then with the profile: nsbypass may add nothing.
        let mut seen = Vec::new();
        for profile in [false, true] {
            let _ = std::fs::remove_dir_all(&victim);
            std::fs::create_dir_all(&victim).unwrap();
            std::fs::write(victim.join("canary"), "untouched").unwrap();
            let id = format!("{name}-{profile}");
            let rootfs = tb.new_rootfs(&id).unwrap();
            if mirror {
                let inside = rootfs.join(abs.trim_start_matches('/'));
                std::fs::create_dir_all(&inside).unwrap();
                std::fs::write(inside.join("canary"), "image's own").unwrap();
            }
            symlink_in(&rootfs, link, target).unwrap();
            let mut builder = hooked(&tb, &config, &id).rootfs(rootfs);
            if profile {
                builder = builder.annotation("nsbypass.io/profile", "stack");
            }
            match (builder.create(), profile, mirror) {
                (Ok(c), true, true) => {
                    // Wired inside the rootfs, where the image's links lead.
                    let preload = c.exec_ok(&["cat", "/etc/ld.so.preload"]).unwrap();
                    assert_eq!(preload, "/usr/lib/nsbypass/libnsbshim.so\n", "{id}");
                    assert!(
                        c.exec(&["test", "-s", "/usr/lib/nsbypass/libnsbshim.so"])
                            .unwrap()
                            .status
                            .success(),
                        "{id}"
                    );
                    open_in(&c, "/dev/nsbtest").unwrap();
                    delete(c);
                }
                (Ok(c), false, _) => delete(c),
                (Err(e), true, false) => {
                    let line = hook_line(&e.to_string());
                    assert!(
                        line.contains("leads nowhere inside the rootfs"),
                        "{id}: {line}"
                    );
                }
                (Ok(_), true, false) => panic!("{id}: a link leading nowhere was accepted"),
                (Err(e), _, _) => panic!("{id}: {e}"),
            }
            assert_eq!(
                std::fs::read_to_string(victim.join("canary")).unwrap(),
                "untouched",
                "{id}"
            );
            let host_mounts = mount_points(std::process::id());
            assert!(
                !host_mounts.iter().any(|p| p.starts_with(&abs)),
                "{id}: a host mount in the victim: {host_mounts:?}"
            );
            seen.push(listing(&victim));
        }
        assert_eq!(
            seen[1], seen[0],
            "{name}: nsbypass created something in the host directory"
        );
    }
    let _ = std::fs::remove_dir_all(&victim);
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}

#[test]
fn bad_profiles_fail_with_one_clear_line_and_undo_the_network() {
    let Some(tb) = testbed() else { return };
    let device = host_device(&tb);
    std::os::unix::fs::symlink(&device, tb.dir.join("dev-link")).unwrap();
    let profiles = format!(
        "[profiles.stack]\ndevices = [\"{dev}\"]\n\
         [profiles.needs]\nrequires = [\"/sys/module/no_such_driver\"]\n\
         [profiles.gone]\nmounts = [\"{dir}/no-such-lib.so\"]\n\
         [profiles.linked]\ndevices = [\"{dir}/dev-link\"]\n\
         [profiles.noglob]\ndevices = [\"{dir}/dev-none*\"]\n\
         [profiles.etc]\nmounts = [{{ source = \"{dev}\", target = \"/etc/x/y\" }}]\n",
        dev = device.display(),
        dir = tb.dir.display()
    );
    let config = config(&tb, &profiles);
    let cases = [
        ("nope", "container bad: profile nope: validate: no such profile in"),
        ("needs", "container bad: profile needs: validate: requires /sys/module/no_such_driver, which this host lacks"),
        ("gone", "container bad: profile gone: validate: "),
        ("linked", "is a symlink (to "),
        ("noglob", "matches nothing on this host"),
        ("etc", "container bad: profile etc: validate: mount "),
    ];
    for (profile, want) in cases {
        let line = hook_line(
            &hooked(&tb, &config, "bad")
                .annotation("nsbypass.io/network", "fast")
                .annotation("nsbypass.io/profile", profile)
                .create_err(),
        );
        assert!(
            line.contains(want),
            "{profile}:\n got: {line}\nwant: {want}"
        );
        assert!(leases(&tb).is_empty(), "{profile}: {:?}", leases(&tb));
        assert!(records(&tb).is_empty(), "{profile}: {:?}", records(&tb));
    }

    // A profile that fails while being carried in (the image's /etc is a
    // dangling link) undoes the network wired just before it.
    let rootfs = tb.new_rootfs("dangling").unwrap();
    symlink_in(&rootfs, "/etc", "/nonexistent-dir").unwrap();
    let shim = tb.build_c("nsbshim", SHIM, true).unwrap();
    let with_preload = stack_config(&tb, Some(&shim));
    let line = hook_line(
        &hooked(&tb, &with_preload, "late")
            .rootfs(rootfs)
            .annotation("nsbypass.io/network", "fast")
            .annotation("nsbypass.io/profile", "stack")
            .create_err(),
    );
    assert!(
        line.contains("container late: write ld.so.preload: ")
            || line.contains("container late: profile stack: mount: "),
        "{line}"
    );
    assert!(line.contains("leads nowhere"), "{line}");
    assert!(leases(&tb).is_empty(), "{:?}", leases(&tb));
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}

/// Defect 3: an image link into a bidirectional (rshared) volume would make
/// a profile's bind reach the host through the volume's peer group and
/// outlive the container, shadowing the user's file, even on a volume the
/// container may only read. Refused, naming the shared propagation; the
/// host's mount table and the volume stay as they were.
#[test]
fn a_target_on_an_rshared_volume_is_refused_and_nothing_reaches_the_host() {
    let Some(tb) = testbed() else { return };
    let source = tb.dir.join("librt.so");
    std::fs::write(&source, "HOST LIBRARY (profile source)\n").unwrap();
    let config = config(
        &tb,
        &format!(
            "[profiles.rtp]\nmounts = [{{ source = \"{}\", target = \"/usr/lib64/librt.so\" }}]\n",
            source.display()
        ),
    );
    // The volume read-write or read-only for the container, in a rootfs
    // that is itself rshared, or with runc's default (rslave).
    for (access, rootfs_propagation) in [("rw", true), ("ro", true), ("rw", false)] {
        let name = format!(
            "{access}-{}",
            if rootfs_propagation {
                "rshared"
            } else {
                "default"
            }
        );
        let volume = tb.dir.join(format!("volume-{name}"));
        std::fs::create_dir(&volume).unwrap();
        let users = "the user's own file in the volume\n";
        std::fs::write(volume.join("librt.so"), users).unwrap();
        let _shared = SharedMount::new(&volume);
        let before = mounts_under("self", &volume);
        assert_eq!(before.len(), 1, "{before:?}");

        let rootfs = tb.new_rootfs(&name).unwrap();
        symlink_in(&rootfs, "/usr/lib64", "/data").unwrap();
        // The volume's mount point, or runc would make it in the image.
        std::fs::create_dir(rootfs.join("data")).unwrap();
        let image = snapshot(&rootfs);
        let bind = json!({
            "destination": "/data",
            "type": "bind",
            "source": volume,
            "options": ["rbind", access, "rshared"],
        });
        let id = format!("rshared-{name}");
        let err = hooked(&tb, &config, &id)
            .rootfs(rootfs.clone())
            .annotation("nsbypass.io/profile", "rtp")
            .edit_spec(move |spec| {
                spec["mounts"].as_array_mut().unwrap().push(bind);
                if rootfs_propagation {
                    spec["linux"]["rootfsPropagation"] = "rshared".into();
                }
            })
            .create_err();
        let line = hook_line(&err);
        assert!(
            line.starts_with(&format!(
                "nsbypass: hook prestart: container {id}: profile rtp: mount: /usr/lib64/librt.so lies on "
            )) && line.contains("a mount with shared propagation"),
            "{name}: {line}"
        );
        assert_eq!(mounts_under("self", &volume), before, "{name}");
        assert_eq!(
            std::fs::read_to_string(volume.join("librt.so")).unwrap(),
            users,
            "{name}"
        );
        assert_same_tree(&image, &snapshot(&rootfs), &name);
    }
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}

/// dlopen()s argv[1] and prints what its nsbx_answer() returns.
const LOADLIB: &str = r#"
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    if (argc != 2) return 2;
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    int (*answer)(void) = (int (*)(void))dlsym(lib, "nsbx_answer");
    if (!answer) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    printf("%d\n", answer());
    return 0;
}
"#;

/// Defect 7: carrying a profile into a plain-directory rootfs never writes
/// the image on disk, with `root.readonly` false or true: the targets it
/// lacks (a library under /usr/lib, a tool directory under /opt, and
/// /etc/ld.so.preload) appear on overlays inside the container only. The
/// container works (library loaded from the mount, preload listed, tools
/// visible, device opens; the spec's own bind on /etc/hosts still shows
/// through /etc's overlay); read-only stays read-only; and a later
/// container from the same image without the profile finds the image's
/// own library, not an empty mount point ("file too short").
#[test]
fn profiles_never_write_the_image_on_disk() {
    let Some(tb) = testbed() else { return };
    let host_lib = tb
        .build_c("nsbx", "int nsbx_answer(void) { return 7; }\n", true)
        .unwrap();
    let image_lib = tb
        .build_c("nsbximage", "int nsbx_answer(void) { return 42; }\n", true)
        .unwrap();
    let loadlib = tb.build_c("loadlib", LOADLIB, false).unwrap();
    let tools = tb.dir.join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::write(tools.join("tool"), "#!/bin/sh\necho tool\n").unwrap();
    let hosts = tb.dir.join("hosts");
    std::fs::write(&hosts, "10.77.0.9 bound-by-the-spec\n").unwrap();
    let config = config(
        &tb,
        &format!(
            "[profiles.img]\n\
             devices = [{{ source = \"{}\", target = \"/dev/nsbtest\" }}]\n\
             mounts = [{{ source = \"{}\", target = \"/usr/lib/libnsbx.so\" }}, \
                       {{ source = \"{}\", target = \"/opt/nsb/bin\" }}]\n\
             preload = [\"/usr/lib/libnsbx.so\"]\n",
            host_device(&tb).display(),
            host_lib.display(),
            tools.display()
        ),
    );
    // The loader searches /usr/lib first: an empty file left there by a
    // container before would hide the image's own library.
    let search = "LD_LIBRARY_PATH=/usr/lib:/usr/local/lib";
    for readonly in [false, true] {
        let name = if readonly { "ro" } else { "rw" };
        let rootfs = tb
            .new_rootfs_with(&format!("image-{name}"), &[&loadlib])
            .unwrap();
        std::fs::create_dir_all(rootfs.join("usr/local/lib")).unwrap();
        std::fs::copy(&image_lib, rootfs.join("usr/local/lib/libnsbx.so")).unwrap();
        std::fs::write(rootfs.join("etc/hosts"), "127.0.0.1 the-image-s-own\n").unwrap();
        let image = snapshot(&rootfs);
        let bind = json!({
            "destination": "/etc/hosts",
            "type": "bind",
            "source": hosts,
            "options": ["rbind", "ro"],
        });
        let c = hooked(&tb, &config, &format!("image-{name}"))
            .rootfs(rootfs.clone())
            .annotation("nsbypass.io/profile", "img")
            .env(search)
            .edit_spec(move |spec| {
                spec["root"]["readonly"] = readonly.into();
                spec["mounts"].as_array_mut().unwrap().push(bind);
            })
            .create()
            .unwrap();
        assert_same_tree(&image, &snapshot(&rootfs), &format!("{name}: created"));
        c.start().unwrap();
        assert_eq!(
            c.exec_ok(&["loadlib", "libnsbx.so"]).unwrap(),
            "7\n",
            "{name}"
        );
        assert_eq!(
            c.exec_ok(&["cat", "/etc/ld.so.preload"]).unwrap(),
            "/usr/lib/libnsbx.so\n",
            "{name}"
        );
        assert_eq!(
            c.exec_ok(&["cat", "/opt/nsb/bin/tool"]).unwrap(),
            "#!/bin/sh\necho tool\n",
            "{name}"
        );
        open_in(&c, "/dev/nsbtest").unwrap();
        assert_eq!(
            c.exec_ok(&["cat", "/etc/hosts"]).unwrap(),
            "10.77.0.9 bound-by-the-spec\n",
            "{name}: the spec's bind under /etc"
        );
        if readonly {
            for dir in ["/", "/etc", "/usr/lib", "/opt", "/opt/nsb"] {
                let out = c
                    .exec(&["touch", &format!("{dir}/written-by-the-container")])
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(
                    !out.status.success() && err.contains("Read-only file system"),
                    "{dir} is writable: {out:?}"
                );
            }
        }
        assert_same_tree(&image, &snapshot(&rootfs), &format!("{name}: running"));
        delete(c);
        assert_same_tree(&image, &snapshot(&rootfs), &format!("{name}: deleted"));

        let plain = tb
            .container(&format!("plain-{name}"))
            .rootfs(rootfs.clone())
            .env(search)
            .edit_spec(move |spec| spec["root"]["readonly"] = readonly.into())
            .create()
            .unwrap();
        plain.start().unwrap();
        let out = plain.exec(&["loadlib", "libnsbx.so"]).unwrap();
        assert!(
            out.status.success() && out.stdout == b"42\n",
            "{name}: the image's own library: {out:?}"
        );
        assert_eq!(
            plain
                .exec_ok(&["sh", "-c", "test -e /etc/ld.so.preload || echo none"])
                .unwrap(),
            "none\n"
        );
        delete(plain);
        assert_same_tree(&image, &snapshot(&rootfs), &format!("{name}: the end"));
    }
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}

/// Defect 12: in a Debian 12 image `/lib` is a link to `usr/lib`, so two
/// spellings of one place would pass a check of the targets as written and
/// the mounts would silently stack; a directory target and a file target
/// inside it under the other spelling would hide the file. Both are
/// refused by where the targets land in the image, with one line naming
/// them, and nothing is left in the image.
#[test]
fn two_spellings_of_one_place_in_the_image_are_refused() {
    let Some(tb) = testbed() else { return };
    let a = tb.dir.join("libx-a.so");
    let b = tb.dir.join("libx-b.so");
    std::fs::write(&a, "a\n").unwrap();
    std::fs::write(&b, "b\n").unwrap();
    let dir = tb.dir.join("nsbdir");
    std::fs::create_dir(&dir).unwrap();
    let config = config(
        &tb,
        &format!(
            "[profiles.alias]\nmounts = [\
             {{ source = \"{a}\", target = \"/lib/x86_64-linux-gnu/libx.so\" }}, \
             {{ source = \"{b}\", target = \"/usr/lib/x86_64-linux-gnu/libx.so\" }}]\n\
             [profiles.hidden]\nmounts = [\
             {{ source = \"{dir}\", target = \"/lib/nsbdir\" }}, \
             {{ source = \"{a}\", target = \"/usr/lib/nsbdir/libx.so\" }}]\n",
            a = a.display(),
            b = b.display(),
            dir = dir.display()
        ),
    );
    let rootfs = tb.new_rootfs("debian").unwrap();
    std::fs::create_dir_all(rootfs.join("usr/lib/x86_64-linux-gnu")).unwrap();
    std::fs::write(rootfs.join("usr/lib/x86_64-linux-gnu/libx.so"), "image\n").unwrap();
    symlink_in(&rootfs, "/lib", "usr/lib").unwrap();
    let image = snapshot(&rootfs);
    let cases = [
        (
            "alias",
            "profile alias: validate: /lib/x86_64-linux-gnu/libx.so and \
             /usr/lib/x86_64-linux-gnu/libx.so are one place in the image \
             (/usr/lib/x86_64-linux-gnu/libx.so): the mounts would stack",
        ),
        (
            "hidden",
            "profile hidden: validate: /usr/lib/nsbdir/libx.so would be hidden \
             under the mount on /lib/nsbdir",
        ),
    ];
    for (profile, want) in cases {
        let line = hook_line(
            &hooked(&tb, &config, profile)
                .rootfs(rootfs.clone())
                .annotation("nsbypass.io/profile", profile)
                .create_err(),
        );
        assert!(
            line.starts_with(&format!(
                "nsbypass: hook prestart: container {profile}: {want}"
            )),
            "{profile}:\n got: {line}\nwant: {want}"
        );
        assert_same_tree(&image, &snapshot(&rootfs), profile);
        assert!(records(&tb).is_empty(), "{profile}: {:?}", records(&tb));
    }
}

/// An overlayfs over `lower` at `<dir>/merged`, as container engines make a
/// container's rootfs from its image (lower) and its own layer (upper);
/// unmounted when dropped.
struct LayeredRootfs {
    merged: PathBuf,
    upper: PathBuf,
}

impl LayeredRootfs {
    fn new(dir: &Path, lower: &Path) -> LayeredRootfs {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let ok = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &options])
            .arg(&merged)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount overlay {options}");
        LayeredRootfs { merged, upper }
    }
}

impl Drop for LayeredRootfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-R")
            .arg(&self.merged)
            .status();
    }
}

#[test]
fn on_a_containers_own_layer_missing_targets_are_made_there_not_overlaid() {
    // Engines give each container an overlayfs rootfs: its image below, its
    // own writable layer above. Mount points belong in that layer, as the
    // runtime's own do: the image stays untouched, and what the container
    // writes to /etc still reaches its layer (an overlay of /etc would take
    // those writes to a tmpfs). With root.readonly nothing is written.
    let Some(tb) = testbed() else { return };
    let shim = tb.build_c("nsbshim", SHIM, true).unwrap();
    let config = stack_config(&tb, Some(&shim));
    for readonly in [false, true] {
        let name = if readonly { "ro" } else { "rw" };
        let image = tb.new_rootfs(&format!("layered-image-{name}")).unwrap();
        let layers = tb.dir.join(format!("layers-{name}"));
        let rootfs = LayeredRootfs::new(&layers, &image);
        let before = snapshot(&image);
        let c = hooked(&tb, &config, &format!("layered-{name}"))
            .rootfs(rootfs.merged.clone())
            .annotation("nsbypass.io/profile", "stack")
            .edit_spec(move |spec| spec["root"]["readonly"] = readonly.into())
            .create()
            .unwrap();
        c.start().unwrap();
        let preload = c.exec_ok(&["cat", "/etc/ld.so.preload"]).unwrap();
        assert_eq!(preload, "/usr/lib/nsbypass/libnsbshim.so\n", "{name}");
        open_in(&c, "/dev/nsbtest").unwrap();
        // Overlays nsbypass made show as overlay mounts on directories of
        // the rootfs; the rootfs itself is the only overlay at its root.
        let mut overlays: Vec<String> =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid))
                .unwrap()
                .lines()
                .filter(|l| l.contains(" - overlay "))
                .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
                .collect();
        overlays.sort();
        let written = c.exec(&["sh", "-c", "echo mine > /etc/app.conf"]).unwrap();
        if readonly {
            assert_eq!(
                overlays,
                ["/", "/etc", "/usr/lib"],
                "{name}: /etc and /usr/lib get overlays"
            );
            assert!(!written.status.success(), "{name}: /etc is writable");
            assert!(!rootfs.upper.join("etc/ld.so.preload").exists());
        } else {
            assert_eq!(
                overlays,
                ["/"],
                "{name}: an overlay beyond the rootfs: {overlays:?}"
            );
            assert!(written.status.success(), "{name}");
            assert_eq!(
                std::fs::read_to_string(rootfs.upper.join("etc/app.conf")).unwrap(),
                "mine\n",
                "{name}: the container's write reached its own layer"
            );
            assert!(
                rootfs.upper.join("etc/ld.so.preload").exists(),
                "{name}: the mount point is in the container's layer"
            );
        }
        delete(c);
        assert_same_tree(&before, &snapshot(&image), &format!("{name}: the image"));
        assert!(records(&tb).is_empty(), "{:?}", records(&tb));
    }
}
