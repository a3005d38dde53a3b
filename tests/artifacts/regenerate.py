"""Regenerate the committed test artifacts (torch: runs the model side).

    .venv/bin/python tests/artifacts/regenerate.py

The hardware, simulation and firmware tests read these files instead of training or exporting,
so they need neither torch nor minutes of setup: the tiny kinds of tests/accelerator_fixtures.py
(`KINDS`, `LANES_KINDS`) and the shipped L1P model's export (`shipped-l1p`).
tests/test_committed_artifacts.py checks that they are what the export makes today.
"""

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]


def main() -> None:
    from accelerator_fixtures import KINDS, LANES_KINDS, build_artifact
    from conftest import export_shipped
    from model.ir import save_artifact
    for kind in KINDS + LANES_KINDS:
        save_artifact(build_artifact(kind, Path(tempfile.mkdtemp())), HERE / kind)
    graph, _ = export_shipped("l1p", Path(tempfile.mkdtemp()))
    save_artifact(graph, HERE / "shipped-l1p")
    print(f"wrote {len(KINDS + LANES_KINDS) + 1} artifacts to {HERE}")


if __name__ == "__main__":
    main()
