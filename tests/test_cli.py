"""`ml4f MODEL` (tools/ml4f.py): the files of DESIGN §4, the summary and --stats table, --eval in
ML4F's text format, -t test vectors, --emit stages, --target, and one-line errors with exit 1 and
no output written."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import EXAMPLE, MODELS, need

from ml4f.compiler import pipeline
from ml4f.compiler.backend.binary import read_binary
from ml4f.tools.ml4f import main
from ml4f.tools.ml4f_run import main as run_main


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built")
    assert main([str(EXAMPLE), "-o", str(out), "-b", "g"]) == 0
    return out


def test_writes_every_output(built: Path) -> None:
    assert sorted(p.name for p in built.iterdir()) == ["g.bin", "g.h", "g.json", "g.l4f", "g.s"]
    data = (built / "g.bin").read_bytes()
    b = read_binary(data)
    doc = json.loads((built / "g.json").read_text())
    assert doc["binary_bytes"] == len(data) and doc["arena_bytes"] == b.header.arena_bytes
    assert doc["input_shape"] == list(b.header.input.shape) == [50, 3, 1]
    assert doc["validation"]["passed"] and 0 < sum(layer["cycles"] for layer in doc["layers"]) <= doc["cycles"]
    h = (built / "g.h").read_text()
    assert f"const uint8_t g[{len(data)}]" in h and f"g_len = {len(data)};" in h
    first = ", ".join(f"0x{v:02x}" for v in data[:4])
    assert first.replace(" ", "") in h.replace(" ", "")
    # The .l4f is the imported model: compiling it gives the same binary.
    again = built / "again"
    assert main([str(built / "g.l4f"), "-o", str(again), "-b", "g"]) == 0
    assert (again / "g.bin").read_bytes() == data


@pytest.mark.skipif(shutil.which("arm-none-eabi-as") is None, reason="GNU as for ARM not installed")
def test_assembly_file_gives_the_same_bytes(built: Path, tmp_path: Path) -> None:
    obj, raw = tmp_path / "g.o", tmp_path / "g.raw"
    subprocess.run(["arm-none-eabi-as", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard",
                    "-o", str(obj), str(built / "g.s")], check=True)
    subprocess.run(["arm-none-eabi-objcopy", "-O", "binary", str(obj), str(raw)], check=True)
    assert raw.read_bytes() == (built / "g.bin").read_bytes()


def test_binary_runs_like_the_model(built: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(3).uniform(-1, 1, (50, 3, 1)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert run_main([str(built / "g.bin"), "--input", str(tmp_path / "x.npy"), "--json", str(tmp_path / "b.json")]) == 0
    assert run_main([str(built / "g.l4f"), "--input", str(tmp_path / "x.npy"), "--json", str(tmp_path / "r.json")]) == 0
    got = np.asarray(json.loads((tmp_path / "b.json").read_text())["output"])
    want = np.asarray(json.loads((tmp_path / "r.json").read_text())["output"])
    assert np.all(np.abs(got - want) <= 1e-4 * (1 + np.abs(want)))
    assert json.loads((tmp_path / "b.json").read_text())["cycles"] > 0


def test_optimize_for_size(tmp_path: Path, capsys) -> None:
    """--optimize size keeps loops as loops: less code than the default, more cycles, still
    validated; the choice is recorded in the .json; any other word is refused in one line."""
    docs = {}
    for mode in ("speed", "size"):
        assert main([str(EXAMPLE), "-o", str(tmp_path), "-b", mode, "--optimize", mode]) == 0
        docs[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
        assert docs[mode]["optimize"] == mode and docs[mode]["validation"]["passed"]
    assert docs["size"]["code_bytes"] < 0.6 * docs["speed"]["code_bytes"]
    assert docs["speed"]["cycles"] < docs["size"]["cycles"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(EXAMPLE), "-o", str(tmp_path), "--optimize", "fast"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "--optimize" in err and "'fast'" in err and len(err.strip().splitlines()) == 1


def test_summary_and_stats(tmp_path: Path, capsys) -> None:
    assert main([str(EXAMPLE), "-o", str(tmp_path), "--no-validate"]) == 0
    out = capsys.readouterr().out
    assert "32,384 MACs" in out and "cycles/MAC" in out and "not validated" in out
    assert "conv2d_Conv2D1" not in out                       # the table only with --stats
    assert main([str(EXAMPLE), "-o", str(tmp_path), "--stats"]) == 0
    out = capsys.readouterr().out
    for word in ("layer", "cycles/MAC", "conv2d_Conv2D1", "conv2d+relu+max_pool2d", "dense_Dense1",
                 "softmax", "total", "validated on 3 random input(s)"):
        assert word in out, word


def test_eval_prints_ml4f_format(built: Path, tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(8)
    xs = rng.uniform(-1, 1, (6, 50, 3, 1))
    b = read_binary((built / "g.bin").read_bytes())
    from ml4f.compiler.backend.runner import run_binary

    preds = [int(np.argmax(run_binary(str(built / "g.bin"), x)["output"])) for x in xs]
    (tmp_path / "t.json").write_text(json.dumps({"x": xs.tolist(), "y": np.eye(4)[preds].tolist()}))
    assert main([str(EXAMPLE), "-o", str(tmp_path / "o"), "--eval", str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    i = out.index("Accuracy: 1.0000")
    rows = [[int(v) for v in line.split()] for line in out[i + 1:i + 5]]
    assert np.trace(np.asarray(rows)) == 6 and all(len(line) == 20 for line in out[i + 1:i + 5])
    doc = json.loads((tmp_path / "o" / "model.json").read_text())
    assert doc["eval"]["accuracy"] == 1.0 and doc["eval"]["confusion"] == rows
    assert b.header.output.shape == (4,)


def test_test_data_is_embedded(tmp_path: Path) -> None:
    assert main([str(EXAMPLE), "-o", str(tmp_path), "-t", "--float16"]) == 0
    data = (tmp_path / "model.bin").read_bytes()
    b = read_binary(data)
    assert b.header.test_input_offset and b.header.test_output_offset
    x = np.frombuffer(b.test_input, "<f4").reshape(1, 50, 3, 1)
    want = np.frombuffer(b.test_output, "<f4")
    from ml4f.compiler.backend.runner import run_binary

    got = run_binary(str(tmp_path / "model.bin"), x)["output"].reshape(-1)
    assert np.all(np.abs(got - want) <= 1e-4 * (1 + np.abs(want)) + 1e-4)


@pytest.mark.parametrize("emit,name", [("l4f", "m.l4f"), ("loops", "m.loops.l4f"), ("thumb", "m.thumb.l4f")])
def test_emit_stops_after_a_stage(tmp_path: Path, emit: str, name: str) -> None:
    assert main([str(EXAMPLE), "--emit", emit, "-o", str(tmp_path), "-b", "m"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [name]
    head = {"l4f": "layer.model @gestures", "loops": "loop.func @gestures", "thumb": "thumb."}[emit]
    assert head in (tmp_path / name).read_text()


def test_targets_share_the_code(built: Path, tmp_path: Path) -> None:
    for target in ("cortex-m7", "cortex-m33"):
        assert main([str(EXAMPLE), "-o", str(tmp_path), "-b", target, "--target", target]) == 0
        assert (tmp_path / f"{target}.bin").read_bytes() == (built / "g.bin").read_bytes()


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_errors_are_one_line_and_write_nothing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    lstm = need("tflite_micro/micro_speech_lstm.tflite")
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in _one_line_error(capsys, [str(lstm), "-o", str(out)])
    int8 = need("mlperf_tiny/kws_ref_model.tflite")
    err = _one_line_error(capsys, [str(int8), "-o", str(out)])
    assert "int8 code generation is not available yet" in err and "kws_ref_model.tflite" in err
    assert "int8 code generation" in _one_line_error(capsys, [str(EXAMPLE), "--int8", "-o", str(out)])
    assert "needs the binary" in _one_line_error(capsys, [str(EXAMPLE), "--emit", "loops", "--stats", "-o", str(out)])
    (tmp_path / "bad.json").write_text('{"x": [[1, 2]], "y": [[1, 0, 0, 0]]}')
    err = _one_line_error(capsys, [str(EXAMPLE), "-o", str(out), "--eval", str(tmp_path / "bad.json")])
    assert "bad.json" in err and "the model input is [50, 3, 1]" in err
    assert not out.exists()
    assert "no such file" in _one_line_error(capsys, [str(tmp_path / "none.h5"), "-o", str(out)])


def test_validation_failure_exits_1_naming_the_layer(tmp_path: Path, capsys, monkeypatch) -> None:
    real = pipeline._generate

    def broken(func, module, *options):
        cg = real(func, module, *options)
        w = np.frombuffer(cg.weights, "<f4").copy()
        w[-1] += 100.0                              # the last weight: the dense layer's bias
        return dataclasses.replace(cg, weights=w.tobytes())

    monkeypatch.setattr(pipeline, "_generate", broken)
    err = _one_line_error(capsys, [str(EXAMPLE), "-o", str(tmp_path / "o")])
    assert "validation failed: layer 'dense_Dense1'" in err, err
    assert not (tmp_path / "o").exists()
    assert main([str(EXAMPLE), "-o", str(tmp_path / "o"), "--no-validate"]) == 0


def test_kws_savedmodel_compiles(tmp_path: Path) -> None:
    """The SavedModel (imported through the TFLite converter) compiles and validates."""
    path = need("mlperf_tiny/kws_ref_model_savedmodel")
    assert main([str(path), "-o", str(tmp_path), "--float16"]) == 0
    doc = json.loads((tmp_path / "model.json").read_text())
    assert doc["validation"]["passed"] and doc["macs"] > 2_000_000
    assert MODELS.exists()


def test_bench_writes_results_beside_ml4f(tmp_path: Path) -> None:
    """The benchmark tool on one small model: ML4F's figures from INDEX.md and the ratios."""
    from ml4f.tools import bench

    figures = bench.ml4f_figures(str(MODELS / "INDEX.md"))
    need("tfjs/mlp.json")
    assert figures["ml4f/gestures.tfjsmodel.json"] == {"cycles_f32": 184_080, "cycles_f16": 185_938,
                                                      "arena_bytes": 4_488, "code_bytes": 2_516}
    assert bench.main(["--models", str(MODELS), "--only", "tfjs/mlp", "--precision", "f32",
                       "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    (row,) = doc["models"]
    assert row["model"] == "tfjs/mlp.json" and row["macs"] == 2_624 and row["validation"]["passed"]
    assert row["ratio_cycles"] == round(row["cycles"] / 13_107, 3)
    md = (tmp_path / "results.md").read_text()
    assert f"| tfjs/mlp.json | f32 | 2,624 | {row['cycles']:,} |" in md and "13,107" in md


def test_bench_size_build_goes_to_its_own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--optimize size` without `--out` writes bench/size/, leaving the speed build's bench/ alone."""
    from ml4f.tools import bench

    need("tfjs/mlp.json")
    monkeypatch.chdir(tmp_path)
    assert bench.main(["--models", str(MODELS), "--only", "tfjs/mlp", "--precision", "f32",
                       "--no-validate", "--optimize", "size"]) == 0
    assert (tmp_path / "bench" / "size" / "results.md").read_text().startswith("# ml4f benchmark (--optimize size)")
    assert not (tmp_path / "bench" / "results.md").exists()
