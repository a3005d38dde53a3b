"""Typed, checked reads of a manifest's JSON objects: every defect is one ArtifactError line.

A manifest comes from a file anyone can edit, so nothing in it is trusted: each value is read
through :class:`Fields`, which checks its JSON type and range and names the place of a defect
(``node block0.q: field 'out_features' must be an integer >= 1, not -3``). Only declared fields
may be read (`Fields(..., declared=...)`), and fields the object holds but nobody declared are
refused, so the schema in docs/ARTIFACT.md (checked by a test against :data:`SCHEMA`) is the
whole of what the code reads.
"""

from __future__ import annotations

import math
import re

import numpy as np

from model.errors import ArtifactError

__all__ = ["Fields", "SCHEMA", "declare", "MAX_SIZE", "NAME_PATTERN", "type_name"]

#: Largest size (channels, positions, features, tokens...) a manifest may state: far above any
#: model on chip, small enough that no derived quantity overflows the golden model's int64.
MAX_SIZE = 1 << 24
#: Node names: an identifier with dots (``block0.q``); they become parts of Verilog names.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_0-9]+)*\Z")
#: {section: {field: one-line description}}: every field the code reads (docs/ARTIFACT.md).
SCHEMA: dict[str, dict[str, str]] = {}

_MISSING = object()


def declare(section: str, fields: dict[str, str]) -> tuple[str, ...]:
    """Register the fields of a manifest section (a node op, ``model``...); returns their names."""
    SCHEMA.setdefault(section, {}).update(fields)
    return tuple(fields)


def type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(value),
                                                                          type(value).__name__)


class Fields:
    """One JSON object of the manifest, at `where` (e.g. ``node stem0``), with the fields of
    `section` (:data:`SCHEMA`) and no others."""

    def __init__(self, data, where: str, section: str, *, extra: tuple[str, ...] = ()):
        if not isinstance(data, dict):
            raise ArtifactError(f"{where} must be a JSON object, not {type_name(data)}")
        self.data, self.where, self.section = data, where, section
        self.allowed = set(SCHEMA.get(section, {})) | set(extra)
        unknown = sorted(str(k) for k in data if k not in self.allowed)
        if unknown:
            raise ArtifactError(f"{where}: unknown field {unknown[0]!r} (this stforge reads "
                                f"{', '.join(sorted(self.allowed))})")

    def fail(self, message: str):
        raise ArtifactError(f"{self.where}: {message}")

    def get(self, key: str, default=_MISSING):
        assert key in self.allowed, f"{key!r} is not a declared field of {self.section}"
        if key not in self.data:
            if default is _MISSING:
                self.fail(f"missing field {key!r}")
            return default
        return self.data[key]

    def _bad(self, key, what, value):
        text = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 40 \
            else type_name(value)
        self.fail(f"field {key!r} must be {what}, not {text}")

    def int(self, key: str, *, minimum: int = 0, maximum: int = MAX_SIZE, default=_MISSING) -> int:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or \
                not minimum <= value <= maximum:
            self._bad(key, f"an integer in {minimum}..{maximum}", value)
        return value

    def number(self, key: str, *, positive: bool = False, default=_MISSING) -> float:
        value = self.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or (positive and value <= 0):
            self._bad(key, "a finite positive number" if positive else "a finite number", value)
        return float(value)

    def bool(self, key: str, default=_MISSING) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            self._bad(key, "true or false", value)
        return value

    def str(self, key: str, *, choices=None, default=_MISSING) -> str:
        value = self.get(key, default)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            self._bad(key, f"one of {', '.join(map(repr, choices))}" if choices else "a string",
                      value)
        return value

    def name(self, key: str) -> str:
        value = self.str(key)
        if len(value) > 64 or not NAME_PATTERN.match(value):
            self._bad(key, "a name of letters, digits, '_' and '.' (at most 64, not starting "
                           "with a digit)", value)
        return value

    def names(self, key: str, count: int | None = None) -> tuple[str, ...]:
        value = self.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._bad(key, "a list of names", value)
        if count is not None and len(value) != count:
            self.fail(f"field {key!r} must name {count} value{'s' if count != 1 else ''}, not "
                      f"{len(value)}")
        return tuple(value)

    def ints(self, key: str, length: int, *, minimum: int = 1) -> tuple[int, ...]:
        value = self.get(key)
        if not isinstance(value, list) or len(value) != length or any(
                isinstance(v, bool) or not isinstance(v, int) or not minimum <= v <= MAX_SIZE
                for v in value):
            self._bad(key, f"a list of {length} integers in {minimum}..{MAX_SIZE}", value)
        return tuple(value)

    def obj(self, key: str, section: str, default=_MISSING, extra=()) -> "Fields":
        value = self.get(key, default)
        return Fields(value, f"{self.where}: {key}", section, extra=extra)

    def int_map(self, key: str, *, minimum: int = 1, maximum: int = 64, default=_MISSING) -> dict:
        """An object of small integers (declared bit widths)."""
        value = self.get(key, default)
        if not isinstance(value, dict) or any(
                not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or
                not minimum <= v <= maximum for k, v in value.items()):
            self._bad(key, f"an object of integers in {minimum}..{maximum}", value)
        return dict(value)

    def array(self, key: str, arrays: dict, shape=None) -> np.ndarray:
        """The integer array this field names (an entry of the npz), of `shape` if given."""
        ref = self.get(key)
        if not isinstance(ref, str) or ref not in arrays:
            self.fail(f"field {key!r} names no array of the artifact ({ref!r})")
        a = arrays[ref]
        if shape is not None and tuple(a.shape) != tuple(shape):
            self.fail(f"{key} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        return a
