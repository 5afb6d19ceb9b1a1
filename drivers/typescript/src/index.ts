/**
 * drover-driver-sdk: write a drover driver in TypeScript or JavaScript (Node 20+).
 *
 * ```ts
 * import { Driver } from "drover-driver-sdk";
 *
 * const driver = new Driver("sleeper", "1.0.0");
 * driver.action("sleep", { type: "object", properties: { seconds: { type: "number" } } }, async (job) => {
 *   if (await job.wait(Number(job.params.seconds ?? 1))) return null; // cancelled
 *   return { slept: true };                                            // the job's output
 * });
 * void driver.main();
 * ```
 *
 * The SDK speaks DriverTransport on fd 3 (`DROVER_TRANSPORT_FD`) or stdio
 * (`DROVER_TRANSPORT=stdio`): `hello` with every action's params schema and the schema-set
 * digest, `welcome` or `version_mismatch` (exit 3), `ping`, `run_job` (ack, `running`, the
 * action, `job_result`, the terminal state), `cancel_job` (ack at once, `job.signal` fires),
 * `shutdown {grace_ms}` (half the grace to finish, then cancelled; reported at 80%), end of
 * transport (every job cancelled, exit 0), coalesced progress, bounded batched logs, the lease
 * requests. Incoming frames are validated against the schemas in schemas/transport/ (ajv);
 * bad ones are answered with an `error` and the session goes on.
 */
export { Driver, RequestError, TransportClosed, transportFromEnv, type ActionFn, type DriverOptions } from "./driver";
export { Cancelled, Job, type AcquireGpu } from "./job";
export * from "./generated/transport";
