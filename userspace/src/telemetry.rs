//! Logging set-up: `tracing` with the filter taken from `TOLLGATE_LOG` (then `RUST_LOG`),
//! default `info`.

use tracing_subscriber::EnvFilter;

/// One malloc arena for the whole process. glibc otherwise gives each thread that allocates
/// its own arena; the kube decoding, the engine and the dataplane writer run on different
/// tokio workers, and at 10k services the fragmentation across arenas cost ~8 MiB of RSS
/// (measured in `cargo xtask bench enls`). A node agent with a handful of threads loses
/// nothing by sharing one. Call before any thread starts.
pub fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only tunes the allocator; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

pub fn init() {
    let filter = std::env::var("TOLLGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

/// Current UTC time as `2026-11-24T03:42:53Z`.
pub fn utc_now() -> String {
    format_utc(std::time::SystemTime::now())
}

/// A time as `2026-11-24T03:42:53Z` (no calendar crate needed for this).
pub fn format_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
