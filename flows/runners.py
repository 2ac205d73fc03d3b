"""What the flows' unit runners share: Prefect futures turned into the (unit, outcome or error) pairs the
library's loops (`progress.gather`) collect as units finish."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

from prefect.futures import PrefectFuture, as_completed

Unit = TypeVar("Unit")


def as_finished(futures: Mapping[PrefectFuture, Unit]) -> Iterator[tuple[Unit, Any | Exception]]:
    """Each future's unit with its result, or the error that ended its task after its retries (the library
    counts it and goes on with the other units), in the order the tasks finish."""
    for future in as_completed(list(futures)):
        try:
            yield futures[future], future.result()
        except Exception as error:  # noqa: BLE001 - a failed unit is an outcome the library reports
            yield futures[future], error
