"""Runs `examples/fit.py` with a `BackupAndRestore` that can be SIGKILLed at a chosen step.

Used by the tests to interrupt the fit script in the middle of an epoch, deterministically:
the only change to the script is that `keras.callbacks.BackupAndRestore` is replaced by a
subclass that, after optimizer step `FIT_KILL_AT_STEP`, writes the file `FIT_KILL_MARKER`
and waits to be killed, and that writes the final weights and optimizer variables to
`FIT_WEIGHTS_DIR/<optimizer>.npz` at the end of training (before the backup is deleted).
The arguments go to `examples.fit.main` unchanged; the repository root must be importable
(`tests/programs/runner.py` puts it on `PYTHONPATH`).

    FIT_KILL_AT_STEP=20 FIT_KILL_MARKER=m python tests/programs/fit_killable.py --dataset digits ...
"""

import os
import sys
import time

import keras
import numpy as np

from examples import fit


class KillableBackupAndRestore(keras.callbacks.BackupAndRestore):
    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        kill_at = os.environ.get("FIT_KILL_AT_STEP")
        if kill_at and int(
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
        ) == int(kill_at):
            with open(os.environ["FIT_KILL_MARKER"], "w") as f:
                f.write(f"{os.getpid()}\n")
            time.sleep(600)

    def on_train_end(self, logs=None):
        out = os.environ.get("FIT_WEIGHTS_DIR")
        if out:
            arrays = {
                f"weight/{i}": w for i, w in enumerate(self.model.get_weights())
            }
            arrays.update(
                {
                    f"optimizer/{i}": keras.ops.convert_to_numpy(v)
                    for i, v in enumerate(self.model.optimizer.variables)
                }
            )
            name = os.path.basename(os.path.normpath(self.backup_dir))
            np.savez(os.path.join(out, f"{name}.npz"), **arrays)
        super().on_train_end(logs)


keras.callbacks.BackupAndRestore = (
    KillableBackupAndRestore  # fit.py looks it up when it runs
)

if __name__ == "__main__":
    sys.exit(fit.main(sys.argv[1:]))
