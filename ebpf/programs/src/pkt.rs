//! Direct packet loads for the header parser: one bounds check per header, one instruction per
//! field.
//!
//! Header fields sit at any alignment (an IPv4 address behind a 14-byte Ethernet header is
//! 2-byte aligned at best). A Rust unaligned read becomes one byte load per byte on the BPF
//! target, joined with shifts; these loads are a single instruction instead, which the verifier
//! accepts for packet memory on every kernel with efficient unaligned access (x86-64 and arm64;
//! elsewhere the program would fail to load, not misbehave). Values are the bytes as they lie
//! in the packet (network order), as `read_unaligned` returned them.

use core::arch::asm;

use aya_ebpf::programs::TcContext;

/// Headers start within this offset (Ethernet + IPv4 with options); it also bounds the offsets
/// for the verifier.
pub const MAX_OFFSET: usize = 14 + 60;

/// `N` bytes of the packet from a header's offset, checked to lie in the linear data.
#[derive(Clone, Copy)]
pub struct Header<const N: usize> {
    at: usize,
}

impl<const N: usize> Header<N> {
    /// The `N` bytes at `off`; when they are not in the linear data (rare: locally made and
    /// forwarded packets keep their headers there) they are pulled in first. `None` for a
    /// packet shorter than that.
    #[inline(always)]
    pub fn at(ctx: &TcContext, off: usize) -> Option<Self> {
        if off > MAX_OFFSET {
            return None;
        }
        if let Some(h) = Self::linear(ctx, off) {
            return Some(h);
        }
        ctx.pull_data((off + N) as u32).ok()?;
        Self::linear(ctx, off)
    }

    #[inline(always)]
    fn linear(ctx: &TcContext, off: usize) -> Option<Self> {
        // The bound is checked on the pointer the loads use (with the field offset inside the
        // load instruction), so the verifier credits every load.
        let at = ctx.data() + off;
        (at + N <= ctx.data_end()).then_some(Self { at })
    }

    #[inline(always)]
    pub fn u8<const OFF: usize>(self) -> u8 {
        const { assert!(OFF < N) };
        let v: u64;
        // SAFETY: a 1-byte load inside the checked bytes.
        unsafe {
            asm!("{v} = *(u8 *)({p} + {o})", p = in(reg) self.at, o = const OFF,
                v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags));
        }
        v as u8
    }

    #[inline(always)]
    pub fn u16<const OFF: usize>(self) -> u16 {
        const { assert!(OFF + 2 <= N) };
        let v: u64;
        // SAFETY: a 2-byte load inside the checked bytes.
        unsafe {
            asm!("{v} = *(u16 *)({p} + {o})", p = in(reg) self.at, o = const OFF,
                v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags));
        }
        v as u16
    }

    #[inline(always)]
    pub fn u32<const OFF: usize>(self) -> u32 {
        const { assert!(OFF + 4 <= N) };
        let v: u64;
        // SAFETY: a 4-byte load inside the checked bytes.
        unsafe {
            asm!("{v} = *(u32 *)({p} + {o})", p = in(reg) self.at, o = const OFF,
                v = lateout(reg) v, options(pure, readonly, nostack, preserves_flags));
        }
        v as u32
    }
}
