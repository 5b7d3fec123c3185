"""Shared test set-up: an isolated Keras home and the backend, set before keras loads.

Each backend's tests run in a process of their own (`KERAS_BACKEND=jax pytest tests`; importing
TensorFlow and then torch in one process has crashed), and every test runs on every backend
unless it says otherwise: the one place that says so is its `backends` marker. Tests that
exercise one backend's own machinery (tf.function, tf.distribute, IndexedSlices, torch.compile)
carry `@pytest.mark.backends("tensorflow")` (or `pytestmark = ...` for a whole module) and are
skipped on the others; such a module imports its backend only inside the tests.
`tests/library/` tests the library (and runs on the oldest Keras allowed too); `tests/scripts/`
the example, tuning and benchmark scripts; `tests/programs/` holds programs the tests run in
processes of their own.
"""

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

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "backends(*names): run only on these Keras backends (skipped on the others)",
    )
    config.addinivalue_line(
        "markers",
        "float64: needs float64 maths (JAX: only with JAX_ENABLE_X64=1)",
    )
    config.addinivalue_line(
        "markers",
        "x64: runs again on JAX with x64 mode (`make test`: -m 'x64 or float64')",
    )


def pytest_collection_modifyitems(config, items):
    backend = os.environ["KERAS_BACKEND"]
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and backend not in marker.args:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"runs on {', '.join(marker.args)}; this is {backend}"
                )
            )


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed, fresh for every test."""
    return np.random.default_rng(1234)
