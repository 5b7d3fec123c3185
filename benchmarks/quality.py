"""Quality: test accuracy and final train loss on offline real data, several seeds.

Tables (`--tables`):

* `lr`: the learning-rate choice. Each tuned optimizer runs every rate of its family's grid
  (SGD-like: 0.03, 0.1, 0.3, 1; Adam-like: 3e-4, 1e-3, 3e-3, 1e-2) on a tuning seed that is not
  among the evaluation seeds; the rate with the lowest final training loss is kept (no
  test data is used to choose). Optimizers with `tie_lr_to` reuse the rate of the one they
  are compared with (quantized SGD and Gaussian SGLD use SGD's; the random roundings use
  QSGLD's), so their gap is the noise's effect alone.
* `quality`: every optimizer at its rate, `--seeds` seeds, the same epoch budget:
  mean +- std of test accuracy and final train loss, and Welch's t-test of QSGLD against
  each baseline; `quality_DATASET.png` plots it.
* `ingredients`: SGD, quantized SGD (QSGLD with compensation off), QSGLD and Gaussian SGLD,
  all at the same rate (SGD's chosen rate, and QSGLD's where it differs): quantized SGD -
  SGD is what the quantization noise does, QSGLD - quantized SGD what the compensation
  (the early normalized-gradient boost) does.
* `ablation` (digits): QSGLD with compensation off / logistic / tanh; rounding nearest,
  floor, stochastic, dithered; eta 2^10..2^19; kappa 1, 2, 4; tau0 0.1, 0.2, 0.5 of the budget.

Data: scikit-learn digits (MLP) and MNIST-1D (1-D CNN), both offline, through
`experiments.datasets` and `experiments.models`.

A TensorFlow-backend script (its data are `tf.data` pipelines, its published results
TensorFlow's): it sets `KERAS_BACKEND=tensorflow` itself. Run from the repository root:
`python -m benchmarks.quality --quick`.
"""

import math
import os
import warnings

from benchmarks import common
from experiments import cli

# The data are tf.data pipelines and the published results TensorFlow's: this script runs on
# the TensorFlow backend whatever KERAS_BACKEND says, set before Keras is imported.
common.use_tensorflow_backend(__name__)

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure
from scipy import stats

from benchmarks import optimizers as bopt
from experiments.datasets import (
    load_dataset,
)
from experiments.defaults import DEFAULT_MODEL
from experiments.models import build_model
from keras_qsgld.schedules import (
    DEFAULT_ETA,
    DEFAULT_KAPPA,
    DEFAULT_WARMUP_FRACTION,
)

TABLES = ("lr", "quality", "ingredients", "ablation")
SETUPS = {
    # dataset: (batch size, full epochs, quick epochs); the model is DEFAULT_MODEL's.
    "digits": (32, 15, 2),
    "mnist1d": (64, 12, 1),
}
TUNING_SEED = 1000
QUICK_EXAMPLES = 300  # --quick: training examples per data set
PAPER_SETTINGS = (
    f"eta 2^{math.log2(DEFAULT_ETA):g}, kappa {DEFAULT_KAPPA:g}, "
    f"tau0 {DEFAULT_WARMUP_FRACTION:g} x budget, logistic gate"
)


def build_parser():
    p = common.parser(
        __doc__.split("\n\n")[0], TABLES, "results/benchmarks/quality"
    )
    p.add_argument("--datasets", default="digits,mnist1d")
    p.add_argument(
        "--optimizers",
        default="all",
        help="'all' or names among benchmarks.optimizers",
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=None,
        help="epoch budget (default per data set)",
    )
    p.add_argument(
        "--ablation-seeds",
        type=cli.positive_int,
        default=3,
        help="seeds per ablation variant",
    )
    return p


# -- one training run ----------------------------------------------------------------------
class Progress(keras.callbacks.Callback):
    """Prints data set, optimizer, seed and epoch at the end of each epoch."""

    def __init__(self, label, epochs):
        super().__init__()
        self.label, self.epochs = label, epochs

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        common.log(
            f"{self.label} epoch {epoch + 1}/{self.epochs}: loss {logs.get('loss', float('nan')):.4f} "
            f"acc {logs.get('accuracy', float('nan')):.4f}"
        )


def train(dataset, make_optimizer, seed, epochs, label, max_examples=None):
    """Trains the data set's model once; returns test/train accuracy and loss and the loss curve."""
    batch_size = SETUPS[dataset][0]
    keras.backend.clear_session()
    bundle = load_dataset(
        dataset, batch_size=batch_size, seed=seed, max_examples=max_examples
    )
    model = build_model(
        DEFAULT_MODEL[dataset],
        bundle.input_shape,
        bundle.num_classes,
        seed=seed,
    )
    optimizer = make_optimizer(bundle.steps_per_epoch, epochs)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,
    )
    history = model.fit(
        bundle.train,
        epochs=epochs,
        verbose=0,
        callbacks=[Progress(label, epochs)],
    )
    train_loss, train_acc = model.evaluate(bundle.train, verbose=0)
    test_loss, test_acc = model.evaluate(bundle.test, verbose=0)
    return {
        "test_acc": float(test_acc),
        "test_loss": float(test_loss),
        "train_loss": float(train_loss),
        "train_acc": float(train_acc),
        "loss_curve": [float(v) for v in history.history["loss"]],
    }


def cached_train(
    store, dataset, opt_key, make_optimizer, seed, epochs, args, table
):
    key = store.make_key(
        d=dataset, o=opt_key, seed=seed, epochs=epochs, quick=args.quick
    )
    record = store.get(key, force=args.force and table in args.table_list)
    if record is None:
        label = f"{table}: {dataset} {opt_key} seed {seed}"
        record = store.put(
            key,
            train(
                dataset,
                make_optimizer,
                seed,
                epochs,
                label,
                max_examples=QUICK_EXAMPLES if args.quick else None,
            ),
        )
    return record


def _builder(name, lr, seed):
    return lambda spe, epochs: bopt.build(
        name, lr, steps_per_epoch=spe, epochs=epochs, seed=seed
    )


# -- tables ----------------------------------------------------------------------------------
def tune_lrs(args, datasets, names, epochs_of):
    """{dataset: {optimizer: lr}}, and writes the `lr` table (only when asked)."""
    store = common.ResultStore(args.output_dir, "runs")
    chosen, rows = {}, []
    tuned = [n for n in names if bopt.OPTIMIZERS[n].tie_lr_to is None]
    for needed in [
        bopt.OPTIMIZERS[n].tie_lr_to
        for n in names
        if bopt.OPTIMIZERS[n].tie_lr_to
    ]:
        if needed not in tuned:
            tuned.append(needed)
    for dataset in datasets:
        chosen[dataset] = {}
        for name in tuned:
            grid = bopt.LR_GRIDS[bopt.OPTIMIZERS[name].family]
            if args.quick:
                grid = grid[1:2]
            losses = {}
            for lr in grid:
                rec = cached_train(
                    store,
                    dataset,
                    f"{name}@{lr:g}",
                    _builder(name, lr, TUNING_SEED),
                    TUNING_SEED,
                    epochs_of[dataset],
                    args,
                    "lr",
                )
                losses[lr] = (
                    rec["train_loss"]
                    if math.isfinite(rec["train_loss"])
                    else float("inf")
                )
            best = min(grid, key=lambda lr: losses[lr])
            chosen[dataset][name] = best
            rows.append(
                [dataset, name]
                + [f"{lr:g}: {common.fmt(losses[lr])}" for lr in grid]
                + [f"{best:g}"]
            )
        for name in names:
            tie = bopt.OPTIMIZERS[name].tie_lr_to
            if tie:
                chosen[dataset][name] = chosen[dataset][tie]
                rows.append(
                    [
                        dataset,
                        name,
                        f"tied to {tie}",
                        "",
                        "",
                        f"{chosen[dataset][name]:g}",
                    ]
                )
    if "lr" in args.table_list:
        width = max(len(r) for r in rows)
        rows = [r[:-1] + [""] * (width - len(r)) + r[-1:] for r in rows]
        headers = (
            ["data set", "optimizer"]
            + [f"rate {i + 1}: final train loss" for i in range(width - 3)]
            + ["chosen rate"]
        )
        common.write_table(
            args,
            "lr",
            "Learning-rate choice (lowest final training loss, tuning seed)",
            headers,
            rows,
            notes=[
                f"Tuning seed {TUNING_SEED} (not an evaluation seed); the epoch budget of the quality table; "
                "no test data is used. Tied optimizers reuse the rate of the one named."
            ],
        )
    return chosen


def welch(a, b):
    """Two-sided Welch t-test p-value (nan with fewer than 2 values a side or no spread)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    res = stats.ttest_ind(a, b, equal_var=False)
    return float(res.pvalue)


def run_quality(args, datasets, names, lrs, epochs_of):
    store = common.ResultStore(args.output_dir, "runs")
    rows, plots = [], []
    for dataset in datasets:
        results = {}
        for name in names:
            lr = lrs[dataset][name]
            results[name] = [
                cached_train(
                    store,
                    dataset,
                    f"{name}@{lr:g}",
                    _builder(name, lr, seed),
                    seed,
                    epochs_of[dataset],
                    args,
                    "quality",
                )
                for seed in args.seed_list
            ]
        ref = results.get("qsgld")
        for name in names:
            recs = results[name]
            acc = [r["test_acc"] for r in recs]
            p = (
                welch([r["test_acc"] for r in ref], acc)
                if ref and name != "qsgld"
                else float("nan")
            )
            rows.append(
                [
                    dataset,
                    bopt.OPTIMIZERS[name].label,
                    f"{lrs[dataset][name]:g}",
                    common.fmt_pm(acc, scale=100.0),
                    common.fmt_pm([r["train_loss"] for r in recs]),
                    "-" if name == "qsgld" else common.fmt(p),
                ]
            )
        plots.append(plot_quality(args, dataset, names, results))
    headers = [
        "data set",
        "optimizer",
        "lr",
        "test accuracy % (mean ± std)",
        "final train loss",
        "Welch p vs QSGLD",
    ]
    notes = [
        f"Seeds {args.seed_list}; epochs: {epochs_of}; models: "
        + ", ".join(
            f"{d}: {DEFAULT_MODEL[d]} (batch {SETUPS[d][0]})" for d in datasets
        )
        + ".",
        f"QSGLD/QAdam use the paper's schedules ({PAPER_SETTINGS}): ResolutionSchedule(eta) and "
        "CompensationSchedule.from_budget(epochs), per epoch of this data set. "
        "Gaussian SGLD draws N(0, Qp^-2/12) with the same Qp schedule.",
        "Final train loss: the loss of the trained model on the whole training set. "
        "Welch p: two-sided Welch t-test of test accuracy, QSGLD against that optimizer; with this few seeds "
        "only large differences can reach significance.",
    ]
    extra = "\n".join(
        f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots if p
    )
    return common.write_table(
        args,
        "quality",
        "Test accuracy and train loss",
        headers,
        rows,
        notes,
        extra,
    )


def plot_quality(args, dataset, names, results):
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    acc = [np.array([r["test_acc"] for r in results[n]]) * 100 for n in names]
    axes[0].bar(
        range(len(names)),
        [a.mean() for a in acc],
        yerr=[a.std(ddof=1) if len(a) > 1 else 0 for a in acc],
        color=["C3" if n.startswith("q") else "C0" for n in names],
        capsize=3,
    )
    axes[0].set_xticks(range(len(names)))
    axes[0].set_xticklabels(names, rotation=45, ha="right")
    axes[0].set_ylabel("test accuracy % (mean ± std)")
    lo = min(a.min() for a in acc)
    axes[0].set_ylim(max(0, lo - 5), 100)
    for i, n in enumerate(names):
        curves = np.array([r["loss_curve"] for r in results[n]])
        axes[1].plot(
            np.arange(1, curves.shape[1] + 1),
            curves.mean(0),
            label=n,
            color=f"C{i % 10}",
            linestyle="-" if n.startswith("q") else "--",
        )
    axes[1].set_yscale("log")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("mean train loss (over seeds)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{dataset}: {len(results[names[0]])} seeds")
    fig.tight_layout()
    path = os.path.join(args.output_dir, f"quality_{dataset}.png")
    fig.savefig(path, dpi=80)
    return path


def run_ingredients(args, datasets, lrs, epochs_of):
    store = common.ResultStore(args.output_dir, "runs")
    rows = []
    parts = [
        ("sgd", "SGD"),
        ("qsgd", "quantized SGD (compensation off)"),
        ("qsgld", "QSGLD"),
        ("sgld", "Gaussian SGLD (same variance)"),
    ]
    for dataset, lr in [
        (d, lr)
        for d in datasets
        for lr in sorted({lrs[d]["sgd"], lrs[d]["qsgld"]})
    ]:
        res = {}
        for name, _ in parts:
            res[name] = [
                cached_train(
                    store,
                    dataset,
                    f"{name}@{lr:g}",
                    _builder(name, lr, seed),
                    seed,
                    epochs_of[dataset],
                    args,
                    "ingredients",
                )
                for seed in args.seed_list
            ]
        acc = {n: [r["test_acc"] * 100 for r in res[n]] for n in res}
        loss = {n: [r["train_loss"] for r in res[n]] for n in res}
        for name, label in parts:
            rows.append(
                [
                    dataset,
                    f"{lr:g}",
                    label,
                    common.fmt_pm(acc[name]),
                    common.fmt_pm(loss[name]),
                ]
            )

        def gap(a, b):
            m = common.mean_std(acc[a])[0] - common.mean_std(acc[b])[0]
            lm = common.mean_std(loss[a])[0] - common.mean_std(loss[b])[0]
            return f"{m:+.2f} points (p = {common.fmt(welch(acc[a], acc[b]))}); train loss {lm:+.3g}"

        rows.append(
            [
                dataset,
                f"{lr:g}",
                "quantization noise: quantized SGD - SGD",
                gap("qsgd", "sgd"),
                "",
            ]
        )
        rows.append(
            [
                dataset,
                f"{lr:g}",
                "compensation: QSGLD - quantized SGD",
                gap("qsgld", "qsgd"),
                "",
            ]
        )
        rows.append(
            [
                dataset,
                f"{lr:g}",
                "Gaussian noise: Gaussian SGLD - SGD",
                gap("sgld", "sgd"),
                "",
            ]
        )
    headers = [
        "data set",
        "lr",
        "optimizer / difference",
        "test accuracy %",
        "final train loss",
    ]
    notes = [
        f"Seeds {args.seed_list}; the four optimizers at the same rate, so the differences isolate one ingredient; "
        "at SGD's chosen rate and, where it differs, at QSGLD's."
    ]
    return common.write_table(
        args,
        "ingredients",
        "The two ingredients of QSGLD, separated",
        headers,
        rows,
        notes,
    )


def ablation_variants(quick):
    """name -> `benchmarks.optimizers.paper_qsgld` keyword overrides."""
    variants = {
        "compensation off": dict(compensation=False),
        "compensation logistic (paper)": dict(),
        "compensation tanh (authors' code)": dict(gate="tanh"),
        "rounding floor": dict(rounding="floor"),
    }
    for mode in bopt.EXTRA_ROUNDINGS:
        variants[f"rounding {mode}"] = dict(rounding=mode)
    if quick:  # two variants prove the table; the full list runs in full mode
        return {
            "compensation off": dict(compensation=False),
            "eta 2^10": dict(eta=2.0**10),
        }
    etas = range(10, 20)
    for p in etas:
        variants[f"eta 2^{p}"] = dict(eta=2.0**p)
    for kappa in (1.0, 4.0):
        variants[f"kappa {kappa:g}"] = dict(kappa=kappa)
    for frac in (0.1, 0.5):
        variants[f"tau0 {frac:g} x budget"] = dict(warmup_fraction=frac)
    return variants


def _ablation_builder(lr, seed, **overrides):
    return lambda spe, epochs: bopt.paper_qsgld(
        lr, spe, epochs, seed, **overrides
    )


def run_ablation(args, lrs, epochs_of):
    dataset = "digits"
    store = common.ResultStore(args.output_dir, "runs")
    lr = lrs[dataset]["qsgld"]
    seeds = args.seed_list[: max(1, args.ablation_seeds)]
    rows = []
    for variant, overrides in ablation_variants(args.quick).items():
        key = (
            "ablation:"
            + ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
            + f"@{lr:g}"
        )
        recs = [
            cached_train(
                store,
                dataset,
                key,
                _ablation_builder(lr, seed, **overrides),
                seed,
                epochs_of[dataset],
                args,
                "ablation",
            )
            for seed in seeds
        ]
        rows.append(
            [
                variant,
                common.fmt_pm([r["test_acc"] * 100 for r in recs]),
                common.fmt_pm([r["train_loss"] for r in recs]),
            ]
        )
    headers = ["QSGLD variant", "test accuracy %", "final train loss"]
    notes = [
        f"digits, {DEFAULT_MODEL[dataset]}, {epochs_of[dataset]} epochs, QSGLD's chosen lr {lr:g}, seeds {seeds}; "
        f"everything else as the paper's defaults ({PAPER_SETTINGS}, nearest rounding)."
    ]
    return common.write_table(
        args, "ablation", "QSGLD ablations", headers, rows, notes
    )


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    tf.get_logger().setLevel("ERROR")
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in SETUPS]
    if bad or not datasets:
        raise cli.UserError(
            f"Argument `--datasets` must name data sets among {tuple(SETUPS)}. Received: {args.datasets!r}"
        )
    names = bopt.parse_optimizers(args.optimizers, bopt.available())
    if args.quick and args.optimizers == "all":
        names = ["sgd", "qsgld"]
    if args.quick:
        args.seed_list = args.seed_list[:1]
    for required in ("sgd", "qsgld"):
        if required not in names:
            names.insert(0, required)
    epochs_of = {
        d: args.epochs or (SETUPS[d][2] if args.quick else SETUPS[d][1])
        for d in datasets
    }
    common.log(
        f"quality: tables {args.table_list}, data sets {datasets}, optimizers {names}, seeds {args.seed_list}"
    )
    lrs = tune_lrs(args, datasets, names, epochs_of)
    outputs = []
    if "quality" in args.table_list:
        outputs.append(run_quality(args, datasets, names, lrs, epochs_of))
    if "ingredients" in args.table_list:
        outputs.append(run_ingredients(args, datasets, lrs, epochs_of))
    if "ablation" in args.table_list and "digits" in datasets:
        outputs.append(run_ablation(args, lrs, epochs_of))
    return outputs


if __name__ == "__main__":
    common.run_benchmark(main)
