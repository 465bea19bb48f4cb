"""Channel propagation over a traced graph: which channels are tied together, and where they live.

Every tracked tensor dimension carries *atoms*: one integer id per channel. Producers (a conv's outputs) make
fresh atoms; channel-wise ops pass them on; a residual add unites its operands' atoms pairwise; a concat joins
atom lists; a flatten repeats each atom H*W times. Afterwards each union-find class of atoms is one logical
channel, and each connected set of producer blocks is one :class:`ChannelGroup`.

An untracked dimension (no atoms) is fixed: nothing along it is ever pruned. Network inputs are untracked, and
anything an op does that this module does not understand turns the atoms it touches *unprunable*.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..graph.tracing import FLOPS, SHAPE, node_module_path

__all__ = ["Atoms", "Propagation", "ParamKey", "CostItem", "DimRef", "arg", "op_label"]

ATOMS = "ato.atoms"

ParamKey = tuple[str, str]  # (module path, attribute name)


@dataclass(frozen=True)
class Atoms:
    """Channel identities along one dimension of a tensor."""

    dim: int
    ids: torch.Tensor  # LongTensor, one atom id per index along `dim`

    def __len__(self) -> int:
        return int(self.ids.numel())


@dataclass
class TensorRecord:
    """How one parameter/buffer's dimensions map to atoms (-1: a fixed position)."""

    kind: str  # "param" or "buffer"
    role: dict[int, str] = field(default_factory=dict)
    dims: dict[int, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class DimRef:
    """One factor of a cost: the kept length of a parameter dim or of a recorded activation.

    ``kind`` is "param" (``key`` is a (module, attribute) pair of ``param_dims``, ``dim`` its dimension) or
    "act" (``key`` is a key of the space's ``activations``; ``dim`` unused). ``size`` is the full length, used
    when nothing along it is tracked (an untracked dim is always kept whole).
    """

    kind: str
    key: tuple[str, str]
    dim: int
    size: int


@dataclass(frozen=True)
class CostItem:
    """MACs = unit * product of the kept lengths of ``factors``, for one op (conv, linear, matmul)."""

    node: str
    unit: int
    factors: tuple[DimRef, ...]


class Propagation:
    """Mutable state of one propagation pass; rules call its methods."""

    def __init__(self, gm: fx.GraphModule | None, prefix: str = "") -> None:
        self.gm = gm
        self.prefix = prefix  # the graph's module path inside the whole model ("" for the model itself)
        self.modules = dict(gm.named_modules()) if gm is not None else {}
        self.parent: list[int] = []
        self.reason: dict[int, str] = {}
        self.blocks: list[tuple[str, torch.Tensor]] = []  # (producer name, fresh atom ids)
        self.tensors: dict[ParamKey, TensorRecord] = {}
        self.gates: list[tuple[str, int, torch.Tensor]] = []
        self.activations: dict[tuple[str, str], torch.Tensor] = {}  # (module, "in"/"out") -> atoms (-1 fixed)
        self.costs: list[CostItem] = []
        self.const_flops = 0  # FLOPs (not MACs) of ops whose cost does not depend on masks
        self.accounted: set[str] = set()  # nodes whose FLOPs are already in const_flops or costs
        self.warned: set[tuple[str, str]] = set()
        self.call_counts: dict[str, int] = {}
        self.node: fx.Node | None = None

    # -- union-find ---------------------------------------------------------------------------------------
    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return root

    def union(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Tie atoms ``a[i]`` and ``b[i]`` for every i."""
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if ry in self.reason and rx not in self.reason:
                    self.reason[rx] = self.reason[ry]

    def union_all(self, ids: torch.Tensor) -> None:
        """Tie every atom in ``ids`` into one class."""
        if ids.numel() > 1:
            self.union(ids[:1].expand(ids.numel() - 1), ids[1:])

    def fresh(self, n: int, name: str) -> torch.Tensor:
        """``n`` new atoms forming one producer block named ``name``."""
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = torch.arange(start, start + n, dtype=torch.long)
        self.blocks.append((name, ids))
        return ids

    def fixed(self, n: int, name: str, reason: str) -> torch.Tensor:
        ids = self.fresh(n, name)
        self.mark(ids, reason)
        return ids

    def mark(self, ids: torch.Tensor | None, reason: str) -> None:
        """Make the classes of ``ids`` unprunable (the first reason given is kept)."""
        if ids is None:
            return
        for a in ids.tolist():
            self.reason.setdefault(self.find(a), reason)

    # -- reading the graph --------------------------------------------------------------------------------
    @staticmethod
    def atoms(arg: Any) -> Atoms | None:
        if isinstance(arg, fx.Node):
            value = arg.meta.get(ATOMS)
            return value if isinstance(value, Atoms) else None
        return None

    @staticmethod
    def shape(arg: Any) -> torch.Size | None:
        if isinstance(arg, fx.Node):
            s = arg.meta.get(SHAPE)
            return s if isinstance(s, torch.Size) else None
        return None

    def tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return found

    def where(self, node: fx.Node) -> str:
        path = node_module_path(node)
        if not self.prefix:
            return path
        return self.prefix if path == "<model>" else f"{self.prefix}.{path}"

    def ndim(self, arg: Any) -> int:
        s = self.shape(arg)
        return len(s) if s is not None else 0

    @staticmethod
    def first(node: fx.Node) -> Any:
        """The node's first input (positional, else the first keyword)."""
        return node.args[0] if node.args else next(iter(node.kwargs.values()))

    def module(self, node: fx.Node) -> tuple[str, nn.Module]:
        """(path, module) of a call_module node."""
        path = str(node.target)
        return path, self.modules[path]

    # -- outcomes ----------------------------------------------------------------------------------------
    def input_atoms(self, node: fx.Node) -> list[Atoms]:
        """Atoms of every tracked tensor the node reads (tuple-valued inputs included)."""
        found: list[Atoms] = []
        for n in self.tensor_args(node):
            value = n.meta.get(ATOMS)
            values = value if isinstance(value, tuple) else (value,)
            found += [a for a in values if isinstance(a, Atoms)]
        return found

    def keep(self, node: fx.Node, why: str) -> None:
        """A known op that makes every channel it reads unprunable (no warning: the reason says why)."""
        for a in self.input_atoms(node):
            self.mark(a.ids, f"{why} at {self.where(node)}")

    def unknown(self, node: fx.Node, what: str | None = None) -> None:
        """The op is not understood: every channel it touches becomes unprunable; warn once per op."""
        touched = self.input_atoms(node)
        label = what or op_label(node, self.modules)
        reason = f"used by unsupported op {label} at {self.where(node)}"
        for a in touched:
            self.mark(a.ids, reason)
        key = (label, self.where(node))
        if touched and key not in self.warned:
            self.warned.add(key)
            warnings.warn(
                f"autotrainonce: op {label} at '{self.where(node)}' is not supported by the pruning space; "
                "the channels it touches are kept (not prunable). Register a rule with "
                "autotrainonce.space.register_op_rule to prune through it.",
                stacklevel=3,
            )

    def add_const(self, node: fx.Node) -> None:
        """Count ``node``'s FLOPs as independent of the masks (once per node, whoever asks)."""
        if node.name not in self.accounted:
            self.accounted.add(node.name)
            self.const_flops += int(node.meta.get(FLOPS, 0))

    def add_cost(self, node: fx.Node, unit: int, factors: tuple[DimRef, ...]) -> None:
        """Count ``node``'s MACs as ``unit`` times the product of the kept lengths of ``factors``."""
        if node.name not in self.accounted:
            self.accounted.add(node.name)
            self.costs.append(CostItem(node.name, unit, factors))

    def absorb(self, other: Propagation) -> None:
        """Add the results of a propagation over a submodule's graph, with its paths made model-relative.

        Atom ids are shifted past this state's, so the two sets of channels stay independent.
        """
        off = len(self.parent)

        def path(p: str) -> str:
            return f"{other.prefix}.{p}" if p and other.prefix else p or other.prefix

        self.parent.extend(p + off for p in other.parent)
        self.reason.update({r + off: why for r, why in other.reason.items()})
        self.blocks += [(path(name), ids + off) for name, ids in other.blocks]
        for (mod, name), rec in other.tensors.items():
            dims = {d: ids + off for d, ids in rec.dims.items()}
            self.tensors[(path(mod), name)] = TensorRecord(rec.kind, dict(rec.role), dims)
        self.gates += [(path(mod), dim, ids + off) for mod, dim, ids in other.gates]
        for (mod, kind), ids in other.activations.items():
            self.activations[(path(mod), kind)] = torch.where(ids >= 0, ids + off, ids)
        for c in other.costs:
            refs = tuple(DimRef(r.kind, (path(r.key[0]), r.key[1]), r.dim, r.size) for r in c.factors)
            self.costs.append(CostItem(path(c.node), c.unit, refs))
        self.const_flops += other.const_flops

    def record(self, key: ParamKey, kind: str, dim: int, ids: torch.Tensor, role: str) -> None:
        """``key``'s positions along ``dim`` hold channels ``ids`` (a tensor used twice ties both uses)."""
        rec = self.tensors.setdefault(key, TensorRecord(kind))
        old = rec.dims.get(dim)
        if old is not None and old.numel() == ids.numel():
            self.union(old, ids)
            return
        if old is not None:  # two uses disagree on the length: nothing along this dim may go
            self.mark(old, f"{key[0]}.{key[1]} used with different channel counts")
            self.mark(ids, f"{key[0]}.{key[1]} used with different channel counts")
        rec.dims[dim] = ids
        rec.role[dim] = role

    def gate(self, module: str, dim: int, atoms: Atoms | None) -> None:
        if atoms is not None:
            self.gates.append((module, dim, atoms.ids))


def arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of a call, given positionally or as keyword ``name``."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def op_label(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A readable name of the op a node calls, for messages."""
    if node.op == "call_module":
        return type(modules[str(node.target)]).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    fn = getattr(target, "ato_autograd_function", None)
    if fn is not None:  # a custom autograd.Function kept as a leaf by the tracer
        return f"{fn.__qualname__}.apply (custom autograd.Function)"
    name = getattr(target, "__name__", str(target))
    mod = getattr(target, "__module__", "") or ""
    return f"{mod}.{name}" if mod and not mod.startswith("_operator") else name


Rule = Callable[[Propagation, fx.Node], Any]
