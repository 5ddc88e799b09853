//! The kernel object built by build.rs (release, BTF) and embedded in the binary.

/// Bytes of `tollgate-ebpf`, aligned as aya requires for ELF parsing.
pub static KERNEL_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-ebpf"));

/// Bytes of `tollgate-floor`: programs with Tollgate's names and hooks that return at once.
/// Only the dataplane benchmark attaches them, to measure what the hooks cost by themselves.
pub static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-floor"));
