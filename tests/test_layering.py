"""The package layering, enforced by walking every import (module level and function level).

    model.ir            standard library + NumPy (+ model.errors): the foundation
    model (the rest)    training, export: may use torch; never hw, sim, firmware or model.flows
    hw, sim, firmware   no torch, no Brevitas; firmware does not import hw
    model.flows         orchestration (CLI, bench, sweep-hw): imports anything, imported by none
"""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "hw", "sim", "firmware")
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
#: Imports that break a rule today and are scheduled to go (each names its issue). Keep short.
KNOWN: set[tuple[str, str]] = set()


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p)
            for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(rule) -> list[tuple[str, str]]:
    known = lambda mod, imp: any(mod == m and within(imp, i) for m, i in KNOWN)
    return sorted((mod, imp) for mod, imps in graph().items() for imp in imps
                  if rule(mod, imp) and not known(mod, imp))


def test_model_ir_is_standard_library_and_numpy_only():
    def bad(mod, imp):
        top = imp.split(".")[0]
        return within(mod, "model.ir") and not (
            top in STDLIB or top == "numpy" or within(imp, "model.ir")
            or within(imp, "model.errors") or imp == "model")
    assert violations(bad) == []


def test_hw_sim_firmware_import_no_torch_or_brevitas():
    def bad(mod, imp):
        return mod.split(".")[0] in ("hw", "sim", "firmware") and \
            imp.split(".")[0] in ("torch", "brevitas", "torchvision")
    assert violations(bad) == []


def test_firmware_does_not_import_hw():
    assert violations(lambda mod, imp: within(mod, "firmware") and within(imp, "hw")) == []


def test_the_foundation_does_not_import_the_layers_above_it():
    def bad(mod, imp):
        return within(mod, "model") and not within(mod, "model.flows") and (
            imp.split(".")[0] in ("hw", "sim", "firmware") or within(imp, "model.flows"))
    assert violations(bad) == []


def test_nothing_imports_the_orchestration_package():
    def bad(mod, imp):
        return within(imp, "model.flows") and not within(mod, "model.flows")
    assert violations(bad) == []


def test_the_walk_sees_imports():
    """Not blind: the walk finds a known module-level and a known function-level import."""
    g = graph()
    assert "numpy" in g["model.ir.nodes"]
    assert "hw.synth" in g["hw.bitstream"]             # imported inside functions
    assert "model.flows.bench" in g["model.flows.sweep_hw"]
