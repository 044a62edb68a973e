//! Per-interface sysctls. `/proc/sys/net` resolves against the calling
//! thread's network namespace, so call these inside [`crate::ns::Netns::run`].

use std::path::PathBuf;

use crate::{Error, Result};

/// Sets `net.ipv4.conf.<ifname>.<key>` in the current namespace.
pub fn set_ipv4_interface(ifname: &str, key: &str, value: &str) -> Result<()> {
    let op = || format!("sysctl net.ipv4.conf.{ifname}.{key}={value}");
    if ifname.contains('/') || key.contains('/') {
        return Err(Error::new(
            op(),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    let path: PathBuf = ["/proc/sys/net/ipv4/conf", ifname, key].iter().collect();
    std::fs::write(&path, value).map_err(|e| Error::new(op(), e))
}
