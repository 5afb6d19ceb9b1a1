// A running job, as an action sees it: params, cancellation, coalesced progress, bounded logs,
// and the GPU lease requests.
import type {
  AcquireGpuMessage, GpuRequest, JobProgressMessage, LeaseLogMessage, LeaseMessage, LogStream,
} from "./generated/transport";

/** Thrown by {@link Job.throwIfCancelled}; an action that lets it escape ends `cancelled`. */
export class Cancelled extends Error {
  override name = "Cancelled";
}

/** What a job needs from its driver (the session). */
export interface JobHost {
  readonly logBufferLines: number;
  request(msg: { type: string; [key: string]: unknown }, accepts: string[]): Promise<Record<string, unknown>>;
}

/** The lease request of {@link Job.acquireGpu}: `acquire_gpu` without `type` and `job_id`; `gpu` defaults to the job's. */
export type AcquireGpu = Omit<AcquireGpuMessage, "type" | "job_id" | "gpu"> & { gpu?: GpuRequest };

const truncate = (text: string, limit: number): string =>
  text.length <= limit ? text : `${text.slice(0, limit - 3)}...`;

/** One running job, handed to the action function. */
export class Job<Params = Record<string, unknown>> {
  /** Fires when the job is cancelled (`cancel_job`, its deadline, or shutdown). */
  readonly signal: AbortSignal;
  /** @internal */ finished = false;
  /** @internal */ pendingProgress: JobProgressMessage | undefined;
  /** @internal */ readonly logs: Record<LogStream, string[]> = { stdout: [], stderr: [] };
  /** @internal */ readonly dropped: Record<LogStream, number> = { stdout: 0, stderr: 0 };
  private readonly controller = new AbortController();
  private reason: string | undefined;

  constructor(
    private readonly host: JobHost,
    /** The job's id. */
    readonly id: string,
    /** The action it runs. */
    readonly action: string,
    /** Its params, validated by the supervisor against the action's schema. */
    readonly params: Params,
    /** Its GPU request, if it has one. */
    readonly gpu: GpuRequest | undefined,
    /** When it must have ended, Unix time in milliseconds. */
    readonly deadlineUnixMs: number,
  ) {
    this.signal = this.controller.signal;
  }

  /** True once the job was cancelled. */
  get cancelled(): boolean {
    return this.signal.aborted;
  }

  /** Why it was cancelled (`cancel_job`'s reason, `deadline`, `shutdown`), once it was. */
  get cancelReason(): string | undefined {
    return this.reason;
  }

  /** Sleeps up to `seconds`; resolves `true` at once if the job is (or gets) cancelled. */
  wait(seconds: number): Promise<boolean> {
    if (this.cancelled) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (cancelled: boolean) => {
        clearTimeout(timer);
        this.signal.removeEventListener("abort", onAbort);
        resolve(cancelled);
      };
      const onAbort = () => done(true);
      const timer = setTimeout(() => done(false), Math.max(0, seconds * 1000));
      this.signal.addEventListener("abort", onAbort);
    });
  }

  /** Throws {@link Cancelled} if the job was cancelled. */
  throwIfCancelled(): void {
    if (this.cancelled) throw new Cancelled(this.reason ?? "cancelled");
  }

  /** @internal */
  cancel(reason: string): void {
    if (!this.cancelled) {
      this.reason = reason;
      this.controller.abort();
    }
  }

  /** Reports progress; coalesced: only the latest value is sent at the next flush. */
  progress(current: number, options: { total?: number; unit?: string; message?: string } = {}): void {
    if (!Number.isFinite(current) || current < 0 || current > 1e15) {
      throw new RangeError("progress `current` must be a finite number from 0 to 1e15");
    }
    const { total, unit, message } = options;
    if (total !== undefined && (!Number.isFinite(total) || total <= 0 || total > 1e15)) {
      throw new RangeError("progress `total` must be a finite number above 0, at most 1e15");
    }
    const msg: JobProgressMessage = { type: "job_progress", job_id: this.id, current };
    if (total !== undefined) msg.total = total;
    if (unit) msg.unit = truncate(unit, 32);
    if (message !== undefined) msg.message = truncate(message, 256);
    this.pendingProgress = msg;
  }

  /** Queues log text (split at newlines). Bounded: beyond `logBufferLines` the oldest queued lines are dropped and counted. */
  log(text: string, stream: LogStream = "stdout"): void {
    if (stream !== "stdout" && stream !== "stderr") throw new RangeError("stream must be 'stdout' or 'stderr'");
    const queue = this.logs[stream];
    queue.push(...String(text).split(/\r?\n/));
    const over = queue.length - this.host.logBufferLines;
    if (over > 0) {
      queue.splice(0, over);
      this.dropped[stream] += over;
    }
  }

  /** Asks the supervisor to rent GPUs for this job; resolves to the `lease`, rejects with a `RequestError` (e.g. `cost_gate_rejected`). */
  async acquireGpu(request: AcquireGpu): Promise<LeaseMessage> {
    const gpu = request.gpu ?? this.gpu;
    if (!gpu) throw new RangeError("acquireGpu needs a `gpu` request (the job has none)");
    const msg = { ...request, type: "acquire_gpu", job_id: this.id, gpu };
    return (await this.host.request(msg, ["lease"])) as unknown as LeaseMessage;
  }

  /** The current `lease` of one of this driver's leases. */
  async leaseStatus(leaseId: string): Promise<LeaseMessage> {
    return (await this.host.request({ type: "lease_status", lease_id: leaseId }, ["lease"])) as unknown as LeaseMessage;
  }

  /** The last `tail` lines of a lease's instance log. */
  async leaseLogs(leaseId: string, tail = 100): Promise<LeaseLogMessage> {
    const msg = { type: "lease_logs", lease_id: leaseId, tail };
    return (await this.host.request(msg, ["lease_log"])) as unknown as LeaseLogMessage;
  }

  /** Gives a lease back; resolves to its final `lease`. Releasing twice is harmless. */
  async releaseGpu(leaseId: string): Promise<LeaseMessage> {
    return (await this.host.request({ type: "release_gpu", lease_id: leaseId }, ["lease"])) as unknown as LeaseMessage;
  }
}
