"""Passes, their registry and options, pipelines (`a,b{k=v}`), and the verifier run after each pass.

A pass is a frozen dataclass whose fields are its options:

    @register_pass
    @dataclass(frozen=True)
    class Tile(ModulePass):
        '''Tile loop nests. Example: -p 'tile{sizes=4,4}' '''
        name: ClassVar[str] = "tile"
        sizes: tuple[int, ...] = (4, 4)

        def apply(self, ctx, module): ...
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .context import Context
from .diagnostics import CompileError, Loc
from .ir import Block, Module, Operation

# Modules that define passes; imported when a pass is looked up.
PASS_MODULES: list[str] = [
    "ml4f.compiler.transforms.layer_passes",
    "ml4f.compiler.transforms.loop_passes",
    "ml4f.compiler.transforms.loop_fuse",
    "ml4f.compiler.transforms.plan_memory",
    "ml4f.compiler.lowering.layer_to_loop",
    "ml4f.compiler.lowering.loop_to_thumb",
    "ml4f.compiler.transforms.regalloc",
    "ml4f.compiler.transforms.schedule",
]

PASSES: dict[str, type[ModulePass]] = {}


@dataclass(frozen=True)
class ModulePass:
    """Base of all passes. Subclasses set `name`, a docstring, option fields and `apply`."""

    name: ClassVar[str] = ""

    def apply(self, ctx: Context, module: Module) -> None:
        raise NotImplementedError

    def spelled(self) -> str:
        """The pass as written in a pipeline, with the options that differ from the defaults."""
        opts = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v != f.default:
                vs = ",".join(map(str, v)) if isinstance(v, tuple) else str(v).lower() if isinstance(v, bool) else str(v)
                opts.append(f"{f.name}={vs}")
        return self.name + ("{" + " ".join(opts) + "}" if opts else "")


def register_pass(cls: type[ModulePass]) -> type[ModulePass]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no pass name")
    PASSES[cls.name] = cls
    return cls


def load_all_passes() -> dict[str, type[ModulePass]]:
    for m in PASS_MODULES:
        importlib.import_module(m)
    return PASSES


def _convert(text: str, annotation: Any, where: str) -> Any:
    hint = annotation if not isinstance(annotation, str) else eval(annotation, vars(typing), {})
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        if hint is str:
            return text
        if origin is tuple:
            (elem, *_rest) = typing.get_args(hint)
            return tuple(int(x) if elem is int else float(x) for x in re.split(r"[,x]", text) if x)
    except ValueError:
        raise CompileError(f"{where}: cannot read '{text}' as {getattr(hint, '__name__', hint)}") from None
    raise CompileError(f"{where}: unsupported option type {hint}")


def make_pass(name: str, options: dict[str, str]) -> ModulePass:
    passes = load_all_passes()
    cls = passes.get(name)
    if cls is None:
        raise CompileError(f"unknown pass '{name}' (see ml4f-opt --list-passes)")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in options.items():
        if k not in fields:
            known = ", ".join(fields) or "none"
            raise CompileError(f"pass '{name}' has no option '{k}' (options: {known})")
        kwargs[k] = _convert(v, fields[k].type, f"pass '{name}' option '{k}'")
    return cls(**kwargs)


_PIPE_RE = re.compile(r"\s*([A-Za-z0-9_-]+)\s*(\{([^}]*)\})?\s*(,|$)")


def parse_pipeline(text: str) -> list[ModulePass]:
    """`fold-batchnorm,tile{sizes=4,4 unroll=2}` -> pass objects. Options are space-separated."""
    result: list[ModulePass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _PIPE_RE.match(text, pos)
        if not m or m.end() == pos:
            # Point past the pass that did read, at the character that did not.
            head = re.compile(r"\s*[A-Za-z0-9_-]+\s*(\{[^}]*\})?\s*").match(text, pos)
            at = head.end() if head else pos
            raise CompileError(f"cannot read pass pipeline '{text}' at '{text[at:]}' "
                               "(expected passes name{k=v ...} separated by ',')")
        opts: dict[str, str] = {}
        if m.group(3):
            for item in m.group(3).split():
                if "=" not in item:
                    raise CompileError(f"pass '{m.group(1)}' option '{item}' needs the form key=value")
                k, v = item.split("=", 1)
                opts[k] = v
        result.append(make_pass(m.group(1), opts))
        pos = m.end()
    return result


# ----------------------------------------------------------------------------- verification


def verify_module(module: Module) -> None:
    """Every op's declared and own rules, plus SSA order: a value is defined before its uses."""
    defined: set[int] = set()
    _verify_block(module.body, defined)


def _verify_block(block: Block, defined: set[int]) -> None:
    for a in block.args:
        defined.add(id(a))
    for i, op in enumerate(block.ops):
        for v in op.operands:
            if id(v) not in defined:
                raise op.error(f"uses a value that is not defined before it ({v.name_hint or '?'})")
        op.verify()
        if op.is_terminator and i != len(block.ops) - 1:
            raise op.error("must be the last op of its block")
        for r in op.regions:
            for b in r.blocks:
                _verify_block(b, set(defined))
        for r in op.results:
            defined.add(id(r))


# ----------------------------------------------------------------------------- running


@dataclass
class PassManager:
    passes: list[ModulePass]
    verify_each: bool = True
    print_after_all: Callable[[str, Module], None] | None = None

    def run(self, ctx: Context, module: Module) -> None:
        for p in self.passes:
            p.apply(ctx, module)
            if self.verify_each:
                try:
                    verify_module(module)
                except CompileError as e:
                    raise CompileError(f"after pass '{p.name}': {e.message}", e.loc, e.note) from None
            if self.print_after_all is not None:
                self.print_after_all(p.spelled(), module)


# ----------------------------------------------------------------------------- rewriting


class Rewriter:
    """Helpers for passes that replace ops in place, keeping uses and locations right."""

    @staticmethod
    def replace_op(op: Operation, new_ops: list[Operation], new_results: list[Any] | None = None) -> None:
        """Insert `new_ops` before `op`, redirect its results to `new_results` (default: the last new
        op's results), then erase it."""
        block = op.parent
        assert block is not None
        for n in new_ops:
            block.insert_before(op, n)
            if n.origin is None:
                n.origin = op.origin or op
                if n.loc is None or n.loc == Loc():
                    n.loc = op.loc
        if new_results is None:
            new_results = new_ops[-1].results if new_ops else []
        for old, new in zip(op.results, new_results):
            if new.name_hint is None:
                new.name_hint = old.name_hint
            old.replace_all_uses_with(new)
        block.erase(op)

    @staticmethod
    def erase_forwarding(op: Operation, replacement: Any) -> None:
        """Remove an op whose result equals `replacement` (e.g. dropout, identity reshape)."""
        op.result.replace_all_uses_with(replacement)
        assert op.parent is not None
        op.parent.erase(op)
