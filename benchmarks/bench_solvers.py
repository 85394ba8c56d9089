"""Few-step solvers on the exact-ε Gaussian-mixture harness, against diffusers' solvers as the anchor.

Runs fastddpm's samplers and diffusers' DPM-Solver++(2M) and UniPC (both with Karras sigmas) from the same
x_T on the same exact ε-model, and prints distance-to-truth over the noise floor, the largest component
weight error and the narrow component's spread ratio (see fastddpm.eval.oracle.evaluate).

    python benchmarks/bench_solvers.py [--num 4000] [--steps 5 10 15 20] [--no-fit] [--out benchmarks/results/solvers.csv]
"""

from __future__ import annotations

import argparse
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment, harness_setting  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=4000)
    parser.add_argument("--out", default="benchmarks/results/solvers.csv")
    parser.add_argument("--fit-batch", type=int, default=1024, help="noise draws the fitted timesteps are judged on")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 15, 20], help="evaluation counts")
    parser.add_argument("--no-fit", action="store_true", help="skip the fitted-timestep rows (minutes each)")
    parser.add_argument("--fit-solver", action="store_true",
                        help="add fitted solvers (timesteps and coefficients, fastddpm.fit.solver) beside their starts")
    args = parser.parse_args(argv)

    from fastddpm import Sampler, fit_timesteps
    from fastddpm.fit.solver import fit_solver
    from fastddpm.kernels import randn_philox
    from fastddpm.eval.oracle import evaluate

    n = args.num
    diffusion, mix, refs, _ = harness_setting(n)
    T = diffusion.num_timesteps
    seeds = torch.arange(n, dtype=torch.int64) + 1
    x_T = randn_philox(seeds, T, (1, 2, 2))  # the x_T our philox sampler starts from with seed=1

    results = []

    def ours(method, steps, spacing, order=None):
        solver = dict(method=method, order=order)
        solver.update(timesteps=spacing) if isinstance(spacing, list) else solver.update(steps=steps, spacing=spacing)
        out = Sampler(mix, diffusion, **solver).sample(n, (2, 2), 1, seed=1, noise="philox", progress=False, clip=False)
        name = {("dpmsolver++", 3): "dpmsolver++(3M)", ("unipc", 2): "unipc-2", ("unipc", 3): "unipc-3"}.get(
            (method, order), method)
        return f"fastddpm {name} ({spacing})", out

    def fitted(steps, order=2):
        # Fitted on its own noise (per-sample seeds from 10**6 on), judged on the table's x_T (seeds 1…n).
        fit = fit_timesteps(mix, diffusion, steps, image_size=(2, 2), channels=1, order=order,
                            batch_size=args.fit_batch, teacher_steps=200, seed=10**6)
        name, out = ours("dpmsolver++", steps, list(fit.timesteps), order)
        print(f"{name.split(' (')[0]} fitted at {steps} steps: {list(fit.timesteps)} (from {fit.start}; held-out "
              f"distance {fit.heldout_start_error:.4f} -> {fit.heldout_error:.4f}, {fit.seconds:.0f} s)")
        return f"{name.split(' (')[0]} (fitted, from {fit.start})", out

    def fitted_solver(steps):
        # Fitted on its own noise (per-sample seeds from 10**6 on), judged on the table's x_T (seeds 1…n).
        fit = fit_solver(mix, diffusion, steps, image_size=(2, 2), channels=1, fit_batch=args.fit_batch,
                         teacher_steps=200, seed=10**6, progress=False)
        print(f"fitted solver at {steps} steps: {fit.method} from {fit.start}, timesteps {list(fit.timesteps)}; "
              f"held-out distance {fit.heldout_start_error:.4f} -> {fit.heldout_error:.4f}, {fit.seconds:.0f} s")
        out = Sampler(mix, diffusion, plan=fit.plan()).sample(n, (2, 2), 1, seed=1, noise="philox", progress=False,
                                                              clip=False)
        return [(f"fastddpm fitted solver ({fit.method}, from {fit.start})", out),
                ours(fit.method, steps, fit.start, fit.order)]

    def anchor(name, scheduler, steps):
        scheduler.set_timesteps(steps)
        x = x_T.clone() * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            x = scheduler.step(mix(x, torch.full((n,), int(t))), t, x).prev_sample
        return f"diffusers {name}", x

    try:
        import diffusers
    except ImportError:
        diffusers = None
        print("diffusers is not installed: the anchor rows are skipped (pip install 'fastddpm[compare]')")
    for steps in args.steps:
        runs = [] if args.no_fit else [fitted(steps, 3), fitted(steps, 2)]
        if args.fit_solver:
            runs += fitted_solver(steps)
        runs += [ours("unipc", steps, "logsnr-sqrt", 3), ours("unipc", steps, "logsnr", 3),
                 ours("unipc", steps, "logsnr-sqrt", 2), ours("unipc", steps, "logsnr", 2),
                 ours("dpmsolver++", steps, "logsnr-sqrt", 3), ours("dpmsolver++", steps, "logsnr", 3),
                 ours("dpmsolver++", steps, "logsnr-sqrt", 2), ours("dpmsolver++", steps, "logsnr", 2),
                 ours("ddim", steps, "logsnr-sqrt"), ours("ddim", steps, "logsnr"), ours("dpmsolver++", steps, "trailing")]
        if diffusers is not None:
            common = dict(num_train_timesteps=T, beta_schedule="linear", use_karras_sigmas=True)
            runs.append(anchor("DPM-Solver++(2M) Karras", diffusers.DPMSolverMultistepScheduler(
                algorithm_type="dpmsolver++", solver_order=2, **common), steps))
            runs.append(anchor("UniPC Karras", diffusers.UniPCMultistepScheduler(**common), steps))
        for name, out in runs:
            report = evaluate(mix, out, refs)
            results.append((name, steps, report))
    print("| solver | evaluations | W / floor | weight error | spread ratio (narrow) |")
    print("|---|---|---|---|---|")
    env = environment("cpu")
    rows = []
    for name, steps, r in results:
        print(f"| {name} | {steps} | {r.w_over_floor:.2f} | {r.weight_error:.3f} | {r.spread_ratio[2]:.2f} |")
        rows.append({**env, "solver": name, "evaluations": steps, "w_over_floor": round(r.w_over_floor, 3),
                     "weight_error": round(r.weight_error, 4), "spread_narrow": round(r.spread_ratio[2], 3)})
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
