"""TFLite flatbuffer importer: float32 and full-integer int8 `.tflite` models into the layer dialect.

Reads the file with the `flatbuffers` package and the schema accessors of `tflite_schema` (no
TensorFlow). Each builtin operator of the one subgraph becomes a layer op; quantization parameters
are kept exactly (per-tensor activations, per-channel weights with their quantized dimension,
int32 bias). Weight layouts are TFLite's, which the dialect shares, except depthwise kernels
([1, KH, KW, C*M] there, [KH, KW, C*M] here).

    module = load("kws_ref_model.tflite")   # layer.model @kws_ref_model { ... }

Anything the dialect cannot express exactly (LSTM, custom ops, dynamic shapes, hybrid-quantized
weights, fused activations other than RELU/RELU6) is refused with a located one-line error.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from ml4f.compiler.builder import ModelBuilder, quant
from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module, Value
from ml4f.compiler.types import TensorType, Type, f32, i32

Progress = Callable[[str, int, int], None]

# TFLite TensorType codes -> NumPy dtypes (the ones a model of the dialect can contain).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
_DTYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 5: "string", 6: "bool",
                7: "int16", 9: "int8", 10: "float64"}
# TFLite ActivationFunctionType -> the dialect's fused activation.
_FUSED = {0: "none", 1: "relu", 3: "relu6"}
_FUSED_NAMES = {2: "RELU_N1_TO_1", 4: "TANH", 5: "SIGN_BIT"}


@dataclass
class _Tensor:
    """One TFLite tensor: its shape, type, quantization and constant data (None for activations)."""

    index: int
    name: str
    shape: tuple[int, ...]
    signature: tuple[int, ...] | None
    dtype: int
    scales: tuple[float, ...] | None
    zero_points: tuple[int, ...] | None
    axis: int
    data: np.ndarray | None

    @property
    def quantized(self) -> bool:
        return self.scales is not None


def load(path: str, progress: Progress | None = None) -> Module:
    """Import a `.tflite` file; `progress(description, done, total)` is called as operators are converted."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CompileError("no such file", Loc(path)) from None
    except IsADirectoryError:
        raise CompileError("is a directory, not a .tflite file", Loc(path)) from None
    return load_bytes(raw, path, progress)


def load_bytes(raw: bytes, path: str = "<memory>", progress: Progress | None = None,
               name: str | None = None) -> Module:
    """Import a TFLite flatbuffer held in memory (`path` names it in messages)."""
    from . import tflite_schema as fb

    if len(raw) < 8 or not fb.Model.ModelBufferHasIdentifier(raw, 0):
        raise CompileError("not a TFLite flatbuffer (no 'TFL3' identifier)", Loc(path))
    model_name = name or _model_name(path)
    try:
        return _Importer(fb, raw, path, model_name, progress).run()
    except (struct.error, IndexError, ValueError, TypeError, OverflowError) as e:
        # Offsets past the end of a truncated or corrupted buffer surface as these.
        raise CompileError(f"corrupt or truncated TFLite file ({type(e).__name__}: {e})", Loc(path)) from None


def _model_name(path: str) -> str:
    base = os.path.basename(path.rstrip("/")) or "model"
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem) or "model"


class _Importer:
    """Converts the operators of subgraph 0 in order (TFLite stores them topologically sorted)."""

    def __init__(self, fb: Any, raw: bytes, path: str, name: str, progress: Progress | None):
        self.fb = fb
        self.raw = raw
        self.path = path
        self.progress = progress
        self.model = fb.Model.GetRootAs(raw, 0)
        self.b = ModelBuilder(name, file=path)
        self.values: dict[int, Value] = {}
        self.op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        self.handlers: dict[str, Callable[[Any, list[int], list[int]], None]] = {
            "CONV_2D": self.conv2d, "DEPTHWISE_CONV_2D": self.depthwise_conv2d,
            "FULLY_CONNECTED": self.fully_connected, "AVERAGE_POOL_2D": self.pool,
            "MAX_POOL_2D": self.pool, "MEAN": self.mean, "RESHAPE": self.reshape,
            "SQUEEZE": self.reshape, "EXPAND_DIMS": self.reshape, "SOFTMAX": self.softmax,
            "ADD": self.binary, "SUB": self.binary, "MUL": self.binary,
            "CONCATENATION": self.concat, "PAD": self.pad, "RELU": self.unary, "RELU6": self.unary,
            "LOGISTIC": self.unary, "TANH": self.unary, "HARD_SWISH": self.unary,
            "LEAKY_RELU": self.unary, "QUANTIZE": self.quantize, "DEQUANTIZE": self.dequantize,
        }

    # ------------------------------------------------------------------ driver

    def run(self) -> Module:
        m = self.model
        if m.SubgraphsLength() != 1:
            raise CompileError(f"the model has {m.SubgraphsLength()} subgraphs; only models with one "
                               "subgraph (no control flow) are supported", Loc(self.path))
        sg = m.Subgraphs(0)
        self.tensors = [self._tensor(sg.Tensors(i), i) for i in range(sg.TensorsLength())]
        inputs = sg.InputsAsNumpy().tolist() if sg.InputsLength() else []
        # Dynamic inputs first: they are why a converted graph contains shape arithmetic.
        shapes = [self._static_shape(self.tensors[i], "model input") for i in inputs]
        self._check_supported(sg)
        for i, shape in zip(inputs, shapes):
            t = self.tensors[i]
            self.values[i] = self.b.input(shape, self._elem(t, "model input"), name=t.name)
        n = sg.OperatorsLength()
        for k in range(n):
            self._operator(sg.Operators(k), k)
            if self.progress is not None:
                self.progress("converting operators", k + 1, n)
        outs = sg.OutputsAsNumpy().tolist() if sg.OutputsLength() else []
        if not outs:
            raise CompileError("the model has no outputs", Loc(self.path))
        for i in outs:
            if i not in self.values:
                raise CompileError(f"model output '{self.tensors[i].name}' is not computed by any "
                                   "operator (a constant output is not supported)", Loc(self.path))
        self.b.output(*[self.values[i] for i in outs])
        return self.b.finish()

    def _opname(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        c = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if c == self.fb.BuiltinOperator.CUSTOM:
            return "custom op " + (code.CustomCode() or b"?").decode(errors="replace")
        return self.op_names.get(c, f"builtin operator {c}")

    def _check_supported(self, sg: Any) -> None:
        """Name every unsupported operator at once, before converting anything."""
        bad: dict[str, list[int]] = {}
        for k in range(sg.OperatorsLength()):
            name = self._opname(sg.Operators(k))
            if name not in self.handlers:
                bad.setdefault(name, []).append(k)
        if bad:
            listed = ", ".join(f"{n} (operator #{', #'.join(map(str, ks))})" for n, ks in bad.items())
            raise CompileError(f"unsupported TFLite operator{'s' if len(bad) > 1 else ''}: {listed}; "
                               f"{self._supported()}", Loc(self.path))

    def _operator(self, op: Any, k: int) -> None:
        opname = self._opname(op)
        ins = op.InputsAsNumpy().tolist() if op.InputsLength() else []
        outs = op.OutputsAsNumpy().tolist() if op.OutputsLength() else []
        first_out = self.tensors[outs[0]].name if outs else None
        self.where = Loc(self.path, layer=first_out)
        self.what = f"operator #{k} {opname}"
        handler = self.handlers[opname]
        if len(outs) != 1:
            self.fail(f"has {len(outs)} outputs; expected 1")
        self.op = op
        self.opname = opname
        handler(op, ins, outs)

    def _supported(self) -> str:
        return "supported: " + ", ".join(sorted(self.handlers))

    def fail(self, message: str) -> NoReturn:
        raise CompileError(f"{self.what}: {message}", self.where)

    # ------------------------------------------------------------------ tensors

    def _tensor(self, t: Any, i: int) -> _Tensor:
        # Converted models fuse the names of every TF op merged into a tensor with ';': keep the first.
        name = (t.Name() or b"").decode(errors="replace").split(";")[0] or f"tensor_{i}"
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        sig = tuple(int(d) for d in t.ShapeSignatureAsNumpy()) if t.ShapeSignatureLength() else None
        scales = zps = None
        axis = 0
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            scales = tuple(float(s) for s in q.ScaleAsNumpy())
            zps = tuple(int(z) for z in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else (0,) * len(scales)
            axis = q.QuantizedDimension()
        data = None
        if t.Buffer() > 0 and t.Buffer() >= self.model.BuffersLength():
            raise ValueError(f"tensor '{name}' refers to buffer {t.Buffer()} of {self.model.BuffersLength()}")
        buf = self.model.Buffers(t.Buffer()) if t.Buffer() > 0 else None
        if buf is not None:
            if buf.Offset() > 1:  # large models keep buffers after the flatbuffer
                chunk = self.raw[buf.Offset():buf.Offset() + buf.Size()]
                if len(chunk) != buf.Size():
                    raise ValueError(f"buffer of tensor '{name}' extends past the end of the file")
                data = np.frombuffer(chunk, dtype=np.uint8)
            elif buf.DataLength():
                data = buf.DataAsNumpy()
        if data is not None:
            if t.Sparsity() is not None:
                raise CompileError(f"constant tensor '{name}' is stored sparse, which is not supported",
                                   Loc(self.path, layer=name))
            dt = t.Type()
            if dt not in _DTYPES:
                raise CompileError(f"constant tensor '{name}' has unsupported type "
                                   f"{_DTYPE_NAMES.get(dt, dt)}", Loc(self.path, layer=name))
            dtype = np.dtype(_DTYPES[dt]).newbyteorder("<")
            count = int(np.prod(shape, dtype=np.int64))
            if data.nbytes != count * dtype.itemsize:
                raise ValueError(f"constant tensor '{name}' holds {data.nbytes} bytes, its shape "
                                 f"{list(shape)} needs {count * dtype.itemsize}")
            data = np.frombuffer(data.tobytes(), dtype=dtype).astype(dtype.newbyteorder("=")).reshape(shape)
        return _Tensor(i, name, shape, sig, t.Type(), scales, zps, axis, data)

    def _static_shape(self, t: _Tensor, what: str) -> tuple[int, ...]:
        sig = t.signature
        if sig is not None and any(d < 0 for d in sig[1:]):
            raise CompileError(f"{what} '{t.name}' has a dynamic shape {list(sig)}; only static shapes "
                               "are supported (convert with fixed input sizes)", Loc(self.path, layer=t.name))
        if not t.shape or t.shape[0] != 1:
            raise CompileError(f"{what} '{t.name}' has shape {list(t.shape)}; the batch size must be 1 "
                               "(convert with a fixed batch of 1)", Loc(self.path, layer=t.name))
        return t.shape

    def _elem(self, t: _Tensor, what: str) -> Type:
        """The element type of an activation tensor: f32, or int8 with per-tensor quantization."""
        if t.dtype == 0:
            return f32
        if t.dtype == 9 and t.quantized:
            if len(t.scales) != 1:
                raise CompileError(f"{what} '{t.name}' has per-channel quantization; activations must "
                                   "be quantized per tensor", Loc(self.path, layer=t.name))
            return quant(t.scales[0], t.zero_points[0])
        raise CompileError(f"{what} '{t.name}' has type {_DTYPE_NAMES.get(t.dtype, t.dtype)}; supported: "
                           "float32, and int8 with quantization parameters", Loc(self.path, layer=t.name))

    def value(self, i: int) -> Value:
        """The IR value of an activation input of the current operator."""
        if i < 0:
            self.fail("has an omitted input where a tensor is required")
        if i not in self.values:
            t = self.tensors[i]
            if t.data is not None:
                self.fail(f"has a constant input '{t.name}' where this importer needs a computed tensor")
            self.fail(f"reads tensor '{t.name}', which no earlier operator computes")
        return self.values[i]

    def const(self, i: int, what: str) -> _Tensor:
        if i < 0 or self.tensors[i].data is None:
            self.fail(f"{what} must be a constant tensor")
        return self.tensors[i]

    def emit(self, cls: type, operands: list[Value], out: int, **attrs: Any) -> Value:
        """Append a layer op producing tensor `out` and check its shape against TFLite's."""
        t = self.tensors[out]
        elem = self._elem(t, "output")
        in_quant = any(isinstance(v.type, TensorType) and v.type.quant is not None for v in operands)
        if in_quant != (elem != f32) and cls.__name__ not in ("Quantize", "Dequantize"):
            self.fail("mixes float and int8 tensors; only float32 or full-integer int8 models are supported")
        kw: dict[str, Any] = {"out_elem": elem} if elem != f32 else {}
        v = self.b.add(cls, *operands, name=t.name, **kw, **attrs)
        if tuple(v.type.shape) != t.shape:
            self.fail(f"computes shape {list(v.type.shape)} but the model says {list(t.shape)}")
        self.values[out] = v
        return v

    def fused(self, op_options: Any) -> str:
        f = op_options.FusedActivationFunction()
        if f not in _FUSED:
            self.fail(f"fused activation {_FUSED_NAMES.get(f, f)} is not supported (supported: NONE, RELU, "
                      "RELU6)")
        return _FUSED[f]

    def options(self, cls: Any) -> Any:
        table = self.op.BuiltinOptions()
        if table is None:
            return None
        o = cls()
        o.Init(table.Bytes, table.Pos)
        return o

    def weights(self, t: _Tensor, data: np.ndarray, axis_map: Callable[[int], int] | None = None) -> Any:
        """A weight resource keeping the tensor's (per-channel) quantization."""
        name = t.name
        if t.dtype == 0 or t.dtype == 1:  # float16 weights stay f16 (the dialect widens them exactly)
            return self.b.weights(name, data.astype(np.float32 if t.dtype == 0 else np.float16))
        if t.dtype == 9 and t.quantized:
            if len(t.scales) == 1:
                elem = quant(t.scales[0], t.zero_points[0])
            else:
                axis = axis_map(t.axis) if axis_map else t.axis
                elem = quant(list(t.scales), list(t.zero_points), axis=axis)
            return self.b.weights(name, data, elem)
        if t.dtype == 2:
            return self.b.weights(name, data, i32)
        self.fail(f"weights '{name}' have type {_DTYPE_NAMES.get(t.dtype, t.dtype)}; supported: float32, "
                  "int8 (quantized), int32 bias")

    def check_weights(self, x: Value, w: _Tensor) -> None:
        float_in = not (isinstance(x.type, TensorType) and x.type.quant is not None)
        if float_in and w.dtype not in (0, 1):
            self.fail(f"has float input and {_DTYPE_NAMES.get(w.dtype, w.dtype)} weights '{w.name}' "
                      "(hybrid / dynamic-range quantization); use a float32 or full-integer int8 model")
        if not float_in and not (w.dtype == 9 and w.quantized):
            self.fail(f"has int8 input but weights '{w.name}' are {_DTYPE_NAMES.get(w.dtype, w.dtype)}")

    def bias(self, ins: list[int]) -> Any:
        if len(ins) < 3 or ins[2] < 0:
            return None
        t = self.const(ins[2], "the bias")
        return self.weights(t, t.data.reshape(-1))

    # ------------------------------------------------------------------ operators

    def _padding(self, code: int) -> str:
        return "same" if code == self.fb.Padding.SAME else "valid"

    def conv2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        o = self.options(self.fb.Conv2DOptions)
        x = self.value(ins[0])
        w = self.const(ins[1], "the filter")
        self.check_weights(x, w)
        if w.data.ndim != 4 or w.shape[3] != x.type.shape[-1]:
            self.fail(f"filter {list(w.shape)} does not match {x.type.shape[-1]} input channels "
                      "(grouped convolution is not supported)")
        self.emit(layer.Conv2D, [x], outs[0], kernel=self.weights(w, w.data), bias=self.bias(ins),
                  strides=[o.StrideH(), o.StrideW()], padding=self._padding(o.Padding()),
                  dilation=[o.DilationHFactor(), o.DilationWFactor()], activation=self.fused(o))

    def depthwise_conv2d(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        o = self.options(self.fb.DepthwiseConv2DOptions)
        x = self.value(ins[0])
        w = self.const(ins[1], "the filter")
        self.check_weights(x, w)
        cin = x.type.shape[-1]
        if w.data.ndim != 4 or w.shape[0] != 1 or w.shape[3] % cin:
            self.fail(f"filter {list(w.shape)} is not [1, KH, KW, C*M] for {cin} input channels")
        # [1, KH, KW, C*M] -> [KH, KW, C*M]: the channel axis moves from 3 to 2.
        kernel = self.weights(w, w.data.reshape(w.shape[1:]), axis_map=lambda a: a - 1)
        self.emit(layer.DepthwiseConv2D, [x], outs[0], kernel=kernel, bias=self.bias(ins),
                  strides=[o.StrideH(), o.StrideW()], padding=self._padding(o.Padding()),
                  dilation=[o.DilationHFactor(), o.DilationWFactor()], depth_multiplier=w.shape[3] // cin,
                  activation=self.fused(o))

    def fully_connected(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        o = self.options(self.fb.FullyConnectedOptions)
        if o is not None and o.WeightsFormat() != 0:
            self.fail("shuffled weight formats are not supported")
        x = self.value(ins[0])
        w = self.const(ins[1], "the weights")
        self.check_weights(x, w)
        if w.data.ndim != 2:
            self.fail(f"weights {list(w.shape)} are not [O, I]")
        n_in = w.shape[1]
        keep = o is not None and o.KeepNumDims()
        if x.type.shape[-1] != n_in:
            self.fail(f"input {list(x.type.shape)} does not end in the weights' {n_in} inputs")
        if not keep and x.type.rank != 2:
            # TFLite flattens the input to [-1, I]; with batch 1 that is one row when sizes agree.
            if x.type.size != n_in:
                self.fail(f"input {list(x.type.shape)} would be flattened to several rows of {n_in}; "
                          "only batch 1 is supported")
            x = self.b.add(layer.Reshape, x, name=f"{self.tensors[outs[0]].name}/flatten",
                           result_type=x.type.with_shape((1, n_in)))
        self.emit(layer.Dense, [x], outs[0], kernel=self.weights(w, w.data), bias=self.bias(ins),
                  activation=self.fused(o) if o is not None else "none")

    def _activation_after(self, v: Value, act: str, out: int) -> None:
        """Ops without a fused activation attribute get a separate activation op."""
        from ml4f.dialects import layer

        if act == "none":
            return
        cls = layer.Relu if act == "relu" else layer.Relu6
        t = self.tensors[out]
        self.values[out] = self.b.add(cls, v, name=f"{t.name}/{act}", result_type=v.type)

    def pool(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        o = self.options(self.fb.Pool2DOptions)
        cls = layer.AvgPool2D if self.opname == "AVERAGE_POOL_2D" else layer.MaxPool2D
        act = self.fused(o)
        v = self.emit(cls, [self.value(ins[0])], outs[0], pool_size=[o.FilterHeight(), o.FilterWidth()],
                      strides=[o.StrideH(), o.StrideW()], padding=self._padding(o.Padding()))
        self._activation_after(v, act, outs[0])

    def mean(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        x = self.value(ins[0])
        axes = sorted({int(a) % x.type.rank for a in self.const(ins[1], "the axes").data.reshape(-1)})
        spatial = list(range(1, x.type.rank - 1))
        if x.type.rank not in (3, 4) or axes != spatial:
            self.fail(f"over axes {axes} of a rank-{x.type.rank} tensor is not supported (only the mean "
                      "over all spatial axes of NWC/NHWC data, i.e. global average pooling)")
        o = self.options(self.fb.ReducerOptions)
        self.emit(layer.GlobalAvgPool, [x], outs[0], keepdims=bool(o is not None and o.KeepDims()))

    def reshape(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        x = self.value(ins[0])
        t = self.tensors[outs[0]]
        shape = self._static_shape(t, "reshape result")
        v = self.b.add(layer.Reshape, x, name=t.name, result_type=TensorType(shape, self._elem(t, "output")))
        if v.type.elem != x.type.elem:
            self.fail("changes the quantization parameters, which a reshape cannot do")
        self.values[outs[0]] = v

    def softmax(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        o = self.options(self.fb.SoftmaxOptions)
        self.emit(layer.Softmax, [self.value(ins[0])], outs[0], beta=o.Beta() if o is not None else 1.0)

    def binary(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        cls = {"ADD": (layer.Add, self.fb.AddOptions), "SUB": (layer.Sub, self.fb.SubOptions),
               "MUL": (layer.Mul, self.fb.MulOptions)}[self.opname]
        o = self.options(cls[1])
        act = self.fused(o) if o is not None else "none"
        consts = [i for i in ins if self.tensors[i].data is not None]
        if consts:
            self._binary_const(ins, outs[0], act)
            return
        self.emit(cls[0], [self.value(i) for i in ins], outs[0], activation=act)

    def _binary_const(self, ins: list[int], out: int, act: str) -> None:
        """x op c with a constant c broadcast along the channel axis: a per-channel affine map,
        written exactly as a batch_norm with mean 0, variance 1 and epsilon 0 (float models only)."""
        from ml4f.dialects import layer

        if len(ins) != 2 or self.tensors[ins[0]].data is not None and self.opname == "SUB":
            self.fail("with a constant first operand is not supported")
        xi, ci = (ins[0], ins[1]) if self.tensors[ins[1]].data is not None else (ins[1], ins[0])
        x = self.value(xi)
        c = self.tensors[ci]
        if x.type.quant is not None:
            self.fail(f"with the constant operand '{c.name}' is not supported for int8 models")
        ch = x.type.shape[-1]
        data = c.data.astype(np.float32)
        if any(d != 1 for d in data.shape[:-1]) or data.shape and data.shape[-1] not in (1, ch):
            self.fail(f"constant operand '{c.name}' {list(data.shape)} is not a scalar or a per-channel "
                      f"vector of {ch}")
        vec = np.broadcast_to(data.reshape(-1), (ch,)).astype(np.float32)
        one, zero = np.ones(ch, np.float32), np.zeros(ch, np.float32)
        gamma, beta = {"ADD": (one, vec), "SUB": (one, -vec), "MUL": (vec, zero)}[self.opname]
        name = self.tensors[out].name
        v = self.emit(layer.BatchNorm, [x], out, gamma=self.b.weights(f"{name}.gamma", gamma),
                      beta=self.b.weights(f"{name}.beta", beta), mean=self.b.weights(f"{name}.mean", zero),
                      variance=self.b.weights(f"{name}.variance", one), epsilon=0.0)
        self._activation_after(v, act, out)

    def concat(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        o = self.options(self.fb.ConcatenationOptions)
        v = self.emit(layer.Concat, [self.value(i) for i in ins], outs[0], axis=o.Axis())
        self._activation_after(v, self.fused(o), outs[0])

    def pad(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        x = self.value(ins[0])
        pads = self.const(ins[1], "the paddings").data.reshape(-1, 2).tolist()
        self.emit(layer.ZeroPad, [x], outs[0], pads=pads)

    def unary(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        cls = {"RELU": layer.Relu, "RELU6": layer.Relu6, "LOGISTIC": layer.Sigmoid, "TANH": layer.Tanh,
               "HARD_SWISH": layer.HardSwish, "LEAKY_RELU": layer.LeakyRelu}[self.opname]
        attrs: dict[str, Any] = {}
        if cls is layer.LeakyRelu:
            o = self.options(self.fb.LeakyReluOptions)
            attrs["alpha"] = float(o.Alpha()) if o is not None else 0.2
        self.emit(cls, [self.value(ins[0])], outs[0], **attrs)

    def quantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        self.emit(layer.Quantize, [self.value(ins[0])], outs[0])

    def dequantize(self, op: Any, ins: list[int], outs: list[int]) -> None:
        from ml4f.dialects import layer

        src = self.tensors[ins[0]]
        if src.data is not None:
            # Weights stored compactly: float16 ones stay f16 weights, int8 ones become float32.
            t = self.tensors[outs[0]]
            if src.dtype == 1:
                t.data, t.dtype = src.data, 1
                return
            if not src.quantized:
                self.fail(f"dequantizes the constant '{src.name}', which has no quantization parameters")
            shape = [1] * src.data.ndim
            if len(src.scales) > 1:
                shape[src.axis] = -1
            zero, scale = np.reshape(src.zero_points, shape), np.reshape(src.scales, shape)
            data = (src.data.astype(np.float64) - zero) * scale
            t.data, t.dtype = data.astype(np.float32), 0
            return
        self.emit(layer.Dequantize, [self.value(ins[0])], outs[0])
