"""The Cortex-M4 cycle model: the timing table of DESIGN §6 applied to executed basic blocks.

Every timing rule cites the Cortex-M4 Technical Reference Manual (ARM DDI 0439B), section 3.3
"Instruction set summary" (table 3-1 and its notes, and 3.3.2 "Load/store timings") and section 7.2.3
"FPU instruction set" (table 7-1). Zero-wait-state memory is assumed (flash wait states are not
modelled), as in the TRM's tables.

The emulator counts how often each edge (previous block, block) was executed; `CycleModel.account`
turns those counts into cycles. Each distinct block is decoded and costed once and cached on the
model, so the per-block work during the run is a dictionary increment.

    model = CycleModel(image, base=0x08000000, ranges=[("conv1", 0x44, 0x90)])
    report = model.account({(None, (0x08000044, 12)): 1}, last=(0x08000044, 12))
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from ml4f.compiler.backend.decode import Insn, Kind, decode_range

# TRM 3.3.1, table 3-1 key: "P: the number of cycles required for a pipeline refill. This ranges
# from 1 to 3 depending on the alignment and width of the target instruction, and whether the
# processor manages to speculate the address early." We take the middle value.
BRANCH_REFILL = 2

# TRM table 3-1: SDIV/UDIV take 2-12 cycles ("division operations use early termination
# depending on the size of the operands"). Data-dependent timing would need a per-instruction hook;
# we charge the upper bound so that reported cycles are never optimistic.
DIVIDE_CYCLES = 12

# TRM table 7-1: VDIV.F32 and VSQRT.F32 take 14 cycles.
FP_DIVIDE_CYCLES = 14

# TRM table 7-1: VMLA/VMLS/VNMLA/VNMLS and the fused VFMA family take 3 cycles.
FP_MAC_CYCLES = 3

_FP_PRODUCERS = (Kind.FP_ARITH, Kind.FP_MAC, Kind.FP_DIV)


def base_cycles(insn: Insn) -> int:
    """Cycles of one instruction on its own, without the neighbour effects and branch refills."""
    k = insn.kind
    if k is Kind.LOAD:
        # table 3-1: LDR 2; LDR to PC 2+P (the refill is added when the branch is seen taken).
        # 3.3.2: a PC-relative LDR "might add a cycle because of contention with the fetch unit":
        # not modelled.
        return 2
    if k is Kind.STORE:
        # 3.3.2: "STR Rx,[Ry,#imm] is always one cycle": the data phase overlaps the next instruction
        # through the write buffer (a full write buffer, the "2" of table 3-1, is not modelled).
        return 1
    if k is Kind.DUAL:
        # 3.3.2: "LDRD and STRD cannot be pipelined ... this operation requires three cycles"
        return 3
    if k is Kind.MULTI:
        # table 3-1: LDM/STM/PUSH/POP 1+N (N registers); with PC 1+N+P
        return 1 + insn.nregs
    if k is Kind.DIV:
        return DIVIDE_CYCLES
    if k is Kind.TABLE_BRANCH:
        # 3.3.2: "TBB and TBH ... at least two cycles for the load, one cycle for the add" (+P)
        return 3
    if k is Kind.FP_MAC:
        return FP_MAC_CYCLES
    if k is Kind.FP_DIV:
        return FP_DIVIDE_CYCLES
    if k in (Kind.FP_LOAD, Kind.FP_STORE):
        # table 7-1: VLDR.F32 / VSTR.F32 2; the 64-bit forms (D registers) 3
        return 2 if len(insn.fdst or insn.fsrc) == 1 else 3
    if k is Kind.FP_MULTI:
        # table 7-1: VLDM/VSTM/VPUSH/VPOP 1+N, N = number of words
        return 1 + insn.nregs
    if k is Kind.FP_MOVE2:
        # table 7-1: VMOV of two core registers to/from two S registers: 2
        return 2
    # table 3-1: data processing, MOV/MOVW/MOVT, shifts, compare, MUL/MLA/MLS, SMULL/SMLAL, the DSP
    # multiplies and MACs (SMLAD, SMUAD, SMLABB...), saturation, extends, IT and NOP: 1.
    # Branches: 1, plus P when taken (added by `account`). Table 7-1: VADD/VSUB/VMUL/VNMUL/VCVT/
    # VMOV/VNEG/VABS/VCMP/VMRS/VMSR: 1.
    return 1


def pair_adjust(prev: Insn, cur: Insn) -> int:
    """Cycles that `cur` gains (+) or saves (-) because it directly follows `prev`.

    LDR pipelining (TRM 3.3.2): "if the next instruction is an LDR or STR, and the destination of
    the first LDR is not used to compute the base address for the next instruction, then one cycle
    is removed from the cost of the next instruction"; "STR can only be pipelined when it follows an
    LDR"; "other instructions cannot be pipelined after STR with register offset"; LDRD/STRD/LDM/STM
    "cannot be pipelined with preceding or following instructions". So a core LDR costs 1 after a
    core LDR or STR (not register-offset STR, not LDR to PC) unless it uses the loaded register as
    its base or index. (STR already costs 1, so a pipelined STR gains nothing more here.)

    FP result-use stall (DESIGN §6): the FPU's execute stage delivers the result of an arithmetic
    instruction one cycle too late for the instruction right behind it, which therefore waits a
    cycle (TRM 7.2.3 gives the issue cycles of table 7-1 "assuming no dependencies"). Charged when
    the result of VADD/VSUB/VMUL/VNMUL/VCVT, an FP MAC or VDIV/VSQRT is read by the very next
    instruction, except as the accumulator of a MAC (the accumulate stage reads it late); VMOV/VNEG/
    VABS and loads produce their result in time.
    """
    if cur.kind is Kind.LOAD and not cur.writes_pc:
        if prev.kind is Kind.LOAD and not prev.writes_pc and prev.rt not in (cur.rn, cur.rm):
            return -1
        if prev.kind is Kind.STORE and not prev.reg_offset:
            return -1
        return 0
    if prev.kind in _FP_PRODUCERS and prev.fdst and cur.fsrc:
        for r in prev.fdst:
            if r in cur.fsrc:
                return 1
    return 0


def sequence_cycles(insns: Sequence[Insn]) -> int:
    """Cycles of straight-line code executed once (no taken branch inside)."""
    total = 0
    prev = None
    for insn in insns:
        total += base_cycles(insn) + (pair_adjust(prev, insn) if prev is not None else 0)
        prev = insn
    return total


@dataclass(frozen=True)
class BlockCost:
    """A decoded basic block: its cycles and instructions, split over the label ranges it covers."""

    cycles: int
    count: int
    first: Insn
    last: Insn
    first_range: int
    last_range: int
    per_range: tuple[tuple[int, int, int], ...]   # (range index, cycles, instructions); -1 = no label


@dataclass
class RangeStats:
    """Cycles and instructions executed inside one label range."""

    cycles: int = 0
    instructions: int = 0


@dataclass
class CycleReport:
    """The outcome of `CycleModel.account`."""

    cycles: int
    instructions: int
    ranges: dict[str, RangeStats] = field(default_factory=dict)


BlockKey = tuple[int, int]          # (address, size) as unicorn reports a block


class CycleModel:
    """Cycle accounting for one binary image mapped at `base`, with optional label ranges.

    `ranges` are (label, start, end) byte offsets into the image (end exclusive), e.g. one per
    layer; instructions outside every range count only in the totals. Decoded blocks are cached on
    the instance and reused across runs of the same image.
    """

    def __init__(self, image: bytes, base: int, ranges: Sequence[tuple[str, int, int]] = ()):
        self.image = bytes(image)
        self.base = base
        self.ranges = sorted(ranges, key=lambda r: r[1])
        self._starts = [r[1] for r in self.ranges]
        self._blocks: dict[BlockKey, BlockCost] = {}

    def range_of(self, offset: int) -> int:
        """Index of the range that holds image offset `offset`, or -1."""
        i = bisect.bisect_right(self._starts, offset) - 1
        if i >= 0 and offset < self.ranges[i][2]:
            return i
        return -1

    def label_of(self, offset: int) -> str | None:
        i = self.range_of(offset)
        return self.ranges[i][0] if i >= 0 else None

    def block(self, key: BlockKey) -> BlockCost:
        """The (cached) cost of the block at absolute address key[0] of key[1] bytes."""
        cost = self._blocks.get(key)
        if cost is None:
            cost = self._blocks[key] = self._analyze(key)
        return cost

    def _analyze(self, key: BlockKey) -> BlockCost:
        start = key[0] - self.base
        insns = decode_range(self.image, start, start + key[1])
        assert insns, f"empty block at {key[0]:#x}"
        per: dict[int, list[int]] = {}
        total = 0
        prev = None
        for insn in insns:
            c = base_cycles(insn) + (pair_adjust(prev, insn) if prev is not None else 0)
            total += c
            slot = per.setdefault(self.range_of(insn.offset), [0, 0])
            slot[0] += c
            slot[1] += 1
            prev = insn
        return BlockCost(total, len(insns), insns[0], insns[-1], self.range_of(insns[0].offset),
                         self.range_of(insns[-1].offset),
                         tuple((r, c, n) for r, (c, n) in per.items()))

    def account(self, edges: dict[tuple[BlockKey | None, BlockKey], int], last: BlockKey | None) -> CycleReport:
        """Total cycles from edge counts {(previous block or None, block): times}.

        A block entered at an address other than the end of the previous one was reached by a taken
        branch: the branch pays the refill P (table 3-1: "B, BL, BX ... 1+P"; a conditional branch
        not taken costs 1). Across a fall-through the neighbour rules of `pair_adjust` apply. The
        run ends with the return to the caller (the last block's final branch), which is taken.
        A branch to the instruction right after itself cannot be told from a fall-through and is
        charged as not taken.
        """
        cycles = insns = 0
        per = [[0, 0] for _ in self.ranges]

        def charge(rng: int, c: int, n: int) -> None:
            if rng >= 0:
                per[rng][0] += c
                per[rng][1] += n

        for (prev, key), times in edges.items():
            b = self.block(key)
            cycles += times * b.cycles
            insns += times * b.count
            for rng, c, n in b.per_range:
                charge(rng, times * c, times * n)
            if prev is None:
                continue
            a = self.block(prev)
            if key[0] != prev[0] + prev[1]:
                if a.last.writes_pc:
                    cycles += times * BRANCH_REFILL
                    charge(a.last_range, times * BRANCH_REFILL, 0)
            else:
                adj = pair_adjust(a.last, b.first)
                cycles += times * adj
                charge(b.first_range, times * adj, 0)
        if last is not None and self.block(last).last.writes_pc:
            cycles += BRANCH_REFILL
            charge(self.block(last).last_range, BRANCH_REFILL, 0)
        report = CycleReport(cycles, insns)
        for (label, _, _), (c, n) in zip(self.ranges, per):
            stats = report.ranges.setdefault(label, RangeStats())
            stats.cycles += c
            stats.instructions += n
        return report
