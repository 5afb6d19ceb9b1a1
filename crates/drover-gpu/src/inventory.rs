//! The local NVIDIA GPUs, found once when the supervisor starts.
//!
//! The source is `nvidia-smi --query-gpu=index,uuid,name,pci.bus_id --format=csv,noheader`
//! (found on the supervisor's `PATH`), then each GPU's device minor, the `N` of `/dev/nvidiaN`,
//! from the `Device Minor:` line of `/proc/driver/nvidia/gpus/<bus id>/information`. The minor
//! is not the nvidia-smi index: the index follows PCI bus order, the minor is whatever the
//! kernel module assigned, and only the minor names the device node.
//!
//! Why nvidia-smi and not NVML through `dlopen`: the inventory needs four fields once per
//! start, and `--query-gpu` with `--format=csv` is NVIDIA's documented interface for scripts,
//! installed with every driver; NVML would mean a second block of `unsafe` FFI against
//! versioned structs and entry points (`nvmlInit_v2`, `nvmlDeviceGetHandleByIndex_v2`, ...)
//! loaded into the supervisor's own address space, for the same four fields. The cost is one
//! process at start-up (only when some driver names `gpus`, or for `drover sandbox status`
//! and `gpu-check`), bounded by a timeout. The choice also makes the source injectable in tests
//! with no test-only code path: a fake `nvidia-smi` script earlier on `PATH`.
//!
//! Defaults ([`Roots::system`]):
//!
//! | Setting | Default |
//! |---|---|
//! | `nvidia-smi` | the first on the supervisor's `PATH` |
//! | timeout | 30 s ([`TIMEOUT`]); then the process is killed and the inventory fails |
//! | device nodes | `/dev` |
//! | information files | `/proc/driver/nvidia/gpus` |
//! | PCI device directories | `/sys/bus/pci/devices` |
//!
//! **Test-only:** the environment variable [`TEST_ROOT_ENV`] (`DROVER_GPU_TEST_ROOT=DIR`) moves
//! all three directories under `DIR` (`DIR/dev`, `DIR/proc/driver/nvidia/gpus`,
//! `DIR/sys/bus/pci/devices`) so that tests can use fake device nodes. It exists for tests on
//! machines without GPUs and must never be set in production; `drover serve` logs a warning
//! when it is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drover_proto::api::GpuHeld;
use drover_proto::config::GpuUuid;
use thiserror::Error;

/// How long `nvidia-smi` may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The test-only environment variable that moves the device, information and PCI directories
/// under one directory (see the [module docs](self)).
pub const TEST_ROOT_ENV: &str = "DROVER_GPU_TEST_ROOT";

/// The query `nvidia-smi` runs.
pub const QUERY: [&str; 2] = ["--query-gpu=index,uuid,name,pci.bus_id", "--format=csv,noheader"];

/// Where the inventory looks for device nodes, information files and PCI directories.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    /// Directory of the `nvidia*` device nodes.
    pub dev: PathBuf,
    /// Directory of the per-GPU `<bus id>/information` files.
    pub proc_gpus: PathBuf,
    /// Directory of the PCI device links (`<bus id>` -> `/sys/devices/pci...`).
    pub sys_pci: PathBuf,
}

impl Roots {
    /// The real system's directories.
    pub fn system() -> Roots {
        Roots::under(Path::new("/"))
    }

    /// The same layout under `root` (tests).
    pub fn under(root: &Path) -> Roots {
        Roots {
            dev: root.join("dev"),
            proc_gpus: root.join("proc/driver/nvidia/gpus"),
            sys_pci: root.join("sys/bus/pci/devices"),
        }
    }

    /// [`Roots::system`], or the test root from [`TEST_ROOT_ENV`] when it is set.
    pub fn from_env() -> Roots {
        match std::env::var_os(TEST_ROOT_ENV) {
            Some(root) if !root.is_empty() => Roots::under(Path::new(&root)),
            _ => Roots::system(),
        }
    }

    /// Whether these are not the system's directories (the test root is in use).
    pub fn is_test_root(&self) -> bool {
        *self != Roots::system()
    }
}

/// One local GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gpu {
    /// Its nvidia-smi index (PCI bus order).
    pub index: u32,
    /// Its UUID.
    pub uuid: GpuUuid,
    /// Its model name.
    pub name: String,
    /// Its PCI bus id as nvidia-smi prints it (`00000000:19:00.0`).
    pub pci_bus_id: String,
    /// The minor number of its device node, `/dev/nvidia<minor>`.
    pub minor: u32,
}

impl Gpu {
    /// The GPU as `GET /v1/drivers` shows it.
    pub fn held(&self) -> GpuHeld {
        GpuHeld {
            index: self.index,
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            pci_bus_id: self.pci_bus_id.clone(),
        }
    }

    /// One line for people: `0 NVIDIA H200 GPU-... 00000000:19:00.0 (/dev/nvidia0)`.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {} (/dev/nvidia{})",
            self.index, self.name, self.uuid, self.pci_bus_id, self.minor
        )
    }
}

/// The GPUs found, and where their nodes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inventory {
    /// Every GPU, in nvidia-smi order.
    pub gpus: Vec<Gpu>,
    /// Where the inventory looked.
    pub roots: Roots,
}

/// Why the inventory failed.
#[derive(Debug, Error)]
pub enum InventoryError {
    /// There is no `nvidia-smi` on `PATH`: no NVIDIA driver is installed, or not visible here.
    #[error("nvidia-smi is not on PATH (no NVIDIA driver here)")]
    NoNvidiaSmi,
    /// `nvidia-smi` could not be started.
    #[error("cannot run nvidia-smi")]
    Run(#[source] std::io::Error),
    /// `nvidia-smi` did not finish in time and was killed.
    #[error("nvidia-smi did not answer within {} s", .0.as_secs())]
    Timeout(Duration),
    /// `nvidia-smi` failed (it says "No devices were found" and exits 6 on a machine whose
    /// driver sees no GPU).
    #[error("nvidia-smi failed ({status}): {message}")]
    Failed {
        /// Its exit status.
        status: String,
        /// The first line of its output, at most 200 characters.
        message: String,
    },
    /// A line of its output is not `index, uuid, name, bus id`.
    #[error("nvidia-smi output line {line} is not 'index, uuid, name, pci.bus_id': {reason}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A GPU's device minor could not be read.
    #[error("cannot read the device minor of GPU {index} ({bus}) from {}: {reason}", file.display())]
    Minor {
        /// The GPU's index.
        index: u32,
        /// Its bus id.
        bus: String,
        /// The information file.
        file: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A GPU's device node does not exist.
    #[error("GPU {index} has no device node {}", path.display())]
    NoNode {
        /// The GPU's index.
        index: u32,
        /// The missing node.
        path: PathBuf,
    },
}

impl Inventory {
    /// Runs `nvidia-smi` (from `PATH`) and reads the device minors under `roots`.
    pub fn detect(roots: Roots) -> Result<Inventory, InventoryError> {
        let mut child = Command::new("nvidia-smi")
            .args(QUERY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => InventoryError::NoNvidiaSmi,
                _ => InventoryError::Run(e),
            })?;
        // The output is a line per GPU, far below a pipe's capacity, so waiting before
        // reading cannot block the child. Polled rather than waited for with a SIGCHLD
        // handler: this runs inside the supervisor, whose signal handling is not ours to touch.
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(InventoryError::Run)? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(InventoryError::Timeout(TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let output = child.wait_with_output().map_err(InventoryError::Run)?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stdout.lines().chain(stderr.lines()).find(|l| !l.trim().is_empty());
            return Err(InventoryError::Failed {
                status: status.to_string(),
                message: first.unwrap_or("no output").trim().chars().take(200).collect(),
            });
        }
        Inventory::from_query(&stdout, roots)
    }

    /// The inventory from `nvidia-smi`'s query output, with minors and nodes under `roots`.
    pub fn from_query(output: &str, roots: Roots) -> Result<Inventory, InventoryError> {
        let mut gpus = Vec::new();
        for (number, line) in output.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let (index, uuid, name, pci_bus_id) = parse_line(line)
                .map_err(|reason| InventoryError::Parse { line: number + 1, reason })?;
            let bus = proc_bus_id(&pci_bus_id);
            let file = roots.proc_gpus.join(&bus).join("information");
            let minor = read_minor(&file).map_err(|reason| InventoryError::Minor {
                index,
                bus: pci_bus_id.clone(),
                file: file.clone(),
                reason,
            })?;
            let node = roots.dev.join(format!("nvidia{minor}"));
            if !node.exists() {
                return Err(InventoryError::NoNode { index, path: node });
            }
            gpus.push(Gpu { index, uuid, name, pci_bus_id, minor });
        }
        Ok(Inventory { gpus, roots })
    }

    /// The device node of `gpu`.
    pub fn node(&self, gpu: &Gpu) -> PathBuf {
        self.roots.dev.join(format!("nvidia{}", gpu.minor))
    }

    /// The `/sys` directory of `gpu`'s PCI device (the target of its `/sys/bus/pci/devices`
    /// link), if it exists.
    pub fn pci_dir(&self, gpu: &Gpu) -> Option<PathBuf> {
        std::fs::canonicalize(self.roots.sys_pci.join(proc_bus_id(&gpu.pci_bus_id))).ok()
    }
}

fn parse_line(line: &str) -> Result<(u32, GpuUuid, String, String), String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [index, uuid, name, bus] = fields.as_slice() else {
        return Err(format!("{} fields instead of 4", fields.len()));
    };
    let index = index.parse::<u32>().map_err(|_| "the index is not a number".to_owned())?;
    let uuid = GpuUuid::new(*uuid).map_err(|e| e.to_string())?;
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err("the name is empty, longer than 128 bytes or has control characters".into());
    }
    if !is_bus_id(bus) {
        return Err("the PCI bus id is not DOMAIN:BUS:DEVICE.FUNCTION".into());
    }
    Ok((index, uuid, (*name).to_owned(), (*bus).to_owned()))
}

/// `00000000:19:00.0` (nvidia-smi) -> `0000:19:00.0` (procfs and sysfs: 4-digit domain,
/// lowercase).
fn proc_bus_id(bus: &str) -> String {
    let (domain, rest) = bus.split_once(':').unwrap_or(("0", bus));
    let domain = u32::from_str_radix(domain, 16).unwrap_or(0);
    format!("{domain:04x}:{}", rest.to_ascii_lowercase())
}

fn is_bus_id(bus: &str) -> bool {
    let hex = |s: &str, min: usize, max: usize| {
        (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
    };
    let parts: Vec<&str> = bus.split(':').collect();
    let [domain, bus, device_function] = parts.as_slice() else { return false };
    let Some((device, function)) = device_function.split_once('.') else { return false };
    hex(domain, 4, 8)
        && hex(bus, 2, 2)
        && hex(device, 2, 2)
        && function.len() == 1
        && function.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

fn read_minor(file: &Path) -> Result<u32, String> {
    let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("Device Minor:"))
        .ok_or("no 'Device Minor:' line")?;
    value.trim().parse().map_err(|_| "'Device Minor:' is not a number".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake machine: `information` files and device nodes (regular files stand in for
    /// them here; the sandbox tests of the `drover` crate use real character devices).
    pub(crate) fn fake(root: &Path, gpus: &[(u32, &str, &str, u32)]) -> String {
        let roots = Roots::under(root);
        std::fs::create_dir_all(&roots.dev).unwrap();
        let mut query = String::new();
        for (index, uuid, bus, minor) in gpus {
            let dir = roots.proc_gpus.join(proc_bus_id(bus));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join("information"),
                format!("Model: \t\t NVIDIA H200\nDevice Minor: \t {minor}\nGPU Excluded: \t No\n"),
            )
            .unwrap();
            std::fs::write(roots.dev.join(format!("nvidia{minor}")), "").unwrap();
            query.push_str(&format!("{index}, {uuid}, NVIDIA H200, {bus}\n"));
        }
        query
    }

    #[test]
    fn the_minor_comes_from_the_information_file_not_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let query = fake(
            dir.path(),
            &[
                (0, "GPU-aaaa-0001", "00000000:19:00.0", 3),
                (1, "GPU-bbbb-0002", "00000000:3B:00.0", 0),
            ],
        );
        let inventory = Inventory::from_query(&query, Roots::under(dir.path())).unwrap();
        assert_eq!(inventory.gpus.len(), 2);
        let second = &inventory.gpus[1];
        assert_eq!((second.index, second.minor), (1, 0));
        assert_eq!(second.uuid.as_str(), "GPU-bbbb-0002");
        assert_eq!(second.pci_bus_id, "00000000:3B:00.0");
        assert_eq!(inventory.node(&inventory.gpus[0]), dir.path().join("dev/nvidia3"));
        assert_eq!(proc_bus_id("00000000:3B:00.0"), "0000:3b:00.0");
    }

    #[test]
    fn bad_output_and_missing_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let roots = Roots::under(dir.path());
        let err = Inventory::from_query("0, GPU-aa, H200\n", roots.clone()).unwrap_err();
        assert!(err.to_string().contains("line 1") && err.to_string().contains("3 fields"));
        let err = Inventory::from_query("x, GPU-aa, H200, 0000:01:00.0\n", roots.clone());
        assert!(err.unwrap_err().to_string().contains("index"));
        let err = Inventory::from_query("0, nope, H200, 0000:01:00.0\n", roots.clone());
        assert!(err.unwrap_err().to_string().contains("GPU-"));
        let err = Inventory::from_query("0, GPU-aa, H200, 01:00.0\n", roots.clone());
        assert!(err.unwrap_err().to_string().contains("bus id"));
        let err =
            Inventory::from_query("\n0, GPU-aa, H200, 0000:01:00.0\n", roots.clone()).unwrap_err();
        let InventoryError::Minor { index: 0, file, .. } = &err else { panic!("{err}") };
        assert!(file.ends_with("proc/driver/nvidia/gpus/0000:01:00.0/information"), "{err}");

        // The information file is there but the node is not.
        let query = fake(dir.path(), &[(0, "GPU-aa", "0000:01:00.0", 7)]);
        std::fs::remove_file(roots.dev.join("nvidia7")).unwrap();
        let err = Inventory::from_query(&query, roots).unwrap_err();
        assert!(matches!(err, InventoryError::NoNode { index: 0, .. }), "{err}");
        assert!(err.to_string().contains("nvidia7"));
    }

    #[test]
    fn an_empty_answer_is_an_empty_inventory() {
        let inventory = Inventory::from_query("", Roots::under(Path::new("/nonexistent")));
        assert!(inventory.unwrap().gpus.is_empty());
        assert!(Roots::under(Path::new("/t")).is_test_root());
        assert!(!Roots::system().is_test_root());
    }
}
