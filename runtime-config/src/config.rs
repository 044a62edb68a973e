//! The admin's config file: which networks and bypass-stack profiles exist
//! and how the hook logs.
//!
//! The file is parsed into raw serde structs first and then checked key by key,
//! so that every mistake is reported as one line naming the file, the network
//! and the key, before any container is touched.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::leases::{LeaseConfig, RawLeases};
use crate::names::{check_ifname, check_network_name};
use crate::profile::{Profile, RawProfile};

/// Where the config lives when neither `--config` nor `$NSBYPASS_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nsbypass/config.toml";
/// Default state directory: on tmpfs, so no lease survives a reboot that killed its container.
pub const DEFAULT_STATE_DIR: &str = "/run/nsbypass";

/// A config file that could not be used. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key; `line:col` points at it.
    #[error("config {path}:{line}:{col}: {}", control_escaped(message))]
    Syntax {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    /// A value that parses but makes no sense (address outside the subnet,
    /// relative path, ...). `section` is `network NAME` or `profile NAME`;
    /// a NAME is the file's own table key, so it is shown escaped.
    #[error("config {path}: {}: {key}: {}", section.escape_debug(), control_escaped(message))]
    Invalid {
        path: PathBuf,
        section: String,
        key: &'static str,
        message: String,
    },
}

/// `message` with its control characters escaped (`\n` for a newline):
/// messages quote the file's values (a path, a name), and an error is one
/// line whatever they hold.
fn control_escaped(message: &str) -> String {
    message
        .chars()
        .map(|c| match c.is_control() {
            true => c.escape_debug().to_string(),
            false => c.to_string(),
        })
        .collect()
}

/// The validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from, for error messages.
    pub path: PathBuf,
    pub state_dir: PathBuf,
    pub log: LogConfig,
    pub networks: BTreeMap<String, Network>,
    pub profiles: BTreeMap<String, Profile>,
    /// Limits per parent NIC, by its name (`[parents.NAME]`).
    pub parents: BTreeMap<String, Parent>,
    /// Where requests may come from (`[requests]`).
    pub requests: Requests,
    /// Where address leases are kept (`[leases]`).
    pub leases: LeaseConfig,
}

/// Where requests may come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    /// Whether the container's environment (`NSBYPASS_NETWORK`, ...) counts
    /// as a request where annotations are missing. Off by default: an
    /// image's own `ENV` is in its author's hands, not the operator's.
    #[serde(default)]
    pub from_env: bool,
}

/// What the admin allows on one parent NIC.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parent {
    /// The most nsbypass links (across all networks) the parent may carry
    /// at once: every child's MAC takes a slot in the NIC's unicast filter,
    /// and a NIC whose filter overflows turns promiscuous.
    pub max_links: Option<u32>,
}

/// Where and how the hook logs; runtimes swallow hook output, so a file is the
/// only way to see what a hook did after the fact.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub level: LogLevel,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// MACVLAN mode, as the kernel names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

impl MacvlanMode {
    /// `IFLA_MACVLAN_MODE` as linux/if_link.h numbers it (`MACVLAN_MODE_*`).
    pub fn kernel_value(self) -> u32 {
        match self {
            MacvlanMode::Private => 1,
            MacvlanMode::Vepa => 2,
            MacvlanMode::Bridge => 4,
            MacvlanMode::Passthru => 8,
        }
    }
}

/// One admin-defined network: a parent NIC and, optionally, an IPv4 pool,
/// an IPv6 pool or both on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    pub name: String,
    /// Host link the MACVLANs hang off.
    pub parent: String,
    pub mode: MacvlanMode,
    /// Interface name inside the container; `None` means `netN` by request position.
    pub ifname: Option<String>,
    /// MTU of the child; `None` inherits the parent's.
    pub mtu: Option<u32>,
    /// `None` for both: the link is layer 2 only (no address, no route).
    pub ipv4: Option<Ipv4Pool>,
    pub ipv6: Option<Ipv6Pool>,
    /// Give the host one MACVLAN of its own on the parent, with an address
    /// from the pool, while the network has attachments: a MACVLAN child
    /// cannot reach its parent's IP stack, so without it the host cannot
    /// reach its own containers. Needs an IPv4 pool and bridge mode.
    pub host_shim: bool,
    /// `IFLA_MACVLAN_BC_QUEUE_LEN` of each child: the parent's broadcast
    /// queue, which the kernel sizes to the largest value any child asked
    /// for. `None` leaves the kernel's default (1000).
    pub bc_queue_len: Option<u32>,
    /// The Kubernetes namespaces (`io.kubernetes.pod.namespace`) whose
    /// containers may join; `None`: every container may.
    pub allow_namespaces: Option<Vec<String>>,
    /// Whether a container may pin its address (`nsbypass.io/ip`).
    pub allow_static_ip: bool,
    /// The address guard: the link may send only from its own MAC and
    /// addresses (see the hook's `guard` module). On unless turned off.
    pub guard: bool,
    /// Ethertypes besides IPv4, ARP and IPv6 the guard lets out from the
    /// link's own MAC (a PTP stack's 0x88F7, say); everything else is
    /// dropped.
    pub guard_allow_ethertypes: Vec<u16>,
}

impl Network {
    /// The network's pools, IPv4 first: the order addresses are leased,
    /// recorded and configured in.
    pub fn pools(&self) -> impl Iterator<Item = Pool<'_>> {
        let v4 = self.ipv4.as_ref().map(Pool::V4);
        let v6 = self.ipv6.as_ref().map(Pool::V6);
        v4.into_iter().chain(v6)
    }

    /// Whether the network hands out addresses of any family.
    pub fn has_pool(&self) -> bool {
        self.ipv4.is_some() || self.ipv6.is_some()
    }

    /// The pool of `address`'s family, if the network has one.
    pub fn pool_for(&self, address: IpAddr) -> Option<Pool<'_>> {
        self.pools().find(|p| p.is_ipv6() == address.is_ipv6())
    }
}

/// The largest `bc_queue_len` accepted: 100 times the kernel's default.
/// Each queued entry is a broadcast frame held for every child; beyond this
/// the queue costs memory rather than buys scale.
pub const MAX_BC_QUEUE_LEN: u32 = 100_000;

/// The addresses a network hands out, and what every holder is told about the subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv4Pool {
    pub subnet: Ipv4Net,
    /// First and last address of the range, inclusive.
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    /// Destinations routed via `gateway`.
    pub routes: Vec<Ipv4Net>,
}

impl Ipv4Pool {
    /// Number of addresses in the range (the gateway included, if it falls inside).
    pub fn size(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// The `i`-th address of the range, `i < size()`.
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + i)
    }

    /// Whether `addr` may be handed to a container: inside the range and not the gateway.
    pub fn assignable(&self, addr: Ipv4Addr) -> bool {
        addr >= self.first && addr <= self.last && Some(addr) != self.gateway
    }

    /// The range as the admin wrote it, for messages.
    pub fn range_text(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
}

/// The IPv6 twin of [`Ipv4Pool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Pool {
    pub subnet: Ipv6Net,
    /// First and last address of the range, inclusive.
    pub first: Ipv6Addr,
    pub last: Ipv6Addr,
    /// Inside the subnet, or link-local (`fe80::1`, as routers often are).
    pub gateway: Option<Ipv6Addr>,
    /// Destinations routed via `gateway`.
    pub routes: Vec<Ipv6Net>,
}

impl Ipv6Pool {
    /// Number of addresses in the range, saturating: a range can span a
    /// whole /64 (2^64 addresses), which is why nobody walks it.
    pub fn size(&self) -> u128 {
        (u128::from(self.last) - u128::from(self.first)).saturating_add(1)
    }

    /// The `i`-th address of the range, `i < size()`.
    pub fn nth(&self, i: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.first) + i)
    }

    /// Whether `addr` may be handed to a container: inside the range and not the gateway.
    pub fn assignable(&self, addr: Ipv6Addr) -> bool {
        addr >= self.first && addr <= self.last && Some(addr) != self.gateway
    }

    /// The range as the admin wrote it, for messages.
    pub fn range_text(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }
}

/// Either family's pool, for code (leasing) that treats both alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool<'a> {
    V4(&'a Ipv4Pool),
    V6(&'a Ipv6Pool),
}

impl Pool<'_> {
    pub fn is_ipv6(&self) -> bool {
        matches!(self, Pool::V6(_))
    }

    /// Number of addresses in the range (the gateway included, if it falls inside).
    pub fn size(&self) -> u128 {
        match self {
            Pool::V4(p) => u128::from(p.size()),
            Pool::V6(p) => p.size(),
        }
    }

    /// The `i`-th address of the range, `i < size()`.
    pub fn nth(&self, i: u128) -> IpAddr {
        match self {
            Pool::V4(p) => IpAddr::V4(p.nth(i as u32)),
            Pool::V6(p) => IpAddr::V6(p.nth(i)),
        }
    }

    /// Whether `addr` may be handed to a container; never one of the other family.
    pub fn assignable(&self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Pool::V4(p), IpAddr::V4(a)) => p.assignable(a),
            (Pool::V6(p), IpAddr::V6(a)) => p.assignable(a),
            _ => false,
        }
    }

    pub fn gateway(&self) -> Option<IpAddr> {
        match self {
            Pool::V4(p) => p.gateway.map(IpAddr::V4),
            Pool::V6(p) => p.gateway.map(IpAddr::V6),
        }
    }

    /// The subnet's prefix length, which every address is configured with.
    pub fn prefix_len(&self) -> u8 {
        match self {
            Pool::V4(p) => p.subnet.prefix_len(),
            Pool::V6(p) => p.subnet.prefix_len(),
        }
    }

    /// Destinations routed via the gateway.
    pub fn routes(&self) -> Vec<IpNet> {
        match self {
            Pool::V4(p) => p.routes.iter().copied().map(IpNet::V4).collect(),
            Pool::V6(p) => p.routes.iter().copied().map(IpNet::V6).collect(),
        }
    }

    /// First address of the range.
    pub fn first(&self) -> IpAddr {
        match self {
            Pool::V4(p) => IpAddr::V4(p.first),
            Pool::V6(p) => IpAddr::V6(p.first),
        }
    }

    /// Last address of the range.
    pub fn last(&self) -> IpAddr {
        match self {
            Pool::V4(p) => IpAddr::V4(p.last),
            Pool::V6(p) => IpAddr::V6(p.last),
        }
    }

    /// The range as the admin wrote it, for messages.
    pub fn range_text(&self) -> String {
        match self {
            Pool::V4(p) => p.range_text(),
            Pool::V6(p) => p.range_text(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    #[serde(default)]
    log: LogConfig,
    #[serde(default)]
    networks: BTreeMap<String, RawNetwork>,
    #[serde(default)]
    profiles: BTreeMap<String, RawProfile>,
    #[serde(default)]
    parents: BTreeMap<String, Parent>,
    #[serde(default)]
    requests: Requests,
    #[serde(default)]
    leases: RawLeases,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    parent: String,
    #[serde(default)]
    mode: MacvlanMode,
    ifname: Option<String>,
    mtu: Option<u32>,
    subnet: Option<String>,
    range: Option<String>,
    gateway: Option<String>,
    subnet6: Option<String>,
    range6: Option<String>,
    gateway6: Option<String>,
    routes: Option<Vec<String>>,
    #[serde(default)]
    host_shim: bool,
    bc_queue_len: Option<u32>,
    allow_namespaces: Option<Vec<String>>,
    allow_static_ip: Option<bool>,
    guard: Option<bool>,
    guard_allow_ethertypes: Option<Vec<i64>>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Validates `text` as if it had been read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, col) = line_col(text, e.span().map_or(0, |s| s.start));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                col,
                message: e.message().trim().replace('\n', " "),
            }
        })?;
        let mut networks = BTreeMap::new();
        for (name, net) in raw.networks {
            let network =
                validate_network(&name, net).map_err(|(key, message)| ConfigError::Invalid {
                    path: path.to_owned(),
                    section: format!("network {name}"),
                    key,
                    message,
                })?;
            networks.insert(name, network);
        }
        check_overlaps(&networks).map_err(|(network, key, message)| ConfigError::Invalid {
            path: path.to_owned(),
            section: format!("network {network}"),
            key,
            message,
        })?;
        let mut profiles = BTreeMap::new();
        for (name, raw) in raw.profiles {
            let profile =
                Profile::validate(&name, raw).map_err(|(key, message)| ConfigError::Invalid {
                    path: path.to_owned(),
                    section: format!("profile {name}"),
                    key,
                    message,
                })?;
            profiles.insert(name, profile);
        }
        for (name, parent) in &raw.parents {
            let invalid = |key, message| ConfigError::Invalid {
                path: path.to_owned(),
                section: format!("parent {name}"),
                key,
                message,
            };
            check_ifname(name).map_err(|m| invalid("name", m))?;
            if parent.max_links == Some(0) {
                return Err(invalid(
                    "max_links",
                    "0 allows no link at all; leave the parent out of every network instead".into(),
                ));
            }
        }
        let leases = raw
            .leases
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                section: "leases".to_owned(),
                key,
                message,
            })?;
        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        if !state_dir.is_absolute() {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: 1,
                col: 1,
                message: format!("state_dir {} is not an absolute path", state_dir.display()),
            });
        }
        Ok(Config {
            path: path.to_owned(),
            state_dir,
            log: raw.log,
            networks,
            profiles,
            parents: raw.parents,
            requests: raw.requests,
            leases,
        })
    }
}

type KeyError = (&'static str, String);

fn validate_network(name: &str, raw: RawNetwork) -> Result<Network, KeyError> {
    check_network_name(name).map_err(|m| ("name", m))?;
    check_ifname(&raw.parent).map_err(|m| ("parent", m))?;
    if let Some(ifname) = &raw.ifname {
        check_ifname(ifname).map_err(|m| ("ifname", m))?;
    }
    if let Some(mtu) = raw.mtu {
        if !(68..=65535).contains(&mtu) {
            return Err(("mtu", format!("{mtu} is not between 68 and 65535")));
        }
    }
    let stray = |keys: [(&'static str, bool); 2], needs: &str| -> Result<(), KeyError> {
        match keys.into_iter().find(|(_, set)| *set) {
            Some((key, _)) => Err((key, format!("needs {needs}"))),
            None => Ok(()),
        }
    };
    let mut ipv4 = match raw.subnet {
        Some(subnet) => Some(validate_pool(&subnet, raw.range, raw.gateway)?),
        None => {
            let keys = [
                ("range", raw.range.is_some()),
                ("gateway", raw.gateway.is_some()),
            ];
            stray(keys, "a subnet")?;
            None
        }
    };
    let mut ipv6 = match raw.subnet6 {
        Some(subnet) => Some(validate_pool6(&subnet, raw.range6, raw.gateway6)?),
        None => {
            let keys = [
                ("range6", raw.range6.is_some()),
                ("gateway6", raw.gateway6.is_some()),
            ];
            stray(keys, "subnet6")?;
            None
        }
    };
    if let Some(routes) = raw.routes {
        assign_routes(&routes, &mut ipv4, &mut ipv6).map_err(|m| ("routes", m))?;
    }
    check_host_shim(raw.host_shim, raw.mode, ipv4.is_some())?;
    if let Some(len) = raw.bc_queue_len {
        if !(1..=MAX_BC_QUEUE_LEN).contains(&len) {
            return Err((
                "bc_queue_len",
                format!("{len} is not between 1 and {MAX_BC_QUEUE_LEN}"),
            ));
        }
        if raw.mode == MacvlanMode::Passthru {
            return Err((
                "bc_queue_len",
                "passthru has a single child and no broadcast queue to size".into(),
            ));
        }
    }
    let guard_allow_ethertypes = validate_ethertypes(raw.guard_allow_ethertypes)?;
    if raw.guard == Some(false) && !guard_allow_ethertypes.is_empty() {
        return Err((
            "guard_allow_ethertypes",
            "the network has guard = false, so nothing is dropped to allow".into(),
        ));
    }
    Ok(Network {
        name: name.to_owned(),
        parent: raw.parent,
        mode: raw.mode,
        ifname: raw.ifname,
        mtu: raw.mtu,
        ipv4,
        ipv6,
        host_shim: raw.host_shim,
        bc_queue_len: raw.bc_queue_len,
        allow_namespaces: validate_namespaces(raw.allow_namespaces)?,
        allow_static_ip: raw.allow_static_ip.unwrap_or(true),
        guard: raw.guard.unwrap_or(true),
        guard_allow_ethertypes,
    })
}

/// `guard_allow_ethertypes`: Ethernet II types (0x0600 and up; below is an
/// 802.3 length), each once, none of the three the guard checks by
/// address (letting IPv4, ARP or IPv6 out wholesale would undo it) and no
/// VLAN tag (whose inner frame it does not check).
fn validate_ethertypes(list: Option<Vec<i64>>) -> Result<Vec<u16>, KeyError> {
    let key = "guard_allow_ethertypes";
    let mut out: Vec<u16> = Vec::new();
    for value in list.unwrap_or_default() {
        let Ok(ethertype) = u16::try_from(value) else {
            return Err((
                key,
                format!("{value} is not an ethertype (0x0600 to 0xFFFF)"),
            ));
        };
        if ethertype < 0x0600 {
            return Err((
                key,
                format!("{ethertype:#06x} is an 802.3 length, not an ethertype (0x0600 to 0xFFFF)"),
            ));
        }
        let checked = match ethertype {
            0x0800 => Some("IPv4"),
            0x0806 => Some("ARP"),
            0x86DD => Some("IPv6"),
            _ => None,
        };
        // A VLAN tag carries a whole inner frame, which the guard's fixed
        // offsets do not read: Linux takes a priority-tagged (VLAN 0)
        // frame as untagged, so its inner IPv4, ARP or IPv6 would go out
        // unchecked.
        let tag = match ethertype {
            0x8100 => Some("an 802.1Q VLAN tag"),
            0x88A8 => Some("an 802.1ad (QinQ) VLAN tag"),
            0x9100 => Some("a QinQ VLAN tag"),
            _ => None,
        };
        if let Some(what) = tag {
            return Err((
                key,
                format!("{ethertype:#06x} is {what}, whose inner frame (IPv4, ARP, IPv6 too) the guard does not check; set guard = false to turn the guard off"),
            ));
        }
        if let Some(what) = checked {
            return Err((
                key,
                format!("{ethertype:#06x} is {what}, which the guard checks by address and cannot let out wholesale; set guard = false to turn the guard off"),
            ));
        }
        if out.contains(&ethertype) {
            return Err((key, format!("{ethertype:#06x} is listed twice")));
        }
        out.push(ethertype);
    }
    Ok(out)
}

/// `allow_namespaces`: Kubernetes namespace names, each once.
pub(crate) fn validate_namespaces(
    list: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, KeyError> {
    let Some(list) = list else {
        return Ok(None);
    };
    for (i, name) in list.iter().enumerate() {
        crate::names::check_namespace_name(name).map_err(|m| ("allow_namespaces", m))?;
        if list[..i].contains(name) {
            return Err(("allow_namespaces", format!("{name:?} is listed twice")));
        }
    }
    Ok(Some(list))
}

/// The host shim is a sibling of the containers' MACVLANs: it needs a mode
/// in which siblings reach each other, and a pool to take its address from.
fn check_host_shim(on: bool, mode: MacvlanMode, has_pool: bool) -> Result<(), KeyError> {
    if !on {
        return Ok(());
    }
    let why = match mode {
        MacvlanMode::Bridge => None,
        MacvlanMode::Private => Some("mode private forbids traffic between a parent's MACVLANs, so the shim could not reach the containers; use mode bridge"),
        MacvlanMode::Vepa => Some("mode vepa sends traffic between a parent's MACVLANs out to the switch, which must hairpin it back (most do not); use mode bridge"),
        MacvlanMode::Passthru => Some("mode passthru gives the parent to a single MACVLAN, leaving none for the shim; use mode bridge"),
    };
    if let Some(why) = why {
        return Err(("host_shim", why.into()));
    }
    if !has_pool {
        return Err((
            "host_shim",
            "needs a subnet: the shim takes its address from the pool".into(),
        ));
    }
    Ok(())
}

fn validate_pool(
    subnet: &str,
    range: Option<String>,
    gateway: Option<String>,
) -> Result<Ipv4Pool, KeyError> {
    let subnet = parse_net(subnet).map_err(|m| ("subnet", m))?;
    // Network and broadcast addresses are only hosts in /31 and /32 subnets.
    let (lowest, highest) = if subnet.prefix_len() >= 31 {
        (subnet.network(), subnet.broadcast())
    } else {
        (
            Ipv4Addr::from(u32::from(subnet.network()) + 1),
            Ipv4Addr::from(u32::from(subnet.broadcast()) - 1),
        )
    };
    let host = |key: &'static str, addr: Ipv4Addr| -> Result<Ipv4Addr, KeyError> {
        if addr < lowest || addr > highest {
            return Err((
                key,
                format!("{addr} is not a host address of subnet {subnet}"),
            ));
        }
        Ok(addr)
    };

    let gateway = match gateway {
        Some(g) => Some(host(
            "gateway",
            parse_addr(&g).map_err(|m| ("gateway", m))?,
        )?),
        None => None,
    };
    let (first, last) = match range {
        Some(r) => parse_range(&r, "range", parse_addr, host)?,
        None => (lowest, highest),
    };
    if first == last && Some(first) == gateway {
        return Err((
            "range",
            "holds only the gateway: no address to hand out".into(),
        ));
    }
    Ok(Ipv4Pool {
        subnet,
        first,
        last,
        gateway,
        routes: Vec::new(),
    })
}

/// `subnet6`, `range6` and `gateway6`. The default range is the whole
/// subnet but its first address, the subnet-router anycast address
/// (RFC 4291 2.6.1); a /64 is 2^64 addresses, which the lease search never
/// walks (it starts at a slot derived from the container and tries a
/// bounded number).
fn validate_pool6(
    subnet: &str,
    range: Option<String>,
    gateway: Option<String>,
) -> Result<Ipv6Pool, KeyError> {
    let subnet = parse_net6(subnet).map_err(|m| ("subnet6", m))?;
    // /127 (RFC 6164) and /128 have no anycast address to spare.
    let lowest = if subnet.prefix_len() >= 127 {
        subnet.network()
    } else {
        Ipv6Addr::from(u128::from(subnet.network()) + 1)
    };
    let highest = subnet.broadcast();
    let host = |key: &'static str, addr: Ipv6Addr| -> Result<Ipv6Addr, KeyError> {
        if addr < lowest || addr > highest {
            return Err((
                key,
                format!("{addr} is not a host address of subnet6 {subnet}"),
            ));
        }
        Ok(addr)
    };
    let gateway = match gateway {
        Some(g) => {
            let addr = parse_addr6(&g).map_err(|m| ("gateway6", m))?;
            // Routers are often known by their link-local address only.
            let link_local = addr.segments()[0] & 0xffc0 == 0xfe80;
            Some(if link_local {
                addr
            } else {
                host("gateway6", addr)?
            })
        }
        None => None,
    };
    let (first, last) = match range {
        Some(r) => parse_range(&r, "range6", parse_addr6, host)?,
        None => (lowest, highest),
    };
    if first == last && Some(first) == gateway {
        return Err((
            "range6",
            "holds only gateway6: no address to hand out".into(),
        ));
    }
    Ok(Ipv6Pool {
        subnet,
        first,
        last,
        gateway,
        routes: Vec::new(),
    })
}

/// Sorts `routes` into the pools: an IPv4 prefix goes via `gateway`, an
/// IPv6 one via `gateway6`, and "default" is the default route of each
/// family that has a gateway.
fn assign_routes(
    routes: &[String],
    ipv4: &mut Option<Ipv4Pool>,
    ipv6: &mut Option<Ipv6Pool>,
) -> Result<(), String> {
    if ipv4.is_none() && ipv6.is_none() {
        return Err("needs a subnet or subnet6".into());
    }
    const VIA_GATEWAY: &str = "routes go via the gateway: set gateway";
    const VIA_GATEWAY6: &str = "IPv6 routes go via gateway6: set gateway6";
    for route in routes {
        if route.trim() == "default" {
            let v4 = ipv4.as_mut().filter(|p| p.gateway.is_some());
            let v6 = ipv6.as_mut().filter(|p| p.gateway.is_some());
            if v4.is_none() && v6.is_none() {
                return Err(if ipv4.is_some() {
                    VIA_GATEWAY.into()
                } else {
                    VIA_GATEWAY6.into()
                });
            }
            if let Some(pool) = v4 {
                pool.routes.push(Ipv4Net::default());
            }
            if let Some(pool) = v6 {
                pool.routes.push(Ipv6Net::default());
            }
            continue;
        }
        match parse_prefix(route)? {
            IpNet::V4(net) => {
                let pool = ipv4
                    .as_mut()
                    .ok_or_else(|| format!("{net} is IPv4, but the network has no subnet"))?;
                if pool.gateway.is_none() {
                    return Err(VIA_GATEWAY.into());
                }
                pool.routes.push(net);
            }
            IpNet::V6(net) => {
                let pool = ipv6
                    .as_mut()
                    .ok_or_else(|| format!("{net} is IPv6, but the network has no subnet6"))?;
                if pool.gateway.is_none() {
                    return Err(VIA_GATEWAY6.into());
                }
                pool.routes.push(net);
            }
        }
    }
    Ok(())
}

/// `FIRST-LAST` of either family, each end a host address of the subnet
/// (`host` checks), in order.
fn parse_range<A: Copy + PartialOrd + std::fmt::Display>(
    range: &str,
    key: &'static str,
    parse: impl Fn(&str) -> Result<A, String>,
    host: impl Fn(&'static str, A) -> Result<A, KeyError>,
) -> Result<(A, A), KeyError> {
    let (a, b) = range
        .split_once('-')
        .ok_or((key, format!("{range:?} is not of the form FIRST-LAST")))?;
    let first = host(key, parse(a).map_err(|m| (key, m))?)?;
    let last = host(key, parse(b).map_err(|m| (key, m))?)?;
    if first > last {
        return Err((key, format!("{first} comes after {last}")));
    }
    Ok((first, last))
}

/// Two pools on one parent share an L2 but not a lease directory: ranges
/// of one family that overlap there would hand out one address twice.
/// The error names the later network and its range key.
fn check_overlaps(
    networks: &BTreeMap<String, Network>,
) -> Result<(), (String, &'static str, String)> {
    let pools: Vec<(&Network, Pool)> = networks
        .values()
        .flat_map(|n| n.pools().map(move |p| (n, p)))
        .collect();
    for (i, (a, pa)) in pools.iter().enumerate() {
        for (b, pb) in &pools[i + 1..] {
            let same_family = pa.is_ipv6() == pb.is_ipv6();
            let overlap = pa.first() <= pb.last() && pb.first() <= pa.last();
            if a.parent == b.parent && same_family && overlap {
                return Err((
                    b.name.clone(),
                    if pb.is_ipv6() { "range6" } else { "range" },
                    format!(
                        "{} overlaps network {}'s {} on the same parent {}",
                        pb.range_text(),
                        a.name,
                        pa.range_text(),
                        a.parent
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn parse_addr(s: &str) -> Result<Ipv4Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IPv4 address", s.trim()))
}

fn parse_addr6(s: &str) -> Result<Ipv6Addr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{:?} is not an IPv6 address", s.trim()))
}

fn parse_net(s: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = s.trim().parse().map_err(|_| {
        let hint = if s.parse::<Ipv6Net>().is_ok() {
            " (an IPv6 prefix goes in subnet6)"
        } else {
            ""
        };
        format!("{s:?} is not an IPv4 prefix like 10.10.0.0/24{hint}")
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

fn parse_net6(s: &str) -> Result<Ipv6Net, String> {
    let net: Ipv6Net = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv6 prefix like fd00:77::/64"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A route's destination, of either family.
fn parse_prefix(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s.trim().parse().map_err(|_| {
        format!("{s:?} is not a prefix like 10.20.0.0/16 or fd00:20::/48, nor \"default\"")
    })?;
    if net.addr() != net.network() {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/nsbypass/config.toml"))
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn macvlan_modes_have_the_kernel_values() {
        // MACVLAN_MODE_* in linux/if_link.h.
        assert_eq!(MacvlanMode::Private.kernel_value(), 1);
        assert_eq!(MacvlanMode::Vepa.kernel_value(), 2);
        assert_eq!(MacvlanMode::Bridge.kernel_value(), 4);
        assert_eq!(MacvlanMode::Passthru.kernel_value(), 8);
    }

    const FULL: &str = r#"
state_dir = "/run/x"
[log]
file = "/var/log/nsbypass.log"
level = "debug"
format = "json"

[networks.fast]
parent = "ens1f0"
mode = "private"
ifname = "fast0"
mtu = 9000
subnet = "10.10.0.0/24"
range = "10.10.0.100-10.10.0.199"
gateway = "10.10.0.1"
routes = ["10.20.0.0/16", "default"]

[networks.l2]
parent = "ens1f1"
"#;

    #[test]
    fn full_example_parses() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/x"));
        assert_eq!(c.log.level, LogLevel::Debug);
        assert_eq!(c.log.format, LogFormat::Json);
        let fast = &c.networks["fast"];
        assert_eq!(fast.mode, MacvlanMode::Private);
        assert_eq!(fast.ifname.as_deref(), Some("fast0"));
        assert_eq!(fast.mtu, Some(9000));
        let pool = fast.ipv4.as_ref().unwrap();
        assert_eq!(pool.size(), 100);
        assert_eq!(pool.nth(0), Ipv4Addr::new(10, 10, 0, 100));
        assert_eq!(pool.routes.len(), 2);
        assert_eq!(pool.routes[1], "0.0.0.0/0".parse::<Ipv4Net>().unwrap());
        let l2 = &c.networks["l2"];
        assert_eq!(l2.mode, MacvlanMode::Bridge);
        assert!(l2.ipv4.is_none());
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.log, LogConfig::default());
        assert!(c.networks.is_empty());
    }

    #[test]
    fn default_range_is_every_host_but_the_gateway() {
        let c =
            parse("[networks.a]\nparent = \"p\"\nsubnet = \"10.1.0.0/29\"\ngateway = \"10.1.0.1\"")
                .unwrap();
        let pool = c.networks["a"].ipv4.clone().unwrap();
        assert_eq!(
            (pool.first, pool.last),
            ("10.1.0.1".parse().unwrap(), "10.1.0.6".parse().unwrap())
        );
        assert!(!pool.assignable("10.1.0.1".parse().unwrap()));
        assert!(pool.assignable("10.1.0.2".parse().unwrap()));
        assert!(!pool.assignable("10.1.0.7".parse().unwrap()));
    }

    #[test]
    fn dual_stack_routes_go_to_their_family_and_default_to_both() {
        let c = parse(
            "[networks.a]\nparent = \"p\"\nsubnet = \"10.1.0.0/24\"\ngateway = \"10.1.0.1\"\n\
             subnet6 = \"fd00:77::/64\"\nrange6 = \"fd00:77::100-fd00:77::1ff\"\ngateway6 = \"fd00:77::1\"\n\
             routes = [\"10.20.0.0/16\", \"fd00:20::/48\", \"default\"]",
        )
        .unwrap();
        let a = &c.networks["a"];
        let (v4, v6) = (a.ipv4.as_ref().unwrap(), a.ipv6.as_ref().unwrap());
        assert_eq!(
            v4.routes,
            ["10.20.0.0/16", "0.0.0.0/0"].map(|r| r.parse().unwrap())
        );
        assert_eq!(
            v6.routes,
            ["fd00:20::/48", "::/0"].map(|r| r.parse().unwrap())
        );
        assert_eq!(v6.size(), 256);
        assert_eq!(v6.gateway, Some("fd00:77::1".parse().unwrap()));
        let pools: Vec<bool> = a.pools().map(|p| p.is_ipv6()).collect();
        assert_eq!(pools, [false, true], "IPv4 first");
        assert!(a
            .pool_for("fd00:77::150".parse().unwrap())
            .unwrap()
            .is_ipv6());

        // "default" is the default route of each family with a gateway.
        let c = parse(
            "[networks.a]\nparent = \"p\"\nsubnet = \"10.1.0.0/24\"\n\
             subnet6 = \"fd00:77::/64\"\ngateway6 = \"fe80::1\"\nroutes = [\"default\"]",
        )
        .unwrap();
        let a = &c.networks["a"];
        assert!(a.ipv4.as_ref().unwrap().routes.is_empty());
        assert_eq!(a.ipv6.as_ref().unwrap().routes, ["::/0".parse().unwrap()]);
        assert_eq!(
            a.ipv6.as_ref().unwrap().gateway,
            Some("fe80::1".parse().unwrap()),
            "a link-local gateway is fine"
        );
    }

    #[test]
    fn ipv6_only_network_with_the_default_range() {
        let c = parse("[networks.a]\nparent = \"p\"\nsubnet6 = \"fd00:77::/64\"").unwrap();
        let a = &c.networks["a"];
        assert!(a.ipv4.is_none() && a.has_pool());
        let v6 = a.ipv6.as_ref().unwrap();
        // Everything but the subnet-router anycast address ::0.
        assert_eq!(
            (v6.first, v6.last),
            (
                "fd00:77::1".parse().unwrap(),
                "fd00:77::ffff:ffff:ffff:ffff".parse().unwrap()
            )
        );
        assert_eq!(v6.size(), (1u128 << 64) - 1);
        let c = parse("[networks.a]\nparent = \"p\"\nsubnet6 = \"fd00::/127\"").unwrap();
        assert_eq!(c.networks["a"].ipv6.as_ref().unwrap().size(), 2);
        let c = parse("[networks.a]\nparent = \"p\"\nsubnet6 = \"::/0\"").unwrap();
        assert_eq!(c.networks["a"].ipv6.as_ref().unwrap().size(), u128::MAX);
        let c = parse("[networks.a]\nparent = \"p\"").unwrap();
        assert!(!c.networks["a"].has_pool());
    }

    #[test]
    fn slash_31_uses_both_addresses() {
        let c = parse("[networks.a]\nparent = \"p\"\nsubnet = \"10.1.0.0/31\"").unwrap();
        assert_eq!(c.networks["a"].ipv4.as_ref().unwrap().size(), 2);
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_file() {
        let e = err("[networks.a]\nparent = \"p\"\nmtuu = 1500\n");
        assert!(
            e.starts_with("config /etc/nsbypass/config.toml:3:1:"),
            "{e}"
        );
        assert!(e.contains("mtuu"), "{e}");
        let e = err("statedir = \"/x\"");
        assert!(
            e.contains("statedir") && e.contains("config.toml:1:1"),
            "{e}"
        );
        let e = err("[log]\nlevel = \"loud\"");
        assert!(e.contains("loud"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn a_table_name_with_a_newline_is_one_line() {
        // Caught by the one-line check of fuzz/fuzz_targets/config.rs.
        for (text, want) in [
            (
                "[networks.\"a\\nb\"]\nparent = \"eth0\"\n",
                "config /etc/nsbypass/config.toml: network a\\nb: name: ",
            ),
            (
                "[parents.\"a\\nb\"]\nmax_links = 1\n",
                ": parent a\\nb: name: ",
            ),
            ("[profiles.\"a\\nb\"]\n", ": profile a\\nb: name: "),
        ] {
            let e = err(text);
            assert!(e.contains(want), "{e}");
            assert!(!e.contains('\n'), "one line: {e:?}");
        }
    }

    #[test]
    fn every_validation_error() {
        let net = |body: &str| err(&format!("[networks.fast]\nparent = \"eth9\"\n{body}"));
        let cases = [
            (
                "mtu = 20",
                "network fast: mtu: 20 is not between 68 and 65535",
            ),
            (
                "ifname = \"a-very-long-ifname\"",
                "ifname: \"a-very-long-ifname\" is longer than 15 bytes",
            ),
            ("ifname = \"a/b\"", "ifname: \"a/b\" may not contain"),
            ("range = \"10.0.0.1-10.0.0.2\"", "range: needs a subnet"),
            ("gateway = \"10.0.0.1\"", "gateway: needs a subnet"),
            ("routes = [\"default\"]", "routes: needs a subnet"),
            (
                "subnet = \"10.0.0.0\"",
                "subnet: \"10.0.0.0\" is not an IPv4 prefix",
            ),
            (
                "subnet = \"10.0.0.5/24\"",
                "subnet: 10.0.0.5/24 has host bits set; did you mean 10.0.0.0/24?",
            ),
            (
                "subnet = \"fd00::/64\"",
                "subnet: \"fd00::/64\" is not an IPv4 prefix",
            ),
            (
                "subnet = \"10.0.0.0/24\"\nrange = \"10.0.0.9\"",
                "range: \"10.0.0.9\" is not of the form FIRST-LAST",
            ),
            (
                "subnet = \"10.0.0.0/24\"\nrange = \"10.0.0.9-10.0.1.2\"",
                "range: 10.0.1.2 is not a host address of subnet 10.0.0.0/24",
            ),
            (
                "subnet = \"10.0.0.0/24\"\nrange = \"10.0.0.0-10.0.0.2\"",
                "range: 10.0.0.0 is not a host address",
            ),
            (
                "subnet = \"10.0.0.0/24\"\nrange = \"10.0.0.9-10.0.0.2\"",
                "range: 10.0.0.9 comes after 10.0.0.2",
            ),
            (
                "subnet = \"10.0.0.0/24\"\nrange = \"10.0.0.x-10.0.0.2\"",
                "range: \"10.0.0.x\" is not an IPv4 address",
            ),
            (
                "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.255\"",
                "gateway: 10.0.0.255 is not a host address",
            ),
            (
                "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\nrange = \"10.0.0.1-10.0.0.1\"",
                "range: holds only the gateway",
            ),
            (
                "subnet = \"10.0.0.0/24\"\nroutes = [\"10.2.0.0/16\"]",
                "routes: routes go via the gateway: set gateway",
            ),
            (
                "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\nroutes = [\"10.2.0.1/16\"]",
                "routes: 10.2.0.1/16 has host bits set",
            ),
            ("mode = \"l3\"", "unknown variant `l3`"),
            ("range6 = \"fd00::1-fd00::2\"", "range6: needs subnet6"),
            ("gateway6 = \"fd00::1\"", "gateway6: needs subnet6"),
            ("subnet = \"fd00::/64\"", "(an IPv6 prefix goes in subnet6)"),
            (
                "subnet6 = \"10.0.0.0/24\"",
                "subnet6: \"10.0.0.0/24\" is not an IPv6 prefix like fd00:77::/64",
            ),
            (
                "subnet6 = \"fd00::1/64\"",
                "subnet6: fd00::1/64 has host bits set; did you mean fd00::/64?",
            ),
            (
                "subnet6 = \"fd00::/64\"\nrange6 = \"fd00::9\"",
                "range6: \"fd00::9\" is not of the form FIRST-LAST",
            ),
            (
                "subnet6 = \"fd00::/64\"\nrange6 = \"fd00::0-fd00::9\"",
                "range6: fd00:: is not a host address of subnet6 fd00::/64",
            ),
            (
                "subnet6 = \"fd00::/64\"\nrange6 = \"fd00::9-fd00:0:0:1::1\"",
                "range6: fd00:0:0:1::1 is not a host address of subnet6 fd00::/64",
            ),
            (
                "subnet6 = \"fd00::/64\"\nrange6 = \"fd00::9-fd00::2\"",
                "range6: fd00::9 comes after fd00::2",
            ),
            (
                "subnet6 = \"fd00::/64\"\nrange6 = \"fd00::x-fd00::2\"",
                "range6: \"fd00::x\" is not an IPv6 address",
            ),
            (
                "subnet6 = \"fd00::/64\"\ngateway6 = \"fd01::1\"",
                "gateway6: fd01::1 is not a host address of subnet6 fd00::/64",
            ),
            (
                "subnet6 = \"fd00::/64\"\ngateway6 = \"10.0.0.1\"",
                "gateway6: \"10.0.0.1\" is not an IPv6 address",
            ),
            (
                "subnet6 = \"fd00::/64\"\ngateway6 = \"fd00::1\"\nrange6 = \"fd00::1-fd00::1\"",
                "range6: holds only gateway6",
            ),
            (
                "subnet6 = \"fd00::/64\"\nroutes = [\"fd00:20::/48\"]",
                "routes: IPv6 routes go via gateway6: set gateway6",
            ),
            (
                "subnet6 = \"fd00::/64\"\nroutes = [\"default\"]",
                "routes: IPv6 routes go via gateway6: set gateway6",
            ),
            (
                "subnet6 = \"fd00::/64\"\ngateway6 = \"fd00::1\"\nroutes = [\"10.2.0.0/16\"]",
                "routes: 10.2.0.0/16 is IPv4, but the network has no subnet",
            ),
            (
                "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\nroutes = [\"fd00:20::/48\"]",
                "routes: fd00:20::/48 is IPv6, but the network has no subnet6",
            ),
            (
                "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\nroutes = [\"fd00:20::1/48\"]",
                "routes: fd00:20::1/48 has host bits set; did you mean fd00:20::/48?",
            ),
            (
                "subnet = \"10.0.0.0/24\"\ngateway = \"10.0.0.1\"\nroutes = [\"upstream\"]",
                "routes: \"upstream\" is not a prefix like 10.20.0.0/16 or fd00:20::/48",
            ),
        ];
        for (body, want) in cases {
            let got = net(body);
            assert!(
                got.contains(want),
                "for {body:?}\n got: {got}\nwant: {want}"
            );
            assert!(got.starts_with("config /etc/nsbypass/config.toml"), "{got}");
        }
        assert!(err("[networks.fast]\nmode = \"bridge\"").contains("missing field `parent`"));
        assert!(err("[networks.\"a/b\"]\nparent = \"p\"").contains("network a/b: name:"));
        assert!(err("[networks.x]\nparent = \"\"").contains("parent: empty interface name"));
    }

    #[test]
    fn overlapping_ranges_on_one_parent_are_refused() {
        let two = |parent_b: &str| {
            format!(
                "[networks.a]\nparent = \"p0\"\nsubnet = \"10.0.0.0/24\"\nrange = \"10.0.0.10-10.0.0.20\"\n\
                 [networks.b]\nparent = \"{parent_b}\"\nsubnet = \"10.0.0.0/24\"\nrange = \"10.0.0.20-10.0.0.30\"\n"
            )
        };
        assert_eq!(
            err(&two("p0")),
            "config /etc/nsbypass/config.toml: network b: range: 10.0.0.20-10.0.0.30 overlaps network a's 10.0.0.10-10.0.0.20 on the same parent p0"
        );
        assert!(parse(&two("p1")).is_ok(), "another parent is another wire");

        let two6 = |range_b: &str| {
            format!(
                "[networks.a]\nparent = \"p0\"\nsubnet = \"10.0.0.0/24\"\nsubnet6 = \"fd00::/64\"\nrange6 = \"fd00::10-fd00::20\"\n\
                 [networks.b]\nparent = \"p0\"\nsubnet = \"10.1.0.0/24\"\nsubnet6 = \"fd00::/64\"\nrange6 = \"{range_b}\"\n"
            )
        };
        assert_eq!(
            err(&two6("fd00::20-fd00::30")),
            "config /etc/nsbypass/config.toml: network b: range6: fd00::20-fd00::30 overlaps network a's fd00::10-fd00::20 on the same parent p0"
        );
        assert!(parse(&two6("fd00::21-fd00::30")).is_ok());
        // The default range6 is the whole subnet: two of them on one wire collide.
        let e = err("[networks.a]\nparent = \"p0\"\nsubnet6 = \"fd00::/64\"\n[networks.b]\nparent = \"p0\"\nsubnet6 = \"fd00::/64\"\n");
        assert!(
            e.contains("network b: range6: fd00::1-fd00::ffff:ffff:ffff:ffff overlaps"),
            "{e}"
        );
    }

    #[test]
    fn policy_keys() {
        let c = parse(
            "[requests]\nfrom_env = true\n[networks.a]\nparent = \"p\"\nallow_namespaces = [\"trading\", \"risk-2\"]\nallow_static_ip = false\n[profiles.x]\nallow_namespaces = [\"trading\"]\n",
        )
        .unwrap();
        assert!(c.requests.from_env);
        let a = &c.networks["a"];
        assert_eq!(
            a.allow_namespaces.as_deref(),
            Some(&["trading".to_owned(), "risk-2".to_owned()][..])
        );
        assert!(!a.allow_static_ip);
        assert_eq!(
            c.profiles["x"].allow_namespaces.as_deref(),
            Some(&["trading".to_owned()][..])
        );
        let d = parse("[networks.a]\nparent = \"p\"\n").unwrap();
        assert!(
            !d.requests.from_env,
            "the environment does not count by default"
        );
        assert!(d.networks["a"].allow_static_ip && d.networks["a"].allow_namespaces.is_none());
        for (body, want) in [
            (
                "[networks.a]\nparent = \"p\"\nallow_namespaces = [\"Trading\"]",
                "network a: allow_namespaces: \"Trading\" is not a Kubernetes namespace name",
            ),
            (
                "[networks.a]\nparent = \"p\"\nallow_namespaces = [\"t\", \"t\"]",
                "network a: allow_namespaces: \"t\" is listed twice",
            ),
            (
                "[profiles.x]\nallow_namespaces = [\"-x\"]",
                "profile x: allow_namespaces: \"-x\" is not a Kubernetes namespace name",
            ),
            ("[requests]\nfrom_env = \"yes\"", "invalid type"),
            ("[requests]\nfromenv = true", "fromenv"),
        ] {
            let got = err(body);
            assert!(got.contains(want), "{body:?}: {got}");
        }
    }

    #[test]
    fn parents_take_a_link_budget() {
        let c = parse("[parents.ens1f0]\nmax_links = 200\n").unwrap();
        assert_eq!(c.parents["ens1f0"].max_links, Some(200));
        assert_eq!(
            err("[parents.ens1f0]\nmax_links = 0\n"),
            "config /etc/nsbypass/config.toml: parent ens1f0: max_links: 0 allows no link at all; leave the parent out of every network instead"
        );
        assert!(err("[parents.ens1f0]\nmaxlinks = 3\n").contains("maxlinks"));
        assert!(err("[parents.\"a/b\"]\nmax_links = 3\n").contains("parent a/b: name:"));
    }

    #[test]
    fn the_lease_store_is_a_table_of_its_own() {
        assert_eq!(parse("").unwrap().leases, LeaseConfig::File);
        let c =
            parse("[leases]\nstore = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]").unwrap();
        assert!(matches!(c.leases, LeaseConfig::Etcd(_)));
        assert_eq!(
            err("[leases]\nstore = \"etcd\""),
            "config /etc/nsbypass/config.toml: leases: endpoints: store = \"etcd\" needs its client URLs"
        );
    }

    #[test]
    fn state_dir_must_be_absolute() {
        assert!(err("state_dir = \"run/x\"").contains("state_dir run/x is not an absolute path"));
        // Found by the config fuzz target: a value's newline stays in its line.
        let e = err("state_dir = \"fi\\nb,0.0/30\"");
        assert!(
            !e.contains('\n') && e.contains("state_dir fi\\nb,0.0/30 is not"),
            "{e}"
        );
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/nsbypass.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config /nonexistent/nsbypass.toml: No such file"),
            "{e}"
        );
    }

    #[test]
    fn the_guard_is_on_unless_turned_off_and_takes_only_other_ethertypes() {
        let net = |extra: &str| format!("[networks.a]\nparent = \"p\"\n{extra}");
        let on = parse(&net("subnet = \"10.1.0.0/24\"")).unwrap();
        assert!(on.networks["a"].guard && on.networks["a"].guard_allow_ethertypes.is_empty());
        let off = parse(&net("guard = false")).unwrap();
        assert!(!off.networks["a"].guard);
        let ptp = parse(&net("guard_allow_ethertypes = [0x88F7, 35020]")).unwrap();
        assert_eq!(ptp.networks["a"].guard_allow_ethertypes, [0x88F7, 0x88CC]);
        for (value, why) in [
            (
                "[0x0800]",
                "0x0800 is IPv4, which the guard checks by address",
            ),
            ("[0x86DD]", "0x86dd is IPv6"),
            ("[0x0806]", "0x0806 is ARP"),
            (
                "[0x8100]",
                "0x8100 is an 802.1Q VLAN tag, whose inner frame",
            ),
            ("[0x88A8]", "0x88a8 is an 802.1ad (QinQ) VLAN tag"),
            ("[0x9100]", "0x9100 is a QinQ VLAN tag"),
            ("[1500]", "0x05dc is an 802.3 length"),
            ("[70000]", "70000 is not an ethertype"),
            ("[-1]", "-1 is not an ethertype"),
            ("[0x88F7, 0x88F7]", "0x88f7 is listed twice"),
        ] {
            let e = err(&net(&format!("guard_allow_ethertypes = {value}")));
            assert!(
                e.starts_with(
                    "config /etc/nsbypass/config.toml: network a: guard_allow_ethertypes: "
                ) && e.contains(why),
                "{value}: {e}"
            );
        }
        let e = err(&net("guard = false\nguard_allow_ethertypes = [0x88F7]"));
        assert!(e.contains("guard = false, so nothing is dropped"), "{e}");
    }

    #[test]
    fn host_shim_needs_a_pool_and_bridge_mode() {
        let net = |extra: &str| format!("[networks.a]\nparent = \"p\"\n{extra}");
        let on = parse(&net("subnet = \"10.1.0.0/24\"\nhost_shim = true")).unwrap();
        assert!(on.networks["a"].host_shim);
        assert!(
            !parse(&net("")).unwrap().networks["a"].host_shim,
            "off by default"
        );
        assert_eq!(
            err(&net("host_shim = true")),
            "config /etc/nsbypass/config.toml: network a: host_shim: needs a subnet: the shim takes its address from the pool"
        );
        for (mode, why) in [
            ("private", "forbids traffic between a parent's MACVLANs"),
            ("vepa", "which must hairpin it back"),
            ("passthru", "gives the parent to a single MACVLAN"),
        ] {
            let e = err(&net(&format!(
                "mode = \"{mode}\"\nsubnet = \"10.1.0.0/24\"\nhost_shim = true"
            )));
            assert!(
                e.starts_with(&format!(
                    "config /etc/nsbypass/config.toml: network a: host_shim: mode {mode} "
                )) && e.contains(why)
                    && e.ends_with("use mode bridge"),
                "{e}"
            );
        }
        let e = err(&net("host_shim = 1"));
        assert!(e.starts_with("config /etc/nsbypass/config.toml:3:"), "{e}");
    }

    #[test]
    fn bc_queue_len_is_bounded_and_needs_siblings() {
        let net = |extra: &str| format!("[networks.a]\nparent = \"p\"\n{extra}");
        let c = parse(&net("bc_queue_len = 5000")).unwrap();
        assert_eq!(c.networks["a"].bc_queue_len, Some(5000));
        assert_eq!(parse(&net("")).unwrap().networks["a"].bc_queue_len, None);
        assert_eq!(
            parse(&net("bc_queue_len = 100000")).unwrap().networks["a"].bc_queue_len,
            Some(MAX_BC_QUEUE_LEN)
        );
        for bad in ["0", "100001"] {
            assert_eq!(
                err(&net(&format!("bc_queue_len = {bad}"))),
                format!("config /etc/nsbypass/config.toml: network a: bc_queue_len: {bad} is not between 1 and 100000")
            );
        }
        let e = err(&net("bc_queue_len = -1"));
        assert!(e.starts_with("config /etc/nsbypass/config.toml:3:"), "{e}");
        assert_eq!(
            err(&net("mode = \"passthru\"\nbc_queue_len = 10")),
            "config /etc/nsbypass/config.toml: network a: bc_queue_len: passthru has a single child and no broadcast queue to size"
        );
    }
}
