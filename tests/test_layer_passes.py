"""Layer passes: each rewrite keeps the model's outputs (run with the NumPy references) and gives
the expected structure; the cases where a rewrite is illegal leave the graph alone."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest

from ml4f.compiler.builder import ModelBuilder, quant
from ml4f.compiler.context import Context
from ml4f.compiler.ir import Module
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import PassManager, parse_pipeline, verify_module
from ml4f.compiler.printer import print_module
from ml4f.compiler.types import TensorType, f32
from ml4f.dialects import layer


def op_counts(module: Module) -> Counter:
    return Counter(op.name.split(".", 1)[1] for op in module.ops[0].body.block.ops)


def run(module: Module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    outputs, _ = layer.run_model(module.ops[0], inputs)
    return outputs


def random_inputs(module: Module, rng: np.random.Generator) -> list[np.ndarray]:
    xs = []
    for op in module.ops[0].inputs:
        t = op.result.type
        if t.quant is not None:
            xs.append(rng.integers(-128, 128, size=t.shape).astype(np.int8))
        else:
            xs.append(rng.uniform(-2, 2, size=t.shape).astype(np.float32))
    return xs


def apply_and_compare(module: Module, pipeline: str, seed: int = 0, exact: bool = False) -> Module:
    """Run `pipeline` (verifying after each pass); outputs must agree within 1e-5 relative (or
    exactly for int8). The module also survives a print/parse round trip afterwards."""
    rng = np.random.default_rng(seed)
    xs = random_inputs(module, rng)
    before = run(module, xs)
    PassManager(parse_pipeline(pipeline)).run(Context(), module)
    after = run(module, xs)
    for b, a in zip(before, after, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            err = np.abs(a.astype(np.float64) - b.astype(np.float64))
            bound = 1e-5 * (1 + np.abs(b.astype(np.float64)))
            assert np.all(err <= bound), f"max error {err.max()} after {pipeline}"
    text = print_module(module)
    reparsed = parse(text, "<roundtrip>")
    verify_module(reparsed)
    assert print_module(reparsed) == text
    return module


def weights(b: ModelBuilder, name: str, rng: np.random.Generator, shape: tuple[int, ...],
            dtype: type = np.float32):
    return b.weights(name, rng.normal(0, 0.5, size=shape).astype(dtype))


def batch_norm(b: ModelBuilder, x, c: int, rng: np.random.Generator, name: str = "bn"):
    return b.add(layer.BatchNorm, x, name=name, gamma=weights(b, f"{name}.gamma", rng, (c,)),
                 beta=weights(b, f"{name}.beta", rng, (c,)), mean=weights(b, f"{name}.mean", rng, (c,)),
                 variance=b.weights(f"{name}.var", rng.uniform(0.2, 3, size=c).astype(np.float32)),
                 epsilon=float(rng.choice([1e-3, 1e-5])))


# A producer maker: (builder, input value, rng, dtype, with_bias, activation) -> (value, channels).
Producer = Callable[..., tuple]


def _conv2d(b, x, rng, dtype, bias, act):
    cin = x.type.shape[-1]
    return b.add(layer.Conv2D, x, name="conv", kernel=weights(b, "conv.kernel", rng, (4, 3, 3, cin), dtype),
                 bias=weights(b, "conv.b", rng, (4,)) if bias else None, padding="same",
                 strides=(2, 1), activation=act), 4


def _conv1d(b, x, rng, dtype, bias, act):
    cin = x.type.shape[-1]
    return b.add(layer.Conv1D, x, name="conv", kernel=weights(b, "conv.kernel", rng, (5, 3, cin), dtype),
                 bias=weights(b, "conv.b", rng, (5,)) if bias else None, activation=act), 5


def _dw2d(b, x, rng, dtype, bias, act):
    cin = x.type.shape[-1]
    return b.add(layer.DepthwiseConv2D, x, name="dw",
                 kernel=weights(b, "dw.kernel", rng, (3, 3, cin * 2), dtype),
                 bias=weights(b, "dw.b", rng, (cin * 2,)) if bias else None, depth_multiplier=2,
                 padding="same", activation=act), cin * 2


def _dw1d(b, x, rng, dtype, bias, act):
    cin = x.type.shape[-1]
    return b.add(layer.DepthwiseConv1D, x, name="dw", kernel=weights(b, "dw.kernel", rng, (3, cin), dtype),
                 bias=weights(b, "dw.b", rng, (cin,)) if bias else None, activation=act), cin


def _dense(b, x, rng, dtype, bias, act):
    cin = x.type.shape[-1]
    return b.add(layer.Dense, x, name="fc", kernel=weights(b, "fc.kernel", rng, (6, cin), dtype),
                 bias=weights(b, "fc.b", rng, (6,)) if bias else None, activation=act), 6


PRODUCERS: dict[str, tuple[Producer, tuple[int, ...]]] = {
    "conv2d": (_conv2d, (1, 6, 5, 3)), "conv1d": (_conv1d, (1, 9, 3)),
    "depthwise_conv2d": (_dw2d, (1, 5, 5, 3)), "depthwise_conv1d": (_dw1d, (1, 8, 4)),
    "dense": (_dense, (1, 7)),
}


# ----------------------------------------------------------------------------- fold-batchnorm


@pytest.mark.parametrize("kind", sorted(PRODUCERS))
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["f32", "f16"])
def test_fold_batchnorm(kind: str, bias: bool, dtype: type) -> None:
    make, shape = PRODUCERS[kind]
    rng = np.random.default_rng(zlib.crc32(f"{kind}{bias}{dtype.__name__}".encode()))
    b = ModelBuilder("m")
    x = b.input(shape)
    y, c = make(b, x, rng, dtype, bias, None)
    b.output(batch_norm(b, y, c, rng))
    m = b.finish()
    name = y.name_hint
    apply_and_compare(m, "fold-batchnorm")
    assert op_counts(m) == Counter({"input": 1, kind: 1, "output": 1})
    prod = m.ops[0].body.block.ops[1]
    assert prod.result.name_hint == name
    # Folded weights are stored in float32 (rounding them back to f16 would change the results).
    assert prod.kernel.type.elem == f32 and prod.bias is not None and prod.bias.type == TensorType((c,), f32)


def test_fold_batchnorm_keeps_illegal_cases() -> None:
    rng = np.random.default_rng(1)
    b = ModelBuilder("m")
    x = b.input((1, 6, 6, 2))
    # (1) a fused activation in the producer.
    c1, _ = _conv2d(b, x, rng, np.float32, True, "relu")
    n1 = batch_norm(b, c1, 4, rng, "bn1")
    # (2) a producer with a second user.
    c2 = b.add(layer.Conv2D, x, name="c2", kernel=weights(b, "c2.k", rng, (4, 1, 1, 2)))
    n2 = batch_norm(b, c2, 4, rng, "bn2")
    s = b.add(layer.Add, n2, c2, name="sum")
    # (3) a producer that is not a conv/dense, and (4) a model input.
    p = b.add(layer.MaxPool2D, x, name="pool", pool_size=(2, 2), strides=(2, 2))
    n3 = batch_norm(b, p, 2, rng, "bn3")
    n4 = batch_norm(b, x, 2, rng, "bn4")
    # (5) a legal one, to show the pass did run.
    c5 = b.add(layer.Conv2D, n4, name="c5", kernel=weights(b, "c5.k", rng, (3, 1, 1, 2)))
    n5 = batch_norm(b, c5, 3, rng, "bn5")
    b.output(n1, s, n3, n5)
    m = b.finish()
    apply_and_compare(m, "fold-batchnorm")
    names = [op.result.name_hint for op in m.ops[0].body.block.ops if isinstance(op, layer.BatchNorm)]
    assert names == ["bn1", "bn2", "bn3", "bn4"]
    assert op_counts(m)["conv2d"] == 3


def test_fold_batchnorm_with_elided_weights_is_an_error() -> None:
    text = """layer.model @m {
  %x = layer.input : tensor<1x4xf32>
  %d = layer.dense %x {kernel = dense_resource<k>} : tensor<1x2xf32>
  %b = layer.batch_norm %d {gamma = dense_resource<g>, beta = dense_resource<g>, \
mean = dense_resource<g>, variance = dense_resource<g>} : tensor<1x2xf32>
  layer.output %b
}

resources {
  k : tensor<2x4xf32> = __elided__
  g : tensor<2xf32> = 0x0000803F0000803F
}
"""
    from ml4f.compiler.diagnostics import CompileError

    m = parse(text, "elided.l4f")
    with pytest.raises(CompileError) as e:
        PassManager(parse_pipeline("fold-batchnorm")).run(Context(), m)
    assert e.value.loc.line == 4 and "weights 'k' were elided" in e.value.one_line()


# ----------------------------------------------------------------------------- fuse-activations


def _binary(cls):
    def make(b, x, rng, dtype, bias, act):
        other = b.add(layer.Sigmoid, x, name="sig")
        return b.add(cls, x, other, name="bin", activation=act), x.type.shape[-1]
    return make


FUSE_PRODUCERS = {**PRODUCERS, "add": (_binary(layer.Add), (1, 4, 3)), "sub": (_binary(layer.Sub), (1, 5)),
                  "mul": (_binary(layer.Mul), (1, 3, 3, 2))}


@pytest.mark.parametrize("kind", sorted(FUSE_PRODUCERS))
@pytest.mark.parametrize("act", ["relu", "relu6"])
def test_fuse_activations(kind: str, act: str) -> None:
    make, shape = FUSE_PRODUCERS[kind]
    rng = np.random.default_rng(zlib.crc32(f"{kind}{act}".encode()))
    b = ModelBuilder("m")
    x = b.input(shape)
    y, _ = make(b, x, rng, np.float32, True, None)
    y = b.add(layer.Relu if act == "relu" else layer.Relu6, y, name="act")
    b.output(y)
    m = b.finish()
    before = op_counts(m)
    apply_and_compare(m, "fuse-activations", seed=3)
    after = op_counts(m)
    assert after[act] == 0 and after[kind] == before[kind]
    fused = [op for op in m.ops[0].body.block.ops if op.name == "layer." + kind]
    assert [op.activation for op in fused] == [act]


def test_fuse_activations_keeps_illegal_cases() -> None:
    rng = np.random.default_rng(2)
    b = ModelBuilder("m")
    x = b.input((1, 8))
    d1, _ = _dense(b, x, rng, np.float32, True, "relu6")
    r1 = b.add(layer.Relu, d1, name="r1")              # producer already has an activation
    d2 = b.add(layer.Dense, x, name="d2", kernel=weights(b, "d2.k", rng, (6, 8)))
    r2 = b.add(layer.Relu6, d2, name="r2")             # producer has a second user
    s = b.add(layer.Sub, d2, r2, name="s")
    l3 = b.add(layer.LeakyRelu, x, name="l3", alpha=0.2)
    r3 = b.add(layer.Relu, l3, name="r3")              # producer cannot fuse
    r4 = b.add(layer.Relu, x, name="r4")               # model input
    c5 = b.add(layer.Concat, r3, r4, name="c5")
    r5 = b.add(layer.Relu, c5, name="r5")              # concat has no activation attribute
    b.output(r1, s, r5)
    m = b.finish()
    apply_and_compare(m, "fuse-activations")
    assert op_counts(m)["relu"] == 4 and op_counts(m)["relu6"] == 1


def _int8_add_relu(relu_quant) -> Module:
    q = quant(0.05, -3)
    b = ModelBuilder("q")
    x1 = b.input((1, 4, 6), elem=q, name="a")
    x2 = b.input((1, 4, 6), elem=q, name="b")
    s = b.add(layer.Add, x1, x2, name="sum", out_elem=quant(0.08, 5))
    r = b.add(layer.Relu, s, name="relu", out_elem=relu_quant)
    b.output(r)
    return b.finish()


def test_fuse_activations_int8_dense() -> None:
    rng = np.random.default_rng(5)
    b = ModelBuilder("q")
    x = b.input((1, 12), elem=quant(0.05, 3))
    k = b.weights("fc.k", rng.integers(-127, 128, size=(8, 12)).astype(np.int8),
                  quant(rng.uniform(0.002, 0.01, size=8), 0, axis=0))
    bias = b.weights("fc.b", rng.integers(-500, 500, size=8).astype(np.int32))
    out_q = quant(0.03, -20)
    d = b.add(layer.Dense, x, name="fc", kernel=k, bias=bias, out_elem=quant(0.05, -10))
    r = b.add(layer.Relu6, d, name="act", out_elem=quant(0.05, -10))
    b.output(b.add(layer.Relu, b.add(layer.Dense, r, name="fc2", kernel=b.weights(
        "fc2.k", rng.integers(-127, 128, size=(4, 8)).astype(np.int8), quant(0.01, 0, axis=0)),
        out_elem=out_q), name="r2", out_elem=out_q))
    m = b.finish()
    apply_and_compare(m, "fuse-activations", exact=True)
    assert [op.activation for op in m.ops[0].layers] == ["relu6", "relu"]
    assert op_counts(m) == Counter({"input": 1, "dense": 2, "output": 1})


def test_fuse_activations_int8() -> None:
    same = _int8_add_relu(quant(0.08, 5))
    apply_and_compare(same, "fuse-activations", exact=True)
    assert op_counts(same)["relu"] == 0 and same.ops[0].body.block.ops[2].activation == "relu"
    other = _int8_add_relu(quant(0.04, -128))
    apply_and_compare(other, "fuse-activations", exact=True)
    assert op_counts(other)["relu"] == 1


# ----------------------------------------------------------------------------- canonicalize


def test_canonicalize_chains() -> None:
    rng = np.random.default_rng(4)
    b = ModelBuilder("m")
    x = b.input((1, 4, 3, 2))
    d = b.add(layer.Dropout, x, name="drop", rate=0.3)
    r1 = b.add(layer.Reshape, d, name="r1", result_type=TensorType((1, 12, 2), f32))
    r2 = b.add(layer.Reshape, r1, name="r2", result_type=TensorType((1, 2, 12), f32))
    f = b.add(layer.Flatten, r2, name="flat")                       # chain -> one flatten of x
    fc = b.add(layer.Dense, f, name="fc", kernel=weights(b, "fc.k", rng, (5, 24)))
    same = b.add(layer.Reshape, fc, name="same", result_type=TensorType((1, 5), f32))   # identity
    f2 = b.add(layer.Flatten, same, name="f2")                      # identity on [1, 5]
    r3 = b.add(layer.Reshape, f2, name="r3", result_type=TensorType((1, 5, 1), f32))
    back = b.add(layer.Flatten, r3, name="back")                    # chain back to [1, 5]: gone
    out3 = b.add(layer.Reshape, back, name="out3", result_type=TensorType((1, 1, 5), f32))
    # A shared middle reshape stays for its other user; the chain after it still collapses.
    m1 = b.add(layer.Reshape, x, name="m1", result_type=TensorType((1, 24), f32))
    m2 = b.add(layer.Reshape, m1, name="m2", result_type=TensorType((1, 6, 4), f32))
    t = b.add(layer.Tanh, m1, name="t")
    b.output(f, out3, m2, t)
    m = b.finish()
    apply_and_compare(m, "canonicalize")
    ops = m.ops[0].body.block.ops
    summary = [(op.name.split(".")[1], op.operands[0].name_hint if op.operands else None,
                op.result.name_hint if op.results else None) for op in ops]
    assert summary == [("input", None, "input"), ("flatten", "input", "flat"), ("dense", "flat", "fc"),
                       ("reshape", "fc", "out3"), ("flatten", "input", "m1"),
                       ("reshape", "input", "m2"), ("tanh", "m1", "t"), ("output", "flat", None)]


def test_canonicalize_reshape_to_flatten_and_int8() -> None:
    q = quant(0.1, 2)
    b = ModelBuilder("q")
    x = b.input((1, 3, 4), elem=q)
    r = b.add(layer.Reshape, x, name="r", result_type=TensorType((1, 12), q))
    d = b.add(layer.Dropout, r, name="d", out_elem=q)
    b.output(d)
    m = b.finish()
    apply_and_compare(m, "canonicalize", exact=True)
    assert op_counts(m) == Counter({"input": 1, "flatten": 1, "output": 1})
    assert m.ops[0].body.block.ops[1].result.type == TensorType((1, 12), q)


# ----------------------------------------------------------------------------- random models


def random_model(seed: int) -> Module:
    """A random small DAG (convs, BN, activations, residual adds, dropout, reshapes)."""
    rng = np.random.default_rng(seed)
    b = ModelBuilder(f"rand{seed}")
    h, w, c = int(rng.integers(4, 8)), int(rng.integers(4, 8)), int(rng.integers(1, 4))
    x = b.input((1, h, w, c))
    vals = [x]
    for i in range(int(rng.integers(3, 8))):
        v = vals[-1] if rng.random() < 0.7 else vals[int(rng.integers(len(vals)))]
        cin = v.type.shape[-1]
        kind = rng.choice(["conv", "dw", "bn", "relu", "relu6", "add", "dropout", "reshape"])
        dtype = np.float16 if rng.random() < 0.3 else np.float32
        if kind == "conv":
            co = int(rng.integers(1, 5))
            v = b.add(layer.Conv2D, v, name=f"conv{i}", padding="same",
                      kernel=weights(b, f"conv{i}.k", rng, (co, 3, 3, cin), dtype),
                      bias=weights(b, f"conv{i}.b", rng, (co,)) if rng.random() < 0.5 else None)
        elif kind == "dw":
            v = b.add(layer.DepthwiseConv2D, v, name=f"dw{i}", padding="same",
                      kernel=weights(b, f"dw{i}.k", rng, (3, 3, cin), dtype))
        elif kind == "bn":
            v = batch_norm(b, v, cin, rng, f"bn{i}")
        elif kind in ("relu", "relu6"):
            v = b.add(layer.Relu if kind == "relu" else layer.Relu6, v, name=f"{kind}_{i}")
        elif kind == "add":
            same = [u for u in vals if u.type == v.type and u is not v]
            if same:
                v = b.add(layer.Add, v, same[int(rng.integers(len(same)))], name=f"add{i}")
        elif kind == "dropout":
            v = b.add(layer.Dropout, v, name=f"drop{i}")
        else:
            s = v.type.shape
            v = b.add(layer.Reshape, v, name=f"resh{i}",
                      result_type=TensorType((1, s[1] * s[2], 1, s[3]), f32))
            v = b.add(layer.Reshape, v, name=f"back{i}", result_type=TensorType(s, f32))
        vals.append(v)
    b.output(b.add(layer.Flatten, vals[-1], name="flat"))
    return b.finish()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("pipeline", ["fold-batchnorm", "fuse-activations", "canonicalize",
                                      "canonicalize,fold-batchnorm,fuse-activations"])
def test_random_models(seed: int, pipeline: str) -> None:
    m = random_model(seed)
    before = op_counts(m)
    apply_and_compare(m, pipeline, seed=seed)
    after = op_counts(m)
    if "canonicalize" in pipeline:
        assert after["dropout"] == 0 and after["reshape"] == 0
    assert sum(after.values()) <= sum(before.values())
    if pipeline == "fold-batchnorm":
        for op in m.ops[0].body.block.ops:
            if isinstance(op, layer.BatchNorm):
                prod = op.x.op
                assert not isinstance(prod, (layer.Conv2D, layer.DepthwiseConv2D)) or \
                    len(prod.result.uses) > 1 or prod.activation != "none"


# ----------------------------------------------------------------------------- real models

from shared_models import MODELS


@pytest.mark.parametrize("rel, left", [
    ("tinymaix/mnist_valid.h5", {"conv2d": 3, "dense": 1}),
    ("tinymaix/vww96.h5", {"conv2d": 15, "depthwise_conv2d": 13}),
    ("mlperf_tiny/pretrainedResnet.h5", {"conv2d": 9, "add": 3, "flatten": 1}),
    ("tfjs/dwsep_cnn.json", {"conv2d": 3, "depthwise_conv2d": 2, "flatten": 1}),
    ("mlperf_tiny/kws_ref_model.tflite", {"depthwise_conv2d": 4, "flatten": 1}),
])
def test_real_models(rel: str, left: dict[str, int]) -> None:
    """On real models every batch_norm folds, every relu/relu6 fuses and dropout goes; the outputs
    stay (the int8 KWS model exactly)."""
    from ml4f.compiler.importers import keras, tfjs, tflite

    path = MODELS / rel
    if not path.exists():
        pytest.skip(f"{path} is not available")
    load = {".h5": keras.load, ".json": tfjs.load, ".tflite": tflite.load}[path.suffix]
    m = load(str(path))
    apply_and_compare(m, "canonicalize,fold-batchnorm,fuse-activations", exact=path.suffix == ".tflite")
    counts = op_counts(m)
    for kind in ("batch_norm", "relu", "relu6", "dropout", "reshape"):
        assert counts[kind] == 0, (kind, counts)
    for kind, n in left.items():
        assert counts[kind] == n, (kind, counts)
