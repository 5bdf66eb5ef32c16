"""Code generation for one planned loop.func: instruction selection, register allocation, assembly.

    res = generate(func, module)          # func: a loop.func after plan-memory
    code = assemble(res.asm + routines)   # the entry point is the first instruction of res.asm

The driver packs the binary (compiler/backend/binary.py): header, this code at header_size, the
math routines named in `routines_used` (compiler/lowering/mathlib.py), then `weights` at the
header's weights_offset, which the code reads from the header (position-independent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ml4f.compiler.ir import Module, Operation


@dataclass
class CodegenResult:
    """The entry function's assembly and everything the driver needs to pack and measure it."""

    asm: str
    weights: bytes
    layer_labels: list[tuple[str, str]]
    arena_bytes: int
    input_offset: int
    output_offset: int
    stack_bytes: int
    routines_used: set[str] = field(default_factory=set)
    thumb_func: Operation | None = None


def generate(func: Operation, module: Module, schedule: bool = False, **lowering: int | bool) -> CodegenResult:
    """Lower `func` (a loop.func after plan-memory) to allocated Thumb code and its weights blob.

    Example: generate(module.ops[0], module).asm starts with `.syntax unified`, `.thumb`, the entry.
    `schedule` runs the `thumb-schedule` pass after allocation; `lowering`
    holds options of lower-to-thumb (unroll, pack, loop_registers, widen).
    """
    from ml4f.compiler.lowering.loop_to_thumb import lower_func
    from ml4f.compiler.transforms.regalloc import allocate
    from ml4f.dialects import loop
    from ml4f.dialects.thumb import print_asm

    if not isinstance(func, loop.Func):
        raise TypeError(f"generate() takes a loop.func, got {func.name}")
    if func.arena_size < 0:
        raise func.error("has no memory plan: run plan-memory before code generation")
    lowered = lower_func(func, module, **lowering)
    if lowered.weights_elided:
        raise func.error("its weights were elided from the file; use a file written without --elide-weights")
    alloc = allocate(lowered.func)
    if schedule:
        from ml4f.compiler.transforms.schedule import schedule_block

        schedule_block(lowered.func.body.block)
    inputs = [op for op in func.allocs if op.input == 0]
    ret = func.body.block.ops[-1]
    out_buf = ret.operands[0].op
    return CodegenResult(
        asm=print_asm([lowered.func]), weights=lowered.weights, layer_labels=lowered.layer_labels,
        arena_bytes=func.arena_size, input_offset=inputs[0].offset, output_offset=out_buf.offset,
        stack_bytes=alloc.stack_bytes, routines_used=set(lowered.routines), thumb_func=lowered.func)
