//! Small interface look-ups in the agent's network namespace.

/// The interface of the IPv4 default route (from `/proc/net/route`, which reflects the calling
/// thread's network namespace).
pub fn default_route_interface() -> std::io::Result<String> {
    let table = std::fs::read_to_string("/proc/net/route")?;
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let iface = cols.next()?;
            let dest = cols.next()?;
            let _gateway = cols.next()?;
            let _flags = cols.next()?;
            (dest == "00000000").then(|| iface.to_owned())
        })
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no IPv4 default route"))
}

/// Interface name for an index, if it exists in this network namespace.
pub fn name_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes as if_indextoname requires.
    let ptr = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if ptr.is_null() {
        return None;
    }
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..len]).into_owned())
}

/// Addresses configured on `iface` in this network namespace (getifaddrs(3)).
pub fn addresses(iface: &str) -> Vec<std::net::IpAddr> {
    addresses_where(|name| name == iface)
}

/// Addresses configured on any interface of this network namespace, loopback included.
pub fn all_addresses() -> Vec<std::net::IpAddr> {
    addresses_where(|_| true)
}

/// Addresses (IPv6 link-local ones left out) of the interfaces whose name passes `wanted`.
fn addresses_where(wanted: impl Fn(&str) -> bool) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we free below; every node is read before freeing.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut cur = head;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            if !wanted(&name) {
                continue;
            }
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    out.push(std::net::IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                    // Link-local addresses are no source for translated traffic.
                    if ip.segments()[0] & 0xffc0 != 0xfe80 {
                        out.push(std::net::IpAddr::V6(ip));
                    }
                }
                _ => {}
            }
        }
        libc::freeifaddrs(head);
    }
    out
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
/// hybrid ones).
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            let _ = cols.next();
            let dir = cols.next()?;
            (cols.next()? == "cgroup2").then(|| std::path::PathBuf::from(dir))
        })
        .min_by_key(|p| p.as_os_str().len())
}

/// The kernel driver behind `iface` (ethtool's ETHTOOL_GDRVINFO; works in any network
/// namespace, unlike sysfs which shows the namespace it was mounted in).
pub fn driver(iface: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IF_NAMESIZE],
        data: *mut DrvInfo,
        pad: [u8; 16],
    }
    let name = iface.as_bytes();
    if name.len() >= libc::IF_NAMESIZE {
        return None;
    }
    // SAFETY: zeroed plain-old-data structs passed to the ethtool ioctl on our own socket.
    unsafe {
        let mut info: DrvInfo = std::mem::zeroed();
        info.cmd = ETHTOOL_GDRVINFO;
        let mut req: IfReq = std::mem::zeroed();
        req.name[..name.len()].copy_from_slice(name);
        req.data = &mut info;
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req as *mut IfReq);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
        let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
        Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
    }
}

/// Adds `ip` (host route: /32 or /128) to the loopback interface with host scope, so that a
/// node-local service can listen on it (the metadata proxy's link-local address). Nothing is
/// changed when the address is already there.
pub async fn add_loopback_address(ip: std::net::IpAddr) -> std::io::Result<()> {
    if addresses("lo").contains(&ip) {
        return Ok(());
    }
    let index = {
        let name = c"lo";
        // SAFETY: a NUL-terminated name.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (conn, handle, _) = rtnetlink::new_connection()?;
    let task = tokio::spawn(conn);
    let prefix = if ip.is_ipv4() { 32 } else { 128 };
    let mut req = handle.address().add(index, ip, prefix);
    req.message_mut().header.scope = netlink_packet_route::address::AddressScope::Host;
    let result = req
        .execute()
        .await
        .map_err(|e| std::io::Error::other(format!("adding {ip}/{prefix} to lo: {e}")));
    task.abort();
    result
}

/// How [`tcp_listener`] sets up its socket (SO_REUSEADDR always).
#[derive(Debug, Clone, Copy)]
pub struct ListenOptions {
    /// An IPv6 wildcard takes IPv4 too, whatever `net.ipv6.bindv6only` says.
    pub dual_stack: bool,
    /// TCP_NODELAY, inherited by the accepted sockets.
    pub nodelay: bool,
    pub backlog: u32,
}

/// A TCP listener on `addr` (inside a tokio runtime).
pub fn tcp_listener(
    addr: std::net::SocketAddr,
    o: ListenOptions,
) -> std::io::Result<tokio::net::TcpListener> {
    use std::os::fd::AsRawFd as _;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if o.nodelay {
        socket.set_nodelay(true)?;
    }
    if o.dual_stack {
        let off: libc::c_int = 0;
        crate::dataplane::sys::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &off,
        )?;
    }
    socket.bind(addr)?;
    socket.listen(o.backlog)
}
