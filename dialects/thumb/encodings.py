"""Every Thumb-2 / DSP / FPv4-SP instruction form: its GNU syntax, its encoding and its cycle cost.

One `Form` per encoding (ARMv7-M Architecture Reference Manual, chapter A7 for integer forms and
A7.7/A7.5 for VFP). The forms of a mnemonic are listed narrowest first; the assembler takes the
first one whose operand pattern matches and whose encoder accepts the operands, which is the
choice GNU as makes (16-bit data-processing forms set the flags outside an IT block and not inside
one, so `adds r0, r1, #1` is narrow and `add r0, r1, #1` is `add.w`).

An encoder gets the operands and an `Env` (flags wanted, condition, IT state, this instruction's
address and a label resolver) and returns the instruction as an int (a 32-bit form is
`hw1 << 16 | hw2`), or raises `Reject` with the reason this form does not fit.

Cycle costs follow DESIGN §6 (Cortex-M4 TRM): `Cost(1)`, `Cost(2, 12)` for a range,
`Cost(1, per_reg=True)` for 1+N, `Cost(1, branch=True)` for 1+P when taken.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from .registers import LR, PC, SP

# ----------------------------------------------------------------------------- operands


@dataclass(frozen=True)
class Reg:
    """A core register operand; `wb` for `rN!` (ldm/stm base writeback)."""

    n: int
    wb: bool = False


@dataclass(frozen=True)
class SReg:
    n: int


@dataclass(frozen=True)
class DReg:
    """A double register d0-d15 (FPv4-SP: only as the pair s2n, s2n+1 of a 64-bit load or store)."""

    n: int


@dataclass(frozen=True)
class Imm:
    """`#value`: an integer, or a float (vmov/vcmp)."""

    value: int | float


@dataclass(frozen=True)
class Shift:
    """`lsl #n`, `lsr #n`, `asr #n`, `ror #n` or `rrx`."""

    kind: str
    amount: int


@dataclass(frozen=True)
class Mem:
    """`[rn]`, `[rn, #off]`, `[rn, #off]!`, `[rn], #off`, `[rn, rm{, lsl #k}]`."""

    base: int
    offset: int = 0
    index: int | None = None
    shift: int = 0
    pre: bool = True
    wb: bool = False
    neg_zero: bool = False  # `#-0`
    shifted: bool = False  # `, lsl #k` written (even #0: GNU as then uses the 32-bit form)


@dataclass(frozen=True)
class RegList:
    regs: tuple[int, ...]


@dataclass(frozen=True)
class SRegList:
    regs: tuple[int, ...]


@dataclass(frozen=True)
class Label:
    """A symbol plus a constant addend (`loop`, `table+8`)."""

    name: str
    addend: int = 0


@dataclass(frozen=True)
class Special:
    """A system register name: `apsr_nzcv` or `fpscr`."""

    name: str


Operand = Reg | SReg | DReg | Imm | Shift | Mem | RegList | SRegList | Label | Special

# Pattern letters: r core reg, s S reg, d D reg, i immediate, h shift, m memory, L core list, S S list,
# l label, x special register.
_KIND = {Reg: "r", SReg: "s", DReg: "d", Imm: "i", Shift: "h", Mem: "m", RegList: "L", SRegList: "S", Label: "l",
         Special: "x"}


def pattern_of(ops: list[Operand]) -> str:
    return "".join(_KIND[type(o)] for o in ops)


COND = {"eq": 0, "ne": 1, "cs": 2, "hs": 2, "cc": 3, "lo": 3, "mi": 4, "pl": 5, "vs": 6, "vc": 7,
        "hi": 8, "ls": 9, "ge": 10, "lt": 11, "gt": 12, "le": 13, "al": 14}
COND_NAMES = ("eq", "ne", "cs", "cc", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al")

# ----------------------------------------------------------------------------- forms


class Reject(Exception):
    """This form cannot encode these operands; the message says why (used in errors)."""


def need(ok: bool, why: str) -> None:
    if not ok:
        raise Reject(why)


@dataclass(frozen=True)
class Cost:
    """Cycles of one execution (DESIGN §6): `base`..`max`, +N registers, +P when a branch is taken."""

    base: int
    max: int | None = None
    per_reg: bool = False
    branch: bool = False

    def __str__(self) -> str:
        s = f"{self.base}-{self.max}" if self.max is not None else str(self.base)
        return s + ("+N" if self.per_reg else "") + ("+P" if self.branch else "")


@dataclass
class Env:
    """What an encoder may ask about the instruction being encoded."""

    s: bool = False
    cond: int | None = None
    in_it: bool = False
    # The last instruction of an IT block (the only place a write to pc may be conditional).
    it_last: bool = False
    # The width qualifier written (`.w`/`.n`), if any.
    q: str | None = None
    addr: int = 0
    # Label -> address, or None while still unknown (early layout passes).
    resolve: Callable[[Label], int | None] = lambda lab: None
    final: bool = False

    def target(self, lab: Label) -> int | None:
        a = self.resolve(lab)
        if a is None and self.final:
            raise Reject(f"undefined label '{lab.name}'")
        return a


@dataclass(frozen=True)
class Form:
    """One encoding of a mnemonic.

    `flags`: "n" never sets flags (no S suffix), "x" S bit encoded (S suffix optional), "t" a 16-bit
    form that sets flags exactly when outside an IT block, "c" compares (no suffix, flags always).
    """

    mnemonic: str
    syntax: str
    size: int
    pattern: str
    encode: Callable[[list, Env], int]
    cycles: Cost = Cost(1)
    flags: str = "n"
    # Depends on a label's address: the assembler re-checks it while laying out code.
    relax: bool = False
    # Accepted data-type suffixes, joined (`("f32",)`, `("s32.f32",)`); None: no suffix allowed.
    dts: tuple[str, ...] | None = None

    def emit(self, ops: list, env: Env) -> bytes:
        v = self.encode(ops, env)
        if self.size == 2:
            assert 0 <= v < 1 << 16, (self.syntax, hex(v))
            return struct.pack("<H", v)
        assert 0 <= v < 1 << 32, (self.syntax, hex(v))
        return struct.pack("<HH", v >> 16, v & 0xFFFF)


FORMS: dict[str, list[Form]] = {}
# Mnemonics that cannot be conditional (not even inside an IT block).
UNCONDITIONAL = {"bkpt", "cbz", "cbnz", "it"}
# Mnemonics whose 2-operand spelling means `op rd, rd, x` (`add r0, r1` is `add r0, r0, r1`).
TWO_OPERAND: set[str] = set()
# Base mnemonics that take an S suffix (`adds`).
S_SUFFIX: set[str] = set()


def F(mn: str, syntax: str, size: int, pattern: str, encode: Callable[[list, Env], int],
      cycles: Cost = Cost(1), flags: str = "n", relax: bool = False,
      dts: tuple[str, ...] | None = None) -> None:
    """Declare one form of `mn` (forms are tried in declaration order: narrowest first)."""
    FORMS.setdefault(mn, []).append(Form(mn, syntax, size, pattern, encode, cycles, flags, relax, dts))
    if flags in "xt":
        S_SUFFIX.add(mn)


C1, C2, C3 = Cost(1), Cost(2), Cost(3)
CN = Cost(1, per_reg=True)
CB = Cost(1, branch=True)
CDIV = Cost(2, 12)
CMAC = Cost(3)
C14 = Cost(14)

# ----------------------------------------------------------------------------- helpers


def lo(*regs: int) -> bool:
    return all(r < 8 for r in regs)


def t32(hw1: int, hw2: int) -> int:
    return (hw1 << 16) | hw2


def modimm(v: int) -> int | None:
    """ThumbExpandImm's inverse: the 12-bit i:imm3:a:bcdefgh for a 32-bit constant, or None."""
    v &= 0xFFFFFFFF
    if v < 256:
        return v
    b = v & 0xFF
    if v == (b << 16 | b):
        return 0x100 | b
    b1 = (v >> 8) & 0xFF
    if v == (b1 << 24 | b1 << 8):
        return 0x200 | b1
    if v == b * 0x01010101:
        return 0x300 | b
    for rot in range(8, 32):
        unrot = ((v << rot) | (v >> (32 - rot))) & 0xFFFFFFFF
        if unrot < 256 and unrot & 0x80:
            return (rot << 7) | (unrot & 0x7F)
    return None


def mi_fields(imm12: int) -> tuple[int, int]:
    """Split an imm12 into its hw1 bit (i << 10) and hw2 bits (imm3 << 12 | imm8)."""
    return (imm12 >> 11) << 10, ((imm12 >> 8) & 7) << 12 | (imm12 & 0xFF)


def imm_of(o: Imm) -> int:
    need(isinstance(o.value, int), "expected an integer immediate")
    return int(o.value)


def reg_ok(r: int, what: str = "register", sp: bool = False, pc: bool = False) -> None:
    if r == SP and not sp:
        raise Reject(f"sp is not allowed as {what} here")
    if r == PC and not pc:
        raise Reject(f"pc is not allowed as {what} here")


SHIFT_TYPE = {"lsl": 0, "lsr": 1, "asr": 2, "ror": 3, "rrx": 3}


def shift_bits(sh: Shift | None) -> int:
    """imm3:imm2:type bits of a 32-bit shifted-register form (hw2 bits 14:12, 7:6, 5:4)."""
    if sh is None:
        return 0
    kind, n = sh.kind, sh.amount
    if kind == "rrx":
        return 3 << 4
    if n == 0:
        return 0  # GNU as reads any shift by #0 as no shift
    lim = {"lsl": (0, 31), "lsr": (1, 32), "asr": (1, 32), "ror": (1, 31)}[kind]
    need(lim[0] <= n <= lim[1], f"shift amount {n} out of range {lim[0]}..{lim[1]} for {kind}")
    n &= 31
    return (n >> 2) << 12 | (n & 3) << 6 | SHIFT_TYPE[kind] << 4


def branch_offset(env: Env, lab: Label, bits: int, what: str) -> int:
    """Offset from this instruction's PC (address + 4) to the label, checked against `bits`."""
    t = env.target(lab)
    if t is None:
        return 0
    off = t - (env.addr + 4)
    lim = 1 << (bits - 1)
    need(off & 1 == 0, f"branch target '{lab.name}' is not halfword aligned")
    need(-lim <= off < lim, f"branch offset {off} to '{lab.name}' out of range for {what}")
    return off


def literal_offset(env: Env, lab: Label, limit: int, scale: int = 1, neg: bool = True) -> int:
    """Offset from Align(PC, 4) to a literal; checked against ±limit (or 0..limit) and scale."""
    t = env.target(lab)
    if t is None:
        return 0
    off = t - ((env.addr + 4) & ~3)
    need(off % scale == 0, f"literal '{lab.name}' is misaligned for this load (offset {off} "
                           f"is not a multiple of {scale})")
    need((-limit if neg else 0) <= off <= limit, f"literal '{lab.name}' is out of range (offset {off})")
    return off


# ----------------------------------------------------------------------------- data processing

# op field of the 32-bit modified-immediate and shifted-register forms (A6.3.1, A6.3.11).
DP_OP = {"and": 0, "bic": 1, "orr": 2, "orn": 3, "eor": 4, "add": 8, "adc": 10, "sbc": 11, "sub": 13,
         "rsb": 14}
# The complement trick GNU as applies when a constant does not fit: and #c == bic #~c, etc.
INVERSE = {"and": ("bic", "inv"), "bic": ("and", "inv"), "orr": ("orn", "inv"), "orn": ("orr", "inv"),
           "add": ("sub", "neg"), "sub": ("add", "neg"), "adc": ("sbc", "inv"), "sbc": ("adc", "inv"),
           "mov": ("mvn", "inv"), "mvn": ("mov", "inv"), "cmp": ("cmn", "neg"), "cmn": ("cmp", "neg")}


def _alt(v: int, how: str) -> int:
    return (~v if how == "inv" else -v) & 0xFFFFFFFF


def _modimm_or_alt(mn: str, v: int) -> tuple[str, int]:
    """(mnemonic, imm12) for `mn #v`, trying the complemented partner as GNU as does."""
    m = modimm(v)
    if m is not None:
        return mn, m
    if mn in INVERSE:
        other, how = INVERSE[mn]
        m = modimm(_alt(v, how))
        if m is not None:
            return other, m
    raise Reject(f"immediate {v:#x} cannot be encoded as a Thumb-2 modified immediate")


def _dp_imm(mn: str) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        d, n, v = o[0].n, o[1].n, imm_of(o[2])
        use, imm12 = _modimm_or_alt(mn, v)
        if mn in ("add", "sub"):
            reg_ok(d, "Rd", sp=n == SP)
            reg_ok(n, "Rn", sp=True)
        else:
            reg_ok(d, "Rd"), reg_ok(n, "Rn")
        hi, lo_ = mi_fields(imm12)
        return t32(0xF000 | hi | DP_OP[use] << 5 | e.s << 4 | n, lo_ | d << 8)
    return enc


def _dp_reg(mn: str) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        d, n, m = o[0].n, o[1].n, o[2].n
        sh = o[3] if len(o) > 3 else None
        if mn in ("add", "sub"):
            reg_ok(d, "Rd", sp=n == SP), reg_ok(n, "Rn", sp=True), reg_ok(m, "Rm")
            need(d != SP or sh is None or sh.amount == 0 or (sh.kind == "lsl" and sh.amount <= 3),
                 "with sp as destination, the register can only be shifted by lsl #0-3")
        else:
            reg_ok(d, "Rd"), reg_ok(n, "Rn"), reg_ok(m, "Rm")
        return t32(0xEA00 | DP_OP[mn] << 5 | e.s << 4 | n, d << 8 | m | shift_bits(sh))
    return enc


def _plain12(op: str, mn_written: str) -> Callable[[list, Env], int]:
    """addw/subw: a plain 12-bit immediate (A7.7.3 T4, A7.7.174 T4), with the negated partner."""
    def enc(o: list, e: Env) -> int:
        d, n, v = o[0].n, o[1].n, imm_of(o[2])
        # With a pc base GNU as drops the S suffix (there is no flag-setting addw).
        need(not e.s or n == PC, "no flag-setting form with a 12-bit immediate")
        v = v - (1 << 32) if v >= 1 << 31 else v  # as reads the constant as a signed 32-bit value
        use = op
        if not 0 <= v <= 4095 and -4095 <= v < 0:
            use, v = ("sub" if op == "add" else "add"), -v
        need(0 <= v <= 4095, f"immediate {v} out of range 0..4095")
        # GNU as relaxes a 16-bit-capable add/sub only to the modified-immediate form.
        need(not (mn_written in ("add", "sub") and e.q != "w" and lo(d, n) and e.in_it),
             f"immediate {v:#x} cannot be encoded as a Thumb-2 modified immediate")
        reg_ok(d, "Rd", sp=n == SP)
        hi, lo_ = mi_fields(v)
        return t32((0xF200 if use == "add" else 0xF2A0) | hi | n, lo_ | d << 8)
    return enc


def _uimm(o: Imm, lo_: int, hi: int, scale: int = 1) -> int:
    v = imm_of(o)
    need(lo_ <= v <= hi and v % scale == 0,
         f"immediate {v} out of range {lo_}..{hi}" + (f" (multiple of {scale})" if scale > 1 else ""))
    return v // scale


# add / sub ---------------------------------------------------------------------------------------
for _mn, _t1r, _t1i, _t2i, _spop in (("add", 0x1800, 0x1C00, 0x3000, 0xB000),
                                      ("sub", 0x1A00, 0x1E00, 0x3800, 0xB080)):
    TWO_OPERAND.add(_mn)

    def _t1_reg(o: list, e: Env, base: int = _t1r) -> int:
        need(lo(o[0].n, o[1].n, o[2].n), "needs r0-r7")
        return base | o[2].n << 6 | o[1].n << 3 | o[0].n

    def _narrow_imm(o: Imm, e: Env, base: int, flip: int, hi: int) -> tuple[int, int]:
        # With an explicit `.n`, GNU as turns `adds rd, rn, #-k` into `subs rd, rn, #k`.
        v = imm_of(o)
        if v < 0 and e.q == "n":
            return base ^ flip, _uimm(Imm(-v), 0, hi)
        return base, _uimm(o, 0, hi)

    def _t2_imm8(o: list, e: Env, base: int = _t2i) -> int:
        need(o[0].n == o[1].n and lo(o[0].n), "needs rd == rn in r0-r7")
        base, v = _narrow_imm(o[2], e, base, 0x0800, 255)
        return base | o[0].n << 8 | v

    def _t1_imm3(o: list, e: Env, base: int = _t1i) -> int:
        need(lo(o[0].n, o[1].n), "needs r0-r7")
        base, v = _narrow_imm(o[2], e, base, 0x0200, 7)
        return base | v << 6 | o[1].n << 3 | o[0].n

    def _sp_sp(o: list, e: Env, base: int = _spop) -> int:
        need(o[0].n == SP and o[1].n == SP, "needs sp, sp")
        return base | _uimm(o[2], 0, 508, 4)

    F(_mn, f"{_mn}s Rdn, #imm8", 2, "rri", _t2_imm8, flags="t")
    F(_mn, f"{_mn}s Rd, Rn, #imm3", 2, "rri", _t1_imm3, flags="t")
    F(_mn, f"{_mn}s Rd, Rn, Rm", 2, "rrr", _t1_reg, flags="t")
    F(_mn, f"{_mn} sp, sp, #imm7*4", 2, "rri", _sp_sp)
    if _mn == "add":
        def _add_high(o: list, e: Env) -> int:
            d, n, m = o[0].n, o[1].n, o[2].n
            if d != n and d == m:
                n, m = m, n
            need(d == n, "needs rd == rn")
            need(d != PC or not e.in_it or e.it_last, "pc may only be written by the last instruction "
                                                        "of an IT block")
            return 0x4400 | (d >> 3) << 7 | m << 3 | (d & 7)

        def _add_sp_imm(o: list, e: Env) -> int:
            need(o[1].n == SP and lo(o[0].n), "needs rd in r0-r7 and sp")
            return 0xA800 | o[0].n << 8 | _uimm(o[2], 0, 1020, 4)

        def _add_pc_imm(o: list, e: Env) -> int:
            need(o[1].n == PC and lo(o[0].n), "needs rd in r0-r7 and pc")
            return 0xA000 | o[0].n << 8 | _uimm(o[2], 0, 1020, 4)

        F("add", "add Rdn, Rm", 2, "rrr", _add_high)
        F("add", "add Rd, sp, #imm8*4", 2, "rri", _add_sp_imm)
        F("add", "add Rd, pc, #imm8*4", 2, "rri", _add_pc_imm)
    F(_mn, f"{_mn}{{s}}.w Rd, Rn, #const", 4, "rri", _dp_imm(_mn), flags="x")
    F(_mn, f"{_mn}w Rd, Rn, #imm12", 4, "rri", _plain12(_mn, _mn), flags="x")
    F(_mn, f"{_mn}{{s}}.w Rd, Rn, Rm{{, shift}}", 4, "rrr", _dp_reg(_mn), flags="x")
    F(_mn, f"{_mn}{{s}}.w Rd, Rn, Rm, shift", 4, "rrrh", _dp_reg(_mn), flags="x")
    F(_mn + "w", f"{_mn}w Rd, Rn, #imm12", 4, "rri", _plain12(_mn, _mn + "w"))



def _subs_pc_lr(o: list, e: Env) -> int:
    need(e.s and o[0].n == PC and o[1].n == LR, "needs subs pc, lr")
    return t32(0xF3DE, 0x8F00 | _uimm(o[2], 0, 255))


F("sub", "subs pc, lr, #imm8 (exception return)", 4, "rri", _subs_pc_lr, CB, flags="x")

# adr ---------------------------------------------------------------------------------------------


def _adr_n(o: list, e: Env) -> int:
    need(lo(o[0].n), "needs r0-r7")
    return 0xA000 | o[0].n << 8 | literal_offset(e, o[1], 1020, 4, neg=False) // 4


def _adr_w(o: list, e: Env) -> int:
    off = literal_offset(e, o[1], 4095)
    reg_ok(o[0].n, "Rd")
    hi, lo_ = mi_fields(abs(off))
    return t32((0xF20F if off >= 0 else 0xF2AF) | hi, lo_ | o[0].n << 8)


F("adr", "adr Rd, label", 2, "rl", _adr_n, relax=True)
F("adr", "adr.w Rd, label", 4, "rl", _adr_w, relax=True)

# rsb ---------------------------------------------------------------------------------------------


def _rsb_n(o: list, e: Env) -> int:
    need(lo(o[0].n, o[1].n) and imm_of(o[2]) == 0, "needs r0-r7 and #0")
    return 0x4240 | o[1].n << 3 | o[0].n


F("rsb", "rsbs Rd, Rn, #0", 2, "rri", _rsb_n, flags="t")
F("rsb", "rsb{s}.w Rd, Rn, #const", 4, "rri", _dp_imm("rsb"), flags="x")
F("rsb", "rsb{s} Rd, Rn, Rm{, shift}", 4, "rrr", _dp_reg("rsb"), flags="x")
F("rsb", "rsb{s} Rd, Rn, Rm, shift", 4, "rrrh", _dp_reg("rsb"), flags="x")
TWO_OPERAND.add("rsb")


def _neg_n(o: list, e: Env) -> int:
    return _rsb_n([o[0], o[1], Imm(0)], e)


F("neg", "negs Rd, Rm", 2, "rr", _neg_n, flags="t")
def _neg_w(o: list, e: Env) -> int:
    reg_ok(o[0].n, "Rd"), reg_ok(o[1].n, "Rm")
    return t32(0xF000 | DP_OP["rsb"] << 5 | e.s << 4 | o[1].n, o[0].n << 8)


F("neg", "neg{s}.w Rd, Rm", 4, "rr", _neg_w, flags="x")

# and orr eor bic adc sbc orn ---------------------------------------------------------------------
_NARROW_LOGIC = {"and": 0, "eor": 1, "adc": 5, "sbc": 6, "orr": 12, "bic": 14}
_COMMUTATIVE = {"and", "eor", "adc", "orr", "mul"}

for _mn in ("and", "orr", "eor", "bic", "adc", "sbc", "orn"):
    TWO_OPERAND.add(_mn)
    if _mn in _NARROW_LOGIC:
        def _logic_n(o: list, e: Env, op: int = _NARROW_LOGIC[_mn], comm: bool = _mn in _COMMUTATIVE) -> int:
            d, n, m = o[0].n, o[1].n, o[2].n
            if d != n and comm and d == m:
                n, m = m, n
            need(d == n and lo(d, m), "needs rd == rn in r0-r7")
            return 0x4000 | op << 6 | m << 3 | d

        F(_mn, f"{_mn}s Rdn, Rm", 2, "rrr", _logic_n, flags="t")
    F(_mn, f"{_mn}{{s}} Rd, Rn, #const", 4, "rri", _dp_imm(_mn), flags="x")
    F(_mn, f"{_mn}{{s}}.w Rd, Rn, Rm{{, shift}}", 4, "rrr", _dp_reg(_mn), flags="x")
    F(_mn, f"{_mn}{{s}}.w Rd, Rn, Rm, shift", 4, "rrrh", _dp_reg(_mn), flags="x")

# mov / mvn / movw / movt -------------------------------------------------------------------------


def _movs_imm8(o: list, e: Env) -> int:
    need(lo(o[0].n), "needs r0-r7")
    return 0x2000 | o[0].n << 8 | _uimm(o[1], 0, 255)


def _mov_high(o: list, e: Env) -> int:
    d, m = o[0].n, o[1].n
    need(d != PC or not e.in_it or e.it_last, "pc may only be written by the last instruction of an IT block")
    return 0x4600 | (d >> 3) << 7 | m << 3 | (d & 7)


def _movs_lo(o: list, e: Env) -> int:
    need(lo(o[0].n, o[1].n), "needs r0-r7")
    return o[1].n << 3 | o[0].n


def _mov_imm_w(mn: str) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        reg_ok(o[0].n, "Rd")
        use, imm12 = _modimm_or_alt(mn, imm_of(o[1]))
        hi, lo_ = mi_fields(imm12)
        return t32(0xF000 | hi | DP_OP["orr" if use == "mov" else "orn"] << 5 | e.s << 4 | 0xF,
                   lo_ | o[0].n << 8)
    return enc


def _movw(base: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        reg_ok(o[0].n, "Rd")
        v = _uimm(o[1], 0, 0xFFFF)
        return t32(base | (v >> 12) | ((v >> 11) & 1) << 10, ((v >> 8) & 7) << 12 | o[0].n << 8 | (v & 0xFF))
    return enc


def _mov_reg_w(o: list, e: Env) -> int:
    d, m = o[0].n, o[1].n
    sh = o[2] if len(o) > 2 else None
    need(not e.s or SP not in (d, m), "sp is not allowed with movs")
    need(not (d == SP and m == SP), "mov.w sp, sp is not allowed")
    reg_ok(d, "Rd", sp=True), reg_ok(m, "Rm", sp=True)  # as GNU as
    return t32(0xEA4F | e.s << 4, d << 8 | m | shift_bits(sh))


def _mvn_n(o: list, e: Env) -> int:
    need(lo(o[0].n, o[1].n), "needs r0-r7")
    return 0x43C0 | o[1].n << 3 | o[0].n


def _mvn_reg_w(o: list, e: Env) -> int:
    reg_ok(o[0].n, "Rd"), reg_ok(o[1].n, "Rm")
    return t32(0xEA6F | e.s << 4, o[0].n << 8 | o[1].n | shift_bits(o[2] if len(o) > 2 else None))


F("mov", "movs Rd, #imm8", 2, "ri", _movs_imm8, flags="t")
F("mov", "mov Rd, Rm", 2, "rr", _mov_high)
F("mov", "movs Rd, Rm", 2, "rr", _movs_lo, flags="t")


def _mov_shift_n(o: list, e: Env) -> int:
    sh = o[2]
    need(sh.kind in ("lsl", "lsr", "asr"), "needs lsl, lsr or asr")
    return FORMS[sh.kind][0].encode([o[0], o[1], Imm(sh.amount)], e)


F("mov", "movs Rd, Rm, shift #n", 2, "rrh", _mov_shift_n, flags="t")
F("mov", "mov{s}.w Rd, #const", 4, "ri", _mov_imm_w("mov"), flags="x")
F("mov", "movw Rd, #imm16", 4, "ri", _movw(0xF240))
F("mov", "mov{s}.w Rd, Rm", 4, "rr", _mov_reg_w, flags="x")
F("mov", "mov{s}.w Rd, Rm, shift", 4, "rrh", _mov_reg_w, flags="x")
F("movw", "movw Rd, #imm16", 4, "ri", _movw(0xF240))
F("movt", "movt Rd, #imm16", 4, "ri", _movw(0xF2C0))
F("mvn", "mvns Rd, Rm", 2, "rr", _mvn_n, flags="t")
F("mvn", "mvn{s} Rd, #const", 4, "ri", _mov_imm_w("mvn"), flags="x")
F("mvn", "mvn{s}.w Rd, Rm{, shift}", 4, "rr", _mvn_reg_w, flags="x")
F("mvn", "mvn{s}.w Rd, Rm, shift", 4, "rrh", _mvn_reg_w, flags="x")

# shifts ------------------------------------------------------------------------------------------
for _mn, _nimm, _nreg in (("lsl", 0x0000, 2), ("lsr", 0x0800, 3), ("asr", 0x1000, 4), ("ror", None, 7)):
    TWO_OPERAND.add(_mn)

    def _sh_imm_n(o: list, e: Env, base: int | None = _nimm, mn: str = _mn) -> int:
        need(lo(o[0].n, o[1].n), "needs r0-r7")
        if imm_of(o[2]) == 0:
            return o[1].n << 3 | o[0].n  # a shift by #0 is `movs rd, rm` (lsls #0)
        n = _uimm(o[2], 0, 31) if mn == "lsl" else _uimm(o[2], 1, 32) & 31
        return base | n << 6 | o[1].n << 3 | o[0].n

    if _nimm is not None:
        F(_mn, f"{_mn}s Rd, Rm, #imm5", 2, "rri", _sh_imm_n, flags="t")

    def _sh_reg_n(o: list, e: Env, op: int = _nreg) -> int:
        need(o[0].n == o[1].n and lo(o[0].n, o[2].n), "needs rd == rn in r0-r7")
        return 0x4000 | op << 6 | o[2].n << 3 | o[0].n

    def _sh_imm_w(o: list, e: Env, mn: str = _mn) -> int:
        reg_ok(o[0].n, "Rd"), reg_ok(o[1].n, "Rm")
        if imm_of(o[2]) == 0:
            return _mov_reg_w([o[0], o[1]], e)
        return _mov_reg_w([o[0], o[1], Shift(mn, imm_of(o[2]))], e)

    def _sh_reg_w(o: list, e: Env, t: int = SHIFT_TYPE[_mn]) -> int:
        for r in o:
            reg_ok(r.n)
        return t32(0xFA00 | t << 5 | e.s << 4 | o[1].n, 0xF000 | o[0].n << 8 | o[2].n)

    F(_mn, f"{_mn}s Rdn, Rm", 2, "rrr", _sh_reg_n, flags="t")
    F(_mn, f"{_mn}{{s}}.w Rd, Rm, #imm5", 4, "rri", _sh_imm_w, flags="x")
    F(_mn, f"{_mn}{{s}}.w Rd, Rn, Rm", 4, "rrr", _sh_reg_w, flags="x")

# compare and test --------------------------------------------------------------------------------


def _cmp_imm_n(o: list, e: Env) -> int:
    need(lo(o[0].n), "needs r0-r7")
    return 0x2800 | o[0].n << 8 | _uimm(o[1], 0, 255)


def _cmp_lo(base: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        need(lo(o[0].n, o[1].n), "needs r0-r7")
        return base | o[1].n << 3 | o[0].n
    return enc


def _cmp_high(o: list, e: Env) -> int:
    n, m = o[0].n, o[1].n
    need(not lo(n, m), "both low")
    reg_ok(m, "Rm", sp=True), reg_ok(n, "Rn", sp=True)
    return 0x4500 | (n >> 3) << 7 | m << 3 | (n & 7)


def _cmp_imm_w(mn: str) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        reg_ok(o[0].n, "Rn", sp=mn in ("cmp", "cmn"))
        use, imm12 = _modimm_or_alt(mn, imm_of(o[1]))
        hi, lo_ = mi_fields(imm12)
        op = {"cmp": "sub", "cmn": "add", "tst": "and", "teq": "eor"}[use]
        return t32(0xF010 | hi | DP_OP[op] << 5 | o[0].n, lo_ | 0xF00)
    return enc


def _cmp_reg_w(mn: str) -> Callable[[list, Env], int]:
    op = {"cmp": "sub", "cmn": "add", "tst": "and", "teq": "eor"}[mn]

    def enc(o: list, e: Env) -> int:
        reg_ok(o[0].n, "Rn", sp=mn in ("cmp", "cmn")), reg_ok(o[1].n, "Rm")
        return t32(0xEA10 | DP_OP[op] << 5 | o[0].n, 0xF00 | o[1].n | shift_bits(o[2] if len(o) > 2 else None))
    return enc


F("cmp", "cmp Rn, #imm8", 2, "ri", _cmp_imm_n, flags="c")
F("cmp", "cmp Rn, Rm", 2, "rr", _cmp_lo(0x4280), flags="c")
F("cmp", "cmp Rn, Rm (high)", 2, "rr", _cmp_high, flags="c")
F("cmn", "cmn Rn, Rm", 2, "rr", _cmp_lo(0x42C0), flags="c")
F("tst", "tst Rn, Rm", 2, "rr", _cmp_lo(0x4200), flags="c")
for _mn in ("cmp", "cmn", "tst", "teq"):
    F(_mn, f"{_mn}.w Rn, #const", 4, "ri", _cmp_imm_w(_mn), flags="c")
    F(_mn, f"{_mn}.w Rn, Rm{{, shift}}", 4, "rr", _cmp_reg_w(_mn), flags="c")
    F(_mn, f"{_mn}.w Rn, Rm, shift", 4, "rrh", _cmp_reg_w(_mn), flags="c")

# multiply and divide -----------------------------------------------------------------------------


def _muls_n(o: list, e: Env) -> int:
    d, n, m = o[0].n, o[1].n, o[2].n
    if d == n and d != m:
        n, m = m, n
    need(d == m and lo(d, n), "needs rd == rm in r0-r7")
    return 0x4340 | n << 3 | d


def _regs_ok(o: list) -> None:
    for r in o:
        if isinstance(r, Reg):
            reg_ok(r.n)


def _long(hw1: int, hw2: int, order: str) -> Callable[[list, Env], int]:
    """Generic 32-bit register form; `order` names where operands go: d=Rd (hw2 11:8), n=Rn (hw1 3:0),
    m=Rm (hw2 3:0), a=Ra (hw2 15:12), l=RdLo (hw2 15:12), h=RdHi (hw2 11:8)."""
    where = {"d": (1, 8), "h": (1, 8), "n": (0, 0), "m": (1, 0), "a": (1, 12), "l": (1, 12)}

    def enc(o: list, e: Env) -> int:
        _regs_ok(o)
        w = [hw1, hw2]
        for ch, r in zip(order, o):
            half, bit = where[ch]
            w[half] |= r.n << bit
        return t32(w[0], w[1])
    return enc


F("rev", "rev Rd, Rm", 2, "rr", lambda o, e: (need(lo(o[0].n, o[1].n), "needs r0-r7"),
                                            0xBA00 | o[1].n << 3 | o[0].n)[1])
F("mul", "muls Rdm, Rn, Rdm", 2, "rrr", _muls_n, flags="t")
F("mul", "mul Rd, Rn, Rm", 4, "rrr", _long(0xFB00, 0xF000, "dnm"))
TWO_OPERAND.add("mul")
for _mn, _h1, _h2, _ord, _cost in (
        ("mla", 0xFB00, 0x0000, "dnma", C1), ("mls", 0xFB00, 0x0010, "dnma", C1),
        ("smull", 0xFB80, 0x0000, "lhnm", C1), ("umull", 0xFBA0, 0x0000, "lhnm", C1),
        ("smlal", 0xFBC0, 0x0000, "lhnm", C1), ("umlal", 0xFBE0, 0x0000, "lhnm", C1),
        ("sdiv", 0xFB90, 0xF0F0, "dnm", CDIV), ("udiv", 0xFBB0, 0xF0F0, "dnm", CDIV),
        # DSP (A7.7.*): dual 16-bit multiply-accumulate, halfword multiplies, saturation, SIMD.
        ("smlad", 0xFB20, 0x0000, "dnma", C1), ("smladx", 0xFB20, 0x0010, "dnma", C1),
        ("smlsd", 0xFB40, 0x0000, "dnma", C1), ("smlsdx", 0xFB40, 0x0010, "dnma", C1),
        ("smuad", 0xFB20, 0xF000, "dnm", C1), ("smuadx", 0xFB20, 0xF010, "dnm", C1),
        ("smusd", 0xFB40, 0xF000, "dnm", C1), ("smusdx", 0xFB40, 0xF010, "dnm", C1),
        ("smlabb", 0xFB10, 0x0000, "dnma", C1), ("smlabt", 0xFB10, 0x0010, "dnma", C1),
        ("smlatb", 0xFB10, 0x0020, "dnma", C1), ("smlatt", 0xFB10, 0x0030, "dnma", C1),
        ("smulbb", 0xFB10, 0xF000, "dnm", C1), ("smulbt", 0xFB10, 0xF010, "dnm", C1),
        ("smultb", 0xFB10, 0xF020, "dnm", C1), ("smultt", 0xFB10, 0xF030, "dnm", C1),
        ("smlawb", 0xFB30, 0x0000, "dnma", C1), ("smlawt", 0xFB30, 0x0010, "dnma", C1),
        ("smulwb", 0xFB30, 0xF000, "dnm", C1), ("smulwt", 0xFB30, 0xF010, "dnm", C1),
        ("smmul", 0xFB50, 0xF000, "dnm", C1), ("smmla", 0xFB50, 0x0000, "dnma", C1),
        ("smlald", 0xFBC0, 0x00C0, "lhnm", C1), ("smlaldx", 0xFBC0, 0x00D0, "lhnm", C1),
        ("qadd", 0xFA80, 0xF080, "dmn", C1), ("qsub", 0xFA80, 0xF0A0, "dmn", C1),
        ("qdadd", 0xFA80, 0xF090, "dmn", C1), ("qdsub", 0xFA80, 0xF0B0, "dmn", C1),
        ("sadd16", 0xFA90, 0xF000, "dnm", C1), ("ssub16", 0xFAD0, 0xF000, "dnm", C1),
        ("sadd8", 0xFA80, 0xF000, "dnm", C1), ("ssub8", 0xFAC0, 0xF000, "dnm", C1),
        ("uadd16", 0xFA90, 0xF040, "dnm", C1), ("usub16", 0xFAD0, 0xF040, "dnm", C1),
        ("uadd8", 0xFA80, 0xF040, "dnm", C1), ("usub8", 0xFAC0, 0xF040, "dnm", C1),
        ("qadd16", 0xFA90, 0xF010, "dnm", C1), ("qsub16", 0xFAD0, 0xF010, "dnm", C1),
        ("qadd8", 0xFA80, 0xF010, "dnm", C1), ("qsub8", 0xFAC0, 0xF010, "dnm", C1),
        ("shadd16", 0xFA90, 0xF020, "dnm", C1), ("sel", 0xFAA0, 0xF080, "dnm", C1),
        ("clz", 0xFAB0, 0xF080, "dm", C1), ("rbit", 0xFA90, 0xF0A0, "dm", C1),
        ("rev", 0xFA90, 0xF080, "dm", C1), ("usad8", 0xFB70, 0xF000, "dnm", C1),
        ("usada8", 0xFB70, 0x0000, "dnma", C1)):
    _ops = "".join("r" for _ in _ord)
    _syn = f"{_mn} " + ", ".join({"d": "Rd", "n": "Rn", "m": "Rm", "a": "Ra", "l": "RdLo", "h": "RdHi"}[c]
                                 for c in _ord)
    if _mn in ("clz", "rbit", "rev"):
        # The manual encodes Rm twice (hw1 3:0 and hw2 3:0).
        _fn = _long(_h1, _h2, "dm")
        F(_mn, _syn, 4, "rr",
          lambda o, e, f=_fn: f([o[0], o[1]], e) | o[1].n << 16, _cost)
        continue
    if _mn in ("sdiv", "udiv"):
        TWO_OPERAND.add(_mn)
    F(_mn, _syn, 4, _ops, _long(_h1, _h2, _ord), _cost)

# extend / pack / saturate ------------------------------------------------------------------------


def _rot(o: list, idx: int) -> int:
    if len(o) <= idx:
        return 0
    sh = o[idx]
    need(sh.kind == "ror" and sh.amount in (0, 8, 16, 24), "rotation must be ror #8, #16 or #24")
    return sh.amount // 8


for _mn, _h1, _narrow in (("sxtb16", 0xFA2F, None), ("uxtb16", 0xFA3F, None), ("sxtb", 0xFA4F, 0xB240),
                          ("uxtb", 0xFA5F, 0xB2C0), ("sxth", 0xFA0F, 0xB200), ("uxth", 0xFA1F, 0xB280)):
    if _narrow is not None:
        def _ext_n(o: list, e: Env, base: int = _narrow) -> int:
            need(lo(o[0].n, o[1].n) and _rot(o, 2) == 0, "needs r0-r7 without rotation")
            return base | o[1].n << 3 | o[0].n

        F(_mn, f"{_mn} Rd, Rm", 2, "rr", _ext_n)
        F(_mn, f"{_mn} Rd, Rm, ror #0", 2, "rrh", _ext_n)

    def _ext_w(o: list, e: Env, h1: int = _h1) -> int:
        _regs_ok(o[:2])
        return t32(h1, 0xF080 | o[0].n << 8 | _rot(o, 2) << 4 | o[1].n)

    def _exta_w(o: list, e: Env, h1: int = _h1 & ~0xF) -> int:
        _regs_ok(o[:3])
        return t32(h1 | o[1].n, 0xF080 | o[0].n << 8 | _rot(o, 3) << 4 | o[2].n)

    F(_mn, f"{_mn}.w Rd, Rm{{, ror #r}}", 4, "rr", _ext_w)
    F(_mn, f"{_mn}.w Rd, Rm, ror #r", 4, "rrh", _ext_w)
    _amn = _mn[:3] + "a" + _mn[3:]
    F(_amn, f"{_amn} Rd, Rn, Rm{{, ror #r}}", 4, "rrr", _exta_w)
    F(_amn, f"{_amn} Rd, Rn, Rm, ror #r", 4, "rrrh", _exta_w)


def _pkh(tb: bool) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        d, n, m = o[0].n, o[1].n, o[2].n
        _regs_ok(o[:3])
        sh = o[3] if len(o) > 3 else None
        if tb and sh is None:
            # pkhtb Rd, Rn, Rm with no shift is pkhbt Rd, Rm, Rn (A7.7.85).
            return t32(0xEAC0 | m, d << 8 | n)
        if sh is not None:
            need(sh.kind == ("asr" if tb else "lsl"), f"pkh{'tb' if tb else 'bt'} takes "
                                                      f"{'asr' if tb else 'lsl'} #n")
            need(1 <= sh.amount <= 32 if tb else 0 <= sh.amount <= 31, "shift amount out of range")
        amt = (sh.amount & 31) if sh else 0
        return t32(0xEAC0 | n, d << 8 | m | (amt >> 2) << 12 | (amt & 3) << 6 | tb << 5)
    return enc


for _tb, _mn in ((False, "pkhbt"), (True, "pkhtb")):
    F(_mn, f"{_mn} Rd, Rn, Rm", 4, "rrr", _pkh(_tb))
    F(_mn, f"{_mn} Rd, Rn, Rm, shift", 4, "rrrh", _pkh(_tb))


def _sat(base: int, signed: bool) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        _regs_ok([o[0], o[2]])
        sat = _uimm(o[1], 1, 32) - 1 if signed else _uimm(o[1], 0, 31)
        sh = o[3] if len(o) > 3 else None
        amt, sh_bit = 0, 0
        if sh is not None and sh.amount == 0:
            sh = None  # GNU as reads `asr #0` as no shift
        if sh is not None:
            need(sh.kind in ("lsl", "asr"), "shift must be lsl or asr")
            need(0 <= sh.amount <= 31 if sh.kind == "lsl" else 1 <= sh.amount <= 31, "shift out of range")
            amt, sh_bit = sh.amount, sh.kind == "asr"
        return t32(base | sh_bit << 5 | o[2].n, (amt >> 2) << 12 | o[0].n << 8 | (amt & 3) << 6 | sat)
    return enc


for _mn, _b, _sg in (("ssat", 0xF300, True), ("usat", 0xF380, False)):
    F(_mn, f"{_mn} Rd, #sat, Rn", 4, "rir", _sat(_b, _sg))
    F(_mn, f"{_mn} Rd, #sat, Rn, shift", 4, "rirh", _sat(_b, _sg))

# ----------------------------------------------------------------------------- loads and stores

# (narrow imm opcode, imm scale, max narrow imm, narrow reg opcode, wide hw1 base) per width (A6.3.7).
_LS = {
    "ldr": (0x6800, 4, 124, 0x5800, 0xF850), "str": (0x6000, 4, 124, 0x5000, 0xF840),
    "ldrb": (0x7800, 1, 31, 0x5C00, 0xF810), "strb": (0x7000, 1, 31, 0x5400, 0xF800),
    "ldrh": (0x8800, 2, 62, 0x5A00, 0xF830), "strh": (0x8000, 2, 62, 0x5200, 0xF820),
    "ldrsb": (None, 1, 0, 0x5600, 0xF910), "ldrsh": (None, 2, 0, 0x5E00, 0xF930),
}
CLOAD = Cost(2)
CSTORE = Cost(1, 2)

for _mn, (_nimm, _sc, _nmax, _nreg, _wide) in _LS.items():
    _cost = CLOAD if _mn.startswith("ldr") else CSTORE
    _is_load = _mn.startswith("ldr")

    def _mem_basic(m: Mem, narrow: bool = False) -> None:
        # `#-0` only has a 32-bit encoding, where GNU as writes it as #0.
        need(m.pre and not m.wb and m.index is None and not (narrow and m.neg_zero), "needs [Rn, #imm]")

    if _nimm is not None:
        def _ls_imm_n(o: list, e: Env, base: int = _nimm, sc: int = _sc, mx: int = _nmax) -> int:
            m = o[1]
            _mem_basic(m, narrow=True)
            need(lo(o[0].n, m.base), "needs r0-r7")
            need(0 <= m.offset <= mx and m.offset % sc == 0, "offset out of narrow range")
            return base | (m.offset // sc) << 6 | m.base << 3 | o[0].n

        F(_mn, f"{_mn} Rt, [Rn, #imm5*{_sc}]", 2, "rm", _ls_imm_n, _cost)
    if _mn in ("ldr", "str"):
        def _ls_sp_n(o: list, e: Env, base: int = 0x9800 if _is_load else 0x9000) -> int:
            m = o[1]
            _mem_basic(m, narrow=True)
            need(m.base == SP and lo(o[0].n), "needs sp base and r0-r7")
            need(0 <= m.offset <= 1020 and m.offset % 4 == 0, "offset out of narrow range")
            return base | o[0].n << 8 | m.offset // 4

        F(_mn, f"{_mn} Rt, [sp, #imm8*4]", 2, "rm", _ls_sp_n, _cost)

    def _ls_reg_n(o: list, e: Env, base: int = _nreg) -> int:
        m = o[1]
        need(m.index is not None and not m.shifted and lo(o[0].n, m.base, m.index), "needs r0-r7")
        return base | m.index << 6 | m.base << 3 | o[0].n

    F(_mn, f"{_mn} Rt, [Rn, Rm]", 2, "rm", _ls_reg_n, _cost)
    if _mn == "ldr":
        def _ldr_pc_n(o: list, e: Env) -> int:
            m = o[1]
            need(m.base == PC and m.index is None and m.pre and not m.wb and not m.neg_zero and lo(o[0].n),
                 "needs [pc, #imm]")
            return 0x4800 | o[0].n << 8 | _uimm(Imm(m.offset), 0, 1020, 4)

        F("ldr", "ldr Rt, [pc, #imm8*4]", 2, "rm", _ldr_pc_n, _cost)

        def _ldr_lit_n(o: list, e: Env) -> int:
            need(lo(o[0].n), "needs r0-r7")
            return 0x4800 | o[0].n << 8 | literal_offset(e, o[1], 1020, 4, neg=False) // 4

        F("ldr", "ldr Rt, label", 2, "rl", _ldr_lit_n, _cost, relax=True)

    _word = _mn in ("ldr", "str")

    def _ls_imm12(o: list, e: Env, base: int = _wide, load: bool = _is_load, word: bool = _word) -> int:
        m = o[1]
        _mem_basic(m)
        need(0 <= m.offset <= 4095, f"offset {m.offset} out of range -255..4095")
        need(m.base != PC, "pc base")
        reg_ok(o[0].n, "Rt", sp=word, pc=load and word)
        return t32(base | 0x80 | m.base, o[0].n << 12 | m.offset)

    def _ls_imm8(o: list, e: Env, base: int = _wide, load: bool = _is_load, word: bool = _word) -> int:
        m = o[1]
        need(m.index is None, "needs an immediate offset")
        need(m.offset < 0 or m.neg_zero or m.wb or not m.pre, "needs a negative offset or writeback")
        need(-255 <= m.offset <= 255, f"offset {m.offset} out of range -255..255 with writeback")
        need(m.base != PC, "pc base")
        need(not (m.wb or not m.pre) or m.base != o[0].n,
             "the base register cannot also be the transferred register with writeback")
        reg_ok(o[0].n, "Rt", sp=word, pc=load and word)
        u = m.offset >= 0 and not m.neg_zero
        return t32(base | m.base, o[0].n << 12 | 0x800 | m.pre << 10 | u << 9 | (m.wb or not m.pre) << 8
                   | abs(m.offset))

    def _ls_reg_w(o: list, e: Env, base: int = _wide, load: bool = _is_load, word: bool = _word) -> int:
        m = o[1]
        need(m.index is not None, "needs a register offset")
        need(m.base != PC, "a register index cannot be used with a pc base")
        need(0 <= m.shift <= 3, f"index shift lsl #{m.shift} out of range 0..3")
        reg_ok(m.index, "Rm")
        reg_ok(o[0].n, "Rt", sp=word, pc=load and word)
        return t32(base | m.base, o[0].n << 12 | m.shift << 4 | m.index)

    def _ls_lit_w(o: list, e: Env, base: int = _wide) -> int:
        off = literal_offset(e, o[1], 4095)
        return t32(base | 0x0F | (off >= 0) << 7, o[0].n << 12 | abs(off))

    if _is_load:
        def _ls_pc_w(o: list, e: Env, base: int = _wide, word: bool = _word) -> int:
            m = o[1]
            need(m.base == PC and m.index is None and m.pre and not m.wb, "needs [pc, #imm]")
            need(-4095 <= m.offset <= 4095, f"offset {m.offset} out of range -4095..4095")
            reg_ok(o[0].n, "Rt", sp=word, pc=word)
            u = m.offset >= 0
            return t32(base | 0x0F | u << 7, o[0].n << 12 | abs(m.offset))

        F(_mn, f"{_mn}.w Rt, [pc, #±imm12]", 4, "rm", _ls_pc_w, _cost)
    F(_mn, f"{_mn}.w Rt, [Rn, #imm12]", 4, "rm", _ls_imm12, _cost)
    F(_mn, f"{_mn} Rt, [Rn, #-imm8] / [Rn, #imm8]! / [Rn], #imm8", 4, "rm", _ls_imm8, _cost)
    F(_mn, f"{_mn}.w Rt, [Rn, Rm{{, lsl #k}}]", 4, "rm", _ls_reg_w, _cost)
    if _is_load:
        F(_mn, f"{_mn}.w Rt, label", 4, "rl", _ls_lit_w, _cost, relax=True)


def _ldrd(load: bool) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        t, t2, m = o[0].n, o[1].n, o[2]
        need(m.index is None, "ldrd/strd take no register offset")
        need(load or m.base != PC, "strd cannot use a pc base")
        need(m.base != PC or (m.pre and not m.wb), "no writeback or post-indexing with a pc base")
        need(m.offset % 4 == 0 and -1020 <= m.offset <= 1020, f"offset {m.offset} must be a multiple "
                                                               "of 4 in -1020..1020")
        reg_ok(t, "Rt"), reg_ok(t2, "Rt2")
        u = m.offset >= 0
        w = m.wb or not m.pre
        return t32(0xE840 | m.pre << 8 | u << 7 | w << 5 | load << 4 | m.base,
                   t << 12 | t2 << 8 | abs(m.offset) // 4)
    return enc


F("ldrd", "ldrd Rt, Rt2, [Rn, #±imm8*4]{!}", 4, "rrm", _ldrd(True), C3)
F("strd", "strd Rt, Rt2, [Rn, #±imm8*4]{!}", 4, "rrm", _ldrd(False), C3)

# ldm / stm / push / pop --------------------------------------------------------------------------


def _mask(regs: tuple[int, ...]) -> int:
    return sum(1 << r for r in set(regs))


def _ldm_n(o: list, e: Env) -> int:
    n, regs = o[0], o[1].regs
    need(lo(n.n, *regs), "needs r0-r7")
    need(n.wb != (n.n in regs), "narrow ldm writes back exactly when the base is not loaded")
    return 0xC800 | n.n << 8 | _mask(regs)


def _stm_n(o: list, e: Env) -> int:
    n, regs = o[0], o[1].regs
    need(lo(n.n, *regs) and n.wb, "needs r0-r7 and writeback")
    return 0xC000 | n.n << 8 | _mask(regs)


def _ldm_w(base: int, load: bool) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        n, regs = o[0], o[1].regs
        need(n.n != PC, "pc base")
        need(SP not in regs, "sp in the register list")
        need(load or PC not in regs, "pc in a store list")
        need(not (PC in regs and LR in regs), "both pc and lr in the list")
        need(len(set(regs)) >= 2, "single-register list")
        need(not (n.wb and n.n in regs), "base register in the list with writeback")
        return t32(base | n.wb << 5 | n.n, _mask(regs))
    return enc


def _ldm_one(load: bool, db: bool, size: int = 4) -> Callable[[list, Env], int]:
    """A one-register ldm/stm, which GNU as writes as the equivalent ldr/str."""
    def enc(o: list, e: Env) -> int:
        n, regs = o[0], o[1].regs
        need(len(set(regs)) == 1, "more than one register")
        need(n.n != PC, "pc base")
        need(size == 4 or not n.wb, "narrow ldm/stm with writeback")
        m = Mem(n.n, (-4 if db else 4) if n.wb else (-4 if db else 0), pre=db or not n.wb, wb=db and n.wb)
        return _ls_pick("ldr" if load else "str", [Reg(regs[0]), m], e, size)
    return enc


def _ls_pick(mn: str, o: list, e: Env, size: int = 4) -> int:
    for f in FORMS[mn]:
        if f.size == size and f.pattern == "rm":
            try:
                return f.encode(o, e)
            except Reject:
                continue
    raise Reject("no encoding")


F("ldm", "ldm Rn!, {lowregs}", 2, "rL", _ldm_n, CN)
F("ldm", "ldm Rn, {reg} (as ldr)", 2, "rL", _ldm_one(True, False, 2), CN)


def _ldm_sp_n(o: list, e: Env) -> int:
    # GNU as writes `ldm sp!, {low registers}` (and `ldm.n sp!, {...}`) as the 16-bit pop.
    need(o[0].n == SP and o[0].wb and (PC not in o[1].regs or len(o[1].regs) == 1 or e.q == "n"),
         "needs sp!")
    return _pop_n([o[1]], e)


F("ldm", "ldm sp!, {reg} (as pop)", 2, "rL", _ldm_sp_n, CN)
F("ldm", "ldm.w Rn{!}, {regs}", 4, "rL", _ldm_w(0xE890, True), CN)
F("ldm", "ldm.w Rn{!}, {reg}", 4, "rL", _ldm_one(True, False), CN)
F("stm", "stm Rn!, {lowregs}", 2, "rL", _stm_n, CN)
F("stm", "stm Rn, {reg} (as str)", 2, "rL", _ldm_one(False, False, 2), CN)
F("stm", "stm.w Rn{!}, {regs}", 4, "rL", _ldm_w(0xE880, False), CN)
F("stm", "stm.w Rn{!}, {reg}", 4, "rL", _ldm_one(False, False), CN)
F("ldmdb", "ldmdb Rn{!}, {regs}", 4, "rL", _ldm_w(0xE910, True), CN)
F("ldmdb", "ldmdb Rn{!}, {reg}", 4, "rL", _ldm_one(True, True), CN)
F("stmdb", "stmdb Rn{!}, {regs}", 4, "rL", _ldm_w(0xE900, False), CN)
F("stmdb", "stmdb Rn{!}, {reg}", 4, "rL", _ldm_one(False, True), CN)


def _push_n(o: list, e: Env) -> int:
    regs = [r for r in o[0].regs if r != LR]
    need(lo(*regs), "needs r0-r7 and lr")
    return 0xB400 | (LR in o[0].regs) << 8 | _mask(tuple(regs))


def _pop_n(o: list, e: Env) -> int:
    regs = [r for r in o[0].regs if r != PC]
    need(lo(*regs), "needs r0-r7 and pc")
    return 0xBC00 | (PC in o[0].regs) << 8 | _mask(tuple(regs))


F("push", "push {r0-r7, lr}", 2, "L", _push_n, CN)
F("push", "push.w {regs}", 4, "L", lambda o, e: _ldm_w(0xE900, False)([Reg(SP, True), o[0]], e), CN)
F("push", "push.w {reg}", 4, "L", lambda o, e: _ldm_one(False, True)([Reg(SP, True), o[0]], e), CN)
F("pop", "pop {r0-r7, pc}", 2, "L", _pop_n, CN)
F("pop", "pop.w {regs}", 4, "L", lambda o, e: _ldm_w(0xE890, True)([Reg(SP, True), o[0]], e), CN)
F("pop", "pop.w {reg}", 4, "L", lambda o, e: _ldm_one(True, False)([Reg(SP, True), o[0]], e), CN)

# ----------------------------------------------------------------------------- branches


def _b_n(o: list, e: Env) -> int:
    need(e.cond is None or e.in_it, "conditional")
    return 0xE000 | (branch_offset(e, o[0], 12, "b.n") >> 1) & 0x7FF


def _bcond_n(o: list, e: Env) -> int:
    need(e.cond is not None and not e.in_it, "needs a condition outside an IT block")
    return 0xD000 | e.cond << 8 | (branch_offset(e, o[0], 9, "b<cond>.n") >> 1) & 0xFF


def _j(off: int, bits: int) -> tuple[int, int, int]:
    s = (off >> (bits - 1)) & 1
    i1, i2 = (off >> (bits - 2)) & 1, (off >> (bits - 3)) & 1
    return s, (~(i1 ^ s)) & 1, (~(i2 ^ s)) & 1


def _bl_like(hw2base: int, what: str) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        need(e.cond is None or e.in_it, "conditional")
        off = branch_offset(e, o[0], 25, what)
        s, j1, j2 = _j(off, 25)
        return t32(0xF000 | s << 10 | (off >> 12) & 0x3FF, hw2base | j1 << 13 | j2 << 11 | (off >> 1) & 0x7FF)
    return enc


def _bcond_w(o: list, e: Env) -> int:
    need(e.cond is not None and not e.in_it, "needs a condition outside an IT block")
    off = branch_offset(e, o[0], 21, "b<cond>.w")
    s = (off >> 20) & 1
    j2, j1 = (off >> 19) & 1, (off >> 18) & 1
    return t32(0xF000 | s << 10 | e.cond << 6 | (off >> 12) & 0x3F, 0x8000 | j1 << 13 | j2 << 11
               | (off >> 1) & 0x7FF)


def _cbz(base: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        need(lo(o[0].n), "cbz/cbnz need r0-r7")
        need(not e.in_it, "cbz/cbnz cannot be in an IT block")
        t = e.target(o[1])
        off = 0 if t is None else t - (e.addr + 4)
        if t is not None and not 0 <= off <= 126:
            raise Reject(f"branch offset {off} to '{o[1].name}' out of range 0..126 for cbz/cbnz")
        return base | (off >> 6) << 9 | ((off >> 1) & 0x1F) << 3 | o[0].n
    return enc


F("b", "b label", 2, "l", _b_n, CB, relax=True)
F("b", "b<c> label", 2, "l", _bcond_n, CB, relax=True)
F("b", "b.w label", 4, "l", _bl_like(0x9000, "b.w"), CB, relax=True)
F("b", "b<c>.w label", 4, "l", _bcond_w, CB, relax=True)
F("bl", "bl label", 4, "l", _bl_like(0xD000, "bl"), CB, relax=True)
F("bx", "bx Rm", 2, "r", lambda o, e: 0x4700 | o[0].n << 3, CB)
F("blx", "blx Rm", 2, "r", lambda o, e: (reg_ok(o[0].n, "Rm", sp=True), 0x4780 | o[0].n << 3)[1], CB)
F("cbz", "cbz Rn, label", 2, "rl", _cbz(0xB100), CB, relax=True)
F("cbnz", "cbnz Rn, label", 2, "rl", _cbz(0xB900), CB, relax=True)
F("nop", "nop", 2, "", lambda o, e: 0xBF00)
F("nop", "nop.w", 4, "", lambda o, e: t32(0xF3AF, 0x8000))
F("bkpt", "bkpt #imm8", 2, "i", lambda o, e: 0xBE00 | _uimm(o[0], 0, 255))
F("svc", "svc #imm8", 2, "i", lambda o, e: 0xDF00 | _uimm(o[0], 0, 255))
# `it`: the assembler turns the condition and then/else letters into firstcond:mask (A7.7.38).
F("it", "it{x{y{z}}} cond", 2, "i", lambda o, e: 0xBF00 | int(o[0].value))

# ----------------------------------------------------------------------------- VFP (FPv4-SP)


def _vd(d: int) -> tuple[int, int]:
    """(D bit for hw1 6, Vd for hw2 15:12) of S register d (Sd = Vd:D)."""
    return (d & 1) << 6, (d >> 1) << 12


def _vn(n: int) -> tuple[int, int]:
    return n >> 1, (n & 1) << 7


def _vm(m: int) -> int:
    return (m >> 1) | (m & 1) << 5


def _vfp3(h1: int, h2: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        dd, vd = _vd(o[0].n)
        vn, nn = _vn(o[1].n)
        return t32(h1 | dd | vn, h2 | vd | nn | _vm(o[2].n))
    return enc


def _vfp2(h1: int, h2: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        dd, vd = _vd(o[0].n)
        return t32(h1 | dd, h2 | vd | _vm(o[1].n))
    return enc


F32 = ("f32",)
CF1 = Cost(1)
for _mn, _h1, _h2, _cost in (("vadd", 0xEE30, 0x0A00, CF1), ("vsub", 0xEE30, 0x0A40, CF1),
                             ("vmul", 0xEE20, 0x0A00, CF1), ("vnmul", 0xEE20, 0x0A40, CF1),
                             ("vdiv", 0xEE80, 0x0A00, C14), ("vmla", 0xEE00, 0x0A00, CMAC),
                             ("vmls", 0xEE00, 0x0A40, CMAC), ("vnmla", 0xEE10, 0x0A40, CMAC),
                             ("vnmls", 0xEE10, 0x0A00, CMAC), ("vfma", 0xEEA0, 0x0A00, CMAC),
                             ("vfms", 0xEEA0, 0x0A40, CMAC), ("vfnma", 0xEE90, 0x0A40, CMAC),
                             ("vfnms", 0xEE90, 0x0A00, CMAC)):
    F(_mn, f"{_mn}.f32 Sd, Sn, Sm", 4, "sss", _vfp3(_h1, _h2), _cost, dts=F32)
    if _mn in ("vadd", "vsub", "vmul"):
        TWO_OPERAND.add(_mn)
for _mn, _h1, _h2, _cost in (("vabs", 0xEEB0, 0x0AC0, CF1), ("vneg", 0xEEB1, 0x0A40, CF1),
                             ("vsqrt", 0xEEB1, 0x0AC0, C14), ("vcmp", 0xEEB4, 0x0A40, CF1),
                             ("vcmpe", 0xEEB4, 0x0AC0, CF1)):
    F(_mn, f"{_mn}.f32 Sd, Sm", 4, "ss", _vfp2(_h1, _h2), _cost, dts=F32)


def _vcmp0(h2: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        need(o[1].value == 0, "vcmp compares with #0 only")
        dd, vd = _vd(o[0].n)
        return t32(0xEEB5 | dd, h2 | vd)
    return enc


F("vcmp", "vcmp.f32 Sd, #0", 4, "si", _vcmp0(0x0A40), CF1, dts=F32)
F("vcmpe", "vcmpe.f32 Sd, #0", 4, "si", _vcmp0(0x0AC0), CF1, dts=F32)


def vfp_imm8(x: float) -> int | None:
    """The 8-bit VFPExpandImm code of `x` (±n/16 · 2^e, n in 16..31, e in -3..4), or None."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    if math.isnan(x) or struct.unpack("<f", struct.pack("<I", bits))[0] != x:
        return None
    if bits & 0x7FFFF:
        return None
    exp = (bits >> 23) & 0xFF
    if not 124 <= exp <= 131:
        return None
    a = bits >> 31
    bcd = ((exp - 124) ^ 0b100) & 0b111  # b = NOT(exp[7]), cd = exp[1:0]
    return a << 7 | bcd << 4 | (bits >> 19) & 0xF


def _vmov_imm(o: list, e: Env) -> int:
    x = float(o[1].value)
    code = vfp_imm8(x)
    need(code is not None, f"#{o[1].value} cannot be encoded as a VFP immediate "
                           "(±n/16 * 2^e with n in 16..31, e in -3..4); load it from a literal")
    dd, vd = _vd(o[0].n)
    return t32(0xEEB0 | dd | code >> 4, 0x0A00 | vd | code & 0xF)


def _vmov_sr(o: list, e: Env) -> int:  # vmov Sn, Rt
    reg_ok(o[1].n, "Rt", sp=True, pc=True)  # accepted by GNU as (UNPREDICTABLE on the core)
    vn, nn = _vn(o[0].n)
    return t32(0xEE00 | vn, o[1].n << 12 | 0x0A10 | nn)


def _vmov_rs(o: list, e: Env) -> int:  # vmov Rt, Sn
    reg_ok(o[0].n, "Rt", sp=True, pc=True)
    vn, nn = _vn(o[1].n)
    return t32(0xEE10 | vn, o[0].n << 12 | 0x0A10 | nn)


def _vmov_2s2r(o: list, e: Env) -> int:  # vmov Sm, Sm1, Rt, Rt2
    need(o[1].n == o[0].n + 1 and o[0].n < 31, "needs consecutive S registers")
    return t32(0xEC40 | o[3].n, o[2].n << 12 | 0x0A10 | _vm(o[0].n))


def _vmov_2r2s(o: list, e: Env) -> int:  # vmov Rt, Rt2, Sm, Sm1
    need(o[3].n == o[2].n + 1 and o[2].n < 31, "needs consecutive S registers")
    return t32(0xEC50 | o[1].n, o[0].n << 12 | 0x0A10 | _vm(o[2].n))


F("vmov", "vmov.f32 Sd, Sm", 4, "ss", _vfp2(0xEEB0, 0x0A40), CF1, dts=("f32", ""))
F("vmov", "vmov.f32 Sd, #imm", 4, "si", _vmov_imm, CF1, dts=F32)
F("vmov", "vmov Sn, Rt", 4, "sr", _vmov_sr, CF1, dts=("", "f32"))
F("vmov", "vmov Rt, Sn", 4, "rs", _vmov_rs, CF1, dts=("", "f32"))
F("vmov", "vmov Sm, Sm1, Rt, Rt2", 4, "ssrr", _vmov_2s2r, C2, dts=("", "f32"))
F("vmov", "vmov Rt, Rt2, Sm, Sm1", 4, "rrss", _vmov_2r2s, C2, dts=("", "f32"))


def _vmrs(o: list, e: Env) -> int:
    need(o[-1].name == "fpscr", "vmrs reads fpscr")
    if isinstance(o[0], Special):
        need(o[0].name == "apsr_nzcv", "vmrs target must be a core register or APSR_nzcv")
        return t32(0xEEF1, 0xFA10)
    reg_ok(o[0].n, "Rt")
    return t32(0xEEF1, o[0].n << 12 | 0x0A10)


def _vmsr(o: list, e: Env) -> int:
    need(o[0].name == "fpscr", "vmsr writes fpscr")
    reg_ok(o[1].n, "Rt")
    return t32(0xEEE1, o[1].n << 12 | 0x0A10)


F("vmrs", "vmrs APSR_nzcv, fpscr", 4, "xx", _vmrs, CF1)
F("vmrs", "vmrs Rt, fpscr", 4, "rx", _vmrs, CF1)
F("vmsr", "vmsr fpscr, Rt", 4, "xr", _vmsr, CF1)

# vcvt: (dts, hw1 low bits, hw2 op bit 7) for f32 <-> 32-bit integer (A7.7.225).
for _dts, _opc2, _op, _mn in ((("s32", "f32"), 0xD, 1, "vcvt"), (("u32", "f32"), 0xC, 1, "vcvt"),
                              (("f32", "s32"), 0x8, 1, "vcvt"), (("f32", "u32"), 0x8, 0, "vcvt"),
                              (("s32", "f32"), 0xD, 0, "vcvtr"), (("u32", "f32"), 0xC, 0, "vcvtr")):
    F(_mn, f"{_mn}.{'.'.join(_dts)} Sd, Sm", 4, "ss", _vfp2(0xEEB0 | _opc2, 0x0A40 | _op << 7), CF1,
      dts=(".".join(_dts),))


def _vcvt_fixed(to_fixed: bool, unsigned: bool, bits: int) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        need(o[0].n == o[1].n, "fixed-point vcvt needs the same source and destination register")
        fb = _uimm(o[2], 0 if bits == 16 else 1, bits)
        imm = bits - fb
        dd, vd = _vd(o[0].n)
        return t32(0xEEBA | dd | to_fixed << 2 | unsigned, 0x0A40 | vd | (bits == 32) << 7
                   | (imm & 1) << 5 | imm >> 1)
    return enc


for _fx in ("s32", "u32", "s16", "u16"):
    for _to in (True, False):
        _dts = (_fx, "f32") if _to else ("f32", _fx)
        F("vcvt", f"vcvt.{'.'.join(_dts)} Sd, Sd, #fbits", 4, "ssi",
          _vcvt_fixed(_to, _fx[0] == "u", int(_fx[1:])), CF1, dts=(".".join(_dts),))
for _mn, _t in (("vcvtb", 0), ("vcvtt", 1)):
    F(_mn, f"{_mn}.f32.f16 Sd, Sm", 4, "ss", _vfp2(0xEEB2, 0x0A40 | _t << 7), CF1, dts=("f32.f16",))
    F(_mn, f"{_mn}.f16.f32 Sd, Sm", 4, "ss", _vfp2(0xEEB3, 0x0A40 | _t << 7), CF1, dts=("f16.f32",))


def _vldr(load: bool) -> Callable[[list, Env], int]:
    """VLDR/VSTR (A7.7.236, A7.7.257): encoding T2 for an S register, T1 (coprocessor 11, two
    words) for a D register."""
    def enc(o: list, e: Env) -> int:
        dbl = isinstance(o[0], DReg)
        dd, vd = ((o[0].n >> 4) << 6, (o[0].n & 15) << 12) if dbl else _vd(o[0].n)
        if isinstance(o[1], Label):
            need(load, "vstr cannot store to a label")
            off = literal_offset(e, o[1], 1020, 4)
            base = PC
        else:
            m = o[1]
            need(m.pre and not m.wb and m.index is None, "vldr/vstr take [Rn{, #±imm}] only")
            off = m.offset
            need(off % 4 == 0, f"offset {off} is not a multiple of 4")
            need(-1020 <= off <= 1020, f"offset {off} out of range -1020..1020")
            base = m.base
            need(load or base != PC, "vstr cannot use a pc base")
        u = off >= 0 and not (isinstance(o[1], Mem) and o[1].neg_zero)
        return t32(0xED00 | u << 7 | dd | load << 4 | base, vd | (0x0B00 if dbl else 0x0A00) | abs(off) // 4)
    return enc


# table 7-1: the 64-bit forms take 3 cycles (two words for the cost of one load plus one)
F("vldr", "vldr Dd, [Rn{, #±imm8*4}]", 4, "dm", _vldr(True), C3, dts=("", "64", "f64"))
F("vstr", "vstr Dd, [Rn{, #±imm8*4}]", 4, "dm", _vldr(False), C3, dts=("", "64", "f64"))
F("vldr", "vldr Sd, [Rn{, #±imm8*4}]", 4, "sm", _vldr(True), C2, dts=("", "32", "f32"))
F("vldr", "vldr Sd, label", 4, "sl", _vldr(True), C2, relax=True, dts=("", "32", "f32"))
F("vstr", "vstr Sd, [Rn{, #±imm8*4}]", 4, "sm", _vldr(False), C2, dts=("", "32", "f32"))


def _vldm(p: int, u: int, load: bool) -> Callable[[list, Env], int]:
    def enc(o: list, e: Env) -> int:
        n, regs = o[0], o[1].regs
        need(list(regs) == list(range(regs[0], regs[0] + len(regs))), "S register list must be consecutive")
        need(not (p and not n.wb), "vldmdb/vstmdb need writeback (Rn!)")
        dd, vd = _vd(regs[0])
        return t32(0xEC00 | p << 8 | u << 7 | dd | n.wb << 5 | load << 4 | n.n, vd | 0x0A00 | len(regs))
    return enc


CVN = Cost(1, per_reg=True)
for _mn, _p, _u, _l in (("vldmia", 0, 1, True), ("vldm", 0, 1, True), ("vldmdb", 1, 0, True),
                        ("vstmia", 0, 1, False), ("vstm", 0, 1, False), ("vstmdb", 1, 0, False)):
    F(_mn, f"{_mn} Rn{{!}}, {{Sregs}}", 4, "rS", _vldm(_p, _u, _l), CVN, dts=("", "32", "f32"))
F("vpush", "vpush {Sregs}", 4, "S", lambda o, e: _vldm(1, 0, False)([Reg(SP, True), o[0]], e), CVN,
  dts=("", "32", "f32"))
F("vpop", "vpop {Sregs}", 4, "S", lambda o, e: _vldm(0, 1, True)([Reg(SP, True), o[0]], e), CVN,
  dts=("", "32", "f32"))

# ldr/ldm aliases GNU accepts.
for _alias, _real in (("ldmia", "ldm"), ("ldmfd", "ldm"), ("stmia", "stm"), ("stmea", "stm"),
                      ("stmfd", "stmdb"), ("ldmea", "ldmdb")):
    FORMS[_alias] = FORMS[_real]
