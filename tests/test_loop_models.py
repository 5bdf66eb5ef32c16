"""Real models (float versions) lower, plan, tile, unroll and interpret equal to the layer
references; the memory plan is valid and reaches the lower bound on these graphs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from shared_models import MODELS

from ml4f.compiler.context import Context
from ml4f.compiler.importers import import_model
from ml4f.compiler.interpret_loop import run_func
from ml4f.compiler.passes import PassManager, parse_pipeline
from ml4f.compiler.transforms.plan_memory import check_plan
from ml4f.dialects import layer as L

FILES = ["ml4f/gestures.tfjsmodel.json", "ml4f/accel.json", "tfjs/mnist_cnn.json",
         "tfjs/dwsep_cnn.json", "tfjs/gesture_1d.json", "tinymaix/mnist_resnet.h5",
         "mlperf_tiny/pretrainedResnet.h5", "mlperf_tiny/vww_96_float.tflite", "onnx/mnist-8.onnx"]


def _close(out: np.ndarray, ref: np.ndarray) -> bool:
    return bool(np.all(np.abs(out - ref) <= 1e-4 * (1 + np.abs(ref))))


@pytest.mark.parametrize("name", FILES)
def test_model_lowers_plans_tiles_and_runs(name: str) -> None:
    path = MODELS / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    module = import_model(str(path))
    model = module.ops[0]
    t = model.inputs[0].result.type
    x = np.random.default_rng(0).uniform(-1, 1, t.shape).astype(np.float32)
    ref = L.run_model(model, [x])[0][0]
    PassManager(parse_pipeline("fold-batchnorm,lower-to-loops,plan-memory")).run(Context(), module)
    func = module.ops[0]
    check_plan(func)
    assert func.arena_size == func.arena_lower_bound, (func.arena_size, func.arena_lower_bound)
    start = time.perf_counter()
    out = run_func(func, [x])[0]
    assert time.perf_counter() - start < 5.0
    assert _close(out, ref), float(np.abs(out - ref).max())
    PassManager(parse_pipeline("tile,unroll,loop-canonicalize,plan-memory")).run(Context(), module)
    check_plan(module.ops[0])
    assert _close(run_func(module.ops[0], [x])[0], ref)
