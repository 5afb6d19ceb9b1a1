//! The supervisor's own files, as `drover serve` guards them at start-up (before Phase A):
//!
//! - The data directory (store, SQLite WAL with other tenants' job data) is mode 0700 and,
//!   started as root, owned by the uid drover drops to; nobody else on the host reads it.
//! - No driver may be granted, for reading or writing, a tree that holds the data directory,
//!   by its profile or by `serve` (its program and its scripts' directories; the default
//!   profile grants `/opt`, so `data_dir = "/opt/drover"` would hand every job's data to every
//!   driver): `serve` refuses to start and names the driver, its profile and the data
//!   directory.
//! - Drivers run as the supervisor's own uid, so Landlock is what keeps them out of the data
//!   directory: without it `serve` refuses to start unless `supervisor.accept_risks` lists
//!   `driver_writable_store`.
//!
//! Drivers' work directories are mode 0700 too, and removed whatever the driver did to them
//! (`drover_sandbox::work_dir`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use anyhow::Context as _;
use drover_proto::config::{AcceptedRisk, Config};
use drover_sandbox::Features;

use crate::profile;

/// Mode of the data directory.
pub const DATA_DIR_MODE: u32 = 0o700;

/// Closes the data directory to everyone but its owner.
pub fn close_data_dir(data_dir: &Path) -> anyhow::Result<()> {
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(DATA_DIR_MODE))
        .with_context(|| format!("making the data directory {} private", data_dir.display()))
}

/// Refuses a data directory that lies inside a path some driver's profile grants.
pub fn refuse_granted_data_dir(config: &Config, data_dir: &Path) -> anyhow::Result<()> {
    let data_dir = resolve(data_dir);
    // The bundled driver, when it runs, has the default profile.
    let mut drivers = config.drivers.clone();
    if config.supervisor.bundled_container
        && !drivers.iter().any(|d| d.name.as_str() == "container")
    {
        drivers.push(
            serde_json::from_value(serde_json::json!({"name": "container", "command": ["drover"]}))
                .context("the bundled driver's configuration")?,
        );
    }
    for driver in &drivers {
        let (loaded, profile_name) = match &driver.profile {
            Some(path) => (profile::load_file(Path::new(path))?, path.clone()),
            None => (profile::load_builtin("default")?, "the built-in default profile".to_owned()),
        };
        let (mut policy, work_dir) = profile::to_policy(&loaded);
        // What `serve` grants besides the profile: the program and its scripts' directories.
        let argv: Vec<std::ffi::OsString> = driver.command.iter().map(Into::into).collect();
        policy.read.extend(super::driver_check::read_grants(&argv));
        let grants = (policy.read.iter().map(|p| (p, "read")))
            .chain(policy.write.iter().map(|p| (p, "write")))
            .chain(work_dir.iter().map(|p| (p, "write (its work directory)")));
        for (grant, how) in grants {
            if data_dir.starts_with(resolve(grant)) {
                anyhow::bail!(
                    "supervisor.data_dir {} is inside {}, which driver {:?}'s profile ({}) \
                     grants ({how}): every job's data would be readable by that driver; move \
                     the data directory out of every granted tree (e.g. /var/lib/drover)",
                    data_dir.display(),
                    grant.display(),
                    driver.name.as_str(),
                    profile_name,
                );
            }
        }
    }
    Ok(())
}

/// Refuses to start without Landlock, unless the risk is accepted.
pub fn refuse_writable_store(config: &Config, features: &Features) -> anyhow::Result<()> {
    if let Err(why) = &features.landlock
        && !config.supervisor.accept_risks.contains(&AcceptedRisk::DriverWritableStore)
    {
        anyhow::bail!(
            "Landlock is unavailable ({why}): drivers run as the supervisor's uid and could \
             write its data directory; refusing to start (list \"driver_writable_store\" in \
             supervisor.accept_risks to run anyway)"
        );
    }
    Ok(())
}

/// `path` made absolute with every symbolic link in its existing part resolved, and `.`/`..`
/// of the rest applied, so `/opt/x` and `/srv/../opt/x` and a link to `/opt` compare equal.
fn resolve(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut resolved = real;
            for part in rest.iter().rev() {
                match part {
                    Component::ParentDir => {
                        resolved.pop();
                    }
                    Component::Normal(name) => resolved.push(name),
                    _ => {}
                }
            }
            return resolved;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_do_not_exist_yet_resolve_through_the_links_above_them() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        std::os::unix::fs::symlink(&real, real.join("link")).unwrap();
        assert_eq!(resolve(&real.join("link/new/../data")), real.join("data"));
        assert_eq!(resolve(&real.join("link")), real);
    }

    #[test]
    fn a_data_dir_under_a_granted_tree_names_driver_profile_and_dir() {
        let config: Config =
            toml::from_str("[[drivers]]\nname = \"d1\"\ncommand = [\"/bin/true\"]\n").unwrap();
        let error = refuse_granted_data_dir(&config, Path::new("/opt/drover-data")).unwrap_err();
        let text = error.to_string();
        for part in ["/opt/drover-data", "inside /opt", "\"d1\"", "default profile", "read"] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
        refuse_granted_data_dir(&config, Path::new("/var/lib/drover")).unwrap();
        let mut bundled_only = Config::default();
        bundled_only.supervisor.bundled_container = true;
        let error = refuse_granted_data_dir(&bundled_only, Path::new("/opt/d")).unwrap_err();
        assert!(error.to_string().contains("\"container\""), "{error}");
    }

    #[test]
    fn without_landlock_serve_refuses_unless_the_risk_is_accepted() {
        let mut features = Features::detect();
        features.landlock = Err("the kernel has no Landlock (ENOSYS)".into());
        let mut config = Config::default();
        let error = refuse_writable_store(&config, &features).unwrap_err();
        assert!(error.to_string().contains("driver_writable_store"), "{error}");
        config.supervisor.accept_risks.push(AcceptedRisk::DriverWritableStore);
        refuse_writable_store(&config, &features).unwrap();
    }
}
