"""What every benchmark row records (versions, git SHA, device, flags) and appending rows to a CSV: the
same helpers ``fastddpm bench`` uses, for the scripts in this folder."""

from __future__ import annotations

import os
from pathlib import Path

from fastddpm.bench.probes import device_name, environment
from fastddpm.bench.report import append_csv

__all__ = ["append_rows", "device_name", "environment"]


def append_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Append rows to a CSV (a file with another header is left alone: the rows go to a new file beside it)."""
    if rows:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        append_csv(path, rows)
