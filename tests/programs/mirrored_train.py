"""Trains one small model on one device and under `tf.distribute.MirroredStrategy`.

Run as a subprocess by `tests/library/test_distribute.py`: the logical CPU devices must be
configured before TensorFlow initialises, which a shared pytest worker cannot guarantee.
Writes an `.npz` with, per optimizer, the initial weights, the single-device weights,
the mirrored weights (primary copy) and every replica's copy of every model and optimizer
variable; the test does the comparisons.

    python tests/programs/mirrored_train.py --out result.npz [--replicas 2]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf


def configure_devices(n):
    """Splits the one physical CPU into `n` logical devices (before TF initialises)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)]
    )
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_data(seed=0, n=256, features=8, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    w = rng.normal(size=(features, classes))
    y = np.argmax(x @ w + 0.3 * rng.normal(size=(n, classes)), axis=1).astype(
        "int32"
    )
    return x, y


def make_optimizer(name, steps_per_epoch):
    import keras_qsgld

    resolution = keras_qsgld.ResolutionSchedule(
        eta=2.0**19, steps_per_epoch=steps_per_epoch
    )
    compensation = keras_qsgld.CompensationSchedule(
        tau0=1.0, steps_per_epoch=steps_per_epoch
    )
    if name == "qsgld":
        return keras_qsgld.QSGLD(
            0.1,
            resolution=resolution,
            compensation=compensation,
            momentum=0.9,
            track_noise=True,
        )
    if name == "qadam":
        return keras_qsgld.QAdam(
            0.01, resolution=resolution, compensation=compensation
        )
    if name == "sgd":
        import keras

        return keras.optimizers.SGD(0.1, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def build_model(features, classes):
    import keras

    model = keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(classes),
        ]
    )
    return model


def train(name, strategy, init, x, y, batch_size, epochs, jit_compile):
    import keras

    steps_per_epoch = len(x) // batch_size
    with strategy.scope():
        model = build_model(x.shape[1], int(y.max()) + 1)
        model.set_weights(init)
        model.compile(
            optimizer=make_optimizer(name, steps_per_epoch),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=jit_compile,
        )
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        batch_size, drop_remainder=True
    )
    history = model.fit(data, epochs=epochs, verbose=0)
    return model, history.history["loss"]


def replica_values(variable):
    """Every device's copy of a (possibly mirrored) Keras or TF variable, as NumPy arrays."""
    value = getattr(variable, "value", variable)
    components = getattr(value, "values", None)
    if components is None:
        return [np.asarray(value)]
    return [np.asarray(c.numpy()) for c in components]


def jit_probe(mirrored, init, x, y, batch_size):
    """How Keras resolves and runs `jit_compile` under a strategy.

    `"auto"` is resolved by `keras.Model._resolve_auto_jit_compile`: False on a machine
    without accelerators, else False under any `tf.distribute` strategy. On this CPU-only
    machine the first rule hides the second, so a fake GPU is listed to reach it.
    """

    result = {}
    real = tf.config.list_physical_devices
    fake_gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    tf.config.list_physical_devices = lambda *a, **k: real(*a, **k) + [fake_gpu]
    try:
        model = build_model(x.shape[1], 3)
        model.compile(make_optimizer("qsgld", 1), "mse")
        result["auto_with_accelerator_no_strategy"] = bool(model.jit_compile)
        with mirrored.scope():
            model = build_model(x.shape[1], 3)
            model.compile(make_optimizer("qsgld", 1), "mse")
        result["auto_with_accelerator_mirrored"] = bool(model.jit_compile)
    finally:
        tf.config.list_physical_devices = real
    # An explicit jit_compile=True under MirroredStrategy: Keras' own SGD and QSGLD alike.
    for name in ("sgd", "qsgld"):
        try:
            model, _ = train(
                name,
                mirrored,
                init,
                x[: 2 * batch_size],
                y[: 2 * batch_size],
                batch_size,
                1,
                True,
            )
            result[f"explicit_jit_{name}"] = {
                "ok": True,
                "jit_compile": bool(model.jit_compile),
            }
        except Exception as e:  # noqa: BLE001 - the error is the result
            result[f"explicit_jit_{name}"] = {
                "ok": False,
                "error": type(e).__name__,
                "message": str(e).splitlines()[-3:],
            }
    return result


def custom_loop(mirrored, init, x, y, batch_size, steps=4):
    """A custom training loop: eager `apply_gradients` (QSGLD's own XLA path, built on the
    default strategy) against `strategy.run` under MirroredStrategy (where it must not be)."""
    import keras

    import keras_qsgld

    loss_fn = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum_over_batch_size"
    )
    batches = [
        (
            x[i * batch_size : (i + 1) * batch_size],
            y[i * batch_size : (i + 1) * batch_size],
        )
        for i in range(steps)
    ]
    results, arrays = {}, {}

    # Single device, eager: the optimizer compiles its update with XLA (jit_compile=True).
    model = build_model(x.shape[1], 3)
    model.set_weights(init)
    opt = keras_qsgld.QSGLD(0.1, resolution=2.0**19, jit_compile=True)
    for xb, yb in batches:
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        opt.apply_gradients(
            zip(
                tape.gradient(loss, model.trainable_variables),
                model.trainable_variables,
            )
        )
    results["single_xla_update_step_built"] = opt._xla_update_step is not None
    arrays.update(
        {f"custom/single/{i}": w for i, w in enumerate(model.get_weights())}
    )

    # MirroredStrategy: per-replica loss scaled by the global batch, gradients all-reduced.
    with mirrored.scope():
        model = build_model(x.shape[1], 3)
        model.set_weights(init)
        opt = keras_qsgld.QSGLD(0.1, resolution=2.0**19, jit_compile=True)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            per_example = keras.losses.sparse_categorical_crossentropy(
                yb, model(xb, training=True), from_logits=True
            )
            loss = tf.nn.compute_average_loss(
                per_example, global_batch_size=batch_size
            )
        opt.apply_gradients(
            zip(
                tape.gradient(loss, model.trainable_variables),
                model.trainable_variables,
            )
        )

    @tf.function
    def step(xb, yb):
        mirrored.run(replica_step, args=(xb, yb))

    data = mirrored.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(
            (x[: steps * batch_size], y[: steps * batch_size])
        ).batch(batch_size)
    )
    for xb, yb in data:
        step(xb, yb)
    results["mirrored_xla_update_step_built"] = opt._xla_update_step is not None
    results["mirrored_iterations"] = int(opt.iterations.numpy())
    arrays.update(
        {f"custom/mirrored/{i}": w for i, w in enumerate(model.get_weights())}
    )
    return results, arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--optimizers", default="qsgld,qadam")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    devices = configure_devices(args.replicas)
    import keras

    keras.utils.set_random_seed(0)
    x, y = make_data()
    init = build_model(x.shape[1], int(y.max()) + 1).get_weights()
    mirrored = tf.distribute.MirroredStrategy(devices)
    out = {f"init/{i}": w for i, w in enumerate(init)}
    meta = {
        "devices": devices,
        "replicas_in_sync": mirrored.num_replicas_in_sync,
    }
    for name in args.optimizers.split(","):
        single_model, single_loss = train(
            name,
            tf.distribute.get_strategy(),
            init,
            x,
            y,
            args.batch_size,
            args.epochs,
            "auto",
        )
        dist_model, dist_loss = train(
            name, mirrored, init, x, y, args.batch_size, args.epochs, "auto"
        )
        opt = dist_model.optimizer
        for i, (a, b) in enumerate(
            zip(single_model.get_weights(), dist_model.get_weights())
        ):
            out[f"{name}/single/{i}"] = a
            out[f"{name}/mirrored/{i}"] = b
        # Every replica's copy of every model and optimizer variable.
        for i, variable in enumerate(
            list(dist_model.weights) + list(opt.variables)
        ):
            for r, value in enumerate(replica_values(variable)):
                out[f"{name}/replica{r}/{i}"] = value
        meta[name] = {
            "single_loss": single_loss,
            "mirrored_loss": dist_loss,
            "single_jit_compile": bool(single_model.jit_compile),
            "mirrored_jit_compile": bool(dist_model.jit_compile),
            "mirrored_model_strategy": type(
                dist_model.distribute_strategy
            ).__name__,
            "iterations": int(opt.iterations.numpy()),
            "num_replicas_in_weights": len(
                replica_values(dist_model.weights[0])
            ),
            "xla_update_step_built": getattr(opt, "_xla_update_step", None)
            is not None,
            "resolution_last": float(opt.resolution_at(opt.iterations - 1))
            if hasattr(opt, "resolution_at")
            else None,
        }
        if getattr(opt, "track_noise", False):
            meta[name]["single_noise"] = (
                single_model.optimizer.noise_statistics(reset=False)
            )
            meta[name]["mirrored_noise"] = opt.noise_statistics(reset=False)
            # The raw count (weighted by 1 / number of weights): one per step, not per replica.
            meta[name]["single_noise_count"] = float(
                single_model.optimizer._noise.variables[0].numpy()
            )
            meta[name]["mirrored_noise_count"] = float(
                opt._noise.variables[0].numpy()
            )
    meta["jit_probe"] = jit_probe(mirrored, init, x, y, args.batch_size)
    meta["custom_loop"], custom = custom_loop(
        mirrored, init, x, y, args.batch_size
    )
    out.update(custom)
    out["meta"] = np.array(json.dumps(meta))
    np.savez(args.out, **out)
    print(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
