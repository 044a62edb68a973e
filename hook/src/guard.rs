//! The address guard: a container sends only from its link's own MAC and
//! addresses.
//!
//! On a MACVLAN, a process with CAP_NET_RAW (docker grants it by default)
//! can write frames with any source MAC and address, and ARP replies that
//! claim a neighbour's address. Two nftables filters stop that, each made
//! with the link and gone with it:
//!
//! - **Inside** the container's namespace, a netdev table per link
//!   (`nsbypass-link-<ifname>`) whose chain on the link's egress lets out
//!   only the link's MAC, with its leased addresses (IPv4 and ARP sender,
//!   0.0.0.0 for none; IPv6 and the link-local derived from the MAC, `::`
//!   for duplicate address detection) and the network's
//!   `guard_allow_ethertypes`; everything else is dropped. ARP must have
//!   the Ethernet/IPv4 shape the offsets assume, and neighbour discovery
//!   (which a receiver believes about its target and link-layer option,
//!   not its source) the shapes Linux sends, with the link's own. It sees every
//!   frame the link sends, to the wire and to sibling MACVLANs alike
//!   (bridge mode hands those over without passing the parent), packet
//!   sockets' `PACKET_QDISC_BYPASS` frames included (af_packet runs the
//!   netdev egress hook for them). A container with CAP_NET_ADMIN in its
//!   namespace can delete it.
//! - **On the parent**, in the host's namespace, one netdev table per
//!   parent (`nsbypass-parent-<parent>`) with static rules over sets that
//!   each guarded link adds its keys to and removes them from: a frame
//!   from a guarded link's MAC must carry that link's addresses, and a
//!   frame that claims a guarded address must come from its link's MAC.
//!   The container cannot reach it, so this holds even with CAP_NET_ADMIN,
//!   and for AF_XDP frames, which skip the link's own egress hook (DPDK's
//!   `net_af_xdp` sends that way, so AF_XDP is let through to these
//!   checks, not dropped). It sees only frames that leave the host (or, in modes vepa and private,
//!   every frame a child sends). What it cannot tell apart is a frame
//!   from a MAC and address no guarded link has: the host's own traffic
//!   looks the same.
//!
//! The parent's rules are fixed; per link only set elements change, so a
//! setup costs the same with 1 or 500 guarded siblings, and a frame one
//! hash lookup per rule. Kernel-bypass stacks (Onload, DPDK, RDMA) never
//! pass netfilter: the guard covers the kernel's path only.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use nsutil::nftables::{Batch, Expr, Nftables, Set, Verdict, REG32_00};
use serde::{Deserialize, Serialize};

use crate::records::LinkRecord;

/// What a link's record says about its guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarded {
    /// The network's `guard_allow_ethertypes` when the link was made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ethertypes: Vec<u16>,
}

/// Everything one link's guard checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub mac: [u8; 6],
    pub v4: Vec<Ipv4Addr>,
    pub v6: Vec<Ipv6Addr>,
    pub ethertypes: Vec<u16>,
    /// A passthru link has the parent's MAC, which the host's own traffic
    /// carries too: only the inner filter guards it.
    pub passthru: bool,
}

impl Guard {
    /// The guard `link` was made with, if it has one.
    pub fn of(link: &LinkRecord) -> Option<Guard> {
        let guarded = link.guard.as_ref()?;
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for address in &link.addresses {
            match address.addr() {
                IpAddr::V4(a) => v4.push(a),
                IpAddr::V6(a) => v6.push(a),
            }
        }
        Some(Guard {
            mac: parse_mac(&link.mac)?,
            v4,
            v6,
            ethertypes: guarded.ethertypes.clone(),
            passthru: link.passthru,
        })
    }

    /// A link with no address: only its MAC is checked.
    pub fn layer2_only(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether the parent's filter has anything to check for this link.
    pub fn on_parent(&self) -> bool {
        !self.passthru && !self.layer2_only()
    }

    /// The EUI-64 link-local address the kernel derives from the MAC (the
    /// hook sets the link's `addr_gen_mode` to EUI-64 so that it does).
    pub fn link_local(&self) -> Ipv6Addr {
        let m = self.mac;
        let bytes = [
            0xfe,
            0x80,
            0,
            0,
            0,
            0,
            0,
            0,
            m[0] ^ 0x02,
            m[1],
            m[2],
            0xff,
            0xfe,
            m[3],
            m[4],
            m[5],
        ];
        Ipv6Addr::from(bytes)
    }

    fn sources4(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.v4.iter().copied().chain([Ipv4Addr::UNSPECIFIED])
    }

    fn sources6(&self) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.v6
            .iter()
            .copied()
            .chain([self.link_local(), Ipv6Addr::UNSPECIFIED])
    }

    /// The batch that makes the inner filter for link `ifname` (replacing
    /// one a killed setup may have left).
    pub fn inner(&self, ifname: &str) -> Batch {
        let table = inner_table(ifname);
        let mut batch = Batch::new();
        let policy = if self.layer2_only() {
            Verdict::Accept
        } else {
            Verdict::Drop
        };
        batch
            .clear_table(&table)
            .add_table(&table, false)
            .add_egress_chain(&table, CHAIN, ifname, policy);
        let mac = self.mac.to_vec();
        let rule = |batch: &mut Batch, exprs: Vec<Expr>| {
            batch.add_rule(&table, CHAIN, &exprs);
        };
        rule(
            &mut batch,
            vec![
                load(SOURCE_MAC, 6, R0),
                Expr::Ne {
                    reg: R0,
                    data: mac.clone(),
                },
                Expr::Verdict(Verdict::Drop),
            ],
        );
        if self.layer2_only() {
            return batch;
        }
        // Neighbour discovery from its own address may still lie in its
        // target and link-layer options: only the link's own, in the
        // shapes Linux sends.
        let own_mac = |at: u32| {
            vec![
                load(at, 6, R0),
                Expr::Ne {
                    reg: R0,
                    data: mac.clone(),
                },
            ]
        };
        let mut not_own_target = vec![load(ND_TARGET, 16, R0)];
        not_own_target.extend(self.v6.iter().copied().chain([self.link_local()]).map(|a| {
            Expr::Ne {
                reg: R0,
                data: a.octets().to_vec(),
            }
        }));
        for exprs in nd_drops(&[], &own_mac, &not_own_target) {
            rule(&mut batch, exprs);
        }
        for source in self.sources4() {
            let mut exprs = ethertype(IPV4);
            exprs.extend([
                load(IPV4_SOURCE, 4, R0),
                Expr::Eq {
                    reg: R0,
                    data: source.octets().to_vec(),
                },
                Expr::Verdict(Verdict::Accept),
            ]);
            rule(&mut batch, exprs);
            let mut exprs = ethertype(ARP);
            exprs.extend([
                load(ARP_HEADER, 6, R0),
                Expr::Eq {
                    reg: R0,
                    data: ARP_ETHER_IPV4.to_vec(),
                },
                load(ARP_SENDER_MAC, 6, R0),
                Expr::Eq {
                    reg: R0,
                    data: mac.clone(),
                },
                load(ARP_SENDER_IP, 4, R0),
                Expr::Eq {
                    reg: R0,
                    data: source.octets().to_vec(),
                },
                Expr::Verdict(Verdict::Accept),
            ]);
            rule(&mut batch, exprs);
        }
        for source in self.sources6() {
            let mut exprs = ethertype(IPV6);
            exprs.extend([
                load(IPV6_SOURCE, 16, R0),
                Expr::Eq {
                    reg: R0,
                    data: source.octets().to_vec(),
                },
                Expr::Verdict(Verdict::Accept),
            ]);
            rule(&mut batch, exprs);
        }
        for &allowed in &self.ethertypes {
            let mut exprs = ethertype(allowed);
            exprs.push(Expr::Verdict(Verdict::Accept));
            rule(&mut batch, exprs);
        }
        batch
    }

    /// This link's keys in each set of the parent's table.
    pub fn outer_keys(&self) -> Vec<(&'static str, Vec<Vec<u8>>)> {
        let mac = mac_key(self.mac);
        let cat = |parts: &[&[u8]]| parts.concat();
        vec![
            (SET_MACS, vec![self.mac.to_vec()]),
            (SET_LLA, vec![cat(&[&mac, &mac])]),
            (
                SET_V4,
                self.sources4().map(|a| cat(&[&mac, &a.octets()])).collect(),
            ),
            (
                SET_ARP,
                self.sources4()
                    .map(|a| cat(&[&mac, &mac, &a.octets()]))
                    .collect(),
            ),
            (
                SET_V6,
                self.sources6().map(|a| cat(&[&mac, &a.octets()])).collect(),
            ),
            (
                SET_ETHERTYPES,
                self.ethertypes
                    .iter()
                    .map(|e| cat(&[&mac, &e.to_be_bytes(), &[0, 0]]))
                    .collect(),
            ),
            (
                SET_OWNED4,
                self.v4.iter().map(|a| a.octets().to_vec()).collect(),
            ),
            (
                SET_OWNED6,
                self.v6
                    .iter()
                    .copied()
                    .chain([self.link_local()])
                    .map(|a| a.octets().to_vec())
                    .collect(),
            ),
        ]
    }
}

/// The inner filter's table in a container's namespace.
pub fn inner_table(ifname: &str) -> String {
    format!("nsbypass-link-{ifname}")
}

/// The parent's filter's table in the host's namespace.
pub fn outer_table(parent: &str) -> String {
    format!("{OUTER_PREFIX}{parent}")
}

const OUTER_PREFIX: &str = "nsbypass-parent-";
const CHAIN: &str = "egress";

/// Every set of the parent's table: one missing means another layout.
const ALL_SETS: [&str; 8] = [
    SET_MACS,
    SET_LLA,
    SET_V4,
    SET_ARP,
    SET_V6,
    SET_ETHERTYPES,
    SET_OWNED4,
    SET_OWNED6,
];

const SET_MACS: &str = "macs";
/// "MAC . MAC": a link-layer address option a guarded MAC may carry.
const SET_LLA: &str = "lla";
const SET_V4: &str = "ipv4";
const SET_ARP: &str = "arp";
const SET_V6: &str = "ipv6";
const SET_ETHERTYPES: &str = "ethertypes";
const SET_OWNED4: &str = "owned4";
const SET_OWNED6: &str = "owned6";

/// Frame offsets, from the start of the Ethernet header (untagged: a
/// tagged frame's type is 0x8100, which no rule lets out unless listed).
const SOURCE_MAC: u32 = 6;
const ETHERTYPE: u32 = 12;
const IPV4_SOURCE: u32 = 14 + 12;
const ARP_SENDER_MAC: u32 = 14 + 8;
const ARP_SENDER_IP: u32 = 14 + 14;
const IPV6_SOURCE: u32 = 14 + 8;

/// ARP's fixed header for Ethernet and IPv4 (hardware type 1, protocol
/// 0x0800, lengths 6 and 4): the only one Linux takes on Ethernet, and the
/// one whose sender fields sit at the offsets above.
const ARP_HEADER: u32 = 14;
const ARP_ETHER_IPV4: [u8; 6] = [0, 1, 8, 0, 6, 4];

/// IPv6's payload length and next header, and an ICMPv6 message right
/// after the fixed header: its type, a neighbour solicitation's or
/// advertisement's target and first option, a router solicitation's
/// first option.
const IPV6_PAYLOAD_LEN: u32 = 14 + 4;
const IPV6_NEXT: u32 = 14 + 6;
const ICMP6: u32 = 14 + 40;
const ND_TARGET: u32 = ICMP6 + 8;
const ND_OPTION: u32 = ICMP6 + 24;
const RS_OPTION: u32 = ICMP6 + 8;

const NEXT_HOP_BY_HOP: u8 = 0;
const NEXT_ROUTING: u8 = 43;
const NEXT_DEST_OPTS: u8 = 60;
const NEXT_ICMP6: u8 = 58;
const ICMP6_RS: u8 = 133;
const ICMP6_NS: u8 = 135;
const ICMP6_NA: u8 = 136;
/// MLD query, report, done and MLDv2 report: what a hop-by-hop header
/// (router alert) carries from a Linux host.
const ICMP6_MLD: [u8; 4] = [130, 131, 132, 143];
/// ND options: source and target link-layer address, nonce (DAD).
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
const OPT_NONCE: u8 = 14;

const IPV4: u16 = 0x0800;
const ARP: u16 = 0x0806;
const IPV6: u16 = 0x86DD;

/// Registers: a MAC takes two (8 bytes, zero-padded), so a key "MAC .
/// address" starts at R0 with the address at R2.
const R0: u32 = REG32_00;
const R2: u32 = REG32_00 + 2;
const R4: u32 = REG32_00 + 4;

/// nftables' datatype numbers, for `nft list` (ether_addr, ipv4_addr,
/// ipv6_addr, ether_type), six bits per concatenated field.
const TYPE_MAC: u32 = 9;
const TYPE_IPV4: u32 = 7;
const TYPE_IPV6: u32 = 8;
const TYPE_ETHERTYPE: u32 = 10;

fn load(offset: u32, len: u32, reg: u32) -> Expr {
    Expr::Frame { offset, len, reg }
}

fn ethertype(value: u16) -> Vec<Expr> {
    vec![
        load(ETHERTYPE, 2, R0),
        Expr::Eq {
            reg: R0,
            data: value.to_be_bytes().to_vec(),
        },
    ]
}

fn byte_is(offset: u32, value: u8) -> Vec<Expr> {
    vec![
        load(offset, 1, R0),
        Expr::Eq {
            reg: R0,
            data: vec![value],
        },
    ]
}

/// `offset`'s `len` bytes are none of `values`.
fn none_of(offset: u32, len: u32, values: &[&[u8]]) -> Vec<Expr> {
    let mut exprs = vec![load(offset, len, R0)];
    exprs.extend(values.iter().map(|v| Expr::Ne {
        reg: R0,
        data: v.to_vec(),
    }));
    exprs
}

/// Drop rules for IPv6 from one guarded link (`gate` selects its frames;
/// `lying_mac(at)` matches when the 6 bytes at `at` are not its MAC,
/// `not_own_target` when a neighbour advertisement's target is not one of
/// its addresses): neighbour discovery must show at the offsets the
/// checks read (no destination-options or routing header, a hop-by-hop
/// header only as MLD's), and solicitations and advertisements carry at
/// most one option, whose link-layer address is the link's own.
/// Receivers take the first such option, and the payload length bounds
/// what they read.
fn nd_drops(
    gate: &[Expr],
    lying_mac: &dyn Fn(u32) -> Vec<Expr>,
    not_own_target: &[Expr],
) -> Vec<Vec<Expr>> {
    let drop = Expr::Verdict(Verdict::Drop);
    let ipv6 = [ethertype(IPV6), gate.to_vec()].concat();
    let icmp = |ty: u8| {
        [
            ipv6.clone(),
            byte_is(IPV6_NEXT, NEXT_ICMP6),
            byte_is(ICMP6, ty),
        ]
        .concat()
    };
    let len_is = |len: u16| {
        vec![
            load(IPV6_PAYLOAD_LEN, 2, R0),
            Expr::Eq {
                reg: R0,
                data: len.to_be_bytes().to_vec(),
            },
        ]
    };
    let mut rules = vec![
        [ipv6.clone(), byte_is(IPV6_NEXT, NEXT_ROUTING)].concat(),
        [ipv6.clone(), byte_is(IPV6_NEXT, NEXT_DEST_OPTS)].concat(),
        [
            ipv6.clone(),
            byte_is(IPV6_NEXT, NEXT_HOP_BY_HOP),
            none_of(ICMP6, 2, &[&[NEXT_ICMP6, 0]]),
        ]
        .concat(),
        [
            ipv6.clone(),
            byte_is(IPV6_NEXT, NEXT_HOP_BY_HOP),
            none_of(
                ICMP6 + 8,
                1,
                &ICMP6_MLD
                    .iter()
                    .map(std::slice::from_ref)
                    .collect::<Vec<_>>(),
            ),
        ]
        .concat(),
    ];
    for ty in [ICMP6_NS, ICMP6_NA] {
        rules.push(
            [
                icmp(ty),
                none_of(
                    IPV6_PAYLOAD_LEN,
                    2,
                    &[&24u16.to_be_bytes(), &32u16.to_be_bytes()],
                ),
            ]
            .concat(),
        );
        rules.push(
            [
                icmp(ty),
                len_is(32),
                none_of(
                    ND_OPTION,
                    2,
                    &[&[OPT_SOURCE_LL, 1], &[OPT_TARGET_LL, 1], &[OPT_NONCE, 1]],
                ),
            ]
            .concat(),
        );
        for opt in [OPT_SOURCE_LL, OPT_TARGET_LL] {
            rules.push(
                [
                    icmp(ty),
                    len_is(32),
                    byte_is(ND_OPTION, opt),
                    lying_mac(ND_OPTION + 2),
                ]
                .concat(),
            );
        }
    }
    rules.push(
        [
            icmp(ICMP6_RS),
            none_of(
                IPV6_PAYLOAD_LEN,
                2,
                &[&8u16.to_be_bytes(), &16u16.to_be_bytes()],
            ),
        ]
        .concat(),
    );
    rules.push(
        [
            icmp(ICMP6_RS),
            len_is(16),
            none_of(RS_OPTION, 2, &[&[OPT_SOURCE_LL, 1]]),
        ]
        .concat(),
    );
    rules.push([icmp(ICMP6_RS), len_is(16), lying_mac(RS_OPTION + 2)].concat());
    rules.push([icmp(ICMP6_NA), not_own_target.to_vec()].concat());
    for rule in &mut rules {
        rule.push(drop.clone());
    }
    rules
}

fn lookup(set: &str, reg: u32, present: bool) -> Expr {
    Expr::Lookup {
        set: set.to_owned(),
        reg,
        present,
    }
}

fn mac_key(mac: [u8; 6]) -> Vec<u8> {
    let mut key = mac.to_vec();
    key.extend([0, 0]);
    key
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The batch that makes a parent's table: its sets and fixed rules.
fn outer_table_batch(parent: &str) -> Batch {
    let table = outer_table(parent);
    let mut batch = Batch::new();
    batch.add_table(&table, true);
    let sets = [
        (SET_MACS, 6, TYPE_MAC),
        (SET_LLA, 16, TYPE_MAC << 6 | TYPE_MAC),
        (SET_V4, 12, TYPE_MAC << 6 | TYPE_IPV4),
        (SET_ARP, 20, (TYPE_MAC << 6 | TYPE_MAC) << 6 | TYPE_IPV4),
        (SET_V6, 24, TYPE_MAC << 6 | TYPE_IPV6),
        (SET_ETHERTYPES, 12, TYPE_MAC << 6 | TYPE_ETHERTYPE),
        (SET_OWNED4, 4, TYPE_IPV4),
        (SET_OWNED6, 16, TYPE_IPV6),
    ];
    for (name, key_len, key_type) in sets {
        batch.add_set(
            &table,
            &Set {
                name: name.to_owned(),
                key_len,
                key_type,
            },
        );
    }
    batch.add_egress_chain(&table, CHAIN, parent, Verdict::Accept);
    let drop = Expr::Verdict(Verdict::Drop);
    let guarded_mac = [load(SOURCE_MAC, 6, R0), lookup(SET_MACS, R0, true)];
    let mut rules: Vec<Vec<Expr>> = vec![
        // ARP in another shape than Ethernet/IPv4 from a guarded MAC.
        [
            ethertype(ARP),
            guarded_mac.to_vec(),
            vec![
                load(ARP_HEADER, 6, R0),
                Expr::Ne {
                    reg: R0,
                    data: ARP_ETHER_IPV4.to_vec(),
                },
                drop.clone(),
            ],
        ]
        .concat(),
        // From a guarded link's MAC: its IPv4 source, ARP sender, IPv6
        // source, or an ethertype it may send.
        [
            ethertype(IPV4),
            guarded_mac.to_vec(),
            vec![
                load(IPV4_SOURCE, 4, R2),
                lookup(SET_V4, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        [
            ethertype(ARP),
            guarded_mac.to_vec(),
            vec![
                load(ARP_SENDER_MAC, 6, R2),
                load(ARP_SENDER_IP, 4, R4),
                lookup(SET_ARP, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        [
            ethertype(IPV6),
            guarded_mac.to_vec(),
            vec![
                load(IPV6_SOURCE, 16, R2),
                lookup(SET_V6, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        [
            guarded_mac.to_vec(),
            vec![
                load(ETHERTYPE, 2, R2),
                Expr::Ne {
                    reg: R2,
                    data: IPV4.to_be_bytes().to_vec(),
                },
                Expr::Ne {
                    reg: R2,
                    data: ARP.to_be_bytes().to_vec(),
                },
                Expr::Ne {
                    reg: R2,
                    data: IPV6.to_be_bytes().to_vec(),
                },
                lookup(SET_ETHERTYPES, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        // Claiming a guarded address: only from its link's MAC.
        [
            ethertype(IPV4),
            vec![
                load(IPV4_SOURCE, 4, R2),
                lookup(SET_OWNED4, R2, true),
                load(SOURCE_MAC, 6, R0),
                lookup(SET_V4, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        [
            ethertype(ARP),
            vec![
                load(ARP_SENDER_IP, 4, R4),
                lookup(SET_OWNED4, R4, true),
                load(SOURCE_MAC, 6, R0),
                load(ARP_SENDER_MAC, 6, R2),
                lookup(SET_ARP, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        [
            ethertype(IPV6),
            vec![
                load(IPV6_SOURCE, 16, R2),
                lookup(SET_OWNED6, R2, true),
                load(SOURCE_MAC, 6, R0),
                lookup(SET_V6, R0, false),
                drop.clone(),
            ],
        ]
        .concat(),
        // A neighbour advertisement for a guarded address: only from its
        // link's MAC.
        [
            ethertype(IPV6),
            byte_is(IPV6_NEXT, NEXT_ICMP6),
            byte_is(ICMP6, ICMP6_NA),
            vec![
                load(ND_TARGET, 16, R2),
                lookup(SET_OWNED6, R2, true),
                load(SOURCE_MAC, 6, R0),
                lookup(SET_V6, R0, false),
                drop,
            ],
        ]
        .concat(),
    ];
    let lying_mac = |at: u32| {
        vec![
            load(SOURCE_MAC, 6, R0),
            load(at, 6, R2),
            lookup(SET_LLA, R0, false),
        ]
    };
    let not_own_target = [
        load(SOURCE_MAC, 6, R0),
        load(ND_TARGET, 16, R2),
        lookup(SET_V6, R0, false),
    ];
    rules.extend(nd_drops(&guarded_mac, &lying_mac, &not_own_target));
    for exprs in rules {
        batch.add_rule(&table, CHAIN, &exprs);
    }
    batch
}

/// The parent-side filters, in the host's namespace.
pub trait HostGuard {
    /// Adds `guard`'s keys to `parent`'s table, making it first if needed.
    fn add(&mut self, parent: &str, guard: &Guard) -> nsutil::Result<()>;
    /// Removes `guard`'s keys; the table goes with the last guarded link.
    fn remove(&mut self, parent: &str, guard: &Guard) -> nsutil::Result<()>;
    /// Makes the parents' tables hold exactly the keys of `wanted` (the
    /// recorded guarded links, by parent): what a SIGKILL between two
    /// steps, or lost records, left goes. Returns the tables removed.
    fn converge(&mut self, wanted: &BTreeMap<String, Vec<Guard>>) -> nsutil::Result<Vec<String>>;
    /// Whether `parent`'s table holds the MAC `mac`.
    fn holds(&mut self, parent: &str, mac: [u8; 6]) -> nsutil::Result<bool>;
}

/// The real thing: a netfilter socket in the host's namespace, opened on
/// first use (most runs never guard or unguard anything on the host).
#[derive(Default)]
pub struct RealHostGuard {
    nft: Option<Nftables>,
}

impl RealHostGuard {
    fn nft(&mut self) -> nsutil::Result<&Nftables> {
        if self.nft.is_none() {
            self.nft = Some(Nftables::connect()?);
        }
        Ok(self.nft.as_ref().expect("just opened"))
    }
}

impl HostGuard for RealHostGuard {
    fn add(&mut self, parent: &str, guard: &Guard) -> nsutil::Result<()> {
        let table = outer_table(parent);
        let keys = guard.outer_keys();
        let nft = self.nft()?;
        let op = format!("add the link's keys to nftables table {table}");
        // Asked first, not found out by a batch that fails: a batch the
        // kernel aborts waits for an RCU grace period (some milliseconds).
        if !nft.has_table(&table)? {
            // The first guarded link on this parent: the table, its sets
            // and rules, and the link's keys, in one transaction.
            let mut made = outer_table_batch(parent);
            for (set, keys) in &keys {
                made.add_elements(&table, set, keys);
            }
            match nft.apply(&made, &format!("make nftables table {table}")) {
                // Another state directory's run on this host (two test
                // nodes) made it in between: it is the same table.
                Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST as i32) => {}
                other => return other,
            }
        }
        let mut elements = Batch::new();
        for (set, keys) in &keys {
            elements.add_elements(&table, set, keys);
        }
        match nft.apply(&elements, &op) {
            // The table lacks one of the sets: an nsbypass with another
            // layout made it (an upgrade). Made anew with this link's
            // keys; `gc` puts back the other links' (`converge`).
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT as i32) => {
                tracing::warn!(table, "the guard table had another layout: made anew; nsbypass gc restores the other links' keys");
                let mut made = Batch::new();
                made.destroy_table(&table);
                made.extend(outer_table_batch(parent));
                for (set, keys) in &keys {
                    made.add_elements(&table, set, keys);
                }
                nft.apply(&made, &format!("make nftables table {table} anew"))
            }
            other => other,
        }
    }

    fn remove(&mut self, parent: &str, guard: &Guard) -> nsutil::Result<()> {
        let table = outer_table(parent);
        let nft = self.nft()?;
        let Some(macs) = nft.set_keys(&table, SET_MACS)? else {
            return Ok(());
        };
        let mut batch = Batch::new();
        if macs.iter().all(|m| *m == guard.mac) {
            // The last guarded link on this parent: the table goes.
            batch.destroy_table(&table);
        } else {
            for (set, keys) in guard.outer_keys() {
                batch.destroy_elements(&table, set, &keys);
            }
        }
        nft.apply(
            &batch,
            &format!("remove the link's keys from nftables table {table}"),
        )
    }

    fn converge(&mut self, wanted: &BTreeMap<String, Vec<Guard>>) -> nsutil::Result<Vec<String>> {
        let nft = self.nft()?;
        let mut removed = Vec::new();
        let mut seen = BTreeSet::new();
        for table in nft.tables()? {
            let Some(parent) = table.strip_prefix(OUTER_PREFIX) else {
                continue;
            };
            seen.insert(parent.to_owned());
            let guards = wanted.get(parent).map(Vec::as_slice).unwrap_or(&[]);
            let op = format!("converge nftables table {table}");
            if guards.is_empty() {
                let mut batch = Batch::new();
                batch.destroy_table(&table);
                nft.apply(&batch, &op)?;
                removed.push(table.clone());
                continue;
            }
            let mut keep: BTreeMap<&str, BTreeSet<Vec<u8>>> = BTreeMap::new();
            for guard in guards {
                for (set, keys) in guard.outer_keys() {
                    keep.entry(set).or_default().extend(keys);
                }
            }
            let mut have = BTreeMap::new();
            for set in ALL_SETS {
                have.insert(set, nft.set_keys(&table, set)?);
            }
            let mut batch = Batch::new();
            if have.values().any(Option::is_none) {
                // Made by an nsbypass with other sets (an upgrade): made
                // anew, with every recorded link's keys.
                batch.destroy_table(&table);
                batch.extend(outer_table_batch(parent));
            } else {
                for (set, keys) in &have {
                    let stale: Vec<Vec<u8>> = keys
                        .iter()
                        .flatten()
                        .filter(|key| !keep.get(set).is_some_and(|k| k.contains(*key)))
                        .cloned()
                        .collect();
                    batch.destroy_elements(&table, set, &stale);
                }
            }
            // And every recorded link's keys, which a rebuild, or a run
            // killed between the link's record and its keys, may lack.
            for (set, keys) in &keep {
                batch.add_elements(&table, set, &keys.iter().cloned().collect::<Vec<_>>());
            }
            nft.apply(&batch, &op)?;
        }
        for (parent, guards) in wanted {
            if seen.contains(parent) || guards.is_empty() {
                continue;
            }
            let table = outer_table(parent);
            let mut batch = outer_table_batch(parent);
            for guard in guards {
                for (set, keys) in guard.outer_keys() {
                    batch.add_elements(&table, set, &keys);
                }
            }
            nft.apply(&batch, &format!("make nftables table {table}"))?;
        }
        Ok(removed)
    }

    fn holds(&mut self, parent: &str, mac: [u8; 6]) -> nsutil::Result<bool> {
        Ok(self
            .nft()?
            .set_keys(&outer_table(parent), SET_MACS)?
            .is_some_and(|macs| macs.contains(&mac.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard {
            mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            v4: vec!["10.1.0.5".parse().unwrap()],
            v6: vec!["fd00::5".parse().unwrap()],
            ethertypes: vec![0x88F7],
            passthru: false,
        }
    }

    #[test]
    fn the_link_local_is_the_eui64_of_the_mac() {
        assert_eq!(
            guard().link_local(),
            "fe80::11:22ff:fe33:4455".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn keys_are_the_sets_lengths_and_name_only_this_link() {
        let g = guard();
        let lengths: BTreeMap<&str, u32> = [
            (SET_MACS, 6),
            (SET_LLA, 16),
            (SET_V4, 12),
            (SET_ARP, 20),
            (SET_V6, 24),
            (SET_ETHERTYPES, 12),
            (SET_OWNED4, 4),
            (SET_OWNED6, 16),
        ]
        .into();
        for (set, keys) in g.outer_keys() {
            assert!(!keys.is_empty(), "{set}");
            for key in &keys {
                assert_eq!(key.len() as u32, lengths[set], "{set}");
            }
        }
        let keys: BTreeMap<_, _> = g.outer_keys().into_iter().collect();
        // 0.0.0.0 may be sent from the link's MAC but is nobody's.
        assert_eq!(keys[SET_V4].len(), 2);
        assert_eq!(keys[SET_OWNED4], vec![vec![10, 1, 0, 5]]);
        // IPv6: the lease, the link-local, and :: (DAD); owned: not ::.
        assert_eq!(keys[SET_V6].len(), 3);
        assert_eq!(keys[SET_OWNED6].len(), 2);
        assert_eq!(
            keys[SET_ETHERTYPES],
            vec![vec![
                2, 0x11, 0x22, 0x33, 0x44, 0x55, 0, 0, 0x88, 0xF7, 0, 0
            ]]
        );
    }

    #[test]
    fn layer2_only_and_passthru_links_stay_off_the_parent() {
        let mut g = guard();
        assert!(g.on_parent());
        g.passthru = true;
        assert!(!g.on_parent());
        let l2 = Guard {
            v4: vec![],
            v6: vec![],
            ..guard()
        };
        assert!(l2.layer2_only() && !l2.on_parent());
    }

    #[test]
    fn macs_parse_only_whole() {
        assert_eq!(parse_mac("02:11:22:33:44:55"), Some(guard().mac));
        assert_eq!(parse_mac("02:11:22:33:44"), None);
        assert_eq!(parse_mac("02:11:22:33:44:55:66"), None);
    }
}
