"""Thumb register types: a core register (`!thumb.reg`) or an FPU single register (`!thumb.sreg`).

Before register allocation a value has the unallocated type (`!thumb.reg`, `!thumb.sreg`); the
allocator rewrites it to a physical one (`!thumb.reg<r4>`, `!thumb.sreg<s4>`), so its choices show
up in the printed IR and can be FileChecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ml4f.compiler.types import DIALECT_TYPE_PARSERS, Type, TypeSyntaxError

# Canonical GNU names of r0..r15 and the aliases the assembler accepts.
CORE_NAMES = tuple(f"r{i}" for i in range(13)) + ("sp", "lr", "pc")
CORE_ALIASES = {**{n: i for i, n in enumerate(CORE_NAMES)}, "r13": 13, "r14": 14, "r15": 15,
                "ip": 12, "fp": 11, "sl": 10, "sb": 9}
SP, LR, PC = 13, 14, 15


def core_name(n: int) -> str:
    return CORE_NAMES[n]


def parse_core(name: str) -> int | None:
    """r0..r15 (or sp/lr/pc/ip/fp/sl/sb) to its number, None when `name` is not one."""
    return CORE_ALIASES.get(name.lower())


def parse_sreg(name: str) -> int | None:
    m = re.fullmatch(r"[sS]([0-9]|[12][0-9]|3[01])", name)
    return int(m.group(1)) if m else None


def parse_dreg(name: str) -> int | None:
    """d0..d15 (the pairs s0:s1 .. s30:s31) to its number, None when `name` is not one."""
    m = re.fullmatch(r"[dD]([0-9]|1[0-5])", name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class RegType(Type):
    """A core register: `!thumb.reg` (virtual) or `!thumb.reg<r4>` (allocated)."""

    num: int | None = None

    def __str__(self) -> str:
        return "!thumb.reg" if self.num is None else f"!thumb.reg<{core_name(self.num)}>"

    @property
    def allocated(self) -> bool:
        return self.num is not None

    def asm(self) -> str:
        assert self.num is not None
        return core_name(self.num)


@dataclass(frozen=True)
class SRegType(Type):
    """A single-precision FPU register: `!thumb.sreg` (virtual) or `!thumb.sreg<s4>` (allocated)."""

    num: int | None = None

    def __str__(self) -> str:
        return "!thumb.sreg" if self.num is None else f"!thumb.sreg<s{self.num}>"

    @property
    def allocated(self) -> bool:
        return self.num is not None

    def asm(self) -> str:
        assert self.num is not None
        return f"s{self.num}"


def _parse_reg(body: str | None) -> Type:
    if body is None:
        return RegType()
    n = parse_core(body.strip())
    if n is None:
        raise TypeSyntaxError(f"'{body}' is not a core register (r0-r12, sp, lr, pc)")
    return RegType(n)


def _parse_sreg(body: str | None) -> Type:
    if body is None:
        return SRegType()
    n = parse_sreg(body.strip())
    if n is None:
        raise TypeSyntaxError(f"'{body}' is not an FPU single register (s0-s31)")
    return SRegType(n)


DIALECT_TYPE_PARSERS["thumb.reg"] = _parse_reg
DIALECT_TYPE_PARSERS["thumb.sreg"] = _parse_sreg
