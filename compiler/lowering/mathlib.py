"""Transcendental routines in Thumb-2/FPv4 assembly, linked into a binary when its code calls them.

The loop dialect has one transcendental op, `loop.exp`; sigmoid, tanh and softmax lower to it plus
arithmetic (compiler/lowering/layer_to_loop.py), so the code generator emits `bl ml4f_expf` and
appends `ROUTINES["ml4f_expf"]` to the function text. Routines follow the AAPCS: argument and
result in s0; they clobber at most r0-r3, s0-s15 and the flags (`CLOBBERS` says exactly; r4-r12,
s16-s31, sp and lr are kept: they call nothing); their constants sit in a 4-aligned literal block
right after the code.

`ml4f_expf`, e^x in float32:

* range reduction x = n*ln2 + r with n = round(x*log2(e)) found by adding 1.5*2^23 (the sum's low
  mantissa bits are n), and r by the Cody-Waite two-constant split ln2 = ln2_hi + ln2_lo (ln2_hi has
  15 significant bits, so n*ln2_hi and x - n*ln2_hi are exact for |n| <= 256);
* e^r = 1 + r + r^2*P(r) on |r| <= ln2/2 with P of degree 4, a minimax fit of the relative error
  (3.1e-9 before rounding the coefficients to float32), evaluated in Estrin form with VMUL/VADD
  (1 cycle each; the 3-cycle VFMA would cost more on the Cortex-M4), interleaved so that no FP result
  is read by the very next instruction;
* scaling by 2^n: one VMUL by the float whose bits are (n+127)<<23 when -125 <= n <= 127 (the
  result is normal); otherwise a slow path: NaN -> NaN (quiet), x > 89.1 (or +inf) -> +inf,
  x < -105 (or -inf) -> +0, and in between (x*log2(e) in [-151.5, 128.5): overflow to inf near
  88.72, results in the subnormal range) two multiplications by 2^(n//2) and 2^(n - n//2), the first
  exact and the second the only rounding, so subnormal results are rounded once, correctly.

Measured in the emulator (tests/test_mathlib.py) against float64 NumPy over 200,001 points spread
evenly over [-104, 89], 20,000 random points in [-20, 20] and special values: max error 0.96 ulp
(relative 7.9e-8) for normal results, 0.73 ulp (of the subnormal spacing 2^-149) for subnormal
ones; +inf above 88.7228, +0 below -103.98, quiet NaN for NaN. Cost per call, counting the caller's
`bl` and the return: 48 cycles and 34 instructions on the fast path (-87 < x < 88.3), 54-65 cycles
on the slow path.

    text = ".syntax unified\\n.thumb\\n" + my_code + ROUTINES["ml4f_expf"]
"""

from __future__ import annotations

from dataclasses import dataclass

# The degree-4 minimax P of e^r = 1 + r + r^2*P(r), |r| <= ln2/2 (weighted Lawson/Remez fit of the
# relative error, coefficients rounded to float32; the bit patterns are the authority).
EXP_POLY = (0x3EFFFFFE, 0x3E2AAA48, 0x3D2AAC7C, 0x3C091D7D, 0x3AB5111C)
LOG2E = 0x3FB8AA3B          # log2(e) rounded to float32
ROUND_MAGIC = 0x4B400000    # 1.5 * 2^23: x + magic rounds x to an integer held in the low bits
LN2_HI = 0x3F317200         # 0.693145751953125: 15 significant bits
LN2_LO = 0x35BFBE8E         # ln2 - LN2_HI, rounded to float32

_EXPF = f"""\
    .thumb_func
ml4f_expf:                          @ s0 = e^s0; clobbers r0-r3, s0-s15, flags
    adr r3, .Lml4f_expf_k
    vldm r3, {{s1-s9}}                @ log2e, magic, ln2_hi, ln2_lo, a0..a4
    vmul.f32 s10, s0, s1            @ x*log2e
    vmov r2, s2                     @ bits of the magic constant (fills the FP stall slot)
    vadd.f32 s11, s10, s2           @ t = x*log2e + 1.5*2^23: n = bits(t) - bits(magic)
    vmov.f32 s15, #1.0
    vsub.f32 s12, s11, s2           @ n as a float (exact)
    vmov r0, s11
    vmul.f32 s13, s12, s3           @ n*ln2_hi (exact)
    vmul.f32 s14, s12, s4           @ n*ln2_lo
    vsub.f32 s13, s0, s13           @ x - n*ln2_hi (exact)
    sub r0, r0, r2                  @ r0 = n
    vsub.f32 s13, s13, s14          @ r
    add r1, r0, #125
    vmul.f32 s10, s13, s13          @ r^2
    vmul.f32 s11, s13, s6           @ a1*r
    vmul.f32 s12, s13, s8           @ a3*r
    vmul.f32 s14, s10, s9           @ a4*r^2
    vadd.f32 s12, s12, s7           @ a2 + a3*r
    vadd.f32 s11, s11, s5           @ u0 = a0 + a1*r
    vadd.f32 s12, s12, s14          @ u1 = a2 + a3*r + a4*r^2
    cmp r1, #252                    @ fast path iff -125 <= n <= 127 (unsigned n + 125 <= 252)
    vmul.f32 s12, s12, s10          @ r^2*u1
    lsl r2, r0, #23
    vadd.f32 s11, s11, s12          @ P = u0 + r^2*u1
    add r2, r2, #0x3f800000         @ bits of 2^n
    vmul.f32 s11, s11, s10          @ r^2*P
    vmov s1, r2
    vadd.f32 s11, s11, s13          @ r + r^2*P
    bhi .Lml4f_expf_slow
    vadd.f32 s11, s11, s15          @ e^r = 1 + (r + r^2*P)
    vmul.f32 s0, s11, s1            @ e^r * 2^n (exact: the result is normal)
    bx lr
.Lml4f_expf_slow:
    vadd.f32 s11, s11, s15          @ e^r
    vcmp.f32 s0, s0
    vmrs APSR_nzcv, fpscr
    bvs .Lml4f_expf_nan
    add r1, r0, #151                @ n is exact when -151 <= n <= 128 (else |x| is huge or inf)
    cmp r1, #280
    bhs .Lml4f_expf_clamp
    asr r1, r0, #1                  @ n1 = n >> 1, n2 = n - n1: 2^n1 and 2^n2 are normal
    sub r2, r0, r1
    lsl r1, r1, #23
    lsl r2, r2, #23
    add r1, r1, #0x3f800000
    add r2, r2, #0x3f800000
    vmov s1, r1
    vmov s2, r2
    vmul.f32 s11, s11, s1           @ exact (normal)
    vmul.f32 s0, s11, s2            @ the one rounding: overflow to inf, subnormal results
    bx lr
.Lml4f_expf_clamp:
    vcmp.f32 s0, #0.0               @ +inf for large x, +0 for very negative x
    vmrs APSR_nzcv, fpscr
    ite gt
    movgt r1, #0x7f800000
    movle r1, #0
    vmov s0, r1
    bx lr
.Lml4f_expf_nan:
    vadd.f32 s0, s0, s0             @ NaN in, quiet NaN out
    bx lr
    .align 2
.Lml4f_expf_k:
    .word {LOG2E:#010x}, {ROUND_MAGIC:#010x}, {LN2_HI:#010x}, {LN2_LO:#010x}
    .word {", ".join(f"{w:#010x}" for w in EXP_POLY)}
"""

# Routine name -> GNU unified-syntax assembly (a `.thumb_func` label, the code, its constants).
ROUTINES: dict[str, str] = {"ml4f_expf": _EXPF}

# Which routine implements a loop-dialect op (the code generator emits `bl` to it).
OP_ROUTINES: dict[str, str] = {"loop.exp": "ml4f_expf"}


@dataclass(frozen=True)
class Clobbers:
    """The registers a routine may change (besides the flags): everything else survives the call."""

    core: tuple[int, ...]
    sregs: tuple[int, ...]


# What a caller must assume lost across `bl NAME`; r12 and lr are kept (the routines call nothing),
# so a register allocator may keep values there.
CLOBBERS: dict[str, Clobbers] = {"ml4f_expf": Clobbers(core=(0, 1, 2, 3), sregs=tuple(range(16)))}


def routines_text(names: set[str] | list[str]) -> str:
    """The assembly of the routines `names` (in a stable order), to append after the calling code.

    Example: routines_text({"ml4f_expf"}) -> "    .thumb_func\\nml4f_expf: ..."
    """
    unknown = sorted(set(names) - ROUTINES.keys())
    assert not unknown, f"no math routine {unknown}"
    return "".join(ROUTINES[n] for n in sorted(set(names)))
