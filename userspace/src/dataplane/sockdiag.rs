//! The kernel's socket diagnostics over netlink (`NETLINK_SOCK_DIAG`, what `ss` uses): list
//! the connected UDP sockets of a network namespace and destroy one (`SOCK_DESTROY`, what
//! `ss -K` does; the kernel needs `CONFIG_INET_DIAG_DESTROY`). A destroyed UDP socket is
//! disconnected and its owner's next receive fails with ECONNABORTED.
//!
//! A netlink socket answers for the network namespace it was created in.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
/// `TCP_ESTABLISHED`: the state of a connected UDP socket.
const ESTABLISHED: u32 = 1;
const HDR_LEN: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg` up to and including its socket id.
const MSG_MIN_LEN: usize = 4 + SOCKID_LEN;

/// One socket as the kernel names it (`struct inet_diag_sockid`, kept as received: ports and
/// addresses in network order, an IPv4 address in the first word).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockId {
    pub family: u8,
    pub raw: [u8; SOCKID_LEN],
}

impl SockId {
    fn word(&self, at: usize) -> u32 {
        u32::from_ne_bytes([
            self.raw[at],
            self.raw[at + 1],
            self.raw[at + 2],
            self.raw[at + 3],
        ])
    }

    /// The peer port, network order (as the BPF maps keep it).
    pub fn peer_port(&self) -> u16 {
        u16::from_ne_bytes([self.raw[2], self.raw[3]])
    }

    /// The peer address as the BPF maps keep it (IPv4 as an IPv4-mapped IPv6 address).
    pub fn peer_words(&self) -> [u32; 4] {
        let d = [0, 1, 2, 3].map(|i| self.word(20 + 4 * i));
        if self.family == libc::AF_INET as u8 {
            [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), d[0]]
        } else {
            d
        }
    }

    pub fn cookie(&self) -> u64 {
        u64::from(self.word(40)) | (u64::from(self.word(44)) << 32)
    }
}

/// A `NETLINK_SOCK_DIAG` socket in the calling thread's network namespace.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The kernel always answers; the timeout only bounds a wait that would otherwise be
        // unbounded (the purge task must never hang on it).
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        super::sys::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout,
        )?;
        Ok(Self { fd, seq: 0 })
    }

    /// The connected UDP sockets of one address family (`AF_INET` or `AF_INET6`).
    pub fn connected_udp(&mut self, family: u8) -> io::Result<Vec<SockId>> {
        let seq = self.send(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            1 << ESTABLISHED,
            &[0; SOCKID_LEN],
        )?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for (kind, payload) in messages(&buf[..n], seq) {
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => match error_code(payload) {
                        0 => {}
                        e => return Err(io::Error::from_raw_os_error(e)),
                    },
                    SOCK_DIAG_BY_FAMILY if payload.len() >= MSG_MIN_LEN => {
                        let mut raw = [0u8; SOCKID_LEN];
                        raw.copy_from_slice(&payload[4..MSG_MIN_LEN]);
                        out.push(SockId {
                            family: payload[0],
                            raw,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// Destroys one UDP socket (`ENOENT`: it is gone, or its cookie no longer matches).
    pub fn destroy_udp(&mut self, id: &SockId) -> io::Result<()> {
        let seq = self.send(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            id.family,
            0,
            &id.raw,
        )?;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = self.recv(&mut buf)?;
            for (kind, payload) in messages(&buf[..n], seq) {
                if kind == NLMSG_ERROR {
                    return match error_code(payload) {
                        0 => Ok(()),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
            }
        }
    }

    fn send(
        &mut self,
        kind: u16,
        flags: u16,
        family: u8,
        states: u32,
        id: &[u8; SOCKID_LEN],
    ) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(HDR_LEN + REQ_LEN);
        msg.extend_from_slice(&((HDR_LEN + REQ_LEN) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&[family, libc::IPPROTO_UDP as u8, 0, 0]);
        msg.extend_from_slice(&states.to_ne_bytes());
        msg.extend_from_slice(id);
        // SAFETY: sending our own buffer on our own socket (to the kernel: no address needed).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: receiving into our own buffer of the given length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// The netlink messages of one datagram that answer request `seq`: (type, payload).
fn messages(mut buf: &[u8], seq: u32) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= HDR_LEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < HDR_LEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if msg_seq == seq {
            out.push((kind, &buf[HDR_LEN..len]));
        }
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    out
}

/// The positive errno of an `NLMSG_ERROR` payload (0: an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .map(|b| -i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(libc::EPROTO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_destroys_a_connected_udp_socket_by_its_peer() {
        // Sockets of this test only, on loopback of the namespace it runs in.
        for (family, local) in [(libc::AF_INET, "127.0.0.1:0"), (libc::AF_INET6, "[::1]:0")] {
            let peer = std::net::UdpSocket::bind(local).unwrap();
            let client = std::net::UdpSocket::bind(local).unwrap();
            client.connect(peer.local_addr().unwrap()).unwrap();
            let (port, family) = (peer.local_addr().unwrap().port(), family as u8);
            let mut diag = Diag::open().unwrap();
            let mine = |diag: &mut Diag| {
                diag.connected_udp(family)
                    .unwrap()
                    .into_iter()
                    .find(|s| s.peer_port() == port.to_be())
            };
            let id = mine(&mut diag).expect("the connected socket is listed");
            assert_eq!(
                id.peer_words(),
                crate::dataplane::addr::words(peer.local_addr().unwrap().ip())
            );
            assert_ne!(id.cookie(), 0);
            // The unconnected peer is not listed.
            let own = client.local_addr().unwrap().port().to_be();
            assert!(
                diag.connected_udp(family)
                    .unwrap()
                    .iter()
                    .all(|s| s.peer_port() != own)
            );
            diag.destroy_udp(&id).unwrap();
            client
                .set_read_timeout(Some(std::time::Duration::from_secs(1)))
                .unwrap();
            let err = client.recv(&mut [0u8; 16]).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
            assert!(mine(&mut diag).is_none(), "disconnected");
            // Gone: a second destroy finds nothing.
            assert!(diag.destroy_udp(&id).is_err());
        }
    }
}
