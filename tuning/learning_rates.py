"""Each optimizer's learning rate for a data set: a KerasTuner grid search on held-out data.

    python -m tuning.learning_rates                          # digits, qsgld, sgd, adam, qadam
    python -m tuning.learning_rates --dataset mnist1d --epochs 20
    python -m tuning.learning_rates --smoke                  # two rates, one epoch: a check

For each optimizer, the data set's default model (`experiments.defaults.DEFAULT_MODEL`) is
trained for `--epochs` epochs at each rate of `--grid`, as `examples/fit.py` would train it
(QSGLD and QAdam with the paper's schedules over those epochs), on the training split less
a held-out fifth; the rate with the best held-out accuracy wins (among equals, the one
with the smaller held-out loss). The test split is never read. The table printed at
the end is what `experiments.defaults.DEFAULT_LEARNING_RATE_BY_DATASET` holds for the data
set; each trial's score goes to `OUTPUT_DIR/learning_rates.json`.
"""

import argparse
import json
import os
import sys

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "learning_rates.py: error: run it as a module, from the repository root: "
        "python -m tuning.learning_rates",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import keras_tuner as kt

from examples.fitting import OPTIMIZERS, FitConfig, make_optimizer
from experiments import cli
from experiments.datasets import OFFLINE_DATASETS, hold_out, load_dataset
from experiments.defaults import DEFAULT_MODEL
from experiments.models import build_model

PROG = "learning_rates.py"
GRID = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
SMOKE = dict(grid=(0.1, 0.01), epochs=1, max_examples=256)
VALIDATION_FRACTION = 0.2


def rate_list(text):
    try:
        rates = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        rates = ()
    if not rates or any(not (r > 0) for r in rates):
        raise argparse.ArgumentTypeError(
            f"must be comma-separated learning rates > 0. Received: {text!r}"
        )
    return rates


def optimizer_list(text):
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [n for n in names if n not in OPTIMIZERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated optimizers among {', '.join(OPTIMIZERS)}. "
            f"Received: {text!r}"
        )
    return names


def build_parser():
    p = cli.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        choices=OFFLINE_DATASETS,
        default="digits",
        help="data set (default %(default)s)",
    )
    p.add_argument(
        "--optimizers",
        type=optimizer_list,
        default=("qsgld", "sgd", "adam", "qadam"),
        help="comma-separated optimizers (default qsgld,sgd,adam,qadam)",
    )
    p.add_argument(
        "--grid",
        type=rate_list,
        default=GRID,
        help="comma-separated learning rates (default "
        + ",".join(f"{r:g}" for r in GRID)
        + ")",
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=20,
        help="epochs per trial (default %(default)s, the README's comparison)",
    )
    p.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=128,
        help="batch size (default %(default)s, examples/fit.py's)",
    )
    p.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=0,
        help="seed of the weights and the data order (default %(default)s)",
    )
    p.add_argument(
        "--output-dir",
        default=os.path.join("results", "learning_rates"),
        help="folder of the tuner's trials and learning_rates.json (default %(default)s)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny check: rates 0.1,0.01, one epoch, 256 examples",
    )
    return p


class LearningRateHyperModel(kt.HyperModel):
    """One optimizer, its learning rate the only hyperparameter."""

    def __init__(self, optimizer, config, data, steps_per_epoch):
        super().__init__(name=optimizer)
        self.optimizer = optimizer
        self.config = config
        self.data = data  # the data set's bundle: its input shape and classes
        self.steps_per_epoch = (
            steps_per_epoch  # of the training split less the held-out part
        )

    def build(self, hp):
        rate = hp.Choice("learning_rate", [float(r) for r in self.config.grid])
        config = FitConfig(
            dataset=self.config.dataset,
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            seed=self.config.seed,
            learning_rates={self.optimizer: rate},
        )
        model = build_model(
            DEFAULT_MODEL[self.config.dataset],
            self.data.input_shape,
            self.data.num_classes,
            seed=self.config.seed,
        )
        model.compile(
            optimizer=make_optimizer(
                self.optimizer, config, self.steps_per_epoch
            ),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model


def search(args):
    settings = dict(grid=args.grid, epochs=args.epochs, max_examples=None)
    if args.smoke:
        settings = dict(SMOKE)
    args.grid, args.epochs = settings["grid"], settings["epochs"]
    bundle = load_dataset(
        args.dataset,
        batch_size=args.batch_size,
        seed=args.seed,
        shuffle=False,
        augment=False,
        max_examples=settings["max_examples"],
    )
    train, validation, num_train, steps = hold_out(
        bundle, VALIDATION_FRACTION, seed=args.seed
    )

    results = {}
    for name in args.optimizers:
        keras.utils.set_random_seed(args.seed)
        tuner = kt.GridSearch(
            LearningRateHyperModel(name, args, bundle, steps),
            objective=kt.Objective("val_accuracy", "max"),
            directory=args.output_dir,
            project_name=f"{args.dataset}-{name}",
            overwrite=True,
            seed=args.seed,
        )
        tuner.search(
            train,
            validation_data=validation,
            epochs=args.epochs,
            shuffle=False,  # the pipeline shuffles
            verbose=0,
        )
        trials = []
        for trial in tuner.oracle.trials.values():
            if trial.status != "COMPLETED":
                continue
            metrics = trial.metrics
            trials.append(
                {
                    "learning_rate": trial.hyperparameters.get("learning_rate"),
                    "val_accuracy": metrics.get_last_value("val_accuracy"),
                    "val_loss": metrics.get_last_value("val_loss"),
                }
            )
        # The best held-out accuracy; among equals, the smaller held-out loss.
        best = max(trials, key=lambda t: (t["val_accuracy"], -t["val_loss"]))
        results[name] = {"best": best["learning_rate"], "trials": trials}
        print(
            f"{name}: "
            + ", ".join(
                f"lr {t['learning_rate']:g} -> {t['val_accuracy']:.4f}"
                for t in sorted(trials, key=lambda t: -t["learning_rate"])
            )
            + f"; best {best['learning_rate']:g}",
            flush=True,
        )
    summary = {name: r["best"] for name, r in results.items()}
    print(
        f"\n{args.dataset}, {args.epochs} epochs, batch {args.batch_size}, {num_train} examples "
        f"trained, {VALIDATION_FRACTION:g} of the training split held out, "
        f"{keras.backend.backend()}, seed {args.seed}:"
    )
    print(json.dumps({args.dataset: summary}))
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "learning_rates.json"), "w") as f:
        json.dump(
            {
                "settings": {
                    k: v for k, v in vars(args).items() if not k.startswith("_")
                },
                "results": results,
            },
            f,
            indent=2,
            default=list,
        )
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run_script(lambda: search(args), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
