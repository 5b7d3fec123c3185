"""Robustness: damaged save files, extreme hyperparameters, zero gradients, NaN in the data.

Each behaviour is either "finite weights" or a documented one, checked here against the
NumPy reference (`tests/reference.py`) or against what Keras' own optimizers do.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_qsgld
from keras_qsgld import QSGLD, CompensationSchedule, QAdam, ResolutionSchedule
from tests import reference
from tests.backends import CompiledApply

W0 = np.array([0.3, -1.2, 2.0, 0.0], dtype=np.float32)
G = np.array([0.5, -0.25, 1e-3, 2.0], dtype=np.float32)
F32_MAX = float(np.finfo(np.float32).max)


def in_steps(**kwargs):
    """The resolution schedule counted in optimizer steps (one step per "epoch")."""
    return ResolutionSchedule(steps_per_epoch=1, **kwargs)


def _apply(optimizer, gradient, w0=W0, steps=1):
    variable = keras.Variable(np.array(w0, dtype=np.float32))
    for _ in range(steps):
        optimizer.apply_gradients(
            [
                (
                    ops.convert_to_tensor(np.asarray(gradient, np.float32)),
                    variable,
                )
            ]
        )
    return variable.numpy()


def _small_model(optimizer=None, seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(
        optimizer or QSGLD(0.1, resolution=in_steps(), momentum=0.9),
        "mse",
        jit_compile=False,
    )
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained model with QSGLD state, saved as .keras and as .weights.h5."""
    tmp = tmp_path_factory.mktemp("saved")
    model = _small_model()
    rng = np.random.default_rng(0)
    model.fit(
        rng.normal(size=(16, 4)),
        rng.normal(size=(16, 3)),
        batch_size=8,
        verbose=0,
    )
    model.save(tmp / "model.keras")
    model.save_weights(tmp / "model.weights.h5")
    return tmp, model


def _write_damaged(src, dst, mutate):
    data = bytearray(src.read_bytes())
    mutate(data)
    dst.write_bytes(bytes(data))
    return dst


# -- damaged files -------------------------------------------------------------------------
def test_intact_files_load(saved):
    tmp, model = saved
    loaded = keras.saving.load_model(tmp / "model.keras")
    assert isinstance(loaded.optimizer, QSGLD)
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("keep", [0, 0.5, 0.95])
def test_truncated_keras_file_is_refused(saved, tmp_path, keep):
    tmp, _ = saved
    path = _write_damaged(
        tmp / "model.keras",
        tmp_path / "t.keras",
        lambda d: d.__delitem__(slice(int(len(d) * keep), None)),
    )
    # Keras' words ("File not found") are odd for a file that exists, but name the format.
    with pytest.raises(ValueError, match=r"accessible `\.keras` zip file"):
        keras.saving.load_model(path)


def test_corrupted_keras_file_fails_its_checksum(saved, tmp_path):
    tmp, _ = saved

    def flip_middle(data):
        for i in range(len(data) // 3, len(data) // 3 + 64):
            data[i] ^= 0xFF

    path = _write_damaged(
        tmp / "model.keras", tmp_path / "c.keras", flip_middle
    )
    import zipfile

    with pytest.raises(zipfile.BadZipFile, match="CRC-32"):
        keras.saving.load_model(path)


def test_truncated_weights_file_is_refused(saved, tmp_path):
    tmp, model = saved
    path = _write_damaged(
        tmp / "model.weights.h5",
        tmp_path / "t.weights.h5",
        lambda d: d.__delitem__(slice(len(d) // 2, None)),
    )
    with pytest.raises(OSError, match="truncated file"):
        model.load_weights(path)


def test_weights_file_with_a_damaged_header_is_refused(saved, tmp_path):
    tmp, model = saved

    def flip_header(data):
        for i in range(64):
            data[i] ^= 0xFF

    path = _write_damaged(
        tmp / "model.weights.h5", tmp_path / "h.weights.h5", flip_header
    )
    with pytest.raises(OSError, match="file signature not found"):
        model.load_weights(path)


def test_weights_file_corrupted_inside_an_array_loads_silently(saved, tmp_path):
    """A documented limitation, not ours: HDF5 keeps no checksum of array data, so a
    `.weights.h5` damaged inside a weight loads without error. The `.keras` format (a zip
    with CRC-32) detects the same damage; docs/scaling.md recommends it for archives."""
    tmp, model = saved
    kernel = model.get_weights()[0]
    raw = (tmp / "model.weights.h5").read_bytes()
    offset = raw.find(kernel.tobytes())
    assert offset > 0  # the kernel is stored contiguously, uncompressed

    def flip_kernel_byte(data):
        data[offset + 3] ^= 0x40  # the exponent byte of the first float32

    path = _write_damaged(
        tmp / "model.weights.h5", tmp_path / "k.weights.h5", flip_kernel_byte
    )
    victim = _small_model(seed=1)
    victim.optimizer.build(victim.trainable_variables)
    victim.load_weights(path)
    loaded = victim.get_weights()[0]
    assert loaded.flat[0] != kernel.flat[0]
    np.testing.assert_array_equal(loaded.flat[1:], kernel.flat[1:])


def test_backup_truncated_mid_write_recovers_with_double_checkpoint(tmp_path):
    """`save_weights` writes in place: a kill during a backup leaves a truncated
    `latest.weights.h5`. With `double_checkpoint=True` BackupAndRestore falls back to the
    previous backup; without it the restart stops with the h5py error."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 3))
    for double in (False, True):
        backup = tmp_path / f"backup_{double}"
        model = _small_model()
        model.fit(
            x,
            y,
            batch_size=8,
            epochs=2,
            verbose=0,
            callbacks=[
                keras.callbacks.BackupAndRestore(
                    backup,
                    save_freq=2,
                    double_checkpoint=double,
                    delete_checkpoint=False,
                )
            ],
        )
        latest = backup / "latest.weights.h5"
        latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
        restarted = _small_model()
        callback = keras.callbacks.BackupAndRestore(
            backup, save_freq=2, double_checkpoint=double
        )
        seen = _StepAtTrainBegin()
        if not double:
            with pytest.raises(OSError, match="truncated file"):
                restarted.fit(
                    x,
                    y,
                    batch_size=8,
                    epochs=3,
                    verbose=0,
                    callbacks=[callback, seen],
                )
        else:
            restarted.fit(
                x,
                y,
                batch_size=8,
                epochs=3,
                verbose=0,
                callbacks=[callback, seen],
            )
            # Restored from the previous backup: 6 of the 8 steps (save_freq=2, 4 per epoch).
            assert seen.step == 6
            assert all(np.all(np.isfinite(w)) for w in restarted.get_weights())


class _StepAtTrainBegin(keras.callbacks.Callback):
    """Records `optimizer.iterations` once the callbacks before it restored their state."""

    def on_train_begin(self, logs=None):
        self.step = int(self.model.optimizer.iterations.numpy())


# -- extreme hyperparameters ---------------------------------------------------------------
@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@pytest.mark.parametrize("learning_rate", [1e-12, 1e-6, 1e-2])
def test_eta_2_pow_40_is_finite_and_matches_reference(learning_rate, rounding):
    """eta = 2**40: the grid 2**-40 is finer than float32 weights resolve."""
    optimizer = QSGLD(
        learning_rate,
        resolution=in_steps(eta=2.0**40),
        rounding=rounding,
        jit_compile=False,
    )
    w = _apply(optimizer, G)
    qp = reference.resolution(0, eta=2.0**40)
    h = -np.float32(learning_rate) * G.astype(np.float64)
    expected = W0.astype(np.float64) + reference.increment(
        h, qp, rounding=rounding
    )
    assert np.all(np.isfinite(w))
    # Exact up to the float32 rounding of the sum (and of lr * g, relative 2**-24).
    np.testing.assert_allclose(
        w, expected, rtol=2e-7, atol=2.0**-40 + abs(learning_rate) * 2e-7
    )


def test_eta_2_pow_40_with_compensation_and_huge_step_counts_is_finite():
    optimizer = QSGLD(
        0.1,
        resolution=in_steps(eta=2.0**40),
        compensation=CompensationSchedule(steps_per_epoch=1),
        momentum=0.9,
        jit_compile=False,
    )
    variable = keras.Variable(W0)
    optimizer.build([variable])
    # Far beyond any run (the counter is int32 on JAX and torch, int64 on TensorFlow).
    top = np.iinfo(
        keras.backend.standardize_dtype(optimizer.iterations.dtype)
    ).max
    for step in (2**31 - 2, 2**53, 2**62):
        if step >= top:
            continue
        optimizer.iterations.assign(step)
        assert np.isfinite(float(optimizer.resolution_at(optimizer.iterations)))
        optimizer.apply_gradients([(ops.convert_to_tensor(G), variable)])
        assert np.all(np.isfinite(variable.numpy()))


@pytest.mark.parametrize("eta", [2.0**19, 2.0**40])
@pytest.mark.parametrize("learning_rate", [1e6, 1e20])
def test_huge_learning_rate_is_exactly_sgd(learning_rate, eta):
    """Where |Qp * h| >= 2**24 the float32 step is already on the grid: rounding is a no-op
    and, Qp being a power of 2, Q(Qp h) / Qp == h: QSGLD gives keras SGD's update bit for bit."""
    assert (
        np.min(np.abs(learning_rate * G)) * eta / 2 >= 2**24
    )  # Qp(0) = eta / 2
    w = _apply(
        QSGLD(learning_rate, resolution=in_steps(eta=eta), jit_compile=False), G
    )
    sgd = _apply(keras.optimizers.SGD(learning_rate), G)
    assert np.all(np.isfinite(w))
    np.testing.assert_array_equal(w, sgd)


def test_learning_rate_whose_scaled_step_overflows_float32_stays_finite():
    learning_rate = 1e30
    assert learning_rate * 0.5 * 2.0**39 > F32_MAX  # Qp(0) = 2**39
    w = _apply(
        QSGLD(
            learning_rate, resolution=in_steps(eta=2.0**40), jit_compile=False
        ),
        G,
    )
    np.testing.assert_array_equal(
        w, _apply(keras.optimizers.SGD(learning_rate), G)
    )


def test_tiny_learning_rate_nearest_freezes_floor_drifts():
    """|Qp h| < 1/2: the nearest rounding gives a zero increment (documented: steps below
    half a grid cell vanish); the authors' floor moves every coordinate with h < 0 by
    -1/Qp per step, a drift independent of the gradient's size."""
    lr = 1e-12
    qp = reference.resolution(0)
    h = -np.float32(lr) * G.astype(np.float64)
    nearest = _apply(
        QSGLD(lr, resolution=in_steps(), jit_compile=False), G, steps=3
    )
    np.testing.assert_array_equal(nearest, W0)
    floor = _apply(
        QSGLD(lr, resolution=in_steps(), rounding="floor", jit_compile=False), G
    )
    expected = W0.astype(np.float64) + reference.increment(
        h, qp, rounding="floor"
    )
    np.testing.assert_allclose(floor, expected, rtol=0, atol=1e-7)
    assert np.array_equal(floor != W0, h < 0)


def test_zero_learning_rate_never_moves():
    for optimizer in (
        QSGLD(
            0.0,
            resolution=in_steps(),
            compensation=1.0,
            rounding="floor",
            jit_compile=False,
        ),
        QAdam(0.0, resolution=in_steps(), compensation=1.0, jit_compile=False),
    ):
        np.testing.assert_array_equal(_apply(optimizer, G, steps=3), W0)


@pytest.mark.parametrize("rounding", ["stochastic", "dithered"])
def test_zero_learning_rate_freezes_the_random_roundings_too(rounding):
    """The dither's noise does not depend on the step; a learning rate of 0 still freezes
    the weights (documented), as Keras users expect of `lr = 0`."""
    for optimizer in (
        QSGLD(
            0.0, resolution=64.0, compensation=1.0, rounding=rounding, seed=1
        ),
        QAdam(0.0, resolution=64.0, rounding=rounding, seed=1),
    ):
        np.testing.assert_array_equal(_apply(optimizer, G, steps=3), W0)


def test_dithered_rounding_moves_weights_whose_gradient_is_exactly_zero():
    """Langevin noise is independent of the gradient (documented): a zero gradient with a
    positive learning rate still moves the weights, by less than half a cell per step."""
    w = _apply(
        QSGLD(0.1, resolution=64.0, rounding="dithered", seed=1),
        np.zeros_like(G),
    )
    assert np.all(w != W0) and np.all(np.abs(w - W0) <= 0.5 / 64.0)


# -- a zero gradient for ever --------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: QSGLD(0.1, resolution=in_steps(), jit_compile=False),
        lambda: QSGLD(
            0.1, resolution=in_steps(), rounding="floor", jit_compile=False
        ),
        lambda: QSGLD(
            0.1,
            resolution=in_steps(),
            momentum=0.9,
            nesterov=True,
            compensation=CompensationSchedule(steps_per_epoch=1),
            jit_compile=False,
        ),
        lambda: QAdam(
            0.1, resolution=in_steps(), compensation=1.0, jit_compile=False
        ),
        lambda: QAdam(
            0.1, resolution=in_steps(), rounding="floor", jit_compile=False
        ),
    ],
    ids=[
        "qsgld",
        "qsgld-floor",
        "qsgld-nesterov-compensation",
        "qadam-compensation",
        "qadam-floor",
    ],
)
def test_zero_gradient_for_ever_keeps_the_weights(make):
    """h = 0: the compensation's norm is 0 (r = 0, no 0/0) and Q(0) = 0 for every rounding."""
    optimizer = make()
    variable = keras.Variable(W0)
    step = CompiledApply(optimizer, [variable])
    zero = np.zeros_like(W0)
    for _ in range(200):
        step([zero])
    assert int(optimizer.iterations.numpy()) == 200
    np.testing.assert_array_equal(variable.numpy(), W0)


def test_qadam_zero_epsilon_zero_gradient_is_nan_like_keras_adam():
    """epsilon = 0 and g = 0 gives m / sqrt(v) = 0 / 0: NaN weights, as keras Adam does."""
    zero = np.zeros_like(W0)
    qadam = _apply(
        QAdam(0.1, resolution=in_steps(), epsilon=0.0, jit_compile=False), zero
    )
    adam = _apply(keras.optimizers.Adam(0.1, epsilon=0.0), zero)
    assert np.all(np.isnan(adam)) and np.all(np.isnan(qadam))


# -- NaN in the data -----------------------------------------------------------------------
def _nan_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.normal(size=(64, 1)).astype(np.float32)
    x[37, 2] = np.nan  # in batch 4 (batch size 8)
    return x, y


OPTIMIZERS = {
    "sgd": lambda: keras.optimizers.SGD(0.01),
    "qsgld": lambda: QSGLD(
        0.01, resolution=in_steps(), compensation=1.0, jit_compile=False
    ),
    "qadam": lambda: QAdam(0.01, resolution=in_steps(), jit_compile=False),
}


def _nan_fit(make, callbacks=(), wrap=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    optimizer = make()
    model.compile(
        wrap(optimizer) if wrap else optimizer, "mse", jit_compile=False
    )
    x, y = _nan_data()
    history = model.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        shuffle=False,
        verbose=0,
        callbacks=list(callbacks),
    )
    return model, optimizer, history


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_nan_in_data_terminate_on_nan_stops_like_keras(name):
    model, optimizer, history = _nan_fit(
        OPTIMIZERS[name], [keras.callbacks.TerminateOnNaN()]
    )
    # Stopped after batch 4 of epoch 0, whose update was applied: the NaN is visible in
    # the loss and in every weight (no silent corruption), exactly as with keras SGD.
    assert int(optimizer.iterations.numpy()) == 5
    assert len(history.history["loss"]) == 1 and np.isnan(
        history.history["loss"][0]
    )
    assert all(np.all(np.isnan(w)) for w in model.get_weights())


@pytest.mark.parametrize("name", ["qsgld", "qadam"])
def test_nan_in_data_loss_scale_optimizer_skips_the_step(name):
    """Under mixed precision's LossScaleOptimizer a non-finite gradient skips the update:
    the quantized optimizers take part in that like Keras' own."""
    model, optimizer, _ = _nan_fit(
        OPTIMIZERS[name], wrap=keras.optimizers.LossScaleOptimizer
    )
    assert (
        int(optimizer.iterations.numpy()) == 3 * 8 - 3
    )  # one NaN batch per epoch skipped
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_package_exports_what_these_tests_use():
    assert keras_qsgld.QSGLD is QSGLD and keras_qsgld.QAdam is QAdam
