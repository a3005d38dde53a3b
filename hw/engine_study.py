"""Sparse-engine organisations compared on a model's real spikes: which one makes lanes pay.

The accelerator's spike-fed layers (every conv and matmul but the pixel-fed first conv) cost
their engine's walk of the active inputs' columns and the neuron array's updates. This module
counts, per layer and vector (one token or position at one time step), the cycles each
organisation of P lanes needs, with the neuron updates' ceil(rows / P) per vector as the floor
(the drain feeds the neuron array P rows per cycle), and sums them over a golden data set:

* ``row_lanes`` (today's engine, hw/components/sparse.py): rows dealt round-robin to P lanes
  that walk one event's column in lockstep; an event costs its column's fullest lane, at
  least 1, and the issue FSM sends one event per cycle;
* ``column_walkers``: P walkers, walker w owning the input columns j = w (mod P), each with
  its own accumulators (summed at the drain); a vector costs its busiest walker;
* ``free_walkers``: P walkers, each event going to the first free one (whole column, at least
  1 cycle), accumulators per walker in two banks so a walker runs up to one vector ahead of
  the drain;
* ``free_walkers_1_event``: the same, fed one event per cycle (today's issue FSM);
* ``free_walkers_barrier``: free walkers fed one event per cycle that start a vector only once
  every walker has finished the one before (the simplest walker engine: no run-ahead);
* ``free_walkers_2x``: P / 2 free walkers of 2 row lanes each (a 2-D split).

Every organisation walks into two accumulator banks, so a vector is walked while the one before
drains. ``bound`` is the layer's work bound on P lanes, max(synaptic ops, neuron updates) / P
(hw.cycles.ideal_cycles' rule). The issue side's own cycles (a conv tap's FETCH, a chunk's mask
load) and the pipelines' fill are left out of every organisation alike: the figures compare how
each organisation spreads the work, not a design's exact cycles (hw/cycles.py has those for the
built one).

    .venv/bin/python -m hw.engine_study build/artifacts/l1p.json build/sim/l1p-golden-360.npz \
        --images 40 --lanes 1 2 4 8 --report build/reports/engine-study-l1p.json
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from hw.plan import lane_column_sizes
from model.ir import Conv, Graph, LowRankMatMul, MatMul, load_artifact
from model.ir.golden import GoldenData
from model.ir.intops import shift2d

__all__ = ["ORGANISATIONS", "layer_vectors", "organisation_cycles", "main"]

ORGANISATIONS = ("bound", "row_lanes", "column_walkers", "free_walkers", "free_walkers_1_event",
                 "free_walkers_barrier", "free_walkers_2x")


def layer_vectors(graph: Graph, node, counts: np.ndarray):
    """The active engine columns of every vector of `node`, from its input's counts
    (T, tokens, features) of one image: a list of index arrays, time step inner."""
    active = np.asarray(counts) != 0
    if not isinstance(node, Conv):
        return [np.flatnonzero(active[t, n]) for n in range(active.shape[1])
                for t in range(active.shape[0])]
    planes = active.reshape(active.shape[0], node.height, node.width, -1)
    planes = np.moveaxis(planes, -1, 1)                          # (T, C, H, W)
    taps = np.stack([shift2d(planes, tap // 3 - 1, tap % 3 - 1) for tap in range(9)], axis=2)
    out = []                                                     # taps: (T, C, 9, H, W)
    for y in range(node.height):
        for x in range(node.width):
            for t in range(planes.shape[0]):
                out.append(np.flatnonzero(taps[t, :, :, y, x].reshape(-1)))  # c * 9 + tap
    return out


def _free_walkers(vectors, cost, walkers: int, drain: int, issue_rate: int = 0) -> int:
    """Cycles of events dealt to the first free of `walkers`, two accumulator banks; with
    `issue_rate` > 0, at most that many events leave the issue side per cycle."""
    free = np.zeros(walkers, dtype=np.int64)
    drain_end = [0, 0]
    issued = 0                              # events issued so far (the issue side's clock)
    for columns in vectors:
        allowed = drain_end[-2]             # the bank this vector takes has been drained
        done = allowed
        for j in columns:
            w = int(free.argmin())
            start = max(free[w], allowed)
            if issue_rate:              # event k of the issue side leaves in cycle k // rate
                issued = max(issued, allowed * issue_rate) + 1
                start = max(start, (issued - 1) // issue_rate)
            free[w] = start + cost[j]
            done = max(done, int(free[w]))
        drain_end.append(max(done, drain_end[-1]) + drain)
    return drain_end[-1]


def _pipelined(walks, drain: int) -> int:
    """Cycles of vectors walked one after the other (`walks`: each one's cycles) into two
    accumulator banks, each drained in `drain` cycles once walked and the previous drained."""
    walk_end, drain_end = 0, [0, 0]
    for walk in walks:
        walk_end = max(walk_end, drain_end[-2]) + int(walk)
        drain_end.append(max(walk_end, drain_end[-1]) + drain)
    return drain_end[-1]


def organisation_cycles(node, vectors, lanes: int) -> dict[str, int]:
    """{organisation: cycles} of one layer's `vectors` (see the module docstring)."""
    ptr, rows, _ = node.columns()
    size = np.diff(ptr)
    drain = -(-node.channels // lanes) if not isinstance(node, LowRankMatMul) else \
        -(-node.rank // lanes)
    row_cost = np.maximum(lane_column_sizes(ptr, rows, lanes).max(axis=0), 1)
    whole = np.maximum(size, 1)
    out = {"bound": max(-(-sum(int(size[c].sum()) for c in vectors) // lanes),
                        drain * len(vectors)),
           "row_lanes": _pipelined([row_cost[c].sum() for c in vectors], drain),
           "column_walkers": _pipelined(
               [np.bincount(c % lanes, weights=whole[c], minlength=lanes).max() for c in vectors],
               drain)}
    out["free_walkers"] = _free_walkers(vectors, whole, lanes, drain)
    out["free_walkers_1_event"] = _free_walkers(vectors, whole, lanes, drain, issue_rate=1)
    # no run-ahead: each vector alone (no drain) is walked, then the vectors are pipelined
    out["free_walkers_barrier"] = _pipelined(
        [_free_walkers([c], whole, lanes, 0, issue_rate=1) for c in vectors], drain)
    if lanes % 2 == 0:
        pair = np.maximum(lane_column_sizes(ptr, rows, 2).max(axis=0), 1)
        out["free_walkers_2x"] = _free_walkers(vectors, pair, lanes // 2, drain)
    else:
        out["free_walkers_2x"] = out["free_walkers"]
    return out


def study(graph: Graph, golden: GoldenData, images: int, lanes_list) -> dict:
    """{"layers": {layer: {lanes: {organisation: cycles per image}}}, "total": {...}}."""
    layers = [n for n in graph.neurons if isinstance(n, (Conv, MatMul, LowRankMatMul))
              and n.inputs[0] != "input"]
    sums = {n.name: {P: dict.fromkeys(ORGANISATIONS, 0) for P in lanes_list} for n in layers}
    for i in range(images):
        spikes = {name: s[:, i] for name, s in golden.spikes.items()}
        counts = graph.value_counts(spikes, golden.images[i:i + 1])
        for node in layers:
            vectors = layer_vectors(graph, node, counts[node.inputs[0]])
            for P in lanes_list:
                for k, v in organisation_cycles(node, vectors, P).items():
                    sums[node.name][P][k] += v
    per_image = {name: {P: {k: round(v / images, 1) for k, v in org.items()}
                        for P, org in by_lanes.items()} for name, by_lanes in sums.items()}
    total = {P: {k: round(sum(sums[n.name][P][k] for n in layers) / images, 1)
                 for k in ORGANISATIONS} for P in lanes_list}
    return {"images": images, "layers": per_image, "total": total,
            "over_bound": {P: {k: round(t[k] / t["bound"], 3) for k in ORGANISATIONS}
                           for P, t in total.items()}}


def main(argv=None) -> int:
    from model.errors import StforgeError, check_output_path, positive_int
    from model.ir.files import write_json
    parser = argparse.ArgumentParser(prog="python -m hw.engine_study", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("golden", help="golden data .npz of the artifact (make sim writes one)")
    parser.add_argument("--images", type=positive_int, default=40)
    parser.add_argument("--lanes", type=positive_int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--report", default=None)
    args = parser.parse_args(argv)
    try:
        graph, golden = load_artifact(args.artifact), GoldenData(args.golden)
        if golden.traced_names != [n.name for n in graph.neurons] or any(
                golden.spikes[n.name].shape[-1] != n.channels for n in graph.neurons):
            raise StforgeError(f"{args.golden} is not golden data of {args.artifact}")
        report_path = check_output_path(args.report, "--report") if args.report else None
        result = study(graph, golden, min(args.images, len(golden)), args.lanes)
    except StforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("engine-stage cycles per image / work bound (spike-fed layers):")
    for P, row in result["over_bound"].items():
        print(f"  P = {P}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "bound")
              + f" (bound {result['total'][P]['bound']:.0f})")
    if report_path:
        write_json(report_path, {"artifact": args.artifact, **result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
