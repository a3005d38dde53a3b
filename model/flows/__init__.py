"""Orchestration: the command line (`stforge <stage>`), the benchmarks and the hardware sweep.

The top of the pipeline. It may import anything (torch, model, hw, sim); nothing imports it
(tests/test_layering.py enforces both directions of the layering).
"""
