//! Traffic tools run as processes inside test-bed namespaces and cgroups (so the socket hooks
//! see their sockets): a server that names itself and the client address it sees, and clients
//! that tally which backend answered.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Serves until killed: every TCP connection and UDP datagram is answered with
/// `<name> <client address as seen here>`. HTTP requests (curl, wrk) get that as an HTTP/1.1
/// response body; plain TCP gets one answer line per line received.
pub fn serve(name: &str, tcp: &[SocketAddr], udp: &[SocketAddr]) -> std::io::Result<()> {
    let mut handles = Vec::new();
    for addr in tcp {
        let listener = TcpListener::bind(addr)?;
        let name = name.to_owned();
        handles.push(std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || {
                    let _ = serve_tcp(&name, stream);
                });
            }
        }));
    }
    for addr in udp {
        let sock = UdpSocket::bind(addr)?;
        let name = name.to_owned();
        handles.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut answer = format!("{name} {}\n", canonical(from)).into_bytes();
                // A large datagram gets an answer as large (padded with spaces): both
                // directions then travel in IPv4 fragments.
                if n > answer.len() {
                    answer.resize(n, b' ');
                }
                let _ = sock.send_to(&answer, from);
            }
        }));
    }
    println!("serving as {name}");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) shown as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn serve_tcp(name: &str, stream: TcpStream) -> std::io::Result<()> {
    let peer = canonical(stream.peer_addr()?);
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut answer = format!("{name} {peer}\n");
        if line.starts_with("large") {
            // [`LARGE_ANSWER`] bytes: a line padded with spaces.
            answer.pop();
            answer.extend(std::iter::repeat_n(' ', LARGE_ANSWER - answer.len() - 1));
            answer.push('\n');
        }
        if line.starts_with("GET ") || line.starts_with("HEAD ") {
            // Drain the request head, answer, and close (Connection: close).
            let mut h = String::new();
            while reader.read_line(&mut h)? > 2 {
                h.clear();
            }
            write!(
                writer,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            )?;
            return Ok(());
        }
        writer.write_all(answer.as_bytes())?;
    }
}

/// What a client saw.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Tally {
    pub ok: u64,
    /// Answers per backend name.
    pub backends: BTreeMap<String, u64>,
    /// Client addresses as the backends saw them (distinct).
    pub seen_as: Vec<String>,
    /// The peer address the client's own socket reported (distinct): the service address
    /// when translation is transparent.
    pub peers: Vec<String>,
    pub refused: u64,
    pub timeout: u64,
    pub other: u64,
    pub elapsed_ms: u64,
    /// Backend name per exchange, in order ("!" for a failure).
    pub sequence: Vec<String>,
}

impl Tally {
    /// Names of the backends that answered, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.backends.keys().map(String::as_str).collect()
    }

    fn answer(&mut self, line: &str, peer: Option<SocketAddr>) {
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap_or("?").to_owned();
        let seen = parts.next().unwrap_or("?").to_owned();
        self.sequence.push(name.clone());
        *self.backends.entry(name).or_default() += 1;
        if !self.seen_as.contains(&seen) {
            self.seen_as.push(seen);
        }
        if let Some(p) = peer.map(|p| p.to_string())
            && !self.peers.contains(&p)
        {
            self.peers.push(p);
        }
        self.ok += 1;
    }

    fn error(&mut self, e: &std::io::Error) {
        self.sequence.push("!".into());
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => self.refused += 1,
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => self.timeout += 1,
            _ => self.other += 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Tcp,
    /// TCP on an MPTCP socket (`IPPROTO_MPTCP`).
    Mptcp,
    /// UDP on a connected socket.
    Udp,
    /// UDP with sendto/recvfrom on one socket (kept across all datagrams).
    UdpUnconnected,
    /// UDP on one connected socket kept across datagrams; after an error, a new one (as a
    /// resolver or a metrics client does).
    UdpKept,
    /// TCP, a new connection per exchange, with an answer of [`LARGE_ANSWER`] bytes (full-size
    /// segments from the server). Only an answer of full length, complete within the timeout
    /// of the connect, counts.
    TcpLarge,
    /// TCP, a new connection per exchange, sending a request line of [`LARGE_ANSWER`] bytes
    /// (full-size segments from the client), answered with one line. Only an answer complete
    /// within the timeout of the connect counts.
    TcpUpload,
    /// UDP on a connected socket, [`LARGE_DATAGRAM`] bytes each way: IPv4 fragments at the
    /// test bed's 1500-byte MTU. Only an answer of full length counts.
    UdpLarge,
    /// UDP on a connected socket, datagrams filling a 1500-byte packet each way (1472 bytes
    /// over IPv4, sent with DF as Linux sends them; 1452 over IPv6). Only an answer of full
    /// length counts.
    UdpFull,
}

/// Datagram size of [`Mode::UdpLarge`].
pub const LARGE_DATAGRAM: usize = 4000;

/// Answer size of [`Mode::TcpLarge`].
pub const LARGE_ANSWER: usize = 65_536;

impl Mode {
    /// The command-line value of the mode (`--mode`).
    pub fn arg(self) -> String {
        clap::ValueEnum::to_possible_value(&self)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// A blocking MPTCP connection (the std library only opens plain TCP sockets).
fn mptcp_connect(to: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    const IPPROTO_MPTCP: libc::c_int = 262;
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            IPPROTO_MPTCP,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh socket owned by nothing else; the stream closes it.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&raw mut storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&raw const storage).cast(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stream)
}

fn tcp_once(
    to: SocketAddr,
    timeout: Duration,
    mptcp: bool,
    tally: &mut Tally,
) -> std::io::Result<()> {
    let mut s = if mptcp {
        mptcp_connect(to)?
    } else {
        TcpStream::connect_timeout(&to, timeout)?
    };
    s.set_read_timeout(Some(timeout))?;
    let peer = s.peer_addr().ok();
    s.write_all(b"hello\n")?;
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "no answer",
        ));
    }
    tally.answer(&line, peer);
    Ok(())
}

/// One connection asking for a [`LARGE_ANSWER`]-byte answer, which must be complete within
/// `timeout` of the connect (not only each read: a transfer that keeps stalling on
/// retransmission timeouts fails).
fn tcp_large(to: SocketAddr, timeout: Duration, tally: &mut Tally) -> std::io::Result<()> {
    tcp_timed(to, timeout, b"large\n", Some(LARGE_ANSWER), tally)
}

/// One connection sending a [`LARGE_ANSWER`]-byte request line, whose answer must be complete
/// within `timeout` of the connect.
fn tcp_upload(to: SocketAddr, timeout: Duration, tally: &mut Tally) -> std::io::Result<()> {
    let mut request = b"upload".to_vec();
    request.resize(LARGE_ANSWER - 1, b' ');
    request.push(b'\n');
    tcp_timed(to, timeout, &request, None, tally)
}

/// One connection: `request`, then an answer line (of `want` bytes, if given), all within
/// `timeout` of the connect.
fn tcp_timed(
    to: SocketAddr,
    timeout: Duration,
    request: &[u8],
    want: Option<usize>,
    tally: &mut Tally,
) -> std::io::Result<()> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let peer = s.peer_addr().ok();
    s.write_all(request)?;
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line)?;
    match want {
        Some(want) if line.len() != want => {
            return Err(std::io::Error::other(format!(
                "answer of {} bytes, not {want}",
                line.len()
            )));
        }
        None if line.is_empty() => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "no answer",
            ));
        }
        _ => {}
    }
    if start.elapsed() > timeout {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the answer took {:?}", start.elapsed()),
        ));
    }
    tally.answer(&line, peer);
    Ok(())
}

fn udp_socket(to: SocketAddr, timeout: Duration) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .map_err(std::io::Error::other)?;
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

fn udp_connected(to: SocketAddr, timeout: Duration) -> std::io::Result<UdpSocket> {
    let s = udp_socket(to, timeout)?;
    s.connect(to)?;
    Ok(s)
}

/// One datagram each way on a connected socket; with `want`, only an answer of that many
/// bytes counts.
fn udp_exchange(
    s: &UdpSocket,
    request: &[u8],
    want: Option<usize>,
    buf: &mut [u8],
    tally: &mut Tally,
) -> std::io::Result<()> {
    s.send(request)?;
    let n = s.recv(buf)?;
    if let Some(want) = want
        && n != want
    {
        return Err(std::io::Error::other(format!(
            "answer of {n} bytes, not {want}"
        )));
    }
    tally.answer(&String::from_utf8_lossy(&buf[..n]), s.peer_addr().ok());
    Ok(())
}

/// `count` exchanges with `to`, each on a new connection (or a new connected UDP socket); for
/// `UdpUnconnected`, all on one socket; for `UdpKept`, on one socket until an error.
pub fn connect(
    to: SocketAddr,
    count: u64,
    mode: Mode,
    timeout: Duration,
    interval: Duration,
) -> Tally {
    let mut tally = Tally::default();
    let start = Instant::now();
    let shared = match mode {
        Mode::UdpUnconnected => udp_socket(to, timeout).ok(),
        _ => None,
    };
    let mut buf = vec![0u8; 65536];
    let mut kept: Option<UdpSocket> = None;
    for _ in 0..count {
        let r = match mode {
            Mode::Tcp => tcp_once(to, timeout, false, &mut tally),
            Mode::TcpLarge => tcp_large(to, timeout, &mut tally),
            Mode::TcpUpload => tcp_upload(to, timeout, &mut tally),
            Mode::Mptcp => tcp_once(to, timeout, true, &mut tally),
            Mode::Udp => udp_connected(to, timeout)
                .and_then(|s| udp_exchange(&s, b"hello\n", None, &mut buf, &mut tally)),
            Mode::UdpFull => udp_connected(to, timeout).and_then(|s| {
                let size = if to.is_ipv4() { 1472 } else { 1452 };
                let mut request = b"hello\n".to_vec();
                request.resize(size, b' ');
                udp_exchange(&s, &request, Some(size), &mut buf, &mut tally)
            }),
            Mode::UdpLarge => udp_connected(to, timeout).and_then(|s| {
                let mut request = b"hello\n".to_vec();
                request.resize(LARGE_DATAGRAM, b' ');
                udp_exchange(&s, &request, Some(LARGE_DATAGRAM), &mut buf, &mut tally)
            }),
            Mode::UdpKept => match kept.take() {
                Some(s) => Ok(s),
                None => udp_connected(to, timeout),
            }
            .and_then(|s| {
                udp_exchange(&s, b"hello\n", None, &mut buf, &mut tally)?;
                kept = Some(s);
                Ok(())
            }),
            Mode::UdpUnconnected => match &shared {
                Some(s) => s.send_to(b"hello\n", to).and_then(|_| {
                    let (n, from) = s.recv_from(&mut buf)?;
                    tally.answer(&String::from_utf8_lossy(&buf[..n]), Some(from));
                    Ok(())
                }),
                None => Err(std::io::Error::other("no socket")),
            },
        };
        if let Err(e) = r {
            tally.error(&e);
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    tally.elapsed_ms = start.elapsed().as_millis() as u64;
    tally
}

/// One TCP connection exchanging `lines` lines, `interval` apart; every answer is tallied (a
/// broken connection ends it with an error).
pub fn session(to: SocketAddr, lines: u64, interval: Duration, timeout: Duration) -> Tally {
    let mut tally = Tally::default();
    let start = Instant::now();
    let run = |tally: &mut Tally| -> std::io::Result<()> {
        let mut s = TcpStream::connect_timeout(&to, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        let peer = s.peer_addr().ok();
        let mut reader = BufReader::new(s.try_clone()?);
        println!("connected");
        for _ in 0..lines {
            s.write_all(b"hello\n")?;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            if line.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed",
                ));
            }
            tally.answer(&line, peer);
            std::thread::sleep(interval);
        }
        Ok(())
    };
    if let Err(e) = run(&mut tally) {
        tally.error(&e);
    }
    tally.elapsed_ms = start.elapsed().as_millis() as u64;
    tally
}
