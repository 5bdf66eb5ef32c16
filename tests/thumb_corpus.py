"""Random Thumb-2 instruction lines for every declared form, and GNU as as the oracle.

`gnu_assemble(lines)` runs `arm-none-eabi-as` twice at most: once to learn which lines it rejects
(it reports every bad line and keeps going), once on the rest for the bytes.
"""

from __future__ import annotations

import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ml4f.dialects.thumb.encodings import COND_NAMES, FORMS, S_SUFFIX, TWO_OPERAND

AS = shutil.which("arm-none-eabi-as")
OBJCOPY = shutil.which("arm-none-eabi-objcopy")
AS_FLAGS = ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mthumb"]
HEADER = ".syntax unified\n.thumb\n"


@dataclass
class GnuResult:
    code: bytes | None
    errors: dict[int, str]   # 1-based line number in the given text -> message
    warnings: dict[int, str]


def gnu_run(text: str) -> GnuResult:
    with tempfile.TemporaryDirectory() as d:
        src, obj, binf = Path(d, "a.s"), Path(d, "a.o"), Path(d, "a.bin")
        src.write_text(text)
        r = subprocess.run([AS, *AS_FLAGS, str(src), "-o", str(obj)], capture_output=True, text=True,
                           check=False)
        errors, warnings = {}, {}
        for m in re.finditer(r"a\.s:(\d+): (Error|Warning): (.*)", r.stderr):
            (errors if m.group(2) == "Error" else warnings)[int(m.group(1))] = m.group(3)
        if r.returncode != 0:
            return GnuResult(None, errors, warnings)
        subprocess.run([OBJCOPY, "-O", "binary", str(obj), str(binf)], check=True)
        return GnuResult(binf.read_bytes(), errors, warnings)


# ----------------------------------------------------------------------------- operand generators

LOW = [f"r{i}" for i in range(8)]
HIGH = ["r8", "r9", "r10", "r11", "r12", "sp", "lr", "pc"]
INTERESTING = [0, 1, 2, 3, 4, 7, 8, 31, 32, 100, 124, 128, 255, 256, 508, 510, 512, 1020, 1024, 4095, 4096,
               65535, 65536, -1, -4, -8, -255, -256, -4095, 0xFF00, 0xFF00FF, 0xFF00FF00, 0xABABABAB,
               0x3FC00, 0x80000000, 0x12345678, 0xFFFFFF00, 0x7FFFFFFF]
FLOATS = ["0.5", "1.0", "-1.0", "2.0", "0.125", "31.0", "1.5", "-0.25", "0.1", "16.0", "0.0", "1e10"]


def reg(rng: random.Random, high: float = 0.25) -> str:
    if rng.random() < 0.05:
        return rng.choice(["sp", "pc"])
    return rng.choice(HIGH) if rng.random() < high else rng.choice(LOW)


def imm(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.5:
        return rng.choice(INTERESTING)
    if r < 0.7:
        return rng.randint(0, 255) << rng.choice([0, 0, 2, 8, 16, 24, rng.randint(0, 24)])
    if r < 0.9:
        return rng.randint(-300, 1100)
    return rng.randint(0, 0xFFFFFFFF)


def shift(rng: random.Random, kinds: tuple[str, ...] = ("lsl", "lsr", "asr", "ror")) -> str:
    k = rng.choice(kinds)
    return f"{k} #{rng.randint(0, 33) if rng.random() < 0.2 else rng.randint(1, 31)}"


def mem(rng: random.Random, scale: int, index: bool = True) -> str:
    base = reg(rng, 0.2)
    if rng.random() < 0.15:
        base = "sp"
    kind = rng.random()
    off = rng.choice([0, scale, 2 * scale, 31 * scale, rng.randint(0, 64) * scale, rng.randint(-300, 4200),
                      -scale, -255, 255, 256, 4095, 1020, -1020, 1024, 124, 126, 62])
    if kind < 0.1:
        return f"[{base}]"
    if kind < 0.55:
        return f"[{base}, #{off}]"
    if kind < 0.7:
        return f"[{base}, #{off}]!"
    if kind < 0.75 or not index:
        return f"[{base}], #{off}"
    idx = reg(rng, 0.15)
    if rng.random() < 0.4:
        return f"[{base}, {idx}, lsl #{rng.randint(0, 4)}]"
    return f"[{base}, {idx}]"


def reglist(rng: random.Random, extra: tuple[str, ...] = ()) -> str:
    pool = [f"r{i}" for i in range(13)] + list(extra)
    k = rng.choice([1, 1, 2, 3, 4, 6])
    if rng.random() < 0.5:
        pool = LOW + list(extra)
    regs = sorted(set(rng.sample(pool, min(k, len(pool)))), key=lambda r: (r in extra, pool.index(r)))
    return "{" + ", ".join(regs) + "}"


def sreg(rng: random.Random) -> str:
    return f"s{rng.randint(0, 31)}"


def sreglist(rng: random.Random) -> str:
    a = rng.randint(0, 31)
    b = min(31, a + rng.randint(0, 5))
    return f"{{s{a}-s{b}}}" if b > a and rng.random() < 0.5 else "{" + ", ".join(f"s{i}" for i in range(a, b + 1)) + "}"


def operands(rng: random.Random, mn: str, pattern: str, dts: str) -> list[str]:
    out: list[str] = []
    scale = {"ldrh": 2, "strh": 2, "ldrsh": 2, "ldrb": 1, "strb": 1, "ldrsb": 1}.get(mn, 4)
    for i, k in enumerate(pattern):
        # Reusing an earlier register reaches the forms that need rd == rn (or Sd == Sm).
        same = [o for o, kk in zip(out, pattern) if kk == k and o[-1:] != "!"]
        if k in "rs" and same and rng.random() < 0.3:
            out.append(rng.choice(same))
            continue
        if k == "r":
            wb = mn in ("ldm", "stm", "ldmia", "stmia", "ldmdb", "stmdb", "vldm", "vstm", "vldmia",
                        "vstmia", "vldmdb", "vstmdb", "ldmfd", "stmfd", "ldmea", "stmea") and i == 0
            out.append(reg(rng) + ("!" if wb and rng.random() < 0.6 else ""))
        elif k == "s":
            out.append(sreg(rng))
        elif k == "d":
            out.append(f"d{rng.randint(0, 15)}")
        elif k == "i":
            if mn in ("vmov",):
                out.append("#" + rng.choice(FLOATS))
            elif mn in ("vcmp", "vcmpe"):
                out.append(rng.choice(["#0", "#0.0"]))
            elif mn in ("vcvt", "ssat", "usat", "lsl", "lsr", "asr", "ror"):
                out.append(f"#{rng.randint(0, 33)}")
            else:
                out.append(f"#{imm(rng)}")
        elif k == "h":
            if mn in ("sxtb16", "uxtb16", "sxtb", "uxtb", "sxth", "uxth", "sxtab16", "uxtab16", "sxtab",
                      "uxtab", "sxtah", "uxtah"):
                out.append(f"ror #{rng.choice([0, 8, 16, 24, 4])}")
            elif mn == "pkhbt":
                out.append(f"lsl #{rng.randint(0, 31)}")  # GNU as takes lsl #32 as #0
            elif mn == "pkhtb":
                out.append(f"asr #{rng.randint(1, 32)}")
            elif mn in ("ssat", "usat"):
                out.append(shift(rng, ("lsl", "asr")))
            else:
                out.append(shift(rng))
        elif k == "m":
            # GNU as drops a register offset of vldr/vstr without a word (a wrong encoding), so
            # those are checked as errors elsewhere, not generated here.
            out.append(mem(rng, scale, index=mn not in ("vldr", "vstr")))
        elif k == "L":
            extra = ("lr",) if mn == "push" else ("pc",) if mn == "pop" else ("lr",) if rng.random() < 0.2 else ()
            out.append(reglist(rng, extra))
        elif k == "S":
            out.append(sreglist(rng))
        elif k == "l":
            if mn in ("b", "bl", "cbz", "cbnz"):
                out.append(rng.choice(["near_back", "near_fwd", "far_fwd"]))
            else:
                out.append(rng.choice(["near_back", "near_fwd", "far_fwd", "lit_word", "lit_odd"]))
        elif k == "x":
            out.append("apsr_nzcv" if (mn == "vmrs" and i == 0) else "fpscr")
    return out


def gnu_quirk(line: str) -> bool:
    """Lines GNU as 2.40 gets wrong, where ml4f deliberately differs.

    `stmia sp!, {...}` can come out as `push {...}` (decrementing instead of incrementing)."""
    if re.match(r"stm(ia|ea)?(\w\w)?(\.[wn])?\s+sp!", line):
        return True
    # `mov.w rd, rm, shift` is refused where a 16-bit shift exists ("cannot honor width suffix").
    conds = "|".join(COND_NAMES)
    if re.match(rf"movs?({conds})?\.w\s.*,\s*(lsl|lsr|asr|ror)", line):
        return True
    # `neg` (rsb #0) is not checked for sp/pc by GNU as; ml4f rejects them as UNPREDICTABLE.
    return bool(re.match(r"negs?(\w\w)?(\.[wn])?\s.*\b(sp|pc)\b", line))


def corpus_lines(mn: str, n: int, seed: int) -> list[str]:
    """`n` random instruction lines for every form of mnemonic `mn` (some deliberately invalid)."""
    rng = random.Random(f"{mn}/{seed}")
    lines = []
    forms = FORMS[mn]
    for _ in range(n):
        f = rng.choice(forms)
        dts = rng.choice(f.dts) if f.dts else ""
        name = mn
        if mn in S_SUFFIX and rng.random() < 0.4:
            name += "s"
        if dts:
            name += "." + dts
        if rng.random() < 0.15 and not dts:
            name += rng.choice([".w", ".n"])
        ops = operands(rng, mn, f.pattern, dts)
        if mn in TWO_OPERAND and len(ops) == 3 and ops[0] == ops[1] and rng.random() < 0.5:
            ops = ops[1:]  # the two-operand spelling `add r0, r1`
        line = f"{name} {', '.join(ops)}" if ops else name
        if mn == "b" and rng.random() < 0.5:
            line = line.replace("b ", f"b{rng.choice(COND_NAMES[:14])} ", 1) if line.startswith("b ") else \
                line.replace("b.", f"b{rng.choice(COND_NAMES[:14])}.", 1)
        if not gnu_quirk(line):
            lines.append(line)
    return lines


def wrap_it(rng: random.Random, line: str) -> list[str]:
    """Put an instruction in a one-instruction IT block with a random condition."""
    cond = rng.choice(COND_NAMES[:14])
    parts = line.split(" ", 1)
    head = parts[0]
    if "." in head:
        base, rest = head.split(".", 1)
        head = f"{base}{cond}.{rest}"
    else:
        head = head + cond
    return [f"it {cond}", head + (" " + parts[1] if len(parts) > 1 else "")]


# Labels the branch/literal generators refer to: one behind, one ahead, one 2 KiB+ ahead, and
# data words (one word-aligned, one not).
PROLOGUE = ["near_back:", "nop"]
EPILOGUE = [".align 2", "lit_word: .word 0x12345678", ".byte 1", "lit_odd: .byte 2", ".align 2",
            "near_fwd: nop", ".space 70000", "far_fwd: nop"]
