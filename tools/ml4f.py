"""ml4f: compile a trained model for a Cortex-M4F.

    ml4f model.h5 --emit l4f -o built -b model      # writes built/model.l4f (the imported layer IR)

MODEL is a Keras .h5/.keras file, a TF.js model.json or ML4F JSON, a .tflite or .onnx file, a
SavedModel directory, or a .l4f file. The stages after import (loop and Thumb code, the binary) are
requested with `--emit loops|thumb` or by default; this build stops after the import.
Imports stay inside functions so that `--help` answers before NumPy loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ml4f.tools._cli import run_main

EMIT_CHOICES = ("l4f", "loops", "thumb")
# Files at least this large get a progress bar while they are read.
PROGRESS_BYTES = 1 << 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ml4f", description="Compile a neural network to Thumb-2 machine code "
                                "for Cortex-M4F.")
    p.add_argument("model", help="model: .h5, .keras, TF.js model.json, ML4F .json, .tflite, .onnx, a "
                                 "SavedModel directory, or .l4f")
    p.add_argument("-o", "--output", default="built", help="output folder (default: built)")
    p.add_argument("-b", "--basename", default="model", help="base name of the output files (default: model)")
    p.add_argument("--emit", choices=EMIT_CHOICES,
                   help="stop after this stage and write <basename>.l4f (imported layer IR), "
                        "<basename>.loops.l4f or <basename>.thumb.l4f")
    p.add_argument("--float16", action="store_true", help="store weights as float16")
    p.add_argument("--int8", action="store_true", help="quantize a float model to int8 (needs --calibration)")
    p.add_argument("--calibration", metavar="FILE", help="sample inputs for --int8")
    p.add_argument("--no-validate", action="store_true", help="skip comparing the binary with the reference")
    p.add_argument("--eval", metavar="FILE",
                   help='test data {"x": [...], "y": [...]}: accuracy and confusion matrix')
    p.add_argument("-t", "--test-data", action="store_true",
                   help="embed a test input and output in the binary")
    p.add_argument("--target", default="cortex-m4f", choices=("cortex-m4f", "cortex-m7", "cortex-m33"))
    p.add_argument("--stats", action="store_true", help="print a per-layer table")
    p.add_argument("--elide-weights", action="store_true", help="write .l4f files without the weight data")
    p.add_argument("-v", "--verbose", action="store_true", help="say what is done")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ml4f.compiler.diagnostics import CompileError, Loc
    from ml4f.compiler.importers import import_model

    needs_code = [flag for flag, on in (("--int8", args.int8), ("--eval", args.eval),
                                        ("--test-data", args.test_data), ("--stats", args.stats),
                                        ("--calibration", args.calibration)) if on]
    if args.emit == "l4f" and needs_code:
        raise CompileError(f"{', '.join(needs_code)} needs code generation, which --emit l4f stops before",
                           Loc("ml4f"))

    start = time.perf_counter()
    with _progress(args.model, args.verbose) as progress:
        module = import_model(args.model, progress=progress)
    if args.float16:
        weights_to_float16(module)
    seconds = time.perf_counter() - start
    if args.emit != "l4f":
        # Code generation lands in a later stage of the project; say so instead of writing anything.
        want = f"--emit {args.emit}" if args.emit else "a binary"
        raise CompileError(f"{want} is not available yet: this build imports models only; use --emit l4f "
                           "to write the imported layer IR", Loc("ml4f"))

    from ml4f.compiler.printer import print_module

    os.makedirs(args.output, exist_ok=True)
    out = os.path.join(args.output, f"{args.basename}.l4f")
    text = print_module(module, elide_weights=args.elide_weights)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    if args.verbose:
        ops, params = model_summary(module)
        print(f"{args.model}: {ops} layer ops, {params:,} parameters, imported in {seconds:.2f} s -> {out}",
              file=sys.stderr)
    return 0


def weights_to_float16(module: Any) -> None:
    """Store every float32 weight resource as float16 (round to nearest even), in place."""
    import numpy as np
    from ml4f.compiler.ir import Resource
    from ml4f.compiler.types import TensorType, f16, f32

    converted: dict[int, Resource] = {}
    for op in module.walk():
        for key, v in list(op.attributes.items()):
            if isinstance(v, Resource) and v.type.elem == f32:
                if id(v) not in converted:
                    converted[id(v)] = Resource(v.name, TensorType(v.type.shape, f16),
                                                v.array().astype(np.float16))
                op.attributes[key] = converted[id(v)]


def model_summary(module: Any) -> tuple[int, int]:
    """(layer ops, weight parameters) of a module."""
    from ml4f.compiler.ir import Resource

    ops = [op for op in module.walk() if op.name.startswith("layer.") and op.name not in
           ("layer.model", "layer.input", "layer.output")]
    return len(ops), sum(r.type.size for r in module.resources() if isinstance(r, Resource))


class _progress:
    """A rich progress bar on stderr while a large model is read (none for small files or pipes)."""

    def __init__(self, path: str, verbose: bool):
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        self.enabled = size >= PROGRESS_BYTES and (verbose or sys.stderr.isatty())
        self.bar: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import Progress

        self.bar = Progress(console=Console(stderr=True), transient=True)
        self.bar.start()
        return self.update

    def update(self, description: str, completed: int, total: int) -> None:
        task = self.tasks.get(description)
        if task is None:
            task = self.tasks[description] = self.bar.add_task(description, total=total or None)
        self.bar.update(task, completed=completed, total=total or None)

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


if __name__ == "__main__":
    sys.exit(main())
