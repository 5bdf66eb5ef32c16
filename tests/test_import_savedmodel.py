"""SavedModel / frozen-graph importer: the MLPerf Tiny KWS SavedModel and generated TF2 SavedModels
and GraphDefs, compared with TensorFlow itself on random inputs (DESIGN §7 f32 tolerance), and bad
input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from shared_models import MODELS

from ml4f.compiler.diagnostics import CompileError
from ml4f.compiler.importers import savedmodel
from ml4f.dialects.layer import run_model

KWS = MODELS / "mlperf_tiny/kws_ref_model_savedmodel"


def assert_close(y: np.ndarray, ref: np.ndarray) -> float:
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64).reshape(y.shape)
    err = np.abs(y - ref) / (1 + np.abs(ref))
    assert err.max() <= 1e-4, f"max relative error {err.max():.3g}"
    return float(err.max())


def test_kws_savedmodel_matches_tensorflow(tf: Any) -> None:
    if not KWS.exists():
        pytest.skip(f"{KWS} not present")
    module = savedmodel.load(str(KWS))
    model = module.ops[0]
    names = [op.name for op in model.layers]
    assert names.count("layer.conv2d") == 5 and names.count("layer.depthwise_conv2d") == 4
    assert model.inputs[0].result.type.shape == (1, 49, 10, 1)
    # TF 2.21's eager loader rejects this Keras 2 SavedModel (optimizer slots); its graph-mode
    # session runs the serving signature as trained.
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(KWS))
        sig = meta.signature_def["serving_default"]
        x_name = next(iter(sig.inputs.values())).name
        y_name = next(iter(sig.outputs.values())).name
        rng = np.random.default_rng(0)
        for _ in range(2):
            x = rng.normal(0, 2, (1, 49, 10, 1)).astype(np.float32)
            assert_close(run_model(model, [x])[0][0], sess.run(y_name, {x_name: x}))
    # the file inside the directory names the same model
    again = savedmodel.load(str(KWS / "saved_model.pb"))
    assert [op.name for op in again.ops[0].layers] == names


@pytest.fixture(scope="module")
def small_keras(keras: Any) -> Any:
    keras.utils.set_random_seed(3)
    x = keras.Input((8, 8, 2))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    y = keras.layers.DepthwiseConv2D(3, strides=2)(y)
    y = keras.layers.Flatten()(y)
    y = keras.layers.Dense(5, activation="softmax")(y)
    model = keras.Model(x, y)
    rng = np.random.default_rng(3)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, tuple(w.shape)).astype(np.float32))
    return model


def test_exported_tf2_savedmodel(tmp_path: Path, small_keras: Any) -> None:
    """Keras 3 `model.export()`: a TF2 SavedModel whose batch is dynamic; imported at batch 1."""
    d = tmp_path / "exported"
    small_keras.export(str(d), verbose=False)
    module = savedmodel.load(str(d))
    assert module.ops[0].symbol == "exported"
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.uniform(-2, 2, (1, 8, 8, 2)).astype(np.float32)
        assert_close(run_model(module.ops[0], [x])[0][0], small_keras(x).numpy())


def test_frozen_graph_pb(tmp_path: Path, tf: Any, small_keras: Any) -> None:
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda t: small_keras(t)).get_concrete_function(tf.TensorSpec((1, 8, 8, 2), tf.float32))
    frozen = convert_variables_to_constants_v2(fn)
    p = tmp_path / "frozen.pb"
    p.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    module = savedmodel.load(str(p))
    x = np.random.default_rng(2).uniform(-2, 2, (1, 8, 8, 2)).astype(np.float32)
    assert_close(run_model(module.ops[0], [x])[0][0], small_keras(x).numpy())


def test_dynamic_dimension_refused(tmp_path: Path, tf: Any) -> None:
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec((None, None, 3), tf.float32)])
        def serve(self, x: Any) -> Any:
            return tf.nn.relu(x)

    m = M()
    d = tmp_path / "dyn"
    tf.saved_model.save(m, str(d), signatures={"serving_default": m.serve})
    with pytest.raises(CompileError, match=r"dynamic shape \[-1, -1, 3\]"):
        savedmodel.load(str(d))


def test_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="no such file"):
        savedmodel.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompileError, match="not a SavedModel directory"):
        savedmodel.load(str(tmp_path / "empty"))
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff\xfe not a protobuf" * 10)
    with pytest.raises(CompileError) as e:
        savedmodel.load(str(junk))
    assert "junk.pb" in e.value.one_line() and "\n" not in e.value.one_line()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"\x0a\x05garbage")
    with pytest.raises(CompileError) as e:
        savedmodel.load(str(broken))
    assert "broken" in e.value.one_line()
