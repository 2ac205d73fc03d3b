"""Where every benchmark's figures go: one JSON file, written whole."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch


def write_result(path: str | Path, result: dict) -> Path:
    """Write `result` as indented JSON to `path` (folders made as needed) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def write_study(path: str | Path, figures: dict, markdown: str) -> Path:
    """A study's figures (with the machine and torch's thread count they were measured with) as JSON at
    `path`, its table as markdown beside it (`.md`), and the table printed."""
    machine = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    out = write_result(path, {**figures, **machine})
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    return out
