//! The device set a driver holds: which GPUs, and what that grants in its sandbox.
//!
//! [`DeviceSet::select`] resolves a driver's `gpus` (`"all"`, indices, UUIDs) against the
//! [`Inventory`]; a GPU that is not there is refused by name. [`DeviceSet::apply`] then
//! rewrites the driver's [`Policy`]:
//!
//! - every NVIDIA node the profile lists (`/dev/nvidia*`, `/dev/nvidiactl`, `/dev/nvidia-caps/*`,
//!   ...) is removed: a profile says that a driver *may* use NVIDIA GPUs, the set says which;
//! - the set's nodes are granted as devices (read, write and, with Landlock ABI >= 5, `ioctl`
//!   on those files only): `/dev/nvidia<minor>` of each selected GPU, plus `nvidiactl`,
//!   `nvidia-uvm`, `nvidia-uvm-tools`, `nvidia-modeset` and `nvidia-caps/*` where they exist.
//!   With no GPU selected (a driver without `gpus`), no NVIDIA node at all;
//! - each selected GPU's PCI directory under `/sys/devices` (the target of its
//!   `/sys/bus/pci/devices/<bus id>` link, which CUDA and NVML read) is granted read-only;
//! - `CUDA_VISIBLE_DEVICES` and `NVIDIA_VISIBLE_DEVICES` are set to the selected GPUs' UUIDs,
//!   in the order the configuration lists them (replacing any value the profile set). UUIDs and
//!   not indices: when only some `/dev/nvidiaN` exist for a process, CUDA numbers the GPUs it
//!   can open from 0, so a host index would name the wrong GPU or none; a UUID is the same
//!   everywhere.
//!
//! The nodes are paths of [`Inventory::roots`] (`/dev` outside tests), handed to the sandbox
//! as [`Policy::devices`]; the sandbox decides how they become reachable (Landlock rules on
//! exactly these files, and, in a private mount tree, binds of exactly these nodes).

use std::path::{Path, PathBuf};

use drover_proto::config::{GpuRef, GpuSelection};
use drover_sandbox::Policy;
use thiserror::Error;

use crate::inventory::{Gpu, Inventory};

/// The NVIDIA nodes besides the per-GPU ones, granted with any GPU when they exist.
pub const CONTROL_NODES: [&str; 4] =
    ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"];

/// The environment variables the set writes.
pub const VISIBLE_ENV: [&str; 2] = ["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];

/// Why a driver's `gpus` cannot be granted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SelectError {
    /// A listed GPU is not on this machine.
    #[error("{wanted} is not on this machine (found: {found})")]
    Missing {
        /// The GPU as configured (`GPU 3`, `GPU GPU-...`).
        wanted: String,
        /// What the inventory found, as `index uuid` pairs, or `none`.
        found: String,
    },
    /// A GPU is listed twice (by index and UUID, or twice by either).
    #[error("{wanted} is listed twice")]
    Duplicate {
        /// The GPU as configured.
        wanted: String,
    },
    /// `"all"`, but the machine has no GPU.
    #[error("gpus = \"all\" but no GPU was found")]
    NoneFound,
}

/// Why a driver's `gpus` cannot be granted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GrantError {
    /// A GPU is missing, repeated, or there is none for `"all"`.
    #[error("gpus: {0}")]
    Select(#[from] SelectError),
    /// The driver names GPUs but its profile is not a GPU profile.
    #[error(
        "gpus is set but the driver's profile grants no NVIDIA device (use sandbox/gpu.toml or a profile that includes it)"
    )]
    NotAGpuProfile,
}

/// The GPUs one driver holds and what they grant.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSet {
    /// The selected GPUs, in configuration order.
    pub gpus: Vec<Gpu>,
    /// Device nodes to grant.
    pub devices: Vec<PathBuf>,
    /// `/sys` directories to grant read-only.
    pub read: Vec<PathBuf>,
    /// Environment variables to set.
    pub env: Vec<(String, String)>,
}

impl DeviceSet {
    /// No GPU: applying it removes every NVIDIA node from a policy.
    pub fn none() -> DeviceSet {
        DeviceSet::default()
    }

    /// The set for `selection` on the machine `inventory` describes.
    pub fn select(
        inventory: &Inventory,
        selection: &GpuSelection,
    ) -> Result<DeviceSet, SelectError> {
        let gpus: Vec<Gpu> = match selection {
            GpuSelection::All(_) if inventory.gpus.is_empty() => {
                return Err(SelectError::NoneFound);
            }
            GpuSelection::All(_) => inventory.gpus.clone(),
            GpuSelection::Listed(wanted) => {
                let mut gpus: Vec<Gpu> = Vec::with_capacity(wanted.len());
                for reference in wanted {
                    let gpu = inventory
                        .gpus
                        .iter()
                        .find(|gpu| match reference {
                            GpuRef::Index(index) => gpu.index == *index,
                            GpuRef::Uuid(uuid) => {
                                gpu.uuid.as_str().eq_ignore_ascii_case(uuid.as_str())
                            }
                        })
                        .ok_or_else(|| SelectError::Missing {
                            wanted: reference.to_string(),
                            found: found(inventory),
                        })?;
                    if gpus.iter().any(|held| held.index == gpu.index) {
                        return Err(SelectError::Duplicate { wanted: reference.to_string() });
                    }
                    gpus.push(gpu.clone());
                }
                gpus
            }
        };
        if gpus.is_empty() {
            // `gpus = []`: nothing, not even the control nodes.
            return Ok(DeviceSet::none());
        }
        let mut devices: Vec<PathBuf> = gpus.iter().map(|gpu| inventory.node(gpu)).collect();
        let dev = &inventory.roots.dev;
        devices.extend(CONTROL_NODES.iter().map(|name| dev.join(name)).filter(|p| p.exists()));
        devices.extend(drover_sandbox::spawn::expand_device(&dev.join("nvidia-caps/nvidia-cap*")));
        let read = gpus.iter().filter_map(|gpu| inventory.pci_dir(gpu)).collect();
        let uuids = gpus.iter().map(|gpu| gpu.uuid.as_str()).collect::<Vec<_>>().join(",");
        let env = VISIBLE_ENV.iter().map(|key| ((*key).to_owned(), uuids.clone())).collect();
        Ok(DeviceSet { gpus, devices, read, env })
    }

    /// The set of a driver whose configuration says `selection` (`None`: no GPU) and whose
    /// profile became `policy`.
    pub fn for_driver(
        selection: Option<&GpuSelection>,
        inventory: &Inventory,
        policy: &Policy,
    ) -> Result<DeviceSet, GrantError> {
        match selection {
            None => Ok(DeviceSet::none()),
            Some(_) if !grants_nvidia(policy) => Err(GrantError::NotAGpuProfile),
            Some(selection) => Ok(DeviceSet::select(inventory, selection)?),
        }
    }

    /// Rewrites `policy` as the [module docs](self) say.
    pub fn apply(&self, policy: &mut Policy) {
        policy.devices.retain(|path| !is_nvidia_node(path));
        policy.devices.extend(self.devices.iter().cloned());
        policy.read.extend(self.read.iter().cloned());
        policy.env.retain(|(key, _)| !VISIBLE_ENV.iter().any(|v| key == v));
        if !self.gpus.is_empty() {
            policy.env.extend(self.env.iter().map(|(k, v)| (k.into(), v.into())));
        }
    }
}

/// A selection as the command line gives it: `all`, or a comma-separated list of indices and
/// UUIDs (`0`, `0,2`, `GPU-8f2c...`).
pub fn parse_selection(text: &str) -> Result<GpuSelection, String> {
    if text == "all" {
        return Ok(GpuSelection::All(drover_proto::config::AllGpus::All));
    }
    let mut listed = Vec::new();
    for item in text.split(',').map(str::trim) {
        listed.push(match item.parse::<u32>() {
            Ok(index) => GpuRef::Index(index),
            Err(_) => GpuRef::Uuid(
                drover_proto::config::GpuUuid::new(item)
                    .map_err(|_| "expected all, GPU indices or GPU-... UUIDs".to_owned())?,
            ),
        });
    }
    Ok(GpuSelection::Listed(listed))
}

/// Whether `policy` lists any NVIDIA device node or pattern (a GPU profile).
pub fn grants_nvidia(policy: &Policy) -> bool {
    policy.devices.iter().any(|path| is_nvidia_node(path))
}

/// `nvidia*` file names and anything under an `nvidia-caps` directory.
fn is_nvidia_node(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "nvidia-caps")
        || path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("nvidia"))
}

fn found(inventory: &Inventory) -> String {
    if inventory.gpus.is_empty() {
        return "none".to_owned();
    }
    let gpus: Vec<String> =
        inventory.gpus.iter().map(|gpu| format!("{} {}", gpu.index, gpu.uuid)).collect();
    gpus.join(", ")
}

#[cfg(test)]
mod tests {
    use drover_proto::config::{AllGpus, GpuUuid};

    use super::*;
    use crate::inventory::Roots;

    fn machine(root: &Path) -> Inventory {
        let roots = Roots::under(root);
        std::fs::create_dir_all(&roots.dev).unwrap();
        let mut query = String::new();
        for (index, minor, bus) in [(0, 0, "00000000:19:00.0"), (1, 1, "00000000:3B:00.0")] {
            let dir = roots.proc_gpus.join(format!("0000:{}", &bus[9..]).to_lowercase());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("information"), format!("Device Minor: {minor}\n")).unwrap();
            std::fs::write(roots.dev.join(format!("nvidia{minor}")), "").unwrap();
            query.push_str(&format!("{index}, GPU-{index}{index}aa, NVIDIA H200, {bus}\n"));
        }
        for node in ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
            std::fs::write(roots.dev.join(node), "").unwrap();
        }
        // The first GPU's PCI link, as sysfs has it.
        let target = root.join("sys/devices/pci0000:17/0000:17:00.0/0000:19:00.0");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(&roots.sys_pci).unwrap();
        std::os::unix::fs::symlink(&target, roots.sys_pci.join("0000:19:00.0")).unwrap();
        Inventory::from_query(&query, roots).unwrap()
    }

    #[test]
    fn a_driver_given_gpu_0_gets_only_its_node_the_control_nodes_and_its_uuid() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = machine(dir.path());
        let set =
            DeviceSet::select(&inventory, &GpuSelection::Listed(vec![GpuRef::Index(0)])).unwrap();
        let dev = dir.path().join("dev");
        assert_eq!(
            set.devices,
            ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"].map(|n| dev.join(n))
        );
        let pci = dir.path().join("sys/devices/pci0000:17/0000:17:00.0/0000:19:00.0");
        assert_eq!(set.read, [std::fs::canonicalize(pci).unwrap()]);

        // The profile's patterns are replaced, its other devices and environment kept.
        let mut policy = Policy {
            devices: ["/dev/nvidia*", "/dev/nvidiactl", "/dev/nvidia-caps/*", "/dev/fuse"]
                .map(PathBuf::from)
                .to_vec(),
            env: vec![
                ("CUDA_VISIBLE_DEVICES".into(), "0,1".into()),
                ("PATH".into(), "/bin".into()),
            ],
            ..Policy::default()
        };
        set.apply(&mut policy);
        let mut expected = vec![PathBuf::from("/dev/fuse")];
        expected.extend(set.devices.iter().cloned());
        assert_eq!(policy.devices, expected);
        assert!(!policy.devices.contains(&dev.join("nvidia1")));
        let env: Vec<(String, String)> = policy
            .env
            .iter()
            .map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            env,
            [
                ("PATH", "/bin"),
                ("CUDA_VISIBLE_DEVICES", "GPU-00aa"),
                ("NVIDIA_VISIBLE_DEVICES", "GPU-00aa")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );

        // Without GPUs, no NVIDIA node is left and no visibility variable is set.
        let mut policy = Policy {
            devices: vec![PathBuf::from("/dev/nvidia*"), PathBuf::from("/dev/nvidiactl")],
            ..Policy::default()
        };
        assert!(grants_nvidia(&policy));
        DeviceSet::none().apply(&mut policy);
        assert!(policy.devices.is_empty() && policy.env.is_empty());
        assert!(!grants_nvidia(&policy));
    }

    #[test]
    fn command_line_selections() {
        assert_eq!(parse_selection("all").unwrap(), GpuSelection::All(AllGpus::All));
        assert_eq!(
            parse_selection("1,GPU-11aa").unwrap(),
            GpuSelection::Listed(vec![
                GpuRef::Index(1),
                GpuRef::Uuid(GpuUuid::new("GPU-11aa").unwrap())
            ])
        );
        assert!(parse_selection("first").is_err());
        assert!(parse_selection("").is_err());
    }

    #[test]
    fn by_uuid_in_order_and_all() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = machine(dir.path());
        let uuid = |s: &str| GpuRef::Uuid(GpuUuid::new(s).unwrap());
        let set = DeviceSet::select(
            &inventory,
            &GpuSelection::Listed(vec![uuid("GPU-11aa"), GpuRef::Index(0)]),
        )
        .unwrap();
        assert_eq!(set.gpus.iter().map(|g| g.index).collect::<Vec<_>>(), [1, 0]);
        assert_eq!(set.env[0].1, "GPU-11aa,GPU-00aa");
        let all = DeviceSet::select(&inventory, &GpuSelection::All(AllGpus::All)).unwrap();
        assert_eq!(all.gpus.len(), 2);
        assert!(all.devices.contains(&dir.path().join("dev/nvidia1")));
    }

    #[test]
    fn a_missing_or_repeated_gpu_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = machine(dir.path());
        let err = DeviceSet::select(&inventory, &GpuSelection::Listed(vec![GpuRef::Index(5)]))
            .unwrap_err();
        assert_eq!(err.to_string(), "GPU 5 is not on this machine (found: 0 GPU-00aa, 1 GPU-11aa)");
        let missing = GpuRef::Uuid(GpuUuid::new("GPU-dead-beef").unwrap());
        let err = DeviceSet::select(&inventory, &GpuSelection::Listed(vec![missing])).unwrap_err();
        assert!(err.to_string().starts_with("GPU GPU-dead-beef is not on this machine"), "{err}");
        let twice = GpuSelection::Listed(vec![
            GpuRef::Index(1),
            GpuRef::Uuid(GpuUuid::new("GPU-11aa").unwrap()),
        ]);
        assert_eq!(
            DeviceSet::select(&inventory, &twice).unwrap_err(),
            SelectError::Duplicate { wanted: "GPU GPU-11aa".into() }
        );
        let empty = Inventory { gpus: Vec::new(), roots: Roots::under(dir.path()) };
        let all = GpuSelection::All(AllGpus::All);
        assert_eq!(DeviceSet::select(&empty, &all).unwrap_err(), SelectError::NoneFound);
        let nothing = DeviceSet::select(&inventory, &GpuSelection::Listed(Vec::new())).unwrap();
        assert_eq!(nothing, DeviceSet::none());
        let err = DeviceSet::select(&empty, &GpuSelection::Listed(vec![GpuRef::Index(0)]));
        assert!(err.unwrap_err().to_string().ends_with("(found: none)"));
    }
}
