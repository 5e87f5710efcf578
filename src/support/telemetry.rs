//! Structured JSON logs through `tracing`.

use tracing_subscriber::EnvFilter;

/// Installs a JSON subscriber on stdout, filtered by `RUST_LOG` (default `info`).
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_target(false)
        .with_env_filter(filter)
        .try_init();
}
