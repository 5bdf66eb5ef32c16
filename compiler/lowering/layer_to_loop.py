"""lower-to-loops: the layer dialect to loop nests over one arena (float32 activations).

Every `layer.model` becomes a `loop.func`: one `loop.alloc` per tensor (reshape, flatten and
dropout reuse their input's buffer), one `loop.weights` per weight resource, one `loop.kernel` per
layer. Each layer op has a short pattern in `PATTERNS` built from four shared helpers:
`elementwise` (any broadcasting element-wise op), `windowed` (convolution, depthwise convolution
and pooling, 1-D and 2-D), `matvec` (dense) and `copy` (concat, padding, cropping, upsampling).

Activations and batch-norm scale/shift that follow a layer as the only user of its result are
fused into the layer's store (an "epilogue"), so they cost no pass over memory. A max pooling
that follows a convolution that way, with windows that tile the convolution's output, is folded
into it: one accumulator per window tap, the stored value their max. With
`lower-to-loops{fuse=false}` every layer op gets a kernel of its own instead, and the `fuse` pass
(compiler/transforms/loop_fuse.py) performs the same fusion on the loop dialect, visibly. 'same' padding is
handled by loop bounds: the output range of each axis is split into segments whose valid kernel
window is the same, and each segment gets its own nest with constant bounds, so no padded copy
of the input is made and no load ever falls outside the input. A tensor that a windowed op
writes and only 1-D (or k x 1) convolutions or depthwise convolutions read is stored channel-major
(`Emitter.channel_major`); a depthwise convolution over it takes its kernel laid out by channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ml4f.compiler.context import Context
from ml4f.compiler.ir import Block, Module, Operation, Region, Resource, Value, unique_name
from ml4f.compiler.passes import ModulePass, register_pass
from ml4f.compiler.types import FloatType, TensorType, Type, f16, f32, i32, index

# ----------------------------------------------------------------------------- affine indices


class Aff:
    """An affine index: const + sum(coef * iv) over loop induction variables."""

    __slots__ = ("const", "terms")

    def __init__(self, const: int = 0, terms: dict[Value, int] | None = None):
        self.const = int(const)
        self.terms = {v: c for v, c in (terms or {}).items() if c != 0}

    @staticmethod
    def of(x: Aff | int) -> Aff:
        return x if isinstance(x, Aff) else Aff(x)

    def __add__(self, other: Aff | int) -> Aff:
        o = Aff.of(other)
        terms = dict(self.terms)
        for v, c in o.terms.items():
            terms[v] = terms.get(v, 0) + c
        return Aff(self.const + o.const, terms)

    __radd__ = __add__

    def __sub__(self, other: Aff | int) -> Aff:
        return self + Aff.of(other) * -1

    def __mul__(self, k: int) -> Aff:
        return Aff(self.const * k, {v: c * k for v, c in self.terms.items()})

    __rmul__ = __mul__


class TensorBuf:
    """A tensor's buffer value and its logical shape (N, spatial..., C): row-major, or channel-major
    (C outermost, then the spatial dimensions) when its loop.alloc says so."""

    def __init__(self, value: Value, shape: Sequence[int]):
        self.value = value
        self.shape = tuple(shape)

    def strides(self) -> list[int]:
        s, out = 1, []
        if getattr(self.value.op, "channel_major", False) and len(self.shape) >= 3:
            for d in reversed(self.shape[1:-1]):
                out.append(s)
                s *= d
            return [s * self.shape[-1], *out[::-1], s]
        for d in reversed(self.shape):
            out.append(s)
            s *= d
        return out[::-1]

    def at(self, *idx: Aff | int) -> Aff:
        assert len(idx) == len(self.shape), (idx, self.shape)
        total = Aff()
        for i, s in zip(idx, self.strides()):
            total = total + Aff.of(i) * s
        return total


# ----------------------------------------------------------------------------- emitting ops


class Emitter:
    """Appends loop ops (each with `origin` = the layer op) at an insertion point that moves into
    loops as they are opened."""

    def __init__(self, origin: Operation, block: Block):
        from ml4f.dialects import loop

        self.L = loop
        self.origin = origin
        self.stack = [block]
        self.consts: dict[tuple[float, str], Value] = {}

    def emit(self, op: Operation, hint: str | None = None) -> Operation:
        op.origin = self.origin
        op.loc = self.origin.loc
        if hint and op.results:
            op.results[0].name_hint = hint
        self.stack[-1].append(op)
        return op

    def value(self, cls: type[Operation], *operands: Value, type: Type = f32, hint: str | None = None,
              **attrs: object) -> Value:
        return self.emit(cls(list(operands), [type], attrs), hint).result

    @contextmanager
    def loop(self, lb: int, ub: int, name: str = "i") -> Iterator[Aff]:
        """A `loop.for` over [lb, ub); a single-iteration range emits no loop (the index is lb)."""
        if ub - lb == 1:
            yield Aff(lb)
            return
        block = Block([index], [name])
        self.emit(self.L.For([], [], {"lb": lb, "ub": ub, "step": 1}, regions=[Region([block])]))
        self.stack.append(block)
        try:
            yield Aff(0, {block.args[0]: 1})
        finally:
            self.stack.pop()

    @contextmanager
    def loops(self, ranges: Sequence[tuple[int, int, str]]) -> Iterator[list[Aff]]:
        with ExitStack() as stack:
            yield [stack.enter_context(self.loop(lb, ub, name)) for lb, ub, name in ranges]

    # -- memory

    def load(self, buf: TensorBuf | Value, idx: Aff, hint: str | None = None) -> Value:
        v = buf.value if isinstance(buf, TensorBuf) else buf
        ivs = list(idx.terms)
        elem = v.type.elem
        return self.value(self.L.Load, v, *ivs, type=f32 if isinstance(elem, FloatType) else i32,
                          hint=hint, offset=idx.const, strides=[idx.terms[i] for i in ivs])

    def store(self, val: Value, buf: TensorBuf, idx: Aff) -> None:
        ivs = list(idx.terms)
        self.emit(self.L.Store([val, buf.value, *ivs], [], {
            "offset": idx.const, "strides": [idx.terms[i] for i in ivs]}))

    # -- scalars

    def const(self, x: float, type: Type = f32) -> Value:
        """A constant, emitted once per kernel at its top (it then lives in one register)."""
        key = (float(x), str(type))
        if key not in self.consts:
            op = self.L.Const([], [type], {"value": float(x)}, origin=self.origin)
            op.loc = self.origin.loc
            self.stack[0].insert(len(self.consts), op)
            self.consts[key] = op.result
        return self.consts[key]

    def add(self, a: Value, b: Value) -> Value:
        return self.value(self.L.AddF, a, b)

    def sub(self, a: Value, b: Value) -> Value:
        return self.value(self.L.SubF, a, b)

    def mul(self, a: Value, b: Value) -> Value:
        return self.value(self.L.MulF, a, b)

    def div(self, a: Value, b: Value) -> Value:
        return self.value(self.L.DivF, a, b)

    def max(self, a: Value, b: Value) -> Value:
        return self.value(self.L.MaxF, a, b)

    def min(self, a: Value, b: Value) -> Value:
        return self.value(self.L.MinF, a, b)

    def exp(self, a: Value) -> Value:
        return self.value(self.L.ExpF, a)

    def fma(self, a: Value, b: Value, c: Value) -> Value:
        return self.value(self.L.FmaF, a, b, c)

    def acc(self, init: Value, hint: str = "acc") -> Value:
        from ml4f.dialects.loop import AccType

        return self.value(self.L.Acc, init, type=AccType(init.type), hint=hint)

    def acc_update(self, cls: type[Operation], acc: Value, *vals: Value) -> None:
        self.emit(cls([acc, *vals], [], {}))

    def acc_read(self, acc: Value) -> Value:
        return self.value(self.L.AccRead, acc, type=acc.type.elem)


# ----------------------------------------------------------------------------- lowering state


@dataclass
class LayerLowering:
    """One layer op being lowered: its emitter, input buffers, output buffer and fused epilogue."""

    op: Operation
    em: Emitter
    ins: list[TensorBuf]
    out: TensorBuf
    state: ModelLowering
    fused: list[Operation]
    pool: Operation | None = None     # a max pooling folded into this convolution (`pool_window`)

    def finish(self, v: Value, channel: Aff) -> Value:
        """The op's own activation, then each fused op's element function."""
        act = self.op.get_attr("activation") if "activation" in self.op._attr_defs else "none"
        v = activation(self.em, act, v)
        for f in self.fused:
            if f is not self.pool:
                v = UNARY[type(f).__name__](self, f, v, channel)
        return v

    def pool_window(self) -> tuple[int, int]:
        """The folded max pooling's window as (h, w) (1-D: h = 1), or (1, 1)."""
        if self.pool is None:
            return (1, 1)
        k = tuple(self.pool.pool_size)
        return (int(k[0]), int(k[1])) if len(k) == 2 else (1, int(k[0]))

    def weights(self, res: Resource | None) -> TensorBuf | None:
        return self.state.weights(res) if res is not None else None


class ModelLowering:
    """Lowers one layer.model into a loop.func; keeps buffers and weights (no global state)."""

    def __init__(self, model: Operation, fuse: bool = True, pool: bool = True):
        from ml4f.dialects import layer, loop

        self.layer, self.L = layer, loop
        self.model = model
        self.fuse = fuse
        self.fold_pools = fuse and pool
        self.block = Block()
        self.allocs: list[Operation] = []
        self.weight_ops: list[Operation] = []
        self.weight_bufs: dict[int, TensorBuf] = {}
        # Weights derived from a layer op (batch-norm scale/shift), made once per op and name even
        # when the op is lowered into several loop nests ('same' padding segments).
        self.derived: dict[tuple[int, str], TensorBuf] = {}
        self.bufs: dict[int, TensorBuf] = {}
        self.kernels: list[Operation] = []
        self.kernel_names: set[str] = set()

    def alloc(self, value: Value, origin: Operation, input_index: int = -1) -> TensorBuf:
        from ml4f.dialects.loop import BufType

        t = value.type
        attrs = {"input": input_index} if input_index >= 0 else {}
        if input_index < 0 and self.channel_major(value, origin):
            attrs["channel_major"] = True
        op = self.L.Alloc([], [BufType(t.size, t.elem)], attrs, origin=origin)
        op.results[0].name_hint = value.name_hint or "t"
        self.allocs.append(op)
        buf = TensorBuf(op.result, t.shape)
        self.bufs[id(value)] = buf
        return buf

    def channel_major(self, value: Value, origin: Operation) -> bool:
        """Store a tensor channel-major when a windowed op (convolution, pooling) writes it and only
        convolutions with a one-axis window or depthwise convolutions read it (1-D, or a k x 1 /
        1 x k kernel): a step of their input-channel loop, or a depthwise tile of one channel's
        positions, then reads consecutive words (one VLDM, not a VLDR each). Not for 1x1
        convolutions (their producer's VSTM of a channel run would become single stores) nor other
        2-D windows (channels-last lets their channel and column loops merge). Model outputs stay
        channels-last."""
        layer = self.layer
        users = [u for u, _ in value.uses]
        if not users or id(value) in {id(v) for v in self.model.output.operands} or \
                len(value.type.shape) < 3 or not isinstance(origin, _windowed_classes()):
            return False
        for u in users:
            if isinstance(u, (layer.Conv1D, layer.DepthwiseConv1D)):
                continue
            if isinstance(u, layer.DepthwiseConv2D) and min(u.result.type.shape[1:3]) >= 4:
                continue   # (smaller outputs are mostly border positions, which read channel runs)
            if not isinstance(u, layer.Conv2D) or min(u.window()) != 1 or max(u.window()) == 1:
                return False
        return True

    def weights(self, res: Resource) -> TensorBuf:
        from ml4f.dialects.loop import BufType

        if id(res) not in self.weight_bufs:
            if not isinstance(res.type.elem, FloatType):
                raise self.model.error(f"weights '{res.name}' are {res.type.elem}; lower-to-loops "
                                       "takes f32 or f16 weights")
            op = self.L.WeightsBuf([], [BufType(res.type.size, res.type.elem)], {"data": res},
                                   origin=self.model)
            op.results[0].name_hint = res.name
            self.weight_ops.append(op)
            self.weight_bufs[id(res)] = TensorBuf(op.result, res.type.shape)
        return self.weight_bufs[id(res)]

    def new_weights(self, owner: Operation, name: str, data: np.ndarray) -> TensorBuf:
        """A weight buffer over data derived from `owner` (e.g. batch-norm scale and shift), in f32."""
        key = (id(owner), name)
        if key not in self.derived:
            data = np.asarray(data, dtype=np.float32)
            self.derived[key] = self.weights(Resource(name, TensorType(data.shape, f32), data))
        return self.derived[key]

    def kernel_name(self, op: Operation) -> str:
        return unique_name(op.loc.layer or op.result.name_hint or op.name.split(".")[1], self.kernel_names)

    def run(self) -> Operation:
        layer = self.layer
        model = self.model
        outputs = {id(v) for v in model.output.operands}
        consumed: set[int] = set()
        for i, inp in enumerate(model.inputs):
            if not isinstance(inp.result.type.elem, FloatType) or inp.result.type.elem.bits != 32:
                raise inp.error(f"lower-to-loops takes f32 inputs, got {inp.result.type}")
            self.alloc(inp.result, inp, i)
        for op in model.body.block.ops:
            if isinstance(op, (layer.Input, layer.Output)) or id(op) in consumed:
                continue
            pattern = PATTERNS.get(type(op).__name__)
            if op.quantized:
                raise op.error("int8 layers are not lowered to loops yet (only float32 models)")
            if pattern is None:
                raise op.error("no lowering to the loop dialect for this op")
            if pattern.alias:
                self.bufs[id(op.result)] = TensorBuf(self.bufs[id(op.x)].value, op.result.type.shape)
                continue
            fused = self.fusable_chain(op, outputs) if pattern.epilogue and self.fuse else []
            pool = self.foldable_pool(op, fused, outputs) if self.fold_pools else None
            if pool is not None:
                fused = [*fused, pool, *self.fusable_chain(pool, outputs)]
            consumed.update(id(f) for f in fused)
            last = fused[-1] if fused else op
            out = self.alloc(last.result, op)
            name = self.kernel_name(op)
            kernel = self.L.Kernel([], [], {"inplace": True} if pattern.inplace else {},
                                   regions=[Region([Block()])], origin=op, symbol=name)
            kernel.loc = op.loc
            em = Emitter(op, kernel.body.block)
            ins = [self.bufs[id(v)] for v in op.operands]
            pattern.fn(LayerLowering(op, em, ins, out, self, fused, pool))
            self.kernels.append(kernel)
        func = self.L.Func([], [], {
            "input_shapes": [list(i.result.type.shape) for i in model.inputs],
            "output_shapes": [list(v.type.shape) for v in model.output.operands]},
            regions=[Region([self.block])], origin=model, symbol=model.symbol)
        func.loc = model.loc
        for op in [*self.allocs, *self.weight_ops, *self.kernels]:
            self.block.append(op)
        ret = self.L.Return([self.bufs[id(v)].value for v in model.output.operands], [], origin=model)
        self.block.append(ret)
        return func

    def fusable_chain(self, op: Operation, outputs: set[int]) -> list[Operation]:
        """Element-wise ops that can run in `op`'s store: each the only user of the previous result,
        which must not be a model output."""
        chain: list[Operation] = []
        cur = op
        while len(cur.result.uses) == 1 and id(cur.result) not in outputs:
            user = cur.result.uses[0][0]
            if type(user).__name__ not in UNARY or user.quantized:
                break
            chain.append(user)
            cur = user
        return chain

    def foldable_pool(self, op: Operation, chain: list[Operation], outputs: set[int]) -> Operation | None:
        """A max pooling that can be computed inside convolution `op`'s loop nest: the only user
        of the conv's (or its element-wise chain's) result, with windows that tile the conv's
        output (pool size = strides, 'valid'), after a conv whose every output position sees the
        whole kernel (one window segment) and a chain of non-decreasing functions, which commute
        with max. The conv then computes only the positions the windows read, and each pooled
        value is the max of a few accumulators in registers: no intermediate buffer, no second
        pass over memory."""
        layer = self.layer
        if not isinstance(op, _conv_classes()):
            return None
        if op.get_attr("activation") not in ("none", "relu", "relu6"):
            return None
        for f in chain:
            name = type(f).__name__
            if not (name in ("Relu", "Relu6", "Sigmoid", "Tanh") or (name == "LeakyRelu" and f.alpha >= 0)):
                return None
        last = chain[-1] if chain else op
        if len(last.result.uses) != 1 or id(last.result) in outputs:
            return None
        user = last.result.uses[0][0]
        if not isinstance(user, (layer.MaxPool1D, layer.MaxPool2D)) or user.quantized:
            return None
        if user.padding != "valid" or tuple(user.pool_size) != tuple(user.strides):
            return None
        win = Window.of(op, op.window(), op.strides, op.dilation)
        if len(list(win.segments())) != 1:
            return None
        return user


# ----------------------------------------------------------------------------- element functions


def activation(em: Emitter, act: str, v: Value) -> Value:
    """The fused `activation` attribute of conv, dense and the binary ops."""
    if act == "relu":
        return em.max(v, em.const(0.0))
    if act == "relu6":
        return em.min(em.max(v, em.const(0.0)), em.const(6.0))
    return v


def _leaky(low: LayerLowering, op: Operation, x: Value, ch: Aff) -> Value:
    em, a = low.em, op.alpha
    ax = em.mul(x, em.const(a))
    if 0.0 <= a <= 1.0:
        return em.max(x, ax)  # max(x, a*x) equals the select for 0 <= a <= 1
    c = em.value(em.L.CmpF, x, em.const(0.0), type=i32, pred="ge")
    return em.value(em.L.Select, c, x, ax)


def _sigmoid(em: Emitter, x: Value) -> Value:
    one = em.const(1.0)
    return em.div(one, em.add(one, em.exp(em.value(em.L.NegF, x))))


def _tanh(em: Emitter, x: Value) -> Value:
    # 1 - 2 / (exp(2x) + 1): exact limits at +-inf (exp overflows to inf, or underflows to 0).
    one = em.const(1.0)
    e = em.exp(em.mul(x, em.const(2.0)))
    return em.sub(one, em.div(em.const(2.0), em.add(e, one)))


def _hard_swish(em: Emitter, x: Value) -> Value:
    # x * relu6(x + 3) / 6, the division as a product with 1/6 (a VMUL, not a 14-cycle VDIV;
    # within two roundings of the quotient)
    r = em.min(em.max(em.add(x, em.const(3.0)), em.const(0.0)), em.const(6.0))
    return em.mul(x, em.mul(r, em.const(float(np.float32(1.0 / 6.0)))))


def _batch_norm(low: LayerLowering, op: Operation, x: Value, ch: Aff) -> Value:
    scale, shift = batch_norm_params(op)
    name = op.loc.layer or op.result.name_hint or "bn"
    s = low.state.new_weights(op, f"{name}.scale", scale)
    b = low.state.new_weights(op, f"{name}.shift", shift)
    em = low.em
    return em.fma(x, em.load(s, ch, "scale"), em.load(b, ch, "shift"))


def batch_norm_params(op: Operation) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (scale, shift) with x * scale + shift == batch_norm(x), computed in float64."""
    res = [op.get_attr(k) for k in ("gamma", "beta", "mean", "variance")]
    if any(r.data is None for r in res):
        raise op.error("needs its weights to fold scale and shift (the file elides them)")
    g, b, m, v = (np.asarray(r.array(), np.float64) for r in res)
    scale = g / np.sqrt(v + op.epsilon)
    return scale.astype(np.float32), (b - m * scale).astype(np.float32)


# Element functions of the unary layer ops, by class name: (lowering, op, x, channel) -> y.
UNARY: dict[str, Callable[[LayerLowering, Operation, Value, Aff], Value]] = {
    "Relu": lambda low, op, x, ch: activation(low.em, "relu", x),
    "Relu6": lambda low, op, x, ch: activation(low.em, "relu6", x),
    "LeakyRelu": _leaky,
    "Sigmoid": lambda low, op, x, ch: _sigmoid(low.em, x),
    "Tanh": lambda low, op, x, ch: _tanh(low.em, x),
    "HardSwish": lambda low, op, x, ch: _hard_swish(low.em, x),
    "BatchNorm": _batch_norm,
}


# ----------------------------------------------------------------------------- shared helpers


def _coalesce(shape: Sequence[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent axes that every operand walks contiguously (the last axis stays separate so
    the channel index is at hand for per-channel epilogues)."""
    out_shape, out_strides = [shape[0]], [[s[0]] for s in strides]
    for ax in range(1, len(shape)):
        if ax < len(shape) - 1 and all(o[-1] == s[ax] * shape[ax] for o, s in zip(out_strides, strides)):
            out_shape[-1] *= shape[ax]
            for o, s in zip(out_strides, strides):
                o[-1] = s[ax]
        else:
            out_shape.append(shape[ax])
            for o, s in zip(out_strides, strides):
                o.append(s[ax])
    return out_shape, out_strides


def elementwise(low: LayerLowering, fn: Callable[[list[Value], Aff], Value]) -> None:
    """out[i] = fn(inputs at i (broadcast), channel of i) over the output's shape."""
    shape = low.out.shape
    strides = []
    for buf in [low.out, *low.ins]:
        padded = (1,) * (len(shape) - len(buf.shape)) + buf.shape
        full = TensorBuf(buf.value, padded).strides()
        strides.append([0 if d == 1 and n != 1 else s for d, n, s in zip(padded, shape, full)])
    cshape, cstrides = _coalesce(shape, strides)
    em = low.em
    with em.loops([(0, n, f"i{k}") for k, n in enumerate(cshape)]) as ivs:
        def at(k: int) -> Aff:
            return sum((iv * s for iv, s in zip(ivs, cstrides[k])), Aff())
        vals = [em.load(b, at(k + 1), "x") for k, b in enumerate(low.ins)]
        low.em.store(low.finish(fn(vals, ivs[-1]), ivs[-1]), low.out, at(0))


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def window_segments(size: int, out: int, k: int, stride: int, dilation: int,
                    pad: int) -> list[tuple[int, int, int, int]]:
    """Split [0, out) into runs of output positions whose in-bounds kernel taps are the same:
    (o_begin, o_end, k_begin, k_end), with input index o * stride - pad + k * dilation."""
    segs: list[tuple[int, int, int, int]] = []
    for o in range(out):
        base = o * stride - pad
        k0 = _ceil_div(-base, dilation) if base < 0 else 0
        k1 = min(k, (size - 1 - base) // dilation + 1) if size - 1 - base >= 0 else 0
        k1 = max(k1, k0)
        if segs and segs[-1][2:] == (k0, k1) and segs[-1][1] == o:
            segs[-1] = (segs[-1][0], o + 1, k0, k1)
        else:
            segs.append((o, o + 1, k0, k1))
    return segs


@dataclass
class Window:
    """The geometry of a sliding window over NHWC (1-D ops use H = 1)."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    k_hw: tuple[int, int]
    strides: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int]

    @staticmethod
    def of(op: Operation, k: Sequence[int], strides: Sequence[int], dilation: Sequence[int]) -> Window:
        from ml4f.dialects.layer import same_pad_before

        def hw(t: Sequence[int]) -> tuple[int, int]:
            return (int(t[0]), int(t[1])) if len(t) == 2 else (1, int(t[0]))

        in_hw, out_hw = hw(op.in_type.shape[1:-1]), hw(op.out_type.shape[1:-1])
        k_hw, st, di = hw(k), hw(strides), hw(dilation)
        pads = tuple(same_pad_before(n, kk, s, d) if op.padding == "same" else 0
                     for n, kk, s, d in zip(in_hw, k_hw, st, di))
        return Window(in_hw, out_hw, k_hw, st, di, (pads[0], pads[1]))

    def segments(self) -> Iterator[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
        hs = window_segments(self.in_hw[0], self.out_hw[0], self.k_hw[0], self.strides[0],
                             self.dilation[0], self.pads[0])
        ws = window_segments(self.in_hw[1], self.out_hw[1], self.k_hw[1], self.strides[1],
                             self.dilation[1], self.pads[1])
        for h in hs:
            for w in ws:
                yield h, w

    def in_index(self, oy: Aff, ox: Aff, ky: Aff, kx: Aff) -> tuple[Aff, Aff]:
        return (oy * self.strides[0] - self.pads[0] + ky * self.dilation[0],
                ox * self.strides[1] - self.pads[1] + kx * self.dilation[1])


def windowed(low: LayerLowering, win: Window, channels: Sequence[tuple[int, str]],
             init: Callable[[list[Aff]], Value], reduce: Callable[[Value, list[Aff], Aff, Aff], None],
             result: Callable[[Value, list[Aff], int], Value], out_channel: Callable[[list[Aff]], Aff],
             reduce_channels: Sequence[tuple[int, str]] = ()) -> None:
    """The nest shared by convolution, depthwise convolution and pooling: for each segment of
    output positions, for each output channel (the `channels` loops), an accumulator starts at
    `init`, `reduce` adds the window's taps (plus the `reduce_channels` loops, e.g. input channels),
    and `result` turns it into the stored value."""
    em = low.em
    ph, pw = low.pool_window()    # a folded max pooling: the max of ph x pw windows per output
    oh, ow = win.out_hw[0] // ph, win.out_hw[1] // pw
    out4 = TensorBuf(low.out.value, (1, oh, ow, low.out.shape[-1]))
    taps = [(qy, qx) for qy in range(ph) for qx in range(pw)]
    for (oy0, oy1, ky0, ky1), (ox0, ox1, kx0, kx1) in win.segments():
        if taps != [(0, 0)]:
            (oy0, oy1), (ox0, ox1) = (0, oh), (0, ow)   # one segment (LayerLowering.foldable_pool)
        with em.loops([(oy0, oy1, "oy"), (ox0, ox1, "ox")]) as (oy, ox), \
                em.loops([(0, n, name) for n, name in channels]) as cs:
            start = init(cs)
            accs = [em.acc(start) for _ in taps]
            with em.loops([(ky0, ky1, "ky"), (kx0, kx1, "kx")]) as (ky, kx), \
                    em.loops([(0, n, name) for n, name in reduce_channels]) as rcs:
                for acc, (qy, qx) in zip(accs, taps):
                    iy, ix = win.in_index(oy * ph + qy, ox * pw + qx, ky, kx)
                    reduce(acc, [*cs, *rcs, ky, kx], iy, ix)
            vals = [result(em.acc_read(acc), cs, (ky1 - ky0) * (kx1 - kx0)) for acc in accs]
            v = vals[0]
            for other in vals[1:]:
                v = em.max(v, other)
            oc = out_channel(cs)
            em.store(low.finish(v, oc), out4, out4.at(0, oy, ox, oc))


def copy(low: LayerLowering, src: TensorBuf, dst: TensorBuf, dst_start: Sequence[int],
         repeat: Sequence[int] | None = None) -> None:
    """dst[start + i * repeat + r] = src[i] for every index i of src (r over 0..repeat-1)."""
    em = low.em
    rep = list(repeat or [1] * len(src.shape))
    ranges: list[tuple[int, int, str]] = []
    for k, (n, r) in enumerate(zip(src.shape, rep)):
        ranges += [(0, n, f"i{k}"), (0, r, f"r{k}")]
    with em.loops(ranges) as ivs:
        s_idx = ivs[0::2]
        d_idx = [st + i * r + j for st, i, r, j in zip(dst_start, ivs[0::2], rep, ivs[1::2])]
        em.store(em.load(src, src.at(*s_idx), "x"), dst, dst.at(*d_idx))


# ----------------------------------------------------------------------------- patterns


@dataclass(frozen=True)
class Pattern:
    """How to lower one layer op class: `fn`, and whether the op may take a fused epilogue, runs in
    place (planner hint) or is a pure alias of its input (reshape)."""

    fn: Callable[[LayerLowering], None] = lambda low: None
    epilogue: bool = False
    inplace: bool = False
    alias: bool = False


def lower_conv(low: LayerLowering) -> None:
    op = low.op
    win = Window.of(op, op.window(), op.strides, op.dilation)
    x = low.ins[0]
    # a depthwise tile over channel-major input takes one channel's positions: its window's
    # weights as consecutive words, the kernel laid out by channel
    by_channel = op.depthwise and getattr(x.value.op, "channel_major", False)
    k = low.weights(_channels_first(op.kernel) if by_channel else op.kernel)
    bias = low.weights(op.bias)
    c_in = x.shape[-1]
    x4 = TensorBuf(x.value, (1, *win.in_hw, c_in))
    em = low.em
    if op.depthwise:
        m = op.depth_multiplier
        if by_channel:
            k3 = TensorBuf(k.value, k.shape)
            kw = win.k_hw[1]
            w_at = lambda ch, ky, kx: k3.at(ch, ky * kw + kx)
        else:
            k3 = TensorBuf(k.value, (*win.k_hw, c_in * m))
            w_at = lambda ch, ky, kx: k3.at(ky, kx, ch)
        channels = [(c_in, "c"), (m, "m")]
        oc = lambda cs: cs[0] * m + cs[1]
        rch: list[tuple[int, str]] = []

        def reduce(acc: Value, ivs: list[Aff], iy: Aff, ix: Aff) -> None:
            c, mm, ky, kx = ivs
            em.acc_update(em.L.AccFma, acc, em.load(x4, x4.at(0, iy, ix, c), "x"),
                          em.load(k3, w_at(c * m + mm, ky, kx), "w"))
    else:
        k4 = TensorBuf(k.value, (op.out_channels(), *win.k_hw, c_in))
        channels = [(op.out_channels(), "oc")]
        oc = lambda cs: cs[0]
        rch = [(c_in, "ci")]

        def reduce(acc: Value, ivs: list[Aff], iy: Aff, ix: Aff) -> None:
            o, ci, ky, kx = ivs
            em.acc_update(em.L.AccFma, acc, em.load(x4, x4.at(0, iy, ix, ci), "x"),
                          em.load(k4, k4.at(o, ky, kx, ci), "w"))

    def init(cs: list[Aff]) -> Value:
        return em.load(bias, oc(cs), "b") if bias is not None else em.const(0.0)

    windowed(low, win, channels, init, reduce, lambda v, cs, n: v, oc, rch)


def _channels_first(res: Resource) -> Resource:
    """A depthwise kernel (window..., C*m) as (C*m, taps): each channel's taps consecutive. In f16
    an odd number of taps gets a zero after them, so that every channel starts on a word and its
    taps load as words (two halves each) rather than one LDRH + VMOV per tap."""
    shape = res.type.shape
    taps = math.prod(shape[:-1])
    pad = taps % 2 if res.type.elem == f16 else 0
    data = None
    if res.data is not None:
        data = np.asarray(res.data).reshape(taps, shape[-1]).T
        data = np.concatenate([data, np.zeros((shape[-1], pad), data.dtype)], axis=1)
    return Resource(res.name + ".by_channel", TensorType((shape[-1], taps + pad), res.type.elem), data)


def lower_pool(low: LayerLowering) -> None:
    op = low.op
    win = Window.of(op, op.pool_size, op.strides, [1] * len(op.strides))
    x = low.ins[0]
    x4 = TensorBuf(x.value, (1, *win.in_hw, x.shape[-1]))
    em = low.em
    is_max = "Max" in type(op).__name__
    update = em.L.AccMax if is_max else em.L.AccAdd

    def reduce(acc: Value, ivs: list[Aff], iy: Aff, ix: Aff) -> None:
        em.acc_update(update, acc, em.load(x4, x4.at(0, iy, ix, ivs[0]), "x"))

    def result(v: Value, cs: list[Aff], n: int) -> Value:
        return v if is_max else em.mul(v, em.const(np.float32(1.0) / np.float32(n)))

    windowed(low, win, [(x.shape[-1], "c")], lambda cs: em.const(-math.inf if is_max else 0.0),
             reduce, result, lambda cs: cs[0])


def lower_global_pool(low: LayerLowering) -> None:
    op, em, x = low.op, low.em, low.ins[0]
    c = x.shape[-1]
    n = x.value.type.size // c
    is_max = "Max" in type(op).__name__
    with em.loop(0, c, "c") as ch:
        acc = em.acc(em.const(-math.inf if is_max else 0.0))
        with em.loop(0, n, "p") as p:
            em.acc_update(em.L.AccMax if is_max else em.L.AccAdd, acc, em.load(x, p * c + ch, "x"))
        v = em.acc_read(acc)
        if not is_max:
            v = em.mul(v, em.const(np.float32(1.0) / np.float32(n)))
        em.store(low.finish(v, ch), low.out, ch)


def lower_dense(low: LayerLowering) -> None:
    op, em, x = low.op, low.em, low.ins[0]
    n_in, n_out = op.kernel.type.shape[1], op.kernel.type.shape[0]
    rows = x.value.type.size // n_in
    k, bias = low.weights(op.kernel), low.weights(op.bias)
    with em.loops([(0, rows, "r"), (0, n_out, "o")]) as (r, o):
        acc = em.acc(em.load(bias, o, "b") if bias is not None else em.const(0.0))
        with em.loop(0, n_in, "i") as i:
            em.acc_update(em.L.AccFma, acc, em.load(x, r * n_in + i, "x"), em.load(k, o * n_in + i, "w"))
        em.store(low.finish(em.acc_read(acc), o), low.out, r * n_out + o)


def lower_softmax(low: LayerLowering) -> None:
    op, em, x, out = low.op, low.em, low.ins[0], low.out
    c = x.shape[-1]
    rows = x.value.type.size // c
    beta = op.beta

    def scaled(v: Value) -> Value:
        return v if beta == 1.0 else em.mul(v, em.const(beta))

    with em.loop(0, rows, "r") as r:
        m = em.acc(em.const(-math.inf), "max")
        with em.loop(0, c, "c") as ch:
            em.acc_update(em.L.AccMax, m, scaled(em.load(x, r * c + ch, "x")))
        mv = em.acc_read(m)
        s = em.acc(em.const(0.0), "sum")
        with em.loop(0, c, "c") as ch:
            e = em.exp(em.sub(scaled(em.load(x, r * c + ch, "x")), mv))
            em.store(e, out, r * c + ch)
            em.acc_update(em.L.AccAdd, s, e)
        inv = em.div(em.const(1.0), em.acc_read(s))
        with em.loop(0, c, "c") as ch:
            em.store(em.mul(em.load(out, r * c + ch, "e"), inv), out, r * c + ch)


def lower_unary(low: LayerLowering) -> None:
    elementwise(low, lambda vals, ch: UNARY[type(low.op).__name__](low, low.op, vals[0], ch))


def _fold(em: Emitter, f: Callable[[Value, Value], Value]) -> Callable[[list[Value], Aff], Value]:
    def fn(vals: list[Value], ch: Aff) -> Value:
        acc = vals[0]
        for v in vals[1:]:
            acc = f(acc, v)
        return acc
    return fn


def lower_binary(low: LayerLowering) -> None:
    em = low.em
    f = {"Add": em.add, "Sub": em.sub, "Mul": em.mul}[type(low.op).__name__]
    elementwise(low, _fold(em, f))


def lower_concat(low: LayerLowering) -> None:
    ax = low.op.norm_axis()
    start = 0
    for buf in low.ins:
        copy(low, buf, low.out, [start if i == ax else 0 for i in range(len(buf.shape))])
        start += buf.shape[ax]


def lower_zero_pad(low: LayerLowering) -> None:
    em, out = low.em, low.out
    with em.loop(0, out.value.type.size, "i") as i:
        em.store(em.const(0.0), out, i)
    copy(low, low.ins[0], out, [p[0] for p in low.op.pads])


def lower_cropping(low: LayerLowering) -> None:
    # Walk the output and read the input shifted by the crops.
    x, out, em = low.ins[0], low.out, low.em
    starts = [0, *[c[0] for c in low.op.crops], 0]
    with em.loops([(0, n, f"i{k}") for k, n in enumerate(out.shape)]) as ivs:
        em.store(em.load(x, x.at(*[i + s for i, s in zip(ivs, starts)]), "x"), out, out.at(*ivs))


def _conv_classes() -> tuple[type, ...]:
    from ml4f.dialects import layer
    return (layer.Conv1D, layer.Conv2D, layer.DepthwiseConv1D, layer.DepthwiseConv2D)


def _windowed_classes() -> tuple[type, ...]:
    from ml4f.dialects import layer
    return (*_conv_classes(), layer.MaxPool1D, layer.MaxPool2D, layer.AvgPool1D, layer.AvgPool2D)


def lower_upsample(low: LayerLowering) -> None:
    copy(low, low.ins[0], low.out, [0] * len(low.out.shape), [1, *low.op.size, 1])


_CONV = Pattern(lower_conv, epilogue=True)
_POOL = Pattern(lower_pool, epilogue=True)
_UNARY = Pattern(lower_unary, epilogue=True, inplace=True)
_BINARY = Pattern(lower_binary, epilogue=True, inplace=True)
_ALIAS = Pattern(alias=True)

# Layer op class name -> pattern. A new float op that existing primitives can express needs one
# entry here (and, when it is element-wise, one in UNARY).
PATTERNS: dict[str, Pattern] = {
    "Conv2D": _CONV, "Conv1D": _CONV, "DepthwiseConv2D": _CONV, "DepthwiseConv1D": _CONV,
    "Dense": Pattern(lower_dense, epilogue=True),
    "MaxPool2D": _POOL, "MaxPool1D": _POOL, "AvgPool2D": _POOL, "AvgPool1D": _POOL,
    "GlobalAvgPool": Pattern(lower_global_pool, epilogue=True),
    "GlobalMaxPool": Pattern(lower_global_pool, epilogue=True),
    **{name: _UNARY for name in UNARY},
    "Add": _BINARY, "Sub": _BINARY, "Mul": _BINARY,
    "Softmax": Pattern(lower_softmax, inplace=True),
    "Concat": Pattern(lower_concat),
    "ZeroPad": Pattern(lower_zero_pad),
    "Cropping": Pattern(lower_cropping),
    "Upsample": Pattern(lower_upsample),
    "Reshape": _ALIAS, "Flatten": _ALIAS, "Dropout": _ALIAS,
}


# ----------------------------------------------------------------------------- the pass


@register_pass
@dataclass(frozen=True)
class LowerToLoops(ModulePass):
    """Lowers every layer.model to a loop.func (float32 models); fails on any op it cannot lower.
    With fuse=false, element-wise layers get kernels of their own instead of running in their
    producer's store (the `fuse` pass then merges them on the loop dialect). A max pooling whose
    windows tile a convolution's output is folded into the convolution (`foldable_pool`) unless
    pool=false or fuse=false; the `fuse` pass does not fold pools.

    Example: ml4f-opt --lower-to-loops model.l4f;  ml4f-opt -p 'lower-to-loops{fuse=false},fuse'
    """

    name: ClassVar[str] = "lower-to-loops"
    fuse: bool = True
    pool: bool = True

    def apply(self, ctx: Context, module: Module) -> None:
        from ml4f.dialects import layer

        for op in list(module.ops):
            if isinstance(op, layer.Model):
                func = ModelLowering(op, self.fuse, self.pool).run()
                module.body.insert_before(op, func)
                module.body.erase(op)
        left = [op for op in module.walk() if op.name.startswith("layer.")]
        if left:
            raise left[0].error("was left behind by lower-to-loops")


@register_pass
@dataclass(frozen=True)
class LowerLayerToLoop(LowerToLoops):
    """The same as lower-to-loops (MLIR-style name). Example: -p lower-layer-to-loop"""

    name: ClassVar[str] = "lower-layer-to-loop"
