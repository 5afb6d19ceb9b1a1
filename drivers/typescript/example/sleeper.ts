// An example drover driver in TypeScript: `sleep` with params, progress, logs and cancel; `echo`.
// Build with `tsc`, check with `drover driver-check -- /usr/bin/node sleeper.js`.
import { Driver } from "drover-driver-sdk";

const driver = new Driver("example-ts", "1.0.0");

interface Sleep {
  seconds: number;
  fail?: boolean;
}

const sleepParams = {
  type: "object",
  properties: { seconds: { type: "number", minimum: 0, maximum: 3600 }, fail: { type: "boolean" } },
  required: ["seconds"],
  additionalProperties: false,
  examples: [{ seconds: 5 }], // driver-check cancels this one mid-job
};

driver.action<Sleep>("sleep", sleepParams, async (job) => {
  const ticks = Math.round(job.params.seconds * 10);
  job.log(`job ${job.id}: sleeping ${job.params.seconds} s`);
  for (let tick = 0; tick < ticks; tick++) {
    job.progress(tick, { total: ticks, unit: "ticks", message: `tick ${tick} of ${ticks}` });
    if (tick % 10 === 0) job.log(`tick ${tick}`);
    // Resolves true at once when the job is cancelled (cancel_job, deadline, shutdown).
    if (await job.wait(0.1)) {
      job.log(`cancelled after ${tick} ticks: ${job.cancelReason}`, "stderr");
      return { ticks: tick }; // reported as `cancelled`, with this output
    }
  }
  if (job.params.fail) throw new Error("asked to fail"); // reported as `failed`
  job.progress(ticks, { total: Math.max(ticks, 1), unit: "ticks", message: "done" });
  return { ticks };
});

driver.action("echo", { type: "object" }, (job) => job.params);

void driver.main();
