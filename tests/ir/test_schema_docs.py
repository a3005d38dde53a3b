"""docs/ARTIFACT.md documents every field the code reads (model.ir.fields.SCHEMA)."""

import re
from pathlib import Path

import model.ir  # noqa: F401  (declares every section)
from model.ir.fields import SCHEMA

DOC = Path(__file__).resolve().parents[2] / "docs" / "ARTIFACT.md"


def sections(text: str) -> dict[str, str]:
    parts = re.split(r"^### `([^`]+)`\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_field_the_code_reads_is_documented():
    documented = sections(DOC.read_text())
    for section, fields in SCHEMA.items():
        assert section in documented, f"docs/ARTIFACT.md has no section for {section!r}"
        rows = set(re.findall(r"^\| `([^`]+)` \|", documented[section], flags=re.M))
        missing = set(fields) - rows
        assert not missing, f"{section}: undocumented fields {sorted(missing)}"
        stale = rows - set(fields)
        assert not stale, f"{section}: documented fields the code does not read {sorted(stale)}"


def test_the_conventions_are_stated():
    text = DOC.read_text()
    for phrase in ("cross-correlation", "contiguous channel blocks", "out x in",
                   "one sparse column per input", "per-channel thresholds", "before pooling"):
        assert phrase in text, phrase
