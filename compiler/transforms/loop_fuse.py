"""fuse: run an element-wise kernel inside the store of the kernel that produces its input.

`lower-to-loops{fuse=false}` gives every layer a kernel of its own; an activation or batch-norm
scale/shift then reads its producer's buffer back from memory. This pass merges such a kernel into
its producer, on the loop dialect alone (it works on parsed files too):

    loop.kernel @conv { ... loop.store %s, %c, %oy, %oc {strides = [16, 1]} ... }
    loop.kernel @relu {inplace = true} {
      %zero = loop.const {value = 0.0} : f32
      loop.for %i = 0 to 47 step 1 {
        loop.for %ch = 0 to 16 step 1 {
          %x = loop.load %c, %i, %ch {strides = [16, 1]} : f32
          %y = loop.maxf %x, %zero : f32
          loop.store %y, %r, %i, %ch {strides = [16, 1]}
    =>
    loop.kernel @conv { ... %y = loop.maxf %s, %zero : f32
                            loop.store %y, %r, %oy, %oc {strides = [16, 1]} ... }

and the buffer %c disappears, so plan-memory needs no room for it.

An element-wise kernel is recognised by its shape: a perfect nest of loops from 0 with step 1
that walks its output buffer in row-major order (offset 0, contiguous strides), whose innermost
body holds only loads, pure scalar ops and that one store. It reads one arena buffer (the source)
at exactly the element it writes, and any `loop.weights` buffer at any index (per-channel
batch-norm scale and shift, broadcast constants). With `residual=true` it may also read further
arena buffers at the element it writes, when they are complete before the producer runs (a
residual Add into the convolution that ends the block).

The consumer's loop indices are recovered from the element index of each producer store as
mixed-radix digits: a store to `c + sum(t * iv)` in a buffer walked as n0 x n1 x ... puts each term
in the highest digit whose stride divides t, and the fusion is made only when every digit provably
stays in its range over the producer's loops (so no digit carries into the next). Fusion is
legal, and made, when the source is an f32/i32 arena buffer that is not a model input or output,
is written by one earlier kernel that never reads it back (softmax does), is read by no one but
the consumer, has the same type as the consumer's output, and no kernel between the two touches
that output. Anything else is kept as it is, silently.

`lower-to-loops{fuse=false},fuse` gives the same IR as `lower-to-loops` wherever the lowering
fuses (after convolution, dense, pooling, global pooling and element-wise layers); the pass also
fuses into data-movement kernels (concat, padding, cropping, upsampling), which the lowering
leaves alone. After fusing, buffers are declared in order of first use (as the lowering declares
them), and a function that plan-memory has already planned is planned again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ml4f.compiler.context import Context
from ml4f.compiler.ir import Block, Module, Operation, Value
from ml4f.compiler.passes import ModulePass, register_pass
from ml4f.compiler.transforms.loop_passes import Cloner
from ml4f.compiler.types import f32, i32

# An affine expression over induction variables: (constant, {iv: coefficient}).
Affine = tuple[int, dict[Value, int]]


def _loop():
    from ml4f.dialects import loop

    return loop


def _index(access: Operation) -> Affine:
    """The element index of a load or store as (offset, {iv: stride})."""
    terms: dict[Value, int] = {}
    for v, s in zip(access.ivs, access.strides):
        terms[v] = terms.get(v, 0) + s
    return access.offset, {v: s for v, s in terms.items() if s}


@dataclass
class Elementwise:
    """A kernel recognised as element-wise: its loop nest (outermost first), the innermost body,
    the constants defined outside that body, its one store, and the arena buffers it reads at the
    element it writes (`direct`, with their loads)."""

    kernel: Operation
    loops: list[Operation]
    body: Block
    outer_consts: list[Operation]
    store: Operation
    direct: dict[int, tuple[Value, list[Operation]]]

    @property
    def out(self) -> Value:
        return self.store.buffer

    def extents(self) -> list[int]:
        return [f.trip_count for f in self.loops]


_PURE_NAMES = {"loop.const", "loop.cmpf", "loop.select", "loop.sitofp"}


def match_elementwise(kernel: Operation) -> Elementwise | None:
    """The element-wise structure of `kernel`, or None when it has another shape."""
    L = _loop()
    loops: list[Operation] = []
    outer_consts: list[Operation] = []
    block = kernel.body.block
    while True:
        rest = [op for op in block.ops if not isinstance(op, L.Const)]
        if len(rest) == 1 and isinstance(rest[0], L.For):
            outer_consts += [op for op in block.ops if isinstance(op, L.Const)]
            f = rest[0]
            if f.lb != 0 or f.step != 1 or f.trip_count < 1:
                return None
            loops.append(f)
            block = f.body.block
            continue
        break
    stores = [op for op in block.ops if isinstance(op, L.Store)]
    if len(stores) != 1:
        return None
    store = stores[0]
    # Row-major walk of the whole output, innermost loop fastest.
    out = store.buffer
    if not isinstance(out.op, L.Alloc):
        return None
    offset, terms = _index(store)
    stride, want = 1, {}
    for f in reversed(loops):
        want[f.iv] = stride
        stride *= f.trip_count
    if offset != 0 or terms != want or stride != out.type.size:
        return None
    local = {id(f.iv) for f in loops} | {id(c.result) for c in outer_consts}
    direct: dict[int, tuple[Value, list[Operation]]] = {}
    for op in block.ops:
        if op.regions or not (isinstance(op, (L._Pure, L.Load, L.Store)) or op.name in _PURE_NAMES):
            return None
        for v in op.operands:
            owner = v.op
            defined_here = owner is not None and owner.parent is block
            at_func = owner is not None and isinstance(owner, (L.Alloc, L.WeightsBuf))
            if not (defined_here or at_func or id(v) in local):
                return None
        if isinstance(op, L.Load) and not isinstance(op.buffer.op, L.WeightsBuf):
            if _index(op) != (offset, terms):
                return None  # an arena operand read broadcast or shifted
            direct.setdefault(id(op.buffer), (op.buffer, []))[1].append(op)
    return Elementwise(kernel, loops, block, outer_consts, store, direct)


def iv_bounds(v: Value) -> tuple[int, int] | None:
    """(lowest, highest) value of a loop index, None when it is not one or its loop never runs."""
    L = _loop()
    owner = v.owner
    loop_op = owner.parent.parent if isinstance(owner, Block) and owner.parent else None
    if not isinstance(loop_op, L.For) or loop_op.trip_count == 0:
        return None
    return loop_op.lb, loop_op.last


def digits(index: Affine, extents: list[int]) -> list[Affine] | None:
    """The row-major loop indices (over `extents`) of element `index`, each affine in the ivs of
    `index`; None when some digit is not provably in its range."""
    if not extents:
        return []
    strides = [1] * len(extents)
    for j in range(len(extents) - 2, -1, -1):
        strides[j] = strides[j + 1] * extents[j + 1]
    const, terms = index
    out: list[Affine] = []
    for s in strides:
        d = const // s
        const -= d * s
        out.append((d, {}))
    for v, t in terms.items():
        if t == 0:
            continue
        j = next(j for j, s in enumerate(strides) if t % s == 0)
        out[j][1][v] = out[j][1].get(v, 0) + t // strides[j]
    for (c, ts), n in zip(out, extents):
        lo = hi = c
        for v, k in ts.items():
            b = iv_bounds(v)
            if b is None:
                return None
            lo += min(k * b[0], k * b[1])
            hi += max(k * b[0], k * b[1])
        if lo < 0 or hi >= n:
            return None
    return out


def _kernel_of(op: Operation, kernel_cls: type) -> Operation | None:
    while op is not None and not isinstance(op, kernel_cls):
        block = op.parent
        op = block.parent.parent if block is not None and block.parent is not None else None
    return op


class FunctionFusion:
    """Fuses the element-wise kernels of one loop.func, first to last."""

    def __init__(self, func: Operation, residual: bool):
        self.L = _loop()
        self.func = func
        self.residual = residual

    def position(self, op: Operation) -> int:
        """The index of the kernel that holds `op`; -1 outside kernels (loop.return: past all)."""
        k = _kernel_of(op, self.L.Kernel)
        if k is None:
            return len(self.func.kernels) if isinstance(op, self.L.Return) else -1
        return self.func.kernels.index(k)

    def writers(self, buf: Value) -> set[int]:
        return {self.position(u) for u, i in buf.uses if isinstance(u, self.L.Store) and i == 1}

    def run(self) -> bool:
        changed = False
        for kernel in list(self.func.kernels):
            m = match_elementwise(kernel)
            if m is not None and self.fuse(m):
                changed = True
        return changed

    def fuse(self, m: Elementwise) -> bool:
        """Try each directly read buffer as the source, latest producer first."""
        L = self.L
        me = self.func.kernels.index(m.kernel)
        candidates = []
        for buf, loads in m.direct.values():
            w = self.writers(buf)
            if len(w) == 1 and 0 <= min(w) < me:
                candidates.append((min(w), buf, loads))
        for producer_at, src, loads in sorted(candidates, key=lambda c: -c[0]):
            others = [b for b, _ in m.direct.values() if b is not src]
            if others and not self.residual:
                return False
            if not self.legal(m, me, producer_at, src, loads, others):
                continue
            producer = self.func.kernels[producer_at]
            stores = [u for u, i in src.uses if isinstance(u, L.Store)]
            maps = [digits(_index(s), m.extents()) for s in stores]
            if any(d is None for d in maps):
                continue
            self.rewrite(m, producer, src, loads, stores, maps)
            return True
        return False

    def legal(self, m: Elementwise, me: int, producer_at: int, src: Value, loads: list[Operation],
              others: list[Value]) -> bool:
        L = self.L
        alloc = src.op
        if not isinstance(alloc, L.Alloc) or alloc.input >= 0 or src.type != m.out.type or \
                src.type.elem not in (f32, i32):
            return False  # narrowing stores (f16, i8) would change the values passed on
        load_ids = {id(op) for op in loads}
        for user, i in src.uses:
            at = self.position(user)
            if not (isinstance(user, L.Store) and i == 1 and at == producer_at) and id(user) not in load_ids:
                return False  # returned, read elsewhere, or read back by its producer
        for user, _ in m.out.uses:
            if user is not m.store and producer_at <= self.position(user) <= me:
                return False
        for b in others:
            if b is m.out or any(w >= producer_at for w in self.writers(b)):
                return False  # not complete when the producer runs
        return True

    def rewrite(self, m: Elementwise, producer: Operation, src: Value, loads: list[Operation],
                stores: list[Operation], maps: list[list[Affine] | None]) -> None:
        consts = self.producer_consts(producer, m.outer_consts)
        skip = {id(op) for op in loads} | {id(m.store)}
        for store, digit in zip(stores, maps):
            assert digit is not None
            vmap = {id(op.result): store.value for op in loads}
            vmap.update(consts)
            cloner = Cloner(vmap, {id(f.iv): d for f, d in zip(m.loops, digit)})
            tmp = Block()
            for op in m.body.ops:
                if id(op) not in skip:
                    cloner.clone(op, tmp)
            block = store.parent
            for op in list(tmp.ops):
                block.insert_before(store, op)
            tmp.ops.clear()
            store.set_operand(0, cloner.value(m.store.value))
            store.set_operand(1, m.out)
        fb = self.func.body.block
        fb.erase(m.kernel)
        fb.erase(src.op)

    def producer_consts(self, producer: Operation, consts: list[Operation]) -> dict[int, Value]:
        """The producer's leading constants for the consumer's outer ones, added when missing."""
        L = self.L
        top = producer.body.block
        lead = 0
        while lead < len(top.ops) and isinstance(top.ops[lead], L.Const):
            lead += 1
        have = {(top.ops[i].value, top.ops[i].result.type): top.ops[i].result for i in range(lead)}
        out: dict[int, Value] = {}
        for c in consts:
            key = (c.value, c.result.type)
            if key not in have:
                new = L.Const([], [c.result.type], dict(c.attributes), origin=c.origin, loc=c.loc,
                              result_names=[c.result.name_hint])
                top.insert(lead, new)
                lead += 1
                have[key] = new.result
            out[id(c.result)] = have[key]
        return out


def order_declarations(func: Operation) -> None:
    """Declare buffers in order of first use: arena buffers, then weights, each sorted stably by
    the first kernel that touches them (inputs first), as lower-to-loops declares them."""
    L = _loop()
    block = func.body.block
    head = []
    for op in block.ops:
        if not isinstance(op, (L.Alloc, L.WeightsBuf)):
            break
        head.append(op)
    if any(isinstance(op, (L.Alloc, L.WeightsBuf)) for op in block.ops[len(head):]):
        return  # an unusual layout: keep it as written
    first: dict[int, int] = {}
    for t, k in enumerate(func.kernels):
        for op in k.walk():
            for v in op.operands:
                first.setdefault(id(v), t)
    end = len(func.kernels)

    def key(op: Operation) -> int:
        return -1 if isinstance(op, L.Alloc) and op.input >= 0 else first.get(id(op.result), end)

    allocs = sorted((op for op in head if isinstance(op, L.Alloc)), key=key)
    weights = sorted((op for op in head if isinstance(op, L.WeightsBuf)), key=key)
    block.ops[:len(head)] = allocs + weights


def _replan(func: Operation) -> None:
    """Plan the arena again (fusion removed buffers and moved writes earlier)."""
    from ml4f.compiler.transforms.plan_memory import plan_function

    plan = plan_function(func)
    for a in func.allocs:
        a.attributes["offset"] = plan.offsets[id(a.result)]
        a.attributes = {k: a.attributes[k] for k in a._attr_defs if k in a.attributes}
    func.attributes.update(arena_size=plan.arena_size, arena_lower_bound=plan.lower_bound,
                           arena_pingpong=plan.pingpong)
    func.attributes = {k: func.attributes[k] for k in func._attr_defs if k in func.attributes}


@register_pass
@dataclass(frozen=True)
class Fuse(ModulePass):
    """Merges each element-wise kernel (activation, batch-norm scale/shift, ...) into the kernel
    that produces its input: the producer's stores compute the element function and write its
    output, and the intermediate buffer is removed. With residual=true, an add/sub/mul whose other
    operands are complete before the producer runs is fused too.

    Example: ml4f-opt -p 'lower-to-loops{fuse=false},fuse' model.l4f
    """

    name: ClassVar[str] = "fuse"
    residual: bool = False

    def apply(self, ctx: Context, module: Module) -> None:
        L = _loop()
        for func in module.ops:
            if isinstance(func, L.Func):
                if not FunctionFusion(func, self.residual).run():
                    continue
                order_declarations(func)
                if func.arena_size >= 0:
                    _replan(func)
