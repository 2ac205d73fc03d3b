"""The HSMR network: a ViT backbone (ViTPose layout) and a transformer-decoder head that regresses
the SKEL pose, shape and a weak-perspective crop camera.

Input: the 256×256 person crop, RGB in [0, 1]. The network cuts its central 256×192 (the ViTPose
input), normalises it with the ImageNet statistics, turns it into a 16×12 map of tokens and lets one
learned query cross-attend them. The head predicts a delta on top of a mean for the pose (the 88-D
target of `pose_repr`, or the 46 Euler DoFs for the paper's ablation), β (mean 0) and the camera
(s, t_x, t_y) (mean [0.9, 0, 0]).

Mean pose and frames. SKEL's frame has Y up and the face towards +Z; the crop camera has y down
and looks along +z. The pelvis DoFs turn about the pelvis bone's own axes (z, x, y), whose z is
SKEL's lateral X axis, so q = [π, 0, …] (pelvis tilt π) is a half turn about the lateral axis: head
towards −y (up in the image), face towards −z (the camera), the person's right on the image's left.
That is the upright body facing the camera, HSMR's mean; the tests check it on the SKEL layer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hsmr_model import skel_constants as C
from hsmr_model.camera import CROP_SIZE, FOCAL_PIXELS
from hsmr_model.losses import GridKeypoints
from hsmr_model.pose_repr import TARGET_SIZE, bone_rotations, q_to_target88, target88_to_bone_rotations, target88_to_q

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VIT_INPUT_WIDTH = 192
MEAN_CAMERA = (0.9, 0.0, 0.0)
POSE_TARGETS = ("88d", "euler")


# ------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class ViTConfig:
    """ViT backbone sizes. The patch embedding pads by 2 as ViTPose's does, so that its weights apply
    unchanged (the token grid stays 16×12 for a 256×192 input)."""

    dim: int
    depth: int
    heads: int
    mlp_dim: int
    patch_size: int = 16
    patch_padding: int = 2
    image_size: tuple[int, int] = (CROP_SIZE, VIT_INPUT_WIDTH)
    drop_path: float = 0.0  # stochastic depth at the last block, linearly less before it
    # "patch": ViTPose's single strided convolution (its weights load); "conv": the image averaged
    # down by `stem_pool`, then 3×3 stride-2 convolutions to a stride of `patch_size` (a ViT trained
    # from scratch on little data learns far faster with them; the pooling buys CPU time).
    stem: str = "patch"
    stem_pool: int = 1
    stem_depth: int = 1  # convolutions per stride-2 stage of the conv stem (the extra ones at stride 1)

    @property
    def grid(self) -> tuple[int, int]:
        """Token rows and columns."""
        h, w = self.image_size
        if self.stem == "conv":
            return h // self.patch_size, w // self.patch_size
        return tuple((side + 2 * self.patch_padding - self.patch_size) // self.patch_size + 1 for side in (h, w))


@dataclass(frozen=True)
class HeadConfig:
    """Transformer-decoder head sizes (HMR2.0/HSMR: depth 6, 8 heads of 64, mlp 1024, tokens of 1024)."""

    dim: int = 1024
    depth: int = 6
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 1024
    # The query starts from a linear map of the whole token grid (flattened), not a learned constant:
    # a network from scratch then reads where the body parts are from the first step, while
    # cross-attention starts uniform (an average that forgets the layout). Only for small grids.
    spatial_query: bool = False
    # Keypoints read straight from the token grid (a linear map per token to one heatmap logit per
    # keypoint, then a soft-argmax over the cells): an auxiliary 2D loss on them tells a backbone trained
    # from scratch where each body part is, from every sample (keypoints-only ones too). 0: none.
    grid_keypoints: int = 0
    # The query also gets an MLP of those keypoints (positions and peak probabilities), so the head
    # can lift a pose from where the body parts are (measured: it helped only with the heatmap loss).
    lift_keypoints: bool = False


VIT_CONFIGS: dict[str, ViTConfig] = {
    # Small enough that a CPU test trains it for a few hundred steps in seconds.
    "tiny": ViTConfig(dim=64, depth=2, heads=2, mlp_dim=256),
    # The CPU recipe's network (`hsmr_data.training.RECIPES["cpu"]`): a convolutional stem, still a
    # ViT and the same head, trained from scratch in minutes.
    "small": ViTConfig(dim=128, depth=2, heads=4, mlp_dim=384, patch_size=32, stem="conv", stem_pool=2, stem_depth=2),
    "B": ViTConfig(dim=768, depth=12, heads=12, mlp_dim=3072),
    # HMR2.0 and HSMR fine-tune ViT-H from ViTPose with stochastic depth 0.55.
    "H": ViTConfig(dim=1280, depth=32, heads=16, mlp_dim=5120, drop_path=0.55),
}
HEAD_CONFIGS: dict[str, HeadConfig] = {
    "tiny": HeadConfig(dim=64, depth=2, heads=2, dim_head=32, mlp_dim=128),
    "small": HeadConfig(
        dim=128,
        depth=2,
        heads=4,
        dim_head=32,
        mlp_dim=256,
        spatial_query=True,
        grid_keypoints=C.NUM_KEYPOINTS,
        lift_keypoints=True,
    ),
    "B": HeadConfig(),
    "H": HeadConfig(),
}


@dataclass(frozen=True)
class NetworkConfig:
    backbone: ViTConfig
    head: HeadConfig = field(default_factory=HeadConfig)
    pose_target: str = "88d"  # "88d": the continuous 88-D target; "euler": the 46 DoFs directly (ablation)

    def __post_init__(self):
        if self.pose_target not in POSE_TARGETS:
            raise ValueError(f"pose_target must be one of {POSE_TARGETS}, got {self.pose_target!r}")

    def to_dict(self) -> dict:
        """Plain containers (what a checkpoint stores, so it rebuilds its network whatever the named sizes become)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> NetworkConfig:
        backbone = {**values["backbone"], "image_size": tuple(values["backbone"]["image_size"])}
        return cls(ViTConfig(**backbone), HeadConfig(**values["head"]), values["pose_target"])


def network_config(size: str, pose_target: str = "88d") -> NetworkConfig:
    """The named sizes: "tiny" (CPU tests), "small" (CPU training), "B" and "H" (the paper's)."""
    if size not in VIT_CONFIGS:
        raise ValueError(f"unknown network size {size!r}; known: {sorted(VIT_CONFIGS)}")
    return NetworkConfig(VIT_CONFIGS[size], HEAD_CONFIGS[size], pose_target)


def checkpoint_network(state: dict) -> NetworkConfig:
    """The network of a training checkpoint (hsmr_data.training): as the checkpoint stored it, or, for
    one written before checkpoints stored it, its named size as defined now."""
    if "network" in state:
        return NetworkConfig.from_dict(state["network"])
    return network_config(state["config"]["size"], state["config"]["pose_target"])


# ------------------------------------------------------------------------------ pure functions
def crop_vit_input(images: torch.Tensor, width: int = VIT_INPUT_WIDTH) -> torch.Tensor:
    """The central `width` columns of the crop: (B, C, H, W) → (B, C, H, width)."""
    left = (images.shape[-1] - width) // 2
    if left < 0:
        raise ValueError(f"images are {images.shape[-1]} wide, narrower than the {width} to cut")
    return images[..., left : left + width]


def normalize_imagenet(images: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) → standardised with the ImageNet mean and std (what ViTPose saw)."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images - mean) / std


def weak_perspective_to_translation(
    cam: torch.Tensor, focal: float = FOCAL_PIXELS, crop_size: int = CROP_SIZE
) -> torch.Tensor:
    """Weak-perspective (s, t_x, t_y) (B, 3) → camera translation [t_x, t_y, 2·f/(crop·s)] (B, 3).

    s scales the body (about 2 units tall) to the crop in [−1, 1] coordinates, so the depth that
    makes a perspective camera of focal `f` px show it that large is 2f/(crop·s).
    """
    depth = 2 * focal / (crop_size * cam[:, 0] + 1e-9)
    return torch.stack([cam[:, 1], cam[:, 2], depth], dim=-1)


def mean_pose(pose_target: str) -> torch.Tensor:
    """The head's mean pose: q = [π, 0, …] (upright, facing the camera) as 88-D target or as q: (88,) or (46,)."""
    q = torch.zeros(1, C.NUM_DOFS, dtype=torch.float64)
    q[0, 0] = math.pi
    return (q_to_target88(q) if pose_target == "88d" else q)[0].float()


def decode_pose(pose: torch.Tensor, pose_target: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's pose output → (target88 (B, 88), q (B, 46), bone rotations (B, 24, 3, 3)).

    From the 88-D target, the rotations of the 3-DoF bones come straight from their 6D values; from
    Euler q (the ablation), everything is computed from q.
    """
    if pose_target == "88d":
        return pose, target88_to_q(pose), target88_to_bone_rotations(pose)
    return q_to_target88(pose), pose, bone_rotations(pose)


def grid_cell_centres(rows: int, cols: int, width: int = VIT_INPUT_WIDTH, crop_size: int = CROP_SIZE) -> torch.Tensor:
    """Centres of the token grid's cells in normalised crop coordinates (the crop spans [−0.5, 0.5]; the
    grid covers its central `width` columns): (rows·cols, 2) as (x, y), row-major like the tokens."""
    y = (torch.arange(rows) + 0.5) / rows - 0.5
    x = ((torch.arange(cols) + 0.5) / cols - 0.5) * width / crop_size
    return torch.stack(torch.meshgrid(x, y, indexing="xy"), dim=-1).reshape(-1, 2)


def soft_argmax(logits: torch.Tensor, centres: torch.Tensor) -> GridKeypoints:
    """Expected positions under a softmax over cells: logits (B, K, N), cell centres (N, 2) → positions
    (B, K, 2) with their log-probabilities (B, K, N)."""
    log_probabilities = logits.log_softmax(dim=-1)
    return GridKeypoints(log_probabilities.exp() @ centres, log_probabilities, centres)


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop a residual branch (B, N, D) per sample, rescale the kept ones."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty(x.shape[0], *([1] * (x.ndim - 1))).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention: (B, Nq, H·d), (B, Nk, H·d) ×2 → (B, Nq, H·d)."""

    def split(x):
        return x.unflatten(-1, (heads, -1)).transpose(1, 2)

    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


# ------------------------------------------------------------------------------------ backbone
class ConvStem(nn.Module):
    """Average pooling by `pool`, then stages of 3×3 convolutions (BatchNorm, ReLU; the last one linear),
    each stage one at stride 2 and `depth` − 1 at stride 1, up to a total stride of `stride`:
    (B, 3, H, W) → (B, dim, H/stride, W/stride)."""

    def __init__(self, dim: int, stride: int, pool: int, depth: int = 1):
        super().__init__()
        convolutions = int(math.log2(stride // pool))
        if pool * 2**convolutions != stride or convolutions < 1:
            raise ValueError(f"the conv stem needs stride / pool a power of two >= 2, got {stride} / {pool}")
        widths = [3] + [max(dim >> (convolutions - i), 8) for i in range(1, convolutions)]
        layers: list[nn.Module] = [nn.AvgPool2d(pool)] if pool > 1 else []
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers.append(nn.Conv2d(widths[-1], dim, 3, stride=2, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(attention(*self.qkv(x).chunk(3, dim=-1), heads=self.heads))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden)
        self.fc_out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block; LayerNorm eps 1e-6 as ViTPose."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, drop_path_rate: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = FeedForward(dim, mlp_dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + drop_path(self.attn(self.attn_norm(x)), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.mlp_norm(x)), self.drop_path_rate, self.training)


class ViTBackbone(nn.Module):
    """Plain ViT with a learned positional embedding: normalised (B, 3, 256, 192) → token map (B, D, 16, 12)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        rows, cols = config.grid
        if config.stem not in ("patch", "conv"):
            raise ValueError(f"stem must be 'patch' or 'conv', got {config.stem!r}")
        if config.stem == "conv":
            self.patch_embed = ConvStem(config.dim, config.patch_size, config.stem_pool, config.stem_depth)
        else:
            self.patch_embed = nn.Conv2d(
                3, config.dim, config.patch_size, stride=config.patch_size, padding=config.patch_padding
            )
        self.pos_embed = nn.Parameter(torch.zeros(1, rows * cols, config.dim))
        rates = [config.drop_path * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(EncoderBlock(config.dim, config.heads, config.mlp_dim, r) for r in rates)
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[-2:]) != self.config.image_size:
            raise ValueError(f"backbone input must be {self.config.image_size}, got {tuple(images.shape[-2:])}")
        grid = self.patch_embed(images)  # (B, D, rows, cols)
        x = grid.flatten(2).transpose(1, 2) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x).transpose(1, 2).unflatten(-1, grid.shape[-2:])


# ---------------------------------------------------------------------------------------- head
class CrossAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * heads * dim_head, bias=False)
        self.out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.out(attention(self.to_q(x), *self.to_kv(context).chunk(2, dim=-1), heads=self.heads))


class DecoderBlock(nn.Module):
    """Pre-norm decoder block: self-attention among the queries, cross-attention to the image tokens, MLP."""

    def __init__(self, dim: int, context_dim: int, config: HeadConfig):
        super().__init__()
        self.self_norm = nn.LayerNorm(dim)
        self.self_attn = CrossAttention(dim, dim, config.heads, config.dim_head)
        self.cross_norm = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, context_dim, config.heads, config.dim_head)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, config.mlp_dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = self.self_norm(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.cross_norm(x), context)
        return x + self.mlp(self.mlp_norm(x))


class HSMRHead(nn.Module):
    """One query token cross-attends the backbone tokens; linear read-outs add deltas to the means.

    HMR2.0 feeds a zero token through a linear embedding, which leaves only that layer's bias: here
    that is the learned `query` itself.
    """

    def __init__(self, context_dim: int, config: HeadConfig, pose_target: str = "88d", tokens: int = 0):
        super().__init__()
        pose_size = TARGET_SIZE if pose_target == "88d" else C.NUM_DOFS
        self.query = nn.Parameter(torch.randn(1, 1, config.dim))
        self.grid_to_query = nn.Linear(tokens * context_dim, config.dim) if config.spatial_query else None
        self.keypoints_to_query = None
        if config.lift_keypoints:
            if not config.grid_keypoints:
                raise ValueError("lift_keypoints needs grid_keypoints")
            self.keypoints_to_query = nn.Sequential(
                nn.Linear(3 * config.grid_keypoints, config.mlp_dim), nn.GELU(), nn.Linear(config.mlp_dim, config.dim)
            )
        self.blocks = nn.ModuleList(DecoderBlock(config.dim, context_dim, config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim)
        self.dec_pose = nn.Linear(config.dim, pose_size)
        self.dec_betas = nn.Linear(config.dim, C.NUM_BETAS)
        self.dec_cam = nn.Linear(config.dim, 3)
        # Small read-outs: the first predictions sit at the means, a sane body in front of the camera.
        for linear in (self.dec_pose, self.dec_betas, self.dec_cam):
            nn.init.xavier_uniform_(linear.weight, gain=0.01)
            nn.init.zeros_(linear.bias)
        self.register_buffer("mean_pose", mean_pose(pose_target))
        self.register_buffer("mean_betas", torch.zeros(C.NUM_BETAS))
        self.register_buffer("mean_cam", torch.tensor(MEAN_CAMERA))

    def forward(
        self, tokens: torch.Tensor, keypoints: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image tokens (B, N, D) and, when the head lifts them, grid keypoints (B, K, 3) as x, y and peak
        probability → pose (B, 88 or 46), β (B, 10), camera (s, t_x, t_y) (B, 3)."""
        x = self.query.expand(tokens.shape[0], -1, -1)
        if self.grid_to_query is not None:
            x = x + self.grid_to_query(tokens.flatten(1))[:, None]
        if self.keypoints_to_query is not None:
            x = x + self.keypoints_to_query(keypoints.flatten(1))[:, None]
        for block in self.blocks:
            x = block(x, tokens)
        x = self.norm(x)[:, 0]
        return self.mean_pose + self.dec_pose(x), self.mean_betas + self.dec_betas(x), self.mean_cam + self.dec_cam(x)


@dataclass
class HSMROutput:
    target88: torch.Tensor  # (B, 88)
    q: torch.Tensor  # (B, 46)
    bone_rotations: torch.Tensor  # (B, 24, 3, 3)
    betas: torch.Tensor  # (B, 10)
    cam: torch.Tensor  # (B, 3) weak perspective (s, t_x, t_y)
    cam_t: torch.Tensor  # (B, 3) crop-camera translation
    grid_keypoints: GridKeypoints | None = None  # read from the token grid, when the network does


class HSMRNetwork(nn.Module):
    """256×256 crops, RGB in [0, 1] (B, 3, 256, 256) → HSMROutput."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.config = config
        self.backbone = ViTBackbone(config.backbone)
        rows, cols = config.backbone.grid
        self.head = HSMRHead(config.backbone.dim, config.head, config.pose_target, rows * cols)
        self.keypoint_logits = None
        if config.head.grid_keypoints:
            self.keypoint_logits = nn.Linear(config.backbone.dim, config.head.grid_keypoints)
            self.register_buffer("cell_centres", grid_cell_centres(rows, cols, config.backbone.image_size[1]))

    def forward(self, images: torch.Tensor) -> HSMROutput:
        tokens = self.backbone(normalize_imagenet(crop_vit_input(images))).flatten(2).transpose(1, 2)
        grid = lifted = None
        if self.keypoint_logits is not None:
            grid = soft_argmax(self.keypoint_logits(tokens).transpose(1, 2), self.cell_centres)
            peak = grid.log_probabilities.amax(dim=-1, keepdim=True).exp()
            lifted = torch.cat([grid.positions, peak], dim=-1)
        pose, betas, cam = self.head(tokens, lifted)
        target88, q, rotations = decode_pose(pose, self.config.pose_target)
        return HSMROutput(target88, q, rotations, betas, cam, weak_perspective_to_translation(cam), grid)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -------------------------------------------------------------------------- ViTPose checkpoints
@dataclass
class LoadReport:
    """What `load_vitpose_backbone` did with each checkpoint key."""

    loaded: list[str]  # our parameter names that were filled
    missing: list[str]  # ours with no value in the checkpoint
    unexpected: list[str]  # backbone keys of the checkpoint that we have no place for
    ignored: list[str]  # keys outside the backbone (e.g. the keypoint head) when the checkpoint has a prefix
    pos_embed_resized_from: tuple[int, int] | None  # the checkpoint's token grid, when it was interpolated


# ViTPose name → ours, per block and for the rest (ViTPose: mmpose/models/backbones/vit.py).
_VITPOSE_BLOCK_NAMES = {
    "norm1": "attn_norm",
    "attn.qkv": "attn.qkv",
    "attn.proj": "attn.out",
    "norm2": "mlp_norm",
    "mlp.fc1": "mlp.fc_in",
    "mlp.fc2": "mlp.fc_out",
}
_VITPOSE_NAMES = {"patch_embed.proj": "patch_embed", "last_norm": "norm"}


def vitpose_to_ours(name: str) -> str | None:
    """Our parameter name for a ViTPose backbone key (without "backbone."), or None if it has none."""
    parts = name.split(".")
    if parts[0] == "blocks" and len(parts) >= 4 and parts[1].isdigit():
        ours = _VITPOSE_BLOCK_NAMES.get(".".join(parts[2:-1]))
        return None if ours is None else f"blocks.{parts[1]}.{ours}.{parts[-1]}"
    ours = _VITPOSE_NAMES.get(".".join(parts[:-1]))
    return None if ours is None else f"{ours}.{parts[-1]}"


def fold_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """ViTPose's positional embedding (1, 1 + n, D) → ours (1, rows·cols, D), and the source grid if resized.

    ViTPose keeps a slot for the class token of its pre-training and adds it to every patch's
    embedding, so it is folded in here. A square grid of another size (e.g. MAE's 14×14) is
    interpolated bicubically; anything else cannot be placed and is an error.
    """
    cls_slot, patches = pos_embed[:, :1], pos_embed[:, 1:]
    rows, cols = grid
    count = patches.shape[1]
    if count == rows * cols:
        return patches + cls_slot, None
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(
            f"pos_embed has {count} patch tokens (+1 class slot): neither our {rows}×{cols} grid nor a square one"
        )
    square = patches.transpose(1, 2).unflatten(-1, (side, side))
    resized = F.interpolate(square.float(), size=grid, mode="bicubic", align_corners=False).to(patches.dtype)
    return resized.flatten(2).transpose(1, 2) + cls_slot, (side, side)


def load_vitpose_backbone(model: nn.Module, path: Path | str, strict: bool = True) -> LoadReport:
    """Load a ViTPose backbone checkpoint into our ViT (or the backbone of an HSMRNetwork).

    The checkpoint is read with `torch.load(weights_only=True)` (tensors and plain containers only,
    never arbitrary pickled objects); its state dict sits under "state_dict" or is the file itself.
    With a "backbone." prefix only those keys are used and the rest reported as ignored.

    Raises ValueError on a shape mismatch, and with `strict` when any of our parameters is missing
    or a backbone key is unexpected; the message lists them.
    """
    backbone = model.backbone if isinstance(model, HSMRNetwork) else model
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle with objects beyond tensors and containers, or a broken file
        raise ValueError(f"{path}: cannot read as a weights-only torch checkpoint: {error}") from error
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (or one under 'state_dict'), got {type(checkpoint)}")

    ignored = []
    if any(key.startswith("backbone.") for key in state):
        ignored = sorted(key for key in state if not key.startswith("backbone."))
        state = {key.removeprefix("backbone."): value for key, value in state.items() if key.startswith("backbone.")}

    ours = backbone.state_dict()
    mapped, unexpected, resized_from = {}, [], None
    for key, value in state.items():
        if key == "pos_embed":
            mapped["pos_embed"], resized_from = fold_pos_embed(value, backbone.config.grid)
            continue
        name = vitpose_to_ours(key)
        if name is None or name not in ours:
            unexpected.append(key)
        else:
            mapped[name] = value
    mismatched = [
        f"{name}: ours {tuple(ours[name].shape)}, checkpoint {tuple(value.shape)}"
        for name, value in mapped.items()
        if value.shape != ours[name].shape
    ]
    if mismatched:
        raise ValueError(f"{path}: shapes differ (wrong backbone size?):\n  " + "\n  ".join(mismatched))
    report = LoadReport(
        loaded=sorted(mapped),
        missing=sorted(set(ours) - set(mapped)),
        unexpected=sorted(unexpected),
        ignored=ignored,
        pos_embed_resized_from=resized_from,
    )
    if strict and (report.missing or report.unexpected):
        raise ValueError(
            f"{path}: missing keys (ours) {report.missing}; unexpected keys (checkpoint) {report.unexpected}"
        )
    backbone.load_state_dict(mapped, strict=False)
    return report
