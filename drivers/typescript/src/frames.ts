// The wire half of the SDK: length-prefixed frames on a byte stream, strict decoding of incoming
// payloads, and their validation against the supervisor's messages' JSON Schemas (ajv, draft
// 2020-12, the very schemas in schemas/transport/, embedded by the generator).
import Ajv2020, { type ErrorObject, type ValidateFunction } from "ajv/dist/2020";

import { SUPERVISOR_FRAME_SCHEMAS, type Frame, type Violation } from "./generated/transport";

/** The frame limit until `welcome` states the session's. */
export const DEFAULT_MAX_FRAME_BYTES = 1 << 20;
/** A declared length over this many times the limit means the stream is not framed at all. */
export const CEILING_FACTOR = 64;

const DRIVER_ONLY = new Set([
  "hello", "ack", "job_state", "job_progress", "job_log", "job_result", "log",
  "acquire_gpu", "lease_status", "lease_logs", "release_gpu",
]);

/** What the reader found on the stream, in order. */
export type ReadEvent =
  | { kind: "frame"; payload: Buffer }
  | { kind: "too_large"; length: number; limit: number }
  | { kind: "unframed"; message: string };

/**
 * Splits a byte stream into frames. An oversize frame is skipped as it streams in (never
 * buffered) and reported; a declared length over {@link CEILING_FACTOR} times the limit ends
 * the stream as unframed.
 */
export class FrameReader {
  maxFrameBytes = DEFAULT_MAX_FRAME_BYTES;
  private buffer: Buffer = Buffer.alloc(0);
  private skipping = 0;
  private dead = false;

  /** Feeds bytes; returns what they completed. */
  push(chunk: Buffer): ReadEvent[] {
    const events: ReadEvent[] = [];
    if (this.dead) return events;
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    for (;;) {
      if (this.skipping > 0) {
        const take = Math.min(this.skipping, this.buffer.length);
        this.buffer = this.buffer.subarray(take);
        this.skipping -= take;
        if (this.skipping > 0) return events;
      }
      if (this.buffer.length < 4) return events;
      const length = this.buffer.readUInt32BE(0);
      const limit = this.maxFrameBytes;
      if (length > limit * CEILING_FACTOR) {
        this.dead = true;
        const head = this.buffer.subarray(0, 64).toString("utf8");
        events.push({
          kind: "unframed",
          message: `declared length ${length} is over ${CEILING_FACTOR}x the limit of ${limit}; ` +
            `the stream is not framed; it starts with ${JSON.stringify(head)}`,
        });
        return events;
      }
      if (length > limit) {
        this.buffer = this.buffer.subarray(4);
        this.skipping = length;
        events.push({ kind: "too_large", length, limit });
        continue;
      }
      if (this.buffer.length < 4 + length) return events;
      events.push({ kind: "frame", payload: Buffer.from(this.buffer.subarray(4, 4 + length)) });
      this.buffer = this.buffer.subarray(4 + length);
    }
  }

  /** True when the stream ended inside a frame. */
  get midFrame(): boolean {
    return this.buffer.length > 0 || this.skipping > 0;
  }
}

/** A frame as bytes on the wire: 4-byte big-endian length, then the payload. */
export function encodeFrame(frame: Frame | { re?: number; id?: number; msg: object }): Buffer {
  const payload = Buffer.from(JSON.stringify(frame), "utf8");
  const out = Buffer.alloc(4 + payload.length);
  out.writeUInt32BE(payload.length, 0);
  payload.copy(out, 4);
  return out;
}

/** Why an incoming payload was refused: the `error` frame to answer with. */
export class InvalidFrame extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly requestId?: number,
    readonly violations: Violation[] = [],
    /** The frame's `msg.type`, when it had one: an `error` is never answered. */
    readonly type?: string,
  ) {
    super(message);
  }
}

const ajv = new Ajv2020({ allErrors: true, strict: false });
const validators = new Map<string, ValidateFunction>(
  Object.entries(SUPERVISOR_FRAME_SCHEMAS).map(([type, schema]) => [type, ajv.compile(schema)]),
);
const utf8 = new TextDecoder("utf-8", { fatal: true });

function msgId(value: unknown): number | undefined {
  return Number.isSafeInteger(value) && (value as number) >= 1 ? (value as number) : undefined;
}

function violation(e: ErrorObject): Violation {
  const extra = e.keyword === "additionalProperties"
    ? `/${String((e.params as { additionalProperty?: string }).additionalProperty)}` : "";
  return {
    instance_path: (e.instancePath + extra).slice(0, 512),
    schema_path: e.schemaPath.replace(/^#/, "").slice(0, 512),
    message: `${e.message ?? "is invalid"}`.slice(0, 1024),
  };
}

/** Parses and checks one incoming payload; throws {@link InvalidFrame} with the error to answer. */
export function decodeFrame(payload: Buffer): Frame {
  let text: string;
  try {
    text = utf8.decode(payload);
  } catch {
    throw new InvalidFrame("invalid_utf8", "payload is not UTF-8");
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new InvalidFrame("invalid_json", `payload is not JSON: ${String((e as Error).message).slice(0, 200)}`);
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new InvalidFrame("invalid_json", "payload is not one JSON object");
  }
  const frame = value as Record<string, unknown>;
  const id = msgId(frame.id);
  const msg = frame.msg as Record<string, unknown> | undefined;
  const type = typeof msg === "object" && msg !== null && typeof msg.type === "string" ? msg.type : undefined;
  if (type === undefined) {
    throw new InvalidFrame("schema_violation", "frame breaks the envelope schema", id, [{
      instance_path: "/msg/type", schema_path: "/properties/msg/required",
      message: "`msg.type` is missing or not a string",
    }]);
  }
  if (DRIVER_ONLY.has(type)) {
    throw new InvalidFrame("unexpected_message", `a supervisor does not send \`${type}\``, id, [], type);
  }
  const validate = validators.get(type);
  if (!validate) {
    throw new InvalidFrame("unknown_type", "`msg.type` names no message of protocol 1", id, [], type);
  }
  if (!validate(frame)) {
    const violations = (validate.errors ?? []).slice(0, 64).map(violation);
    throw new InvalidFrame("schema_violation", `\`${type}\` frame breaks its schema`, id, violations, type);
  }
  return frame as unknown as Frame;
}
