"""Mesh building blocks for the procedural humanoid: a quad cage grown by extrusion,
Catmull–Clark subdivision, triangulation and longest-edge splitting.

Every step keeps the surface closed, 2-manifold, genus 0 and consistently oriented, so the
result has the SMPL mesh's counts exactly: a closed genus-0 triangle mesh has F = 2V − 4.
"""

from __future__ import annotations

import heapq

import numpy as np


class QuadCage:
    """A closed quad mesh grown by extruding faces."""

    def __init__(self):
        self.vertices: list[np.ndarray] = []
        self.faces: list[list[int]] = []

    def add_vertex(self, p) -> int:
        self.vertices.append(np.asarray(p, dtype=np.float64))
        return len(self.vertices) - 1

    def add_face(self, ids) -> int:
        self.faces.append(list(ids))
        return len(self.faces) - 1

    def find_face(self, ids) -> int:
        target = set(ids)
        for index, face in enumerate(self.faces):
            if set(face) == target:
                return index
        raise KeyError(ids)

    def extrude(self, face_index: int, centre, u, v, half_u: float, half_v: float) -> int:
        """Replace a face by a tube segment ending in a rectangle (centre ± half_u·u ± half_v·v).

        Each new corner takes the side of u and v its old corner was on, so the tube does not twist.
        Returns the index of the new end face.
        """
        face = self.faces[face_index]
        old = np.array([self.vertices[i] for i in face])
        mid = old.mean(axis=0)
        u, v = np.asarray(u, float), np.asarray(v, float)
        new_ids = []
        for p in old:
            su = 1.0 if (p - mid) @ u >= 0 else -1.0
            sv = 1.0 if (p - mid) @ v >= 0 else -1.0
            new_ids.append(self.add_vertex(np.asarray(centre) + su * half_u * u + sv * half_v * v))
        for k in range(4):
            a, b = face[k], face[(k + 1) % 4]
            self.add_face([a, b, new_ids[(k + 1) % 4], new_ids[k]])
        self.faces[face_index] = new_ids
        return face_index

    def side_face(self, end_face: int, direction) -> int:
        """Of the faces around the end of the last extruded segment, the one furthest along `direction`."""
        end = set(self.faces[end_face])
        sides = [i for i, f in enumerate(self.faces) if i != end_face and len(end & set(f)) == 2]
        return max(sides, key=lambda i: np.mean([self.vertices[v] for v in self.faces[i]], axis=0) @ direction)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.vertices), np.array(self.faces, dtype=np.int64)


def catmull_clark(vertices: np.ndarray, quads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Catmull–Clark step on a closed quad mesh. (V,3), (F,4) → (V+E+F, 3), (4F, 4)."""
    nv, nf = len(vertices), len(quads)
    face_points = vertices[quads].mean(axis=1)
    half = np.stack([quads, np.roll(quads, -1, axis=1)], -1).reshape(-1, 2)
    key = np.sort(half, axis=1)
    edges, inverse = np.unique(key, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    face_of_half = np.repeat(np.arange(nf), 4)
    edge_face_sum = np.zeros((len(edges), 3))
    np.add.at(edge_face_sum, inverse, face_points[face_of_half])
    counts = np.bincount(inverse, minlength=len(edges))
    if not np.all(counts == 2):
        raise ValueError("Catmull–Clark needs a closed 2-manifold quad mesh")
    edge_points = (vertices[edges[:, 0]] + vertices[edges[:, 1]] + edge_face_sum) / 4

    valence = np.bincount(edges.ravel(), minlength=nv).astype(float)
    face_avg = np.zeros((nv, 3))
    np.add.at(face_avg, quads.ravel(), np.repeat(face_points, 4, axis=0))
    face_avg /= np.bincount(quads.ravel(), minlength=nv)[:, None]
    mid_sum = np.zeros((nv, 3))
    mids = (vertices[edges[:, 0]] + vertices[edges[:, 1]]) / 2
    np.add.at(mid_sum, edges[:, 0], mids)
    np.add.at(mid_sum, edges[:, 1], mids)
    edge_avg = mid_sum / valence[:, None]
    n = valence[:, None]
    moved = (face_avg + 2 * edge_avg + (n - 3) * vertices) / n

    new_vertices = np.vstack([moved, edge_points, face_points])
    edge_id = (nv + inverse).reshape(nf, 4)  # edge k of face f joins corner k and k+1
    face_id = nv + len(edges) + np.arange(nf)
    new_quads = []
    for k in range(4):
        new_quads.append(np.stack([quads[:, k], edge_id[:, k], face_id, edge_id[:, k - 1]], axis=1))
    return new_vertices, np.concatenate(new_quads)


def shorter_diagonals(vertices: np.ndarray, quads: np.ndarray) -> np.ndarray:
    """True where a quad's 0–2 diagonal is the shorter one. (F,4) → (F,) bool."""
    d02 = np.linalg.norm(vertices[quads[:, 0]] - vertices[quads[:, 2]], axis=1)
    d13 = np.linalg.norm(vertices[quads[:, 1]] - vertices[quads[:, 3]], axis=1)
    return d02 <= d13


def triangulate(quads: np.ndarray, use02: np.ndarray) -> np.ndarray:
    """Split each quad along the chosen diagonal. (F,4) → (2F,3), same orientation."""
    a, b, c, d = quads.T
    t1 = np.where(use02[:, None], np.stack([a, b, c], 1), np.stack([a, b, d], 1))
    t2 = np.where(use02[:, None], np.stack([a, c, d], 1), np.stack([b, c, d], 1))
    return np.concatenate([t1, t2])


def split_longest_edges(vertices: np.ndarray, faces: np.ndarray, target_vertices: int):
    """Split the longest edge, one at a time, until the mesh has `target_vertices` vertices.

    A split of an edge shared by two triangles adds its midpoint and turns the two triangles
    into four; the surface stays closed and consistently oriented.
    """
    tris = [list(f) for f in faces]
    edge_faces: dict[tuple[int, int], set[int]] = {}
    for fi, f in enumerate(tris):
        for k in range(3):
            edge_faces.setdefault(tuple(sorted((f[k], f[(k + 1) % 3]))), set()).add(fi)
    pts = np.asarray(vertices, dtype=float)
    positions = list(pts)

    def length(e):
        return float(np.linalg.norm(positions[e[0]] - positions[e[1]]))

    splits: list[tuple[int, int]] = []
    heap = [(-length(e), e) for e in edge_faces]
    heapq.heapify(heap)
    while len(positions) < target_vertices:
        neg, e = heapq.heappop(heap)
        if e not in edge_faces or abs(-neg - length(e)) > 1e-12:
            continue
        a, b = e
        splits.append(e)
        m = len(positions)
        positions.append((positions[a] + positions[b]) / 2)
        for fi in list(edge_faces.pop(e)):
            f = tris[fi]
            k = next(i for i in range(3) if {f[i], f[(i + 1) % 3]} == {a, b})
            p, q, r = f[k], f[(k + 1) % 3], f[(k + 2) % 3]  # edge p→q, opposite r
            for old in ((q, r),):
                edge_faces[tuple(sorted(old))].discard(fi)
            tris[fi] = [p, m, r]
            tris.append([m, q, r])
            new_fi = len(tris) - 1
            edge_faces[tuple(sorted((q, r)))].add(new_fi)
            for ne, owner in (((p, m), fi), ((m, q), new_fi), ((m, r), fi), ((m, r), new_fi)):
                edge_faces.setdefault(tuple(sorted(ne)), set()).add(owner)
        for ne in ((a, m), (m, b)):
            heapq.heappush(heap, (-length(tuple(sorted(ne))), tuple(sorted(ne))))
        for fi in (len(tris) - 1, len(tris) - 2):
            for k in range(3):
                ne = tuple(sorted((tris[fi][k], tris[fi][(k + 1) % 3])))
                heapq.heappush(heap, (-length(ne), ne))
    return np.array(positions), np.array(tris, dtype=np.int64), splits


def replay_splits(vertices: np.ndarray, splits: list[tuple[int, int]]) -> np.ndarray:
    """Vertex positions after the same sequence of edge splits on another body of the same topology."""
    positions = list(np.asarray(vertices, dtype=float))
    for a, b in splits:
        positions.append((positions[a] + positions[b]) / 2)
    return np.array(positions)
