"""TF.js layers models (model.json + binary weight shards) and Microsoft ML4F's flat JSON models.

    module = load("model.json")

A TF.js layers model is `{"modelTopology": <Keras model config>, "weightsManifest": [{"paths":
[shard files], "weights": [{"name", "shape", "dtype", "quantization"?}, ...]}, ...]}`: each group's
shards, concatenated, hold its weights one after the other (float32 or int32 little-endian, or
quantized to uint8/uint16 as q * scale + min, or float16). Microsoft ML4F's MakeCode models are
`{"modelJSON": {"modelTopology", "weightSpecs"} (or that as a string), "weights": [u32 words]}`: the
same specs over one buffer given as little-endian 32-bit words.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module

from .keras_layers import WeightList, convert_keras_model

Progress = Callable[[str, int, int], None]

_DTYPES = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "bool": np.dtype("u1"),
           "uint8": np.dtype("u1"), "uint16": np.dtype("<u2"), "float16": np.dtype("<f2")}


def load(path: str, progress: Progress | None = None) -> Module:
    """The layer-dialect module of a TF.js model.json or an ML4F flat JSON model."""
    doc = read_json(path)
    if "modelJSON" in doc:
        return load_ml4f(doc, path, progress)
    if "modelTopology" in doc:
        return load_tfjs(doc, path, progress)
    raise CompileError("not a TF.js or ML4F model: the JSON has neither 'modelTopology' nor 'modelJSON'",
                       Loc(path))


def read_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CompileError("not a JSON file (binary content)", Loc(path)) from None
    except json.JSONDecodeError as e:
        raise CompileError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg} "
                           "(truncated or corrupt file?)", Loc(path)) from None
    if not isinstance(doc, dict):
        raise CompileError("not a model: the JSON top level is not an object", Loc(path))
    return doc


def load_tfjs(doc: dict, path: str, progress: Progress | None = None) -> Module:
    """A TF.js layers model (`tfjs.LayersModel.save()` or tensorflowjs_converter's keras output)."""
    fmt = doc.get("format")
    if fmt not in (None, "layers-model"):
        raise CompileError(f"TF.js '{fmt}' files are not supported (only layers models: convert the "
                           "Keras model, not a SavedModel graph)", Loc(path))
    manifest = doc.get("weightsManifest")
    if not isinstance(manifest, list):
        raise CompileError("TF.js model has no weightsManifest list", Loc(path))
    base = os.path.dirname(path)
    named: list[tuple[str, np.ndarray]] = []
    for gi, group in enumerate(manifest):
        if not isinstance(group, dict) or not isinstance(group.get("paths"), list):
            raise CompileError(f"weightsManifest entry {gi} has no 'paths' list", Loc(path))
        chunks = []
        for p in group["paths"]:
            shard = os.path.join(base, p)
            try:
                with open(shard, "rb") as f:
                    chunks.append(f.read())
            except OSError as e:
                raise CompileError(f"cannot read weight shard '{p}': {e.strerror}", Loc(path)) from None
        named += decode_weights(group.get("weights") or [], b"".join(chunks), path)
        if progress is not None:
            progress("reading weights", gi + 1, len(manifest))
    return convert_keras_model(doc["modelTopology"], _lookup(named), path, _model_name(path), progress)


def load_ml4f(doc: dict, path: str, progress: Progress | None = None) -> Module:
    """Microsoft ML4F's flat JSON: modelJSON (topology + weightSpecs) and weights as u32 words."""
    spec = doc["modelJSON"]
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise CompileError(f"modelJSON is not valid JSON ({e.msg})", Loc(path)) from None
    if not isinstance(spec, dict) or "modelTopology" not in spec:
        raise CompileError("ML4F model: modelJSON has no modelTopology", Loc(path))
    words = doc.get("weights")
    if not isinstance(words, list) or not all(isinstance(w, int) and 0 <= w < 1 << 32 for w in words):
        raise CompileError("ML4F model: 'weights' must be a list of unsigned 32-bit words", Loc(path))
    data = np.asarray(words, dtype="<u4").tobytes()
    named = decode_weights(spec.get("weightSpecs") or [], data, path)
    return convert_keras_model(spec["modelTopology"], _lookup(named), path, _model_name(path), progress)


def decode_weights(specs: list, data: bytes, path: str) -> list[tuple[str, np.ndarray]]:
    """The weights that `specs` lay out one after the other in `data`, as float32 arrays."""
    out: list[tuple[str, np.ndarray]] = []
    offset = 0
    for s in specs:
        try:
            name, shape = str(s["name"]), [int(d) for d in s["shape"]]
            dtype = s.get("dtype", "float32")
        except (KeyError, TypeError, ValueError):
            raise CompileError(f"weight spec {s!r} lacks a name, shape or dtype", Loc(path)) from None
        quant = s.get("quantization")
        stored = (quant or {}).get("dtype", dtype)
        if stored not in _DTYPES or dtype not in ("float32", "int32"):
            raise CompileError(f"weight '{name}': dtype {dtype} stored as {stored} is not supported",
                               Loc(path))
        dt = _DTYPES[stored]
        count = int(np.prod(shape)) if shape else 1
        end = offset + count * dt.itemsize
        if end > len(data):
            raise CompileError(f"weight data is truncated: '{name}' needs bytes {offset}..{end}, the "
                               f"weights have {len(data)}", Loc(path))
        arr = np.frombuffer(data, dtype=dt, count=count, offset=offset).astype(np.float32)
        if quant is not None and stored in ("uint8", "uint16"):
            if "scale" not in quant:
                raise CompileError(f"weight '{name}': quantization without a scale", Loc(path))
            if "min" in quant:
                arr = arr * np.float32(quant["scale"]) + np.float32(quant["min"])
            else:
                arr = (arr - np.float32(quant.get("zeroPoint", 0))) * np.float32(quant["scale"])
        out.append((name, arr.reshape(shape)))
        offset = end
    if offset != len(data):
        raise CompileError(f"weight data has {len(data)} bytes but the specs describe {offset}", Loc(path))
    return out


def _lookup(named: list[tuple[str, np.ndarray]]) -> Callable[[tuple[str, ...]], WeightList]:
    """Weights of a layer by its path: `<layer>/<weight>` at the top, `.../<layer>/<weight>` nested."""
    def lookup(layer_path: tuple[str, ...]) -> WeightList:
        if len(layer_path) == 1:
            prefix = layer_path[0] + "/"
            return [(n.rsplit("/", 1)[-1], a) for n, a in named if n.startswith(prefix)]
        return [(n.rsplit("/", 1)[-1], a) for n, a in named if n.split("/")[-2:-1] == [layer_path[-1]]]
    return lookup


def _model_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".json", ".tfjsmodel", ".model"):
        base = base.removesuffix(suffix)
    return base or "model"
