"""`make fuzz-hw`: random models through HDL generation and simulation, bit for bit.

    stforge fuzz-hw [--models 20] [--seed 0] [--inputs 10] [--sim verilator|icarus]
                    [--jobs 1] [--out build/fuzz] [--report build/reports/fuzz-hw.json]

Model k of a run is `model.ir.random_model.random_model(seed + k, lanes)` (lanes drawn from
the same seed: 1, 2, 3 or 4; one model in ten without the trace port): an architecture and
integers drawn at random within the space the generator accepts. Each is written as an
artifact, given `--inputs` random inputs, generated as Verilog, simulated, and compared with
the golden model: every spike vector of every layer, the logits and the class (the logits and
the class only without the trace port), and every layer's cycles against the cycle model,
which must be exact. A model that fails keeps its folder under ``<out>/failures/seed-<n>``
(artifact, inputs as golden data, Verilog, the simulator's records) and the report names the
command that repeats it; a passing model's files are removed (a Verilator build takes tens of
MB). build/reports/fuzz-hw.json holds the counts, the space covered and every failure.

Regression: a model that once failed is kept under tests/artifacts/fuzz/ and simulated by the
test suite (tests/sim/test_fuzz.py).
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from model.errors import positive_int, seed as seed_type

__all__ = ["fuzz_one", "fuzz", "configure", "run"]

#: Lanes a random model is made for, drawn per model
LANES = (1, 1, 2, 3, 4)


def model_setup(seed: int) -> tuple[int, bool]:
    """(lanes, trace) of model `seed`: drawn from their own generator, so the model's own
    stream of random numbers does not depend on them."""
    rng = np.random.default_rng([seed, 1])
    return int(rng.choice(LANES)), bool(rng.random() >= 0.1)


def fuzz_one(seed: int, inputs: int, sim: str, out: Path) -> dict:
    """Model `seed` through the whole flow; returns its record (``passed``, the reason if
    not). Runs in a worker process: imports here."""
    from hw.generate import generate_verilog
    from model.ir import save_artifact
    from model.ir.golden import write_golden_data
    from model.ir.random_model import random_inputs, random_model
    from sim.runner import run_simulation, summarize
    started = time.time()
    lanes, trace = model_setup(seed)
    folder = out / f"seed-{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    record = {"seed": seed, "lanes": lanes, "trace": trace, "sim": sim}
    try:
        graph = random_model(seed, lanes)
        record["architecture"] = graph.source["random_model"]
        save_artifact(graph, folder / "model")
        x = random_inputs(np.random.default_rng([seed, 2]), graph, inputs)
        golden = folder / "golden.npz"
        write_golden_data(graph, x, np.zeros(len(x), np.int64), golden)
        generate_verilog(folder / "model.json", folder / "hdl", trace=trace, lanes=lanes)
        raw = run_simulation(folder / "hdl", golden, list(range(inputs)), sim,
                             build_root=folder / "build", quiet=True, optimise=False)
        report = summarize(raw, sim, f"seed-{seed}", golden)
        record.update(bitexact=report["bitexact"], images=inputs,
                      model_error=report["model_error"],
                      cycles=report["cycles_per_inference"]["mean"],
                      build_seconds=round(raw["build_seconds"], 1),
                      compared=report["compared"])
        problems = []
        if report["mismatches"]:
            problems.append(f"{report['mismatches']} of {inputs} inputs differ: "
                            f"{report.get('first_mismatch') or report.get('hung')}")
        if report["model_error"] != 0:
            problems.append(f"the cycle model is off by {100 * report['model_error']:.3f} %")
        record["passed"] = not problems
        if problems:
            record["failure"] = "; ".join(problems)
    except Exception as exc:          # any defect, the generator's included, is a finding
        record.update(passed=False, failure=f"{type(exc).__name__}: {exc}")
    record["seconds"] = round(time.time() - started, 1)
    if record["passed"]:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        target = out / "failures" / folder.name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), target)
        record["kept"] = str(target)
        record["repeat"] = f"stforge fuzz-hw --models 1 --seed {seed} --inputs {inputs} " \
                           f"--sim {sim}"
    return record


def _coverage(records: list[dict]) -> dict:
    """What the run covered: counts per lanes, trace, and architecture feature."""
    features = Counter()
    for r in records:
        arch = r.get("architecture", "")
        for word, key in (("events", "event input"), (" rpe", "position embedding"),
                          ("depth 0", "no blocks"), ("depth 1", "1 block"),
                          ("depth 2", "2 blocks")):
            if word in arch:
                features[key] += 1
        blocks = arch[arch.find("[") + 1:arch.find("]")] if "[" in arch else ""
        for letter, fmt in (("d", "dense matrices"), ("s", "sparse matrices"),
                            ("l", "low-rank matrices")):
            features[fmt] += blocks.count(letter)
        stem = arch.split("stem ")[1].split(" ")[0] if "stem " in arch else ""
        features["stem stages"] += stem.count("-") + 1 if stem else 0
        features["pooled stem stages"] += stem.count("p")
        features["sparse stem convs"] += stem.count("s")
        features[f"T={arch.split()[0][1:]}"] += 1 if arch else 0
    return {"lanes": dict(Counter(r["lanes"] for r in records)),
            "without trace port": sum(not r["trace"] for r in records),
            "features": dict(sorted(features.items()))}


def fuzz(models: int, seed: int, inputs: int, sim: str, out: Path, jobs: int = 1,
         progress=print) -> dict:
    """Run models seed .. seed + models - 1; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    records = []
    seeds = range(seed, seed + models)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(fuzz_one, s, inputs, sim, out): s for s in seeds}
        for n, future in enumerate(as_completed(futures), start=1):
            r = future.result()
            records.append(r)
            progress(f"[{n}/{models}] seed {r['seed']}: "
                     + ("ok" if r["passed"] else f"FAILED: {r['failure']}")
                     + f" ({r.get('architecture', '?')}; {r['seconds']} s)")
    records.sort(key=lambda r: r["seed"])
    failed = [r for r in records if not r["passed"]]
    return {"models": models, "first_seed": seed, "inputs_per_model": inputs, "simulator": sim,
            "passed": models - len(failed), "failed": len(failed),
            "inputs_compared": sum(r.get("images", 0) for r in records if r["passed"]),
            "seconds": round(time.time() - started, 1), "coverage": _coverage(records),
            "failures": failed, "records": records}


def configure(parser) -> None:
    """`stforge fuzz-hw`'s arguments."""
    parser.add_argument("--models", type=positive_int, default=20, help="random models to run")
    parser.add_argument("--seed", type=seed_type, default=0, help="first model's seed")
    parser.add_argument("--inputs", type=positive_int, default=10, help="random inputs each")
    parser.add_argument("--sim", choices=("verilator", "icarus"), default="verilator")
    parser.add_argument("--jobs", type=positive_int, default=1, help="models in parallel")
    parser.add_argument("--out", default="build/fuzz", help="work folder (failures kept)")
    parser.add_argument("--report", default="build/reports/fuzz-hw.json")


def run(args) -> int:
    """`stforge fuzz-hw`: exit 1 when any model fails."""
    from model.errors import check_output_dir, check_output_path
    from model.ir.files import write_json
    from sim.toolchain import prepare_simulator
    check_output_dir(args.out, "--out")
    check_output_path(args.report, "--report")
    prepare_simulator(args.sim)
    report = fuzz(args.models, args.seed, args.inputs, args.sim, Path(args.out), args.jobs)
    write_json(args.report, report)
    print(f"fuzz-hw: {report['passed']}/{report['models']} random models bit-exact with an "
          f"exact cycle model on {args.sim} ({report['inputs_compared']} inputs compared, "
          f"{report['seconds']:.0f} s) -> {args.report}")
    for r in report["failures"]:
        print(f"  seed {r['seed']}: {r['failure']}\n    kept in {r.get('kept')}; repeat: "
              f"{r.get('repeat')}")
    return 0 if not report["failures"] else 1
