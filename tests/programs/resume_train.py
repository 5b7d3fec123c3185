"""Trains a small model with QSGLD and `keras.callbacks.BackupAndRestore(save_freq=N)`.

Run as a subprocess by `tests/library/test_resume.py`, which SIGKILLs it in the middle of an epoch
and runs it again to resume. With `--kill-at-step K` the process writes `--marker` after
optimizer step K and waits to be killed. At the end it writes the final model weights and
every optimizer variable to `--out` (.npz).

Keras 3's `BackupAndRestore` with `save_freq` in batches saves the weights and optimizer
state mid-epoch but, on restart, reruns the interrupted epoch from its first batch
(`model._initial_epoch` is all it restores): the batches of that epoch that were already
applied are applied twice. `--mode stock` shows that. `--mode exact` (the recipe) resumes
exactly, because QSGLD draws no random numbers and its schedules read only
`optimizer.iterations`:

1. the data is a deterministic stream with batch `t` at optimizer step `t` (here a
   generator over a per-epoch permutation drawn from the seed, on every backend; with
   tf.data, `dataset.repeat()` of a seeded shuffle), and the restarted process skips the
   `done` steps the backup holds;
2. `ExactResume`, placed after `BackupAndRestore`, starts the epoch loop at `done // S`
   and stops training after exactly `epochs * S` optimizer steps.

Epoch boundaries of the resumed run are shifted by `done % S` steps (the epoch-end logs
fall at other steps); the weights are bitwise those of the uninterrupted run.

    python tests/programs/resume_train.py --backup-dir B --out final.npz [--kill-at-step 13 --marker M]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

N_EXAMPLES, FEATURES, CLASSES = 256, 8, 3


def make_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N_EXAMPLES, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, CLASSES))
    y = np.argmax(
        x @ w + 0.3 * rng.normal(size=(N_EXAMPLES, CLASSES)), axis=1
    ).astype("int32")
    return x, y


def batch_indices(seed, epochs, batch_size):
    """Row indices of the batch at every optimizer step: a fresh permutation per epoch."""
    rng = np.random.default_rng(seed + 1)
    steps = N_EXAMPLES // batch_size
    return np.concatenate(
        [
            rng.permutation(N_EXAMPLES)[: steps * batch_size].reshape(
                steps, batch_size
            )
            for _ in range(epochs)
        ]
    )


def make_exact_resume(steps_per_epoch, total_steps):
    import keras

    class ExactResume(keras.callbacks.Callback):
        """Aligns `fit` with the restored `optimizer.iterations` (put it after BackupAndRestore)."""

        def on_train_begin(self, logs=None):
            done = int(self.model.optimizer.iterations.numpy())
            # `fit` reads `_initial_epoch` right after `on_train_begin` (0 means "the argument").
            self.model._initial_epoch = done // steps_per_epoch

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) >= total_steps:
                self.model.stop_training = True

    return ExactResume()


def make_killable(kill_at_step, marker):
    import keras

    class WaitForKill(keras.callbacks.Callback):
        """After step `kill_at_step`: tell the parent (marker file) and wait for SIGKILL."""

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) == kill_at_step:
                with open(marker, "w") as f:
                    f.write(f"{os.getpid()} {batch}\n")
                time.sleep(600)

    return WaitForKill()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", choices=("exact", "stock"), default="exact")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--save-freq",
        type=int,
        default=3,
        help="BackupAndRestore save_freq (batches)",
    )
    parser.add_argument("--rounding", default="nearest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--marker", default=None)
    args = parser.parse_args(argv)

    import keras

    import keras_qsgld

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(args.seed)
    x, y = make_data(args.seed)
    steps = N_EXAMPLES // args.batch_size
    total = args.epochs * steps
    schedule_kwargs = dict(steps_per_epoch=steps)
    extra = (
        {"seed": args.seed}
        if args.rounding in ("stochastic", "dithered")
        else {}
    )
    optimizer = keras_qsgld.QSGLD(
        0.05,
        resolution=keras_qsgld.ResolutionSchedule(
            eta=2.0**10, **schedule_kwargs
        ),
        compensation=keras_qsgld.CompensationSchedule(
            tau0=1.0, **schedule_kwargs
        ),
        rounding=args.rounding,
        momentum=0.9,
        track_noise=True,
        **extra,
    )
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(CLASSES),
        ]
    )
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    backup = keras.callbacks.BackupAndRestore(
        args.backup_dir, save_freq=args.save_freq
    )

    indices = batch_indices(args.seed, args.epochs, args.batch_size)
    done = 0
    if args.mode == "exact":
        weights_path = os.path.join(args.backup_dir, "latest.weights.h5")
        if os.path.exists(weights_path):
            # Read the step count of the backup (BackupAndRestore loads the same file again).
            optimizer.build(model.trainable_variables)
            model.load_weights(weights_path)
            done = int(optimizer.iterations.numpy())
        callbacks = [backup, make_exact_resume(steps, total)]
    else:
        indices = np.concatenate(
            [indices, indices]
        )  # the stock resume runs past the budget
        callbacks = [backup]
    if args.kill_at_step is not None:
        callbacks.append(make_killable(args.kill_at_step, args.marker))

    def batches():  # batch t at optimizer step t, on every backend
        for rows in indices[done:]:
            yield x[rows], y[rows]

    model.fit(
        batches(),
        epochs=args.epochs,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
        callbacks=callbacks,
    )

    arrays = {f"weight/{i}": w for i, w in enumerate(model.get_weights())}
    # The saved state: iterations, learning rate, generator state, slots (the noise statistics
    # are diagnostics, not state: they are not saved and restart on resume).
    arrays.update(
        {
            f"optimizer/{i}": np.asarray(v.numpy())
            for i, v in enumerate(optimizer._state_variables())
        }
    )
    arrays["resumed_from"] = np.asarray(done)
    np.savez(args.out, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
