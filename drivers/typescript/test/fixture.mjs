// A driver for the tests, built on the installed package: one action per behaviour to check.
import { Driver, RequestError } from "drover-driver-sdk";

const driver = new Driver("fixture", "1.2.3", {
  flushIntervalMs: 50,
  logBufferLines: Number(process.env.FIXTURE_LOG_BUFFER ?? 10000),
  ...(process.env.FIXTURE_MAX_FRAME ? { maxFrameBytes: Number(process.env.FIXTURE_MAX_FRAME) } : {}),
});

driver.action("echo", { type: "object" }, (job) => ({ params: job.params }));

driver.action("sleep", { type: "object", properties: { seconds: { type: "number" } } }, async (job) => {
  job.log("sleeping");
  const steps = Math.round((job.params.seconds ?? 1) * 10);
  for (let step = 0; step < steps; step++) {
    job.progress(step, { total: steps, unit: "ticks" });
    if (await job.wait(0.1)) {
      job.log(`cancelled: ${job.cancelReason}`, "stderr");
      return null;
    }
  }
  return { slept: true };
});

driver.action("fail", true, () => {
  throw new TypeError("the work failed");
});

driver.action("spam", true, (job) => {
  for (let i = 0; i < job.params.lines; i++) job.log(`${String(i).padStart(6, "0")} ${"x".repeat(job.params.width ?? 60)}`);
  return job.params.lines;
});

driver.action("leases", true, async (job) => {
  const lease = await job.acquireGpu({ image: "pytorch/pytorch:2.4.0", disk_gib: 20, max_runtime_s: 600, env: { EPOCHS: "1" } });
  const status = await job.leaseStatus(lease.lease_id);
  const logs = await job.leaseLogs(lease.lease_id, 10);
  const released = await job.releaseGpu(lease.lease_id);
  return { states: [lease.state, status.state, released.state], lines: logs.lines };
});

driver.action("refused", true, async (job) => {
  try {
    await job.acquireGpu({ image: "img", disk_gib: 20, max_runtime_s: 600 });
  } catch (e) {
    if (e instanceof RequestError) return { code: e.code, details: e.details };
    throw e;
  }
  return "not refused";
});

driver.action("chatty", true, () => {
  driver.log("info", "driver record", { job: "job-1", n: 1 });
  console.log("a stray console.log");
  return null;
});

void driver.main();
