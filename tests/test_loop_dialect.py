"""The loop dialect's primitives in the interpreter (int8 path included), against plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.interpret_loop import run_func
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import verify_module
from ml4f.compiler.printer import print_module

INT8_DOT = """
loop.func @dot {input_shapes = [[1, 8]], output_shapes = [[1, 1]]} {
  %x = loop.alloc {input = 0} : !loop.buf<8xi8>
  %y = loop.alloc : !loop.buf<1xi32>
  %w = loop.weights {data = dense_resource<w>} : !loop.buf<8xi8>
  loop.kernel @dot {
    %zi = loop.const {value = 0.0} : i32
    %acc = loop.acc %zi : !loop.acc<i32>
    loop.for %i = 0 to 8 step 4 {
      %xa = loop.load %x, %i {strides = [1]} : i32
      %xb = loop.load %x, %i {offset = 2, strides = [1]} : i32
      %xc = loop.load %x, %i {offset = 1, strides = [1]} : i32
      %xd = loop.load %x, %i {offset = 3, strides = [1]} : i32
      %wa = loop.load %w, %i {strides = [1]} : i32
      %wb = loop.load %w, %i {offset = 2, strides = [1]} : i32
      %wc = loop.load %w, %i {offset = 1, strides = [1]} : i32
      %wd = loop.load %w, %i {offset = 3, strides = [1]} : i32
      %px = loop.pack16 %xa, %xb : i32
      %pw = loop.pack16 %wa, %wb : i32
      loop.acc_smlad %acc, %px, %pw
      %qx = loop.pack16 %xc, %xd : i32
      %qw = loop.pack16 %wc, %wd : i32
      loop.acc_smlad %acc, %qx, %qw
    }
    %s = loop.acc_read %acc : i32
    loop.store %s, %y
  }
  loop.return %y
}
resources {
  w : tensor<8xi8> = 0xHEXDATA
}
"""


def test_smlad_dot_product_equals_numpy() -> None:
    rng = np.random.default_rng(3)
    w = rng.integers(-128, 128, 8).astype(np.int8)
    x = rng.integers(-128, 128, 8).astype(np.int8)
    m = parse(INT8_DOT.replace("HEXDATA", w.tobytes().hex().upper()), "dot.l4f", Context())
    verify_module(m)
    out = run_func(m.ops[0], [x])[0]
    assert out.dtype == np.int32
    assert int(out.reshape(-1)[0]) == int(np.dot(x.astype(np.int64), w.astype(np.int64)))


def test_sxtb16_and_float_select() -> None:
    text = """
loop.func @f {input_shapes = [[1, 4]], output_shapes = [[1, 4]]} {
  %x = loop.alloc {input = 0} : !loop.buf<4xf32>
  %y = loop.alloc : !loop.buf<4xf32>
  %w = loop.weights {data = dense_resource<w>} : !loop.buf<1xi32>
  loop.kernel @k {
    %zero = loop.const {value = 0.0} : f32
    %word = loop.load %w : i32
    %two = loop.sxtb16 %word : i32
    %lo = loop.shli %two, %sixteen : i32
    %sixteen = loop.const {value = 16.0} : i32
    loop.for %i = 0 to 4 step 1 {
      %a = loop.load %x, %i {strides = [1]} : f32
      %c = loop.cmpf %a, %zero {pred = "lt"} : i32
      %n = loop.negf %a : f32
      %r = loop.select %c, %n, %a : f32
      loop.store %r, %y, %i {strides = [1]}
    }
  }
  loop.return %y
}
resources {
  w : tensor<1xi32> = 0x80FF7F00
}
"""
    with pytest.raises(CompileError, match="f.l4f:10:27: error: use of undefined value %sixteen"):
        parse(text, "f.l4f", Context())
    text = text.replace("    %lo = loop.shli %two, %sixteen : i32\n", "")
    m = parse(text, "f.l4f", Context())
    verify_module(m)
    x = np.array([-1.5, 2.0, -0.0, 3.25], np.float32)
    assert np.array_equal(run_func(m.ops[0], [x])[0].reshape(-1), np.abs(x))
    from ml4f.dialects.loop import Sxtb16
    # bytes 0x80 (-128) and 0x7F (127) become the two signed halves.
    word = np.int64(int.from_bytes(bytes.fromhex("80FF7F00"), "little"))
    packed = int(Sxtb16.fn(word)) & 0xFFFFFFFF
    assert (packed & 0xFFFF) == 0xFF80 and (packed >> 16) == 0x007F


def test_unwritten_arena_reads_are_poisoned() -> None:
    """The arena starts as NaN bytes: a kernel reading a buffer nobody wrote gives NaN, not 0."""
    text = """
loop.func @g {input_shapes = [[1, 2]], output_shapes = [[1, 2]]} {
  %x = loop.alloc {input = 0} : !loop.buf<2xf32>
  %t = loop.alloc : !loop.buf<2xf32>
  %y = loop.alloc : !loop.buf<2xf32>
  loop.kernel @k {
    loop.for %i = 0 to 2 step 1 {
      %a = loop.load %t, %i {strides = [1]} : f32
      loop.store %a, %y, %i {strides = [1]}
    }
  }
  loop.return %y
}
"""
    m = parse(text, "g.l4f", Context())
    verify_module(m)
    assert np.isnan(run_func(m.ops[0], [np.zeros(2, np.float32)])[0]).all()
    assert "loop.alloc" in print_module(m)


def run_sequential(func, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """A plain one-iteration-at-a-time interpreter: the semantics the vectorised one must match."""
    from ml4f.compiler.types import numpy_dtype
    from ml4f.dialects import loop

    arena = np.full(max(func.arena_size, 1), 0xFF, np.uint8)
    env: dict[int, object] = {}

    def run(block) -> None:
        for op in block.ops:
            if isinstance(op, loop.Alloc):
                t = op.result.type
                raw = arena[op.offset:op.offset + t.nbytes] if op.offset >= 0 else \
                    np.full(t.nbytes, 0xFF, np.uint8)
                env[id(op.result)] = raw.view(numpy_dtype(t.elem))
                if op.input >= 0:
                    env[id(op.result)][:] = inputs[op.input].reshape(-1)
            elif isinstance(op, loop.WeightsBuf):
                env[id(op.result)] = op.data.array().reshape(-1)
            elif isinstance(op, loop.Kernel):
                run(op.body.block)
            elif isinstance(op, loop.For):
                for i in range(op.lb, op.ub, op.step):
                    env[id(op.iv)] = i
                    run(op.body.block)
            elif isinstance(op, (loop.Load, loop.Store)):
                idx = op.offset + sum(env[id(v)] * s for v, s in zip(op.ivs, op.strides))
                buf = env[id(op.buffer)]
                assert 0 <= idx < buf.size
                if isinstance(op, loop.Load):
                    env[id(op.result)] = np.float32(buf[idx]) if str(op.result.type) == "f32" \
                        else int(buf[idx])
                else:
                    buf[idx] = env[id(op.value)]
            elif isinstance(op, loop.Const):
                env[id(op.result)] = np.float32(op.value) if str(op.result.type) == "f32" \
                    else int(op.value)
            elif isinstance(op, loop.Acc):
                env[id(op.result)] = [env[id(op.init)]]
            elif isinstance(op, loop.AccRead):
                env[id(op.result)] = env[id(op.acc)][0]
            elif isinstance(op, loop.AccAdd):
                env[id(op.acc)][0] = np.float32(env[id(op.acc)][0] + env[id(op.a)])
            elif isinstance(op, loop.AccMax):
                env[id(op.acc)][0] = max(env[id(op.acc)][0], env[id(op.a)])
            elif isinstance(op, loop.AccFma):
                env[id(op.acc)][0] = np.float32(env[id(op.acc)][0] + env[id(op.a)] * env[id(op.b)])
            elif isinstance(op, loop.CmpF):
                env[id(op.result)] = int(op.PREDICATES[op.pred](env[id(op.a)], env[id(op.b)]))
            elif isinstance(op, loop.Select):
                env[id(op.result)] = env[id(op.a)] if env[id(op.c)] else env[id(op.b)]
            elif isinstance(op, loop.Return):
                pass
            else:
                with np.errstate(all="ignore"):
                    env[id(op.result)] = np.float32(type(op).fn(*[env[id(v)] for v in op.operands]))
    run(func.body.block)
    ret = func.body.block.ops[-1]
    return [env[id(v)].copy().reshape(s) for v, s in zip(ret.operands, func.output_shapes)]


@pytest.mark.parametrize("pipe", ["lower-to-loops,plan-memory",
                                  "lower-to-loops,tile{sizes=2,3},unroll{factor=2},plan-memory"])
def test_vectorised_interpreter_equals_sequential_execution(pipe: str) -> None:
    """On a small model with every kind of kernel, running whole nests as arrays gives what running
    one iteration at a time gives: the lowering and passes respect the dialect's independence rule
    and the in-place plan is safe in program order."""
    from test_loop_lowering import CASES

    from ml4f.compiler.passes import PassManager, parse_pipeline

    names = ["conv2d_same_s2", "dw2d_valid_s2_m2", "softmax_rows_beta", "add_broadcast",
             "concat_channels", "zero_pad", "avgpool2d_same_3s1", "conv_bn_relu_fused",
             "dense_sigmoid_softmax", "leaky_1.5", "upsample2d"]
    for case in [c for c in CASES if c.name in names]:
        module = case.module()
        PassManager(parse_pipeline(pipe)).run(Context(), module)
        x = np.random.default_rng(2).uniform(-2, 2, case.shape).astype(np.float32)
        fast = run_func(module.ops[0], [x])
        slow = run_sequential(module.ops[0], [x])
        for a, b in zip(fast, slow):
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6), case.name
