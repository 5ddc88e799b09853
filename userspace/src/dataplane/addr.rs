//! Addresses and ports as the maps store them: `[u32; 4]` words holding the bytes in network
//! order (IPv4 as IPv4-mapped IPv6), ports as network-order `u16`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub fn words(ip: IpAddr) -> [u32; 4] {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    [0, 1, 2, 3].map(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

pub fn ip(words: [u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn port_be(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

pub fn port_host(be: u16) -> u16 {
    u16::from_be_bytes(be.to_ne_bytes())
}

/// The address words masked to `prefix` bits of the address (IPv4 prefixes count IPv4 bits).
pub fn prefix_words(ip: IpAddr, prefix: u8) -> ([u32; 4], u32) {
    let bits = match ip {
        IpAddr::V4(_) => 96 + u32::from(prefix),
        IpAddr::V6(_) => u32::from(prefix),
    };
    (words(ip), bits)
}

pub fn unspecified_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_map_layout() {
        let v4: IpAddr = "10.96.0.10".parse().unwrap();
        let w = words(v4);
        assert_eq!(w[2].to_ne_bytes(), [0, 0, 0xff, 0xff], "IPv4-mapped");
        assert_eq!(
            w[3].to_ne_bytes(),
            [10, 96, 0, 10],
            "network byte order in memory"
        );
        assert_eq!(ip(w), v4);
        let v6: IpAddr = "fd00:96::10".parse().unwrap();
        assert_eq!(ip(words(v6)), v6);
        assert_eq!(port_be(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_host(port_be(30080)), 30080);
        // Same layout the kernel crate's helper produces.
        assert_eq!(
            w,
            tollgate_common::lb::v4_mapped(u32::from_ne_bytes([10, 96, 0, 10]))
        );
    }
}
