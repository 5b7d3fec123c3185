"""The measurements of `benchmarks.speed`, in the process of one Keras backend.

`benchmarks.speed` imports this module once it has set `KERAS_BACKEND` (Keras reads it at
its first import). Each `measure_*` function times one table's work on this backend and
returns its record (plain JSON data); `benchmarks.speed` stores the records and writes the
tables.
"""

import numpy as np
from keras import ops

from benchmarks import common
from benchmarks import optimizers as bopt
from benchmarks.backends import (
    BACKEND,
    COMPILE_ARGS,
    apply_function,
    block,
    compile_fn,
    device,
    update_function,
    warm_up_compiler,
)
from experiments import cli
from experiments.defaults import (
    DEFAULT_LEARNING_RATE,
    PAPER_PRESETS,
)
from experiments.models import build_model
from keras_qsgld.optimizer import QuantizedOptimizer
from keras_qsgld.quantization import sum_of_squares
from keras_qsgld.schedules import DEFAULT_ETA

# The schedules are evaluated as in the paper's CIFAR-10 run: 200 epochs of 390 batches of
# 128 of its 50000 training images.
_PAPER = PAPER_PRESETS["paper-cifar10"]
SCHEDULE = dict(
    steps_per_epoch=50000 // _PAPER["batch_size"], epochs=_PAPER["epochs"]
)
GRADIENT_STD = 1e-3  # the fixed random gradients: N(0, GRADIENT_STD)
CLASSES = 10  # the step table's MLP


def optimizer_names(text):
    """The optimizers named by `text` (`--optimizers`: names or `all`), with the baseline of
    each family (SGD, Adam) in front: the reference of the ratios."""
    names = bopt.parse_optimizers(text, ())
    families = {bopt.OPTIMIZERS[name].family for name in names}
    baselines = ["sgd"] + sorted(families - {"sgd"})
    return [b for b in baselines if b not in names] + names


def make_model(name):
    """(model, description) for a model name of `--models`. Not seeded: the timings do not
    depend on the weights, and `keras.utils.set_random_seed` imports TensorFlow (to seed it)
    wherever it is installed, also in a PyTorch process."""
    if name == "resnet50":
        return build_model(
            "resnet50", (224, 224, 3), 1000
        ), "keras.applications.ResNet50"
    if name.startswith("cifar_resnet"):
        depth = int(name[len("cifar_resnet") :] or 50)
        return build_model(
            "cifar_resnet", (32, 32, 3), 10, depth=depth
        ), f"CIFAR ResNet-{depth}"
    if name == "cnn":
        return build_model("cnn", (28, 28, 1), 10), "paper's CNN"
    if name == "mlp":  # the quick mode's model
        return build_model("mlp", (64,), 10, hidden=(32,)), "MLP 64-32-10"
    if name == "mnist_mlp":
        return build_model(
            "mlp", (784,), 10, hidden=(256, 256)
        ), "MLP 784-256-256-10"
    raise cli.UserError(
        f"Argument `--models` must name models among resnet50, cifar_resnetN, cnn, mnist_mlp, mlp. Received: {name!r}"
    )


def build_optimizer(name, jit_compile=True):
    """The optimizer `name` at its default learning rate, with the paper's CIFAR schedules;
    `jit_compile=False` turns off the eager XLA update of the quantized optimizers."""
    optimizer = bopt.build(
        name, bopt.default_learning_rate(name), seed=0, **SCHEDULE
    )
    if isinstance(optimizer, QuantizedOptimizer):
        optimizer.jit_compile = jit_compile
    return optimizer


def candidates(names, mode):
    """(label, name, jit_compile) of each optimizer timed in `mode`. On TensorFlow outside XLA
    (`graph`, `eager`), the optimizers built on `QuantizedOptimizer` run twice: with their own
    XLA-compiled update (`jit_compile=True`, their default) and op by op (`jit_compile=False`)."""
    rows = [(name, name, True) for name in names]
    if BACKEND == "tensorflow" and mode in ("graph", "eager"):
        rows += [
            (f"{name} (jit_compile=False)", name, False)
            for name in names
            if isinstance(build_optimizer(name), QuantizedOptimizer)
        ]
    return rows


def random_tensors(shapes, seed=0, std=GRADIENT_STD):
    rng = np.random.default_rng(seed)
    return [
        ops.convert_to_tensor(rng.normal(0, std, shape).astype("float32"))
        for shape in shapes
    ]


def parameter_count(variables):
    return int(sum(np.prod(v.shape) for v in variables))


def time_mode(record, mode, functions, rounds, warmup, what):
    """Times `functions` interleaved into `record["times"][mode]` (their first calls, where
    compilation happens, into `record["first"][mode]`)."""
    record["first"][mode] = {}
    record["times"][mode] = common.time_interleaved(
        functions,
        rounds,
        warmup=warmup,
        progress=lambda message: common.log(
            f"{what} {BACKEND} {mode}: {message}"
        ),
        first_calls=record["first"][mode],
    )


def model_setup(model_name, **setup):
    """The model's trainable variables, fixed random gradients for them, and the start of a
    record (the model, where it runs, `setup` and the gradients' scale)."""
    model, description = make_model(model_name)
    variables = model.trainable_variables
    record = {
        "description": description,
        "params": parameter_count(variables),
        "n_vars": len(variables),
        "device": device(),
        "setup": dict(gradient_std=GRADIENT_STD, **setup),
        "times": {},
        "first": {},
    }
    return variables, random_tensors([v.shape for v in variables]), record


def measure_apply(model_name, names, modes, rounds, warmup):
    """Times `optimizer.apply` over the model's trainable variables, per mode and optimizer."""
    common.log(f"apply: building {model_name}")
    variables, grads, record = model_setup(model_name, **SCHEDULE)
    record["names"] = {}
    for mode in modes:
        warm_up_compiler(mode)
        functions = {}
        for label, name, jit_compile in candidates(names, mode):
            functions[label] = apply_function(
                build_optimizer(name, jit_compile), grads, variables, mode
            )
            record["names"][label] = name
        common.log(
            f"apply: {model_name} ({record['params']:,} params), {BACKEND} {mode}: {len(functions)} optimizers"
        )
        time_mode(
            record, mode, functions, rounds, warmup, f"apply {model_name}"
        )
    return record


def measure_step(names, modes, rounds, warmup, inputs, width, depth, batch):
    """Times `model.train_on_batch` of an MLP on a fixed random batch, per mode and optimizer
    (each optimizer trains a model of its own, from the same initial weights)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, inputs)).astype("float32")
    y = rng.integers(0, CLASSES, batch).astype("int32")
    hidden = (width,) * depth
    initial = build_model(
        "mlp", (inputs,), CLASSES, hidden=hidden
    )  # not seeded: see make_model
    record = {
        "description": f"MLP {inputs}-"
        + "-".join(map(str, hidden))
        + f"-{CLASSES}",
        "params": parameter_count(initial.trainable_variables),
        "device": device(),
        "batch": batch,
        "families": {name: bopt.OPTIMIZERS[name].family for name in names},
        "times": {},
        "first": {},
    }
    for mode in modes:
        warm_up_compiler(mode)
        functions = {}
        for name in names:
            model = build_model("mlp", (inputs,), CLASSES, hidden=hidden)
            model.set_weights(initial.get_weights())
            model.compile(
                optimizer=build_optimizer(name),
                loss="sparse_categorical_crossentropy",
                **COMPILE_ARGS[mode],
            )
            functions[name] = lambda model=model: model.train_on_batch(x, y)
        common.log(
            f"step: {record['description']} ({record['params']:,} params) batch {batch}, {BACKEND} {mode}"
        )
        time_mode(record, mode, functions, rounds, warmup, "step")
    return record


BREAKDOWN_LR, BREAKDOWN_QP = (
    DEFAULT_LEARNING_RATE["qsgld"],
    DEFAULT_ETA,
)  # QSGLD's defaults


def sgd_update(values, grads):
    return [
        ops.subtract(v, ops.multiply(g, BREAKDOWN_LR))
        for v, g in zip(values, grads)
    ]


def gradient_norms(grads):
    """The per-tensor norms QSGLD's compensation needs, one reduction each (summed: one
    result to wait for)."""
    return ops.sum(ops.stack([ops.sqrt(ops.sum(ops.square(g))) for g in grads]))


def gradient_norms_two_level(grads):
    """The same norms as QSGLD takes them: `keras_qsgld.quantization.sum_of_squares`."""
    return ops.sum(ops.stack([ops.sqrt(sum_of_squares(g)) for g in grads]))


def rounded_update(values, grads):
    """QSGLD's rounded step `floor(-lr Qp g + 1/2) / Qp`, without the norm."""
    lr, qp = BREAKDOWN_LR, BREAKDOWN_QP
    return [
        ops.add(
            v,
            ops.divide(ops.floor(ops.add(ops.multiply(g, -lr * qp), 0.5)), qp),
        )
        for v, g in zip(values, grads)
    ]


def measure_breakdown(model_name, modes, rounds, warmup):
    """Times the parts of QSGLD's update over the model's trainable variables, per mode: the
    SGD update and the rounded update in place, the per-tensor norms alone (as one reduction
    each, and as QSGLD sums them)."""
    variables, grads, record = model_setup(
        model_name, learning_rate=BREAKDOWN_LR, qp=BREAKDOWN_QP
    )
    for mode in modes:
        norms = compile_fn(gradient_norms, mode)
        two_level = compile_fn(gradient_norms_two_level, mode)
        functions = {
            "SGD update": update_function(sgd_update, variables, grads, mode),
            "per-tensor norms only, one reduction each": lambda norms=norms: (
                block(norms(grads))
            ),
            "per-tensor norms only, QSGLD's two-level sum": lambda two_level=two_level: (
                block(two_level(grads))
            ),
            "rounded update only": update_function(
                rounded_update, variables, grads, mode
            ),
        }
        common.log(
            f"breakdown: {model_name} ({record['params']:,} params), {BACKEND} {mode}"
        )
        time_mode(record, mode, functions, rounds, warmup, "breakdown")
    return record
