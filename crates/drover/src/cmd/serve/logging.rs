//! Where `serve`'s log lines go and which: stderr, text or JSON, filtered by `RUST_LOG`
//! (default INFO and up).

use anyhow::Context as _;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event. Default.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields`, `target`), for collectors.
    Json,
}

/// Log lines on stderr, `level` and up, as text.
pub fn init_logging_at(level: tracing_subscriber::filter::LevelFilter) {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(level)
        .try_init();
}

/// Log lines on stderr in `format`, filtered by `RUST_LOG` (the `tracing-subscriber`
/// env-filter syntax: `warn`, `drover_api=debug,info`, ...); without it, INFO and up. A
/// `RUST_LOG` that does not parse refuses the start.
pub fn init_logging_from_env(format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::builder()
        .with_default_directive(tracing_subscriber::filter::LevelFilter::INFO.into())
        .from_env()
        .context("RUST_LOG is not a valid log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter);
    // A subscriber already installed (a test harness) keeps its own; nothing to refuse.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
