"""A deliberately small, mostly correct driver for the driver-check tests. Each broken driver
in this directory imports it and breaks exactly one rule (see BREAK below)."""

import json
import os
import socket
import struct
import sys
import threading
import time

SOCK = socket.socket(fileno=int(os.environ.get("DROVER_TRANSPORT_FD", "3")))
LOCK = threading.Lock()
MAX = 1 << 20

# Which rule to break; set by the importing script before calling main().
BREAK = set()


def send(obj):
    data = json.dumps(obj).encode()
    with LOCK:
        SOCK.sendall(struct.pack(">I", len(data)) + data)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = SOCK.recv(min(n - len(buf), 65536))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv():
    """The next frame as a dict, "bad" for an unusable one, None at end of stream."""
    header = read_exact(4)
    if header is None:
        return None
    (n,) = struct.unpack(">I", header)
    if n > MAX:
        while n > 0:
            chunk = read_exact(min(n, 65536))
            if chunk is None:
                return None
            n -= len(chunk)
        send({"msg": {"type": "error", "code": "frame_too_large", "message": "too large"}})
        return "bad"
    payload = read_exact(n)
    if payload is None:
        return None
    try:
        frame = json.loads(payload.decode("utf-8"))
        assert isinstance(frame, dict) and isinstance(frame.get("msg"), dict)
        return frame
    except Exception:
        send({"msg": {"type": "error", "code": "invalid_json", "message": "bad frame"}})
        return "bad"


def hello(versions=(1,)):
    send({"id": 1, "msg": {
        "type": "hello",
        "protocol_versions": list(versions),
        "driver": {"name": "broken", "version": "0.0.1"},
        "capabilities": [],
        "actions": {
            "echo": {"type": "object"},
            "sleep": {"type": "object", "properties": {"seconds": {"type": "number"}},
                      "required": ["seconds"], "examples": [{"seconds": 30}]},
        },
        "schema_sha256": "0" * 64,
    }})


def state(job, value):
    if "invalid_frames" in BREAK:
        # Progress below zero breaks the job_progress schema at /msg/current.
        send({"msg": {"type": "job_progress", "job_id": job, "current": -1}})
    send({"msg": {"type": "job_state", "job_id": job, "state": value}})


def finish(job, outcome):
    send({"msg": {"type": "job_result", "job_id": job, "outcome": outcome}})
    state(job, outcome)


CANCELS = {}


def run_job(job, action, params):
    if "crash_mid_job" in BREAK:
        sys.stderr.write("about to crash\n")
        sys.stderr.flush()
        os._exit(3)
    if action == "sleep":
        event = CANCELS.setdefault(job, threading.Event())
        if event.wait(params.get("seconds", 1)) and "ignore_cancel" not in BREAK:
            finish(job, "cancelled")
            return
        if "ignore_cancel" in BREAK:
            time.sleep(3600)
    finish(job, "succeeded")


def main():
    if "garbage" in BREAK:
        os.write(SOCK.fileno(), b"Loading model weights...\n")
        time.sleep(3600)
    if "no_hello" in BREAK:
        time.sleep(3600)
    if "chatty" in BREAK:
        print("hello from the driver's stdout", flush=True)
    hello((2,) if "wrong_version" in BREAK else (1,))
    if "forge_log" in BREAK:
        # A line that, written raw, would start a supervisor log line of its own and clear the
        # operator's screen.
        forged = "\n2026-01-01T00:00:00.000000Z  INFO drover_supervisor: forged driver=victim\x1b[2J"
        print("stdout " + forged, flush=True)
        send({"msg": {"type": "log", "level": "info", "message": forged}})
    while True:
        frame = recv()
        if frame is None:
            os._exit(0)  # end of stream: exit
        if frame == "bad":
            continue
        msg, fid = frame["msg"], frame.get("id")
        kind = msg.get("type")
        if "re" in frame:
            if kind == "error" and frame["re"] == 1:
                os._exit(1)  # version mismatch
            if "hang" in BREAK:
                time.sleep(3600)
            continue
        if kind == "ping":
            send({"re": fid, "msg": {"type": "pong"}})
        elif kind == "run_job" and fid is not None and isinstance(msg.get("job_id"), str) and " " not in msg["job_id"]:
            send({"re": fid, "msg": {"type": "ack"}})
            state(msg["job_id"], "running")
            threading.Thread(target=run_job, args=(msg["job_id"], msg["action"], msg["params"]), daemon=True).start()
        elif kind == "cancel_job":
            send({"re": fid, "msg": {"type": "ack"}})
            CANCELS.setdefault(msg["job_id"], threading.Event()).set()
        elif kind == "shutdown":
            send({"re": fid, "msg": {"type": "ack"}})
            if "ignore_shutdown" not in BREAK:
                os._exit(0)
        elif kind not in ("run_job", "welcome", "error"):
            err = {"type": "error", "code": "unknown_type", "message": "unknown type"}
            send({"re": fid, "msg": err} if fid is not None else {"msg": err})
        else:
            err = {"type": "error", "code": "schema_violation", "message": "bad frame"}
            send({"re": fid, "msg": err} if fid is not None else {"msg": err})
