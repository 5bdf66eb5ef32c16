"""Keras models: legacy HDF5 (.h5) and Keras 3 (.keras zip), read with h5py + json, without TensorFlow.

    module = load("mnist.h5")        # or "model.keras"; the content decides, not the extension

A legacy .h5 file holds the model config as JSON in the `model_config` attribute and the weights in
`model_weights/<layer>/`, listed in order by each group's `weight_names` attribute (a nested model's
group lists the weights of all its layers as `<model>/<layer>/<weight>`). A .keras file is a zip of
`config.json` and `model.weights.h5`, whose groups `layers/<generated name>/vars/<i>` hold each
layer's weights in Keras order, with the user's layer name in the `vars` group's `name` attribute.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module

from .keras_layers import WeightList, convert_keras_model

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
Progress = Callable[[str, int, int], None]


def load(path: str, progress: Progress | None = None) -> Module:
    """The layer-dialect module of a Keras .h5 or .keras file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return load_keras_zip(path, progress)
    if head == HDF5_MAGIC:
        return load_h5(path, progress)
    raise CompileError("not a Keras model: neither an HDF5 (.h5) nor a zip (.keras) file", Loc(path))


def _model_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] or "model"


def _text(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _short(weight_name: str) -> str:
    return weight_name.rsplit("/", 1)[-1].split(":", 1)[0]


def load_h5(path: str, progress: Progress | None = None) -> Module:
    """A legacy Keras HDF5 file (tf.keras 2.x `model.save("m.h5")`, or Keras 3's legacy .h5 saver)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CompileError(f"cannot open the HDF5 file ({_h5_reason(e)})", Loc(path)) from None
    try:
        with f:
            if "model_config" not in f.attrs:
                what = "a weights-only file (save_weights)" if "layer_names" in f.attrs or "layers" in f \
                    else "not a Keras model"
                raise CompileError(f"{what}: the file has no model_config; save the whole model "
                                   "with model.save()", Loc(path))
            config = json.loads(_text(f.attrs["model_config"]))
            root = f["model_weights"] if "model_weights" in f else f
            weights = _read_h5_weights(root, progress)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CompileError(f"corrupt Keras HDF5 file ({_h5_reason(e)})", Loc(path)) from None

    def lookup(layer_path: tuple[str, ...]) -> WeightList:
        entries = weights.get(layer_path[0], [])
        if len(layer_path) == 1:
            return [(_short(n), a) for n, a in entries]
        # A nested model's group lists `<model>/<layer>/<weight>` for all its layers.
        return [(_short(n), a) for n, a in entries if n.split("/")[-2:-1] == [layer_path[-1]]]

    return convert_keras_model(config, lookup, path, _model_name(path), progress)


def _h5_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text.replace("Unable to synchronously open file", "unable to open").strip()


def _read_h5_weights(root: Any, progress: Progress | None) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Every layer group's weights in `weight_names` order: {group name: [(weight name, array)]}."""
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    names = [_text(n) for n in root.attrs.get("layer_names", [])] or list(root.keys())
    for i, layer in enumerate(names):
        if layer not in root:
            continue
        g = root[layer]
        wnames = [_text(n) for n in g.attrs.get("weight_names", [])]
        out[layer] = [(n, np.asarray(g[n][()])) for n in wnames]
        if progress is not None:
            progress("reading weights", i + 1, len(names))
    return out


def load_keras_zip(path: str, progress: Progress | None = None) -> Module:
    """A Keras 3 `.keras` file: config.json plus model.weights.h5 in a zip archive."""
    import h5py

    try:
        with zipfile.ZipFile(path) as z:
            members = set(z.namelist())
            if "config.json" not in members:
                raise CompileError("not a .keras model: the zip has no config.json", Loc(path))
            config = json.loads(z.read("config.json").decode("utf-8"))
            if "model.weights.h5" not in members:
                raise CompileError("the .keras file has no model.weights.h5 (only HDF5 weights are "
                                   "supported)", Loc(path))
            blob = z.read("model.weights.h5")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, UnicodeDecodeError,
            json.JSONDecodeError) as e:
        raise CompileError(f"corrupt .keras file ({e})", Loc(path)) from None
    try:
        with h5py.File(io.BytesIO(blob), "r") as f:
            tree = _read_keras3_tree(f, progress)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CompileError(f"corrupt model.weights.h5 in the .keras file ({_h5_reason(e)})",
                           Loc(path)) from None

    def lookup(layer_path: tuple[str, ...]) -> WeightList:
        node = tree
        for name in layer_path:
            children = node["layers"]
            if name not in children:
                return []
            node = children[name]
        return [(None, a) for a in node["vars"]]

    return convert_keras_model(config, lookup, path, _model_name(path), progress)


def _read_keras3_tree(group: Any, progress: Progress | None) -> dict:
    """{"vars": [arrays in order], "layers": {user layer name: subtree}} of a Keras 3 weights file."""
    node: dict = {"vars": [], "layers": {}}
    if "vars" in group:
        v = group["vars"]
        node["vars"] = [np.asarray(v[str(i)][()]) for i in range(len(v))]
    if "layers" in group:
        subs = group["layers"]
        for i, key in enumerate(subs):
            sub = subs[key]
            name = _text(sub["vars"].attrs.get("name", key)) if "vars" in sub else key
            if name in node["layers"]:
                raise ValueError(f"two layers named '{name}' in one model")
            node["layers"][name] = _read_keras3_tree(sub, None)
            if progress is not None:
                progress("reading weights", i + 1, len(subs))
    return node
