"""The IR core: values, operations, blocks, regions, resources, and the declarative op definitions.

An op is one Python class. Its operands, attributes and regions are declared as class fields:

    class LeakyRelu(LayerOp):
        '''max(x, alpha * x). Example: %y = layer.leaky_relu %x {alpha = 0.2} : tensor<1x8xf32>'''
        name = "layer.leaky_relu"
        x = operand()
        alpha = attr(Float, default=0.3)

The generic verifier checks counts and attribute kinds from these declarations; an op adds its own
rules in `verify_()`. Every op has a `loc`, and ops made from another op keep it as `origin`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .diagnostics import UNKNOWN_LOC, CompileError, Loc
from .types import TensorType, Type, numpy_dtype

# ----------------------------------------------------------------------------- values


class Value:
    """An SSA value: an op result or a block argument. `name_hint` is kept for printing."""

    __slots__ = ("index", "name_hint", "owner", "type", "uses")

    def __init__(self, type: Type, owner: Operation | Block, index: int, name_hint: str | None = None):
        self.type = type
        self.owner = owner
        self.index = index
        self.uses: list[tuple[Operation, int]] = []
        self.name_hint = name_hint

    @property
    def op(self) -> Operation | None:
        """The defining op, or None for a block argument."""
        return self.owner if isinstance(self.owner, Operation) else None

    def replace_all_uses_with(self, new: Value) -> None:
        for user, i in list(self.uses):
            user.set_operand(i, new)

    def __repr__(self) -> str:
        return f"<Value {self.name_hint or '?'} : {self.type}>"


# ----------------------------------------------------------------------------- resources


@dataclass(eq=False)
class Resource:
    """A weight blob: a name, a tensor type and the data (None when elided in the text)."""

    name: str
    type: TensorType
    data: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            dt = numpy_dtype(self.type.elem)
            self.data = np.ascontiguousarray(self.data, dtype=dt).reshape(self.type.shape)

    def array(self) -> np.ndarray:
        if self.data is None:
            raise CompileError(f"weights '{self.name}' were elided from the file; "
                               "use a file written without --elide-weights")
        return self.data


@dataclass(frozen=True)
class SymbolRef:
    """`@name`: a reference to a symbol (a model, function or label)."""

    name: str

    def __str__(self) -> str:
        return "@" + self.name


# ----------------------------------------------------------------------------- attribute kinds


@dataclass(frozen=True)
class AttrKind:
    """A check and a normaliser for one attribute's Python value."""

    description: str
    check: Callable[[Any], bool]
    normalize: Callable[[Any], Any] = lambda v: v


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


Int = AttrKind("an integer", _is_int, int)
Float = AttrKind("a number", _is_num, float)
Bool = AttrKind("true or false", lambda v: isinstance(v, bool))
Str = AttrKind("a string", lambda v: isinstance(v, str))
Weights = AttrKind("a dense_resource<...>", lambda v: isinstance(v, Resource))
Symbol = AttrKind("a symbol @name", lambda v: isinstance(v, SymbolRef))


def Enum(*choices: str) -> AttrKind:
    return AttrKind("one of " + ", ".join(f'"{c}"' for c in choices),
                    lambda v: isinstance(v, str) and v in choices)


def Ints(n: int | None = None) -> AttrKind:
    desc = f"a list of {n} integers" if n is not None else "a list of integers"
    return AttrKind(desc, lambda v: isinstance(v, (list, tuple)) and all(_is_int(x) for x in v)
                    and (n is None or len(v) == n), lambda v: tuple(int(x) for x in v))


def Floats(n: int | None = None) -> AttrKind:
    desc = f"a list of {n} numbers" if n is not None else "a list of numbers"
    return AttrKind(desc, lambda v: isinstance(v, (list, tuple)) and all(_is_num(x) for x in v)
                    and (n is None or len(v) == n), lambda v: tuple(float(x) for x in v))


def IntsList() -> AttrKind:
    return AttrKind("a list of integer lists",
                    lambda v: isinstance(v, (list, tuple)) and all(
                        isinstance(p, (list, tuple)) and all(_is_int(x) for x in p) for p in v),
                    lambda v: tuple(tuple(int(x) for x in p) for p in v))


Any_ = AttrKind("any value", lambda v: True)

_MISSING = object()

# ----------------------------------------------------------------------------- op field declarations


@dataclass
class OperandDef:
    variadic: bool = False
    name: str = ""
    index: int = 0


@dataclass
class AttrDef:
    kind: AttrKind
    default: Any = _MISSING
    doc: str = ""
    name: str = ""

    @property
    def optional(self) -> bool:
        return self.default is not _MISSING


@dataclass
class RegionDef:
    name: str = ""
    index: int = 0


def operand() -> Any:
    """Declare one operand."""
    return OperandDef()


def var_operand() -> Any:
    """Declare a variadic operand list (at most one per op, and last)."""
    return OperandDef(variadic=True)


def attr(kind: AttrKind, default: Any = _MISSING, doc: str = "") -> Any:
    """Declare an attribute; with a default it may be omitted (and the printer omits it)."""
    return AttrDef(kind, default, doc)


def region() -> Any:
    """Declare a region."""
    return RegionDef()


# ----------------------------------------------------------------------------- operations


class Operation:
    """Base of every op. Subclasses declare fields with operand()/attr()/region() and set `name`."""

    name: ClassVar[str] = ""
    # How many results the op has (None: any number, given at construction).
    num_results: ClassVar[int | None] = 1
    # Print as `name %iv = lb to ub step s {attrs} {body}` (structured loops).
    range_form: ClassVar[bool] = False
    # Ops that end a block and may not be followed by others.
    is_terminator: ClassVar[bool] = False
    has_symbol: ClassVar[bool] = False

    _operand_defs: ClassVar[tuple[OperandDef, ...]] = ()
    _attr_defs: ClassVar[dict[str, AttrDef]] = {}
    _region_defs: ClassVar[tuple[RegionDef, ...]] = ()

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        operands = list(cls._operand_defs)
        attrs = dict(cls._attr_defs)
        regions = list(cls._region_defs)
        for key, val in list(vars(cls).items()):
            if isinstance(val, OperandDef):
                val.name, val.index = key, len(operands)
                operands.append(val)
                setattr(cls, key, _OperandAccessor(val))
            elif isinstance(val, AttrDef):
                val.name = key
                attrs[key] = val
                setattr(cls, key, _AttrAccessor(val))
            elif isinstance(val, RegionDef):
                val.name, val.index = key, len(regions)
                regions.append(val)
                setattr(cls, key, _RegionAccessor(val))
        if sum(o.variadic for o in operands) > 1 or any(o.variadic for o in operands[:-1]):
            raise TypeError(f"{cls.__name__}: only the last operand may be variadic")
        cls._operand_defs, cls._attr_defs, cls._region_defs = tuple(operands), attrs, tuple(regions)

    def __init__(self, operands: Sequence[Value] = (), result_types: Sequence[Type] = (),
                 attributes: dict[str, Any] | None = None, regions: Sequence[Region] = (),
                 loc: Loc | None = None, symbol: str | None = None, origin: Operation | None = None,
                 result_names: Sequence[str | None] = ()):
        self.operands: list[Value] = []
        for v in operands:
            self._add_operand(v)
        self.results = [Value(t, self, i, result_names[i] if i < len(result_names) else None)
                        for i, t in enumerate(result_types)]
        self.attributes: dict[str, Any] = {}
        for k, v in (attributes or {}).items():
            d = self._attr_defs.get(k)
            self.attributes[k] = d.kind.normalize(v) if d is not None and d.kind.check(v) else v
        self.regions: list[Region] = []
        for r in regions:
            self.add_region(r)
        self.loc = loc or (origin.loc if origin is not None else UNKNOWN_LOC)
        self.symbol = symbol
        self.origin = origin
        self.parent: Block | None = None

    # -- convenience constructors

    @classmethod
    def build(cls, *operands: Value, result_type: Type | None = None, loc: Loc | None = None,
              **attributes: Any) -> Operation:
        """Make an op; the result type is inferred with `infer_type` when not given."""
        op = cls(operands, (), attributes, loc=loc)
        if cls.num_results == 1:
            rt = result_type if result_type is not None else op.infer_type()
            op.results = [Value(rt, op, 0)]
        return op

    def infer_type(self) -> Type:
        raise NotImplementedError(f"{self.name} cannot infer its result type")

    # -- operands

    def _add_operand(self, v: Value) -> None:
        if not isinstance(v, Value):
            raise TypeError(f"operand of {self.name} must be a Value, got {v!r}")
        v.uses.append((self, len(self.operands)))
        self.operands.append(v)

    def set_operand(self, i: int, v: Value) -> None:
        old = self.operands[i]
        old.uses.remove((self, i))
        v.uses.append((self, i))
        self.operands[i] = v

    def drop_operands(self) -> None:
        for i, v in enumerate(self.operands):
            v.uses.remove((self, i))
        self.operands = []

    # -- results and regions

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise ValueError(f"{self.name} has {len(self.results)} results")
        return self.results[0]

    def add_region(self, r: Region) -> None:
        r.parent = self
        self.regions.append(r)

    def walk(self) -> Iterator[Operation]:
        """This op and every op nested in its regions, in order."""
        yield self
        for r in self.regions:
            for b in r.blocks:
                for op in list(b.ops):
                    yield from op.walk()

    # -- identity for messages

    def display_name(self) -> str:
        """`layer.conv2d 'conv1'`: the op and, when known, its layer (or first result's) name."""
        n = self.loc.layer or (self.results[0].name_hint if self.results else None)
        return f"{self.name} '{n}'" if n and not n.isdigit() else self.name

    def error(self, message: str) -> CompileError:
        """An error located at this op; lowered ops say which op they came from."""
        note = None
        root = self.origin
        while root is not None and root.origin is not None:
            root = root.origin
        if root is not None:
            note = f"lowered from {root.display_name()}"
        who = self.name if self.loc.layer else self.display_name()
        return CompileError(f"{who}: {message}", self.loc, note)

    # -- verification

    def verify(self) -> None:
        """Generic checks from the declarations, then the op's own `verify_()`."""
        self.verify_declared()
        self.verify_()

    def verify_declared(self, results: bool = True) -> None:
        """Operand and result counts, attribute names and kinds, regions, symbol."""
        defs = self._operand_defs
        if defs and defs[-1].variadic:
            if len(self.operands) < len(defs) - 1:
                raise self.error(f"expects at least {len(defs) - 1} operands, got {len(self.operands)}")
        elif len(self.operands) != len(defs):
            raise self.error(f"expects {len(defs)} operand{'s' if len(defs) != 1 else ''}, "
                             f"got {len(self.operands)}")
        if results and self.num_results is not None and len(self.results) != self.num_results:
            raise self.error(f"expects {self.num_results} result(s), got {len(self.results)}")
        for k, v in self.attributes.items():
            d = self._attr_defs.get(k)
            if d is None:
                known = ", ".join(self._attr_defs) or "none"
                raise self.error(f"unknown attribute '{k}' (known: {known})")
            if not d.kind.check(v):
                raise self.error(f"attribute '{k}' must be {d.kind.description}, got {_show(v)}")
        for k, d in self._attr_defs.items():
            if not d.optional and k not in self.attributes:
                raise self.error(f"missing attribute '{k}' ({d.kind.description})")
        if len(self.regions) != len(self._region_defs):
            raise self.error(f"expects {len(self._region_defs)} region(s), got {len(self.regions)}")
        if self.has_symbol and not self.symbol:
            raise self.error("needs a symbol name (@name)")

    def verify_(self) -> None:
        """Op-specific rules; raise `self.error(...)`."""

    def get_attr(self, key: str) -> Any:
        if key in self.attributes:
            return self.attributes[key]
        d = self._attr_defs.get(key)
        if d is not None and d.optional:
            return d.default
        raise KeyError(key)

    def __repr__(self) -> str:
        return f"<{self.display_name()}>"


def _show(v: Any) -> str:
    if isinstance(v, Resource):
        return f"dense_resource<{v.name}>"
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


class _OperandAccessor:
    def __init__(self, d: OperandDef):
        self.d = d

    def __get__(self, op: Operation | None, owner: type) -> Any:
        if op is None:
            return self.d
        if self.d.variadic:
            return op.operands[self.d.index:]
        return op.operands[self.d.index]


class _AttrAccessor:
    def __init__(self, d: AttrDef):
        self.d = d

    def __get__(self, op: Operation | None, owner: type) -> Any:
        if op is None:
            return self.d
        if self.d.name in op.attributes:
            return op.attributes[self.d.name]
        if self.d.optional:
            return self.d.default
        raise op.error(f"missing attribute '{self.d.name}'")

    def __set__(self, op: Operation, value: Any) -> None:
        op.attributes[self.d.name] = self.d.kind.normalize(value) if self.d.kind.check(value) else value


class _RegionAccessor:
    def __init__(self, d: RegionDef):
        self.d = d

    def __get__(self, op: Operation | None, owner: type) -> Any:
        if op is None:
            return self.d
        return op.regions[self.d.index]


# ----------------------------------------------------------------------------- blocks and regions


class Block:
    """A list of ops with block arguments (e.g. a loop's induction variable)."""

    def __init__(self, arg_types: Iterable[Type] = (), arg_names: Sequence[str | None] = ()):
        names = list(arg_names)
        self.args = [Value(t, self, i, names[i] if i < len(names) else None)
                     for i, t in enumerate(arg_types)]
        self.ops: list[Operation] = []
        self.parent: Region | None = None

    def append(self, op: Operation) -> Operation:
        op.parent = self
        self.ops.append(op)
        return op

    def insert(self, index: int, op: Operation) -> Operation:
        op.parent = self
        self.ops.insert(index, op)
        return op

    def insert_before(self, anchor: Operation, op: Operation) -> Operation:
        return self.insert(self.ops.index(anchor), op)

    def insert_after(self, anchor: Operation, op: Operation) -> Operation:
        return self.insert(self.ops.index(anchor) + 1, op)

    def erase(self, op: Operation) -> None:
        """Remove an op whose results are unused."""
        for r in op.results:
            if r.uses:
                users = ", ".join(u.display_name() for u, _ in r.uses)
                raise AssertionError(f"erasing {op.display_name()} whose result is used by {users}")
        op.drop_operands()
        for nested in list(op.walk())[1:]:
            nested.drop_operands()
        self.ops.remove(op)
        op.parent = None


class Region:
    def __init__(self, blocks: Iterable[Block] = ()):
        self.blocks: list[Block] = []
        self.parent: Operation | None = None
        for b in blocks:
            self.add_block(b)

    def add_block(self, b: Block) -> Block:
        b.parent = self
        self.blocks.append(b)
        return b

    @property
    def block(self) -> Block:
        return self.blocks[0]


class Module:
    """A file's worth of IR: top-level ops (a model, functions) plus their shared resources."""

    def __init__(self, ops: Iterable[Operation] = (), file: str = "<memory>"):
        self.body = Block()
        self.file = file
        for op in ops:
            self.body.append(op)

    @property
    def ops(self) -> list[Operation]:
        return self.body.ops

    def walk(self) -> Iterator[Operation]:
        for op in list(self.body.ops):
            yield from op.walk()

    def resources(self) -> list[Resource]:
        """Resources referenced by attributes, in order of first use, each once."""
        seen: dict[int, Resource] = {}
        for op in self.walk():
            for v in op.attributes.values():
                if isinstance(v, Resource) and id(v) not in seen:
                    seen[id(v)] = v
        return list(seen.values())


def unique_name(hint: str, taken: set[str]) -> str:
    """`hint` made a valid IR name (letters, digits, `_.$-`) and unique in `taken` (`x`, `x_1`, ...);
    the result is added to `taken`."""
    base = "".join(c if c.isalnum() or c in "_.$-" else "_" for c in hint) or "v"
    cand, n = base, 0
    while cand in taken:
        n += 1
        cand = f"{base}_{n}"
    taken.add(cand)
    return cand


# ----------------------------------------------------------------------------- dialect registry


@dataclass
class Dialect:
    """A named set of op classes (e.g. all `layer.*` ops)."""

    name: str
    ops: list[type[Operation]] = field(default_factory=list)
    doc: str = ""

    def op(self, cls: type[Operation]) -> type[Operation]:
        """Class decorator registering an op in this dialect."""
        if not cls.name.startswith(self.name + "."):
            raise TypeError(f"op {cls.name} does not belong to dialect {self.name}")
        self.ops.append(cls)
        return cls
