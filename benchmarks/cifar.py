"""A short run of the paper's CIFAR protocol with QSGLD and SGD (meant for a GPU machine).

The authors' protocol (paper.md s7.2): CIFAR-10, the CIFAR ResNet-50 (6n+2, n = 8), batch
128, no augmentation, no shuffling, last partial batch dropped, constant learning rate 0.01
for both optimizers, QSGLD with eta = 2^19 and tau0 = 0.2 x the epoch budget. Here the
budget is `--epochs` (short), so it is a smoke-scale reproduction, not the paper's
200-epoch run.

Real CIFAR needs tensorflow-datasets with internet or a prepared `--data-dir`. Without
either the script says so in one line and exits with code 2, unless `--synthetic` is given
(random data of CIFAR's shape: it proves the pipeline, its accuracies mean nothing).
`--quick` implies `--synthetic` and a CIFAR ResNet-8.

A TensorFlow-backend script (`tf.data` pipelines; `benchmarks/gpu.sh` runs it on
TensorFlow): it sets `KERAS_BACKEND=tensorflow` itself. Run from the repository root:
`python -m benchmarks.cifar --quick`.
"""

import math
import time
import warnings

from benchmarks import common
from experiments import cli

# tf.data pipelines below: this script runs on the TensorFlow backend whatever KERAS_BACKEND
# says, set before Keras is imported.
common.use_tensorflow_backend(__name__)

import keras
import numpy as np
import tensorflow as tf

from benchmarks import optimizers as bopt
from experiments.datasets import (
    DatasetBundle,
    DatasetUnavailableError,
    load_dataset,
)
from experiments.defaults import PAPER_PRESETS
from experiments.models import build_model
from keras_qsgld.schedules import DEFAULT_ETA, DEFAULT_WARMUP_FRACTION

TABLES = ("cifar",)
DATASETS = ("cifar10", "cifar100")
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
QUICK_EXAMPLES, QUICK_DEPTH = (
    512,
    8,
)  # --quick: synthetic training examples, CIFAR ResNet-8


def build_parser():
    paper = PAPER_PRESETS["paper-cifar10"]
    p = common.parser(
        __doc__.split("\n\n")[0], TABLES, "results/benchmarks/cifar"
    )
    p.add_argument("--dataset", default="cifar10", choices=DATASETS)
    p.add_argument(
        "--data-dir", default=None, help="tensorflow-datasets data folder"
    )
    p.add_argument("--epochs", type=cli.positive_int, default=5)
    p.add_argument(
        "--depth",
        type=cli.positive_int,
        default=paper["depth"],
        help="CIFAR ResNet depth (6n+2)",
    )
    p.add_argument("--lr", type=cli.positive_float, default=paper["lr"])
    p.add_argument(
        "--batch-size", type=cli.positive_int, default=paper["batch_size"]
    )
    p.add_argument("--optimizers", default="sgd,qsgld")
    p.add_argument(
        "--synthetic", action="store_true", help="random data of CIFAR's shape"
    )
    p.add_argument(
        "--jit-compile",
        default="auto",
        choices=tuple(JIT_COMPILE),
        help="model.compile(jit_compile=...)",
    )
    return p


def synthetic_bundle(dataset, n_train, n_test, batch, seed):
    classes = 100 if dataset == "cifar100" else 10
    rng = np.random.default_rng(seed)

    def split(n):
        x = rng.uniform(-1, 1, (n, 32, 32, 3)).astype("float32")
        y = rng.integers(0, classes, n).astype("int64")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(
            batch, drop_remainder=False
        )

    return DatasetBundle(
        name=f"synthetic-{dataset}",
        train=split(n_train),
        test=split(n_test),
        num_classes=classes,
        input_shape=(32, 32, 3),
        num_train=n_train,
        num_test=n_test,
        batch_size=batch,
        steps_per_epoch=-(-n_train // batch),
    )


class Progress(keras.callbacks.Callback):
    """Prints optimizer, seed, loss and accuracy at the end of each epoch."""

    def __init__(self, label, epochs):
        super().__init__()
        self.label, self.epochs = label, epochs

    def on_epoch_end(self, epoch, logs=None):
        common.log(
            f"cifar: {self.label} epoch {epoch + 1}/{self.epochs}: "
            f"loss {logs['loss']:.4f} acc {logs['accuracy']:.4f}"
        )


def train(args, name, seed, depth, epochs, synthetic):
    """Trains once; returns the record (raises `DatasetUnavailableError` without the data)."""
    keras.backend.clear_session()
    if synthetic:
        n = QUICK_EXAMPLES if args.quick else 50000
        bundle = synthetic_bundle(
            args.dataset, n, n // 5, args.batch_size, seed
        )
    else:
        bundle = load_dataset(
            args.dataset,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            shuffle=False,
            drop_remainder=True,
            seed=seed,
        )
    model = build_model(
        "cifar_resnet",
        bundle.input_shape,
        bundle.num_classes,
        seed=seed,
        depth=depth,
    )
    opt = bopt.build(
        name,
        args.lr,
        steps_per_epoch=bundle.steps_per_epoch,
        epochs=epochs,
        seed=seed,
    )
    model.compile(
        opt,
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=JIT_COMPILE[args.jit_compile],
    )
    t0 = time.perf_counter()
    model.fit(
        bundle.train,
        epochs=epochs,
        verbose=0,
        callbacks=[Progress(f"{name} seed {seed}", epochs)],
    )
    seconds = time.perf_counter() - t0
    _, test_acc = model.evaluate(bundle.test, verbose=0)
    train_loss, _ = model.evaluate(bundle.train, verbose=0)
    return {
        "test_acc": float(test_acc),
        "train_loss": float(train_loss),
        "seconds_per_epoch": seconds / epochs,
        "data": bundle.name,
    }


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    tf.get_logger().setLevel("ERROR")
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    names = bopt.parse_optimizers(args.optimizers, ("sgd", "qsgld"))
    synthetic = args.synthetic or args.quick
    depth = QUICK_DEPTH if args.quick else args.depth
    epochs = 1 if args.quick else args.epochs
    store = common.ResultStore(args.output_dir, "cifar", args.force)
    rows = []
    for name in names:
        for seed in args.seed_list[: (1 if args.quick else None)]:
            key = store.make_key(
                d=args.dataset,
                o=name,
                seed=seed,
                e=epochs,
                depth=depth,
                lr=args.lr,
                syn=synthetic,
                batch=args.batch_size,
            )
            rec = store.get(key)
            if rec is None:
                try:
                    rec = store.put(
                        key, train(args, name, seed, depth, epochs, synthetic)
                    )
                except DatasetUnavailableError as err:
                    raise cli.UserError(
                        f"{err} (or pass --synthetic for random data of CIFAR's shape)"
                    ) from None
            rows.append(
                [
                    rec["data"],
                    name,
                    seed,
                    common.fmt(rec["test_acc"] * 100),
                    common.fmt(rec["train_loss"]),
                    common.fmt(rec["seconds_per_epoch"]),
                    epochs,
                ]
            )
    headers = [
        "data",
        "optimizer",
        "seed",
        "test accuracy %",
        "final train loss",
        "s / epoch (incl. compile)",
        "epochs",
    ]
    notes = [
        f"CIFAR ResNet-{depth}, batch {args.batch_size}, lr {args.lr}, no augmentation, no shuffling, drop_remainder; "
        f"QSGLD with eta 2^{math.log2(DEFAULT_ETA):g} and tau0 = {DEFAULT_WARMUP_FRACTION:g} x {epochs} epochs. "
        f"A short run, not the paper's {PAPER_PRESETS['paper-cifar10']['epochs']} epochs.",
    ] + (
        [
            "Synthetic random data of CIFAR's shape: accuracies are meaningless (chance level)."
        ]
        if synthetic
        else []
    )
    return [
        common.write_table(
            args,
            "cifar",
            "Short run of the paper's CIFAR protocol",
            headers,
            rows,
            notes,
        )
    ]


if __name__ == "__main__":
    common.run_benchmark(main)
