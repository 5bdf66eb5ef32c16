"""The benchmark (DESIGN §8): compile the shared models in f32 and f16, run each binary in the
emulator, and write bench/results.json and bench/results.md beside Microsoft ML4F's figures.

    python -m ml4f.tools.bench                       # every model, both precisions
    python -m ml4f.tools.bench --optimize size       # the smaller-code build, into bench/size
    python -m ml4f.tools.bench --only gestures mlp   # models whose file name contains a word
    python -m ml4f.tools.bench --models ../shared/models --out bench

Not a test: it measures. Per model and precision it records MACs, cycles, cycles per MAC, code /
weights / arena / stack bytes and the compile time (with validation, as `ml4f MODEL` runs it), and
for the models ML4F can compile, ML4F's cycles, arena and code bytes from the models' INDEX.md with
the ratios ours / ML4F. One model (gestures) also gets a per-layer breakdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

from ml4f.tools._cli import ArgumentParser, run_main
from ml4f.tools.ml4f import OPTIMIZE_CHOICES

# One file per model: the float version that imports (the same network in another format is left
# out). Relative to the models folder.
MODELS = [
    "ml4f/gestures.tfjsmodel.json", "ml4f/accel.json", "ml4f/button.json", "tfjs/mnist_cnn.json",
    "tfjs/gesture_1d.json", "tfjs/dwsep_cnn.json", "tfjs/mlp.json",
    "tflite_micro/hello_world_float.tflite", "tinymaix/mnist_valid.h5", "tinymaix/mnist_resnet.h5",
    "onnx/mnist-8.onnx", "mlperf_tiny/kws_ref_model_savedmodel", "mlperf_tiny/pretrainedResnet.h5",
    "mlperf_tiny/vww_96_float.tflite", "tinymaix/vww96.h5",
]
BREAKDOWN_MODEL = "ml4f/gestures.tfjsmodel.json"
DEFAULT_MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                  "models")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m ml4f.tools.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=DEFAULT_MODELS_DIR, help="the shared models folder")
    p.add_argument("--out", default=None,
                   help="where results.json and results.md go (default: bench, or bench/size with --optimize size)")
    p.add_argument("--only", nargs="*", default=None, metavar="WORD",
                   help="only models whose path contains one of these words")
    p.add_argument("--precision", default="f32,f16", help="f32, f16 or both (default: f32,f16)")
    p.add_argument("--no-validate", action="store_true", help="skip validation (compile times then exclude it)")
    p.add_argument("--optimize", default="speed", choices=OPTIMIZE_CHOICES,
                   help="what ml4f --optimize builds (default: speed)")
    return p


def ml4f_figures(index_path: str) -> dict[str, dict[str, int]]:
    """ML4F's cycles (f32, f16), arena and code bytes per model file, from the INDEX.md table."""
    out: dict[str, dict[str, int]] = {}
    try:
        with open(index_path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    header: list[str] = []
    for line in lines:
        if not line.startswith("|"):
            header = []
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "ML4F cycles f32" in cells:
            header = cells
            continue
        if not header or len(cells) != len(header) or set(cells[0]) <= set("-"):
            continue
        row = dict(zip(header, cells))
        path = row["file"].split(" ")[0]

        def num(key: str, row: dict[str, str] = row) -> int | None:
            v = re.sub(r"[^\d]", "", row.get(key, ""))
            return int(v) if v else None

        out[path] = {k: v for k, v in (("cycles_f32", num("ML4F cycles f32")), ("cycles_f16", num("ML4F cycles f16")),
                                       ("arena_bytes", num("ML4F arena bytes")),
                                       ("code_bytes", num("ML4F code bytes"))) if v is not None}
    return out


def bench_one(path: str, precision: str, validate: bool, optimize: str = "speed") -> dict[str, Any]:
    """Compile and measure one model in one precision; failures are recorded, not raised."""
    from ml4f.compiler.diagnostics import CompileError
    from ml4f.compiler.pipeline import Options, compile_model

    t0 = time.perf_counter()
    try:
        r = compile_model(path, Options(float16=precision == "f16", validate=validate, optimize=optimize))
    except CompileError as e:
        return {"error": e.one_line(), "compile_seconds": round(time.perf_counter() - t0, 2)}
    return {"macs": r.macs, "cycles": r.cycles, "cycles_per_mac": round(r.cycles / r.macs, 3) if r.macs else None,
            "code_bytes": r.code_bytes, "routines_bytes": r.routines_bytes, "weights_bytes": r.weights_bytes,
            "arena_bytes": r.arena_bytes, "stack_bytes": r.stack_bytes, "binary_bytes": r.binary_bytes,
            "compile_seconds": round(r.compile_seconds, 2),
            "stage_seconds": {k: round(v, 3) for k, v in r.stage_seconds.items()},
            "validation": r.validation, "layers": [layer.to_json() for layer in r.layers]}


def _ratio(a: int | None, b: int | None) -> float | None:
    return round(a / b, 3) if a and b else None


def markdown(results: list[dict[str, Any]], breakdown: dict[str, Any] | None, optimize: str = "speed") -> str:
    """The results as markdown tables."""
    lines = ["# ml4f benchmark" + (" (--optimize size)" if optimize == "size" else ""), "",
             ("Cycles on the Cortex-M4 cycle model of DESIGN §6, measured by running each binary in the "
              "emulator on a seeded random input; compile seconds include validation. ML4F figures are "
              "Microsoft ML4F 1.10.1's, from the models' INDEX.md; ratio = ours / ML4F."), "",
             ("| model | prec | MACs | cycles | cycles/MAC | ML4F cycles | ratio | code B | ML4F code B "
              "| weights B | arena B | ML4F arena B | stack B | compile s |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['precision']} | error: {r['error'][:120]} "
                         "| | | | | | | | | | | |")
            continue
        ml = r.get("ml4f", {})
        cells = [r["model"], r["precision"], f"{r['macs']:,}", f"{r['cycles']:,}",
                 f"{r['cycles_per_mac']:.2f}" if r["cycles_per_mac"] else "-",
                 f"{ml['cycles']:,}" if ml.get("cycles") else "", f"{r['ratio_cycles']:.2f}" if r.get("ratio_cycles") else "",
                 f"{r['code_bytes']:,}", f"{ml['code_bytes']:,}" if ml.get("code_bytes") else "",
                 f"{r['weights_bytes']:,}", f"{r['arena_bytes']:,}",
                 f"{ml['arena_bytes']:,}" if ml.get("arena_bytes") else "", f"{r['stack_bytes']:,}",
                 f"{r['compile_seconds']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if breakdown:
        for prec, layers in breakdown["layers"].items():
            lines += ["", f"## Per layer: {breakdown['model']} ({prec})", "",
                      "| layer | op | output | MACs | cycles | cycles/MAC | code B | weights B |",
                      "|---|---|---|---:|---:|---:|---:|---:|"]
            for layer in layers:
                cpm = f"{layer['cycles_per_mac']:.2f}" if layer["cycles_per_mac"] else "-"
                lines.append(f"| {layer['name']} | {layer['op']} | {'x'.join(map(str, layer['output_shape']))} "
                             f"| {layer['macs']:,} | {layer['cycles']:,} | {cpm} | {layer['code_bytes']:,} "
                             f"| {layer['weights_bytes']:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    precisions = [p for p in args.precision.split(",") if p]
    if not precisions or set(precisions) - {"f32", "f16"}:
        print("error: --precision takes f32, f16 or f32,f16", file=sys.stderr)
        return 1
    figures = ml4f_figures(os.path.join(args.models, "INDEX.md"))
    chosen = [m for m in MODELS if not args.only or any(w in m for w in args.only)]
    results: list[dict[str, Any]] = []
    breakdown: dict[str, Any] | None = None
    for rel in chosen:
        path = os.path.join(args.models, rel)
        if not os.path.exists(path):
            continue
        for prec in precisions:
            r = {"model": rel, "precision": prec, **bench_one(path, prec, not args.no_validate, args.optimize)}
            fig = figures.get(rel)
            if fig:
                r["ml4f"] = {"cycles": fig.get(f"cycles_{prec}"), "arena_bytes": fig.get("arena_bytes"),
                             "code_bytes": fig.get("code_bytes")}
                if "error" not in r:
                    r["ratio_cycles"] = _ratio(r["cycles"], r["ml4f"]["cycles"])
                    r["ratio_arena"] = _ratio(r["arena_bytes"], r["ml4f"]["arena_bytes"])
                    r["ratio_code"] = _ratio(r["code_bytes"], r["ml4f"]["code_bytes"])
            layers = r.pop("layers", None)
            if rel == BREAKDOWN_MODEL and layers is not None:
                breakdown = breakdown or {"model": rel, "layers": {}}
                breakdown["layers"][prec] = layers
            results.append(r)
            status = r.get("error") or (f"{r['cycles']:,} cycles, {r['cycles_per_mac']} cycles/MAC"
                                        + (f", {r['ratio_cycles']}x ML4F" if r.get("ratio_cycles") else "")
                                        + f", {r['compile_seconds']} s")
            print(f"{rel} {prec}: {status}", file=sys.stderr)
    if args.out is None:
        args.out = os.path.join("bench", "size") if args.optimize == "size" else "bench"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"models": results, "breakdown": breakdown}, f, indent=1)
        f.write("\n")
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown(results, breakdown, args.optimize))
    return 0


if __name__ == "__main__":
    sys.exit(main())
