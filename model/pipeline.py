"""The compensation pipeline and the Fig. 5 sweep.

    train dense (LIF) -> prune (L1P masks | DSP factors) -> LIF->sLIF (or keep LIF as the baseline)
    -> fine-tune weights + u_th + tau with masks/ranks fixed -> Brevitas QAT (8 and 4 bits)

`run_pipeline` is `make train`: it writes checkpoints under build/checkpoints/ and
build/reports/model.json (docs/REPORTS.md). `run_sweep` is `make sweep`: sparsity x neuron and
DSP rank x neuron over several seeds, mean ± std, plots.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from model.config import Config, TrainConfig
from model.data import DataSplit, load_dataset
from model.errors import StforgeError, check_output_path
from model.ir.files import write_figure, write_json
from model.pruning import gradual_sparsities, l1p_prune, sparsity, to_low_rank
from model.train import Tensors, evaluate, rebuild, save_checkpoint, seed_everything, to_tensors, \
    train
from model.transformer import SpikingTransformer

__all__ = ["load_data", "train_dense", "compensate", "quantize", "run_pipeline", "run_sweep",
           "pipeline_outputs", "sweep_outputs", "quantized_names", "write_json"]


def load_data(config: Config) -> DataSplit:
    d, m = config.data, config.model
    options = {}
    if d.name == "digits":
        options["seed"] = d.seed
    elif d.name in ("cifar10", "cifar100"):
        options.update(limit=d.limit)
    else:
        options.update(timesteps=m.timesteps, size=d.dvs_size, clip=d.dvs_clip, seed=d.seed)
    split = load_dataset(d.name, d.path, **options)
    if d.limit is not None and d.name in ("digits", "cifar10-dvs"):
        split = replace(split, x_train=split.x_train[:d.limit], y_train=split.y_train[:d.limit],
                        x_test=split.x_test[:d.limit], y_test=split.y_test[:d.limit])
    _check_shapes(config, split)
    return split


def _check_shapes(config: Config, split: DataSplit) -> None:
    from model.errors import ConfigError
    m = config.model
    want = (m.in_channels, m.image_size, m.image_size)
    if tuple(split.input_shape) != want:
        raise ConfigError(f"data set {split.name} has inputs {tuple(split.input_shape)} but the "
                          f"model expects (in_channels, image_size, image_size) = {want}")
    if split.num_classes != m.num_classes:
        raise ConfigError(f"data set {split.name} has {split.num_classes} classes but "
                          f"model.num_classes is {m.num_classes}")


def _seeded(tcfg: TrainConfig, seed: int) -> TrainConfig:
    return replace(tcfg, seed=seed)


def train_dense(config: Config, data: Tensors, seed: int, progress: bool = True):
    seed_everything(seed)
    model = SpikingTransformer(config.model, "lif")
    curve = train(model, data, _seeded(config.pipeline.dense, seed), f"dense s{seed}",
                  progress=progress)
    return model, curve


def compensate(dense: SpikingTransformer, config: Config, data: Tensors, method: str,
               neuron: str, seed: int, *, sparsity_target: float | None = None,
               rank: int | None = None, energy: float | None = None, progress: bool = True):
    """Prune a copy of `dense` and fine-tune it with `neuron` ("slif" compensates, "lif" is the
    baseline). Returns (model, accuracy curve)."""
    p, tcfg = config.prune, _seeded(config.pipeline.finetune, seed)
    if method == "l1p":
        target = p.sparsity if sparsity_target is None else sparsity_target
        model = rebuild(dense, neuron=neuron)
        hook = None
        if p.schedule == "oneshot":
            l1p_prune(model, target, p.scope, p.stem)
        else:
            # Reach the target over the first half of fine-tuning, then train with masks fixed.
            steps = gradual_sparsities(target, p.gradual_steps)
            every = max(1, tcfg.epochs // (2 * p.gradual_steps))
            hook = lambda ep: (ep % every == 0 and ep // every < len(steps)
                               and l1p_prune(model, steps[ep // every], p.scope, p.stem))
        desc = f"l1p {target:.2f} {neuron} s{seed}"
        curve = train(model, data, tcfg, desc, on_epoch=hook, progress=progress)
        if hook is not None:   # a short fine-tune may end before the ramp does
            l1p_prune(model, target, p.scope, p.stem)
    elif method == "dsp":
        if rank is None and energy is None:
            rank, energy = p.rank, p.energy
        model = rebuild(to_low_rank(dense, rank=rank, energy=energy), neuron=neuron)
        desc = f"dsp r{rank if rank is not None else energy} {neuron} s{seed}"
        curve = train(model, data, tcfg, desc, progress=progress)
    else:
        raise ValueError(f"method must be 'l1p' or 'dsp', not {method!r}")
    return model, curve


def quantize(model: SpikingTransformer, config: Config, data: Tensors, bits: int, seed: int,
             progress: bool = True):
    """Brevitas QAT at `bits`, keeping masks, factors and the neurons' learned parameters."""
    q = rebuild(model, weight_bits=bits, leak_bits=config.quant.leak_bits)
    curve = train(q, data, _seeded(config.pipeline.qat, seed), f"qat int{bits} s{seed}",
                  progress=progress)
    return q, curve


def describe(model: SpikingTransformer, method: str, data: Tensors, seed: int,
             curve: list[float] | None = None, **extra) -> dict:
    """A model.json variant entry, measured on the test split."""
    entry = {"method": method, "neuron": model.neuron_kind, "weight_bits": model.weight_bits,
             "seed": seed, "accuracy": evaluate(model, data.x_test, data.y_test),
             **model.param_counts()}
    if method == "l1p":
        entry["sparsity"] = round(sparsity(model), 6)
        entry["stem_sparsity"] = round(sparsity(model, stem=True), 6)
    if method == "dsp":
        entry["rank"] = extra.pop("rank", None)
        entry["ranks"] = {f"block{b}.{n}": r for b, rs in model.ranks.items()
                          for n, r in rs.items()}
    if curve is not None:
        entry["curve"] = [round(a, 6) for a in curve]
    entry.update(extra)
    return entry


def _bits(config: Config) -> list[int]:
    """The weight widths the pipeline trains, quant.weight_bits first, each once."""
    return list(dict.fromkeys([config.quant.weight_bits, *config.quant.extra_bits]))


def quantized_names(config: Config) -> list[str]:
    """The quantized checkpoints `make train` writes (``<method>-int<bits>``); the deployed one
    is ``<pipeline.deploy_method>-int<quant.weight_bits>``."""
    return [f"{method}-int{bits}" for method in ("dense", "l1p", "dsp")
            for bits in (_bits(config) if method != "dense" else [config.quant.weight_bits])]


def pipeline_outputs(config: Config) -> list[Path]:
    """Every file `run_pipeline` writes (checked before any work)."""
    out = Path(config.pipeline.out_dir)
    names = ["dense", *(f"{m}-{n}" for m in ("l1p", "dsp") for n in ("slif", "lif")),
             *quantized_names(config)]
    return [out / "checkpoints" / f"{name}.pt" for name in names] + \
        [out / "reports" / "model.json", out / "reports" / "finetune_curves.png"]


def sweep_outputs(config: Config) -> list[Path]:
    """Every file `run_sweep` writes (checked before any work)."""
    reports = Path(config.pipeline.out_dir) / "reports"
    return [reports / "model.json", reports / "accuracy_vs_sparsity.png",
            reports / "accuracy_vs_params.png"]


def _check_outputs(paths) -> None:
    for path in paths:
        check_output_path(path, "output")


def run_pipeline(config: Config, progress: bool = True) -> dict:
    """`make train`: dense -> L1P + sLIF/LIF, DSP + sLIF/LIF -> QAT; checkpoints and model.json."""
    _check_outputs(pipeline_outputs(config))
    out = Path(config.pipeline.out_dir)
    ckpt_dir, reports = out / "checkpoints", out / "reports"
    seed = config.pipeline.dense.seed
    started = time.time()
    split = load_data(config)
    data = to_tensors(split)
    dense, dense_curve = train_dense(config, data, seed, progress)
    meta = lambda **kw: {"seed": seed, "dataset": split.name, **kw}
    staged = {"dense": (dense, meta(method="dense"))}
    report = {"dataset": split.name, "timesteps": config.model.timesteps,
              "dense": describe(dense, "dense", data, seed, dense_curve), "variants": []}
    compensated = {}
    for method in ("l1p", "dsp"):
        for neuron in ("slif", "lif"):
            model, curve = compensate(dense, config, data, method, neuron, seed,
                                      progress=progress)
            extra = {"rank": config.prune.rank} if method == "dsp" else {}
            report["variants"].append(describe(model, method, data, seed, curve, **extra))
            compensated[(method, neuron)] = model
            staged[f"{method}-{neuron}"] = (model, meta(method=method))
    deployables = {"dense": dense, "l1p": compensated[("l1p", "slif")],
                   "dsp": compensated[("dsp", "slif")]}
    bits_list = _bits(config)
    for method, parent in deployables.items():
        for bits in bits_list if method != "dense" else [config.quant.weight_bits]:
            q, curve = quantize(parent, config, data, bits, seed, progress)
            extra = {"rank": config.prune.rank} if method == "dsp" else {}
            entry = describe(q, method, data, seed, curve,
                             float_parent_accuracy=evaluate(parent, data.x_test, data.y_test),
                             **extra)
            report["variants"].append(entry)
            staged[f"{method}-int{bits}"] = (q, meta(method=method, accuracy=entry["accuracy"]))
            if bits == config.quant.weight_bits and method == config.pipeline.deploy_method:
                report["deployed"] = {k: entry.get(k) for k in
                                      ("method", "sparsity", "rank", "neuron", "weight_bits",
                                       "accuracy", "params", "nonzero_params")
                                      if k in entry}
                report["deployed"]["checkpoint"] = str(ckpt_dir / f"{method}-int{bits}.pt")
    report["seconds"] = round(time.time() - started, 1)
    # Nothing is written until every stage has succeeded: no partial outputs.
    for name, (model, m) in staged.items():
        save_checkpoint(ckpt_dir / f"{name}.pt", model, config, m)
    write_json(reports / "model.json", report)
    plot_curves(report, reports / "finetune_curves.png")
    return report


def plot_curves(report: dict, path: Path) -> None:
    """Fine-tuning curves (test accuracy per epoch), sLIF against LIF."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for v in report["variants"]:
        if v.get("weight_bits") is None and "curve" in v:
            label = f"{v['method']} {v['neuron']}"
            ax.plot(range(1, len(v["curve"]) + 1), v["curve"], label=label,
                    linestyle="-" if v["neuron"] == "slif" else "--")
    ax.axhline(report["dense"]["accuracy"], color="grey", lw=0.8, label="dense")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel(f"test accuracy ({report['dataset']})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path) -> None:
    """A figure as PNG, written atomically (model.ir.files), and closed."""
    import matplotlib.pyplot as plt
    try:
        write_figure(path, fig)
    finally:
        plt.close(fig)


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_sweep(config: Config, progress: bool = True) -> dict:
    """`make sweep`: Fig. 5 on the configured data set over `pipeline.sweep_seeds`."""
    from tqdm import tqdm
    pl = config.pipeline
    reports = Path(pl.out_dir) / "reports"
    _check_outputs(sweep_outputs(config))
    path = reports / "model.json"
    previous = None
    if path.exists():       # the sweep adds to make train's report: read it before the work
        try:
            previous = json.loads(path.read_text())
            if not isinstance(previous.get("variants"), list):
                raise ValueError("it has no list of variants")
        except (ValueError, UnicodeDecodeError, AttributeError) as exc:
            raise StforgeError(f"{path} is not a model report ({exc}); move it away or run "
                               f"`make train` again") from None
    split = load_data(config)
    data = to_tensors(split)
    jobs = [("l1p", s, None) for s in pl.sweep_sparsities] + \
           [("dsp", None, r) for r in pl.sweep_ranks]
    entries = []
    total = len(pl.sweep_seeds) * (1 + 2 * len(jobs))
    with tqdm(total=total, desc="sweep", unit="run", disable=not progress) as bar:
        for seed in pl.sweep_seeds:
            dense, _ = train_dense(config, data, seed, progress=False)
            entries.append(describe(dense, "dense", data, seed, sweep=True))
            bar.update()
            for method, target, rank in jobs:
                for neuron in ("lif", "slif"):
                    model, curve = compensate(dense, config, data, method, neuron, seed,
                                              sparsity_target=target, rank=rank, progress=False)
                    extra = {"rank": rank} if method == "dsp" else {}
                    entries.append(describe(model, method, data, seed, curve, sweep=True,
                                            **extra))
                    bar.update()
    summary = summarize(entries)
    report = previous or {"dataset": split.name, "timesteps": config.model.timesteps,
                          "variants": []}
    report["variants"] = [v for v in report["variants"] if not v.get("sweep")] + entries
    report["sweep"] = summary
    write_json(path, report)
    plot_sweep(summary, reports)
    return report


def summarize(entries: list[dict]) -> dict:
    """mean ± std over seeds per (method, sparsity|rank, neuron), and the sLIF - LIF gap."""
    groups: dict = {}
    for e in entries:
        if e["method"] == "dense":
            key = ("dense", None, "lif")
        else:
            setting = round(e["sparsity"], 4) if e["method"] == "l1p" else e["rank"]
            key = (e["method"], setting, e["neuron"])
        groups.setdefault(key, []).append(e)
    rows = []
    for (method, setting, neuron), es in sorted(groups.items(), key=lambda kv: str(kv[0])):
        mean, std = _mean_std([e["accuracy"] for e in es])
        row = {"method": method, "neuron": neuron, "seeds": len(es), "accuracy_mean": mean,
               "accuracy_std": std, "nonzero_params": es[0]["nonzero_params"],
               "block_params": es[0]["block_params"]}
        if method == "l1p":
            row["sparsity"] = setting
        if method == "dsp":
            row["rank"] = setting
        rows.append(row)
    gaps = []
    for row in rows:
        if row["method"] != "dense" and row["neuron"] == "slif":
            twin = next(r for r in rows if r["method"] == row["method"] and r["neuron"] == "lif"
                        and r.get("sparsity") == row.get("sparsity")
                        and r.get("rank") == row.get("rank"))
            mine = [e["accuracy"] for e in entries if e["method"] == row["method"]
                    and e["neuron"] == "slif" and _setting(e) == _setting(row)]
            theirs = [e["accuracy"] for e in entries if e["method"] == row["method"]
                      and e["neuron"] == "lif" and _setting(e) == _setting(row)]
            diffs = [a - b for a, b in zip(mine, theirs)]   # paired by seed
            mean, std = _mean_std(diffs)
            gaps.append({"method": row["method"], "setting": _setting(row),
                         "slif_minus_lif_mean": mean, "slif_minus_lif_std": std,
                         "slif_wins": sum(d > 0 for d in diffs), "seeds": len(diffs),
                         "lif_mean": twin["accuracy_mean"], "slif_mean": row["accuracy_mean"]})
    return {"rows": rows, "slif_vs_lif": gaps}


def _setting(e: dict):
    return round(e["sparsity"], 4) if e["method"] == "l1p" else e.get("rank")


def plot_sweep(summary: dict, reports: Path) -> None:
    """accuracy_vs_sparsity.png and accuracy_vs_params.png (mean ± std over seeds)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = summary["rows"]
    dense = next((r for r in rows if r["method"] == "dense"), None)
    fig, ax = plt.subplots(figsize=(6, 4))
    for neuron, style in (("lif", "--o"), ("slif", "-s")):
        rs = sorted((r for r in rows if r["method"] == "l1p" and r["neuron"] == neuron),
                    key=lambda r: r["sparsity"])
        ax.errorbar([r["sparsity"] for r in rs], [r["accuracy_mean"] for r in rs],
                    yerr=[r["accuracy_std"] for r in rs], fmt=style, capsize=3,
                    label=f"L1P + {neuron.upper()} compensation")
    if dense:
        ax.axhline(dense["accuracy_mean"], color="grey", lw=0.8, label="dense")
    ax.set_xlabel("sparsity of block matrices")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, reports / "accuracy_vs_sparsity.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in ("l1p", "dsp"):
        for neuron, style in (("lif", "--o"), ("slif", "-s")):
            rs = sorted((r for r in rows if r["method"] == method and r["neuron"] == neuron),
                        key=lambda r: r["nonzero_params"])
            ax.errorbar([r["nonzero_params"] for r in rs], [r["accuracy_mean"] for r in rs],
                        yerr=[r["accuracy_std"] for r in rs], fmt=style, capsize=3,
                        label=f"{method.upper()} + {neuron.upper()}")
    if dense:
        ax.axhline(dense["accuracy_mean"], color="grey", lw=0.8, label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero parameters (whole model)")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, reports / "accuracy_vs_params.png")
