"""Bad input raises a ValueError that names the argument and the value received."""

import re

import pytest

import keras_qsgld

OPTIMIZERS = [keras_qsgld.QSGLD, keras_qsgld.QAdam]


def _raises(fn, arg, value):
    """Calls `fn()` and checks the ValueError quotes `arg` and `arg=<repr(value)>`."""
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert f"`{arg}`" in message, message
    assert f"{arg}={value!r}" in message, message


@pytest.mark.parametrize("value", [0, 0.0, -1.0, float("nan"), "big", True])
def test_eta(value):
    _raises(lambda: keras_qsgld.ResolutionSchedule(eta=value), "eta", value)


@pytest.mark.parametrize("value", [1, 1.0, 0.5, -2.0, float("nan")])
def test_base(value):
    _raises(lambda: keras_qsgld.ResolutionSchedule(base=value), "base", value)


@pytest.mark.parametrize("schedule", [keras_qsgld.ResolutionSchedule, keras_qsgld.CompensationSchedule])
@pytest.mark.parametrize("value", [0, -3, 0.0, None, float("nan")])
def test_steps_per_epoch(schedule, value):
    _raises(lambda: schedule(steps_per_epoch=value), "steps_per_epoch", value)


@pytest.mark.parametrize("value", [-0.1, -2, float("nan"), "2"])
def test_kappa(value):
    _raises(lambda: keras_qsgld.CompensationSchedule(kappa=value), "kappa", value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), None])
def test_tau0(value):
    _raises(lambda: keras_qsgld.CompensationSchedule(tau0=value), "tau0", value)


@pytest.mark.parametrize("value", ["sigmoid", "TANH", None])
def test_gate(value):
    _raises(lambda: keras_qsgld.CompensationSchedule(gate=value), "gate", value)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_warmup_fraction(value):
    _raises(lambda: keras_qsgld.CompensationSchedule.from_budget(100, warmup_fraction=value), "warmup_fraction", value)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", ["round", "half_even", None])
def test_rounding(optimizer, value):
    _raises(lambda: optimizer(rounding=value), "rounding", value)


def test_quantize_rounding():
    _raises(lambda: keras_qsgld.quantize(1.0, rounding="ceil"), "rounding", "ceil")


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", [-0.01, -1.0, float("nan")])
def test_negative_learning_rate(optimizer, value):
    _raises(lambda: optimizer(learning_rate=value), "learning_rate", value)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), True])
def test_momentum(value):
    _raises(lambda: keras_qsgld.QSGLD(momentum=value), "momentum", value)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", [0.0, -256.0, 0, float("inf"), float("nan"), "fine"])
def test_fixed_resolution(optimizer, value):
    _raises(lambda: optimizer(resolution=value), "resolution", value)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", [-0.5, 1.01, 2, float("nan"), "on"])
def test_constant_compensation(optimizer, value):
    _raises(lambda: optimizer(compensation=value), "compensation", value)


@pytest.mark.parametrize("arg,value", [("beta_1", 1.0), ("beta_1", -0.1), ("beta_2", 1.0), ("beta_2", 2), ("epsilon", -1e-7)])
def test_adam_hyperparameters(arg, value):
    _raises(lambda: keras_qsgld.QAdam(**{arg: value}), arg, value)


def test_valid_edge_values_are_accepted():
    keras_qsgld.ResolutionSchedule(eta=1e-3, base=1.0001, steps_per_epoch=0.5)
    keras_qsgld.CompensationSchedule(kappa=0.0, tau0=-1.0, gate="tanh")
    for optimizer in OPTIMIZERS:
        optimizer(learning_rate=0.0, resolution=1e-3, compensation=0.0)
        optimizer(compensation=1.0, rounding="floor")
    keras_qsgld.QSGLD(momentum=0.0)
    keras_qsgld.QSGLD(momentum=0.999, nesterov=True)


def test_messages_are_readable():
    with pytest.raises(ValueError, match=re.escape("Received: eta=-1.0")):
        keras_qsgld.ResolutionSchedule(eta=-1.0)
    with pytest.raises(ValueError, match=re.escape("Received: momentum=nan")):
        keras_qsgld.QSGLD(momentum=float("nan"))
