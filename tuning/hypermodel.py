"""A KerasTuner `HyperModel` that searches QSGLD's own hyperparameters.

The searched hyperparameters (KerasTuner names in quotes):

```
"eta"            scale of the resolution Qp(t) = eta * base ** floor(log_base(ln(t + 2)))  (log scale)
"base"           growth factor b > 1 between resolutions
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
"""

import dataclasses
import warnings

import keras
import keras_tuner as kt

import keras_qsgld

# The hyperparameter names KerasTuner records, in the order they are declared.
SEARCHED = ("eta", "base", "kappa", "tau0_fraction", "learning_rate")
LOG_SCALE = ("eta", "kappa", "learning_rate")


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"Argument `{name}` must be a positive number. Received: {name}={value!r}")


@dataclasses.dataclass
class SearchSpace:
    """Bounds of the search (all inclusive).

    Attributes:
        eta_min, eta_max: bounds of `eta`, searched on a log scale. Default 2**10 .. 2**22
            (the authors' sweep is 2**10 .. 2**19; their default is 2**19).
        base_min, base_max: bounds of `base` (> 1), linear. Default 1.25 .. 4 (authors: 2).
        kappa_min, kappa_max: bounds of `kappa`, log scale. Default 0.1 .. 20 (authors: 2).
        tau0_min, tau0_max: bounds of `tau0 / epochs`, linear. Default 0 .. 0.5 (paper: 0.2).
        tune_learning_rate: also search the learning rate (log scale). Default False.
        learning_rate: the fixed learning rate when it is not searched. Default 0.01 (paper).
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
    learning_rate: float = 0.01
    lr_min: float = 1e-3
    lr_max: float = 0.3

    def __post_init__(self):
        for name in ("eta_min", "eta_max", "kappa_min", "kappa_max", "learning_rate", "lr_min", "lr_max"):
            _positive(name, getattr(self, name))
        if not self.base_min > 1:
            raise ValueError(f"Argument `base_min` must be > 1. Received: base_min={self.base_min!r}")
        if not 0 <= self.tau0_min <= 1 or not 0 <= self.tau0_max <= 1:
            raise ValueError(
                "Arguments `tau0_min` and `tau0_max` must be fractions in [0, 1]. "
                f"Received: tau0_min={self.tau0_min!r}, tau0_max={self.tau0_max!r}"
            )
        for low, high in (("eta_min", "eta_max"), ("base_min", "base_max"),
                          ("kappa_min", "kappa_max"), ("tau0_min", "tau0_max"), ("lr_min", "lr_max")):
            if not getattr(self, low) <= getattr(self, high):
                raise ValueError(
                    f"Argument `{low}` must be <= `{high}`. "
                    f"Received: {low}={getattr(self, low)!r}, {high}={getattr(self, high)!r}"
                )

    def declare(self, hp):
        """Declares the searched hyperparameters on `hp`; returns their values as a dict."""

        def flt(name, low, high, log=False, default=None):
            if low == high:
                return hp.Fixed(name, float(low))
            return hp.Float(name, float(low), float(high), sampling="log" if log else "linear",
                            default=default)

        def clip(value, low, high):
            return value if low <= value <= high else None

        values = {
            "eta": flt("eta", self.eta_min, self.eta_max, log=True,
                       default=clip(2.0**19, self.eta_min, self.eta_max)),
            "base": flt("base", self.base_min, self.base_max,
                        default=clip(2.0, self.base_min, self.base_max)),
            "kappa": flt("kappa", self.kappa_min, self.kappa_max, log=True,
                         default=clip(2.0, self.kappa_min, self.kappa_max)),
            "tau0_fraction": flt("tau0_fraction", self.tau0_min, self.tau0_max,
                                 default=clip(0.2, self.tau0_min, self.tau0_max)),
        }
        if self.tune_learning_rate:
            values["learning_rate"] = flt("learning_rate", self.lr_min, self.lr_max, log=True,
                                          default=clip(0.01, self.lr_min, self.lr_max))
        else:
            values["learning_rate"] = float(self.learning_rate)
        return values


def make_optimizer(values, steps_per_epoch, epochs, rounding="nearest", momentum=0.0,
                   gate="logistic", jit_compile=False, seed=None, name="qsgld"):
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
    _positive("epochs", epochs)
    extra = {} if rounding in ("nearest", "floor") else {"seed": seed}
    return keras_qsgld.QSGLD(
        learning_rate=float(values["learning_rate"]),
        resolution=keras_qsgld.ResolutionSchedule(
            eta=float(values["eta"]), base=float(values["base"]), steps_per_epoch=steps_per_epoch
        ),
        compensation=keras_qsgld.CompensationSchedule(
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


def _outputs_probabilities(model):
    """True when the model's last layer applies a softmax (so the loss takes probabilities)."""
    last = model.layers[-1] if model.layers else None
    activation = getattr(last, "activation", None)
    if activation is None:
        return isinstance(last, keras.layers.Softmax)
    return getattr(activation, "__name__", "") == "softmax"


class QSGLDHyperModel(kt.HyperModel):
    """Searches QSGLD's `eta`, `base`, `kappa` and `tau0` (and optionally the learning rate).

    Args:
        input_shape, num_classes: of the data (from `keras_qsgld.experiments.datasets.load_dataset`).
        steps_per_epoch: optimizer steps per epoch of the training data.
        epochs: the epoch budget that `tau0_fraction` refers to (Hyperband: `max_epochs`).
        model: a name for `keras_qsgld.experiments.models.build_model`. Default `"cifar_resnet"`.
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

    def __init__(self, input_shape, num_classes, steps_per_epoch, epochs, model="cifar_resnet",
                 model_kwargs=None, space=None, rounding="nearest", momentum=0.0, gate="logistic",
                 jit_compile=False, seed=None, name="qsgld_hypermodel", tunable=True):
        super().__init__(name=name, tunable=tunable)
        _positive("steps_per_epoch", steps_per_epoch)
        _positive("epochs", epochs)
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
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
        return make_optimizer(values, self.steps_per_epoch, self.epochs, rounding=self.rounding,
                              momentum=self.momentum, gate=self.gate, seed=self.seed)

    def build(self, hp):
        from keras_qsgld.experiments.models import build_model

        values = self.space.declare(hp)
        model = build_model(self.model_name, self.input_shape, self.num_classes, seed=self.seed,
                            logits=True, **self.model_kwargs)
        model.compile(
            optimizer=self.optimizer_for(values),
            loss=keras.losses.SparseCategoricalCrossentropy(
                from_logits=not _outputs_probabilities(model)
            ),
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
        self.fit_log.append(dict(trial_id=hp.values.get("tuner/trial_id"),
                                 initial_epoch=initial_epoch, start_iteration=start))
        return model.fit(*args, **kwargs)


def searched_names(hyperparameters):
    """Names of the hyperparameters of `hyperparameters` that vary (not Fixed, not `tuner/...`)."""
    return [
        hp.name for hp in hyperparameters.space
        if not hp.name.startswith("tuner/") and not isinstance(hp, kt.engine.hyperparameters.Fixed)
    ]


def is_log_scale(hyperparameters, name):
    """True when `name` is sampled on a log scale."""
    for hp in hyperparameters.space:
        if hp.name == name:
            return getattr(hp, "sampling", "linear") == "log"
    return False


__all__ = ["SEARCHED", "SearchSpace", "QSGLDHyperModel", "make_optimizer", "searched_names",
           "is_log_scale"]

