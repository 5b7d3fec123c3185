"""Speed: the cost of one `optimizer.apply`, and of a whole training step, per optimizer.

Tables (`--tables`):

* `apply`: one `optimizer.apply(grads, variables)` over the trainable variables of
  `keras.applications.ResNet50` (25.6M parameters) and of the CIFAR ResNet-50, inside
  `tf.function(jit_compile=True)` ("xla") and `tf.function(jit_compile=False)` ("graph").
  The optimizers share the variables and fixed random gradients; they are timed round-robin
  in a fresh order each round, and the table gives the median and the ratio to plain SGD
  timed in the same run. The memory-traffic floor counts the parameter-sized tensors an
  ideal fused kernel must read or write (SGD: read g and w, write w = 3; QSGLD: g twice
  for the norm and the update = 4, so 4/3 of SGD; Adam 7, 7/3 of SGD).
* `breakdown`: where QSGLD's extra time goes, over the same variables: the plain SGD update,
  the per-tensor norms alone (the reduction QSGLD's compensation needs), and the rounded
  update alone (`floor(c g + 1/2) / Qp`, no norm), each with and without XLA.
* `step`: one whole training step (forward, backward, apply) of the CIFAR ResNet-50 on a
  fixed synthetic batch of CIFAR's shape, per optimizer, same ratios.

Run from the repository root, e.g. `python -m benchmarks.speed --quick`.
"""

import os
import sys

if __package__ in (None, ""):  # `python benchmarks/speed.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common

common.setup_environment()

TABLES = ("apply", "step", "breakdown")

# Parameter-sized fp32 tensors an ideal fused update reads + writes, per optimizer.
TRAFFIC = {
    "sgd": (3, "read g, w; write w"),
    "sgd_momentum": (5, "read g, m, w; write m, w"),
    "adam": (7, "read g, m, v, w; write m, v, w"),
    "adamw": (7, "as Adam, decay fused"),
    "qsgld": (4, "read g twice (norm, update), w; write w"),
    "qsgd": (3, "no norm: as SGD"),
    "qadam": (9, "pass 1 read g, m, v, write m, v (norm of h); pass 2 read m, v, w, write w"),
    "sgld": (3, "as SGD; noise generated, not read"),
}
SPEED_DEFAULT = ("sgd", "sgd_momentum", "adam", "qsgld", "qsgd", "qadam", "sgld")


def traffic(name):
    if name in TRAFFIC:
        return TRAFFIC[name]
    if name.startswith("qsgld_"):  # other rounding modes: as QSGLD, random bits generated
        return (4, "as QSGLD; random bits generated")
    return (None, "")


def build_parser():
    p = common.parser(__doc__.split("\n\n")[0], TABLES, "results/benchmarks/speed")
    p.add_argument("--optimizers", default="default", help="'all', or names among benchmarks.optimizers")
    p.add_argument(
        "--models",
        default="resnet50,cifar_resnet50",
        help="models for the apply table: resnet50 (keras.applications), cifar_resnet50, "
        "cifar_resnetN (depth N = 6n+2), cnn",
    )
    p.add_argument("--modes", default="xla,graph", help="apply table: xla and/or graph")
    p.add_argument("--step-modes", default="graph", help="step table: xla and/or graph")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per optimizer (median)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per optimizer first")
    p.add_argument("--batch-size", type=int, default=None, help="step table batch size")
    p.add_argument("--step-model", default="cifar_resnet50", help="model of the step table")
    return p


def make_model(name, seed=0):
    """(model, description) for a model name of `--models`."""
    from keras_qsgld.experiments import models

    if name == "resnet50":
        return models.build_model("resnet50", (224, 224, 3), 1000, seed=seed), "keras.applications.ResNet50"
    if name.startswith("cifar_resnet"):
        depth = int(name[len("cifar_resnet"):] or 50)
        return (
            models.build_model("cifar_resnet", (32, 32, 3), 10, seed=seed, depth=depth),
            f"CIFAR ResNet-{depth}",
        )
    if name == "cnn":
        return models.build_model("cnn", (28, 28, 1), 10, seed=seed), "paper's CNN"
    raise ValueError(f"Argument `--models` has an unknown model. Received: {name!r}")


def input_shape_of(name):
    if name == "resnet50":
        return (224, 224, 3), 1000
    if name == "cnn":
        return (28, 28, 1), 10
    return (32, 32, 3), 10


def _sync(value):
    return value.numpy()


def run_apply(args, names):
    import numpy as np
    import tensorflow as tf

    from benchmarks import optimizers as bopt

    store = common.ResultStore(args.output_dir, "apply", args.force)
    repeats = args.repeats or (2 if args.quick else 7)
    models = ["cifar_resnet8"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    rows = []
    for model_name in models:
        key = common.ResultStore.make_key(model=model_name, modes=",".join(modes), opts=",".join(names), r=repeats)
        record = store.get(key)
        if record is None:
            common.log(f"apply: building {model_name}")
            model, description = make_model(model_name)
            variables = model.trainable_variables
            n_params = int(sum(np.prod(v.shape) for v in variables))
            rng = np.random.default_rng(0)
            grads = [tf.constant(rng.normal(0, 1e-3, v.shape).astype("float32")) for v in variables]
            record = {"description": description, "params": n_params, "n_vars": len(variables), "times": {}}
            for mode in modes:
                fns = {}
                for name in names:
                    opt = bopt.build(name, 0.01, steps_per_epoch=390, epochs=200, seed=0)
                    opt.build(variables)

                    def apply(opt=opt):
                        opt.apply(grads, variables)
                        return opt.iterations + 0

                    fn = tf.function(apply, jit_compile=(mode == "xla"), autograph=False)
                    fns[name] = lambda fn=fn: _sync(fn())
                common.log(f"apply: {model_name} ({n_params:,} params), mode={mode}: compiling {len(fns)} optimizers")
                times = common.time_interleaved(
                    fns, repeats, warmup=args.warmup, progress=lambda m: common.log(f"apply {model_name} {mode}: {m}")
                )
                record["times"][mode] = times
            store.put(key, record)
            del model
        for mode in modes:
            times = record["times"][mode]
            sgd = common.median(times["sgd"]) if "sgd" in times else float("nan")
            sgd_floor = TRAFFIC["sgd"][0]
            for name in names:
                t = common.median(times[name])
                floor, what = traffic(name)
                floor_ratio = floor / sgd_floor if floor else float("nan")
                ratio = t / sgd
                gbps = floor * 4 * record["params"] / t / 1e9 if floor else float("nan")
                rows.append(
                    [
                        f"{record['description']} ({record['params'] / 1e6:.2f}M, {record['n_vars']} vars)",
                        mode,
                        name,
                        f"{t * 1e3:.2f}",
                        f"{min(times[name]) * 1e3:.2f}",
                        common.fmt(ratio),
                        common.fmt(floor_ratio),
                        common.fmt(floor_ratio / ratio),
                        common.fmt(gbps),
                    ]
                )
    headers = [
        "model",
        "mode",
        "optimizer",
        "median ms",
        "min ms",
        "ratio to SGD",
        "traffic floor (ratio to SGD)",
        "floor / measured",
        "GB/s at floor bytes",
    ]
    notes = [
        f"{repeats} timed calls per optimizer after {args.warmup} warm-up calls, interleaved round-robin "
        "in a fresh random order each round; median and minimum.",
        "xla: `tf.function(jit_compile=True)`; graph: `tf.function(jit_compile=False)`. "
        "Gradients are fixed N(0, 1e-3) tensors; the schedules are those of a 200-epoch, 390 steps/epoch run.",
        "Traffic floor: parameter-sized fp32 tensors an ideal fused update must move, "
        + "; ".join(f"{n} {traffic(n)[0]} ({traffic(n)[1]})" for n in names)
        + ". `floor / measured` = floor ratio / measured ratio: 1 means the optimizer is as close "
        "to its floor as SGD is to its own; below 1, it costs more than its extra traffic explains.",
        "GB/s at floor bytes: floor tensors x 4 bytes x parameters / median time (an effective bandwidth).",
    ]
    return common.write_table(args, "apply", "Cost of one optimizer.apply", headers, rows, notes)


def run_step(args, names):
    import numpy as np
    import tensorflow as tf
    import keras

    from benchmarks import optimizers as bopt

    store = common.ResultStore(args.output_dir, "step", args.force)
    repeats = args.repeats or (2 if args.quick else 5)
    model_name = "cifar_resnet8" if args.quick else args.step_model
    batch = args.batch_size or (8 if args.quick else 32)
    modes = [m.strip() for m in args.step_modes.split(",") if m.strip()]
    key = common.ResultStore.make_key(model=model_name, batch=batch, modes=",".join(modes), opts=",".join(names), r=repeats)
    record = store.get(key)
    if record is None:
        common.log(f"step: building {model_name}, batch {batch}")
        model, description = make_model(model_name)
        shape, classes = input_shape_of(model_name)
        rng = np.random.default_rng(0)
        x = tf.constant(rng.uniform(0, 1, (batch,) + shape).astype("float32"))
        y = tf.constant(rng.integers(0, classes, batch).astype("int32"))
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        logits_out = getattr(model.layers[-1], "activation", None) is keras.activations.linear
        if not logits_out:
            loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=False)
        variables = model.trainable_variables
        n_params = int(sum(np.prod(v.shape) for v in variables))
        record = {"description": description, "params": n_params, "batch": batch, "times": {}}
        for mode in modes:
            fns = {}
            for name in names:
                opt = bopt.build(name, 0.01, steps_per_epoch=390, epochs=200, seed=0)
                opt.build(variables)

                def step(opt=opt):
                    with tf.GradientTape() as tape:
                        loss = loss_fn(y, model(x, training=True))
                    grads = tape.gradient(loss, variables)
                    opt.apply(grads, variables)
                    return loss

                fn = tf.function(step, jit_compile=(mode == "xla"), autograph=False)
                fns[name] = lambda fn=fn: _sync(fn())
            common.log(f"step: {model_name} batch {batch}, mode={mode}: compiling {len(fns)} optimizers")
            record["times"][mode] = common.time_interleaved(
                fns, repeats, warmup=args.warmup, progress=lambda m: common.log(f"step {mode}: {m}")
            )
        store.put(key, record)
    rows = []
    for mode in modes:
        times = record["times"][mode]
        sgd = common.median(times["sgd"]) if "sgd" in times else float("nan")
        for name in names:
            t = common.median(times[name])
            rows.append(
                [
                    f"{record['description']} ({record['params'] / 1e6:.2f}M), batch {record['batch']}",
                    mode,
                    name,
                    f"{t * 1e3:.1f}",
                    f"{min(times[name]) * 1e3:.1f}",
                    common.fmt(t / sgd),
                    f"{(t - sgd) * 1e3:+.1f}",
                ]
            )
    headers = ["model", "mode", "optimizer", "median ms", "min ms", "ratio to SGD", "extra ms over SGD"]
    notes = [
        f"{repeats} timed steps per optimizer after {args.warmup} warm-up steps, interleaved; "
        "a fixed synthetic batch of CIFAR's shape (the data pipeline is not timed).",
        "A step is forward + backward + `optimizer.apply` in one `tf.function`.",
    ]
    return common.write_table(args, "step", "Cost of one whole training step", headers, rows, notes)


def run_breakdown(args):
    import numpy as np
    import tensorflow as tf

    store = common.ResultStore(args.output_dir, "breakdown", args.force)
    repeats = args.repeats or (2 if args.quick else 7)
    model_name = "cifar_resnet8" if args.quick else [m.strip() for m in args.models.split(",") if m.strip()][0]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    key = common.ResultStore.make_key(model=model_name, modes=",".join(modes), r=repeats)
    record = store.get(key)
    if record is None:
        model, description = make_model(model_name)
        variables = [tf.Variable(v.numpy()) for v in model.trainable_variables]
        n_params = int(sum(np.prod(v.shape) for v in variables))
        rng = np.random.default_rng(0)
        grads = [tf.constant(rng.normal(0, 1e-3, v.shape).astype("float32")) for v in variables]
        qp = 2.0**19

        def sgd():
            for v, g in zip(variables, grads):
                v.assign_add(-0.01 * g)
            return variables[0][0:1] if variables[0].shape.rank == 1 else tf.reshape(variables[0], [-1])[0:1]

        def norms():
            return tf.add_n([tf.sqrt(tf.reduce_sum(tf.square(g))) for g in grads])

        def rounded():
            for v, g in zip(variables, grads):
                v.assign_add(tf.floor(g * (-0.01 * qp) + 0.5) / qp)
            return tf.reshape(variables[0], [-1])[0:1]

        fns = {}
        for mode in modes:
            for name, fn in (("SGD update", sgd), ("per-tensor norms only", norms), ("rounded update only", rounded)):
                compiled = tf.function(fn, jit_compile=(mode == "xla"), autograph=False)
                fns[f"{name} | {mode}"] = lambda compiled=compiled: _sync(compiled())
        common.log(f"breakdown: {model_name} ({n_params:,} params)")
        times = common.time_interleaved(fns, repeats, warmup=args.warmup, progress=lambda m: common.log(f"breakdown: {m}"))
        record = store.put(key, {"description": description, "params": n_params, "times": times})
    rows = []
    for label, times in record["times"].items():
        name, mode = label.split(" | ")
        sgd = common.median(record["times"][f"SGD update | {mode}"])
        t = common.median(times)
        rows.append([f"{record['description']} ({record['params'] / 1e6:.2f}M)", mode, name, f"{t * 1e3:.2f}",
                     common.fmt(t / sgd)])
    headers = ["model", "mode", "operation", "median ms", "ratio to the SGD update (same mode)"]
    notes = [f"{repeats} interleaved timed calls after {args.warmup} warm-up calls; the same variables and fixed "
             "N(0, 1e-3) gradients as the apply table. The norms are the reduction that QSGLD's compensation adds; "
             "the rounded update is QSGLD's elementwise work without it."]
    return common.write_table(args, "breakdown", "Where QSGLD's time goes", headers, rows, notes)


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    common.quiet_tensorflow()
    from benchmarks import optimizers as bopt

    default = SPEED_DEFAULT + tuple(f"qsgld_{m}" for m in bopt.extra_rounding_modes())
    if args.quick:
        default = ("sgd", "qsgld", "sgld")  # proves the harness; the compilations dominate
    names = bopt.parse_optimizers(args.optimizers, default)
    if "sgd" not in names:
        names = ["sgd"] + names  # the reference of every ratio
    common.log(f"speed: tables {args.table_list}, optimizers {names}")
    outputs = []
    if "apply" in args.table_list:
        outputs.append(run_apply(args, names))
    if "step" in args.table_list:
        outputs.append(run_step(args, names))
    if "breakdown" in args.table_list:
        outputs.append(run_breakdown(args))
    return outputs


if __name__ == "__main__":
    main()
