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

from benchmarks import common

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
# What each (backend, mode) runs, for the tables' notes.
MODE_NOTES = {
    "apply": {
        (
            "tensorflow",
            "xla",
        ): "`tf.function(jit_compile=True)` around `optimizer.apply`",
        (
            "tensorflow",
            "graph",
        ): "`tf.function(jit_compile=False)`: QSGLD, QAdam and Gaussian SGLD run their own "
        "XLA-compiled update inside it (`jit_compile=True`, their default); the rows marked `jit_compile=False` "
        "and Keras' optimizers run op by op",
        (
            "tensorflow",
            "eager",
        ): "`optimizer.apply` called eagerly: QSGLD, QAdam and Gaussian SGLD run their own "
        "XLA-compiled update (`jit_compile=True`, their default); the rows marked `jit_compile=False` and "
        "Keras' optimizers run op by op",
        (
            "jax",
            "jit",
        ): "`jax.jit` of `optimizer.stateless_apply`, the state donated and carried from call to call",
        ("torch", "compiled"): "`torch.compile` of `optimizer.apply`",
        ("torch", "eager"): "`optimizer.apply`",
    },
    "step": {
        ("tensorflow", "xla"): "`model.compile(jit_compile=True)`",
        (
            "tensorflow",
            "graph",
        ): "`model.compile(jit_compile=False)` (a `tf.function` without XLA; QSGLD and "
        "QAdam compile their update with XLA inside it)",
        (
            "tensorflow",
            "eager",
        ): "`model.compile(run_eagerly=True)` (QSGLD and QAdam: their own XLA-compiled update)",
        ("jax", "jit"): "`model.compile(jit_compile=True)` (`jax.jit`)",
        ("jax", "eager"): "`model.compile(run_eagerly=True)`",
        (
            "torch",
            "compiled",
        ): "`model.compile(jit_compile=True)` (`torch.compile`)",
        ("torch", "eager"): "`model.compile(jit_compile=False)`",
    },
    "breakdown": {
        ("tensorflow", "xla"): "`tf.function(jit_compile=True)`",
        ("tensorflow", "graph"): "`tf.function(jit_compile=False)`",
        ("tensorflow", "eager"): "op by op",
        ("jax", "jit"): "`jax.jit`",
        ("torch", "compiled"): "`torch.compile`",
        ("torch", "eager"): "op by op",
    },
}
# Parameter-sized fp32 tensors an ideal fused update reads + writes, per optimizer.
TRAFFIC = {
    "sgd": (3, "read g, w; write w"),
    "sgd_momentum": (5, "read g, m, w; write m, w"),
    "adam": (7, "read g, m, v, w; write m, v, w"),
    "adamw": (7, "as Adam, decay fused"),
    "qsgld": (4, "read g twice (norm, update), w; write w"),
    "qsgd": (3, "no norm: as SGD"),
    "qadam": (
        9,
        "pass 1 read g, m, v, write m, v (norm of h); pass 2 read m, v, w, write w",
    ),
    "sgld": (3, "as SGD; noise generated, not read"),
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
DEFAULT_ROUNDS = {"apply": 7, "step": 5, "breakdown": 7}
QUICK_ROUNDS = 2


def traffic(name):
    if name in TRAFFIC:
        return TRAFFIC[name]
    if name.startswith(
        "qsgld_"
    ):  # the random roundings: as QSGLD, random bits generated
        return (4, "as QSGLD; random bits generated")
    return (None, "")


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
        ("--batch-size", common.positive_int, "step table batch size"),
        ("--step-inputs", common.positive_int, "step table: inputs of the MLP"),
        (
            "--step-width",
            common.positive_int,
            "step table: width of the MLP's hidden layers",
        ),
        (
            "--step-depth",
            common.positive_int,
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
        type=common.positive_int,
        default=None,
        help="timed calls per optimizer, interleaved (median) (default: "
        + ", ".join(f"{t} {n}" for t, n in DEFAULT_ROUNDS.items())
        + f"; quick: {QUICK_ROUNDS})",
    )
    p.add_argument(
        "--warmup",
        type=common.positive_int,
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
        raise common.UsageError(
            f"Argument `--backends` must name backends among {BACKENDS}. Received: {args.backends!r}"
        )
    missing = [b for b in args.backend_list if b not in installed_backends()]
    if missing:
        raise common.UsageError(
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
        raise common.UsageError(
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
        raise common.UsageError(
            f"Argument `{flag}` must be 'all' or modes among {sorted(known)}. Received: {text!r}"
        )
    return {
        b: tuple(m for m in modes if m in chosen)
        for b, modes in modes_of.items()
    }


def rounds(args, table):
    return args.rounds or DEFAULT_ROUNDS[table]


# -- result keys: one record per backend, table and setting --------------------------------
def apply_key(args, backend, model):
    modes = ",".join(args.apply_modes[backend])
    return common.ResultStore.make_key(
        backend=backend,
        model=model,
        modes=modes,
        opts=args.optimizers,
        r=rounds(args, "apply"),
        w=args.warmup,
    )


def step_key(args, backend):
    return common.ResultStore.make_key(
        backend=backend,
        modes=",".join(args.step_modes_of[backend]),
        opts=args.step_optimizers,
        r=rounds(args, "step"),
        w=args.warmup,
        batch=args.batch_size,
        mlp=f"{args.step_inputs}x{args.step_width}x{args.step_depth}",
    )


def breakdown_key(args, backend):
    modes = ",".join(args.apply_modes[backend])
    return common.ResultStore.make_key(
        backend=backend,
        model=args.model_list[0],
        modes=modes,
        r=rounds(args, "breakdown"),
        w=args.warmup,
    )


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
            f"{common.script_name()}: error: the {backend} part failed (exit code {code}); see above"
        )


# -- tables (from the stored records of every backend) --------------------------------------
def stored_records(args, table, key_of):
    """[(backend, record)] of the backends asked for, from the table's results file; the
    backend reads "jax (cpu)": where it computed."""
    store = common.ResultStore(args.output_dir, table)
    found = []
    for backend in args.backend_list:
        for key in key_of(backend):
            record = store.get(key)
            if record is None:
                common.log(f"{table}: no results for {backend} ({key})")
            else:
                found.append((f"{backend} ({record['device']})", record))
    return found


def timing_rows(backend, model, mode, times, first, reference):
    """Per timed label: [backend, model, mode, label, median ms, min ms, first call s] and
    the median in seconds; `reference(label)` names the label its ratio is taken to."""
    rows = []
    for label, values in times.items():
        t = common.median(values)
        ref = (
            common.median(times[reference(label)])
            if reference(label) in times
            else float("nan")
        )
        row = [
            backend,
            model,
            mode,
            label,
            f"{t * 1e3:.2f}",
            f"{min(values) * 1e3:.2f}",
        ]
        rows.append(
            (row, t, ref, f"{first[label]:.2f}" if label in first else "-")
        )
    return rows


def write_apply(args):
    records = stored_records(
        args,
        "apply",
        lambda b: [apply_key(args, b, m) for m in args.model_list],
    )
    rows = []
    for backend, record in records:
        model = f"{record['description']} ({record['params'] / 1e6:.2f}M, {record['n_vars']} vars)"
        sgd_floor = TRAFFIC["sgd"][0]
        for mode, times in record["times"].items():
            for row, t, sgd, first in timing_rows(
                backend,
                model,
                mode,
                times,
                record["first"][mode],
                lambda _: "sgd",
            ):
                floor, _ = traffic(record["names"][row[3]])
                floor_ratio = floor / sgd_floor if floor else float("nan")
                gbps = (
                    floor * 4 * record["params"] / t / 1e9
                    if floor
                    else float("nan")
                )
                ratio = t / sgd
                rows.append(
                    row
                    + [
                        common.fmt(ratio),
                        common.fmt(floor_ratio),
                        common.fmt(floor_ratio / ratio),
                        common.fmt(gbps),
                        first,
                    ]
                )
    headers = [
        "backend",
        "model",
        "mode",
        "optimizer",
        "median ms",
        "min ms",
        "ratio to SGD",
        "traffic floor (ratio to SGD)",
        "floor / measured",
        "GB/s at floor bytes",
        "first call s",
    ]
    names = list(
        dict.fromkeys(
            name for _, record in records for name in record["names"].values()
        )
    )
    setup = records[0][1]["setup"] if records else {}
    notes = timing_notes(args, "apply", rows) + [
        f"Gradients are fixed N(0, {setup.get('gradient_std', float('nan')):g}) tensors; each optimizer at its "
        f"default learning rate, its schedules evaluated as in the paper's CIFAR-10 run ({setup.get('epochs')} "
        f"epochs of {setup.get('steps_per_epoch')} steps).",
        "Traffic floor: parameter-sized fp32 tensors an ideal fused update must move, "
        + "; ".join(f"{n} {traffic(n)[0]} ({traffic(n)[1]})" for n in names)
        + ". `floor / measured` = floor ratio / measured ratio: 1 means the optimizer is as close "
        "to its floor as SGD is to its own; below 1, it costs more than its extra traffic explains.",
        "GB/s at floor bytes: floor tensors x 4 bytes x parameters / median time (an effective bandwidth).",
        "First call: the untimed first call, which traces and compiles (torch.compile: tens of seconds).",
    ]
    return common.write_table(
        args, "apply", "Cost of one optimizer.apply", headers, rows, notes
    )


def write_step(args):
    rows = []
    for backend, record in stored_records(
        args, "step", lambda b: [step_key(args, b)]
    ):
        model = f"{record['description']} ({record['params'] / 1e6:.2f}M), batch {record['batch']}"
        families = record["families"]
        for mode, times in record["times"].items():
            for row, t, base, first in timing_rows(
                backend,
                model,
                mode,
                times,
                record["first"][mode],
                lambda label: families[label],
            ):
                baseline = families[row[3]]
                rows.append(
                    row
                    + [
                        baseline,
                        common.fmt(t / base),
                        f"{(t - base) * 1e3:+.2f}",
                        first,
                    ]
                )
    headers = [
        "backend",
        "model",
        "mode",
        "optimizer",
        "median ms",
        "min ms",
        "baseline",
        "ratio to baseline",
        "extra ms over baseline",
        "first call s",
    ]
    notes = timing_notes(args, "step", rows) + [
        "A step is `model.train_on_batch(x, y)` on a fixed random batch (no data pipeline): forward, backward "
        "and `optimizer.apply`, as each mode compiles it; every optimizer trains a model of its own from the "
        "same initial weights. The baseline is the optimizer whose step QSGLD and QAdam quantize: SGD and Adam.",
    ]
    return common.write_table(
        args, "step", "Cost of one whole training step", headers, rows, notes
    )


def write_breakdown(args):
    records = stored_records(
        args, "breakdown", lambda b: [breakdown_key(args, b)]
    )
    rows = []
    for backend, record in records:
        model = f"{record['description']} ({record['params'] / 1e6:.2f}M)"
        for mode, times in record["times"].items():
            for row, t, sgd, _ in timing_rows(
                backend, model, mode, times, {}, lambda _: "SGD update"
            ):
                rows.append(row[:5] + [common.fmt(t / sgd)])
    headers = [
        "backend",
        "model",
        "mode",
        "operation",
        "median ms",
        "ratio to the SGD update (same mode)",
    ]
    setup = records[0][1]["setup"] if records else {}
    notes = timing_notes(args, "breakdown", rows) + [
        "Over the variables of the apply table's model and fixed N(0, "
        f"{setup.get('gradient_std', float('nan')):g}) gradients, with lr {setup.get('learning_rate')} and Qp "
        f"{setup.get('qp', float('nan')):g}: the SGD update `w - lr g` and the rounded update "
        "`w + floor(-lr Qp g + 1/2) / Qp` written into the variables (JAX: carried and donated), and the "
        "per-tensor norms of the gradients alone: `sqrt(sum(g**2))`, one reduction each, and as QSGLD takes them "
        "(`keras_qsgld.quantization.sum_of_squares`: rows of 32, then the rows). The norms are the reduction that "
        "QSGLD's compensation adds; the rounded update is QSGLD's elementwise work without it.",
    ]
    return common.write_table(
        args, "breakdown", "Where QSGLD's time goes", headers, rows, notes
    )


def timing_notes(args, table, rows):
    modes = list(
        dict.fromkeys((row[0].split(" ")[0], row[2]) for row in rows)
    )  # (backend, mode)
    return [
        f"{rounds(args, table)} timed calls per optimizer after {args.warmup} warm-up calls (the first call, which "
        "traces and compiles, is among them), interleaved round-robin in a fresh random order each round; "
        "median and minimum. Each backend runs in a process of its own.",
        "Modes: "
        + "; ".join(f"{b} {m}: {MODE_NOTES[table][b, m]}" for b, m in modes)
        + ".",
    ]


WRITERS = {
    "apply": write_apply,
    "step": write_step,
    "breakdown": write_breakdown,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = finish(build_parser().parse_args(argv))
    args = common.finish_args(args, backends=args.backend_list)
    if args.measure_only:
        common.quiet_interrupt()  # the parent says how to resume
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
    common.run_script(main)
