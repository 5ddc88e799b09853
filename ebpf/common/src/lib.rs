//! Map layouts shared by Tollgate's kernel programs and its userspace agent.
//!
//! This crate is the single source of truth for every BPF map key and value. Rules (learnt from
//! aya and Cilium, and from blixt's mistakes):
//!
//! - every type is `#[repr(C)]`, `Copy`, with **explicit `pad` fields** so there is no hidden
//!   padding (the kernel hashes keys byte by byte; hidden padding makes equal keys differ);
//! - no `bool`, enum or `Option` in a map type: codes are `u8`/`u16`/`u32` constants;
//! - each field's doc states its byte order (`be` = network order as on the wire, `host` = CPU
//!   order);
//! - a `const _: () = assert!(size_of::<T>() == N)` per type pins the layout;
//! - one `pub mod` per map with its name, capacity, key and value together;
//! - map names carry a version suffix (`_v1`) bumped whenever a layout changes; fields are
//!   retired, never reused. Names stay within the kernel's 15 visible characters.
//!
//! With the `user` feature every type implements `aya::Pod` for the userspace agent.
#![no_std]

pub mod iface_stats;
pub mod lb;

/// Implements `aya::Pod` (userspace only) for map types that are plain old data: `repr(C)`,
/// `Copy`, every byte accounted for by a field.
#[macro_export]
#[doc(hidden)]
macro_rules! impl_pod {
    ($($ty:ty),+ $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is repr(C) + Copy, with explicit padding fields and a size assert,
            // so every bit pattern is a valid value and no byte is uninitialised.
            unsafe impl aya::Pod for $ty {}
        )+
    };
}

/// Every map the kernel object defines; the agent pins each under its pin directory.
pub const MAP_NAMES: &[&str] = &[
    iface_stats::NAME,
    lb::svc::NAME,
    lb::backend::NAME,
    lb::revnat::NAME,
    lb::ct::NAME,
    lb::ctmark::NAME,
    lb::feport::NAME,
    lb::frag::NAME,
    lb::frag::NAME6,
    lb::affinity::NAME,
    lb::sockct::NAME,
    lb::sockrev::NAME,
    lb::sockrev::TCP_NAME,
    lb::sockrev::SLOT_NAME,
    lb::sockrev::HELD_NAME,
    lb::sockrev::PORT_NAME,
    lb::srcrange::NAME,
    lb::svccidr::NAME,
    lb::svccidr::BITS_NAME,
    lb::maglev::NAME,
    lb::stats::SVC_NAME,
    lb::stats::BACKEND_NAME,
    lb::svcinfo::NAME,
    lb::config::NAME,
];
