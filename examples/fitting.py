"""Train one model per optimizer on the same data, initial weights and seed, and compare them.

The machinery of `examples/fit.py` and `examples/demo.py`. `FitConfig` holds the settings
of a comparison; `compare(config)` trains a fresh model with each optimizer of
`config.optimizers` in turn and writes, for each, to `OUTPUT_DIR/<optimizer>/`:

- `log.csv` (`keras.callbacks.CSVLogger`): one row per epoch: `loss`, `accuracy`,
  `test_loss`, `test_accuracy` and, for QSGLD and QAdam, the `QSGLDMonitor` columns;
- `tensorboard/`: the same scalars, in the runs `train` and `test`;
- `metrics.json`: the last epoch's metrics, the settings, the optimizer's config, the
  per-epoch history;
- `curves.png`: loss and accuracy per epoch, train solid, test dashed;

and with several optimizers `OUTPUT_DIR/comparison.md` (the table it prints) and
`OUTPUT_DIR/comparison.png` (the curves overlaid).

The test split is what `fit` gets as `validation_data`; Keras names its metrics `val_*`,
these logs name them `test_*`. Nothing is selected on it: the results are the last epoch's.

A run that does not resume starts its log folder clean (`log.csv` and `tensorboard/`).
With `config.backup_dir`, `keras.callbacks.BackupAndRestore` backs the run up at the end of
every epoch into `BACKUP_DIR/<optimizer>/`; the same comparison started again resumes it
from its last finished epoch, bit for bit as if it had not stopped (the logs continue).
"""

import csv
import dataclasses
import json
import math
import os
import shutil
import time

import keras
from matplotlib.figure import (
    Figure,
)  # no pyplot: no display, no global figure state
from matplotlib.ticker import MaxNLocator

from experiments.cli import user_errors
from experiments.datasets import load_dataset, repeat_from_epoch
from experiments.defaults import (
    DEFAULT_DEPTH,
    DEFAULT_MODEL,
    default_learning_rate,
)
from experiments.models import build_model
from keras_qsgld import (
    QSGLD,
    CompensationSchedule,
    QAdam,
    QSGLDMonitor,
    ResolutionSchedule,
)
from keras_qsgld.quantization import RANDOM_ROUNDING_MODES
from keras_qsgld.schedules import (
    DEFAULT_BASE,
    DEFAULT_ETA,
    DEFAULT_KAPPA,
    DEFAULT_WARMUP_FRACTION,
    GATES,
)

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


@dataclasses.dataclass
class FitConfig:
    """The settings of a comparison (the flags of `examples/fit.py`).

    `model=None` is the data set's default model (`DEFAULT_MODEL`), a learning rate missing
    from `learning_rates` the optimizer's default on the data set (`default_learning_rate`), `tau0=None`
    `DEFAULT_WARMUP_FRACTION` (0.2) of `epochs`, as in the paper.
    """

    # data and model
    dataset: str = "digits"
    model: str | None = None
    depth: int = DEFAULT_DEPTH
    data_dir: str | None = None
    augment: bool = False
    shuffle: bool = True
    drop_remainder: bool = False
    max_examples: int | None = None
    # training
    optimizers: tuple = ("qsgld",)
    learning_rates: dict = dataclasses.field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    jit_compile: bool = False
    weight_decay: float | None = None  # None: each optimizer's own default
    # QSGLD and QAdam
    eta: float = DEFAULT_ETA
    base: float = DEFAULT_BASE
    kappa: float = DEFAULT_KAPPA
    tau0: float | None = None
    gate: str = GATES[0]  # logistic, the paper's
    compensation: bool = True
    rounding: str = "nearest"
    momentum: float = 0.0
    nesterov: bool = False
    # outputs
    output_dir: str = os.path.join("results", "fit")
    backup_dir: str | None = None
    verbose: int = 1
    plots: bool = True

    def model_name(self):
        return self.model or DEFAULT_MODEL[self.dataset]

    def learning_rate(self, name):
        return self.learning_rates.get(
            name, default_learning_rate(name, self.dataset)
        )

    def gate_off_epoch(self):
        """`tau0`, in epochs."""
        return (
            DEFAULT_WARMUP_FRACTION * self.epochs
            if self.tau0 is None
            else self.tau0
        )


def make_optimizer(name, config, steps_per_epoch):
    """Optimizer `name` with `config`'s settings; QSGLD's and QAdam's schedules count epochs
    of `steps_per_epoch` updates (`QSGLDMonitor` checks that against `fit`)."""
    extra = (
        {}
        if config.weight_decay is None
        else {"weight_decay": config.weight_decay}
    )
    if name not in QUANTIZED:
        optimizer_class = getattr(keras.optimizers, KERAS_OPTIMIZERS[name])
        return optimizer_class(
            learning_rate=config.learning_rate(name), **extra
        )
    if config.rounding in RANDOM_ROUNDING_MODES:
        extra["seed"] = config.seed
    compensation = None
    if config.compensation:
        compensation = CompensationSchedule(
            kappa=config.kappa,
            tau0=config.gate_off_epoch(),
            steps_per_epoch=steps_per_epoch,
            gate=config.gate,
        )
    settings = dict(
        learning_rate=config.learning_rate(name),
        resolution=ResolutionSchedule(
            eta=config.eta, base=config.base, steps_per_epoch=steps_per_epoch
        ),
        compensation=compensation,
        rounding=config.rounding,
        track_noise=True,  # for the monitor's noise columns
        jit_compile=config.jit_compile,
        **extra,
    )
    if name == "qsgld":
        return QSGLD(
            momentum=config.momentum, nesterov=config.nesterov, **settings
        )
    return QAdam(**settings)


# -- one run ---------------------------------------------------------------------------
class TestSplitLogs(keras.callbacks.Callback):
    """Renames Keras' `val_*` logs `test_*`: these runs validate on the test split."""

    def on_epoch_end(self, epoch, logs=None):
        for key in [key for key in logs or {} if key.startswith("val_")]:
            logs["test_" + key[len("val_") :]] = logs.pop(key)


class TensorBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` that names the run of `validation_data` "test"."""

    def set_model(self, model):
        super().set_model(model)
        # If Keras renames this attribute, the run keeps its name "validation" (tested).
        self._val_dir = os.path.join(self._log_write_dir, "test")


class CSVLogger(keras.callbacks.CSVLogger):
    """`keras.callbacks.CSVLogger` whose columns are the logs' keys: Keras' adds a `val_*`
    column of "NA" for every key when the logs have none, and here they are `test_*`."""

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted(logs or {})
        super().on_epoch_end(epoch, logs)


def completed_epochs(backup_dir):
    """The epochs that `BackupAndRestore(backup_dir)` will skip (0 if it holds no backup)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def start_log_folder(run_dir, resuming):
    """Creates `run_dir`; unless the run resumes, deletes its previous `log.csv` and
    `tensorboard/` (TensorBoard would show the old event files beside the new ones)."""
    os.makedirs(run_dir, exist_ok=True)
    if not resuming:
        shutil.rmtree(os.path.join(run_dir, "tensorboard"), ignore_errors=True)
        if os.path.exists(os.path.join(run_dir, "log.csv")):
            os.remove(os.path.join(run_dir, "log.csv"))


def run_callbacks(name, run_dir, backup_dir, resuming):
    """The callbacks of one run, in the order Keras must call them."""
    callbacks = []
    if name in QUANTIZED:
        callbacks.append(
            QSGLDMonitor()
        )  # first: the loggers read what it adds to the logs
    callbacks += [
        TensorBoard(
            os.path.join(run_dir, "tensorboard"), write_graph=False
        ),  # reads val_*
        TestSplitLogs(),
        CSVLogger(os.path.join(run_dir, "log.csv"), append=resuming),
    ]
    if backup_dir:
        # Last: an epoch is logged before it is backed up, so a resumed log has no gap.
        callbacks.append(
            keras.callbacks.BackupAndRestore(backup_dir, double_checkpoint=True)
        )
    return callbacks


def build(name, config):
    """The data, and a fresh model compiled with optimizer `name`, of one run."""
    keras.utils.set_random_seed(
        config.seed
    )  # the same data order and initial weights for all
    with user_errors():  # a bad setting: one line, not a traceback
        data = load_dataset(
            config.dataset,
            batch_size=config.batch_size,
            data_dir=config.data_dir,
            augment=config.augment,
            shuffle=config.shuffle,
            seed=config.seed,
            drop_remainder=config.drop_remainder,
            max_examples=config.max_examples,
        )
        model_kwargs = (
            {"depth": config.depth}
            if config.model_name() == "cifar_resnet"
            else {}
        )
        model = build_model(
            config.model_name(),
            data.input_shape,
            data.num_classes,
            seed=config.seed,
            **model_kwargs,
        )
        optimizer = make_optimizer(name, config, data.steps_per_epoch)
    model.compile(
        optimizer=optimizer,
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )
    return data, model


def train_one(name, config):
    """Trains a fresh model with optimizer `name`, or resumes it; returns its metrics."""
    run_dir = os.path.join(config.output_dir, name)
    backup_dir = (
        os.path.join(config.backup_dir, name) if config.backup_dir else None
    )
    first_epoch = completed_epochs(backup_dir) if backup_dir else 0
    data, model = build(name, config)
    start_log_folder(run_dir, resuming=first_epoch > 0)
    print(
        f"\n== {name} (lr {config.learning_rate(name):g}) on {data.name}: {data.num_train} train / "
        f"{data.num_test} test examples, {data.steps_per_epoch} steps per epoch, model {model.name} "
        f"({model.count_params():,} weights), {keras.backend.backend()} backend"
        + (f"; resuming after epoch {first_epoch}" if first_epoch else "")
    )
    timer = EpochTimer()
    model.fit(
        repeat_from_epoch(data.train, first_epoch),
        steps_per_epoch=data.steps_per_epoch,
        epochs=config.epochs,
        validation_data=data.test,
        shuffle=False,  # the pipeline shuffles
        callbacks=[timer]
        + run_callbacks(name, run_dir, backup_dir, resuming=first_epoch > 0),
        verbose=config.verbose,
    )
    return record_run(name, config, data, model, run_dir, timer.seconds)


class EpochTimer(keras.callbacks.Callback):
    """Seconds of each epoch of a `fit`: the first holds the compilation (and, first in a
    process, the backend's start-up), so the comparison times the others apart."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def record_run(name, config, data, model, run_dir, seconds):
    """Writes `metrics.json` (and `curves.png`) of a finished run from its CSV log, which
    holds every epoch, those before a resume too; returns the metrics."""
    history = read_csv_log(os.path.join(run_dir, "log.csv"))
    metrics = {
        "optimizer": name,
        "learning_rate": config.learning_rate(name),
        "optimizer_config": jsonable(model.optimizer.get_config()),
        "backend": keras.backend.backend(),
        "dataset": data.name,
        "model": model.name,
        "num_weights": int(model.count_params()),
        "num_train": data.num_train,
        "num_test": data.num_test,
        "batch_size": data.batch_size,
        "steps_per_epoch": data.steps_per_epoch,
        "epochs": config.epochs,
        "seed": config.seed,
        # Of this process (a resumed run counts its own epochs): the first epoch, which
        # compiles, and the others.
        "train_seconds": sum(seconds),
        "first_epoch_seconds": seconds[0] if seconds else math.nan,
        "later_epochs_seconds": sum(seconds[1:]),
        "final": {
            key: values[-1]
            for key, values in history.items()
            if key != "epoch" and values
        },
        "history": history,
        "settings": jsonable(dataclasses.asdict(config)),
    }
    with open(os.path.join(run_dir, "metrics.json"), "w") as f:
        json.dump(jsonable(metrics), f, indent=2)
    if config.plots:
        plot_curves(
            {name: history},
            os.path.join(run_dir, "curves.png"),
            f"{name} (lr {config.learning_rate(name):g}) on {data.name}, {keras.backend.backend()}",
        )
    return metrics


# -- the comparison --------------------------------------------------------------------
def compare(config):
    """Trains with every optimizer of `config.optimizers`; returns their metrics dicts."""
    with user_errors():  # every optimizer's settings, before anything trains
        for name in config.optimizers:
            make_optimizer(name, config, steps_per_epoch=1)
    os.makedirs(config.output_dir, exist_ok=True)
    results = [train_one(name, config) for name in config.optimizers]
    first = results[0]
    header = (
        f"{first['dataset']}, model {first['model']}, {first['epochs']} epochs, batch size "
        f"{first['batch_size']}, seed {first['seed']}, {first['backend']} backend"
    )
    rates = "learning rates: " + ", ".join(
        f"{m['optimizer']} {m['learning_rate']:g}" for m in results
    )
    table = comparison_table(results)
    print(f"\n{header}\n{rates}\n\n{table}\n")
    for line in filter(None, map(monitor_summary, results)):
        print(line)
    if len(results) > 1:
        with open(os.path.join(config.output_dir, "comparison.md"), "w") as f:
            f.write(f"# {header}\n\n{rates}\n\n{table}\n")
        if config.plots:
            plot_curves(
                {m["optimizer"]: m["history"] for m in results},
                os.path.join(config.output_dir, "comparison.png"),
                f"{header}\n{rates}",
            )
    print(f"outputs in {config.output_dir}")
    return results


def comparison_table(results):
    """A Markdown table of the runs' last epochs."""
    lines = [
        "| optimizer | lr | train loss | train acc | test loss | test acc | time (s): epoch 1 + the others |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in results:
        last = m["final"]
        lines.append(
            f"| {m['optimizer']} | {m['learning_rate']:g} | {last.get('loss', math.nan):.4f} | "
            f"{last.get('accuracy', math.nan):.4f} | {last.get('test_loss', math.nan):.4f} | "
            f"{last.get('test_accuracy', math.nan):.4f} | "
            f"{m['first_epoch_seconds']:.1f} + {m['later_epochs_seconds']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"Epoch {results[0]['epochs']}, the last, of each run: nothing is selected on the test split. "
        "Epoch 1's time holds the compilation (and the backend's start-up, first in a process): "
        "compare the others."
    )
    return "\n".join(lines)


def monitor_summary(metrics):
    """One line of QSGLD's state after the last epoch (None for other optimizers)."""
    last = metrics["final"]
    if "qsgld_qp" not in last:
        return None
    line = (
        f"{metrics['optimizer']} after epoch {metrics['epochs']}: Qp = {last['qsgld_qp']:.0f}, "
        f"gate s = {last['qsgld_gate']:.3g}"
    )
    if "qsgld_temperature" in last:  # QSGLD's; QAdam has no single temperature
        line += f", temperature Qp^-2/(24 lr) = {last['qsgld_temperature']:.3g}"
    if "qsgld_zero_fraction" in last:
        line += (
            f", increments exactly 0: {last['qsgld_zero_fraction']:.1%}, rounding-error variance "
            f"/ (1/12) = {last['qsgld_noise_variance_ratio']:.3f}"
        )
    return line


# -- files -----------------------------------------------------------------------------
def read_csv_log(path):
    """The CSVLogger file as `{column: [floats]}`, one value per epoch.

    Unlike `History`, it covers the epochs before a resume too. An epoch logged twice (a
    run stopped between logging an epoch and backing it up reruns it) counts once, the
    last time.
    """
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows[row.get("epoch")] = row
    history = {}
    for row in rows.values():
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            history.setdefault(key, []).append(number)
    return history


def jsonable(value):
    """`value` with what JSON can't hold made into numbers or strings (NaN, inf: strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    try:
        return jsonable(float(value))
    except (TypeError, ValueError):
        return str(value)


def plot_curves(histories, path, title):
    """Loss (log scale) and accuracy per epoch of each run, train solid, test dashed."""
    fig = Figure(figsize=(11, 4.3))
    axes = fig.subplots(1, 2)
    for i, (name, history) in enumerate(histories.items()):
        epochs = [
            int(e) + 1
            for e in history.get("epoch", range(len(history.get("loss", []))))
        ]
        for ax, key in zip(axes, ("loss", "accuracy")):
            if key in history:
                ax.plot(
                    epochs, history[key], color=f"C{i}", label=f"{name} train"
                )
            if "test_" + key in history:
                ax.plot(
                    epochs,
                    history["test_" + key],
                    color=f"C{i}",
                    ls="--",
                    label=f"{name} test",
                )
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
