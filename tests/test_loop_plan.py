"""plan-memory: no two simultaneously live buffers share bytes (property tests over random
intervals and random layer DAGs), the arena reaches the lower bound on chains, in-place works."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml4f.compiler.builder import ModelBuilder
from ml4f.compiler.context import Context
from ml4f.compiler.interpret_loop import run_func
from ml4f.compiler.passes import PassManager, parse_pipeline
from ml4f.compiler.transforms.plan_memory import Interval, lower_bound, overlapping_pairs, place
from ml4f.dialects import layer as L

intervals_st = st.lists(
    st.tuples(st.integers(1, 400), st.integers(0, 12), st.integers(0, 6)).map(
        lambda t: Interval(-(-t[0] // 4) * 4, t[1], t[1] + t[2])), min_size=1, max_size=25)


@settings(max_examples=150, deadline=None)
@given(intervals_st)
def test_place_never_overlaps_live_intervals(intervals: list[Interval]) -> None:
    offsets = place(intervals)
    assert overlapping_pairs(intervals, offsets) == []
    assert all(o % 4 == 0 and o >= 0 for o in offsets)
    size = max(o + iv.size for o, iv in zip(offsets, intervals))
    assert size >= lower_bound(intervals)


def test_place_chain_reaches_lower_bound() -> None:
    # A chain with sizes that defeat plain first-fit: each tensor lives with its neighbours only.
    sizes = [64, 32, 96, 48, 128, 16, 80]
    intervals = [Interval(s, i, i + 1) for i, s in enumerate(sizes)]
    offsets = place(intervals)
    assert overlapping_pairs(intervals, offsets) == []
    assert max(o + iv.size for o, iv in zip(offsets, intervals)) == lower_bound(intervals) == 176


def _independent_check(func) -> None:
    """Recompute liveness from scratch (first and last kernel touching a buffer) and check bytes."""
    kernels = func.kernels
    span: dict[int, list[int]] = {}
    for t, k in enumerate(kernels):
        for op in k.walk():
            for v in op.operands:
                span.setdefault(id(v), [t, t])[1] = t
    returned = {id(v) for v in func.body.block.ops[-1].operands}
    allocs = func.allocs
    life = {}
    for a in allocs:
        s, e = span.get(id(a.result), [len(kernels)] * 2)
        life[id(a)] = (-1 if a.input >= 0 else s, len(kernels) if id(a.result) in returned else e)
    for i, a in enumerate(allocs):
        for b in allocs[i + 1:]:
            (sa, ea), (sb, eb) = life[id(a)], life[id(b)]
            if not (sa <= eb and sb <= ea):
                continue
            ra = range(a.offset, a.offset + a.result.type.nbytes)
            rb = range(b.offset, b.offset + b.result.type.nbytes)
            if ra.start < rb.stop and rb.start < ra.stop:
                # Only an in-place kernel may hand a dying input's bytes to its output.
                t = ea if ea == sb else eb
                assert (ea == sb or eb == sa) and kernels[t].inplace and a.offset == b.offset, \
                    f"{a.display_name()} and {b.display_name()} overlap while alive"


@st.composite
def dags(draw: st.DrawFn) -> tuple[int, list[tuple]]:
    n = draw(st.integers(2, 9))
    steps = []
    for i in range(n):
        kind = draw(st.sampled_from(["relu", "add", "conv", "concat", "pool", "sigmoid", "mul"]))
        a = draw(st.integers(0, i))
        b = draw(st.integers(0, i))
        cout = draw(st.integers(1, 5))
        steps.append((kind, a, b, cout))
    extra = draw(st.integers(0, n))
    return extra, steps


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags(), st.integers(0, 2**16))
def test_random_dags_plan_and_run(dag: tuple[int, list[tuple]], seed: int) -> None:
    extra, steps = dag
    rng = np.random.default_rng(seed)
    b = ModelBuilder("dag")
    vals = [b.input((1, 8, 3))]
    for i, (kind, a, c, cout) in enumerate(steps):
        x, y = vals[a], vals[c]
        name = f"l{i}"
        if kind in ("add", "mul") and x.type.shape != y.type.shape:
            kind = "relu"
        if kind == "concat" and x.type.shape[1] != y.type.shape[1]:
            kind = "sigmoid"
        if kind == "relu":
            v = b.add(L.Relu, x, name=name)
        elif kind == "sigmoid":
            v = b.add(L.Sigmoid, x, name=name)
        elif kind == "add":
            v = b.add(L.Add, x, y, name=name)
        elif kind == "mul":
            v = b.add(L.Mul, x, y, name=name)
        elif kind == "concat":
            v = b.add(L.Concat, x, y, name=name, axis=-1)
        elif kind == "pool":
            v = b.add(L.MaxPool1D, x, name=name, pool_size=[3], strides=[1], padding="same")
        else:
            k = b.weights(f"{name}.k", rng.normal(0, 0.5, (cout, 3, x.type.shape[-1])).astype(np.float32))
            v = b.add(L.Conv1D, x, name=name, kernel=k, padding="same")
        vals.append(v)
    outs = [vals[-1]] + ([vals[extra]] if 0 < extra < len(vals) - 1 else [])
    b.output(*outs)
    module = b.finish()
    x = rng.uniform(-1, 1, (1, 8, 3)).astype(np.float32)
    refs = L.run_model(module.ops[0], [x])[0]
    PassManager(parse_pipeline("lower-to-loops,plan-memory")).run(Context(), module)
    func = module.ops[0]
    _independent_check(func)
    assert func.arena_lower_bound <= func.arena_size
    for out, ref in zip(run_func(func, [x]), refs):
        assert np.allclose(out, ref, rtol=1e-4, atol=1e-4)


def test_inplace_elementwise_shares_bytes() -> None:
    def build():
        b = ModelBuilder("chain")
        x = b.input((1, 16))
        k = b.weights("k", np.arange(256, dtype=np.float32).reshape(16, 16) / 256)
        y = b.add(L.Dense, x, name="fc", kernel=k)
        s = b.add(L.Softmax, y, name="sm")                      # in place on fc
        b.output(b.add(L.Add, x, s, name="add"))                 # in place on the input or sm
        return b.finish()

    xin = np.linspace(-1, 1, 16, dtype=np.float32)[None]
    ref = L.run_model(build().ops[0], [xin])[0][0]
    module = build()
    PassManager(parse_pipeline("lower-to-loops,plan-memory")).run(Context(), module)
    func = module.ops[0]
    offs = {a.result.name_hint: a.offset for a in func.allocs}
    assert offs["fc"] == offs["sm"] != offs["input"] and offs["add"] in (offs["input"], offs["sm"])
    assert func.arena_size == 2 * 64 == func.arena_lower_bound
    _independent_check(func)
    assert np.allclose(run_func(func, [xin])[0], ref, rtol=1e-5, atol=1e-6)
    # Without in-place planning the input, fc and sm are alive together.
    module = build()
    PassManager(parse_pipeline("lower-to-loops,plan-memory{inplace=false}")).run(Context(), module)
    assert module.ops[0].arena_size == 3 * 64
