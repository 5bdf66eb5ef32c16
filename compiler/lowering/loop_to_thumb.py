"""Instruction selection: the loop dialect to Thumb-2/FPv4 ops on virtual registers (`lower-to-thumb`).

A `loop.func` becomes one `thumb.func` whose body is a flat list of instructions, labels and
branches (the entry point of DESIGN §5: r0 = the model header, r1 = the arena):

    %model = thumb.get_register : !thumb.reg<r0>
    %wo = thumb.ldr %model {offset = 16} : !thumb.reg            weights_offset, from the header
    %wbase = thumb.add %model, %wo : !thumb.reg                    so the code is position-independent
    thumb.label @k_conv1                                           one label per loop.kernel
    %n = thumb.movw {imm = 26} : !thumb.reg<r4>                    loop counter, counting down
    thumb.label @k_conv1_1
    %x, %p2 = thumb.vldm %p {writeback = true} : !thumb.sreg, !thumb.reg<r5>
    %y = thumb.vldr %p {offset = 64} : !thumb.sreg                 address folded into the offset
    ...
    %n2 = thumb.sub %n {imm = 1, setflags = true} : !thumb.reg<r4>
    thumb.b {target = @k_conv1_1, cond = "ne"}

How loops are selected:
- Addressing. Accesses with the same buffer and induction-variable strides share a pointer
  register (accesses whose strides differ only in sibling loops share it too): it is set before
  the outermost loop it depends on, advanced at the end of each loop body and rewound after an
  inner loop. The constant part of an index is the instruction's offset, as is any bump not yet
  applied; bumps are applied lazily and merged, so a rewind and the enclosing loop's bump are
  one `add`, and a VLDM that writes its base back often makes the bump free (a pointer starts at
  its first word, so that its first VLDM can write it back).
- Loads of a block wait for their first use and go out in runs of consecutive words, one VLDM
  each (f16 weights as words, widened with VCVTB/VCVTT.F32.F16 when the pointer stays
  word-aligned, else LDRH + VCVTB). Innermost reduction loops are unrolled (by the largest factor
  whose values fit in registers) so their loads form runs; the reduction loop of a register-
  blocked tile is unrolled step by step instead (`_unroll_steps`: each step's loads form runs of
  their own). Weight buffers are packed (`pack_weights`, after these reshapings) so that a tile's
  weights are consecutive words in the order the loops read them: a dense block of 16 outputs
  streams 8 inputs x 16 weights per step in runs of 8 that fill the last registers, each run's
  products added before the next one loads. f16 weights that a kernel reads at least WIDEN_USES
  times each (a convolution's, once per tile of positions) are widened once at its top into arena
  bytes that no buffer holds during it, when such a range exists (`widen_weights`): its tiles then
  read f32 words.
- Before selection each kernel's loops are reshaped for the register file: a small window loop
  of a reduction nest becomes the innermost and is unrolled when neighbouring positions of a
  tile then share input loads (`_slide_windows`: 7 loads instead of 16 for 4 positions x 4
  taps); a short reduction of a whole tile is unrolled (`FLAT_MACS`), a longer one has its
  first step peeled (`PEEL_OPS`), and pooling windows are unrolled, so that each accumulator
  starts as init + its first product (one VADD, no VMOV of the init) or, for a max, as its first
  value (loaded straight into the accumulator by VLDM when the taps are consecutive words).
  An initial value loaded for an accumulator whose first update is in a loop (a dense block's
  bias) is loaded into it too: one VLDM into the accumulators, or f16 halves widened into them.
- Accumulators stored to consecutive words from consecutive registers go out as one VSTM.
- Loop-carried values (pointers, counters, accumulators) are values that a loop body updates and
  the next iteration reads. SSA has no phi nodes here, so they are precolored: this pass gives
  them physical registers (r4-r11 first, then r12, r3, r2 when the kernel calls no routine;
  accumulators s16-s31), and `thumb-regalloc` allocates every other value around them. The same
  holds for the result of an IT-predicated move (max, min, select), which updates its register.
- Arithmetic: `loop.acc_fma` is VMUL into a temporary plus VADD into the accumulator (1+1 cycles,
  DESIGN §6, where VMLA/VFMA take 3); each add trails its multiply by one so no product is read by
  the very next instruction, and the updates of a block are ordered so that two runs of weights
  are live at a time. Max and min are VCMP + VMRS + an IT-predicated VMOV (FPv4 has no VMAX);
  max(x, 0) clears the word's bits when its sign is set (VMOV + BIC, stored from the core
  register), and min(that, c) for a positive c (relu6) compares the bits as integers (CMP + IT +
  MOV against c's bits: non-negative floats order as integers). Constants are built where they
  are used (VMOV.F32 #imm, or MOVW/MOVT + VMOV).
- `loop.exp` calls its routine (`ml4f_expf`, mathlib.OP_ROUTINES; argument and result in s0).

Example: ml4f-opt model.loops.l4f -p plan-memory,lower-to-thumb
"""

from __future__ import annotations

import itertools
import math
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.ir import Block, Module, Operation, Region, SymbolRef, Value
from ml4f.compiler.passes import ModulePass, register_pass
from ml4f.compiler.types import FloatType, f16, f32, index, numpy_dtype

# Registers the lowering may precolor for loop-carried values, in order of preference.
CORE_POOL = (4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 2)
CORE_POOL_CALLS = (4, 5, 6, 7, 8, 9, 10, 11)   # a kernel that calls a routine keeps them callee-saved
ACC_POOL = tuple(range(16, 32))
WINDOW = 1024                                   # VLDR/VSTR reach [rn, #0..1020]
PEEL_OPS = 120                                  # bound on the ops of a reduction step copied by peeling
SEQ_UNROLL = 4                                  # most copies of a tile's reduction step per iteration
ELEMENTWISE_OPS = 12                            # longest element-wise loop body unrolled by 4
REST_TRIPS = 5                                  # fewest steps unrolled by 2 with one left after the loop
STEP_OPS = 160                                  # bound on the ops of an iteration unrolled past 2 steps
FLAT_MACS = 128                                 # bound on the MACs of a fully unrolled tile reduction
UNROLL_MIN_MACS = 256                           # automatic unrolling only for nests doing this much
WIDEN_USES = 12                                 # fewest reads per f16 weight that pay for widening it once
WIDEN_UNROLL = 8                                # f16 weights widened per iteration of the copy (4 words)

# Float comparison -> the condition that holds after `vcmp a, b; vmrs APSR_nzcv, fpscr` (ordered).
FLOAT_COND = {"gt": "gt", "ge": "ge", "lt": "mi", "le": "ls", "eq": "eq", "ne": "ne"}
# the condition that holds exactly when the key does not (whatever the flags, NaN compares too)
INVERSE_COND = {"eq": "ne", "ne": "eq", "cs": "cc", "cc": "cs", "mi": "pl", "pl": "mi", "vs": "vc",
                "vc": "vs", "hi": "ls", "ls": "hi", "ge": "lt", "lt": "ge", "gt": "le", "le": "gt"}


def _thumb() -> Any:
    from ml4f.dialects.thumb import ops
    return ops


def _loop() -> Any:
    from ml4f.dialects import loop
    return loop


def _regs() -> Any:
    from ml4f.dialects.thumb import registers
    return registers


def sanitize_label(name: str) -> str:
    """A GNU symbol made from a layer name (letters, digits and underscores)."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "_" + s


def f32_bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", float(x)))[0]


@dataclass
class WeightsLayout:
    """Where each weight buffer sits in the weights blob (4-aligned offsets, little-endian)."""

    offsets: dict[int, int] = field(default_factory=dict)   # id(loop.weights result) -> offset
    blob: bytearray = field(default_factory=bytearray)
    elided: bool = False

    @staticmethod
    def of(func: Operation) -> WeightsLayout:
        L = _loop()
        lay = WeightsLayout()
        by_resource: dict[int, int] = {}
        for op in func.body.block.ops:
            if not isinstance(op, L.WeightsBuf):
                continue
            res = op.data
            if id(res) not in by_resource:
                lay.blob += bytes(-len(lay.blob) % 4)
                by_resource[id(res)] = len(lay.blob)
                if res.data is None:
                    # elided in the text: the code only needs the offsets
                    lay.elided = True
                    lay.blob += bytes(res.type.size * numpy_dtype(res.type.elem).itemsize)
                else:
                    dt = numpy_dtype(res.type.elem).newbyteorder("<")
                    lay.blob += np.ascontiguousarray(res.data, dtype=dt).tobytes()
            lay.offsets[id(op.result)] = by_resource[id(res)]
        lay.blob += bytes(-len(lay.blob) % 4)
        return lay


@dataclass(frozen=True)
class GroupKey:
    """Accesses that could share a pointer: one buffer, the same (iv, stride) terms, one window."""

    buf: int
    terms: tuple[tuple[int, int], ...]
    window: int


@dataclass(eq=False)
class PtrClass:
    """One pointer register: groups of one buffer and window whose terms differ only in sibling
    loops (the pointer is rewound after each loop, so between them it has the same value)."""

    buf: int
    window: int
    terms: dict[int, int]            # id(iv) -> element stride
    loops: set[int]                  # id(loop.for) of every access, with their ancestors
    homes: set[int] = field(default_factory=set)   # loops of `terms` not nested in another
    start: int = 0                   # bytes from the window's base to where the pointer starts


@dataclass(eq=False)
class _Run:
    """Loads of one block from consecutive words off one pointer, emitted together at first use."""

    cls: PtrClass
    words: list[int]                                 # byte offsets from the pointer, step 4
    loads: list[tuple[Operation, int, int]]          # (load, word index, half: -1 f32, 0 low, 1 high)


@dataclass
class _Buf:
    base: Value            # the thumb value the buffer is addressed from (arena or weights base)
    offset: int            # byte offset of element 0 from `base`
    esize: int
    elem: Any


def pack_weights(func: Operation, block: int = 16) -> list[str]:
    """Interleave the output channels of weight buffers in groups, when every access allows it,
    so that the weights of a register-blocked tile sit in consecutive words, in the order the
    loops read them.

    A buffer of shape (C, ...) holds channel c's K elements at c*K + r. The group is as many
    channels as the code reads in a row for one element (4 for a 4 x 4 convolution tile, 16 for
    a dense block of 16 outputs; at most `block`); channels past the last whole group form a
    group of the remainder block's width (e.g. 16 + 8 for 24 outputs) or stay as they are.
    Inside a group of b channels starting at c0, element r of channel c moves to
    c0*K + ((c - c0) // b)*b*K + rank(r)*b + (c - c0) % b, where rank is the order of first
    reads. Each access is refitted to the new places and must stay affine (`_refit`), else the
    next smaller grouping is tried. The function computes the same afterwards; returns the names
    of the packed buffers.
    """
    L = _loop()
    from ml4f.compiler.ir import Resource
    packed = []
    loads: dict[int, list[Operation]] = {}
    for op in func.walk():
        if isinstance(op, L._Access):
            loads.setdefault(id(op.buffer), []).append(op)
    for w in [op for op in func.body.block.ops if isinstance(op, L.WeightsBuf)]:
        shape = w.data.type.shape
        accesses = loads.get(id(w.result), [])
        if len(shape) < 2 or w.data.data is None or not accesses:
            continue
        C, K = shape[0], int(np.prod(shape[1:]))
        order, tile = _first_touch_order(func, accesses, K)
        orders = [np.arange(K)] if order is None else [order, np.arange(K)]
        fit = None
        for blk in dict.fromkeys(min(b, C) for b in (16, 8, 4, 2) if 1 < min(b, C) <= min(block, tile)):
            head = blk * (C // blk)
            tails = [b for b in (8, 4, 2) if b < blk and b <= C - head][:1]
            layouts = [[(0, head, blk), (head, head + t * ((C - head) // t), t)] for t in tails]
            layouts.append([(0, head, blk)])
            for segments, rank_order in itertools.product(layouts, orders):
                refit = _refit(accesses, rank_order, K, segments)
                if refit is not None:
                    fit = segments, rank_order, refit
                    break
            if fit is not None:
                break
        if fit is None:
            continue
        segments, rank_order, refit = fit
        for acc, (offset, strides) in zip(accesses, refit):
            acc.attributes["offset"] = offset
            acc.attributes["strides"] = tuple(strides)
        rows = w.data.array().reshape(C, K)[:, rank_order]    # element r of a channel moves to rank(r)
        parts, end = [], 0
        for c0, c1, b in segments:
            parts.append(rows[c0:c1].reshape((c1 - c0) // b, b, K).transpose(0, 2, 1).reshape(-1))
            end = c1
        parts.append(rows[end:].reshape(-1))
        w.attributes["data"] = Resource(w.data.name + ".packed", w.data.type, np.concatenate(parts).reshape(shape))
        packed.append(w.data.name)
    return packed


def _first_touch_order(func: Operation, accesses: list[Operation], K: int) -> tuple[np.ndarray | None, int]:
    """The elements r of a channel (index c*K + r) in the order the code first reads them, walking
    each loop nest with every loop that moves an access within a channel run in full and every
    other loop at its first iteration, the nest that reads the buffer most first (a convolution's
    interior before its border nests), then the others in program order (None when that is the
    natural order); and how many consecutive channels the first reads take for one element."""
    L = _loop()
    inner = {id(v) for acc in accesses for v, s in zip(acc.ivs, acc.strides) if s % K}
    mine = {id(a) for a in accesses}

    def walk(ops: list[Operation], env: dict[int, int], touched: dict[int, None]) -> None:
        for op in ops:
            if isinstance(op, L.For):
                its = range(op.lb, op.ub, op.step) if id(op.iv) in inner else range(op.lb, op.ub)[:1]
                for i in its:
                    env[id(op.iv)] = i
                    walk(op.body.block.ops, env, touched)
            elif id(op) in mine:
                touched.setdefault(op.offset + sum(s * env.get(id(v), 0) for v, s in zip(op.ivs, op.strides)))
            else:
                for region in op.regions:
                    for b in region.blocks:
                        walk(b.ops, env, touched)

    def reads(op: Operation) -> int:
        """How many times the nest `op` executes an access of the buffer."""
        if isinstance(op, L.For):
            return op.trip_count * sum(reads(o) for o in op.body.block.ops)
        return int(id(op) in mine) + sum(reads(o) for r in op.regions for b in r.blocks for o in b.ops)

    nests = [(op, reads(op)) for k in func.body.block.ops if isinstance(k, L.Kernel)
             for op in k.body.block.ops if any(id(o) in mine for o in op.walk())]
    nests.sort(key=lambda t: -t[1])          # stable: program order among equals
    touched: dict[int, None] = {}
    first: list[int] = []
    for i, (op, _) in enumerate(nests):
        walk([op], {}, touched)
        if i == 0:
            first = list(touched)
    seen = list(dict.fromkeys(idx % K for idx in touched))
    order = seen + [r for r in range(K) if r not in set(seen)]
    row = next((j for j, idx in enumerate(first) if idx != first[0] + j * K), len(first))
    return (None if order == list(range(K)) else np.asarray(order)), max(row, 1)


def _refit(accesses: list[Operation], order: np.ndarray, K: int, segments: list[tuple[int, int, int]]
           ) -> list[tuple[int, list[int]]] | None:
    """(offset, strides) of each access once channels [c0, c1) are interleaved in groups of b
    for each (c0, c1, b) of `segments` and a channel's element r sits at rank(r) (`order`), or
    None when some access would no longer be affine."""
    L = _loop()
    rank = np.empty(K, dtype=np.int64)
    rank[order] = np.arange(K)
    out = []
    for acc in accesses:
        axes = []
        for v in acc.ivs:
            r = L.iv_range(v)
            owner = v.owner
            loop = owner.parent.parent if not isinstance(owner, Operation) and owner.parent else None
            step = loop.step if isinstance(loop, L.For) else 1
            if r is None:
                return None
            axes.append(np.arange(r[0], r[1] + 1, step, dtype=np.int64))
        grids = np.meshgrid(*axes, indexing="ij") if axes else []
        old = np.full(grids[0].shape if grids else (), acc.offset, dtype=np.int64)
        for g, st in zip(grids, acc.strides):
            old = old + st * g
        c, r = old // K, old % K
        new = c * K + rank[r]
        for c0, c1, b in segments:
            new = np.where((c0 <= c) & (c < c1), c0 * K + ((c - c0) // b) * b * K + rank[r] * b + (c - c0) % b, new)
        base = new[(0,) * len(axes)] if axes else int(new)
        strides = []
        for i, ax in enumerate(axes):
            if len(ax) < 2:
                strides.append(0)
                continue
            d = new[tuple(1 if j == i else 0 for j in range(len(axes)))] - base
            if d % (ax[1] - ax[0]):
                return None
            strides.append(int(d // (ax[1] - ax[0])))
        offset = int(base) - sum(st * int(ax[0]) for st, ax in zip(strides, axes))
        fit = np.full_like(new, offset)
        for g, st in zip(grids, strides):
            fit = fit + st * g
        if not np.array_equal(fit, new):
            return None
        out.append((offset, strides))
    return out


def _loops_around(op: Operation) -> Iterator[Operation]:
    """The loop.for ops around `op`, innermost first."""
    L = _loop()
    p = op.parent.parent.parent if op.parent is not None and op.parent.parent else None
    while isinstance(p, L.For):
        yield p
        p = p.parent.parent.parent if p.parent is not None and p.parent.parent else None


def _executions(op: Operation) -> int:
    """How many times `op` runs per call: the product of the trip counts of the loops around it."""
    return math.prod(f.trip_count for f in _loops_around(op))


def widen_weights(func: Operation, min_uses: int = WIDEN_USES) -> set[int]:
    """Widen f16 weights once per call into arena bytes that no buffer holds during their kernel,
    when the kernel reads each weight at least `min_uses` times (a convolution's weights, once per
    tile of positions): each read is then an f32 word of a VLDM run instead of half a word plus
    a VCVT (about half a cycle saved), and the copy costs about 3.4 cycles a weight (a loop at the
    top of the kernel: per 8 weights one VLDM of 4 words, 8 VCVTB/VCVTT and one VSTM). It reads
    the weights as packed. The arena does not grow: weights that fit in no free range stay f16.
    Returns the ids of the f32 buffers.
    """
    from ml4f.compiler.transforms.loop_passes import unroll
    from ml4f.compiler.transforms.plan_memory import Interval, fit, liveness
    L = _loop()
    live = liveness(func)
    allocs = func.allocs
    made: set[int] = set()
    for t, k in enumerate(func.kernels):
        reads: dict[int, list[Operation]] = {}
        for op in k.walk():
            if isinstance(op, L.Load) and isinstance(op.buffer.op, L.WeightsBuf) and op.buffer.type.elem == f16:
                reads.setdefault(id(op.buffer), []).append(op)
        busy = [(a.offset, a.offset + a.result.type.nbytes) for a in allocs
                if live[id(a.result)][0] <= t <= live[id(a.result)][1]]
        for loads in reads.values():
            w = loads[0].buffer
            n = w.type.size
            if sum(_executions(op) for op in loads) < min_uses * n:
                continue
            off = fit(Interval(4 * n, t, t), busy, func.arena_size)   # the lowest free range
            if off is None:
                continue
            busy.append((off, off + 4 * n))
            scratch = L.Alloc([], [L.BufType(n, f32)], {"offset": off}, origin=k.origin, loc=k.loc)
            scratch.result.name_hint = (w.name_hint or "w") + "_f32"
            func.body.block.insert_before(k, scratch)
            made.add(id(scratch.result))
            for op in loads:
                op.set_operand(0, scratch.result)
            body = Block([index], ["i"])
            copy = L.For([], [], {"lb": 0, "ub": n, "step": 1}, regions=[Region([body])], origin=k.origin, loc=k.loc)
            x = L.Load([w, body.args[0]], [f32], {"offset": 0, "strides": (1,)}, origin=k.origin, loc=k.loc)
            body.append(x)
            body.append(L.Store([x.result, scratch.result, body.args[0]], [], {"offset": 0, "strides": (1,)},
                                origin=k.origin, loc=k.loc))
            k.body.block.insert(0, copy)
            unroll(copy, WIDEN_UNROLL)
    return made


class _Lowering:
    """Lowers one loop.func; holds the register pools and label counter of this function."""

    def __init__(self, func: Operation, module: Module, unroll: int = 0, pack: bool = True,
                 loop_registers: int = 0, widen: bool = True):
        self.loop_registers = loop_registers
        self.widen = widen
        self.unroll = unroll
        self.T = _thumb()
        self.L = _loop()
        self.R = _regs()
        self.func = func
        self.module = module
        self.block = Block()
        self.labels = 0
        self.vals: dict[int, Value] = {}
        self.bufs: dict[int, _Buf] = {}
        self.pack = pack
        self.layout = WeightsLayout()
        self.layer_labels: list[tuple[str, str]] = []
        self.routines: set[str] = set()
        self.src: Operation = func
        # per kernel
        self.core_free: list[int] = []
        self.s_free: list[int] = []
        self.ptr: dict[PtrClass, Value] = {}
        self.pending: dict[PtrClass, int] = {}
        self.keys_of_loop: dict[int, list[PtrClass]] = {}
        self.class_of: dict[int, PtrClass] = {}
        self.loop_of_iv: dict[int, Operation] = {}
        self.owners: dict[int, int] = {}        # precolored S register -> live owner count
        self.precolored: dict[int, int] = {}    # id(loop value) -> S register it owns
        self.release_after: dict[int, list[Value]] = {}
        self.flag_src: dict[int, Operation] = {}
        self.run_of: dict[int, _Run] = {}
        self.const_ops: dict[int, Operation] = {}
        self.relu_of: dict[int, Value] = {}
        self.clamp_of: dict[int, tuple[Value, int]] = {}   # id(minf) -> (its relu operand, bits of c)
        self.computed: set[PtrClass] = set()
        self.counter_of: dict[int, Value] = {}
        self.const_scopes: list[dict[Any, Value]] = []
        # computed addresses of this block's straight-line code: (buf, terms) -> (register, const)
        self.computed_scopes: list[dict[Any, tuple[Value, int]]] = []
        self.pending_fma: list[tuple[Operation, Value]] = []
        self.draining = False                   # whether `_drain_fma` is emitting adds
        self.block_loop: Operation | None = None
        self.fresh: dict[int, Value] = {}       # id(acc) -> its init, for an acc not yet written
        self.run_pairs = True                   # whether two runs of weights may be live at once
        self.drain_runs = False                 # whether products are all added before a run loads
        self.flat_blocks: set[int] = set()      # tile blocks whose reduction loop was unrolled fully
        self.copy_of: dict[int, tuple[int, Operation]] = {}   # id(op) -> (its copy, op) in a loop
                                                              # unrolled copy by copy
        # f16 loads not yet widened: id(load result) -> (word, half, the word's loads by half)
        self.halves_of: dict[int, tuple[Value, int, dict[int, list[int]]]] = {}
        self.step_loops: list[tuple[Operation, int]] = []   # loops `_unroll_steps` unrolls, at most by
        self.pending_stores: list[tuple[Value, Value, int]] = []   # (S register, base, offset)
        self.loaded_first: set[int] = set()     # acc_max ops whose value was loaded into the acc
        self.loaded_init: set[int] = set()      # loop.acc ops whose initial value was loaded into the acc
        self.widened: set[int] = set()          # arena buffers holding f16 weights widened to f32

    # ------------------------------------------------------------------ emission helpers

    def emit(self, mn: str, operands: list[Value] = (), results: list[Any] = (), **attrs: Any) -> Operation:
        attrs = {k: v for k, v in attrs.items() if v is not None}
        op = self.T.OPS[mn](list(operands), list(results), attrs, origin=self.src)
        self.block.append(op)
        return op

    def emit1(self, mn: str, operands: list[Value], rtype: Any, **attrs: Any) -> Value:
        return self.emit(mn, operands, [rtype], **attrs).results[0]

    def get_register(self, t: Any, name: str | None = None) -> Value:
        op = self.T.GetRegister([], [t], {}, origin=self.src, result_names=[name])
        self.block.append(op)
        return op.result

    def label(self, name: str) -> None:
        self.block.append(self.T.LabelOp([], [], {}, symbol=name, origin=self.src))

    def new_label(self, base: str) -> str:
        """A loop label: `L<n>_<kernel label>` (kernel labels start with `k_`, so never clash)."""
        self.labels += 1
        return f"L{self.labels}_{base}"

    def reg(self, n: int | None = None) -> Any:
        return self.R.RegType(n)

    def sreg(self, n: int | None = None) -> Any:
        return self.R.SRegType(n)

    def add_const(self, src: Value, k: int, rtype: Any) -> Value:
        """rtype-typed value = src + k (any 32-bit k): ADD/SUB #imm, ADDW/SUBW, or MOVW/MOVT + ADD."""
        from ml4f.dialects.thumb.encodings import modimm
        if k == 0:
            return self.emit1("mov", [src], rtype)
        if modimm(k & 0xFFFFFFFF) is not None and k > 0:
            return self.emit1("add", [src], rtype, imm=k)
        if k < 0 and modimm(-k) is not None:
            return self.emit1("sub", [src], rtype, imm=-k)
        if 0 < k < 4096:
            return self.emit1("addw", [src], rtype, imm=k)
        if -4096 < k < 0:
            return self.emit1("subw", [src], rtype, imm=-k)
        t = self.const_core(k)
        return self.emit1("add", [src, t], rtype)

    def const_core(self, k: int, rtype: Any = None) -> Value:
        """A core register holding the 32-bit constant k (MOVW, plus MOVT for the high half)."""
        k &= 0xFFFFFFFF
        rtype = rtype or self.reg()
        if k >> 16:
            lo = self.emit1("movw", [], self.reg(), imm=k & 0xFFFF)
            return self.emit1("movt", [lo], rtype, imm=k >> 16)
        return self.emit1("movw", [], rtype, imm=k)

    def const_f32(self, x: float, rtype: Any = None) -> Value:
        from ml4f.dialects.thumb.encodings import vfp_imm8
        rtype = rtype or self.sreg()
        if vfp_imm8(float(x)) is not None and np.isfinite(x):
            return self.emit1("vmov.f32", [], rtype, imm=float(x))
        return self.emit1("vmov", [self.const_core(f32_bits(x))], rtype)

    # ------------------------------------------------------------------ function

    def run(self) -> Operation:
        L = self.L
        func = self.func
        self.model_ptr = self.get_register(self.reg(0), "model")
        arena_in = self.get_register(self.reg(1), "arena")
        self.lr = self.get_register(self.reg(14), "lr")
        wo = self.emit1("ldr", [self.model_ptr], self.reg(), offset=16)
        self.wbase = self.emit1("add", [self.model_ptr, wo], self.reg())
        self.arena = self.emit1("mov", [arena_in], self.reg())
        for op in func.body.block.ops:
            if isinstance(op, L.Kernel):
                self.reshape(op)
        if self.pack:
            pack_weights(func)   # after reshaping: weights are packed in the order the loops read them
        # loops stay loops for size: no copy of the weights either
        self.widened = widen_weights(func) if self.widen and self.unroll != 1 else set()
        self.layout = WeightsLayout.of(func)
        for op in func.body.block.ops:
            if isinstance(op, L.Alloc):
                if op.offset < 0:
                    raise op.error("has no arena offset: run plan-memory before lower-to-thumb")
                self._buf(op.result, self.arena, op.offset)
            elif isinstance(op, L.WeightsBuf):
                self._buf(op.result, self.wbase, self.layout.offsets[id(op.result)])
        for op in func.body.block.ops:
            if isinstance(op, L.Kernel):
                self.kernel(op)
            elif not isinstance(op, (L.Alloc, L.WeightsBuf, L.Return)):
                raise op.error("cannot be lowered to Thumb code at function level")
        self.src = func
        self.emit("bx", [self.lr])
        out = self.T.Func([], [], {}, regions=[Region([self.block])], symbol=sanitize_label(func.symbol),
                          origin=func, loc=func.loc)
        return out

    def _buf(self, v: Value, base: Value, offset: int) -> None:
        elem = v.type.elem
        if not isinstance(elem, FloatType):
            raise v.op.error(f"{elem} buffers need the int8 code generator, which does not exist yet")
        self.bufs[id(v)] = _Buf(base, offset, numpy_dtype(elem).itemsize, elem)

    # ------------------------------------------------------------------ kernels

    def kernel(self, k: Operation) -> None:
        self.src = k
        name = "k_" + sanitize_label(k.symbol)
        taken = {lab for _, lab in self.layer_labels}
        if name in taken:
            name += "_" + str(next(i for i in range(2, len(taken) + 3) if f"{name}_{i}" not in taken))
        self.kname = name
        self.label(name)
        self.layer_labels.append((k.symbol, name))
        from ml4f.compiler.lowering.mathlib import OP_ROUTINES
        has_call = any(o.name in OP_ROUTINES for o in k.walk())
        self.core_pool = CORE_POOL_CALLS if has_call else CORE_POOL
        self.core_free = list(self.core_pool)
        self.s_free = list(ACC_POOL)
        self.ptr, self.pending, self.keys_of_loop, self.class_of = {}, {}, {}, {}
        self.loop_of_iv = {id(f.iv): f for f in k.walk() if isinstance(f, self.L.For)}
        self._analyze(k)
        self.lower_block(k.body.block)

    def reshape(self, k: Operation) -> None:
        """The loop transformations made for the register file before selection (same results)."""
        from ml4f.compiler.transforms.loop_passes import coalesce
        self.src = k
        if self.unroll != 1:
            self._slide_windows(k)
        coalesce(k)
        if self.unroll != 1:
            self._unroll_elementwise(k)
            self._unroll_reductions(k)
            self._unroll_max_windows(k)
            self._peel_first_steps(k)
            self._unroll_steps(k)

    def _unroll_reductions(self, k: Operation) -> None:
        """Unroll innermost reduction loops so that their loads form VLDM runs and the loop
        overhead spreads over more MACs, by the largest factor whose values fit in S registers
        (besides the accumulators: the inputs of all copies and two runs of weights at a time).
        A register-blocked tile's loop for which no factor fits is left to `_unroll_steps`."""
        from ml4f.compiler.transforms.loop_passes import unroll
        L = self.L
        inner = [f for f in k.walk() if isinstance(f, L.For)
                 and not any(isinstance(o, L.For) for o in f.body.block.ops)]
        for f in inner:
            fmas = [o for o in f.body.block.ops if isinstance(o, L.AccFma)]
            if not fmas or f.trip_count < 2:
                continue
            if self.unroll == 0 and f.trip_count <= 8 and len(fmas) >= 8 and \
                    len(fmas) * f.trip_count <= FLAT_MACS and \
                    any(isinstance(o, L.Acc) for o in f.parent.ops):
                # a short reduction of a whole tile (a 1x1 convolution over few channels): no
                # loop control, and the accumulators start from the first products
                # (`_first_write`); inputs are loaded in pairs there, to keep registers free
                self.flat_blocks.add(id(f.parent))
                unroll(f, f.trip_count)
                continue
            runs = f.trip_count * _executions(f)
            factors = (self.unroll,) if self.unroll > 1 else (8, 4, 2)
            if self.unroll == 0 and runs * len(fmas) < UNROLL_MIN_MACS:
                if len(inner) > 1:
                    continue  # a small remainder nest: not worth the code
                # the kernel's only reduction (a small dense layer): a short unroll still halves
                # its loop overhead and loads its weights in runs
                factors = tuple(u for u in factors if u * len(fmas) <= 16)
            accs = len({id(o.acc) for o in fmas})
            xs = len({id(o.a) for o in fmas} - {id(o.b) for o in fmas})
            u = next((u for u in factors if u * (xs + 2) <= 28 - accs), 1)
            uses = Counter(id(o.a) for o in fmas)
            if u == 1 and self.unroll == 0 and accs + xs <= 28 and min(uses.values()) > 1:
                self.step_loops.append((f, SEQ_UNROLL))   # unrolled after peeling (`_unroll_steps`)
                continue
            if xs == 1 and self.unroll == 0 and 4 < accs <= 16:
                # a dense block of up to 16 outputs: 8 inputs (one VLDM) and one run of 8 weights
                # live; with f16 weights 4 inputs, so that a run of 8 words (16 weights) fits
                f16_weights = any(isinstance(o.b.op, L.Load) and o.b.op.buffer.type.elem == f16 for o in fmas)
                u = 4 if f16_weights else 8
                if f16_weights and f.trip_count >= 4 * u:
                    # two such steps per iteration, one after the other (`_unroll_steps`)
                    made = unroll(f, u)
                    self.step_loops.append((made[0], 2))
                    continue
            if u > 1:
                unroll(f, u)

    def _slide_windows(self, k: Operation) -> None:
        """Make a small kernel-window loop of a reduction nest the innermost one and unroll it,
        when that lets neighbouring output positions of a tile share their input loads: with 4
        positions and a 4-tap window, position p at tap t reads what position p+1 reads at t-1,
        so a step loads 7 inputs instead of 16. The reduction order changes (a sum reordered)."""
        L = self.L
        # Nests of the same shape (a tile's main block and its remainder) take the same loop order
        # when that costs the remainder no loads, so their weights are read in one order (packing).
        nests = []
        for f in [f for f in k.walk() if isinstance(f, L.For)]:
            ops = f.body.block.ops
            fmas = [o for o in ops if isinstance(o, L.AccFma)]
            if not fmas or any(isinstance(o, L.For) for o in ops):
                continue
            nest = [f]
            while True:
                g = nest[0].parent.parent.parent if nest[0].parent is not None else None
                if isinstance(g, L.For) and len(g.body.block.ops) == 1:
                    nest.insert(0, g)
                else:
                    break
            loads = [o for o in ops if isinstance(o, L.Load)]
            best, best_count = None, len(loads)
            counts: dict[int, float] = {}
            for r in nest:
                n = r.trip_count
                if not 1 < n <= 8:
                    continue
                keys: dict[int, set] = {}
                for ld in loads:
                    st = dict(zip(map(id, ld.ivs), ld.strides))
                    rest = tuple(sorted((i, s) for i, s in st.items() if i != id(r.iv)))
                    for j in range(n):
                        keys.setdefault(id(ld.buffer), set()).add(
                            (rest, ld.offset + st.get(id(r.iv), 0) * (r.lb + j * r.step)))
                count = sum(map(len, keys.values())) / n
                shared = sum(len(v) for b, v in keys.items()
                             if len(v) < n * sum(1 for ld in loads if id(ld.buffer) == b))
                accs = len({id(o.acc) for o in fmas})
                # the accumulators, the shared inputs of a step, a run of weights and products fit
                if accs + shared + 2 + 2 <= 32:
                    counts[nest.index(r)] = count
                    if count < best_count:
                        best, best_count = r, count
            nests.append((nest, best, counts, len(loads), tuple(g.trip_count for g in nest)))
        chosen = {shape: nest.index(best) for nest, best, _, _, shape in nests if best is not None}
        # The other nests (borders, corners) take innermost the loop that walks the weights like
        # the hottest nest's window loop, when that costs them no loads over not rotating: the
        # weights are then read in one order everywhere and packed so (a step's taps in
        # consecutive words: no address arithmetic between its VLDMs), which saves the hot nest
        # more than sliding saves a border.
        hot = max((t for t in nests if t[1] is not None), key=lambda t: _executions(t[0][-1]),
                  default=None)
        walks = self._weight_walks(hot[0][-1], hot[1]) if hot is not None else set()
        if hot is None or hot[1] is hot[0][-1] or sum(
                isinstance(o, L.Load) and isinstance(o.buffer.op, L.WeightsBuf) for o in hot[0][-1].body.block.ops) < 2:
            # (the hot nest reads its weights in their order anyway, or one a step: a depthwise
            # tile, with nothing to pack in groups)
            walks = set()
        picks = []
        for nest, best, counts, n_loads, shape in nests:
            i = chosen.get(shape)
            if best is None and i is not None and counts.get(i, n_loads + 1) <= n_loads:
                best = nest[i]
            alike = None
            if walks and not (best is not None and self._weight_walks(nest[-1], best) & walks):
                alike = next((r for j, r in enumerate(nest) if counts.get(j, n_loads + 1) <= n_loads
                              and self._weight_walks(nest[-1], r) & walks), None)
            picks.append((nest, best, alike))

        def work(nest: list[Operation]) -> int:
            f = nest[-1]
            return _executions(f) * f.trip_count * sum(isinstance(o, L.AccFma) for o in f.body.block.ops)

        # Worth it for a window of up to 3 taps when the hot nest does at least twice the work of
        # the nests that lose a sliding window to it (measured: ResNet-8's 3x3 convolutions gain
        # 1-3% each down to a ratio of 3; a 5x5 one over 14x14 positions, ratio 2.9, lost 2.6%).
        slid = sum(work(n) for n, b, a in picks if a is not None and b is not None)
        alike_ok = hot is not None and hot[1].trip_count <= 3 and work(hot[0]) >= 2 * slid
        for nest, best, alike in picks:
            best = alike if alike is not None and alike_ok else best
            if best is not None:
                self._rotate_innermost(nest, best)

    def _weight_walks(self, f: Operation, r: Operation) -> set[tuple[int, int]]:
        """(weight buffer, stride) of the weight loads in loop `f`'s body that loop `r` moves."""
        L = self.L
        out = set()
        for ld in f.body.block.ops:
            if isinstance(ld, L.Load) and isinstance(ld.buffer.op, L.WeightsBuf):
                st = dict(zip(map(id, ld.ivs), ld.strides)).get(id(r.iv), 0)
                if st:
                    out.add((id(ld.buffer), st))
        return out

    def _rotate_innermost(self, nest: list[Operation], r: Operation) -> None:
        """Rebuild the perfect nest `nest` with loop `r` innermost, then unroll `r` fully."""
        from ml4f.compiler.transforms.loop_passes import Cloner, canonicalize_block, unroll
        from ml4f.compiler.types import index
        L = self.L
        order = [g for g in nest if g is not r] + [r]
        top = nest[0]
        parent = top.parent
        cl = Cloner()
        outer_new = None
        dest_block = None
        for g in order:
            block = Block([index], [g.iv.name_hint])
            new = L.For([], [], dict(g.attributes), regions=[Region([block])], origin=g.origin, loc=g.loc)
            cl.vmap[id(g.iv)] = block.args[0]
            if dest_block is None:
                outer_new = new
            else:
                dest_block.append(new)
            dest_block = block
            inner_new = new
        for op in nest[-1].body.block.ops:
            cl.clone(op, dest_block)
        parent.insert_before(top, outer_new)
        for inner in reversed(list(top.walk())):
            inner.drop_operands()
        parent.erase(top)
        body = inner_new.parent
        unroll(inner_new, inner_new.trip_count)
        canonicalize_block(body)

    def _unroll_steps(self, k: Operation) -> None:
        """Unroll a register-blocked tile's reduction loop (each input feeds several accumulators)
        by the largest of SEQ_UNROLL..2 that divides its trip count: the copies go one after the
        other, each with its own load runs (`copy_of`: one copy's inputs live at a time), and the
        loop control is paid once per copies. A loop queued with at most 2 (a jammed reduction
        after its peeled first step) whose trip count is odd, from REST_TRIPS steps on, runs 2
        steps per iteration and its last step after the loop."""
        from ml4f.compiler.transforms.loop_passes import unroll
        L = self.L
        for f, most in self.step_loops:
            if f.parent is None or not f.trip_count:
                continue
            n = len(f.body.block.ops)
            u = next((u for u in range(most, 1, -1)
                      if f.trip_count % u == 0 and (u == 2 or u * n <= STEP_OPS)), 1)
            if u < 2 and most == 2 and f.trip_count >= REST_TRIPS:
                u = 2   # a loop left odd by its peeled first step: the last step after it
            if u < 2:
                continue
            made = unroll(f, u)
            copies = made[0].body.block.ops if isinstance(made[0], L.For) else made
            for i, op in enumerate(copies):
                self.copy_of[id(op)] = (i // n, op)
            for i, op in enumerate(made[1:] if isinstance(made[0], L.For) else []):
                self.copy_of[id(op)] = (u + i // n, op)
        self.step_loops = []

    def _peel_first_steps(self, k: Operation) -> None:
        """Run the first iteration of a tile's reduction loop before the loop, so that each of
        its accumulators starts as init + first product (`_first_write`: one VADD) instead of a
        VMOV of the initial value plus a VADD per product. A jammed reduction left long enough
        is queued for `_unroll_steps`, 2 steps per iteration."""
        from ml4f.compiler.transforms.loop_passes import Cloner
        L = self.L
        for f in [f for f in k.walk() if isinstance(f, L.For)]:
            ops = f.body.block.ops
            fmas = [o for o in ops if isinstance(o, L.AccFma)]
            block = f.parent
            if len(fmas) < 8 or len(ops) > PEEL_OPS or f.trip_count < 2 or \
                    any(isinstance(o, L.For) for o in ops):
                continue
            accs = [o for o in block.ops if isinstance(o, L.Acc)]
            # (a dense block spends far less on its few initialisations than the copy costs)
            if len(accs) <= 8 or {id(o.acc) for o in fmas} != {id(a.result) for a in accs}:
                continue
            cl = Cloner(ivmap={id(f.iv): (f.lb, {})})
            tmp = Block()
            for op in ops:
                new = cl.clone(op, tmp)
                # one step of its own (-1): its inputs may form runs, apart from the copies of
                # the steps after it (the limit of flattened tiles does not apply)
                self.copy_of[id(new)] = (-1, new)
            for op in list(tmp.ops):
                tmp.ops.remove(op)
                block.insert_before(f, op)
            f.attributes["lb"] = f.lb + f.step
            self.flat_blocks.add(id(block))
            if all(g is not f for g, _ in self.step_loops) and \
                    (f.trip_count // 2) * _executions(f) >= 2 * len(ops):
                # a jammed reduction (steps of several channels) that runs long: two steps per
                # iteration halve its loop control, when that saves (4 cycles an iteration) at
                # least a cycle per byte of the copies (about 8 bytes an op)
                self.step_loops.append((f, 2))

    def _unroll_elementwise(self, k: Operation) -> None:
        """Unroll an innermost loop of element-wise work (no accumulator, no routine call, a
        short body, at least 8 iterations) by 4: its loads and stores of consecutive elements
        then form runs (one VLDM for 4 words) and its loop control and pointer bumps are paid
        once per 4 elements (a residual add with relu: about 14 cycles an element before, 8).
        The dialect's iterations are independent except through accumulators, so the copies'
        loads may run before the stores of the copies before them."""
        from ml4f.compiler.lowering.mathlib import OP_ROUTINES
        from ml4f.compiler.transforms.loop_passes import unroll
        L = self.L
        for f in [f for f in k.walk() if isinstance(f, L.For)]:
            ops = f.body.block.ops
            if f.trip_count < 8 or len(ops) > ELEMENTWISE_OPS or any(
                    isinstance(o, L.For) or o.name.startswith("loop.acc") or o.name in OP_ROUTINES
                    for o in ops):
                continue
            unroll(f, 4)

    def _unroll_max_windows(self, k: Operation) -> None:
        """Unroll small pooling windows (loops of acc_max, at most 4 iterations and 64 updates) fully:
        the first tap then initialises each accumulator with a move instead of -inf + compare,
        and the loop control goes away."""
        from ml4f.compiler.transforms.loop_passes import unroll
        L = self.L
        for f in reversed([f for f in k.walk() if isinstance(f, L.For)]):   # inner loops first
            ops = f.body.block.ops
            taps = sum(isinstance(o, L.AccMax) for o in ops)
            if 1 < f.trip_count <= 4 and taps and taps * f.trip_count <= 64 \
                    and not any(isinstance(o, (L.For, L.AccFma)) for o in ops):
                unroll(f, f.trip_count)

    def _only_skipped_init(self, v: Value) -> bool:
        """Whether constant `v` is never read: -inf only initialising accumulators whose first
        update is a max (which takes the first value as it is), +0.0 only as relu's bound
        (max(x, 0) clears the bits of negative x in a core register), or only relu6's bound
        (compared on the bits)."""
        L = self.L
        value = self.const_ops[id(v)].value
        if value == 0.0 and math.copysign(1.0, value) > 0:
            return all(isinstance(u, L.MaxF) for u, _ in v.uses)
        if 0.0 < value < math.inf:
            return all(self._clampable(u) is not None for u, _ in v.uses)
        if value != -math.inf:
            return False
        return all(isinstance(u, L.Acc) and isinstance(self._first_write(u), L.AccMax) for u, _ in v.uses)

    def _first_write(self, op: Operation) -> Operation | None:
        """The op that updates accumulator `op` (a loop.acc) first, when it is an update in the
        same block that runs before any other use: it can then write the register from the
        initial value directly (no separate initialising move)."""
        L = self.L
        block = op.parent
        users = {id(u) for u, _ in op.result.uses}
        seen = False
        for o in block.ops:
            if o is op:
                seen = True
                continue
            if not seen:
                continue
            if isinstance(o, L.For):
                if any(id(x) in users for x in o.walk()):
                    return None
                continue
            if id(o) in users:
                return o if isinstance(o, (L.AccFma, L.AccMax, L.AccAdd)) and o.acc is op.result else None
        return None

    def _depth(self, f: Operation) -> int:
        """How many loops nest loop `f`, itself included."""
        return 1 + sum(1 for _ in _loops_around(f))

    def _key(self, op: Operation) -> tuple[GroupKey, int]:
        buf = self.bufs[id(op.buffer)]
        terms: dict[int, int] = {}
        for v, s in zip(op.ivs, op.strides):
            if id(v) not in self.loop_of_iv:
                raise op.error("indexes with a value that is not a loop induction variable")
            terms[id(v)] = terms.get(id(v), 0) + s
        order = sorted((t for t in terms.items() if t[1]), key=lambda t: self._depth(self.loop_of_iv[t[0]]))
        byte = op.offset * buf.esize
        window = byte // WINDOW
        return GroupKey(id(op.buffer), tuple(order), window), byte - window * WINDOW

    def _limit_pressure(self, k: Operation, classes: list[PtrClass]) -> None:
        """Keep loop counters plus live pointers within the register pool: where a nest needs
        more, the pointers whose accesses are least deeply nested have their addresses computed
        from the loop counters at each access instead (`computed_address`)."""
        L = self.L
        for c in classes:
            mine = {id(self.loop_of_iv[iv]) for iv in c.terms}
            c.homes = {id(self.loop_of_iv[iv]) for iv in c.terms
                       if not mine & set(self._enclosing(self.loop_of_iv[iv]))}
        loops = [f for f in k.walk() if isinstance(f, L.For) and f.trip_count > 0]
        by_id = {id(f): f for f in loops}
        # how often each class's accesses run: the pointer computed at each access is the one
        # that costs least (not one shared with the kernel's hot interior)
        runs: Counter[int] = Counter()
        for op in k.walk():
            if id(op) in self.class_of:
                runs[id(self.class_of[id(op)])] += _executions(op)
        limit = len(self.core_pool) - (1 if len(self.core_pool) > 8 else 0)
        if self.loop_registers:
            limit = min(limit, self.loop_registers)
        while True:
            worst, live = 0, []
            for f in loops:
                path = self._enclosing(f) + [id(f)]
                counters = sum(1 for x in path if x in by_id and by_id[x].trip_count > 1)
                here = [c for c in classes if c not in self.computed and c.homes & set(path)]
                if counters + len(here) > worst:
                    worst, live = counters + len(here), here
            if worst <= limit or not live:
                return
            self.computed.add(min(live, key=lambda c: runs[id(c)]))

    def computed_address(self, op: Operation) -> tuple[Value, int]:
        """(register, offset) for an access whose pointer is not kept in a register: the address
        from the loop counters, iv = lb + (n - counter) * step, with MOVW + MLA per loop. The
        counters do not change within a block's straight-line code, so there one computation
        serves every access with the same terms: the same address, or another by an ADD."""
        key, rel = self._key(op)
        buf = self.bufs[key.buf]
        const = buf.offset + key.window * WINDOW
        terms = []
        for iv, s in key.terms:
            f = self.loop_of_iv[iv]
            n = f.trip_count
            if n == 1:
                const += s * f.lb * buf.esize
            else:
                const += s * (f.lb + n * f.step) * buf.esize
                terms.append((-s * f.step * buf.esize, self.counter_of[id(f)]))
        scope = self.computed_scopes[-1] if self.computed_scopes else {}
        same = (key.buf, tuple((m, id(counter)) for m, counter in terms))
        if same in scope:
            t, known = scope[same]
            if known == const:
                return t, rel
            t = self.add_const(t, const - known, self.reg())
        else:
            t = self.add_const(buf.base, const, self.reg())
            for m, counter in terms:
                t = self.emit1("mla", [self.const_core(m), counter, t], self.reg())
        scope[same] = (t, const)
        return t, rel

    def is_weights(self, buf: Value) -> bool:
        """Whether `buf` holds weights: a weights buffer or its widened copy (`widen_weights`)."""
        return isinstance(buf.op, self.L.WeightsBuf) or id(buf) in self.widened

    def _enclosing(self, op: Operation) -> list[int]:
        """ids of the loop.for ops around `op`."""
        return [id(f) for f in _loops_around(op)]

    def _analyze(self, k: Operation) -> None:
        """Group accesses into pointer classes and find where values die (to free registers)."""
        L = self.L
        classes: list[PtrClass] = []
        fixed: dict[tuple[int, int], PtrClass] = {}
        for op in k.walk():
            if not isinstance(op, L._Access):
                continue
            key, _ = self._key(op)
            if not key.terms:
                if self._feeds_init(op) and self.is_weights(op.buffer):
                    # a fixed bias block: its loads form runs too, from the buffer's base register
                    self.class_of[id(op)] = fixed.setdefault((key.buf, key.window),
                                                             PtrClass(key.buf, key.window, {}, set()))
                continue
            terms = dict(key.terms)
            around = set(self._enclosing(op))
            for c in classes:
                if c.buf != key.buf or c.window != key.window:
                    continue
                if any(c.terms[iv] != s for iv, s in terms.items() if iv in c.terms):
                    continue
                # an iv of one side only must be a loop the other side's accesses are not inside
                if any(id(self.loop_of_iv[iv]) in c.loops for iv in terms if iv not in c.terms):
                    continue
                if any(id(self.loop_of_iv[iv]) in around for iv in c.terms if iv not in terms):
                    continue
                c.terms.update(terms)
                c.loops |= around
                break
            else:
                c = PtrClass(key.buf, key.window, terms, around)
                classes.append(c)
            self.class_of[id(op)] = c
        self._limit_pressure(k, classes)
        # a pointer starts at its first word, so that its first VLDM can write it back
        firsts: dict[int, int] = {}
        for op in k.walk():
            c = self.class_of.get(id(op))
            if c is not None and c.terms and c not in self.computed:
                firsts[id(c)] = min(firsts.get(id(c), WINDOW), self._key(op)[1] // 4 * 4)
        for c in classes:
            c.start = firsts.get(id(c), 0)
        for c in classes:
            for iv in c.terms:
                self.keys_of_loop.setdefault(id(self.loop_of_iv[iv]), []).append(c)
        # Last use of every value, as the op of its defining block after which it is dead.
        self.release_after = {}
        pos: dict[int, int] = {}
        for op in k.walk():
            for r in op.regions:
                for b in r.blocks:
                    pos.update((id(o), i) for i, o in enumerate(b.ops))
        for op in k.walk():
            for r in op.results:
                blk = op.parent
                last = op
                for user, _ in r.uses:
                    a = user
                    while a is not None and a.parent is not blk:
                        a = a.parent.parent.parent if a.parent is not None and a.parent.parent else None
                    if a is not None and pos[id(a)] > pos[id(last)]:
                        last = a
                self.release_after.setdefault(id(last), []).append(r)

    def dense_block(self, block: Block) -> bool:
        """Whether `block` is a dense layer's reduction body: each weight used once, each input
        shared by several accumulators."""
        fmas = [o for o in block.ops if isinstance(o, self.L.AccFma)]
        uses = Counter(id(o.a) for o in fmas)
        return bool(fmas) and len({id(o.b) for o in fmas}) == len(fmas) and min(uses.values()) > 1

    @staticmethod
    def _feeds_init(op: Operation) -> bool:
        """Whether load `op`'s only use is the initial value of a loop.acc (a bias)."""
        uses = op.result.uses if isinstance(op, _loop().Load) else []
        return len(uses) == 1 and uses[0][0].name == "loop.acc" and uses[0][0].init is op.result

    def lower_block(self, block: Block) -> None:
        """Lower a block's ops in order; f32 loads wait for their first use and go out in runs
        (one VLDM per run of consecutive words), and each acc_fma's add trails its multiply."""
        L = self.L
        outer = (self.pending_fma, self.block_loop)
        self.pending_fma = []
        self.const_scopes.append({})
        self.block_loop = block.parent.parent if block.parent is not None else None
        # (a loop of one iteration is straight-line code: it shares its parent's addresses)
        once = isinstance(self.block_loop, L.For) and self.block_loop.trip_count == 1
        self.computed_scopes.append(self.computed_scopes[-1] if once and self.computed_scopes else {})
        runs = self._runs(block)
        # deferred loads are emitted at their first use, so they do not separate acc_fma ops
        ops = self._reorder_fmas([op for op in block.ops if not (isinstance(op, L.Load)
                                                              and id(op.result) in self.run_of)], runs)
        for op in ops:
            self.src = op
            if isinstance(op, L.Load) and id(op.result) in self.run_of:
                continue
            if not isinstance(op, L.AccFma):
                self._drain_fma(0)
            if not isinstance(op, (L.Store, L.AccRead)):
                self._flush_stores()
            if isinstance(op, L.For):
                # loads used inside the loop are loaded once, before it
                inner = {id(v) for o in op.walk() for v in o.operands}
                for r in runs:
                    if any(id(ld.result) in inner for ld, _, _ in r.loads):
                        self.emit_run(r)
                if not any(isinstance(o, L.For) for o in op.body.block.ops):
                    # out of innermost loops; outer loops build them where they are used
                    for v in inner:
                        if v in self.const_ops and not self._only_skipped_init(self.const_ops[v].result):
                            self.constant(self.const_ops[v].result)
            if isinstance(op, L.For) and op.trip_count > 1:
                # (an address kept across the loop would hold a register all through it)
                self.computed_scopes[-1].clear()
            self.lower_op(op)
            if isinstance(op, L.AccFma):
                self._drain_fma(1)
            for v in self.release_after.get(id(op), ()):
                self._release(v)
        self._drain_fma(0)
        self._flush_stores()
        self.const_scopes.pop()
        self.computed_scopes.pop()
        self.pending_fma, self.block_loop = outer

    def _flush_stores(self) -> None:
        """Emit the deferred stores: accumulators in consecutive registers, or values the allocator
        places (it then gives them consecutive registers), to consecutive words off one base go
        out as one VSTM (1+N cycles instead of 2N), the others as VSTR. Bases come in the order of
        their first store (not by object identity, which differs from run to run: the same model
        must give the same bytes)."""
        first: dict[int, int] = {}
        for _, base, _ in self.pending_stores:
            first.setdefault(id(base), len(first))
        todo = sorted(self.pending_stores, key=lambda t: (first[id(t[1])], t[2]))
        self.pending_stores = []

        def follows(j: int, i: int) -> bool:
            """Whether store j can join the VSTM of stores i..j-1: the next word off the same base,
            from the next register (an accumulator) or from a value the allocator places."""
            (v, base, rel), (u, _, urel) = todo[j], todo[j - 1]
            if base is not todo[i][1] or rel != urel + 4:
                return False
            if u.type.num is None:
                return v.type.num is None and all(t[0] is not v for t in todo[i:j])
            return v.type.num == u.type.num + 1

        i = 0
        while i < len(todo):
            j = i + 1
            while j < len(todo) and follows(j, i):
                j += 1
            n, (_, base, rel) = j - i, todo[i]
            if n >= 2 and rel == 0 or n >= 3 and 0 < rel:
                p = base if rel == 0 else self.add_const(base, rel, self.reg())
                self.emit("vstm", [p] + [t[0] for t in todo[i:j]])
            else:
                for v, b, r in todo[i:j]:
                    self.emit("vstr", [v, b], offset=r)
            i = j

    def _drain_fma(self, keep: int) -> None:
        """Emit the adds of the pending products, oldest first, until `keep` are left. An add that
        starts an accumulator may load its initial value's run, and a run may drain the products
        first (`drain_runs`): that inner drain is skipped, so the adds keep their order."""
        if self.draining:
            return
        self.draining = True
        try:
            while len(self.pending_fma) > keep:
                op, prod = self.pending_fma.pop(0)
                src, self.src = self.src, op
                a, acc = self.acc_src(op.acc)
                self.emit("vadd.f32", [a, prod], [acc.type])
                self.src = src
        finally:
            self.draining = False

    def _aligned(self, c: PtrClass, op: Operation) -> bool:
        """Whether pointer `c` is 4-aligned at access `op` (so f16 pairs can be loaded as words):
        the loops around `op` move it by whole words (those of sibling nests rewind it)."""
        esize = self.bufs[c.buf].esize
        loops = self.loop_of_iv
        around = set(self._enclosing(op))
        return all((s * loops[iv].step * esize) % 4 == 0 and (s * loops[iv].lb * esize) % 4 == 0
                   for iv, s in c.terms.items() if id(loops[iv]) in around)

    def _runs(self, block: Block) -> list[_Run]:
        """Runs of loads of this block from consecutive words off one pointer: f32 words, or f16
        pairs (a word holds two halves) when the pointer stays word-aligned."""
        L = self.L
        stored = {id(o.buffer) for op in block.ops for o in op.walk() if isinstance(o, L.Store)}
        by_class: dict[tuple[int, int], list[tuple[int, int, Operation]]] = {}
        for op in block.ops:
            if not isinstance(op, L.Load) or id(op) not in self.class_of or id(op.buffer) in stored:
                continue
            c = self.class_of[id(op)]
            rel = self._key(op)[1] - c.start
            elem = self.bufs[id(op.buffer)].elem
            key = (id(c), self.copy_of.get(id(op), (0,))[0])
            if elem == f32:
                by_class.setdefault(key, []).append((rel, -1, op))
            elif elem == f16 and self._aligned(c, op):
                by_class.setdefault(key, []).append((rel - rel % 4, (rel % 4) // 2, op))
        runs: list[_Run] = []
        # accumulators live around this block, and those it starts (a peeled first step)
        busy = len(ACC_POOL) - len(self.s_free) + sum(isinstance(o, L.Acc) for o in block.ops)
        # a run's registers stay live while its values are used: shorter runs when the
        # accumulators take most registers. Up to 4 accumulators: runs of 8, two live at a time;
        # up to 8 (a dense block of 8 outputs): runs of 8, one at a time; more: runs of 8 when one
        # fits beside them and one step's inputs, else runs of 4, two at a time when they fit
        per_copy: dict[int, int] = {}
        for op in block.ops:
            if isinstance(op, L.Load) and id(op) in self.class_of and not self.is_weights(op.buffer):
                k = self.copy_of.get(id(op), (0,))[0]
                per_copy[k] = per_copy.get(k, 0) + 1
        inputs = max(per_copy.values(), default=0)   # the inputs of one copy are live at a time
        longest = 8 if busy <= 8 or busy + 8 + inputs + 2 <= len(ACC_POOL) * 2 else 4
        # a dense block of 16 outputs with 8 inputs: runs of 8 fill the last registers when the
        # previous run's products are all added before the next run loads (`emit_run`)
        self.drain_runs = busy + 8 + inputs == len(ACC_POOL) * 2 and self.dense_block(block)
        if self.drain_runs:
            longest = 8
        # two runs of 4 live when they fit beside the accumulators, one copy's inputs and products
        self.run_pairs = busy <= 4 or (busy > 8 and busy + 8 + inputs + 2 <= len(ACC_POOL) * 2)
        for loads in by_class.values():
            c = self.class_of[id(loads[0][2])]
            limit = longest
            # f16: a word widens into two registers where it is first used, so a run counts its
            # words; with at most 4 accumulators two runs are live at a time
            words_live = 2 * longest if busy <= 4 else longest
            if loads[0][1] >= 0 and busy + words_live + inputs + 2 > len(ACC_POOL) * 2:
                limit = max(1, longest // 2)
            if all(self._feeds_init(op) for _, _, op in loads):
                limit = 16 if loads[0][1] < 0 else 8   # initial values go straight into accumulators
            if id(block) in self.flat_blocks and not self.is_weights(loads[0][2].buffer) \
                    and id(loads[0][2]) not in self.copy_of:
                # inputs of every step of a flattened tile: pairs (a D register load each; the
                # allocator splits a pair whose second word would wait too long), unless the tile
                # is small (a copied step's inputs form runs of their own: `copy_of`)
                limit = 2 if busy > 8 else 16
            words = sorted({w for w, _, _ in loads})
            groups: list[list[int]] = []
            for w in words:
                if groups and w == groups[-1][-1] + 4 and len(groups[-1]) < limit:
                    groups[-1].append(w)
                else:
                    groups.append([w])
            for g in groups:
                index = {w: i for i, w in enumerate(g)}
                run = _Run(c, g, [(op, index[w], h) for w, h, op in loads if w in index])
                runs.append(run)
                for op, _, _ in run.loads:
                    self.run_of[id(op.result)] = run
        return runs

    def _reorder_fmas(self, ops: list[Operation], runs: list[_Run]) -> list[Operation]:
        """Within each stretch of acc_fma, take the weights' runs two at a time (runs of the same
        accumulator keep their order), so that only two runs of weights are live at once."""
        L = self.L
        out: list[Operation] = []
        i = 0
        while i < len(ops):
            if not isinstance(ops[i], L.AccFma):
                out.append(ops[i])
                i += 1
                continue
            j = i
            while j < len(ops) and isinstance(ops[j], L.AccFma):
                j += 1
            seq = ops[i:j]
            # inputs used once each (depthwise): one run of them at a time; else weights (each
            # shared by a row of accumulators) two runs at a time
            uses = Counter(id(op.a) for op in seq)
            by_a = all(n == 1 for n in uses.values())
            order: dict[int, int] = {}
            keys = []
            for op in seq:
                r = self.run_of.get(id(op.a if by_a else op.b))
                k = order.setdefault(id(r), len(order)) if r is not None else -1
                keys.append(k if by_a or k < 0 or not self.run_pairs else k // 2)
            last: dict[int, int] = {}
            ok = True
            for op, k in zip(seq, keys):
                if k < last.get(id(op.acc), -1):
                    ok = False
                last[id(op.acc)] = k
            if ok:
                seq = [op for _, op in sorted(zip(keys, seq), key=lambda t: t[0])]
            out += seq
            i = j
        return out

    def emit_run(self, run: _Run) -> None:
        """Load a run of consecutive words: VLDM (writing the pointer back when that is the bump
        the loop needs anyway) or VLDR; f16 halves are widened with VCVTB/VCVTT where their word
        is first used (`val`), or at once when they go straight into accumulators."""
        if id(run.loads[0][0].result) in self.vals or id(run.loads[0][0].result) in self.halves_of:
            return
        c = run.cls
        n = len(run.words)
        if c in self.computed or not c.terms:
            p, _ = (self.computed_address if c.terms else self.address)(run.loads[0][0])
            self._emit_words(run, p, run.words[0], False)
            return
        if self.drain_runs:
            self._drain_fma(0)
        off = run.words[0] + self.pending.get(c, 0)
        if not -1020 <= off <= 1020 - 4 * (n - 1):
            self.flush(c)
            off = run.words[0]
        p = self.ptr[c]
        wb = off == 0 and self._may_write_back(c, 4 * n)
        self._emit_words(run, p, off, wb)

    def _emit_words(self, run: _Run, p: Value, off: int, wb: bool) -> None:
        c = run.cls
        n = len(run.words)
        if n == 2 and off != 0:
            # a D register: two words for 3 cycles, at an offset VLDM cannot take
            words = self.emit("vldr", [p], [self.sreg(), self.sreg()], offset=off).results
        elif n == 1 and not wb:
            words = [self.emit1("vldr", [p], self.sreg(), offset=off)]
        else:
            base = p if off == 0 else self.add_const(p, off, self.reg())
            if wb:
                self._flush_stores()   # they may address from the pointer written back here
            into = self._first_taps(run) or self._acc_inits(run)
            types = [self.sreg(into[k] if into else None) for k in range(n)] + ([p.type] if wb else [])
            op = self.emit("vldm", [base], types, writeback=wb or None)
            words = op.results[:n]
            if wb:
                self.ptr[c] = op.results[-1]
                self.pending[c] = self.pending.get(c, 0) - 4 * n
        halves: dict[tuple[int, int], Value] = {}
        # f16 initial values of accumulators: each half widened straight into its accumulator
        accs = self._init_accs(run) if run.loads and all(h >= 0 for _, _, h in run.loads) else None
        targets = (self._take_init_accs(accs) if accs and len({(k, h) for _, k, h in run.loads}) == len(accs)
                   else [None] * len(run.loads))
        lazy = all(n is None for n in targets)
        shared: dict[int, dict[int, list[int]]] = {}
        for (ld, k, h), n in zip(run.loads, targets):
            if h < 0:
                self.vals[id(ld.result)] = words[k]
                continue
            if lazy:
                # widened at the first use of the word (both halves, so that neither product
                # waits on its VCVT): a run of words then holds one register per word, not two
                self.halves_of[id(ld.result)] = (words[k], h, shared.setdefault(k, {}))
                shared[k].setdefault(h, []).append(id(ld.result))
                continue
            if (k, h) not in halves:
                mn = "vcvtt.f32.f16" if h else "vcvtb.f32.f16"
                halves[(k, h)] = self.emit1(mn, [words[k]], self.sreg(n))
            self.vals[id(ld.result)] = halves[(k, h)]

    def _first_taps(self, run: _Run) -> list[int] | None:
        """The registers to load `run` into when its words are the first taps of max-pooling
        accumulators in consecutive registers (each word's only use: the first update of its own
        accumulator, which starts at -inf): the VLDM then fills the accumulators directly."""
        L = self.L
        if len(run.loads) != len(run.words) or any(h >= 0 for _, _, h in run.loads):
            return None
        regs: dict[int, int] = {}
        for ld, k, _ in run.loads:
            uses = ld.result.uses
            if len(uses) != 1 or not isinstance(uses[0][0], L.AccMax) or uses[0][0].a is not ld.result:
                return None
            u = uses[0][0]
            init = self.fresh.get(id(u.acc))
            if init is None or id(init) not in self.const_ops or self.const_ops[id(init)].value != -math.inf:
                return None
            regs[k] = self.vals[id(u.acc)].type.num
        nums = [regs[k] for k in range(len(run.words))]
        if any(b != a + 1 for a, b in itertools.pairwise(nums)):
            return None
        for ld, _, _ in run.loads:
            u = ld.result.uses[0][0]
            del self.fresh[id(u.acc)]
            self.loaded_first.add(id(u))
        return nums

    def _init_accs(self, run: _Run) -> list[Operation] | None:
        """The loop.acc ops, one per load of `run` in its order, when each load's only use is the
        initial value of an accumulator not yet allocated whose first update cannot take it
        directly (e.g. a bias before a reduction loop); None otherwise."""
        accs = []
        for ld, _, _ in run.loads:
            uses = ld.result.uses
            if len(uses) != 1 or uses[0][0].name != "loop.acc" or uses[0][0].init is not ld.result:
                return None
            a = uses[0][0]
            if a.parent is not ld.parent or id(a.result) in self.precolored \
                    or a.result.type.elem != f32 or self._first_write(a) is not None:
                return None
            accs.append(a)
        return accs if len(accs) <= len(self.s_free) else None

    def _take_init_accs(self, accs: list[Operation]) -> list[int]:
        """Allocate the accumulators of `_init_accs` now: their initial values go straight into them."""
        nums = []
        for a in accs:
            nums.append(self.take_s(a.result))
            self.loaded_init.add(id(a))
        return nums

    def _acc_inits(self, run: _Run) -> list[int] | None:
        """The registers to load `run` into when its words are the initial values of accumulators
        (`_init_accs`) and free accumulator registers are consecutive: the VLDM then fills the
        accumulators and no VMOV per accumulator follows."""
        n = len(run.words)
        if len(run.loads) != n or any(h >= 0 for _, _, h in run.loads):
            return None
        accs = self._init_accs(run)
        if accs is None or [k for _, k, _ in run.loads] != list(range(n)) \
                or any(b != a + 1 for a, b in itertools.pairwise(self.s_free[:n])):
            return None
        return self._take_init_accs(accs)

    def _may_write_back(self, c: PtrClass, nbytes: int) -> bool:
        """Whether advancing pointer `c` by `nbytes` now stays within this iteration's bump."""
        f = self.block_loop
        if not isinstance(f, self.L.For) or id(f.iv) not in c.terms:
            return False
        if any(isinstance(o, self.L.For) for o in f.body.block.ops):
            return False  # the bumps are applied before the inner loop: nothing to gain
        bump = c.terms[id(f.iv)] * f.step * self.bufs[c.buf].esize
        return -self.pending.get(c, 0) + nbytes <= bump

    # ------------------------------------------------------------------ precolored S registers

    def take_s(self, owner: Value) -> int:
        if not self.s_free:
            raise self.src.error("needs more than 16 accumulators and predicated results live at "
                                 "once; use smaller tile sizes")
        n = self.s_free.pop(0)
        self.own(owner, n)
        return n

    def own(self, owner: Value, n: int) -> None:
        self.precolored[id(owner)] = n
        self.owners[n] = self.owners.get(n, 0) + 1

    def _release(self, v: Value) -> None:
        n = self.precolored.pop(id(v), None)
        if n is None:
            return
        self.owners[n] -= 1
        if self.owners[n] == 0:
            self.s_free.insert(0, n)
            self.s_free.sort()

    def take_core(self) -> int:
        if not self.core_free:
            raise self.src.error("needs more loop counters and pointers than there are registers "
                                 "(loop nest too deep)")
        return self.core_free.pop(0)

    # ------------------------------------------------------------------ ops

    def val(self, v: Value) -> Value:
        if id(v) in self.relu_of and id(v) not in self.vals:
            self.vals[id(v)] = self.emit1("vmov", [self.relu_bits(v)], self.sreg())
        if id(v) in self.clamp_of and id(v) not in self.vals:
            self.vals[id(v)] = self.emit1("vmov", [self.clamp_bits(v)], self.sreg())
        if id(v) in self.const_ops:
            return self.constant(v)
        if id(v) not in self.vals and id(v) not in self.halves_of and id(v) in self.run_of:
            self.emit_run(self.run_of[id(v)])
        if id(v) in self.halves_of and id(v) not in self.vals:
            word, h, by_half = self.halves_of[id(v)]
            for half in sorted(by_half, key=lambda x: x != h):
                wide = self.emit1("vcvtt.f32.f16" if half else "vcvtb.f32.f16", [word], self.sreg())
                for i in by_half[half]:
                    self.vals[i] = wide
        t = self.vals.get(id(v))
        if t is None:
            raise self.src.error(f"uses {v.name_hint or 'a value'} that has no register")
        return t

    def lower_op(self, op: Operation) -> None:
        L = self.L
        handler = self.HANDLERS.get(op.name)
        if handler is None:
            if isinstance(op, L._Pure) and op.elem != f32 or op.name in ("loop.sitofp", "loop.acc_smlad"):
                raise op.error("integer arithmetic needs the int8 code generator, which does not exist yet")
            raise op.error("has no Thumb lowering")
        handler(self, op)

    def op_for(self, f: Operation) -> None:
        n = f.trip_count
        if n == 0:
            return
        own = [c for c in self.keys_of_loop.get(id(f), ()) if id(f) in c.homes and c not in self.computed]
        mine = [c for c in self.keys_of_loop.get(id(f), []) if c not in self.computed]
        for c in own:
            buf = self.bufs[c.buf]
            self.ptr[c] = self.add_const(buf.base, buf.offset + c.window * WINDOW + c.start,
                                         self.reg(self.take_core()))
        for c in mine:
            self.pending[c] = self.pending.get(c, 0) + c.terms[id(f.iv)] * f.lb * self.bufs[c.buf].esize
        self.flush_all()
        counter = None
        if n > 1:
            cnum = self.take_core()
            counter = self.const_core(n, self.reg(cnum))
            self.counter_of[id(f)] = counter
        head = self.new_label(self.kname)
        self.label(head)
        self.lower_block(f.body.block)
        self.src = f
        for c in mine:
            self.pending[c] = self.pending.get(c, 0) + c.terms[id(f.iv)] * f.step * self.bufs[c.buf].esize
        if n > 1:
            self.flush_all()
            self.emit("sub", [counter], [self.reg(cnum)], imm=1, setflags=True)
            self.emit("b", target=SymbolRef(head), cond="ne")
            self.core_free.append(cnum)
        for c in mine:
            if id(f) not in c.homes:
                # back to the value between loops: undo the start and the n bumps
                back = c.terms[id(f.iv)] * (f.lb + n * f.step) * self.bufs[c.buf].esize
                self.pending[c] = self.pending.get(c, 0) - back
        for c in own:
            self.pending.pop(c, None)
            self.core_free.append(self.ptr.pop(c).type.num)
        self.core_free.sort(key=self.core_pool.index)

    def flush(self, c: PtrClass) -> None:
        d = self.pending.pop(c, 0)
        if d and c in self.ptr:
            self._flush_stores()   # deferred stores address from the pointer's current value
            p = self.ptr[c]
            self.ptr[c] = self.add_const(p, d, p.type)

    def flush_all(self) -> None:
        for c in list(self.pending):
            self.flush(c)

    def address(self, op: Operation) -> tuple[Value, int]:
        """(base register, byte offset) for a load or store."""
        key, rel = self._key(op)
        if not key.terms:
            # a fixed address: one base register per buffer window, shared in this block
            for scope in reversed(self.const_scopes):
                if (key.buf, key.window) in scope:
                    return scope[(key.buf, key.window)], rel
            buf = self.bufs[key.buf]
            base = self.add_const(buf.base, buf.offset + key.window * WINDOW, self.reg())
            self.const_scopes[-1][(key.buf, key.window)] = base
            return base, rel
        c = self.class_of[id(op)]
        if c in self.computed:
            return self.computed_address(op)
        rel -= c.start
        lo, hi = (-1020, 1020) if self.bufs[key.buf].esize == 4 else (0, 4095)
        if not lo <= rel + self.pending.get(c, 0) <= hi:
            self.flush(c)
        # the pointer may lag its nominal value by the pending bumps: fold them into the offset
        return self.ptr[c], rel + self.pending.get(c, 0)

    def op_load(self, op: Operation) -> None:
        base, rel = self.address(op)
        buf = self.bufs[id(op.buffer)]
        if buf.elem == f16:
            h = self.emit1("ldrh", [base], self.reg(), offset=rel)
            s = self.emit1("vmov", [h], self.sreg())
            self.vals[id(op.result)] = self.emit1("vcvtb.f32.f16", [s], self.sreg())
        elif buf.elem == f32:
            self.vals[id(op.result)] = self.emit1("vldr", [base], self.sreg(), offset=rel)
        else:
            raise op.error(f"loads of {buf.elem} need the int8 code generator")

    def op_store(self, op: Operation) -> None:
        base, rel = self.address(op)
        buf = self.bufs[id(op.buffer)]
        if buf.elem != f32:
            raise op.error(f"stores to {buf.elem} buffers are not supported by the float code generator")
        if id(op.value) in self.relu_of and id(op.value) not in self.vals and -255 <= rel <= 4095:
            self.emit("str", [self.relu_bits(op.value), base], offset=rel)
            return
        if id(op.value) in self.clamp_of and -255 <= rel <= 4095:
            self.emit("str", [self.clamp_bits(op.value), base], offset=rel)
            return
        v = self.val(op.value)
        if v.type.num is not None and id(op.value) in self.precolored or v.type.num is None and \
                not any(isinstance(o, self.L.Load) and o.buffer is op.buffer for o in op.parent.ops):
            # an accumulator, or a value the allocator places (its block reads nothing of that
            # buffer): stored with its neighbours when the block moves on
            self.pending_stores.append((v, base, rel))
            return
        self._flush_stores()
        self.emit("vstr", [v, base], offset=rel)

    def op_const(self, op: Operation) -> None:
        """Constants are built where they are used (see `constant`), not where they are defined:
        canonicalize hoists them to the kernel's top, and keeping them in registers over the
        whole kernel would cost spills in the register-hungry reduction loops."""
        if op.result.type != f32:
            raise op.error("integer constants need the int8 code generator")
        self.const_ops[id(op.result)] = op

    def constant(self, v: Value) -> Value:
        """The register holding constant `v` in the current block (built on first use there, or
        before the loop that uses it)."""
        for scope in reversed(self.const_scopes):
            if id(v) in scope:
                return scope[id(v)]
        src, self.src = self.src, self.const_ops[id(v)]
        t = self.const_f32(self.const_ops[id(v)].value)
        self.src = src
        self.const_scopes[-1][id(v)] = t
        return t

    def op_neg(self, op: Operation) -> None:
        self.vals[id(op.result)] = self.emit1("vneg.f32", [self.val(op.a)], self.sreg())

    def op_fma(self, op: Operation) -> None:
        t = self.emit1("vmul.f32", [self.val(op.a), self.val(op.b)], self.sreg())
        self.vals[id(op.result)] = self.emit1("vadd.f32", [t, self.val(op.c)], self.sreg())

    def op_call(self, op: Operation) -> None:
        """A float op computed by a math routine (mathlib.OP_ROUTINES): s0 in, s0 out, AAPCS."""
        from ml4f.compiler.lowering.mathlib import OP_ROUTINES
        name = OP_ROUTINES[op.name]
        self.routines.add(name)
        self.emit1("vmov.f32", [self.val(op.a)], self.sreg(0))
        self.emit("bl", target=SymbolRef(name))
        r = self.get_register(self.sreg(0))
        self.vals[id(op.result)] = self.emit1("vmov.f32", [r], self.sreg())

    def predicated_move(self, op: Operation, keep: Value, other: Value, cond: str) -> None:
        """result = keep, then `other` when `cond` holds (flags already set). The result takes
        the register of an operand that dies here when one is precolored (`keep`'s, or `other`'s
        with the move reversed: other, then keep unless `cond`), else one of the pool."""
        dying = self.release_after.get(id(op), [])
        mine = [v for v in dying if self.vals.get(id(v)) is keep and id(v) in self.precolored]
        if not mine and not self.s_free:
            theirs = [v for v in dying if self.vals.get(id(v)) is other and id(v) in self.precolored]
            if theirs:
                keep, other, cond, mine = other, keep, INVERSE_COND[cond], theirs
        for v in mine:
            dying.remove(v)
            self._release(v)
        n = self.take_s(op.result)
        r0 = keep if keep.type.num == n else self.emit1("vmov.f32", [keep], self.sreg(n))
        self.block.append(self.T.It([], [], {"cond": cond}, origin=self.src))
        self.emit("vmov.f32", [other], [self.sreg(n)], cond=cond)
        # the register holds the result after the predicated move (the same physical register)
        self.vals[id(op.result)] = r0

    def compare(self, a: Value, b: Value) -> None:
        self.emit("vcmp.f32", [a, b])
        self.emit("vmrs")

    def _is_plus_zero(self, v: Value) -> bool:
        """Whether `v` is the constant +0.0 (relu's bound)."""
        c = self.const_ops.get(id(v))
        return c is not None and c.value == 0.0 and math.copysign(1.0, c.value) > 0

    def op_maxmin(self, op: Operation) -> None:
        zero = [v for v in (op.a, op.b) if self._is_plus_zero(v)]
        if op.name == "loop.maxf" and zero:
            # relu on the bits: clear the word when the sign is set (3 cycles, no IT block); a
            # store of the result takes the core register as it is
            # built where it is used: computing a row of them before their stores would keep
            # them all live in core registers
            x = op.b if zero[0] is op.a else op.a
            self.relu_of[id(op.result)] = x
            if id(x) in self.precolored:
                self.own(op.result, self.precolored[id(x)])
            return
        if op.name == "loop.minf" and self._clamp(op):
            return
        a, b = self.val(op.a), self.val(op.b)
        self.compare(a, b)
        self.predicated_move(op, a, b, "mi" if op.name == "loop.maxf" else "gt")

    def _clampable(self, op: Operation) -> tuple[Value, float] | None:
        """(r, c) when minf `op` is min(r, c) for r = max(x, +0.0) and a positive constant c
        (relu6, hard swish): a clamp on the bits (`_clamp`)."""
        L = self.L
        if not isinstance(op, L.MinF):
            return None
        for r, c in ((op.a, op.b), (op.b, op.a)):
            m = r.op
            if id(c) in self.const_ops and 0.0 < self.const_ops[id(c)].value < math.inf and \
                    isinstance(m, L.MaxF) and any(self._is_plus_zero(z) for z in (m.a, m.b)):
                return r, self.const_ops[id(c)].value
        return None

    def _clamp(self, op: Operation) -> bool:
        """min(max(x, 0), c) for a positive constant c (relu6, hard swish): on the bits in a core
        register, where non-negative floats order as integers (VMOV, BIC, CMP, IT, MOV: 5
        cycles, the constant's bits built once per block; a VMOV back where arithmetic reads
        it) instead of a round trip through VCMP, which would also hold an S register of the
        accumulator pool per result."""
        rc = self._clampable(op)
        if rc is None or id(rc[0]) not in self.relu_of or id(rc[0]) in self.vals or not self.core_free:
            return False
        self.clamp_of[id(op.result)] = (rc[0], f32_bits(rc[1]))
        return True

    def clamp_bits(self, v: Value) -> Value:
        """A core register with the bits of min(max(x, 0), c) for v recorded by `_clamp`."""
        r, k = self.clamp_of[id(v)]
        key = ("bits", k)
        limit = next((sc[key] for sc in reversed(self.const_scopes) if key in sc), None)
        if limit is None:
            limit = self.const_scopes[-1][key] = self.const_core(k)
        n = self.take_core()
        fixed = self.relu_bits(r, self.reg(n))
        self.emit("cmp", [fixed, limit])
        self.block.append(self.T.It([], [], {"cond": "gt"}, origin=self.src))
        out = self.emit1("mov", [limit], self.reg(n), cond="gt")
        self.core_free.append(n)
        self.core_free.sort(key=self.core_pool.index)
        return out

    def relu_bits(self, v: Value, rtype: Any = None) -> Value:
        """A core register (of type `rtype`, default virtual) with the bits of max(x, 0) for
        v = maxf(x, 0.0)."""
        r = self.emit1("vmov", [self.val(self.relu_of[id(v)])], self.reg())
        return self.emit1("bic", [r, r], rtype or self.reg(), shift="asr #31")

    def op_cmpf(self, op: Operation) -> None:
        for user, _ in op.result.uses:
            if not isinstance(user, self.L.Select) or user.c is not op.result:
                raise op.error("is only supported as the condition of loop.select")
        self.flag_src[id(op.result)] = op

    def op_select(self, op: Operation) -> None:
        c = self.flag_src.get(id(op.c))
        if c is None:
            raise op.error("needs its condition from a loop.cmpf")
        self.compare(self.val(c.a), self.val(c.b))
        self.predicated_move(op, self.val(op.b), self.val(op.a), FLOAT_COND[c.pred])

    def op_acc(self, op: Operation) -> None:
        if op.result.type.elem != f32:
            raise op.error("integer accumulators need the int8 code generator")
        if id(op) in self.loaded_init:
            # the VLDM of its initial value went straight into its register (`_acc_inits`)
            self.vals[id(op.result)] = self.val(op.init)
            return
        if id(op.init) in self.run_of and id(op.init) not in self.vals and id(op.init) not in self.halves_of \
                and self._first_write(op) is None:
            self.val(op.init)   # its run may load straight into this and its neighbours' registers
            if id(op) in self.loaded_init:
                self.vals[id(op.result)] = self.val(op.init)
                return
        n = self.take_s(op.result)
        if self._first_write(op) is not None:
            # the first update writes the register from the initial value (see `acc_src`)
            self.fresh[id(op.result)] = op.init
            self.vals[id(op.result)] = self.get_register(self.sreg(n))
            return
        self.vals[id(op.result)] = self.emit1("vmov.f32", [self.val(op.init)], self.sreg(n))

    def acc_src(self, v: Value) -> tuple[Value, Value]:
        """(register to read the accumulator's value from, register to write it to): the initial
        value's register when `v` has not been written yet."""
        acc = self.vals[id(v)]
        init = self.fresh.pop(id(v), None)
        return (acc if init is None else self.val(init)), acc

    def op_acc_add(self, op: Operation) -> None:
        src, acc = self.acc_src(op.acc)
        self.emit("vadd.f32", [src, self.val(op.a)], [acc.type])

    def op_acc_fma(self, op: Operation) -> None:
        prod = self.emit1("vmul.f32", [self.val(op.a), self.val(op.b)], self.sreg())
        self.pending_fma.append((op, prod))

    def op_acc_max(self, op: Operation) -> None:
        self.val(op.a)   # loads its run, which may fill the accumulator directly
        if id(op) in self.loaded_first:
            return   # the load of `a` went straight into the accumulator (`_first_taps`)
        init = self.fresh.get(id(op.acc))
        if init is not None and id(init) in self.const_ops and self.const_ops[id(init)].value == -math.inf:
            # max(-inf, a) = a (NaN inputs aside, which max pooling does not define either)
            del self.fresh[id(op.acc)]
            acc = self.vals[id(op.acc)]
            self.emit("vmov.f32", [self.val(op.a)], [acc.type])
            return
        src, acc = self.acc_src(op.acc)
        if src is not acc:
            self.emit("vmov.f32", [src], [acc.type])
        self.compare(acc, self.val(op.a))
        self.block.append(self.T.It([], [], {"cond": "mi"}, origin=self.src))
        self.emit("vmov.f32", [self.val(op.a)], [acc.type], cond="mi")

    def op_acc_read(self, op: Operation) -> None:
        acc = self.val(op.acc)
        self.own(op.result, acc.type.num)
        self.vals[id(op.result)] = acc

    HANDLERS: ClassVar[dict[str, Callable[..., None]]] = {}


def _binary(mn: str) -> Callable[[_Lowering, Operation], None]:
    def lower(self: _Lowering, op: Operation) -> None:
        self.vals[id(op.result)] = self.emit1(mn, [self.val(op.a), self.val(op.b)], self.sreg())
    return lower


_Lowering.HANDLERS.update({
    "loop.for": _Lowering.op_for, "loop.load": _Lowering.op_load, "loop.store": _Lowering.op_store,
    "loop.const": _Lowering.op_const, "loop.addf": _binary("vadd.f32"), "loop.subf": _binary("vsub.f32"),
    "loop.mulf": _binary("vmul.f32"), "loop.divf": _binary("vdiv.f32"), "loop.maxf": _Lowering.op_maxmin,
    "loop.minf": _Lowering.op_maxmin, "loop.negf": _Lowering.op_neg, "loop.fma": _Lowering.op_fma,
    "loop.exp": _Lowering.op_call, "loop.cmpf": _Lowering.op_cmpf, "loop.select": _Lowering.op_select,
    "loop.acc": _Lowering.op_acc, "loop.acc_add": _Lowering.op_acc_add, "loop.acc_fma": _Lowering.op_acc_fma,
    "loop.acc_max": _Lowering.op_acc_max, "loop.acc_read": _Lowering.op_acc_read,
})


@dataclass
class ThumbFunction:
    """The result of lowering one loop.func: the thumb.func plus what the driver needs besides."""

    func: Operation
    weights: bytes
    weights_elided: bool
    layer_labels: list[tuple[str, str]]
    routines: set[str]


def lower_func(func: Operation, module: Module, unroll: int = 0, pack: bool = True,
               loop_registers: int = 0, widen: bool = True) -> ThumbFunction:
    """Lower one planned loop.func to a thumb.func on virtual (and precolored) registers.

    `unroll`: 0 picks the unroll factor of innermost reduction loops automatically, 1 keeps them,
    k > 1 unrolls them by k. `pack` interleaves output channels of weights (`pack_weights`).
    `loop_registers` (0: the whole pool) bounds the core registers for counters and pointers.
    `widen` lets f16 weights that a kernel reads often be widened once into free arena bytes
    (`widen_weights`; not with unroll=1).
    The loop function is rewritten in place (unrolled loops, packed weights): it still computes
    the same, and the returned weights blob matches it.
    """
    lw = _Lowering(func, module, unroll, pack, loop_registers, widen)
    tf = lw.run()
    return ThumbFunction(tf, bytes(lw.layout.blob), lw.layout.elided, lw.layer_labels, lw.routines)


@register_pass
@dataclass(frozen=True)
class LowerToThumb(ModulePass):
    """Selects Thumb-2/FPv4 instructions for every loop.func (virtual registers; see the module doc).

    Option pack (default true) interleaves the output channels of weight buffers in fours.
    Option unroll: 0 (default) unrolls innermost reduction loops by the largest factor whose
    values fit in registers, 1 keeps them, k > 1 unrolls by k. Option loop_registers (0: all
    of r2-r12) bounds the core registers kept for loop counters and pointers; the addresses of
    pointers that do not fit are computed from the counters. Option widen (default true) copies
    f16 weights that a kernel reads at least WIDEN_USES times each to f32 in arena bytes no buffer
    holds during that kernel, once per call, so that the kernel reads f32 words (`widen_weights`).
    The functions must have been planned (plan-memory). The weights leave the IR here: the code
    reads them from the blob at the header's weights_offset (`WeightsLayout`: the loop.weights
    buffers in order, 4-aligned), which `ml4f.compiler.codegen.generate` returns with the code.
    Example: ml4f-opt model.l4f --lower-to-loops --tile -p 'plan-memory,lower-to-thumb{unroll=1}' 
    """

    name: ClassVar[str] = "lower-to-thumb"
    unroll: int = 0
    pack: bool = True
    loop_registers: int = 0
    widen: bool = True

    def apply(self, ctx: Context, module: Module) -> None:
        L = _loop()
        if self.unroll < 0:
            raise CompileError(f"unroll must be 0 (automatic), 1 (none) or a factor, got {self.unroll}")
        if self.loop_registers and self.loop_registers < 2:
            raise CompileError(f"loop_registers must be 0 (all) or at least 2, got {self.loop_registers}")
        for op in list(module.ops):
            if isinstance(op, L.Func):
                new = lower_func(op, module, self.unroll, self.pack, self.loop_registers, self.widen).func
                module.body.insert_before(op, new)
                _erase_tree(module.body, op)


def _erase_tree(block: Block, op: Operation) -> None:
    for inner in reversed(list(op.walk())):
        inner.drop_operands()
        for r in inner.results:
            r.uses.clear()
    block.ops.remove(op)
    op.parent = None
