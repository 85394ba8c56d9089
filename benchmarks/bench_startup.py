"""The README's sample command end to end (a benchmark, not a test): wall seconds of ``fastddpm sample`` from
process start to exit, Python and torch start-up included, for one or more configurations alternated round
by round; median and min–max, and the seconds the command itself reports (loading and sampling).

A configuration is a Python interpreter (a venv: e.g. one with the CPU build of torch, one with a CUDA build)
and, optionally, a checkout put first on its path (to compare a change against an older commit:
``git worktree add /tmp/before HEAD~1``)::

    python benchmarks/bench_startup.py --rounds 8
    python benchmarks/bench_startup.py --python /tmp/cpu-venv/bin/python --tree /tmp/before --tree .
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402

# What the console script runs (fastddpm_launcher.run), started the way a shell starts it.
LAUNCH = "import sys; sys.path[:0] = [p for p in sys.argv[1:2] if p]; del sys.argv[1]; " \
         "import fastddpm_launcher; fastddpm_launcher.run()"
REPORTED = re.compile(r"in ([0-9.]+) s \(")  # "wrote 64 samples ... in 1.6 s (unipc, 5 steps)"


def run_once(python: str, tree: str, out: Path) -> tuple[float, float | None]:
    """(wall seconds, seconds the command reports) of one ``fastddpm sample`` in a fresh process."""
    command = [python, "-c", LAUNCH, tree, "sample", "--out", str(out)]
    started = time.perf_counter()
    # Run from the output's folder: `python -c` puts the working directory first on the path, which from a
    # checkout's root would time that checkout while the row says "installed".
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree},
                          cwd=out.parent)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
    reported = REPORTED.search(done.stdout + done.stderr)
    return wall, float(reported.group(1)) if reported else None


def describe(tree: str) -> str:
    """A checkout as its short SHA (with "+changes" when its files differ from it), or "installed"."""
    if not tree:
        return "installed"
    sha = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", tree, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                           text=True)
    return (sha.stdout.strip() or tree) + ("+changes" if dirty.stdout.strip() else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", help="an interpreter to time (repeatable; default: this one)")
    parser.add_argument("--tree", action="append", help="a checkout put first on the path (repeatable; default: "
                        "the installed fastddpm)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/startup.csv", help="CSV to append rows to")
    args = parser.parse_args(argv)
    pythons = args.python or [sys.executable]
    trees = [str(Path(t).resolve()) for t in args.tree] if args.tree else [""]
    configs = list(itertools.product(pythons, trees))
    walls = {c: [] for c in configs}
    reported = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as folder:
        for config in configs:  # warm-up: the page cache holds torch's libraries for every configuration alike
            run_once(*config, Path(folder) / "warm.png")
        for _ in range(args.rounds):  # alternated: each round runs every configuration once
            for config in configs:
                wall, said = run_once(*config, Path(folder) / "samples.png")
                walls[config].append(wall)
                if said is not None:
                    reported[config].append(said)
    env = environment("cpu")
    rows = []
    print(f"\n`fastddpm sample` (64 digits, the default solver), {args.rounds} rounds alternated, on {env['device']}")
    print("| interpreter | checkout | torch | wall s (median) | min–max | reported load+sample s (median) |")
    print("|---|---|---|---|---|---|")
    for (python, tree), values in walls.items():
        torch_version = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                       text=True).stdout.strip()
        said = reported[(python, tree)]
        said_median = f"{statistics.median(said):.2f}" if said else None
        print(f"| {python} | {describe(tree)} | {torch_version} | {statistics.median(values):.2f} | "
              f"{min(values):.2f}–{max(values):.2f} | {said_median} |")
        rows.append({**env, "interpreter": python, "checkout": describe(tree), "torch_of_run": torch_version,
                     "rounds": args.rounds, "median_s": round(statistics.median(values), 3),
                     "min_s": round(min(values), 3), "max_s": round(max(values), 3), "reported_s": said_median})
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
