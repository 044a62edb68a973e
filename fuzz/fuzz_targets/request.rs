//! Requests: a bundle's `config.json` (`Bundle::parse`) and what its
//! annotations and env ask for (`Request::from_bundle`). An input that
//! starts with `{` is the spec itself; any other is NUL-separated fields
//! put into a spec as annotation and env values, so that the request
//! parsers are reached on nearly every run.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nsbypass_fuzz::{fields, one_line};
use runtime_config::{Bundle, Request};
use serde_json::{json, Map, Value};

const ANNOTATIONS: [&str; 3] = [
    "nsbypass.io/network",
    "nsbypass.io/ip",
    "nsbypass.io/profile",
];
const ENV: [&str; 3] = ["NSBYPASS_NETWORK", "NSBYPASS_IP", "NSBYPASS_PROFILE"];

fuzz_target!(|data: &[u8]| {
    let spec = match data.first() {
        Some(b'{') => data.to_vec(),
        _ => spec_of(&fields(data)),
    };
    let bundle = match Bundle::parse(Path::new("/run/b"), &spec) {
        Ok(bundle) => bundle,
        Err(e) => return one_line(&e),
    };
    // Annotations alone (the default), and with the environment
    // (`[requests] from_env`): without env requests, the same.
    let annotations_only = Request::from_bundle(&bundle, false);
    let request = match Request::from_bundle(&bundle, true) {
        Ok(request) => request,
        Err(e) => return one_line(&e),
    };
    if !Request::in_env(&bundle) {
        assert_eq!(
            annotations_only.as_ref().ok(),
            Some(&request),
            "{request:?}"
        );
    }
    match annotations_only {
        // The namespace never comes from the environment; a network
        // annotation wins over the environment.
        Ok(only) => {
            assert_eq!(only.namespace, request.namespace);
            if bundle.annotations.contains_key("nsbypass.io/network") {
                assert_eq!(only.networks, request.networks);
            }
        }
        Err(e) => return one_line(&e),
    }
    for (i, name) in request.networks.iter().enumerate() {
        assert!(!request.networks[..i].contains(name), "{request:?}");
    }
    for (i, name) in request.profiles.iter().enumerate() {
        assert!(!request.profiles[..i].contains(name), "{request:?}");
    }
    for (network, addresses) in &request.addresses {
        assert!(request.networks.contains(network), "{request:?}");
        assert!(matches!(addresses.len(), 1 | 2), "{request:?}");
        if let [a, b] = addresses[..] {
            assert!(a.is_ipv4() && b.is_ipv6(), "{request:?}");
        }
    }
});

/// Fields 0-2 are the annotations' values, 3-5 the env's, any after that
/// extra env entries; an empty field sets nothing.
fn spec_of(fields: &[String]) -> Vec<u8> {
    let mut annotations = Map::new();
    for (key, value) in ANNOTATIONS.iter().zip(fields) {
        if !value.is_empty() {
            annotations.insert(key.to_string(), Value::String(value.clone()));
        }
    }
    let mut env: Vec<String> = ENV
        .iter()
        .zip(fields.iter().skip(3))
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.extend(fields.iter().skip(6).cloned());
    let spec = json!({
        "ociVersion": "1.0.2",
        "annotations": annotations,
        "process": {"env": env},
        "root": {"path": "rootfs"},
    });
    serde_json::to_vec(&spec).expect("JSON serialises")
}
