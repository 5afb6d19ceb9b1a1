"""A driver for the tests: one action per behaviour the SDK must get right."""

import os
import time

from drover_driver import Driver

driver = Driver(
    "fixture",
    "1.2.3",
    max_frame_bytes=int(os.environ["FIXTURE_MAX_FRAME"]) if "FIXTURE_MAX_FRAME" in os.environ else None,
    log_buffer_lines=int(os.environ.get("FIXTURE_LOG_BUFFER", "10000")),
    flush_interval=0.05,
)


@driver.action(params={"type": "object"})
def echo(job):
    return {"params": job.params}


@driver.action(params={"type": "object", "properties": {"seconds": {"type": "number"}}})
def sleep(job):
    job.log("sleeping")
    steps = int(job.params.get("seconds", 1) * 10)
    for step in range(steps):
        job.progress(step, total=steps, unit="ticks")
        if job.wait(0.1):
            job.log("cancelled: " + (job.cancel_reason or ""), stream="stderr")
            return None
    return {"slept": True}


@driver.action()
def stubborn(job):
    time.sleep(float(job.params.get("seconds", 30)))
    return "done"


@driver.action()
def fail(job):
    raise RuntimeError("the work failed")


@driver.action()
def spam(job):
    lines = int(job.params.get("lines", 1000))
    width = int(job.params.get("width", 60))
    for i in range(lines):
        job.log(f"{i:06d} " + "x" * width)
    return lines


@driver.action()
def big_output(job):
    return "y" * (2 << 20)


@driver.action()
def leases(job):
    lease = job.acquire_gpu("pytorch/pytorch:2.4.0", disk_gib=20, max_runtime_s=600,
                            env={"EPOCHS": "1"}, bandwidth_gib=1.5)
    status = job.lease_status(lease["lease_id"])
    logs = job.lease_logs(lease["lease_id"], tail=10)
    released = job.release_gpu(lease["lease_id"])
    return {"states": [lease["state"], status["state"], released["state"]], "lines": logs["lines"]}


@driver.action()
def refused(job):
    from drover_driver import RequestError
    try:
        job.acquire_gpu("img", disk_gib=20, max_runtime_s=600)
    except RequestError as e:
        return {"code": e.code, "details": e.details}
    return "not refused"


@driver.action()
def chatty(job):
    driver.log("info", "driver record", job=job.id, n=1)
    print("a stray print on stdout")
    return None


if __name__ == "__main__":
    driver.main()
