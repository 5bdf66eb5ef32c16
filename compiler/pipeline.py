"""The whole compile, from a model file to a validated binary: what `ml4f MODEL`, the tests and the
benchmark share.

    result = compile_model("gestures.tfjsmodel.json", Options(float16=True))
    result.cycles, result.layers[0].cycles, result.validation["max_abs_err"]
    write_outputs(result, "built", "model")          # .bin .s .h .l4f .json

Stages (each named in the progress display and in the `-v` timings):

    import  ->  layer passes (canonicalize, fold-batchnorm, fuse-activations[, convert-weights f16])
            ->  loop passes (lower-to-loops, tile, loop-canonicalize, plan-memory)
            ->  code generation (thumb selection, register allocation, scheduling)
            ->  built-in assembler -> binary (header, code, math routines, weights)
            ->  a measured run in the emulator (cycles per layer, stack)
            ->  validation against the layer references on seeded random inputs

Everything is computed before anything is written, so an unsupported layer stops the compile with
a one-line error and no output. Cycles per layer come from the emulator: the layer labels of the
code split the cycles, and the cycles of a shared math routine go to the layers that call it, in
proportion to their calls. When validation fails, the binary is run again with a snapshot of the
arena at the start of every layer, and each layer's output (found through the memory plan) is
compared with its reference: the error names the first layer that differs.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module, Operation

TARGETS = ("cortex-m4f", "cortex-m7", "cortex-m33")
EMIT_STAGES = ("l4f", "loops", "thumb")
LAYER_PASSES = "canonicalize,fold-batchnorm,fuse-activations"
LOOP_PASSES = "lower-to-loops,tile,loop-canonicalize,plan-memory"
# DESIGN §7: f32 max |err| <= 1e-4 * (1 + |y|); f16 weights add 1e-4 to the error of the model
# run with f16-rounded weights in float32 (which is what the references compute after conversion).
REL_TOLERANCE = 1e-4
F16_EXTRA = 1e-4
# Random validation inputs: a few for small models, one for large ones (emulation time).
SMALL_MODEL_MACS = 1_000_000
VALIDATION_SEED = 1234

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """What the user chose (DESIGN §3); the defaults are `ml4f MODEL`'s."""

    float16: bool = False
    validate: bool = True
    test_data: bool = False
    target: str = "cortex-m4f"
    int8: bool = False
    emit: str | None = None
    validation_samples: int | None = None      # None: 3, or 1 for models over SMALL_MODEL_MACS
    elide_weights: bool = False                 # the .l4f texts without weight data (for reading)
    seed: int = VALIDATION_SEED
    optimize: str = "speed"                     # "size": no peeling, window sliding or unrolling


@dataclass
class LayerInfo:
    """One generated layer (a loop.kernel): what it computes and what it cost."""

    name: str
    op: str
    output_shape: list[int]
    macs: int
    weights_bytes: int
    label: str = ""
    code_bytes: int = 0
    cycles: int = 0
    instructions: int = 0
    # where its output lives (arena offset, element count, element dtype) and its reference value
    buffer: tuple[int, int, np.dtype] | None = None
    value: Any = None
    channel_major: bool = False      # the buffer holds one channel after the other (loop.alloc)

    @property
    def cycles_per_mac(self) -> float | None:
        return self.cycles / self.macs if self.macs else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "output_shape": self.output_shape, "macs": self.macs,
                "cycles": self.cycles, "cycles_per_mac": _round(self.cycles_per_mac),
                "instructions": self.instructions, "code_bytes": self.code_bytes,
                "weights_bytes": self.weights_bytes}


@dataclass
class Compiled:
    """Everything a compile produced; `write_outputs` turns it into files."""

    source: str
    options: Options
    model_name: str
    layer_text: str
    loops_text: str | None = None
    thumb_text: str | None = None
    code_text: str = ""
    data: bytes = b""
    binary: Any = None
    layers: list[LayerInfo] = field(default_factory=list)
    ranges: list[tuple[str, int, int]] = field(default_factory=list)
    routine_ranges: list[tuple[str, int, int]] = field(default_factory=list)
    input_shape: list[int] = field(default_factory=list)
    output_shape: list[int] = field(default_factory=list)
    arena_bytes: int = 0
    code_bytes: int = 0
    routines_bytes: int = 0
    weights_bytes: int = 0
    cycles: int = 0
    instructions: int = 0
    stack_bytes: int = 0
    validation: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    compile_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # the layer model (lowering detaches its ops from their operands: read attributes only), the
    # seeded inputs with the reference value of every layer, and the output value (a key of those)
    model: Any = None
    samples: list[np.ndarray] = field(default_factory=list)
    references: list[dict[int, np.ndarray]] = field(default_factory=list)
    output_value: Any = None
    weights_type: str = "f32"                    # f16 when any weight is stored as f16
    first_output: np.ndarray | None = None       # the binary's output on samples[0] (measured run)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def binary_bytes(self) -> int:
        return len(self.data)

    def to_json(self) -> dict[str, Any]:
        """The `.json` output (DESIGN §4)."""
        out: dict[str, Any] = {
            "model": self.model_name, "source": self.source, "target": self.options.target,
            "weights_type": self.weights_type, "optimize": self.options.optimize,
            "input_shape": self.input_shape, "output_shape": self.output_shape,
            "input_type": "f32", "output_type": "f32",
            "arena_bytes": self.arena_bytes, "code_bytes": self.code_bytes,
            "routines_bytes": self.routines_bytes, "weights_bytes": self.weights_bytes,
            "binary_bytes": self.binary_bytes, "macs": self.macs, "cycles": self.cycles,
            "cycles_per_mac": _round(self.cycles / self.macs if self.macs else None),
            "instructions": self.instructions, "stack_bytes": self.stack_bytes,
            "compile_seconds": round(self.compile_seconds, 3),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "layers": [layer.to_json() for layer in self.layers],
            "validation": self.validation,
        }
        if self.evaluation is not None:
            out["eval"] = self.evaluation
        return out


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


# ----------------------------------------------------------------------------- the compile


def compile_model(source: str | Module, options: Options = Options(), progress: Progress | None = None,
                  where: str | None = None) -> Compiled:
    """Compile a model file (or an imported layer module) and, unless `options.validate` is off,
    check the binary against the layer references. Raises CompileError on any failure."""
    from ml4f.compiler.printer import print_module
    from ml4f.compiler.types import f16

    say = progress or (lambda _stage: None)
    start = time.perf_counter()
    stages: dict[str, float] = {}

    def timed(stage: str) -> _Timer:
        say(stage)
        return _Timer(stages, stage)

    if options.target not in TARGETS:
        raise CompileError(f"unknown target '{options.target}' (known: {', '.join(TARGETS)})", Loc("ml4f"))
    if options.emit is not None and options.emit not in EMIT_STAGES:
        raise CompileError(f"--emit takes {', '.join(EMIT_STAGES)}, not '{options.emit}'", Loc("ml4f"))
    with timed("import"):
        if isinstance(source, Module):
            module, path = source, where or source.file or "<module>"
        else:
            from ml4f.compiler.importers import import_model

            module, path = import_model(source), source
    model = _the_model(module, path)
    _check_supported(model, options, path)
    # The .l4f output is the imported IR; with --float16 it is printed after the layer passes, as
    # the weights are rounded once, after batch norms are folded into them.
    elide = options.elide_weights
    layer_text = "" if options.float16 else print_module(module, elide_weights=elide)
    with timed("layer passes"):
        passes = LAYER_PASSES + (",convert-weights{type=f16}" if options.float16 else "")
        _run_passes(module, passes)
    result = Compiled(path, options, model.symbol or "model",
                      layer_text or print_module(module, elide_weights=elide))
    result.stage_seconds = stages
    result.weights_type = "f16" if any(r.type.elem == f16 for r in module.resources()) else "f32"
    result.model = model
    result.output_value = model.output.operands[0]
    result.input_shape = list(model.inputs[0].result.type.shape[1:])
    result.output_shape = list(model.output.operands[0].type.shape[1:])
    if options.emit == "l4f":
        result.compile_seconds = time.perf_counter() - start
        return result

    # Reference values come from the layer model, which lower-to-loops replaces in the module.
    if options.emit is None:
        with timed("references"):
            _make_references(result)
    with timed("loop passes"):
        values = _values_by_name(model)
        # lower-to-loops detaches the layer ops from their operands: count MACs first
        macs = {id(op): op.macs() for op in model.body.block.ops if hasattr(op, "macs")}
        _run_passes(module, LOOP_PASSES)
        func = _the_func(module)
        result.layers = _layer_infos(func, values, macs)
    if options.emit == "loops":
        result.loops_text = print_module(module, elide_weights=elide)
        result.compile_seconds = time.perf_counter() - start
        return result

    with timed("code generation"):
        cg = _generate(func, module, options.optimize)
    if options.emit == "thumb":
        result.thumb_text = _thumb_text(cg, elide)
        result.compile_seconds = time.perf_counter() - start
        return result
    with timed("assembly"):
        _assemble(result, cg, path)
    with timed("measured run"):
        _measure(result)
    if options.validate:
        with timed("validation"):
            validate(result)
    result.compile_seconds = time.perf_counter() - start
    return result


class _Timer:
    def __init__(self, stages: dict[str, float], stage: str):
        self.stages, self.stage = stages, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.stages[self.stage] = self.stages.get(self.stage, 0.0) + time.perf_counter() - self.t0


def _run_passes(module: Module, pipeline: str) -> None:
    from ml4f.compiler.context import Context
    from ml4f.compiler.passes import PassManager, parse_pipeline

    PassManager(parse_pipeline(pipeline)).run(Context(), module)


def _the_model(module: Module, path: str) -> Operation:
    from ml4f.dialects import layer

    models = [op for op in module.ops if isinstance(op, layer.Model)]
    if len(models) != 1:
        what = "no layer.model" if not models else f"{len(models)} layer.model ops"
        raise CompileError(f"expected one model in the layer dialect, found {what}", Loc(path))
    return models[0]


def _check_supported(model: Operation, options: Options, path: str) -> None:
    """Refuse what code generation cannot do yet, before any output exists."""
    from ml4f.compiler.types import FloatType, TensorType

    if options.int8:
        raise CompileError("--int8: int8 code generation is not available yet; ml4f compiles float32 "
                           "models (weights f32, or f16 with --float16)", Loc(path))
    if len(model.inputs) != 1 or len(model.output.operands) != 1:
        raise CompileError(f"the model has {len(model.inputs)} inputs and {len(model.output.operands)} "
                           "outputs; the ML4F binary format takes one input and one output", Loc(path))
    for op in model.body.block.ops:
        quantized = any(isinstance(v.type, TensorType) and v.type.quant is not None
                        for v in [*op.operands, *op.results])
        if quantized:
            raise CompileError("an int8 (quantized) model: int8 code generation is not available yet; "
                               "compile the float version of the model (.h5, .keras, TF.js, float "
                               ".tflite, .onnx or SavedModel), optionally with --float16", Loc(path))
        for v in op.results:
            if isinstance(v.type, TensorType) and not (isinstance(v.type.elem, FloatType) and
                                                       v.type.elem.bits == 32):
                raise op.error(f"produces {v.type}; ml4f compiles float32 activations")


def _the_func(module: Module) -> Operation:
    from ml4f.dialects import loop

    funcs = [op for op in module.ops if isinstance(op, loop.Func)]
    assert len(funcs) == 1, "lower-to-loops makes one function per model"
    return funcs[0]


def _values_by_name(model: Operation) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for op in model.body.block.ops:
        for v in op.results:
            out.setdefault(v.name_hint or "", []).append(v)
    return out


def _layer_infos(func: Operation, values: dict[str, list[Any]], macs: dict[int, int]) -> list[LayerInfo]:
    """One LayerInfo per kernel, with its output buffer (through the memory plan) and layer value."""
    from ml4f.compiler.types import numpy_dtype
    from ml4f.dialects import loop

    seen_weights: set[int] = set()
    out = []
    allocs = func.allocs
    for k in func.kernels:
        origin = k.origin
        stored: set[int] = set()
        for o in k.walk():
            if isinstance(o, loop.Store):
                stored.update(id(v) for v in o.operands)
        mine = [a for a in allocs if a.origin is origin and id(a.result) in stored] or \
            [a for a in allocs if id(a.result) in stored]
        alloc = mine[0] if mine else None
        value = None
        if alloc is not None:
            cands = values.get(alloc.result.name_hint or "", [])
            value = next((v for v in cands if v.op is origin), cands[0] if cands else None)
        wbytes = 0
        for o in k.walk():
            for v in o.operands:
                if isinstance(v.op, loop.WeightsBuf) and id(v) not in seen_weights:
                    seen_weights.add(id(v))
                    wbytes += v.type.nbytes
        op_name = origin.name.split(".", 1)[1] if origin is not None else "kernel"
        act = origin.get_attr("activation") if origin is not None and "activation" in origin._attr_defs else None
        if act and act != "none":
            op_name += f"+{act}"
        if value is not None and value.op is not origin and value.op is not None:
            op_name += "+" + value.op.name.split(".", 1)[1]
        shape = list(value.type.shape[1:]) if value is not None else []   # no batch, as the header
        buf = None
        if alloc is not None:
            t = alloc.result.type
            buf = (alloc.offset, t.size, numpy_dtype(t.elem))
        out.append(LayerInfo(k.symbol, op_name, shape, macs.get(id(origin), 0), wbytes, buffer=buf, value=value,
                             channel_major=bool(alloc is not None and alloc.channel_major)))
    return out


def _make_references(result: Compiled) -> None:
    from ml4f.compiler.samples import random_input
    from ml4f.compiler.types import f32
    from ml4f.dialects.layer import run_model

    model = result.model
    shape = tuple(model.inputs[0].result.type.shape)
    macs = sum(op.macs() for op in model.body.block.ops if hasattr(op, "macs"))
    n = result.options.validation_samples
    if n is None:
        n = 3 if macs <= SMALL_MODEL_MACS else 1
    if not result.options.validate:
        n = 1 if result.options.test_data else 0
    for i in range(n):
        x = random_input(shape, f32, result.options.seed + i)
        _, env = run_model(model, [x], keep=True)
        result.samples.append(x)
        result.references.append(env)


# ----------------------------------------------------------------------------- code and binary


OPTIMIZE_CHOICES = ("speed", "size")


def _generate(func: Operation, module: Module, optimize: str = "speed") -> Any:
    """Thumb code for the planned function: selection, allocation, scheduling (compiler/codegen.py).
    For size, the loops stay loops (lower-to-thumb{unroll=1}: no peeled steps, slid windows or
    unrolled reductions); the register tiles stay."""
    from ml4f.compiler.codegen import generate

    if optimize not in OPTIMIZE_CHOICES:
        raise CompileError(f"--optimize takes {' or '.join(OPTIMIZE_CHOICES)}, not '{optimize}'")
    return generate(func, module, schedule=True, **({"unroll": 1} if optimize == "size" else {}))


def _thumb_text(cg: Any, elide: bool) -> str:
    from ml4f.compiler.printer import print_module

    return print_module(Module([cg.thumb_func]), elide_weights=elide) if cg.thumb_func is not None else cg.asm


def _assemble(result: Compiled, cg: Any, path: str) -> None:
    """Assemble the code and the math routines it calls, lay out the binary, and find the label
    range (code bytes) of every layer and routine."""
    from ml4f.compiler.backend.assembler import assemble_full
    from ml4f.compiler.backend.binary import TYPE_F32, IOSpec, build_binary, header_size_for
    from ml4f.compiler.lowering.mathlib import routines_text

    text = cg.asm.rstrip("\n") + "\n" + (routines_text(cg.routines_used) if cg.routines_used else "")
    asm = assemble_full(text, f"{os.path.basename(path)}.s")
    code = asm.code
    labels = asm.labels
    # Every routine starts with a label of its name; the model's code ends at the first one.
    routine_starts = sorted((labels[name], name) for name in cg.routines_used)
    main_end = routine_starts[0][0] if routine_starts else len(code)
    result.code_text = text
    result.routines_bytes = len(code) - main_end
    hs = header_size_for(result.input_shape, result.output_shape)

    starts = []
    for name, label in cg.layer_labels:
        if label not in labels:
            raise CompileError(f"code generation named label '{label}' for layer '{name}', but the code "
                               "does not define it", Loc(path, layer=name))
        starts.append((labels[label], name, label))
    starts.sort()
    # The last layer's range runs to the routines, so it includes the epilogue.
    stop = main_end
    ranges = []
    for i, (addr, name, label) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else stop
        ranges.append((name, hs + addr, hs + max(end, addr)))
    result.ranges = ranges
    result.routine_ranges = [(f"routine:{name}", hs + addr,
                              hs + (routine_starts[i + 1][0] if i + 1 < len(routine_starts) else len(code)))
                             for i, (addr, name) in enumerate(routine_starts)]
    by_name = {layer.name: layer for layer in result.layers}
    for name, lo, hi in ranges:
        if name in by_name:
            by_name[name].label = name
            by_name[name].code_bytes = hi - lo

    test_in = test_out = None
    if result.options.test_data:
        test_in = result.samples[0]
        test_out = result.references[0][id(result.output_value)]
    inp = IOSpec(cg.input_offset, TYPE_F32, tuple(result.input_shape))
    out = IOSpec(cg.output_offset, TYPE_F32, tuple(result.output_shape))
    try:
        binary = build_binary(code, cg.weights, arena_bytes=cg.arena_bytes, input=inp, output=out,
                              test_input=test_in, test_output=test_out)
    except ValueError as e:
        raise CompileError(f"cannot lay out the binary: {e}", Loc(path)) from None
    result.binary = binary
    result.data = binary.to_bytes()
    result.arena_bytes = cg.arena_bytes
    result.code_bytes = len(code)
    result.weights_bytes = len(cg.weights)


# ----------------------------------------------------------------------------- running in the emulator


def _cycle_model_class() -> type:
    from ml4f.compiler.backend.cycles import CycleModel

    class AttributingCycleModel(CycleModel):
        """A CycleModel that keeps the edge counts of the last run, to attribute routine cycles."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            self.last_edges: dict = {}

        def account(self, edges: dict, last: Any) -> Any:
            self.last_edges = dict(edges)
            return super().account(edges, last)

    return AttributingCycleModel


def make_emulator(result: Compiled, data: bytes | None = None, snapshots: bool = False) -> Any:
    """An emulator for the binary (or `data`) with the layer and routine ranges; with `snapshots`,
    it also copies the arena each time execution first reaches a layer's start label."""
    from ml4f.compiler.backend.emulator import CODE_BASE, Emulator

    data = result.data if data is None else data
    ranges = [*result.ranges, *result.routine_ranges]
    starts = [(name, lo) for name, lo, _ in result.ranges]

    class LayerEmulator(Emulator):
        """The emulator plus the per-layer arena snapshots validation uses to find a bad layer."""

        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.taken: dict[str, bytes] = {}

        def _machine(self, arena: Any) -> Any:
            from unicorn import UC_HOOK_CODE

            uc = super()._machine(arena)
            self.taken = {}
            if snapshots:
                for name, lo in starts:
                    def hook(uc: Any, address: int, size: int, _: Any, name: str = name) -> None:
                        if name not in self.taken:
                            self.taken[name] = bytes(uc.mem_read(self.arena_address, self.arena_bytes))
                    uc.hook_add(UC_HOOK_CODE, hook, begin=CODE_BASE + lo, end=CODE_BASE + lo)
            return uc

    emu = LayerEmulator(data[:result.binary.header.object_size], result.binary.header.arena_bytes,
                        ranges=ranges, where=result.source)
    emu.model = _cycle_model_class()(emu.image, CODE_BASE, ranges)
    return emu


def run(result: Compiled, x: np.ndarray, emulator: Any = None) -> dict[str, Any]:
    """Run the binary on one input shaped like the model input (batch 1)."""
    from ml4f.compiler.backend.runner import run_image

    emu = emulator or make_emulator(result)
    return run_image(result.data, result.binary, np.asarray(x, dtype=np.float32), where=result.source,
                     emulator=emu)


def _measure(result: Compiled) -> None:
    """Run once on the first seeded input: cycles per layer (routines attributed to callers), stack."""
    from ml4f.compiler.samples import random_input
    from ml4f.compiler.types import f32

    x = result.samples[0] if result.samples else \
        random_input((1, *result.input_shape), f32, result.options.seed)
    emu = make_emulator(result)
    r = run(result, x, emu)
    result.cycles, result.instructions, result.stack_bytes = r["cycles"], r["instructions"], r["stack_bytes"]
    result.first_output = r["output"]
    per = {name: [s["cycles"], s["instructions"]] for name, s in r["ranges"].items()}
    for name, share in _routine_shares(result, emu.model).items():
        for layer_name, frac in share.items():
            routine = per.get(name, [0, 0])
            slot = per.setdefault(layer_name, [0, 0])
            slot[0] += routine[0] * frac
            slot[1] += routine[1] * frac
    for layer in result.layers:
        c, n = per.get(layer.name, [0, 0])
        layer.cycles, layer.instructions = round(c), round(n)


def _routine_shares(result: Compiled, model: Any) -> dict[str, dict[str, float]]:
    """For each routine range, the fraction of its calls made from each layer range.

    A call is an edge into the routine's first address from a block in another range; calls from
    another routine are passed on to that routine's own callers.
    """
    ranges = [*result.ranges, *result.routine_ranges]
    from ml4f.compiler.backend.emulator import CODE_BASE

    def range_name(addr: int) -> str | None:
        off = addr - CODE_BASE
        for name, lo, hi in ranges:
            if lo <= off < hi:
                return name
        return None

    calls: dict[str, dict[str, int]] = {}
    for (prev, key), times in getattr(model, "last_edges", {}).items():
        if prev is None:
            continue
        for name, lo, _ in result.routine_ranges:
            if key[0] - CODE_BASE == lo:
                caller = range_name(prev[0] + prev[1] - 2)
                if caller is not None and caller != name:
                    calls.setdefault(name, {}).setdefault(caller, 0)
                    calls[name][caller] += times
    shares: dict[str, dict[str, float]] = {}

    def resolve(name: str, depth: int = 0) -> dict[str, float]:
        if name in shares:
            return shares[name]
        total = sum(calls.get(name, {}).values())
        out: dict[str, float] = {}
        for caller, n in calls.get(name, {}).items():
            if caller.startswith("routine:") and depth < 4:
                for layer, f in resolve(caller, depth + 1).items():
                    out[layer] = out.get(layer, 0.0) + f * n / total
            elif not caller.startswith("routine:"):
                out[caller] = out.get(caller, 0.0) + n / total
        shares[name] = out
        return out

    for name, _, _ in result.routine_ranges:
        resolve(name)
    return shares


# ----------------------------------------------------------------------------- validation


def tolerance_bound(y: np.ndarray, float16: bool) -> np.ndarray:
    """The largest allowed |error| for each element of a reference output (DESIGN §7)."""
    return REL_TOLERANCE * (1.0 + np.abs(y)) + (F16_EXTRA if float16 else 0.0)


def compare(got: np.ndarray, want: np.ndarray, float16: bool) -> tuple[float, float, int]:
    """(max |err|, max of |err| / bound, flat index of the worst element); NaN counts as failing."""
    got = np.asarray(got, dtype=np.float64).reshape(-1)
    want = np.asarray(want, dtype=np.float64).reshape(-1)
    err = np.abs(got - want)
    err = np.where(np.isnan(err), np.inf, err)
    ratio = err / tolerance_bound(want, float16)
    worst = int(np.argmax(ratio)) if ratio.size else 0
    return (float(err.max()) if err.size else 0.0), (float(ratio.max()) if ratio.size else 0.0), worst


def validate(result: Compiled, data: bytes | None = None) -> dict[str, Any]:
    """Run the binary (or `data`, the same binary altered) on the seeded inputs and compare with the
    references; raise a CompileError naming the first layer that differs."""
    float16 = result.options.float16
    out_value = result.output_value
    emu = make_emulator(result, data)
    worst_err = worst_ratio = 0.0
    for i, (x, env) in enumerate(zip(result.samples, result.references)):
        # The measured run already ran the same binary on the first sample.
        got = result.first_output if i == 0 and data is None and result.first_output is not None \
            else run(result, x, emu)["output"]
        want = env[id(out_value)]
        err, ratio, at = compare(got, want, float16)
        worst_err, worst_ratio = max(worst_err, err), max(worst_ratio, ratio)
        if ratio > 1.0:
            result.validation = {"max_abs_err": err, "max_scaled_err": ratio, "tolerance": REL_TOLERANCE,
                                 "passed": False, "samples": i + 1, "seed": result.options.seed}
            raise _locate_failure(result, x, env, data, got, want, at)
    result.validation = {"max_abs_err": worst_err, "max_scaled_err": worst_ratio,
                         "tolerance": REL_TOLERANCE, "f16_extra": F16_EXTRA if float16 else 0.0,
                         "passed": True, "samples": len(result.samples), "seed": result.options.seed}
    return result.validation


def _locate_failure(result: Compiled, x: np.ndarray, env: dict[int, np.ndarray], data: bytes | None,
                    got_out: np.ndarray, want_out: np.ndarray, at: int) -> CompileError:
    """Re-run with arena snapshots at each layer start and find the first layer whose output buffer
    differs from its reference (a layer's output is read at the start of the next layer)."""
    emu = make_emulator(result, data, snapshots=True)
    h = result.binary.header
    arena = bytearray(h.arena_bytes)
    raw = np.ascontiguousarray(x, dtype=np.float32).tobytes()
    arena[h.input.offset:h.input.offset + len(raw)] = raw
    final = emu.call(h.entry_offset, arena).arena
    infos = {layer.name: layer for layer in result.layers}
    seq = [infos[name] for name, _, _ in sorted(result.ranges, key=lambda t: t[1]) if name in infos]
    for i, layer in enumerate(seq):
        if layer.buffer is None or layer.value is None or id(layer.value) not in env:
            continue
        snap = emu.taken.get(seq[i + 1].name) if i + 1 < len(seq) else final
        if snap is None:
            continue
        off, n, dtype = layer.buffer
        got = np.frombuffer(snap, dtype=dtype, count=n, offset=off)
        want = env[id(layer.value)]
        if layer.channel_major:
            got = got.reshape(want.shape[-1], -1).T.reshape(want.shape)
        err, ratio, k = compare(got, want, result.options.float16)
        if ratio > 1.0:
            idx = [int(i) for i in np.unravel_index(k, want.shape)] if want.size else []
            g = float(np.asarray(got, dtype=np.float64).reshape(-1)[k])
            w = float(np.asarray(want, dtype=np.float64).reshape(-1)[k])
            extra = " + 1e-4 (f16)" if result.options.float16 else ""
            return CompileError(
                f"validation failed: layer '{layer.name}' ({layer.op}) differs from its reference: "
                f"max |err| {err:.3g} at {idx} (got {g:.6g}, want {w:.6g}; tolerance "
                f"{REL_TOLERANCE:g}*(1+|y|){extra})", Loc(result.source, layer=layer.name))
    err, _, _ = compare(got_out, want_out, result.options.float16)
    return CompileError(f"validation failed: the output differs from the reference by {err:.3g} at index "
                        f"{at}, though every layer's buffer matched its reference", Loc(result.source))


# ----------------------------------------------------------------------------- --eval


def load_eval_data(path: str, result: Compiled) -> tuple[np.ndarray, np.ndarray]:
    """Read `{"x": [...samples...], "y": [...one-hot...]}` and check it against the model's shapes."""
    from ml4f.compiler.diagnostics import read_text

    loc = Loc(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise CompileError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}", loc) from None
    if not isinstance(data, dict) or "x" not in data or "y" not in data:
        raise CompileError('eval data must be a JSON object {"x": [...samples...], "y": [...one-hot '
                           'labels...]}', loc)
    xs, ys = data["x"], data["y"]
    if not isinstance(xs, list) or not isinstance(ys, list) or not xs:
        raise CompileError('"x" and "y" must be non-empty lists', loc)
    if len(xs) != len(ys):
        raise CompileError(f'"x" has {len(xs)} samples but "y" has {len(ys)} labels', loc)
    x = _eval_rows(xs, "x", result.input_shape, np.float32, loc,
                   "the model input is {shape} ({n} values)")
    y = _eval_rows(ys, "y", result.output_shape, np.float64, loc,
                   "the model output has {n} ({shape}): labels must be one-hot")
    return x, y


def _eval_rows(rows: list, key: str, shape: list[int], dtype: type, loc: Loc, expected: str) -> np.ndarray:
    """Samples or labels as a [len(rows), prod(shape)] array, or an error naming the bad row."""
    n = math.prod(shape)
    out = np.empty((len(rows), n), dtype=dtype)
    for i, row in enumerate(rows):
        try:
            a = np.asarray(row, dtype=np.float64)
        except (ValueError, TypeError):
            raise CompileError(f'"{key}"[{i}] is not a (nested) list of numbers', loc) from None
        if a.size != n:
            raise CompileError(f'"{key}"[{i}] has shape {list(a.shape)} ({a.size} values); '
                               + expected.format(shape=shape, n=n), loc)
        out[i] = a.reshape(-1)
    return out


def evaluate(result: Compiled, x: np.ndarray, y: np.ndarray,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Accuracy and confusion matrix (rows: predicted class, columns: labelled class, as ML4F)
    of the binary run in the emulator on every sample; `progress(done, total)` after each one."""
    emu = make_emulator(result)
    dim = y.shape[1]
    confusion = [[0] * dim for _ in range(dim)]
    ok = 0
    for i, (xi, yi) in enumerate(zip(x, y)):
        if progress is not None:
            progress(i, len(x))
        out = run(result, xi.reshape((1, *result.input_shape)), emu)["output"].reshape(-1)
        pred, label = int(np.argmax(out)), int(np.argmax(yi))
        confusion[pred][label] += 1
        ok += pred == label
    result.evaluation = {"samples": len(x), "accuracy": ok / len(x), "confusion": confusion}
    return result.evaluation


def format_eval(evaluation: dict[str, Any]) -> str:
    """ML4F's text: `Accuracy: 0.9123` then the confusion matrix, each count right-aligned in 5."""
    lines = [f"Accuracy: {evaluation['accuracy']:.4f}"]
    for row in evaluation["confusion"]:
        lines.append("".join(f"{n:>5}"[-5:] for n in row))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- outputs


def output_paths(output: str, basename: str, emit: str | None = None) -> dict[str, str]:
    """The files a compile writes, by kind."""
    if emit == "l4f":
        return {"l4f": os.path.join(output, f"{basename}.l4f")}
    if emit == "loops":
        return {"loops": os.path.join(output, f"{basename}.loops.l4f")}
    if emit == "thumb":
        return {"thumb": os.path.join(output, f"{basename}.thumb.l4f")}
    return {ext: os.path.join(output, f"{basename}.{ext}") for ext in ("bin", "s", "h", "l4f", "json")}


def write_outputs(result: Compiled, output: str, basename: str) -> list[str]:
    """Write the files of DESIGN §4 (or the one file of an --emit stage); returns their paths."""
    from ml4f.compiler.backend.binary import assembly_file, c_array

    paths = output_paths(output, basename, result.options.emit)
    os.makedirs(output, exist_ok=True)
    texts: dict[str, str | bytes] = {}
    if result.options.emit == "l4f":
        texts["l4f"] = result.layer_text
    elif result.options.emit == "loops":
        texts["loops"] = result.loops_text or ""
    elif result.options.emit == "thumb":
        texts["thumb"] = result.thumb_text or ""
    else:
        texts = {"bin": result.data, "s": assembly_file(result.binary, result.code_text),
                 "h": c_array(result.data, _c_name(basename)), "l4f": result.layer_text,
                 "json": json.dumps(result.to_json(), indent=1) + "\n"}
    for kind, content in texts.items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(paths[kind], mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            f.write(content)
    return list(paths.values())


def _c_name(basename: str) -> str:
    name = re.sub(r"\W", "_", basename)
    return name if name and not name[0].isdigit() else f"model_{name}"


def summary_rows(result: Compiled) -> list[tuple[str, ...]]:
    """The per-layer table as strings: layer, op, output shape, MACs, cycles, cycles/MAC, code, weights."""
    rows = []
    for layer in result.layers:
        cpm = layer.cycles_per_mac
        rows.append((layer.name, layer.op, "x".join(map(str, layer.output_shape)),
                     f"{layer.macs:,}", f"{layer.cycles:,}", f"{cpm:.2f}" if cpm is not None else "-",
                     f"{layer.code_bytes:,}", f"{layer.weights_bytes:,}"))
    return rows


def describe(result: Compiled) -> Sequence[str]:
    """The short summary: one line each for size, speed and validation."""
    cpm = f" ({result.cycles / result.macs:.2f} cycles/MAC)" if result.macs else ""
    lines = [(f"{result.model_name}: {len(result.layers)} layers, {result.macs:,} MACs, "
              f"{result.cycles:,} cycles{cpm}"),
             (f"binary {result.binary_bytes:,} bytes (code {result.code_bytes:,}, weights "
              f"{result.weights_bytes:,}); arena {result.arena_bytes:,} bytes; stack "
              f"{result.stack_bytes:,} bytes")]
    v = result.validation
    if v is not None:
        lines.append(f"validated on {v['samples']} random input(s): max |err| {v['max_abs_err']:.3g} "
                     f"({v['max_scaled_err']:.3g} of the tolerance)")
    else:
        lines.append("not validated (--no-validate)")
    lines.append(f"compiled in {result.compile_seconds:.2f} s")
    return lines
