"""Helpers of the board and bitstream tests."""


def unused(top):
    """Silence Amaranth's warning about a board top built only to inspect its parameters."""
    top._MustUse__silence = True
    top.accelerator._MustUse__silence = True
    return top
