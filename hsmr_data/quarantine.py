"""Where refused inputs go: every step that drops something records what, from where and why.

A step never stops on one bad sample: it records it here and goes on. `entries` are things that were
dropped; `notes` are things that were kept but changed (e.g. a SKEL label read as "no label").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class QuarantineEntry:
    source: str  # the file (shard, .npz, table) the input came from
    key: str | None  # the sample or sample id; None when the problem is not tied to one sample
    reason: str  # what was wrong, e.g. "keypoints_2d has shape (43, 3), expected (44, 3)"


@dataclass
class Quarantine:
    """Collects dropped inputs (`entries`) and kept-but-changed ones (`notes`) for a JSON report."""

    entries: list[QuarantineEntry] = field(default_factory=list)
    notes: list[QuarantineEntry] = field(default_factory=list)

    def add(self, source: str | Path, key: str | None, reason: str) -> None:
        self.entries.append(QuarantineEntry(str(source), key, reason))

    def note(self, source: str | Path, key: str | None, reason: str) -> None:
        self.notes.append(QuarantineEntry(str(source), key, reason))

    def __len__(self) -> int:
        return len(self.entries)

    def report(self) -> dict[str, Any]:
        return {
            "quarantined": len(self.entries),
            "entries": [asdict(entry) for entry in self.entries],
            "notes": [asdict(entry) for entry in self.notes],
        }

    def write_report(self, path: Path | str) -> dict[str, Any]:
        """Write `report()` as JSON (atomically: a reader never sees half a report) and return it."""
        report = self.report()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(path)
        return report
