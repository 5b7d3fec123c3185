#!/usr/bin/env python
"""`make demo`: QSGLD against SGD and Adam on scikit-learn's digits, offline, on a CPU.

    python -m examples.demo --output-dir results/demo     # what `make demo` runs
    python -m examples.demo --epochs 5                     # a shorter run

Trains the same MLP (same initial weights, same data order) with each optimizer, prints a
Markdown table of the last epoch and QSGLD's monitor values, and writes what
`examples/fit.py` writes (per optimizer `log.csv`, `tensorboard/`, `metrics.json`,
`curves.png`; `comparison.md`, `comparison.png`) to `--output-dir`. It is

    python -m examples.fit --dataset digits --model mlp --optimizer qsgld,sgd,adam
        --lr qsgld=0.05,sgd=0.05 --batch-size 32 --epochs 40 --seed 0 --verbose 2

(Adam at its default 0.001); use `fit.py` for other settings.
"""

import argparse
import dataclasses
import os
import sys

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "demo.py: error: run it as a module, from the repository root: "
        "python -m examples.demo",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # before TensorFlow loads: fewer C++ logs

from examples.fitting import FitConfig, compare
from experiments import cli
from experiments.defaults import DEFAULT_LEARNING_RATE

PROG = "demo.py"
DEMO = FitConfig(
    dataset="digits",
    model="mlp",
    optimizers=("qsgld", "sgd", "adam"),
    learning_rates={
        "qsgld": 0.05,
        "sgd": 0.05,
        "adam": DEFAULT_LEARNING_RATE["adam"],
    },
    batch_size=32,
    epochs=40,
    seed=0,
    verbose=2,
    output_dir=os.path.join("results", "demo"),
)


def build_parser():
    p = cli.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--output-dir", default=DEMO.output_dir, help="default %(default)s"
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=DEMO.epochs,
        help="default %(default)s",
    )
    p.add_argument(
        "--max-examples",
        type=cli.positive_int,
        help="use only the first N examples of each split (default: all)",
    )
    p.add_argument(
        "--verbose",
        type=int,
        choices=(0, 1, 2),
        default=DEMO.verbose,
        help="Keras' display: 2 one line per epoch (default), 1 progress bar, 0 none",
    )
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    config = dataclasses.replace(DEMO, **vars(args))
    return cli.run_script(lambda: compare(config), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
