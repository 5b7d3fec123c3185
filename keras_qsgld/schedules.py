"""What QSGLD's resolution `Qp` and compensation gate `s` are at each optimizer step.

- `ResolutionSchedule`: the paper's increasing resolution `Qp(t) = eta * b**floor(log_b(ln(t + 2)))`.
- `CompensationSchedule`: the gate `s(t)` of the compensation term, which switches off at `tau0`.
- (`Temperature`, a fixed Langevin temperature in place of a resolution, lives in
  `keras_qsgld.langevin`; it is importable from here too.)
- `Constant`: a fixed value (a float passed as `resolution` or `compensation` becomes one).

The epoch schedules measure time in epochs, `t = step / steps_per_epoch`, as the paper and the
authors' code do. `steps_per_epoch` is the number of optimizer updates per epoch: the batches
per epoch, divided by `gradient_accumulation_steps` when that is set. Left at None it is
filled in by `keras_qsgld.QSGLDMonitor` from the batches `fit` runs per epoch.

`get_resolution` and `get_compensation` turn what a user passes into one of these objects:
the one place where a constant and a schedule are told apart.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_qsgld.validation import (
    FLOAT32_MAX,
    FLOAT32_MIN_NORMAL,
    check_choice,
    check_real,
)

DEFAULT_ETA = 2.0**19  # the authors' resolution scale
DEFAULT_BASE = 2.0
DEFAULT_KAPPA = 2.0
DEFAULT_TAU0 = 10.0  # epochs: DEFAULT_WARMUP_FRACTION of a 50-epoch run
DEFAULT_WARMUP_FRACTION = (
    0.2  # the paper's tau0 = 0.2 x the epoch budget (40 of 200 epochs)
)
GATES = ("logistic", "tanh")

# Resolution exponents are tabulated up to this many epochs (far beyond any int64 step count).
_MAX_EPOCHS = 2.0**64
# Closer to 1, Qp would change at thousands of breakpoints (ln(64) / ln(base) exponents up
# to _MAX_EPOCHS; 418 at 1.01), each a threshold the schedule tabulates and compares.
MIN_BASE = 1.01
_BASE_DESCRIPTION = "a growth factor (closer to 1, the resolution would change at thousands of breakpoints)"


def widest_float():
    """float64, or float32 on JAX without x64 mode (which computes float64 in float32 anyway,
    with a warning each time it is asked for)."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return "float32"
    return "float64"


def check_steps_per_epoch(steps_per_epoch, name="steps_per_epoch"):
    """None (set later by `QSGLDMonitor`) or a finite real number > 0."""
    if steps_per_epoch is None:
        return None
    return check_real(
        name,
        steps_per_epoch,
        minimum=0,
        exclusive_minimum=True,
        description="a number of updates",
    )


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Base of the schedules that count time in epochs of `steps_per_epoch` updates.

    They subclass `LearningRateSchedule` only for its protocol (`__call__(step)`,
    `get_config`, `from_config`); their values are not learning rates.
    """

    def __init__(self, steps_per_epoch, name):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.name = name

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        from_fit = config.pop("steps_per_epoch_from_fit", False)
        schedule = cls(**config)
        schedule._steps_per_epoch_from_fit = bool(from_fit)
        return schedule

    def _clock_config(self):
        """`steps_per_epoch`, and whether `QSGLDMonitor` set it from the data (then a later
        `fit`, also after saving and loading, may set it again without a warning)."""
        config = {"steps_per_epoch": self.steps_per_epoch}
        if self._steps_per_epoch_from_fit:
            config["steps_per_epoch_from_fit"] = True
        return config

    @property
    def steps_per_epoch(self):
        """Optimizer updates per epoch; None until given or set by `QSGLDMonitor`."""
        return self._steps_per_epoch

    @steps_per_epoch.setter
    def steps_per_epoch(self, value):
        self._steps_per_epoch = check_steps_per_epoch(value)
        self._steps_per_epoch_from_fit = (
            False  # QSGLDMonitor marks its own settings
        )
        self._steps_per_epoch_changed()

    def _steps_per_epoch_changed(self):
        """Hook for subclasses that cache values derived from `steps_per_epoch`."""

    def _require_steps_per_epoch(self):
        if self._steps_per_epoch is None:
            raise ValueError(
                f"{type(self).__name__} counts time in epochs, but its `steps_per_epoch` is not "
                "set. Pass steps_per_epoch=<optimizer updates per epoch> (batches per epoch, "
                "divided by gradient_accumulation_steps), or add keras_qsgld.QSGLDMonitor() to "
                "the callbacks of `fit`, which sets it from the data. Received: "
                "steps_per_epoch=None"
            )
        return self._steps_per_epoch

    def epochs(self, step):
        """`t = step / steps_per_epoch`, in float64 (float32 on JAX without x64 mode)."""
        return ops.divide(
            ops.cast(step, widest_float()), self._require_steps_per_epoch()
        )


@keras.saving.register_keras_serializable(package="keras_qsgld")
class ResolutionSchedule(EpochSchedule):
    """The increasing quantization resolution `Qp(t)` of QSGLD.

    ```python
    t = step / steps_per_epoch                     # time in epochs
    Qp(t) = eta * base ** floor(log_base(ln(t + 2)))
    ```

    Increments are quantized on the grid `1 / Qp`. Under the white-noise hypothesis the
    rounding error is uniform with variance `Qp**-2 / 12` per coordinate, so a growing `Qp`
    anneals the Langevin temperature. Since `base ** floor(log_base(y)) <= y`,
    `1 / Qp(t) >= 1 / (eta * ln(t + 2))`: the logarithmic cooling bound of simulated
    annealing. `Qp` changes at the breakpoints `t = e ** (base ** p) - 2`; with the defaults
    it is `2**18` until epoch 0.718, `2**19` until 5.39, `2**20` until 52.6, then `2**21`.

    The value is exact on every backend: the steps at which the exponent changes and the
    float32 values `eta * base**p` are computed once in float64 NumPy (as the formula in
    float64 gives them), and each call only counts the breakpoints passed.

    Args:
        eta: real number > 0, the scale `eta`. Default `2**19`, the authors' value. Every
            `Qp` the schedule reaches must be a normal, finite float32.
        base: real number >= 1.01 (`MIN_BASE`), the growth factor `b` between resolutions. Default 2.
        steps_per_epoch: real number > 0 of optimizer updates per epoch (batches per epoch,
            divided by `gradient_accumulation_steps` when set), or None (default): set by
            `QSGLDMonitor` from the data that `fit` runs; calling the schedule while it is
            None raises.

    Returns (when called with the step): `Qp` as a float32 scalar.

    Raises:
        ValueError: for an argument out of its range, or a `Qp` outside float32's range.

    References:
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), Stochastic Gradient
          Langevin Dynamics Based on Quantization with Increasing Resolution.
    """

    def __init__(
        self,
        eta=DEFAULT_ETA,
        base=DEFAULT_BASE,
        steps_per_epoch=None,
        name="ResolutionSchedule",
    ):
        self.eta = check_real(
            "eta", eta, minimum=0, exclusive_minimum=True, description="a scale"
        )
        self.base = check_real(
            "base", base, minimum=MIN_BASE, description=_BASE_DESCRIPTION
        )
        low, high = self._exponent_range()
        for p in (low, high):
            qp = self.eta * self.base**p
            if not FLOAT32_MIN_NORMAL <= qp <= FLOAT32_MAX:
                raise ValueError(
                    f"Argument `eta` gives Qp = eta * base**{p} = {qp:g}, outside float32's normal "
                    f"range [{FLOAT32_MIN_NORMAL:g}, {FLOAT32_MAX:g}] where the grid 1 / Qp is "
                    f"representable. Received: eta={eta!r}, base={base!r}"
                )
        super().__init__(steps_per_epoch, name)

    def _exponent(self, epochs):
        """`floor(log_base(ln(t + 2)))` in float64 NumPy, as the formula reads."""
        return int(
            np.floor(
                np.log(np.log(np.float64(epochs) + 2.0)) / np.log(self.base)
            )
        )

    def _exponent_range(self):
        return self._exponent(0.0), self._exponent(_MAX_EPOCHS)

    def _steps_per_epoch_changed(self):
        # Built here, not at the first call: a compiled update that built it while traced
        # would find the schedule changed at its second call, and compile again.
        self._table = None
        if self.steps_per_epoch is not None:
            self._table = self._build_exponent_table()

    def _exponent_table(self):
        """`(thresholds, qp)`: the first step of each exponent after the first, and the
        float32 `Qp` of each exponent. `Qp(step) = qp[number of thresholds <= step]`."""
        if self._table is None:
            self._require_steps_per_epoch()
        return self._table

    def _build_exponent_table(self):
        """The table of `_exponent_table`, from `steps_per_epoch` (not None)."""
        spe = self.steps_per_epoch
        low, high = self._exponent_range()
        thresholds = []
        for p in range(low + 1, high + 1):
            start = (
                spe * (math.exp(self.base**p) - 2.0)
                if self.base**p < 700
                else math.inf
            )
            if start >= 2.0**63:  # beyond any int64 step count
                break
            step = max(0, math.floor(start) - 2)
            while (
                self._exponent(np.float64(step) / spe) < p
            ):  # the float64 formula decides
                step += 1
            thresholds.append(step)
        qp = [
            self.eta * self.base**p
            for p in range(low, low + len(thresholds) + 1)
        ]
        # Python numbers, not NumPy arrays: constants that torch.compile traces without a
        # graph break (it does not follow NumPy arrays into a tensor conversion).
        return (
            tuple(thresholds),
            tuple(float(np.float32(v)) for v in qp),
        )

    def exponent(self, step):
        """`p(t) = floor(log_base(ln(t + 2)))` at `step`, as an int32 scalar."""
        thresholds, _ = self._exponent_table()
        low = self._exponent(0.0)
        return ops.add(_count_passed(step, thresholds), low)

    def __call__(self, step):
        with keras.name_scope(self.name):
            thresholds, qp = self._exponent_table()
            return ops.take(
                ops.convert_to_tensor(qp, "float32"),
                _count_passed(step, thresholds),
            )

    def breakpoints(self, max_epoch):
        """Epochs `e ** (base ** p) - 2` in `(0, max_epoch]` where `Qp` changes (for plots)."""
        p = self._exponent(0.0) + 1
        points = []
        while (t := math.exp(self.base**p) - 2.0) <= max_epoch:
            points.append(t)
            p += 1
        return points

    def get_config(self):
        return {
            "eta": self.eta,
            "base": self.base,
            **self._clock_config(),
            "name": self.name,
        }


def _count_passed(step, thresholds):
    """How many of the sorted integer `thresholds` are <= `step`, as int32."""
    step = ops.convert_to_tensor(step)
    dtype = keras.backend.standardize_dtype(step.dtype)
    if "int" in dtype:
        # Thresholds beyond the step's integer type (int32 on JAX and torch) are never reached.
        top = np.iinfo(dtype).max
        thresholds = tuple(t for t in thresholds if t <= top)
    if not thresholds:
        return ops.convert_to_tensor(0, "int32")
    passed = ops.greater_equal(
        step, ops.convert_to_tensor(list(thresholds), dtype=dtype)
    )
    return ops.sum(ops.cast(passed, "int32"))


@keras.saving.register_keras_serializable(package="keras_qsgld")
class CompensationSchedule(EpochSchedule):
    """The gate `s(t)` of QSGLD's compensation term, which switches off around `tau0`.

    ```python
    t = step / steps_per_epoch                     # time in epochs
    s(t) = sigmoid(-kappa * (t - tau0))            # gate="logistic", the paper
    s(t) = (tanh(-kappa * (t - tau0)) + 1) / 2     # gate="tanh", the authors' code
    ```

    The optimizer adds `r = s(t) * lr * h / ||h||` to the step `h` before quantizing: a
    normalized-gradient step of length `s * lr` per tensor that dominates early training
    and is gone about `1 / kappa` epochs after `tau0`. Note that the tanh form equals
    `sigmoid(-2 * kappa * (t - tau0))`: it switches twice as fast. The gate is computed in
    float64 and returned in float32. On JAX without x64 mode it is computed in float32:
    within 3e-7 of the float64 value (the tanh form, `(tanh(x) + 1) / 2`, then loses gates
    below about 1e-7 to cancellation).

    Args:
        kappa: real number >= 0, the slope per epoch. Default 2 (the authors' value).
        tau0: finite real number, the switch-off time in epochs. The paper uses 0.2 times
            the epoch budget (40 of 200 epochs); the default 10 is that fraction of a
            50-epoch run. `CompensationSchedule.from_budget(epochs)` sets it from your budget.
        steps_per_epoch: real number > 0 of optimizer updates per epoch, or None (default):
            set by `QSGLDMonitor` from the data that `fit` runs (see `ResolutionSchedule`).
        gate: `"logistic"` (default, the paper) or `"tanh"` (the authors' code).

    Returns (when called with the step): `s` in [0, 1] as a float32 scalar.

    Raises:
        ValueError: for an argument out of its range.

    References:
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), Stochastic Gradient
          Langevin Dynamics Based on Quantization with Increasing Resolution.
    """

    def __init__(
        self,
        kappa=DEFAULT_KAPPA,
        tau0=DEFAULT_TAU0,
        steps_per_epoch=None,
        gate="logistic",
        name="CompensationSchedule",
    ):
        self.kappa = check_real(
            "kappa", kappa, minimum=0, description="a slope per epoch"
        )
        self.tau0 = check_real("tau0", tau0, description="a time in epochs")
        self.gate = check_choice("gate", gate, GATES)
        super().__init__(steps_per_epoch, name)

    @classmethod
    def from_budget(
        cls, epochs, warmup_fraction=DEFAULT_WARMUP_FRACTION, **kwargs
    ):
        """The paper's choice `tau0 = warmup_fraction * epochs` (0.2 in the paper).

        Args:
            epochs: real number > 0, the training budget in epochs.
            warmup_fraction: real number in [0, 1], the share of the budget during which
                the compensation is on. Default 0.2.
            **kwargs: the other arguments of `CompensationSchedule`.
        """
        epochs = check_real(
            "epochs",
            epochs,
            minimum=0,
            exclusive_minimum=True,
            description="an epoch budget",
        )
        warmup_fraction = check_real(
            "warmup_fraction",
            warmup_fraction,
            minimum=0,
            maximum=1,
            description="a fraction",
        )
        return cls(tau0=warmup_fraction * epochs, **kwargs)

    def __call__(self, step):
        with keras.name_scope(self.name):
            x = ops.multiply(
                -self.kappa, ops.subtract(self.epochs(step), self.tau0)
            )
            if self.gate == "tanh":
                s = ops.divide(ops.add(_tanh(x), 1.0), 2.0)
            else:
                s = ops.sigmoid(x)
            return ops.cast(s, "float32")

    def get_config(self):
        return {
            "kappa": self.kappa,
            "tau0": self.tau0,
            **self._clock_config(),
            "gate": self.gate,
            "name": self.name,
        }


def _tanh(x):
    """`ops.tanh` in the dtype of `x` (Keras 3.15 on JAX computes it in float32 for float64)."""
    t = ops.tanh(x)
    if keras.backend.standardize_dtype(
        t.dtype
    ) == keras.backend.standardize_dtype(x.dtype):
        return t
    e = ops.exp(ops.multiply(-2.0, ops.abs(x)))
    return ops.multiply(
        ops.sign(x), ops.divide(ops.subtract(1.0, e), ops.add(1.0, e))
    )


@keras.saving.register_keras_serializable(package="keras_qsgld")
class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """A value that does not change: a fixed `Qp`, or a fixed compensation gate.

    `QSGLD(resolution=4096.0)` and `QSGLD(compensation=0.5)` store a `Constant`.

    Args:
        value: the value, a finite real number.

    Returns (when called with the step): the value as a float32 scalar.
    """

    def __init__(self, value, name="Constant"):
        super().__init__()
        self.value = check_real("value", value, description="a constant")
        self.name = name

    def __call__(self, step):
        return ops.convert_to_tensor(self.value, "float32")

    def get_config(self):
        return {"value": self.value, "name": self.name}


def get_resolution(resolution):
    """What `resolution=` becomes: None gives `ResolutionSchedule()`; a real number a `Constant`
    `Qp` (finite, normal in float32); schedules, `Temperature` and callables of the step pass."""
    from keras_qsgld.langevin import Temperature  # langevin imports this module

    if resolution is None:
        return ResolutionSchedule()
    if isinstance(resolution, Temperature) or callable(resolution):
        return resolution
    qp = check_real(
        "resolution",
        resolution,
        minimum=FLOAT32_MIN_NORMAL,
        maximum=FLOAT32_MAX,
        description="a ResolutionSchedule, a Temperature, a callable of the step, or a fixed Qp",
    )
    return Constant(qp, name="resolution")


def get_compensation(compensation):
    """What `compensation=` becomes: None stays None (no compensation term); a real number a
    `Constant` gate in [0, 1]; `CompensationSchedule`s and callables of the step pass."""
    if compensation is None or callable(compensation):
        return compensation
    gate = check_real(
        "compensation",
        compensation,
        minimum=0,
        maximum=1,
        description="a CompensationSchedule, a callable of the step, None, or a constant gate",
    )
    return Constant(gate, name="compensation")


def epoch_schedules(optimizer):
    """The optimizer's schedules that count in epochs (those `QSGLDMonitor` checks)."""
    return [
        s
        for s in (
            getattr(optimizer, "resolution", None),
            getattr(optimizer, "compensation", None),
        )
        if isinstance(s, EpochSchedule)
    ]


def __getattr__(name):
    # `keras_qsgld.schedules.Temperature`, where it lived before `keras_qsgld.langevin`.
    if name == "Temperature":
        from keras_qsgld.langevin import Temperature

        return Temperature
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
