"""Keras importer (.h5 and .keras): generated models for every layer type, the real models in
../shared/models, and bad input. References: Keras itself (TensorFlow 2.21, Keras 3) and, for the
TinyMaix model whose .h5 Keras 3 cannot load (a TFOpLambda), the authors' float .tflite run by the
TFLite reference kernels."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from shared_models import MODELS

from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.importers import import_model
from ml4f.dialects.layer import run_model

keras = pytest.importorskip("keras")
L = keras.layers


def assert_close(y: np.ndarray, ref: np.ndarray) -> float:
    """DESIGN §7 float tolerance: |err| <= 1e-4 * (1 + |y|) everywhere; returns the max error."""
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    err = np.abs(y - ref)
    bad = err > 1e-4 * (1 + np.abs(ref))
    assert not bad.any(), (f"max error {err.max():.3g} at {np.argwhere(bad)[0]} "
                           f"(|y| max {np.abs(ref).max():.3g})")
    return float(err.max())


def randomize(model: keras.Model, seed: int) -> None:
    """Random weights (non-trivial batch-norm statistics; variances positive)."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(w.shape)
        if "variance" in w.path:
            w.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        else:
            w.assign(rng.normal(0, 0.5, shape).astype(np.float32))


def run_imported(path: Path, xs: list[np.ndarray]) -> list[np.ndarray]:
    module = import_model(str(path))
    outs, _ = run_model(module.ops[0], xs)
    return outs


# ----------------------------------------------------------------------------- generated models


def m_conv2d() -> keras.Model:
    x = keras.Input((12, 10, 3), name="img")
    y = L.Conv2D(6, 3, strides=2, padding="same", activation="relu", name="c1")(x)
    y = L.Conv2D(5, (3, 2), dilation_rate=2, activation="relu6", name="c2")(L.ZeroPadding2D(2, name="zp")(y))
    y = L.BatchNormalization(name="bn")(y)
    y = L.Activation("tanh", name="act")(y)
    y = L.MaxPooling2D(2, name="mp")(y)
    y = L.AveragePooling2D(2, strides=1, padding="same", name="ap")(y)
    y = L.Conv2D(4, 1, use_bias=False, activation="sigmoid", name="c3")(y)
    y = L.Flatten(name="fl")(y)
    y = L.Dropout(0.3, name="drop")(y)
    return keras.Model(x, L.Dense(5, activation="softmax", name="fc")(y), name="conv2d_model")


def m_conv1d() -> keras.Model:
    return keras.Sequential([
        keras.Input((30, 4)),
        L.Conv1D(8, 4, activation="relu", name="c1"),
        L.Conv1D(8, 3, dilation_rate=2, padding="same", name="c2"),
        L.MaxPooling1D(2, name="mp"),
        L.ZeroPadding1D((1, 2), name="zp"),
        L.AveragePooling1D(3, strides=2, name="ap"),
        L.DepthwiseConv1D(3, depth_multiplier=2, padding="same", activation="relu", name="dw"),
        L.SeparableConv1D(6, 3, activation="tanh", name="sep"),
        L.UpSampling1D(2, name="up"),
        L.Cropping1D((1, 2), name="crop"),
        L.GlobalMaxPooling1D(name="gmp"),
        L.Dense(3, activation="sigmoid", name="fc"),
    ], name="conv1d_model")


def m_depthwise() -> keras.Model:
    return keras.Sequential([
        keras.Input((11, 11, 4)),
        L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, padding="same", name="dw1"),
        L.BatchNormalization(center=False, name="bn1"),
        L.ReLU(max_value=6.0, name="relu6"),
        L.DepthwiseConv2D((3, 2), dilation_rate=(1, 2), activation="relu", name="dw2"),
        L.SeparableConv2D(7, 3, padding="same", depth_multiplier=2, activation="relu", name="sep"),
        L.BatchNormalization(scale=False, epsilon=0.01, name="bn2"),
        L.GlobalAveragePooling2D(name="gap"),
        L.Dense(4, name="fc"),
        L.Softmax(name="sm"),
    ], name="dw_model")


def m_graph() -> keras.Model:
    """Residual Add, Subtract, Multiply, Concatenate, padding/cropping/upsampling and activations."""
    x = keras.Input((8, 8, 3), name="x")
    a = L.Conv2D(4, 3, padding="same", name="a")(x)
    b = L.Conv2D(4, 1, name="b")(x)
    s = L.Add(name="add")([a, b])
    d = L.Subtract(name="sub")([a, b])
    m = L.Multiply(name="mul")([s, d, b])
    c = L.Concatenate(name="cat")([L.LeakyReLU(negative_slope=0.1, name="lrelu")(m),
                                    L.ReLU(negative_slope=0.2, name="prelu")(s)])
    c = L.Activation("hard_silu", name="hs")(c)
    c = L.Activation("leaky_relu", name="lr_act")(c)
    c = L.Cropping2D(((1, 0), (2, 1)), name="crop")(c)
    c = L.UpSampling2D((2, 1), name="up")(c)
    c = L.MaxPooling2D((3, 2), strides=(2, 2), padding="same", name="mp")(c)
    g = L.GlobalAveragePooling2D(keepdims=True, name="gap")(c)
    c = L.Multiply(name="scale")([c, g])  # broadcasting over H and W
    r = L.Reshape((-1, 8), name="rs")(c)
    r = L.Dense(6, activation="tanh", name="fc3d")(r)  # Dense on a rank-3 tensor
    r = L.GlobalMaxPooling1D(name="gmp")(r)
    r = L.Concatenate(name="cat2")([r, L.GlobalMaxPooling2D(name="gmp2")(c)])
    return keras.Model(x, L.Dense(3, name="out")(r), name="graph_model")


def m_nested() -> keras.Model:
    """A Sequential used as a layer inside a functional model, two inputs, two outputs, and a layer
    shared by two calls (its second output is node 1 in the config)."""
    inner = keras.Sequential([L.Conv2D(4, 3, name="c_in"), L.BatchNormalization(name="bn_in"),
                              L.ReLU(name="r_in")], name="inner")
    x1 = keras.Input((9, 9, 2), name="x1")
    x2 = keras.Input((7, 7, 4), name="x2")
    y = L.Add(name="join")([inner(x1), x2])
    f = L.Flatten(name="fl")(y)
    shared = L.Dense(5, activation="relu", name="shared")
    s = L.Subtract(name="diff")([shared(f), shared(L.Flatten(name="fl2")(x2))])
    return keras.Model([x1, x2], [L.Dense(3, name="head_a")(s), L.Dense(2, activation="sigmoid",
                                                                         name="head_b")(f)], name="nested")


GENERATED = [m_conv2d, m_conv1d, m_depthwise, m_graph, m_nested]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """Each generated model saved as .h5 and .keras, with inputs and Keras outputs."""
    d = tmp_path_factory.mktemp("keras")
    out = {}
    for i, make in enumerate(GENERATED):
        model = make()
        randomize(model, i)
        rng = np.random.default_rng(100 + i)
        xs = [rng.uniform(-1, 1, (1, *t.shape[1:])).astype(np.float32) for t in model.inputs]
        ys = model(xs if len(xs) > 1 else xs[0], training=False)
        ys = [np.asarray(y) for y in (ys if isinstance(ys, (list, tuple)) else [ys])]
        paths = {}
        for ext in (".h5", ".keras"):
            p = d / f"{make.__name__}{ext}"
            model.save(p)
            paths[ext] = p
        out[make.__name__] = (paths, xs, ys)
    return out


@pytest.mark.parametrize("ext", [".h5", ".keras"])
@pytest.mark.parametrize("name", [m.__name__ for m in GENERATED])
def test_generated_matches_keras(saved: dict, name: str, ext: str) -> None:
    paths, xs, ys = saved[name]
    outs = run_imported(paths[ext], xs)
    assert len(outs) == len(ys)
    for y, ref in zip(outs, ys):
        assert_close(y, ref)


def test_generated_ops_and_locations(saved: dict) -> None:
    paths, _, _ = saved["m_depthwise"]
    model = import_model(str(paths[".keras"])).ops[0]
    # SeparableConv2D becomes depthwise + 1x1 conv; both carry the Keras layer's name.
    dw, pw = [op for op in model.body.block.ops if op.loc.layer == "sep"]
    assert dw.name == "layer.depthwise_conv2d" and dw.depth_multiplier == 2 and dw.padding == "same"
    assert pw.name == "layer.conv2d" and pw.kernel.type.shape == (7, 1, 1, 16) and pw.activation == "relu"
    assert pw.operands[0] is dw.result
    assert all(op.loc.file == str(paths[".keras"]) for op in model.body.block.ops)


def test_float_activations_are_fused_where_the_dialect_allows(saved: dict) -> None:
    paths, _, _ = saved["m_conv2d"]
    ops = import_model(str(paths[".h5"])).ops[0].body.block.ops
    by_layer = {}
    for op in ops:
        by_layer.setdefault(op.loc.layer, []).append(op)
    assert [o.name for o in by_layer["c1"]] == ["layer.conv2d"] and by_layer["c1"][0].activation == "relu"
    assert [o.name for o in by_layer["c3"]] == ["layer.conv2d", "layer.sigmoid"]
    assert [o.name for o in by_layer["fc"]] == ["layer.dense", "layer.softmax"]


# ----------------------------------------------------------------------------- real models


class _DepthwiseNoGroups(L.DepthwiseConv2D):
    """tf.keras 2.9 wrote `groups` into DepthwiseConv2D configs; Keras 3 rejects the argument."""

    def __init__(self, groups: int = 1, **kw):
        super().__init__(**kw)


@pytest.mark.parametrize("rel", ["tinymaix/mnist_valid.h5", "mlperf_tiny/pretrainedResnet.h5",
                                 "tinymaix/vww96.h5"])
def test_real_h5_matches_keras(rel: str) -> None:
    path = MODELS / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    ref_model = keras.models.load_model(path, compile=False,
                                        custom_objects={"DepthwiseConv2D": _DepthwiseNoGroups})
    for seed in range(2):
        x = np.random.default_rng(seed).uniform(0, 1, (1, *ref_model.input_shape[1:])).astype(np.float32)
        (y,) = run_imported(path, [x])
        assert_close(y, np.asarray(ref_model(x, training=False)))


def test_real_mnist_resnet_tfoplambda_matches_tflite() -> None:
    """mnist_resnet.h5 adds with a TFOpLambda (Keras 3 cannot load it): compare with its float .tflite."""
    h5, tfl = MODELS / "tinymaix/mnist_resnet.h5", MODELS / "tinymaix/mnist_resnet_f.tflite"
    if not h5.exists() or not tfl.exists():
        pytest.skip("TinyMaix models not present")
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(str(tfl), experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    module = import_model(str(h5))
    model = module.ops[0]
    assert "layer.add" in [op.name for op in model.body.block.ops]
    fc1 = next(op for op in model.body.block.ops if op.loc.layer == "fc1" and op.name == "layer.dense")
    # The logits before the softmax: the softmax saturates on most inputs and would hide errors.
    logits_idx = next(op["inputs"][0] for op in it._get_ops_details() if op["op_name"] == "SOFTMAX")
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(0, 1, tuple(inp["shape"])).astype(np.float32)
        it.set_tensor(inp["index"], x)
        it.invoke()
        (y,), env = run_model(model, [x], keep=True)
        assert_close(env[id(fc1.result)], it.get_tensor(logits_idx))
        assert_close(y, it.get_tensor(it.get_output_details()[0]["index"]))


def test_import_of_a_1mb_model_is_fast_without_tensorflow(tmp_path: Path) -> None:
    path = MODELS / "tinymaix/vww96.h5"
    if not path.exists():
        pytest.skip("vww96.h5 not present")
    assert path.stat().st_size > 1_000_000
    code = ("import sys, time; t = time.perf_counter()\n"
            "from ml4f.compiler.importers import import_model\n"
            f"m = import_model({str(path)!r})\n"
            "print(time.perf_counter() - t, 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = proc.stdout.split()
    seconds, tf_loaded, keras_loaded = float(out[0]), out[1], out[2]
    assert tf_loaded == "False" and keras_loaded == "False"
    assert seconds < 2.0, f"import took {seconds:.2f} s"


# ----------------------------------------------------------------------------- bad input


def _edit_config(src: Path, dst: Path, edit) -> Path:
    """A copy of an .h5 model whose model_config JSON went through `edit(config)`."""
    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        edit(cfg)
        f.attrs["model_config"] = json.dumps(cfg)
    return dst


def _layer(cfg: dict, name: str) -> dict:
    return next(lay for lay in cfg["config"]["layers"] if lay["config"].get("name") == name)["config"]


def _expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(CompileError) as e:
        import_model(str(path))
    text = e.value.one_line()
    assert "\n" not in text
    for frag in fragments:
        assert frag in text, text
    return text


def test_bad_truncated_h5(saved: dict, tmp_path: Path) -> None:
    src = saved["m_conv2d"][0][".h5"]
    data = src.read_bytes()
    for cut in (len(data) // 2, 600):
        p = tmp_path / f"cut{cut}.h5"
        p.write_bytes(data[:cut])
        _expect_error(p, str(p), "error:")


def test_bad_truncated_keras_zip(saved: dict, tmp_path: Path) -> None:
    data = saved["m_conv2d"][0][".keras"].read_bytes()
    p = tmp_path / "cut.keras"
    p.write_bytes(data[: len(data) - 3000])
    _expect_error(p, str(p), "corrupt")


def test_bad_wrong_extension(saved: dict, tmp_path: Path) -> None:
    p = tmp_path / "model.tflite"
    shutil.copy(saved["m_conv2d"][0][".h5"], p)
    _expect_error(p, str(p), "'.tflite'", "Keras")
    q = tmp_path / "model.h5"
    q.write_text('{"modelTopology": {}}')
    _expect_error(q, str(q), "TF.js")
    r = tmp_path / "empty.h5"
    r.write_bytes(b"")
    _expect_error(r, "empty file")
    _expect_error(tmp_path / "missing.h5", "no such file")


def test_bad_weights_only_file(tmp_path: Path) -> None:
    model = m_conv1d()
    p = tmp_path / "w.weights.h5"
    model.save_weights(p)
    _expect_error(p, "no model_config")


def test_bad_unsupported_layer(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((6, 3)), L.LSTM(4, name="lstm_1"), L.Dense(2)])
    p = tmp_path / "lstm.h5"
    model.save(p)
    _expect_error(p, "layer 'lstm_1'", "LSTM is not supported", "Conv2D")


@pytest.mark.parametrize("layer,key,value,message", [
    ("c1", "data_format", "channels_first", "channels_first"),
    ("c1", "padding", "causal", "padding 'causal'"),
    ("c2", "strides", [2, 2], "strides > 1 together with dilation"),
    ("c1", "activation", "elu", "activation 'elu' is not supported"),
    ("bn", "axis", 1, "axis 1"),
    ("c1", "groups", 3, "groups=3"),
])
def test_bad_unsupported_attributes(saved: dict, tmp_path: Path, layer: str, key: str, value,
                                    message: str) -> None:
    p = _edit_config(saved["m_conv2d"][0][".h5"], tmp_path / "edited.h5",
                     lambda cfg: _layer(cfg, layer).__setitem__(key, value))
    _expect_error(p, f"layer '{layer}'", message)


def test_bad_unknown_input_dimension(saved: dict, tmp_path: Path) -> None:
    p = _edit_config(saved["m_conv2d"][0][".h5"], tmp_path / "dyn.h5",
                     lambda cfg: _layer(cfg, "img").__setitem__("batch_shape", [None, None, 10, 3]))
    _expect_error(p, "layer 'img'", "unknown dimensions")


def test_bad_weight_mismatch(saved: dict, tmp_path: Path) -> None:
    p = _edit_config(saved["m_conv2d"][0][".h5"], tmp_path / "nobias.h5",
                     lambda cfg: _layer(cfg, "c2").__setitem__("use_bias", False))
    _expect_error(p, "layer 'c2'", "expected [kernel]")


def test_cli_emit_l4f_roundtrip(saved: dict, tmp_path: Path) -> None:
    """`ml4f --emit l4f` writes the IR with weights; ml4f-run on it gives Keras's output."""
    paths, xs, ys = saved["m_conv2d"]
    from ml4f.tools.ml4f import main

    assert main([str(paths[".keras"]), "--emit", "l4f", "-o", str(tmp_path), "-b", "net"]) == 0
    text = (tmp_path / "net.l4f").read_text()
    assert "layer.model @m_conv2d" in text and "resources {" in text and "__elided__" not in text
    np.save(tmp_path / "x.npy", xs[0][0])
    from ml4f.tools.ml4f_run import main as run_main

    assert run_main([str(tmp_path / "net.l4f"), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 0
    assert_close(np.load(tmp_path / "y.npy"), ys[0])


def test_dispatch_sniffs_content(saved: dict, tmp_path: Path) -> None:
    from ml4f.compiler.importers import detect_format

    real = {"mlperf_tiny/kws_ref_model.tflite": "tflite", "onnx/mnist-8.onnx": "onnx",
            "mlperf_tiny/kws_ref_model_savedmodel": "savedmodel", "tfjs/mlp.json": "tfjs",
            "ml4f/accel.json": "tfjs", "tinymaix/vww96.h5": "keras"}
    for rel, fmt in real.items():
        if (MODELS / rel).exists():
            assert detect_format(str(MODELS / rel)) == fmt, rel
    assert detect_format(str(saved["m_conv1d"][0][".keras"])) == "keras"
    # Without a known extension the content decides.
    odd = tmp_path / "model.bin"
    shutil.copy(saved["m_conv1d"][0][".h5"], odd)
    assert detect_format(str(odd)) == "keras"
    (tmp_path / "m.l4f").write_text("layer.model @m {\n  %x = layer.input : tensor<1x2xf32>\n"
                                    "  layer.output %x\n}\n")
    assert detect_format(str(tmp_path / "m.l4f")) == "l4f"
    assert import_model(str(tmp_path / "m.l4f")).ops[0].name == "layer.model"
    junk = tmp_path / "junk.dat"
    junk.write_bytes(bytes(range(7, 200)))
    _expect_error(junk, "unrecognized content")
    _expect_error(tmp_path, "not a SavedModel")


def test_shared_layer_weights_are_stored_once(saved: dict) -> None:
    for ext in (".h5", ".keras"):
        module = import_model(str(saved["m_nested"][0][ext]))
        calls = [op for op in module.ops[0].body.block.ops if op.loc.layer == "shared"]
        assert len(calls) == 2 and calls[0].kernel is calls[1].kernel and calls[0].bias is calls[1].bias
        assert [r.name for r in module.resources()].count("shared.kernel") == 1
