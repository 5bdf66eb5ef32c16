"""`thumb-schedule`: results unchanged and emulator cycles never higher, lower where a stall can go."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ml4f.compiler.backend.assembler import assemble
from ml4f.compiler.backend.binary import TYPE_F32, IOSpec, build_binary
from ml4f.compiler.backend.emulator import Emulator
from ml4f.compiler.context import Context
from ml4f.compiler.ir import Module
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import make_pass, verify_module
from ml4f.compiler.printer import print_module
from ml4f.compiler.transforms.schedule import ScheduleStats, schedule_block
from ml4f.dialects.thumb import print_asm

ARENA_WORDS = 64


def _schedule(text: str, **options: str) -> tuple[Module, Module]:
    before = parse(text)
    after = parse(text)
    make_pass("thumb-schedule", dict(options)).apply(Context(), after)
    verify_module(after)
    return before, after


def _run(module: Module, arena: np.ndarray) -> tuple[bytes, int]:
    """Assemble the module's function (called as entry(model, arena)) and run it in the emulator."""
    code = assemble(print_asm(module.ops))
    io = IOSpec(0, TYPE_F32, (ARENA_WORDS,))
    b = build_binary(code, b"", arena_bytes=4 * ARENA_WORDS, input=io, output=io)
    r = Emulator(b.to_bytes(), 4 * ARENA_WORDS).call(b.header.header_size, arena.tobytes())
    return r.arena, r.cycles


def _arena(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2, 2, ARENA_WORDS).astype(np.float32)


def _compare(text: str, seed: int = 0) -> tuple[int, int, Module]:
    before, after = _schedule(text)
    x = _arena(seed)
    out0, c0 = _run(before, x)
    out1, c1 = _run(after, x)
    assert out0 == out1, "scheduling changed what the code computes"
    assert c1 <= c0
    return c0, c1, after


def _asm_body(module: Module) -> list[str]:
    return [line.strip() for line in print_asm(module.ops).splitlines()[4:]]


# A naive dot product of a[0:4] and b[4:8]: every vadd reads the vmul right before it.
DOT = """\
thumb.func @entry {
  %ar = thumb.get_register : !thumb.reg<r1>
  %lr = thumb.get_register : !thumb.reg<lr>
  %a0 = thumb.vldr %ar {offset = 0} : !thumb.sreg<s0>
  %b0 = thumb.vldr %ar {offset = 16} : !thumb.sreg<s1>
  %p0 = thumb.vmul.f32 %a0, %b0 : !thumb.sreg<s8>
  %a1 = thumb.vldr %ar {offset = 4} : !thumb.sreg<s2>
  %b1 = thumb.vldr %ar {offset = 20} : !thumb.sreg<s3>
  %p1 = thumb.vmul.f32 %a1, %b1 : !thumb.sreg<s9>
  %s1 = thumb.vadd.f32 %p0, %p1 : !thumb.sreg<s8>
  %a2 = thumb.vldr %ar {offset = 8} : !thumb.sreg<s4>
  %b2 = thumb.vldr %ar {offset = 24} : !thumb.sreg<s5>
  %p2 = thumb.vmul.f32 %a2, %b2 : !thumb.sreg<s9>
  %s2 = thumb.vadd.f32 %s1, %p2 : !thumb.sreg<s8>
  %a3 = thumb.vldr %ar {offset = 12} : !thumb.sreg<s6>
  %b3 = thumb.vldr %ar {offset = 28} : !thumb.sreg<s7>
  %p3 = thumb.vmul.f32 %a3, %b3 : !thumb.sreg<s9>
  %s3 = thumb.vadd.f32 %s2, %p3 : !thumb.sreg<s8>
  thumb.vstr %s3, %ar {offset = 32}
  %i0 = thumb.ldr %ar {offset = 36} : !thumb.reg<r2>
  %j0 = thumb.add %i0 {imm = 1} : !thumb.reg<r2>
  %i1 = thumb.ldr %ar {offset = 40} : !thumb.reg<r3>
  %j1 = thumb.add %i1 {imm = 1} : !thumb.reg<r3>
  thumb.str %j0, %ar {offset = 36}
  thumb.str %j1, %ar {offset = 40}
  thumb.bx %lr
}
"""


def test_dot_product_loses_its_stalls() -> None:
    c0, c1, after = _compare(DOT)
    # four FP result-use stalls (three vadds, the vstr) and one unpipelined ldr: all avoidable
    assert c0 - c1 == 5, (c0, c1)
    body = _asm_body(after)
    assert body[-1] == "bx lr" and body.index("ldr r3, [r1, #40]") == body.index("ldr r2, [r1, #36]") + 1


# y[i] = a[i] * s + b[i] over 8 elements, two per iteration, written in dependence order.
LOOP = """\
thumb.func @entry {
  %ar = thumb.get_register : !thumb.reg<r1>
  %lr = thumb.get_register : !thumb.reg<lr>
  %s = thumb.vldr %ar {offset = 252} : !thumb.sreg<s15>
  %n = thumb.mov {imm = 4} : !thumb.reg<r2>
  %p = thumb.mov %ar : !thumb.reg<r0>
  thumb.label @loop
  %a0 = thumb.vldr %p {offset = 0} : !thumb.sreg<s0>
  %m0 = thumb.vmul.f32 %a0, %s : !thumb.sreg<s1>
  %b0 = thumb.vldr %p {offset = 64} : !thumb.sreg<s2>
  %y0 = thumb.vadd.f32 %m0, %b0 : !thumb.sreg<s3>
  thumb.vstr %y0, %p {offset = 128}
  %a1 = thumb.vldr %p {offset = 4} : !thumb.sreg<s4>
  %m1 = thumb.vmul.f32 %a1, %s : !thumb.sreg<s5>
  %b1 = thumb.vldr %p {offset = 68} : !thumb.sreg<s6>
  %y1 = thumb.vadd.f32 %m1, %b1 : !thumb.sreg<s7>
  thumb.vstr %y1, %p {offset = 132}
  %p2 = thumb.add %p {imm = 8} : !thumb.reg<r0>
  %n2 = thumb.sub %n {imm = 1, setflags = true} : !thumb.reg<r2>
  thumb.b {target = @loop, cond = "ne"}
  thumb.bx %lr
}
"""


def test_loop_body_is_scheduled_within_its_block() -> None:
    c0, c1, after = _compare(LOOP)
    assert c1 < c0
    body = _asm_body(after)
    # the label and the branch stay where they are; the pointer bump stays after the accesses it feeds
    assert body[3] == "loop:" and body[-2:] == ["bne loop", "bx lr"]
    loop = body[4:-2]
    assert loop.index("add r0, r0, #8") > max(i for i, s in enumerate(loop) if "[r0" in s)


def test_it_blocks_labels_and_calls_are_barriers() -> None:
    text = """\
thumb.func @entry {
  %ar = thumb.get_register : !thumb.reg<r1>
  %lr = thumb.get_register : !thumb.reg<lr>
  %x = thumb.vldr %ar {offset = 0} : !thumb.sreg<s0>
  %y = thumb.vadd.f32 %x, %x : !thumb.sreg<s1>
  thumb.vcmp.f32 %y {imm = 0.0}
  thumb.vmrs
  thumb.it {cond = "gt", mask = "e"}
  %a = thumb.vmov.f32 %y {cond = "gt"} : !thumb.sreg<s2>
  %b = thumb.vmov.f32 {imm = 1.0, cond = "le"} : !thumb.sreg<s2>
  %z = thumb.vmul.f32 %a, %a : !thumb.sreg<s3>
  thumb.vstr %z, %ar {offset = 4}
  %w = thumb.vmul.f32 %x, %x : !thumb.sreg<s4>
  thumb.vstr %w, %ar {offset = 8}
  thumb.bx %lr
}
"""
    c0, c1, after = _compare(text)
    body = _asm_body(after)
    i = body.index("ite gt")
    assert body[i - 2:i + 3] == ["vcmp.f32 s1, #0.0", "vmrs APSR_nzcv, fpscr", "ite gt", "vmovgt.f32 s2, s1",
                                 "vmovle.f32 s2, #1.0"]
    # after the IT block the two independent products interleave with the stores
    assert c1 < c0


@pytest.mark.parametrize("second, reorders", [
    ("thumb.ldr %ar {offset = 0}", False),     # reads what the store wrote
    ("thumb.ldr %ar {offset = 4}", True),      # same base, disjoint bytes
    ("thumb.ldr %q {offset = 4}", False),      # another base register: may alias
    ("thumb.ldrb %ar {offset = 3}", False),    # overlaps the stored word
])
def test_stores_stay_ordered_unless_provably_disjoint(second: str, reorders: bool) -> None:
    text = f"""\
thumb.func @entry {{
  %ar = thumb.get_register : !thumb.reg<r1>
  %lr = thumb.get_register : !thumb.reg<lr>
  %q = thumb.add %ar {{imm = 0}} : !thumb.reg<r0>
  %v = thumb.ldr %ar {{offset = 8}} : !thumb.reg<r2>
  %f = thumb.vldr %ar {{offset = 12}} : !thumb.sreg<s0>
  %g = thumb.vmul.f32 %f, %f : !thumb.sreg<s1>
  thumb.vstr %g, %ar {{offset = 0}}
  %w = {second} : !thumb.reg<r3>
  %w2 = thumb.add %w, %v : !thumb.reg<r3>
  thumb.str %w2, %ar {{offset = 16}}
  thumb.bx %lr
}}
"""
    _, _, after = _compare(text)
    body = _asm_body(after)
    store = body.index("vstr s1, [r1]")
    load = next(i for i, s in enumerate(body) if s.startswith(("ldr r3", "ldrb r3")))
    assert (load < store) == reorders, body


def test_schedule_keeps_ssa_order_and_round_trips() -> None:
    _, after = _schedule(DOT)
    text = print_module(after)
    again = parse(text)
    verify_module(again)
    assert print_module(again) == text


def test_virtual_registers_are_scheduled_by_ssa_and_memory_only() -> None:
    text = """\
thumb.func @virt {
  %a = thumb.get_register : !thumb.reg<r0>
  %x = thumb.vldr %a {offset = 4} : !thumb.sreg
  %y = thumb.vmul.f32 %x, %x : !thumb.sreg
  %z = thumb.vadd.f32 %y, %x : !thumb.sreg
  %u = thumb.vldr %a {offset = 8} : !thumb.sreg
  %v = thumb.vmul.f32 %u, %u : !thumb.sreg
  thumb.vstr %v, %a {offset = 12}
  thumb.vstr %z, %a {offset = 16}
}
"""
    _, after = _schedule(text)
    names = [op.results[0].name_hint if op.results else op.name for op in after.ops[0].body.block.ops]
    # the vmul is separated from the vadd that reads it
    assert names.index("z") != names.index("y") + 1


def test_stats_count_neighbour_cycles() -> None:
    stats = ScheduleStats()
    schedule_block(parse(DOT).ops[0].body.block, stats=stats)
    # 4 stalls before; after: none, and one ldr pipelined behind the other
    assert (stats.before, stats.after, stats.regions, stats.changed) == (4, -1, 1, 1)


def test_greedy_option_without_lookahead() -> None:
    before, after = _schedule(DOT, lookahead="false")
    assert make_pass("thumb-schedule", {"lookahead": "false"}).spelled() == "thumb-schedule{lookahead=false}"
    x = _arena(3)
    (o0, c0), (o1, c1) = _run(before, x), _run(after, x)
    assert o0 == o1 and c1 < c0


# ----------------------------------------------------------------------------- random programs


def _random_program(rng: random.Random, n: int) -> str:
    """Straight-line code over s0-s7, r0/r2/r3/r12 and two overlapping bases (r1 and r4 = r1 + 8)."""
    lines = ["  %ar = thumb.get_register : !thumb.reg<r1>", "  %lr = thumb.get_register : !thumb.reg<lr>",
             "  %r4in = thumb.get_register : !thumb.reg<r4>", "  thumb.push %r4in, %lr",
             "  %b2 = thumb.add %ar {imm = 8} : !thumb.reg<r4>"]
    cur: dict[str, str] = {"r1": "%ar", "r4": "%b2"}
    count = 0

    def new(reg: str) -> str:
        nonlocal count
        count += 1
        cur[reg] = f"%v{count}"
        return cur[reg]

    sregs = [f"s{i}" for i in range(8)]
    cregs = ["r0", "r2", "r3", "r12"]
    for i, s in enumerate(sregs):
        lines.append(f"  {new(s)} = thumb.vldr %ar {{offset = {4 * i}}} : !thumb.sreg<{s}>")
    for i, r in enumerate(cregs):
        lines.append(f"  {new(r)} = thumb.ldr %ar {{offset = {32 + 4 * i}}} : !thumb.reg<{r}>")
    flags_set = False
    for _ in range(n):
        k = rng.random()
        base = rng.choice(["r1", "r4"])
        off = 4 * rng.randrange(8)
        s1, s2, s3 = (rng.choice(sregs) for _ in range(3))
        c1, c2, c3 = (rng.choice(cregs) for _ in range(3))
        if k < 0.12:
            lines.append(f"  {new(s1)} = thumb.vldr {cur[base]} {{offset = {off}}} : !thumb.sreg<{s1}>")
        elif k < 0.22:
            lines.append(f"  thumb.vstr {cur[s1]}, {cur[base]} {{offset = {off}}}")
        elif k < 0.42:
            mn = rng.choice(["vadd.f32", "vmul.f32", "vsub.f32"])
            lines.append(f"  %t{count} = thumb.{mn} {cur[s2]}, {cur[s3]} : !thumb.sreg<{s1}>")
            cur[s1] = f"%t{count}"
            count += 1
        elif k < 0.47:
            acc, a, b = cur[s1], cur[s2], cur[s3]
            lines.append(f"  {new(s1)} = thumb.vmla.f32 {acc}, {a}, {b} : !thumb.sreg<{s1}>")
        elif k < 0.57:
            lines.append(f"  {new(c1)} = thumb.ldr {cur[base]} {{offset = {off}}} : !thumb.reg<{c1}>")
        elif k < 0.65:
            mn = rng.choice(["str", "strb", "strh"])
            lines.append(f"  thumb.{mn} {cur[c1]}, {cur[base]} {{offset = {off + rng.randrange(2)}}}")
        elif k < 0.75:
            sf = ", setflags = true" if rng.random() < 0.5 else ""
            flags_set |= bool(sf)
            a = cur[c2]
            imm = rng.randrange(1, 200)
            lines.append(f"  {new(c1)} = thumb.add {a} {{imm = {imm}{sf}}} : !thumb.reg<{c1}>")
        elif k < 0.80 and flags_set:
            a, b = cur[c2], cur[c3]
            lines.append(f"  {new(c1)} = thumb.adc {a}, {b} : !thumb.reg<{c1}>")
        elif k < 0.85:
            lines.append(f"  thumb.cmp {cur[c2]}, {cur[c3]}")
            flags_set = True
        elif k < 0.90:
            lines.append(f"  {new(c1)} = thumb.vmov {cur[s2]} : !thumb.reg<{c1}>")
        elif k < 0.95:
            lines.append(f"  {new(s1)} = thumb.vmov {cur[c2]} : !thumb.sreg<{s1}>")
        else:
            lines.append(f"  thumb.vcmp.f32 {cur[s2]}, {cur[s3]}")
            lines.append("  thumb.vmrs")
            flags_set = True
    # make the final state observable: every register and the carry flag
    for i, s in enumerate(sregs):
        lines.append(f"  thumb.vstr {cur[s]}, %ar {{offset = {64 + 4 * i}}}")
    for i, r in enumerate(cregs):
        lines.append(f"  thumb.str {cur[r]}, %ar {{offset = {96 + 4 * i}}}")
    lines.append("  %z = thumb.mov {imm = 0} : !thumb.reg<r0>")
    lines.append("  %c = thumb.adc %z, %z : !thumb.reg<r0>")
    lines.append("  thumb.str %c, %ar {offset = 112}")
    lines.append("  %r4out, %pc = thumb.pop : !thumb.reg<r4>, !thumb.reg<pc>")
    return "thumb.func @entry {\n" + "\n".join(lines) + "\n}\n"


@pytest.mark.parametrize("seed", range(40))
def test_random_programs_compute_the_same_and_never_get_slower(seed: int) -> None:
    rng = random.Random(seed)
    text = _random_program(rng, rng.randrange(10, 45))
    stats = ScheduleStats()
    schedule_block(parse(text).ops[0].body.block, stats=stats)
    for data_seed in range(2):
        c0, c1, _ = _compare(text, data_seed)
        # straight-line code: the pass's neighbour model and the emulator's cycle model agree exactly
        assert c0 - c1 == stats.before - stats.after


def test_random_programs_gain_on_average() -> None:
    gains = []
    for seed in range(100, 115):
        rng = random.Random(seed)
        text = _random_program(rng, 40)
        c0, c1, _ = _compare(text, seed)
        gains.append(c0 - c1)
    assert min(gains) >= 0 and sum(gains) >= 15, gains

