//! The standard `process_*` metrics, read from `/proc/self` at each scrape (prometheus-client
//! has no process collector): CPU seconds and start time from `/proc/self/stat`, memory from
//! `/proc/self/statm`, descriptors from `/proc/self/fd` and `RLIMIT_NOFILE`. A value that
//! cannot be read is left out of that scrape rather than reported as 0.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes the `process_*` metrics of this process.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let e = &mut encoder;
        let stat = Stat::read();
        let statm = std::fs::read_to_string("/proc/self/statm").ok();
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten();
        let bytes = |field: usize| -> Option<i64> {
            let pages: i64 = statm.as_deref()?.split_whitespace().nth(field)?.parse().ok()?;
            Some(pages.saturating_mul(page?))
        };
        gauge(e, "process_resident_memory_bytes", "Resident memory size in bytes", bytes(1))?;
        gauge(e, "process_virtual_memory_bytes", "Virtual memory size in bytes", bytes(0))?;
        let open = std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as i64);
        gauge(e, "process_open_fds", "Open file descriptors", open)?;
        let max = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| i64::try_from(soft).unwrap_or(i64::MAX));
        gauge(e, "process_max_fds", "The limit on open file descriptors", max)?;
        let started = stat.as_ref().and_then(Stat::start_time_seconds);
        gauge(
            e,
            "process_start_time_seconds",
            "Start time since the Unix epoch, seconds",
            started,
        )?;
        if let Some(cpu) = stat.as_ref().and_then(Stat::cpu_seconds) {
            let counter = ConstCounter::new(cpu);
            counter.encode(e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time spent, seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Encodes one gauge, or nothing when its value could not be read.
fn gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: Option<N>,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let Some(value) = value else { return Ok(()) };
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// The fields of `/proc/self/stat` after the command name (which may hold spaces).
struct Stat(Vec<String>);

impl Stat {
    fn read() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/stat").ok()?;
        let (_, rest) = text.rsplit_once(')')?;
        Some(Self(rest.split_whitespace().map(str::to_owned).collect()))
    }

    /// Field `n` as proc(5) numbers it (1-based; the fields here start at 3, `state`).
    fn field(&self, n: usize) -> Option<f64> {
        self.0.get(n.checked_sub(3)?)?.parse().ok()
    }

    fn cpu_seconds(&self) -> Option<f64> {
        Some((self.field(14)? + self.field(15)?) / sysconf(nix::unistd::SysconfVar::CLK_TCK)?)
    }

    fn start_time_seconds(&self) -> Option<f64> {
        let since_boot = self.field(22)? / sysconf(nix::unistd::SysconfVar::CLK_TCK)?;
        let proc_stat = std::fs::read_to_string("/proc/stat").ok()?;
        let boot: f64 =
            proc_stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
        Some(boot + since_boot)
    }
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<f64> {
    nix::unistd::sysconf(var).ok().flatten().filter(|v| *v > 0).map(|v| v as f64)
}
