"""Closed-form pose transfer between SKEL bones and SMPL joints.

Both models skin one mesh topology with linear blend skinning: a vertex follows the world rotation
of the bone (SKEL) or joint (SMPL) it hangs on. Giving each SMPL joint the world rotation of the
SKEL bone that drives the same body part therefore moves the same vertices the same way, up to the
joint centres and the spine/scapula translations: a first guess that optimisation then refines.
"""

from __future__ import annotations

import torch

from hsmr_model import skel_constants as C
from hsmr_model.rotations import matrix_to_axis_angle


def _smpl_joint_sources() -> tuple[int, ...]:
    """For each SMPL joint the SKEL bone whose world rotation it takes, or -1 (keep the parent's).

    C.SKEL_TO_SMPL_JOINT uses 0 for "no SMPL joint" except on the pelvis; where several bones map
    to one joint the distal one wins (calcaneus over talus), as it carries the joint's vertices.
    """
    sources = [-1] * len(C.SMPL_PARENTS)
    for bone, joint in enumerate(C.SKEL_TO_SMPL_JOINT):
        if joint != 0 or bone == 0:
            sources[joint] = bone
    return tuple(sources)


SMPL_JOINT_SOURCES = _smpl_joint_sources()


def skel_world_to_smpl_pose(skel_world_rotations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL pose parameters whose joints turn like the corresponding SKEL bones.

    Args:
        skel_world_rotations: (B, 24, 3, 3) SKEL bone world rotations (SKELLayer.pose_skeleton's world_r).
    Returns:
        global_orient (B, 3), body_pose (B, 69): SMPL axis-angle.
    """
    world = []
    for joint, bone in enumerate(SMPL_JOINT_SOURCES):
        world.append(skel_world_rotations[:, bone] if bone >= 0 else world[C.SMPL_PARENTS[joint]])
    world = torch.stack(world, dim=1)  # (B, 24, 3, 3)
    parents = torch.as_tensor(C.SMPL_PARENTS[1:])
    local = world[:, parents].transpose(-1, -2) @ world[:, 1:]
    return matrix_to_axis_angle(world[:, 0]), matrix_to_axis_angle(local).flatten(1)
