"""ml4f-as: the built-in assembler alone. GNU unified-syntax Thumb-2 in, raw bytes out.

    ml4f-as kernel.s -o kernel.bin          (the bytes `arm-none-eabi-as` + `objcopy -O binary` give)
    ml4f-as kernel.s --symbols --listing    (also print label addresses and a listing)
    ml4f-as model.thumb.l4f -o model.bin    (a thumb-dialect file: printed as assembly first)
"""

from __future__ import annotations

import argparse
import sys

from ml4f.tools._cli import ArgumentParser, read_text, run_main


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="ml4f-as", description="Assemble Thumb-2 (GNU unified syntax) "
                                "for Cortex-M4F into raw bytes.")
    p.add_argument("file", help="assembly (.s) or a thumb-dialect .l4f file; '-' reads stdin")
    p.add_argument("-o", "--output", help="where to write the raw bytes (default: IN with .bin)")
    p.add_argument("--symbols", action="store_true", help="print each label's address")
    p.add_argument("--listing", action="store_true",
                   help="print address, bytes (as halfwords, like objdump) and source of each line")
    p.add_argument("--emit-asm", action="store_true", help="for a .l4f input, print its assembly instead")
    return p


def main(argv: list[str] | None = None) -> int:
    return run_main(_main, argv)


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from ml4f.compiler.backend.assembler import assemble_full

    text = read_text(args.file)
    name = "<stdin>" if args.file == "-" else args.file
    if args.file.endswith(".l4f"):
        from ml4f.compiler.parser import parse
        from ml4f.compiler.passes import verify_module
        from ml4f.dialects.thumb import print_asm

        module = parse(text, name)
        verify_module(module)
        text = print_asm(module.ops)
        if args.emit_asm:
            sys.stdout.write(text)
            return 0
    result = assemble_full(text, name)
    out = args.output
    if out is None:
        if args.file == "-":
            sys.stdout.buffer.write(result.code)
            out = None
        else:
            out = args.file.rsplit(".", 1)[0] + ".bin"
    if out is not None:
        with open(out, "wb") as f:
            f.write(result.code)
    if args.listing:
        for li in result.lines:
            raw = result.code[li.addr:li.addr + li.size]
            words = " ".join(raw[i:i + 2][::-1].hex() for i in range(0, len(raw) - 1, 2)) if li.form \
                else raw.hex()
            print(f"{li.addr:08x}: {words:<12} {li.text.strip()}")
    if args.symbols:
        for label, addr in sorted(result.labels.items(), key=lambda kv: (kv[1], kv[0])):
            print(f"{addr:08x} {label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
