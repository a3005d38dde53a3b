"""The one config schema: data, model, training, pruning, quantization and pipeline settings.

A config is a TOML file whose tables map onto the dataclasses below. Loading is strict: an unknown
table or key, a value of the wrong type or an impossible combination raises :class:`ConfigError`
naming the key, before anything is computed or written. No torch import here: the schema is shared
with the torch-free downstream.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import MAX_SEED, ConfigError

__all__ = [
    "DataConfig", "ModelConfig", "TrainConfig", "PruneConfig", "QuantConfig", "PipelineConfig",
    "Config", "Limit", "LIMITS", "WEIGHT_BITS", "load_config", "config_from_dict",
    "config_to_dict",
]

NEURONS = ("lif", "slif")
#: model.surrogate: the spike's surrogate gradients (model/neurons.py SURROGATES)
SURROGATES = ("atan", "sigmoid")
#: Integer weight widths the export and the hardware take (``stforge quantize --bits`` too).
WEIGHT_BITS = (2, 16)
#: The widest layer (channels, features) a config may ask for.
MAX_CHANNELS = 4096
METHODS = ("dense", "l1p", "dsp")
DATASETS = ("digits", "cifar10", "cifar100", "cifar10-dvs")


@dataclass
class DataConfig:
    """Which data set, and where it lies (no data set can be downloaded here)."""
    name: str = "digits"
    path: str | None = None
    seed: int = 0                      # the train/test split seed
    limit: int | None = None           # keep only the first `limit` images of each split
    dvs_size: int = 32                 # CIFAR10-DVS frames are summed down from 128x128 to this
    dvs_clip: int = 15                 # CIFAR10-DVS per-pixel event counts are clipped to this


@dataclass
class ModelConfig:
    """Spikformer-style spiking transformer. See docs/ARCHITECTURE.md for the equations."""
    in_channels: int = 1
    image_size: int = 8
    stem_channels: list[int] = field(default_factory=lambda: [16, 32])
    stem_pool: list[bool] = field(default_factory=lambda: [True, False])
    stem_pool_kernel: int = 2          # the pooled stages' stride-2 OR window: 2 (2x2) or 3 (3x3,
                                       # padding 1: the official SPS's MaxPool2d(3, 2, 1))
    rpe: bool = False                  # relative position embedding conv after the stem
    dim: int = 32
    depth: int = 1
    heads: int = 4
    mlp_ratio: int = 4
    timesteps: int = 4
    attn_scale: float = 0.125
    attn_threshold: float = 0.5
    num_classes: int = 10
    surrogate: str = "atan"            # the spike's surrogate gradient: "atan" or "sigmoid"
    surrogate_alpha: float | None = None   # its sharpness (None: atan 2, sigmoid 4)
    detach_reset: bool = False         # no gradient through the reset (the official code's)
    linear_bias: bool = False          # a bias on every block matrix (the official code's Linear
                                       # layers); folded with its BatchNorm at export

    @property
    def tokens(self) -> int:
        side = self.image_size // 2 ** sum(self.stem_pool)
        return side * side

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


@dataclass
class TrainConfig:
    """Optimiser settings for one training stage."""
    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    neuron_lr: float = 2e-2            # u_th and tau learn faster than the weights
    weight_decay: float = 1e-4
    seed: int = 0
    # Spike-activity penalty: loss = cross-entropy + spike_penalty * mean firing rate of every
    # spiking layer (model.train.spike_rate). Fewer spikes are fewer cycles on chip, where a
    # spike-fed layer's work is active inputs x the non-zeros they touch. 0 = off (bit-exact).
    spike_penalty: float = 0.0


@dataclass
class PruneConfig:
    """L1P (unstructured magnitude) and DSP (low-rank) settings."""
    sparsity: float = 0.9
    scope: str = "layer"               # "layer": each matrix alone; "global": one threshold
    stem: bool = False                 # L1P also prunes the spike-fed stem convs (not the paper's)
    schedule: str = "oneshot"          # "oneshot" or "gradual" (cubic ramp over `gradual_steps`)
    gradual_steps: int = 5
    rank: int | None = 6               # DSP rank for every block matrix ...
    energy: float | None = None        # ... or the smallest rank keeping this singular-value energy


@dataclass
class QuantConfig:
    """Brevitas QAT: integer weights with per-channel scales."""
    weight_bits: int = 8
    extra_bits: list[int] = field(default_factory=lambda: [4])   # also trained and reported
    leak_bits: int = 8                 # K: leak k = 1/tau on a 2^-K grid (QAT uses it too)
    frac_bits: int = 8                 # F: membrane fraction bits below one accumulator LSB


@dataclass
class PipelineConfig:
    """What `make train` and `make sweep` run."""
    dense: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=60))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=30, lr=1e-3))
    qat: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=5e-4))
    deploy_method: str = "l1p"
    sweep_sparsities: list[float] = field(
        default_factory=lambda: [0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
    sweep_ranks: list[int] = field(default_factory=lambda: [2, 4, 6, 8, 12])
    sweep_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out_dir: str = "build"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)

    def validate(self) -> "Config":
        """Reject impossible settings with one line naming the key: every number against
        :data:`LIMITS`, then the settings that depend on each other."""
        d, m, p, q, pl = self.data, self.model, self.prune, self.quant, self.pipeline
        _check(d.name in DATASETS, f"data.name must be one of {', '.join(DATASETS)}, not {d.name!r}")
        for key, limit in LIMITS.items():
            for where, value in _values(self, key):
                limit.check(where, value)
        _check(128 % d.dvs_size == 0, f"data.dvs_size must divide 128, not {d.dvs_size}")
        _check(m.surrogate in SURROGATES, f"model.surrogate must be one of "
                                          f"{', '.join(SURROGATES)}, not {m.surrogate!r}")
        _check(len(m.stem_channels) >= 1, "model.stem_channels must not be empty")
        _check(m.stem_pool_kernel in (2, 3),
               f"model.stem_pool_kernel must be 2 or 3, not {m.stem_pool_kernel!r}")
        _check(len(m.stem_pool) == len(m.stem_channels),
               f"model.stem_pool has {len(m.stem_pool)} entries but model.stem_channels has "
               f"{len(m.stem_channels)}")
        _check(m.stem_channels[-1] == m.dim,
               f"model.stem_channels must end with model.dim ({m.dim}), not {m.stem_channels[-1]}")
        _check(m.dim % m.heads == 0,
               f"model.dim ({m.dim}) is not divisible by model.heads ({m.heads})")
        _check(m.image_size % 2 ** sum(m.stem_pool) == 0,
               f"model.image_size ({m.image_size}) is not divisible by 2**{sum(m.stem_pool)} "
               f"(one halving per pooled stem stage)")
        _check(p.scope in ("layer", "global"),
               f"prune.scope must be 'layer' or 'global', not {p.scope!r}")
        _check(p.schedule in ("oneshot", "gradual"),
               f"prune.schedule must be 'oneshot' or 'gradual', not {p.schedule!r}")
        _check((p.rank is None) != (p.energy is None),
               "give exactly one of prune.rank and prune.energy")
        max_rank = m.dim   # every block matrix is dim x dim or dim x (mlp_ratio * dim)
        for r in ([p.rank] if p.rank is not None else []) + list(pl.sweep_ranks):
            _check(1 <= r <= max_rank,
                   f"rank {r} is impossible: it must be in 1..min(m, n) = {max_rank} "
                   f"for model.dim {m.dim}")
        _check(pl.deploy_method in METHODS,
               f"pipeline.deploy_method must be one of {', '.join(METHODS)}, "
               f"not {pl.deploy_method!r}")
        _check(len(pl.sweep_seeds) >= 1, "pipeline.sweep_seeds must name at least one seed")
        return self


@dataclass(frozen=True)
class Limit:
    """The range of a numeric setting: ``low``..``high`` (None: unbounded), an end left out
    when ``low_open`` / ``high_open``. A float must also be finite (TOML has ``inf`` and
    ``nan``)."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.low is not None and not (value > self.low if self.low_open else
                                         value >= self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else
                                     value <= self.high)

    def describe(self, integer: bool) -> str:
        if integer and not (self.low_open or self.high_open):
            return (f"an integer in {self.low}..{self.high}" if self.high is not None else
                    f"an integer >= {self.low}")
        if self.high is None:
            return f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        return (f"a number in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")

    def check(self, where: str, value) -> None:
        _check(self.holds(value), f"{where} must be "
                                  f"{self.describe(not isinstance(value, float))}, not {value!r}")


#: The ranges of the numeric settings (``key[]``: every item of a list; ``pipeline.*``: the
#: dense, finetune and qat stages). Where the integer artifact or the hardware has a limit it is
#: that limit (timesteps, classes, bits, the largest input count); elsewhere the bound is far
#: above anything that trains on a CPU, so that a typo (``dim = 1e9``) is one line here and not
#: an allocation failure deep inside PyTorch.
LIMITS = {
    "data.seed": Limit(0, MAX_SEED),
    "data.limit": Limit(1),
    "data.dvs_size": Limit(1, 128),
    "data.dvs_clip": Limit(1, 1 << 16),              # the artifact's input_max
    "model.in_channels": Limit(1, MAX_CHANNELS),
    "model.image_size": Limit(1, 1024),
    "model.stem_channels[]": Limit(1, MAX_CHANNELS),
    "model.dim": Limit(1, MAX_CHANNELS),
    "model.depth": Limit(1, 64),
    "model.heads": Limit(1, MAX_CHANNELS),
    "model.mlp_ratio": Limit(1, 16),
    "model.timesteps": Limit(1, 4096),               # the artifact's (model.ir ModelInfo)
    "model.attn_scale": Limit(0, low_open=True),
    "model.attn_threshold": Limit(0, low_open=True),
    "model.surrogate_alpha": Limit(0, low_open=True),
    "model.num_classes": Limit(1, 256),              # the artifact's
    "prune.sparsity": Limit(0, 1, high_open=True),
    "prune.gradual_steps": Limit(1, 1000),
    "prune.energy": Limit(0, 1, low_open=True),
    "quant.weight_bits": Limit(*WEIGHT_BITS),
    "quant.extra_bits[]": Limit(*WEIGHT_BITS),
    "quant.leak_bits": Limit(1, 16),
    "quant.frac_bits": Limit(0, 16),
    "pipeline.sweep_sparsities[]": Limit(0, 1, high_open=True),
    "pipeline.sweep_seeds[]": Limit(0, MAX_SEED),
    "pipeline.dense.epochs": Limit(1),               # everything else starts from this model
    "pipeline.finetune.epochs": Limit(0),            # 0: no fine-tuning
    "pipeline.qat.epochs": Limit(0),                 # 0: quantized without training
    "pipeline.*.batch_size": Limit(1),
    "pipeline.*.lr": Limit(0, low_open=True),
    "pipeline.*.neuron_lr": Limit(0, low_open=True),
    "pipeline.*.weight_decay": Limit(0),
    "pipeline.*.seed": Limit(0, MAX_SEED),
    "pipeline.*.spike_penalty": Limit(0),
}

TRAIN_STAGES = ("dense", "finetune", "qat")


def _values(config: "Config", key: str):
    """(the key as the user wrote it, its value) for every setting `key` names; None (an unset
    optional setting) is left out."""
    keys = [key.replace("*", stage) for stage in TRAIN_STAGES] if "*" in key else [key]
    for k in keys:
        listed = k.endswith("[]")
        obj = config
        for part in k.removesuffix("[]").split("."):
            obj = getattr(obj, part)
        items = enumerate(obj) if listed else [(None, obj)]
        for i, value in items:
            if value is not None:
                yield (k.removesuffix("[]") + ("" if i is None else f"[{i}]"), value)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _convert(tp, value, where: str):
    """Check `value` against the annotation `tp`, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, not {value!r}")
        return _build(tp, value, where)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, not {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where} must be {tp.__name__}, not {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key {where + '.' if where else ''}{key} "
                              f"(known: {', '.join(sorted(known))})")
    kwargs = {k: _convert(hints[k], v, f"{where + '.' if where else ''}{k}")
              for k, v in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict) -> Config:
    """Build and validate a Config from plain data (a parsed TOML file, or a checkpoint's copy)."""
    return _build(Config, values, "").validate()


def config_to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def load_config(path: str | Path | None) -> Config:
    """Read a TOML config; None gives the defaults."""
    if path is None:
        return Config().validate()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_dict(values)
