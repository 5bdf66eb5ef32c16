"""Run an ML4F binary file in the emulator on one input: what `ml4f-run model.bin` does.

    r = run_binary("built/model.bin", x)      # {"output": (1, *dims) array, "cycles": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml4f.compiler.backend.binary import TYPE_INT8, Binary, IOSpec, read_binary
from ml4f.compiler.backend.emulator import DEFAULT_STACK_BYTES, Emulator
from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.types import FloatType, IntType, QuantType, Type


def io_type(io: IOSpec) -> Type:
    """The IR element type of a binary's input or output (int8 carries its quantization)."""
    if io.type == TYPE_INT8:
        return QuantType(IntType(8), (io.scale,), (io.zero_point,))
    return FloatType(32)


def read_binary_file(path: str) -> tuple[bytes, Binary]:
    """The bytes of a binary file and its parsed form; a missing or malformed file is a CompileError."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CompileError("no such file", Loc(path)) from None
    return data, read_binary(data, path)


def run_image(data: bytes, binary: Binary, x: np.ndarray, *, where: str = "<binary>",
              ranges: Sequence[tuple[str, int, int]] = (), stack_bytes: int = DEFAULT_STACK_BYTES,
              check_alignment: bool = False, emulator: Emulator | None = None) -> dict[str, Any]:
    """Run a parsed binary on `x` (already in the input type, batch 1) and collect its statistics.

    Pass an `emulator` made for the same image to reuse its decoded blocks across runs (its own
    settings then apply).
    """
    h = binary.header
    arena = bytearray(h.arena_bytes)
    raw = np.ascontiguousarray(x, dtype=h.input.dtype).tobytes()
    assert len(raw) == h.input.nbytes, "input size checked by the caller"
    arena[h.input.offset:h.input.offset + len(raw)] = raw
    emu = emulator or Emulator(data[:h.object_size], h.arena_bytes, stack_bytes=stack_bytes, ranges=ranges,
                               where=where, check_alignment=check_alignment)
    result = emu.call(h.entry_offset, arena)
    out = np.frombuffer(result.arena, dtype=h.output.dtype, count=h.output.elements, offset=h.output.offset)
    return {"output": out.reshape((1, *h.output.shape)).copy(), "cycles": result.cycles,
            "instructions": result.instructions, "stack_bytes": result.stack_bytes,
            "ranges": {k: {"cycles": v.cycles, "instructions": v.instructions} for k, v in result.ranges.items()}}


def run_binary(path: str, x: np.ndarray | None, seed: int = 0, ranges: Sequence[tuple[str, int, int]] = (),
               check_alignment: bool = False) -> dict[str, Any]:
    """Run the binary file `path` on one sample `x` (or a seeded random one when `x` is None).

    `x` is shaped like the model input without the batch dimension (a leading 1 is accepted); float
    values for an int8 input are quantized with its scale and zero point. Returns {"output": array of
    shape (1, *output dims) in the output type, "cycles", "instructions", "stack_bytes", "ranges"}.
    """
    from ml4f.compiler.samples import prepare_input, random_input

    data, binary = read_binary_file(path)
    h = binary.header
    shape = (1, *h.input.shape)
    elem = io_type(h.input)
    sample = prepare_input(x, shape, elem, path) if x is not None else random_input(shape, elem, seed)
    return run_image(data, binary, sample, where=path, ranges=ranges, check_alignment=check_alignment)
