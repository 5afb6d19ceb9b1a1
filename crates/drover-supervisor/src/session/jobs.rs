//! The jobs of one session: `run_job` and `cancel_job` sent on the supervisor's commands,
//! deadlines and the cancel grace, the driver's job events checked (states move forward,
//! nothing after a terminal one) and delivered, and every job failed when the driver dies.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use drover_proto::api::JobEventKind;
use drover_proto::{CancelJob, ErrorCode, JobId, JobPhase, JobState, Level, Message, RunJob};
use drover_transport::{ConnectionError, Inbound};
use tokio::time::Instant;

use super::{
    Command, DRAIN_AFTER_DEATH, End, FAR, JobEntry, Pending, Session, bounded, later, unix_ms,
};
use crate::broker::wire;
use crate::job::{Dispatch, JobEvent, JobSink, rank};
use crate::output::Escaped;

impl Session {
    pub(super) async fn on_command(&mut self, command: Command, stopping: bool) -> Option<End> {
        match command {
            Command::Run { dispatch, sink } => {
                let dispatch = *dispatch;
                if stopping {
                    self.end_job_early(&dispatch.job_id, &sink, "the driver is shutting down");
                    return None;
                }
                let job_id = dispatch.job_id.clone();
                let job = entry(sink, &dispatch, later(dispatch.max_runtime));
                let run = RunJob {
                    job_id: job_id.clone(),
                    action: dispatch.action,
                    params: dispatch.params,
                    gpu: dispatch.gpu,
                    deadline_unix_ms: unix_ms(
                        SystemTime::now()
                            .checked_add(dispatch.max_runtime)
                            .unwrap_or(UNIX_EPOCH + FAR),
                    ),
                };
                let sent = self.timed(async |conn| conn.request(run).await).await;
                match sent {
                    Err(end) => {
                        self.jobs.insert(job_id, job);
                        return Some(end);
                    }
                    Ok(Err(ConnectionError::Codec(error))) => {
                        self.jobs.insert(job_id, job);
                        return Some(End::kill(format!("broken transport: {error}")));
                    }
                    Ok(Err(ConnectionError::Outgoing(invalid))) => {
                        let reason = format!("run_job could not be sent: {invalid}");
                        self.end_job_early(&job_id, &job.sink, &reason);
                    }
                    Ok(Ok(id)) => {
                        self.remember(id, Pending::Run(job_id.clone()));
                        self.jobs.insert(job_id, job);
                    }
                }
                None
            }
            Command::Cancel { job_id, reason } => self.cancel(&job_id, &reason).await.err(),
        }
    }

    async fn cancel(&mut self, job_id: &JobId, reason: &str) -> Result<(), End> {
        let grace = self.inner.options.cancel_grace;
        match self.jobs.get_mut(job_id) {
            Some(entry) if entry.cancel.is_none() => entry.cancel = Some(later(grace)),
            _ => return Ok(()),
        }
        let cancel = CancelJob { job_id: job_id.clone(), reason: bounded(reason) };
        let id = self.request(cancel).await?;
        self.remember(id, Pending::Other);
        Ok(())
    }

    /// A job that never reached the driver: one failed state, and it is forgotten.
    pub(super) fn end_job_early(&mut self, job_id: &JobId, sink: &JobSink, reason: &str) {
        sink.push_critical(JobEvent::Job(JobEventKind::JobState(JobState {
            job_id: job_id.clone(),
            state: JobPhase::Failed,
            message: Some(bounded(reason)),
        })));
        self.forget_job(job_id);
    }

    pub(super) fn forget_job(&mut self, job_id: &JobId) {
        self.jobs.remove(job_id);
        // The job's leases end with it (the service releases any still open).
        self.driver.leases.lock().retain(|_, job| job != job_id);
        self.inner.jobs.lock().remove(job_id);
        if let Some(handle) = &self.handle {
            handle.jobs.fetch_sub(1, Ordering::Relaxed);
        }
    }

    pub(super) async fn housekeeping(&mut self, stopping_until: Option<Instant>) -> Option<End> {
        let now = Instant::now();
        let grace = self.inner.options.cancel_grace;
        let mut due = Vec::new();
        for (job_id, entry) in &self.jobs {
            match entry.cancel {
                Some(kill_at) if now >= kill_at => {
                    return Some(End::kill(format!(
                        "job {job_id} did not end within {} ms of its cancel",
                        grace.as_millis()
                    )));
                }
                None if now >= entry.deadline => due.push(job_id.clone()),
                _ => {}
            }
        }
        for job_id in due {
            if let Err(end) = self.cancel(&job_id, "the job's maximum run time passed").await {
                return Some(end);
            }
        }
        match stopping_until {
            Some(until) if now >= until => {
                Some(End::polite("the driver did not exit within its shutdown grace"))
            }
            _ => None,
        }
    }

    pub(super) async fn on_event(&mut self, msg: Message) -> Result<(), End> {
        let job_id = match &msg {
            Message::JobState(e) => e.job_id.clone(),
            Message::JobProgress(e) => e.job_id.clone(),
            Message::JobLog(e) => e.job_id.clone(),
            Message::JobResult(e) => e.job_id.clone(),
            Message::Log(_) | Message::Error(_) if !self.may_log() => return Ok(()),
            Message::Log(log) => {
                let (driver, session, message) = (self.name(), self.id, &log.message);
                match log.level {
                    Level::Trace => {
                        tracing::trace!(%driver, session, text = %Escaped(message), "driver log")
                    }
                    Level::Debug => {
                        tracing::debug!(%driver, session, text = %Escaped(message), "driver log")
                    }
                    Level::Info => {
                        tracing::info!(%driver, session, text = %Escaped(message), "driver log")
                    }
                    Level::Warn => {
                        tracing::warn!(%driver, session, text = %Escaped(message), "driver log")
                    }
                    Level::Error => {
                        tracing::error!(%driver, session, text = %Escaped(message), "driver log")
                    }
                }
                return Ok(());
            }
            Message::Error(error) => {
                tracing::info!(driver = %self.name(), session = self.id, code = %error.code, text = %Escaped(&error.message), "the driver reports an error");
                return Ok(());
            }
            other => {
                return self.count_violation(&format!("unexpected {}", other.message_type()));
            }
        };
        let Some(entry) = self.jobs.get_mut(&job_id) else {
            let error =
                wire(ErrorCode::UnknownJob, format!("no job {job_id} runs on this session"));
            self.send_event(error).await?;
            return self.count_violation(&format!("an event for unknown job {job_id}"));
        };
        match msg {
            Message::JobState(state) => {
                let new = rank(state.state);
                if let Some(old) = entry.rank
                    && new <= old
                {
                    let error = wire(
                        ErrorCode::UnexpectedMessage,
                        format!(
                            "job {job_id}: state {:?} cannot follow the previous one",
                            state.state
                        ),
                    );
                    self.send_event(error).await?;
                    return self.count_violation(&format!("job {job_id}: state out of order"));
                }
                entry.rank = Some(new);
                let terminal = state.state.is_terminal();
                entry.sink.push_critical(JobEvent::Job(JobEventKind::JobState(state)));
                if terminal {
                    self.forget_job(&job_id);
                }
            }
            Message::JobResult(result) => {
                entry.sink.push_critical(JobEvent::Job(JobEventKind::JobResult(result)))
            }
            Message::JobProgress(progress) => entry.sink.push_progress(progress),
            Message::JobLog(log) => entry.sink.push_log(log),
            _ => {}
        }
        Ok(())
    }

    /// After the process died: deliver what it sent before dying.
    pub(super) async fn read_last_frames(&mut self) {
        let until = Instant::now() + DRAIN_AFTER_DEATH;
        while let Ok(Ok(Some(inbound))) = tokio::time::timeout_at(until, self.conn.recv()).await {
            match inbound {
                Inbound::Event(msg) => {
                    if self.on_event(msg).await.is_err() {
                        break;
                    }
                }
                Inbound::Rejected(_) | Inbound::Request { .. } | Inbound::Reply { .. } => {}
            }
        }
    }

    /// Ends every job still running here with the driver's death, and every job still queued
    /// for this session.
    pub(super) fn fail_jobs(&mut self, cause: &str) {
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            if let Command::Run { dispatch, sink } = command {
                self.jobs.insert(dispatch.job_id.clone(), entry(sink, &dispatch, Instant::now()));
            }
        }
        let jobs: Vec<JobId> = self.jobs.keys().cloned().collect();
        for job_id in jobs {
            let Some(entry) = self.jobs.get(&job_id) else { continue };
            let state = if entry.cancel.is_some() { JobPhase::Cancelled } else { JobPhase::Failed };
            entry.sink.push_critical(JobEvent::DriverDied { cause: cause.to_owned() });
            entry.sink.push_critical(JobEvent::Job(JobEventKind::JobState(JobState {
                job_id: job_id.clone(),
                state,
                message: Some(bounded(&format!("the driver died: {cause}"))),
            })));
            self.forget_job(&job_id);
        }
    }
}

pub(super) fn entry(sink: JobSink, dispatch: &Dispatch, deadline: Instant) -> JobEntry {
    JobEntry {
        sink,
        rank: None,
        gpu: dispatch.gpu.clone(),
        budget_usd: dispatch.budget_usd,
        deadline,
        cancel: None,
    }
}
