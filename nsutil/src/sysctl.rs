//! Per-interface sysctls. `/proc/sys/net` resolves against the calling
//! thread's network namespace, so call these inside [`crate::netns::Netns::run`].

use std::path::PathBuf;

use crate::{Error, Result};

/// Address families with per-interface `conf` directories.
#[derive(Debug, Clone, Copy)]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// Sets `net.<family>.conf.<ifname>.<key>` in the current namespace.
pub fn set_interface(family: Family, ifname: &str, key: &str, value: &str) -> Result<()> {
    let family = match family {
        Family::Ipv4 => "ipv4",
        Family::Ipv6 => "ipv6",
    };
    if ifname.contains('/') || key.contains('/') {
        return Err(Error::new(
            format!("sysctl net.{family}.conf.{ifname}.{key}"),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    let path: PathBuf = ["/proc/sys/net", family, "conf", ifname, key]
        .iter()
        .collect();
    std::fs::write(&path, value).map_err(|e| {
        Error::new(
            format!("sysctl net.{family}.conf.{ifname}.{key}={value}"),
            e,
        )
    })
}
