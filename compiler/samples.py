"""Model inputs: reading a sample from .npy/.json, shaping it like the model input, random samples."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .diagnostics import CompileError, Loc, read_text
from .types import QuantType, numpy_dtype


def load_input(path: str) -> Any:
    """An input sample from .npy or .json (a nested list, or {"x": ...})."""
    try:
        if path.endswith(".npy"):
            return np.load(path, allow_pickle=False)
        data = json.loads(read_text(path))
    except (ValueError, json.JSONDecodeError) as e:
        raise CompileError(f"cannot read input: {e}", Loc(path)) from None
    if isinstance(data, dict):
        if "x" not in data:
            raise CompileError("JSON input must be a list of numbers or {\"x\": [...]}", Loc(path))
        data = data["x"]
    try:
        arr = np.asarray(data)
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ValueError
        return arr
    except (ValueError, TypeError):
        raise CompileError("JSON input must be a (nested) list of numbers", Loc(path)) from None


def prepare_input(x: Any, shape: tuple[int, ...], elem: Any, where: str) -> Any:
    """Shape `x` like one sample (batch 1) of `shape`; float values for an int8 input are quantized."""
    x = np.asarray(x)
    if x.size != int(np.prod(shape)):
        raise CompileError(f"input has shape {list(x.shape)} ({x.size} values); the model takes "
                           f"{list(shape[1:])} ({int(np.prod(shape))} values)", Loc(where))
    x = x.reshape(shape)
    if isinstance(elem, QuantType) and np.issubdtype(x.dtype, np.floating):
        q = np.round(x / elem.scale) + elem.zero_point
        return np.clip(q, -128, 127).astype(np.int8)
    return x.astype(numpy_dtype(elem))


def random_input(shape: tuple[int, ...], elem: Any, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    if isinstance(elem, QuantType):
        return rng.integers(-128, 128, size=shape).astype(np.int8)
    return rng.uniform(-1, 1, size=shape).astype(np.float32)

