"""Runs `examples/fit.py` with a `BackupAndRestore` that can be SIGKILLed at a chosen step.

Used by `tests/test_resume.py` to interrupt the fit script in the middle of an epoch,
deterministically: the only change to the script is that `keras.callbacks.BackupAndRestore`
is replaced by a subclass that, after optimizer step `FIT_KILL_AT_STEP`, writes the file
`FIT_KILL_MARKER` and waits to be killed, and that writes the final weights and optimizer
variables to `FIT_WEIGHTS_DIR/<optimizer>.npz` at the end of training (before the backup
is deleted). Every other argument goes to the fit script unchanged.

    FIT_KILL_AT_STEP=20 FIT_KILL_MARKER=m python tests/scripts/fit_killable.py --dataset digits ...
"""

import os
import pathlib
import runpy
import sys
import time

import keras
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


class KillableBackupAndRestore(keras.callbacks.BackupAndRestore):
    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        kill_at = os.environ.get("FIT_KILL_AT_STEP")
        if kill_at and int(self.model.optimizer.iterations.numpy()) == int(kill_at):
            with open(os.environ["FIT_KILL_MARKER"], "w") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(600)

    def on_train_end(self, logs=None):
        out = os.environ.get("FIT_WEIGHTS_DIR")
        if out:
            arrays = {f"weight/{i}": w for i, w in enumerate(self.model.get_weights())}
            arrays.update(
                {f"optimizer/{i}": np.asarray(v.numpy())
                 for i, v in enumerate(self.model.optimizer.variables)}
            )
            np.savez(os.path.join(out, os.path.basename(os.path.normpath(self.backup_dir)) + ".npz"),
                     **arrays)
        super().on_train_end(logs)


keras.callbacks.BackupAndRestore = KillableBackupAndRestore
sys.argv = [str(ROOT / "examples" / "fit.py"), *sys.argv[1:]]
sys.path.insert(0, str(ROOT))
runpy.run_path(sys.argv[0], run_name="__main__")
