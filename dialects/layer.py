"""The layer dialect: one op per neural-network layer over static NHWC tensors with batch 1.

Weight layouts (TFLite's, so that per-channel quantization runs along a leading or last axis):
    conv2d  kernel [O, KH, KW, I]     conv1d  kernel [O, K, I]
    depthwise_conv2d kernel [KH, KW, C*M]   depthwise_conv1d kernel [K, C*M]
    (output channel c*M + m reads input channel c)
    dense   kernel [O, I]             bias [O] everywhere (f32, or i32 for int8)

Element types: f32 activations with f32 or f16 weights, or int8 with !quant.uniform types (TFLite
affine quantization). Each op's `reference()` is the NumPy oracle; int8 ops dispatch to the
bit-exact integer kernels of `layer_int8`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np

from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.ir import (
    Bool,
    Dialect,
    Enum,
    Float,
    Int,
    Ints,
    IntsList,
    Operation,
    Weights,
    attr,
    operand,
    region,
    var_operand,
)
from ml4f.compiler.types import TensorType, Type, f32

DIALECT = Dialect("layer", doc=__doc__ or "")

Padding = Enum("valid", "same")
Activation = Enum("none", "relu", "relu6")


class LayerOp(Operation):
    """Base of compute layer ops: one tensor result whose type `infer_type` derives."""

    # Attributes that never change the computed type (checked by the generic verifier only).
    def infer_type(self) -> Type:
        raise NotImplementedError

    def verify_(self) -> None:
        for v in self.operands:
            if not isinstance(v.type, TensorType):
                raise self.error(f"operands must be tensors, got {v.type}")
        self.check()
        expected = self.infer_type()
        if self.results and self.result.type != expected:
            raise self.error(f"result type {self.result.type} does not match the inferred {expected}")

    def check(self) -> None:
        """Op-specific checks on operands and attributes, before the result type is inferred."""

    # -- helpers shared by many ops

    @property
    def in_type(self) -> TensorType:
        t = self.operands[0].type
        assert isinstance(t, TensorType)
        return t

    @property
    def out_type(self) -> TensorType:
        t = self.result.type
        assert isinstance(t, TensorType)
        return t

    @property
    def quantized(self) -> bool:
        return any(isinstance(v.type, TensorType) and v.type.quant is not None
                   for v in [*self.operands, *self.results])

    def out_elem(self) -> Type:
        """The result element type: the declared one when present (int8 ops carry their own
        output quantization), else the input's."""
        if self.results and isinstance(self.result.type, TensorType):
            return self.result.type.elem
        return self.in_type.elem

    def macs(self) -> int:
        """Multiply-accumulates of one inference (conv, depthwise and dense only)."""
        return 0

    def reference(self, *inputs: np.ndarray) -> np.ndarray:
        """The op's meaning in NumPy: float ops in float32, int8 ops bit-exactly as TFLite."""
        if self.quantized:
            from ml4f.dialects import layer_int8

            return layer_int8.reference(self, *inputs)
        return self.reference_float(*[np.asarray(x, dtype=np.float32) for x in inputs])

    def reference_float(self, *inputs: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no float reference")


def _rank_check(op: LayerOp, t: TensorType, ranks: Sequence[int], what: str = "input") -> None:
    if t.rank not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise op.error(f"{what} must have rank {want} (batch first), got {t}")
    if t.shape[0] != 1:
        raise op.error(f"{what} must have batch size 1, got {t}")


def conv_out_size(size: int, k: int, stride: int, dilation: int, padding: str) -> int:
    """Output length along one spatial axis, as Keras/TFLite compute it."""
    eff = (k - 1) * dilation + 1
    if padding == "same":
        return -(-size // stride)
    return (size - eff) // stride + 1 if size >= eff else 0


def same_pad_before(size: int, k: int, stride: int, dilation: int) -> int:
    """Padding added before the first element for 'same' (the extra one goes after, as in TF)."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2


# ----------------------------------------------------------------------------- float reference helpers
# The float references accumulate in float64 and round once to float32 at the end, so that their
# own rounding error is far below the framework's and the comparison measures the framework's.


def _weights(op: LayerOp, key: str) -> np.ndarray | None:
    """The weight attribute `key` as float64 (f16 weights are widened exactly), or None if absent."""
    res = op.get_attr(key)
    if res is None:
        return None
    try:
        data = res.array()
    except CompileError as e:
        raise op.error(e.message) from None
    return np.asarray(data, dtype=np.float64)


def _activate(y: np.ndarray, activation: str) -> np.ndarray:
    """The fused activation, applied after the bias."""
    if activation == "relu":
        return np.maximum(y, 0.0)
    if activation == "relu6":
        return np.clip(y, 0.0, 6.0)
    return y


def _pad_spatial(x: np.ndarray, window: Sequence[int], strides: Sequence[int], dilation: Sequence[int],
                 padding: str, value: float = 0.0) -> np.ndarray:
    """`x` [1, *spatial, C] padded for 'same' as TF does (the odd extra element goes after)."""
    if padding != "same":
        return x
    pads = [(0, 0)]
    for n, k, s, d in zip(x.shape[1:-1], window, strides, dilation):
        eff = (k - 1) * d + 1
        total = max((-(-n // s) - 1) * s + eff - n, 0)
        pads.append((total // 2, total - total // 2))
    pads.append((0, 0))
    return np.pad(x, pads, constant_values=value)


def _windows(x: np.ndarray, window: Sequence[int], strides: Sequence[int], dilation: Sequence[int],
             out: Sequence[int]) -> np.ndarray:
    """A strided view [*out, C, *window] of the (already padded) x [1, *spatial, C]: element
    [o..., c, k...] is x[0, o*stride + k*dilation ..., c]. No copy is made."""
    spatial = len(window)
    eff = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    v = np.lib.stride_tricks.sliding_window_view(x[0], eff, axis=tuple(range(spatial)))
    index = (*(slice(0, o * s, s) for o, s in zip(out, strides)), slice(None),
             *(slice(None, None, d) for d in dilation))
    v = v[index]
    assert v.shape[:spatial] == tuple(out), (v.shape, out)
    return v


# ----------------------------------------------------------------------------- structure


@DIALECT.op
class Model(Operation):
    """A model: a graph of layer ops in one block, inputs first, ending in layer.output.

    Example: layer.model @mnist { %x = layer.input : tensor<1x28x28x1xf32> ... layer.output %y }
    """

    name = "layer.model"
    num_results = 0
    has_symbol = True
    body = region()

    def verify_(self) -> None:
        ops = self.body.block.ops
        for before, op in zip(ops, ops[1:]):
            if isinstance(before, Output):
                raise op.error("follows layer.output, which must be the last op of the model")
        if not ops or not isinstance(ops[-1], Output):
            raise self.error("must end with layer.output")

    @property
    def inputs(self) -> list[Input]:
        return [op for op in self.body.block.ops if isinstance(op, Input)]

    @property
    def output(self) -> Output:
        op = self.body.block.ops[-1]
        assert isinstance(op, Output)
        return op

    @property
    def layers(self) -> list[LayerOp]:
        return [op for op in self.body.block.ops if isinstance(op, LayerOp)]


@DIALECT.op
class Input(Operation):
    """A model input (batch 1). Example: %x = layer.input : tensor<1x28x28x1xf32>"""

    name = "layer.input"

    def verify_(self) -> None:
        t = self.result.type
        if not isinstance(t, TensorType) or not t.shape or t.shape[0] != 1:
            raise self.error(f"input must be a tensor with batch size 1, got {t}")


@DIALECT.op
class Output(Operation):
    """The model outputs; ends the model. Example: layer.output %probs"""

    name = "layer.output"
    num_results = 0
    is_terminator = True
    values = var_operand()

    def verify_(self) -> None:
        if not self.operands:
            raise self.error("needs at least one value")


# ----------------------------------------------------------------------------- convolution and dense


class _ConvBase(LayerOp):
    spatial: ClassVar[int] = 2
    depthwise: ClassVar[bool] = False

    def kernel_shape(self) -> tuple[int, ...]:
        return tuple(self.get_attr("kernel").type.shape)

    def window(self) -> tuple[int, ...]:
        ks = self.kernel_shape()
        return ks[:self.spatial] if self.depthwise else ks[1:1 + self.spatial]

    def out_channels(self) -> int:
        ks = self.kernel_shape()
        return ks[-1] if self.depthwise else ks[0]

    def check(self) -> None:
        t = self.in_type
        _rank_check(self, t, [self.spatial + 2])
        k = self.get_attr("kernel")
        ks = k.type.shape
        cin = t.shape[-1]
        if self.depthwise:
            m = self.get_attr("depth_multiplier")
            if len(ks) != self.spatial + 1 or ks[-1] != cin * m:
                raise self.error(f"kernel {k.type} must be [{'KH, KW' if self.spatial == 2 else 'K'}, "
                                 f"C*M] = [..., {cin * m}] for {cin} channels and depth_multiplier {m}")
        elif len(ks) != self.spatial + 2 or ks[-1] != cin:
            raise self.error(f"kernel {k.type} must be [O, {'KH, KW' if self.spatial == 2 else 'K'}, I] "
                             f"with I = {cin} input channels")
        if any(s < 1 for s in self.strides) or any(d < 1 for d in self.dilation):
            raise self.error("strides and dilation must be at least 1")
        if any(s > 1 for s in self.strides) and any(d > 1 for d in self.dilation):
            raise self.error("strides > 1 together with dilation > 1 is not supported (as in Keras)")
        bias = self.get_attr("bias")
        if bias is not None and tuple(bias.type.shape) != (self.out_channels(),):
            raise self.error(f"bias {bias.type} must have shape [{self.out_channels()}]")
        for i, (n, kk) in enumerate(zip(t.shape[1:-1], self.window())):
            if conv_out_size(n, kk, self.strides[i], self.dilation[i], self.padding) < 1:
                raise self.error(f"window {self.window()} is larger than the input {t} with 'valid' padding")

    def infer_type(self) -> Type:
        t = self.in_type
        dims = tuple(conv_out_size(n, k, s, d, self.padding) for n, k, s, d in
                     zip(t.shape[1:-1], self.window(), self.strides, self.dilation))
        return TensorType((1, *dims, self.out_channels()), self.out_elem())

    def macs(self) -> int:
        out = self.out_type.shape
        per_out = int(np.prod(self.window()))
        if not self.depthwise:
            per_out *= self.in_type.shape[-1]
        return int(np.prod(out)) * per_out

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        """im2col as a strided view, then one tensordot (dense kernels) or one einsum per channel."""
        window = self.window()
        xp = _pad_spatial(x.astype(np.float64), window, self.strides, self.dilation, self.padding)
        out = self.out_type.shape[1:-1]
        win = _windows(xp, window, self.strides, self.dilation, out)  # [*out, C, *window]
        k = _weights(self, "kernel")
        s = self.spatial
        if self.depthwise:
            c = x.shape[-1]
            m = self.depth_multiplier
            km = k.reshape(*window, c, m)
            # y[o, c, m] = sum_w win[o, c, w] * k[w, c, m]
            letters = "hw"[:s]
            y = np.einsum(f"...c{letters},{letters}cm->...cm", win, km, optimize=True)
            y = y.reshape(*out, c * m)
        else:
            # kernel [O, *window, I]: contract the input channel and the window axes.
            y = np.tensordot(win, k, axes=([s, *range(s + 1, 2 * s + 1)], [s + 1, *range(1, s + 1)]))
        b = _weights(self, "bias")
        if b is not None:
            y = y + b
        return _activate(y, self.activation)[None].astype(np.float32)


@DIALECT.op
class Conv2D(_ConvBase):
    """2-D convolution over NHWC with an [O, KH, KW, I] kernel, optional bias and fused activation.

    Example: %y = layer.conv2d %x {kernel = dense_resource<c1.k>, bias = dense_resource<c1.b>,
             strides = [2, 2], padding = "same", activation = "relu"} : tensor<1x14x14x8xf32>
    """

    name = "layer.conv2d"
    x = operand()
    kernel = attr(Weights)
    bias = attr(Weights, default=None)
    strides = attr(Ints(2), default=(1, 1))
    padding = attr(Padding, default="valid")
    dilation = attr(Ints(2), default=(1, 1))
    activation = attr(Activation, default="none")


@DIALECT.op
class Conv1D(_ConvBase):
    """1-D convolution over NWC with an [O, K, I] kernel, optional bias and fused activation.

    Example: %y = layer.conv1d %x {kernel = dense_resource<k>, activation = "relu"} : tensor<1x47x16xf32>
    """

    name = "layer.conv1d"
    spatial = 1
    x = operand()
    kernel = attr(Weights)
    bias = attr(Weights, default=None)
    strides = attr(Ints(1), default=(1,))
    padding = attr(Padding, default="valid")
    dilation = attr(Ints(1), default=(1,))
    activation = attr(Activation, default="none")


@DIALECT.op
class DepthwiseConv2D(_ConvBase):
    """Depthwise 2-D convolution: output channel c*M+m convolves input channel c with kernel [:, :, c*M+m].

    Example: %y = layer.depthwise_conv2d %x {kernel = dense_resource<dw.k>, padding = "same"}
             : tensor<1x12x12x8xf32>
    """

    name = "layer.depthwise_conv2d"
    depthwise = True
    x = operand()
    kernel = attr(Weights)
    bias = attr(Weights, default=None)
    strides = attr(Ints(2), default=(1, 1))
    padding = attr(Padding, default="valid")
    dilation = attr(Ints(2), default=(1, 1))
    depth_multiplier = attr(Int, default=1)
    activation = attr(Activation, default="none")


@DIALECT.op
class DepthwiseConv1D(_ConvBase):
    """Depthwise 1-D convolution with a [K, C*M] kernel.

    Example: %y = layer.depthwise_conv1d %x {kernel = dense_resource<dw.k>} : tensor<1x18x6xf32>
    """

    name = "layer.depthwise_conv1d"
    spatial = 1
    depthwise = True
    x = operand()
    kernel = attr(Weights)
    bias = attr(Weights, default=None)
    strides = attr(Ints(1), default=(1,))
    padding = attr(Padding, default="valid")
    dilation = attr(Ints(1), default=(1,))
    depth_multiplier = attr(Int, default=1)
    activation = attr(Activation, default="none")


@DIALECT.op
class Dense(LayerOp):
    """y = x @ kernel.T + bias over the last axis, kernel [O, I]; other axes are kept (as Keras does).

    Example: %y = layer.dense %x {kernel = dense_resource<fc.k>, bias = dense_resource<fc.b>}
             : tensor<1x10xf32>
    """

    name = "layer.dense"
    x = operand()
    kernel = attr(Weights)
    bias = attr(Weights, default=None)
    activation = attr(Activation, default="none")

    def check(self) -> None:
        t = self.in_type
        if t.rank < 2 or t.shape[0] != 1:
            raise self.error(f"input must have batch size 1 and rank >= 2, got {t}")
        ks = self.kernel.type.shape
        if len(ks) != 2 or ks[1] != t.shape[-1]:
            raise self.error(f"kernel {self.kernel.type} must be [O, I] with I = {t.shape[-1]}")
        if self.bias is not None and tuple(self.bias.type.shape) != (ks[0],):
            raise self.error(f"bias {self.bias.type} must have shape [{ks[0]}]")

    def infer_type(self) -> Type:
        return TensorType((*self.in_type.shape[:-1], self.kernel.type.shape[0]), self.out_elem())

    def macs(self) -> int:
        return int(np.prod(self.in_type.shape)) * self.kernel.type.shape[0]

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        y = x.astype(np.float64) @ _weights(self, "kernel").T
        b = _weights(self, "bias")
        if b is not None:
            y = y + b
        return _activate(y, self.activation).astype(np.float32)


# ----------------------------------------------------------------------------- pooling


class _PoolBase(LayerOp):
    spatial: ClassVar[int] = 2

    def check(self) -> None:
        t = self.in_type
        _rank_check(self, t, [self.spatial + 2])
        if any(p < 1 for p in self.pool_size) or any(s < 1 for s in self.strides):
            raise self.error("pool_size and strides must be at least 1")
        if self.padding == "valid" and any(p > n for p, n in zip(self.pool_size, t.shape[1:-1])):
            raise self.error(f"pool_size {list(self.pool_size)} is larger than the input {t}")

    def infer_type(self) -> Type:
        t = self.in_type
        dims = tuple(conv_out_size(n, k, s, 1, self.padding)
                     for n, k, s in zip(t.shape[1:-1], self.pool_size, self.strides))
        return TensorType((1, *dims, t.shape[-1]), self.out_elem())

    def _max(self, x: np.ndarray) -> np.ndarray:
        """Max over each window; 'same' padding is -inf, so it never wins (as in TF)."""
        ones = (1,) * self.spatial
        xp = _pad_spatial(x, self.pool_size, self.strides, ones, self.padding, -np.inf)
        win = _windows(xp, self.pool_size, self.strides, ones, self.out_type.shape[1:-1])
        return win.max(axis=tuple(range(-self.spatial, 0)))[None].astype(np.float32)

    def _mean(self, x: np.ndarray) -> np.ndarray:
        """Mean over the real elements of each window: 'same' padding is not counted (as in TF)."""
        ones = (1,) * self.spatial
        out = self.out_type.shape[1:-1]
        axes = tuple(range(-self.spatial, 0))
        xp = _pad_spatial(x.astype(np.float64), self.pool_size, self.strides, ones, self.padding)
        total = _windows(xp, self.pool_size, self.strides, ones, out).sum(axis=axes)
        mask = _pad_spatial(np.ones((1, *x.shape[1:-1], 1)), self.pool_size, self.strides, ones, self.padding)
        count = _windows(mask, self.pool_size, self.strides, ones, out).sum(axis=axes)
        return (total / count)[None].astype(np.float32)


@DIALECT.op
class MaxPool2D(_PoolBase):
    """Max over KHxKW windows. Example: %y = layer.max_pool2d %x {pool_size = [2, 2], strides = [2, 2]}
    : tensor<1x13x13x8xf32>"""

    name = "layer.max_pool2d"
    x = operand()
    pool_size = attr(Ints(2))
    strides = attr(Ints(2))
    padding = attr(Padding, default="valid")

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return self._max(x)


@DIALECT.op
class MaxPool1D(_PoolBase):
    """Max over windows of K steps. Example: %y = layer.max_pool1d %x {pool_size = [2], strides = [2]}
    : tensor<1x23x16xf32>"""

    name = "layer.max_pool1d"
    spatial = 1
    x = operand()
    pool_size = attr(Ints(1))
    strides = attr(Ints(1))
    padding = attr(Padding, default="valid")

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return self._max(x)


@DIALECT.op
class AvgPool2D(_PoolBase):
    """Mean over KHxKW windows; with 'same' padding the mean excludes the padding (as Keras).

    Example: %y = layer.avg_pool2d %x {pool_size = [6, 6], strides = [6, 6]} : tensor<1x1x1x16xf32>
    """

    name = "layer.avg_pool2d"
    x = operand()
    pool_size = attr(Ints(2))
    strides = attr(Ints(2))
    padding = attr(Padding, default="valid")

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return self._mean(x)


@DIALECT.op
class AvgPool1D(_PoolBase):
    """Mean over windows of K steps; 'same' excludes the padding. Example: %y = layer.avg_pool1d %x
    {pool_size = [2], strides = [2]} : tensor<1x10x4xf32>"""

    name = "layer.avg_pool1d"
    spatial = 1
    x = operand()
    pool_size = attr(Ints(1))
    strides = attr(Ints(1))
    padding = attr(Padding, default="valid")

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return self._mean(x)


class _GlobalPool(LayerOp):
    x = operand()
    keepdims = attr(Bool, default=False)

    def check(self) -> None:
        _rank_check(self, self.in_type, [3, 4])

    def infer_type(self) -> Type:
        t = self.in_type
        shape = (1, *([1] * (t.rank - 2)), t.shape[-1]) if self.keepdims else (1, t.shape[-1])
        return TensorType(shape, self.out_elem())

    def _spatial_axes(self) -> tuple[int, ...]:
        return tuple(range(1, self.in_type.rank - 1))


@DIALECT.op
class GlobalAvgPool(_GlobalPool):
    """Mean over all spatial positions (NWC or NHWC). Example: %y = layer.global_avg_pool %x
    : tensor<1x64xf32>"""

    name = "layer.global_avg_pool"

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        y = x.astype(np.float64).mean(axis=self._spatial_axes(), keepdims=self.keepdims)
        return y.astype(np.float32)


@DIALECT.op
class GlobalMaxPool(_GlobalPool):
    """Max over all spatial positions (NWC or NHWC). Example: %y = layer.global_max_pool %x
    : tensor<1x64xf32>"""

    name = "layer.global_max_pool"

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return x.max(axis=self._spatial_axes(), keepdims=self.keepdims).astype(np.float32)


# ----------------------------------------------------------------------------- element-wise


class _Unary(LayerOp):
    """An element-wise op of one tensor; the result has the input's shape."""

    def infer_type(self) -> Type:
        return TensorType(self.in_type.shape, self.out_elem())


@DIALECT.op
class BatchNorm(_Unary):
    """(x - mean) / sqrt(variance + epsilon) * gamma + beta over the last axis.

    Example: %y = layer.batch_norm %x {gamma = dense_resource<bn.g>, beta = dense_resource<bn.b>,
             mean = dense_resource<bn.m>, variance = dense_resource<bn.v>, epsilon = 0.001}
             : tensor<1x12x12x8xf32>
    """

    name = "layer.batch_norm"
    x = operand()
    gamma = attr(Weights)
    beta = attr(Weights)
    mean = attr(Weights)
    variance = attr(Weights)
    epsilon = attr(Float, default=0.001)

    def check(self) -> None:
        c = self.in_type.shape[-1]
        for key in ("gamma", "beta", "mean", "variance"):
            w = self.get_attr(key)
            if tuple(w.type.shape) != (c,):
                raise self.error(f"{key} {w.type} must have shape [{c}] (the channel count)")

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        scale = _weights(self, "gamma") / np.sqrt(_weights(self, "variance") + self.epsilon)
        y = (x.astype(np.float64) - _weights(self, "mean")) * scale + _weights(self, "beta")
        return y.astype(np.float32)


@DIALECT.op
class Relu(_Unary):
    """max(x, 0). Example: %y = layer.relu %x : tensor<1x8xf32>"""

    name = "layer.relu"
    x = operand()

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, np.float32(0))


@DIALECT.op
class Relu6(_Unary):
    """min(max(x, 0), 6). Example: %y = layer.relu6 %x : tensor<1x8xf32>"""

    name = "layer.relu6"
    x = operand()

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, np.float32(0), np.float32(6))


@DIALECT.op
class LeakyRelu(_Unary):
    """x if x >= 0 else alpha * x. Example: %y = layer.leaky_relu %x {alpha = 0.1} : tensor<1x8xf32>"""

    name = "layer.leaky_relu"
    x = operand()
    alpha = attr(Float, default=0.3)

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return np.where(x >= 0, x, self.alpha * x.astype(np.float64)).astype(np.float32)


@DIALECT.op
class Sigmoid(_Unary):
    """1 / (1 + exp(-x)). Example: %y = layer.sigmoid %x : tensor<1x8xf32>"""

    name = "layer.sigmoid"
    x = operand()

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        # 0.5 * (1 + tanh(x / 2)) equals 1 / (1 + exp(-x)) and cannot overflow.
        return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


@DIALECT.op
class Tanh(_Unary):
    """tanh(x). Example: %y = layer.tanh %x : tensor<1x8xf32>"""

    name = "layer.tanh"
    x = operand()

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x.astype(np.float64)).astype(np.float32)


@DIALECT.op
class HardSwish(_Unary):
    """x * relu6(x + 3) / 6. Example: %y = layer.hard_swish %x : tensor<1x8xf32>"""

    name = "layer.hard_swish"
    x = operand()

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        x64 = x.astype(np.float64)
        return (x64 * np.clip(x64 + 3.0, 0.0, 6.0) / 6.0).astype(np.float32)


@DIALECT.op
class Softmax(_Unary):
    """exp(beta*x - max) / sum(exp(beta*x - max)) over the last axis.

    Example: %y = layer.softmax %x : tensor<1x10xf32>
    """

    name = "layer.softmax"
    x = operand()
    beta = attr(Float, default=1.0)

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        z = self.beta * x.astype(np.float64)
        e = np.exp(z - z.max(axis=-1, keepdims=True))  # shifted so that exp cannot overflow
        return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


@DIALECT.op
class Dropout(_Unary):
    """Identity at inference; removed by canonicalize. Example: %y = layer.dropout %x {rate = 0.5}
    : tensor<1x8xf32>"""

    name = "layer.dropout"
    x = operand()
    rate = attr(Float, default=0.5)

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return x.copy()


@DIALECT.op
class Quantize(LayerOp):
    """f32 -> int8 with the result's scale and zero point (TFLite QUANTIZE; also requantizes int8).

    Example: %q = layer.quantize %x : tensor<1x10x!quant.uniform<i8:f32, 0.1:-3>>
    """

    name = "layer.quantize"
    x = operand()

    def check(self) -> None:
        if not isinstance(self.result.type, TensorType) or self.result.type.quant is None:
            raise self.error(f"result must be a quantized tensor, got {self.result.type}")

    def infer_type(self) -> Type:
        return TensorType(self.in_type.shape, self.out_elem())


@DIALECT.op
class Dequantize(LayerOp):
    """int8 -> f32: scale * (q - zero_point). Example: %y = layer.dequantize %q : tensor<1x10xf32>"""

    name = "layer.dequantize"
    x = operand()

    def check(self) -> None:
        if self.in_type.quant is None:
            raise self.error(f"input must be a quantized tensor, got {self.in_type}")

    @property
    def quantized(self) -> bool:
        return True

    def infer_type(self) -> Type:
        return TensorType(self.in_type.shape, f32)


def broadcast_shape(op: LayerOp, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    """NumPy/Keras broadcasting of several shapes, or a located error."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise op.error("cannot broadcast shapes " + ", ".join(str(list(s)) for s in shapes)) from None


class _Binary(LayerOp):
    """Element-wise op of several tensors with NumPy broadcasting and an optional fused activation."""

    def check(self) -> None:
        if len(self.operands) < 2:
            raise self.error(f"needs at least 2 operands, got {len(self.operands)}")

    def infer_type(self) -> Type:
        shape = broadcast_shape(self, [v.type.shape for v in self.operands])
        return TensorType(shape, self.out_elem())

    def _fold(self, inputs: Sequence[np.ndarray],
              fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """fn applied left to right over the broadcast operands, then the fused activation."""
        y = inputs[0].astype(np.float64)
        for v in inputs[1:]:
            y = fn(y, v.astype(np.float64))
        y = np.broadcast_to(y, self.out_type.shape)
        return _activate(y, self.activation).astype(np.float32)


@DIALECT.op
class Add(_Binary):
    """Sum of two or more tensors (broadcasting). Example: %y = layer.add %a, %b : tensor<1x8x8x16xf32>"""

    name = "layer.add"
    inputs = var_operand()
    activation = attr(Activation, default="none")

    def reference_float(self, *inputs: np.ndarray) -> np.ndarray:
        return self._fold(inputs, np.add)


@DIALECT.op
class Sub(_Binary):
    """a - b (broadcasting). Example: %y = layer.sub %a, %b : tensor<1x8xf32>"""

    name = "layer.sub"
    inputs = var_operand()
    activation = attr(Activation, default="none")

    def check(self) -> None:
        if len(self.operands) != 2:
            raise self.error(f"needs exactly 2 operands, got {len(self.operands)}")

    def reference_float(self, *inputs: np.ndarray) -> np.ndarray:
        return self._fold(inputs, np.subtract)


@DIALECT.op
class Mul(_Binary):
    """Product of two or more tensors (broadcasting). Example: %y = layer.mul %a, %b : tensor<1x8xf32>"""

    name = "layer.mul"
    inputs = var_operand()
    activation = attr(Activation, default="none")

    def reference_float(self, *inputs: np.ndarray) -> np.ndarray:
        return self._fold(inputs, np.multiply)


# ----------------------------------------------------------------------------- data movement


@DIALECT.op
class Concat(LayerOp):
    """Joins tensors along `axis` (negative counts from the end). Example: %y = layer.concat %a, %b
    {axis = -1} : tensor<1x8x8x32xf32>"""

    name = "layer.concat"
    inputs = var_operand()
    axis = attr(Int, default=-1)

    def norm_axis(self) -> int:
        rank = self.in_type.rank
        return self.axis + rank if self.axis < 0 else self.axis

    def check(self) -> None:
        if not self.operands:
            raise self.error("needs at least one operand")
        rank = self.in_type.rank
        if not -rank <= self.axis < rank:
            raise self.error(f"axis {self.axis} is out of range for rank {rank}")
        ax = self.norm_axis()
        for v in self.operands:
            s = v.type.shape
            if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, self.in_type.shape)) if i != ax):
                raise self.error(f"operand shapes {[list(o.type.shape) for o in self.operands]} differ "
                                 f"outside axis {self.axis}")

    def infer_type(self) -> Type:
        ax = self.norm_axis()
        shape = list(self.in_type.shape)
        shape[ax] = sum(v.type.shape[ax] for v in self.operands)
        return TensorType(tuple(shape), self.out_elem())

    def reference_float(self, *inputs: np.ndarray) -> np.ndarray:
        return np.concatenate(inputs, axis=self.norm_axis()).astype(np.float32)


@DIALECT.op
class ZeroPad(LayerOp):
    """Pads with zeros (the zero point for int8): pads[i] = [before, after] for every axis.

    Example: %y = layer.zero_pad %x {pads = [[0, 0], [1, 1], [1, 1], [0, 0]]} : tensor<1x30x30x1xf32>
    """

    name = "layer.zero_pad"
    x = operand()
    pads = attr(IntsList())

    def check(self) -> None:
        if len(self.pads) != self.in_type.rank or any(len(p) != 2 or min(p) < 0 for p in self.pads):
            raise self.error(f"pads must be {self.in_type.rank} pairs [before, after] of non-negative integers")

    def infer_type(self) -> Type:
        shape = tuple(n + a + b for n, (a, b) in zip(self.in_type.shape, self.pads))
        return TensorType(shape, self.out_elem())

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return np.pad(x, [tuple(p) for p in self.pads]).astype(np.float32)


@DIALECT.op
class Cropping(LayerOp):
    """Removes crops[i] = [before, after] elements along each spatial axis.

    Example: %y = layer.cropping %x {crops = [[1, 1], [2, 2]]} : tensor<1x26x24x8xf32>
    """

    name = "layer.cropping"
    x = operand()
    crops = attr(IntsList())

    def check(self) -> None:
        t = self.in_type
        _rank_check(self, t, [3, 4])
        if len(self.crops) != t.rank - 2 or any(len(c) != 2 or min(c) < 0 for c in self.crops):
            raise self.error(f"crops must be {t.rank - 2} pairs [before, after] of non-negative integers")
        if any(a + b >= n for n, (a, b) in zip(t.shape[1:-1], self.crops)):
            raise self.error(f"crops {[list(c) for c in self.crops]} remove all of {t}")

    def infer_type(self) -> Type:
        t = self.in_type
        dims = tuple(n - a - b for n, (a, b) in zip(t.shape[1:-1], self.crops))
        return TensorType((1, *dims, t.shape[-1]), self.out_elem())

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        index = (slice(None), *(slice(a, n - b) for n, (a, b) in zip(x.shape[1:-1], self.crops)), slice(None))
        return x[index].astype(np.float32)


@DIALECT.op
class Upsample(LayerOp):
    """Nearest-neighbour upsampling by integer factors per spatial axis.

    Example: %y = layer.upsample %x {size = [2, 2]} : tensor<1x16x16x8xf32>
    """

    name = "layer.upsample"
    x = operand()
    size = attr(Ints())

    def check(self) -> None:
        t = self.in_type
        _rank_check(self, t, [3, 4])
        if len(self.size) != t.rank - 2 or min(self.size) < 1:
            raise self.error(f"size must be {t.rank - 2} positive factors")

    def infer_type(self) -> Type:
        t = self.in_type
        dims = tuple(n * f for n, f in zip(t.shape[1:-1], self.size))
        return TensorType((1, *dims, t.shape[-1]), self.out_elem())

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        for axis, f in enumerate(self.size, start=1):
            x = np.repeat(x, f, axis=axis)
        return x.astype(np.float32)


@DIALECT.op
class Reshape(LayerOp):
    """Same elements in row-major order, new shape (the result type). Example: %y = layer.reshape %x
    : tensor<1x400xf32>"""

    name = "layer.reshape"
    x = operand()

    def check(self) -> None:
        if self.result.type.size != self.in_type.size:
            raise self.error(f"cannot reshape {self.in_type} ({self.in_type.size} elements) to "
                             f"{self.result.type} ({self.result.type.size})")

    def infer_type(self) -> Type:
        return self.result.type

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.out_type.shape).astype(np.float32)


@DIALECT.op
class Flatten(LayerOp):
    """Reshape to [1, N] in row-major (NHWC) order. Example: %y = layer.flatten %x : tensor<1x400xf32>"""

    name = "layer.flatten"
    x = operand()

    def check(self) -> None:
        if not self.in_type.shape or self.in_type.shape[0] != 1:
            raise self.error(f"input must have batch size 1, got {self.in_type}")

    def infer_type(self) -> Type:
        return TensorType((1, self.in_type.size // self.in_type.shape[0]), self.out_elem())

    def reference_float(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.out_type.shape).astype(np.float32)


# ----------------------------------------------------------------------------- running a model


def run_model(model: Model, inputs: Sequence[np.ndarray],
              keep: bool = False) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """Run the graph with each op's reference. Returns the outputs and, with `keep`, every value
    by id() of its IR value (for layer-by-layer comparison)."""
    from ml4f.compiler.types import numpy_dtype

    env: dict[int, np.ndarray] = {}
    ins = model.inputs
    if len(inputs) != len(ins):
        raise model.error(f"expects {len(ins)} input(s), got {len(inputs)}")
    for op, x in zip(ins, inputs):
        t = op.result.type
        x = np.asarray(x)
        if x.size != t.size:
            raise op.error(f"input has {x.size} elements ({list(x.shape)}), the model wants {t}")
        env[id(op.result)] = x.reshape(t.shape).astype(numpy_dtype(t.elem))
    for op in model.body.block.ops:
        if isinstance(op, (Input, Output)):
            continue
        args = [env[id(v)] for v in op.operands]
        y = op.reference(*args)
        t = op.result.type
        assert y.shape == t.shape, (op, y.shape, t)
        env[id(op.result)] = y
    outputs = [env[id(v)] for v in model.output.operands]
    return outputs, (env if keep else {})
