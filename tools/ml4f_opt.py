"""ml4f-opt: run passes on any dialect file, like mlir-opt.

Imports stay inside functions so that `--help` answers before NumPy or Lark load.
"""

from __future__ import annotations

import argparse
import re
import sys

from ml4f.tools._cli import ArgumentParser, read_text, run_main

SPLIT_MARKER = re.compile(r"^// -----\s*$", re.MULTILINE)
# DESIGN §3 spells some passes shorter on the command line.
FLAG_ALIASES = {"regalloc": "thumb-regalloc", "schedule": "thumb-schedule"}

HELP_EPILOG = """\
passes: any registered pass also works as a flag, `--NAME` or `--NAME=VALUE` (the value goes to the
pass's first option), e.g. `--fold-batchnorm` or `--tile=4,4`; see --list-passes.
diagnostics: with --verify-diagnostics, comments `// expected-error {{text}}` (optionally
`@+N`/`@-N` for another line) state the errors a file must produce; the run passes when they match.
"""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="ml4f-opt", description="Run ml4f passes on a .l4f file.",
                                epilog=HELP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", default="-", help="input .l4f file ('-' for stdin)")
    p.add_argument("-p", "--pass-pipeline", default="", help="passes, e.g. 'a,b{k=v k2=v2}' "
                   "(pipelines and pass flags run in command-line order)")
    p.add_argument("-o", "--output", default="-", help="output file (default stdout)")
    p.add_argument("--print-after-all", action="store_true", help="print the IR after every pass (stderr)")
    p.add_argument("--verify-each", dest="verify_each", action="store_true", default=True,
                   help="verify the IR after each pass (default)")
    p.add_argument("--no-verify-each", dest="verify_each", action="store_false")
    p.add_argument("--split-input-file", action="store_true",
                   help="process each chunk between '// -----' lines on its own")
    p.add_argument("--verify-diagnostics", action="store_true",
                   help="check errors against expected-error comments")
    p.add_argument("--elide-weights", action="store_true", help="print resources as __elided__")
    p.add_argument("--emit", choices=("ir", "asm", "bin"), default="ir",
                   help="after the passes, print the IR (default), the GNU assembly of the thumb "
                        "functions, or their machine code (raw bytes, as ml4f-as writes)")
    p.add_argument("--list-ops", action="store_true", help="list every op with its documentation")
    p.add_argument("--list-passes", action="store_true", help="list every pass with its options")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _ordered_steps(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], list[tuple]]:
    """Split pass flags and -p pipelines (in command-line order, as mlir-opt runs them) from the
    other arguments."""
    options = set(parser._option_string_actions)  # argparse has no public listing of its options
    rest: list[str] = []
    steps: list[tuple] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-p", "--pass-pipeline"):
            if i + 1 == len(argv):
                parser.error(f"{a} needs a pipeline")
            steps.append(("pipeline", argv[i + 1]))
            i += 2
            continue
        if a.startswith("--pass-pipeline="):
            steps.append(("pipeline", a.split("=", 1)[1]))
        elif a.startswith("-p") and not a.startswith("--"):
            steps.append(("pipeline", a[2:]))
        elif (m := re.fullmatch(r"--([A-Za-z0-9_-]+)(?:=(.*))?", a)) and f"--{m.group(1)}" not in options:
            steps.append(("flag", m.group(1), m.group(2)))
        else:
            rest.append(a)
        i += 1
    return rest, steps


def _main(argv: list[str]) -> int:
    parser = build_parser()
    rest, steps = _ordered_steps(argv, parser)
    args = parser.parse_args(rest)

    if args.list_ops:
        return list_ops()
    if args.list_passes:
        return list_passes()

    import dataclasses

    from ml4f.compiler.diagnostics import CompileError
    from ml4f.compiler.passes import load_all_passes, make_pass, parse_pipeline

    passes = []
    for step in steps:
        if step[0] == "pipeline":
            passes.extend(parse_pipeline(step[1]))
            continue
        _, name, value = step
        name = FLAG_ALIASES.get(name, name)
        known = load_all_passes()
        if name not in known:
            parser.error(f"unrecognized argument: --{name} (not an option nor a pass; see --list-passes)")
        opts = {}
        if value is not None:
            fields = dataclasses.fields(known[name])
            if not fields:
                parser.error(f"pass --{name} takes no value")
            opts[fields[0].name] = value
        passes.append(make_pass(name, opts))

    text = read_text(args.file)
    file = "<stdin>" if args.file == "-" else args.file
    chunks = _split(text) if args.split_input_file else [(text, 0)]
    outputs: list[str] = []
    failures = 0
    for chunk, line_offset in chunks:
        if args.verify_diagnostics:
            failures += _check_diagnostics(chunk, file, line_offset, passes, args)
            continue
        outputs.append(_process(chunk, file, line_offset, passes, args))
    if args.verify_diagnostics:
        return 1 if failures else 0
    if args.emit == "bin":
        data = b"".join(outputs)
        if args.output == "-":
            sys.stdout.buffer.write(data)
        else:
            try:
                with open(args.output, "wb") as f:
                    f.write(data)
            except OSError as e:
                raise CompileError(f"cannot write output: {e.strerror}") from None
        return 0
    result = "// -----\n".join(outputs)
    if args.output == "-":
        sys.stdout.write(result)
    else:
        try:
            with open(args.output, "w", encoding="utf-8") as f:
                f.write(result)
        except OSError as e:
            raise CompileError(f"cannot write output: {e.strerror}") from None
    return 0


def _split(text: str) -> list[tuple[str, int]]:
    chunks, start, line = [], 0, 0
    for m in SPLIT_MARKER.finditer(text):
        chunks.append((text[start:m.start()], line))
        line += text[start:m.end()].count("\n") + 1
        start = m.end() + 1
    chunks.append((text[start:], line))
    return chunks


def _process(text: str, file: str, line_offset: int, passes: list, args: argparse.Namespace) -> str:
    from ml4f.compiler.context import Context
    from ml4f.compiler.parser import parse
    from ml4f.compiler.passes import PassManager, verify_module
    from ml4f.compiler.printer import print_module

    ctx = Context()
    module = parse(text, file, ctx, line_offset)
    verify_module(module)

    def dump(name: str, m) -> None:
        sys.stderr.write(f"// -----// IR Dump After {name} //----- //\n")
        sys.stderr.write(print_module(m, elide_weights=True))

    PassManager(passes, verify_each=args.verify_each,
                print_after_all=dump if args.print_after_all else None).run(ctx, module)
    if args.emit == "ir":
        return print_module(module, elide_weights=args.elide_weights)
    return _emit_machine(module, file, args.emit)


def _emit_machine(module, file: str, emit: str):
    """The thumb functions of `module` as GNU assembly, or assembled to bytes."""
    from ml4f.compiler.diagnostics import CompileError, Loc
    from ml4f.dialects.thumb import print_asm
    from ml4f.dialects.thumb.registers import RegType, SRegType

    funcs = [op for op in module.ops if op.name == "thumb.func"]
    if not funcs:
        raise CompileError(f"--emit={emit} needs thumb functions (run --lower-to-thumb and --regalloc "
                           "first)", Loc(file))
    for f in funcs:
        for op in f.walk():
            for v in [*op.operands, *op.results]:
                if isinstance(v.type, (RegType, SRegType)) and not v.type.allocated:
                    raise op.error(f"--emit={emit} needs physical registers: run --regalloc first")
    from ml4f.compiler.lowering.mathlib import ROUTINES, routines_text

    calls = {str(op.target)[1:] for f in funcs for op in f.walk() if op.name == "thumb.bl"}
    text = "".join(print_asm([f]) for f in funcs) + routines_text(calls & ROUTINES.keys())
    if emit == "asm":
        return text
    from ml4f.compiler.backend.assembler import assemble

    return assemble(text, f"{file} (assembly)")


_EXPECT = re.compile(r"//\s*expected-(error|warning|note)\s*(@[+-]?\d+)?\s*\{\{(.*?)\}\}")


def _check_diagnostics(text: str, file: str, line_offset: int, passes: list,
                       args: argparse.Namespace) -> int:
    """Run one chunk; its errors must be exactly the expected-error comments (line and text)."""
    from ml4f.compiler.diagnostics import CompileError

    expected = []
    for i, line in enumerate(text.split("\n"), start=1):
        for m in _EXPECT.finditer(line):
            if m.group(1) != "error":
                continue
            off = m.group(2)
            target = i + (int(off[1:]) if off else 0)
            expected.append((target + line_offset, m.group(3)))
    try:
        _process(text, file, line_offset, passes, args)
        got = None
    except CompileError as e:
        got = e
    if got is None:
        for line, msg in expected:
            print(f"{file}:{line}: error: expected error \"{msg}\" was not produced", file=sys.stderr)
        return len(expected)
    if not expected:
        print(f"unexpected {got.render()}", file=sys.stderr)
        return 1
    for line, msg in expected:
        if got.loc.line == line and msg in got.one_line():
            return 0
    print(f"{got.loc}: error: produced \"{got.one_line()}\", but expected "
          + "; ".join(f"line {ln}: \"{msg}\"" for ln, msg in expected), file=sys.stderr)
    return 1


def list_ops() -> int:
    from ml4f.compiler.context import Context

    for dialect in Context().all_dialects():
        print(f"{dialect.name} dialect")
        for cls in dialect.ops:
            doc = " ".join((cls.__doc__ or "").split())
            summary, _, example = doc.partition("Example:")
            print(f"  {cls.name:<28} {summary.strip()}")
            if example:
                print(f"  {'':<28} e.g. {example.strip()}")
            attrs = [f"{k}{'' if not d.optional else '?'}: {d.kind.description}"
                     for k, d in cls._attr_defs.items()]
            if attrs:
                print(f"  {'':<28} attributes: " + "; ".join(attrs))
    return 0


def list_passes() -> int:
    import dataclasses

    from ml4f.compiler.passes import load_all_passes

    for name, cls in sorted(load_all_passes().items()):
        # The summary paragraph only; `ml4f-opt --help`-style listings stay one entry per pass.
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        print(f"  {name:<24} {doc}")
        for f in dataclasses.fields(cls):
            print(f"  {'':<24}   {f.name} = {f.default!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
