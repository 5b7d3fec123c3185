"""`keras_qsgld.sampling`: which updates `PosteriorSampler` keeps (exact indices and weights),
in memory and in a folder, resuming (in the process and after a SIGKILL), the posterior
predictive against NumPy, the example script and the user guide's code."""

import os
import pathlib
import re
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

import keras_qsgld
from keras_qsgld import calibration
from keras_qsgld.sampling import (
    PosteriorSampler,
    posterior_predictive,
    sample_file_name,
)
from tests.docs import code_block
from tests.programs import runner

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parents[2]
N, FEATURES, CLASSES, BATCH = 16, 4, 3, 4  # 4 updates per epoch


# -- helpers --------------------------------------------------------------------------------
def tiny_data(n=N):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=n).astype("int32")
    return x, y


def tiny_model(activation="softmax", units=CLASSES, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(units, activation=activation),
        ]
    )


def sampling_optimizer(**kwargs):
    return keras_qsgld.QSGLD(
        0.05,
        resolution=keras_qsgld.Temperature(1.0 / N),
        rounding="dithered",
        seed=0,
        **kwargs,
    )


def compiled_model(optimizer=None, **model_kwargs):
    model = tiny_model(**model_kwargs)
    model.compile(
        optimizer=optimizer or sampling_optimizer(),
        loss="sparse_categorical_crossentropy",
    )
    return model


class Recorder(keras.callbacks.Callback):
    """The weights after every optimizer update, keyed by the update count."""

    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        update = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        self.weights[update] = [
            np.array(w, copy=True) for w in model.get_weights()
        ]


def fit(model, sampler, epochs=4, recorder=None, shuffle=False, **kwargs):
    x, y = tiny_data()
    callbacks = [sampler] + ([recorder] if recorder is not None else [])
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        shuffle=shuffle,
        verbose=0,
        callbacks=callbacks,
        **kwargs,
    )


def assert_same_weights(a, b):
    assert len(a) == len(b)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


def sampler_warnings(record):
    return [
        str(w.message) for w in record if "PosteriorSampler" in str(w.message)
    ]


# -- which updates ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "thin, batch, warns", [(8, BATCH, True), (7, BATCH, False), (4, N, False)]
)
def test_thin_a_multiple_of_the_epoch_warns(thin, batch, warns):
    """Samples all at one point of the epoch follow another law; with full batches (one
    update per epoch) there is no such point."""
    x, y = tiny_data()
    model = compiled_model()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(
            x,
            y,
            batch_size=batch,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[PosteriorSampler(thin=thin, verbose=0)],
        )
    messages = [
        m for m in sampler_warnings(record) if "point of the epoch" in m
    ]
    assert len(messages) == int(warns), messages
    if warns:
        assert "thin=8 is a multiple of the 4 updates per epoch" in messages[0]


@pytest.mark.parametrize("steps_per_execution", [1, 2])
def test_the_model_is_read_only_when_a_sample_can_be_due(
    monkeypatch, steps_per_execution
):
    """On JAX reading `callback.model` syncs the whole training state: the sampler reads it
    after the updates it keeps (and once an epoch), not after every batch; with
    `steps_per_execution` it still keeps exactly the sample updates."""
    if BACKEND == "torch" and steps_per_execution > 1:
        pytest.skip("Keras on PyTorch runs one step per execution")
    reads = []
    real = PosteriorSampler._catch_up

    def counted(self):
        reads.append(self._last)
        return real(self)

    monkeypatch.setattr(PosteriorSampler, "_catch_up", counted)
    sampler = PosteriorSampler(burn_in=1, thin=6, verbose=0)
    model = compiled_model()
    model.compile(
        optimizer=sampling_optimizer(),
        loss="sparse_categorical_crossentropy",
        steps_per_execution=steps_per_execution,
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, sampler, epochs=8)  # 32 updates, 4 per epoch
    assert sampler_warnings(record) == []
    assert sampler.sample_steps == [10, 16, 22, 28]
    # One read per sample and one per epoch (8), at most one more per epoch where the
    # first execution's count is an upper bound: far fewer than the 32 batches.
    assert len(reads) <= 4 + 2 * 8, reads


@pytest.mark.parametrize(
    "steps_per_execution, thin, off",
    [
        (2, 3, ["thin (3)"]),
        (3, 6, ["the updates per epoch (4)", "the burn-in (4)"]),
    ],
)
def test_executions_that_move_samples_are_named_before_fit_runs(
    steps_per_execution, thin, off
):
    """Keras starts its executions anew at each epoch and the callbacks run once per
    execution: a steps_per_execution that does not divide the epoch, thin and burn-in moves
    samples to the ends of executions; the sampler says so as fit starts, naming which."""
    if BACKEND == "torch":
        pytest.skip("Keras on PyTorch runs one step per execution")
    sampler = PosteriorSampler(burn_in=1, thin=thin, verbose=0)
    model = compiled_model()
    model.compile(
        optimizer=sampling_optimizer(),
        loss="sparse_categorical_crossentropy",
        steps_per_execution=steps_per_execution,
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, sampler, epochs=8)  # 32 updates, 4 per epoch
    messages = [m for m in sampler_warnings(record) if "does not divide" in m]
    assert len(messages) == 1, sampler_warnings(record)
    assert (
        f"steps_per_execution={steps_per_execution} does not divide"
        in messages[0]
    )
    assert all(name in messages[0] for name in off), messages[0]
    due = [u for u in range(1, 33) if sampler.is_sample_step(u)]
    assert sampler.sample_steps != due  # the samples were indeed moved


def test_burn_in_in_steps_then_every_thin_updates():
    sampler, recorder = (
        PosteriorSampler(burn_in=5, burn_in_unit="steps", thin=3, verbose=0),
        Recorder(),
    )
    fit(compiled_model(), sampler, epochs=4, recorder=recorder)  # 16 updates
    assert sampler.sample_steps == [8, 11, 14]
    assert len(sampler.samples) == 3
    for update, sample in zip(sampler.sample_steps, sampler.samples):
        assert_same_weights(sample, recorder.weights[update])
    # the weights change between updates, so the comparison above can fail
    assert not np.array_equal(recorder.weights[8][0], recorder.weights[9][0])


def test_burn_in_in_epochs():
    sampler = PosteriorSampler(
        burn_in=2, thin=2, verbose=0
    )  # 2 epochs = 8 updates
    fit(compiled_model(), sampler, epochs=4)
    assert sampler.sample_steps == [10, 12, 14, 16]
    assert [sampler.is_sample_step(u) for u in range(8, 13)] == [
        False,
        False,
        True,
        False,
        True,
    ]
    # before fit, a burn-in in epochs is unknown in updates, except a burn-in of 0
    with pytest.raises(ValueError, match="updates per epoch"):
        PosteriorSampler(burn_in=2, thin=2).is_sample_step(3)
    assert [
        PosteriorSampler(burn_in=0, thin=2).is_sample_step(u) for u in (1, 2)
    ] == [False, True]


def test_max_samples_stops_collecting(capsys):
    sampler = PosteriorSampler(thin=2, max_samples=3, verbose=1)
    fit(compiled_model(), sampler, epochs=3)
    assert sampler.sample_steps == [2, 4, 6]
    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("PosteriorSampler")
    ]
    assert lines == [
        "PosteriorSampler, epoch 1: 2/3 samples, last after update 4 (update 4)",
        "PosteriorSampler, epoch 2: 3/3 samples, last after update 6 (update 8)",
        "PosteriorSampler, epoch 3: 3/3 samples, last after update 6 (update 12)",
    ]


def test_progress_line_during_burn_in(capsys):
    fit(
        compiled_model(),
        PosteriorSampler(burn_in=6, burn_in_unit="steps", verbose=1),
        epochs=2,
    )
    out = capsys.readouterr().out
    assert "PosteriorSampler, epoch 1: burn-in, update 4 of 6; 0 samples" in out
    assert (
        "PosteriorSampler, epoch 2: 2 samples, last after update 8 (update 8)"
        in out
    )


def test_cycle_mode_keeps_the_ends_of_the_cycles():
    # cosine restarts every 6 updates; two samples per cycle, 2 updates apart, after 5 updates
    schedule = keras.optimizers.schedules.CosineDecayRestarts(
        0.05, first_decay_steps=6, t_mul=1.0, m_mul=1.0
    )
    sampler = PosteriorSampler(
        burn_in=5,
        burn_in_unit="steps",
        thin=2,
        cycle_length=6,
        samples_per_cycle=2,
        verbose=0,
    )
    model = tiny_model()
    model.compile(
        optimizer=keras_qsgld.QSGLD(
            schedule,
            resolution=keras_qsgld.Temperature(1.0 / N),
            rounding="dithered",
            seed=0,
        ),
        loss="sparse_categorical_crossentropy",
    )
    fit(model, sampler, epochs=4)  # 16 updates
    assert sampler.sample_steps == [
        6,
        10,
        12,
        16,
    ]  # 16: two updates before the third end, 18
    # update u runs at the learning rate of step u - 1: the end of a cycle has the smallest
    lr = [float(keras.ops.convert_to_numpy(schedule(k))) for k in range(12)]
    assert lr[5] == min(lr[:6]) and lr[11] == min(lr[6:12])
    without_burn_in = PosteriorSampler(
        burn_in_unit="steps", thin=2, cycle_length=6, samples_per_cycle=2
    )
    assert [u for u in range(1, 17) if without_burn_in.is_sample_step(u)] == [
        4,
        6,
        10,
        12,
        16,
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(burn_in=0, thin=1),
        dict(burn_in=7, thin=3),
        dict(burn_in=20, thin=5),
        dict(burn_in=0, thin=4, cycle_length=10, samples_per_cycle=3),
        dict(burn_in=13, thin=1, cycle_length=7),
    ],
)
def test_counting_agrees_with_the_rule(kwargs):
    """The count behind the max_samples warning equals the updates `is_sample_step` keeps."""
    sampler = PosteriorSampler(burn_in_unit="steps", **kwargs)
    for low, high in [(0, 50), (3, 41), (17, 18), (30, 30), (0, 1)]:
        expected = sum(
            sampler.is_sample_step(u) for u in range(low + 1, high + 1)
        )
        assert sampler._count_between(low, high) == expected


def test_gradient_accumulation_counts_updates_not_batches():
    sampler, recorder = PosteriorSampler(thin=1, verbose=0), Recorder()
    fit(
        compiled_model(sampling_optimizer(gradient_accumulation_steps=2)),
        sampler,
        epochs=2,
        recorder=recorder,
    )
    assert sampler.sample_steps == [
        1,
        2,
        3,
        4,
    ]  # 8 batches, 4 updates, each kept once
    for update, sample in zip(sampler.sample_steps, sampler.samples):
        assert_same_weights(sample, recorder.weights[update])


def test_samples_in_memory_are_copies():
    sampler = PosteriorSampler(thin=4, verbose=0)
    model = compiled_model()
    fit(model, sampler, epochs=2)
    first = [np.array(w, copy=True) for w in sampler.samples[0]]
    fit(
        model, sampler, epochs=1
    )  # training goes on: the kept arrays must not move with it
    assert sampler.sample_steps == [4, 8, 12]
    assert_same_weights(sampler.samples[0], first)


# -- in a folder ---------------------------------------------------------------------------------
def test_directory_holds_one_weights_file_per_sample(tmp_path):
    folder = tmp_path / "chain"
    folder.mkdir()
    (folder / ".tmp-sample-000000005-4242.weights.h5").write_bytes(
        b"half a file"
    )  # a killed write
    (folder / "notes.txt").write_text("not ours")
    sampler, recorder = (
        PosteriorSampler(
            burn_in=5, burn_in_unit="steps", thin=3, directory=folder, verbose=0
        ),
        Recorder(),
    )
    model = compiled_model()
    fit(model, sampler, epochs=4, recorder=recorder)
    names = [
        "sample-000000008.weights.h5",
        "sample-000000011.weights.h5",
        "sample-000000014.weights.h5",
    ]
    assert sorted(os.listdir(folder)) == ["notes.txt"] + names
    assert sampler.samples == [str(folder / n) for n in names]
    assert sampler.sample_steps == [8, 11, 14]
    # each file holds the weights of its update, and no optimizer state
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    for update, path in zip(sampler.sample_steps, sampler.samples):
        model.load_weights(path, objects_to_skip=[model.optimizer])
        assert_same_weights(model.get_weights(), recorder.weights[update])
        assert (
            int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            == iterations
        )
    # a new sampler on the folder lists the samples without training
    again = PosteriorSampler(directory=str(folder))
    assert again.samples == sampler.samples and again.sample_steps == [
        8,
        11,
        14,
    ]


def test_resume_in_memory_drops_samples_after_the_restored_update(tmp_path):
    full = PosteriorSampler(thin=3, verbose=0)
    fit(compiled_model(), full, epochs=4)
    assert full.sample_steps == [3, 6, 9, 12, 15]

    model, sampler = compiled_model(), PosteriorSampler(thin=3, verbose=0)
    fit(model, sampler, epochs=2)
    model.save_weights(
        tmp_path / "at8.weights.h5"
    )  # weights and optimizer state at update 8
    fit(model, sampler, epochs=3, initial_epoch=2)
    assert sampler.sample_steps == [3, 6, 9, 12]
    model.load_weights(
        tmp_path / "at8.weights.h5"
    )  # back to update 8, as a backup restores
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(model, sampler, epochs=4, initial_epoch=2)
    messages = sampler_warnings(record)
    assert any(
        "2 samples in memory are from updates after the model's current update 8 (updates 9..12)"
        in m
        for m in messages
    ), messages
    assert sampler.sample_steps == full.sample_steps  # no duplicates, none lost
    for a, b in zip(sampler.samples, full.samples):
        assert_same_weights(a, b)


def test_resume_with_shuffling_keeps_the_sample_updates(tmp_path):
    """With Keras' shuffle=True the resumed chain sees other batches (another chain from the
    restored state), but keeps the samples at the updates of an uninterrupted run."""
    full = PosteriorSampler(thin=3, directory=str(tmp_path / "full"), verbose=0)
    fit(compiled_model(), full, epochs=4, shuffle=True)
    model = compiled_model()
    sampler = PosteriorSampler(
        thin=3, directory=str(tmp_path / "resumed"), verbose=0
    )
    fit(model, sampler, epochs=2, shuffle=True)
    model.save_weights(tmp_path / "at8.weights.h5")
    fit(model, sampler, epochs=3, initial_epoch=2, shuffle=True)
    model.load_weights(tmp_path / "at8.weights.h5")
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # the samples after update 8, dropped (tested above)
        fit(model, sampler, epochs=4, initial_epoch=2, shuffle=True)
    assert full.sample_steps == [3, 6, 9, 12, 15]
    assert sampler.sample_steps == full.sample_steps
    assert sorted(os.listdir(tmp_path / "resumed")) == sorted(
        os.listdir(tmp_path / "full")
    )


def test_resume_after_sigkill_in_a_new_process(tmp_path):
    """A run killed mid-epoch, after writing samples the backup does not cover, and rerun:
    exactly the samples of an uninterrupted run (the same updates, the same weights)."""
    from tests.programs import sampling_train

    # the uninterrupted run, in this process (the subprocesses are single-threaded: the
    # weights are compared to float32 rounding, the update indices exactly)
    sampling_train.main(
        [
            "--directory",
            str(tmp_path / "s_full"),
            "--backup-dir",
            str(tmp_path / "b_full"),
            "--out",
            str(tmp_path / "full.npz"),
        ]
    )
    env = runner.script_env(KERAS_BACKEND=BACKEND)
    command = [
        "--directory",
        tmp_path / "s_resumed",
        "--backup-dir",
        tmp_path / "b_resumed",
        "--out",
        tmp_path / "resumed.npz",
    ]
    proc = runner.start(
        "sampling_train.py",
        *command,
        "--kill-at-step",
        21,
        "--marker",
        tmp_path / "marker",
        env=env,
        log=tmp_path / "killed.log",
    )
    try:
        runner.wait_for(tmp_path / "marker", proc, 180)
    finally:
        assert runner.kill(proc) == -9
    # burn-in 8 updates, thin 3: samples 11..20 were written; the backup is from update 16
    # (end of epoch 1), so 17 and 20 come from updates the rerun does again
    steps = sorted(
        int(re.findall(r"\d+", n)[0])
        for n in os.listdir(tmp_path / "s_resumed")
    )
    assert steps == [11, 14, 17, 20]
    runner.run(
        "sampling_train.py", *command, env=env, log=tmp_path / "resumed.log"
    )
    full, resumed = (
        np.load(tmp_path / "full.npz"),
        np.load(tmp_path / "resumed.npz"),
    )
    assert full["steps"].tolist() == [11, 14, 17, 20, 23, 26, 29, 32]
    assert resumed["steps"].tolist() == full["steps"].tolist()
    assert sorted(full.files) == sorted(resumed.files)
    for key in full.files:
        np.testing.assert_allclose(
            resumed[key], full[key], rtol=1e-5, atol=1e-6, err_msg=key
        )
    # one update apart, the weights differ far beyond that tolerance
    assert not np.allclose(
        full["sample/0/0"], full["sample/1/0"], rtol=1e-3, atol=1e-4
    )
    assert (
        "samples from updates after the model's current update 16 (updates 17..20)"
        in (tmp_path / "resumed.log").read_text()
    )


# -- checks and warnings --------------------------------------------------------------------------
def test_warns_when_the_burn_in_outlasts_the_run():
    with pytest.warns(
        UserWarning,
        match=r"burn-in \(5 epochs = 20 updates\) does not end before the run's last update \(8\)",
    ):
        fit(compiled_model(), PosteriorSampler(burn_in=5, verbose=0), epochs=2)


def test_warns_when_thin_outlasts_the_run():
    """No update of the run is due for a sample (it kept none, silently)."""
    sampler = PosteriorSampler(burn_in=0, thin=9, verbose=0)
    with pytest.warns(
        UserWarning,
        match=r"no update of this run \(1 to 8\) is due for a sample \(burn-in 0 epochs = 0 "
        r"updates, thin 9\)",
    ):
        fit(compiled_model(), sampler, epochs=2)
    assert sampler.samples == []


def test_warns_when_max_samples_cannot_be_reached():
    with pytest.warns(
        UserWarning,
        match=r"max_samples=10 cannot be reached: the run ends at update 16 and keeps 3 samples",
    ):
        fit(
            compiled_model(),
            PosteriorSampler(
                burn_in=5,
                burn_in_unit="steps",
                thin=3,
                max_samples=10,
                verbose=0,
            ),
        )


def test_warns_when_the_optimizer_does_not_sample_at_a_temperature():
    with pytest.warns(UserWarning, match="SGD.*it adds no Langevin noise"):
        fit(
            compiled_model(keras.optimizers.SGD(0.05)),
            PosteriorSampler(verbose=0),
            epochs=1,
        )
    with pytest.warns(UserWarning, match="its resolution is not a Temperature"):
        fit(
            compiled_model(keras_qsgld.QSGLD(0.05, resolution=2.0**10)),
            PosteriorSampler(verbose=0),
            epochs=1,
        )
    optimizer = keras_qsgld.QSGLD(
        0.05,
        resolution=keras_qsgld.Temperature(0.1),
        rounding="stochastic",
        seed=0,
    )
    with pytest.warns(UserWarning, match="rounding='stochastic'"):
        fit(compiled_model(optimizer), PosteriorSampler(verbose=0), epochs=1)


def test_a_sound_run_gives_no_warning(tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(
            compiled_model(),
            PosteriorSampler(
                burn_in=1, thin=2, max_samples=6, directory=tmp_path, verbose=0
            ),
        )
    assert sampler_warnings(record) == []


def test_burn_in_in_epochs_needs_a_known_epoch_length():
    x, y = tiny_data()

    def batches():
        for i in range(0, N, BATCH):
            yield x[i : i + BATCH], y[i : i + BATCH]

    model = compiled_model()
    with pytest.raises(
        ValueError, match="burn_in=1 epochs, but fit does not know"
    ):
        model.fit(
            batches(),
            epochs=1,
            verbose=0,
            callbacks=[PosteriorSampler(burn_in=1, verbose=0)],
        )


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(burn_in=-1), "burn_in"),
        (dict(burn_in=1.5), "burn_in"),
        (dict(burn_in=True), "burn_in"),
        (dict(burn_in_unit="minutes"), "burn_in_unit"),
        (dict(thin=0), "thin"),
        (dict(thin=2.0), "thin"),
        (dict(max_samples=0), "max_samples"),
        (dict(max_samples="all"), "max_samples"),
        (dict(directory=3), "directory"),
        (dict(cycle_length=0), "cycle_length"),
        (dict(samples_per_cycle=2), "samples_per_cycle"),
        (dict(cycle_length=10, samples_per_cycle=0), "samples_per_cycle"),
        (
            dict(cycle_length=10, thin=5, samples_per_cycle=3),
            "samples_per_cycle",
        ),
        (dict(verbose=2), "verbose"),
        (dict(verbose=True), "verbose"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        PosteriorSampler(**kwargs)


def test_numpy_integers_are_accepted():
    sampler = PosteriorSampler(
        burn_in=np.int64(3),
        burn_in_unit="steps",
        thin=np.int32(2),
        max_samples=np.int64(4),
    )
    assert (sampler.burn_in, sampler.thin, sampler.max_samples) == (3, 2, 4)
    assert type(sampler.thin) is int


def test_config_round_trip(tmp_path):
    sampler = PosteriorSampler(
        burn_in=3,
        burn_in_unit="steps",
        thin=4,
        max_samples=7,
        directory=tmp_path,
        cycle_length=20,
        samples_per_cycle=2,
        verbose=0,
    )
    config = sampler.get_config()
    assert PosteriorSampler.from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(sampler)
    )
    assert (
        isinstance(restored, PosteriorSampler)
        and restored.get_config() == config
    )
    assert config["directory"] == str(tmp_path)


# -- the posterior predictive --------------------------------------------------------------------
def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_samples(model, count, scale=1.0, seed=1):
    rng = np.random.default_rng(seed)
    return [
        [
            rng.normal(size=w.shape).astype("float32") * scale
            for w in model.get_weights()
        ]
        for _ in range(count)
    ]


@pytest.fixture
def trained_model():
    """A compiled model with one update done, so the optimizer has state to keep."""
    model = compiled_model()
    fit(model, PosteriorSampler(verbose=0), epochs=1)
    return model


def test_classification_average_matches_numpy(trained_model, tmp_path):
    model = trained_model
    x, _ = tiny_data(11)
    samples = random_samples(model, 3)
    expected = np.mean(
        [softmax(x.astype(np.float64) @ k + b) for k, b in samples], axis=0
    )
    own = [np.array(w, copy=True) for w in model.get_weights()]
    iterations = int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    probs = posterior_predictive(
        model, samples, x, batch_size=4
    )  # batches of 4, 4 and 3
    assert probs.shape == (11, CLASSES) and probs.dtype == np.float64
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)
    # not the average of the logits
    assert not np.allclose(
        probs,
        softmax(np.mean([x @ k + b for k, b in samples], axis=0)),
        atol=1e-3,
    )
    assert_same_weights(
        model.get_weights(), own
    )  # the model's own weights are back
    assert (
        int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        == iterations
    )

    # the same samples as files, mixed with weight lists, and from a tf.data-free PyDataset
    paths = []
    for i, sample in enumerate(samples[:2]):
        model.set_weights(sample)
        paths.append(str(tmp_path / sample_file_name(i + 1)))
        keras.saving.save_weights(
            model, paths[-1], objects_to_skip=[model.optimizer]
        )
    model.set_weights(own)
    np.testing.assert_allclose(
        posterior_predictive(model, paths + samples[2:], x),
        expected,
        rtol=1e-5,
        atol=1e-7,
    )
    assert (
        int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        == iterations
    )

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[4 * i : 4 * i + 4]

    np.testing.assert_allclose(
        posterior_predictive(model, samples, Batches()),
        expected,
        rtol=1e-5,
        atol=1e-7,
    )


def test_classification_from_logits_and_sigmoid():
    x, _ = tiny_data(6)
    logits_model = tiny_model(activation=None)
    samples = random_samples(logits_model, 4)
    expected = np.mean(
        [softmax(x.astype(np.float64) @ k + b) for k, b in samples], axis=0
    )
    np.testing.assert_allclose(
        posterior_predictive(logits_model, samples, x, from_logits=True),
        expected,
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="model outputs.*from_logits=True"):
        posterior_predictive(logits_model, samples, x)
    # the opposite mistake: a softmax model with from_logits=True would be flattened
    softmax_model = tiny_model()
    with pytest.raises(
        ValueError, match="probabilities already.*Received: from_logits=True"
    ):
        posterior_predictive(
            softmax_model, random_samples(softmax_model, 2), x, from_logits=True
        )

    binary = tiny_model(activation=None, units=1)
    samples = random_samples(binary, 3)
    expected = np.mean(
        [1 / (1 + np.exp(-(x.astype(np.float64) @ k + b))) for k, b in samples],
        axis=0,
    )
    probs = posterior_predictive(binary, samples, x, from_logits=True)
    assert probs.shape == (6, 1)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    # one logit per example, shape (n,): a sigmoid per example, never a softmax across them
    flat = keras.Sequential(
        [
            keras.Input((x.shape[1],)),
            keras.layers.Dense(1),
            keras.layers.Reshape(()),
        ]
    )
    flat.set_weights(samples[0])
    probs = posterior_predictive(flat, samples, x, from_logits=True)
    assert probs.shape == (6,)
    np.testing.assert_allclose(probs, expected[:, 0], rtol=1e-5)


def test_a_dict_of_outputs_is_refused_for_mean_and_variance():
    """Keras returns a dict's outputs sorted by key: ("a_var", "y") would swap them."""
    x, _ = tiny_data(5)
    inputs = keras.Input((x.shape[1],))
    model = keras.Model(
        inputs,
        {
            "y": keras.layers.Dense(2)(inputs),
            "a_var": keras.layers.Dense(2, activation="softplus")(inputs),
        },
    )
    with pytest.raises(
        ValueError, match=r"dict of several outputs.*\['a_var', 'y'\]"
    ):
        posterior_predictive(
            model,
            [model.get_weights()],
            x,
            task="regression",
            model_variance=True,
        )


def test_regression_mean_and_variance_by_hand():
    x, _ = tiny_data(9)
    model = tiny_model(activation=None, units=2)
    samples = random_samples(model, 5)
    outputs = np.stack([x.astype(np.float64) @ k + b for k, b in samples])
    mean, variance = posterior_predictive(
        model, samples, x, task="regression", batch_size=4
    )
    np.testing.assert_allclose(mean, outputs.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        variance, outputs.var(axis=0), rtol=1e-4
    )  # across samples, ddof 0


def test_regression_with_the_model_variance_adds_both_parts():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((FEATURES,))
    mu = keras.layers.Dense(1)(inputs)
    var = keras.layers.Dense(1, activation="softplus")(inputs)
    model = keras.Model(inputs, [mu, var])
    x, _ = tiny_data(7)
    samples = random_samples(model, 4)
    means = np.stack([x.astype(np.float64) @ s[0] + s[1] for s in samples])
    variances = np.stack(
        [np.logaddexp(0, x.astype(np.float64) @ s[2] + s[3]) for s in samples]
    )
    mean, variance = posterior_predictive(
        model, samples, x, task="regression", model_variance=True
    )
    np.testing.assert_allclose(mean, means.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        variance, variances.mean(axis=0) + means.var(axis=0), rtol=1e-4
    )
    # law of total variance: more than either part alone
    assert np.all(variance > variances.mean(axis=0)) and np.all(
        variance > means.var(axis=0)
    )
    with pytest.raises(ValueError, match="model_variance=True"):
        posterior_predictive(model, samples, x, task="regression")


def test_sampler_to_metrics_end_to_end(tmp_path):
    model, sampler = (
        compiled_model(),
        PosteriorSampler(thin=2, directory=tmp_path, verbose=0),
    )
    fit(model, sampler, epochs=2)
    x, y = tiny_data()
    probs = posterior_predictive(
        model, sampler, x
    )  # the sampler itself as the samples
    np.testing.assert_allclose(
        probs, posterior_predictive(model, sampler.samples, x)
    )
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    report = calibration.calibration_report(y, probs)
    assert set(report) == {"accuracy", "nll", "brier", "ece"}


@pytest.mark.parametrize(
    "make_args, argument",
    [
        (lambda m, s, x: dict(samples=[]), "samples"),
        (
            lambda m, s, x: dict(samples="sample-000000001.weights.h5"),
            "samples",
        ),
        (lambda m, s, x: dict(samples=[s[0][:1]]), "samples"),
        (
            lambda m, s, x: dict(samples=["/nonexistent/sample-1.weights.h5"]),
            "samples",
        ),
        (lambda m, s, x: dict(samples=[__file__]), "samples"),
        (lambda m, s, x: dict(x=x[:0]), "x"),
        (lambda m, s, x: dict(task="density"), "task"),
        (lambda m, s, x: dict(batch_size=0), "batch_size"),
        (lambda m, s, x: dict(batch_size=2.0), "batch_size"),
        (lambda m, s, x: dict(from_logits=1), "from_logits"),
        (lambda m, s, x: dict(model_variance=True), "model_variance"),
        (
            lambda m, s, x: dict(task="regression", from_logits=True),
            "from_logits",
        ),
        (lambda m, s, x: dict(verbose=3), "verbose"),
        (lambda m, s, x: dict(model="model"), "model"),
    ],
)
def test_predictive_bad_arguments_name_the_argument(make_args, argument):
    model = tiny_model()
    samples = random_samples(model, 2)
    x, _ = tiny_data(4)
    args = dict(model=model, samples=samples, x=x)
    args.update(make_args(model, samples, x))
    own = [np.array(w, copy=True) for w in model.get_weights()]
    with pytest.raises(ValueError, match=f"`{argument}`"):
        posterior_predictive(**args)
    assert_same_weights(model.get_weights(), own)


# -- the example and the user guide ---------------------------------------------------------------
def test_example_script_quick_run(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    env = runner.script_env(KERAS_BACKEND=BACKEND)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.sample",
            "--quick",
            "--output-dir",
            str(out),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "cannot be reached" not in result.stderr
    )  # --quick is self-consistent
    assert "10 samples" in result.stdout
    table = (out / "results.md").read_text()
    assert table in result.stdout
    rows = [
        line
        for line in table.splitlines()
        if line.startswith("| ") and "accuracy" not in line
    ]
    assert [r.split(" | ")[0] for r in rows] == [
        "| trained weights",
        "| last iterate",
        "| posterior average",
    ]
    assert rows[2].split(" | ")[1] == "10"
    assert (out / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_example_script_user_errors_are_one_line(capsys):
    from examples import sample

    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--thin", "0"])
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr().err
        == "sample.py: error: argument --thin: expected an integer >= 1, received '0'\n"
    )


def test_example_script_quick_sets_defaults_only(capsys):
    from examples import sample

    parse = sample.build_parser().parse_args
    assert sample.run_settings(parse([])) == sample.FULL
    assert sample.run_settings(parse(["--quick"])) == sample.QUICK
    # a flag given explicitly wins over --quick
    assert sample.run_settings(
        parse(["--quick", "--sample-epochs", "7", "--thin", "4"])
    ) == {**sample.QUICK, "sample_epochs": 7, "thin": 4}
    # a burn-in as long as the sampling run keeps nothing: one line, exit 2
    assert sample.main(["--quick", "--burn-in", "3"]) == 2
    assert capsys.readouterr().err.endswith(
        "sample.py: error: --burn-in (3 epochs) must be less than --sample-epochs (3): no sample would be kept\n"
    )


def test_example_script_missing_data_is_one_line(monkeypatch, capsys):
    from examples import sample

    def unavailable(*args, **kwargs):
        raise ImportError(
            "mnist1d is needed for 'mnist1d': pip install mnist1d"
        )

    monkeypatch.setattr(sample, "load_dataset", unavailable)
    assert sample.main(["--dataset", "mnist1d"]) == 2
    assert (
        capsys.readouterr().err
        == "sample.py: error: mnist1d is needed for 'mnist1d': pip install mnist1d\n"
    )


def test_example_script_ctrl_c_is_one_line(monkeypatch, capsys):
    from examples import sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "load_dataset", interrupted)
    assert sample.main([]) == 130
    assert capsys.readouterr().err == "sample.py: interrupted\n"


def test_user_guide_snippet_runs(tmp_path, monkeypatch, capsys):
    """The guide's complete run, as a user would paste it, on every backend: its data are
    NumPy arrays (no tf.data, nothing of the repository's scripts)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    namespace = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        exec(
            compile(
                code_block("sampling.md", "classification"),
                "docs/sampling.md",
                "exec",
            ),
            namespace,
        )
    assert sampler_warnings(record) == []  # the run's settings are consistent
    report = namespace["report"]
    assert set(report) == {"accuracy", "nll", "brier", "ece"}
    assert report["accuracy"] > 0.8
    assert re.search(
        r"^9 samples: ", capsys.readouterr().out, flags=re.M
    )  # 3 epochs of 23 updates, every 7th
    assert (tmp_path / "reliability.png").read_bytes()[
        :8
    ] == b"\x89PNG\r\n\x1a\n"
