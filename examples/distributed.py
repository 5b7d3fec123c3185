#!/usr/bin/env python
"""Train with QSGLD (or QAdam) on several devices or several machines with tf.distribute.

TensorFlow only: tf.distribute is TensorFlow's own machinery, so this script runs on the
TensorFlow backend (KERAS_BACKEND unset or "tensorflow"; another value is refused). On JAX,
Keras' own `keras.distribution.DataParallel` does the same: see docs/scaling.md.

One process per machine. Without `TF_CONFIG` the script uses `MirroredStrategy` over
every device of this machine (GPUs, or `--cpu-devices N` logical CPUs to try it out);
with `TF_CONFIG` set it uses `MultiWorkerMirroredStrategy`: start the same command on every
worker, each with its own `TF_CONFIG`. See docs/scaling.md.

    # one machine, all its GPUs (or 2 logical CPU devices here)
    python -m examples.distributed --dataset digits --epochs 5 --cpu-devices 2

    # two workers (here both on 127.0.0.1; on a cluster, each host runs its own line)
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' \\
        python -m examples.distributed --dataset digits --output-dir results/dist &
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 1}}' \\
        python -m examples.distributed --dataset digits --output-dir results/dist

`--batch-size` is the global batch: each of the R replicas gets `batch_size / R`, the
gradients are all-reduced, and every replica applies the same QSGLD update, so the result
is that of one device with the global batch (up to float summation order). The QSGLD
schedules count optimizer steps, one per global batch.

Each worker writes `OUTPUT_DIR/worker<i>.weights.h5` (its copy of the final weights:
identical on all workers) and `OUTPUT_DIR/worker<i>.json` (losses, strategy, replicas).
With `--backup-dir`, `keras.callbacks.BackupAndRestore` backs each worker up into
`BACKUP_DIR/worker<i>/` at the end of every epoch; restart all workers with the same
commands to resume from the last finished epoch.
"""

import json
import os
import sys

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "distributed.py: error: run it as a module, from the repository root: "
        "python -m examples.distributed",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # before TensorFlow loads: fewer C++ logs
BACKEND = os.environ.setdefault(
    "KERAS_BACKEND", "tensorflow"
)  # before Keras loads

import keras
import tensorflow as tf

from experiments import cli, flags
from experiments.datasets import load_dataset
from experiments.defaults import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_MODEL,
)
from experiments.models import build_model
from keras_qsgld import QSGLD, CompensationSchedule, QAdam, ResolutionSchedule

PROG = "distributed.py"
OPTIMIZERS = {"qsgld": QSGLD, "qadam": QAdam}


def build_parser():
    p = cli.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0] + " See docs/scaling.md."
    )
    flags.add_data_arguments(p, dataset_default="digits")
    p.add_argument(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        default="qsgld",
        help="(default %(default)s)",
    )
    p.add_argument(
        "--learning-rate",
        type=cli.positive_float,
        help="default "
        + ", ".join(
            f"{DEFAULT_LEARNING_RATE[n]:g} for {n}" for n in OPTIMIZERS
        ),
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=2,
        help="(default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=128,
        help="the global batch (default %(default)s)",
    )
    p.add_argument(
        "--max-examples",
        type=cli.positive_int,
        help="use only this many examples",
    )
    p.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=0,
        help="(default %(default)s)",
    )
    p.add_argument(
        "--cpu-devices",
        type=cli.positive_int,
        help="without TF_CONFIG: split the CPU into this many logical devices",
    )
    p.add_argument(
        "--output-dir",
        default=os.path.join("results", "distributed"),
        help="(default %(default)s)",
    )
    p.add_argument(
        "--backup-dir",
        help="back up at the end of every epoch (one folder per worker); "
        "restarted workers resume from the last finished epoch",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=2,
        help="(default %(default)s)",
    )
    return p


def patch_multi_worker_reduce(strategy):
    """Lets Keras 3's `fit` run under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).

    Keras 3 (3.15, and its master in 2026-08) calls `strategy.reduce` in two ways that
    `MultiWorkerMirroredStrategy` rejects: on the whole `(x, y)` batch (a tuple: "Attempt
    to convert a value (PerReplica...) to a Tensor") when it builds the model at the start
    of `fit`, and with `axis=0` on scalar losses and metrics ("Invalid reduction dimension
    0 for input with 0 dimensions"). This wraps the strategy's `reduce` to take one tensor
    at a time and to reduce scalars across replicas only, which is what Keras means.
    Gradients do not go through `reduce` (they are all-reduced by the optimizer), so the
    training itself is unchanged.
    """
    reduce = strategy.reduce

    def nested_reduce(reduce_op, value, axis=None):
        if isinstance(value, (tuple, list)):
            return type(value)(nested_reduce(reduce_op, v, axis) for v in value)
        if isinstance(value, dict):
            return {
                k: nested_reduce(reduce_op, v, axis) for k, v in value.items()
            }
        if (
            axis is not None
            and strategy.experimental_local_results(value)[0].shape.rank == 0
        ):
            axis = None
        return reduce(reduce_op, value, axis=axis)

    strategy.reduce = nested_reduce
    return strategy


def make_strategy(cpu_devices=None):
    """`MultiWorkerMirroredStrategy` if `TF_CONFIG` is set, else `MirroredStrategy`.

    Must run before any other TensorFlow operation (both strategies configure the runtime).
    Returns `(strategy, worker_index)`.
    """
    if os.environ.get("TF_CONFIG"):
        try:
            task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
        except (ValueError, AttributeError) as error:
            raise cli.UserError(
                f"TF_CONFIG is not a JSON object with a 'task': {error}"
            ) from error
        strategy = patch_multi_worker_reduce(
            tf.distribute.MultiWorkerMirroredStrategy()
        )
        return strategy, int(task.get("index", 0))
    devices = None
    if cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu,
            [
                tf.config.LogicalDeviceConfiguration()
                for _ in range(cpu_devices)
            ],
        )
        if not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices), 0


def train(args):
    """Trains under the strategy; writes this worker's weights and summary."""
    if BACKEND != "tensorflow":
        raise cli.UserError(
            f"tf.distribute needs the TensorFlow backend; KERAS_BACKEND={BACKEND}. Unset it or "
            "set KERAS_BACKEND=tensorflow (on JAX use keras.distribution.DataParallel: docs/scaling.md)"
        )
    strategy, worker = make_strategy(args.cpu_devices)
    keras.utils.set_random_seed(args.seed)
    with cli.user_errors():
        # No shuffling: the same data order on every worker and on every restart.
        data = load_dataset(
            args.dataset,
            batch_size=args.batch_size,
            data_dir=args.data_dir,
            shuffle=False,
            seed=args.seed,
            drop_remainder=True,
            max_examples=args.max_examples,
        )
    # Each worker reads the whole (small, in-memory) data set and keeps its share of every
    # global batch; with files (TFRecord), AUTO would shard by file instead.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    train_data, test_data = (
        data.train.with_options(options),
        data.test.with_options(options),
    )
    steps = data.steps_per_epoch
    with strategy.scope(), cli.user_errors():
        name = args.model or DEFAULT_MODEL[args.dataset]
        model = build_model(
            name,
            data.input_shape,
            data.num_classes,
            seed=args.seed,
            **({"depth": args.depth} if name == "cifar_resnet" else {}),
        )
        optimizer = OPTIMIZERS[args.optimizer](
            args.learning_rate or DEFAULT_LEARNING_RATE[args.optimizer],
            resolution=ResolutionSchedule(steps_per_epoch=steps),
            compensation=CompensationSchedule.from_budget(
                args.epochs, steps_per_epoch=steps
            ),
        )
        # jit_compile="auto" (the default) is False under tf.distribute: Keras disables XLA.
        model.compile(
            optimizer=optimizer,
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    callbacks = []
    if args.backup_dir:
        callbacks.append(
            keras.callbacks.BackupAndRestore(
                os.path.join(args.backup_dir, f"worker{worker}")
            )
        )
    history = model.fit(
        train_data,
        epochs=args.epochs,
        validation_data=test_data,
        shuffle=False,
        callbacks=callbacks,
        verbose=args.verbose,
    )

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_weights(
        os.path.join(args.output_dir, f"worker{worker}.weights.h5")
    )
    summary = {
        "worker": worker,
        "strategy": type(strategy).__name__,
        "num_replicas_in_sync": strategy.num_replicas_in_sync,
        "jit_compile": bool(model.jit_compile),
        "steps_per_epoch": steps,
        "iterations": int(optimizer.iterations.numpy()),
        "history": {
            k: [float(v) for v in vs] for k, vs in history.history.items()
        },
    }
    with open(os.path.join(args.output_dir, f"worker{worker}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(
        f"worker {worker}: {summary['strategy']} with {summary['num_replicas_in_sync']} replicas, "
        f"final loss {summary['history']['loss'][-1]:.4f}, weights in {args.output_dir}"
    )


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.backup_dir:
        resume = "restart every worker with the same command to resume from the last finished epoch"
    else:
        resume = "with --backup-dir DIR, restarted workers resume from the last finished epoch"
    return cli.run_script(lambda: train(args), prog=PROG, interrupted=resume)


if __name__ == "__main__":
    sys.exit(main())
