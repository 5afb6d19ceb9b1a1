//! `drover fake-vast --listen ADDR [--api-key KEY] [--seed N] [--faults SPEC] [--speed X]`:
//! runs the Vast.ai simulator alone, for the official `vastai` CLI (`--url`), for drivers under
//! development, and for scripts. Nothing is rented and nothing is spent.
//!
//! Prints one line on stdout once it listens, `fake-vast listening on http://ADDR` (with
//! `--listen 127.0.0.1:0` the port is chosen by the kernel and read from that line), then logs
//! requests (method, path, status; never a query string, a body or a key) on stderr. It stops
//! on SIGINT or SIGTERM.
//!
//! The key clients must present is `--api-key`, else `VASTAI_API_KEY`, else any non-empty key
//! is accepted. `--faults` takes the spec documented in `drover_vast_sim::faults`, e.g.
//! `rate_limit=2,offer_gone=1,slow=200`; `GET`/`PUT /_sim/faults` change it at run time and
//! `GET /_sim/ledger` shows what was billed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use drover_provision::Clock;
use drover_vast::ApiKey;
use drover_vast_sim::{self as sim, Faults, SimConfig};

/// Arguments of `drover fake-vast`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The API key clients must send (default: `VASTAI_API_KEY`, else any key).
    #[arg(long, value_parser = parse_key)]
    pub api_key: Option<ApiKey>,
    /// Seed of the deterministic offer catalogue.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Offers in the catalogue.
    #[arg(long, default_value_t = 48)]
    pub offers: usize,
    /// Faults to switch on, e.g. `rate_limit=2,offer_gone=1,slow=200` (default: none).
    #[arg(long, default_value = "none")]
    pub faults: Faults,
    /// How many simulated seconds pass per real second (instance start-up, billing).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
}

fn parse_key(s: &str) -> Result<ApiKey, String> {
    ApiKey::new(s.to_owned()).map_err(|e| e.to_string())
}

/// Runs the simulator until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        anyhow::bail!("--speed must be a positive number");
    }
    let api_key = match args.api_key {
        Some(k) => Some(k),
        None => match ApiKey::from_env() {
            Ok(k) => Some(k),
            Err(drover_vast::secret::ApiKeyError::Missing) => None,
            Err(e) => return Err(e).context("VASTAI_API_KEY"),
        },
    };
    let any_key = api_key.is_none();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let local = listener.local_addr().context("reading the bound address")?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "fake-vast listening on http://{local}")?;
            out.flush()?;
        }
        writeln!(
            std::io::stderr().lock(),
            "fake-vast: seed {}, {} offers, faults {}, speed {}x, {}",
            args.seed,
            args.offers,
            args.faults,
            args.speed,
            if any_key { "any API key accepted" } else { "API key required" }
        )?;
        let config = SimConfig {
            api_key,
            seed: args.seed,
            offers: args.offers,
            faults: args.faults,
            clock: Clock::scaled(args.speed),
            ..SimConfig::default()
        };
        sim::serve(listener, config, shutdown_signal()).await.context("serving")?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
