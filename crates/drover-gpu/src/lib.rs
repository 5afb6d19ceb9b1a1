//! Local NVIDIA GPUs for sandboxed drivers.
//!
//! - [`inventory`]: which GPUs this machine has (index, UUID, name, PCI bus id, device minor),
//!   found once at supervisor start.
//! - [`devices`]: the device set a driver holds (its `/dev/nvidiaN` nodes plus the control and
//!   unified-memory nodes, its GPUs' `/sys` PCI directories, and `CUDA_VISIBLE_DEVICES` /
//!   `NVIDIA_VISIBLE_DEVICES` by UUID), applied to its sandbox policy.
//! - [`workload`]: the small CUDA driver-API workload of `drover sandbox gpu-check` (init, a
//!   256 MiB allocation, pinned copies both ways, a JIT-compiled PTX kernel, a check of every
//!   element), over the `cuda` module, which loads `libcuda.so.1` with `dlopen`.
//!
//! Architecture invariants: `unsafe` lives only in the private `cuda` module (the FFI to
//! libcuda), each block with a `SAFETY:` comment; everything else here is safe code; nothing
//! loads libcuda except [`workload::run`], so a supervisor that only inventories GPUs never
//! maps the CUDA driver into its own address space.

#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod cuda;
pub mod devices;
pub mod inventory;
pub mod workload;

pub use devices::{DeviceSet, GrantError, SelectError};
pub use inventory::{Gpu, Inventory, InventoryError, Roots};
pub use workload::{WorkloadConfig, WorkloadError, WorkloadReport};
