"""`QSGLDMonitor`: its epoch logs against a hand computation of QSGLD's increments."""

import csv
import math
import warnings

import keras
import numpy as np
import pytest

import keras_qsgld
from keras_qsgld.callbacks import MONITOR_KEYS, QSGLDMonitor, unwrap_optimizer
from tests import reference

D = 32  # weights of the one-layer model


def linear_model():
    inputs = keras.Input((D,))
    outputs = keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")(
        inputs
    )
    return keras.Model(inputs, outputs)


def hand_statistics(xs, lr, steps_per_epoch, epochs):
    """QSGLD's increments on `|w.x - 1000|` with batches of one, by hand.

    The weights stay near 0, so the loss gradient is exactly `-x` and `h = -lr * g = lr * x`.
    With `x` multiples of 2**-12, `lr = 2**-10` and `Qp` a power of two, `y = Qp * h` is
    exact in float32 and float64 alike. Returns, per epoch, the logs the monitor must show.
    """
    logs = []
    for epoch in range(epochs):
        ys = []
        for i, x in enumerate(xs):
            k = epoch * steps_per_epoch + i
            ys.append(
                reference.resolution(k, steps_per_epoch=steps_per_epoch)
                * lr
                * x
            )
        y = np.concatenate(ys)
        q = np.floor(y + 0.5)  # rounding="nearest"
        error = q - y
        k_end = (
            epoch + 1
        ) * steps_per_epoch  # optimizer.iterations at the epoch's end
        qp = reference.resolution(k_end, steps_per_epoch=steps_per_epoch)
        logs.append(
            {
                "qsgld_qp": qp,
                "qsgld_gate": 0.0,
                "qsgld_temperature": qp**-2 / (24 * lr),
                "qsgld_zero_fraction": np.mean(q == 0),
                "qsgld_noise_variance_ratio": 12 * np.var(error),
            }
        )
    return logs


def test_monitor_matches_a_hand_computation(rng, tmp_path):
    steps, epochs, lr = 3, 2, 2.0**-10
    xs = rng.integers(-40, 41, size=(steps, D)) / 4096.0
    expected = hand_statistics(xs, lr, steps, epochs)
    # the data must exercise both branches: some increments round to 0, some don't
    assert 0 < expected[0]["qsgld_zero_fraction"] < 1
    model = linear_model()
    optimizer = keras_qsgld.QSGLD(
        learning_rate=lr,
        resolution=keras_qsgld.ResolutionSchedule(steps_per_epoch=steps),
        track_noise=True,
        jit_compile=False,
    )
    model.compile(
        optimizer=optimizer, loss="mean_absolute_error", jit_compile=False
    )
    csv_path = tmp_path / "log.csv"
    history = model.fit(
        xs.astype("float32"),
        np.full((steps, 1), 1000.0, "float32"),
        batch_size=1,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=[QSGLDMonitor(), keras.callbacks.CSVLogger(str(csv_path))],
    )
    # epoch 1's updates run at Qp = 2**18 (t < 0.718), epoch 2's at 2**19; the monitor logs
    # Qp at the epoch's end (the next update's), 2**19 both times
    assert reference.resolution(2, steps_per_epoch=steps) == 2.0**18
    assert expected[0]["qsgld_qp"] == expected[1]["qsgld_qp"] == 2.0**19
    for key in MONITOR_KEYS:
        np.testing.assert_allclose(
            history.history[key],
            [e[key] for e in expected],
            rtol=1e-6,
            err_msg=key,
        )
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    for key in MONITOR_KEYS:
        np.testing.assert_allclose(
            [float(r[key]) for r in rows], [e[key] for e in expected], rtol=1e-6
        )
    # the weights moved by the hand-computed increments
    w = model.get_weights()[0][:, 0]
    total = sum(
        np.floor(
            reference.resolution(e * steps + i, steps_per_epoch=steps) * lr * x
            + 0.5
        )
        / reference.resolution(e * steps + i, steps_per_epoch=steps)
        for e in range(epochs)
        for i, x in enumerate(xs)
    )
    np.testing.assert_array_equal(w, total.astype("float32"))


def test_monitor_with_schedule_gate_and_loss_scaling(rng, tmp_path):
    steps, epochs = 4, 3
    lr = keras.optimizers.schedules.ExponentialDecay(
        0.1, decay_steps=1, decay_rate=0.9
    )
    inner = keras_qsgld.QSGLD(
        learning_rate=lr,
        resolution=keras_qsgld.ResolutionSchedule(
            eta=2.0**10, base=3.0, steps_per_epoch=steps
        ),
        compensation=keras_qsgld.CompensationSchedule(
            kappa=1.5, tau0=1.0, steps_per_epoch=steps, gate="tanh"
        ),
        jit_compile=False,
    )
    optimizer = keras.optimizers.LossScaleOptimizer(inner)
    assert unwrap_optimizer(optimizer) is inner
    model = linear_model()
    model.compile(
        optimizer=optimizer, loss="mean_squared_error", jit_compile=False
    )
    x = rng.normal(size=(steps * 2, D)).astype("float32")
    y = rng.normal(size=(steps * 2, 1)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(
            x,
            y,
            batch_size=2,
            epochs=epochs,
            verbose=0,
            callbacks=[QSGLDMonitor()],
        )
        # A second fit with a monitor of its own: the same optimizer is not reported again.
        model.fit(
            x, y, batch_size=2, epochs=1, verbose=0, callbacks=[QSGLDMonitor()]
        )
    noise_warnings = [w for w in caught if "track_noise" in str(w.message)]
    assert len(noise_warnings) == 1  # warned once, not every epoch or every fit
    logged = {k for k in history.history if k.startswith("qsgld_")}
    assert logged == {"qsgld_qp", "qsgld_gate", "qsgld_temperature"}
    k = np.arange(1, epochs + 1) * steps
    qp = reference.resolution(k, eta=2.0**10, base=3.0, steps_per_epoch=steps)
    gate = reference.gate(
        k, kappa=1.5, tau0=1.0, steps_per_epoch=steps, kind="tanh"
    )
    # by hand too: (tanh(-kappa (t - tau0)) + 1) / 2 and eta * base ** floor(log_base ln(t + 2))
    t = k / steps
    np.testing.assert_allclose(
        gate, (np.tanh(-1.5 * (t - 1.0)) + 1) / 2, rtol=1e-12
    )
    np.testing.assert_allclose(
        qp, 2.0**10 * 3.0 ** np.floor(np.log(np.log(t + 2)) / np.log(3))
    )
    np.testing.assert_allclose(history.history["qsgld_qp"], qp, rtol=1e-6)
    np.testing.assert_allclose(
        history.history["qsgld_gate"], gate, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        history.history["qsgld_temperature"],
        qp**-2.0 / (24 * 0.1 * 0.9**k),
        rtol=1e-5,
    )


def test_monitor_with_another_optimizer_warns_once_and_logs_nothing(rng):
    model = linear_model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss="mse", jit_compile=False
    )
    x = rng.normal(size=(4, D)).astype("float32")
    with pytest.warns(UserWarning, match="not a QSGLD or QAdam") as caught:
        history = model.fit(
            x, x[:, :1], epochs=2, verbose=0, callbacks=[QSGLDMonitor()]
        )
    assert sum("not a QSGLD" in str(w.message) for w in caught) == 1
    assert not [k for k in history.history if k.startswith("qsgld_")]


def test_monitor_with_qadam_and_zero_learning_rate(rng):
    model = linear_model()
    optimizer = keras_qsgld.QAdam(
        learning_rate=0.0, track_noise=True, jit_compile=False
    )
    model.compile(optimizer=optimizer, loss="mse", jit_compile=False)
    x = rng.normal(size=(4, D)).astype("float32")
    history = model.fit(
        x, x[:, :1], epochs=1, verbose=0, callbacks=[QSGLDMonitor(prefix="q_")]
    )
    assert (
        "q_temperature" not in history.history
    )  # QAdam has no single temperature
    # lr = 0: the steps are applied unrounded, so there is no rounding to describe.
    assert np.isnan(history.history["q_zero_fraction"][0])
    assert np.isnan(history.history["q_noise_variance_ratio"][0])
    assert set(MONITOR_KEYS) - {"qsgld_temperature"} == {
        "qsgld_" + k[2:] for k in history.history if k.startswith("q_")
    }


def test_bad_prefix():
    with pytest.raises(ValueError, match="prefix"):
        QSGLDMonitor(prefix=3)


def test_monitor_is_registered_and_round_trips():
    import keras

    from keras_qsgld.callbacks import QSGLDMonitor

    monitor = QSGLDMonitor(prefix="q_")
    config = keras.saving.serialize_keras_object(monitor)
    assert config["registered_name"] == "keras_qsgld>QSGLDMonitor"
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, QSGLDMonitor) and clone.prefix == "q_"


# -- what the next update uses ------------------------------------------------------------------
@pytest.mark.parametrize("cls", [keras_qsgld.QSGLD, keras_qsgld.QAdam])
def test_logged_gate_and_qp_are_those_the_next_update_uses(cls, rng):
    """One update per epoch; the gate each update used is recovered from the increments: the
    same run without compensation gives `h` (the gradient is constant, so the optimizer's
    state does not depend on the weights), and on a fine fixed grid the difference of the
    increments is `r = s * step_size * h / ||h||` to 2**-23 per coordinate. It must equal
    the gate the monitor logged at the end of the epoch before. QAdam evaluates its
    schedules at `iterations + 1`; a monitor reading `iterations` would lag one update."""
    lr, qp, epochs = 0.1, 2.0**22, 5  # |w| < 1 stays on the grid in float32
    x = rng.uniform(0.5, 1.5, (1, D)) * rng.choice([-1.0, 1.0], (1, D))
    x = (np.round(x * 4096) / 4096).astype("float32")

    def run(compensation):
        model = linear_model()
        model.compile(
            optimizer=cls(
                learning_rate=lr, resolution=qp, compensation=compensation
            ),
            loss="mean_absolute_error",
        )  # the gradient is exactly -x
        weights = [model.get_weights()[0][:, 0].astype(np.float64)]
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: weights.append(
                model.get_weights()[0][:, 0].astype(np.float64)
            )
        )
        history = model.fit(
            x,
            np.full((1, 1), 1000.0, "float32"),
            epochs=epochs,
            verbose=0,
            callbacks=[QSGLDMonitor(warn_untracked=False), record],
        )
        return np.diff(weights, axis=0), history.history

    with_r, history = run(
        keras_qsgld.CompensationSchedule(kappa=2.0, tau0=2.0, steps_per_epoch=1)
    )
    without_r, _ = run(None)
    if cls is keras_qsgld.QSGLD:
        step_sizes = [lr] * epochs
    else:  # Adam's bias-corrected step size at local step k + 1
        step_sizes = [
            lr * math.sqrt(1 - 0.999 ** (k + 1)) / (1 - 0.9 ** (k + 1))
            for k in range(epochs)
        ]
    used = [
        np.linalg.norm(with_r[k] - without_r[k]) / step_sizes[k]
        for k in range(epochs)
    ]
    logged = history["qsgld_gate"]
    np.testing.assert_allclose(used[1:], logged[:-1], atol=2e-5)
    first = (
        0 if cls is keras_qsgld.QSGLD else 1
    )  # the step the first update evaluates at
    np.testing.assert_allclose(
        used[0], 1 / (1 + math.exp(2.0 * (first - 2.0))), atol=2e-5
    )
    assert (
        len(set(np.round(logged, 3))) == epochs
    )  # the gate changes every update
    assert history["qsgld_qp"] == [qp] * epochs


# -- the epoch clock ---------------------------------------------------------------------------
def _clocked_optimizer(steps_per_epoch=None, **kwargs):
    return keras_qsgld.QSGLD(
        0.01,
        resolution=keras_qsgld.ResolutionSchedule(
            steps_per_epoch=steps_per_epoch
        ),
        compensation=keras_qsgld.CompensationSchedule(
            tau0=2.0, steps_per_epoch=steps_per_epoch
        ),
        **kwargs,
    )


def _clock_fit(optimizer, n=40, batch_size=4, epochs=1, **fit_kwargs):
    model = linear_model()
    model.compile(optimizer=optimizer, loss="mse")
    x = np.random.default_rng(0).normal(size=(n, D)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x,
            x[:, :1],
            batch_size=batch_size,
            epochs=epochs,
            verbose=0,
            callbacks=[QSGLDMonitor(warn_untracked=False)],
            **fit_kwargs,
        )
    return model, [
        str(w.message) for w in caught if "steps_per_epoch" in str(w.message)
    ]


@pytest.mark.parametrize(
    "case,fit_kwargs,optimizer_kwargs,updates",
    [
        ("plain", {}, {}, 10),  # 40 examples in batches of 4
        (
            "validation_split",
            {"validation_split": 0.2},
            {},
            8,
        ),  # 32 training examples
        (
            "accumulation",
            {},
            {"gradient_accumulation_steps": 3},
            10 / 3,
        ),  # iterations count updates
    ],
)
def test_unset_steps_per_epoch_is_set_from_fit(
    case, fit_kwargs, optimizer_kwargs, updates
):
    optimizer = _clocked_optimizer(**optimizer_kwargs)
    model, warned = _clock_fit(optimizer, **fit_kwargs)
    assert not warned
    assert optimizer.resolution.steps_per_epoch == pytest.approx(updates)
    assert optimizer.compensation.steps_per_epoch == pytest.approx(updates)


@pytest.mark.parametrize(
    "case,steps_per_epoch,fit_kwargs,optimizer_kwargs,updates",
    [
        ("default of counting in steps", 1, {}, {}, 10),
        ("CIFAR's figure on other data", 390, {}, {}, 10),
        (
            "the whole data with validation_split",
            10,
            {"validation_split": 0.2},
            {},
            8,
        ),
        (
            "batches with gradient accumulation",
            10,
            {},
            {"gradient_accumulation_steps": 3},
            10 / 3,
        ),
    ],
)
def test_wrong_steps_per_epoch_warns_once_naming_both_numbers(
    case, steps_per_epoch, fit_kwargs, optimizer_kwargs, updates
):
    optimizer = _clocked_optimizer(steps_per_epoch, **optimizer_kwargs)
    _, warned = _clock_fit(optimizer, epochs=2, **fit_kwargs)
    # once per schedule, not every epoch
    assert len(warned) == 2, warned
    assert f"steps_per_epoch={steps_per_epoch:g}" in warned[0]
    assert f"{updates:g} optimizer updates per epoch" in warned[0]
    assert (
        optimizer.resolution.steps_per_epoch == steps_per_epoch
    )  # a user's value is kept
    if updates != int(updates):
        assert (
            "Pass steps_per_epoch=10/3," in warned[0]
        )  # the fix written exactly
        # ... and the figure rounded as the warning prints it is the right clock: silent
        _, warned = _clock_fit(
            _clocked_optimizer(float(f"{updates:g}"), **optimizer_kwargs),
            **fit_kwargs,
        )
        assert not warned


def test_right_steps_per_epoch_is_silent():
    optimizer = _clocked_optimizer(10)
    _, warned = _clock_fit(optimizer, epochs=2)
    assert not warned


def _unknown_length_batches(x, batch_size):
    """A generator: fit cannot know how many batches an epoch has."""
    while True:
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], x[i : i + batch_size, :1]


def test_unknown_length_with_unset_steps_per_epoch_raises():
    model = linear_model()
    model.compile(optimizer=_clocked_optimizer(), loss="mse")
    x = np.random.default_rng(0).normal(size=(40, D)).astype("float32")
    with pytest.raises(ValueError, match="unknown length"):
        model.fit(
            _unknown_length_batches(x, 4),
            epochs=1,
            verbose=0,
            callbacks=[QSGLDMonitor()],
        )


def test_unset_steps_per_epoch_without_the_monitor_fails_loudly():
    model = linear_model()
    model.compile(optimizer=_clocked_optimizer(), loss="mse")
    x = np.random.default_rng(0).normal(size=(8, D)).astype("float32")
    with pytest.raises(ValueError, match="QSGLDMonitor"):
        model.fit(x, x[:, :1], batch_size=4, epochs=1, verbose=0)


def test_a_second_fit_on_other_data_resets_an_automatic_clock():
    optimizer = _clocked_optimizer()
    model, _ = _clock_fit(optimizer)  # 40 examples in batches of 4
    x = np.random.default_rng(0).normal(size=(40, D)).astype("float32")
    assert optimizer.resolution.steps_per_epoch == 10
    model.fit(
        x[:20],
        x[:20, :1],
        batch_size=4,
        epochs=1,
        verbose=0,
        callbacks=[QSGLDMonitor(warn_untracked=False)],
    )
    assert optimizer.resolution.steps_per_epoch == 5
    # the retraced update uses the new clock: the gate after 15 updates at 5 per epoch (t = 3)
    assert float(optimizer.gate_at(optimizer.schedule_step)) == pytest.approx(
        1 / (1 + math.exp(2.0 * (3 - 2.0))), rel=1e-5
    )


def test_an_automatic_clock_is_kept_for_data_of_unknown_length_and_checked():
    optimizer = _clocked_optimizer()
    model, _ = _clock_fit(optimizer)  # 40 examples in batches of 4
    x = np.random.default_rng(0).normal(size=(40, D)).astype("float32")
    assert optimizer.resolution.steps_per_epoch == 10

    def fit_unknown_length(examples):
        batches = (
            (x[i : i + 4], x[i : i + 4, :1]) for i in range(0, examples, 4)
        )  # one pass
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(
                batches,
                epochs=1,
                verbose=0,
                callbacks=[QSGLDMonitor(warn_untracked=False)],
            )
        return [
            str(w.message) for w in caught if "QSGLDMonitor" in str(w.message)
        ]

    # the same epoch length, unknown to fit: the clock is kept, and the first epoch agrees
    assert fit_unknown_length(40) == []
    assert optimizer.resolution.steps_per_epoch == 10
    # another length: kept for this fit, and the first epoch's end says so
    warned = fit_unknown_length(20)
    assert warned and "fit runs 5 optimizer updates per epoch" in warned[0]
    assert "give the data a known length" in warned[0]


def test_an_automatic_clock_survives_saving_and_a_new_fit_resets_it(tmp_path):
    optimizer = _clocked_optimizer()
    model, warned = _clock_fit(optimizer)
    assert not warned and optimizer.resolution.steps_per_epoch == 10
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.optimizer.resolution.steps_per_epoch == 10
    assert (
        loaded.optimizer.resolution.get_config()["steps_per_epoch_from_fit"]
        is True
    )
    # other data, a fresh monitor: set again, no warning (the user left it None)
    x = np.random.default_rng(0).normal(size=(20, D)).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.fit(
            x,
            x[:, :1],
            batch_size=4,
            epochs=1,
            verbose=0,
            callbacks=[QSGLDMonitor(warn_untracked=False)],
        )
    assert not [w for w in caught if "steps_per_epoch" in str(w.message)]
    assert loaded.optimizer.resolution.steps_per_epoch == 5
    assert loaded.optimizer.compensation.steps_per_epoch == 5
    # a value set by hand is the user's again: no mark, and a mismatch warns
    loaded.optimizer.resolution.steps_per_epoch = 7
    assert (
        "steps_per_epoch_from_fit"
        not in loaded.optimizer.resolution.get_config()
    )


def test_monitor_config_round_trip_with_warn_untracked():
    monitor = QSGLDMonitor(prefix="q_", warn_untracked=False)
    clone = QSGLDMonitor.from_config(monitor.get_config())
    assert clone.prefix == "q_" and clone.warn_untracked is False
    with pytest.raises(ValueError, match="warn_untracked"):
        QSGLDMonitor(warn_untracked="no")


FIT_MODES = {
    "eager": dict(run_eagerly=True),
    "graph": dict(
        jit_compile=False
    ),  # TensorFlow: QSGLD's own XLA update inside
    "compiled": dict(jit_compile=True),
}


@pytest.mark.parametrize("how", ["monitor", "by hand"])
@pytest.mark.parametrize("mode", list(FIT_MODES))
def test_a_second_fit_updates_on_its_own_clock(mode, how):
    """After a fit of 20 batches per epoch, a fit of 1 batch per epoch: the update the
    second fit runs (not only `resolution_at`) uses the new clock, whether the monitor set
    it or it was set by hand between the fits. At step 20, 20 epochs in, Qp is 2 eta; on
    the old clock (1 epoch) it was eta. Compiled updates traced with the old clock must be
    traced again (TensorFlow's own XLA update kept it)."""
    eta = 2.0**8
    optimizer = keras_qsgld.QSGLD(
        2.0**-6, resolution=keras_qsgld.ResolutionSchedule(eta=eta)
    )
    model = linear_model()
    model.compile(optimizer=optimizer, loss="mse", **FIT_MODES[mode])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, D)).astype("float32")
    y = rng.normal(size=(80, 1)).astype("float32")
    monitor = QSGLDMonitor(warn_untracked=False)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, callbacks=[monitor])
    assert optimizer.resolution.steps_per_epoch == 20
    if how == "by hand":
        optimizer.resolution.steps_per_epoch = 1
    before = np.array(model.get_weights()[0], np.float64)
    model.fit(
        x[:4], y[:4], batch_size=4, epochs=1, verbose=0, callbacks=[monitor]
    )
    assert optimizer.resolution.steps_per_epoch == 1
    cells = (np.array(model.get_weights()[0], np.float64) - before) * 2 * eta
    np.testing.assert_array_equal(
        cells, np.round(cells)
    )  # on the 1 / (2 eta) grid
    assert np.any(cells % 2 != 0)  # and not on the old 1 / eta grid
