//! Just enough of nf_tables' netlink interface (`NETLINK_NETFILTER`) to
//! make a netdev table with an egress chain, static rules over sets, and
//! set elements added and removed one link at a time.
//!
//! Why not the `nft` binary: the hook stays one process (a fork and exec
//! of `nft` costs more than the whole link setup), and what it needs is a
//! few fixed messages. Every change goes in one batch, which the kernel
//! applies as one transaction: all of it or none, so a failure leaves
//! nothing half-made.
//!
//! Numbers follow `linux/netfilter/nf_tables.h`; u32 attributes are big
//! endian, as nf_tables reads them. Strings carry their NUL.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::{Error, Result};

/// `NFPROTO_NETDEV`: tables whose chains hook one device.
pub const FAMILY_NETDEV: u8 = 5;
/// `NF_NETDEV_EGRESS` (Linux 5.16): frames a device is about to send,
/// packet sockets' `PACKET_QDISC_BYPASS` ones included.
pub const HOOK_EGRESS: u32 = 1;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const BATCH_BEGIN: u16 = 16;
const BATCH_END: u16 = 17;

const MSG_NEWTABLE: u16 = 0;
const MSG_GETTABLE: u16 = 1;
const MSG_NEWCHAIN: u16 = 3;
const MSG_NEWRULE: u16 = 6;
const MSG_NEWSET: u16 = 9;
const MSG_NEWSETELEM: u16 = 12;
const MSG_GETSETELEM: u16 = 13;
/// The `DESTROY` messages (Linux 6.3) succeed on what is not there.
const MSG_DESTROYTABLE: u16 = 26;
const MSG_DESTROYSETELEM: u16 = 30;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

const TABLE_NAME: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const HOOK_DEV: u16 = 3;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_ID: u16 = 10;
const SET_ELEM_LIST_TABLE: u16 = 1;
const SET_ELEM_LIST_SET: u16 = 2;
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const SET_ELEM_KEY: u16 = 1;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const PAYLOAD_DREG: u16 = 1;
const PAYLOAD_BASE: u16 = 2;
const PAYLOAD_OFFSET: u16 = 3;
const PAYLOAD_LEN: u16 = 4;
const CMP_SREG: u16 = 1;
const CMP_OP: u16 = 2;
const CMP_DATA: u16 = 3;
const LOOKUP_SET: u16 = 1;
const LOOKUP_SREG: u16 = 2;
const LOOKUP_SET_ID: u16 = 4;
const LOOKUP_FLAGS: u16 = 5;
const IMMEDIATE_DREG: u16 = 1;
const IMMEDIATE_DATA: u16 = 2;

/// `NFT_REG_VERDICT`, and the first of the sixteen 32-bit data registers.
const REG_VERDICT: u32 = 0;
pub const REG32_00: u32 = 8;
const PAYLOAD_LL_HEADER: u32 = 0;
const LOOKUP_F_INV: u32 = 1;

/// Unique in the process, like route netlink's (see netlink/socket.rs).
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// What a chain or rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop,
    Accept,
}

impl Verdict {
    fn code(self) -> u32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
        }
    }
}

/// One expression of a rule; a rule's expressions all have to match (a
/// failed comparison ends the rule) for its verdict to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Loads `len` bytes at `offset` from the start of the frame's
    /// Ethernet header into the registers from `reg` on (each register is
    /// 4 bytes; a 6-byte MAC takes two, zero-padded).
    Frame {
        offset: u32,
        len: u32,
        reg: u32,
    },
    /// Compares the registers from `reg` on with `data`.
    Eq {
        reg: u32,
        data: Vec<u8>,
    },
    Ne {
        reg: u32,
        data: Vec<u8>,
    },
    /// Whether the registers from `reg` on, as a key of the set's length,
    /// are in the set (or, `present: false`, are not).
    Lookup {
        set: String,
        reg: u32,
        present: bool,
    },
    Verdict(Verdict),
}

/// A set of fixed-length keys, named in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    pub name: String,
    /// Bytes: the sum of its fields, each rounded up to 4.
    pub key_len: u32,
    /// The type `nft list` prints it as (nftables' own datatype numbers,
    /// six bits per concatenated field); the kernel only stores it.
    pub key_type: u32,
}

/// Changes applied together, in order, as one transaction.
#[derive(Default)]
pub struct Batch {
    messages: Vec<(u16, u16, Vec<u8>)>,
    sets: Vec<String>,
    /// It removes something that may be there.
    deletes: bool,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Appends `later`'s changes. A batch that made sets of its own
    /// cannot take more: rules find a set made in the same batch by its
    /// position among them.
    pub fn extend(&mut self, later: Batch) -> &mut Batch {
        assert!(self.sets.is_empty(), "extending a batch that made sets");
        self.messages.extend(later.messages);
        self.sets = later.sets;
        self.deletes |= later.deletes;
        self
    }

    /// Creates table `name`; with `exclusive`, a table that already exists
    /// fails the batch (`EEXIST`).
    pub fn add_table(&mut self, name: &str, exclusive: bool) -> &mut Batch {
        let mut attrs = Attrs::default();
        attrs.string(TABLE_NAME, name);
        let excl = if exclusive { NLM_F_EXCL } else { 0 };
        self.push(MSG_NEWTABLE, NLM_F_CREATE | excl, attrs)
    }

    /// Removes table `name` with everything in it; nothing if there is none.
    pub fn destroy_table(&mut self, name: &str) -> &mut Batch {
        self.deletes = true;
        self.clear_table(name)
    }

    /// [`Batch::destroy_table`] for a table that is there only if a killed
    /// run left it, before making it anew: not counted as a deletion for
    /// [`release_in_background`] (none there, the kernel has nothing to
    /// free; a leftover is rare, and then this process's exit waits).
    pub fn clear_table(&mut self, name: &str) -> &mut Batch {
        let mut attrs = Attrs::default();
        attrs.string(TABLE_NAME, name);
        self.push(MSG_DESTROYTABLE, 0, attrs)
    }

    /// A filter chain on `device`'s egress whose `policy` decides what no
    /// rule does.
    pub fn add_egress_chain(
        &mut self,
        table: &str,
        chain: &str,
        device: &str,
        policy: Verdict,
    ) -> &mut Batch {
        let mut hook = Attrs::default();
        hook.u32(HOOK_HOOKNUM, HOOK_EGRESS);
        hook.u32(HOOK_PRIORITY, 0);
        hook.string(HOOK_DEV, device);
        let mut attrs = Attrs::default();
        attrs.string(CHAIN_TABLE, table);
        attrs.string(CHAIN_NAME, chain);
        attrs.nested(CHAIN_HOOK, hook);
        attrs.u32(CHAIN_POLICY, policy.code());
        attrs.string(CHAIN_TYPE, "filter");
        self.push(MSG_NEWCHAIN, NLM_F_CREATE, attrs)
    }

    pub fn add_set(&mut self, table: &str, set: &Set) -> &mut Batch {
        let id = self.sets.len() as u32 + 1;
        self.sets.push(set.name.clone());
        let mut attrs = Attrs::default();
        attrs.string(SET_TABLE, table);
        attrs.string(SET_NAME, &set.name);
        attrs.u32(SET_FLAGS, 0);
        attrs.u32(SET_KEY_TYPE, set.key_type);
        attrs.u32(SET_KEY_LEN, set.key_len);
        attrs.u32(SET_ID, id);
        self.push(MSG_NEWSET, NLM_F_CREATE, attrs)
    }

    /// Appends a rule to `chain`.
    pub fn add_rule(&mut self, table: &str, chain: &str, exprs: &[Expr]) -> &mut Batch {
        let mut list = Attrs::default();
        for expr in exprs {
            list.nested(LIST_ELEM, self.expression(expr));
        }
        let mut attrs = Attrs::default();
        attrs.string(RULE_TABLE, table);
        attrs.string(RULE_CHAIN, chain);
        attrs.nested(RULE_EXPRESSIONS, list);
        self.push(MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, attrs)
    }

    /// Adds keys to `set`; one already there is no error.
    pub fn add_elements(&mut self, table: &str, set: &str, keys: &[Vec<u8>]) -> &mut Batch {
        if keys.is_empty() {
            return self;
        }
        let attrs = elements(table, set, keys);
        self.push(MSG_NEWSETELEM, NLM_F_CREATE, attrs)
    }

    /// Removes keys from `set`; one not there is no error.
    pub fn destroy_elements(&mut self, table: &str, set: &str, keys: &[Vec<u8>]) -> &mut Batch {
        if keys.is_empty() {
            return self;
        }
        self.deletes = true;
        let attrs = elements(table, set, keys);
        self.push(MSG_DESTROYSETELEM, 0, attrs)
    }

    fn expression(&self, expr: &Expr) -> Attrs {
        let mut data = Attrs::default();
        let name = match expr {
            Expr::Frame { offset, len, reg } => {
                data.u32(PAYLOAD_DREG, *reg);
                data.u32(PAYLOAD_BASE, PAYLOAD_LL_HEADER);
                data.u32(PAYLOAD_OFFSET, *offset);
                data.u32(PAYLOAD_LEN, *len);
                "payload"
            }
            Expr::Eq { reg, data: value } | Expr::Ne { reg, data: value } => {
                data.u32(CMP_SREG, *reg);
                data.u32(CMP_OP, u32::from(matches!(expr, Expr::Ne { .. })));
                let mut v = Attrs::default();
                v.bytes(DATA_VALUE, value);
                data.nested(CMP_DATA, v);
                "cmp"
            }
            Expr::Lookup { set, reg, present } => {
                data.string(LOOKUP_SET, set);
                data.u32(LOOKUP_SREG, *reg);
                // A set made earlier in this batch is found by its id.
                if let Some(at) = self.sets.iter().position(|s| s == set) {
                    data.u32(LOOKUP_SET_ID, at as u32 + 1);
                }
                if !present {
                    data.u32(LOOKUP_FLAGS, LOOKUP_F_INV);
                }
                "lookup"
            }
            Expr::Verdict(verdict) => {
                data.u32(IMMEDIATE_DREG, REG_VERDICT);
                let mut code = Attrs::default();
                code.u32(VERDICT_CODE, verdict.code());
                let mut value = Attrs::default();
                value.nested(DATA_VERDICT, code);
                data.nested(IMMEDIATE_DATA, value);
                "immediate"
            }
        };
        let mut out = Attrs::default();
        out.string(EXPR_NAME, name);
        out.nested(EXPR_DATA, data);
        out
    }

    fn push(&mut self, kind: u16, flags: u16, attrs: Attrs) -> &mut Batch {
        self.messages.push((kind, flags, attrs.0));
        self
    }
}

fn elements(table: &str, set: &str, keys: &[Vec<u8>]) -> Attrs {
    let mut list = Attrs::default();
    for key in keys {
        let mut value = Attrs::default();
        value.bytes(DATA_VALUE, key);
        let mut element = Attrs::default();
        element.nested(SET_ELEM_KEY, value);
        list.nested(LIST_ELEM, element);
    }
    let mut attrs = Attrs::default();
    attrs.string(SET_ELEM_LIST_TABLE, table);
    attrs.string(SET_ELEM_LIST_SET, set);
    attrs.nested(SET_ELEM_LIST_ELEMENTS, list);
    attrs
}

/// Netlink attributes, encoded as they are added.
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn bytes(&mut self, kind: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
    }

    fn string(&mut self, kind: u16, value: &str) {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes);
    }

    fn u32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    fn nested(&mut self, kind: u16, inner: Attrs) {
        self.bytes(kind | NLA_F_NESTED, &inner.0);
    }
}

/// A `NETLINK_NETFILTER` socket in the network namespace that was current
/// for the calling thread when it was opened.
///
/// It is never closed by dropping it: see [`release_in_background`].
pub struct Nftables {
    socket: std::mem::ManuallyDrop<netlink_sys::Socket>,
}

impl Nftables {
    pub fn connect() -> Result<Nftables> {
        let socket = netlink_sys::Socket::new(NETLINK_NETFILTER)
            .map_err(|e| Error::new("open a netfilter netlink socket", e))?;
        OPEN.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(socket.as_raw_fd());
        Ok(Nftables {
            socket: std::mem::ManuallyDrop::new(socket),
        })
    }

    /// Applies `batch` as one transaction; `op` names it in an error.
    pub fn apply(&self, batch: &Batch, op: &str) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch.deletes {
            DELETED.store(true, Ordering::Relaxed);
        }
        let first = SEQUENCE.fetch_add(batch.messages.len() as u32 + 2, Ordering::Relaxed);
        let mut bytes = Vec::new();
        message(&mut bytes, BATCH_BEGIN, NLM_F_REQUEST, first, 0, &[]);
        for (i, (kind, flags, attrs)) in batch.messages.iter().enumerate() {
            let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
            let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
            message(
                &mut bytes,
                kind,
                flags,
                first + 1 + i as u32,
                FAMILY_NETDEV,
                attrs,
            );
        }
        let end = first + 1 + batch.messages.len() as u32;
        message(&mut bytes, BATCH_END, NLM_F_REQUEST, end, 0, &[]);
        self.send(&bytes).map_err(|e| Error::new(op, e))?;

        // One acknowledgement or error per message; an error for the
        // batch as a whole comes alone, on its first message.
        let mut awaited = batch.messages.len();
        let mut failed = None;
        let mut buffer = Vec::with_capacity(64 * 1024);
        while awaited > 0 {
            let len = self.recv(&mut buffer).map_err(|e| Error::new(op, e))?;
            for (kind, sequence, payload) in Messages(&buffer[..len]) {
                if sequence < first || sequence > end || kind != NLMSG_ERROR {
                    continue;
                }
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(-libc::EPROTO);
                if sequence == first {
                    awaited = 0;
                } else {
                    awaited = awaited.saturating_sub(1);
                }
                if code < 0 && failed.is_none() {
                    failed = Some(io::Error::from_raw_os_error(-code));
                }
            }
        }
        match failed {
            Some(e) => Err(Error::new(op, e)),
            None => Ok(()),
        }
    }

    /// Whether netdev table `name` exists.
    pub fn has_table(&self, name: &str) -> Result<bool> {
        let mut attrs = Attrs::default();
        attrs.string(TABLE_NAME, name);
        match self.request(
            MSG_GETTABLE,
            NLM_F_ACK,
            &attrs.0,
            "look up an nftables table",
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names of the netdev tables.
    pub fn tables(&self) -> Result<Vec<String>> {
        let replies = self.request(MSG_GETTABLE, NLM_F_DUMP, &[], "list nftables tables")?;
        Ok(replies
            .iter()
            .filter_map(|payload| attribute(payload, TABLE_NAME))
            .map(|name| {
                String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(&[])).into_owned()
            })
            .collect())
    }

    /// The keys of `set`; `None` if there is no such table or set.
    pub fn set_keys(&self, table: &str, set: &str) -> Result<Option<Vec<Vec<u8>>>> {
        let mut attrs = Attrs::default();
        attrs.string(SET_ELEM_LIST_TABLE, table);
        attrs.string(SET_ELEM_LIST_SET, set);
        let replies = match self.request(
            MSG_GETSETELEM,
            NLM_F_DUMP,
            &attrs.0,
            "list nftables set elements",
        ) {
            Ok(replies) => replies,
            Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut keys = Vec::new();
        for payload in &replies {
            let Some(list) = attribute(payload, SET_ELEM_LIST_ELEMENTS) else {
                continue;
            };
            for (_, element) in Attributes(list) {
                let key = Attributes(element)
                    .find(|(kind, _)| *kind == SET_ELEM_KEY)
                    .and_then(|(_, key)| Attributes(key).find(|(kind, _)| *kind == DATA_VALUE))
                    .map(|(_, value)| value.to_vec());
                keys.extend(key);
            }
        }
        Ok(Some(keys))
    }

    /// A get or dump of netdev objects: the payloads (after the nfgenmsg)
    /// of the replies.
    fn request(&self, kind: u16, flags: u16, attrs: &[u8], op: &str) -> Result<Vec<Vec<u8>>> {
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let mut bytes = Vec::new();
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
        message(
            &mut bytes,
            kind,
            NLM_F_REQUEST | flags,
            sequence,
            FAMILY_NETDEV,
            attrs,
        );
        self.send(&bytes).map_err(|e| Error::new(op, e))?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        let mut buffer = Vec::with_capacity(64 * 1024);
        loop {
            let len = self.recv(&mut buffer).map_err(|e| Error::new(op, e))?;
            for (kind, seq, payload) in Messages(&buffer[..len]) {
                if seq != sequence {
                    continue;
                }
                match kind {
                    NLMSG_ERROR | NLMSG_DONE => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")))
                            .unwrap_or(0);
                        if code < 0 {
                            return Err(Error::new(op, io::Error::from_raw_os_error(-code)));
                        }
                        return Ok(replies);
                    }
                    _ => {
                        // Skip the 4-byte nfgenmsg.
                        replies.push(payload.get(4..).unwrap_or(&[]).to_vec());
                        if !dump && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        crate::netlink::send_all(&self.socket, bytes)
    }

    fn recv(&self, buffer: &mut Vec<u8>) -> io::Result<usize> {
        crate::netlink::recv_datagram(&self.socket, buffer)
    }
}

/// The netfilter sockets this process opened (none is ever closed before
/// [`release_in_background`]), and whether any of them deleted something.
static OPEN: std::sync::Mutex<Vec<RawFd>> = std::sync::Mutex::new(Vec::new());
static DELETED: AtomicBool = AtomicBool::new(false);

/// Closes the process's netfilter sockets, once, last thing before it
/// exits, without making it wait for the kernel.
///
/// Releasing a netfilter socket makes the kernel finish the namespace's
/// pending nftables deletions first (`nft_rcv_nl_event` flushes their
/// destroy work, which waits for an RCU grace period: 10 to 25 ms here).
/// A hook that removed a guard would pay that at exit, and its runtime
/// with it (podman's `run --rm` waits for poststop). So when something was
/// deleted, a forked child takes the last reference to the sockets: it
/// leaves the session, closes every other descriptor (the runtime waits
/// for the hook's stdout and stderr to close, not only for its exit),
/// waits until this process has dropped its copies, closes them, pays the
/// wait, and exits. Without a deletion, or if the fork fails, the sockets
/// simply close here.
pub fn release_in_background() {
    let fds = std::mem::take(&mut *OPEN.lock().unwrap_or_else(|e| e.into_inner()));
    if fds.is_empty() {
        return;
    }
    let close_all = |fds: &[RawFd]| {
        for &fd in fds {
            // SAFETY: the fds are the sockets this module opened and never
            // closed (ManuallyDrop): closing them once here is theirs.
            unsafe { libc::close(fd) };
        }
    };
    let mut pipe = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if !DELETED.load(Ordering::Relaxed)
        || unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0
    {
        return close_all(&fds);
    }
    let [read_end, write_end] = pipe;
    // SAFETY: nsbypass is single-threaded; the child only makes syscalls.
    match unsafe { libc::fork() } {
        0 => {
            // SAFETY: raw syscalls on descriptors this process owns.
            unsafe {
                libc::setsid();
                let mut keep: Vec<RawFd> = fds.iter().copied().chain([read_end]).collect();
                keep.sort_unstable();
                let mut from: u32 = 0;
                for &fd in &keep {
                    if (fd as u32) > from {
                        libc::close_range(from, fd as u32 - 1, 0);
                    }
                    from = fd as u32 + 1;
                }
                libc::close_range(from, u32::MAX, 0);
                // EOF once the parent has closed its copies.
                let mut byte = 0u8;
                while libc::read(read_end, (&mut byte as *mut u8).cast(), 1) > 0 {}
                close_all(&fds);
                libc::_exit(0);
            }
        }
        -1 => {
            // SAFETY: closing the pipe this function made.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            close_all(&fds);
        }
        _ => {
            close_all(&fds);
            // SAFETY: closing the pipe this function made.
            unsafe {
                libc::close(write_end);
                libc::close(read_end);
            }
        }
    }
}

/// Appends one netlink message with an nfgenmsg header.
fn message(out: &mut Vec<u8>, kind: u16, flags: u16, sequence: u32, family: u8, attrs: &[u8]) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&sequence.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version 0, res_id (the subsystem, for a batch).
    let res_id = if kind == BATCH_BEGIN || kind == BATCH_END {
        NFNL_SUBSYS_NFTABLES
    } else {
        0
    };
    out.push(family);
    out.push(0);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// The messages of a datagram: (type, sequence, payload after the header).
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = (u16, u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes(self.0[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > self.0.len() {
            self.0 = &[];
            return None;
        }
        let kind = u16::from_ne_bytes(self.0[4..6].try_into().expect("2 bytes"));
        let sequence = u32::from_ne_bytes(self.0[8..12].try_into().expect("4 bytes"));
        let payload = &self.0[16..len];
        self.0 = self.0.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, sequence, payload))
    }
}

/// The attributes of an attribute list: (type without flags, value).
struct Attributes<'a>(&'a [u8]);

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes(self.0[0..2].try_into().expect("2 bytes")) as usize;
        if len < 4 || len > self.0.len() {
            self.0 = &[];
            return None;
        }
        let kind = u16::from_ne_bytes(self.0[2..4].try_into().expect("2 bytes")) & 0x3fff;
        let value = &self.0[4..len];
        self.0 = self.0.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, value))
    }
}

fn attribute(payload: &[u8], kind: u16) -> Option<&[u8]> {
    Attributes(payload)
        .find(|(k, _)| *k == kind)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nested_ones_flagged() {
        let mut inner = Attrs::default();
        inner.u32(1, 0x0102_0304);
        let mut outer = Attrs::default();
        outer.string(2, "ab");
        outer.nested(3, inner);
        assert_eq!(
            outer.0,
            [
                7, 0, 2, 0, b'a', b'b', 0, 0, // "ab\0", padded to 8
                12, 0, 3, 0x80, // nested, 4 + 8
                8, 0, 1, 0, 1, 2, 3, 4, // big-endian u32
            ]
        );
        let parsed: Vec<_> = Attributes(&outer.0).map(|(k, v)| (k, v.len())).collect();
        assert_eq!(parsed, [(2, 3), (3, 8)]);
    }
}
