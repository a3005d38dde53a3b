"""`stforge <stage>`: the one command line of every stage of the pipeline.

    stforge pipeline  [--config C]                     dense -> prune -> compensate -> QAT (make train)
    stforge sweep     [--config C]                     Fig. 5 sweep over seeds (make sweep)
    stforge train     --out dense.pt                   dense LIF model
    stforge prune     --in dense.pt --method l1p|dsp --out pruned.pt
    stforge finetune  --in pruned.pt --neuron slif|lif --out ft.pt
    stforge quantize  --in ft.pt --bits 8 --out q.pt
    stforge evaluate  --in q.pt
    stforge import-spikformer CKPT --arch A --out m.pt the official Spikformer's checkpoint
    stforge export    l1p=q.pt [dsp=...]                artifacts + golden.json (make export)
    stforge golden-data ART.json --out g.npz           golden spikes for the simulator
    stforge hdl       ART.json --out DIR [--lanes N]   Verilog + design.json (make hdl)
    stforge sim       --hdl DIR --golden g.npz         Verilator/Icarus + cocotb (make sim)
    stforge sim-board --artifact ART.json --golden g.npz   the board top and the host driver
    stforge bitstream --target T --artifact ART.json   Yosys/nextpnr (make bitstream)
    stforge run       --port P --artifact ART.json     test images on a board
    stforge bench                                      FPGA vs CPU vs GPU (make bench)
    stforge sweep-hw  [--config C]                     hardware design space (make sweep-hw)
    stforge fuzz-hw   [--models N --seed S]            random models, bit-exact (make fuzz-hw)

The stages after the export live in their own packages and plug in here with two hooks,
``configure(parser)`` and ``run(args) -> exit status`` (:data:`STAGES`); their modules are
imported only when their stage runs. One error path for all: a user mistake (a malformed
argument, or any StforgeError) prints one line ``stforge: error: ...`` and exits 2 with nothing
written; Ctrl-C prints one line and exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from model.config import WEIGHT_BITS
from model.errors import (ArgumentParser, StforgeError, check_name, check_output_dir,
                          check_output_path, int_in, number_in, positive_int, report_error,
                          report_interrupt, seed)

__all__ = ["main"]


def _config(args):
    from model.config import load_config
    config = load_config(args.config)
    if getattr(args, "out_dir", None):
        config.pipeline.out_dir = args.out_dir
    return config


def _data(config):
    from model.pipeline import load_data
    from model.train import to_tensors
    return to_tensors(load_data(config))


def cmd_pipeline(args):
    from model.pipeline import run_pipeline
    report = run_pipeline(_config(args), progress=not args.quiet)
    _summary(report)


def cmd_sweep(args):
    from model.pipeline import run_sweep
    report = run_sweep(_config(args), progress=not args.quiet)
    for g in report["sweep"]["slif_vs_lif"]:
        print(f"{g['method']} {g['setting']}: sLIF {g['slif_mean']:.4f} vs LIF {g['lif_mean']:.4f}"
              f"  (paired diff {g['slif_minus_lif_mean']:+.4f} ± {g['slif_minus_lif_std']:.4f},"
              f" sLIF wins {g['slif_wins']}/{g['seeds']})")


def _summary(report):
    print(f"dense: accuracy {report['dense']['accuracy']:.4f}, "
          f"block params {report['dense']['block_params']}")
    for v in report["variants"]:
        what = f"sparsity {v['sparsity']:.2f}" if v["method"] == "l1p" else \
            f"rank {v.get('rank')}" if v["method"] == "dsp" else ""
        bits = f"int{v['weight_bits']}" if v["weight_bits"] else "float"
        print(f"{v['method']:5} {what:14} {v['neuron']:4} {bits:5}  accuracy {v['accuracy']:.4f}"
              f"  nonzero params {v['nonzero_params']}")


def _accuracy(curve) -> str:
    """The last epoch's accuracy, as the stages print it (a stage of 0 epochs has none)."""
    return f"accuracy {curve[-1]:.4f}" if curve else "(0 epochs: not trained)"


def cmd_train(args):
    from model.pipeline import train_dense
    from model.train import save_checkpoint
    check_output_path(args.out, "--out")
    config = _config(args)
    model, curve = train_dense(config, _data(config), args.seed, progress=not args.quiet)
    save_checkpoint(args.out, model, config, {"seed": args.seed, "method": "dense"})
    print(f"dense {_accuracy(curve)} -> {args.out}")


def cmd_import_spikformer(args):
    from model.official import import_spikformer
    from model.train import save_checkpoint
    check_output_path(args.out, "--out")
    model, config = import_spikformer(args.checkpoint, args.arch, heads=args.heads,
                                      timesteps=args.timesteps, image_size=args.image_size,
                                      dim=args.dim, depth=args.depth)
    save_checkpoint(args.out, model, config, {"method": "dense", "source": "official-spikformer",
                                              "arch": args.arch,
                                              "checkpoint": str(args.checkpoint)})
    m = config.model
    print(f"official {args.arch} Spikformer-{m.depth}-{m.dim} ({m.heads} heads, T = "
          f"{m.timesteps}, {m.in_channels}x{m.image_size}^2 input, {m.num_classes} classes, "
          f"{sum(p.numel() for p in model.parameters())} parameters) -> {args.out}")


def cmd_prune(args):
    from model.pruning import l1p_prune, to_low_rank
    from model.train import load_checkpoint, save_checkpoint, evaluate
    check_output_path(args.out, "--out")
    model, config, meta = load_checkpoint(args.inp)
    if args.method == "l1p":
        target = config.prune.sparsity if args.sparsity is None else args.sparsity
        stem = config.prune.stem if args.stem is None else args.stem
        l1p_prune(model, target, args.scope or config.prune.scope, stem)
    else:
        given = args.rank is not None or args.energy is not None
        rank, energy = (args.rank, args.energy) if given else (config.prune.rank,
                                                               config.prune.energy)
        model = to_low_rank(model, rank=rank, energy=energy)
    data = _data(config)
    save_checkpoint(args.out, model, config, {**meta, "method": args.method})
    print(f"{args.method}: accuracy before fine-tuning "
          f"{evaluate(model, data.x_test, data.y_test):.4f} -> {args.out}")


def cmd_finetune(args):
    from model.train import load_checkpoint, rebuild, save_checkpoint, train
    check_output_path(args.out, "--out")
    model, config, meta = load_checkpoint(args.inp)
    model = rebuild(model, neuron=args.neuron)
    curve = train(model, _data(config), config.pipeline.finetune, f"finetune {args.neuron}",
                  progress=not args.quiet)
    save_checkpoint(args.out, model, config, meta)
    print(f"fine-tuned ({args.neuron}) {_accuracy(curve)} -> {args.out}")


def cmd_quantize(args):
    from model.pipeline import quantize
    from model.train import load_checkpoint, save_checkpoint
    check_output_path(args.out, "--out")
    model, config, meta = load_checkpoint(args.inp)
    q, curve = quantize(model, config, _data(config), args.bits, config.pipeline.qat.seed,
                        progress=not args.quiet)
    save_checkpoint(args.out, q, config, meta)
    print(f"int{args.bits} QAT {_accuracy(curve)} -> {args.out}")


def _export_names(items) -> list[tuple[str, str]]:
    """(name, checkpoint) of every ``[NAME=]CHECKPOINT``; a name (the checkpoint's file name
    without ``.pt`` when none is given) is a plain identifier and given once."""
    from pathlib import Path
    named = []
    for item in items:
        name, ckpt = item.split("=", 1) if "=" in item else (Path(item).stem, item)
        check_name(name, "model name")
        if name in dict(named):
            raise StforgeError(f"model name {name!r} is given twice")
        named.append((name, ckpt))
    return named


def cmd_export(args):
    """Export quantized checkpoints to artifacts and write golden.json (golden vs PyTorch).

    Every name and output path is checked before a checkpoint is read; the artifacts are
    built in a temporary folder and copied into --out-dir only once every model has been
    exported and compared, so a failure leaves --out-dir and --report as they were."""
    import tempfile
    from pathlib import Path
    from model.export import export_model
    from model.export import compare_with_model
    from model.ir.golden import run_golden
    from model.pipeline import load_data
    from model.ir.files import write_bytes, write_json
    from model.train import load_checkpoint
    named = _export_names(args.models)
    out_dir = check_output_dir(args.out_dir, "--out-dir")
    for name, _ in named:
        for ext in ("json", "npz"):
            check_output_path(out_dir / f"{name}.{ext}", "artifact")
    report_path = check_output_path(args.report, "--report")
    loaded = []
    for name, ckpt in named:   # read every checkpoint first: a bad one leaves nothing written
        model, config, meta = load_checkpoint(ckpt)
        loaded.append((name, ckpt, model, config, load_data(config)))
    results = {}
    with tempfile.TemporaryDirectory(prefix="stforge-export-") as tmp:
        for name, ckpt, model, config, split in loaded:
            limit = len(split.x_test) if args.images is None else args.images
            artifact = export_model(model, config, split, Path(tmp) / name,
                                    meta={"checkpoint": str(ckpt)})
            run_golden(artifact, split.x_test[:1], saturate=True)  # widths hold at full activity
            r = compare_with_model(model, artifact, split.x_test[:limit], split.y_test[:limit],
                                   split.input_scale)
            r["artifact"] = str(out_dir / f"{name}.json")
            results[name] = r
        for name in results:            # all exported and compared: now into --out-dir
            for ext in ("npz", "json"):     # the manifest last: it names the arrays' checksum
                write_bytes(out_dir / f"{name}.{ext}", (Path(tmp) / f"{name}.{ext}").read_bytes())
    for name, r in results.items():
        removed = sum(r["silent_channels_removed"].values())
        print(f"{name}: agreement {r['agreement']:.4f}, accuracy quant {r['accuracy_quant']:.4f}"
              f" int {r['accuracy_int']:.4f}, lowest layer spike agreement "
              f"{min(r['layer_spike_agreement'].values()):.5f}"
              + (f", {removed} silent channels removed" if removed else "")
              + f" -> {r['artifact']}")
    first = next(iter(results))
    deployed = results.get("l1p", results[first])
    report = {k: deployed[k] for k in ("images", "accuracy_quant", "accuracy_int", "agreement")}
    report["layer_spike_agreement"] = deployed["layer_spike_agreement"]
    report["variants"] = results
    write_json(report_path, report)


def cmd_golden_data(args):
    """Golden spikes and logits of an artifact on test images, as .npz for the simulator."""
    from model.config import config_from_dict
    from model.ir import load_artifact
    from model.ir.golden import write_golden_data
    from model.pipeline import load_data
    check_output_path(args.out, "--out")
    artifact = load_artifact(args.artifact)
    split = load_data(config_from_dict(artifact.source["config"]))
    n = min(args.images, len(split.x_test))
    info = write_golden_data(artifact, split.x_test[:n], split.y_test[:n], args.out)
    print(f"golden data for {info['images']} images, {len(info['traced'])} traced nodes "
          f"-> {args.out}")


def cmd_evaluate(args):
    from model.pipeline import describe
    from model.train import load_checkpoint
    model, config, meta = load_checkpoint(args.inp)
    entry = describe(model, meta.get("method", "dense"), _data(config), meta.get("seed", 0))
    print(json.dumps(entry, indent=2))


#: Stages after the export: {name: (module with configure/run, one-line help)}.
STAGES = {
    "hdl": ("hw.generate", "Verilog of the accelerator for an artifact (make hdl)"),
    "sim": ("sim.runner", "simulate the Verilog against the golden data (make sim)"),
    "sim-board": ("sim.board_tb", "simulate the board top with the host driver"),
    "bitstream": ("hw.bitstream", "board bitstream with Yosys/nextpnr (make bitstream)"),
    "run": ("firmware.driver", "run test images on a board over its serial port"),
    "bench": ("model.flows.bench", "FPGA vs CPU vs GPU benchmark (make bench)"),
    "sweep-hw": ("model.flows.sweep_hw", "hardware design-space sweep (make sweep-hw)"),
    "fuzz-hw": ("model.flows.fuzz_hw", "random models through HDL and simulation (make fuzz-hw)"),
}


def build_parser(argv=()) -> argparse.ArgumentParser:
    """The parser; the stage named in `argv` (if any) is configured by its own module."""
    parser = ArgumentParser(prog="stforge", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE",
                                parser_class=ArgumentParser)
    chosen = next((a for a in argv if not a.startswith("-")), None)

    def add(name, func, help_, config=True):
        p = sub.add_parser(name, help=help_, description=help_)
        if config:
            p.add_argument("--config", help="TOML config file (defaults built in)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--threads", type=positive_int,
                       help="PyTorch CPU threads (default: all cores; 1 is often faster on a "
                            "busy machine, docs/YOUR_MODEL.md)")
        p.set_defaults(func=func)
        return p
    p = add("pipeline", cmd_pipeline, "dense -> prune -> compensate -> QAT; writes model.json")
    p.add_argument("--out-dir", help="output folder (default: pipeline.out_dir, 'build')")
    p = add("sweep", cmd_sweep, "sparsity x neuron and rank x neuron over seeds; plots")
    p.add_argument("--out-dir", help="output folder (default: pipeline.out_dir, 'build')")
    p = add("train", cmd_train, "train the dense LIF model")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=seed, default=0)
    p = add("prune", cmd_prune, "L1P masks or DSP factors, one shot", config=False)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--method", choices=("l1p", "dsp"), required=True)
    p.add_argument("--sparsity", type=number_in(0, 1, high_open=True),
                   help="L1P target sparsity (default: prune.sparsity)")
    p.add_argument("--scope", choices=("layer", "global"))
    p.add_argument("--stem", action=argparse.BooleanOptionalAction, default=None,
                   help="also prune the spike-fed stem convs (default: prune.stem)")
    low_rank = p.add_mutually_exclusive_group()
    low_rank.add_argument("--rank", type=positive_int,
                          help="DSP rank of every block matrix (default: prune.rank)")
    low_rank.add_argument("--energy", type=number_in(0, 1, low_open=True),
                          help="DSP: the smallest rank keeping this singular-value energy")
    p = add("finetune", cmd_finetune, "fine-tune with masks/ranks fixed", config=False)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--neuron", choices=("lif", "slif"), default="slif")
    p = add("quantize", cmd_quantize, "Brevitas QAT to integer weights", config=False)
    p.add_argument("--in", dest="inp", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--bits", type=int_in(*WEIGHT_BITS), default=8,
                   help=f"weight bits, {WEIGHT_BITS[0]}..{WEIGHT_BITS[1]} (default 8)")
    p = add("export", cmd_export, "integer artifacts + golden model check (golden.json)",
            config=False)
    p.add_argument("models", nargs="+", metavar="[NAME=]CHECKPOINT",
                   help="quantized checkpoints, e.g. l1p=build/checkpoints/l1p-int8.pt; "
                        "NAME (default: the file name without .pt) names the artifact, "
                        "NAME.json in --out-dir")
    p.add_argument("--out-dir", default="build/artifacts")
    p.add_argument("--report", default="build/reports/golden.json")
    p.add_argument("--images", type=positive_int, help="test images to compare (default: all)")
    p = add("golden-data", cmd_golden_data, "golden spikes/logits as .npz for simulation",
            config=False)
    p.add_argument("artifact")
    p.add_argument("--images", type=positive_int, default=100)
    p.add_argument("--out", required=True)
    p = add("evaluate", cmd_evaluate, "test accuracy and parameter counts", config=False)
    p.add_argument("--in", dest="inp", required=True)
    p = add("import-spikformer", cmd_import_spikformer,
            "the official Spikformer's state_dict (ZK-Zhou/spikformer) as a stforge checkpoint",
            config=False)
    p.add_argument("checkpoint", help="a state_dict saved by the official code (.pth.tar, .pt)")
    p.add_argument("--arch", required=True, choices=("cifar10", "cifar10dvs", "imagenet"))
    p.add_argument("--out", required=True, help="the stforge checkpoint to write (.pt)")
    p.add_argument("--dim", type=positive_int, help="checked against the checkpoint")
    p.add_argument("--depth", type=positive_int, help="checked against the checkpoint")
    p.add_argument("--heads", type=positive_int, help="attention heads (default: the arch's)")
    p.add_argument("--timesteps", type=positive_int, help="T (default: the arch's)")
    p.add_argument("--image-size", type=positive_int, help="input side (default: the arch's)")
    for name, (module, help_) in STAGES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:
            stage = importlib.import_module(module)
            stage.configure(p)
            p.set_defaults(run=stage.run)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as exc:           # --help (0) or a malformed command line (2, one line)
        return exc.code
    if getattr(args, "threads", None) and "func" in vars(args):
        import torch
        torch.set_num_threads(args.threads)
    try:
        if "run" in vars(args):
            return args.run(args)
        args.func(args)
    except StforgeError as exc:
        return report_error(exc)
    except KeyboardInterrupt as exc:
        return report_interrupt(str(exc) or "interrupted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
