"""The int8 layer references (dialects/layer_int8.py) against the TFLite interpreter, bit for bit.

Each case builds a one-layer Keras model with random weights, converts it to a full-integer int8
.tflite (random representative data, int8 input and output, batch 1), and runs it with the TFLite
interpreter's reference kernels (BUILTIN_REF). The equivalent layer op is built from the
interpreter's own tensors (weights, biases, scales, zero points), run with `run_model`, and its
int8 output must equal TFLite's on random int8 inputs (DESIGN §7 would allow one unit off; these
kernels reproduce TFLite exactly, and the tests hold them to that).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from shared_models import MODELS as SHARED_MODELS

from ml4f.compiler.builder import ModelBuilder, quant
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.types import QuantType, f32, i32
from ml4f.dialects import layer, layer_int8

SAMPLES = 4  # random int8 inputs per converted model
pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")


# ----------------------------------------------------------------------------- fixed-point primitives


def test_quantize_multiplier_matches_tflite_definition() -> None:
    assert layer_int8.quantize_multiplier(0.0) == (0, 0)
    assert layer_int8.quantize_multiplier(0.5) == (1 << 30, 0)
    assert layer_int8.quantize_multiplier(1.0) == (1 << 30, 1)
    assert layer_int8.quantize_multiplier(0.75) == (3 << 29, 0)
    # q rounds up to 2^31: TFLite halves it and bumps the shift.
    assert layer_int8.quantize_multiplier(1.0 - 2.0 ** -40) == (1 << 30, 1)
    assert layer_int8.quantize_multiplier(2.0 ** -40) == (0, 0)
    rng = np.random.default_rng(0)
    for real in rng.uniform(1e-6, 4.0, 200):
        m, s = layer_int8.quantize_multiplier(real)
        assert (1 << 30) <= m < (1 << 31)
        assert abs(m * 2.0 ** (s - 31) - real) <= real * 2.0 ** -30


def test_rounding_primitives_on_hand_worked_values() -> None:
    r = layer_int8.rdbpot(np.array([3, -3, 5, -5, 6, -6, 7, -7]), 1)
    assert r.tolist() == [2, -2, 3, -3, 3, -3, 4, -4]          # ties away from zero
    assert layer_int8.rdbpot(np.array([5, -5, 6, -6]), 2).tolist() == [1, -1, 2, -2]
    m = layer_int8.INT32_MIN
    assert layer_int8.srdhm(np.array([m]), m).tolist() == [layer_int8.INT32_MAX]   # saturates
    assert layer_int8.srdhm(np.array([1 << 30, -(1 << 30), 3]), 1 << 30).tolist() == [1 << 29, -(1 << 29), 2]
    # 1.5 scaled by 0.5 (m = 2^30, shift 0) is 0.75 -> 1; -1.5 -> -1 (ties away from zero on both).
    assert layer_int8.mbqm(np.array([3, -3]), 1 << 30, -1).tolist() == [1, -1]
    assert layer_int8.round_half_away(np.array([0.5, -0.5, 1.5, 2.5])).tolist() == [1, -1, 2, 3]


def test_fixed_point_exp_and_reciprocal_track_the_real_functions() -> None:
    x = np.linspace(-31.9, 0, 400)
    raw = np.round(x * 2.0 ** 26).astype(np.int64)
    e = layer_int8.exp_on_negative_values(raw, 5) / 2.0 ** 31
    assert np.abs(e - np.exp(raw / 2.0 ** 26)).max() < 5e-7
    a = np.linspace(0, 0.999, 300)
    r = layer_int8.one_over_one_plus_x(np.round(a * 2.0 ** 31).astype(np.int64)) / 2.0 ** 31
    assert np.abs(r - 1 / (1 + a)).max() < 1e-8


# ----------------------------------------------------------------------------- TFLite harness


@dataclass
class Case:
    """A single-layer Keras model to convert, and how to rebuild it as a layer op."""

    id: str
    keras: Callable[[ModuleType, list[Any]], Any]      # (keras, inputs) -> output tensor
    shapes: list[tuple[int, ...]]
    op: type[layer.LayerOp]
    tfl: str                                            # the TFLite op holding the weights/options
    attrs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    kernel: str | None = None                           # "conv2d" | "dw2d" | "conv1d" | "dw1d" | "dense"
    float_io: bool = False                              # float model input/output (QUANTIZE/DEQUANTIZE)
    ranges: tuple[tuple[float, float], ...] = ((-1.0, 1.5), (-3.0, 0.5))  # representative data per input
    converter: dict[str, Any] = field(default_factory=dict)  # extra TFLiteConverter attributes


def _conv_case(id: str, cls: type, kernel: str, shape: tuple[int, ...], make: Callable, seed: int,
               **attrs: Any) -> Case:
    tfl = {"conv2d": "CONV_2D", "conv1d": "CONV_2D", "dw2d": "DEPTHWISE_CONV_2D",
           "dw1d": "DEPTHWISE_CONV_2D", "dense": "FULLY_CONNECTED"}[kernel]
    return Case(id, lambda k, xs: make(k)(xs[0]), [shape], cls, tfl, attrs, seed, kernel)


CASES: list[Case] = [
    # convolutions: strides, paddings, dilation, fused activations
    _conv_case("conv2d_same_relu", layer.Conv2D, "conv2d", (1, 9, 9, 3),
               lambda k: k.layers.Conv2D(8, 3, padding="same", activation="relu"), 1,
               padding="same", activation="relu"),
    _conv_case("conv2d_valid_s2", layer.Conv2D, "conv2d", (1, 11, 10, 4),
               lambda k: k.layers.Conv2D(6, 3, strides=2), 2, strides=(2, 2)),
    _conv_case("conv2d_same_s2_relu6", layer.Conv2D, "conv2d", (1, 10, 9, 2),
               lambda k: k.layers.Conv2D(5, (5, 3), strides=2, padding="same", activation="relu6"), 3,
               strides=(2, 2), padding="same", activation="relu6"),
    _conv_case("conv2d_dilated", layer.Conv2D, "conv2d", (1, 12, 12, 3),
               lambda k: k.layers.Conv2D(4, 3, dilation_rate=2, padding="same"), 4,
               padding="same", dilation=(2, 2)),
    _conv_case("conv2d_1x1", layer.Conv2D, "conv2d", (1, 6, 6, 16),
               lambda k: k.layers.Conv2D(12, 1, activation="relu"), 5, activation="relu"),
    _conv_case("dw2d_same_relu", layer.DepthwiseConv2D, "dw2d", (1, 9, 9, 6),
               lambda k: k.layers.DepthwiseConv2D(3, padding="same", activation="relu"), 6,
               padding="same", activation="relu"),
    _conv_case("dw2d_valid_s2_m2", layer.DepthwiseConv2D, "dw2d", (1, 11, 11, 3),
               lambda k: k.layers.DepthwiseConv2D(3, strides=2, depth_multiplier=2), 7,
               strides=(2, 2), depth_multiplier=2),
    _conv_case("dw2d_same_s2_relu6", layer.DepthwiseConv2D, "dw2d", (1, 10, 10, 4),
               lambda k: k.layers.DepthwiseConv2D(5, strides=2, padding="same", activation="relu6"), 8,
               strides=(2, 2), padding="same", activation="relu6"),
    _conv_case("conv1d_same_relu", layer.Conv1D, "conv1d", (1, 20, 3),
               lambda k: k.layers.Conv1D(8, 3, padding="same", activation="relu"), 9,
               padding="same", activation="relu"),
    _conv_case("conv1d_valid_s2", layer.Conv1D, "conv1d", (1, 21, 4),
               lambda k: k.layers.Conv1D(6, 5, strides=2), 10, strides=(2,)),
    _conv_case("dw1d_same", layer.DepthwiseConv1D, "dw1d", (1, 16, 5),
               lambda k: k.layers.DepthwiseConv1D(3, padding="same", depth_multiplier=2), 11,
               padding="same", depth_multiplier=2),
    _conv_case("dense_relu", layer.Dense, "dense", (1, 40),
               lambda k: k.layers.Dense(48, activation="relu"), 12, activation="relu"),
    _conv_case("dense", layer.Dense, "dense", (1, 64),
               lambda k: k.layers.Dense(40), 13),
    _conv_case("dense_relu6", layer.Dense, "dense", (1, 24),
               lambda k: k.layers.Dense(33, activation="relu6"), 14, activation="relu6"),
    _conv_case("dense_3d", layer.Dense, "dense", (1, 6, 20),
               lambda k: k.layers.Dense(16, activation="relu"), 56, activation="relu"),
    Case("dense_per_tensor", lambda k, xs: k.layers.Dense(24, activation="relu")(xs[0]), [(1, 30)],
         layer.Dense, "FULLY_CONNECTED", {"activation": "relu"}, 57, "dense",
         converter={"_experimental_disable_per_channel_quantization_for_dense_layers": True}),
    # pooling
    Case("avg_pool2d_valid", lambda k, xs: k.layers.AveragePooling2D(2)(xs[0]), [(1, 8, 9, 4)],
         layer.AvgPool2D, "AVERAGE_POOL_2D", {"pool_size": (2, 2), "strides": (2, 2)}, 15),
    Case("avg_pool2d_same", lambda k, xs: k.layers.AveragePooling2D(3, 2, padding="same")(xs[0]),
         [(1, 9, 8, 3)], layer.AvgPool2D, "AVERAGE_POOL_2D",
         {"pool_size": (3, 3), "strides": (2, 2), "padding": "same"}, 16),
    Case("avg_pool1d", lambda k, xs: k.layers.AveragePooling1D(3, 2, padding="same")(xs[0]),
         [(1, 15, 4)], layer.AvgPool1D, "AVERAGE_POOL_2D",
         {"pool_size": (3,), "strides": (2,), "padding": "same"}, 17),
    Case("max_pool2d_valid", lambda k, xs: k.layers.MaxPooling2D(2)(xs[0]), [(1, 8, 8, 5)],
         layer.MaxPool2D, "MAX_POOL_2D", {"pool_size": (2, 2), "strides": (2, 2)}, 18),
    Case("max_pool2d_same", lambda k, xs: k.layers.MaxPooling2D(3, 1, padding="same")(xs[0]),
         [(1, 7, 6, 3)], layer.MaxPool2D, "MAX_POOL_2D",
         {"pool_size": (3, 3), "strides": (1, 1), "padding": "same"}, 19),
    Case("max_pool1d", lambda k, xs: k.layers.MaxPooling1D(2)(xs[0]), [(1, 17, 4)],
         layer.MaxPool1D, "MAX_POOL_2D", {"pool_size": (2,), "strides": (2,)}, 20),
    Case("global_avg2d", lambda k, xs: k.layers.GlobalAveragePooling2D()(xs[0]), [(1, 5, 6, 32)],
         layer.GlobalAvgPool, "MEAN", {}, 21),
    Case("global_avg2d_big", lambda k, xs: k.layers.GlobalAveragePooling2D()(xs[0]), [(1, 12, 11, 24)],
         layer.GlobalAvgPool, "MEAN", {}, 22),
    Case("global_avg1d", lambda k, xs: k.layers.GlobalAveragePooling1D()(xs[0]), [(1, 13, 30)],
         layer.GlobalAvgPool, "MEAN", {}, 23),
    Case("global_avg2d_keepdims", lambda k, xs: k.layers.GlobalAveragePooling2D(keepdims=True)(xs[0]),
         [(1, 7, 7, 16)], layer.GlobalAvgPool, "MEAN", {"keepdims": True}, 54),
    Case("global_max2d", lambda k, xs: k.layers.GlobalMaxPooling2D()(xs[0]), [(1, 5, 5, 30)],
         layer.GlobalMaxPool, "REDUCE_MAX", {}, 24),
    # activations
    Case("relu", lambda k, xs: k.layers.ReLU()(xs[0]), [(1, 6, 16)], layer.Relu, "RELU", {}, 25),
    Case("relu6", lambda k, xs: k.layers.ReLU(max_value=6.0)(xs[0]), [(1, 4, 4, 8)],
         layer.Relu6, "RELU6", {}, 26),
    Case("leaky_relu", lambda k, xs: k.layers.LeakyReLU(negative_slope=0.2)(xs[0]), [(1, 96)],
         layer.LeakyRelu, "LEAKY_RELU", {"alpha": 0.2}, 27),
    Case("sigmoid", lambda k, xs: k.layers.Activation("sigmoid")(xs[0]), [(1, 128)],
         layer.Sigmoid, "LOGISTIC", {}, 28),
    Case("tanh", lambda k, xs: k.layers.Activation("tanh")(xs[0]), [(1, 128)],
         layer.Tanh, "TANH", {}, 29),
    Case("hard_swish", lambda k, xs: k.layers.Activation("hard_swish")(xs[0]), [(1, 128)],
         layer.HardSwish, "HARD_SWISH", {}, 30),
    Case("softmax", lambda k, xs: k.layers.Softmax()(xs[0]), [(1, 10)], layer.Softmax, "SOFTMAX", {}, 31),
    Case("softmax_rows", lambda k, xs: k.layers.Softmax()(xs[0]), [(1, 6, 32)],
         layer.Softmax, "SOFTMAX", {}, 32),
    # binary
    Case("add", lambda k, xs: k.layers.Add()(xs), [(1, 6, 6, 4)] * 2, layer.Add, "ADD", {}, 33),
    Case("add_relu", lambda k, xs: k.layers.ReLU()(k.layers.Add()(xs)), [(1, 40)] * 2,
         layer.Add, "ADD", {"activation": "relu"}, 34),
    Case("add_broadcast", lambda k, xs: k.ops.add(xs[0], xs[1]), [(1, 4, 5, 8), (1, 1, 1, 8)],
         layer.Add, "ADD", {}, 35),
    Case("sub", lambda k, xs: k.layers.Subtract()(xs), [(1, 8, 8)] * 2, layer.Sub, "SUB", {}, 36),
    Case("mul", lambda k, xs: k.layers.Multiply()(xs), [(1, 5, 5, 3)] * 2, layer.Mul, "MUL", {}, 37),
    # data movement
    Case("concat", lambda k, xs: k.layers.Concatenate()(xs), [(1, 4, 4, 3), (1, 4, 4, 5)],
         layer.Concat, "CONCATENATION", {"axis": -1}, 38),
    Case("zero_pad", lambda k, xs: k.layers.ZeroPadding2D(((1, 2), (2, 0)))(xs[0]), [(1, 5, 5, 3)],
         layer.ZeroPad, "PAD", {"pads": ((0, 0), (1, 2), (2, 0), (0, 0))}, 39),
    Case("cropping", lambda k, xs: k.layers.Cropping2D(((1, 0), (2, 1)))(xs[0]), [(1, 6, 7, 3)],
         layer.Cropping, "STRIDED_SLICE", {"crops": ((1, 0), (2, 1))}, 53),
    Case("flatten", lambda k, xs: k.layers.Flatten()(xs[0]), [(1, 3, 4, 5)], layer.Flatten, "RESHAPE", {}, 40),
    # Keras's UpSampling2D becomes TILE, which the reference resolver lacks; Resizing gives the op.
    Case("upsample", lambda k, xs: k.layers.Resizing(6, 12, interpolation="nearest")(xs[0]), [(1, 3, 4, 2)],
         layer.Upsample, "RESIZE_NEAREST_NEIGHBOR", {"size": (2, 3)}, 41),
    Case("quantize_dequantize", lambda k, xs: k.layers.ReLU()(xs[0]), [(1, 50)], layer.Relu, "RELU", {}, 42,
         float_io=True),
    # second seeds on other input ranges (other scales and zero points)
    Case("leaky_relu_2", lambda k, xs: k.layers.LeakyReLU(negative_slope=0.05)(xs[0]), [(1, 128)],
         layer.LeakyRelu, "LEAKY_RELU", {"alpha": 0.05}, 43, ranges=((-6.0, 0.5),)),
    Case("sigmoid_2", lambda k, xs: k.layers.Activation("sigmoid")(xs[0]), [(1, 128)],
         layer.Sigmoid, "LOGISTIC", {}, 44, ranges=((-9.0, 3.0),)),
    Case("tanh_2", lambda k, xs: k.layers.Activation("tanh")(xs[0]), [(1, 128)],
         layer.Tanh, "TANH", {}, 45, ranges=((-0.4, 2.5),)),
    Case("hard_swish_2", lambda k, xs: k.layers.Activation("hard_swish")(xs[0]), [(1, 128)],
         layer.HardSwish, "HARD_SWISH", {}, 46, ranges=((-7.0, 9.0),)),
    Case("softmax_2", lambda k, xs: k.layers.Softmax()(xs[0]), [(1, 12)], layer.Softmax, "SOFTMAX", {}, 47,
         ranges=((-30.0, 25.0),)),
    Case("softmax_3", lambda k, xs: k.layers.Softmax()(xs[0]), [(1, 3, 16)], layer.Softmax, "SOFTMAX", {}, 48,
         ranges=((-0.3, 0.2),)),
    Case("add_2", lambda k, xs: k.layers.Add()(xs), [(1, 64)] * 2, layer.Add, "ADD", {}, 49,
         ranges=((-0.2, 0.1), (-12.0, 20.0))),
    Case("sub_2", lambda k, xs: k.layers.Subtract()(xs), [(1, 4, 16)] * 2, layer.Sub, "SUB", {}, 50,
         ranges=((-5.0, 5.0), (0.0, 0.3))),
    Case("mul_relu6", lambda k, xs: k.layers.ReLU(max_value=6.0)(k.layers.Multiply()(xs)), [(1, 48)] * 2,
         layer.Mul, "MUL", {"activation": "relu6"}, 51, ranges=((-4.0, 4.0), (-2.0, 3.0))),
    Case("hard_swish_3", lambda k, xs: k.layers.Activation("hard_swish")(xs[0]), [(1, 128)],
         layer.HardSwish, "HARD_SWISH", {}, 55, ranges=((-0.5, 0.4),)),
    Case("relu_2", lambda k, xs: k.layers.ReLU()(xs[0]), [(1, 96)], layer.Relu, "RELU", {}, 52,
         ranges=((-0.1, 7.0),)),
]


class TFLiteCase:
    """A converted model run by the interpreter with the reference kernels."""

    def __init__(self, keras: ModuleType, tf: ModuleType, case: Case):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        keras.utils.set_random_seed(case.seed)
        rng = np.random.default_rng(case.seed)
        inputs = [keras.Input(s[1:], batch_size=1, name=f"in{i}") for i, s in enumerate(case.shapes)]
        model = keras.Model(inputs, case.keras(keras, inputs))
        for lay in model.layers:
            # Random weights and non-zero biases (zero biases would be dropped by the converter).
            lay.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in lay.get_weights()])
        # Inputs on different ranges, so that binary ops see different scales and zero points.
        def representative() -> Any:
            for _ in range(24):
                yield [rng.uniform(*case.ranges[i], s).astype(np.float32) for i, s in enumerate(case.shapes)]

        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        for key, value in case.converter.items():
            setattr(conv, key, value)
        if not case.float_io:
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
        self.interp = Interpreter(model_content=conv.convert(),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        self.interp.allocate_tensors()
        self.inputs = sorted(self.interp.get_input_details(), key=lambda d: d["name"])
        self.output = self.interp.get_output_details()[0]
        self.ops = self.interp._get_ops_details()
        self.tensors = {d["index"]: d for d in self.interp.get_tensor_details()}

    def op(self, name: str) -> dict:
        found = [o for o in self.ops if o["op_name"] == name]
        assert found, f"no {name} in the converted model: {[o['op_name'] for o in self.ops]}"
        return found[0]

    def quant_of(self, index: int, axis: int | None = None) -> QuantType:
        """The tensor's quantization; weights with one scale become a per-tensor type."""
        q = self.tensors[index]["quantization_parameters"]
        if axis is None or len(q["scales"]) == 1:
            assert len(q["scales"]) == 1, self.tensors[index]
            return quant(float(q["scales"][0]), int(q["zero_points"][0]))
        return quant([float(s) for s in q["scales"]], [int(z) for z in q["zero_points"]], axis=axis)

    def run(self, xs: list[np.ndarray]) -> np.ndarray:
        for d, x in zip(self.inputs, xs):
            self.interp.set_tensor(d["index"], x)
        self.interp.invoke()
        return self.interp.get_tensor(self.output["index"]).copy()


@pytest.fixture(scope="session")
def converted(tf: ModuleType, keras: ModuleType) -> Callable[[Case], TFLiteCase]:
    """Converts each case once per session (conversion is the slow part)."""
    cache: dict[str, TFLiteCase] = {}

    def get(case: Case) -> TFLiteCase:
        if case.id not in cache:
            cache[case.id] = TFLiteCase(keras, tf, case)
        return cache[case.id]

    return get


def _kernel_attrs(b: ModelBuilder, t: TFLiteCase, case: Case) -> dict[str, Any]:
    """The kernel and bias resources of the case's TFLite op, in the layer dialect's layouts."""
    op = t.op(case.tfl)
    w_idx, b_idx = int(op["inputs"][1]), int(op["inputs"][2]) if len(op["inputs"]) > 2 else -1
    w = t.interp.get_tensor(w_idx)
    qdim = int(t.tensors[w_idx]["quantization_parameters"]["quantized_dimension"])
    kind = case.kernel
    if kind == "dw2d":
        w, axis = w[0], 2                        # [1, KH, KW, C*M] -> [KH, KW, C*M]
    elif kind == "dw1d":
        w, axis = w.reshape(-1, w.shape[-1]), 1  # [1, 1, K, C*M] -> [K, C*M]
    elif kind == "conv1d":
        w, axis = w.reshape(w.shape[0], -1, w.shape[-1]), 0
    else:
        axis = 0
    assert qdim == (3 if kind in ("dw2d", "dw1d") else 0), qdim
    attrs: dict[str, Any] = {"kernel": b.weights(f"{case.id}.kernel", w, elem=t.quant_of(w_idx, axis))}
    if b_idx >= 0:
        attrs["bias"] = b.weights(f"{case.id}.bias", t.interp.get_tensor(b_idx).astype(np.int32), elem=i32)
    return attrs


def build_ours(t: TFLiteCase, case: Case) -> layer.Model:
    """The layer-dialect model equivalent to the converted one, from the interpreter's tensors."""
    b = ModelBuilder(case.id, file=f"{case.id}.tflite")
    xs = []
    for i, (d, shape) in enumerate(zip(t.inputs, case.shapes)):
        elem = f32 if case.float_io else t.quant_of(d["index"])
        xs.append(b.input(shape, elem=elem, name=f"in{i}"))
    attrs = dict(case.attrs)
    if case.kernel:
        attrs.update(_kernel_attrs(b, t, case))
    main = t.op(case.tfl)
    out_q = t.quant_of(int(main["outputs"][0]))
    if case.float_io:
        q_in = t.quant_of(int(t.op("QUANTIZE")["outputs"][0]))
        xs = [b.add(layer.Quantize, xs[0], name="quantize", out_elem=q_in)]
    y = b.add(case.op, *xs, name=case.id, out_elem=out_q, **attrs)
    if case.float_io:
        y = b.add(layer.Dequantize, y, name="dequantize")
    b.output(y)
    return b.finish().ops[0]


def _random_inputs(rng: np.random.Generator, case: Case) -> list[np.ndarray]:
    if case.float_io:
        return [rng.uniform(-1.2, 1.7, s).astype(np.float32) for s in case.shapes]
    return [rng.integers(-128, 128, s, dtype=np.int8) for s in case.shapes]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_int8_reference_equals_tflite(case: Case, converted: Callable[[Case], TFLiteCase]) -> None:
    t = converted(case)
    names = [o["op_name"] for o in t.ops]
    # One compute op (fused activations included), plus only value-preserving reshapes.
    assert names.count(case.tfl) == 1 and set(names) <= {case.tfl, "RESHAPE", "QUANTIZE", "DEQUANTIZE"}, names
    model = build_ours(t, case)
    rng = np.random.default_rng(1000 + case.seed)
    for sample in range(SAMPLES):
        xs = _random_inputs(rng, case)
        want = t.run(xs)
        (got,) = layer.run_model(model, xs)[0]
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        got = got.reshape(want.shape)
        if case.float_io:
            # The float output is a dequantized int8: bit-equal floats mean equal int8 codes.
            assert np.array_equal(got, want), f"sample {sample}: max |diff| {np.abs(got - want).max()}"
            continue
        diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
        assert diff.max() == 0, (f"sample {sample}: {int((diff > 0).sum())} of {diff.size} differ, "
                                 f"max {diff.max()}; first at {np.argwhere(diff)[0].tolist()}")


# ----------------------------------------------------------------------------- errors


def _one_op_model(build: Callable[[ModelBuilder, Any], Any], shape: tuple[int, ...] = (1, 8),
                  q: QuantType | None = None) -> layer.Model:
    b = ModelBuilder("bad", file="bad.tflite")
    x = b.input(shape, elem=q or quant(0.05, 3))
    b.output(build(b, x))
    return b.finish().ops[0]


def test_int8_batch_norm_is_rejected_with_its_layer_name() -> None:
    c = np.ones(8, dtype=np.float32)
    model = _one_op_model(lambda b, x: b.add(
        layer.BatchNorm, x, name="bn1", gamma=b.weights("g", c), beta=b.weights("b", c),
        mean=b.weights("m", c), variance=b.weights("v", c), out_elem=quant(0.05, 3)))
    with pytest.raises(CompileError) as e:
        layer.run_model(model, [np.zeros((1, 8), np.int8)])
    assert "bad.tflite: layer 'bn1'" in str(e.value) and "int8 layer.batch_norm is not supported" in str(e.value)


def test_int8_softmax_needs_tflite_output_quantization() -> None:
    model = _one_op_model(lambda b, x: b.add(layer.Softmax, x, name="sm", out_elem=quant(0.01, 0)))
    with pytest.raises(CompileError, match="layer 'sm'.*1/256:-128"):
        layer.run_model(model, [np.zeros((1, 8), np.int8)])


def test_int8_add_of_three_operands_is_rejected() -> None:
    b = ModelBuilder("bad", file="bad.tflite")
    xs = [b.input((1, 4), elem=quant(0.1, 0), name=f"x{i}") for i in range(3)]
    b.output(b.add(layer.Add, *xs, name="add3", out_elem=quant(0.2, 0)))
    model = b.finish().ops[0]
    with pytest.raises(CompileError, match="layer 'add3'.*3 operands"):
        layer.run_model(model, [np.zeros((1, 4), np.int8)] * 3)


def test_int8_dense_with_wrong_scale_count_is_rejected() -> None:
    w = np.ones((4, 8), dtype=np.int8)
    model = _one_op_model(lambda b, x: b.add(
        layer.Dense, x, name="fc", kernel=b.weights("k", w, elem=quant([0.1, 0.2], 0, axis=0)),
        out_elem=quant(0.3, 0)))
    with pytest.raises(CompileError, match="layer 'fc'.*2 quantization scales, expected 1 or 4"):
        layer.run_model(model, [np.zeros((1, 8), np.int8)])


def test_int8_max_pool_with_changed_quantization_is_rejected() -> None:
    model = _one_op_model(lambda b, x: b.add(layer.MaxPool1D, x, name="mp", pool_size=(2,), strides=(2,),
                                             out_elem=quant(0.07, 3)), shape=(1, 8, 2))
    with pytest.raises(CompileError, match="layer 'mp'.*different input and result quantization"):
        layer.run_model(model, [np.zeros((1, 8, 2), np.int8)])


# ----------------------------------------------------------------------------- requantization


def test_concat_requantizes_like_layer_quantize() -> None:
    """Inputs quantized differently from the concat result go through TFLite's int8 requantize, the
    same arithmetic as a layer.quantize int8 -> int8 (checked element by element, with a float bound)."""
    b = ModelBuilder("cat", file="cat.tflite")
    qa, qb, qo = quant(0.02, -5), quant(0.05, 7), quant(0.04, 1)
    a, c = b.input((1, 3, 4), elem=qa, name="a"), b.input((1, 3, 2), elem=qb, name="c")
    y = b.add(layer.Concat, a, c, name="cat", axis=-1, out_elem=qo)
    ra = b.add(layer.Quantize, a, name="ra", out_elem=qo)
    b.output(y, ra)
    model = b.finish().ops[0]
    rng = np.random.default_rng(5)
    xa = rng.integers(-128, 128, (1, 3, 4), dtype=np.int8)
    xc = rng.integers(-128, 128, (1, 3, 2), dtype=np.int8)
    (cat, req), _ = layer.run_model(model, [xa, xc])
    assert np.array_equal(cat[..., :4], req)
    # Requantized codes stay within half a result step (plus the multiplier's rounding) of the reals.
    for codes, real in ((cat[..., :4], (xa.astype(np.float64) + 5) * 0.02),
                        (cat[..., 4:], (xc.astype(np.float64) - 7) * 0.05)):
        inside = np.abs(real) < 4.9
        assert np.abs(real - 0.04 * (codes.astype(np.float64) - 1))[inside].max() <= 0.02 + 1e-6


# ----------------------------------------------------------------------------- real int8 models


MODELS = SHARED_MODELS / "mlperf_tiny"
REAL_MODELS = ["kws_ref_model.tflite", "vww_96_int8.tflite", "pretrainedResnet_quant.tflite"]


class RealModelOps:
    """Every op of a real int8 .tflite, run by the reference interpreter with all tensors kept, and
    each op's options read from the flatbuffer (so each layer can be rebuilt and run alone)."""

    def __init__(self, path: Path, seed: int):
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.schema = schema
        buf = path.read_bytes()
        fb = schema.Model.GetRootAs(buf, 0)
        graph = fb.Subgraphs(0)
        self.options = [graph.Operators(i).BuiltinOptions() for i in range(graph.OperatorsLength())]
        self.interp = Interpreter(model_content=buf, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        self.interp.allocate_tensors()
        d = self.interp.get_input_details()[0]
        x = np.random.default_rng(seed).integers(-128, 128, d["shape"], dtype=np.int8)
        self.interp.set_tensor(d["index"], x)
        self.interp.invoke()
        self.tensors = {t["index"]: t for t in self.interp.get_tensor_details()}
        self.ops = self.interp._get_ops_details()

    def opts(self, i: int, cls_name: str) -> Any:
        table = self.options[i]
        o = getattr(self.schema, cls_name)()
        o.Init(table.Bytes, table.Pos)
        return o

    def quant_of(self, index: int) -> QuantType:
        q = self.tensors[index]["quantization_parameters"]
        scales, zps = [float(s) for s in q["scales"]], [int(z) for z in q["zero_points"]]
        if len(scales) == 1:
            return quant(scales[0], zps[0])
        return quant(scales, zps, axis=int(q["quantized_dimension"]))

    def layer_of(self, i: int, b: ModelBuilder, x: list[Any]) -> tuple[type, dict[str, Any]] | None:
        """The layer op class and attributes equivalent to op #i (None for ops not rebuilt here)."""
        s = self.schema
        op = self.ops[i]
        name = op["op_name"]
        act = {s.ActivationFunctionType.NONE: "none", s.ActivationFunctionType.RELU: "relu",
               s.ActivationFunctionType.RELU6: "relu6"}
        pad = {s.Padding.SAME: "same", s.Padding.VALID: "valid"}

        def weights(j: int, reshape: Callable[[np.ndarray], np.ndarray] = lambda w: w,
                    axis: int = 0) -> dict[str, Any]:
            w_idx = int(op["inputs"][1])
            q = self.quant_of(w_idx)
            if q.axis is not None:
                q = QuantType(q.storage, q.scales, q.zero_points, axis)
            out = {"kernel": b.weights(f"k{j}", reshape(self.interp.get_tensor(w_idx)), elem=q)}
            if len(op["inputs"]) > 2 and op["inputs"][2] >= 0:
                out["bias"] = b.weights(f"b{j}", self.interp.get_tensor(int(op["inputs"][2])), elem=i32)
            return out

        if name == "CONV_2D":
            o = self.opts(i, "Conv2DOptions")
            return layer.Conv2D, dict(weights(i), strides=(o.StrideH(), o.StrideW()), padding=pad[o.Padding()],
                                      dilation=(o.DilationHFactor(), o.DilationWFactor()),
                                      activation=act[o.FusedActivationFunction()])
        if name == "DEPTHWISE_CONV_2D":
            o = self.opts(i, "DepthwiseConv2DOptions")
            return layer.DepthwiseConv2D, dict(
                weights(i, lambda w: w[0], axis=2), strides=(o.StrideH(), o.StrideW()),
                padding=pad[o.Padding()], dilation=(o.DilationHFactor(), o.DilationWFactor()),
                depth_multiplier=o.DepthMultiplier(), activation=act[o.FusedActivationFunction()])
        if name == "FULLY_CONNECTED":
            o = self.opts(i, "FullyConnectedOptions")
            return layer.Dense, dict(weights(i), activation=act[o.FusedActivationFunction()])
        if name == "AVERAGE_POOL_2D":
            o = self.opts(i, "Pool2DOptions")
            assert o.FusedActivationFunction() == s.ActivationFunctionType.NONE
            return layer.AvgPool2D, {"pool_size": (o.FilterHeight(), o.FilterWidth()),
                                         "strides": (o.StrideH(), o.StrideW()), "padding": pad[o.Padding()]}
        if name == "ADD":
            return layer.Add, {"activation": act[self.opts(i, "AddOptions").FusedActivationFunction()]}
        if name == "SOFTMAX":
            return layer.Softmax, {"beta": float(self.opts(i, "SoftmaxOptions").Beta())}
        return None


@pytest.fixture(scope="session")
def real_models() -> Callable[[str], RealModelOps]:
    cache: dict[str, RealModelOps] = {}

    def get(name: str) -> RealModelOps:
        path = MODELS / name
        if not path.exists():
            pytest.skip(f"{path} is not available")
        if name not in cache:
            cache[name] = RealModelOps(path, seed=len(cache) + 11)
        return cache[name]

    return get


@pytest.mark.parametrize("name", REAL_MODELS)
def test_int8_reference_equals_tflite_on_every_layer_of_real_models(
        name: str, real_models: Callable[[str], RealModelOps]) -> None:
    """Each compute layer of the MLPerf Tiny int8 models, fed TFLite's own input to that layer."""
    m = real_models(name)
    checked = 0
    for i, op in enumerate(m.ops):
        b = ModelBuilder(name, file=name)
        ins = [int(j) for j in op["inputs"]]
        n_act = 2 if op["op_name"] == "ADD" else 1
        xs = [b.input(tuple(m.tensors[j]["shape"]), elem=m.quant_of(j), name=f"in{k}")
              for k, j in enumerate(ins[:n_act])]
        spec = m.layer_of(i, b, xs)
        if spec is None:
            continue
        cls, attrs = spec
        out = int(op["outputs"][0])
        b.output(b.add(cls, *xs, name=f"op{i}", out_elem=m.quant_of(out), **attrs))
        model = b.finish().ops[0]
        (got,) = layer.run_model(model, [m.interp.get_tensor(j) for j in ins[:n_act]])[0]
        want = m.interp.get_tensor(out)
        diff = np.abs(got.reshape(want.shape).astype(np.int32) - want.astype(np.int32))
        assert diff.max() == 0, f"op #{i} {op['op_name']}: {int((diff > 0).sum())} of {diff.size} differ"
        checked += 1
    assert checked >= 12, checked


def test_int8_depthwise_kernel_quantized_along_the_wrong_axis_is_rejected() -> None:
    w = np.ones((3, 3, 3), dtype=np.int8)       # [KH, KW, C*M]: channels are the last axis
    model = _one_op_model(lambda b, x: b.add(
        layer.DepthwiseConv2D, x, name="dw", kernel=b.weights("k", w, elem=quant([0.1] * 3, 0, axis=0)),
        out_elem=quant(0.3, 0)), shape=(1, 5, 5, 3))
    with pytest.raises(CompileError, match="layer 'dw'.*along axis 2"):
        layer.run_model(model, [np.zeros((1, 5, 5, 3), np.int8)])
