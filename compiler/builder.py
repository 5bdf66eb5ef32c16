"""Building layer-dialect models in code (importers and tests use this, never raw constructors).

    b = ModelBuilder("mnist", file="mnist.h5")
    x = b.input((1, 28, 28, 1))
    y = b.add(layer.Conv2D, x, name="conv1", kernel=b.weights("conv1.kernel", k), padding="same")
    b.output(y)
    module = b.finish()            # verified
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .diagnostics import Loc
from .ir import Block, Module, Operation, Region, Resource, Value, unique_name
from .passes import verify_module
from .types import IntType, QuantType, TensorType, Type, f16, f32, i8, i32, numpy_dtype


class ModelBuilder:
    """Appends layer ops to one model; each op gets an inferred result type and a location."""

    def __init__(self, name: str, file: str = "<memory>"):
        from ml4f.dialects import layer

        self.layer = layer
        self.file = file
        self.block = Block()
        self.model = layer.Model([], [], {}, regions=[Region([self.block])], loc=Loc(file), symbol=name)
        self.names: set[str] = set()

    def loc(self, layer_name: str | None) -> Loc:
        return Loc(self.file, layer=layer_name) if layer_name else Loc(self.file)

    def weights(self, name: str, data: np.ndarray, elem: Type | None = None) -> Resource:
        """A weight resource; `elem` defaults to f32 (f16/i8/i32 arrays keep their own type)."""
        data = np.asarray(data)
        if elem is None:
            elem = {np.dtype(np.float16): f16, np.dtype(np.int8): i8, np.dtype(np.int32): i32}.get(
                data.dtype, f32)
        t = TensorType(tuple(int(d) for d in data.shape), elem)
        return Resource(name, t, data.astype(numpy_dtype(elem)))

    def input(self, shape: Sequence[int], elem: Type = f32, name: str = "input") -> Value:
        op = self.layer.Input([], [TensorType(tuple(shape), elem)], loc=self.loc(name))
        op.results[0].name_hint = self._unique(name)
        self.block.append(op)
        return op.result

    def add(self, cls: type[Operation], *operands: Value, name: str | None = None,
            result_type: Type | None = None, out_elem: Type | None = None, **attributes: Any) -> Value:
        """Append `cls(operands, attributes)`; the result type is inferred unless given. For int8 ops,
        `out_elem` gives the output's quantized element type (the shape is still inferred)."""
        attributes = {k: v for k, v in attributes.items() if v is not None}
        op = cls(list(operands), [], attributes, loc=self.loc(name))
        if out_elem is not None and result_type is None:
            # Infer the shape with a provisional result of the wanted element type.
            op.results = [Value(TensorType((), out_elem), op, 0)]
            inferred = op.infer_type()
            result_type = TensorType(inferred.shape, out_elem)
        if result_type is None:
            op.results = []
            op.verify_declared(results=False)  # so that inference sees a well-formed op
            for v in op.operands:
                if not isinstance(v.type, TensorType):
                    raise op.error(f"operands must be tensors, got {v.type}")
            check = getattr(op, "check", None)
            if check is not None:
                check()
            result_type = op.infer_type()
        op.results = [Value(result_type, op, 0, self._unique(name) if name else None)]
        self.block.append(op)
        return op.result

    def output(self, *values: Value) -> None:
        self.block.append(self.layer.Output(list(values), [], loc=Loc(self.file)))

    def finish(self, verify: bool = True) -> Module:
        module = Module([self.model], file=self.file)
        if verify:
            verify_module(module)
        return module

    def _unique(self, name: str) -> str:
        return unique_name(name, self.names)


def quant(scale: float | Sequence[float], zero_point: int | Sequence[int] = 0,
          axis: int | None = None, bits: int = 8) -> QuantType:
    """A !quant.uniform element type: per-tensor, or per-channel along `axis`."""
    scales = tuple(float(s) for s in np.atleast_1d(scale))
    zps = tuple(int(z) for z in np.atleast_1d(zero_point))
    if len(zps) == 1 and len(scales) > 1:
        zps = zps * len(scales)
    return QuantType(IntType(bits), scales, zps, axis)
