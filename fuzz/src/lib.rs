//! What the fuzz targets share: the one-line rule for errors, splitting an
//! input into fields, and the invariants of a parsed config.

use std::fmt::Display;

use runtime_config::leases::{check_node_name, parse_endpoint, LeaseConfig, MAX_TIMEOUT_MS};
use runtime_config::{Config, Pool};

/// nsbypass promises one-line errors: a message must not break a log line.
pub fn one_line(error: &dyn Display) {
    let text = error.to_string();
    assert!(!text.contains('\n'), "two-line error: {text:?}");
    assert!(!text.is_empty(), "empty error");
}

/// The input as NUL-separated UTF-8 fields (lossily).
pub fn fields(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// What the leasing and setup code take for granted of a config that parsed.
pub fn check_config(config: &Config) {
    check_leases(&config.leases);
    for network in config.networks.values() {
        if let Some(p) = &network.ipv4 {
            let name = &network.name;
            assert!(
                p.subnet.contains(&p.first) && p.subnet.contains(&p.last),
                "network {name}: {} outside {}",
                p.range_text(),
                p.subnet
            );
        }
        if let Some(p) = &network.ipv6 {
            let name = &network.name;
            assert!(
                p.subnet.contains(&p.first) && p.subnet.contains(&p.last),
                "network {name}: {} outside {}",
                p.range_text(),
                p.subnet
            );
        }
        for pool in network.pools() {
            check_pool(&network.name, pool);
        }
    }
}

fn check_pool(name: &str, pool: Pool<'_>) {
    let (first, last) = (pool.first(), pool.last());
    assert!(first <= last, "network {name}: {first} after {last}");
    let size = pool.size();
    assert!(size >= 1, "network {name}: empty range");
    if size < u128::MAX {
        assert_eq!(pool.nth(size - 1), last, "network {name}: nth(size - 1)");
    }
    assert_eq!(pool.nth(0), first, "network {name}: nth(0)");
    assert_eq!(pool.first().is_ipv6(), pool.is_ipv6());
    assert_eq!(pool.last().is_ipv6(), pool.is_ipv6());
    if pool.gateway() != Some(first) {
        assert!(
            pool.assignable(first),
            "network {name}: {first} unassignable"
        );
    }
    assert!(pool.prefix_len() <= if pool.is_ipv6() { 128 } else { 32 });
    if let Some(gateway) = pool.gateway() {
        assert_eq!(gateway.is_ipv6(), pool.is_ipv6(), "network {name}");
    }
    for route in pool.routes() {
        assert_eq!(
            route.addr().is_ipv6(),
            pool.is_ipv6(),
            "network {name}: {route}"
        );
    }
    let _ = pool.range_text();
}

/// What the etcd store builds keys and connections from: a prefix that
/// joins to keys, a node name that is one key component, endpoints that
/// print and re-parse to themselves, all of one scheme, a bounded timeout,
/// TLS exactly when the endpoints are https.
fn check_leases(leases: &LeaseConfig) {
    let LeaseConfig::Etcd(etcd) = leases else {
        return;
    };
    let p = &etcd.prefix;
    assert!(
        p.starts_with('/') && !p.ends_with('/') && !p.contains("//"),
        "prefix {p:?}"
    );
    if let Some(node) = &etcd.node {
        assert!(
            check_node_name(node).is_ok() && !node.contains('/'),
            "node {node:?}"
        );
    }
    assert!(!etcd.endpoints.is_empty());
    for e in &etcd.endpoints {
        let text = e.to_string();
        assert_eq!(parse_endpoint(&text).as_ref(), Ok(e), "{text}");
    }
    let ms = etcd.timeout.as_millis();
    assert!(
        (1..=u128::from(MAX_TIMEOUT_MS)).contains(&ms),
        "timeout {ms}"
    );
    assert_eq!(etcd.tls.is_some(), etcd.endpoints.iter().any(|e| e.tls));
    assert!(
        etcd.endpoints
            .iter()
            .all(|e| e.tls == etcd.endpoints[0].tls),
        "mixed http and https endpoints"
    );
}
