#!/usr/bin/env python3
"""The Python peer of the API benchmark: `POST /v1/jobs` as a minimal `http.server` service
would do it, with the same checks drover's API makes before its handler runs.

For each request, in drover's order:
1. `Authorization: Bearer <token>`: the token's format is checked first (`drover_` + base64url
   of 32 random bytes and a 4-byte SHA-256 checksum, 55 characters), then its SHA-256 is
   compared with every configured digest in constant time (`hmac.compare_digest`, no early
   exit); then the `jobs:write` scope. 401 / 403.
2. `Content-Type: application/json`, else 415; `Content-Length` over the limit (1 MiB, as
   drover's default `max_body_bytes`), else 413 without reading the body.
3. Strict JSON (UTF-8, duplicate keys rejected, no NaN), then python-jsonschema
   (`Draft202012Validator`, compiled once) against the committed `schemas/api/job-spec.json`,
   every violation collected, then `params` against the named driver action's params schema
   (violations under `/params`; an unknown driver or action is a violation too): 400 with
   `{"error": "invalid_request", "violations": [...]}`. The drivers are `--driver-schema
   DRIVER/ACTION=JSON` (repeatable); by default the one drover's API bench server declares,
   `echo/run` with `{"n": integer 0..10 (required), "text": string of at most 64}`.
4. With `--durable DB`: the job row and its first event committed to SQLite in one
   transaction (WAL, `synchronous = FULL`, so the commit is fsynced) before the answer, as
   drover's store does; without it nothing is stored (the volatile peer).
5. 201 with the accepted job (`id`, `state: "queued"`, the spec) and a `Location` header.

Usage (needs `jsonschema`; benches/validation-peers.sh installs it into target/bench-venv):

    target/bench-venv/bin/python benches/api-python-peer.py --token-sha256 HEX [--port 0]
        [--driver-schema DRIVER/ACTION=JSON ...] [--durable DB]

It binds 127.0.0.1 (port 0: a free one), prints the port alone on the first line of stdout,
then serves HTTP/1.1 with keep-alive, one thread per connection, until SIGTERM or SIGINT.
`--token-sha256` (repeatable) is the hex SHA-256 of a token with the `jobs:write` scope, as in
drover.toml's `[[api.tokens]]` (`drover token new` prints both); `--token-sha256-read HEX`
adds one without it (for the 403 path). `--check` starts the server, exercises every status
above against itself with a generated token, and exits 0 if each is right.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import itertools
import json
import os
import secrets
import signal
import sqlite3
import sys
import time
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jsonschema

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
SCHEMA = os.path.join(REPO, "schemas", "api", "job-spec.json")
MAX_BODY_BYTES = 1 << 20
PREFIX = "drover_"
TOKEN_LEN = 55


def well_formed(token: str) -> bool:
    """drover's token grammar: prefix, length, base64url, checksum."""
    if not token.startswith(PREFIX) or len(token) != TOKEN_LEN:
        return False
    try:
        raw = base64.urlsafe_b64decode(token[len(PREFIX):] + "=")
    except ValueError:
        return False
    if len(raw) != 36:
        return False
    random, checksum = raw[:32], raw[32:]
    return hashlib.sha256(PREFIX.encode() + random).digest()[:4] == checksum


def new_token() -> str:
    random = secrets.token_bytes(32)
    checksum = hashlib.sha256(PREFIX.encode() + random).digest()[:4]
    return PREFIX + base64.urlsafe_b64encode(random + checksum).decode().rstrip("=")


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("duplicate key")
        out[key] = value
    return out


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


ECHO_SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer", "minimum": 0, "maximum": 10},
        "text": {"type": "string", "maxLength": 64},
    },
    "required": ["n"],
    "additionalProperties": False,
}


def violations(validator, instance, prefix=""):
    return [
        {"instance_path": prefix + "".join(f"/{p}" for p in e.absolute_path),
         "schema_path": "/" + "/".join(str(p) for p in e.absolute_schema_path),
         "message": e.message[:1024]}
        for e in itertools.islice(validator.iter_errors(instance), 64)]


class Store:
    """Accepted jobs in SQLite: one connection per server thread (Python's sqlite3 releases
    the GIL while SQLite works), each job and its first event in one fsynced transaction."""

    SCHEMA = """
        CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT,
            state TEXT NOT NULL, spec TEXT NOT NULL, created_ms INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS job_events (job INTEGER NOT NULL REFERENCES jobs(id),
            seq INTEGER NOT NULL, event TEXT NOT NULL, PRIMARY KEY (job, seq));
    """

    def __init__(self, path):
        self.path = path
        self.local = threading.local()
        self.connection().executescript(self.SCHEMA)

    def connection(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=60,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self.local.conn = conn
        return conn

    def insert(self, spec) -> int:
        conn = self.connection()
        now = int(time.time() * 1000)
        conn.execute("BEGIN IMMEDIATE")
        try:
            job = conn.execute("INSERT INTO jobs (state, spec, created_ms) VALUES (?, ?, ?)",
                               ("queued", json.dumps(spec, separators=(",", ":")), now)).lastrowid
            conn.execute("INSERT INTO job_events (job, seq, event) VALUES (?, 1, ?)",
                         (job, json.dumps({"type": "job_state", "state": "queued"})))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return job

    def count(self) -> int:
        return self.connection().execute("SELECT count(*) FROM jobs").fetchone()[0]


class Peer:
    def __init__(self, tokens, drivers=None, store=None):
        # (digest bytes, may write)
        self.tokens = [(bytes.fromhex(d), write) for d, write in tokens]
        with open(SCHEMA) as f:
            self.validator = jsonschema.Draft202012Validator(json.load(f))
        drivers = drivers or {("echo", "run"): ECHO_SCHEMA}
        self.params = {key: jsonschema.Draft202012Validator(schema)
                       for key, schema in drivers.items()}
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.store = store

    def authenticate(self, header):
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not well_formed(token.strip()):
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for entry, write in self.tokens:
            if hmac.compare_digest(entry, digest):
                found = write
        return found


def make_handler(peer: Peer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "api-python-peer"

        def log_message(self, *args):  # no per-request log line: the load generator is the judge
            pass

        def reply(self, status, body, headers=()):
            data = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def error(self, status, code, message=None, violations=None, close=False):
            body = {"error": code, "request_id": f"req-{next(peer.ids)}"}
            if message:
                body["message"] = message
            if violations:
                body["violations"] = violations
            headers = [("WWW-Authenticate", 'Bearer realm="drover", error="invalid_token"')] \
                if status == 401 else []
            if close:
                headers.append(("Connection", "close"))
                self.close_connection = True
            self.reply(status, body, headers)

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            if self.path != "/v1/jobs":
                self.rfile.read(min(length, MAX_BODY_BYTES))
                return self.error(404, "not_found")
            write = peer.authenticate(self.headers.get("Authorization"))
            if write is None:
                self.rfile.read(min(length, MAX_BODY_BYTES))
                return self.error(401, "unauthorized", "a valid bearer token is required")
            if not write:
                self.rfile.read(min(length, MAX_BODY_BYTES))
                return self.error(403, "forbidden", "the token lacks the scope this route requires")
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype != "application/json":
                self.rfile.read(min(length, MAX_BODY_BYTES))
                return self.error(415, "unsupported_media_type")
            if length > MAX_BODY_BYTES:
                return self.error(413, "payload_too_large", "the body is over the size limit",
                                  close=True)
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                                  parse_constant=_no_constants)
            except (UnicodeDecodeError, ValueError, RecursionError):
                return self.error(400, "invalid_request", violations=[
                    {"instance_path": "", "schema_path": "", "message": "the body is not JSON"}])
            errors = violations(peer.validator, body)
            if errors:
                return self.error(400, "invalid_request", violations=errors)
            params = peer.params.get((body["driver"], body["action"]))
            if params is None:
                return self.error(400, "invalid_request", violations=[
                    {"instance_path": "/action", "schema_path": "",
                     "message": "no such driver action"}])
            errors = violations(params, body.get("params", {}), "/params")
            if errors:
                return self.error(400, "invalid_request", violations=errors)
            if peer.store is not None:
                job_id = f"job-{peer.store.insert(body)}"
            else:
                with peer.lock:
                    job_id = f"job-{next(peer.ids)}"
            self.reply(201, {"id": job_id, "state": "queued", "spec": body},
                       [("Location", f"/v1/jobs/{job_id}")])

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A load generator hanging up mid-request is not worth a traceback.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def serve(peer, port):
    return Server(("127.0.0.1", port), make_handler(peer))


def check(durable=None) -> int:
    """Every status path against a server on a free port; with `durable`, also that exactly
    the accepted job was committed."""
    writer, reader = new_token(), new_token()
    store = Store(durable) if durable else None
    peer = Peer([(hashlib.sha256(writer.encode()).hexdigest(), True),
                 (hashlib.sha256(reader.encode()).hexdigest(), False)], store=store)
    server = serve(peer, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    good = {"driver": "echo", "action": "run", "params": {"n": 3, "text": "benchmark"},
            "max_runtime_s": 60, "budget_usd": 1.0}
    cases = [
        ("valid job", writer, "application/json", json.dumps(good).encode(), 201),
        ("no token", None, "application/json", json.dumps(good).encode(), 401),
        ("malformed token", "drover_x", "application/json", json.dumps(good).encode(), 401),
        ("unknown token", new_token(), "application/json", json.dumps(good).encode(), 401),
        ("read-only token", reader, "application/json", json.dumps(good).encode(), 403),
        ("wrong media type", writer, "text/plain", json.dumps(good).encode(), 415),
        ("too large", writer, "application/json", b" " * (MAX_BODY_BYTES + 1), 413),
        ("not JSON", writer, "application/json", b"{", 400),
        ("duplicate key", writer, "application/json", b'{"driver":"a","driver":"b"}', 400),
        ("schema violation", writer, "application/json",
         json.dumps(dict(good, driver="Bad Name", extra=1)).encode(), 400),
        ("params violation", writer, "application/json",
         json.dumps(dict(good, params={"n": 11, "extra": True})).encode(), 400),
        ("unknown action", writer, "application/json",
         json.dumps(dict(good, action="other")).encode(), 400),
    ]
    failed = 0
    for name, token, ctype, body, want in cases:
        headers = {"Content-Type": ctype}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if len(body) > MAX_BODY_BYTES:
            # Declare the size and send nothing: the server must answer from the header alone.
            headers["Content-Length"] = str(len(body))
            body = b""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/jobs", body=body, headers=headers)
        response = conn.getresponse()
        status, payload = response.status, response.read()
        conn.close()
        ok = status == want
        if want == 400 and name in ("schema violation", "params violation"):
            found = json.loads(payload)["violations"]
            ok = ok and len(found) >= 2
            if name == "params violation":
                ok = ok and all(v["instance_path"].startswith("/params") for v in found)
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {status} (want {want})")
        failed += not ok
    server.shutdown()
    if store is not None:
        stored = store.count()
        ok = stored == 1
        print(f"{'ok  ' if ok else 'FAIL'} durable store: {stored} job(s) committed (want 1)")
        failed += not ok
    return 1 if failed else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token-sha256", action="append", default=[])
    ap.add_argument("--token-sha256-read", action="append", default=[])
    ap.add_argument("--driver-schema", action="append", default=[],
                    metavar="DRIVER/ACTION=JSON")
    ap.add_argument("--durable", metavar="DB",
                    help="commit every accepted job to this SQLite file before answering")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    if args.check:
        return check(args.durable)
    if not args.token_sha256:
        ap.error("give at least one --token-sha256 (the digest of a jobs:write token)")
    drivers = {}
    for spec in args.driver_schema:
        name, _, schema = spec.partition("=")
        driver, _, action = name.partition("/")
        drivers[(driver, action)] = json.loads(schema)
    peer = Peer([(d, True) for d in args.token_sha256] + [(d, False) for d in args.token_sha256_read],
                drivers, Store(args.durable) if args.durable else None)
    server = serve(peer, args.port)
    print(server.server_address[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
