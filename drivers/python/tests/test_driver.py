"""Tests of drover_driver: the module in-process, and real driver processes on a socketpair.

Every frame a driver writes in these tests is also checked by `drover validate` (the same
pipeline the supervisor runs) when the test ends. The binary comes from DROVER_BIN, or
target/debug/drover under CARGO_TARGET_DIR or the repository; test.sh builds it.
"""

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
FIXTURE = os.path.join(HERE, "fixture_driver.py")

import drover_driver as dd  # the installed package (test.sh installs it into a fresh venv)


def drover_bin():
    candidates = [os.environ.get("DROVER_BIN")]
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    candidates.append(os.path.join(target, "debug", "drover"))
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise AssertionError("no drover binary: set DROVER_BIN or run drivers/python/test.sh")


def validate_payloads(payloads):
    """Runs `drover validate` on each payload; returns the failures."""
    binary = drover_bin()
    failures = []
    for payload in payloads:
        result = subprocess.run([binary, "validate"], input=payload, capture_output=True, timeout=30)
        if result.returncode != 0:
            failures.append((payload[:300], result.stdout.decode(errors="replace")))
    return failures


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


class Session:
    """A fake supervisor holding one end of a socketpair; the driver process holds the other."""

    def __init__(self, test, script=FIXTURE, env=None, fd3=False):
        self.test = test
        ours, theirs = socket.socketpair()
        self.sock = ours
        self.sock.settimeout(10)
        base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
        base.update(env or {})
        self.stdout = tempfile.TemporaryFile()
        self.stderr = tempfile.TemporaryFile()
        if fd3:
            fd = theirs.fileno()
            # The shell puts the socket at fd 3 and closes the original, as drover does.
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", f'exec "$0" "$1" 3<&{fd} {fd}<&-', sys.executable, script],
                env=base, stdout=self.stdout, stderr=self.stderr, pass_fds=(fd,))
        else:
            base["DROVER_TRANSPORT_FD"] = str(theirs.fileno())
            self.proc = subprocess.Popen(
                [sys.executable, script], env=base, stdout=self.stdout, stderr=self.stderr,
                pass_fds=(theirs.fileno(),))
        theirs.close()
        self.buf = b""
        self.payloads = []
        self.next_id = 100
        test.addCleanup(self.close)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.stdout.close()
        self.stderr.close()
        failures = validate_payloads(list(dict.fromkeys(self.payloads))[:200])
        self.test.assertEqual(failures, [], "frames the driver wrote fail `drover validate`")

    def output(self, which="stderr"):
        f = self.stderr if which == "stderr" else self.stdout
        if f.closed:
            return ""
        f.seek(0)
        return f.read().decode(errors="replace")

    def send(self, obj):
        self.sock.sendall(frame(json.dumps(obj).encode()))

    def request(self, msg):
        self.next_id += 1
        self.send({"id": self.next_id, "msg": msg})
        return self.next_id

    def recv(self, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) >= 4 + n:
                    payload, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
                    self.payloads.append(payload)
                    return json.loads(payload)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no frame from the driver in time; stderr:\n" + self.output())
            self.sock.settimeout(left)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise EOFError("driver closed the transport; stderr:\n" + self.output())
            self.buf += chunk

    def recv_type(self, kind, timeout=10):
        """Frames up to and including the first of type `kind`: (that frame, those before)."""
        before = []
        while True:
            f = self.recv(timeout)
            if f["msg"]["type"] == kind:
                return f, before
            before.append(f)

    def handshake(self, max_frame=1 << 20):
        hello = self.recv()
        self.test.assertEqual(hello["msg"]["type"], "hello")
        self.send({"re": hello["id"], "msg": {
            "type": "welcome", "protocol_version": 1, "session_id": "sess-1",
            "heartbeat_ms": 5000, "max_frame_bytes": max_frame}})
        return hello

    def run_job(self, action, params=None, job_id="job-1", deadline_ms=None, gpu=None):
        msg = {"type": "run_job", "job_id": job_id, "action": action, "params": params or {},
               "deadline_unix_ms": deadline_ms or int(time.time() * 1000) + 600_000}
        if gpu:
            msg["gpu"] = gpu
        rid = self.request(msg)
        ack = self.recv()
        self.test.assertEqual(ack, {"re": rid, "msg": {"type": "ack"}})
        return rid

    def job_end(self, timeout=10):
        """Reads until the terminal job_state; returns (result, state, frames before)."""
        frames = []
        while True:
            f = self.recv(timeout)
            frames.append(f)
            if f["msg"]["type"] == "job_state" and f["msg"]["state"] in (
                    "succeeded", "failed", "cancelled"):
                results = [x for x in frames if x["msg"]["type"] == "job_result"]
                self.test.assertEqual(len(results), 1, "exactly one job_result")
                self.test.assertIs(frames[-2], results[0], "job_result right before the terminal state")
                return results[0]["msg"], f["msg"], frames

    def exit_code(self, timeout=10):
        return self.proc.wait(timeout)


class InProcess(unittest.TestCase):
    def test_the_installed_package_is_under_test(self):
        # Not the source tree: test.sh built the distribution and installed it into a venv.
        installed = os.path.realpath(dd.__file__)
        self.assertTrue(installed.startswith(os.path.realpath(sys.prefix) + os.sep), installed)
        self.assertNotEqual(sys.prefix, sys.base_prefix, "the tests run in a venv")
        self.assertTrue(os.path.exists(os.path.join(os.path.dirname(installed), "py.typed")))
        from importlib import metadata
        self.assertEqual(metadata.version("drover-driver-sdk"), dd.__version__)

    def test_schema_digest_is_the_repositorys(self):
        with open(os.path.join(REPO, "schemas", "transport", "SHA256SUMS"), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        self.assertEqual(dd.SCHEMA_SHA256, digest,
                         "schemas changed: update SCHEMA_SHA256 (sha256sum schemas/transport/SHA256SUMS)")

    def test_transport_round_trip_and_limits(self):
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        t = dd.Transport(b.fileno(), b.fileno(), max_frame_bytes=4096)
        a.sendall(frame(b'{"msg":{}}') + frame(b"x" * 5000) + frame(b"{}"))
        self.assertEqual(t.read_frame(), b'{"msg":{}}')
        with self.assertRaises(dd.FrameTooLarge) as e:
            t.read_frame()
        self.assertEqual((e.exception.length, e.exception.limit), (5000, 4096))
        self.assertEqual(t.read_frame(), b"{}", "the oversize frame was skipped, the next one read")
        t.write_frame(b"hello")
        self.assertEqual(a.recv(100), frame(b"hello"))
        with self.assertRaises(dd.FrameTooLarge):
            t.write_frame(b"z" * 4097)
        a.sendall(b"GET / HTTP/1.1\r\n")
        with self.assertRaises(dd.Unframed):
            t.read_frame()

    def test_transport_eof(self):
        a, b = socket.socketpair()
        self.addCleanup(b.close)
        t = dd.Transport(b.fileno(), b.fileno())
        a.sendall(struct.pack(">I", 10) + b"abc")
        a.close()
        with self.assertRaises(dd.TransportClosed):
            t.read_frame()
        c, d = socket.socketpair()
        self.addCleanup(d.close)
        c.close()
        self.assertIsNone(dd.Transport(d.fileno(), d.fileno()).read_frame())

    def test_decode_rejects_what_the_supervisor_rejects(self):
        cases = [
            (b"\xff\xfe", "invalid_utf8"),
            (b"{", "invalid_json"),
            (b"", "invalid_json"),
            (b"[1]", "invalid_json"),
            (b'{"id":1,"id":2,"msg":{"type":"ping"}}', "invalid_json"),
            (b'{"id":1,"msg":{"type":"ping","x":NaN}}', "invalid_json"),
            (b"[" * 100000 + b"]" * 100000, "invalid_json"),
            (b'{"id":1,"msg":{"type":"teleport"}}', "unknown_type"),
            (b'{"id":1,"msg":{"type":"job_log"}}', "unexpected_message"),
            (b'{"msg":{"type":"ping"}}', "schema_violation"),
            (b'{"id":0,"msg":{"type":"ping"}}', "schema_violation"),
            (b'{"id":1,"re":2,"msg":{"type":"ping"}}', "schema_violation"),
            (b'{"id":1,"msg":{"type":"shutdown","grace_ms":-1}}', "schema_violation"),
            (b'{"id":1,"msg":{"type":"run_job","job_id":"a b","action":"x","params":{},'
             b'"deadline_unix_ms":1}}', "schema_violation"),
            (b'{"id":1,"msg":{"type":"cancel_job","job_id":"j\\n","reason":""}}', "schema_violation"),
        ]
        for payload, code in cases:
            with self.subTest(payload=payload[:60]):
                with self.assertRaises(dd._Invalid) as e:
                    dd.decode(payload)
                self.assertEqual(e.exception.code, code)
        with self.assertRaises(dd._Invalid) as e:
            dd.decode(b'{"id":3,"msg":{"type":"run_job","job_id":"j","action":"x","params":{},'
                      b'"deadline_unix_ms":1,"extra":true}}')
        self.assertEqual(e.exception.request_id, 3)
        self.assertEqual(e.exception.violations[0]["instance_path"], "/msg/extra")
        ok = dd.decode(b'{"re":1,"msg":{"type":"welcome","protocol_version":1,"session_id":"s",'
                       b'"heartbeat_ms":5000,"max_frame_bytes":4096}}')
        self.assertEqual(ok["msg"]["session_id"], "s")

    def test_encode_refuses_non_json(self):
        with self.assertRaises(ValueError):
            dd.encode({"msg": {"x": float("nan")}})
        self.assertEqual(dd.encode({"msg": "\udcff"}), b'{"msg":"?"}')

    def test_declarations_are_checked(self):
        with self.assertRaises(ValueError):
            dd.Driver("Not_Kebab")
        with self.assertRaises(ValueError):
            dd.Driver("ok", "has space")
        with self.assertRaises(ValueError):
            dd.Driver("ok", max_frame_bytes=100)
        d = dd.Driver("ok")
        with self.assertRaises(ValueError):
            d.action("Bad-Name")(lambda job: None)
        with self.assertRaises(ValueError):
            d.action(params="not a schema")(lambda job: None)
        with self.assertRaises(ValueError):
            d.run()  # no actions


class Protocol(unittest.TestCase):
    def test_hello_declares_everything(self):
        s = Session(self)
        hello = s.handshake()
        msg = hello["msg"]
        self.assertIsInstance(hello["id"], int)
        self.assertEqual(msg["protocol_versions"], [1])
        self.assertEqual(msg["driver"], {"name": "fixture", "version": "1.2.3"})
        self.assertEqual(msg["schema_sha256"], dd.SCHEMA_SHA256)
        self.assertIn("cancel", msg["capabilities"])
        self.assertEqual(msg["actions"]["sleep"]["properties"]["seconds"], {"type": "number"})
        self.assertIs(msg["actions"]["stubborn"], True)
        self.assertNotIn("max_frame_bytes", msg)

    def test_fd3_by_default(self):
        s = Session(self, fd3=True)
        s.handshake()
        rid = s.request({"type": "ping"})
        self.assertEqual(s.recv(), {"re": rid, "msg": {"type": "pong"}})

    def test_ping_and_job_before_welcome(self):
        s = Session(self)
        hello = s.recv()
        rid = s.request({"type": "ping"})
        self.assertEqual(s.recv(), {"re": rid, "msg": {"type": "pong"}})
        rid = s.request({"type": "run_job", "job_id": "j", "action": "echo", "params": {},
                         "deadline_unix_ms": 1})
        err = s.recv()
        self.assertEqual((err["re"], err["msg"]["code"]), (rid, "not_ready"))
        s.send({"re": hello["id"], "msg": {"type": "welcome", "protocol_version": 1,
                                           "session_id": "s", "heartbeat_ms": 100,
                                           "max_frame_bytes": 1 << 20}})
        s.run_job("echo", {"a": [1, "b"]})
        result, state, _ = s.job_end()
        self.assertEqual(result["output"], {"params": {"a": [1, "b"]}})

    def test_job_runs_to_success_with_ordered_states(self):
        s = Session(self)
        s.handshake()
        s.run_job("sleep", {"seconds": 0.3})
        result, state, frames = s.job_end()
        kinds = [f["msg"]["type"] for f in frames]
        self.assertEqual(kinds[0], "job_state")
        self.assertEqual(frames[0]["msg"]["state"], "running")
        self.assertIn("job_progress", kinds)
        self.assertIn("job_log", kinds)
        self.assertEqual((result["outcome"], result["output"]), ("succeeded", {"slept": True}))
        self.assertEqual(state["state"], "succeeded")
        progress = [f["msg"] for f in frames if f["msg"]["type"] == "job_progress"]
        self.assertEqual((progress[-1]["total"], progress[-1]["unit"]), (3, "ticks"))
        self.assertLess(len(progress), 4 + 1, "progress is coalesced, not one frame per call")

    def test_cancel_is_acked_at_once_and_ends_cancelled(self):
        s = Session(self)
        s.handshake()
        s.run_job("sleep", {"seconds": 30})
        self.assertEqual(s.recv()["msg"]["state"], "running")
        start = time.monotonic()
        rid = s.request({"type": "cancel_job", "job_id": "job-1", "reason": "client asked"})
        ack, _ = s.recv_type("ack")
        self.assertEqual(ack["re"], rid)
        result, state, frames = s.job_end()
        self.assertLess(time.monotonic() - start, 3)
        self.assertEqual((result["outcome"], state["state"]), ("cancelled", "cancelled"))
        self.assertEqual(state["message"], "client asked")
        lines = [line for f in frames if f["msg"]["type"] == "job_log" for line in f["msg"]["lines"]]
        self.assertIn("cancelled: client asked", lines)
        rid = s.request({"type": "cancel_job", "job_id": "job-1", "reason": ""})
        err = s.recv()
        self.assertEqual((err["re"], err["msg"]["code"]), (rid, "unknown_job"))

    def test_deadline_cancels(self):
        s = Session(self)
        s.handshake()
        s.run_job("sleep", {"seconds": 30}, deadline_ms=int(time.time() * 1000) + 300)
        result, state, _ = s.job_end()
        self.assertEqual((result["outcome"], state["message"]), ("cancelled", "deadline"))

    def test_failure_is_the_jobs_not_the_drivers(self):
        s = Session(self)
        s.handshake()
        s.run_job("fail", job_id="job-f")
        result, state, _ = s.job_end()
        self.assertEqual(result["outcome"], "failed")
        self.assertEqual(result["message"], "RuntimeError: the work failed")
        self.assertEqual(state, {"type": "job_state", "job_id": "job-f", "state": "failed",
                                 "message": "RuntimeError: the work failed"})
        self.assertIn("Traceback", s.output())
        s.run_job("echo", job_id="job-g")
        self.assertEqual(s.job_end()[0]["outcome"], "succeeded")

    def test_unknown_action_duplicate_job_and_too_large_output(self):
        s = Session(self)
        s.handshake()
        rid = s.request({"type": "run_job", "job_id": "j", "action": "nope", "params": {},
                         "deadline_unix_ms": int(time.time() * 1000) + 60_000})
        err = s.recv()
        self.assertEqual((err["re"], err["msg"]["code"]), (rid, "unknown_action"))
        s.run_job("sleep", {"seconds": 30}, job_id="dup")
        rid = s.request({"type": "run_job", "job_id": "dup", "action": "echo", "params": {},
                         "deadline_unix_ms": int(time.time() * 1000) + 60_000})
        err, _ = s.recv_type("error")
        self.assertEqual((err["re"], err["msg"]["code"]), (rid, "not_ready"))
        s.request({"type": "cancel_job", "job_id": "dup", "reason": "done"})
        s.job_end()
        s.run_job("big_output", job_id="big")
        result, state, _ = s.job_end()
        self.assertEqual(result["outcome"], "failed")
        self.assertIn("max_frame_bytes", result["message"])

    def test_logs_are_bounded_and_drops_counted(self):
        s = Session(self, env={"FIXTURE_LOG_BUFFER": "100"})
        s.handshake()
        s.run_job("spam", {"lines": 20000})
        result, _, frames = s.job_end(timeout=30)
        logs = [f["msg"] for f in frames if f["msg"]["type"] == "job_log"]
        lines = [line for m in logs for line in m["lines"]]
        dropped = sum(m["dropped"] for m in logs)
        self.assertEqual(len(lines) + dropped, 20000)
        self.assertGreater(dropped, 0)
        numbers = [int(line.split()[0]) for line in lines]
        self.assertEqual(numbers, sorted(numbers), "lines stay in order")
        self.assertEqual(numbers[-1], 19999, "the newest lines are kept")

    def test_small_frame_limit_splits_long_lines(self):
        s = Session(self, env={"FIXTURE_MAX_FRAME": "4096"})
        hello = s.handshake(max_frame=4096)
        self.assertEqual(hello["msg"]["max_frame_bytes"], 4096)
        s.run_job("spam", {"lines": 3, "width": 20000})
        _, _, frames = s.job_end()
        self.assertTrue(all(len(p) <= 4096 for p in s.payloads))
        text = "".join(line for f in frames if f["msg"]["type"] == "job_log"
                       for line in f["msg"]["lines"])
        self.assertEqual(text, "".join(f"{i:06d} " + "x" * 20000 for i in range(3)))

    def test_leases_are_request_reply(self):
        s = Session(self)
        s.handshake()
        gpu = {"count": 1, "models": ["RTX 4090"], "max_usd_per_hour": 0.5}
        s.run_job("leases", gpu=gpu)
        acquire, _ = s.recv_type("acquire_gpu")
        m = acquire["msg"]
        self.assertEqual((m["job_id"], m["gpu"], m["disk_gib"], m["env"]), ("job-1", gpu, 20, {"EPOCHS": "1"}))
        lease = {"type": "lease", "lease_id": "lease-1", "job_id": "job-1", "state": "running",
                 "deadline_unix_ms": 1795305600000, "gpu_model": "RTX 4090", "gpu_count": 1}
        s.send({"re": acquire["id"], "msg": lease})
        status, _ = s.recv_type("lease_status")
        s.send({"re": status["id"], "msg": dict(lease, state="loading")})
        logs, _ = s.recv_type("lease_logs")
        self.assertEqual(logs["msg"]["tail"], 10)
        s.send({"re": logs["id"], "msg": {"type": "lease_log", "lease_id": "lease-1",
                                          "lines": ["ready"], "truncated": False}})
        release, _ = s.recv_type("release_gpu")
        s.send({"re": release["id"], "msg": dict(lease, state="released")})
        result, _, _ = s.job_end()
        self.assertEqual(result["output"], {"states": ["running", "loading", "released"],
                                            "lines": ["ready"]})
        self.assertEqual(len({acquire["id"], status["id"], logs["id"], release["id"]}), 4)

    def test_refused_lease_raises_request_error(self):
        s = Session(self)
        s.handshake()
        s.run_job("refused", gpu={"count": 1})
        acquire, _ = s.recv_type("acquire_gpu")
        s.send({"re": acquire["id"], "msg": {"type": "error", "code": "cost_gate_rejected",
                                             "message": "confidence 0.80 < 0.95",
                                             "details": {"confidence": 0.8}}})
        result, _, _ = s.job_end()
        self.assertEqual(result["output"], {"code": "cost_gate_rejected",
                                            "details": {"confidence": 0.8}})

    def test_stray_stdout_stays_off_the_transport(self):
        s = Session(self)
        s.handshake()
        s.run_job("chatty")
        _, _, frames = s.job_end()
        record = None
        while record is None:
            f = s.recv()
            if f["msg"]["type"] == "log":
                record = f["msg"]
        self.assertEqual(record, {"type": "log", "level": "info", "message": "driver record",
                                  "fields": {"job": "job-1", "n": 1}})
        s.sock.close()
        self.assertEqual(s.exit_code(), 0)
        self.assertIn("a stray print on stdout", s.output("stdout"))


class Example(unittest.TestCase):
    EXAMPLE = os.path.join(HERE, "..", "example_driver.py")

    def test_example_sleeps_with_progress_and_cancels(self):
        s = Session(self, script=self.EXAMPLE)
        hello = s.handshake()
        self.assertEqual(sorted(hello["msg"]["actions"]), ["echo", "sleep"])
        s.run_job("sleep", {"seconds": 0.5})
        result, state, frames = s.job_end()
        self.assertEqual((result["output"], state["state"]), ({"ticks": 5}, "succeeded"))
        self.assertIn("job_progress", [f["msg"]["type"] for f in frames])
        s.run_job("sleep", {"seconds": 60}, job_id="job-2")
        s.recv()
        s.request({"type": "cancel_job", "job_id": "job-2", "reason": "test"})
        result, state, _ = s.job_end()
        self.assertEqual(state["state"], "cancelled")
        s.run_job("sleep", {"seconds": 0, "fail": True}, job_id="job-3")
        result, state, _ = s.job_end()
        self.assertEqual(result["message"], "RuntimeError: asked to fail")
        s.request({"type": "shutdown", "grace_ms": 1000})
        self.assertEqual(s.exit_code(), 0)

    def test_example_is_short(self):
        # An action with params, progress, logs and cancel, docstrings included (issue 20).
        with open(self.EXAMPLE) as f:
            self.assertLess(len(f.readlines()), 60)


class BadInput(unittest.TestCase):
    def test_malformed_frames_are_answered_and_the_session_goes_on(self):
        s = Session(self)
        s.handshake()
        cases = [
            (b"\xc3\x28", "invalid_utf8", None),
            (b"{nope", "invalid_json", None),
            (b'{"id":7,"id":7,"msg":{"type":"ping"}}', "invalid_json", None),
            (b'{"id":8,"msg":{"type":"teleport"}}', "unknown_type", 8),
            (b'{"id":9,"msg":{"type":"hello"}}', "unexpected_message", 9),
            (b'{"id":10,"msg":{"type":"shutdown","grace_ms":"soon"}}', "schema_violation", 10),
            (b'{"re":999,"msg":{"type":"lease_log","lease_id":"l","lines":[],"truncated":true}}',
             "unexpected_message", None),
        ]
        for payload, code, re_id in cases:
            with self.subTest(code=code):
                s.sock.sendall(frame(payload))
                err = s.recv()
                self.assertEqual(err["msg"]["type"], "error")
                self.assertEqual(err["msg"]["code"], code)
                self.assertEqual(err.get("re"), re_id)
        self.assertEqual(err["msg"].get("violations"), None)
        s.sock.sendall(frame(b'{"id":11,"msg":{"type":"shutdown","grace_ms":"soon"}}'))
        v = s.recv()["msg"]["violations"][0]
        self.assertEqual(v["instance_path"], "/msg/grace_ms")
        # An error frame is never answered, valid or not: the next frame is the pong.
        s.sock.sendall(frame(b'{"msg":{"type":"error","code":"internal","message":"x"}}'))
        s.sock.sendall(frame(b'{"msg":{"type":"error","code":7}}'))
        rid = s.request({"type": "ping"})
        self.assertEqual(s.recv(), {"re": rid, "msg": {"type": "pong"}})

    def test_oversize_frame_is_skipped_and_reported(self):
        s = Session(self, env={"FIXTURE_MAX_FRAME": "4096"})
        s.handshake(max_frame=4096)
        s.sock.sendall(frame(b"{" + b" " * 100_000 + b"}"))
        err = s.recv()
        self.assertEqual(err["msg"]["code"], "frame_too_large")
        self.assertEqual(err["msg"]["details"], {"len": 100_002, "max": 4096})
        rid = s.request({"type": "ping"})
        self.assertEqual(s.recv(), {"re": rid, "msg": {"type": "pong"}})

    def test_unframed_stream_exits_2(self):
        s = Session(self)
        s.handshake()
        s.sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(s.exit_code(), 2)
        self.assertIn("not framed", s.output())
        self.assertIn("GET / HTTP", s.output())

    def test_version_mismatch_exits_3(self):
        s = Session(self)
        hello = s.recv()
        s.send({"re": hello["id"], "msg": {"type": "error", "code": "version_mismatch",
                                           "message": "no shared version",
                                           "details": {"supported": [2], "offered": [1]}}})
        self.assertEqual(s.exit_code(), 3)
        self.assertIn("supervisor supports [2]", s.output())


class Lifecycle(unittest.TestCase):
    def test_shutdown_when_idle_exits_at_once(self):
        s = Session(self)
        s.handshake()
        rid = s.request({"type": "shutdown", "grace_ms": 10_000})
        self.assertEqual(s.recv(), {"re": rid, "msg": {"type": "ack"}})
        start = time.monotonic()
        self.assertEqual(s.exit_code(), 0)
        self.assertLess(time.monotonic() - start, 2)

    def test_shutdown_cancels_cooperative_jobs_within_grace(self):
        s = Session(self)
        s.handshake()
        s.run_job("sleep", {"seconds": 30})
        start = time.monotonic()
        s.request({"type": "shutdown", "grace_ms": 5000})
        result, state, _ = s.job_end()
        self.assertEqual((result["outcome"], state["message"]), ("cancelled", "shutdown"))
        self.assertEqual(s.exit_code(), 0)
        # Cancelled at half the grace (2.5 s), so well within it.
        self.assertLess(time.monotonic() - start, 5.0)

    def test_shutdown_gives_up_on_stubborn_jobs(self):
        s = Session(self)
        s.handshake()
        s.run_job("stubborn", {"seconds": 60})
        start = time.monotonic()
        rid = s.request({"type": "shutdown", "grace_ms": 5000})
        ack, _ = s.recv_type("ack")
        self.assertEqual(ack["re"], rid)
        rid = s.request({"type": "run_job", "job_id": "late", "action": "echo", "params": {},
                         "deadline_unix_ms": int(time.time() * 1000) + 60_000})
        err = s.recv()
        self.assertEqual((err["re"], err["msg"]["code"]), (rid, "not_ready"))
        result, state, _ = s.job_end()
        self.assertEqual(result["outcome"], "cancelled")
        self.assertEqual(s.exit_code(), 0)
        # Given up on at 80% of the grace (4 s), so within it.
        self.assertLess(time.monotonic() - start, 5.0)

    def test_end_of_transport_cancels_and_exits(self):
        s = Session(self)
        s.handshake()
        s.run_job("stubborn", {"seconds": 60})
        s.recv()
        s.sock.shutdown(socket.SHUT_RDWR)
        start = time.monotonic()
        self.assertEqual(s.exit_code(), 0, s.output())
        self.assertLess(time.monotonic() - start, 3)

    def test_stdio_transport(self):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DROVER_TRANSPORT": "stdio",
               "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.Popen([sys.executable, FIXTURE], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(proc.kill)

        def recv():
            (n,) = struct.unpack(">I", proc.stdout.read(4))
            payload = proc.stdout.read(n)
            self.assertEqual(validate_payloads([payload]), [])
            return json.loads(payload)

        def send(obj):
            proc.stdin.write(frame(json.dumps(obj).encode()))
            proc.stdin.flush()

        hello = recv()
        send({"re": hello["id"], "msg": {"type": "welcome", "protocol_version": 1,
                                         "session_id": "s", "heartbeat_ms": 5000,
                                         "max_frame_bytes": 1 << 20}})
        send({"id": 5, "msg": {"type": "run_job", "job_id": "j", "action": "chatty", "params": {},
                               "deadline_unix_ms": int(time.time() * 1000) + 60_000}})
        kinds = []
        while not kinds or kinds[-1] != "job_state" or len(kinds) < 3:
            kinds.append(recv()["msg"]["type"])
        proc.stdin.close()
        self.assertEqual(proc.wait(10), 0)
        self.assertIn(b"a stray print on stdout", proc.stderr.read())
        proc.stdout.close()
        proc.stderr.close()


if __name__ == "__main__":
    unittest.main()
