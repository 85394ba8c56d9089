"""The exact-ε harness over several x_T sets (a benchmark, not a test): how much of a harness number is the
sampler and how much is the one set of x_T it was drawn from.

``bench_solvers.py`` judges every sampler from one set of x_T (philox seeds 1…n). The distance over the
floor of a single set scatters widely even for an exact solve; this script draws ``--sets`` independent sets
(seeds 1 + k·n …), judges each sampler on all of them and prints the median and min–max of the distance
over the floor and of the narrow component's spread ratio, for exact draws, a 200-step solve, solvers fitted
at ``--steps`` evaluations (``fastddpm.fit.solver``, fitted on their own x_T) and their unfitted peers.

    python benchmarks/bench_harness_seed_sets.py [--steps 5 10] [--sets 6] [--num 4000] [--iterations 150]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import NARROW, append_rows, environment, harness_setting  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--sets", type=int, default=6)
    parser.add_argument("--num", type=int, default=4000)
    parser.add_argument("--fit-batch", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=150, help="the fit's Adam iterations (fit_solver's: 150)")
    parser.add_argument("--order", type=int, default=2, help="the fitted solver's order")
    parser.add_argument("--out", default="benchmarks/results/harness-seed-sets.csv")
    args = parser.parse_args(argv)

    from fastddpm import Sampler
    from fastddpm.eval.oracle import evaluate
    from fastddpm.fit.solver import fit_solver

    n = args.num
    diffusion, mix, refs, g = harness_setting(n)
    env = environment("cpu")
    rows = []

    def report(name, steps, distances, spreads):
        print(f"| {name} | {steps} | {statistics.median(distances):.3f} ({min(distances):.3f}–{max(distances):.3f}) "
              f"| {statistics.median(spreads):.3f} ({min(spreads):.3f}–{max(spreads):.3f}) | {distances[0]:.3f} |",
              flush=True)
        rows.append({**env, "sampler": name, "evaluations": steps, "num": n, "sets": args.sets,
                     "w_over_floor_median": round(statistics.median(distances), 4),
                     "w_over_floor_min": round(min(distances), 4), "w_over_floor_max": round(max(distances), 4),
                     "w_over_floor_first_set": round(distances[0], 4),
                     "narrow_spread_median": round(statistics.median(spreads), 4),
                     "narrow_spread_min": round(min(spreads), 4), "narrow_spread_max": round(max(spreads), 4)})

    def judge(name, steps, sampler):
        distances, spreads = [], []
        for k in range(args.sets):
            out = sampler.sample(n, (2, 2), 1, seed=1 + k * n, noise="philox", progress=False, clip=False)
            result = evaluate(mix, out, refs)
            distances.append(result.w_over_floor)
            spreads.append(result.spread_ratio[NARROW])
        report(name, steps, distances, spreads)

    print(f"{n} samples per set, {args.sets} sets (philox seeds 1 + k·{n}); the first set is bench_solvers.py's "
          "(for exact draws: the first of their sets)")
    print("| sampler | evaluations | W / floor: median (min–max) | narrow spread: median (min–max) | first set W / floor |")
    print("|---|---|---|---|---|")
    exact = [evaluate(mix, mix.sample(n, g)[0], refs) for _ in range(args.sets)]  # sets of exact draws instead
    report("exact draws", 0, [r.w_over_floor for r in exact], [r.spread_ratio[NARROW] for r in exact])
    judge("dpmsolver++ logsnr (a 200-step solve: the fits' teacher)", 200,
          Sampler(mix, diffusion, method="dpmsolver++", steps=200, spacing="logsnr"))
    for steps in args.steps:
        started = time.perf_counter()
        fit = fit_solver(mix, diffusion, steps, image_size=(2, 2), channels=1, fit_batch=args.fit_batch,
                         teacher_steps=200, seed=10**6, progress=False, iterations=args.iterations, order=args.order)
        print(f"(fit at {steps}, {args.iterations} iterations, order {args.order}: {fit.method} from {fit.start}, "
              f"held-out distance to the teacher {fit.heldout_start_error:.4f} -> {fit.heldout_error:.4f}, "
              f"{time.perf_counter() - started:.0f} s)")
        judge(f"fitted solver ({fit.method}-{args.order}, from {fit.start}, {args.iterations} iterations)", steps,
              Sampler(mix, diffusion, plan=fit.plan()))
        for method in ("unipc", "dpmsolver++"):
            judge(f"{method} logsnr-sqrt", steps, Sampler(mix, diffusion, method=method, steps=steps,
                                                          spacing="logsnr-sqrt"))
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
