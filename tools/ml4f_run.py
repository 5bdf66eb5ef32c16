"""ml4f-run: run a model on one input and print its output.

A `.bin` runs in the emulator (cycles, instructions, stack); a `.l4f` file runs with the interpreter
of its dialect (the layer dialect's NumPy references, or the loop interpreter).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ml4f.tools._cli import ArgumentParser, read_text, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="ml4f-run", description="Run a .bin or .l4f model on one input.")
    p.add_argument("file", help="model: .bin (emulator) or .l4f (interpreter)")
    p.add_argument("--input", help="input sample: .npy or .json (without batch; a leading 1 is accepted)")
    p.add_argument("--output", help="save the output as .npy (in the model's output type)")
    p.add_argument("--json", dest="json_out", help="write the output and run statistics as JSON")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input used without --input")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np

    from ml4f.compiler.diagnostics import CompileError, Loc
    from ml4f.compiler.samples import load_input

    if args.file.endswith(".bin"):
        from ml4f.compiler.backend.runner import run_binary

        result = run_binary(args.file, load_input(args.input) if args.input else None, seed=args.seed)
    elif args.file.endswith(".l4f"):
        result = run_l4f(args.file, load_input(args.input) if args.input else None, args.seed)
    else:
        raise CompileError("expected a .bin or .l4f file", Loc(args.file))

    out = result["output"]
    np.set_printoptions(precision=6, suppress=True, linewidth=100)
    print(f"output {list(out.shape[1:]) if out.shape[:1] == (1,) else list(out.shape)}: {out.reshape(-1)}")
    stats = {k: result[k] for k in ("cycles", "instructions", "stack_bytes") if k in result}
    for k, v in stats.items():
        print(f"{k}: {v:,}")
    if args.output:
        np.save(args.output, out)
    if args.json_out:
        doc = {"output": out.reshape(-1).tolist(), "output_shape": list(out.shape), **stats}
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    return 0


def run_l4f(path: str, x: Any, seed: int) -> dict[str, Any]:
    """Run the first model or function of a .l4f file with its dialect's interpreter."""
    from ml4f.compiler.context import Context
    from ml4f.compiler.diagnostics import CompileError, Loc
    from ml4f.compiler.parser import parse
    from ml4f.compiler.passes import verify_module
    from ml4f.compiler.samples import prepare_input, random_input

    ctx = Context()
    module = parse(read_text(path), path, ctx)
    verify_module(module)
    if not module.ops:
        raise CompileError("the file has no model", Loc(path))
    top = module.ops[0]
    if top.name == "layer.model":
        from ml4f.dialects.layer import run_model

        (inp,) = top.inputs if len(top.inputs) == 1 else (None,)
        if inp is None:
            raise CompileError(f"ml4f-run takes models with one input; this one has {len(top.inputs)}",
                               top.loc)
        t = inp.result.type
        data = prepare_input(x, t.shape, t.elem, path) if x is not None else random_input(t.shape, t.elem, seed)
        outputs, _ = run_model(top, [data])
        return {"output": outputs[0]}
    runner = getattr(type(top), "interpret", None)
    if runner is None:
        raise CompileError(f"no interpreter for '{top.name}'", top.loc)
    return runner(top, module, x, seed)


if __name__ == "__main__":
    sys.exit(main())
