"""QAdam against the independent NumPy reference (bias correction and schedules at k + 1)."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_qsgld
from tests import reference as ref
from tests.library.test_qsgld import (
    assert_trajectory_matches,
    make_problem,
    run,
    schedules,
)

LR = 0.01
# float32(0.999) is 1.3e-5 away from 0.999 in relative terms (1 - beta_2 is off by that much),
# which moves `v` and hence the step: a wider margin around the rounding boundaries.
MARGIN = dict(rel_margin=2e-5, max_ambiguous=0.05)


@pytest.mark.parametrize(
    "gate,rounding",
    [
        (None, "nearest"),
        (None, "floor"),
        ("logistic", "nearest"),
        ("logistic", "floor"),
        ("tanh", "nearest"),
        ("tanh", "floor"),
    ],
)
def test_trajectory_matches_reference(gate, rounding):
    w0, grads = make_problem()
    resolution, compensation, ref_resolution, ref_gate = schedules(gate)
    opt = keras_qsgld.QAdam(
        LR,
        resolution=resolution,
        compensation=compensation,
        rounding=rounding,
        jit_compile=False,
    )
    history, _ = run(opt, w0, grads)
    expected = ref.qadam_trajectory(
        w0, grads, LR, ref_resolution, ref_gate, rounding, epsilon=1e-7
    )
    assert_trajectory_matches(history, w0, expected, rounding, **MARGIN)
    for slot, want in zip(opt._momentums, expected["momentums"]):
        np.testing.assert_allclose(slot.numpy(), want, rtol=1e-5, atol=1e-9)
    for slot, want in zip(opt._velocities, expected["velocities"]):
        np.testing.assert_allclose(slot.numpy(), want, rtol=5e-5, atol=1e-12)


def test_hyperparameters_matter():
    w0, grads = make_problem(steps=6)
    kwargs = dict(beta_1=0.8, beta_2=0.99, epsilon=1e-3)
    opt = keras_qsgld.QAdam(
        0.05, resolution=2048.0, compensation=0.5, jit_compile=False, **kwargs
    )
    history, _ = run(opt, w0, grads)
    expected = ref.qadam_trajectory(w0, grads, 0.05, 2048.0, 0.5, **kwargs)
    assert_trajectory_matches(history, w0, expected, "nearest", **MARGIN)
    default = ref.qadam_trajectory(w0, grads, 0.05, 2048.0, 0.5)
    assert not np.array_equal(
        ref.quantize(default["y"][3][0]), ref.quantize(expected["y"][3][0])
    )


def test_schedules_are_evaluated_at_k_plus_1():
    """With 1 step per epoch and eta = 2: Qp(0) = 1 but Qp(1) = 2 (t = 1 > e - 2).

    Adam's first step is about -lr * sign(g) = -0.3 sign(g): 0 cells on the grid of Qp(0) = 1,
    half a unit on the grid of Qp(1) = 2.
    """
    g = np.random.default_rng(0).normal(0, 1, (1, 40)).astype(np.float32)
    variable = keras.Variable(np.zeros(40, np.float32))
    opt = keras_qsgld.QAdam(
        0.3,
        resolution=keras_qsgld.ResolutionSchedule(eta=2.0, steps_per_epoch=1),
        jit_compile=False,
    )
    opt.apply([ops.convert_to_tensor(g[0])], [variable])
    np.testing.assert_array_equal(variable.numpy(), -0.5 * np.sign(g[0]))
    expected = ref.qadam_trajectory(
        [np.zeros(40)], [g], 0.3, lambda k: ref.resolution(k, eta=2.0)
    )
    np.testing.assert_array_equal(variable.numpy(), expected["weights"][0][0])
    assert expected["qp"][0] == 2.0 and ref.resolution(0, eta=2.0) == 1.0


def test_first_step_is_sign_of_gradient():
    """Adam's first bias-corrected step is lr * g / (|g| + eps'): about lr * sign(g)."""
    g = np.array([3.0, -0.5, 1e-3, 0.0], np.float32)
    variable = keras.Variable(np.zeros(4, np.float32))
    keras_qsgld.QAdam(0.25, resolution=64.0, jit_compile=False).apply(
        [ops.convert_to_tensor(g)], [variable]
    )
    np.testing.assert_array_equal(variable.numpy(), [-0.25, 0.25, -0.25, 0.0])


@pytest.mark.parametrize("gate", [None, "tanh"])
def test_zero_gradients_give_no_nan(gate):
    resolution, compensation, _, _ = schedules(gate)
    opt = keras_qsgld.QAdam(
        LR, resolution=resolution, compensation=compensation
    )
    w0 = [np.ones((3, 2), np.float32)]
    history, variables = run(opt, w0, [np.zeros((3, 3, 2), np.float32)])
    for weights in history:
        np.testing.assert_array_equal(weights[0], w0[0])
    assert all(np.all(np.isfinite(v.numpy())) for v in opt.variables)


def test_weight_decay_is_quantized_adamw():
    """Keras' decoupled decay `w -= lr * wd * w` comes first, then the quantized step."""
    rng = np.random.default_rng(5)
    w = rng.normal(0, 1, (10, 4)).astype(np.float32)
    g = rng.normal(0, 1, (10, 4)).astype(np.float32)
    variable = keras.Variable(w)
    opt = keras_qsgld.QAdam(
        0.01,
        weight_decay=0.1,
        resolution=1024.0,
        compensation=0.5,
        jit_compile=False,
    )
    opt.apply([ops.convert_to_tensor(g)], [variable])
    decayed = w - w * np.float32(0.1) * np.float32(0.01)
    expected = ref.qadam_trajectory(
        [np.zeros_like(w)], [g[None]], 0.01, 1024.0, 0.5
    )
    delta = expected["weights"][0][0].astype(np.float32)
    np.testing.assert_allclose(
        variable.numpy(), decayed + delta, rtol=0, atol=1e-6
    )
    assert not np.allclose(variable.numpy(), w + delta, rtol=0, atol=1e-5)


def test_docstring_documents_rule_and_references():
    doc = keras_qsgld.QAdam.__doc__
    assert (
        "```python" in doc
        and "k + 1" in doc
        and "References:" in doc
        and "1412.6980" in doc
    )
    assert "{{base_optimizer_keyword_args}}" not in doc
