"""The procedural humanoid: a closed SMPL-topology mesh that is shaped, rigged and sized like an adult."""

from __future__ import annotations

import numpy as np
import pytest

from hsmr_data.render import look_at_body, render_mesh
from hsmr_data.synthetic.humanoid import SHAPE_DIRECTION_NAMES, build_humanoid
from hsmr_model import skel_constants as C

SEXES = ("neutral", "male", "female")


@pytest.fixture(scope="module", params=SEXES)
def body(request):
    return request.param, build_humanoid(request.param)


def _edges(faces):
    directed = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    return directed, np.unique(np.sort(directed, axis=1), axis=0, return_counts=True)


def _winding_numbers(vertices, faces, points):
    """Generalised winding number of closed-mesh `faces` around each point: 1 inside, 0 outside."""
    total = np.zeros(len(points))
    for start in range(0, len(faces), 2000):
        tri = vertices[faces[start : start + 2000]][None] - points[:, None, None]  # (P, F, 3, 3)
        a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        numerator = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        denominator = (
            la * lb * lc
            + np.einsum("pfi,pfi->pf", a, b) * lc
            + np.einsum("pfi,pfi->pf", b, c) * la
            + np.einsum("pfi,pfi->pf", c, a) * lb
        )
        total += 2 * np.arctan2(numerator, denominator).sum(axis=1)
    return total / (4 * np.pi)


def test_closed_genus0_manifold_with_smpl_counts_and_outward_faces(body):
    _, h = body
    assert h.vertices.shape == (C.SMPL_NUM_VERTICES, 3) and h.faces.shape == (C.SMPL_NUM_FACES, 3)
    directed, (edges, counts) = _edges(h.faces)
    assert (counts == 2).all()  # closed 2-manifold
    assert len(np.unique(directed, axis=0)) == len(directed)  # consistently oriented
    assert len(h.vertices) - len(edges) + len(h.faces) == 2  # genus 0
    tri = h.vertices[h.faces]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert 0.05 < volume < 0.12  # outward and of a human size (m³)
    assert len(np.unique(h.faces)) == C.SMPL_NUM_VERTICES  # no unused vertex


def test_all_sexes_share_one_topology_and_differ_in_shape():
    bodies = {sex: build_humanoid(sex) for sex in SEXES}
    assert all(np.array_equal(b.faces, bodies["neutral"].faces) for b in bodies.values())
    height = {sex: np.ptp(b.vertices[:, 1]) for sex, b in bodies.items()}
    assert height["male"] > height["neutral"] > height["female"]
    assert abs(height["neutral"] - 1.70) < 0.01 and abs(height["male"] - 1.78) < 0.01


def test_deterministic_for_a_seed():
    build_humanoid.cache_clear()
    first = build_humanoid("female", seed=3)
    build_humanoid.cache_clear()
    again = build_humanoid("female", seed=3)
    assert np.array_equal(first.vertices, again.vertices) and np.array_equal(first.posedirs, again.posedirs)
    assert not np.array_equal(first.posedirs, build_humanoid("female", seed=4).posedirs)


def test_adult_proportions(body):
    _, h = body
    v, joints = h.vertices, h.skel_joints
    height = np.ptp(v[:, 1])
    floor = v[:, 1].min()
    hip_height = (joints[1, 1] + joints[6, 1]) / 2 - floor
    assert 0.45 < hip_height / height < 0.53
    assert 0.95 < np.ptp(v[:, 0]) / height < 1.05  # arm span ≈ height
    head_and_neck = v[:, 1].max() - h.smpl_joints[12, 1]  # crown to the base of the neck
    assert 0.12 < head_and_neck / height < 0.20
    shoulders = abs(h.smpl_joints[16, 0] - h.smpl_joints[17, 0])
    assert 0.30 < shoulders < 0.45
    feet = v[v[:, 1] < floor + 0.03]
    assert 0.2 < np.ptp(feet[:, 2]) < 0.3  # feet about 25 cm long, pointing forward
    assert feet[:, 2].max() > 0.15


def test_joints_are_inside_the_body(body):
    _, h = body
    points = np.vstack([h.smpl_joints, h.skel_joints])
    assert (np.abs(_winding_numbers(h.vertices, h.faces, points) - 1) < 1e-3).all()
    outside = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0], [0.0, -0.3, 0.0]])  # ahead, above, between the legs
    assert (np.abs(_winding_numbers(h.vertices, h.faces, outside)) < 1e-3).all()


def test_regressors_reproduce_joints_and_are_convex_weightings(body):
    _, h = body
    for regressor, joints in ((h.smpl_joint_regressor, h.smpl_joints), (h.skel_joint_regressor, h.skel_joints)):
        assert np.abs(regressor @ h.vertices - joints).max() < 1e-3
        assert regressor.min() >= 0 and np.allclose(regressor.sum(axis=1), 1.0)
    keypoints = h.keypoint_regressor
    assert keypoints.shape == (C.NUM_KEYPOINTS, C.SMPL_NUM_VERTICES)
    assert keypoints.min() >= 0 and np.allclose(keypoints.sum(axis=1), 1.0)
    kp = keypoints @ h.vertices
    name = C.KEYPOINT_NAMES.index
    assert np.allclose(kp[name("right_knee")], kp[name("right_knee_extra")])
    assert kp[name("nose")][2] > kp[name("neck")][2] + 0.05  # the nose points forward
    assert kp[name("head_top_lsp")][1] == pytest.approx(h.vertices[:, 1].max(), abs=0.01)
    assert kp[name("right_big_toe")][2] > kp[name("right_heel")][2] + 0.15
    assert kp[name("right_eye")][0] < 0 < kp[name("left_eye")][0]  # the subject's right is −X


def test_skinning_weights_are_local_and_normalised(body):
    _, h = body
    for weights in (h.smpl_weights, h.skel_weights):
        assert weights.min() >= 0 and np.allclose(weights.sum(axis=1), 1.0)
        assert ((weights > 0).sum(axis=1) <= 4).all()
    legs = h.vertices[:, 1] < h.skel_joints[2, 1]  # below the knees
    assert h.skel_weights[legs][:, [15, 16, 17, 18, 20, 21, 22, 23]].max() == 0  # no arm bone moves a shin
    assert h.smpl_weights[legs][:, [20, 21, 22, 23]].max() == 0
    elbow_ring = np.abs(h.vertices[:, 0] - h.skel_joints[16, 0]) < 0.01
    assert (h.skel_weights[elbow_ring][:, [15, 16, 17]].sum(axis=1) > 0.9).all()
    assert (h.skel_weights[elbow_ring] > 0).sum(axis=1).max() >= 2  # the elbow blends


def test_shape_directions_mean_what_their_names_say():
    h = build_humanoid("neutral")
    v = h.vertices
    assert h.shapedirs.shape == (C.SMPL_NUM_VERTICES, 3, 10) and len(SHAPE_DIRECTION_NAMES) == 10

    def shaped(index, amount=1.0):
        return v + amount * h.shapedirs[:, :, index]

    assert 0.05 < np.ptp(shaped(0)[:, 1]) - np.ptp(v[:, 1]) < 0.09  # height, about +7 cm
    waist = np.abs(v[:, 1] - h.smpl_joints[3, 1]) < 0.02
    assert np.ptp(shaped(1)[waist][:, 0]) > np.ptp(v[waist][:, 0]) * 1.05  # girth
    hips, ankles = h.skel_joint_regressor @ shaped(2), h.skel_joint_regressor @ v
    assert (hips[1, 1] - hips[3, 1]) - (ankles[1, 1] - ankles[3, 1]) > 0.03  # legs longer
    assert (h.smpl_joint_regressor @ shaped(3))[16, 0] > h.smpl_joints[16, 0] + 0.01  # wider shoulders
    assert (h.smpl_joint_regressor @ shaped(5))[20, 0] - h.smpl_joints[20, 0] > 0.02  # longer arms
    for index in range(10):
        for amount in (-3.0, 3.0):  # plausible over the range the filters keep
            moved = np.linalg.norm(amount * h.shapedirs[:, :, index], axis=1).max()
            assert 0.005 < moved < 0.35, (SHAPE_DIRECTION_NAMES[index], amount, moved)


def test_pose_correctives_are_small_and_local():
    h = build_humanoid("neutral")
    assert h.posedirs.shape == (C.SMPL_NUM_VERTICES, 3, 207)
    per_joint = h.posedirs.reshape(C.SMPL_NUM_VERTICES, 3, 23, 9).transpose(2, 0, 1, 3)  # (23, V, 3, 9)
    # The largest displacement any unit-norm (R − I) feature of a joint can cause; a 90° bend has norm ≈ 2.
    worst = np.linalg.norm(per_joint, ord=2, axis=(2, 3))  # (23, V)
    assert (worst.max(axis=1) > 5e-4).all() and worst.max() < 0.012
    for joint in range(1, 24):
        far = np.linalg.norm(h.vertices - h.smpl_joints[joint], axis=1) > 0.3
        assert worst[joint - 1, far].max() < 1e-4


def test_front_render_has_a_person_shaped_silhouette():
    h = build_humanoid("neutral")
    centred = h.vertices - (h.vertices.max(0) + h.vertices.min(0)) / 2
    image = render_mesh(look_at_body(centred, "front", 5.0), h.faces, 520.0, (100, 100), (200, 200))
    body_pixels = (image != 255).any(axis=2)
    rows, cols = np.nonzero(body_pixels)
    height, width = np.ptp(rows), np.ptp(cols)
    assert 0.9 < height / width < 1.15  # T-pose: as wide as tall
    widest = body_pixels.sum(axis=1).argmax()  # the arms, out wide at shoulder height
    assert body_pixels[widest].sum() > 0.9 * width and widest - rows.min() < 0.35 * height
    leg_row = body_pixels[rows.min() + int(0.85 * height)]
    runs = np.flatnonzero(np.diff(leg_row.astype(int)) == 1)
    assert len(runs) == 2  # two separate legs
