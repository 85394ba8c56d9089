"""The ``fastddpm`` console script: sets OpenMP's wait policy, then runs ``fastddpm.cli.run``.

A top-level module, not part of the ``fastddpm`` package, because libgomp reads ``OMP_WAIT_POLICY`` once,
when torch loads it, and importing anything under ``fastddpm`` imports torch first. PASSIVE makes idle
OpenMP threads sleep instead of spinning: on a busy machine torch's spinning threads fight the other jobs
for the cores. Measured on the 2-core CPU machine, `fastddpm sample --method dpmsolver++ --steps 20` beside
a 2-thread torch job: 78 s with libgomp's default, 19–20 s with PASSIVE, 21 s with OMP_NUM_THREADS=1; idle:
13.4–14.0 s default, 13.2–15.7 s PASSIVE (within the machine's noise). A user's own setting is kept.
"""

import gc
import os


def run() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Importing torch creates a few hundred thousand long-lived objects, and the cyclic collector walks them all
    # again and again while they are made: with it paused during the imports (and those objects then frozen
    # out of its reach), `import fastddpm.cli` took 2.05–2.54 s instead of 2.81–4.67 s (5 runs each, alternated,
    # on the 2-core Zen 3 machine with the CPU build of torch; benchmarks/results/startup-parts-zen3.log), and
    # loading the bundled model 0.1 s less. The price: the import's own cyclic garbage (~7,500 objects) is
    # frozen with the rest and never freed; collecting it first would cost ~0.3 s.
    gc.disable()
    try:
        from fastddpm.cli import run as cli_run
    finally:
        gc.freeze()
        gc.enable()
    cli_run()
