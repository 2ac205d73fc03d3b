"""Refinement inside training: a round every K steps and the batches that read the labels it commits.

Inside training (`RefineCallback`): after a warm-up of W steps, every K steps a round runs on the
Trainer's predictions (gathered from every rank under DDP, the round run and committed by the main
process). "Training reads the updated labels" means: after a committed round the main process
announces the table version (`TableLabels`, a JSON file in the run folder), and every batch built
from the next step on, in the training processes and in their loader workers alike, carries for each
sample a round replaced the label the table holds at that version (q, β, trans, their 88-D and
mirrored forms, has_pose and has_betas from the row's verdict (a refined row's own), as an export of that version
would), without re-exporting shards. A batch a worker built before the announcement is rebuilt by
the Trainer. Limits: only samples in the export can get labels (one filtered out of the export stays
out until the next export); and a training run resumed from a checkpoint reads the labels as the
table holds them at resume, including rounds committed after that checkpoint, so the bit-exact resume
of training does not extend across refinement rounds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hsmr_data import label_table
from hsmr_data.export import label_arrays
from hsmr_data.refine import Refiner, RoundResult, column_matrix, predictions_table, refine_round


class TableLabels:
    """The refined labels of the label table at the version the trainer announces: `LabelOverrides` for
    `TrainingBatches`, read where batches are built, so loader workers follow refinement rounds too.

    The announcement is a small JSON file ({"table_uri", "version"}) that the main training process
    rewrites atomically after each committed round. Every `current()` call checks it (one stat), and a
    changed announcement makes this process, whichever it is, read the table at the announced version.
    """

    def __init__(self, announcement: str | Path):
        self.announcement = Path(announcement)
        self._seen: tuple[int, int, int] | None = None
        self._version: int | None = None
        self._labels: dict[str, dict[str, np.ndarray]] = {}

    @staticmethod
    def announce(announcement: str | Path, table_uri: str, version: int) -> None:
        """Tell every reader of `announcement` to train on `table_uri`'s labels as of `version`."""
        path = Path(announcement)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"table_uri": table_uri, "version": version}))
        tmp.replace(path)

    def current(self) -> tuple[int | None, dict[str, dict[str, np.ndarray]]]:
        try:
            stat = self.announcement.stat()
        except FileNotFoundError:
            return self._version, self._labels
        seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if seen != self._seen:
            announced = json.loads(self.announcement.read_text())
            labels = label_table.read_labels(announced["table_uri"], version=announced["version"])
            self._labels, self._version, self._seen = refined_label_arrays(labels), announced["version"], seen
        return self._version, self._labels

    def __getstate__(self) -> dict[str, Any]:
        # A loader worker reads the table itself rather than receiving the parent's copy of the labels.
        return {"announcement": self.announcement}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["announcement"])


def refined_label_arrays(labels: pa.Table) -> dict[str, dict[str, np.ndarray]]:
    """Sample id → the npz label arrays an export would write for each refined row (round >= 1) of `labels`."""
    refined = labels.filter(pc.greater_equal(labels["round"], 1))
    if refined.num_rows == 0:
        return {}
    q, betas, trans = (column_matrix(refined[name]) for name in ("q", "betas", "trans"))
    finite = np.isfinite(np.concatenate([q, betas, trans], axis=1)).all(axis=1)
    arrays = label_arrays(*(np.where(finite[:, None], a, 0.0) for a in (q, betas, trans)))
    has_label = (np.asarray(refined["passed"].to_numpy(zero_copy_only=False), dtype=bool) & finite).astype(np.float32)
    return {
        sample_id: {
            **{name: np.asarray(values[i], dtype=np.float32) for name, values in arrays.items()},
            "has_pose": np.float32(has_label[i]),
            "has_betas": np.float32(has_label[i]),
        }
        for i, sample_id in enumerate(refined["sample_id"].to_pylist())
    }


class RefineCallback:
    """`Trainer.run(on_step=...)`: a refinement round every `every` steps after `warmup` (rounds at steps
    warmup + every, warmup + 2·every, ...), on the latest `refiner.config.latest` predictions; the Trainer's
    batches then carry the labels the table holds (see the module docstring).

    Under DDP every rank calls it at the same step: the predictions of all ranks are gathered, the main
    process runs the round and commits it, announces the new table version, and every rank (and each of
    its loader workers) trains on the new labels from the next step.
    """

    ANNOUNCEMENT = "labels.json"  # in the run's out_dir

    def __init__(
        self,
        trainer,
        refiner: Refiner,
        warmup: int = 5000,
        every: int = 230,
        on_commit: Callable[[RoundResult], None] | None = None,
    ):
        """`on_commit(result)` runs in the main process after each committed round (e.g. a dashboard update)."""
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.refiner, self.warmup, self.every, self.on_commit = refiner, warmup, every, on_commit
        self.results: list[RoundResult] = []
        self.announcement = Path(trainer.out_dir) / self.ANNOUNCEMENT
        self.group = trainer.group
        trainer.batches.overrides = TableLabels(self.announcement)
        self.refresh()

    def refresh(self) -> None:
        """Announce the table's current version: batches built from now on carry its refined labels."""
        if self.group.is_main:
            uri = self.refiner.config.table_uri
            TableLabels.announce(self.announcement, uri, label_table.create_or_open(uri).version())
        self.group.barrier()

    def __call__(self, trainer, step: int) -> None:
        if step <= self.warmup or (step - self.warmup) % self.every:
            return
        trainer.collect_predictions()
        if self.group.is_main:
            self.results.append(refine_round(self.refiner, predictions_table(trainer.predictions)))
        committed = self.group.gather(self.group.is_main and self.results[-1].status == "committed")[0]
        if committed:
            self.refresh()
            if self.group.is_main and self.on_commit is not None:
                self.on_commit(self.results[-1])
