//! Loading sandbox profiles (`sandbox/*.toml`) into the sandbox's [`Policy`].
//!
//! Each file goes TOML -> `serde_json::Value` -> the JSON Schema of
//! [`drover_proto::profile::Profile`] (`schemas/sandbox-profile.json`; every violation is
//! reported with its JSON pointer, so the error names the bad field) -> the typed profile.
//! Its `include`s (paths relative to the including file) are loaded the same way and merged
//! beneath it, in order: lists are concatenated (duplicates dropped), tables merged key by key,
//! and the including file's scalars win. Includes nest at most 8 deep and may not form a cycle.
//! Then the defaults documented in [`drover_proto::profile`] fill whatever is still unset.
//!
//! The built-in profiles are the repository's `sandbox/` files, compiled into the binary:
//! `default` (used when no profile is given) and `gpu`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use drover_proto::Violation;
use drover_proto::profile::{Profile, SandboxFeature, SeccompDefaultAction};
use drover_proto::schema::schema_for;
use drover_sandbox::{Feature, Limits, Policy, SeccompDefault, SeccompPolicy};
use drover_transport::SchemaChecker;

/// The `sandbox/` files compiled into the binary, by path relative to `sandbox/`.
pub const BUILTIN: &[(&str, &str)] = &[
    ("default.toml", include_str!("../../../sandbox/default.toml")),
    ("gpu.toml", include_str!("../../../sandbox/gpu.toml")),
    ("seccomp/base.toml", include_str!("../../../sandbox/seccomp/base.toml")),
    ("seccomp/gpu.toml", include_str!("../../../sandbox/seccomp/gpu.toml")),
];

/// Deepest chain of includes.
pub const MAX_INCLUDE_DEPTH: usize = 8;

/// Why a profile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// A file could not be read.
    #[error("cannot read sandbox profile {file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not TOML.
    #[error("sandbox profile {file} is not valid TOML: {reason}")]
    Toml {
        /// The file.
        file: String,
        /// The parser's message.
        reason: String,
    },
    /// A file violates the profile schema.
    #[error("sandbox profile {file} is invalid:{}", list(violations))]
    Invalid {
        /// The file.
        file: String,
        /// Every violation, with its JSON pointer.
        violations: Vec<Violation>,
    },
    /// Includes form a cycle or nest too deep.
    #[error(
        "sandbox profile {file}: includes nest deeper than {MAX_INCLUDE_DEPTH} or form a cycle"
    )]
    Includes {
        /// The file where it was noticed.
        file: String,
    },
}

fn list(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            let at = if v.instance_path.is_empty() { "(document)" } else { &v.instance_path };
            format!("\n  at {at}: {}", v.message)
        })
        .collect()
}

/// Where profile files come from.
#[derive(Clone, Debug)]
enum Origin {
    /// The file system.
    Disk,
    /// [`BUILTIN`].
    Builtin,
}

/// Loads the built-in profile `name` (`default`, `gpu`).
pub fn load_builtin(name: &str) -> Result<Profile, ProfileError> {
    load(&PathBuf::from(format!("{name}.toml")), &Origin::Builtin, 0, &mut Vec::new())
}

/// Loads the profile file at `path` with its includes.
pub fn load_file(path: &Path) -> Result<Profile, ProfileError> {
    load(path, &Origin::Disk, 0, &mut Vec::new())
}

fn load(
    path: &Path,
    origin: &Origin,
    depth: usize,
    stack: &mut Vec<PathBuf>,
) -> Result<Profile, ProfileError> {
    let file = path.display().to_string();
    let key = match origin {
        Origin::Disk => std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
        Origin::Builtin => normalize(path),
    };
    if depth > MAX_INCLUDE_DEPTH || stack.contains(&key) {
        return Err(ProfileError::Includes { file });
    }
    let text = match origin {
        Origin::Disk => std::fs::read_to_string(path)
            .map_err(|source| ProfileError::Read { file: file.clone(), source })?,
        Origin::Builtin => BUILTIN
            .iter()
            .find(|(name, _)| Path::new(name) == key)
            .map(|(_, text)| (*text).to_owned())
            .ok_or_else(|| ProfileError::Read {
                file: format!("built-in {file}"),
                source: std::io::ErrorKind::NotFound.into(),
            })?,
    };
    let profile = match origin {
        Origin::Disk => parse(&file, &text)?,
        // The built-in files are part of the binary and a test validates each against the
        // schema, so only the typed parse (which also refuses unknown fields) runs here: it
        // saves generating and compiling the schema on every start.
        Origin::Builtin => parse_typed(&file, &text)?,
    };
    stack.push(key.clone());
    let dir = key.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut merged = Profile::default();
    for include in &profile.include {
        merged = merge(merged, load(&dir.join(include), origin, depth + 1, stack)?);
    }
    stack.pop();
    Ok(merge(merged, Profile { include: Vec::new(), ..profile }))
}

/// `a/./b/../c` -> `a/c`, without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Parses and validates one profile file (without its includes).
pub fn parse(file: &str, text: &str) -> Result<Profile, ProfileError> {
    let value = to_value(file, text)?;
    if let Err(violations) = checker().check(&value) {
        return Err(ProfileError::Invalid { file: file.to_owned(), violations: violations.list });
    }
    typed(file, value)
}

/// Parses one profile file into the type without the schema check (built-in files only).
fn parse_typed(file: &str, text: &str) -> Result<Profile, ProfileError> {
    typed(file, to_value(file, text)?)
}

fn to_value(file: &str, text: &str) -> Result<serde_json::Value, ProfileError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ProfileError::Toml {
        file: file.to_owned(),
        reason: e.message().to_owned(),
    })?;
    serde_json::to_value(table)
        .map_err(|e| ProfileError::Toml { file: file.to_owned(), reason: e.to_string() })
}

fn typed(file: &str, value: serde_json::Value) -> Result<Profile, ProfileError> {
    serde_json::from_value(value).map_err(|e| ProfileError::Invalid {
        file: file.to_owned(),
        violations: vec![Violation {
            instance_path: String::new(),
            schema_path: String::new(),
            message: format!("does not match the profile type: {e}"),
        }],
    })
}

fn checker() -> &'static SchemaChecker {
    static CHECKER: OnceLock<SchemaChecker> = OnceLock::new();
    CHECKER.get_or_init(|| {
        // Invariant: the schema is generated from the Profile type, and the schema test in
        // drover-proto compiles every generated schema, so this cannot fail at run time.
        #[allow(clippy::expect_used)]
        SchemaChecker::new(&schema_for::<Profile>()).expect("the profile schema compiles")
    })
}

/// `over` merged onto `base`: lists concatenated without duplicates, maps merged, `over`'s
/// scalars win.
pub fn merge(base: Profile, over: Profile) -> Profile {
    fn lists<T: PartialEq>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
        for item in b {
            if !a.contains(&item) {
                a.push(item);
            }
        }
        a
    }
    fn maps<K: Ord, V>(mut a: BTreeMap<K, V>, b: BTreeMap<K, V>) -> BTreeMap<K, V> {
        a.extend(b);
        a
    }
    let filesystem = match (base.filesystem, over.filesystem) {
        (Some(a), Some(b)) => Some(drover_proto::profile::FilesystemProfile {
            read: lists(a.read, b.read),
            write: lists(a.write, b.write),
            devices: lists(a.devices, b.devices),
            work_dir: b.work_dir.or(a.work_dir),
        }),
        (a, b) => b.or(a),
    };
    let limits = match (base.limits, over.limits) {
        (Some(a), Some(b)) => Some(drover_proto::profile::LimitsProfile {
            open_files: b.open_files.or(a.open_files),
            file_size_bytes: b.file_size_bytes.or(a.file_size_bytes),
            cpu_seconds: b.cpu_seconds.or(a.cpu_seconds),
            memory_bytes: b.memory_bytes.or(a.memory_bytes),
            pids: b.pids.or(a.pids),
            cpu_millicores: b.cpu_millicores.or(a.cpu_millicores),
            wall_clock_seconds: b.wall_clock_seconds.or(a.wall_clock_seconds),
            work_dir_bytes: b.work_dir_bytes.or(a.work_dir_bytes),
            work_dir_inodes: b.work_dir_inodes.or(a.work_dir_inodes),
        }),
        (a, b) => b.or(a),
    };
    let seccomp = match (base.seccomp, over.seccomp) {
        (Some(a), Some(b)) => Some(drover_proto::profile::SeccompProfile {
            default_action: b.default_action.or(a.default_action),
            allow: lists(a.allow, b.allow),
            errno: maps(a.errno, b.errno),
        }),
        (a, b) => b.or(a),
    };
    Profile {
        include: Vec::new(),
        description: over.description.or(base.description),
        require: lists(base.require, over.require),
        env: maps(base.env, over.env),
        filesystem,
        limits,
        network: over.network.or(base.network),
        namespaces: over.namespaces.or(base.namespaces),
        seccomp,
    }
}

/// The sandbox policy of a (merged) profile, with defaults applied, and its work directory
/// if it names one.
pub fn to_policy(profile: &Profile) -> (Policy, Option<PathBuf>) {
    let defaults = Policy::default();
    let fs = profile.filesystem.clone().unwrap_or_default();
    let limits = profile.limits.clone().unwrap_or_default();
    let seccomp = profile.seccomp.clone().unwrap_or_default();
    let paths = |v: &[String]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
    let policy = Policy {
        env: profile.env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        read: paths(&fs.read),
        write: paths(&fs.write),
        devices: paths(&fs.devices),
        limits: Limits {
            open_files: limits.open_files.map_or(defaults.limits.open_files, u64::from),
            file_size_bytes: limits.file_size_bytes.unwrap_or(defaults.limits.file_size_bytes),
            cpu_seconds: limits.cpu_seconds.map_or(defaults.limits.cpu_seconds, u64::from),
            memory_bytes: limits.memory_bytes,
            pids: limits.pids.or(defaults.limits.pids),
            cpu_millicores: limits.cpu_millicores.or(defaults.limits.cpu_millicores),
            wall_clock: limits.wall_clock_seconds.map(|s| Duration::from_secs(u64::from(s))),
            work_dir_bytes: limits.work_dir_bytes.unwrap_or(defaults.limits.work_dir_bytes),
            work_dir_inodes: limits
                .work_dir_inodes
                .map_or(defaults.limits.work_dir_inodes, u64::from),
        },
        network: profile.network.unwrap_or(defaults.network),
        namespaces: profile.namespaces.unwrap_or(defaults.namespaces),
        seccomp: SeccompPolicy {
            default_action: match seccomp.default_action {
                None | Some(SeccompDefaultAction::Kill) => SeccompDefault::Kill,
                Some(SeccompDefaultAction::KillProcess) => SeccompDefault::KillProcess,
                Some(SeccompDefaultAction::Log) => SeccompDefault::Log,
            },
            allow: seccomp.allow.clone(),
            errno: seccomp.errno.iter().map(|(k, v)| (k.clone(), v.value())).collect(),
        },
        require: profile
            .require
            .iter()
            .map(|f| match f {
                SandboxFeature::Landlock => Feature::Landlock,
                SandboxFeature::LandlockScoping => Feature::LandlockScoping,
                SandboxFeature::LandlockIoctlDev => Feature::LandlockIoctlDev,
                SandboxFeature::SeccompNotify => Feature::SeccompNotify,
                SandboxFeature::Namespaces => Feature::Namespaces,
                SandboxFeature::MemoryCgroup => Feature::MemoryCgroup,
                SandboxFeature::PrivateTree => Feature::PrivateTree,
            })
            .collect(),
    };
    (policy, fs.work_dir.map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_file_validates_and_the_default_resolves_its_includes() {
        for (name, text) in BUILTIN {
            parse(name, text).unwrap_or_else(|e| panic!("{e}"));
        }
        let profile = load_builtin("default").unwrap();
        let (policy, work_dir) = to_policy(&profile);
        assert_eq!(work_dir, None);
        assert!(!policy.network && policy.namespaces);
        assert!(policy.seccomp.allow.iter().any(|s| s == "execve"));
        assert_eq!(policy.seccomp.errno.get("clone3"), Some(&libc_enosys()));
        assert!(policy.read.contains(&PathBuf::from("/usr")));
        assert!(!policy.seccomp.allow.iter().any(|s| s == "ptrace" || s == "mount"));
        assert_eq!(policy.seccomp.default_action, SeccompDefault::Kill);
        assert_eq!(policy.limits.open_files, 1024);
        assert!(policy.env.iter().all(|(k, _)| k == "PATH" || k == "LANG"));
    }

    fn libc_enosys() -> i32 {
        38
    }

    #[test]
    fn the_gpu_profile_covers_every_documented_nvidia_node_and_extends_the_default() {
        let (policy, _) = to_policy(&load_builtin("gpu").unwrap());
        for node in
            ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset"]
        {
            assert!(policy.devices.contains(&PathBuf::from(node)), "{node}");
        }
        // nvidiaN for every GPU, and the MIG capability nodes, through patterns.
        assert!(policy.devices.contains(&PathBuf::from("/dev/nvidia*")));
        assert!(policy.devices.contains(&PathBuf::from("/dev/nvidia-caps/*")));
        // The default profile's rules are still there, and CUDA's calls are added.
        assert!(policy.read.contains(&PathBuf::from("/usr")));
        for call in ["ioctl", "mmap", "mlockall", "shmget"] {
            assert!(policy.seccomp.allow.iter().any(|s| s == call), "{call}");
        }
        assert!(!policy.network);
        // Device ioctls are limited to the granted nodes: the profile does not run without it.
        assert!(policy.require.contains(&Feature::LandlockIoctlDev));
        for path in ["/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices/system/node"] {
            assert!(policy.read.contains(&PathBuf::from(path)), "{path}");
        }
        // The whole allowlist compiles on this architecture.
        assert!(
            policy
                .seccomp
                .allow
                .iter()
                .all(|s| drover_sandbox::seccomp::syscall_number(s).is_some())
        );
    }

    #[test]
    fn errors_name_the_bad_field_with_its_pointer() {
        let err = parse(
            "bad.toml",
            "[limits]\nopen_files = 3\n[seccomp]\nallow = [\"Read\"]\nbogus = 1\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/limits/open_files"), "{text}");
        assert!(text.contains("/seccomp/allow/0"), "{text}");
        assert!(text.contains("bogus"), "{text}");
        let ProfileError::Invalid { violations, .. } = err else { panic!() };
        assert!(violations.len() >= 3);

        let err = parse("t.toml", "network = \"yes\"\n").unwrap_err();
        assert!(err.to_string().contains("at /network"), "{err}");
        let err = parse("t.toml", "require = [\"telepathy\"]\n").unwrap_err();
        assert!(err.to_string().contains("at /require/0"), "{err}");
        let err = parse("t.toml", "[filesystem]\nread = [\"relative/path\"]\n").unwrap_err();
        assert!(err.to_string().contains("at /filesystem/read/0"), "{err}");
        assert!(matches!(parse("t.toml", "= nope"), Err(ProfileError::Toml { .. })));
    }

    #[test]
    fn includes_merge_beneath_and_cycles_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("base.toml"),
            "network = true\n[env]\nA = \"1\"\nB = \"1\"\n[seccomp]\nallow = [\"read\"]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("top.toml"), "include = [\"base.toml\"]\nnetwork = false\n[env]\nB = \"2\"\n[seccomp]\nallow = [\"write\", \"read\"]\ndefault_action = \"log\"\n").unwrap();
        let profile = load_file(&dir.path().join("top.toml")).unwrap();
        assert_eq!(profile.network, Some(false));
        assert_eq!(profile.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(profile.env.get("B").map(String::as_str), Some("2"));
        let seccomp = profile.seccomp.unwrap();
        assert_eq!(seccomp.allow, ["read", "write"]);
        assert_eq!(seccomp.default_action, Some(SeccompDefaultAction::Log));

        std::fs::write(dir.path().join("a.toml"), "include = [\"b.toml\"]\n").unwrap();
        std::fs::write(dir.path().join("b.toml"), "include = [\"a.toml\"]\n").unwrap();
        assert!(matches!(
            load_file(&dir.path().join("a.toml")),
            Err(ProfileError::Includes { .. })
        ));
        assert!(matches!(
            load_file(&dir.path().join("missing.toml")),
            Err(ProfileError::Read { .. })
        ));
    }
}
