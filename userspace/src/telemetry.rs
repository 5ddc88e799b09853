//! Logging set-up: `tracing` with the filter taken from `TOLLGATE_LOG` (then `RUST_LOG`),
//! default `info`.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = std::env::var("TOLLGATE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}
