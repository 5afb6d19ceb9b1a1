//! The `drover` binary: parses the command line and maps the outcome to an exit code. All
//! behaviour lives in the library half of this crate, so tests can call it directly.

#![forbid(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    drover::main()
}
