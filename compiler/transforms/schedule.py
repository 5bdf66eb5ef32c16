"""`thumb-schedule`: list scheduling of Thumb-2/FPv4 code for the Cortex-M4 timing model (DESIGN §6).

The Cortex-M4 issues one instruction per cycle in order, so reordering gains only where two
neighbours interact: an FP arithmetic result read by the very next instruction costs a cycle
(except as a MAC's accumulator), and a core LDR right after another load or a store costs one cycle
less. The pass reorders the instructions of each basic block to avoid the first and to form the
second, keeping everything the code computes:

* dependencies on core and S registers (true, anti and output; physical registers after
  allocation, SSA values before), on the flags (APSR: S-suffixed ops, compares, `vmrs APSR_nzcv`;
  FPSCR: `vcmp`) and on memory: loads may pass loads; a store stays ordered with every other load
  and store unless both provably touch disjoint bytes (same base register, not redefined in
  between, non-overlapping constant offsets; literal-pool loads read the read-only code);
* barriers that nothing crosses: labels, directives, branches, calls, anything that writes pc,
  push/pop, IT blocks (the `it` and the ops it covers stay together), `vmsr`/`vmrs` of the whole
  FPSCR, and ops with regions.

Each region between barriers is list-scheduled a few ways (greedy on the neighbour cost with the
critical path as tie-break, with and without one step of look-ahead); a schedule is kept only if
the neighbour costs of `pair_adjust` (the rules of compiler/backend/cycles.py, so the emulator
agrees) including the instructions just before and after the region come out strictly lower.
Base costs are those of the op's encoding form (`encodings.FORMS[...].cycles`); they set the
critical path only, since every order pays them alike.

Example (s0..s3 loaded, a naive dot product step):

    %p = thumb.vmul.f32 %a, %b : !thumb.sreg<s4>       %p = thumb.vmul.f32 %a, %b : !thumb.sreg<s4>
    %s = thumb.vadd.f32 %acc, %p : !thumb.sreg<s6> ->  %q = thumb.vmul.f32 %c, %d : !thumb.sreg<s5>
    %q = thumb.vmul.f32 %c, %d : !thumb.sreg<s5>       %s = thumb.vadd.f32 %acc, %p : !thumb.sreg<s6>
    %t = thumb.vadd.f32 %s, %q : !thumb.sreg<s6>       %t = thumb.vadd.f32 %s, %q : !thumb.sreg<s6>

saves one of the two stalls: `ml4f-opt kernel.l4f -p thumb-schedule`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ml4f.compiler.context import Context
from ml4f.compiler.ir import Block, Module, Operation, Value
from ml4f.compiler.passes import ModulePass, register_pass
from ml4f.dialects.thumb.encodings import FORMS
from ml4f.dialects.thumb.ops import (
    BRANCHES,
    CALLS,
    CORE_LOADS,
    CORE_STORES,
    LOADS,
    MULTI_LOADS,
    MULTI_STORES,
    STACK_OPS,
    STORES,
    Func,
    GetRegister,
    It,
    LabelOp,
    ThumbOp,
)
from ml4f.dialects.thumb.registers import PC, RegType, SRegType

# FP ops whose result is late for the next instruction (cycles.py `_FP_PRODUCERS`: FP_ARITH, FP_MAC,
# FP_DIV); VMOV/VNEG/VABS/VCMP and loads deliver in time.
_FP_ARITH = {"vadd", "vsub", "vmul", "vnmul", "vcvt", "vcvtr", "vcvtb", "vcvtt", "vdiv", "vsqrt"}
_FP_MAC = {"vmla", "vmls", "vnmla", "vnmls", "vfma", "vfms", "vfnma", "vfnms"}
_BYTES = {"ldr": 4, "str": 4, "ldrb": 1, "strb": 1, "ldrsb": 1, "ldrh": 2, "strh": 2, "ldrsh": 2,
          "ldrd": 8, "strd": 8, "vldr": 4, "vstr": 4}
_BARRIERS = BRANCHES | CALLS | STACK_OPS | {"bkpt", "svc", "nop", "vmsr"}
# Flag writers besides S-suffixed ops and compares: the parallel add/subtract family sets APSR.GE.
_GE_WRITERS = {"sadd16", "ssub16", "sadd8", "ssub8", "uadd16", "usub16", "uadd8", "usub8", "qadd16",
               "qsub16", "qadd8", "qsub8", "shadd16"}
_COMPARES = {"cmp", "cmn", "tst", "teq"}
APSR, FPSCR = "apsr", "fpscr"

Key = tuple[str, int]


@dataclass
class _Insn:
    """What scheduling needs to know about one op."""

    op: Operation
    index: int
    base: int
    reads: set[Key]
    writes: set[Key]
    fp_producer: bool = False
    fp_reads: frozenset[Key] = frozenset()     # S registers read, as the stall rule sees them
    fp_writes: frozenset[Key] = frozenset()
    core_load: bool = False
    load_rt: Key | None = None
    addr_regs: tuple[Key, ...] = ()
    pipe_store: bool = False                   # a single STR without register offset
    mem: str | None = None                     # "load", "store" or None
    span: tuple[Key, int, int, int] | None = None   # (base, version, lo, hi) when known
    literal: bool = False


def _key(v: Value) -> Key:
    t = v.type
    if isinstance(t, RegType) and t.num is not None:
        return ("r", t.num)
    if isinstance(t, SRegType) and t.num is not None:
        return ("s", t.num)
    return ("v", id(v))


def _base_cycles(op: ThumbOp, plan: list[tuple[str, int, int]]) -> int:
    """The op's cost from the encoding form its operands select (FORMS[mnemonic][i].cycles)."""
    letters = {"D": "r", "Dd": "d", "U": "r", "T": "r", "M!": "r", "Ds": "s", "Us": "s", "Ts": "s", "=": "s",
               "I": "i", "F": "i", "M": "m", "L": "l", "SH": "h", "D*": "L", "U*": "L", "Ds*": "S",
               "Us*": "S"}
    pattern = "".join(letters.get(t, "x") for t, _, _ in plan if t != "SH" or op.shift is not None)
    forms = FORMS[op.mnemonic.split(".")[0]]
    form = next((f for f in forms if f.pattern == pattern), forms[-1])
    n = sum(ri for t, _, ri in plan if t.endswith("*"))
    cost = form.cycles
    return (cost.max if cost.max is not None and op.mnemonic in ("sdiv", "udiv") else cost.base) + \
        (n if cost.per_reg else 0)


def _is_barrier(op: Operation) -> bool:
    if not isinstance(op, ThumbOp) or op.regions:
        return True
    base = op.mnemonic.split(".")[0]
    if base in _BARRIERS or (base == "vmrs" and op.results):
        return True
    return any(isinstance(r.type, RegType) and r.type.num == PC for r in op.results)


def _insn(op: ThumbOp, index: int, versions: dict[Key, int]) -> _Insn:
    """Describe `op`; `versions` counts the writes to each register so far in the region."""
    plan = op.plan()
    base = op.mnemonic.split(".")[0]
    reads = {_key(v) for v in op.operands}
    writes = {_key(v) for v in op.results}
    if op.setflags or base in _COMPARES or base in _GE_WRITERS or (base == "vmrs" and not op.results):
        writes.add(APSR)
    if op.cond is not None or base in ("adc", "sbc", "sel") or (op.shift or "").startswith("rrx"):
        reads.add(APSR)
    if base in ("vcmp", "vcmpe"):
        writes.add(FPSCR)
    if base == "vmrs":
        reads.add(FPSCR)
    info = _Insn(op, index, _base_cycles(op, plan), reads, writes)

    if base in _FP_ARITH or base in _FP_MAC:
        info.fp_producer = True
    sreads = [v for v in op.operands if isinstance(v.type, SRegType)]
    if base in _FP_MAC:
        sreads = sreads[1:]          # the accumulator is read late: no stall on it
    info.fp_reads = frozenset(_key(v) for v in sreads)
    info.fp_writes = frozenset(_key(v) for v in op.results if isinstance(v.type, SRegType))

    mem = next(((t, oi, ri) for t, oi, ri in plan if t in ("M", "M!")), None)
    is_load = base in LOADS
    is_store = base in STORES
    if is_load or is_store:
        info.mem = "load" if is_load else "store"
        if mem is None:                       # `ldr r0, label`: the literal pool in read-only code
            info.literal = True
        else:
            tok, bi, xi = mem
            bkey = _key(op.operands[bi])
            has_index = tok == "M" and xi >= 0
            info.addr_regs = (bkey,) + ((_key(op.operands[xi]),) if has_index else ())
            if not has_index:
                if base in MULTI_LOADS or base in MULTI_STORES:
                    size = 4 * sum(ri for t, _, ri in plan if t.endswith("*"))
                    lo = -size if base.endswith("db") else 0
                else:
                    size = _BYTES[base] * (2 if plan[0][0] == "Dd" else 1)
                    lo = 0 if op.mode == "post" else op.offset
                info.span = (bkey, versions.get(bkey, 0), lo, lo + size)
    if base in CORE_LOADS:
        info.core_load = True
        info.load_rt = _key(op.results[0])
        if mem is None:
            info.addr_regs = (("r", PC),)
    if base in CORE_STORES:
        info.pipe_store = not (mem is not None and mem[0] == "M" and mem[2] >= 0)
    for k in writes:
        versions[k] = versions.get(k, 0) + 1
    return info


def pair_adjust(prev: _Insn | None, cur: _Insn | None) -> int:
    """Cycles `cur` gains (+) or saves (-) right after `prev`: the rules of cycles.pair_adjust."""
    if prev is None or cur is None:
        return 0
    if cur.core_load:
        if prev.core_load and prev.load_rt not in cur.addr_regs:
            return -1
        if prev.pipe_store:
            return -1
        return 0
    if prev.fp_producer and prev.fp_writes & cur.fp_reads:
        return 1
    return 0


def _disjoint(a: _Insn, b: _Insn) -> bool:
    if a.literal or b.literal:
        return True                   # the code is read-only: no store reaches a literal pool
    if a.span is None or b.span is None:
        return False
    (ka, va, la, ha), (kb, vb, lb, hb) = a.span, b.span
    return ka == kb and va == vb and (ha <= lb or hb <= la)


def _dependencies(insns: Sequence[_Insn]) -> list[set[int]]:
    """preds[j] = indices i < j that must stay before j."""
    preds: list[set[int]] = [set() for _ in insns]
    last_write: dict[Key, int] = {}
    readers: dict[Key, list[int]] = {}
    by_op = {id(n.op): n.index for n in insns}
    loads: list[_Insn] = []
    stores: list[_Insn] = []
    for j, n in enumerate(insns):
        p = preds[j]
        for v in n.op.operands:                       # SSA order, whatever the registers say
            i = by_op.get(id(v.op)) if v.op is not None else None
            if i is not None:
                p.add(i)
        for k in n.reads:                             # true
            if k in last_write:
                p.add(last_write[k])
        for k in n.writes:                            # output and anti
            if k in last_write:
                p.add(last_write[k])
            p.update(readers.get(k, ()))
        for k in n.reads:
            readers.setdefault(k, []).append(j)
        for k in n.writes:
            last_write[k] = j
            readers[k] = []
        if n.mem is not None:            # loads may pass loads: check against stores (and a store
            for m in stores if n.mem == "load" else stores + loads:       # against everything)
                if not _disjoint(m, n):
                    p.add(m.index)
            (loads if n.mem == "load" else stores).append(n)
        p.discard(j)
    return preds


def _cost(order: Sequence[_Insn], before: _Insn | None, after: _Insn | None) -> int:
    total = 0
    prev = before
    for n in order:
        total += pair_adjust(prev, n)
        prev = n
    return total + pair_adjust(prev, after)


def _list_schedule(insns: Sequence[_Insn], preds: list[set[int]], before: _Insn | None,
                   after: _Insn | None, lookahead: bool) -> list[_Insn]:
    n = len(insns)
    succs: list[list[int]] = [[] for _ in range(n)]
    for j, p in enumerate(preds):
        for i in p:
            succs[i].append(j)
    # critical path: the cycles from an op to the end of the region, stalls on the way included
    height = [0] * n
    for i in range(n - 1, -1, -1):
        h = 0
        for j in succs[i]:
            h = max(h, height[j] + pair_adjust(insns[i], insns[j]) if insns[i].fp_producer else height[j])
        height[i] = insns[i].base + h
    missing = [len(p) for p in preds]
    ready = [i for i in range(n) if missing[i] == 0]
    order: list[_Insn] = []
    prev = before

    def penalty(c: int) -> int:
        """The stall `c` forces on its successor when everything ready next would read its result."""
        cur = insns[c]
        if not cur.fp_producer:
            return 0
        nxt = [i for i in ready if i != c] + [j for j in succs[c] if missing[j] == 1]
        if not nxt:
            return pair_adjust(cur, after) if len(order) == n - 1 else 0
        return 0 if any(pair_adjust(cur, insns[i]) <= 0 for i in nxt) else 1

    while ready:
        best = min(ready, key=lambda i: (pair_adjust(prev, insns[i]) + (penalty(i) if lookahead else 0),
                                         -height[i], i))
        ready.remove(best)
        order.append(insns[best])
        prev = insns[best]
        for j in succs[best]:
            missing[j] -= 1
            if missing[j] == 0:
                ready.append(j)
    assert len(order) == n, "cyclic dependencies"
    return order


def _regions(ops: Sequence[Operation]) -> Iterable[tuple[int, int]]:
    """[start, end) index ranges of schedulable ops between barriers (IT blocks included)."""
    start = 0
    i = 0
    while i < len(ops):
        op = ops[i]
        if isinstance(op, It):
            if i > start:
                yield start, i
            i += 2 + len(op.mask)
            start = i
            continue
        if _is_barrier(op):
            if i > start:
                yield start, i
            start = i + 1
        i += 1
    if len(ops) > start:
        yield start, len(ops)


def _neighbour(ops: Sequence[Operation], i: int, step: int) -> _Insn | None:
    """The instruction that executes next to the region boundary at `i` when control falls through
    (labels and register markers emit no code); None at the ends and past anything else."""
    while 0 <= i < len(ops) and isinstance(ops[i], (LabelOp, GetRegister)):
        i += step
    if 0 <= i < len(ops) and isinstance(ops[i], ThumbOp) and not ops[i].regions:
        return _insn(ops[i], -1, {})  # type: ignore[arg-type]
    return None


@dataclass
class ScheduleStats:
    """Neighbour cycles (stalls minus pipelined loads) over all regions, before and after."""

    before: int = 0
    after: int = 0
    regions: int = 0
    changed: int = 0


def schedule_block(block: Block, lookahead: bool = True, stats: ScheduleStats | None = None) -> None:
    """Reorder the ops of `block` region by region (see the module docstring); nested blocks too."""
    stats = stats if stats is not None else ScheduleStats()
    for op in block.ops:
        for r in op.regions:
            for b in r.blocks:
                schedule_block(b, lookahead, stats)
    ops = block.ops
    for start, end in list(_regions(ops)):
        if end - start < 2:
            continue
        versions: dict[Key, int] = {}
        insns = [_insn(op, k, versions) for k, op in enumerate(ops[start:end])]  # type: ignore[arg-type]
        before = _neighbour(ops, start - 1, -1)
        after = _neighbour(ops, end, 1)
        preds = _dependencies(insns)
        current = _cost(insns, before, after)
        best, best_cost = list(insns), current
        for la in ((True, False) if lookahead else (False,)):
            order = _list_schedule(insns, preds, before, after, la)
            c = _cost(order, before, after)
            if c < best_cost:
                best, best_cost = order, c
        stats.regions += 1
        stats.before += current
        stats.after += best_cost
        if best_cost < current:
            stats.changed += 1
            ops[start:end] = [n.op for n in best]


@register_pass
@dataclass(frozen=True)
class ThumbSchedule(ModulePass):
    """Reorders the instructions of each basic block of every thumb.func for the Cortex-M4 timing.

    Avoids FP result-use stalls, pairs core loads so they pipeline, and otherwise follows the
    critical path; never makes a block slower under the DESIGN §6 model. Example:
    `ml4f-opt kernel.l4f -p thumb-schedule` (or `--thumb-schedule`); `lookahead=false` for the
    plain greedy order.
    """

    name: ClassVar[str] = "thumb-schedule"
    lookahead: bool = True

    def apply(self, ctx: Context, module: Module) -> None:
        for op in list(module.walk()):
            if isinstance(op, Func):
                schedule_block(op.body.block, self.lookahead)
