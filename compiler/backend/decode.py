"""A coarse decoder of Thumb-2 / VFPv4-SP machine code: what the cycle model and error messages need.

It does not disassemble operands; it tells, for each instruction, its size, a mnemonic, its timing
class, the core registers a load/store uses (for LDR pipelining), the S registers it reads and
writes (for the FP result-use stall) and the register count of a multiple transfer. Encodings
follow the ARMv7-M Architecture Reference Manual, chapter A5 (Thumb) and A6 (floating point).

    >>> decode(bytes.fromhex("30ee201a"), 0).mnemonic      # vadd.f32 s2, s0, s1
    'vadd.f32'
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """Timing classes of the Cortex-M4 (see cycles.py for the cost of each)."""

    ALU = "alu"               # data processing, moves, shifts, extends, saturation, bitfield, IT, hints
    MUL = "mul"               # MUL/MLA/MLS, DSP multiplies and MACs, long multiplies
    DIV = "div"               # SDIV/UDIV
    LOAD = "load"             # LDR/LDRB/LDRH/LDRSB/LDRSH/LDREX (single core register)
    STORE = "store"           # STR/STRB/STRH/STREX
    DUAL = "dual"             # LDRD/STRD
    MULTI = "multi"           # LDM/STM/PUSH/POP
    BRANCH = "branch"         # B, B<c>, BL, BX, BLX, CBZ/CBNZ, MOV/ADD pc
    TABLE_BRANCH = "tbb"      # TBB/TBH
    FP_ARITH = "fp_arith"     # VADD/VSUB/VMUL/VNMUL/VCVT*: 1 cycle, result stalls a reader
    FP_MAC = "fp_mac"         # VMLA/VMLS/VNMLA/VNMLS/VFMA/VFMS/VFNMA/VFNMS
    FP_DIV = "fp_div"         # VDIV/VSQRT
    FP_MOVE = "fp_move"       # VMOV (register, immediate, core<->S), VNEG, VABS, VCMP, VMRS/VMSR
    FP_MOVE2 = "fp_move2"     # VMOV of two core registers to/from two S registers
    FP_LOAD = "fp_load"       # VLDR
    FP_STORE = "fp_store"     # VSTR
    FP_MULTI = "fp_multi"     # VLDM/VSTM/VPUSH/VPOP
    OTHER = "other"           # system instructions, SVC/BKPT/UDF, anything not executed normally


@dataclass(frozen=True, slots=True)
class Insn:
    """One decoded instruction.

    `rt` is the core register a load writes (-1 if none); `rn`/`rm` the base/index registers of a
    load or store; `fdst`/`fsrc` the S registers written/read; `facc` the accumulator of an FP MAC
    (read and written, excluded from the result-use stall); `nregs` the registers (words) moved by
    a multiple transfer; `conditional` marks a B<c>/CBZ whose taken-ness is decided at run time.
    """

    offset: int
    size: int
    raw: int
    mnemonic: str
    kind: Kind
    rt: int = -1
    rn: int = -1
    rm: int = -1
    fdst: tuple[int, ...] = ()
    fsrc: tuple[int, ...] = ()
    facc: int = -1
    nregs: int = 0
    writes_pc: bool = False
    conditional: bool = False
    reg_offset: bool = False

    def text(self) -> str:
        """`mnemonic (hex halfwords)`, e.g. `str.w (f8c1 3200)`."""
        hexs = f"{self.raw:04x}" if self.size == 2 else f"{self.raw >> 16:04x} {self.raw & 0xFFFF:04x}"
        return f"{self.mnemonic} ({hexs})"


def insn_size(first_halfword: int) -> int:
    """2 or 4: 32-bit Thumb instructions start with 0b11101, 0b11110 or 0b11111 (ARMv7-M A5.1)."""
    return 4 if (first_halfword >> 11) in (0b11101, 0b11110, 0b11111) else 2


def decode(code: bytes, offset: int) -> Insn:
    """Decode the instruction at `offset` of `code` (little-endian halfwords)."""
    hw1 = int.from_bytes(code[offset:offset + 2], "little")
    if insn_size(hw1) == 2:
        return _decode16(hw1, offset)
    hw2 = int.from_bytes(code[offset + 2:offset + 4], "little")
    return _decode32(hw1, hw2, offset)


def decode_range(code: bytes, start: int, end: int) -> list[Insn]:
    """All instructions in code[start:end] (a basic block)."""
    out = []
    pos = start
    while pos < end:
        insn = decode(code, pos)
        out.append(insn)
        pos += insn.size
    return out


_DP16 = ("ands", "eors", "lsls", "lsrs", "asrs", "adcs", "sbcs", "rors",
         "tst", "rsbs", "cmp", "cmn", "orrs", "muls", "bics", "mvns")
_LS16_REG = ("str", "strh", "strb", "ldrsb", "ldr", "ldrh", "ldrb", "ldrsh")


def _decode16(hw: int, off: int) -> Insn:
    def mk(mn: str, kind: Kind, **kw) -> Insn:
        return Insn(off, 2, hw, mn, kind, **kw)

    top = hw >> 10
    if hw >> 14 == 0:                                      # A5.2.1 shift, add, sub, move, compare
        op = (hw >> 11) & 7
        if op == 3:
            return mk(("adds", "subs", "adds", "subs")[(hw >> 9) & 3], Kind.ALU)
        return mk(("lsls", "lsrs", "asrs", "", "movs", "cmp", "adds", "subs")[op], Kind.ALU)
    if top == 0b010000:                                    # A5.2.2 data processing
        mn = _DP16[(hw >> 6) & 15]
        return mk(mn, Kind.MUL if mn == "muls" else Kind.ALU)
    if top == 0b010001:                                    # A5.2.3 special data, branch and exchange
        op = (hw >> 8) & 3
        if op == 3:
            return mk("blx" if hw & 0x80 else "bx", Kind.BRANCH, writes_pc=True)
        rd = (hw & 7) | ((hw >> 4) & 8)
        mn = ("add", "cmp", "mov")[op]
        if rd == 15 and op != 1:
            return mk(mn, Kind.BRANCH, writes_pc=True)
        return mk(mn, Kind.ALU)
    if hw >> 11 == 0b01001:                                # LDR (literal)
        return mk("ldr", Kind.LOAD, rt=(hw >> 8) & 7, rn=15)
    if hw >> 12 == 0b0101:                                 # A5.2.4 load/store, register offset
        op = (hw >> 9) & 7
        kind = Kind.STORE if op < 3 else Kind.LOAD
        return mk(_LS16_REG[op], kind, rt=hw & 7 if kind is Kind.LOAD else -1, rn=(hw >> 3) & 7,
                  rm=(hw >> 6) & 7, reg_offset=True)
    if hw >> 13 == 0b011 or hw >> 12 == 0b1000:            # immediate offset: word, byte, halfword
        load = bool(hw & 0x800)
        mn = ("str", "ldr") if hw >> 13 == 0b011 and not hw & 0x1000 else \
            ("strb", "ldrb") if hw >> 13 == 0b011 else ("strh", "ldrh")
        return mk(mn[load], Kind.LOAD if load else Kind.STORE, rt=hw & 7 if load else -1,
                  rn=(hw >> 3) & 7)
    if hw >> 12 == 0b1001:                                 # SP-relative
        load = bool(hw & 0x800)
        return mk("ldr" if load else "str", Kind.LOAD if load else Kind.STORE,
                  rt=(hw >> 8) & 7 if load else -1, rn=13)
    if hw >> 12 == 0b1010:                                 # ADR, ADD (SP plus immediate)
        return mk("add" if hw & 0x800 else "adr", Kind.ALU)
    if hw >> 12 == 0b1011:                                 # A5.2.5 miscellaneous
        m = (hw >> 8) & 15
        if m == 0:
            return mk("sub" if hw & 0x80 else "add", Kind.ALU)
        if m in (1, 3, 9, 11):
            return mk("cbnz" if hw & 0x800 else "cbz", Kind.BRANCH, writes_pc=True, conditional=True)
        if m == 2:
            return mk(("sxth", "sxtb", "uxth", "uxtb")[(hw >> 6) & 3], Kind.ALU)
        if m in (4, 5):
            return mk("push", Kind.MULTI, rn=13, nregs=(hw & 0x1FF).bit_count())
        if m in (0xC, 0xD):
            pc = bool(hw & 0x100)
            return mk("pop", Kind.MULTI, rn=13, nregs=(hw & 0x1FF).bit_count(), writes_pc=pc)
        if m == 0xA:
            return mk(("rev", "rev16", "", "revsh")[(hw >> 6) & 3], Kind.ALU)
        if m == 0xE:
            return mk("bkpt", Kind.OTHER)
        if m == 0xF:
            return mk("it" if hw & 0xF else ("nop", "yield", "wfe", "wfi", "sev")[min((hw >> 4) & 15, 4)],
                      Kind.ALU if hw & 0xF or not (hw >> 4) & 15 else Kind.OTHER)
        return mk("cps", Kind.OTHER)
    if hw >> 12 == 0b1100:                                 # LDM/STM
        load = bool(hw & 0x800)
        return mk("ldm" if load else "stm", Kind.MULTI, rn=(hw >> 8) & 7, nregs=(hw & 0xFF).bit_count())
    if hw >> 12 == 0b1101:                                 # B<c>, UDF, SVC
        cond = (hw >> 8) & 15
        if cond >= 14:
            return mk("udf" if cond == 14 else "svc", Kind.OTHER)
        return mk("b" + _COND[cond], Kind.BRANCH, writes_pc=True, conditional=True)
    if hw >> 11 == 0b11100:
        return mk("b", Kind.BRANCH, writes_pc=True)
    return mk("udf", Kind.OTHER)


_COND = ("eq", "ne", "cs", "cc", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "", "")
_DP_SHIFTED = {0: "and", 1: "bic", 2: "orr", 3: "orn", 4: "eor", 6: "pkhbt", 8: "add", 10: "adc", 11: "sbc",
               13: "sub", 14: "rsb"}
_PLAIN_IMM = {0x00: "addw", 0x04: "movw", 0x0A: "subw", 0x0C: "movt", 0x10: "ssat", 0x12: "ssat16",
              0x14: "sbfx", 0x16: "bfi", 0x18: "usat", 0x1A: "usat16", 0x1C: "ubfx"}
# A5.3.16 (multiply, MAC, absolute difference): op1 = hw1[6:4], op2 = hw2[5:4]
_MAC = {(0, 0): "mla", (1, 0): "smlabb", (1, 1): "smlabt", (1, 2): "smlatb", (1, 3): "smlatt",
        (2, 0): "smlad", (2, 1): "smladx", (3, 0): "smlawb", (3, 1): "smlawt", (4, 0): "smlsd",
        (4, 1): "smlsdx", (5, 0): "smmla", (5, 1): "smmlar", (6, 0): "smmls", (6, 1): "smmlsr",
        (7, 0): "usada8"}
_MUL = {0: "mul", 1: "smulbb", 2: "smuad", 3: "smulwb", 4: "smusd", 5: "smmul", 7: "usad8"}
_LONG = {0: "smull", 1: "sdiv", 2: "umull", 3: "udiv", 4: "smlal", 5: "smlsld", 6: "umlal"}


def _decode32(hw1: int, hw2: int, off: int) -> Insn:
    raw = (hw1 << 16) | hw2

    def mk(mn: str, kind: Kind, **kw) -> Insn:
        return Insn(off, 4, raw, mn, kind, **kw)

    op1 = (hw1 >> 11) & 3
    op2 = (hw1 >> 4) & 0x7F
    rn = hw1 & 15
    if op1 == 1:
        if op2 & 0b1100100 == 0:                           # A5.3.5 load/store multiple
            load = bool(hw1 & 0x10)
            mode = (hw1 >> 7) & 3
            mn = ("pop.w" if load and mode == 1 else "push.w") if rn == 13 and mode in (1, 2) and \
                load == (mode == 1) else ("ldm" if load else "stm") + (".w" if mode == 1 else "db")
            return mk(mn, Kind.MULTI, rn=rn, nregs=hw2.bit_count(), writes_pc=load and bool(hw2 & 0x8000))
        if op2 & 0b1100100 == 0b0000100:                   # A5.3.6 dual, exclusive, table branch
            o1, o2, o3 = (hw1 >> 7) & 3, (hw1 >> 4) & 3, (hw2 >> 4) & 15
            rt = hw2 >> 12
            if o1 == 0 and o2 == 0:
                return mk("strex", Kind.STORE, rn=rn)
            if o1 == 0 and o2 == 1:
                return mk("ldrex", Kind.LOAD, rt=rt, rn=rn)
            if (o1 < 2 and o2 >= 2) or o1 >= 2:
                return mk("ldrd" if o2 & 1 else "strd", Kind.DUAL, rn=rn)
            if o1 == 1 and o2 == 1 and o3 in (0, 1):
                return mk("tbh" if o3 else "tbb", Kind.TABLE_BRANCH, rn=rn, rm=hw2 & 15, writes_pc=True)
            return mk("ldrex" if o2 & 1 else "strex", Kind.LOAD if o2 & 1 else Kind.STORE,
                      rt=rt if o2 & 1 else -1, rn=rn)
        if op2 & 0b1100000 == 0b0100000:                   # A5.3.11 data processing (shifted register)
            mn = _DP_SHIFTED.get((hw1 >> 5) & 15, "dp")
            if mn == "orr" and rn == 15:
                mn = "mov"
            return mk(mn + ".w", Kind.ALU)
        return _decode_cp(hw1, hw2, mk)
    if op1 == 2:
        if not hw2 & 0x8000:
            if hw1 & 0x200:                                # A5.3.3 plain binary immediate
                return mk(_PLAIN_IMM.get((hw1 >> 4) & 0x1E, "dp.imm"), Kind.ALU)
            return mk("dp.imm", Kind.ALU)                  # A5.3.1 modified immediate
        o1 = (hw2 >> 12) & 7                               # A5.3.4 branches and misc control
        if o1 & 0b101 == 0:
            if (hw1 >> 7) & 7 != 7:
                return mk("b" + _COND[(hw1 >> 6) & 15] + ".w", Kind.BRANCH, writes_pc=True, conditional=True)
            if (hw1 >> 4) & 0x7F == 0x3A:                  # NOP.W and other hints
                return mk("nop.w", Kind.ALU)
            return mk("msr/mrs", Kind.OTHER)
        if o1 & 0b101 == 1:
            return mk("b.w", Kind.BRANCH, writes_pc=True)
        if o1 & 0b101 == 0b101:
            return mk("bl", Kind.BRANCH, writes_pc=True)
        return mk("blx", Kind.OTHER)
    # op1 == 3
    if op2 & 0b1110001 == 0:                               # A5.3.10 store single
        size = (hw1 >> 5) & 3
        reg = not hw1 & 0x80 and (hw2 >> 6) & 0x3F == 0
        return mk(("strb", "strh", "str", "str?")[size] + ".w", Kind.STORE, rn=rn,
                  rm=hw2 & 15 if reg else -1, reg_offset=reg)
    if op2 & 0b1100001 == 0b0000001 and op2 & 0b110 != 0b110:  # A5.3.7-9 loads
        size = (hw1 >> 5) & 3
        rt = hw2 >> 12
        mn = ("ldrsb" if hw1 & 0x100 else "ldrb", "ldrsh" if hw1 & 0x100 else "ldrh", "ldr")[size]
        if rt == 15:
            if size == 2:
                return mk("ldr", Kind.LOAD, rt=15, rn=rn, writes_pc=True)
            return mk("pld", Kind.ALU)
        reg = not hw1 & 0x80 and rn != 15 and (hw2 >> 6) & 0x3F == 0
        return mk(mn + ".w", Kind.LOAD, rt=rt, rn=rn, rm=hw2 & 15 if reg else -1, reg_offset=reg)
    if op2 & 0b1110000 == 0b0100000:                       # A5.3.12 data processing (register), DSP
        return mk(_dp_register_name(hw1, hw2), Kind.ALU)
    if op2 & 0b1111000 == 0b0110000:                       # A5.3.16 multiply, MAC
        o1, o2 = (hw1 >> 4) & 7, (hw2 >> 4) & 3
        accumulate = (hw2 >> 12) != 15
        if o1 == 0 and o2 == 1:
            mn = "mls"
        elif accumulate:
            mn = _MAC.get((o1, o2 if o1 == 1 else o2 & 1), "mac")
        else:
            mn = _MUL.get(o1, "mul") if o1 != 1 else ("smulbb", "smulbt", "smultb", "smultt")[o2]
            mn = mn + "x" if o1 in (2, 4) and o2 & 1 else mn
        return mk(mn, Kind.MUL)
    if op2 & 0b1111000 == 0b0111000:                       # A5.3.17 long multiply, divide
        o1 = (hw1 >> 4) & 7
        mn = _LONG.get(o1, "smlal")
        return mk(mn, Kind.DIV if mn in ("sdiv", "udiv") else Kind.MUL)
    if op2 & 0b1000000:
        return _decode_cp(hw1, hw2, mk)
    return mk("udf.w", Kind.OTHER)


def _dp_register_name(hw1: int, hw2: int) -> str:
    op1, op2 = (hw1 >> 4) & 15, (hw2 >> 4) & 15
    if op2 == 0 and op1 < 8:
        return ("lsl", "lsls", "lsr", "lsrs", "asr", "asrs", "ror", "rors")[op1] + ".w"
    if op1 < 8 and op2 & 8:
        extends = ("sxtah", "uxtah", "sxtab16", "uxtab16", "sxtab", "uxtab")
        if (hw1 & 15) == 15:
            extends = ("sxth", "uxth", "sxtb16", "uxtb16", "sxtb", "uxtb")
        return extends[op1] if op1 < 6 else "extend"
    if op1 & 8 and op2 < 8:
        simd = {0: "sadd8", 1: "sadd16", 2: "sasx", 4: "ssub8", 5: "ssub16", 6: "ssax"}
        prefix = ("s", "q", "sh", "", "u", "uq", "uh", "")[op2]
        return prefix + simd.get(op1 & 7, "simd")[1:] if op2 in (0, 1, 2, 4, 5, 6) else "simd"
    if op1 & 12 == 8 and op2 & 12 == 8:
        return {(8, 8): "qadd", (8, 9): "qdadd", (8, 10): "qsub", (8, 11): "qdsub", (9, 8): "rev",
                (9, 9): "rev16", (9, 10): "rbit", (9, 11): "revsh", (10, 8): "sel", (11, 8): "clz"}.get(
                    (op1, op2), "misc")
    return "dp.reg"


def _decode_cp(hw1: int, hw2: int, mk) -> Insn:
    """Floating-point instructions (A6): coprocessor 10 (single) and 11 (double) only."""
    coproc = (hw2 >> 8) & 15
    if coproc & 14 != 10:
        return mk("cdp", Kind.OTHER)
    dbl = coproc == 11
    rn = hw1 & 15
    if (hw1 >> 9) & 7 == 0b110:                            # A6.5 extension register load/store
        p, u, w, load = (hw1 >> 8) & 1, (hw1 >> 7) & 1, (hw1 >> 5) & 1, bool(hw1 & 0x10)
        if (hw1 >> 5) & 15 == 0b0010:                      # A6.8 64-bit transfers
            m = ((hw2 & 15) << 1) | ((hw2 >> 5) & 1)
            regs = (2 * (hw2 & 15), 2 * (hw2 & 15) + 1) if dbl else (m, m + 1)
            return mk("vmov", Kind.FP_MOVE2, fsrc=regs if load else (), fdst=() if load else regs)
        vd = (hw2 >> 12) & 15
        d_bit = (hw1 >> 6) & 1
        first = (d_bit << 4 | vd) * 2 if dbl else (vd << 1) | d_bit
        if p == 1 and w == 0:
            regs = (first, first + 1) if dbl else (first,)
            if load:
                return mk("vldr", Kind.FP_LOAD, rn=rn, fdst=regs)
            return mk("vstr", Kind.FP_STORE, rn=rn, fsrc=regs)
        n = hw2 & 0xFF                                     # words (2 per D register)
        regs = tuple(range(first, min(first + n, 32)))
        if rn == 13 and w and (load and p == 0 and u == 1 or not load and p == 1 and u == 0):
            mn = "vpop" if load else "vpush"
        else:
            mn = ("vldm" if load else "vstm") + ("db" if p else "")
        return mk(mn, Kind.FP_MULTI, rn=rn, nregs=n, fdst=regs if load else (), fsrc=() if load else regs)
    if (hw1 >> 8) & 15 != 0b1110:
        return mk("mcrr/ldc", Kind.OTHER)
    if hw2 & 0x10:                                         # A6.7 32-bit transfers
        a, load, c = (hw1 >> 5) & 7, bool(hw1 & 0x10), (hw2 >> 8) & 1
        if c == 0 and a == 0:
            s = ((hw1 & 15) << 1) | ((hw2 >> 7) & 1)
            return mk("vmov", Kind.FP_MOVE, fsrc=(s,) if load else (), fdst=() if load else (s,))
        if c == 0 and a == 7:
            return mk("vmrs" if load else "vmsr", Kind.FP_MOVE)
        return mk("vmov", Kind.FP_MOVE)
    # A6.4 data processing: opc1 = bits 23, 21, 20 (bit 22 is D); opc2 = Vn; opc3 = bits 7:6
    opc1 = ((hw1 >> 5) & 4) | ((hw1 >> 4) & 3)
    opc2 = hw1 & 15
    opc3 = (hw2 >> 6) & 3
    if dbl:
        d = ((hw1 >> 6) & 1) << 4 | (hw2 >> 12) & 15
        n = ((hw2 >> 7) & 1) << 4 | opc2
        m = ((hw2 >> 5) & 1) << 4 | hw2 & 15
        sd, sn, sm = (2 * d, 2 * d + 1), (2 * n, 2 * n + 1), (2 * m, 2 * m + 1)
        suffix = ".f64"
    else:
        sd = (((hw2 >> 12) & 15) << 1 | (hw1 >> 6) & 1,)
        sn = ((opc2 << 1) | (hw2 >> 7) & 1,)
        sm = (((hw2 & 15) << 1) | (hw2 >> 5) & 1,)
        suffix = ".f32"
    op = (hw2 >> 6) & 1
    if opc1 in (0, 1, 5, 6):
        mn = {0: ("vmla", "vmls"), 1: ("vnmls", "vnmla"), 5: ("vfnms", "vfnma"), 6: ("vfma", "vfms")}[opc1][op]
        return mk(mn + suffix, Kind.FP_MAC, fdst=sd, fsrc=sn + sm, facc=sd[0])
    if opc1 == 2:
        return mk(("vmul", "vnmul")[op] + suffix, Kind.FP_ARITH, fdst=sd, fsrc=sn + sm)
    if opc1 == 3:
        return mk(("vadd", "vsub")[op] + suffix, Kind.FP_ARITH, fdst=sd, fsrc=sn + sm)
    if opc1 == 4:
        return mk("vdiv" + suffix, Kind.FP_DIV, fdst=sd, fsrc=sn + sm)
    if opc1 != 7:
        return mk("vfp?", Kind.OTHER)
    if not opc3 & 1:
        return mk("vmov" + suffix, Kind.FP_MOVE, fdst=sd)          # immediate
    if opc2 == 0:
        return mk(("vmov", "vabs")[opc3 >> 1] + suffix, Kind.FP_MOVE, fdst=sd, fsrc=sm)
    if opc2 == 1:
        if opc3 >> 1:
            return mk("vsqrt" + suffix, Kind.FP_DIV, fdst=sd, fsrc=sm)
        return mk("vneg" + suffix, Kind.FP_MOVE, fdst=sd, fsrc=sm)
    if opc2 in (2, 3):                                     # VCVTB/VCVTT: half-precision halves
        to_half = opc2 & 1
        mn = ("vcvtt" if opc3 >> 1 else "vcvtb") + (".f16.f32" if to_half else ".f32.f16")
        # writing one half of Sd keeps the other half: Sd is read as well
        return mk(mn, Kind.FP_ARITH, fdst=sd, fsrc=sm + (sd if to_half else ()))
    if opc2 in (4, 5):
        return mk(("vcmp", "vcmpe")[opc3 >> 1] + suffix, Kind.FP_MOVE, fsrc=sd + (sm if opc2 == 4 else ()))
    if opc2 == 8:
        return mk("vcvt" + suffix + (".s32" if opc3 >> 1 else ".u32"), Kind.FP_ARITH, fdst=sd, fsrc=sm)
    if opc2 in (12, 13):
        return mk(("vcvtr", "vcvt")[opc3 >> 1] + (".s32" if opc2 & 1 else ".u32") + suffix, Kind.FP_ARITH,
                  fdst=sd, fsrc=sm)
    if opc2 in (10, 11, 14, 15):                           # fixed point, in place
        return mk("vcvt.fixed", Kind.FP_ARITH, fdst=sd, fsrc=sd)
    return mk("vfp?", Kind.OTHER)
