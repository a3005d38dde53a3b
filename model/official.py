"""The official Spikformer's checkpoints (ZK-Zhou/spikformer) as stforge models.

`import_spikformer` reads a state_dict saved by the official training code, for its three
architectures, into a float :class:`~model.transformer.SpikingTransformer` that computes the
same function (docs/ARCHITECTURE.md, "The official Spikformer"): the four-stage SPS stem
(D/8, D/4, D/2, D channels) pooled with MaxPool2d(3, 2, 1), the relative position embedding,
biases on the linear layers (folded with their BatchNorm at export), LIF neurons (tau 2,
threshold 1, 0.5 for attention) trained with the sigmoid surrogate and ``detach_reset``. After
the import, prune, compensate, quantize, export, hdl and sim take it like any stforge model.

The official key names, per architecture (``block.<i>.`` prefixes each encoder block's keys):

=============  ==================================  ===========================================
stforge        cifar10 (nn.Linear)                 cifar10dvs, imagenet (1x1 convolutions)
=============  ==================================  ===========================================
stem conv i    patch_embed.proj_conv{"",1,2,3}     the same
stem BN i      patch_embed.proj_bn{"",1,2,3}       the same
rpe            patch_embed.rpe_conv, rpe_bn        the same
q, k, v        attn.{q,k,v}_linear, _bn            attn.{q,k,v}_conv, _bn (no bias)
o              attn.proj_linear, proj_bn           attn.proj_conv, proj_bn
mlp1, mlp2     mlp.fc1_linear, fc1_bn, fc2_...     mlp.fc1_conv, fc1_bn, fc2_...
head           head                                head
=============  ==================================  ===========================================

The official blocks also hold two LayerNorms (``norm1``, ``norm2``), and the CIFAR10-DVS model
a final LayerNorm (``norm``) and a position embedding (``pos_embed``), that their forward never
uses; they are skipped. Any other key, or a missing one, is refused with one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from model.config import Config, ModelConfig
from model.errors import StforgeError

__all__ = ["ARCHITECTURES", "Architecture", "import_spikformer", "official_config",
           "official_state_dict_keys"]


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint's shapes do not tell: the official defaults of one architecture."""
    data: str                   # stforge's data set of the same shape
    image_size: int
    heads: int
    timesteps: int
    pool: tuple[bool, ...]      # MaxPool2d(3, 2, 1) after each of the four stem stages
    attn_scale: float
    conv1x1: bool               # block matrices stored as 1x1 convolutions (else nn.Linear)


#: The official models (cifar10/cifar10.yml, cifar10dvs/train.py, imagenet/imagenet.yml)
ARCHITECTURES = {
    "cifar10": Architecture("cifar10", 32, 12, 4, (False, False, True, True), 0.125, False),
    "cifar10dvs": Architecture("cifar10-dvs", 128, 16, 16, (True, True, True, True), 0.25,
                               True),
    "imagenet": Architecture("cifar10", 224, 8, 4, (True, True, True, True), 0.125, True),
}

_STEM = ("", "1", "2", "3")
#: tensors the official models hold but their forward never reads: each block's two LayerNorms,
#: and the CIFAR10-DVS model's final LayerNorm and position embedding
_UNUSED = r"block\.\d+\.norm[12]\.(weight|bias)|norm\.(weight|bias)|pos_embed"
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_MATRICES = {"q": ("attn", "q"), "k": ("attn", "k"), "v": ("attn", "v"),
             "o": ("attn", "proj"), "mlp1": ("mlp", "fc1"), "mlp2": ("mlp", "fc2")}


def official_config(arch: str, *, dim: int, depth: int, classes: int, in_channels: int,
                    mlp_ratio: int, heads: int | None = None, timesteps: int | None = None,
                    image_size: int | None = None) -> Config:
    """The stforge config of an official architecture with these sizes."""
    a = ARCHITECTURES[arch]
    config = Config()
    config.data.name = a.data
    config.model = ModelConfig(
        in_channels=in_channels, image_size=image_size or a.image_size,
        stem_channels=[dim // 8, dim // 4, dim // 2, dim], stem_pool=list(a.pool),
        stem_pool_kernel=3, rpe=True, dim=dim, depth=depth, heads=heads or a.heads,
        mlp_ratio=mlp_ratio, timesteps=timesteps or a.timesteps, attn_scale=a.attn_scale,
        attn_threshold=0.5, num_classes=classes, surrogate="sigmoid", detach_reset=True,
        linear_bias=True)
    try:
        return config.validate()
    except StforgeError as exc:
        raise StforgeError(f"--arch {arch}: {exc}") from None


def official_state_dict_keys(arch: str, depth: int) -> dict[str, str]:
    """{official key: stforge key} of every tensor an official checkpoint holds (besides the
    unused LayerNorms), for `depth` blocks."""
    a = ARCHITECTURES[arch]
    out = {}
    for i, suffix in enumerate(_STEM):
        out[f"patch_embed.proj_conv{suffix}.weight"] = f"stem_convs.{i}.weight"
        out.update({f"patch_embed.proj_bn{suffix}.{p}": f"stem_norms.{i}.{p}" for p in _BN})
    out["patch_embed.rpe_conv.weight"] = "rpe_conv.weight"
    out.update({f"patch_embed.rpe_bn.{p}": f"rpe_norm.{p}" for p in _BN})
    kind = "conv" if a.conv1x1 else "linear"
    for b in range(depth):
        for ours, (part, theirs) in _MATRICES.items():
            where = f"block.{b}.{part}.{theirs}"
            out[f"{where}_{kind}.weight"] = f"blocks.{b}.matrices.{ours}.linear.weight"
            if not (a.conv1x1 and ours in ("q", "k", "v")):     # bias=False there
                out[f"{where}_{kind}.bias"] = f"blocks.{b}.matrices.{ours}.linear.bias"
            out.update({f"{where}_bn.{p}": f"blocks.{b}.norms.{ours}.{p}" for p in _BN})
    out["head.weight"], out["head.bias"] = "head.weight", "head.bias"
    return out


def _state_dict(path: Path) -> dict:
    import torch
    if not path.is_file():
        raise StforgeError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:        # noqa: BLE001 - any unreadable file is the user's
        raise StforgeError(f"checkpoint {path} cannot be read by torch.load: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    for key in ("state_dict", "model", "state_dict_ema"):   # timm's and plain checkpoints
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise StforgeError(f"checkpoint {path} holds no state_dict")
    return {re.sub(r"^module\.", "", k): v for k, v in obj.items()}    # DistributedDataParallel


def _shape(state, key, path):
    if key not in state:
        raise StforgeError(f"checkpoint {path} has no {key!r}: not an official Spikformer "
                           f"checkpoint of this architecture")
    return tuple(state[key].shape)


def import_spikformer(path, arch: str, *, heads: int | None = None,
                      timesteps: int | None = None, image_size: int | None = None,
                      dim: int | None = None, depth: int | None = None):
    """(float SpikingTransformer, Config) from an official checkpoint at `path`. Dimensions come
    from its tensors (`dim` and `depth`, if given, must agree); `heads`, `timesteps` and
    `image_size`, which no tensor holds, default to the architecture's."""
    import torch

    from model.transformer import SpikingTransformer
    if arch not in ARCHITECTURES:
        raise StforgeError(f"--arch must be one of {', '.join(ARCHITECTURES)}, not {arch!r}")
    path = Path(path)
    state = _state_dict(path)
    classes, found_dim = _shape(state, "head.weight", path)
    in_channels = _shape(state, "patch_embed.proj_conv.weight", path)[1]
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"block\.(\d+)\.", k))}
    found_depth = len(blocks)
    if blocks != set(range(found_depth)) or not blocks:
        raise StforgeError(f"checkpoint {path} has blocks {sorted(blocks)}: not 0..depth-1")
    for given, found, flag in ((dim, found_dim, "--dim"), (depth, found_depth, "--depth")):
        if given is not None and given != found:
            raise StforgeError(f"{flag} {given} disagrees with the checkpoint's {found}")
    kind = "conv" if ARCHITECTURES[arch].conv1x1 else "linear"
    hidden = _shape(state, f"block.0.mlp.fc1_{kind}.weight", path)[0]
    if hidden % found_dim:
        raise StforgeError(f"checkpoint {path}: MLP width {hidden} is not a multiple of "
                           f"dim {found_dim}")
    config = official_config(arch, dim=found_dim, depth=found_depth, classes=classes,
                             in_channels=in_channels, mlp_ratio=hidden // found_dim,
                             heads=heads, timesteps=timesteps, image_size=image_size)
    model = SpikingTransformer(config.model, "lif")
    target = model.state_dict()
    mapping = official_state_dict_keys(arch, found_depth)
    unused = {k for k in state if re.fullmatch(_UNUSED, k)}
    unknown = sorted(set(state) - set(mapping) - unused)
    if unknown:
        raise StforgeError(f"checkpoint {path} holds {unknown[0]!r}, which --arch {arch} does "
                           f"not have ({len(unknown)} such keys)")
    loaded = {}
    for theirs, ours in mapping.items():
        _shape(state, theirs, path)
        tensor = state[theirs]
        want = tuple(target[ours].shape)
        if tensor.dim() > len(want) and all(d == 1 for d in tensor.shape[len(want):]):
            tensor = tensor.reshape(tensor.shape[:len(want)])   # 1x1 convolutions: (o, i, 1[, 1])
        if tuple(tensor.shape) != want:
            raise StforgeError(f"checkpoint {path}: {theirs} is {tuple(state[theirs].shape)}, "
                               f"stforge's {ours} needs {want}")
        loaded[ours] = tensor.to(target[ours].dtype)
    for ours in target:             # q, k, v of the 1x1-conv architectures have no bias
        if ours not in loaded and ours.endswith(".linear.bias"):
            loaded[ours] = torch.zeros_like(target[ours])
    missing = sorted(k for k in target if k not in loaded and not k.endswith("mask"))
    neuron_state = [k for k in missing if ".neurons." in k or "_neuron" in k]
    if set(missing) - set(neuron_state):
        raise StforgeError(f"internal: stforge tensors without an official source: "
                           f"{sorted(set(missing) - set(neuron_state))[:3]}")
    model.load_state_dict(loaded, strict=False)     # LIF neurons: tau 2, threshold defaults
    return model.eval(), config
