//! Issue 9: who may use what. The admin's policy (`allow_namespaces`,
//! `allow_static_ip`) and where requests may come from (`[requests]
//! from_env`), checked by the hook run as a runtime runs it (see
//! `common::direct`) and through real runc containers for profiles. Every
//! refusal is one line and leaves nothing: no link, no lease, no record.

mod common;

use std::path::{Path, PathBuf};

use common::direct::*;
use common::{direct_bundle, hooked, testbed};
use nsbypass_testbed::Testbed;
use serde_json::{json, Value};

/// `fast` kept to the `trading` and `risk` namespaces with no static
/// addresses, `open` for everyone, on the same parent (disjoint ranges);
/// profile `stack` (a host file bound in) kept to `trading`.
fn policy_config(tb: &Testbed, from_env: bool) -> PathBuf {
    let library = tb.dir.join("libstack.so");
    std::fs::write(&library, "the host's stack\n").unwrap();
    let extra = format!(
        r#"allow_namespaces = ["trading", "risk"]
allow_static_ip = false

[networks.open]
parent = "{parent}"
subnet = "{subnet}"
range = "{a}-{b}"

[profiles.stack]
mounts = [{{ source = "{lib}", target = "/usr/lib/libstack.so" }}]
allow_namespaces = ["trading"]

[requests]
from_env = {from_env}
"#,
        parent = tb.parent,
        subnet = tb.subnet,
        a = tb.addr(200),
        b = tb.addr(220),
        lib = library.display(),
    );
    common::config(tb, &extra)
}

/// A bundle whose spec has `annotations` and the process environment `env`.
fn bundle_of(tb: &Testbed, name: &str, annotations: Value, env: &[&str]) -> PathBuf {
    let mut all_env = vec![HOOK_PATH_ENV.to_owned()];
    all_env.extend(env.iter().map(|s| s.to_string()));
    let spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sleep", "600"], "env": all_env, "cwd": "/"},
        "annotations": annotations,
    });
    direct_bundle(tb, name, &spec)
}

const HOOK_PATH_ENV: &str = "PATH=/usr/bin:/bin";

/// Runs the prestart of `id` (its init a sleeper of its own) and returns
/// what it ended with, the sleeper's links, and the sleeper.
fn prestart(tb: &Testbed, config: &Path, id: &str, bundle: &Path) -> (HookResult, Sleeper) {
    let init = Sleeper::own_netns(tb);
    let result = HookRun::prestart(tb, config, id, init.pid, bundle).run();
    (result, init)
}

fn assert_nothing_made(tb: &Testbed, init: &Sleeper, when: &str) {
    assert!(init.links().is_empty(), "{when}: {:?}", init.links());
    assert_state_empty(tb, when);
}

#[test]
fn each_rule_refuses_what_it_should_and_admits_what_it_should() {
    let Some(tb) = testbed() else { return };
    let config = policy_config(&tb, false);
    let ns = |n: &str| ("io.kubernetes.pod.namespace", n.to_owned());
    // (container id, annotations besides the network, the refusal if any)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("trading-ok", vec![ns("trading")], None),
        ("risk-ok", vec![ns("risk")], None),
        (
            "dev-refused",
            vec![ns("dev")],
            Some("network fast: policy: namespace \"dev\" may not use it (networks.fast.allow_namespaces = [\"trading\", \"risk\"] in "),
        ),
        (
            "none-refused",
            vec![],
            Some("network fast: policy: the container has no Kubernetes namespace (annotation io.kubernetes.pod.namespace)"),
        ),
        (
            "static-refused",
            vec![ns("trading"), ("nsbypass.io/ip", format!("fast={}", tb.addr(150)))],
            Some("network fast: policy: a static address (nsbypass.io/ip) is not allowed on this network (networks.fast.allow_static_ip = false in "),
        ),
    ];
    for (id, annotations, refusal) in cases {
        let mut notes = serde_json::Map::new();
        notes.insert("nsbypass.io/network".into(), "fast".into());
        for (k, v) in &annotations {
            notes.insert((*k).into(), v.clone().into());
        }
        let bundle = bundle_of(&tb, id, Value::Object(notes), &[]);
        let (result, init) = prestart(&tb, &config, id, &bundle);
        match refusal {
            None => {
                result.assert_ok();
                assert_eq!(init.links(), ["net1"], "{id}");
                drop(init);
                HookRun::poststop(&tb, &config, id, &bundle)
                    .run()
                    .assert_ok();
                assert_state_empty(&tb, id);
            }
            Some(want) => {
                let line = result.error_line();
                assert!(
                    line.starts_with(&format!("nsbypass: hook prestart: container {id}: {want}")),
                    "{id}: {line}"
                );
                assert_nothing_made(&tb, &init, id);
            }
        }
    }
    // Static addresses stay allowed where the admin did not say otherwise.
    let bundle = bundle_of(
        &tb,
        "open-static",
        json!({"nsbypass.io/network": "open", "nsbypass.io/ip": format!("open={}", tb.addr(210))}),
        &[],
    );
    let (result, init) = prestart(&tb, &config, "open-static", &bundle);
    result.assert_ok();
    assert_eq!(only_addr(&init.netns()), tb.addr(210));
    drop(init);
    HookRun::poststop(&tb, &config, "open-static", &bundle)
        .run()
        .assert_ok();
    assert_state_empty(&tb, "open-static");
}

#[test]
fn the_environment_counts_only_with_from_env() {
    let Some(tb) = testbed() else { return };
    // Default: an image's ENV asks for nothing (the redteam's
    // repro_image_env_network.sh: a network and its address from ENV).
    let config = policy_config(&tb, false);
    let env = [
        "NSBYPASS_NETWORK=open",
        &format!("NSBYPASS_IP=open={}", tb.addr(211)),
    ];
    let bundle = bundle_of(&tb, "image-env", json!({}), &env);
    let (result, init) = prestart(&tb, &config, "image-env", &bundle);
    result.assert_ok();
    assert_nothing_made(&tb, &init, "an image's ENV without from_env");
    // Nor does it add to what the annotations ask.
    let bundle = bundle_of(
        &tb,
        "image-env-too",
        json!({"nsbypass.io/network": "open"}),
        &["NSBYPASS_IP=open=".to_owned() + &tb.addr(212).to_string()]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let (result, init) = prestart(&tb, &config, "image-env-too", &bundle);
    result.assert_ok();
    assert_ne!(
        only_addr(&init.netns()),
        tb.addr(212),
        "the ENV pin is ignored"
    );
    drop(init);
    HookRun::poststop(&tb, &config, "image-env-too", &bundle)
        .run()
        .assert_ok();
    assert_state_empty(&tb, "image-env-too");

    // With from_env, the environment is a request like the annotations,
    // under the same policy; the namespace comes from the annotation only.
    let config = policy_config(&tb, true);
    let bundle = bundle_of(&tb, "env-open", json!({}), &env);
    let (result, init) = prestart(&tb, &config, "env-open", &bundle);
    result.assert_ok();
    assert_eq!(only_addr(&init.netns()), tb.addr(211));
    drop(init);
    HookRun::poststop(&tb, &config, "env-open", &bundle)
        .run()
        .assert_ok();
    let bundle = bundle_of(
        &tb,
        "env-dev",
        json!({"io.kubernetes.pod.namespace": "dev"}),
        &["NSBYPASS_NETWORK=fast"],
    );
    let (result, init) = prestart(&tb, &config, "env-dev", &bundle);
    let line = result.error_line();
    assert!(
        line.contains("container env-dev: network fast: policy: namespace \"dev\" may not use it"),
        "{line}"
    );
    assert_nothing_made(&tb, &init, "env request outside policy");
    // The static-address and profile rules hold for env requests too.
    for (id, env, want) in [
        (
            "env-static",
            vec![
                "NSBYPASS_NETWORK=fast".to_owned(),
                format!("NSBYPASS_IP=fast={}", tb.addr(150)),
            ],
            "network fast: policy: a static address (nsbypass.io/ip) is not allowed",
        ),
        (
            "env-profile",
            vec!["NSBYPASS_PROFILE=stack".to_owned()],
            "profile stack: policy: namespace \"risk\" may not use it",
        ),
    ] {
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let bundle = bundle_of(
            &tb,
            id,
            json!({"io.kubernetes.pod.namespace": "risk"}),
            &env,
        );
        let (result, init) = prestart(&tb, &config, id, &bundle);
        let line = result.error_line();
        assert!(line.contains(&format!("container {id}: {want}")), "{line}");
        assert_nothing_made(&tb, &init, id);
    }
    let bundle = bundle_of(
        &tb,
        "env-trading",
        json!({"io.kubernetes.pod.namespace": "trading"}),
        &["NSBYPASS_NETWORK=fast"],
    );
    let (result, init) = prestart(&tb, &config, "env-trading", &bundle);
    result.assert_ok();
    assert_eq!(init.links(), ["net1"]);
    drop(init);
    HookRun::poststop(&tb, &config, "env-trading", &bundle)
        .run()
        .assert_ok();
    assert_state_empty(&tb, "env-trading");
}

#[test]
fn a_profile_kept_to_a_namespace_is_carried_only_into_its_pods() {
    let Some(tb) = testbed() else { return };
    let config = policy_config(&tb, false);
    let refused = hooked(&tb, &config, "dev")
        .annotation("nsbypass.io/profile", "stack")
        .annotation("io.kubernetes.pod.namespace", "dev")
        .create_err();
    // runc quotes the hook's line.
    assert!(
        refused.contains("container dev: profile stack: policy: namespace ")
            && refused.contains("may not use it (profiles.stack.allow_namespaces = ["),
        "{refused}"
    );
    assert!(!tb.rootfs().join("usr/lib/libstack.so").exists());
    assert_state_empty(&tb, "refused profile");

    let c = hooked(&tb, &config, "trader")
        .annotation("nsbypass.io/profile", "stack")
        .annotation("io.kubernetes.pod.namespace", "trading")
        .create()
        .unwrap();
    c.start().unwrap();
    assert_eq!(
        c.exec_ok(&["cat", "/usr/lib/libstack.so"]).unwrap(),
        "the host's stack\n"
    );
    common::delete(c);
}

/// Loaded into a process, leaves a file named after that process's pid.
const TATTLE: &str = r#"
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void tattle(void) {
    const char *dir = getenv("TATTLE_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/loaded-by-%d", dir ? dir : "/tmp", getpid());
    int fd = open(path, O_CREAT | O_WRONLY, 0600);
    if (fd >= 0) close(fd);
}
"#;

#[test]
fn no_variable_of_the_container_reaches_the_hook() {
    let Some(tb) = testbed() else { return };
    let config = policy_config(&tb, false);
    let tattle = tb.build_c("tattle", TATTLE, true).unwrap();
    let marks = tb.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    // The control: a hook that is given the library does load it. A
    // static hook (the release build, .cargo/config.toml) loads no library
    // whatever its environment: then the control is a dynamic program, and
    // the other variables below still show the environment stays out.
    if is_dynamic(common::nsbypass()) {
        let control = hooked(&tb, &config, "control")
            .annotation("nsbypass.io/network", "open")
            .hook_env(&format!("LD_PRELOAD={}", tattle.display()))
            .hook_env(&format!("TATTLE_DIR={}", marks.display()))
            .create()
            .unwrap();
        common::delete(control);
    } else {
        let status = std::process::Command::new("/bin/true")
            .env("LD_PRELOAD", &tattle)
            .env("TATTLE_DIR", &marks)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let seen = std::fs::read_dir(&marks).unwrap().count();
    assert!(seen >= 1, "the tattle library works");
    std::fs::remove_dir_all(&marks).unwrap();
    std::fs::create_dir_all(&marks).unwrap();
    // Everything a hostile image could put in its environment to steer a
    // root process that inherited it.
    let c = hooked(&tb, &config, "hostile")
        .annotation("nsbypass.io/network", "open")
        .env(&format!("LD_PRELOAD={}", tattle.display()))
        .env(&format!("TATTLE_DIR={}", marks.display()))
        .env("NSBYPASS_CONFIG=/nonexistent/config.toml")
        .env("NSBYPASS_FAILPOINT=lease=error")
        .env("PATH=/nonexistent:/bin")
        .env("RUST_LOG=trace")
        .create()
        .unwrap();
    assert_eq!(common::iface(&c, "net1").kind, "macvlan");
    let left: Vec<_> = std::fs::read_dir(&marks).unwrap().flatten().collect();
    assert!(
        left.is_empty(),
        "the hook loaded the image's LD_PRELOAD: {left:?}"
    );
    common::delete(c);
    assert_state_empty(&tb, "hostile env");
}

/// Whether the ELF executable at `path` has an interpreter (the dynamic
/// loader), i.e. is dynamically linked and would honour `LD_PRELOAD`.
fn is_dynamic(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(path).unwrap();
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}
