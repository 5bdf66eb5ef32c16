"""ONNX importer: the model zoo's MNIST (opset 8), small graphs built with onnx.helper for every
supported operator, NCHW -> NHWC layout handling, and bad input. Reference: onnxruntime, within
DESIGN §7's float tolerance 1e-4 * (1 + |y|)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.importers import onnx_import
from ml4f.compiler.ir import Module
from ml4f.dialects.layer import run_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper
from shared_models import MODELS

RNG = np.random.default_rng(7)


def w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def graph(tmp_path: Path, nodes: list, inputs: dict[str, list[int]], outputs: dict[str, list[int]],
          inits: dict[str, np.ndarray] | None = None, opset: int = 13, name: str = "g") -> Path:
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def to_nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, *range(2, a.ndim), 1) if a.ndim in (3, 4) else a


def compare(path: Path, nchw_in: bool = True, nchw_out: bool = True, samples: int = 3) -> Module:
    """Import `path`, run it and onnxruntime on random inputs, assert the f32 tolerance. Spatial
    inputs and outputs are NCHW in ONNX and NHWC in the dialect unless the graph transposes them."""
    module = onnx_import.load(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(samples):
        feeds = {i.name: rng.uniform(-2, 2, i.shape).astype(np.float32) for i in sess.get_inputs()}
        refs = sess.run(None, feeds)
        xs = [to_nhwc(x) if nchw_in else x for x in feeds.values()]
        ys, _ = run_model(module.ops[0], xs)
        for y, ref in zip(ys, refs):
            ref = to_nhwc(ref) if nchw_out else ref
            assert y.shape == ref.shape, (y.shape, ref.shape)
            err = np.abs(y.astype(np.float64) - ref) / (1 + np.abs(ref))
            assert err.max() <= 1e-4, f"max relative error {err.max():.3g}"
    return module


def ops(module: Module) -> list[str]:
    return [op.name for op in module.ops[0].layers]


N = helper.make_node


# ----------------------------------------------------------------------------- the real model


def test_mnist8_matches_onnxruntime() -> None:
    path = MODELS / "onnx/mnist-8.onnx"
    if not path.exists():
        pytest.skip(f"{path} not present")
    module = compare(path, nchw_out=False)
    # Both Adds fold into the conv biases, the MatMul + Add into one dense layer.
    assert ops(module) == ["layer.conv2d", "layer.relu", "layer.max_pool2d", "layer.conv2d", "layer.relu",
                           "layer.max_pool2d", "layer.reshape", "layer.dense"]
    assert module.ops[0].inputs[0].result.type.shape == (1, 28, 28, 1)


# ----------------------------------------------------------------------------- generated graphs


def test_conv_pads_stride_relu(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]), N("Relu", ["c"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 3, 9, 9]}, {"y": [1, 6, 5, 5]}, {"W": w(6, 3, 3, 3), "B": w(6)})
    assert ops(compare(p)) == ["layer.conv2d", "layer.relu"]


def test_conv_auto_pad_same_upper(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], dilations=[1, 1])]
    p = graph(tmp_path, nodes, {"x": [1, 2, 8, 7]}, {"y": [1, 4, 4, 4]}, {"W": w(4, 2, 3, 3)})
    module = compare(p)
    assert module.ops[0].layers[0].padding == "same"


def test_conv_asymmetric_pads_become_zero_pad(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W", "B"], ["y"], pads=[0, 1, 2, 0])]
    p = graph(tmp_path, nodes, {"x": [1, 2, 6, 6]}, {"y": [1, 3, 6, 5]}, {"W": w(3, 2, 3, 3), "B": w(3)})
    assert ops(compare(p)) == ["layer.zero_pad", "layer.conv2d"]


def test_depthwise_conv_multiplier(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W", "B"], ["y"], group=3, pads=[1, 1, 1, 1])]
    p = graph(tmp_path, nodes, {"x": [1, 3, 7, 7]}, {"y": [1, 6, 7, 7]}, {"W": w(6, 1, 3, 3), "B": w(6)})
    module = compare(p)
    assert ops(module) == ["layer.depthwise_conv2d"] and module.ops[0].layers[0].depth_multiplier == 2


def test_conv1d(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W", "B"], ["c"], strides=[2]), N("MaxPool", ["c"], ["y"], kernel_shape=[2])]
    p = graph(tmp_path, nodes, {"x": [1, 3, 11]}, {"y": [1, 4, 2]}, {"W": w(4, 3, 3), "B": w(4)})
    assert ops(compare(p)) == ["layer.conv1d", "layer.max_pool1d"]


def test_gemm_trans_alpha_beta(tmp_path: Path) -> None:
    nodes = [N("Gemm", ["x", "W", "C"], ["y"], transB=1, alpha=0.5, beta=2.0)]
    p = graph(tmp_path, nodes, {"x": [1, 10]}, {"y": [1, 5]}, {"W": w(5, 10), "C": w(5)})
    assert ops(compare(p, nchw_in=False)) == ["layer.dense"]


def test_matmul_add_folds_into_bias(tmp_path: Path) -> None:
    nodes = [N("MatMul", ["x", "W"], ["m"]), N("Add", ["m", "B"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 10]}, {"y": [1, 5]}, {"W": w(10, 5), "B": w(5)})
    assert ops(compare(p, nchw_in=False)) == ["layer.dense"]


def test_add_not_folded_when_conv_result_is_reused(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W"], ["c"]), N("Add", ["c", "B"], ["a"]), N("Mul", ["c", "a"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 2, 5, 5]}, {"y": [1, 3, 3, 3]},
              {"W": w(3, 2, 3, 3), "B": w(1, 3, 1, 1)})
    assert ops(compare(p)) == ["layer.conv2d", "layer.batch_norm", "layer.mul"]


def test_flatten_of_nchw_feeds_gemm_in_nchw_order(tmp_path: Path) -> None:
    """Flatten sees C, H, W order in ONNX and H, W, C order in the dialect: the dense weights follow."""
    nodes = [N("Conv", ["x", "W", "B"], ["c"]), N("Relu", ["c"], ["r"]), N("Flatten", ["r"], ["f"]),
             N("Gemm", ["f", "G", "C"], ["y"], transB=1)]
    p = graph(tmp_path, nodes, {"x": [1, 2, 5, 5]}, {"y": [1, 4]},
              {"W": w(4, 2, 3, 3), "B": w(4), "G": w(4, 36), "C": w(4)})
    compare(p, nchw_out=False)


def test_constant_vector_on_flattened_nchw_row(tmp_path: Path) -> None:
    """A per-element constant applied to a flattened NCHW row follows the row's NHWC element order."""
    nodes = [N("Flatten", ["x"], ["f"]), N("Mul", ["f", "k"], ["m"]), N("Add", ["m", "c"], ["a"]),
             N("BatchNormalization", ["a", "g", "b", "mu", "v"], ["n"]), N("Gemm", ["n", "G"], ["y"])]
    bn = {"g": w(12), "b": w(12), "mu": w(12), "v": np.abs(w(12)) + 0.5}
    p = graph(tmp_path, nodes, {"x": [1, 3, 2, 2]}, {"y": [1, 4]},
              {"k": w(12), "c": w(1, 12), "G": w(12, 4), **bn})
    assert ops(compare(p, nchw_out=False)) == ["layer.reshape", "layer.batch_norm", "layer.batch_norm",
                                               "layer.batch_norm", "layer.dense"]


def test_reshape_constant_shape_then_matmul(tmp_path: Path) -> None:
    nodes = [N("MaxPool", ["x"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             N("Reshape", ["m", "shape"], ["f"]), N("MatMul", ["f", "W"], ["t"]), N("Add", ["t", "B"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 3, 4, 6]}, {"y": [1, 5]},
              {"shape": np.array([1, -1], np.int64), "W": w(18, 5), "B": w(5)})
    compare(p, nchw_out=False)


def test_pooling(tmp_path: Path) -> None:
    nodes = [N("MaxPool", ["x"], ["m"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
             N("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], strides=[1, 1], pads=[1, 1, 1, 1],
               count_include_pad=1),
             N("AveragePool", ["a"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")]
    p = graph(tmp_path, nodes, {"x": [1, 3, 9, 8]}, {"y": [1, 3, 3, 3]})
    assert ops(compare(p)) == ["layer.max_pool2d", "layer.zero_pad", "layer.avg_pool2d", "layer.avg_pool2d"]


def test_global_pool_batchnorm(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W"], ["c"]),
             N("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], epsilon=1e-3),
             N("GlobalAveragePool", ["n"], ["p"]), N("Flatten", ["p"], ["f"]), N("Gemm", ["f", "G"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 3, 6, 6]}, {"y": [1, 2]},
              {"W": w(4, 3, 3, 3), "g": w(4), "b": w(4), "m": w(4), "v": np.abs(w(4)) + 0.5, "G": w(4, 2)})
    assert ops(compare(p, nchw_out=False)) == ["layer.conv2d", "layer.batch_norm", "layer.global_avg_pool",
                                               "layer.reshape", "layer.dense"]


@pytest.mark.parametrize("op,attrs,opset,want", [
    ("Sigmoid", {}, 13, "layer.sigmoid"), ("Tanh", {}, 13, "layer.tanh"),
    ("LeakyRelu", {"alpha": 0.1}, 13, "layer.leaky_relu"), ("HardSwish", {}, 14, "layer.hard_swish"),
    ("Clip", {"min": 0.0, "max": 6.0}, 6, "layer.relu6"), ("Relu", {}, 13, "layer.relu")])
def test_activation(tmp_path: Path, op: str, attrs: dict, opset: int, want: str) -> None:
    nodes = [N(op, ["x"], ["y"], **attrs)]
    p = graph(tmp_path, nodes, {"x": [1, 4, 3, 3]}, {"y": [1, 4, 3, 3]}, opset=opset)
    assert ops(compare(p)) == [want]


def test_clip_opset13_inputs(tmp_path: Path) -> None:
    nodes = [N("Clip", ["x", "lo", "hi"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 8]}, {"y": [1, 8]},
              {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)})
    x = np.linspace(-3, 9, 8, dtype=np.float32)[None]
    module = compare(p, nchw_in=False)
    assert ops(module) == ["layer.relu6"]
    np.testing.assert_array_equal(run_model(module.ops[0], [x])[0][0], np.clip(x, 0, 6))


def test_softmax_last_axis_and_channel_axis(tmp_path: Path) -> None:
    nodes = [N("Softmax", ["x"], ["y"], axis=1)]
    p = graph(tmp_path, nodes, {"x": [1, 5, 3, 3]}, {"y": [1, 5, 3, 3]})
    compare(p)  # the NCHW channel axis is the dialect's last axis
    nodes = [N("Gemm", ["x", "W"], ["g"]), N("Softmax", ["g"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 6]}, {"y": [1, 4]}, {"W": w(6, 4)}, opset=11, name="g11")
    compare(p, nchw_in=False)


def test_binary_concat_pad(tmp_path: Path) -> None:
    nodes = [N("Conv", ["x", "W1"], ["a"]), N("Conv", ["x", "W2"], ["b"]),
             N("Add", ["a", "b"], ["s"]), N("Sub", ["s", "b"], ["d"]), N("Mul", ["d", "a"], ["m"]),
             N("Mul", ["m", "k"], ["mk"]), N("Add", ["mk", "one"], ["m1"]),
             N("Concat", ["m1", "a"], ["cat"], axis=1),
             N("Pad", ["cat", "pads"], ["y"], mode="constant")]
    p = graph(tmp_path, nodes, {"x": [1, 2, 6, 6]}, {"y": [1, 6, 5, 7]},
              {"W1": w(3, 2, 3, 3), "W2": w(3, 2, 3, 3), "k": w(3, 1, 1), "one": np.array([1.5], np.float32),
               "pads": np.array([0, 0, 0, 1, 0, 0, 1, 2], np.int64)})
    assert ops(compare(p)) == ["layer.conv2d", "layer.conv2d", "layer.add", "layer.sub", "layer.mul",
                               "layer.batch_norm", "layer.batch_norm", "layer.concat", "layer.zero_pad"]


def test_transposes_at_the_edges_vanish(tmp_path: Path) -> None:
    """An NHWC graph (as tf2onnx writes it): the transposes cost nothing and the I/O stays NHWC."""
    nodes = [N("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             N("Conv", ["t", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             N("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]
    p = graph(tmp_path, nodes, {"x": [1, 6, 5, 3]}, {"y": [1, 6, 5, 4]}, {"W": w(4, 3, 3, 3), "B": w(4)})
    module = compare(p, nchw_in=False, nchw_out=False)
    assert ops(module) == ["layer.conv2d"]
    assert module.ops[0].inputs[0].result.type.shape == (1, 6, 5, 3)


def test_sequence_input_stays_as_is(tmp_path: Path) -> None:
    """A rank-3 input that no convolution reads is not channel data: MatMul works on its last axis."""
    nodes = [N("MatMul", ["x", "W"], ["m"]), N("Add", ["m", "B"], ["a"]), N("Tanh", ["a"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 5, 6]}, {"y": [1, 5, 3]}, {"W": w(6, 3), "B": w(3)})
    module = compare(p, nchw_in=False, nchw_out=False)
    assert ops(module) == ["layer.dense", "layer.tanh"]


def test_progress_is_reported(tmp_path: Path) -> None:
    nodes = [N("Relu", ["x"], ["r"]), N("Sigmoid", ["r"], ["y"])]
    p = graph(tmp_path, nodes, {"x": [1, 4]}, {"y": [1, 4]})
    calls: list[tuple] = []
    onnx_import.load(str(p), progress=lambda *a: calls.append(a))
    assert [c[1:] for c in calls] == [(1, 2), (2, 2)]


# ----------------------------------------------------------------------------- bad input


def error_of(path: Path) -> str:
    with pytest.raises(CompileError) as e:
        onnx_import.load(str(path))
    line = e.value.one_line()
    assert "\n" not in line and path.name in line
    return line


@pytest.mark.parametrize("nodes,inits,msg", [
    ([N("Conv", ["x", "W"], ["y"], group=2)], {"W": w(4, 2, 1, 1)}, "group = 2"),
    ([N("Clip", ["x", "lo", "hi"], ["y"])], {"lo": np.array(-1, np.float32), "hi": np.array(1, np.float32)},
     "Clip(-1.0, 1.0) is not supported"),
    ([N("Transpose", ["x"], ["y"], perm=[0, 1, 3, 2])], {}, "only where it converts between NCHW and NHWC"),
    ([N("Flatten", ["x"], ["y"])], {}, "flattened NCHW tensor"),
    ([N("Resize", ["x", "", "s"], ["y"])], {"s": np.ones(4, np.float32)},
     "unsupported ONNX operator: Resize"),
])
def test_unsupported_refused(tmp_path: Path, nodes: list, inits: dict, msg: str) -> None:
    out_shape = {"Flatten": [1, 64]}.get(nodes[0].op_type, [1, 4, 4, 4])
    p = graph(tmp_path, nodes, {"x": [1, 4, 4, 4]}, {"y": out_shape}, inits)
    assert msg in error_of(p)


def test_wrong_format_and_truncated(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"TFL3" * 100)
    assert "not a valid ONNX model" in error_of(bad) or "not an ONNX model" in error_of(bad)
    src = MODELS / "onnx/mnist-8.onnx"
    if not src.exists():
        pytest.skip(f"{src} not present")
    cut = tmp_path / "cut.onnx"
    raw = src.read_bytes()
    for n in (50, len(raw) // 2, len(raw) - 7):
        cut.write_bytes(raw[:n])
        assert "error" in error_of(cut)


def test_int_input_refused(tmp_path: Path) -> None:
    g = helper.make_graph([N("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4])])
    p = tmp_path / "int.onnx"
    p.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]).SerializeToString())
    assert "only float32 is supported" in error_of(p)
