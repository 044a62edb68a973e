//! `[leases]`: where address leases are kept. The node-local file store
//! under `state_dir` is the default; `store = "etcd"` keeps them in an
//! etcd cluster shared by every node whose MACVLANs hang off one L2, so two
//! nodes never hand out one address.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The key prefix under which every nsbypass key lives, by default.
pub const DEFAULT_PREFIX: &str = "/nsbypass";
/// How long a hook waits for etcd, by default: well inside the 10 s hook
/// timeout of the generated hook definitions, beside the 5 s lock wait.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// The most `timeout_ms` may be: a hook may wait 5 s for the state lock,
/// and with this on top it still gives up by itself, with its one line,
/// inside the generated hook definitions' 10 s timeout.
pub const MAX_TIMEOUT_MS: u64 = 5000;

/// The validated `[leases]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LeaseConfig {
    /// One file per address under `<state_dir>/leases`.
    #[default]
    File,
    Etcd(EtcdConfig),
}

/// An etcd cluster holding the leases of every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client URLs, tried in order until one answers.
    pub endpoints: Vec<Endpoint>,
    /// Absolute, without a trailing `/`: keys are `<prefix>/leases/...`.
    pub prefix: String,
    /// This node's name in the cluster; `None`: the host name (the hook
    /// resolves it, this crate does not read the host).
    pub node: Option<String>,
    /// The most one lease store operation may take, every endpoint tried.
    pub timeout: Duration,
    /// TLS trust and client identity, for `https` endpoints.
    pub tls: Option<Tls>,
}

/// Files for TLS to etcd: the CA that signed the servers' certificates,
/// and optionally a client certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub ca_file: PathBuf,
    pub client: Option<(PathBuf, PathBuf)>,
}

/// One client URL, `http://HOST:PORT` or `https://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// A host name or an IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// `HOST:PORT` as an HTTP `Host` header and a socket address take it
    /// (IPv6 in brackets).
    pub fn authority(&self) -> String {
        match self.host.contains(':') {
            true => format!("[{}]:{}", self.host, self.port),
            false => format!("{}:{}", self.host, self.port),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    #[default]
    File,
    Etcd,
}

/// `[leases]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLeases {
    #[serde(default)]
    store: StoreKind,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    node: Option<String>,
    timeout_ms: Option<u64>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

type KeyError = (&'static str, String);

impl RawLeases {
    pub(crate) fn validate(self) -> Result<LeaseConfig, KeyError> {
        if self.store == StoreKind::File {
            let etcd_only = [
                ("endpoints", self.endpoints.is_some()),
                ("prefix", self.prefix.is_some()),
                ("node", self.node.is_some()),
                ("timeout_ms", self.timeout_ms.is_some()),
                ("ca_file", self.ca_file.is_some()),
                ("cert_file", self.cert_file.is_some()),
                ("key_file", self.key_file.is_some()),
            ];
            if let Some((key, _)) = etcd_only.iter().find(|(_, set)| *set) {
                return Err((key, "is for store = \"etcd\" only".into()));
            }
            return Ok(LeaseConfig::File);
        }
        let endpoints = self
            .endpoints
            .ok_or(("endpoints", "store = \"etcd\" needs its client URLs".into()))?;
        if endpoints.is_empty() {
            return Err(("endpoints", "is empty".into()));
        }
        let endpoints = endpoints
            .iter()
            .map(|e| parse_endpoint(e))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| ("endpoints", m))?;
        // One scheme for the whole cluster: a member reached in clear text
        // beside others behind TLS is a typo or a downgrade, never a plan.
        if endpoints.iter().any(|e| e.tls) && endpoints.iter().any(|e| !e.tls) {
            return Err((
                "endpoints",
                "mixes http:// and https:// URLs; reach every member the same way (all https, with ca_file, or all http)".into(),
            ));
        }
        let prefix = match self.prefix {
            Some(p) => check_prefix(&p).map_err(|m| ("prefix", m))?,
            None => DEFAULT_PREFIX.to_owned(),
        };
        if let Some(node) = &self.node {
            check_node_name(node).map_err(|m| ("node", m))?;
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
            return Err((
                "timeout_ms",
                format!("{timeout_ms} is not between 1 and {MAX_TIMEOUT_MS} (hooks wait up to 5 s for the lock and time out after 10 s)"),
            ));
        }
        for (key, path) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(path) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err((key, format!("{} is not an absolute path", path.display())));
            }
        }
        let client = match (self.cert_file, self.key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => return Err(("cert_file", "needs key_file".into())),
            (None, Some(_)) => return Err(("key_file", "needs cert_file".into())),
        };
        let any_tls = endpoints.iter().any(|e| e.tls);
        let tls = match (self.ca_file, client) {
            (Some(ca_file), client) if any_tls => Some(Tls { ca_file, client }),
            (None, _) if any_tls => {
                return Err((
                    "ca_file",
                    "https endpoints need the CA that signed the etcd servers' certificates".into(),
                ))
            }
            (None, None) => None,
            (Some(_), _) => return Err(("ca_file", "no endpoint is https".into())),
            (None, Some(_)) => return Err(("cert_file", "no endpoint is https".into())),
        };
        Ok(LeaseConfig::Etcd(EtcdConfig {
            endpoints,
            prefix,
            node: self.node,
            timeout: Duration::from_millis(timeout_ms),
            tls,
        }))
    }
}

/// `http://HOST[:PORT]` or `https://HOST[:PORT]` (port 2379 by default), a
/// trailing `/` allowed, nothing else: the gateway's paths are fixed.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, String> {
    let bad = |why: &str| format!("{:?} {why}", text);
    let (tls, rest) = if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else {
        return Err(bad("is not an http:// or https:// URL"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad("has more than a host and port"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("has an unclosed ["))?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("has no IPv6 address in [...]"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("has junk after ]"))?),
        };
        (host.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (rest.to_owned(), None),
        }
    };
    let port = match port {
        None => 2379,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(bad("has no valid port")),
        },
    };
    // An IPv6 address only in brackets (checked above); a name or IPv4
    // address otherwise.
    let bracketed = rest.starts_with('[');
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && (bracketed
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    if !host_ok {
        return Err(bad("has no valid host"));
    }
    Ok(Endpoint { tls, host, port })
}

/// A prefix is absolute, has no empty component, no trailing `/` and only
/// printable ASCII without spaces: it is typed into `etcdctl` by admins.
fn check_prefix(prefix: &str) -> Result<String, String> {
    let ok = prefix.starts_with('/')
        && prefix.len() > 1
        && prefix.len() <= 200
        && !prefix.ends_with('/')
        && !prefix.contains("//")
        && prefix.bytes().all(|b| b.is_ascii_graphic());
    match ok {
        true => Ok(prefix.to_owned()),
        false => Err(format!(
            "{:?} is not an absolute key prefix like \"/nsbypass\" (no trailing /, no spaces)",
            prefix
        )),
    }
}

/// A node name becomes one key component: a DNS label-ish name, as
/// Kubernetes node names and host names are.
pub fn check_node_name(node: &str) -> Result<(), String> {
    let ok = !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        && node != "."
        && node != "..";
    match ok {
        true => Ok(()),
        false => Err(format!(
            "{:?} is not a node name (letters, digits, '.', '-', '_'; at most 253)",
            node
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Result<LeaseConfig, String> {
        let raw: RawLeases = toml::from_str(text).map_err(|e| e.to_string())?;
        raw.validate().map_err(|(k, m)| format!("{k}: {m}"))
    }

    #[test]
    fn file_is_the_default_and_takes_no_etcd_keys() {
        assert_eq!(raw("").unwrap(), LeaseConfig::File);
        assert_eq!(raw("store = \"file\"").unwrap(), LeaseConfig::File);
        assert_eq!(
            raw("prefix = \"/x\"").unwrap_err(),
            "prefix: is for store = \"etcd\" only"
        );
    }

    #[test]
    fn etcd_with_defaults_and_in_full() {
        let LeaseConfig::Etcd(c) =
            raw("store = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\", \"http://[::1]\", \"http://etcd-1.example:32379/\"]").unwrap()
        else {
            panic!()
        };
        assert_eq!(c.prefix, "/nsbypass");
        assert_eq!(c.node, None);
        assert_eq!(c.timeout, Duration::from_millis(2000));
        assert_eq!(c.tls, None);
        let shown: Vec<String> = c.endpoints.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "http://127.0.0.1:2379",
                "http://[::1]:2379",
                "http://etcd-1.example:32379"
            ]
        );
        let LeaseConfig::Etcd(c) = raw(r#"store = "etcd"
endpoints = ["https://10.0.0.5:2379"]
prefix = "/lab/nsbypass"
node = "worker-3"
timeout_ms = 500
ca_file = "/etc/nsbypass/ca.pem"
cert_file = "/etc/nsbypass/c.pem"
key_file = "/etc/nsbypass/k.pem""#)
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.prefix, "/lab/nsbypass");
        assert_eq!(c.node.as_deref(), Some("worker-3"));
        assert_eq!(c.timeout, Duration::from_millis(500));
        let tls = c.tls.unwrap();
        assert_eq!(tls.ca_file, PathBuf::from("/etc/nsbypass/ca.pem"));
        assert!(tls.client.is_some());
    }

    #[test]
    fn every_etcd_mistake_names_its_key() {
        let e = |extra: &str| {
            raw(&format!(
                "store = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\n{extra}"
            ))
            .unwrap_err()
        };
        assert_eq!(
            raw("store = \"etcd\"").unwrap_err(),
            "endpoints: store = \"etcd\" needs its client URLs"
        );
        assert_eq!(
            raw("store = \"etcd\"\nendpoints = []").unwrap_err(),
            "endpoints: is empty"
        );
        for (endpoint, why) in [
            ("127.0.0.1:2379", "is not an http:// or https:// URL"),
            ("http://127.0.0.1:0", "has no valid port"),
            ("http://127.0.0.1:99999", "has no valid port"),
            ("http://h/v3", "has more than a host and port"),
            ("http://", "has no valid host"),
            ("http://a b", "has no valid host"),
            ("http://[::1", "has an unclosed ["),
            ("http://[x]:1", "has no IPv6 address in [...]"),
            ("http://fd00::1:2379", "has no valid host"),
        ] {
            let got = raw(&format!("store = \"etcd\"\nendpoints = [{endpoint:?}]")).unwrap_err();
            assert!(
                got.starts_with("endpoints: ") && got.ends_with(why),
                "{endpoint}: {got}"
            );
        }
        assert!(e("prefix = \"nsbypass\"")
            .starts_with("prefix: \"nsbypass\" is not an absolute key prefix"));
        assert!(e("prefix = \"/a/\"").starts_with("prefix: "));
        assert!(e("prefix = \"/a b\"").starts_with("prefix: "));
        assert!(e("node = \"a/b\"").starts_with("node: \"a/b\" is not a node name"));
        assert!(e("node = \"\"").starts_with("node: "));
        assert_eq!(
            e("timeout_ms = 0"),
            "timeout_ms: 0 is not between 1 and 5000 (hooks wait up to 5 s for the lock and time out after 10 s)"
        );
        assert_eq!(e("ca_file = \"/ca.pem\""), "ca_file: no endpoint is https");
        assert_eq!(e("cert_file = \"/c.pem\""), "cert_file: needs key_file");
        assert_eq!(
            e("ca_file = \"ca.pem\""),
            "ca_file: ca.pem is not an absolute path"
        );
        assert_eq!(
            raw("store = \"etcd\"\nendpoints = [\"https://127.0.0.1\"]").unwrap_err(),
            "ca_file: https endpoints need the CA that signed the etcd servers' certificates"
        );
        assert_eq!(
            raw("store = \"etcd\"\nendpoints = [\"https://10.0.0.5\", \"http://10.0.0.6\"]\nca_file = \"/ca.pem\"").unwrap_err(),
            "endpoints: mixes http:// and https:// URLs; reach every member the same way (all https, with ca_file, or all http)"
        );
        assert!(raw("store = \"consul\"")
            .unwrap_err()
            .contains("unknown variant `consul`"));
        assert!(raw("store = \"etcd\"\nendpoint = []")
            .unwrap_err()
            .contains("unknown field `endpoint`"));
    }
}
