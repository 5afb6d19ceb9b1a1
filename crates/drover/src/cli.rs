//! Command-line definition. Each subcommand's arguments live next to its implementation in
//! [`crate::cmd`]; this enum only lists them, and [`run`] hands each to its module (here, so
//! that `cmd` does not depend back on the command line it is listed in).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;

/// drover: run untrusted GPU job drivers safely next to money and secrets.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about, long_about = None)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// What `jobs --help` and `estimate --help` say about authentication.
const TOKEN_HELP: &str = "Authentication: the API token is read from the DROVER_TOKEN environment \
variable (never from the command line, so it stays out of shell history and process lists); \
make one with `drover token new`. The server is --url, else DROVER_URL.";

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate one JSON document (a frame, a config, a job) against drover's schemas.
    Validate(cmd::validate::Args),
    /// Write or check the generated JSON Schemas in `schemas/`.
    Schemas(cmd::schemas::Args),
    /// Run a command exactly as a driver is run: privilege drop, then the sandbox.
    Exec(cmd::exec::Args),
    /// Run a driver bundled with drover (`driver container`, `driver example`), as the
    /// supervisor starts it: in the sandbox, with the transport on fd 3.
    Driver(cmd::driver::Args),
    /// The conformance kit: run CMD as a driver and check it against the protocol.
    DriverCheck(cmd::driver_check::Args),
    /// Sandbox features of this kernel (`status`), or a self-report from inside (`probe`).
    Sandbox(cmd::sandbox::Args),
    /// Make API tokens (`token new`): printed once, stored only as a digest.
    Token(cmd::token::Args),
    /// Run the Vast.ai simulator: the real API's routes and shapes, with switchable faults.
    FakeVast(cmd::fake_vast::Args),
    /// Submit, list, show, cancel and follow jobs on a running server.
    #[command(after_help = TOKEN_HELP)]
    Jobs(cmd::jobs::Args),
    /// The whole product in one command: supervisor, token, a GPU job over HTTP, its cost.
    Demo(cmd::demo::Args),
    /// Run the supervisor and its API (embedded default: loopback, SQLite, the simulator).
    Serve(cmd::serve::Args),
    /// A dry-run cost estimate for a job through the server's gate; nothing is rented.
    #[command(after_help = TOKEN_HELP)]
    Estimate(cmd::estimate::Args),
}

/// Runs one subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate(args) => cmd::validate::run(args),
        Command::Schemas(args) => cmd::schemas::run(args),
        Command::Exec(args) => cmd::exec::run(args),
        Command::Driver(args) => cmd::driver::run(args),
        Command::DriverCheck(args) => cmd::driver_check::run(args),
        Command::FakeVast(args) => cmd::fake_vast::run(args),
        Command::Sandbox(args) => cmd::sandbox::run(args),
        Command::Token(args) => cmd::token::run(args),
        Command::Jobs(args) => cmd::jobs::run(args),
        Command::Estimate(args) => cmd::estimate::run(args),
        Command::Serve(args) => cmd::serve::run(args),
        Command::Demo(args) => cmd::demo::run(args),
    }
}
