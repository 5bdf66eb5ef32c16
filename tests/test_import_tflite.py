"""TFLite importer: the real .tflite models in ../shared/models, a generated float and int8 model
per operator, the kept quantization parameters, and bad input. Reference: the TFLite interpreter of
ai-edge-litert with the BUILTIN_REF kernels (DESIGN §7): float within 1e-4 * (1 + |y|), int8 equal
or off by one."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from shared_models import MODELS

from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.importers import tflite
from ml4f.compiler.ir import Module
from ml4f.compiler.types import QuantType, TensorType, f16, i32
from ml4f.dialects import layer
from ml4f.dialects.layer import run_model

litert = pytest.importorskip("ai_edge_litert.interpreter")


def interpreter(path_or_bytes: Path | bytes) -> litert.Interpreter:
    src = path_or_bytes
    kw = {"model_content": src} if isinstance(src, bytes) else {"model_path": str(src)}
    it = litert.Interpreter(**kw, experimental_op_resolver_type=litert.OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    return it


def random_input(detail: dict, rng: np.random.Generator) -> np.ndarray:
    if detail["dtype"] == np.int8:
        return rng.integers(-128, 128, size=detail["shape"]).astype(np.int8)
    return rng.uniform(-1.5, 1.5, size=detail["shape"]).astype(np.float32)


def compare(module: Module, source: Path | bytes, samples: int = 2, seed: int = 0) -> float:
    """Run the imported model and the interpreter on random inputs; returns the max error (float:
    relative to 1 + |y|; int8: in units of the last place) after asserting DESIGN §7's tolerance."""
    it = interpreter(source)
    ins, outs = it.get_input_details(), it.get_output_details()
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(samples):
        xs = [random_input(d, rng) for d in ins]
        for d, x in zip(ins, xs):
            it.set_tensor(d["index"], x)
        it.invoke()
        ys, _ = run_model(module.ops[0], xs)
        for d, y in zip(outs, ys):
            ref = it.get_tensor(d["index"])
            assert y.dtype == ref.dtype and y.size == ref.size, (y.dtype, y.shape, ref.dtype, ref.shape)
            y = y.reshape(ref.shape)
            if ref.dtype == np.int8:
                err = float(np.max(np.abs(y.astype(np.int32) - ref.astype(np.int32))))
                assert err <= 1, f"int8 output differs by {err} from TFLite"
            else:
                rel = np.abs(y.astype(np.float64) - ref) / (1 + np.abs(ref.astype(np.float64)))
                err = float(rel.max())
                assert err <= 1e-4, f"max relative error {err:.3g}"
            worst = max(worst, err)
    return worst


def op_names(module: Module) -> list[str]:
    return [op.name for op in module.ops[0].body.block.ops]


def need(rel: str) -> Path:
    path = MODELS / rel
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


# ----------------------------------------------------------------------------- real models

FLOAT_MODELS = ["mlperf_tiny/pretrainedResnet.tflite", "mlperf_tiny/vww_96_float.tflite",
                "tinymaix/mnist_valid_f.tflite", "tinymaix/mnist_resnet_f.tflite",
                "tflite_micro/hello_world_float.tflite"]
INT8_MODELS = ["mlperf_tiny/kws_ref_model.tflite", "mlperf_tiny/pretrainedResnet_quant.tflite",
               "mlperf_tiny/vww_96_int8.tflite", "tinymaix/mnist_valid_q.tflite",
               "tinymaix/mnist_resnet_q.tflite", "tflite_micro/hello_world_int8.tflite"]


@pytest.mark.parametrize("rel", FLOAT_MODELS + INT8_MODELS)
def test_real_model_matches_tflite(rel: str) -> None:
    path = need(rel)
    t0 = time.perf_counter()
    module = tflite.load(str(path))
    seconds = time.perf_counter() - t0
    assert seconds < 2.0, f"import took {seconds:.2f} s"
    big = path.stat().st_size > 200_000
    compare(module, path, samples=1 if big else 3)


def test_kws_int8_keeps_quantization_exactly() -> None:
    """Every weight, bias and activation type carries TFLite's scales, zero points and axis bit for bit."""
    path = need("mlperf_tiny/kws_ref_model.tflite")
    module = tflite.load(str(path))
    it = interpreter(path)
    details = it.get_tensor_details()
    tfl_ops = [o for o in it._get_ops_details()
               if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    ours = [op for op in module.ops[0].layers
            if isinstance(op, (layer.Conv2D, layer.DepthwiseConv2D, layer.Dense))]
    assert len(ours) == len(tfl_ops) == 10  # CONV_2D x5, DEPTHWISE_CONV_2D x4, FULLY_CONNECTED
    for op, t in zip(ours, tfl_ops):
        x_i, k_i, b_i = (int(i) for i in t["inputs"])
        k = op.kernel
        q = details[k_i]["quantization_parameters"]
        assert isinstance(k.type.elem, QuantType)
        assert k.type.elem.scales == tuple(float(s) for s in q["scales"])
        assert k.type.elem.zero_points == tuple(int(z) for z in q["zero_points"])
        if len(q["scales"]) > 1:
            # TFLite's depthwise [1, KH, KW, C*M] is [KH, KW, C*M] here: the axis moves down by one.
            shift = 1 if isinstance(op, layer.DepthwiseConv2D) else 0
            assert k.type.elem.axis == q["quantized_dimension"] - shift
        np.testing.assert_array_equal(k.array(), it.get_tensor(k_i).reshape(k.type.shape))
        assert op.bias.type.elem == i32
        np.testing.assert_array_equal(op.bias.array(), it.get_tensor(b_i))
        out_q = details[int(t["outputs"][0])]["quantization_parameters"]
        assert op.out_type.quant.scales == (float(out_q["scales"][0]),)
        assert op.out_type.quant.zero_points == (int(out_q["zero_points"][0]),)
        in_q = details[x_i]["quantization_parameters"]
        assert op.in_type.quant.scales == (float(in_q["scales"][0]),)


def test_real_model_structure() -> None:
    module = tflite.load(str(need("mlperf_tiny/kws_ref_model.tflite")))
    names = op_names(module)
    assert names.count("layer.conv2d") == 5 and names.count("layer.depthwise_conv2d") == 4
    assert names[-3:] == ["layer.dense", "layer.softmax", "layer.output"]
    inp = module.ops[0].inputs[0].result.type
    assert inp.shape == (1, 49, 10, 1) and isinstance(inp.elem, QuantType)


# ----------------------------------------------------------------------------- generated models


def _builders(keras: object) -> dict[str, tuple[Callable[[], object], list[str]]]:
    """name -> (Keras model factory, layer ops the import must contain)."""
    L = keras.layers

    def seq(shape: tuple[int, ...], *layers: object) -> object:
        x = keras.Input(shape)
        y = x
        for lay in layers:
            y = lay(y)
        return keras.Model(x, y)

    def two(op: Callable[[list[object]], object]) -> object:
        x = keras.Input((6, 6, 3))
        a = L.Conv2D(4, 3, padding="same")(x)
        b = L.Conv2D(4, 1)(x)
        return keras.Model(x, op([a, b]))

    return {
        "conv_same_stride_relu": (lambda: seq((9, 9, 3), L.Conv2D(6, 3, strides=2, padding="same",
                                                                  activation="relu")), ["layer.conv2d"]),
        "conv_valid_dilated_relu6": (
            lambda: seq((10, 10, 2), L.Conv2D(5, 3, dilation_rate=2, activation="relu6")), ["layer.conv2d"]),
        "depthwise_mult2": (lambda: seq((8, 8, 3), L.DepthwiseConv2D(3, depth_multiplier=2, padding="same")),
                            ["layer.depthwise_conv2d"]),
        "dense_flatten": (lambda: seq((4, 4, 3), L.Flatten(), L.Dense(7)), ["layer.reshape", "layer.dense"]),
        "avg_pool_same": (lambda: seq((7, 7, 3), L.AveragePooling2D(2, padding="same")),
                          ["layer.avg_pool2d"]),
        "max_pool": (lambda: seq((9, 9, 3), L.MaxPooling2D(3, strides=2)), ["layer.max_pool2d"]),
        "global_avg_pool": (lambda: seq((5, 5, 4), L.GlobalAveragePooling2D()), ["layer.global_avg_pool"]),
        "softmax": (lambda: seq((10,), L.Dense(6), L.Softmax()), ["layer.softmax"]),
        "add": (lambda: two(L.Add()), ["layer.add"]),
        "sub": (lambda: two(L.Subtract()), ["layer.sub"]),
        "mul": (lambda: two(L.Multiply()), ["layer.mul"]),
        "concat": (lambda: two(L.Concatenate()), ["layer.concat"]),
        "zero_pad": (lambda: seq((5, 5, 2), L.ZeroPadding2D(((1, 2), (0, 1))), L.Conv2D(3, 2)),
                     ["layer.zero_pad"]),
        "relu": (lambda: seq((4, 4, 3), L.ReLU()), ["layer.relu"]),
        "relu6": (lambda: seq((4, 4, 3), L.ReLU(max_value=6.0)), ["layer.relu6"]),
        "sigmoid": (lambda: seq((4, 4, 3), L.Activation("sigmoid")), ["layer.sigmoid"]),
        "tanh": (lambda: seq((4, 4, 3), L.Activation("tanh")), ["layer.tanh"]),
        "hard_swish": (lambda: seq((4, 4, 3), L.Conv2D(3, 1), L.Activation("hard_swish")),
                       ["layer.hard_swish"]),
        "leaky_relu": (lambda: seq((4, 4, 3), L.LeakyReLU(negative_slope=0.2)), ["layer.leaky_relu"]),
        "reshape": (lambda: seq((4, 6), L.Reshape((2, 12)), L.Dense(3)), ["layer.reshape"]),
    }


@pytest.fixture(scope="session")
def converted(tf: object, keras: object) -> Callable[[str, str], bytes]:
    """Converts a generated Keras model to TFLite (float, int8, or int8 with float I/O), once."""
    cache: dict[tuple[str, str], bytes] = {}
    builders = _builders(keras)

    def get(name: str, kind: str) -> bytes:
        if (name, kind) not in cache:
            keras.utils.set_random_seed(1)
            model = builders[name][0]()
            rng = np.random.default_rng(1)
            for w in model.weights:  # random biases too, not Keras's zeros
                w.assign(rng.normal(0, 0.5, tuple(w.shape)).astype(np.float32))
            cache[(name, kind)] = convert_keras(tf, model, kind)
        return cache[(name, kind)]

    return get


def convert_keras(tf: object, model: object, kind: str = "float") -> bytes:
    """TFLite flatbuffer of a Keras model with a fixed batch of 1."""
    shape = (1, *model.input_shape[1:])
    fn = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    if kind == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind != "float":
        rng = np.random.default_rng(0)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([rng.uniform(-1.5, 1.5, shape).astype(np.float32)]
                                               for _ in range(16))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if kind == "int8":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    return conv.convert()


GENERATED = ["conv_same_stride_relu", "conv_valid_dilated_relu6", "depthwise_mult2", "dense_flatten",
             "avg_pool_same", "max_pool", "global_avg_pool", "softmax", "add", "sub", "mul", "concat",
             "zero_pad", "relu", "relu6", "sigmoid", "tanh", "hard_swish", "leaky_relu", "reshape"]


@pytest.mark.parametrize("kind", ["float", "int8"])
@pytest.mark.parametrize("name", GENERATED)
def test_generated_op(name: str, kind: str, converted: Callable[[str, str], bytes], keras: object) -> None:
    flat = converted(name, kind)
    module = tflite.load_bytes(flat, f"{name}.tflite")
    names = op_names(module)
    for want in _builders(keras)[name][1]:
        assert want in names, f"{want} missing in {names}"
    if kind == "int8":
        assert all(isinstance(op.out_type.elem, QuantType) for op in module.ops[0].layers)
    compare(module, flat, samples=3)


def test_int8_with_float_edges(converted: Callable[[str, str], bytes]) -> None:
    """Full-integer model with float input and output: QUANTIZE and DEQUANTIZE at the edges."""
    flat = converted("conv_same_stride_relu", "int8_float_io")
    module = tflite.load_bytes(flat, "edges.tflite")
    names = op_names(module)
    assert names[1] == "layer.quantize" and names[-2] == "layer.dequantize", names
    assert module.ops[0].inputs[0].result.type.elem == module.ops[0].output.operands[0].type.elem
    compare(module, flat, samples=3)


@pytest.mark.parametrize("name", ["conv_same_stride_relu", "depthwise_mult2", "dense_flatten"])
def test_float16_weights_stay_f16(name: str, converted: Callable[[str, str], bytes]) -> None:
    """Float16-quantized models store f16 weights behind DEQUANTIZE: they become f16 weights."""
    flat = converted(name, "float16")
    module = tflite.load_bytes(flat, f"{name}_f16.tflite")
    main = next(op for op in module.ops[0].layers if hasattr(op, "kernel"))
    assert main.kernel.type.elem == f16 and "layer.dequantize" not in op_names(module)
    compare(module, flat, samples=2)


def test_two_inputs_two_outputs(tf: object, keras: object) -> None:
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(5)(a), keras.layers.Dense(3)(b)])
    model = keras.Model([a, b], [keras.layers.Dense(2)(h), keras.layers.Activation("tanh")(h)])
    fn = tf.function(lambda x, y: model([x, y])).get_concrete_function(
        tf.TensorSpec((1, 6), tf.float32), tf.TensorSpec((1, 4), tf.float32))
    flat = tf.lite.TFLiteConverter.from_concrete_functions([fn]).convert()
    module = tflite.load_bytes(flat, "two.tflite")
    assert len(module.ops[0].inputs) == 2 and len(module.ops[0].output.operands) == 2
    compare(module, flat, samples=2)


def test_constant_operands_float(tf: object, keras: object) -> None:
    """x * c + d with constants (Rescaling, a per-channel Lambda) become exact per-channel affine
    batch_norm ops in float models."""
    vec = np.array([0.5, -2.0, 3.25], np.float32)
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Rescaling(scale=0.37, offset=-0.2),
                              keras.layers.Lambda(lambda t: t * vec - vec)])
    flat = convert_keras(tf, model)
    module = tflite.load_bytes(flat, "rescale.tflite")
    assert set(op_names(module)[1:-1]) == {"layer.batch_norm"}
    compare(module, flat, samples=2)


def test_progress_is_reported(converted: Callable[[str, str], bytes]) -> None:
    calls: list[tuple[str, int, int]] = []
    tflite.load_bytes(converted("add", "float"), "add.tflite", progress=lambda *a: calls.append(a))
    assert calls and calls[-1][1] == calls[-1][2] == len(calls)


# ----------------------------------------------------------------------------- bad input


def error_of(path: str) -> str:
    with pytest.raises(CompileError) as e:
        tflite.load(path)
    line = e.value.one_line()
    assert "\n" not in line
    return line


def test_lstm_refused_naming_the_op() -> None:
    msg = error_of(str(need("tflite_micro/micro_speech_lstm.tflite")))
    assert "micro_speech_lstm.tflite" in msg and "UNIDIRECTIONAL_SEQUENCE_LSTM (operator #0)" in msg
    assert "supported: " in msg and "CONV_2D" in msg


def test_custom_ops_refused_naming_them() -> None:
    msg = error_of(str(need("tflite_micro/audio_preprocessor_int8.tflite")))
    assert "custom op SignalWindow (operator #0)" in msg and "custom op SignalRfft" in msg


@pytest.mark.parametrize("cut", [40, 1000, 20000, 40000, -16])
def test_truncated_file(tmp_path: Path, cut: int) -> None:
    raw = need("mlperf_tiny/kws_ref_model.tflite").read_bytes()
    p = tmp_path / "cut.tflite"
    p.write_bytes(raw[:cut])
    msg = error_of(str(p))
    assert "cut.tflite" in msg and ("truncated" in msg or "corrupt" in msg)


def test_wrong_format(tmp_path: Path) -> None:
    p = tmp_path / "model.tflite"
    p.write_bytes(need("onnx/mnist-8.onnx").read_bytes())
    assert "not a TFLite flatbuffer" in error_of(str(p))
    assert "no such file" in error_of(str(tmp_path / "missing.tflite"))


def test_dynamic_shape_refused(tf: object, keras: object) -> None:
    x = keras.Input((None, 4))
    model = keras.Model(x, keras.layers.Dense(3)(x))
    fn = tf.function(lambda t: model(t)).get_concrete_function(tf.TensorSpec((1, None, 4), tf.float32))
    flat = tf.lite.TFLiteConverter.from_concrete_functions([fn]).convert()
    with pytest.raises(CompileError, match=r"dynamic shape \[1, -1, 4\]"):
        tflite.load_bytes(flat, "dyn.tflite")


def test_hybrid_quantization_refused(tf: object, keras: object) -> None:
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64)])
    fn = tf.function(lambda t: model(t)).get_concrete_function(tf.TensorSpec((1, 64), tf.float32))
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]  # weights int8, activations float
    with pytest.raises(CompileError, match="hybrid"):
        tflite.load_bytes(conv.convert(), "hybrid.tflite")


def test_dispatcher_uses_this_importer() -> None:
    from ml4f.compiler.importers import import_model

    module = import_model(str(need("tflite_micro/hello_world_int8.tflite")))
    assert [op.name for op in module.ops[0].layers] == ["layer.dense"] * 3
    assert isinstance(module.ops[0].layers[0].kernel.type, TensorType)


def patched(mutate: Callable[[object], None]) -> bytes:
    """hello_world_float rewritten through the schema's object API after `mutate(model)`."""
    import flatbuffers

    from ml4f.compiler.importers import tflite_schema as fb

    model = fb.ModelT.InitFromPackedBuf(need("tflite_micro/hello_world_float.tflite").read_bytes(), 0)
    mutate(model)
    b = flatbuffers.Builder(1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_unsupported_fused_activation_refused() -> None:
    def tanh(m: object) -> None:
        m.subgraphs[0].operators[1].builtinOptions.fusedActivationFunction = 4  # TANH

    with pytest.raises(CompileError) as e:
        tflite.load_bytes(patched(tanh), "patched.tflite")
    msg = e.value.one_line()
    assert "operator #1 FULLY_CONNECTED: fused activation TANH is not supported" in msg
    assert "layer 'sequential/dense_1/" in msg  # the layer is named by its output tensor


def test_several_subgraphs_refused() -> None:
    with pytest.raises(CompileError, match="has 2 subgraphs"):
        tflite.load_bytes(patched(lambda m: m.subgraphs.append(m.subgraphs[0])), "two.tflite")
