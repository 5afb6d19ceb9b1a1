# A driver for the supervisor's tests, standard library only. argv[1] picks a behaviour:
#
#   good             a well-behaved driver (the actions below)
#   silent           never says hello
#   wrong-version    offers protocol version 99 only, then exits 1 once refused
#   bad-schema       declares an action whose params schema does not compile
#   garbage-frames   after the handshake, sends frames that are not JSON, forever
#   ignore-shutdown  ignores `shutdown`, transport EOF and SIGTERM
#   term-only        ignores `shutdown` and transport EOF; exits with status 7 on SIGTERM
#   hang             after the handshake, stops reading its transport (no pong)
#   stdout-garbage   writes binary junk and an overlong line to stdout, then is good
#   some-bad-frames  after the handshake, sends four invalid frames (not JSON, a schema
#                    violation, an unknown type, one over the 1 MiB limit), then is good
#   crash-at-start   exits with status 2 before saying anything
#   slow-pong        answers every ping 300 ms late, then is good
#   unframed         writes plain text to its transport instead of frames, then waits
#
# The transport is fd $DROVER_TRANSPORT_FD, or stdin/stdout when that is unset (a driver
# configured with transport = "stdio").
#
# Actions (a well-behaved driver offers them all):
#   echo   {"text": string}    starting, running, a log line, result {"echo": text}, succeeded
#   sleep  {"seconds": n}      running until done (succeeded) or cancelled (cancelled);
#                              with "ignore_cancel": true it ignores cancel_job
#   crash  {}                  running, then the process exits with status 3
#   flood  {"frames": n}       n job_log frames of 100 lines each, then succeeded
#   gpu    {"gpu"?: request}   acquire_gpu, lease_status, release_gpu; the replies are the output
#   steal  {"lease_id": id}    release_gpu on someone else's lease; the reply is the output
#   gpu_keep {}                acquire_gpu and end without releasing; the lease is the output
#   gpu_many {"n": N}          N rounds of acquire_gpu + release_gpu; output {leases, last}
#   gpu_burst {"n": N}         N acquire_gpu at once (image example/slow:1, which the test
#                              broker answers slowly); output {leases, refused: [codes]}
#   errors {"wait_for": n}     the codes of the `error` events received so far are the output
#                              (after waiting up to 10 s until there are n)
#   disorder {}                running, then starting (out of order), a state for a job that
#                              does not exist, then succeeded
#   syscall {}                 calls ptrace(2), which the default profile refuses
#   freeze {}                  running, then the driver stops reading its transport (hung)
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

MODE = sys.argv[1]
NAME = sys.argv[2] if len(sys.argv) > 2 else "scripted"
SOCK = socket.socket(fileno=int(os.environ.get("DROVER_TRANSPORT_FD", "0")))
LOCK = threading.Lock()
CANCELLED = {}
FROZEN = threading.Event()
ERRORS = []
REPLIES = {}
REPLY_READY = threading.Condition()
NEXT_ID = [1000]


def send(obj):
    data = json.dumps(obj).encode()
    with LOCK:
        SOCK.sendall(struct.pack(">I", len(data)) + data)


def read_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = SOCK.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def recv():
    head = read_exact(4)
    if head is None:
        return None
    body = read_exact(struct.unpack(">I", head)[0])
    return None if body is None else json.loads(body)


def event(msg):
    send({"msg": msg})


def request(msg):
    """Sends a request from a job thread and waits for the reply the main loop files."""
    with REPLY_READY:
        NEXT_ID[0] += 1
        mid = NEXT_ID[0]
    send({"id": mid, "msg": msg})
    with REPLY_READY:
        while mid not in REPLIES:
            REPLY_READY.wait()
        return REPLIES.pop(mid)


def state(job, phase, message=None):
    msg = {"type": "job_state", "job_id": job, "state": phase}
    if message:
        msg["message"] = message
    event(msg)


ACTIONS = {
    "echo": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 64}},
             "required": ["text"], "additionalProperties": False},
    "sleep": {"type": "object", "properties": {"seconds": {"type": "number", "minimum": 0},
                                               "ignore_cancel": {"type": "boolean"}},
              "required": ["seconds"]},
    "crash": {"type": "object"},
    "flood": {"type": "object", "properties": {"frames": {"type": "integer", "minimum": 1}}},
    "gpu": {"type": "object", "properties": {"gpu": {"type": "object"}}},
    "gpu_keep": {"type": "object"},
    "gpu_many": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
                 "required": ["n"]},
    "gpu_burst": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}},
                  "required": ["n"]},
    "steal": {"type": "object", "properties": {"lease_id": {"type": "string"}},
              "required": ["lease_id"]},
    "errors": {"type": "object"},
    "disorder": {"type": "object"},
    "syscall": {"type": "object"},
    "freeze": {"type": "object"},
}
if MODE == "bad-schema":
    ACTIONS["echo"] = {"type": "no-such-type"}


def run_job(job, action, params):
    if action == "echo":
        state(job, "starting")
        state(job, "running")
        event({"type": "job_log", "job_id": job, "stream": "stdout", "lines": ["echo " + params["text"]]})
        event({"type": "job_progress", "job_id": job, "current": 1, "total": 1})
        event({"type": "job_result", "job_id": job, "outcome": "succeeded", "output": {"echo": params["text"]}})
        state(job, "succeeded")
    elif action == "sleep":
        state(job, "running")
        until = time.time() + params["seconds"]
        while time.time() < until:
            if CANCELLED.get(job) and not params.get("ignore_cancel"):
                event({"type": "job_result", "job_id": job, "outcome": "cancelled"})
                state(job, "cancelled", "cancelled on request")
                return
            time.sleep(0.02)
        event({"type": "job_result", "job_id": job, "outcome": "succeeded"})
        state(job, "succeeded")
    elif action == "crash":
        state(job, "running")
        sys.stderr.write("about to crash\n")
        sys.stderr.flush()
        os._exit(3)
    elif action == "flood":
        state(job, "running")
        lines = ["flood line %d " % i + "x" * 200 for i in range(100)]
        for _ in range(params.get("frames", 1)):
            event({"type": "job_log", "job_id": job, "stream": "stdout", "lines": lines})
        state(job, "succeeded")
    elif action == "gpu":
        state(job, "running")
        lease = request({"type": "acquire_gpu", "job_id": job, "gpu": params.get("gpu", {"count": 1}),
                         "image": "example/image:1", "disk_gib": 16, "max_runtime_s": 600})
        out = {"acquire": lease}
        if lease["type"] == "lease":
            lid = lease["lease_id"]
            out["status"] = request({"type": "lease_status", "lease_id": lid})
            out["release"] = request({"type": "release_gpu", "lease_id": lid})
        event({"type": "job_result", "job_id": job, "outcome": "succeeded", "output": out})
        state(job, "succeeded")
    elif action == "gpu_keep":
        state(job, "running")
        lease = request({"type": "acquire_gpu", "job_id": job, "gpu": {"count": 1},
                         "image": "example/image:1", "disk_gib": 16, "max_runtime_s": 600})
        event({"type": "job_result", "job_id": job, "outcome": "succeeded", "output": {"acquire": lease}})
        state(job, "succeeded")
    elif action == "gpu_many":
        state(job, "running")
        leases, last = 0, None
        for _ in range(params["n"]):
            last = request({"type": "acquire_gpu", "job_id": job, "gpu": {"count": 1},
                            "image": "example/image:1", "disk_gib": 16, "max_runtime_s": 600})
            if last["type"] != "lease":
                break
            leases += 1
            request({"type": "release_gpu", "lease_id": last["lease_id"]})
        event({"type": "job_result", "job_id": job, "outcome": "succeeded",
               "output": {"leases": leases, "last": last}})
        state(job, "succeeded")
    elif action == "gpu_burst":
        state(job, "running")
        replies = []

        def one():
            replies.append(request({"type": "acquire_gpu", "job_id": job, "gpu": {"count": 1},
                                    "image": "example/slow:1", "disk_gib": 16,
                                    "max_runtime_s": 600}))

        threads = [threading.Thread(target=one) for _ in range(params["n"])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        leases = sum(1 for r in replies if r["type"] == "lease")
        refused = [r["code"] for r in replies if r["type"] == "error"]
        event({"type": "job_result", "job_id": job, "outcome": "succeeded",
               "output": {"leases": leases, "refused": refused}})
        state(job, "succeeded")
    elif action == "errors":
        until = time.time() + 10
        while len(ERRORS) < params.get("wait_for", 0) and time.time() < until:
            time.sleep(0.01)
        event({"type": "job_result", "job_id": job, "outcome": "succeeded", "output": list(ERRORS)})
        state(job, "succeeded")
    elif action == "freeze":
        state(job, "running")
        FROZEN.set()
    elif action == "disorder":
        state(job, "running")
        state(job, "starting")
        state("ghost-job", "running")
        time.sleep(0.2)
        event({"type": "job_result", "job_id": job, "outcome": "succeeded", "output": list(ERRORS)})
        state(job, "succeeded")
    elif action == "syscall":
        import ctypes
        state(job, "running")
        ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)  # ptrace(PTRACE_TRACEME) on x86_64
        state(job, "succeeded")
    elif action == "steal":
        state(job, "running")
        reply = request({"type": "release_gpu", "lease_id": params["lease_id"]})
        event({"type": "job_result", "job_id": job, "outcome": "succeeded", "output": reply})
        state(job, "succeeded")


def main():
    if MODE == "crash-at-start":
        sys.exit(2)
    if MODE == "unframed":
        SOCK.sendall(b"HTTP/1.1 200 OK, not a frame at all\r\n" * 10)
        time.sleep(3600)
    if MODE == "silent":
        time.sleep(3600)
    if MODE == "ignore-shutdown":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if MODE == "term-only":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(7))
    if MODE == "stdout-garbage":
        sys.stdout.buffer.write(b"\x00\xff garbage \x1b[31m not a frame\n" + b"y" * 10000 + b"\n")
        sys.stdout.flush()
    versions = [99] if MODE == "wrong-version" else [1]
    send({"id": 1, "msg": {"type": "hello", "protocol_versions": versions,
                           "driver": {"name": NAME, "version": "0.1.0"},
                           "actions": ACTIONS, "schema_sha256": "0" * 64}})
    answer = recv()
    if answer is None or answer["msg"]["type"] != "welcome":
        sys.stderr.write("refused: %s\n" % json.dumps(answer))
        sys.exit(1)
    if MODE == "garbage-frames":
        while True:
            junk = b"this is not json"
            with LOCK:
                SOCK.sendall(struct.pack(">I", len(junk)) + junk)
            time.sleep(0.001)
    if MODE == "hang":
        time.sleep(3600)
    if MODE == "some-bad-frames":
        for junk in [b"{not json", json.dumps({"msg": {"type": "job_progress", "job_id": "j 1", "current": -1}}).encode(),
                     json.dumps({"msg": {"type": "teleport"}}).encode(),
                     b" " * (2 << 20)]:
            with LOCK:
                SOCK.sendall(struct.pack(">I", len(junk)) + junk)
    while True:
        if FROZEN.is_set():
            time.sleep(3600)
        frame = recv()
        if frame is None:
            if MODE in ("ignore-shutdown", "term-only"):
                time.sleep(3600)
            sys.exit(0)
        msg = frame["msg"]
        kind = msg["type"]
        if "re" in frame:
            with REPLY_READY:
                REPLIES[frame["re"]] = msg
                REPLY_READY.notify_all()
        elif kind == "error":
            ERRORS.append(msg["code"])
        elif kind == "ping":
            pong = {"re": frame["id"], "msg": {"type": "pong"}}
            if MODE == "slow-pong":
                threading.Timer(0.3, send, args=(pong,)).start()
            else:
                send(pong)
        elif kind == "run_job":
            send({"re": frame["id"], "msg": {"type": "ack"}})
            threading.Thread(target=run_job, args=(msg["job_id"], msg["action"], msg["params"]),
                             daemon=True).start()
        elif kind == "cancel_job":
            send({"re": frame["id"], "msg": {"type": "ack"}})
            CANCELLED[msg["job_id"]] = True
        elif kind == "shutdown":
            send({"re": frame["id"], "msg": {"type": "ack"}})
            if MODE not in ("ignore-shutdown", "term-only"):
                sys.exit(0)


main()
