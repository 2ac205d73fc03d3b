"""Pure, batched rotation helpers (torch). Leading dimensions are free; gradients flow everywhere
used in practice (the zero-angle and parallel-vector cases have finite gradients)."""

from __future__ import annotations

import torch


def skew(v: torch.Tensor) -> torch.Tensor:
    """Cross-product matrix [v]x.

    Args:
        v: (..., 3).
    Returns:
        (..., 3, 3).
    """
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*v.shape[:-1], 3, 3)


def rotation_about_axis(angle: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """Rotation by `angle` about a unit `axis` (Rodrigues), right-handed.

    Args:
        angle: (...,).
        axis: (..., 3) unit vectors, broadcastable against angle[..., None].
    Returns:
        (..., 3, 3).
    """
    axis = axis.expand(*angle.shape, 3)
    k = skew(axis)
    eye = torch.eye(3, dtype=angle.dtype, device=angle.device)
    s = torch.sin(angle)[..., None, None]
    c = torch.cos(angle)[..., None, None]
    return eye + s * k + (1.0 - c) * (k @ k)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle vectors to rotation matrices, exact and differentiable at zero.

    Args:
        axis_angle: (..., 3).
    Returns:
        (..., 3, 3).
    """
    theta2 = (axis_angle * axis_angle).sum(-1)[..., None, None]
    small = theta2 < 1e-12
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    theta = torch.sqrt(safe2)
    # sin(t)/t and (1-cos t)/t^2 with their Taylor series near zero.
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / safe2)
    k = skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + a * k + b * (k @ k)


def rotation_between_vectors(source: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Minimal rotation R with R·source ∥ target (inputs need not be unit).

    Antiparallel inputs have no unique minimal rotation; there the result is a half turn about
    an axis perpendicular to `source`.

    Args:
        source, target: (..., 3).
    Returns:
        (..., 3, 3).
    """
    a = source / source.norm(dim=-1, keepdim=True).clamp_min(eps)
    b = target / target.norm(dim=-1, keepdim=True).clamp_min(eps)
    v = torch.linalg.cross(a, b, dim=-1)
    c = (a * b).sum(-1)[..., None, None]
    k = skew(v)
    eye = torch.eye(3, dtype=source.dtype, device=source.device)
    antiparallel = c < -1.0 + 1e-6
    general = eye + k + (k @ k) / torch.where(antiparallel, torch.ones_like(c), 1.0 + c)
    # Half turn about a perpendicular axis: R = 2·n·nᵀ − I.
    helper = torch.where(a[..., :1].abs() > 0.6, a.new_tensor([0.0, 1.0, 0.0]), a.new_tensor([1.0, 0.0, 0.0]))
    n = torch.linalg.cross(a, helper, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(eps)
    half_turn = 2.0 * n[..., :, None] * n[..., None, :] - eye
    return torch.where(antiparallel, half_turn, general)


def matrix_to_rotation_6d(matrix: torch.Tensor) -> torch.Tensor:
    """The first two rows of each rotation, flattened. (..., 3, 3) → (..., 6)."""
    return matrix[..., :2, :].flatten(-2)


def rotation_6d_to_matrix(six: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Two rows (not necessarily orthonormal) → the nearest rotation by Gram–Schmidt. (..., 6) → (..., 3, 3)."""
    first, second = six[..., :3], six[..., 3:]
    b1 = first / first.norm(dim=-1, keepdim=True).clamp_min(eps)
    second = second - (b1 * second).sum(-1, keepdim=True) * b1
    b2 = second / second.norm(dim=-1, keepdim=True).clamp_min(eps)
    return torch.stack([b1, b2, torch.linalg.cross(b1, b2, dim=-1)], dim=-2)


def matrix_to_euler(matrix: torch.Tensor, order: str) -> torch.Tensor:
    """Tait–Bryan angles (a, b, c) with R = R_A(a)·R_B(b)·R_C(c) for `order` = "ABC" (three different axes).

    The middle angle is in [−π/2, π/2], the others in (−π, π]. (..., 3, 3) → (..., 3).
    """
    i, j, k = ("XYZ".index(axis) for axis in order)
    if len({i, j, k}) != 3:
        raise ValueError(f"order must name three different axes, got {order!r}")
    sign = 1.0 if (i, j, k) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1.0
    # atan2 of the sine over the cosine stays accurate next to gimbal lock, where asin does not.
    middle = torch.atan2(sign * matrix[..., i, k], torch.hypot(matrix[..., i, i], matrix[..., i, j]))
    first = torch.atan2(-sign * matrix[..., j, k], matrix[..., k, k])
    last = torch.atan2(-sign * matrix[..., i, j], matrix[..., i, i])
    return torch.stack([first, middle, last], dim=-1)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to unit quaternions (w, x, y, z) with w >= 0.

    Every candidate of Shepperd's method is computed and the best-conditioned one (largest
    denominator) is kept, so angles near π are as accurate as small ones.

    Args:
        matrix: (..., 3, 3).
    Returns:
        (..., 4).
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4·q_i² for i = w, x, y, z.
    squares = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    roots = torch.sqrt(squares.clamp_min(1e-12))  # 2·|q_i|
    d10, d01 = m[..., 1, 0], m[..., 0, 1]
    d20, d02 = m[..., 2, 0], m[..., 0, 2]
    d21, d12 = m[..., 2, 1], m[..., 1, 2]
    candidates = torch.stack(
        [
            torch.stack([roots[..., 0] ** 2, d21 - d12, d02 - d20, d10 - d01], -1),
            torch.stack([d21 - d12, roots[..., 1] ** 2, d10 + d01, d02 + d20], -1),
            torch.stack([d02 - d20, d10 + d01, roots[..., 2] ** 2, d21 + d12], -1),
            torch.stack([d10 - d01, d02 + d20, d21 + d12, roots[..., 3] ** 2], -1),
        ],
        dim=-2,
    ) / (2 * roots[..., None])
    best = squares.argmax(-1)
    quat = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4))[..., 0, :]
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices to axis-angle vectors with angle in [0, π] (the inverse of axis_angle_to_matrix).

    Args:
        matrix: (..., 3, 3).
    Returns:
        (..., 3).
    """
    quat = matrix_to_quaternion(matrix)
    sin_half = quat[..., 1:].norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, quat[..., :1])
    # angle / sin(angle/2) → 2 as the angle → 0.
    factor = torch.where(sin_half < 1e-6, 2.0 + angle**2 / 12, angle / sin_half.clamp_min(1e-12))
    return quat[..., 1:] * factor
