"""Shared test set-up: an isolated Keras home and the TensorFlow backend, set before keras loads."""

import os
import pathlib
import sys
import tempfile

# `from tests import reference` works however pytest is started (not only `python -m pytest`).
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Importing keras writes keras.json into the Keras home: keep it out of the user's ~/.keras.
os.environ.setdefault("KERAS_HOME", tempfile.mkdtemp(prefix="keras_home_"))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(1234)
