"""The tables of `benchmarks.speed`, written from the stored records of every backend: the
records' keys, the memory-traffic floors and the notes that go with each table."""

from benchmarks import common

DEFAULT_ROUNDS = {"apply": 7, "step": 5, "breakdown": 7}


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


def traffic(name):
    if name in TRAFFIC:
        return TRAFFIC[name]
    if name.startswith(
        "qsgld_"
    ):  # the random roundings: as QSGLD, random bits generated
        return (4, "as QSGLD; random bits generated")
    return (None, "")


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
