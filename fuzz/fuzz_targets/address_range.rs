//! Address ranges: one network's subnet, range, gateway (IPv4 and IPv6)
//! and routes, each a field of the input (NUL-separated), written into a
//! config as TOML strings so that the range parser is reached on nearly
//! every run.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nsbypass_fuzz::{check_config, fields, one_line};
use runtime_config::Config;

const KEYS: [&str; 6] = [
    "subnet", "range", "gateway", "subnet6", "range6", "gateway6",
];

fuzz_target!(|data: &[u8]| {
    let fields = fields(data);
    let mut text = String::from("[networks.n]\nparent = \"eth0\"\n");
    for (key, value) in KEYS.iter().zip(&fields) {
        if !value.is_empty() {
            text += &format!("{key} = {}\n", quote(value));
        }
    }
    // The seventh field, comma-separated: the routes.
    if let Some(routes) = fields.get(KEYS.len()) {
        let list: Vec<String> = routes.split(',').map(quote).collect();
        text += &format!("routes = [{}]\n", list.join(", "));
    }
    match Config::parse(&text, Path::new("/etc/nsbypass/config.toml")) {
        Ok(config) => check_config(&config),
        Err(e) => one_line(&e),
    }
});

/// A TOML basic string: JSON's escapes are all TOML's too.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}
