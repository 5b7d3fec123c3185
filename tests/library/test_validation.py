"""Bad input raises a ValueError that names the argument and the value received."""

import re
import warnings

import keras
import numpy as np
import pytest

import keras_qsgld
from tests.programs import runner

OPTIMIZERS = [keras_qsgld.QSGLD, keras_qsgld.QAdam]


def _raises(fn, arg, value):
    """Calls `fn()` and checks the ValueError quotes `arg` and `arg=<repr(value)>`."""
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert f"`{arg}`" in message, message
    assert f"{arg}={value!r}" in message, message


@pytest.mark.parametrize(
    "value", [0, 0.0, -1.0, float("nan"), float("inf"), "big", True, 1e-45]
)
def test_eta(value):
    _raises(lambda: keras_qsgld.ResolutionSchedule(eta=value), "eta", value)


@pytest.mark.parametrize(
    "value", [1, 1.0, 0.5, -2.0, float("nan"), 1.0000001, 1.009]
)  # near 1: a hang before
def test_base(value):
    _raises(lambda: keras_qsgld.ResolutionSchedule(base=value), "base", value)


@pytest.mark.parametrize(
    "schedule",
    [keras_qsgld.ResolutionSchedule, keras_qsgld.CompensationSchedule],
)
@pytest.mark.parametrize(
    "value",
    [0, -3, 0.0, float("nan"), float("inf"), True, "45", np.array([3, 4])],
)
def test_steps_per_epoch(schedule, value):
    _raises(lambda: schedule(steps_per_epoch=value), "steps_per_epoch", value)


@pytest.mark.parametrize("value", [-0.1, -2, float("nan"), "2"])
def test_kappa(value):
    _raises(
        lambda: keras_qsgld.CompensationSchedule(kappa=value), "kappa", value
    )


@pytest.mark.parametrize("value", [float("inf"), float("nan"), None])
def test_tau0(value):
    _raises(lambda: keras_qsgld.CompensationSchedule(tau0=value), "tau0", value)


@pytest.mark.parametrize("value", ["sigmoid", "TANH", None])
def test_gate(value):
    _raises(lambda: keras_qsgld.CompensationSchedule(gate=value), "gate", value)


@pytest.mark.parametrize("value", [-0.1, 1.5, None, "0.2", float("nan")])
def test_warmup_fraction(value):
    _raises(
        lambda: keras_qsgld.CompensationSchedule.from_budget(
            100, warmup_fraction=value
        ),
        "warmup_fraction",
        value,
    )


@pytest.mark.parametrize("value", [-10, 0, "200", None, float("inf"), True])
def test_budget_epochs(value):
    _raises(
        lambda: keras_qsgld.CompensationSchedule.from_budget(value),
        "epochs",
        value,
    )


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", ["round", "half_even", None])
def test_rounding(optimizer, value):
    _raises(lambda: optimizer(rounding=value), "rounding", value)


def test_quantize_rounding():
    _raises(
        lambda: keras_qsgld.quantize(1.0, rounding="ceil"), "rounding", "ceil"
    )


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", [-0.01, -1.0, float("nan")])
def test_negative_learning_rate(optimizer, value):
    _raises(lambda: optimizer(learning_rate=value), "learning_rate", value)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), True])
def test_momentum(value):
    _raises(lambda: keras_qsgld.QSGLD(momentum=value), "momentum", value)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize(
    "value",
    [
        0.0,
        -256.0,
        0,
        float("inf"),
        float("nan"),
        "fine",
        True,
        1e-40,
        1e-300,
        1e39,
    ],
)
def test_fixed_resolution(optimizer, value):
    _raises(lambda: optimizer(resolution=value), "resolution", value)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("value", [-0.5, 1.01, 2, float("nan"), "on"])
def test_constant_compensation(optimizer, value):
    _raises(lambda: optimizer(compensation=value), "compensation", value)


@pytest.mark.parametrize(
    "arg,value",
    [
        ("beta_1", 1.0),
        ("beta_1", -0.1),
        ("beta_2", 1.0),
        ("beta_2", 2),
        ("epsilon", -1e-7),
    ],
)
def test_adam_hyperparameters(arg, value):
    _raises(lambda: keras_qsgld.QAdam(**{arg: value}), arg, value)


def test_integer_bounds_are_written_in_full():
    with pytest.raises(
        ValueError, match=r"<= 2147483647\. Received: seed=2147483648"
    ):
        keras_qsgld.QSGLD(seed=2**31)


def test_valid_edge_values_are_accepted():
    keras_qsgld.ResolutionSchedule(eta=1e-3, base=1.01, steps_per_epoch=0.5)
    keras_qsgld.CompensationSchedule(
        kappa=0.0, tau0=-1.0, gate="tanh", steps_per_epoch=None
    )
    for optimizer in OPTIMIZERS:
        optimizer(learning_rate=0.0, resolution=1e-3, compensation=0.0)
        optimizer(compensation=1.0, rounding="floor")
    keras_qsgld.QSGLD(momentum=0.0)
    keras_qsgld.QSGLD(momentum=0.999, nesterov=True)


@pytest.mark.parametrize(
    "value", ["0.1", [0.1], np.array([0.1, 0.2]), 1j, np.array(True)]
)
def test_a_refused_number_is_told_what_is_accepted(value):
    with pytest.raises(
        ValueError, match="a real number is a Python, NumPy or ml_dtypes number"
    ):
        keras_qsgld.QSGLD(momentum=value)


def test_messages_are_readable():
    with pytest.raises(ValueError, match=re.escape("Received: eta=-1.0")):
        keras_qsgld.ResolutionSchedule(eta=-1.0)
    with pytest.raises(ValueError, match=re.escape("Received: momentum=nan")):
        keras_qsgld.QSGLD(momentum=float("nan"))


def _bfloat16(value):
    import ml_dtypes

    return ml_dtypes.bfloat16(value)


def _bfloat16_array(value):
    import ml_dtypes

    return np.array(value, ml_dtypes.bfloat16)


def _backend_bfloat16(value):
    """A 0-d bfloat16 tensor of the backend (PyTorch's is one NumPy cannot read)."""
    return keras.ops.convert_to_tensor(value, "bfloat16")


NUMPY_KINDS = [
    np.float32,
    np.float64,
    np.int64,
    np.int32,
    np.array,
    _bfloat16,
    _bfloat16_array,
    _backend_bfloat16,
]


@pytest.mark.parametrize("kind", NUMPY_KINDS)
def test_every_real_number_type_is_accepted(kind):
    """NumPy scalars and 0-d arrays, as `ds.cardinality().numpy()` or `np.float32(0.9)` give."""
    n = lambda value: kind(value)  # noqa: E731
    schedule = keras_qsgld.ResolutionSchedule(
        eta=n(512), base=n(2), steps_per_epoch=n(45)
    )
    assert (schedule.eta, schedule.base, schedule.steps_per_epoch) == (
        512.0,
        2.0,
        45.0,
    )
    assert all(
        type(v) is float
        for v in (schedule.eta, schedule.base, schedule.steps_per_epoch)
    )
    gate = keras_qsgld.CompensationSchedule(
        kappa=n(2), tau0=n(4), steps_per_epoch=n(45)
    )
    assert (gate.kappa, gate.tau0) == (2.0, 4.0)
    assert (
        keras_qsgld.CompensationSchedule.from_budget(
            n(50), warmup_fraction=np.float64(0.2)
        ).tau0
        == 10.0
    )
    opt = keras_qsgld.QSGLD(
        learning_rate=n(1),
        resolution=n(256),
        compensation=n(1),
        momentum=np.float32(0.5),
    )
    assert (
        float(opt.resolution(0)) == 256.0
        and float(opt.compensation(0)) == 1.0
        and opt.momentum == 0.5
    )
    adam = keras_qsgld.QAdam(
        learning_rate=n(1),
        beta_1=np.float32(0.5),
        beta_2=np.float64(0.25),
        epsilon=n(0),
    )
    assert (adam.beta_1, adam.beta_2, adam.epsilon) == (0.5, 0.25, 0.0)
    assert keras_qsgld.Temperature(n(2)).temperature == 2.0
    if kind in (np.int64, np.int32, np.array):
        assert keras_qsgld.QSGLD(rounding="dithered", seed=kind(7)).seed == 7


@pytest.mark.parametrize("value", [-1, 2**31, 2.0, True, "1", np.array([1, 2])])
def test_seed(value):
    _raises(lambda: keras_qsgld.QSGLD(seed=value), "seed", value)


@pytest.mark.parametrize("arg", ["track_noise", "jit_compile", "nesterov"])
@pytest.mark.parametrize("value", ["no", "false", 0, 1, None, np.array([True])])
def test_boolean_arguments_take_bools_only(arg, value):
    _raises(lambda: keras_qsgld.QSGLD(**{arg: value}), arg, value)


def test_numpy_bools_are_bools():
    opt = keras_qsgld.QSGLD(
        track_noise=np.bool_(True), nesterov=np.bool_(False), momentum=0.5
    )
    assert opt.track_noise is True and opt.nesterov is False


@pytest.mark.parametrize(
    "value", [0, -1.0, float("inf"), float("nan"), True, "cold", 1e39, 1e-45]
)
def test_temperature(value):
    _raises(lambda: keras_qsgld.Temperature(value), "temperature", value)


def test_temperature_needs_a_random_rounding_and_qsgld():
    with pytest.warns(UserWarning, match="dead zone|exactly 0"):
        keras_qsgld.QSGLD(
            resolution=keras_qsgld.Temperature(1e-3), rounding="nearest"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_qsgld.QSGLD(
            resolution=keras_qsgld.Temperature(1e-3), rounding="dithered"
        )
    with pytest.raises(ValueError, match="temperature"):
        keras_qsgld.QAdam(
            resolution=keras_qsgld.Temperature(1e-3), rounding="dithered"
        )


def test_import_under_python_OO_strips_docstrings_without_crashing():
    """`python -OO` sets every __doc__ to None; the docstring templating must cope."""
    keras_alone = runner.capture("-OO", "-c", "import keras", timeout=120)
    # Keras 3.10's optimizers edit their own __doc__, which -OO has set to None.
    if keras_alone.returncode != 0:
        pytest.skip(
            f"Keras {keras.__version__} itself fails to import under -OO: "
            f"{keras_alone.stderr.strip().splitlines()[-1]}"
        )
    result = runner.capture(
        "-OO",
        "-c",
        "import keras_qsgld; print(keras_qsgld.QSGLD.__doc__)",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("None")


def test_huge_temperature_gives_a_finite_grid():
    """Qp = 1 / sqrt(24 lr T) is formed without 24 lr T (which overflows float32)."""
    qp = float(keras_qsgld.Temperature(1e38).resolution(1.0))
    assert qp > 0 and qp == pytest.approx(1 / np.sqrt(24e38), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs,caveat",
    [
        (dict(momentum=0.9), "momentum=0.9"),
        (dict(compensation=0.1), "compensation"),
        (dict(clipnorm=1.0), "clipping"),
        (
            dict(use_ema=True, ema_overwrite_frequency=5),
            "ema_overwrite_frequency",
        ),
        (dict(rounding="stochastic"), "f (1 - f)"),
        (dict(rounding="floor"), "exactly 0"),
    ],
)
def test_a_temperature_that_cannot_hold_warns_at_construction(kwargs, caveat):
    kwargs = {"rounding": "dithered", **kwargs}
    with pytest.warns(
        UserWarning, match="does not sample at that temperature"
    ) as caught:
        opt = keras_qsgld.QSGLD(
            0.01, resolution=keras_qsgld.Temperature(1e-3), **kwargs
        )
    assert caveat in str(caught[0].message)
    assert any(caveat in c for c in opt.sampling_caveats())


def test_sampling_caveats_are_empty_for_a_sampler():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = keras_qsgld.QSGLD(
            0.01,
            resolution=keras_qsgld.Temperature(1e-3),
            rounding="dithered",
            weight_decay=0.1,
        )
    assert opt.sampling_caveats() == []
    assert (
        "not a Temperature"
        in keras_qsgld.QSGLD(0.01, resolution=64.0).sampling_caveats()[0]
    )
