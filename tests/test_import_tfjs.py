"""TF.js layers models and Microsoft ML4F flat JSON: generated files (float32, uint8-quantized and
float16 weights, several shards, Sequential and functional), the real models in ../shared/models,
and bad input. The reference is Keras (TensorFlow 2.21): the model is rebuilt layer by layer from the
topology with keras.layers.deserialize and given weights decoded here, independently of the importer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shared_models import MODELS

from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.importers import import_model
from ml4f.dialects.layer import run_model

keras = pytest.importorskip("keras")


def assert_close(y: np.ndarray, ref: np.ndarray) -> float:
    """DESIGN §7 float tolerance: |err| <= 1e-4 * (1 + |y|) everywhere; returns the max error."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    err = np.abs(y - ref)
    assert (err <= 1e-4 * (1 + np.abs(ref))).all(), f"max error {err.max():.3g}"
    return float(err.max())


# ----------------------------------------------------------------------------- the Keras reference


def _keras_layer(lay: dict) -> keras.layers.Layer:
    c = {k: v for k, v in lay["config"].items() if k not in ("batch_input_shape", "dtype")}
    return keras.layers.deserialize({"class_name": lay["class_name"], "config": c, "module": "keras.layers"})


def rebuild(topology: dict) -> keras.Model:
    """A Keras 3 model from a TF.js (Keras 2 style) topology: Sequential or a functional graph."""
    cfg = topology.get("model_config", topology)
    layers = cfg["config"]["layers"]
    if cfg["class_name"] == "Sequential":
        shape = layers[0]["config"]["batch_input_shape"][1:]
        return keras.Sequential([keras.Input(tuple(shape)), *(_keras_layer(lay) for lay in layers)])
    tensors = {}
    for lay in layers:
        name = lay["config"]["name"]
        if lay["class_name"] == "InputLayer":
            tensors[name] = keras.Input(tuple(lay["config"]["batch_input_shape"][1:]), name=name)
            continue
        args = [tensors[ref[0]] for ref in lay["inbound_nodes"][0]]
        tensors[name] = _keras_layer(lay)(args if len(args) > 1 else args[0])
    ins = [tensors[r[0]] for r in cfg["config"]["input_layers"]]
    outs = [tensors[r[0]] for r in cfg["config"]["output_layers"]]
    return keras.Model(ins, outs)


def set_weights(model: keras.Model, weights: dict[str, np.ndarray]) -> None:
    """Assign `layer/weight` arrays to the Keras model's variables (Keras 3 calls a depthwise kernel
    `kernel`; TF.js `depthwise_kernel`)."""
    used = set()
    for layer in model.layers:
        vals = []
        for w in layer.weights:
            key = f"{layer.name}/{w.name}"
            if key not in weights and w.name == "kernel":
                key = f"{layer.name}/depthwise_kernel"
            vals.append(weights[key])
            used.add(key)
        if vals:
            layer.set_weights(vals)
    assert used == set(weights), set(weights) - used


def keras_reference(topology: dict, weights: dict[str, np.ndarray], xs: list[np.ndarray]) -> np.ndarray:
    model = rebuild(topology)
    set_weights(model, weights)
    return np.asarray(model(xs[0] if len(xs) == 1 else xs, training=False))


def decode_f32(specs: list[dict], data: bytes) -> dict[str, np.ndarray]:
    """float32 weights one after another (the real models' layout)."""
    out, off = {}, 0
    for s in specs:
        assert s.get("dtype", "float32") == "float32" and "quantization" not in s
        n = int(np.prod(s["shape"]))
        out[s["name"]] = np.frombuffer(data, "<f4", n, off).reshape(s["shape"])
        off += 4 * n
    assert off == len(data)
    return out


# ----------------------------------------------------------------------------- real models

REAL_TFJS = ["tfjs/mnist_cnn.json", "tfjs/gesture_1d.json", "tfjs/dwsep_cnn.json", "tfjs/mlp.json",
             "ml4f/gestures.tfjsmodel.json"]
REAL_ML4F = ["ml4f/accel.json", "ml4f/button.json"]


def _inputs(model_module, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, op.result.type.shape).astype(np.float32) for op in model_module.ops[0].inputs]


@pytest.mark.parametrize("rel", REAL_TFJS)
def test_real_tfjs_matches_keras(rel: str) -> None:
    path = MODELS / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    doc = json.loads(path.read_text())
    data = b"".join((path.parent / p).read_bytes() for g in doc["weightsManifest"] for p in g["paths"])
    weights = decode_f32([w for g in doc["weightsManifest"] for w in g["weights"]], data)
    module = import_model(str(path))
    for seed in range(2):
        xs = _inputs(module, seed)
        (y,), _ = run_model(module.ops[0], xs)
        assert_close(y, keras_reference(doc["modelTopology"], weights, xs))


@pytest.mark.parametrize("rel", REAL_ML4F)
def test_real_ml4f_flat_json_matches_keras(rel: str) -> None:
    path = MODELS / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    doc = json.loads(path.read_text())
    spec = json.loads(doc["modelJSON"]) if isinstance(doc["modelJSON"], str) else doc["modelJSON"]
    weights = decode_f32(spec["weightSpecs"], np.asarray(doc["weights"], "<u4").tobytes())
    module = import_model(str(path))
    assert list(module.ops[0].inputs[0].result.type.shape[1:]) == list(np.atleast_1d(doc["inputShape"]))
    for seed in range(2):
        xs = _inputs(module, seed)
        (y,), _ = run_model(module.ops[0], xs)
        assert_close(y, keras_reference(spec["modelTopology"], weights, xs))


# ----------------------------------------------------------------------------- generated files


def _layer(cls: str, name: str, **config) -> dict:
    return {"class_name": cls, "config": {"name": name, "trainable": True, **config}}


SEQ_TOPOLOGY = {"class_name": "Sequential", "config": {"name": "seq", "layers": [
    _layer("Conv2D", "conv_a", filters=6, kernel_size=[3, 3], strides=[1, 1], padding="same",
           data_format="channels_last", dilation_rate=[1, 1], activation="relu", use_bias=True,
           batch_input_shape=[None, 10, 9, 2], dtype="float32"),
    _layer("BatchNormalization", "bn", axis=-1, epsilon=0.001, center=True, scale=True, momentum=0.99),
    _layer("DepthwiseConv2D", "dw", kernel_size=[3, 3], strides=[2, 2], padding="valid",
           data_format="channels_last", dilation_rate=[1, 1], depth_multiplier=2, activation="linear",
           use_bias=True),
    _layer("MaxPooling2D", "pool", pool_size=[2, 2], strides=[1, 1], padding="valid",
           data_format="channels_last"),
    _layer("Dropout", "drop", rate=0.25),
    _layer("Flatten", "flat"),
    _layer("Dense", "fc", units=4, activation="softmax", use_bias=True),
]}, "keras_version": "tfjs-layers 4.10.0", "backend": "tensor_flow.js"}

GRAPH_TOPOLOGY = {"class_name": "Model", "config": {"name": "graph", "layers": [
    {**_layer("InputLayer", "inp", batch_input_shape=[None, 16, 3], dtype="float32", sparse=False),
     "inbound_nodes": []},
    {**_layer("Conv1D", "c1", filters=4, kernel_size=[3], strides=[1], padding="same", dilation_rate=[1],
              activation="linear", use_bias=True), "inbound_nodes": [[["inp", 0, 0, {}]]]},
    {**_layer("Conv1D", "c2", filters=4, kernel_size=[1], strides=[1], padding="valid", dilation_rate=[1],
              activation="tanh", use_bias=False), "inbound_nodes": [[["inp", 0, 0, {}]]]},
    {**_layer("Add", "sum"), "inbound_nodes": [[["c1", 0, 0, {}], ["c2", 0, 0, {}]]]},
    {**_layer("Concatenate", "cat", axis=-1), "inbound_nodes": [[["sum", 0, 0, {}], ["c1", 0, 0, {}]]]},
    {**_layer("GlobalAveragePooling1D", "gap"), "inbound_nodes": [[["cat", 0, 0, {}]]]},
    {**_layer("Dense", "out", units=3, activation="sigmoid", use_bias=True),
     "inbound_nodes": [[["gap", 0, 0, {}]]]},
], "input_layers": [["inp", 0, 0]], "output_layers": [["out", 0, 0]]}}


def _random_weights(topology: dict, seed: int) -> list[tuple[str, np.ndarray]]:
    """Weights in Keras order (what a TF.js manifest lists) for the layers the topologies use."""
    rng = np.random.default_rng(seed)
    model = rebuild(topology)
    out = []
    for layer in model.layers:
        for w in layer.weights:
            is_dw = isinstance(layer, keras.layers.DepthwiseConv2D)
            name = "depthwise_kernel" if is_dw and w.name == "kernel" else w.name
            shape = tuple(w.shape)
            data = rng.uniform(0.5, 1.5, shape) if "variance" in name else rng.normal(0, 0.5, shape)
            out.append((f"{layer.name}/{name}", data.astype(np.float32)))
    return out


def _encode(name: str, a: np.ndarray, how: str) -> tuple[dict, bytes, np.ndarray]:
    """(manifest entry, bytes, the values the entry means) for one weight stored as `how`."""
    spec = {"name": name, "shape": list(a.shape), "dtype": "float32"}
    if how == "float32":
        return spec, a.astype("<f4").tobytes(), a
    if how == "float16":
        spec["quantization"] = {"dtype": "float16"}
        h = a.astype("<f2")
        return spec, h.tobytes(), h.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    levels = 255 if how == "uint8" else 65535
    scale = (hi - lo) / levels or 1.0
    q = np.round((a - lo) / scale).astype("u1" if how == "uint8" else "<u2")
    spec["quantization"] = {"dtype": how, "scale": scale, "min": lo}
    return spec, q.tobytes(), (q.astype(np.float32) * np.float32(scale) + np.float32(lo))


def write_tfjs(d: Path, topology: dict, weights: list, how: str, shards: int = 2) -> tuple[Path, dict]:
    specs, blobs, meant = [], [], {}
    for name, a in weights:
        spec, blob, value = _encode(name, a, how)
        specs.append(spec)
        blobs.append(blob)
        meant[name] = value
    data = b"".join(blobs)
    cut = [len(data) * i // shards for i in range(shards + 1)]  # shards split tensors anywhere
    paths = []
    for i in range(shards):
        (d / f"group1-shard{i + 1}of{shards}.bin").write_bytes(data[cut[i]:cut[i + 1]])
        paths.append(f"group1-shard{i + 1}of{shards}.bin")
    doc = {"format": "layers-model", "generatedBy": "test", "convertedBy": None,
           "modelTopology": topology, "weightsManifest": [{"paths": paths, "weights": specs}]}
    path = d / "model.json"
    path.write_text(json.dumps(doc))
    return path, meant


@pytest.mark.parametrize("how", ["float32", "uint8", "uint16", "float16"])
@pytest.mark.parametrize("topology", [SEQ_TOPOLOGY, GRAPH_TOPOLOGY], ids=["sequential", "functional"])
def test_generated_tfjs_matches_keras(tmp_path: Path, topology: dict, how: str) -> None:
    weights = _random_weights(topology, seed=len(how))
    path, meant = write_tfjs(tmp_path, topology, weights, how)
    module = import_model(str(path))
    xs = _inputs(module, 7)
    (y,), _ = run_model(module.ops[0], xs)
    assert_close(y, keras_reference(topology, meant, xs))
    if how == "uint8":  # the dequantized weights really differ from the float ones
        assert any(np.abs(meant[n] - a).max() > 1e-4 for n, a in weights)


def test_generated_ml4f_flat_json(tmp_path: Path) -> None:
    weights = _random_weights(SEQ_TOPOLOGY, seed=3)
    specs = [{"name": n, "shape": list(a.shape), "dtype": "float32"} for n, a in weights]
    words = np.frombuffer(b"".join(a.astype("<f4").tobytes() for _, a in weights), "<u4").tolist()
    for as_string in (True, False):
        spec = {"modelTopology": SEQ_TOPOLOGY, "weightSpecs": specs, "format": "layers-model"}
        doc = {"name": "t", "inputShape": [10, 9, 2], "modelJSON": json.dumps(spec) if as_string else spec,
               "weights": words}
        path = tmp_path / "flat.json"
        path.write_text(json.dumps(doc))
        module = import_model(str(path))
        xs = _inputs(module, 1)
        (y,), _ = run_model(module.ops[0], xs)
        assert_close(y, keras_reference(SEQ_TOPOLOGY, dict(weights), xs))


# ----------------------------------------------------------------------------- bad input


def _expect_error(path: Path, *fragments: str) -> None:
    with pytest.raises(CompileError) as e:
        import_model(str(path))
    text = e.value.one_line()
    assert "\n" not in text and str(path) in text, text
    for frag in fragments:
        assert frag in text, text


def test_bad_truncated_and_missing_shards(tmp_path: Path) -> None:
    path, _ = write_tfjs(tmp_path, SEQ_TOPOLOGY, _random_weights(SEQ_TOPOLOGY, 0), "float32")
    shard = tmp_path / "group1-shard2of2.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    _expect_error(path, "truncated")
    shard.unlink()
    _expect_error(path, "group1-shard2of2.bin")


def test_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "model.json"
    p.write_text('{"modelTopology": {"class_name": "Sequential"')
    _expect_error(p, "invalid JSON")
    p.write_text('{"something": 1}')
    _expect_error(p, "neither 'modelTopology' nor 'modelJSON'")
    p.write_text(json.dumps({"format": "graph-model", "modelTopology": {}, "weightsManifest": []}))
    _expect_error(p, "graph-model")
    p.write_text(json.dumps({"modelJSON": {"modelTopology": SEQ_TOPOLOGY, "weightSpecs": []},
                             "weights": [1.5]}))
    _expect_error(p, "32-bit words")


def test_bad_unsupported_layer_and_weights(tmp_path: Path) -> None:
    topo = json.loads(json.dumps(SEQ_TOPOLOGY))
    topo["config"]["layers"].insert(1, _layer("Permute", "perm", dims=[2, 1, 3]))
    weights = _random_weights(SEQ_TOPOLOGY, 0)
    path, _ = write_tfjs(tmp_path, topo, weights, "float32")
    _expect_error(path, "layer 'perm'", "Permute is not supported")
    path, _ = write_tfjs(tmp_path, SEQ_TOPOLOGY, [w for w in weights if w[0] != "fc/bias"], "float32")
    _expect_error(path, "layer 'fc'", "expected [kernel, bias]")
