"""Quality against model evaluations (NFE) on the bundled digits model: a chart of the rows that
``bench_fit_solver_digits.py`` wrote (a benchmark output, not a test).

Two panels share the NFE axis (log scale): the share of samples a held-out digits classifier recognises
confidently (higher is better; error bars ±1 standard error, sqrt(p(1−p)/n)), and the Fréchet distance
of 8×8-pooled pixels to real digits (lower is better; the real-vs-real floor drawn as a dotted line).
The 1000-step ancestral sampler is a dashed line with its standard-error band; named settings, stochastic
samplers and fitted solvers are curves (fits on a named spacing's timesteps, ``--spacing``, dashed in the fit's
black: one such curve at a time reads well); the default of ``fastddpm sample`` is a star. Only rows with
``--num`` samples are drawn, the newest row per sampler and NFE.

    pip install matplotlib   # the plot extra: pip install ".[plot]"
    python benchmarks/plot_quality_vs_nfe.py [--csv benchmarks/results/fit-solver-digits.csv] [--out docs/quality-vs-nfe.png]
"""

from __future__ import annotations

import argparse
import csv
import glob
import math
import sys
from collections import defaultdict

ANCESTRAL = "ancestral (ddpm, all steps)"
DEFAULT_PREFIX = "default: "
FITTED_PREFIX = "fitted solver"


def newest_rows(paths: list[str], num: int) -> list[dict]:
    """The newest row (by its date) per curve and NFE among the rows with ``num`` samples. A run whose
    columns differ (fitted rows add two) is appended to a sibling file ``<name>-<hash>.csv``: read them all."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [r for r in csv.DictReader(f) if r.get("num") and int(r["num"]) == num]
    newest: dict[tuple[str, int], dict] = {}
    for row in sorted(rows, key=lambda r: r["date"]):  # ISO dates: a later row replaces an earlier one
        newest[(curve_name(row["sampler"]), int(row["evaluations"]))] = row
    return list(newest.values())


def curve_name(sampler: str) -> str:
    # A fit's label names the solver it started from, which can differ between step counts: one curve.
    return "fitted solver" if sampler.startswith(FITTED_PREFIX) else sampler


def standard_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", nargs="+", default=sorted(glob.glob("benchmarks/results/fit-solver-digits*.csv")),
                        help="result files (default: benchmarks/results/fit-solver-digits*.csv)")
    parser.add_argument("--out", default="docs/quality-vs-nfe.png")
    parser.add_argument("--num", type=int, default=512, help="draw the rows with this many samples")
    args = parser.parse_args(argv)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("needs matplotlib: pip install '.[plot]'", file=sys.stderr)
        return 2

    rows = newest_rows(args.csv, args.num) if args.csv else []
    if not rows:
        print(f"{args.csv}: no rows with num={args.num}", file=sys.stderr)
        return 2
    curves: dict[str, list[dict]] = defaultdict(list)
    ancestral, default = None, None
    for row in rows:
        if row["sampler"] == ANCESTRAL:
            ancestral = row
        elif row["sampler"].startswith(DEFAULT_PREFIX):  # the newest default (the default has changed)
            if default is None or row["date"] > default["date"]:
                default = row
        else:
            curves[curve_name(row["sampler"])].append(row)

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 8.5), sharex=True)
    styles = {"fitted solver": dict(color="black", marker="o", linewidth=2.2)}
    for name, points in sorted(curves.items()):
        points.sort(key=lambda r: int(r["evaluations"]))
        nfe = [int(r["evaluations"]) for r in points]
        share = [float(r["confident"]) for r in points]
        if name.startswith("fitted coefficients"):  # a fit on a named spacing's timesteps: the fit's colour, dashed
            style = dict(color="black", marker="o", markerfacecolor="white", linestyle="--", linewidth=1.6)
        else:
            style = styles.get(name, dict(marker="." if "respaced" in name or "η" in name else "s", linewidth=1.2))
        line = top.errorbar(nfe, share, yerr=[standard_error(p, args.num) for p in share], label=name, capsize=2,
                            **style)
        bottom.plot(nfe, [float(r["frechet_pooled"]) for r in points], color=line[0].get_color(),
                    **{k: v for k, v in style.items() if k != "color"})
    if default is not None:
        nfe = int(default["evaluations"])
        star = dict(marker="*", markersize=18, color="gold", markeredgecolor="black", linestyle="none", zorder=5)
        top.plot([nfe], [float(default["confident"])], label=default["sampler"], **star)
        bottom.plot([nfe], [float(default["frechet_pooled"])], **star)
    if ancestral is not None:
        p = float(ancestral["confident"])
        se = standard_error(p, args.num)
        top.axhline(p, color="#1f77b4", linestyle="--", label=f"ancestral, {ancestral['evaluations']} steps (±1 SE band)")
        top.axhspan(p - se, p + se, color="#1f77b4", alpha=0.12)
        bottom.axhline(float(ancestral["frechet_pooled"]), color="#1f77b4", linestyle="--")
    floor = float(rows[0]["frechet_floor"])
    bottom.axhline(floor, color="grey", linestyle=":", label=f"real vs real floor ({floor:.3f})")

    top.set_ylabel("confidently recognised share (higher is better)")
    bottom.set_ylabel("Fréchet distance, pooled pixels (log; lower is better)")
    bottom.set_xlabel("model evaluations per image (NFE, log scale)")
    bottom.set_xscale("log")
    bottom.set_yscale("log")  # a 4-step solve on logsnr timesteps lands near 10, the good samplers near 0.6-0.9
    ticks = sorted({int(r["evaluations"]) for r in rows if int(r["evaluations"]) <= 200})
    bottom.set_xticks(ticks)
    bottom.set_xticklabels([str(t) for t in ticks])
    bottom.minorticks_off()
    top.legend(fontsize=7, loc="lower right", ncol=2)
    bottom.legend(fontsize=8, loc="upper right")
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    # Machines and versions once each, then the commits the rows were measured at (one line, not one per run).
    machines = "; ".join(sorted({f"{r['device']}, torch {r['torch']}" for r in rows}))
    runs = f"{machines}; git {', '.join(sorted({r['git_sha'] for r in rows}))}"
    fig.suptitle(f"Bundled digits model (16×16): quality against NFE, {args.num} samples per point\n{runs}",
                 fontsize=9)
    fig.tight_layout()
    from fastddpm.io.files import atomic_path

    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
