//! nsbypass's inputs: the admin's config file, the OCI state on a hook's
//! stdin, the bundle's `config.json`, and the requests they carry.
//!
//! Everything here is pure parsing and validation, so every bad input can be
//! rejected with one clear line before the hook touches the system.

pub mod bundle;
pub mod config;
pub mod names;
pub mod profile;
pub mod request;
pub mod state;

pub use bundle::Bundle;
pub use config::{
    Config, ConfigError, Ipv4Pool, LogConfig, LogFormat, LogLevel, MacvlanMode, Network,
};
pub use profile::{DeviceSpec, MountSpec, Profile};
pub use request::{Request, RequestError};
pub use state::{State, StateError};

#[cfg(test)]
mod examples {
    //! The files in examples/ are what users copy: they must stay valid.

    use std::path::Path;

    use super::*;

    #[test]
    fn example_config_and_runc_spec_agree() {
        let config = Config::parse(
            include_str!("../../examples/config.toml"),
            Path::new("examples/config.toml"),
        )
        .unwrap();
        let spec = include_bytes!("../../examples/runc-config.json");
        let bundle = Bundle::parse(Path::new("/bundle"), spec).unwrap();
        let request = Request::from_bundle(&bundle).unwrap();
        for profile in &request.profiles {
            assert!(config.profiles.contains_key(profile), "{profile}");
        }
        for network in &request.networks {
            let net = &config.networks[network];
            if let Some(std::net::IpAddr::V4(ip)) = request.addresses.get(network) {
                assert!(net.ipv4.as_ref().unwrap().assignable(*ip));
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
}
