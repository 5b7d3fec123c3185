#!/usr/bin/env python
"""Posterior sampling with QSGLD: train, sample, and compare calibrated predictions.

    python -m examples.sample                       # digits, offline, ~30 s on 2 CPU cores
    python -m examples.sample --dataset mnist1d     # MNIST-1D, generated locally
    python -m examples.sample --temperature 0.1     # a cold posterior, T = 0.1 / N

1. **Train** a model (an MLP for digits, a 1-D CNN for MNIST-1D) with QSGLD as the paper
   runs it (nearest rounding, increasing resolution) at a plain SGD learning rate.
2. **Sample**: continue from the trained weights with
   `QSGLD(lr, resolution=Temperature(T), rounding="dithered")`: Langevin dynamics at the
   temperature `T = temperature / N` (`N` training examples; `--temperature 1` samples the
   Bayesian posterior of the mean loss), with weight decay `T / prior_std**2`, a Gaussian
   prior `N(0, prior_std**2)` on every weight. A `PosteriorSampler` keeps a sample every
   `--thin` updates after `--burn-in` epochs, up to `--max-samples`.
3. **Compare** on the test split the trained weights, the chain's last iterate (one
   sample) and the posterior average over the samples: accuracy, negative log-likelihood,
   Brier score and expected calibration error (15 bins). The table is printed and written
   to `OUTPUT_DIR/results.md` (and `results.json`), the reliability diagrams to
   `OUTPUT_DIR/reliability.png`.

See docs/sampling.md for the choices (temperature, prior, burn-in, thinning, chains).
"""

import argparse
import json
import os
import sys
import time

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "sample.py: error: run it as a module, from the repository root: "
        "python -m examples.sample",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # before TensorFlow loads: no C++ info logs

import numpy as np

import keras_qsgld
from experiments import cli
from experiments.cli import (
    non_negative_int,
    positive_float,
    positive_int,
)
from experiments.datasets import OFFLINE_DATASETS, load_dataset
from experiments.defaults import DEFAULT_MODEL
from experiments.models import build_model
from keras_qsgld.calibration import calibration_report, reliability_diagram
from keras_qsgld.sampling import PosteriorSampler, posterior_predictive

PROG = "sample.py"
# The run's sizes; --quick changes the defaults, and a flag given explicitly wins over both.
FULL = dict(
    train_epochs=30,
    sample_epochs=25,
    burn_in=5,
    thin=15,
    max_samples=50,
    max_examples=None,
)
QUICK = dict(
    train_epochs=2,
    sample_epochs=3,
    burn_in=1,
    thin=2,
    max_samples=10,
    max_examples=320,
)


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
        "--train-epochs",
        type=positive_int,
        default=None,
        help=f"epochs of training (default {FULL['train_epochs']})",
    )
    p.add_argument(
        "--sample-epochs",
        type=positive_int,
        default=None,
        help=f"epochs of the sampling run, burn-in included (default {FULL['sample_epochs']})",
    )
    p.add_argument(
        "--burn-in",
        type=non_negative_int,
        default=None,
        help=f"epochs of the sampling run before the first sample (default {FULL['burn_in']})",
    )
    p.add_argument(
        "--thin",
        type=positive_int,
        default=None,
        help=f"optimizer updates between two samples (default {FULL['thin']})",
    )
    p.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help=f"samples to keep (default {FULL['max_samples']})",
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        default=0.1,
        help="learning rate of both phases (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=32,
        help="batch size (default %(default)s)",
    )
    p.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="temperature in units of 1/N: 1 is the Bayesian posterior, < 1 a cold "
        "posterior (default %(default)s)",
    )
    p.add_argument(
        "--prior-std",
        type=positive_float,
        default=1.0,
        help="standard deviation of the Gaussian prior of each weight (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of the initial weights, data order and rounding (default %(default)s)",
    )
    p.add_argument(
        "--output-dir",
        default=os.path.join("results", "sample"),
        help="folder for results.md, results.json and reliability.png (default %(default)s)",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="Keras progress display of fit (default %(default)s); > 0 also prints the "
        "sampler's progress",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tiny run for tests, as the defaults: "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + " (flags given explicitly still apply)",
    )
    return p


def test_arrays(bundle):
    """The test split as NumPy arrays (the pipeline is neither shuffled nor augmented)."""
    xs, ys = zip(*bundle.test.as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys)


def markdown_table(rows):
    lines = [
        "| predictions | samples | accuracy | NLL | Brier | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for name, (count, m) in rows.items():
        lines.append(
            f"| {name} | {count} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['brier']:.4f} | {m['ece']:.4f} |"
        )
    return "\n".join(lines)


def run_settings(args):
    """The run's sizes: the flags given, the others from QUICK (with --quick) or FULL."""
    defaults = QUICK if args.quick else FULL
    settings = {
        name: defaults[name]
        if getattr(args, name, None) is None
        else getattr(args, name)
        for name in FULL
    }
    if settings["burn_in"] >= settings["sample_epochs"]:
        raise cli.UserError(
            f"--burn-in ({settings['burn_in']} epochs) must be less than --sample-epochs "
            f"({settings['sample_epochs']}): no sample would be kept"
        )
    return settings


def run(args):
    settings = run_settings(args)

    # -- the data and the model -----------------------------------------------------------
    bundle = load_dataset(
        args.dataset,
        batch_size=args.batch_size,
        seed=args.seed,
        max_examples=settings["max_examples"],
    )
    x_test, y_test = test_arrays(bundle)
    model = build_model(
        DEFAULT_MODEL[args.dataset],
        bundle.input_shape,
        bundle.num_classes,
        seed=args.seed,
    )

    # -- 1. train ---------------------------------------------------------------------------
    model.compile(
        optimizer=keras_qsgld.QSGLD(
            args.lr,
            resolution=keras_qsgld.ResolutionSchedule(
                steps_per_epoch=bundle.steps_per_epoch
            ),
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    model.fit(
        bundle.train,
        epochs=settings["train_epochs"],
        shuffle=False,  # the pipeline shuffles (Keras would warn that it ignores True)
        verbose=args.verbose,
    )
    print(
        f"{args.dataset}: trained {settings['train_epochs']} epochs in {time.perf_counter() - start:.1f} s"
    )
    # Every prediction goes through posterior_predictive (here with one sample), so that all
    # three are computed the same way.
    trained = posterior_predictive(
        model, [model.get_weights()], x_test, batch_size=256
    )

    # -- 2. sample ----------------------------------------------------------------------------
    temperature = args.temperature / bundle.num_train
    model.compile(
        optimizer=keras_qsgld.QSGLD(
            args.lr,
            resolution=keras_qsgld.Temperature(temperature),
            rounding="dithered",
            seed=args.seed,
            weight_decay=temperature
            / args.prior_std**2,  # the prior N(0, prior_std**2)
        ),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    sampler = PosteriorSampler(
        burn_in=settings["burn_in"],
        thin=settings["thin"],
        max_samples=settings["max_samples"],
        verbose=int(args.verbose > 0),
    )
    start = time.perf_counter()
    model.fit(
        bundle.train,
        epochs=settings["sample_epochs"],
        shuffle=False,  # the pipeline shuffles
        callbacks=[sampler],
        verbose=args.verbose,
    )
    print(
        f"sampled {settings['sample_epochs']} epochs at T = {args.temperature:g}/{bundle.num_train} in "
        f"{time.perf_counter() - start:.1f} s: {len(sampler.samples)} samples "
        f"(burn-in {settings['burn_in']} epochs, thin {settings['thin']} updates)"
    )

    # -- 3. compare -----------------------------------------------------------------------------
    last = posterior_predictive(
        model, [model.get_weights()], x_test, batch_size=256
    )
    average = posterior_predictive(
        model, sampler.samples, x_test, batch_size=256
    )
    predictions = {
        "trained weights": trained,
        "last iterate": last,
        "posterior average": average,
    }
    counts = {
        "trained weights": 1,
        "last iterate": 1,
        "posterior average": len(sampler.samples),
    }
    rows = {
        name: (counts[name], calibration_report(y_test, p))
        for name, p in predictions.items()
    }
    table = markdown_table(rows)
    print(
        f"\n{args.dataset} test split ({len(y_test)} examples), {DEFAULT_MODEL[args.dataset]}, seed {args.seed}\n"
    )
    print(table)

    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "settings": {**vars(args), **settings},
                "temperature": temperature,
                "sample_steps": sampler.sample_steps,
                "metrics": {name: m for name, (_, m) in rows.items()},
            },
            f,
            indent=2,
        )
    plot = reliability_diagram(
        y_test,
        predictions,
        os.path.join(args.output_dir, "reliability.png"),
        title=f"{args.dataset}: reliability on the test split",
    )
    print(f"\nreliability diagram: {plot}")
    return rows


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run_script(lambda: run(args), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
