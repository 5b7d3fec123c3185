"""`examples/fit.py` and `examples/demo.py` end to end (one short epoch on digits and on mocked
cifar10, checking the files they write), presets, the clear error when data can't be
downloaded, and resuming with --backup-dir."""

import csv
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("tensorboard")
tfds = pytest.importorskip("tensorflow_datasets")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import demo  # noqa: E402
import fit  # noqa: E402

from keras_qsgld.experiments import datasets  # noqa: E402
from keras_qsgld.callbacks import MONITOR_KEYS  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = ["--verbose", "0"]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_run_files(run_dir, quantized):
    """The files one run writes; returns (rows of log.csv, metrics.json)."""
    rows = read_rows(run_dir / "log.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "curves.png").read_bytes()[:8] == PNG_MAGIC
    events = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert {e.parent.name for e in events} == {"train", "validation"}
    columns = set(rows[0])
    assert {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"} <= columns
    assert (set(MONITOR_KEYS) <= columns) == quantized
    assert len(rows) == metrics["epochs"] == len(metrics["history"]["loss"])
    for key in ("loss", "val_accuracy"):
        assert metrics["final"][key] == pytest.approx(float(rows[-1][key]))
    return rows, metrics


def test_fit_on_digits_end_to_end(tmp_path, capsys):
    out = tmp_path / "out"
    rc = fit.main(
        ["--dataset", "digits", "--optimizer", "qsgld,sgd", "--epochs", "1", "--batch-size", "64",
         "--max-examples", "256", "--output-dir", str(out)] + QUICK
    )
    assert rc == 0
    steps = math.ceil(256 / 64)
    for name in ("qsgld", "sgd"):
        rows, metrics = check_run_files(out / name, quantized=name == "qsgld")
        assert metrics["optimizer"] == name and metrics["dataset"] == "digits"
        assert metrics["steps_per_epoch"] == steps and metrics["num_train"] == 256
        assert metrics["learning_rate"] == fit.DEFAULT_LR[name]
    config = json.loads((out / "qsgld" / "metrics.json").read_text())["optimizer_config"]
    # the schedules count epochs of this data, tau0 = 0.2 x epochs, noise tracked for the monitor
    assert config["resolution"]["config"]["steps_per_epoch"] == steps
    assert config["compensation"]["config"]["steps_per_epoch"] == steps
    assert config["compensation"]["config"]["tau0"] == pytest.approx(0.2)
    assert config["track_noise"] is True
    table = (out / "comparison.md").read_text()
    assert "| qsgld | 0.01 |" in table and "| sgd | 0.01 |" in table
    assert (out / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert "| optimizer | lr |" in capsys.readouterr().out  # the table is printed


def test_fit_on_mocked_cifar10_with_paper_preset(tmp_path):
    out = tmp_path / "out"
    with tfds.testing.mock_data(num_examples=16, policy=tfds.testing.MockPolicy.USE_CODE):
        rc = fit.main(
            ["--preset", "paper-cifar10", "--optimizer", "qsgld", "--depth", "8", "--epochs", "1",
             "--batch-size", "8", "--output-dir", str(out)] + QUICK
        )
    assert rc == 0
    rows, metrics = check_run_files(out / "qsgld", quantized=True)
    assert metrics["dataset"] == "cifar10" and metrics["model"] == "cifar_resnet8"
    assert metrics["num_train"] == 16 and metrics["steps_per_epoch"] == 2  # drop_remainder
    assert metrics["learning_rate"] == 0.01
    assert float(rows[0]["qsgld_qp"]) == 2.0**19  # Qp at step 2 = epoch 1 > 0.718
    assert not (out / "comparison.md").exists()  # one optimizer: no comparison


def test_presets_and_learning_rates():
    args = fit.parse_args(["--preset", "paper-fashion-mnist"])
    assert (args.dataset, args.model, args.batch_size, args.epochs) == ("fashion_mnist", "cnn", 100, 200)
    assert (args.augment, args.shuffle, args.drop_remainder) == (False, False, True)
    assert args.tau0 == pytest.approx(40.0)  # 0.2 x 200 epochs, as in the paper
    assert args.optimizers == ["qsgld", "sgd", "adam"]
    assert [fit.learning_rate(args, n) for n in args.optimizers] == [0.01, 0.01, 0.02]
    args = fit.parse_args(["--preset", "paper-cifar100", "--epochs", "10", "--shuffle", "--lr", "0.3"])
    assert (args.dataset, args.model, args.depth, args.batch_size) == ("cifar100", "cifar_resnet", 50, 100)
    assert args.epochs == 10 and args.tau0 == pytest.approx(2.0) and args.shuffle is True
    assert fit.learning_rate(args, "adam") == 0.3
    args = fit.parse_args(["--lr", "qsgld=0.05,adam=0.002", "--optimizer", "qsgld,adam,sgd"])
    assert [fit.learning_rate(args, n) for n in args.optimizers] == [0.05, 0.002, 0.01]
    assert (args.dataset, args.model) == ("digits", "mlp")


@pytest.mark.parametrize(
    "argv", [["--optimizer", "sgd,foo"], ["--lr", "qsgld=-1"], ["--lr", "x"], ["--epochs", "0"],
             ["--optimizer", "sgd,sgd"]],
)
def test_bad_command_lines(argv, capsys):
    with pytest.raises(SystemExit) as info:
        fit.parse_args(argv)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_help_lists_every_hyperparameter(capsys):
    with pytest.raises(SystemExit) as info:
        fit.parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--model", "--optimizer", "--lr", "--eta", "--base", "--kappa",
                 "--tau0", "--gate", "--rounding", "--momentum", "--epochs", "--batch-size",
                 "--seed", "--jit-compile", "--data-dir", "--output-dir", "--backup-dir", "--preset"):
        assert flag in text


def test_every_optimizer_builds():
    args = fit.parse_args(["--optimizer", ",".join(fit.OPTIMIZERS)])
    for name in args.optimizers:
        optimizer = fit.make_optimizer(name, args, steps_per_epoch=7)
        assert optimizer.learning_rate is not None
    qsgld = fit.make_optimizer("qsgld", fit.parse_args(["--rounding", "dithered", "--seed", "5"]), 7)
    assert qsgld.rounding == "dithered"


def test_clear_error_when_data_cannot_be_downloaded(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(datasets, "host_reachable", lambda host, port, timeout=5.0: False)
    rc = fit.main(["--dataset", "cifar10", "--data-dir", str(tmp_path), "--output-dir",
                   str(tmp_path / "out")] + QUICK)
    assert rc == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "Traceback" not in err


def test_backup_dir_resumes_after_a_crash(tmp_path, capsys):
    argv = ["--dataset", "digits", "--optimizer", "qsgld", "--epochs", "2", "--batch-size", "128",
            "--max-examples", "256", "--no-plots", "--output-dir", str(tmp_path / "out"),
            "--backup-dir", str(tmp_path / "backup"), "--verbose", "2"]
    assert fit.main(argv + ["--simulate-crash-after", "1"]) == 3
    assert len(read_rows(tmp_path / "out" / "qsgld" / "log.csv")) == 1
    assert any((tmp_path / "backup" / "qsgld").iterdir())
    capsys.readouterr()
    assert fit.main(argv) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "Epoch 2/2" in out and "Epoch 1/2" not in out  # not run again
    rows = read_rows(tmp_path / "out" / "qsgld" / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # the log continues
    assert not (tmp_path / "backup" / "qsgld").exists() or not any((tmp_path / "backup" / "qsgld").iterdir())


def test_demo_runs(tmp_path, capsys):
    assert demo.main(["--output-dir", str(tmp_path), "--epochs", "1", "--max-examples", "128"]) == 0
    table = (tmp_path / "comparison.md").read_text()
    for name in ("qsgld", "sgd", "adam"):
        assert f"| {name} |" in table
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG_MAGIC
    assert "Qp = " in capsys.readouterr().out


def test_backup_dir_resume_is_exact_with_shuffling(tmp_path):
    """The resumed epochs see the shuffle orders of an uninterrupted run: same losses, bitwise."""
    argv = ["--dataset", "digits", "--optimizer", "qsgld", "--epochs", "3", "--batch-size", "64",
            "--max-examples", "256", "--no-plots", "--verbose", "0"]
    assert fit.main(argv + ["--output-dir", str(tmp_path / "full")]) == 0
    resumed = argv + ["--output-dir", str(tmp_path / "resumed"), "--backup-dir", str(tmp_path / "b")]
    assert fit.main(resumed + ["--simulate-crash-after", "1"]) == 3
    assert fit.main(resumed) == 0
    full = read_rows(tmp_path / "full" / "qsgld" / "log.csv")
    again = read_rows(tmp_path / "resumed" / "qsgld" / "log.csv")
    assert [r["loss"] for r in again] == [r["loss"] for r in full]
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in full]
