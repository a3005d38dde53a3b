"""The committed test artifacts (tests/artifacts/) are what the export makes today: the
hardware tests that read them test the real pipeline, not a stale copy."""

import numpy as np
import pytest

from accelerator_fixtures import ARTIFACTS, KINDS, LANES_KINDS, build_artifact
from tests.conftest import export_shipped
from model.ir import load_artifact
from model.ir.artifact import manifest_of


def _same(fresh, committed):
    (m1, a1), (m2, a2) = manifest_of(fresh), manifest_of(committed)
    assert m1 == m2
    assert sorted(a1) == sorted(a2)
    for name in a1:
        np.testing.assert_array_equal(a1[name], a2[name], err_msg=name)


def test_the_shipped_l1p_export(tmp_path):
    fresh, _ = export_shipped("l1p", tmp_path)
    _same(fresh, load_artifact(ARTIFACTS / "shipped-l1p.json"))


@pytest.mark.slow       # calibrates BatchNorm with a float32 forward pass: CPU-dependent rounding
@pytest.mark.parametrize("kind", KINDS + LANES_KINDS)
def test_the_tiny_kinds(kind, tmp_path):
    _same(build_artifact(kind, tmp_path), load_artifact(ARTIFACTS / f"{kind}.json"))
