"""Code mode reproduces the authors' own QtSGD / QtAdam (PyTorch, float32) bit for bit.

`tests/data/golden_authors.npz` holds the weights after each of 30 steps of the authors'
optimizers on fixed gradients; `golden_authors.json` documents settings and conventions.
"""

import json
import pathlib

import keras
import numpy as np
import pytest

import keras_qsgld
from tests import reference as ref
from tests.backends import CompiledApply

# Run again on JAX with x64 mode: float32 results must not change with it.
pytestmark = pytest.mark.x64

DATA = pathlib.Path(__file__).resolve().parents[1] / "data"
GOLDEN = dict(np.load(DATA / "golden_authors.npz"))
META = json.loads((DATA / "golden_authors.json").read_text())
SETTINGS = META["settings"]
LR = SETTINGS["lr"]
B = SETTINGS["steps_per_epoch_B"]
ETA = SETTINGS["eta"]
TAU0 = SETTINGS["tau0_epochs"]
KAPPA = SETTINGS["kappa"]
ADAM_EPSILON = 1e-6  # the authors' QtAdam default (see golden_authors.json)


def test_settings_are_the_documented_ones():
    assert (LR, B, ETA, TAU0, KAPPA) == (0.05, 3, 256.0, 1.5, 2.0)
    assert SETTINGS["rounding"] == "floor" and SETTINGS["gate"].startswith(
        "tanh"
    )
    assert (
        SETTINGS["base"] == 2
        and SETTINGS["total_epoch"] * SETTINGS["warmp_up_period"] == TAU0
    )


def _schedules():
    return dict(
        resolution=keras_qsgld.ResolutionSchedule(
            eta=ETA, base=2.0, steps_per_epoch=B
        ),
        compensation=keras_qsgld.CompensationSchedule(
            kappa=KAPPA, tau0=TAU0, steps_per_epoch=B, gate="tanh"
        ),
        rounding="floor",
    )


def _run(optimizer, compiled):
    """The 30 golden steps, eagerly (TensorFlow: through the eager XLA update when the
    optimizer's jit_compile is on) or compiled as training compiles (XLA on TensorFlow and
    JAX, torch.compile on PyTorch)."""
    w = keras.Variable(GOLDEN["w0"], dtype="float32")
    apply = (
        CompiledApply(optimizer, [w])
        if compiled
        else (lambda grads: optimizer.apply(grads, [w]))
    )
    after = []
    for g in GOLDEN["grads"]:
        apply([keras.ops.convert_to_tensor(g)])
        after.append(np.array(w.numpy()))
    return np.stack(after)


PATHS = [
    (True, False),
    (False, False),
    (False, True),
]  # (jit_compile, compiled)


@pytest.mark.parametrize("jit_compile,compiled", PATHS)
def test_qsgld_reproduces_authors_qtsgd_bitwise(jit_compile, compiled):
    opt = keras_qsgld.QSGLD(
        learning_rate=LR, jit_compile=jit_compile, **_schedules()
    )
    np.testing.assert_array_equal(_run(opt, compiled), GOLDEN["weights_after"])
    qp = [float(opt.resolution_at(k)) for k in range(30)]
    np.testing.assert_array_equal(qp, GOLDEN["qp"])


@pytest.mark.parametrize("jit_compile,compiled", PATHS)
def test_qadam_reproduces_authors_qtadam_bitwise(jit_compile, compiled):
    opt = keras_qsgld.QAdam(
        learning_rate=LR,
        epsilon=ADAM_EPSILON,
        jit_compile=jit_compile,
        **_schedules(),
    )
    np.testing.assert_array_equal(
        _run(opt, compiled), GOLDEN["adam_weights_after"]
    )
    qp = [float(opt.resolution_at(k + 1)) for k in range(30)]
    np.testing.assert_array_equal(qp, GOLDEN["adam_qp"])


def test_golden_data_is_not_trivial():
    # Each step moves the weights, and the compensation switch-off (tau0 = 1.5 epochs =
    # step 4.5) and two Qp changes happen inside the 30 steps.
    w = np.concatenate([GOLDEN["w0"][None], GOLDEN["weights_after"]])
    assert np.all(np.any(np.diff(w, axis=0) != 0, axis=(1, 2)))
    assert len(set(GOLDEN["qp"])) == 3 and len(set(GOLDEN["adam_qp"])) == 3


def test_reference_reproduces_golden_increments():
    """The NumPy reference used by the other tests agrees with the authors' code too:
    every one of the 2 x 6000 increments, including those near a rounding boundary."""
    resolution = lambda k: ref.resolution(
        k, eta=ETA, base=2.0, steps_per_epoch=B
    )  # noqa: E731
    gate = lambda k: ref.gate(
        k, kappa=KAPPA, tau0=TAU0, steps_per_epoch=B, kind="tanh"
    )  # noqa: E731
    grads = [GOLDEN["grads"]]
    w = np.concatenate([GOLDEN["w0"][None], GOLDEN["weights_after"]]).astype(
        np.float64
    )
    sgd = ref.qsgld_trajectory(
        [GOLDEN["w0"]], grads, LR, resolution, gate, rounding="floor"
    )
    np.testing.assert_array_equal(sgd["qp"], GOLDEN["qp"])
    for k in range(30):
        ref.assert_increment_matches(
            w[k + 1] - w[k],
            sgd["y"][k][0],
            sgd["qp"][k],
            "floor",
            grid_atol=1e-3,
        )
        np.testing.assert_array_equal(
            np.round((w[k + 1] - w[k]) * sgd["qp"][k]), np.floor(sgd["y"][k][0])
        )
    wa = np.concatenate(
        [GOLDEN["w0"][None], GOLDEN["adam_weights_after"]]
    ).astype(np.float64)
    adam = ref.qadam_trajectory(
        [GOLDEN["w0"]],
        grads,
        LR,
        resolution,
        gate,
        rounding="floor",
        epsilon=ADAM_EPSILON,
    )
    np.testing.assert_array_equal(adam["qp"], GOLDEN["adam_qp"])
    for k in range(30):
        ref.assert_increment_matches(
            wa[k + 1] - wa[k],
            adam["y"][k][0],
            adam["qp"][k],
            "floor",
            grid_atol=1e-3,
        )
        np.testing.assert_array_equal(
            np.round((wa[k + 1] - wa[k]) * adam["qp"][k]),
            np.floor(adam["y"][k][0]),
        )
