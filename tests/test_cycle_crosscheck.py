"""The two places that know an instruction's cost agree: the Thumb dialect's declared `Cost` per form
(used by the compiler) and the emulator's decoder + cycle model (used to measure)."""

from __future__ import annotations

from collections import Counter

import pytest
from thumb_corpus import EPILOGUE, PROLOGUE, corpus_lines

from ml4f.compiler.backend.assembler import assemble_full
from ml4f.compiler.backend.cycles import base_cycles
from ml4f.compiler.backend.decode import Kind, decode
from ml4f.compiler.diagnostics import CompileError
from ml4f.dialects.thumb.encodings import FORMS

# Forms the emulator never times as ordinary instructions (they stop the run or are system ops).
UNTIMED = {"svc", "bkpt", "udf", "vmsr", "vmrs"}
# `it` only exists in front of the instructions it makes conditional (1 cycle, see test_emulator).
NO_CORPUS = {"it"}


@pytest.mark.parametrize("mnemonic", sorted(set(FORMS) - NO_CORPUS))
def test_emulator_cost_is_within_the_declared_cost(mnemonic: str) -> None:
    checked = Counter()
    for line in corpus_lines(mnemonic, 40, seed=7):
        try:
            asm = assemble_full("\n".join([*PROLOGUE, line, *EPILOGUE]) + "\n")
        except CompileError:
            continue  # a deliberately invalid corpus line
        (info,) = [ln for ln in asm.lines if ln.line == len(PROLOGUE) + 1 and ln.form is not None]
        insn = decode(asm.code, info.addr)
        assert insn.size == info.size, line
        if mnemonic in UNTIMED or insn.kind is Kind.OTHER:
            continue
        cost = info.form.cycles
        if cost.per_reg and insn.kind in (Kind.LOAD, Kind.STORE):
            # GNU as (and ml4f) encode a one-register ldm/stm/push/pop as ldr/str: it costs as one.
            cost = FORMS["ldr" if insn.kind is Kind.LOAD else "str"][0].cycles
        got = base_cycles(insn)
        n = insn.nregs if cost.per_reg else 0
        low = cost.base + n
        high = (cost.max if cost.max is not None else cost.base) + n
        assert low <= got <= high, f"{line}: emulator {got} cycles ({insn.kind.name}), declared {cost}"
        checked[info.form.pattern] += 1
    assert checked or mnemonic in UNTIMED, f"no line of {mnemonic} was checked"
