"""Benchmarks: the backend × precision matrix (equivalence checked first), its report and chart.

``settings`` (presets, configurations, :class:`BenchSettings`), ``matrix`` (the runs), ``report`` (table,
CSV, chart) and ``probes`` (environment, peak memory)."""

from .matrix import run_bench
from .settings import PRESETS, BenchSettings, default_configs, parse_config

__all__ = ["PRESETS", "BenchSettings", "run_bench", "parse_config", "default_configs"]
