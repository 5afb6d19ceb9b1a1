#!/usr/bin/env python3
"""An example drover driver: `sleep` for a while with progress and logs, cancel-aware.

It imports the installed SDK (`pip install drover-driver-sdk`, or `pip install drivers/python`
from a drover checkout). With a venv beside it, check it under drover's conformance kit (the
directory of the script, venv included, becomes readable in the sandbox):

    drover driver-check -- /opt/example/.venv/bin/python /opt/example/example_driver.py

or declare it in drover.toml:

    [[drivers]]
    name = "example"
    command = ["/opt/example/.venv/bin/python", "/opt/example/example_driver.py"]
"""

from drover_driver import Driver

driver = Driver("example", "1.0.0")

SLEEP_PARAMS = {
    "type": "object",
    "properties": {
        "seconds": {"type": "number", "minimum": 0, "maximum": 3600},
        "fail": {"type": "boolean"},
    },
    "required": ["seconds"],
    "additionalProperties": False,
    "examples": [{"seconds": 5}],  # driver-check cancels this one mid-job
}


@driver.action(params=SLEEP_PARAMS)
def sleep(job):
    """Sleeps `seconds` in tenths, reporting progress and a log line each second."""
    ticks = round(job.params["seconds"] * 10)
    job.log(f"job {job.id}: sleeping {job.params['seconds']} s")
    for tick in range(ticks):
        job.progress(tick, total=max(ticks, 1), unit="ticks", message=f"tick {tick} of {ticks}")
        if tick % 10 == 0:
            job.log(f"tick {tick}")
        # Returns True at once when the job is cancelled (cancel_job, deadline, shutdown).
        if job.wait(0.1):
            job.log(f"cancelled after {tick} ticks: {job.cancel_reason}", stream="stderr")
            return {"ticks": tick}  # reported as `cancelled`, with this output
    if job.params.get("fail"):
        raise RuntimeError("asked to fail")  # reported as `failed` with this message
    job.progress(ticks, total=max(ticks, 1), unit="ticks", message="done")
    return {"ticks": ticks}


@driver.action(params={"type": "object"})
def echo(job):
    """Returns its params as the job's output."""
    return job.params


if __name__ == "__main__":
    driver.main()
