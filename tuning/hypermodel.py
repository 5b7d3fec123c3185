"""A KerasTuner `HyperModel` that searches QSGLD's own hyperparameters (`tuning/search.py`).

The searched hyperparameters (KerasTuner names in quotes), each declared once, in
`SearchSpace.declare`, with the authors' value as its default:

```
"eta"            scale of the resolution Qp(t) = eta * base ** floor(log_base(ln(t + 2)))  (log scale)
"base"           growth factor b >= 1.01 between resolutions
"kappa"          slope per epoch of the compensation gate s(t) = sigmoid(-kappa (t - tau0))  (log scale)
"tau0_fraction"  switch-off time of the gate as a fraction of the epoch budget: tau0 = fraction * epochs
"learning_rate"  only when `SearchSpace.tune_learning_rate` is True (log scale)
```

Time `t` is counted in epochs, so the schedules need `steps_per_epoch` (the number of optimizer
steps per epoch of the training data) and `tau0` needs the epoch budget (`epochs`; for
Hyperband its `max_epochs`).

The optimizer is built at the end of `build(hp)` (`model.optimizer.build(...)`): Hyperband
continues a trial by `model.load_weights(...)` on a freshly built model, and an optimizer
without variables skips loading, so `iterations` (which drives both schedules) would restart
at 0 in the middle of a trial.

Needs keras-tuner (`pip install "keras-qsgld[tuning]"`).
"""

import dataclasses
import warnings

import keras
import keras_tuner as kt

from experiments.defaults import DEFAULT_LEARNING_RATE
from experiments.models import build_model
from keras_qsgld import QSGLD, CompensationSchedule, ResolutionSchedule
from keras_qsgld.schedules import (
    DEFAULT_BASE,
    DEFAULT_ETA,
    DEFAULT_KAPPA,
    DEFAULT_WARMUP_FRACTION,
    MIN_BASE,
)
from keras_qsgld.validation import check_bool, check_real


@dataclasses.dataclass
class SearchSpace:
    """Bounds of the search (all inclusive); a lower bound equal to its upper bound fixes
    that hyperparameter.

    Attributes:
        eta_min, eta_max: bounds of `eta`, searched on a log scale. Default 2**10 .. 2**22
            (the authors' sweep is 2**10 .. 2**19; their default is 2**19).
        base_min, base_max: bounds of `base` (>= 1.01), linear. Default 1.25 .. 4 (authors: 2).
        kappa_min, kappa_max: bounds of `kappa`, log scale. Default 0.1 .. 20 (authors: 2).
        tau0_min, tau0_max: bounds of `tau0 / epochs`, linear. Default 0 .. 0.5 (paper: 0.2).
        tune_learning_rate: also search the learning rate (log scale). Default False.
        learning_rate: the fixed learning rate when it is not searched. Default 0.01
            (`DEFAULT_LEARNING_RATE["qsgld"]`, the paper's).
        lr_min, lr_max: bounds of the learning rate when searched. Default 1e-3 .. 0.3.
    """

    eta_min: float = 2.0**10
    eta_max: float = 2.0**22
    base_min: float = 1.25
    base_max: float = 4.0
    kappa_min: float = 0.1
    kappa_max: float = 20.0
    tau0_min: float = 0.0
    tau0_max: float = 0.5
    tune_learning_rate: bool = False
    learning_rate: float = DEFAULT_LEARNING_RATE["qsgld"]
    lr_min: float = 1e-3
    lr_max: float = 0.3

    def __post_init__(self):
        for name in (
            "eta_min",
            "eta_max",
            "kappa_min",
            "kappa_max",
            "learning_rate",
            "lr_min",
            "lr_max",
        ):
            check_real(
                name, getattr(self, name), minimum=0, exclusive_minimum=True
            )
        for name in ("base_min", "base_max"):
            check_real(
                name,
                getattr(self, name),
                minimum=MIN_BASE,
                description="a growth factor",
            )
        for name in ("tau0_min", "tau0_max"):
            check_real(
                name,
                getattr(self, name),
                minimum=0,
                maximum=1,
                description="a fraction",
            )
        check_bool("tune_learning_rate", self.tune_learning_rate)
        for low, high in (
            ("eta_min", "eta_max"),
            ("base_min", "base_max"),
            ("kappa_min", "kappa_max"),
            ("tau0_min", "tau0_max"),
            ("lr_min", "lr_max"),
        ):
            if not getattr(self, low) <= getattr(self, high):
                raise ValueError(
                    f"Argument `{low}` must be <= `{high}`. "
                    f"Received: {low}={getattr(self, low)!r}, {high}={getattr(self, high)!r}"
                )

    def declare(self, hp):
        """Declares the searched hyperparameters on `hp`; returns their values as a dict."""

        def declare_float(name, low, high, default, log=False):
            if low == high:
                return hp.Fixed(name, float(low))
            return hp.Float(
                name,
                float(low),
                float(high),
                sampling="log" if log else "linear",
                default=float(default) if low <= default <= high else None,
            )

        values = {
            "eta": declare_float(
                "eta", self.eta_min, self.eta_max, DEFAULT_ETA, log=True
            ),
            "base": declare_float(
                "base", self.base_min, self.base_max, DEFAULT_BASE
            ),
            "kappa": declare_float(
                "kappa", self.kappa_min, self.kappa_max, DEFAULT_KAPPA, log=True
            ),
            "tau0_fraction": declare_float(
                "tau0_fraction",
                self.tau0_min,
                self.tau0_max,
                DEFAULT_WARMUP_FRACTION,
            ),
            "learning_rate": float(self.learning_rate),
        }
        if self.tune_learning_rate:
            values["learning_rate"] = declare_float(
                "learning_rate",
                self.lr_min,
                self.lr_max,
                DEFAULT_LEARNING_RATE["qsgld"],
                log=True,
            )
        return values


def make_optimizer(
    values,
    steps_per_epoch,
    epochs,
    rounding="nearest",
    momentum=0.0,
    gate="logistic",
    jit_compile=False,
    seed=None,
    name="qsgld",
):
    """The `keras_qsgld.QSGLD` that a set of searched values stands for.

    Args:
        values: dict with `eta`, `base`, `kappa`, `tau0_fraction` and `learning_rate`
            (a KerasTuner `hp.values` dict works; extra keys are ignored).
        steps_per_epoch: optimizer steps per epoch of the training data.
        epochs: the epoch budget; `tau0 = tau0_fraction * epochs`.
        rounding, momentum: passed to `QSGLD`.
        gate: the compensation gate, `"logistic"` (paper) or `"tanh"` (authors' code).
        jit_compile: passed to `QSGLD` (XLA for eager `apply`; `fit` follows `compile`).
        seed: seed of the random rounding modes (not passed for "nearest" and "floor").
        name: the optimizer's name.
    """
    check_real(
        "epochs",
        epochs,
        minimum=0,
        exclusive_minimum=True,
        description="an epoch budget",
    )
    extra = {} if rounding in ("nearest", "floor") else {"seed": seed}
    return QSGLD(
        learning_rate=float(values["learning_rate"]),
        resolution=ResolutionSchedule(
            eta=float(values["eta"]),
            base=float(values["base"]),
            steps_per_epoch=steps_per_epoch,
        ),
        compensation=CompensationSchedule(
            kappa=float(values["kappa"]),
            tau0=float(values["tau0_fraction"]) * float(epochs),
            steps_per_epoch=steps_per_epoch,
            gate=gate,
        ),
        rounding=rounding,
        momentum=momentum,
        jit_compile=jit_compile,
        name=name,
        **extra,
    )


class QSGLDHyperModel(kt.HyperModel):
    """Searches QSGLD's `eta`, `base`, `kappa` and `tau0` (and optionally the learning rate).

    Args:
        input_shape, num_classes: of the data (from `experiments.datasets.load_dataset`).
        steps_per_epoch: optimizer steps per epoch of the training data.
        epochs: the epoch budget that `tau0_fraction` refers to (Hyperband: `max_epochs`).
        model: a name for `experiments.models.build_model`. Default `"cifar_resnet"`.
        model_kwargs: extra keyword arguments of `build_model` (e.g. `{"depth": 50}`).
        space: a `SearchSpace`. Default `SearchSpace()`.
        rounding, momentum, gate: fixed QSGLD settings (see `make_optimizer`).
        jit_compile: passed to `model.compile` (XLA on CPU is slower; default False).
        seed: seed of the model's initializers (same initial weights in every trial) and of
            the random rounding modes.

    Attributes:
        fit_log: one dict per `fit` call with `trial_id` (of the trial continued, Hyperband),
            `initial_epoch` and `start_iteration` (the optimizer step the fit started from).
    """

    def __init__(
        self,
        input_shape,
        num_classes,
        steps_per_epoch,
        epochs,
        model="cifar_resnet",
        model_kwargs=None,
        space=None,
        rounding="nearest",
        momentum=0.0,
        gate="logistic",
        jit_compile=False,
        seed=None,
        name="qsgld_hypermodel",
        tunable=True,
    ):
        super().__init__(name=name, tunable=tunable)
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        check_real(
            "steps_per_epoch",
            steps_per_epoch,
            minimum=0,
            exclusive_minimum=True,
        )
        check_real("epochs", epochs, minimum=0, exclusive_minimum=True)
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.model_name = model
        self.model_kwargs = dict(model_kwargs or {})
        self.space = space if space is not None else SearchSpace()
        self.rounding = rounding
        self.momentum = momentum
        self.gate = gate
        self.jit_compile = jit_compile
        self.seed = seed
        self.fit_log = []

    def optimizer_for(self, values):
        """The QSGLD for a dict of searched values (as `build` makes it)."""
        return make_optimizer(
            values,
            self.steps_per_epoch,
            self.epochs,
            rounding=self.rounding,
            momentum=self.momentum,
            gate=self.gate,
            seed=self.seed,
        )

    def build(self, hp):
        values = self.space.declare(hp)
        model = build_model(
            self.model_name,
            self.input_shape,
            self.num_classes,
            seed=self.seed,
            logits=True,
            **self.model_kwargs,
        )
        model.compile(
            optimizer=self.optimizer_for(values),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=self.jit_compile,
        )
        # Give the optimizer its variables now: Hyperband's `load_weights` then restores
        # `iterations`, and the schedules continue where the trial stopped.
        model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, *args, **kwargs):
        initial_epoch = int(kwargs.get("initial_epoch", 0) or 0)
        start = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        if initial_epoch > 0 and start == 0:
            warnings.warn(
                f"Trial continues at epoch {initial_epoch} but the optimizer starts at step 0: "
                "QSGLD's schedules restart. Was the optimizer built before the weights loaded?",
                stacklevel=2,
            )
        self.fit_log.append(
            dict(
                trial_id=hp.values.get("tuner/trial_id"),
                initial_epoch=initial_epoch,
                start_iteration=start,
            )
        )
        return model.fit(*args, **kwargs)


def searched_names(hyperparameters):
    """Names of the hyperparameters of `hyperparameters` that vary (not Fixed, not `tuner/...`)."""
    return [
        hp.name
        for hp in hyperparameters.space
        if not hp.name.startswith("tuner/")
        and not isinstance(hp, kt.engine.hyperparameters.Fixed)
    ]


def is_log_scale(hyperparameters, name):
    """True when `name` is sampled on a log scale."""
    for hp in hyperparameters.space:
        if hp.name == name:
            return getattr(hp, "sampling", "linear") == "log"
    return False
