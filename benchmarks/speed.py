"""Speed: the cost of one `optimizer.apply`, and of a whole training step, per optimizer and backend.

Tables (`--tables`), each with a backend column:

* `apply`: one `optimizer.apply(grads, variables)` over the trainable variables of
  `keras.applications.ResNet50` (25.6M parameters) and of the CIFAR ResNet-50, in the modes
  of each backend: TensorFlow `xla` (`tf.function(jit_compile=True)`), `graph`
  (`tf.function(jit_compile=False)`) and `eager` (outside XLA, QSGLD, QAdam and Gaussian
  SGLD run their own XLA-compiled update, `jit_compile=True`, and again op by op with
  `jit_compile=False`; Keras' optimizers op by op); JAX `jit` (`jax.jit` of
  `optimizer.stateless_apply`); PyTorch `compiled` (`torch.compile` of `optimizer.apply`)
  and `eager`. The optimizers
  (QSGLD with the paper's compensation, SGD and Adam among them) share the variables and
  fixed random gradients; they are timed round-robin in a fresh order each round, and the
  table gives the median and the ratio to plain SGD timed in the same run. The first call
  (tracing, compilation) is not timed; its duration has a column of its own. The
  memory-traffic floor counts the parameter-sized tensors an ideal fused kernel must read
  or write (SGD: read g and w, write w = 3; QSGLD: g twice for the norm and the update = 4,
  so 4/3 of SGD; Adam 7, 7/3 of SGD).
* `step`: one whole training step (`model.train_on_batch`: forward, backward, apply) of an
  MLP of about 19M parameters (1024 inputs, 5 hidden layers of 2048) at batch 32, where the
  optimizer is a visible share of the step: QSGLD against SGD and QAdam against Adam, with
  and without compilation (`model.compile(jit_compile=True)`, TensorFlow's graph without
  XLA, and eager: TensorFlow `xla`, `graph`, `eager`; JAX `jit`, `eager`; PyTorch
  `compiled`, `eager`).
* `breakdown`: where QSGLD's extra time goes, over the apply table's first model, in the
  apply table's modes: the plain SGD update, the per-tensor norms alone (the reduction
  QSGLD's compensation needs: one reduction each, and QSGLD's two-level sum), and the
  rounded update alone (`floor(-lr Qp g + 1/2) / Qp`, no norm), the updates written into the
  variables as an optimizer writes them.

Backends (`--backends`, default: those installed among tensorflow, jax, torch): Keras reads
`KERAS_BACKEND` once, at import, and TensorFlow and PyTorch must not share a process, so each
backend runs in a process of its own (this one, when it runs one backend only). The results
are stored per backend and model in `--output-dir`: an interrupted run resumes where it
stopped, and the tables gather every backend's results.

Run from the repository root, e.g. `python -m benchmarks.speed --quick`.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

from benchmarks import common
from benchmarks.speed_tables import (
    DEFAULT_ROUNDS,
    WRITERS,
    apply_key,
    breakdown_key,
    rounds,
    step_key,
)
from experiments import cli

BACKENDS = tuple(common.BACKEND_PACKAGES)
TABLES = ("apply", "step", "breakdown")
# The modes of each backend (compiled first); the step table's also include JAX eager.
APPLY_MODES = {
    "tensorflow": ("xla", "graph", "eager"),
    "jax": ("jit",),
    "torch": ("compiled", "eager"),
}
STEP_MODES = {
    "tensorflow": ("xla", "graph", "eager"),
    "jax": ("jit", "eager"),
    "torch": ("compiled", "eager"),
}
# The sizes of a full run, and of --quick (tiny sizes, every mode, two optimizers a table).
FULL = dict(
    optimizers="all",
    step_optimizers="sgd,qsgld,adam,qadam",
    models="resnet50,cifar_resnet50",
    batch_size=32,
    step_inputs=1024,
    step_width=2048,
    step_depth=5,
)
QUICK = dict(
    optimizers="sgd,qsgld",
    step_optimizers="sgd,qsgld",
    models="mlp",
    batch_size=8,
    step_inputs=64,
    step_width=32,
    step_depth=2,
)
QUICK_ROUNDS = 2


def installed_backends():
    return [
        b
        for b in BACKENDS
        if importlib.util.find_spec(common.BACKEND_PACKAGES[b]) is not None
    ]


def build_parser():
    p = common.parser(
        __doc__.split("\n\n")[0], TABLES, "results/benchmarks/speed"
    )
    p.add_argument(
        "--backends",
        default=",".join(installed_backends()),
        help="comma-separated Keras backends among tensorflow, jax, torch, each run in a process of its own",
    )
    sized = [
        (
            "--optimizers",
            str,
            "apply table: 'all', or names among benchmarks.optimizers",
        ),
        (
            "--step-optimizers",
            str,
            "step table: names among benchmarks.optimizers",
        ),
        (
            "--models",
            str,
            "apply table (and breakdown: the first): resnet50 (keras.applications), "
            "cifar_resnet50, cifar_resnetN (depth N = 6n+2), cnn, mnist_mlp (784-256-256-10), "
            "mlp (a tiny MLP)",
        ),
        ("--batch-size", cli.positive_int, "step table batch size"),
        ("--step-inputs", cli.positive_int, "step table: inputs of the MLP"),
        (
            "--step-width",
            cli.positive_int,
            "step table: width of the MLP's hidden layers",
        ),
        (
            "--step-depth",
            cli.positive_int,
            "step table: hidden layers of the MLP",
        ),
    ]
    for flag, kind, text in sized:
        name = flag[2:].replace("-", "_")
        p.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{text} (default: {FULL[name]}; quick: {QUICK[name]})",
        )
    p.add_argument(
        "--modes",
        default="all",
        help="apply and breakdown tables: 'all', or modes among tensorflow: xla, graph, eager; jax: jit; "
        "torch: compiled, eager (a backend runs those it has)",
    )
    p.add_argument(
        "--step-modes",
        default="all",
        help="step table: 'all', or modes among tensorflow: xla, graph, eager; jax: jit, eager; torch: compiled, eager",
    )
    p.add_argument(
        "--rounds",
        type=cli.positive_int,
        default=None,
        help="timed calls per optimizer, interleaved (median) (default: "
        + ", ".join(f"{t} {n}" for t, n in DEFAULT_ROUNDS.items())
        + f"; quick: {QUICK_ROUNDS})",
    )
    p.add_argument(
        "--warmup",
        type=cli.positive_int,
        default=2,
        help="untimed calls per optimizer first (compilation)",
    )
    # Set by the parent on the process it starts for one backend: measure, store, no tables.
    p.add_argument(
        "--measure-only", action="store_true", help=argparse.SUPPRESS
    )
    return p


def finish(args):
    """Checks the backends and modes; applies the quick sizes."""
    args.backend_list = parse_list(args.backends)
    unknown = [b for b in args.backend_list if b not in BACKENDS]
    if unknown or not args.backend_list:
        raise cli.UserError(
            f"Argument `--backends` must name backends among {BACKENDS}. Received: {args.backends!r}"
        )
    missing = [b for b in args.backend_list if b not in installed_backends()]
    if missing:
        raise cli.UserError(
            f"Argument `--backends` names {', '.join(missing)}, not installed here "
            f"(pip install keras-qsgld[{','.join(missing)}]). Received: --backends={args.backends!r}"
        )
    args.apply_modes = select_modes(args.modes, APPLY_MODES, "--modes")
    args.step_modes_of = select_modes(
        args.step_modes, STEP_MODES, "--step-modes"
    )
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.quick and args.rounds is None:
        args.rounds = QUICK_ROUNDS
    args.model_list = parse_list(args.models)
    if not args.model_list:
        raise cli.UserError(
            f"Argument `--models` must name at least one model. Received: {args.models!r}"
        )
    return args


def parse_list(text):
    return [t.strip() for t in str(text).split(",") if t.strip()]


def select_modes(text, modes_of, flag):
    """{backend: modes} chosen by `text` ('all' or mode names; a backend keeps those it has)."""
    if text == "all":
        return dict(modes_of)
    chosen = parse_list(text)
    known = {m for modes in modes_of.values() for m in modes}
    if not chosen or any(m not in known for m in chosen):
        raise cli.UserError(
            f"Argument `{flag}` must be 'all' or modes among {sorted(known)}. Received: {text!r}"
        )
    return {
        b: tuple(m for m in modes if m in chosen)
        for b, modes in modes_of.items()
    }


# -- measuring, in the process of one backend -----------------------------------------------
def runs_here(backend):
    """Whether this process can run `backend`: Keras is not imported yet or runs it, and
    TensorFlow and PyTorch would not meet."""
    keras = sys.modules.get("keras")
    if keras is not None:
        return keras.backend.backend() == backend
    clash = {"torch": "tensorflow", "tensorflow": "torch"}.get(backend)
    return clash not in sys.modules


def measure(args, backend):
    """Runs this backend's part of the tables asked for, in this process, and stores it."""
    if backend == "tensorflow":
        common.use_tensorflow_backend(
            "benchmarks.speed"
        )  # also keeps TF's start-up lines quiet
    else:
        os.environ["KERAS_BACKEND"] = backend
    if backend == "torch" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        # First calls compile from an empty cache: Inductor keeps compiled graphs and
        # kernels on disk, and a cache filled by an earlier run would hide the compile time.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(
            prefix="inductor_"
        )
    # Imported here, not at the top: it imports Keras, which reads KERAS_BACKEND (set just
    # above from --backends) once, at its first import.
    from benchmarks import speed_measure

    common.log(f"speed: {backend}, tables {args.table_list}")
    compute = {
        "apply": lambda model: speed_measure.measure_apply(
            model,
            speed_measure.optimizer_names(args.optimizers),
            args.apply_modes[backend],
            rounds(args, "apply"),
            args.warmup,
        ),
        "step": lambda _: speed_measure.measure_step(
            speed_measure.optimizer_names(args.step_optimizers),
            args.step_modes_of[backend],
            rounds(args, "step"),
            args.warmup,
            args.step_inputs,
            args.step_width,
            args.step_depth,
            args.batch_size,
        ),
        "breakdown": lambda model: speed_measure.measure_breakdown(
            model,
            args.apply_modes[backend],
            rounds(args, "breakdown"),
            args.warmup,
        ),
    }
    for table, key, model in pending(args, backend):
        common.ResultStore(args.output_dir, table).put(
            key, compute[table](model)
        )


def pending(args, backend):
    """[(table, key, model)] of this backend's records still to measure (with --force: all
    that this process has not measured). Per record, not per file: a table's file holds
    every backend's records."""
    work = []
    if "apply" in args.table_list and args.apply_modes[backend]:
        work += [
            ("apply", apply_key(args, backend, model), model)
            for model in args.model_list
        ]
    if "step" in args.table_list and args.step_modes_of[backend]:
        work.append(("step", step_key(args, backend), None))
    if "breakdown" in args.table_list and args.apply_modes[backend]:
        work.append(
            ("breakdown", breakdown_key(args, backend), args.model_list[0])
        )
    stores = {
        table: common.ResultStore(args.output_dir, table)
        for table in {w[0] for w in work}
    }
    return [
        (table, key, model)
        for table, key, model in work
        if stores[table].get(key, force=args.force) is None
    ]


def measure_in_child(argv, backend):
    """Runs `python -m benchmarks.speed ARGV --backends BACKEND --measure-only` with
    `KERAS_BACKEND=BACKEND`, in this working directory (the output directory is relative
    to it) and with this `benchmarks` package importable from there."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p
    )
    command = [
        sys.executable,
        "-m",
        "benchmarks.speed",
        *argv,
        "--backends",
        backend,
        "--measure-only",
    ]
    common.log(f"speed: {backend} in a process of its own")
    code = subprocess.run(command, env=env).returncode
    if code == 130:
        raise KeyboardInterrupt
    if code == 2:  # a user error: the child said which, in one line
        raise SystemExit(2)
    if code != 0:
        raise SystemExit(
            f"{cli.script_name()}: error: the {backend} part failed (exit code {code}); see above"
        )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = finish(build_parser().parse_args(argv))
    args = common.finish_args(args, backends=args.backend_list)
    if args.measure_only:
        cli.quiet_interrupt()  # the parent says how to resume
        for backend in args.backend_list:
            measure(args, backend)
        return []
    common.log(f"speed: backends {args.backend_list}, tables {args.table_list}")
    if len(args.backend_list) == 1 and runs_here(args.backend_list[0]):
        measure(args, args.backend_list[0])
    else:
        for backend in args.backend_list:
            if pending(args, backend):
                measure_in_child(argv, backend)
            else:
                common.log(f"speed: {backend}: every result is stored already")
    return [WRITERS[table](args) for table in args.table_list]


if __name__ == "__main__":
    common.run_benchmark(main)
