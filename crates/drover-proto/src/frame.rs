//! The envelope and the message set.
//!
//! ```text
//! request  {"id": 7, "msg": {"type": "run_job", ...}}
//! reply    {"re": 7, "msg": {"type": "ack"}}
//! event    {"msg": {"type": "job_progress", ...}}
//! ```
//!
//! Each message type has one sender ([`Party`]) and one role ([`Role`]); the per-message schemas
//! in `schemas/transport/` encode the role (a request requires `id`, a reply requires `re`, an
//! event has neither) and the transport checks the sender.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::MsgId;
use crate::messages::*;

/// One DriverTransport frame: a message with its correlation ids.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("not" = {"required": ["id", "re"]}))]
pub struct Frame {
    /// Set on a request: the id its reply will carry as `re`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<MsgId>,
    /// Set on a reply: the `id` of the request it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<MsgId>,
    /// The message.
    pub msg: Message,
}

impl Frame {
    /// A request with id `id`.
    pub fn request(id: MsgId, msg: impl Into<Message>) -> Self {
        Self { id: Some(id), re: None, msg: msg.into() }
    }

    /// A reply to the request with id `re`.
    pub fn reply(re: MsgId, msg: impl Into<Message>) -> Self {
        Self { id: None, re: Some(re), msg: msg.into() }
    }

    /// An event: neither request nor reply.
    pub fn event(msg: impl Into<Message>) -> Self {
        Self { id: None, re: None, msg: msg.into() }
    }
}

/// Which side of a session sends a message type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Party {
    /// Only the supervisor sends it.
    Supervisor,
    /// Only the driver sends it.
    Driver,
    /// Either side may send it.
    Either,
}

impl std::fmt::Display for Party {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Party::Supervisor => "supervisor",
            Party::Driver => "driver",
            Party::Either => "either side",
        })
    }
}

impl Party {
    /// True if a frame of a type sent by `self` may come from `sender`.
    pub fn allows(self, sender: Party) -> bool {
        self == Party::Either || self == sender
    }
}

/// Whether a message type is a request, a reply or an event, which fixes its envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Carries `id`, never `re`; the receiver must answer.
    Request,
    /// Carries `re`, never `id`.
    Reply,
    /// Carries neither.
    Event,
    /// A reply (with `re`) or an event (without); never `id`. Only `error`.
    ReplyOrEvent,
}

macro_rules! messages {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident($payload:ty) = $tag:literal, $party:ident, $role:ident;
    )*) => {
        /// A DriverTransport message, tagged by `type`.
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum Message {
            $(
                $(#[doc = $doc])*
                #[serde(rename = $tag)]
                $variant($payload),
            )*
        }

        /// The `type` of a [`Message`], without its payload.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum MessageType {
            $(
                $(#[doc = $doc])*
                $variant,
            )*
        }

        impl MessageType {
            /// Every message type, in protocol order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant),*];

            /// The `type` tag on the wire.
            pub const fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $tag,)* }
            }

            /// The message type with this tag, if the protocol has one.
            pub fn from_tag(tag: &str) -> Option<Self> {
                match tag { $($tag => Some(Self::$variant),)* _ => None }
            }

            /// Who sends this message type.
            pub const fn sender(self) -> Party {
                match self { $(Self::$variant => Party::$party,)* }
            }

            /// Whether this message type is a request, a reply or an event.
            pub const fn role(self) -> Role {
                match self { $(Self::$variant => Role::$role,)* }
            }
        }

        impl Message {
            /// This message's type.
            pub fn message_type(&self) -> MessageType {
                match self { $(Self::$variant(_) => MessageType::$variant,)* }
            }

            /// Builds the message of type `message_type` from its fields (the `msg` object
            /// without its `type` key). When the tag is already known, this skips the buffering
            /// that deserializing the internally tagged enum needs to find it.
            pub fn from_fields(
                message_type: MessageType,
                fields: serde_json::Map<String, serde_json::Value>,
            ) -> Result<Message, serde_json::Error> {
                let fields = serde_json::Value::Object(fields);
                match message_type {
                    $(MessageType::$variant => {
                        <$payload as serde::Deserialize>::deserialize(fields).map(Message::$variant)
                    })*
                }
            }
        }

        $(
            impl From<$payload> for Message {
                fn from(payload: $payload) -> Self {
                    Message::$variant(payload)
                }
            }
        )*
    };
}

messages! {
    /// Driver -> supervisor, first frame: versions, identity, actions.
    Hello(Hello) = "hello", Driver, Request;
    /// Supervisor -> driver: the answer to `hello`.
    Welcome(Welcome) = "welcome", Supervisor, Reply;
    /// Either side: a heartbeat.
    Ping(Ping) = "ping", Either, Request;
    /// Either side: the answer to `ping`.
    Pong(Pong) = "pong", Either, Reply;
    /// Driver -> supervisor: the answer to `run_job`, `cancel_job` or `shutdown`.
    Ack(Ack) = "ack", Driver, Reply;
    /// Supervisor -> driver: run a job.
    RunJob(RunJob) = "run_job", Supervisor, Request;
    /// Supervisor -> driver: stop a job.
    CancelJob(CancelJob) = "cancel_job", Supervisor, Request;
    /// Driver -> supervisor: a job changed state.
    JobState(JobState) = "job_state", Driver, Event;
    /// Driver -> supervisor: a job's progress.
    JobProgress(JobProgress) = "job_progress", Driver, Event;
    /// Driver -> supervisor: a batch of a job's log lines.
    JobLog(JobLog) = "job_log", Driver, Event;
    /// Driver -> supervisor: a job's result.
    JobResult(JobResult) = "job_result", Driver, Event;
    /// Driver -> supervisor: a record of the driver's own log.
    Log(Log) = "log", Driver, Event;
    /// Driver -> supervisor: rent GPUs for a job.
    AcquireGpu(AcquireGpu) = "acquire_gpu", Driver, Request;
    /// Driver -> supervisor: the state of a lease.
    LeaseStatus(LeaseStatus) = "lease_status", Driver, Request;
    /// Driver -> supervisor: the last log lines of a lease's instance.
    LeaseLogs(LeaseLogs) = "lease_logs", Driver, Request;
    /// Driver -> supervisor: give a lease back.
    ReleaseGpu(ReleaseGpu) = "release_gpu", Driver, Request;
    /// Supervisor -> driver: a lease's state, answering `acquire_gpu`, `lease_status` or
    /// `release_gpu`.
    Lease(Lease) = "lease", Supervisor, Reply;
    /// Supervisor -> driver: log lines, answering `lease_logs`.
    LeaseLog(LeaseLog) = "lease_log", Supervisor, Reply;
    /// Supervisor -> driver: finish and exit.
    Shutdown(Shutdown) = "shutdown", Supervisor, Request;
    /// Either side: something went wrong, as a reply or an event.
    Error(WireError) = "error", Either, ReplyOrEvent;
}

impl MessageType {
    /// True if `reply` is an acceptable answer to a request of this type. `error` answers
    /// any request; nothing answers a message that is not a request.
    pub fn accepts_reply(self, reply: MessageType) -> bool {
        use MessageType as T;
        if self.role() != Role::Request {
            return false;
        }
        reply == T::Error
            || matches!(
                (self, reply),
                (T::Hello, T::Welcome)
                    | (T::Ping, T::Pong)
                    | (T::RunJob | T::CancelJob | T::Shutdown, T::Ack)
                    | (T::AcquireGpu | T::LeaseStatus | T::ReleaseGpu, T::Lease)
                    | (T::LeaseLogs, T::LeaseLog)
            )
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &t in MessageType::ALL {
            assert!(seen.insert(t.as_str()), "duplicate tag {t}");
            assert_eq!(MessageType::from_tag(t.as_str()), Some(t));
        }
        assert_eq!(MessageType::from_tag("nope"), None);
    }

    #[test]
    fn every_request_has_a_reply_and_every_reply_a_request() {
        for &request in MessageType::ALL.iter().filter(|t| t.role() == Role::Request) {
            let replies: Vec<_> = MessageType::ALL
                .iter()
                .filter(|&&r| r != MessageType::Error && request.accepts_reply(r))
                .collect();
            assert_eq!(replies.len(), 1, "{request} must have exactly one non-error reply");
            let reply = *replies[0];
            assert_eq!(reply.role(), Role::Reply);
            // A reply comes from the other side (or either side, for ping/pong).
            assert!(
                request.sender() == Party::Either || reply.sender() != request.sender(),
                "{request} and its reply {reply} come from the same side"
            );
        }
        for &reply in MessageType::ALL.iter().filter(|t| t.role() == Role::Reply) {
            assert!(
                MessageType::ALL.iter().any(|q| q.accepts_reply(reply)),
                "{reply} answers nothing"
            );
        }
    }

    #[test]
    fn party_allows() {
        assert!(Party::Either.allows(Party::Driver));
        assert!(Party::Driver.allows(Party::Driver));
        assert!(!Party::Supervisor.allows(Party::Driver));
    }
}
