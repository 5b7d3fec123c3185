"""KerasTuner search of QSGLD's eta, base, kappa and tau0 (and optionally the learning rate).

Examples (see docs/tuning.md):

    python -m tuning.search --dataset cifar10 --data-dir ~/tensorflow_datasets
    python -m tuning.search --dataset cifar100 --tuner bayesian --max-trials 30 --epochs 20
    python -m tuning.search --smoke                      # digits + MLP, offline, 1-2 minutes

An existing search in `--directory/--project-name` resumes (rerun the same command after a
crash or Ctrl-C); `--overwrite` starts anew. At the end (on the chief, in a distributed
search) it prints `results_summary()` and writes to `--output-dir` (default: the project
directory):

    best_hyperparameters.json   the best values, the objective, "qsgld_config" and
                                "fit_command" (examples/fit.py with the best values)
    qsgld_config.json           the best optimizer: keras_qsgld.QSGLD.from_config(json.load(f))
    objective_vs_hyperparameters.png
    trials.json                 every completed trial's values and score

Distributed search uses KerasTuner's own chief/worker mode: set KERASTUNER_TUNER_ID
("chief" or e.g. "tuner0"), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT and run the same
command in every process. The hypermodel is `tuning.hypermodel`.
"""

import argparse
import contextlib
import json
import os
import shlex
import sys
from pathlib import Path

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "search.py: error: run it as a module, from the repository root: "
        "python -m tuning.search",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # before TensorFlow loads: fewer C++ logs

import keras
import keras_tuner as kt
from matplotlib.figure import Figure  # noqa: E402  (no pyplot: no display needed)

from experiments import cli, flags
from experiments.datasets import hold_out, load_dataset
from experiments.defaults import DEFAULT_MODEL, default_learning_rate
from tuning.hypermodel import (
    QSGLDHyperModel,
    SearchSpace,
    is_log_scale,
    searched_names,
)

PROG = "search.py"
TUNERS = ("hyperband", "bayesian", "random")
# Settings that --smoke changes, and their values without it.
SMOKE = dict(
    dataset="digits", batch_size=64, max_epochs=3, epochs=2, max_trials=3
)
FULL = dict(
    dataset="cifar10", batch_size=128, max_epochs=27, epochs=20, max_trials=20
)
SPACE = SearchSpace()  # the default bounds
SETTINGS_FILE = "qsgld_search_settings.json"
# Settings that must not change when a search resumes (they change what a trial means).
RESUME_KEYS = (
    "dataset",
    "model",
    "depth",
    "tuner",
    "batch_size",
    "validation_fraction",
    "max_examples",
    "epochs_budget",
    "steps_per_epoch",
    "objective",
    "space",
    "rounding",
    "momentum",
    "gate",
)
RESUME = "rerun the same command to resume the search; finished trials are kept (--overwrite starts anew)"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends the default to help strings that don't state one (and skips None/False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: %(default)s)".strip()


def build_parser():
    """The command-line interface."""
    p = cli.ArgumentParser(
        prog=PROG,
        description="KerasTuner search of QSGLD's eta, base b, kappa and tau0 "
        "(CIFAR ResNet-50 by default). See docs/tuning.md.",
        epilog="Distributed search: run the same command with KERASTUNER_TUNER_ID=chief on one "
        "process and KERASTUNER_TUNER_ID=tuner0, tuner1, ... on the workers, all with "
        "KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT of the chief.",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("data and model")
    flags.add_data_arguments(
        g,
        dataset_help=f"data set (default {FULL['dataset']}; {SMOKE['dataset']} with --smoke)",
    )
    g.add_argument(
        "--mock-data",
        type=cli.non_negative_int,
        default=0,
        metavar="N",
        help="offline runs: serve N random examples per split with "
        "tfds.testing.mock_data (tfds data sets only)",
    )
    g.add_argument(
        "--max-examples",
        type=cli.positive_int,
        help="use at most this many training examples",
    )
    g.add_argument(
        "--batch-size",
        type=cli.positive_int,
        help=f"default {FULL['batch_size']} ({SMOKE['batch_size']} with --smoke)",
    )
    g.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="fraction in [0, 1) of the training set held out as validation data; 0 "
        "uses the test split for validation (then the test score is no longer unbiased)",
    )

    g = p.add_argument_group("tuner")
    g.add_argument(
        "--tuner", default="hyperband", choices=TUNERS, help="search algorithm"
    )
    g.add_argument(
        "--objective",
        default="val_accuracy",
        help="metric to optimize; direction inferred (accuracy: max, loss: min)",
    )
    g.add_argument(
        "--max-epochs",
        type=cli.positive_int,
        help="Hyperband: epochs of the longest trial, the budget tau0 refers to "
        f"(default {FULL['max_epochs']}; {SMOKE['max_epochs']} with --smoke)",
    )
    g.add_argument(
        "--factor", type=int, default=3, help="Hyperband reduction factor, >= 2"
    )
    g.add_argument(
        "--hyperband-iterations",
        type=cli.positive_int,
        default=1,
        help="Hyperband: number of full Hyperband sweeps",
    )
    g.add_argument(
        "--epochs",
        type=cli.positive_int,
        help="random/bayesian: epochs per trial, the budget tau0 refers to "
        f"(default {FULL['epochs']}; {SMOKE['epochs']} with --smoke)",
    )
    g.add_argument(
        "--max-trials",
        type=cli.positive_int,
        help=f"random/bayesian: number of trials (default {FULL['max_trials']}; "
        f"{SMOKE['max_trials']} with --smoke)",
    )
    g.add_argument(
        "--num-initial-points",
        type=cli.positive_int,
        help="bayesian: random trials before the Gaussian process",
    )
    g.add_argument(
        "--executions-per-trial",
        type=cli.positive_int,
        default=1,
        help="trainings per trial (the objective is averaged)",
    )
    g.add_argument(
        "--directory",
        default=os.path.join("results", "tuning"),
        help="KerasTuner directory",
    )
    g.add_argument(
        "--project-name",
        help="KerasTuner project (default <dataset>_<model>_<tuner>)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an existing search and start anew (default: resume it)",
    )
    g.add_argument(
        "--output-dir",
        help="where the JSON files and the PNG go (default: the project directory)",
    )
    g.add_argument(
        "--seed",
        type=cli.non_negative_int,
        default=0,
        help="seed of the tuner, the model initialisation and the data order",
    )
    g.add_argument(
        "--smoke",
        action="store_true",
        help="tiny offline configuration (digits, MLP, batch 64, Hyperband with 3 "
        "epochs or 3 trials of 2 epochs) for a quick check",
    )
    g.add_argument(
        "--verbose",
        type=int,
        default=1,
        choices=(0, 1, 2),
        help="Keras verbosity",
    )

    g = p.add_argument_group("search space")
    g.add_argument(
        "--eta-min",
        type=cli.positive_float,
        default=SPACE.eta_min,
        help="eta lower bound (log scale)",
    )
    g.add_argument(
        "--eta-max",
        type=cli.positive_float,
        default=SPACE.eta_max,
        help="eta upper bound",
    )
    g.add_argument(
        "--base-min",
        type=float,
        default=SPACE.base_min,
        help="base b lower bound (>= 1.01, linear)",
    )
    g.add_argument(
        "--base-max",
        type=float,
        default=SPACE.base_max,
        help="base b upper bound",
    )
    g.add_argument(
        "--kappa-min",
        type=cli.positive_float,
        default=SPACE.kappa_min,
        help="kappa lower bound (log scale)",
    )
    g.add_argument(
        "--kappa-max",
        type=cli.positive_float,
        default=SPACE.kappa_max,
        help="kappa upper bound",
    )
    g.add_argument(
        "--tau0-min",
        type=cli.non_negative_float,
        default=SPACE.tau0_min,
        help="tau0 / epoch budget, lower bound",
    )
    g.add_argument(
        "--tau0-max",
        type=cli.non_negative_float,
        default=SPACE.tau0_max,
        help="tau0 / epoch budget, upper bound",
    )
    g.add_argument(
        "--tune-learning-rate",
        action="store_true",
        help="also search the learning rate",
    )
    g.add_argument(
        "--learning-rate",
        type=cli.positive_float,
        default=None,
        help="the fixed learning rate when it is not searched (default: QSGLD's for the "
        "data set, experiments.defaults.default_learning_rate: "
        f"{SPACE.learning_rate:g} where none was measured)",
    )
    g.add_argument(
        "--lr-min",
        type=cli.positive_float,
        default=SPACE.lr_min,
        help="learning-rate lower bound (log scale; with --tune-learning-rate)",
    )
    g.add_argument(
        "--lr-max",
        type=cli.positive_float,
        default=SPACE.lr_max,
        help="learning-rate upper bound",
    )

    g = p.add_argument_group("fixed QSGLD settings")
    flags.add_qsgld_arguments(g, schedules=False)
    g.add_argument(
        "--jit-compile", action="store_true", help="compile training with XLA"
    )
    return p


def parse_args(argv=None):
    """Parses `argv` and fills the defaults that depend on `--smoke` and on the data set."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.model is None:
        args.model = DEFAULT_MODEL[args.dataset]
    if args.learning_rate is None:
        args.learning_rate = default_learning_rate("qsgld", args.dataset)
    if not 0 <= args.validation_fraction < 1:
        parser.error(
            f"argument --validation-fraction: expected a fraction in [0, 1), received {args.validation_fraction!r}"
        )
    if args.factor < 2:
        parser.error(
            f"argument --factor: expected an integer >= 2, received {args.factor!r}"
        )
    try:
        make_space(args)
    except ValueError as error:
        parser.error(str(error))
    if args.project_name is None:
        args.project_name = f"{args.dataset}_{args.model}_{args.tuner}"
    return args


# -- distribution ----------------------------------------------------------------------
def distributed_role():
    """`None` (single process), `"chief"` or `"worker"`, from KerasTuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return None
    return (
        "chief"
        if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "")
        else "worker"
    )


# -- data ------------------------------------------------------------------------------
def load_data(args):
    """Returns `(train, validation, info)` for the search.

    With `--validation-fraction f > 0`, the first `f * num_train` examples of the (unshuffled)
    training set are the validation data and the rest, reshuffled every epoch, are trained on
    (`experiments.datasets.hold_out`); every process of a distributed search gets
    the same split. `info` holds `input_shape`, `num_classes`, `num_train` (examples trained
    on) and `steps_per_epoch`.
    """
    holdout = args.validation_fraction > 0
    bundle = load_dataset(
        args.dataset,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        augment=False,
        shuffle=not holdout,
        seed=args.seed,
        max_examples=args.max_examples,
    )
    info = dict(
        input_shape=tuple(bundle.input_shape),
        num_classes=int(bundle.num_classes),
    )
    if not holdout:
        info.update(
            num_train=bundle.num_train, steps_per_epoch=bundle.steps_per_epoch
        )
        return bundle.train, bundle.test, info
    train, validation, num_train, steps = hold_out(
        bundle, args.validation_fraction, seed=args.seed
    )
    info.update(num_train=num_train, steps_per_epoch=steps)
    return train, validation, info


@contextlib.contextmanager
def maybe_mock_data(num_examples):
    """`tfds.testing.mock_data(num_examples)` when `num_examples > 0`, else nothing."""
    if not num_examples:
        yield
        return
    # Imported here: only --mock-data needs tensorflow-datasets (digits and mnist1d don't).
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=num_examples):
        yield


# -- tuner -----------------------------------------------------------------------------
def epoch_budget(args):
    """The epoch budget that `tau0_fraction` refers to: Hyperband's max_epochs, else --epochs."""
    return args.max_epochs if args.tuner == "hyperband" else args.epochs


def make_space(args):
    return SearchSpace(
        eta_min=args.eta_min,
        eta_max=args.eta_max,
        base_min=args.base_min,
        base_max=args.base_max,
        kappa_min=args.kappa_min,
        kappa_max=args.kappa_max,
        tau0_min=args.tau0_min,
        tau0_max=args.tau0_max,
        tune_learning_rate=args.tune_learning_rate,
        learning_rate=args.learning_rate,
        lr_min=args.lr_min,
        lr_max=args.lr_max,
    )


def make_hypermodel(args, info, hypermodel_class=QSGLDHyperModel):
    """The `QSGLDHyperModel` for the parsed arguments and the data's `info`."""
    model_kwargs = {"depth": args.depth} if args.model == "cifar_resnet" else {}
    return hypermodel_class(
        input_shape=info["input_shape"],
        num_classes=info["num_classes"],
        steps_per_epoch=info["steps_per_epoch"],
        epochs=epoch_budget(args),
        model=args.model,
        model_kwargs=model_kwargs,
        space=make_space(args),
        rounding=args.rounding,
        momentum=args.momentum,
        gate=args.gate,
        jit_compile=args.jit_compile,
        seed=args.seed,
    )


def make_tuner(args, hypermodel):
    """The KerasTuner tuner chosen by `--tuner` (resumes unless `--overwrite`)."""
    common = dict(
        objective=args.objective,
        directory=args.directory,
        project_name=args.project_name,
        overwrite=args.overwrite,
        seed=args.seed,
        executions_per_trial=args.executions_per_trial,
    )
    if args.tuner == "hyperband":
        return kt.Hyperband(
            hypermodel,
            max_epochs=args.max_epochs,
            factor=args.factor,
            hyperband_iterations=args.hyperband_iterations,
            **common,
        )
    if args.tuner == "bayesian":
        return kt.BayesianOptimization(
            hypermodel,
            max_trials=args.max_trials,
            num_initial_points=args.num_initial_points,
            **common,
        )
    return kt.RandomSearch(hypermodel, max_trials=args.max_trials, **common)


def search_settings(args, info):
    """What a resumed search must share with the one it resumes (written as JSON)."""
    return dict(
        dataset=args.dataset,
        model=args.model,
        depth=args.depth,
        tuner=args.tuner,
        batch_size=args.batch_size,
        validation_fraction=args.validation_fraction,
        max_examples=args.max_examples,
        epochs_budget=epoch_budget(args),
        steps_per_epoch=info["steps_per_epoch"],
        objective=args.objective,
        space=vars(make_space(args)),
        rounding=args.rounding,
        momentum=args.momentum,
        gate=args.gate,
    )


def check_resume(project_dir, settings):
    """Raises `cli.UserError` when an existing search in `project_dir` used other settings."""
    path = Path(project_dir) / SETTINGS_FILE
    if not path.exists():
        return
    old = json.loads(path.read_text())
    changed = {
        k: (old.get(k), settings.get(k))
        for k in RESUME_KEYS
        if json.dumps(old.get(k), sort_keys=True)
        != json.dumps(settings.get(k), sort_keys=True)
    }
    if changed:
        detail = ", ".join(
            f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()
        )
        raise cli.UserError(
            f"The search in {project_dir} was started with other settings ({detail}). "
            "Pass --overwrite to start anew or --project-name for a new search."
        )


# -- results ---------------------------------------------------------------------------
def completed_trials(tuner):
    """Completed trials with a score, in the order they were started."""
    oracle = tuner.oracle
    trials = [
        oracle.trials[t] for t in oracle.start_order if t in oracle.trials
    ]
    return [
        t for t in trials if t.status == "COMPLETED" and t.score is not None
    ]


def write_results(tuner, hypermodel, args, info, output_dir):
    """Prints the summary and writes the JSON files and the PNG; returns the best record."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tuner.results_summary()
    best_trial = tuner.oracle.get_best_trials(1)
    if not best_trial:
        raise RuntimeError(
            f"No completed trial in {tuner.project_dir}: nothing to report."
        )
    best_trial = best_trial[0]
    hps = tuner.oracle.get_space()
    names = searched_names(hps)
    values = {
        k: v
        for k, v in best_trial.hyperparameters.values.items()
        if not k.startswith("tuner/")
    }
    values.setdefault("learning_rate", args.learning_rate)
    optimizer = hypermodel.optimizer_for(values)
    config = optimizer.get_config()
    budget = epoch_budget(args)
    record = dict(
        objective=tuner.oracle.objective.name,
        direction=tuner.oracle.objective.direction,
        score=best_trial.score,
        trial_id=best_trial.trial_id,
        hyperparameters=values,
        searched=names,
        tau0=values["tau0_fraction"] * budget,
        epochs=budget,
        steps_per_epoch=info["steps_per_epoch"],
        batch_size=args.batch_size,
        dataset=args.dataset,
        model=args.model,
        tuner=args.tuner,
        qsgld_config=config,
    )
    record["fit_args"] = fit_arguments(record, args)
    record["fit_command"] = "python -m examples.fit " + shlex.join(
        record["fit_args"]
    )
    (output_dir / "best_hyperparameters.json").write_text(
        json.dumps(record, indent=2) + "\n"
    )
    (output_dir / "qsgld_config.json").write_text(
        json.dumps(config, indent=2) + "\n"
    )
    trials = [
        dict(
            trial_id=t.trial_id,
            score=t.score,
            best_step=t.best_step,
            values=t.hyperparameters.values,
        )
        for t in completed_trials(tuner)
    ]
    (output_dir / "trials.json").write_text(json.dumps(trials, indent=2) + "\n")
    plot_trials(
        trials,
        names,
        hps,
        record,
        output_dir / "objective_vs_hyperparameters.png",
    )
    print(
        f"Best {record['objective']} = {record['score']:.6g} (trial {record['trial_id']}): "
        + ", ".join(f"{k}={v:.6g}" for k, v in values.items())
    )
    print(
        f"Wrote {output_dir / 'best_hyperparameters.json'}, {output_dir / 'qsgld_config.json'}, "
        f"{output_dir / 'objective_vs_hyperparameters.png'}"
    )
    return record


def fit_arguments(record, args):
    """Arguments of `examples/fit.py` that train with the best QSGLD for the epoch budget.

    (The fit script counts `steps_per_epoch` on its own training data; `--tau0` is in epochs.)
    """
    v = record["hyperparameters"]
    out = ["--dataset", args.dataset, "--model", args.model]
    if args.model == "cifar_resnet":
        out += ["--depth", str(args.depth)]
    if args.data_dir:
        out += ["--data-dir", args.data_dir]
    out += [
        "--optimizer",
        "qsgld",
        "--lr",
        repr(float(v["learning_rate"])),
        "--eta",
        repr(float(v["eta"])),
        "--base",
        repr(float(v["base"])),
        "--kappa",
        repr(float(v["kappa"])),
        "--tau0",
        repr(float(record["tau0"])),
        "--gate",
        args.gate,
        "--rounding",
        args.rounding,
        "--momentum",
        repr(float(args.momentum)),
        "--epochs",
        str(record["epochs"]),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
    ]
    return out


def plot_trials(trials, names, hps, record, path):
    """One panel per searched hyperparameter: the objective of every trial against its value."""
    names = names or ["eta"]
    fig = Figure(figsize=(3.2 * len(names), 3.0))
    axes = fig.subplots(1, len(names), squeeze=False, sharey=True)[0]
    epochs = [t["values"].get("tuner/epochs") for t in trials]
    colour = epochs if trials and all(e is not None for e in epochs) else None
    for ax, name in zip(axes, names):
        x = [t["values"].get(name) for t in trials]
        y = [t["score"] for t in trials]
        if colour is None:
            points = ax.scatter(x, y, s=18)
        else:
            points = ax.scatter(x, y, c=colour, cmap="viridis", s=18)
        ax.scatter(
            [record["hyperparameters"][name]],
            [record["score"]],
            marker="*",
            s=160,
            facecolors="none",
            edgecolors="red",
            label="best",
        )
        if is_log_scale(hps, name):
            ax.set_xscale("log", base=2 if name == "eta" else 10)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(record["objective"])
    axes[0].legend(loc="best", fontsize=8)
    if colour is not None:
        fig.colorbar(points, ax=list(axes), label="epochs trained")
    fig.suptitle(
        f"{record['tuner']} search, {record['dataset']} / {record['model']}",
        fontsize=10,
    )
    fig.savefig(path, dpi=100, bbox_inches="tight")


# -- main ------------------------------------------------------------------------------
def run(args, hypermodel_class=QSGLDHyperModel):
    """Runs (or resumes) the search described by parsed `args`; returns the best record
    (None on a distributed worker, which leaves the reporting to the chief)."""
    keras.utils.set_random_seed(args.seed)
    role = distributed_role()
    with maybe_mock_data(args.mock_data):
        with (
            cli.user_errors()
        ):  # a bad combination of settings: one line, not a traceback
            train, validation, info = load_data(args)
            hypermodel = make_hypermodel(args, info, hypermodel_class)
        project_dir = Path(args.directory) / args.project_name
        settings = search_settings(args, info)
        if not args.overwrite and role != "worker":
            check_resume(project_dir, settings)
        tuner = make_tuner(args, hypermodel)
        if role != "worker":
            project_dir.mkdir(parents=True, exist_ok=True)
            (project_dir / SETTINGS_FILE).write_text(
                json.dumps(settings, indent=2) + "\n"
            )
            print(
                f"QSGLD search with {args.tuner} in {project_dir}: "
                f"{info['num_train']} training examples, {info['steps_per_epoch']} steps/epoch, "
                f"epoch budget {epoch_budget(args)}"
            )
            tuner.search_space_summary()
        fit_kwargs = dict(
            validation_data=validation,
            verbose=args.verbose,
            shuffle=False,  # the data shuffles
            callbacks=[keras.callbacks.TerminateOnNaN()],
        )
        if args.tuner != "hyperband":
            fit_kwargs["epochs"] = args.epochs
        tuner.search(train, **fit_kwargs)
    if role == "worker":
        print(f"Worker {os.environ.get('KERASTUNER_TUNER_ID')} finished.")
        return None
    return write_results(
        tuner, hypermodel, args, info, args.output_dir or project_dir
    )


def main(argv=None):
    """Entry point: `python -m tuning.search --help`; returns the exit code."""
    args = parse_args(argv)
    return cli.run_script(lambda: run(args), prog=PROG, interrupted=RESUME)


if __name__ == "__main__":
    sys.exit(main())
