"""The loop dialect: explicit loop nests over one arena and the weights blob.

A `loop.func` holds, in order: the arena buffers (`loop.alloc`, byte offsets set by plan-memory),
the weight buffers (`loop.weights`), one `loop.kernel` per layer, and `loop.return`.

    loop.func @mnist {input_shapes = [[1, 4]], output_shapes = [[1, 2]]} {
      %x = loop.alloc {input = 0} : !loop.buf<4xf32>
      %y = loop.alloc : !loop.buf<2xf32>
      %w = loop.weights {data = dense_resource<fc.k>} : !loop.buf<8xf16>
      loop.kernel @fc {
        loop.for %o = 0 to 2 step 1 {
          %zero = loop.const {value = 0.0} : f32
          %acc = loop.acc %zero : !loop.acc<f32>
          loop.for %i = 0 to 4 step 1 {
            %a = loop.load %x, %i {strides = [1]} : f32
            %b = loop.load %w, %o, %i {strides = [4, 1]} : f32
            loop.acc_fma %acc, %a, %b
          }
          %s = loop.acc_read %acc : f32
          loop.store %s, %y, %o {strides = [1]}
        }
      }
      loop.return %y
    }

Indices are affine: a load or store names its buffer, the induction variables it depends on and
an element index `offset + sum(strides[k] * iv[k])`. Buffers are flat (`!loop.buf<Nxelem>`); f16
weights are widened to f32 on load, i8/i16/i32 loads sign-extend to i32, stores narrow.

Semantics: the iterations of a `loop.for` are independent except through accumulators (`loop.acc`,
a value kept in a register across a reduction, updated by `acc_add`/`acc_max`/`acc_min`/`acc_fma`
and the int8 primitive `acc_smlad`, read by `acc_read` in the block that defined it). That is
what lets the interpreter run a whole nest as NumPy array operations, and the code generator
keep accumulators in S registers. Ops inside a loop body run in order, so a nest may store a
row and read it back in a later inner loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ml4f.compiler.ir import (
    Bool,
    Dialect,
    Enum,
    Float,
    Int,
    Ints,
    IntsList,
    Operation,
    Value,
    Weights,
    attr,
    operand,
    region,
    var_operand,
)
from ml4f.compiler.types import (
    DIALECT_TYPE_PARSERS,
    FloatType,
    IndexType,
    IntType,
    Type,
    TypeSyntaxError,
    f32,
    i32,
    numpy_dtype,
    parse_type,
)

DIALECT = Dialect("loop", doc=__doc__ or "")


# ----------------------------------------------------------------------------- types


@dataclass(frozen=True)
class BufType(Type):
    """A flat buffer of `size` elements: `!loop.buf<784xf32>` (arena region or weights)."""

    size: int
    elem: Type

    def __str__(self) -> str:
        return f"!loop.buf<{self.size}x{self.elem}>"

    @property
    def nbytes(self) -> int:
        return self.size * numpy_dtype(self.elem).itemsize


@dataclass(frozen=True)
class AccType(Type):
    """An accumulator held in a register across a reduction: `!loop.acc<f32>` or `!loop.acc<i32>`."""

    elem: Type

    def __str__(self) -> str:
        return f"!loop.acc<{self.elem}>"


def _parse_buf(body: str | None) -> Type:
    if body is None or "x" not in body:
        raise TypeSyntaxError("expected !loop.buf<SIZExELEM>, e.g. !loop.buf<784xf32>")
    size, _, elem = body.partition("x")
    if not size.strip().isdigit():
        raise TypeSyntaxError(f"buffer size '{size}' is not an integer")
    et = parse_type(elem)
    if not isinstance(et, (FloatType, IntType)):
        raise TypeSyntaxError(f"buffer element type must be f32, f16, i8, i16 or i32, got {et}")
    return BufType(int(size), et)


def _parse_acc(body: str | None) -> Type:
    et = parse_type(body or "")
    if et not in (f32, i32):
        raise TypeSyntaxError(f"accumulator type must be f32 or i32, got {et}")
    return AccType(et)


DIALECT_TYPE_PARSERS["loop.buf"] = _parse_buf
DIALECT_TYPE_PARSERS["loop.acc"] = _parse_acc


def value_type(elem: Type) -> Type:
    """The register type a buffer element is loaded as: f32 for floats, i32 for integers."""
    return f32 if isinstance(elem, FloatType) else i32


# ----------------------------------------------------------------------------- structure


class LoopOp(Operation):
    """Base of loop-dialect ops: helpers for type checks."""

    def expect(self, v: Value, t: Type | type, what: str) -> None:
        ok = isinstance(v.type, t) if isinstance(t, type) else v.type == t
        if not ok:
            want = t.__name__ if isinstance(t, type) else str(t)
            raise self.error(f"{what} must be {_TYPE_WORDS.get(want, want)}, got {v.type}")


_TYPE_WORDS = {"BufType": "a !loop.buf", "AccType": "a !loop.acc", "IndexType": "an index"}


@DIALECT.op
class Func(LoopOp):
    """A compiled model: arena buffers, weights, one kernel per layer, then loop.return.

    Example: loop.func @mnist {arena_size = 4096, input_shapes = [[1, 28, 28, 1]],
             output_shapes = [[1, 10]]} { ... }
    """

    name = "loop.func"
    num_results = 0
    has_symbol = True
    body = region()
    input_shapes = attr(IntsList())
    output_shapes = attr(IntsList())
    arena_size = attr(Int, default=-1, doc="bytes, set by plan-memory")
    arena_lower_bound = attr(Int, default=-1, doc="largest sum of simultaneously live buffers")
    arena_pingpong = attr(Int, default=-1, doc="bytes a two-buffer ping-pong plan would need")

    def verify_(self) -> None:
        ops = self.body.block.ops
        if not ops or not isinstance(ops[-1], Return):
            raise self.error("must end with loop.return")
        inputs = sorted(op.input for op in ops if isinstance(op, Alloc) and op.input >= 0)
        if inputs != list(range(len(self.input_shapes))):
            raise self.error(f"has {len(self.input_shapes)} input shape(s) but input buffers {inputs}")
        if len(ops[-1].operands) != len(self.output_shapes):
            raise self.error(f"returns {len(ops[-1].operands)} buffer(s) but has "
                             f"{len(self.output_shapes)} output shape(s)")
        for v, shape in zip(ops[-1].operands, self.output_shapes):
            if isinstance(v.type, BufType) and v.type.size != math.prod(shape):
                raise ops[-1].error(f"returns {v.type} for output shape {list(shape)}")
        for op in ops:
            if isinstance(op, Alloc) and op.input >= 0:
                n = math.prod(self.input_shapes[op.input])
                if op.result.type.size != n:
                    raise op.error(f"input {op.input} has shape {list(self.input_shapes[op.input])} "
                                   f"({n} elements) but its buffer holds {op.result.type.size}")
            if isinstance(op, Alloc) and self.arena_size >= 0 and op.offset >= 0 and \
                    op.offset + op.result.type.nbytes > self.arena_size:
                raise op.error(f"buffer at offset {op.offset} ({op.result.type.nbytes} bytes) ends "
                               f"past the arena of {self.arena_size} bytes")

    @property
    def allocs(self) -> list[Alloc]:
        return [op for op in self.body.block.ops if isinstance(op, Alloc)]

    @property
    def kernels(self) -> list[Kernel]:
        return [op for op in self.body.block.ops if isinstance(op, Kernel)]

    @staticmethod
    def interpret(func: Func, module: Any, x: Any, seed: int) -> dict[str, Any]:
        """Run the function on one input (ml4f-run's entry point for loop files)."""
        from ml4f.compiler.interpret_loop import run_func
        from ml4f.compiler.samples import prepare_input, random_input

        shape = tuple(func.input_shapes[0])
        if len(func.input_shapes) != 1:
            raise func.error(f"ml4f-run takes functions with one input; this one has "
                             f"{len(func.input_shapes)}")
        elem = next(op.result.type.elem for op in func.allocs if op.input == 0)
        data = prepare_input(x, shape, elem, module.file) if x is not None else \
            random_input(shape, elem, seed)
        return {"output": run_func(func, [data])[0]}


@DIALECT.op
class Return(LoopOp):
    """Ends a function, naming its output buffers in order. Example: loop.return %probs"""

    name = "loop.return"
    num_results = 0
    is_terminator = True
    values = var_operand()

    def verify_(self) -> None:
        for v in self.operands:
            self.expect(v, BufType, "a returned value")


@DIALECT.op
class Alloc(LoopOp):
    """A buffer in the arena at byte `offset` (-1 until plan-memory runs); `input = k` marks input k.
    A tensor is stored channels-last (NHWC), or with `channel_major = true` one channel after the
    other (CHW: a row of positions of one channel is consecutive words), as lower-to-loops chose.

    Example: %conv1 = loop.alloc {offset = 3136} : !loop.buf<5408xf32>
    """

    name = "loop.alloc"
    offset = attr(Int, default=-1)
    input = attr(Int, default=-1)
    channel_major = attr(Bool, default=False)

    def verify_(self) -> None:
        self.expect(self.result, BufType, "the result")
        if self.offset < -1:
            raise self.error(f"offset must be >= 0 (or -1 for unplanned), got {self.offset}")


@DIALECT.op
class WeightsBuf(LoopOp):
    """A read-only buffer over a weight resource (in the weights blob).

    Example: %k = loop.weights {data = dense_resource<conv1.kernel>} : !loop.buf<72xf16>
    """

    name = "loop.weights"
    data = attr(Weights)

    def verify_(self) -> None:
        self.expect(self.result, BufType, "the result")
        t = self.data.type
        if self.result.type.size != t.size or self.result.type.elem != t.elem:
            raise self.error(f"buffer type {self.result.type} does not match the resource {t}")


@DIALECT.op
class Kernel(LoopOp):
    """The loop nests of one layer, in order. `inplace` says the output may share bytes with a
    same-sized input: every element of such an input is read before the output element at the
    same index is written (element-wise ops, softmax), so plan-memory may reuse a dying input.

    Example: loop.kernel @conv1 { loop.for %oy = 0 to 26 step 1 { ... } }
    """

    name = "loop.kernel"
    num_results = 0
    has_symbol = True
    body = region()
    inplace = attr(Bool, default=False)


@DIALECT.op
class For(LoopOp):
    """for iv = lb; iv < ub; iv += step: the body runs once per value of the induction variable.

    Example: loop.for %i = 0 to 16 step 4 { ... }
    """

    name = "loop.for"
    num_results = 0
    range_form = True
    body = region()
    lb = attr(Int)
    ub = attr(Int)
    step = attr(Int)

    def verify_(self) -> None:
        if self.step < 1:
            raise self.error(f"step must be at least 1, got {self.step}")
        if self.ub < self.lb:
            raise self.error(f"upper bound {self.ub} is below the lower bound {self.lb}")
        block = self.body.block
        if len(block.args) != 1 or block.args[0].type != IndexType():
            raise self.error("body must have one index argument (the induction variable)")

    @property
    def iv(self) -> Value:
        return self.body.block.args[0]

    @property
    def trip_count(self) -> int:
        return max(0, -(-(self.ub - self.lb) // self.step))

    @property
    def last(self) -> int:
        """The last value of the induction variable (lb when the loop never runs)."""
        return self.lb + max(self.trip_count - 1, 0) * self.step


def iv_range(v: Value) -> tuple[int, int] | None:
    """(first, last) value of an induction variable, or None for a loop that never runs."""
    owner = v.owner
    loop = owner.parent.parent if not isinstance(owner, Operation) and owner.parent else None
    if not isinstance(loop, For):
        return (0, 0)
    if loop.trip_count == 0:
        return None
    return loop.lb, loop.last


# ----------------------------------------------------------------------------- memory


class _Access(LoopOp):
    """Shared by load and store: element index = offset + sum(strides[k] * ivs[k])."""

    buf_index: ClassVar[int] = 0

    @property
    def ivs(self) -> list[Value]:
        return self.operands[self.buf_index + 1:]

    @property
    def buffer(self) -> Value:
        return self.operands[self.buf_index]

    def verify_access(self) -> None:
        self.expect(self.buffer, BufType, "the buffer operand")
        for v in self.ivs:
            self.expect(v, IndexType, "an index operand")
        strides = self.get_attr("strides")
        if len(strides) != len(self.ivs):
            raise self.error(f"has {len(self.ivs)} index operand(s) but {len(strides)} stride(s)")
        lo = hi = self.get_attr("offset")
        for v, s in zip(self.ivs, strides):
            r = iv_range(v)
            if r is None:
                return  # in a loop that never runs
            lo += min(s * r[0], s * r[1])
            hi += max(s * r[0], s * r[1])
        size = self.buffer.type.size
        if lo < 0 or hi >= size:
            raise self.error(f"element index ranges over [{lo}, {hi}], outside the buffer "
                             f"{self.buffer.type} ({size} elements)")


@DIALECT.op
class Load(_Access):
    """Reads buf[offset + sum(strides * ivs)]; f16 widens to f32, integers sign-extend to i32.

    Example: %v = loop.load %x, %oy, %ox {offset = -1, strides = [28, 1]} : f32
    """

    name = "loop.load"
    buf = operand()
    indices = var_operand()
    offset = attr(Int, default=0)
    strides = attr(Ints(), default=())

    def verify_(self) -> None:
        self.verify_access()
        want = value_type(self.buffer.type.elem)
        if self.result.type != want:
            raise self.error(f"loading {self.buffer.type.elem} gives {want}, not {self.result.type}")


@DIALECT.op
class Store(_Access):
    """Writes a value to buf[offset + sum(strides * ivs)], narrowing to the buffer's element type.

    Example: loop.store %v, %y, %oc {offset = 8, strides = [1]}
    """

    name = "loop.store"
    num_results = 0
    buf_index = 1
    value = operand()
    buf = operand()
    indices = var_operand()
    offset = attr(Int, default=0)
    strides = attr(Ints(), default=())

    def verify_(self) -> None:
        self.verify_access()
        self.expect(self.value, value_type(self.buffer.type.elem), "the stored value")


# ----------------------------------------------------------------------------- scalars


@DIALECT.op
class Const(LoopOp):
    """A scalar constant. Example: %zero = loop.const {value = 0.0} : f32"""

    name = "loop.const"
    value = attr(Float)

    def verify_(self) -> None:
        if self.result.type not in (f32, i32):
            raise self.error(f"constants are f32 or i32, got {self.result.type}")
        if self.result.type == i32 and float(self.value) != int(self.value):
            raise self.error(f"i32 constant {self.value} is not an integer")


class _Pure(LoopOp):
    """A side-effect-free scalar op; `fn` is its NumPy meaning, `elem` its operand/result type."""

    elem: ClassVar[Type] = f32
    fn: ClassVar[Callable[..., Any]]

    def verify_(self) -> None:
        for v in self.operands:
            self.expect(v, self.elem, "an operand")
        if self.result.type != self.elem:
            raise self.error(f"result must be {self.elem}, got {self.result.type}")


def _f(name: str, doc: str, fn: Callable[..., Any], arity: int, elem: Type = f32) -> type[_Pure]:
    """Declare a pure op class (one of the many scalar ops that differ only in arity and meaning)."""
    fields: dict[str, Any] = {"name": name, "__doc__": doc, "fn": staticmethod(fn), "elem": elem}
    for k in "abc"[:arity]:
        fields[k] = operand()
    cls = type(name.split(".")[1].title().replace("_", ""), (_Pure,), fields)
    cls.__module__ = __name__
    return DIALECT.op(cls)


def _wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap to 32 bits (integers are kept in int64 by the interpreter)."""
    return ((np.asarray(x, dtype=np.int64) + (1 << 31)) % (1 << 32)) - (1 << 31)


AddF = _f("loop.addf", "a + b (f32). Example: %s = loop.addf %a, %b : f32", np.add, 2)
SubF = _f("loop.subf", "a - b (f32). Example: %d = loop.subf %a, %b : f32", np.subtract, 2)
MulF = _f("loop.mulf", "a * b (f32). Example: %p = loop.mulf %a, %b : f32", np.multiply, 2)
DivF = _f("loop.divf", "a / b (f32). Example: %q = loop.divf %a, %b : f32", np.divide, 2)
MaxF = _f("loop.maxf", "max(a, b) (f32). Example: %m = loop.maxf %a, %b : f32", np.maximum, 2)
MinF = _f("loop.minf", "min(a, b) (f32). Example: %m = loop.minf %a, %b : f32", np.minimum, 2)
NegF = _f("loop.negf", "-a (f32). Example: %n = loop.negf %a : f32", np.negative, 1)
FmaF = _f("loop.fma", "a * b + c (f32, VFMA). Example: %r = loop.fma %a, %b, %c : f32",
          lambda a, b, c: a * b + c, 3)
ExpF = _f("loop.exp", "e ** a (f32; the code generator expands it into a polynomial). "
          "Example: %e = loop.exp %a : f32", np.exp, 1)
AddI = _f("loop.addi", "a + b (i32, wrapping). Example: %s = loop.addi %a, %b : i32",
          lambda a, b: _wrap32(a + b), 2, i32)
SubI = _f("loop.subi", "a - b (i32, wrapping). Example: %d = loop.subi %a, %b : i32",
          lambda a, b: _wrap32(a - b), 2, i32)
MulI = _f("loop.muli", "a * b (i32, low 32 bits). Example: %p = loop.muli %a, %b : i32",
          lambda a, b: _wrap32(a * b), 2, i32)
MaxI = _f("loop.maxi", "max(a, b) (i32). Example: %m = loop.maxi %a, %b : i32", np.maximum, 2, i32)
MinI = _f("loop.mini", "min(a, b) (i32). Example: %m = loop.mini %a, %b : i32", np.minimum, 2, i32)
ShrI = _f("loop.shrsi", "a >> b, arithmetic (i32). Example: %s = loop.shrsi %a, %b : i32",
          lambda a, b: a >> b, 2, i32)
ShlI = _f("loop.shli", "a << b (i32, wrapping). Example: %s = loop.shli %a, %b : i32",
          lambda a, b: _wrap32(a << b), 2, i32)


def _sxtb16(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.int64) & 0xFFFFFFFF
    lo = ((a & 0xFF) ^ 0x80) - 0x80
    hi = (((a >> 16) & 0xFF) ^ 0x80) - 0x80
    return _wrap32((lo & 0xFFFF) | (hi << 16))


Sxtb16 = _f("loop.sxtb16", "Sign-extends bytes 0 and 2 of a into two packed i16 halves (SXTB16). "
            "Example: %p = loop.sxtb16 %w : i32", _sxtb16, 1, i32)
Pack16 = _f("loop.pack16", "Packs the low halves of a (bits 0-15) and b (bits 16-31) (PKHBT). "
            "Example: %p = loop.pack16 %a, %b : i32",
            lambda a, b: _wrap32((np.asarray(a, np.int64) & 0xFFFF) | (np.asarray(b, np.int64) << 16)),
            2, i32)


@DIALECT.op
class SIToFP(LoopOp):
    """Converts i32 to f32. Example: %f = loop.sitofp %i : f32"""

    name = "loop.sitofp"
    a = operand()

    def verify_(self) -> None:
        self.expect(self.a, i32, "the operand")
        self.expect(self.result, f32, "the result")


@DIALECT.op
class CmpF(LoopOp):
    """Compares two f32 values: 1 when `a pred b` holds, else 0 (i32).

    Example: %c = loop.cmpf %x, %zero {pred = "ge"} : i32
    """

    name = "loop.cmpf"
    a = operand()
    b = operand()
    pred = attr(Enum("lt", "le", "gt", "ge", "eq", "ne"))

    PREDICATES: ClassVar[dict[str, Callable[..., Any]]] = {
        "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
        "eq": np.equal, "ne": np.not_equal}

    def verify_(self) -> None:
        self.expect(self.a, f32, "an operand")
        self.expect(self.b, f32, "an operand")
        self.expect(self.result, i32, "the result")


@DIALECT.op
class Select(LoopOp):
    """c != 0 ? a : b (f32 or i32; VSEL/IT blocks). Example: %r = loop.select %c, %x, %y : f32"""

    name = "loop.select"
    c = operand()
    a = operand()
    b = operand()

    def verify_(self) -> None:
        self.expect(self.c, i32, "the condition")
        if self.a.type != self.b.type or self.a.type != self.result.type:
            raise self.error(f"operands and result must have one type, got {self.a.type}, "
                             f"{self.b.type} -> {self.result.type}")


# ----------------------------------------------------------------------------- accumulators


@DIALECT.op
class Acc(LoopOp):
    """A register accumulator initialised to `init`, updated in the loops nested below it.

    Example: %acc = loop.acc %bias : !loop.acc<f32>
    """

    name = "loop.acc"
    init = operand()

    def verify_(self) -> None:
        self.expect(self.result, AccType, "the result")
        self.expect(self.init, self.result.type.elem, "the initial value")


class _AccUpdate(LoopOp):
    """acc = combine(acc, values...); must be nested in (or beside) the acc's block."""

    num_results = 0
    elem: ClassVar[Type] = f32

    def verify_(self) -> None:
        acc = self.operands[0]
        self.expect(acc, AccType, "the accumulator")
        if acc.type.elem != self.elem:
            raise self.error(f"needs a !loop.acc<{self.elem}>, got {acc.type}")
        for v in self.operands[1:]:
            self.expect(v, self.elem, "an operand")
        if not _nested_in(self, acc):
            raise self.error("must be in the block that defines the accumulator or nested in it")


def _nested_in(op: Operation, v: Value) -> bool:
    home = v.op.parent if v.op is not None else None
    block = op.parent
    while block is not None:
        if block is home:
            return True
        parent = block.parent.parent if block.parent is not None else None
        block = parent.parent if parent is not None else None
    return False


@DIALECT.op
class AccAdd(_AccUpdate):
    """acc += a. Example: loop.acc_add %acc, %x"""

    name = "loop.acc_add"
    acc = operand()
    a = operand()


@DIALECT.op
class AccMax(_AccUpdate):
    """acc = max(acc, a). Example: loop.acc_max %acc, %x"""

    name = "loop.acc_max"
    acc = operand()
    a = operand()


@DIALECT.op
class AccFma(_AccUpdate):
    """acc += a * b (VMLA/VFMA, or VMUL + VADD). Example: loop.acc_fma %acc, %x, %w"""

    name = "loop.acc_fma"
    acc = operand()
    a = operand()
    b = operand()


@DIALECT.op
class AccSmlad(_AccUpdate):
    """acc += lo16(a) * lo16(b) + hi16(a) * hi16(b): two signed 16-bit MACs (SMLAD), i32.

    Example: loop.acc_smlad %acc, %x2, %w2
    """

    name = "loop.acc_smlad"
    elem = i32
    acc = operand()
    a = operand()
    b = operand()


@DIALECT.op
class AccRead(LoopOp):
    """The accumulator's value, read in the block that defined it (after its reduction loops).

    Example: %s = loop.acc_read %acc : f32
    """

    name = "loop.acc_read"
    acc = operand()

    def verify_(self) -> None:
        self.expect(self.acc, AccType, "the operand")
        self.expect(self.result, self.acc.type.elem, "the result")
        if self.acc.op is None or self.acc.op.parent is not self.parent:
            raise self.error("must be in the block that defines the accumulator")

