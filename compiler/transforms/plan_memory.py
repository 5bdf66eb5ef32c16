"""plan-memory: give every arena buffer of a loop.func a byte offset, reusing memory of dead tensors.

Liveness is counted in kernels (one per layer, in execution order): a buffer lives from the first
kernel that touches it to the last one (inputs from before the first, returned buffers past the
last). A kernel marked `inplace` may write its output over an input that dies in it and has the
same size; such buffers form one group that gets one place. Groups are placed greedily, largest
first, at the lowest offset that does not overlap a group alive at the same time (TFLite's
"greedy by size", which is close to optimal on these graphs).

The function records `arena_size`, `arena_lower_bound` (the largest sum of simultaneously live
groups: no plan for this execution order can do better) and `arena_pingpong` (twice the largest
tensor: what a two-buffer plan such as Microsoft ML4F's needs for a chain).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from ml4f.compiler.context import Context
from ml4f.compiler.ir import Module, Operation, Value
from ml4f.compiler.passes import ModulePass, register_pass

ALIGN = 4  # word alignment: every load/store form (LDR, VLDR, VLDM, LDRD) accepts it


def align(n: int, a: int = ALIGN) -> int:
    return -(-n // a) * a


@dataclass
class Interval:
    """A buffer group: bytes needed and the kernels [start, end] during which it is alive."""

    size: int
    start: int
    end: int

    def overlaps_in_time(self, other: Interval) -> bool:
        return self.start <= other.end and other.start <= self.end


def fit(iv: Interval, busy: list[tuple[int, int]], cap: int | None, top: bool = False) -> int | None:
    """The lowest (or, with `top`, highest below `cap`) offset where `iv` avoids `busy` ranges."""
    if not top:
        off = 0
        for lo, hi in sorted(busy):
            if off + iv.size <= lo:
                break
            off = max(off, align(hi))
        return off if cap is None or off + iv.size <= cap else None
    assert cap is not None
    off = (cap - iv.size) // ALIGN * ALIGN
    for lo, hi in sorted(busy, key=lambda r: -r[1]):
        if off >= hi:
            break
        off = min(off, (lo - iv.size) // ALIGN * ALIGN)
    return off if off >= 0 else None


def _greedy(intervals: Sequence[Interval], order: list[int], cap: int | None,
            two_ended: bool) -> list[int] | None:
    offsets = [0] * len(intervals)
    placed: list[int] = []
    for i in order:
        iv = intervals[i]
        live = [j for j in placed if intervals[j].overlaps_in_time(iv) and intervals[j].size > 0]
        busy = [(offsets[j], offsets[j] + intervals[j].size) for j in live]
        top = False
        if two_ended and live and cap is not None:
            # Go to the end away from the most recently born live buffer (a chain's input), as a
            # ping-pong plan would, but packed to the lower bound.
            last = max(live, key=lambda j: (intervals[j].start, j))
            top = offsets[last] + intervals[last].size / 2 < cap / 2
        off = fit(iv, busy, cap, top)
        if off is None:
            off = fit(iv, busy, cap, not top) if cap is not None else None
        if off is None:
            return None
        offsets[i] = off
        placed.append(i)
    return offsets


def place(intervals: Sequence[Interval]) -> list[int]:
    """Offsets for the intervals: the smallest of a few greedy plans (largest first; in execution
    order from both ends of an arena of the lower-bound size, then slightly larger ones)."""
    n = len(intervals)
    by_size = sorted(range(n), key=lambda i: (-intervals[i].size, intervals[i].start, i))
    by_start = sorted(range(n), key=lambda i: (intervals[i].start, -intervals[i].size, i))
    best = _greedy(intervals, by_size, None, False)
    assert best is not None
    size = lambda offs: max((o + iv.size for o, iv in zip(offs, intervals)), default=0)
    bound = align(lower_bound(intervals))
    for cap in (bound, align(bound * 9 // 8), align(bound * 5 // 4)):
        if cap >= size(best):
            break
        for order in (by_start, by_size):
            offs = _greedy(intervals, order, cap, True)
            if offs is not None and size(offs) < size(best):
                best = offs
    return best


def lower_bound(intervals: Sequence[Interval]) -> int:
    """The largest total size of intervals alive at one time."""
    times = sorted({iv.start for iv in intervals})
    return max((sum(iv.size for iv in intervals if iv.start <= t <= iv.end) for t in times), default=0)


def overlapping_pairs(intervals: Sequence[Interval], offsets: Sequence[int]) -> list[tuple[int, int]]:
    """Pairs alive at the same time whose byte ranges intersect (empty for a valid plan)."""
    bad = []
    for i, a in enumerate(intervals):
        for j in range(i + 1, len(intervals)):
            b = intervals[j]
            if a.size and b.size and a.overlaps_in_time(b) and \
                    offsets[i] < offsets[j] + b.size and offsets[j] < offsets[i] + a.size:
                bad.append((i, j))
    return bad


def liveness(func: Operation) -> dict[int, tuple[int, int]]:
    """id(alloc result) -> (first, last) kernel index; inputs start at -1, outputs end past the end."""
    from ml4f.dialects import loop

    kernels = func.kernels
    live: dict[int, tuple[int, int]] = {}
    allocs = {id(a.result): a for a in func.allocs}
    for t, k in enumerate(kernels):
        for op in k.walk():
            for v in op.operands:
                if id(v) in allocs:
                    s, e = live.get(id(v), (t, t))
                    live[id(v)] = (min(s, t), max(e, t))
    returned = {id(v) for v in func.body.block.ops[-1].operands}
    for key, a in allocs.items():
        s, e = live.get(key, (len(kernels), len(kernels)))
        if a.input >= 0:
            s = -1
        if key in returned:
            e = len(kernels)
        live[key] = (s, e)
    assert all(isinstance(k, loop.Kernel) for k in kernels)
    return live


@dataclass
class MemoryPlan:
    """The result of planning one function: offsets by alloc and the three sizes."""

    offsets: dict[int, int]
    arena_size: int
    lower_bound: int
    pingpong: int


def plan_function(func: Operation, inplace: bool = True) -> MemoryPlan:
    """Plan `func` and return the plan (the pass writes it into the IR)."""
    allocs = func.allocs
    live = liveness(func)
    returned = {id(v) for v in func.body.block.ops[-1].operands}
    # Union-find over buffers that share bytes because a kernel writes in place.
    group = {id(a.result): id(a.result) for a in allocs}

    def find(k: int) -> int:
        while group[k] != k:
            k = group[k]
        return k

    if inplace:
        by_start: dict[int, list[Value]] = {}
        for a in allocs:
            by_start.setdefault(live[id(a.result)][0], []).append(a.result)
        taken: set[int] = set()
        for t, k in enumerate(func.kernels):
            if not k.inplace:
                continue
            used = _operands_in(k)
            for out in by_start.get(t, []):
                for v in used:
                    if v is out or id(v) not in group or id(v) in taken or id(v) in returned:
                        continue
                    s, e = live[id(v)]
                    if e == t and s < t and v.type.nbytes == out.type.nbytes:
                        group[id(out)] = find(id(v))
                        taken.add(id(v))
                        break
    members: dict[int, list[int]] = {}
    for a in allocs:
        members.setdefault(find(id(a.result)), []).append(id(a.result))
    sizes = {id(a.result): align(a.result.type.nbytes) for a in allocs}
    roots = list(members)
    intervals = [Interval(max(sizes[m] for m in members[r]), min(live[m][0] for m in members[r]),
                          max(live[m][1] for m in members[r])) for r in roots]
    offs = place(intervals)
    offsets = {m: offs[i] for i, r in enumerate(roots) for m in members[r]}
    size = max((o + iv.size for o, iv in zip(offs, intervals)), default=0)
    return MemoryPlan(offsets, size, lower_bound(intervals), 2 * max(sizes.values(), default=0))


def _operands_in(op: Operation) -> list[Value]:
    seen: dict[int, Value] = {}
    for o in op.walk():
        for v in o.operands:
            seen.setdefault(id(v), v)
    return list(seen.values())


def check_plan(func: Operation) -> None:
    """Raise if two buffers alive in the same kernel share bytes (other than in-place pairs: an
    inplace kernel's output may take the bytes of an input that dies in it)."""
    allocs = func.allocs
    live = liveness(func)
    kernels = func.kernels
    for i, a in enumerate(allocs):
        for b in allocs[i + 1:]:
            sa, ea = live[id(a.result)]
            sb, eb = live[id(b.result)]
            if not (sa <= eb and sb <= ea):
                continue
            if a.offset < b.offset + b.result.type.nbytes and b.offset < a.offset + a.result.type.nbytes:
                # In place: one dies in the kernel where the other is born, and that kernel allows it.
                t = ea if ea == sb else eb if eb == sa else None
                if t is None or not (0 <= t < len(kernels) and kernels[t].inplace) or \
                        a.offset != b.offset:
                    raise a.error(f"shares arena bytes with {b.display_name()} while both are alive")


@register_pass
@dataclass(frozen=True)
class PlanMemory(ModulePass):
    """Assigns arena offsets to every loop.alloc by liveness (in place where legal) and records
    arena_size, arena_lower_bound and arena_pingpong on the function.

    Example: ml4f-opt --lower-to-loops --plan-memory model.l4f
    """

    name: ClassVar[str] = "plan-memory"
    inplace: bool = True

    def apply(self, ctx: Context, module: Module) -> None:
        from ml4f.dialects import loop

        for func in module.ops:
            if not isinstance(func, loop.Func):
                continue
            plan = plan_function(func, self.inplace)
            for a in func.allocs:
                _set_attrs(a, offset=plan.offsets[id(a.result)])
            _set_attrs(func, arena_size=plan.arena_size, arena_lower_bound=plan.lower_bound,
                       arena_pingpong=plan.pingpong)


def _set_attrs(op: Operation, **values: int) -> None:
    """Set attributes, kept in declaration order so the printed IR reads the same either way."""
    op.attributes.update(values)
    op.attributes = {k: op.attributes[k] for k in op._attr_defs if k in op.attributes}
