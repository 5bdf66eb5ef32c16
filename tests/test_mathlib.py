"""The math routines (compiler/lowering/mathlib.py) run in the emulator against float64 NumPy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from thumb_corpus import AS, gnu_run

from ml4f.compiler.backend.assembler import assemble
from ml4f.compiler.backend.binary import TYPE_F32, IOSpec, build_binary
from ml4f.compiler.backend.emulator import Emulator, RunResult
from ml4f.compiler.lowering.mathlib import CLOBBERS, OP_ROUTINES, ROUTINES, routines_text

SMALLEST_NORMAL = 2.0**-126
SUBNORMAL_ULP = 2.0**-149
F32_MAX = float(np.finfo(np.float32).max)
OVERFLOW = 2.0**128 - 2.0**103      # float64 values from here on round to +inf in float32

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40, -1e-40, 1e-30, 88.72283,
                     88.722839, 88.7229, 89.0, 89.2, 100.0, 3e38, -3e38, 1e30, -1e30, -86.99, -87.0,
                     -87.4, -103.97, -103.98, -104.0, -105.0, -110.0, 127.5 * np.log(2), 0.3465736,
                     -0.3465736, 2.0**-24], dtype=np.float32)


def _loop_kernel(routine: str, n: int) -> str:
    """entry(model, arena): arena[i] = routine(arena[i]) for i < n."""
    return f"""\
    .syntax unified
    .thumb
    .thumb_func
entry:
    push {{r4, r5, r6, lr}}
    mov r4, r1
    movw r5, #{n & 0xFFFF}
    movt r5, #{n >> 16}
.Lloop:
    vldr s0, [r4]
    bl {routine}
    vstr s0, [r4]
    add r4, r4, #4
    subs r5, r5, #1
    bne .Lloop
    pop {{r4, r5, r6, pc}}
""" + ROUTINES[routine]


def _one_call_kernel(routine: str, call: bool) -> str:
    """entry(model, arena): arena[0] = routine(arena[0]), or the same code without the call."""
    body = f"    bl {routine}\n" if call else ""
    return f"""\
    .syntax unified
    .thumb
    .thumb_func
entry:
    push {{r1, lr}}
    vldr s0, [r1]
{body}    pop {{r1, lr}}
    vstr s0, [r1]
    bx lr
""" + ROUTINES[routine]


def _run(text: str, x: np.ndarray) -> tuple[np.ndarray, RunResult]:
    code = assemble(text)
    x = np.ascontiguousarray(x, dtype=np.float32)
    io = IOSpec(0, TYPE_F32, (len(x),))
    b = build_binary(code, b"", arena_bytes=x.nbytes, input=io, output=io)
    # The emulator checks that r4-r11, s16-s31 and sp are preserved across the call.
    r = Emulator(b.to_bytes(), x.nbytes).call(b.header.header_size, x.tobytes())
    return np.frombuffer(r.arena, dtype=np.float32), r


def _ulps(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|y - ref| in units of the float32 spacing at ref (2^-149 in the subnormal range)."""
    mag = np.maximum(ref, SMALLEST_NORMAL)
    ulp = np.where(ref >= SMALLEST_NORMAL, 2.0 ** (np.floor(np.log2(mag)) - 23), SUBNORMAL_ULP)
    return np.abs(y.astype(np.float64) - ref) / ulp


@pytest.fixture(scope="module")
def expf_sweep() -> tuple[np.ndarray, np.ndarray, RunResult]:
    rng = np.random.default_rng(7)
    x = np.concatenate([np.linspace(-104, 89, 200_001, dtype=np.float32),
                        rng.uniform(-20, 20, 20_000).astype(np.float32), SPECIALS])
    y, r = _run(_loop_kernel("ml4f_expf", len(x)), x)
    return x, y, r


def test_expf_is_within_one_ulp_of_float64(expf_sweep) -> None:
    x, y, _ = expf_sweep
    with np.errstate(over="ignore"):
        ref = np.exp(x.astype(np.float64))
    normal = np.isfinite(x) & (ref >= SMALLEST_NORMAL) & (ref <= F32_MAX)
    sub = np.isfinite(x) & (ref < SMALLEST_NORMAL)
    err = _ulps(y[normal], ref[normal])
    rel = np.abs(y[normal] - ref[normal]) / ref[normal]
    assert err.max() <= 1.0, f"{err.max():.3f} ulp at x = {x[normal][np.argmax(err)]!r}"
    assert rel.max() <= 1.2e-7
    assert _ulps(y[sub], ref[sub]).max() <= 1.0
    # the subnormal range is reached (not flushed to zero) where e^x is representable
    assert np.all(y[sub & (ref > 2 * SUBNORMAL_ULP)] > 0)
    # overflow: +inf exactly where the float64 value rounds above FLT_MAX
    over = np.isfinite(x) & (ref > OVERFLOW)
    assert np.all(y[over] == np.inf) and np.isfinite(y[~over & np.isfinite(x)]).all()


def test_expf_special_values(expf_sweep) -> None:
    _, y, _ = expf_sweep
    got = y[-len(SPECIALS):]
    with np.errstate(over="ignore"):
        ref = np.exp(SPECIALS.astype(np.float64))
    for x, g, r in zip(SPECIALS, got, ref):
        if np.isnan(x):
            assert np.isnan(g)
        elif r > OVERFLOW:          # rounds to +inf
            assert g == np.inf, x
        elif r < SUBNORMAL_ULP / 2:                 # rounds to +0 (not -0)
            assert g.view(np.uint32) == 0, (x, g)
        else:
            assert _ulps(np.array([g]), np.array([r]))[0] <= 1.0, (x, g, r)
    assert got[SPECIALS == 0.0].tolist() == [1.0, 1.0] and got[SPECIALS == -np.inf][0] == 0.0


@pytest.mark.parametrize("x, fast", [(0.5, True), (-3.0, True), (60.0, True), (88.5, False),
                                     (-100.0, False), (float("nan"), False), (1000.0, False)])
def test_expf_cycles_per_call(x: float, fast: bool) -> None:
    y1, with_call = _run(_one_call_kernel("ml4f_expf", True), np.array([x]))
    _, without = _run(_one_call_kernel("ml4f_expf", False), np.array([x]))
    cycles = with_call.cycles - without.cycles
    insns = with_call.instructions - without.instructions
    # the bl and the return included; the fast path is straight-line with no FP stall but the last
    if fast:
        assert cycles <= 48 and insns <= 34, (cycles, insns)
    else:
        assert cycles <= 66, cycles
    if np.isnan(x):
        assert np.isnan(y1[0])
    else:
        with np.errstate(over="ignore"):
            ref = np.exp(np.float64(x))
        assert y1[0] == np.inf if ref > F32_MAX else _ulps(y1, np.array([ref]))[0] <= 1.0


@pytest.mark.skipif(AS is None, reason="arm-none-eabi-as is needed")
@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_routines_assemble_like_gnu_as(name: str) -> None:
    text = _loop_kernel(name, 5)
    assert assemble(text) == gnu_run(text).code


def test_every_transcendental_loop_op_has_a_routine() -> None:
    from ml4f.dialects import loop

    # ops whose meaning needs more than one FPv4 instruction (VDIV/VSQRT exist, e^x does not)
    pure = [c for c in vars(loop).values()
            if isinstance(c, type) and issubclass(c, loop._Pure) and c is not loop._Pure]
    transcendental = {c.name for c in pure if c.fn in (np.exp, np.log, np.tanh, np.expm1, np.log1p, np.power)}
    assert "loop.exp" in transcendental and transcendental <= OP_ROUTINES.keys()
    assert set(OP_ROUTINES.values()) <= ROUTINES.keys()
    text = routines_text({"ml4f_expf"})
    assert text.count("ml4f_expf:") == 1 and "\n    .align 2\n" in text


@pytest.mark.parametrize("name", sorted(ROUTINES))
def test_routines_keep_every_register_outside_their_clobber_list(name: str) -> None:
    """Fill every register the routine may keep, call it, store them all: nothing may change."""
    clob = CLOBBERS[name]
    core = [r for r in (0, 2, 3, 12) if r not in clob.core]      # r1 holds the arena
    sregs = [s for s in range(1, 16) if s not in clob.sregs]
    sets = "".join(f"    movw r{r}, #{0x100 + r}\n" for r in core) + \
        "".join(f"    vmov.f32 s{s}, #{s}.0\n" for s in sregs)
    keep = "".join(f"    str r{r}, [r1, #{4 + 4 * i}]\n" for i, r in enumerate(core)) + \
        "".join(f"    vstr s{s}, [r1, #{24 + 4 * i}]\n" for i, s in enumerate(sregs))
    text = f"""\
    .syntax unified
    .thumb
    .thumb_func
entry:
    push {{r1, lr}}
{sets}    vldr s0, [r1]
    bl {name}
    pop {{r1, lr}}
    vstr s0, [r1]
{keep}    bx lr
""" + ROUTINES[name]
    x = np.zeros(24, np.float32)
    x[0] = 0.25
    y, _ = _run(text, x)
    words = y.view(np.uint32)
    assert core and [int(w) for w in words[1:1 + len(core)]] == [0x100 + r for r in core]
    assert _ulps(y[:1], np.exp(np.array([0.25])))[0] <= 1.0
    assert y[6:6 + len(sregs)].tolist() == [float(s) for s in sregs]
