"""The Cortex-M4 emulator and its cycle model, on hand-written kernels with hand-counted cycles.

Each kernel is GNU unified assembly, assembled by `assemble()` (the one place that picks the
assembler), packaged as an ML4F binary and run. Every instruction carries its cost from the timing
table of DESIGN §6 in a comment; the expected totals are those comments added up.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import time

import numpy as np
import pytest

from ml4f.compiler.backend.binary import TYPE_F32, TYPE_INT8, IOSpec, build_binary, read_binary
from ml4f.compiler.backend.cycles import BRANCH_REFILL as P
from ml4f.compiler.backend.decode import Kind, decode
from ml4f.compiler.backend.emulator import Emulator, RunResult
from ml4f.compiler.diagnostics import CompileError

GNU_AS = shutil.which("arm-none-eabi-as")


def assemble(text: str) -> bytes:
    """Raw bytes of Thumb-2 assembly (what `as` + `objcopy -O binary` give).

    The built-in assembler is used when it accepts the text; where GNU as is installed, its bytes are
    the reference: they must agree, and they stand in for what the built-in does not cover yet.
    """
    src = ".syntax unified\n.thumb\n" + text + "\n"
    try:
        from ml4f.compiler.backend.assembler import assemble as builtin

        ours = builtin(src)
    except (ImportError, CompileError):
        if GNU_AS is None:
            raise
        ours = None
    if GNU_AS is None:
        return ours
    with tempfile.TemporaryDirectory() as tmp:
        s, o, b = (os.path.join(tmp, n) for n in ("k.s", "k.o", "k.bin"))
        with open(s, "w") as f:
            f.write(src)
        proc = subprocess.run([GNU_AS, "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mthumb", s, "-o", o],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", o, b], check=True)
        with open(b, "rb") as f:
            gnu = f.read()
    assert ours is None or ours == gnu, f"the built-in assembler differs from GNU as on:\n{text}"
    return gnu


def package(code: bytes, weights: bytes = b"", arena_bytes: int = 256, in_shape=(4,), out_shape=(1,),
            in_type: int = TYPE_F32, out_type: int = TYPE_F32, out_offset: int | None = None) -> bytes:
    """An ML4F binary around `code` (input at arena offset 0, output right after it by default)."""
    inp = IOSpec(0, in_type, tuple(in_shape), 0.5 if in_type == TYPE_INT8 else 0.0)
    off = out_offset if out_offset is not None else (inp.nbytes + 3) // 4 * 4
    out = IOSpec(off, out_type, tuple(out_shape), 0.25 if out_type == TYPE_INT8 else 0.0)
    return build_binary(code, weights, arena_bytes=arena_bytes, input=inp, output=out).to_bytes()


def run(image: bytes, arena: bytes | bytearray | None = None, **kw) -> tuple[Emulator, RunResult]:
    """Run a packaged kernel on `arena` (zeros when None); keyword arguments go to the Emulator."""
    h = read_binary(image).header
    emu = Emulator(image, h.arena_bytes, **kw)
    return emu, emu.call(h.entry_offset, arena)


# -- kernels ------------------------------------------------------------------------------------------

# out = sum(x[i] * w[i]) over 16 floats: x in the arena at 0, w in the weights, out at arena 64.
F32_DOT_VMLA = """
    push {r4, lr}            @ 1+2 = 3
    vpush {s16-s17}          @ 1+2 = 3
    ldr r2, [r0, #16]        @ 2      weights_offset (header word 0x10)
    add r2, r0               @ 1
    movs r3, #0              @ 1
    vmov s16, r3             @ 1      acc = 0.0
    movs r3, #4              @ 1
loop:
    vldm r1!, {s0-s3}        @ 1+4 = 5
    vldm r2!, {s4-s7}        @ 5
    vmla.f32 s16, s0, s4     @ 3
    vmla.f32 s16, s1, s5     @ 3      s16 is only the accumulator: no stall
    vmla.f32 s16, s2, s6     @ 3
    vmla.f32 s16, s3, s7     @ 3
    subs r3, #1              @ 1
    bne loop                 @ 1, +P when taken (3 times)
    vstr s16, [r1]           @ 2
    vpop {s16-s17}           @ 3
    pop {r4, pc}             @ 1+2, +P (return)
"""
F32_DOT_VMLA_CYCLES = (3 + 3 + 2 + 1 + 1 + 1 + 1) + 4 * (5 + 5 + 4 * 3 + 1 + 1) + 3 * P + (2 + 3 + 3 + P)

# The same with VMUL + VADD, two products per iteration: shows the FP result-use stall.
F32_DOT_VMUL_VADD = """
    vpush {s16}              @ 1+1 = 2
    ldr r2, [r0, #16]        @ 2
    add r2, r0               @ 1
    movs r3, #0              @ 1
    vmov s16, r3             @ 1
    movs r3, #8              @ 1
loop:
    vldm r1!, {s0-s1}        @ 1+2 = 3
    vldm r2!, {s2-s3}        @ 3
    vmul.f32 s4, s0, s2      @ 1
    vmul.f32 s5, s1, s3      @ 1
    vadd.f32 s16, s16, s4    @ 1      s4 was produced two instructions ago: no stall
    vadd.f32 s16, s16, s5    @ 1+1    s16 produced by the previous VADD: stall
    subs r3, #1              @ 1
    bne loop                 @ 1, +P taken 7 times
    vstr s16, [r1]           @ 2
    vpop {s16}               @ 2
    bx lr                    @ 1+P
"""
F32_DOT_VMUL_VADD_CYCLES = (2 + 2 + 1 + 1 + 1 + 1) + 8 * (3 + 3 + 1 + 1 + 1 + 2 + 1 + 1) + 7 * P + (2 + 2 + 1 + P)

# out = sum(x[i] * w[i]) over 16 int8 values with SMLAD (two 16-bit MACs a cycle), as int32.
I8_DOT_SMLAD = """
    push {r4-r7, lr}         @ 1+5 = 6
    ldr r2, [r0, #16]        @ 2
    add r2, r0               @ 1
    movs r3, #0              @ 1      acc
    movs r7, #4              @ 1
loop:
    ldr r4, [r1], #4         @ 2      (after a MOVS or a branch: not pipelined)
    ldr r5, [r2], #4         @ 1      pipelined after LDR (r4 is not its base)
    sxtb16 r6, r4            @ 1      bytes 0, 2 sign-extended to halfwords
    sxtb16 r4, r4, ror #8    @ 1      bytes 1, 3
    sxtb16 r12, r5           @ 1
    sxtb16 r5, r5, ror #8    @ 1
    smlad r3, r6, r12, r3    @ 1
    smlad r3, r4, r5, r3     @ 1
    subs r7, #1              @ 1
    bne loop                 @ 1, +P taken 3 times
    str r3, [r1]             @ 1
    pop {r4-r7, pc}          @ 1+5, +P
"""
I8_DOT_SMLAD_CYCLES = (6 + 2 + 1 + 1 + 1) + 4 * (2 + 1 + 4 + 2 + 1 + 1) + 3 * P + (1 + 6 + P)

# y[i] = x[i] * 1000003 + 0x12345678 (mod 2^32) in place over 8 words, constants from a literal pool.
LITERAL_LOOP = """
    push {r4-r6, lr}         @ 1+4 = 5
    movs r2, #8              @ 1
    mov r3, r1               @ 1
loop:
    ldr r4, [r3]             @ 2
    ldr r5, =1000003         @ 1      literal load pipelined after LDR
    ldr r6, =0x12345678      @ 1      likewise
    mla r4, r4, r5, r6       @ 1
    str r4, [r3], #4         @ 1
    subs r2, #1              @ 1
    bne loop                 @ 1, +P taken 7 times
    pop {r4-r6, pc}          @ 1+4, +P
    .ltorg
"""
LITERAL_LOOP_CYCLES = (5 + 1 + 1) + 8 * (2 + 1 + 1 + 1 + 1 + 1 + 1) + 7 * P + (5 + P)

# Straight-line code through the rest of the table: divides, LDRD, pipelining rules, FP stalls.
TIMING_MIX = """
    push {r4, r5, lr}        @ 1+3 = 4
    movs r2, #100            @ 1
    movs r3, #7              @ 1
    sdiv r4, r2, r3          @ 12
    udiv r5, r2, r3          @ 12
    str r4, [r1]             @ 1
    str r5, [r1, #4]         @ 1
    ldrd r2, r3, [r1]        @ 3
    ldr r4, [r1]             @ 2      LDRD does not pipeline
    str r1, [r1, #8]         @ 1
    ldr r4, [r1, #8]         @ 1      pipelined after STR (immediate offset)
    ldr r5, [r4, #4]         @ 2      its base is the register just loaded: not pipelined
    str r5, [r1, r2]         @ 1      register-offset store
    ldr r2, [r1]             @ 2      nothing pipelines after a register-offset STR
    smull r2, r3, r4, r5     @ 1
    mul r3, r2, r2           @ 1
    vmov s0, r5              @ 1
    vcvt.f32.s32 s0, s0      @ 1
    vmul.f32 s1, s0, s0      @ 1+1    s0 from VCVT
    vdiv.f32 s2, s1, s0      @ 14+1   s1 from VMUL
    vsqrt.f32 s3, s2         @ 14+1   s2 from VDIV
    vmla.f32 s3, s0, s0      @ 3      s3 only as the accumulator: no stall
    vstr s3, [r1, #12]       @ 2+1    s3 from VMLA
    vmov r2, s3              @ 1      VSTR produces nothing
    vneg.f32 s4, s3          @ 1
    vadd.f32 s5, s4, s4      @ 1      VNEG is not an arithmetic producer
    vstr s5, [r1, #16]       @ 2+1
    vldr d3, [r1, #16]       @ 3      the 64-bit form
    ldr r4, [r1, #16]        @ 2      FP loads and stores do not pipeline a core LDR
    pop {r4, r5, pc}         @ 1+3, +P
"""
TIMING_MIX_CYCLES = (4 + 1 + 1 + 12 + 12 + 1 + 1 + 3 + 2 + 1 + 1 + 2 + 1 + 2 + 1 + 1 + 1 + 1 + 2 + 15 + 15 + 3
                     + 3 + 1 + 1 + 1 + 3 + 3 + 2 + 4 + P)


def _count_instructions(src: str) -> int:
    return sum(1 for line in src.splitlines()
               if line.strip() and not line.strip().endswith(":") and not line.strip().startswith((".", "@")))


def test_f32_dot_vmla() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(16).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    image = package(assemble(F32_DOT_VMLA), w.tobytes(), arena_bytes=68, in_shape=(16,))
    arena = x.tobytes() + bytes(4)
    _, r = run(image, arena)
    acc = np.float32(0)
    for a, b in zip(x, w):                       # VMLA rounds the product, then the sum
        acc = np.float32(acc + np.float32(a * b))
    got = np.frombuffer(r.arena, np.float32, 1, 64)[0]
    assert got == acc
    assert abs(got - float(np.dot(x.astype(np.float64), w))) < 1e-5
    assert r.cycles == F32_DOT_VMLA_CYCLES
    assert r.instructions == 7 + 4 * 8 + 3
    assert r.stack_bytes == 16                   # push {r4, lr} + vpush {s16-s17}


def test_f32_dot_vmul_vadd_stall() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(16).astype(np.float32)
    w = rng.standard_normal(16).astype(np.float32)
    image = package(assemble(F32_DOT_VMUL_VADD), w.tobytes(), arena_bytes=68, in_shape=(16,))
    _, r = run(image, x.tobytes() + bytes(4))
    acc = np.float32(0)
    for i in range(0, 16, 2):
        acc = np.float32(acc + np.float32(x[i] * w[i]))
        acc = np.float32(acc + np.float32(x[i + 1] * w[i + 1]))
    assert np.frombuffer(r.arena, np.float32, 1, 64)[0] == acc
    assert r.cycles == F32_DOT_VMUL_VADD_CYCLES
    assert r.instructions == 6 + 8 * 8 + 3


def test_int8_dot_smlad() -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, 16).astype(np.int8)
    w = rng.integers(-128, 128, 16).astype(np.int8)
    image = package(assemble(I8_DOT_SMLAD), w.tobytes(), arena_bytes=20, in_shape=(16,), in_type=TYPE_INT8,
                    out_offset=16)
    _, r = run(image, x.tobytes() + bytes(4))
    assert np.frombuffer(r.arena, np.int32, 1, 16)[0] == int(np.dot(x.astype(np.int32), w.astype(np.int32)))
    assert r.cycles == I8_DOT_SMLAD_CYCLES
    assert r.instructions == 5 + 4 * 10 + 2


def test_literal_pool_loop() -> None:
    x = np.arange(-3, 5, dtype=np.int32) * 77777
    image = package(assemble(LITERAL_LOOP), arena_bytes=32, in_shape=(8,), out_offset=0, out_shape=(8,))
    _, r = run(image, x.tobytes())
    want = (x.astype(np.int64) * 1000003 + 0x12345678) & 0xFFFFFFFF
    assert (np.frombuffer(r.arena, np.uint32) == want.astype(np.uint32)).all()
    assert r.cycles == LITERAL_LOOP_CYCLES
    assert r.instructions == 3 + 8 * 7 + 1


def test_timing_mix() -> None:
    image = package(assemble(TIMING_MIX), arena_bytes=64)
    emu, r = run(image)
    assert r.instructions == _count_instructions(TIMING_MIX)
    assert r.cycles == TIMING_MIX_CYCLES
    words = np.frombuffer(r.arena, np.uint32)
    assert words[0] == 14 and words[1] == 14 and words[2] == emu.arena_address
    v = np.float32(14) * np.float32(14)
    s3 = np.float32(np.float32(np.sqrt(np.float32(v / np.float32(14)))) + np.float32(196))
    assert np.frombuffer(r.arena, np.float32, 1, 12)[0] == s3
    assert np.frombuffer(r.arena, np.float32, 1, 16)[0] == np.float32(-2 * s3)


def test_ranges_split_cycles() -> None:
    """Cycles per label range: the loop's range gets the loop's hand count, and ranges sum to the total."""
    code = assemble(F32_DOT_VMLA)
    image = package(code, bytes(64), arena_bytes=68, in_shape=(16,))
    hs = read_binary(image).header.header_size
    loop = hs + 18                               # the prologue is 18 bytes (checked below)
    assert decode(image, loop).mnemonic == "vldm"
    ranges = [("prologue", hs, loop), ("loop", loop, loop + 28), ("epilogue", loop + 28, hs + len(code))]
    _, r = run(image, bytes(68), ranges=ranges)
    assert r.ranges["prologue"].cycles == 3 + 3 + 2 + 1 + 1 + 1 + 1
    assert r.ranges["loop"].cycles == 4 * (5 + 5 + 12 + 1 + 1) + 3 * P
    assert r.ranges["loop"].instructions == 32
    assert r.ranges["epilogue"].cycles == 2 + 3 + 3 + P
    assert sum(s.cycles for s in r.ranges.values()) == r.cycles


# -- memory safety and the ABI -------------------------------------------------------------------------


def _error(src: str, arena_bytes: int = 64, **kw) -> str:
    image = package(assemble(src), arena_bytes=arena_bytes)
    with pytest.raises(CompileError) as e:
        run(image, where="k.bin", **kw)
    return e.value.one_line()


def test_store_past_arena_is_caught() -> None:
    msg = _error("movs r2, #1\n str r2, [r1, #64]\n bx lr")
    assert msg.startswith("k.bin: error: invalid write of 4 bytes at 0x")
    assert "(arena offset 64, outside the 64-byte arena)" in msg
    assert "by the instruction at code offset 0x52 (str " in msg    # header 0x50 + movs; decoded mnemonic


def test_unaligned_arena_tail_and_head_are_caught() -> None:
    """The arena does not fill its pages: the bytes around it are watched too."""
    assert "arena offset 64, outside the 62-byte arena" in _error("ldr r2, [r1, #64]\n bx lr", arena_bytes=62)
    assert "arena offset -4, outside the 64-byte arena" in _error("movs r2, #0\n str r2, [r1, #-4]\n bx lr")


def test_write_to_binary_and_read_past_it() -> None:
    msg = _error("movs r2, #0\n str r2, [r0, #8]\n bx lr")
    assert "invalid write of 4 bytes" in msg and "(binary offset 8: the binary is read-only)" in msg
    msg = _error("ldr r2, [r0, #0x100]\n bx lr")
    assert "invalid read of 4 bytes" in msg and "(binary offset 256, past the end of the 88-byte binary)" in msg


def test_unaligned_multiple_transfers() -> None:
    """LDM/VLDM/LDRD need word alignment on the chip (unicorn does not check): the option does."""
    for src, what in (("adds r2, r1, #2\n ldm r2, {r2, r3}", "ldm"), ("adds r2, r1, #2\n vldmia r2, {s0-s1}", "vldm"),
                      ("adds r2, r1, #6\n vstr s0, [r2]", "vstr"), ("adds r2, r1, #1\n ldrd r2, r3, [r2]", "ldrd")):
        msg = _error(src + "\n bx lr", check_alignment=True)
        assert "unaligned " in msg and f"({what} " in msg and "needs a word-aligned address" in msg, msg
    # unaligned LDR/STR are legal on the Cortex-M4 and pass; aligned multiples pass
    image = package(assemble("ldr r2, [r1, #2]\n str r2, [r1, #5]\n ldm r1, {r2, r3}\n vldmia r1, {s0-s1}\n bx lr"))
    _, r = run(image, check_alignment=True)
    assert r.instructions == 5


def test_stack_overflow_and_bad_jump() -> None:
    msg = _error("sub sp, #4096\n push {r4}\n add sp, #4096\n bx lr", stack_bytes=4096)
    assert "stack overflow" in msg and "push" in msg
    msg = _error("bx r1")
    assert "jump to 0x" in msg and "bx " in msg


def test_endless_loop_and_exceptions_stop_the_run() -> None:
    assert "did not return after 1,000 basic blocks" in _error("loop: b loop", max_blocks=1000)
    assert "UC_ERR_EXCEPTION) at code offset 0x52 (svc (df01))" in _error("nop\n svc #1\n bx lr")
    assert "UC_ERR_INSN_INVALID) at code offset 0x50 (udf (de00))" in _error("udf #0\n bx lr")


def test_long_straight_line_code_split_into_blocks() -> None:
    """Unicorn cuts long straight-line code into several blocks; neighbour rules still apply across cuts."""
    n = 1500
    image = package(assemble("vadd.f32 s0, s0, s1\n" * n + "ldr r2, [r1]\n ldr r3, [r1, #4]\n" * n + "bx lr"))
    _, r = run(image)
    assert r.blocks > 2
    # each VADD reads the previous one's result (+1), each LDR after the first is pipelined (1)
    assert r.cycles == (2 * n - 1) + (2 + (2 * n - 1)) + 1 + P


def test_aapcs_violations_are_reported() -> None:
    assert "does not preserve r4 (the AAPCS" in _error("movs r4, #0\n bx lr")
    assert "does not preserve s16" in _error("vmov s16, r0\n bx lr")
    assert "does not preserve r5, r11, sp" in _error("push {r0}\n mov r5, r0\n mov r11, r0\n bx lr")
    # saving and restoring them is fine, scratch registers are free to use
    image = package(assemble("push {r4}\n vpush {s16}\n movs r4, #0\n vmov s16, r4\n movs r2, #1\n"
                             " vmov s0, r2\n vpop {s16}\n pop {r4}\n bx lr"))
    _, r = run(image)
    assert r.stack_bytes == 8


def test_stack_high_water() -> None:
    image = package(assemble("push {r4-r7, lr}\n sub sp, #200\n movs r2, #0\n str r2, [sp]\n add sp, #200\n"
                             " pop {r4-r7, pc}"))
    _, r = run(image)
    assert r.stack_bytes == 220


# -- the decoder ----------------------------------------------------------------------------------------

DECODE_CASES = [
    ("movs r0, #1", "movs", Kind.ALU), ("adds r0, r1, r2", "adds", Kind.ALU), ("muls r0, r1", "muls", Kind.MUL),
    ("bx lr", "bx", Kind.BRANCH), ("mov pc, r1", "mov", Kind.BRANCH), ("ldr r0, [r1, r2]", "ldr", Kind.LOAD),
    ("strb r0, [r1, #3]", "strb", Kind.STORE), ("ldrh r0, [r1, #2]", "ldrh", Kind.LOAD),
    ("ldr r0, [sp, #8]", "ldr", Kind.LOAD), ("str r0, [sp, #8]", "str", Kind.STORE),
    ("push {r4-r7, lr}", "push", Kind.MULTI), ("pop {r4, pc}", "pop", Kind.MULTI),
    ("ldmia r0!, {r1, r2}", "ldm", Kind.MULTI), ("it eq", "it", Kind.ALU), ("moveq r0, r1", "mov", Kind.ALU), ("nop", "nop", Kind.ALU),
    ("beq n1\nn1:", "beq", Kind.BRANCH), ("b n2\nn2:", "b", Kind.BRANCH), ("bl far", "bl", Kind.BRANCH),
    ("beq.w far", "beq.w", Kind.BRANCH), ("b.w far", "b.w", Kind.BRANCH),
    ("movw r0, #0x1234", "movw", Kind.ALU), ("movt r0, #0x1234", "movt", Kind.ALU),
    ("addw r0, r1, #123", "addw", Kind.ALU), ("add.w r0, r1, r2, lsl #2", "add.w", Kind.ALU),
    ("ldr.w r0, [r1, #1000]", "ldr.w", Kind.LOAD), ("ldr r0, [r1], #4", "ldr.w", Kind.LOAD),
    ("ldrsb.w r0, [r1, r2]", "ldrsb.w", Kind.LOAD), ("str.w r0, [r1, #1000]", "str.w", Kind.STORE),
    ("strh.w r0, [r1, r2, lsl #1]", "strh.w", Kind.STORE), ("ldrd r0, r1, [r2, #8]", "ldrd", Kind.DUAL),
    ("strd r0, r1, [r2]", "strd", Kind.DUAL), ("tbb [r0, r1]", "tbb", Kind.TABLE_BRANCH),
    ("ldr.w pc, [r0]", "ldr", Kind.LOAD), ("stmdb sp!, {r4-r11}", "push.w", Kind.MULTI),
    ("ldmia.w sp!, {r4-r11, pc}", "pop.w", Kind.MULTI),
    ("sxtb16 r0, r1", "sxtb16", Kind.ALU), ("uxtb16 r0, r1, ror #8", "uxtb16", Kind.ALU),
    ("smlad r0, r1, r2, r3", "smlad", Kind.MUL), ("smladx r0, r1, r2, r3", "smladx", Kind.MUL),
    ("smuad r0, r1, r2", "smuad", Kind.MUL), ("smlabb r0, r1, r2, r3", "smlabb", Kind.MUL),
    ("smulbb r0, r1, r2", "smulbb", Kind.MUL), ("mla r0, r1, r2, r3", "mla", Kind.MUL),
    ("mls r0, r1, r2, r3", "mls", Kind.MUL), ("smull r0, r1, r2, r3", "smull", Kind.MUL),
    ("smlal r0, r1, r2, r3", "smlal", Kind.MUL), ("sdiv r0, r1, r2", "sdiv", Kind.DIV),
    ("udiv r0, r1, r2", "udiv", Kind.DIV), ("ssat r0, #8, r1", "ssat", Kind.ALU), ("usat r0, #8, r1", "usat", Kind.ALU),
    ("qadd r0, r1, r2", "qadd", Kind.ALU), ("sadd16 r0, r1, r2", "sadd16", Kind.ALU),
    ("pkhbt r0, r1, r2, lsl #16", "pkhbt.w", Kind.ALU), ("clz r0, r1", "clz", Kind.ALU),
    ("vldr s3, [r0, #8]", "vldr", Kind.FP_LOAD), ("vstr s17, [r0]", "vstr", Kind.FP_STORE),
    ("vldmia r0!, {s4-s11}", "vldm", Kind.FP_MULTI), ("vpush {s16-s31}", "vpush", Kind.FP_MULTI),
    ("vpop {s16-s19}", "vpop", Kind.FP_MULTI), ("vmov s5, r2", "vmov", Kind.FP_MOVE),
    ("vmov r2, s5", "vmov", Kind.FP_MOVE), ("vmov s4, s5, r0, r1", "vmov", Kind.FP_MOVE2),
    ("vmov.f32 s1, #1.0", "vmov.f32", Kind.FP_MOVE), ("vmov.f32 s1, s2", "vmov.f32", Kind.FP_MOVE),
    ("vadd.f32 s1, s2, s3", "vadd.f32", Kind.FP_ARITH), ("vsub.f32 s1, s2, s3", "vsub.f32", Kind.FP_ARITH),
    ("vmul.f32 s1, s2, s3", "vmul.f32", Kind.FP_ARITH), ("vnmul.f32 s1, s2, s3", "vnmul.f32", Kind.FP_ARITH),
    ("vmla.f32 s1, s2, s3", "vmla.f32", Kind.FP_MAC), ("vmls.f32 s1, s2, s3", "vmls.f32", Kind.FP_MAC),
    ("vfma.f32 s1, s2, s3", "vfma.f32", Kind.FP_MAC), ("vfms.f32 s1, s2, s3", "vfms.f32", Kind.FP_MAC),
    ("vdiv.f32 s1, s2, s3", "vdiv.f32", Kind.FP_DIV), ("vsqrt.f32 s1, s2", "vsqrt.f32", Kind.FP_DIV),
    ("vneg.f32 s1, s2", "vneg.f32", Kind.FP_MOVE), ("vabs.f32 s1, s2", "vabs.f32", Kind.FP_MOVE),
    ("vcmp.f32 s1, s2", "vcmp.f32", Kind.FP_MOVE), ("vcmpe.f32 s1, #0", "vcmpe.f32", Kind.FP_MOVE),
    ("vmrs APSR_nzcv, fpscr", "vmrs", Kind.FP_MOVE), ("vcvt.s32.f32 s1, s2", "vcvt.s32.f32", Kind.FP_ARITH),
    ("vcvt.f32.s32 s1, s2", "vcvt.f32.s32", Kind.FP_ARITH), ("vcvtb.f32.f16 s1, s2", "vcvtb.f32.f16", Kind.FP_ARITH),
    ("vcvtt.f16.f32 s1, s2", "vcvtt.f16.f32", Kind.FP_ARITH),
    ("vcvt.f32.s32 s1, s1, #8", "vcvt.fixed", Kind.FP_ARITH), ("cbz r0, far", "cbz", Kind.BRANCH),
    ("nop", "nop", Kind.ALU),                    # cbz to the next instruction would become a nop
]


def test_decoder_classes() -> None:
    code = assemble("\n".join(c for c, _, _ in DECODE_CASES) + "\nfar:")
    pos = 0
    for text, mnemonic, kind in DECODE_CASES:
        insn = decode(code, pos)
        assert (insn.mnemonic, insn.kind) == (mnemonic, kind), text
        pos += insn.size
    assert pos == len(code)


def test_decoder_registers() -> None:
    code = assemble("ldr r5, [r2, r7]\n vmla.f32 s17, s3, s30\n vldmia r0!, {s4-s11}\n str r1, [r3, r4]")
    ldr, vmla, vldm, st = decode(code, 0), decode(code, 2), decode(code, 6), decode(code, 10)
    assert (ldr.rt, ldr.rn, ldr.rm) == (5, 2, 7)
    assert (vmla.fdst, vmla.fsrc, vmla.facc) == ((17,), (3, 30), 17)
    assert vldm.nregs == 8 and vldm.fdst == tuple(range(4, 12))
    assert st.reg_offset and st.kind is Kind.STORE


# -- throughput -------------------------------------------------------------------------------------------

LONG_LOOP = """
    ldr r2, =400000          @ 2
loop:
    ldr r3, [r1]             @ 2; 1 in the first iteration (pipelined after the literal LDR)
    adds r3, #1              @ 1
    str r3, [r1]             @ 1
    vldr s0, [r1, #4]        @ 2
    vadd.f32 s1, s1, s0      @ 1
    eor r3, r3, #5           @ 1
    subs r2, #1              @ 1
    bne loop                 @ 1, +P taken 399999 times
    bx lr                    @ 1+P
    .ltorg
"""


def test_throughput() -> None:
    """Millions of instructions a second: counted per block, never per instruction in Python."""
    image = package(assemble(LONG_LOOP))
    t = time.perf_counter()
    _, r = run(image)
    dt = time.perf_counter() - t
    assert r.instructions == 1 + 400000 * 8 + 1
    assert np.frombuffer(r.arena, np.int32, 1, 0)[0] == 400000
    assert r.cycles == 2 + 400000 * (2 + 1 + 1 + 2 + 1 + 1 + 1 + 1) - 1 + 399999 * P + 1 + P
    rate = r.instructions / dt
    print(f"\nemulator: {r.instructions:,} instructions in {dt:.2f} s = {rate / 1e6:.1f} M instructions/s")
    assert rate > 1e6


def test_repeated_calls_reuse_blocks() -> None:
    image = package(assemble(LITERAL_LOOP), arena_bytes=32, in_shape=(8,), out_offset=0, out_shape=(8,))
    entry = read_binary(image).header.entry_offset
    assert entry == 0x50                          # 16 header words + shapes [8, 0, 8, 0]
    emu = Emulator(image, 32)
    x = np.arange(8, dtype=np.int32).tobytes()
    first = emu.call(entry, x)
    second = emu.call(entry, x)
    assert first.arena == second.arena and first.cycles == second.cycles == LITERAL_LOOP_CYCLES
    assert struct.unpack("<I", first.arena[4:8])[0] == (1 * 1000003 + 0x12345678) & 0xFFFFFFFF
