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
