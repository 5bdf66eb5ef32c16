"""Loop-dialect passes: register blocking (`tile`), `unroll` and `loop-canonicalize`.

All three rewrite `loop.for` nests by cloning ops with induction variables substituted by affine
expressions: a load or store names its induction variables and strides, so substituting
iv = c + sum(k * iv') only changes its offset and stride list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.ir import Block, Module, Operation, Region, Value
from ml4f.compiler.passes import ModulePass, register_pass
from ml4f.compiler.types import index

# An induction-variable substitution: id(old iv) -> (const, {new iv: coefficient}).
IvMap = dict[int, tuple[int, dict[Value, int]]]


def _loop():
    from ml4f.dialects import loop

    return loop


class Cloner:
    """Clones ops into new blocks, mapping SSA values (`vmap`) and induction variables (`ivmap`)."""

    def __init__(self, vmap: dict[int, Value] | None = None, ivmap: IvMap | None = None):
        self.vmap = dict(vmap or {})
        self.ivmap: IvMap = dict(ivmap or {})

    def copy(self) -> Cloner:
        return Cloner(self.vmap, self.ivmap)

    def value(self, v: Value) -> Value:
        return self.vmap.get(id(v), v)

    def access(self, op: Operation) -> tuple[list[Value], dict]:
        """The mapped index operands and attributes of a load or store."""
        offset = op.offset
        terms: dict[Value, int] = {}
        for v, s in zip(op.ivs, op.strides):
            if id(v) in self.ivmap:
                c, sub = self.ivmap[id(v)]
                offset += s * c
                for w, k in sub.items():
                    terms[w] = terms.get(w, 0) + s * k
            else:
                w = self.value(v)
                terms[w] = terms.get(w, 0) + s
        terms = {w: s for w, s in terms.items() if s != 0}
        attrs = dict(op.attributes)
        attrs["offset"] = offset
        attrs["strides"] = tuple(terms.values())
        if offset == 0:
            attrs.pop("offset")
        if not terms:
            attrs.pop("strides")
        return list(terms), {k: attrs[k] for k in type(op)._attr_defs if k in attrs}

    def clone(self, op: Operation, dest: Block) -> Operation:
        L = _loop()
        if isinstance(op, L.For):
            block = Block([index], [op.iv.name_hint])
            new = L.For([], [], dict(op.attributes), regions=[Region([block])], origin=op.origin,
                        loc=op.loc)
            self.vmap[id(op.iv)] = block.args[0]
            for inner in op.body.block.ops:
                self.clone(inner, block)
            dest.append(new)
            return new
        if isinstance(op, L._Access):
            ivs, attrs = self.access(op)
            head = [self.value(v) for v in op.operands[:op.buf_index + 1]]
            operands = head + ivs
        else:
            operands = [self.value(v) for v in op.operands]
            attrs = dict(op.attributes)
        new = type(op)(operands, [r.type for r in op.results], attrs, origin=op.origin, loc=op.loc,
                       symbol=op.symbol, result_names=[r.name_hint for r in op.results])
        for r, nr in zip(op.results, new.results):
            self.vmap[id(r)] = nr
        for reg in op.regions:
            block = Block()
            for inner in reg.block.ops:
                self.clone(inner, block)
            new.add_region(Region([block]))
        dest.append(new)
        return new


def _replace(old: Operation, new_ops: list[Operation]) -> None:
    """Put `new_ops` where `old` was and drop `old` (whose results, if any, are unused)."""
    block = old.parent
    assert block is not None
    for n in new_ops:
        if n.parent is not None and any(o is n for o in n.parent.ops):
            n.parent.ops.remove(n)
        block.insert_before(old, n)
    block.erase(old)


def _fors(root: Operation) -> list[Operation]:
    return [op for op in root.walk() if isinstance(op, _loop().For)]


def _attached(op: Operation, root: Operation) -> bool:
    """True while `op` is still inside `root` (rewrites detach the loops they replace)."""
    while op is not root:
        block = op.parent
        if block is None or block.parent is None or block.parent.parent is None:
            return False
        op = block.parent.parent
    return True


def _kernels(module: Module) -> Iterator[Operation]:
    L = _loop()
    for func in module.ops:
        if isinstance(func, L.Func):
            yield from func.kernels


# ----------------------------------------------------------------------------- unroll and jam


def _jam_ok(loop_op: Operation) -> bool:
    """Copies of the loop's body may be interleaved: no buffer is both loaded and stored in it,
    and its only effects are stores and updates of accumulators defined inside it."""
    L = _loop()
    loaded, stored = set(), set()
    inside = {id(o.result) for o in loop_op.walk() if isinstance(o, L.Acc)}
    for o in list(loop_op.walk())[1:]:
        if isinstance(o, L.Load):
            loaded.add(id(o.buffer))
        elif isinstance(o, L.Store):
            stored.add(id(o.buffer))
        elif isinstance(o, L._AccUpdate) and id(o.operands[0]) not in inside:
            return False
    return not (loaded & stored)


def _jam_into(dest: Block, ops: Iterable[Operation], cloners: list[Cloner]) -> None:
    """Emit the copies' ops position by position; nested loops are merged into one loop whose
    body holds every copy's body (so inputs loaded in it are shared after CSE)."""
    L = _loop()
    for op in ops:
        if isinstance(op, L.For):
            block = Block([index], [op.iv.name_hint])
            new = L.For([], [], dict(op.attributes), regions=[Region([block])], origin=op.origin,
                        loc=op.loc)
            for c in cloners:
                c.vmap[id(op.iv)] = block.args[0]
            _jam_into(block, op.body.block.ops, cloners)
            dest.append(new)
        else:
            for c in cloners:
                c.clone(op, dest)


def unroll_and_jam(loop_op: Operation, factor: int) -> list[Operation]:
    """Replace `loop_op` by a loop with step*factor whose body runs `factor` consecutive
    iterations with their inner loops fused, plus a remainder loop; returns the new loops."""
    L = _loop()
    n = loop_op.trip_count
    factor = min(factor, n)
    if factor <= 1:
        return [loop_op]
    main = n // factor
    lb, step = loop_op.lb, loop_op.step
    split = lb + main * factor * step
    block = Block([index], [loop_op.iv.name_hint])
    new = L.For([], [], {"lb": lb, "ub": split, "step": step * factor}, regions=[Region([block])],
                origin=loop_op.origin, loc=loop_op.loc)
    iv = block.args[0]
    cloners = [Cloner(ivmap={id(loop_op.iv): (k * step, {iv: 1})}) for k in range(factor)]
    _jam_into(block, loop_op.body.block.ops, cloners)
    result = [new]
    if split < loop_op.ub:
        rest = Cloner().clone(loop_op, Block())
        rest.attributes["lb"] = split
        result.append(rest)
    _replace(loop_op, result)
    return result


def unroll(loop_op: Operation, factor: int) -> list[Operation]:
    """Unroll by `factor` (fully when the trip count is at most `factor`); iterations keep their
    order, so this is legal for every loop."""
    L = _loop()
    n = loop_op.trip_count
    lb, step = loop_op.lb, loop_op.step
    parent = loop_op.parent
    assert parent is not None
    tmp = Block()
    if n <= factor:
        for k in range(n):
            c = Cloner(ivmap={id(loop_op.iv): (lb + k * step, {})})
            for op in loop_op.body.block.ops:
                c.clone(op, tmp)
        new_ops = list(tmp.ops)
    else:
        main = n // factor
        split = lb + main * factor * step
        block = Block([index], [loop_op.iv.name_hint])
        new = L.For([], [], {"lb": lb, "ub": split, "step": step * factor}, regions=[Region([block])],
                    origin=loop_op.origin, loc=loop_op.loc)
        for k in range(factor):
            c = Cloner(ivmap={id(loop_op.iv): (k * step, {block.args[0]: 1})})
            for op in loop_op.body.block.ops:
                c.clone(op, block)
        new_ops = [new]
        for k in range(main * factor, n):
            c = Cloner(ivmap={id(loop_op.iv): (lb + k * step, {})})
            for op in loop_op.body.block.ops:
                c.clone(op, tmp)
        new_ops += list(tmp.ops)
    tmp.ops.clear()
    _replace(loop_op, new_ops)
    return new_ops


# ----------------------------------------------------------------------------- canonicalize


_PURE_NAMES = {"loop.const", "loop.sitofp", "loop.cmpf", "loop.select"}


def _is_pure(op: Operation) -> bool:
    L = _loop()
    return isinstance(op, (L._Pure, L.Load)) or op.name in _PURE_NAMES


def _key(op: Operation) -> tuple:
    attrs = tuple(sorted((k, repr(v)) for k, v in op.attributes.items()))
    return (op.name, tuple(id(v) for v in op.operands), attrs, tuple(str(r.type) for r in op.results))


def canonicalize_block(block: Block) -> bool:
    """One round of loop canonicalization in `block` and below; True if something changed."""
    L = _loop()
    changed = False
    for op in list(block.ops):
        if isinstance(op, L.For) and op.trip_count == 0:
            block.erase(op)
            changed = True
        elif isinstance(op, L.For) and op.trip_count == 1:
            unroll(op, 1)
            changed = True
    seen: dict[tuple, Operation] = {}
    for op in list(block.ops):
        for r in op.regions:
            changed |= canonicalize_block(r.block)
        written = _stored_buffers(op)
        if written:
            # A store (here or nested) invalidates earlier loads of that buffer.
            seen = {k: v for k, v in seen.items()
                    if not (isinstance(v, L.Load) and id(v.buffer) in written)}
        if _is_pure(op) and op.results:
            k = _key(op)
            prev = seen.get(k)
            if prev is not None:
                op.result.replace_all_uses_with(prev.result)
                block.erase(op)
                changed = True
            else:
                seen[k] = op
    for op in reversed(list(block.ops)):
        if _is_pure(op) and op.results and not op.result.uses:
            block.erase(op)
            changed = True
    return changed


def _stored_buffers(op: Operation) -> set[int]:
    L = _loop()
    return {id(o.buffer) for o in op.walk() if isinstance(o, L.Store)}


def hoist_constants(kernel: Operation) -> None:
    """Move every loop.const to the top of its kernel (one register, set once)."""
    L = _loop()
    top = kernel.body.block
    consts = [op for op in kernel.walk() if isinstance(op, L.Const) and op.parent is not top]
    for i, op in enumerate(consts):
        assert op.parent is not None
        op.parent.ops.remove(op)
        top.insert(i, op)


def canonicalize_kernel(kernel: Operation) -> None:
    hoist_constants(kernel)
    while canonicalize_block(kernel.body.block):
        pass


# ----------------------------------------------------------------------------- passes


@register_pass
@dataclass(frozen=True)
class LoopCanonicalize(ModulePass):
    """Simplifies loop nests: removes empty loops, inlines single-iteration loops, hoists constants,
    merges identical loads and pure ops, and deletes unused ones.

    Example: ml4f-opt -p loop-canonicalize model.loops.l4f
    """

    name: ClassVar[str] = "loop-canonicalize"

    def apply(self, ctx: Context, module: Module) -> None:
        for k in _kernels(module):
            canonicalize_kernel(k)


def coalesce(k: Operation, positions: bool = False) -> None:
    """Fuse a loop whose body is only another loop into one loop, when every access walks
    the pair as one run (outer stride * outer step = inner trip count * inner stride, the
    inner loop from 0 by 1): e.g. kx and ci of a convolution over channels-last input. One
    longer loop spends less on counters and pointer rewinds, and unrolls better. With
    `positions`, only loops around an accumulator loop (a 1x1 convolution's rows and columns)."""
    L = _loop()
    changed = True
    while changed:
        changed = False
        for a in [f for f in k.walk() if isinstance(f, L.For)]:
            ops = a.body.block.ops
            if len(ops) != 1 or not isinstance(ops[0], L.For):
                continue
            b = ops[0]
            if b.lb != 0 or b.step != 1 or b.trip_count < 1 or a.trip_count < 1:
                continue
            if positions and not any(isinstance(g, L.For) and any(isinstance(o, L.Acc) for o in g.body.block.ops)
                                     for g in b.body.block.ops):
                continue
            users = [u for iv in (a.iv, b.iv) for u, _ in iv.uses]
            if not all(isinstance(u, L._Access) for u in users):
                continue
            plan = []
            for u in dict.fromkeys(users):
                st = dict(zip(map(id, u.ivs), u.strides))
                sa, sb = st.get(id(a.iv), 0), st.get(id(b.iv), 0)
                if sa * a.step != sb * b.trip_count:
                    break
                plan.append((u, sa, sb))
            else:
                _fuse(a, b, plan)
                changed = True
                break


def _fuse(a: Operation, b: Operation, plan: list[tuple[Operation, int, int]]) -> None:
    """Replace loops a (outer) and b (inner, from 0 by 1) by one loop over a's x b's iterations."""
    L = _loop()
    from ml4f.compiler.types import index
    block = Block([index], [b.iv.name_hint])
    t = block.args[0]
    c = L.For([], [], {"lb": 0, "ub": a.trip_count * b.trip_count, "step": 1}, regions=[Region([block])],
              origin=b.origin, loc=b.loc)
    for op in list(b.body.block.ops):
        b.body.block.ops.remove(op)
        block.append(op)
    for u, sa, sb in plan:
        keep = [(v, s) for v, s in zip(u.ivs, u.strides) if v is not a.iv and v is not b.iv]
        head = u.operands[:u.buf_index + 1]
        attrs = dict(u.attributes)
        attrs["offset"] = u.offset + sa * a.lb
        attrs["strides"] = tuple(s for _, s in keep) + (sb,)
        new = type(u)(list(head) + [v for v, _ in keep] + [t], [r.type for r in u.results], attrs,
                      origin=u.origin, loc=u.loc, result_names=[r.name_hint for r in u.results])
        u.parent.insert_before(u, new)
        for old, r in zip(u.results, new.results):
            old.replace_all_uses_with(r)
        u.parent.erase(u)
    parent = a.parent
    parent.insert_before(a, c)
    b.body.block.ops.clear()
    parent.erase(a)


def _blockable(root: Operation) -> list[Operation]:
    """The loops whose body starts accumulators and runs a reduction loop (output-channel loops)."""
    L = _loop()
    return [f for f in _fors(root)
            if any(isinstance(o, L.Acc) for o in f.body.block.ops)
            and any(isinstance(o, L.For) for o in f.body.block.ops)]


def _is_pool(f: Operation) -> bool:
    """Whether the accumulators of loop `f` are maxima (a pooling window) and nothing else."""
    L = _loop()
    updates = [o for o in f.walk() if isinstance(o, L._AccUpdate)]
    return bool(updates) and all(isinstance(o, L.AccMax) for o in updates)


def _step_cycles(P: int, C: int, K: int, f16: bool) -> float:
    """Estimated cycles per MAC of one input-channel step of a P-position x C-channel tile over a
    K-tap window (DESIGN §6): VMUL + VADD per MAC, one VLDR per input (neighbouring positions share
    the window's inputs), a weight costs a VLDM word (f32) or a widening plus half a word (f16)."""
    macs = P * C * K
    return (2 * macs + 2 * (P + K - 1) + C * K * (1.625 if f16 else 1.25)) / macs


def _tile_shape(f: Operation, sizes: list[int]) -> list[int]:
    """(positions, channels) for the tile of accumulator loop `f`: the default 4 x 4, or 8 x 2
    when the estimate says it is at least 2% faster (f16 weights over a wide window: each widened
    weight then serves 8 positions); with at most 2 positions, those x 8 channels; for a depthwise
    convolution over channel-major input, up to 8 positions of one channel (the register budget
    of its window decides)."""
    L = _loop()
    loads = [o for o in f.walk() if isinstance(o, L.Load)]
    weights = [o for o in loads if isinstance(o.buffer.op, L.WeightsBuf)]
    inputs = [o for o in loads if not isinstance(o.buffer.op, L.WeightsBuf)]
    if weights and inputs and any(f.iv in o.ivs for o in inputs) and \
            all(getattr(o.buffer.op, "channel_major", False) for o in inputs):
        # depthwise over channel-major input: positions of one channel, as many (8, 4 or 2) as
        # leave the accumulators, a row of the window's inputs and all its weights in registers
        outer = f.parent.parent.parent
        if not isinstance(outer, L.For):
            return sizes
        st = dict(zip(map(id, inputs[0].ivs), inputs[0].strides))
        step = st.get(id(outer.iv), 0)
        loops = [g for g in _fors(f) if g is not f]
        taps = math.prod(g.trip_count for g in loops)
        # the window's loop along the positions (its input stride divides theirs): neighbouring
        # positions share its inputs, `ratio` taps apart (the convolution's stride)
        along = [(step // st[id(g.iv)], g.trip_count) for g in loops
                 if st.get(id(g.iv), 0) > 0 and step % st[id(g.iv)] == 0]
        ratio, width = min(along, default=(1, 1))
        # positions down a column (not consecutive words) load one by one: at most 4
        for n in (8, 4, 2) if step == ratio else (4, 2):
            p = min(n, outer.trip_count)
            if p + ratio * (p - 1) + width + taps <= 30:
                return [n, 1]
        return [1, 1]
    if not weights or not inputs or f.trip_count % 2 or any(f.iv in o.ivs for o in inputs):
        return sizes            # not a convolution's channel loop (e.g. depthwise: no shared inputs)
    f16 = str(weights[0].buffer.type.elem) == "f16"
    outer = f.parent.parent.parent
    inner = {id(g.iv): g for g in _fors(f) if g is not f}
    # the window's taps along the blocked positions: the inner loop whose input stride times 1..n
    # is the positions' stride (n accumulators per position: a folded pooling's taps)
    n = sum(isinstance(o, L.Acc) for o in f.body.block.ops)
    K = 1
    for o in inputs:
        st = dict(zip(map(id, o.ivs), o.strides))
        pos = st.get(id(outer.iv), 0) if isinstance(outer, L.For) else 0
        for v, s in st.items():
            if v in inner and 0 < s and pos and pos % s == 0 and pos // s <= n:
                K = max(K, inner[v].trip_count)
    if isinstance(outer, L.For) and outer.trip_count <= 2 and f.trip_count % 8 == 0:
        # two positions or one: more channels instead, so each input serves 8 accumulators
        return [outer.trip_count, 8]
    four, wide = _step_cycles(4, 4, K, f16), _step_cycles(8, 2, K, f16)
    return [8, 2] if wide < 0.98 * four else sizes


@register_pass
@dataclass(frozen=True)
class Tile(ModulePass):
    """Register blocking: computes sizes[-1] output channels x sizes[-2] output positions per
    iteration, so that each weight and input is loaded once per block and reused from registers.

    The loop that holds the accumulators (output channels) is unrolled by sizes[-1] and its
    reduction loops jammed together, then each enclosing loop (output positions) likewise by the
    next size; identical loads are merged. A remainder of r < size iterations becomes one
    smaller block of r (option remainders, default true; false leaves it a loop of its own).
    An accumulator loop with no enclosing loop to block (a dense layer: its inputs are shared by
    the outputs only) is blocked by `single` outputs instead (default 16, 8 when there are fewer);
    one whose inputs are not shared (a depthwise convolution's channels) or that is not its
    kernel's only nest (a convolution's corner) by min(8, `single`); 0: sizes[-1]. A max
    pooling's channel loop is blocked by min(pool, channels) and its positions by the rest of
    `pool` accumulators (default 16: 1 x 16 for 16 channels; 0: sizes). A loop that starts n
    accumulators per iteration (a convolution with a folded max pooling) blocks sizes[-2] // n
    positions.
    With `auto` (default) and the default sizes, a convolution's tile is 4 x 4 or 8 x 2, whichever
    `_step_cycles` estimates faster for its window and weight type (with at most 2 positions:
    those x 8 channels), and a depthwise convolution over channel-major input takes up to 8
    positions of one channel (a row of inputs is one VLDM; as many as leave its window in
    registers).
    Position loops around the accumulator loop that walk memory as one run (a 1x1 convolution's
    rows and columns) are made one loop first (`coalesce`), so the remainder is one block per
    kernel rather than one per row.
    Example: ml4f-opt --tile=4,4 model.loops.l4f   (16 accumulators, 4 inputs, 4 weights)
    """

    name: ClassVar[str] = "tile"
    sizes: tuple[int, ...] = (4, 4)
    remainders: bool = True
    single: int = 16
    pool: int = 16
    auto: bool = True

    def apply(self, ctx: Context, module: Module) -> None:
        L = _loop()
        if any(s < 1 for s in self.sizes):
            raise CompileError(f"tile sizes must be positive, got {list(self.sizes)}")
        for kernel in _kernels(module):
            # position loops that walk memory as one run (a 1x1 convolution's rows and columns)
            # become one loop first: a tile's remainder is then one block per kernel, not per row
            coalesce(kernel, positions=True)
            for f in _blockable(kernel):
                if not _attached(f, kernel) or not _jam_ok(f):
                    continue
                # Innermost size on the accumulator loop, the next on its parent, and so on.
                loop_op = f
                sizes = list(self.sizes)
                if self.auto and sizes == [4, 4]:
                    sizes = _tile_shape(f, sizes)
                if self.single and not (isinstance(f.parent.parent.parent, L.For) and
                                        _jam_ok(f.parent.parent.parent)):
                    # nothing to block around it: a dense layer's outputs (their inputs shared,
                    # the kernel's only nest), `single` at a time when there are as many; else 8
                    # (e.g. a depthwise convolution's channels, a convolution's corner)
                    shared = not any(f.iv in o.ivs for o in f.walk() if isinstance(o, L.Load)
                                     and not isinstance(o.buffer.op, L.WeightsBuf))
                    alone = sum(isinstance(o, L.For) for o in kernel.body.block.ops) == 1
                    dense = shared and alone and f.trip_count >= self.single
                    sizes = [self.single if dense else min(self.single, 8)]
                elif (n := sum(isinstance(o, L.Acc) for o in f.body.block.ops)) > 1 and len(sizes) >= 2:
                    # several accumulators per output (a folded max pooling's window taps): fewer
                    # positions, so a block keeps sizes[-1] x sizes[-2] accumulators
                    sizes[-2] = max(1, sizes[-2] // n)
                elif self.pool and len(sizes) == 2 and _is_pool(f):
                    # windows do not share loads between positions: whole rows of channels
                    # instead (one VLDM per tap row, one VSTM per output row)
                    c = min(self.pool, f.trip_count)
                    sizes = [max(1, self.pool // c), c]
                for size in reversed(sizes):
                    outer = loop_op.parent.parent.parent  # block -> region -> op
                    made = unroll_and_jam(loop_op, size)
                    if len(made) == 2 and made[1].trip_count > 1 and self.remainders:
                        # the remainder as one smaller block (e.g. 3 positions x 4 channels), which
                        # reuses loads like the main one, rather than a loop of 1-wide blocks
                        unroll_and_jam(made[1], made[1].trip_count)
                    if not isinstance(outer, L.For) or not _jam_ok(outer):
                        break
                    loop_op = outer
            canonicalize_kernel(kernel)


@register_pass
@dataclass(frozen=True)
class Unroll(ModulePass):
    """Unrolls innermost loops by `factor`, fully when their trip count is at most `factor`.

    Example: ml4f-opt --unroll=4 model.loops.l4f
    """

    name: ClassVar[str] = "unroll"
    factor: int = 4

    def apply(self, ctx: Context, module: Module) -> None:
        if self.factor < 1:
            raise CompileError(f"unroll factor must be positive, got {self.factor}")
        for kernel in _kernels(module):
            for f in [f for f in _fors(kernel) if len(_fors(f)) == 1]:
                if self.factor > 1:
                    unroll(f, self.factor)
            canonicalize_kernel(kernel)

