"""An earlier commit's copy of a package, importable next to the working tree's: the reference side of a
before/after benchmark measured in one process (both sides under the same load, interleaved).

    name = package_at("5d6381c")            # hsmr_model as it was, as package `hsmr_model_at_5d6381c0`
    old = importlib.import_module(f"{name}.skelify")
"""

from __future__ import annotations

import atexit
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def package_at(commit: str, package: str = "hsmr_model") -> str:
    """Extract `package` as it was at `commit` (git archive of this repository) into a temporary folder under
    the name `{package}_at_{sha[:8]}`, its imports of itself renamed, put it on sys.path and return the name."""
    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{commit}^{{commit}}"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    name = f"{package}_at_{sha[:8]}"
    root = Path(tempfile.mkdtemp(prefix="bench-reference-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    archive = subprocess.run(["git", "archive", sha, package], cwd=REPOSITORY, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")  # this repository's own files
    (root / package).rename(root / name)
    for file in (root / name).rglob("*.py"):
        file.write_text(re.sub(rf"\b{package}\b", name, file.read_text()))
    sys.path.insert(0, str(root))
    return name
