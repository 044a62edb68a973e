//! Values derived from a container's identity, so they come out the same
//! every time that container is set up.
//!
//! SHA-256 rather than std's hasher: std's `DefaultHasher` output may change
//! between Rust releases, and a MAC that changes with a rebuild would churn
//! switch tables exactly as a random one does.

use sha2::{Digest, Sha256};

fn digest(purpose: &str, host: &str, container: &str, network: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(purpose)
        .chain_update([0])
        .chain_update(host)
        .chain_update([0])
        .chain_update(container)
        .chain_update([0])
        .chain_update(network)
        .finalize()
        .into()
}

/// A locally administered unicast MAC for `container` on `network` on the
/// host `host` (its machine id: same-named containers on two hosts of one
/// L2 must not collide). A restarted container keeps its MAC, so the
/// switch learns nothing new.
pub fn mac(host: &str, container: &str, network: &str) -> [u8; 6] {
    let d = digest("nsbypass-mac", host, container, network);
    let mut mac = [d[0], d[1], d[2], d[3], d[4], d[5]];
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// Where in a pool the search for a free address starts for `container`:
/// a restarted container usually gets its old address back, and concurrent
/// containers rarely race for the same slot.
pub fn address_seed(container: &str, network: &str) -> u64 {
    let d = digest("nsbypass-ip", "", container, network);
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// [`address_seed`] for an IPv6 pool: 128 bits, since a /64 range has 2^64
/// slots, and its own purpose string, so that a container's IPv6 slot is
/// not its IPv4 one shifted.
pub fn address_seed6(container: &str, network: &str) -> u128 {
    let d = digest("nsbypass-ip6", "", container, network);
    u128::from_be_bytes(d[..16].try_into().expect("16 of 32 bytes"))
}

/// The interface name for the create-then-rename fallback. Derived, not
/// random, and recorded before the link is made, so that the link of a
/// setup killed before the rename can be found again.
pub fn temporary_ifname(netns: &str, container: &str, network: &str) -> String {
    let d = digest("nsbypass-ifname", netns, container, network);
    format!("nsb{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// The name of `network`'s host shim: `nsbs-` and 8 hex digits (13 bytes,
/// within IFNAMSIZ whatever the network's name), the same on every run.
pub fn shim_ifname(network: &str) -> String {
    let d = digest("nsbypass-shim-ifname", "", "", network);
    format!("nsbs-{:02x}{:02x}{:02x}{:02x}", d[0], d[1], d[2], d[3])
}

/// The MAC of `network`'s host shim on host `host`: stable, like a
/// container's, and never one of theirs (another purpose in the digest).
pub fn shim_mac(host: &str, network: &str) -> [u8; 6] {
    let d = digest("nsbypass-shim-mac", host, "", network);
    let mut mac = [d[0], d[1], d[2], d[3], d[4], d[5]];
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_stable_local_and_unicast() {
        let a = mac("h1", "c1", "fast");
        assert_eq!(a, mac("h1", "c1", "fast"));
        assert_ne!(a, mac("h2", "c1", "fast"), "another host, another MAC");
        assert_ne!(a, mac("h1", "c2", "fast"));
        assert_ne!(a, mac("h1", "c1", "slow"));
        assert_eq!(a[0] & 0x01, 0, "unicast");
        assert_eq!(a[0] & 0x02, 0x02, "locally administered");
        // Pinned (sha256 of "nsbypass-mac\0h1\0c1\0fast"): changing the
        // derivation would change every container's MAC on upgrade.
        assert_eq!(nsutil::netlink::format_mac(&a), "fa:96:78:04:ab:0a");
        assert_ne!(mac("h1", "c1f", "ast"), a, "fields are separated");
    }

    #[test]
    fn temporary_names_fit_ifnamsiz() {
        let n = temporary_ifname("4-4026532000", "c1", "fast");
        assert!(n.len() <= 15 && n.starts_with("nsb"), "{n}");
        assert_eq!(n, temporary_ifname("4-4026532000", "c1", "fast"));
        assert_ne!(n, temporary_ifname("4-4026532001", "c1", "fast"));
    }

    #[test]
    fn shim_names_and_macs_are_stable_short_and_local() {
        let n = shim_ifname("a-network-name-of-sixty-four-bytes-is-still-fine-here-0123456789");
        assert!(n.len() <= 15 && n.starts_with("nsbs-"), "{n}");
        assert_eq!(shim_ifname("fast"), shim_ifname("fast"));
        assert_ne!(shim_ifname("fast"), shim_ifname("slow"));
        let m = shim_mac("h1", "fast");
        assert_eq!(m, shim_mac("h1", "fast"));
        assert_ne!(m, shim_mac("h2", "fast"));
        assert_eq!((m[0] & 0x01, m[0] & 0x02), (0, 0x02));
        assert_ne!(m, mac("h1", "", "fast"));
    }
}
