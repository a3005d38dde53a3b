"""Reports under build/reports/ (../shared/REPORTS.md): one atomic JSON writer, torch-free."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_json"]


def write_json(path: str | Path, data: dict) -> None:
    """Write atomically: readers never see a half-written report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
