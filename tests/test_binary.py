"""ML4F binaries: the header of DESIGN §5 byte for byte, its reader, the .s/.h outputs, and ml4f-run."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from test_emulator import assemble

from ml4f.compiler.backend.binary import (
    FIXED_HEADER_BYTES,
    MAGIC0,
    MAGIC1,
    TYPE_F32,
    TYPE_INT8,
    Binary,
    IOSpec,
    assembly_file,
    build_binary,
    c_array,
    header_size_for,
    read_binary,
    weights_offset_for,
)
from ml4f.compiler.backend.cycles import BRANCH_REFILL as P
from ml4f.compiler.backend.runner import run_binary
from ml4f.compiler.diagnostics import CompileError
from ml4f.tools import ml4f_run

LIT_INPUTS = Path(__file__).parent / "lit" / "run" / "Inputs"

# y = 2 x + 1 over 4 floats, finding its input and output through the header (as any model may).
SCALE_F32 = """
    ldr r2, [r0, #0x20]      @ 2      input_offset
    add r2, r1               @ 1
    ldr r3, [r0, #0x28]      @ 2      output_offset (after an ADD: not pipelined)
    add r3, r1               @ 1
    movs r0, #4              @ 1
    vmov.f32 s0, #2.0        @ 1
    vmov.f32 s1, #1.0        @ 1
loop:
    vldmia r2!, {s2}         @ 1+1
    vmul.f32 s3, s2, s0      @ 1
    vadd.f32 s3, s3, s1      @ 1+1    s3 from VMUL
    vstmia r3!, {s3}         @ 1+1+1  s3 from VADD
    subs r0, #1              @ 1
    bne loop                 @ 1, +P taken 3 times
    bx lr                    @ 1+P
"""
SCALE_F32_CYCLES = 9 + 4 * 10 + 3 * P + 1 + P

# y = saturate_int8(2 q) over 4 int8 values.
DOUBLE_INT8 = """
    ldr r2, [r0, #0x20]
    add r2, r1
    ldr r3, [r0, #0x28]
    add r3, r1
    movs r0, #4
loop:
    ldrsb r12, [r2], #1
    lsl r12, r12, #1
    ssat r12, #8, r12
    strb r12, [r3], #1
    subs r0, #1
    bne loop
    bx lr
"""

F32_IN = IOSpec(0, TYPE_F32, (2, 2))
F32_OUT = IOSpec(16, TYPE_F32, (2, 2))
I8_IN = IOSpec(0, TYPE_INT8, (4,), 0.5, -1)
I8_OUT = IOSpec(4, TYPE_INT8, (4,), 0.25, 3)


def scale_binary() -> Binary:
    """The f32 example binary (also checked in for the lit test: tests/lit/run/Inputs/scale.bin)."""
    return build_binary(assemble(SCALE_F32), b"", arena_bytes=32, input=F32_IN, output=F32_OUT,
                        test_input=np.array([1, 2, 3, 4], np.float32),
                        test_output=np.array([3, 5, 7, 9], np.float32))


# -- the header -----------------------------------------------------------------------------------------


def test_header_layout_is_ml4f() -> None:
    code = bytes(range(10))                     # 10 bytes: 2 bytes of padding before the weights
    weights = np.arange(5, dtype=np.float32).tobytes() + b"\x01\x02"
    b = build_binary(code, weights, arena_bytes=96, input=IOSpec(8, TYPE_F32, (3, 2, 1)),
                     output=IOSpec(40, TYPE_F32, (5,)), test_input=np.ones((3, 2, 1), np.float32),
                     test_output=np.full(5, 2.5, np.float32))
    data = b.to_bytes()
    w = struct.unpack_from("<16I", data)
    assert w[:2] == (MAGIC0, MAGIC1) == (0x30470F62, 0x46344C4D) and data[4:8] == b"ML4F"
    assert w[2] == 0x40 + 4 * (3 + 1 + 1 + 1) == header_size_for((3, 2, 1), (5,)) == 0x58
    assert w[3] == len(data)
    assert w[4] == weights_offset_for((3, 2, 1), (5,), 10) == 0x58 + 12
    assert w[5] == w[4] + 24 and w[6] == w[5] + 24        # test vectors 4-aligned after the 22-byte weights
    assert w[7:12] == (96, 8, 1, 40, 1) and w[12:16] == (0, 0, 0, 0)
    assert struct.unpack_from("<6I", data, FIXED_HEADER_BYTES) == (3, 2, 1, 0, 5, 0)
    assert data[0x58:0x62] == code and data[0x62:0x64] == b"\0\0"
    assert data[w[4]:w[4] + 22] == weights
    assert np.frombuffer(data, np.float32, 5, w[6]).tolist() == [2.5] * 5
    assert read_binary(data) == b
    assert read_binary(data).to_bytes() == data


def test_header_int8_fields_roundtrip() -> None:
    b = build_binary(b"\x70\x47", b"\x01", arena_bytes=8, input=I8_IN, output=I8_OUT,
                     test_input=np.array([1, -2, 3, -4]), test_output=np.array([127, -128, 0, 5]))
    data = b.to_bytes()
    w = struct.unpack_from("<16I", data)
    assert (w[9], w[11]) == (TYPE_INT8, TYPE_INT8)
    assert struct.unpack("<f", struct.pack("<I", w[12]))[0] == 0.5 and w[13] == 0xFFFFFFFF   # zero point -1
    assert struct.unpack("<f", struct.pack("<I", w[14]))[0] == 0.25 and w[15] == 3
    back = read_binary(data)
    assert back == b and back.header.input == I8_IN and back.header.output == I8_OUT
    assert np.frombuffer(back.test_output, np.int8).tolist() == [127, -128, 0, 5]


@pytest.mark.parametrize("corrupt, message", [
    (lambda d: d[:40], "40 bytes is shorter than the header"),
    (lambda d: b"\0\0\0\0" + d[4:], "bad magic 0x00000000 0x46344c4d"),
    (lambda d: d[:0x24] + struct.pack("<I", 3) + d[0x28:], "input_type 3 is neither 1 (float32) nor 2 (int8)"),
    (lambda d: d[:0x0C] + struct.pack("<I", 10_000) + d[0x10:], "object_size 10000 does not fit the file"),
    (lambda d: d[:0x10] + struct.pack("<I", 0x5A) + d[0x14:], "weights_offset 90 is not 4-aligned"),
    (lambda d: d[:0x1C] + struct.pack("<I", 20) + d[0x20:], "the output (16 bytes at 16) lies outside the 20-byte arena"),
    (lambda d: d[:0x54] + struct.pack("<I", 7) + d[0x58:], "not two non-empty 0-terminated lists"),
])
def test_bad_headers(corrupt, message) -> None:
    data = corrupt(scale_binary().to_bytes())
    with pytest.raises(CompileError) as e:
        read_binary(data, "m.bin")
    assert e.value.one_line().startswith("m.bin: error: not a valid ML4F binary: ")
    assert message in e.value.one_line() and "\n" not in e.value.one_line()


def test_assembly_file_assembles_to_the_binary() -> None:
    """The .s output, run through GNU as + objcopy, gives the binary byte for byte."""
    for b, text in ((scale_binary(), SCALE_F32),
                    (build_binary(assemble(DOUBLE_INT8), bytes(range(7)), arena_bytes=8, input=I8_IN,
                                  output=I8_OUT), DOUBLE_INT8)):
        s = assembly_file(b, text)
        assert "_start_model:" in s and f".word 0x{b.header.weights_offset:08x}  // weights_offset" in s
        assert assemble(s) == b.to_bytes()


def test_c_array() -> None:
    data = scale_binary().to_bytes()
    text = c_array(data, "scale_model")
    assert f"const uint8_t scale_model[{len(data)}] = {{" in text and "__attribute__((aligned(4)))" in text
    body = text[text.index("{") + 1:text.index("};")]
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body)) == data
    assert f"const uint32_t scale_model_len = {len(data)};" in text


# -- running binaries --------------------------------------------------------------------------------------


@pytest.fixture
def scale_bin(tmp_path: Path) -> Path:
    path = tmp_path / "scale.bin"
    path.write_bytes(scale_binary().to_bytes())
    return path


def test_run_binary_f32(scale_bin: Path) -> None:
    x = np.array([[0.5, -1.25], [3.0, 1e-3]], np.float32)
    r = run_binary(str(scale_bin), x)
    assert r["output"].shape == (1, 2, 2) and r["output"].dtype == np.float32
    assert (r["output"][0] == 2 * x + 1).all()
    assert r["cycles"] == SCALE_F32_CYCLES
    assert r["instructions"] == 7 + 4 * 6 + 1 and r["stack_bytes"] == 0
    assert (run_binary(str(scale_bin), x[None])["output"] == r["output"]).all()     # leading 1 accepted
    # the test vectors embedded in the binary agree with the code
    b = read_binary(scale_bin.read_bytes())
    got = run_binary(str(scale_bin), np.frombuffer(b.test_input, np.float32))["output"]
    assert got.tobytes() == b.test_output
    a, c = run_binary(str(scale_bin), None, seed=5), run_binary(str(scale_bin), None, seed=5)
    assert (a["output"] == c["output"]).all() and np.abs(a["output"]).max() <= 3
    with pytest.raises(CompileError, match="the model takes \\[2, 2\\]"):
        run_binary(str(scale_bin), np.zeros(5, np.float32))


def test_run_binary_int8_quantizes_float_input(tmp_path: Path) -> None:
    path = tmp_path / "double.bin"
    path.write_bytes(build_binary(assemble(DOUBLE_INT8), b"", arena_bytes=8, input=I8_IN, output=I8_OUT).to_bytes())
    r = run_binary(str(path), np.array([0.5, -1.0, 3.0, 100.0], np.float32))
    # q = round(x / 0.5) - 1 = [0, -3, 5, 127 (clipped)]; y = saturate(2 q)
    assert r["output"].dtype == np.int8 and r["output"].tolist() == [[0, -6, 10, 127]]
    r = run_binary(str(path), np.array([-100, 1, 2, 60], np.int8))
    assert r["output"].tolist() == [[-128, 2, 4, 120]]


def test_ml4f_run_cli(scale_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.array([1, 2, 3, 4], np.float32).reshape(2, 2))
    out, js = tmp_path / "y.npy", tmp_path / "r.json"
    assert ml4f_run.main([str(scale_bin), "--input", str(x), "--output", str(out), "--json", str(js)]) == 0
    printed = capsys.readouterr().out
    assert "output [2, 2]: [3. 5. 7. 9.]" in printed and f"cycles: {SCALE_F32_CYCLES}" in printed
    assert "instructions: 32" in printed and "stack_bytes: 0" in printed
    doc = json.loads(js.read_text())
    assert doc == {"output": [3.0, 5.0, 7.0, 9.0], "output_shape": [1, 2, 2], "cycles": SCALE_F32_CYCLES,
                   "instructions": 32, "stack_bytes": 0}
    saved = np.load(out)
    assert saved.dtype == np.float32 and saved.tolist() == [[[3.0, 5.0], [7.0, 9.0]]]


def test_ml4f_run_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 100)
    assert ml4f_run.main([str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"{bad}: error: not a valid ML4F binary: bad magic 0x00000000 0x00000000 " \
                  "(expected 0x30470f62 0x46344c4d)"
    oob = tmp_path / "oob.bin"
    oob.write_bytes(build_binary(assemble("movs r2, #0\n str r2, [r1, #32]\n bx lr"), b"", arena_bytes=32,
                                 input=F32_IN, output=F32_OUT).to_bytes())
    assert ml4f_run.main([str(oob)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{oob}: error: invalid write of 4 bytes at 0x") and "\n" not in err
    assert "arena offset 32, outside the 32-byte arena" in err
    assert ml4f_run.main([str(tmp_path / "missing.bin")]) == 1
    assert "missing.bin: error: no such file" in capsys.readouterr().err


def test_lit_input_binary_is_current() -> None:
    """tests/lit/run/Inputs/scale.bin is `scale_binary()` (rewrite it from here if the format changes)."""
    assert (LIT_INPUTS / "scale.bin").read_bytes() == scale_binary().to_bytes()
