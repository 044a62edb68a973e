//! Leases in etcd, for nodes whose MACVLANs share one L2: one key per
//! leased address, claimed and released by compare-and-swap transactions,
//! so nothing locks a pool and no node ever waits for another.
//!
//! The layout is a contract (admins read it with `etcdctl`):
//!
//! - `<prefix>/leases/<network>/<address>`: `{"node", "netns", "container"}`,
//!   created only if absent (`create_revision == 0`), deleted only while it
//!   still holds the releasing holder (its value, or its `mod_revision`
//!   once read).
//! - `<prefix>/nodes/<node>`: the host id ([`host_id`]: derived from the
//!   machine id, which itself never leaves the host) of the host that uses
//!   the node name, written by that host's first claim. Every claim
//!   compares it in the same transaction, so two hosts given one name
//!   cannot both lease.
//!
//! etcd is reached through its gRPC gateway (JSON over HTTP/1.1: `POST
//! /v3/kv/range`, `/v3/kv/txn`; keys and values base64), on one blocking
//! connection per run (see [`super::http`]). A claim is a keys-only range
//! read of the network's prefix and one create: two round trips.
//!
//! A run (one hook call, attach, detach or gc) has `timeout_ms` for all of
//! its requests together: the first starts the clock, each later one gets
//! what is left, and once nothing is, they fail at once. Within that,
//! endpoints are tried in turn (a member that is down refuses at once; one
//! that hangs gets about `timeout_ms` / the number of endpoints), pass
//! after pass, until one answers or time is up. A hook must give up well
//! inside its runtime's timeout, however many requests it makes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime_config::leases::{Endpoint, EtcdConfig};
use runtime_config::Pool;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::http::{self, Conn, HttpError};
use super::{check_assignable, search, Holder, LeaseError, LeaseStore, MAX_PROBES};

/// Why etcd could not do what was asked. Each names the store.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint answered within the budget; what each last said.
    #[error("etcd: no endpoint answered within {timeout_ms} ms ({tried})")]
    Unavailable { timeout_ms: u128, tried: String },
    /// Earlier in this run the store was unreachable.
    #[error("etcd: unreachable earlier in this run ({0})")]
    StillUnavailable(String),
    /// This run's requests took its whole budget.
    #[error("etcd: this run's timeout_ms ({timeout_ms} ms) is used up by its earlier requests")]
    Spent { timeout_ms: u128 },
    /// An endpoint refused the request itself (a 4xx: not worth retrying).
    #[error("etcd {endpoint}: {message} (HTTP {status})")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("etcd {endpoint}: unexpected answer: {what}")]
    BadAnswer { endpoint: String, what: String },
    /// A lease key whose value is no holder (written by hand, or by
    /// something else): named, never guessed at.
    #[error("etcd: {key}: not a lease value ({source})")]
    BadValue {
        key: String,
        source: serde_json::Error,
    },
    #[error("etcd: node {node:?} is used by another host (host id {theirs}, not this host's {ours}); give this host its own [leases] node, or if that host is gone for good, nsbypass gc --node {node}")]
    NodeTaken {
        node: String,
        theirs: String,
        ours: String,
    },
    #[error("etcd: {0}")]
    Tls(String),
    #[error("etcd: the host name {0:?} is no node name; set [leases] node")]
    NodeName(String),
}

/// The value of a lease key. Its node is never empty: an empty host is
/// the file store's legacy "this host's" (`Holder::same_host`), which in
/// a store shared by nodes would make the lease every node's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Value_ {
    #[serde(deserialize_with = "some_node")]
    node: String,
    netns: String,
    container: String,
}

fn some_node<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let node = String::deserialize(d)?;
    if node.is_empty() {
        return Err(serde::de::Error::invalid_value(
            serde::de::Unexpected::Str(""),
            &"a node name",
        ));
    }
    Ok(node)
}

impl From<&Holder> for Value_ {
    fn from(h: &Holder) -> Value_ {
        Value_ {
            node: h.host.clone(),
            netns: h.netns.clone(),
            container: h.container.clone(),
        }
    }
}

impl From<Value_> for Holder {
    fn from(v: Value_) -> Holder {
        Holder {
            host: v.node,
            netns: v.netns,
            container: v.container,
        }
    }
}

/// A key and what etcd says about it.
#[derive(Debug, Clone)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub mod_revision: String,
}

/// The connection to the cluster: endpoints, budget, the open connection.
pub struct Client {
    endpoints: Vec<Endpoint>,
    timeout: Duration,
    tls_files: Option<runtime_config::leases::Tls>,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The open connection and the endpoint it is to.
    conn: Option<(usize, Conn)>,
    /// The endpoint to try first: the one that answered last.
    next: usize,
    /// When this run's budget ends; its first request sets it.
    deadline: Option<Instant>,
    /// Set once the store was unreachable for the rest of a budget.
    unavailable: Option<String>,
}

/// The least time one attempt at one endpoint gets, however many endpoints
/// share the budget: a connect, a TLS handshake and an answer, on a LAN.
const MIN_SHARE: Duration = Duration::from_millis(100);

/// How one attempt at one endpoint went wrong.
enum Attempt {
    /// Try the next endpoint (down, timed out, no leader, ...).
    Next(String),
    /// Try the next endpoint, but this one will not do better by waiting
    /// (its certificate is not trusted, or it refuses ours).
    Broken(String),
    /// Stop: the request itself is wrong, or the answer is.
    Stop(EtcdError),
}

impl From<HttpError> for Attempt {
    fn from(e: HttpError) -> Attempt {
        match e {
            HttpError::Tls(_) => Attempt::Broken(e.to_string()),
            e => Attempt::Next(e.to_string()),
        }
    }
}

impl Client {
    /// A client for `config`; connects at the first request, not before.
    pub fn new(config: &EtcdConfig) -> Client {
        let n = config.endpoints.len();
        Client {
            endpoints: config.endpoints.clone(),
            timeout: config.timeout,
            tls_files: config.tls.clone(),
            tls: None,
            conn: None,
            // Nodes spread their first attempts over the members.
            next: std::process::id() as usize % n.max(1),
            deadline: None,
            unavailable: None,
        }
    }

    /// Gives the next request a budget of its own, for a command that
    /// makes progress request by request however long it takes in all
    /// (`gc --node`, run by a person, not by a runtime).
    pub fn fresh_budget(&mut self) {
        self.deadline = None;
    }

    /// How long one attempt at one endpoint may take: the budget shared
    /// among the endpoints, so hung members cannot use all of it while
    /// others would answer (2 of 5 blackholed cost 2/5 of it at most).
    fn share(&self) -> Duration {
        (self.timeout / self.endpoints.len().max(1) as u32).max(MIN_SHARE)
    }

    fn tls(&mut self) -> Result<Option<Arc<rustls::ClientConfig>>, EtcdError> {
        if self.tls.is_none() {
            if let Some(files) = &self.tls_files {
                let config = http::tls_config(files).map_err(|e| EtcdError::Tls(e.to_string()))?;
                self.tls = Some(config);
            }
        }
        Ok(self.tls.clone())
    }

    /// POSTs `body` to `path` on the first endpoint that answers, within
    /// what is left of the run's budget (the first request starts it).
    pub fn call(&mut self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        if let Some(earlier) = &self.unavailable {
            return Err(EtcdError::StillUnavailable(earlier.clone()));
        }
        let tls = self.tls()?;
        let body = serde_json::to_vec(body).expect("a request serialises");
        let timeout = self.timeout;
        let deadline = *self
            .deadline
            .get_or_insert_with(|| Instant::now() + timeout);
        if Instant::now() >= deadline {
            return Err(EtcdError::Spent {
                timeout_ms: self.timeout.as_millis(),
            });
        }
        let n = self.endpoints.len();
        let mut said: Vec<Option<String>> = vec![None; n];
        let mut pause = Duration::from_millis(10);
        let all_broken = loop {
            let mut broken = 0;
            for i in 0..n {
                let index = (self.next + i) % n;
                if Instant::now() >= deadline {
                    break;
                }
                match self.attempt(index, path, &body, tls.as_ref(), deadline) {
                    Ok(value) => {
                        self.next = index;
                        return Ok(value);
                    }
                    Err(Attempt::Stop(e)) => return Err(e),
                    Err(Attempt::Next(why)) => {
                        tracing::debug!(endpoint = %self.endpoints[index], why, "etcd endpoint did not answer");
                        said[index] = Some(why);
                    }
                    Err(Attempt::Broken(why)) => {
                        said[index] = Some(why);
                        broken += 1;
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            // No time left, or no endpoint that waiting could fix.
            if left.is_zero() || broken == n {
                break broken == n;
            }
            // Every endpoint refused or said "no leader" for now: an
            // election takes a moment.
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(200));
        };
        let tried = self
            .endpoints
            .iter()
            .zip(said)
            .map(|(e, why)| format!("{e}: {}", why.unwrap_or_else(|| "not tried".into())))
            .collect::<Vec<_>>()
            .join("; ");
        let error = match all_broken {
            true => EtcdError::Tls(format!("no endpoint would do TLS with us ({tried})")),
            false => EtcdError::Unavailable {
                timeout_ms: self.timeout.as_millis(),
                tried,
            },
        };
        self.unavailable = Some(error.to_string());
        Err(error)
    }

    fn attempt(
        &mut self,
        index: usize,
        path: &str,
        body: &[u8],
        tls: Option<&Arc<rustls::ClientConfig>>,
        deadline: Instant,
    ) -> Result<Value, Attempt> {
        // A member that accepts and then hangs (stopped, or no quorum
        // behind it) or a blackholed one gets its share, so the others get
        // a turn.
        let until = deadline.min(Instant::now() + self.share());
        let endpoint = &self.endpoints[index];
        let mut conn = match self.conn.take() {
            Some((i, conn)) if i == index && !conn.closing() => conn,
            _ => Conn::open(endpoint, tls, until).map_err(Attempt::from)?,
        };
        let response = conn.post(path, body, until).map_err(Attempt::from)?;
        let value: Result<Value, _> = serde_json::from_slice(&response.body);
        match response.status {
            200 => {
                self.conn = Some((index, conn));
                value.map_err(|e| {
                    Attempt::Stop(EtcdError::BadAnswer {
                        endpoint: endpoint.to_string(),
                        what: format!("{path}: {e}"),
                    })
                })
            }
            status => {
                let message = value
                    .ok()
                    .and_then(|v| {
                        v.get("message")
                            .or_else(|| v.get("error"))
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned());
                let message = crate::failure::bounded(&crate::failure::one_line(&message), 300);
                if !conn.closing() {
                    self.conn = Some((index, conn));
                }
                // 5xx: unavailable, no leader, timed out, leader changed:
                // another member may do better.
                if status >= 500 {
                    return Err(Attempt::Next(format!("HTTP {status}: {message}")));
                }
                Err(Attempt::Stop(EtcdError::Refused {
                    endpoint: endpoint.to_string(),
                    status,
                    message,
                }))
            }
        }
    }

    /// One endpoint alone, with a budget of its own (for doctor, which
    /// asks each in turn): its status.
    pub fn status_of(&mut self, index: usize) -> Result<Value, String> {
        let tls = self.tls().map_err(|e| e.to_string())?;
        let endpoint = &self.endpoints[index];
        let deadline = Instant::now() + self.timeout;
        let mut conn = Conn::open(endpoint, tls.as_ref(), deadline).map_err(|e| e.to_string())?;
        let response = conn
            .post("/v3/maintenance/status", b"{}", deadline)
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_slice(&response.body).map_err(|e| e.to_string())?;
        if response.status != 200 {
            let message = value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            return Err(format!("HTTP {}: {message}", response.status));
        }
        Ok(value)
    }

    /// Every key from `key` up to `end` (exclusive), values too unless
    /// `keys_only`. Linearizable: it needs the cluster's quorum.
    pub fn range(
        &mut self,
        key: &[u8],
        end: Option<&[u8]>,
        keys_only: bool,
    ) -> Result<Vec<Kv>, EtcdError> {
        let mut body = json!({ "key": b64(key) });
        if let Some(end) = end {
            body["range_end"] = b64(end).into();
        }
        if keys_only {
            body["keys_only"] = true.into();
        }
        let answer = self.call("/v3/kv/range", &body)?;
        self.kvs(&answer)
    }

    /// A transaction; whether it succeeded, and each response's key-values
    /// (empty for puts and deletes).
    pub fn txn(&mut self, body: &Value) -> Result<(bool, Vec<Vec<Kv>>), EtcdError> {
        let answer = self.call("/v3/kv/txn", body)?;
        let succeeded = answer
            .get("succeeded")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let mut all = Vec::new();
        for response in answer
            .get("responses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            all.push(match response.get("response_range") {
                Some(range) => self.kvs(range)?,
                None => Vec::new(),
            });
        }
        Ok((succeeded, all))
    }

    fn bad(&self, what: String) -> EtcdError {
        EtcdError::BadAnswer {
            endpoint: self.endpoints[self.next].to_string(),
            what,
        }
    }

    fn kvs(&self, answer: &Value) -> Result<Vec<Kv>, EtcdError> {
        let mut out = Vec::new();
        for kv in answer
            .get("kvs")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let field = |name: &str| -> Result<Vec<u8>, EtcdError> {
                match kv.get(name).and_then(Value::as_str) {
                    None => Ok(Vec::new()),
                    Some(text) => {
                        unb64(text).ok_or_else(|| self.bad(format!("{name} is not base64")))
                    }
                }
            };
            out.push(Kv {
                key: field("key")?,
                value: field("value")?,
                mod_revision: kv
                    .get("mod_revision")
                    .and_then(Value::as_str)
                    .unwrap_or("0")
                    .to_owned(),
            });
        }
        Ok(out)
    }
}

/// The key just past every key that starts with `prefix`: etcd's
/// `range_end` for a prefix read.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: to the end of the key space.
    vec![0]
}

/// This node's name: `[leases] node`, else the host name.
pub fn node_name(config: &EtcdConfig) -> Result<String, EtcdError> {
    if let Some(node) = &config.node {
        return Ok(node.clone());
    }
    // gethostname(2) reads the same: this UTS namespace's host name.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    runtime_config::leases::check_node_name(&host)
        .map_err(|_| EtcdError::NodeName(host.clone()))?;
    Ok(host)
}

/// The id `<prefix>/nodes/<node>` names the host with `machine_id` by:
/// hex SHA-256 of `nsbypass-node-id:` and the machine id. systemd advises
/// against exposing the machine id itself (it is a secret of the host's,
/// from which other ids are derived); this one is nsbypass's own, the same
/// for the host every time, and tells nothing of the machine id.
pub fn host_id(machine_id: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"nsbypass-node-id:")
        .chain_update(machine_id.as_bytes())
        .finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a create found.
enum Created {
    Yes,
    /// Somebody holds the address.
    Held(Holder),
    /// The key came and went under every attempt.
    Changing,
}

/// Leases in etcd (see the module's doc). Connects at the first operation.
pub struct EtcdLeases {
    client: std::cell::RefCell<Client>,
    prefix: String,
    node: String,
    /// [`host_id`] of this host's machine id.
    host_id: String,
    /// [`MAX_PROBES`], lowered by tests.
    probes: u128,
}

impl EtcdLeases {
    /// The store for `config`, as node `node` on the host with
    /// `machine_id` (kept only as its [`host_id`]).
    pub fn new(config: &EtcdConfig, node: &str, machine_id: &str) -> EtcdLeases {
        EtcdLeases {
            client: std::cell::RefCell::new(Client::new(config)),
            prefix: config.prefix.clone(),
            node: node.to_owned(),
            host_id: host_id(machine_id),
            probes: MAX_PROBES,
        }
    }

    /// What this host registers its node name with (see [`host_id`]).
    pub fn host_id(&self) -> &str {
        &self.host_id
    }

    /// The connection, for checks that talk to etcd directly (doctor).
    pub fn client(&self) -> std::cell::RefMut<'_, Client> {
        self.client.borrow_mut()
    }

    fn leases_root(&self) -> String {
        format!("{}/leases/", self.prefix)
    }

    fn network_prefix(&self, network: &str) -> String {
        format!("{}/leases/{network}/", self.prefix)
    }

    fn key(&self, network: &str, address: IpAddr) -> String {
        format!("{}/leases/{network}/{address}", self.prefix)
    }

    /// `<prefix>/nodes/<node>`.
    pub fn node_key(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// Every key under `prefix`, values too unless `keys_only`.
    fn under(&self, prefix: &str, keys_only: bool) -> Result<Vec<Kv>, EtcdError> {
        let prefix = prefix.as_bytes();
        self.client
            .borrow_mut()
            .range(prefix, Some(&prefix_end(prefix)), keys_only)
    }

    /// `key`, with its value, if it exists.
    fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let kvs = self
            .client
            .borrow_mut()
            .range(key.as_bytes(), None, false)?;
        Ok(kvs.into_iter().next())
    }

    fn encode(holder: &Holder) -> Vec<u8> {
        serde_json::to_vec(&Value_::from(holder)).expect("a holder serialises")
    }

    /// The holder a lease key's value names; a value that is none (not
    /// JSON, a field missing, an empty node) is an error naming the key.
    fn decode(&self, key: &[u8], value: &[u8]) -> Result<Holder, LeaseError> {
        serde_json::from_slice::<Value_>(value)
            .map(Holder::from)
            .map_err(|source| {
                LeaseError::Etcd(EtcdError::BadValue {
                    key: String::from_utf8_lossy(key).into_owned(),
                    source,
                })
            })
    }

    /// The addresses leased on `network`, by anyone.
    fn taken(&self, network: &str) -> Result<BTreeSet<IpAddr>, LeaseError> {
        let prefix = self.network_prefix(network);
        let kvs = self.under(&prefix, true)?;
        Ok(kvs
            .iter()
            .filter_map(|kv| address_of(&kv.key, &prefix))
            .collect())
    }

    /// Creates the lease key of `address` for `holder` unless it exists, in
    /// one transaction that also checks this node's name is this host's.
    fn create(
        &self,
        network: &str,
        address: IpAddr,
        holder: &Holder,
    ) -> Result<Created, LeaseError> {
        let key = self.key(network, address);
        let node_key = self.node_key(&self.node);
        let value = Self::encode(holder);
        // At most: register the node, then once more for a key released
        // between the create and the look.
        for _ in 0..3 {
            let txn = json!({
                "compare": [
                    {"key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                    {"key": b64(node_key.as_bytes()), "target": "VALUE", "result": "EQUAL", "value": b64(self.host_id.as_bytes())},
                ],
                "success": [{"request_put": {"key": b64(key.as_bytes()), "value": b64(&value)}}],
                "failure": [
                    {"request_range": {"key": b64(key.as_bytes())}},
                    {"request_range": {"key": b64(node_key.as_bytes())}},
                ],
            });
            let (succeeded, found) = self.client.borrow_mut().txn(&txn)?;
            if succeeded {
                return Ok(Created::Yes);
            }
            let lease = found.first().and_then(|kvs| kvs.first()).cloned();
            let registered = found.get(1).and_then(|kvs| kvs.first()).cloned();
            match registered {
                None => {
                    self.register()?;
                    continue;
                }
                Some(kv) if kv.value != self.host_id.as_bytes() => {
                    return Err(self.node_taken(&kv.value));
                }
                Some(_) => {}
            }
            match lease {
                // Our own earlier attempt (answered too late) made it.
                Some(kv) if kv.value == value => return Ok(Created::Yes),
                Some(kv) => return Ok(Created::Held(self.decode(&kv.key, &kv.value)?)),
                None => continue,
            }
        }
        Ok(Created::Changing)
    }

    fn node_taken(&self, theirs: &[u8]) -> LeaseError {
        LeaseError::Etcd(EtcdError::NodeTaken {
            node: self.node.clone(),
            theirs: String::from_utf8_lossy(theirs).into_owned(),
            ours: self.host_id.clone(),
        })
    }

    /// Writes `<prefix>/nodes/<node>` = this host's host id, unless the
    /// key exists; fails if it names another host.
    fn register(&self) -> Result<(), LeaseError> {
        let key = self.node_key(&self.node);
        let txn = json!({
            "compare": [{"key": b64(key.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key.as_bytes()), "value": b64(self.host_id.as_bytes())}}],
            "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
        });
        let (succeeded, found) = self.client.borrow_mut().txn(&txn)?;
        if succeeded {
            tracing::info!(node = %self.node, key, "registered this host's node name in etcd");
            return Ok(());
        }
        match found.first().and_then(|kvs| kvs.first()) {
            Some(kv) if kv.value != self.host_id.as_bytes() => Err(self.node_taken(&kv.value)),
            _ => Ok(()),
        }
    }

    /// Who `<prefix>/nodes/<node>` says uses `node`, if anyone.
    pub fn registered(&self, node: &str) -> Result<Option<String>, EtcdError> {
        Ok(self
            .get(&self.node_key(node))?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Deletes `key` if its `mod_revision` is still `revision`.
    fn delete_if_unchanged(&self, key: &[u8], revision: &str) -> Result<bool, LeaseError> {
        let txn = json!({
            "compare": [{"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": revision}],
            "success": [{"request_delete_range": {"key": b64(key)}}],
            "failure": [],
        });
        Ok(self.client.borrow_mut().txn(&txn)?.0)
    }

    /// Every lease of `node` (another node, gone for good): released, then
    /// its name's registration. Returns them as (network, address,
    /// container). Each request has a budget of its own: this is an
    /// operator's command, and each delete is progress.
    pub fn release_node(&self, node: &str) -> Result<Vec<(String, IpAddr, String)>, LeaseError> {
        let root = self.leases_root();
        let kvs = self.under(&root, false)?;
        let mut freed = Vec::new();
        for kv in kvs {
            let Some((network, address)) = split_lease_key(&kv.key, &root) else {
                continue;
            };
            let holder = self.decode(&kv.key, &kv.value)?;
            if holder.host != node {
                continue;
            }
            // A node's hundreds of leases may take longer than one budget:
            // each delete gets its own (see `Client::fresh_budget`).
            self.client.borrow_mut().fresh_budget();
            if self.delete_if_unchanged(&kv.key, &kv.mod_revision)? {
                freed.push((network, address, holder.container));
            }
        }
        let key = self.node_key(node);
        self.client.borrow_mut().fresh_budget();
        self.client.borrow_mut().txn(&json!({
            "success": [{"request_delete_range": {"key": b64(key.as_bytes())}}],
        }))?;
        Ok(freed)
    }
}

/// The address of a key `<network prefix><address>`; `None` for a key
/// that is no lease (nothing else is put there, but admins may).
fn address_of(key: &[u8], network_prefix: &str) -> Option<IpAddr> {
    std::str::from_utf8(key.strip_prefix(network_prefix.as_bytes())?)
        .ok()?
        .parse()
        .ok()
}

/// `(network, address)` of a key `<root><network>/<address>`.
fn split_lease_key(key: &[u8], root: &str) -> Option<(String, IpAddr)> {
    let rest = std::str::from_utf8(key.strip_prefix(root.as_bytes())?).ok()?;
    let (network, address) = rest.split_once('/')?;
    Some((network.to_owned(), address.parse().ok()?))
}

impl LeaseStore for EtcdLeases {
    fn holder(&self, network: &str, address: IpAddr) -> Result<Option<Holder>, LeaseError> {
        match self.get(&self.key(network, address))? {
            Some(kv) => Ok(Some(self.decode(&kv.key, &kv.value)?)),
            None => Ok(None),
        }
    }

    fn acquire_from(
        &mut self,
        network: &str,
        pool: Pool<'_>,
        holder: &Holder,
        seed: &str,
        want: Option<IpAddr>,
    ) -> Result<IpAddr, LeaseError> {
        if let Some(address) = want {
            check_assignable(pool, address)?;
            return match self.create(network, address, holder)? {
                Created::Yes => Ok(address),
                Created::Held(h) if h.same_namespace(holder) => Ok(address),
                Created::Held(h) => Err(LeaseError::Taken {
                    address,
                    container: h.container,
                }),
                Created::Changing => Err(LeaseError::Taken {
                    address,
                    container: "(changing)".into(),
                }),
            };
        }
        let taken = self.taken(network)?;
        let probes = self.probes;
        search(pool, network, seed, probes, |address| {
            // Another node may have claimed it since the read: then on.
            Ok(!taken.contains(&address)
                && matches!(self.create(network, address, holder)?, Created::Yes))
        })
    }

    fn release(
        &mut self,
        network: &str,
        address: IpAddr,
        holder: &Holder,
    ) -> Result<(), LeaseError> {
        let key = self.key(network, address);
        let txn = json!({
            "compare": [{"key": b64(key.as_bytes()), "target": "VALUE", "result": "EQUAL", "value": b64(&Self::encode(holder))}],
            "success": [{"request_delete_range": {"key": b64(key.as_bytes())}}],
            "failure": [{"request_range": {"key": b64(key.as_bytes())}}],
        });
        let (succeeded, found) = self.client.borrow_mut().txn(&txn)?;
        if succeeded {
            return Ok(());
        }
        // Held by the namespace under another container's name (a pod's
        // member made the link): delete it if nobody changed it since.
        let Some(kv) = found.into_iter().flatten().next() else {
            return Ok(());
        };
        if self.decode(&kv.key, &kv.value)?.same_namespace(holder) {
            self.delete_if_unchanged(&kv.key, &kv.mod_revision)?;
        }
        Ok(())
    }

    fn list(&self, network: &str) -> Result<Vec<(IpAddr, Holder)>, LeaseError> {
        let prefix = self.network_prefix(network);
        let mut leases = Vec::new();
        for kv in self.under(&prefix, false)? {
            let Some(address) = address_of(&kv.key, &prefix) else {
                continue;
            };
            leases.push((address, self.decode(&kv.key, &kv.value)?));
        }
        leases.sort_by_key(|(address, _)| *address);
        Ok(leases)
    }

    fn networks(&self) -> Result<Vec<String>, LeaseError> {
        let root = self.leases_root();
        let names: BTreeSet<String> = self
            .under(&root, true)?
            .iter()
            .filter_map(|kv| split_lease_key(&kv.key, &root).map(|(n, _)| n))
            .collect();
        Ok(names.into_iter().collect())
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, as the gateway's JSON carries bytes.
pub fn b64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The inverse of [`b64`]; `None` for anything that is not base64.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use runtime_config::Ipv4Pool;
    use std::collections::BTreeMap;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// What a fake member does with a request (its path and JSON body):
    /// answer with a status and body, or `None`: never answer (the
    /// connection stays open, unread, until the client closes it).
    type Handler = dyn FnMut(&str, &Value) -> Option<(u16, String)> + Send;

    /// A member on 127.0.0.1 that hands every request on every connection
    /// to `handler`, counting the requests; its endpoint.
    fn serve(
        handler: impl FnMut(&str, &Value) -> Option<(u16, String)> + Send + 'static,
    ) -> (Endpoint, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let handler: Arc<Mutex<Box<Handler>>> = Arc::new(Mutex::new(Box::new(handler)));
        std::thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { return };
                let seen = seen.clone();
                let handler = handler.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(sock.try_clone().unwrap());
                    let mut writer = sock;
                    loop {
                        let mut length = 0;
                        let mut path = String::new();
                        loop {
                            let mut line = String::new();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if let Some(rest) = line.strip_prefix("POST ") {
                                path = rest.split(' ').next().unwrap().to_owned();
                            }
                            if let Some(v) = line.strip_prefix("Content-Length: ") {
                                length = v.trim().parse().unwrap();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let mut request = vec![0; length];
                        reader.read_exact(&mut request).unwrap();
                        seen.fetch_add(1, Ordering::SeqCst);
                        let body: Value = serde_json::from_slice(&request).unwrap();
                        let answer = handler.lock().unwrap()(&path, &body);
                        let Some((status, body)) = answer else {
                            let _ = std::io::copy(&mut reader, &mut std::io::sink());
                            return;
                        };
                        let answer = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if writer.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let endpoint = Endpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port,
        };
        (endpoint, count)
    }

    /// A member that answers every request with `status` and `body`.
    fn member(status: u16, body: &'static str) -> (Endpoint, Arc<AtomicUsize>) {
        serve(move |_, _| Some((status, body.to_owned())))
    }

    /// A member that accepts connections (the kernel does, from its
    /// backlog) and never reads or answers, as a stopped etcd; keep the
    /// listener while it is to stay so.
    fn silent() -> (Endpoint, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        (endpoint, listener)
    }

    /// Enough of etcd's KV API, as its JSON gateway speaks it, to hold the
    /// store to its contract: ranges (a key, or up to `range_end`, with or
    /// without values) and transactions whose compares (CREATE, MOD and
    /// VALUE revisions and values, EQUAL) decide which ops run. Revisions
    /// count every write, as etcd's do. Every request is kept.
    #[derive(Default)]
    struct Fake {
        /// key -> (value, create_revision, mod_revision)
        kvs: BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)>,
        revision: i64,
        /// Path and body of every request, in order.
        seen: Vec<(String, Value)>,
        /// Writes by someone else, made just before request N is answered.
        meanwhile: BTreeMap<usize, Vec<(String, String)>>,
    }

    impl Fake {
        fn put(&mut self, key: &[u8], value: &[u8]) {
            self.revision += 1;
            let create = self.kvs.get(key).map_or(self.revision, |kv| kv.1);
            self.kvs
                .insert(key.to_vec(), (value.to_vec(), create, self.revision));
        }

        fn get(&self, key: &str) -> Option<String> {
            self.kvs
                .get(key.as_bytes())
                .map(|kv| String::from_utf8(kv.0.clone()).unwrap())
        }

        fn range(&self, op: &Value) -> Value {
            let bytes = |name: &str| {
                op.get(name)
                    .and_then(Value::as_str)
                    .map(|t| unb64(t).unwrap())
            };
            let key = bytes("key").unwrap();
            let end = bytes("range_end");
            let keys_only = op.get("keys_only").and_then(Value::as_bool) == Some(true);
            let kvs: Vec<Value> = self
                .kvs
                .iter()
                .filter(|(k, _)| match &end {
                    None => **k == key,
                    Some(end) => **k >= key && (end == b"\0" || *k < end),
                })
                .map(|(k, (v, create, modified))| {
                    let mut kv = json!({
                        "key": b64(k),
                        "create_revision": create.to_string(),
                        "mod_revision": modified.to_string(),
                    });
                    if !keys_only {
                        kv["value"] = b64(v).into();
                    }
                    kv
                })
                .collect();
            // The gateway leaves out what is empty (proto3 JSON).
            let mut answer = json!({"header": {"revision": self.revision.to_string()}});
            if !kvs.is_empty() {
                answer["count"] = kvs.len().to_string().into();
                answer["kvs"] = kvs.into();
            }
            answer
        }

        fn holds(&self, compare: &Value) -> bool {
            let key = unb64(compare["key"].as_str().unwrap()).unwrap();
            let kv = self.kvs.get(&key);
            assert_eq!(compare["result"], "EQUAL", "{compare}");
            let field = |name: &str| compare[name].as_str().unwrap().to_owned();
            match compare["target"].as_str().unwrap() {
                "CREATE" => kv.map_or(0, |kv| kv.1).to_string() == field("create_revision"),
                "MOD" => kv.map_or(0, |kv| kv.2).to_string() == field("mod_revision"),
                "VALUE" => kv.is_some_and(|kv| b64(&kv.0) == field("value")),
                other => panic!("compare target {other}"),
            }
        }

        fn answer(&mut self, path: &str, body: &Value) -> (u16, String) {
            let n = self.seen.len();
            self.seen.push((path.to_owned(), body.clone()));
            for (key, value) in self.meanwhile.remove(&n).unwrap_or_default() {
                self.put(key.as_bytes(), value.as_bytes());
            }
            let answer = match path {
                "/v3/kv/range" => self.range(body),
                "/v3/kv/txn" => {
                    let compares = body.get("compare").and_then(Value::as_array);
                    let succeeded = compares.into_iter().flatten().all(|c| self.holds(c));
                    let branch = if succeeded { "success" } else { "failure" };
                    let ops = body.get(branch).and_then(Value::as_array).cloned();
                    let mut responses = Vec::new();
                    for op in ops.into_iter().flatten() {
                        let key = |op: &Value| unb64(op["key"].as_str().unwrap()).unwrap();
                        if let Some(put) = op.get("request_put") {
                            let value = unb64(put["value"].as_str().unwrap()).unwrap();
                            self.put(&key(put), &value);
                            responses.push(json!({"response_put": {}}));
                        } else if let Some(delete) = op.get("request_delete_range") {
                            assert!(delete.get("range_end").is_none());
                            let deleted = self.kvs.remove(&key(delete)).is_some();
                            if deleted {
                                self.revision += 1;
                            }
                            let deleted = u8::from(deleted).to_string();
                            responses.push(json!({"response_delete_range": {"deleted": deleted}}));
                        } else if let Some(range) = op.get("request_range") {
                            responses.push(json!({"response_range": self.range(range)}));
                        } else {
                            panic!("txn op {op}");
                        }
                    }
                    let mut answer = json!({
                        "header": {"revision": self.revision.to_string()},
                        "responses": responses,
                    });
                    if succeeded {
                        answer["succeeded"] = true.into();
                    }
                    answer
                }
                other => panic!("path {other}"),
            };
            (200, answer.to_string())
        }
    }

    /// A member serving `fake`.
    fn fake_member(fake: &Arc<Mutex<Fake>>) -> Endpoint {
        let fake = fake.clone();
        serve(move |path, body| Some(fake.lock().unwrap().answer(path, body))).0
    }

    fn config(endpoints: Vec<Endpoint>, timeout_ms: u64) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: "/t".into(),
            node: Some("n".into()),
            timeout: Duration::from_millis(timeout_ms),
            tls: None,
        }
    }

    const RANGE: &str = r#"{"header":{"revision":"2"},"kvs":[{"key":"L3QvbGVhc2VzL2Zhc3QvMTAuMC4wLjU=","mod_revision":"2"}],"count":"1"}"#;

    #[test]
    fn a_member_without_a_leader_is_passed_over_and_one_that_refuses_the_request_stops_it() {
        let (sick, sick_count) = member(
            503,
            r#"{"error":"etcdserver: no leader","message":"etcdserver: no leader","code":14}"#,
        );
        let (well, _) = member(200, RANGE);
        for first in [0, 1] {
            let mut client = Client::new(&config(vec![sick.clone(), well.clone()], 2000));
            client.next = first;
            let kvs = client
                .range(b"/t/leases/fast/", Some(b"/t/leases/fast0"), true)
                .unwrap();
            assert_eq!(kvs[0].key, b"/t/leases/fast/10.0.0.5");
            assert_eq!(
                client.next, 1,
                "the one that answered is asked first next time"
            );
        }
        assert!(sick_count.load(Ordering::SeqCst) >= 1);

        let (wrong, wrong_count) = member(
            400,
            r#"{"error":"bad","message":"etcdserver: key is not provided","code":3}"#,
        );
        let mut client = Client::new(&config(vec![wrong.clone(), well.clone()], 2000));
        client.next = 0;
        let e = client.range(b"", None, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("etcd {wrong}: etcdserver: key is not provided (HTTP 400)")
        );
        assert_eq!(wrong_count.load(Ordering::SeqCst), 1, "not retried");
    }

    #[test]
    fn a_cluster_without_an_answer_fails_within_the_budget_then_at_once() {
        let (sick, _) = member(503, r#"{"message":"etcdserver: request timed out"}"#);
        let refused = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            Endpoint {
                tls: false,
                host: "127.0.0.1".into(),
                port: l.local_addr().unwrap().port(),
            }
        };
        let store = EtcdLeases::new(&config(vec![refused.clone(), sick.clone()], 300), "n", "m");
        let started = Instant::now();
        let e = store
            .holder("fast", "10.0.0.5".parse().unwrap())
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(800),
            "{took:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with("etcd: no endpoint answered within 300 ms (")
                && text.contains(&format!("{refused}: connect: Connection refused"))
                && text.contains(&format!("{sick}: HTTP 503: etcdserver: request timed out")),
            "{text}"
        );
        let started = Instant::now();
        let e = store
            .holder("fast", "10.0.0.5".parse().unwrap())
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(50));
        assert!(
            e.to_string()
                .starts_with("etcd: unreachable earlier in this run (etcd: no endpoint answered"),
            "{e}"
        );
    }

    #[test]
    fn a_run_has_one_budget_for_all_its_requests() {
        // The first request is answered after 250 ms of the 400; then the
        // member goes silent. The second request gets the 150 ms left, not
        // a budget of its own, and the run fails by 400 ms.
        let mut answered = false;
        let (slow, count) = serve(move |_, _| {
            if std::mem::replace(&mut answered, true) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(250));
            Some((200, RANGE.to_owned()))
        });
        let mut client = Client::new(&config(vec![slow.clone()], 400));
        let started = Instant::now();
        client
            .range(b"/t/leases/fast/10.0.0.5", None, false)
            .unwrap();
        let e = client
            .range(b"/t/leases/fast/10.0.0.5", None, false)
            .unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(390) && took < Duration::from_millis(500),
            "{took:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("etcd: no endpoint answered within 400 ms ({slow}: timed out)")
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);

        // Then every later request of the run fails at once.
        let started = Instant::now();
        let e = client.range(b"/t/x", None, false).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(20));
        assert!(
            e.to_string()
                .starts_with("etcd: unreachable earlier in this run (etcd: no endpoint answered"),
            "{e}"
        );

        // A budget spent between answers: the next request fails at once,
        // one line naming the store, without a word to any member.
        let (fine, count) = member(200, RANGE);
        let mut client = Client::new(&config(vec![fine], 100));
        client.range(b"/t/x", None, false).unwrap();
        std::thread::sleep(Duration::from_millis(110));
        let started = Instant::now();
        let e = client.range(b"/t/x", None, false).unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(20));
        assert_eq!(
            e.to_string(),
            "etcd: this run's timeout_ms (100 ms) is used up by its earlier requests"
        );
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn hung_members_get_a_share_of_the_budget_so_the_quorum_answers() {
        // Five members, the first two tried stopped (they accept, never
        // answer): each costs a fifth of the budget, the third answers.
        let (a, _keep_a) = silent();
        let (b, _keep_b) = silent();
        let (c, count) = member(200, RANGE);
        let (d, _) = member(200, RANGE);
        let (e, _) = member(200, RANGE);
        let mut client = Client::new(&config(vec![a, b, c, d, e], 1000));
        client.next = 0;
        let started = Instant::now();
        client.range(b"/t/x", None, false).unwrap();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(390) && took < Duration::from_millis(600),
            "{took:?}"
        );
        assert_eq!(client.next, 2);
        assert_eq!(count.load(Ordering::SeqCst), 1);
        // The rest of the run starts at the member that answered.
        client.range(b"/t/x", None, false).unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    const MACHINE: &str = "0123456789abcdef0123456789abcdef";

    fn pool8() -> Ipv4Pool {
        Ipv4Pool {
            subnet: "10.9.0.0/24".parse().unwrap(),
            first: "10.9.0.1".parse().unwrap(),
            last: "10.9.0.8".parse().unwrap(),
            gateway: None,
            routes: vec![],
        }
    }

    fn ours(container: &str) -> Holder {
        Holder {
            host: "n".into(),
            netns: "1-2".into(),
            container: container.into(),
        }
    }

    fn value(node: &str, netns: &str, container: &str) -> String {
        format!(r#"{{"node":"{node}","netns":"{netns}","container":"{container}"}}"#)
    }

    /// A fake cluster where node `n` is registered to this host (of
    /// [`MACHINE`]), and the store of node `n` on it.
    fn registered_fake() -> (Arc<Mutex<Fake>>, EtcdLeases) {
        let fake = Arc::new(Mutex::new(Fake::default()));
        fake.lock()
            .unwrap()
            .put(b"/t/nodes/n", host_id(MACHINE).as_bytes());
        let store = EtcdLeases::new(&config(vec![fake_member(&fake)], 2000), "n", MACHINE);
        (fake, store)
    }

    fn paths(fake: &Arc<Mutex<Fake>>) -> Vec<String> {
        let fake = fake.lock().unwrap();
        fake.seen.iter().map(|(p, _)| p.clone()).collect()
    }

    #[test]
    fn a_claim_is_a_read_and_a_create_and_one_lost_to_another_node_moves_on() {
        let pool = pool8();
        let holder = ours("c1");
        let start = crate::lease::start_slot(Pool::V4(&pool), "c1", "fast");
        let slot = |i: u128| IpAddr::V4(pool.nth(((start + i) % 8) as u32));
        let key = |a: IpAddr| format!("/t/leases/fast/{a}");

        // The common case: two requests, a keys-only read of the network
        // and the create, which compares the key's absence and this
        // node's registration.
        let (fake, mut store) = registered_fake();
        let got = store
            .acquire("fast", Pool::V4(&pool), &holder, None)
            .unwrap();
        assert_eq!(got, slot(0));
        assert_eq!(paths(&fake), ["/v3/kv/range", "/v3/kv/txn"]);
        {
            let fake = fake.lock().unwrap();
            let range = &fake.seen[0].1;
            assert_eq!(range["key"], b64(b"/t/leases/fast/"));
            assert_eq!(range["keys_only"], true);
            let txn = &fake.seen[1].1;
            assert_eq!(
                txn["compare"],
                json!([
                    {"key": b64(key(got).as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                    {"key": b64(b"/t/nodes/n"), "target": "VALUE", "result": "EQUAL", "value": b64(host_id(MACHINE).as_bytes())},
                ])
            );
            assert_eq!(fake.get(&key(got)).unwrap(), value("n", "1-2", "c1"));
        }

        // The read says the slot is free; another node takes it before our
        // create, which fails on its compare and finds the other holder:
        // the search goes on to the next slot, and the other's key stays.
        let (fake, mut store) = registered_fake();
        let theirs = value("m", "7-8", "other");
        fake.lock()
            .unwrap()
            .meanwhile
            .insert(1, vec![(key(slot(0)), theirs.clone())]);
        let got = store
            .acquire("fast", Pool::V4(&pool), &holder, None)
            .unwrap();
        assert_eq!(got, slot(1));
        assert_eq!(paths(&fake), ["/v3/kv/range", "/v3/kv/txn", "/v3/kv/txn"]);
        {
            let fake = fake.lock().unwrap();
            assert_eq!(fake.get(&key(slot(0))).unwrap(), theirs);
            assert_eq!(fake.get(&key(slot(1))).unwrap(), value("n", "1-2", "c1"));
        }

        // An address the read shows taken is not even tried.
        let (fake, mut store) = registered_fake();
        fake.lock()
            .unwrap()
            .put(key(slot(0)).as_bytes(), theirs.as_bytes());
        let got = store
            .acquire("fast", Pool::V4(&pool), &holder, None)
            .unwrap();
        assert_eq!(got, slot(1));
        assert_eq!(paths(&fake), ["/v3/kv/range", "/v3/kv/txn"]);

        // A node's first claim registers it (create-if-absent), then
        // claims; a name registered to another host is refused, nothing
        // written.
        let fake = Arc::new(Mutex::new(Fake::default()));
        let mut store = EtcdLeases::new(&config(vec![fake_member(&fake)], 2000), "n", MACHINE);
        let got = store
            .acquire("fast", Pool::V4(&pool), &holder, None)
            .unwrap();
        assert_eq!(got, slot(0));
        assert_eq!(
            paths(&fake),
            ["/v3/kv/range", "/v3/kv/txn", "/v3/kv/txn", "/v3/kv/txn"]
        );
        assert_eq!(
            fake.lock().unwrap().get("/t/nodes/n").unwrap(),
            host_id(MACHINE)
        );
        let fake = Arc::new(Mutex::new(Fake::default()));
        fake.lock().unwrap().put(b"/t/nodes/n", b"feed");
        let mut store = EtcdLeases::new(&config(vec![fake_member(&fake)], 2000), "n", MACHINE);
        let e = store
            .acquire("fast", Pool::V4(&pool), &holder, None)
            .unwrap_err();
        assert!(
            matches!(e, LeaseError::Etcd(EtcdError::NodeTaken { .. })),
            "{e}"
        );
        assert_eq!(fake.lock().unwrap().kvs.len(), 1, "no lease written");
    }

    #[test]
    fn a_release_deletes_only_while_the_key_still_names_our_namespace() {
        let address: IpAddr = "10.9.0.5".parse().unwrap();
        let key = "/t/leases/fast/10.9.0.5";

        // Our own: one request, and it is gone.
        let (fake, mut store) = registered_fake();
        fake.lock()
            .unwrap()
            .put(key.as_bytes(), value("n", "1-2", "c1").as_bytes());
        store.release("fast", address, &ours("c1")).unwrap();
        assert_eq!(paths(&fake), ["/v3/kv/txn"]);
        assert_eq!(fake.lock().unwrap().get(key), None);

        // Another holder's (another node with the same namespace key,
        // another namespace of ours): never deleted, one request.
        for theirs in [value("m", "1-2", "c1"), value("n", "3-4", "c9")] {
            let (fake, mut store) = registered_fake();
            fake.lock().unwrap().put(key.as_bytes(), theirs.as_bytes());
            store.release("fast", address, &ours("c1")).unwrap();
            assert_eq!(fake.lock().unwrap().get(key).unwrap(), theirs);
            assert_eq!(paths(&fake), ["/v3/kv/txn"], "{theirs}");
        }
        // A value without a node: an error naming the key, and kept.
        let (fake, mut store) = registered_fake();
        let nobody = value("", "1-2", "c1");
        fake.lock().unwrap().put(key.as_bytes(), nobody.as_bytes());
        let e = store.release("fast", address, &ours("c1")).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "etcd: {key}: not a lease value (invalid value: string \"\""
            )),
            "{e}"
        );
        assert_eq!(fake.lock().unwrap().get(key).unwrap(), nobody);

        // Our namespace under a pod member's name: deleted if unchanged
        // since the release read it, and left if it changed meanwhile.
        let member = value("n", "1-2", "pod-member");
        let (fake, mut store) = registered_fake();
        fake.lock().unwrap().put(key.as_bytes(), member.as_bytes());
        store.release("fast", address, &ours("c1")).unwrap();
        assert_eq!(paths(&fake), ["/v3/kv/txn", "/v3/kv/txn"]);
        assert_eq!(fake.lock().unwrap().get(key), None);
        let (fake, mut store) = registered_fake();
        let now = value("m", "5-6", "new");
        {
            let mut fake = fake.lock().unwrap();
            fake.put(key.as_bytes(), member.as_bytes());
            fake.meanwhile
                .insert(1, vec![(key.to_owned(), now.clone())]);
        }
        store.release("fast", address, &ours("c1")).unwrap();
        assert_eq!(fake.lock().unwrap().get(key).unwrap(), now);

        // Nothing there: one request, nothing done.
        let (fake, mut store) = registered_fake();
        store.release("fast", address, &ours("c1")).unwrap();
        assert_eq!(paths(&fake), ["/v3/kv/txn"]);
    }

    #[test]
    fn a_lease_value_without_a_node_is_an_error_naming_its_key() {
        let store = EtcdLeases::new(&config(vec![], 100), "n", "m");
        let key = b"/t/leases/fast/10.0.0.5";
        assert_eq!(
            store
                .decode(key, br#"{"node":"n1","netns":"1-2","container":"c"}"#)
                .unwrap(),
            Holder {
                host: "n1".into(),
                netns: "1-2".into(),
                container: "c".into()
            }
        );
        for (value, why) in [
            (
                r#"{"node":"","netns":"1-2","container":"c"}"#,
                "invalid value: string \"\", expected a node name",
            ),
            (r#"{"netns":"1-2","container":"c"}"#, "missing field `node`"),
            ("junk", "expected value"),
        ] {
            let e = store.decode(key, value.as_bytes()).unwrap_err();
            assert!(
                matches!(e, LeaseError::Etcd(EtcdError::BadValue { .. })),
                "{e:?}"
            );
            let e = e.to_string();
            assert!(
                e.starts_with("etcd: /t/leases/fast/10.0.0.5: not a lease value (")
                    && e.contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn the_host_id_is_derived_from_the_machine_id_and_is_not_it() {
        let machine = "0123456789abcdef0123456789abcdef";
        // printf 'nsbypass-node-id:0123456789abcdef0123456789abcdef' | sha256sum
        let id = "4c9b9c73642d61989c7851fba1c936902390ccb05c8b82a832ca3a4fe9adf15b";
        assert_eq!(host_id(machine), id);
        let store = EtcdLeases::new(&config(vec![], 100), "n", machine);
        assert_eq!(store.host_id(), id);
        let e = store.node_taken(b"feed").to_string();
        assert!(!e.contains(machine), "{e}");
        assert!(
            e.contains(&format!("(host id feed, not this host's {id})")),
            "{e}"
        );
    }

    #[test]
    fn base64_round_trips_and_matches_the_gateways() {
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"/x/a"), "L3gvYQ==");
        assert_eq!(b64(b"hello"), "aGVsbG8=");
        assert_eq!(b64(b""), "");
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(unb64(&b64(&bytes)).unwrap(), bytes);
        }
        assert_eq!(unb64("L3gvYQ==").unwrap(), b"/x/a");
        assert_eq!(unb64("L3g*"), None);
    }

    #[test]
    fn a_prefix_ends_just_past_its_keys() {
        assert_eq!(prefix_end(b"/n/leases/fast/"), b"/n/leases/fast0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn lease_keys_split_into_network_and_address() {
        assert_eq!(
            split_lease_key(b"/n/leases/fast/10.0.0.5", "/n/leases/"),
            Some(("fast".into(), "10.0.0.5".parse().unwrap()))
        );
        assert_eq!(
            split_lease_key(b"/n/leases/fast/fd00::5", "/n/leases/"),
            Some(("fast".into(), "fd00::5".parse().unwrap()))
        );
        assert_eq!(split_lease_key(b"/n/leases/fast/junk", "/n/leases/"), None);
        assert_eq!(split_lease_key(b"/n/nodes/x", "/n/leases/"), None);
        // A network's own keys, as list and a claim's read take them.
        assert_eq!(
            address_of(b"/n/leases/fast/10.0.0.5", "/n/leases/fast/"),
            Some("10.0.0.5".parse().unwrap())
        );
        for other in [
            &b"/n/leases/fast/10.0.0.5/x"[..],
            b"/n/leases/fast/",
            b"/n/leases/fas",
            b"/n/leases/fast/\xff",
        ] {
            assert_eq!(address_of(other, "/n/leases/fast/"), None);
        }
    }
}
