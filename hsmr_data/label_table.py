"""The versioned SKEL label table: a Delta Lake table, one row per sample holding its best label so far.

Every commit is one atomic Delta MERGE on `sample_id`, so the Delta log is the history of the labels:

- round 0 (conversion) arrives in chunks: `commit_chunk` inserts samples not yet in the table and
  never touches existing rows;
- refinement round k: `commit_round` inserts new samples and replaces an existing row only where the
  new label is better (a SQL predicate over the source `s` and target `t`, by default a lower
  `kp2d_err`), so a row's `round` and `source` say which round produced the label it holds;
- each commit records its round in the commit metadata, so `read_labels(uri, round=k)` time-travels
  to the table as it stood after round k; `read_labels(uri, version=v)` reads any Delta version.

Commits are idempotent: each carries a Delta transaction (app id, version), and a commit whose
transaction is already in the log is skipped. A merge that changes no row still writes an empty commit
so that its round and transaction are recorded. Concurrent writers conflict (delta-rs raises
CommitFailedError, nothing is written); the commit then reloads the table and merges again.

The table opens without project code: `deltalake.DeltaTable(uri).to_pyarrow_table()`,
`polars.read_delta(uri)`, or DuckDB over `DeltaTable(uri).to_pyarrow_dataset()`. Reading the Parquet
files directly is wrong: they include superseded rows, which only the Delta log excludes.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from hsmr_model import skel_constants as C

# The one definition of the table. Delta has no fixed-size lists: q, betas and trans are stored as
# lists, and `read_labels` casts them back to these types.
LABEL_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # records.sample_id: "{__key__}_{personid}"
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "smpl-fit" or "skelify-round-{k}"; set by the commit
        pa.field("round", pa.int32(), nullable=False),  # the round that produced this label; set by the commit
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("q", pa.list_(pa.float32(), C.NUM_DOFS), nullable=False),
        pa.field("betas", pa.list_(pa.float32(), C.NUM_BETAS), nullable=False),
        pa.field("trans", pa.list_(pa.float32(), 3), nullable=False),
        pa.field("pve_mean", pa.float32(), nullable=False),  # metres, to the SMPL pseudo-GT mesh
        pa.field("pve_max", pa.float32(), nullable=False),  # metres
        pa.field("kp2d_err", pa.float32(), nullable=True),  # normalised crop units; null (or NaN given) = unknown
        pa.field("num_keypoints", pa.int32(), nullable=False),  # keypoints with confidence > 0
        pa.field("pve_ok", pa.bool_(), nullable=False),
        pa.field("betas_ok", pa.bool_(), nullable=False),
        pa.field("keypoints_ok", pa.bool_(), nullable=False),
        pa.field("passed", pa.bool_(), nullable=False),
        pa.field("fit_iterations", pa.int32(), nullable=False),
        pa.field("fit_seconds", pa.float32(), nullable=False),
        pa.field("converged", pa.bool_(), nullable=False),
    ]
)
# Columns the commit functions fill in; callers leave them out of their rows.
COMMIT_COLUMNS = ("source", "round")
INPUT_SCHEMA = pa.schema([f for f in LABEL_SCHEMA if f.name not in COMMIT_COLUMNS])

ROUND0_SOURCE = "smpl-fit"
KP2D_ERR_IMPROVED = "s.kp2d_err < t.kp2d_err"  # null on either side never counts as better
REFINE_APP_ID = "hsmr-refine"
_ROUND_KEY = "hsmr.round"
_APP_ID_KEY = "hsmr.app_id"
_MERGE_ON = "t.sample_id = s.sample_id"
MAX_BACKOFF_S = 2.0


@dataclass(frozen=True)
class CommitResult:
    """What one commit did. `skipped`: its transaction was already in the log, nothing was written."""

    version: int
    inserted: int
    updated: int
    skipped: bool


def refine_source(round: int) -> str:
    """The `source` of labels produced by refinement round `round`."""
    return f"skelify-round-{round}"


def validate_rows(rows: pa.Table | Mapping[str, Any]) -> pa.Table:
    """Rows to commit as a table of INPUT_SCHEMA, or a ValueError naming the offending column.

    `rows`: a pyarrow Table or a mapping of column name to array-like (numpy arrays of shape (N, 46),
    (N, 10), (N, 3) for q, betas, trans). Every INPUT_SCHEMA column must be there and nothing else;
    values are cast safely (float64 → float32 is allowed, 1.5 → int is not). NaN in kp2d_err becomes
    null, because NaN would compare as larger than any error in the merge condition. Sample ids must
    be unique: a commit with a sample twice would be ambiguous about which label wins.
    """
    names = rows.column_names if isinstance(rows, pa.Table) else list(rows)
    given = set(names)
    set_by_commit = sorted(given & set(COMMIT_COLUMNS))
    if set_by_commit:
        raise ValueError(f"columns {set_by_commit} are set by the commit function; leave them out of the rows")
    missing = [n for n in INPUT_SCHEMA.names if n not in given]
    unexpected = sorted(given - set(INPUT_SCHEMA.names))
    if missing or unexpected:
        raise ValueError(f"label rows: missing columns {missing}, unexpected columns {unexpected}")
    table = pa.table({f.name: _column(f, rows[f.name]) for f in INPUT_SCHEMA}, schema=INPUT_SCHEMA)
    _check_unique(table["sample_id"])
    return table


def create_or_open(uri: str, storage_options: dict[str, str] | None = None) -> DeltaTable:
    """The label table at `uri`, created empty if there is none; a ValueError if `uri` holds another table."""
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        # Writers racing here may each commit a CREATE TABLE (same schema, harmless); create the
        # table once before fanning out to keep the history clean.
        table = DeltaTable.create(uri, LABEL_SCHEMA, mode="ignore", storage_options=storage_options)
    stored = table.schema().to_arrow()
    stored_names = [stored.field(i).name for i in range(len(stored))]
    if stored_names != LABEL_SCHEMA.names:
        raise ValueError(f"{uri} is not a label table: its columns are {stored_names}, expected {LABEL_SCHEMA.names}")
    return table


def commit_chunk(
    uri: str,
    rows: pa.Table | Mapping[str, Any],
    app_id: str,
    txn_version: int = 0,
    *,
    storage_options: dict[str, str] | None = None,
    max_attempts: int = 5,
) -> CommitResult:
    """Commit a chunk of round-0 (conversion) labels: insert new samples, leave existing rows alone.

    `app_id` names the chunk (e.g. "convert/{dataset}/{chunk_id}") and `txn_version` its attempt or
    code version; a chunk already committed with a version >= `txn_version` is skipped.
    """
    return _commit(uri, rows, 0, ROUND0_SOURCE, None, app_id, txn_version, storage_options, max_attempts)


def commit_round(
    uri: str,
    rows: pa.Table | Mapping[str, Any],
    round: int,
    *,
    better: str = KP2D_ERR_IMPROVED,
    app_id: str = REFINE_APP_ID,
    storage_options: dict[str, str] | None = None,
    max_attempts: int = 5,
) -> CommitResult:
    """Commit refinement round `round` (>= 1) atomically: insert new samples, update rows where `better`.

    `better` is a SQL predicate (DataFusion) over the new label `s` and the stored one `t`, e.g. the
    default "s.kp2d_err < t.kp2d_err" or "s.kp2d_err < t.kp2d_err AND s.passed". The round is the
    transaction version of `app_id`, so rerunning a round already committed (or an earlier one) is a
    skipped no-op.
    """
    if round < 1:
        raise ValueError(f"refinement rounds start at 1 (round 0 is conversion, see commit_chunk), got {round}")
    return _commit(uri, rows, round, refine_source(round), better, app_id, round, storage_options, max_attempts)


def is_committed(uri: str, app_id: str, version: int, storage_options: dict[str, str] | None = None) -> bool:
    """Whether a commit of `app_id` with transaction version >= `version` is in the table's log."""
    try:
        table = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        return False
    return _txn_done(table, app_id, version)


def read_labels(
    uri: str,
    version: int | None = None,
    round: int | None = None,
    storage_options: dict[str, str] | None = None,
) -> pa.Table:
    """The labels at a Delta `version`, or as they stood after `round`'s last commit, or now; sorted by id."""
    if version is not None and round is not None:
        raise ValueError("give version or round, not both")
    if round is not None:
        versions = round_versions(uri, storage_options)
        if round not in versions:
            raise ValueError(f"round {round} was never committed to {uri}; committed rounds: {sorted(versions)}")
        version = versions[round]
    table = DeltaTable(uri, version=version, storage_options=storage_options).to_pyarrow_table()
    return table.cast(LABEL_SCHEMA).sort_by("sample_id")


def history(uri: str, storage_options: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One entry per Delta version, oldest first: version, round (None for the table's creation),
    app_id, operation, and the rows inserted and updated by it."""
    entries = []
    for commit in DeltaTable(uri, storage_options=storage_options).history():
        metrics = commit.get("operationMetrics", {})
        tag = commit.get(_ROUND_KEY)
        entries.append(
            {
                "version": commit["version"],
                "round": None if tag is None else int(tag),
                "app_id": commit.get(_APP_ID_KEY),
                "operation": commit["operation"],
                "inserted": int(metrics.get("num_target_rows_inserted", 0)),
                "updated": int(metrics.get("num_target_rows_updated", 0)),
            }
        )
    return sorted(entries, key=lambda e: e["version"])


def round_versions(uri: str, storage_options: dict[str, str] | None = None) -> dict[int, int]:
    """Round → the last Delta version committed for it (round 0 spans one version per chunk)."""
    return {e["round"]: e["version"] for e in history(uri, storage_options) if e["round"] is not None}


def _commit(
    uri: str,
    rows: pa.Table | Mapping[str, Any],
    round: int,
    source: str,
    better: str | None,
    app_id: str,
    txn_version: int,
    storage_options: dict[str, str] | None,
    max_attempts: int,
) -> CommitResult:
    """Merge `rows` as labels of `round`, retrying when a concurrent writer commits first."""
    labels = _with_commit_columns(validate_rows(rows), round, source)
    properties = CommitProperties(
        custom_metadata={_ROUND_KEY: str(round), _APP_ID_KEY: app_id},
        app_transactions=[Transaction(app_id, txn_version)],
    )
    attempt = 1
    while True:
        try:
            table = create_or_open(uri, storage_options)
            if _txn_done(table, app_id, txn_version):
                return CommitResult(version=table.version(), inserted=0, updated=0, skipped=True)
            return _merge(table, labels, better, properties)
        except CommitFailedError:
            if attempt >= max_attempts:
                raise
            # Exponential backoff with jitter, so that writers that collided do not collide again in
            # lockstep; capped, since a commit takes well under a second.
            time.sleep(random.uniform(0, min(MAX_BACKOFF_S, 0.05 * 2**attempt)))
            attempt += 1


def _merge(table: DeltaTable, labels: pa.Table, better: str | None, properties: CommitProperties) -> CommitResult:
    """One MERGE on sample_id; an empty commit records the round and transaction if no row changed."""
    before = table.version()
    merger = table.merge(labels, _MERGE_ON, source_alias="s", target_alias="t", commit_properties=properties)
    if better is not None:
        merger = merger.when_matched_update_all(predicate=better)
    metrics = merger.when_not_matched_insert_all().execute()
    if table.version() == before:
        write_deltalake(table, labels.schema.empty_table(), mode="append", commit_properties=properties)
    return CommitResult(
        version=table.version(),
        inserted=int(metrics["num_target_rows_inserted"]),
        updated=int(metrics["num_target_rows_updated"]),
        skipped=False,
    )


def _txn_done(table: DeltaTable, app_id: str, version: int) -> bool:
    committed = table.transaction_version(app_id)
    return committed is not None and committed >= version


def _with_commit_columns(rows: pa.Table, round: int, source: str) -> pa.Table:
    """`rows` with `source` and `round` filled in, in LABEL_SCHEMA's column order."""
    n = rows.num_rows
    filled = {"source": pa.array([source] * n, pa.string()), "round": pa.array(np.full(n, round, np.int32))}
    return pa.table(
        {f.name: filled[f.name] if f.name in filled else rows[f.name] for f in LABEL_SCHEMA}, schema=LABEL_SCHEMA
    )


def _column(field: pa.Field, values: Any) -> pa.ChunkedArray:
    """`values` as a column of `field`'s type, or a ValueError naming the column."""
    try:
        column = _to_arrow(field.type, values).cast(field.type)
    except (ValueError, TypeError, NotImplementedError) as error:  # the Arrow errors subclass these
        raise ValueError(f"column {field.name!r}: cannot be read as {field.type}: {error}") from error
    # NaN sorts above every number in the merge condition, so an unknown error must be null instead.
    if pa.types.is_floating(field.type) and field.nullable:
        column = pc.if_else(pc.is_nan(column), pa.scalar(None, field.type), column)
    if not field.nullable and column.null_count:
        raise ValueError(f"column {field.name!r}: {column.null_count} null values in a column that must be set")
    return column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])


def _to_arrow(arrow_type: pa.DataType, values: Any) -> pa.Array | pa.ChunkedArray:
    """Arrow data of `values`; a 2-D numpy array becomes a fixed-size list array of its rows."""
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values
    if pa.types.is_fixed_size_list(arrow_type):
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != arrow_type.list_size:
            raise ValueError(f"expected shape (N, {arrow_type.list_size}), got {array.shape}")
        return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), arrow_type.list_size)
    return pa.array(values)


def _check_unique(sample_ids: pa.ChunkedArray) -> None:
    """Raise a ValueError naming a few sample ids that occur more than once."""
    if pc.count_distinct(sample_ids).as_py() == len(sample_ids):
        return
    repeated = [sid for sid, count in Counter(sample_ids.to_pylist()).items() if count > 1]
    raise ValueError(f"sample_id: {len(repeated)} ids occur more than once in one commit, e.g. {repeated[:5]}")
