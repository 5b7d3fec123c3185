#!/usr/bin/env python
"""Train a model with QSGLD and compare it with the optimizers you know.

    python -m examples.fit --dataset digits --optimizer qsgld --epochs 20
    python -m examples.fit --dataset mnist1d --optimizer qsgld,sgd,adam --epochs 30
    python -m examples.fit --preset paper-fashion-mnist            # the authors' protocol
    python -m examples.fit --dataset cifar10 --data-dir /data/tfds --optimizer qsgld,adam
    KERAS_BACKEND=jax python -m examples.fit --dataset digits      # or torch; Keras' default: tensorflow

Every optimizer trains a fresh model from the same initial weights, on the same data order,
with the same seed. Each run writes to OUTPUT_DIR/<optimizer>/: log.csv (one row per epoch),
tensorboard/, metrics.json (the last epoch's metrics, the settings, the history) and
curves.png; with several optimizers also OUTPUT_DIR/comparison.md (the table it prints) and
comparison.png. The test split is fit's validation data, logged as test_loss and
test_accuracy; the results are the last epoch's (nothing is selected on the test split).
QSGLD and QAdam runs also log QSGLDMonitor's qsgld_* columns. See docs/examples.md; the
training code is examples/fitting.py.
"""

import argparse
import os
import sys

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "fit.py: error: run it as a module, from the repository root: "
        "python -m examples.fit",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # before TensorFlow loads: fewer C++ logs

from examples.fitting import OPTIMIZERS, FitConfig, compare
from experiments import cli, flags
from experiments.defaults import (
    DEFAULT_LEARNING_RATE,
    DEFAULT_LEARNING_RATE_BY_DATASET,
    PAPER_PRESETS,
    default_learning_rate,
)

PROG = "fit.py"
DEFAULTS = FitConfig()
# Flags that a --preset sets when they are not given (the FitConfig field of each).
PRESET_KEYS = (
    "dataset",
    "model",
    "depth",
    "batch_size",
    "epochs",
    "augment",
    "shuffle",
    "drop_remainder",
)


def optimizer_list(text):
    """--optimizer: one name or a comma-separated list, each name once."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if (
        not names
        or any(name not in OPTIMIZERS for name in names)
        or len(set(names)) < len(names)
    ):
        raise argparse.ArgumentTypeError(
            f"expected distinct names from {', '.join(OPTIMIZERS)}, separated by commas; received {text!r}"
        )
    return tuple(names)


def learning_rates(text):
    """--lr: a number for every optimizer, or 'name=number,name=number'."""
    number = cli.positive_float
    if "=" not in text:
        return number(text)
    table = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name = name.strip().lower()
        if name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(
                f"expected optimizers from {', '.join(OPTIMIZERS)}; received {text!r}"
            )
        table[name] = number(value)
    return table


def build_parser():
    p = cli.ArgumentParser(
        prog=PROG,
        description=__doc__,
        epilog="Outputs, presets and the monitor's columns: docs/examples.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--preset",
        choices=sorted(PAPER_PRESETS),
        help="the authors' protocol (data set, model, batch size, epochs, learning "
        "rates, optimizers, no augmentation, no shuffling, drop_last); other "
        "flags override it",
    )
    flags.add_data_arguments(
        g, dataset_help=f"data set (default {DEFAULTS.dataset})"
    )
    g.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="random crop (and flip for CIFAR; a shift for mnist1d); default off, as in the paper",
    )
    g.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        help="reshuffle the training set each epoch (default on; off in presets)",
    )
    g.add_argument(
        "--drop-remainder",
        action=argparse.BooleanOptionalAction,
        help="drop the last partial batch (default off; on in presets)",
    )
    g.add_argument(
        "--max-examples",
        type=cli.positive_int,
        help="use only the first N examples of each split (quick runs)",
    )

    g = p.add_argument_group("training")
    g.add_argument(
        "--optimizer",
        type=optimizer_list,
        help=f"optimizer, or a comma-separated list to compare, from {', '.join(OPTIMIZERS)} "
        f"(default {','.join(DEFAULTS.optimizers)})",
    )
    g.add_argument(
        "--lr",
        type=learning_rates,
        help="learning rate: one number for every optimizer, or per optimizer as "
        "'qsgld=0.05,adam=0.001' (the others keep theirs). Default: the preset's, "
        "else the rate measured for the optimizer on the data set ("
        + "; ".join(
            f"{d}: " + ", ".join(f"{k} {v:g}" for k, v in rates.items())
            for d, rates in DEFAULT_LEARNING_RATE_BY_DATASET.items()
            if rates
        )
        + "), else each optimizer's own: "
        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATE.items()),
    )
    g.add_argument(
        "--epochs",
        type=cli.positive_int,
        help=f"epochs (default {DEFAULTS.epochs})",
    )
    g.add_argument(
        "--batch-size",
        type=cli.positive_int,
        help=f"batch size (default {DEFAULTS.batch_size})",
    )
    g.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=DEFAULTS.seed,
        help="seed of the initial weights, the data order and random rounding (default %(default)s)",
    )
    g.add_argument(
        "--jit-compile",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.jit_compile,
        help="compile the train step with XLA (default off: slower on CPU)",
    )
    g.add_argument(
        "--weight-decay",
        type=cli.non_negative_float,
        help="decoupled weight decay for every optimizer (default: each one's own)",
    )

    g = p.add_argument_group("QSGLD / QAdam")
    flags.add_qsgld_arguments(g)
    g.add_argument(
        "--no-compensation",
        dest="compensation",
        action="store_false",
        help="no compensation term",
    )
    g.add_argument(
        "--nesterov", action="store_true", help="Nesterov momentum for QSGLD"
    )

    g = p.add_argument_group("outputs")
    g.add_argument(
        "--output-dir",
        default=DEFAULTS.output_dir,
        help="folder for logs, metrics and plots; a run that does not resume first "
        "deletes its previous log.csv and tensorboard/ there (default %(default)s)",
    )
    g.add_argument(
        "--backup-dir",
        help="back each run up there at the end of every epoch "
        "(keras.callbacks.BackupAndRestore): the same command, run again after "
        "a crash or Ctrl-C, resumes from the last finished epoch",
    )
    g.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=DEFAULTS.verbose,
        help="Keras' display: 1 progress bar (default), 2 one line per epoch, 0 none",
    )
    g.add_argument(
        "--no-plots",
        dest="plots",
        action="store_false",
        help="skip the PNG plots",
    )
    return p


def parse_args(argv=None):
    """The `FitConfig` of a command line: its flags, else the preset's values, else the defaults."""
    args = build_parser().parse_args(argv)
    preset = PAPER_PRESETS.get(args.preset, {})
    settings = {
        key: value
        for key, value in vars(args).items()
        if key not in ("preset", "optimizer", "lr")
    }
    for key in PRESET_KEYS:
        if settings[key] is None:
            settings[key] = preset.get(key, getattr(DEFAULTS, key))
    optimizers = args.optimizer or (
        optimizer_list(preset["optimizer"]) if preset else DEFAULTS.optimizers
    )
    rates = {}
    for name in optimizers:
        if isinstance(args.lr, float):
            rates[name] = args.lr
        elif isinstance(args.lr, dict) and name in args.lr:
            rates[name] = args.lr[name]
        else:
            rates[name] = preset.get("lr_per_optimizer", {}).get(
                name,
                preset.get(
                    "lr", default_learning_rate(name, settings["dataset"])
                ),
            )
    return FitConfig(optimizers=optimizers, learning_rates=rates, **settings)


def main(argv=None):
    config = parse_args(argv)
    if config.backup_dir:
        resume = f"rerun the same command to resume from the last finished epoch (backups in {config.backup_dir})"
    else:
        resume = "a run started with --backup-dir DIR resumes from its last finished epoch"
    return cli.run_script(
        lambda: compare(config), prog=PROG, interrupted=resume
    )


if __name__ == "__main__":
    sys.exit(main())
