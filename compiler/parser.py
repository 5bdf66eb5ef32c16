"""Text (.l4f) to IR. One Lark grammar for all dialects; errors are one line with file:line:col."""

from __future__ import annotations

import binascii
import functools
import json
import re
from importlib import resources as importlib_resources
from typing import Any

from .context import Context
from .diagnostics import CompileError, Loc
from .ir import Block, Module, Operation, Region, Resource, SymbolRef, Value
from .types import TensorType, TypeSyntaxError, numpy_dtype, parse_type

# Readable names for the grammar's terminals in "expected ..." messages.
_TERMINAL_NAMES = {
    "OPNAME": "an op name", "VALUE": "a %value", "SYMBOL": "an @symbol", "IDENT": "an attribute name",
    "RESNAME": "a resource name", "TYPE": "a type", "FLOAT": "a number", "INT": "an integer",
    "STRING": "a string", "HEX": "hex data", "ELIDED": "__elided__", "_NL": "end of line",
    "EQUAL": "'='", "COMMA": "','", "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['",
    "RSQB": "']'", "LESSTHAN": "'<'", "MORETHAN": "'>'", "$END": "end of file",
    "<END-OF-FILE>": "end of file",
}


@functools.cache
def _lark() -> Any:
    """The LALR parser of the one grammar, built once per process (Lark's own on-disk cache keeps
    start-up short)."""
    import lark

    grammar = importlib_resources.files("ml4f.grammar").joinpath("ir.lark").read_text()
    return lark.Lark(grammar, parser="lalr", maybe_placeholders=True, cache=True)


def parse(text: str, file: str = "<input>", ctx: Context | None = None,
          line_offset: int = 0) -> Module:
    """Parse a whole file; `line_offset` shifts reported lines (for --split-input-file chunks)."""
    import lark

    ctx = ctx or Context()
    lines = text.split("\n")
    try:
        tree = _lark().parse(text if text.endswith("\n") else text + "\n")
    except lark.exceptions.UnexpectedInput as e:
        line, col = getattr(e, "line", 0), getattr(e, "column", 0)
        if line is None or line < 1:
            line, col = len(lines), 1
        loc = Loc(file, line + line_offset, col, line_text=lines[line - 1] if line <= len(lines) else None)
        raise CompileError(_describe(e, text), loc) from None
    return _Builder(ctx, file, lines, line_offset).module(tree)


def _describe(e: Exception, text: str) -> str:
    import lark

    expected: set[str] = set()
    if isinstance(e, lark.exceptions.UnexpectedToken):
        expected = set(e.expected)
        tok = e.token
        found = "end of file" if tok.type == "$END" else (
            "end of line" if tok.type == "_NL" else f"'{str(tok)[:30]}'")
    elif isinstance(e, lark.exceptions.UnexpectedCharacters):
        expected = set(e.allowed or ())
        found = f"character '{text[e.pos_in_stream]}'" if e.pos_in_stream < len(text) else "end of file"
    else:
        found = "end of file"
    names = sorted({_TERMINAL_NAMES.get(t, t.lower()) for t in expected if not t.startswith("__")})
    pos = getattr(e, "pos_in_stream", None) or 0
    if names == ["end of file"] and re.search(r"^resources\s*\{", text[:pos], re.MULTILINE):
        return f"unexpected {found} after the resources section (it must come last, once per file)"
    if not names:
        return f"unexpected {found}"
    return f"unexpected {found}, expected " + (names[0] if len(names) == 1 else
                                                 "one of " + ", ".join(names))


class _Builder:
    """Walks the parse tree, building ops with SSA scoping (inner regions see outer values)."""

    def __init__(self, ctx: Context, file: str, lines: list[str], line_offset: int):
        self.ctx = ctx
        self.file = file
        self.lines = lines
        self.line_offset = line_offset
        self.scopes: list[dict[str, Value]] = []
        self.resources: dict[str, Resource] = {}
        self.resource_uses: list[tuple[str, Loc, Operation, str]] = []

    def loc(self, tok: Any) -> Loc:
        line = tok.line
        return Loc(self.file, line + self.line_offset, tok.column,
                   line_text=self.lines[line - 1] if 0 < line <= len(self.lines) else None)

    def module(self, tree: Any) -> Module:
        module = Module(file=self.file)
        self.scopes.append({})
        res_tree = None
        for child in tree.children:
            if child is None:
                continue
            if child.data == "resources":
                res_tree = child
            else:
                module.body.append(self.op(child))
        self.scopes.pop()
        if res_tree is not None:
            self.parse_resources(res_tree)
        for name, loc, op, key in self.resource_uses:
            res = self.resources.get(name)
            if res is None:
                raise CompileError(f"dense_resource<{name}> is not defined in the resources section", loc)
            op.attributes[key] = res
        return module

    def define(self, tok: Any, value: Value) -> None:
        name = str(tok)[1:]
        scope = self.scopes[-1]
        if any(name in s for s in self.scopes):
            raise CompileError(f"value %{name} is defined twice", self.loc(tok))
        scope[name] = value
        value.name_hint = name

    def use(self, tok: Any) -> Value:
        name = str(tok)[1:]
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise CompileError(f"use of undefined value %{name} (values must be defined before use; "
                           "graphs cannot have cycles)", self.loc(tok))

    def type(self, tok: Any) -> Any:
        try:
            return parse_type(str(tok))
        except TypeSyntaxError as e:
            raise CompileError(str(e), self.loc(tok)) from None

    def op(self, tree: Any) -> Operation:
        if tree.data == "range_op":
            results, name_tok, iv_tok, lb, ub, step, attrs, region_tree = tree.children
            attributes = {"lb": self.int(lb), "ub": self.int(ub), "step": self.int(step)}
            operand_toks, types_tree, symbol_tok = None, None, None
            block_args = [iv_tok]
        else:
            results, name_tok, symbol_tok, operand_toks, attrs, types_tree, region_tree = tree.children
            attributes = {}
            block_args = []
        loc = self.loc(name_tok)
        cls = self.ctx.lookup_op(str(name_tok), loc)
        if tree.data == "range_op" and not cls.range_form:
            raise CompileError(f"'{cls.name}' is not a loop and has no '%iv = lb to ub step s' form", loc)
        operands = [self.use(t) for t in operand_toks.children] if operand_toks is not None else []
        if attrs is not None:
            for entry in attrs.children:
                key_tok, value_tree = entry.children
                key = str(key_tok)
                if key in attributes:
                    raise CompileError(f"attribute '{key}' given twice", self.loc(key_tok))
                attributes[key] = self.value(value_tree, key)
        result_toks = list(results.children) if results is not None else []
        types = [self.type(t) for t in types_tree.children] if types_tree is not None else []
        if result_toks and len(types) != len(result_toks):
            raise CompileError(f"'{cls.name}' has {len(result_toks)} result(s) but "
                               f"{len(types)} type(s) after ':'", loc)
        op = cls(operands, types, {}, loc=loc, symbol=str(symbol_tok)[1:] if symbol_tok else None)
        for key, val in attributes.items():
            if isinstance(val, _PendingResource):
                self.resource_uses.append((val.name, val.loc, op, key))
            op.attributes[key] = val
        op.attributes = {k: (cls._attr_defs[k].kind.normalize(v)
                             if k in cls._attr_defs and not isinstance(v, _PendingResource)
                             and cls._attr_defs[k].kind.check(v) else v)
                         for k, v in op.attributes.items()}
        if not result_toks and types and cls.num_results != 0:
            # `: type` without results is allowed only for ops that have none (then it is unused).
            raise CompileError(f"'{cls.name}' has a type but its result is not named", loc)
        for tok, value in zip(result_toks, op.results):
            self.define(tok, value)
        if region_tree is not None:
            self.scopes.append({})
            block = Block([self.ctx_index_type()] * len(block_args))
            for tok, arg in zip(block_args, block.args):
                self.define(tok, arg)
            for child in region_tree.children:
                if child is not None:
                    block.append(self.op(child))
            self.scopes.pop()
            op.add_region(Region([block]))
        return op

    @staticmethod
    def ctx_index_type() -> Any:
        return parse_type("index")

    def int(self, tree: Any) -> int:
        return int(str(tree.children[0]))

    def value(self, tree: Any, key: str) -> Any:
        kind = tree.data
        if kind == "int":
            return int(str(tree.children[0]))
        if kind == "float":
            return float(str(tree.children[0]))
        if kind == "string":
            tok = tree.children[0]
            try:
                return json.loads(str(tok))
            except json.JSONDecodeError as e:
                loc = self.loc(tok)
                why = e.msg.lower().removesuffix(" at")
                raise CompileError(f"malformed string {str(tok)[:40]}: {why}",
                                   Loc(loc.file, loc.line, loc.col + e.pos, line_text=loc.line_text)) from None
        if kind == "true":
            return True
        if kind == "false":
            return False
        if kind == "list":
            return [self.value(c, key) for c in tree.children if c is not None]
        if kind == "resource":
            tok = tree.children[0]
            return _PendingResource(str(tok), self.loc(tok))
        if kind == "symbol":
            return SymbolRef(str(tree.children[0])[1:])
        raise AssertionError(kind)

    def parse_resources(self, tree: Any) -> None:
        for entry in tree.children:
            if entry is None:
                continue
            name_tok, type_tok, data_tok = entry.children
            name = str(name_tok)
            loc = self.loc(name_tok)
            if name in self.resources:
                raise CompileError(f"resource '{name}' is defined twice", loc)
            t = self.type(type_tok)
            if not isinstance(t, TensorType):
                raise CompileError(f"resource '{name}' must have a tensor type, got {t}", self.loc(type_tok))
            try:
                dtype = numpy_dtype(t.elem)
            except TypeError:
                raise CompileError(f"resource '{name}' has element type {t.elem}, which cannot hold "
                                   "weights (f32, f16, an integer or a !quant.uniform type)",
                                   self.loc(type_tok)) from None
            data = None
            if data_tok.type == "HEX":
                hexdigits = str(data_tok)[2:]
                expected = t.size * dtype.itemsize
                if len(hexdigits) % 2:
                    raise CompileError(f"resource '{name}' has an odd number of hex digits "
                                       f"({len(hexdigits)}; truncated or corrupt blob?)", self.loc(data_tok))
                if len(hexdigits) // 2 != expected:
                    raise CompileError(f"resource '{name}' has {len(hexdigits) // 2} bytes of data but "
                                       f"{t} needs {expected} (truncated or corrupt blob?)",
                                       self.loc(data_tok))
                import numpy as np

                raw = binascii.unhexlify(hexdigits)
                data = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(t.shape)
            self.resources[name] = Resource(name, t, data)


class _PendingResource:
    """A dense_resource<name> seen before the resources section; resolved at the end."""

    def __init__(self, name: str, loc: Loc):
        self.name = name
        self.loc = loc
