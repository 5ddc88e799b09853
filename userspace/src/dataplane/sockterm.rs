//! Connected UDP sockets whose backend left their service are destroyed (Cilium's socket-LB
//! termination; kube-proxy gets the same effect by deleting the service's UDP conntrack
//! entries).
//!
//! The connect hook sends a connected UDP socket straight to a backend, so no later map change
//! reaches it: without this, it keeps sending to the backend that left (a DNS client keeps
//! asking a deleted CoreDNS pod). The socket's owner sees ECONNABORTED and, like after any
//! error, opens a new socket, which the hook sends to a serving backend.
//!
//! Which sockets: those whose record in `tg_sockrev_v1` (socket cookie, backend → frontend)
//! names the backend that left and a frontend of the service port it left, and that are still
//! connected to that backend. They are found with the kernel's socket diagnostics in every
//! network namespace of the processes in the socket hooks' cgroup. Unconnected sockets keep
//! their choice in `tg_sockct_v1`, which the purge removes instead.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tollgate_common::lb::sockrev::{SockRevKey, SockRevValue};

use super::sockdiag::{Diag, SockId};

/// An address and port as the maps keep them (IPv4-mapped words, port in network order).
pub type Peer = ([u32; 4], u16);

/// A backend that stopped serving a UDP service port, with that port's frontends (`None`:
/// every frontend; the backend is gone altogether).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StaleUdpPeer {
    pub backend: Peer,
    pub frontends: Option<Vec<Peer>>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TermStats {
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Network namespaces or sockets that could not be looked at or destroyed.
    pub failed: usize,
}

/// The sockets (by cookie) whose translation `stale` makes stale, with the backend each was
/// sent to.
fn stale_cookies(
    records: impl Iterator<Item = (SockRevKey, SockRevValue)>,
    stale: &[StaleUdpPeer],
) -> HashMap<u64, Peer> {
    // Per backend: the frontends through which its sockets are stale (`None`: all).
    let mut by_backend: HashMap<Peer, Option<HashSet<Peer>>> = HashMap::new();
    for s in stale {
        let entry = by_backend
            .entry(s.backend)
            .or_insert_with(|| Some(HashSet::new()));
        match (&s.frontends, entry.as_mut()) {
            (Some(f), Some(set)) => set.extend(f.iter().copied()),
            _ => *entry = None,
        }
    }
    records
        .filter(|(k, v)| {
            by_backend
                .get(&(k.addr, k.port))
                .is_some_and(|f| f.as_ref().is_none_or(|f| f.contains(&(v.addr, v.port))))
        })
        .map(|(k, _)| (k.cookie, (k.addr, k.port)))
        .collect()
}

/// The distinct network namespaces of the processes in `cgroup` and below it.
fn namespaces(cgroup: &Path) -> Vec<File> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in procs.lines() {
                let path = format!("/proc/{pid}/ns/net");
                // A process may exit at any moment: it then simply has no namespace here.
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                if seen.insert((meta.dev(), meta.ino()))
                    && let Ok(f) = File::open(&path)
                {
                    out.push(f);
                }
            }
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// A socket-diagnostics socket in the network namespace `ns` (opened from a short-lived
/// thread, so this thread's namespace never changes).
fn diag_in(ns: &File) -> io::Result<Diag> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: an open namespace file; setns affects the spawned thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Diag::open()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("socket-diagnostics thread panicked")))
    })
}

/// Destroys the connected UDP sockets `stale` leaves pointing at a departed backend, and
/// forgets their reverse records.
pub fn terminate(
    cgroup: &Path,
    sockrev: &mut BpfHashMap<MapData, SockRevKey, SockRevValue>,
    stale: &[StaleUdpPeer],
) -> TermStats {
    let mut stats = TermStats::default();
    let cookies = stale_cookies(sockrev.iter().filter_map(Result::ok), stale);
    if cookies.is_empty() {
        return stats;
    }
    for ns in namespaces(cgroup) {
        let mut diag = match diag_in(&ns) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("socket diagnostics in a pod network namespace: {e}");
                stats.failed += 1;
                continue;
            }
        };
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let socks = match diag.connected_udp(family) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("listing connected UDP sockets: {e}");
                    stats.failed += 1;
                    continue;
                }
            };
            for id in socks.iter().filter(|s| is_stale(&cookies, s)) {
                match diag.destroy_udp(id) {
                    Ok(()) => {
                        stats.destroyed += 1;
                        let (addr, port) = (id.peer_words(), id.peer_port());
                        let _ = sockrev.remove(&SockRevKey {
                            cookie: id.cookie(),
                            addr,
                            port,
                            pad: [0; 6],
                        });
                    }
                    // Closed meanwhile.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => {
                        tracing::warn!(cookie = id.cookie(), "destroying a stale UDP socket: {e}");
                        stats.failed += 1;
                    }
                }
            }
        }
    }
    stats
}

/// Is the socket one of `cookies` and still connected to the backend it was sent to?
fn is_stale(cookies: &HashMap<u64, Peer>, s: &SockId) -> bool {
    cookies
        .get(&s.cookie())
        .is_some_and(|&(addr, port)| s.peer_words() == addr && s.peer_port() == port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sockets_sent_to_the_departed_backend_through_its_service_are_stale() {
        let peer = |last: u32, port: u16| ([0, 0, 0xffff_u32.to_be(), last], port.to_be());
        let (backend, other_backend) = (peer(1, 5353), peer(2, 5353));
        let (frontend, other_service) = (peer(10, 53), peer(11, 53));
        let record = |cookie, (addr, port): Peer, fe: Peer| {
            (
                SockRevKey {
                    cookie,
                    addr,
                    port,
                    pad: [0; 6],
                },
                SockRevValue {
                    addr: fe.0,
                    port: fe.1,
                    pad: [0; 2],
                },
            )
        };
        let records = [
            record(1, backend, frontend),
            // The same backend through a service it still serves.
            record(2, backend, other_service),
            // Another backend of the service.
            record(3, other_backend, frontend),
        ];
        let stale = [StaleUdpPeer {
            backend,
            frontends: Some(vec![frontend]),
        }];
        let cookies = stale_cookies(records.into_iter(), &stale);
        assert_eq!(cookies, HashMap::from([(1, backend)]));
        // A backend gone altogether: through every frontend.
        let gone = [StaleUdpPeer {
            backend,
            frontends: None,
        }];
        let cookies = stale_cookies(records.into_iter(), &gone);
        assert_eq!(cookies, HashMap::from([(1, backend), (2, backend)]));
    }
}
