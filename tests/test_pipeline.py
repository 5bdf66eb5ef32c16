"""The whole compile (compiler/pipeline.py): every shared float model compiles, validates and matches
its framework (or the layer references, which the importer tests prove against the framework) in
f32 and f16 when run in the emulator; binaries are deterministic; a wrong binary is caught and the
first differing layer named; --eval's accuracy and confusion matrix; the convert-weights pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shared_models import MODELS

from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.importers import import_model
from ml4f.compiler.ir import Resource
from ml4f.compiler.passes import PassManager, parse_pipeline
from ml4f.compiler.pipeline import (
    Options,
    compile_model,
    evaluate,
    format_eval,
    load_eval_data,
    run,
    validate,
)
from ml4f.compiler.types import FloatType, f16
from ml4f.dialects.layer import run_model

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gestures.tfjsmodel.json"

SMALL = ["ml4f/gestures.tfjsmodel.json", "ml4f/accel.json", "ml4f/button.json", "tfjs/mnist_cnn.json",
         "tfjs/gesture_1d.json", "tfjs/dwsep_cnn.json", "tfjs/mlp.json", "tflite_micro/hello_world_float.tflite",
         "tinymaix/mnist_valid.h5", "tinymaix/mnist_valid_f.tflite", "tinymaix/mnist_resnet.h5",
         "tinymaix/mnist_resnet_f.tflite", "onnx/mnist-8.onnx"]
# Models of millions of MACs run once per file, the precisions alternating over the two files of each
# network (the f16 SavedModel compile is in test_cli.py), to keep the suite's time bounded.
LARGE = [("mlperf_tiny/pretrainedResnet.tflite", "f32"), ("mlperf_tiny/pretrainedResnet.h5", "f16"),
         ("mlperf_tiny/vww_96_float.tflite", "f16"), ("tinymaix/vww96.h5", "f32"),
         ("mlperf_tiny/kws_ref_model_savedmodel", "f32")]


def need(rel: str) -> Path:
    path = MODELS / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def f16_reference_module(path: Path):
    """The model as the f16 binary must compute it, built independently of convert-weights: batch
    norms folded in float, then every float weight rounded to f16 (nearest even) and widened."""
    module = import_model(str(path))
    PassManager(parse_pipeline("canonicalize,fold-batchnorm")).run(Context(), module)
    for op in module.walk():
        for key, v in list(op.attributes.items()):
            if isinstance(v, Resource) and isinstance(v.type.elem, FloatType):
                op.attributes[key] = Resource(v.name, v.type, v.array().astype(np.float16).astype(np.float32))
    return module


def framework_output(path: Path, x: np.ndarray) -> np.ndarray | None:
    """The original framework's output where it runs without TensorFlow: TFLite (BUILTIN_REF
    kernels, DESIGN §7) and onnxruntime; None for the others."""
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        it.allocate_tensors()
        d = it.get_input_details()[0]
        it.set_tensor(d["index"], x.reshape(d["shape"]).astype(np.float32))
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"])
    if path.suffix == ".onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        xin = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x
        return sess.run(None, {inp.name: xin.reshape(inp.shape).astype(np.float32)})[0]
    return None


def assert_close(got: np.ndarray, want: np.ndarray, extra: float = 0.0) -> float:
    got = np.asarray(got, np.float64).reshape(-1)
    want = np.asarray(want, np.float64).reshape(-1)
    err = np.abs(got - want)
    bound = 1e-4 * (1 + np.abs(want)) + extra
    assert np.all(err <= bound), f"max |err| {err.max():.3g} (bound there {bound[np.argmax(err / bound)]:.3g})"
    return float(err.max())


def check_model(rel: str, precision: str, samples: int) -> None:
    path = need(rel)
    float16 = precision == "f16"
    result = compile_model(str(path), Options(float16=float16))
    assert result.validation is not None and result.validation["passed"]
    assert result.validation["max_scaled_err"] <= 1.0
    assert result.cycles > 0 and result.code_bytes > 0 and result.arena_bytes > 0
    ref_module = f16_reference_module(path) if float16 else import_model(str(path))
    rng = np.random.default_rng(99)
    shape = (1, *result.input_shape)
    for _ in range(samples):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        got = run(result, x)["output"]
        (want,), _ = run_model(ref_module.ops[0], [x])
        assert_close(got, want, 1e-4 if float16 else 0.0)
        fw = framework_output(path, x)
        if fw is not None and not float16:
            assert_close(got, fw)


@pytest.mark.parametrize("precision", ["f32", "f16"])
@pytest.mark.parametrize("rel", SMALL)
def test_small_models_compile_validate_and_match(rel: str, precision: str) -> None:
    check_model(rel, precision, samples=2)


@pytest.mark.parametrize("rel,precision", LARGE)
def test_large_models_compile_validate_and_match(rel: str, precision: str) -> None:
    check_model(rel, precision, samples=1)


def test_refused_models_name_the_reason() -> None:
    int8 = need("mlperf_tiny/kws_ref_model.tflite")
    with pytest.raises(CompileError, match="int8 code generation is not available yet"):
        compile_model(str(int8))
    with pytest.raises(CompileError, match="--int8: int8 code generation is not available yet"):
        compile_model(str(EXAMPLE), Options(int8=True))
    with pytest.raises(CompileError, match="UNIDIRECTIONAL_SEQUENCE_LSTM"):
        compile_model(str(need("tflite_micro/micro_speech_lstm.tflite")))
    with pytest.raises(CompileError, match="unknown target"):
        compile_model(str(EXAMPLE), Options(target="cortex-a53"))


@pytest.fixture(scope="module")
def gestures():
    return compile_model(str(EXAMPLE))


def test_deterministic_binaries(gestures) -> None:
    again = compile_model(str(EXAMPLE))
    assert again.data == gestures.data and again.code_text == gestures.code_text
    half = compile_model(str(EXAMPLE), Options(float16=True))
    assert half.data != gestures.data and half.weights_bytes < gestures.weights_bytes
    assert compile_model(str(EXAMPLE), Options(float16=True)).data == half.data


def test_deterministic_binaries_with_many_store_bases() -> None:
    """mnist_resnet's kernels defer stores to several output pointers at once; they go out in
    the order of their first store, so two compiles give the same bytes (ordering them by
    object identity did not)."""
    path = str(need("tinymaix/mnist_resnet.h5"))
    first = compile_model(path, Options(validate=False))
    assert compile_model(path, Options(validate=False)).data == first.data


def test_statistics_are_consistent(gestures) -> None:
    r = gestures
    doc = r.to_json()
    for key in ("input_shape", "output_shape", "input_type", "output_type", "arena_bytes", "code_bytes",
                "weights_bytes", "binary_bytes", "macs", "cycles", "stack_bytes", "compile_seconds", "layers",
                "validation"):
        assert key in doc, key
    assert doc["input_shape"] == [50, 3, 1] and doc["output_shape"] == [4]
    assert doc["macs"] == 32_384                 # INDEX.md's count for this model
    assert doc["binary_bytes"] == len(r.data) >= doc["code_bytes"] + doc["weights_bytes"]
    layers = doc["layers"]
    assert [layer["op"] for layer in layers][:2] == ["conv2d+relu+max_pool2d", "conv2d+relu"]
    assert sum(layer["macs"] for layer in layers) == doc["macs"]
    # Layer cycles are parts of the total: only entry and exit code lie outside every layer.
    inside = sum(layer["cycles"] for layer in layers)
    assert 0.95 * doc["cycles"] <= inside <= doc["cycles"]
    assert all(layer["cycles"] > 0 and layer["code_bytes"] > 0 for layer in layers)
    assert sum(layer["code_bytes"] for layer in layers) <= doc["code_bytes"]
    assert sum(layer["weights_bytes"] for layer in layers) <= doc["weights_bytes"]
    # The softmax's exp routine is charged to the softmax layer.
    soft = next(layer for layer in layers if layer["op"] == "softmax")
    assert soft["cycles"] > 4 * 40
    assert doc["validation"]["passed"] and doc["validation"]["samples"] == 3


def _corrupt_bias(result, layer_name: str) -> bytes:
    """The binary with one bias of `layer_name` raised by 100 (found by its unique bytes in the
    weights; a bias reaches every output of its channel, even after a relu)."""
    op = next(o for o in result.model.body.block.ops if o.loc.layer == layer_name and o.get_attr("bias") is not None)
    bias = op.get_attr("bias").array().reshape(-1)
    h = result.binary.header
    blob = result.data[h.weights_offset:]
    for value in bias:
        pattern = np.asarray([value], dtype=bias.dtype).tobytes()
        if blob.count(pattern) == 1:
            at = h.weights_offset + blob.index(pattern)
            bad = np.asarray([float(value) + 100], dtype=bias.dtype).tobytes()
            return result.data[:at] + bad + result.data[at + len(bad):]
    raise AssertionError("no bias with a unique bit pattern")


@pytest.mark.parametrize("layer_name", ["conv2d_Conv2D1", "conv2d_Conv2D2", "dense_Dense1"])
def test_validation_names_the_first_wrong_layer(gestures, layer_name: str) -> None:
    bad = _corrupt_bias(gestures, layer_name)
    with pytest.raises(CompileError) as e:
        validate(gestures, bad)
    msg = e.value.one_line()
    assert f"layer '{layer_name}'" in msg and "differs from its reference" in msg, msg
    assert validate(gestures)["passed"]


def test_eval_accuracy_and_confusion(gestures, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    xs = rng.uniform(-1, 1, (12, 50, 3, 1)).astype(np.float32)
    model = import_model(str(EXAMPLE)).ops[0]
    preds = [int(np.argmax(run_model(model, [x[None]])[0][0])) for x in xs]
    labels = [p if i % 3 else (p + 1) % 4 for i, p in enumerate(preds)]     # every third one wrong
    y = np.eye(4)[labels]
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"x": xs.tolist(), "y": y.tolist()}))
    x, yy = load_eval_data(str(path), gestures)
    ev = evaluate(gestures, x, yy)
    assert ev["accuracy"] == pytest.approx(8 / 12) and ev["samples"] == 12
    conf = np.asarray(ev["confusion"])
    assert conf.sum() == 12 and np.trace(conf) == 8
    for p, label in zip(preds, labels):          # rows: predicted, columns: labelled (ML4F's order)
        assert conf[p, label] >= 1
    text = format_eval(ev)
    assert text.splitlines()[0] == "Accuracy: 0.6667"
    assert all(len(line) == 20 for line in text.splitlines()[1:]) and len(text.splitlines()) == 5


@pytest.mark.parametrize("content,message", [
    ('{"x": [[1]]}', 'must be a JSON object {"x"'),
    ('[1, 2]', 'must be a JSON object {"x"'),
    ('{"x": [], "y": []}', "non-empty lists"),
    ('{"x": [[0.5, 1]], "y": [[1, 0, 0, 0]]}', "has shape [2] (2 values); the model input is [50, 3, 1]"),
    ('{"x": [[0.5, 1]], "y": [[1, 0, 0, 0], [0, 1, 0, 0]]}', '"x" has 1 samples but "y" has 2'),
    ('{"x": "abc", "y": [[1]]}', "must be non-empty lists"),
    ("{not json", "not valid JSON"),
])
def test_bad_eval_files(gestures, tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(CompileError) as e:
        load_eval_data(str(path), gestures)
    assert message in e.value.one_line() and str(path) in e.value.one_line()
    good_x = np.zeros((1, 150)).tolist()
    path.write_text(json.dumps({"x": good_x, "y": [[1, 0, 0]]}))
    with pytest.raises(CompileError, match="labels must be one-hot"):
        load_eval_data(str(path), gestures)


def test_convert_weights_pass() -> None:
    module = import_model(str(EXAMPLE))
    before = {r.name: r.array().copy() for r in module.resources()}
    PassManager(parse_pipeline("convert-weights{type=f16}")).run(Context(), module)
    after = {r.name: r for r in module.resources()}
    assert set(after) == set(before)
    for name, r in after.items():
        assert r.type.elem == f16
        # numpy's float16 cast rounds to nearest even, as DESIGN §7 asks
        assert np.array_equal(r.array(), before[name].astype(np.float16))
    with pytest.raises(CompileError, match="must be f16 or f32"):
        PassManager(parse_pipeline("convert-weights{type=i8}")).run(Context(), module)
    # Back to f32 keeps the f16-rounded values.
    PassManager(parse_pipeline("convert-weights{type=f32}")).run(Context(), module)
    r = next(iter(module.resources()))
    assert r.type.elem != f16 and np.array_equal(r.array(), before[r.name].astype(np.float16).astype(np.float32))
