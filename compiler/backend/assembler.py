"""The built-in assembler: GNU unified-syntax Thumb-2 text in, the bytes `arm-none-eabi-as` makes out.

    assemble("adds r0, r1, #1\\nbx lr\\n")  ==  b"\\x48\\x1c\\x70\\x47"

Two phases. The first parses every line into labels, directives and instructions (checking
mnemonics, operands and IT blocks) and picks the encoding of every instruction whose size does not
depend on a label. The second lays out the code repeatedly: a branch, literal load or `adr` starts
in its narrowest form and takes the narrowest form that reaches its target in each pass, until no
address changes; as in GNU as, a wide form chosen at an address that did not move is kept, so the
same instructions end up wide as there. Literal pools (`ldr rX, =value`) are placed at
`.ltorg` and at the end; `ldr rX, =c` becomes a `mov`/`mvn`/`movw` when the constant fits one,
as GNU as does. The instruction forms themselves live in `ml4f.dialects.thumb.encodings`.
"""

from __future__ import annotations

import operator
import re
import struct
from dataclasses import dataclass, field

from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.dialects.thumb.encodings import (
    COND,
    FORMS,
    S_SUFFIX,
    TWO_OPERAND,
    UNCONDITIONAL,
    DReg,
    Env,
    Form,
    Imm,
    Label,
    Mem,
    Reg,
    RegList,
    Reject,
    Shift,
    Special,
    SReg,
    SRegList,
    modimm,
    pattern_of,
)
from ml4f.dialects.thumb.registers import parse_core, parse_dreg, parse_sreg

# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class LineInfo:
    """Where one source line's bytes went: for listings, per-line diffs and cycle attribution."""

    line: int
    addr: int
    size: int
    text: str
    form: Form | None = None


@dataclass
class Assembly:
    """The assembled bytes, label addresses and a per-line map."""

    code: bytes
    labels: dict[str, int]
    lines: list[LineInfo]


def assemble(text: str, file: str = "<asm>") -> bytes:
    """Assemble GNU unified-syntax Thumb-2 text into raw bytes (as `as` + `objcopy -O binary`)."""
    return assemble_full(text, file).code


def assemble_full(text: str, file: str = "<asm>") -> Assembly:
    """Assemble and also return label addresses and where each line went."""
    return _Assembler(text, file).run()


# ----------------------------------------------------------------------------- parsing helpers

_LABEL_RE = re.compile(r"\s*([A-Za-z_.$][\w.$]*|\d+)\s*:")
_IT_RE = re.compile(r"it([te]{0,3})$")
_SHIFT_RE = re.compile(r"(lsl|lsr|asr|ror)\s*#?\s*(.+)$|rrx$", re.IGNORECASE)
_FLOAT_RE = re.compile(r"[-+]?(\d+\.\d*([eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+([eE][-+]?\d+)?|inf|nan)$", re.IGNORECASE)


class _AsmError(Exception):
    """A message plus the column (0-based, within the line) where it applies."""

    def __init__(self, message: str, col: int = -1):
        super().__init__(message)
        self.col = col


def _split_top(s: str, base_col: int) -> list[tuple[str, int]]:
    """Split at commas outside brackets/braces; each piece with its starting column."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append((s[start:i], start))
            start = i + 1
    out.append((s[start:], start))
    res = []
    for piece, off in out:
        lead = len(piece) - len(piece.lstrip())
        res.append((piece.strip(), base_col + off + lead))
    return res


_PREC = {"|": 1, "^": 2, "&": 3, "<<": 4, ">>": 4, "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_BINOPS = {"|": operator.or_, "^": operator.xor, "&": operator.and_, "<<": operator.lshift,
           ">>": operator.rshift, "+": operator.add, "-": operator.sub, "*": operator.mul,
           "/": lambda a, b: int(a / b), "%": operator.mod}


class _Expr:
    """A small integer expression evaluator: numbers, .equ names, + - * / % << >> & | ^ ~ ( )."""

    _TOK = re.compile(r"\s*(0[xX][0-9A-Fa-f]+|0[bB][01]+|\d+|[A-Za-z_.$][\w.$]*|<<|>>|'.'|[-+*/%&|^~()])")

    def __init__(self, text: str, consts: dict[str, int]):
        self.toks: list[str] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = self._TOK.match(text, pos)
            if not m:
                raise _AsmError(f"bad expression '{text}'")
            self.toks.append(m.group(1))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        self.consts = consts

    def parse(self) -> int:
        v = self.binary(0)
        if self.i != len(self.toks):
            raise _AsmError(f"unexpected '{self.toks[self.i]}' in expression")
        return v

    def binary(self, min_prec: int) -> int:
        lhs = self.unary()
        while self.i < len(self.toks) and _PREC.get(self.toks[self.i], 0) > min_prec:
            op = self.toks[self.i]
            self.i += 1
            rhs = self.binary(_PREC[op])
            if op in "/%" and rhs == 0:
                raise _AsmError("division by zero in expression")
            lhs = _BINOPS[op](lhs, rhs)
        return lhs

    def unary(self) -> int:
        if self.i >= len(self.toks):
            raise _AsmError("expression ends early")
        t = self.toks[self.i]
        self.i += 1
        if t == "-":
            return -self.unary()
        if t == "+":
            return self.unary()
        if t == "~":
            return ~self.unary()
        if t == "(":
            v = self.binary(0)
            if self.i >= len(self.toks) or self.toks[self.i] != ")":
                raise _AsmError("missing ')' in expression")
            self.i += 1
            return v
        if t[0].isdigit():
            return int(t, 0) if not (len(t) > 1 and t[0] == "0" and t[1].isdigit()) else int(t, 8)
        if t.startswith("'"):
            return ord(t[1])
        if t in self.consts:
            return self.consts[t]
        raise _AsmError(f"'{t}' is not a constant (labels are not allowed here)")


# ----------------------------------------------------------------------------- items


@dataclass
class _Lit:
    """`=value` before it is turned into a pool entry or a move."""

    value: int | Label


@dataclass
class _Ins:
    line: int
    col: int
    text: str
    mnemonic: str
    forms: list[Form]
    ops: list
    env: Env
    q: str | None
    dts: str
    op_cols: list[int]
    form_index: int = 0
    size: int = 0
    relax: bool = False
    # For relaxable instructions: the narrowest form that fits the operands, and whether GNU as's
    # rule has frozen the instruction in its wide form.
    min_index: int = 0
    frozen: bool = False


@dataclass
class _Data:
    line: int
    col: int
    width: int
    values: list  # int | float | Label
    kind: str = "int"


@dataclass
class _Align:
    line: int
    align: int
    fill: int | None = None


@dataclass
class _Space:
    line: int
    size: int
    fill: int = 0


@dataclass
class _Pool:
    line: int
    entries: list[tuple[str, int | Label]] = field(default_factory=list)
    # Where each entry was first asked for (for errors about its value).
    uses: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass
class _LabelDef:
    name: str
    line: int
    col: int


_IGNORED = {".syntax", ".thumb", ".text", ".global", ".globl", ".type", ".size", ".thumb_func", ".fpu",
            ".cpu", ".arch", ".eabi_attribute", ".file", ".code", ".func", ".endfunc", ".local", ".weak",
            ".hidden", ".ident", ".arm_func"}


class _Assembler:
    def __init__(self, text: str, file: str):
        self.file = file
        self.lines = text.split("\n")
        self.items: list = []
        self.labels_def: dict[str, _LabelDef] = {}
        self.consts: dict[str, int] = {}
        self.pool = _Pool(0)
        self.npools = 0
        # IT state: remaining (cond) expectations.
        self.it_conds: list[int] = []
        # The section's alignment: 2 once it holds an instruction, raised by .align and pools.
        self.section_align = 1
        # Labels marked by `.thumb_func`: their address as data (and for adr) has bit 0 set.
        self.thumb_funcs: set[str] = set()
        self.thumb_func_pending = False

    # -- errors

    def error(self, message: str, line: int, col: int) -> CompileError:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else None
        return CompileError(message, Loc(self.file, line, col + 1, line_text=text))

    # -- phase 1: parse

    def run(self) -> Assembly:
        self.label_names = {m.group(1) for line in self.lines
                            for m in re.finditer(r"(?:^|;)\s*([A-Za-z_.$][\w.$]*)\s*:", _strip_comment(line))}
        for no, raw in enumerate(self.lines, 1):
            try:
                self.parse_line(no, raw)
            except _AsmError as e:
                raise self.error(str(e), no, e.col if e.col >= 0 else _first_col(raw)) from None
        if self.it_conds:
            line, col = self.it_at
            raise self.error(f"IT block is not complete: {len(self.it_conds)} more instruction(s) expected "
                             "at the end of the file", line, col)
        self.flush_pool(len(self.lines))
        self.check_labels()
        return self.layout()

    def parse_line(self, no: int, raw: str) -> None:
        code = _strip_comment(raw)
        # `;` separates statements (ARM GNU syntax); columns stay those of the original line.
        start = 0
        for part in code.split(";"):
            self.parse_statement(no, part, start)
            start += len(part) + 1

    def parse_statement(self, no: int, s: str, base: int) -> None:
        pos = 0
        while True:
            m = _LABEL_RE.match(s, pos)
            if not m:
                break
            name = m.group(1)
            col = base + m.start(1)
            if name.isdigit():
                raise _AsmError(f"numeric local labels ('{name}:') are not supported; use a name", col)
            if name in self.labels_def:
                prev = self.labels_def[name]
                raise _AsmError(f"label '{name}' is already defined on line {prev.line}", col)
            if self.it_conds:
                raise _AsmError("a label inside an IT block", col)
            self.labels_def[name] = _LabelDef(name, no, col)
            if self.thumb_func_pending:
                self.thumb_funcs.add(name)
                self.thumb_func_pending = False
            self.items.append(self.labels_def[name])
            pos = m.end()
        rest = s[pos:]
        if not rest.strip():
            return
        col = base + pos + len(rest) - len(rest.lstrip())
        rest = rest.strip()
        m = re.match(r"(\S+)\s*(.*)$", rest, re.DOTALL)
        assert m
        word, args = m.group(1), m.group(2)
        args_col = col + (m.start(2) if m.group(2) else len(rest))
        if word.startswith("."):
            self.directive(no, col, word.lower(), args, args_col)
        else:
            self.instruction(no, col, word, args, args_col, rest)

    # -- directives

    def directive(self, no: int, col: int, d: str, args: str, args_col: int) -> None:
        if self.it_conds:
            raise _AsmError(f"directive {d} inside an IT block", col)
        if d == ".thumb_func":
            self.thumb_func_pending = True
            return
        if d in _IGNORED:
            if d == ".syntax" and args.strip().lower() != "unified":
                raise _AsmError("only '.syntax unified' is supported", args_col)
            if d == ".code" and args.strip() != "16":
                raise _AsmError("only Thumb code (.code 16) is supported", args_col)
            return
        if d == ".section":
            if not args.split(",")[0].strip().startswith(".text"):
                raise _AsmError("only the .text section is supported", args_col)
            return
        parts = _split_top(args, args_col) if args.strip() else []
        if d in (".word", ".long", ".4byte", ".int", ".short", ".hword", ".2byte", ".byte"):
            width = {".byte": 1, ".short": 2, ".hword": 2, ".2byte": 2}.get(d, 4)
            vals = []
            for text, c in parts:
                v = self.value_or_label(text, c)
                if isinstance(v, Label) and width != 4:
                    raise _AsmError(f"a label needs a 4-byte {'.word'} here", c)
                if isinstance(v, int) and not -(1 << (8 * width - 1)) <= v < (1 << 8 * width):
                    raise _AsmError(f"value {v} does not fit in {width} byte(s)", c)
                vals.append(v)
            self.items.append(_Data(no, col, width, vals))
        elif d in (".float", ".single"):
            vals = []
            for text, c in parts:
                try:
                    vals.append(float(text))
                except ValueError:
                    raise _AsmError(f"'{text}' is not a number", c) from None
            self.items.append(_Data(no, col, 4, vals, "float"))
        elif d in (".align", ".p2align", ".balign"):
            if not parts:
                raise _AsmError(f"{d} needs an alignment", args_col)
            n = self.const(*parts[0])
            if d == ".balign":
                if n <= 0 or n & (n - 1):
                    raise _AsmError(f".balign {n} is not a power of two", parts[0][1])
                align = n
            else:
                if not 0 <= n <= 16:
                    raise _AsmError(f"alignment 2**{n} out of range", parts[0][1])
                # GNU as for ARM reads `.align 0` as word alignment.
                align = 1 << n if n or d == ".p2align" else 4
            fill = self.const(*parts[1]) & 0xFF if len(parts) > 1 and parts[1][0] else None
            self.items.append(_Align(no, align, fill))
            self.section_align = max(self.section_align, align)
        elif d in (".space", ".skip", ".zero"):
            if not parts:
                raise _AsmError(f"{d} needs a size", args_col)
            n = self.const(*parts[0])
            if n < 0:
                raise _AsmError(f"negative size {n}", parts[0][1])
            fill = self.const(*parts[1]) & 0xFF if len(parts) > 1 else 0
            self.items.append(_Space(no, n, fill))
        elif d in (".ltorg", ".pool"):
            self.flush_pool(no)
        elif d in (".equ", ".set"):
            if len(parts) != 2 or not re.fullmatch(r"[A-Za-z_.$][\w.$]*", parts[0][0]):
                raise _AsmError(f"{d} NAME, VALUE", args_col)
            self.consts[parts[0][0]] = self.const(*parts[1])
        else:
            raise _AsmError(f"unknown directive '{d}'", col)

    def const(self, text: str, col: int) -> int:
        try:
            return _Expr(text, self.consts).parse()
        except _AsmError as e:
            raise _AsmError(str(e), col) from None

    def value_or_label(self, text: str, col: int) -> int | Label:
        m = re.match(r"([A-Za-z_.$][\w.$]*)\s*(?:([-+])(.*))?$", text)
        if m and m.group(1) not in self.consts:
            addend = 0
            if m.group(2):
                addend = self.const(m.group(3), col)
                addend = -addend if m.group(2) == "-" else addend
            return Label(m.group(1), addend)
        return self.const(text, col)

    def flush_pool(self, no: int) -> None:
        if self.pool.entries:
            self.pool.line = no
            self.items.append(self.pool)
            self.section_align = max(self.section_align, 4)
        self.npools += 1
        self.pool = _Pool(no)

    def pool_label(self, value: int | Label, line: int, col: int) -> Label:
        key = value if isinstance(value, Label) else value & 0xFFFFFFFF
        for name, v in self.pool.entries:
            if v == key:
                return Label(name)
        name = f".Lpool{self.npools}_{len(self.pool.entries)}"
        self.pool.entries.append((name, key))
        self.pool.uses[name] = (line, col)
        return Label(name)

    # -- instructions

    def split_mnemonic(self, word: str, col: int) -> tuple[str, bool, int | None, str | None, str]:
        """`addseq.w` -> ("add", True, 0, "w", ""); `vcvt.s32.f32` -> ("vcvt", False, None, None, "s32.f32")."""
        parts = word.lower().split(".")
        q = None
        if len(parts) > 1 and parts[-1] in ("w", "n"):
            q = parts.pop()
        head, dts = parts[0], ".".join(parts[1:])
        if _IT_RE.match(head):
            return head, False, None, q, dts
        cands = []
        for cond in [""] + list(COND):
            if cond and not head.endswith(cond):
                continue
            stem = head[:len(head) - len(cond)] if cond else head
            for s in ("", "s"):
                if s and not stem.endswith("s"):
                    continue
                base = stem[:-1] if s else stem
                if base in FORMS and (not s or base in S_SUFFIX):
                    cands.append((len(base), base, bool(s), COND[cond] if cond else None))
        if not cands:
            raise _AsmError(f"unknown mnemonic '{word}'", col)
        cands.sort(key=lambda c: (-(c[2] is False and c[3] is None), -c[0]))
        _, base, s, cond = cands[0]
        if cond == 14:
            cond = None
        return base, s, cond, q, dts

    def operand(self, text: str, col: int) -> object:
        low = text.lower()
        if not text:
            raise _AsmError("missing operand", col)
        if text.startswith(("#", "$")):
            body = text[1:].strip()
            if _FLOAT_RE.match(body):
                return Imm(float(body))
            return Imm(self.const(body, col + 1))
        if text.startswith("="):
            return _Lit(self.value_or_label(text[1:].strip(), col + 1))
        if text.startswith("{"):
            return self.reglist(text, col)
        if text.startswith("["):
            return self.memory(text, col)
        m = _SHIFT_RE.match(text)
        if m:
            if low == "rrx":
                return Shift("rrx", 0)
            return Shift(m.group(1).lower(), self.const(m.group(2), col))
        wb = text.endswith("!")
        name = text[:-1].strip() if wb else text
        r = parse_core(name)
        if r is not None:
            return Reg(r, wb)
        if wb:
            raise _AsmError(f"'{name}!' is not a core register with writeback", col)
        sr = parse_sreg(name)
        if sr is not None:
            return SReg(sr)
        if low in ("apsr_nzcv", "fpscr"):
            return Special(low)
        dr = parse_dreg(name)
        if dr is not None:
            return DReg(dr)
        if re.match(r"[dq]\d+$", low):
            raise _AsmError(f"register '{text}' is not supported (FPv4-SP: s0-s31, d0-d15 in vldr/vstr)",
                            col)
        if re.match(r"[-+]?\d", text):
            return Imm(self.const(text, col))
        return self.value_or_label(text, col)

    def reglist(self, text: str, col: int) -> RegList | SRegList:
        if not text.endswith("}"):
            raise _AsmError("missing '}' in register list", col)
        core: list[int] = []
        sregs: list[int] = []
        for item, c in _split_top(text[1:-1], col + 1):
            ends = [x.strip() for x in item.split("-")]
            if len(ends) > 2 or not ends[0]:
                raise _AsmError(f"bad register range '{item}'", c)
            a, b = ends[0], ends[-1]
            for parse, regs in ((parse_core, core), (parse_sreg, sregs)):
                ra, rb = parse(a), parse(b)
                if ra is not None and rb is not None:
                    if rb < ra:
                        raise _AsmError(f"register range '{item}' is backwards", c)
                    regs.extend(range(ra, rb + 1))
                    break
            else:
                raise _AsmError(f"'{item}' is not a register", c)
        if core and sregs:
            raise _AsmError("a register list mixes core and S registers", col)
        if sregs:
            if sregs != sorted(sregs) or len(set(sregs)) != len(sregs):
                raise _AsmError("S register list must be in increasing order", col)
            return SRegList(tuple(sregs))
        if not core:
            raise _AsmError("empty register list", col)
        return RegList(tuple(core))

    def memory(self, text: str, col: int) -> Mem:
        wb = text.endswith("!")
        body = text[:-1].rstrip() if wb else text
        if not body.endswith("]"):
            raise _AsmError("missing ']' in memory operand", col)
        parts = _split_top(body[1:-1], col + 1)
        base = parse_core(parts[0][0])
        if base is None:
            raise _AsmError(f"'{parts[0][0]}' is not a base register", parts[0][1])
        if len(parts) == 1:
            if wb:
                raise _AsmError("writeback needs an offset", col)
            return Mem(base)
        off_text, c = parts[1]
        if off_text.startswith("#"):
            if len(parts) > 2:
                raise _AsmError("unexpected operand after the offset", parts[2][1])
            body = off_text[1:].strip()
            v = self.const(body, c + 1)
            return Mem(base, v, wb=wb, neg_zero=v == 0 and body.startswith("-"))
        idx = parse_core(off_text)
        if idx is None:
            raise _AsmError(f"'{off_text}' is not an offset (#imm or a register)", c)
        shift = 0
        if len(parts) > 2:
            m = _SHIFT_RE.match(parts[2][0])
            if not m or (m.group(1) or "").lower() != "lsl":
                raise _AsmError("an index register can only be shifted with lsl #0-3", parts[2][1])
            shift = self.const(m.group(2), parts[2][1])
        if wb:
            raise _AsmError("register-offset addressing has no writeback in Thumb", col)
        return Mem(base, 0, idx, shift, shifted=len(parts) > 2)

    def instruction(self, no: int, col: int, word: str, args: str, args_col: int, text: str) -> None:
        self.cur_line = no
        base, s, cond, q, dts = self.split_mnemonic(word, col)
        pieces = _split_top(args, args_col) if args.strip() else []
        if _IT_RE.match(base):
            self.it_instruction(no, col, base, pieces, text)
            return
        in_it = bool(self.it_conds)
        if in_it:
            want = self.it_conds.pop(0)
            if cond != want:
                have = "no condition" if cond is None else f"condition '{_cond_name(cond)}'"
                raise _AsmError(f"instruction in an IT block must have condition '{_cond_name(want)}', "
                                f"has {have}", col)
            if base in UNCONDITIONAL:
                raise _AsmError(f"{base} cannot be conditional or inside an IT block", col)
            if base in ("b", "bx", "blx", "bl") and self.it_conds:
                raise _AsmError("a branch must be the last instruction of an IT block", col)
        elif cond is not None and base != "b":
            raise _AsmError(f"conditional '{word}' outside an IT block", col)
        ops = [self.operand(p, c) for p, c in pieces]
        cols = [c for _, c in pieces]
        if not any(isinstance(o, _Lit) for o in ops) and \
                not any(f.pattern == pattern_of(ops) for f in FORMS[base]):
            # A label may be named like a register (`b s0`): read it as the label GNU as sees.
            alt = [Label(p) if isinstance(o, (Reg, SReg)) and p in self.label_names else o
                   for o, (p, _) in zip(ops, pieces)]
            if any(f.pattern == pattern_of(alt) for f in FORMS[base]):
                ops = alt
        # Post-indexed `[rn], #imm`.
        if len(ops) >= 2 and isinstance(ops[-1], Imm) and isinstance(ops[-2], Mem) and \
                re.fullmatch(r"\[\s*\w+\s*\]", pieces[-2][0]) and pieces[-1][0].startswith("#"):
            m, imm = ops[-2], ops[-1]
            if not isinstance(imm.value, int):
                raise _AsmError("post-index offset must be an integer", cols[-1])
            ops[-2:] = [Mem(m.base, int(imm.value), pre=False)]
            cols = cols[:-1]
        env = Env(s=s, cond=cond, in_it=in_it, it_last=in_it and not self.it_conds, q=q)
        if any(isinstance(o, _Lit) for o in ops):
            ops, base, q = self.literal(base, ops, q, cols, env)
            env.q = q
        pat = pattern_of(ops)
        if base in TWO_OPERAND and pat in ("rr", "ri", "rrh", "ss"):
            # `op rd, x` is `op rd, rd, x`; GNU as reads `mul rd, rm` as `mul rd, rm, rd`.
            at = 2 if base == "mul" else 1
            ops.insert(at, ops[0])
            cols.insert(at, cols[0])
        ins = _Ins(no, col, text, base, FORMS[base], ops, env, q, dts, cols)
        self.section_align = max(self.section_align, 2)
        self.select(ins, first=True)
        self.items.append(ins)

    def it_instruction(self, no: int, col: int, base: str, pieces: list, text: str) -> None:
        if self.it_conds:
            raise _AsmError("IT inside an IT block", col)
        if len(pieces) != 1 or pieces[0][0].lower() not in COND or pieces[0][0].lower() == "al":
            raise _AsmError(f"{base} needs one condition (eq, ne, ...)", pieces[0][1] if pieces else col)
        first = COND[pieces[0][0].lower()]
        letters = base[2:]
        mask = 0
        conds = [first]
        for i, ch in enumerate(letters):
            bit = (first & 1) if ch == "t" else (~first & 1)
            mask |= bit << (3 - i)
            conds.append(first if ch == "t" else first ^ 1)
        mask |= 1 << (3 - len(letters))
        self.it_conds = conds
        self.it_at = (no, col)
        env = Env()
        ins = _Ins(no, col, text, "it", FORMS["it"], [Imm(first << 4 | mask)], env, None, "", [col])
        self.section_align = max(self.section_align, 2)
        self.select(ins, first=True)
        self.items.append(ins)

    def literal(self, base: str, ops: list, q: str | None, cols: list[int], env: Env) -> tuple:
        lit_i = next(i for i, o in enumerate(ops) if isinstance(o, _Lit))
        if base != "ldr" or len(ops) != 2 or lit_i != 1 or not isinstance(ops[0], Reg):
            raise _AsmError("'=value' literals work only with 'ldr rX, =value'", cols[lit_i])
        v = ops[1].value
        if isinstance(v, int):
            if not -(1 << 31) <= v < (1 << 32):
                raise _AsmError(f"literal {v} does not fit in 32 bits", cols[1])
            u = v & 0xFFFFFFFF
            # GNU as turns a constant a move can make into that move (never a flag-setting one).
            if q != "n" and not env.s:
                if modimm(u) is not None:
                    return [ops[0], Imm(u)], "mov", "w"
                if modimm(~u & 0xFFFFFFFF) is not None:
                    return [ops[0], Imm(~u & 0xFFFFFFFF)], "mvn", "w"
                if u <= 0xFFFF:
                    return [ops[0], Imm(u)], "movw", None
        return [ops[0], self.pool_label(v, self.cur_line, cols[1])], "ldr", q

    # -- encoding choice

    def form_fits(self, ins: _Ins, f: Form, env: Env) -> str | None:
        """None when form `f` can encode `ins` in `env`, else the reason it cannot."""
        if ins.q == "n" and f.size != 2 or ins.q == "w" and f.size != 4:
            return f"no {'16' if ins.q == 'n' else '32'}-bit encoding"
        if f.pattern != pattern_of(ins.ops):
            return "operands"
        if (f.dts or ("",)).count(ins.dts) == 0 if f.dts else ins.dts != "":
            return "type"
        s = ins.env.s
        if f.flags == "t" and s == ins.env.in_it:
            return "flags in IT block" if ins.env.in_it else "needs s suffix"
        if f.flags in "nc" and s:
            return "no flag-setting form"
        try:
            f.encode(ins.ops, env)
        except Reject as r:
            return str(r) or "does not fit"
        return None

    def select(self, ins: _Ins, first: bool = False, env: Env | None = None) -> bool:
        """Pick the first form that fits, from the narrowest candidate; True when it changed."""
        env = env or ins.env
        reasons: list[str] = []
        for i in range(ins.min_index, len(ins.forms)):
            f = ins.forms[i]
            why = self.form_fits(ins, f, env)
            if why is None:
                changed = i != ins.form_index or not ins.size
                ins.form_index, ins.size = i, f.size
                if first:
                    ins.relax = any(g.relax for g in ins.forms[i:])
                    ins.min_index = i
                return changed
            reasons.append(why)
        raise _AsmError(self.explain(ins, reasons), self.blame_col(ins, reasons))

    def explain(self, ins: _Ins, reasons: list[str]) -> str:
        pat = pattern_of(ins.ops)
        matching = [f for f in ins.forms if f.pattern == pat]
        name = ins.text.split()[0]
        if ins.dts and all(f.dts is None for f in ins.forms):
            return f"'{name}' takes no data type suffix"
        if not matching:
            shapes = sorted({f.syntax for f in ins.forms})
            return f"'{name}' does not take these operands (forms: {'; '.join(shapes[:6])})"
        telling = _telling(reasons)
        if telling:
            return f"cannot encode '{ins.text.strip()}': {telling}"
        if any(r == "type" for r in reasons):
            types = sorted({d for f in matching for d in (f.dts or ()) if d})
            return f"'{name}' needs a data type suffix: {', '.join('.' + t for t in types)}"
        return f"cannot encode '{ins.text.strip()}': {reasons[-1]}"

    def blame_col(self, ins: _Ins, reasons: list[str]) -> int:
        last = _telling(reasons) or ""
        for i, o in enumerate(ins.ops):
            if isinstance(o, (Imm, Mem, Label, Shift)) and ("range" in last or "immediate" in last
                                                            or "offset" in last or "literal" in last
                                                            or "shift" in last or "label" in last):
                return ins.op_cols[i]
        if "[" in last or "base" in last:
            for i, o in enumerate(ins.ops):
                if isinstance(o, Mem):
                    return ins.op_cols[i]
        if "sp " in last or "pc " in last or "r0-r7" in last or "register" in last:
            for i, o in enumerate(ins.ops):
                if isinstance(o, Reg) and o.n >= 8:
                    return ins.op_cols[i]
        return ins.col

    # -- labels

    def thumb_bit(self, v: object) -> object:
        """A label of a Thumb function as a data value or adr target: its address + 1."""
        return Label(v.name, v.addend + 1) if isinstance(v, Label) and v.name in self.thumb_funcs else v

    def check_labels(self) -> None:
        for it in self.items:
            if isinstance(it, _Ins) and it.mnemonic == "adr":
                it.ops = [self.thumb_bit(o) for o in it.ops]
            elif isinstance(it, _Data):
                it.values = [self.thumb_bit(v) for v in it.values]
            elif isinstance(it, _Pool):
                it.entries = [(name, self.thumb_bit(v)) for name, v in it.entries]
        pools = {name for it in self.items if isinstance(it, _Pool) for name, _ in it.entries}
        for it in self.items:
            if isinstance(it, _Ins):
                for o, c in zip(it.ops, it.op_cols):
                    if isinstance(o, Label) and o.name not in self.labels_def and o.name not in pools:
                        raise self.error(f"undefined label '{o.name}'", it.line, c)
            elif isinstance(it, _Data):
                for v in it.values:
                    if isinstance(v, Label) and v.name not in self.labels_def:
                        raise self.error(f"undefined label '{v.name}'", it.line, it.col)
            elif isinstance(it, _Pool):
                for name, v in it.entries:
                    if isinstance(v, Label) and v.name not in self.labels_def:
                        line, col = it.uses[name]
                        raise self.error(f"undefined label '{v.name}'", line, col + 1)

    # -- phase 2: layout and emission

    def layout(self) -> Assembly:
        """Relax until stable, the way GNU as does (so the same instructions end up wide).

        Every pass re-picks the narrowest form that reaches its target, except that a wide form is
        frozen once chosen at an address no later than in the previous pass. A label not yet
        reached in a pass is taken at its previous address plus the growth of the code before
        this point (the "stretch"), rounded down to any alignment in between.
        """
        items = self.items
        label_index = {it.name: i for i, it in enumerate(items) if isinstance(it, _LabelDef)}
        # A pool's entries come after its alignment padding, which the stretch rule must see.
        label_index.update({name: i + 1 for i, it in enumerate(items) if isinstance(it, _Pool)
                            for name, _ in it.entries})
        aligns = [0] * len(items)
        for i, it in enumerate(items):
            if isinstance(it, _Align):
                aligns[i] = it.align
            elif isinstance(it, _Pool):
                aligns[i] = 4
        span_max = _RangeMax(aligns)
        prev_addr, labels = self.addresses()
        for _ in range(1000):
            state = _RelaxPass(labels, {}, label_index, span_max)
            new_labels = state.new
            new_addr = [0] * len(items)
            changed = False
            addr = 0
            for i, it in enumerate(items):
                new_addr[i] = addr
                state.here, state.stretch = i, addr - prev_addr[i]
                stretch = state.stretch
                if isinstance(it, _LabelDef):
                    new_labels[it.name] = addr
                elif isinstance(it, _Ins):
                    if it.relax and not it.frozen:
                        env = _env_at(it.env, addr, state.resolve, False)
                        try:
                            changed |= self.select(it, env=env)
                        except _AsmError:
                            # Out of reach even when wide: keep the widest form; emit() reports it.
                            changed |= self.widest(it)
                        if it.size > 2 and stretch <= 0:
                            it.frozen = True
                            it.min_index = it.form_index
                    addr += it.size
                else:
                    addr = _advance(it, addr, new_labels)
            if not changed and new_labels == labels and new_addr == prev_addr:
                break
            labels, prev_addr = new_labels, new_addr
        else:
            raise CompileError("code layout did not converge", Loc(self.file))
        return self.emit(labels)

    def widest(self, ins: _Ins) -> bool:
        """Choose the widest form that fits the operands regardless of label distance."""
        for i in range(len(ins.forms) - 1, ins.min_index - 1, -1):
            if self.form_fits(ins, ins.forms[i], ins.env) is None:
                changed = i != ins.form_index
                ins.form_index, ins.size = i, ins.forms[i].size
                return changed
        return False

    def addresses(self) -> tuple[list[int], dict[str, int]]:
        """Item addresses and label values with the current instruction sizes."""
        out, labels, addr = [], {}, 0
        for it in self.items:
            out.append(addr)
            if isinstance(it, _LabelDef):
                labels[it.name] = addr
            elif isinstance(it, _Ins):
                addr += it.size
            else:
                addr = _advance(it, addr, labels)
        return out, labels

    def emit(self, labels: dict[str, int]) -> Assembly:
        out = bytearray()
        lines: list[LineInfo] = []

        def resolve(lab: Label) -> int | None:
            a = labels.get(lab.name)
            return None if a is None else a + lab.addend

        for it in self.items:
            addr = len(out)
            if isinstance(it, _LabelDef):
                continue
            if isinstance(it, _Ins):
                f = it.forms[it.form_index]
                env = _env_at(it.env, addr, resolve, True)
                try:
                    out += f.emit(it.ops, env)
                except Reject as r:
                    raise self.error(f"cannot encode '{it.text.strip()}': {r}", it.line,
                                     self.blame_col(it, [str(r)])) from None
                lines.append(LineInfo(it.line, addr, f.size, it.text, f))
            elif isinstance(it, _Data):
                for v in it.values:
                    if isinstance(v, Label):
                        v = resolve(v)
                    if it.kind == "float":
                        out += struct.pack("<f", v)
                    else:
                        out += (int(v) & ((1 << 8 * it.width) - 1)).to_bytes(it.width, "little")
                lines.append(LineInfo(it.line, addr, len(out) - addr, self.lines[it.line - 1]))
            elif isinstance(it, _Pool):
                # GNU as pads before a literal pool with zeros, not nops.
                out += bytes((-addr) % 4)
                for name, v in it.entries:
                    labels.setdefault(name, len(out))
                    val = resolve(v) if isinstance(v, Label) else v
                    out += (int(val) & 0xFFFFFFFF).to_bytes(4, "little")
            elif isinstance(it, _Align):
                out += _fill(addr, (-addr) % it.align, it.fill)
            elif isinstance(it, _Space):
                out += bytes([it.fill]) * it.size
        # GNU as pads the end of the section to its alignment (at most a word), with code fill.
        out += _fill(len(out), (-len(out)) % min(4, self.section_align), None)
        visible = {k: v for k, v in labels.items() if not k.startswith(".Lpool")}
        return Assembly(bytes(out), visible, lines)


@dataclass
class _RelaxPass:
    """Label values during one relaxation pass (see `_Assembler.layout`)."""

    old: dict[str, int]
    new: dict[str, int]
    label_index: dict[str, int]
    span_max: _RangeMax
    here: int = 0
    stretch: int = 0

    def resolve(self, lab: Label) -> int | None:
        a = self.new.get(lab.name)
        if a is None:
            old = self.old.get(lab.name)
            if old is None:
                return None
            st = self.stretch
            if st:
                m = self.span_max.query(self.here + 1, self.label_index[lab.name])
                if m > 1:
                    st = st & ~(m - 1) if st > 0 else -((-st) & ~(m - 1))
            a = old + st
        return a + lab.addend


class _RangeMax:
    """Maximum over index ranges in O(1) (a sparse table), for alignment lookups while relaxing."""

    def __init__(self, values: list[int]):
        self.table = [list(values)]
        k = 1
        while (1 << k) <= len(values):
            prev = self.table[-1]
            half = 1 << (k - 1)
            self.table.append([max(prev[i], prev[i + half]) for i in range(len(values) - (1 << k) + 1)])
            k += 1

    def query(self, lo: int, hi: int) -> int:
        """max(values[lo:hi]), 0 for an empty range."""
        if hi <= lo:
            return 0
        k = (hi - lo).bit_length() - 1
        row = self.table[k]
        return max(row[lo], row[hi - (1 << k)])


def _telling(reasons: list[str]) -> str | None:
    """The reason worth reporting: the widest form's (e.g. an immediate out of range), unless it
    only names the operand shape or flag/condition rules that form wants."""
    specific = [r for r in reasons if r not in ("operands", "type") and "-bit encoding" not in r
                and "condition" not in r and "flag" not in r and r != "conditional"]
    telling = [r for r in specific if not r.startswith("needs")] or specific
    return telling[-1] if telling else None


def _env_at(env: Env, addr: int, resolve, final: bool) -> Env:
    return Env(s=env.s, cond=env.cond, in_it=env.in_it, it_last=env.it_last, q=env.q, addr=addr,
               resolve=resolve, final=final)


def _advance(it: object, addr: int, labels: dict[str, int]) -> int:
    if isinstance(it, _Data):
        return addr + it.width * len(it.values)
    if isinstance(it, _Pool):
        addr += (-addr) % 4
        for name, _ in it.entries:
            labels[name] = addr
            addr += 4
        return addr
    if isinstance(it, _Align):
        return addr + (-addr) % it.align
    if isinstance(it, _Space):
        return addr + it.size
    raise AssertionError(it)


def _fill(addr: int, n: int, fill: int | None) -> bytes:
    """Alignment padding: the given byte, or what GNU as puts in Thumb code (0x00 to reach an even
    address, then one `nop` (bf00) to reach a word, then `nop.w` (f3af 8000))."""
    if fill is not None:
        return bytes([fill]) * n
    out = bytearray()
    if n and (addr + len(out)) & 1:
        out += b"\x00"
    while len(out) < n:
        left = n - len(out)
        if (addr + len(out)) % 4 == 2 or left < 4:
            out += b"\x00\xbf"
        else:
            out += b"\xaf\xf3\x00\x80"
    return bytes(out[:n])


def _strip_comment(line: str) -> str:
    """Drop `@ ...` and `// ...` comments, `/* ... */` on one line, and lines starting with `#`."""
    if line.lstrip().startswith("#"):
        return ""
    line = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group(0)), line)
    for marker in ("@", "//"):
        i = line.find(marker)
        if i >= 0:
            line = line[:i]
    return line


def _first_col(line: str) -> int:
    return len(line) - len(line.lstrip())


def _cond_name(c: int) -> str:
    from ml4f.dialects.thumb.encodings import COND_NAMES

    return COND_NAMES[c]


__all__ = ["Assembly", "LineInfo", "assemble", "assemble_full"]
