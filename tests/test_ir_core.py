"""The IR core on its own: types, attributes, resources, printing/parsing, verification, pipelines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml4f.compiler.builder import ModelBuilder, quant
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import parse_pipeline, verify_module
from ml4f.compiler.printer import print_module
from ml4f.compiler.types import QuantType, TensorType, TypeSyntaxError, i8, parse_type
from ml4f.dialects import layer


@pytest.mark.parametrize("text", [
    "f32", "f16", "i8", "i32", "index", "tensor<1x28x28x1xf32>", "tensor<10xf16>", "tensor<f32>",
    "tensor<1x10x!quant.uniform<i8:f32, 0.00390625:-128>>",
    "tensor<8x3x3x1x!quant.uniform<i8:f32:0, {0.01:0,0.5:0,1e-05:3,2.0:-1,0.25:0,0.125:0,3.0:0,4.0:0}>>",
])
def test_type_round_trip(text: str) -> None:
    assert str(parse_type(text)) == text


@pytest.mark.parametrize("text", ["tensor<1x2>", "tensor<1x2xf64>", "foo", "!quant.uniform<i8:f32, x:1>",
                                  "!quant.uniform<i8:f32:0, 0.1:0>", "tensor<1xtensor<2xf32>>"])
def test_type_errors(text: str) -> None:
    with pytest.raises(TypeSyntaxError):
        parse_type(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=2.0**-40, max_value=2.0**20, width=32, allow_subnormal=False), min_size=1, max_size=6),
       st.integers(-128, 127))
def test_quant_scales_round_trip_exactly(scales: list[float], zp: int) -> None:
    per_tensor = QuantType(i8, (scales[0],), (zp,))
    per_axis = QuantType(i8, tuple(scales), (zp,) * len(scales), axis=1)
    for q in (per_tensor, per_axis):
        assert parse_type(str(TensorType((1, 2), q))) == TensorType((1, 2), q)


def _model(kernel_dtype=np.float32) -> str:
    rng = np.random.default_rng(1)
    b = ModelBuilder("m")
    x = b.input((1, 6, 6, 2), name="x")
    k = rng.standard_normal((3, 3, 3, 2)).astype(kernel_dtype)
    c = b.add(layer.Conv2D, x, name="conv", kernel=b.weights("conv.k", k),
              bias=b.weights("conv.b", rng.standard_normal(3).astype(np.float32)), padding="same")
    r = b.add(layer.Relu, c, name="relu")
    s = b.add(layer.Add, r, c, name="sum")
    b.output(s)
    return print_module(b.finish())


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_print_parse_print_is_identity_and_weights_exact(dtype) -> None:
    text = _model(dtype)
    module = parse(text, "m.l4f")
    verify_module(module)
    assert print_module(module) == text
    (res,) = [r for r in module.resources() if r.name == "conv.k"]
    assert res.data is not None and res.data.dtype == np.dtype(dtype)
    expected = np.random.default_rng(1).standard_normal((3, 3, 3, 2)).astype(dtype)
    assert res.data.tobytes() == expected.tobytes()


def test_int8_resources_round_trip() -> None:
    b = ModelBuilder("q")
    qa = quant(0.05, -3)
    x = b.input((1, 4), elem=qa)
    k = b.weights("fc.k", np.arange(-8, 8, dtype=np.int8).reshape(2, 8)[:, :4],
                  elem=quant([0.01, 0.02], 0, axis=0))
    bias = b.weights("fc.b", np.array([-5, 70000], dtype=np.int32))
    y = b.add(layer.Dense, x, name="fc", kernel=k, bias=bias, out_elem=quant(0.1, 2))
    b.output(y)
    text = print_module(b.finish())
    assert "!quant.uniform<i8:f32:0, {0.01:0,0.02:0}>" in text
    assert print_module(parse(text)) == text
    assert parse(text).resources()[1].data.tolist() == [-5, 70000]


def test_elided_weights_round_trip_and_refuse_to_run() -> None:
    text = print_module(parse(_model()), elide_weights=True)
    assert "__elided__" in text and print_module(parse(text)) == text
    with pytest.raises(CompileError, match="elided"):
        parse(text).resources()[0].array()


def test_value_names_are_unique_after_rewrites() -> None:
    b = ModelBuilder("m")
    x = b.input((1, 4), name="v")
    y = b.add(layer.Relu, x, name="v")
    b.output(y)
    text = print_module(b.finish())
    assert "%v = layer.input" in text and "%v_1 = layer.relu %v" in text


@pytest.mark.parametrize("text, message", [
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %y = layer.relu %x : tensor<1x5xf32>\n"
     "  layer.output %y\n}\n", "3:8: error: layer.relu 'y': result type"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %y = layer.relu %y : tensor<1x4xf32>\n"
     "  layer.output %y\n}\n", "3:19: error: use of undefined value %y"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  layer.output %x\n  %z = layer.relu %x "
     ": tensor<1x4xf32>\n}\n", "4:8: error: layer.relu 'z': follows layer.output"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %x = layer.relu %x : tensor<1x4xf32>\n"
     "}\n", "3:3: error: value %x is defined twice"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %y = layer.dense %x {kernel = "
     "dense_resource<k>} : tensor<1x2xf32>\n  layer.output %y\n}\nresources {\n  k : tensor<2x4xf32> = "
     "0x0000\n}\n", "7:25: error: resource 'k' has 2 bytes of data but tensor<2x4xf32> needs 32"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %y = layer.dense %x {kernel = "
     "dense_resource<k>} : tensor<1x2xf32>\n  layer.output %y\n}\n", "dense_resource<k> is not defined"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %y = layer.relu %x {alpha = 1} : "
     "tensor<1x4xf32>\n  layer.output %y\n}\n", "unknown attribute 'alpha'"),
    ("layer.model @m {\n  %x = layer.input : tensor<1x4xf32>\n  %y = layer.relu %x, : tensor<1x4xf32>\n}\n",
     "3:23: error: unexpected ':', expected a %value"),
])
def test_errors_are_located_one_liners(text: str, message: str) -> None:
    with pytest.raises(CompileError) as info:
        verify_module(parse(text, "bad.l4f"))
    line = info.value.one_line()
    assert line.startswith("bad.l4f:") and "\n" not in line
    assert message in line, line


def test_pipeline_parsing_errors() -> None:
    with pytest.raises(CompileError, match="unknown pass 'no-such-pass'"):
        parse_pipeline("no-such-pass")
    with pytest.raises(CompileError, match="cannot read pass pipeline"):
        parse_pipeline("a{b=1")


def test_cli_errors_exit_1_without_traceback(tmp_path) -> None:
    bad = tmp_path / "bad.l4f"
    bad.write_text("layer.model @m {\n  %x = layer.input : tensor<1x4xf32\n}\n")
    proc = subprocess.run([sys.executable, "-m", "ml4f.tools.ml4f_opt", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0].startswith(f"{bad}:2:")
    assert "Traceback" not in proc.stderr
    missing = subprocess.run([sys.executable, "-m", "ml4f.tools.ml4f_opt", str(tmp_path / "nope.l4f")],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_help_starts_fast() -> None:
    # Lit runs ml4f-opt hundreds of times; --help must not load NumPy, Lark or the dialects.
    code = ("import sys, time; t=time.perf_counter(); from ml4f.tools import ml4f_opt; "
            "ml4f_opt.build_parser().format_help(); "
            "print(time.perf_counter()-t, 'numpy' in sys.modules, 'lark' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split()
    assert out[1:] == ["False", "False"]


@pytest.mark.parametrize("tool", ["ml4f_opt", "ml4f_run", "ml4f_as", "ml4f"])
def test_usage_errors_are_one_line_with_status_1(tool: str) -> None:
    proc = subprocess.run([sys.executable, "-m", f"ml4f.tools.{tool}", "--no-such-option", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert "error:" in line and "--no-such-option" in line
