"""A prototype, not a library feature: fit a 5-step plan's coefficients to the *distribution* of the bundled
model's own 1000-step ancestral samples, instead of to a many-step ODE solve from the same x_T.

Why: on the bundled digits model every fit to an ODE teacher lands at the teacher's digits-proxy score
(0.44–0.46 confident), below the ancestral sampler's 0.529 (docs/sampling.md, "Fitted solvers"). This asks
whether a data-free, distribution-level objective closes that gap. The loss is the energy distance
(Székely & Rizzo; the unbiased U-statistic, whose value for two samples of one distribution is ~0 at any
sizes — the V-statistic adds E|Y−Y'|/n, a reward for less varied samples) between the few-step solve of 64
fixed x_T and 192 of a bank of 256 ancestral samples; the other 64 and another 64 x_T are held out and
pick the iteration to keep.
Only the plan's free rows move, as in ``fastddpm.fit.solver.fit_solver``, whose unrolled solve this reuses.
The result is scored on the digits proxy (512 philox seeds 0–511, as bench_fit_solver_digits.py).

    python benchmarks/bench_fit_to_ancestral.py [--iterations 150] [--learning-rate 2e-3] [--bank FILE.safetensors]

The bank (256 ancestral samples from philox seeds 300000+) takes ~16 minutes on the 2-core CPU machine and is
cached at ``--bank`` (safetensors: nothing is unpickled).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import fastddpm
from fastddpm import Sampler
from fastddpm.defaults import bundled_solver
from fastddpm.eval.quality import digits_score, frechet_distance, pooled_pixels, real_digits
from fastddpm.fit.solver import _FREE_ROWS, _solve  # the fit's own unrolled solve and free rows
from fastddpm.kernels import randn_philox
from fastddpm.solvers import StepPlan

BANK_SEED, FIT_SEED = 300000, 100000


def mean_pairwise(a: torch.Tensor) -> torch.Tensor:
    """E|A−A'| over distinct pairs: the samples' spread. pdist, not cdist: cdist's matrix-product path leaves
    its diagonal up to ~1e-2 off zero."""
    return torch.pdist(a).mean()


def energy_distance(y: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Unbiased (U-statistic) energy distance between the rows of ``y`` (clamped to the image range) and ``bank``."""
    y = y.flatten(1).clamp(-1, 1)
    return 2 * torch.cdist(y, bank).mean() - mean_pairwise(y) - mean_pairwise(bank)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--start", default="shipped", choices=("shipped", "linspace", "trailing"),
                        help="the bundled fitted solver, or a named UniPC plan")
    parser.add_argument("--bank", default="runs/ancestral-bank-256.safetensors")
    parser.add_argument("--num", type=int, default=512)
    args = parser.parse_args(argv)
    if args.num < 2 or args.iterations < 0 or not args.learning_rate > 0:
        parser.error("need --num >= 2, --iterations >= 0 and --learning-rate > 0")

    from safetensors import safe_open
    from safetensors.torch import save_file

    from fastddpm.fit.solver import model_sha256
    from fastddpm.io.files import atomic_path

    model, diffusion = fastddpm.load()
    # The bank names the model and seeds it was drawn with, so a stale one is refused, not silently used.
    stamp = {"model_sha256": model_sha256(model), "seed": str(BANK_SEED), "count": "256", "steps": "1000"}
    bank_path = Path(args.bank)
    if bank_path.exists():
        try:
            with safe_open(str(bank_path), framework="pt") as f:
                metadata, bank = f.metadata() or {}, f.get_tensor("samples") if "samples" in f.keys() else None
        except Exception as exc:  # not a safetensors file, or a truncated one
            print(f"{bank_path}: not a readable bank ({exc}); delete it to draw a new one", file=sys.stderr)
            return 2
        if metadata != stamp or bank is None or bank.shape != (256, 1, 16, 16) or not bank.isfinite().all():
            print(f"{bank_path}: not a bank of this model's 256 ancestral samples (metadata {metadata}); delete it "
                  f"to draw a new one", file=sys.stderr)
            return 2
    else:
        started = time.perf_counter()
        bank = Sampler(model, diffusion).sample(256, 16, 1, seed=BANK_SEED, noise="philox", progress=True)
        bank_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(bank_path) as tmp:
            save_file({"samples": bank.contiguous()}, str(tmp), metadata=stamp)
        print(f"256 ancestral samples in {time.perf_counter() - started:.0f} s -> {bank_path}", flush=True)
    bank = bank.float().clamp(-1, 1).flatten(1)
    fit_bank, heldout_bank = bank[:192], bank[192:]

    plan = bundled_solver().plan() if args.start == "shipped" else Sampler(
        model, diffusion, method="unipc", steps=5, spacing=args.start).plan
    eps_model = Sampler(model, diffusion, plan=plan).model
    for p in eps_model.parameters():
        p.requires_grad_(False)
    T = diffusion.num_timesteps
    x_fit, x_heldout = (randn_philox(torch.arange(64, dtype=torch.int64) + s, T, (1, 16, 16))
                        for s in (FIT_SEED, FIT_SEED + 64))
    start = torch.tensor(plan.coefs, dtype=torch.float64)
    free = torch.zeros_like(start, dtype=torch.bool)
    free[[int(r) for r in _FREE_ROWS[: 2 + plan.histories]]] = True
    delta = torch.zeros_like(start, requires_grad=True)

    def coefs(d):
        return (start + d * free).float()

    def heldout(d) -> float:
        with torch.no_grad():
            return float(energy_distance(_solve(eps_model, x_heldout, plan.timesteps, coefs(d), plan.histories),
                                         heldout_bank))

    reference, _ = real_digits()

    def score(d, label):
        fitted = StepPlan(method=plan.method, timesteps=plan.timesteps, coefs=(start + d * free).numpy(),
                          histories=plan.histories, order=plan.order, spacing=None)
        images = Sampler(model, diffusion, plan=fitted).sample(args.num, 16, 1, seed=0, noise="philox", progress=False)
        result = digits_score(images)
        spread = float(mean_pairwise(images.float().clamp(-1, 1).flatten(1)))
        print(f"| {label} | {result['confident']:.3f} | {frechet_distance(pooled_pixels(images), reference):.4f} | "
              f"{spread:.2f} |", flush=True)

    best, best_heldout, best_iteration = delta.detach().clone(), heldout(delta.detach()), 0
    print(f"start {args.start}: held-out energy distance {best_heldout:.4f} (U-statistic: ~0 for two samples of "
          f"one distribution; the ancestral bank's two parts: {float(energy_distance(heldout_bank, fit_bank)):.4f})",
          flush=True)
    print("| plan | confident | Fréchet (pooled pixels) | spread (mean pairwise distance) |\n|---|---|---|---|")
    print(f"| the ancestral bank (256) | — | — | {float(mean_pairwise(bank)):.2f} |")
    score(best, f"start: {args.start}")
    optimizer = torch.optim.Adam([delta], lr=args.learning_rate)
    started = time.perf_counter()
    for i in range(args.iterations):
        optimizer.zero_grad()
        loss = energy_distance(_solve(eps_model, x_fit, plan.timesteps, coefs(delta), plan.histories), fit_bank)
        loss.backward()
        optimizer.step()
        if (i + 1) % 10 == 0 or i + 1 == args.iterations:
            h = heldout(delta.detach())
            if h < best_heldout:
                best, best_heldout, best_iteration = delta.detach().clone(), h, i + 1
            print(f"  {i + 1}: fit {loss.item():.4f} (before this step), held out {h:.4f} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    score(best, f"fitted to the ancestral samples (lr {args.learning_rate}, best of {args.iterations} iterations: "
                f"{best_iteration}, held-out energy distance → {best_heldout:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
