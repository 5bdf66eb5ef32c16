"""ml4f: compile a trained model for a Cortex-M4F.

    ml4f model.h5                         # built/model.bin .s .h .l4f .json, validated in the emulator
    ml4f model.h5 --float16 --stats       # f16 weights; print the per-layer table
    ml4f model.h5 --eval test.json        # accuracy and confusion matrix of the binary
    ml4f model.h5 --emit l4f|loops|thumb  # stop after that stage and write its IR

MODEL is a Keras .h5/.keras file, a TF.js model.json or ML4F JSON, a .tflite or .onnx file, a
SavedModel directory, or a .l4f file. The work is `ml4f.compiler.pipeline`; this module reads the
options, shows progress and the summary, and writes the files. Imports stay inside functions so that
`--help` answers before NumPy loads.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ml4f.tools._cli import ArgumentParser, run_main

EMIT_CHOICES = ("l4f", "loops", "thumb")
TARGET_CHOICES = ("cortex-m4f", "cortex-m7", "cortex-m33")
OPTIMIZE_CHOICES = ("speed", "size")   # compiler/pipeline.py checks the same names


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="ml4f", description="Compile a neural network to Thumb-2 machine code "
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
    p.add_argument("--target", default="cortex-m4f", choices=TARGET_CHOICES,
                   help="the core (cortex-m7 and cortex-m33 run the same code as cortex-m4f)")
    p.add_argument("--optimize", default="speed", choices=OPTIMIZE_CHOICES,
                   help="speed (default) or size: smaller code (no unrolled or peeled loop steps), "
                        "more cycles")
    p.add_argument("--stats", action="store_true", help="print a per-layer table")
    p.add_argument("--elide-weights", action="store_true", help="write .l4f files without the weight data")
    p.add_argument("-v", "--verbose", action="store_true", help="say what is done")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ml4f.compiler import pipeline
    from ml4f.compiler.diagnostics import CompileError, Loc

    needs_code = [flag for flag, on in (("--eval", args.eval), ("--test-data", args.test_data),
                                        ("--stats", args.stats)) if on]
    if args.emit and needs_code:
        raise CompileError(f"{', '.join(needs_code)} needs the binary, which --emit {args.emit} stops "
                           "before", Loc("ml4f"))
    if args.calibration and not args.int8:
        raise CompileError("--calibration goes with --int8", Loc("ml4f"))
    options = pipeline.Options(float16=args.float16, validate=not args.no_validate,
                               test_data=args.test_data, target=args.target, int8=args.int8,
                               emit=args.emit, elide_weights=args.elide_weights, optimize=args.optimize)
    console = _console()
    with _Progress(console, args.verbose) as progress:
        result = pipeline.compile_model(args.model, options, progress=progress.stage)
        if args.eval:
            progress.stage("eval")
            x, y = pipeline.load_eval_data(args.eval, result)
            pipeline.evaluate(result, x, y, progress.samples)
    paths = pipeline.write_outputs(result, args.output, args.basename)
    if args.emit:
        if args.verbose:
            console.print(f"{args.model} -> {paths[0]} ({result.compile_seconds:.2f} s)")
        return 0
    if args.eval:
        print(pipeline.format_eval(result.evaluation), end="")
    if args.stats:
        _print_table(console, result)
    for line in pipeline.describe(result):
        console.print(line, highlight=False)
    if args.verbose:
        console.print("wrote " + ", ".join(paths), highlight=False)
    return 0


def _console() -> Any:
    from rich.console import Console

    # A pipe gets a wide table (rich would otherwise assume 80 columns and cut cells).
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def _print_table(console: Any, result: Any) -> None:
    """The per-layer table (--stats) with totals."""
    from rich.table import Table

    from ml4f.compiler.pipeline import summary_rows

    table = Table(title=f"{result.model_name} ({result.weights_type} weights)")
    for col, right in (("layer", False), ("op", False), ("output", False), ("MACs", True), ("cycles", True),
                       ("cycles/MAC", True), ("code B", True), ("weights B", True)):
        table.add_column(col, justify="right" if right else "left")
    for row in summary_rows(result):
        table.add_row(*row)
    other = result.cycles - sum(layer.cycles for layer in result.layers)
    table.add_row("(entry, exit)", "", "", "", f"{other:,}", "", "", "", style="dim")
    cpm = f"{result.cycles / result.macs:.2f}" if result.macs else "-"
    table.add_row("total", "", "", f"{result.macs:,}", f"{result.cycles:,}", cpm, f"{result.code_bytes:,}",
                  f"{result.weights_bytes:,}", style="bold")
    console.print(table)


class _Progress:
    """Which stage is running: on a terminal, a spinner that appears once the compile has taken a
    second (quick compiles print nothing extra); with -v, one line per finished stage and its time."""

    def __init__(self, console: Any, verbose: bool):
        self.verbose = verbose
        self.status: Any = None
        self.timer: Any = None
        self.current: str | None = None

    def __enter__(self) -> _Progress:  # noqa: PYI034 - a private class, never subclassed
        import threading
        import time

        self.clock = time.perf_counter
        self.t0 = self.clock()
        if sys.stderr.isatty():
            from rich.console import Console

            self.status = Console(stderr=True).status("ml4f", spinner="dots")
            self.timer = threading.Timer(1.0, self.status.start)
            self.timer.daemon = True
            self.timer.start()
        return self

    def stage(self, name: str) -> None:
        now = self.clock()
        if self.verbose and self.current is not None:
            print(f"  {self.current}: {now - self.t0:.2f} s", file=sys.stderr)
        self.current, self.t0 = name, now
        if self.status is not None:
            self.status.update(f"{name}...")

    def samples(self, done: int, total: int) -> None:
        if self.status is not None:
            self.status.update(f"{self.current} {done}/{total}...")

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.status is not None:
            self.status.stop()
        if self.verbose and self.current is not None and exc[0] is None:
            print(f"  {self.current}: {self.clock() - self.t0:.2f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
