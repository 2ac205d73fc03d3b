"""`hsmr`: the command line. Each step's command calls its library front door, `run(config)`, the same one
its Prefect flow calls, with options derived from the config dataclass (`hsmr_data.options`); paths default
to the storage layout (`hsmr_data.layout`). See docs/ARCHITECTURE.md.

hsmr models synth --out storage/models      write the synthetic SMPL/SKEL stand-ins
hsmr models check --root DIR                load and validate model files (real or synthetic); names
                                            every missing file and where it comes from
hsmr models keypoints --joints J_regressor_SKEL_mix_MALE.pkl --extra SMPL_to_J19.pkl --out DIR
                                            HSMR's 44-keypoint regressor: DIR/keypoint_regressor_44.npz
hsmr data synth --n N --out DIR [--seed S] [--hard-fraction F] [--val-fraction V] [--test-fraction T]
                                            the synthetic dataset (tars, ground truth, contact sheet); the
                                            training people in DIR, held-out ones in DIR/val and DIR/test
hsmr convert (--dataset NAME=SPEC ... | --dataset-dir DIR) --table URI [--models storage/models] [--device auto]
                                            SMPL pseudo-GT → SKEL labels in the label table (no Prefect;
                                            the same steps as the convert-smpl-to-skel flow); SPEC: a brace
                                            pattern, a folder, file:, pipe:CMD, http(s) or an fsspec URL
hsmr eval --dataset-dir DIR [--table URI] [--predictions P] [--out storage/reports/eval]
                                            every label source (and a network's predictions) against the
                                            synthetic world's truth: the paper's Tables 1-4 as JSON + markdown
hsmr dashboard --table URI [--dataset-dir DIR] [--out storage/reports/label_dashboard.html]
                                            the label-quality page (no Prefect; the label-dashboard flow's steps)
hsmr train [--index INDEX.json ...] [--out RUN] [--recipe cpu|paper] [--steps N] [--nproc N]
                                            the HSMR network on exported shards (resumes in RUN)
hsmr refine [--predictions RUN/predictions.parquet] [--table URI] [--dataset-dir DIR] [--round K] [--latest M]
                                            one SKELify refinement round of the label table (no Prefect; the
                                            same steps as the refine-round flow)
hsmr predict --checkpoint RUN --dataset NAME=SPEC [--out predictions.parquet]
hsmr predict --checkpoint RUN --images DIR --boxes boxes.json [--overlays DIR]
                                            a trained network on people outside training (tars, or images
                                            with person boxes): the training predictions' columns
hsmr study refine [--people N] [--work DIR] [--out study_refine.json]
                                            refiner variants on a synthetic world against its truth: the 3D
                                            label error before and after a round, per source of predictions
hsmr curves --run LABEL=RUN [--run ...] --out curves.png
                                            the learning curves of training runs, one panel per loss term
hsmr demo --models storage/models --out storage/demo
hsmr data motion --out DIR [--frames T]     synthetic AMASS-style motion sequences with their true SKEL parameters
hsmr convert-seq --input FILE_OR_DIR --out DIR [--batch-size N] [--overlap K] [--smoothness W]
                                            SMPL motion sequences → SKEL sequences (.npz per sequence; resumable)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

from hsmr_data.layout import DEFAULT as STORAGE
from hsmr_data.options import add_options, options_from_args
from hsmr_model.model_files import BodyModelPaths, ModelFileError


def _paths(args: argparse.Namespace) -> BodyModelPaths:
    paths = BodyModelPaths.from_root(args.root)
    overrides = {
        "smpl": args.smpl,
        "skel_male": args.skel_male,
        "skel_female": args.skel_female,
        "keypoint_regressor": args.keypoints,
    }
    return replace(paths, **{k: Path(v) for k, v in overrides.items() if v})


def _synth(args: argparse.Namespace) -> int:
    from hsmr_data.synthetic.body_models import write_synthetic_models

    paths = write_synthetic_models(args.out, seed=args.seed)
    for name, path in asdict(paths).items():
        print(f"{name:20s} {path}")
    return 0


def _keypoints(args: argparse.Namespace) -> int:
    from hsmr_model.hsmr_keypoints import build_keypoint_regressor

    out = Path(args.out) / "keypoint_regressor_44.npz"
    regressor = build_keypoint_regressor(args.joints, args.extra, out)
    summary = {"written": str(out), "shape": list(regressor.shape), "nonzeros": int(regressor.nnz)}
    print(json.dumps(summary, indent=2))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from hsmr_data.synthetic import world

    summary = world.run(options_from_args(world.SynthOptions, args))
    print(json.dumps(asdict(summary), indent=2))
    return 0


def _check(args: argparse.Namespace) -> int:
    from hsmr_data.model_check import check_models, missing_files

    paths = _paths(args)
    missing = missing_files(paths)
    for path, source in missing:
        print(f"missing: {path}\n  {source}", file=sys.stderr)
    if missing:
        return 2
    report = check_models(paths)
    print(json.dumps(report, indent=2))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from hsmr_data import conversion

    try:
        options = options_from_args(conversion.ConvertOptions, args)
        options.config()  # the datasets named well, before the models load
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    print(json.dumps(asdict(conversion.run(options)), indent=2))
    return 0


def _convert_seq(args: argparse.Namespace) -> int:
    from hsmr_data import sequences

    report = sequences.run(
        options_from_args(sequences.SequenceOptions, args), on_sequence=lambda o: print(json.dumps(asdict(o)))
    )
    return 1 if report.sequences["quarantined"] else 0


def _data_motion(args: argparse.Namespace) -> int:
    from hsmr_data.synthetic.body_models import ensure_synthetic_models
    from hsmr_data.synthetic.motion import write_motion_sequences

    for path in write_motion_sequences(ensure_synthetic_models(args.models), args.out, args.frames, args.seed):
        print(path)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from hsmr_data import evaluate

    result = evaluate.run(options_from_args(evaluate.EvalConfig, args))
    print(evaluate.to_markdown(result.report))
    print(f"written: {result.json_path}, {result.markdown_path}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from hsmr_data import dashboard

    page, summary = dashboard.run(
        options_from_args(dashboard.DashboardConfig, args, dashboard.DEMO, dashboard.WRITER_FIELDS)
    )
    print(dashboard.summary_markdown(summary))
    print(f"written: {page}")
    return 0


def _refine(args: argparse.Namespace) -> int:
    from hsmr_data import refine

    result = refine.run(options_from_args(refine.RefineOptions, args))
    print(json.dumps(asdict(result), indent=2))
    return 0


def _study_refine(args: argparse.Namespace) -> int:
    from hsmr_data.refine_study import StudyConfig, to_markdown, write_study

    config = StudyConfig(args.models, args.work, people=args.people, network_steps=args.network_steps)
    result = write_study(config, args.out)
    print(to_markdown(result))
    print(f"written: {args.out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from hsmr_data import export

    summary = export.run(options_from_args(export.ExportConfig, args))
    print(json.dumps(asdict(summary), indent=2, default=str))
    return 0


def _train(args: argparse.Namespace) -> int:
    from hsmr_data import train_run

    result = train_run.run_step(options_from_args(train_run.TrainOptions, args))
    print(json.dumps(result, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from hsmr_data import predict

    config = options_from_args(predict.PredictConfig, args)
    try:
        predict.check_inputs(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(predict.run(config)), indent=2))
    return 0


def _curves(args: argparse.Namespace) -> int:
    from hsmr_data.curves import plot_curves

    runs = dict(item.split("=", 1) if "=" in item else (Path(item).name, item) for item in args.runs)
    print(f"written: {plot_curves(runs, args.out)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from hsmr_data.demo import run_demo

    summary = run_demo(BodyModelPaths.from_root(args.models), Path(args.out), seed=args.seed)
    print(json.dumps(summary, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from hsmr_data.conversion import ConvertOptions
    from hsmr_data.dashboard import DEMO as DEMO_DASHBOARD
    from hsmr_data.dashboard import WRITER_FIELDS, DashboardConfig
    from hsmr_data.evaluate import EvalConfig
    from hsmr_data.export import ExportConfig
    from hsmr_data.predict import PredictConfig
    from hsmr_data.refine import RefineOptions
    from hsmr_data.sequences import SequenceOptions
    from hsmr_data.synthetic.world import SynthOptions
    from hsmr_data.train_run import TrainOptions

    parser = argparse.ArgumentParser(prog="hsmr", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="body-model files").add_subparsers(dest="action", required=True)
    synth = models.add_parser("synth", help="write the synthetic SMPL and SKEL stand-ins in the official formats")
    synth.add_argument("--out", required=True, help="folder to write smpl/ and skel/ into")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_synth)

    check = models.add_parser("check", help="load and validate model files, print a summary")
    check.add_argument("--root", default=STORAGE.models, help="folder in the standard layout")
    check.add_argument("--smpl", help="SMPL_NEUTRAL.pkl or .npz (overrides the layout)")
    check.add_argument("--skel-male", help="skel_male.pkl")
    check.add_argument("--skel-female", help="skel_female.pkl")
    check.add_argument("--keypoints", help="keypoint_regressor_44.npz")
    check.set_defaults(run=_check)

    keypoints = models.add_parser("keypoints", help="compose HSMR's (44, 6890) keypoint regressor from its pickles")
    keypoints.add_argument("--joints", required=True, help="J_regressor_SKEL_mix_MALE.pkl (HSMR's data inputs)")
    keypoints.add_argument("--extra", required=True, help="SMPL_to_J19.pkl (HMR2.0's / HSMR's data)")
    keypoints.add_argument("--out", required=True, help="folder for keypoint_regressor_44.npz (<models>/smpl)")
    keypoints.set_defaults(run=_keypoints)

    data = commands.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    data_synth = data.add_parser("synth", help="write the synthetic dataset: HMR2.0-style tars plus the hidden truth")
    add_options(data_synth, SynthOptions)
    data_synth.set_defaults(run=_data_synth)

    convert = commands.add_parser("convert", help="convert SMPL pseudo-GT shards into SKEL labels (round 0)")
    add_options(convert, ConvertOptions)
    convert.set_defaults(run=_convert)

    convert_seq = commands.add_parser("convert-seq", help="SMPL motion sequences (AMASS-style .npz) to SKEL sequences")
    add_options(convert_seq, SequenceOptions)
    convert_seq.set_defaults(run=_convert_seq)

    data_motion = data.add_parser("motion", help="write the synthetic motion sequences (AMASS-style) and their truth")
    data_motion.add_argument("--out", required=True, help="output folder (sequences/, truth/)")
    data_motion.add_argument("--frames", type=int, default=150, help="frames per sequence (30 per second)")
    data_motion.add_argument("--seed", type=int, default=0)
    data_motion.add_argument("--models", default=STORAGE.models, help="body models (synthetic if absent)")
    data_motion.set_defaults(run=_data_motion)

    evaluation = commands.add_parser("eval", help="score the labels (and predictions) against the synthetic truth")
    add_options(evaluation, EvalConfig)
    evaluation.set_defaults(run=_eval)

    dashboard = commands.add_parser("dashboard", help="write the label-quality HTML page of a label table")
    add_options(dashboard, DashboardConfig, skip=WRITER_FIELDS, defaults=DEMO_DASHBOARD)
    dashboard.set_defaults(run=_dashboard)

    refine = commands.add_parser("refine", help="one SKELify refinement round on a training run's predictions")
    add_options(refine, RefineOptions)
    refine.set_defaults(run=_refine)

    export = commands.add_parser("export", help="training shards (WebDataset + wids index) from a label table")
    add_options(export, ExportConfig)
    export.set_defaults(run=_export)

    train = commands.add_parser("train", help="train the HSMR network on exported shards (resumes in --out)")
    add_options(train, TrainOptions)
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="run a trained network on HMR2.0-style tars or on images with boxes")
    add_options(predict, PredictConfig)
    predict.set_defaults(run=_predict)

    curves = commands.add_parser("curves", help="learning curves of training runs (metrics.jsonl) as a PNG")
    curves.add_argument(
        "--run", dest="runs", action="append", required=True, help="[LABEL=]RUN folder or metrics.jsonl (repeatable)"
    )
    curves.add_argument("--out", default=STORAGE.report("learning_curves.png"))
    curves.set_defaults(run=_curves)

    study = commands.add_parser("study", help="studies on the synthetic world").add_subparsers(
        dest="action", required=True
    )
    study_refine = study.add_parser("refine", help="refiner variants against the truth: 3D label error per case")
    study_refine.add_argument("--models", default=STORAGE.models, help="body models (the synthetic ones)")
    study_refine.add_argument("--work", default=STORAGE.study("refine"), help="the world, its table, the network")
    study_refine.add_argument("--people", type=int, default=256)
    study_refine.add_argument("--network-steps", type=int, default=300, help="training of the network case's network")
    study_refine.add_argument("--out", default=STORAGE.report("study_refine.json"), help="JSON; the table goes to .md")
    study_refine.set_defaults(run=_study_refine)

    demo = commands.add_parser("demo", help="load the models, pose bodies, write meshes and renders")
    demo.add_argument("--models", default=STORAGE.models)
    demo.add_argument("--out", default=STORAGE.demo)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ModelFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def console() -> None:
    """The `hsmr` executable: `main`, then leave without the interpreter's teardown.

    A command's work is done, flushed and committed when `main` returns. What follows is the teardown
    of the native libraries a command loads (torch's thread pools among them), which now and then
    aborts with "terminate called without an active exception" (SIGABRT, seen in CI after a
    conversion that had committed every chunk), turning a finished run into a failed one. So flush and
    exit directly; `main` stays a plain function for in-process callers."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    console()
