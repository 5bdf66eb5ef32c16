"""The context: which dialects exist and where their ops live, loaded on first use."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .diagnostics import CompileError, Loc
from .ir import Dialect, Operation

# Dialect name -> module defining `DIALECT`. Imported lazily so `--help` stays fast.
DIALECT_MODULES: dict[str, str] = {
    "layer": "ml4f.dialects.layer",
    "loop": "ml4f.dialects.loop",
    "thumb": "ml4f.dialects.thumb",
}


@dataclass
class Context:
    dialects: dict[str, Dialect] = field(default_factory=dict)

    def dialect(self, name: str) -> Dialect | None:
        if name not in self.dialects:
            module = DIALECT_MODULES.get(name)
            if module is None:
                return None
            self.dialects[name] = importlib.import_module(module).DIALECT
        return self.dialects[name]

    def lookup_op(self, op_name: str, loc: Loc) -> type[Operation]:
        dialect_name = op_name.split(".", 1)[0]
        dialect = self.dialect(dialect_name)
        if dialect is None:
            raise CompileError(f"unknown dialect '{dialect_name}' in op '{op_name}' "
                               f"(known: {', '.join(DIALECT_MODULES)})", loc)
        for cls in dialect.ops:
            if cls.name == op_name:
                return cls
        raise CompileError(f"unknown op '{op_name}' (see ml4f-opt --list-ops)", loc)

    def all_dialects(self) -> list[Dialect]:
        return [d for name in DIALECT_MODULES if (d := self.dialect(name)) is not None]
