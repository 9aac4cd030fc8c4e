//! Log set-up shared by every Divisor binary (both units, the monolithic server, the bench):
//! human-readable lines on stderr, level from `RUST_LOG` (default `info`), colour only when
//! stderr is a terminal so log files stay plain text.

use std::io::IsTerminal;

/// Install the global tracing subscriber. Call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
