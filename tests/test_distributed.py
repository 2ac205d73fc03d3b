"""DDP under torchrun on the CPU (gloo): two processes train like one at the same global batch, and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hsmr_data import cli, train_run
from hsmr_data.distributed import ProcessGroup
from hsmr_data.train_run import TrainingRun
from hsmr_data.training import CHECKPOINT
from tests.test_training import _config, index, labelled  # noqa: F401  (module fixtures)

STEPS, GLOBAL_BATCH = 4, 4


def test_ranks_take_contiguous_even_shares_of_the_global_batch():
    shares = [ProcessGroup(rank=r, world_size=2).slice(6) for r in (0, 1)]
    assert [list(range(6))[s] for s in shares] == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match="does not split evenly"):
        ProcessGroup(rank=0, world_size=4).slice(6)


def test_a_run_spec_survives_its_json_file(index, model_paths, tmp_path):  # noqa: F811
    from hsmr_data.refine import RefineConfig
    from hsmr_data.train_run import InTrainingRefinement, from_dict, to_dict

    spec = TrainingRun(
        _config(index, model_paths, tmp_path), InTrainingRefinement(RefineConfig("t", {"synth": "d"}), 3, 2)
    )
    assert from_dict(TrainingRun, json.loads(json.dumps(to_dict(spec)))) == spec


def _losses(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT, weights_only=True)["model"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_and_resume(index, model_paths, tmp_path):  # noqa: F811
    config = _config(index, model_paths, tmp_path / "one", steps=STEPS, batch_size=GLOBAL_BATCH, device="cpu")
    one = train_run.run(TrainingRun(config))

    # The same run in two processes, launched through the CLI's front door, stopped half-way and resumed.
    two_dir = tmp_path / "two"
    arguments = ["train", "--index", index, "--out", str(two_dir), "--models", config.models_root, "--device", "cpu"]
    arguments += ["--batch-size", str(GLOBAL_BATCH), "--checkpoint-every", "2", "--nproc", "2"]
    assert cli.main([*arguments, "--steps", str(STEPS // 2)]) == 0
    assert json.loads((two_dir / train_run.RESULT_FILE).read_text())["step"] == STEPS // 2
    assert cli.main([*arguments, "--steps", str(STEPS)]) == 0
    two = json.loads((two_dir / train_run.RESULT_FILE).read_text())
    assert two["resumed_from"] == STEPS // 2 and two["step"] == STEPS

    # Same global batch, gradients of the same loss: the loss curves and the parameters agree to float
    # noise (the reductions run in another order across two processes).
    one_losses = {record["step"]: record for record in _losses(tmp_path / "one")}  # logged every step
    two_losses = _losses(two_dir)  # where each part ended, the mean over its steps: steps 1-2 and 3-4
    assert [record["step"] for record in two_losses] == [STEPS // 2, STEPS]
    for record in two_losses:
        steps = range(record["step"] - STEPS // 2 + 1, record["step"] + 1)
        for term in ("loss", "kp3d", "kp2d", "betas", "grad_norm", "lr"):
            one_mean = sum(one_losses[step][term] for step in steps) / len(steps)
            assert record[term] == pytest.approx(one_mean, rel=1e-4), (term, record)
    one_parameters, two_parameters = _parameters(tmp_path / "one"), _parameters(two_dir)
    worst = max(float((one_parameters[k] - two_parameters[k]).abs().max()) for k in one_parameters)
    assert worst < 1e-4
    assert one["step"] == two["step"]
    # Every sample either process saw is in the one predictions file the main process wrote.
    assert Path(two["predictions"]).exists()


@pytest.mark.slow
def test_the_train_flow_launches_two_processes_and_tracks_them(prefect_api, index, model_paths, tmp_path):  # noqa: F811
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.train import train_hsmr
    from hsmr_data.train_run import TrainOptions

    models = str(model_paths.smpl.parent.parent)
    options = TrainOptions(
        indexes=(index,), out_dir=str(tmp_path / "run"), models_root=models, steps=2, batch_size=2, device="cpu",
        nproc=2,
    )  # fmt: skip
    state = train_hsmr(options, return_state=True)
    assert state.is_completed(), state
    assert state.result()["step"] == 2 and (tmp_path / "run" / CHECKPOINT).is_file()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert by_type["progress"].data == 100.0  # followed from the processes' metrics file
    assert {row["step"] for row in json.loads(by_type["table"].data)} == {2}
