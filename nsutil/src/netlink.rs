//! Synchronous route-netlink calls over rtnetlink.
//!
//! rtnetlink is async; each call here drives it to completion on a
//! current-thread tokio runtime, so the hook stays one short-lived thread
//! (which [`crate::ns::Netns::run`] relies on) and pays for no thread pool.
//! A socket is bound to the network namespace that was current when it was
//! opened: open one inside `Netns::run` to work in a container's namespace.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::rc::Rc;

use futures_util::{StreamExt, TryStreamExt};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_ECHO, NLM_F_REQUEST,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};
use tokio::runtime::Runtime;

use crate::{Error, Result};

mod status;
pub use status::LinkStatus;

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
    /// `IFLA_LINK`: the lower device of a MACVLAN (or a VLAN, the peer of a
    /// veth). An index in the namespace [`Link::parent_netnsid`] names, or
    /// in this one when that is `None`.
    pub parent_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the id, *in this link's namespace*, of the
    /// namespace its parent lives in. A MACVLAN created from the host into a
    /// container reports here the container's id for the host.
    pub parent_netnsid: Option<i32>,
}

/// `MACVLAN_MODE_*` from linux/if_link.h, the values [`NewMacvlan::mode`] takes.
pub const MACVLAN_MODE_PRIVATE: u32 = 1;
pub const MACVLAN_MODE_VEPA: u32 = 2;
pub const MACVLAN_MODE_BRIDGE: u32 = 4;
pub const MACVLAN_MODE_PASSTHRU: u32 = 8;

/// A MACVLAN to create on a parent in this socket's namespace, placed
/// directly into another namespace (`IFLA_NET_NS_FD`), so it never exists
/// in the host namespace under a name that could clash; or, without
/// `netns`, left in this one (the host's own shim).
#[derive(Debug)]
pub struct NewMacvlan<'a> {
    pub name: &'a str,
    pub parent_index: u32,
    /// `IFLA_MACVLAN_MODE` as the kernel takes it: one of the
    /// `MACVLAN_MODE_*` values (private 1, vepa 2, bridge 4, passthru 8).
    pub mode: u32,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub netns: Option<BorrowedFd<'a>>,
    /// `IFLA_MACVLAN_BC_QUEUE_LEN` (Linux 5.11+): the broadcast queue length
    /// this child asks of its parent; the parent uses the largest any of
    /// its children asked for.
    pub bc_queue_len: Option<u32>,
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

    /// The link with index `index`, or `None` if there is none: one
    /// request, where [`Netlink::links`] dumps the whole namespace.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        let mut request = std::pin::pin!(self.handle.link().get().match_index(index).execute());
        match self.rt.block_on(request.try_next()) {
            Ok(message) => Ok(message.map(|m| link_from(&m))),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(netlink_error(format!("get link {index}"), e)),
        }
    }

    /// The link with index `index` in the namespace that has id `nsid` in
    /// this socket's namespace (`IFLA_TARGET_NETNSID`, Linux 4.20+): a look
    /// into a namespace without a path to it. `None` if it has no such link
    /// (or there is no such namespace).
    pub fn link_in(&self, nsid: i32, index: u32) -> Result<Option<Link>> {
        let mut request = self.handle.link().get().match_index(index);
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(nsid));
        let mut request = std::pin::pin!(request.execute());
        match self.rt.block_on(request.try_next()) {
            Ok(message) => Ok(message.map(|m| link_from(&m))),
            Err(e) if matches!(errno_of(&e), Some(libc::ENODEV) | Some(libc::EINVAL)) => Ok(None),
            Err(e) => Err(netlink_error(
                format!("get link {index} in namespace id {nsid}"),
                e,
            )),
        }
    }

    /// Every link in the namespace that has id `nsid` here.
    pub fn links_in(&self, nsid: i32) -> Result<Vec<Link>> {
        let mut request = self.handle.link().get();
        request
            .message_mut()
            .attributes
            .push(LinkAttribute::IfNetnsId(nsid));
        let messages: std::result::Result<Vec<LinkMessage>, _> =
            self.rt.block_on(request.execute().try_collect());
        match messages {
            Ok(messages) => Ok(messages.iter().map(link_from).collect()),
            Err(e) if errno_of(&e) == Some(libc::EINVAL) => Ok(Vec::new()),
            Err(e) => Err(netlink_error(
                format!("list links in namespace id {nsid}"),
                e,
            )),
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

    /// Creates a MACVLAN on a parent of this namespace inside `spec.netns`
    /// (or here, without one).
    pub fn add_macvlan(&self, spec: &NewMacvlan) -> Result<()> {
        let mode = MacVlanMode::from(spec.mode);
        let mut builder =
            LinkMacVlan::new(spec.name, spec.parent_index, mode).address(spec.mac.to_vec());
        if let Some(netns) = spec.netns {
            builder = builder.setns_by_fd(netns.as_raw_fd());
        }
        if let Some(mtu) = spec.mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(len) = spec.bc_queue_len {
            builder = builder.append_info_data(InfoMacVlan::BcQueueLen(len));
        }
        let request = self.handle.link().add(builder.build()).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("create macvlan {}", spec.name), e))
    }

    /// The id this socket's namespace has for the namespace `peer`,
    /// assigning one (the lowest free id) if it has none.
    ///
    /// An id stays in this namespace's table as long as `peer` lives: the
    /// kernel removes it only when it destroys `peer` (asynchronously, soon
    /// after the last reference goes; `peer`'s links are unregistered just
    /// after the id is removed), then gives the number to the next namespace
    /// that needs one, so an id alone does not say *which* namespace it is.
    /// Requires `CAP_NET_ADMIN` over this socket's namespace; `peer` may
    /// belong to any user namespace.
    ///
    /// Cost: one round trip (`RTM_NEWNSID`, whose echo carries the new id)
    /// when `peer` had no id; two when it had one already (`EEXIST`, then
    /// `RTM_GETNSID`), which is common: the kernel assigns ids on its own,
    /// e.g. when a veth is created across namespaces or a link is moved
    /// into another one. Kernels that do not echo `RTM_NEWNSID` cost two.
    pub fn assign_nsid(&self, peer: BorrowedFd) -> Result<i32> {
        let op = || {
            format!(
                "assign an nsid to network namespace fd {}",
                peer.as_raw_fd()
            )
        };
        let request = nsid_message(vec![
            NsidAttribute::Fd(peer.as_raw_fd() as u32),
            NsidAttribute::Id(-1),
        ]);
        match self.nsid_request(
            RouteNetlinkMessage::NewNsId(request),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_ECHO,
            op,
        ) {
            Ok(ids) => {
                if let Some(&id) = ids.iter().find(|&&id| id >= 0) {
                    return Ok(id);
                }
            }
            // Assigned already: by the kernel, by someone else, or by a
            // racing caller between their lookup and ours.
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
        // While `peer` is open its id cannot go away.
        self.nsid_of(peer)?.ok_or_else(|| {
            Error::new(
                op(),
                io::Error::other("the kernel assigned an id but reports none"),
            )
        })
    }

    /// The id this socket's namespace has for the namespace `peer`, `None`
    /// if it has none (`NETNSA_NSID_NOT_ASSIGNED`). One round trip; needs no
    /// capability.
    pub fn nsid_of(&self, peer: BorrowedFd) -> Result<Option<i32>> {
        let request = nsid_message(vec![NsidAttribute::Fd(peer.as_raw_fd() as u32)]);
        let ids =
            self.nsid_request(RouteNetlinkMessage::GetNsId(request), NLM_F_REQUEST, || {
                format!("get the nsid of network namespace fd {}", peer.as_raw_fd())
            })?;
        Ok(ids.into_iter().find(|&id| id >= 0))
    }

    /// Every id assigned in this socket's namespace (by us, by others, by
    /// the kernel), one per peer namespace not yet destroyed, in the
    /// kernel's order. One dump request.
    pub fn nsids(&self) -> Result<Vec<i32>> {
        let request = nsid_message(Vec::new());
        self.nsid_request(
            RouteNetlinkMessage::GetNsId(request),
            NLM_F_REQUEST | NLM_F_DUMP,
            || "list nsids".to_owned(),
        )
        .map(|ids| ids.into_iter().filter(|&id| id >= 0).collect())
    }

    /// Sends one nsid request and collects `NETNSA_NSID` from every
    /// `RTM_NEWNSID` in the answer (a reply, an echo, or dump parts).
    /// netlink-proto ends the stream at the ack, the error, `NLMSG_DONE`, or
    /// a single reply, whichever the flags make final.
    fn nsid_request(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
        op: impl Fn() -> String,
    ) -> Result<Vec<i32>> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = flags;
        let mut responses = self
            .handle
            .clone()
            .request(request)
            .map_err(|e| netlink_error(op(), e))?;
        self.rt.block_on(async {
            let mut ids = Vec::new();
            while let Some(response) = responses.next().await {
                match response.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(reply)) => {
                        ids.extend(reply.attributes.iter().filter_map(|a| match a {
                            NsidAttribute::Id(id) => Some(*id),
                            _ => None,
                        }));
                    }
                    NetlinkPayload::Error(e) if e.code.is_some() => {
                        return Err(netlink_error(op(), rtnetlink::Error::NetlinkError(e)));
                    }
                    _ => {}
                }
            }
            Ok(ids)
        })
    }

    /// The unicast MACs in link `index`'s address filter (what `bridge fdb
    /// show dev X` lists for a NIC). A MACVLAN child's MAC is there exactly
    /// while the child is up, in whatever namespace it lives: the one
    /// witness, from the host, that a dying namespace's link is really gone.
    pub fn unicast_macs(&self, index: u32) -> Result<Vec<[u8; 6]>> {
        use rtnetlink::packet_route::neighbour::NeighbourAttribute;
        use rtnetlink::packet_route::AddressFamily;
        let request = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let messages: Vec<_> = self
            .rt
            .block_on(request.try_collect())
            .map_err(|e| netlink_error(format!("list the address filter of link {index}"), e))?;
        Ok(messages
            .iter()
            .filter(|m| m.header.ifindex == index)
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(bytes) => {
                    <[u8; 6]>::try_from(bytes.as_slice()).ok()
                }
                _ => None,
            })
            .filter(|mac| mac[0] & 0x01 == 0)
            .collect())
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

    /// Adds an IPv6 address without duplicate address detection
    /// (`IFA_F_NODAD`): usable at once, never tentative. Only for an
    /// address whose uniqueness on the link is known otherwise.
    pub fn add_address_nodad(&self, index: u32, address: Ipv6Net) -> Result<()> {
        let mut request =
            self.handle
                .address()
                .add(index, IpAddr::V6(address.addr()), address.prefix_len());
        let message = request.message_mut();
        // The header's 8-bit field and IFA_FLAGS, as iproute2 sends them.
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.rt
            .block_on(request.execute())
            .map_err(|e| netlink_error(format!("add address {address} nodad"), e))
    }

    /// Adds `destination via gateway dev index`, of either family.
    pub fn add_route(&self, index: u32, destination: IpNet, gateway: IpAddr) -> Result<()> {
        let message = match (destination, gateway) {
            (IpNet::V4(d), IpAddr::V4(g)) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.addr(), d.prefix_len())
                .gateway(g)
                .output_interface(index)
                .build(),
            (IpNet::V6(d), IpAddr::V6(g)) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.addr(), d.prefix_len())
                .gateway(g)
                .output_interface(index)
                .build(),
            _ => {
                return Err(Error::new(
                    format!("add route {destination} via {gateway}"),
                    io::Error::new(io::ErrorKind::InvalidInput, "families differ"),
                ))
            }
        };
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

impl Netlink {
    /// Adds `destination dev index scope link`: reached directly on the
    /// link, no gateway (the host shim's routes to its network's range).
    pub fn add_link_route_v4(&self, index: u32, destination: Ipv4Net) -> Result<()> {
        use rtnetlink::packet_route::route::RouteScope;
        let message = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.addr(), destination.prefix_len())
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        let request = self.handle.route().add(message).execute();
        self.rt
            .block_on(request)
            .map_err(|e| netlink_error(format!("add route {destination} dev {index}"), e))
    }
}

fn nsid_message(attributes: Vec<NsidAttribute>) -> NsidMessage {
    let mut message = NsidMessage::default();
    message.attributes = attributes;
    message
}

fn link_from(message: &LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        mac: None,
        kind: None,
        parent_index: None,
        parent_netnsid: None,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::Address(bytes) => link.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Link(index) => link.parent_index = Some(*index),
            LinkAttribute::LinkNetNsId(id) => link.parent_netnsid = Some(*id),
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
    use std::time::{Duration, Instant};

    use nix::sched::{unshare, CloneFlags};
    use rtnetlink::LinkVeth;

    use super::*;
    use crate::ns::Netns;

    /// True, after printing why, when not root: these tests make namespaces.
    fn skip_unless_root() -> bool {
        let euid = nix::unistd::geteuid();
        if !euid.is_root() {
            eprintln!("skipping: needs root to create network namespaces (euid is {euid})");
        }
        !euid.is_root()
    }

    /// Runs `f` on a new thread inside a new network namespace of its own,
    /// so that nothing it does reaches the machine's namespace (network
    /// namespaces are per thread). The namespace goes away with the thread
    /// and whatever `f` opened, however `f` ends.
    fn in_throwaway_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// A new network namespace that only the returned handle keeps alive:
    /// the thread that made it has exited.
    fn new_peer() -> Netns {
        std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
            Netns::current().unwrap()
        })
        .join()
        .unwrap()
    }

    /// How long until `id` leaves `nl`'s nsid table; panics after 2 s.
    fn wait_gone(nl: &Netlink, id: i32) -> Duration {
        let start = Instant::now();
        while nl.nsids().unwrap().contains(&id) {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "nsid {id} still assigned 2 s after its namespace lost its last reference"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        start.elapsed()
    }

    #[test]
    fn an_nsid_lives_exactly_as_long_as_its_namespace() {
        if skip_unless_root() {
            return;
        }
        let (id, delay) = in_throwaway_netns(|| {
            let nl = Netlink::connect().unwrap();
            assert_eq!(
                nl.nsids().unwrap(),
                Vec::<i32>::new(),
                "a new table is empty"
            );

            let peer = new_peer();
            assert_eq!(nl.nsid_of(peer.fd()).unwrap(), None);
            let id = nl.assign_nsid(peer.fd()).unwrap();
            assert_eq!(id, 0, "the lowest free id");
            assert_eq!(nl.nsids().unwrap(), vec![id]);
            assert_eq!(nl.nsid_of(peer.fd()).unwrap(), Some(id));
            assert_eq!(nl.assign_nsid(peer.fd()).unwrap(), id, "assigned once");

            let other = new_peer();
            let other_id = nl.assign_nsid(other.fd()).unwrap();
            assert_eq!(other_id, 1);
            let mut both = nl.nsids().unwrap();
            both.sort();
            assert_eq!(both, vec![id, other_id]);

            // The last reference to `peer` goes: its id goes, asynchronously;
            // `other`'s stays.
            drop(peer);
            let delay = wait_gone(&nl, id);
            assert_eq!(nl.nsids().unwrap(), vec![other_id]);
            assert_eq!(nl.nsid_of(other.fd()).unwrap(), Some(other_id));

            // The number is free again: the next namespace gets it.
            let third = new_peer();
            assert_eq!(nl.nsid_of(third.fd()).unwrap(), None);
            assert_eq!(nl.assign_nsid(third.fd()).unwrap(), id, "ids are reused");
            drop(other);
            wait_gone(&nl, other_id);
            (id, delay)
        });
        eprintln!("nsid {id} left the table {delay:?} after its namespace's last fd closed");
    }

    #[test]
    fn a_macvlan_made_here_takes_its_broadcast_queue_and_a_link_route() {
        if skip_unless_root() {
            return;
        }
        in_throwaway_netns(|| {
            let nl = Netlink::connect().unwrap();
            let add_veth = nl
                .handle
                .link()
                .add(LinkVeth::new("nsbq0", "nsbq1").build());
            nl.rt.block_on(add_veth.execute()).unwrap();
            let parent = nl.link_by_name("nsbq0").unwrap().unwrap();
            nl.set_up(parent.index).unwrap();
            for (name, len) in [("mvq0", 2345), ("mvq1", 77)] {
                nl.add_macvlan(&NewMacvlan {
                    name,
                    parent_index: parent.index,
                    mode: MACVLAN_MODE_BRIDGE,
                    mac: [0x02, 0, 0, 0, 0x51, len as u8],
                    mtu: None,
                    netns: None,
                    bc_queue_len: Some(len),
                })
                .unwrap();
            }
            let shim = nl.link_by_name("mvq1").unwrap().expect("made here");
            assert_eq!(shim.kind.as_deref(), Some("macvlan"));
            nl.add_address(shim.index, "10.99.0.5/32".parse().unwrap())
                .unwrap();
            nl.set_up(shim.index).unwrap();
            nl.add_link_route_v4(shim.index, "10.99.0.0/28".parse().unwrap())
                .unwrap();
            let shown = |argv: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(argv)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            // Each child keeps what it asked for; the parent uses the largest.
            let detail = shown(&["-d", "link", "show", "mvq1"]);
            assert!(
                detail.contains("bcqueuelen 77 usedbcqueuelen 2345"),
                "{detail}"
            );
            let routes = shown(&["-4", "route", "show", "dev", "mvq1"]);
            assert!(
                routes.starts_with("10.99.0.0/28 ") && routes.contains(" scope link"),
                "{routes}"
            );
        });
    }

    #[test]
    fn a_macvlan_made_into_a_peer_is_found_by_index() {
        if skip_unless_root() {
            return;
        }
        in_throwaway_netns(|| {
            let host = Netns::current().unwrap();
            let nl = Netlink::connect().unwrap();
            let add_veth = nl
                .handle
                .link()
                .add(LinkVeth::new("nsbp0", "nsbp1").build());
            nl.rt.block_on(add_veth.execute()).unwrap();
            let parent = nl.link_by_name("nsbp0").unwrap().unwrap();
            assert_eq!(
                nl.link_by_index(parent.index).unwrap(),
                Some(parent.clone())
            );
            let veth_peer = nl.link_by_name("nsbp1").unwrap().unwrap();
            assert_eq!(parent.parent_index, Some(veth_peer.index));
            assert_eq!(parent.parent_netnsid, None, "both ends are here");

            let peer = new_peer();
            let mac = [0x02, 0, 0, 0, 0, 0x42];
            nl.add_macvlan(&NewMacvlan {
                name: "mv0",
                parent_index: parent.index,
                mode: MACVLAN_MODE_PRIVATE,
                mac,
                mtu: Some(1400),
                netns: Some(peer.fd()),
                bc_queue_len: None,
            })
            .unwrap();
            assert_eq!(
                nl.link_by_name("mv0").unwrap(),
                None,
                "made in the peer only"
            );
            // Observed, not relied on: creating the link gave the host no id
            // for the peer (the kernel gives the peer one for the host).
            eprintln!("host nsids after the create: {:?}", nl.nsids().unwrap());
            let id = nl.assign_nsid(peer.fd()).unwrap();

            let (link, host_id) = peer
                .run(|| {
                    let inner = Netlink::connect().unwrap();
                    let link = inner.link_by_name("mv0").unwrap().unwrap();
                    assert_eq!(inner.link_by_index(link.index).unwrap(), Some(link.clone()));
                    assert_eq!(inner.link_by_index(9999).unwrap(), None);
                    (link, inner.nsid_of(host.fd()).unwrap())
                })
                .unwrap();
            assert_eq!(link.kind.as_deref(), Some("macvlan"));
            assert_eq!((link.mac, link.mtu), (Some(mac), 1400));
            assert_eq!(link.parent_index, Some(parent.index));
            assert!(
                host_id.is_some(),
                "the kernel gave the peer an id for the host"
            );
            assert_eq!(link.parent_netnsid, host_id);

            // From the host, through the id, without a path.
            let seen = nl.link_in(id, link.index).unwrap().unwrap();
            assert_eq!(
                (seen.mac, seen.kind.as_deref()),
                (Some(mac), Some("macvlan"))
            );
            assert!(nl
                .links_in(id)
                .unwrap()
                .iter()
                .any(|l| l.index == link.index));
            assert_eq!(nl.link_in(id, 9999).unwrap(), None);

            // Up, the child's MAC is in the parent's address filter.
            assert!(!nl.unicast_macs(parent.index).unwrap().contains(&mac));
            nl.set_up(parent.index).unwrap();
            peer.run(|| Netlink::connect().unwrap().set_up(link.index).unwrap())
                .unwrap();
            assert!(nl.unicast_macs(parent.index).unwrap().contains(&mac));

            // A namespace that holds a MACVLAN still drops its id when it
            // dies, and its child's MAC leaves the parent after that.
            drop(peer);
            let started = Instant::now();
            wait_gone(&nl, id);
            let id_gone = started.elapsed();
            while nl.unicast_macs(parent.index).unwrap().contains(&mac) {
                assert!(started.elapsed() < Duration::from_secs(2), "the MAC stays");
                std::thread::sleep(Duration::from_millis(1));
            }
            eprintln!(
                "the dying namespace's id left after {id_gone:?}, its child's MAC after {:?}",
                started.elapsed()
            );
            assert_eq!(
                nl.link_by_index(parent.index).unwrap().map(|l| l.index),
                Some(parent.index)
            );
            assert_eq!(
                nl.link_in(id, link.index).unwrap(),
                None,
                "the id names nothing now"
            );
            assert!(nl.links_in(id).unwrap().is_empty());
        });
    }

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
