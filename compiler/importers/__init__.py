"""Model importers: every supported format lands in the layer dialect.

    module = import_model("mnist.h5")      # -> verified Module with one layer.model

`import_model` picks the importer from the file's content (HDF5 or zip magic, JSON keys, the TFLite
"TFL3" identifier, an ONNX protobuf, a SavedModel directory, .l4f text) and checks it against the
extension, so a renamed or truncated file is refused with a one-line error naming it. Each importer
module exports `load(path, progress=None) -> Module` and is imported only when needed (TensorFlow, for
SavedModels, stays unloaded otherwise). `progress`, when given, is called as
`progress(description, completed, total)` (`total` 0 when unknown) while large files are read.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module

Progress = Callable[[str, int, int], None]

# Format -> (importer module under ml4f.compiler.importers, what users call it).
FORMATS: dict[str, tuple[str, str]] = {
    "keras": ("keras", "a Keras model (HDF5 .h5 or .keras zip)"),
    "tfjs": ("tfjs", "a TF.js or ML4F JSON model"),
    "tflite": ("tflite", "a TFLite flatbuffer"),
    "onnx": ("onnx_import", "an ONNX model"),
    "savedmodel": ("savedmodel", "a TensorFlow SavedModel"),
    "l4f": ("", "ml4f IR text"),
}
# Extension -> format it promises.
EXTENSIONS: dict[str, str] = {
    ".h5": "keras", ".hdf5": "keras", ".keras": "keras", ".json": "tfjs", ".tflite": "tflite",
    ".onnx": "onnx", ".pb": "savedmodel", ".l4f": "l4f",
}
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def import_model(path: str, progress: Progress | None = None) -> Module:
    """The verified layer-dialect module of the model in `path` (a file or a SavedModel directory)."""
    fmt = detect_format(path)
    if fmt == "l4f":
        return _load_l4f(path)
    module_name, what = FORMATS[fmt]
    try:
        importer = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{module_name}":
            raise
        raise CompileError(f"this build has no importer for {what}", Loc(path)) from None
    return importer.load(path, progress=progress)


def detect_format(path: str) -> str:
    """The format of `path` from its content, checked against its extension."""
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            return "savedmodel"
        raise CompileError("a directory, but not a SavedModel (no saved_model.pb)", Loc(path))
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except FileNotFoundError:
        raise CompileError("no such file", Loc(path)) from None
    except OSError as e:
        raise CompileError(f"cannot read: {e.strerror}", Loc(path)) from None
    ext = os.path.splitext(path)[1].lower()
    expected = EXTENSIONS.get(ext)
    if not head:
        raise CompileError("empty file", Loc(path))
    found = sniff(head, ext)
    if found is None:
        hint = FORMATS[expected][1] if expected else "a known model format"
        raise CompileError(f"not {hint}: unrecognized content (supported: .h5, .keras, TF.js/ML4F .json, "
                           ".tflite, .onnx, SavedModel directory, .l4f)", Loc(path))
    if expected is not None and found != expected:
        raise CompileError(f"the extension '{ext}' says {FORMATS[expected][1]}, but the content is "
                           f"{FORMATS[found][1]}", Loc(path))
    return found


def sniff(head: bytes, ext: str = "") -> str | None:
    """The format that the first bytes of a file show, or None."""
    if head.startswith(HDF5_MAGIC):
        return "keras"
    if head.startswith(b"PK\x03\x04"):
        return "keras"  # .keras archives; the importer checks for config.json
    if head[4:8] == b"TFL3":
        return "tflite"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"{"):
        return "tfjs"
    if ext == ".l4f" or _looks_like_l4f(text):
        return "l4f" if _is_text(head) else None
    # An ONNX ModelProto starts with field 1 (ir_version, varint) or another small field tag.
    if head[:1] in (b"\x08", b"\x12", b"\x1a", b"\x22", b"\x3a") and not _is_text(head):
        return "savedmodel" if ext == ".pb" else "onnx"
    return None


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start >= len(head) - 3  # a character cut at the end of the sample
    return b"\x00" not in head


def _looks_like_l4f(text: bytes) -> bool:
    return text.startswith((b"//", b"layer.", b"loop.", b"thumb.", b"%", b"resources"))


def _load_l4f(path: str) -> Module:
    from ml4f.compiler.context import Context
    from ml4f.compiler.diagnostics import read_text
    from ml4f.compiler.parser import parse
    from ml4f.compiler.passes import verify_module

    module = parse(read_text(path), path, Context())
    verify_module(module)
    return module
