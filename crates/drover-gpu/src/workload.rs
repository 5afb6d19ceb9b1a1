//! The workload of `drover sandbox gpu-check`: the same small CUDA program inside the sandbox
//! and outside it, so the two runs can be compared.
//!
//! Steps, each timed: load `libcuda.so.1`, `cuInit`, device 0 (the first GPU
//! `CUDA_VISIBLE_DEVICES` leaves visible) and its primary context ("init"); allocate
//! [`WorkloadConfig::elements`] `u32`s on the device and as pinned host memory, filled with
//! `0, 1, 2, ...`; copy host to device [`WorkloadConfig::copy_rounds`] times ("h2d"); load a
//! PTX kernel that adds 1 to every element (JIT-compiled by the driver) and launch it
//! [`WorkloadConfig::kernel_rounds`] times ("kernel": each launch reads and writes the buffer);
//! copy device to host [`WorkloadConfig::copy_rounds`] times ("d2h"); check that every
//! element is its index plus the number of launches.
//!
//! Defaults ([`WorkloadConfig::default`]): 64 Mi elements (256 MiB), 10 copy rounds, 20 kernel
//! rounds, 256 threads per block.
//!
//! A machine without a usable GPU (libcuda cannot be loaded, `cuInit` answers
//! `CUDA_ERROR_NO_DEVICE`, or no device is visible) is [`WorkloadError::NoGpu`]; every other
//! failure names the CUDA call and its error.

use std::time::Instant;

use thiserror::Error;

use crate::cuda::{Cuda, CudaError, LoadError};

/// `CUDA_ERROR_NO_DEVICE`.
const CUDA_ERROR_NO_DEVICE: i32 = 100;

/// The kernel: `p[i] += 1` for every `i < n`, one thread per element.
const INCREMENT_PTX: &std::ffi::CStr = c"
.version 6.0
.target sm_50
.address_size 64

.visible .entry increment(.param .u64 buffer, .param .u32 count)
{
    .reg .pred %beyond;
    .reg .b32 %i, %n, %block, %width, %thread, %value;
    .reg .b64 %base, %offset, %address;

    ld.param.u64 %base, [buffer];
    ld.param.u32 %n, [count];
    mov.u32 %block, %ctaid.x;
    mov.u32 %width, %ntid.x;
    mov.u32 %thread, %tid.x;
    mad.lo.u32 %i, %block, %width, %thread;
    setp.ge.u32 %beyond, %i, %n;
    @%beyond bra END;
    cvta.to.global.u64 %base, %base;
    mul.wide.u32 %offset, %i, 4;
    add.u64 %address, %base, %offset;
    ld.global.u32 %value, [%address];
    add.u32 %value, %value, 1;
    st.global.u32 [%address], %value;
END:
    ret;
}
";

/// Sizes of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadConfig {
    /// `u32` elements in each buffer. Default 64 Mi (256 MiB).
    pub elements: usize,
    /// Rounds of each copy direction. Default 10.
    pub copy_rounds: u32,
    /// Kernel launches. Default 20.
    pub kernel_rounds: u32,
    /// Threads per block. Default 256.
    pub block: u32,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self { elements: 64 << 20, copy_rounds: 10, kernel_rounds: 20, block: 256 }
    }
}

/// What one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadReport {
    /// Devices CUDA saw.
    pub devices: i32,
    /// Device 0's name.
    pub name: String,
    /// Seconds from loading libcuda to a current context.
    pub init_s: f64,
    /// Host-to-device copy rate, GB/s (10^9 bytes).
    pub h2d_gbps: f64,
    /// Device-to-host copy rate, GB/s.
    pub d2h_gbps: f64,
    /// Kernel memory rate (bytes read plus written per second), GB/s.
    pub kernel_gbps: f64,
    /// Seconds for the whole run.
    pub total_s: f64,
}

/// Why the workload did not complete.
#[derive(Debug, Error)]
pub enum WorkloadError {
    /// No usable GPU here: the reason says which step found none.
    #[error("no GPU: {reason}")]
    NoGpu {
        /// Why.
        reason: String,
    },
    /// A CUDA call failed.
    #[error("CUDA {stage}: {detail}")]
    Cuda {
        /// The step (`init`, `alloc`, `h2d`, `kernel`, `d2h`).
        stage: &'static str,
        /// The call, its code and name.
        detail: String,
        /// The `CUresult`.
        code: i32,
    },
    /// The result is wrong.
    #[error("verification failed at element {index}: expected {expected}, found {found}")]
    Verify {
        /// The first wrong element.
        index: usize,
        /// What it should be.
        expected: u32,
        /// What it is.
        found: u32,
    },
}

impl WorkloadError {
    /// The stage name for reports (`no_gpu`, a CUDA stage, or `verify`).
    pub fn stage(&self) -> &'static str {
        match self {
            WorkloadError::NoGpu { .. } => "no_gpu",
            WorkloadError::Cuda { stage, .. } => stage,
            WorkloadError::Verify { .. } => "verify",
        }
    }
}

fn at(stage: &'static str) -> impl Fn(CudaError) -> WorkloadError {
    move |e| WorkloadError::Cuda { stage, code: e.code, detail: e.to_string() }
}

/// Runs the workload on this thread.
// Element indices become u32 values wrapping at 2^32, as the kernel's arithmetic does.
#[allow(clippy::cast_possible_truncation)]
pub fn run(config: &WorkloadConfig) -> Result<WorkloadReport, WorkloadError> {
    let start = Instant::now();
    let cuda = Cuda::load().map_err(|e| match e {
        LoadError::Open(_) => WorkloadError::NoGpu { reason: e.to_string() },
        LoadError::Symbol(_) => {
            WorkloadError::Cuda { stage: "init", code: -1, detail: e.to_string() }
        }
    })?;
    match cuda.init() {
        Err(e) if e.code == CUDA_ERROR_NO_DEVICE => {
            return Err(WorkloadError::NoGpu { reason: e.to_string() });
        }
        other => other.map_err(at("init"))?,
    }
    let devices = cuda.device_count().map_err(at("init"))?;
    if devices == 0 {
        return Err(WorkloadError::NoGpu { reason: "cuDeviceGetCount found 0 devices".into() });
    }
    let (device, name) = cuda.device(0).map_err(at("init"))?;
    let context = cuda.context(device).map_err(at("init"))?;
    let init_s = start.elapsed().as_secs_f64();

    let n = config.elements;
    let bytes = (n * 4) as f64;
    let on_device = context.device_buffer(n).map_err(at("alloc"))?;
    let mut host = context.pinned_buffer(n).map_err(at("alloc"))?;
    for (i, value) in host.as_mut_slice().iter_mut().enumerate() {
        // Wrapping on purpose: the kernel's add.u32 wraps the same way.
        *value = i as u32;
    }

    let t = Instant::now();
    for _ in 0..config.copy_rounds {
        context.copy_to_device(&host, &on_device).map_err(at("h2d"))?;
    }
    context.synchronize().map_err(at("h2d"))?;
    let h2d_gbps = rate(bytes * f64::from(config.copy_rounds), t);

    let module = context.load_ptx(INCREMENT_PTX).map_err(at("kernel"))?;
    let increment = module.function(c"increment").map_err(at("kernel"))?;
    let t = Instant::now();
    for _ in 0..config.kernel_rounds {
        context.launch_over(&increment, &on_device, config.block).map_err(at("kernel"))?;
    }
    context.synchronize().map_err(at("kernel"))?;
    let kernel_gbps = rate(2.0 * bytes * f64::from(config.kernel_rounds), t);

    let t = Instant::now();
    for _ in 0..config.copy_rounds {
        context.copy_to_host(&on_device, &mut host).map_err(at("d2h"))?;
    }
    context.synchronize().map_err(at("d2h"))?;
    let d2h_gbps = rate(bytes * f64::from(config.copy_rounds), t);

    verify(host.as_slice(), config.kernel_rounds)?;
    Ok(WorkloadReport {
        devices,
        name,
        init_s,
        h2d_gbps,
        d2h_gbps,
        kernel_gbps,
        total_s: start.elapsed().as_secs_f64(),
    })
}

fn rate(bytes: f64, since: Instant) -> f64 {
    bytes / since.elapsed().as_secs_f64().max(1e-9) / 1e9
}

/// Every element must be its index plus `launches` (wrapping, as the kernel's `add.u32`).
#[allow(clippy::cast_possible_truncation)]
fn verify(values: &[u32], launches: u32) -> Result<(), WorkloadError> {
    for (index, &found) in values.iter().enumerate() {
        let expected = (index as u32).wrapping_add(launches);
        if found != expected {
            return Err(WorkloadError::Verify { index, expected, found });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_finds_the_first_wrong_element() {
        assert!(verify(&[3, 4, 5], 3).is_ok());
        let err = verify(&[3, 4, 9], 3).unwrap_err();
        assert!(matches!(err, WorkloadError::Verify { index: 2, expected: 5, found: 9 }));
        assert_eq!(err.stage(), "verify");
    }

    #[test]
    fn the_kernel_text_declares_the_parameters_launch_over_passes() {
        let ptx = INCREMENT_PTX.to_str().unwrap();
        assert!(ptx.contains(".entry increment(.param .u64 buffer, .param .u32 count)"));
    }

    /// Where the machine has no GPU (CI), the workload says so instead of failing; where it
    /// has one, it runs and checks every element.
    #[test]
    fn runs_where_a_gpu_exists_and_says_no_gpu_elsewhere() {
        let small =
            WorkloadConfig { elements: 1 << 20, copy_rounds: 2, kernel_rounds: 3, block: 128 };
        match run(&small) {
            Ok(report) => {
                assert!(report.devices >= 1 && !report.name.is_empty());
                assert!(report.h2d_gbps > 0.0 && report.d2h_gbps > 0.0 && report.kernel_gbps > 0.0);
            }
            Err(WorkloadError::NoGpu { reason }) => {
                let no_driver = Cuda::load().is_err();
                assert!(!no_driver || reason.contains("libcuda.so.1"), "{reason}");
            }
            Err(other) => panic!("the workload failed on a machine with a GPU: {other}"),
        }
    }
}
