"""The HSMR network (ViT backbone, decoder head, ViTPose checkpoints) and its training losses."""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hsmr_model import skel_constants as C
from hsmr_model.camera import DEFAULT_DEPTH, FOCAL_NORMALISED, project
from hsmr_model.losses import (
    LossTargets,
    LossWeights,
    betas_loss,
    hsmr_loss,
    keypoint_2d_loss,
    keypoint_3d_loss,
    keypoint_heatmap_loss,
    predicted_keypoints,
    rotation_losses,
)
from hsmr_model.model_files import read_keypoint_regressor
from hsmr_model.network import (
    HSMRNetwork,
    ViTBackbone,
    ViTConfig,
    count_parameters,
    crop_vit_input,
    grid_cell_centres,
    load_vitpose_backbone,
    mean_pose,
    network_config,
    normalize_imagenet,
    soft_argmax,
    weak_perspective_to_translation,
)
from hsmr_model.pose_repr import bone_rotations, q_to_target88
from hsmr_model.regressor import VertexRegressor
from hsmr_model.skel_layer import SKELLayer


@pytest.fixture(scope="module")
def skel(model_paths):
    return SKELLayer.from_file(model_paths.skel("male"))


@pytest.fixture(scope="module")
def regressor(model_paths):
    return VertexRegressor.from_sparse(read_keypoint_regressor(model_paths.keypoint_regressor).matrix)


def _poses(count: int, seed: int) -> torch.Tensor:
    """q in the central half of every DoF's limits; the pelvis near the mean pose, on its Euler branch."""
    rng = np.random.default_rng(seed)
    lower, upper = C.dof_limits()
    lower, upper = np.where(np.isfinite(lower), lower, 0.0), np.where(np.isfinite(upper), upper, 0.0)
    q = (lower + upper) / 2 + (upper - lower) / 4 * rng.uniform(-1, 1, size=(count, C.NUM_DOFS))
    q[:, 0] = math.pi + rng.uniform(-0.3, 0.3, count)
    q[:, 0] = np.where(q[:, 0] > math.pi, q[:, 0] - 2 * math.pi, q[:, 0])  # Euler extraction returns (−π, π]
    q[:, 1:3] = rng.uniform(-0.3, 0.3, size=(count, 2))
    return torch.as_tensor(q, dtype=torch.float32)


# ------------------------------------------------------------------------------- network shapes
@pytest.mark.parametrize(
    ("size", "pose_target", "tokens"),
    [("tiny", "88d", (64, 16, 12)), ("tiny", "euler", (64, 16, 12)), ("small", "88d", (128, 8, 6))],
)
def test_cpu_network_output_shapes_and_starting_point(size, pose_target, tokens):
    torch.manual_seed(0)
    net = HSMRNetwork(network_config(size, pose_target))
    out = net(torch.rand(2, 3, 256, 256))
    # The grid keypoints are an auxiliary output of some sizes, tested on their own.
    shapes = {name: tuple(value.shape) for name, value in vars(out).items() if isinstance(value, torch.Tensor)}
    assert shapes == {
        "target88": (2, 88),
        "q": (2, 46),
        "bone_rotations": (2, 24, 3, 3),
        "betas": (2, 10),
        "cam": (2, 3),
        "cam_t": (2, 3),
    }
    # Small read-outs: an untrained network predicts about the mean body and camera.
    assert torch.allclose(out.cam, torch.tensor([[0.9, 0.0, 0.0]]).expand(2, 3), atol=0.05)
    assert out.betas.abs().max() < 0.05
    eye = torch.eye(3)
    assert torch.allclose(out.bone_rotations[:, 1:], eye.expand(2, 23, 3, 3), atol=0.05)
    assert net.backbone(torch.zeros(1, 3, 256, 192)).shape == (1, *tokens)
    assert net.backbone.config.grid == tokens[1:]


def test_grid_keypoints_sit_where_their_cells_are_in_the_crop():
    """A token's cell centre is where its patch lies in the 256-pixel crop (the grid sees the central 192
    columns), and a soft-argmax peaked on one cell returns that centre."""
    rows, cols = 8, 6
    centres = grid_cell_centres(rows, cols)
    patch = 256 // rows  # 32 pixels; the first patch column starts at (256 − 192) / 2 = 32
    first_pixel_centre = np.array([32 + patch / 2, patch / 2]) / 256 - 0.5
    assert np.allclose(centres[0].numpy(), first_pixel_centre)
    assert np.allclose(centres[cols + 2].numpy(), first_pixel_centre + np.array([2, 1]) * patch / 256)
    logits = torch.full((1, 2, rows * cols), -1e4)
    logits[0, 0, 17] = logits[0, 1, 40] = 0.0
    assert torch.allclose(soft_argmax(logits, centres).positions[0], centres[[17, 40]])


def test_grid_keypoints_add_their_own_loss_term(skel, regressor):
    torch.manual_seed(0)
    config = network_config("small")
    net = HSMRNetwork(replace(config, head=replace(config.head, grid_keypoints=44)))
    out = net(torch.rand(2, 3, 256, 256))
    assert out.grid_keypoints.positions.shape == (2, 44, 2) and out.grid_keypoints.positions.abs().max() <= 0.5
    at_point_two = torch.cat([torch.full((2, 44, 2), 0.2), torch.ones(2, 44, 1)], -1)
    targets = LossTargets(
        q=out.q.detach(), betas=out.betas.detach(), has_pose=torch.ones(2), has_betas=torch.ones(2),
        keypoints_3d=torch.zeros(2, 44, 4), keypoints_2d=at_point_two,
    )  # fmt: skip
    kp3d, kp2d = predicted_keypoints(skel, regressor, out.q, out.betas, out.cam_t)
    without, parts = hsmr_loss(out.bone_rotations, out.betas, kp3d, kp2d, targets, LossWeights(grid_kp2d=1.0))
    total, parts = hsmr_loss(
        out.bone_rotations, out.betas, kp3d, kp2d, targets, LossWeights(grid_kp2d=1.0), out.grid_keypoints
    )
    expected = (out.grid_keypoints.positions - 0.2).abs().sum()
    assert torch.isclose(parts["grid_kp2d"], expected) and torch.isclose(total - without, expected)
    weights = LossWeights(grid_kp2d=1.0, grid_heatmap=0.5)
    with_heatmap, _ = hsmr_loss(out.bone_rotations, out.betas, kp3d, kp2d, targets, weights, out.grid_keypoints)
    assert parts["grid_heatmap"] > 0 and torch.isclose(with_heatmap - total, 0.5 * parts["grid_heatmap"])
    total.backward()
    assert net.keypoint_logits.weight.grad.abs().sum() > 0


def test_lifted_grid_keypoints_reach_the_pose():
    """The small head lifts its grid keypoints into the query: the pose depends on them (through the MLP
    and back into the keypoint logits), and a head cannot lift keypoints it does not read."""
    torch.manual_seed(0)
    net = HSMRNetwork(network_config("small"))
    assert net.config.head.lift_keypoints
    out = net(torch.rand(2, 3, 256, 256))
    (mlp_grad,) = torch.autograd.grad(out.target88.sum(), net.head.keypoints_to_query[0].weight, retain_graph=True)
    assert mlp_grad.abs().sum() > 0
    (logit_grad,) = torch.autograd.grad(out.target88.sum(), net.keypoint_logits.weight)
    assert logit_grad.abs().sum() > 0  # the pose alone (no keypoint loss) moves where the keypoints are read
    with pytest.raises(ValueError, match="lift_keypoints needs grid_keypoints"):
        HSMRNetwork(replace(net.config, head=replace(net.config.head, grid_keypoints=0)))


def test_heatmap_loss_is_zero_only_at_the_gaussian_around_each_keypoint():
    """KL(target ‖ predicted): 0 for the Gaussian around the keypoint, positive for a peak on the wrong
    cell, unweighted where the confidence is 0; its gradient moves mass to the keypoint's cell."""
    centres = grid_cell_centres(8, 6)
    target = torch.tensor([[[0.1, -0.2, 1.0], [0.0, 0.3, 0.0]]])  # the second keypoint is unseen
    squared = ((centres - target[..., None, :2]) ** 2).sum(-1)
    gaussian = torch.log_softmax(-squared / (2 * (1 / 16) ** 2), dim=-1)
    assert keypoint_heatmap_loss(gaussian, centres, target).abs().item() < 1e-6
    logits = torch.zeros(1, 2, 48)
    logits[0, 0, 0] = 5.0  # far from (0.1, −0.2)
    logits.requires_grad_(True)
    wrong = keypoint_heatmap_loss(logits.log_softmax(-1), centres, target)
    assert wrong.item() > 1.0
    wrong.sum().backward()
    nearest = squared[0, 0].argmin()
    assert logits.grad[0, 0].argmin() == nearest and logits.grad[0, 0, 0] > 0
    assert torch.all(logits.grad[0, 1] == 0)


def test_paper_sizes_have_the_paper_parameter_counts():
    # Meta tensors: the sizes without allocating 2.5 GB for ViT-H.
    with torch.device("meta"):
        base, huge = HSMRNetwork(network_config("B")), HSMRNetwork(network_config("H"))
    assert count_parameters(base.backbone) == pytest.approx(86e6, rel=0.01)  # ViT-B/16
    assert count_parameters(huge.backbone) == pytest.approx(632e6, rel=0.01)  # ViT-H/16
    assert count_parameters(base.head) == pytest.approx(36.3e6, rel=0.01)


def test_vit_b_runs_one_image():
    torch.manual_seed(0)
    with torch.no_grad():
        tokens = ViTBackbone(network_config("B").backbone)(torch.zeros(1, 3, 256, 192))
    assert tokens.shape == (1, 768, 16, 12) and torch.isfinite(tokens).all()


def test_input_is_the_central_256x192_normalised_with_imagenet_statistics():
    images = torch.arange(256.0).expand(1, 3, 256, 256)
    cut = crop_vit_input(images)
    assert cut.shape == (1, 3, 256, 192)
    assert cut[0, 0, 0, 0] == 32 and cut[0, 0, 0, -1] == 223
    mean_colour = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None].expand(1, 3, 4, 4)
    assert torch.allclose(normalize_imagenet(mean_colour), torch.zeros(1, 3, 4, 4), atol=1e-6)
    one_std_above = mean_colour + torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(normalize_imagenet(one_std_above), torch.ones(1, 3, 4, 4))


def test_drop_path_is_random_in_training_and_off_in_evaluation():
    torch.manual_seed(0)
    backbone = ViTBackbone(ViTConfig(dim=32, depth=2, heads=2, mlp_dim=64, drop_path=0.5))
    images = torch.rand(4, 3, 256, 192)
    backbone.train()
    assert not torch.allclose(backbone(images), backbone(images))
    backbone.eval()
    assert torch.equal(backbone(images), backbone(images))


# ----------------------------------------------------------------------------- pose and camera
def test_weak_perspective_camera_becomes_the_translation_that_projects_alike():
    cam = torch.tensor([[0.9, 0.1, -0.2], [0.45, 0.0, 0.3]])
    t = weak_perspective_to_translation(cam)
    assert torch.allclose(t[:, :2], cam[:, 1:])
    assert torch.allclose(t[:, 2], 2 * 5000 / (256 * cam[:, 0]))
    assert t[0, 2] == pytest.approx(DEFAULT_DEPTH)
    # Points on the plane z = 0 land where the weak-perspective camera puts them: s·(X + t) in [−1, 1] units.
    points = torch.tensor([[[0.3, -0.8, 0.0], [-0.2, 0.5, 0.0]]]).expand(2, 2, 3)
    expected = cam[:, None, :1] * (points[..., :2] + cam[:, None, 1:]) / 2
    assert torch.allclose(project(points, t, FOCAL_NORMALISED), expected, atol=1e-6)


def test_mean_pose_is_an_upright_body_facing_the_camera(skel, regressor):
    q = mean_pose("euler")[None]
    assert q[0, 0] == pytest.approx(math.pi) and q[0, 1:].abs().max() == 0
    assert torch.allclose(mean_pose("88d")[None], q_to_target88(q), atol=1e-6)
    kp = skel.keypoints(q, torch.zeros(1, 10), None, regressor)[0]
    nose, r_shoulder, l_shoulder, head_top, pelvis = kp[[0, 2, 5, 38, 39]]
    assert head_top[1] < pelvis[1] - 0.5  # camera y points down: the head is up in the image
    assert nose[2] < pelvis[2] - 0.1  # the face is nearer the camera than the pelvis
    assert r_shoulder[0] < l_shoulder[0]  # facing us, the person's right is on the image's left


@pytest.mark.parametrize("pose_target", ["88d", "euler"])
def test_head_with_zero_deltas_outputs_the_q_set_as_its_mean(pose_target):
    torch.manual_seed(0)
    net = HSMRNetwork(network_config("tiny", pose_target))
    q = _poses(1, seed=3)
    with torch.no_grad():
        net.head.mean_pose.copy_((q_to_target88(q) if pose_target == "88d" else q)[0])
        for linear in (net.head.dec_pose, net.head.dec_betas, net.head.dec_cam):
            linear.weight.zero_()
            linear.bias.zero_()
    out = net(torch.rand(3, 3, 256, 256))
    assert torch.allclose(out.q, q.expand(3, -1), atol=1e-4)
    assert torch.allclose(out.target88, q_to_target88(q).expand(3, -1), atol=1e-5)
    assert torch.allclose(out.bone_rotations, bone_rotations(q).expand(3, -1, -1, -1), atol=1e-5)
    assert torch.equal(out.betas, torch.zeros(3, 10))
    assert torch.equal(out.cam_t, weak_perspective_to_translation(torch.tensor([[0.9, 0.0, 0.0]])).expand(3, 3))


# ------------------------------------------------------------------------- ViTPose checkpoints
def _as_vitpose(backbone: ViTBackbone, cls_slot: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our weights spelled as a ViTPose checkpoint (mmpose/models/backbones/vit.py), written out by hand."""
    ours = backbone.state_dict()
    state = {
        "patch_embed.proj.weight": ours["patch_embed.weight"],
        "patch_embed.proj.bias": ours["patch_embed.bias"],
        # ViTPose adds its class-token slot to every patch's embedding.
        "pos_embed": torch.cat([cls_slot, ours["pos_embed"] - cls_slot], dim=1),
        "last_norm.weight": ours["norm.weight"],
        "last_norm.bias": ours["norm.bias"],
    }
    names = {"norm1": "attn_norm", "attn.qkv": "attn.qkv", "attn.proj": "attn.out", "norm2": "mlp_norm",
             "mlp.fc1": "mlp.fc_in", "mlp.fc2": "mlp.fc_out"}  # fmt: skip
    for i in range(len(backbone.blocks)):
        for theirs, mine in names.items():
            for kind in ("weight", "bias"):
                state[f"blocks.{i}.{theirs}.{kind}"] = ours[f"blocks.{i}.{mine}.{kind}"]
    return state


def _vitpose_forward(state: dict[str, torch.Tensor], images: torch.Tensor, heads: int) -> torch.Tensor:
    """ViTPose's backbone forward written from its source, straight on a ViTPose state dict."""
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16, padding=2)
    batch, dim, rows, cols = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = x + state["pos_embed"][:, 1:] + state["pos_embed"][:, :1]
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    for i in range(depth):
        p = {key.removeprefix(f"blocks.{i}."): v for key, v in state.items() if key.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (dim,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv = F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(batch, -1, 3, heads, dim // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        weights = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = (weights @ v).transpose(1, 2).reshape(batch, -1, dim)
        x = x + F.linear(h, p["attn.proj.weight"], p["attn.proj.bias"])
        h = F.layer_norm(x, (dim,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"]
        )
        x = x + h
    x = F.layer_norm(x, (dim,), state["last_norm.weight"], state["last_norm.bias"], eps=1e-6)
    return x.permute(0, 2, 1).reshape(batch, dim, rows, cols)


def test_vitpose_checkpoint_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    config = network_config("tiny").backbone
    source, target = ViTBackbone(config).eval(), ViTBackbone(config).eval()
    state = _as_vitpose(source, cls_slot=0.1 * torch.randn(1, 1, config.dim))
    checkpoint = {"state_dict": {**{f"backbone.{k}": v for k, v in state.items()},
                                 "keypoint_head.final_layer.weight": torch.zeros(17, 256, 1, 1)},
                  "meta": {"epoch": 210}}  # fmt: skip
    torch.save(checkpoint, tmp_path / "vitpose.pth")
    report = load_vitpose_backbone(target, tmp_path / "vitpose.pth")
    assert report.missing == [] and report.unexpected == [] and report.pos_embed_resized_from is None
    assert report.ignored == ["keypoint_head.final_layer.weight"]
    images = torch.randn(2, 3, 256, 192)
    with torch.no_grad():
        ours = target(images)
        assert torch.allclose(ours, source(images), atol=1e-5)
        assert torch.allclose(ours, _vitpose_forward(state, images, config.heads), atol=1e-5)
    # Into a whole network too, from a flat state dict without prefixes.
    torch.save(state, tmp_path / "flat.pth")
    net = HSMRNetwork(network_config("tiny"))
    load_vitpose_backbone(net, tmp_path / "flat.pth")
    assert torch.allclose(net.backbone.pos_embed, source.pos_embed, atol=1e-6)


def test_vitpose_loader_reports_missing_unexpected_and_mismatched_keys(tmp_path):
    torch.manual_seed(0)
    config = network_config("tiny").backbone
    backbone = ViTBackbone(config)
    state = _as_vitpose(backbone, torch.zeros(1, 1, config.dim))
    del state["blocks.1.mlp.fc2.weight"]
    state["blocks.0.attn.relative_position_bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"blocks\.1\.mlp\.fc_out\.weight.*blocks\.0\.attn\.relative_position_bias"):
        load_vitpose_backbone(backbone, tmp_path / "partial.pth")
    report = load_vitpose_backbone(backbone, tmp_path / "partial.pth", strict=False)
    assert report.missing == ["blocks.1.mlp.fc_out.weight"]
    assert report.unexpected == ["blocks.0.attn.relative_position_bias"]

    state = _as_vitpose(backbone, torch.zeros(1, 1, config.dim))
    state["last_norm.weight"] = torch.ones(config.dim + 1)
    torch.save(state, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"norm\.weight: ours \(64,\), checkpoint \(65,\)"):
        load_vitpose_backbone(backbone, tmp_path / "wide.pth")


def test_vitpose_loader_interpolates_a_square_positional_grid_and_refuses_odd_ones(tmp_path):
    torch.manual_seed(0)
    config = network_config("tiny").backbone
    backbone = ViTBackbone(config)
    state = _as_vitpose(backbone, torch.zeros(1, 1, config.dim))
    state["pos_embed"] = torch.ones(1, 1 + 14 * 14, config.dim)  # MAE pre-training on 224×224
    torch.save(state, tmp_path / "mae.pth")
    assert load_vitpose_backbone(backbone, tmp_path / "mae.pth").pos_embed_resized_from == (14, 14)
    assert torch.allclose(backbone.pos_embed, torch.full_like(backbone.pos_embed, 2.0))  # constant + class slot
    state["pos_embed"] = torch.ones(1, 1 + 150, config.dim)
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="150 patch tokens"):
        load_vitpose_backbone(backbone, tmp_path / "odd.pth")


class _NotWeights:
    pass


def test_vitpose_loader_refuses_checkpoints_with_arbitrary_objects(tmp_path):
    torch.save({"state_dict": {"pos_embed": torch.zeros(1)}, "hook": _NotWeights()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights-only"):
        load_vitpose_backbone(ViTBackbone(network_config("tiny").backbone), tmp_path / "evil.pth")


# ------------------------------------------------------------------------------------- losses
def _labels(skel, regressor, count: int, seed: int) -> LossTargets:
    """Consistent labels: q, β, and the keypoints of that body seen by a crop camera, all confident."""
    generator = torch.Generator().manual_seed(seed)
    q = _poses(count, seed)
    betas = 0.5 * torch.randn(count, 10, generator=generator)
    cam_t = torch.cat([0.1 * torch.randn(count, 2, generator=generator), 35 + 20 * torch.rand(count, 1)], dim=1)
    with torch.no_grad():
        keypoints_3d, keypoints_2d = predicted_keypoints(skel, regressor, q, betas, cam_t)
    ones = torch.ones(count, 44, 1)
    return LossTargets(
        q=q,
        betas=betas,
        has_pose=torch.ones(count, dtype=torch.bool),
        has_betas=torch.ones(count, dtype=torch.bool),
        keypoints_3d=torch.cat([keypoints_3d, ones], dim=-1),
        keypoints_2d=torch.cat([keypoints_2d, ones], dim=-1),
    )


def _loss_of(labels: LossTargets, q, betas, keypoints_3d, keypoints_2d, weights=None):
    return hsmr_loss(bone_rotations(q), betas, keypoints_3d, keypoints_2d, labels, weights)


def test_losses_vanish_for_the_labels_themselves_and_grow_otherwise(skel, regressor):
    labels = _labels(skel, regressor, 4, seed=1)
    kp3d, kp2d = labels.keypoints_3d[..., :3], labels.keypoints_2d[..., :2]
    total, parts = _loss_of(labels, labels.q, labels.betas, kp3d, kp2d)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    assert set(parts) == {"orientation", "body_pose", "betas", "kp3d", "kp2d"}
    assert all(value.item() == pytest.approx(0.0, abs=1e-6) for value in parts.values())

    other = _labels(skel, regressor, 4, seed=2)
    total, parts = _loss_of(labels, other.q, other.betas, other.keypoints_3d[..., :3], other.keypoints_2d[..., :2])
    assert all(value > 0 for value in parts.values())
    weights = LossWeights()
    assert total == pytest.approx(sum(getattr(weights, name) * value for name, value in parts.items()).item())
    # A rigid shift of the whole 3D body is no error (kp3d is centred on the pelvis keypoint) up to float32 rounding.
    assert keypoint_3d_loss(kp3d + torch.tensor([0.3, -1.0, 5.0]), labels.keypoints_3d).abs().max() < 1e-4


def test_global_orientation_and_body_pose_are_separate_terms():
    q = _poses(2, seed=4)
    turned = q.clone()
    turned[:, 0] += 0.2
    orientation, body = rotation_losses(bone_rotations(turned), bone_rotations(q), torch.ones(2))
    assert (orientation > 0).all() and body.abs().max() == 0
    bent = q.clone()
    bent[:, 6] += 0.2  # right knee
    orientation, body = rotation_losses(bone_rotations(bent), bone_rotations(q), torch.ones(2))
    assert orientation.abs().max() == 0 and (body > 0).all()


def test_masks_and_confidences_remove_terms(skel, regressor):
    labels = _labels(skel, regressor, 3, seed=5)
    other = _labels(skel, regressor, 3, seed=6)
    mask = torch.tensor([True, False, True])
    orientation, body = rotation_losses(bone_rotations(other.q), bone_rotations(labels.q), mask)
    assert orientation[1] == 0 and body[1] == 0 and (body[mask] > 0).all()
    beta_terms = betas_loss(other.betas, labels.betas, mask.float())
    assert beta_terms[1] == 0 and (beta_terms[mask] > 0).all()

    unseen = labels.keypoints_2d.clone()
    unseen[1, :, 2] = 0
    assert keypoint_2d_loss(other.keypoints_2d[..., :2], unseen)[1] == 0
    unseen = labels.keypoints_3d.clone()
    unseen[1, :, 3] = 0
    assert keypoint_3d_loss(other.keypoints_3d[..., :3], unseen)[1] == 0
    # One confident keypoint: the loss is its L1 distance alone.
    one = torch.zeros(1, 44, 3)
    one[0, 7] = torch.tensor([0.1, -0.2, 1.0])
    assert keypoint_2d_loss(torch.zeros(1, 44, 2), one).item() == pytest.approx(0.3)

    no_labels = LossTargets(labels.q, labels.betas, torch.zeros(3), torch.zeros(3), unseen * 0, labels.keypoints_2d * 0)
    total, _ = _loss_of(no_labels, other.q, other.betas, other.keypoints_3d[..., :3], other.keypoints_2d[..., :2])
    assert total.item() == 0


def test_predicted_keypoints_are_the_skin_keypoints_and_their_projection(skel, regressor):
    q, betas = _poses(2, seed=7), torch.zeros(2, 10)
    cam_t = torch.tensor([[0.0, 0.1, 40.0], [0.2, 0.0, 60.0]])
    keypoints_3d, keypoints_2d = predicted_keypoints(skel, regressor, q, betas, cam_t)
    assert keypoints_3d.shape == (2, 44, 3) and keypoints_2d.shape == (2, 44, 2)
    assert torch.allclose(keypoints_3d, skel.keypoints(q, betas, None, regressor))
    assert torch.allclose(keypoints_2d, project(keypoints_3d, cam_t))


@pytest.fixture
def one_thread():
    """Small ops on a shared machine: one intra-op thread is steady, two can be 10× slower when cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_tiny_network_overfits_sixteen_samples(skel, regressor, one_thread):
    """The honest check of the wiring: images → network → SKEL keypoints → losses → gradients."""
    torch.manual_seed(0)
    labels = _labels(skel, regressor, 16, seed=8)
    images = torch.rand(16, 3, 256, 256)
    net = HSMRNetwork(network_config("tiny"))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    start, history = time.perf_counter(), []
    for _ in range(150):
        out = net(images)
        keypoints_3d, keypoints_2d = predicted_keypoints(skel, regressor, out.q, out.betas, out.cam_t)
        total, _ = hsmr_loss(out.bone_rotations, out.betas, keypoints_3d, keypoints_2d, labels)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        history.append(total.item())
    final = sum(history[-5:]) / 5
    summary = f"loss {history[0]:.3f} -> {final:.4f} ({history[0] / final:.0f}x) in {time.perf_counter() - start:.1f} s"
    print(summary)
    assert final < history[0] / 10, summary
