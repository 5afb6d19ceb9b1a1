//! `drover jobs submit|list|show|cancel|logs`: the jobs API from the command line.
//!
//! Every subcommand talks to a running server (`--url`, else `DROVER_URL`, default
//! `http://127.0.0.1:8080`) with the token in `DROVER_TOKEN` (never printed). Output is a human-readable table or key/value
//! list by default; `--json` prints the API's JSON bodies instead (one document per line for
//! `logs`).
//!
//! ```text
//! $ drover jobs submit job.json
//! job-0194f3a2b7c1-9d3e  queued
//! $ drover jobs logs job-0194f3a2b7c1-9d3e --follow
//! [state] starting
//! [progress] 3/10 steps  pulling image
//! stdout | epoch 1: loss 0.91
//! [result] succeeded {"exit_code":0}
//! [state] succeeded
//! ```
//!
//! `logs --follow` streams the job's server-sent events until the job ends. On a terminal it
//! keeps a live progress line (state, bar, percentage) under the scrolling log lines; piped,
//! it prints plain lines only. Without `--follow` it prints the events recorded so far and
//! stops once the server has sent nothing for one second (default; the stored history comes
//! at once).
//!
//! Exit codes: 0 success; 1 the server refused (an API error), or, for `logs --follow`, the
//! job ended `failed` or `cancelled`; 2 the command could not run (no token, bad input, no
//! server).

use std::io::{IsTerminal as _, Read as _, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use drover_proto::api::{Job, JobEvent, JobEventKind};
use drover_proto::{JobId, JobPhase, LogStream, Outcome};

use crate::client::{ApiClient, ClientError, DEFAULT_URL, Token};

/// Options every API command takes.
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// The server's base URL.
    #[arg(long, global = true, default_value = DEFAULT_URL, env = "DROVER_URL")]
    pub url: String,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl ServerArgs {
    /// A client for `--url` with the token from `DROVER_TOKEN`.
    pub fn client(&self) -> Result<ApiClient, ClientError> {
        ApiClient::new(&self.url, Token::from_env()?)
    }
}

/// Arguments of `drover jobs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server options.
    #[command(flatten)]
    pub server: ServerArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: JobsCommand,
}

/// The `drover jobs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// Submit a job: a JSON job spec from FILE, or from stdin with `-`.
    Submit {
        /// The job spec (`-` for stdin).
        file: PathBuf,
        /// Sent as `Idempotency-Key`: submitting again with the same key returns the same job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, starting, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this driver.
        #[arg(long)]
        driver: Option<String>,
        /// Only jobs with this label, as `key=value`.
        #[arg(long)]
        label: Option<String>,
        /// Jobs per page (server default 50).
        #[arg(long)]
        limit: Option<u32>,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show one job.
    Show {
        /// The job's id.
        id: JobId,
    },
    /// Cancel a job.
    Cancel {
        /// The job's id.
        id: JobId,
    },
    /// Print a job's events: states, progress, log lines, result.
    Logs {
        /// The job's id.
        id: JobId,
        /// Keep following until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
}

/// Runs `drover jobs`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let json = args.server.json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let outcome = async move {
            match args.command {
                JobsCommand::Submit { file, idempotency_key } => {
                    submit(&client, json, &file, idempotency_key.as_deref()).await
                }
                JobsCommand::List { state, driver, label, limit, cursor } => {
                    let mut query = Vec::new();
                    let mut add = |key: &str, value: Option<String>| {
                        if let Some(value) = value {
                            query.push(format!("{key}={}", encode(&value)));
                        }
                    };
                    add("state", state);
                    add("driver", driver);
                    add("label", label);
                    add("limit", limit.map(|l| l.to_string()));
                    add("cursor", cursor);
                    list(&client, json, &query.join("&")).await
                }
                JobsCommand::Show { id } => {
                    let answer = client.job(&id).await?;
                    print_job(json, &answer.raw, &answer.body)
                }
                JobsCommand::Cancel { id } => {
                    let answer = client.cancel(&id).await?;
                    print_job(json, &answer.raw, &answer.body)
                }
                JobsCommand::Logs { id, follow } => {
                    logs(&client, json, &id, follow).await.map(|phase| match phase {
                        Some(JobPhase::Failed | JobPhase::Cancelled) if follow => ExitCode::from(1),
                        _ => ExitCode::SUCCESS,
                    })
                }
            }
        }
        .await;
        outcome_code(outcome)
    })
}

/// Maps an API refusal to exit code 1 (with its message on stderr); anything else stays an
/// error (exit 2).
pub fn outcome_code(outcome: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match outcome {
        Err(error)
            if error.downcast_ref::<ClientError>().is_some_and(|e| e.api_code().is_some()) =>
        {
            writeln!(std::io::stderr().lock(), "drover: {error:#}")?;
            Ok(ExitCode::from(1))
        }
        other => other,
    }
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reads a JSON document from `file` (`-`: stdin) and checks that it parses.
pub fn read_json(file: &std::path::Path) -> anyhow::Result<(Vec<u8>, serde_json::Value)> {
    let mut bytes = Vec::new();
    let shown = file.display();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).context("reading the job from stdin")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("reading {shown}"))?;
    }
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{shown} is not JSON"))?;
    if !value.is_object() {
        anyhow::bail!("{shown}: a job spec is a JSON object");
    }
    Ok((bytes, value))
}

async fn submit(
    client: &ApiClient,
    json: bool,
    file: &std::path::Path,
    idempotency_key: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (bytes, _) = read_json(file)?;
    let answer = client.submit(bytes, idempotency_key).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", answer.raw)?;
    } else {
        let replayed = if answer.status.as_u16() == 200 { "  (replayed)" } else { "" };
        writeln!(out, "{}  {}{replayed}", answer.body.id, phase(answer.body.state))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(client: &ApiClient, json: bool, query: &str) -> anyhow::Result<ExitCode> {
    let answer = client.list(query).await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", answer.raw)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows =
        vec![["ID", "STATE", "DRIVER", "ACTION", "BUDGET", "BY", "MESSAGE"].map(str::to_owned)];
    for job in &answer.body.jobs {
        rows.push([
            job.id.to_string(),
            phase(job.state).to_owned(),
            job.spec.driver.to_string(),
            job.spec.action.to_string(),
            format!("${:.2}", job.spec.budget_usd),
            job.submitted_by.clone(),
            job.message.clone().unwrap_or_default(),
        ]);
    }
    write_table(&mut out, &rows)?;
    if let Some(cursor) = &answer.body.next_cursor {
        writeln!(out, "(more: --cursor {cursor})")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes rows as left-aligned columns separated by two spaces; the last column is not padded.
pub fn write_table<const N: usize>(
    out: &mut impl Write,
    rows: &[[String; N]],
) -> std::io::Result<()> {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

use drover_proto::text::rfc3339_ms as rfc3339;

fn print_job(json: bool, raw: &serde_json::Value, job: &Job) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{raw}")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        ["id".to_owned(), job.id.to_string()],
        ["state".to_owned(), phase(job.state).to_owned()],
        ["driver".to_owned(), job.spec.driver.to_string()],
        ["action".to_owned(), job.spec.action.to_string()],
        ["budget".to_owned(), format!("${:.2}", job.spec.budget_usd)],
        ["max runtime".to_owned(), format!("{} s", job.spec.max_runtime_s)],
        ["submitted by".to_owned(), job.submitted_by.clone()],
        ["created".to_owned(), rfc3339(job.created_unix_ms)],
        ["updated".to_owned(), rfc3339(job.updated_unix_ms)],
    ];
    if let Some(gpu) = &job.spec.gpu {
        let models = if gpu.models.is_empty() { "any".to_owned() } else { gpu.models.join(", ") };
        rows.push(["gpu".to_owned(), format!("{} x {models}", gpu.count)]);
    }
    if let Some(message) = &job.message {
        rows.push(["message".to_owned(), message.clone()]);
    }
    if let Some(output) = &job.output {
        rows.push(["output".to_owned(), output.to_string()]);
    }
    write_table(&mut out, &rows)?;
    Ok(ExitCode::SUCCESS)
}

/// The state's name as the API spells it.
pub fn phase(state: JobPhase) -> &'static str {
    match state {
        JobPhase::Queued => "queued",
        JobPhase::Starting => "starting",
        JobPhase::Running => "running",
        JobPhase::Succeeded => "succeeded",
        JobPhase::Failed => "failed",
        JobPhase::Cancelled => "cancelled",
    }
}

/// How long `logs` without `--follow` waits for more events before it stops.
const IDLE_STOP: Duration = Duration::from_secs(1);

/// Prints a job's events; returns the terminal state if the stream reached one.
pub async fn logs(
    client: &ApiClient,
    json: bool,
    id: &JobId,
    follow: bool,
) -> anyhow::Result<Option<JobPhase>> {
    let mut stream = client.events(id, 0).await?;
    let mut display = Display::new(json);
    let mut terminal = None;
    loop {
        let next = if follow {
            stream.next().await?
        } else {
            match tokio::time::timeout(IDLE_STOP, stream.next()).await {
                Ok(next) => next?,
                Err(_) => break,
            }
        };
        let Some(event) = next else { break };
        if let JobEventKind::JobState(state) = &event.event
            && state.state.is_terminal()
        {
            terminal = Some(state.state);
        }
        display.show(&event)?;
    }
    display.finish()?;
    Ok(terminal)
}

/// The latest progress: current, total, unit, message.
type Progress = (f64, Option<f64>, Option<String>, Option<String>);

/// Renders job events: plain lines, JSON lines, or (on a terminal) log lines scrolling above
/// a live progress line.
#[derive(Debug)]
pub struct Display {
    json: bool,
    live: bool,
    state: Option<JobPhase>,
    progress: Option<Progress>,
    drawn: bool,
}

impl Display {
    /// A display for stdout; live when stdout is a terminal and `json` is off.
    pub fn new(json: bool) -> Self {
        Self::with_mode(json, !json && std::io::stdout().is_terminal())
    }

    /// A display with an explicit mode.
    pub fn with_mode(json: bool, live: bool) -> Self {
        Self { json, live, state: None, progress: None, drawn: false }
    }

    /// Shows one event.
    pub fn show(&mut self, event: &JobEvent) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        if self.json {
            let text = serde_json::to_string(event).map_err(std::io::Error::other)?;
            writeln!(out, "{text}")?;
            return out.flush();
        }
        if self.drawn {
            // Clear the progress line; log lines go where it was, and it is redrawn below.
            write!(out, "\r\x1b[2K")?;
            self.drawn = false;
        }
        match &event.event {
            JobEventKind::JobState(state) => {
                self.state = Some(state.state);
                if !self.live || state.state.is_terminal() {
                    let message =
                        state.message.as_deref().map(|m| format!("  {m}")).unwrap_or_default();
                    writeln!(out, "[state] {}{message}", phase(state.state))?;
                }
            }
            JobEventKind::JobProgress(p) => {
                self.progress = Some((p.current, p.total, p.unit.clone(), p.message.clone()));
                if !self.live {
                    writeln!(
                        out,
                        "[progress] {}",
                        progress_text(p.current, p.total, p.unit.as_deref(), p.message.as_deref())
                    )?;
                }
            }
            JobEventKind::JobLog(log) => {
                let stream = match log.stream {
                    LogStream::Stdout => "stdout",
                    LogStream::Stderr => "stderr",
                };
                for line in &log.lines {
                    writeln!(out, "{stream} | {line}")?;
                }
                if log.dropped > 0 {
                    writeln!(out, "{stream} | ({} lines dropped)", log.dropped)?;
                }
            }
            JobEventKind::JobResult(result) => {
                let outcome = match result.outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Failed => "failed",
                    Outcome::Cancelled => "cancelled",
                };
                let output = result.output.as_ref().map(|o| format!(" {o}")).unwrap_or_default();
                let message =
                    result.message.as_deref().map(|m| format!("  {m}")).unwrap_or_default();
                writeln!(out, "[result] {outcome}{output}{message}")?;
            }
        }
        if self.live && !self.state.is_some_and(JobPhase::is_terminal) {
            write!(out, "{}", self.status_line())?;
            self.drawn = true;
        }
        out.flush()
    }

    fn status_line(&self) -> String {
        let state = self.state.map_or("waiting", phase);
        let Some((current, total, unit, message)) = &self.progress else {
            return format!("[{state}]");
        };
        let bar = match total {
            Some(total) if *total > 0.0 => {
                let fraction = (current / total).clamp(0.0, 1.0);
                let width = 30usize;
                // In [0, 30] after the clamp, so the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let filled = (fraction * width as f64).round() as usize;
                format!(
                    "[{}{}] {:>3.0}% ",
                    "#".repeat(filled),
                    "-".repeat(width - filled),
                    fraction * 100.0
                )
            }
            _ => String::new(),
        };
        format!(
            "[{state}] {bar}{}",
            progress_text(*current, *total, unit.as_deref(), message.as_deref())
        )
    }

    /// Ends the display (a newline after a live progress line).
    pub fn finish(&mut self) -> std::io::Result<()> {
        if self.drawn {
            let mut out = std::io::stdout().lock();
            writeln!(out)?;
            self.drawn = false;
            out.flush()?;
        }
        Ok(())
    }
}

fn progress_text(
    current: f64,
    total: Option<f64>,
    unit: Option<&str>,
    message: Option<&str>,
) -> String {
    let mut text = match total {
        Some(total) => format!("{current}/{total}"),
        None => format!("{current}"),
    };
    if let Some(unit) = unit {
        text.push(' ');
        text.push_str(unit);
    }
    if let Some(message) = message {
        text.push_str("  ");
        text.push_str(message);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_leave_the_last_column_alone() {
        let rows = [
            ["A".to_owned(), "long value".to_owned(), "x".to_owned()],
            ["bbb".to_owned(), "v".to_owned(), "tail text".to_owned()],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A    long value  x\nbbb  v           tail text\n"
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("team=ml a/b"), "team%3Dml%20a%2Fb");
    }

    #[test]
    fn the_progress_line_has_a_bar() {
        let mut display = Display::with_mode(false, true);
        display.state = Some(JobPhase::Running);
        display.progress = Some((3.0, Some(4.0), Some("steps".to_owned()), None));
        let line = display.status_line();
        assert!(
            line.starts_with("[running] [#######################-------]  75% 3/4 steps"),
            "{line}"
        );
    }
}
