"""Graph rewrites on `layer.model` bodies: batch-norm folding, activation fusion, canonicalization.

Each pass keeps the producer op (its name, location and layer name) and drops the op it absorbs,
so a value keeps the name of the layer that computes it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ml4f.compiler.context import Context
from ml4f.compiler.ir import Module, Operation, Resource
from ml4f.compiler.passes import ModulePass, Rewriter, register_pass
from ml4f.compiler.types import FloatType, TensorType, f32


def _models(module: Module) -> Iterator[Operation]:
    """The layer.model ops of a module (a file may also hold other dialects' functions)."""
    from ml4f.dialects import layer

    for op in module.ops:
        if isinstance(op, layer.Model):
            yield op


def _sole_user(op: Operation) -> bool:
    """True when the op's result feeds exactly one operand (so the producer may be changed)."""
    return len(op.results) == 1 and len(op.result.uses) == 1


def _set_attrs(op: Operation, **values: object) -> None:
    """Set attributes and keep them in declaration order, so printed IR reads the same either way."""
    for k, v in values.items():
        setattr(op, k, v)
    op.attributes = {k: op.attributes[k] for k in op._attr_defs if k in op.attributes}


def _sibling_name(name: str, suffix: str) -> str:
    """`conv1.kernel` -> `conv1.bias`: a readable name for a resource derived from another."""
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{stem}.{suffix}"


# ----------------------------------------------------------------------------- fold-batchnorm


@register_pass
@dataclass(frozen=True)
class FoldBatchNorm(ModulePass):
    """Folds layer.batch_norm into the conv/depthwise/dense that feeds it, scaling kernel and bias.

    With s = gamma / sqrt(variance + epsilon) per output channel, the kernel becomes kernel * s along
    its output-channel axis and the bias (bias - mean) * s + beta (a bias is created when there was
    none). Legal only for float weights, when the producer has no fused activation and the
    batch_norm is the only user of its result; otherwise the batch_norm stays. The arithmetic is
    done in float64 and stored as float32, also for f16 kernels: rounding the scaled kernel back
    to f16 would change the model's results (a later f16 conversion rounds it once).

        %c = layer.conv2d %x {kernel = dense_resource<c.k>} : tensor<1x8x8x4xf32>
        %b = layer.batch_norm %c {gamma = ..., beta = ..., mean = ..., variance = ...} : ...
      becomes
        %c = layer.conv2d %x {kernel = dense_resource<c.k>, bias = dense_resource<c.bias>}
             : tensor<1x8x8x4xf32>
    """

    name: ClassVar[str] = "fold-batchnorm"

    def apply(self, ctx: Context, module: Module) -> None:
        from ml4f.dialects import layer

        producers = (layer.Conv1D, layer.Conv2D, layer.DepthwiseConv1D, layer.DepthwiseConv2D,
                     layer.Dense)
        for model in _models(module):
            for bn in list(model.body.block.ops):
                if not isinstance(bn, layer.BatchNorm) or bn.quantized:
                    continue
                prod = bn.x.op
                if (not isinstance(prod, producers) or prod.quantized or prod.activation != "none"
                        or not _sole_user(prod) or not self._float_weights(prod, bn)):
                    continue
                self._fold(bn, prod, isinstance(prod, (layer.DepthwiseConv1D, layer.DepthwiseConv2D)))

    @staticmethod
    def _float_weights(prod: Operation, bn: Operation) -> bool:
        res = [prod.kernel, bn.gamma, bn.beta, bn.mean, bn.variance]
        if prod.bias is not None:
            res.append(prod.bias)
        return all(isinstance(r.type.elem, FloatType) for r in res)

    @staticmethod
    def _fold(bn: Operation, prod: Operation, depthwise: bool) -> None:
        def data(r: Resource) -> np.ndarray:
            if r.data is None:
                raise bn.error(f"cannot fold into {prod.display_name()}: weights '{r.name}' were "
                               "elided from the file")
            return r.data.astype(np.float64)

        denom = data(bn.variance) + bn.epsilon
        bad = np.flatnonzero(~(denom > 0))
        if bad.size:
            raise bn.error(f"variance + epsilon must be positive, but is {denom[bad[0]]} for channel "
                           f"{bad[0]}")
        scale = data(bn.gamma) / np.sqrt(denom)
        kernel = data(prod.kernel)
        # Output channels are the last kernel axis for depthwise ([KH, KW, C*M]), else the first.
        axis_shape = (1,) * (kernel.ndim - 1) + (-1,) if depthwise else (-1,) + (1,) * (kernel.ndim - 1)
        new_kernel = (kernel * scale.reshape(axis_shape)).astype(np.float32)
        bias = data(prod.bias) if prod.bias is not None else np.zeros_like(scale)
        new_bias = ((bias - data(bn.mean)) * scale + data(bn.beta)).astype(np.float32)

        k = prod.kernel
        bias_name = prod.bias.name if prod.bias is not None else _sibling_name(k.name, "bias")
        _set_attrs(prod, kernel=Resource(k.name, TensorType(k.type.shape, f32), new_kernel),
                   bias=Resource(bias_name, TensorType(new_bias.shape, f32), new_bias))
        Rewriter.erase_forwarding(bn, prod.result)


# ----------------------------------------------------------------------------- fuse-activations


@register_pass
@dataclass(frozen=True)
class FuseActivations(ModulePass):
    """Moves a layer.relu/relu6 into the `activation` attribute of the op that feeds it.

    The producer is a conv1d/conv2d/depthwise/dense/add/sub/mul with activation "none" whose result
    has no other user. Float ops always fuse; int8 ops only when the activation's output
    quantization equals the producer's (then clamping the producer's output is the same function).

        %c = layer.dense %x {kernel = dense_resource<fc.k>} : tensor<1x16xf32>
        %r = layer.relu %c : tensor<1x16xf32>
      becomes
        %c = layer.dense %x {kernel = dense_resource<fc.k>, activation = "relu"} : tensor<1x16xf32>
    """

    name: ClassVar[str] = "fuse-activations"

    def apply(self, ctx: Context, module: Module) -> None:
        from ml4f.dialects import layer

        acts = {layer.Relu: "relu", layer.Relu6: "relu6"}
        producers = (layer.Conv1D, layer.Conv2D, layer.DepthwiseConv1D, layer.DepthwiseConv2D,
                     layer.Dense, layer.Add, layer.Sub, layer.Mul)
        for model in _models(module):
            for act in list(model.body.block.ops):
                kind = acts.get(type(act))
                if kind is None:
                    continue
                prod = act.x.op
                if not isinstance(prod, producers) or prod.activation != "none" or not _sole_user(prod):
                    continue
                if (prod.quantized or act.quantized) and prod.result.type != act.result.type:
                    continue
                _set_attrs(prod, activation=kind)
                Rewriter.erase_forwarding(act, prod.result)


# ----------------------------------------------------------------------------- canonicalize


@register_pass
@dataclass(frozen=True)
class Canonicalize(ModulePass):
    """Removes ops without effect: dropout, reshape/flatten chains (one op left), identity reshapes.

    A chain of reshape/flatten ops reads its source directly and becomes one layer.flatten when the
    result is [1, N] (not already the source's shape), else one layer.reshape; a reshape or flatten
    to the shape it already has disappears, and so does layer.dropout (identity at inference). Only
    ops that keep the element type are touched (an int8 op with another output quantization would
    requantize).

        %d = layer.dropout %x {rate = 0.25} : tensor<1x4x4x2xf32>
        %r = layer.reshape %d : tensor<1x16x2xf32>
        %f = layer.flatten %r : tensor<1x32xf32>
      becomes
        %f = layer.flatten %x : tensor<1x32xf32>
    """

    name: ClassVar[str] = "canonicalize"

    def apply(self, ctx: Context, module: Module) -> None:
        from ml4f.dialects import layer

        shape_ops = (layer.Reshape, layer.Flatten)
        for model in _models(module):
            block = model.body.block
            for op in list(block.ops):
                if isinstance(op, layer.Dropout) and op.result.type == op.x.type:
                    Rewriter.erase_forwarding(op, op.x)
                    continue
                if not isinstance(op, shape_ops):
                    continue
                if op.result.type == op.x.type:
                    Rewriter.erase_forwarding(op, op.x)
                    continue
                # Ops are visited in order, so a producing reshape is already collapsed: one step.
                src = op.x.op
                # Only chains that keep the element type (an int8 reshape may not requantize).
                if (isinstance(src, shape_ops)
                        and src.x.type.elem == src.result.type.elem == op.result.type.elem):
                    op.set_operand(0, src.x)
                    if not src.result.uses:
                        block.erase(src)
                out, inp = op.result.type, op.x.type
                if out == inp:
                    Rewriter.erase_forwarding(op, op.x)
                    continue
                want = layer.Flatten if len(out.shape) == 2 and out.shape[0] == 1 else layer.Reshape
                if type(op) is not want:
                    new = want([op.x], [out], {}, loc=op.loc)
                    origin = op.origin
                    Rewriter.replace_op(op, [new])
                    new.origin = origin  # a rewrite within the dialect, not a lowering


# ----------------------------------------------------------------------------- convert-weights


@register_pass
@dataclass(frozen=True)
class ConvertWeights(ModulePass):
    """Stores every float weight of the float layer ops as `type` (f16 or f32), rounding to nearest even.

    Only the storage changes: the references and the generated code widen f16 weights to f32 when
    they load them, so the model computes with f16-rounded weights in float32. Run it after
    fold-batchnorm, so that the folded kernel is rounded once. int8 ops keep their weights. A
    resource shared by several ops is converted once and stays shared.

        %y = layer.dense %x {kernel = dense_resource<fc.k>} : tensor<1x4xf32>   (fc.k : ...xf32)
      with -p 'convert-weights{type=f16}' keeps the op and stores fc.k as tensor<...xf16>.
    """

    name: ClassVar[str] = "convert-weights"
    type: str = "f16"

    def apply(self, ctx: Context, module: Module) -> None:
        from ml4f.compiler.diagnostics import CompileError
        from ml4f.compiler.types import f16

        targets = {"f16": f16, "f32": f32}
        if self.type not in targets:
            raise CompileError(f"pass 'convert-weights' option 'type' must be f16 or f32, got '{self.type}'")
        elem = targets[self.type]
        converted: dict[int, Resource] = {}
        for model in _models(module):
            for op in model.body.block.ops:
                if getattr(op, "quantized", False):
                    continue
                for key, v in list(op.attributes.items()):
                    if not isinstance(v, Resource) or not isinstance(v.type.elem, FloatType) or \
                            v.type.elem == elem:
                        continue
                    if id(v) not in converted:
                        converted[id(v)] = Resource(v.name, TensorType(v.type.shape, elem),
                                                    v.array().astype(np.float16 if elem == f16 else np.float32))
                    op.attributes[key] = converted[id(v)]
