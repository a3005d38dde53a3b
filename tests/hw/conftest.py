"""Fixtures of the hardware tests."""

import pytest


@pytest.fixture(scope="module")
def l1p(shipped_l1p_path):
    """The shipped L1P model's artifact, as the IR reads it."""
    from model.ir import load_artifact
    return load_artifact(shipped_l1p_path)
