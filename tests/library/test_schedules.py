"""`ResolutionSchedule` and `CompensationSchedule` against the NumPy reference."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_qsgld
from tests import reference as ref
from tests.backends import BACKEND, float64_available, jit

# Run again on JAX with x64 mode: float32 results must not change with it.
pytestmark = pytest.mark.x64

RESOLUTION_CASES = [
    dict(steps_per_epoch=1),  # the default eta=2**19, base=2, counted in steps
    dict(eta=256.0, base=2.0, steps_per_epoch=3),
    dict(eta=1000.0, base=3.0, steps_per_epoch=7),
    dict(eta=5.0, base=1.5, steps_per_epoch=100),
    dict(eta=2.0**19, base=2.0, steps_per_epoch=390),
]


def _steps_around_breakpoints(base, steps_per_epoch, max_epoch):
    """Integer steps on both sides of every breakpoint `t = e**(base**p) - 2`."""
    steps = set(range(0, 50))
    for t in ref.resolution_breakpoints(max_epoch, base):
        s = t * steps_per_epoch
        steps.update(
            {math.floor(s) - 1, math.floor(s), math.ceil(s), math.ceil(s) + 1}
        )
    steps.update(
        np.unique(
            np.geomspace(1, max_epoch * steps_per_epoch, 60).astype(int)
        ).tolist()
    )
    return sorted(s for s in steps if s >= 0)


@pytest.mark.parametrize("kwargs", RESOLUTION_CASES)
def test_resolution_matches_reference_including_breakpoints(kwargs):
    schedule = keras_qsgld.ResolutionSchedule(**kwargs)
    base, spe = kwargs.get("base", 2.0), kwargs.get("steps_per_epoch", 1)
    max_epoch = 200.0 if base > 1.6 else 60.0
    steps = _steps_around_breakpoints(base, spe, max_epoch)
    got = np.array([float(schedule(s)) for s in steps])
    want = ref.resolution(steps, **kwargs)
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=0)
    # The sampled steps do cross breakpoints: Qp takes several values.
    assert len(np.unique(want)) >= 3


def test_resolution_changes_exactly_at_breakpoints():
    # Defaults counted in epochs (1000 steps each): 2**18 before t = e - 2 = 0.71828...,
    # 2**19 from there to e**2 - 2 = 5.389..., then 2**20 until e**4 - 2 = 52.598...
    schedule = keras_qsgld.ResolutionSchedule(steps_per_epoch=1000)
    values = {
        s: float(schedule(s)) for s in (0, 718, 719, 5389, 5390, 52598, 52599)
    }
    assert values == {
        0: 2.0**18,
        718: 2.0**18,
        719: 2.0**19,
        5389: 2.0**19,
        5390: 2.0**20,
        52598: 2.0**20,
        52599: 2.0**21,
    }


def test_resolution_is_float32_scalar_and_bounded_by_log_cooling():
    schedule = keras_qsgld.ResolutionSchedule(
        eta=64.0, base=2.0, steps_per_epoch=5
    )
    value = schedule(ops.convert_to_tensor(17, "int64"))
    assert (
        keras.backend.standardize_dtype(value.dtype) == "float32"
        and tuple(value.shape) == ()
    )
    steps = np.arange(0, 5000, 37)
    qp = np.array([float(schedule(s)) for s in steps])
    # b**floor(log_b y) <= y, so Qp <= eta * ln(t + 2), and Qp never decreases.
    assert np.all(qp <= 64.0 * np.log(steps / 5 + 2))
    assert np.all(np.diff(qp) >= 0)


def test_resolution_breakpoints_method():
    schedule = keras_qsgld.ResolutionSchedule(base=2.0)
    np.testing.assert_allclose(
        schedule.breakpoints(3000.0), ref.resolution_breakpoints(3000.0, 2.0)
    )
    np.testing.assert_allclose(
        keras_qsgld.ResolutionSchedule(base=3.0).breakpoints(1e4),
        ref.resolution_breakpoints(1e4, 3.0),
    )


GATE_CASES = [
    dict(steps_per_epoch=1, gate="logistic"),
    dict(steps_per_epoch=1, gate="tanh"),
    dict(kappa=0.5, tau0=3.0, steps_per_epoch=4, gate="logistic"),
    dict(kappa=3.0, tau0=1.5, steps_per_epoch=3, gate="tanh"),
    dict(kappa=0.0, tau0=2.0, steps_per_epoch=1, gate="logistic"),
]


@pytest.mark.parametrize("kwargs", GATE_CASES)
def test_gate_matches_reference(kwargs):
    schedule = keras_qsgld.CompensationSchedule(**kwargs)
    steps = np.concatenate([np.arange(0, 120), [1000, 10**6, 10**9]])
    got = np.array([float(schedule(s)) for s in steps])
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "gate"}
    want = ref.gate(steps, kind=kwargs["gate"], **ref_kwargs)
    # float64 maths, then float32; JAX without x64 computes in float32 (documented bound).
    np.testing.assert_allclose(
        got, want, rtol=2e-6, atol=1e-7 if float64_available() else 3e-7
    )
    assert np.all((got >= 0) & (got <= 1)) and np.all(np.isfinite(got))
    assert np.all(np.diff(got) <= 0)  # the gate only switches off


def test_gate_forms():
    logistic = keras_qsgld.CompensationSchedule(
        kappa=2.0, tau0=5.0, steps_per_epoch=1, gate="logistic"
    )
    tanh = keras_qsgld.CompensationSchedule(
        kappa=2.0, tau0=5.0, steps_per_epoch=1, gate="tanh"
    )
    twice = keras_qsgld.CompensationSchedule(
        kappa=4.0, tau0=5.0, steps_per_epoch=1, gate="logistic"
    )
    assert float(logistic(5)) == pytest.approx(0.5) and float(
        tanh(5)
    ) == pytest.approx(0.5)
    for step in range(0, 12):
        # (tanh(x) + 1) / 2 = sigmoid(2 x): the authors' gate switches twice as fast.
        assert float(tanh(step)) == pytest.approx(float(twice(step)), abs=1e-6)
    assert float(logistic(0)) == pytest.approx(
        1 / (1 + math.exp(-10)), rel=1e-6
    )


def test_gate_defaults_and_from_budget():
    schedule = keras_qsgld.CompensationSchedule()
    assert (
        schedule.kappa,
        schedule.tau0,
        schedule.steps_per_epoch,
        schedule.gate,
    ) == (2.0, 10.0, None, "logistic")
    assert "tau0" in type(schedule).__doc__ and "0.2" in type(schedule).__doc__
    budget = keras_qsgld.CompensationSchedule.from_budget(
        200, steps_per_epoch=390, gate="tanh"
    )
    assert (
        budget.tau0 == pytest.approx(40.0)
        and budget.steps_per_epoch == 390
        and budget.gate == "tanh"
    )
    assert keras_qsgld.CompensationSchedule.from_budget(
        50, warmup_fraction=0.5
    ).tau0 == pytest.approx(25.0)


def test_schedules_trace_once_when_compiled_with_a_tensor_step():
    resolution = keras_qsgld.ResolutionSchedule(eta=128.0, steps_per_epoch=2)
    gate = keras_qsgld.CompensationSchedule(
        tau0=3.0, steps_per_epoch=2, gate="tanh"
    )
    fn = jit(lambda step: (resolution(step), gate(step)))
    for k in range(20):
        qp, s = fn(ops.convert_to_tensor(k, "int32"))
        assert float(qp) == ref.resolution(k, 128.0, 2.0, 2)
        assert float(s) == pytest.approx(
            float(ref.gate(k, 2.0, 3.0, 2, "tanh")), abs=1e-6
        )
        if k == 2:
            traces = fn.traces()
    # torch.compile specializes the first call's constant step and compiles a dynamic graph
    # on the second; after that no step compiles again. XLA traces once.
    assert fn.traces() == traces and (BACKEND == "torch" or traces == 1)


@pytest.mark.parametrize(
    "schedule",
    [
        keras_qsgld.ResolutionSchedule(
            eta=300.0, base=3.0, steps_per_epoch=11, name="res"
        ),
        keras_qsgld.CompensationSchedule(
            kappa=1.5, tau0=7.0, steps_per_epoch=5, gate="tanh", name="comp"
        ),
    ],
    ids=["resolution", "compensation"],
)
def test_schedule_config_round_trip(schedule):
    config = schedule.get_config()
    clone = type(schedule).from_config(dict(config))
    assert clone.get_config() == config
    serialized = keras.saving.serialize_keras_object(schedule)
    assert (
        serialized["registered_name"]
        == f"keras_qsgld>{type(schedule).__name__}"
    )
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is type(schedule) and revived.get_config() == config
    revived = keras.optimizers.schedules.deserialize(
        keras.optimizers.schedules.serialize(schedule)
    )
    assert revived.get_config() == config
    for step in (0, 3, 40, 400):
        assert float(revived(step)) == float(schedule(step))


@pytest.mark.parametrize(
    "cls", [keras_qsgld.ResolutionSchedule, keras_qsgld.CompensationSchedule]
)
def test_unset_steps_per_epoch_raises_naming_the_fix(cls):
    schedule = cls()
    with pytest.raises(
        ValueError,
        match=r"steps_per_epoch.*QSGLDMonitor.*Received: steps_per_epoch=None",
    ):
        schedule(3)
    schedule.steps_per_epoch = np.int64(
        45
    )  # the cardinality of a tf.data pipeline, as NumPy
    assert schedule.steps_per_epoch == 45.0 and isinstance(
        schedule.steps_per_epoch, float
    )
    schedule(3)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        schedule.steps_per_epoch = 0


@pytest.mark.parametrize("steps_per_epoch", [1, 7, 390, 0.5])
def test_resolution_exact_for_large_step_counts(steps_per_epoch):
    """Steps as large as the iteration counter holds (int32 on JAX, int64 elsewhere): the
    exponent counts the breakpoints passed, exactly as the float64 formula gives it."""
    schedule = keras_qsgld.ResolutionSchedule(
        eta=3.0, base=1.7, steps_per_epoch=steps_per_epoch
    )
    dtype = keras.backend.standardize_dtype(
        keras.optimizers.SGD().iterations.dtype
    )
    top = np.iinfo(dtype).max
    steps = [0, 1, 10**6, 2**31 - 1, top // 2, top]
    for step in steps:
        got = float(schedule(ops.convert_to_tensor(step, dtype)))
        assert got == np.float32(
            ref.resolution(
                step, eta=3.0, base=1.7, steps_per_epoch=steps_per_epoch
            )
        )


def test_resolution_out_of_float32_range_is_rejected():
    with pytest.raises(ValueError, match=r"Argument `eta`.*float32"):
        keras_qsgld.ResolutionSchedule(eta=1e-40)
    with pytest.raises(ValueError, match=r"Argument `eta`.*float32"):
        keras_qsgld.ResolutionSchedule(eta=1e38)
    keras_qsgld.ResolutionSchedule(eta=2.0**40)  # far from the edges: fine


def test_constant_and_temperature_round_trip():
    constant = keras_qsgld.Constant(0.25)
    assert float(constant(10**9)) == 0.25
    revived = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(constant)
    )
    assert isinstance(revived, keras_qsgld.Constant) and revived.value == 0.25
    temperature = keras_qsgld.Temperature(np.float32(1e-3))
    assert temperature.temperature == pytest.approx(1e-3)
    serialized = keras.saving.serialize_keras_object(temperature)
    assert serialized["registered_name"] == "keras_qsgld>Temperature"
    revived = keras.saving.deserialize_keras_object(serialized)
    assert revived.temperature == temperature.temperature
    # Qp = 1 / sqrt(24 lr T): the dither's variance Qp**-2 / 12 is 2 lr T.
    qp = float(temperature.resolution(0.01))
    assert qp**-2 / 12 == pytest.approx(
        2 * 0.01 * temperature.temperature, rel=1e-6
    )
    assert float(temperature.resolution(0.0)) == np.inf


@pytest.mark.backends("torch")
def test_the_update_is_one_torch_compile_graph():
    """torch.compile traces QSGLD's whole update without a graph break (it broke on the
    schedules' NumPy tables: 8 graphs where Keras' SGD has 3, and minutes of compiling)."""
    import torch

    opt = keras_qsgld.QSGLD(
        0.1,
        resolution=keras_qsgld.ResolutionSchedule(eta=256.0, steps_per_epoch=3),
        compensation=keras_qsgld.CompensationSchedule(
            tau0=1.5, steps_per_epoch=3
        ),
    )
    variables = [
        keras.Variable(np.ones((30, 20), "float32")),
        keras.Variable(np.ones((20,), "float32")),
    ]
    opt.build(variables)
    grads = [torch.ones((30, 20)), torch.ones((20,))]
    explanation = torch._dynamo.explain(lambda g: opt.apply(g, variables))(
        grads
    )
    assert explanation.graph_break_count == 0, [
        b.reason for b in explanation.break_reasons
    ]


@pytest.mark.parametrize("temperature", [1 / 64, 1 / 1437, 0.37, 2e-38, 3e38])
def test_temperature_resolution_is_the_same_eager_and_compiled(temperature):
    """`Qp = 1 / sqrt(24 lr T)` within 2 float32 ulps of float64, and the same bits eager and
    compiled (XLA would turn `c / sqrt(lr)` into the inexact `c * rsqrt(lr)`). On PyTorch,
    `torch.compile`'s square root itself differs from eager's by an ulp at some inputs."""
    schedule = keras_qsgld.Temperature(temperature)
    lrs = np.geomspace(1e-8, 10, 120).astype(np.float32)
    fn = jit(lambda lr: schedule.resolution(lr))
    eager = np.array(
        [
            float(
                ops.convert_to_numpy(
                    schedule.resolution(ops.convert_to_tensor(lr))
                )
            )
            for lr in lrs
        ]
    )
    compiled = np.array(
        [
            float(ops.convert_to_numpy(fn(ops.convert_to_tensor(lr))))
            for lr in lrs
        ]
    )
    exact = 1.0 / np.sqrt(
        24.0 * np.float64(temperature) * lrs.astype(np.float64)
    )
    finite = exact < np.finfo(np.float32).max
    np.testing.assert_allclose(
        eager[finite], exact[finite], rtol=2.0**-23, atol=0
    )
    if BACKEND == "torch":
        np.testing.assert_allclose(compiled, eager, rtol=2.0**-23, atol=0)
    else:
        np.testing.assert_array_equal(compiled, eager)


def test_temperature_of_is_the_inverse_of_the_temperature_grid():
    """`langevin.temperature_of(Qp, lr)` undoes `Temperature(T).resolution(lr)`, and is 0
    at a learning rate of 0 (no noise is added then)."""
    from keras_qsgld.langevin import temperature_of

    for t, lr in ((1 / 1437, 0.05), (0.3, 1e-3), (2.0, 0.7)):
        qp = float(keras_qsgld.Temperature(t).resolution(lr))
        assert temperature_of(qp, lr) == pytest.approx(t, rel=1e-6)
    assert temperature_of(256.0, 0.0) == 0.0
