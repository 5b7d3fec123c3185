"""The scripts of `examples/` and `tuning/` as a user runs them.

- `examples/fit.py` and `examples/demo.py` end to end (digits, mocked cifar10): the files
  they write, "test" naming, a rerun that starts its logs clean, presets and learning rates;
- `fit.py --backup-dir` killed with SIGKILL and rerun: bitwise the uninterrupted run, on
  every backend (in subprocesses: `tests/programs/fit_killable.py`);
- every script's user errors and Ctrl-C: exit code 2 or 130 and one line on stderr;
- JAX's `keras.distribution.DataParallel` recipe of docs/scaling.md.

The scripts' data pipelines are tf.data: the tests that train in this process run on
TensorFlow only (a PyTorch test process must not load TensorFlow); the subprocess tests run
on every backend, each script in a process of its own.
"""

import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tensorboard")
pytest.importorskip("sklearn")

from examples import demo, fit, fitting
from experiments.defaults import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_LEARNING_RATE_BY_DATASET,
    DEFAULT_MODEL,
    default_learning_rate,
)
from keras_qsgld.callbacks import MONITOR_KEYS
from tests.backends import BACKEND
from tests.programs import runner

ROOT = runner.ROOT
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--verbose", "0"]
# The C++ logs TensorFlow writes to stderr when it loads, whatever TF_CPP_MIN_LOG_LEVEL says
# ("WARNING: All log messages before absl::InitializeLog() ...", "I0000 00:00:17... port.cc:153] ...").
NATIVE_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)
# Trains in this process on tf.data, or checks what is the same on every backend.
tensorflow_only = pytest.mark.backends("tensorflow")


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def script_messages(stderr):
    """The lines of a script's stderr, without TensorFlow's native start-up logs."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not NATIVE_LOG.match(line)
    ]


# `python ARGS` from the repository root, output captured.
run_script = runner.capture


def events(folder):
    return sorted(
        p.relative_to(folder).parent.as_posix()
        for p in folder.rglob("events.out.tfevents.*")
    )


def check_run_files(run_dir, quantized):
    """The files one run writes; returns (rows of log.csv, metrics.json)."""
    rows = read_rows(run_dir / "log.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    assert events(run_dir / "tensorboard") == [
        "test",
        "train",
    ]  # one event file each
    columns = set(rows[0])
    assert {
        "epoch",
        "loss",
        "accuracy",
        "test_loss",
        "test_accuracy",
    } <= columns
    assert not any(
        c.startswith("val_") for c in columns
    )  # the test split is called "test"
    assert (set(MONITOR_KEYS) <= columns) == quantized
    assert len(rows) == metrics["epochs"] == len(metrics["history"]["loss"])
    for key in ("loss", "test_accuracy"):
        assert metrics["final"][key] == pytest.approx(float(rows[-1][key]))
    assert "best_val_accuracy" not in metrics and metrics["backend"] == BACKEND
    return rows, metrics


# -- the command line (no training) ----------------------------------------------------
def test_presets_and_learning_rates():
    config = fit.parse_args(["--preset", "paper-fashion-mnist"])
    assert (config.dataset, config.model, config.batch_size, config.epochs) == (
        "fashion_mnist",
        "cnn",
        100,
        200,
    )
    assert (config.augment, config.shuffle, config.drop_remainder) == (
        False,
        False,
        True,
    )
    assert config.gate_off_epoch() == pytest.approx(
        40.0
    )  # 0.2 x 200 epochs, as in the paper
    assert config.optimizers == ("qsgld", "sgd", "adam")
    assert [config.learning_rate(n) for n in config.optimizers] == [
        0.01,
        0.01,
        0.02,
    ]
    config = fit.parse_args(
        [
            "--preset",
            "paper-cifar100",
            "--epochs",
            "10",
            "--shuffle",
            "--lr",
            "0.3",
        ]
    )
    assert (config.dataset, config.model, config.depth, config.batch_size) == (
        "cifar100",
        "cifar_resnet",
        50,
        100,
    )
    assert (
        config.epochs == 10
        and config.gate_off_epoch() == pytest.approx(2.0)
        and config.shuffle is True
    )
    assert config.learning_rate("adam") == 0.3
    config = fit.parse_args(
        ["--lr", "qsgld=0.05,adam=0.002", "--optimizer", "qsgld,adam,sgd"]
    )
    assert [config.learning_rate(n) for n in config.optimizers] == [
        0.05,
        0.002,
        default_learning_rate("sgd", "digits"),
    ]
    assert (config.dataset, config.model_name()) == (
        "digits",
        DEFAULT_MODEL["digits"],
    )


def test_defaults_come_from_the_one_table():
    """Each optimizer's rate measured on the data set where there is one (the README's
    first comparison is fair), else its own default."""
    for dataset in ("digits", "mnist1d", "cifar10"):
        config = fit.parse_args(["--dataset", dataset])
        for n in fitting.OPTIMIZERS:
            measured = DEFAULT_LEARNING_RATE_BY_DATASET.get(dataset, {})
            assert config.learning_rate(n) == measured.get(
                n, DEFAULT_LEARNING_RATE[n]
            )
    assert set(DEFAULT_LEARNING_RATE_BY_DATASET["digits"]) >= {
        "qsgld",
        "sgd",
        "adam",
        "qadam",
    }
    # A preset's rate wins over the data set's.
    assert (
        fit.parse_args(["--preset", "paper-cifar10"]).learning_rate("sgd")
        == 0.01
    )
    for dataset, model in DEFAULT_MODEL.items():
        assert fit.parse_args(["--dataset", dataset]).model_name() == model
    assert (
        fit.parse_args(
            ["--dataset", "cifar10", "--model", "resnet50"]
        ).model_name()
        == "resnet50"
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--optimizer", "sgd,foo"],
            "argument --optimizer: expected distinct names",
        ),
        (
            ["--optimizer", "sgd,sgd"],
            "argument --optimizer: expected distinct names",
        ),
        (
            ["--lr", "qsgld=-1"],
            "argument --lr: expected a finite number > 0, received '-1'",
        ),
        (
            ["--lr", "x"],
            "argument --lr: expected a finite number > 0, received 'x'",
        ),
        (
            ["--epochs", "0"],
            "argument --epochs: expected an integer >= 1, received '0'",
        ),
        (
            ["--eta", "nan"],
            "argument --eta: expected a finite number > 0, received 'nan'",
        ),
    ],
)
def test_bad_command_lines(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        fit.parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fit.py: error: {message}") and err.count("\n") == 1


def test_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as info:
        fit.parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in (
        "--dataset",
        "--model",
        "--optimizer",
        "--lr",
        "--eta",
        "--base",
        "--kappa",
        "--tau0",
        "--gate",
        "--rounding",
        "--momentum",
        "--epochs",
        "--batch-size",
        "--seed",
        "--jit-compile",
        "--data-dir",
        "--output-dir",
        "--backup-dir",
        "--preset",
    ):
        assert flag in text
    assert (
        "deletes its previous log.csv and tensorboard/" in text
    )  # a rerun starts clean
    assert "KERAS_BACKEND=jax" in text


def test_every_optimizer_builds():
    config = fit.parse_args(["--optimizer", ",".join(fitting.OPTIMIZERS)])
    for name in config.optimizers:
        optimizer = fitting.make_optimizer(name, config, steps_per_epoch=7)
        assert float(optimizer.learning_rate) == pytest.approx(
            default_learning_rate(name, "digits")
        )
    qsgld = fitting.make_optimizer(
        "qsgld", fit.parse_args(["--rounding", "dithered", "--seed", "5"]), 7
    )
    assert qsgld.rounding == "dithered" and qsgld.seed == 5
    assert (
        qsgld.resolution.steps_per_epoch
        == qsgld.compensation.steps_per_epoch
        == 7
    )


# -- training in this process (TensorFlow) ---------------------------------------------
@tensorflow_only
def test_fit_on_digits_end_to_end_and_a_rerun_starts_clean(tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--max-examples",
        "256",
        "--output-dir",
        str(out),
    ] + QUICK
    assert fit.main(argv + ["--optimizer", "qsgld,sgd"]) == 0
    for name in ("qsgld", "sgd"):
        _, metrics = check_run_files(out / name, quantized=name == "qsgld")
        assert metrics["optimizer"] == name and metrics["dataset"] == "digits"
        assert metrics["steps_per_epoch"] == 4 and metrics["num_train"] == 256
        assert metrics["learning_rate"] == default_learning_rate(name, "digits")
    config = json.loads((out / "qsgld" / "metrics.json").read_text())[
        "optimizer_config"
    ]
    # the schedules count epochs of this data, tau0 = 0.2 x epochs, noise tracked for the monitor
    assert config["resolution"]["config"]["steps_per_epoch"] == 4
    assert config["compensation"]["config"]["steps_per_epoch"] == 4
    assert config["compensation"]["config"]["tau0"] == pytest.approx(0.2)
    assert config["track_noise"] is True
    table = (out / "comparison.md").read_text()
    lr = {
        n: f"{default_learning_rate(n, 'digits'):g}" for n in ("qsgld", "sgd")
    }
    assert (
        f"| qsgld | {lr['qsgld']} |" in table
        and f"| sgd | {lr['sgd']} |" in table
    )
    assert "| test loss | test acc |" in table and "best" not in table
    assert f"learning rates: qsgld {lr['qsgld']}, sgd {lr['sgd']}" in table
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert (
        "| optimizer | lr |" in capsys.readouterr().out
    )  # the table is printed

    # The same command again: the run's log.csv and tensorboard/ start anew.
    assert fit.main(argv + ["--optimizer", "qsgld", "--no-plots"]) == 0
    assert len(read_rows(out / "qsgld" / "log.csv")) == 1
    assert events(out / "qsgld" / "tensorboard") == ["test", "train"]


@tensorflow_only
def test_fit_on_mocked_cifar10_with_paper_preset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    out = tmp_path / "out"
    with tfds.testing.mock_data(
        num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        rc = fit.main(
            [
                "--preset",
                "paper-cifar10",
                "--optimizer",
                "qsgld",
                "--depth",
                "8",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--output-dir",
                str(out),
            ]
            + QUICK
        )
    assert rc == 0
    rows, metrics = check_run_files(out / "qsgld", quantized=True)
    assert (
        metrics["dataset"] == "cifar10" and metrics["model"] == "cifar_resnet8"
    )
    assert (
        metrics["num_train"] == 16 and metrics["steps_per_epoch"] == 2
    )  # drop_remainder
    assert metrics["learning_rate"] == 0.01
    assert (
        float(rows[0]["qsgld_qp"]) == 2.0**19
    )  # Qp at step 2 = epoch 1 > 0.718
    assert not (out / "comparison.md").exists()  # one optimizer: no comparison


@tensorflow_only
def test_demo_runs_and_names_the_learning_rates(tmp_path, capsys, monkeypatch):
    titles = []
    plot = fitting.plot_curves
    monkeypatch.setattr(
        fitting,
        "plot_curves",
        lambda h, path, title: (titles.append(title), plot(h, path, title)),
    )
    assert (
        demo.main(
            [
                "--output-dir",
                str(tmp_path),
                "--epochs",
                "1",
                "--max-examples",
                "128",
                "--verbose",
                "0",
            ]
        )
        == 0
    )
    table = (tmp_path / "comparison.md").read_text()
    for name in ("qsgld", "sgd", "adam"):
        assert f"| {name} |" in table
    assert (
        "learning rates: qsgld 0.05, sgd 0.05, adam 0.001" in titles[-1]
    )  # comparison.png's title
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert "Qp = " in capsys.readouterr().out


# -- fit.py on every backend (subprocesses) --------------------------------------------
def test_fit_module_smoke_run(tmp_path):
    """`python -m examples.fit` on this backend: trains, and says which backend it ran on."""
    result = run_script(
        "-m",
        "examples.fit",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--max-examples",
        "128",
        "--no-plots",
        "--output-dir",
        tmp_path,
        *QUICK,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    metrics = json.loads((tmp_path / "qsgld" / "metrics.json").read_text())
    assert metrics["backend"] == BACKEND and metrics["steps_per_epoch"] == 1
    assert f"{BACKEND} backend" in result.stdout


FIT_ARGS = [
    "--dataset",
    "digits",
    "--optimizer",
    "qsgld",
    "--epochs",
    "3",
    "--augment",
    "--no-plots",
    "--verbose",
    "0",
]
KILL_AT = 30  # 12 steps per epoch (1437 digits, batch 128): in epoch 2, after 2 backups


def test_fit_backup_dir_resumes_bitwise_after_sigkill(tmp_path):
    """`fit.py --backup-dir`, killed in epoch 2 and run again, ends bitwise where an
    uninterrupted run ends, with the same log. The training set is reshuffled and augmented
    each epoch: the resumed epochs must get the data orders of the uninterrupted run, on
    every backend (Keras' epoch iterators differ between them)."""
    full, resumed = tmp_path / "w_full", tmp_path / "w_resumed"
    full.mkdir()
    resumed.mkdir()
    runner.run(
        "fit_killable.py",
        *FIT_ARGS,
        "--output-dir",
        tmp_path / "o_full",
        "--backup-dir",
        tmp_path / "b_full",
        env=runner.script_env(FIT_WEIGHTS_DIR=full),
        log=tmp_path / "full.log",
    )
    command = [
        *FIT_ARGS,
        "--output-dir",
        tmp_path / "o_resumed",
        "--backup-dir",
        tmp_path / "b_resumed",
    ]
    proc = runner.start(
        "fit_killable.py",
        *command,
        log=tmp_path / "killed.log",
        env=runner.script_env(
            FIT_KILL_AT_STEP=KILL_AT, FIT_KILL_MARKER=tmp_path / "marker"
        ),
    )
    try:
        runner.wait_for(tmp_path / "marker", proc, timeout=240)
    finally:
        assert runner.kill(proc) == -signal.SIGKILL
    meta = json.loads(
        (
            tmp_path / "b_resumed" / "qsgld" / "training_metadata.json"
        ).read_text()
    )
    assert (
        meta["epoch"] == 2
    )  # the backup of the end of epoch 1; the kill came in epoch 2
    assert len(read_rows(tmp_path / "o_resumed" / "qsgld" / "log.csv")) == 2
    runner.run(
        "fit_killable.py",
        *command,
        env=runner.script_env(FIT_WEIGHTS_DIR=resumed),
        log=tmp_path / "resumed.log",
    )
    assert "resuming after epoch 2" in (tmp_path / "resumed.log").read_text()
    a, b = np.load(full / "qsgld.npz"), np.load(resumed / "qsgld.npz")
    assert sorted(a.files) == sorted(b.files) and any(
        k.startswith("optimizer/") for k in a.files
    )
    for (
        key
    ) in a.files:  # the weights and the optimizer variables (iterations, ...)
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"
    # The resumed log continues the interrupted one: the same rows and values.
    log = (tmp_path / "o_full" / "qsgld" / "log.csv").read_text()
    assert (tmp_path / "o_resumed" / "qsgld" / "log.csv").read_text() == log
    assert not (
        tmp_path / "b_resumed" / "qsgld"
    ).exists()  # deleted after the finished fit


# -- user errors and Ctrl-C: one line on stderr ----------------------------------------
def no_network_env():
    """The tests' environment with every download going to a closed local port."""
    proxy = f"http://127.0.0.1:{runner.free_ports(1)[0]}"
    return runner.script_env(
        https_proxy=proxy,
        http_proxy=proxy,
        HTTPS_PROXY=proxy,
        HTTP_PROXY=proxy,
        no_proxy="",
        NO_PROXY="",
    )


# The one-line machinery is the same on every backend; on JAX and PyTorch only the path that
# loads data (TensorFlow after the backend) runs again.
@pytest.mark.parametrize(
    "args, expected",
    [
        pytest.param(
            [
                "-m",
                "examples.fit",
                "--dataset",
                "cifar10",
                "--data-dir",
                "{tmp}",
            ],
            "fit.py: error: Data set 'cifar10' is not prepared",
            id="fit-no-data",
        ),
        pytest.param(
            ["-m", "examples.fit", "--base", "0.5", "--no-plots"],
            "fit.py: error: Argument `base` must be",
            id="fit-setting",
            marks=tensorflow_only,
        ),
        pytest.param(
            ["-m", "examples.demo", "--epochs", "x"],
            "demo.py: error: argument --epochs: expected an integer >= 1, received 'x'",
            id="demo-args",
            marks=tensorflow_only,
        ),
        pytest.param(
            ["-m", "examples.distributed", "--optimizer", "sgd"],
            "distributed.py: error: argument --optimizer: invalid choice: 'sgd'",
            id="distributed-args",
            marks=tensorflow_only,
        ),
        pytest.param(
            [
                "-m",
                "tuning.search",
                "--dataset",
                "cifar10",
                "--data-dir",
                "{tmp}",
            ],
            "search.py: error: Data set 'cifar10' is not prepared",
            id="search-no-data",
            marks=tensorflow_only,
        ),
        pytest.param(
            ["-m", "tuning.search", "--eta-min", "8", "--eta-max", "4"],
            "search.py: error: Argument `eta_min` must be <= `eta_max`",
            id="search-space",
            marks=tensorflow_only,
        ),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(args, expected, tmp_path):
    result = run_script(
        *(a.format(tmp=tmp_path) for a in args), env=no_network_env()
    )
    lines = script_messages(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    if "not prepared" in expected:
        assert "--data-dir" in lines[0] and str(tmp_path) in lines[0]


@tensorflow_only
def test_changed_search_settings_are_one_line(tmp_path):
    project = tmp_path / "digits_mlp_random"
    project.mkdir()
    args = [
        "-m",
        "tuning.search",
        "--smoke",
        "--tuner",
        "random",
        "--max-examples",
        "64",
        "--directory",
        tmp_path,
        "--verbose",
        "0",
    ]
    settings = {
        "batch_size": 16
    }  # the search there was started with another batch size
    (project / "qsgld_search_settings.json").write_text(json.dumps(settings))
    result = run_script(*args)
    lines = script_messages(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(
        f"search.py: error: The search in {project} was started with other settings"
    )
    assert "batch_size: 16 -> 64" in lines[0] and "--overwrite" in lines[0]


@tensorflow_only  # whatever the tests' backend, it runs the script on JAX
@pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="needs jax installed"
)
def test_distributed_refuses_another_backend_in_one_line():
    result = run_script(
        "-m",
        "examples.distributed",
        "--epochs",
        "1",
        env=runner.script_env(KERAS_BACKEND="jax"),
    )
    lines = script_messages(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith(
        "distributed.py: error: tf.distribute needs the TensorFlow backend; KERAS_BACKEND=jax"
    ), lines


def interrupt_when(ready, args, timeout=240):
    """Starts `python ARGS`, sends it SIGINT (Ctrl-C) once `ready()`; returns (code, stderr lines)."""
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)],
        cwd=ROOT,
        env=runner.script_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while (
            not ready() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        assert proc.poll() is None, (
            f"it ended ({proc.returncode}) too early: {proc.stderr.read()[-3000:]}"
        )
        assert ready(), f"not ready within {timeout} s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        runner.kill(proc)
    return proc.returncode, script_messages(err)


def test_ctrl_c_in_fit_says_how_to_resume(tmp_path):
    """Ctrl-C as `fit` starts (on JAX: while XLA compiles, where JAX would drop it)."""
    backup = tmp_path / "backup"
    code, lines = interrupt_when(
        (tmp_path / "out" / "qsgld").exists,  # made just before `fit`
        [
            "-m",
            "examples.fit",
            "--dataset",
            "digits",
            "--epochs",
            "100000",
            "--max-examples",
            "256",
            "--no-plots",
            "--verbose",
            "0",
            "--output-dir",
            tmp_path / "out",
            "--backup-dir",
            backup,
        ],
    )
    assert (code, lines) == (
        130,
        [
            f"fit.py: interrupted; rerun the same command to resume from the last finished "
            f"epoch (backups in {backup})"
        ],
    )


def test_ctrl_c_in_search_says_how_to_resume(tmp_path):
    code, lines = interrupt_when(
        lambda: any(
            (tmp_path / "digits_mlp_random").glob("trial_*")
        ),  # the first trial has begun
        [
            "-m",
            "tuning.search",
            "--smoke",
            "--tuner",
            "random",
            "--max-trials",
            "1000",
            "--epochs",
            "1000",
            "--max-examples",
            "128",
            "--directory",
            tmp_path,
            "--verbose",
            "0",
        ],
    )
    assert (code, lines) == (
        130,
        [
            "search.py: interrupted; rerun the same command to resume the search; "
            "finished trials are kept (--overwrite starts anew)"
        ],
    )


SWALLOWED_CTRL_C = """
import os, signal, sys, time
from experiments import cli

class Finalizer:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while a finalizer runs: Python drops it
        time.sleep(0.5)

def run():
    Finalizer()  # dropped at once: its __del__ gets the Ctrl-C, which Python then drops
    try:
        time.sleep(5)
    except KeyboardInterrupt:
        pass  # as a bare `except:` in a library does
    time.sleep(60)  # only a repeated interrupt ends this in time

sys.exit(cli.run_script(run, prog="x.py", interrupted="resume hint"))
"""


@tensorflow_only  # `cli.run_script` alone, the same on every backend
def test_ctrl_c_that_a_library_swallows_still_ends_the_script():
    """JAX drops a Ctrl-C that lands in its bare `except:`s or its GC callback (a KerasTuner
    search on JAX went on running): `run_script` raises it again until it gets through, and
    the lost ones print nothing."""
    start = time.monotonic()
    result = run_script("-c", SWALLOWED_CTRL_C, timeout=120)
    assert result.returncode == 130, result.stderr
    assert script_messages(result.stderr) == ["x.py: interrupted; resume hint"]
    assert time.monotonic() - start < 50


SWALLOWED_CTRL_C_THEN_ERROR = """
import os, signal, sys
from experiments import cli

def run():
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except:  # as Keras' `pythonify_logs` does, leaving a tensor in the logs
        pass
    raise TypeError("Cannot iterate over a scalar tensor.")  # as `CSVLogger` then does

sys.exit(cli.run_script(run, prog="x.py", interrupted="resume hint"))
"""


@tensorflow_only  # `cli.run_script` alone, the same on every backend
def test_error_after_a_swallowed_ctrl_c_is_the_interruption():
    """A Ctrl-C that Keras' bare `except:` swallows can make the next callback fail (it broke
    `test_ctrl_c_in_fit_says_how_to_resume` in CI): after a Ctrl-C, that error is reported
    as the interruption."""
    result = run_script("-c", SWALLOWED_CTRL_C_THEN_ERROR, timeout=120)
    assert (result.returncode, script_messages(result.stderr)) == (
        130,
        ["x.py: interrupted; resume hint"],
    ), result.stderr


CTRL_C_THROUGH_PYRUN_STRING = """
import ctypes, sys
from experiments import cli

run_string = ctypes.pythonapi.PyRun_String  # as TensorFlow's and optree's C++ run Python
run_string.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]
run_string.restype = ctypes.py_object

def run():
    run_string(b"import os, signal, time\\nos.kill(os.getpid(), signal.SIGINT)\\ntime.sleep(60)",
               257, {}, {})  # 257: Py_file_input

sys.exit(cli.run_script(run, prog="x.py", interrupted="resume hint"))
"""


@tensorflow_only  # `cli.run_script` alone, the same on every backend
def test_ctrl_c_through_c_code_that_runs_python_still_exits_130(tmp_path):
    """A Ctrl-C that passes through `PyRun_String` leaves CPython's "unhandled Ctrl-C" flag
    set, and a script run with `-m` then died by SIGINT (-2) after its message (it broke
    `test_ctrl_c_in_search_says_how_to_resume` in CI)."""
    (tmp_path / "ctrl_c_script.py").write_text(CTRL_C_THROUGH_PYRUN_STRING)
    env = runner.script_env()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    result = run_script("-m", "ctrl_c_script", env=env, timeout=120)
    assert (result.returncode, script_messages(result.stderr)) == (
        130,
        ["x.py: interrupted; resume hint"],
    ), result.stderr


C_PRINTS_ERRORS = """
import ctypes, os, signal, sys, time
from experiments import cli

def c_prints(code):  # C code that runs Python and reports its error with `PyErr_Print`
    ctypes.pythonapi.PyRun_SimpleString(code.encode())

def run():
    c_prints("raise ValueError('not from a Ctrl-C')")
    # What TensorFlow's `Flatten` printed when a Ctrl-C landed in an import it made:
    c_prints("raise SystemError('__import__ returned a result with an exception set') "
             "from KeyboardInterrupt()")
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)

sys.exit(cli.run_script(run, prog="x.py", interrupted="resume hint"))
"""


@tensorflow_only  # `cli.run_script` alone, the same on every backend
def test_errors_that_c_code_prints_because_of_ctrl_c_are_not_shown():
    """A Ctrl-C inside TensorFlow's C `Flatten` printed a SystemError traceback above the
    one-line message (it broke `test_ctrl_c_in_fit_says_how_to_resume` in CI); errors that
    C code prints for other reasons are still shown."""
    result = run_script("-c", C_PRINTS_ERRORS, timeout=120)
    lines = script_messages(result.stderr)
    assert result.returncode == 130, result.stderr
    assert lines[-2:] == [
        "ValueError: not from a Ctrl-C",
        "x.py: interrupted; resume hint",
    ], result.stderr
    assert "SystemError" not in result.stderr


@tensorflow_only  # `cli.run_script` alone, the same on every backend
def test_an_error_without_ctrl_c_keeps_its_traceback():
    result = run_script(
        "-c",
        "import sys\nfrom experiments import cli\n"
        "def run():\n    raise TypeError('a bug')\n"
        "sys.exit(cli.run_script(run, prog='x.py'))",
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert script_messages(result.stderr)[-1] == "TypeError: a bug"


# -- JAX: keras.distribution.DataParallel (docs/scaling.md) ----------------------------
def scaling_guide_snippet():
    text = (ROOT / "docs" / "scaling.md").read_text()
    blocks = re.findall(
        r"<!-- tested: test_jax_data_parallel_matches_one_device -->\n```python\n(.*?)```",
        text,
        flags=re.S,
    )
    assert len(blocks) == 1, (
        "docs/scaling.md must hold the DataParallel snippet, marked for this test"
    )
    return blocks[0]


REFERENCE = """
# -- appended by tests/scripts/test_examples.py: the same training on one device ------------------
parallel_devices = len(model.weights[0].value.sharding.device_set)
parallel = model.get_weights()
keras.distribution.set_distribution(None)
single = train().get_weights()
np.savez(OUT, parallel_devices=parallel_devices, qp=float(model.optimizer.resolution_at(model.optimizer.schedule_step)),
         **{f"parallel/{i}": w for i, w in enumerate(parallel)}, **{f"single/{i}": w for i, w in enumerate(single)})
"""


@pytest.mark.backends("jax")
def test_jax_data_parallel_matches_one_device(tmp_path):
    """The guide's DataParallel run over 2 CPU devices, as written, against the same training
    on one device: the batches are split, the gradients all-reduced, so the weights agree up to
    float summation order (a few grid cells 1/Qp at most)."""
    out = tmp_path / "weights.npz"
    code = scaling_guide_snippet() + REFERENCE.replace("OUT", repr(str(out)))
    env = runner.script_env(
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    result = run_script("-c", code, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    weights = np.load(out)
    assert (
        int(weights["parallel_devices"]) == 2
    )  # the model was replicated over two devices
    qp = float(weights["qp"])
    n = len([k for k in weights.files if k.startswith("parallel/")])
    assert n == 4
    for i in range(n):
        cells = (
            np.abs(
                weights[f"parallel/{i}"].astype(np.float64)
                - weights[f"single/{i}"].astype(np.float64)
            )
            * qp
        )
        assert cells.max() <= 4, (i, cells.max())
        assert np.mean(cells > 0) <= 0.05


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize(
    "module, args, message",
    [
        (
            "examples.fit",
            ["--epochs", "0"],
            "fit.py: error: argument --epochs: expected an integer >= 1, received '0'",
        ),
        (
            "tuning.search",
            ["--max-trials", "0"],
            "search.py: error: argument --max-trials: expected an integer >= 1, received '0'",
        ),
    ],
)
def test_a_bad_flag_is_exactly_one_line_on_stderr(module, args, message):
    """Not a single TensorFlow start-up line before it (the packages import TensorFlow
    quietly: `experiments.quiet_startup`)."""
    result = run_script("-m", module, *args)
    assert result.returncode == 2
    assert result.stderr == message + "\n"


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize(
    "path",
    [
        "examples/fit.py",
        "examples/sample.py",
        "examples/regression.py",
        "examples/demo.py",
        "examples/distributed.py",
        "tuning/search.py",
        "tuning/learning_rates.py",
    ],
)
def test_a_script_run_as_a_file_says_to_run_it_as_a_module(path):
    """`python examples/fit.py` cannot import the repository's `experiments/` kit: one line
    naming the module form, exit code 2, not a ModuleNotFoundError."""
    module = path.removesuffix(".py").replace("/", ".")
    result = run_script(path, "--help", env=runner.script_env(PYTHONPATH=""))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"{path.split('/')[-1]}: error: run it as a module, from the repository "
        f"root: python -m {module}\n"
    )


@pytest.mark.backends("jax")
def test_regression_example_runs_its_chains_against_the_closed_form(tmp_path):
    """`python -m examples.regression`, small: its chains, diagnostics and the closed-form
    comparison end in a table (the numbers of docs/sampling.md come from full runs)."""
    result = run_script(
        "-m",
        "examples.regression",
        "--updates",
        "1000",
        "--burn-in",
        "100",
        "--chains",
        "2",
        "--output-dir",
        tmp_path,
        env=runner.script_env(KERAS_BACKEND="jax"),
    )
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "results.md").read_text()
    assert "| lr | batch | chains x updates |" in table
    assert "| 0.05 | 442 | 2 x 1000 |" in table
    assert (tmp_path / "results.json").exists()
