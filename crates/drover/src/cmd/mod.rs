//! One module per subcommand, each with its `Args` and a `run` returning the exit code.

pub mod demo;
pub mod driver;
pub mod driver_check;
pub mod estimate;
pub mod exec;
pub mod fake_vast;
pub mod gpu_check;
pub mod jobs;
pub mod sandbox;
pub mod schemas;
pub mod serve;
pub mod serve_files;
pub mod serve_limits;
pub mod token;
pub mod validate;

use std::process::ExitCode;

use crate::cli::Command;

/// Runs one subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Validate(args) => validate::run(args),
        Command::Schemas(args) => schemas::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Driver(args) => driver::run(args),
        Command::DriverCheck(args) => driver_check::run(args),
        Command::FakeVast(args) => fake_vast::run(args),
        Command::Sandbox(args) => sandbox::run(args),
        Command::Token(args) => token::run(args),
        Command::Jobs(args) => jobs::run(args),
        Command::Estimate(args) => estimate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Demo(args) => demo::run(args),
    }
}
