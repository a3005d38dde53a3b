"""The exported network as a checked graph of typed nodes (model.ir.nodes).

:class:`Graph` is what every stage after the export reads: the golden runner, the cycle model,
the hardware generator, the benchmarks. Building one checks the whole manifest: every node on
its own, every node against its inputs (shapes, tokens, spikes versus counts), the model facts
against the nodes (tokens, dim, heads, depth, classes, input shape and range) and every declared
bit width against the one derived from the weights. Values are named after the node producing
them; ``"input"`` is the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from model.errors import ArtifactError
from model.ir.fields import Fields, declare
from model.ir.nodes import (MAX_WIDTH, Attention, Conv, FixedPoint, Head, Logits,
                            WORK_TERMS, NeuronNode, Node, Spatial, Tokens)

__all__ = ["ModelInfo", "Graph", "INPUT"]

#: The name of the network's input value (the image's pixels).
INPUT = "input"


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """The network-level facts of the manifest's ``model`` object."""
    timesteps: int
    tokens: int
    dim: int
    heads: int
    depth: int
    input_shape: tuple[int, int, int]
    time_varying_input: bool
    input_scale: float
    input_max: int
    num_classes: int
    residual: str = "spike"
    neuron: str = "slif"
    dataset: str = ""

    FIELDS = declare("model", {
        "timesteps": "T, time steps per inference (1..4096)",
        "tokens": "N, tokens of the encoder (positions after the stem's pooling)",
        "dim": "D, the encoder's features per token",
        "heads": "attention heads per block",
        "depth": "encoder blocks (attention nodes)",
        "input_shape": "[channels, height, width] of the input image",
        "time_varying_input": "false: one image, the same every step; true: one frame per step",
        "input_scale": "float value of one input count (the export's; documentation)",
        "input_max": "largest input count (pixel value); the pixel port's width",
        "num_classes": "classes (the head's)",
        "residual": '"spike": residuals add spike counts',
        "neuron": '"slif" or "lif" (documentation: the integers are the same rule)',
        "dataset": "the data set it was trained on (documentation)",
    })

    @classmethod
    def read(cls, f: Fields) -> "ModelInfo":
        return cls(timesteps=f.int("timesteps", minimum=1, maximum=4096),
                   tokens=f.int("tokens", minimum=1), dim=f.int("dim", minimum=1),
                   heads=f.int("heads", minimum=1), depth=f.int("depth"),
                   input_shape=f.ints("input_shape", 3),
                   time_varying_input=f.bool("time_varying_input"),
                   input_scale=f.number("input_scale", positive=True),
                   input_max=f.int("input_max", minimum=1, maximum=1 << 16),
                   num_classes=f.int("num_classes", minimum=1, maximum=256),
                   residual=f.str("residual", choices=("spike",), default="spike"),
                   neuron=f.str("neuron", choices=("slif", "lif"), default="slif"),
                   dataset=f.str("dataset", default=""))

    def write(self) -> dict:
        return {"timesteps": self.timesteps, "tokens": self.tokens, "dim": self.dim,
                "heads": self.heads, "depth": self.depth, "input_shape": list(self.input_shape),
                "time_varying_input": self.time_varying_input, "input_scale": self.input_scale,
                "input_max": self.input_max, "num_classes": self.num_classes,
                "residual": self.residual, "neuron": self.neuron, "dataset": self.dataset}


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes in execution order, checked (use :meth:`build`; artifacts: model.ir.artifact)."""
    model: ModelInfo
    fixed: FixedPoint
    nodes: tuple[Node, ...]
    source: dict = field(default_factory=dict)
    #: every value's type, and its largest count (None for the logits), filled by build()
    types: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)

    @classmethod
    def build(cls, model: ModelInfo, fixed: FixedPoint, nodes, source=None, *,
              derive: bool = False) -> "Graph":
        """Check `nodes` against each other and `model`; with `derive` the nodes' widths are
        replaced by the derived ones (the export), otherwise declared widths must hold them."""
        graph = cls(model, fixed, tuple(nodes), dict(source or {}))
        graph._check(derive)
        return graph

    # -- construction checks

    def _check(self, derive: bool) -> None:
        m = self.model
        self.types[INPUT] = Spatial(*m.input_shape)
        self.bounds[INPUT] = m.input_max
        if not self.nodes:
            raise ArtifactError("the artifact has no nodes")
        nodes = list(self.nodes)
        for i, node in enumerate(nodes):
            if node.name in self.types:
                raise ArtifactError(f"node {node.name}: the name is used twice")
            for src in node.inputs:
                if src not in self.types:
                    raise ArtifactError(f"node {node.name}: input {src!r} is not produced "
                                        f"before it")
                if isinstance(self.types[src], Logits):
                    raise ArtifactError(f"node {node.name}: input {src} is the head's logits")
            if INPUT in node.inputs and not isinstance(node, Conv):
                raise ArtifactError(f"node {node.name}: only a conv reads the input image")
            ins = [self.types[s] for s in node.inputs]
            in_bounds = [self.bounds[s] for s in node.inputs]
            self.types[node.name] = node.infer(ins, self)
            self.bounds[node.name] = node.bound(in_bounds)
            derived = node.derive_widths(in_bounds, self)
            too_wide = [k for k, bits in derived.items() if bits > MAX_WIDTH]
            if too_wide:
                raise ArtifactError(f"node {node.name}: {too_wide[0]} needs {derived[too_wide[0]]}"
                                    f" bits, more than the {MAX_WIDTH} this stforge computes with")
            if derive:
                nodes[i] = node = node.with_widths(derived)
            self._check_widths(node, derived)
        object.__setattr__(self, "nodes", tuple(nodes))
        self._check_model()

    @staticmethod
    def _check_widths(node: Node, derived: dict) -> None:
        if set(node.widths) != set(derived):
            missing = sorted(set(derived) - set(node.widths))
            extra = sorted(set(node.widths) - set(derived))
            raise ArtifactError(f"node {node.name}: widths " + (
                f"lacks {', '.join(missing)}" if missing else f"has unknown {', '.join(extra)}"))
        for key, bits in derived.items():
            if node.widths[key] < bits:
                raise ArtifactError(f"node {node.name}: declared width widths.{key} = "
                                    f"{node.widths[key]} is below the {bits} bits its weights "
                                    f"and inputs can need")

    def _check_model(self) -> None:
        m = self.model
        heads = [n for n in self.nodes if isinstance(n, Head)]
        if len(heads) != 1 or self.nodes[-1] is not heads[0]:
            raise ArtifactError("the last node, and only it, must be the head")
        if heads[0].classes != m.num_classes:
            raise ArtifactError(f"model.num_classes = {m.num_classes}, but the head has "
                                f"{heads[0].classes} classes")
        token_types = [t for name, t in self.types.items() if isinstance(t, Tokens)]
        if not token_types:
            raise ArtifactError("the graph has no token values (no to_tokens node)")
        for t in token_types:
            if t.tokens != m.tokens:
                raise ArtifactError(f"model.tokens = {m.tokens}, but a value has {t.tokens} "
                                    f"tokens")
        attention = [n for n in self.nodes if isinstance(n, Attention)]
        if len(attention) != m.depth:
            raise ArtifactError(f"model.depth = {m.depth}, but the graph has {len(attention)} "
                                f"attention nodes")
        for n in attention:
            if n.dim != m.dim or n.heads != m.heads:
                raise ArtifactError(f"node {n.name}: dim {n.dim} and heads {n.heads} differ "
                                    f"from model.dim = {m.dim}, model.heads = {m.heads}")
        if not any(INPUT in n.inputs for n in self.nodes):
            raise ArtifactError("no node reads the input image")

    def replace(self, name: str, **changes) -> "Graph":
        """A checked copy with node `name`'s fields changed (e.g. one weight edited: tests,
        what-if studies); declared widths must still hold."""
        import dataclasses
        nodes = [dataclasses.replace(n, **changes) if n.name == name else n for n in self.nodes]
        if all(n is m for n, m in zip(nodes, self.nodes)):
            raise KeyError(name)
        return Graph.build(self.model, self.fixed, nodes, self.source)

    # -- queries

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def index(self, name: str) -> int:
        return [n.name for n in self.nodes].index(name)

    @property
    def head(self) -> Head:
        return self.nodes[-1]

    @property
    def neurons(self) -> list[NeuronNode]:
        """The nodes ending in a neuron, in order: the hardware's stages, the traced nodes."""
        return [n for n in self.nodes if isinstance(n, NeuronNode)]

    @cached_property
    def value_sources(self) -> dict[str, list[str]]:
        """Each value as the multiset (list) of neuron nodes whose spikes it sums: an add and
        to_tokens cost nothing, a residual is its sources' spikes added up."""
        sources: dict[str, list[str]] = {}
        for node in self.nodes:
            if isinstance(node, NeuronNode):
                sources[node.name] = [node.name]
            elif not isinstance(node, Head):
                sources[node.name] = [s for src in node.inputs for s in sources[src]]
        return sources

    def tokens_of(self, value: str) -> int:
        """Tokens of a value (a plane's positions y * W + x)."""
        return self.types[value].tokens

    @property
    def pixel_bits(self) -> int:
        return max(1, int(self.model.input_max).bit_length())

    def value_counts(self, node_spikes: dict, image=None) -> dict[str, np.ndarray]:
        """Every value of one image as integer counts (T, tokens, features): ``"input"`` (pixels,
        positions y * W + x) and each node's but the head, from the neuron nodes' spikes
        `node_spikes` {name: (T, tokens, C)} (the golden data's) and the image's pixels."""
        T = self.model.timesteps
        out = {}
        if image is None:
            image = node_spikes.get(INPUT)
        if image is not None:
            img = np.asarray(image, dtype=np.int64)
            if not self.model.time_varying_input:
                img = np.broadcast_to(img, (T,) + img.shape)
            out[INPUT] = img.reshape(T, img.shape[1], -1).transpose(0, 2, 1)
        for name, srcs in self.value_sources.items():
            out[name] = sum(np.asarray(node_spikes[s], dtype=np.int64) for s in srcs)
        return out

    def work(self, node_spikes: dict, image=None) -> dict[str, dict[str, int]]:
        """{node: {term: operations}} of one image, for every node that does work."""
        counts = self.value_counts(node_spikes, image)
        out = {}
        for node in self.nodes:
            terms = node.work([counts[s] for s in node.inputs], self)
            if terms:
                out[node.name] = {t: int(terms.get(t, 0)) for t in WORK_TERMS}
        return out
