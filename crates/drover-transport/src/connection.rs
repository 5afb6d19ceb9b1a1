//! A validated, correlated DriverTransport session over any byte stream.
//!
//! [`Connection`] owns the stream and its [`FrameCodec`]. Every frame it reads goes through
//! [`FrameValidator`] and then through the session rules; every frame it writes is checked the
//! same way first, so a bug on this side can never put a frame on the wire that the peer would
//! reject.
//!
//! Session rules, on top of the schemas:
//!
//! - **Sender.** Each message type has one sender ([`Party`]); a driver cannot send `run_job`,
//!   a supervisor cannot send `hello`.
//! - **Correlation.** A request carries a fresh `id`; this side remembers its own unanswered
//!   requests and accepts a reply only to one of them, and only of a type that answers it
//!   (`pong` for `ping`, `lease` for `acquire_gpu`, `error` for anything). It also remembers the
//!   peer's unanswered requests and lets [`Connection::reply`] answer each exactly once.
//! - **Bounded state.** At most [`MAX_UNANSWERED`] requests from the peer may be waiting for an
//!   answer; more are rejected, so a peer cannot grow this side's memory.
//! - **Buffers.** The read buffer starts at [`READ_BUFFER_BYTES`] (2 KiB) and grows to the
//!   longest frame being read; the write buffer starts empty and grows to the longest frame
//!   sent (each is flushed at once). An idle connection holds a few KiB.
//!
//! A frame that breaks a rule is answered with an `error` frame (a reply when the frame had a
//! usable `id`) and surfaced as [`Inbound::Rejected`]; the session goes on. The exception is a
//! rejected `error` frame, which is never answered: two peers must not trade errors forever.
//! Only a broken stream ends the session: I/O failure, a stream that is not framed, or an end
//! of stream inside a frame.
//!
//! ```
//! # tokio_test::block_on(async {
//! use drover_proto::{Message, Ping, Pong};
//! use drover_transport::{pair, Inbound};
//!
//! let (mut supervisor, mut driver) = pair();
//! let id = supervisor.request(Ping {}).await.unwrap();
//!
//! let Some(Inbound::Request { id: got, msg: Message::Ping(_) }) = driver.recv().await.unwrap()
//! else { panic!() };
//! driver.reply(got, Pong {}).await.unwrap();
//!
//! let Some(Inbound::Reply { re, msg: Message::Pong(_), .. }) = supervisor.recv().await.unwrap()
//! else { panic!() };
//! assert_eq!(re, id);
//! # });
//! ```

use std::collections::HashMap;

use bytes::BytesMut;
use drover_proto::{Frame, Message, MessageType, MsgId, Party, Role};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};
use tokio_util::codec::Framed;

use crate::codec::{CodecError, Decoded, FrameCodec};
use crate::validate::{FrameValidator, InvalidFrame};

/// Most requests from the peer that may wait for an answer at once.
pub const MAX_UNANSWERED: usize = 1024;

/// Initial capacity of a connection's read buffer, in bytes. A frame longer than what is
/// buffered grows it to that frame's length (bounded by the frame limit) in one step.
pub const READ_BUFFER_BYTES: usize = 2048;

/// Buffer size of each direction of [`pair`], in bytes.
pub const PAIR_BUFFER_BYTES: usize = 64 * 1024;

/// What [`Connection::recv`] yields.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// The peer asks something; answer with [`Connection::reply`].
    Request {
        /// The id to answer.
        id: MsgId,
        /// The request.
        msg: Message,
    },
    /// The answer to one of this side's requests.
    Reply {
        /// The id of the request it answers.
        re: MsgId,
        /// The type of that request.
        request: MessageType,
        /// The answer.
        msg: Message,
    },
    /// A message that is neither request nor reply.
    Event(Message),
    /// A frame that was rejected (and answered with an `error` frame where appropriate).
    Rejected(InvalidFrame),
}

/// Errors that end the session, or refuse an outgoing frame.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The stream failed or is no longer framed; the session is over.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// This side tried to send a frame the protocol forbids; nothing was sent and the session
    /// goes on.
    #[error("refused to send an invalid frame: {0}")]
    Outgoing(#[source] InvalidFrame),
}

/// A DriverTransport session over `T`. See the [module docs](self).
#[derive(Debug)]
pub struct Connection<T> {
    framed: Framed<T, FrameCodec>,
    validator: &'static FrameValidator,
    local: Party,
    next_id: MsgId,
    /// This side's requests waiting for a reply.
    awaiting_reply: HashMap<MsgId, MessageType>,
    /// The peer's requests this side has not answered yet.
    owed_replies: HashMap<MsgId, MessageType>,
}

/// Two connected in-memory sessions: `(supervisor, driver)`. For tests and benchmarks.
pub fn pair() -> (Connection<DuplexStream>, Connection<DuplexStream>) {
    let (a, b) = tokio::io::duplex(PAIR_BUFFER_BYTES);
    (Connection::new(a, Party::Supervisor), Connection::new(b, Party::Driver))
}

impl<T: AsyncRead + AsyncWrite + Unpin> Connection<T> {
    /// A session over `io` in which this side is `local` (`Party::Supervisor` or
    /// `Party::Driver`), with the default frame limit of 1 MiB. `Party::Either` names no side:
    /// a connection made with it may send only what either side may send, and treats its peer
    /// as a supervisor.
    pub fn new(io: T, local: Party) -> Self {
        Self::with_codec(io, local, FrameCodec::new())
    }

    /// Like [`Connection::new`] with a configured codec.
    pub fn with_codec(io: T, local: Party, codec: FrameCodec) -> Self {
        let mut framed = Framed::with_capacity(io, codec, READ_BUFFER_BYTES);
        // Every frame is flushed as it is sent, so the write buffer only ever holds one: it
        // starts empty and grows to the longest frame sent.
        *framed.write_buffer_mut() = BytesMut::new();
        Self {
            framed,
            validator: FrameValidator::shared(),
            local,
            next_id: MsgId::FIRST,
            awaiting_reply: HashMap::new(),
            owed_replies: HashMap::new(),
        }
    }

    /// Which side this is.
    pub fn local(&self) -> Party {
        self.local
    }

    /// The frame limit in force, in bytes, for both directions.
    pub fn max_frame_bytes(&self) -> u32 {
        self.framed.codec().max_frame_bytes()
    }

    /// Changes the frame limit for both directions, e.g. to what the handshake negotiated.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: u32) {
        self.framed.codec_mut().set_max_frame_bytes(max_frame_bytes);
    }

    /// How many of this side's requests are waiting for a reply.
    pub fn awaiting_replies(&self) -> usize {
        self.awaiting_reply.len()
    }

    /// Stops waiting for the reply to request `id` (after a timeout, say). A reply that still
    /// arrives is then rejected as unexpected. Returns whether the request was pending.
    pub fn forget(&mut self, id: MsgId) -> bool {
        self.awaiting_reply.remove(&id).is_some()
    }

    /// Reads the next frame. `Ok(None)` is a clean end of stream at a frame boundary.
    ///
    /// Cancel safety: no valid frame is lost if the future is dropped. A rejected frame's
    /// `error` answer may be cut short if the future is dropped while writing it.
    pub async fn recv(&mut self) -> Result<Option<Inbound>, ConnectionError> {
        let Some(decoded) = self.framed.next().await.transpose()? else {
            return Ok(None);
        };
        let admitted = match decoded {
            Decoded::TooLarge(too_large) => Err(InvalidFrame::TooLarge(too_large)),
            Decoded::Frame(payload) => {
                self.validator.decode(&payload).and_then(|frame| self.admit(frame))
            }
        };
        match admitted {
            Ok(inbound) => Ok(Some(inbound)),
            Err(invalid) => {
                if !rejects_an_error_frame(&invalid) {
                    let answer = match invalid.request_id() {
                        Some(id) => Frame::reply(id, invalid.to_wire()),
                        None => Frame::event(invalid.to_wire()),
                    };
                    self.write(&answer).await?;
                }
                Ok(Some(Inbound::Rejected(invalid)))
            }
        }
    }

    /// Sends a request and returns its id; the reply arrives through [`Connection::recv`] as
    /// [`Inbound::Reply`] with `re` equal to this id.
    pub async fn request(&mut self, msg: impl Into<Message>) -> Result<MsgId, ConnectionError> {
        let msg = msg.into();
        self.check_outgoing(&msg, &[Role::Request])?;
        let id = self.fresh_id();
        let message_type = msg.message_type();
        self.awaiting_reply.insert(id, message_type);
        if let Err(error) = self.write(&Frame::request(id, msg)).await {
            self.awaiting_reply.remove(&id);
            return Err(error);
        }
        Ok(id)
    }

    /// Answers the peer's request `re`. Each request is answered exactly once, with a
    /// message type that answers it (or `error`).
    pub async fn reply(
        &mut self,
        re: MsgId,
        msg: impl Into<Message>,
    ) -> Result<(), ConnectionError> {
        self.reply_with(re, msg.into(), true).await
    }

    /// Like [`Connection::reply`], but leaves the frame in the write buffer (up to the codec's
    /// backpressure boundary) until [`Connection::flush`] or the next write that flushes. A
    /// peer that sends many requests at once can then be answered with one write.
    pub async fn reply_buffered(
        &mut self,
        re: MsgId,
        msg: impl Into<Message>,
    ) -> Result<(), ConnectionError> {
        self.reply_with(re, msg.into(), false).await
    }

    /// Writes out whatever [`Connection::reply_buffered`] left in the write buffer.
    pub async fn flush(&mut self) -> Result<(), ConnectionError> {
        SinkExt::<Vec<u8>>::flush(&mut self.framed).await.map_err(ConnectionError::from)
    }

    async fn reply_with(
        &mut self,
        re: MsgId,
        msg: Message,
        flush: bool,
    ) -> Result<(), ConnectionError> {
        self.check_outgoing(&msg, &[Role::Reply, Role::ReplyOrEvent])?;
        let message_type = msg.message_type();
        match self.owed_replies.get(&re) {
            Some(request) if request.accepts_reply(message_type) => {}
            Some(request) => {
                return Err(refused(
                    message_type,
                    format!("it does not answer a {request} request"),
                ));
            }
            None => {
                return Err(refused(
                    message_type,
                    format!("no request {re} is waiting for an answer"),
                ));
            }
        }
        self.owed_replies.remove(&re);
        let frame = Frame::reply(re, msg);
        if flush {
            self.write(&frame).await
        } else {
            let payload = self.validator.encode(&frame).map_err(ConnectionError::Outgoing)?;
            self.framed.feed(payload).await.map_err(ConnectionError::from)
        }
    }

    /// Sends an event (a message that is neither request nor reply).
    pub async fn event(&mut self, msg: impl Into<Message>) -> Result<(), ConnectionError> {
        let msg = msg.into();
        self.check_outgoing(&msg, &[Role::Event, Role::ReplyOrEvent])?;
        self.write(&Frame::event(msg)).await
    }

    /// Flushes and shuts down the writing half; the peer sees end of stream.
    pub async fn close(&mut self) -> Result<(), ConnectionError> {
        SinkExt::<Vec<u8>>::close(&mut self.framed).await.map_err(ConnectionError::from)
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &T {
        self.framed.get_ref()
    }

    fn check_outgoing(&self, msg: &Message, roles: &[Role]) -> Result<(), ConnectionError> {
        let message_type = msg.message_type();
        if !message_type.sender().allows(self.local) {
            return Err(refused(message_type, format!("the {} does not send it", self.local)));
        }
        if !roles.contains(&message_type.role()) {
            return Err(refused(message_type, format!("it is a {:?}", message_type.role())));
        }
        Ok(())
    }

    fn fresh_id(&mut self) -> MsgId {
        // Skip ids still in use; the map is bounded by the caller's own outstanding requests.
        while self.awaiting_reply.contains_key(&self.next_id) {
            self.next_id = self.next_id.next();
        }
        let id = self.next_id;
        self.next_id = id.next();
        id
    }

    /// Applies the session rules to a schema-valid frame.
    fn admit(&mut self, frame: Frame) -> Result<Inbound, InvalidFrame> {
        let message_type = frame.msg.message_type();
        let unexpected =
            |reason: String| InvalidFrame::UnexpectedMessage { message_type, id: frame.id, reason };
        let peer = match self.local {
            Party::Supervisor => Party::Driver,
            Party::Driver | Party::Either => Party::Supervisor,
        };
        if !message_type.sender().allows(peer) {
            return Err(unexpected(format!("the {peer} does not send it")));
        }
        if let Some(re) = frame.re {
            return match self.awaiting_reply.get(&re) {
                Some(&request) if request.accepts_reply(message_type) => {
                    self.awaiting_reply.remove(&re);
                    Ok(Inbound::Reply { re, request, msg: frame.msg })
                }
                Some(request) => Err(unexpected(format!("it does not answer a {request} request"))),
                None => Err(unexpected(format!("no request {re} is waiting for a reply"))),
            };
        }
        if let Some(id) = frame.id {
            if self.owed_replies.contains_key(&id) {
                return Err(unexpected(format!("request {id} is already waiting for an answer")));
            }
            if self.owed_replies.len() >= MAX_UNANSWERED {
                return Err(unexpected(format!(
                    "{MAX_UNANSWERED} requests are already waiting for an answer"
                )));
            }
            self.owed_replies.insert(id, message_type);
            return Ok(Inbound::Request { id, msg: frame.msg });
        }
        Ok(Inbound::Event(frame.msg))
    }

    async fn write(&mut self, frame: &Frame) -> Result<(), ConnectionError> {
        let payload = self.validator.encode(frame).map_err(ConnectionError::Outgoing)?;
        self.framed.send(payload).await.map_err(ConnectionError::from)
    }
}

fn refused(message_type: MessageType, reason: String) -> ConnectionError {
    ConnectionError::Outgoing(InvalidFrame::UnexpectedMessage { message_type, id: None, reason })
}

/// True if the rejected frame was itself an `error`: those are never answered.
fn rejects_an_error_frame(invalid: &InvalidFrame) -> bool {
    match invalid {
        InvalidFrame::SchemaViolation { message_type, .. } => {
            *message_type == Some(MessageType::Error)
        }
        InvalidFrame::UnexpectedMessage { message_type, .. } => *message_type == MessageType::Error,
        _ => false,
    }
}
