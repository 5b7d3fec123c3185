"""QSGLD and QAdam under `tf.distribute.MirroredStrategy` over logical CPU devices.

Logical devices must be configured before TensorFlow initialises, and the pytest worker
is shared with other tests, so the training runs in one subprocess
(`tests/programs/mirrored_train.py`, about 15 s) and the tests compare what it wrote.
The reference is a single-device run from the same initial weights with the same global
batch (32, so 16 per replica): the all-reduced gradient equals the single-device one up
to float summation order, and QSGLD's rounding to the grid `1 / Qp` absorbs most of that.
"""

import json

import numpy as np
import pytest

from tests.programs import runner

pytestmark = pytest.mark.backends(
    "tensorflow"
)  # tf.distribute: TensorFlow's own machinery

OPTIMIZERS = ("qsgld", "qadam")
QP = (
    2.0**19
)  # ResolutionSchedule(eta=2**19) over 2 epochs stays at 2**19 after epoch 0.718
# Float summation order may flip the rounding of a coordinate that sits within ~1e-7 of a
# rounding boundary: allow a few grid cells on a small share of coordinates.
MAX_CELLS = 4
MAX_DIFFERING_SHARE = 0.05


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirrored")
    out, log = tmp / "result.npz", tmp / "log.txt"
    runner.run(
        "mirrored_train.py", "--out", out, "--replicas", 2, timeout=300, log=log
    )
    data = np.load(out)
    arrays = {k: data[k] for k in data.files if k != "meta"}
    return arrays, json.loads(str(data["meta"]))


def _weights(arrays, prefix):
    keys = sorted(
        (k for k in arrays if k.startswith(prefix + "/")),
        key=lambda k: int(k.rsplit("/", 1)[1]),
    )
    return [arrays[k] for k in keys]


def _assert_close_on_grid(a_list, b_list, init_list, qp=QP):
    """Equal up to a few grid cells on few coordinates, and far from the initial weights."""
    assert len(a_list) == len(b_list) == len(init_list) > 0
    moved = 0.0
    for a, b, init in zip(a_list, b_list, init_list):
        cells = np.abs(a.astype(np.float64) - b.astype(np.float64)) * qp
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
        assert cells.max() <= MAX_CELLS + 1e-3, cells.max()
        assert np.mean(cells > 1e-3) <= MAX_DIFFERING_SHARE
        moved = max(moved, np.abs(a - init).max() * qp)
    # The comparison means something: training moved the weights by many grid cells.
    assert moved > 1000 * MAX_CELLS


def test_two_logical_devices_in_sync(result):
    _, meta = result
    assert meta["replicas_in_sync"] == 2
    assert [d.rsplit(":", 1)[1] for d in meta["devices"]] == ["0", "1"]
    for name in OPTIMIZERS:
        assert meta[name]["mirrored_model_strategy"] == "MirroredStrategy"
        assert meta[name]["num_replicas_in_weights"] == 2
        # 256 examples / global batch 32 = 8 steps per epoch, 2 epochs: one optimizer step
        # per global batch, not per replica.
        assert meta[name]["iterations"] == 16


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mirrored_matches_single_device(result, name):
    arrays, meta = result
    init = _weights(arrays, "init")
    _assert_close_on_grid(
        _weights(arrays, f"{name}/single"),
        _weights(arrays, f"{name}/mirrored"),
        init,
    )
    np.testing.assert_allclose(
        meta[name]["mirrored_loss"], meta[name]["single_loss"], rtol=1e-4
    )


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_replicas_hold_identical_weights(result, name):
    arrays, _ = result
    replica0 = [k for k in arrays if k.startswith(f"{name}/replica0/")]
    # Model weights (4) and optimizer variables (iterations, learning rate, slots...).
    assert len(replica0) > 4
    for key in replica0:
        np.testing.assert_array_equal(
            arrays[key], arrays[key.replace("/replica0/", "/replica1/")]
        )


def test_noise_statistics_count_each_step_once(result):
    _, meta = result
    m = meta["qsgld"]
    # The count is in units of "all trainable weights once": one per optimizer step.
    assert m["single_noise_count"] == pytest.approx(16.0, rel=1e-6)
    assert m["mirrored_noise_count"] == pytest.approx(
        m["single_noise_count"], rel=1e-6
    )
    single, mirrored = m["single_noise"], m["mirrored_noise"]
    assert mirrored["error_variance"] == pytest.approx(
        single["error_variance"], rel=1e-2
    )
    assert abs(mirrored["error_mean"] - single["error_mean"]) < 1e-3
    assert mirrored["zero_fraction"] == single["zero_fraction"]


def test_custom_loop_takes_the_non_xla_path_under_a_strategy(result):
    arrays, meta = result
    loop = meta["custom_loop"]
    # QSGLD(jit_compile=True).apply_gradients compiles its update with XLA when eager on
    # the default strategy, and never under tf.distribute.
    assert loop["single_xla_update_step_built"] is True
    assert loop["mirrored_xla_update_step_built"] is False
    assert loop["mirrored_iterations"] == 4
    _assert_close_on_grid(
        _weights(arrays, "custom/single"),
        _weights(arrays, "custom/mirrored"),
        _weights(arrays, "init"),
    )


def test_fit_is_not_xla_compiled_under_a_strategy(result):
    _, meta = result
    probe = meta["jit_probe"]
    for name in OPTIMIZERS:
        # jit_compile="auto" (the default): False here (no accelerator) ...
        assert meta[name]["mirrored_jit_compile"] is False
    # ... and False under a strategy even with an accelerator listed, where it is True
    # without one: Keras' rule, not the CPU's (keras.Model._resolve_auto_jit_compile).
    assert probe["auto_with_accelerator_no_strategy"] is True
    assert probe["auto_with_accelerator_mirrored"] is False


def test_explicit_jit_compile_under_mirrored_fails_for_keras_sgd_too(result):
    _, meta = result
    probe = meta["jit_probe"]
    # XLA cannot reach the second replica's variables: the same error for keras SGD and
    # QSGLD, so the advice is jit_compile="auto" (or False) under tf.distribute.
    for name in ("sgd", "qsgld"):
        outcome = probe[f"explicit_jit_{name}"]
        assert outcome["ok"] is False, outcome
        assert outcome["error"] == "InvalidArgumentError"
        assert "located in device" in " ".join(outcome["message"])
