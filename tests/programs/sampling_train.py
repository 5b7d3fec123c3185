"""A QSGLD sampling run with `PosteriorSampler(directory=...)` and `BackupAndRestore`.

Run as a subprocess by `tests/library/test_sampling.py`, which SIGKILLs it in the middle of an epoch
and runs the same command again to resume. 64 examples in batches of 8 (8 updates per
epoch, no shuffling), QSGLD at temperature 1/64 with the dithered rounding; the sampler
keeps a sample every 3 updates after a burn-in of one epoch. It is placed before
`BackupAndRestore` in the callbacks on purpose: it must read the restored update count
wherever it sits.

With `--kill-at-step K` the process writes `--marker` after optimizer update K (after the
sampler has written that update's sample) and waits to be killed. At the end it writes
`--out` (.npz): `steps` (the update index of each sample in the folder) and `sample/<i>/<j>`
(weight j of sample i, read back from its file).

    python tests/programs/sampling_train.py --directory D --backup-dir B --out o.npz [--kill-at-step 21 --marker M]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

N_EXAMPLES, FEATURES, CLASSES, BATCH = 64, 4, 3, 8


def make_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_EXAMPLES, FEATURES)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(FEATURES, CLASSES)), axis=1).astype(
        "int32"
    )
    return x, y


def build(keras, keras_qsgld):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="tanh"),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras_qsgld.QSGLD(
            0.05,
            resolution=keras_qsgld.Temperature(1.0 / N_EXAMPLES),
            rounding="dithered",
            seed=0,
        ),
        loss="sparse_categorical_crossentropy",
    )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directory", required=True)
    parser.add_argument("--backup-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--marker", default=None)
    args = parser.parse_args(argv)

    import keras

    import keras_qsgld
    from keras_qsgld.sampling import PosteriorSampler

    class WaitForKill(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if (
                int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                == args.kill_at_step
            ):
                with open(args.marker, "w") as f:
                    f.write(f"{os.getpid()}\n")
                time.sleep(600)

    x, y = make_data()
    model = build(keras, keras_qsgld)
    sampler = PosteriorSampler(
        burn_in=1, thin=3, directory=args.directory, verbose=0
    )
    callbacks = [sampler, keras.callbacks.BackupAndRestore(args.backup_dir)]
    if args.kill_at_step is not None:
        callbacks.append(WaitForKill())
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=args.epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )

    arrays = {"steps": np.asarray(sampler.sample_steps)}
    for i, path in enumerate(sampler.samples):
        model.load_weights(path, objects_to_skip=[model.optimizer])
        for j, w in enumerate(model.get_weights()):
            arrays[f"sample/{i}/{j}"] = np.asarray(w)
    np.savez(args.out, **arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
