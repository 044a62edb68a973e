//! One blocking `NETLINK_ROUTE` socket: send a request, read its answer on
//! the calling thread, done.
//!
//! The hook is one short process making a handful of requests, one at a
//! time. An async runtime around them (what rtnetlink needs) costs more than
//! the requests do: a runtime, epoll and an eventfd per request, and a
//! second socket per namespace (issue 10). Route netlink is a strict
//! request/answer protocol for everything the hook asks, so plain `send` and
//! `recv` on one socket are all it takes.
//!
//! Messages are built and parsed with netlink-packet-route's types; this
//! module only frames them: sequence numbers, the three ways an answer ends
//! (a reply, an acknowledgement, `NLMSG_DONE` after a dump), and the
//! kernel's error codes, which come back as `io::Error`s with the same errno
//! (`EEXIST`, `ENODEV`, `EBUSY`, ...), so callers can match on them.

use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;

/// The receive buffer. The kernel fills a dump datagram up to the largest
/// buffer a reader has offered, capped at 32 KiB, and one message (a link
/// with all its attributes) is a few KiB; 64 KiB leaves room for any single
/// reply. It is capacity only: the pages the kernel never writes are never
/// touched, so they cost no memory.
const RECEIVE_CAPACITY: usize = 64 * 1024;

/// How often a dump the kernel reports as interrupted (`NLM_F_DUMP_INTR`:
/// the table changed between two datagrams) is asked for again before its
/// last answer is taken as it is.
const DUMP_ATTEMPTS: usize = 3;

/// Sequence numbers are unique in the process, not per socket: the kernel
/// addresses some messages by port id in a namespace other than the
/// requester's (the notification of a link created into another
/// namespace goes to that port id *there*, which may be another socket of
/// this process), so a message is known to answer a request by its number
/// alone, and anything else is skipped.
static SEQUENCE: AtomicU32 = AtomicU32::new(1);

/// How an answer ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// A get: the one reply message (or an error).
    Reply,
    /// A change with `NLM_F_ACK`: the acknowledgement, after any echo.
    Ack,
    /// A dump: `NLMSG_DONE`, after the parts.
    Done,
}

/// What came back for one request.
#[derive(Default)]
struct Answer {
    messages: Vec<RouteNetlinkMessage>,
    /// A part of a dump had `NLM_F_DUMP_INTR`.
    interrupted: bool,
}

/// A route-netlink socket bound to the network namespace that was current
/// for the calling thread when it was opened.
pub(crate) struct Socket {
    socket: netlink_sys::Socket,
    buffer: RefCell<Vec<u8>>,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace. It is not
    /// bound: the kernel gives it a port id on the first send.
    pub(crate) fn open() -> io::Result<Socket> {
        Ok(Socket {
            socket: netlink_sys::Socket::new(NETLINK_ROUTE)?,
            buffer: RefCell::new(Vec::with_capacity(RECEIVE_CAPACITY)),
        })
    }

    /// Sends a get and returns the one reply.
    pub(crate) fn get(&self, message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        let answer = self.exchange(message, NLM_F_REQUEST, End::Reply)?;
        answer
            .messages
            .into_iter()
            .next()
            .ok_or_else(|| invalid("the kernel ended a get without a reply"))
    }

    /// Sends a change with `NLM_F_ACK` and `flags` (`NLM_F_CREATE`,
    /// `NLM_F_EXCL`, `NLM_F_ECHO`, ...) and returns what came before the
    /// acknowledgement: the echo, with `NLM_F_ECHO`, where the kernel sends
    /// one.
    pub(crate) fn ack(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        Ok(self.exchange(message, flags, End::Ack)?.messages)
    }

    /// Sends a dump request and returns every part. A dump the kernel marks
    /// as interrupted is asked for again, up to [`DUMP_ATTEMPTS`] times.
    pub(crate) fn dump(
        &self,
        message: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let mut attempt = 1;
        loop {
            let answer = self.exchange(message.clone(), NLM_F_REQUEST | NLM_F_DUMP, End::Done)?;
            if !answer.interrupted || attempt == DUMP_ATTEMPTS {
                return Ok(answer.messages);
            }
            attempt += 1;
        }
    }

    fn exchange(&self, message: RouteNetlinkMessage, flags: u16, end: End) -> io::Result<Answer> {
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        self.send(message, flags, sequence)?;
        self.receive(sequence, end)
    }

    fn send(&self, message: RouteNetlinkMessage, flags: u16, sequence: u32) -> io::Result<()> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut bytes = vec![0; packet.buffer_len()];
        packet.serialize(&mut bytes);
        send_all(&self.socket, &bytes)
    }

    /// Reads datagrams until the answer to `sequence` ends as `end` says.
    fn receive(&self, sequence: u32, end: End) -> io::Result<Answer> {
        let mut buffer = self.buffer.borrow_mut();
        let mut answer = Answer::default();
        loop {
            let datagram = self.recv(&mut buffer)?;
            for bytes in Messages(datagram) {
                let bytes = bytes?;
                let header = NetlinkBuffer::new(bytes);
                if header.sequence_number() != sequence {
                    // A late part of an earlier request, or a message
                    // another socket's request caused.
                    continue;
                }
                answer.interrupted |= header.flags() & NLM_F_DUMP_INTR != 0;
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes)
                    .map_err(|e| invalid(format!("cannot parse the kernel's answer: {e}")))?;
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => {
                        answer.messages.push(inner);
                        if end == End::Reply {
                            return Ok(answer);
                        }
                    }
                    // An acknowledgement (no code) or an error.
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(answer),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Done(done) if done.code < 0 => {
                        return Err(io::Error::from_raw_os_error(-done.code))
                    }
                    NetlinkPayload::Done(_) => return Ok(answer),
                    NetlinkPayload::Overrun(_) => {
                        return Err(invalid("the kernel reports an overrun"))
                    }
                    _ => {}
                }
            }
        }
    }

    /// One datagram (see [`recv_datagram`]).
    fn recv<'a>(&self, buffer: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        let len = recv_datagram(&self.socket, buffer)?;
        Ok(&buffer[..len])
    }
}

/// Sends one request (or batch) whole, retrying on `EINTR`.
pub(crate) fn send_all(socket: &netlink_sys::Socket, bytes: &[u8]) -> io::Result<()> {
    loop {
        match socket.send(bytes, 0) {
            Ok(sent) if sent == bytes.len() => return Ok(()),
            Ok(_) => return Err(invalid("the kernel took part of a request")),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads one datagram into `buffer`'s capacity and returns its length.
/// With `MSG_TRUNC` the kernel reports a datagram's full length even when
/// it did not fit, so a truncated one is an error rather than a silently
/// shortened answer.
pub(crate) fn recv_datagram(
    socket: &netlink_sys::Socket,
    buffer: &mut Vec<u8>,
) -> io::Result<usize> {
    loop {
        buffer.clear();
        match socket.recv(buffer, libc::MSG_TRUNC) {
            Ok(len) if len > buffer.capacity() => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "a netlink datagram of {len} bytes did not fit {}",
                        buffer.capacity()
                    ),
                ))
            }
            Ok(len) => return Ok(len),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The netlink messages of one datagram, each as its bytes.
struct Messages<'a>(&'a [u8]);

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let length = match NetlinkBuffer::new_checked(self.0) {
            Ok(buffer) => buffer.length() as usize,
            Err(e) => {
                self.0 = &[];
                return Some(Err(invalid(format!("a malformed netlink message: {e}"))));
            }
        };
        let (message, rest) = self.0.split_at(length);
        // Messages start at 4-byte boundaries (NLMSG_ALIGN).
        self.0 = rest
            .get(length.next_multiple_of(4) - length..)
            .unwrap_or(&[]);
        Some(Ok(message))
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(sequence: u32, payload_len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; 16 + payload_len];
        let mut buffer = NetlinkBuffer::new(&mut bytes[..]);
        buffer.set_length((16 + payload_len) as u32);
        buffer.set_sequence_number(sequence);
        bytes
    }

    #[test]
    fn a_datagram_splits_into_aligned_messages() {
        let mut datagram = frame(1, 5);
        datagram.extend([0; 3]); // padding to the next 4-byte boundary
        datagram.extend(frame(2, 4));
        let seqs: Vec<u32> = Messages(&datagram)
            .map(|m| NetlinkBuffer::new(m.unwrap()).sequence_number())
            .collect();
        assert_eq!(seqs, vec![1, 2]);
    }

    #[test]
    fn a_message_longer_than_its_datagram_is_an_error() {
        let mut datagram = frame(1, 8);
        datagram.truncate(20);
        let parts: Vec<_> = Messages(&datagram).collect();
        assert_eq!(parts.len(), 1);
        assert!(parts[0].is_err());
    }
}
