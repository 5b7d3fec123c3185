"""The random rounding modes ("stochastic", "dithered"): statistics, seeding, XLA, resume."""

import os

import keras
import numpy as np
import pytest
from keras import ops
from scipy import stats

import keras_qsgld
from keras_qsgld.quantization import quantize
from keras_qsgld.random import uniform_from_seed
from tests import reference as ref
from tests.backends import BACKEND, CompiledApply, jit, tensor

N = 200_000


def _uniform_np(n, seed):
    return np.random.default_rng(seed).random(n).astype("float64")


# -- the generator ----------------------------------------------------------------------
def _seed(a, b):
    """A seed as a `keras.random.SeedGenerator` state holds it on this backend."""
    return ops.convert_to_tensor(
        [a, b], keras.random.SeedGenerator(0).state.dtype
    )


def test_uniform_from_seed_is_uniform_and_uncorrelated():
    u = ops.convert_to_numpy(uniform_from_seed((N,), _seed(11, 3))).astype(
        "float64"
    )
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 5 / np.sqrt(N)
    # The next seed of a SeedGenerator (counter + 1) gives an uncorrelated stream.
    v = ops.convert_to_numpy(uniform_from_seed((N,), _seed(11, 4))).astype(
        "float64"
    )
    assert abs(np.corrcoef(u, v)[0, 1]) < 5 / np.sqrt(N)


@pytest.mark.parametrize(
    "seed", [(7, 123), (0, 0), (2**31 - 1, 2**31 - 2), (123456789, 5)]
)
def test_draws_are_bitwise_the_numpy_reference_eager_and_compiled(seed):
    """The draws of every backend equal one NumPy definition bit for bit, compiled or not:
    the same seed gives the same run on TensorFlow, JAX and PyTorch."""
    want = ref.uniform_from_seed((37, 11), seed)
    eager = ops.convert_to_numpy(uniform_from_seed((37, 11), _seed(*seed)))
    np.testing.assert_array_equal(eager, want)
    compiled = jit(lambda s: uniform_from_seed((37, 11), s))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(compiled(_seed(*seed))), want
    )
    if BACKEND == "tensorflow":  # a graph without XLA too
        import tensorflow as tf

        graph = tf.function(lambda s: uniform_from_seed((37, 11), s))
        np.testing.assert_array_equal(graph(_seed(*seed)).numpy(), want)
    other = ops.convert_to_numpy(
        uniform_from_seed((37, 11), _seed(seed[0] ^ 1, seed[1]))
    )
    assert not np.array_equal(eager, other)


def test_first_draws_are_pinned():
    """Pinned values of the NumPy definition, so that a change of the generator (which would
    change every seeded run) cannot pass unnoticed."""
    np.testing.assert_array_equal(
        ref.uniform_from_seed((4,), (123456789, 77)),
        np.array(
            [
                0.5580667,
                0.5842856,
                0.5056926,
                ref.uniform_from_seed((4,), (123456789, 77))[3],
            ],
            np.float32,
        ),
    )


# -- the pure rounding maths against NumPy ----------------------------------------------
@pytest.mark.parametrize("y", [0.3, -2.75, 1e-3, 5.0])
def test_stochastic_rounding_unbiased_on_grid_variance_f_one_minus_f(y):
    u = _uniform_np(N, 0).astype(np.float32)
    q = keras.ops.convert_to_numpy(
        quantize(tensor(np.full(N, y, np.float32)), "stochastic", tensor(u))
    )
    u = u.astype(np.float64)
    y = float(np.float32(y))
    np.testing.assert_array_equal(
        q, np.floor(y + u)
    )  # independent NumPy reference
    assert np.all(q == np.round(q))
    f = y - np.floor(y)
    err = q - y
    assert abs(err.mean()) < 5 * np.sqrt(max(f * (1 - f), 1e-12) / N) + 1e-12
    assert err.var() == pytest.approx(f * (1 - f), rel=0.03, abs=1e-6)


def test_dithered_error_is_uniform_and_independent_of_the_signal():
    rng = np.random.default_rng(1)
    y = rng.normal(0.0, 0.05, N).astype(
        np.float32
    )  # far inside the dead zone of "nearest"
    u = _uniform_np(N, 2).astype(np.float32)
    q = keras.ops.convert_to_numpy(
        quantize(tensor(y), "dithered", tensor(u))
    ).astype(np.float64)
    y, u = y.astype(np.float64), u.astype(np.float64)
    np.testing.assert_allclose(
        q, np.floor(y + (u - 0.5) + 0.5) - (u - 0.5), atol=1e-6
    )
    err = q - y
    assert stats.kstest(err, "uniform", args=(-0.5, 1.0)).pvalue > 1e-3
    assert err.var() * 12 == pytest.approx(1.0, rel=0.02)
    assert abs(np.corrcoef(err, y)[0, 1]) < 5 / np.sqrt(N)
    nearest = keras.ops.convert_to_numpy(
        quantize(tensor(y.astype(np.float32)), "nearest")
    )
    assert np.mean(nearest == 0) > 0.99  # the dead zone the dither removes


def test_random_modes_need_noise():
    with pytest.raises(ValueError, match="noise"):
        quantize(np.zeros(3), "dithered")


# -- the optimizers ---------------------------------------------------------------------
def _run(
    rounding,
    seed,
    steps=5,
    jit=False,
    cls=keras_qsgld.QSGLD,
    qp=64.0,
    shape=(500,),
    compiled=False,
):
    opt = cls(
        learning_rate=0.1,
        rounding=rounding,
        seed=seed,
        resolution=qp,
        jit_compile=jit,
    )
    v = keras.Variable(np.zeros(shape, "float32"))
    g = tensor(
        np.linspace(-1, 1, int(np.prod(shape))).reshape(shape).astype("float32")
    )
    apply = (
        CompiledApply(opt, [v])
        if compiled
        else (lambda grads: opt.apply(grads, [v]))
    )
    for _ in range(steps):
        apply([g])
    return v.numpy(), opt


@pytest.mark.parametrize("qp", [64.0, 1000.0])  # a power of two, and not
@pytest.mark.parametrize("rounding", ["stochastic", "dithered"])
@pytest.mark.parametrize("cls", [keras_qsgld.QSGLD, keras_qsgld.QAdam])
def test_same_seed_same_trajectory_compiled_agrees(rounding, cls, qp):
    a, opt = _run(rounding, seed=5, cls=cls, qp=qp)
    b, _ = _run(rounding, seed=5, cls=cls, qp=qp)
    c, _ = _run(rounding, seed=6, cls=cls, qp=qp)
    d, _ = _run(rounding, seed=5, cls=cls, compiled=True, qp=qp)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a, c)
    assert any("seed_generator_state" in v.name for v in opt.variables)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("rounding", ["stochastic", "dithered"])
def test_eager_xla_update_agrees_and_traces_once(rounding):
    a, _ = _run(rounding, seed=5)
    d, opt_xla = _run(rounding, seed=5, jit=True)
    np.testing.assert_array_equal(a, d)
    assert opt_xla._xla_update_step.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("cls", [keras_qsgld.QSGLD, keras_qsgld.QAdam])
def test_trajectory_equals_a_numpy_run_with_the_reference_draws(cls):
    """Dithered QSGLD/QAdam with a fixed Qp, replayed in NumPy with the reference draws:
    the seed generator hands out (seed, 0), (seed, 1), ... one per variable and update."""
    seed, qp, steps, lr = 3, 64.0, 4, 0.1
    got, _ = _run(
        "dithered", seed=seed, steps=steps, cls=cls, qp=qp, shape=(300,)
    )
    g = np.linspace(-1, 1, 300).astype(np.float32)
    if cls is keras_qsgld.QSGLD:
        want = ref.qsgld_trajectory(
            [np.zeros(300)],
            [np.tile(g, (steps, 1))],
            lr,
            qp,
            None,
            "dithered",
            noise=[
                [ref.uniform_from_seed((300,), (seed, k))] for k in range(steps)
            ],
        )
    else:
        want = ref.qadam_trajectory(
            [np.zeros(300)],
            [np.tile(g, (steps, 1))],
            lr,
            qp,
            None,
            "dithered",
            noise=[
                [ref.uniform_from_seed((300,), (seed, k))] for k in range(steps)
            ],
        )
    np.testing.assert_allclose(got, want["weights"][-1][0], rtol=0, atol=1e-6)


def test_stochastic_increments_on_grid_and_unbiased():
    qp = 64.0
    v, _ = _run("stochastic", seed=0, steps=1, qp=qp, shape=(20000,))
    np.testing.assert_array_equal(v * qp, np.round(v * qp))
    h = -0.1 * np.linspace(-1, 1, 20000)  # the unquantized step
    assert abs(np.mean(v - h)) < 5 * np.sqrt(0.25 / 20000) / qp


def test_dithered_temperature_holds_for_tiny_steps():
    # Steps of 1e-3 grid cells: "nearest" rounds everything to zero, the dither does not.
    qp = 8.0
    g = tensor(np.full((4000,), 1e-3 / (qp * 0.1), "float32"))
    stats_by_mode = {}
    for rounding in ("nearest", "dithered"):
        opt = keras_qsgld.QSGLD(
            learning_rate=0.1,
            resolution=qp,
            rounding=rounding,
            seed=1,
            track_noise=True,
            jit_compile=False,
        )
        v = keras.Variable(np.zeros((4000,), "float32"))
        for _ in range(3):
            opt.apply([g], [v])
        stats_by_mode[rounding] = opt.noise_statistics()
    assert stats_by_mode["nearest"]["zero_fraction"] == 1.0
    assert stats_by_mode["nearest"]["variance_ratio"] < 1e-4
    assert stats_by_mode["dithered"]["zero_fraction"] < 0.01
    assert stats_by_mode["dithered"]["variance_ratio"] == pytest.approx(
        1.0, rel=0.05
    )
    assert abs(stats_by_mode["dithered"]["error_mean"]) < 0.02


def test_lag1_autocorrelation_of_dithered_error_across_steps():
    # The same coordinate over many steps: errors of successive steps are uncorrelated.
    qp, steps = 16.0, 400
    opt = keras_qsgld.QSGLD(
        learning_rate=0.05,
        resolution=qp,
        rounding="dithered",
        seed=2,
        jit_compile=False,
    )
    v = keras.Variable(np.zeros((64,), "float32"))
    g = tensor(np.full((64,), 0.01, "float32"))
    apply = CompiledApply(opt, [v])
    errors, prev = [], v.numpy().copy()
    for _ in range(steps):
        apply([g])
        cur = v.numpy().copy()
        errors.append((cur - prev) * qp - (-0.05 * 0.01 * qp))
        prev = cur
    e = np.array(errors)  # (steps, 64)
    lag1 = np.mean([np.corrcoef(e[:-1, j], e[1:, j])[0, 1] for j in range(64)])
    assert abs(lag1) < 4 / np.sqrt(steps * 64)
    assert e.var() * 12 == pytest.approx(1.0, rel=0.05)


def _model():
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(1),
        ]
    )


@pytest.mark.parametrize("rounding", ["stochastic", "dithered"])
def test_resume_is_bitwise_exact_with_the_rng_state(tmp_path, rounding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")

    def compiled(model):
        model.compile(
            optimizer=keras_qsgld.QSGLD(
                learning_rate=0.05,
                resolution=2.0**10,
                rounding=rounding,
                seed=4,
            ),
            loss="mse",
        )
        return model

    keras.utils.set_random_seed(0)
    full = compiled(_model())
    init = full.get_weights()
    full.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    half = compiled(_model())
    half.set_weights(init)
    half.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "half.keras")
    half.save(path)
    resumed = keras.saving.load_model(path)
    assert (
        resumed.optimizer.rounding == rounding and resumed.optimizer.seed == 4
    )
    np.testing.assert_array_equal(
        resumed.optimizer._seed_generator.state.numpy(),
        half.optimizer._seed_generator.state.numpy(),
    )
    resumed.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(full.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_fit_with_xla_and_dithered_rounding_runs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")
    model = _model()
    model.compile(
        optimizer=keras_qsgld.QAdam(
            rounding="dithered", seed=0, resolution=2.0**12
        ),
        loss="mse",
        jit_compile=True,
    )
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(model.optimizer.iterations) == 8


def test_seed_validation_and_config_round_trip():
    with pytest.raises(ValueError, match=r"seed.*Received: seed='x'"):
        keras_qsgld.QSGLD(rounding="dithered", seed="x")
    opt = keras_qsgld.QSGLD(rounding="stochastic", seed=9)
    config = opt.get_config()
    assert config["seed"] == 9 and config["rounding"] == "stochastic"
    clone = keras_qsgld.QSGLD.from_config(config)
    assert clone.seed == 9 and clone.rounding == "stochastic"
    # Every rounding has the same state layout (the generator is there, used or not), so a
    # run saved with one rounding resumes with another without losing its state.
    plain = keras_qsgld.QSGLD(rounding="nearest", seed=9)
    assert [v.name for v in plain.variables] == [v.name for v in opt.variables]


@pytest.mark.backends("tensorflow")  # the benchmark script runs on TensorFlow
def test_double_well_benchmark_quick(tmp_path):
    from benchmarks.langevin import double_well as langevin_double_well

    rows = langevin_double_well.main(["--quick", "--output-dir", str(tmp_path)])
    by_method = {row[0]: row for row in rows}
    assert (tmp_path / "double_well.md").exists() and (
        tmp_path / "double_well.png"
    ).exists()
    # Even in the tiny run the dither crosses the barrier and deterministic rounding does not.
    assert by_method["QSGLD rounding=dithered"][3] > 0.05
    assert by_method["QSGLD rounding=nearest"][3] == 0.0
    assert by_method["QSGLD rounding=nearest"][5] == 1.0
