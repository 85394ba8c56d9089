"""The solver flags ``sample`` and ``export`` share (--method, --steps, --eta, --spacing, --order,
--timesteps) and the settings they make for ``Sampler``, ``OrtSampler`` and ``export_onnx_sampler``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterable

from ..defaults import DEFAULT_METHOD, DEFAULT_SPACING, DEFAULT_STEPS, solver_settings
from ..fit.solver import FittedSolver
from ..fit.timesteps import FittedTimesteps
from ..solvers import METHODS, SOLVERS, SPACINGS
from .common import CLIError, one_line, positive_int

__all__ = ["ORDERS", "order_help", "add_sampler_arguments", "read_fit", "sampler_settings",
           "check_fit_matches"]

# Every order some solver takes: the solver checks the one asked for against its own.
ORDERS = tuple(sorted({order for solver in SOLVERS.values() for order in solver.orders}))


def _ordered(methods: Iterable[str]) -> list[str]:
    """The methods that have an order setting."""
    return [m for m in methods if len(SOLVERS[m].orders) > 1]


def order_help(methods: Iterable[str] = METHODS) -> str:
    """"the solver's order (dpmsolver++: 2 or 3, default 2; unipc: 1-3, default 2)", from the registry."""

    def takes(orders):  # "2 or 3", "1-3"
        low, high = min(orders), max(orders)
        if high - low > 1 and len(orders) == high - low + 1:
            return f"{low}-{high}"
        return " or ".join(map(str, sorted(orders)))

    return "the solver's order (" + "; ".join(
        f"{m}: {takes(SOLVERS[m].orders)}, default {SOLVERS[m].orders[0]}" for m in _ordered(methods)) + ")"


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=METHODS,
                        help=f"default: unipc over 5 linspace steps for the bundled model, {DEFAULT_METHOD} for other models; "
                        "ddpm: the reference's ancestral sampler (all timesteps unless --steps); ddim (--eta 0: "
                        "deterministic), dpmsolver++ and unipc: few steps")
    parser.add_argument("--steps", type=positive_int,
                        help=f"sampling steps (default {DEFAULT_STEPS} for the few-step methods, all the model's "
                        "timesteps for ddpm); fewer respace the chain")
    parser.add_argument("--eta", type=float, help="DDIM's η (default 0: deterministic); ddim only")
    parser.add_argument("--spacing", choices=SPACINGS,
                        help=f"where the --steps timesteps fall (default {DEFAULT_SPACING}: even in log-SNR; the "
                        "bundled model's default is linspace, which ends at t=0)")
    parser.add_argument("--order", type=int, choices=ORDERS, help=order_help())
    parser.add_argument("--timesteps", metavar="FIT.json",
                        help="timesteps fitted to the model by 'fastddpm fit-timesteps' (sets the method, order "
                        "and steps)")
    parser.add_argument("--solver", metavar="FIT.json",
                        help="a solver fitted to the model by 'fastddpm fit-solver' (sets the timesteps and every "
                        "step's coefficients)")


def read_fit(args: argparse.Namespace) -> FittedTimesteps | None:
    """The fit named by --timesteps (cached on args), after checking the flags it sets agree with it."""
    if args.timesteps is None:
        return None
    fit = getattr(args, "_fit", None)
    if fit is None:
        try:
            fit = FittedTimesteps.from_json(Path(args.timesteps).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise CLIError(f"--timesteps {args.timesteps}: {one_line(exc)}") from None
        if args.order is not None and not _ordered([fit.method]):
            raise CLIError(f"--order applies to {' and '.join(_ordered(METHODS))}; --timesteps {args.timesteps} "
                           f"was fitted for {fit.method}")
        given = {"--method": (args.method, fit.method), "--steps": (args.steps, len(fit.timesteps)),
                 "--order": (args.order, fit.order)}
        for flag, (value, fitted) in given.items():
            if value is not None and value != fitted:
                raise CLIError(f"{flag} {value} does not match --timesteps {args.timesteps} (fitted for {fitted})")
        if args.spacing is not None or args.eta not in (None, 0.0):
            raise CLIError("--timesteps places the steps itself: drop --spacing/--eta")
        args._fit = fit
    return fit


def read_solver(args: argparse.Namespace) -> FittedSolver | None:
    """The fitted solver named by --solver (cached on args); it fixes every other solver flag."""
    if getattr(args, "solver", None) is None:
        return None
    fit = getattr(args, "_solver", None)
    if fit is None:
        given = [flag for flag, value in (("--method", args.method), ("--steps", args.steps), ("--eta", args.eta),
                                          ("--spacing", args.spacing), ("--order", args.order),
                                          ("--timesteps", args.timesteps)) if value is not None]
        if given:
            raise CLIError(f"--solver {args.solver} fixes the solver: drop {'/'.join(given)}")
        try:
            fit = FittedSolver.from_json(Path(args.solver).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
            raise CLIError(f"--solver {args.solver}: {one_line(exc)}") from None
        args._solver = fit
    return fit


def sampler_settings(args: argparse.Namespace, model: Any = None, diffusion=None) -> dict[str, Any]:
    """The solver keywords of ``Sampler`` / ``OrtSampler`` / ``export_onnx_sampler``: the fitted solver's plan
    with --solver; the fit's method, timesteps and order with --timesteps; with no solver flag at all,
    ``fastddpm.defaults`` (the bundled model's named default when ``model`` is it); else the flags, completed
    as ``defaults.solver_settings`` does (order None: the solver's)."""
    solver = read_solver(args)
    if solver is not None:
        return {"plan": solver.plan()}
    fit = read_fit(args)
    if fit is not None:
        return {"steps": None, "eta": None, "order": None, **fit.sampler_kwargs()}
    return solver_settings(model, diffusion, method=args.method, steps=args.steps, eta=args.eta, spacing=args.spacing,
                           order=args.order)


def check_fit_matches(args: argparse.Namespace, diffusion, model=None) -> None:
    solver = read_solver(args)
    if solver is not None:
        try:
            solver.check(model, diffusion)
        except ValueError as exc:
            raise CLIError(f"--solver {args.solver}: {one_line(exc)}") from None
    fit = read_fit(args)
    if fit is not None and fit.num_train_steps != diffusion.num_timesteps:
        raise CLIError(f"--timesteps {args.timesteps} was fitted for a model of {fit.num_train_steps} timesteps; "
                       f"this one has {diffusion.num_timesteps}")
