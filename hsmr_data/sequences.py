"""SMPL motion sequences (AMASS-style .npz) → SKEL sequences: smooth, seamless, unwrapped.

Reading follows what the SKEL authors' loader accepts: `poses` (T, 156) SMPL+H (the first 66
values kept, SMPL joints 22 and 23 at zero) or (T, 72) SMPL, or `global_orient` + `body_pose`
(63 or 69 values), each also as `*_axis_angle`; `betas` (the first 10); `trans` or `transl`;
`gender` (a string or a 0-d array; neutral when absent); `mocap_framerate` or
`mocap_frame_rate`. Files are opened with allow_pickle=False: a file that needs unpickling is
refused with an error naming it.

Conversion of one sequence (`SequenceConverter.convert`), with its gender's SMPL and SKEL (SKEL
has no neutral model: neutral sequences use `neutral_skel`):

1. shape: β is fitted once, on up to `shape_frames` frames spread over the sequence (the median
   of their fits), then held for every frame, so a long sequence is not fitted into a bigger or
   smaller body batch by batch;
2. frames in batches of `batch_size` that overlap by `overlap` frames. A batch starts from the
   closed-form initialisation for its new frames and from the previous batch's results for the
   overlapping ones, its pelvis angles unwrapped against the last frame already fitted (warm
   start); each frame is then fitted by the batched Levenberg–Marquardt fit of
   `hsmr_model.skel_fit`, all frames independent;
3. smoothness: `smoothing_sweeps` refits of the batch with a pull of every DoF towards its
   neighbour frames' values from the previous sweep, Σ_n w·(q_t − q_n)² with w = `smoothness`
   (cm² of loss per rad²). Against the data term's curvature (thousands of cm² per rad² for a
   DoF that moves many vertices) this barely moves well-determined DoFs, so real motion is
   kept, and it settles the ones the mesh hardly sees (twists, scapulae) that would otherwise
   jitter from frame to frame. Frames in the overlap are refitted by the next batch with both
   neighbours known, which is what removes the seam;
4. unwrapping: the pelvis angles are the only unlimited DoFs; of all the triples that give a
   frame's pelvis rotation (2π shifts, and the second Euler branch (a + π, π − b, c + π)) the
   one nearest the previous frame's is kept, so no angle jumps by 360° or 180°;
5. per frame: mean and max vertex error to the SMPL mesh, the filters' `pve_ok` and `betas_ok`
   (maxPVE > 6 cm, any |β| > 3), `passed`.

Output: a SKEL `.npz` per sequence (`SkelSequence.write`) and, optionally, one label-table row per
frame (sample id `{sequence id}_{frame:06d}`, chunk `{dataset}/{sequence id}`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from hsmr_data import label_table, layout
from hsmr_data.filters import FilterConfig, mesh_verdicts
from hsmr_data.progress import Progress, gather
from hsmr_data.quarantine import Quarantine
from hsmr_model import skel_constants as C
from hsmr_model.body_models import BodyModels
from hsmr_model.devices import resolve_device
from hsmr_model.model_files import SMPL_GENDERS, BodyModelPaths, write_npz_atomically
from hsmr_model.skel_fit import FitGuide, SkelFitConfig, SkelFitResult, fit_skel_to_smpl
from hsmr_model.skel_fit_init import initial_parameters
from hsmr_model.skel_fit_jacobians import NUM_PARAMS
from hsmr_model.smpl_layer import SmplParams, posed_vertices

SMPLH_BODY_VALUES = 66  # global orientation and 21 body joints; the hands follow


class SequenceFileError(ValueError):
    """A motion file that cannot be read as a sequence; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)
        self.problem = problem


# ------------------------------------------------------------------------------------ reading
@dataclass
class SmplSequence:
    """One SMPL motion sequence, T frames."""

    sequence_id: str
    source: str
    gender: str  # "male", "female" or "neutral"
    frame_rate: float
    global_orient: np.ndarray  # (T, 3) axis-angle
    body_pose: np.ndarray  # (T, 69) axis-angle, SMPL joints 1–23
    betas: np.ndarray  # (10,)
    transl: np.ndarray  # (T, 3)

    @property
    def frames(self) -> int:
        return self.global_orient.shape[0]

    def smpl_params(self) -> SmplParams:
        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(a, dtype=torch.float32)

        betas = np.repeat(self.betas[None], self.frames, axis=0)
        return SmplParams(tensor(self.global_orient), tensor(self.body_pose), tensor(betas), tensor(self.transl))


def normalise_gender(value: object, path: Path | str) -> str:
    """'male' / 'female' / 'neutral' from a string, bytes or a 0-d array (AMASS stores all three)."""
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise SequenceFileError(path, f"gender: expected one string, found an array of shape {value.shape}")
        value = value.reshape(()).item()
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    gender = str(value).strip().lower()
    if gender not in SMPL_GENDERS:
        raise SequenceFileError(path, f"gender: expected one of {SMPL_GENDERS}, found {gender!r}")
    return gender


def _first_key(data: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray | None:
    for name in names:
        for variant in (name, f"{name}_axis_angle"):
            if variant in data:
                return data[variant]
    return None


def _pose_arrays(data: dict[str, np.ndarray], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """global_orient (T, 3) and body_pose (T, 69) from whichever pose keys the file has."""
    poses = _first_key(data, ("poses",))
    if poses is not None:
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 2 or poses.shape[1] not in (72, 156):
            raise SequenceFileError(path, f"poses: expected (T, 156) SMPL+H or (T, 72) SMPL, found {poses.shape}")
        body = np.zeros((poses.shape[0], 72))
        body[:, :SMPLH_BODY_VALUES] = poses[:, :SMPLH_BODY_VALUES]  # SMPL joints 22, 23 (hands) stay 0
        if poses.shape[1] == 72:
            body = poses
        return body[:, :3], body[:, 3:]
    orient, body_pose = _first_key(data, ("global_orient", "root_orient")), _first_key(data, ("body_pose",))
    if orient is None or body_pose is None:
        raise SequenceFileError(
            path, f"no pose: expected 'poses' or 'global_orient' + 'body_pose' (found keys {sorted(data)})"
        )
    orient, body_pose = np.asarray(orient, dtype=np.float64), np.asarray(body_pose, dtype=np.float64)
    if body_pose.ndim == 3:  # (T, J, 3)
        body_pose = body_pose.reshape(body_pose.shape[0], -1)
    if orient.ndim != 2 or orient.shape[1] != 3:
        raise SequenceFileError(path, f"global_orient: expected (T, 3), found {orient.shape}")
    if body_pose.ndim != 2 or body_pose.shape[1] not in (63, 69) or body_pose.shape[0] != orient.shape[0]:
        expected = f"expected (T, 63) or (T, 69) with T = {len(orient)}"
        raise SequenceFileError(path, f"body_pose: {expected}, found {body_pose.shape}")
    padded = np.zeros((orient.shape[0], 69))
    padded[:, :63] = body_pose[:, :63]
    if body_pose.shape[1] == 69:
        padded = body_pose
    return orient, padded


def read_amass_npz(path: Path | str, sequence_id: str | None = None) -> SmplSequence:
    """Read one AMASS-style sequence (see the module docstring for the keys); SequenceFileError if unusable."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise SequenceFileError(path, "holds pickled (object) arrays; refused, they could run code") from err
        raise SequenceFileError(path, f"not a readable .npz ({err})") from err
    except (OSError, EOFError) as err:
        raise SequenceFileError(path, f"not a readable .npz ({err})") from err

    global_orient, body_pose = _pose_arrays(data, path)
    frames = global_orient.shape[0]
    if frames == 0:
        raise SequenceFileError(path, "the sequence has no frames")
    betas = data.get("betas")
    if betas is None:
        raise SequenceFileError(path, "missing key 'betas'")
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim == 2:  # per-frame shapes: one body, the first frame's
        betas = betas[0]
    if betas.ndim != 1 or betas.shape[0] < C.NUM_BETAS:
        raise SequenceFileError(path, f"betas: expected at least {C.NUM_BETAS} values, found shape {betas.shape}")
    transl = _first_key(data, ("trans", "transl"))
    if transl is None:
        raise SequenceFileError(path, "missing key 'trans' (or 'transl')")
    transl = np.asarray(transl, dtype=np.float64)
    if transl.shape != (frames, 3):
        raise SequenceFileError(path, f"trans: expected ({frames}, 3), found {transl.shape}")
    rate = _first_key(data, ("mocap_framerate", "mocap_frame_rate"))
    if rate is None:
        raise SequenceFileError(path, "missing key 'mocap_framerate' (or 'mocap_frame_rate')")
    rate = float(np.asarray(rate, dtype=np.float64).reshape(-1)[0])
    gender = normalise_gender(data["gender"], path) if "gender" in data else "neutral"
    arrays = {"global_orient": global_orient, "body_pose": body_pose, "betas": betas[: C.NUM_BETAS], "trans": transl}
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise SequenceFileError(path, f"{name} contains NaN or infinite values")
    if not (math.isfinite(rate) and rate > 0):
        raise SequenceFileError(path, f"mocap_framerate: expected a positive number, found {rate}")
    return SmplSequence(
        sequence_id=sequence_id or path.stem,
        source=str(path),
        gender=gender,
        frame_rate=rate,
        global_orient=global_orient,
        body_pose=body_pose,
        betas=betas[: C.NUM_BETAS],
        transl=transl,
    )


# ------------------------------------------------------------------------------------- output
@dataclass
class SkelSequence:
    """A converted sequence: SKEL parameters and per-frame quality, T frames."""

    sequence_id: str
    source: str
    gender: str  # of the SMPL input
    skel_gender: str  # of the SKEL model fitted ("male" or "female")
    frame_rate: float
    poses: np.ndarray  # (T, 46) q, pelvis angles unwrapped (continuous, not confined to [−π, π))
    betas: np.ndarray  # (10,)
    trans: np.ndarray  # (T, 3)
    pve_mean: np.ndarray  # (T,) metres
    pve_max: np.ndarray  # (T,) metres
    pve_ok: np.ndarray  # (T,) bool
    betas_ok: np.ndarray  # (T,) bool
    passed: np.ndarray  # (T,) bool
    fit_iterations: np.ndarray  # (T,) Levenberg–Marquardt evaluations, all sweeps
    converged: np.ndarray  # (T,) bool: the last sweep met the fit's tolerance
    seconds_per_frame: float

    @property
    def frames(self) -> int:
        return self.poses.shape[0]

    def write(self, path: Path | str) -> Path:
        """The SKEL .npz: poses, betas, trans, gender, mocap_framerate, per-frame PVE and filter flags."""
        path = Path(path)
        write_npz_atomically(
            path,
            **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self) if f.name != "frame_rate"},
            mocap_framerate=np.asarray(self.frame_rate),
        )
        return path

    @classmethod
    def read(cls, path: Path | str) -> SkelSequence:
        with np.load(path, allow_pickle=False) as data:
            values = {f.name: data[f.name] for f in fields(cls) if f.name != "frame_rate"}
            rate = float(data["mocap_framerate"])
        scalars = {"sequence_id": str, "source": str, "gender": str, "skel_gender": str, "seconds_per_frame": float}
        values.update({name: kind(values[name]) for name, kind in scalars.items()})
        return cls(frame_rate=rate, **values)


# ------------------------------------------------------------------------------- unwrapping
def unwrap_pelvis(q: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """q (T, 46) with each frame's pelvis angles (q[:, :3]) replaced by the equivalent triple nearest
    the previous frame's (the first frame's nearest `reference` (46,), when given).

    The pelvis rotation R_y(c)·R_x(b)·R_z(a) is also (a + π, π − b, c + π), and each angle is
    free up to 2π; every other DoF is limited to less than ±π and is left alone.
    """
    out = np.array(q, dtype=np.float64, copy=True)
    previous = None if reference is None else np.asarray(reference, dtype=np.float64)[:3]
    for t in range(out.shape[0]):
        a, b, c = out[t, :3]
        if previous is not None:
            best, best_distance = None, math.inf
            for triple in ((a, b, c), (a + math.pi, math.pi - b, c + math.pi)):
                triple = np.asarray(triple)
                shifted = previous + np.remainder(triple - previous + math.pi, 2 * math.pi) - math.pi
                distance = np.abs(shifted - previous).sum()
                if distance < best_distance:
                    best, best_distance = shifted, distance
            out[t, :3] = best
        previous = out[t, :3]
    return out


# ----------------------------------------------------------------------------- conversion
@dataclass(frozen=True)
class SequenceConfig:
    """Knobs of sequence conversion (see the module docstring)."""

    batch_size: int = 256  # frames fitted together
    overlap: int = 8  # frames each batch shares with the previous one
    shape_frames: int = 32  # frames the sequence's β is fitted on
    smoothness: float = 1.0  # cm² per rad², per neighbour frame; 0 turns the term off
    smoothing_sweeps: int = 1
    neutral_skel: str = "male"  # SKEL has no neutral model; HSMR labels with the male one
    fit: SkelFitConfig = field(default_factory=SkelFitConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self):
        if self.batch_size < 2 or not 0 <= self.overlap < self.batch_size // 2 + 1:
            given = f"batch_size {self.batch_size}, overlap {self.overlap}"
            raise ValueError(f"need batch_size ≥ 2 and 0 ≤ overlap ≤ batch_size / 2, got {given}")


def batch_starts(frames: int, batch_size: int, overlap: int) -> list[int]:
    """First frame of each batch: batches of `batch_size` frames, each sharing `overlap` with the previous."""
    starts, start = [0], 0
    while start + batch_size < frames:
        start += batch_size - overlap
        starts.append(start)
    return starts


_BETA_SLICE = slice(C.NUM_DOFS, C.NUM_DOFS + C.NUM_BETAS)


def neighbour_anchors(q: torch.Tensor, before: torch.Tensor | None, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor and weight (B, 59) each of the smoothness term for a batch's q (B, 46).

    Σ_n w·(q_t − q_n)² over a frame's k neighbours equals k·w·(q_t − their mean)² up to a constant,
    so the anchor is the neighbours' mean and the weight k·w. The batch's first frame has `before`
    (46,) (the frame before the batch) as a neighbour when given; its last frame has only one.
    """
    count = q.shape[0]
    padded = torch.cat([q[:1] if before is None else before[None], q, q[-1:]], dim=0)
    neighbours = torch.full((count, 1), 2.0, dtype=q.dtype, device=q.device)
    total = padded[:-2] + padded[2:]
    if before is None:
        total[0], neighbours[0] = total[0] - padded[0], neighbours[0] - 1
    total[-1], neighbours[-1] = total[-1] - padded[-1], neighbours[-1] - 1
    anchor = q.new_zeros(count, NUM_PARAMS)
    weights = q.new_zeros(count, NUM_PARAMS)
    anchor[:, : C.NUM_DOFS] = total / neighbours.clamp_min(1)
    weights[:, : C.NUM_DOFS] = weight * neighbours
    return anchor, weights


class SequenceConverter:
    """Body models per gender, loaded on first use, and the conversion of whole sequences."""

    def __init__(self, paths: BodyModelPaths, config: SequenceConfig = SequenceConfig()):
        self.paths = paths
        self.config = config
        self.device = resolve_device(config.fit.device)

    def skel_gender(self, gender: str) -> str:
        return self.config.neutral_skel if gender == "neutral" else gender

    def models(self, gender: str) -> BodyModels:
        """SMPL of the sequence's gender and SKEL of the matching sex (`neutral_skel` for neutral SMPL)."""
        return BodyModels.load(self.paths, self.skel_gender(gender), self.device, smpl_gender=gender)

    def sequence_shape(self, models: BodyModels, params: SmplParams) -> np.ndarray:
        """β (10,): the median of free fits on up to `shape_frames` frames spread over the sequence."""
        frames = params.betas.shape[0]
        keys = torch.as_tensor(np.unique(np.linspace(0, frames - 1, min(frames, self.config.shape_frames)).round()))
        keys = keys.long()
        vertices = posed_vertices(models.smpl, params[keys])
        fit = fit_skel_to_smpl(models.skel, models.link, vertices, None, params[keys], self.config.fit)
        return np.median(fit.betas, axis=0)

    @torch.no_grad()
    def convert(self, sequence: SmplSequence) -> SkelSequence:
        """Fit SKEL to every frame of `sequence` (see the module docstring)."""
        started = time.perf_counter()
        config, models = self.config, self.models(sequence.gender)
        params = sequence.smpl_params()
        frames = sequence.frames
        betas = torch.as_tensor(self.sequence_shape(models, params), dtype=torch.float32, device=self.device)
        held = torch.zeros(NUM_PARAMS, dtype=torch.bool)
        held[_BETA_SLICE] = True

        x_all = np.zeros((frames, NUM_PARAMS), dtype=np.float64)
        pve_mean, pve_max = np.zeros(frames), np.zeros(frames)
        iterations = np.zeros(frames, dtype=np.int64)
        converged = np.zeros(frames, dtype=bool)
        fitted_until = 0  # frames [0, fitted_until) have results
        for start in batch_starts(frames, config.batch_size, config.overlap):
            stop = min(start + config.batch_size, frames)
            batch = params[start:stop].to(self.device)
            vertices = posed_vertices(models.smpl, batch)
            joints = models.link.osim_regressor(vertices)
            x = initial_parameters(models.skel, models.link, batch, joints)
            x[:, _BETA_SLICE] = betas
            x[:, -3:] = joints[:, 0] - models.skel.rest_joints(betas[None])[:, 0]
            known = fitted_until - start  # frames of this batch the previous one fitted
            if known > 0:
                x[:known] = torch.as_tensor(x_all[start:fitted_until], dtype=x.dtype, device=x.device)
            before = None if start == 0 else x_all[start - 1, : C.NUM_DOFS]
            x[:, : C.NUM_DOFS] = self._unwrapped(x[:, : C.NUM_DOFS], before)
            fit = fit_skel_to_smpl(
                models.skel, models.link, vertices, joints, batch, config.fit, FitGuide(x, held=held)
            )
            batch_iterations = fit.iterations.copy()
            for _ in range(config.smoothing_sweeps if config.smoothness > 0 else 0):
                x = self._result_x(fit, before)
                before_q = None if before is None else torch.as_tensor(before, dtype=x.dtype, device=x.device)
                anchor, weight = neighbour_anchors(x[:, : C.NUM_DOFS], before_q, config.smoothness)
                guide = FitGuide(x, anchor, weight, held)
                fit = fit_skel_to_smpl(models.skel, models.link, vertices, joints, batch, config.fit, guide)
                batch_iterations += fit.iterations
            x_all[start:stop] = self._result_x(fit, before).cpu().numpy()
            pve_mean[start:stop], pve_max[start:stop] = fit.pve_mean, fit.pve_max
            iterations[start:stop], converged[start:stop] = batch_iterations, fit.converged
            fitted_until = stop

        seconds = time.perf_counter() - started
        betas_np = betas.cpu().numpy().astype(np.float64)
        pve_ok, betas_ok = mesh_verdicts(pve_max, np.broadcast_to(betas_np, (frames, C.NUM_BETAS)), config.filters)
        return SkelSequence(
            sequence_id=sequence.sequence_id,
            source=sequence.source,
            gender=sequence.gender,
            skel_gender=self.skel_gender(sequence.gender),
            frame_rate=sequence.frame_rate,
            poses=x_all[:, : C.NUM_DOFS],
            betas=betas_np,
            trans=x_all[:, -3:],
            pve_mean=pve_mean,
            pve_max=pve_max,
            pve_ok=pve_ok,
            betas_ok=betas_ok,
            passed=pve_ok & betas_ok,
            fit_iterations=iterations,
            converged=converged,
            seconds_per_frame=seconds / frames,
        )

    def _unwrapped(self, q: torch.Tensor, before: np.ndarray | None) -> torch.Tensor:
        return torch.as_tensor(unwrap_pelvis(q.cpu().numpy(), before), dtype=q.dtype, device=q.device)

    def _result_x(self, fit: SkelFitResult, before: np.ndarray | None) -> torch.Tensor:
        """A fit's x = [q | β | trans] (B, 59) on the device, pelvis angles unwrapped."""
        q = unwrap_pelvis(fit.q, before)
        x = np.concatenate([q, fit.betas, fit.trans], axis=1)
        return torch.as_tensor(x, dtype=torch.float32, device=self.device)


# --------------------------------------------------------------------------- label table
SEQUENCE_APP_PREFIX = "convert-sequences"


def frame_sample_id(sequence_id: str, frame: int) -> str:
    """A frame's id in the label table: the sequence id and the frame number (zero-padded, so ids sort)."""
    return f"{sequence_id}_{frame:06d}"


def label_rows(result: SkelSequence, dataset: str) -> pa.Table:
    """One label-table row per frame. Motion frames have no image: `kp2d_err` is null, `num_keypoints`
    0, and the keypoint rule does not apply (`keypoints_ok` true); `passed` = pve_ok and betas_ok."""
    frames = result.frames
    return label_table.validate_rows(
        {
            "sample_id": [frame_sample_id(result.sequence_id, t) for t in range(frames)],
            "dataset": [dataset] * frames,
            "chunk_id": [f"{dataset}/{result.sequence_id}"] * frames,
            "q": result.poses,
            "betas": np.repeat(result.betas[None], frames, axis=0),
            "trans": result.trans,
            "pve_mean": result.pve_mean,
            "pve_max": result.pve_max,
            "kp2d_err": np.full(frames, np.nan),
            "num_keypoints": np.zeros(frames, dtype=np.int32),
            "pve_ok": result.pve_ok,
            "betas_ok": result.betas_ok,
            "keypoints_ok": np.ones(frames, dtype=bool),
            "passed": result.passed,
            "fit_iterations": result.fit_iterations,
            "fit_seconds": np.full(frames, result.seconds_per_frame),
            "converged": result.converged,
        }
    )


def commit_sequence(table_uri: str, result: SkelSequence, dataset: str) -> None:
    """Commit a sequence's rows in one transaction named after it (a rerun skips it)."""
    app_id = f"{SEQUENCE_APP_PREFIX}/{dataset}/{result.sequence_id}"
    if not label_table.is_committed(table_uri, app_id, 0):
        label_table.commit_chunk(table_uri, label_rows(result, dataset), app_id=app_id, txn_version=0)


# ------------------------------------------------------------------------------ many files
def list_sequence_files(input_path: Path | str) -> list[Path]:
    """A sequence file, or every .npz under a folder (recursively, in name order)."""
    input_path = Path(input_path)
    if input_path.is_file():
        return [input_path]
    if not input_path.is_dir():
        raise FileNotFoundError(f"no sequence file or folder at {input_path}")
    return sorted(input_path.rglob("*.npz"))


def sequence_id_for(path: Path, input_path: Path | str) -> str:
    """The file's path under the input folder without its suffix (CMU/01/01_01_poses), or its stem."""
    input_path = Path(input_path)
    relative = path.relative_to(input_path) if input_path.is_dir() else Path(path.name)
    return relative.with_suffix("").as_posix()


@dataclass
class SequenceOutcome:
    sequence_id: str
    status: str  # "converted", "skipped" (its output exists: an earlier run wrote it) or "quarantined"
    output: str = ""
    frames: int = 0
    passed_frames: int = 0
    pve_mean_cm: float = float("nan")
    pve_max_cm: float = float("nan")
    seconds_per_frame: float = float("nan")
    reason: str = ""  # why it was quarantined


def convert_sequence_file(
    converter: SequenceConverter,
    path: Path | str,
    input_path: Path | str,
    out_dir: Path | str,
    table_uri: str | None = None,
    dataset: str = "motion",
) -> SequenceOutcome:
    """Convert one file to `{out_dir}/{sequence id}.npz` (and its frames to the label table at
    `table_uri`, when given), unless the .npz exists; an unreadable file is reported as quarantined
    (with its reason), not raised. The rows are committed before the .npz is written, so an existing
    .npz means the sequence is complete."""
    path = Path(path)
    sequence_id = sequence_id_for(path, input_path)
    output = Path(out_dir) / f"{sequence_id}.npz"
    if output.is_file():
        return SequenceOutcome(sequence_id, "skipped", str(output))
    try:
        sequence = read_amass_npz(path, sequence_id)
    except SequenceFileError as err:
        return SequenceOutcome(sequence_id, "quarantined", reason=str(err))
    result = converter.convert(sequence)
    if table_uri is not None:
        commit_sequence(table_uri, result, dataset)
    result.write(output)
    return SequenceOutcome(
        sequence_id,
        "converted",
        str(output),
        result.frames,
        int(result.passed.sum()),
        float(result.pve_mean.mean() * 100),
        float(result.pve_max.max() * 100),
        result.seconds_per_frame,
    )


def write_quarantine(outcomes: list[SequenceOutcome], out_dir: Path | str) -> Path | None:
    """`{out_dir}/quarantine.json` listing the refused files and why, when there are any."""
    refused = [o for o in outcomes if o.status == "quarantined"]
    if not refused:
        return None
    quarantine = Quarantine()
    for outcome in refused:
        quarantine.add(outcome.reason.split(": ", 1)[0], outcome.sequence_id, outcome.reason)
    path = Path(out_dir) / "quarantine.json"
    quarantine.write_report(path)
    return path


# A sequence runner converts the files it is given (in this process, or as tasks of a flow) and yields each
# file with its outcome, or with the error that stopped it, as they finish.
SequenceRunner = Callable[["SequenceConverter", list[Path], "SequenceOptions"], Iterable[tuple[Path, Any]]]


def convert_in_order(
    converter: SequenceConverter, files: list[Path], options: SequenceOptions
) -> Iterator[tuple[Path, SequenceOutcome]]:
    """The plain runner: file after file in this process; an error stops the run."""
    for path in files:
        yield path, options.convert_file(converter, path)


def convert_sequence_files(
    options: SequenceOptions,
    converter: SequenceConverter,
    run_files: SequenceRunner = convert_in_order,
    on_sequence: Callable[[SequenceOutcome], None] | None = None,
) -> tuple[list[SequenceOutcome], dict[str, str]]:
    """Every sequence file under `options.input_path` through `run_files`, resumable, with a progress bar (an
    artifact in a flow): the outcomes (`on_sequence` after each) and the failed files' errors."""
    files = list_sequence_files(options.input_path)
    if options.table_uri is not None:
        label_table.create_or_open(options.table_uri)  # once, before parallel files race to create it
    with Progress(f"sequences of {options.input_path}", total=len(files), unit="sequence") as progress:
        outcomes, failed = gather(run_files(converter, files, options), progress, on_sequence)
    write_quarantine(outcomes, options.out_dir)
    return outcomes, failed


def convert_sequences(
    input_path: Path | str,
    out_dir: Path | str,
    converter: SequenceConverter,
    on_sequence: Callable[[SequenceOutcome], None] | None = None,
    table_uri: str | None = None,
    dataset: str = "motion",
) -> list[SequenceOutcome]:
    """Every sequence file under `input_path` to `out_dir`, in order in this process; resumable."""
    options = SequenceOptions(str(input_path), str(out_dir), table_uri=table_uri, dataset=dataset)
    return convert_sequence_files(options, converter, on_sequence=on_sequence)[0]


# ------------------------------------------------------------------------------ the step's front door
@dataclass(frozen=True)
class SequenceOptions:
    """A conversion of motion sequences as `hsmr convert-seq` and the convert-sequences flow take it."""

    input_path: str = field(metadata={"flag": "--input", "help": "a sequence .npz or a folder of them (recursive)"})
    out_dir: str = field(metadata={"help": "folder for one SKEL .npz per sequence (existing ones kept)"})
    models_root: str = field(default=layout.DEFAULT.models, metadata={"help": "body models (SMPL per gender, SKEL)"})
    table_uri: str | None = field(default=None, metadata={"help": "also commit one row per frame to this table"})
    dataset: str = field(default="motion", metadata={"help": "dataset name of the table rows"})
    device: str = field(default=SkelFitConfig.device, metadata={"help": '"auto" (CUDA when present), "cpu", ...'})
    batch_size: int = field(default=SequenceConfig.batch_size, metadata={"help": "frames fitted together"})
    overlap: int = field(default=SequenceConfig.overlap, metadata={"help": "frames shared with the previous batch"})
    smoothness: float = field(default=SequenceConfig.smoothness, metadata={"help": "temporal smoothness; 0: off"})

    def config(self) -> SequenceConfig:
        fit = SkelFitConfig(device=self.device)
        return SequenceConfig(batch_size=self.batch_size, overlap=self.overlap, smoothness=self.smoothness, fit=fit)

    def convert_file(self, converter: SequenceConverter, path: Path) -> SequenceOutcome:
        return convert_sequence_file(converter, path, self.input_path, self.out_dir, self.table_uri, self.dataset)


@dataclass
class SequenceReport:
    out_dir: str
    sequences: dict[str, int]  # converted, skipped, quarantined, failed
    outcomes: list[SequenceOutcome]  # in sequence-id order
    failed: dict[str, str]  # file → the error that stopped it (after retries, in a flow)


def run(
    options: SequenceOptions,
    run_files: SequenceRunner = convert_in_order,
    on_sequence: Callable[[SequenceOutcome], None] | None = None,
) -> SequenceReport:
    """Convert the sequences of `options`: the front door of `hsmr convert-seq` and the convert-sequences flow
    (which passes its Prefect runner)."""
    converter = SequenceConverter(BodyModelPaths.from_root(options.models_root), options.config())
    outcomes, failed = convert_sequence_files(options, converter, run_files, on_sequence)
    statuses = Counter(outcome.status for outcome in outcomes)
    counts = {status: statuses[status] for status in ("converted", "skipped", "quarantined")}
    ordered = sorted(outcomes, key=lambda outcome: outcome.sequence_id)
    return SequenceReport(options.out_dir, counts | {"failed": len(failed)}, ordered, failed)
