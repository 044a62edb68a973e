//! The kernel operations setup and teardown need, behind traits so the
//! step-by-step logic and its rollback can be tested against a fake.
//!
//! A `Kernel` is bound to one container network namespace; "host" calls go
//! to the namespace the hook runs in, which holds the parent NICs. `Reach`
//! finds recorded namespaces again when there is no pid to go by, and
//! tells a namespace that is gone from one that lives on out of reach.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use nsutil::netlink::{Link, Netlink, NewMacvlan};
use nsutil::nftables::{Batch, Nftables};
use nsutil::ns::{self, Netns, NetnsId};
use nsutil::sysctl;
use runtime_config::MacvlanMode;

use crate::guard::{self, Guard};
use crate::records::{Identity, Member, NetnsRecord};

pub type Result<T> = nsutil::Result<T>;

/// How long a setup that finds its pool full waits for the links of
/// namespaces still being destroyed to go (the kernel destroys namespaces
/// asynchronously, normally within some tens of milliseconds), so that
/// their addresses can be freed; see [`crate::reconcile::await_draining`].
pub const DYING_WAIT: Duration = Duration::from_secs(1);

/// A MACVLAN to create in the container's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacvlanSpec {
    pub name: String,
    pub parent_index: u32,
    pub mode: MacvlanMode,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    /// The network's `bc_queue_len`, if set.
    pub bc_queue_len: Option<u32>,
}

pub trait Kernel {
    /// Link `name` in the hook's own (host) namespace.
    fn host_link(&mut self, name: &str) -> Result<Option<Link>>;
    /// Link `name` in the container's namespace.
    fn link(&mut self, name: &str) -> Result<Option<Link>>;
    /// The link with interface index `index` in the container's namespace.
    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>>;
    /// Every link in the container's namespace (to find a link whose index
    /// was never learned).
    fn links(&mut self) -> Result<Vec<Link>>;
    /// The container namespace's id in the host namespace, assigned if it
    /// has none; see `NetnsRecord::nsid`.
    fn assign_nsid(&mut self) -> Result<i32>;
    /// The container namespace's cookie; see `NetnsRecord::cookie`.
    fn cookie(&mut self) -> Result<Option<u64>>;
    /// Creates a MACVLAN on a host parent directly inside the container's
    /// namespace and returns it as the container's namespace sees it.
    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> Result<Link>;
    fn rename(&mut self, index: u32, name: &str) -> Result<()>;
    fn delete(&mut self, index: u32) -> Result<()>;
    /// Turns on `arp_notify` for link `index`, so the switch learns the
    /// MAC when the link comes up (a gratuitous ARP on the way up: call it
    /// before `set_up`); with `eui64`, also IPv6 address generation from
    /// the MAC, so the link-local address is the one the guard allows.
    fn arp_notify(&mut self, index: u32, eui64: bool) -> Result<()>;
    /// Makes sure IPv6 is on for the link (`disable_ipv6` may be the
    /// namespace's default: docker sets it in containers it gives no IPv6)
    /// and turns on `ndisc_notify`, so the link's addresses are announced
    /// with unsolicited neighbour advertisements when it comes up and the
    /// switch learns the MAC, as `arp_notify` does for IPv4. Through
    /// `/proc/sys` (inside the namespace): inet6 takes no devconf through
    /// netlink's `IFLA_AF_SPEC`, only a token and the address generation
    /// mode.
    fn ndisc_notify(&mut self, ifname: &str) -> Result<()>;
    /// Adds an address; an IPv6 one without duplicate address detection
    /// (`IFA_F_NODAD`): the pool already guarantees it is unique, and a
    /// tentative address could not be used for a second or more after the
    /// hook returns (what CNI and netavark learned to avoid).
    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    /// Adds `destination via gateway`; both of one family.
    fn add_route(&mut self, index: u32, destination: IpNet, gateway: IpAddr) -> Result<()>;
    /// Makes (or remakes) the guard's filter on link `ifname` inside the
    /// container's namespace (see [`crate::guard`]).
    fn guard_link(&mut self, ifname: &str, guard: &Guard) -> Result<()>;
    /// Removes that filter; nothing if there is none.
    fn unguard_link(&mut self, ifname: &str) -> Result<()>;
    /// Whether that filter is there.
    fn has_guard(&mut self, ifname: &str) -> Result<bool>;
}

/// Finds recorded namespaces again, when there is no pid to go by.
pub trait Reach {
    /// Whether `path` leads to the namespace `id` right now.
    fn leads_to(&mut self, path: &Path, id: NetnsId) -> bool;
    /// A kernel for the namespace `who` through `path`; `Ok(None)` if the
    /// path no longer leads there (or leads to a later namespace with the
    /// same number).
    fn enter(&mut self, path: &Path, who: &Identity) -> Result<Option<Box<dyn Kernel>>>;
    /// Whether process `pid` is still the one that started at `start`.
    fn started_at(&mut self, pid: i32, start: u64) -> bool;
    /// The namespace ids assigned in the host namespace: those of every
    /// namespace that still exists (and was given one).
    fn live_nsids(&mut self) -> Result<Vec<i32>>;
    /// The links of the namespace that has id `nsid` now (ids are reused:
    /// not necessarily the one that had it when it was recorded).
    fn links_in(&mut self, nsid: i32) -> Result<Vec<Link>>;
    /// The MACs (`aa:bb:...`) of the MACVLAN children up on host link
    /// `parent`, in whatever namespace they live: its unicast list.
    fn macs_on(&mut self, parent: &str) -> Result<Vec<String>>;
    /// Whether a MACVLAN child with `mac` is up on host link `parent`.
    fn mac_up_on(&mut self, parent: &str, mac: &str) -> Result<bool> {
        Ok(self.macs_on(parent)?.iter().any(|m| m == mac))
    }
    /// A kernel for the namespace `who` found without a recorded path:
    /// through a bind mount of it, a process in it, or an fd to it (an
    /// engine that keeps a container's namespace past its poststop, as
    /// dockerd does).
    fn discover(&mut self, who: &Identity) -> Result<Option<Box<dyn Kernel>>>;
    /// [`Reach::discover`] through bind mounts only (an engine's, like
    /// dockerd's `/run/docker/netns/...`): one read of the mount table, not
    /// a walk over every process and fd on the host.
    fn discover_mounted(&mut self, who: &Identity) -> Result<Option<Box<dyn Kernel>>>;
}

/// Where a recorded namespace stands.
pub enum Presence {
    /// A recorded path leads to it: here is a kernel for it.
    Reachable(Box<dyn Kernel>),
    /// It exists (its id is live) but no recorded path leads to it any
    /// more: someone else keeps it, with whatever nsbypass made in it.
    Unreachable,
    /// It is being destroyed: its id is gone, but its links, which still
    /// answer for their addresses, are not yet.
    Dying,
    /// It is gone, and took its links with it.
    Gone,
}

/// Where `record`'s namespace stands. An error means the namespace is
/// there but cannot be worked in.
///
/// A recorded path that leads to the recorded (dev, ino) and shows the
/// recorded cookie reaches it. Without one, what matters is whether the
/// links nsbypass made are still alive somewhere: one is while the
/// namespace the recorded id names now has it (same index and MAC: ids
/// are reused, so the id alone proves nothing), and while its MAC is up on
/// its parent (a dying namespace loses its id some milliseconds before its
/// links go, which meanwhile still answer ARP). If none is, the namespace
/// is gone or keeps nothing of ours: Gone. If one is, discovery looks for a
/// way in; failing that, it lives on out of reach.
pub fn presence(reach: &mut dyn Reach, record: &NetnsRecord) -> Result<Presence> {
    let who = record.identity();
    for path in record.netns_paths() {
        if let Some(kernel) = reach.enter(path, &who)? {
            return Ok(Presence::Reachable(kernel));
        }
    }
    if !alive_by_id(reach, record)? {
        if !macs_up(reach, record)? {
            return Ok(Presence::Gone);
        }
        // With an id recorded, its absence (or another namespace holding
        // it) means this one is on its way out. Records of an older
        // version have none: there an up MAC is all there is to go by.
        if record.nsid.is_some() {
            return Ok(Presence::Dying);
        }
    }
    match reach.discover(&who)? {
        Some(kernel) => Ok(Presence::Reachable(kernel)),
        None => Ok(Presence::Unreachable),
    }
}

/// A kernel for `record`'s namespace through a recorded path or an
/// engine's bind mount of it, or `None`: what a poststop needs to know, and
/// all it looks at with the node-local lease store (see
/// [`crate::teardown::Look::Quick`]).
pub fn reachable(reach: &mut dyn Reach, record: &NetnsRecord) -> Result<Option<Box<dyn Kernel>>> {
    let who = record.identity();
    for path in record.netns_paths() {
        if let Some(kernel) = reach.enter(path, &who)? {
            return Ok(Some(kernel));
        }
    }
    reach.discover_mounted(&who)
}

/// What checking many draining records needs from the kernel, asked for
/// once: the live namespace ids and each parent's unicast list (a dump
/// that grows with every MACVLAN on the parent), so that checking each
/// does not ask again.
pub struct Census<'a> {
    reach: &'a mut dyn Reach,
    nsids: Option<Vec<i32>>,
    macs: std::collections::BTreeMap<String, Vec<String>>,
}

impl<'a> Census<'a> {
    pub fn new(reach: &'a mut dyn Reach) -> Census<'a> {
        Census {
            reach,
            nsids: None,
            macs: Default::default(),
        }
    }

    /// [`gone`], from the census.
    pub fn gone(&mut self, record: &NetnsRecord) -> Result<bool> {
        if let Some(nsid) = record.nsid {
            if self.nsids.is_none() {
                self.nsids = Some(self.reach.live_nsids()?);
            }
            let live = self.nsids.as_ref().is_some_and(|ids| ids.contains(&nsid));
            if live && holds_a_link(self.reach, nsid, record)? {
                return Ok(false);
            }
        }
        for link in record.links.iter().filter(|l| !l.passthru) {
            if !self.macs.contains_key(&link.parent) {
                let macs = self.reach.macs_on(&link.parent)?;
                self.macs.insert(link.parent.clone(), macs);
            }
            if self.macs[&link.parent].contains(&link.mac) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether `record`'s namespace is surely gone with its links: what
/// [`presence`] would call [`Presence::Gone`], without entering recorded
/// paths or discovery (for a namespace known to have lost its last
/// process: a draining one).
pub fn gone(reach: &mut dyn Reach, record: &NetnsRecord) -> Result<bool> {
    Census::new(reach).gone(record)
}

/// Whether the namespace the recorded id names now still holds one of
/// `record`'s links.
fn alive_by_id(reach: &mut dyn Reach, record: &NetnsRecord) -> Result<bool> {
    match record.nsid {
        Some(nsid) => Ok(reach.live_nsids()?.contains(&nsid) && holds_a_link(reach, nsid, record)?),
        None => Ok(false),
    }
}

/// Whether the namespace with id `nsid` now has one of `record`'s links
/// (same index and MAC: ids are reused, so the id alone proves nothing).
fn holds_a_link(reach: &mut dyn Reach, nsid: i32, record: &NetnsRecord) -> Result<bool> {
    let there = reach.links_in(nsid)?;
    Ok(record
        .links
        .iter()
        .any(|ours| there.iter().any(|l| ours.is_by_mac(l))))
}

/// Whether a MAC of `record`'s links is still up on its parent. Passthru
/// links take the parent's MAC: they give no sign there.
pub fn macs_up(reach: &mut dyn Reach, record: &NetnsRecord) -> Result<bool> {
    for link in record.links.iter().filter(|l| !l.passthru) {
        if reach.mac_up_on(&link.parent, &link.mac)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The (parent, MAC) of `record`'s links, passthru ones (which carry the
/// parent's MAC, so give no sign there) left out.
pub fn parent_macs(record: &NetnsRecord) -> impl Iterator<Item = (String, String)> + '_ {
    record
        .links
        .iter()
        .filter(|l| !l.passthru)
        .map(|l| (l.parent.clone(), l.mac.clone()))
}

/// Waits until none of `macs` is up on its parent, or `wait` passed;
/// checks every 5 ms (the kernel destroys a namespace in some tens of
/// milliseconds).
pub fn await_macs_gone(
    reach: &mut dyn Reach,
    macs: &[(String, String)],
    wait: Duration,
) -> Result<()> {
    let deadline = std::time::Instant::now() + wait;
    while !macs.is_empty() && std::time::Instant::now() < deadline {
        let mut up = false;
        for (parent, mac) in macs {
            up |= reach.mac_up_on(parent, mac)?;
        }
        if !up {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Whether `member` still runs in namespace `id`: its init's
/// `/proc/<pid>/ns/net` still leads there, and the pid is still that init.
pub fn alive(reach: &mut dyn Reach, member: &Member, id: NetnsId) -> bool {
    let same_process = match (member.pid, member.start) {
        (Some(pid), Some(start)) => reach.started_at(pid, start),
        _ => true,
    };
    same_process && reach.leads_to(&member.process, id)
}

/// Whether process `pid` still lives in the mount namespace with inode
/// `mntns` (a pid alone can be reused).
pub fn same_mount_namespace(pid: i32, mntns: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == mntns)
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), to tell it from a later process with its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The real thing: one netlink socket in the host namespace, one in the
/// container's.
pub struct RealKernel {
    netns: Netns,
    host: Netlink,
    inner: Netlink,
    /// A netfilter socket in the container's namespace, opened on first
    /// use (only guarded links need one).
    nft: Option<Nftables>,
}

impl RealKernel {
    pub fn new(netns: Netns) -> Result<RealKernel> {
        let host = Netlink::connect()?;
        let inner = netns.run(|| host.connect_here())??;
        Ok(RealKernel {
            netns,
            host,
            inner,
            nft: None,
        })
    }
}

impl Kernel for RealKernel {
    fn host_link(&mut self, name: &str) -> Result<Option<Link>> {
        self.host.link_by_name(name)
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>> {
        self.inner.link_by_name(name)
    }

    fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        self.inner.link_by_index(index)
    }

    fn links(&mut self) -> Result<Vec<Link>> {
        self.inner.links()
    }

    fn assign_nsid(&mut self) -> Result<i32> {
        self.host.assign_nsid(self.netns.fd())
    }

    fn cookie(&mut self) -> Result<Option<u64>> {
        self.netns.cookie()
    }

    fn create_macvlan(&mut self, spec: &MacvlanSpec) -> Result<Link> {
        self.host.add_macvlan(&NewMacvlan {
            name: &spec.name,
            parent_index: spec.parent_index,
            mode: spec.mode.kernel_value(),
            mac: spec.mac,
            mtu: spec.mtu,
            netns: Some(self.netns.fd()),
            bc_queue_len: spec.bc_queue_len,
        })?;
        // Made into the container's namespace, the link comes back without
        // an echo (the kernel would send it to a port id there): look it up
        // there. The trait promises that a failed create leaves nothing
        // behind.
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

    fn arp_notify(&mut self, index: u32, eui64: bool) -> Result<()> {
        // Through netlink, not /proc/sys: see Netlink::set_arp_notify.
        if eui64 {
            self.inner.set_arp_notify_eui64(index)
        } else {
            self.inner.set_arp_notify(index)
        }
    }

    fn ndisc_notify(&mut self, ifname: &str) -> Result<()> {
        self.netns.run(|| {
            if sysctl::ipv6_interface(ifname, "disable_ipv6")? != "0" {
                sysctl::set_ipv6_interface(ifname, "disable_ipv6", "0")?;
            }
            sysctl::set_ipv6_interface(ifname, "ndisc_notify", "1")
        })?
    }

    fn add_address(&mut self, index: u32, address: IpNet) -> Result<()> {
        match address {
            IpNet::V4(_) => self.inner.add_address(index, address),
            IpNet::V6(v6) => self.inner.add_address_nodad(index, v6),
        }
    }

    fn set_up(&mut self, index: u32) -> Result<()> {
        // A link with this MAC may still be up on the parent for a moment:
        // the kernel destroys a dead container's namespace asynchronously.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match self.inner.set_up(index) {
                Err(e)
                    if e.errno() == Some(nix::errno::Errno::EADDRINUSE as i32)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn add_route(&mut self, index: u32, destination: IpNet, gateway: IpAddr) -> Result<()> {
        self.inner.add_route(index, destination, gateway)
    }

    fn guard_link(&mut self, ifname: &str, guard: &Guard) -> Result<()> {
        let batch = guard.inner(ifname);
        self.nft()?.apply(
            &batch,
            &format!("make the guard's nftables table on {ifname}"),
        )
    }

    fn unguard_link(&mut self, ifname: &str) -> Result<()> {
        let mut batch = Batch::new();
        batch.destroy_table(&guard::inner_table(ifname));
        self.nft()?.apply(
            &batch,
            &format!("remove the guard's nftables table on {ifname}"),
        )
    }

    fn has_guard(&mut self, ifname: &str) -> Result<bool> {
        self.nft()?.has_table(&guard::inner_table(ifname))
    }
}

impl RealKernel {
    fn nft(&mut self) -> Result<&Nftables> {
        if self.nft.is_none() {
            self.nft = Some(self.netns.run(Nftables::connect)??);
        }
        Ok(self.nft.as_ref().expect("just opened"))
    }
}

/// Reaches namespaces through the paths recorded at setup, trusting a path
/// only while it leads to the recorded namespace identity.
#[derive(Default)]
pub struct RealReach {
    /// Opened on first need: most poststops find their namespace gone and
    /// ask the host's id table once.
    host: Option<Netlink>,
}

impl Reach for RealReach {
    fn leads_to(&mut self, path: &Path, id: NetnsId) -> bool {
        ns::id_of(path).is_ok_and(|found| found == id)
    }

    fn enter(&mut self, path: &Path, who: &Identity) -> Result<Option<Box<dyn Kernel>>> {
        let Some(netns) = Netns::open_if(path, who.id)? else {
            return Ok(None);
        };
        if who.cookie.is_some() && netns.cookie()? != who.cookie {
            // A later namespace that got the recorded inode number.
            return Ok(None);
        }
        Ok(Some(Box::new(RealKernel::new(netns)?)))
    }

    fn started_at(&mut self, pid: i32, start: u64) -> bool {
        start_time(pid) == Some(start)
    }

    fn live_nsids(&mut self) -> Result<Vec<i32>> {
        self.host()?.nsids()
    }

    fn links_in(&mut self, nsid: i32) -> Result<Vec<Link>> {
        self.host()?.links_in(nsid)
    }

    fn macs_on(&mut self, parent: &str) -> Result<Vec<String>> {
        let host = self.host()?;
        let Some(parent) = host.link_by_name(parent)? else {
            // No parent, no children.
            return Ok(Vec::new());
        };
        Ok(host
            .unicast_macs(parent.index)?
            .iter()
            .map(nsutil::netlink::format_mac)
            .collect())
    }

    fn discover_mounted(&mut self, who: &Identity) -> Result<Option<Box<dyn Kernel>>> {
        let wanted = format!("net:[{}]", who.id.ino);
        for mount in nsutil::mountinfo::read("self")? {
            if mount.fstype == "nsfs" && mount.root == wanted {
                if let Some(kernel) = self.enter(&mount.point, who)? {
                    return Ok(Some(kernel));
                }
            }
        }
        Ok(None)
    }

    fn discover(&mut self, who: &Identity) -> Result<Option<Box<dyn Kernel>>> {
        if let Some(kernel) = self.discover_mounted(who)? {
            return Ok(Some(kernel));
        }
        let id = who.id;
        let wanted = format!("net:[{}]", id.ino);
        let Ok(processes) = std::fs::read_dir("/proc") else {
            return Ok(None);
        };
        for process in processes.flatten() {
            let name = process.file_name();
            if !name
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                continue;
            }
            let dir = process.path();
            if let Some(kernel) = self.enter(&dir.join("ns/net"), who)? {
                return Ok(Some(kernel));
            }
            let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
                continue;
            };
            // By identity, but only for fds whose link text may be a
            // namespace: "net:[INO]", or "/" for one opened through a bind
            // mount that is gone since (`ip netns del`). Reading a link
            // calls into no filesystem; a stat of any fd could hang on a
            // FUSE file a local user keeps open.
            for fd in fds.flatten() {
                let path = fd.path();
                let text = std::fs::read_link(&path).unwrap_or_default();
                let candidate = text.as_os_str() == wanted.as_str() || text == Path::new("/");
                if candidate && self.leads_to(&path, id) {
                    if let Some(kernel) = self.enter(&path, who)? {
                        return Ok(Some(kernel));
                    }
                }
            }
        }
        Ok(None)
    }
}

impl RealReach {
    fn host(&mut self) -> Result<&Netlink> {
        if self.host.is_none() {
            self.host = Some(Netlink::connect()?);
        }
        Ok(self.host.as_ref().expect("just opened"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_reach_trusts_a_path_only_while_it_leads_to_the_recorded_namespace() {
        let own = Netns::current().unwrap().id();
        let path = Path::new("/proc/self/ns/net");
        let mut reach = RealReach::default();
        let cookie = Netns::current().unwrap().cookie().unwrap();
        let who = |id, cookie| Identity { id, cookie };
        assert!(reach.leads_to(path, own));
        assert!(reach.enter(path, &who(own, cookie)).unwrap().is_some());
        assert!(reach.enter(path, &who(own, None)).unwrap().is_some());
        let elsewhere = NetnsId {
            dev: own.dev,
            ino: own.ino ^ 1,
        };
        assert!(!reach.leads_to(path, elsewhere));
        assert!(reach
            .enter(path, &who(elsewhere, cookie))
            .unwrap()
            .is_none());
        // Same number, another namespace (what a reused inode looks like).
        let later = cookie.map(|c| c + 1);
        assert!(reach.enter(path, &who(own, later)).unwrap().is_none());
        assert!(!reach.leads_to(Path::new("/proc/no-such-pid/ns/net"), own));
    }

    #[test]
    fn start_times_tell_a_process_from_a_later_one_with_its_pid() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("our own start time");
        let mut reach = RealReach::default();
        assert!(reach.started_at(me, start));
        assert!(!reach.started_at(me, start + 1));
        assert_eq!(start_time(i32::MAX), None);
    }
}
