"""thumb-regalloc on hand-built functions, checked by running them in the emulator.

Each function reads n floats from the arena (r1), combines them so that many values are live at
once, and writes the result back; the emulator checks that the callee-saved registers survive and
that only the arena and the stack are touched. With more live values than registers the
allocator must spill; the results must still equal NumPy's.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from ml4f.compiler.backend.assembler import assemble
from ml4f.compiler.backend.emulator import Emulator
from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import PassManager, parse_pipeline
from ml4f.compiler.transforms.regalloc import allocate
from ml4f.dialects.thumb import print_asm


def _sum_chain(values: list[str]) -> tuple[list[str], str]:
    """VADD lines summing `values` left to right, and the name of the sum."""
    lines, acc = [], values[0]
    for i, v in enumerate(values[1:], 1):
        lines.append(f"  %s{i} = thumb.vadd.f32 {acc}, {v} : !thumb.sreg")
        acc = f"%s{i}"
    return lines, acc


def live_sum_func(n: int, core: int = 0) -> str:
    """All n loads happen before any add, so n S values (and `core` core values) are live at
    once; the adds run in the order of the loads."""
    lines = ["thumb.func @f {", "  %arg = thumb.get_register : !thumb.reg<r1>",
             "  %lr = thumb.get_register : !thumb.reg<lr>", "  %a = thumb.mov %arg : !thumb.reg"]
    lines += [f"  %x{i} = thumb.vldr %a {{offset = {4 * i}}} : !thumb.sreg" for i in range(n)]
    lines += [f"  %c{i} = thumb.ldr %a {{offset = {4 * (n + i)}}} : !thumb.reg" for i in range(core)]
    adds, acc = _sum_chain([f"%x{i}" for i in range(n)])
    lines += adds
    lines.append(f"  thumb.vstr {acc}, %a {{offset = {4 * (n + core)}}}")
    cacc = "%c0" if core else None
    for i in range(1, core):
        lines.append(f"  %t{i} = thumb.add {cacc}, %c{i} : !thumb.reg")
        cacc = f"%t{i}"
    if core:
        lines.append(f"  thumb.str {cacc}, %a {{offset = {4 * (n + core + 1)}}}")
    lines += ["  thumb.bx %lr", "}"]
    return "\n".join(lines) + "\n"


def run(text: str, arena: np.ndarray) -> tuple[bytes, object, str]:
    module = parse(text, "f.l4f", Context())
    func = module.ops[0]
    res = allocate(func)
    asm = print_asm([func])
    code = assemble(asm)
    emu = Emulator(code, arena.nbytes)
    out = emu.call(0, arena.tobytes())
    return out.arena, res, asm


@pytest.mark.parametrize("n", [4, 16, 31, 40, 64])
def test_many_live_s_values(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    arena = np.concatenate([x, np.zeros(2, np.float32)])
    out, res, asm = run(live_sum_func(n), arena)
    want = x[0]
    for v in x[1:]:
        want = np.float32(want + v)
    got = np.frombuffer(out, np.float32)[n]
    assert got == want
    # spills happen exactly when more values are live than there are S registers
    assert (res.spills > 0) == (n > 32)
    assert ("vpush" in asm) == (n > 16)


@pytest.mark.parametrize("n", [7, 31, 41])
def test_d_register_loads_take_even_pairs_or_split(n: int) -> None:
    """One single load, then (n - 1) / 2 D register loads, all live before the adds: each pair
    takes an even S register and the next one. Past 32 live values, the pairs in conflict are
    split into two VLDRs before anything is spilled (a list is never spilled), each word loaded
    just before its first use: here that leaves nothing to spill. The sum is NumPy's in every
    case."""
    lines = ["thumb.func @f {", "  %arg = thumb.get_register : !thumb.reg<r1>",
             "  %lr = thumb.get_register : !thumb.reg<lr>", "  %a = thumb.mov %arg : !thumb.reg",
             "  %x0 = thumb.vldr %a : !thumb.sreg"]
    for i in range(1, n, 2):
        lines.append(f"  %x{i}, %x{i + 1} = thumb.vldr %a {{offset = {4 * i}}} : !thumb.sreg, !thumb.sreg")
    adds, acc = _sum_chain([f"%x{i}" for i in range(n)])
    lines += adds
    lines += [f"  thumb.vstr {acc}, %a {{offset = {4 * n}}}", "  thumb.bx %lr", "}"]
    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    out, res, asm = run("\n".join(lines) + "\n", np.concatenate([x, np.zeros(2, np.float32)]))
    assert np.frombuffer(out, np.float32)[n] == _ordered_sum(x)
    pairs = re.findall(r"vldr d(\d+), \[r\d+, #(\d+)\]", asm)
    assert all(int(off) % 8 == 4 for _, off in pairs)
    if n <= 32:
        assert len(pairs) == (n - 1) // 2 and res.spills == 0
    else:
        assert len(pairs) < (n - 1) // 2 and res.spills == 0


def test_split_pair_word_stays_before_a_write_back_of_its_base() -> None:
    """A D register pair split under pressure moves its second word down to its use, but not
    past a VLDM that writes the same base back (the register then holds the bumped address):
    the sum still reads the right words."""
    n = 34
    lines = ["thumb.func @f {", "  %arg = thumb.get_register : !thumb.reg<r1>",
             "  %lr = thumb.get_register : !thumb.reg<lr>", "  %a = thumb.mov %arg : !thumb.reg",
             "  %lo, %hi = thumb.vldr %a {offset = 8} : !thumb.sreg, !thumb.sreg"]
    lines += [f"  %x{i} = thumb.vldr %a {{offset = {16 + 4 * i}}} : !thumb.sreg" for i in range(n)]
    lines += ["  %p, %q, %a2 = thumb.vldm %a {writeback = true} : !thumb.sreg, !thumb.sreg, !thumb.reg"]
    adds, acc = _sum_chain(["%lo"] + [f"%x{i}" for i in range(n)] + ["%p", "%q", "%hi"])
    lines += adds
    lines += [f"  thumb.vstr {acc}, %a2 {{offset = {4 * (n + 4) - 8}}}", "  thumb.bx %lr", "}"]
    x = np.random.default_rng(3).normal(size=n + 4).astype(np.float32)
    out, res, asm = run("\n".join(lines) + "\n", np.concatenate([x, np.zeros(2, np.float32)]))
    order = np.array([x[2], *x[4:4 + n], x[0], x[1], x[3]], np.float32)
    assert np.frombuffer(out, np.float32)[n + 4] == _ordered_sum(order)
    assert "vldr d" not in asm and res.spills > 0


def test_vldm_lists_past_the_registers_are_split() -> None:
    """Ten VLDMs of 4 registers, all live before the adds: 40 values in lists, which are never
    spilled. When a partial sum finds every register held by a list, the longest-lived list is
    loaded register by register (then spilled as needed) instead of failing; the sum is NumPy's."""
    n = 40
    lines = ["thumb.func @f {", "  %arg = thumb.get_register : !thumb.reg<r1>",
             "  %lr = thumb.get_register : !thumb.reg<lr>", "  %a = thumb.mov %arg : !thumb.reg"]
    for i in range(0, n, 4):
        lines.append(f"  %b{i} = thumb.add %a {{imm = {4 * i}}} : !thumb.reg")
        lines.append(f"  %x{i}, %x{i + 1}, %x{i + 2}, %x{i + 3} = thumb.vldm %b{i} : "
                     "!thumb.sreg, !thumb.sreg, !thumb.sreg, !thumb.sreg")
    adds, acc = _sum_chain([f"%x{i}" for i in range(n)])
    lines += adds
    lines += [f"  thumb.vstr {acc}, %a {{offset = {4 * n}}}", "  thumb.bx %lr", "}"]
    x = np.random.default_rng(n).normal(size=n).astype(np.float32)
    out, res, asm = run("\n".join(lines) + "\n", np.concatenate([x, np.zeros(2, np.float32)]))
    assert np.frombuffer(out, np.float32)[n] == _ordered_sum(x)
    assert res.spills > 0 and 0 < asm.count("vldm") < n // 4


@pytest.mark.parametrize("core", [3, 10, 14, 20])
def test_many_live_core_values(core: int) -> None:
    rng = np.random.default_rng(core)
    x = rng.normal(size=4).astype(np.float32)
    ints = rng.integers(-1000, 1000, size=core).astype(np.int32)
    arena = np.concatenate([x.view(np.int32), ints, np.zeros(2, np.int32)])
    out, res, asm = run(live_sum_func(4, core=core), arena)
    words = np.frombuffer(out, np.int32)
    assert words[4 + core + 1] == ints.sum()
    assert (res.spills > 0) == (core > 12)  # r0-r12 except the base pointer's register
    # the prologue saves exactly the callee-saved core registers used, and the frame is 8-aligned
    assert res.stack_bytes % 8 == 0
    used = {int(r) for r in re.findall(r"\br(\d+)\b", asm.split("push", 1)[-1])}
    assert set(res.saved_core) - {14} == {r for r in used if 4 <= r <= 11}


def test_regalloc_pass_rewrites_types_and_refuses_a_second_run() -> None:
    module = parse(live_sum_func(20), "f.l4f", Context())
    PassManager(parse_pipeline("thumb-regalloc")).run(Context(), module)
    func = module.ops[0]
    assert all(v.type.num is not None for op in func.body.block.ops for v in op.results)
    with pytest.raises(CompileError, match="already has a prologue"):
        PassManager(parse_pipeline("thumb-regalloc")).run(Context(), module)


def _sum_lines(name: str, n: int, at: int, out: int) -> list[str]:
    """Load n floats from a[at..], then sum them in order into a[out]."""
    lines = [f"  %{name}0_ = thumb.vldr %a {{offset = {4 * at}}} : !thumb.sreg"]
    lines += [f"  %{name}{i}_ = thumb.vldr %a {{offset = {4 * (at + i)}}} : !thumb.sreg" for i in range(1, n)]
    acc = f"%{name}0_"
    for i in range(1, n):
        lines.append(f"  %{name}s{i} = thumb.vadd.f32 {acc}, %{name}{i}_ : !thumb.sreg")
        acc = f"%{name}s{i}"
    return lines + [f"  thumb.vstr {acc}, %a {{offset = {4 * out}}}"]


def _ordered_sum(x: np.ndarray) -> np.float32:
    acc = x[0]
    for v in x[1:]:
        acc = np.float32(acc + v)
    return acc


def test_spill_slots_are_shared_between_phases() -> None:
    """Three phases, each with 40 values live at once, one after the other: their spills reuse
    the same stack words, so the frame holds one phase's spills, not all of them."""
    n = 40
    lines = ["thumb.func @f {", "  %arg = thumb.get_register : !thumb.reg<r1>",
             "  %lr = thumb.get_register : !thumb.reg<lr>", "  %a = thumb.mov %arg : !thumb.reg"]
    for p, name in enumerate("xyz"):
        lines += _sum_lines(name, n, p * n, 3 * n + p)
    lines += ["  thumb.bx %lr", "}"]
    x = np.random.default_rng(7).normal(size=3 * n).astype(np.float32)
    out, res, _ = run("\n".join(lines) + "\n", np.concatenate([x, np.zeros(4, np.float32)]))
    got = np.frombuffer(out, np.float32)[3 * n:3 * n + 3]
    assert list(got) == [_ordered_sum(x[p * n:(p + 1) * n]) for p in range(3)]
    assert res.spills >= 3 * (n - 32)
    assert res.frame_bytes <= 4 * (res.spills // 3) + 4


def test_spill_slots_live_across_a_loop_are_kept() -> None:
    """40 values loaded before a loop are summed at the start of its body, in each of its 3
    iterations; then the body spills 40 values of its own. The first values' slots stay live
    around the whole loop (the next iteration reloads them), so no slot of the body may share
    their words: a shared word would be overwritten before the next iteration reads it."""
    n = 40
    lines = ["thumb.func @f {", "  %arg = thumb.get_register : !thumb.reg<r1>",
             "  %lr = thumb.get_register : !thumb.reg<lr>", "  %a = thumb.mov %arg : !thumb.reg"]
    lines += [f"  %x{i}_ = thumb.vldr %a {{offset = {4 * i}}} : !thumb.sreg" for i in range(n)]
    lines += ["  %k = thumb.movw {imm = 3} : !thumb.reg<r4>", "  thumb.label @loop"]
    acc = "%x0_"
    for i in range(1, n):
        lines.append(f"  %xs{i} = thumb.vadd.f32 {acc}, %x{i}_ : !thumb.sreg")
        acc = f"%xs{i}"
    lines.append(f"  thumb.vstr {acc}, %a {{offset = {4 * (2 * n + 1)}}}")
    lines += _sum_lines("y", n, n, 2 * n)
    lines += ["  %k2 = thumb.sub %k {imm = 1, setflags = true} : !thumb.reg<r4>",
              '  thumb.b {target = @loop, cond = "ne"}', "  thumb.bx %lr", "}"]
    x = np.random.default_rng(8).normal(size=2 * n).astype(np.float32)
    out, res, _ = run("\n".join(lines) + "\n", np.concatenate([x, np.zeros(2, np.float32)]))
    got = np.frombuffer(out, np.float32)[2 * n:2 * n + 2]
    assert list(got) == [_ordered_sum(x[n:]), _ordered_sum(x[:n])]
    assert res.spills > n - 32
