//! What a link's own state says about its health, beyond [`super::Link`]:
//! carrier and operational state, and how promiscuous the kernel has made it.
//!
//! Kept apart from [`super::Link`] because only a diagnosis needs it; setup
//! and teardown never look at these.

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};

use super::{link_query, Netlink};
use crate::{Error, Result};

/// A link's health as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub index: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// `IFLA_CARRIER`: the lower layer reports a carrier; `None` if absent.
    pub carrier: Option<bool>,
    /// `IFLA_OPERSTATE` as RFC 2863 names it ("UP", "DOWN", "LOWERLAYERDOWN",
    /// "UNKNOWN", ...); `None` if absent.
    pub operstate: Option<String>,
    /// `IFLA_PROMISCUITY`: how many reasons the device has to be promiscuous
    /// (the user's `ip link set promisc on`, packet sockets, bridges,
    /// passthru MACVLANs, and the kernel's own when the unicast address list
    /// does not fit the NIC's filter). Non-zero means promiscuous.
    pub promiscuity: u32,
    /// IFF_PROMISC in the reported flags: only promiscuity the *user* set
    /// (the kernel reports `gflags` here, so `ip link` shows PROMISC only
    /// for that).
    pub user_promisc: bool,
}

impl Netlink {
    /// The status of the link called `name`, or `None` if there is none.
    pub fn link_status(&self, name: &str) -> Result<Option<LinkStatus>> {
        let query = link_query(0, vec![LinkAttribute::IfName(name.to_owned())]);
        self.get_link(query, &[libc::ENODEV])
            .map(|m| m.as_ref().map(status_from))
            .map_err(|e| Error::new(format!("get link {name}"), e))
    }
}

fn status_from(message: &LinkMessage) -> LinkStatus {
    let mut status = LinkStatus {
        index: message.header.index,
        up: message.header.flags.contains(LinkFlags::Up),
        carrier: None,
        operstate: None,
        promiscuity: 0,
        user_promisc: message.header.flags.contains(LinkFlags::Promisc),
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Carrier(c) => status.carrier = Some(*c != 0),
            LinkAttribute::OperState(state) => status.operstate = Some(state.to_string()),
            LinkAttribute::Promiscuity(n) => status.promiscuity = *n,
            _ => {}
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_a_status_and_missing_links_none() {
        let nl = Netlink::connect().unwrap();
        let lo = nl
            .link_status("lo")
            .unwrap()
            .expect("every namespace has lo");
        assert_eq!(lo.index, 1);
        assert!(!lo.user_promisc);
        assert_eq!(nl.link_status("nsb-no-such-if").unwrap(), None);
    }
}
