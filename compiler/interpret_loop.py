"""The loop interpreter: runs a `loop.func` with NumPy, a whole loop nest at a time.

Each loop adds an array axis: its induction variable is `arange(lb, ub, step)` along that axis,
and every value computed inside the nest is an array over the enclosing loops' axes (size 1 along
the axes it does not depend on). This is exact for the dialect's semantics (iterations are
independent except through accumulators), and fast: a MobileNet-size model runs in about a second.
Accumulator updates reduce over the axes of the loops between the accumulator and the update.

Buffers are views of one byte arena at the offsets plan-memory chose, so overlapping buffers
really share bytes here; the arena starts filled with NaN bytes so a read of a never-written
element poisons the result instead of reading a lucky zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .ir import Block, Operation, Value
from .types import FloatType, numpy_dtype


class _AccState:
    __slots__ = ("depth", "kind", "value")

    def __init__(self, value: np.ndarray, depth: int):
        self.value = value
        self.depth = depth


class LoopInterpreter:
    """Executes one function; `env` maps id(Value) to an array (or an accumulator state)."""

    def __init__(self, func: Operation):
        from ml4f.dialects import loop

        self.loop = loop
        self.func = func
        self.env: dict[int, Any] = {}
        self.extents: list[int] = []
        planned = func.arena_size >= 0 and all(a.offset >= 0 for a in func.allocs)
        size = func.arena_size if planned else 0
        # 0xFF bytes are NaN as f32: reading an element nobody wrote poisons the output.
        self.arena = np.full(max(size, 1), 0xFF, dtype=np.uint8)
        self.planned = planned
        self.handlers = {
            loop.Alloc: self.alloc, loop.WeightsBuf: self.weights, loop.Kernel: self.kernel,
            loop.For: self.for_, loop.Load: self.load, loop.Store: self.store, loop.Const: self.const,
            loop.Acc: self.acc, loop.AccRead: self.acc_read, loop.AccAdd: self.acc_update,
            loop.AccMax: self.acc_update, loop.AccFma: self.acc_update,
            loop.AccSmlad: self.acc_update, loop.CmpF: self.cmpf, loop.Select: self.select,
            loop.SIToFP: self.sitofp, loop.Return: lambda op: None,
        }

    # -- running

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        func = self.func
        if len(inputs) != len(func.input_shapes):
            raise func.error(f"expects {len(func.input_shapes)} input(s), got {len(inputs)}")
        block = func.body.block
        for op in block.ops:
            if isinstance(op, (self.loop.Alloc, self.loop.WeightsBuf)):
                self.exec(op)
                if isinstance(op, self.loop.Alloc) and op.input >= 0:
                    buf = self.env[id(op.result)]
                    x = np.asarray(inputs[op.input])
                    if x.size != buf.size:
                        raise op.error(f"input {op.input} has {x.size} elements, the buffer {buf.size}")
                    buf[:] = x.reshape(-1).astype(buf.dtype)
        for op in block.ops:
            if not isinstance(op, (self.loop.Alloc, self.loop.WeightsBuf)):
                self.exec(op)
        ret = block.ops[-1]
        return [self.env[id(v)].copy().reshape(shape)
                for v, shape in zip(ret.operands, func.output_shapes)]

    def exec(self, op: Operation) -> None:
        handler = self.handlers.get(type(op))
        if handler is not None:
            handler(op)
            return
        fn = getattr(type(op), "fn", None)
        if fn is None:
            raise op.error("the loop interpreter cannot execute this op")
        with np.errstate(all="ignore"):
            y = fn(*[self.get(v) for v in op.operands])
        self.set(op.result, np.asarray(y, dtype=self.dtype(op.result)))

    def block(self, block: Block) -> None:
        for op in block.ops:
            self.exec(op)

    # -- values

    @property
    def depth(self) -> int:
        return len(self.extents)

    def get(self, v: Value) -> np.ndarray:
        a = self.env[id(v)]
        if a.ndim < self.depth:
            a = a.reshape(a.shape + (1,) * (self.depth - a.ndim))
        return a

    def set(self, v: Value, a: np.ndarray) -> None:
        if a.ndim < self.depth:
            a = a.reshape(a.shape + (1,) * (self.depth - a.ndim))
        self.env[id(v)] = a

    @staticmethod
    def dtype(v: Value) -> Any:
        return np.float32 if isinstance(v.type, FloatType) else np.int64

    # -- structure

    def alloc(self, op: Operation) -> None:
        t = op.result.type
        dt = numpy_dtype(t.elem)
        if self.planned:
            raw = self.arena[op.offset:op.offset + t.nbytes]
        else:
            raw = np.full(t.nbytes, 0xFF, dtype=np.uint8)
        self.env[id(op.result)] = raw.view(dt)

    def weights(self, op: Operation) -> None:
        if op.data.data is None:
            raise op.error(f"weights '{op.data.name}' were elided from the file; "
                           "run a file written without --elide-weights")
        self.env[id(op.result)] = np.ascontiguousarray(op.data.array()).reshape(-1)

    def kernel(self, op: Operation) -> None:
        self.block(op.body.block)

    def for_(self, op: Operation) -> None:
        n = op.trip_count
        iv = np.arange(op.lb, op.lb + n * op.step, op.step, dtype=np.int64)
        self.extents.append(n)
        self.env[id(op.iv)] = iv.reshape((1,) * (self.depth - 1) + (n,))
        self.block(op.body.block)
        self.extents.pop()

    # -- memory

    def index(self, op: Operation) -> np.ndarray:
        idx = np.asarray(op.offset, dtype=np.int64).reshape((1,) * self.depth)
        for v, s in zip(op.ivs, op.strides):
            idx = idx + self.get(v) * s
        return idx

    def check_bounds(self, op: Operation, idx: np.ndarray, buf: np.ndarray) -> None:
        if idx.size and (idx.min() < 0 or idx.max() >= buf.size):
            raise op.error(f"element index {int(idx.min())}..{int(idx.max())} is outside the "
                           f"buffer of {buf.size} elements")

    def load(self, op: Operation) -> None:
        buf = self.env[id(op.buffer)]
        idx = self.index(op)
        self.check_bounds(op, idx, buf)
        self.set(op.result, buf[idx].astype(self.dtype(op.result)))

    def store(self, op: Operation) -> None:
        buf = self.env[id(op.buffer)]
        idx = self.index(op)
        val = self.get(op.value)
        idx, val = np.broadcast_arrays(idx, val)
        self.check_bounds(op, idx, buf)
        with np.errstate(all="ignore"):
            buf[idx.reshape(-1)] = val.reshape(-1).astype(buf.dtype)

    # -- scalars

    def const(self, op: Operation) -> None:
        self.set(op.result, np.full((1,) * self.depth, op.value, dtype=self.dtype(op.result)))

    def cmpf(self, op: Operation) -> None:
        fn = op.PREDICATES[op.pred]
        self.set(op.result, fn(self.get(op.a), self.get(op.b)).astype(np.int64))

    def select(self, op: Operation) -> None:
        self.set(op.result, np.where(self.get(op.c) != 0, self.get(op.a), self.get(op.b)))

    def sitofp(self, op: Operation) -> None:
        self.set(op.result, self.get(op.a).astype(np.float32))

    # -- accumulators

    def acc(self, op: Operation) -> None:
        self.env[id(op.result)] = _AccState(self.get(op.init).copy(), self.depth)

    def acc_read(self, op: Operation) -> None:
        self.set(op.result, self.env[id(op.acc)].value)

    def acc_update(self, op: Operation) -> None:
        loop = self.loop
        st: _AccState = self.env[id(op.operands[0])]
        args = [self.get(v) for v in op.operands[1:]]
        d, e = st.depth, self.depth
        axes = tuple(range(d, e))
        full = tuple(self.extents[d:e])
        if 0 in full:
            return
        if isinstance(op, loop.AccMax):
            contrib = args[0].max(axis=axes) if axes else args[0]
            st.value = np.maximum(st.value, contrib)
            return
        if isinstance(op, loop.AccFma):
            val = args[0] * args[1]
        elif isinstance(op, loop.AccSmlad):
            a, b = (np.asarray(x, np.int64) & 0xFFFFFFFF for x in args)
            val = _s16(a) * _s16(b) + _s16(a >> 16) * _s16(b >> 16)
        else:
            val = args[0]
        if axes:
            val = np.broadcast_to(val, val.shape[:d] + full).sum(axis=axes, dtype=val.dtype)
        st.value = st.value + val
        if isinstance(op, loop.AccSmlad):
            st.value = loop._wrap32(st.value)


def _s16(x: np.ndarray) -> np.ndarray:
    """The signed value of the low 16 bits."""
    return ((x & 0xFFFF) ^ 0x8000) - 0x8000


def run_func(func: Operation, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a loop.func on its inputs; returns its outputs shaped as `output_shapes`."""
    return LoopInterpreter(func).run(inputs)
