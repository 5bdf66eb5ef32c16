"""ONNX importer: float32 `.onnx` graphs (NCHW) into the layer dialect (NHWC).

Reads the protobuf with the `onnx` package (onnxruntime is not needed). Convolutions, pooling and
the other spatial ops of an NCHW graph work on channels-last data in the dialect: every value keeps
its ONNX shape plus the permutation that gives its dialect layout, so a Transpose between NCHW and
NHWC costs nothing and disappears. A Flatten/Reshape of channels-last data to a row is fed to the
next Gemm/MatMul with that layer's weight columns permuted to the NHWC element order.

    module = load("mnist-8.onnx")   # %Input3 = layer.input : tensor<1x28x28x1xf32>, conv2d, ...

Layout of the compiled model: a rank-4 (NCHW) input is NHWC in the dialect, and so is a rank-3
input that reaches a convolution or pooling (NCW -> NWC); an input that the graph itself transposes
from NHWC stays NHWC, and other inputs keep their shape. Spatial outputs are channels-last too.
Nodes whose inputs are all constants (shape arithmetic, weight reshapes) are folded;
an Add/Sub/Mul of a constant per-channel vector is folded into the producing layer's bias when
legal and otherwise becomes an exact per-channel affine batch_norm. Anything else is refused
with a located one-line error naming the node.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module, Value
from ml4f.compiler.types import TensorType, f32

Progress = Callable[[str, int, int], None]


_SPATIAL_OPS = {"Conv", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}


def _chlast(rank: int) -> tuple[int, ...]:
    """The permutation NC... -> N...C (dialect axis i holds ONNX axis perm[i])."""
    return (0, *range(2, rank), 1)


@dataclass
class _V:
    """A computed ONNX tensor: the dialect value, the ONNX shape, and `perm` with
    dialect_tensor = onnx_tensor.transpose(perm). `order` is set for a rank-2 row holding the
    ONNX elements in a permuted order (dialect element j = ONNX element order[j])."""

    value: Value
    shape: tuple[int, ...]
    perm: tuple[int, ...]
    order: np.ndarray | None = None

    @property
    def identity(self) -> bool:
        return self.perm == tuple(range(len(self.shape))) and self.order is None


def load(path: str, progress: Progress | None = None) -> Module:
    """Import an `.onnx` file; `progress(description, done, total)` is called as nodes are converted."""
    import onnx
    from google.protobuf.message import DecodeError

    if os.path.isdir(path):
        raise CompileError("is a directory, not an .onnx file", Loc(path))
    if not os.path.exists(path):
        raise CompileError("no such file", Loc(path))
    try:
        proto = onnx.load(path)  # also reads weights kept in external data files beside it
    except (DecodeError, ValueError, RuntimeError) as e:
        raise CompileError(f"not a valid ONNX model (the protobuf does not parse: {e})", Loc(path)) from None
    except OSError as e:
        raise CompileError(f"cannot read the model's external data: {e}", Loc(path)) from None
    if not proto.graph.node:
        raise CompileError("not an ONNX model with a graph (no nodes; wrong format or truncated file?)",
                           Loc(path))
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in os.path.basename(path).rsplit(".", 1)[0])
    return _Importer(proto, path, name or "model", progress).run()


class _Importer:
    def __init__(self, proto: Any, path: str, name: str, progress: Progress | None):
        import onnx
        from onnx import numpy_helper

        self.onnx = onnx
        self.numpy_helper = numpy_helper
        self.proto = proto
        self.graph = proto.graph
        self.path = path
        self.progress = progress
        self.opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.b = ModelBuilder(name, file=path)
        self.consts: dict[str, np.ndarray] = {}
        self.vals: dict[str, _V] = {}
        self.uses: dict[str, int] = {}
        self.producer_of: dict[int, str] = {}  # id(dialect value) -> the ONNX tensor its op computes
        self.handlers: dict[str, Callable[[Any], None]] = {
            "Conv": self.conv, "Gemm": self.gemm, "MatMul": self.matmul, "MaxPool": self.pool,
            "AveragePool": self.pool, "GlobalAveragePool": self.global_pool,
            "GlobalMaxPool": self.global_pool, "BatchNormalization": self.batch_norm,
            "Relu": self.unary, "Sigmoid": self.unary, "Tanh": self.unary, "LeakyRelu": self.unary,
            "HardSwish": self.unary, "Clip": self.clip, "Softmax": self.softmax, "Add": self.binary,
            "Sub": self.binary, "Mul": self.binary, "Concat": self.concat, "Reshape": self.reshape,
            "Flatten": self.flatten, "Pad": self.pad, "Transpose": self.transpose,
            "Identity": self.identity, "Dropout": self.identity,
        }
        # Nodes whose inputs are all constants are evaluated here (shape arithmetic, weight reshapes).
        self.folders: dict[str, Callable[[Any, list[np.ndarray]], np.ndarray]] = {
            "Constant": self.fold_constant, "Identity": lambda n, a: a[0], "Cast": self.fold_cast,
            "Reshape": self.fold_reshape, "Transpose": self.fold_transpose, "Flatten": self.fold_flatten,
            "Squeeze": self.fold_squeeze, "Unsqueeze": self.fold_unsqueeze, "Concat": self.fold_concat,
            "Add": lambda n, a: a[0] + a[1], "Sub": lambda n, a: a[0] - a[1],
            "Mul": lambda n, a: a[0] * a[1], "Div": self.fold_div, "Gather": self.fold_gather,
            "Shape": lambda n, a: np.array(a[0].shape, np.int64), "Sqrt": lambda n, a: np.sqrt(a[0]),
        }

    # ------------------------------------------------------------------ driver

    def run(self) -> Module:
        g = self.graph
        for init in g.initializer:
            try:
                self.consts[init.name] = self.numpy_helper.to_array(init)
            except Exception as e:  # noqa: BLE001 - onnx raises several kinds for broken data
                raise CompileError(f"cannot read initializer '{init.name}' ({e}); truncated file?",
                                   Loc(self.path, layer=init.name)) from None
        for node in g.node:
            for i in node.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        self._check_supported()
        inputs = [i for i in g.input if i.name not in self.consts]
        if not inputs:
            raise CompileError("the graph has no (non-constant) inputs", Loc(self.path))
        for i in inputs:
            self._input(i)
        n = len(g.node)
        for k, node in enumerate(g.node):
            self._node(node, k)
            if self.progress is not None:
                self.progress("converting nodes", k + 1, n)
        outs = []
        for o in g.output:
            v = self.vals.get(o.name)
            where = Loc(self.path, layer=o.name)
            if v is None:
                raise CompileError(f"graph output '{o.name}' is a constant or not computed", where)
            if v.order is not None:
                raise CompileError(f"graph output '{o.name}' is a flattened NCHW tensor whose element order "
                                   "differs in the NHWC dialect; end the graph with a Gemm/MatMul after the "
                                   "flatten, or flatten NHWC data", where)
            outs.append(v.value)
        self.b.output(*outs)
        return self.b.finish()

    def _check_supported(self) -> None:
        bad: dict[str, list[str]] = {}
        for node in self.graph.node:
            if node.domain not in ("", "ai.onnx"):
                bad.setdefault(f"{node.domain}.{node.op_type}", []).append(node.name or node.output[0])
            elif node.op_type not in self.handlers and node.op_type not in self.folders:
                bad.setdefault(node.op_type, []).append(node.name or node.output[0])
        if bad:
            listed = ", ".join(f"{op} (node {', '.join(repr(n) for n in names[:3])}"
                               f"{', ...' if len(names) > 3 else ''})" for op, names in bad.items())
            folded = ", ".join(sorted(set(self.folders) - set(self.handlers)))
            raise CompileError(f"unsupported ONNX operator{'s' if len(bad) > 1 else ''}: {listed}; "
                               f"supported: {', '.join(sorted(self.handlers))} (and constant folding of "
                               f"{folded})", Loc(self.path))

    def _input(self, i: Any) -> None:
        tt = i.type.tensor_type
        where = Loc(self.path, layer=i.name)
        if tt.elem_type != self.onnx.TensorProto.FLOAT:
            raise CompileError(f"input '{i.name}' has element type "
                               f"{self.onnx.TensorProto.DataType.Name(tt.elem_type)}; only float32 is "
                               "supported", where)
        dims = []
        for k, d in enumerate(tt.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(d.dim_value)
            elif k == 0:
                dims.append(1)  # a symbolic batch dimension: the dialect runs batch 1
            else:
                raise CompileError(f"input '{i.name}' has a dynamic dimension {k} "
                                   f"('{d.dim_param or '?'}'); only static shapes are supported", where)
        shape = tuple(dims)
        if not shape or shape[0] != 1:
            raise CompileError(f"input '{i.name}' has shape {list(shape)}; the batch size must be 1", where)
        rank = len(shape)
        perm = tuple(range(rank))
        if rank in (3, 4):
            consumers = [n for n in self.graph.node if i.name in n.input]
            to_nchw = (0, rank - 1, *range(1, rank - 1))
            nhwc_input = consumers and all(n.op_type == "Transpose" and
                                           tuple(self.attrs(n).get("perm", ())) == to_nchw for n in consumers)
            # Rank 4 is NCHW image data in ONNX; rank 3 is NCW only when a convolution or pooling
            # reads it (else it is a sequence [1, T, F]).
            if not nhwc_input and (rank == 4 or self.feeds_spatial(i.name)):
                perm = _chlast(rank)
        ir_shape = tuple(shape[p] for p in perm)
        self.vals[i.name] = _V(self.b.input(ir_shape, f32, name=i.name), shape, perm)

    def feeds_spatial(self, name: str) -> bool:
        """Whether tensor `name` reaches a convolution or pooling through layout-neutral nodes, so
        that its axis 1 holds channels (NCW/NCHW data)."""
        neutral = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish", "Clip", "Add", "Sub", "Mul",
                   "BatchNormalization", "Pad", "Identity", "Dropout", "Concat"}
        todo, seen = [name], {name}
        while todo:
            cur = todo.pop()
            for n in self.graph.node:
                if cur not in n.input:
                    continue
                if n.op_type in _SPATIAL_OPS:
                    return True
                if n.op_type in neutral and n.output and n.output[0] not in seen:
                    seen.add(n.output[0])
                    todo.append(n.output[0])
        return False

    def _node(self, node: Any, k: int) -> None:
        self.node = node
        self.where = Loc(self.path, layer=node.name or node.output[0])
        self.what = f"node #{k} {node.op_type}" + (f" '{node.name}'" if node.name else "")
        ins = [i for i in node.input]
        if node.op_type in self.folders and all(i == "" or i in self.consts for i in ins):
            args = [self.consts[i] if i else None for i in ins]
            try:
                self.consts[node.output[0]] = np.asarray(self.folders[node.op_type](node, args))
            except (ValueError, IndexError, TypeError) as e:
                self.fail(f"cannot be evaluated on its constant inputs ({e})")
            return
        if node.op_type not in self.handlers:
            self.fail("has non-constant inputs, which this importer supports only as constant folding")
        self.handlers[node.op_type](node)

    def fail(self, message: str) -> NoReturn:
        raise CompileError(f"{self.what}: {message}", self.where)

    # ------------------------------------------------------------------ helpers

    def attrs(self, node: Any) -> dict[str, Any]:
        out = {}
        for a in node.attribute:
            v = self.onnx.helper.get_attribute_value(a)
            if isinstance(v, bytes):
                v = v.decode()
            out[a.name] = v
        return out

    def val(self, name: str) -> _V:
        if name in self.consts:
            self.fail(f"input '{name}' is a constant where a computed tensor is needed")
        if name not in self.vals:
            self.fail(f"input '{name}' is not computed by an earlier node")
        return self.vals[name]

    def const(self, node: Any, k: int, what: str, optional: bool = False) -> np.ndarray | None:
        if k >= len(node.input) or node.input[k] == "":
            if optional:
                return None
            self.fail(f"needs {what} (input {k})")
        name = node.input[k]
        if name not in self.consts:
            self.fail(f"{what} '{name}' must be a constant (an initializer)")
        return self.consts[name]

    def emit(self, cls: type, operands: list[Value], out: str, shape: tuple[int, ...],
             perm: tuple[int, ...], order: np.ndarray | None = None, **attrs: Any) -> _V:
        v = self.b.add(cls, *operands, name=out, **attrs)
        expect = tuple(shape[p] for p in perm)
        if tuple(v.type.shape) != expect:
            self.fail(f"computes shape {list(v.type.shape)} in NHWC, expected {list(expect)}")
        r = _V(v, shape, perm, order)
        self.vals[out] = r
        self.producer_of[id(v)] = out
        return r

    def weights(self, name: str, data: np.ndarray) -> Any:
        return self.b.weights(name, np.ascontiguousarray(data, dtype=np.float32))

    def spatial_input(self, x: _V, what: str) -> int:
        """The number of spatial axes of NCHW/NCW data in channels-last layout."""
        rank = len(x.shape)
        if rank not in (3, 4) or x.perm != _chlast(rank):
            self.fail(f"{what} needs NCW/NCHW data; got shape {list(x.shape)} in a layout the importer "
                      "cannot map to channels-last")
        return rank - 2

    def explicit_pads(self, a: dict[str, Any], in_sp: tuple[int, ...], k: tuple[int, ...],
                      s: tuple[int, ...], d: tuple[int, ...]) -> list[tuple[int, int]]:
        """[(before, after)] per spatial axis from `pads` or `auto_pad`."""
        n = len(in_sp)
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for size, kk, ss, dd in zip(in_sp, k, s, d):
                o = -(-size // ss)
                total = max((o - 1) * ss + (kk - 1) * dd + 1 - size, 0)
                small = total // 2
                out.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
            return out
        if auto == "VALID":
            return [(0, 0)] * n
        if auto != "NOTSET":
            self.fail(f"auto_pad '{auto}' is not supported")
        pads = list(a.get("pads", [0] * (2 * n)))
        return [(pads[i], pads[i + n]) for i in range(n)]

    def padding_mode(self, pads: list[tuple[int, int]], in_sp: tuple[int, ...], k: tuple[int, ...],
                     s: tuple[int, ...], d: tuple[int, ...]) -> str | None:
        """'valid' or 'same' when the pads are exactly those, else None."""
        from ml4f.dialects.layer import same_pad_before

        if all(p == (0, 0) for p in pads):
            return "valid"
        same = []
        for size, kk, ss, dd in zip(in_sp, k, s, d):
            o = -(-size // ss)
            total = max((o - 1) * ss + (kk - 1) * dd + 1 - size, 0)
            before = same_pad_before(size, kk, ss, dd)
            same.append((before, total - before))
        return "same" if pads == same else None

    def zero_pad(self, x: _V, pads: list[tuple[int, int]], out: str) -> _V:
        from ml4f.dialects import layer

        ir_pads = [[0, 0], *[list(p) for p in pads], [0, 0]]
        shape = (x.shape[0], x.shape[1], *[n + a + b for n, (a, b) in zip(x.shape[2:], pads)])
        return self.emit(layer.ZeroPad, [x.value], f"{out}/pad", shape, x.perm, pads=ir_pads)

    # ------------------------------------------------------------------ layers

    def conv(self, node: Any) -> None:
        from ml4f.dialects import layer

        a = self.attrs(node)
        x = self.val(node.input[0])
        n = self.spatial_input(x, "Conv")
        w = self.const(node, 1, "the weight").astype(np.float32)
        bias = self.const(node, 2, "the bias", optional=True)
        cout, cin_g = w.shape[0], w.shape[1]
        k = tuple(w.shape[2:])
        s = tuple(a.get("strides", [1] * n))
        d = tuple(a.get("dilations", [1] * n))
        group = a.get("group", 1)
        cin = x.shape[1]
        in_sp = tuple(x.shape[2:])
        pads = self.explicit_pads(a, in_sp, k, s, d)
        mode = self.padding_mode(pads, in_sp, k, s, d)
        if mode is None:
            x = self.zero_pad(x, pads, node.output[0])
            in_sp, mode = tuple(x.shape[2:]), "valid"
        out = node.output[0]
        o_sp = tuple((size - ((kk - 1) * dd + 1)) // ss + 1 if mode == "valid" else -(-size // ss)
                     for size, kk, ss, dd in zip(in_sp, k, s, d))
        shape = (1, cout, *o_sp)
        attrs: dict[str, Any] = {"strides": list(s), "padding": mode, "dilation": list(d)}
        if bias is not None:
            attrs["bias"] = self.weights(f"{out}.bias", bias.reshape(-1))
        if group == 1:
            if cin_g != cin:
                self.fail(f"weight {list(w.shape)} does not match {cin} input channels")
            kernel = w.transpose(0, *range(2, n + 2), 1)  # [O, I, *K] -> [O, *K, I]
            cls = layer.Conv2D if n == 2 else layer.Conv1D
        elif group == cin and cin_g == 1 and cout % cin == 0:
            kernel = w.reshape(cout, *k).transpose(*range(1, n + 1), 0)  # [C*M, 1, *K] -> [*K, C*M]
            attrs["depth_multiplier"] = cout // cin
            cls = layer.DepthwiseConv2D if n == 2 else layer.DepthwiseConv1D
        else:
            self.fail(f"group = {group} with {cin} input channels is not supported (only 1, or depthwise "
                      "with group = input channels)")
        self.emit(cls, [x.value], out, shape, x.perm, kernel=self.weights(f"{out}.kernel", kernel), **attrs)

    def _dense(self, node: Any, x: _V, kernel: np.ndarray, bias: np.ndarray | None) -> None:
        """y = x @ kernel.T + bias with kernel [O, I] in ONNX element order."""
        from ml4f.dialects import layer

        if x.perm != tuple(range(len(x.shape))):
            self.fail(f"input of shape {list(x.shape)} is channels-last in the dialect; flatten it first")
        if x.order is not None:
            kernel = kernel[:, x.order]  # the dialect's row holds ONNX element order[j] at j
        out = node.output[0]
        attrs: dict[str, Any] = {}
        if bias is not None:
            attrs["bias"] = self.weights(f"{out}.bias", np.broadcast_to(bias.reshape(-1), (kernel.shape[0],)))
        shape = (*x.shape[:-1], kernel.shape[0])
        self.emit(layer.Dense, [x.value], out, shape, tuple(range(len(shape))),
                  kernel=self.weights(f"{out}.kernel", kernel), **attrs)

    def gemm(self, node: Any) -> None:
        a = self.attrs(node)
        x = self.val(node.input[0])
        if a.get("transA", 0):
            self.fail("transA = 1 is not supported")
        if len(x.shape) != 2:
            self.fail(f"input A must be a matrix, got shape {list(x.shape)}")
        w = self.const(node, 1, "B").astype(np.float32)
        kernel = (w if a.get("transB", 0) else w.T) * np.float32(a.get("alpha", 1.0))
        c = self.const(node, 2, "C", optional=True)
        bias = None
        if c is not None:
            if c.size not in (1, kernel.shape[0]):
                self.fail(f"C of shape {list(c.shape)} is not a scalar or a vector of {kernel.shape[0]}")
            bias = np.broadcast_to(c.astype(np.float32).reshape(-1), (kernel.shape[0],)) * np.float32(
                a.get("beta", 1.0))
        self._dense(node, x, np.ascontiguousarray(kernel), bias)

    def matmul(self, node: Any) -> None:
        x = self.val(node.input[0])
        w = self.const(node, 1, "the second operand")
        if w.ndim != 2:
            self.fail(f"the constant operand must be a matrix, got shape {list(w.shape)}")
        if x.shape[-1] != w.shape[0]:
            self.fail(f"cannot multiply {list(x.shape)} by {list(w.shape)}")
        self._dense(node, x, np.ascontiguousarray(w.astype(np.float32).T), None)

    def pool(self, node: Any) -> None:
        from ml4f.dialects import layer

        a = self.attrs(node)
        x = self.val(node.input[0])
        n = self.spatial_input(x, node.op_type)
        if len(node.output) > 1 and node.output[1]:
            self.fail("the Indices output is not supported")
        if a.get("ceil_mode", 0):
            self.fail("ceil_mode = 1 is not supported")
        if any(dd != 1 for dd in a.get("dilations", [1] * n)):
            self.fail("dilations are not supported for pooling")
        k = tuple(a["kernel_shape"])
        s = tuple(a.get("strides", [1] * n))
        in_sp = tuple(x.shape[2:])
        pads = self.explicit_pads(a, in_sp, k, s, (1,) * n)
        mode = self.padding_mode(pads, in_sp, k, s, (1,) * n)
        avg = node.op_type == "AveragePool"
        out = node.output[0]
        if mode == "same" and avg and a.get("count_include_pad", 0):
            mode = None  # the dialect's 'same' average excludes the padding; pad explicitly instead
        if mode is None:
            if not avg:
                self.fail(f"pads {pads} are not 'valid' or TF 'same' padding (max pooling pads with -inf)")
            if not a.get("count_include_pad", 0) and any(p != (0, 0) for p in pads):
                self.fail(f"pads {pads} with count_include_pad = 0 are only supported as TF 'same' padding")
            x = self.zero_pad(x, pads, out)
            in_sp, mode = tuple(x.shape[2:]), "valid"
        o_sp = tuple((size - kk) // ss + 1 if mode == "valid" else -(-size // ss)
                     for size, kk, ss in zip(in_sp, k, s))
        cls = {(True, 2): layer.AvgPool2D, (True, 1): layer.AvgPool1D, (False, 2): layer.MaxPool2D,
               (False, 1): layer.MaxPool1D}[(avg, n)]
        self.emit(cls, [x.value], out, (1, x.shape[1], *o_sp), x.perm, pool_size=list(k), strides=list(s),
                  padding=mode)

    def global_pool(self, node: Any) -> None:
        from ml4f.dialects import layer

        x = self.val(node.input[0])
        n = self.spatial_input(x, node.op_type)
        cls = layer.GlobalAvgPool if node.op_type == "GlobalAveragePool" else layer.GlobalMaxPool
        self.emit(cls, [x.value], node.output[0], (1, x.shape[1], *[1] * n), x.perm, keepdims=True)

    def batch_norm(self, node: Any) -> None:
        from ml4f.dialects import layer

        a = self.attrs(node)
        x = self.val(node.input[0])
        if len(x.shape) != 2:
            self.spatial_input(x, "BatchNormalization")
        if a.get("training_mode", 0):
            self.fail("training_mode = 1 is not supported")
        out = node.output[0]
        ws = {}
        for k, key in enumerate(("gamma", "beta", "mean", "variance"), start=1):
            v = self.const(node, k, key).reshape(-1)
            ws[key] = self.weights(f"{out}.{key}", v if x.order is None else v[x.order])
        self.emit(layer.BatchNorm, [x.value], out, x.shape, x.perm, x.order,
                  epsilon=float(a.get("epsilon", 1e-5)), **ws)

    def unary(self, node: Any) -> None:
        from ml4f.dialects import layer

        x = self.val(node.input[0])
        cls = {"Relu": layer.Relu, "Sigmoid": layer.Sigmoid, "Tanh": layer.Tanh, "LeakyRelu": layer.LeakyRelu,
               "HardSwish": layer.HardSwish}[node.op_type]
        attrs = {"alpha": float(self.attrs(node).get("alpha", 0.01))} if cls is layer.LeakyRelu else {}
        self.emit(cls, [x.value], node.output[0], x.shape, x.perm, x.order, **attrs)

    def clip(self, node: Any) -> None:
        from ml4f.dialects import layer

        x = self.val(node.input[0])
        a = self.attrs(node)
        if self.opset < 11:
            lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        else:
            lo_c = self.const(node, 1, "min", optional=True)
            hi_c = self.const(node, 2, "max", optional=True)
            lo = float(lo_c) if lo_c is not None else -np.inf
            hi = float(hi_c) if hi_c is not None else np.inf
        if lo == 0 and hi == 6:
            cls = layer.Relu6
        elif lo == 0 and hi == np.inf:
            cls = layer.Relu
        else:
            self.fail(f"Clip({lo}, {hi}) is not supported (only Clip(0, 6) as relu6 and Clip(0) as relu)")
        self.emit(cls, [x.value], node.output[0], x.shape, x.perm, x.order)

    def softmax(self, node: Any) -> None:
        from ml4f.dialects import layer

        x = self.val(node.input[0])
        rank = len(x.shape)
        axis = self.attrs(node).get("axis", 1 if self.opset < 13 else -1) % rank
        # Before opset 13 the softmax runs over all axes from `axis` on (coerced to 2-D).
        axes = [ax for ax in range(axis, rank) if x.shape[ax] > 1] if self.opset < 13 else [axis]
        if x.order is not None or any(ax != x.perm[-1] for ax in axes):
            self.fail(f"over axis {axis} of shape {list(x.shape)} is not the last axis in the dialect's "
                      "layout")
        self.emit(layer.Softmax, [x.value], node.output[0], x.shape, x.perm)

    def binary(self, node: Any) -> None:
        from ml4f.dialects import layer

        cls = {"Add": layer.Add, "Sub": layer.Sub, "Mul": layer.Mul}[node.op_type]
        names = list(node.input)
        if any(n in self.consts for n in names):
            self._binary_const(node, names)
            return
        xs = [self.val(n) for n in names]
        if any(v.perm != xs[0].perm or v.shape != xs[0].shape or
               (v.order is not None) != (xs[0].order is not None) or
               (v.order is not None and not np.array_equal(v.order, xs[0].order)) for v in xs):
            self.fail(f"operands of shapes {[list(v.shape) for v in xs]} must have equal shapes and layouts "
                      "(broadcasting between computed tensors is not supported)")
        self.emit(cls, [v.value for v in xs], node.output[0], xs[0].shape, xs[0].perm, xs[0].order)

    def _binary_const(self, node: Any, names: list[str]) -> None:
        """x op c with constant c per channel: fold into the producer's bias (Add/Sub after a conv or
        dense with a bias-free result used only here), else an exact per-channel affine batch_norm."""
        from ml4f.dialects import layer

        ci = 0 if names[0] in self.consts else 1
        if ci == 0 and node.op_type == "Sub":
            self.fail("with a constant first operand is not supported")
        x = self.val(names[1 - ci])
        c = self.consts[names[ci]].astype(np.float32)
        ch_axis = x.perm[-1]  # the ONNX axis that is last in the dialect
        ch = x.shape[ch_axis]
        try:
            cb = np.broadcast_to(c, np.broadcast_shapes(c.shape, x.shape))
        except ValueError:
            self.fail(f"cannot broadcast constant {list(c.shape)} to {list(x.shape)}")
        if cb.shape != x.shape:
            self.fail(f"constant {list(c.shape)} would broadcast {list(x.shape)} to a larger shape")
        vec = np.moveaxis(cb, ch_axis, -1).reshape(-1, ch)
        if not np.all(vec == vec[:1]):
            self.fail(f"constant operand '{names[ci]}' {list(c.shape)} varies along more than the "
                      "channel axis")
        vec = np.ascontiguousarray(vec[0] if x.order is None else vec[0][x.order])  # a flattened row
        out = node.output[0]
        producer = x.value.op
        foldable = (layer.Conv2D, layer.Conv1D, layer.DepthwiseConv2D, layer.DepthwiseConv1D, layer.Dense)
        if (node.op_type in ("Add", "Sub") and isinstance(producer, foldable)
                and producer.activation == "none" and self.producer_of.get(id(x.value)) == names[1 - ci]
                and self.uses.get(names[1 - ci], 0) == 1):
            old = producer.bias.array() if producer.bias is not None else np.zeros(ch, np.float32)
            delta = vec if node.op_type == "Add" else -vec
            producer.bias = self.weights(f"{out}.bias", old + delta)
            self.vals[out] = _V(x.value, x.shape, x.perm, x.order)
            return
        one, zero = np.ones(ch, np.float32), np.zeros(ch, np.float32)
        gamma, beta = {"Add": (one, vec), "Sub": (one, -vec), "Mul": (vec, zero)}[node.op_type]
        self.emit(layer.BatchNorm, [x.value], out, x.shape, x.perm, x.order,
                  gamma=self.weights(f"{out}.gamma", gamma), beta=self.weights(f"{out}.beta", beta),
                  mean=self.weights(f"{out}.mean", zero), variance=self.weights(f"{out}.variance", one),
                  epsilon=0.0)

    def concat(self, node: Any) -> None:
        from ml4f.dialects import layer

        xs = [self.val(n) for n in node.input]
        rank = len(xs[0].shape)
        axis = self.attrs(node)["axis"] % rank
        if any(v.perm != xs[0].perm or v.order is not None for v in xs):
            self.fail("operands must share one layout")
        shape = list(xs[0].shape)
        shape[axis] = sum(v.shape[axis] for v in xs)
        self.emit(layer.Concat, [v.value for v in xs], node.output[0], tuple(shape), xs[0].perm,
                  axis=xs[0].perm.index(axis))

    def _to_row(self, x: _V, out: str, shape: tuple[int, ...]) -> None:
        """Flatten to [1, N]; channels-last data gets the element order of its NCHW original."""
        from ml4f.dialects import layer

        order = None
        if x.perm != tuple(range(len(x.shape))):
            idx = np.arange(int(np.prod(x.shape))).reshape(x.shape).transpose(x.perm).reshape(-1)
            order = None if np.array_equal(idx, np.arange(idx.size)) else idx
        elif x.order is not None:
            order = x.order
        v = self.b.add(layer.Reshape, x.value, name=out, result_type=TensorType(shape, f32))
        self.vals[out] = _V(v, shape, (0, 1), order)

    def _reshape_to(self, x: _V, shape: tuple[int, ...], out: str) -> None:
        from ml4f.dialects import layer

        if int(np.prod(shape)) != int(np.prod(x.shape)):
            self.fail(f"cannot reshape {list(x.shape)} to {list(shape)}")
        if not shape or shape[0] != 1:
            self.fail(f"result shape {list(shape)} must keep batch 1 first")
        if len(shape) == 2:
            self._to_row(x, out, shape)
            return
        if x.identity:
            if len(shape) in (3, 4) and self.feeds_spatial(out):
                # NCHW data for spatial ops: channels-last is the same row-major order only when
                # the channel count or the spatial size is 1.
                if shape[1] != 1 and int(np.prod(shape[2:])) != 1:
                    self.fail(f"reshape to NCHW {list(shape)} for spatial ops needs a transpose to NHWC, "
                              "which the dialect does not have")
                perm = _chlast(len(shape))
                v = self.b.add(layer.Reshape, x.value, name=out,
                               result_type=TensorType(tuple(shape[p] for p in perm), f32))
                self.vals[out] = _V(v, shape, perm)
                return
            v = self.b.add(layer.Reshape, x.value, name=out, result_type=TensorType(shape, f32))
            self.vals[out] = _V(v, shape, tuple(range(len(shape))))
            return
        self.fail(f"reshape of channels-last data {list(x.shape)} to {list(shape)} is not supported "
                  "(only flattening to [1, N])")

    def reshape(self, node: Any) -> None:
        x = self.val(node.input[0])
        target = self.const(node, 1, "the shape").astype(np.int64).tolist()
        self._reshape_to(x, tuple(self._resolve_shape(x.shape, target, node)), node.output[0])

    def _resolve_shape(self, src: tuple[int, ...], target: list[int], node: Any) -> list[int]:
        allow_zero = self.attrs(node).get("allowzero", 0)
        out = [src[i] if d == 0 and not allow_zero and i < len(src) else d for i, d in enumerate(target)]
        if out.count(-1) > 1:
            self.fail(f"shape {target} has more than one -1")
        if -1 in out:
            known = int(np.prod([d for d in out if d != -1]))
            out[out.index(-1)] = int(np.prod(src)) // max(known, 1)
        return out

    def flatten(self, node: Any) -> None:
        x = self.val(node.input[0])
        axis = self.attrs(node).get("axis", 1) % max(len(x.shape), 1)
        shape = (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
        self._reshape_to(x, shape, node.output[0])

    def pad(self, node: Any) -> None:
        from ml4f.dialects import layer

        a = self.attrs(node)
        x = self.val(node.input[0])
        if a.get("mode", "constant") != "constant":
            self.fail(f"mode '{a['mode']}' is not supported (only constant zero padding)")
        if self.opset < 11:
            pads, value = list(a["pads"]), float(a.get("value", 0.0))
        else:
            pads = self.const(node, 1, "the pads").astype(np.int64).tolist()
            v = self.const(node, 2, "the constant value", optional=True)
            value = float(v) if v is not None else 0.0
            if len(node.input) > 3 and node.input[3]:
                self.fail("the axes input is not supported")
        if value != 0.0:
            self.fail(f"padding with {value} is not supported (only zeros)")
        rank = len(x.shape)
        if len(pads) != 2 * rank or min(pads) < 0 or x.order is not None:
            self.fail(f"pads {pads} must be {2 * rank} non-negative numbers")
        pairs = [(pads[i], pads[i + rank]) for i in range(rank)]
        shape = tuple(n + a_ + b_ for n, (a_, b_) in zip(x.shape, pairs))
        self.emit(layer.ZeroPad, [x.value], node.output[0], shape, x.perm,
                  pads=[list(pairs[p]) for p in x.perm])

    def transpose(self, node: Any) -> None:
        x = self.val(node.input[0])
        rank = len(x.shape)
        p = tuple(self.attrs(node).get("perm", tuple(reversed(range(rank)))))
        inv = [0] * rank
        for i, q in enumerate(p):
            inv[q] = i
        # dialect = old.transpose(x.perm) and new = old.transpose(p), so dialect = new.transpose(r).
        r = tuple(inv[q] for q in x.perm)
        if x.order is not None or r not in (tuple(range(rank)), _chlast(rank)):
            self.fail(f"perm {list(p)} is supported only where it converts between NCHW and NHWC")
        shape = tuple(x.shape[q] for q in p)
        self.vals[node.output[0]] = _V(x.value, shape, r)

    def identity(self, node: Any) -> None:
        self.vals[node.output[0]] = self.val(node.input[0])

    # ------------------------------------------------------------------ constant folding

    def fold_constant(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        a = node.attribute[0]
        if a.name == "value":
            return self.numpy_helper.to_array(a.t)
        return np.asarray(self.onnx.helper.get_attribute_value(a))

    def fold_cast(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        to = self.attrs(node)["to"]
        return args[0].astype(self.onnx.helper.tensor_dtype_to_np_dtype(to))

    def fold_reshape(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        shape = self._resolve_shape(args[0].shape, args[1].astype(np.int64).tolist(), node)
        return args[0].reshape(shape)

    def fold_transpose(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        p = self.attrs(node).get("perm")
        return args[0].transpose(p) if p is not None else args[0].T

    def fold_flatten(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        axis = self.attrs(node).get("axis", 1)
        x = args[0]
        return x.reshape(int(np.prod(x.shape[:axis])), -1)

    def _axes(self, node: Any, args: list[np.ndarray]) -> list[int] | None:
        if len(args) > 1 and args[1] is not None:
            return args[1].astype(np.int64).tolist()
        axes = self.attrs(node).get("axes")
        return list(axes) if axes is not None else None

    def fold_squeeze(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        axes = self._axes(node, args)
        return np.squeeze(args[0], axis=tuple(axes) if axes is not None else None)

    def fold_unsqueeze(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        x = args[0]
        axes = sorted(a % (x.ndim + len(self._axes(node, args))) for a in self._axes(node, args))
        for ax in axes:
            x = np.expand_dims(x, ax)
        return x

    def fold_concat(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(args, axis=self.attrs(node)["axis"])

    def fold_div(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        a, b = args
        if np.issubdtype(a.dtype, np.integer):
            return np.trunc(a / b).astype(a.dtype)
        return a / b

    def fold_gather(self, node: Any, args: list[np.ndarray]) -> np.ndarray:
        return np.take(args[0], args[1], axis=self.attrs(node).get("axis", 0))
