"""SavedModel / frozen GraphDef importer: TensorFlow converts it to a float TFLite flatbuffer in
memory (batch fixed to 1), which the TFLite importer then reads.

TensorFlow is imported here only, and lazily: compiling every other format never needs it.

    module = load("kws_ref_model_savedmodel/")     # a SavedModel directory
    module = load("kws_ref_model_savedmodel/saved_model.pb")
    module = load("frozen_graph.pb")              # GraphDef: Placeholders in, unconsumed nodes out

The SavedModel is read through its `serving_default` signature with the graph-mode loader, which
also accepts Keras 2 SavedModels whose optimizer state the eager loader of TF 2.21 rejects.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module

from . import tflite

Progress = Callable[[str, int, int], None]


def load(path: str, progress: Progress | None = None) -> Module:
    """Import a SavedModel directory (or its saved_model.pb) or a frozen GraphDef `.pb`."""
    if progress is not None:
        progress("converting with TensorFlow", 0, 0)
    flat = convert_to_tflite(path)
    return tflite.load_bytes(flat, path, progress, name=_model_name(path))


def _model_name(path: str) -> str:
    p = path.rstrip("/")
    if os.path.basename(p) in ("saved_model.pb", "saved_model.pbtxt"):
        p = os.path.dirname(p)
    stem = os.path.basename(p).rsplit(".", 1)[0] or "model"
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


def convert_to_tflite(path: str) -> bytes:
    """The float32 TFLite flatbuffer of a SavedModel or frozen graph, with every input at batch 1."""
    loc = Loc(path)
    if not os.path.exists(path):
        raise CompileError("no such file or directory", loc)
    directory = None
    if os.path.isdir(path):
        directory = path
    elif os.path.basename(path) in ("saved_model.pb", "saved_model.pbtxt"):
        directory = os.path.dirname(path) or "."
    if directory is not None and not any(os.path.exists(os.path.join(directory, f))
                                         for f in ("saved_model.pb", "saved_model.pbtxt")):
        raise CompileError("not a SavedModel directory (no saved_model.pb)", loc)
    with _quiet_native_logs():
        tf = _tensorflow(loc)
        try:
            if directory is not None:
                converter = _saved_model_converter(tf, directory, loc)
            else:
                converter = _frozen_graph_converter(tf, path, loc)
            return bytes(converter.convert())
        except CompileError:
            raise
        except Exception as e:  # noqa: BLE001 - TF raises many types; each becomes one located line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CompileError(f"TensorFlow could not convert the model to TFLite: {first}", loc) from None


def _tensorflow(loc: Loc) -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError:
        raise CompileError("importing a SavedModel or .pb needs TensorFlow (pip install tensorflow-cpu); "
                           "or convert it to .tflite first", loc) from None
    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def _quiet_native_logs() -> Iterator[None]:
    """TensorFlow's C++ side writes progress chatter to fd 2; keep it out of the user's terminal."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _batch1(dims: list[int], name: str, loc: Loc) -> list[int]:
    if not dims:
        raise CompileError(f"input '{name}' has unknown rank; only static shapes are supported", loc)
    if any(d is None or d < 0 for d in dims[1:]):
        raise CompileError(f"input '{name}' has a dynamic shape {dims}; only the batch dimension may be "
                           "unknown", loc)
    return [1, *dims[1:]]


def _saved_model_converter(tf: Any, directory: str, loc: Loc) -> Any:
    from tensorflow.python.tools import saved_model_utils

    try:
        meta = saved_model_utils.get_meta_graph_def(directory, "serve")
    except (RuntimeError, OSError, ValueError) as e:
        raise CompileError(f"cannot read the SavedModel's 'serve' graph ({e})", loc) from None
    sigs = meta.signature_def
    if "serving_default" not in sigs:
        raise CompileError(f"the SavedModel has no 'serving_default' signature (it has: "
                           f"{', '.join(sigs) or 'none'})", loc)
    sig = sigs["serving_default"]
    shapes = {}
    for key, info in sig.inputs.items():
        if info.tensor_shape.unknown_rank:
            raise CompileError(f"input '{key}' has unknown rank; only static shapes are supported", loc)
        dims = [d.size for d in info.tensor_shape.dim]
        shapes[info.name.split(":")[0]] = _batch1(dims, key, loc)
    return tf.compat.v1.lite.TFLiteConverter.from_saved_model(
        directory, input_shapes=shapes, signature_key="serving_default")


def _frozen_graph_converter(tf: Any, path: str, loc: Loc) -> Any:
    from google.protobuf.message import DecodeError

    graph = tf.compat.v1.GraphDef()
    try:
        with open(path, "rb") as f:
            graph.ParseFromString(f.read())
    except DecodeError:
        raise CompileError("not a TensorFlow GraphDef or SavedModel (the protobuf does not parse)",
                           loc) from None
    if not graph.node:
        raise CompileError("not a TensorFlow GraphDef (no nodes)", loc)
    consumed = {i.split(":")[0].lstrip("^") for n in graph.node for i in n.input}
    inputs = [n for n in graph.node if n.op == "Placeholder"]
    outputs = [n.name for n in graph.node
               if n.name not in consumed and n.op not in ("Const", "NoOp", "Placeholder", "Assert")]
    if not inputs or not outputs:
        raise CompileError("cannot find the graph's inputs (Placeholder nodes) and outputs", loc)
    shapes = {}
    for n in inputs:
        shape = n.attr["shape"].shape
        if shape.unknown_rank:
            raise CompileError(f"input '{n.name}' has unknown rank; only static shapes are supported", loc)
        shapes[n.name] = _batch1([d.size for d in shape.dim], n.name, loc)
    return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
        path, input_arrays=[n.name for n in inputs], output_arrays=outputs, input_shapes=shapes)
