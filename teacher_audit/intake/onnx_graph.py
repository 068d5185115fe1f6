"""The ONNX graph interpreter: an ``nn.Module`` that runs a whitelisted classifier graph with torch ops.

Initializers become parameters (float) or buffers; Constant nodes become buffers; BatchNormalization
nodes with constant statistics become :class:`OnnxBatchNorm` (an ``nn.BatchNorm2d``) so that BN-statistic
hooks of data-free distillation see them. Nodes run in a topological order computed here (the graph's
own order is not trusted); only nodes needed for the first graph output are kept. Operators resolve
through :data:`teacher_audit.intake.onnx_ops.ONNX_OPS`; anything else refuses the graph.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import numpy as np
import torch
from torch import nn

from teacher_audit.errors import CorruptInput, NotAuditable
from teacher_audit.intake.onnx_ops import ONNX_OPS

MAX_NODES = 100_000
DEFAULT_DOMAINS = ("", "ai.onnx")


class OnnxBatchNorm(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` accepting any input rank >= 2 (ONNX BatchNormalization is rank-agnostic)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {input.dim()}-D")


def _to_torch(tensor_proto: Any) -> torch.Tensor:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(tensor_proto)
    if arr.dtype == object or arr.dtype.kind in "USO":
        raise NotAuditable(f"unsupported ONNX tensor type in {tensor_proto.name!r}")
    return torch.from_numpy(np.array(arr, copy=True))


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import AttributeProto, helper

    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise NotAuditable(f"unsupported ONNX construct: subgraph in {node.op_type}")
        value = helper.get_attribute_value(attr)
        if attr.type == AttributeProto.TENSOR:
            value = _to_torch(value)
        elif attr.type == AttributeProto.STRING:
            value = value.decode("utf-8", "replace")
        elif attr.type in (AttributeProto.INTS, AttributeProto.FLOATS):
            value = list(value)
        elif attr.type != AttributeProto.INT and attr.type != AttributeProto.FLOAT:
            raise NotAuditable(f"unsupported ONNX attribute {attr.name!r} of {node.op_type}")
        out[attr.name] = value
    return out


def _key(name: str) -> str:
    """A ModuleDict key for an ONNX tensor name (no dots, printable)."""
    return "bn_" + "".join(c if c.isalnum() else "_" for c in name)[:120] + f"_{zlib.crc32(name.encode()):08x}"


class OnnxModule(nn.Module):
    """Interprets an ONNX classifier graph with torch ops (see module docstring).

    Args:
        model: a loaded ``onnx.ModelProto`` with external data already resolved.
    """

    def __init__(self, model: Any):
        super().__init__()
        graph = model.graph
        self.opset = max([o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS] or [1])
        if len(graph.node) > MAX_NODES:
            raise NotAuditable(f"ONNX graph has {len(graph.node)} nodes (limit {MAX_NODES})")
        if len(graph.sparse_initializer):
            raise NotAuditable("unsupported ONNX construct: sparse initializers")
        inits = {t.name: t for t in graph.initializer}
        data_inputs = [vi.name for vi in graph.input if vi.name not in inits]
        if len(data_inputs) != 1:
            raise NotAuditable(f"ONNX graph has {len(data_inputs)} data inputs; an image classifier has one")
        if not graph.output:
            raise CorruptInput("ONNX graph has no outputs")
        self.input_name, self.output_name = data_inputs[0], graph.output[0].name
        nodes = self._live_nodes(graph, set(inits))
        unknown = sorted({f"{n.domain}:{n.op_type}" if n.domain not in DEFAULT_DOMAINS else n.op_type
                          for n in nodes if n.domain not in DEFAULT_DOMAINS or n.op_type not in ONNX_OPS})
        if unknown:
            raise NotAuditable(f"unsupported ONNX operators: {', '.join(unknown[:10])}")
        self._nodes = [(n.op_type, list(n.input), list(n.output), _attributes(n)) for n in nodes]
        self.ops = dict(Counter(n.op_type for n in nodes))
        self.bn = nn.ModuleDict()
        self._build_batchnorms(inits)
        self._prune()
        self.weights = nn.ParameterList()
        self._slots: dict[str, tuple[str, int | str]] = {}
        used = {name for _, ins, _, _ in self._nodes for name in ins} | {self.output_name}
        for k, (name, proto) in enumerate(inits.items()):
            if name not in used:
                continue
            t = _to_torch(proto)
            if t.is_floating_point():
                self.weights.append(nn.Parameter(t))
                self._slots[name] = ("p", len(self.weights) - 1)
            else:
                self.register_buffer(f"const{k}", t)
                self._slots[name] = ("b", f"const{k}")
        for idx, (op_type, _, outs, attrs) in enumerate(self._nodes):
            if op_type == "Constant":  # precomputed once, moved with the module by .to(device)
                value = ONNX_OPS.get("Constant")(self, attrs, [])[0]
                self.register_buffer(f"k{idx}", torch.as_tensor(value))
                self._slots[outs[0]] = ("b", f"k{idx}")
        self._nodes = [n for n in self._nodes if n[0] != "Constant"]
        self._bn_of_node = {idx: outs[0] for idx, (op_type, _, outs, _) in enumerate(self._nodes)
                            if op_type == "BatchNormalization" and _key(outs[0]) in self.bn}
        self._consumed = used
        self.node_index = 0
        self.num_outputs = 0  # output count of the node being run (Split without sizes needs it)

    def _live_nodes(self, graph: Any, known: set[str]) -> list[Any]:
        """Nodes needed for the first output, topologically sorted; cycles/undefined names are corrupt."""
        producer = {}
        for node in graph.node:
            for out in node.output:
                if out:
                    producer[out] = node
        needed: list[Any] = []
        seen: set[int] = set()
        stack = [graph.output[0].name]
        while stack:
            name = stack.pop()
            node = producer.get(name)
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            needed.append(node)
            stack.extend(i for i in node.input if i)
        available = set(known) | {graph.input[i].name for i in range(len(graph.input))} | {""}
        order: list[Any] = []
        pending = [n for n in graph.node if id(n) in seen]
        while pending:
            ready = [n for n in pending if all(i in available for i in n.input)]
            if not ready:
                missing = sorted({i for n in pending for i in n.input if i not in available
                                  and i not in producer})
                what = f"undefined tensor {missing[0]!r}" if missing else "a cycle"
                raise CorruptInput(f"ONNX graph is not a valid DAG: {what}")
            ready_ids = {id(n) for n in ready}
            order.extend(ready)
            available.update(o for n in ready for o in n.output)
            pending = [n for n in pending if id(n) not in ready_ids]
        if self.output_name not in available:
            raise CorruptInput(f"ONNX graph output {self.output_name!r} is never produced")
        return order

    def _build_batchnorms(self, inits: dict[str, Any]) -> None:
        """Make BatchNormalization nodes with constant statistics into ``OnnxBatchNorm`` modules.

        Exporters share identical initializers through Identity nodes, so names are resolved through
        Identity chains first. Converted nodes keep only their data input.
        """
        alias: dict[str, str] = {}
        for op_type, ins, outs, _ in self._nodes:  # topological order resolves chains in one pass
            if op_type == "Identity" and ins and (ins[0] in inits or ins[0] in alias):
                alias[outs[0]] = alias.get(ins[0], ins[0])
        for idx, (op_type, ins, outs, attrs) in enumerate(self._nodes):
            if op_type != "BatchNormalization" or len(ins) < 5:
                continue
            names = [alias.get(n, n) for n in ins[1:5]]
            if not all(n in inits for n in names):
                continue
            scale, bias, mean, var = (_to_torch(inits[n]).float() for n in names)
            if not (scale.shape == bias.shape == mean.shape == var.shape and scale.dim() == 1):
                raise CorruptInput("ONNX BatchNormalization parameters have inconsistent shapes")
            bn = OnnxBatchNorm(scale.numel(), eps=float(attrs.get("epsilon", 1e-5)))
            with torch.no_grad():
                bn.weight.copy_(scale)
                bn.bias.copy_(bias)
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
            self.bn[_key(outs[0])] = bn.eval()
            self._nodes[idx] = (op_type, ins[:1], outs, attrs)

    def _prune(self) -> None:
        """Drop nodes whose outputs nobody needs (e.g. Identity aliases absorbed by BN modules)."""
        needed = {self.output_name}
        kept = []
        for node in reversed(self._nodes):
            if any(o in needed for o in node[2]):
                kept.append(node)
                needed.update(i for i in node[1] if i)
        self._nodes = kept[::-1]

    def batchnorm(self, index: int) -> nn.Module | None:
        out = self._bn_of_node.get(index)
        return self.bn[_key(out)] if out is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        buffers = dict(self.named_buffers(recurse=False))
        env: dict[str, Any] = {self.input_name: x}
        for name, (kind, ref) in self._slots.items():
            env[name] = self.weights[ref] if kind == "p" else buffers[ref]  # type: ignore[index]
        for idx, (op_type, ins, outs, attrs) in enumerate(self._nodes):
            self.node_index, self.num_outputs = idx, len(outs)
            args = [env[name] if name else None for name in ins]
            results = ONNX_OPS.get(op_type)(self, attrs, args)
            for name, value in zip(outs, results):
                if name:
                    env[name] = value
            for name in outs[len(results):]:
                if name and name in self._consumed:
                    raise NotAuditable(f"unsupported ONNX construct: output {len(results)}+ of {op_type} is used")
        return env[self.output_name]


class BatchChunked(nn.Module):
    """Runs ``net`` on chunks of exactly ``size`` samples (padding the last), for static-batch graphs."""

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for start in range(0, x.shape[0], self.size):
            chunk = x[start:start + self.size]
            n = chunk.shape[0]
            if n < self.size:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.size - n, *chunk.shape[1:])])
            outs.append(self.net(chunk)[:n])
        return torch.cat(outs)


class ChannelsLast(nn.Module):
    """Feeds a channels-last (NHWC) graph from the NCHW tensors the rest of the tool uses."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 2, 3, 1))
