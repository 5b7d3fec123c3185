"""Does the `jit_compile` flag pay in eager custom training loops?

Times `optimizer.apply(grads, model.trainable_variables)` called eagerly (outside any
`tf.function`, as a custom training loop does) with `jit_compile=True` (the update runs
as one XLA-compiled function) against `jit_compile=False` (every `keras.ops` call of the
update is dispatched eagerly, op by op, variable by variable). Keras' own SGD and Adam,
which have no such flag, run eagerly and are shown for reference.

Method: fixed random gradients (seeded); per configuration a first call (tracing and,
with XLA, compilation: reported separately) and warm-up calls; then `--rounds` rounds in
which every configuration times `--steps` consecutive calls, in an order that alternates
between rounds (interleaved, so that load changes on the machine hit all configurations
alike). The table gives the median over rounds of the time per call, the spread (min and
max over rounds), and the speed-up of XLA over the eager op-by-op update.

The `jit_compile` flag is TensorFlow's (the eager XLA update of
`keras_qsgld.backend.tensorflow`): this script sets `KERAS_BACKEND=tensorflow` itself. Run
from the repository root: `python -m benchmarks.eager_xla` (see `--help`); output is plain
text (quoted in `docs/eager_xla.md`).
"""

import os
import platform
import statistics
import time

from benchmarks import common
from experiments import cli

# It times TensorFlow's eager XLA update: this script runs on the TensorFlow backend whatever
# KERAS_BACKEND says, set before Keras is imported.
common.use_tensorflow_backend(__name__)

import keras
import numpy as np
import tensorflow as tf

import keras_qsgld
from experiments.defaults import DEFAULT_LEARNING_RATE
from experiments.models import MODELS, build_model

STEPS_PER_EPOCH = (
    100  # the schedules' clock (their values do not change the cost)
)
TAU0 = 2.0  # the compensation's switch-off, in epochs
QSGLD_LR, MOMENTUM = 0.05, 0.9


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        default="cnn,cifar_resnet",
        help="comma-separated experiments.models names",
    )
    parser.add_argument(
        "--depth",
        type=cli.positive_int,
        default=20,
        help="depth of cifar_resnet (6n+2)",
    )
    parser.add_argument("--rounds", type=cli.positive_int, default=5)
    parser.add_argument(
        "--steps",
        type=cli.positive_int,
        default=10,
        help="timed calls per configuration and round",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed calls after the first one",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="TF intra/inter-op threads (0: TF's default)",
    )
    parser.add_argument(
        "--no-baselines", action="store_true", help="skip Keras' SGD and Adam"
    )
    args = parser.parse_args(argv)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.model_list or any(m not in MODELS for m in args.model_list):
        raise cli.UserError(
            f"Argument `--models` must name models among {MODELS}. Received: {args.models!r}"
        )
    if args.warmup < 0 or args.threads < 0:
        raise cli.UserError(
            f"Arguments `--warmup` and `--threads` must be >= 0. Received: {args.warmup}, {args.threads}"
        )
    return args


def machine_lines():
    lines = [
        f"python {platform.python_version()}, tensorflow {tf.__version__}, keras {keras.__version__}, "
        f"backend {keras.backend.backend()}",
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs visible",
    ]
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in f
                    if line.startswith("model name")
                ),
                None,
            )
        if model:
            lines.append(f"cpu: {model}")
    except OSError:
        pass
    gpus = tf.config.list_physical_devices("GPU")
    lines.append(f"GPUs: {len(gpus)}")
    return lines


def load_average():
    try:
        return "load average %.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "load average n/a"


def configurations(include_baselines):
    """(title, callable(steps_per_epoch) -> optimizer) of each configuration."""

    def schedules(spe):
        return dict(
            resolution=keras_qsgld.ResolutionSchedule(steps_per_epoch=spe),
            compensation=keras_qsgld.CompensationSchedule(
                tau0=TAU0, steps_per_epoch=spe
            ),
        )

    def qsgld(jit):
        return lambda spe: keras_qsgld.QSGLD(
            QSGLD_LR, momentum=MOMENTUM, jit_compile=jit, **schedules(spe)
        )

    def qadam(jit):
        return lambda spe: keras_qsgld.QAdam(
            DEFAULT_LEARNING_RATE["qadam"], jit_compile=jit, **schedules(spe)
        )

    configs = [
        ("QSGLD(momentum=0.9) jit_compile=True", qsgld(True)),
        ("QSGLD(momentum=0.9) jit_compile=False", qsgld(False)),
        ("QAdam jit_compile=True", qadam(True)),
        ("QAdam jit_compile=False", qadam(False)),
    ]
    if include_baselines:
        configs += [
            (
                "keras SGD(momentum=0.9) (eager)",
                lambda spe: keras.optimizers.SGD(QSGLD_LR, momentum=MOMENTUM),
            ),
            (
                "keras Adam (eager)",
                lambda spe: keras.optimizers.Adam(
                    DEFAULT_LEARNING_RATE["adam"]
                ),
            ),
        ]
    return configs


def bench_model(name, args):
    kwargs = {"depth": args.depth} if name == "cifar_resnet" else {}
    shape = (28, 28, 1) if name == "cnn" else (32, 32, 3)
    model = build_model(name, shape, 10, seed=args.seed, **kwargs)
    variables = model.trainable_variables
    n_weights = sum(int(np.prod(v.shape)) for v in variables)
    rng = np.random.default_rng(args.seed)
    grads = [
        tf.constant(rng.normal(0, 1e-2, v.shape).astype("float32"))
        for v in variables
    ]
    label = f"{name}" + (
        f" (depth {args.depth})" if name == "cifar_resnet" else ""
    )
    print(
        f"\n## {label}: {len(variables)} trainable variables, {n_weights:,} weights, input {shape}"
    )

    configs = configurations(not args.no_baselines)
    optimizers, first_call = {}, {}
    for title, make in configs:
        opt = make(STEPS_PER_EPOCH)
        opt.build(variables)
        start = time.perf_counter()
        opt.apply(grads, variables)
        first_call[title] = time.perf_counter() - start
        for _ in range(args.warmup):
            opt.apply(grads, variables)
        optimizers[title] = opt

    per_call = {title: [] for title, _ in configs}
    order = [title for title, _ in configs]
    for r in range(args.rounds):
        for title in order if r % 2 == 0 else order[::-1]:
            opt = optimizers[title]
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.apply(grads, variables)
            per_call[title].append(
                (time.perf_counter() - start) / args.steps * 1e3
            )

    for title, opt in optimizers.items():
        if "jit_compile=True" in title:
            fn = getattr(opt, "_xla_update_step", None)
            traced = (
                fn.experimental_get_tracing_count()
                if fn is not None
                else "none"
            )
            print(
                f"{title}: XLA update function traced {traced} time(s) in "
                f"{1 + args.warmup + args.rounds * args.steps} calls"
            )

    print()
    print(
        "| configuration | first call (s) | median ms/call | min-max ms/call "
        f"({args.rounds} rounds x {args.steps} calls) |"
    )
    print("|---|---|---|---|")
    for title, _ in configs:
        times = per_call[title]
        print(
            f"| {title} | {first_call[title]:.2f} | {statistics.median(times):.2f} | "
            f"{min(times):.2f}-{max(times):.2f} |"
        )
    print()
    for opt_name in ("QSGLD(momentum=0.9)", "QAdam"):
        on = statistics.median(per_call[f"{opt_name} jit_compile=True"])
        off = statistics.median(per_call[f"{opt_name} jit_compile=False"])
        rounds = [
            b / a
            for a, b in zip(
                per_call[f"{opt_name} jit_compile=True"],
                per_call[f"{opt_name} jit_compile=False"],
            )
        ]
        print(
            f"{opt_name}: jit_compile=False / jit_compile=True = {off / on:.2f}x (median ms ratio); "
            f"per round {min(rounds):.2f}x-{max(rounds):.2f}x"
        )


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)
    print("# Eager optimizer.apply: jit_compile=True vs False")
    print(f"command: {cli.command_line()}")
    for line in machine_lines():
        print(line)
    print(
        f"seed {args.seed}; TF threads intra {tf.config.threading.get_intra_op_parallelism_threads()} "
        f"inter {tf.config.threading.get_inter_op_parallelism_threads()} (0 = TF default); {load_average()} at start"
    )
    for name in args.model_list:
        bench_model(name, args)
    print(f"\n{load_average()} at the end")


if __name__ == "__main__":
    common.run_benchmark(main, resumable=False)
