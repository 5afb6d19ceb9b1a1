// Tests of the TypeScript SDK as installed from its package: real driver processes (test/
// fixture.mjs and the example) with the transport on fd 3 (a socketpair: Node's spawn makes
// one for a 'pipe' beyond stdio) or on stdio, a fake supervisor here, and every frame a
// driver writes checked by `drover validate` (DROVER_BIN) when its session ends.
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { Driver, SCHEMA_SHA256, PROTOCOL_VERSION } from "drover-driver-sdk";

const here = dirname(fileURLToPath(import.meta.url));
const repo = process.env.DROVER_REPO;
const FIXTURE = join(here, "fixture.mjs");
const drover = process.env.DROVER_BIN;
assert.ok(drover && repo, "run through drivers/typescript/test.sh (DROVER_BIN, DROVER_REPO)");

const framed = (payload) => {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(payload.length);
  return Buffer.concat([head, payload]);
};

class Session {
  constructor(t, { script = FIXTURE, env = {}, stdio = false } = {}) {
    const base = { PATH: process.env.PATH, ...env };
    if (stdio) base.DROVER_TRANSPORT = "stdio";
    else base.DROVER_TRANSPORT_FD = "3";
    this.proc = spawn(process.execPath, [script], {
      env: base, stdio: stdio ? ["pipe", "pipe", "pipe"] : ["ignore", "pipe", "pipe", "pipe"],
    });
    this.wire = stdio ? { input: this.proc.stdout, output: this.proc.stdin } : { input: this.proc.stdio[3], output: this.proc.stdio[3] };
    this.stdout = "";
    this.stderr = "";
    if (!stdio) this.proc.stdout.on("data", (d) => (this.stdout += d));
    this.proc.stderr.on("data", (d) => (this.stderr += d));
    this.exited = new Promise((resolve) => this.proc.on("exit", (code) => resolve(code)));
    this.buf = Buffer.alloc(0);
    this.payloads = [];
    this.waiters = [];
    this.nextId = 100;
    this.wire.input.on("data", (d) => { this.buf = Buffer.concat([this.buf, d]); this.wake(); });
    this.wire.input.on("end", () => { this.ended = true; this.wake(); });
    this.wire.output.on("error", () => {});
    t.after(() => this.close());
  }

  wake() { for (const w of this.waiters.splice(0)) w(); }

  async close() {
    this.proc.kill("SIGKILL");
    await this.exited;
    const failures = [...new Set(this.payloads.map((p) => p.toString()))].slice(0, 200).filter((p) =>
      spawnSync(drover, ["validate"], { input: p }).status !== 0);
    assert.deepEqual(failures, [], "frames the driver wrote fail `drover validate`");
  }

  sendRaw(payload) { this.wire.output.write(framed(Buffer.from(payload))); }
  send(obj) { this.sendRaw(JSON.stringify(obj)); }
  request(msg) { this.nextId += 1; this.send({ id: this.nextId, msg }); return this.nextId; }

  async recv(timeoutMs = 10000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.buf.length >= 4) {
        const n = this.buf.readUInt32BE(0);
        if (this.buf.length >= 4 + n) {
          const payload = this.buf.subarray(4, 4 + n);
          this.buf = this.buf.subarray(4 + n);
          this.payloads.push(Buffer.from(payload));
          return JSON.parse(payload.toString());
        }
      }
      if (this.ended) throw new Error(`driver closed the transport; stderr:\n${this.stderr}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no frame from the driver in time; stderr:\n${this.stderr}`);
      await new Promise((resolve) => { const timer = setTimeout(resolve, left); this.waiters.push(() => { clearTimeout(timer); resolve(); }); });
    }
  }

  async recvType(type) {
    const before = [];
    for (;;) {
      const f = await this.recv();
      if (f.msg.type === type) return [f, before];
      before.push(f);
    }
  }

  async handshake(maxFrame = 1 << 20) {
    const hello = await this.recv();
    assert.equal(hello.msg.type, "hello");
    this.send({ re: hello.id, msg: { type: "welcome", protocol_version: 1, session_id: "sess-1", heartbeat_ms: 5000, max_frame_bytes: maxFrame } });
    return hello;
  }

  async runJob(action, params = {}, { jobId = "job-1", gpu, deadline } = {}) {
    const msg = { type: "run_job", job_id: jobId, action, params, deadline_unix_ms: deadline ?? Date.now() + 600000 };
    if (gpu) msg.gpu = gpu;
    const rid = this.request(msg);
    assert.deepEqual(await this.recv(), { re: rid, msg: { type: "ack" } });
    return rid;
  }

  async jobEnd() {
    const frames = [];
    for (;;) {
      const f = await this.recv();
      frames.push(f);
      if (f.msg.type === "job_state" && ["succeeded", "failed", "cancelled"].includes(f.msg.state)) {
        const results = frames.filter((x) => x.msg.type === "job_result");
        assert.equal(results.length, 1, "exactly one job_result");
        assert.equal(frames.at(-2), results[0], "job_result right before the terminal state");
        return [results[0].msg, f.msg, frames];
      }
    }
  }
}

test("the schema digest and protocol version are the repository's", () => {
  const digest = createHash("sha256").update(readFileSync(join(repo, "schemas/transport/SHA256SUMS"))).digest("hex");
  assert.equal(SCHEMA_SHA256, digest, "schemas changed: run `npm run generate` in drivers/typescript");
  assert.equal(PROTOCOL_VERSION, 1);
});

test("declarations are checked", () => {
  assert.throws(() => new Driver("Not_Kebab"), RangeError);
  assert.throws(() => new Driver("ok", "has space"), RangeError);
  assert.throws(() => new Driver("ok", "1", { maxFrameBytes: 100 }), RangeError);
  assert.throws(() => new Driver("ok").action("Bad-Name", true, () => null), RangeError);
  assert.throws(() => new Driver("ok").action("x", "not a schema", () => null), RangeError);
});

test("hello declares everything", async (t) => {
  const s = new Session(t);
  const hello = await s.handshake();
  assert.equal(typeof hello.id, "number");
  assert.deepEqual(hello.msg.protocol_versions, [1]);
  assert.deepEqual(hello.msg.driver, { name: "fixture", version: "1.2.3" });
  assert.equal(hello.msg.schema_sha256, SCHEMA_SHA256);
  assert.ok(hello.msg.capabilities.includes("cancel"));
  assert.deepEqual(hello.msg.actions.sleep.properties.seconds, { type: "number" });
  assert.equal(hello.msg.actions.fail, true);
  const rid = s.request({ type: "ping" });
  assert.deepEqual(await s.recv(), { re: rid, msg: { type: "pong" } });
});

test("a job runs to success with ordered states, coalesced progress and logs", async (t) => {
  const s = new Session(t);
  await s.handshake();
  await s.runJob("sleep", { seconds: 0.3 });
  const [result, state, frames] = await s.jobEnd();
  assert.equal(frames[0].msg.state, "running");
  const kinds = frames.map((f) => f.msg.type);
  assert.ok(kinds.includes("job_log"));
  const progress = frames.filter((f) => f.msg.type === "job_progress").map((f) => f.msg);
  assert.ok(progress.length >= 1 && progress.length < 4, "progress is coalesced");
  assert.deepEqual([progress.at(-1).total, progress.at(-1).unit], [3, "ticks"]);
  assert.deepEqual([result.outcome, result.output, state.state], ["succeeded", { slept: true }, "succeeded"]);
});

test("cancel is acked at once and ends cancelled with the reason", async (t) => {
  const s = new Session(t);
  await s.handshake();
  await s.runJob("sleep", { seconds: 30 });
  assert.equal((await s.recv()).msg.state, "running");
  const start = Date.now();
  const rid = s.request({ type: "cancel_job", job_id: "job-1", reason: "client asked" });
  const [ack] = await s.recvType("ack");
  assert.equal(ack.re, rid);
  const [result, state, frames] = await s.jobEnd();
  assert.ok(Date.now() - start < 3000);
  assert.deepEqual([result.outcome, state.state, state.message], ["cancelled", "cancelled", "client asked"]);
  const lines = frames.filter((f) => f.msg.type === "job_log").flatMap((f) => f.msg.lines);
  assert.ok(lines.includes("cancelled: client asked"));
  const again = s.request({ type: "cancel_job", job_id: "job-1", reason: "" });
  const err = await s.recv();
  assert.deepEqual([err.re, err.msg.code], [again, "unknown_job"]);
});

test("the deadline cancels; a failure is the job's, not the driver's", async (t) => {
  const s = new Session(t);
  await s.handshake();
  await s.runJob("sleep", { seconds: 30 }, { deadline: Date.now() + 300 });
  let [result, state] = await s.jobEnd();
  assert.deepEqual([result.outcome, state.message], ["cancelled", "deadline"]);
  await s.runJob("fail", {}, { jobId: "job-f" });
  [result, state] = await s.jobEnd();
  assert.deepEqual(state, { type: "job_state", job_id: "job-f", state: "failed", message: "TypeError: the work failed" });
  await s.runJob("echo", { a: [1, "b"] }, { jobId: "job-g" });
  [result] = await s.jobEnd();
  assert.deepEqual(result.output, { params: { a: [1, "b"] } });
});

test("logs are bounded, drops counted, long lines split within a small frame limit", async (t) => {
  const s = new Session(t, { env: { FIXTURE_LOG_BUFFER: "100" } });
  await s.handshake();
  await s.runJob("spam", { lines: 20000 });
  let [, , frames] = await s.jobEnd();
  const logs = frames.filter((f) => f.msg.type === "job_log").map((f) => f.msg);
  const lines = logs.flatMap((m) => m.lines);
  const dropped = logs.reduce((n, m) => n + m.dropped, 0);
  assert.equal(lines.length + dropped, 20000);
  assert.ok(dropped > 0);
  assert.equal(Number(lines.at(-1).split(" ")[0]), 19999, "the newest lines are kept");
  const small = new Session(t, { env: { FIXTURE_MAX_FRAME: "4096" } });
  const hello = await small.handshake(4096);
  assert.equal(hello.msg.max_frame_bytes, 4096);
  await small.runJob("spam", { lines: 3, width: 20000 });
  [, , frames] = await small.jobEnd();
  assert.ok(small.payloads.every((p) => p.length <= 4096));
  const text = frames.filter((f) => f.msg.type === "job_log").flatMap((f) => f.msg.lines).join("");
  assert.equal(text, [0, 1, 2].map((i) => `${String(i).padStart(6, "0")} ${"x".repeat(20000)}`).join(""));
});

test("leases are request and reply; a refusal is a RequestError", async (t) => {
  const s = new Session(t);
  await s.handshake();
  const gpu = { count: 1, models: ["RTX 4090"], max_usd_per_hour: 0.5 };
  await s.runJob("leases", {}, { gpu });
  const [acquire] = await s.recvType("acquire_gpu");
  assert.deepEqual([acquire.msg.job_id, acquire.msg.gpu, acquire.msg.disk_gib, acquire.msg.env], ["job-1", gpu, 20, { EPOCHS: "1" }]);
  const lease = { type: "lease", lease_id: "lease-1", job_id: "job-1", state: "running", deadline_unix_ms: 1795305600000 };
  s.send({ re: acquire.id, msg: lease });
  const [status] = await s.recvType("lease_status");
  s.send({ re: status.id, msg: { ...lease, state: "loading" } });
  const [logs] = await s.recvType("lease_logs");
  assert.equal(logs.msg.tail, 10);
  s.send({ re: logs.id, msg: { type: "lease_log", lease_id: "lease-1", lines: ["ready"], truncated: false } });
  const [release] = await s.recvType("release_gpu");
  s.send({ re: release.id, msg: { ...lease, state: "released" } });
  let [result] = await s.jobEnd();
  assert.deepEqual(result.output, { states: ["running", "loading", "released"], lines: ["ready"] });
  await s.runJob("refused", {}, { jobId: "job-2", gpu: { count: 1 } });
  const [refused] = await s.recvType("acquire_gpu");
  s.send({ re: refused.id, msg: { type: "error", code: "cost_gate_rejected", message: "confidence 0.80 < 0.95", details: { confidence: 0.8 } } });
  [result] = await s.jobEnd();
  assert.deepEqual(result.output, { code: "cost_gate_rejected", details: { confidence: 0.8 } });
});

test("malformed, oversize and unknown frames are answered and the session goes on", async (t) => {
  const s = new Session(t, { env: { FIXTURE_MAX_FRAME: "4096" } });
  await s.handshake(4096);
  const cases = [
    [Buffer.from([0xc3, 0x28]), "invalid_utf8", undefined],
    ["{nope", "invalid_json", undefined],
    ["[1]", "invalid_json", undefined],
    ['{"id":8,"msg":{"type":"teleport"}}', "unknown_type", 8],
    ['{"id":9,"msg":{"type":"hello"}}', "unexpected_message", 9],
    ['{"id":10,"msg":{"type":"shutdown","grace_ms":"soon"}}', "schema_violation", 10],
  ];
  for (const [payload, code, re] of cases) {
    s.sendRaw(payload);
    const err = await s.recv();
    assert.deepEqual([err.msg.type, err.msg.code, err.re], ["error", code, re], String(payload));
  }
  s.sendRaw('{"id":11,"msg":{"type":"run_job","job_id":"j","action":"echo","params":{},"deadline_unix_ms":1,"extra":true}}');
  const err = await s.recv();
  assert.ok(err.msg.violations.some((v) => v.instance_path === "/msg/extra"), JSON.stringify(err));
  s.sendRaw(`{${" ".repeat(100000)}}`);
  const big = await s.recv();
  assert.deepEqual([big.msg.code, big.msg.details], ["frame_too_large", { len: 100002, max: 4096 }]);
  s.sendRaw('{"msg":{"type":"error","code":"internal","message":"x"}}'); // never answered
  const rid = s.request({ type: "ping" });
  assert.deepEqual(await s.recv(), { re: rid, msg: { type: "pong" } });
});

test("shutdown drains within the grace; end of transport, unframed streams and version mismatch exit", async (t) => {
  const s = new Session(t);
  await s.handshake();
  await s.runJob("sleep", { seconds: 30 });
  const start = Date.now();
  s.request({ type: "shutdown", grace_ms: 2000 });
  const [result, state] = await s.jobEnd();
  assert.deepEqual([result.outcome, state.message], ["cancelled", "shutdown"]);
  assert.equal(await s.exited, 0);
  assert.ok(Date.now() - start < 2000);
  const eof = new Session(t);
  await eof.handshake();
  await eof.runJob("sleep", { seconds: 30 });
  eof.wire.output.end();
  assert.equal(await eof.exited, 0);
  const garbage = new Session(t);
  await garbage.handshake();
  garbage.wire.output.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  assert.equal(await garbage.exited, 2);
  assert.match(garbage.stderr, /not framed/);
  const old = new Session(t);
  const hello = await old.recv();
  old.send({ re: hello.id, msg: { type: "error", code: "version_mismatch", message: "no shared version", details: { supported: [2], offered: [1] } } });
  assert.equal(await old.exited, 3);
  assert.match(old.stderr, /supervisor supports \[2\]/);
});

test("stdio transport: frames on stdin/stdout, console output on stderr", async (t) => {
  const s = new Session(t, { stdio: true });
  await s.handshake();
  await s.runJob("chatty");
  await s.jobEnd();
  const [record] = await s.recvType("log");
  assert.deepEqual(record.msg, { type: "log", level: "info", message: "driver record", fields: { job: "job-1", n: 1 } });
  s.wire.output.end();
  assert.equal(await s.exited, 0);
  assert.match(s.stderr, /a stray console.log/);
});

test("the example sleeps with progress, cancels, fails on request", async (t) => {
  const s = new Session(t, { script: process.env.EXAMPLE_JS });
  const hello = await s.handshake();
  assert.deepEqual(Object.keys(hello.msg.actions).sort(), ["echo", "sleep"]);
  await s.runJob("sleep", { seconds: 0.5 });
  let [result, state, frames] = await s.jobEnd();
  assert.deepEqual([result.output, state.state], [{ ticks: 5 }, "succeeded"]);
  assert.ok(frames.some((f) => f.msg.type === "job_progress"));
  await s.runJob("sleep", { seconds: 60 }, { jobId: "job-2" });
  await s.recv();
  s.request({ type: "cancel_job", job_id: "job-2", reason: "test" });
  [result, state] = await s.jobEnd();
  assert.equal(state.state, "cancelled");
  await s.runJob("sleep", { seconds: 0, fail: true }, { jobId: "job-3" });
  [result] = await s.jobEnd();
  assert.equal(result.message, "Error: asked to fail");
  const source = readFileSync(process.env.EXAMPLE_JS.replace(/\.js$/, ".ts"), "utf8");
  assert.ok(source.split("\n").length < 60, "an action with params, progress and cancel in under 60 lines");
});
