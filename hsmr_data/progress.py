"""Progress of long work, through one helper: a tqdm bar on the terminal and, inside a Prefect flow or
task run, a Prefect progress artifact with the same numbers.

    with Progress("convert", total=len(chunks), unit="chunk") as progress:
        for chunk in chunks:
            ...
            progress.update(1)

The library calls it and never needs Prefect: the artifact side looks for a run context only when
Prefect is already imported (a flow imported it), so plain Python and the tests pay no import cost.
The artifact is updated when the whole percentage changes (at most ~100 API calls a run), and its
description carries the count, so the UI shows what the bar shows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm import tqdm


def _in_prefect_run() -> bool:
    """Whether this code runs inside a Prefect flow or task run (without importing Prefect)."""
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class Progress:
    """A bar of `total` units (None: unknown, then the artifact reaches 100 % only at `close`).

    `artifact`: None decides by the run context, False never creates one (e.g. a nested loop whose
    caller reports progress), True requires a Prefect run.
    """

    def __init__(
        self, desc: str, total: int | None = None, unit: str = "it", artifact: bool | None = None, **tqdm_args: Any
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.bar = tqdm(total=total, desc=desc, unit=unit, **tqdm_args)
        self.n = 0  # units done (kept here: a disabled tqdm bar does not count)
        self._artifact_id = None
        self._percent = -1
        if artifact or (artifact is None and _in_prefect_run()):
            from prefect.artifacts import create_progress_artifact

            self._artifact_id = create_progress_artifact(0.0, description=self._description())
            self._percent = 0

    @property
    def percent(self) -> float:
        """What the artifact shows: done / total in %, or 0 while the total is unknown."""
        return 100.0 * min(self.n, self.total) / self.total if self.total else 0.0

    def _description(self) -> str:
        return f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total is not None else "") + f" {self.unit}"

    def update(self, count: int = 1, **postfix: Any) -> None:
        """`count` more units done; `postfix` values (a loss, ...) go next to the bar."""
        self.n += count
        self.bar.update(count)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self._publish()

    def update_to(self, done: int, **postfix: Any) -> None:
        """`done` units done in all (for work that reports a running total, such as training steps)."""
        self.update(done - self.n, **postfix)

    def _publish(self, final: bool = False) -> None:
        if self._artifact_id is None:
            return
        percent = 100 if final and self.total is None else int(self.percent)
        if percent > self._percent:
            from prefect.artifacts import update_progress_artifact

            self._percent = percent
            update_progress_artifact(self._artifact_id, float(percent), description=self._description())

    def close(self) -> None:
        self._publish(final=True)
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


Outcome = TypeVar("Outcome")


def gather(
    results: Iterable[tuple[Any, Outcome | Exception]],
    progress: Progress,
    on_done: Callable[[Outcome], None] | None = None,
    name: Callable[[Any], str] = str,
) -> tuple[list[Outcome], dict[str, str]]:
    """Collect what a runner yields, (unit, its outcome or the error that stopped it), as units finish:
    the outcomes in that order (`on_done` after each) and the errors by `name(unit)`; one step of
    `progress` each.

    The runner is the step's (units one after the other in this process) or its flow's (Prefect tasks on
    threads or Dask workers), so the library's loop serves both and every unit gets its chance."""
    outcomes: list[Outcome] = []
    failed: dict[str, str] = {}
    for unit, result in results:
        if isinstance(result, Exception):
            failed[name(unit)] = repr(result)
        else:
            outcomes.append(result)
            if on_done is not None:
                on_done(result)
        progress.update(1)
    return outcomes, failed
