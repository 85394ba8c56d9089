"""Fitted solvers on the bundled digits model against the named settings and the 1000-step ancestral
sampler (a benchmark, not a test).

First the default of ``fastddpm sample`` (``fastddpm.load_sampler()``; with ``--solver FILE``, that fit
instead) and the ancestral sampler over all 1000 steps; then, for each ``--steps`` count,
``fastddpm.fit.solver.fit_solver`` on the bundled model (fit and held-out batches: philox seeds from 100000
on), the fitted solver and named settings at the same count. Every row draws ``--num`` samples from
philox seeds 0…num−1 (never seen by a fit).
Scores: the share a held-out digits classifier recognises confidently (``digits_score``) and the Fréchet
distance of the samples' 8×8-pooled pixels to real digits (the classifier's training split), beside the
same distance for as many real held-out digits (the floor: what a perfect sampler scores at this count).

    python benchmarks/bench_fit_solver_digits.py [--steps 5 10] [--num 512] [--out benchmarks/results/fit-solver-digits.csv]
    python benchmarks/bench_fit_solver_digits.py --steps --num 512   # the default against the ancestral sampler only
"""

from __future__ import annotations

import argparse
import json
import sys
import time

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import append_rows, environment  # noqa: E402

from fastddpm.solvers import SPACINGS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="*", default=[5, 10],
                        help="evaluations to fit and compare at (none: score only the default and the ancestral sampler)")
    parser.add_argument("--named", type=int, nargs="*", default=[],
                        help="also score the named settings at these evaluations (without fitting)")
    parser.add_argument("--stochastic", type=int, nargs="*", default=[],
                        help="also score the stochastic samplers at these steps: ancestral respaced, DDIM η=1")
    parser.add_argument("--num", type=int, default=512)
    parser.add_argument("--fit-batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--methods", nargs="+", default=None, choices=("dpmsolver++", "unipc"),
                        help="the solvers each fit starts from (default: fit_solver's, UniPC)")
    parser.add_argument("--spacing", default=None, choices=SPACINGS,
                        help="start each fit from this named spacing and keep its timesteps (default: fit them)")
    parser.add_argument("--no-ancestral", action="store_true", help="skip the 1000-step baseline (minutes)")
    parser.add_argument("--checkpoint", default=None,
                        help="a model file to score instead of the bundled model (its default row is skipped "
                        "unless --solver names a fit for it)")
    parser.add_argument("--solver", default=None, help="a fitted solver's JSON to score as the default row")
    parser.add_argument("--save-fits", default="", help="folder to write each fit's JSON into")
    parser.add_argument("--out", default="benchmarks/results/fit-solver-digits.csv")
    args = parser.parse_args(argv)

    import fastddpm
    from fastddpm import Sampler
    from fastddpm.eval.quality import digits_score, frechet_distance, pooled_pixels, real_digits, score_pixels
    from fastddpm.fit.solver import fit_solver

    model, diffusion = fastddpm.load(args.checkpoint)
    reference, heldout = real_digits()
    floor = frechet_distance(heldout[: args.num], reference)
    env = environment("cpu")
    rows = []
    real = score_pixels(heldout[: args.num])
    print(f"real held-out digits ({min(args.num, len(heldout))}): confident {real['confident']:.3f}, Fréchet distance "
          f"to the reference split {floor:.4f} (the floor)")
    print("| sampler | evaluations | confident | classes | Fréchet (pooled pixels) | seconds |")
    print("|---|---|---|---|---|---|")

    def score(label, steps, sampler=None, extra=None):
        started = time.perf_counter()
        images = sampler.sample(args.num, 16, 1, seed=0, noise="philox", progress=False)
        seconds = time.perf_counter() - started
        result = digits_score(images)
        fd = frechet_distance(pooled_pixels(images), reference)
        print(f"| {label} | {steps} | {result['confident']:.3f} | {result['classes']} | {fd:.4f} | {seconds:.1f} |",
              flush=True)
        rows.append({**env, "sampler": label, "evaluations": steps, "num": args.num, **result,
                     "frechet_pooled": round(fd, 5), "frechet_floor": round(floor, 5), "seconds": round(seconds, 2),
                     **(extra or {})})

    if args.solver:
        from fastddpm.fit.solver import FittedSolver

        with open(args.solver, encoding="utf-8") as f:
            default = Sampler(model, diffusion, **FittedSolver.from_json(f.read()).sampler_kwargs(model, diffusion))
    elif not args.checkpoint:
        default = fastddpm.load_sampler()
    if args.solver:  # not the default: plot_quality_vs_nfe.py stars the "default: " row
        score(f"--solver {args.solver} ({default.plan.method} fitted to the model)", len(default.plan.timesteps),
              default)
    elif not args.checkpoint:
        how = f"{default.plan.method} ({default.plan.spacing})" if default.plan.spacing else \
            f"{default.plan.method} fitted to the model"
        score(f"default: fastddpm sample ({how})", len(default.plan.timesteps), default)
    if not args.no_ancestral:
        score("ancestral (ddpm, all steps)", diffusion.num_timesteps, Sampler(model, diffusion))
    def named(steps):
        for method in ("dpmsolver++", "unipc"):
            for spacing in ("trailing", "logsnr", "leading", "linspace"):
                score(f"{method} ({spacing})", steps, Sampler(model, diffusion, method=method, steps=steps,
                                                               spacing=spacing))

    for steps in args.named:
        named(steps)
    for steps in args.stochastic:
        score("ancestral respaced (ddpm, leading)", steps, Sampler(model, diffusion, method="ddpm", steps=steps))
        score("ddim η=1 (logsnr)", steps, Sampler(model, diffusion, method="ddim", steps=steps, eta=1.0,
                                                   spacing="logsnr"))
    for steps in args.steps:
        fit = fit_solver(model, diffusion, steps, image_size=16, channels=1, fit_batch=args.fit_batch,
                         teacher_steps=100, iterations=args.iterations, seed=100000, progress=True, spacing=args.spacing,
                         **({"methods": tuple(args.methods)} if args.methods else {}))
        print(f"fitted {fit.method} from {fit.start} at {steps} steps in {fit.seconds:.0f} s: timesteps "
              f"{list(fit.timesteps)}, held-out distance to the teacher {fit.heldout_start_error:.4f} -> "
              f"{fit.heldout_error:.4f}", flush=True)
        if args.save_fits:
            with open(f"{args.save_fits}/fit-solver-{steps}.json", "w") as f:
                f.write(fit.to_json() + "\n")
        # A fit on a named spacing's timesteps is its own curve in plot_quality_vs_nfe.py (not "fitted solver").
        label = (f"fitted coefficients, {args.spacing} timesteps ({fit.method})" if args.spacing else
                 f"fitted solver ({fit.method} from {fit.start})")
        score(label, steps, Sampler(model, diffusion, **fit.sampler_kwargs(
            model, diffusion)), {"fit_seconds": round(fit.seconds, 1), "heldout_teacher_distance": json.dumps(
                [round(fit.heldout_start_error, 5), round(fit.heldout_error, 5)])})
        named(steps)
    append_rows(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
