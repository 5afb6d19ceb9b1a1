//! A driver's requests: `ping`, and the lease calls (`acquire_gpu` checked against its job's
//! GPU request, `lease_status`, `lease_logs`, `release_gpu` only for a lease of a job running
//! on this session), run on the broker at most [`super::MAX_BROKER_REQUESTS`] at a time (the
//! rest wait in arrival order, at most [`super::MAX_BROKER_WAITING`]), their answers recorded
//! in the driver's lease map and sent back as replies.

use std::sync::Arc;

use drover_proto::{ErrorCode, JobId, Message, MsgId, WireError};

use super::{
    End, JobEntry, MAX_BROKER_REQUESTS, MAX_BROKER_WAITING, MAX_LEASES_PER_DRIVER, Session,
};
use crate::broker::{LeaseOwner, unknown_lease, wire};

pub(super) type BrokerResult = (MsgId, Result<Message, WireError>, Option<LeaseRecord>);

/// A broker call waiting for a free slot.
pub(super) struct Waiting {
    id: MsgId,
    owner: LeaseOwner,
    call: BrokerCall,
}

/// What a broker answer changes in the driver's lease map.
pub(super) enum LeaseRecord {
    Acquired(drover_proto::LeaseId, JobId),
    Released(drover_proto::LeaseId),
}

impl Session {
    pub(super) async fn on_request(&mut self, id: MsgId, msg: Message) -> Result<(), End> {
        match msg {
            Message::Ping(_) => self.reply(id, drover_proto::Pong {}).await,
            Message::AcquireGpu(mut req) => {
                let owner = LeaseOwner { driver: self.name().clone(), job_id: req.job_id.clone() };
                let refusal = match self.jobs.get(&req.job_id) {
                    None => {
                        let message = format!("no job {} runs on this session", req.job_id);
                        return self.reply(id, wire(ErrorCode::UnknownJob, message)).await;
                    }
                    Some(JobEntry { gpu: None, .. }) => Some(wire(
                        ErrorCode::Forbidden,
                        format!("job {} may not rent GPUs", req.job_id),
                    )),
                    Some(JobEntry { gpu: Some(allowed), .. }) => {
                        match crate::broker::authorize(allowed, &req.gpu) {
                            Ok(granted) => {
                                req.gpu = granted;
                                None
                            }
                            Err(error) => Some(error),
                        }
                    }
                };
                let refusal = refusal.or_else(|| {
                    (self.driver.leases.lock().len() >= MAX_LEASES_PER_DRIVER).then(|| {
                        wire(
                            ErrorCode::Forbidden,
                            format!("this driver already holds {MAX_LEASES_PER_DRIVER} leases"),
                        )
                    })
                });
                if let Some(error) = refusal {
                    tracing::info!(driver = %owner.driver, job = %owner.job_id, message = %error.message, "acquire_gpu refused");
                    let (broker, audited) = (Arc::clone(&self.inner.broker), error.clone());
                    tokio::spawn(async move { broker.refused(&owner, &audited).await });
                    return self.reply(id, error).await;
                }
                let budget_usd = self.jobs.get(&req.job_id).map_or(0.0, |e| e.budget_usd);
                self.call_broker(id, owner, BrokerCall::Acquire { budget_usd, req }).await
            }
            Message::LeaseStatus(req) => {
                self.lease_call(id, req.lease_id.clone(), BrokerCall::Status(req.lease_id)).await
            }
            Message::LeaseLogs(req) => {
                let call = BrokerCall::Logs(req.lease_id.clone(), req.tail);
                self.lease_call(id, req.lease_id, call).await
            }
            Message::ReleaseGpu(req) => {
                self.lease_call(id, req.lease_id.clone(), BrokerCall::Release(req.lease_id)).await
            }
            other => {
                let error = wire(
                    ErrorCode::UnexpectedMessage,
                    format!("{} is not expected now", other.message_type()),
                );
                self.reply(id, error).await?;
                self.count_violation(&format!("unexpected {}", other.message_type()))
            }
        }
    }

    /// Forwards a call about an existing lease, if it was acquired for a job that still runs
    /// on this session: a lease is scoped to (session, job), so another session of the same
    /// driver, or a later job, cannot see or touch it.
    async fn lease_call(
        &mut self,
        id: MsgId,
        lease_id: drover_proto::LeaseId,
        call: BrokerCall,
    ) -> Result<(), End> {
        let job_id = self.driver.leases.lock().get(&lease_id).cloned();
        match job_id {
            Some(job_id) if self.jobs.contains_key(&job_id) => {
                let owner = LeaseOwner { driver: self.name().clone(), job_id };
                self.call_broker(id, owner, call).await
            }
            _ => self.reply(id, unknown_lease(&lease_id)).await,
        }
    }

    async fn call_broker(
        &mut self,
        id: MsgId,
        owner: LeaseOwner,
        call: BrokerCall,
    ) -> Result<(), End> {
        if self.broker_inflight < MAX_BROKER_REQUESTS {
            self.start_broker(Waiting { id, owner, call });
            return Ok(());
        }
        if self.broker_waiting.len() >= MAX_BROKER_WAITING {
            let error = wire(
                ErrorCode::NotReady,
                format!(
                    "{MAX_BROKER_REQUESTS} lease requests are in flight and \
                     {MAX_BROKER_WAITING} more are waiting"
                ),
            );
            return self.reply(id, error).await;
        }
        self.broker_waiting.push_back(Waiting { id, owner, call });
        Ok(())
    }

    /// Runs `call` on the broker; its answer comes back through `broker_tx`.
    fn start_broker(&mut self, Waiting { id, owner, call }: Waiting) {
        self.broker_inflight += 1;
        let broker = Arc::clone(&self.inner.broker);
        let results = self.broker_tx.clone();
        tokio::spawn(async move {
            let outcome = call.run(broker.as_ref(), &owner).await;
            let result = match outcome {
                Ok((msg, record)) => (id, Ok(msg), record),
                Err(error) => (id, Err(error), None),
            };
            let _ = results.send(Box::new(result)).await;
        });
    }

    /// Starts waiting calls while slots are free; one whose job ended meanwhile is answered
    /// `unknown_job` without reaching the broker.
    async fn start_waiting(&mut self) -> Result<(), End> {
        while self.broker_inflight < MAX_BROKER_REQUESTS {
            let Some(next) = self.broker_waiting.pop_front() else { break };
            if self.jobs.contains_key(&next.owner.job_id) {
                self.start_broker(next);
            } else {
                let message = format!("no job {} runs on this session", next.owner.job_id);
                self.reply(next.id, wire(ErrorCode::UnknownJob, message)).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn on_broker(&mut self, result: Box<BrokerResult>) -> Option<End> {
        let (id, result, record) = *result;
        self.broker_inflight = self.broker_inflight.saturating_sub(1);
        match record {
            // Remembered only while its job runs here; one that ended meanwhile is forgotten.
            Some(LeaseRecord::Acquired(lease_id, job_id)) if self.jobs.contains_key(&job_id) => {
                self.driver.leases.lock().insert(lease_id, job_id);
            }
            Some(LeaseRecord::Released(lease_id)) => {
                self.driver.leases.lock().remove(&lease_id);
            }
            _ => {}
        }
        let msg = match result {
            Ok(msg) => msg,
            Err(error) => Message::Error(error),
        };
        if let Err(end) = self.reply(id, msg).await {
            return Some(end);
        }
        self.start_waiting().await.err()
    }
}

/// A driver request for the broker.
enum BrokerCall {
    Acquire { budget_usd: f64, req: drover_proto::AcquireGpu },
    Status(drover_proto::LeaseId),
    Logs(drover_proto::LeaseId, u32),
    Release(drover_proto::LeaseId),
}

impl BrokerCall {
    async fn run(
        self,
        broker: &dyn crate::broker::GpuBroker,
        owner: &LeaseOwner,
    ) -> Result<(Message, Option<LeaseRecord>), WireError> {
        match self {
            BrokerCall::Acquire { budget_usd, req } => {
                let lease = broker.acquire(owner, budget_usd, req).await?;
                let record = LeaseRecord::Acquired(lease.lease_id.clone(), owner.job_id.clone());
                Ok((Message::Lease(lease), Some(record)))
            }
            BrokerCall::Status(lease_id) => {
                Ok((Message::Lease(broker.status(owner, lease_id).await?), None))
            }
            BrokerCall::Logs(lease_id, tail) => {
                Ok((Message::LeaseLog(broker.logs(owner, lease_id, tail).await?), None))
            }
            BrokerCall::Release(lease_id) => {
                let lease = broker.release(owner, lease_id).await?;
                let record = (lease.state == drover_proto::LeasePhase::Released)
                    .then(|| LeaseRecord::Released(lease.lease_id.clone()));
                Ok((Message::Lease(lease), record))
            }
        }
    }
}
