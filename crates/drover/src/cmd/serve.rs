//! `drover serve [--config FILE] [--listen ADDR] [--development]`: the supervisor with its API.
//!
//! Start-up, in this order (any failure stops it with exit 2):
//!
//! 1. The configuration: `--config FILE` (TOML, every key optional), else every default: API
//!    on `127.0.0.1:8080`, SQLite in `./drover-data` (relative to the working directory), the
//!    embedded Vast.ai simulator. Then the `DROVER_<TABLE>__<KEY>` environment overrides
//!    ([`overrides`]), then the whole schema (`schemas/config.json`), with the errors of
//!    `drover validate --kind config`: a value out of bounds refuses the start, naming its key.
//!    The bundled `container` driver (this same binary, `drover driver container`, in the
//!    default sandbox profile) runs next to the `[[drivers]]` entries unless
//!    `supervisor.bundled_container = false` or an entry is named `container`.
//! 2. **Phase A**, before any thread or async runtime exists: the supervisor's files are
//!    guarded (see [`crate::cmd::serve_files`]: the data directory is refused inside any tree
//!    a driver profile grants, and without Landlock), then, as root, the data directory is
//!    created mode 0700 and given to `supervisor.uid`/`gid` (default 65534), then the process
//!    drops to them; started non-root, it clears what it holds. Either way it verifies that all five
//!    capability sets are empty, no-new-privs is set and it is not dumpable, or refuses to
//!    start.
//! 3. The store (SQLite in the data directory, or `store.url`).
//! 4. The provider: the real Vast.ai when the configuration says `provider.kind = "vastai"`,
//!    which then needs `VASTAI_API_KEY` (without it, the start is refused); otherwise the
//!    embedded simulator (on a loopback port, its clock 10x faster than real time), announced
//!    loudly in the log and in `/readyz`. The deployment id is `supervisor.deployment`, or
//!    the one generated at the first start and kept in the store; this process draws a
//!    replica id and heartbeats into the store (`drover_provision::fleet`). The provisioner's
//!    start-up reaper reconciles the account before anything is rented: instances of this
//!    deployment that no live replica owns are destroyed and their leases settled (a killed
//!    predecessor's once its heartbeat is `supervisor.replica_expiry_s` old, default 30 s);
//!    other deployments' instances are never touched.
//! 5. The supervisor with its drivers, each in its sandbox, renting only through the
//!    provisioner. Each driver may read what its profile grants plus what `drover
//!    driver-check` grants: its program, and the directory of every argument naming a file.
//! 6. The service (jobs a predecessor left `queued` are resumed, `running` ones failed) and
//!    the API. One line on stdout, `drover serve: listening on http://ADDR`, says where
//!    (with `--listen 127.0.0.1:0` the kernel picks the port). SIGHUP reloads the API tokens.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `info`), as text or, with
//! `--log-format json`, one JSON object per line.
//!
//! Shutdown on SIGTERM or SIGINT: new jobs get 503; running jobs are cancelled
//! (`supervisor.on_shutdown = "cancel"`, the default) or allowed to finish (`"drain"`) within
//! `supervisor.shutdown_grace_s` (default 10 s), the rest cancelled after it, so event streams
//! that follow them end; then the listener stops accepting and in-flight requests finish; the
//! drivers get `shutdown` with their grace period, then the stop ladder; every lease this
//! replica still owns is released (destroyed and confirmed gone, cost settled) and the replica
//! leaves the store; then the process exits 0.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use drover_api::{ApiState, Auditor};
use drover_gpu::{DeviceSet, Gpu, Inventory, Roots};
use drover_proto::config::{Config, DriverConfig, ProviderConfig};
use drover_provision::{Clock, Provisioner, ProvisionerConfig, fleet};
use drover_sandbox::{DropConfig, Dropped, LinuxSys, drop_privileges};
use drover_service::{
    ProviderKind, ProvisionerBroker, Service, ServiceConfig, SimulatorLedger, SupervisorRunner,
};
use drover_store::{AnyStore, Store};
use drover_supervisor::{DriverSpec, Options, Supervisor};
use drover_vast::{ApiKey, RetryPolicy, VastClient};
use drover_vast_sim::{SimConfig, Simulator};

use crate::cmd::{serve_files, serve_limits};
use crate::profile;

/// Simulated seconds per real second of the embedded simulator.
pub const SIM_SPEED: f64 = 10.0;

/// Arguments of `drover serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Configuration file (TOML). Default: the embedded configuration.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen here instead of `api.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Development mode (also needs `api.mode = "development"`): error bodies carry details.
    #[arg(long)]
    pub development: bool,
    /// Log line format on stderr; which lines, from `RUST_LOG` (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The local GPUs, inventoried once when some driver names `gpus` (see
/// `drover_gpu::inventory`); `None` when none does.
pub fn gpu_inventory(drivers: &[DriverConfig]) -> anyhow::Result<Option<Inventory>> {
    if drivers.iter().all(|driver| driver.gpus.is_none()) {
        return Ok(None);
    }
    let roots = Roots::from_env();
    if roots.is_test_root() {
        tracing::warn!(
            "{} is set: GPUs are inventoried from {} (a test-only setting)",
            drover_gpu::inventory::TEST_ROOT_ENV,
            roots.dev.display()
        );
    }
    let inventory =
        Inventory::detect(roots).context("inventorying local GPUs (a driver names gpus)")?;
    for gpu in &inventory.gpus {
        tracing::info!(gpu = %gpu.describe(), "local GPU");
    }
    Ok(Some(inventory))
}

/// Gives `driver` its GPUs (none without `gpus`) in `policy`: see `drover_gpu::devices`.
pub fn grant_gpus(
    driver: &DriverConfig,
    policy: &mut drover_sandbox::Policy,
    inventory: Option<&Inventory>,
) -> anyhow::Result<Vec<drover_proto::api::GpuHeld>> {
    let set = match inventory {
        Some(inventory) => DeviceSet::for_driver(driver.gpus.as_ref(), inventory, policy)
            .with_context(|| format!("driver {}", driver.name))?,
        None => DeviceSet::none(),
    };
    if driver.gpus.is_none() && drover_gpu::devices::grants_nvidia(policy) {
        tracing::warn!(
            driver = %driver.name,
            "the profile grants NVIDIA devices but the driver names no gpus: it gets no GPU"
        );
    }
    set.apply(policy);
    Ok(set.gpus.iter().map(Gpu::held).collect())
}

mod logging;
pub mod overrides;
pub use logging::{LogFormat, init_logging_at, init_logging_from_env};

/// Reads the configuration: the file at `path` (none: every default), then the `DROVER_*`
/// environment overrides (see [`overrides`]), then the whole configuration schema, with the
/// same errors as `drover validate --kind config`, each naming the key it is about.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    load_config_with(path, std::env::vars_os())
}

/// [`load_config`] with the environment given.
pub fn load_config_with(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> anyhow::Result<Config> {
    let (name, text) = match path {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => ("the default configuration".to_owned(), String::new()),
    };
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{name} is not valid TOML"))?;
    let applied = overrides::apply(&mut table, env).context("the DROVER_* environment")?;
    let json = serde_json::to_vec(&table).context("the configuration as JSON")?;
    let from = if applied.is_empty() {
        name
    } else {
        format!("{name} with the environment's {}", applied.join(", "))
    };
    if let super::validate::Verdict::Invalid { errors, .. } =
        super::validate::validate(super::validate::Kind::Config, &json)
    {
        let list: Vec<String> = errors
            .iter()
            .map(|e| {
                let at = if e.instance_path.is_empty() { "/" } else { &e.instance_path };
                format!("at {at}: {}", e.message)
            })
            .collect();
        anyhow::bail!("{from} is not a valid configuration: {}", list.join("; "));
    }
    serde_json::from_slice(&json).with_context(|| format!("{from} is not a valid configuration"))
}

/// The bundled `container` driver, as this binary runs it.
pub fn bundled_container(exe: &Path) -> anyhow::Result<DriverConfig> {
    let exe = exe.to_str().context("the drover binary's path is not UTF-8")?.to_owned();
    let config = serde_json::json!({
        "name": "container",
        "command": [exe, "driver", "container"],
    });
    serde_json::from_value(config).context("the bundled driver's configuration")
}

/// What Phase A left: the proof, the configuration, the data directory.
#[derive(Debug)]
pub struct Prepared {
    /// Proof that the process holds no privilege.
    pub dropped: Dropped,
    /// The configuration, with the bundled driver added when it had none.
    pub config: Config,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The drover binary drivers are started from: this binary, or, when the dropped uid
    /// cannot reach it, a copy it can (see [`prepare`]).
    pub exe: PathBuf,
    /// The copy of the binary, removed when this is dropped; `None` when none was needed.
    pub exe_copy: Option<tempfile::TempDir>,
    /// The parent cgroups drivers are limited under (prepared as root); `None` when started
    /// non-root or without cgroup controllers.
    pub cgroups: Option<drover_sandbox::cgroup::MemoryParent>,
}

/// Phase A: the root-only work, then the drop, then the proof. Call before any thread or
/// runtime exists.
///
/// Started as root, the supervisor drops to `supervisor.uid`/`gid` (default 65534), which must
/// be able to reach the data directory: if it cannot (a parent directory such as `/root` is
/// closed to it), start-up fails with a message that names the directory. The bundled drivers
/// are this binary, which that uid must reach too; when it cannot (a checkout under `/root`),
/// the binary is copied, as root, into a fresh directory under the system's temporary
/// directory that the uid owns, drivers run from there, and the copy is removed at exit.
pub fn prepare(mut config: Config) -> anyhow::Result<Prepared> {
    let mut exe = std::env::current_exe().context("finding the drover binary")?;
    let data_dir = PathBuf::from(&config.supervisor.data_dir);
    serve_files::refuse_granted_data_dir(&config, &data_dir)?;
    // Detected uncached: Phase A has not made this process a subreaper yet.
    serve_files::refuse_writable_store(&config, &drover_sandbox::Features::detect())?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    serve_files::close_data_dir(&data_dir)?;
    let root = nix::unistd::geteuid().is_root();
    let mut exe_copy = None;
    let mut cgroups = None;
    let target = if root {
        let (uid, gid) = (config.supervisor.uid, config.supervisor.gid);
        nix::unistd::chown(
            &data_dir,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("giving {} to uid {uid}", data_dir.display()))?;
        let data_dir = std::fs::canonicalize(&data_dir)
            .with_context(|| format!("resolving the data directory {}", data_dir.display()))?;
        if !reachable_by(&data_dir, uid, gid, 0o7) {
            anyhow::bail!(
                "supervisor.data_dir: {} is not reachable by uid {uid} gid {gid}, which drover \
                 drops to (a parent directory is closed to it); choose a data directory that \
                 uid can reach, e.g. under /var/lib or /tmp",
                data_dir.display()
            );
        }
        if !reachable_by(&exe, uid, gid, 0o5) {
            let copy = copy_binary_for(&exe, uid, gid)?;
            exe = copy.path().join("drover");
            exe_copy = Some(copy);
        }
        cgroups = drover_sandbox::cgroup::MemoryParent::prepare_as_root(uid, gid)
            .context("preparing the drivers' cgroups")?;
        DropConfig { uid, gid }
    } else {
        DropConfig { uid: nix::unistd::getuid().as_raw(), gid: nix::unistd::getgid().as_raw() }
    };
    let container_configured = config.drivers.iter().any(|d| d.name.as_str() == "container");
    if config.supervisor.bundled_container && !container_configured {
        config.drivers.push(bundled_container(&exe)?);
    }
    let dropped = drop_privileges(&target, &LinuxSys).context("privilege drop (phase A) failed")?;
    Ok(Prepared { dropped, config, data_dir, exe, exe_copy, cgroups })
}

/// Whether `uid`/`gid` (with no supplementary groups, as after Phase A) may search every
/// directory above `path` and has the `want` permission bits (`0o4` read, `0o2` write, `0o1`
/// execute or search) on `path` itself, by the classic owner/group/other rule.
pub fn reachable_by(path: &Path, uid: u32, gid: u32, want: u32) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let allows = |meta: &std::fs::Metadata, want: u32| {
        let mode = meta.mode();
        let bits = if meta.uid() == uid {
            mode >> 6
        } else if meta.gid() == gid {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    };
    let searchable = path
        .ancestors()
        .skip(1)
        .filter(|dir| !dir.as_os_str().is_empty())
        .all(|dir| std::fs::metadata(dir).is_ok_and(|m| allows(&m, 0o1)));
    searchable && std::fs::metadata(path).is_ok_and(|m| allows(&m, want))
}

/// A copy of `exe` that `uid`/`gid` can execute: a fresh directory under the temporary
/// directory, owned by that uid (so the dropped process can remove it), holding `drover`
/// (mode 0755).
pub(crate) fn copy_binary_for(exe: &Path, uid: u32, gid: u32) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("drover-bin-")
        .tempdir()
        .context("creating a directory for a copy of the drover binary")?;
    let copy = dir.path().join("drover");
    std::fs::copy(exe, &copy).with_context(|| format!("copying {}", exe.display()))?;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .context("making the copy executable")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .context("opening the copy's directory")?;
    for path in [copy.as_path(), dir.path()] {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .with_context(|| format!("giving {} to uid {uid}", path.display()))?;
    }
    anyhow::ensure!(
        reachable_by(&copy, uid, gid, 0o5),
        "{} is not reachable by uid {uid} either; set TMPDIR to a directory it can reach",
        copy.display()
    );
    Ok(dir)
}

/// A running server.
pub struct Running {
    /// Where the API listens.
    pub addr: SocketAddr,
    /// The backend.
    pub service: Arc<Service<AnyStore>>,
    /// The supervisor.
    pub supervisor: Arc<Supervisor>,
    /// The embedded simulator, when it is the provider.
    pub simulator: Option<Arc<Simulator>>,
    /// The API state.
    pub api: Arc<ApiState>,
    listener: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// Starts store, provider, provisioner, supervisor, service and API state, and binds the
/// listener. Runs inside a tokio runtime, after [`prepare`].
pub async fn start(
    prepared: &Prepared,
    listen: Option<SocketAddr>,
    development: bool,
) -> anyhow::Result<Running> {
    let config = &prepared.config;
    if prepared.exe_copy.is_some() {
        tracing::warn!(
            copy = %prepared.exe.display(),
            "the drover binary is not reachable by the uid drover dropped to; drivers run from a copy, removed at exit"
        );
    }
    // SQLite in the data directory by default; `store.url` may name another SQLite file or a
    // PostgreSQL database shared by several replicas (its password never reaches a log).
    let store = AnyStore::from_config(&config.store, &prepared.data_dir)
        .await
        .context("opening the store")?;
    tracing::info!(backend = store.backend(), "store open");

    let key = match ApiKey::from_env() {
        Ok(key) => Some(key),
        Err(drover_vast::secret::ApiKeyError::Missing) => None,
        Err(error) => return Err(error).context("VASTAI_API_KEY"),
    };
    // Everything `/metrics` shows is registered in one registry, handed to the API last.
    let provision_metrics = drover_provision::ProvisionMetrics::default();
    let (client, clock, simulator, kind) = match (&config.provider, key) {
        (ProviderConfig::Vastai { base_url }, Some(key)) => {
            tracing::warn!(%base_url, "provider: the REAL Vast.ai; rentals cost real money");
            let client = VastClient::new(base_url, key, RetryPolicy::default())
                .context("the Vast.ai client")?
                .with_metrics(provision_metrics.provider().clone());
            (client, Clock::system(), None, ProviderKind::Vastai)
        }
        (ProviderConfig::Vastai { .. }, None) => anyhow::bail!(
            "provider.kind is \"vastai\" but VASTAI_API_KEY is not set: refusing to start \
             (set the key, or choose provider.kind = \"simulator\")"
        ),
        (ProviderConfig::Simulator, _) => {
            let clock = Clock::scaled(SIM_SPEED);
            // A fresh random key keeps other local users off the simulator's loopback port.
            let secret = drover_api::token::ApiToken::generate()
                .context("drawing the simulator's key")?
                .sha256_hex();
            let sim_key =
                ApiKey::new(format!("sim-{}", &secret[..32])).context("the simulator's key")?;
            let simulator = Simulator::start(
                "127.0.0.1:0".parse().context("loopback")?,
                SimConfig { api_key: Some(sim_key.clone()), clock, ..SimConfig::default() },
            )
            .await
            .context("starting the embedded simulator")?;
            tracing::warn!(
                "!!! SIMULATOR: the embedded Vast.ai simulator is the provider; nothing real is \
                 rented and nothing is spent (its clock runs {SIM_SPEED}x) !!!"
            );
            let client = VastClient::new(simulator.base_url(), sim_key, RetryPolicy::default())
                .context("the simulator client")?
                .with_metrics(provision_metrics.provider().clone());
            (client, clock, Some(Arc::new(simulator)), ProviderKind::Simulator)
        }
    };
    let deployment =
        fleet::resolve_deployment(&store, config.supervisor.deployment.as_deref()).await?;
    let provisioner_config = ProvisionerConfig {
        gate: config.gate.clone(),
        replica_expiry_s: f64::from(config.supervisor.replica_expiry_s),
        metrics: provision_metrics.clone(),
        ..ProvisionerConfig::new(deployment)
    };
    let provisioner = Arc::new(
        Provisioner::start(client, store.clone(), provisioner_config, clock)
            .await
            .context("starting the provisioner")?,
    );

    let inventory = gpu_inventory(&config.drivers)?;
    let mut specs = Vec::new();
    for driver in &config.drivers {
        let profile = match &driver.profile {
            Some(path) => profile::load_file(Path::new(path))?,
            None => profile::load_builtin("default")?,
        };
        let (mut policy, work_dir) = profile::to_policy(&profile);
        // A bundled driver is this binary: it must be able to execute it.
        if driver.command.first().map(Path::new) == Some(prepared.exe.as_path()) {
            policy.read.push(prepared.exe.clone());
        }
        // The same grants `drover driver-check` makes: the program, and the directory of
        // every argument that names a file (a script and the modules beside it).
        let argv: Vec<std::ffi::OsString> = driver.command.iter().map(Into::into).collect();
        policy.read.extend(super::driver_check::read_grants(&argv));
        let gpus = grant_gpus(driver, &mut policy, inventory.as_ref())?;
        serve_limits::refuse_unenforced(driver, &policy, prepared.cgroups.as_ref(), config)?;
        let mut spec = DriverSpec::new(driver.clone(), policy);
        spec.work_dir = work_dir;
        spec.gpus = gpus;
        specs.push(spec);
    }
    let broker = Arc::new(ProvisionerBroker::new(Arc::clone(&provisioner), store.clone()));
    let mut options = Options::new(prepared.dropped.clone());
    options.cgroups = prepared.cgroups.clone();
    let supervisor = Arc::new(
        Supervisor::start(specs, broker, options).await.context("starting the supervisor")?,
    );

    let webhooks = match drover_api::webhook::WebhookSecret::from_env() {
        Ok(Some(secret)) => Some(
            drover_api::webhook::WebhookSender::new(
                secret,
                drover_api::webhook::RetryPolicy::default(),
                config.api.allow_http_webhooks,
                if config.api.allow_private_webhook_targets {
                    drover_api::egress::TargetPolicy::AnyAddress
                } else {
                    drover_api::egress::TargetPolicy::PublicOnly
                },
            )
            .context("the webhook sender")?,
        ),
        Ok(None) => None,
        Err(error) => return Err(error).context(drover_api::webhook::SECRET_ENV),
    };
    let service = Service::new(
        store,
        Arc::new(SupervisorRunner::new(Arc::clone(&supervisor))),
        provisioner,
        ServiceConfig {
            provider: kind,
            simulator_ledger: simulator.as_ref().map(|sim| {
                let sim = Arc::clone(sim);
                SimulatorLedger(Arc::new(move || {
                    let ledger = sim.ledger();
                    (ledger.total_usd(), ledger.live().len())
                }))
            }),
            confidence_floor: config.gate.confidence_floor,
            on_shutdown: config.supervisor.on_shutdown,
            shutdown_grace: Duration::from_secs(u64::from(config.supervisor.shutdown_grace_s)),
            webhooks,
            accepted_risks: serve_limits::accepted_risks(config),
            log_quota_bytes: config.store.log_quota_bytes,
            data_volume: Some(prepared.data_dir.clone()),
            min_free_bytes: config.store.min_free_bytes,
            ..ServiceConfig::default()
        },
    );
    let (resumed, failed) = service.recover().await.context("recovering unfinished jobs")?;
    if resumed + failed > 0 {
        tracing::warn!(resumed, failed, "jobs left by the previous run were taken over");
    }
    // From now on, every second: jobs of replicas that died, cancels left by other replicas.
    service.watch_fleet();
    let auditor =
        Auditor::start(service.clone(), config.api.audit_file.as_ref().map(PathBuf::from));
    let mut registry = drover_api::metrics::Registry::default();
    provision_metrics.register(&mut registry);
    supervisor.register_metrics(&mut registry);
    service.register_metrics(&mut registry);
    let api = ApiState::with_registry(&config.api, development, service.clone(), auditor, registry)
        .context("the API configuration")?;
    let addr: SocketAddr = match listen {
        Some(addr) => addr,
        None => config.api.listen.parse().context("api.listen is not an address")?,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let addr = listener.local_addr().context("the bound address")?;
    Ok(Running { addr, service, supervisor, simulator, api, listener: Some(listener) })
}

impl Running {
    /// Serves the API until `stop` completes, then shuts everything down in order; hands back
    /// the embedded simulator (for its ledger), if it was the provider.
    pub async fn serve_until(
        mut self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<Option<Arc<Simulator>>> {
        let listener = self.listener.take().context("the server is already serving")?;
        // The jobs end first (new ones are refused with 503 meanwhile), so that event streams
        // that follow them end too; only then does the listener wait for open connections.
        let service = Arc::clone(&self.service);
        let stop = async move {
            stop.await;
            tracing::info!("shutting down: refusing new jobs, ending running ones");
            let left = service.shutdown().await;
            if left > 0 {
                tracing::warn!(
                    left,
                    "jobs still running at shutdown; their drivers are stopped next"
                );
            }
        };
        drover_api::serve(listener, Arc::clone(&self.api), stop)
            .await
            .context("serving the API")?;
        self.shutdown().await;
        Ok(self.simulator.take())
    }

    /// Stops jobs, drivers and leases.
    pub async fn shutdown(&self) {
        // A no-op when `serve_until` already ended the jobs.
        self.service.shutdown().await;
        self.supervisor.shutdown(Duration::from_secs(10)).await;
        let store = self.service.store();
        let provisioner = self.service.provisioner();
        match store.open_leases().await {
            Ok(leases) => {
                // Only this replica's: another supervisor sharing the store keeps its own.
                let mine = Some(provisioner.replica_id());
                for lease in leases.into_iter().filter(|l| l.owner_replica.as_deref() == mine) {
                    match self.service.provisioner().release(&lease.lease_id, "shutdown").await {
                        Ok(_) => tracing::info!(lease = %lease.lease_id, "released at shutdown"),
                        Err(error) => tracing::warn!(lease = %lease.lease_id, %error,
                            "release at shutdown failed; the next start's reaper destroys it"),
                    }
                }
            }
            Err(error) => tracing::error!(%error, "listing open leases at shutdown"),
        }
        provisioner.retire().await;
        tracing::info!("shutdown complete");
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}

/// Runs `drover serve`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = load_config(args.config.as_deref())?;
    let config_path = args.config.clone();
    let prepared = prepare(config)?;
    init_logging_from_env(args.log_format)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let running = start(&prepared, args.listen, args.development).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "drover serve: listening on http://{}", running.addr)?;
            out.flush()?;
        }
        if let Some(path) = config_path {
            let loader: drover_api::reload::Loader = Box::new(move || {
                load_config(Some(&path))
                    .map(|c| c.api)
                    .map_err(|e| Box::<dyn std::error::Error + Send + Sync>::from(e.to_string()))
            });
            drover_api::reload::spawn_sighup_reload(Arc::clone(&running.api), loader)
                .context("installing the SIGHUP handler")?;
        }
        running.serve_until(shutdown_signal()).await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod reachability_tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::reachable_by;

    fn chmod(path: &std::path::Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_closed_parent_or_a_closed_file_is_unreachable_to_another_uid() {
        let root = tempfile::tempdir().unwrap();
        chmod(root.path(), 0o755);
        let open_dir = root.path().join("open");
        let closed_dir = root.path().join("closed");
        for dir in [&open_dir, &closed_dir] {
            std::fs::create_dir(dir).unwrap();
        }
        chmod(&open_dir, 0o755);
        chmod(&closed_dir, 0o700);
        let in_open = open_dir.join("drover");
        let in_closed = closed_dir.join("drover");
        let private = open_dir.join("private");
        for file in [&in_open, &in_closed, &private] {
            std::fs::write(file, b"#!/bin/true\n").unwrap();
            chmod(file, 0o755);
        }
        chmod(&private, 0o700);
        let meta = std::fs::metadata(&in_open).unwrap();
        let (owner, group) = (meta.uid(), meta.gid());
        let (other, other_group) = (owner.wrapping_add(12_345), group.wrapping_add(12_345));

        assert!(reachable_by(&in_open, other, other_group, 0o5));
        assert!(!reachable_by(&in_closed, other, other_group, 0o5), "closed parent");
        assert!(!reachable_by(&private, other, other_group, 0o5), "closed file");
        assert!(!reachable_by(&in_open, other, other_group, 0o2), "no write for others");
        // The owner class decides for the owner, whatever the other bits say.
        assert!(reachable_by(&in_closed, owner, group, 0o5));
        assert!(reachable_by(&private, owner, group, 0o7));
        assert!(!reachable_by(&root.path().join("missing"), owner, group, 0o4));
    }
}
