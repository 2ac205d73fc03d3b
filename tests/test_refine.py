"""A SKELify refinement round on a tiny synthetic world: only better labels replace old ones, rounds are
idempotent and resumable, the pseudo-GT gets closer to the truth, training reads the new labels, and the
flow runs under Prefect's test harness."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from flows.refine import refine_round_flow
from flows.settings import artifact_key
from hsmr_data import cli, conversion, export, refine, training_samples
from hsmr_data import label_table as lt
from hsmr_data.conversion import ConvertConfig
from hsmr_data.refine import Decision, RefineConfig, RefineOptions, Refiner
from hsmr_data.refine_training import RefineCallback, TableLabels
from hsmr_data.synthetic.world import SynthConfig, generate_dataset
from hsmr_data.train_data import AugmentConfig, MixedSampler, ShardDataset, TrainingBatches
from hsmr_data.training import TrainConfig, Trainer
from hsmr_data.truth_report import label_errors
from hsmr_model.flip import flip_q
from hsmr_model.skelify import SkelifyConfig, Stage

PEOPLE = 8
# A short schedule keeps a round to seconds on a CPU; the paper's refiner (10 steps of 20) is the default.
LIGHT = SkelifyConfig(
    stages=(Stage(steps=3, reprojection=1.0, shape=5.0, angle=4.78 * 0.17),), max_iter=10, batch_size=8, device="cpu"
)


@pytest.fixture(scope="module")
def world(model_paths, tmp_path_factory):
    """The dataset, its round-0 table from the real conversion, the truth, and predictions near the truth
    (a stand-in for a trained network: true q, β plus noise)."""
    root = tmp_path_factory.mktemp("refine")
    generate_dataset(model_paths, root / "synth", SynthConfig(count=PEOPLE, batch_size=PEOPLE, shard_maxcount=4))
    models = str(model_paths.smpl.parent.parent)
    conversion.convert_dataset(ConvertConfig(str(root / "synth"), str(root / "round0"), models_root=models))
    truth_path = str(root / "synth/truth/ground_truth.parquet")
    truth = pq.read_table(truth_path).to_pylist()
    rng = np.random.default_rng(0)
    q, betas = np.array([t["q"] for t in truth]), np.array([t["betas"] for t in truth])
    predictions = pa.table(
        {
            "sample_id": [t["sample_id"] for t in truth],
            "dataset": ["synth"] * len(truth),
            "step": list(range(len(truth))),
            "q": (q + rng.normal(0, 0.05, q.shape)).tolist(),
            "betas": (betas + rng.normal(0, 0.2, betas.shape)).tolist(),
            "cam_t": [[0.0, 0.0, 40.0]] * len(truth),
        }
    )
    pq.write_table(predictions, root / "predictions.parquet")
    return {"root": root, "models": models, "truth": truth_path, "predictions": str(root / "predictions.parquet")}


def _table(world, tmp_path, name="labels") -> str:
    """A private copy of the round-0 table."""
    shutil.copytree(world["root"] / "round0", tmp_path / name)
    return str(tmp_path / name)


def _config(world, table: str, **overrides) -> RefineConfig:
    base = RefineConfig(
        table_uri=table,
        dataset_dirs={"synth": str(world["root"] / "synth")},
        models_root=world["models"],
        skelify=LIGHT,
    )
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def first_round(world, tmp_path_factory):
    """Round 1 on a copy of the round-0 table: the refiner, the table before and after, and the result."""
    table = _table(world, tmp_path_factory.mktemp("first"))
    refiner = Refiner(_config(world, table))
    before = lt.read_labels(table)
    result = refine.refine_round(refiner, refine.read_predictions(world["predictions"]))
    return {"refiner": refiner, "table": table, "before": before, "after": lt.read_labels(table), "result": result}


def _without_timings(labels: pa.Table) -> pa.Table:
    return labels.drop_columns(["fit_seconds"])


# --------------------------------------------------------------------------------------- decisions
def test_a_refined_label_is_judged_by_its_own_rules_not_the_conversions():
    """Better reprojection (by the margin), max|β| < 2, enough keypoints, the 3D-safe rule: each can refuse;
    the stored label's own verdict (conversion's maxPVE) does not, so a filtered sample can regain a label."""
    decision = Decision(
        old_err=np.array([1.0, 1.0, 1.0, 1.0, np.nan, 1.0, 1.0, 1.0]),
        new_err=np.array([0.5, 1.5, 0.5, 0.5, 0.1, np.nan, 0.5, 0.95]),
        betas_ok=np.array([True, True, False, True, True, True, True, True]),
        keypoints_ok=np.array([True, True, True, False, True, True, True, True]),
        safe_3d=np.array([True, True, True, True, True, True, False, True]),
        passed_old=np.array([False, True, True, True, False, False, True, True]),
    )
    assert decision.replace.tolist() == [True, False, False, False, False, False, False, True]
    assert replace(decision, min_improvement=0.1).replace.tolist() == [True] + [False] * 7
    summary = decision.summary()
    counts = ("improved", "replaced", "rejected_betas", "rejected_keypoints", "rejected_3d", "regained")
    assert tuple(summary[name] for name in counts) == (5, 2, 1, 1, 1, 1)
    assert summary["passed_after"] == 6


def test_latest_predictions_are_picked_by_step_and_fingerprinted():
    table = pa.table({"sample_id": ["a", "b", "c"], "dataset": ["d"] * 3, "step": [5, 9, 7], "q": [[0.0]] * 3})
    table = table.append_column("betas", pa.array([[1.0], [2.0], [3.0]]))
    latest = refine.select_latest(table, 2)
    assert latest["sample_id"].to_pylist() == ["b", "c"]
    assert refine.fingerprint(latest) == refine.fingerprint(refine.select_latest(table.take([2, 1, 0]), 2))
    assert refine.fingerprint(latest) != refine.fingerprint(refine.select_latest(table, 3))


# ------------------------------------------------------------------------------------------ rounds
@pytest.mark.slow
def test_round_replaces_only_better_labels_and_scores_them_like_conversion(first_round):
    result, before, after = first_round["result"], first_round["before"], first_round["after"]
    assert result.status == "committed" and result.round == 1
    stats = result.stats
    assert json.loads(open(result.stats_path).read()) == stats
    assert stats["stored_err_mismatch"] == 0  # round 0's kp2d_err is this round's procedure
    assert stats["all"]["replaced"] == result.commit["updated"] > 0 and result.commit["inserted"] == 0
    assert stats["per_dataset"]["synth"] == stats["all"]

    old, new = before.to_pylist(), after.to_pylist()
    assert [row["sample_id"] for row in old] == [row["sample_id"] for row in new]
    changed = [(o, n) for o, n in zip(old, new, strict=True) if n["round"] == 1]
    assert len(changed) == stats["all"]["replaced"]
    for o, n in zip(old, new, strict=True):
        assert n["kp2d_err"] <= o["kp2d_err"]  # never worse
        if n["round"] == 1:
            assert n["kp2d_err"] < o["kp2d_err"] and max(abs(b) for b in n["betas"]) < 2.0
            assert n["passed"] and n["pve_ok"] and n["betas_ok"] and n["keypoints_ok"]  # its own verdict
            assert n["source"] == "skelify-round-1" and n["chunk_id"] == o["chunk_id"]
        else:
            assert n == o
    # The stored error of a new label is the scoring procedure's, as for the old ones.
    refiner = first_round["refiner"]
    ids = [n["sample_id"] for _, n in changed]
    keypoints, _ = refiner.keypoints_and_smpl(ids, ["synth"] * len(ids))
    keypoints[..., 2] = np.where(keypoints[..., 2] >= 0.3, keypoints[..., 2], 0.0)
    q, betas = (torch.tensor([n[name] for _, n in changed]) for name in ("q", "betas"))
    _, recomputed = refiner.skelify.score(q, betas, torch.as_tensor(keypoints))
    assert np.allclose(recomputed.numpy(), [n["kp2d_err"] for _, n in changed], rtol=1e-5)


@pytest.mark.slow
def test_a_sample_filtered_at_conversion_regains_a_label_that_the_export_trains_on(world, tmp_path):
    """A label the conversion filtered out (a wrong SMPL fit: 1 m maxPVE, the pose off by 0.4 rad) is replaced
    by a refined one that reprojects better; the refined row passes by its own verdict and the export gives
    the sample its pose again (has_pose = 1, the refined q)."""
    labels = lt.read_labels(_table(world, tmp_path, "round0")).to_pylist()
    target = labels[0]["sample_id"]
    rows = [{k: v for k, v in row.items() if k not in lt.COMMIT_COLUMNS} for row in labels]
    rows[0] |= {"q": [value + 0.4 for value in rows[0]["q"]], "kp2d_err": 1.0, "pve_max": 1.0}
    rows[0] |= {"pve_ok": False, "passed": False}
    table = str(tmp_path / "filtered")
    lt.commit_chunk(table, lt.validate_rows(pa.Table.from_pylist(rows, schema=lt.INPUT_SCHEMA)), "test")
    shards = {"synth": str(world["root"] / "synth")}
    before = _exported(export.export_shards(table, shards, tmp_path / "before").index)
    assert before[target]["has_pose"] == 0

    result = refine.refine_round(Refiner(_config(world, table)), refine.read_predictions(world["predictions"]))
    row = next(r for r in lt.read_labels(table).to_pylist() if r["sample_id"] == target)
    assert row["round"] == 1 and row["passed"] and row["pve_max"] > 0.06  # kept by its verdict, not by maxPVE
    assert result.stats["all"]["regained"] >= 1
    after = _exported(export.export_shards(table, shards, tmp_path / "after").index)
    assert after[target]["has_pose"] == 1 and np.allclose(after[target]["q"], row["q"], atol=1e-6)


def _exported(index: str) -> dict[str, dict]:
    return {sample["sample_id"]: sample for sample in training_samples.iter_training_samples(index)}


@pytest.mark.slow
def test_one_round_brings_corrupted_pseudo_gt_closer_to_the_truth(first_round, world):
    """Where the SMPL pseudo-GT was corrupted, the refined labels are closer to the true bodies. Clean labels
    that a round replaces fit the noisy 2D keypoints better but can move away in 3D (depth ambiguity, β
    pulled to 0 by the 5² shape prior), so the mean over all samples is printed, not asserted."""
    skel = first_round["refiner"].skelify.skel
    before = label_errors(first_round["before"], world["truth"], skel)
    after = label_errors(first_round["after"], world["truth"], skel)
    corrupted = np.array(before.corruption) != "clean"
    replaced = np.array([row["round"] == 1 for row in first_round["after"].to_pylist()])
    print(
        f"\nmean 3D joint error of the labels, all {len(corrupted)}: {before.joint_error_mm.mean():.1f} -> "
        f"{after.joint_error_mm.mean():.1f} mm; corrupted {corrupted.sum()}: "
        f"{before.joint_error_mm[corrupted].mean():.1f} -> {after.joint_error_mm[corrupted].mean():.1f} mm"
    )
    assert (corrupted & replaced).any()
    assert after.joint_error_mm[corrupted].mean() < before.joint_error_mm[corrupted].mean()


@pytest.mark.slow
def test_a_second_identical_round_changes_nothing(first_round, world, tmp_path):
    table = str(tmp_path / "labels")
    shutil.copytree(first_round["table"], table)
    shutil.copytree(refine.stats_path(first_round["table"], 1).parent, refine.stats_path(table, 1).parent)
    refiner = Refiner(_config(world, table))
    predictions = refine.read_predictions(world["predictions"])

    again = refine.refine_round(refiner, predictions)  # the same predictions: recognised as done
    assert again.status == "skipped" and again.round == 1
    forced = refine.refine_round(refiner, predictions, round=2)  # run anyway: nothing is better than itself
    assert forced.status == "committed" and forced.commit["updated"] == 0 and forced.stats["all"]["replaced"] == 0
    assert lt.read_labels(table).equals(first_round["after"])
    assert refine.refine_round(refiner, predictions, round=2).status == "skipped"
    assert [entry["round"] for entry in lt.history(table)].count(2) == 1


@pytest.mark.slow
def test_a_killed_round_reruns_to_the_same_round_committed_once(first_round, world, tmp_path, monkeypatch):
    table = _table(world, tmp_path)
    refiner = Refiner(_config(world, table))
    predictions = refine.read_predictions(world["predictions"])

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr(lt, "commit_round", killed)
    with pytest.raises(KeyboardInterrupt):
        refine.refine_round(refiner, predictions)
    assert refine.latest_round(table) == 0 and refine.stats_path(table, 1).is_file()
    monkeypatch.undo()

    written = []
    real_write = refine._write_json

    def killed_after_commit(path, data):
        written.append(path)
        if len(written) == 2:  # the statistics' second write comes right after the commit
            raise KeyboardInterrupt("killed after the commit")
        real_write(path, data)

    monkeypatch.setattr(refine, "_write_json", killed_after_commit)
    with pytest.raises(KeyboardInterrupt):
        refine.refine_round(refiner, predictions)
    monkeypatch.undo()
    resumed = refine.refine_round(refiner, predictions)
    assert resumed.status == "skipped" and resumed.round == 1
    assert [entry["round"] for entry in lt.history(table)].count(1) == 1
    assert _without_timings(lt.read_labels(table)).equals(_without_timings(first_round["after"]))


def test_cli_refine_options_are_the_flow_config_and_its_defaults_the_library_ones():
    from hsmr_data.options import options_from_args

    args = cli.build_parser().parse_args(["refine"])
    options = options_from_args(RefineOptions, args)
    assert options == RefineOptions()
    config = options.config()
    library = RefineConfig("table", {})
    assert (config.latest, config.max_abs_beta) == (18_000, 2.0)  # the paper's M and β
    assert (config.min_improvement, config.max_joint_shift_mm) == (library.min_improvement, library.max_joint_shift_mm)
    assert config.skelify.stages == library.skelify.stages and config.skelify.max_iter == 20
    argv = ["refine", "--latest", "5", "--min-improvement", "0.5", "--max-joint-shift-mm", "40", "--steps", "2"]
    config = options_from_args(RefineOptions, cli.build_parser().parse_args(argv)).config()
    assert (config.latest, config.min_improvement, config.max_joint_shift_mm) == (5, 0.5, 40.0)
    assert config.skelify.stages[0].steps == 2


def test_cli_refine_says_where_predictions_come_from(tmp_path, capsys):
    assert cli.main(["refine", "--predictions", str(tmp_path / "none.parquet")]) == 2
    assert "a training run writes predictions.parquet" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_refine_commits_a_round(world, tmp_path, capsys):
    table = _table(world, tmp_path)
    arguments = ["refine", "--predictions", world["predictions"], "--table", table, "--models", world["models"]]
    arguments += ["--dataset-dir", str(world["root"] / "synth"), "--device", "cpu", "--steps", "1", "--max-iter", "5"]
    assert cli.main(arguments) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["round"] == 1 and printed["status"] == "committed"
    assert refine.latest_round(table) == 1


# ---------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_training_refines_and_reads_the_updated_labels(world, model_paths, tmp_path):
    table = _table(world, tmp_path)
    index = export.export_shards(table, {"synth": str(world["root"] / "synth")}, tmp_path / "shards", maxcount=4).index
    config = TrainConfig(indexes=(index,), out_dir=str(tmp_path / "run"), models_root=world["models"], steps=4,
                         batch_size=4, checkpoint_every=4, log_every=2)  # fmt: skip
    trainer = Trainer(config)
    refiner = Refiner(_config(world, table, latest=4))
    commits = []
    callback = RefineCallback(trainer, refiner, warmup=1, every=2, on_commit=commits.append)
    trainer.run(on_step=callback)
    assert commits == callback.results  # the hook (a dashboard update in the flows) saw the committed round
    assert [result.round for result in callback.results] == [1]  # step 3 = warm-up 1 + 2
    assert callback.results[0].stats["predictions"] == 4
    assert refine.latest_round(table) == 1

    # A label replaced by a round reaches the batches without a new export, the mirrored label too.
    target, better = _replace_first_label(table, round=2)
    callback.refresh()
    version = lt.create_or_open(table).version()
    unaugmented = TrainingBatches(trainer.batches.datasets, trainer.batches.sampler, AugmentConfig.off(),
                                  overrides=trainer.batches.overrides)  # fmt: skip
    batch = next(b for b in map(unaugmented.__getitem__, range(50)) if _slot_of(b, target) is not None)
    assert batch["labels_version"] == version
    slot = _slot_of(batch, target)
    assert np.allclose(batch["q"][slot].numpy(), better["q"], atol=1e-6)
    assert batch["has_pose"][slot] == float(better["passed"])
    mirrored = TrainingBatches(unaugmented.datasets, unaugmented.sampler, replace(AugmentConfig.off(), flip_p=1.0),
                               overrides=trainer.batches.overrides)[batch["step"]]  # fmt: skip
    assert np.allclose(mirrored["q"][slot].numpy(), flip_q(np.array([better["q"]]))[0], atol=1e-6)


def _replace_first_label(table: str, round: int) -> tuple[str, dict]:
    """Commit a refinement round that gives the first sample a new q (a better error): its id and the row."""
    labels = lt.read_labels(table).to_pylist()
    better = {**{k: v for k, v in labels[0].items() if k not in lt.COMMIT_COLUMNS}, "kp2d_err": 0.0}
    better["q"] = [value + 0.01 for value in better["q"]]
    lt.commit_round(table, lt.validate_rows(pa.Table.from_pylist([better], schema=lt.INPUT_SCHEMA)), round)
    return labels[0]["sample_id"], better


def _slot_of(batch: dict, sample_id: str) -> int | None:
    return next((i for i, info in enumerate(batch["meta"]) if info["sample_id"] == sample_id), None)


@pytest.mark.slow
def test_a_loader_worker_reads_a_label_replaced_after_it_started(world, tmp_path):
    table = _table(world, tmp_path)
    index = export.export_shards(table, {"synth": str(world["root"] / "synth")}, tmp_path / "shards", maxcount=4).index
    dataset = ShardDataset.from_index(index)
    announcement = tmp_path / "run" / RefineCallback.ANNOUNCEMENT
    TableLabels.announce(announcement, table, lt.create_or_open(table).version())
    batches = TrainingBatches([dataset], MixedSampler([len(dataset)], [1.0], 64), AugmentConfig.off(),
                              overrides=TableLabels(announcement))  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(40), num_workers=1,
                                         multiprocessing_context="spawn", prefetch_factor=2)  # fmt: skip
    steps = iter(loader)
    first = next(steps)  # the worker is running and has read the table as announced
    assert first["labels_version"] == lt.create_or_open(table).version()

    target, better = _replace_first_label(table, round=1)
    replaced_version = lt.create_or_open(table).version()
    TableLabels.announce(announcement, table, replaced_version)
    later = [batch for batch in steps if batch["labels_version"] == replaced_version]
    assert len(later) >= 35  # all but the batches the worker had built ahead before the announcement
    slot = _slot_of(later[0], target)
    assert np.allclose(later[0]["q"][slot].numpy(), better["q"], atol=1e-6)


# -------------------------------------------------------------------------------------------- flow
@pytest.mark.slow
def test_flow_runs_a_round_and_publishes_its_statistics(prefect_api, world, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    table = _table(world, tmp_path)
    parameters = {
        "predictions": world["predictions"],
        "table_uri": table,
        "dataset_dir": str(world["root"] / "synth"),
        "models_root": world["models"],
        "device": "cpu",
        "batch_size": 8,
        "steps": 3,
        "max_iter": 10,
    }
    state = refine_round_flow(RefineOptions(**parameters), return_state=True)
    assert state.is_completed(), state
    report = state.result()
    assert report["round"] == 1 and report["status"] == "committed"
    assert json.loads(open(report["stats_path"]).read())["round"] == 1
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_key = {artifact.key: artifact for artifact in artifacts}
    page = Path(table + "-dashboard.html")  # rewritten after the committed round, linked from the run
    link = by_key.pop(artifact_key("dashboard-link", table))
    assert page.resolve().as_uri() in link.data and 'data-round="1"' in page.read_text()
    by_type = {artifact.type: artifact for artifact in by_key.values()}
    assert set(by_type) == {"table", "markdown", "progress"}  # the round's progress reached 100 %
    assert by_type["progress"].data == 100.0
    assert by_type["table"].key == "refine-labels-round-stats"
    assert "replaced" in by_type["markdown"].data
    assert (
        refine_round_flow(RefineOptions(**parameters))["status"] == "skipped"
    )  # a rerun: the same predictions are done
