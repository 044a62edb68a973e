//! The kernel operations setup and teardown need, behind a trait so the
//! step-by-step logic and its rollback can be tested against a fake.
//!
//! A `Kernel` is bound to one container network namespace; "host" calls go
//! to the namespace the hook runs in, which holds the parent NICs.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use nsutil::netlink::{Link, MacvlanMode, Netlink, NewMacvlan};
use nsutil::ns::{self, Netns, NetnsId};
use nsutil::sysctl;

use crate::records::{Member, NetnsRecord};

pub type Result<T> = nsutil::Result<T>;

/// A MACVLAN to create in the container's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanSpec {
    pub name: String,
    pub parent_index: u32,
    pub mode: MacvlanMode,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
}

pub trait Kernel {
    /// Link `name` in the hook's own (host) namespace.
    fn host_link(&mut self, name: &str) -> Result<Option<Link>>;
    /// Link `name` in the container's namespace.
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    /// Every link in the container's namespace.
    fn links(&mut self) -> Result<Vec<Link>>;
    /// Creates a MACVLAN on a host parent directly inside the container's
    /// namespace and returns it as the container's namespace sees it.
    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> Result<Link>;
    fn rename(&mut self, index: u32, name: &str) -> Result<()>;
    fn delete(&mut self, index: u32) -> Result<()>;
    /// Turns on `arp_notify`, so the switch learns the MAC when the link comes up.
    fn arp_notify(&mut self, ifname: &str) -> Result<()>;
    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    fn add_route(&mut self, index: u32, destination: Ipv4Net, gateway: Ipv4Addr) -> Result<()>;
}

/// Finds recorded namespaces again, when there is no pid to go by.
pub trait Reach {
    /// Whether `path` leads to the namespace `id` right now.
    fn leads_to(&mut self, path: &Path, id: NetnsId) -> bool;
    /// A kernel for namespace `id` through `path`; `Ok(None)` if the path
    /// no longer leads there.
    fn enter(&mut self, path: &Path, id: NetnsId) -> Result<Option<Box<dyn Kernel>>>;
}

/// A kernel for `record`'s namespace if one of its recorded paths still
/// leads to that very namespace; `None` once it is gone. An error means the
/// namespace is there but cannot be worked in.
pub fn reach(reach: &mut dyn Reach, record: &NetnsRecord) -> Result<Option<Box<dyn Kernel>>> {
    for path in record.netns_paths() {
        if let Some(kernel) = reach.enter(path, record.id())? {
            return Ok(Some(kernel));
        }
    }
    Ok(None)
}

/// Whether `member` still runs in namespace `id`: its init's
/// `/proc/<pid>/ns/net` still leads there.
pub fn alive(reach: &mut dyn Reach, member: &Member, id: NetnsId) -> bool {
    reach.leads_to(&member.process, id)
}

/// The real thing: one netlink socket in the host namespace, one in the
/// container's.
pub struct RealKernel {
    netns: Netns,
    host: Netlink,
    inner: Netlink,
}

impl RealKernel {
    pub fn new(netns: Netns) -> Result<RealKernel> {
        let host = Netlink::connect()?;
        let inner = netns.run(|| host.connect_here())??;
        Ok(RealKernel { netns, host, inner })
    }
}

impl Kernel for RealKernel {
    fn host_link(&mut self, name: &str) -> Result<Option<Link>> {
        self.host.link_by_name(name)
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.inner.link_by_name(name)
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        self.inner.links()
    }

    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> Result<Link> {
        self.host.add_macvlan(&NewMacvlan {
            name: &spec.name,
            parent_index: spec.parent_index,
            mode: spec.mode,
            mac: spec.mac,
            mtu: spec.mtu,
            netns: self.netns.fd(),
        })?;
        // The trait promises that a failed create leaves nothing behind.
        let found = self.inner.link_by_name(&spec.name).and_then(|link| {
            link.ok_or_else(|| {
                nsutil::Error::new(
                    format!("find new link {} in the container's namespace", spec.name),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
        });
        if found.is_err() {
            let _ = self.inner.delete_by_name(&spec.name);
        }
        found
    }

    fn rename(&mut self, index: u32, name: &str) -> Result<()> {
        self.inner.rename(index, name)
    }

    fn delete(&mut self, index: u32) -> Result<()> {
        self.inner.delete(index)
    }

    fn arp_notify(&mut self, ifname: &str) -> Result<()> {
        self.netns
            .run(|| sysctl::set_ipv4_interface(ifname, "arp_notify", "1"))?
    }

    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()> {
        self.inner.add_address(index, address)
    }

    fn set_up(&mut self, index: u32) -> Result<()> {
        // A link with this MAC may still be up on the parent for a moment:
        // the kernel destroys a dead container's namespace asynchronously.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            match self.inner.set_up(index) {
                Err(e)
                    if e.errno() == Some(nix::errno::Errno::EADDRINUSE as i32)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn add_route(&mut self, index: u32, destination: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
        self.inner.add_route_v4(index, destination, gateway)
    }
}

/// Reaches namespaces through the paths recorded at setup, trusting a path
/// only while it leads to the recorded namespace identity.
pub struct RealReach;

impl Reach for RealReach {
    fn leads_to(&mut self, path: &Path, id: NetnsId) -> bool {
        ns::id_of(path).is_ok_and(|found| found == id)
    }

    fn enter(&mut self, path: &Path, id: NetnsId) -> Result<Option<Box<dyn Kernel>>> {
        match Netns::open_if(path, id)? {
            Some(netns) => Ok(Some(Box::new(RealKernel::new(netns)?))),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_reach_trusts_a_path_only_while_it_leads_to_the_recorded_namespace() {
        let own = Netns::current().unwrap().id();
        let path = Path::new("/proc/self/ns/net");
        let mut reach = RealReach;
        assert!(reach.leads_to(path, own));
        assert!(reach.enter(path, own).unwrap().is_some());
        let elsewhere = NetnsId {
            dev: own.dev,
            ino: own.ino ^ 1,
        };
        assert!(!reach.leads_to(path, elsewhere));
        assert!(reach.enter(path, elsewhere).unwrap().is_none());
        assert!(!reach.leads_to(Path::new("/proc/no-such-pid/ns/net"), own));
    }
}
