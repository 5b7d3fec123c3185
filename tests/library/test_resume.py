"""Fault tolerance: a training process SIGKILLed mid-epoch resumes bitwise-exactly.

QSGLD draws no random numbers and its schedules read only `optimizer.iterations`, so the
whole state of a run is the weights, the optimizer variables and the position in the data.
Each test trains in subprocesses (`tests/programs/`): an uninterrupted run, a run killed
with SIGKILL in the middle of an epoch (the child stops after a chosen step, the test
sends the signal), and a rerun of the same command that resumes from the backup.
"""

import json
import shutil

import numpy as np
import pytest

from tests.programs import runner

STEPS_PER_EPOCH = 8  # resume_train.py: 256 examples, batch 32
EPOCHS = 3
SAVE_FREQ = 3
KILL_AT = 13  # epoch 1, batch 4: after the backup of step 12 (epoch 1, batch 3)


def _load(path):
    data = np.load(path)
    return {k: data[k] for k in data.files}


def _assert_bitwise_equal(a, b, prefixes=("weight/", "optimizer/")):
    keys = sorted(k for k in a if k.startswith(prefixes))
    assert keys and keys == sorted(k for k in b if k.startswith(prefixes))
    for key in keys:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (
            key
        )
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"


def _kill_mid_run(script, args, marker, log, env=None, timeout=180):
    """Starts `script`, waits until it reports it passed the kill step, SIGKILLs it."""
    proc = runner.start(script, *args, env=env, log=log)
    try:
        runner.wait_for(marker, proc, timeout)
    finally:
        returncode = runner.kill(proc)
    assert returncode == -9, f"expected death by SIGKILL, got {returncode}"


@pytest.fixture(scope="module")
def killed_backup(tmp_path_factory):
    """An uninterrupted run, and the backup directory left by a run SIGKILLed at step 13."""
    tmp = tmp_path_factory.mktemp("resume")
    runner.run(
        "resume_train.py",
        "--backup-dir",
        tmp / "b_full",
        "--out",
        tmp / "full.npz",
        log=tmp / "full.log",
    )
    _kill_mid_run(
        "resume_train.py",
        [
            "--backup-dir",
            tmp / "b_killed",
            "--out",
            tmp / "never.npz",
            "--kill-at-step",
            KILL_AT,
            "--marker",
            tmp / "marker",
        ],
        tmp / "marker",
        tmp / "killed.log",
    )
    assert not (tmp / "never.npz").exists()
    return tmp


def test_killed_mid_epoch_after_a_mid_epoch_backup(killed_backup):
    meta = json.loads(
        (killed_backup / "b_killed" / "training_metadata.json").read_text()
    )
    # BackupAndRestore(save_freq=3) saved after global step 12 = epoch 1, batch index 3:
    # mid-epoch, and the kill came one step later, before the next backup.
    assert meta == {
        "epoch": 12 // STEPS_PER_EPOCH,
        "batch": 12 % STEPS_PER_EPOCH - 1,
    }
    assert (killed_backup / "b_killed" / "latest.weights.h5").stat().st_size > 0


def test_resume_after_sigkill_is_bitwise_identical(killed_backup):
    tmp = killed_backup
    backup = tmp / "b_exact"
    shutil.copytree(tmp / "b_killed", backup)
    runner.run(
        "resume_train.py",
        "--backup-dir",
        backup,
        "--out",
        tmp / "resumed.npz",
        log=tmp / "resumed.log",
    )
    full, resumed = _load(tmp / "full.npz"), _load(tmp / "resumed.npz")
    assert int(full["resumed_from"]) == 0
    assert int(resumed["resumed_from"]) == 12
    # Weights, iterations, learning rate, generator state and momentum slots: bit for bit.
    _assert_bitwise_equal(full, resumed)
    assert (
        not backup.exists()
    )  # BackupAndRestore deletes its backup after a finished fit


def test_stock_backup_and_restore_replays_the_interrupted_epoch(killed_backup):
    """Why resume_train.py needs `ExactResume`: Keras restores only the epoch number, so
    the 4 steps of epoch 1 already in the backup are run again."""
    tmp = killed_backup
    backup = tmp / "b_stock"
    shutil.copytree(tmp / "b_killed", backup)
    runner.run(
        "resume_train.py",
        "--mode",
        "stock",
        "--backup-dir",
        backup,
        "--out",
        tmp / "stock.npz",
        log=tmp / "stock.log",
    )
    full, stock = _load(tmp / "full.npz"), _load(tmp / "stock.npz")
    # optimizer/0 is `iterations`: 12 restored + (3 - 1) epochs of 8 steps.
    assert int(full["optimizer/0"]) == EPOCHS * STEPS_PER_EPOCH
    assert int(stock["optimizer/0"]) == 12 + (EPOCHS - 1) * STEPS_PER_EPOCH
    assert not np.array_equal(full["weight/0"], stock["weight/0"])
