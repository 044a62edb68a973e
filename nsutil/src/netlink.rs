//! Route-netlink calls, synchronous, on one blocking socket per namespace.
//!
//! Each call is one request and its answer ([`socket`]), built and parsed
//! with netlink-packet-route's types; nothing runs in the background and no
//! thread is started, which [`crate::ns::Netns::run`] relies on. A socket is
//! bound to the network namespace that was current for the calling thread
//! when it was opened: open one inside `Netns::run` to work in a container's
//! namespace.
//!
//! Errors keep the kernel's errno ([`crate::Error::errno`]): `ENODEV` for a
//! link that is not there, `EEXIST` for a name or id that is taken,
//! `EBUSY`, `EADDRINUSE`, ... as the kernel gave them.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoData, InfoKind,
    InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Error, Result};

mod socket;
mod status;
use socket::Socket;
pub(crate) use socket::{recv_datagram, send_all};
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
    socket: Socket,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn connect() -> Result<Netlink> {
        let socket = Socket::open().map_err(|e| Error::new("open netlink socket", e))?;
        Ok(Netlink { socket })
    }

    /// Opens another socket, in the calling thread's *current* namespace
    /// (which need not be this one's). Call it inside `Netns::run`. The same
    /// as [`Netlink::connect`]; kept so that the callers that reach into a
    /// namespace from a host socket read as such.
    pub fn connect_here(&self) -> Result<Netlink> {
        Netlink::connect()
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let query = link_query(0, vec![LinkAttribute::IfName(name.to_owned())]);
        self.get_link(query, &[libc::ENODEV])
            .map(|m| m.as_ref().map(link_from))
            .map_err(|e| Error::new(format!("get link {name}"), e))
    }

    /// The link with index `index`, or `None` if there is none: one
    /// request, where [`Netlink::links`] dumps the whole namespace.
    pub fn link_by_index(&self, index: u32) -> Result<Option<Link>> {
        self.get_link(link_query(index, Vec::new()), &[libc::ENODEV])
            .map(|m| m.as_ref().map(link_from))
            .map_err(|e| Error::new(format!("get link {index}"), e))
    }

    /// The link with index `index` in the namespace that has id `nsid` in
    /// this socket's namespace (`IFLA_TARGET_NETNSID`, Linux 4.20+): a look
    /// into a namespace without a path to it. `None` if it has no such link
    /// (or there is no such namespace: `EINVAL`).
    pub fn link_in(&self, nsid: i32, index: u32) -> Result<Option<Link>> {
        let query = link_query(index, vec![LinkAttribute::IfNetnsId(nsid)]);
        self.get_link(query, &[libc::ENODEV, libc::EINVAL])
            .map(|m| m.as_ref().map(link_from))
            .map_err(|e| Error::new(format!("get link {index} in namespace id {nsid}"), e))
    }

    /// Every link in the namespace that has id `nsid` here; none if there
    /// is no such namespace.
    pub fn links_in(&self, nsid: i32) -> Result<Vec<Link>> {
        let query = link_query(0, vec![LinkAttribute::IfNetnsId(nsid)]);
        match self.dump_links(query) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(Vec::new()),
            other => other.map_err(|e| Error::new(format!("list links in namespace id {nsid}"), e)),
        }
    }

    /// Every link in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        self.dump_links(link_query(0, Vec::new()))
            .map_err(|e| Error::new("list links", e))
    }

    /// One `RTM_GETLINK`; `None` where the kernel answers with one of
    /// `absent` (the errnos that mean "no such link" for this query).
    fn get_link(&self, query: LinkMessage, absent: &[i32]) -> io::Result<Option<LinkMessage>> {
        match self.socket.get(RouteNetlinkMessage::GetLink(query)) {
            Ok(RouteNetlinkMessage::NewLink(link)) => Ok(Some(link)),
            Ok(other) => Err(unexpected(&other)),
            Err(e) if e.raw_os_error().is_some_and(|n| absent.contains(&n)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn dump_links(&self, query: LinkMessage) -> io::Result<Vec<Link>> {
        let parts = self.socket.dump(RouteNetlinkMessage::GetLink(query))?;
        Ok(parts
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(link) => Some(link_from(link)),
                _ => None,
            })
            .collect())
    }

    /// Creates a MACVLAN on a parent of this namespace inside `spec.netns`
    /// (or here, without one).
    ///
    /// Made here, it comes back as the kernel echoes it (`NLM_F_ECHO`;
    /// recent kernels, 6.18 among them, echo `RTM_NEWLINK`), so the caller
    /// need not look it up: `Some(link)`. Made into another namespace, the
    /// kernel addresses its echo to this socket's port id *in that
    /// namespace*, i.e. to whichever socket there has that number, not to
    /// this one; no echo is asked for then, and the result is `None`, as it
    /// is from a kernel that sends none.
    pub fn add_macvlan(&self, spec: &NewMacvlan) -> Result<Option<Link>> {
        let echo = if spec.netns.is_none() { NLM_F_ECHO } else { 0 };
        let answer = self
            .socket
            .ack(
                RouteNetlinkMessage::NewLink(macvlan_message(spec)),
                NLM_F_CREATE | NLM_F_EXCL | echo,
            )
            .map_err(|e| Error::new(format!("create macvlan {}", spec.name), e))?;
        Ok(answer.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => Some(link_from(link)),
            _ => None,
        }))
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
        match self
            .socket
            .ack(RouteNetlinkMessage::NewNsId(request), NLM_F_ECHO)
        {
            Ok(echo) => {
                if let Some(id) = nsids_of(&echo).find(|&id| id >= 0) {
                    return Ok(id);
                }
            }
            // Assigned already: by the kernel, by someone else, or by a
            // racing caller between their lookup and ours.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(Error::new(op(), e)),
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
        let reply = self
            .socket
            .get(RouteNetlinkMessage::GetNsId(request))
            .map_err(|e| {
                Error::new(
                    format!("get the nsid of network namespace fd {}", peer.as_raw_fd()),
                    e,
                )
            })?;
        let id = nsids_of(std::slice::from_ref(&reply)).find(|&id| id >= 0);
        Ok(id)
    }

    /// Every id assigned in this socket's namespace (by us, by others, by
    /// the kernel), one per peer namespace not yet destroyed, in the
    /// kernel's order. One dump request.
    pub fn nsids(&self) -> Result<Vec<i32>> {
        let parts = self
            .socket
            .dump(RouteNetlinkMessage::GetNsId(nsid_message(Vec::new())))
            .map_err(|e| Error::new("list nsids", e))?;
        Ok(nsids_of(&parts).filter(|&id| id >= 0).collect())
    }

    /// The unicast MACs in link `index`'s address filter (what `bridge fdb
    /// show dev X` lists for a NIC). A MACVLAN child's MAC is there exactly
    /// while the child is up, in whatever namespace it lives: the one
    /// witness, from the host, that a dying namespace's link is really gone.
    ///
    /// One dump of the namespace's whole `AF_BRIDGE` table, filtered here:
    /// the kernel filters such a dump by device only on a socket with
    /// strict checking (`NETLINK_GET_STRICT_CHK`), which this one leaves off.
    pub fn unicast_macs(&self, index: u32) -> Result<Vec<[u8; 6]>> {
        let mut query = NeighbourMessage::default();
        query.header.family = AddressFamily::Bridge;
        let parts = self
            .socket
            .dump(RouteNetlinkMessage::GetNeighbour(query))
            .map_err(|e| Error::new(format!("list the address filter of link {index}"), e))?;
        Ok(parts
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) if n.header.ifindex == index => Some(n),
                _ => None,
            })
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
        let change = link_query(index, vec![LinkAttribute::IfName(name.to_owned())]);
        self.set_link(change)
            .map_err(|e| Error::new(format!("rename link {index} to {name}"), e))
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        let mut change = link_query(index, Vec::new());
        change.header.flags = LinkFlags::Up;
        change.header.change_mask = LinkFlags::Up;
        self.set_link(change)
            .map_err(|e| Error::new(format!("set link {index} up"), e))
    }

    /// Turns on IPv4 `arp_notify` for link `index` (`RTM_SETLINK`,
    /// `IFLA_AF_SPEC` → `AF_INET` → `IFLA_INET_CONF`, entry
    /// `IPV4_DEVCONF_ARP_NOTIFY`): what writing
    /// `/proc/sys/net/ipv4/conf/<name>/arp_notify` does, and marked as
    /// set the same way, without a path lookup through `/proc/sys`, whose
    /// per-interface directories of one name share a hash chain across
    /// every namespace (each container's `net1`): a cost that grows with
    /// the containers alive. Call it before the link goes up: the
    /// gratuitous ARP is sent on the way up.
    ///
    /// IPv6's `ndisc_notify` has no such path: inet6 takes only
    /// `IFLA_INET6_TOKEN` and `IFLA_INET6_ADDR_GEN_MODE` through
    /// `IFLA_AF_SPEC`; it stays a `/proc/sys` write ([`crate::sysctl`]).
    pub fn set_arp_notify(&self, index: u32) -> Result<()> {
        self.set_link(link_query(index, vec![arp_notify_on()]))
            .map_err(|e| Error::new(format!("set arp_notify on link {index}"), e))
    }

    /// [`Netlink::set_arp_notify`], and in the same request IPv6 address
    /// generation EUI-64 (`IFLA_INET6_ADDR_GEN_MODE`), so that the
    /// link-local address is the one derived from the MAC whatever the
    /// namespace's default (stable-privacy ones cannot be predicted). A
    /// kernel without IPv6 refuses the IPv6 part (`EAFNOSUPPORT`): then
    /// only arp_notify is set.
    pub fn set_arp_notify_eui64(&self, index: u32) -> Result<()> {
        let inet6 = AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::Eui64)]);
        let mut both = arp_notify_on();
        if let LinkAttribute::AfSpecUnspec(families) = &mut both {
            families.push(inet6);
        }
        match self.set_link(link_query(index, vec![both])) {
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => self.set_arp_notify(index),
            other => other.map_err(|e| {
                Error::new(
                    format!("set arp_notify and EUI-64 addresses on link {index}"),
                    e,
                )
            }),
        }
    }

    /// One `RTM_SETLINK` on an existing link (never creates one).
    fn set_link(&self, change: LinkMessage) -> io::Result<()> {
        self.socket
            .ack(RouteNetlinkMessage::SetLink(change), 0)
            .map(drop)
    }

    pub fn delete(&self, index: u32) -> Result<()> {
        self.socket
            .ack(
                RouteNetlinkMessage::DelLink(link_query(index, Vec::new())),
                0,
            )
            .map(drop)
            .map_err(|e| Error::new(format!("delete link {index}"), e))
    }

    /// Deletes by name, for when the index was never learned.
    pub fn delete_by_name(&self, name: &str) -> Result<()> {
        let query = link_query(0, vec![LinkAttribute::IfName(name.to_owned())]);
        self.socket
            .ack(RouteNetlinkMessage::DelLink(query), 0)
            .map(drop)
            .map_err(|e| Error::new(format!("delete link {name}"), e))
    }

    pub fn add_address(&self, index: u32, address: IpNet) -> Result<()> {
        self.new_address(address_message(index, address))
            .map_err(|e| Error::new(format!("add address {address}"), e))
    }

    /// Adds an IPv6 address without duplicate address detection
    /// (`IFA_F_NODAD`): usable at once, never tentative. Only for an
    /// address whose uniqueness on the link is known otherwise.
    pub fn add_address_nodad(&self, index: u32, address: Ipv6Net) -> Result<()> {
        let mut message = address_message(index, IpNet::V6(address));
        // The header's 8-bit field and IFA_FLAGS, as iproute2 sends them.
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
        self.new_address(message)
            .map_err(|e| Error::new(format!("add address {address} nodad"), e))
    }

    fn new_address(&self, message: AddressMessage) -> io::Result<()> {
        self.socket
            .ack(
                RouteNetlinkMessage::NewAddress(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map(drop)
    }

    /// Adds `destination via gateway dev index`, of either family.
    pub fn add_route(&self, index: u32, destination: IpNet, gateway: IpAddr) -> Result<()> {
        let what = if destination.prefix_len() == 0 {
            "default".to_owned()
        } else {
            destination.to_string()
        };
        let op = || format!("add route {what} via {gateway}");
        let (family, gateway_attribute) = match (destination, gateway) {
            (IpNet::V4(_), IpAddr::V4(g)) => (AddressFamily::Inet, RouteAddress::Inet(g)),
            (IpNet::V6(_), IpAddr::V6(g)) => (AddressFamily::Inet6, RouteAddress::Inet6(g)),
            _ => {
                return Err(Error::new(
                    op(),
                    io::Error::new(io::ErrorKind::InvalidInput, "families differ"),
                ))
            }
        };
        let mut message = route_message(index, family, destination);
        message
            .attributes
            .push(RouteAttribute::Gateway(gateway_attribute));
        self.new_route(message).map_err(|e| Error::new(op(), e))
    }

    /// Adds `destination dev index scope link`: reached directly on the
    /// link, no gateway (the host shim's routes to its network's range).
    pub fn add_link_route_v4(&self, index: u32, destination: Ipv4Net) -> Result<()> {
        let mut message = route_message(index, AddressFamily::Inet, IpNet::V4(destination));
        message.header.scope = RouteScope::Link;
        self.new_route(message)
            .map_err(|e| Error::new(format!("add route {destination} dev {index}"), e))
    }

    fn new_route(&self, message: RouteMessage) -> io::Result<()> {
        self.socket
            .ack(
                RouteNetlinkMessage::NewRoute(message),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .map(drop)
    }
}

/// A link message naming a link by `index` (0: none), with `attributes`.
fn link_query(index: u32, attributes: Vec<LinkAttribute>) -> LinkMessage {
    let mut message = LinkMessage::default();
    message.header.index = index;
    message.attributes = attributes;
    message
}

/// `RTM_NEWLINK` of a MACVLAN, as `ip link add NAME link PARENT address MAC
/// [mtu N] [netns FD] type macvlan mode MODE [bcqueuelen N]` sends it.
fn macvlan_message(spec: &NewMacvlan) -> LinkMessage {
    let mut attributes = vec![
        LinkAttribute::IfName(spec.name.to_owned()),
        LinkAttribute::Link(spec.parent_index),
        LinkAttribute::Address(spec.mac.to_vec()),
    ];
    if let Some(netns) = spec.netns {
        attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd()));
    }
    if let Some(mtu) = spec.mtu {
        attributes.push(LinkAttribute::Mtu(mtu));
    }
    let mut data = vec![InfoMacVlan::Mode(MacVlanMode::from(spec.mode))];
    if let Some(len) = spec.bc_queue_len {
        data.push(InfoMacVlan::BcQueueLen(len));
    }
    attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(data)),
    ]));
    link_query(0, attributes)
}

/// `IFLA_AF_SPEC` holding `AF_INET` → `IFLA_INET_CONF` with the one entry
/// `IPV4_DEVCONF_ARP_NOTIFY` = 1. A request form sends only the entries
/// that are not 0, so every other setting of the link stays as it is.
fn arp_notify_on() -> LinkAttribute {
    let mut conf = InetDevConf::default();
    conf.arp_notify = 1;
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(
        conf,
    )])])
}

/// An address message as `ip address add ADDRESS/LEN dev INDEX` sends it:
/// `IFA_LOCAL` and `IFA_ADDRESS`, and for IPv4 below /31 the broadcast.
fn address_message(index: u32, address: IpNet) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = address.prefix_len();
    let ip = address.addr();
    message.header.family = match address {
        IpNet::V4(_) => AddressFamily::Inet,
        IpNet::V6(_) => AddressFamily::Inet6,
    };
    message.attributes.push(AddressAttribute::Address(ip));
    message.attributes.push(AddressAttribute::Local(ip));
    if let IpNet::V4(v4) = address {
        if v4.prefix_len() < 31 {
            message
                .attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    message
}

/// A unicast route in the main table, `proto static`, scope universe, to
/// `destination` out of link `index`.
fn route_message(index: u32, family: AddressFamily, destination: IpNet) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Static;
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unicast;
    message.header.destination_prefix_length = destination.prefix_len();
    let address = match destination {
        IpNet::V4(d) => RouteAddress::Inet(d.addr()),
        IpNet::V6(d) => RouteAddress::Inet6(d.addr()),
    };
    message
        .attributes
        .push(RouteAttribute::Destination(address));
    message.attributes.push(RouteAttribute::Oif(index));
    message
}

fn nsid_message(attributes: Vec<NsidAttribute>) -> NsidMessage {
    let mut message = NsidMessage::default();
    message.attributes = attributes;
    message
}

/// `NETNSA_NSID` of every `RTM_NEWNSID` among `messages` (a reply, an echo,
/// or dump parts).
fn nsids_of(messages: &[RouteNetlinkMessage]) -> impl Iterator<Item = i32> + '_ {
    messages
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNsId(reply) => Some(reply.attributes.iter()),
            _ => None,
        })
        .flatten()
        .filter_map(|a| match a {
            NsidAttribute::Id(id) => Some(*id),
            _ => None,
        })
}

fn unexpected(message: &RouteNetlinkMessage) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected netlink message type {}", message.message_type()),
    )
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

    /// A veth pair in the calling thread's namespace, made by iproute2 (a
    /// child process starts in its parent thread's namespace): nsbypass
    /// itself never makes one.
    fn add_veth(name: &str, peer: &str) {
        let status = std::process::Command::new("ip")
            .args(["link", "add", name, "type", "veth", "peer", "name", peer])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip link add {name} type veth: {status}");
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
            add_veth("nsbq0", "nsbq1");
            let parent = nl.link_by_name("nsbq0").unwrap().unwrap();
            nl.set_up(parent.index).unwrap();
            for (name, len) in [("mvq0", 2345), ("mvq1", 77)] {
                let echoed = nl
                    .add_macvlan(&NewMacvlan {
                        name,
                        parent_index: parent.index,
                        mode: MACVLAN_MODE_BRIDGE,
                        mac: [0x02, 0, 0, 0, 0x51, len as u8],
                        mtu: None,
                        netns: None,
                        bc_queue_len: Some(len),
                    })
                    .unwrap();
                // Made here, the kernel's echo is the link as a lookup sees it.
                assert_eq!(echoed, nl.link_by_name(name).unwrap(), "{name}");
                assert!(echoed.is_some(), "this kernel echoes RTM_NEWLINK");
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
            add_veth("nsbp0", "nsbp1");
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
            let echoed = nl
                .add_macvlan(&NewMacvlan {
                    name: "mv0",
                    parent_index: parent.index,
                    mode: MACVLAN_MODE_PRIVATE,
                    mac,
                    mtu: Some(1400),
                    netns: Some(peer.fd()),
                    bc_queue_len: None,
                })
                .unwrap();
            assert_eq!(echoed, None, "no echo asked for across namespaces");
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

    /// `net.ipv4.conf.<name>.*` in the calling thread's namespace.
    fn ipv4_conf(name: &str) -> Vec<(String, String)> {
        let dir = format!("/proc/sys/net/ipv4/conf/{name}");
        let mut conf: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let key = e.file_name().into_string().unwrap();
                let value = std::fs::read_to_string(e.path()).unwrap_or_default();
                (key, value.trim().to_owned())
            })
            .collect();
        conf.sort();
        conf
    }

    /// A veth parent `nsba0` here and a MACVLAN `mv0` made from it into
    /// `peer`; its index there.
    fn macvlan_into(nl: &Netlink, peer: &Netns) -> u32 {
        add_veth("nsba0", "nsba1");
        let parent = nl.link_by_name("nsba0").unwrap().unwrap();
        nl.add_macvlan(&NewMacvlan {
            name: "mv0",
            parent_index: parent.index,
            mode: MACVLAN_MODE_BRIDGE,
            mac: [0x02, 0, 0, 0, 0x0a, 0x01],
            mtu: None,
            netns: Some(peer.fd()),
            bc_queue_len: None,
        })
        .unwrap();
        peer.run(|| Netlink::connect().unwrap().link_by_name("mv0").unwrap())
            .unwrap()
            .expect("made in the peer")
            .index
    }

    #[test]
    fn arp_notify_is_set_through_netlink_and_nothing_else_changes() {
        if skip_unless_root() {
            return;
        }
        in_throwaway_netns(|| {
            let nl = Netlink::connect().unwrap();
            let peer = new_peer();
            let index = macvlan_into(&nl, &peer);
            peer.run(|| {
                let inner = nl.connect_here().unwrap();
                let before = ipv4_conf("mv0");
                assert!(before.contains(&("arp_notify".into(), "0".into())));
                inner.set_arp_notify(index).unwrap();
                let after = ipv4_conf("mv0");
                let changed: Vec<_> = after.iter().filter(|kv| !before.contains(kv)).collect();
                assert_eq!(changed, [&("arp_notify".to_owned(), "1".to_owned())]);
                assert!(
                    !inner.link_by_index(index).unwrap().unwrap().up,
                    "still down"
                );
                let missing = inner.set_arp_notify(9999).unwrap_err();
                assert_eq!(missing.errno(), Some(libc::ENODEV), "{missing}");
            })
            .unwrap();
        });
    }

    #[test]
    fn this_kernel_takes_no_af_spec_in_the_create_so_arp_notify_is_a_request_of_its_own() {
        if skip_unless_root() {
            return;
        }
        in_throwaway_netns(|| {
            let nl = Netlink::connect().unwrap();
            add_veth("nsbc0", "nsbc1");
            let parent = nl.link_by_name("nsbc0").unwrap().unwrap();
            let mut create = macvlan_message(&NewMacvlan {
                name: "mvc0",
                parent_index: parent.index,
                mode: MACVLAN_MODE_BRIDGE,
                mac: [0x02, 0, 0, 0, 0x0c, 0x01],
                mtu: None,
                netns: None,
                bc_queue_len: None,
            });
            create.attributes.push(arp_notify_on());
            let answer = nl.socket.ack(
                RouteNetlinkMessage::NewLink(create),
                NLM_F_CREATE | NLM_F_EXCL,
            );
            // Observed, not relied on: the kernel validates IFLA_AF_SPEC
            // against a device that does not exist yet and refuses it.
            // Should a later kernel take it, this says so.
            match answer {
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EAFNOSUPPORT), "{e}"),
                Ok(_) => {
                    let conf = ipv4_conf("mvc0");
                    panic!("the kernel took IFLA_AF_SPEC in the create; arp_notify: {conf:?}");
                }
            }
            assert_eq!(nl.link_by_name("mvc0").unwrap(), None, "nothing made");
        });
    }

    #[test]
    fn an_answer_is_told_by_its_sequence_number_not_by_its_socket() {
        if skip_unless_root() {
            return;
        }
        in_throwaway_netns(|| {
            let nl = Netlink::connect().unwrap();
            add_veth("nsbs0", "nsbs1");
            let parent = nl.link_by_name("nsbs0").unwrap().unwrap();
            let peer = new_peer();
            let inner = peer.run(|| nl.connect_here().unwrap()).unwrap();
            let before = inner.links().unwrap();
            // An echo asked for across namespaces goes to the port id with
            // this socket's number in the peer: in a fresh namespace, where
            // both sockets got the number the kernel tries first, `inner`.
            let create = macvlan_message(&NewMacvlan {
                name: "mvs0",
                parent_index: parent.index,
                mode: MACVLAN_MODE_BRIDGE,
                mac: [0x02, 0, 0, 0, 0x0d, 0x01],
                mtu: None,
                netns: Some(peer.fd()),
                bc_queue_len: None,
            });
            let echo = nl
                .socket
                .ack(
                    RouteNetlinkMessage::NewLink(create),
                    NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
                )
                .unwrap();
            assert!(echo.is_empty(), "the echo did not come here");
            // `inner` skips the stray echo and answers its own requests.
            let after = inner.links().unwrap();
            assert_eq!(after.len(), before.len() + 1);
            let made = inner.link_by_name("mvs0").unwrap().unwrap();
            assert_eq!(inner.link_by_index(made.index).unwrap(), Some(made));
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
