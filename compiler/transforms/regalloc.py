"""Register allocation for the Thumb dialect (`thumb-regalloc`), then the prologue and epilogue.

Linear scan over live ranges computed on the control-flow graph: the body of a `thumb.func` is
split into basic blocks at labels and after branches, liveness is solved over the edges (so a
value used inside a loop stays live across the back edge), and each value's live range is the
set of instruction points where it is live (point 2i: read by instruction i, 2i+1: written by
it). Values are allocated in order of their first point to the first free register of their
class: caller-saved first (r0-r3, r12; s0-s15), then callee-saved (r4-r11; s16-s31).

- Precolored values (a physical type before allocation: the arguments r0/r1, s0 around a call,
  and the loop-carried registers chosen by `lower-to-thumb`) occupy their register; values are
  tracked per physical register there, so a register updated around a loop is live across it.
- Tied operands (signature tokens T/Ts, written-back bases) get the register of their result.
- An IT-predicated instruction may leave its result unchanged, so it also reads it.
- `bl` writes every caller-saved register (AAPCS), so a value live across a call lands in a
  callee-saved register, or is spilled.
- When no register is free, the live value with the longest range is spilled: stored to a stack
  slot after its definition and reloaded before each use; allocation then starts again.
- Copies that became no-ops (`vmov.f32 s4, s4`) are erased.
- Then the prologue pushes exactly the callee-saved registers used (and lr when anything is
  pushed or the function calls), `vpush`es s16 up to the highest S register used, reserves the
  spill slots (the stack stays 8-aligned), and the final `bx lr` becomes the matching epilogue.

Example: ml4f-opt model.thumb.l4f -p thumb-regalloc     (`!thumb.sreg` becomes `!thumb.sreg<s4>`)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ml4f.compiler.context import Context
from ml4f.compiler.ir import Block, Module, Operation, Value
from ml4f.compiler.passes import ModulePass, register_pass
from ml4f.dialects.thumb.ops import BRANCHES, CALLS, STACK_OPS, STORES

CORE_ORDER = (0, 1, 2, 3, 12, 4, 5, 6, 7, 8, 9, 10, 11)
S_ORDER = tuple(range(32))
CALLER_SAVED_CORE = (0, 1, 2, 3, 12, 14)
CALLER_SAVED_S = tuple(range(16))
# Ops a load is not moved past (`_late`): control flow, IT blocks and memory writes.
_NOT_PAST = BRANCHES | CALLS | STACK_OPS | STORES | {"it"}
SP, LR, PC = 13, 14, 15


def _thumb() -> Any:
    from ml4f.dialects.thumb import ops
    return ops


def _regs() -> Any:
    from ml4f.dialects.thumb import registers
    return registers


Loc = Any  # ("r", n) | ("s", n) for a physical register, or id(value) for a virtual one


@dataclass
class AllocResult:
    """What allocation decided for one function (for statistics)."""

    spills: int = 0
    frame_bytes: int = 0
    saved_core: list[int] = field(default_factory=list)
    saved_s: list[int] = field(default_factory=list)

    @property
    def stack_bytes(self) -> int:
        return self.frame_bytes + 4 * (len(self.saved_core) + len(self.saved_s))


class _Allocator:
    def __init__(self, func: Operation):
        self.T = _thumb()
        self.R = _regs()
        self.func = func
        self.ops: list[Operation] = func.body.block.ops
        self.slots = 0
        self.slot_ops: dict[int, list[Operation]] = {}   # spill slot (byte offset) -> its loads and stores
        self.spill_temps: set[int] = set()
        self.sp_value: Value | None = None
        self.result = AllocResult()

    # ------------------------------------------------------------------ operand roles

    def is_sreg(self, v: Value) -> bool:
        return isinstance(v.type, self.R.SRegType)

    def phys(self, v: Value) -> Loc | None:
        n = v.type.num
        if n is None:
            return None
        return ("s", n) if self.is_sreg(v) else ("r", n)

    def ties(self, op: Operation) -> list[tuple[Value, Value]]:
        """(operand, result) pairs that must share a register."""
        if not isinstance(op, self.T.ThumbOp):
            return []
        pairs = []
        plan = op.plan()
        for tok, oi, ri in plan:
            if tok in ("T", "Ts"):
                pairs.append((op.operands[oi], op.results[ri]))
        if op.mode != "offset" or op.writeback:
            base = next(p for p in plan if p[0] in ("M", "M!"))
            pairs.append((op.operands[base[1]], op.results[-1]))
        return pairs

    def roles(self, op: Operation) -> tuple[list[Loc], list[Loc], list[Loc]]:
        """(uses, defs, clobbers) of one op, as locations."""
        uses = [self.loc(v) for v in op.operands]
        defs = [self.loc(v) for v in op.results]
        clobbers: list[Loc] = []
        if isinstance(op, self.T.ThumbOp):
            if op.mnemonic == "bl":
                clobbers = [("r", n) for n in CALLER_SAVED_CORE] + [("s", n) for n in CALLER_SAVED_S]
            if op.cond is not None and op.mnemonic not in BRANCHES:
                uses += defs  # predicated: the old value survives when the condition fails
        # lr is saved by the prologue and restored into pc; sp and pc are never allocated
        ignore = {("r", SP), ("r", LR), ("r", PC)}
        return ([u for u in uses if u not in ignore], [d for d in defs if d not in ignore],
                [c for c in clobbers if c not in ignore])

    # ------------------------------------------------------------------ control flow and liveness

    def blocks(self) -> tuple[list[tuple[int, int]], list[list[int]]]:
        ops = self.ops
        starts = {0}
        labels: dict[str, int] = {}
        for i, op in enumerate(ops):
            if isinstance(op, self.T.LabelOp):
                starts.add(i)
                labels[op.symbol] = i
            elif isinstance(op, self.T.ThumbOp) and op.mnemonic in BRANCHES and i + 1 < len(ops):
                starts.add(i + 1)
        order = sorted(starts)
        spans = [(s, (order[k + 1] if k + 1 < len(order) else len(ops)) - 1) for k, s in enumerate(order)]
        index = {s: k for k, (s, _) in enumerate(spans)}
        succ: list[list[int]] = []
        for k, (s, e) in enumerate(spans):
            last = ops[e] if e >= s else None
            nxt = [k + 1] if k + 1 < len(spans) else []
            out: list[int] = []
            if isinstance(last, self.T.ThumbOp) and last.mnemonic in BRANCHES:
                if last.mnemonic != "bx":
                    tgt = last.target.name
                    if tgt not in labels:
                        raise last.error(f"branches to '{tgt}', which is not a label of this function")
                    out.append(index[labels[tgt]])
                    if last.mnemonic != "b" or last.cond is not None:
                        out += nxt
            else:
                out += nxt
            succ.append(out)
        return spans, succ

    def live_ranges(self) -> tuple[dict[Loc, int], dict[Loc, int], dict[Loc, int]]:
        """Per location: a bitmask of live points, and its first and last point."""
        spans, succ = self.blocks()
        roles = [self.roles(op) for op in self.ops]
        gen: list[set] = []
        kill: list[set] = []
        for s, e in spans:
            g: set = set()
            k: set = set()
            for i in range(s, e + 1):
                u, d, c = roles[i]
                g |= {x for x in u if x not in k}
                k |= set(d) | set(c)
            gen.append(g)
            kill.append(k)
        live_in = [set() for _ in spans]
        live_out = [set() for _ in spans]
        changed = True
        while changed:
            changed = False
            for b in reversed(range(len(spans))):
                out = set().union(*(live_in[x] for x in succ[b])) if succ[b] else set()
                inn = gen[b] | (out - kill[b])
                if out != live_out[b] or inn != live_in[b]:
                    live_out[b], live_in[b] = out, inn
                    changed = True
        mask: dict[Loc, int] = {}
        first: dict[Loc, int] = {}
        last: dict[Loc, int] = {}

        def add(loc: Loc, a: int, b: int) -> None:
            mask[loc] = mask.get(loc, 0) | (((1 << (b - a + 1)) - 1) << a)
            first[loc] = min(first.get(loc, a), a)
            last[loc] = max(last.get(loc, b), b)

        for bi, (s, e) in enumerate(spans):
            open_: dict[Loc, int] = {x: 2 * e + 1 for x in live_out[bi]}
            for i in range(e, s - 1, -1):
                u, d, c = roles[i]
                for x in d:
                    if x in open_:
                        add(x, 2 * i + 1, open_.pop(x))
                    else:
                        add(x, 2 * i + 1, 2 * i + 1)
                for x in c:
                    if x in open_:
                        name = f"{x[0]}{x[1]}" if x[0] == "s" else self.R.core_name(x[1])
                        raise self.ops[i].error(f"{name} holds a value that is used after this call, "
                                                "which overwrites it (keep it in a callee-saved register)")
                    add(x, 2 * i + 1, 2 * i + 1)
                for x in u:
                    if x not in open_:
                        open_[x] = 2 * i
            for x, end in open_.items():
                add(x, 2 * s, end)
        return mask, first, last

    # ------------------------------------------------------------------ allocation

    def unify_ties(self) -> None:
        """Give tied results the register (or virtual identity) of their operand."""
        for op in self.ops:
            for a, r in self.ties(op):
                if a.type.num is not None and r.type.num is None:
                    r.type = a.type
                elif r.type.num is not None and a.type.num is None:
                    a.type = r.type
                elif a.type.num is None and r.type.num is None:
                    # a virtual update in place: the result continues the operand's register
                    self.alias[id(r)] = a

    def root(self, v: Value) -> Value:
        while id(v) in self.alias:
            v = self.alias[id(v)]
        return v

    def run(self) -> AllocResult:
        """Allocate (spilling and retrying until everything fits), then add the prologue."""
        self.list_failures = 0
        for _ in range(400):
            self.alias: dict[int, Value] = {}
            self.unify_ties()
            victims = self.try_allocate()
            if victims is None:
                break
            for victim in dict.fromkeys(victims):
                if victim.op is not None and victim.op.parent is not None:
                    self.spill(victim)
        else:
            raise self.func.error("register allocation did not converge")
        self.drop_self_moves()
        self.share_slots()
        self.drop_repeated_reloads()
        self.prologue()
        return self.result

    def share_slots(self) -> None:
        """Give spill slots whose values are never live at once the same stack word, so that the
        frame holds the most values live at a time rather than every value ever spilled. A slot
        is live from its first to its last access in program order, widened to every loop that it
        is live across (a loop it enters or leaves, or reads before writing in)."""
        T = self.T
        if not self.slot_ops:
            return
        pos = {id(op): i for i, op in enumerate(self.ops)}
        labels = {op.symbol: i for i, op in enumerate(self.ops) if isinstance(op, T.LabelOp)}
        loops = [(labels[op.target.name], i) for i, op in enumerate(self.ops)
                 if isinstance(op, T.ThumbOp) and op.mnemonic in BRANCHES and op.mnemonic != "bx"
                 and labels.get(op.target.name, len(self.ops)) < i]
        spans = {}
        for slot, ops in self.slot_ops.items():
            at = sorted((pos[id(op)], op.mnemonic in ("vstr", "str")) for op in ops if id(op) in pos)
            if not at:
                continue
            lo, hi = at[0][0], at[-1][0]
            changed = True
            while changed:
                changed = False
                for a, b in loops:
                    inside = a <= lo and hi <= b
                    first_write = next((w for p, w in at if a <= p <= b), True)
                    if b < lo or hi < a or (inside and first_write) or (lo <= a and b <= hi):
                        continue
                    lo, hi, changed = min(lo, a), max(hi, b), True
            spans[slot] = (lo, hi)
        ends: list[int] = []          # per shared slot: the last point it is live
        new: dict[int, int] = {}
        for slot, (lo, hi) in sorted(spans.items(), key=lambda t: t[1]):
            k = next((k for k, e in enumerate(ends) if e < lo), len(ends))
            if k == len(ends):
                ends.append(hi)
            else:
                ends[k] = hi
            new[slot] = 4 * k
        for slot, ops in self.slot_ops.items():
            for op in ops:
                op.attributes["offset"] = new.get(slot, slot)
        self.slots = len(ends)

    def drop_self_moves(self) -> None:
        """Erase the copies that allocation made into no-ops (`vmov.f32 s4, s4`, `mov r4, r4`):
        a value moved into a precolored register that it was given anyway."""
        T = _thumb()
        block = self.func.body.block
        for op in list(block.ops):
            if not isinstance(op, T.ThumbOp) or op.mnemonic not in ("mov", "vmov.f32") or op.attributes \
                    or len(op.operands) != 1 or len(op.results) != 1:
                continue
            a, r = op.operands[0], op.results[0]
            if type(a.type) is type(r.type) and a.type.num is not None and a.type.num == r.type.num:
                r.replace_all_uses_with(a)
                block.erase(op)

    def drop_repeated_reloads(self) -> None:
        """Erase a reload of a spill slot into a register that already holds that slot's value:
        spilling reloads before every use, and straight-line code (a nest's setup between loops)
        often reads one spilled base several times. What a register holds is known from its last
        reload from or store to the slot, up to a label (another path may enter there), a call,
        a write to the register or a store to the slot."""
        T = self.T
        sp = self.sp_value
        if sp is None:
            return
        block = self.func.body.block
        holds: dict[tuple[bool, int], tuple[int, Value]] = {}   # register -> (slot, value in it)

        def reg(v: Value) -> tuple[bool, int]:
            return self.is_sreg(v), v.type.num

        for op in list(block.ops):
            if isinstance(op, T.LabelOp) or not isinstance(op, T.ThumbOp) or op.mnemonic in CALLS:
                holds.clear()
                continue
            if op.name in ("thumb.ldr", "thumb.vldr") and len(op.operands) == 1 and op.operands[0] is sp \
                    and len(op.results) == 1 \
                    and op.cond is None and op.mode == "offset" and not op.writeback:
                r = reg(op.results[0])
                known = holds.get(r)
                if known is not None and known[0] == op.offset:
                    op.results[0].replace_all_uses_with(known[1])
                    block.erase(op)
                    continue
                holds[r] = (op.offset, op.results[0])
                continue
            for v in op.results:
                holds.pop(reg(v), None)
            if op.name in ("thumb.str", "thumb.vstr") and len(op.operands) == 2 and op.operands[1] is sp:
                for r in [r for r, (slot, _) in holds.items() if slot == op.offset]:
                    del holds[r]
                if op.cond is None and op.mode == "offset" and not op.writeback:
                    holds[reg(op.operands[0])] = (op.offset, op.operands[0])
            elif any(v is sp for v in op.operands) and op.mnemonic not in ("ldr", "vldr", "vldm", "ldm"):
                holds.clear()   # another write through sp (none expected): forget everything
        self.ops = block.ops

    def values(self) -> list[Value]:
        """The virtual values to allocate (one per tied group)."""
        seen: dict[int, Value] = {}
        for op in self.ops:
            for v in list(op.results) + list(op.operands):
                if v.type.num is None:
                    r = self.root(v)
                    seen.setdefault(id(r), r)
        return list(seen.values())

    def loc(self, v: Value) -> Loc:
        p = self.phys(v)
        if p is not None:
            return p
        return id(self.root(v))

    def try_allocate(self) -> list[Value] | None:
        """Assign every virtual value a register; returns the values to spill when that fails."""
        mask, first, _last = self.live_ranges()
        occ: dict[Loc, int] = {}
        for loc, m in mask.items():
            if isinstance(loc, tuple):
                occ[loc] = occ.get(loc, 0) | m
        owners: dict[Loc, list[Value]] = {}
        assign: dict[int, Loc] = {}
        vals = [v for v in self.values() if id(v) in mask]
        vals.sort(key=lambda v: first[id(v)])
        lists = self.register_lists()
        victims: list[Value] = []
        split = False
        for v in vals:
            if id(v) in assign:
                continue
            m = mask[id(v)]
            kind, order = ("s", S_ORDER) if self.is_sreg(v) else ("r", CORE_ORDER)
            group = lists.get(id(v))
            if group is not None:
                # vldm/vstm: consecutive ascending registers for the whole list
                if self.assign_list(group, mask, occ, owners, assign):
                    continue
                cands = [w for w in vals if id(w) not in assign and id(w) not in lists
                         and id(w) not in self.spill_temps]
                cands += [w for ws in owners.values() for w in ws
                          if id(w) not in lists and id(w) not in self.spill_temps]
                gm = 0
                for w in group:
                    gm |= mask.get(id(w), 0)
                cands = [w for w in cands if self.is_sreg(w) == self.is_sreg(v) and mask[id(w)] & gm]
                if not cands or self.list_failures > 8 or id(group[0]) in self.paired:
                    # one vldr per register instead (for a D register pair, rather than spill
                    # anything); the other lists that do not fit are split in this same round
                    # (each split needs no other change), then allocation restarts
                    self.split_list(group)
                    split = True
                    for w in group:
                        assign[id(w)] = ("x", -1)
                    continue
                self.list_failures += 1
                return [max(cands, key=lambda w: mask[id(w)].bit_count())]
            for n in order:
                if not occ.get((kind, n), 0) & m:
                    occ[(kind, n)] = occ.get((kind, n), 0) | m
                    owners.setdefault((kind, n), []).append(v)
                    assign[id(v)] = (kind, n)
                    break
            else:
                # a D register holds its second word from the pair's load to that word's last
                # use: two VLDRs (one cycle more) cost less than a spill and its reloads
                pairs = {id(lists[id(w)][0]): lists[id(w)] for n in order for w in owners.get((kind, n), [])
                         if mask[id(w)] & m and id(w) in lists and id(lists[id(w)][0]) in self.paired}
                if pairs:
                    for g in pairs.values():
                        self.split_list(g)
                    return []
                # spill the longest-lived value in conflict (or this one); keep going, so that
                # one round finds all the spills it needs
                cands = [v] + [w for n in order for w in owners.get((kind, n), []) if mask[id(w)] & m
                               and id(w) not in lists]
                cands = [w for w in cands if id(w) not in self.spill_temps]
                if not cands:
                    # every register in conflict holds part of a VLDM's or VSTM's list, which is
                    # never spilled: load or store the longest-lived one register by register,
                    # and start again
                    held = [lists[id(w)] for n in order for w in owners.get((kind, n), [])
                            if mask[id(w)] & m and id(w) in lists and self._splittable(lists[id(w)])]
                    if held:
                        self.split_list(max(held, key=lambda g: mask[id(g[0])].bit_count()))
                        return []
                    raise self.func.error("out of registers even after spilling (too many "
                                          "precolored registers live at once)")
                victim = max(cands, key=lambda w: mask[id(w)].bit_count())
                victims.append(victim)
                if victim is not v:
                    reg = assign.pop(id(victim))
                    occ[reg] &= ~mask[id(victim)]
                    owners[reg].remove(victim)
                    if not occ[reg] & m:
                        occ[reg] |= m
                        owners[reg].append(v)
                        assign[id(v)] = reg
                    elif id(v) not in self.spill_temps:
                        victims.append(v)
                    # else: a reload waits for the next round, after the victim's spill
        if victims or split:
            return victims
        # every virtual value has a range (a dead result still occupies its definition point)
        for op in self.ops:
            for v in list(op.results) + list(op.operands):
                if v.type.num is None:
                    r = self.root(v)
                    kind, n = assign[id(r)]
                    v.type = self.R.SRegType(n) if kind == "s" else self.R.RegType(n)
        return None

    def register_lists(self) -> dict[int, list[Value]]:
        """Virtual values that must take consecutive registers: the lists of vldm/vstm, and the
        pairs of a D register load (which also start at an even register: `self.paired`)."""
        out: dict[int, list[Value]] = {}
        self.paired: set[int] = set()
        for op in self.ops:
            if not isinstance(op, self.T.ThumbOp) or op.mnemonic not in ("vldm", "vstm", "vldmdb", "vstmdb",
                                                                          "vldr"):
                continue
            for tok, oi, n in op.plan():
                if tok == "Dd":
                    group = [self.root(v) for v in op.results[:2]]
                    if all(v.type.num is None for v in group):
                        self.paired.add(id(group[0]))
                        for v in group:
                            out[id(v)] = group
                elif tok.endswith("*"):
                    vals = op.operands[oi:oi + n] if tok.startswith("U") else op.results[oi:oi + n]
                    group = [self.root(v) for v in vals]
                    if len(group) > 1 and all(v.type.num is None for v in group):
                        for v in group:
                            out[id(v)] = group
        return out

    def split_list(self, group: list[Value]) -> None:
        """Replace the vldm (or D register vldr) defining `group` by one vldr per register (and an
        add for writeback), or the vstm storing it by one vstr per register, when no run of free
        consecutive registers exists."""
        T, R = self.T, self.R
        op = group[0].op
        if op is None or op.mnemonic not in ("vldm", "vldr"):
            store = self._list_store(group)
            if store is None:
                raise self.func.error("no consecutive registers for a register list")
            return self._split_store(store)
        block = self.func.body.block
        base = op.operands[0]
        at = block.ops.index(op)
        n = len(group)
        for k, v in enumerate(op.results[:n]):
            off = op.offset + 4 * k
            ld = T.OPS["vldr"]([base], [R.SRegType(v.type.num)], {"offset": off} if off else {}, origin=op)
            block.insert(self._late(block, at + k, base, v) if op.mnemonic == "vldr" else at + k, ld)
            v.replace_all_uses_with(ld.result)
        self._writeback_add(op, at + n, n)
        for r in op.results:
            r.uses.clear()
        block.erase(op)
        self.ops = block.ops

    def _splittable(self, group: list[Value]) -> bool:
        """Whether `group` is a VLDM's results or a VSTM's list (`split_list` takes either)."""
        op = group[0].op
        return getattr(op, "mnemonic", None) == "vldm" or self._list_store(group) is not None

    def _list_store(self, group: list[Value]) -> Operation | None:
        """The vstm whose register list is `group` (values or the values they were merged into)."""
        ids = [id(v) for v in group]
        for op in self.ops:
            if isinstance(op, self.T.ThumbOp) and op.mnemonic == "vstm" and \
                    [id(self.root(v)) for v in op.operands[1:]] == ids:
                return op
        return None

    def _split_store(self, op: Operation) -> None:
        """Replace a vstm by one vstr per register (and an add for writeback)."""
        T = self.T
        block = self.func.body.block
        base = op.operands[0]
        at = block.ops.index(op)
        n = len(op.operands) - 1
        for k, v in enumerate(op.operands[1:]):
            block.insert(at + k, T.OPS["vstr"]([v, base], [], {"offset": 4 * k} if k else {}, origin=op))
        self._writeback_add(op, at + n, n)
        block.erase(op)
        self.ops = block.ops

    def _writeback_add(self, op: Operation, at: int, n: int) -> None:
        """For a split vldm/vstm that wrote its base back: the add of its n words, at `at`."""
        if op.writeback:
            wb = self.T.OPS["add"]([op.operands[0]], [op.results[-1].type], {"imm": 4 * n}, origin=op)
            self.func.body.block.insert(at, wb)
            op.results[-1].replace_all_uses_with(wb.result)

    def _late(self, block: Block, at: int, base: Value, v: Value) -> int:
        """Where a word of a split D register load may go: just before the first use of `v`, so
        that it takes a register only from there; not past a label, branch, IT block, a store
        other than a spill, or a write to the base's register (precolored, or written back)."""
        users = {id(u) for u, _ in v.uses}
        i = at
        while i < len(block.ops) and id(block.ops[i]) not in users:
            o = block.ops[i]
            spill = o.name in ("thumb.vstr", "thumb.str") and o.operands[1] is self.sp_value \
                and base is not self.sp_value
            if not isinstance(o, self.T.ThumbOp) or o.cond is not None \
                    or o.mnemonic.split(".")[0] in _NOT_PAST and not spill \
                    or any(r.type == base.type and r.type.num is not None for r in o.results) \
                    or any(o.operands[j] is base for j, _ in o.tied()):
                break   # (the last: a write-back of the base, `vldm rn!`, updates its register)
            i += 1
        return i

    def assign_list(self, group: list[Value], mask: dict, occ: dict, owners: dict, assign: dict) -> bool:
        kind = "s" if self.is_sreg(group[0]) else "r"
        top = 32 if kind == "s" else 13
        for base in range(0, top - len(group) + 1, 2 if id(group[0]) in self.paired else 1):
            regs = [(kind, base + k) for k in range(len(group))]
            if any(kind == "r" and r[1] in (SP, LR, PC) for r in regs):
                continue
            if all(not occ.get(r, 0) & mask.get(id(v), 0) for r, v in zip(regs, group)):
                for r, v in zip(regs, group):
                    occ[r] = occ.get(r, 0) | mask.get(id(v), 0)
                    owners.setdefault(r, []).append(v)
                    assign[id(v)] = r
                return True
        return False

    # ------------------------------------------------------------------ spilling

    def sp(self) -> Value:
        if self.sp_value is None:
            op = self.T.GetRegister([], [self.R.RegType(SP)], {}, origin=self.func, result_names=["sp"])
            self.func.body.block.insert(0, op)
            self.sp_value = op.result
        return self.sp_value

    def spill(self, v: Value) -> None:
        block = self.func.body.block
        slot = self.slots * 4
        self.slots += 1
        self.result.spills += 1
        sp = self.sp()
        sreg = self.is_sreg(v)
        group = [w for w in self.all_values() if self.root(w) is v]
        for w in group:
            d = w.op
            if d is not None:
                at = block.ops.index(d) + 1
                store = self.T.OPS["vstr" if sreg else "str"]([w, sp], [], {"offset": slot}, origin=d)
                block.insert(at, store)
                self.slot_ops.setdefault(slot, []).append(store)
            for user, i in list(w.uses):
                if user.name in ("thumb.vstr", "thumb.str") and user.operands[1] is sp and \
                        user.offset == slot and i == 0:
                    continue
                t = (self.R.SRegType if sreg else self.R.RegType)()
                load = self.T.OPS["vldr" if sreg else "ldr"]([sp], [t], {"offset": slot}, origin=user)
                at = block.ops.index(user)
                if at > 0 and isinstance(block.ops[at - 1], self.T.It):
                    at -= 1
                block.insert(at, load)
                self.slot_ops.setdefault(slot, []).append(load)
                self.spill_temps.add(id(load.result))
                user.set_operand(i, load.result)
        self.ops = block.ops

    def all_values(self) -> list[Value]:
        out = []
        for op in self.ops:
            out += op.results
        return out

    # ------------------------------------------------------------------ prologue and epilogue

    def prologue(self) -> None:
        T, R = self.T, self.R
        block = self.func.body.block
        used_r: set[int] = set()
        used_s: set[int] = set()
        calls = False
        for op in self.ops:
            for v in list(op.results) + list(op.operands):
                (used_s if self.is_sreg(v) else used_r).add(v.type.num)
            if isinstance(op, T.ThumbOp) and op.mnemonic == "bl":
                calls = True
        core = sorted(n for n in used_r if 4 <= n <= 11)
        top = max((n for n in used_s if n >= 16), default=None)
        svec = list(range(16, top + 1)) if top is not None else []
        frame = 4 * self.slots
        push = core + [LR] if (core or svec or frame or calls) else []
        frame += (-(4 * len(push) + 4 * len(svec) + frame)) % 8
        self.result.saved_core = core + ([LR] if push else [])
        self.result.saved_s, self.result.frame_bytes = svec, frame
        if not push:
            return
        src = self.func
        head: list[Operation] = []

        def getreg(t: Any) -> Value:
            op = T.GetRegister([], [t], {}, origin=src)
            head.append(op)
            return op.result

        regs = [getreg(R.RegType(n)) for n in push]
        sregs = [getreg(R.SRegType(n)) for n in svec]
        head.append(T.OPS["push"](regs, [], {}, origin=src))
        if sregs:
            head.append(T.OPS["vpush"](sregs, [], {}, origin=src))
        sp = self.sp() if frame else None
        if frame:
            head.append(T.OPS["sub"]([sp], [R.RegType(SP)], {"imm": frame}, origin=src))
        at = next(i for i, op in enumerate(block.ops) if not isinstance(op, T.GetRegister))
        for op in reversed(head):
            block.insert(at, op)
        rets = [op for op in block.ops if isinstance(op, T.ThumbOp) and op.mnemonic == "bx"
                and op.operands[0].type.num == LR]
        for ret in rets:
            tail: list[Operation] = []
            if frame:
                tail.append(T.OPS["add"]([sp], [R.RegType(SP)], {"imm": frame}, origin=src))
            if svec:
                tail.append(T.OPS["vpop"]([], [R.SRegType(n) for n in svec], {}, origin=src))
            tail.append(T.OPS["pop"]([], [R.RegType(n) for n in core + [PC]], {}, origin=src))
            i = block.ops.index(ret)
            for op in tail:
                block.insert(i, op)
                i += 1
            block.erase(ret)
        self.ops = block.ops


def allocate(func: Operation) -> AllocResult:
    """Allocate the registers of one thumb.func in place and add its prologue and epilogue."""
    return _Allocator(func).run()


@register_pass
@dataclass(frozen=True)
class ThumbRegalloc(ModulePass):
    """Allocates physical registers to every virtual register of each thumb.func (see the module
    doc), spilling when needed, and adds the AAPCS prologue and epilogue.

    Example: ml4f-opt model.l4f --lower-to-loops --tile -p plan-memory,lower-to-thumb,thumb-regalloc
    """

    name: ClassVar[str] = "thumb-regalloc"

    def apply(self, ctx: Context, module: Module) -> None:
        T = _thumb()
        for op in module.ops:
            if isinstance(op, T.Func):
                if any(isinstance(o, T.ThumbOp) and o.name == "thumb.push" for o in op.body.block.ops):
                    raise op.error("already has a prologue (was it allocated twice?)")
                allocate(op)
