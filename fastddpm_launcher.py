"""The ``fastddpm`` console script: sets OpenMP's wait policy, then runs ``fastddpm.cli.run``.

A top-level module, not part of the ``fastddpm`` package, because libgomp reads ``OMP_WAIT_POLICY`` once,
when torch loads it, and importing anything under ``fastddpm`` imports torch first. PASSIVE makes idle
OpenMP threads sleep instead of spinning: on a busy machine torch's spinning threads fight the other jobs
for the cores. Measured on the 2-core CPU machine, `fastddpm sample --method dpmsolver++ --steps 20` beside
a 2-thread torch job: 78 s with libgomp's default, 19–20 s with PASSIVE, 21 s with OMP_NUM_THREADS=1; idle:
13.4–14.0 s default, 13.2–15.7 s PASSIVE (within the machine's noise). A user's own setting is kept.
"""

import os


def run() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fastddpm.cli import run as cli_run

    cli_run()
