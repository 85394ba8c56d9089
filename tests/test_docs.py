"""The documentation runs as written: every ```python block of README.md and docs/*.md is executed in a
fresh namespace inside a temporary working directory; every `fastddpm ...` line of a ```bash block is
parsed by the real CLI parser; every command's --help shows an example.

A block whose first line is ``# needs: mod1, mod2`` is skipped when one of those modules is missing.
Blocks fenced ```python-snippet (a user's own object) or ```text are shown, not run."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import torch

from fastddpm.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    """(file, line, code) of every fenced block of `lang` (indented fences inside list items included)."""
    found = []
    for path in DOCS:
        lines = path.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m or not m["lang"]:
                i += 1
                continue
            indent, start, body = m["indent"], i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                line = lines[i]
                body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
                i += 1
            i += 1
            if m["lang"] == lang:
                found.append((str(path.relative_to(ROOT)), start, "\n".join(body) + "\n"))
    return found


PYTHON = _blocks("python")
BASH = _blocks("bash")


def test_docs_have_python_blocks():
    assert len(PYTHON) >= 5


@pytest.mark.parametrize("where,line,code", PYTHON, ids=[f"{f}:{n}" for f, n, _ in PYTHON])
def test_python_block_runs(where, line, code, tmp_path, monkeypatch):
    first = code.lstrip().splitlines()[0]
    if first.startswith("# needs:"):
        for module in first[len("# needs:"):].split(","):
            if importlib.util.find_spec(module.strip()) is None:
                pytest.skip(f"{where}:{line} needs {module.strip()}")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these tiny models run ~100x slower when 2 threads contend on a busy machine
    try:
        exec(compile(code, f"{where}:{line}", "exec"), {"__name__": "__docs__"})
    finally:
        torch.set_num_threads(threads)


def _commands() -> list[tuple[str, int, list[str]]]:
    """Every `fastddpm ...` command of a bash block, as argv (line continuations joined, comments and
    shell operators cut off; `torchrun ... -m fastddpm -- ARGS` counts as `fastddpm ARGS`)."""
    found = []
    for where, line, code in BASH:
        for command in code.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|\|", command):
                try:
                    words = shlex.split(part, comments=True)
                except ValueError:
                    continue
                if words[:1] == ["fastddpm"]:
                    found.append((where, line, words[1:]))
                elif words[:1] == ["torchrun"] and "--" in words:
                    found.append((where, line, words[words.index("--") + 1:]))
    return found


COMMANDS = _commands()


@pytest.mark.parametrize("where,line,argv", COMMANDS, ids=[f"{f}:{n}:{a[0]}" for f, n, a in COMMANDS])
def test_bash_command_parses(where, line, argv):
    args = build_parser().parse_args(argv)  # argparse exits (SystemExit) on an unknown flag or bad value
    assert args.command == argv[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_help_shows_an_example(capsys):
    parser = build_parser()
    helps = {"fastddpm": parser, **_subparsers(parser)}
    assert {"sample", "export", "fit-timesteps", "fit-solver", "bench", "train"} <= set(helps)
    for name, sub in helps.items():
        with pytest.raises(SystemExit):
            sub.parse_args(["--help"])
        text = capsys.readouterr().out
        assert "example:" in text, name
        description = (sub.description or "").strip().splitlines()
        assert description and len(description[0]) <= 110, name  # one line says what it does
