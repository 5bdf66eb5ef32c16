"""IR types: scalars, quantized i8, tensors; a text form for each and a parser that dialects extend.

    f32 f16 i8 i16 i32 index
    tensor<1x28x28x1xf32>
    tensor<1x10x!quant.uniform<i8:f32, 0.00390625:-128>>          per-tensor
    tensor<8x3x3x1x!quant.uniform<i8:f32:0, {0.01:0,0.02:0}>>     per-channel along axis 0
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


class Type:
    """Base of all IR types; subclasses are frozen dataclasses printed by `str()`."""


@dataclass(frozen=True)
class FloatType(Type):
    bits: int

    def __str__(self) -> str:
        return f"f{self.bits}"


@dataclass(frozen=True)
class IntType(Type):
    bits: int

    def __str__(self) -> str:
        return f"i{self.bits}"


@dataclass(frozen=True)
class IndexType(Type):
    def __str__(self) -> str:
        return "index"


@dataclass(frozen=True)
class QuantType(Type):
    """TFLite affine quantization: real = scale * (q - zero_point); `axis` set for per-channel."""

    storage: IntType
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None = None

    def __str__(self) -> str:
        if self.axis is None:
            return f"!quant.uniform<{self.storage}:f32, {_fmt_float(self.scales[0])}:{self.zero_points[0]}>"
        pairs = ",".join(f"{_fmt_float(s)}:{z}" for s, z in zip(self.scales, self.zero_points))
        return f"!quant.uniform<{self.storage}:f32:{self.axis}, {{{pairs}}}>"

    @property
    def scale(self) -> float:
        return self.scales[0]

    @property
    def zero_point(self) -> int:
        return self.zero_points[0]


@dataclass(frozen=True)
class TensorType(Type):
    shape: tuple[int, ...]
    elem: Type

    def __str__(self) -> str:
        return "tensor<" + "".join(f"{d}x" for d in self.shape) + f"{self.elem}>"

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def quant(self) -> QuantType | None:
        return self.elem if isinstance(self.elem, QuantType) else None

    def with_shape(self, shape: tuple[int, ...]) -> TensorType:
        return TensorType(tuple(shape), self.elem)


f32 = FloatType(32)
f16 = FloatType(16)
i8 = IntType(8)
i16 = IntType(16)
i32 = IntType(32)
index = IndexType()

_SCALARS: dict[str, Type] = {"f32": f32, "f16": f16, "i8": i8, "i16": i16, "i32": i32, "i64": IntType(64),
                             "index": index}


def _fmt_float(x: float) -> str:
    """Shortest text that parses back to the same double (so f32 values round-trip exactly)."""
    return repr(float(x))


def numpy_dtype(t: Type) -> np.dtype:
    """The NumPy storage dtype of an element type (quantized types store their integer type)."""
    if isinstance(t, QuantType):
        t = t.storage
    if isinstance(t, FloatType):
        return np.dtype({32: np.float32, 16: np.float16}[t.bits])
    if isinstance(t, IntType):
        return np.dtype({8: np.int8, 16: np.int16, 32: np.int32, 64: np.int64}[t.bits])
    raise TypeError(f"type {t} has no NumPy storage")


class TypeSyntaxError(ValueError):
    """Raised by `parse_type`; the parser turns it into a located CompileError."""


# Dialects register parsers for their own `!dialect.name<...>` types here: prefix -> fn(body or None).
DIALECT_TYPE_PARSERS: dict[str, Callable[[str | None], Type]] = {}

_QUANT_RE = re.compile(
    r"!quant\.uniform<\s*(i8|i16|i32)\s*:\s*f32\s*(?::\s*(\d+)\s*)?,\s*(.*)>$", re.DOTALL)
_PAIR_RE = re.compile(r"\s*([-+0-9.eEinfa]+)\s*:\s*(-?\d+)\s*")


def parse_type(text: str) -> Type:
    """Parse a type's text form; raises TypeSyntaxError with a readable reason."""
    text = text.strip()
    if text in _SCALARS:
        return _SCALARS[text]
    if text.startswith("tensor<") and text.endswith(">"):
        body = text[len("tensor<"):-1]
        dims: list[int] = []
        while True:
            m = re.match(r"(\d+)x", body)
            if not m:
                break
            dims.append(int(m.group(1)))
            if dims[-1] >= 2**31:
                # Sizes are computed in int64 (NumPy); no tensor on a microcontroller comes close.
                raise TypeSyntaxError(f"dimension {dims[-1]} in '{text}' is too large")
            body = body[m.end():]
        if not body:
            raise TypeSyntaxError(f"tensor type '{text}' has no element type")
        elem = parse_type(body)
        if isinstance(elem, TensorType):
            raise TypeSyntaxError(f"tensor of tensors in '{text}'")
        return TensorType(tuple(dims), elem)
    if text.startswith("!quant."):
        return _parse_quant(text)
    if text.startswith("!"):
        m = re.match(r"!([\w.]+)(?:<(.*)>)?$", text, re.DOTALL)
        if m and m.group(1) not in DIALECT_TYPE_PARSERS:
            _load_dialect_of(m.group(1))
        if m and m.group(1) in DIALECT_TYPE_PARSERS:
            return DIALECT_TYPE_PARSERS[m.group(1)](m.group(2))
    raise TypeSyntaxError(f"unknown type '{text}'")


def _load_dialect_of(type_name: str) -> None:
    """Dialects register their types on import; a type may be parsed before any of its ops is seen."""
    import importlib

    from .context import DIALECT_MODULES

    module = DIALECT_MODULES.get(type_name.split(".", 1)[0])
    if module is not None:
        importlib.import_module(module)


def _parse_quant(text: str) -> QuantType:
    m = _QUANT_RE.match(text)
    if not m:
        raise TypeSyntaxError(f"malformed quantized type '{text}' "
                              "(expected !quant.uniform<i8:f32, SCALE:ZERO_POINT>)")
    storage = _SCALARS[m.group(1)]
    assert isinstance(storage, IntType)
    axis = int(m.group(2)) if m.group(2) is not None else None
    params = m.group(3).strip()
    if axis is not None:
        if not (params.startswith("{") and params.endswith("}")):
            raise TypeSyntaxError(f"per-axis quantized type '{text}' needs {{scale:zp,...}}")
        items = [p for p in params[1:-1].split(",")]
    else:
        items = [params]
    scales, zps = [], []
    for item in items:
        pm = _PAIR_RE.fullmatch(item)
        if not pm:
            raise TypeSyntaxError(f"malformed scale:zero_point '{item.strip()}' in '{text}'")
        try:
            scales.append(float(pm.group(1)))
        except ValueError:
            raise TypeSyntaxError(f"malformed scale '{pm.group(1)}' in '{text}'") from None
        zps.append(int(pm.group(2)))
    return QuantType(storage, tuple(scales), tuple(zps), axis)
