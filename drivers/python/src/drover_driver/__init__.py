"""drover_driver: write a drover driver in Python, standard library only (Python 3.9+).

A driver is a program that drover starts in a sandbox and talks to over DriverTransport. This
module speaks the protocol; the driver author writes actions::

    from drover_driver import Driver

    driver = Driver("sleeper", "1.0.0")

    @driver.action(params={"type": "object", "properties": {"seconds": {"type": "number"}}})
    def sleep(job):
        job.log("going to sleep")
        if job.wait(job.params.get("seconds", 1)):
            return None          # cancelled: the outcome is `cancelled`
        return {"slept": True}   # the job's output

    if __name__ == "__main__":
        driver.main()

What the module does for the author:

- Transport: 4-byte big-endian length + UTF-8 JSON frames on fd ``DROVER_TRANSPORT_FD``
  (default 3), or stdin/stdout when ``DROVER_TRANSPORT=stdio`` is set, or when fd 3 is not
  open (then fd 1 is re-pointed at stderr, so a stray ``print`` cannot corrupt the protocol).
  The session's ``max_frame_bytes`` is enforced both ways: an oversize incoming frame is
  discarded as it streams in (never buffered) and answered with a ``frame_too_large`` error; a
  declared length over 64x the limit means the stream is not framed, and the driver exits 2.
- Handshake: ``hello`` (protocol versions, name, version, capabilities, every action with its
  params JSON Schema, ``schema_sha256``) -> ``welcome``, or ``error`` ``version_mismatch``
  (the driver exits 3 and says why on stderr).
- ``ping`` -> ``pong``; ``run_job`` -> ``ack``, then the action runs in its own thread with a
  ``running`` state, and ends with ``job_result`` followed by the terminal ``job_state``;
  ``cancel_job`` -> ``ack`` at once and the job's cancel event is set (the action polls
  ``job.cancelled`` or sleeps with ``job.wait``); ``shutdown {grace_ms}`` -> ``ack``, no new
  jobs, running jobs get half the grace to finish, are then cancelled, and at 80% of the grace
  the ones still running are reported ``cancelled`` and the driver exits 0.
- End of the transport: every job is cancelled and the driver exits 0.
- Progress and logs are batched and sent by a flusher thread: progress is coalesced (only the
  latest value is sent), log lines are buffered up to a bound per job and stream, the oldest
  are dropped beyond it, and the count of dropped lines travels in the next ``job_log``.
- Lease requests (``acquire_gpu``, ``lease_status``, ``lease_logs``, ``release_gpu``) are
  request/reply calls on the job; an ``error`` reply raises :class:`RequestError`.
- Every bad incoming frame (not UTF-8, bad JSON, duplicate keys, unknown type, wrong fields,
  a message the supervisor may not send) is answered with an ``error`` frame and the session
  goes on. An incoming ``error`` is never answered.
- Every outgoing frame is built within the bounds of ``schemas/transport/``: long messages are
  truncated, long log lines split, batches sized to the frame limit.

Defaults (each a keyword argument of :class:`Driver`):

=======================  ===========================================================
``capabilities``         ``("cancel", "progress", "logs")``
``max_frame_bytes``      not sent: the supervisor's limit applies (1 MiB by default)
``max_jobs``             64 jobs at once; more are refused with ``not_ready``
``log_buffer_lines``     10000 buffered lines per job and stream before dropping
``flush_interval``       0.2 s between progress/log flushes
``hello_timeout``        30 s to wait for ``welcome``
``request_timeout``      900 s to wait for the reply to a lease request
=======================  ===========================================================

Exit codes of :meth:`Driver.run`: 0 after ``shutdown`` or end of transport, 1 for a failed
handshake or transport error, 2 for an unframed stream, 3 for a version mismatch.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time
import traceback
from typing import Any, Callable, Optional

from ._job import Job
from ._wire import (  # noqa: F401  (re-exported: the package is the API)
    Cancelled,
    DEFAULT_MAX_FRAME_BYTES,
    FIELDS,
    FrameTooLarge,
    LOG_LINES_PER_FRAME,
    LOG_LINE_LEN,
    LOG_RECORD_LEN,
    MAX_SAFE_INTEGER,
    MESSAGE_LEN,
    MIN_MAX_FRAME_BYTES,
    NEGOTIABLE_MAX_FRAME_BYTES,
    PROGRESS_MESSAGE_LEN,
    ProtocolError,
    RequestError,
    Transport,
    TransportClosed,
    Unframed,
    _ENV_NAME_RE,
    _IMAGE_RE,
    _Invalid,
    _KEBAB_RE,
    _SNAKE_RE,
    _SUPERVISOR_REPLIES,
    _VERSION_RE,
    _check_gpu,
    _check_id,
    _is_int,
    _is_num,
    _truncate,
    decode,
    encode,
)

__all__ = [
    "Driver",
    "Job",
    "Cancelled",
    "RequestError",
    "ProtocolError",
    "TransportClosed",
    "FrameTooLarge",
    "Transport",
    "PROTOCOL_VERSIONS",
    "SCHEMA_SHA256",
]

__version__ = "0.1.0"

#: Protocol versions this module speaks.
PROTOCOL_VERSIONS = (1,)
#: SHA-256 of ``schemas/transport/SHA256SUMS`` (``sha256sum schemas/transport/SHA256SUMS``),
#: the schema set this module was written against. A test checks it against the repository.
SCHEMA_SHA256 = "815d7a21a7b58071c448121e4cbf82d4644385a296bcc814c625cfed6b2e7078"


class _Pending:
    __slots__ = ("event", "accepts", "reply", "error")

    def __init__(self, accepts):
        self.event = threading.Event()
        self.accepts = accepts
        self.reply = None
        self.error = None


# ---------------------------------------------------------------------------------------------
# The driver


class Driver:
    """A driver: its identity, its actions, and the session loop (:meth:`run`)."""

    def __init__(self, name: str, version: str = "0.1.0", *,
                 capabilities=("cancel", "progress", "logs"), max_frame_bytes: int | None = None,
                 max_jobs: int = 64, log_buffer_lines: int = 10000, flush_interval: float = 0.2,
                 hello_timeout: float = 30.0, request_timeout: float = 900.0):
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not _KEBAB_RE.fullmatch(name):
            raise ValueError("driver name must match ^[a-z][a-z0-9-]*$, 1 to 64 characters")
        if not isinstance(version, str) or not 1 <= len(version) <= 64 or not _VERSION_RE.fullmatch(version):
            raise ValueError("driver version must match ^[0-9A-Za-z.+_-]+$, 1 to 64 characters")
        capabilities = list(dict.fromkeys(capabilities))
        if len(capabilities) > 32 or not all(
                isinstance(c, str) and len(c) <= 32 and _SNAKE_RE.fullmatch(c) for c in capabilities):
            raise ValueError("capabilities: at most 32 names matching ^[a-z][a-z0-9_]*$")
        if max_frame_bytes is not None and not (
                _is_int(max_frame_bytes)
                and MIN_MAX_FRAME_BYTES <= max_frame_bytes <= NEGOTIABLE_MAX_FRAME_BYTES):
            raise ValueError("max_frame_bytes must be from 4096 to 16777216")
        self.name = name
        self.version = version
        self.capabilities = capabilities
        self.max_frame_bytes = max_frame_bytes
        self.max_jobs = max_jobs
        self.log_buffer_lines = log_buffer_lines
        self.flush_interval = flush_interval
        self.hello_timeout = hello_timeout
        self.request_timeout = request_timeout
        self._actions: dict[str, tuple[Callable[[Job], Any], Any]] = {}
        #: The ``welcome`` message, once received.
        self.session: Optional[dict[str, Any]] = None
        self._transport: Optional[Transport] = None
        self._lock = threading.Lock()
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._jobs: dict[str, Job] = {}
        self._done = threading.Event()
        self._exit_code = 0
        self._shutting_down = False
        self._records: collections.deque[dict[str, Any]] = collections.deque()
        self._records_dropped = 0

    # Declaring actions

    def action(self, name: str | None = None, *, params: dict[str, Any] | bool = True
               ) -> Callable[[Callable[[Job], Any]], Callable[[Job], Any]]:
        """Decorator: registers ``fn(job)`` as an action. ``params`` is the JSON Schema (an
        object or a boolean) the supervisor validates job params against before dispatch."""
        def register(fn: Callable[[Job], Any]) -> Callable[[Job], Any]:
            action_name = name or fn.__name__
            if not 1 <= len(action_name) <= 64 or not _SNAKE_RE.fullmatch(action_name):
                raise ValueError("action names must match ^[a-z][a-z0-9_]*$, 1 to 64 characters")
            if not isinstance(params, (dict, bool)):
                raise ValueError("an action's params schema must be an object or a boolean")
            if len(self._actions) >= 64 and action_name not in self._actions:
                raise ValueError("a driver declares at most 64 actions")
            self._actions[action_name] = (fn, params)
            return fn
        return register

    def hello(self) -> dict:
        """The ``hello`` message this driver sends."""
        msg = {
            "type": "hello",
            "protocol_versions": list(PROTOCOL_VERSIONS),
            "driver": {"name": self.name, "version": self.version},
            "capabilities": self.capabilities,
            "actions": {name: schema for name, (_, schema) in self._actions.items()},
            "schema_sha256": SCHEMA_SHA256,
        }
        if self.max_frame_bytes is not None:
            msg["max_frame_bytes"] = self.max_frame_bytes
        return msg

    # Driver's own log

    def log(self, level: str, message: str, **fields: Any) -> None:
        """A record of the driver's own log (``trace`` ... ``error``), sent at the next flush.
        At most 1000 records wait; beyond that the oldest are dropped and counted."""
        if level not in ("trace", "debug", "info", "warn", "error"):
            raise ValueError("level must be trace, debug, info, warn or error")
        record = {"type": "log", "level": level, "message": _truncate(message, LOG_RECORD_LEN)}
        if fields:
            record["fields"] = dict(list(fields.items())[:FIELDS])
            json.dumps(record["fields"], allow_nan=False)  # TypeError/ValueError to the caller
        with self._lock:
            self._records.append(record)
            while len(self._records) > 1000:
                self._records.popleft()
                self._records_dropped += 1

    # Running

    def main(self) -> None:
        """Runs the driver on the transport drover set up and exits with its code. Exits with
        ``os._exit`` after flushing stdio, so job threads still running cannot delay it."""
        code = self.run()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)

    def run(self, transport: Transport | None = None) -> int:
        """Handshake, then serve until shutdown or end of transport. Returns the exit code."""
        if not self._actions:
            raise ValueError("declare at least one action before run()")
        self._transport = transport = transport or Transport.from_env()
        if self.max_frame_bytes is not None:
            transport.max_frame_bytes = self.max_frame_bytes
        reader = threading.Thread(target=self._read_loop, name="drover-reader", daemon=True)
        reader.start()
        try:
            welcome = self.request(self.hello(), ("welcome",), self.hello_timeout)
        except RequestError as e:
            if e.code == "version_mismatch":
                _stderr(f"version mismatch: supervisor supports {e.details.get('supported')}, "
                        f"this driver offers {list(PROTOCOL_VERSIONS)}")
                return self._finish(3)
            _stderr(f"handshake refused: {e}")
            return self._finish(1)
        except (TransportClosed, ProtocolError, TimeoutError, FrameTooLarge) as e:
            if isinstance(e, TransportClosed) and self._done.wait(5):
                return self._exit_code  # the end of the transport (0) or an unframed stream (2)
            _stderr(f"handshake failed: {e}")
            return self._finish(1)
        if welcome["protocol_version"] not in PROTOCOL_VERSIONS:
            _stderr(f"supervisor chose protocol {welcome['protocol_version']}, not offered")
            return self._finish(1)
        flusher = threading.Thread(target=self._flush_loop, name="drover-flusher", daemon=True)
        flusher.start()
        self._done.wait()
        return self._exit_code

    def _finish(self, code: int) -> int:
        with self._lock:
            if not self._done.is_set():
                self._exit_code = code
                self._done.set()
            return self._exit_code

    def _max_frame(self) -> int:
        return self._transport.max_frame_bytes if self._transport else DEFAULT_MAX_FRAME_BYTES

    def _send(self, frame: dict) -> None:
        self._wire().write_frame(encode(frame))

    def _wire(self) -> Transport:
        if self._transport is None:
            raise TransportClosed("the driver is not running")
        return self._transport

    def _send_quietly(self, frame: dict) -> None:
        try:
            self._send(frame)
        except (TransportClosed, FrameTooLarge, TypeError, ValueError) as e:
            _stderr(f"could not send {frame['msg']['type']}: {e}")

    def _error(self, code: str, message: str, re_id=None, violations=(), details=None) -> None:
        msg = {"type": "error", "code": code, "message": _truncate(message, MESSAGE_LEN)}
        if violations:
            msg["violations"] = [
                {k: _truncate(v[k], 512 if k != "message" else MESSAGE_LEN) for k in
                 ("instance_path", "schema_path", "message")} for v in list(violations)[:64]]
        if details:
            msg["details"] = details
        frame = {"msg": msg}
        if re_id is not None:
            frame["re"] = re_id
        self._send_quietly(frame)

    def request(self, msg: dict[str, Any], accepts: tuple[str, ...] = ("lease",),
                timeout: float | None = None) -> dict[str, Any]:
        """Sends a request and waits for its reply's ``msg``. Raises :class:`RequestError` for
        an ``error`` reply, :class:`TransportClosed`, or ``TimeoutError``."""
        pending = _Pending(tuple(accepts))
        with self._lock:
            request_id = self._next_id
            self._next_id = 1 if request_id >= MAX_SAFE_INTEGER else request_id + 1
            self._pending[request_id] = pending
        try:
            self._send({"id": request_id, "msg": msg})
            timeout = self.request_timeout if timeout is None else timeout
            if not pending.event.wait(timeout):
                raise TimeoutError(f"no reply to {msg['type']} within {timeout} s")
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
        if pending.error is not None:
            raise pending.error
        return pending.reply

    # Reading

    def _read_loop(self) -> None:
        transport = self._wire()
        while True:
            try:
                payload = transport.read_frame()
            except FrameTooLarge as e:
                self._error("frame_too_large", str(e), details={"len": e.length, "max": e.limit})
                continue
            except Unframed as e:
                _stderr(str(e))
                self._end_of_transport(2)
                return
            except (TransportClosed, OSError) as e:
                _stderr(f"transport: {e}")
                self._end_of_transport(0)
                return
            if payload is None:
                self._end_of_transport(0)
                return
            try:
                frame = decode(payload)
            except _Invalid as e:
                # An error frame is never answered, whatever is wrong with it.
                if e.kind != "error":
                    self._error(e.code, e.message, e.request_id, e.violations)
                continue
            try:
                self._dispatch(frame)
            except Exception:  # a bug here must not kill the session
                _stderr("dispatch failed:\n" + traceback.format_exc())

    def _dispatch(self, frame: dict) -> None:
        msg = frame["msg"]
        kind = msg["type"]
        if kind == "ping":
            self._send_quietly({"re": frame["id"], "msg": {"type": "pong"}})
        elif kind in _SUPERVISOR_REPLIES or (kind == "error" and "re" in frame):
            self._deliver(frame)
        elif kind == "error":
            _stderr(f"supervisor reported {msg['code']}: {msg['message']}")
        elif self.session is None:
            self._error("not_ready", f"`{kind}` before the handshake finished", frame["id"])
        elif kind == "run_job":
            self._start_job(frame["id"], msg)
        elif kind == "cancel_job":
            job = self._jobs.get(msg["job_id"])
            if job is None or job._finished:
                self._error("unknown_job", "no running job with that id", frame["id"])
                return
            self._send_quietly({"re": frame["id"], "msg": {"type": "ack"}})
            job._request_cancel(msg["reason"] or "cancel_job")
        elif kind == "shutdown":
            self._send_quietly({"re": frame["id"], "msg": {"type": "ack"}})
            if not self._shutting_down:
                self._shutting_down = True
                threading.Thread(target=self._drain, args=(msg["grace_ms"],), daemon=True,
                                 name="drover-shutdown").start()

    def _deliver(self, frame: dict) -> None:
        msg = frame["msg"]
        with self._lock:
            pending = self._pending.get(frame["re"])
        if pending is None:
            if msg["type"] != "error":
                self._error("unexpected_message", f"`{msg['type']}` answers no open request")
            return
        if msg["type"] == "error":
            pending.error = RequestError(msg["code"], msg["message"], msg.get("details"),
                                         msg.get("violations"))
        elif msg["type"] in pending.accepts:
            if msg["type"] == "welcome":
                # Before the next frame is read: the session's frame limit applies from here.
                self.session = msg
                self._wire().max_frame_bytes = msg["max_frame_bytes"]
            pending.reply = msg
        else:
            self._error("unexpected_message", f"`{msg['type']}` does not answer that request")
            pending.error = ProtocolError(f"`{msg['type']}` does not answer the request")
        pending.event.set()

    def _start_job(self, request_id: int, msg: dict) -> None:
        if self._shutting_down:
            self._error("not_ready", "the driver is shutting down", request_id)
            return
        action = self._actions.get(msg["action"])
        if action is None:
            self._error("unknown_action", "no action with that name was declared", request_id)
            return
        with self._lock:
            if msg["job_id"] in self._jobs:
                busy = "a job with that id is already running"
            elif len(self._jobs) >= self.max_jobs:
                busy = f"the driver runs at most {self.max_jobs} jobs at once"
            else:
                busy = None
                job = Job(self, msg["job_id"], msg["action"], msg["params"], msg.get("gpu"),
                          msg["deadline_unix_ms"])
                self._jobs[job.id] = job
        if busy:
            self._error("not_ready", busy, request_id)
            return
        self._send_quietly({"re": request_id, "msg": {"type": "ack"}})
        threading.Thread(target=self._run_job, args=(job, action[0]), daemon=True,
                         name=f"job-{job.id}").start()

    # Jobs

    def _set_state(self, job: Job, state: str, message=None) -> None:
        msg = {"type": "job_state", "job_id": job.id, "state": state}
        if message:
            msg["message"] = _truncate(message, MESSAGE_LEN)
        job._state = state
        self._send_quietly({"msg": msg})

    def _run_job(self, job: Job, fn) -> None:
        with job._send_lock:
            self._set_state(job, "running")
        outcome, output, message = "succeeded", None, None
        try:
            output = fn(job)
            if job.cancelled:
                outcome, message = "cancelled", job.cancel_reason
        except Cancelled as e:
            outcome, message = "cancelled", str(e)
        except Exception as e:  # the action's failure is the job's, not the driver's
            outcome, message = "failed", f"{type(e).__name__}: {e}"
            _stderr(f"job {job.id} failed:\n" + traceback.format_exc())
        self._finish_job(job, outcome, output, message)

    def _finish_job(self, job: Job, outcome: str, output, message) -> None:
        with job._send_lock:
            with job._lock:
                if job._finished:
                    return
                job._finished = True
            try:
                job._flush(final=True)
            except (TransportClosed, FrameTooLarge) as e:
                _stderr(f"job {job.id}: logs lost: {e}")
            result = {"type": "job_result", "job_id": job.id, "outcome": outcome}
            if output is not None:
                result["output"] = output
            if message:
                result["message"] = _truncate(message, MESSAGE_LEN)
            try:
                payload = encode({"msg": result})
                if len(payload) > self._max_frame():
                    raise ValueError(f"output of {len(payload)} bytes is over max_frame_bytes")
            except (TypeError, ValueError) as e:
                outcome = "failed"
                result = {"type": "job_result", "job_id": job.id, "outcome": outcome,
                          "message": _truncate(f"output not sendable: {e}", MESSAGE_LEN)}
            self._send_quietly({"msg": result})
            self._set_state(job, outcome, message if outcome != "succeeded" else None)
        with self._lock:
            self._jobs.pop(job.id, None)

    def _flush_loop(self) -> None:
        while not self._done.is_set():
            time.sleep(self.flush_interval)
            self._flush_all()

    def _flush_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
            records, self._records = self._records, collections.deque()
            dropped, self._records_dropped = self._records_dropped, 0
        now_ms = time.time() * 1000
        try:
            for record in records:
                if dropped:
                    fields = dict(record.get("fields", {}))
                    fields["dropped_records"] = dropped
                    record["fields"] = dict(list(fields.items())[-FIELDS:])
                    dropped = 0
                self._send_quietly({"msg": record})
            for job in jobs:
                if now_ms >= job.deadline_unix_ms:
                    job._request_cancel("deadline")
                job._flush()
        except (TransportClosed, FrameTooLarge) as e:
            _stderr(f"flush: {e}")

    def _drain(self, grace_ms: int) -> None:
        start = time.monotonic()
        grace = grace_ms / 1000.0

        def wait_jobs(until):
            while self._jobs and time.monotonic() - start < until:
                time.sleep(0.01)

        wait_jobs(grace * 0.5)
        for job in list(self._jobs.values()):
            job._request_cancel("shutdown")
        wait_jobs(grace * 0.8)
        for job in list(self._jobs.values()):
            self._finish_job(job, "cancelled", None, "shutdown: grace period over")
        self._flush_all()
        self._finish(0)

    def _end_of_transport(self, code: int) -> None:
        """The supervisor is gone: cancel every job, give them a moment, exit."""
        self._wire().closed = True
        with self._lock:
            pendings = list(self._pending.values())
        for pending in pendings:
            # Replies are delivered by this same reader thread, so this cannot race them.
            if not pending.event.is_set():
                pending.error = TransportClosed("transport closed")
                pending.event.set()
        for job in list(self._jobs.values()):
            job._request_cancel("transport closed")
        deadline = time.monotonic() + 1.0
        while self._jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        self._finish(code)


def _stderr(text: str) -> None:
    try:
        sys.stderr.write(f"drover_driver: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
