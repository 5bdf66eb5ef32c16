"""Keras layer configs to layer-dialect ops, shared by the Keras (.h5, .keras), TF.js and ML4F importers.

All three formats describe a model with the same JSON (`{"class_name": "Sequential" | "Functional",
"config": {...}}`) and differ only in where the weights live, so a format hands this module the model
config and a `WeightLookup`: given the path of layer names from the top model to a layer, the layer's
weights in Keras order as (short name or None, array) pairs, e.g.

    convert_keras_model(config, lookup, file="model.h5", name="model")   # -> verified Module

Weight layouts are converted to the dialect's (see dialects/layer.py): conv kernels [KH, KW, I, O] ->
[O, KH, KW, I], dense [I, O] -> [O, I], depthwise [KH, KW, C, M] -> [KH, KW, C*M].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.diagnostics import CompileError, Loc
from ml4f.compiler.ir import Module, Value
from ml4f.compiler.types import TensorType, f32

WeightList = list[tuple[str | None, np.ndarray]]
WeightLookup = Callable[[tuple[str, ...]], WeightList]
# A tensor reference in a functional config: (layer name, node index, tensor index).
Ref = tuple[str, int, int]

MODEL_CLASSES = ("Sequential", "Functional", "Model")

# Activation names (the `activation=` argument and the Activation layer) -> (layer op, attributes).
_ACTIVATIONS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "linear": None, "relu": ("Relu", {}), "relu6": ("Relu6", {}), "sigmoid": ("Sigmoid", {}),
    "tanh": ("Tanh", {}), "softmax": ("Softmax", {}), "hard_swish": ("HardSwish", {}),
    "hard_silu": ("HardSwish", {}), "hardswish": ("HardSwish", {}),
    # keras.activations.leaky_relu's default slope (the LeakyReLU layer's default is 0.3).
    "leaky_relu": ("LeakyRelu", {"alpha": 0.2}),
}
# Activations that conv, dense and add ops can carry themselves.
_FUSABLE = ("relu", "relu6")


def convert_keras_model(config: dict, lookup: WeightLookup, file: str, name: str = "model",
                        progress: Callable[[str, int, int], None] | None = None) -> Module:
    """The layer-dialect module of a Keras model config whose weights `lookup` provides."""
    conv = KerasConverter(ModelBuilder(_symbol(name), file=file), lookup, file, progress)
    try:
        outputs = conv.model(unwrap_model_config(config, file), (), None)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        # A config that does not have the shape Keras writes (hand-edited or from an unknown tool).
        raise CompileError(f"malformed model config ({type(e).__name__}: {e})", Loc(file)) from e
    conv.b.output(*outputs)
    return conv.b.finish()


def unwrap_model_config(config: Any, file: str) -> dict:
    """The `{"class_name", "config"}` dict of a model, also when wrapped (TF.js `model_config`)."""
    if (isinstance(config, dict) and "class_name" not in config
            and isinstance(config.get("model_config"), dict)):
        config = config["model_config"]
    if (not isinstance(config, dict) or not isinstance(config.get("class_name"), str)
            or "config" not in config):
        raise CompileError("the model config is not a Keras model ({\"class_name\": ..., \"config\": ...})",
                           Loc(file))
    if config["class_name"] not in MODEL_CLASSES:
        raise CompileError(f"the top-level object is a '{config['class_name']}', not a Sequential or "
                           "functional model", Loc(file))
    return config


def _symbol(name: str) -> str:
    s = "".join(c if c.isalnum() or c == "_" else "_" for c in name)
    return s if s and not s[0].isdigit() else "m_" + s


def layer_name(cfg: dict) -> str:
    """The user's name of a layer config (Keras 3 also repeats it outside `config`)."""
    c = cfg.get("config") if isinstance(cfg.get("config"), dict) else {}
    n = c.get("name") or cfg.get("name")
    return str(n) if n else "?"


class KerasConverter:
    """Walks a (possibly nested) Keras model config and appends one or more ops per layer."""

    def __init__(self, builder: ModelBuilder, lookup: WeightLookup, file: str,
                 progress: Callable[[str, int, int], None] | None = None):
        from ml4f.dialects import layer

        self.b = builder
        self.L = layer
        self.lookup = lookup
        self.file = file
        self.progress = progress
        self.done = 0
        self.resources: dict[str, Any] = {}

    # -- errors and helpers

    def error(self, name: str, message: str) -> CompileError:
        """An error located at the Keras layer `name` of this file."""
        return CompileError(message, Loc(self.file, layer=name))

    def weights(self, path: tuple[str, ...], cls: str, names: list[tuple[str, ...]]) -> list[np.ndarray]:
        """The layer's weights in the order of `names` (each a tuple of accepted short names):
        by name when the format names them, else by position (Keras order)."""
        got = self.lookup(path)
        who = path[-1]
        if len(got) != len(names):
            have = ", ".join(n or f"#{i}" for i, (n, _) in enumerate(got)) or "none"
            want = ", ".join(n[0] for n in names) or "none"
            raise self.error(who, f"{cls} layer has weights [{have}]; expected [{want}]")
        if all(n is not None for n, _ in got):
            table = {n: a for n, a in got}
            out = []
            for alias in names:
                hit = next((table[a] for a in alias if a in table), None)
                if hit is None:
                    raise self.error(who, f"{cls} layer has no weight '{alias[0]}' "
                                          f"(it has {', '.join(table)})")
                out.append(hit)
            return [np.asarray(a, dtype=np.float32) for a in out]
        return [np.asarray(a, dtype=np.float32) for _, a in got]

    def res(self, name: str, what: str, data: np.ndarray) -> Any:
        """A float32 weight resource named `<layer>.<weight>`; a layer called twice (shared) reuses
        its resources, so its weights are stored once."""
        data = np.ascontiguousarray(data, dtype=np.float32)
        key = f"{name}.{what}"
        hit = self.resources.get(key)
        if hit is not None and hit.data.shape == data.shape and np.array_equal(hit.data, data):
            return hit
        r = self.resources[key] = self.b.weights(key, data)
        return r

    # -- models

    def model(self, cfg: dict, path: tuple[str, ...], args: list[Value] | None) -> list[Value]:
        cls = cfg["class_name"]
        c = cfg["config"]
        if cls == "Sequential":
            return [self.sequential(c, path, args)]
        if not isinstance(c, dict) or not isinstance(c.get("layers"), list):
            raise CompileError(f"{cls} model config has no layer list", Loc(self.file))
        layers = c["layers"]
        by_name = {layer_name(lay): lay for lay in layers}
        input_refs = _refs(c.get("input_layers"))
        output_refs = _refs(c.get("output_layers"))
        if not input_refs or not output_refs:
            raise CompileError(f"{cls} model '{c.get('name')}' does not list its inputs and outputs",
                               Loc(self.file))
        tensors: dict[Ref, Value] = {}
        if args is not None and len(args) != len(input_refs):
            raise self.error(path[-1], f"nested model takes {len(input_refs)} input(s), "
                                       f"called with {len(args)}")
        for i, ref in enumerate(input_refs):
            lcfg = by_name.get(ref[0])
            if lcfg is None:
                raise CompileError(f"model input '{ref[0]}' is not among its layers", Loc(self.file))
            if args is not None:
                tensors[ref] = args[i]
            elif lcfg["class_name"] == "InputLayer":
                tensors[ref] = self.input(lcfg["config"], ref[0])
            else:
                raise self.error(ref[0], f"model input is a {lcfg['class_name']} layer, not an InputLayer")
        # Every call of every layer, then in dependency order (configs are usually sorted already).
        pending: list[tuple[dict, int, list[Ref], dict[str, Ref]]] = []
        for lay in layers:
            if lay["class_name"] == "InputLayer":
                continue
            for ni, node in enumerate(lay.get("inbound_nodes") or []):
                ins, kw = _node_refs(node)
                pending.append((lay, ni, ins, kw))
        while pending:
            rest = []
            for item in pending:
                lay, ni, ins, kw = item
                if all(r in tensors for r in ins) and all(r in tensors for r in kw.values()):
                    outs = self.call(lay, path, [tensors[r] for r in ins],
                                     {k: tensors[r] for k, r in kw.items()})
                    for ti, v in enumerate(outs):
                        tensors[(layer_name(lay), ni, ti)] = v
                else:
                    rest.append(item)
            if len(rest) == len(pending):
                lay, ni, ins, kw = rest[0]
                missing = next(r for r in [*ins, *kw.values()] if r not in tensors)
                raise self.error(layer_name(lay), f"input '{missing[0]}' (node {missing[1]}) is not produced "
                                                "by any layer of the model")
            pending = rest
        missing_out = [r for r in output_refs if r not in tensors]
        if missing_out:
            raise CompileError(f"model output '{missing_out[0][0]}' is not computed by the model",
                               Loc(self.file))
        return [tensors[r] for r in output_refs]

    def sequential(self, c: Any, path: tuple[str, ...], args: list[Value] | None) -> Value:
        layers = c["layers"] if isinstance(c, dict) else c
        if not isinstance(layers, list):
            raise CompileError("Sequential model config has no layer list", Loc(self.file))
        if args is not None and len(args) != 1:
            raise self.error(path[-1], f"Sequential model called with {len(args)} inputs")
        x = args[0] if args else None
        if x is None and not layers:
            raise CompileError("the Sequential model has no layers", Loc(self.file))
        for lay in layers:
            name = layer_name(lay)
            if lay["class_name"] == "InputLayer":
                if x is None:
                    x = self.input(lay["config"], name)
                continue
            if x is None:
                shape_cfg = dict(lay.get("config") or {})
                if isinstance(c, dict) and not _has_shape(shape_cfg) and c.get("build_input_shape"):
                    shape_cfg["batch_shape"] = c["build_input_shape"]
                x = self.input(shape_cfg, "input", owner=name)
            (x,) = self.call(lay, path, [x], {})
        assert x is not None
        return x

    def input(self, c: dict, name: str, owner: str | None = None) -> Value:
        shape = c.get("batch_shape") or c.get("batch_input_shape") or c.get("batchInputShape")
        if shape is None and c.get("input_shape") is not None:
            shape = [None, *c["input_shape"]]
        who = owner or name
        if not shape:
            raise self.error(who, "the model does not declare its input shape (batch_input_shape)")
        dims = list(shape)
        if dims[0] not in (None, 1, -1):
            raise self.error(who, f"input batch size must be 1 or unknown, got {dims[0]}")
        if any(d is None or d == -1 for d in dims[1:]):
            raise self.error(who, f"input shape {_show_shape(dims)} has unknown dimensions; ml4f needs "
                                  "a fixed input shape")
        dtype = c.get("dtype")
        if isinstance(dtype, dict):
            dtype = (dtype.get("config") or {}).get("name")
        if dtype not in (None, "float32", "float16", "float64"):
            raise self.error(who, f"input dtype {dtype} is not supported (float inputs only)")
        return self.b.input((1, *(int(d) for d in dims[1:])), name=name)

    def call(self, lay: dict, path: tuple[str, ...], xs: list[Value], kw: dict[str, Value]) -> list[Value]:
        cls = lay.get("class_name")
        name = layer_name(lay)
        if cls in MODEL_CLASSES:
            return self.model(lay, path + (name,), xs)
        handler = HANDLERS.get(cls)
        c = lay.get("config") or {}
        if handler is None:
            supported = sorted(n for n in HANDLERS if n not in _ALIASES)
            raise self.error(name, f"layer type {cls} is not supported (supported: {', '.join(supported)}, "
                                   "and nested Sequential/functional models)")
        if c.get("data_format") == "channels_first":
            raise self.error(name, f"{cls} with data_format='channels_first' is not supported "
                                   "(ml4f works on channels_last tensors)")
        if cls not in _MULTI_INPUT and len(xs) != 1:
            raise self.error(name, f"{cls} layer expects one input, got {len(xs)}")
        y = handler(self, cls, c, name, path + (name,), xs, kw)
        self.done += 1
        if self.progress is not None:
            self.progress("converting layers", self.done, 0)
        return [y]

    # -- activations

    def activation(self, c: dict, name: str) -> str:
        """The layer's `activation` argument as a plain name, refused when the dialect lacks it."""
        act = c.get("activation")
        if isinstance(act, dict):  # Keras 3 may serialize functions as {"config": "relu", ...}
            act = act.get("config") if isinstance(act.get("config"), str) else act.get("class_name")
        act = "linear" if act in (None, "") else str(act).lower()
        if act not in _ACTIVATIONS:
            raise self.error(name, f"activation '{act}' is not supported (supported: "
                                   f"{', '.join(sorted(_ACTIVATIONS))})")
        return act

    def split_activation(self, act: str) -> tuple[str, str]:
        """(what the op fuses, what follows as a separate op)."""
        return (act, "linear") if act in _FUSABLE else ("none", act)

    def apply(self, act: str, x: Value, name: str) -> Value:
        entry = _ACTIVATIONS[act]
        if entry is None:
            return x
        op, attrs = entry
        return self.b.add(getattr(self.L, op), x, name=name, **attrs)


# ----------------------------------------------------------------------------- config parsing helpers


def _show_shape(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _has_shape(c: dict) -> bool:
    return any(c.get(k) for k in ("batch_shape", "batch_input_shape", "batchInputShape", "input_shape"))


def _is_ref(v: Any) -> bool:
    return (isinstance(v, (list, tuple)) and len(v) >= 3 and isinstance(v[0], str)
            and isinstance(v[1], int) and isinstance(v[2], int))


def _refs(v: Any) -> list[Ref]:
    """`input_layers`/`output_layers`: [[name, node, tensor], ...] or a single [name, node, tensor]."""
    if v is None:
        return []
    if _is_ref(v):
        return [(v[0], v[1], v[2])]
    return [(r[0], r[1], r[2]) for r in v if _is_ref(r)]


def _keras3_tensors(v: Any, out: list[Ref]) -> None:
    if isinstance(v, dict):
        if v.get("class_name") == "__keras_tensor__":
            h = v["config"]["keras_history"]
            out.append((h[0], h[1], h[2]))
        else:
            for x in v.values():
                _keras3_tensors(x, out)
    elif isinstance(v, (list, tuple)):
        for x in v:
            _keras3_tensors(x, out)


def _node_refs(node: Any) -> tuple[list[Ref], dict[str, Ref]]:
    """The tensors one layer call reads: positional ones, and tensors passed by keyword (TFOpLambda)."""
    ins: list[Ref] = []
    kw: dict[str, Ref] = {}
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        _keras3_tensors(node.get("args", []), ins)
        for k, v in (node.get("kwargs") or {}).items():
            found: list[Ref] = []
            _keras3_tensors(v, found)
            if len(found) == 1:
                kw[k] = found[0]
        return ins, kw
    if _is_ref(node):  # TFOpLambda nodes are one call [name, node, tensor, kwargs], not a list of them
        node = [node]
    for item in node or []:  # Keras 2 / TF.js: [[name, node, tensor, kwargs], ...]
        if _is_ref(item):
            ins.append((item[0], item[1], item[2]))
            if len(item) > 3 and isinstance(item[3], dict):
                for k, v in item[3].items():
                    if _is_ref(v):
                        kw[k] = (v[0], v[1], v[2])
    return ins, kw


def _tuple(v: Any, n: int, what: str) -> tuple[int, ...]:
    if isinstance(v, (int, float)):
        return (int(v),) * n
    t = tuple(int(x) for x in v)
    if len(t) != n:
        raise ValueError(f"{what} must have {n} values, got {list(t)}")
    return t


def _pairs(v: Any, n: int) -> tuple[tuple[int, int], ...]:
    """Keras padding/cropping: an int, n ints (symmetric), or n (before, after) pairs."""
    if isinstance(v, (int, float)):
        return ((int(v), int(v)),) * n
    v = list(v)
    if n == 1 and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
        return ((int(v[0]), int(v[1])),)
    if len(v) == n and all(isinstance(x, (int, float)) for x in v):
        return tuple((int(x), int(x)) for x in v)
    if len(v) == n and all(isinstance(x, (list, tuple)) and len(x) == 2 for x in v):
        return tuple((int(a), int(b)) for a, b in v)
    raise ValueError(f"cannot read {v!r} as {n} (before, after) pairs")


# ----------------------------------------------------------------------------- layer handlers

# handler(converter, Keras class name, layer config, layer name, weight path, inputs, keyword inputs)
Handler = Callable[[KerasConverter, str, dict, str, tuple[str, ...], list[Value], dict[str, Value]], Value]
HANDLERS: dict[str, Handler] = {}
_MULTI_INPUT = {"Add", "Subtract", "Multiply", "Concatenate", "TFOpLambda"}
# Other names Keras accepts for the same layers (left out of error messages).
_ALIASES = {"Convolution1D", "Convolution2D", "MaxPool1D", "MaxPool2D", "AvgPool1D", "AvgPool2D",
            "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D"}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return deco


def _spatial(cv: KerasConverter, cls: str, name: str, x: Value, ranks: tuple[int, ...] = (1, 2)) -> int:
    """The number of spatial axes of `x`, checked against the 1D/2D in the class name."""
    n = len(x.type.shape) - 2
    want = 1 if "1D" in cls else 2 if "2D" in cls else None
    if n not in ranks or (want is not None and n != want):
        raise cv.error(name, f"{cls} needs a rank {(want or ranks[0]) + 2} input (batch first), got {x.type}")
    return n


def _padding(cv: KerasConverter, c: dict, name: str, cls: str) -> str:
    p = str(c.get("padding", "valid")).lower()
    if p not in ("valid", "same"):
        raise cv.error(name, f"{cls} padding '{p}' is not supported (only 'valid' and 'same')")
    return p


def _conv_common(cv: KerasConverter, c: dict, name: str, cls: str, n: int) -> tuple[tuple, tuple, str]:
    try:
        strides = _tuple(c.get("strides", 1), n, "strides")
        dilation = _tuple(c.get("dilation_rate", 1), n, "dilation_rate")
    except ValueError as e:
        raise cv.error(name, f"{cls}: {e}") from None
    padding = _padding(cv, c, name, cls)
    if any(s > 1 for s in strides) and any(d > 1 for d in dilation):
        raise cv.error(name, f"{cls} with strides {list(strides)} and dilation_rate {list(dilation)}: "
                             "strides > 1 together with dilation > 1 is not supported")
    if int(c.get("groups", 1) or 1) != 1:
        raise cv.error(name, f"{cls} with groups={c['groups']} is not supported (groups=1 only)")
    return strides, dilation, padding


def _bias_names(c: dict) -> list[tuple[str, ...]]:
    return [("bias",)] if c.get("use_bias", True) else []


@handles("Conv1D", "Conv2D", "Convolution1D", "Convolution2D")
def _conv(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
          kw: dict[str, Value]) -> Value:
    n = _spatial(cv, cls, name, xs[0])
    strides, dilation, padding = _conv_common(cv, c, name, cls, n)
    w = cv.weights(path, cls, [("kernel",), *_bias_names(c)])
    if w[0].ndim != n + 2:
        raise cv.error(name, f"{cls} kernel has shape {list(w[0].shape)}; expected rank {n + 2}")
    kernel = np.moveaxis(w[0], -1, 0)  # [..., I, O] -> [O, ..., I]
    fused, after = cv.split_activation(cv.activation(c, name))
    op = cv.L.Conv1D if n == 1 else cv.L.Conv2D
    y = cv.b.add(op, xs[0], name=name, kernel=cv.res(name, "kernel", kernel),
                 bias=cv.res(name, "bias", w[1]) if len(w) > 1 else None,
                 strides=list(strides), padding=padding, dilation=list(dilation), activation=fused)
    return cv.apply(after, y, name)


def _depthwise_op(cv: KerasConverter, x: Value, name: str, k: np.ndarray, bias: np.ndarray | None,
                  n: int, strides: tuple, dilation: tuple, padding: str, fused: str) -> Value:
    # Keras [KH, KW, C, M] -> [KH, KW, C*M]: output channel c*M + m, as the dialect wants.
    kernel = k.reshape(*k.shape[:n], k.shape[n] * k.shape[n + 1])
    op = cv.L.DepthwiseConv1D if n == 1 else cv.L.DepthwiseConv2D
    return cv.b.add(op, x, name=name, kernel=cv.res(name, "depthwise_kernel", kernel),
                    bias=cv.res(name, "bias", bias) if bias is not None else None,
                    strides=list(strides), padding=padding, dilation=list(dilation),
                    depth_multiplier=int(k.shape[n + 1]), activation=fused)


@handles("DepthwiseConv1D", "DepthwiseConv2D")
def _depthwise(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
               kw: dict[str, Value]) -> Value:
    n = _spatial(cv, cls, name, xs[0])
    strides, dilation, padding = _conv_common(cv, c, name, cls, n)
    w = cv.weights(path, cls, [("depthwise_kernel", "kernel"), *_bias_names(c)])
    if w[0].ndim != n + 2:
        raise cv.error(name, f"{cls} kernel has shape {list(w[0].shape)}; expected rank {n + 2}")
    fused, after = cv.split_activation(cv.activation(c, name))
    y = _depthwise_op(cv, xs[0], name, w[0], w[1] if len(w) > 1 else None, n, strides, dilation,
                      padding, fused)
    return cv.apply(after, y, name)


@handles("SeparableConv1D", "SeparableConv2D")
def _separable(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
               kw: dict[str, Value]) -> Value:
    """Depthwise convolution (no bias) followed by a 1x1 convolution with the bias and activation."""
    n = _spatial(cv, cls, name, xs[0])
    strides, dilation, padding = _conv_common(cv, c, name, cls, n)
    w = cv.weights(path, cls, [("depthwise_kernel",), ("pointwise_kernel",), *_bias_names(c)])
    if w[0].ndim != n + 2 or w[1].ndim != n + 2:
        raise cv.error(name, f"{cls} kernels have shapes {list(w[0].shape)}, {list(w[1].shape)}")
    dw = _depthwise_op(cv, xs[0], name, w[0], None, n, strides, dilation, padding, "none")
    fused, after = cv.split_activation(cv.activation(c, name))
    op = cv.L.Conv1D if n == 1 else cv.L.Conv2D
    y = cv.b.add(op, dw, name=name, kernel=cv.res(name, "pointwise_kernel", np.moveaxis(w[1], -1, 0)),
                 bias=cv.res(name, "bias", w[2]) if len(w) > 2 else None, activation=fused)
    return cv.apply(after, y, name)


@handles("Dense")
def _dense(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
           kw: dict[str, Value]) -> Value:
    w = cv.weights(path, cls, [("kernel",), *_bias_names(c)])
    if w[0].ndim != 2:
        raise cv.error(name, f"Dense kernel has shape {list(w[0].shape)}; expected [inputs, units]")
    fused, after = cv.split_activation(cv.activation(c, name))
    y = cv.b.add(cv.L.Dense, xs[0], name=name, kernel=cv.res(name, "kernel", w[0].T),
                 bias=cv.res(name, "bias", w[1]) if len(w) > 1 else None, activation=fused)
    return cv.apply(after, y, name)


@handles("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "MaxPool1D", "MaxPool2D",
         "AvgPool1D", "AvgPool2D")
def _pool(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
          kw: dict[str, Value]) -> Value:
    n = _spatial(cv, cls, name, xs[0])
    try:
        pool = _tuple(c.get("pool_size", 2), n, "pool_size")
        strides = _tuple(c.get("strides") or pool, n, "strides")
    except ValueError as e:
        raise cv.error(name, f"{cls}: {e}") from None
    padding = _padding(cv, c, name, cls)
    is_max = cls.startswith("Max")
    op = {(True, 1): cv.L.MaxPool1D, (True, 2): cv.L.MaxPool2D,
          (False, 1): cv.L.AvgPool1D, (False, 2): cv.L.AvgPool2D}[(is_max, n)]
    return cv.b.add(op, xs[0], name=name, pool_size=list(pool), strides=list(strides), padding=padding)


@handles("GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
         "GlobalAvgPool1D", "GlobalAvgPool2D", "GlobalMaxPool1D", "GlobalMaxPool2D")
def _global_pool(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
                 kw: dict[str, Value]) -> Value:
    _spatial(cv, cls, name, xs[0])
    op = cv.L.GlobalMaxPool if "Max" in cls else cv.L.GlobalAvgPool
    return cv.b.add(op, xs[0], name=name, keepdims=bool(c.get("keepdims", False)))


def _require_last_axis(cv: KerasConverter, c: dict, name: str, x: Value, what: str, only: str) -> None:
    """The layer's `axis` config must name the last axis (the dialect's ops work over channels)."""
    rank = len(x.type.shape)
    axis = c.get("axis", -1)
    if isinstance(axis, (list, tuple)):
        axis = axis[0] if len(axis) == 1 else None
    if axis is None or axis not in (-1, rank - 1):
        raise cv.error(name, f"{what} over axis {c.get('axis')} is not supported (only {only})")


@handles("BatchNormalization")
def _batch_norm(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
                kw: dict[str, Value]) -> Value:
    _require_last_axis(cv, c, name, xs[0], "BatchNormalization", "the last, channel axis")
    if c.get("renorm"):
        raise cv.error(name, "BatchNormalization with renorm=True is not supported")
    scale, center = c.get("scale", True), c.get("center", True)
    want = [*([("gamma",)] if scale else []), *([("beta",)] if center else []),
            ("moving_mean",), ("moving_variance",)]
    w = cv.weights(path, cls, want)
    channels = xs[0].type.shape[-1]
    gamma = w.pop(0) if scale else np.ones(channels, np.float32)
    beta = w.pop(0) if center else np.zeros(channels, np.float32)
    mean, var = w
    return cv.b.add(cv.L.BatchNorm, xs[0], name=name, gamma=cv.res(name, "gamma", gamma),
                    beta=cv.res(name, "beta", beta), mean=cv.res(name, "moving_mean", mean),
                    variance=cv.res(name, "moving_variance", var), epsilon=float(c.get("epsilon", 1e-3)))


@handles("Activation")
def _activation(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
                kw: dict[str, Value]) -> Value:
    act = cv.activation(c, name)
    return cv.apply(act, xs[0], name)  # 'linear' is the identity: no op


@handles("ReLU")
def _relu(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
          kw: dict[str, Value]) -> Value:
    max_value = c.get("max_value")
    slope = float(c.get("negative_slope", 0.0) or 0.0)
    threshold = float(c.get("threshold", 0.0) or 0.0)
    if threshold != 0.0:
        raise cv.error(name, f"ReLU with threshold={threshold} is not supported (threshold 0 only)")
    if max_value is None and slope == 0.0:
        return cv.b.add(cv.L.Relu, xs[0], name=name)
    if max_value is not None and float(max_value) == 6.0 and slope == 0.0:
        return cv.b.add(cv.L.Relu6, xs[0], name=name)
    if max_value is None:
        return cv.b.add(cv.L.LeakyRelu, xs[0], name=name, alpha=slope)
    raise cv.error(name, f"ReLU with max_value={max_value} and negative_slope={slope} is not supported "
                         "(supported: plain, max_value=6, or negative_slope without max_value)")


@handles("ReLU6")
def _relu6(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
           kw: dict[str, Value]) -> Value:
    return cv.b.add(cv.L.Relu6, xs[0], name=name)


@handles("LeakyReLU")
def _leaky_relu(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
                kw: dict[str, Value]) -> Value:
    alpha = c.get("negative_slope", c.get("alpha", 0.3))
    return cv.b.add(cv.L.LeakyRelu, xs[0], name=name, alpha=float(alpha))


@handles("Softmax")
def _softmax(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
             kw: dict[str, Value]) -> Value:
    _require_last_axis(cv, c, name, xs[0], "Softmax", "the last axis")
    return cv.b.add(cv.L.Softmax, xs[0], name=name)


@handles("Add", "Subtract", "Multiply")
def _merge(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
           kw: dict[str, Value]) -> Value:
    if len(xs) < 2 or (cls == "Subtract" and len(xs) != 2):
        raise cv.error(name, f"{cls} layer expects {'2' if cls == 'Subtract' else 'at least 2'} inputs, "
                             f"got {len(xs)}")
    op = {"Add": cv.L.Add, "Subtract": cv.L.Sub, "Multiply": cv.L.Mul}[cls]
    return cv.b.add(op, *xs, name=name)


@handles("Concatenate")
def _concat(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
            kw: dict[str, Value]) -> Value:
    return cv.b.add(cv.L.Concat, *xs, name=name, axis=int(c.get("axis", -1)))


# TFOpLambda functions that are plain element-wise ops of two tensors (tf.keras 2 functional models).
_TF_OPS = {"__operators__.add": "Add", "math.add": "Add", "math.multiply": "Mul",
           "__operators__.mul": "Mul", "math.subtract": "Sub", "__operators__.sub": "Sub"}


@handles("TFOpLambda")
def _tf_op_lambda(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...],
                  xs: list[Value], kw: dict[str, Value]) -> Value:
    fn = c.get("function")
    op = _TF_OPS.get(fn)
    operands = [*xs, *kw.values()]
    if op is None or len(operands) != 2:
        raise cv.error(name, f"TFOpLambda '{fn}' is not supported (only tf.add, tf.multiply and "
                             "tf.subtract of two tensors)")
    return cv.b.add(getattr(cv.L, op), *operands, name=name)


@handles("ZeroPadding1D", "ZeroPadding2D")
def _zero_pad(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
              kw: dict[str, Value]) -> Value:
    n = _spatial(cv, cls, name, xs[0])
    try:
        pads = _pairs(c.get("padding", 1), n)
    except ValueError as e:
        raise cv.error(name, f"{cls}: {e}") from None
    return cv.b.add(cv.L.ZeroPad, xs[0], name=name, pads=[[0, 0], *[list(p) for p in pads], [0, 0]])


@handles("Cropping1D", "Cropping2D")
def _cropping(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
              kw: dict[str, Value]) -> Value:
    n = _spatial(cv, cls, name, xs[0])
    try:
        crops = _pairs(c.get("cropping", 1 if n == 1 else 0), n)
    except ValueError as e:
        raise cv.error(name, f"{cls}: {e}") from None
    return cv.b.add(cv.L.Cropping, xs[0], name=name, crops=[list(p) for p in crops])


@handles("UpSampling1D", "UpSampling2D")
def _upsample(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
              kw: dict[str, Value]) -> Value:
    n = _spatial(cv, cls, name, xs[0])
    interp = c.get("interpolation", "nearest")
    if interp != "nearest":
        raise cv.error(name, f"{cls} interpolation '{interp}' is not supported (only 'nearest')")
    try:
        size = _tuple(c.get("size", 2), n, "size")
    except ValueError as e:
        raise cv.error(name, f"{cls}: {e}") from None
    return cv.b.add(cv.L.Upsample, xs[0], name=name, size=list(size))


@handles("Reshape")
def _reshape(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
             kw: dict[str, Value]) -> Value:
    target = [int(d) for d in c.get("target_shape") or c.get("targetShape") or []]
    size = xs[0].type.size
    if target.count(-1) > 1 or any(d == 0 or d < -1 for d in target):
        raise cv.error(name, f"Reshape target_shape {target} is invalid")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        if known == 0 or size % known:
            raise cv.error(name, f"cannot reshape {xs[0].type} to {target}")
        target[target.index(-1)] = size // known
    if int(np.prod(target)) != size:
        raise cv.error(name, f"cannot reshape {xs[0].type} ({size} elements) to {target}")
    return cv.b.add(cv.L.Reshape, xs[0], name=name, result_type=TensorType((1, *target), f32))


@handles("Flatten")
def _flatten(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
             kw: dict[str, Value]) -> Value:
    return cv.b.add(cv.L.Flatten, xs[0], name=name)


@handles("Dropout", "SpatialDropout1D", "SpatialDropout2D")
def _dropout(cv: KerasConverter, cls: str, c: dict, name: str, path: tuple[str, ...], xs: list[Value],
             kw: dict[str, Value]) -> Value:
    return cv.b.add(cv.L.Dropout, xs[0], name=name, rate=float(c.get("rate", 0.5)))
