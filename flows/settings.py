"""Prefect settings for running the flows on this machine, applied only where the user has set nothing.

Prefect reads its settings once, when it is imported, so these are applied as a temporary settings
context (for this process) and as environment variables (for the processes it starts, such as the
ephemeral API server). Why each one:

- PREFECT_HOME under storage/prefect: the SQLite database, results and profiles stay with the
  project's data instead of ~/.prefect.
- PREFECT_SERVER_ANALYTICS_ENABLED=false: the machine has no network.
- PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90: with no PREFECT_API_URL every run starts a
  temporary API server, which takes 5–20 s here (more on a busy machine) against a 20 s default.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from hsmr_data.layout import DEFAULT, DataRoot

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PREFECT_HOME = Path(DataRoot(str(REPO_ROOT / DEFAULT.root)).prefect_home)


def local_prefect_defaults(prefect_home: Path | str = DEFAULT_PREFECT_HOME) -> dict[str, str]:
    """The settings this project wants, by environment variable name."""
    return {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }


def unset_defaults(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The project's defaults for the settings the environment leaves unset."""
    return {name: value for name, value in local_prefect_defaults().items() if name not in environ}


@contextmanager
def local_prefect_settings() -> Iterator[dict[str, str]]:
    """Apply the project's defaults for every Prefect setting the environment leaves unset; yield them."""
    import prefect.settings

    applied = unset_defaults()
    if "PREFECT_HOME" in applied:
        Path(applied["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    updates = {getattr(prefect.settings, name): value for name, value in applied.items()}
    os.environ.update(applied)
    try:
        with prefect.settings.temporary_settings(updates=updates):
            yield applied
    finally:
        for name in applied:
            os.environ.pop(name, None)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from names and paths (their last component): keys allow lowercase letters,
    digits and dashes only."""
    words = [Path(str(part).rstrip("/")).name for part in parts]
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(words).lower()).strip("-")
