"""Serve a deployment named "local" of every flow, from one process, against a Prefect server.

    make server   # one shell: the API and UI at http://127.0.0.1:4200
    make serve    # another: this module, with PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect deployment run convert-smpl-to-skel/local \\
        -p config='{"dataset_dir": "storage/datasets/synth", "table_uri": "storage/labels/synth"}'
    prefect deployment run label-dashboard/local    # the demo's table; -p config='{"table_uri": ...}' for another
    prefect deployment run convert-sequences/local \
        -p config='{"input_path": "storage/datasets/motion/sequences", "out_dir": "storage/skel_sequences"}'

Flow runs execute in subprocesses started from this process's working directory, so relative paths
in parameters are relative to where `make serve` runs (the repository root).
"""

from __future__ import annotations

from prefect import Flow, serve

from flows.convert import convert_smpl_to_skel
from flows.dashboard import label_dashboard
from flows.export import export_shards
from flows.pipeline import pipeline
from flows.predict import predict_flow
from flows.refine import refine_round_flow
from flows.sequences import convert_sequences
from flows.train import train_hsmr

DEPLOYMENT_NAME = "local"

# Each pipeline step joins this list as its flow lands.
FLOWS: list[Flow] = [
    convert_smpl_to_skel,
    export_shards,
    train_hsmr,
    refine_round_flow,
    label_dashboard,
    pipeline,
    predict_flow,
    convert_sequences,
]


def deployments():
    return [pipeline_flow.to_deployment(name=DEPLOYMENT_NAME) for pipeline_flow in FLOWS]


if __name__ == "__main__":
    from flows.settings import local_prefect_settings

    with local_prefect_settings():
        serve(*deployments())
