//! `nsbypass doctor` end to end, run inside a testbed's host namespace:
//! all ok on a good host; one FAIL line naming the problem (and exit 1) for
//! a missing parent, an MTU above the parent's, an unsafe state_dir, a
//! missing profile source, a broken config, and a parent the kernel made
//! promiscuous; and nothing left behind by the probe MACVLAN.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nsbypass_testbed::Testbed;

/// What doctor printed and how it exited.
#[derive(Debug)]
struct Doctor {
    code: Option<i32>,
    lines: Vec<String>,
    stderr: String,
}

impl Doctor {
    fn failures(&self) -> Vec<&String> {
        self.lines
            .iter()
            .filter(|l| l.starts_with("FAIL "))
            .collect()
    }

    /// The one line about `subject`; panics listing them all if absent.
    fn line(&self, subject: &str) -> &str {
        let prefix_ok = format!("ok   {subject}: ");
        let prefix_fail = format!("FAIL {subject}: ");
        self.lines
            .iter()
            .find(|l| l.starts_with(&prefix_ok) || l.starts_with(&prefix_fail))
            .unwrap_or_else(|| panic!("no line about {subject:?}: {self:#?}"))
    }
}

/// What of the host namespace doctor must leave as it found it.
#[derive(Debug, PartialEq)]
struct HostView {
    links: Vec<String>,
    nsids: String,
    parent_promiscuity: u64,
    /// Named namespaces other than testbeds' (of any process: other tests
    /// make and drop theirs meanwhile). Doctor's scratch namespace has no
    /// name; this catches one that got one.
    named: Vec<String>,
}

fn host_view(tb: &Testbed) -> HostView {
    let links = tb
        .in_host_ok(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .map(|l| l.split(':').nth(1).unwrap_or_default().trim().to_owned())
        .collect();
    let nsids = tb.in_host_ok(&["ip", "netns", "list-id"]).unwrap();
    let json = tb
        .in_host_ok(&["ip", "-d", "-j", "link", "show", &tb.parent])
        .unwrap();
    let parent: serde_json::Value = serde_json::from_str(&json).unwrap();
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let named = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| !n.starts_with("nb"))
        .map(str::to_owned)
        .collect();
    HostView {
        links,
        nsids,
        parent_promiscuity: parent[0]["promiscuity"].as_u64().unwrap(),
        named,
    }
}

/// Runs `nsbypass --config CONFIG doctor` in the host namespace and checks
/// that it left the namespace as it was (an nsid the kernel may have given
/// the scratch namespace goes asynchronously, so that is waited for).
fn doctor(tb: &Testbed, config: &Path) -> Doctor {
    let before = host_view(tb);
    let binary = nsbypass().to_str().unwrap();
    let config = config.to_str().unwrap();
    let out = tb.in_host(&[binary, "--config", config, "doctor"]).unwrap();
    let run = Doctor {
        code: out.status.code(),
        lines: String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let after = host_view(tb);
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "doctor left the host namespace changed: before {before:#?}, after {after:#?}, {run:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for line in &run.lines {
        assert!(
            line.starts_with("ok   ") || (line.starts_with("FAIL ") && line.contains("; fix: ")),
            "not a check line: {line:?} in {run:#?}"
        );
    }
    run
}

/// A profile `onload` whose sources all exist: /dev/null, and a library
/// the test writes into the testbed directory.
fn good_profile(tb: &Testbed) -> String {
    let lib = tb.dir.join("libonload.so");
    fs::write(&lib, "").unwrap();
    format!(
        r#"
[profiles.onload]
devices = ["/dev/null"]
mounts = [{{ source = "{lib}", target = "/opt/onload/libonload.so" }}]
requires = ["/dev/null"]
"#,
        lib = lib.display()
    )
}

/// The testbed's config with `from` replaced by `to`, in a file of its own.
fn edited(tb: &Testbed, extra: &str, from: &str, to: &str, file: &str) -> std::path::PathBuf {
    let text = fs::read_to_string(config(tb, extra)).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    let path = tb.dir.join(file);
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

#[test]
fn a_good_host_is_all_ok() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, &good_profile(&tb));
    let run = doctor(&tb, &config);
    assert_eq!(run.failures(), Vec::<&String>::new(), "{run:#?}");
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.stderr.is_empty(), "{run:#?}");
    let parent = &tb.parent;
    let state_subject = format!("state_dir {}", tb.state_dir().display());
    for subject in [
        format!("config {}", config.display()),
        "capabilities".to_owned(),
        "cgroup".to_owned(),
        format!("state_dir {}", tb.state_dir().display()),
        format!("network fast: parent {parent}"),
        "network fast: mtu".to_owned(),
        "network fast: macvlan".to_owned(),
        format!("parent {parent}: unicast filter"),
        "profile onload: requires /dev/null".to_owned(),
        "profile onload: source /dev/null".to_owned(),
        format!(
            "profile onload: source {}",
            tb.dir.join("libonload.so").display()
        ),
        "profile onload: plan".to_owned(),
    ] {
        run.line(&subject);
    }
    assert!(
        run.line(&state_subject).contains("does not exist yet"),
        "{run:#?}"
    );
    assert!(
        run.line("network fast: macvlan")
            .contains("a bridge MACVLAN was made on"),
        "{run:#?}"
    );
    assert!(
        !tb.state_dir().exists(),
        "doctor does not create the state directory"
    );

    // Once the hook has made it, the real directory is checked.
    fs::create_dir(tb.state_dir()).unwrap();
    fs::set_permissions(tb.state_dir(), fs::Permissions::from_mode(0o700)).unwrap();
    let run = doctor(&tb, &config);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(run.line(&state_subject).contains("mode 0700"), "{run:#?}");
}

#[test]
fn each_problem_is_one_fail_line_and_exit_1() {
    let Some(tb) = testbed() else { return };
    let profile = good_profile(&tb);
    let parent = tb.parent.clone();
    let state = tb.state_dir().display().to_string();

    // A missing parent: no MTU or probe lines for it.
    let missing = edited(
        &tb,
        &profile,
        &format!("parent = \"{parent}\""),
        "parent = \"nsbnoparent0\"",
        "missing-parent.toml",
    );
    let run = doctor(&tb, &missing);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert!(
        run.failures()[0].starts_with(
            "FAIL network fast: parent nsbnoparent0: does not exist in this network namespace; fix: "
        ),
        "{run:#?}"
    );

    // An MTU above the parent's (a veth's is 1500).
    let mtu = config(&tb, &format!("mtu = 9000\n{profile}"));
    let run = doctor(&tb, &mtu);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert!(
        run.failures()[0].starts_with(&format!(
            "FAIL network fast: mtu: 9000 is above parent {parent}'s 1500; fix: lower mtu of network fast to at most 1500"
        )),
        "{run:#?}"
    );
    assert!(
        run.line("network fast: macvlan").starts_with("ok   "),
        "the probe still runs, at the parent's MTU: {run:#?}"
    );

    // An unsafe state_dir: under a directory anyone can write, not sticky.
    let open = tb.dir.join("open");
    fs::create_dir(&open).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let open_state = open.join("state");
    let unsafe_parent = edited(
        &tb,
        &profile,
        &format!("state_dir = \"{state}\""),
        &format!("state_dir = \"{}\"", open_state.display()),
        "open-parent.toml",
    );
    let run = doctor(&tb, &unsafe_parent);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert_eq!(
        run.failures()[0],
        &format!(
            "FAIL state_dir {}: parent {} is writable by others (mode 0777); fix: use a directory only root can write",
            open_state.display(),
            open.display()
        ),
        "{run:#?}"
    );

    // An unsafe state_dir: a symlink to a good directory.
    let real = tb.dir.join("state-real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    let link = tb.dir.join("state-link");
    symlink(&real, &link).unwrap();
    let linked = edited(
        &tb,
        &profile,
        &format!("state_dir = \"{state}\""),
        &format!("state_dir = \"{}\"", link.display()),
        "linked-state.toml",
    );
    let run = doctor(&tb, &linked);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert!(
        run.failures()[0].starts_with(&format!(
            "FAIL state_dir {}: it is a symlink (to {});",
            link.display(),
            real.display()
        )),
        "{run:#?}"
    );

    // A missing profile source: named, and the plan is not run on top.
    let gone = tb.dir.join("libgone.so");
    let missing_source = config(
        &tb,
        &format!(
            "{profile}\n[profiles.gone]\nmounts = [\"{}\"]\n",
            gone.display()
        ),
    );
    let run = doctor(&tb, &missing_source);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert_eq!(
        run.failures()[0],
        &format!(
            "FAIL profile gone: source {}: No such file or directory on this host; fix: install the stack that provides it, or correct the path",
            gone.display()
        ),
        "{run:#?}"
    );
    assert!(
        !run.lines.iter().any(|l| l.contains("profile gone: plan")),
        "{run:#?}"
    );
    run.line("profile onload: plan");

    // A config that does not parse: said so, and what needs no config is
    // still checked.
    let broken = tb.dir.join("broken.toml");
    fs::write(&broken, "state_dir = \n").unwrap();
    let run = doctor(&tb, &broken);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert!(
        run.failures()[0].starts_with(&format!("FAIL config {}: line 1:", broken.display())),
        "{run:#?}"
    );
    run.line("capabilities");
    run.line("cgroup");
    assert_eq!(run.lines.len(), 3, "{run:#?}");
}

/// A veth has no unicast filter: the kernel makes it promiscuous for the
/// first MACVLAN child that comes up, and shows that only in the
/// promiscuity count. Doctor says so; once the child is gone, all is ok.
#[test]
fn a_parent_made_promiscuous_by_its_children_fails() {
    let Some(tb) = testbed() else { return };
    let config = config(&tb, "");
    let child = format!("{}c", tb.tag);
    let parent = tb.parent.clone();
    tb.in_host_ok(&[
        "ip", "link", "add", &child, "link", &parent, "type", "macvlan", "mode", "bridge",
    ])
    .unwrap();
    tb.in_host_ok(&["ip", "link", "set", &child, "up"]).unwrap();
    let shown = tb.in_host_ok(&["ip", "link", "show", &parent]).unwrap();
    assert!(
        !shown.contains("PROMISC"),
        "ip link does not show it: {shown}"
    );

    let run = doctor(&tb, &config);
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_eq!(run.failures().len(), 1, "{run:#?}");
    assert!(
        run.failures()[0].starts_with(&format!(
            "FAIL parent {parent}: unicast filter: the kernel made it promiscuous (promiscuity 1, not shown by ip link) with 1 unicast address(es)"
        )),
        "{run:#?}"
    );

    tb.in_host_ok(&["ip", "link", "del", &child]).unwrap();
    let run = doctor(&tb, &config);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert!(
        run.line(&format!("parent {parent}: unicast filter"))
            .contains("not promiscuous, 0 unicast address(es)"),
        "{run:#?}"
    );
}
