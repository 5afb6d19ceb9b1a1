//! A job's log quota ([`ServiceConfig::log_quota_bytes`](crate::ServiceConfig::log_quota_bytes)):
//! what it has let through and what it dropped.

use drover_proto::JobId;
use drover_proto::api::JobEventKind;

/// What a job's log quota has let through and dropped so far.
#[derive(Debug, Default)]
pub(crate) struct LogQuota {
    stored_bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
    /// A line did not fit: every later line is dropped too, so the stored log is a prefix.
    full: bool,
}

impl LogQuota {
    /// Keeps the leading lines of `log` that fit the quota and counts the rest; `None` when
    /// nothing of it is to be stored (then the lines the driver itself reported dropped are
    /// counted here, so the summary carries them).
    pub(crate) fn admit(
        &mut self,
        mut log: drover_proto::JobLog,
        quota: u64,
    ) -> Option<drover_proto::JobLog> {
        let mut kept = 0;
        for line in &log.lines {
            let len = line.len() as u64;
            if !self.full && self.stored_bytes.saturating_add(len) <= quota {
                self.stored_bytes += len;
                kept += 1;
            } else {
                self.full = true;
                self.dropped_lines += 1;
                self.dropped_bytes = self.dropped_bytes.saturating_add(len);
            }
        }
        if kept == 0 {
            self.dropped_lines = self.dropped_lines.saturating_add(log.dropped);
            return None;
        }
        log.lines.truncate(kept);
        Some(log)
    }

    /// The one event that reports what was dropped, if anything was.
    pub(crate) fn summary(&self, id: &JobId, quota: u64) -> Option<JobEventKind> {
        (self.dropped_lines > 0).then(|| {
            JobEventKind::JobLog(drover_proto::JobLog {
                job_id: id.clone(),
                stream: drover_proto::LogStream::Stderr,
                lines: vec![format!(
                    "drover: log quota of {quota} bytes reached; {} lines ({} bytes) dropped",
                    self.dropped_lines, self.dropped_bytes
                )],
                dropped: self.dropped_lines,
            })
        })
    }
}
