"""The exported integer network, torch-free (standard library and NumPy only).

    model.ir.nodes      the operations as typed, immutable node classes owning their facts
    model.ir.graph      the checked graph of nodes (`Graph`): types, bounds, widths, work
    model.ir.artifact   reading and writing artifacts (manifest + npz, with checksums)
    model.ir.golden     the golden integer semantics: a runner over the graph, golden data
    model.ir.intops     the integer rules every implementation shares (docs/INTEGER.md)
    model.ir.fields     typed reads of manifest JSON (the schema of docs/ARTIFACT.md)
    model.ir.csc        the compressed-sparse-column layout of stored matrices
    model.ir.files      atomic writes of every file a later stage reads

Everything after the export (hw/, sim/, firmware/, the benchmarks) reads models through here.
"""

from model.ir.artifact import artifact_paths, load_artifact, save_artifact
from model.ir.graph import INPUT, Graph, ModelInfo
from model.ir.nodes import (Add, Attention, Conv, FixedPoint, Head, LowRankMatMul, MatMul,
                            NeuronNode, Node, Spatial, ToTokens, Tokens)

__all__ = ["artifact_paths", "load_artifact", "save_artifact", "INPUT", "Graph", "ModelInfo",
           "Add", "Attention", "Conv", "FixedPoint", "Head", "LowRankMatMul", "MatMul",
           "NeuronNode", "Node", "Spatial", "ToTokens", "Tokens"]
