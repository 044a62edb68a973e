//! nsbypass installed the way users install it, driving real runtimes:
//! podman with the hooks.d files from `install podman`, podman with the CDI
//! spec from `cdi generate`, dockerd with the runtime entry from `install
//! docker`, and install/uninstall round trips.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use nsbypass_testbed::{mknod_char, Testbed};
use serde_json::json;

/// Runs the nsbypass binary with `args`; panics with its stderr on failure.
fn nsbypass_ok(args: &[&str]) -> String {
    let out = nsbypass_run(args);
    assert!(
        out.status.success(),
        "nsbypass {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nsbypass_run(args: &[&str]) -> Output {
    Command::new(nsbypass()).args(args).output().unwrap()
}

/// Config with network `fast` and a profile `name` carrying a test device
/// node (the numbers of /dev/fuse), a file, its preload and an env value.
fn profile_config(tb: &Testbed, name: &str) -> PathBuf {
    let device = tb.dir.join("dev-nsbtest");
    if !device.exists() {
        let rdev = std::os::unix::fs::MetadataExt::rdev(&std::fs::metadata("/dev/fuse").unwrap());
        mknod_char(
            &device,
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        )
        .unwrap();
    }
    let lib = tb
        .build_c("nsbempty", "int nsb_marker = 1;\n", true)
        .unwrap();
    config(
        tb,
        &format!(
            "[profiles.{name}]\n\
             devices = [{{ source = \"{device}\", target = \"/dev/nsbtest\" }}]\n\
             mounts = [{{ source = \"{lib}\", target = \"/usr/lib/nsbypass/libnsbempty.so\" }}]\n\
             preload = [\"/usr/lib/nsbypass/libnsbempty.so\"]\n\
             env = {{ EF_POLL_USEC = \"100000\" }}\n",
            device = device.display(),
            lib = lib.display()
        ),
    )
}

/// The environment of process `pid` (a container's init): what the spec
/// gave it. (`exec` would show the engine's idea of the env instead.)
fn environ(pid: u32) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    bytes
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn podman_with_the_installed_hooks_d_wires_annotated_containers_only() {
    let Some(tb) = testbed() else { return };
    let config = profile_config(&tb, "stack");
    let hooks = tb.dir.join("hooks.d");
    nsbypass_ok(&[
        "--config",
        &config.to_string_lossy(),
        "install",
        "podman",
        "--hooks-dir",
        &hooks.to_string_lossy(),
    ]);
    let podman = tb.podman();

    let wired = podman
        .run()
        .name("wired")
        .hooks_dir(&hooks)
        .annotation("nsbypass.io/network", "fast")
        .annotation("nsbypass.io/profile", "stack")
        // As an image could set it: the hook checks the spec instead.
        .env("NSBYPASS_PROFILE_IN_SPEC=stack")
        .start()
        .unwrap();
    let net1 = iface_of(wired.pid, "net1");
    assert_eq!(net1.kind, "macvlan");
    assert!(net1.ipv4[0].starts_with("10.77.0.1"), "{net1:?}");
    let opened = wired
        .exec(&["sh", "-c", "exec 3<>/dev/nsbtest && cat /etc/ld.so.preload"])
        .unwrap();
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    assert_eq!(stdout(&opened), "/usr/lib/nsbypass/libnsbempty.so\n");
    assert_eq!(leases(&tb).len(), 1);

    // Without an nsbypass annotation the hook is not even put in the spec.
    let plain = podman
        .run()
        .name("plain")
        .hooks_dir(&hooks)
        .start()
        .unwrap();
    let spec = plain.bundle_config().unwrap();
    assert!(
        !spec.to_string().contains(&*nsbypass().to_string_lossy()),
        "{}",
        spec["hooks"]
    );
    let names: Vec<String> = ifaces_of(plain.pid).into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["lo"]);
    plain.rm().unwrap();

    wired.rm().unwrap();
    eventually("podman rm frees the address", || leases(&tb).is_empty());
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}

/// A CDI spec file under /etc/cdi, removed when dropped.
struct CdiSpec(PathBuf);

impl Drop for CdiSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn podman_with_the_generated_cdi_spec_gets_the_device_mounts_and_env() {
    let Some(tb) = testbed() else { return };
    // Profile names are CDI device names: unique per testbed, since
    // /etc/cdi is shared by every test on the machine.
    let name = format!("stack-{}", tb.tag);
    let config = profile_config(&tb, &name);
    let spec = CdiSpec(PathBuf::from(format!("/etc/cdi/nsbypass-{}.yaml", tb.tag)));
    nsbypass_ok(&[
        "--config",
        &config.to_string_lossy(),
        "cdi",
        "generate",
        "--output",
        &spec.0.to_string_lossy(),
    ]);

    // No hooks.d here: the spec's own hooks wire the annotated network.
    let c = tb
        .podman()
        .run()
        .name("cdi")
        .device(&format!("nsbypass.io/profile={name}"))
        .annotation("nsbypass.io/network", "fast")
        .start()
        .unwrap();
    assert_eq!(iface_of(c.pid, "net1").kind, "macvlan");
    let out = c
        .exec(&["sh", "-c", "exec 3<>/dev/nsbtest && test -s /usr/lib/nsbypass/libnsbempty.so && ! touch /usr/lib/nsbypass/libnsbempty.so"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = environ(c.pid);
    for want in [
        "LD_PRELOAD=/usr/lib/nsbypass/libnsbempty.so",
        "EF_POLL_USEC=100000",
    ] {
        assert!(env.iter().any(|l| l == want), "{want} not in {env:?}");
    }
    c.rm().unwrap();
    eventually("podman rm frees the address", || leases(&tb).is_empty());
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}

#[test]
fn docker_with_the_installed_runtime_entry_wires_and_carries_the_profile() {
    let Some(tb) = testbed() else { return };
    let config = profile_config(&tb, "stack");
    let daemon_json = tb
        .write_daemon_json(
            "daemon.json",
            &json!({"log-level": "warn", "default-ulimits": {}}),
        )
        .unwrap();
    let original = std::fs::read(&daemon_json).unwrap();
    nsbypass_ok(&[
        "--config",
        &config.to_string_lossy(),
        "install",
        "docker",
        "--daemon-json",
        &daemon_json.to_string_lossy(),
        "--runtime-path",
        "/usr/sbin/runc",
    ]);
    let merged: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&daemon_json).unwrap()).unwrap();
    assert_eq!(merged["log-level"], "warn", "other keys are kept");
    assert!(merged["runtimes"]["nsbypass"]["path"].is_string());

    let dockerd = tb.dockerd(&daemon_json).unwrap();
    dockerd.import_rootfs(&tb.rootfs(), "nsbtest:1").unwrap();
    let id = dockerd
        .docker_ok(&[
            "run",
            "-d",
            "--runtime",
            "nsbypass",
            "--network",
            "none",
            "-e",
            "NSBYPASS_NETWORK=fast",
            "-e",
            "NSBYPASS_PROFILE=stack",
            // As an image could set it: replaced by what runtime mode carried.
            "-e",
            "NSBYPASS_PROFILE_IN_SPEC=bogus",
            "nsbtest:1",
            "sleep",
            "3600",
        ])
        .unwrap();
    let id = id.trim();
    let pid = dockerd.pid_of(id).unwrap();
    let net1 = iface_of(pid, "net1");
    assert!(net1.ipv4[0].starts_with("10.77.0.1"), "{net1:?}");
    let out = dockerd
        // The hook found the profile in the spec and carried nothing itself
        // (it would have bound /etc/ld.so.preload).
        .docker(&["exec", id, "sh", "-c", "exec 3<>/dev/nsbtest && test -s /usr/lib/nsbypass/libnsbempty.so && ! touch /usr/lib/nsbypass/libnsbempty.so && ! grep -qs nsbempty /etc/ld.so.preload"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = environ(pid);
    for want in [
        "LD_PRELOAD=/usr/lib/nsbypass/libnsbempty.so",
        "EF_POLL_USEC=100000",
        "NSBYPASS_PROFILE_IN_SPEC=stack",
    ] {
        assert!(env.iter().any(|l| l == want), "{want} not in {env:?}");
    }
    let markers = env
        .iter()
        .filter(|l| l.starts_with("NSBYPASS_PROFILE_IN_SPEC="))
        .count();
    assert_eq!(markers, 1, "{env:?}");
    assert_eq!(leases(&tb).len(), 1);

    dockerd.docker_ok(&["rm", "-f", id]).unwrap();
    eventually("docker rm frees the address", || leases(&tb).is_empty());
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));

    // A bad request fails the container with nsbypass's line in docker's error.
    let out = dockerd
        .docker(&[
            "run",
            "--rm",
            "--runtime",
            "nsbypass",
            "--network",
            "none",
            "-e",
            "NSBYPASS_PROFILE=nope",
            "nsbtest:1",
            "true",
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nsbypass: runtime: container ")
            && err.contains("profile nope: validate: no such profile"),
        "{err}"
    );
    drop(dockerd);

    nsbypass_ok(&[
        "uninstall",
        "docker",
        "--daemon-json",
        &daemon_json.to_string_lossy(),
    ]);
    assert_eq!(
        std::fs::read(&daemon_json).unwrap(),
        original,
        "daemon.json is as it was"
    );
}

/// Every entry below `dir`: files with their contents and mode,
/// directories, and symlinks with their targets.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let what = if meta.file_type().is_symlink() {
            format!("link -> {}", std::fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            entries.extend(snapshot(&path));
            "dir".to_owned()
        } else {
            let mode = meta.permissions().mode() & 0o7777;
            format!(
                "{mode:o} {}",
                String::from_utf8_lossy(&std::fs::read(&path).unwrap())
            )
        };
        entries.insert(path, what);
    }
    entries
}

#[test]
fn install_then_uninstall_leaves_the_files_as_they_were() {
    // Plain files in a temporary directory: no root needed.
    let dir = tempfile::TempDir::new().unwrap();
    let root = dir.path();
    let config = root.join("config.toml");
    std::fs::write(&config, "[networks.fast]\nparent = \"eth9\"\n").unwrap();
    let hooks = root.join("hooks.d");
    let dropins = root.join("crio.conf.d");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::create_dir_all(&dropins).unwrap();
    // Someone else's files stay untouched.
    std::fs::write(
        hooks.join("oci-nvidia-hook.json"),
        "{\"version\":\"1.0.0\"}\n",
    )
    .unwrap();
    std::fs::write(
        dropins.join("10-site.conf"),
        "[crio.runtime]\nlog_level = \"info\"\n",
    )
    .unwrap();
    let with_runtimes = root.join("daemon.json");
    std::fs::write(
        &with_runtimes,
        "{\n    \"runtimes\": {\"kata\": {\"path\": \"/usr/bin/kata\"}},\n    \"debug\": true\n}\n",
    )
    .unwrap();
    let absent = root.join("absent/daemon.json");
    std::fs::create_dir_all(absent.parent().unwrap()).unwrap();
    // A daemon.json that is a symlink (config management) and private.
    let real = root.join("etc-real/daemon.json");
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(&real, "{\"debug\": false}\n").unwrap();
    std::fs::set_permissions(&real, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let linked = root.join("daemon-link.json");
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    let before = snapshot(root);

    let c = config.to_string_lossy().into_owned();
    let (h, d) = (
        hooks.to_string_lossy().into_owned(),
        dropins.to_string_lossy().into_owned(),
    );
    let docker = |path: &Path| -> Vec<String> {
        let path = path.to_string_lossy();
        [
            "--config",
            &c,
            "install",
            "docker",
            "--daemon-json",
            &path,
            "--runtime-path",
            "/usr/sbin/runc",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let owned = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let installs: Vec<Vec<String>> = vec![
        owned(&["--config", &c, "install", "podman", "--hooks-dir", &h]),
        owned(&[
            "--config",
            &c,
            "install",
            "crio",
            "--hooks-dir",
            &h,
            "--dropin-dir",
            &d,
        ]),
        docker(&with_runtimes),
        docker(&absent),
        docker(&linked),
    ];
    let installs: Vec<Vec<&str>> = installs
        .iter()
        .map(|a| a.iter().map(String::as_str).collect())
        .collect();
    for args in &installs {
        nsbypass_ok(args);
    }
    let installed = snapshot(root);
    assert!(installed.contains_key(&hooks.join("nsbypass-prestart.json")));
    assert!(installed.contains_key(&dropins.join("50-nsbypass.conf")));
    assert!(installed.contains_key(&absent));
    let merged: serde_json::Value =
        serde_json::from_str(installed[&with_runtimes].split_once(' ').unwrap().1).unwrap();
    assert_eq!(merged["runtimes"]["kata"]["path"], "/usr/bin/kata");
    assert_eq!(merged["debug"], true);
    assert!(
        installed[&linked].starts_with("link -> "),
        "the symlink stays a symlink"
    );
    assert!(
        installed[&real].starts_with("600 ") && installed[&real].contains("nsbypass"),
        "{}",
        installed[&real]
    );

    // Installing again changes nothing.
    for args in &installs {
        let out = nsbypass_ok(args);
        assert!(out.contains("unchanged") && !out.contains("wrote"), "{out}");
    }
    assert_eq!(snapshot(root), installed);
    // A dry run writes nothing.
    nsbypass_ok(&[
        "uninstall",
        "crio",
        "--hooks-dir",
        &h,
        "--dropin-dir",
        &d,
        "--dry-run",
    ]);
    assert_eq!(snapshot(root), installed);

    for args in [
        vec!["uninstall", "podman", "--hooks-dir", &h],
        vec!["uninstall", "crio", "--hooks-dir", &h, "--dropin-dir", &d],
        vec![
            "uninstall",
            "docker",
            "--daemon-json",
            with_runtimes.to_str().unwrap(),
        ],
        vec![
            "uninstall",
            "docker",
            "--daemon-json",
            absent.to_str().unwrap(),
        ],
        vec![
            "uninstall",
            "docker",
            "--daemon-json",
            linked.to_str().unwrap(),
        ],
    ] {
        nsbypass_ok(&args);
    }
    assert_eq!(snapshot(root), before);

    // A broken daemon.json is one clear line, and left alone.
    std::fs::write(&with_runtimes, "{ not json").unwrap();
    let out = nsbypass_run(&[
        "--config",
        &c,
        "install",
        "docker",
        "--daemon-json",
        with_runtimes.to_str().unwrap(),
        "--runtime-path",
        "/usr/sbin/runc",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let line = err.lines().last().unwrap();
    assert!(
        line.starts_with("nsbypass: install docker: ")
            && line.contains("daemon.json is not valid JSON"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&with_runtimes).unwrap(),
        "{ not json"
    );
}
