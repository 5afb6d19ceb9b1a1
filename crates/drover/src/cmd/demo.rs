//! `drover demo`: the whole product in one command, on the embedded default configuration.
//!
//! It starts the supervisor in this process (Phase A first, as `drover serve` does; state in a
//! fresh temporary directory, removed at the end), with the bundled `container` driver in its
//! sandbox and the embedded Vast.ai simulator as the provider (nothing real is rented or
//! spent). Then, as a client over HTTP with a token it made:
//!
//! 1. waits for `/readyz` and prints what it says about the provider;
//! 2. asks `POST /v1/estimates` for the job and prints the gate's decision with its numbers;
//! 3. submits a GPU job (`container`/`run`: an image and a command on one GPU) with
//!    `POST /v1/jobs`;
//! 4. follows `GET /v1/jobs/{id}/events`: states, a progress bar (on a terminal) and log lines;
//! 5. prints the result, the cost billed by the provider's ledger next to the cost settled in
//!    drover's own ledger, and checks that no instance is left running and every lease is
//!    settled.
//!
//! Exit 0 only if the job succeeded and every check passed; 1 otherwise; 2 if it could not
//! run. It takes a few seconds (the simulator's clock runs 10x).

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use drover_api::token::ApiToken;
use drover_proto::JobPhase;
use drover_proto::api::EstimateRequest;
use drover_proto::config::{Config, RateLimitConfig, Scope, TokenEntry, TokenFormat};
use drover_store::Store;
use serde_json::json;

use crate::client::{ApiClient, Token};
use crate::cmd::estimate::rows;
use crate::cmd::jobs::{Display, write_table};
use crate::cmd::serve;

/// Arguments of `drover demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print only the checks, not the live display.
    #[arg(long)]
    pub quiet: bool,
}

/// The demo job.
pub fn demo_job() -> serde_json::Value {
    json!({
        "driver": "container",
        "action": "run",
        "params": {
            "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime",
            "command": ["python", "-c", "import torch; print(torch.cuda.get_device_name(0))"],
        },
        "gpu": {"count": 1, "max_usd_per_hour": 2.0},
        "max_runtime_s": 600,
        "budget_usd": 5.0,
        "labels": {"source": "drover-demo"},
    })
}

/// Runs `drover demo`.
#[allow(clippy::print_stdout)]
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("drover-demo-")
        .tempdir()
        .context("a temporary directory")?;
    let token = ApiToken::generate().context("making a token")?;
    let mut config = Config::default();
    // Started as root, the supervisor drops to an unprivileged uid: the temporary directory
    // becomes that uid's, so it can reach its data directory and remove everything at the end.
    if nix::unistd::geteuid().is_root() {
        nix::unistd::chown(
            dir.path(),
            Some(nix::unistd::Uid::from_raw(config.supervisor.uid)),
            Some(nix::unistd::Gid::from_raw(config.supervisor.gid)),
        )
        .context("giving the temporary directory to the dropped uid")?;
    }
    config.supervisor.data_dir = dir.path().join("data").to_string_lossy().into_owned();
    config.api.tokens = vec![TokenEntry {
        name: "demo".to_owned(),
        sha256: token.sha256_hex(),
        scopes: Scope::ALL.to_vec(),
        format: TokenFormat::DroverV1,
        revoked: false,
    }];
    config.api.rate_limit = RateLimitConfig { per_second: 1000, burst: 1000 };
    let prepared = serve::prepare(config)?;
    if !args.quiet {
        serve::init_logging_at(tracing_subscriber::filter::LevelFilter::WARN);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let ok = runtime.block_on(async move {
        let running = serve::start(&prepared, Some("127.0.0.1:0".parse()?), false).await?;
        let url = format!("http://{}", running.addr);
        let service = Arc::clone(&running.service);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(running.serve_until(async {
            let _ = stopped.await;
        }));
        let client = ApiClient::new(&url, Token::new(token.expose())?)?;
        let outcome = drive(&client, args.quiet).await;
        let _ = stop.send(());
        // The simulator comes back after the shutdown released every lease.
        let sim = server.await.context("the server task")??;
        let job_ok = outcome?;

        // The checks, after the shutdown released everything.
        let mut out = std::io::stdout().lock();
        let report = service.store().ledger_report().await.context("reading the ledger")?;
        let open = service.store().open_leases().await.context("listing open leases")?;
        let (billed, live) = match &sim {
            Some(sim) => {
                let ledger = sim.ledger();
                (ledger.total_usd(), ledger.live().len())
            }
            None => (f64::NAN, 0),
        };
        let charged = drover_store::micros_to_usd(report.ledger_micros);
        writeln!(out)?;
        write_table(&mut out, &[
            ["billed by the provider (simulator ledger)".to_owned(), format!("${billed:.6}")],
            ["settled in drover's ledger".to_owned(), format!("${charged:.6}")],
            ["leases".to_owned(), format!("{} ({} open)", report.leases, open.len())],
            ["instances left running".to_owned(), live.to_string()],
            ["ledger balances".to_owned(), report.balances().to_string()],
            ["time".to_owned(), format!("{:.1} s", started.elapsed().as_secs_f64())],
        ])?;
        // drover settles from its own record of the rental (never less than the provider
        // billed); the two stay within a cent.
        let matches = charged + 1e-6 >= billed && charged - billed <= 0.01;
        let all = job_ok && live == 0 && open.is_empty() && report.balances() && report.leases > 0 && matches;
        writeln!(out, "{}", if all {
            "demo: OK: the job ran on a gated GPU lease, the lease was released, nothing is left running"
        } else {
            "demo: FAILED: see above"
        })?;
        anyhow::Ok(all)
    })?;
    drop(dir);
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The client half: readiness, estimate, submit, follow, result. True if the job succeeded.
async fn drive(client: &ApiClient, quiet: bool) -> anyhow::Result<bool> {
    let mut out = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(30);
    let readiness = loop {
        let answer = client.readiness().await?;
        if answer.body.ready {
            break answer.body;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the supervisor did not become ready: {}",
            answer.raw
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if let Some(provider) = readiness.checks.get("provider").and_then(|c| c.message.clone()) {
        writeln!(out, "provider: {provider}")?;
    }
    let job = demo_job();
    let request: EstimateRequest = crate::cmd::estimate::to_request(&job)?;
    let estimate = client.estimate(&request).await?;
    writeln!(out, "\ngate decision for the job (POST /v1/estimates):")?;
    write_table(&mut out, &rows(&estimate.body, request.budget_usd))?;
    anyhow::ensure!(estimate.body.allowed, "the gate refused the demo job");

    let submitted = client.submit(serde_json::to_vec(&job)?, None).await?;
    let id = submitted.body.id.clone();
    writeln!(out, "\nsubmitted {id} (POST /v1/jobs, HTTP {})\n", submitted.status.as_u16())?;
    out.flush()?;
    let mut stream = client.events(&id, 0).await?;
    let mut display = if quiet { None } else { Some(Display::new(false)) };
    let mut terminal = None;
    while let Some(event) = stream.next().await? {
        if let drover_proto::api::JobEventKind::JobState(state) = &event.event
            && state.state.is_terminal()
        {
            terminal = Some(state.state);
        }
        if let Some(display) = &mut display {
            display.show(&event)?;
        }
    }
    if let Some(display) = &mut display {
        display.finish()?;
    }
    let job = client.job(&id).await?.body;
    writeln!(out, "\nresult: {}", crate::cmd::jobs::phase(job.state))?;
    if let Some(output) = &job.output {
        writeln!(out, "output: {output}")?;
    }
    let lease_released = job
        .output
        .as_ref()
        .and_then(|o| o.get("cost_usd"))
        .is_some_and(serde_json::Value::is_number);
    Ok(terminal == Some(JobPhase::Succeeded) && lease_released)
}
