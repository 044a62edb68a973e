//! Synchronous route-netlink calls over rtnetlink.
//!
//! rtnetlink is async; each call here drives it to completion on a
//! current-thread tokio runtime, so the hook stays one short-lived thread
//! (which [`crate::ns::Netns::run`] relies on) and pays for no thread pool.
//! A socket is bound to the network namespace that was current when it was
//! opened: open one inside `Netns::run` to work in a container's namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

use futures_util::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::{Error, Result};

/// A link as nsbypass cares about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND` ("macvlan", "veth", ...), `None` for hardware NICs.
    pub kind: Option<String>,
}

/// MACVLAN modes, as `ip link` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MacvlanMode {
    Bridge,
    Private,
    Vepa,
    Passthru,
}

/// A MACVLAN to create on a parent in this socket's namespace, placed
/// directly into another namespace (`IFLA_NET_NS_FD`), so it never exists
/// in the host namespace under a name that could clash.
#[derive(Debug)]
pub struct NewMacvlan<'a> {
    pub name: &'a str,
    pub parent_index: u32,
    pub mode: MacvlanMode,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub netns: BorrowedFd<'a>,
}

/// A route-netlink socket in one network namespace.
pub struct Netlink {
    rt: Rc<Runtime>,
    handle: Handle,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn connect() -> Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::new("start netlink runtime", e))?;
        Netlink::connect_on(Rc::new(rt))
    }

    /// Opens another socket, in the calling thread's *current* namespace,
    /// sharing this one's runtime. Call it inside `Netns::run`.
    pub fn connect_here(&self) -> Result<Netlink> {
        Netlink::connect_on(self.rt.clone())
    }

    fn connect_on(rt: Rc<Runtime>) -> Result<Netlink> {
        let _entered = rt.enter();
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::new("open netlink socket", e))?;
        rt.spawn(connection);
        Ok(Netlink { rt, handle })
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut request = std::pin::pin!(self.handle.link().get().match_name(name).execute());
        match self.rt.block_on(request.try_next()) {
            Ok(message) => Ok(message.map(|m| link_from(&m))),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(format!("get link {name}"), e)),
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        let request = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> = self
            .rt
            .block_on(request.try_collect())
            .map_err(|e| netlink_error("list links", e))?;
        Ok(messages.iter().map(link_from).collect())
    }

    /// Creates a MACVLAN on a parent of this namespace inside `spec.netns`.
    pub fn add_macvlan(&self, spec: &NewMacvlan) -> Result<()> {
        let mode = match spec.mode {
            MacvlanMode::Bridge => MacVlanMode::Bridge,
            MacvlanMode::Private => MacVlanMode::Private,
            MacvlanMode::Vepa => MacVlanMode::Vepa,
            MacvlanMode::Passthru => MacVlanMode::Passthrough,
        };
        let mut builder = LinkMacVlan::new(spec.name, spec.parent_index, mode)
            .address(spec.mac.to_vec())
            .setns_by_fd(spec.netns.as_raw_fd());
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(mtu);
        }
        let request = self.handle.link().add(builder.build()).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("create macvlan {}", spec.name), e))
    }

    pub fn rename(&self, index: u32, name: &str) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).name(name).build();
        let request = self.handle.link().change(message).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("rename link {index} to {name}"), e))
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        let message = LinkUnspec::new_with_index(index).up().build();
        let request = self.handle.link().change(message).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("set link {index} up"), e))
    }

    pub fn delete(&self, index: u32) -> Result<()> {
        let request = self.handle.link().del(index).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("delete link {index}"), e))
    }

    /// Deletes by name, for when the index was never learned.
    pub fn delete_by_name(&self, name: &str) -> Result<()> {
        let message = LinkUnspec::new_with_name(name).build();
        let request = self.handle.link().del_with_message(message).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("delete link {name}"), e))
    }

    pub fn add_address(&self, index: u32, address: IpNet) -> Result<()> {
        let request = self
            .handle
            .address()
            .add(index, address.addr(), address.prefix_len())
            .execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("add address {address}"), e))
    }

    /// Adds `destination via gateway dev index`.
    pub fn add_route_v4(&self, index: u32, destination: Ipv4Net, gateway: Ipv4Addr) -> Result<()> {
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.addr(), destination.prefix_len())
            .gateway(gateway)
            .output_interface(index)
            .build();
        let request = self.handle.route().add(message).execute();
        self.rt.block_on(request).map_err(|e| {
            let what = if destination.prefix_len() == 0 {
                "default".to_owned()
            } else {
                destination.to_string()
            };
            netlink_error(format!("add route {what} via {gateway}"), e)
        })
    }
}

fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: None,
        kind: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind_name(kind));
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::MacVlan => "macvlan".into(),
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

fn netlink_error(op: impl Into<String>, e: rtnetlink::Error) -> Error {
    let cause = match errno_of(&e) {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => io::Error::other(e.to_string()),
    };
    Error::new(op, cause)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_text() {
        assert_eq!(
            format_mac(&[0x02, 0xab, 0x00, 0x10, 0xff, 0x7e]),
            "02:ab:00:10:ff:7e"
        );
    }

    #[test]
    fn loopback_is_visible_and_missing_links_are_none() {
        let nl = Netlink::connect().unwrap();
        let lo = nl
            .link_by_name("lo")
            .unwrap()
            .expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        assert!(nl.links().unwrap().iter().any(|l| l.name == "lo"));
        assert_eq!(nl.link_by_name("nsb-no-such-if").unwrap(), None);
    }
}
