//! nsbypass's inputs: the admin's config file, the OCI state on a hook's
//! stdin, the bundle's `config.json`, and the requests they carry.
//!
//! Everything here is pure parsing and validation, so every bad input can be
//! rejected with one clear line before the hook touches the system.

pub mod bundle;
pub mod config;
pub mod install;
pub mod leases;
pub mod names;
pub mod profile;
pub mod request;
pub mod runtime_args;
pub mod state;

pub use bundle::Bundle;
pub use config::{
    Config, ConfigError, Ipv4Pool, Ipv6Pool, LogConfig, LogFormat, LogLevel, MacvlanMode, Network,
    Pool,
};
pub use profile::{DeviceSpec, MountSpec, Profile};
pub use request::{Request, RequestError};
pub use state::{State, StateError};
