"""The KerasTuner search in `tuning/`: end to end, resume, Hyperband continuation, distributed.

All offline on scikit-learn's digits with the MLP (the CIFAR ResNet path is the same code with
another `--model`). The searches are tiny: the point is the plumbing, not the scores.
"""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras_tuner")
pytest.importorskip("sklearn")
pytest.importorskip(
    "tensorboard"
)  # KerasTuner imports it in every trial under TensorFlow

import keras

import keras_qsgld
from examples import fit
from experiments.cli import UserError
from experiments.defaults import DEFAULT_LEARNING_RATE, default_learning_rate
from tests import reference  # noqa: E402  (the NumPy formulas)
from tuning import hypermodel as hm
from tuning import search

# The searches train in this process on tf.data pipelines: TensorFlow only (a PyTorch test
# process must not load TensorFlow; `tuning/search.py` itself runs on every backend, see
# tests/scripts/test_examples.py).
pytestmark = pytest.mark.backends("tensorflow")

REPO = Path(__file__).resolve().parents[2]
DIGITS_TRAIN = (
    1437  # scikit-learn digits: 1797 images, 360 held out as the test split
)
# Tiny data: 320 digits, 10 % of them for validation, batches of 32.
TINY = [
    "--smoke",
    "--max-examples",
    "320",
    "--batch-size",
    "32",
    "--verbose",
    "0",
]


def expected_steps(max_examples=320, fraction=0.1, batch_size=32):
    n = min(DIGITS_TRAIN, max_examples)
    return math.ceil((n - max(1, round(fraction * n))) / batch_size)


def recording(base=hm.QSGLDHyperModel, interrupt_at=None):
    """A hypermodel class that keeps its instances (to read `fit_log`) and can simulate a
    crash: a KeyboardInterrupt (not caught by KerasTuner) in its `interrupt_at`-th fit."""

    class Recording(base):
        instances = []
        fitted_values = []

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            Recording.instances.append(self)

        def fit(self, hp, model, *args, **kwargs):
            Recording.fitted_values.append(dict(hp.values))
            if (
                interrupt_at is not None
                and len(Recording.fitted_values) == interrupt_at
            ):
                raise KeyboardInterrupt(
                    "simulated crash in the middle of a trial"
                )
            return super().fit(hp, model, *args, **kwargs)

    return Recording


def test_search_space_validation_and_cli():
    with pytest.raises(ValueError, match="base_min"):
        hm.SearchSpace(base_min=1.0)
    with pytest.raises(ValueError, match="eta_min"):
        hm.SearchSpace(eta_min=2.0**23)
    with pytest.raises(ValueError, match="tau0_max"):
        hm.SearchSpace(tau0_max=1.5)
    with pytest.raises(SystemExit) as info:
        search.parse_args(["--help"])
    assert info.value.code == 0
    with pytest.raises(SystemExit):
        search.parse_args(["--validation-fraction", "1.0"])
    args = search.parse_args([])
    assert (args.dataset, args.model, args.depth, args.tuner) == (
        "cifar10",
        "cifar_resnet",
        50,
        "hyperband",
    )
    assert args.project_name == "cifar10_cifar_resnet_hyperband"
    assert not args.overwrite
    args = search.parse_args(["--smoke", "--tuner", "random"])
    assert (args.dataset, args.model, args.epochs) == (
        "digits",
        "mlp",
        search.SMOKE["epochs"],
    )
    args = search.parse_args(
        ["--dataset", "mnist1d"]
    )  # the data set's default model
    assert (args.model, args.project_name) == (
        "cnn1d",
        "mnist1d_cnn1d_hyperband",
    )


def test_default_hypermodel_is_cifar_resnet50_with_prebuilt_optimizer():
    import keras_tuner as kt

    # Each hyperparameter's default is the paper's, from the one table of defaults.
    assert vars(search.make_space(search.parse_args([]))) == vars(
        hm.SearchSpace()
    )
    assert hm.SearchSpace().learning_rate == DEFAULT_LEARNING_RATE["qsgld"]
    args = search.parse_args(
        []
    )  # the CLI defaults: cifar10, cifar_resnet depth 50, Hyperband
    info = dict(input_shape=(32, 32, 3), num_classes=10, steps_per_epoch=352)
    hypermodel = search.make_hypermodel(args, info)
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    weighted = [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    assert len(weighted) == 50  # 6n + 2 with n = 8
    assert model.output_shape == (None, 10)
    assert (
        model.optimizer.built
    )  # before any weights load (Hyperband continuation)
    sampling = {p.name: p.sampling for p in hp.space}
    assert sampling == {
        "eta": "log",
        "base": "linear",
        "kappa": "log",
        "tau0_fraction": "linear",
    }
    bounds = {p.name: (p.min_value, p.max_value) for p in hp.space}
    assert bounds["eta"] == (2.0**10, 2.0**22)
    # The defaults of the space are the authors' values.
    assert hp.values == dict(
        eta=2.0**19, base=2.0, kappa=2.0, tau0_fraction=0.2
    )
    opt = model.optimizer
    assert (
        opt.resolution.steps_per_epoch
        == opt.compensation.steps_per_epoch
        == 352
    )
    assert opt.compensation.tau0 == pytest.approx(0.2 * args.max_epochs)
    # Bounds come from the command line; a searched learning rate is log-scaled.
    args = search.parse_args(
        [
            "--eta-min",
            "4096",
            "--eta-max",
            "8192",
            "--tune-learning-rate",
            "--lr-min",
            "0.01",
            "--lr-max",
            "0.1",
        ]
    )
    hp = kt.HyperParameters()
    search.make_space(args).declare(hp)
    bounds = {p.name: (p.min_value, p.max_value, p.sampling) for p in hp.space}
    assert bounds["eta"] == (4096.0, 8192.0, "log")
    assert bounds["learning_rate"] == (0.01, 0.1, "log")


def test_validation_holdout_is_a_fixed_disjoint_split_with_known_sizes():
    args = search.parse_args(
        [
            "--smoke",
            "--max-examples",
            "100",
            "--batch-size",
            "16",
            "--validation-fraction",
            "0.2",
        ]
    )
    train, validation, info = search.load_data(args)
    assert info["num_train"] == 80
    assert info["steps_per_epoch"] == 5
    # Known cardinalities: Keras then counts exactly one optimizer step per batch.
    assert int(train.cardinality()) == 5 and int(validation.cardinality()) == 2

    def rows(ds):  # one pass over `ds`: its examples as bytes, in order
        return [row.tobytes() for x, _ in ds for row in x.numpy()]

    from experiments.datasets import load_dataset

    full = load_dataset(
        "digits", batch_size=16, shuffle=False, max_examples=100
    ).train
    everything = sorted(rows(full))
    val_rows, train_rows = rows(validation), rows(train)
    assert len(val_rows) == 20 and len(train_rows) == 80
    assert (
        sorted(val_rows + train_rows) == everything
    )  # a partition of the training set
    assert (
        val_rows == rows(full)[:20]
    )  # the first examples, the same in every epoch
    assert val_rows == rows(validation)
    assert sorted(rows(train)) == sorted(
        train_rows
    )  # reshuffled, same examples
    assert rows(train) != train_rows


def test_make_optimizer_schedules_match_reference():
    values = dict(
        eta=3000.0, base=1.7, kappa=0.5, tau0_fraction=0.25, learning_rate=0.05
    )
    opt = hm.make_optimizer(values, steps_per_epoch=7, epochs=12)
    steps = np.array([0, 1, 6, 7, 50, 300, 2000])
    qp = np.array([float(opt.resolution_at(int(k))) for k in steps])
    np.testing.assert_allclose(
        qp, reference.resolution(steps, 3000.0, 1.7, 7), rtol=1e-6
    )
    gate = np.array([float(opt.gate_at(int(k))) for k in steps])
    t = steps / 7
    np.testing.assert_allclose(
        gate, 1 / (1 + np.exp(0.5 * (t - 0.25 * 12))), rtol=1e-5, atol=1e-7
    )


def test_smoke_hyperband_end_to_end_and_continuation_keeps_iterations(tmp_path):
    cls = recording()
    out = tmp_path / "out"
    # Momentum gives the optimizer slot variables: without them `iterations` would load even
    # into an unbuilt optimizer, and the continuation check below could not fail.
    args = search.parse_args(
        TINY
        + [
            "--momentum",
            "0.9",
            "--directory",
            str(tmp_path),
            "--output-dir",
            str(out),
        ]
    )
    record = search.run(args, hypermodel_class=cls)
    steps = expected_steps()

    best = json.loads((out / "best_hyperparameters.json").read_text())
    assert best == json.loads(json.dumps(record))
    trials = json.loads((out / "trials.json").read_text())
    # Hyperband, max_epochs 3, factor 3: 3 one-epoch trials, the best continued to 3 epochs,
    # then 2 three-epoch trials.
    assert len(trials) == 6
    assert best["score"] == max(t["score"] for t in trials)
    assert best["steps_per_epoch"] == steps
    assert best["epochs"] == search.SMOKE["max_epochs"]
    assert set(best["searched"]) == {"eta", "base", "kappa", "tau0_fraction"}
    v = best["hyperparameters"]
    space = hm.SearchSpace()
    assert space.eta_min <= v["eta"] <= space.eta_max
    assert space.base_min <= v["base"] <= space.base_max
    assert space.kappa_min <= v["kappa"] <= space.kappa_max
    assert space.tau0_min <= v["tau0_fraction"] <= space.tau0_max
    assert v["learning_rate"] == default_learning_rate("qsgld", "digits")
    assert best["tau0"] == pytest.approx(v["tau0_fraction"] * 3)

    # The written config loads directly and is the best trial's optimizer.
    config = json.loads((out / "qsgld_config.json").read_text())
    assert config == best["qsgld_config"]
    opt = keras_qsgld.QSGLD.from_config(config)
    assert isinstance(opt.resolution, keras_qsgld.ResolutionSchedule)
    assert isinstance(opt.compensation, keras_qsgld.CompensationSchedule)
    assert (opt.resolution.eta, opt.resolution.base) == (v["eta"], v["base"])
    assert (opt.compensation.kappa, opt.compensation.tau0) == (
        v["kappa"],
        best["tau0"],
    )
    assert (
        opt.resolution.steps_per_epoch
        == opt.compensation.steps_per_epoch
        == steps
    )
    k = np.array([0, steps, 10 * steps])
    np.testing.assert_allclose(
        [float(opt.resolution_at(int(i))) for i in k],
        reference.resolution(k, v["eta"], v["base"], steps),
        rtol=1e-6,
    )
    assert float(opt.learning_rate) == pytest.approx(v["learning_rate"])
    assert opt.momentum == 0.9
    # ... and the same through keras' own deserialization, as a fit script would.
    again = keras.optimizers.deserialize(
        {"class_name": "keras_qsgld>QSGLD", "config": config}
    )
    assert isinstance(again, keras_qsgld.QSGLD)

    # The fit script's command line says the same.
    config = fit.parse_args(best["fit_args"])
    assert config.optimizers == ("qsgld",)
    assert (config.eta, config.base, config.kappa, config.gate_off_epoch()) == (
        v["eta"],
        v["base"],
        v["kappa"],
        best["tau0"],
    )
    assert (config.learning_rate("qsgld"), config.momentum, config.epochs) == (
        v["learning_rate"],
        0.9,
        3,
    )
    assert best["fit_command"].startswith(
        "python -m examples.fit --dataset digits --model mlp"
    )

    png = (out / "objective_vs_hyperparameters.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    # Continuation: a continued trial starts from the optimizer step saved at its parent's
    # best epoch (SaveBestEpoch), not from 0; fresh trials start at 0.
    (hypermodel,) = cls.instances
    by_id = {t["trial_id"]: t for t in trials}
    continued = [f for f in hypermodel.fit_log if f["trial_id"] is not None]
    fresh = [f for f in hypermodel.fit_log if f["trial_id"] is None]
    assert len(continued) == 1 and len(fresh) == 5
    for f in continued:
        assert f["initial_epoch"] == 1
        assert (
            f["start_iteration"]
            == (by_id[f["trial_id"]]["best_step"] + 1) * steps
            > 0
        )
    assert all(f["start_iteration"] == 0 for f in fresh)


def test_interrupted_search_resumes_remaining_trials(tmp_path):
    argv = TINY + [
        "--tuner",
        "bayesian",
        "--max-trials",
        "3",
        "--epochs",
        "1",
        "--num-initial-points",
        "2",
        "--directory",
        str(tmp_path),
    ]
    crashing = recording(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        search.run(search.parse_args(argv), hypermodel_class=crashing)
    first, interrupted = crashing.fitted_values
    project = tmp_path / "digits_mlp_bayesian"
    trial0 = json.loads((project / "trial_0" / "trial.json").read_text())
    assert trial0["status"] == "COMPLETED"

    resumed = recording()
    record = search.run(search.parse_args(argv), hypermodel_class=resumed)
    # Only the interrupted trial (same values) and the one never started ran again.
    assert len(resumed.fitted_values) == 2
    assert resumed.fitted_values[0] == interrupted
    assert first not in resumed.fitted_values
    assert (
        json.loads((project / "trial_0" / "trial.json").read_text()) == trial0
    )
    trials = json.loads((project / "trials.json").read_text())
    assert [t["trial_id"] for t in trials] == ["0", "1", "2"]
    assert record["score"] == max(t["score"] for t in trials)

    # A resumed search must not silently change what a trial means.
    with pytest.raises(UserError, match="batch_size"):
        search.run(search.parse_args(argv + ["--batch-size", "16"]))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def processes():
    """Started subprocesses; every one still alive is killed (its process group) afterwards."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)


def test_distributed_chief_and_two_workers(tmp_path, processes):
    port = _free_port()
    argv = [
        sys.executable,
        "-m",
        "tuning.search",
        *TINY,
        "--tuner",
        "random",
        "--max-trials",
        "3",
        "--epochs",
        "1",
        "--directory",
        str(tmp_path),
    ]
    env = dict(
        os.environ,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
    )
    for tuner_id in ("chief", "tuner0", "tuner1"):
        log = open(tmp_path / f"{tuner_id}.log", "w")
        processes.append(
            subprocess.Popen(
                argv,
                env=dict(env, KERASTUNER_TUNER_ID=tuner_id),
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        log.close()
    # The chief waits (in 20 s sleeps) until every worker has been told to stop.
    deadline = time.monotonic() + 170
    for proc in processes:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logs = {
                p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.log")
            }
            pytest.fail(f"distributed search did not finish in time: {logs}")
    logs = {p.stem: p.read_text() for p in tmp_path.glob("*.log")}
    assert [p.returncode for p in processes] == [0, 0, 0], logs
    assert "Worker tuner0 finished." in logs["tuner0"]
    assert "Worker tuner1 finished." in logs["tuner1"]

    project = tmp_path / "digits_mlp_random"
    states = [
        json.loads(p.read_text())["status"]
        for p in sorted(project.glob("trial_*/trial.json"))
    ]
    assert states == ["COMPLETED"] * 3
    best = json.loads((project / "best_hyperparameters.json").read_text())
    trials = json.loads((project / "trials.json").read_text())
    assert len(trials) == 3
    assert best["score"] == max(t["score"] for t in trials)
    keras_qsgld.QSGLD.from_config(
        json.loads((project / "qsgld_config.json").read_text())
    )


def test_learning_rate_grid_smoke_picks_the_best_held_out_accuracy(
    tmp_path, capsys
):
    """`python -m tuning.learning_rates --smoke`: KerasTuner's grid over two rates per
    optimizer, on held-out data; the printed table is what it measured, the winner the
    best held-out accuracy of its trials."""
    from tuning import learning_rates

    code = learning_rates.main(
        ["--smoke", "--optimizers", "sgd,qsgld", "--output-dir", str(tmp_path)]
    )
    assert code == 0
    saved = json.loads((tmp_path / "learning_rates.json").read_text())
    for name in ("sgd", "qsgld"):
        trials = saved["results"][name]["trials"]
        assert sorted(t["learning_rate"] for t in trials) == [0.01, 0.1]
        best = max(trials, key=lambda t: (t["val_accuracy"], -t["val_loss"]))
        assert saved["results"][name]["best"] == best["learning_rate"]
    out = capsys.readouterr().out
    assert '{"digits": {"sgd": ' in out


def test_learning_rate_grid_refuses_bad_flags(capsys):
    from tuning import learning_rates

    with pytest.raises(SystemExit) as exit_info:
        learning_rates.main(["--grid", "0.1,-1"])
    assert exit_info.value.code == 2
    assert "learning rates > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        learning_rates.main(["--optimizers", "sgd,nope"])


def test_the_fixed_learning_rate_is_qsgld_default_for_the_data_set():
    """The smoke search (digits) trains at QSGLD's measured rate there, not at the paper's
    CIFAR rate; a rate given on the command line wins."""
    assert search.parse_args(
        ["--smoke"]
    ).learning_rate == default_learning_rate("qsgld", "digits")
    assert default_learning_rate("qsgld", "digits") != default_learning_rate(
        "qsgld", "cifar10"
    )
    assert search.parse_args(
        ["--dataset", "cifar10"]
    ).learning_rate == default_learning_rate("qsgld", "cifar10")
    assert (
        search.parse_args(["--smoke", "--learning-rate", "0.05"]).learning_rate
        == 0.05
    )
