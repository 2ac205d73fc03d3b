"""`hsmr`: the command line for the steps that have no Prefect flow yet.

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
hsmr refine [--predictions RUN/predictions.parquet] [--table URI] [--dataset-dir DIR] [--round K] [--latest M]
                                            one SKELify refinement round of the label table (no Prefect; the
                                            same steps as the refine-round flow)
hsmr predict --checkpoint RUN --dataset NAME=SPEC [--out predictions.parquet]
hsmr predict --checkpoint RUN --images DIR --boxes boxes.json [--overlays DIR]
                                            a trained network on people outside training (tars, or images
                                            with person boxes): the training predictions' columns
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
import sys
from dataclasses import asdict, replace
from pathlib import Path

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
    from hsmr_data.synthetic.body_models import ensure_synthetic_models
    from hsmr_data.synthetic.world import SynthConfig, generate_dataset

    config = SynthConfig(
        count=args.n,
        seed=args.seed,
        hard_fraction=args.hard_fraction,
        dataset=args.dataset,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
    )
    summary = generate_dataset(ensure_synthetic_models(args.models), Path(args.out), config)
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
    from collections import Counter

    from tqdm import tqdm

    from hsmr_data import conversion, label_table
    from hsmr_data.conversion import ConvertConfig
    from hsmr_data.datasets import parse_datasets
    from hsmr_model.skel_fit import SkelFitConfig

    dataset_dir, datasets = dataset_arguments(args)
    config = ConvertConfig(
        dataset_dir=dataset_dir,
        table_uri=args.table,
        models_root=args.models,
        dataset=args.dataset_name,
        fit=SkelFitConfig(device=args.device, batch_size=args.batch_size),
        datasets=tuple(parse_datasets(datasets)),
        quarantine_root=args.quarantine,
    )
    with tqdm(total=len(conversion.list_chunks(config)), unit="chunk", desc="convert") as bar:
        outcomes = conversion.convert_dataset(config, on_chunk=lambda outcome: bar.update(1))
    statuses = Counter(outcome.status for outcome in outcomes)
    report = {
        "table_uri": config.table_uri,
        "chunks": {status: statuses[status] for status in ("committed", "skipped", "empty")},
        "quarantined": sum(outcome.quarantined for outcome in outcomes),
        "quarantined_by_dataset": conversion.quarantined_by_dataset(outcomes),
        "summary": conversion.summarize(label_table.read_labels(config.table_uri)),
    }
    print(json.dumps(report, indent=2))
    return 0


def _convert_seq(args: argparse.Namespace) -> int:
    from hsmr_data.sequences import SequenceConfig, SequenceConverter, convert_sequences
    from hsmr_model.skel_fit import SkelFitConfig

    config = SequenceConfig(
        batch_size=args.batch_size,
        overlap=args.overlap,
        smoothness=args.smoothness,
        fit=SkelFitConfig(device=args.device),
    )
    converter = SequenceConverter(BodyModelPaths.from_root(args.models), config)
    outcomes = convert_sequences(
        args.input, args.out, converter, lambda o: print(json.dumps(asdict(o))), args.table, args.dataset
    )
    return 1 if any(o.status == "quarantined" for o in outcomes) else 0


def _data_motion(args: argparse.Namespace) -> int:
    from hsmr_data.synthetic.body_models import ensure_synthetic_models
    from hsmr_data.synthetic.motion import write_motion_sequences

    for path in write_motion_sequences(ensure_synthetic_models(args.models), args.out, args.frames, args.seed):
        print(path)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from hsmr_data.evaluate import EvalConfig, evaluate, to_markdown, write_report

    config = EvalConfig(
        dataset_dir=args.dataset_dir,
        table_uri=args.table,
        models_root=args.models,
        predictions_path=args.predictions,
        truth_path=args.truth,
        dataset=args.dataset,
    )
    report = evaluate(config)
    json_path, md_path = write_report(report, args.out)
    print(to_markdown(report))
    print(f"written: {json_path}, {md_path}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from hsmr_data.dashboard import DashboardConfig, summary_markdown, write_dashboard

    config = DashboardConfig(
        table_uri=args.table,
        dataset_dir=args.dataset_dir or None,
        models_root=args.models,
        truth_path=args.truth,
        dataset=args.dataset,
        gallery_size=args.gallery_size,
    )
    page, summary = write_dashboard(config, args.out)
    print(summary_markdown(summary))
    print(f"written: {page}")
    return 0


def _refine(args: argparse.Namespace) -> int:
    from hsmr_data import refine
    from hsmr_model.skelify import SkelifyConfig

    stages = (replace(refine.DEFAULT_STAGES[0], steps=args.steps),)
    config = refine.RefineConfig(
        table_uri=args.table,
        dataset_dirs={args.dataset: args.dataset_dir},
        models_root=args.models,
        latest=args.latest,
        max_abs_beta=args.max_abs_beta,
        skelify=SkelifyConfig(stages, max_iter=args.max_iter, batch_size=args.batch_size, device=args.device),
    )
    if not Path(args.predictions).is_file():
        print(
            f"error: no predictions at {args.predictions}: a training run writes predictions.parquet", file=sys.stderr
        )
        return 2
    result = refine.refine_round(refine.Refiner(config), refine.read_predictions(args.predictions), args.round)
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
    from hsmr_data.datasets import parse_datasets
    from hsmr_data.export import export_hsmr_tars, export_shards

    datasets = {spec.name: spec.spec for spec in parse_datasets(args.dataset)}
    export = export_hsmr_tars if args.format == "hsmr" else export_shards
    summary = export(args.table, datasets, args.out, args.version, args.maxcount)
    print(json.dumps(asdict(summary), indent=2, default=str))
    return 0


def train_config(args: argparse.Namespace, indexes: list[str]):
    """The TrainConfig of `add_train_arguments`' options: the recipe's values, then those given on the line."""
    from hsmr_data.training import make_config

    return make_config(
        args.recipe,
        indexes=tuple(indexes),
        out_dir=args.out,
        weights=tuple(args.weight) if args.weight else None,
        models_root=args.models,
        device=args.device,
        size=args.size,
        pose_target=args.pose_target,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        checkpoint_every=args.checkpoint_every,
        loader_workers=args.loader_workers,
    )


def _train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hsmr_data import train_run

    config = train_config(args, args.index)
    spec = train_run.TrainingRun(config)
    with tqdm(total=config.steps, unit="step", desc="train") as bar:

        def on_log(record: dict) -> None:
            bar.update(record["step"] - bar.n)
            bar.set_postfix(loss=f"{record['loss']:.4f}")

        result = train_run.train(spec, args.nproc, on_log=on_log)
    print(json.dumps(result, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from hsmr_data import predict

    if bool(args.images) == bool(args.dataset) or (args.images and not args.boxes):
        print("error: give --dataset NAME=SPEC (repeatable), or --images DIR with --boxes boxes.json", file=sys.stderr)
        return 2
    predictor = predict.Predictor(predict.PredictConfig(args.checkpoint, args.models, args.batch_size, args.device))
    with tqdm(unit="person", desc=f"predict ({predictor.device})") as bar:
        if args.images:
            result = predict.predict_images(predictor, args.images, args.boxes, args.out, args.overlays, bar.update)
        else:
            result = predict.predict_dataset(predictor, args.dataset, args.out, bar.update)
    print(json.dumps(asdict(result), indent=2))
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


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset options of a conversion, shared by `hsmr convert` and `python -m flows.convert`."""
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=SPEC",
        help="a dataset (repeatable): SPEC is a brace pattern (/data/coco/{000000..000017}.tar), a folder, "
        "file:PATH, pipe:COMMAND, http(s):// or an fsspec URL (s3://, gs://, ...). "
        "A bare NAME names --dataset-dir instead (as before)",
    )
    parser.add_argument("--dataset-dir", help="a plain dataset folder holding shards/*.tar (named 'synth' by default)")
    parser.add_argument(
        "--quarantine", help="folder for the quarantine reports, one subfolder per dataset (default: see docs)"
    )


def dataset_arguments(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """(--dataset-dir, the NAME=SPEC datasets); sets `args.dataset_name`, the name of --dataset-dir."""
    names = [item for item in args.dataset if "=" not in item]
    if len(names) > 1 or (names and not args.dataset_dir):
        raise SystemExit("error: --dataset takes NAME=SPEC; a bare NAME only names --dataset-dir (once)")
    if not args.dataset_dir and not args.dataset:
        raise SystemExit("error: give --dataset NAME=SPEC (repeatable) or --dataset-dir DIR")
    args.dataset_name = names[0] if names else "synth"
    return args.dataset_dir, [item for item in args.dataset if "=" in item]


def add_train_arguments(parser: argparse.ArgumentParser, index_required: bool, default_out: str | None) -> None:
    """The training options, shared by `hsmr train` and `python -m flows.train`."""
    index_help = "index.json of an export (repeatable)" + ("" if index_required else "; default: the latest")
    parser.add_argument("--index", action="append", required=index_required, help=index_help)
    parser.add_argument("--weight", action="append", type=float, help="mixing weight per --index")
    out_help = "run folder: checkpoint, metrics.jsonl, predictions.parquet"
    parser.add_argument("--out", required=default_out is None, default=default_out, help=out_help)
    parser.add_argument("--models", default="storage/models")
    recipes = "named settings (hsmr_data.training.RECIPES): paper (ViT-B/H on a GPU), cpu (from scratch on a CPU)"
    parser.add_argument("--recipe", choices=("paper", "cpu"), help=recipes + "; the options below override it")
    parser.add_argument("--size", choices=("tiny", "small", "B", "H"), help="default: the recipe's, else tiny")
    parser.add_argument("--pose-target", choices=("88d", "euler"), help="default 88d")
    parser.add_argument("--steps", type=int, help="default 300")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's, else 16")
    parser.add_argument("--lr", type=float, help="default: the recipe's, else 1e-4")
    parser.add_argument("--checkpoint-every", type=int, help="default 100")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--loader-workers", type=int, help="data-loading processes per training process (default: the recipe's, else 0)"
    )
    parser.add_argument(
        "--nproc", type=int, default=1, help="DDP processes under torchrun (one per GPU; gloo on a CPU); 1: no DDP"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmr", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    models = commands.add_parser("models", help="body-model files").add_subparsers(dest="action", required=True)
    synth = models.add_parser("synth", help="write the synthetic SMPL and SKEL stand-ins in the official formats")
    synth.add_argument("--out", required=True, help="folder to write smpl/ and skel/ into")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_synth)

    check = models.add_parser("check", help="load and validate model files, print a summary")
    check.add_argument("--root", default="storage/models", help="folder in the standard layout")
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
    data_synth.add_argument("--n", type=int, required=True, help="number of people")
    data_synth.add_argument("--out", required=True, help="output folder (shards/, truth/, contact_sheet.png)")
    data_synth.add_argument("--seed", type=int, default=0)
    data_synth.add_argument("--hard-fraction", type=float, default=0.2, help="share of MOYO-like hard poses and views")
    data_synth.add_argument("--dataset", default="synth", help="dataset name, the prefix of every sample key")
    held_out = "share of the people held out as a dataset of its own in OUT/{}"
    data_synth.add_argument("--val-fraction", type=float, default=0.1, help=held_out.format("val"))
    data_synth.add_argument("--test-fraction", type=float, default=0.1, help=held_out.format("test"))
    data_synth.add_argument("--models", default="storage/models", help="body models (synthetic ones written if absent)")
    data_synth.set_defaults(run=_data_synth)

    convert = commands.add_parser("convert", help="convert SMPL pseudo-GT shards into SKEL labels (round 0)")
    add_dataset_arguments(convert)
    convert.add_argument("--table", required=True, help="label table URI (a folder or any URI deltalake opens)")
    convert.add_argument("--models", default="storage/models", help="body models in the standard layout")
    convert.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", "cuda:1", ...')
    convert.add_argument("--batch-size", type=int, help="fitting batch (default: 256 on the CPU, by memory on CUDA)")
    convert.set_defaults(run=_convert)

    convert_seq = commands.add_parser("convert-seq", help="SMPL motion sequences (AMASS-style .npz) to SKEL sequences")
    convert_seq.add_argument("--input", required=True, help="a sequence .npz or a folder of them (recursive)")
    convert_seq.add_argument("--out", required=True, help="folder for one SKEL .npz per sequence (existing ones kept)")
    convert_seq.add_argument("--models", default="storage/models", help="body models (SMPL of each gender, SKEL)")
    convert_seq.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", "cuda:1", ...')
    convert_seq.add_argument("--batch-size", type=int, default=256, help="frames fitted together")
    convert_seq.add_argument("--overlap", type=int, default=8, help="frames each batch shares with the previous one")
    convert_seq.add_argument("--smoothness", type=float, default=1.0, help="temporal smoothness weight; 0: off")
    convert_seq.add_argument("--table", help="also commit one row per frame to this label table")
    convert_seq.add_argument("--dataset", default="motion", help="dataset name of the table rows")
    convert_seq.set_defaults(run=_convert_seq)

    data_motion = data.add_parser("motion", help="write the synthetic motion sequences (AMASS-style) and their truth")
    data_motion.add_argument("--out", required=True, help="output folder (sequences/, truth/)")
    data_motion.add_argument("--frames", type=int, default=150, help="frames per sequence (30 per second)")
    data_motion.add_argument("--seed", type=int, default=0)
    data_motion.add_argument("--models", default="storage/models", help="body models (synthetic if absent)")
    data_motion.set_defaults(run=_data_motion)

    evaluation = commands.add_parser("eval", help="score the labels (and predictions) against the synthetic truth")
    evaluation.add_argument("--dataset-dir", required=True, help="folder holding shards/*.tar and truth/")
    evaluation.add_argument("--table", help="label table URI; omit it for held-out people, who have no labels")
    evaluation.add_argument("--models", default="storage/models", help="body models in the standard layout")
    evaluation.add_argument("--predictions", help="a training run's predictions.parquet")
    evaluation.add_argument("--truth", help="ground-truth Parquet (default: DATASET_DIR/truth/ground_truth.parquet)")
    evaluation.add_argument("--dataset", default="synth", help="dataset name of the shards' samples")
    evaluation.add_argument("--out", default="storage/reports/eval", help="folder for evaluation.json and .md")
    evaluation.set_defaults(run=_eval)

    dashboard = commands.add_parser("dashboard", help="write the label-quality HTML page of a label table")
    dashboard.add_argument("--table", default="storage/labels/synth", help="label table URI")
    dashboard.add_argument(
        "--dataset-dir", default="storage/datasets/synth", help='shards (gallery) and truth/; "" for none'
    )
    dashboard.add_argument("--models", default="storage/models", help="body models in the standard layout")
    dashboard.add_argument("--truth", help="ground-truth Parquet (default: DATASET_DIR/truth/ground_truth.parquet)")
    dashboard.add_argument("--dataset", default="synth", help="dataset name of the shards' samples")
    dashboard.add_argument("--gallery-size", type=int, default=8, help="worst labels shown per dataset")
    dashboard.add_argument("--out", default="storage/reports/label_dashboard.html", help="the page to write")
    dashboard.set_defaults(run=_dashboard)

    refine = commands.add_parser("refine", help="one SKELify refinement round on a training run's predictions")
    refine.add_argument("--predictions", default="storage/runs/hsmr-tiny/predictions.parquet")
    refine.add_argument("--table", default="storage/labels/synth", help="label table URI")
    refine.add_argument("--dataset-dir", default="storage/datasets/synth", help="the source dataset (shards/*.tar)")
    refine.add_argument("--dataset", default="synth", help="the dataset name in the predictions and the table")
    refine.add_argument("--models", default="storage/models", help="body models in the standard layout")
    refine.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", "cuda:1", ...')
    refine.add_argument("--batch-size", type=int, default=256, help="samples per LBFGS problem")
    refine.add_argument("--latest", type=int, default=18_000, help="refine the latest M predictions")
    refine.add_argument("--max-abs-beta", type=float, default=2.0, help="replace only labels with max|beta| below")
    refine.add_argument("--steps", type=int, default=3, help="LBFGS steps of the refiner (the paper's 10)")
    refine.add_argument("--max-iter", type=int, default=20, help="iterations per LBFGS step (torch's default 20)")
    refine.add_argument("--round", type=int, help="the round to commit (default: the next one)")
    refine.set_defaults(run=_refine)

    export = commands.add_parser("export", help="training shards (WebDataset + wids index) from a label table")
    export.add_argument("--table", required=True, help="label table URI")
    export.add_argument(
        "--dataset", action="append", required=True, help="NAME=SPEC of a source dataset (repeatable; see convert)"
    )
    export.add_argument(
        "--format",
        choices=("pipeline", "hsmr"),
        default="pipeline",
        help="pipeline: this project's training shards (crops + npz); hsmr: HMR2.0's tars with HSMR's "
        "orig_*/flip_* SKEL labels, what HSMR's own training code reads",
    )
    export.add_argument("--out", required=True, help="folder for v{version}/index.json and the shards")
    export.add_argument("--version", type=int, help="label-table version (default: the latest)")
    export.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    export.set_defaults(run=_export)

    train = commands.add_parser("train", help="train the HSMR network on exported shards (resumes in --out)")
    add_train_arguments(train, index_required=True, default_out=None)
    train.set_defaults(run=_train)

    predict = commands.add_parser("predict", help="run a trained network on HMR2.0-style tars or on images with boxes")
    predict.add_argument("--checkpoint", required=True, help="a training run folder or its checkpoint.pt")
    predict.add_argument(
        "--dataset", action="append", help="NAME=SPEC of HMR2.0-style tars (a folder, a brace pattern, pipe:, a URL)"
    )
    predict.add_argument("--images", help="a folder of images; their people come from --boxes")
    predict.add_argument(
        "--boxes", help='boxes.json: {"IMAGE": [{"box": [x0, y0, x1, y1]} or {"center": [x, y], "scale": s}]}'
    )
    predict.add_argument("--overlays", help="with --images: a folder for one overlay PNG per image")
    predict.add_argument("--out", default="predictions.parquet", help="the Parquet table to write")
    predict.add_argument("--models", default="storage/models", help="body models in the standard layout")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--device", default="auto", help='"auto" (CUDA when present), "cpu", "cuda:1", ...')
    predict.set_defaults(run=_predict)

    curves = commands.add_parser("curves", help="learning curves of training runs (metrics.jsonl) as a PNG")
    curves.add_argument(
        "--run", dest="runs", action="append", required=True, help="[LABEL=]RUN folder or metrics.jsonl (repeatable)"
    )
    curves.add_argument("--out", default="storage/reports/learning_curves.png")
    curves.set_defaults(run=_curves)

    study = commands.add_parser("study", help="studies on the synthetic world").add_subparsers(
        dest="action", required=True
    )
    study_refine = study.add_parser("refine", help="refiner variants against the truth: 3D label error per case")
    study_refine.add_argument("--models", default="storage/models", help="body models (the synthetic ones)")
    study_refine.add_argument("--work", default="storage/study/refine", help="the world, its table, the network")
    study_refine.add_argument("--people", type=int, default=256)
    study_refine.add_argument("--network-steps", type=int, default=300, help="training of the network case's network")
    study_refine.add_argument("--out", default="storage/reports/study_refine.json", help="JSON; the table goes to .md")
    study_refine.set_defaults(run=_study_refine)

    demo = commands.add_parser("demo", help="load the models, pose bodies, write meshes and renders")
    demo.add_argument("--models", default="storage/models")
    demo.add_argument("--out", default="storage/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ModelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
