"""QSGLD against the independent NumPy reference: multi-step trajectories and the update rule."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_qsgld
from tests import reference as ref

LR = 0.1
STEPS = 12
SPE = 2  # two steps per epoch: Qp changes at steps 2 and 11, the gate switches off near step 4
ETA = 2.0**10
KAPPA, TAU0 = 2.0, 2.0
SHAPES = [(7, 5), (5,)]
SCALES = [
    1.0,
    0.01,
]  # y ~ 100 cells for the kernel, ~ 1 cell for the bias (the dead zone)


def make_problem(seed=0, steps=STEPS):
    """Weights on the grid 2**-12 (float32 sums stay exact) and fixed gradients."""
    rng = np.random.default_rng(seed)
    w0 = [rng.integers(-4096, 4096, shape) / 4096.0 for shape in SHAPES]
    grads = [
        rng.normal(0, scale, (steps,) + shape)
        for shape, scale in zip(SHAPES, SCALES)
    ]
    return [w.astype(np.float32) for w in w0], [
        g.astype(np.float32) for g in grads
    ]


def run(optimizer, w0, grads, dtype="float32"):
    """Applies the gradients step by step; returns the weights after each step (float64)."""
    variables = [keras.Variable(w, dtype=dtype) for w in w0]
    history = []
    for k in range(len(grads[0])):
        optimizer.apply(
            [ops.convert_to_tensor(g[k], dtype=dtype) for g in grads], variables
        )
        history.append(
            [np.asarray(v.numpy(), dtype=np.float64) for v in variables]
        )
    return history, variables


def assert_trajectory_matches(history, w0, expected, rounding, **kwargs):
    previous = [np.asarray(w, dtype=np.float64) for w in w0]
    for k, weights in enumerate(history):
        for i, w in enumerate(weights):
            ref.assert_increment_matches(
                w - previous[i],
                expected["y"][k][i],
                expected["qp"][k],
                rounding,
                **kwargs,
            )
        previous = weights


def schedules(gate):
    resolution = keras_qsgld.ResolutionSchedule(eta=ETA, steps_per_epoch=SPE)
    compensation = None
    if gate is not None:
        compensation = keras_qsgld.CompensationSchedule(
            kappa=KAPPA, tau0=TAU0, steps_per_epoch=SPE, gate=gate
        )
    ref_resolution = lambda k: ref.resolution(k, eta=ETA, steps_per_epoch=SPE)  # noqa: E731
    ref_gate = None
    if gate is not None:
        ref_gate = lambda k: ref.gate(k, KAPPA, TAU0, SPE, kind=gate)  # noqa: E731
    return resolution, compensation, ref_resolution, ref_gate


CASES = [
    (gate, rounding, momentum, nesterov)
    for gate in (None, "logistic", "tanh")
    for rounding in ("nearest", "floor")
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True))
]


@pytest.mark.parametrize("gate,rounding,momentum,nesterov", CASES)
def test_trajectory_matches_reference(gate, rounding, momentum, nesterov):
    w0, grads = make_problem()
    resolution, compensation, ref_resolution, ref_gate = schedules(gate)
    opt = keras_qsgld.QSGLD(
        LR,
        resolution=resolution,
        compensation=compensation,
        rounding=rounding,
        momentum=momentum,
        nesterov=nesterov,
        jit_compile=False,
    )
    history, _ = run(opt, w0, grads)
    expected = ref.qsgld_trajectory(
        w0, grads, LR, ref_resolution, ref_gate, rounding, momentum, nesterov
    )
    assert (
        len(set(expected["qp"])) == 3
    )  # the run crosses two resolution changes
    assert_trajectory_matches(history, w0, expected, rounding)
    if momentum:
        for slot, want in zip(opt.momentums, expected["momentums"]):
            np.testing.assert_allclose(slot.numpy(), want, rtol=1e-5, atol=1e-7)
    assert int(opt.iterations) == STEPS


def test_compensation_changes_the_trajectory():
    """The compensation term is not a no-op: with it, the early increments differ."""
    w0, grads = make_problem()
    runs = {}
    for gate in (None, "logistic"):
        resolution, compensation, _, _ = schedules(gate)
        opt = keras_qsgld.QSGLD(
            LR,
            resolution=resolution,
            compensation=compensation,
            jit_compile=False,
        )
        runs[gate] = run(opt, w0, grads)[0]
    assert not np.array_equal(runs[None][0][0], runs["logistic"][0][0])


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
def test_no_compensation_is_exactly_quantized_sgd(rounding):
    """compensation=None: w + Q(Qp * (-lr * g)) / Qp, bit for bit, in float32."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (20, 10)).astype(np.float32)
    g = rng.normal(0, 0.1, (20, 10)).astype(np.float32)
    qp = np.float32(4096.0)
    lr = np.float32(0.05)
    opt = keras_qsgld.QSGLD(
        0.05, resolution=4096.0, compensation=None, rounding=rounding
    )
    variable = keras.Variable(w)
    opt.apply([ops.convert_to_tensor(g)], [variable])
    y = qp * -(g * lr)
    q = np.floor(y + np.float32(0.5)) if rounding == "nearest" else np.floor(y)
    np.testing.assert_array_equal(variable.numpy(), w + q / qp)
    # A constant gate of 0 is the same; a gate of 1 is not.
    for gate, same in ((0.0, True), (1.0, False)):
        other = keras.Variable(w)
        keras_qsgld.QSGLD(
            0.05, resolution=4096.0, compensation=gate, rounding=rounding
        ).apply([ops.convert_to_tensor(g)], [other])
        assert np.array_equal(other.numpy(), variable.numpy()) == same


def test_constant_gate_matches_reference():
    w0, grads = make_problem(steps=4)
    opt = keras_qsgld.QSGLD(
        LR, resolution=512.0, compensation=0.7, jit_compile=False
    )
    history, _ = run(opt, w0, grads)
    expected = ref.qsgld_trajectory(w0, grads, LR, 512.0, 0.7)
    assert_trajectory_matches(history, w0, expected, "nearest")


def test_first_update_uses_step_zero():
    """k = iterations before the increment: the schedules see 0, 1, 2, ... ."""
    seen = []

    def resolution(step):
        # A callable resolution: a coarse grid (4 cells per unit) only at step 0.
        return ops.where(ops.equal(step, 0), 4.0, 2.0**12)

    rng = np.random.default_rng(0)
    g = rng.normal(0, 1, (2, 50)).astype(np.float32)
    variable = keras.Variable(np.zeros(50, np.float32))
    opt = keras_qsgld.QSGLD(0.1, resolution=resolution, jit_compile=False)
    for k in range(2):
        before = variable.numpy().astype(np.float64)
        opt.apply([ops.convert_to_tensor(g[k])], [variable])
        seen.append(variable.numpy() - before)
    np.testing.assert_array_equal(
        seen[0], ref.increment(-0.1 * g[0].astype(np.float64), 4.0)
    )
    ref.assert_increment_matches(
        seen[1],
        ref.scaled_step(-0.1 * g[1].astype(np.float64), 2.0**12),
        2.0**12,
    )
    assert np.any(
        seen[1] * 4 != np.round(seen[1] * 4)
    )  # off the coarse grid after step 0


def test_learning_rate_schedule():
    w0, grads = make_problem(steps=6)
    decay = keras.optimizers.schedules.ExponentialDecay(
        0.2, decay_steps=1, decay_rate=0.7
    )
    resolution, compensation, ref_resolution, ref_gate = schedules("logistic")
    opt = keras_qsgld.QSGLD(
        decay,
        resolution=resolution,
        compensation=compensation,
        jit_compile=False,
    )
    history, _ = run(opt, w0, grads)
    expected = ref.qsgld_trajectory(
        w0, grads, lambda k: 0.2 * 0.7**k, ref_resolution, ref_gate
    )
    assert_trajectory_matches(history, w0, expected, "nearest")


@pytest.mark.parametrize("gate", [None, "logistic"])
@pytest.mark.parametrize("rounding", ["nearest", "floor"])
def test_zero_gradients_give_no_nan(gate, rounding):
    resolution, compensation, _, _ = schedules(gate)
    opt = keras_qsgld.QSGLD(
        LR,
        resolution=resolution,
        compensation=compensation,
        rounding=rounding,
        momentum=0.5,
    )
    w0 = [np.ones((3, 2), np.float32), np.full((4,), 2.0, np.float32)]
    grads = [
        np.zeros((3, 3, 2), np.float32),
        np.random.default_rng(0).normal(0, 1, (3, 4)).astype(np.float32),
    ]
    history, _ = run(opt, w0, grads)
    for weights in history:
        assert all(np.all(np.isfinite(w)) for w in weights)
        np.testing.assert_array_equal(
            weights[0], w0[0]
        )  # zero gradient, zero increment
    assert not np.array_equal(history[-1][1], w0[1])


def test_increments_lie_on_the_grid_of_the_schedule():
    w0, grads = make_problem(steps=STEPS)
    resolution, compensation, ref_resolution, _ = schedules("tanh")
    opt = keras_qsgld.QSGLD(
        LR, resolution=resolution, compensation=compensation, momentum=0.9
    )
    history, _ = run(opt, w0, grads)
    previous = w0
    for k, weights in enumerate(history):
        qp = ref_resolution(k)
        for w, p in zip(weights, previous):
            cells = (w - p) * qp
            np.testing.assert_array_equal(cells, np.round(cells))
        previous = weights


def test_resolution_and_gate_accessors():
    resolution, compensation, ref_resolution, ref_gate = schedules("tanh")
    opt = keras_qsgld.QSGLD(resolution=resolution, compensation=compensation)
    for k in range(0, 40, 3):
        assert float(opt.resolution_at(k)) == ref_resolution(k)
        assert float(opt.gate_at(k)) == pytest.approx(
            float(ref_gate(k)), abs=1e-6
        )
    assert keras_qsgld.QSGLD().gate_at(5) is None
    assert (
        float(keras_qsgld.QSGLD(resolution=300.0).resolution_at(123)) == 300.0
    )
    assert float(keras_qsgld.QSGLD(compensation=0.25).gate_at(7)) == 0.25
    default = keras_qsgld.QSGLD()
    assert isinstance(default.resolution, keras_qsgld.ResolutionSchedule)
    assert (
        default.resolution.steps_per_epoch is None
    )  # set by hand or by QSGLDMonitor in fit
    default.resolution.steps_per_epoch = 100
    assert (
        float(default.resolution_at(0)) == 2.0**18
    )  # the default: eta = 2**19, Qp(0) = eta / 2
    # A float becomes a serializable Constant schedule: `resolution` has one type.
    assert isinstance(
        keras_qsgld.QSGLD(resolution=300.0).resolution, keras_qsgld.Constant
    )


def test_schedule_step_is_where_the_next_update_evaluates():
    """QSGLD evaluates its schedules at `iterations`, QAdam at `iterations + 1`: the
    increments recovered from the weights lie on the grid of `resolution_at(schedule_step)`
    read just before each update, and on no coarser one."""
    for cls in (keras_qsgld.QSGLD, keras_qsgld.QAdam):
        # Qp = 1 until step 1 (t = 1 > e - 2), 2 from there: visible on the first update.
        opt = cls(
            0.3,
            resolution=keras_qsgld.ResolutionSchedule(
                eta=2.0, steps_per_epoch=1
            ),
        )
        variable = keras.Variable(np.zeros(40, np.float32))
        g = np.random.default_rng(0).normal(0, 1, (3, 40)).astype(np.float32)
        for k in range(3):
            qp = float(opt.resolution_at(opt.schedule_step))
            before = variable.numpy().copy()
            opt.apply([ops.convert_to_tensor(g[k])], [variable])
            cells = (variable.numpy() - before) * qp
            np.testing.assert_array_equal(cells, np.round(cells))
            assert np.any(
                (variable.numpy() - before) * qp / 2 != np.round(cells / 2)
            )
        assert int(opt.schedule_step) == (3 if cls is keras_qsgld.QSGLD else 4)


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
def test_noise_statistics_match_reference(rounding):
    w0, grads = make_problem(steps=5)
    resolution, compensation, ref_resolution, ref_gate = schedules("logistic")
    opt = keras_qsgld.QSGLD(
        LR,
        resolution=resolution,
        compensation=compensation,
        rounding=rounding,
        track_noise=True,
        jit_compile=False,
    )
    run(opt, w0, grads)
    expected = ref.qsgld_trajectory(
        w0, grads, LR, ref_resolution, ref_gate, rounding
    )
    y = np.concatenate([np.ravel(y) for ys in expected["y"] for y in ys])
    q = ref.quantize(y, rounding)
    stats = opt.noise_statistics(reset=True)
    assert stats["zero_fraction"] == pytest.approx(np.mean(q == 0), abs=1e-6)
    assert stats["error_mean"] == pytest.approx(np.mean(q - y), abs=1e-4)
    assert stats["error_variance"] == pytest.approx(
        np.var(q - y), rel=1e-3, abs=1e-4
    )
    assert stats["variance_ratio"] == pytest.approx(
        12 * stats["error_variance"]
    )
    assert np.isnan(
        opt.noise_statistics()["error_mean"]
    )  # reset: nothing since
    with pytest.raises(ValueError, match="track_noise"):
        keras_qsgld.QSGLD().noise_statistics()


@pytest.mark.parametrize("rounding", ["nearest", "dithered"])
def test_noise_statistics_count_only_rounded_steps(rounding):
    """A step at learning rate 0 is applied unrounded: it adds nothing to the statistics
    (it used to count every element as an exact zero with error 0)."""
    rng = np.random.default_rng(3)
    w0 = rng.normal(size=(50, 20)).astype(np.float32)
    grads = rng.normal(size=(8, 50, 20)).astype(np.float32)

    def statistics(learning_rates):
        variable = keras.Variable(w0)
        lr = keras.Variable(learning_rates[0], trainable=False)
        opt = keras_qsgld.QSGLD(
            lambda: lr,
            resolution=64.0,
            rounding=rounding,
            seed=1,
            track_noise=True,
            jit_compile=False,
        )
        for g, value in zip(grads, learning_rates):
            lr.assign(value)
            opt.apply([ops.convert_to_tensor(g)], [variable])
        return opt.noise_statistics()

    rounded = statistics([0.1] * 7)
    with_a_zero = statistics([0.1] * 7 + [0.0])
    for key in rounded:
        assert with_a_zero[key] == pytest.approx(rounded[key], rel=1e-6)
    assert all(np.isnan(v) for v in statistics([0.0] * 3).values())


def test_docstring_documents_rule_limit_and_references():
    doc = keras_qsgld.QSGLD.__doc__
    assert "```python" in doc and "delta = Q(Qp * (h + r)) / Qp" in doc
    assert "2**24" in doc and "References:" in doc and "2305.18864" in doc
    assert "{{base_optimizer_keyword_args}}" not in doc and "clipnorm" in doc
