//! The admin's config TOML: `Config::parse`, every network's pools
//! checked for what the leasing code takes for granted.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nsbypass_fuzz::{check_config, one_line};
use runtime_config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/etc/nsbypass/config.toml")) {
        Ok(config) => check_config(&config),
        Err(e) => one_line(&e),
    }
});
