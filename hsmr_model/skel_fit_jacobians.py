"""The forward pass and Jacobians SMPL → SKEL fitting (`hsmr_model.skel_fit`) iterates on.

The fitter poses only a well-spread subset of the skin (`SkinPart`) plus the 24 joints, and needs
the Gauss–Newton curvature of its residuals: analytic Jacobians with respect to q, β and the
translation, exact for the joints; for the skin, blended vertices are turned as a whole about each
joint and the pose correctives' derivatives are left out. x = [q | β | trans] (`NUM_PARAMS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hsmr_model import skel_constants as C
from hsmr_model.rotations import rotation_about_axis, skew
from hsmr_model.skel_layer import SKELLayer, SkinArrays, bone_vectors, local_offsets, rotations_from_cf, vectors_from_cf


@dataclass(frozen=True)
class SkinPart:
    """The SKEL skin arrays restricted to some vertices (all of them, or the fitting subset)."""

    arrays: SkinArrays  # what the forward pass skins (channels first)
    shapedirs: torch.Tensor  # (N, 3, 10)
    weights: torch.Tensor  # (N, 24)
    influence: torch.Tensor  # (N, 24): weight of the bones in each bone's subtree

    @classmethod
    def of(cls, skel: SKELLayer, vertex_ids: torch.Tensor | None = None) -> SkinPart:
        """The layer's skin arrays at `vertex_ids` (all vertices when None)."""
        shapedirs, weights = skel.shapedirs, skel.skin_weights
        if vertex_ids is not None:
            ids = vertex_ids.to(shapedirs.device)
            shapedirs, weights = shapedirs[ids], weights[ids]
        influence = weights @ subtree_matrix(skel.parents).to(weights).T
        return cls(skel.skin_arrays(vertex_ids), shapedirs, weights, influence)


def subtree_matrix(parents: tuple[int, ...]) -> torch.Tensor:
    """D[c, b] = 1 where bone b lies in the subtree of bone c (c itself included). (J, J)."""
    d = torch.zeros(len(parents), len(parents))
    for bone in range(len(parents)):
        ancestor = bone
        while ancestor >= 0:
            d[ancestor, bone] = 1.0
            ancestor = parents[ancestor]
    return d


def homogeneous(points: torch.Tensor) -> torch.Tensor:
    """(..., 3) → (..., 4) with a trailing 1."""
    return torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)


@dataclass(frozen=True)
class PosedBody:
    """A SKEL forward pass with what the Jacobian needs (B samples, N skin points)."""

    skin: torch.Tensor  # (B, N, 3)
    joints: torch.Tensor  # (B, 24, 3), translation included
    skin_rotation: torch.Tensor  # (B, N, 3, 3) blended rotation of each skin point
    points: torch.Tensor  # (B, N, 3) the shaped and pose-corrected points before skinning
    local_r: torch.Tensor  # (B, 24, 3, 3)
    translations: torch.Tensor  # (B, 24, 3) local translations (offsets and pose-dependent ones)
    world_r: torch.Tensor  # (B, 24, 3, 3)
    frame: torch.Tensor  # (B, 24, 3, 3) F = Rk01·Raᵀ, local R = F·Rp·Fᵀ
    rest_joints: torch.Tensor  # (B, 24, 3)


def pose_body(skel: SKELLayer, part: SkinPart, q: torch.Tensor, betas: torch.Tensor, trans: torch.Tensor) -> PosedBody:
    """SKEL skin of `part` and the joints: `SKELLayer.forward`'s stages, kept with what the Jacobian needs.

    Args:
        q: (B, 46); betas: (B, 10); trans: (B, 3).
    """
    pose = skel.posed_skeleton(q, betas)
    skin, v_shaped, pose_offsets, blended = skel.pose_skin(pose, betas, part.arrays)
    return PosedBody(
        (skin + trans[:, :, None]).transpose(1, 2),
        vectors_from_cf(pose.world_t) + trans[:, None],
        blended[:, :, :3].permute(0, 3, 1, 2),
        (v_shaped + pose_offsets).transpose(1, 2),
        rotations_from_cf(pose.local_r),
        vectors_from_cf(pose.translations),
        rotations_from_cf(pose.world_r),
        rotations_from_cf(pose.frame),
        vectors_from_cf(pose.rest_joints),
    )


_DOF_BONE = tuple(d.bone for d in C.DOFS)


NUM_PARAMS = C.NUM_DOFS + C.NUM_BETAS + 3  # x = [q | β | trans]


def parent_rotations(world_r: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """World rotation of each bone's parent, the identity for the root. (B, J, 3, 3) → (B, J, 3, 3)."""
    eye = torch.eye(3, dtype=world_r.dtype, device=world_r.device).expand(world_r.shape[0], 1, 3, 3)
    return torch.cat([eye, world_r], dim=1)[:, [p + 1 for p in parents]]


def dof_world_axes(q: torch.Tensor, frame: torch.Tensor, parent_world: torch.Tensor) -> torch.Tensor:
    """World axis ω_k of every DoF: ∂(bone world rotation)/∂q_k = [ω_k]×·(bone world rotation).

    With Rp = R_n⋯R_1 (first DoF applied first), ω_i = W_parent·F·R_n⋯R_{i+1}·a_i.

    Args:
        q: (B, 46); frame, parent_world: (B, 24, 3, 3).
    Returns:
        (B, 46, 3).
    """
    axes = torch.as_tensor(C.dof_axes(), dtype=q.dtype, device=q.device)
    per_dof = rotation_about_axis(q, axes)
    omega: list[torch.Tensor] = [q] * C.NUM_DOFS
    for bone in range(C.NUM_BONES):
        base = parent_world[:, bone] @ frame[:, bone]
        first = C.BONE_FIRST_DOF[bone]
        for k in reversed(range(first, first + C.BONE_NUM_DOFS[bone])):
            omega[k] = base @ axes[k]
            base = base @ per_dof[:, k]
    return torch.stack(omega, dim=1)


def _arc_derivatives(angle: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d/dα of the arc chord x = L·(1 − cos α)/α, y = L·sin α/α (`skel_layer.translation_table`), with its
    small-angle series."""
    small = angle.abs() < 1e-3
    a = torch.where(small, torch.ones_like(angle), angle)
    dx = torch.where(small, length * (0.5 - angle**2 / 8), length * (a * torch.sin(a) - 1 + torch.cos(a)) / a**2)
    dy = torch.where(small, -length * angle / 3, length * (a * torch.cos(a) - torch.sin(a)) / a**2)
    return dx, dy


def pose_translation_jacobian(q: torch.Tensor, rest_joints: torch.Tensor) -> torch.Tensor:
    """∂(translation `pose_translations` adds to a DoF's bone)/∂q_k, in the parent's frame.

    Args:
        q: (B, 46); rest_joints: (B, 24, 3).
    Returns:
        (B, 46, 3), zero for the DoFs that only rotate.
    """
    out = [torch.zeros_like(rest_joints[:, 0])] * C.NUM_DOFS
    width = (rest_joints[:, 19] - rest_joints[:, 14]).norm(dim=-1) / 4
    half_height = (rest_joints[:, 12] - rest_joints[:, 11]).norm(dim=-1) / 2
    zero = torch.zeros_like(width)
    for side, bone in C.SCAPULA_BONES.items():
        first = C.BONE_FIRST_DOF[bone]
        # x = s·w·cos t·cos a', y = −h·sin t, z = w·sin a' with a' = m·a, t = m·e − π/4 (skel_layer.translation_table).
        s, m = (1.0, -1.0) if side == "left" else (-1.0, 1.0)
        a, t = m * q[:, first], m * q[:, first + 1] - math.pi / 4
        out[first] = m * torch.stack([-s * width * torch.cos(t) * torch.sin(a), zero, width * torch.cos(a)], -1)
        out[first + 1] = m * torch.stack(
            [-s * width * torch.sin(t) * torch.cos(a), -half_height * torch.cos(t), zero], -1
        )
    for bend, ext, lower, upper in C.SPINE_ARC_BONES.values():
        length = (rest_joints[:, upper, 1] - rest_joints[:, lower, 1]).abs()
        dx, dy = _arc_derivatives(q[:, bend], length)
        out[bend] = torch.stack([-dx, dy, zero], -1)
        dx, dy = _arc_derivatives(q[:, ext], length)
        out[ext] = torch.stack([zero, dy, -dx], -1)
    return torch.stack(out, dim=1)


def minimal_rotation_rate(source: torch.Tensor, target: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
    """Angular velocity ω (dR·Rᵀ = [ω]×) of `rotation_between_vectors(source, target)` as the target
    moves along d_target: ω = b̂ × db̂ − ((â × b̂)·db̂ / (1 + â·b̂))·b̂, db̂ = (I − b̂b̂ᵀ)·d/|b|.

    Args:
        source, target: (..., 3); d_target: (..., 3, K), K directions.
    Returns:
        (..., K, 3).
    """
    a = source / source.norm(dim=-1, keepdim=True)
    length = target.norm(dim=-1, keepdim=True)
    b = target / length
    d_b = (d_target - b[..., None] * (b[..., None] * d_target).sum(-2, keepdim=True)) / length[..., None]
    d_b = d_b.transpose(-1, -2)  # (..., K, 3)
    b = b[..., None, :].expand_as(d_b)
    twist = (torch.linalg.cross(a, b[..., 0, :], dim=-1)[..., None, :] * d_b).sum(-1, keepdim=True)
    return torch.linalg.cross(b, d_b, dim=-1) - twist / (1 + (a * b[..., 0, :]).sum(-1))[..., None, None] * b


def pose_translation_shape_jacobian(
    rest_joints: torch.Tensor, joint_shapedirs: torch.Tensor, pose_shift: torch.Tensor
) -> torch.Tensor:
    """∂/∂β of the scapula and spine translations (`pose_translations`) at fixed q.

    Each component is proportional to one body measure: the scapula's x and z to the scapula
    width, its y to the lumbar–thorax height, a spine arc to its segment height; so its
    derivative is the component times the measure's relative derivative.

    Args:
        rest_joints: (B, 24, 3); joint_shapedirs: (24, 3, 10); pose_shift: (B, 24, 3) the translations.
    Returns:
        (B, 10, 24, 3).
    """

    def relative_rate(upper: int, lower: int, axis: int | None = None) -> torch.Tensor:
        gap, d_gap = rest_joints[:, upper] - rest_joints[:, lower], joint_shapedirs[upper] - joint_shapedirs[lower]
        if axis is not None:
            return torch.sign(gap[:, axis, None]) * d_gap[axis] / gap[:, axis, None].abs()  # (B, 10)
        return (gap @ d_gap) / gap.square().sum(-1, keepdim=True)

    rates = torch.zeros(*pose_shift.shape[:2], 3, C.NUM_BETAS, dtype=pose_shift.dtype, device=pose_shift.device)
    width, height = relative_rate(19, 14), relative_rate(12, 11)
    for bone in C.SCAPULA_BONES.values():
        rates[:, bone] = torch.stack([width, height, width], dim=1)
    for bone, (_, _, lower, upper) in C.SPINE_ARC_BONES.items():
        rates[:, bone] = relative_rate(upper, lower, axis=1)[:, None]
    return (pose_shift[..., None] * rates).permute(0, 3, 1, 2)


def skeleton_shape_jacobian(skel: SKELLayer, body: PosedBody) -> tuple[torch.Tensor, torch.Tensor]:
    """∂/∂β of every bone's world rotation and posed joint, holding q.

    β moves the rest joints (linearly) and turns the rest frames Rk01 = Gk·per_joint_rot, with
    Gk the minimal rotation onto the shaped bone; a frame turning at angular velocity ω (in the
    parent's frame) changes the local rotation L = F·Rp·Fᵀ by [ω]×·L − L·[ω]×, i.e. turns
    everything below it by σ = (W_parent − W)·ω in the world. Summed over ancestors (no loop over
    the tree): dW_b = [Σ_a σ_a]×·W_b and dP_b = Σ_a (σ-sum of a's parent) × (P_a − P_parent) +
    W_parent·dt_a, with dt the change of the local translations (offsets and the sizes of the
    scapula and spine translations).

    Returns:
        world_r derivatives (B, 10, 24, 3, 3), joint derivatives (B, 10, 24, 3).
    """
    parents = skel.parents
    offsets = local_offsets(body.rest_joints, parents)
    d_offsets = local_offsets(skel.joint_shapedirs.permute(2, 0, 1), parents).permute(1, 2, 0)  # (24, 3, 10)
    model = torch.einsum("jab,jb->ja", skel.per_joint_rot, bone_vectors(skel.apose_offsets[None], parents)[0])
    shaped = bone_vectors(offsets, parents)
    d_shaped = bone_vectors(d_offsets.permute(2, 0, 1), parents).permute(1, 2, 0)  # (24, 3, 10)
    d_shaped = d_shaped.expand(offsets.shape[0], -1, -1, -1)
    rate = minimal_rotation_rate(model.expand_as(shaped), shaped, d_shaped)  # (B, 24, 10, 3)
    rate[:, list(C.FIXED_ORIENTATION_BONES)] = 0.0
    parent_world = parent_rotations(body.world_r, parents)
    spin = ((parent_world - body.world_r)[:, :, None] @ rate[..., None])[..., 0].transpose(1, 2)  # (B, 10, 24, 3)
    ancestors = subtree_matrix(parents).to(spin)  # [a, b]: a is an ancestor of b (or b)
    spin_sum = torch.einsum("ab,nkax->nkbx", ancestors, spin)
    d_translations = d_offsets.permute(2, 0, 1) + pose_translation_shape_jacobian(
        body.rest_joints, skel.joint_shapedirs, body.translations - offsets
    )  # (B, 10, 24, 3)
    joints = body.joints - body.joints[:, :1] + body.rest_joints[:, :1]
    parent_joints = torch.cat([torch.zeros_like(joints[:, :1]), joints], dim=1)[:, [p + 1 for p in parents]]
    parent_spin_sum = torch.cat([torch.zeros_like(spin_sum[:, :, :1]), spin_sum], dim=2)[:, :, [p + 1 for p in parents]]
    step = torch.linalg.cross(parent_spin_sum, (joints - parent_joints)[:, None].expand_as(parent_spin_sum), dim=-1)
    step = step + (parent_world[:, None] @ d_translations[..., None])[..., 0]
    d_joints = torch.einsum("ab,nkax->nkbx", ancestors, step)
    return skew(spin_sum) @ body.world_r[:, None], d_joints


def skin_shape_jacobian(
    part: SkinPart, body: PosedBody, joint_shapedirs: torch.Tensor, d_rotation: torch.Tensor, d_joints: torch.Tensor
) -> torch.Tensor:
    """∂(skin point)/∂β of v = Σ_b w_b·(R_b·(x − J_b) + P_b), x the shaped point, J_b rest joint, P_b posed joint.

    Per bone and β this is an affine map of x, [dR_b | dP_b − dR_b·J_b − R_b·∂J_b/∂β], blended
    like skinning transforms, plus R·∂x/∂β. The pose correctives' dependence on β is left out.

    Args:
        joint_shapedirs: (24, 3, 10) ∂J/∂β of the rest joints; d_rotation: (B, 10, 24, 3, 3) and
        d_joints: (B, 10, 24, 3) from `skeleton_shape_jacobian`.
    Returns:
        (B, 10, 3, N).
    """
    moved = torch.einsum("bkjxy,bjy->bkjx", d_rotation, body.rest_joints)
    moved = moved + torch.einsum("bjxy,jyk->bkjx", body.world_r, joint_shapedirs)
    transforms = torch.cat([d_rotation, (d_joints - moved)[..., None]], dim=-1).flatten(-2)  # (B, 10, 24, 12)
    blended = torch.matmul(part.weights, transforms).unflatten(-1, (3, 4))  # (B, 10, N, 3, 4)
    turned = torch.einsum("bknxy,bny->bkxn", blended, homogeneous(body.points))
    return turned + torch.einsum("bnxy,nyk->bkxn", body.skin_rotation, part.shapedirs)


def points_jacobian(
    points: torch.Tensor,
    influence: torch.Tensor,
    omega: torch.Tensor,
    pivots: torch.Tensor,
    pivot_motion: torch.Tensor,
    shape_part: torch.Tensor,
) -> torch.Tensor:
    """Jacobian of posed points with respect to x = [q | β | trans].

    A DoF of bone c turns every point by the share of its weight on c's subtree about c's joint
    (ω × (p − pivot)) and carries it along with the joint's pose-dependent translation.

    Args:
        points: (B, N, 3); influence: (N, 24) subtree weights; omega, pivots, pivot_motion: (B, 46, 3);
        shape_part: (B, 10, 3, N) the points' derivatives with respect to β.
    Returns:
        (B, 59, 3, N).
    """
    batch, count = points.shape[:2]
    jacobian = points.new_empty(batch, NUM_PARAMS, 3, count)
    affine = torch.cat([skew(omega), (pivot_motion - torch.linalg.cross(omega, pivots, dim=-1))[..., None]], dim=-1)
    turned = (affine.flatten(1, 2) @ homogeneous(points).transpose(1, 2)).unflatten(1, (C.NUM_DOFS, 3))
    torch.mul(turned, influence[:, list(_DOF_BONE)].T[None, :, None, :], out=jacobian[:, : C.NUM_DOFS])
    jacobian[:, C.NUM_DOFS : C.NUM_DOFS + C.NUM_BETAS] = shape_part
    jacobian[:, C.NUM_DOFS + C.NUM_BETAS :] = torch.eye(3, dtype=points.dtype, device=points.device)[:, :, None]
    return jacobian


def residual_jacobians(skel: SKELLayer, part: SkinPart, body: PosedBody, q: torch.Tensor):
    """Jacobians of the skin points and the joints with respect to x = [q | β | trans].

    The joints' are exact. For the skin, a blended point is turned as a whole about each joint
    (exact where one bone's subtree holds all its weight) and the pose correctives' derivatives
    are left out: good Gauss–Newton curvature, while the gradient the fit uses is exact (autograd).

    Returns:
        skin (B, 59, 3, N), joints (B, 59, 3, 24).
    """
    parent_world = parent_rotations(body.world_r, skel.parents)
    omega = dof_world_axes(q, body.frame, parent_world)
    dofs = list(_DOF_BONE)
    pivots = body.joints[:, dofs]
    motion = (parent_world[:, dofs] @ pose_translation_jacobian(q, body.rest_joints)[..., None])[..., 0]
    d_rotation, d_joints = skeleton_shape_jacobian(skel, body)
    skin_shape = skin_shape_jacobian(part, body, skel.joint_shapedirs, d_rotation, d_joints)
    joint_influence = subtree_matrix(skel.parents).to(q).T
    return (
        points_jacobian(body.skin, part.influence, omega, pivots, motion, skin_shape),
        points_jacobian(body.joints, joint_influence, omega, pivots, motion, d_joints.transpose(-1, -2)),
    )
