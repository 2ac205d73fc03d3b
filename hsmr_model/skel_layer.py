"""The SKEL body model as a batched torch layer, read from the official `skel_{male,female}.pkl`.

The math is a set of small pure functions (shapes in the docstrings); `SKELLayer` holds the model
arrays as buffers and wires the functions together. CPU and CUDA, float32 and float64,
differentiable in q, β and the translation.

Forward pass (as the official SKEL layer computes it): shape the skin, regress the anatomical
joints, orient each bone's rest frame along its bone, compose the per-DoF rotations, add the
scapula and spine translations, chain the transforms, apply SMPL pose blend shapes, skin.

Layout. The public functions and `SkelOutput` are batch first ((B, J, 3, 3), (B, V, 3)). Inside,
the skeleton is computed component first and batch last: vectors (3, J, B), rotations (3, 3, J, B)
("cf" in the names). A batch of 3×3 products is then one broadcast multiply and one sum over
contiguous rows of B values, where the batch-first layout makes torch run B·J tiny matrix products
(10 to 30 times slower on a CPU, launch-bound on a GPU). The skin is channels first (B, 3, N), so
every per-vertex step is a GEMM or an elementwise pass over rows of N vertices. Everything affine
in β is one GEMM (`SKELLayer.rest_rows`: rest joints, their offsets, the dot and cross products and
c·I + [v]× that the bone rest rotations are built from, the lengths scaling the scapula and spine
translations); the DoF axes are turned into their bones' rest frames once, at construction; the
scapula and spine translations are one table of products (`translation_table`); the kinematic chain
is composed by pointer jumping (3 steps for the 8 levels of the tree); and the pose blend shapes skip
the four SMPL joints no SKEL bone drives. On small batches a pass costs about one dispatch per torch
op, so the skeleton stage is written to issue few of them (about 120 for `SKELLayer.joints`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from hsmr_model import skel_constants as C
from hsmr_model.model_files import SkelModelData, read_skel_model
from hsmr_model.regressor import VertexRegressor


@dataclass
class SkelOutput:
    """What one SKEL forward pass returns (B: batch, V: skin vertices, Nk: skeleton vertices).

    v_shaped and pose_offsets are batch-first views of channels-first tensors (not contiguous: call
    `.contiguous()` before `.view()` or heavy per-vertex math); the rest is contiguous."""

    skin_verts: torch.Tensor | None  # (B, V, 3), or (B, len(vertex_ids), 3) for a subset
    skel_verts: torch.Tensor | None  # (B, Nk, 3) when asked for
    joints: torch.Tensor  # (B, 24, 3) SKEL joint positions
    joints_ori: torch.Tensor  # (B, 24, 3, 3) world orientation of each bone
    smpl_joints: torch.Tensor | None  # (B, 24, 3) SMPL J_regressor applied to the posed skin
    joints_tpose: torch.Tensor  # (B, 24, 3) joints of the shaped body before posing
    v_shaped: torch.Tensor | None  # (B, V, 3)
    pose_offsets: torch.Tensor | None  # (B, V, 3)
    poses: torch.Tensor
    betas: torch.Tensor
    trans: torch.Tensor


# ------------------------------------------------------------------- component-first helpers
def vectors_to_cf(vectors: torch.Tensor) -> torch.Tensor:
    """(B, J, 3) → (3, J, B), a view."""
    return vectors.permute(2, 1, 0)


def rotations_to_cf(rotations: torch.Tensor) -> torch.Tensor:
    """(B, J, 3, 3) → (3, 3, J, B), a view; its own inverse is `rotations_from_cf`."""
    return rotations.permute(2, 3, 1, 0)


def vectors_from_cf(vectors: torch.Tensor) -> torch.Tensor:
    """(3, J, B) → (B, J, 3), a view."""
    return vectors.permute(2, 1, 0)


def rotations_from_cf(rotations: torch.Tensor) -> torch.Tensor:
    """(3, 3, J, B) → (B, J, 3, 3), a view."""
    return rotations.permute(3, 2, 0, 1)


def cf_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """3×3 products a·b of component-first matrices: (3, 3, *S), (3, 3, *S) → (3, 3, *S), S broadcast."""
    return (a.unsqueeze(2) * b.unsqueeze(0)).sum(1)


def cf_matvec(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """a·v: (3, 3, *S), (3, *S) → (3, *S), S broadcast."""
    return (a * v.unsqueeze(0)).sum(1)


def cf_transpose(a: torch.Tensor) -> torch.Tensor:
    """aᵀ of (3, 3, *S) matrices, a view."""
    return a.transpose(0, 1)


def cf_eye(like: torch.Tensor, trailing: int) -> torch.Tensor:
    """The identity as a (3, 3, 1, …, 1) matrix with `trailing` broadcast dimensions."""
    return torch.eye(3, dtype=like.dtype, device=like.device).view(3, 3, *([1] * trailing))


def cf_skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrices [v]×: (3, *S) → (3, 3, *S)."""
    x, y, z = v
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero]).unflatten(0, (3, 3))


def cf_norm(v: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Lengths of component-first vectors, at least `eps`: (3, *S) → (*S). (A plain sum of squares:
    linalg.vector_norm over a leading dimension is several times slower on a CPU.)"""
    return v.square().sum(0).clamp_min(eps * eps).sqrt()


def cf_half_turn(source: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Half turns R = 2·n·nᵀ − I about an axis n perpendicular to each source vector: (3, *S) → (3, 3, *S)."""
    a = source / cf_norm(source, eps)
    helper_x = (a[0].abs() <= 0.6).to(a.dtype)  # the x axis unless the source is close to it, then y
    n = torch.linalg.cross(a, torch.stack([helper_x, 1 - helper_x, torch.zeros_like(helper_x)]), dim=0)
    n = n / cf_norm(n, eps)
    return 2.0 * n[:, None] * n[None] - cf_eye(n, n.ndim - 1)


def cf_rotation_from_dot_cross(
    c: torch.Tensor, v: torch.Tensor, linear: torch.Tensor, half_turn: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Minimal rotations R with R·â ∥ b for a unit â, from c = â·b, v = â×b and linear = c·I + [v]×
    (b need not be unit): R = (c·I + [v]×)/n + v·vᵀ/(n·(n + c)), n = |b| = √(c² + |v|²).

    Every input but n is linear in b, which lets `SKELLayer` get them from one GEMM in β. Antiparallel
    inputs (â·b̂ < −1 + 1e-6) get `half_turn`.

    Args:
        c: (*S); v: (3, *S); linear: (3, 3, *S); half_turn: (3, 3, *S) or broadcastable.
    Returns:
        (3, 3, *S).
    """
    n = (c.square() + v.square().sum(0)).clamp_min(eps * eps).sqrt()
    antiparallel = c < (-1.0 + 1e-6) * n
    safe = torch.where(antiparallel, n, n + c)  # keeps the unused branch (and its gradient) finite
    general = torch.addcmul(v.unsqueeze(1) * v.unsqueeze(0), linear, safe) / (n * safe)
    return torch.where(antiparallel, half_turn, general)


def cf_rotation_between(
    source: torch.Tensor, target: torch.Tensor, eps: float = 1e-8, half_turn: torch.Tensor | None = None
) -> torch.Tensor:
    """Minimal rotations R with R·source ∥ target, component first: (3, *S), (3, *S) → (3, 3, *S).

    `cf_rotation_from_dot_cross` of the normalised source; antiparallel inputs get `half_turn`
    (`cf_half_turn` of the source, computed when None).
    """
    a = source / cf_norm(source, eps)
    a = a.expand_as(target)
    c = (a * target).sum(0)
    v = torch.linalg.cross(a, target, dim=0)
    linear = c * cf_eye(c, c.ndim) + cf_skew(v)
    return cf_rotation_from_dot_cross(c, v, linear, cf_half_turn(source, eps) if half_turn is None else half_turn, eps)


# ------------------------------------------------------------------------------- shape stage
def blend_shapes(template: torch.Tensor, directions: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
    """Linear shape blend: template + directions·β.

    Args:
        template: (N, 3); directions: (N, 3, K); betas: (B, K).
    Returns:
        (B, N, 3).
    """
    return template + torch.einsum("bk,nck->bnc", betas, directions)


def local_offsets(joints: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """Each joint relative to its parent; the root keeps its absolute position.

    Args:
        joints: (..., J, 3).
    Returns:
        (..., J, 3).
    """
    return torch.cat([joints[..., :1, :], joints[..., 1:, :] - joints[..., list(parents[1:]), :]], dim=-2)


def first_children(parents: tuple[int, ...]) -> tuple[int, ...]:
    """The first child of every joint in index order; 0 for a leaf (SKEL's convention)."""
    return tuple(next((c for c in range(len(parents)) if parents[c] == j), 0) for j in range(len(parents)))


ULNA_SPANS = ((16, 17, 18), (21, 22, 23))  # ulna, radius, hand: an ulna aligns with the segment to the wrist


def bone_vectors(offsets: torch.Tensor, parents: tuple[int, ...], *, shaped: bool = True) -> torch.Tensor:
    """The vector each bone's rest frame is aligned with: its first child's offset, the ulnae's through
    the radius to the wrist; on the shaped body (`shaped`) the thorax takes the lumbar segment's.

    Linear in the offsets. Args: offsets (..., 24, 3). Returns: (..., 24, 3).
    """
    vectors = offsets[..., list(first_children(parents)), :].clone()
    for ulna, radius, hand in ULNA_SPANS:
        vectors[..., ulna, :] = offsets[..., radius, :] + offsets[..., hand, :]
    if shaped:
        vectors[..., 12, :] = vectors[..., 11, :]
    return vectors


def fixed_orientation_mask() -> torch.Tensor:
    """(24, 1) bool: the bones whose rest orientation does not follow the shape (Gk = I)."""
    fixed = torch.zeros(C.NUM_BONES, 1, dtype=torch.bool)
    fixed[list(C.FIXED_ORIENTATION_BONES)] = True
    return fixed


def rest_orientation_cf(
    model_vectors: torch.Tensor,
    body_vectors: torch.Tensor,
    per_joint_rot: torch.Tensor,
    fixed: torch.Tensor,
    half_turn: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rk01 = Gk·per_joint_rot, Gk the minimal rotation taking per_joint_rot·o (the model's bone vector)
    onto b (the body's); Gk = I for the leaves and the head. Component first.

    Args:
        model_vectors: (3, 24, 1) per_joint_rot·o; body_vectors: (3, 24, B); per_joint_rot: (3, 3, 24, 1);
        fixed: (24, 1) `fixed_orientation_mask` on the device; half_turn: `cf_half_turn(model_vectors)` or None.
    Returns:
        (3, 3, 24, B).
    """
    rotation = cf_rotation_between(model_vectors, body_vectors, half_turn=half_turn)
    gk = torch.where(fixed, cf_eye(body_vectors, 2), rotation)
    return cf_matmul(gk, per_joint_rot)


def bone_rest_orientation(
    offsets: torch.Tensor, apose_offsets: torch.Tensor, per_joint_rot: torch.Tensor, parents: tuple[int, ...]
) -> torch.Tensor:
    """Rk01: the rest orientation of each bone, aligning the model's bone with the shaped body's
    (`bone_vectors`, `rest_orientation_cf`).

    Args:
        offsets: (B, 24, 3) joint offsets of the shaped body (`local_offsets`).
        apose_offsets: (24, 3) translations of apose_rel_transfo.
        per_joint_rot: (24, 3, 3).
    Returns:
        (B, 24, 3, 3).
    """
    per_joint_rot_cf = rotations_to_cf(per_joint_rot[None])
    model = cf_matvec(per_joint_rot_cf, vectors_to_cf(bone_vectors(apose_offsets[None], parents, shaped=False)))
    body = vectors_to_cf(bone_vectors(offsets, parents))
    fixed = fixed_orientation_mask().to(offsets.device)
    return rotations_from_cf(rest_orientation_cf(model, body, per_joint_rot_cf, fixed))


# -------------------------------------------------------------------------------- pose stage
def dof_slots() -> torch.Tensor:
    """(3, 24) int64: the k-th DoF of each bone, or 46 (a zero angle: the identity) past its last."""
    slots = torch.full((3, C.NUM_BONES), C.NUM_DOFS, dtype=torch.int64)
    for bone in range(C.NUM_BONES):
        for k in range(C.BONE_NUM_DOFS[bone]):
            slots[k, bone] = C.BONE_FIRST_DOF[bone] + k
    return slots


def slot_axes(dof_axes: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The axis of every DoF slot, zero for the padding slot: (46, 3), (3, 24) → (3, 72), columns (slot, bone)."""
    padded = torch.cat([dof_axes, dof_axes.new_zeros(1, 3)])
    return padded[slots.flatten()].T


def slot_rotation_terms(axes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[a]× and [a]×² of component-first axes, shaped for `joint_rotations_cf`: (3, S) → two (3, 3, S, 1)."""
    skew = cf_skew(axes)[..., None]
    return skew, cf_matmul(skew, skew)


def joint_rotations_cf(
    q: torch.Tensor, slot_skew: torch.Tensor, slot_square: torch.Tensor, slots: torch.Tensor
) -> torch.Tensor:
    """Per-bone joint rotation Rp = R_3·R_2·R_1, R_k = exp(q_k·[a_k]×) by Rodrigues; cf `pose_repr.bone_rotations`.

    Args:
        q: (B, 46); slot_skew, slot_square: (3, 3, 72, 1) `slot_rotation_terms` of the axis of each DoF
        slot (k, bone); slots: (3, 24) from `dof_slots`, 46 (angle 0) past a bone's last DoF.
    Returns:
        (3, 3, 24, B).
    """
    angles = torch.nn.functional.pad(q.T, (0, 0, 0, 1)).index_select(0, slots.flatten())  # (72, B)
    eye = cf_eye(q, 2)
    per_slot = torch.addcmul(torch.addcmul(eye, slot_skew, angles.sin()), slot_square, 1 - angles.cos())
    first, second, third = per_slot.unflatten(2, (3, -1)).unbind(2)
    return cf_matmul(third, cf_matmul(second, first))


def cf_conjugate(frame: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """frame·rotations·frameᵀ: (3, 3, *S) twice → (3, 3, *S)."""
    return cf_matmul(cf_matmul(frame, rotations), cf_transpose(frame))


def local_rotations(rest_orientation: torch.Tensor, apose_rot: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Local rotation of each bone: R = F·Rp·Fᵀ, F = Rk01·Raᵀ (the DoF rotations moved into the bone frame).

    Args:
        rest_orientation: (B, 24, 3, 3) Rk01; apose_rot: (24, 3, 3) Ra; q: (B, 46).
    Returns:
        (B, 24, 3, 3).
    """
    slots = dof_slots().to(q.device)
    skew, square = slot_rotation_terms(slot_axes(torch.as_tensor(C.dof_axes(), dtype=q.dtype, device=q.device), slots))
    joint = joint_rotations_cf(q, skew, square, slots)
    frame = cf_matmul(rotations_to_cf(rest_orientation), cf_transpose(rotations_to_cf(apose_rot[None])))
    return rotations_from_cf(cf_conjugate(frame, joint))


_SPINE = tuple(C.SPINE_ARC_BONES.items())
NUM_TRANSLATION_SCALES = 2 + len(_SPINE)  # scapula width, thorax height, one length per spine arc


def translation_scale_vectors(joints: torch.Tensor) -> torch.Tensor:
    """The vectors whose lengths scale the pose-dependent translations (linear in the joints): the
    scapula width J_left − J_right, the thorax height J_thorax − J_lumbar, and per spine-arc bone the
    rest height of its segment (0, y_upper − y_lower, 0).

    Args: joints (..., 24, 3). Returns: (..., 5, 3).
    """
    width = joints[..., C.SCAPULA_BONES["left"], :] - joints[..., C.SCAPULA_BONES["right"], :]
    height = joints[..., 12, :] - joints[..., 11, :]
    upper = [upper for _, (_, _, _, upper) in _SPINE]
    lower = [lower for _, (_, _, lower, _) in _SPINE]
    rise = (joints[..., upper, 1] - joints[..., lower, 1])[..., None] * joints.new_tensor([0.0, 1.0, 0.0])
    return torch.cat([width[..., None, :], height[..., None, :], rise], dim=-2)


def translation_table() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The scapula and spine-arc translations as a sum of products of three factors, in tables.

    Scapula (s = −1 for the left one, which mirrors the right): with a' = s·abduction and
    t = s·elevation − π/4, the offset from q = 0 is [−s·(w/4)·(cos t·cos a' − cos π/4),
    −(h/2)·(sin t + sin π/4), (w/4)·sin a'] (w the width, h the thorax height). Spine arc of rest height
    L bent by α: chord sideways L·(1 − cos α)/α = L·sin(α/2)·sinc(α/2π), along L·sin α/α = L·sinc(α/π)
    (torch's sinc(x) = sin πx/πx, exact and smooth at 0); the offset is [−side(bend), along(bend) +
    along(ext) − 2L, −side(ext)]. Each factor is a row of the pool [sin(angles), sinc(angles), the
    five scales, 1], the angles being affine in q; cos x is sin(x + π/2).

    Returns:
        float64 tables: angle_matrix (A, 46) and angle_shift (A, 1): angles = angle_matrix·q + angle_shift;
        gather (3·F,): the pool rows of the first, second and third factor of every product;
        placement (72, F): coefficient of each product in each translation row (xyz, bone).
    """
    angles: list[tuple[float, int, float]] = []  # (factor, DoF, shift)
    products: dict[tuple, int] = {}
    placement: dict[tuple[int, int], float] = {}

    def sine(factor: float, dof: int, shift: float = 0.0) -> tuple[str, int]:
        angles.append((factor, dof, shift))
        return ("sin", len(angles) - 1)

    def sinc(factor: float, dof: int) -> tuple[str, int]:
        angles.append((factor, dof, 0.0))
        return ("sinc", len(angles) - 1)

    one = ("one", 0)

    def add(coefficient: float, axis: int, bone: int, *factors: tuple[str, int]) -> None:
        key = (*factors, one, one)[:3]
        column = products.setdefault(key, len(products))
        row = axis * C.NUM_BONES + bone
        placement[row, column] = placement.get((row, column), 0.0) + coefficient

    width, height = ("scale", 0), ("scale", 1)
    quarter_turn = math.pi / 2
    for side, bone in C.SCAPULA_BONES.items():
        s, abduction = (-1.0 if side == "left" else 1.0), C.BONE_FIRST_DOF[bone]
        elevation = abduction + 1
        tilt = -math.pi / 4
        add(-s / 4, 0, bone, width, sine(s, elevation, tilt + quarter_turn), sine(s, abduction, quarter_turn))
        add(s / 4 * math.cos(math.pi / 4), 0, bone, width)
        add(-0.5, 1, bone, height, sine(s, elevation, tilt))
        add(-0.5 * math.sin(math.pi / 4), 1, bone, height)
        add(0.25, 2, bone, width, sine(s, abduction))
    for index, (bone, (bending, extension, _, _)) in enumerate(_SPINE):
        length = ("scale", 2 + index)
        add(-1.0, 0, bone, length, sine(0.5, bending), sinc(0.5 / math.pi, bending))
        add(1.0, 1, bone, length, sinc(1 / math.pi, bending))
        add(1.0, 1, bone, length, sinc(1 / math.pi, extension))
        add(-2.0, 1, bone, length)
        add(-1.0, 2, bone, length, sine(0.5, extension), sinc(0.5 / math.pi, extension))

    count = len(angles)
    start = {"sin": 0, "sinc": count, "scale": 2 * count, "one": 2 * count + NUM_TRANSLATION_SCALES}
    angle_matrix = torch.zeros(count, C.NUM_DOFS, dtype=torch.float64)
    for row, (factor, dof, _) in enumerate(angles):
        angle_matrix[row, dof] = factor
    angle_shift = torch.tensor([[shift] for _, _, shift in angles], dtype=torch.float64)
    gather = torch.tensor([[start[kind] + i for kind, i in key] for key in products]).T.flatten()
    table = torch.zeros(3 * C.NUM_BONES, len(products), dtype=torch.float64)
    for (row, column), coefficient in placement.items():
        table[row, column] = coefficient
    return angle_matrix, angle_shift, gather, table


def pose_translations_cf(
    q: torch.Tensor, scales: torch.Tensor, one: torch.Tensor, offsets: torch.Tensor, table: tuple[torch.Tensor, ...]
) -> torch.Tensor:
    """Local translations: the rest offsets plus the pose-dependent ones (scapulae and spine arcs), component first.

    Args:
        q: (B, 46); scales: (5, B) lengths of `translation_scale_vectors`; one: (1, B) ones;
        offsets: (72, B) rest offsets, rows (xyz, bone); table: `translation_table()` on the device.
    Returns:
        (3, 24, B).
    """
    angle_matrix, angle_shift, gather, placement = table
    angles = torch.addmm(angle_shift, angle_matrix, q.T)
    pool = torch.cat([angles.sin(), angles.sinc(), scales, one])
    first, second, third = pool.index_select(0, gather).unflatten(0, (3, -1)).unbind(0)
    return torch.addmm(offsets, placement, first * second * third).unflatten(0, (3, -1))


def pose_translations(q: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """Pose-dependent translations added to the local offsets (scapulae and spine arcs).

    Args:
        q: (B, 46); joints: (B, 24, 3) rest joints of the shaped body.
    Returns:
        (B, 24, 3), zero for pure-rotation joints.
    """
    table = tuple(t.to(q) if t.is_floating_point() else t.to(q.device) for t in translation_table())
    scales = translation_scale_vectors(joints).norm(dim=-1).T
    zero = q.new_zeros(3 * C.NUM_BONES, q.shape[0])
    return vectors_from_cf(pose_translations_cf(q, scales, q.new_ones(1, q.shape[0]), zero, table))


# ------------------------------------------------------------------------------ chain stage
def chain_pointers(parents: tuple[int, ...]) -> torch.Tensor:
    """Pointer-jumping tables of the tree: row s maps each joint to its ancestor 2^s levels up, or to J
    (an identity slot) past the root; as many rows as it takes for every pointer to reach J. (S, J + 1)."""
    count = len(parents)
    pointer = [count if p < 0 else p for p in parents] + [count]
    rows = []
    while any(p != count for p in pointer[:count]):
        rows.append(pointer)
        pointer = [pointer[p] for p in pointer]
    return torch.as_tensor(rows, dtype=torch.int64).reshape(len(rows), count + 1)


def chain_cf(rotations: torch.Tensor, translations: torch.Tensor, pointers: torch.Tensor):
    """Compose local rigid transforms down the kinematic tree by pointer jumping, component first.

    After step s each joint holds its transform relative to its ancestor 2^(s+1) levels up, so
    log2(depth) steps give the world transforms (3 for SKEL's 8 levels instead of 23 sequential ones).

    Args:
        rotations: (3, 3, J, B); translations: (3, J, B), the root's being its absolute position;
        pointers: (S, J + 1) from `chain_pointers`.
    Returns:
        world rotations (3, 3, J, B) and world translations (3, J, B).
    """
    batch = rotations.shape[-1]
    identity = torch.cat([cf_eye(rotations, 2), rotations.new_zeros(3, 1, 1, 1)], dim=1).expand(3, 4, 1, batch)
    transforms = torch.cat([torch.cat([rotations, translations[:, None]], dim=1), identity], dim=2)  # [R | t]
    for pointer in pointers:
        parent = transforms.index_select(2, pointer)
        transforms = cf_matmul(parent.narrow(1, 0, 3), transforms)  # [R_p·R | R_p·t] ...
        transforms.select(1, 3).add_(parent.select(1, 3))  # ... + [0 | t_p]
    return transforms[:, :3, :-1], transforms[:, 3, :-1]


def chain(rotations: torch.Tensor, translations: torch.Tensor, parents: tuple[int, ...]):
    """Compose local rigid transforms down the kinematic tree (`chain_cf`).

    Args:
        rotations: (B, J, 3, 3); translations: (B, J, 3), the root's being its absolute position.
    Returns:
        world rotations (B, J, 3, 3) and world translations (B, J, 3).
    """
    pointers = chain_pointers(parents).to(rotations.device)
    world_r, world_t = chain_cf(rotations_to_cf(rotations), vectors_to_cf(translations), pointers)
    return rotations_from_cf(world_r), vectors_from_cf(world_t)


# ------------------------------------------------------------------------------- skin stage
def smpl_pose_feature(rotations: torch.Tensor, smpl_source: tuple[int, ...]) -> torch.Tensor:
    """SMPL pose blend-shape feature (R_smpl[1:] − I), each SMPL joint taking a SKEL bone's local rotation.

    Args:
        rotations: (B, 24, 3, 3) SKEL local rotations; smpl_source: for SMPL joints 1..23, the
            SKEL bone that drives it, or -1 for none (identity).
    Returns:
        (B, 207).
    """
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    padded = torch.cat([rotations, eye.expand(rotations.shape[0], 1, 3, 3)], dim=1)  # index 24: identity
    picked = padded[:, [s if s >= 0 else C.NUM_BONES for s in smpl_source]]
    return (picked - eye).flatten(1)


def apply_blended_affine(
    transforms: torch.Tensor, weights_t: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend per-bone affine maps [R | t] by per-point weights and apply each blend to its point.

    One GEMM blends the maps (no per-point 3×3 products); applying them is three fused
    multiply-adds over rows of N points.

    Args:
        transforms: (3, 4, J, B) component first; weights_t: (J, N); points: (B, 3, N) channels first.
    Returns:
        the moved points (B, 3, N) and the blended maps (B, 3, 4, N).
    """
    batch, count = points.shape[0], points.shape[-1]
    flat = transforms.permute(3, 0, 1, 2).reshape(batch, 12, transforms.shape[2])
    blended = torch.mm(flat.flatten(0, 1), weights_t).view(batch, 3, 4, count)
    # unbind, not indexing: its backward stacks the four gradients instead of filling four zero maps.
    columns, coordinates = blended.unbind(2), points.unbind(1)
    moved = columns[3]
    for column, coordinate in zip(columns[:3], coordinates, strict=True):
        moved = torch.addcmul(moved, column, coordinate[:, None])
    return moved, blended


def skinning_transforms(world_r: torch.Tensor, world_t: torch.Tensor, rest_joints: torch.Tensor) -> torch.Tensor:
    """The bone transforms relative to the rest joints, [R | t − R·J], component first:
    (3, 3, J, B), (3, J, B), (3, J, B) → (3, 4, J, B)."""
    return torch.cat([world_r, (world_t - cf_matvec(world_r, rest_joints))[:, None]], dim=1)


def linear_blend_skinning(
    points: torch.Tensor, weights: torch.Tensor, world_r: torch.Tensor, world_t: torch.Tensor, rest_joints: torch.Tensor
) -> torch.Tensor:
    """Skin rest-pose points with the bone transforms taken relative to the rest joints.

    Args:
        points: (B, N, 3); weights: (N, J); world_r: (B, J, 3, 3); world_t, rest_joints: (B, J, 3).
    Returns:
        (B, N, 3).
    """
    transforms = skinning_transforms(rotations_to_cf(world_r), vectors_to_cf(world_t), vectors_to_cf(rest_joints))
    return apply_blended_affine(transforms, weights.T, points.transpose(1, 2))[0].transpose(1, 2)


def bone_scales(offsets: torch.Tensor, apose_offsets: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """Per-bone scale of the skeleton mesh: the shaped body's bone length over the model's.

    Ulnae take their radius's scale, the thorax the lumbar's, the lumbar compares heights and
    leaves their parent's. (The official model also rescales some bones per axis from
    SMPL-specific skin vertices; that part is left out.)

    Args:
        offsets: (B, 24, 3); apose_offsets: (24, 3).
    Returns:
        (B, 24).
    """
    child = first_children(parents)
    ratio = offsets.norm(dim=-1) / apose_offsets.norm(dim=-1).clamp_min(1e-8)
    scales = [ratio[:, c] if c else None for c in child]
    scales[11] = offsets[:, 11, 1].abs() / apose_offsets[11, 1].abs().clamp_min(1e-8)
    scales[12] = scales[11]
    scales[16], scales[21] = scales[17], scales[22]
    for bone, parent in enumerate(parents):
        if scales[bone] is None:
            scales[bone] = scales[parent]
    return torch.stack(scales, dim=1)


# --------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class PosedSkeleton:
    """The skeleton of one forward pass, component first (B samples)."""

    rest_joints: torch.Tensor  # (3, 24, B)
    rest_orientation: torch.Tensor  # (3, 3, 24, B) Rk01
    apose_rot: torch.Tensor  # (3, 3, 24, 1) Ra
    local_r: torch.Tensor  # (3, 3, 24, B)
    translations: torch.Tensor  # (3, 24, B) local translations (offsets and the pose-dependent ones)
    world_r: torch.Tensor  # (3, 3, 24, B)
    world_t: torch.Tensor  # (3, 24, B) joints before the global translation

    @property
    def frame(self) -> torch.Tensor:
        """(3, 3, 24, B) F = Rk01·Raᵀ, local R = F·Rp·Fᵀ (only the Jacobians need it: not built by the pass)."""
        return cf_matmul(self.rest_orientation, cf_transpose(self.apose_rot))


@dataclass(frozen=True)
class SkinArrays:
    """The skin arrays of some vertices (all, or a regressor's support), channels first (N vertices)."""

    template: torch.Tensor  # (3N,) x of every vertex, then y, then z
    shapedirs: torch.Tensor  # (10, 3N)
    posedirs: torch.Tensor  # (9·F, 3N) rows (x, y, driven SMPL joint) of the pose feature
    pose_constant: torch.Tensor  # (3N,) −Σ of the diagonal rows: the feature is R − I
    weights_t: torch.Tensor  # (24, N) skinning weights, transposed

    @property
    def count(self) -> int:
        return self.weights_t.shape[1]

    def select(self, vertex_ids: torch.Tensor) -> SkinArrays:
        """The arrays of `vertex_ids` only."""

        def pick(flat: torch.Tensor) -> torch.Tensor:
            return flat.unflatten(-1, (3, -1))[..., vertex_ids].flatten(-2)

        return SkinArrays(
            pick(self.template), pick(self.shapedirs), pick(self.posedirs), pick(self.pose_constant),
            self.weights_t[:, vertex_ids],
        )  # fmt: skip


@dataclass(frozen=True)
class KeypointSkinning:
    """A vertex regressor folded into the skinning (P pairs of a keypoint and a bone that skins its vertices).

    keypoint_k = Σ_n r_kn·Σ_j w_nj·(R_j·v_n + t_j − R_j·J_j), v_n = template + shapedirs·β + posedirs·f,
    regroups by linearity into Σ over the pairs p = (k, j) of R_j·(a_p − c_p·J_j) + c_p·t_j, with
    a_p = Σ_n r_kn·w_nj·v_n (linear in β and the pose feature f: one small GEMM) and c_p = Σ_n r_kn·w_nj.
    The same numbers as skinning the regressor's support and regressing it, a few times fewer operations.
    """

    bones: torch.Tensor  # (P,) int64, the bone of each pair
    coefficients: torch.Tensor  # (3P, 10 + 9·F) ∂a/∂[β | f], rows (xyz, pair)
    constant: torch.Tensor  # (3P, 1) a at β = 0, R = I
    weight: torch.Tensor  # (P,) c_p
    gather: torch.Tensor  # (K, P) 1 where pair p belongs to keypoint k
    row_sums: torch.Tensor  # (K,) Σ_n r_kn: how much of the global translation each keypoint carries
    regressor: VertexRegressor  # what was folded (kept so that the cache key stays alive)

    @classmethod
    def fold(cls, regressor: VertexRegressor, support: SkinArrays) -> KeypointSkinning:
        """Fold `regressor` into `support`, the skin arrays of its vertex_ids."""
        weights = regressor.weights.to(support.template)
        per_bone = weights[:, None, :] * support.weights_t[None]  # (K, 24, S)
        keypoint, bone = torch.nonzero(per_bone.abs().sum(-1) > 0, as_tuple=True)
        pair = per_bone[keypoint, bone]  # (P, S)

        def fold_rows(flat: torch.Tensor) -> torch.Tensor:  # (R, 3S) → (R, 3P)
            return torch.einsum("ps,rcs->rcp", pair, flat.unflatten(-1, (3, -1))).flatten(1)

        constant = fold_rows((support.template + support.pose_constant)[None])[0]
        gather = torch.zeros(weights.shape[0], len(bone), dtype=weights.dtype, device=weights.device)
        gather[keypoint, torch.arange(len(bone), device=weights.device)] = 1.0
        return cls(
            bones=bone,
            coefficients=torch.cat([fold_rows(support.shapedirs), fold_rows(support.posedirs)]).T.contiguous(),
            constant=constant[:, None],
            weight=pair.sum(-1),
            gather=gather,
            row_sums=weights.sum(-1),
            regressor=regressor,
        )

    def keypoints(self, pose: PosedSkeleton, pose_feature: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        """Keypoints before the global translation, component first: (3, K, B).

        Args:
            pose: the skeleton; pose_feature: (9·F, B) its local rotations' feature rows; betas: (B, 10).
        """
        inputs = torch.cat([betas.T, pose_feature])
        points = torch.addmm(self.constant, self.coefficients, inputs).view(3, len(self.bones), -1)  # a_p (3, P, B)
        rotation = pose.world_r.index_select(2, self.bones)
        weight = self.weight[:, None]
        moved = points - weight * pose.rest_joints.index_select(1, self.bones)
        placed = cf_matvec(rotation, moved) + weight * pose.world_t.index_select(1, self.bones)
        return torch.matmul(self.gather, placed)


# --------------------------------------------------------------------------------------- module
def _dense(matrix: sp.spmatrix) -> torch.Tensor:
    return torch.as_tensor(np.asarray(matrix.toarray()), dtype=torch.float32)


_CACHE_SIZE = 8  # vertex subsets and folded regressors kept by SKELLayer
# Row blocks of `SKELLayer.rest_rows`: rest joints, their offsets, c·I + [v]×, v, c, translation scales, 1.
_REST_ROWS = {"joints": 72, "offsets": 72, "linear": 216, "v": 72, "c": 24, "scales": 15, "one": 1}  # 24 bones
_TRANSLATION_TABLE = ("translation_angles", "translation_shift", "translation_gather", "translation_placement")


class SKELLayer(nn.Module):
    """SKEL forward pass: q (B, 46), β (B, 10), translation (B, 3) → skin, skeleton, joints."""

    def __init__(self, model: SkelModelData):
        super().__init__()
        f32 = torch.float32
        self.parents = model.parents
        self.faces = torch.as_tensor(model.skin_template_f)
        self.skel_faces = torch.as_tensor(model.skel_template_f)
        joint_regressor = _dense(model.J_regressor_osim)
        template = torch.as_tensor(model.skin_template_v, dtype=f32)
        shapedirs = torch.as_tensor(model.shapedirs, dtype=f32)
        self.register_buffer("skin_template", template)
        self.register_buffer("shapedirs", shapedirs)
        self.register_buffer("skin_weights", _dense(model.skin_weights))
        self.register_buffer("smpl_joint_regressor", _dense(model.J_regressor))
        # Joints depend on the shape only through W·template and W·shapedirs: the joints-only
        # path never builds the mesh.
        self.register_buffer("joint_template", joint_regressor @ template)
        self.register_buffer("joint_shapedirs", torch.einsum("jv,vck->jck", joint_regressor, shapedirs))
        self.register_buffer("apose_rot", torch.as_tensor(model.apose_rel_transfo[:, :3, :3], dtype=f32))
        self.register_buffer("apose_offsets", torch.as_tensor(model.apose_rel_transfo[:, :3, 3], dtype=f32))
        self.register_buffer("per_joint_rot", torch.as_tensor(model.per_joint_rot, dtype=f32))
        self.register_buffer("skel_template", torch.as_tensor(model.skel_template_v, dtype=f32))
        self.register_buffer("skel_weights", _dense(model.skel_weights))
        self.register_buffer("skel_weights_rigid", _dense(model.skel_weights_rigid))
        num_smpl = model.J_regressor.shape[0]
        # Where several SKEL bones map to one SMPL joint the last one wins, as in the official code.
        source = [-1] * num_smpl
        for bone, smpl_joint in enumerate(C.SKEL_TO_SMPL_JOINT):
            source[smpl_joint] = bone
        self.smpl_source = tuple(source[1:])
        self._register_derived(model)
        self._cache: dict[tuple[str, int], tuple[object, torch.Tensor, object]] = {}

    def _register_derived(self, model: SkelModelData) -> None:
        """Constant arrays of the component-first forward pass (not part of the state dict)."""

        def derived(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.contiguous(), persistent=False)

        per_joint_rot = rotations_to_cf(self.per_joint_rot[None])
        derived("per_joint_rot_cf", per_joint_rot)
        derived("apose_rot_cf", rotations_to_cf(self.apose_rot[None]))
        model_vectors = vectors_to_cf(bone_vectors(self.apose_offsets[None], self.parents, shaped=False))
        model_vectors = cf_matvec(per_joint_rot, model_vectors)  # (3, 24, 1)
        derived("model_half_turn", cf_half_turn(model_vectors))
        self._unit_model_vectors = (model_vectors / cf_norm(model_vectors, 1e-8))[..., 0].T  # (24, 3)
        # Everything the skeleton needs from the rest joints is affine in them, so in β: one GEMM.
        basis = torch.cat([self.joint_template[None], self.joint_shapedirs.permute(2, 0, 1)])  # (11, 24, 3)
        rows = self.rest_rows(basis)
        derived("rest_constant", rows[0, :, None] + self._rest_rows_constant())
        derived("rest_matrix", rows[1:].T)
        # The DoF axes turned into their bone's rest frame P·Raᵀ: local R = Gk·Rp'·Gkᵀ, Rk01 = Gk·P.
        slots = dof_slots()
        axes = slot_axes(torch.as_tensor(C.dof_axes(), dtype=torch.float32), slots).unflatten(1, (3, -1))
        rest_frame = cf_matmul(per_joint_rot, cf_transpose(self.apose_rot_cf))[..., 0]  # (3, 3, 24)
        skew, square = slot_rotation_terms(cf_matvec(rest_frame.unsqueeze(2), axes).flatten(1))
        derived("slot_skew", skew)
        derived("slot_square", square)
        derived("dof_slots", slots)
        for name, value in zip(_TRANSLATION_TABLE, translation_table(), strict=True):
            derived(name, value.float() if value.is_floating_point() else value)
        derived("chain_pointers", chain_pointers(self.parents))
        # Pose feature: only the SMPL joints some bone drives (the others' R − I is zero).
        driven = [(smpl - 1, bone) for smpl, bone in enumerate(self.smpl_source, start=1) if bone >= 0]
        derived("feature_bones", torch.as_tensor([bone for _, bone in driven]))
        posedirs = torch.as_tensor(model.posedirs, dtype=torch.float32)  # (V, 3, 207)
        rows = [9 * joint + 3 * x + y for x in range(3) for y in range(3) for joint, _ in driven]
        diagonal = [9 * joint + 4 * x for x in range(3) for joint, _ in driven]
        derived("skin_template_cf", self.skin_template.T.flatten())
        derived("shapedirs_cf", self.shapedirs.permute(2, 1, 0).flatten(1))
        derived("posedirs_cf", posedirs[..., rows].permute(2, 1, 0).flatten(1))
        derived("pose_constant_cf", -posedirs[..., diagonal].sum(-1).T.flatten())
        derived("skin_weights_t", self.skin_weights.T)
        derived("skel_template_cf", self.skel_template.T)

    @classmethod
    def from_file(cls, path: Path | str) -> SKELLayer:
        return cls(read_skel_model(path))

    # -- the stages, each usable on its own --------------------------------------------------
    def rest_joints(self, betas: torch.Tensor) -> torch.Tensor:
        """Anatomical joints of the shaped body in the rest pose: (B, 10) → (B, 24, 3)."""
        return blend_shapes(self.joint_template, self.joint_shapedirs, betas)

    def skin_arrays(self, vertex_ids: torch.Tensor | None = None) -> SkinArrays:
        """The skin arrays of all vertices, or of `vertex_ids` (kept for the last few id tensors seen)."""
        full = SkinArrays(
            self.skin_template_cf, self.shapedirs_cf, self.posedirs_cf, self.pose_constant_cf, self.skin_weights_t
        )
        if vertex_ids is None:
            return full
        return self._cached("subset", vertex_ids, lambda: full.select(vertex_ids.to(full.template.device)))

    def keypoint_skinning(self, regressor: VertexRegressor) -> KeypointSkinning:
        """`regressor` folded into the skinning (kept for the last few regressors seen)."""
        support = self.skin_arrays(regressor.vertex_ids)
        return self._cached("keypoints", regressor.weights, lambda: KeypointSkinning.fold(regressor, support))

    def _cached(self, kind: str, key: torch.Tensor, build):
        """`build()` for the tensor `key`, rebuilt when the layer moved to another device or dtype."""
        like = self.skin_template_cf
        entry = self._cache.get((kind, id(key)))
        if entry is None or entry[0] is not key or entry[1].device != like.device or entry[1].dtype != like.dtype:
            while len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            entry = (key, like, build())
            self._cache[(kind, id(key))] = entry
        return entry[2]

    def rest_rows(self, joints: torch.Tensor) -> torch.Tensor:
        """The skeleton's inputs as linear functions of the rest joints, without `_rest_rows_constant`:
        (N, 24, 3) → (N, 472), blocks of `_REST_ROWS` (each channels first, bones last).

        The bone rest rotations Gk need c = â·b, v = â×b and c·I + [v]× (`cf_rotation_from_dot_cross`;
        â the model's unit bone vectors, b the body's); the fixed bones' rows are zero, their constant
        c = 1 making Gk = I.
        """
        offsets = local_offsets(joints, self.parents)
        body = bone_vectors(offsets, self.parents)
        moving = (~fixed_orientation_mask()).to(joints)  # (24, 1)
        unit = self._unit_model_vectors.to(joints)
        c = (body * unit).sum(-1) * moving[:, 0]
        v = torch.linalg.cross(unit.expand_as(body), body, dim=-1) * moving
        linear = c[..., None, None] * torch.eye(3).to(joints) + rotations_from_cf(cf_skew(vectors_to_cf(v)))
        blocks = (
            joints.transpose(-1, -2), offsets.transpose(-1, -2), linear.permute(0, 2, 3, 1), v.transpose(-1, -2),
            c, translation_scale_vectors(joints), torch.zeros_like(c[:, :1]),
        )  # fmt: skip
        return torch.cat([block.flatten(1) for block in blocks], dim=1)

    def _rest_rows_constant(self) -> torch.Tensor:
        """(472, 1): c = 1 and c·I = I for the fixed bones, and the row of ones."""
        constant = torch.zeros(sum(_REST_ROWS.values()))
        start = dict(zip(_REST_ROWS, np.cumsum([0, *_REST_ROWS.values()]).tolist(), strict=False))
        for bone in C.FIXED_ORIENTATION_BONES:
            constant[start["c"] + bone] = 1.0
            for axis in range(3):
                constant[start["linear"] + (4 * axis) * C.NUM_BONES + bone] = 1.0
        constant[start["one"]] = 1.0
        return constant[:, None]

    def posed_skeleton(self, q: torch.Tensor, betas: torch.Tensor) -> PosedSkeleton:
        """The whole skeleton stage, component first: q (B, 46), β (B, 10)."""
        return self._pose(q, torch.addmm(self.rest_constant, self.rest_matrix, betas.T))

    def _pose(self, q: torch.Tensor, rows: torch.Tensor) -> PosedSkeleton:
        """The skeleton from q (B, 46) and the rest rows (472, B) of `rest_rows`."""
        batch = rows.shape[1]
        rest_joints, offsets, linear, v, c, scale_vectors, one = rows.split(tuple(_REST_ROWS.values()))
        rest_joints = rest_joints.view(3, C.NUM_BONES, batch)
        linear, v = linear.view(3, 3, C.NUM_BONES, batch), v.view(3, C.NUM_BONES, batch)
        gk = cf_rotation_from_dot_cross(c, v, linear, self.model_half_turn)
        rest_orientation = cf_matmul(gk, self.per_joint_rot_cf)
        local_r = cf_conjugate(gk, joint_rotations_cf(q, self.slot_skew, self.slot_square, self.dof_slots))
        scales = scale_vectors.view(NUM_TRANSLATION_SCALES, 3, batch).square().sum(1).sqrt()
        table = tuple(getattr(self, name) for name in _TRANSLATION_TABLE)
        translations = pose_translations_cf(q, scales, one, offsets, table)
        world_r, world_t = chain_cf(local_r, translations, self.chain_pointers)
        return PosedSkeleton(rest_joints, rest_orientation, self.apose_rot_cf, local_r, translations, world_r, world_t)

    def pose_skeleton(self, q: torch.Tensor, rest_joints: torch.Tensor):
        """Local rotations, world rotations and translations, and bone rest orientations.

        Returns:
            local_r (B, 24, 3, 3), world_r (B, 24, 3, 3), world_t (B, 24, 3), rest_orientation (B, 24, 3, 3).
        """
        rows = self.rest_rows(rest_joints).T + self._rest_rows_constant().to(rest_joints)
        pose = self._pose(q, rows)
        return (*(rotations_from_cf(r) for r in (pose.local_r, pose.world_r)), vectors_from_cf(pose.world_t),
                rotations_from_cf(pose.rest_orientation))  # fmt: skip

    def joints(self, q: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joints-only fast path: SKEL joint positions (B, 24, 3) and orientations (B, 24, 3, 3), no mesh."""
        pose = self.posed_skeleton(q, betas)
        joints = vectors_from_cf(pose.world_t) + trans[:, None]
        return joints, rotations_from_cf(cf_matmul(pose.world_r, pose.rest_orientation))

    def pose_feature(self, pose: PosedSkeleton) -> torch.Tensor:
        """The local rotations of the bones that drive SMPL pose blend shapes, rows (x, y, bone): (9·F, B).
        `SkinArrays.posedirs` and `pose_constant` turn it into the SMPL feature R − I."""
        return pose.local_r.index_select(2, self.feature_bones).flatten(0, 2)

    def pose_skin(
        self, pose: PosedSkeleton, betas: torch.Tensor, arrays: SkinArrays, pose_blendshapes: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Shape, pose-correct and skin the vertices of `arrays`, channels first, before the global translation.

        Returns:
            skin (B, 3, N), v_shaped (B, 3, N), pose_offsets (B, 3, N) or None, blended maps (B, 3, 4, N).
        """
        batch = betas.shape[0]
        v_shaped = torch.addmm(arrays.template, betas, arrays.shapedirs).view(batch, 3, -1)
        points, pose_offsets = v_shaped, None
        if pose_blendshapes:
            feature = self.pose_feature(pose)
            pose_offsets = torch.addmm(arrays.pose_constant, feature.T, arrays.posedirs).view(batch, 3, -1)
            points = v_shaped + pose_offsets
        transforms = skinning_transforms(pose.world_r, pose.world_t, pose.rest_joints)
        skin, blended = apply_blended_affine(transforms, arrays.weights_t, points)
        return skin, v_shaped, pose_offsets, blended

    def forward(
        self,
        poses: torch.Tensor,
        betas: torch.Tensor,
        trans: torch.Tensor | None = None,
        *,
        skeleton_mesh: bool = False,
        pose_blendshapes: bool = True,
        vertex_ids: torch.Tensor | None = None,
    ) -> SkelOutput:
        """Full forward pass.

        Args:
            poses: (B, 46) q; betas: (B, 10); trans: (B, 3) or None.
            skeleton_mesh: also pose the bone meshes (heavy; off by default).
            vertex_ids: skin only these vertices (e.g. a keypoint regressor's support); then the
                SMPL-style joints, which need the whole skin, are not computed.
        """
        if poses.ndim != 2 or poses.shape[1] != C.NUM_DOFS:
            raise ValueError(f"poses must have shape (B, {C.NUM_DOFS}), got {tuple(poses.shape)}")
        if betas.shape != (poses.shape[0], C.NUM_BETAS):
            raise ValueError(f"betas must have shape ({poses.shape[0]}, {C.NUM_BETAS}), got {tuple(betas.shape)}")
        if trans is None:
            trans = poses.new_zeros(poses.shape[0], 3)
        pose = self.posed_skeleton(poses, betas)
        skin, v_shaped, pose_offsets, _ = self.pose_skin(pose, betas, self.skin_arrays(vertex_ids), pose_blendshapes)
        skin = skin + trans[:, :, None]

        skel_verts = None
        if skeleton_mesh:
            skel_verts = self._skeleton_vertices_cf(pose) + trans[:, None]
        return SkelOutput(
            skin_verts=skin.transpose(1, 2).contiguous(),  # per-vertex math downstream wants xyz together
            skel_verts=skel_verts,
            joints=vectors_from_cf(pose.world_t) + trans[:, None],
            joints_ori=rotations_from_cf(cf_matmul(pose.world_r, pose.rest_orientation)),
            smpl_joints=None if vertex_ids is not None else self._smpl_joints(skin),
            joints_tpose=vectors_from_cf(pose.rest_joints),
            v_shaped=v_shaped.transpose(1, 2),
            pose_offsets=None if pose_offsets is None else pose_offsets.transpose(1, 2),
            poses=poses,
            betas=betas,
            trans=trans,
        )

    def _smpl_joints(self, skin: torch.Tensor) -> torch.Tensor:
        """SMPL J_regressor on a channels-first skin: (B, 3, V) → (B, 24, 3)."""
        return torch.mm(skin.flatten(0, 1), self.smpl_joint_regressor.T).view(skin.shape[0], 3, -1).transpose(1, 2)

    def skeleton_vertices(self, rest_joints, rest_orientation, world_r, world_t) -> torch.Tensor:
        """Bone meshes: scaled in their own frames, placed by [Rk01 | J], then skinned. (B, Nk, 3)."""
        rest_joints, world_t = vectors_to_cf(rest_joints), vectors_to_cf(world_t)
        return self._skeleton_mesh(rest_joints, rotations_to_cf(rest_orientation), rotations_to_cf(world_r), world_t)

    def _skeleton_vertices_cf(self, pose: PosedSkeleton) -> torch.Tensor:
        return self._skeleton_mesh(pose.rest_joints, pose.rest_orientation, pose.world_r, pose.world_t)

    def _skeleton_mesh(self, rest_joints, rest_orientation, world_r, world_t) -> torch.Tensor:
        """`skeleton_vertices` on component-first inputs."""
        offsets = local_offsets(vectors_from_cf(rest_joints), self.parents)
        scale = bone_scales(offsets, self.apose_offsets, self.parents) @ self.skel_weights_rigid.T  # (B, Nk)
        placement = torch.cat([rest_orientation, rest_joints[:, None]], dim=1)
        aligned, _ = apply_blended_affine(placement, self.skel_weights_rigid.T, scale[:, None] * self.skel_template_cf)
        transforms = skinning_transforms(world_r, world_t, rest_joints)
        return apply_blended_affine(transforms, self.skel_weights.T, aligned)[0].transpose(1, 2)

    def keypoints(self, poses, betas, trans, regressor: VertexRegressor) -> torch.Tensor:
        """Keypoints regressed from the posed skin, through the regressor's vertices only (`KeypointSkinning`):
        q (B, 46), β (B, 10), trans (B, 3) or None → (B, K, 3)."""
        folded = self.keypoint_skinning(regressor)
        pose = self.posed_skeleton(poses, betas)
        points = vectors_from_cf(folded.keypoints(pose, self.pose_feature(pose), betas))
        return points if trans is None else points + folded.row_sums[:, None] * trans[:, None]
