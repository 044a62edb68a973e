//! Just enough HTTP/1.1 to POST JSON to etcd's gRPC gateway and read the
//! answer, over plain TCP or rustls, blocking, with every step bounded by
//! one deadline.
//!
//! Why by hand: a hook is one short process that makes a handful of
//! requests to one server it knows. A general client (ureq with rustls,
//! measured) costs more binary and was slower per request here; this is a
//! request line, four headers, and a response with `Content-Length` or
//! chunked encoding (Go's net/http chunks bodies larger than its buffer).
//! One connection is kept open for the run (keep-alive), so a claim's read
//! and create share it.
//!
//! Bounded means every step: the name lookup (in a child process, see
//! [`resolve`]), the connect, and each read and write of the socket
//! (through [`Timed`], which also bounds what rustls reads and writes in
//! its handshake and for each record).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use runtime_config::leases::Endpoint;

/// The most a response may hold: a range over a /16's leases is a few MB.
pub const MAX_RESPONSE: usize = 64 << 20;
/// The most the status line and headers may hold.
const MAX_HEAD: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("resolve: {0}")]
    Resolve(io::Error),
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("timed out")]
    TimedOut,
    #[error("{0}")]
    Io(io::Error),
    /// The server closed the connection before answering in full.
    #[error("connection closed mid-response")]
    Closed,
    #[error("bad response: {0}")]
    Protocol(&'static str),
}

impl From<io::Error> for HttpError {
    fn from(e: io::Error) -> HttpError {
        // rustls reports a failed handshake as an I/O error around its own.
        if let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return HttpError::Tls(tls.to_string());
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::TimedOut,
            io::ErrorKind::UnexpectedEof => HttpError::Closed,
            _ => HttpError::Io(e),
        }
    }
}

/// A status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A TCP stream bounded by a deadline: before every read and write the
/// socket's timeout is set to what remains of it, and once nothing does,
/// the call fails with `TimedOut` without touching the socket. A socket
/// timeout alone bounds one system call, not a sequence of them: rustls
/// makes many in one handshake, and a server that trickles bytes would
/// stretch a response's reads past any deadline set once.
struct Timed {
    tcp: TcpStream,
    deadline: Instant,
}

impl Timed {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(left)
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.left()?))?;
        self.tcp.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.left()?))?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

enum Stream {
    Plain(Timed),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Timed>>),
}

impl Stream {
    fn timed(&self) -> &Timed {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref(),
        }
    }

    /// Bounds every read and write from now on by `deadline`.
    fn bound(&mut self, deadline: Instant) {
        match self {
            Stream::Plain(s) => s.deadline = deadline,
            Stream::Tls(s) => s.get_mut().deadline = deadline,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One open connection to one endpoint.
pub struct Conn {
    stream: Stream,
    host: String,
    /// Bytes read past the last response (none, with a well-behaved server).
    buffer: Vec<u8>,
    /// The server said it closes after this response.
    closing: bool,
}

/// What remains of `deadline`, or a timeout if nothing does.
fn remaining(deadline: Instant) -> Result<Duration, HttpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(HttpError::TimedOut);
    }
    Ok(left)
}

impl Conn {
    /// Connects to `endpoint` (each of its addresses in turn) by
    /// `deadline`, with TLS when it is `https` (`tls` is then required).
    pub fn open(
        endpoint: &Endpoint,
        tls: Option<&Arc<rustls::ClientConfig>>,
        deadline: Instant,
    ) -> Result<Conn, HttpError> {
        let authority = endpoint.authority();
        let addrs = resolve(&authority, deadline)?;
        let mut last = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, remaining(deadline)?) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(HttpError::TimedOut),
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (tcp, last) {
            (Some(tcp), _) => tcp,
            (None, Some(e)) => return Err(HttpError::Connect(e)),
            (None, None) => {
                return Err(HttpError::Resolve(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no address",
                )))
            }
        };
        // Small requests, each waited for: never hold one back.
        tcp.set_nodelay(true).map_err(HttpError::Connect)?;
        let tcp = Timed { tcp, deadline };
        let stream = match endpoint.tls {
            false => Stream::Plain(tcp),
            true => {
                let config = tls.ok_or(HttpError::Tls("no TLS configuration".into()))?;
                let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                    .map_err(|e| HttpError::Tls(format!("server name {}: {e}", endpoint.host)))?;
                let conn = rustls::ClientConnection::new(config.clone(), name)
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
                Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp)))
            }
        };
        Ok(Conn {
            stream,
            host: authority,
            buffer: Vec::new(),
            closing: false,
        })
    }

    /// Whether the server said it closes the connection after the last
    /// response: then a new one is needed.
    pub fn closing(&self) -> bool {
        self.closing
    }

    /// POSTs `body` (JSON) to `path` and reads the whole response, all by
    /// `deadline` (a TLS handshake not yet done included).
    pub fn post(
        &mut self,
        path: &str,
        body: &[u8],
        deadline: Instant,
    ) -> Result<Response, HttpError> {
        remaining(deadline)?;
        self.stream.bound(deadline);
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        // One write: one segment for a small request.
        self.stream.write_all(&request)?;
        self.stream.flush()?;
        self.read_response(deadline)
    }

    /// Fills the buffer with at least `want` bytes.
    fn fill(&mut self, want: usize, deadline: Instant) -> Result<(), HttpError> {
        let mut chunk = [0u8; 16 << 10];
        while self.buffer.len() < want {
            remaining(deadline)?;
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Reads up to and including the next CRLF; returns the line without it.
    fn line(&mut self, deadline: Instant, max: usize) -> Result<Vec<u8>, HttpError> {
        loop {
            if let Some(at) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let mut line: Vec<u8> = self.buffer.drain(..at + 2).collect();
                line.truncate(at);
                return Ok(line);
            }
            if self.buffer.len() > max {
                return Err(HttpError::Protocol("line too long"));
            }
            let want = self.buffer.len() + 1;
            self.fill(want, deadline)?;
        }
    }

    fn take(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, HttpError> {
        self.fill(n, deadline)?;
        Ok(self.buffer.drain(..n).collect())
    }

    fn read_response(&mut self, deadline: Instant) -> Result<Response, HttpError> {
        let status_line = self.line(deadline, MAX_HEAD)?;
        let status = parse_status(&status_line)?;
        let mut length = None;
        let mut chunked = false;
        let mut head = status_line.len();
        loop {
            let line = self.line(deadline, MAX_HEAD)?;
            head += line.len() + 2;
            if head > MAX_HEAD {
                return Err(HttpError::Protocol("headers too long"));
            }
            if line.is_empty() {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let Some((name, value)) = text.split_once(':') else {
                return Err(HttpError::Protocol("header without a colon"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| HttpError::Protocol("bad Content-Length"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                self.closing = value.eq_ignore_ascii_case("close");
            }
        }
        let body = match (chunked, length) {
            (true, _) => self.chunked(deadline)?,
            (false, Some(n)) if n > MAX_RESPONSE => {
                return Err(HttpError::Protocol("response too large"))
            }
            (false, Some(n)) => self.take(n, deadline)?,
            (false, None) => return Err(HttpError::Protocol("no Content-Length")),
        };
        Ok(Response { status, body })
    }

    fn chunked(&mut self, deadline: Instant) -> Result<Vec<u8>, HttpError> {
        let mut body = Vec::new();
        loop {
            let line = self.line(deadline, 1024)?;
            let text = String::from_utf8_lossy(&line);
            let size = text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| HttpError::Protocol("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line(deadline, MAX_HEAD)?.is_empty() {}
                return Ok(body);
            }
            if body.len() + size > MAX_RESPONSE {
                return Err(HttpError::Protocol("response too large"));
            }
            body.extend(self.take(size, deadline)?);
            if !self.line(deadline, 2)?.is_empty() {
                return Err(HttpError::Protocol("chunk without its CRLF"));
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.stream.timed().tcp.shutdown(Shutdown::Both);
    }
}

/// `authority`'s socket addresses, by `deadline`. An IP address is taken
/// as it is; a name goes to the system's resolver (getaddrinfo, which has
/// no timeout of its own and may wait out several name servers) in a child
/// process that is killed if it has not answered by the deadline. Not a
/// thread: a thread left behind would make the hook multithreaded, and
/// entering a container's mount namespace (a profile's undo after a failed
/// lease) needs a single-threaded process.
pub fn resolve(authority: &str, deadline: Instant) -> Result<Vec<SocketAddr>, HttpError> {
    if let Ok(addr) = authority.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    let name = authority.to_owned();
    let answer = in_child(deadline, move || match name.to_socket_addrs() {
        Ok(addrs) => addrs.map(|a| format!("{a}\n")).collect(),
        Err(e) => format!("!{e}\n"),
    })?;
    let mut addrs = Vec::new();
    for line in answer.lines() {
        if let Some(why) = line.strip_prefix('!') {
            return Err(HttpError::Resolve(io::Error::other(why.to_owned())));
        }
        let addr = line
            .parse()
            .map_err(|_| HttpError::Resolve(io::Error::other("the lookup said nonsense")))?;
        addrs.push(addr);
    }
    Ok(addrs)
}

/// Runs `f` in a forked child and returns what it said, if it said it by
/// `deadline`; a child that has not is killed (by its pid) and reaped. The
/// child dies with this process too (`PR_SET_PDEATHSIG`): it holds copies
/// of every descriptor, the state lock's included.
fn in_child(deadline: Instant, f: impl FnOnce() -> String) -> Result<String, HttpError> {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::waitpid;
    use nix::unistd::{fork, getpid, getppid, ForkResult};
    let timed_out = || HttpError::Resolve(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
    if remaining(deadline).is_err() {
        return Err(timed_out());
    }
    let (mut ours, mut theirs) = UnixStream::pair().map_err(HttpError::Resolve)?;
    let parent = getpid();
    // SAFETY: the hook is single-threaded, so the child may do what the
    // parent could; it only runs `f`, writes and _exits. (Unit tests run
    // threads beside it: glibc's allocator and resolver are fork-safe.)
    match unsafe { fork() }.map_err(|e| HttpError::Resolve(e.into()))? {
        ForkResult::Child => {
            drop(ours);
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            if getppid() == parent {
                let _ = theirs.write_all(f().as_bytes());
            }
            // SAFETY: ends the child at once: no destructor, no atexit
            // handler, no flush of buffers that are the parent's.
            unsafe { nix::libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            let said = loop {
                let Ok(left) = remaining(deadline) else {
                    break Err(timed_out());
                };
                if let Err(e) = ours.set_read_timeout(Some(left)) {
                    break Err(HttpError::Resolve(e));
                }
                match ours.read(&mut chunk) {
                    Ok(0) => break Ok(()),
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break Err(timed_out())
                    }
                    Err(e) => break Err(HttpError::Resolve(e)),
                }
            };
            if said.is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let _ = waitpid(child, None);
            said.map(|()| String::from_utf8_lossy(&answer).into_owned())
        }
    }
}

fn parse_status(line: &[u8]) -> Result<u16, HttpError> {
    let text = std::str::from_utf8(line).map_err(|_| HttpError::Protocol("bad status line"))?;
    let mut parts = text.splitn(3, ' ');
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse()
            .map_err(|_| HttpError::Protocol("bad status code")),
        _ => Err(HttpError::Protocol("bad status line")),
    }
}

/// The rustls client configuration for `tls`: trust `ca_file`'s
/// certificates only, and present the client certificate if given.
pub fn tls_config(
    tls: &runtime_config::leases::Tls,
) -> Result<Arc<rustls::ClientConfig>, HttpError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let file = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        HttpError::Tls(format!("{}: {e}", p.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&tls.ca_file)
        .map_err(|e| file(&tls.ca_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file(&tls.ca_file, &e))?;
    if cas.is_empty() {
        return Err(file(&tls.ca_file, &"holds no certificate"));
    }
    for ca in cas {
        roots.add(ca).map_err(|e| file(&tls.ca_file, &e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| file(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| HttpError::Tls(e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;

    /// A server that answers each request on one connection with the next
    /// of `answers`, and hands back what it was sent.
    fn serve(answers: Vec<&'static [u8]>) -> (Endpoint, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (sock, _) = listener.accept().unwrap();
            let mut reader = io::BufReader::new(sock.try_clone().unwrap());
            let mut writer = sock;
            let mut seen = Vec::new();
            for answer in answers {
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    head.push_str(&line);
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.push(format!("{head}{}", String::from_utf8(body).unwrap()));
                writer.write_all(answer).unwrap();
            }
            seen
        });
        let endpoint = Endpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port,
        };
        (endpoint, handle)
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn posts_and_reads_both_framings_on_one_connection() {
        let (endpoint, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"b\"\r\n3;x=y\r\n:2}\r\n0\r\n\r\n",
        ]);
        let mut conn = Conn::open(&endpoint, None, soon()).unwrap();
        let r = conn
            .post("/v3/kv/range", b"{\"key\":\"eA==\"}", soon())
            .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"a\":1}"[..]));
        let r = conn.post("/v3/kv/txn", b"{}", soon()).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (503, &b"{\"b\":2}"[..]));
        let seen = server.join().unwrap();
        assert_eq!(
            seen[0],
            format!(
                "POST /v3/kv/range HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{{\"key\":\"eA==\"}}",
                endpoint.port
            )
        );
    }

    #[test]
    fn a_silent_server_times_out_by_the_deadline_and_a_closed_one_is_said_so() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port: listener.local_addr().unwrap().port(),
        };
        let mut conn = Conn::open(&endpoint, None, soon()).unwrap();
        let started = Instant::now();
        let e = conn
            .post(
                "/v3/kv/range",
                b"{}",
                Instant::now() + Duration::from_millis(200),
            )
            .unwrap_err();
        assert!(matches!(e, HttpError::TimedOut), "{e}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(1000),
            "{took:?}"
        );

        let (endpoint, server) =
            serve(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{\"a\""]);
        let mut conn = Conn::open(&endpoint, None, soon()).unwrap();
        let e = conn.post("/", b"{}", soon());
        server.join().unwrap();
        // The server thread ended, closing its end.
        assert!(matches!(e, Err(HttpError::Closed)), "{e:?}");
    }

    /// A TLS client configuration that trusts nothing: enough to start a
    /// handshake.
    fn untrusting() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    #[test]
    fn a_tls_server_that_trickles_its_handshake_is_cut_at_the_deadline() {
        // It reads the ClientHello, then announces a 16 KiB handshake
        // record and sends it a byte every 20 ms: every read returns well
        // inside any one socket timeout, the handshake never ends.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut hello = [0u8; 512];
            let _ = sock.read(&mut hello);
            let _ = sock.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(20));
                if sock.write_all(&[0]).is_err() {
                    return;
                }
            }
        });
        let endpoint = Endpoint {
            tls: true,
            host: "127.0.0.1".into(),
            port,
        };
        let tls = untrusting();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        let mut conn = Conn::open(&endpoint, Some(&tls), deadline).unwrap();
        let e = conn.post("/v3/kv/range", b"{}", deadline).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(e, HttpError::TimedOut), "{e}");
        assert!(
            took >= Duration::from_millis(290) && took < Duration::from_millis(600),
            "{took:?}"
        );
        drop(conn);
        server.join().unwrap();
    }

    #[test]
    fn a_name_is_resolved_within_the_deadline_or_not_at_all() {
        let soon = Instant::now() + Duration::from_secs(5);
        let addrs = resolve("localhost:2379", soon).unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 2379));
        assert_eq!(
            resolve("10.0.0.5:2379", soon).unwrap(),
            ["10.0.0.5:2379".parse().unwrap()]
        );

        // A resolver that hangs (here: a child that sleeps): given up at
        // the deadline, the child killed.
        let started = Instant::now();
        let e = in_child(started + Duration::from_millis(200), || {
            std::thread::sleep(Duration::from_secs(30));
            "127.0.0.1:1\n".into()
        })
        .unwrap_err();
        let took = started.elapsed();
        assert_eq!(e.to_string(), "resolve: timed out");
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(500),
            "{took:?}"
        );
        // A name nobody has: an error by the deadline, whatever the
        // machine's resolver does with it.
        let started = Instant::now();
        let e = resolve(
            "no-such-host.invalid:2379",
            started + Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(e, HttpError::Resolve(_)), "{e}");
        assert!(started.elapsed() < Duration::from_millis(800));
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let endpoint = Endpoint {
            tls: false,
            host: "127.0.0.1".into(),
            port,
        };
        let e = Conn::open(&endpoint, None, soon()).err().unwrap();
        assert_eq!(e.to_string(), "connect: Connection refused (os error 111)");
    }
}
