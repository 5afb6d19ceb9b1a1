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
import math
import os
import re
import struct
import sys
import threading
import time
import traceback

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
SCHEMA_SHA256 = "0ee4245a996b17f03c9d0664a9db8b25d5f63d4c9849e2816b90a41b96e3ddb0"

DEFAULT_MAX_FRAME_BYTES = 1 << 20
MIN_MAX_FRAME_BYTES = 4 << 10
NEGOTIABLE_MAX_FRAME_BYTES = 16 << 20
#: A declared length over this many times the limit means the stream is not framed at all.
CEILING_FACTOR = 64
MAX_SAFE_INTEGER = (1 << 53) - 1
MESSAGE_LEN = 1024
LOG_LINE_LEN = 16 * 1024
LOG_LINES_PER_FRAME = 4096
LOG_RECORD_LEN = 4096
FIELDS = 32
PROGRESS_MESSAGE_LEN = 256
MAX_GRACE_MS = 600_000

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SNAKE_RE = re.compile(r"[a-z][a-z0-9_]*")
_KEBAB_RE = re.compile(r"[a-z][a-z0-9-]*")
_VERSION_RE = re.compile(r"[0-9A-Za-z.+_-]+")
_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_IMAGE_RE = re.compile(r"[^\s]+")

_PHASES = ("queued", "starting", "running", "succeeded", "failed", "cancelled")
_LEASE_PHASES = ("provisioning", "loading", "running", "exited", "failed", "released")

# Message types the supervisor may send, and their roles.
_SUPERVISOR_REQUESTS = ("ping", "run_job", "cancel_job", "shutdown")
_SUPERVISOR_REPLIES = ("welcome", "pong", "lease", "lease_log")
_DRIVER_ONLY = (
    "hello", "ack", "job_state", "job_progress", "job_log", "job_result", "log",
    "acquire_gpu", "lease_status", "lease_logs", "release_gpu",
)


# ---------------------------------------------------------------------------------------------
# Errors


class ProtocolError(Exception):
    """The peer broke the protocol in a way this side cannot answer."""


class TransportClosed(Exception):
    """The transport is closed: the supervisor went away or the driver is exiting."""


class FrameTooLarge(Exception):
    """A frame is over the session's ``max_frame_bytes``."""

    def __init__(self, length: int, limit: int):
        super().__init__(f"frame of {length} bytes is over the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class Unframed(Exception):
    """The stream is not framed: a declared length is over the hard ceiling."""


class Cancelled(Exception):
    """Raised by :meth:`Job.raise_if_cancelled`; an action that lets it escape is ``cancelled``."""


class RequestError(Exception):
    """The supervisor answered a request with an ``error`` frame."""

    def __init__(self, code: str, message: str, details: dict | None = None, violations=None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}
        self.violations = violations or []


# ---------------------------------------------------------------------------------------------
# Framing


class Transport:
    """Length-prefixed frames over a pair of file descriptors (the same one for a socket).

    ``read_frame`` returns a payload, ``None`` at a clean end of stream, raises
    :class:`FrameTooLarge` after discarding an oversize frame, :class:`Unframed` for a length
    over the ceiling and :class:`TransportClosed` for an end of stream inside a frame.
    ``write_frame`` is thread-safe and refuses payloads over the limit.
    """

    CHUNK = 64 * 1024

    def __init__(self, read_fd: int, write_fd: int, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES):
        self.read_fd = read_fd
        self.write_fd = write_fd
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._wlock = threading.Lock()
        self.closed = False

    @classmethod
    def from_env(cls, environ=None) -> "Transport":
        """The transport drover set up: ``DROVER_TRANSPORT_FD`` (default 3), or stdio."""
        environ = os.environ if environ is None else environ
        fd_text = environ.get("DROVER_TRANSPORT_FD")
        if environ.get("DROVER_TRANSPORT") == "stdio" or (fd_text is None and not _fd_open(3)):
            return cls.stdio()
        fd = int(fd_text) if fd_text is not None else 3
        return cls(fd, fd)

    @classmethod
    def stdio(cls) -> "Transport":
        """Frames on stdin/stdout; fd 1 is re-pointed at stderr so stray prints stay logs."""
        write_fd = os.dup(1)
        sys.stdout.flush()
        os.dup2(2, 1)
        return cls(0, write_fd)

    def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            chunk = os.read(self.read_fd, self.CHUNK)
            if not chunk:
                return False
            self._buf += chunk
        return True

    def _discard(self, n: int) -> bool:
        take = min(n, len(self._buf))
        del self._buf[:take]
        n -= take
        while n > 0:
            chunk = os.read(self.read_fd, min(n, self.CHUNK))
            if not chunk:
                return False
            n -= len(chunk)
        return True

    def read_frame(self):
        if not self._fill(4):
            if self._buf:
                raise TransportClosed("end of stream inside a frame header")
            return None
        (length,) = struct.unpack(">I", bytes(self._buf[:4]))
        limit = self.max_frame_bytes
        if length > limit * CEILING_FACTOR:
            head = bytes(self._buf[:64]).decode("utf-8", "replace")
            raise Unframed(
                f"declared length {length} is over {CEILING_FACTOR}x the limit of {limit}; "
                f"the stream is not framed; it starts with {head!r}"
            )
        del self._buf[:4]
        if length > limit:
            if not self._discard(length):
                raise TransportClosed("end of stream inside an oversize frame")
            raise FrameTooLarge(length, limit)
        if not self._fill(length):
            raise TransportClosed("end of stream inside a frame")
        payload = bytes(self._buf[:length])
        del self._buf[:length]
        return payload

    def write_frame(self, payload: bytes) -> None:
        if len(payload) > self.max_frame_bytes:
            raise FrameTooLarge(len(payload), self.max_frame_bytes)
        data = struct.pack(">I", len(payload)) + payload
        with self._wlock:
            if self.closed:
                raise TransportClosed("transport closed")
            view = memoryview(data)
            try:
                while view:
                    written = os.write(self.write_fd, view)
                    view = view[written:]
            except OSError as e:
                self.closed = True
                raise TransportClosed(f"write failed: {e.strerror or e}") from None


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def encode(frame: dict) -> bytes:
    """A frame as compact UTF-8 JSON. NaN and infinities are refused (they are not JSON)."""
    text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # Lone surrogates (from surrogateescape'd input) cannot be UTF-8: replace them.
    return text.encode("utf-8", "replace")


class _Invalid(Exception):
    def __init__(self, code: str, message: str, violations=(), request_id=None, kind=None):
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.violations = list(violations)
        self.request_id = request_id


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key in object")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def decode(payload: bytes) -> dict:
    """Parses and checks one incoming payload; raises ``_Invalid`` with the error to answer."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _Invalid("invalid_utf8", f"payload is not UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise _Invalid("invalid_json", "payload nests too deeply") from None
    except ValueError as e:
        # json's messages give the position, never the text.
        raise _Invalid("invalid_json", f"payload is not JSON: {str(e)[:200]}") from None
    if not isinstance(value, dict):
        raise _Invalid("invalid_json", "payload is not one JSON object")
    _check_frame(value)
    return value


# ---------------------------------------------------------------------------------------------
# Checks of incoming frames: the parts of schemas/transport/ the supervisor's messages use.


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _str_rule(pattern=None, min_len=0, max_len=None):
    def check(v):
        if not isinstance(v, str):
            return "type", "is not a string"
        if len(v) < min_len:
            return "minLength", f"is shorter than {min_len}"
        if max_len is not None and len(v) > max_len:
            return "maxLength", f"is longer than {max_len}"
        if pattern is not None and not pattern.fullmatch(v):
            return "pattern", "does not match the pattern"
        return None
    return check


def _int_rule(lo, hi):
    def check(v):
        if not _is_int(v):
            return "type", "is not an integer"
        if v < lo:
            return "minimum", f"is less than {lo}"
        if v > hi:
            return "maximum", f"is greater than {hi}"
        return None
    return check


def _type_rule(kind, pytype, max_props=None):
    def check(v):
        if not isinstance(v, pytype) or isinstance(v, bool) and pytype is not bool:
            return "type", f"is not {kind}"
        if max_props is not None and len(v) > max_props:
            return "maxProperties", f"has more than {max_props} properties"
        return None
    return check


def _enum_rule(values):
    def check(v):
        return None if v in values else ("enum", "is not one of the allowed values")
    return check


def _num_rule(lo=None, hi=None):
    def check(v):
        if not _is_num(v):
            return "type", "is not a number"
        if lo is not None and v < lo:
            return "minimum", f"is less than {lo}"
        if hi is not None and v > hi:
            return "maximum", f"is greater than {hi}"
        return None
    return check


def _lines_rule(v):
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        return "type", "is not an array of strings"
    if len(v) > LOG_LINES_PER_FRAME:
        return "maxItems", f"has more than {LOG_LINES_PER_FRAME} items"
    return None


_ID = _str_rule(_ID_RE, 1, 64)
_ANY = lambda v: None  # noqa: E731

# type -> (required {field: rule}, optional {field: rule})
_MESSAGES = {
    "welcome": ({
        "protocol_version": _int_rule(1, 1000),
        "session_id": _ID,
        "heartbeat_ms": _int_rule(100, 600_000),
        "max_frame_bytes": _int_rule(MIN_MAX_FRAME_BYTES, NEGOTIABLE_MAX_FRAME_BYTES),
    }, {}),
    "ping": ({}, {}),
    "pong": ({}, {}),
    "run_job": ({
        "job_id": _ID,
        "action": _str_rule(_SNAKE_RE, 1, 64),
        "params": _type_rule("an object", dict, 256),
        "deadline_unix_ms": _int_rule(1, MAX_SAFE_INTEGER),
    }, {"gpu": _type_rule("an object", dict)}),
    "cancel_job": ({"job_id": _ID, "reason": _str_rule(max_len=MESSAGE_LEN)}, {}),
    "shutdown": ({"grace_ms": _int_rule(0, MAX_GRACE_MS)}, {}),
    "lease": ({
        "lease_id": _ID,
        "job_id": _ID,
        "state": _enum_rule(_LEASE_PHASES),
        "deadline_unix_ms": _int_rule(1, MAX_SAFE_INTEGER),
    }, {
        "gpu_model": _str_rule(max_len=64),
        "gpu_count": _int_rule(1, 16),
        "usd_per_hour": _num_rule(0, 1e6),
        "estimate": _type_rule("an object", dict),
        "cost_usd": _num_rule(0, 1e6),
        "status_message": _str_rule(max_len=MESSAGE_LEN),
    }),
    "lease_log": ({
        "lease_id": _ID,
        "lines": _lines_rule,
        "truncated": _type_rule("a boolean", bool),
    }, {}),
    "error": ({"code": _str_rule(_SNAKE_RE, 1, 64), "message": _str_rule(max_len=MESSAGE_LEN)}, {
        "violations": _type_rule("an array", list),
        "details": _type_rule("an object", dict, FIELDS),
    }),
}


def _msg_id(value):
    return value if _is_int(value) and 1 <= value <= MAX_SAFE_INTEGER else None


def _check_frame(frame: dict) -> None:
    msg = frame.get("msg")
    try:
        _check_envelope_and_msg(frame)
    except _Invalid as e:
        e.kind = msg.get("type") if isinstance(msg, dict) else None
        raise


def _check_envelope_and_msg(frame: dict) -> None:
    violations = []

    def bad(instance, schema, message):
        violations.append({"instance_path": instance, "schema_path": schema, "message": message})

    request_id = _msg_id(frame.get("id"))
    for key in frame:
        if key not in ("id", "re", "msg"):
            bad("", "/additionalProperties", "has a property that is not allowed")
    for key in ("id", "re"):
        if key in frame and _msg_id(frame[key]) is None:
            bad(f"/{key}", "/$defs/MsgId", f"`{key}` is not an integer from 1 to 2^53-1")
    if "id" in frame and "re" in frame:
        bad("", "/not", "a frame is not both a request and a reply")
    msg = frame.get("msg")
    if not isinstance(msg, dict):
        bad("/msg", "/properties/msg/type", "`msg` is missing or not an object")
        raise _Invalid("schema_violation", "frame breaks the envelope schema", violations, request_id)
    kind = msg.get("type")
    if not isinstance(kind, str):
        bad("/msg/type", "/properties/msg/required", "`msg.type` is missing or not a string")
        raise _Invalid("schema_violation", "frame breaks the envelope schema", violations, request_id)
    if kind in _DRIVER_ONLY:
        raise _Invalid("unexpected_message", f"a supervisor does not send `{kind}`", (), request_id)
    if kind not in _MESSAGES:
        raise _Invalid("unknown_type", "`msg.type` names no message of protocol 1", (), request_id)
    if kind in _SUPERVISOR_REQUESTS and "id" not in frame:
        bad("", "/required", f"`{kind}` is a request and needs `id`")
    if (kind in _SUPERVISOR_REPLIES and "re" not in frame) or (kind != "error" and kind not in
                                                              _SUPERVISOR_REQUESTS and "id" in frame):
        bad("", "/required", f"`{kind}` is a reply and needs `re`, not `id`")
    if kind == "error" and "id" in frame:
        bad("/id", "/additionalProperties", "`error` never carries `id`")
    required, optional = _MESSAGES[kind]
    for field, rule in required.items():
        if field not in msg:
            bad("/msg", "/properties/msg/required", f"`{field}` is required")
            continue
        found = rule(msg[field])
        if found:
            bad(f"/msg/{field}", f"/properties/msg/properties/{field}/{found[0]}", found[1])
    for field, value in msg.items():
        if field == "type" or field in required:
            continue
        rule = optional.get(field)
        if rule is None:
            bad(f"/msg/{field}", "/properties/msg/additionalProperties", "property is not allowed")
            continue
        found = rule(value)
        if found:
            bad(f"/msg/{field}", f"/properties/msg/properties/{field}/{found[0]}", found[1])
    if violations:
        raise _Invalid("schema_violation", f"`{kind}` frame breaks its schema", violations[:64],
                       request_id)


# ---------------------------------------------------------------------------------------------
# Jobs


def _truncate(text, limit: int):
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Job:
    """One running job, handed to the action function.

    Attributes: ``id``, ``action``, ``params`` (a dict, validated by the supervisor against the
    action's schema), ``gpu`` (the job's GPU request dict or ``None``), ``deadline_unix_ms``.
    """

    def __init__(self, driver: "Driver", job_id: str, action: str, params: dict, gpu,
                 deadline_unix_ms: int):
        self.id = job_id
        self.action = action
        self.params = params
        self.gpu = gpu
        self.deadline_unix_ms = deadline_unix_ms
        self._driver = driver
        self._cancel = threading.Event()
        self.cancel_reason = None
        self._lock = threading.Lock()
        self._send_lock = threading.RLock()
        self._logs = {"stdout": collections.deque(), "stderr": collections.deque()}
        self._dropped = {"stdout": 0, "stderr": 0}
        self._progress = None
        self._finished = False
        self._state = None

    # Cancellation

    @property
    def cancelled(self) -> bool:
        """True once the job was cancelled (``cancel_job``, its deadline, or shutdown)."""
        return self._cancel.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleeps up to ``seconds``; returns True at once if the job is (or gets) cancelled."""
        return self._cancel.wait(max(0.0, float(seconds)))

    def raise_if_cancelled(self) -> None:
        """Raises :class:`Cancelled` if the job was cancelled."""
        if self._cancel.is_set():
            raise Cancelled(self.cancel_reason or "cancelled")

    def _request_cancel(self, reason: str) -> None:
        if not self._cancel.is_set():
            self.cancel_reason = reason
            self._cancel.set()

    # Progress and logs

    def progress(self, current, total=None, unit=None, message=None) -> None:
        """Reports progress; coalesced, only the latest value is sent at the next flush."""
        if not _is_num(current) or not 0 <= current <= 1e15:
            raise ValueError("progress `current` must be a finite number from 0 to 1e15")
        if total is not None and (not _is_num(total) or not 0 < total <= 1e15):
            raise ValueError("progress `total` must be a finite number above 0, at most 1e15")
        msg = {"type": "job_progress", "job_id": self.id, "current": current}
        if total is not None:
            msg["total"] = total
        if unit:
            msg["unit"] = _truncate(unit, 32)
        if message is not None:
            msg["message"] = _truncate(message, PROGRESS_MESSAGE_LEN)
        with self._lock:
            self._progress = msg

    def log(self, *lines, stream: str = "stdout") -> None:
        """Queues log lines (each argument may hold several, split at newlines). Bounded:
        beyond ``log_buffer_lines`` the oldest queued lines are dropped and counted."""
        if stream not in self._logs:
            raise ValueError("stream must be 'stdout' or 'stderr'")
        split = []
        for item in lines:
            if isinstance(item, bytes):
                item = item.decode("utf-8", "replace")
            split.extend(str(item).splitlines() or [""])
        limit = self._driver.log_buffer_lines
        with self._lock:
            queue = self._logs[stream]
            for line in split:
                queue.append(line)
            while len(queue) > limit:
                queue.popleft()
                self._dropped[stream] += 1

    def _flush(self, final: bool = False) -> None:
        """Sends pending progress and logs for this job, in order, within the frame limit."""
        with self._send_lock:
            if self._finished and not final:
                return
            with self._lock:
                progress, self._progress = self._progress, None
            if progress is not None:
                self._driver._send({"msg": progress})
            for stream in ("stdout", "stderr"):
                while True:
                    batch, dropped = self._take_batch(stream)
                    if not batch and not dropped:
                        break
                    if not batch:
                        # Only drops to report: job_log needs one line, so say so in one.
                        batch = [f"[drover_driver: {dropped} lines dropped]"]
                    self._driver._send({"msg": {
                        "type": "job_log", "job_id": self.id, "stream": stream,
                        "lines": batch, "dropped": dropped,
                    }})

    def _take_batch(self, stream):
        budget = self._driver._max_frame() - 256 - len(self.id)
        chunk = max(64, min(LOG_LINE_LEN, budget // 6 - 16))
        batch, size = [], 0
        with self._lock:
            queue = self._logs[stream]
            while queue and len(batch) < LOG_LINES_PER_FRAME:
                line = queue[0]
                if len(line) > chunk:
                    # Split an over-long line in place; the pieces go out in order.
                    queue.popleft()
                    pieces = [line[i:i + chunk] for i in range(0, len(line), chunk)]
                    queue.extendleft(reversed(pieces))
                    line = queue[0]
                cost = len(json.dumps(line, ensure_ascii=False).encode("utf-8", "replace")) + 1
                if batch and size + cost > budget:
                    break
                batch.append(queue.popleft())
                size += cost
            dropped = self._dropped[stream]
            self._dropped[stream] = 0
        return batch, dropped

    # Lease requests

    def acquire_gpu(self, image: str, *, disk_gib: int, max_runtime_s: int, gpu: dict | None = None,
                    onstart: str | None = None, env: dict | None = None, bandwidth_gib: float = 0.0,
                    timeout: float | None = None) -> dict:
        """Asks the supervisor to rent GPUs for this job; returns the ``lease`` dict. ``gpu``
        defaults to the job's own GPU request. Raises :class:`RequestError` on refusal (for
        example ``cost_gate_rejected``), ``ValueError`` for arguments outside the schema."""
        gpu = gpu if gpu is not None else self.gpu
        if gpu is None:
            raise ValueError("acquire_gpu needs a `gpu` request (the job has none)")
        msg = {"type": "acquire_gpu", "job_id": self.id, "gpu": _check_gpu(gpu),
               "image": image, "disk_gib": disk_gib, "max_runtime_s": max_runtime_s}
        if not isinstance(image, str) or not 1 <= len(image) <= 1024 or not _IMAGE_RE.fullmatch(image):
            raise ValueError("`image` must be 1 to 1024 characters without whitespace")
        if not _is_int(disk_gib) or not 8 <= disk_gib <= 16384:
            raise ValueError("`disk_gib` must be an integer from 8 to 16384")
        if not _is_int(max_runtime_s) or not 60 <= max_runtime_s <= 7 * 24 * 3600:
            raise ValueError("`max_runtime_s` must be an integer from 60 to 604800")
        if onstart is not None:
            if not isinstance(onstart, str) or len(onstart) > 4096:
                raise ValueError("`onstart` must be a string of at most 4096 characters")
            msg["onstart"] = onstart
        if env:
            if len(env) > 32:
                raise ValueError("`env` may hold at most 32 variables")
            for key, value in env.items():
                if not isinstance(key, str) or not _ENV_NAME_RE.fullmatch(key):
                    raise ValueError("`env` names must match ^[A-Za-z_][A-Za-z0-9_]{0,127}$")
                if not isinstance(value, str) or len(value) > 256:
                    raise ValueError(f"`env` value of {key} must be a string of at most 256 characters")
            msg["env"] = dict(env)
        if bandwidth_gib:
            if not _is_num(bandwidth_gib) or not 0 <= bandwidth_gib <= 1_000_000:
                raise ValueError("`bandwidth_gib` must be a number from 0 to 1000000")
            msg["bandwidth_gib"] = bandwidth_gib
        return self._driver.request(msg, ("lease",), timeout)

    def lease_status(self, lease_id: str, timeout: float | None = None) -> dict:
        """The current ``lease`` dict of one of this driver's leases."""
        return self._driver.request({"type": "lease_status", "lease_id": _check_id(lease_id)},
                                    ("lease",), timeout)

    def lease_logs(self, lease_id: str, tail: int = 100, timeout: float | None = None) -> dict:
        """The ``lease_log`` dict (``lines``, ``truncated``) of a lease's instance."""
        if not _is_int(tail) or not 1 <= tail <= LOG_LINES_PER_FRAME:
            raise ValueError(f"`tail` must be an integer from 1 to {LOG_LINES_PER_FRAME}")
        return self._driver.request({"type": "lease_logs", "lease_id": _check_id(lease_id),
                                     "tail": tail}, ("lease_log",), timeout)

    def release_gpu(self, lease_id: str, timeout: float | None = None) -> dict:
        """Gives a lease back; returns the final ``lease`` dict. Releasing twice is harmless."""
        return self._driver.request({"type": "release_gpu", "lease_id": _check_id(lease_id)},
                                    ("lease",), timeout)


def _check_id(value) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not _ID_RE.fullmatch(value):
        raise ValueError("ids must match ^[A-Za-z0-9][A-Za-z0-9._-]*$, 1 to 64 characters")
    return value


def _check_gpu(gpu: dict) -> dict:
    allowed = {"count", "models", "min_gpu_ram_gib", "max_usd_per_hour", "min_reliability",
               "pricing"}
    if not isinstance(gpu, dict) or set(gpu) - allowed or "count" not in gpu:
        raise ValueError(f"`gpu` must be an object with `count` and only {sorted(allowed)}")
    if not _is_int(gpu["count"]) or not 1 <= gpu["count"] <= 16:
        raise ValueError("`gpu.count` must be an integer from 1 to 16")
    models = gpu.get("models", [])
    if (not isinstance(models, list) or len(models) > 16 or len(set(map(str, models))) != len(models)
            or not all(isinstance(m, str) and len(m) <= 64 and _MODEL_RE.fullmatch(m) for m in models)):
        raise ValueError("`gpu.models` must be at most 16 distinct model names")
    if "min_gpu_ram_gib" in gpu and (not _is_int(gpu["min_gpu_ram_gib"])
                                     or not 1 <= gpu["min_gpu_ram_gib"] <= 4096):
        raise ValueError("`gpu.min_gpu_ram_gib` must be an integer from 1 to 4096")
    if "max_usd_per_hour" in gpu and (not _is_num(gpu["max_usd_per_hour"])
                                      or not 0 < gpu["max_usd_per_hour"] <= 1e6):
        raise ValueError("`gpu.max_usd_per_hour` must be above 0, at most 1e6")
    if "min_reliability" in gpu and (not _is_num(gpu["min_reliability"])
                                     or not 0 <= gpu["min_reliability"] <= 1):
        raise ValueError("`gpu.min_reliability` must be from 0 to 1")
    if gpu.get("pricing", "on_demand") not in ("on_demand", "interruptible"):
        raise ValueError("`gpu.pricing` must be 'on_demand' or 'interruptible'")
    return gpu


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
        self._actions = {}
        self.session = None  # the welcome message, once received
        self._transport = None
        self._lock = threading.Lock()
        self._next_id = 1
        self._pending = {}
        self._jobs = {}
        self._done = threading.Event()
        self._exit_code = 0
        self._shutting_down = False
        self._records = collections.deque()
        self._records_dropped = 0

    # Declaring actions

    def action(self, name: str | None = None, *, params=True):
        """Decorator: registers ``fn(job)`` as an action. ``params`` is the JSON Schema (an
        object or a boolean) the supervisor validates job params against before dispatch."""
        def register(fn):
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

    def log(self, level: str, message: str, **fields) -> None:
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
        self._transport = transport or Transport.from_env()
        if self.max_frame_bytes is not None:
            self._transport.max_frame_bytes = self.max_frame_bytes
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
        self._transport.write_frame(encode(frame))

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

    def request(self, msg: dict, accepts=("lease",), timeout: float | None = None) -> dict:
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
        transport = self._transport
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
                self._transport.max_frame_bytes = msg["max_frame_bytes"]
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
        self._transport.closed = True
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
