"""Label quality against the truth, where the truth is known (the synthetic world).

Real datasets only allow comparing a SKEL label with the SMPL pseudo-GT it came from (PVE); the
synthetic world also knows the true SKEL body, so the labels' pose and joint errors can be measured,
per corruption kind of the pseudo-GT: clean SMPL should give labels close to the truth, and grossly
corrupted SMPL should be caught by the maxPVE filter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hsmr_model import skel_constants as C
from hsmr_model.skel_layer import SKELLayer


@dataclass
class LabelErrors:
    """Per-sample errors of labels against the truth, aligned on sample_id (N samples)."""

    sample_id: list[str]
    corruption: list[str]
    split: list[str]
    q_error_deg: np.ndarray  # (N,) mean |Δq| over the limited DoFs
    joint_error_mm: np.ndarray  # (N,) mean 3D distance of the 24 SKEL joints, pelvis-aligned
    pve_max_m: np.ndarray  # (N,) the label's maxPVE to its SMPL pseudo-GT
    passed: np.ndarray  # (N,) bool, the label's filter verdict


def label_errors(labels: pa.Table, truth_path: str, skel: SKELLayer) -> LabelErrors:
    """Compare every label with the true body of its sample (labels without truth are left out)."""
    truth = {row["sample_id"]: row for row in pq.read_table(truth_path).to_pylist()}
    rows = [row for row in labels.to_pylist() if row["sample_id"] in truth]
    if not rows:
        raise ValueError(f"no label has a sample id in {truth_path}")
    true_rows = [truth[row["sample_id"]] for row in rows]
    q_label = np.array([row["q"] for row in rows])
    q_true = np.array([row["q"] for row in true_rows])
    limited = np.array(C.LIMITED_DOFS)
    joints_label = _pelvis_aligned_joints(skel, q_label, np.array([row["betas"] for row in rows]))
    joints_true = _pelvis_aligned_joints(skel, q_true, np.array([row["betas"] for row in true_rows]))
    return LabelErrors(
        sample_id=[row["sample_id"] for row in rows],
        corruption=[row["corruption"] for row in true_rows],
        split=[row["split"] for row in true_rows],
        q_error_deg=np.degrees(np.abs(q_label - q_true)[:, limited].mean(1)),
        joint_error_mm=np.linalg.norm(joints_label - joints_true, axis=-1).mean(1) * 1000,
        pve_max_m=np.array([row["pve_max"] for row in rows]),
        passed=np.array([row["passed"] for row in rows]),
    )


def _pelvis_aligned_joints(skel: SKELLayer, q: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """SKEL joints (N, 24, 3) with the pelvis at the origin."""
    q_t, betas_t = torch.as_tensor(q, dtype=torch.float32), torch.as_tensor(betas, dtype=torch.float32)
    with torch.no_grad():
        joints, _ = skel.joints(q_t, betas_t, torch.zeros(len(q), 3))
    joints = joints.numpy().astype(np.float64)
    return joints - joints[:, :1]


def errors_by_corruption(errors: LabelErrors) -> dict[str, dict[str, float]]:
    """Mean q and joint error, and the share flagged by maxPVE > 6 cm, per corruption kind."""
    report = {}
    kinds = np.array(errors.corruption)
    for kind in sorted(set(errors.corruption)):
        mask = kinds == kind
        report[kind] = {
            "samples": int(mask.sum()),
            "q_error_deg": round(float(errors.q_error_deg[mask].mean()), 3),
            "joint_error_mm": round(float(errors.joint_error_mm[mask].mean()), 2),
            "share_pve_max_over_6cm": round(float((errors.pve_max_m[mask] > 0.06).mean()), 3),
            "share_passed": round(float(errors.passed[mask].mean()), 3),
        }
    return report


def truth_label_rows(truth: dict[str, dict], ids: list[str], chunk: str) -> dict[str, np.ndarray]:
    """Label-table rows that pass every filter and hold the true q, β and crop-camera translation of the
    synthetic world's ground truth (rows by sample id): labels as good as labels get."""
    n = len(ids)
    return {
        "sample_id": np.array(ids),
        "dataset": np.full(n, "synth"),
        "chunk_id": np.full(n, chunk),
        "q": np.array([truth[i]["q"] for i in ids]),
        "betas": np.array([truth[i]["betas"] for i in ids]),
        "trans": np.array([truth[i]["trans"] for i in ids]),
        "pve_mean": np.full(n, 0.01),
        "pve_max": np.full(n, 0.03),
        "kp2d_err": np.full(n, 0.01),
        "num_keypoints": np.full(n, 30),
        "pve_ok": np.ones(n, bool),
        "betas_ok": np.ones(n, bool),
        "keypoints_ok": np.ones(n, bool),
        "passed": np.ones(n, bool),
        "fit_iterations": np.full(n, 30),
        "fit_seconds": np.full(n, 0.5),
        "converged": np.ones(n, bool),
    }
