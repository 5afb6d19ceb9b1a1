//! `drover driver <NAME>`: runs a driver bundled with drover. The supervisor starts bundled
//! drivers as this same binary, re-executed into the sandbox with the transport at fd 3; run
//! by hand, a driver says that it was not started by drover and exits 1.
//!
//! | Name | What it is |
//! |---|---|
//! | `container` | runs an image with a command on a rented GPU instance, through the supervisor's gated provisioner (see [`container`]) |
//! | `example` | the reference Rust driver, written with `drover-driver`: `echo`, `sleep` (progress, logs, cancel) and `rent` (a GPU lease: acquire, status, logs, release); see [`example`] |
//!
//! A new bundled driver is one variant of [`DriverName`] and one module under `driver/`.
//! Exit status: 0 after `shutdown` or the end of the transport, 1 on any error (printed on
//! stderr).

pub mod container;
pub mod example;

use std::process::ExitCode;

/// Arguments of `drover driver`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which bundled driver to run.
    #[arg(value_enum)]
    pub name: DriverName,
}

/// The drivers bundled with drover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum DriverName {
    /// Runs a container image with a command on a rented GPU (`run`).
    Container,
    /// The reference Rust driver (`echo`, `sleep`, `rent`).
    Example,
}

/// Runs `drover driver`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    Ok(match args.name {
        DriverName::Container => drover_driver::main(container::Container),
        DriverName::Example => drover_driver::main(example::Example),
    })
}
