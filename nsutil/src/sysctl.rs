//! Per-interface sysctls. `/proc/sys/net` resolves against the calling
//! thread's network namespace, so call these inside [`crate::ns::Netns::run`].
//!
//! Only IPv6 ones: IPv4's per-interface settings go through netlink
//! ([`crate::netlink::Netlink::set_arp_notify`]), which needs no path
//! lookup. A `/proc/sys/net/*/conf/<ifname>` lookup walks a dentry hash
//! chain that every namespace's interface of that name shares (each
//! container's `net1`), so it costs more the more containers are alive.
//! inet6 takes no devconf through `IFLA_AF_SPEC` (only a token and the
//! address generation mode), so `ndisc_notify` and `disable_ipv6` stay here.

use std::path::PathBuf;

use crate::{Error, Result};

/// Sets `net.ipv6.conf.<ifname>.<key>` in the current namespace.
pub fn set_ipv6_interface(ifname: &str, key: &str, value: &str) -> Result<()> {
    set_interface("ipv6", ifname, key, value)
}

/// Reads `net.ipv6.conf.<ifname>.<key>` in the current namespace, trimmed.
pub fn ipv6_interface(ifname: &str, key: &str) -> Result<String> {
    let op = || format!("read sysctl net.ipv6.conf.{ifname}.{key}");
    let path = interface_path("ipv6", ifname, key).map_err(|e| Error::new(op(), e))?;
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_owned())
        .map_err(|e| Error::new(op(), e))
}

fn set_interface(family: &str, ifname: &str, key: &str, value: &str) -> Result<()> {
    let op = || format!("sysctl net.{family}.conf.{ifname}.{key}={value}");
    let path = interface_path(family, ifname, key).map_err(|e| Error::new(op(), e))?;
    std::fs::write(&path, value).map_err(|e| Error::new(op(), e))
}

fn interface_path(family: &str, ifname: &str, key: &str) -> std::io::Result<PathBuf> {
    if ifname.contains('/') || key.contains('/') {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    Ok(["/proc/sys/net", family, "conf", ifname, key]
        .iter()
        .collect())
}
