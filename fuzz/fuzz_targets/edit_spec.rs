//! The docker runtime entry's spec edit (`install::edit_spec`) of any
//! `config.json`, with the hooks and a profile's carry as the unit tests
//! have them: it never panics, editing twice is editing once, and what it
//! wrote is what `check_in_spec` (the hook's check at prestart) finds.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nsbypass_fuzz::one_line;
use runtime_config::install::{self, CarriedDevice, CarriedLink, CarriedMount, Carry, HookCommand};
use runtime_config::profile::Rlimit;
use runtime_config::Bundle;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(mut spec) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let cmd = HookCommand {
        binary: "/usr/local/bin/nsbypass".into(),
        config: "/etc/nsbypass/config.toml".into(),
    };
    let carry = carry();
    // With and without the hooks, as runtime mode edits for networks or not.
    let hooks = data.len().is_multiple_of(2).then_some(&cmd);
    if let Err(e) = install::edit_spec(&mut spec, hooks, &carry) {
        return one_line(&e);
    }
    let mut twice = spec.clone();
    install::edit_spec(&mut twice, hooks, &carry).expect("a second edit of an edited spec");
    assert_eq!(twice, spec, "editing twice is not editing once");
    let text = install::pretty(&spec);
    if let Ok(bundle) = Bundle::parse(Path::new("/run/b"), text.as_bytes()) {
        if let Err(e) = install::check_in_spec(&carry, &bundle) {
            panic!("the edited spec fails the hook's check: {e}");
        }
    }
});

fn carry() -> Carry {
    Carry {
        profiles: vec!["onload".into()],
        devices: vec![CarriedDevice {
            source: "/dev/onload".into(),
            target: "/dev/onload".into(),
            block: false,
            major: 241,
            minor: 0,
            mode: 0o20666,
            uid: 0,
            gid: 0,
        }],
        mounts: vec![
            CarriedMount {
                source: "/usr/lib64/libonload.so.1".into(),
                target: "/usr/lib64/libonload.so".into(),
                directory: false,
                writable: false,
            },
            CarriedMount {
                source: "/opt/onload/bin".into(),
                target: "/usr/local/onload/bin".into(),
                directory: true,
                writable: false,
            },
        ],
        links: vec![CarriedLink {
            target: "/usr/lib64/libonload_ext.so.1".into(),
            source: "/usr/lib64/libonload_ext.so.1.1.0".into(),
        }],
        preload: vec!["/usr/lib64/libonload.so".into()],
        env: vec![("EF_POLL_USEC".into(), "100000".into())],
        capabilities: vec!["CAP_IPC_LOCK".into(), "CAP_NET_RAW".into()],
        rlimits: vec![Rlimit {
            name: "memlock",
            value: None,
        }],
        bpffs: false,
    }
}
