// The driver: its identity, its actions, and the session (handshake, dispatch, jobs, flushes,
// shutdown, end of transport).
import { fstatSync } from "node:fs";
import { Socket } from "node:net";

import { DEFAULT_MAX_FRAME_BYTES, FrameReader, InvalidFrame, decodeFrame, encodeFrame } from "./frames";
import {
  PROTOCOL_VERSION, SCHEMA_SHA256, type Level, type LogStream, type Outcome, type ParamsSchema,
  type RunJobMessage, type Violation,
} from "./generated/transport";
import { Cancelled, Job, type JobHost } from "./job";

/** An action's function: its return value (JSON) is the job's output. */
export type ActionFn<Params = Record<string, unknown>> = (job: Job<Params>) => unknown;

/** The supervisor answered a request with an `error` frame. */
export class RequestError extends Error {
  override name = "RequestError";
  constructor(readonly code: string, message: string, readonly details: Record<string, unknown> = {}) {
    super(`${code}: ${message}`);
  }
}

/** The transport is closed: the supervisor went away or the driver is exiting. */
export class TransportClosed extends Error {
  override name = "TransportClosed";
}

/** Options of {@link Driver}; every one has a default. */
export interface DriverOptions {
  /** Default `["cancel", "progress", "logs"]`. */
  capabilities?: string[];
  /** The largest frame to receive; default: not sent, the supervisor's limit (1 MiB) applies. */
  maxFrameBytes?: number;
  /** Jobs at once; more are refused with `not_ready`. Default 64. */
  maxJobs?: number;
  /** Buffered log lines per job and stream before the oldest are dropped. Default 10000. */
  logBufferLines?: number;
  /** Milliseconds between progress and log flushes. Default 200. */
  flushIntervalMs?: number;
  /** Milliseconds to wait for `welcome`. Default 30000. */
  helloTimeoutMs?: number;
  /** Milliseconds to wait for the reply to a lease request. Default 900000. */
  requestTimeoutMs?: number;
}

interface Pending {
  accepts: string[];
  resolve(msg: Record<string, unknown>): void;
  reject(error: Error): void;
}

interface Wire {
  input: NodeJS.ReadableStream;
  write(data: Buffer): void;
  end(): Promise<void>;
}

const NAME_RE = /^[a-z][a-z0-9-]*$/;
const SNAKE_RE = /^[a-z][a-z0-9_]*$/;
const VERSION_RE = /^[0-9A-Za-z.+_-]+$/;
const LINES_PER_FRAME = 4096;
const LINE_CHARS = 16 * 1024;
const truncate = (text: string, limit: number): string =>
  text.length <= limit ? text : `${text.slice(0, limit - 3)}...`;
const stderr = (text: string): void => void process.stderr.write(`drover-driver-sdk: ${text}\n`);

/** The transport drover set up: the socket at `DROVER_TRANSPORT_FD` (default 3), or stdio when `DROVER_TRANSPORT=stdio`. */
export function transportFromEnv(env: NodeJS.ProcessEnv = process.env): Wire {
  if (env.DROVER_TRANSPORT === "stdio") {
    // stdout carries frames: stray console output goes to stderr instead.
    console.log = console.info = console.debug = console.error;
    return {
      input: process.stdin,
      write: (data) => void process.stdout.write(data),
      end: () => new Promise((resolve) => process.stdout.write("", () => resolve())),
    };
  }
  const fd = Number(env.DROVER_TRANSPORT_FD ?? "3");
  if (!Number.isInteger(fd) || fd <= 2) throw new RangeError("DROVER_TRANSPORT_FD must be a descriptor number above 2");
  if (!fstatSync(fd).isSocket()) throw new TransportClosed(`descriptor ${fd} is not the transport socket`);
  const socket = new Socket({ fd, readable: true, writable: true });
  socket.on("error", (e) => stderr(`transport: ${e.message}`));
  return {
    input: socket,
    write: (data) => void socket.write(data),
    end: () => new Promise((resolve) => {
      const timer = setTimeout(resolve, 1000);
      socket.end(() => { clearTimeout(timer); resolve(); });
    }),
  };
}

/** A driver: its identity, its actions, and the session loop ({@link Driver.run}). */
export class Driver implements JobHost {
  readonly capabilities: string[];
  readonly maxJobs: number;
  readonly logBufferLines: number;
  /** The `welcome` message, once received. */
  session: Record<string, unknown> | undefined;
  private readonly actions = new Map<string, { schema: ParamsSchema; fn: ActionFn<never> }>();
  private readonly jobs = new Map<string, Job>();
  private readonly pending = new Map<number, Pending>();
  private readonly reader = new FrameReader();
  private readonly options: Required<Omit<DriverOptions, "maxFrameBytes" | "capabilities">> & { maxFrameBytes?: number };
  private records: Record<string, unknown>[] = [];
  private recordsDropped = 0;
  private wire: Wire | undefined;
  private nextId = 1;
  private maxFrame = DEFAULT_MAX_FRAME_BYTES;
  private shuttingDown = false;
  private closed = false;
  private finish: ((code: number) => void) | undefined;

  constructor(readonly name: string, readonly version = "0.1.0", options: DriverOptions = {}) {
    if (name.length > 64 || !NAME_RE.test(name)) throw new RangeError("driver name must match ^[a-z][a-z0-9-]*$, 1 to 64 characters");
    if (version.length > 64 || !VERSION_RE.test(version)) throw new RangeError("driver version must match ^[0-9A-Za-z.+_-]+$, 1 to 64 characters");
    const max = options.maxFrameBytes;
    if (max !== undefined && !(Number.isInteger(max) && max >= 4096 && max <= 16 << 20)) {
      throw new RangeError("maxFrameBytes must be from 4096 to 16777216");
    }
    this.capabilities = [...new Set(options.capabilities ?? ["cancel", "progress", "logs"])];
    this.maxJobs = options.maxJobs ?? 64;
    this.logBufferLines = options.logBufferLines ?? 10000;
    this.options = {
      maxJobs: this.maxJobs, logBufferLines: this.logBufferLines, maxFrameBytes: max,
      flushIntervalMs: options.flushIntervalMs ?? 200, helloTimeoutMs: options.helloTimeoutMs ?? 30000,
      requestTimeoutMs: options.requestTimeoutMs ?? 900000,
    };
  }

  /** Declares an action: `params` is the JSON Schema (an object or `true`) the supervisor checks a job's params against. */
  action<Params = Record<string, unknown>>(name: string, params: ParamsSchema, fn: ActionFn<Params>): this {
    if (name.length > 64 || !SNAKE_RE.test(name)) throw new RangeError("action names must match ^[a-z][a-z0-9_]*$, 1 to 64 characters");
    if (typeof params !== "boolean" && (typeof params !== "object" || params === null || Array.isArray(params))) {
      throw new RangeError("an action's params schema must be an object or a boolean");
    }
    this.actions.set(name, { schema: params, fn: fn as ActionFn<never> });
    return this;
  }

  /** A record of the driver's own log, sent at the next flush (at most 1000 wait; older ones are dropped and counted). */
  log(level: Level, message: string, fields?: Record<string, unknown>): void {
    const record: Record<string, unknown> = { type: "log", level, message: truncate(message, 4096) };
    if (fields) record.fields = Object.fromEntries(Object.entries(fields).slice(0, 32));
    this.records.push(record);
    if (this.records.length > 1000) {
      this.records.shift();
      this.recordsDropped += 1;
    }
  }

  /** Runs the driver on the transport drover set up and exits with its code. */
  async main(): Promise<never> {
    let code = 1;
    try {
      code = await this.run();
    } catch (e) {
      stderr(`${(e as Error).message}`);
    }
    if (this.wire) await this.wire.end();
    process.exit(code);
  }

  /** Handshake, then serve until shutdown or end of transport; resolves to the exit code (0 normal, 1 failed handshake, 2 unframed stream, 3 version mismatch). */
  async run(wire: Wire = transportFromEnv()): Promise<number> {
    if (this.actions.size === 0) throw new RangeError("declare at least one action before run()");
    this.wire = wire;
    const done = new Promise<number>((resolve) => { this.finish = resolve; });
    wire.input.on("data", (chunk: Buffer) => this.onData(chunk));
    wire.input.on("end", () => this.endOfTransport(0));
    wire.input.on("close", () => this.endOfTransport(0));
    wire.input.on("error", () => this.endOfTransport(0));
    const hello = {
      type: "hello", protocol_versions: [PROTOCOL_VERSION], driver: { name: this.name, version: this.version },
      capabilities: this.capabilities, schema_sha256: SCHEMA_SHA256,
      actions: Object.fromEntries([...this.actions].map(([name, a]) => [name, a.schema])),
      ...(this.options.maxFrameBytes ? { max_frame_bytes: this.options.maxFrameBytes } : {}),
    };
    this.request(hello, ["welcome"], this.options.helloTimeoutMs).then((welcome) => {
      if (welcome.protocol_version !== PROTOCOL_VERSION) {
        stderr(`supervisor chose protocol ${String(welcome.protocol_version)}, not offered`);
        this.done(1);
        return;
      }
      const timer = setInterval(() => this.flushAll(), this.options.flushIntervalMs);
      void done.then(() => clearInterval(timer));
    }, (e: Error) => {
      if (e instanceof RequestError && e.code === "version_mismatch") {
        stderr(`version mismatch: supervisor supports ${JSON.stringify(e.details.supported)}, this driver offers [${PROTOCOL_VERSION}]`);
        this.done(3);
      } else if (!(e instanceof TransportClosed)) {
        stderr(`handshake failed: ${e.message}`);
        this.done(1);
      }
    });
    return done;
  }

  private done(code: number): void {
    const finish = this.finish;
    this.finish = undefined;
    finish?.(code);
  }

  private send(frame: { id?: number; re?: number; msg: object }): void {
    if (this.closed || !this.wire) throw new TransportClosed("transport closed");
    const bytes = encodeFrame(frame);
    if (bytes.length - 4 > this.maxFrame) throw new RangeError(`frame of ${bytes.length - 4} bytes is over max_frame_bytes`);
    this.wire.write(bytes);
  }

  private sendQuietly(frame: { id?: number; re?: number; msg: { type: string; [key: string]: unknown } }): void {
    try {
      this.send(frame);
    } catch (e) {
      stderr(`could not send ${frame.msg.type}: ${(e as Error).message}`);
    }
  }

  private error(code: string, message: string, re?: number, violations: Violation[] = [], details?: object): void {
    const msg: Record<string, unknown> = { type: "error", code, message: truncate(message, 1024) };
    if (violations.length) msg.violations = violations;
    if (details) msg.details = details;
    this.sendQuietly(re === undefined ? { msg: msg as { type: string } } : { re, msg: msg as { type: string } });
  }

  /** Sends a request and resolves to its reply's `msg`; rejects with {@link RequestError} for an `error` reply. */
  request(msg: { type: string; [key: string]: unknown }, accepts: string[] = ["lease"], timeoutMs?: number): Promise<Record<string, unknown>> {
    const id = this.nextId;
    this.nextId = id >= Number.MAX_SAFE_INTEGER ? 1 : id + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`no reply to ${msg.type} within ${timeoutMs ?? this.options.requestTimeoutMs} ms`));
      }, timeoutMs ?? this.options.requestTimeoutMs);
      const settle = (f: () => void) => { clearTimeout(timer); this.pending.delete(id); f(); };
      this.pending.set(id, {
        accepts,
        resolve: (reply) => settle(() => resolve(reply)),
        reject: (e) => settle(() => reject(e)),
      });
      try {
        this.send({ id, msg });
      } catch (e) {
        this.pending.get(id)?.reject(e as Error);
      }
    });
  }

  private onData(chunk: Buffer): void {
    for (const event of this.reader.push(chunk)) {
      if (event.kind === "too_large") {
        this.error("frame_too_large", `frame of ${event.length} bytes is over the limit of ${event.limit} bytes`,
          undefined, [], { len: event.length, max: event.limit });
      } else if (event.kind === "unframed") {
        stderr(event.message);
        this.endOfTransport(2);
        return;
      } else {
        let frame;
        try {
          frame = decodeFrame(event.payload);
        } catch (e) {
          const invalid = e as InvalidFrame;
          // An error frame is never answered, whatever is wrong with it.
          if (invalid.type !== "error") this.error(invalid.code, invalid.message, invalid.requestId, invalid.violations);
          continue;
        }
        try {
          this.dispatch(frame as { id?: number; re?: number; msg: Record<string, unknown> & { type: string } });
        } catch (e) {
          stderr(`dispatch failed: ${(e as Error).stack ?? String(e)}`);
        }
      }
    }
  }

  private dispatch(frame: { id?: number; re?: number; msg: Record<string, unknown> & { type: string } }): void {
    const { msg } = frame;
    const id = frame.id as number;
    if (msg.type === "ping") {
      this.sendQuietly({ re: id, msg: { type: "pong" } });
    } else if (frame.re !== undefined) {
      this.deliver(frame.re, msg);
    } else if (msg.type === "error") {
      stderr(`supervisor reported ${String(msg.code)}: ${String(msg.message)}`);
    } else if (!this.session) {
      this.error("not_ready", `\`${msg.type}\` before the handshake finished`, id);
    } else if (msg.type === "run_job") {
      this.startJob(id, msg as unknown as RunJobMessage);
    } else if (msg.type === "cancel_job") {
      const job = this.jobs.get(msg.job_id as string);
      if (!job || job.finished) {
        this.error("unknown_job", "no running job with that id", id);
        return;
      }
      this.sendQuietly({ re: id, msg: { type: "ack" } });
      job.cancel((msg.reason as string) || "cancel_job");
    } else if (msg.type === "shutdown") {
      this.sendQuietly({ re: id, msg: { type: "ack" } });
      if (!this.shuttingDown) {
        this.shuttingDown = true;
        void this.drain(msg.grace_ms as number);
      }
    }
  }

  private deliver(re: number, msg: Record<string, unknown> & { type: string }): void {
    const pending = this.pending.get(re);
    if (!pending) {
      if (msg.type !== "error") this.error("unexpected_message", `\`${msg.type}\` answers no open request`);
      return;
    }
    if (msg.type === "error") {
      pending.reject(new RequestError(msg.code as string, msg.message as string, (msg.details ?? {}) as Record<string, unknown>));
    } else if (pending.accepts.includes(msg.type)) {
      if (msg.type === "welcome") {
        // Before the next frame is read: the session's frame limit applies from here.
        this.session = msg;
        this.maxFrame = msg.max_frame_bytes as number;
        this.reader.maxFrameBytes = this.maxFrame;
      }
      pending.resolve(msg);
    } else {
      this.error("unexpected_message", `\`${msg.type}\` does not answer that request`);
      pending.reject(new Error(`\`${msg.type}\` does not answer the request`));
    }
  }

  private startJob(id: number, msg: RunJobMessage): void {
    const action = this.actions.get(msg.action);
    let busy: string | undefined;
    if (this.shuttingDown) busy = "the driver is shutting down";
    else if (!action) return this.error("unknown_action", "no action with that name was declared", id);
    else if (this.jobs.has(msg.job_id)) busy = "a job with that id is already running";
    else if (this.jobs.size >= this.maxJobs) busy = `the driver runs at most ${this.maxJobs} jobs at once`;
    if (busy || !action) return this.error("not_ready", busy ?? "", id);
    const job = new Job(this, msg.job_id, msg.action, msg.params, msg.gpu, msg.deadline_unix_ms);
    this.jobs.set(job.id, job);
    this.sendQuietly({ re: id, msg: { type: "ack" } });
    this.setState(job, "running");
    void this.runJob(job, action.fn as ActionFn);
  }

  private setState(job: Job, state: string, message?: string): void {
    const msg: Record<string, unknown> = { type: "job_state", job_id: job.id, state };
    if (message) msg.message = truncate(message, 1024);
    this.sendQuietly({ msg: msg as { type: string } });
  }

  private async runJob(job: Job, fn: ActionFn): Promise<void> {
    let outcome: Outcome = "succeeded";
    let output: unknown;
    let message: string | undefined;
    try {
      output = await fn(job);
      if (job.cancelled) [outcome, message] = ["cancelled", job.cancelReason];
    } catch (e) {
      if (e instanceof Cancelled) {
        [outcome, message] = ["cancelled", e.message];
      } else {
        const error = e instanceof Error ? e : new Error(String(e));
        [outcome, message] = ["failed", `${error.name}: ${error.message}`];
        stderr(`job ${job.id} failed: ${error.stack ?? error.message}`);
      }
    }
    this.finishJob(job, outcome, output, message);
  }

  private finishJob(job: Job, outcome: Outcome, output: unknown, message: string | undefined): void {
    if (job.finished) return;
    this.flushJob(job);
    job.finished = true;
    let result: Record<string, unknown> = { type: "job_result", job_id: job.id, outcome };
    if (output !== undefined && output !== null) result.output = output;
    if (message) result.message = truncate(message, 1024);
    try {
      const size = Buffer.byteLength(JSON.stringify({ msg: result }));
      if (size > this.maxFrame) throw new RangeError(`output of ${size} bytes is over max_frame_bytes`);
    } catch (e) {
      outcome = "failed";
      result = { type: "job_result", job_id: job.id, outcome, message: truncate(`output not sendable: ${(e as Error).message}`, 1024) };
    }
    this.sendQuietly({ msg: result as { type: string } });
    this.setState(job, outcome, outcome !== "succeeded" ? (result.message as string | undefined) : undefined);
    this.jobs.delete(job.id);
  }

  private flushJob(job: Job): void {
    if (job.finished) return;
    if (job.pendingProgress) {
      this.sendQuietly({ msg: { ...job.pendingProgress } });
      job.pendingProgress = undefined;
    }
    const budget = this.maxFrame - 256 - job.id.length;
    const chunk = Math.max(64, Math.min(LINE_CHARS, Math.floor(budget / 6) - 16));
    for (const stream of ["stdout", "stderr"] as LogStream[]) {
      const queue = job.logs[stream];
      while (queue.length || job.dropped[stream]) {
        const lines: string[] = [];
        let size = 0;
        while (queue.length && lines.length < LINES_PER_FRAME) {
          let line = queue[0] as string;
          if (line.length > chunk) {
            // Split an over-long line in place; the pieces go out in order.
            const pieces = [];
            for (let i = 0; i < line.length; i += chunk) pieces.push(line.slice(i, i + chunk));
            queue.splice(0, 1, ...pieces);
            line = queue[0] as string;
          }
          const cost = Buffer.byteLength(JSON.stringify(line)) + 1;
          if (lines.length && size + cost > budget) break;
          lines.push(queue.shift() as string);
          size += cost;
        }
        const dropped = job.dropped[stream];
        job.dropped[stream] = 0;
        if (!lines.length) lines.push(`[drover-driver-sdk: ${dropped} lines dropped]`);
        this.sendQuietly({ msg: { type: "job_log", job_id: job.id, stream, lines, dropped } });
      }
    }
  }

  private flushAll(): void {
    const records = this.records;
    let dropped = this.recordsDropped;
    [this.records, this.recordsDropped] = [[], 0];
    for (const record of records) {
      if (dropped) {
        record.fields = { ...(record.fields as object | undefined), dropped_records: dropped };
        dropped = 0;
      }
      this.sendQuietly({ msg: record as { type: string } });
    }
    const now = Date.now();
    for (const job of this.jobs.values()) {
      if (now >= job.deadlineUnixMs) job.cancel("deadline");
      this.flushJob(job);
    }
  }

  private async drain(graceMs: number): Promise<void> {
    const start = Date.now();
    const waitJobs = async (until: number) => {
      while (this.jobs.size && Date.now() - start < until) await new Promise((r) => setTimeout(r, 10));
    };
    await waitJobs(graceMs * 0.5);
    for (const job of this.jobs.values()) job.cancel("shutdown");
    await waitJobs(graceMs * 0.8);
    for (const job of [...this.jobs.values()]) this.finishJob(job, "cancelled", undefined, "shutdown: grace period over");
    this.flushAll();
    this.done(0);
  }

  private endOfTransport(code: number): void {
    if (this.closed) return;
    this.closed = true;
    for (const pending of [...this.pending.values()]) pending.reject(new TransportClosed("transport closed"));
    for (const job of this.jobs.values()) job.cancel("transport closed");
    const deadline = Date.now() + 1000;
    const poll = () => (this.jobs.size && Date.now() < deadline ? setTimeout(poll, 10) : this.done(code));
    poll();
  }
}
