"""Shared pytest fixtures."""

from __future__ import annotations

import os
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def tf() -> ModuleType:
    """TensorFlow, imported once and only by the tests that compare with it (the import costs seconds)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


@pytest.fixture(scope="session")
def keras(tf: ModuleType) -> ModuleType:
    """Keras 3 on the TensorFlow backend."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras as keras_module

    return keras_module
