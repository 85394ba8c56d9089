"""``fastddpm fit-timesteps`` and ``fastddpm fit-solver``: a few-step solver's timesteps (or its timesteps
and every step's coefficients) fitted to a model, written as JSON."""

from __future__ import annotations

import argparse

from ..fit.solver import DEFAULT_FIT_BATCH, DEFAULT_FIT_SOLVERS, FIT_SOLVERS, fit_solver
from ..fit.timesteps import FIT_METHODS, fit_timesteps
from ..io.checkpoint import load_checkpoint
from ..io.files import atomic_path
from ..solvers import SOLVERS, SPACINGS, build_plan
from .common import CLIError, device, image_size, one_line, out_file, positive_int, seed
from .solver import ORDERS, order_help


def register(sub) -> None:
    _register_solver(sub)
    parser = sub.add_parser(
        "fit-timesteps",
        help="fit a few-step solver's timesteps to a model (for sample/export --timesteps)",
        description="Fit a few-step solver's timesteps to a model; writes a JSON file for --timesteps.\n\n"
        "Starting from the best named spacing, a search moves one timestep at a time and keeps a move when\n"
        "the solve lands closer to a many-step solve of the same model from the same noise.",
        epilog="example: fastddpm fit-timesteps --steps 10 --order 3 --out fit.json\n"
        "example: fastddpm sample --timesteps fit.json --out samples.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=positive_int, required=True, help="the solver's step count (model evaluations)")
    parser.add_argument("--method", choices=FIT_METHODS, default="dpmsolver++",
                        help="the solver to fit for (default dpmsolver++)")
    parser.add_argument("--order", type=int, choices=ORDERS, help=order_help(FIT_METHODS))
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="noise draws every candidate is judged on (default 64)")
    parser.add_argument("--teacher-steps", type=positive_int, default=100,
                        help="steps of the DPM-Solver++(2M) solve the fit approaches (default 100)")
    _add_run_arguments(parser)
    parser.set_defaults(func=command)


def _add_run_arguments(parser) -> None:
    """The model, seed, size, device and output flags both fit commands share."""
    parser.add_argument("--checkpoint", help="a .safetensors checkpoint (default: the bundled digits model)")
    parser.add_argument("--seed", type=seed, default=0, help="first per-sample seed of the fit batch (default 0)")
    parser.add_argument("--image-size", type=positive_int, help="sample size (default: the training size)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--out", required=True, help="output .json file")
    parser.add_argument("--no-progress", action="store_true", help="print nothing while fitting")


def _write(out, fit) -> None:
    try:
        with atomic_path(out) as tmp:
            tmp.write_text(fit.to_json() + "\n", encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"cannot write {out}: {one_line(exc)}") from None


def _register_solver(sub) -> None:
    parser = sub.add_parser(
        "fit-solver",
        help="fit a few-step solver's timesteps and coefficients to a model (for sample/export --solver)",
        description="Fit a few-step solver (timesteps and coefficients) to a model; writes JSON for --solver.\n\n"
        "Data-free: its timesteps by search, then every step's coefficients by gradient through the\n"
        "unrolled solve, so that it lands close to a many-step solve of the same model from the same noise.\n"
        "A held-out batch of noise reports the distance before and after.",
        epilog="example: fastddpm fit-solver --steps 5 --out fit.json\n"
        "example: fastddpm sample --solver fit.json --out samples.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=positive_int, required=True, help="model evaluations per sample")
    parser.add_argument("--method", choices=FIT_SOLVERS, action="append",
                        help="a solver to start from (repeat for several; default: " + ", ".join(DEFAULT_FIT_SOLVERS)
                        + ")")
    parser.add_argument("--order", type=int, choices=ORDERS, default=2, help="the solver's order (default 2)")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_FIT_BATCH,
                        help=f"noise draws the fit is made on, and as many held out (default {DEFAULT_FIT_BATCH})")
    parser.add_argument("--teacher-steps", type=positive_int, default=100,
                        help="steps of the DPM-Solver++(2M) solve the fit approaches (default 100)")
    parser.add_argument("--iterations", type=positive_int, default=150,
                        help="gradient steps (default 150; more fit closer at a backward pass each: docs/sampling.md)")
    parser.add_argument("--spacing", choices=SPACINGS,
                        help="start from this named spacing and keep its timesteps (default: fit the timesteps)")
    _add_run_arguments(parser)
    parser.set_defaults(func=solver_command)


def solver_command(args: argparse.Namespace) -> None:
    out = out_file(args.out, ".json")
    on = device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=on)
    size = image_size(args, loaded)
    try:
        fit = fit_solver(loaded.model, loaded.diffusion, args.steps, image_size=size,
                         channels=loaded.model.config.channels, methods=tuple(args.method or DEFAULT_FIT_SOLVERS),
                         order=args.order, fit_batch=args.batch_size, teacher_steps=args.teacher_steps,
                         iterations=args.iterations, seed=args.seed, spacing=args.spacing, device=on,
                         progress=not args.no_progress)
    except (ValueError, RuntimeError) as exc:  # bad settings, or a model that fails (e.g. out of memory)
        raise CLIError(one_line(exc)) from None
    _write(out, fit)
    print(f"{fit.method} over timesteps {list(fit.timesteps)} (from {fit.start}), coefficients fitted in "
          f"{fit.seconds:.0f} s: held-out distance to the {fit.teacher_steps}-step solve "
          f"{fit.heldout_start_error:.4g} -> {fit.heldout_error:.4g}; wrote {out}")


def command(args: argparse.Namespace) -> None:
    out = out_file(args.out, ".json")
    on = device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=on)
    size = image_size(args, loaded)
    order = SOLVERS[args.method].orders[0] if args.order is None else args.order
    try:
        build_plan(loaded.diffusion, args.method, order=order)  # the solver checks the order, before any work
        fit = fit_timesteps(loaded.model, loaded.diffusion, args.steps, image_size=size,
                            channels=loaded.model.config.channels, method=args.method, order=order,
                            batch_size=args.batch_size, teacher_steps=args.teacher_steps, seed=args.seed,
                            progress=not args.no_progress)
    except (ValueError, RuntimeError) as exc:  # bad settings, or a model that fails (e.g. out of memory)
        raise CLIError(one_line(exc)) from None
    _write(out, fit)
    print(f"timesteps {list(fit.timesteps)} (from {fit.start}): distance to the {fit.teacher_steps}-step solve "
          f"{fit.start_error:.4g} -> {fit.error:.4g}, held out {fit.heldout_start_error:.4g} -> {fit.heldout_error:.4g}; "
          f"wrote {out}")
