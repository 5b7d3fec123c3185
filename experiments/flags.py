"""The command-line flags several scripts share, each declared once with its default.

`add_data_arguments` declares the data set and model (`--dataset`, `--model`, `--depth`,
`--data-dir`); `add_qsgld_arguments` QSGLD's own settings (`--eta`, `--base`, `--kappa`,
`--tau0`, `--gate`, `--rounding`, `--momentum`). The defaults come from the library
(`keras_qsgld.schedules`) and `experiments.defaults`; a script that means another default
passes it. Unlike `experiments.cli`, this module imports the library (and so Keras).
"""

from experiments import cli
from experiments.datasets import DATASETS
from experiments.defaults import DEFAULT_DEPTH, DEFAULT_MODEL
from experiments.models import MODELS
from keras_qsgld.quantization import ROUNDING_MODES
from keras_qsgld.schedules import (
    DEFAULT_BASE,
    DEFAULT_ETA,
    DEFAULT_KAPPA,
    DEFAULT_WARMUP_FRACTION,
    GATES,
)


def add_data_arguments(group, dataset_default=None, dataset_help=None):
    """`--dataset`, `--model` (default: the data set's, `experiments.defaults`), `--depth`
    and `--data-dir`. `dataset_default` None leaves the default to the script (a preset,
    a smoke mode), which `dataset_help` then names."""
    group.add_argument(
        "--dataset",
        choices=DATASETS,
        default=dataset_default,
        help=dataset_help or "data set (default %(default)s)",
    )
    group.add_argument(
        "--model",
        choices=MODELS,
        help="model (default per data set: "
        + ", ".join(f"{d} {m}" for d, m in DEFAULT_MODEL.items())
        + ")",
    )
    group.add_argument(
        "--depth",
        type=cli.positive_int,
        default=DEFAULT_DEPTH,
        help="depth 6n+2 of cifar_resnet (default %(default)s, the authors' 'ResNet-50')",
    )
    group.add_argument(
        "--data-dir",
        help="tensorflow-datasets folder with (or for) the downloaded data",
    )


def add_qsgld_arguments(group, schedules=True):
    """QSGLD's settings: with `schedules`, `--eta`, `--base`, `--kappa` and `--tau0` (a
    search declares ranges of them instead); always `--gate`, `--rounding`, `--momentum`."""
    if schedules:
        group.add_argument(
            "--eta",
            type=cli.positive_float,
            default=DEFAULT_ETA,
            help="resolution scale eta of Qp (default %(default)g, the authors')",
        )
        group.add_argument(
            "--base",
            type=float,
            default=DEFAULT_BASE,
            help="growth factor b >= 1.01 of Qp (default %(default)g)",
        )
        group.add_argument(
            "--kappa",
            type=cli.non_negative_float,
            default=DEFAULT_KAPPA,
            help="slope per epoch of the compensation gate (default %(default)g)",
        )
        group.add_argument(
            "--tau0",
            type=float,
            help=f"gate switch-off epoch (default {DEFAULT_WARMUP_FRACTION:g} x epochs, as in the paper)",
        )
    group.add_argument(
        "--gate",
        choices=GATES,
        default=GATES[0],
        help="compensation gate: logistic (paper) or tanh (authors' code) (default %(default)s)",
    )
    group.add_argument(
        "--rounding",
        choices=ROUNDING_MODES,
        default=ROUNDING_MODES[0],
        help="nearest (paper), floor (authors' code), or the random modes, seeded by "
        "--seed (default %(default)s)",
    )
    group.add_argument(
        "--momentum",
        type=float,
        default=0.0,
        help="QSGLD momentum in [0, 1) (0 in the paper) (default %(default)s)",
    )
