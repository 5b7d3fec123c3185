#!/usr/bin/env python
"""Train a model with QSGLD and compare it with the optimizers you know.

Examples:

    python examples/fit.py --dataset digits --optimizer qsgld --epochs 20
    python examples/fit.py --dataset mnist1d --optimizer qsgld,sgd,adam --epochs 30
    python examples/fit.py --preset paper-fashion-mnist            # the authors' protocol
    python examples/fit.py --dataset cifar10 --data-dir /data/tfds --optimizer qsgld,adam

Every optimizer runs on the same data order, model initialisation and seed. Each run writes
to `OUTPUT_DIR/<optimizer>/`: `log.csv` (CSVLogger), `tensorboard/`, `metrics.json` (final
metrics, the configuration, the per-epoch history) and `curves.png` (loss and accuracy).
With several optimizers it also writes `OUTPUT_DIR/comparison.md` (a Markdown table, also
printed) and `OUTPUT_DIR/comparison.png` (the curves overlaid). QSGLD and QAdam runs log
the `QSGLDMonitor` values (`qsgld_qp`, `qsgld_gate`, `qsgld_temperature`,
`qsgld_zero_fraction`, `qsgld_noise_variance_ratio`). See docs/examples.md.
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

QUANTIZED = ("qsgld", "qadam")
KERAS_OPTIMIZERS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "nadam": "Nadam",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adamax": "Adamax",
    "adadelta": "Adadelta",
    "lion": "Lion",
}
OPTIMIZERS = QUANTIZED + tuple(KERAS_OPTIMIZERS)
# Default learning rates when --lr is not given: each optimizer's own default.
DEFAULT_LR = {
    "qsgld": 0.01,
    "qadam": 0.001,
    "sgd": 0.01,
    "adam": 0.001,
    "adamw": 0.001,
    "nadam": 0.001,
    "rmsprop": 0.001,
    "adagrad": 0.001,
    "adamax": 0.001,
    "adadelta": 0.001,
    "lion": 0.0001,
}
DEFAULT_MODEL = {
    "fashion_mnist": "cnn",
    "cifar10": "cifar_resnet",
    "cifar100": "cifar_resnet",
    "digits": "mlp",
    "mnist1d": "cnn1d",
}
# The authors' protocol (paper.md s7.2, from their released code): batch size, epochs,
# learning rates, no augmentation, no shuffling, drop the last partial batch. Values given
# on the command line win over the preset's.
PRESETS = {
    "paper-fashion-mnist": dict(
        dataset="fashion_mnist", model="cnn", batch_size=100, epochs=200, lr=0.01,
        lr_per_optimizer={"adam": 0.02}, optimizer="qsgld,sgd,adam",
        augment=False, shuffle=False, drop_remainder=True,
    ),
    "paper-cifar10": dict(
        dataset="cifar10", model="cifar_resnet", depth=50, batch_size=128, epochs=200, lr=0.01,
        optimizer="qsgld,qadam,sgd,adam,adamw,nadam",
        augment=False, shuffle=False, drop_remainder=True,
    ),
    "paper-cifar100": dict(
        dataset="cifar100", model="cifar_resnet", depth=50, batch_size=100, epochs=200, lr=0.01,
        optimizer="qsgld,qadam,sgd,adam,adamw,nadam",
        augment=False, shuffle=False, drop_remainder=True,
    ),
}
# Values used when neither the command line nor a preset sets them.
DEFAULTS = dict(
    dataset="digits", model=None, depth=50, batch_size=128, epochs=10, optimizer="qsgld", augment=False, shuffle=True, drop_remainder=False,
)


def _parse_lr(text):
    """--lr: a float, or 'name=float,name=float'."""
    def positive(value):
        number = float(value)
        if not number > 0:
            raise ValueError
        return number

    try:
        if "=" not in text:
            return positive(text)
        table = {}
        for item in text.split(","):
            name, value = item.split("=")
            name = name.strip().lower()
            if name not in OPTIMIZERS:
                raise ValueError
            table[name] = positive(value)
        return table
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number > 0 or 'optimizer=number,...' with optimizers from {OPTIMIZERS}; "
            f"received {text!r}"
        ) from None


class SimulatedCrash(Exception):
    """Raised by --simulate-crash-after to test resuming with --backup-dir."""


def build_parser():
    from keras_qsgld.experiments.datasets import DATASETS
    from keras_qsgld.experiments.models import MODELS
    from keras_qsgld.quantization import ROUNDING_MODES
    from keras_qsgld.schedules import GATES

    p = argparse.ArgumentParser(
        description=__doc__,
        epilog="Outputs, presets and the monitor's logs: see docs/examples.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data and model")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the authors' protocol (dataset, model, batch size, epochs, lr, no "
                        "augmentation, no shuffling, drop_last); other flags override it")
    g.add_argument("--dataset", choices=DATASETS, default=None,
                   help=f"data set (default {DEFAULTS['dataset']})")
    g.add_argument("--model", choices=MODELS, default=None,
                   help="model (default per data set: " +
                        ", ".join(f"{d}: {m}" for d, m in DEFAULT_MODEL.items()) + ")")
    g.add_argument("--depth", type=int, default=None,
                   help="depth 6n+2 of cifar_resnet (default 50, the authors' 'ResNet-50')")
    g.add_argument("--data-dir", default=None,
                   help="tensorflow-datasets folder with (or for) the downloaded data")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="random crop (and flip for CIFAR); default off, as in the paper")
    g.add_argument("--shuffle", action=argparse.BooleanOptionalAction, default=None,
                   help="reshuffle the training set each epoch (default on; off in presets)")
    g.add_argument("--drop-remainder", action=argparse.BooleanOptionalAction, default=None,
                   help="drop the last partial batch (default off; on in presets)")
    g.add_argument("--max-examples", type=int, default=None,
                   help="use only this many examples of each split (quick runs)")

    g = p.add_argument_group("training")
    g.add_argument("--optimizer", default=None,
                   help=f"optimizer or comma-separated list to compare, from {OPTIMIZERS} "
                        f"(default {DEFAULTS['optimizer']})")
    g.add_argument("--lr", type=_parse_lr, default=None,
                   help="learning rate: one number for every optimizer, or per optimizer as "
                        "'qsgld=0.05,adam=0.001' (others keep their default). Default: each "
                        "optimizer's own: " +
                        ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    g.add_argument("--epochs", type=int, default=None, help=f"epochs (default {DEFAULTS['epochs']})")
    g.add_argument("--batch-size", type=int, default=None,
                   help=f"batch size (default {DEFAULTS['batch_size']})")
    g.add_argument("--seed", type=int, default=0, help="seed of the model init, data order and rounding (default %(default)s)")
    g.add_argument("--jit-compile", action=argparse.BooleanOptionalAction, default=False,
                   help="compile the train step with XLA (default off: slower on CPU)")
    g.add_argument("--weight-decay", type=float, default=None,
                   help="decoupled weight decay for every optimizer (default: each one's own)")

    g = p.add_argument_group("QSGLD / QAdam")
    g.add_argument("--eta", type=float, default=2.0**19, help="resolution scale eta of Qp (default %(default)s)")
    g.add_argument("--base", type=float, default=2.0, help="growth factor b of Qp (default %(default)s)")
    g.add_argument("--kappa", type=float, default=2.0, help="slope of the compensation gate (per epoch) (default %(default)s)")
    g.add_argument("--tau0", type=float, default=None,
                   help="gate switch-off epoch (default 0.2 x epochs, as in the paper)")
    g.add_argument("--gate", choices=GATES, default="logistic",
                   help="gate form: logistic (paper) or tanh (authors' code) (default %(default)s)")
    g.add_argument("--no-compensation", action="store_true", help="no compensation term")
    g.add_argument("--rounding", choices=ROUNDING_MODES, default="nearest",
                   help="rounding: nearest (paper), floor (authors' code), or random modes (default %(default)s)")
    g.add_argument("--momentum", type=float, default=0.0, help="QSGLD momentum (0 in the paper) (default %(default)s)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum for QSGLD")

    g = p.add_argument_group("outputs")
    g.add_argument("--output-dir", default="results/fit", help="folder for logs, metrics and plots (default %(default)s)")
    g.add_argument("--backup-dir", default=None,
                   help="enable keras.callbacks.BackupAndRestore there: a rerun of the same "
                        "command resumes an interrupted run from its last finished epoch")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                   help="Keras verbosity: 1 progress bar (default), 2 one line per epoch, 0 silent")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    g.add_argument("--simulate-crash-after", type=int, default=None, metavar="EPOCHS",
                   help=argparse.SUPPRESS)  # testing aid: exit with code 3 after this many epochs
    return p


def parse_args(argv=None):
    """Parses the command line and fills unset values from the preset, then the defaults."""
    args = build_parser().parse_args(argv)
    preset = PRESETS.get(args.preset, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, preset.get(key, default))
    if args.model is None:
        args.model = DEFAULT_MODEL[args.dataset]
    if args.tau0 is None:
        args.tau0 = 0.2 * args.epochs
    args.optimizers = [name.strip().lower() for name in args.optimizer.split(",") if name.strip()]
    errors = []
    unknown = [name for name in args.optimizers if name not in OPTIMIZERS]
    if unknown or not args.optimizers:
        errors.append(f"--optimizer must name optimizers from {OPTIMIZERS}; received {args.optimizer!r}")
    if len(set(args.optimizers)) != len(args.optimizers):
        errors.append(f"--optimizer names an optimizer twice: {args.optimizer!r}")
    for flag in ("epochs", "batch_size"):
        if getattr(args, flag) < 1:
            errors.append(f"--{flag.replace('_', '-')} must be >= 1; received {getattr(args, flag)}")
    if errors:
        build_parser().error("; ".join(errors))
    return args


def learning_rate(args, name):
    """The learning rate of optimizer `name`: --lr, else the preset's, else its default."""
    if isinstance(args.lr, float):
        return args.lr
    if isinstance(args.lr, dict) and name in args.lr:
        return args.lr[name]
    preset = PRESETS.get(args.preset, {})
    return preset.get("lr_per_optimizer", {}).get(name, preset.get("lr", DEFAULT_LR[name]))


def make_optimizer(name, args, steps_per_epoch):
    """Builds optimizer `name`; QSGLD and QAdam get their schedules in epochs of the data."""
    import keras

    import keras_qsgld

    lr = learning_rate(args, name)
    extra = {} if args.weight_decay is None else {"weight_decay": args.weight_decay}
    if name in QUANTIZED:
        resolution = keras_qsgld.ResolutionSchedule(
            eta=args.eta, base=args.base, steps_per_epoch=steps_per_epoch
        )
        compensation = None
        if not args.no_compensation:
            compensation = keras_qsgld.CompensationSchedule(
                kappa=args.kappa, tau0=args.tau0, steps_per_epoch=steps_per_epoch, gate=args.gate
            )
        common = dict(
            learning_rate=lr, resolution=resolution, compensation=compensation,
            rounding=args.rounding, track_noise=True, jit_compile=args.jit_compile, **extra,
        )
        if args.rounding in ("stochastic", "dithered"):
            common["seed"] = args.seed
        if name == "qsgld":
            return keras_qsgld.QSGLD(momentum=args.momentum, nesterov=args.nesterov, **common)
        return keras_qsgld.QAdam(**common)
    cls = getattr(keras.optimizers, KERAS_OPTIMIZERS[name])
    return cls(learning_rate=lr, **extra)


def run_one(name, args, out_dir):
    """Trains one model with optimizer `name`; returns its metrics dict."""
    import keras

    import keras_qsgld
    from keras_qsgld.experiments.datasets import load_dataset
    from keras_qsgld.experiments.models import build_model

    keras.utils.set_random_seed(args.seed)
    data = load_dataset(
        args.dataset, batch_size=args.batch_size, data_dir=args.data_dir, augment=args.augment,
        shuffle=args.shuffle, seed=args.seed, drop_remainder=args.drop_remainder,
        max_examples=args.max_examples,
    )
    model_kwargs = {"depth": args.depth} if args.model == "cifar_resnet" else {}
    model = build_model(args.model, data.input_shape, data.num_classes, seed=args.seed, **model_kwargs)
    optimizer = make_optimizer(name, args, data.steps_per_epoch)
    model.compile(
        optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
        jit_compile=args.jit_compile,
    )
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "log.csv")
    callbacks = []
    resuming = False
    if args.backup_dir:
        backup = os.path.join(args.backup_dir, name)
        resuming = os.path.isdir(backup) and bool(os.listdir(backup))
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir=backup))
        if resuming:
            _skip_epochs(data.train, _completed_epochs(backup))
    if not resuming and os.path.exists(csv_path):
        os.remove(csv_path)
    if name in QUANTIZED:
        callbacks.append(keras_qsgld.QSGLDMonitor())  # before the loggers: they read its logs
    callbacks += [
        keras.callbacks.CSVLogger(csv_path, append=resuming),
        keras.callbacks.TensorBoard(os.path.join(out_dir, "tensorboard"), write_graph=False),
    ]
    if args.simulate_crash_after:
        callbacks.append(_CrashAfter(args.simulate_crash_after))
    print(
        f"\n== {name} (lr {learning_rate(args, name):g}) on {data.name}: {data.num_train} train / "
        f"{data.num_test} test examples, {data.steps_per_epoch} steps per epoch (from the data), "
        f"model {model.name} ({model.count_params():,} weights)" + (", resuming" if resuming else "")
    )
    start = time.perf_counter()
    model.fit(
        data.train, epochs=args.epochs, validation_data=data.test, callbacks=callbacks,
        verbose=args.verbose, shuffle=False,
    )
    seconds = time.perf_counter() - start
    history = read_csv_log(csv_path)
    final = {key: values[-1] for key, values in history.items() if key != "epoch" and values}
    metrics = {
        "optimizer": name,
        "learning_rate": learning_rate(args, name),
        "optimizer_config": _jsonable(optimizer.get_config()),
        "dataset": data.name,
        "model": model.name,
        "num_weights": int(model.count_params()),
        "num_train": data.num_train,
        "num_test": data.num_test,
        "batch_size": data.batch_size,
        "steps_per_epoch": data.steps_per_epoch,
        "epochs": args.epochs,
        "seed": args.seed,
        "train_seconds": seconds,
        "final": final,
        "best_val_accuracy": max(history.get("val_accuracy", [math.nan])),
        "history": history,
    }
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(_jsonable(metrics), f, indent=2)
    if not args.no_plots:
        plot_curves({name: history}, os.path.join(out_dir, "curves.png"), f"{name} on {data.name}")
    return metrics


def _completed_epochs(backup_dir):
    """Epochs finished before the interruption, from BackupAndRestore's metadata (0 if none)."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        path = os.path.join(backup_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                return int(json.load(f).get("epoch", 0))
    return 0


# Keras 3's EpochIterator (without `steps_per_epoch`) makes two iterators of the training set
# per epoch: one at the epoch's start, which it uses, and one at its end, which it drops.
ITERATORS_PER_EPOCH = 2


def _skip_epochs(dataset, epochs):
    """Advances the reshuffle and augmentation streams past `epochs` finished epochs.

    A restarted process builds the pipeline anew, and each `iter()` of it draws the next
    order: without this, the resumed epochs would replay the first epochs' orders and the
    resumed run would not match an uninterrupted one (tested bitwise in test_examples.py).
    """
    for _ in range(epochs * ITERATORS_PER_EPOCH):
        iter(dataset)


class _CrashAfter:
    """Raises SimulatedCrash at the end of epoch `epochs` (after the backup is written)."""

    def __new__(cls, epochs):
        import keras

        class CrashAfter(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 >= epochs:
                    raise SimulatedCrash(f"simulated crash after epoch {epoch + 1}")

        return CrashAfter()


def read_csv_log(path):
    """The CSVLogger file as {column: [floats]} (survives a resume, unlike History)."""
    import csv

    history = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                history.setdefault(key, []).append(number)
    return history


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def plot_curves(histories, path, title):
    """Loss and accuracy (train solid, test dashed) per run, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i}"
        epochs = [int(e) + 1 for e in history.get("epoch", range(len(history.get("loss", []))))]
        for ax, key in zip(axes, ("loss", "accuracy")):
            if key in history:
                ax.plot(epochs, history[key], color=color, label=f"{name} train")
            if "val_" + key in history:
                ax.plot(epochs, history["val_" + key], color=color, ls="--", label=f"{name} test")
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def comparison_table(results):
    """A Markdown table of the runs' final metrics."""
    lines = [
        "| optimizer | lr | train loss | train acc | test loss | test acc | best test acc | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in results:
        f = m["final"]
        lines.append(
            f"| {m['optimizer']} | {m['learning_rate']:g} | {f.get('loss', math.nan):.4f} | "
            f"{f.get('accuracy', math.nan):.4f} | {f.get('val_loss', math.nan):.4f} | "
            f"{f.get('val_accuracy', math.nan):.4f} | {m['best_val_accuracy']:.4f} | "
            f"{m['train_seconds']:.1f} |"
        )
    return "\n".join(lines)


def run(args):
    """Runs every optimizer in `args.optimizers`; returns the list of metrics dicts."""
    os.makedirs(args.output_dir, exist_ok=True)
    results = []
    for name in args.optimizers:
        results.append(run_one(name, args, os.path.join(args.output_dir, name)))
    table = comparison_table(results)
    first = results[0]
    header = (
        f"{first['dataset']}, model {first['model']}, {first['epochs']} epochs, batch size "
        f"{first['batch_size']}, seed {first['seed']}"
    )
    print(f"\n{header}\n\n{table}\n")
    if len(results) > 1:
        with open(os.path.join(args.output_dir, "comparison.md"), "w") as f:
            f.write(f"# {header}\n\n{table}\n")
        if not args.no_plots:
            plot_curves(
                {m["optimizer"]: m["history"] for m in results},
                os.path.join(args.output_dir, "comparison.png"),
                header,
            )
    print(f"outputs in {args.output_dir}")
    return results


def main(argv=None):
    args = parse_args(argv)
    from keras_qsgld.experiments.datasets import DatasetUnavailableError

    try:
        run(args)
    except (DatasetUnavailableError, ValueError) as error:  # no data, or a bad combination
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SimulatedCrash as error:
        print(f"{error}: rerun the same command to resume from --backup-dir", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
