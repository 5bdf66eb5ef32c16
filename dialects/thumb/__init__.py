"""The Thumb dialect: ARMv7E-M + FPv4-SP instructions with register types (see ops.py, encodings.py)."""

from . import registers  # noqa: F401  (registers the !thumb.reg / !thumb.sreg types)
from .ops import DIALECT, OPS, print_asm

__all__ = ["DIALECT", "OPS", "print_asm"]
