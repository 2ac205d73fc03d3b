"""Compare two data roots of the same pipeline run (e.g. before and after a refactor, same seed).

    python bench/compare_roots.py BEFORE_ROOT AFTER_ROOT

Prints which files are byte-identical and which differ, and for every label table whether each version's
rows are equal once the columns that cannot match between two runs are left out (`fit_seconds`, a timing,
and `chunk_id`, which holds the root's path). Prefect's own files are skipped. Exits 0 in every case: the
listing is the result (manifests, reports and checkpoints name their root or a timing and always differ).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deltalake import DeltaTable

RUN_SPECIFIC_COLUMNS = ("fit_seconds", "chunk_id")


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and "prefect" not in p.parts}


def compare_files(before: Path, after: Path) -> tuple[list[str], list[str]]:
    ours, theirs = files(before), files(after)
    same, different = [], []
    for name in sorted(set(ours) | set(theirs)):
        if name not in ours or name not in theirs:
            different.append(f"{name} (only {'before' if name in ours else 'after'})")
        elif ours[name].read_bytes() == theirs[name].read_bytes():
            same.append(name)
        else:
            different.append(name)
    return same, different


def compare_tables(before: Path, after: Path) -> list[str]:
    lines = []
    for log in sorted(before.rglob("_delta_log")):
        relative = log.parent.relative_to(before)
        versions = len(DeltaTable(str(log.parent)).history())
        for version in range(versions):
            ours = DeltaTable(str(log.parent), version=version).to_pyarrow_table()
            try:
                theirs = DeltaTable(str(after / relative), version=version).to_pyarrow_table()
            except Exception as error:  # noqa: BLE001 - a missing table or version is a result to print
                lines.append(f"{relative} v{version}: missing after ({error})")
                continue
            columns = [c for c in ours.column_names if c not in RUN_SPECIFIC_COLUMNS]
            equal = columns == [c for c in theirs.column_names if c not in RUN_SPECIFIC_COLUMNS] and ours.sort_by(
                "sample_id"
            ).select(columns).equals(theirs.sort_by("sample_id").select(columns))
            lines.append(f"{relative} v{version}: {ours.num_rows} rows {'equal' if equal else 'DIFFER'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    same, different = compare_files(args.before, args.after)
    print(f"{len(same)} files byte-identical:")
    print("".join(f"  = {name}\n" for name in same), end="")
    print(f"{len(different)} files differ:")
    print("".join(f"  ≠ {name}\n" for name in different), end="")
    print("label tables:")
    print("".join(f"  {line}\n" for line in compare_tables(args.before, args.after)), end="")


if __name__ == "__main__":
    main()
