#!/usr/bin/env python
"""Train with QSGLD (or QAdam) on several devices or several machines with tf.distribute.

One process per machine. Without `TF_CONFIG` the script uses `MirroredStrategy` over
every device of this machine (GPUs, or `--cpu-devices N` logical CPUs to try it out);
with `TF_CONFIG` set it uses `MultiWorkerMirroredStrategy`: start the same command on every
worker, each with its own `TF_CONFIG`. See docs/scaling.md.

    # one machine, all its GPUs (or 2 logical CPU devices here)
    python examples/distributed.py --dataset digits --epochs 5 --cpu-devices 2

    # two workers (here both on 127.0.0.1; on a cluster, each host runs its own line)
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/distributed.py --dataset digits --output-dir results/dist &
    TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]},
                "task": {"type": "worker", "index": 1}}' \\
        python examples/distributed.py --dataset digits --output-dir results/dist

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

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", help="a keras_qsgld.experiments.datasets name (default %(default)s)")
    p.add_argument("--model", default=None, help="a keras_qsgld.experiments.models name (default: per data set)")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets folder (TFDS data sets)")
    p.add_argument("--optimizer", choices=("qsgld", "qadam"), default="qsgld")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="default 0.05 for qsgld, 0.001 for qadam")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128, help="the global batch (default %(default)s)")
    p.add_argument("--max-examples", type=int, default=None, help="use only this many examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="without TF_CONFIG: split the CPU into this many logical devices")
    p.add_argument("--output-dir", default="results/distributed")
    p.add_argument("--backup-dir", default=None, help="enable BackupAndRestore (one folder per worker)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2)
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
            return {k: nested_reduce(reduce_op, v, axis) for k, v in value.items()}
        if axis is not None and strategy.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return reduce(reduce_op, value, axis=axis)

    strategy.reduce = nested_reduce
    return strategy


def make_strategy(cpu_devices=None):
    """`MultiWorkerMirroredStrategy` if `TF_CONFIG` is set, else `MirroredStrategy`.

    Must run before any other TensorFlow operation (both strategies configure the runtime).
    Returns `(strategy, worker_index)`.
    """
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
        strategy = patch_multi_worker_reduce(tf.distribute.MultiWorkerMirroredStrategy())
        return strategy, int(task.get("index", 0))
    devices = None
    if cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)]
        )
        if not tf.config.list_physical_devices("GPU"):
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices), 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    strategy, worker = make_strategy(args.cpu_devices)

    import keras
    import tensorflow as tf

    import keras_qsgld
    from keras_qsgld.experiments.datasets import load_dataset
    from keras_qsgld.experiments.models import build_model

    keras.utils.set_random_seed(args.seed)
    # No shuffling: the same data order on every worker and on every restart.
    data = load_dataset(args.dataset, batch_size=args.batch_size, data_dir=args.data_dir,
                        shuffle=False, seed=args.seed, drop_remainder=True,
                        max_examples=args.max_examples)
    # Each worker reads the whole (small, in-memory) data set and keeps its share of every
    # global batch; with files (TFRecord), AUTO would shard by file instead.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train, test = data.train.with_options(options), data.test.with_options(options)
    model_name = args.model or {"digits": "mlp", "mnist1d": "cnn1d"}.get(args.dataset, "cnn")
    steps = data.steps_per_epoch
    with strategy.scope():
        model = build_model(model_name, data.input_shape, data.num_classes, seed=args.seed)
        resolution = keras_qsgld.ResolutionSchedule(steps_per_epoch=steps)
        compensation = keras_qsgld.CompensationSchedule.from_budget(args.epochs, steps_per_epoch=steps)
        if args.optimizer == "qsgld":
            optimizer = keras_qsgld.QSGLD(args.learning_rate or 0.05, resolution=resolution,
                                          compensation=compensation)
        else:
            optimizer = keras_qsgld.QAdam(args.learning_rate or 0.001, resolution=resolution,
                                          compensation=compensation)
        # jit_compile="auto" (the default) is False under tf.distribute: Keras disables XLA.
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    callbacks = []
    if args.backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(os.path.join(args.backup_dir, f"worker{worker}")))
    history = model.fit(train, epochs=args.epochs, validation_data=test,
                        callbacks=callbacks, verbose=args.verbose)

    os.makedirs(args.output_dir, exist_ok=True)
    model.save_weights(os.path.join(args.output_dir, f"worker{worker}.weights.h5"))
    summary = {
        "worker": worker,
        "strategy": type(strategy).__name__,
        "num_replicas_in_sync": strategy.num_replicas_in_sync,
        "jit_compile": bool(model.jit_compile),
        "steps_per_epoch": steps,
        "iterations": int(optimizer.iterations.numpy()),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    with open(os.path.join(args.output_dir, f"worker{worker}.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"worker {worker}: {summary['strategy']} with {summary['num_replicas_in_sync']} replicas, "
          f"final loss {summary['history']['loss'][-1]:.4f}, weights in {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
