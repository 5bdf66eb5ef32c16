"""IR to text (.l4f). The output parses back to the same IR, and printing that gives the same text."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from .ir import Block, Module, Operation, Resource, SymbolRef, Value
from .types import _fmt_float

_NAME_OK = re.compile(r"[A-Za-z0-9_.$-]+$")
_RESNAME_OK = re.compile(r"[A-Za-z_]([A-Za-z0-9_.\/:-]*[A-Za-z0-9_])?$")


class Printer:
    """Prints a module. SSA names come from name hints (made unique), else numbers."""

    def __init__(self, elide_weights: bool = False):
        self.elide_weights = elide_weights
        self.names: dict[int, str] = {}
        self.used: set[str] = set()
        self.counter = 0
        self.resource_names: dict[int, str] = {}

    # -- names

    def name(self, v: Value) -> str:
        key = id(v)
        if key not in self.names:
            hint = v.name_hint
            if hint is not None and _NAME_OK.match(hint) and not hint.isdigit():
                base, n = hint, 0
                cand = base
                while cand in self.used:
                    n += 1
                    cand = f"{base}_{n}"
            else:
                while str(self.counter) in self.used:
                    self.counter += 1
                cand = str(self.counter)
                self.counter += 1
            self.used.add(cand)
            self.names[key] = cand
        return "%" + self.names[key]

    def resource_name(self, r: Resource) -> str:
        key = id(r)
        if key not in self.resource_names:
            base = r.name if _RESNAME_OK.match(r.name) else re.sub(r"[^A-Za-z0-9_.]", "_", r.name) or "w"
            if not re.match(r"[A-Za-z_]", base):
                base = "w" + base
            taken = set(self.resource_names.values())
            cand, n = base, 0
            while cand in taken:
                n += 1
                cand = f"{base}_{n}"
            self.resource_names[key] = cand
        return self.resource_names[key]

    # -- values

    def attr_value(self, v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return _fmt_float(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(self.attr_value(x) for x in v) + "]"
        if isinstance(v, Resource):
            return f"dense_resource<{self.resource_name(v)}>"
        if isinstance(v, SymbolRef):
            return str(v)
        import numpy as np

        if isinstance(v, np.integer):
            return str(int(v))
        if isinstance(v, np.floating):
            return _fmt_float(float(v))
        raise TypeError(f"cannot print attribute value {v!r}")

    # -- ops

    def op_lines(self, op: Operation, indent: str, out: list[str]) -> None:
        parts: list[str] = []
        if op.results:
            parts.append(", ".join(self.name(r) for r in op.results) + " =")
        parts.append(op.name)
        attrs = {k: v for k, v in op.attributes.items()
                 if not (k in op._attr_defs and op._attr_defs[k].optional
                         and _equal(op._attr_defs[k].default, v))}
        if op.range_form:
            block = op.regions[0].block
            parts.append(f"{self.name(block.args[0])} = {attrs.pop('lb', op.get_attr('lb'))} to "
                         f"{attrs.pop('ub', op.get_attr('ub'))} step {attrs.pop('step', op.get_attr('step'))}")
        if op.symbol:
            parts.append("@" + op.symbol)
        if op.operands:
            parts.append(", ".join(self.name(v) for v in op.operands))
        if attrs:
            parts.append("{" + ", ".join(f"{k} = {self.attr_value(v)}" for k, v in attrs.items()) + "}")
        if op.results:
            parts.append(": " + ", ".join(str(r.type) for r in op.results))
        line = indent + " ".join(parts)
        if op.regions:
            out.append(line + " {")
            for b in op.regions[0].blocks:
                self.block_lines(b, indent + "  ", out)
            out.append(indent + "}")
        else:
            out.append(line)

    def block_lines(self, block: Block, indent: str, out: list[str]) -> None:
        for a in block.args:
            self.name(a)
        for op in block.ops:
            self.op_lines(op, indent, out)

    def module(self, module: Module) -> str:
        out: list[str] = []
        self.block_lines(module.body, "", out)
        res = module.resources()
        if res:
            out.append("")
            out.append("resources {")
            for r in res:
                out.append(f"  {self.resource_name(r)} : {r.type} = {self.blob(r)}")
            out.append("}")
        return "\n".join(out) + "\n"

    def blob(self, r: Resource) -> str:
        if self.elide_weights or r.data is None:
            return "__elided__"
        data = r.data
        if sys.byteorder != "little":
            data = data.byteswap()
        return "0x" + data.tobytes().hex().upper()


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if not isinstance(a, (int, float)) or isinstance(a, bool) \
        else (not isinstance(b, bool) and isinstance(b, (int, float)) and a == b and type(a) is type(b))


def print_module(module: Module, elide_weights: bool = False) -> str:
    return Printer(elide_weights).module(module)


def print_op(op: Operation) -> str:
    out: list[str] = []
    Printer(elide_weights=True).op_lines(op, "", out)
    return "\n".join(out)
