"""The layer dialect's float32 references against Keras/TensorFlow, on random shapes, attributes and weights.

Every test builds one op (or a small graph) with ModelBuilder, runs it with `run_model`, and compares
the result with the equivalent Keras layer given the same weights (converted to Keras's layouts), within
DESIGN §7: |ours - keras| <= 1e-4 * (1 + |keras|) for every element. f16 weights are compared with
Keras run on the f16-rounded weights in float32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.ir import Value
from ml4f.compiler.types import TensorType, f32
from ml4f.dialects import layer

EXAMPLES = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = st.integers(0, 2**32 - 1)
ACTIVATIONS = st.sampled_from(["none", "relu", "relu6"])


# ----------------------------------------------------------------------------- helpers


def assert_close(ours: np.ndarray, ref: Any, what: str) -> None:
    """DESIGN §7's float32 tolerance, element by element, with Keras's value as y."""
    ref = np.asarray(ref, dtype=np.float32)
    assert ours.dtype == np.float32, f"{what}: result dtype {ours.dtype}"
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape}, Keras gives {ref.shape}"
    err = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
    bad = err > 1e-4 * (1.0 + np.abs(ref.astype(np.float64)))
    if bad.any():
        at = np.unravel_index(int(err.argmax()), err.shape)
        pytest.fail(f"{what}: max |err| {err.max():.3g} at {at} (ours {ours[at]}, Keras {ref[at]})")


def run_ours(inputs: Sequence[np.ndarray], make: Callable[..., Value | Sequence[Value]]) -> list[np.ndarray]:
    """Build a model whose inputs have the arrays' shapes, `make(builder, *inputs)` giving its
    output value(s), verify it and run it with the references."""
    b = ModelBuilder("reference_test", file="test.h5")
    xs = [b.input(x.shape, name=f"x{i}") for i, x in enumerate(inputs)]
    ys = make(b, *xs)
    b.output(*(ys if isinstance(ys, (list, tuple)) else [ys]))
    module = b.finish()
    outputs, _ = layer.run_model(module.ops[0], list(inputs))
    return outputs


def run_one(inputs: Sequence[np.ndarray], make: Callable[..., Value]) -> np.ndarray:
    (y,) = run_ours(inputs, make)
    return y


def run_keras(lay: Any, inputs: Sequence[np.ndarray], weights: list[np.ndarray] | None = None,
              **call: Any) -> np.ndarray:
    """Build the Keras layer for the inputs, load `weights` (Keras layouts, float32) and call it."""
    arg = inputs[0] if len(inputs) == 1 else list(inputs)
    if weights is not None:
        lay.build(arg.shape)
        lay.set_weights([np.asarray(w, dtype=np.float32) for w in weights])
    return np.asarray(lay(arg, **call))


def random_weights(rng: np.random.Generator, shape: Sequence[int], f16: bool) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    return w.astype(np.float16) if f16 else w


def keras_activation(keras: ModuleType, y: Any, activation: str) -> np.ndarray:
    if activation == "relu":
        y = keras.activations.relu(y)
    elif activation == "relu6":
        y = keras.activations.relu6(y)
    return np.asarray(y)


# ----------------------------------------------------------------------------- convolution and dense

CONVS = [(layer.Conv2D, "Conv2D"), (layer.Conv1D, "Conv1D"),
         (layer.DepthwiseConv2D, "DepthwiseConv2D"), (layer.DepthwiseConv1D, "DepthwiseConv1D")]


@pytest.mark.parametrize("op, keras_name", CONVS, ids=[c[1] for c in CONVS])
@EXAMPLES
@given(data=st.data())
def test_conv(keras: ModuleType, data: st.DataObject, op: type[layer.LayerOp], keras_name: str) -> None:
    d = data.draw
    s = op.spatial
    window = tuple(d(st.integers(1, 4)) for _ in range(s))
    dilated = d(st.booleans())  # Keras refuses strides > 1 together with dilation > 1
    strides = (1,) * s if dilated else tuple(d(st.integers(1, 3)) for _ in range(s))
    dilation = tuple(d(st.integers(1, 3)) for _ in range(s)) if dilated else (1,) * s
    padding = d(st.sampled_from(["valid", "same"]))
    eff = [(k - 1) * r + 1 for k, r in zip(window, dilation)]
    sizes = tuple(d(st.integers(e if padding == "valid" else 1, e + 6)) for e in eff)
    cin = d(st.integers(1, 5))
    mult = d(st.integers(1, 3))
    cout = cin * mult if op.depthwise else d(st.integers(1, 6))
    use_bias, activation, f16 = d(st.booleans()), d(ACTIVATIONS), d(st.booleans())
    rng = np.random.default_rng(d(SEEDS))

    x = rng.standard_normal((1, *sizes, cin)).astype(np.float32)
    if op.depthwise:
        k_keras = random_weights(rng, (*window, cin, mult), f16)        # [*window, C, M]
        k_ours = k_keras.reshape(*window, cin * mult)                     # [*window, C*M]
        kw: dict[str, Any] = {"depth_multiplier": mult}
        attrs: dict[str, Any] = {"depth_multiplier": mult}
    else:
        k_keras = random_weights(rng, (*window, cin, cout), f16)        # [*window, I, O]
        k_ours = np.moveaxis(k_keras, -1, 0)                              # [O, *window, I]
        kw = {"filters": cout}
        attrs = {}
    bias = random_weights(rng, (cout,), f16) if use_bias else None

    ours = run_one([x], lambda b, v: b.add(
        op, v, name="conv", kernel=b.weights("conv.kernel", k_ours),
        bias=b.weights("conv.bias", bias) if use_bias else None, strides=strides, padding=padding,
        dilation=dilation, activation=activation, **attrs))
    common = dict(kernel_size=window, strides=strides, padding=padding, dilation_rate=dilation,
                  use_bias=use_bias, activation=None if activation == "none" else activation)
    if op is layer.DepthwiseConv2D and strides[0] != strides[1]:
        # TF's DepthwiseConv2dNative refuses unequal strides (and with oneDNN returns garbage) while
        # TFLite supports them: compare with one Conv2D per input channel, the definition.
        ref = np.concatenate([run_keras(keras.layers.Conv2D(mult, **common), [x[..., c:c + 1]],
                                        [k_keras[..., c:c + 1, :]]
                                        + ([bias[c * mult:(c + 1) * mult]] if use_bias else []))
                              for c in range(cin)], axis=-1)
    else:
        lay = getattr(keras.layers, keras_name)(**common, **kw)
        ref = run_keras(lay, [x], [k_keras] + ([bias] if use_bias else []))
    assert_close(ours, ref, f"{op.name} {sizes}x{cin} window {window} strides {strides} "
                            f"dilation {dilation} {padding}")


@EXAMPLES
@given(data=st.data())
def test_dense(keras: ModuleType, data: st.DataObject) -> None:
    d = data.draw
    shape = (1, *(d(st.integers(1, 5)) for _ in range(d(st.integers(0, 2)))), d(st.integers(1, 40)))
    units = d(st.integers(1, 20))
    use_bias, activation, f16 = d(st.booleans()), d(ACTIVATIONS), d(st.booleans())
    rng = np.random.default_rng(d(SEEDS))
    x = rng.standard_normal(shape).astype(np.float32)
    k = random_weights(rng, (shape[-1], units), f16)                      # Keras [I, O]
    bias = random_weights(rng, (units,), f16) if use_bias else None
    ours = run_one([x], lambda b, v: b.add(
        layer.Dense, v, name="fc", kernel=b.weights("fc.kernel", k.T),
        bias=b.weights("fc.bias", bias) if use_bias else None, activation=activation))
    lay = keras.layers.Dense(units, use_bias=use_bias,
                             activation=None if activation == "none" else activation)
    assert_close(ours, run_keras(lay, [x], [k] + ([bias] if use_bias else [])), f"dense {shape}")


# ----------------------------------------------------------------------------- pooling

POOLS = [(layer.MaxPool2D, "MaxPooling2D"), (layer.MaxPool1D, "MaxPooling1D"),
         (layer.AvgPool2D, "AveragePooling2D"), (layer.AvgPool1D, "AveragePooling1D")]


@pytest.mark.parametrize("op, keras_name", POOLS, ids=[p[1] for p in POOLS])
@EXAMPLES
@given(data=st.data())
def test_pool(keras: ModuleType, data: st.DataObject, op: type[layer.LayerOp], keras_name: str) -> None:
    d = data.draw
    s = op.spatial
    pool = tuple(d(st.integers(1, 4)) for _ in range(s))
    strides = tuple(d(st.integers(1, 4)) for _ in range(s))
    padding = d(st.sampled_from(["valid", "same"]))
    sizes = tuple(d(st.integers(p if padding == "valid" else 1, p + 7)) for p in pool)
    c = d(st.integers(1, 5))
    x = np.random.default_rng(d(SEEDS)).standard_normal((1, *sizes, c)).astype(np.float32)
    ours = run_one([x], lambda b, v: b.add(op, v, name="pool", pool_size=pool, strides=strides,
                                           padding=padding))
    ref = run_keras(getattr(keras.layers, keras_name)(pool_size=pool, strides=strides, padding=padding), [x])
    assert_close(ours, ref, f"{op.name} {sizes}x{c} pool {pool} strides {strides} {padding}")


@pytest.mark.parametrize("rank", [3, 4])
@pytest.mark.parametrize("op, keras_name", [(layer.GlobalAvgPool, "GlobalAveragePooling"),
                                            (layer.GlobalMaxPool, "GlobalMaxPooling")])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_global_pool(keras: ModuleType, data: st.DataObject, op: type[layer.LayerOp], keras_name: str,
                     rank: int) -> None:
    d = data.draw
    shape = (1, *(d(st.integers(1, 9)) for _ in range(rank - 2)), d(st.integers(1, 8)))
    keepdims = d(st.booleans())
    x = np.random.default_rng(d(SEEDS)).standard_normal(shape).astype(np.float32)
    ours = run_one([x], lambda b, v: b.add(op, v, name="gp", keepdims=keepdims))
    lay = getattr(keras.layers, f"{keras_name}{rank - 2}D")(keepdims=keepdims)
    assert_close(ours, run_keras(lay, [x]), f"{op.name} {shape} keepdims={keepdims}")


# ----------------------------------------------------------------------------- element-wise


@EXAMPLES
@given(data=st.data())
def test_batch_norm(keras: ModuleType, data: st.DataObject) -> None:
    d = data.draw
    shape = (1, *(d(st.integers(1, 6)) for _ in range(d(st.integers(0, 2)))), d(st.integers(1, 8)))
    eps, f16 = d(st.sampled_from([1e-3, 1e-5, 0.1])), d(st.booleans())
    rng = np.random.default_rng(d(SEEDS))
    c = shape[-1]
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    gamma, beta, mean = (random_weights(rng, (c,), f16) for _ in range(3))
    var = rng.uniform(0.01, 3.0, c).astype(np.float16 if f16 else np.float32)
    ours = run_one([x], lambda b, v: b.add(
        layer.BatchNorm, v, name="bn", gamma=b.weights("bn.g", gamma), beta=b.weights("bn.b", beta),
        mean=b.weights("bn.m", mean), variance=b.weights("bn.v", var), epsilon=eps))
    ref = run_keras(keras.layers.BatchNormalization(epsilon=eps), [x], [gamma, beta, mean, var],
                    training=False)
    assert_close(ours, ref, f"batch_norm {shape} eps {eps}")


UNARY: dict[str, Callable[[ModuleType, float], Any]] = {
    "relu": lambda k, a: k.layers.ReLU(),
    "relu6": lambda k, a: k.layers.ReLU(max_value=6.0),
    "leaky_relu": lambda k, a: k.layers.LeakyReLU(negative_slope=a),
    "sigmoid": lambda k, a: k.layers.Activation("sigmoid"),
    "tanh": lambda k, a: k.layers.Activation("tanh"),
    "hard_swish": lambda k, a: k.layers.Activation("hard_swish"),
    "softmax": lambda k, a: k.layers.Softmax(axis=-1),
    "dropout": lambda k, a: k.layers.Dropout(a),
}
UNARY_OPS = {"relu": layer.Relu, "relu6": layer.Relu6, "leaky_relu": layer.LeakyRelu,
             "sigmoid": layer.Sigmoid, "tanh": layer.Tanh, "hard_swish": layer.HardSwish,
             "softmax": layer.Softmax, "dropout": layer.Dropout}


@pytest.mark.parametrize("name", list(UNARY))
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_unary(keras: ModuleType, data: st.DataObject, name: str) -> None:
    d = data.draw
    shape = (1, *(d(st.integers(1, 6)) for _ in range(d(st.integers(1, 3)))))
    scale = d(st.sampled_from([0.5, 4.0, 40.0]))  # 40 reaches saturation and exp overflow in float32
    a = d(st.sampled_from([0.01, 0.1, 0.2, 0.3, 0.5]))
    rng = np.random.default_rng(d(SEEDS))
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    # The kinks and edges: relu6's 0 and 6, hard_swish's -3 and 3, values near 0, saturation.
    special = np.array([0.0, -0.0, 1e-3, -1e-3, 3.0, -3.0, 6.0, -6.0, 100.0, -100.0], np.float32)
    flat = x.reshape(-1)
    flat[:] = np.where(rng.random(flat.size) < 0.3, rng.choice(special, flat.size), flat)
    attrs = {"leaky_relu": {"alpha": a}, "dropout": {"rate": a}}.get(name, {})
    beta = 1.0
    if name == "softmax":
        beta = d(st.sampled_from([1.0, 0.5, 2.0]))
        attrs = {"beta": beta}
    ours = run_one([x], lambda b, v: b.add(UNARY_OPS[name], v, name="act", **attrs))
    # TFLite's softmax beta scales the logits; Keras has none, so it is given beta*x.
    kx = (x * np.float32(beta)).astype(np.float32) if name == "softmax" else x
    ref = run_keras(UNARY[name](keras, a), [kx], **({"training": False} if name == "dropout" else {}))
    assert_close(ours, ref, f"{name} {shape} scale {scale} {attrs}")


def broadcast_shapes(d: Callable[..., Any], n: int) -> list[tuple[int, ...]]:
    """n shapes of one rank whose broadcast is a full shape; some axes are 1 in some operands."""
    full = (1, *(d(st.integers(2, 5)) for _ in range(d(st.integers(1, 3)))))
    shapes = []
    for _ in range(n):
        ones = d(st.lists(st.booleans(), min_size=len(full) - 1, max_size=len(full) - 1))
        shapes.append((1, *(1 if o else m for o, m in zip(ones, full[1:]))))
    return shapes


@pytest.mark.parametrize("op, tf_name, max_n", [(layer.Add, "add", 4), (layer.Sub, "subtract", 2),
                                               (layer.Mul, "multiply", 4)])
@EXAMPLES
@given(data=st.data())
def test_binary(tf: ModuleType, keras: ModuleType, data: st.DataObject, op: type[layer.LayerOp], tf_name: str,
                max_n: int) -> None:
    """Against tf.math (TFLite's ADD/SUB/MUL broadcast as NumPy does). Not against keras.layers.Add:
    Keras 3's ops.add turns x + y into a bias_add on the last axis whenever y has one axis > 1 whose
    length equals x's last, e.g. [1,2,2] + [1,2,1] adds y along the wrong axis."""
    d = data.draw
    n = d(st.integers(2, max_n))
    activation = d(ACTIVATIONS)
    rng = np.random.default_rng(d(SEEDS))
    xs = [(rng.standard_normal(s) * 3).astype(np.float32) for s in broadcast_shapes(d, n)]
    ours = run_one(xs, lambda b, *vs: b.add(op, *vs, name="binary", activation=activation))
    ref = tf.constant(xs[0])
    for x in xs[1:]:
        ref = getattr(tf.math, tf_name)(ref, x)
    assert_close(ours, keras_activation(keras, ref, activation),
                 f"{op.name} {[x.shape for x in xs]} {activation}")


# ----------------------------------------------------------------------------- data movement


@EXAMPLES
@given(data=st.data())
def test_concat(keras: ModuleType, data: st.DataObject) -> None:
    d = data.draw
    base = [1, *(d(st.integers(1, 5)) for _ in range(d(st.integers(1, 3))))]
    rank = len(base)
    axis = d(st.sampled_from([a for a in range(-rank + 1, rank) if a != 0]))
    shapes = []
    for _ in range(d(st.integers(2, 4))):
        s = list(base)
        s[axis] = d(st.integers(1, 4))
        shapes.append(tuple(s))
    rng = np.random.default_rng(d(SEEDS))
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = run_one(xs, lambda b, *vs: b.add(layer.Concat, *vs, name="cat", axis=axis))
    ref = np.asarray(keras.layers.Concatenate(axis=axis)(xs))
    np.testing.assert_array_equal(ours, ref, err_msg=f"concat {shapes} axis {axis}")


def spatial_pairs(d: Callable[..., Any], s: int, hi: int) -> tuple[tuple[int, int], ...]:
    return tuple((d(st.integers(0, hi)), d(st.integers(0, hi))) for _ in range(s))


@pytest.mark.parametrize("s", [1, 2])
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_zero_pad_cropping_upsample(keras: ModuleType, data: st.DataObject, s: int) -> None:
    d = data.draw
    sizes = tuple(d(st.integers(1, 7)) for _ in range(s))
    c = d(st.integers(1, 4))
    x = np.random.default_rng(d(SEEDS)).standard_normal((1, *sizes, c)).astype(np.float32)
    pads = spatial_pairs(d, s, 3)
    pad_arg = pads[0] if s == 1 else pads
    ours = run_one([x], lambda b, v: b.add(layer.ZeroPad, v, name="pad", pads=((0, 0), *pads, (0, 0))))
    ref = run_keras(getattr(keras.layers, f"ZeroPadding{s}D")(padding=pad_arg), [x])
    np.testing.assert_array_equal(ours, ref, err_msg=f"zero_pad {x.shape} {pads}")

    crops = tuple((d(st.integers(0, (n - 1) // 2)), d(st.integers(0, (n - 1) // 2))) for n in sizes)
    crop_arg = crops[0] if s == 1 else crops
    ours = run_one([x], lambda b, v: b.add(layer.Cropping, v, name="crop", crops=crops))
    ref = run_keras(getattr(keras.layers, f"Cropping{s}D")(cropping=crop_arg), [x])
    np.testing.assert_array_equal(ours, ref, err_msg=f"cropping {x.shape} {crops}")

    size = tuple(d(st.integers(1, 3)) for _ in range(s))
    ours = run_one([x], lambda b, v: b.add(layer.Upsample, v, name="up", size=size))
    lay = keras.layers.UpSampling1D(size[0]) if s == 1 else \
        keras.layers.UpSampling2D(size, interpolation="nearest")
    np.testing.assert_array_equal(ours, run_keras(lay, [x]), err_msg=f"upsample {x.shape} {size}")


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_zero_pad_any_axis(tf: ModuleType, data: st.DataObject) -> None:
    """Padding channels too (TFLite PAD), against tf.pad."""
    d = data.draw
    shape = (1, *(d(st.integers(1, 5)) for _ in range(d(st.integers(1, 3)))))
    pads = ((0, 0), *spatial_pairs(d, len(shape) - 1, 3))
    x = np.random.default_rng(d(SEEDS)).standard_normal(shape).astype(np.float32)
    ours = run_one([x], lambda b, v: b.add(layer.ZeroPad, v, name="pad", pads=pads))
    np.testing.assert_array_equal(ours, tf.pad(x, pads).numpy(), err_msg=f"zero_pad {shape} {pads}")


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_reshape_flatten(keras: ModuleType, data: st.DataObject) -> None:
    d = data.draw
    dims = [d(st.integers(1, 6)) for _ in range(d(st.integers(1, 3)))]
    x = np.random.default_rng(d(SEEDS)).standard_normal((1, *dims)).astype(np.float32)
    target = tuple(d(st.permutations(dims))) + (1,) * d(st.integers(0, 1))
    ours = run_one([x], lambda b, v: b.add(layer.Reshape, v, name="rs",
                                           result_type=TensorType((1, *target), f32)))
    np.testing.assert_array_equal(ours, run_keras(keras.layers.Reshape(target), [x]))
    ours = run_one([x], lambda b, v: b.add(layer.Flatten, v, name="flat"))
    np.testing.assert_array_equal(ours, run_keras(keras.layers.Flatten(), [x]))


# ----------------------------------------------------------------------------- graphs and errors


def mobilenet_v1(keras: ModuleType, rng: np.random.Generator, size: int = 96, alpha: float = 0.25,
                 classes: int = 2) -> tuple[Any, Callable[..., list[Value]]]:
    """MobileNetV1 (VWW's: 96x96x3, width 0.25, 7.5 M MACs) as a Keras model and as a layer-dialect
    builder with the same random weights. Both output the logits and the softmax."""
    blocks = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5,
              (1024, 2), (1024, 1)]
    inp = keras.Input((size, size, 3), batch_size=1)

    def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    def bn(c: int) -> list[np.ndarray]:
        gamma, var = rng.uniform(0.5, 1.5, c), rng.uniform(0.5, 2.0, c)
        beta, mean = rng.standard_normal(c) * 0.1, rng.standard_normal(c) * 0.1
        return [w.astype(np.float32) for w in (gamma, beta, mean, var)]

    c = int(32 * alpha)
    layers_weights: dict[str, list[np.ndarray]] = {"conv0": [he((3, 3, 3, c), 27)]}
    h = keras.layers.Conv2D(c, 3, strides=2, padding="same", use_bias=False, name="conv0")(inp)
    bn_weights = {"bn0": bn(c)}
    h = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1e-3, name="bn0")(h))
    for i, (filters, stride) in enumerate(blocks, start=1):
        f = int(filters * alpha)
        layers_weights[f"dw{i}"] = [he((3, 3, c, 1), 9)]
        h = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(h)
        bn_weights[f"dwbn{i}"] = bn(c)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1e-3, name=f"dwbn{i}")(h))
        layers_weights[f"pw{i}"] = [he((1, 1, c, f), c)]
        h = keras.layers.Conv2D(f, 1, use_bias=False, name=f"pw{i}")(h)
        bn_weights[f"pwbn{i}"] = bn(f)
        h = keras.layers.ReLU()(keras.layers.BatchNormalization(epsilon=1e-3, name=f"pwbn{i}")(h))
        c = f
    h = keras.layers.GlobalAveragePooling2D()(h)
    layers_weights["fc"] = [he((c, classes), c), (rng.standard_normal(classes) * 0.1).astype(np.float32)]
    logits = keras.layers.Dense(classes, name="fc")(h)
    probs = keras.layers.Softmax()(logits)
    model = keras.Model(inp, [logits, probs])
    for name, w in {**layers_weights, **bn_weights}.items():
        model.get_layer(name).set_weights(w)

    def make(b: ModelBuilder, x: Value) -> list[Value]:
        def batch_norm(v: Value, name: str) -> Value:
            g, be, m, var = bn_weights[name]
            v = b.add(layer.BatchNorm, v, name=name, gamma=b.weights(f"{name}.g", g),
                      beta=b.weights(f"{name}.b", be), mean=b.weights(f"{name}.m", m),
                      variance=b.weights(f"{name}.v", var), epsilon=1e-3)
            return b.add(layer.Relu, v, name=f"{name}.relu")

        k = layers_weights["conv0"][0]
        v = b.add(layer.Conv2D, x, name="conv0", kernel=b.weights("conv0.k", np.moveaxis(k, -1, 0)),
                  strides=(2, 2), padding="same")
        v = batch_norm(v, "bn0")
        for i, (_, stride) in enumerate(blocks, start=1):
            dk = layers_weights[f"dw{i}"][0]
            v = b.add(layer.DepthwiseConv2D, v, name=f"dw{i}",
                      kernel=b.weights(f"dw{i}.k", dk.reshape(3, 3, -1)), strides=(stride, stride),
                      padding="same")
            v = batch_norm(v, f"dwbn{i}")
            pk = layers_weights[f"pw{i}"][0]
            v = b.add(layer.Conv2D, v, name=f"pw{i}", kernel=b.weights(f"pw{i}.k", np.moveaxis(pk, -1, 0)))
            v = batch_norm(v, f"pwbn{i}")
        v = b.add(layer.GlobalAvgPool, v, name="gap")
        fk, fb = layers_weights["fc"]
        lg = b.add(layer.Dense, v, name="fc", kernel=b.weights("fc.k", fk.T), bias=b.weights("fc.b", fb))
        return [lg, b.add(layer.Softmax, lg, name="softmax")]

    return model, make


def test_mobilenet_v1_vww(keras: ModuleType) -> None:
    """A whole VWW-size MobileNet agrees with Keras and runs well under a second in the references."""
    rng = np.random.default_rng(7)
    model, make = mobilenet_v1(keras, rng)
    x = rng.uniform(-1, 1, (1, 96, 96, 3)).astype(np.float32)
    b = ModelBuilder("vww", file="vww.h5")
    b.output(*make(b, b.input(x.shape)))
    m = b.finish().ops[0]
    assert sum(op.macs() for op in m.layers) > 7_000_000
    layer.run_model(m, [x])  # warm-up: first-call costs are not the reference's speed
    start = time.perf_counter()
    (logits, probs), _ = layer.run_model(m, [x])
    seconds = time.perf_counter() - start
    ref_logits, ref_probs = (np.asarray(t) for t in model(x))
    assert_close(logits, ref_logits, "mobilenet logits")
    assert_close(probs, ref_probs, "mobilenet softmax")
    assert seconds < 1.0, f"run_model took {seconds:.2f} s for 7.5 M MACs"


def test_residual_graph(keras: ModuleType) -> None:
    """A DAG: two branches joined by Add (fused relu) and Concat, as ResNet/Inception blocks do."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 9, 9, 4)).astype(np.float32)
    k1, k2 = (rng.standard_normal((3, 3, 4, 4)).astype(np.float32) * 0.3 for _ in range(2))
    inp = keras.Input((9, 9, 4), batch_size=1)
    a = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c1")(inp)
    s = keras.layers.ReLU()(keras.layers.Add()([a, inp]))
    c2 = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c2")(s)
    out = keras.layers.Concatenate()([s, c2])
    model = keras.Model(inp, out)
    model.get_layer("c1").set_weights([k1])
    model.get_layer("c2").set_weights([k2])

    def make(b: ModelBuilder, v: Value) -> Value:
        a = b.add(layer.Conv2D, v, name="c1", kernel=b.weights("c1.k", np.moveaxis(k1, -1, 0)),
                  padding="same")
        s = b.add(layer.Add, a, v, name="add", activation="relu")
        c2 = b.add(layer.Conv2D, s, name="c2", kernel=b.weights("c2.k", np.moveaxis(k2, -1, 0)),
                   padding="same")
        return b.add(layer.Concat, s, c2, name="cat")

    assert_close(run_one([x], make), np.asarray(model(x)), "residual graph")


def test_elided_weights_name_the_layer() -> None:
    """A model read with --elide-weights cannot be run; the error names the layer and says why."""
    b = ModelBuilder("m", file="model.h5")
    x = b.input((1, 4))
    w = b.weights("fc.kernel", np.ones((3, 4), np.float32))
    b.output(b.add(layer.Dense, x, name="fc", kernel=w))
    model = b.finish().ops[0]
    w.data = None
    with pytest.raises(CompileError) as e:
        layer.run_model(model, [np.zeros((1, 4), np.float32)])
    assert e.value.one_line().startswith("model.h5: layer 'fc': error: layer.dense")
    assert "'fc.kernel' were elided" in e.value.one_line()


def test_f16_weights_are_widened_exactly() -> None:
    """f16 weights compute with exactly their f16 values (not re-rounded, not truncated)."""
    k = np.array([[1 / 3, -2 / 3, 1e-3]], np.float16)
    x = np.array([[3.0, 1.5, 1000.0]], np.float32)
    y = run_one([x], lambda b, v: b.add(layer.Dense, v, name="fc", kernel=b.weights("fc.k", k)))
    assert y.dtype == np.float32
    expected = np.float32(np.dot(x.astype(np.float64), k.astype(np.float64).T)[0, 0])
    assert y[0, 0] == expected
    assert y[0, 0] != np.float32(np.dot(x[0].astype(np.float64), [1 / 3, -2 / 3, 1e-3]))
