"""Synapse pruning of the block matrices: L1P (unstructured, L1 magnitude) and DSP (low rank).

L1P sets 0/1 masks by |w|: per matrix ("layer") or with one threshold over all block matrices
("global"), at once ("oneshot") or along the cubic ramp of Zhu & Gupta ("gradual"), which only
ever removes more weights. With `prune.stem` the spike-fed stem convs are L1P targets too: the
paper prunes the blocks only, but on chip an unpruned stem conv is most of a 90%-sparse model's
cycles. DSP factors each matrix W (m x n) as A·B from its truncated SVD
(A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T); the rank is given, or the smallest that keeps a
fraction of the singular-value energy. Parameters drop from m·n to r·(m+n).
"""

from __future__ import annotations

import torch

from model.config import PruneConfig
from model.errors import ConfigError
from model.transformer import SpikingTransformer

__all__ = ["l1p_prune", "gradual_sparsities", "choose_ranks", "to_low_rank", "sparsity"]


def _magnitudes(model: SpikingTransformer, stem: bool):
    return [(mask, (weight * mask).abs().detach())
            for _, weight, mask in model.prune_targets(stem)]


def l1p_prune(model: SpikingTransformer, target: float, scope: str = "layer",
              stem: bool = False) -> None:
    """Mask the smallest-|w| weights so each matrix ("layer") or all together ("global") reach
    sparsity `target`; with `stem`, the spike-fed stem convs too. Already-pruned weights stay
    pruned."""
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), not {target}")
    if not any(not m.low_rank for _, m in model.block_matrices()):
        raise ConfigError("L1P needs dense block matrices; this model is rank-factored")
    mats = _magnitudes(model, stem)
    if scope == "global":
        everything = torch.cat([mag.flatten() for _, mag in mats])
        k = int(round(target * everything.numel()))
        order = torch.argsort(everything, stable=True)
        keep = torch.ones_like(everything)
        keep[order[:k]] = 0
        start = 0
        for mask, mag in mats:
            n = mag.numel()
            mask.copy_(keep[start:start + n].view_as(mag) * mask)
            start += n
    elif scope == "layer":
        for mask, mag in mats:
            k = int(round(target * mag.numel()))
            order = torch.argsort(mag.flatten(), stable=True)
            keep = torch.ones(mag.numel())
            keep[order[:k]] = 0
            mask.copy_(keep.view_as(mag) * mask)
    else:
        raise ConfigError(f"prune scope must be 'layer' or 'global', not {scope!r}")
    model.apply_masks()


def gradual_sparsities(final: float, steps: int) -> list[float]:
    """Cubic ramp s_i = s_f (1 - (1 - i/steps)^3), i = 1..steps (Zhu & Gupta, 2017)."""
    return [final * (1 - (1 - i / steps) ** 3) for i in range(1, steps + 1)]


def sparsity(model: SpikingTransformer, stem: bool = False) -> float:
    """Fraction of zero weights over all dense block matrices (with `stem`, and the spike-fed
    stem convs)."""
    weights = [(w * mask).detach() for _, w, mask in model.prune_targets(stem)]
    total = sum(w.numel() for w in weights)
    return 1.0 - sum(int((w != 0).sum()) for w in weights) / total if total else 0.0


def choose_ranks(model: SpikingTransformer, rank: int | None = None,
                 energy: float | None = None) -> dict:
    """{block index: {matrix name: rank}} from a fixed rank or an energy fraction."""
    ranks: dict = {}
    for name, m in model.block_matrices():
        block, mat = name.split(".")
        limit = min(m.in_features, m.out_features)
        if rank is not None:
            if not 1 <= rank <= limit:
                raise ConfigError(f"rank {rank} is impossible for {name} "
                                  f"({m.out_features}x{m.in_features}): use 1..{limit}")
            r = rank
        else:
            s = torch.linalg.svdvals(m.dense_weight().detach())
            cum = torch.cumsum(s ** 2, 0) / (s ** 2).sum()
            r = int((cum < energy - 1e-9).sum()) + 1
        ranks.setdefault(int(block.removeprefix("block")), {})[mat] = min(r, limit)
    return ranks


def to_low_rank(model: SpikingTransformer, cfg: PruneConfig | None = None, *,
                rank: int | None = None, energy: float | None = None) -> SpikingTransformer:
    """A copy of `model` whose block matrices are SVD-initialised rank-r factor pairs."""
    from model.train import rebuild
    if cfg is not None:
        rank, energy = cfg.rank, cfg.energy
    ranks = choose_ranks(model, rank, energy)
    new = rebuild(model, ranks=ranks)
    for (_, old), (_, m) in zip(model.block_matrices(), new.block_matrices()):
        u, s, vh = torch.linalg.svd(old.dense_weight().detach(), full_matrices=False)
        r = m.rank
        root = s[:r].sqrt()
        with torch.no_grad():
            m.a.weight.copy_(u[:, :r] * root)
            m.b.weight.copy_(root[:, None] * vh[:r])
            if old.bias is not None:
                m.bias.copy_(old.bias)
    return new
