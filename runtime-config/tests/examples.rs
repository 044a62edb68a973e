//! The files in examples/ are what users copy: each must stay exactly what
//! `nsbypass install` writes and agree with the example config.

use std::collections::BTreeMap;
use std::path::Path;

use runtime_config::install::{self, HookCommand};
use runtime_config::{Bundle, Config, Request};
use serde_yaml_ng::Value;

/// What the examples assume: the binary and config at their documented places.
fn cmd() -> HookCommand {
    HookCommand {
        binary: "/usr/local/bin/nsbypass".into(),
        config: "/etc/nsbypass/config.toml".into(),
    }
}

const CONFIG: &str = include_str!("../../examples/config.toml");
const HOOKS_DIR: &str = "/etc/containers/oci/hooks.d";

/// Every file `install crio` writes, by path on the node.
fn crio_install_files() -> BTreeMap<String, String> {
    let mut files: BTreeMap<String, String> = install::hooks_d_files(&cmd())
        .into_iter()
        .map(|(name, text)| (format!("{HOOKS_DIR}/{name}"), text))
        .collect();
    files.insert(
        "/etc/crio/crio.conf.d/50-nsbypass.conf".into(),
        install::crio_dropin(Path::new(HOOKS_DIR)),
    );
    files
}

#[test]
fn example_config_and_runc_spec_agree() {
    let config = Config::parse(CONFIG, Path::new("examples/config.toml")).unwrap();
    let spec = include_bytes!("../../examples/runc-config.json");
    let bundle = Bundle::parse(Path::new("/bundle"), spec).unwrap();
    let request = Request::from_bundle(&bundle, false).unwrap();
    for profile in &request.profiles {
        assert!(config.profiles.contains_key(profile), "{profile}");
    }
    for network in &request.networks {
        let net = &config.networks[network];
        for ip in request.addresses.get(network).into_iter().flatten() {
            assert!(net.pool_for(*ip).unwrap().assignable(*ip), "{ip}");
        }
    }
    let hooks: serde_json::Value = serde_json::from_slice(spec).unwrap();
    for (stage, want) in [("prestart", "prestart"), ("poststop", "poststop")] {
        let hook = &hooks["hooks"][stage][0];
        let args: Vec<&str> = hook["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(args[args.len() - 2..], ["hook", want]);
        assert!(
            hook["env"].as_array().is_some_and(|e| !e.is_empty()),
            "explicit env"
        );
    }
}

#[test]
fn podman_hooks_d_files_are_what_install_writes() {
    for (name, text) in install::hooks_d_files(&cmd()) {
        let example =
            std::fs::read_to_string(Path::new("../examples/podman/hooks.d").join(&name)).unwrap();
        assert_eq!(example, text, "examples/podman/hooks.d/{name}");
    }
}

#[test]
fn crio_dropin_is_what_install_writes() {
    assert_eq!(
        include_str!("../../examples/crio/50-nsbypass.conf"),
        install::crio_dropin(Path::new(HOOKS_DIR))
    );
}

#[test]
fn docker_daemon_json_is_what_install_writes_into_an_empty_file() {
    let entry = install::docker_runtime_entry(&cmd(), Path::new("/usr/sbin/runc"));
    assert_eq!(
        include_str!("../../examples/docker/daemon.json"),
        install::daemon_json_with("", &entry).unwrap().unwrap()
    );
}

#[test]
fn kubernetes_daemonset_carries_the_install_files_and_the_config() {
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(include_str!(
        "../../examples/kubernetes/nsbypass-daemonset.yaml"
    ))
    .map(|d| serde::Deserialize::deserialize(d).unwrap())
    .collect();
    let configmap = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let data = &configmap["data"];
    assert_eq!(data["config.toml"].as_str().unwrap(), CONFIG);
    let daemonset = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let script = daemonset["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap();
    for (path, text) in crio_install_files() {
        let key = path.rsplit('/').next().unwrap();
        assert_eq!(data[key].as_str().unwrap(), text, "ConfigMap key {key}");
        assert!(
            script.contains(&format!("/config/{key} /host{path}")),
            "the init container installs {path}"
        );
    }
    assert!(
        script.contains("/host/usr/local/bin/nsbypass")
            && script.contains("/host/etc/nsbypass/config.toml")
    );
}

#[test]
fn kubernetes_pod_asks_for_what_the_config_offers() {
    let pod: Value =
        serde_yaml_ng::from_str(include_str!("../../examples/kubernetes/pod.yaml")).unwrap();
    let annotations: BTreeMap<String, String> =
        serde_yaml_ng::from_value(pod["metadata"]["annotations"].clone()).unwrap();
    let request = Request::from_bundle(
        &Bundle {
            annotations,
            ..Bundle::default()
        },
        false,
    )
    .unwrap();
    let config = Config::parse(CONFIG, Path::new("examples/config.toml")).unwrap();
    assert!(!request.networks.is_empty() && !request.profiles.is_empty());
    // CRI-O sets the namespace annotation from the pod's own namespace.
    let namespace = pod["metadata"]["namespace"].as_str().unwrap().to_owned();
    let allowed = |list: &Option<Vec<String>>| list.as_ref().is_none_or(|l| l.contains(&namespace));
    for network in &request.networks {
        assert!(config.networks.contains_key(network), "{network}");
        assert!(
            allowed(&config.networks[network].allow_namespaces),
            "{network}"
        );
    }
    for profile in &request.profiles {
        assert!(config.profiles.contains_key(profile), "{profile}");
        assert!(
            allowed(&config.profiles[profile].allow_namespaces),
            "{profile}"
        );
    }
}

#[test]
fn openshift_machineconfig_writes_the_config() {
    let mc: Value = serde_yaml_ng::from_str(include_str!(
        "../../examples/openshift/50-nsbypass-machineconfig.yaml"
    ))
    .unwrap();
    let files = mc["spec"]["config"]["storage"]["files"]
        .as_sequence()
        .unwrap();
    let written: BTreeMap<String, String> = files
        .iter()
        .map(|f| {
            let source = f["contents"]["source"].as_str().unwrap();
            let encoded = source.strip_prefix("data:,").expect("a plain data URL");
            (
                f["path"].as_str().unwrap().to_owned(),
                percent_decode(encoded),
            )
        })
        .collect();
    let expected = BTreeMap::from([("/etc/nsbypass/config.toml".to_owned(), CONFIG.to_owned())]);
    assert_eq!(written, expected);
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Each example profile parses as a config of its own, names one profile
/// after its file, and keeps to a handful of lines (comments aside).
#[test]
fn example_profiles_parse() {
    let dir = Path::new("../examples/profiles");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let config = Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        assert_eq!(
            config.profiles.keys().collect::<Vec<_>>(),
            [&stem],
            "{}",
            path.display()
        );
        let lines = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
            .count();
        assert!(lines <= 10, "{}: {lines} lines", path.display());
        names.push(stem);
    }
    names.sort();
    assert_eq!(names, ["dpdk-af-xdp", "dpdk-vfio", "onload", "rdma"]);
}
