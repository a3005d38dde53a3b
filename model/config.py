"""The one config schema: data, model, training, pruning, quantization and pipeline settings.

A config is a TOML file whose tables map onto the dataclasses below. Loading is strict: an unknown
table or key, a value of the wrong type or an impossible combination raises :class:`ConfigError`
naming the key, before anything is computed or written. No torch import here: the schema is shared
with the torch-free downstream.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

from model.errors import ConfigError

__all__ = [
    "DataConfig", "ModelConfig", "TrainConfig", "PruneConfig", "QuantConfig", "PipelineConfig",
    "Config", "load_config", "config_from_dict", "config_to_dict",
]

NEURONS = ("lif", "slif")
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
    rpe: bool = False                  # relative position embedding conv after the stem
    dim: int = 32
    depth: int = 1
    heads: int = 4
    mlp_ratio: int = 4
    timesteps: int = 4
    attn_scale: float = 0.125
    attn_threshold: float = 0.5
    num_classes: int = 10

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
        """Reject impossible settings with one line naming the key."""
        d, m, p, q, pl = self.data, self.model, self.prune, self.quant, self.pipeline
        _check(d.name in DATASETS, f"data.name must be one of {', '.join(DATASETS)}, not {d.name!r}")
        _check(d.limit is None or d.limit > 0, f"data.limit must be positive, not {d.limit}")
        _check(d.dvs_size > 0 and 128 % d.dvs_size == 0,
               f"data.dvs_size must divide 128, not {d.dvs_size}")
        for key in ("in_channels", "image_size", "dim", "depth", "heads", "mlp_ratio", "timesteps",
                    "num_classes"):
            value = getattr(m, key)
            _check(value > 0, f"model.{key} must be a positive integer, not {value}")
        _check(len(m.stem_channels) >= 1 and all(c > 0 for c in m.stem_channels),
               f"model.stem_channels must be a non-empty list of positive integers, "
               f"not {m.stem_channels}")
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
        _check(m.attn_scale > 0, f"model.attn_scale must be positive, not {m.attn_scale}")
        _check(m.attn_threshold > 0,
               f"model.attn_threshold must be positive, not {m.attn_threshold}")
        _check(0.0 <= p.sparsity < 1.0, f"prune.sparsity must be in [0, 1), not {p.sparsity}")
        for s in pl.sweep_sparsities:
            _check(0.0 <= s < 1.0, f"pipeline.sweep_sparsities must be in [0, 1), not {s}")
        _check(p.scope in ("layer", "global"),
               f"prune.scope must be 'layer' or 'global', not {p.scope!r}")
        _check(p.schedule in ("oneshot", "gradual"),
               f"prune.schedule must be 'oneshot' or 'gradual', not {p.schedule!r}")
        _check(p.gradual_steps >= 1, f"prune.gradual_steps must be >= 1, not {p.gradual_steps}")
        _check((p.rank is None) != (p.energy is None),
               "give exactly one of prune.rank and prune.energy")
        max_rank = m.dim   # every block matrix is dim x dim or dim x (mlp_ratio * dim)
        for r in ([p.rank] if p.rank is not None else []) + list(pl.sweep_ranks):
            _check(1 <= r <= max_rank,
                   f"rank {r} is impossible: it must be in 1..min(m, n) = {max_rank} "
                   f"for model.dim {m.dim}")
        _check(p.energy is None or 0.0 < p.energy <= 1.0,
               f"prune.energy must be in (0, 1], not {p.energy}")
        for bits in [q.weight_bits, *q.extra_bits]:
            _check(2 <= bits <= 16, f"quant weight bits must be in 2..16, not {bits}")
        _check(1 <= q.leak_bits <= 16, f"quant.leak_bits must be in 1..16, not {q.leak_bits}")
        _check(0 <= q.frac_bits <= 16, f"quant.frac_bits must be in 0..16, not {q.frac_bits}")
        _check(pl.deploy_method in METHODS,
               f"pipeline.deploy_method must be one of {', '.join(METHODS)}, "
               f"not {pl.deploy_method!r}")
        for name in ("dense", "finetune", "qat"):
            t = getattr(pl, name)
            _check(t.epochs >= 0 and t.batch_size > 0 and t.lr > 0 and t.neuron_lr > 0,
                   f"pipeline.{name}: epochs >= 0, batch_size > 0 and learning rates > 0 needed")
            _check(0.0 <= t.spike_penalty < float("inf"),
                   f"pipeline.{name}.spike_penalty must be a finite number >= 0, "
                   f"not {t.spike_penalty}")
        _check(len(pl.sweep_seeds) >= 1, "pipeline.sweep_seeds must name at least one seed")
        return self


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
