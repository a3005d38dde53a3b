"""Tiny integer artifacts of every kind for the whole-accelerator tests, built without training.

`build_artifact(kind, out_dir)` makes a small spiking transformer through the model side
(Config -> SpikingTransformer -> randomised neurons -> L1P / DSP -> 8-bit QAT rebuild ->
BatchNorm calibration -> export), small enough for amaranth.sim to run one inference in seconds
(8x8 input, stem channels [4, 8], dim 8, 2 heads, MLP ratio 2, 1 block, T = 2):

    kind        matrices               input                      stem_pool   tokens
    l1p         sparse (70% pruned)    static digits              [T, T]      2x2 = 4
    dense       dense (every weight)   static digits              [T, T]      4
    dsp         low rank (rank 3)      static digits              [T, T]      4
    l1p16       sparse                 static digits              [T, F]      4x4 = 16
    events      sparse                 time-varying frames 0..3   [T, T]      4

The L1P kinds prune the second (spike-fed) stem conv too, so its engine columns are sparse;
events keeps it dense (sparse blocks beside a dense conv).

Neuron parameters are randomised (u_th in 0.2..1.0, w_tau in -1.5..1.5; the attention
neuron u_th 0.02..0.1, w_tau 1..3 so that its small counts fire it) and every BatchNorm is
calibrated on a batch of inputs (running statistics = that batch's, random gamma signs), so
neurons fire at moderate rates and some rows get negative scales (the export's orientation
path). `golden_data(artifact, images, path)` writes the golden .npz the scoreboard reads.

`run_accelerator(dut, images, scoreboard)` drives an ``Accelerator(artifact, trace=True)`` in
amaranth.sim (pixels in; trace, logits and result collected, optionally checked as they come);
`simulated(kind, root)` simulates each kind once per pytest process, so the accelerator and
cycle-model tests share the runs.

`build_artifact` imports torch (it builds models); it only makes the committed artifacts
(tests/artifacts/regenerate.py) and checks them (test_committed_artifacts.py). The hardware
tests read the committed files through `tiny_artifact`, without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["KINDS", "LANES_KINDS", "build_artifact", "golden_data", "sample_images", "event_split",
           "perturb_weight", "perturb_threshold", "pixel_stream", "run_accelerator",
           "SIM_INPUTS", "tiny_artifact", "simulated"]

KINDS = ("l1p", "dense", "dsp", "l1p16", "events")
#: Wider tiny models for the lanes tests (every layer needs 3+ groups of lanes, attention
#: heads a multiple of the lanes): stem channels [10, 12], dim 12 (2 heads of 6), MLP 24.
LANES_KINDS = ("l1p-wide", "dsp-wide")

_SEEDS = {"l1p": 1, "dense": 2, "dsp": 3, "l1p16": 4, "events": 5, "l1p-wide": 6,
          "dsp-wide": 7}


def tiny_config(kind: str):
    from model.config import Config
    cfg = Config()
    m = cfg.model
    m.image_size, m.stem_channels, m.dim, m.heads = 8, [4, 8], 8, 2
    if kind in LANES_KINDS:
        m.stem_channels, m.dim = [10, 12], 12
    m.stem_pool = [True, False] if kind == "l1p16" else [True, True]
    m.mlp_ratio, m.timesteps, m.depth = 2, 2, 1
    cfg.prune.rank = 3
    cfg.pipeline.sweep_ranks = [2, 3]
    cfg.quant.extra_bits = []
    return cfg.validate()


def event_split(seed: int = 0, timesteps: int = 2, count: int = 64):
    """A synthetic time-varying split: (N, T, 1, 8, 8) frames of event counts 0..3."""
    from model.data import DataSplit
    rng = np.random.default_rng(seed)

    def frames(n):
        dens = rng.uniform(0.1, 0.6, size=(n, 1, 1, 1, 1))
        x = (rng.random((n, timesteps, 1, 8, 8)) < dens) * rng.integers(1, 4, (n, timesteps, 1,
                                                                                8, 8))
        return x.astype(np.uint8)

    return DataSplit("events", frames(count), rng.integers(0, 10, count), frames(16),
                     rng.integers(0, 10, 16), num_classes=10, input_scale=1.0 / 3, input_max=3)


def _calibrate(model, x_float, rng):
    """BatchNorm running statistics := one batch's, with random gains: neurons fire."""
    import torch
    norms = [mod for mod in model.modules()
             if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None                   # cumulative average: exactly this batch
        with torch.no_grad():
            sign = torch.from_numpy(np.where(rng.random(bn.num_features) < 0.15, -1.0, 1.0))
            bn.weight.copy_(sign.float() * torch.from_numpy(
                rng.uniform(0.6, 1.4, bn.num_features)).float())
            bn.bias.copy_(torch.from_numpy(rng.uniform(-0.2, 0.4, bn.num_features)).float())
    model.train()
    with torch.no_grad():
        model(x_float)
    model.eval()
    for bn in norms:
        bn.momentum = 0.1


def build_artifact(kind: str, out_dir):
    """Build, export and reload the tiny artifact `kind` (see KINDS) under `out_dir`."""
    import torch
    from model.data import load_digits
    from model.export import export_model
    from model.pruning import l1p_prune, to_low_rank
    from model.train import rebuild
    from model.transformer import SpikingTransformer
    if kind not in KINDS + LANES_KINDS:
        raise ValueError(f"unknown tiny artifact kind {kind!r}; known: "
                         f"{', '.join(KINDS + LANES_KINDS)}")
    cfg = tiny_config(kind)
    seed = _SEEDS[kind]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    split = event_split(seed, cfg.model.timesteps) if kind == "events" else load_digits()
    m = SpikingTransformer(cfg.model, "slif")
    with torch.no_grad():
        for n in m.neurons():
            n.u_th.uniform_(0.2, 1.0)
            n.w_tau.uniform_(-1.5, 1.5)
        for block in m.blocks:      # attention counts are small (x = 0.125 count): fire anyway
            block.neurons["attn"].u_th.uniform_(0.02, 0.1)
            block.neurons["attn"].w_tau.uniform_(1.0, 3.0)
    if kind.startswith("dsp"):
        m = to_low_rank(m, rank=cfg.prune.rank)
    elif kind != "dense":
        m = rebuild(m)
        l1p_prune(m, 0.7, stem=kind != "events")
    q = rebuild(m, weight_bits=8, leak_bits=8)
    x = torch.from_numpy(split.x_train[:256].astype(np.float32) * np.float32(split.input_scale))
    _calibrate(q, x, rng)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return export_model(q, cfg, split, out_dir / kind)


def sample_images(artifact, count: int = 2, seed: int = 0) -> np.ndarray:
    """`count` inputs of the artifact's data set, then an all-max and an all-zero input."""
    man = artifact.model
    shape = tuple(man.input_shape)
    if man.time_varying_input:
        split = event_split(0, man.timesteps)
        shape = (man.timesteps,) + shape
    else:
        from model.data import load_digits
        split = load_digits()
    rng = np.random.default_rng(seed)
    pick = split.x_test[rng.choice(len(split.x_test), count, replace=False)].astype(np.int64)
    full = np.full((1,) + shape, int(man.input_max), dtype=np.int64)
    zero = np.zeros((1,) + shape, dtype=np.int64)
    return np.concatenate([pick, full, zero])


def golden_data(artifact, images, path):
    """Write the golden .npz (model.ir.golden.write_golden_data) and return its GoldenData."""
    from model.ir.golden import GoldenData, write_golden_data
    images = np.asarray(images)
    write_golden_data(artifact, images, np.zeros(len(images), np.int64), path)
    return GoldenData(path)


def _node_spikes_differ(a, b, node_name: str, images) -> bool:
    from model.ir.golden import run_golden
    sa = run_golden(a, images).values[node_name]
    sb = run_golden(b, images).values[node_name]
    return bool((sa != sb).any())


def perturb_weight(artifact, node_name: str, images):
    """A copy of `artifact` with ONE stored weight of `node_name` set to 0 (it stays stored, so
    the widths stay valid): the largest-magnitude one that changes the golden spikes of
    `node_name` on `images`. Returns (copy, {"array", "index", "old", "new"})."""
    from model.ir import Conv, LowRankMatMul
    node = artifact.node(node_name)
    key = "weight" if isinstance(node, Conv) else \
        "b_values" if isinstance(node, LowRankMatMul) else "values"
    array = getattr(node, key)
    flat = array.reshape(-1)
    for i in np.argsort(-np.abs(flat), kind="stable")[:64]:
        if flat[i] == 0:
            break
        edited = array.copy()
        edited.reshape(-1)[i] = 0
        art = artifact.replace(node_name, **{key: edited})
        if _node_spikes_differ(artifact, art, node_name, images):
            return art, {"array": f"{node_name}.{key}", "index": int(i), "old": int(flat[i]),
                         "new": 0}
    raise AssertionError(f"no single weight of {node_name} changes its spikes on these inputs")


def perturb_threshold(artifact, node_name: str, images):
    """A copy of `artifact` with the threshold of ONE channel of `node_name` halved (or, if no
    halving changes anything, doubled): the first channel whose change alters the golden spikes
    of `node_name` on `images`. Returns (copy, {"channel", "old", "new"})."""
    from model.errors import ArtifactError
    th = artifact.node(node_name).threshold
    for scale in (0.5, 2.0):
        for c in range(len(th)):
            new = max(1, int(th[c] * scale))
            if new == th[c]:
                continue
            edited = th.copy()
            edited[c] = new
            try:
                art = artifact.replace(node_name, threshold=edited)
            except ArtifactError:       # beyond the declared threshold width
                continue
            if _node_spikes_differ(artifact, art, node_name, images):
                return art, {"channel": c, "old": int(th[c]), "new": new}
    raise AssertionError(f"no single threshold of {node_name} changes its spikes")


# ---- amaranth.sim harness (torch-free) -------------------------------------------------------

def pixel_stream(artifact, image) -> list[int]:
    """One input as the `pixels` stream sends it: order (c, y, x), for event data (t, c, y, x)."""
    return [int(v) for v in np.asarray(image).reshape(-1)]


def run_accelerator(dut, images, scoreboard=None, deadline_cycles: int = 2_000_000,
                    idle=None, stop_after: str | None = None, load: bool = True) -> list[dict]:
    """Run `images` back to back through `dut` (an Accelerator built with trace=True) in
    amaranth.sim; returns per image {"logits", "cls", "cycles", "layer_cycles" (node name ->
    TRACE_CYCLES data), "trace" (list of (kind, node, step, token, data)), "span"}.

    `scoreboard` (sim.scoreboard.Scoreboard), if given, sees every record as it arrives.
    `idle()`, if given, is called every cycle and holds the output streams not ready when it
    returns true (back-pressure); by default every stream is always ready. `stop_after` (a node
    name) ends the run at that node's layer-cycles record of the first image (the scoreboard,
    if any, is then left unfinished). A `loadable` dut gets its tables through ``load`` first
    (unless `load` is false)."""
    from hw.components.streams import CycleClock, simulate, stream_put
    names = {i: n.name for i, n in enumerate(dut.artifact.nodes)}
    records = [{"trace": [], "logits": [], "layer_cycles": {}} for _ in images]
    clock = CycleClock()
    started = []

    async def producer(ctx):
        if dut.loadable and load:       # the tables first, as a host does after configuration
            for table in dut.memory_map():
                for addr, word in enumerate(table.words):
                    await stream_put(ctx, dut.load,
                                     {"memory": table.id, "addr": addr, "data": word})
        # pixels of the next image wait in the stream until the accelerator is back in LOAD
        for image in images:
            for i, p in enumerate(pixel_stream(dut.artifact, image)):
                await stream_put(ctx, dut.pixels, p)
                if i == 0:
                    started.append(clock.now)

    async def monitor(ctx):
        for k in range(len(images)):
            rec = records[k]
            if scoreboard is not None:
                scoreboard.start_image(k)
            ready = 1
            for port in (dut.trace, dut.logits, dut.result):
                ctx.set(port.ready, 1)
            while "cls" not in rec:
                if idle is not None:
                    ready = 0 if idle() else 1
                    for port in (dut.trace, dut.logits, dut.result):
                        ctx.set(port.ready, ready)
                _, _, tv, tp, lv, lp, rv, rp = await ctx.tick().sample(
                    dut.trace.valid, dut.trace.payload, dut.logits.valid, dut.logits.payload,
                    dut.result.valid, dut.result.payload)
                if tv and ready:
                    item = (int(tp.kind), int(tp.node), int(tp.step), int(tp.token),
                            int(tp.data))
                    rec["trace"].append(item)
                    if item[0] == 1:
                        rec["layer_cycles"][names[item[1]]] = item[4]
                    if scoreboard is not None:
                        scoreboard.trace(*item)
                    if item[0] == 1 and names[item[1]] == stop_after:
                        return
                if lv and ready:
                    rec["logits"].append(int(lp))
                if rv and ready:
                    rec["cls"], rec["cycles"] = int(rp.cls), int(rp.cycles)
                    rec["span"] = clock.now - started[k] + 1
            ctx.set(dut.result.ready, 0)
            if scoreboard is not None:
                rec["result"] = scoreboard.finish_image(rec["logits"], rec["cls"],
                                                         rec["cycles"])

    simulate(dut, producer, monitor, background=[clock.bench], deadline_cycles=deadline_cycles)
    return records


# ---- per-session caches: one build and one simulation per kind, shared by the test modules ----

#: The inputs each kind is simulated on: l1p gets a digit, the all-max and the all-zero input
#: (back to back, which also checks that a run leaves no state behind); the others one input.
SIM_INPUTS = {"l1p": 1 + 2, "dense": 1, "dsp": 1, "l1p16": 1, "events": 1}

_artifacts: dict = {}
_simulations: dict = {}


#: The committed tiny artifacts (tests/artifacts/, made by its regenerate.py with
#: build_artifact): the hardware tests read these, without torch.
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


def tiny_artifact(kind: str, root=None):
    """The committed artifact `kind` (see KINDS, LANES_KINDS), loaded once per process."""
    if kind not in _artifacts:
        from model.ir import load_artifact
        if kind not in KINDS + LANES_KINDS:
            raise ValueError(f"unknown tiny artifact kind {kind!r}; known: "
                             f"{', '.join(KINDS + LANES_KINDS)}")
        _artifacts[kind] = load_artifact(ARTIFACTS / f"{kind}.json")
    return _artifacts[kind]


def simulated(kind: str, root, **accelerator):
    """(artifact, GoldenData, records) of kind's SIM_INPUTS (a LANES_KINDS kind: a digit and
    the all-max input) through Accelerator(trace=True, **accelerator), e.g. lanes=2, checked by
    a Scoreboard (records[i]["result"]); simulated once per process and configuration."""
    key = (kind, tuple(sorted(accelerator.items())))
    if key not in _simulations:
        from hw.accelerator import Accelerator
        from sim.scoreboard import Scoreboard
        art = tiny_artifact(kind, root)
        images = sample_images(art, 1)[:SIM_INPUTS.get(kind, 2)]
        golden = golden_data(art, images, Path(root) / f"{kind}-golden.npz")
        records = run_accelerator(Accelerator(art, trace=True, **accelerator), images,
                                  Scoreboard(golden))
        _simulations[key] = (art, golden, records)
    return _simulations[key]
