//! Taking over a descriptor this process inherited (a driver's transport socket at fd 3).
//!
//! The step itself, and its `unsafe`, live in `drover-sys` ([`drover_sys::fd`]), a tiny crate
//! that the driver SDK links without pulling in this sandbox; this module re-exports it so
//! that `drover_sandbox::inherit::adopt_socket` keeps working. The checks are the same:
//! a descriptor above 2, open, a socket, adopted at most once per process.

pub use drover_sys::fd::{AdoptError, adopt_socket};
