//! The `drover` command line. Every feature is a subcommand in [`cmd`]; this file only wires
//! them together and turns errors into exit codes.
//!
//! Exit codes, for every subcommand unless its help says otherwise:
//!
//! | Code | Meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the command ran and the answer is "no" (an invalid document, a failed check) |
//! | 2 | the command could not run: bad usage, unreadable input, a start-up failure |

#![forbid(unsafe_code)]

pub mod cli;
pub mod client;
pub mod cmd;
pub mod profile;

use std::process::ExitCode;

use clap::Parser;

/// Exit code of a command that could not run.
pub const EXIT_TROUBLE: u8 = 2;

/// Whether `error` is, anywhere in its chain, a write to a closed pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses `std::env::args`, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli.command) {
        Ok(code) => code,
        // A reader that went away (`drover jobs list | head`) is not a failure: end quietly.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line: "reading x.json: No such file".
            #[allow(clippy::print_stderr)]
            {
                eprintln!("drover: error: {error:#}");
            }
            ExitCode::from(EXIT_TROUBLE)
        }
    }
}
