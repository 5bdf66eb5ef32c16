"""Every Thumb instruction form, encoded by ml4f and by GNU as: the bytes must be equal.

A random corpus (every mnemonic, every form, random registers, immediates, shifts, addressing
modes, IT blocks and .w/.n qualifiers; some of it deliberately invalid) goes through
`arm-none-eabi-as` twice: once to learn which lines it rejects, once for the bytes of the rest.
ml4f must produce the same bytes for the accepted lines and reject the lines GNU as rejects.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))

from thumb_corpus import AS, HEADER, corpus_lines, gnu_quirk, gnu_run, wrap_it

from ml4f.compiler.backend.assembler import assemble_full
from ml4f.compiler.diagnostics import CompileError
from ml4f.dialects.thumb.encodings import FORMS

pytestmark = pytest.mark.skipif(AS is None, reason="arm-none-eabi-as (binutils-arm-none-eabi) is needed")

# `it` is exercised by the IT blocks wrapped around other instructions.
MNEMONICS = sorted(mn for mn in FORMS if mn != "it")
RELAXED = {mn for mn, forms in FORMS.items() if any(f.relax for f in forms)}
PER_MNEMONIC = 100
CHUNK = 8

# Lines that reach forms random operands rarely hit (exact register coincidences, sp/pc bases).
HANDPICKED = """
add r0, sp, #0
add r7, sp, #1020
add r0, sp, #1024
add r3, pc, #0
add r3, pc, #1020
add r3, pc, #1021
sub sp, sp, #508
sub sp, #4
add sp, #508
subs pc, lr, #4
rsbs r0, r1, #0
negs r2, r3
ldr r0, [pc, #0]
ldr r7, [pc, #1020]
ldr r0, [pc, #-4]
ldrh r0, [pc, #6]
ldrb r1, [pc, #-7]
vcvt.u32.f32 s3, s3, #1
vcvt.u32.f32 s30, s30, #32
vcvt.s16.f32 s2, s2, #16
vcvt.f32.u16 s2, s2, #0
vmov s0, s1, r2, r3
vmov r2, r3, s30, s31
adds r1, r1, #255
subs r7, #1
movs r0, r0
mov.n r8, r9
ldr r0, [sp, #1020]
str r7, [sp]
add r1, r1, r9
add pc, r1
mov pc, lr
bx lr
blx r3
cmp r8, r9
cmn r1, r2
tst r0, r7
mvn r0, #0
mvns r0, r1
vmrs APSR_nzcv, fpscr
vmrs r0, fpscr
vmsr fpscr, r1
vmov.f32 s0, #-31.0
vmov.f32 s31, #0.1875
vcmp.f32 s1, #0.0
vcmpe.f32 s1, #0
vpush {s16-s31}
vpop {s16-s31}
vldmia r0!, {s0-s7}
vstmdb r1!, {s8}
push {r4-r11, lr}
pop {r4-r11, pc}
push {lr}
pop {pc}
it eq
moveq r0, #1
ite ne
movne r0, #1
moveq r0, #2
itte gt
addgt r0, r0, r1
subgt r0, r0, #1
movle r0, #0
itett lt
movlt r0, #1
movge r1, #2
movlt r2, #3
movlt r3, #4
it hi
bhi near_back
nop.w
bkpt #0
svc #255
adds r0, r1, #7
subs r0, r1, #1
mov r0, #0x1234
lsls r0, r1
cmp.w r0, r1
vcvt.f32.s16 s0, s0, #8
vcvt.u16.f32 s1, s1, #3
vcvt.f32.s32 s5, s5, #3
vcvt.f32.u32 s6, s6, #5
vcvt.s32.f32 s7, s7, #1
vcvt.f32.u16 s8, s8, #2
vcvt.s16.f32 s9, s9, #7
lsls r0, r1, #3
lsrs r0, r1, #3
asr.w r8, r9, #3
sbcs r0, r0, r1
ldr r0, [r1, r2]
ldrb r0, [r1, r2]
strb r0, [r1, r2]
ldrsb r0, [r1, r2]
ldrsh r0, [r1, r2]
ldrsb.w r0, [pc, #4]
ldrsh.w r0, [pc, #-6]
ldrb.w r8, lit_word
ldrh.w r9, lit_odd
lsls r2, r2, r3
lsrs r0, r0, r1
asrs r0, r0, r1
rors r0, r0, r1
ands r0, r0, r1
eors r0, r0, r1
adcs r0, r0, r1
orrs r0, r0, r1
bics r0, r0, r1
ldr r0, [r1, #-0]
ldrb r0, [pc, #-0]
ldr r0, [pc, #-0]
ldrd r0, r1, [r2, #-0]
vstr s0, [r1, #-0]
vldr s0, [r0, #-0]
vmov.f32 s0, #-2.0
vstmdb sp!, {s16-s31}
vldmia sp!, {s16-s31}
str lr, [sp, #-4]!
sxtab16 r0, r1, r2, ror #8
ssat r1, #8, r1, asr #3
udiv r0, r1
add r0, r0, r1, lsl #2
vmrs APSR_nzcv, FPSCR
""".strip().split("\n")


def _units(mn: str, seed: int) -> list[list[str]]:
    rng = random.Random(f"it/{mn}/{seed}")
    out = []
    for line in corpus_lines(mn, PER_MNEMONIC, seed):
        out.append([line])
        if mn not in ("it", "b", "bl", "cbz", "cbnz", "bkpt") and rng.random() < 0.2:
            wrapped = wrap_it(rng, line)
            if not any(gnu_quirk(x) for x in wrapped):
                out.append(wrapped)
    return out


def _handpicked_units() -> list[list[str]]:
    units, i = [], 0
    while i < len(HANDPICKED):
        line = HANDPICKED[i]
        if line.startswith("it"):
            n = len(line.split()[0]) - 1
            units.append(HANDPICKED[i:i + n + 1])
            i += n + 1
        else:
            units.append([line])
            i += 1
    return units


def _build(units: list[list[str]], far: bool = True) -> tuple[list[str], list[list[str] | None]]:
    """Corpus text: chunks of units, each with labels behind and ahead of it and two data words
    (one aligned, one not) for literal loads and adr; one label 70 KB away at the end."""
    lines: list[str] = HEADER.strip().split("\n")
    owners: list[list[str] | None] = [None] * len(lines)
    for k, i in enumerate(range(0, len(units), CHUNK)):
        names = {"near_back": f"nb{k}", "near_fwd": f"nf{k}", "lit_word": f"lw{k}", "lit_odd": f"lo{k}"}
        lines += [f"nb{k}:", "nop"]
        owners += [None, None]
        if not far:
            names["far_fwd"] = f"nf{k}"
        for u in units[i:i + CHUNK]:
            for line in u:
                for a, b in names.items():
                    line = line.replace(a, b)
                lines.append(line)
                owners.append(u)
        tail = [".align 2", f"lw{k}: .word 0x12345678", ".byte 1", f"lo{k}: .byte 2", ".align 2", f"nf{k}: nop"]
        lines += tail
        owners += [None] * len(tail)
    if far:
        lines += [".space 70000", "far_fwd: nop"]
        owners += [None, None]
    return lines, owners


class Corpus:
    """The corpus of one seed, assembled by GNU as (accepted part) and by ml4f."""

    def __init__(self, seed: int):
        self.units: dict[str, list[list[str]]] = {mn: _units(mn, seed) for mn in MNEMONICS}
        self.units["<handpicked>"] = _handpicked_units()
        everything = [u for us in self.units.values() for u in us]
        lines, owners = _build(everything)
        first = gnu_run("\n".join(lines) + "\n")
        self.gnu_rejected: dict[int, str] = {}
        for no, msg in first.errors.items():
            u = owners[no - 1] if 0 < no <= len(owners) else None
            if u is not None:
                self.gnu_rejected.setdefault(id(u), msg)
        warned = {id(owners[no - 1]) for no in first.warnings if 0 < no <= len(owners) and owners[no - 1]}
        # GNU as keeps the IT state of a rejected IT block, so the unit after one may fail only
        # because of it: those rejections are not the unit's own.
        self.after_bad_it: set[int] = set()
        tainted = False
        for u in everything:
            if tainted:
                self.after_bad_it.add(id(u))
            rejected = id(u) in self.gnu_rejected
            tainted = (tainted and rejected) or (u[0].startswith("it") and rejected)
        self.kept = [u for u in everything if id(u) not in self.gnu_rejected and id(u) not in warned]
        lines, owners = _build(self.kept)
        text = "\n".join(lines) + "\n"
        gnu = gnu_run(text)
        assert gnu.code is not None, f"GNU as rejected the filtered corpus: {list(gnu.errors.items())[:3]}"
        self.gnu_code = gnu.code
        self.ours = assemble_full(text, "corpus.s")
        self.line_owner = {no: owners[no - 1] for no in range(1, len(owners) + 1)}
        self.lines = lines

    def mismatches(self, units: list[list[str]]) -> list[str]:
        ids = {id(u) for u in units}
        out = []
        for li in self.ours.lines:
            u = self.line_owner.get(li.line)
            if u is None or id(u) not in ids:
                continue
            mine = self.ours.code[li.addr:li.addr + li.size]
            theirs = self.gnu_code[li.addr:li.addr + li.size]
            if mine != theirs:
                out.append(f"{li.text.strip()}: ml4f {mine.hex()} GNU as {theirs.hex()}")
        return out


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return Corpus(seed=1)


def test_corpus_is_large_and_layout_equal(corpus: Corpus) -> None:
    assert len(corpus.kept) > 7000
    assert len(corpus.ours.code) == len(corpus.gnu_code)
    assert corpus.ours.code == corpus.gnu_code


@pytest.mark.parametrize("mn", MNEMONICS + ["<handpicked>"])
def test_bytes_equal_gnu_as(corpus: Corpus, mn: str) -> None:
    units = corpus.units[mn]
    kept = [u for u in units if u in corpus.kept]
    assert kept, f"no accepted lines for {mn}"
    bad = corpus.mismatches(kept)
    assert not bad, "\n".join(bad[:20])


def _alone(unit: list[str]) -> str:
    """A unit with the labels it may name defined nearby."""
    text = "\n".join(unit)
    for a in ("near_back", "near_fwd", "lit_word", "lit_odd", "far_fwd"):
        text = text.replace(a, "lbl")
    return HEADER + "lbl: nop\n" + text + "\n"


@pytest.mark.parametrize("mn", [mn for mn in MNEMONICS if mn not in RELAXED])
def test_rejects_what_gnu_as_rejects(corpus: Corpus, mn: str) -> None:
    """Lines GNU as refuses are errors in ml4f too. Branches and literal loads are left out: their
    range errors depend on the layout (test_assembler.py checks them), and so are GNU as's quirks."""
    accepted = []
    for u in corpus.units[mn]:
        msg = corpus.gnu_rejected.get(id(u))
        if msg is None or id(u) in corpus.after_bad_it or any(gnu_quirk(x) for x in u):
            continue
        try:
            assemble_full(_alone(u))
            accepted.append(f"{' / '.join(u)}  (GNU as: {msg})")
        except CompileError:
            pass
    assert not accepted, "\n".join(accepted[:20])


def test_every_form_is_covered(corpus: Corpus) -> None:
    used = {id(li.form) for li in corpus.ours.lines if li.form is not None}
    missing = [f"{f.mnemonic}: {f.syntax}" for fs in FORMS.values() for f in fs if id(f) not in used]
    # Aliases (ldmia = ldm, ...) share their forms, so each form is counted once.
    assert not missing, "forms never exercised by the corpus:\n" + "\n".join(missing)


def test_form_count() -> None:
    forms = {id(f) for fs in FORMS.values() for f in fs}
    assert len(forms) >= 300
    assert {"vmla", "smlad", "vcvtb", "pkhtb", "cbz", "ldrd", "vpush", "it", "movt", "sdiv"} <= set(FORMS)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(MNEMONICS), min_size=20, max_size=60), st.integers(0, 10**6))
def test_random_programs_match_gnu_as(mnemonics: list[str], seed: int) -> None:
    """Hypothesis picks the mix of instructions; a seeded generator picks their operands."""
    rng = random.Random(seed)
    units = []
    for mn in mnemonics:
        line = corpus_lines(mn, 1, rng.randint(0, 10**9))
        if line:
            units.append(line)
    far = rng.random() < 0.5
    lines, owners = _build(units, far)
    first = gnu_run("\n".join(lines) + "\n")
    bad_units = {id(owners[n - 1]) for n in [*first.errors, *first.warnings]
                 if 0 < n <= len(owners) and owners[n - 1] is not None}
    kept = [u for u in units if id(u) not in bad_units]
    lines, _ = _build(kept, far)
    text = "\n".join(lines) + "\n"
    gnu = gnu_run(text)
    assert gnu.code is not None
    assert assemble_full(text).code == gnu.code


# ----------------------------------------------------------------------------- layout-dependent


def _same(text: str) -> bytes:
    gnu = gnu_run(HEADER + text)
    assert gnu.code is not None, gnu.errors
    ours = assemble_full(HEADER + text)
    if ours.code != gnu.code:
        diffs = [f"line {li.line - 2}: {li.text.strip()} ml4f {ours.code[li.addr:li.addr + li.size].hex()} "
                 f"GNU {gnu.code[li.addr:li.addr + li.size].hex()}" for li in ours.lines
                 if ours.code[li.addr:li.addr + li.size] != gnu.code[li.addr:li.addr + li.size]]
        pytest.fail("\n".join(diffs[:20]) or f"lengths {len(ours.code)} vs {len(gnu.code)}")
    return ours.code


def test_branch_relaxation_at_range_limits() -> None:
    """b, b<cond>, cbz, adr and literal loads just inside and just outside their 16-bit reach,
    forwards and backwards, with alignment and pools in between."""
    parts = []
    for k, gap in enumerate([2, 120, 122, 124, 126, 128, 250, 252, 254, 256, 258, 1006, 1008, 1010,
                             1012, 1014, 1016, 1018, 1020, 2036, 2040, 2044, 2046, 2048, 2050]):
        parts += [f"s{k}: b f{k}", f"bne f{k}", f"adr r2, w{k}", f"ldr r3, w{k}", f"beq s{k}",
                  f".space {gap}", ".align 2", f"w{k}: .word {k}", f"f{k}: b s{k}", f"bgt s{k}",
                  f"ldr r0, ={k * 0x10001 + 0x12345678}", ".ltorg"]
    # No wide forms: cbz/cbnz reach 126 bytes forward, vldr 1020 bytes either way.
    for k, gap in enumerate([0, 2, 60, 112, 114, 116]):
        parts += [f"cbz r1, c{k}", f"cbnz r7, c{k}", f"vldr s3, e{k}", f".space {gap}" if gap else "nop",
                  ".align 2", f"e{k}: .word 0", f"c{k}: vldr s4, e{k}"]
    _same("\n".join(parts) + "\n")


def test_literal_pools() -> None:
    _same("""
    ldr r0, =0x12345678
    ldr r1, =0x12345678
    ldr r8, =0xdeadbeef
    ldr r2, =lab
    ldr r3, =0x100
    ldr r4, =0xff00ff00
    ldr r5, =-2
    ldr r6, =0x1234
    ldr.w r7, =0x87654321
    nop
    .ltorg
lab: ldr r0, =0x11111111
    ldr r9, =lab + 4
    .byte 1
    """)


def test_data_directives_and_alignment() -> None:
    _same("""
start: nop
    .byte 1, 2, 0xff
    .align 2
    .short 0x1234, -1
    .word start, end, 0xcafebabe
    .float 1.5, -0.0, 3.4028234e38
    .balign 8, 0xaa
    .space 3, 7
    .p2align 3
    movs r0, #1
    .align 4
    .hword 7
    .4byte 9
    .skip 2
end: bx lr
    .byte 5
    """)


def test_end_padding_follows_section_alignment() -> None:
    for body in ["nop\n.byte 1\n", ".byte 1\n", ".align 3\nnop\n", ".byte 1\n.align 0\n.byte 2\n",
                 "nop\nldr r0, =0x12345678\n.ltorg\nnop\n"]:
        _same(body)


def test_it_blocks_and_conditional_branches() -> None:
    _same("""
top: cmp r0, #1
    itete eq
    addeq r0, r0, #1
    subne r0, r0, #1
    moveq r1, r2
    lslne r1, r1, #2
    it lt
    blt top
    ittt ge
    ldrge r0, [r1, #4]
    strge r0, [r1], #4
    vaddge.f32 s0, s1, s2
    it ne
    movne pc, lr
    bx lr
    """)


def _relaxation_program(seed: int) -> list[str]:
    """Labels, branches, literal loads, adr, pools, alignment and gaps of random sizes."""
    rng = random.Random(seed)
    n = rng.randint(5, 60)
    labels = [f"L{i}" for i in range(n)]
    lines = []
    for i in range(n):
        lines.append(f"L{i}:")
        for _ in range(rng.randint(0, 3)):
            t, r, reg = rng.choice(labels), rng.random(), f"r{rng.randint(0, 9)}"
            lines.append(
                f"b {t}" if r < 0.2 else f"b{rng.choice(['eq', 'ne', 'gt', 'lt'])} {t}" if r < 0.35 else
                f"adr {reg}, {t}" if r < 0.45 else f"ldr {reg}, {t}" if r < 0.55 else
                f"ldr {reg}, ={rng.randint(0, 2**32 - 1)}" if r < 0.65 else f"ldr {reg}, ={t}" if r < 0.7 else
                f".align {rng.randint(0, 3)}" if r < 0.75 else ".short 1" if r < 0.8 else
                ".ltorg" if r < 0.85 else f"bl {t}" if r < 0.9 else
                f".space {rng.choice([2, 100, 250, 500, 1000, 2000, 3000])}")
    return lines


@pytest.mark.parametrize("seed", range(40))
def test_relaxation_random_programs(seed: int) -> None:
    lines = _relaxation_program(seed)
    gnu = gnu_run(HEADER + "\n".join(lines) + "\n")
    if gnu.code is None:  # drop what GNU as finds out of range, then both must agree
        lines = [x for i, x in enumerate(lines) if i + 3 not in gnu.errors]
    _same("\n".join(lines) + "\n")
