"""The loop-dialect `fuse` pass: element-wise kernels merged into their producers compute what the
unfused program and the layer references compute (DESIGN §7), `lower-to-loops{fuse=false},fuse`
equals `lower-to-loops`, the planned arena never grows, and illegal fusions are left alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.context import Context
from ml4f.compiler.interpret_loop import run_func
from ml4f.compiler.ir import Module
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import PassManager, parse_pipeline
from ml4f.compiler.printer import print_module
from ml4f.compiler.transforms.loop_fuse import digits, match_elementwise
from ml4f.compiler.transforms.plan_memory import check_plan
from ml4f.dialects import layer as L
from ml4f.dialects import loop

Build = Callable[[ModelBuilder, Any, Callable[..., Any]], Any]


def make(name: str, shape: tuple[int, ...], build: Build, seed: int = 0) -> Module:
    rng = np.random.default_rng(seed)
    b = ModelBuilder(name)

    def w(*s: int, positive: bool = False) -> Any:
        data = rng.uniform(0.5, 1.5, s) if positive else rng.normal(0, 0.5, s)
        return b.weights(f"w{len(b.names)}_{rng.integers(1 << 30)}", data.astype(np.float32))

    x = b.input(shape)
    out = build(b, x, w)
    b.output(*(out if isinstance(out, tuple) else (out,)))
    return b.finish()


def run(text: str, pipe: str) -> Module:
    m = parse(text, "fuse.l4f", Context())
    PassManager(parse_pipeline(pipe)).run(Context(), m)
    return m


def dedupe_weights(m: Module) -> None:
    """Merge loop.weights buffers with equal contents (lower-to-loops makes one batch-norm
    scale/shift pair per 'same'-padding segment; the fuse pass shares one)."""
    for func in m.ops:
        seen: dict[tuple[str, bytes], Any] = {}
        for op in list(func.body.block.ops):
            if isinstance(op, loop.WeightsBuf):
                key = (str(op.result.type), op.data.array().tobytes())
                if key in seen:
                    op.result.replace_all_uses_with(seen[key])
                    func.body.block.erase(op)
                else:
                    seen[key] = op.result


def close(out: np.ndarray, ref: np.ndarray) -> tuple[bool, float]:
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    return bool(np.all(err <= 1e-4 * (1 + np.abs(ref)))), float(err.max(initial=0.0))


# ----------------------------------------------------------------------------- models


def bn(b: ModelBuilder, x: Any, w: Callable[..., Any]) -> Any:
    c = x.type.shape[-1]
    return b.add(L.BatchNorm, x, name="bn", gamma=w(c), beta=w(c), mean=w(c),
                 variance=w(c, positive=True), epsilon=0.001)


PRODUCERS: dict[str, tuple[tuple[int, ...], Build]] = {
    "conv2d_same_s2": ((1, 7, 6, 3), lambda b, x, w: b.add(
        L.Conv2D, x, name="conv", kernel=w(5, 3, 3, 3), bias=w(5), strides=[2, 2], padding="same")),
    "conv1d_same": ((1, 9, 2), lambda b, x, w: b.add(
        L.Conv1D, x, name="conv", kernel=w(4, 3, 2), padding="same", activation="relu")),
    "dw2d_same_m2": ((1, 6, 5, 3), lambda b, x, w: b.add(
        L.DepthwiseConv2D, x, name="dw", kernel=w(3, 3, 6), bias=w(6), padding="same",
        depth_multiplier=2)),
    "dense": ((1, 12), lambda b, x, w: b.add(L.Dense, x, name="fc", kernel=w(7, 12), bias=w(7))),
    "dense_rank3": ((1, 3, 5), lambda b, x, w: b.add(L.Dense, x, name="fc", kernel=w(4, 5))),
    "maxpool_same": ((1, 7, 7, 2), lambda b, x, w: b.add(
        L.MaxPool2D, x, name="pool", pool_size=[3, 3], strides=[2, 2], padding="same")),
    "avgpool1d": ((1, 10, 3), lambda b, x, w: b.add(
        L.AvgPool1D, x, name="pool", pool_size=[2], strides=[2])),
    "global_avg": ((1, 4, 5, 6), lambda b, x, w: b.add(L.GlobalAvgPool, x, name="gap")),
    "add": ((1, 4, 4, 3), lambda b, x, w: b.add(
        L.Add, x, b.add(L.Tanh, x, name="t"), name="add")),
    "mul_broadcast": ((1, 4, 5, 3), lambda b, x, w: b.add(
        L.Mul, x, b.add(L.GlobalMaxPool, x, name="g", keepdims=True), name="mul")),
}

ELEMENTWISE: dict[str, Callable[[ModelBuilder, Any, Callable[..., Any]], Any]] = {
    "relu": lambda b, y, w: b.add(L.Relu, y, name="act"),
    "relu6": lambda b, y, w: b.add(L.Relu6, y, name="act"),
    "leaky_0.2": lambda b, y, w: b.add(L.LeakyRelu, y, name="act", alpha=0.2),
    "leaky_1.5": lambda b, y, w: b.add(L.LeakyRelu, y, name="act", alpha=1.5),
    "sigmoid": lambda b, y, w: b.add(L.Sigmoid, y, name="act"),
    "tanh": lambda b, y, w: b.add(L.Tanh, y, name="act"),
    "hard_swish": lambda b, y, w: b.add(L.HardSwish, y, name="act"),
    "batch_norm": bn,
    "bn_relu6": lambda b, y, w: b.add(L.Relu6, bn(b, y, w), name="act"),
}


def chain(producer: str, ew: str) -> Module:
    shape, build = PRODUCERS[producer]
    return make(f"{producer}_{ew}", shape, lambda b, x, w: ELEMENTWISE[ew](b, build(b, x, w), w),
                seed=len(producer) * 31 + len(ew))


@pytest.mark.parametrize("ew", list(ELEMENTWISE))
@pytest.mark.parametrize("producer", list(PRODUCERS))
def test_fused_equals_unfused_and_reference(producer: str, ew: str) -> None:
    module = chain(producer, ew)
    model = module.ops[0]
    x = np.random.default_rng(7).uniform(-2, 2, model.inputs[0].result.type.shape).astype(np.float32)
    ref = L.run_model(model, [x])[0][0]
    text = print_module(module)

    unfused = run(text, "lower-to-loops{fuse=false},plan-memory")
    fused = run(text, "lower-to-loops{fuse=false},fuse,plan-memory")
    default = run(text, "lower-to-loops,plan-memory")
    fu, ff, fd = (m.ops[0] for m in (unfused, fused, default))
    n_ew = 2 if ew == "bn_relu6" else 1
    assert len(fu.kernels) == len(fd.kernels) + n_ew
    assert len(ff.kernels) == len(fd.kernels)
    assert len(ff.allocs) == len(fu.allocs) - n_ew
    check_plan(ff)
    assert ff.arena_size <= fu.arena_size

    out_u = run_func(fu, [x])[0]
    out_f = run_func(ff, [x])[0]
    ok, err = close(out_u, ref)
    assert ok, f"unfused: max |err| {err}"
    ok, err = close(out_f, ref)
    assert ok, f"fused: max |err| {err}"
    # The same scalar ops in the same order: bit-identical to the unfused program.
    assert np.array_equal(out_f, out_u, equal_nan=True)

    dedupe_weights(fused)
    dedupe_weights(default)
    assert print_module(fused, elide_weights=True) == print_module(default, elide_weights=True)


PIPES_AROUND = [
    # The producer register-blocked first: its stores carry offsets the digits must absorb.
    "lower-to-loops{fuse=false},tile{sizes=2,3},fuse,unroll{factor=3}",
    # Planned before fusing: the pass plans again.
    "lower-to-loops{fuse=false},plan-memory,fuse",
    # Canonicalized consumers still match.
    "lower-to-loops{fuse=false},loop-canonicalize,fuse,tile,unroll",
]


@pytest.mark.parametrize("pipe", PIPES_AROUND)
@pytest.mark.parametrize("producer", ["conv2d_same_s2", "dw2d_same_m2", "dense", "conv1d_same"])
def test_fuse_after_other_loop_passes(producer: str, pipe: str) -> None:
    module = chain(producer, "bn_relu6")
    model = module.ops[0]
    x = np.random.default_rng(3).uniform(-2, 2, model.inputs[0].result.type.shape).astype(np.float32)
    ref = L.run_model(model, [x])[0][0]
    m = run(print_module(module), pipe)
    func = m.ops[0]
    assert len(func.kernels) == 1, [k.symbol for k in func.kernels]
    if func.arena_size >= 0:
        check_plan(func)
        assert all(a.offset >= 0 for a in func.allocs)
    ok, err = close(run_func(func, [x])[0], ref)
    assert ok, f"max |err| {err}"


def residual_block(b: ModelBuilder, x: Any, w: Callable[..., Any]) -> Any:
    c = x.type.shape[-1]
    h = b.add(L.Conv2D, x, name="c1", kernel=w(c, 3, 3, c), bias=w(c), padding="same",
              activation="relu")
    h = b.add(L.Conv2D, h, name="c2", kernel=w(c, 3, 3, c), padding="same")
    return b.add(L.Relu, b.add(L.Add, h, x, name="add"), name="out")


def test_residual_add_fuses_only_when_asked() -> None:
    module = make("res", (1, 5, 6, 3), residual_block)
    model = module.ops[0]
    x = np.random.default_rng(5).uniform(-2, 2, (1, 5, 6, 3)).astype(np.float32)
    ref = L.run_model(model, [x])[0][0]
    text = print_module(module)
    plain = run(text, "lower-to-loops{fuse=false},fuse,plan-memory").ops[0]
    res = run(text, "lower-to-loops{fuse=false},fuse{residual=true},plan-memory").ops[0]
    assert [k.symbol for k in plain.kernels] == ["c1", "c2", "add"]
    assert [k.symbol for k in res.kernels] == ["c1", "c2"]
    assert res.arena_size <= plain.arena_size
    for func in (plain, res):
        check_plan(func)
        ok, err = close(run_func(func, [x])[0], ref)
        assert ok, f"{[k.symbol for k in func.kernels]}: max |err| {err}"


def _unfused_after(build: Build, shape: tuple[int, ...], pipe: str = "fuse{residual=true}") -> list[str]:
    """Kernel names left after fusing, checking the result still equals the reference."""
    module = make("m", shape, build)
    x = np.random.default_rng(2).uniform(-2, 2, shape).astype(np.float32)
    refs = L.run_model(module.ops[0], [x])[0]
    m = run(print_module(module), f"lower-to-loops{{fuse=false}},{pipe},plan-memory")
    func = m.ops[0]
    check_plan(func)
    for out, ref in zip(run_func(func, [x]), refs):
        ok, err = close(out, ref)
        assert ok, f"max |err| {err}"
    return [k.symbol for k in func.kernels]


ILLEGAL: dict[str, tuple[tuple[int, ...], Build, str, list[str]]] = {
    # The convolution's result has a second reader.
    "two_readers": ((1, 5, 3), lambda b, x, w: b.add(
        L.Add, b.add(L.Relu, c := b.add(L.Conv1D, x, name="c", kernel=w(3, 2, 3)), name="r"),
        c, name="add"), "fuse", ["c", "r", "add"]),
    # The producer's result is a model output.
    "output": ((1, 5, 3), lambda b, x, w: (
        c := b.add(L.Conv1D, x, name="c", kernel=w(3, 2, 3)), b.add(L.Sigmoid, c, name="s")),
        "fuse", ["c", "s"]),
    # Softmax reads its output back: applying tanh in its stores would be wrong.
    "reads_back": ((1, 6), lambda b, x, w: b.add(
        L.Tanh, b.add(L.Softmax, x, name="sm"), name="t"), "fuse", ["sm", "t"]),
    # The source is read broadcast (a [1,1,3] result added over [1,4,3]): shapes differ.
    "broadcast_source": ((1, 4, 3), lambda b, x, w: b.add(
        L.Add, x, b.add(L.GlobalMaxPool, x, name="g", keepdims=True), name="add"),
        "fuse{residual=true}", ["g", "add"]),
    # A non-constant operand read broadcast, even with residual=true.
    "broadcast_operand": ((1, 4, 3), lambda b, x, w: b.add(
        L.Add, b.add(L.Conv1D, x, name="c", kernel=w(3, 1, 3)),
        b.add(L.GlobalMaxPool, x, name="g", keepdims=True), name="add"),
        "fuse{residual=true}", ["c", "g", "add"]),
    # The other operand is computed after the producer (and, being an output, cannot be the
    # source itself): it is not ready in the producer's stores.
    "operand_not_ready": ((1, 4, 3), lambda b, x, w: (b.add(
        L.Add, b.add(L.Conv1D, x, name="c", kernel=w(3, 1, 3)), t := b.add(L.Tanh, x, name="t"),
        name="add"), t), "fuse{residual=true}", ["c", "t", "add"]),
    # Without residual=true, an op with two arena operands is not fused.
    "two_operands": ((1, 4, 3), lambda b, x, w: b.add(
        L.Add, b.add(L.Conv1D, x, name="c", kernel=w(3, 1, 3)), b.add(L.Tanh, x, name="t"),
        name="add"), "fuse", ["c", "t", "add"]),
    # A model input is nobody's store.
    "input": ((1, 6), lambda b, x, w: b.add(L.Relu, x, name="r"), "fuse", ["r"]),
}


@pytest.mark.parametrize("case", list(ILLEGAL))
def test_illegal_fusion_is_left_alone(case: str) -> None:
    shape, build, pipe, kernels = ILLEGAL[case]
    assert _unfused_after(build, shape, pipe) == kernels


def test_operand_ready_before_the_later_source() -> None:
    """add(conv, tanh(x)) with residual=true runs in tanh's stores: the convolution is complete
    by then."""
    assert _unfused_after(lambda b, x, w: b.add(
        L.Add, b.add(L.Conv1D, x, name="c", kernel=w(3, 1, 3)), b.add(L.Tanh, x, name="t"),
        name="add"), (1, 4, 3)) == ["c", "t"]


def test_fuses_into_data_movement() -> None:
    """Not done by lower-to-loops, but legal: relu runs in concat's stores, sigmoid in
    upsample's."""
    kernels = _unfused_after(lambda b, x, w: b.add(L.Sigmoid, b.add(L.Upsample, b.add(L.Relu, b.add(
        L.Concat, x, b.add(L.Tanh, x, name="t"), name="cat", axis=-1), name="r"), name="up",
        size=[2]), name="s"), (1, 3, 2), "fuse")
    assert kernels == ["t", "cat", "up"]


CONST_FUNC = """
loop.func @cadd {input_shapes = [[1, 3, 4]], output_shapes = [[1, 3, 4]]} {
  %x = loop.alloc {input = 0} : !loop.buf<12xf32>
  %t = loop.alloc : !loop.buf<12xf32>
  %y = loop.alloc : !loop.buf<12xf32>
  %w = loop.weights {data = dense_resource<w>} : !loop.buf<4xf32>
  %s = loop.weights {data = dense_resource<s>} : !loop.buf<1xf32>
  loop.kernel @neg {
    loop.for %i = 0 to 12 step 1 {
      %a = loop.load %x, %i {strides = [1]} : f32
      %n = loop.negf %a : f32
      loop.store %n, %t, %i {strides = [1]}
    }
  }
  loop.kernel @cadd {inplace = true} {
    loop.for %r = 0 to 3 step 1 {
      loop.for %c = 0 to 4 step 1 {
        %v = loop.load %t, %r, %c {strides = [4, 1]} : f32
        %b = loop.load %w, %c {strides = [1]} : f32
        %k = loop.load %s : f32
        %p = loop.addf %v, %b : f32
        %q = loop.mulf %p, %k : f32
        loop.store %q, %y, %r, %c {strides = [4, 1]}
      }
    }
  }
  loop.return %y
}
resources {
  w : tensor<4xf32> = 0x0000803F000000400000404000008040
  s : tensor<1xf32> = 0x00000040
}
"""


def test_broadcast_constants_from_weights() -> None:
    """An add of a per-channel constant and a mul by a scalar one (weights buffers) fuse into a
    producer that walks rows x channels. A producer with one flat loop over i is kept apart: the
    channel i mod 4 is not affine in i."""
    x = np.arange(12, dtype=np.float32) - 5
    want = (-x.reshape(3, 4) + np.array([1, 2, 3, 4], np.float32)) * 2
    flat = run(CONST_FUNC, "fuse").ops[0]
    assert [k.symbol for k in flat.kernels] == ["neg", "cadd"]  # i // 4 is not affine in i
    split = CONST_FUNC.replace(
        "loop.for %i = 0 to 12 step 1 {\n      %a = loop.load %x, %i {strides = [1]} : f32",
        "loop.for %i = 0 to 3 step 1 {\n    loop.for %j = 0 to 4 step 1 {\n"
        "      %a = loop.load %x, %i, %j {strides = [4, 1]} : f32").replace(
        "loop.store %n, %t, %i {strides = [1]}\n    }",
        "loop.store %n, %t, %i, %j {strides = [4, 1]}\n    }\n    }")
    before = run(split, "loop-canonicalize").ops[0]
    after = run(split, "fuse").ops[0]
    assert [k.symbol for k in after.kernels] == ["neg"]
    assert len(after.allocs) == 2
    for func in (flat, before, after):
        assert np.array_equal(run_func(func, [x])[0].reshape(3, 4), want)


def test_digits() -> None:
    """Mixed-radix digits of a store index over the consumer's row-major extents."""
    m = parse(CONST_FUNC, "d.l4f", Context())
    k = m.ops[0].kernels[1]
    e = match_elementwise(k)
    assert e is not None and e.extents() == [3, 4] and e.out.name_hint == "y"
    r, c = (f.iv for f in e.loops)
    assert digits((0, {r: 4, c: 1}), [3, 4]) == [(0, {r: 1}), (0, {c: 1})]
    assert digits((6, {r: 0}), [3, 4]) == [(1, {}), (2, {})]
    assert digits((1, {c: 1}), [3, 4]) is None  # c + 1 reaches 4: it would carry into the row
    assert digits((0, {}), []) == []
    assert match_elementwise(m.ops[0].kernels[0]) is not None  # a flat element-wise kernel too
