"""The bench's outputs: the markdown table, the CSV rows appended, settings.json and the bar chart."""

from __future__ import annotations

import csv
import hashlib
import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..io.files import atomic_path
from .settings import PRESETS, BenchSettings

__all__ = ["format_table", "write_outputs", "append_csv", "save_chart"]

_COLUMNS = [("config", "config"), ("batch", "batch"), ("ms_per_step", "ms/step"), ("spread", "min–max"),
            ("images_per_s", "images/s"), ("speedup_per_step", "speed-up/step"),
            ("vs_seed_sampler", "vs reference sampler"), ("warmup_s", "warm-up s"), ("peak_mb", "peak MB"),
            ("quality", "quality (confident / classes)"), ("check", "equivalence")]


def format_table(rows: list[dict], settings: BenchSettings, env: dict) -> str:
    preset = PRESETS[settings.preset]
    sample_steps = next((r["sample_steps"] for r in rows if "sample_steps" in r), settings.steps)
    lines = [f"{env['device']} · torch {env['torch']} · onnxruntime {env['onnxruntime']} · {preset.description} · "
             f"{settings.method}, {settings.steps} steps · {settings.rounds} rounds · git {env['git_sha']}", "",
             f"ms/step: median and min–max over the rounds; images/s: whole samples of {sample_steps} steps; "
             "warm-up: the first call (compile, capture, export + session); peak MB: CUDA allocator peak, or "
             "resident-set growth on CPU, during the first call; equivalence: error against the oracle ≤ tolerance.", "",
             "| " + " | ".join(h for _, h in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in rows:
        cells = []
        for key, _ in _COLUMNS:
            if key == "spread":
                value = f"{row['ms_min']:.1f}–{row['ms_max']:.1f}" if "ms_min" in row else ""
            elif key == "quality":
                value = (f"{row['quality_confident']:.2f} / {row['quality_classes']}" if "quality_confident" in row else "")
            elif key in ("speedup_per_step", "vs_seed_sampler") and row.get(key) not in (None, ""):
                value = f"{row[key]:.2f}×"
            elif key == "ms_per_step" and key in row:
                value = f"{row[key]:.1f}"
            else:
                value = str(row.get(key, ""))
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(rows: list[dict], settings: BenchSettings, table: str, out_dir: str | os.PathLike) -> Path:
    """Write bench.md, settings.json and bench.png, and append to bench.csv; returns the CSV's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = append_csv(out / "bench.csv", rows)
    for name, text in (("bench.md", table + "\n"), ("settings.json", settings.to_json() + "\n")):
        with atomic_path(out / name) as tmp:
            tmp.write_text(text)
    save_chart(rows, out / "bench.png", title=table.splitlines()[0])
    return csv_path


def append_csv(path: Path, rows: list[dict]) -> Path:
    """Append rows (columns: the union of the rows' keys, sorted for a stable header); a file whose header
    differs is not mixed with: the rows go to a new file beside it, named by its header's hash."""
    fields = sorted({k for row in rows for k in row})
    if path.exists():
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != fields:
            path = path.with_name(f"{path.stem}-{hashlib.sha1(','.join(fields).encode()).hexdigest()[:8]}.csv")
    previous = path.read_bytes() if path.exists() else b""
    with atomic_path(path) as tmp:  # the old rows and the new, or the old file untouched
        with open(tmp, "wb") as f:
            f.write(previous)
        with open(tmp, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            if not previous:
                writer.writeheader()
            writer.writerows(rows)
    return path


def save_chart(rows: list[dict], path: Path, title: str = "") -> None:
    """A horizontal bar chart of speed-up per step (the reference at 1.0×), one bar per row, as a PNG."""
    timed = [r for r in rows if r.get("speedup_per_step") not in (None, "") and math.isfinite(float(r["speedup_per_step"]))]
    font = ImageFont.load_default()
    label_w, bar_w, row_h, top = 260, 460, 26, 60
    width, height = label_w + bar_w + 90, top + row_h * max(1, len(timed)) + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    parts = _ascii(title).split(" | ")  # device and versions on one line, the model and the run on the next
    draw.text((10, 4), " | ".join(parts[:3]), fill="black", font=font)
    draw.text((10, 18), " | ".join(parts[3:]), fill="black", font=font)
    draw.text((10, 34), "speed-up per step against the reference loop (higher is faster)", fill="#444", font=font)
    scale = max([float(r["speedup_per_step"]) for r in timed] + [1.0]) * 1.05
    x0 = label_w
    for i, row in enumerate(timed):
        y = top + i * row_h
        value = float(row["speedup_per_step"])
        colour = "#999999" if row["config"] == "reference" else ("#2b7bb9" if value >= 1 else "#d95f02")
        draw.text((10, y + 6), f"{row['config']}, batch {row['batch']}", fill="black", font=font)
        draw.rectangle([x0, y + 4, x0 + int(bar_w * value / scale), y + row_h - 4], fill=colour)
        draw.text((x0 + int(bar_w * value / scale) + 6, y + 6), f"{value:.2f}x", fill="black", font=font)
    one = x0 + int(bar_w / scale)
    draw.line([one, top - 4, one, top + row_h * max(1, len(timed))], fill="black", width=1)
    draw.text((one - 10, top + row_h * max(1, len(timed)) + 4), "1.0x", fill="black", font=font)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def _ascii(text: str) -> str:
    """Pillow's built-in font has no glyphs for ·, × or –."""
    return text.replace(" · ", " | ").replace("×", "x").replace("–", "-")
