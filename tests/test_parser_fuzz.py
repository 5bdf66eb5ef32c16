"""Parser fuzzing: random mutations of valid .l4f files either parse, verify and round-trip through
the printer, or raise a CompileError with a file:line:col location; never another exception.

Inputs that once broke this are kept in tests/fuzz_corpus/ and replayed first. A failing random
case is written to the test's temporary folder; add it to the corpus once fixed
(`ML4F_FUZZ_SAVE=1` writes it there directly).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from ml4f.compiler.context import Context
from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.parser import parse
from ml4f.compiler.passes import PassManager, parse_pipeline, verify_module
from ml4f.compiler.printer import print_module
from ml4f.dialects import layer

HERE = Path(__file__).parent
CORPUS = HERE / "fuzz_corpus"
SEEDS = sorted((HERE / "lit" / "layer").glob("*.l4f")) + [HERE / "lit" / "cli" / "Inputs" / "small-cnn.l4f"]
TIME_BUDGET = 15.0
MAX_CASES = 25000

# Words a mutation may insert: pieces of the syntax and values that stress the verifiers.
VOCAB = ["%x", "%y", "%0", "{", "}", "[", "]", "<", ">", ":", ",", "=", "@m", "layer.relu", "layer.model",
         "layer.output", "layer.conv2d", "layer.input", "loop.for", "tensor<1x4xf32>", "tensor<1xf32>",
         "tensor<0x4xf32>", "tensor<1x4x!quant.uniform<i8:f32, 0.1:0>>", "f16", "i32", "index", '"same"',
         '"none"', "-1", "0", "1e309", "nan", "-inf", "1.5", "99999999999999999999", "true",
         "dense_resource<k>", "resources", "__elided__", "0x00", "0x0000803F", "\n", "// -----", "//",
         " = 0 to 4 step 1", "!quant.uniform<i8:f32:0, {0.1:0}>", "\"\\u00e9\"", "\t"]

LAYER_OPS = [cls.name for cls in layer.DIALECT.ops]

TOKEN_RE = re.compile(r"%[\w.$-]+|@[\w.$/-]+|[A-Za-z_][\w.]*|0x[0-9A-Fa-f]*|[-+]?\d[\w.+-]*"
                      r"|\"(?:\\.|[^\"\\\n])*\"|\s+|.", re.DOTALL)


def mutate(text: str, rng: random.Random) -> str:
    """One to three random edits at the character or token level."""
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.15:
            # Swap an op for another layer op: valid syntax that the verifiers must judge.
            ops = list(re.finditer(r"\blayer\.[a-z0-9_]+", text))
            if ops:
                m = rng.choice(ops)
                text = text[:m.start()] + rng.choice(LAYER_OPS) + text[m.end():]
        elif r < 0.35:
            # Change one number (a dimension, a stride, an axis, a hex digit run) to an edge value.
            nums = list(re.finditer(r"\d+", text))
            if nums:
                m = rng.choice(nums)
                value = rng.choice([0, 0, 1, 2, 3, 5, 7, 16, 255, 65536, 2**31, 10**20])
                text = text[:m.start()] + str(value) + text[m.end():]
        elif r < 0.55:
            i = rng.randrange(len(text) + 1)
            kind = rng.choice(["delete", "insert", "replace"])
            ch = rng.choice("{}[]<>(),:=%@\"\\x0123456789-.e \n\t#$!?\x00é")
            if kind == "delete":
                text = text[:i] + text[i + 1:]
            elif kind == "insert":
                text = text[:i] + ch + text[i:]
            else:
                text = text[:i] + ch + text[i + 1:]
        else:
            toks = TOKEN_RE.findall(text)
            if not toks:
                return rng.choice(VOCAB)
            i = rng.randrange(len(toks))
            kind = rng.choice(["delete", "duplicate", "swap", "vocab", "copy"])
            if kind == "delete":
                del toks[i]
            elif kind == "duplicate":
                toks.insert(i, toks[i])
            elif kind == "swap":
                j = rng.randrange(len(toks))
                toks[i], toks[j] = toks[j], toks[i]
            elif kind == "vocab":
                toks[i] = rng.choice(VOCAB)
            else:
                toks[i] = toks[rng.randrange(len(toks))]
            text = "".join(toks)
    return text


def check(text: str, name: str = "fuzz.l4f") -> str:
    """Parse, verify, run the layer passes and round-trip `text`. Returns "ok" or "error"; anything
    else (another exception, an error without a location, a changed round trip) raises AssertionError."""
    try:
        module = parse(text, name, Context())
        verify_module(module)
        printed = print_module(module)
        PassManager(parse_pipeline("canonicalize,fold-batchnorm,fuse-activations")).run(Context(), module)
    except CompileError as e:
        assert e.loc.file == name and e.loc.line >= 1 and e.loc.col >= 1, \
            f"error without a file:line:col location: {e.one_line()!r}"
        assert "\n" not in e.one_line(), f"error message spans lines: {e.one_line()!r}"
        return "error"
    # What printed must parse back to the same text.
    again = parse(printed, "printed.l4f", Context())
    verify_module(again)
    assert print_module(again) == printed, "print -> parse -> print changed the text"
    return "ok"


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.l4f"))


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_corpus(path: Path) -> None:
    """Every corpus case once raised something other than a located CompileError."""
    text = path.read_text(encoding="utf-8")
    expected = re.search(r"^// outcome: (ok|error)$", text, re.MULTILINE)
    assert expected, f"{path.name} must state its outcome in a '// outcome: ok|error' line"
    assert check(text, path.name) == expected.group(1)


def test_seeds_round_trip() -> None:
    """The seed files themselves are valid (else the fuzzer would only test error paths)."""
    assert len(SEEDS) >= 8
    for path in SEEDS:
        text = path.read_text(encoding="utf-8")
        if "expected-error" in text:
            continue
        assert check(text, path.name) == "ok", path


def test_fuzz(tmp_path: Path) -> None:
    rng = random.Random(20240601)
    seeds = [p.read_text(encoding="utf-8") for p in SEEDS]
    # Split files with several chunks, as ml4f-opt --split-input-file does.
    chunks = [c for s in seeds for c in re.split(r"^// -----\s*$", s, flags=re.MULTILINE) if c.strip()]
    outcomes = {"ok": 0, "error": 0}
    start = time.monotonic()
    for case in range(MAX_CASES):
        if time.monotonic() - start > TIME_BUDGET:
            break
        text = mutate(rng.choice(chunks), rng)
        try:
            outcomes[check(text)] += 1
        except Exception:  # noqa: BLE001 - a fuzz failure of any kind is reported with its input
            where = CORPUS if os.environ.get("ML4F_FUZZ_SAVE") else tmp_path
            where.mkdir(exist_ok=True)
            out = where / f"case-{case:05d}.l4f"
            out.write_text(text, encoding="utf-8")
            pytest.fail(f"fuzz case {case} (saved to {out}):\n{traceback.format_exc()}")
    # Both outcomes must be reached: the mutations are neither all fatal nor all harmless.
    assert outcomes["ok"] >= 20 and outcomes["error"] >= 200, outcomes


def test_cli_one_line_errors() -> None:
    """ml4f-opt turns a corpus error into one line plus the caret display, with exit status 1."""
    errors = [p for p in corpus_files() if "// outcome: error" in p.read_text(encoding="utf-8")][:3]
    assert errors
    for path in errors:
        proc = subprocess.run([sys.executable, "-m", "ml4f.tools.ml4f_opt", str(path)],
                              check=False, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, proc.stderr
        first = proc.stderr.splitlines()[0]
        assert re.match(rf".*{re.escape(path.name)}:\d+:\d+: error: ", first), proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3, proc.stderr


def test_every_layer_op_has_a_round_trip_lit_test() -> None:
    """A new layer op needs its line in a tests/lit/layer/roundtrip-*.l4f file (parsed, printed,
    reparsed there), so that the fuzzer also mutates it."""
    text = "".join(p.read_text(encoding="utf-8") for p in (HERE / "lit" / "layer").glob("roundtrip-*.l4f"))
    missing = [name for name in LAYER_OPS if not re.search(rf"(= |^\s*){re.escape(name)}\b", text, re.MULTILINE)]
    assert not missing, f"no round-trip lit test for {missing}"
