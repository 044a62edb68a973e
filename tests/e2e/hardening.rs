//! Hardening end to end (issue 7): a state directory nobody else can steer
//! (modes, planted symlinks, a world-writable parent, a held lock), scratch
//! files that never outlive a run (a full disk, a killed hook), bounded
//! error lines, and profile steps that fail or are killed at every step
//! leaving nothing behind, in a container's mount namespace or in one that
//! outlives the failure.
//!
//! The fault-injection tests need the hook built with the `failpoints`
//! feature (`cargo test --features nsbypass/failpoints`, as scripts/test.sh
//! runs them).

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::direct::Sleeper;
use common::*;
use nsbypass_testbed::{mknod_char, Testbed};
use serde_json::json;

/// `config(tb, extra)`, but with `state_dir` at `state_dir`, in a file of
/// its own (tests that use several state directories at once).
fn config_for(tb: &Testbed, state_dir: &Path, extra: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let text = fs::read_to_string(config(tb, extra)).unwrap();
    let text = text.replacen(
        &format!("state_dir = \"{}\"", tb.state_dir().display()),
        &format!("state_dir = \"{}\"", state_dir.display()),
        1,
    );
    let path = tb.dir.join(format!(
        "config-{}.toml",
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    fs::write(&path, text).unwrap();
    path
}

/// A bundle that asks for network `fast` only.
fn network_bundle(tb: &Testbed) -> PathBuf {
    direct_bundle(
        tb,
        "network",
        &direct_spec(json!({ "nsbypass.io/network": "fast" }), None),
    )
}

fn prestart(tb: &Testbed, config: &Path, id: &str, pid: u32, bundle: &Path) -> HookRun {
    DirectHook::new(tb, config, "prestart").run(&setup_state(id, pid, bundle))
}

fn poststop(tb: &Testbed, config: &Path, id: &str, bundle: &Path) -> HookRun {
    DirectHook::new(tb, config, "poststop").run(&stopped_state(id, bundle))
}

/// One container wired and torn down, so that the state directory exists
/// (its lock, its subdirectories) as on a host that has run hooks before.
fn warm_up(tb: &Testbed, config: &Path, bundle: &Path) {
    let warm = Sleeper::new(tb, &["--net"]);
    let run = prestart(tb, config, "warm", warm.pid, bundle);
    assert!(run.ok(), "{run:?}");
    drop(warm);
    let run = poststop(tb, config, "warm", bundle);
    assert!(run.ok(), "{run:?}");
}

/// Fails the test, saying why, unless the hook under test has failpoints
/// (a build with `--features nsbypass/failpoints`): without them every
/// injected failure would silently be a success. `config` must be one of
/// `tb`'s, with network `fast`; leaves nothing behind.
fn require_failpoints(tb: &Testbed, config: &Path) {
    let bundle = network_bundle(tb);
    let s = Sleeper::new(tb, &["--net"]);
    let run = DirectHook::new(tb, config, "prestart")
        .env("NSBYPASS_FAILPOINT=lease=error")
        .run(&setup_state("failpoints", s.pid, &bundle));
    assert!(
        !run.ok() && run.stderr.contains("failpoint lease: injected failure"),
        "{} has no failpoints: build it with --features nsbypass/failpoints ({run:?})",
        nsbypass().display()
    );
}

fn mkdir_0700(path: &Path) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
}

/// Defect 4: every directory nsbypass makes is 0700 root and every file
/// 0600, even when the runtime runs the hook under umask 000.
#[test]
fn state_dir_is_private_whatever_the_umask() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let bundle = network_bundle(&tb);
    let s = Sleeper::new(&tb, &["--net"]);
    let run = DirectHook::new(&tb, &config, "prestart")
        .umask000()
        .run(&setup_state("umask", s.pid, &bundle));
    assert!(run.ok(), "{run:?}");
    assert_eq!(s.links(), ["net1"]);

    fn check(path: &Path, relative: &Path, seen: &mut Vec<String>) {
        let meta = fs::symlink_metadata(path).unwrap();
        let mode = meta.mode() & 0o7777;
        let name = relative.display().to_string();
        assert_eq!(meta.uid(), 0, "{name} is owned by uid {}", meta.uid());
        if meta.is_dir() {
            assert_eq!(mode, 0o700, "directory {name} has mode {mode:04o}");
            for entry in fs::read_dir(path).unwrap() {
                let entry = entry.unwrap();
                check(&entry.path(), &relative.join(entry.file_name()), seen);
            }
        } else {
            assert!(meta.is_file(), "{name} is neither a directory nor a file");
            assert_eq!(mode, 0o600, "file {name} has mode {mode:04o}");
        }
        seen.push(name);
    }
    let mut seen = Vec::new();
    check(&tb.state_dir(), Path::new("."), &mut seen);
    for made in [
        "./lock",
        "./containers",
        "./netns",
        "./leases",
        "./leases/fast",
        "./tmp",
    ] {
        assert!(seen.iter().any(|s| s == made), "{made} missing: {seen:?}");
    }

    // What an older nsbypass left (subdirectories made under the caller's
    // umask, a 0644 lock) is tightened by the next run.
    for dir in ["containers", "netns", "leases", "leases/fast", "tmp"] {
        fs::set_permissions(tb.state_dir().join(dir), fs::Permissions::from_mode(0o777)).unwrap();
    }
    fs::set_permissions(
        tb.state_dir().join("lock"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    drop(s);
    let run = poststop(&tb, &config, "umask", &bundle);
    assert!(run.ok(), "{run:?}");
    common::direct::sweep_drained(&tb, "after the poststop");
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());
    let mut seen = Vec::new();
    check(&tb.state_dir(), Path::new("."), &mut seen);
}

/// Defect 4: a symlink planted anywhere in the state directory (the
/// directory itself, the lock, each subdirectory, a record, a requested
/// address's lease) is refused with one line, never followed: nothing
/// appears, changes or goes where it points (at setup or at the poststop
/// after it).
#[test]
fn symlinks_planted_in_state_dir_are_refused_and_never_followed() {
    let Some(tb) = testbed() else { return };
    let network = network_bundle(&tb);
    let requested = direct_bundle(
        &tb,
        "requested",
        &direct_spec(
            json!({ "nsbypass.io/network": "fast", "nsbypass.io/ip": "fast=10.77.0.150" }),
            None,
        ),
    );
    // (label, the link below the state directory, whether it stands for
    // a directory, the bundle)
    let cases = [
        ("root", "", true, &network),
        ("lock", "lock", false, &network),
        ("containers", "containers", true, &network),
        ("netns", "netns", true, &network),
        ("leases", "leases", true, &network),
        ("leases-fast", "leases/fast", true, &network),
        ("tmp", "tmp", true, &network),
        ("pods", "pods", true, &network),
        ("container-record", "containers/{id}.json", false, &network),
        ("netns-record", "netns/{key}.json", false, &network),
        ("lease", "leases/fast/10.77.0.150", false, &requested),
    ];
    for (label, sub, dir, bundle) in cases {
        let state = tb.dir.join(format!("state-{label}"));
        let victim = tb.dir.join(format!("victim-{label}"));
        fs::create_dir(&victim).unwrap();
        // Names like scratch leftovers, for a sweep that would follow tmp.
        for file in ["canary", "ld.so.preload.4194000", "c1.json.4194001"] {
            fs::write(victim.join(file), "precious\n").unwrap();
        }
        let id = format!("planted-{label}");
        let s = Sleeper::new(&tb, &["--net"]);
        let sub = sub.replace("{id}", &id).replace("{key}", &s.netns_key());
        let link = match sub.as_str() {
            "" => state.clone(),
            sub => {
                let link = state.join(sub);
                mkdir_0700(link.parent().unwrap());
                link
            }
        };
        let points_to = match (label, dir) {
            ("lock", _) => victim.join("created-by-root"),
            (_, true) => victim.clone(),
            (_, false) => victim.join("canary"),
        };
        symlink(&points_to, &link).unwrap();
        let before = snapshot(&victim);
        let config = config_for(&tb, &state, "");

        let line = prestart(&tb, &config, &id, s.pid, bundle).one_line();
        assert!(
            line.contains(&format!("{}: it is a symlink", link.display())),
            "{label}: {line}"
        );
        assert!(s.links().is_empty(), "{label}: {:?}", s.links());
        assert_same_tree(
            &before,
            &snapshot(&victim),
            &format!("{label}: after setup"),
        );
        assert_eq!(fs::read_link(&link).unwrap(), points_to, "{label}");
        drop(s);
        // Poststop meets the same link.
        let _ = poststop(&tb, &config, &id, bundle);
        assert_same_tree(
            &before,
            &snapshot(&victim),
            &format!("{label}: after poststop"),
        );
    }
}

/// Defects 4 and 9: what sits at a temporary's name in state_dir/tmp is
/// removed as a link, never written or deleted through, both when it is
/// there before the run (the sweep under the lock) and when it is planted
/// at the very name a record is about to be written under, while the hook
/// holds the lock (it sleeps at the `lease` failpoint).
#[test]
fn links_at_temporary_names_are_removed_as_links() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let bundle = network_bundle(&tb);
    warm_up(&tb, &config, &bundle);

    require_failpoints(&tb, &config);
    let tmp = tb.state_dir().join("tmp");
    let victim = tb.dir.join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("a"), "precious a\n").unwrap();
    fs::write(victim.join("b"), "precious b\n").unwrap();
    let before = snapshot(&victim);
    symlink(victim.join("a"), tmp.join("ld.so.preload.4194000")).unwrap();
    symlink(&victim, tmp.join("c1.json.4194001")).unwrap();
    symlink("nowhere", tmp.join("marker")).unwrap();

    let s = Sleeper::new(&tb, &["--net"]);
    let hook = DirectHook::new(&tb, &config, "prestart")
        .env("NSBYPASS_FAILPOINT=lease=sleep-3000")
        .spawn(&setup_state("tmpname", s.pid, &bundle));
    // The marker goes with the sweep; the hook then sleeps before its
    // first record write, whose temporary is tmp/<key>.json.<pid>.
    let deadline = Instant::now() + Duration::from_millis(2500);
    while tmp.join("marker").symlink_metadata().is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let swept = tmp.join("marker").symlink_metadata().is_err();
    let name = format!("{}.json.{}", s.netns_key(), hook.pid());
    symlink(victim.join("b"), tmp.join(&name)).unwrap();
    let run = hook.wait(Duration::from_secs(30));
    assert!(swept, "the hook did not sweep state_dir/tmp under the lock");
    assert!(run.ok() && run.stderr.is_empty(), "{run:?}");
    assert_eq!(s.links(), ["net1"]);
    assert_same_tree(&before, &snapshot(&victim), "the links' targets");
    assert_eq!(files_under(&tmp), Vec::<String>::new());
    let record = tb
        .state_dir()
        .join("netns")
        .join(format!("{}.json", s.netns_key()));
    assert!(
        fs::symlink_metadata(&record).unwrap().is_file(),
        "{}",
        record.display()
    );

    drop(s);
    assert!(poststop(&tb, &config, "tmpname", &bundle).ok());
    common::direct::sweep_drained(&tb, "after the poststop");
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());
}

/// Defect 4: whoever can write a parent of state_dir could swap it.
#[test]
fn a_state_dir_below_a_directory_others_can_write_is_refused() {
    let Some(tb) = testbed() else { return };
    let open = tb.dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let state = open.join("state");
    let config = config_for(&tb, &state, "");
    let bundle = network_bundle(&tb);
    let s = Sleeper::new(&tb, &["--net"]);
    let line = prestart(&tb, &config, "open", s.pid, &bundle).one_line();
    assert!(
        line.contains(&format!("parent {} is writable by others", open.display())),
        "{line}"
    );
    assert!(!state.exists(), "the state_dir was made anyway");
    assert!(s.links().is_empty());
}

/// Defect 5: a process holding the lock (on a read-only fd, as any user
/// could when it was 0644) makes the hook give up after about 5 s, well
/// inside a runtime's hook timeout, with a line naming the lock and the
/// holder's pid; once the lock is free the hook works again.
#[test]
fn a_held_lock_gives_up_after_5_s_naming_the_lock_and_its_holder() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let bundle = network_bundle(&tb);
    warm_up(&tb, &config, &bundle);

    let lock = tb.state_dir().join("lock");
    let file = fs::File::open(&lock).unwrap();
    let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .expect("flock the state lock");
    let s = Sleeper::new(&tb, &["--net"]);
    let run = DirectHook::new(&tb, &config, "prestart")
        .timeout(Duration::from_secs(15))
        .run(&setup_state("waits", s.pid, &bundle));
    let line = run.one_line();
    let waited = run.elapsed.as_secs_f64();
    assert!((4.0..9.0).contains(&waited), "gave up after {waited:.1} s");
    assert!(
        line.contains(&format!("lock {}", lock.display()))
            && line.contains(&format!("pid {}", std::process::id())),
        "{line}"
    );
    assert!(s.links().is_empty());

    drop(held);
    let run = prestart(&tb, &config, "waits", s.pid, &bundle);
    assert!(run.ok(), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(3), "{run:?}");
    drop(s);
    assert!(poststop(&tb, &config, "waits", &bundle).ok());
    common::direct::sweep_drained(&tb, "after the poststop");
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());
}

/// A tmpfs mounted (in this process's mount namespace) on a directory of
/// the testbed; unmounted on drop, also when the test fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(at: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "nsbtest-full"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs -o {options} {}", at.display());
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills `state` with files in `state/filler` until at most `free_inodes`
/// inodes or `free_bytes` bytes are left.
fn fill(state: &Path, free_inodes: Option<u64>, free_bytes: Option<u64>) {
    use std::io::Write;
    let dir = state.join("filler");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir(&dir).unwrap();
    let stat = || nix::sys::statvfs::statvfs(state).unwrap();
    if let Some(free) = free_inodes {
        let mut i = 0;
        while stat().files_available() > free {
            fs::File::create(dir.join(format!("f{i}"))).unwrap();
            i += 1;
        }
    }
    if let Some(free) = free_bytes {
        let mut big = fs::File::create(dir.join("big")).unwrap();
        loop {
            let s = stat();
            if s.blocks_available() * s.fragment_size() <= free {
                break;
            }
            if big
                .write_all(&[b'x'; 4096])
                .and_then(|()| big.flush())
                .is_err()
            {
                break;
            }
        }
    }
}

/// What the state directory holds besides the lock and the filler.
fn state_files(state: &Path) -> Vec<String> {
    files_under(state)
        .into_iter()
        // The lock, and store.json (which lease store the records use),
        // are the directory's own, not anything a container left.
        .filter(|f| f != "lock" && f != "store.json" && !f.starts_with("filler/"))
        .collect()
}

/// Defect 9: with the state directory's filesystem (nearly) full, setup
/// either works or fails with one line, and leaves no file but what a
/// success records; state_dir/tmp stays empty. A hook killed at a record
/// write leaves nothing there that the next run does not remove.
#[test]
fn a_full_state_dir_fails_cleanly_and_scratch_files_never_stay() {
    let Some(tb) = testbed() else { return };
    let state = tb.dir.join("full");
    let _tmpfs = Tmpfs::new(&state, "size=64k,nr_inodes=64,mode=0700");
    let config = config_for(&tb, &state, "");
    require_failpoints(&tb, &config);
    let bundle = network_bundle(&tb);
    let tmp = state.join("tmp");
    warm_up(&tb, &config, &bundle);
    common::direct::sweep_drained_in(&tb, &state, "after the warm-up");
    assert_eq!(state_files(&state), Vec::<String>::new());

    let cases: [(&str, Option<u64>, Option<u64>); 8] = [
        ("0inodes", Some(0), None),
        ("1inode", Some(1), None),
        ("2inodes", Some(2), None),
        ("3inodes", Some(3), None),
        ("4inodes", Some(4), None),
        ("0bytes", None, Some(0)),
        ("4KiB", None, Some(4096)),
        ("8KiB", None, Some(8192)),
    ];
    let mut outcomes = Vec::new();
    for (label, inodes, bytes) in cases {
        fill(&state, inodes, bytes);
        let id = format!("full-{label}");
        let s = Sleeper::new(&tb, &["--net"]);
        let run = prestart(&tb, &config, &id, s.pid, &bundle);
        let left = state_files(&state);
        if run.ok() {
            assert!(run.stderr.is_empty(), "{label}: {run:?}");
            assert_eq!(s.links(), ["net1"], "{label}");
            assert_eq!(left.len(), 3, "{label}: {left:?}");
            assert!(
                left.contains(&format!("containers/{id}.json"))
                    && left.contains(&format!("netns/{}.json", s.netns_key()))
                    && left.iter().any(|f| f.starts_with("leases/fast/")),
                "{label}: {left:?}"
            );
            outcomes.push(format!("{label}: ok"));
        } else {
            let line = run.one_line();
            assert!(s.links().is_empty(), "{label}: {:?}", s.links());
            assert_eq!(left, Vec::<String>::new(), "{label}: {line}");
            outcomes.push(format!("{label}: {line}"));
        }
        assert_eq!(files_under(&tmp), Vec::<String>::new(), "{label}");
        drop(s);
        fs::remove_dir_all(state.join("filler")).unwrap();
        let run = poststop(&tb, &config, &id, &bundle);
        assert!(run.ok(), "{label}: poststop: {run:?}");
        common::direct::sweep_drained_in(&tb, &state, label);
        assert_eq!(state_files(&state), Vec::<String>::new(), "{label}");
    }
    eprintln!("disk full outcomes:\n{}", outcomes.join("\n"));

    for point in ["write-intent", "write-final"] {
        let killed = format!("killed-{point}");
        let s1 = Sleeper::new(&tb, &["--net"]);
        let run = DirectHook::new(&tb, &config, "prestart")
            .env(&format!("NSBYPASS_FAILPOINT={point}=kill"))
            .run(&setup_state(&killed, s1.pid, &bundle));
        assert_eq!(
            run.status.and_then(|s| s.signal()),
            Some(9),
            "{point}: {run:?}"
        );
        // What a run killed inside a record write would leave.
        fs::write(tmp.join("c1.json.4194000"), "{\"half\":").unwrap();
        let next = format!("after-{point}");
        let s2 = Sleeper::new(&tb, &["--net"]);
        let run = prestart(&tb, &config, &next, s2.pid, &bundle);
        assert!(run.ok(), "{point}: the next setup: {run:?}");
        assert_eq!(files_under(&tmp), Vec::<String>::new(), "{point}");
        drop((s1, s2));
        for id in [&killed, &next] {
            let run = poststop(&tb, &config, id, &bundle);
            assert!(run.ok(), "{point}: poststop {id}: {run:?}");
        }
        common::direct::sweep_drained_in(&tb, &state, point);
        assert_eq!(state_files(&state), Vec::<String>::new(), "{point}");
    }
}

/// Defect 10: a request value of 15 MiB fails with one line of at most
/// 4 KiB, whichever request it is in.
#[test]
fn a_huge_request_value_is_one_line_of_at_most_4_kib() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let huge = "a".repeat(15 << 20);
    for key in ["network", "profile", "ip"] {
        let value = match key {
            "ip" => format!("fast={huge}"),
            _ => huge.clone(),
        };
        let bundle = direct_bundle(
            &tb,
            &format!("huge-{key}"),
            &direct_spec(
                json!({ format!("nsbypass.io/{key}"): value }),
                Some(&tb.rootfs()),
            ),
        );
        let s = Sleeper::new(&tb, &["--net"]);
        let run = prestart(&tb, &config, &format!("huge-{key}"), s.pid, &bundle);
        let line = run.one_line();
        assert!(line.len() <= 4096, "{key}: a line of {} bytes", line.len());
        assert!(
            line.starts_with(&format!("nsbypass: hook prestart: container huge-{key}: ")),
            "{key}: {line}"
        );
        assert!(s.links().is_empty());
    }
    assert!(leases(&tb).is_empty() && records(&tb).is_empty());
}

/// A runtime may close its end of the hook's stderr before reading it: the
/// failure is still exit status 1 (2 for a usage error), not a crash.
#[test]
fn a_hook_whose_stderr_has_no_reader_still_exits_with_its_status() {
    // No namespaces needed: these fail before the hook touches anything.
    let dir = tempfile::TempDir::new().unwrap();
    let config = dir.path().join("config.toml");
    fs::write(
        &config,
        format!("state_dir = \"{}/state\"\n", dir.path().display()),
    )
    .unwrap();
    for (stage, want) in [("prestart", 1), ("prestrat", 2)] {
        let mut child = Command::new(nsbypass())
            .arg("--config")
            .arg(&config)
            .args(["hook", stage])
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stderr.take());
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(b"{\"ociVersion\": ");
        }
        let status = child.wait().unwrap();
        assert_eq!(
            (status.code(), status.signal()),
            (Some(want), None),
            "{stage}: {status:?}"
        );
    }
}

/// Every profile failpoint the hook has (`failpoint::ALL`, read from its
/// source so that a new one is tested too).
fn profile_failpoints() -> Vec<&'static str> {
    let source = include_str!("../../hook/src/failpoint.rs");
    let start = source
        .find("pub const ALL: &[&str] = &[")
        .expect("failpoint::ALL");
    let list = &source[start..];
    let list = &list[..list.find("];").unwrap()];
    let points: Vec<&str> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|p| p.starts_with("profile-"))
        .collect();
    assert!(points.len() >= 8, "{points:?}");
    points
}

/// The step an injected failure at `point` is reported as.
fn step_of(point: &str) -> &'static str {
    match point {
        "profile-preload" => "write ld.so.preload: ",
        "profile-grant" => "grant devices: ",
        "profile-bpffs" => "mount bpffs: ",
        "profile-record" => "write record: ",
        _ => "mount: ",
    }
}

/// A library to mount and preload, a directory of tools, a device node.
struct Stack {
    lib: PathBuf,
    tools: PathBuf,
    device: PathBuf,
}

impl Stack {
    fn new(tb: &Testbed) -> Stack {
        let lib = tb
            .build_c("nsbx", "int nsbx_answer(void) { return 7; }\n", true)
            .unwrap();
        let tools = tb.dir.join("tools");
        fs::create_dir(&tools).unwrap();
        fs::write(tools.join("tool"), "#!/bin/sh\necho tool\n").unwrap();
        let device = tb.dir.join("dev-nsbtest");
        // /dev/fuse's numbers: harmless to open, not in runc's default list.
        let rdev = fs::metadata("/dev/fuse").unwrap().rdev();
        mknod_char(
            &device,
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        )
        .unwrap();
        Stack { lib, tools, device }
    }

    /// Profile `stack` (the device, a file whose target and its directory's
    /// are missing in the image, a directory, the preload, a bpffs) and
    /// profile `files` (the same without the device and the bpffs).
    fn profiles(&self) -> String {
        let mounts = format!(
            "mounts = [{{ source = \"{}\", target = \"/usr/lib/libnsbx.so\" }}, \
             {{ source = \"{}\", target = \"/opt/nsb/bin\" }}]\n\
             preload = [\"/usr/lib/libnsbx.so\"]\n",
            self.lib.display(),
            self.tools.display()
        );
        format!(
            "[profiles.stack]\ndevices = [{{ source = \"{}\", target = \"/dev/nsbtest\" }}]\nbpffs = true\n{mounts}\
             [profiles.files]\n{mounts}",
            self.device.display()
        )
    }
}

/// Everything that must be as it was after a failed setup.
fn assert_nothing_left(
    tb: &Testbed,
    what: &str,
    rootfs: &Path,
    image: &std::collections::BTreeMap<PathBuf, String>,
    host_mounts: &[String],
) {
    common::direct::sweep_drained(tb, what);
    assert!(leases(tb).is_empty(), "{what}: {:?}", leases(tb));
    assert!(records(tb).is_empty(), "{what}: {:?}", records(tb));
    assert_eq!(
        files_under(&tb.state_dir().join("tmp")),
        Vec::<String>::new(),
        "{what}: scratch files"
    );
    assert_eq!(
        mounts_under("self", &tb.dir),
        host_mounts,
        "{what}: host mounts"
    );
    assert_same_tree(image, &snapshot(rootfs), &format!("{what}: the image"));
}

/// Fault injection, profile steps: with a network and a profile requested,
/// each profile failpoint makes create fail with one line naming the step,
/// and leaves no lease, record, scratch file or host mount, and the image
/// as it was; killed there, the same, and the next container with the same
/// request works.
#[test]
fn every_profile_step_that_fails_or_is_killed_leaves_nothing() {
    let Some(tb) = testbed() else { return };
    let stack = Stack::new(&tb);
    let config = config(&tb, &stack.profiles());
    require_failpoints(&tb, &config);
    let rootfs = tb.new_rootfs("faults").unwrap();
    let image = snapshot(&rootfs);
    let host_mounts = mounts_under("self", &tb.dir);
    for point in profile_failpoints() {
        // The profile-only path writes its own record; with a network the
        // profiles go into the network's records (write-pointer).
        let network = point != "profile-record";
        for action in ["error", "kill"] {
            let id = format!("{point}-{action}");
            let request = |id: &str| {
                let b = hooked(&tb, &config, id)
                    .rootfs(rootfs.clone())
                    .annotation("nsbypass.io/profile", "stack");
                match network {
                    true => b.annotation("nsbypass.io/network", "fast"),
                    false => b,
                }
            };
            let err = request(&id)
                .hook_env(&format!("NSBYPASS_FAILPOINT={point}={action}"))
                .create_err();
            if action == "error" {
                let line = hook_line(&err);
                assert!(
                    line.starts_with(&format!("nsbypass: hook prestart: container {id}: "))
                        && line.contains(step_of(point))
                        && line.contains(&format!("failpoint {point}: injected failure")),
                    "{id}: {line}"
                );
            } else {
                assert!(err.contains("signal: killed"), "{id}: {err}");
            }
            assert_nothing_left(&tb, &id, &rootfs, &image, &host_mounts);
            if action == "kill" {
                let next = format!("{point}-next");
                let c = request(&next).create().unwrap();
                c.start().unwrap();
                assert_eq!(
                    c.exec_ok(&["cat", "/etc/ld.so.preload"]).unwrap(),
                    "/usr/lib/libnsbx.so\n",
                    "{next}"
                );
                assert_eq!(
                    c.exec_ok(&["cat", "/opt/nsb/bin/tool"]).unwrap(),
                    "#!/bin/sh\necho tool\n"
                );
                c.exec_ok(&["sh", "-c", "exec 3<>/dev/nsbtest"]).unwrap();
                if network {
                    assert_eq!(iface(&c, "net1").ipv4.len(), 1, "{next}");
                }
                delete(c);
                assert_nothing_left(&tb, &next, &rootfs, &image, &host_mounts);
            }
        }
    }
}

/// The rollback of a failed profile step inside a mount namespace that
/// outlives the failure (a pod's, or a runtime's that retries): with each
/// profile failpoint, a prestart run by hand leaves the namespace's mount
/// table exactly as it was and the image as it was; without one it
/// succeeds and the mounts appear there, still not on disk.
#[test]
fn a_failed_profile_step_leaves_a_living_mount_namespace_as_it_was() {
    let Some(tb) = testbed() else { return };
    let stack = Stack::new(&tb);
    let config = config(&tb, &stack.profiles());
    require_failpoints(&tb, &config);
    let rootfs = tb.new_rootfs("mntns").unwrap();
    let image = snapshot(&rootfs);
    // It sees the rootfs at the same path as the host: a copy of its mounts.
    let s = Sleeper::new(&tb, &["--mount", "--net", "--propagation", "private"]);
    // Its whole mount table, but for copies of other tests' mounts: the
    // kernel detaches those in every namespace when their mount point is
    // removed (`ip netns del`, a testbed's directory going).
    let others = std::env::temp_dir().join("nsbypass-testbed-");
    let others = others.to_string_lossy().into_owned();
    let own = tb.dir.to_string_lossy().into_owned();
    let table = || -> Vec<String> {
        fs::read_to_string(format!("/proc/{}/mountinfo", s.pid))
            .unwrap()
            .lines()
            .filter(|l| {
                let point = l.split(' ').nth(4).unwrap_or_default();
                let theirs = point.starts_with(&others) && !Path::new(point).starts_with(&own);
                !(point.starts_with("/run/netns/") || theirs)
            })
            .map(str::to_owned)
            .collect()
    };
    let before = table();
    let bundle = direct_bundle(
        &tb,
        "mntns",
        &direct_spec(json!({ "nsbypass.io/profile": "files" }), Some(&rootfs)),
    );
    let state = setup_state("mntns", s.pid, &bundle);
    // No devices and no bpffs in `files`, so nothing reaches the grant or
    // the bpffs.
    for point in profile_failpoints()
        .into_iter()
        .filter(|p| *p != "profile-grant" && *p != "profile-bpffs")
    {
        let run = DirectHook::new(&tb, &config, "prestart")
            .env(&format!("NSBYPASS_FAILPOINT={point}=error"))
            .run(&state);
        let line = run.one_line();
        assert!(
            line.contains(&format!("failpoint {point}: injected failure")),
            "{point}: {line}"
        );
        assert_eq!(table(), before, "{point}: the namespace's mounts");
        assert_same_tree(&image, &snapshot(&rootfs), point);
        assert!(records(&tb).is_empty(), "{point}: {:?}", records(&tb));
        assert_eq!(
            files_under(&tb.state_dir().join("tmp")),
            Vec::<String>::new()
        );
    }

    let run = DirectHook::new(&tb, &config, "prestart").run(&state);
    assert!(run.ok(), "{run:?}");
    let mounts = mounts_under(&s.pid.to_string(), &rootfs);
    for target in ["usr/lib/libnsbx.so", "opt/nsb/bin", "etc/ld.so.preload"] {
        let want = rootfs.join(target).display().to_string();
        assert!(mounts.contains(&want), "{want} is not mounted: {mounts:?}");
    }
    let inside = |p: &str| {
        fs::read_to_string(format!("/proc/{}/root{}/{p}", s.pid, rootfs.display())).unwrap()
    };
    assert_eq!(inside("etc/ld.so.preload"), "/usr/lib/libnsbx.so\n");
    assert_eq!(inside("opt/nsb/bin/tool"), "#!/bin/sh\necho tool\n");
    assert_same_tree(&image, &snapshot(&rootfs), "after setup");
    drop(s);
    let run = poststop(&tb, &config, "mntns", &bundle);
    assert!(run.ok(), "{run:?}");
    assert!(records(&tb).is_empty(), "{:?}", records(&tb));
}
