//! Per-driver resource limits, as `drover serve` guards them at start-up: every driver's
//! `limits.memory_bytes`, `pids` and `cpu_millicores` (the last two on by default) must be
//! enforceable by a cgroup prepared for it (as root, before Phase A; see
//! `drover_sandbox::cgroup`). Where one is not (a non-root start, a missing controller),
//! `serve` refuses to start and names the driver and the limits, unless
//! `supervisor.accept_risks` lists `unenforced_limits`; then each driver process's sandbox
//! reports the degradation, and `/readyz` lists the accepted risk.

use drover_proto::config::{AcceptedRisk, Config, DriverConfig};
use drover_sandbox::Policy;
use drover_sandbox::cgroup::{CgroupLimits, Controller, MemoryParent};

/// `supervisor.accept_risks`, as readiness reports them.
pub fn accepted_risks(config: &Config) -> Vec<String> {
    let risks = &config.supervisor.accept_risks;
    risks
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .map_or_else(|_| format!("{r:?}"), |v| v.as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

/// The limits of `policy` that `cgroups` cannot enforce, by controller name.
pub fn unenforced(policy: &Policy, cgroups: Option<&MemoryParent>) -> Vec<&'static str> {
    let limits = CgroupLimits {
        memory_bytes: policy.limits.memory_bytes,
        pids: policy.limits.pids,
        cpu_millicores: policy.limits.cpu_millicores,
    };
    let available = cgroups.map(MemoryParent::controllers).unwrap_or_default();
    limits
        .controllers()
        .into_iter()
        .filter(|c| !available.contains(c))
        .map(Controller::name)
        .collect()
}

/// Refuses a driver whose limits cannot be enforced, unless the risk is accepted.
pub fn refuse_unenforced(
    driver: &DriverConfig,
    policy: &Policy,
    cgroups: Option<&MemoryParent>,
    config: &Config,
) -> anyhow::Result<()> {
    let missing = unenforced(policy, cgroups);
    if missing.is_empty() {
        return Ok(());
    }
    if config.supervisor.accept_risks.contains(&AcceptedRisk::UnenforcedLimits) {
        tracing::warn!(
            driver = %driver.name,
            unenforced = %missing.join(", "),
            "driver limits not enforced (supervisor.accept_risks lists unenforced_limits)"
        );
        return Ok(());
    }
    anyhow::bail!(
        "driver {:?}: its {} limit cannot be enforced here (no such cgroup was prepared for \
         it: drover serve needs root at start-up and the controllers); one driver could \
         starve the others and the supervisor; refusing to start (list \"unenforced_limits\" \
         in supervisor.accept_risks to run anyway)",
        driver.name.as_str(),
        missing.join(", ")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn without_cgroups_the_default_limits_refuse_the_start_unless_accepted() {
        let mut config: Config =
            toml::from_str("[[drivers]]\nname = \"d1\"\ncommand = [\"/bin/true\"]\n").unwrap();
        let policy = Policy::default();
        let error = refuse_unenforced(&config.drivers[0], &policy, None, &config).unwrap_err();
        let text = error.to_string();
        for part in ["\"d1\"", "pids, cpu", "unenforced_limits"] {
            assert!(text.contains(part), "{part} missing from: {text}");
        }
        config.supervisor.accept_risks.push(AcceptedRisk::UnenforcedLimits);
        refuse_unenforced(&config.drivers[0], &policy, None, &config).unwrap();
    }
}
