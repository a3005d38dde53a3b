"""Training, fine-tuning and evaluation loops, and checkpoints.

One loop serves dense training, compensation fine-tuning and QAT: Adam with two parameter groups
(the neurons' u_th and tau learn at `neuron_lr`, the weights at `lr`), cosine schedule, masks
re-applied after every step so L1P zeros stay zero. It records test accuracy per epoch (the
fine-tuning curves). An optional spike-activity penalty (`TrainConfig.spike_penalty`) adds the
mean firing rate to the loss, trading a little accuracy for fewer spikes (fewer cycles on chip).
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.config import (WEIGHT_BITS, Config, ModelConfig, TrainConfig, config_from_dict,
                          config_to_dict)
from model.data import DataSplit
from model.errors import StforgeError
from model.ir.files import write_bytes
from model.neurons import SLIF
from model.transformer import SpikingTransformer

__all__ = ["Tensors", "to_tensors", "seed_everything", "evaluate", "spike_rate", "train",
           "rebuild", "save_checkpoint", "load_checkpoint"]


@dataclass
class Tensors:
    """A data split as float tensors (pixels already multiplied by `input_scale`)."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def to_tensors(split: DataSplit) -> Tensors:
    f = lambda x: torch.from_numpy(x.astype(np.float32) * np.float32(split.input_scale))
    return Tensors(f(split.x_train), torch.from_numpy(split.y_train).long(),
                   f(split.x_test), torch.from_numpy(split.y_test).long())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(1) == y).float().mean())


def _param_groups(model: SpikingTransformer, tcfg: TrainConfig):
    neuron_params = [p for n in model.neurons() for p in n.parameters()]
    ids = {id(p) for p in neuron_params}
    weights = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": weights, "lr": tcfg.lr, "weight_decay": tcfg.weight_decay}]
    if neuron_params:
        groups.append({"params": neuron_params, "lr": tcfg.neuron_lr, "weight_decay": 0.0})
    return groups


def spike_rate(trace: dict) -> torch.Tensor:
    """Mean firing rate of every spiking layer a forward pass traced (stem stages after pooling,
    q, k, v, attention, o, mlp1, mlp2): spikes over all neurons, time steps and images / their
    number. These are the spike tensors the next layers consume, so on chip it tracks their work
    (active inputs x the non-zeros they touch) and the attention counts."""
    spikes = sum(s.sum() for s in trace.values())
    return spikes / sum(s.numel() for s in trace.values())


def _loss(model: SpikingTransformer, x: torch.Tensor, y: torch.Tensor,
          spike_penalty: float) -> torch.Tensor:
    """Cross-entropy, plus `spike_penalty` x the mean firing rate when it is positive (the
    forward pass is the same either way: tracing only keeps references to the spike tensors)."""
    if spike_penalty <= 0:
        return nn.functional.cross_entropy(model(x), y)
    trace: dict = {}
    logits = model(x, trace)
    return nn.functional.cross_entropy(logits, y) + spike_penalty * spike_rate(trace)


def train(model: SpikingTransformer, data: Tensors, tcfg: TrainConfig, desc: str = "train",
          on_epoch=None, progress: bool = True) -> list[float]:
    """Train in place; returns the test accuracy after each epoch.

    `on_epoch(epoch)` runs before each epoch (gradual pruning hooks in there).
    """
    seed_everything(tcfg.seed)
    opt = torch.optim.AdamW(_param_groups(model, tcfg))
    steps = max(1, tcfg.epochs * -(-len(data.x_train) // tcfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(tcfg.seed)
    curve = []
    bar = tqdm(range(tcfg.epochs), desc=desc, leave=False, disable=not progress, unit="ep")
    for epoch in bar:
        if on_epoch is not None:
            on_epoch(epoch)
        model.train()
        order = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(order), tcfg.batch_size):
            idx = order[i:i + tcfg.batch_size]
            loss = _loss(model, data.x_train[idx], data.y_train[idx], tcfg.spike_penalty)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            model.apply_masks()
        curve.append(evaluate(model, data.x_test, data.y_test))
        bar.set_postfix(acc=f"{curve[-1]:.3f}")
    return curve


def rebuild(model: SpikingTransformer, neuron: str | None = None, ranks: dict | None = None,
            weight_bits: int | None | str = "keep",
            leak_bits: int | None | str = "keep") -> SpikingTransformer:
    """A new model of the same config with another neuron kind, structure or weight precision,
    carrying over every compatible tensor. LIF -> sLIF starts from the LIF's tau and u_th."""
    neuron = neuron or model.neuron_kind
    ranks = model.ranks if ranks is None else ranks
    bits = model.weight_bits if weight_bits == "keep" else weight_bits
    kbits = model.leak_bits if leak_bits == "keep" else leak_bits
    new = SpikingTransformer(model.cfg, neuron, ranks, bits, kbits)
    old_state = model.state_dict()
    target = new.state_dict()
    carried = {k: v for k, v in old_state.items() if k in target and target[k].shape == v.shape}
    new.load_state_dict(carried, strict=False)
    for old_n, new_n in zip(model.neurons(), new.neurons()):
        if isinstance(new_n, SLIF) and not isinstance(old_n, SLIF):
            with torch.no_grad():
                k = old_n.leak().clamp(1e-4, 1 - 1e-4)
                new_n.w_tau.copy_(torch.log(k / (1 - k)))
                new_n.u_th.copy_(old_n.threshold())
    return new


def save_checkpoint(path: str | Path, model: SpikingTransformer, config: Config,
                    meta: dict) -> None:
    """Config, structure (neuron, ranks, weight bits), weights and masks, plus free metadata,
    written atomically (model.ir.files: a failed write leaves neither a temporary file nor a
    half-written checkpoint)."""
    buf = io.BytesIO()
    torch.save({"format": "stforge-checkpoint-1", "config": config_to_dict(config),
                "neuron": model.neuron_kind, "ranks": model.ranks,
                "weight_bits": model.weight_bits, "leak_bits": model.leak_bits,
                "state_dict": model.state_dict(),
                "meta": meta}, buf)
    write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> tuple[SpikingTransformer, Config, dict]:
    path = Path(path)
    if not path.is_file():
        raise StforgeError(f"checkpoint {path} does not exist (run `make train` first?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        config = config_from_dict(ckpt["config"])
        bits = ckpt["weight_bits"]
        if bits is not None and not WEIGHT_BITS[0] <= bits <= WEIGHT_BITS[1]:
            raise StforgeError(f"checkpoint {path} has {bits}-bit weights; the export and the "
                               f"hardware take {WEIGHT_BITS[0]}..{WEIGHT_BITS[1]}: run "
                               f"`stforge quantize` on its parent again")
        ranks = ckpt["ranks"]
        if ranks is not None:
            ranks = {int(k): v for k, v in ranks.items()}
        model = SpikingTransformer(config.model, ckpt["neuron"], ranks, ckpt["weight_bits"],
                                   ckpt.get("leak_bits"))
        missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
        # checkpoints from before stem pruning have no conv masks: those stay all ones
        missing = [k for k in missing if not k.endswith(".mask")]
        if missing or unexpected:
            raise ValueError(f"state dict keys missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}")
    except StforgeError:
        raise
    except Exception as exc:  # a truncated or foreign file
        raise StforgeError(f"checkpoint {path} cannot be read: {type(exc).__name__}: {exc}")
    model.eval()
    return model, config, ckpt.get("meta", {})
