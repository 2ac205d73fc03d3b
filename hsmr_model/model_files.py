"""Reading body-model files: official SMPL (.pkl v1.0/v1.1 with chumpy arrays, or .npz), official
SKEL (`skel_{male,female}.pkl`, version 1.1.1) and the 44-keypoint regressor.

Model pickles are untrusted input: they are read with a restricted unpickler that only admits
numpy arrays, scipy sparse matrices, plain containers and chumpy arrays (turned into numpy
without importing chumpy). Anything else, such as a payload that would call `os.system`, is refused.
Every problem raises `ModelFileError` naming the file, the key, what was expected and where
real files come from.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hsmr_model import skel_constants as C

SMPL_SOURCE_HINT = (
    "Real SMPL files come from https://smpl.is.tue.mpg.de (licence required); "
    "for tests and demos run `hsmr models synth --out storage/models`."
)
SKEL_SOURCE_HINT = (
    "Real SKEL files (skel_models_v1.1) come from https://skel.is.tue.mpg.de (licence required); "
    "for tests and demos run `hsmr models synth --out storage/models`."
)
SKEL_VERSION = "1.1.1"
KEYPOINT_REGRESSOR_VERSION = "hsmr-keypoints-44/1"


@dataclass(frozen=True)
class BodyModelPaths:
    """Where the body-model files are. `from_root` gives the standard layout under one folder;
    real files can also be named one by one."""

    smpl: Path
    skel_male: Path
    skel_female: Path
    keypoint_regressor: Path

    @classmethod
    def from_root(cls, root: Path | str) -> BodyModelPaths:
        root = Path(root)
        return cls(
            smpl=root / "smpl" / "SMPL_NEUTRAL.pkl",
            skel_male=root / "skel" / "skel_male.pkl",
            skel_female=root / "skel" / "skel_female.pkl",
            keypoint_regressor=root / "smpl" / "keypoint_regressor_44.npz",
        )

    def smpl_for(self, gender: str) -> Path:
        """The SMPL file of a gender: `smpl` for 'neutral', else SMPL_MALE / SMPL_FEMALE (.pkl, else .npz)
        next to it. Motion sequences (AMASS) are posed with their gender's SMPL."""
        if gender not in SMPL_GENDERS:
            raise ValueError(f"SMPL genders are {SMPL_GENDERS}, got {gender!r}")
        if gender == "neutral":
            return self.smpl
        candidates = [gendered_smpl_path(self.smpl.parent, gender, suffix) for suffix in (".pkl", ".npz")]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise ModelFileError(candidates[0], f"file not found (nor {candidates[1].name})", SMPL_SOURCE_HINT)

    def skel(self, sex: str) -> Path:
        """SKEL has no neutral model: 'male' or 'female'."""
        if sex not in ("male", "female"):
            raise ValueError(f"SKEL models are 'male' or 'female' (there is no neutral SKEL), got {sex!r}")
        return self.skel_male if sex == "male" else self.skel_female


SMPL_GENDERS = ("male", "female", "neutral")


def gendered_smpl_path(folder: Path | str, gender: str, suffix: str = ".pkl") -> Path:
    """The official name of a gender's SMPL file in `folder`: SMPL_MALE.pkl, SMPL_FEMALE.npz, ..."""
    return Path(folder) / f"SMPL_{gender.upper()}{suffix}"


class ModelFileError(ValueError):
    """A body-model file is missing, of the wrong version, or malformed."""

    def __init__(self, path: Path | str, problem: str, hint: str = "", key: str | None = None):
        where = f"{path}" + (f", key '{key}'" if key else "")
        super().__init__(f"{where}: {problem}" + (f". {hint}" if hint else ""))
        self.path = Path(path)
        self.key = key


# ----------------------------------------------------------------------------- restricted unpickling
class ChumpyArray:
    """Stand-in for chumpy objects found in official SMPL pickles: keeps only their numpy value."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict) and "x" in state:
            self.value = np.asarray(state["x"])
        elif isinstance(state, dict) and "a" in state and "idxs" in state:
            # chumpy.reordering.Select: a flat selection from another array.
            source = state["a"].value if isinstance(state["a"], ChumpyArray) else np.asarray(state["a"])
            value = source.reshape(-1)[np.asarray(state["idxs"], dtype=np.int64)]
            shape = state.get("preferred_shape")
            self.value = value.reshape(tuple(shape)) if shape is not None else value
        else:
            raise pickle.UnpicklingError("unsupported chumpy object (expected an array state with 'x')")


def _sparse_classes() -> dict[str, type]:
    names = ("csc_matrix", "csr_matrix", "coo_matrix", "csc_array", "csr_array", "coo_array")
    return {name: getattr(sp, name) for name in names}


_SPARSE_MODULES = (
    "scipy.sparse",
    "scipy.sparse.csc",
    "scipy.sparse.csr",
    "scipy.sparse.coo",
    "scipy.sparse._csc",
    "scipy.sparse._csr",
    "scipy.sparse._coo",
    "scipy.sparse._arrays",
)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray

    allowed: dict[tuple[str, str], Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    for module in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "ndarray")] = np.ndarray
        allowed[(module, "dtype")] = np.dtype
    for module in _SPARSE_MODULES:
        for name, cls in _sparse_classes().items():
            allowed[(module, name)] = cls
    # Python 3 writes bytes in protocol-2 pickles through _codecs.encode; it only builds bytes.
    import _codecs

    allowed[("_codecs", "encode")] = _codecs.encode
    allowed[("copyreg", "_reconstructor")] = _safe_reconstructor
    allowed[("copy_reg", "_reconstructor")] = _safe_reconstructor
    allowed[("__builtin__", "object")] = object
    allowed[("builtins", "object")] = object
    return allowed


def _safe_reconstructor(cls: type, base: type, state: Any) -> Any:
    # Protocol-0/1 pickles (Python 2 era) rebuild objects through copyreg._reconstructor.
    # Only the classes admitted by find_class reach here, and only with plain bases.
    if base is not object:
        raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r} from base {base!r}")
    return object.__new__(cls)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy, scipy.sparse, chumpy (as `ChumpyArray`) and plain types."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] == "chumpy":
            return ChumpyArray
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'") from None


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, ChumpyArray) else value


def load_object_restricted(path: Path | str, hint: str = "") -> Any:
    """Whatever a pickle holds (a dict, an array, a sparse matrix), through `RestrictedUnpickler`."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found", hint)
    try:
        with path.open("rb") as handle:
            return _plain(RestrictedUnpickler(handle, encoding="latin1").load())
    except pickle.UnpicklingError as err:
        raise ModelFileError(path, f"unsafe or unreadable pickle ({err})", hint) from err
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, ImportError) as err:
        raise ModelFileError(path, f"not a readable model pickle ({type(err).__name__}: {err})", hint) from err


def load_pickle_restricted(path: Path | str, hint: str = "") -> dict[str, Any]:
    """Load a model pickle through `RestrictedUnpickler`; chumpy arrays come back as numpy arrays."""
    path = Path(path)
    data = load_object_restricted(path, hint)
    if not isinstance(data, dict):
        raise ModelFileError(path, f"expected a pickled dict, found {type(data).__name__}", hint)
    return {key: _plain(value) for key, value in data.items()}


def load_npz_restricted(path: Path | str, hint: str = "") -> dict[str, np.ndarray]:
    """Load every array of an .npz; object arrays (which would unpickle) are refused."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, "file not found", hint)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError) as err:
        raise ModelFileError(path, f"unreadable .npz ({err}); object arrays are refused", hint) from err


# ------------------------------------------------------------------------------------ validation
@dataclass(frozen=True)
class _Check:
    path: Path
    hint: str

    def fail(self, key: str | None, problem: str) -> ModelFileError:
        return ModelFileError(self.path, problem, self.hint, key)

    def require(self, data: dict[str, Any], key: str) -> Any:
        if key not in data:
            raise self.fail(key, f"missing key (found keys: {sorted(data)})")
        return data[key]

    def dense(self, data: dict[str, Any], key: str, shape: tuple[int | None, ...], dtype=np.float64) -> np.ndarray:
        value = self.require(data, key)
        if sp.issparse(value):
            value = value.toarray()
        try:
            array = np.asarray(value, dtype=dtype)
        except (TypeError, ValueError) as err:
            raise self.fail(
                key, f"expected a numeric array of shape {_fmt(shape)}, found {type(value).__name__}"
            ) from err
        if array.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, array.shape, strict=True)):
            raise self.fail(key, f"expected shape {_fmt(shape)}, found {array.shape}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise self.fail(key, "contains NaN or infinite values")
        return array

    def sparse(
        self, data: dict[str, Any], key: str, shape: tuple[int | None, ...], require_sparse: bool
    ) -> sp.csr_matrix:
        value = self.require(data, key)
        if require_sparse and not sp.issparse(value):
            raise self.fail(
                key, f"expected a scipy.sparse COO matrix of shape {_fmt(shape)}, found {type(value).__name__}"
            )
        matrix = (
            sp.csr_matrix(value, dtype=np.float64)
            if sp.issparse(value)
            else sp.csr_matrix(np.asarray(value, dtype=np.float64))
        )
        if matrix.shape[0] != shape[0] or (shape[1] is not None and matrix.shape[1] != shape[1]):
            raise self.fail(key, f"expected shape {_fmt(shape)}, found {matrix.shape}")
        if not np.isfinite(matrix.data).all():
            raise self.fail(key, "contains NaN or infinite values")
        return matrix


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"


# ------------------------------------------------------------------------------------------ SMPL
@dataclass(frozen=True)
class SmplModelData:
    """The arrays of an SMPL model file, as numpy (the `data_struct` smplx.SMPL is built from)."""

    v_template: np.ndarray  # (V, 3)
    shapedirs: np.ndarray  # (V, 3, ≥10)
    posedirs: np.ndarray  # (V, 3, 207)
    J_regressor: sp.csr_matrix  # (24, V)
    weights: np.ndarray  # (V, 24)
    kintree_table: np.ndarray  # (2, 24) int64
    f: np.ndarray  # (F, 3) int64


def read_smpl_model(path: Path | str) -> SmplModelData:
    """Read an official SMPL model file (.pkl with chumpy arrays, or .npz) without chumpy."""
    path = Path(path)
    check = _Check(path, SMPL_SOURCE_HINT)
    if path.suffix == ".npz":
        data = load_npz_restricted(path, SMPL_SOURCE_HINT)
    elif path.suffix == ".pkl":
        data = load_pickle_restricted(path, SMPL_SOURCE_HINT)
    else:
        raise ModelFileError(path, "expected a .pkl or .npz SMPL model file", SMPL_SOURCE_HINT)

    v_template = check.dense(data, "v_template", (None, 3))
    num_vertices = v_template.shape[0]
    shapedirs = check.dense(data, "shapedirs", (num_vertices, 3, None))
    if shapedirs.shape[2] < C.NUM_BETAS:
        raise check.fail("shapedirs", f"expected at least {C.NUM_BETAS} shape directions, found {shapedirs.shape[2]}")
    kintree = check.dense(data, "kintree_table", (2, 24), dtype=np.int64)
    kintree[0, 0] = -1  # official files store the root's parent as uint32 4294967295
    return SmplModelData(
        v_template=v_template,
        shapedirs=shapedirs,
        posedirs=check.dense(data, "posedirs", (num_vertices, 3, 207)),
        J_regressor=check.sparse(data, "J_regressor", (24, num_vertices), require_sparse=False),
        weights=check.dense(data, "weights", (num_vertices, 24)),
        kintree_table=kintree,
        f=check.dense(data, "f", (None, 3), dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------ SKEL
@dataclass(frozen=True)
class SkelModelData:
    """The arrays of an official SKEL model file (`skel_{male,female}.pkl`, version 1.1.1)."""

    skin_template_v: np.ndarray  # (V, 3)
    skin_template_f: np.ndarray  # (F, 3) int64
    shapedirs: np.ndarray  # (V, 3, 10)
    posedirs: np.ndarray  # (V, 3, 207)
    J_regressor: sp.csr_matrix  # (24, V) SMPL joints
    J_regressor_osim: sp.csr_matrix  # (24, V) SKEL joints
    skin_weights: sp.csr_matrix  # (V, 24)
    skel_template_v: np.ndarray  # (Nk, 3), each bone in its own frame
    skel_template_f: np.ndarray  # (Fk, 3) int64
    skel_weights: sp.csr_matrix  # (Nk, 24)
    skel_weights_rigid: sp.csr_matrix  # (Nk, 24)
    parents: tuple[int, ...]  # from osim_kintree_table
    apose_rel_transfo: np.ndarray  # (24, 4, 4)
    per_joint_rot: np.ndarray  # (24, 3, 3)
    bone_names: tuple[str, ...]
    pose_params_name: tuple[str, ...]


def read_skel_model(path: Path | str) -> SkelModelData:
    """Read an official SKEL v1.1.1 model file (`skel_male.pkl` / `skel_female.pkl`)."""
    path = Path(path)
    check = _Check(path, SKEL_SOURCE_HINT)
    data = load_pickle_restricted(path, SKEL_SOURCE_HINT)
    version = check.require(data, "version")
    if str(version) != SKEL_VERSION:
        raise check.fail("version", f"expected SKEL model version '{SKEL_VERSION}', found '{version}'")

    skin_v = check.dense(data, "skin_template_v", (None, 3))
    nv = skin_v.shape[0]
    skel_v = check.dense(data, "skel_template_v", (None, 3))
    nk = skel_v.shape[0]
    shapedirs = check.dense(data, "shapedirs", (nv, 3, None))
    if shapedirs.shape[2] < C.NUM_BETAS:
        raise check.fail("shapedirs", f"expected at least {C.NUM_BETAS} shape directions, found {shapedirs.shape[2]}")

    kintree = check.dense(data, "osim_kintree_table", (2, C.NUM_BONES), dtype=np.int64)
    column_of = {int(joint): col for col, joint in enumerate(kintree[1])}
    try:
        parents = (-1, *(column_of[int(p)] for p in kintree[0, 1:]))
    except KeyError as err:
        raise check.fail("osim_kintree_table", f"parent id {err} is not a joint id of row 1") from err
    if parents != C.BONE_PARENTS:
        raise check.fail("osim_kintree_table", f"expected the SKEL tree {C.BONE_PARENTS}, found {parents}")

    names = tuple(str(n) for n in check.require(data, "pose_params_name"))
    if len(names) != C.NUM_DOFS:
        raise check.fail("pose_params_name", f"expected {C.NUM_DOFS} DoF names, found {len(names)}")

    return SkelModelData(
        skin_template_v=skin_v,
        skin_template_f=check.dense(data, "skin_template_f", (None, 3), dtype=np.int64),
        shapedirs=shapedirs[:, :, : C.NUM_BETAS],
        posedirs=check.dense(data, "posedirs", (nv, 3, 207)),
        J_regressor=check.sparse(data, "J_regressor", (24, nv), require_sparse=True),
        J_regressor_osim=check.sparse(data, "J_regressor_osim", (C.NUM_BONES, nv), require_sparse=True),
        skin_weights=check.sparse(data, "skin_weights", (nv, C.NUM_BONES), require_sparse=True),
        skel_template_v=skel_v,
        skel_template_f=check.dense(data, "skel_template_f", (None, 3), dtype=np.int64),
        skel_weights=check.sparse(data, "skel_weights", (nk, C.NUM_BONES), require_sparse=True),
        skel_weights_rigid=check.sparse(data, "skel_weights_rigid", (nk, C.NUM_BONES), require_sparse=True),
        parents=parents,
        apose_rel_transfo=check.dense(data, "apose_rel_transfo", (C.NUM_BONES, 4, 4)),
        per_joint_rot=check.dense(data, "per_joint_rot", (C.NUM_BONES, 3, 3)),
        bone_names=tuple(str(n) for n in check.require(data, "bone_names")),
        pose_params_name=names,
    )


# ---------------------------------------------------------------------------- keypoint regressor
@dataclass(frozen=True)
class KeypointRegressor:
    """A linear map from the 6890 SMPL-topology vertices to the 44 dataset keypoints."""

    matrix: sp.csr_matrix  # (44, V)
    names: tuple[str, ...]


def read_keypoint_regressor(path: Path | str, num_vertices: int = C.SMPL_NUM_VERTICES) -> KeypointRegressor:
    """Read the 44-keypoint regressor (.npz: version, names, and the COO triplets rows/cols/values)."""
    path = Path(path)
    hint = "It is written next to the SMPL model by `hsmr models synth`."
    check = _Check(path, hint)
    data = load_npz_restricted(path, hint)
    version = str(check.require(data, "version"))
    if version != KEYPOINT_REGRESSOR_VERSION:
        raise check.fail("version", f"expected '{KEYPOINT_REGRESSOR_VERSION}', found '{version}'")
    rows = check.dense(data, "rows", (None,), dtype=np.int64)
    cols = check.dense(data, "cols", (rows.shape[0],), dtype=np.int64)
    values = check.dense(data, "values", (rows.shape[0],))
    names = tuple(str(n) for n in check.require(data, "names"))
    if names != C.KEYPOINT_NAMES:
        raise check.fail("names", f"expected the {C.NUM_KEYPOINTS} keypoints in SPIN/HMR2.0 order")
    if rows.size and (rows.max() >= C.NUM_KEYPOINTS or cols.max() >= num_vertices or min(rows.min(), cols.min()) < 0):
        raise check.fail("rows", f"indices out of range for a ({C.NUM_KEYPOINTS}, {num_vertices}) matrix")
    matrix = sp.csr_matrix((values, (rows, cols)), shape=(C.NUM_KEYPOINTS, num_vertices))
    return KeypointRegressor(matrix=matrix, names=names)


def write_keypoint_regressor(path: Path | str, matrix: sp.spmatrix) -> None:
    """Write a (44, V) keypoint regressor in the format `read_keypoint_regressor` reads (atomically)."""
    coo = sp.coo_matrix(matrix)
    if coo.shape[0] != C.NUM_KEYPOINTS:
        raise ValueError(f"expected {C.NUM_KEYPOINTS} rows, got {coo.shape[0]}")
    write_npz_atomically(
        path,
        version=np.array(KEYPOINT_REGRESSOR_VERSION),
        names=np.array(C.KEYPOINT_NAMES),
        rows=coo.row.astype(np.int64),
        cols=coo.col.astype(np.int64),
        values=coo.data.astype(np.float64),
    )


def read_regressor_pickle(path: Path | str, rows: int, num_vertices: int, hint: str = "") -> sp.csr_matrix:
    """A pickled (rows, num_vertices) regressor, dense or scipy sparse, as HSMR and HMR2.0 ship them
    (`J_regressor_SKEL_mix_MALE.pkl`, `SMPL_to_J19.pkl`; Python 2 era pickles read as latin1)."""
    value = load_object_restricted(path, hint)
    if not (sp.issparse(value) or isinstance(value, np.ndarray) and value.dtype.kind in "fiu"):
        raise ModelFileError(
            path, f"expected a pickled numeric array or scipy sparse matrix, found {type(value)}", hint
        )
    return _Check(Path(path), hint).sparse({"regressor": value}, "regressor", (rows, num_vertices), False)


def write_npz_atomically(path: Path | str, **arrays: np.ndarray) -> None:
    """np.savez to `path` exactly (no ".npz" appended), through a temporary name so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:  # a handle, so numpy does not append ".npz" to the name
        np.savez(handle, **arrays)
    tmp.replace(path)
