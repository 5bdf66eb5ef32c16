"""The assembler's API, its errors, the ml4f-as command, and the Thumb dialect (IR <-> assembly)."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from thumb_corpus import AS, gnu_run

from ml4f.compiler.backend.assembler import assemble, assemble_full
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import verify_module
from ml4f.compiler.printer import print_module
from ml4f.dialects.thumb import OPS, print_asm
from ml4f.dialects.thumb.encodings import FORMS, Cost
from ml4f.dialects.thumb.registers import RegType, SRegType

needs_as = pytest.mark.skipif(AS is None, reason="arm-none-eabi-as (binutils-arm-none-eabi) is needed")

# ----------------------------------------------------------------------------- API


def test_assemble_returns_the_bytes() -> None:
    assert assemble("adds r0, r1, #1\nbx lr\n") == bytes.fromhex("481c7047")
    assert assemble("add r0, r1, #1\n") == bytes.fromhex("01f10100")  # outside IT: add.w


def test_assemble_full_labels_and_lines() -> None:
    a = assemble_full(".syntax unified\n.thumb\nstart: movs r0, #0\nloop:\n adds r0, #1\n"
                      " cmp r0, #10\n bne loop\n ldr r1, =0x12345678\n bx lr\n", "k.s")
    assert a.labels == {"start": 0, "loop": 2}
    assert [(li.line, li.addr, li.size) for li in a.lines] == [(3, 0, 2), (5, 2, 2), (6, 4, 2), (7, 6, 2),
                                                              (8, 8, 2), (9, 10, 2)]
    assert a.code[12:16] == bytes.fromhex("78563412")  # the literal pool at the end
    assert a.lines[3].form.cycles == Cost(1, branch=True)


def test_comments_separators_and_equ() -> None:
    text = "@ comment\n.equ N, 3 * 4\n movs r0, #N // trailing\n /* c */ adds r0, #1; bx lr\n"
    assert assemble(text) == bytes.fromhex("0c20") + bytes.fromhex("0130") + bytes.fromhex("7047")


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text, where, message", [
    ("  addz r0, r1\n", "1:3", "unknown mnemonic 'addz'"),
    ("nop\n  adds r0, r1, #0x12345\n", "2:16", "cannot be encoded as a Thumb-2 modified immediate"),
    ("  movw r0, #70000\n", "1:12", "out of range 0..65535"),
    ("  lsl r0, r1, #32\n", "1:15", "out of range"),
    ("  ldr r0, [r1, #4096]\n", "1:11", "out of range"),
    ("  ldrd r0, r1, [r2, #6]\n", "1:16", "multiple of 4"),
    ("back: nop\n  cbz r0, back\n", "2:11", "out of range 0..126"),
    ("  bne far\n  .space 1100000\nfar: nop\n", "1:7", "out of range"),
    ("  vldr s0, odd\n  .byte 1\nodd: .byte 2\n", "1:12", "misaligned"),
    ("  b nowhere\n", "1:5", "undefined label 'nowhere'"),
    ("  ldr r0, =missing\n", "1:12", "undefined label 'missing'"),
    ("  ldrb sp, [r0]\n", "1:8", "sp is not allowed"),
    ("  add pc, r1, #1\n", "1:7", "pc is not allowed"),
    ("  vmov.f32 s0, #0.1\n", "1:16", "cannot be encoded as a VFP immediate"),
    ("  addeq r0, r1\n", "1:3", "outside an IT block"),
    ("  it eq\n  addne r0, r1\n", "2:3", "must have condition 'eq'"),
    ("  it eq\n", "1:3", "IT block is not complete"),
    ("  .foo 1\n", "1:3", "unknown directive '.foo'"),
    (".syntax divided\n", "1:9", "only '.syntax unified'"),
    ("  vadd.f32 q0, q1, q2\n", "1:12", "not supported"),
    ("  vldr d16, [r0]\n", "1:8", "not supported"),
    ("  vadd.f32 d0, d1, d2\n", "1:3", "forms: vadd.f32 Sd, Sn, Sm"),
    ("  vldr d1, [r0, #2]\n", "1:12", "multiple of 4"),
    ("x: nop\nx: nop\n", "2:1", "already defined on line 1"),
    ("  push {r4-r2}\n", "1:9", "backwards"),
    ("  .byte 256\n", "1:9", "does not fit"),
    ("  vadd s0, s1, s2\n", "1:3", "needs a data type suffix: .f32"),
    ("  add r0, r1, #1, #2\n", "1:3", "does not take these operands"),
    ("  ldr r0, [r0], #4\n", "1:11", "base register cannot also be the transferred register"),
    ("  vldr s0, [r1, r2]\n", "1:12", "vldr/vstr take [Rn{, #±imm}] only"),
    ("  bkpteq #1\n", "1:3", "outside an IT block"),
])
def test_errors_are_one_line_with_location(text: str, where: str, message: str) -> None:
    with pytest.raises(CompileError) as e:
        assemble(text, "bad.s")
    line = e.value.one_line()
    assert "\n" not in line
    assert line.startswith(f"bad.s:{where}: error: "), line
    assert message in line, line


def test_error_render_shows_a_caret() -> None:
    with pytest.raises(CompileError) as e:
        assemble("nop\n  movs r0, #x\n", "k.s")
    rendered = e.value.render().split("\n")
    assert rendered[0].startswith("k.s:2:13: error:")
    assert rendered[1] == "  movs r0, #x"
    assert rendered[2] == " " * 12 + "^"


# ----------------------------------------------------------------------------- cycle costs


@pytest.mark.parametrize("mn, cost", [
    ("add", "1"), ("mul", "1"), ("smlad", "1"), ("sdiv", "2-12"), ("udiv", "2-12"), ("ldr", "2"),
    ("str", "1-2"), ("ldrd", "3"), ("strd", "3"), ("ldm", "1+N"), ("push", "1+N"), ("pop", "1+N"),
    ("b", "1+P"), ("bl", "1+P"), ("bx", "1+P"), ("cbz", "1+P"), ("vadd", "1"), ("vmul", "1"),
    ("vcvt", "1"), ("vmov", "1"), ("vmla", "3"), ("vfma", "3"), ("vdiv", "14"), ("vsqrt", "14"),
    ("vldr", "2"), ("vstr", "2"), ("vldm", "1+N"), ("vpush", "1+N"),
])
def test_cycle_costs_follow_design(mn: str, cost: str) -> None:
    """DESIGN §6: every form of these mnemonics declares the Cortex-M4 TRM cost."""
    forms = [f for f in FORMS[mn] if not (mn == "vmov" and f.pattern in ("ssrr", "rrss"))
             and f.pattern != "dm"]
    assert {str(f.cycles) for f in forms} == {cost}
    # table 7-1: the 64-bit (D register) loads and stores take 3
    assert {str(f.cycles) for f in FORMS[mn] if f.pattern == "dm"} <= {"3"}


# ----------------------------------------------------------------------------- ml4f-as


def _run_as(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml4f.tools.ml4f_as", *args], capture_output=True, text=True,
                          check=False)


KERNEL = """\
    .syntax unified
    .thumb
    .thumb_func
dot:                        @ r0 = a, r1 = b, r2 = n: s0 = sum a[i] * b[i]
    vmov.f32 s0, #1.0
    vsub.f32 s0, s0, s0
    cbz r2, done
loop:
    vldmia r0!, {s2}
    vldmia r1!, {s3}
    vmla.f32 s0, s2, s3
    subs r2, r2, #1
    bne loop
done:
    ldr r3, =0x3f800000
    vmov s4, r3
    vadd.f32 s0, s0, s4
    bx lr
"""


@needs_as
def test_ml4f_as_writes_what_gnu_as_writes(tmp_path: Path) -> None:
    src = tmp_path / "k.s"
    src.write_text(KERNEL)
    r = _run_as(str(src), "-o", str(tmp_path / "k.bin"), "--symbols")
    assert r.returncode == 0, r.stderr
    assert "00000000 dot" in r.stdout and re.search(r"0000000a loop", r.stdout), r.stdout
    gnu = gnu_run(KERNEL)
    assert (tmp_path / "k.bin").read_bytes() == gnu.code


def test_ml4f_as_error_is_one_line_with_status_1(tmp_path: Path) -> None:
    src = tmp_path / "bad.s"
    src.write_text("nop\n  ldr r0, [r1, #5000]\n")
    r = _run_as(str(src), "-o", str(tmp_path / "bad.bin"))
    assert r.returncode == 1
    assert r.stderr.splitlines()[0].startswith(f"{src}:2:11: error: cannot encode"), r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "bad.bin").exists()


# ----------------------------------------------------------------------------- the dialect

IMM = {"ssat": 8, "usat": 7, "bkpt": 1, "movw": 0x1234, "movt": 0xABCD, "lsl": 3, "lsr": 3, "asr": 3,
       "ror": 3, "addw": 0x123, "subw": 0x123, "vcvt": 16}
SHIFT = {"sxtb16": "ror #8", "uxtb16": "ror #16", "sxtab16": "ror #8", "uxtab16": "ror #24", "sxtb": "ror #8",
         "uxtb": "ror #8", "sxth": "ror #16", "uxth": "ror #16", "pkhbt": "lsl #8", "pkhtb": "asr #16",
         "ssat": "asr #2", "usat": "lsl #1"}


def _instance_lines(mn: str, sig: str, rng: random.Random, k: int) -> list[str]:
    """One op of signature `sig` in the generic syntax, on distinct allocated registers."""
    core = [f"r{i}" for i in rng.sample(range(8), 8)]
    sregs = [f"s{i}" for i in rng.sample(range(32), 32)]
    defs, uses, attrs, pre = [], [], {}, []
    toks = [t.strip() for t in sig.split(",")] if sig else []
    wb_base = None
    base = mn.split(".")[0]

    def use(t: str) -> str:
        name = f"%u{k}_{len(uses)}"
        pre.append(f"  {name} = thumb.get_register : {t}")
        uses.append(name)
        return t

    for t in toks:
        if t in ("D", "Ds"):
            defs.append(f"!thumb.reg<{core.pop()}>" if t == "D" else f"!thumb.sreg<{sregs.pop()}>")
        elif t == "Dd":   # a D register: an even S register and the next one
            n0 = 2 * rng.randint(0, 15)
            defs += [f"!thumb.sreg<s{n0}>", f"!thumb.sreg<s{n0 + 1}>"]
        elif t in ("U", "Us"):
            use(f"!thumb.reg<{core.pop()}>" if t == "U" else f"!thumb.sreg<{sregs.pop()}>")
        elif t in ("T", "Ts"):
            ty = f"!thumb.reg<{core.pop()}>" if t == "T" else f"!thumb.sreg<{sregs.pop()}>"
            use(ty)
            defs.append(ty)
        elif t == "I":
            attrs["imm"] = IMM.get(base, 4)
        elif t == "F":
            attrs["imm"] = 0.0 if base.startswith("vcmp") else 1.5
        elif t == "SH":
            attrs["shift"] = f'"{SHIFT.get(base, "lsl #2")}"'
        elif t in ("M", "M0"):
            wb_base = use(f"!thumb.reg<{core.pop()}>")
            attrs["offset"] = 8
            if t == "M" and base in ("ldr", "str", "ldrd", "strd") and rng.random() < 0.5:
                attrs["mode"] = '"pre"' if rng.random() < 0.5 else '"post"'
        elif t == "M!":
            wb_base = use(f"!thumb.reg<{core.pop()}>")
            # (vldmdb/vstmdb exist only with writeback)
            if base in ("vldmdb", "vstmdb") or base not in ("push", "pop") and rng.random() < 0.5:
                attrs["writeback"] = "true"
        elif t == "L":
            attrs["target"] = f"@fwd{k}"
        elif t.endswith("*"):
            regs = sorted([core.pop(), core.pop()], key=lambda r: int(r[1:]))
            for r in regs:
                if t.startswith("D"):
                    defs.append(f"!thumb.reg<{r}>" if t == "D*" else f"!thumb.sreg<{sregs.pop()}>")
                else:
                    use(f"!thumb.reg<{r}>" if t == "U*" else f"!thumb.sreg<{sregs.pop()}>")
    sdefs = [d for d in defs if d.startswith("!thumb.sreg")]
    if sdefs and any(tok.endswith("*") for tok in toks):  # VFP register lists are consecutive
        n0 = rng.randint(0, 20)
        defs = [f"!thumb.sreg<s{n0 + i}>" for i in range(len(sdefs))]
    if any(tok == "Us*" for tok in toks):
        n0 = rng.randint(0, 20)
        for i, line in enumerate(pre):
            if "sreg" in line:
                pre[i] = re.sub(r"<s\d+>", f"<s{n0 + i}>", line)
    if "mode" in attrs or "writeback" in attrs:
        defs.append(wb_base)
    if base == "vmov" and toks.count("Ds") == 2:  # vmov s4, s5, r0, r1: consecutive S registers
        n0 = rng.randint(0, 30)
        defs = [f"!thumb.sreg<s{n0}>", f"!thumb.sreg<s{n0 + 1}>"]
    if base == "vmov" and toks.count("Us") == 2:
        n0 = rng.randint(0, 30)
        for i, line in enumerate(pre):
            pre[i] = re.sub(r"<s\d+>", f"<s{n0 + i}>", line)
    res = ", ".join(f"%d{k}_{i}" for i in range(len(defs)))
    attr_text = " {" + ", ".join(f"{a} = {v}" for a, v in attrs.items()) + "}" if attrs else ""
    line = (f"  {res} = " if defs else "  ") + f"thumb.{mn}" + (" " + ", ".join(uses) if uses else "") + \
        attr_text + (" : " + ", ".join(defs) if defs else "")
    post = []
    if "target" in attrs:
        # Branch forwards (cbz/cbnz only reach forwards) to a word-aligned label (vldr needs one).
        post = ['  thumb.directive {text = ".align 2"}', f"  thumb.label @fwd{k}"]
    return pre + [line] + post


def _all_ops_module(seed: int) -> str:
    rng = random.Random(seed)
    body = []
    k = 0
    for mn, cls in sorted(OPS.items()):
        for sig in cls.sigs:
            body += _instance_lines(mn, sig, rng, k)
            k += 1
    return "thumb.func @all {\n" + "\n".join(body) + "\n}\n"


def test_every_op_round_trips() -> None:
    text = _all_ops_module(0)
    module = parse(text, "all.l4f")
    verify_module(module)
    printed = print_module(module)
    assert printed == text
    assert print_module(parse(printed)) == printed


@needs_as
@pytest.mark.parametrize("seed", range(3))
def test_every_op_prints_assembly_gnu_as_accepts_with_same_bytes(seed: int) -> None:
    module = parse(_all_ops_module(seed), "all.l4f")
    verify_module(module)
    asm = print_asm(module.ops)
    gnu = gnu_run(asm)
    assert gnu.code is not None, [(n, asm.split("\n")[n - 1], m) for n, m in gnu.errors.items()][:10]
    assert assemble(asm) == gnu.code
    # Every mnemonic line made it into the assembly.
    n_ops = sum(1 for op in module.walk() if hasattr(op, "mnemonic") or op.name == "thumb.directive")
    assert n_ops == sum(1 for line in asm.split("\n") if line.startswith("    "))


def test_every_op_has_semantics_and_cost() -> None:
    for mn, cls in OPS.items():
        assert cls.__doc__ and "GNU:" in cls.__doc__ and "cycles" in cls.__doc__, mn
        assert cls.name == f"thumb.{mn}"
        assert mn.split(".")[0] in FORMS


@pytest.mark.parametrize("regs, ok", [("s4, s5", True), ("s5, s6", False), ("s4, s6", False)])
def test_d_register_load_needs_an_even_pair(regs: str, ok: bool) -> None:
    a, b = (f"!thumb.sreg<{r}>" for r in regs.split(", "))
    text = ("thumb.func @f {\n  %p = thumb.get_register : !thumb.reg<r0>\n"
            f"  %x, %y = thumb.vldr %p {{offset = 8}} : {a}, {b}\n}}\n")
    module = parse(text, "d.l4f")
    if ok:
        verify_module(module)
        assert print_asm(module.ops).endswith("vldr d2, [r0, #8]\n")
        return
    with pytest.raises(CompileError, match="3:12: error: .*even S register and the next one"):
        verify_module(module)


def test_register_types_parse_and_print() -> None:
    from ml4f.compiler.types import parse_type

    assert parse_type("!thumb.reg") == RegType()
    assert parse_type("!thumb.reg<r4>") == RegType(4)
    assert parse_type("!thumb.reg<lr>") == RegType(14)
    assert parse_type("!thumb.sreg<s31>") == SRegType(31)
    assert str(RegType(13)) == "!thumb.reg<sp>" and str(SRegType()) == "!thumb.sreg"


def test_virtual_registers_verify_but_do_not_print_as_assembly() -> None:
    text = ("thumb.func @f {\n  %a = thumb.get_register : !thumb.reg<r0>\n"
            "  %b = thumb.add %a {imm = 1} : !thumb.reg\n  %c = thumb.vmov %b : !thumb.sreg\n}\n")
    module = parse(text, "v.l4f")
    verify_module(module)
    assert print_module(module) == text
    with pytest.raises(CompileError, match="register not allocated"):
        print_asm(module.ops)


@pytest.mark.parametrize("body, message", [
    ("%a = thumb.get_register : !thumb.sreg<s0>\n  %b = thumb.add %a, %a : !thumb.reg",
     "match none of"),
    ("%a = thumb.get_register : !thumb.sreg<s0>\n  %b = thumb.vmla.f32 %a, %a, %a : !thumb.sreg<s1>",
     "must be the same register"),
    ("%a = thumb.get_register : !thumb.reg<r0>\n  %b = thumb.add %a {imm = 1, offset = 4} : !thumb.reg",
     "match none of"),
    ("%a = thumb.get_register : !thumb.reg<r0>\n  %b = thumb.add %a, %a {shift = \"lsl 2\"} : !thumb.reg",
     "shift must look like"),
    ("%a = thumb.get_register : !thumb.reg",
     "needs a physical register"),
    ("%a = thumb.get_register : !thumb.reg<r0>\n  %v, %b = thumb.ldr %a {offset = 4, mode = \"post\"}"
     + " : !thumb.reg<r1>, !thumb.reg<r2>", "written-back base"),
    ("thumb.it {cond = \"eq\", mask = \"x\"}", "mask must be"),
])
def test_dialect_verifier_errors(body: str, message: str) -> None:
    text = "thumb.func @f {\n  " + body + "\n}\n"
    with pytest.raises(CompileError, match=message) as e:
        verify_module(parse(text, "bad.l4f"))
    assert e.value.one_line().startswith("bad.l4f:")


@needs_as
def test_thumb_function_addresses_have_bit_0_set() -> None:
    """`adr` to a `.thumb_func` label gives its address + 1, as GNU as does. As data (`.word f`,
    `ldr r0, =f`) GNU as leaves 0 and a relocation for the linker; ml4f writes the linked value
    f + 1 (the binary is loaded as is, so there is no linker)."""
    text = (".syntax unified\n.thumb\nnop\nnop\n.thumb_func\nf: bx lr\nadr r1, f\n.align 2\n"
            "ptr: .word f\nldr r0, =f\n")
    a = assemble_full(text)
    gnu = gnu_run(text)
    assert a.labels["f"] == 4
    adr = next(li for li in a.lines if li.text.strip().startswith("adr"))
    assert a.code[adr.addr:adr.addr + 4] == gnu.code[adr.addr:adr.addr + 4]
    assert a.code[a.labels["ptr"]:a.labels["ptr"] + 4] == (5).to_bytes(4, "little")
    assert a.code[-4:] == (5).to_bytes(4, "little")


def test_tied_registers_for_the_allocator() -> None:
    text = ("thumb.func @f {\n  %a = thumb.get_register : !thumb.reg<r0>\n"
            "  %s = thumb.get_register : !thumb.sreg<s0>\n"
            "  %v, %a2 = thumb.ldr %a {offset = 4, mode = \"post\"} : !thumb.reg, !thumb.reg\n"
            "  %acc = thumb.vmla.f32 %s, %s, %s : !thumb.sreg\n"
            "  %lo, %hi = thumb.smlal %v, %a2, %v, %v : !thumb.reg, !thumb.reg\n}\n")
    module = parse(text, "t.l4f")
    verify_module(module)
    ops = module.ops[0].body.block.ops
    assert ops[2].tied() == [(0, 1)]
    assert ops[3].tied() == [(0, 0)]
    assert ops[4].tied() == [(0, 0), (1, 1)]
    # An allocator assigns registers by rewriting types; the verifier checks the ties.
    ops[2].results[0].type, ops[2].results[1].type = RegType(1), RegType(0)
    ops[3].results[0].type = SRegType(1)
    with pytest.raises(CompileError, match="same register"):
        verify_module(module)
    ops[3].results[0].type = SRegType(0)
    verify_module(module)
    assert ops[2].asm() == "ldr r1, [r0], #4"
