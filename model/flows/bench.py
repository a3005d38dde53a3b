"""`make bench`: FPGA accelerator vs CPU vs GPU — latency, throughput and energy per inference.

    stforge bench [--variants l1p dsp dense] [--targets ice40-up5k ecp5-85f]
                          [--images 100] [--reports build/reports] [--run-missing] [--quick]

Writes build/reports/bench.json (keys per docs/REPORTS.md, plus extra keys), prints a table
and saves bench_latency.png, bench_energy.png and bench_cycles.png under build/reports/.

Where every number comes from
=============================

FPGA rows (one per variant x target)
    cycles          build/reports/sim-<variant>.json, `cycles_per_inference` (mean; min/max kept),
                    measured in Verilator/cocotb by `make sim MODEL=<variant>`.
    ideal_cycles    the same report's `ideal_cycles_per_inference` (hw/cycles.py work bound).
    fmax_mhz        the variant's own synth report: build/reports/synth-<target>.json for the
                    default model l1p (`make bitstream TARGET=<target>`), synth-<target>-<v>.json
                    for another (`make bitstream TARGET=<target> MODEL=<v>`); `fmax_source` names
                    the file. Never invented: no report gives fmax null, latency null and a note.
                    A variant without its own report reuses synth-<target>.json's fmax (the
                    report's "model" says whose) and says so in `fmax_note`.
    latency_us      cycles / fmax_mhz; inferences_per_s = 1e6 / latency_us.
    energy_uj_ops   literature estimate from the operations actually performed on real spikes
                    (golden model, same test images as the sim reports), DESIGN.md §2:
                    E = 4.6 pJ * #MAC + 0.9 pJ * #AC (Horowitz, ISSCC 2014, 45 nm: 32-bit float
                    mult+add 3.7 + 0.9 pJ, add 0.9 pJ; the convention of Spikformer et al.).
                    ACs: spike-fed conv/matmul = active inputs x stored weights of their column
                    (hw/cycles.py `ideal_breakdown` "synaptic"), spiking attention = K^T V
                    co-activations + active Q bits x head width. MACs: the pixel-fed first conv
                    (once for a static image; non-zero pixels x stored weights), the rank-factored
                    A stage (T N r m) and the head (classes x features). Neuron updates are not
                    synaptic operations and are not counted (as in the literature).
    energy_uj_device  assumed device power x latency (DEVICE_POWER below; an estimate, not a
                    measurement: no board power was measured).

CPU rows (measured on this machine): the float PyTorch model (eval, no_grad; the deployed
checkpoint rebuilt without Brevitas, whose fake-quantization proxies would dominate) and the
integer golden model, batch 1 and 64; warm-up, then the median of timed repetitions
(time.perf_counter). Energy there is an estimate: assumed power per busy core x latency.

GPU rows: measured with CUDA events when torch.cuda.is_available(); otherwise an analytic model of
a named GPU (GPU_SPEC), `measured: false`, label "modelled":
    latency = kernels x launch latency + FLOPs / peak FP32 + bytes / HBM bandwidth
    (kernels, FLOPs and bytes counted from the aten ops the float model dispatches, see
    `profile_float_model`), cycles = latency x boost clock, energy = board power x latency.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from hw.targets import TARGETS as HW_TARGETS
from model.errors import check_output_dir, check_output_path, positive_int
from model.ir import INPUT, Attention, Conv
from model.ir.files import write_figure
from model.ir.golden import run_golden

__all__ = ["E_MAC_PJ", "E_AC_PJ", "DEVICE_POWER", "GPU_SPEC", "fpga_latency", "ops_energy_uj",
           "device_energy_uj", "count_ops", "attention_acs", "load_sim_report",
           "load_synth_report", "fpga_row", "gpu_rows", "model_gpu_latency", "compute_ratios",
           "REQUIRED_FPGA_KEYS", "REQUIRED_BASELINE_KEYS", "configure", "run"]

VARIANTS = ("l1p", "dsp", "dense")
TARGETS = tuple(HW_TARGETS)
ROOT = Path(__file__).resolve().parents[2]

# ---- energy constants --------------------------------------------------------------------------
# DESIGN.md §2 energy convention; Horowitz, "Computing's energy problem", ISSCC 2014 (45 nm):
# a 32-bit FP multiply-accumulate 4.6 pJ (3.7 mult + 0.9 add), an accumulate 0.9 pJ.
E_MAC_PJ = 4.6
E_AC_PJ = 0.9

# Device power (W) used for energy_uj_device = power x latency: ESTIMATES, not measurements,
# from the one table of targets (hw.targets).
DEVICE_POWER = {name: (t.power_w, t.power_note) for name, t in HW_TARGETS.items()}
# CPU: energy = busy threads x power per core. AMD EPYC server parts are ~200-280 W TDP over
# 32-96 cores, i.e. ~3-7 W per core; we assume 5 W per busy core (estimate, no RAPL reading).
CPU_WATTS_PER_THREAD = 5.0

# The modelled GPU. NVIDIA A100 Tensor Core GPU datasheet (PCIe 40 GB; nvidia.com, "NVIDIA A100
# datasheet", 2020/2021): peak FP32 19.5 TFLOPS, HBM2 1,555 GB/s, max power 250 W; boost clock
# 1410 MHz (NVIDIA Ampere GA100 whitepaper). Kernel launch + eager-PyTorch dispatch ~5 us per
# kernel (typical CUDA launch overhead; an assumption, it dominates batch-1 latency here).
GPU_SPEC = {
    "name": "NVIDIA A100 40GB PCIe",
    "peak_fp32_flops": 19.5e12,
    "hbm_bytes_per_s": 1555e9,
    "launch_us": 5.0,
    "boost_clock_mhz": 1410.0,
    "board_power_w": 250.0,
    "source": "NVIDIA A100 datasheet (19.5 TFLOPS FP32, 1555 GB/s, 250 W PCIe) and GA100 "
              "whitepaper (1410 MHz boost); 5 us per kernel launch assumed",
}
MODELLED = "modelled"
NO_CUDA_MESSAGE = "no CUDA device on this machine: GPU rows are modelled"

REQUIRED_FPGA_KEYS = ("variant", "target", "cycles", "ideal_cycles", "fmax_mhz", "latency_us",
                      "inferences_per_s", "energy_uj_ops", "energy_uj_device")
REQUIRED_BASELINE_KEYS = ("device", "measured", "model", "batch", "latency_us")


# ---- arithmetic --------------------------------------------------------------------------------

def fpga_latency(cycles: float | None, fmax_mhz: float | None) -> tuple[float | None, float | None]:
    """(latency_us, inferences_per_s) of `cycles` at `fmax_mhz`; (None, None) if either is missing."""
    if cycles is None or fmax_mhz is None or fmax_mhz <= 0:
        return None, None
    latency_us = float(cycles) / float(fmax_mhz)
    return latency_us, 1e6 / latency_us


def ops_energy_uj(macs: float, acs: float) -> float:
    """E = 4.6 pJ * MAC + 0.9 pJ * AC, in microjoules."""
    return (E_MAC_PJ * macs + E_AC_PJ * acs) * 1e-6


def device_energy_uj(power_w: float | None, latency_us: float | None) -> float | None:
    """power (W) x latency (us) = energy in uJ."""
    if power_w is None or latency_us is None:
        return None
    return float(power_w) * float(latency_us)


# ---- operation counts --------------------------------------------------------------------------

def attention_acs(q, k, v, heads: int) -> int:
    """Accumulates of spiking self-attention on binary q, k, v (T, N, D), computed as Q (K^T V):
    K^T V adds one per co-active (k, v) pair of a token in the same head; Q (K^T V) adds, per
    active q bit, the head's d-wide row of K^T V."""
    q, k, v = (np.asarray(a) != 0 for a in (q, k, v))
    dim = q.shape[-1]
    d = dim // heads
    total = 0
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        total += int((k[..., sl].sum(-1) * v[..., sl].sum(-1)).sum())   # K^T V co-activations
        total += int(q[..., sl].sum()) * d                               # Q x (K^T V)
    return total


def count_ops(artifact, node_spikes: dict, image=None) -> dict:
    """MACs and ACs of one inference, per layer and in total (see the module docstring).

    `node_spikes`: {node: (T, tokens, C)} golden spikes of one image; `image`: its pixels."""
    terms = artifact.work(node_spikes, image)
    layers = {}
    for node in artifact.nodes:
        name = node.name
        if name not in terms:
            continue
        t = terms[name]
        mac = ac = 0
        if isinstance(node, Attention):
            q, k, v = (node_spikes[s] for s in node.inputs)
            ac += attention_acs(q, k, v, node.heads)
        elif isinstance(node, Conv) and node.inputs[0] == INPUT:
            mac += t["synaptic"]         # encoding layer on analog pixels: multiplies
        else:
            ac += t["synaptic"]          # spike-fed (B stage of a low-rank matmul too)
            mac += t["mac"]              # rank-factored A stage, the head
        layers[name] = {"mac": int(mac), "ac": int(ac)}
    macs = sum(x["mac"] for x in layers.values())
    acs = sum(x["ac"] for x in layers.values())
    return {"mac": macs, "ac": acs, "energy_uj": ops_energy_uj(macs, acs), "layers": layers,
            "timesteps": artifact.model.timesteps}


def golden_node_spikes(graph, images) -> list[tuple[dict, np.ndarray]]:
    """Run the integer golden model; per image (node_spikes {node: (T, tokens, C)}, pixels), in
    the token order of the golden data and hw.cycles."""
    from model.ir.golden import node_spikes, run_golden
    res = run_golden(graph, np.asarray(images))
    per_node = {node.name: node_spikes(graph, res, node) for node in graph.neurons}
    return [({n: s[:, i] for n, s in per_node.items()}, np.asarray(images[i]))
            for i in range(len(images))]


def variant_ops(artifact, images) -> dict:
    """Mean MACs / ACs / ops energy over `images` (golden spikes)."""
    counts = [count_ops(artifact, s, img) for s, img in golden_node_spikes(artifact, images)]
    layers = {name: {"mac": float(np.mean([c["layers"][name]["mac"] for c in counts])),
                     "ac": float(np.mean([c["layers"][name]["ac"] for c in counts]))}
              for name in counts[0]["layers"]}
    macs = float(np.mean([c["mac"] for c in counts]))
    acs = float(np.mean([c["ac"] for c in counts]))
    return {"images": len(counts), "mac": macs, "ac": acs,
            "energy_uj": ops_energy_uj(macs, acs), "layers": layers}


# ---- reports -----------------------------------------------------------------------------------

def _read_report(path: Path, missing: str, rerun: str) -> tuple[dict | None, str | None]:
    """(report, None), or (None, one line: `missing` if absent, else unreadable + `rerun`)."""
    if not path.is_file():
        return None, f"missing {path}: {missing}"
    try:
        return json.loads(path.read_text()), None
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"unreadable {path} ({exc}): {rerun}"


def load_sim_report(reports: Path, variant: str) -> tuple[dict | None, str | None]:
    """(sim report, None) or (None, one-line message naming the command that produces it)."""
    return _read_report(Path(reports) / f"sim-{variant}.json",
                        f"run `make sim MODEL={variant}` (or `make bench BENCH_ARGS="
                        f"--run-missing`) to measure {variant}'s cycles",
                        f"rerun `make sim MODEL={variant}`")


def load_synth_report(reports: Path, target: str,
                      variant: str | None = None) -> tuple[dict | None, str | None]:
    """(synth report with an fmax, None) or (None, one-line message).

    A variant other than the default model reads its own synth-<target>-<variant>.json when it
    exists (hw.bitstream.synth_report_path); otherwise, and for the default model, synth-<target>.json, whose
    "model" names the model built (fpga_row flags another model's fmax). The report comes back
    with "report_path" added: the file it was read from."""
    from hw.bitstream import DEFAULT_MODEL, synth_report_path
    path = synth_report_path(target, DEFAULT_MODEL, reports)
    make = f"make bitstream TARGET={target}"
    own = ""
    if variant is not None and variant != DEFAULT_MODEL:
        own = f" (or `{make} MODEL={variant}` for {variant}'s own)"
        variant_path = synth_report_path(target, variant, reports)
        if variant_path.is_file():
            path, make, own = variant_path, f"{make} MODEL={variant}", ""
    rerun = f"rerun `{make}`"
    rep, msg = _read_report(path, f"no fmax for {target} (run `{make}`{own}); latency and "
                            f"device energy left null", rerun)
    if rep is not None and rep.get("fmax_mhz") is None:
        return None, f"{path} has no fmax_mhz: {rerun}"
    return (None, msg) if rep is None else ({**rep, "report_path": str(path)}, None)


def fpga_row(variant: str, target: str, sim: dict | None, synth: dict | None,
             ops: dict | None, notes: list[str]) -> dict:
    """One "fpga" row of bench.json; missing inputs give nulls, never invented numbers."""
    cyc = (sim or {}).get("cycles_per_inference") or {}
    cycles = cyc.get("mean")
    ideal = (sim or {}).get("ideal_cycles_per_inference")
    fmax = synth.get("fmax_mhz") if synth else None
    latency, ips = fpga_latency(cycles, fmax)
    power, power_src = DEVICE_POWER.get(target, (None, "no power figure for this target"))
    row = {"variant": variant, "target": target,
           "cycles": cycles, "cycles_min": cyc.get("min"), "cycles_max": cyc.get("max"),
           "ideal_cycles": ideal,
           "fmax_mhz": fmax, "latency_us": latency, "inferences_per_s": ips,
           "ideal_latency_us": fpga_latency(ideal, fmax)[0],
           "energy_uj_ops": ops["energy_uj"] if ops else None,
           "mac": ops["mac"] if ops else None, "ac": ops["ac"] if ops else None,
           "energy_uj_device": device_energy_uj(power, latency),
           "device_power_w": power, "device_power_source": power_src,
           "energy_uj_device_label": "estimate (assumed power x latency)",
           "fmax_source": synth.get("report_path") if synth else None,
           "fmax_model": synth.get("model") if synth else None,
           "sim_images": (sim or {}).get("images"), "bitexact": (sim or {}).get("bitexact"),
           "notes": list(notes)}
    if synth and synth.get("model") and synth["model"] != variant:
        from hw.bitstream import DEFAULT_MODEL, synth_report_path
        own = synth_report_path(target, variant).name
        why = (f"{own} holds that build, from before per-model reports"
               if variant == DEFAULT_MODEL else f"{variant} has no {own} of its own")
        row["fmax_note"] = (f"fmax of the {synth['model']} build on {target}: {why} (`make "
                            f"bitstream TARGET={target} MODEL={variant}`); same generator, "
                            f"assumed similar")
    return row


# ---- timing ------------------------------------------------------------------------------------

def time_median(fn, warmup: int = 3, reps: int = 20, budget_s: float = 10.0) -> dict:
    """Median wall time (time.perf_counter) of fn() after warm-up; stops early at budget_s."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "reps": len(times)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_rows(variant: str, model, golden, images_int, input_scale: float, batches, quick: bool):
    threads = torch.get_num_threads()
    name = cpu_name()
    rows = []
    for batch in batches:
        x_int = np.asarray(images_int[:batch])
        if len(x_int) < batch:      # repeat test images to fill a large batch
            x_int = np.resize(x_int, (batch,) + x_int.shape[1:])
        x_float = torch.from_numpy(x_int.astype(np.float32) * np.float32(input_scale))

        def run_float():
            with torch.no_grad():
                model(x_float)

        def run_int():
            run_golden(golden, x_int, record=False)

        for kind, fn in (("float", run_float), ("int-golden", run_int)):
            t = time_median(fn, warmup=1 if quick else 3, reps=5 if quick else 20,
                            budget_s=2.0 if quick else 8.0)
            lat_us = t["median_s"] * 1e6
            power = CPU_WATTS_PER_THREAD * threads
            rows.append({"device": "cpu", "device_name": name, "threads": threads,
                         "measured": True, "label": "measured", "model": kind,
                         "variant": variant, "batch": batch, "latency_us": lat_us,
                         "latency_us_per_inference": lat_us / batch,
                         "inferences_per_s": batch * 1e6 / lat_us, "reps": t["reps"],
                         "energy_uj_device": device_energy_uj(power, lat_us) / batch,
                         "device_power_w": power,
                         "device_power_source": f"assumed {CPU_WATTS_PER_THREAD} W per busy "
                                                f"core x {threads} threads (estimate)"})
    return rows


# ---- GPU ---------------------------------------------------------------------------------------

_VIEW_OPS = {"view", "_unsafe_view", "reshape", "expand", "transpose", "t", "permute",
             "unsqueeze", "squeeze", "select", "slice", "as_strided", "detach", "alias",
             "flatten", "unflatten", "split", "split_with_sizes", "chunk", "unbind", "lift_fresh",
             "_reshape_alias", "view_as", "numpy_T", "mT", "empty", "empty_like",
             "empty_strided", "size", "stride", "dim", "is_same_size", "_to_copy_noop"}


def profile_float_model(model, x) -> dict:
    """Kernels, FLOPs and bytes of one eager forward, counted from the aten ops it dispatches
    (a TorchDispatchMode trace; on a GPU each non-view aten op launches about one kernel).

    bytes = every kernel reads its tensor inputs and writes its outputs (no fusion: eager
    PyTorch); FLOPs = 2 x multiply-accumulates of mm/addmm/bmm/convolution (from the shapes) +
    one per output element for the other (elementwise / reduction) kernels."""
    from torch.utils._python_dispatch import TorchDispatchMode

    stats = {"kernels": 0, "bytes": 0, "elementwise_flops": 0, "matmul_flops": 0, "ops": {}}

    def nbytes(obj):
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, (list, tuple)):
            return sum(nbytes(o) for o in obj)
        return 0

    def numel(obj):
        if isinstance(obj, torch.Tensor):
            return obj.numel()
        if isinstance(obj, (list, tuple)):
            return sum(numel(o) for o in obj)
        return 0

    def matmul_flops(name, args, out):
        if name in ("mm", "bmm", "addmm", "baddbmm"):
            a, b = (args[1], args[2]) if name in ("addmm", "baddbmm") else (args[0], args[1])
            return 2 * a.numel() * b.shape[-1]          # (.., M, K) x (.., K, N)
        if name in ("convolution", "_convolution", "mkldnn_convolution"):
            return 2 * out.numel() * args[1][0].numel()  # per output: C_in/groups x kh x kw
        return None

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.__name__.split(".")[0]
            if name in _VIEW_OPS or name.startswith("_foreach") or name.endswith("_view"):
                return out
            stats["kernels"] += 1
            stats["ops"][name] = stats["ops"].get(name, 0) + 1
            stats["bytes"] += nbytes(list(args)) + nbytes(list((kwargs or {}).values())) + \
                nbytes(out)
            mf = matmul_flops(name, args, out)
            if mf is None:
                stats["elementwise_flops"] += numel(out)
            else:
                stats["matmul_flops"] += int(mf)
            return out

    with torch.no_grad(), Count():
        model(x)
    stats["flops"] = stats["matmul_flops"] + stats["elementwise_flops"]
    return stats


def model_gpu_latency(kernels: int, flops: float, nbytes: float, spec: dict = GPU_SPEC) -> dict:
    """Analytic latency: launches + compute at peak + memory traffic at peak bandwidth."""
    launch = kernels * spec["launch_us"]
    compute = flops / spec["peak_fp32_flops"] * 1e6
    memory = nbytes / spec["hbm_bytes_per_s"] * 1e6
    latency = launch + compute + memory
    return {"latency_us": latency, "launch_us": launch, "compute_us": compute,
            "memory_us": memory, "cycles": latency * spec["boost_clock_mhz"]}


def _measure_cuda(model, xs: dict, reps: int = 50) -> list[dict]:
    """CUDA-event timing of the float model per batch size (warm-up first). Only with CUDA."""
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    clock = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm,power.limit",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10)
        clock = float(out.stdout.split(",")[0]) if out.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    m = model.to(dev)
    rows = []
    for batch, x in xs.items():
        x = x.to(dev)
        with torch.no_grad():
            for _ in range(10):
                m(x)
            torch.cuda.synchronize()
            times = []
            for _ in range(reps):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                m(x)
                b.record()
                torch.cuda.synchronize()
                times.append(a.elapsed_time(b) * 1e3)     # ms -> us
        lat = statistics.median(times)
        rows.append({"device": props.name, "measured": True, "label": "measured",
                     "model": "float", "batch": batch, "latency_us": lat,
                     "latency_us_per_inference": lat / batch,
                     "inferences_per_s": batch * 1e6 / lat,
                     "clock_mhz": clock, "cycles": lat * clock if clock else None,
                     "sm_count": props.multi_processor_count})
    model.to("cpu")
    return rows


def gpu_rows(model, xs: dict, variant: str, log=print) -> list[dict]:
    """GPU rows for the float model at each batch in `xs` ({batch: input tensor}): measured with
    CUDA events when a CUDA device exists, otherwise modelled for GPU_SPEC (measured false)."""
    if torch.cuda.is_available():
        rows = _measure_cuda(model, xs)
        for r in rows:
            r["variant"] = variant
        return rows
    log(NO_CUDA_MESSAGE)
    rows = []
    for batch, x in xs.items():
        prof = profile_float_model(model, x)
        est = model_gpu_latency(prof["kernels"], prof["flops"], prof["bytes"])
        T = getattr(getattr(model, "cfg", None), "timesteps", None)
        rows.append({"device": GPU_SPEC["name"], "measured": False, "label": MODELLED,
                     "model": "float", "variant": variant, "batch": batch,
                     "latency_us": est["latency_us"],
                     "latency_us_per_inference": est["latency_us"] / batch,
                     "inferences_per_s": batch * 1e6 / est["latency_us"],
                     "cycles": est["cycles"], "clock_mhz": GPU_SPEC["boost_clock_mhz"],
                     "kernels": prof["kernels"], "timesteps": T,
                     "kernels_per_timestep": prof["kernels"] / T if T else None,
                     "flops": prof["flops"], "bytes": prof["bytes"],
                     "launch_us": est["launch_us"], "compute_us": est["compute_us"],
                     "memory_us": est["memory_us"],
                     "energy_uj_device": GPU_SPEC["board_power_w"] * est["latency_us"] / batch,
                     "device_power_w": GPU_SPEC["board_power_w"],
                     "device_power_source": "board power limit x latency: an upper bound "
                                            "(modelled)",
                     "spec_source": GPU_SPEC["source"]})
    return rows


def dense_mac_energy(prof: dict) -> float:
    """Ops energy of the float model as a GPU/CPU runs it: every matmul/conv multiply is a MAC,
    spikes or not (FLOPs / 2 MACs at 4.6 pJ), uJ per forward."""
    return ops_energy_uj(prof["matmul_flops"] / 2, 0)


# ---- summary -----------------------------------------------------------------------------------

def compute_ratios(fpga: list[dict], baselines: list[dict], variant: str = "l1p") -> dict:
    """FPGA vs GPU (batch 1) latency and energy, FPGA vs CPU, and L1P vs dense cycles."""
    out = {}
    f = [r for r in fpga if r["variant"] == variant and r["latency_us"] is not None]
    f = min(f, key=lambda r: r["latency_us"]) if f else None
    gpus = [r for r in baselines if r["device"] != "cpu" and r["batch"] == 1
            and r.get("variant", variant) == variant]
    g = next((r for r in gpus if r["measured"]), gpus[0] if gpus else None)
    cpu = next((r for r in baselines if r["device"] == "cpu" and r["batch"] == 1
                and r["model"] == "float" and r.get("variant") == variant), None)
    if f and g:
        out["fpga_vs_gpu_batch1"] = {
            "variant": variant, "fpga_target": f["target"], "gpu": g["device"],
            "fpga_latency_us": f["latency_us"], "gpu_latency_us": g["latency_us"],
            "latency_ratio_fpga_over_gpu": f["latency_us"] / g["latency_us"],
            "fpga_energy_uj_device": f["energy_uj_device"],
            "gpu_energy_uj_device": g.get("energy_uj_device"),
            "energy_ratio_gpu_over_fpga": (g["energy_uj_device"] / f["energy_uj_device"]
                                           if g.get("energy_uj_device") and
                                           f["energy_uj_device"] else None),
            "fpga_energy_uj_ops": f["energy_uj_ops"],
            "gpu_energy_uj_ops_dense_macs": g.get("energy_uj_ops"),
            "ops_energy_ratio_gpu_over_fpga": (g["energy_uj_ops"] / f["energy_uj_ops"]
                                               if g.get("energy_uj_ops") and
                                               f["energy_uj_ops"] else None),
            "what_is_measured": ("FPGA cycles: Verilator simulation (measured); FPGA fmax: "
                                 "nextpnr timing report; GPU latency: "
                                 + ("CUDA events (measured)" if g["measured"] else
                                    "analytic model (modelled), no GPU here")),
            "what_is_modelled": ("both device energies (assumed power x latency); ops energies "
                                 "(45 nm literature pJ per op)"
                                 + ("" if g["measured"] else "; the GPU latency")),
            "gpu_measured": g["measured"]}
    cpu_int = next((r for r in baselines if r["device"] == "cpu" and r["batch"] == 1
                    and r["model"] == "int-golden" and r.get("variant") == variant), None)
    if f and cpu:
        out["fpga_vs_cpu_batch1"] = {
            "fpga_latency_us": f["latency_us"], "cpu_latency_us": cpu["latency_us"],
            "latency_ratio_fpga_over_cpu": f["latency_us"] / cpu["latency_us"],
            "cpu_int_golden_latency_us": cpu_int["latency_us"] if cpu_int else None,
            "latency_ratio_fpga_over_cpu_int_golden": (f["latency_us"] / cpu_int["latency_us"]
                                                       if cpu_int else None),
            "measured": "both (CPU timed here, FPGA cycles simulated at synthesised fmax)"}
    cyc = {r["variant"]: r["cycles"] for r in fpga if r["cycles"] is not None}
    ideal = {r["variant"]: r["ideal_cycles"] for r in fpga if r["ideal_cycles"] is not None}
    if "l1p" in cyc and "dense" in cyc:
        ratio = cyc["dense"] / cyc["l1p"]
        out["l1p_vs_dense_cycles"] = {
            "dense_over_l1p": ratio, "target": 5.0, "meets_target": ratio >= 5.0,
            "ideal_dense_over_l1p": (ideal["dense"] / ideal["l1p"]
                                     if "l1p" in ideal and "dense" in ideal else None),
            "note": "measured in simulation; far below the >= 5x target: the unpruned stem convs "
                    "and the one-lane neuron array dominate the cycle count"}
    if "dsp" in cyc and "dense" in cyc:
        out["dsp_vs_dense_cycles"] = {"dense_over_dsp": cyc["dense"] / cyc["dsp"]}
    return out


def _fmt(v, spec="{:.4g}"):
    return "-" if v is None else spec.format(v)


def print_table(fpga, baselines, ratios, log=print):
    log("")
    log(f"{'device':28} {'variant':7} {'model':10} {'batch':>5} {'cycles':>10} "
        f"{'latency us':>11} {'us/inf':>10} {'inf/s':>10} {'E ops uJ':>9} {'E dev uJ':>9}  source")
    for r in fpga:
        source = ("no fmax" if r["latency_us"] is None else "sim+synth" if "fmax_note" not in r
                  else f"sim+synth of {r['fmax_model']}")    # another model's fmax
        log(f"{'FPGA ' + r['target']:28} {r['variant']:7} {'int':10} {1:>5} "
            f"{_fmt(r['cycles'], '{:.0f}'):>10} {_fmt(r['latency_us']):>11} "
            f"{_fmt(r['latency_us']):>10} {_fmt(r['inferences_per_s']):>10} "
            f"{_fmt(r['energy_uj_ops']):>9} {_fmt(r['energy_uj_device']):>9}  {source}")
    for r in baselines:
        dev = ("CPU " + r.get("device_name", "")[:24]) if r["device"] == "cpu" else r["device"]
        log(f"{dev[:28]:28} {r.get('variant', '-'):7} {r['model']:10} {r['batch']:>5} "
            f"{_fmt(r.get('cycles'), '{:.0f}'):>10} {_fmt(r['latency_us']):>11} "
            f"{_fmt(r.get('latency_us_per_inference')):>10} {_fmt(r.get('inferences_per_s')):>10} "
            f"{_fmt(r.get('energy_uj_ops')):>9} {_fmt(r.get('energy_uj_device')):>9}  "
            f"{'measured' if r['measured'] else 'MODELLED'}")
    log("E ops: 4.6 pJ/MAC + 0.9 pJ/AC (45 nm literature); E dev: assumed power x latency "
        "(estimates; per inference)")
    g = ratios.get("fpga_vs_gpu_batch1")
    if g:
        tag = "measured" if g["gpu_measured"] else "modelled"
        log(f"FPGA ({g['fpga_target']}, {g['variant']}) vs {g['gpu']} ({tag}) at batch 1: "
            f"latency FPGA/GPU = {g['latency_ratio_fpga_over_gpu']:.3g}x; device energy "
            f"GPU/FPGA = {_fmt(g['energy_ratio_gpu_over_fpga'], '{:.3g}')}x (both estimates); "
            f"ops energy GPU(dense MACs)/FPGA = "
            f"{_fmt(g['ops_energy_ratio_gpu_over_fpga'], '{:.3g}')}x")
    c = ratios.get("fpga_vs_cpu_batch1")
    if c:
        log(f"FPGA vs CPU (batch 1, both measured): latency FPGA/CPU = "
            f"{c['latency_ratio_fpga_over_cpu']:.3g}x vs the float model, "
            f"{_fmt(c['latency_ratio_fpga_over_cpu_int_golden'], '{:.3g}')}x vs the integer "
            f"golden model")
    d = ratios.get("l1p_vs_dense_cycles")
    if d:
        log(f"L1P vs dense cycles: dense/L1P = {d['dense_over_l1p']:.2f}x (ideal "
            f"{_fmt(d['ideal_dense_over_l1p'], '{:.2f}')}x; project target >= 5x: "
            f"{'met' if d['meets_target'] else 'NOT met'})")


# ---- plots -------------------------------------------------------------------------------------

def plot_all(fpga, baselines, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir = Path(out_dir)
    written = []
    bars = []     # (label, latency_us per inference, energy uJ, modelled)
    for r in fpga:
        if r["latency_us"] is not None:
            bars.append((f"FPGA {r['target']}\n{r['variant']}", r["latency_us"],
                         r["energy_uj_device"], False, r["energy_uj_ops"]))
    for r in baselines:
        dev = "CPU" if r["device"] == "cpu" else r["device"].replace("NVIDIA ", "")
        bars.append((f"{dev}\n{r.get('variant', '')} {r['model']} b{r['batch']}",
                     r.get("latency_us_per_inference", r["latency_us"]),
                     r.get("energy_uj_device"), not r["measured"], r.get("energy_uj_ops")))
    for what, idx, fname, ylabel in (("latency", 1, "bench_latency.png",
                                      "latency per inference (us, log)"),
                                     ("energy", 2, "bench_energy.png",
                                      "device energy per inference (uJ, log; estimate)")):
        sel = [b for b in bars if b[idx]]
        if not sel:
            continue
        fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(sel)), 5))
        colors = ["tab:green" if b[0].startswith("FPGA") else
                  "tab:blue" if b[0].startswith("CPU") else "tab:red" for b in sel]
        rects = ax.bar(range(len(sel)), [b[idx] for b in sel], color=colors,
                       hatch=None, edgecolor="black")
        for rect, b in zip(rects, sel):
            if b[3]:
                rect.set_hatch("//")
                rect.set_alpha(0.6)
        if what == "energy":
            ops = [(i, b[4]) for i, b in enumerate(sel) if b[4]]
            ax.scatter([i for i, _ in ops], [e for _, e in ops], marker="D", color="black",
                       zorder=3, label="ops estimate (4.6 pJ/MAC, 0.9 pJ/AC)")
            ax.legend(loc="upper left", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels([b[0] for b in sel], rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{what} per inference: FPGA (green) vs CPU (blue, measured) vs GPU (red); "
                     "hatched = modelled", fontsize=9)
        fig.tight_layout()
        write_figure(out_dir / fname, fig)
        plt.close(fig)
        written.append(str(out_dir / fname))
    # cycles per variant (sparse vs low-rank vs dense), one target is enough: cycles do not
    # depend on the target
    seen, rows = set(), []
    for r in fpga:
        if r["variant"] not in seen and r["cycles"] is not None:
            seen.add(r["variant"])
            rows.append(r)
    if rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["cycles"] for r in rows], 0.4, label="measured (sim mean)",
               yerr=[[r["cycles"] - (r["cycles_min"] or r["cycles"]) for r in rows],
                     [(r["cycles_max"] or r["cycles"]) - r["cycles"] for r in rows]],
               capsize=3)
        ax.bar(x + 0.2, [r["ideal_cycles"] or 0 for r in rows], 0.4, label="ideal (work bound)")
        names = {"l1p": "L1P (sparse)", "dsp": "DSP (low-rank)", "dense": "dense"}
        ax.set_xticks(x)
        ax.set_xticklabels([names.get(r["variant"], r["variant"]) for r in rows])
        ax.set_ylabel("cycles per inference")
        ax.legend()
        ax.set_title("accelerator cycles per inference (min-max bars)", fontsize=9)
        fig.tight_layout()
        write_figure(out_dir / "bench_cycles.png", fig)
        plt.close(fig)
        written.append(str(out_dir / "bench_cycles.png"))
    return written


# ---- main --------------------------------------------------------------------------------------

def _run_sim(variant: str, log=print) -> bool:
    log(f"running `make sim MODEL={variant}` (--run-missing) ...")
    return subprocess.run(["make", "sim", f"MODEL={variant}"], cwd=ROOT).returncode == 0


def run_bench(variants=VARIANTS, targets=TARGETS, reports=Path("build/reports"),
              artifacts=Path("build/artifacts"), checkpoints=Path("model/shipped"),
              images: int = 100, run_missing: bool = False, quick: bool = False,
              large_batch: int = 64, log=print) -> dict:
    from model.config import config_from_dict
    from model.ir import load_artifact
    from model.pipeline import load_data
    from model.train import load_checkpoint, rebuild

    from model.errors import StforgeError
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise StforgeError(f"unknown target {unknown[0]!r}; known targets: {', '.join(TARGETS)}")
    absent = [v for v in variants if not (Path(artifacts) / f"{v}.json").is_file()]
    if absent and len(absent) == len(variants):
        raise StforgeError(f"no artifact for {', '.join(absent)} in {artifacts} (run `make "
                           f"export`; known variants: {', '.join(VARIANTS)}): nothing to bench")
    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    missing = []
    fpga, baselines, ops_by_variant = [], [], {}
    for variant in variants:
        art_path = Path(artifacts) / f"{variant}.json"
        if not art_path.is_file():
            msg = f"missing {art_path}: run `make export` first"
            log(msg)
            missing.append(msg)
            continue
        artifact = load_artifact(art_path)
        split = load_data(config_from_dict(artifact.source["config"]))
        n = min(images, len(split.x_test))
        x_test = np.asarray(split.x_test[:n])
        sim, msg = load_sim_report(reports, variant)
        if sim is None and run_missing and _run_sim(variant, log):
            sim, msg = load_sim_report(reports, variant)
        notes = []
        if msg:
            log(msg)
            missing.append(msg)
            notes.append(msg)
        ops = variant_ops(artifact, x_test)
        ops_by_variant[variant] = ops
        for target in targets:
            tnotes = list(notes)
            synth, msg = load_synth_report(reports, target, variant)
            if msg:
                tnotes.append(msg)
                if msg not in missing:
                    log(msg)
                    missing.append(msg)
            fpga.append(fpga_row(variant, target, sim, synth, ops, tnotes))

        ckpt = Path(checkpoints) / f"{variant}-int8.pt"
        if not ckpt.is_file():
            msg = f"missing {ckpt}: no CPU/GPU baseline for {variant}"
            log(msg)
            missing.append(msg)
            continue
        quantized, _config, _meta = load_checkpoint(ckpt)
        # the float baseline is the same network as plain PyTorch: Brevitas' fake-quantization
        # proxies would triple the eager latency and measure the tool, not the network
        model = rebuild(quantized, weight_bits=None, leak_bits=None).eval()
        golden = artifact
        scale = float(artifact.model.input_scale)
        rows = cpu_rows(variant, model, golden, x_test, scale, (1, large_batch), quick)
        prof1 = profile_float_model(
            model, torch.from_numpy(x_test[:1].astype(np.float32) * np.float32(scale)))
        for r in rows:
            if r["model"] == "float":
                r["energy_uj_ops"] = dense_mac_energy(prof1)
                r["aten_ops_per_forward"] = prof1["kernels"]
                r["note"] = ("plain PyTorch float model (the QAT weights before quantization, "
                             "same masks/factors, no Brevitas); at batch 1 eager per-op dispatch, "
                             "not arithmetic, dominates")
            else:
                r["energy_uj_ops"] = ops["energy_uj"]   # same integer ops as the accelerator
        baselines += rows
        xs = {}
        for b in (1, large_batch):
            xb = np.resize(x_test, (b,) + x_test.shape[1:])
            xs[b] = torch.from_numpy(xb.astype(np.float32) * np.float32(scale))
        grows = gpu_rows(model, xs, variant, log=log if variant == variants[0] else
                         (lambda *_: None))
        for r in grows:
            r["energy_uj_ops"] = dense_mac_energy(prof1)
        baselines += grows

    ratios = compute_ratios(fpga, baselines, "l1p" if "l1p" in variants else variants[0])
    print_table(fpga, baselines, ratios, log)
    report = {"fpga": fpga, "baselines": baselines, "ratios": ratios,
              "ops": ops_by_variant, "missing": missing,
              "energy_model": {"mac_pj": E_MAC_PJ, "ac_pj": E_AC_PJ,
                               "source": "DESIGN.md §2; Horowitz ISSCC 2014, 45 nm",
                               "device_power": {k: {"watts": v[0], "source": v[1]}
                                                for k, v in DEVICE_POWER.items()},
                               "cpu_watts_per_thread": CPU_WATTS_PER_THREAD},
              "gpu_spec": GPU_SPEC, "cuda_available": bool(torch.cuda.is_available()),
              "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "platform": platform.platform(),
                          "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None},
              "images": images}
    report["plots"] = plot_all(fpga, baselines, reports)
    from model.ir.files import write_json
    write_json(reports / "bench.json", report)
    log(f"-> {reports / 'bench.json'}; plots: {', '.join(report['plots'])}")
    return report


def configure(p) -> None:
    """`stforge bench`'s arguments."""
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--reports", default="build/reports")
    p.add_argument("--artifacts", default="build/artifacts")
    p.add_argument("--checkpoints", default="model/shipped")
    p.add_argument("--images", type=positive_int, default=100,
                   help="test images for the op counts (the sim reports use the first 100)")
    p.add_argument("--batch", type=positive_int, default=64, help="the large batch size")
    p.add_argument("--run-missing", action="store_true",
                   help="run `make sim MODEL=<v>` for every missing sim report (slow)")
    p.add_argument("--quick", action="store_true", help="fewer timing repetitions")
    p.add_argument("--threads", type=positive_int, help="PyTorch CPU threads")


def run(args) -> int:
    """`stforge bench`: bench.json and its plots (the reports folder checked first)."""
    check_output_dir(args.reports, "--reports")
    check_output_path(Path(args.reports) / "bench.json", "report")
    if args.threads:
        torch.set_num_threads(args.threads)
    run_bench(args.variants, args.targets, Path(args.reports), Path(args.artifacts),
              Path(args.checkpoints), args.images, args.run_missing, args.quick, args.batch)
    return 0
