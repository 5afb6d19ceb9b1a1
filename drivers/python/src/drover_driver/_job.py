"""Jobs of drover_driver: :class:`Job`, the handle an action gets (params, cancellation,
coalesced progress, bounded logs, lease requests). Re-exported by the package."""

from __future__ import annotations

import collections
import json
import threading
from typing import TYPE_CHECKING, Any, Optional

from ._wire import (
    _ENV_NAME_RE,
    _IMAGE_RE,
    LOG_LINE_LEN,
    LOG_LINES_PER_FRAME,
    PROGRESS_MESSAGE_LEN,
    Cancelled,
    _check_gpu,
    _check_id,
    _is_int,
    _is_num,
    _truncate,
)

if TYPE_CHECKING:
    from . import Driver


class Job:
    """One running job, handed to the action function.

    Attributes: ``id``, ``action``, ``params`` (a dict, validated by the supervisor against the
    action's schema), ``gpu`` (the job's GPU request dict or ``None``), ``deadline_unix_ms``.
    """

    def __init__(self, driver: Driver, job_id: str, action: str, params: dict[str, Any],
                 gpu: Optional[dict[str, Any]], deadline_unix_ms: int):
        self.id = job_id
        self.action = action
        self.params = params
        self.gpu = gpu
        self.deadline_unix_ms = deadline_unix_ms
        self._driver = driver
        self._cancel = threading.Event()
        self.cancel_reason: Optional[str] = None
        self._lock = threading.Lock()
        self._send_lock = threading.RLock()
        self._logs: dict[str, collections.deque[str]] = {
            "stdout": collections.deque(), "stderr": collections.deque()}
        self._dropped = {"stdout": 0, "stderr": 0}
        self._progress: Optional[dict[str, Any]] = None
        self._finished = False
        self._state: Optional[str] = None

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

    def progress(self, current: float, total: Optional[float] = None, unit: Optional[str] = None,
                 message: Optional[str] = None) -> None:
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

    def log(self, *lines: object, stream: str = "stdout") -> None:
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
