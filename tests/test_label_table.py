"""The versioned label table: better-only merges, time travel, idempotent and atomic commits, readers.

Tests that start processes use the spawn context: forking after deltalake has been used can hang.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

from hsmr_data import label_table as lt

SPAWN = multiprocessing.get_context("spawn")


def _rows(ids, kp2d_err=None, seed: int = 0, passed: bool = True) -> dict[str, np.ndarray]:
    """Label rows for `ids` with random labels (distinct per seed) and the given kp2d errors."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    return {
        "sample_id": np.asarray(ids, dtype=str),
        "dataset": np.full(n, "synthetic"),
        "chunk_id": np.full(n, f"chunk-{seed}"),
        "q": rng.normal(size=(n, 46)),
        "betas": rng.normal(size=(n, 10)),
        "trans": rng.normal(size=(n, 3)),
        "pve_mean": rng.uniform(0, 0.02, n),
        "pve_max": rng.uniform(0.02, 0.05, n),
        "kp2d_err": rng.uniform(0, 1, n) if kp2d_err is None else np.asarray(kp2d_err, dtype=float),
        "num_keypoints": np.full(n, 30),
        "pve_ok": np.ones(n, bool),
        "betas_ok": np.ones(n, bool),
        "keypoints_ok": np.ones(n, bool),
        "passed": np.full(n, passed),
        "fit_iterations": np.full(n, 80),
        "fit_seconds": rng.uniform(0, 1, n),
        "converged": np.ones(n, bool),
    }


def _by_id(table) -> dict[str, dict]:
    return {row["sample_id"]: row for row in table.to_pylist()}


def _q32(rows: dict[str, np.ndarray], i: int) -> list[float]:
    return rows["q"][i].astype(np.float32).tolist()


@pytest.fixture
def uri(tmp_path) -> str:
    return str(tmp_path / "labels")


def test_refinement_replaces_only_better_labels(uri):
    ids = ["a", "b", "c", "d", "e", "f"]
    round0 = _rows(ids, kp2d_err=[1, 1, 1, 1, 1, np.nan], seed=0)
    assert lt.commit_chunk(uri, round0, "convert/0") == lt.CommitResult(1, inserted=6, updated=0, skipped=False)

    # a, b better; c, d worse; e equal; f had no error (null), which nothing beats; g is new.
    round1 = _rows([*ids, "g"], kp2d_err=[0.5, 0.9, 1.5, 2.0, 1.0, 0.1, 0.3], seed=1)
    result = lt.commit_round(uri, round1, 1)
    assert (result.inserted, result.updated) == (1, 2)

    rows = _by_id(lt.read_labels(uri))
    assert sorted(rows) == [*ids, "g"]
    for i, sid in enumerate([*ids, "g"]):
        expected_round, source, source_rows = (
            (1, "skelify-round-1", round1) if sid in {"a", "b", "g"} else (0, "smpl-fit", round0)
        )
        row = rows[sid]
        assert (row["round"], row["source"]) == (expected_round, source)
        assert row["q"] == _q32(source_rows, i), sid
        assert row["chunk_id"] == f"chunk-{expected_round}"
    assert rows["f"]["kp2d_err"] is None  # NaN is stored as null


def test_custom_better_predicate(uri):
    lt.commit_chunk(uri, _rows(["a", "b"], kp2d_err=[1, 1]), "convert/0")
    refined = _rows(["a", "b"], kp2d_err=[0.5, 0.5], seed=1)
    refined["passed"] = np.array([True, False])
    lt.commit_round(uri, refined, 1, better=f"{lt.KP2D_ERR_IMPROVED} AND s.passed")
    rows = _by_id(lt.read_labels(uri))
    assert (rows["a"]["round"], rows["b"]["round"]) == (1, 0)


def test_time_travel_reads_round_zero_back_exactly(uri):
    lt.commit_chunk(uri, _rows(["a", "b"], kp2d_err=[1, 1]), "convert/0")
    lt.commit_chunk(uri, _rows(["c"], kp2d_err=[1], seed=2), "convert/1")
    after_round0 = lt.read_labels(uri)
    lt.commit_round(uri, _rows(["a", "b", "c"], kp2d_err=[0.1, 0.1, 0.1], seed=1), 1)

    assert not lt.read_labels(uri).equals(after_round0)
    assert lt.read_labels(uri, round=0).equals(after_round0)
    assert lt.round_versions(uri) == {0: 2, 1: 3}
    assert lt.read_labels(uri, version=2).equals(after_round0)
    assert [(h["version"], h["round"], h["app_id"], h["inserted"], h["updated"]) for h in lt.history(uri)] == [
        (0, None, None, 0, 0),
        (1, 0, "convert/0", 2, 0),
        (2, 0, "convert/1", 1, 0),
        (3, 1, lt.REFINE_APP_ID, 0, 3),
    ]
    with pytest.raises(ValueError, match="round 2 was never committed"):
        lt.read_labels(uri, round=2)
    with pytest.raises(ValueError, match="not both"):
        lt.read_labels(uri, version=1, round=0)


def test_rerunning_a_round_is_a_no_op_and_an_unchanged_round_changes_no_row(uri):
    lt.commit_chunk(uri, _rows(["a", "b"], kp2d_err=[1, 1]), "convert/0")
    refined = _rows(["a", "b"], kp2d_err=[0.5, 2.0], seed=1)
    first = lt.commit_round(uri, refined, 1)
    after_round1 = lt.read_labels(uri)

    again = lt.commit_round(uri, refined, 1)
    assert again == lt.CommitResult(first.version, inserted=0, updated=0, skipped=True)
    assert DeltaTable(uri).version() == first.version

    # The same labels as round 2: nothing is better, no row changes, but the round is on record.
    unchanged = lt.commit_round(uri, refined, 2)
    assert (unchanged.inserted, unchanged.updated, unchanged.skipped) == (0, 0, False)
    assert lt.read_labels(uri).equals(after_round1)
    assert lt.round_versions(uri)[2] == unchanged.version
    assert lt.is_committed(uri, lt.REFINE_APP_ID, 2)


def test_recommitting_a_chunk_is_a_no_op(uri):
    chunk = _rows(["a", "b", "c"])
    assert not lt.is_committed(uri, "convert/0", 0)
    first = lt.commit_chunk(uri, chunk, "convert/0")
    assert lt.is_committed(uri, "convert/0", 0)
    assert not lt.is_committed(uri, "convert/0", 1)
    assert not lt.is_committed(uri, "convert/1", 0)
    after = lt.read_labels(uri)

    assert lt.commit_chunk(uri, chunk, "convert/0").skipped
    assert DeltaTable(uri).version() == first.version
    # A newer attempt of the chunk is not skipped, but round 0 only inserts: rows are never duplicated.
    retried = lt.commit_chunk(uri, _rows(["a", "b", "c"], seed=5), "convert/0", txn_version=1)
    assert (retried.skipped, retried.inserted, retried.updated) == (False, 0, 0)
    assert lt.read_labels(uri).equals(after)


def test_round_zero_is_not_a_refinement_round(uri):
    with pytest.raises(ValueError, match="start at 1"):
        lt.commit_round(uri, _rows(["a"]), 0)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda r: r.update(sample_id=np.array(["a", "b", "a"])), r"more than once.*'a'"),
        (lambda r: r.pop("pve_max"), r"missing columns \['pve_max'\]"),
        (lambda r: r.update(extra=np.zeros(3)), r"unexpected columns \['extra'\]"),
        (lambda r: r.update(round=np.zeros(3, np.int32)), r"\['round'\] are set by the commit"),
        (lambda r: r.update(q=np.zeros((3, 45))), r"column 'q'.*\(N, 46\)"),
        (lambda r: r.update(pve_max=np.array([0.1, None, 0.1])), r"column 'pve_max': 1 null"),
        (lambda r: r.update(num_keypoints=np.array([4.0, 4.5, 4.0])), r"column 'num_keypoints'"),
        (lambda r: r.update(fit_seconds=np.array(["fast", "1", "2"])), r"column 'fit_seconds'"),
    ],
)
def test_invalid_rows_are_rejected_naming_the_column(uri, spoil, message):
    rows = _rows(["a", "b", "c"])
    spoil(rows)
    with pytest.raises(ValueError, match=message):
        lt.commit_chunk(uri, rows, "convert/0")
    assert not os.path.exists(uri)


def test_an_arrow_table_is_accepted_like_numpy_columns(uri):
    from_numpy = lt.validate_rows(_rows(["a", "b"]))
    lt.commit_chunk(uri, from_numpy, "convert/0")
    assert lt.read_labels(uri).drop_columns(list(lt.COMMIT_COLUMNS)).equals(from_numpy.cast(lt.INPUT_SCHEMA))


def test_another_table_at_the_uri_is_refused(uri):
    import pyarrow as pa

    write_deltalake(uri, pa.table({"x": [1]}))
    with pytest.raises(ValueError, match="is not a label table"):
        lt.commit_chunk(uri, _rows(["a"]), "convert/0")


def test_readers_without_project_code_see_only_current_rows(uri):
    import duckdb
    import polars as pl

    ids = [f"s{i}" for i in range(5)]
    lt.commit_chunk(uri, _rows(ids, kp2d_err=np.ones(5)), "convert/0")
    lt.commit_round(uri, _rows(ids, kp2d_err=[0.5, 2, 0.5, 2, 0.5], seed=1), 1)  # superseded rows stay in Parquet
    expected = [(row["sample_id"], row["round"], row["q"][0]) for row in lt.read_labels(uri).to_pylist()]
    assert [r[1] for r in expected] == [1, 0, 1, 0, 1]

    table = DeltaTable(uri)
    via_arrow = table.to_pyarrow_table().sort_by("sample_id").to_pylist()
    via_pandas = table.to_pandas().sort_values("sample_id")
    via_polars = pl.read_delta(uri).sort("sample_id")
    connection = duckdb.connect()
    connection.register("labels", table.to_pyarrow_dataset())
    via_duckdb = connection.execute("SELECT sample_id, round, q[1] FROM labels ORDER BY sample_id").fetchall()

    assert [(r["sample_id"], r["round"], r["q"][0]) for r in via_arrow] == expected
    assert (
        list(zip(via_pandas["sample_id"], via_pandas["round"], via_pandas["q"].map(lambda q: q[0]), strict=True))
        == expected
    )
    assert (
        list(zip(via_polars["sample_id"], via_polars["round"], via_polars["q"].list.first(), strict=True)) == expected
    )
    assert via_duckdb == expected


def _lose_the_next_race(monkeypatch, uri: str) -> list[int]:
    """Make the next commit's first attempt lose to another writer; returns the versions each attempt read."""
    real_open = lt.create_or_open
    seen_versions = []

    def open_then_lose_the_race(*args, **kwargs):
        table = real_open(*args, **kwargs)
        seen_versions.append(table.version())
        if len(seen_versions) == 1:
            # Another writer commits after this one has read the table (its own open is the second call).
            lt.commit_chunk(uri, _rows(["rival"], seed=2), "convert/rival")
        return table

    monkeypatch.setattr(lt, "create_or_open", open_then_lose_the_race)
    return seen_versions


def test_a_commit_that_loses_a_race_reloads_and_merges_again(uri, monkeypatch):
    lt.commit_chunk(uri, _rows(["a"]), "convert/0")
    seen_versions = _lose_the_next_race(monkeypatch, uri)
    result = lt.commit_chunk(uri, _rows(["c"], seed=3), "convert/3")
    assert seen_versions == [1, 1, 2]  # the first attempt read version 1, the retry version 2
    assert result == lt.CommitResult(3, inserted=1, updated=0, skipped=False)
    assert lt.read_labels(uri)["sample_id"].to_pylist() == ["a", "c", "rival"]


def test_a_lost_race_without_retries_raises_and_writes_nothing(uri, monkeypatch):
    lt.commit_chunk(uri, _rows(["a"]), "convert/0")
    _lose_the_next_race(monkeypatch, uri)
    with pytest.raises(CommitFailedError):
        lt.commit_chunk(uri, _rows(["c"], seed=3), "convert/3", max_attempts=1)
    assert lt.read_labels(uri)["sample_id"].to_pylist() == ["a", "rival"]


def _commit_chunks(uri: str, chunks: list[int], barrier) -> None:
    """Child process: commit chunks of 20 samples each, starting together with the other writer."""
    barrier.wait()
    for chunk in chunks:
        ids = [f"c{chunk}-{i}" for i in range(20)]
        lt.commit_chunk(uri, _rows(ids, seed=chunk), f"convert/{chunk}", max_attempts=20)


@pytest.mark.slow
def test_concurrent_writers_never_duplicate_or_drop_rows(uri):
    chunks = list(range(6))
    # Four writers, the same chunks in different orders, on a table none has created yet: every commit
    # races the others for the same log version.
    orders = [chunks, chunks[::-1], chunks[2:] + chunks[:2], chunks[4:] + chunks[:4]]
    barrier = SPAWN.Barrier(len(orders))
    writers = [SPAWN.Process(target=_commit_chunks, args=(uri, order, barrier)) for order in orders]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=240)
    assert [writer.exitcode for writer in writers] == [0] * len(orders)

    ids = lt.read_labels(uri)["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 6 * 20
    assert all(lt.is_committed(uri, f"convert/{chunk}", 0) for chunk in chunks)


def _commit_big_chunk(uri: str, n: int) -> None:
    """Child process: one commit large enough to be killed while its Parquet file is being written."""
    lt.commit_chunk(uri, _rows([f"big{i:07d}" for i in range(n)], seed=9), "convert/big")


@pytest.mark.slow
def test_a_commit_killed_mid_write_leaves_the_previous_version(uri):
    lt.commit_chunk(uri, _rows(["a", "b"]), "convert/0")
    before = lt.read_labels(uri)
    files_before = set(os.listdir(uri))
    log_before = set(os.listdir(os.path.join(uri, "_delta_log")))

    n = 200_000
    writer = SPAWN.Process(target=_commit_big_chunk, args=(uri, n))
    writer.start()
    deadline = time.monotonic() + 120
    # Kill it the moment its first data file appears in the table folder, long before the log entry.
    while not set(os.listdir(uri)) - files_before and writer.is_alive() and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(writer.pid, signal.SIGKILL)
    writer.join()
    assert writer.exitcode == -signal.SIGKILL, "the commit finished before it could be killed: inconclusive"
    assert set(os.listdir(uri)) - files_before, "the writer was killed before it wrote anything"
    assert set(os.listdir(os.path.join(uri, "_delta_log"))) == log_before

    assert lt.read_labels(uri).equals(before)
    assert not lt.is_committed(uri, "convert/big", 0)
    rerun = SPAWN.Process(target=_commit_big_chunk, args=(uri, n))
    rerun.start()
    rerun.join(timeout=120)
    assert rerun.exitcode == 0
    ids = lt.read_labels(uri)["sample_id"].to_pylist()
    assert len(ids) == len(set(ids)) == n + 2
