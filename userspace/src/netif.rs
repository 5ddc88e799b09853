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
