"""Thumb-2 / DSP / FPv4-SP instructions as IR ops, in the generic op syntax, with registers as types.

    %d = thumb.add %n, %m : !thumb.reg                       before register allocation
    %d = thumb.add %n {imm = 4, setflags = true} : !thumb.reg<r0>        after: `adds r0, r1, #4`
    %acc2 = thumb.vmla.f32 %acc, %a, %b : !thumb.sreg<s0>     (the accumulator is tied: in = out)
    thumb.str %v, %base {offset = 8}                           `str r2, [r3, #8]`
    thumb.b {target = @loop, cond = "ne"}                      `bne loop`

An op is one mnemonic (`thumb.` + the GNU mnemonic and its data types); results are the registers it
writes and operands the registers it reads, so an instruction selector can build ops on virtual
registers and a register allocator only rewrites value types. Each op class lists its operand
signatures (`sigs`), which say how operands, results and attributes map onto the GNU operand list;
`asm()` prints the GNU line, and the encodings and cycle costs are those of
`ml4f.dialects.thumb.encodings.FORMS[mnemonic]` (ARMv7-M ARM chapter A7, DESIGN §6).

Signature tokens (comma separated, in GNU operand order):
    D / Ds     a core / S register the op writes (a result)
    Dd         a D register the op writes: two results, S registers s2n and s2n+1 (`vldr d3, ...`)
    U / Us     a core / S register it reads (an operand)
    T / Ts     read and written (an operand tied to a result: same register after allocation)
    =          the previous register again (`vcvt.s32.f32 s0, s0, #16`)
    I          `#imm` (attribute imm)            F  `#imm` as a float
    SH         `, shift` when the attribute shift is given ("lsl #2")
    M0         `[base{, #offset}]` (attribute offset)
    M          `[base{, #offset}]`, `[base, index{, lsl #k}]` (attributes offset, index_shift);
               with mode = "pre" / "post" the base is also written back (`[rn, #4]!`, `[rn], #4`):
               the updated base is the last result
    M!         ldm/stm style base `rn` or `rn!` (writeback = true: the updated base is the last result)
    L          a label (attribute target = @name)
    U* / D* / Us* / Ds*   a register list `{...}` read / written
    'text'     literal operand text (apsr_nzcv, fpscr)
"""

from __future__ import annotations

import re
from typing import ClassVar

from ml4f.compiler.ir import (
    AttrKind,
    Bool,
    Dialect,
    Enum,
    Int,
    Operation,
    Str,
    Symbol,
    attr,
    region,
    var_operand,
)
from ml4f.compiler.types import Type

from .encodings import COND_NAMES, FORMS, Cost
from .registers import RegType, SRegType

DIALECT = Dialect("thumb", doc=__doc__ or "")

# Mnemonic families the passes over Thumb code reason about (thumb-regalloc, thumb-schedule).
BRANCHES = frozenset({"b", "bx", "cbz", "cbnz"})
CALLS = frozenset({"bl", "blx"})
STACK_OPS = frozenset({"push", "pop", "vpush", "vpop"})
CORE_LOADS = frozenset({"ldr", "ldrb", "ldrh", "ldrsb", "ldrsh"})
CORE_STORES = frozenset({"str", "strb", "strh"})
MULTI_LOADS = frozenset({"ldm", "ldmdb", "vldm", "vldmdb"})
MULTI_STORES = frozenset({"stm", "stmdb", "vstm", "vstmdb"})
LOADS = CORE_LOADS | MULTI_LOADS | {"ldrd", "vldr"}
STORES = CORE_STORES | MULTI_STORES | {"strd", "vstr"}

Cond = Enum(*COND_NAMES[:14])
Number = AttrKind("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool))


class _WrongType(Exception):
    pass


class ThumbOp(Operation):
    """Base of all instruction ops: variadic register operands and results, checked against `sigs`."""

    num_results: ClassVar[int | None] = None
    # The GNU mnemonic without S suffix or condition, with its data types (`vcvt.s32.f32`).
    mnemonic: ClassVar[str] = ""
    sigs: ClassVar[tuple[str, ...]] = ()

    srcs = var_operand()
    imm = attr(Number, default=None, doc="the immediate operand")
    shift = attr(Str, default=None, doc='the shift of the last register, e.g. "lsl #2"')
    offset = attr(Int, default=0, doc="memory offset in bytes")
    index_shift = attr(Int, default=None, doc="lsl amount of a register index")
    mode = attr(Enum("offset", "pre", "post"), default="offset", doc="memory addressing mode")
    writeback = attr(Bool, default=False, doc="ldm/stm base writeback")
    target = attr(Symbol, default=None, doc="branch or literal label")
    cond = attr(Cond, default=None, doc="condition (inside an IT block, or b<cond>)")
    setflags = attr(Bool, default=False, doc="the S suffix")
    wide = attr(Bool, default=False, doc="force the 32-bit encoding (.w)")

    # -- signature matching

    def _has(self, key: str) -> bool:
        return self.get_attr(key) not in (None, False) and not (key == "mode" and self.mode == "offset")

    def _plan(self, sig: str) -> list[tuple[str, int, int]] | None:
        """Map `sig` onto this op: [(token, operand index, result index)], or None if it does not fit."""
        ops, res = 0, 0
        plan: list[tuple[str, int, int]] = []
        used = {"cond", "setflags", "wide"}
        toks = [t.strip() for t in sig.split(",")] if sig else []
        for t in toks:
            if t in ("D", "Ds"):
                plan.append((t, -1, res))
                res += 1
            elif t == "Dd":
                plan.append((t, -1, res))
                res += 2
            elif t in ("U", "Us"):
                plan.append((t, ops, -1))
                ops += 1
            elif t in ("T", "Ts"):
                plan.append((t, ops, res))
                ops += 1
                res += 1
            elif t in ("I", "F"):
                if self.imm is None:
                    return None
                plan.append((t, -1, -1))
                used.add("imm")
            elif t == "SH":
                plan.append((t, -1, -1))
                used.add("shift")
            elif t == "M0":  # vldr/vstr: [rn{, #offset}] only
                if self.mode != "offset" or self.index_shift is not None:
                    return None
                plan.append(("M", ops, -1))
                ops += 1
                used.add("offset")
            elif t == "M":
                base = ops
                ops += 1
                index = -1
                if self.index_shift is not None or (len(self.operands) > ops and self._mem_index_expected(toks)):
                    index = ops
                    ops += 1
                plan.append(("M", base, index))
                used |= {"offset", "index_shift", "mode"}
            elif t == "M!":
                plan.append((t, ops, -1))
                ops += 1
                used.add("writeback")
            elif t == "L":
                if self.target is None:
                    return None
                plan.append((t, -1, -1))
                used.add("target")
            elif t.endswith("*"):
                n = (len(self.operands) - ops) if t.startswith("U") else (len(self.results) - res)
                n -= self._tail(toks, t)
                if not t.startswith("U") and (self.mode != "offset" or self.writeback):
                    n -= 1  # the written-back base is the last result, not part of the list
                if n < 1:
                    return None
                plan.append((t, ops if t.startswith("U") else res, n))
                if t.startswith("U"):
                    ops += n
                else:
                    res += n
            else:
                plan.append((t, -1, -1))
        if any(self._has(k) for k in self._attr_defs if k not in used):
            return None
        wb_results = 1 if (self.mode != "offset" or self.writeback) else 0
        if ops != len(self.operands) or res + wb_results != len(self.results):
            return None
        if "M" not in {p[0] for p in plan} and self.mode != "offset":
            return None
        if "M!" not in {p[0] for p in plan} and self.writeback:
            return None
        return plan

    def _mem_index_expected(self, toks: list[str]) -> bool:
        """Whether the operand after a memory base is its index register (not a later operand)."""
        after = toks[toks.index("M") + 1:]
        return not any(t in ("U", "Us", "T", "Ts") or t.startswith("U") for t in after)

    def _tail(self, toks: list[str], t: str) -> int:
        """Operands (or results) a list must leave for the tokens after it."""
        after = toks[toks.index(t) + 1:]
        kinds = ("U", "Us", "T", "Ts", "M", "M!") if t.startswith("U") else ("D", "Ds", "T", "Ts")
        return sum(1 for a in after if a in kinds)

    def plan(self) -> list[tuple[str, int, int]]:
        for sig in self.sigs:
            p = self._plan(sig)
            if p is not None and self._types_ok(p):
                return p
        shapes = " | ".join(f"'{self.mnemonic} {s}'" for s in self.sigs)
        raise self.error(f"operands, results and attributes match none of {shapes} "
                         f"({len(self.operands)} operand(s), {len(self.results)} result(s))")

    def tied(self) -> list[tuple[int, int]]:
        """(operand index, result index) pairs a register allocator must give the same register:
        accumulators (`vmla`, `smlal`, `movt`) and written-back bases (`ldr rX, [rN], #4`)."""
        plan = self.plan()
        pairs = [(oi, ri) for tok, oi, ri in plan if tok in ("T", "Ts")]
        if self.mode != "offset" or self.writeback:
            base = next(p for p in plan if p[0] in ("M", "M!"))
            pairs.append((base[1], len(self.results) - 1))
        return pairs

    def _types_ok(self, plan: list[tuple[str, int, int]]) -> bool:
        try:
            self._check_types(plan)
        except _WrongType:
            return False
        return True

    def verify_(self) -> None:
        plan = self.plan()
        self._check_types(plan)
        for tok, oi, ri in plan:
            if tok in ("T", "Ts") and oi >= 0 and ri >= 0:
                a, b = self.operands[oi].type, self.results[ri].type
                if a.num is not None and b.num is not None and a.num != b.num:
                    raise self.error(f"result {b} must be the same register as the operand it updates ({a})")
        if self.mode != "offset" or self.writeback:
            base_tok = next(p for p in plan if p[0] in ("M", "M!"))
            a, b = self.operands[base_tok[1]].type, self.results[-1].type
            if a.num is not None and b.num is not None and a.num != b.num:
                raise self.error(f"the written-back base {b} must be the base register {a}")
        for tok, _, ri in plan:
            if tok == "Dd":
                a, b = (v.type.num for v in self.results[ri:ri + 2])
                if a is not None and b is not None and (a % 2 or b != a + 1):
                    raise self.error(f"a D register is an even S register and the next one, got s{a}, s{b}")
        if self.shift is not None and not re.fullmatch(r"(lsl|lsr|asr|ror) #\d+|rrx", self.shift):
            raise self.error(f"shift must look like \"lsl #2\", got \"{self.shift}\"")

    def _check_types(self, plan: list[tuple[str, int, int]]) -> None:
        for tok, oi, ri in plan:
            if tok.endswith("*"):
                kind = SRegType if "s" in tok else RegType
                vals = self.operands[oi:oi + ri] if tok.startswith("U") else self.results[oi:oi + ri]
                for v in vals:
                    self._check_type(v.type, kind, tok)
                continue
            if tok == "Dd":
                for v in self.results[ri:ri + 2]:
                    self._check_type(v.type, SRegType, tok)
                continue
            if tok in ("M", "M!"):
                self._check_type(self.operands[oi].type, RegType, tok)
                if tok == "M" and ri >= 0:
                    self._check_type(self.operands[ri].type, RegType, tok)
                continue
            kind = SRegType if tok.endswith("s") else RegType
            if oi >= 0:
                self._check_type(self.operands[oi].type, kind, tok)
            if ri >= 0:
                self._check_type(self.results[ri].type, kind, tok)
        if self.mode != "offset" or self.writeback:
            self._check_type(self.results[-1].type, RegType, "written-back base")

    def _check_type(self, t: Type, kind: type, tok: str) -> None:
        if not isinstance(t, kind):
            want = "!thumb.sreg" if kind is SRegType else "!thumb.reg"
            raise _WrongType(f"expects {want} for '{tok}', got {t}")

    # -- assembly

    def asm(self) -> str:
        """The GNU unified-syntax line (registers must be allocated)."""
        head, *types = self.mnemonic.split(".")
        name = head + ("s" if self.setflags else "") + (self.cond or "")
        name += "".join("." + t for t in types) + (".w" if self.wide else "")
        parts: list[str] = []
        last_reg = ""
        for tok, oi, ri in self.plan():
            if tok in ("D", "Ds"):
                last_reg = self._reg(self.results[ri].type)
                parts.append(last_reg)
            elif tok == "Dd":
                parts.append(f"d{int(self._reg(self.results[ri].type)[1:]) // 2}")
            elif tok in ("U", "Us", "T", "Ts"):
                last_reg = self._reg(self.operands[oi].type)
                parts.append(last_reg)
            elif tok == "=":
                parts.append(last_reg)
            elif tok == "I":
                parts.append(f"#{self.imm}")
            elif tok == "F":
                parts.append(f"#{float(self.imm)!r}")
            elif tok == "SH":
                if self.shift is not None:
                    parts.append(self.shift)
            elif tok == "L":
                parts.append(self.target.name)
            elif tok == "M":
                parts.append(self._mem(oi, ri))
            elif tok == "M!":
                parts.append(self._reg(self.operands[oi].type) + ("!" if self.writeback else ""))
            elif tok.endswith("*"):
                vals = self.operands[oi:oi + ri] if tok.startswith("U") else self.results[oi:oi + ri]
                parts.append("{" + ", ".join(self._reg(v.type) for v in vals) + "}")
            else:
                parts.append(tok.strip("'"))
        return name + (" " + ", ".join(parts) if parts else "")

    def _mem(self, base_i: int, index_i: int) -> str:
        base = self._reg(self.operands[base_i].type)
        if index_i >= 0:
            idx = self._reg(self.operands[index_i].type)
            sh = f", lsl #{self.index_shift}" if self.index_shift else ""
            return f"[{base}, {idx}{sh}]"
        if self.mode == "post":
            return f"[{base}], #{self.offset}"
        inner = f"[{base}, #{self.offset}]" if self.offset or self.mode == "pre" else f"[{base}]"
        return inner + ("!" if self.mode == "pre" else "")

    def _reg(self, t: Type) -> str:
        if not isinstance(t, (RegType, SRegType)) or t.num is None:
            raise self.error(f"register not allocated ({t}): run register allocation before printing assembly")
        return t.asm()

    @property
    def cycles(self) -> Cost:
        """The cost of this instruction (DESIGN §6), from its encoding forms."""
        return FORMS[self.mnemonic.split(".")[0]][-1].cycles


# ----------------------------------------------------------------------------- structure


@DIALECT.op
class Func(Operation):
    """A function: a label and a body of thumb ops, printed as `.thumb_func` + `name:` + the body.

    Example: thumb.func @entry { ... thumb.bx %lr }
    """

    name = "thumb.func"
    num_results = 0
    has_symbol = True
    body = region()

    def asm(self) -> str:
        lines = [".thumb_func", f"{self.symbol}:"]
        for op in self.body.block.ops:
            line = op.asm()
            if line:
                lines.append(line if line.endswith(":") else "    " + line)
        return "\n".join(lines)


@DIALECT.op
class GetRegister(Operation):
    """The value held in a physical register at this point (function arguments, sp, lr); no code.

    Example: %arena = thumb.get_register : !thumb.reg<r1>
    """

    name = "thumb.get_register"
    num_results = 1

    def verify_(self) -> None:
        t = self.result.type
        if not isinstance(t, (RegType, SRegType)) or t.num is None:
            raise self.error(f"needs a physical register type (!thumb.reg<r0>, !thumb.sreg<s0>), got {t}")

    def asm(self) -> str:
        return ""


@DIALECT.op
class LabelOp(Operation):
    """A branch target in the instruction stream. Example: thumb.label @loop   (`loop:`)"""

    name = "thumb.label"
    num_results = 0
    has_symbol = True

    def asm(self) -> str:
        return f"{self.symbol}:"


@DIALECT.op
class It(Operation):
    """An IT block header: the next 1-4 ops run if `cond` (t) or its inverse (e) holds (A7.7.38).

    Example: thumb.it {cond = "eq", mask = "te"}   (`itte eq`)
    """

    name = "thumb.it"
    num_results = 0
    cond = attr(Cond)
    mask = attr(Str, default="")

    def verify_(self) -> None:
        if not re.fullmatch(r"[te]{0,3}", self.mask):
            raise self.error(f"mask must be up to three of t/e, got \"{self.mask}\"")

    def asm(self) -> str:
        return f"it{self.mask} {self.cond}"

    @property
    def cycles(self) -> Cost:
        return FORMS["it"][0].cycles


@DIALECT.op
class Directive(Operation):
    """Raw data or alignment in the code: one GNU directive (`.word 1, 2`, `.align 2`, `.ltorg`).

    Example: thumb.directive {text = ".align 2"}
    """

    name = "thumb.directive"
    num_results = 0
    text = attr(Str)

    def verify_(self) -> None:
        if not re.match(r"\.(word|short|hword|byte|float|align|balign|p2align|space|ltorg|pool)\b", self.text):
            raise self.error(f"unsupported directive \"{self.text}\"")

    def asm(self) -> str:
        return self.text


# ----------------------------------------------------------------------------- instructions

# (mnemonic, signatures, semantics). Everything else about an op comes from FORMS[mnemonic].
_ARITH = ("D, U, U", "D, U, U, SH", "D, U, I")
_SPECS: list[tuple[str, tuple[str, ...], str]] = [
    # data processing (A7.7)
    ("add", _ARITH, "rd = rn + (rm | imm)"), ("sub", _ARITH, "rd = rn - (rm | imm)"),
    ("rsb", _ARITH, "rd = (rm | imm) - rn"), ("adc", _ARITH, "rd = rn + (rm | imm) + C"),
    ("sbc", _ARITH, "rd = rn - (rm | imm) - !C"), ("and", _ARITH, "rd = rn & (rm | imm)"),
    ("orr", _ARITH, "rd = rn | (rm | imm)"), ("eor", _ARITH, "rd = rn ^ (rm | imm)"),
    ("bic", _ARITH, "rd = rn & ~(rm | imm)"), ("orn", _ARITH, "rd = rn | ~(rm | imm)"),
    ("addw", ("D, U, I",), "rd = rn + imm12"), ("subw", ("D, U, I",), "rd = rn - imm12"),
    ("mov", ("D, U", "D, I", "D, U, SH"), "rd = rm | imm"), ("mvn", ("D, U", "D, I", "D, U, SH"), "rd = ~(rm | imm)"),
    ("movw", ("D, I",), "rd = imm16"), ("movt", ("T, I",), "rd[31:16] = imm16"),
    ("neg", ("D, U",), "rd = -rm"),
    ("lsl", ("D, U, U", "D, U, I"), "rd = rn << (rm | imm)"), ("lsr", ("D, U, U", "D, U, I"), "logical rd = rn >> n"),
    ("asr", ("D, U, U", "D, U, I"), "arithmetic rd = rn >> n"), ("ror", ("D, U, U", "D, U, I"), "rd = rn rotated right"),
    ("cmp", ("U, U", "U, I", "U, U, SH"), "flags of rn - x"), ("cmn", ("U, U", "U, I", "U, U, SH"), "flags of rn + x"),
    ("tst", ("U, U", "U, I", "U, U, SH"), "flags of rn & x"), ("teq", ("U, U", "U, I", "U, U, SH"), "flags of rn ^ x"),
    ("mul", ("D, U, U",), "rd = rn * rm"), ("mla", ("D, U, U, U",), "rd = ra + rn * rm"),
    ("mls", ("D, U, U, U",), "rd = ra - rn * rm"), ("sdiv", ("D, U, U",), "rd = rn / rm (signed)"),
    ("udiv", ("D, U, U",), "rd = rn / rm (unsigned)"),
    ("smull", ("D, D, U, U",), "rdhi:rdlo = rn * rm (signed 64-bit)"),
    ("umull", ("D, D, U, U",), "rdhi:rdlo = rn * rm (unsigned 64-bit)"),
    ("smlal", ("T, T, U, U",), "rdhi:rdlo += rn * rm (signed 64-bit)"),
    ("umlal", ("T, T, U, U",), "rdhi:rdlo += rn * rm (unsigned 64-bit)"),
    ("clz", ("D, U",), "rd = count of leading zeros of rm"), ("rev", ("D, U",), "rd = byte-reversed rm"),
    ("rbit", ("D, U",), "rd = bit-reversed rm"),
    # DSP (ARMv7E-M)
    ("smlad", ("D, U, U, U",), "rd = ra + rn.lo*rm.lo + rn.hi*rm.hi (16-bit halves)"),
    ("smladx", ("D, U, U, U",), "rd = ra + rn.lo*rm.hi + rn.hi*rm.lo"),
    ("smlsd", ("D, U, U, U",), "rd = ra + rn.lo*rm.lo - rn.hi*rm.hi"),
    ("smuad", ("D, U, U",), "rd = rn.lo*rm.lo + rn.hi*rm.hi"), ("smuadx", ("D, U, U",), "rd = rn.lo*rm.hi + rn.hi*rm.lo"),
    ("smusd", ("D, U, U",), "rd = rn.lo*rm.lo - rn.hi*rm.hi"),
    ("smlabb", ("D, U, U, U",), "rd = ra + rn.lo * rm.lo"), ("smlabt", ("D, U, U, U",), "rd = ra + rn.lo * rm.hi"),
    ("smlatb", ("D, U, U, U",), "rd = ra + rn.hi * rm.lo"), ("smlatt", ("D, U, U, U",), "rd = ra + rn.hi * rm.hi"),
    ("smulbb", ("D, U, U",), "rd = rn.lo * rm.lo"), ("smulbt", ("D, U, U",), "rd = rn.lo * rm.hi"),
    ("smultb", ("D, U, U",), "rd = rn.hi * rm.lo"), ("smultt", ("D, U, U",), "rd = rn.hi * rm.hi"),
    ("smmul", ("D, U, U",), "rd = (rn * rm) >> 32"), ("smmla", ("D, U, U, U",), "rd = ra + (rn * rm) >> 32"),
    ("smlald", ("T, T, U, U",), "rdhi:rdlo += rn.lo*rm.lo + rn.hi*rm.hi"),
    ("sxtb16", ("D, U", "D, U, SH"), "rd = sign-extended bytes 0 and 2 of rm (rotated)"),
    ("uxtb16", ("D, U", "D, U, SH"), "rd = zero-extended bytes 0 and 2 of rm (rotated)"),
    ("sxtab16", ("D, U, U", "D, U, U, SH"), "rd = rn + sxtb16(rm) per halfword"),
    ("uxtab16", ("D, U, U", "D, U, U, SH"), "rd = rn + uxtb16(rm) per halfword"),
    ("sxtb", ("D, U", "D, U, SH"), "rd = sign-extended byte"), ("uxtb", ("D, U", "D, U, SH"), "rd = zero-extended byte"),
    ("sxth", ("D, U", "D, U, SH"), "rd = sign-extended halfword"),
    ("uxth", ("D, U", "D, U, SH"), "rd = zero-extended halfword"),
    ("ssat", ("D, I, U", "D, I, U, SH"), "rd = rn (shifted) saturated to a signed imm-bit range"),
    ("usat", ("D, I, U", "D, I, U, SH"), "rd = rn (shifted) saturated to an unsigned imm-bit range"),
    ("qadd", ("D, U, U",), "rd = saturate(rm + rn)"), ("qsub", ("D, U, U",), "rd = saturate(rm - rn)"),
    ("sadd16", ("D, U, U",), "rd = rn + rm per 16-bit half"), ("ssub16", ("D, U, U",), "rd = rn - rm per 16-bit half"),
    ("qadd16", ("D, U, U",), "saturating sadd16"), ("sadd8", ("D, U, U",), "rd = rn + rm per byte"),
    ("pkhbt", ("D, U, U", "D, U, U, SH"), "rd = rn.lo | (rm << n).hi"),
    ("pkhtb", ("D, U, U", "D, U, U, SH"), "rd = rn.hi | (rm >> n).lo"),
    ("sel", ("D, U, U",), "rd = bytes of rn or rm by the GE flags"),
    # loads and stores (A7.7.42ff)
    ("ldr", ("D, M", "D, L"), "rt = word at address"), ("ldrb", ("D, M", "D, L"), "rt = byte at address"),
    ("ldrh", ("D, M", "D, L"), "rt = halfword at address"), ("ldrsb", ("D, M", "D, L"), "rt = signed byte"),
    ("ldrsh", ("D, M", "D, L"), "rt = signed halfword"), ("str", ("U, M",), "word at address = rt"),
    ("strb", ("U, M",), "byte at address = rt"), ("strh", ("U, M",), "halfword at address = rt"),
    ("ldrd", ("D, D, M",), "rt, rt2 = two words at address"), ("strd", ("U, U, M",), "two words at address = rt, rt2"),
    ("ldm", ("M!, D*",), "load registers from rn upwards"), ("stm", ("M!, U*",), "store registers from rn upwards"),
    ("ldmdb", ("M!, D*",), "load registers below rn"), ("stmdb", ("M!, U*",), "store registers below rn"),
    ("push", ("U*",), "store registers below sp, sp -= 4n"), ("pop", ("D*",), "load registers from sp, sp += 4n"),
    ("adr", ("D, L",), "rd = address of label"),
    # branches
    ("b", ("L",), "branch (with cond: if the condition holds)"), ("bl", ("L",), "call: lr = return address"),
    ("bx", ("U",), "branch to register (bx lr returns)"), ("blx", ("U",), "call register"),
    ("cbz", ("U, L",), "branch if rn == 0 (forward)"), ("cbnz", ("U, L",), "branch if rn != 0 (forward)"),
    ("nop", ("",), "no operation"), ("bkpt", ("I",), "breakpoint"),
    # VFP single precision (A7.5, A7.7.2xx)
    ("vadd.f32", ("Ds, Us, Us",), "sd = sn + sm"), ("vsub.f32", ("Ds, Us, Us",), "sd = sn - sm"),
    ("vmul.f32", ("Ds, Us, Us",), "sd = sn * sm"), ("vnmul.f32", ("Ds, Us, Us",), "sd = -(sn * sm)"),
    ("vdiv.f32", ("Ds, Us, Us",), "sd = sn / sm"),
    ("vmla.f32", ("Ts, Us, Us",), "sd += sn * sm (rounded twice)"), ("vmls.f32", ("Ts, Us, Us",), "sd -= sn * sm"),
    ("vfma.f32", ("Ts, Us, Us",), "sd += sn * sm (fused)"), ("vfms.f32", ("Ts, Us, Us",), "sd -= sn * sm (fused)"),
    ("vnmla.f32", ("Ts, Us, Us",), "sd = -sd - sn * sm"), ("vnmls.f32", ("Ts, Us, Us",), "sd = -sd + sn * sm"),
    ("vsqrt.f32", ("Ds, Us",), "sd = sqrt(sm)"), ("vneg.f32", ("Ds, Us",), "sd = -sm"),
    ("vabs.f32", ("Ds, Us",), "sd = |sm|"),
    ("vcmp.f32", ("Us, Us", "Us, F"), "FPSCR flags of sd - (sm | 0)"),
    ("vcmpe.f32", ("Us, Us", "Us, F"), "vcmp, signalling on quiet NaN"),
    ("vmrs", ("'APSR_nzcv', 'fpscr'", "D, 'fpscr'"), "copy FPSCR flags to APSR (or FPSCR to rt)"),
    ("vmsr", ("'fpscr', U",), "FPSCR = rt"),
    ("vmov.f32", ("Ds, Us", "Ds, F"), "sd = sm | imm"),
    ("vmov", ("Ds, U", "D, Us", "Ds, Ds, U, U", "D, D, Us, Us"), "move between core and S registers"),
    ("vcvt.s32.f32", ("Ds, Us", "Ts, =, I"), "sd = int(sm) rounded toward zero (or to fixed point)"),
    ("vcvt.u32.f32", ("Ds, Us", "Ts, =, I"), "sd = unsigned int(sm) toward zero (or fixed point)"),
    ("vcvt.f32.s32", ("Ds, Us", "Ts, =, I"), "sd = float(signed int or fixed point)"),
    ("vcvt.f32.u32", ("Ds, Us", "Ts, =, I"), "sd = float(unsigned int or fixed point)"),
    ("vcvt.s16.f32", ("Ts, =, I",), "sd = 16-bit signed fixed point"), ("vcvt.f32.s16", ("Ts, =, I",), "from s16 fixed"),
    ("vcvt.u16.f32", ("Ts, =, I",), "sd = 16-bit unsigned fixed point"), ("vcvt.f32.u16", ("Ts, =, I",), "from u16"),
    ("vcvtr.s32.f32", ("Ds, Us",), "sd = int(sm) with the FPSCR rounding mode"),
    ("vcvtb.f32.f16", ("Ds, Us",), "sd = f32(bottom half of sm as f16)"),
    ("vcvtt.f32.f16", ("Ds, Us",), "sd = f32(top half of sm as f16)"),
    ("vcvtb.f16.f32", ("Ts, Us",), "bottom half of sd = f16(sm), top half kept"),
    ("vcvtt.f16.f32", ("Ts, Us",), "top half of sd = f16(sm), bottom half kept"),
    ("vldr", ("Ds, M0", "Dd, M0", "Ds, L"), "sd = word at address (or s2n, s2n+1 = two words)"), ("vstr", ("Us, M0",), "word at address = sd"),
    ("vldm", ("M!, Ds*",), "load S registers from rn upwards"), ("vstm", ("M!, Us*",), "store S registers"),
    ("vldmdb", ("M!, Ds*",), "load S registers below rn"), ("vstmdb", ("M!, Us*",), "store S registers below rn"),
    ("vpush", ("Us*",), "push S registers"), ("vpop", ("Ds*",), "pop S registers"),
]


def _class_name(mn: str) -> str:
    return "".join(p.capitalize() for p in re.split(r"[._]", mn))


def _example(mn: str, sig: str) -> str:
    """An IR line for signature `sig`, e.g. `%d = thumb.add %a, %b : !thumb.reg`."""
    defs, uses, attrs = [], [], []
    for t in [t.strip() for t in sig.split(",")] if sig else []:
        s = "!thumb.sreg" if t.endswith("s") or t.startswith(("Ds", "Us")) else "!thumb.reg"
        if t in ("D", "Ds", "D*", "Ds*"):
            defs.append(s)
        elif t in ("U", "Us", "U*", "Us*", "M", "M0", "M!"):
            uses.append("%" + "abcdefgh"[len(uses)])
        elif t in ("T", "Ts"):
            uses.append("%" + "abcdefgh"[len(uses)])
            defs.append(s)
        elif t in ("I", "F"):
            attrs.append("imm = 1" if t == "I" else "imm = 1.0")
        elif t == "L":
            attrs.append("target = @label")
    res = ", ".join(f"%r{i}" for i in range(len(defs)))
    return ((res + " = ") if defs else "") + f"thumb.{mn}" + (" " + ", ".join(uses) if uses else "") + \
        (" {" + ", ".join(attrs) + "}" if attrs else "") + (" : " + ", ".join(defs) if defs else "")


def _make(mn: str, sigs: tuple[str, ...], sem: str) -> type[ThumbOp]:
    base = mn.split(".")[0]
    assert base in FORMS, mn
    doc = (f"{sem}.\n\nExample: {_example(mn, sigs[0])}\n\nGNU: " + " | ".join(f"`{mn} {s}`" for s in sigs)
           + f"; encodings in encodings.FORMS['{base}'] (ARMv7-M ARM A7.7), {FORMS[base][-1].cycles} cycles.")
    cls = type(_class_name(mn), (ThumbOp,), {"name": f"thumb.{mn}", "mnemonic": mn, "sigs": sigs,
                                             "__doc__": doc, "__module__": __name__})
    return DIALECT.op(cls)


OPS: dict[str, type[ThumbOp]] = {mn: _make(mn, sigs, sem) for mn, sigs, sem in _SPECS}


def print_asm(ops: list[Operation]) -> str:
    """GNU assembly for a list of thumb ops (functions, labels, instructions, directives)."""
    lines = [".syntax unified", ".thumb"]
    for op in ops:
        text = op.asm()  # type: ignore[attr-defined]
        if text:
            lines.append(text if text.endswith(":") or op.name == "thumb.func" else "    " + text)
    return "\n".join(lines) + "\n"


__all__ = ["DIALECT", "OPS", "Directive", "Func", "GetRegister", "It", "LabelOp", "ThumbOp", "print_asm"]
