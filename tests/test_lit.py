"""Runs the lit suite once (in parallel) and reports one pytest test per lit file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LIT_DIR = Path(__file__).parent / "lit"
SUFFIXES = {".l4f", ".s", ".test"}


def _lit_files() -> list[Path]:
    # Output/ holds lit's scratch files (a test may write .l4f files there).
    return sorted(p for p in LIT_DIR.rglob("*")
                  if p.suffix in SUFFIXES and not {"Inputs", "Output"} & set(p.parts))


@pytest.fixture(scope="session")
def lit_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("lit") / "results.json"
    lit = shutil.which("lit") or shutil.which("lit", path=os.path.dirname(sys.executable))
    assert lit, "lit is not installed (pip install -e '.[test]')"
    proc = subprocess.run([lit, "-q", f"-j{os.cpu_count() or 2}", "--output", str(out), str(LIT_DIR)],
                          capture_output=True, text=True)
    if not out.exists():
        pytest.fail(f"lit did not run:\n{proc.stdout}\n{proc.stderr}")
    data = json.loads(out.read_text())
    return {t["name"].split(" :: ", 1)[1]: t for t in data["tests"]}


@pytest.mark.parametrize("path", _lit_files(), ids=lambda p: str(p.relative_to(LIT_DIR)))
def test_lit(path: Path, lit_results: dict[str, dict]) -> None:
    key = str(path.relative_to(LIT_DIR))
    result = lit_results.get(key)
    assert result is not None, f"lit did not report {key}"
    assert result["code"] == "PASS", result.get("output", "")
