"""Every float layer op, lowered to loops and interpreted, equals its NumPy reference (DESIGN §7),
before and after each loop pass; the text form of the lowered IR parses back to the same IR."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.interpret_loop import run_func
from ml4f.compiler.ir import Module
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import PassManager, parse_pipeline, verify_module
from ml4f.compiler.printer import print_module
from ml4f.compiler.transforms.plan_memory import check_plan
from ml4f.compiler.types import TensorType, f32
from ml4f.dialects import layer as L

PIPELINES = [
    "lower-to-loops",
    "lower-to-loops,loop-canonicalize",
    "lower-to-loops,tile",
    "lower-to-loops,tile{sizes=3,2}",
    "lower-to-loops,unroll{factor=3}",
    "lower-to-loops,tile{sizes=2,4},unroll,plan-memory",
]


class Case:
    """A one-layer (or short) model: `build(b, x, w)` adds layers to the input x."""

    def __init__(self, name: str, shape: tuple[int, ...], build: Callable[..., Any],
                 f16: bool = False):
        self.name, self.shape, self.build, self.f16 = name, shape, build, f16

    def module(self, seed: int = 0) -> Module:
        rng = np.random.default_rng(seed)
        b = ModelBuilder(self.name)
        dtype = np.float16 if self.f16 else np.float32

        def w(*shape: int, positive: bool = False) -> Any:
            data = rng.uniform(0.5, 1.5, shape) if positive else rng.normal(0, 0.5, shape)
            return b.weights(f"w{len(b.names)}_{rng.integers(1 << 30)}", data.astype(dtype))

        x = b.input(self.shape)
        out = self.build(b, x, w)
        b.output(*(out if isinstance(out, tuple) else (out,)))
        return b.finish()


def conv(cls: type, k: tuple[int, ...], cout: int | None = None, **attrs: Any) -> Callable[..., Any]:
    def build(b: ModelBuilder, x: Any, w: Callable[..., Any]) -> Any:
        cin = x.type.shape[-1]
        if cls in (L.DepthwiseConv2D, L.DepthwiseConv1D):
            m = attrs.get("depth_multiplier", 1)
            return b.add(cls, x, name="dw", kernel=w(*k, cin * m), bias=w(cin * m), **attrs)
        return b.add(cls, x, name="conv", kernel=w(cout, *k, cin), bias=w(cout), **attrs)
    return build


def single(cls: type, **attrs: Any) -> Callable[..., Any]:
    return lambda b, x, w: b.add(cls, x, name="op", **attrs)


def bn(b: ModelBuilder, x: Any, w: Callable[..., Any]) -> Any:
    c = x.type.shape[-1]
    return b.add(L.BatchNorm, x, name="bn", gamma=w(c), beta=w(c), mean=w(c),
                 variance=w(c, positive=True), epsilon=0.001)


CASES = [
    Case("conv2d_valid", (1, 7, 6, 3), conv(L.Conv2D, (3, 3), 5)),
    Case("conv2d_same_s2", (1, 9, 8, 3), conv(L.Conv2D, (3, 3), 6, strides=[2, 2], padding="same")),
    Case("conv2d_same_dil2", (1, 9, 7, 2), conv(L.Conv2D, (3, 3), 4, dilation=[2, 2], padding="same")),
    Case("conv2d_same_k4_s3", (1, 10, 11, 2), conv(L.Conv2D, (4, 2), 3, strides=[3, 2], padding="same")),
    Case("conv2d_1x1_relu6", (1, 5, 5, 8), conv(L.Conv2D, (1, 1), 7, activation="relu6")),
    Case("conv2d_f16", (1, 6, 6, 2), conv(L.Conv2D, (3, 3), 4, padding="same", activation="relu"),
         f16=True),
    Case("conv1d_same", (1, 20, 3), conv(L.Conv1D, (4,), 8, padding="same", activation="relu")),
    Case("conv1d_valid_s2", (1, 21, 2), conv(L.Conv1D, (3,), 5, strides=[2])),
    Case("conv1d_same_dil2", (1, 13, 3), conv(L.Conv1D, (3,), 4, dilation=[2], padding="same")),
    Case("dw2d_same", (1, 8, 7, 4), conv(L.DepthwiseConv2D, (3, 3), padding="same")),
    Case("dw2d_valid_s2_m2", (1, 9, 9, 3), conv(L.DepthwiseConv2D, (3, 3), strides=[2, 2],
                                                 depth_multiplier=2)),
    Case("dw2d_same_dil2_m3", (1, 7, 8, 2), conv(L.DepthwiseConv2D, (3, 3), dilation=[2, 2],
                                                  padding="same", depth_multiplier=3)),
    Case("dw2d_same_s2_relu", (1, 10, 10, 5), conv(L.DepthwiseConv2D, (3, 3), strides=[2, 2],
                                                   padding="same", activation="relu")),
    Case("dw1d_same_m2", (1, 11, 3), conv(L.DepthwiseConv1D, (3,), padding="same", depth_multiplier=2)),
    Case("dw1d_valid_s2", (1, 12, 4), conv(L.DepthwiseConv1D, (5,), strides=[2])),
    Case("dense", (1, 10), lambda b, x, w: b.add(L.Dense, x, name="fc", kernel=w(7, 10), bias=w(7))),
    Case("dense_rank3_relu", (1, 3, 5), lambda b, x, w: b.add(L.Dense, x, name="fc", kernel=w(4, 5),
                                                              activation="relu")),
    Case("dense_f16", (1, 33), lambda b, x, w: b.add(L.Dense, x, name="fc", kernel=w(9, 33), bias=w(9)),
         f16=True),
    Case("maxpool2d_valid", (1, 8, 9, 3), single(L.MaxPool2D, pool_size=[2, 2], strides=[2, 2])),
    Case("maxpool2d_same_3s2", (1, 7, 7, 2), single(L.MaxPool2D, pool_size=[3, 3], strides=[2, 2],
                                                    padding="same")),
    Case("avgpool2d_same_3s1", (1, 5, 6, 3), single(L.AvgPool2D, pool_size=[3, 3], strides=[1, 1],
                                                    padding="same")),
    Case("avgpool2d_valid_2x3", (1, 6, 9, 2), single(L.AvgPool2D, pool_size=[2, 3], strides=[1, 2])),
    Case("maxpool1d_same", (1, 11, 4), single(L.MaxPool1D, pool_size=[3], strides=[2], padding="same")),
    Case("avgpool1d_valid", (1, 10, 3), single(L.AvgPool1D, pool_size=[2], strides=[2])),
    Case("avgpool1d_same", (1, 9, 2), single(L.AvgPool1D, pool_size=[4], strides=[3], padding="same")),
    Case("global_avg_2d", (1, 5, 6, 7), single(L.GlobalAvgPool)),
    Case("global_max_1d_keep", (1, 9, 4), single(L.GlobalMaxPool, keepdims=True)),
    Case("global_max_2d", (1, 3, 4, 5), single(L.GlobalMaxPool)),
    Case("batch_norm", (1, 4, 5, 6), bn),
    Case("relu", (1, 4, 6), single(L.Relu)),
    Case("relu6", (1, 3, 3, 4), single(L.Relu6)),
    Case("leaky_0.2", (1, 17), single(L.LeakyRelu, alpha=0.2)),
    Case("leaky_1.5", (1, 2, 8), single(L.LeakyRelu, alpha=1.5)),
    Case("sigmoid", (1, 30), single(L.Sigmoid)),
    Case("tanh", (1, 5, 6), single(L.Tanh)),
    Case("hard_swish", (1, 3, 4, 5), single(L.HardSwish)),
    Case("softmax", (1, 10), single(L.Softmax)),
    Case("softmax_rows_beta", (1, 4, 6), single(L.Softmax, beta=0.5)),
    Case("add3_relu", (1, 4, 4, 3), lambda b, x, w: b.add(
        L.Add, x, b.add(L.Relu, x, name="r"), b.add(L.Sigmoid, x, name="s"), name="add",
        activation="relu")),
    Case("add_broadcast", (1, 4, 5, 3), lambda b, x, w: b.add(
        L.Add, x, b.add(L.GlobalAvgPool, x, name="g", keepdims=True), name="add")),
    Case("sub_mul_broadcast", (1, 6, 3), lambda b, x, w: b.add(
        L.Mul, b.add(L.Sub, x, b.add(L.GlobalMaxPool, x, name="g", keepdims=True), name="sub"),
        b.add(L.Tanh, x, name="t"), name="mul")),
    Case("concat_channels", (1, 4, 4, 2), lambda b, x, w: b.add(
        L.Concat, x, b.add(L.Relu, x, name="r"), b.add(L.Tanh, x, name="t"), name="cat", axis=-1)),
    Case("concat_axis1", (1, 3, 5), lambda b, x, w: b.add(
        L.Concat, x, b.add(L.MaxPool1D, x, name="p", pool_size=[2], strides=[2]), name="cat", axis=1)),
    Case("zero_pad", (1, 4, 3, 2), single(L.ZeroPad, pads=[[0, 0], [1, 2], [2, 0], [0, 0]])),
    Case("cropping2d", (1, 7, 6, 3), single(L.Cropping, crops=[[1, 2], [0, 3]])),
    Case("cropping1d", (1, 9, 2), single(L.Cropping, crops=[[2, 1]])),
    Case("upsample2d", (1, 3, 4, 2), single(L.Upsample, size=[2, 3])),
    Case("upsample1d", (1, 5, 3), single(L.Upsample, size=[2])),
    Case("reshape_flatten_dropout", (1, 4, 3, 2), lambda b, x, w: b.add(
        L.Dense, b.add(L.Dropout, b.add(L.Flatten, b.add(L.Reshape, x, name="rs",
                                                          result_type=TensorType((1, 6, 4), f32)),
                                        name="fl"), name="do"), name="fc", kernel=w(3, 24))),
    Case("conv_bn_relu_fused", (1, 6, 6, 3), lambda b, x, w: b.add(
        L.Relu, bn(b, conv(L.Conv2D, (3, 3), 4, padding="same")(b, x, w), w), name="relu")),
    Case("dense_sigmoid_softmax", (1, 12), lambda b, x, w: b.add(L.Softmax, b.add(
        L.Sigmoid, b.add(L.Dense, x, name="fc", kernel=w(5, 12), bias=w(5)), name="sig"), name="sm")),
    # f16 weights over a 4-tap window: 8 positions x 2 channels per tile, 2 remainder positions
    Case("conv1d_k4_f16_wide_tile", (1, 21, 3), conv(L.Conv1D, (4,), 6, activation="relu"), f16=True),
    # tensors between 1-D windows stored channel-major (lower-to-loops' channel_major)
    Case("conv1d_pool_conv1d_channel_major", (1, 19, 3), lambda b, x, w: conv(L.Conv1D, (2,), 5)(
        b, b.add(L.MaxPool1D, conv(L.Conv1D, (3,), 8, activation="relu")(b, x, w), name="p",
                 pool_size=[2], strides=[2]), w)),
    Case("conv2d_kx1_chain_f16", (1, 13, 2, 3), lambda b, x, w: conv(L.Conv2D, (2, 1), 4)(
        b, conv(L.Conv2D, (4, 1), 6, activation="relu")(b, x, w), w), f16=True),
    # depthwise convolutions over channel-major input: tiles of 8 positions of one channel, the
    # kernel laid out by channel; 'same' borders, a depth multiplier, stride 2, f16 weights
    Case("conv2d_depthwise_channel_major", (1, 13, 12, 2), lambda b, x, w: conv(
        L.DepthwiseConv2D, (3, 3), activation="relu", padding="same")(
        b, conv(L.Conv2D, (3, 3), 3, activation="relu")(b, x, w), w)),
    Case("conv2d_depthwise_channel_major_m2_f16", (1, 12, 13, 3), lambda b, x, w: conv(
        L.DepthwiseConv2D, (3, 3), depth_multiplier=2)(b, conv(L.Conv2D, (1, 1), 4)(b, x, w), w), f16=True),
    Case("conv1d_depthwise1d_channel_major_m2_f16", (1, 23, 3), lambda b, x, w: conv(
        L.DepthwiseConv1D, (3,), activation="relu", padding="same", depth_multiplier=2)(
        b, conv(L.Conv1D, (3,), 4, activation="relu")(b, x, w), w), f16=True),
    # a 5-tap border: its bias run loads while the first product's add waits (runs drain products)
    Case("conv1d_depthwise1d_k5_m2_same", (1, 12, 1), lambda b, x, w: conv(
        L.DepthwiseConv1D, (5,), padding="same", depth_multiplier=2)(
        b, conv(L.Conv1D, (2,), 8, activation="relu", padding="same")(b, x, w), w)),
    Case("conv2d_depthwise_channel_major_stride2", (1, 14, 14, 2), lambda b, x, w: conv(
        L.DepthwiseConv2D, (3, 3), strides=[2, 2], padding="same")(
        b, b.add(L.MaxPool2D, conv(L.Conv2D, (3, 3), 5)(b, x, w), name="p", pool_size=[1, 1],
                 strides=[1, 1]), w)),
    # max poolings folded into the convolution before them (the conv's last position unread)
    Case("conv1d_relu_maxpool", (1, 21, 5), lambda b, x, w: b.add(
        L.MaxPool1D, conv(L.Conv1D, (3,), 8, activation="relu")(b, x, w), name="p", pool_size=[2],
        strides=[2])),
    Case("conv2d_maxpool2x2_f16", (1, 9, 8, 3), lambda b, x, w: b.add(
        L.MaxPool2D, conv(L.Conv2D, (3, 3), 6, activation="relu")(b, x, w), name="p",
        pool_size=[2, 2], strides=[2, 2]), f16=True),
    Case("conv2d_relu6_sigmoid_pool_tanh", (1, 6, 7, 4), lambda b, x, w: b.add(L.Tanh, b.add(
        L.MaxPool2D, b.add(L.Sigmoid, conv(L.Conv2D, (1, 1), 5, activation="relu6")(b, x, w), name="s"),
        name="p", pool_size=[3, 1], strides=[3, 1]), name="t")),
    Case("dw1d_maxpool3", (1, 14, 4), lambda b, x, w: b.add(
        L.MaxPool1D, conv(L.DepthwiseConv1D, (3,), depth_multiplier=2)(b, x, w), name="p",
        pool_size=[3], strides=[3])),
    Case("two_outputs", (1, 6, 2), lambda b, x, w: (b.add(L.Relu, x, name="r"),
                                                    b.add(L.Conv1D, x, name="c", kernel=w(3, 2, 2)))),
]


def close(out: np.ndarray, ref: np.ndarray) -> tuple[bool, float]:
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return bool(np.all(err <= 1e-4 * (1 + np.abs(ref)))), float(err.max(initial=0.0))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_lowered_equals_reference(case: Case) -> None:
    module = case.module()
    text = print_module(module)
    model = module.ops[0]
    x = np.random.default_rng(1).uniform(-2, 2, case.shape).astype(np.float32)
    refs = L.run_model(model, [x])[0]
    for pipe in PIPELINES:
        m = parse(text, case.name, Context())
        PassManager(parse_pipeline(pipe)).run(Context(), m)
        func = m.ops[0]
        assert func.name == "loop.func"
        # Every lowered op remembers the layer it came from.
        assert all(op.origin is not None for op in func.walk() if op is not func), pipe
        if "plan-memory" in pipe:
            check_plan(func)
            assert func.arena_lower_bound <= func.arena_size
            lowered = print_module(m)
            m2 = parse(lowered, "lowered.l4f", Context())
            verify_module(m2)
            assert print_module(m2) == lowered
            func = m2.ops[0]
        outs = run_func(func, [x])
        for out, ref in zip(outs, refs):
            ok, err = close(out, ref)
            assert ok, f"{pipe}: max |err| {err}"


def test_fusion_and_same_padding_by_bounds() -> None:
    """conv + batch_norm + relu is one kernel whose store applies scale/shift and max; 'same'
    padding splits the output into segments rather than copying a padded input."""
    module = CASES[[c.name for c in CASES].index("conv_bn_relu_fused")].module()
    PassManager(parse_pipeline("lower-to-loops")).run(Context(), module)
    func = module.ops[0]
    assert [k.symbol for k in func.kernels] == ["conv"]
    assert len(func.allocs) == 2  # input and the fused result: no padded copy, no bn buffer
    kinds = [op.name for op in func.kernels[0].walk()]
    assert "loop.fma" in kinds and "loop.maxf" in kinds
    # 3x3 'same' on 6x6: three row segments times three column segments.
    nests = [op for op in func.kernels[0].body.block.ops if op.name == "loop.for"]
    assert len(nests) == 9


def test_tile_register_blocks() -> None:
    """tile{sizes=4,4} gives 16 accumulators sharing 4 input and 4 weight loads per tap."""
    case = Case("blk", (1, 8, 8, 4), conv(L.Conv2D, (3, 3), 8))
    module = case.module()
    PassManager(parse_pipeline("lower-to-loops,tile{sizes=4,4}")).run(Context(), module)
    innermost = [op for op in module.walk() if op.name == "loop.for"
                 and not any(o.name == "loop.for" for o in op.body.block.ops)]
    body = innermost[0].body.block.ops
    assert sum(o.name == "loop.acc_fma" for o in body) == 16
    assert sum(o.name == "loop.load" for o in body) == 8


def test_int8_op_is_refused_with_location() -> None:
    from ml4f.compiler.builder import quant

    b = ModelBuilder("q", file="q.tflite")
    x = b.input((1, 4))
    y = b.add(L.Quantize, x, name="quant", out_elem=quant(0.1, 0))
    b.output(y)
    module = b.finish()
    with pytest.raises(CompileError) as e:
        PassManager(parse_pipeline("lower-to-loops")).run(Context(), module)
    assert "q.tflite: layer 'quant'" in e.value.one_line()
    assert "int8" in e.value.one_line()


def test_error_in_lowered_op_names_layer() -> None:
    module = CASES[0].module()
    PassManager(parse_pipeline("lower-to-loops")).run(Context(), module)
    load = next(op for op in module.walk() if op.name == "loop.load")
    load.attributes["offset"] = 10_000
    with pytest.raises(CompileError) as e:
        verify_module(module)
    assert "lowered from layer.conv2d 'conv'" in e.value.one_line()
    assert "outside the buffer" in e.value.one_line()


@st.composite
def windows(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["conv", "dw", "max", "avg"]))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    padding = draw(st.sampled_from(["valid", "same"]))
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dil = [1, 1]
    if kind in ("conv", "dw") and strides == [1, 1]:
        dil = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    if padding == "valid":
        kh, kw = min(kh, (h - 1) // dil[0] + 1), min(kw, (w - 1) // dil[1] + 1)
    c = draw(st.integers(1, 3))
    if kind == "conv":
        build = conv(L.Conv2D, (kh, kw), draw(st.integers(1, 5)), strides=strides, dilation=dil,
                     padding=padding)
    elif kind == "dw":
        build = conv(L.DepthwiseConv2D, (kh, kw), strides=strides, dilation=dil, padding=padding,
                     depth_multiplier=draw(st.integers(1, 2)))
    else:
        cls = L.MaxPool2D if kind == "max" else L.AvgPool2D
        build = single(cls, pool_size=[kh, kw], strides=strides, padding=padding)
    return Case(f"{kind}_{h}x{w}_k{kh}x{kw}_s{strides}_d{dil}_{padding}", (1, h, w, c), build)


@settings(max_examples=150, deadline=None)
@given(windows(), st.sampled_from(["lower-to-loops", "lower-to-loops,tile{sizes=3,2},unroll"]))
def test_windowed_ops_any_geometry(case: Case, pipe: str) -> None:
    """Random sizes, windows, strides, dilations and paddings: segments cover every output and
    no load leaves the input (the verifier checks each access's index range statically)."""
    module = case.module()
    x = np.random.default_rng(4).uniform(-2, 2, case.shape).astype(np.float32)
    ref = L.run_model(module.ops[0], [x])[0][0]
    PassManager(parse_pipeline(pipe)).run(Context(), module)
    ok, err = close(run_func(module.ops[0], [x])[0], ref)
    assert ok, f"{case.name}: max |err| {err}"
