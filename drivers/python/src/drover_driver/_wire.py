"""The wire half of drover_driver: constants from ``schemas/transport/``, the errors, the
length-prefixed framing (:class:`Transport`), strict decoding of incoming frames with the checks
the supervisor's messages need, and the argument checks of outgoing lease requests. Everything
public here is re-exported by the package; import it from ``drover_driver``."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import threading
from typing import Any, Callable, Optional


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
# Checks of outgoing values


def _truncate(text, limit: int):
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
