"""What every command shares: one-line errors with exit status 1, tracebacks only with --debug."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ml4f.compiler.diagnostics import read_text  # noqa: F401  (re-exported for the tools)


def run_main(body: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        return body(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        from ml4f.compiler.diagnostics import CompileError

        if debug:
            raise
        if isinstance(e, CompileError):
            print(e.render(), file=sys.stderr)
            return 1
        if isinstance(e, OSError) and e.filename:
            print(f"{e.filename}: error: {e.strerror}", file=sys.stderr)
            return 1
        print(f"internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error convention (one line, exit status 1, not usage + 2) and
    the `--debug` flag that `run_main` handles."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show a traceback on errors")

    def error(self, message: str):  # type: ignore[override]
        hint = "" if "(see " in message else f" (see {self.prog} --help)"
        print(f"{self.prog}: error: {message}{hint}", file=sys.stderr)
        sys.exit(1)
