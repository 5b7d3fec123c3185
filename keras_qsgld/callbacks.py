"""`QSGLDMonitor`: QSGLD's epoch clock, schedules and quantization noise in `fit`."""

import math
import warnings
import weakref

import keras
from keras import ops

from keras_qsgld.langevin import temperature_of
from keras_qsgld.optimizer import QuantizedOptimizer
from keras_qsgld.schedules import epoch_schedules
from keras_qsgld.validation import check_bool

# Optimizers whose untracked noise a monitor has reported: once per optimizer and process, not
# once per monitor (a script that makes a monitor for every `fit` would repeat it).
_REPORTED_UNTRACKED = weakref.WeakSet()

MONITOR_KEYS = (
    "qsgld_qp",
    "qsgld_gate",
    "qsgld_temperature",
    "qsgld_zero_fraction",
    "qsgld_noise_variance_ratio",
)


def unwrap_optimizer(optimizer):
    """The optimizer inside wrappers such as `LossScaleOptimizer` (`.inner_optimizer`)."""
    seen = 0
    while hasattr(optimizer, "inner_optimizer") and seen < 10:
        optimizer = optimizer.inner_optimizer
        seen += 1
    return optimizer


def _scalar(x):
    return float(ops.convert_to_numpy(x))


@keras.saving.register_keras_serializable(package="keras_qsgld")
class QSGLDMonitor(keras.callbacks.Callback):
    """Keeps QSGLD's epoch clock right in `fit`, and adds its state to each epoch's `logs`.

    **The epoch clock.** `ResolutionSchedule` and `CompensationSchedule` count time in
    epochs of `steps_per_epoch` optimizer updates. At the start of `fit` the monitor
    compares that with the updates `fit` will run per epoch: the batches per epoch (after
    `validation_split`, or `fit(steps_per_epoch=...)`), divided by the optimizer's
    `gradient_accumulation_steps` (with accumulation `iterations` counts updates, not
    batches). A schedule left at `steps_per_epoch=None` gets that number; one set by hand
    to another number gets a warning naming both numbers (once per schedule). Where `fit`
    cannot know the batches per epoch (a dataset of unknown length) it counts them during
    the first epoch and warns then; a schedule at None raises, since its first epoch would
    be wrong.

    **The logs.** At the end of every epoch, with `k = optimizer.schedule_step` (the step
    the next update will evaluate its schedules at) and `lr` the current learning rate:

    - `qsgld_qp`: the resolution `Qp(k)`;
    - `qsgld_gate`: the compensation gate `s(k)`, 0 when the optimizer has no compensation;
    - `qsgld_temperature` (QSGLD; QAdam, whose steps are preconditioned per coordinate, has
      no single temperature): the effective Langevin temperature `Qp**-2 / (24 * lr_eff)`
      (`lr_eff = lr / (1 - momentum)` for QSGLD; the white-noise hypothesis: uniform rounding
      error of variance `Qp**-2 / 12` per step equals SGLD's `2 * lr_eff * T`); 0 when
      `lr == 0`, since no noise is added then;
    - `qsgld_zero_fraction`: the share of quantized increments that were exactly 0 during
      the epoch (weights that did not move); steps applied unrounded (at a learning rate
      of 0) are not counted, and an epoch without a rounded step logs NaN;
    - `qsgld_noise_variance_ratio`: the measured variance of the rounding error in grid
      units over 1/12, over the epoch (1 under the white-noise hypothesis; it drops when
      most increments round to 0, since the error is then `-y`, not uniform).

    The last two come from `optimizer.noise_statistics()`, which needs an optimizer made
    with `track_noise=True`; without it only the first three are logged (with one
    warning, unless `warn_untracked=False`). The monitor resets the statistics at the
    start of training and of each epoch.

    Put it before `CSVLogger`, `TensorBoard` and any callback that reads these keys in the
    callbacks list: Keras calls callbacks in list order, so one placed earlier sees the
    logs before the monitor has added its values. Wrappers such as
    `keras.optimizers.LossScaleOptimizer` are looked through (`inner_optimizer`). With an
    optimizer that is not QSGLD or QAdam it warns once and does nothing.

    Args:
        prefix: string, the prefix of the log keys. Default `"qsgld_"`.
        warn_untracked: bool, warn once when the optimizer does not track the noise.
            Default True.

    Raises:
        ValueError: at the start of `fit`, when a schedule's `steps_per_epoch` is None and
            `fit` does not know the number of batches per epoch.
    """

    def __init__(self, prefix="qsgld_", warn_untracked=True):
        super().__init__()
        if not isinstance(prefix, str):
            raise ValueError(
                f"Argument `prefix` must be a string. Received: prefix={prefix!r}"
            )
        self.prefix = prefix
        self.warn_untracked = check_bool("warn_untracked", warn_untracked)
        self._warned = set()
        self._batches = 0
        self._first_epoch = False

    def get_config(self):
        return {"prefix": self.prefix, "warn_untracked": self.warn_untracked}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _quantized_optimizer(self):
        optimizer = unwrap_optimizer(getattr(self.model, "optimizer", None))
        if not isinstance(optimizer, QuantizedOptimizer):
            self._warn_once(
                "type",
                f"QSGLDMonitor: the model's optimizer ({type(optimizer).__name__}) is not a "
                "QSGLD or QAdam optimizer; nothing is logged.",
            )
            return None
        return optimizer

    # -- the epoch clock -------------------------------------------------------------------------
    def _updates_per_epoch(self, optimizer, batches):
        return batches / (optimizer.gradient_accumulation_steps or 1)

    def _mismatch(self, optimizer, schedule, batches, known_length=True):
        updates = self._updates_per_epoch(optimizer, batches)
        # A figure rounded to 6 digits (10 / 3 as 3.33333) is the right clock.
        if math.isclose(schedule.steps_per_epoch, updates, rel_tol=1e-5):
            return
        accumulation = optimizer.gradient_accumulation_steps
        per = f"{batches} batches" + (
            f" / gradient_accumulation_steps={accumulation}"
            if accumulation
            else ""
        )
        # The fix, written exactly: 10/3 rather than 3.33333.
        exact = (
            f"{updates:g}"
            if float(updates).is_integer()
            else f"{batches}/{accumulation}"
        )
        if known_length:
            other = "or leave it None and QSGLDMonitor sets it"
        else:
            other = (
                "or give the data a known length (tf.data.experimental.assert_cardinality, "
                "or fit(steps_per_epoch=...)) so that QSGLDMonitor sets it"
            )
        self._warn_once(
            ("clock", id(schedule)),
            f"QSGLDMonitor: {type(schedule).__name__} has steps_per_epoch="
            f"{schedule.steps_per_epoch:g}, but fit runs {updates:g} optimizer updates per epoch "
            f"({per}). Its epochs are {schedule.steps_per_epoch / updates:.3g}x as long as fit's, "
            "so tau0 and the resolution breakpoints fall at the wrong epochs. Pass "
            f"steps_per_epoch={exact}, {other}.",
        )

    def _set_epoch_clock(self, optimizer):
        batches = (self.params or {}).get("steps")
        retrace = False
        for schedule in epoch_schedules(optimizer):
            automatic = (
                schedule.steps_per_epoch is None
                or schedule._steps_per_epoch_from_fit
            )
            if batches is None and schedule.steps_per_epoch is not None:
                # Data of unknown length: keep the clock (set by hand, or by this monitor
                # in an earlier fit) and check it against the first epoch's batches.
                continue
            if not automatic:
                self._mismatch(optimizer, schedule, batches)
                continue
            if batches is None:
                raise ValueError(
                    f"QSGLDMonitor: {type(schedule).__name__} has steps_per_epoch=None, and fit "
                    "does not know how many batches an epoch has (a dataset of unknown length). "
                    "Pass steps_per_epoch=<updates per epoch> to the schedule, or give the data a "
                    "known length (tf.data.experimental.assert_cardinality, or "
                    "fit(steps_per_epoch=...))."
                )
            updates = self._updates_per_epoch(optimizer, batches)
            if schedule.steps_per_epoch != updates:
                retrace = retrace or schedule.steps_per_epoch is not None
                schedule.steps_per_epoch = updates
            schedule._steps_per_epoch_from_fit = True
        # A train function traced with other schedule values (a clock set here, or a value
        # changed by hand since) would keep them.
        traced = optimizer.__dict__.get("_traced_schedules_key")
        if retrace or (
            traced is not None and traced != optimizer.schedules_key()
        ):
            self.model.make_train_function(force=True)

    # -- callback hooks ---------------------------------------------------------------------------
    def _reset_noise(self, optimizer):
        if optimizer.track_noise and optimizer.built:
            optimizer.noise_statistics(reset=True)

    def on_train_begin(self, logs=None):
        optimizer = self._quantized_optimizer()
        if optimizer is None:
            return
        self._set_epoch_clock(optimizer)
        self._first_epoch = True
        self._reset_noise(optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self._batches = 0
        optimizer = self._quantized_optimizer()
        if optimizer is not None:
            self._reset_noise(optimizer)

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1

    def compute(self):
        """The monitor's values now, as a dict of floats keyed by the log names."""
        optimizer = self._quantized_optimizer()
        if optimizer is None:
            return {}
        step = optimizer.schedule_step
        lr = _scalar(optimizer.learning_rate)
        qp = _scalar(optimizer.resolution_at(step, lr))
        gate = optimizer.gate_at(step)
        gate = 0.0 if gate is None else _scalar(gate)
        values = {"qp": qp, "gate": gate}
        if (
            optimizer.supports_temperature
        ):  # QAdam's preconditioned step has none
            lr_eff = optimizer.effective_learning_rate(lr)
            values["temperature"] = temperature_of(qp, lr_eff)
        if optimizer.track_noise:
            stats = optimizer.noise_statistics(reset=False)
            values["zero_fraction"] = stats["zero_fraction"]
            values["noise_variance_ratio"] = stats["variance_ratio"]
        elif self.warn_untracked and optimizer not in _REPORTED_UNTRACKED:
            _REPORTED_UNTRACKED.add(optimizer)
            self._warn_once(
                "noise",
                "QSGLDMonitor: the optimizer was made with track_noise=False, so "
                f"{self.prefix}zero_fraction and {self.prefix}noise_variance_ratio are not "
                "logged. Pass track_noise=True to the optimizer to log them (turning it on "
                "or off keeps a saved run's state), or QSGLDMonitor(warn_untracked=False).",
            )
        return {self.prefix + key: value for key, value in values.items()}

    def on_epoch_end(self, epoch, logs=None):
        optimizer = self._quantized_optimizer()
        if optimizer is not None and self._first_epoch:
            self._first_epoch = False
            if (self.params or {}).get(
                "steps"
            ) is None:  # only now is the length known
                for schedule in epoch_schedules(optimizer):
                    self._mismatch(
                        optimizer, schedule, self._batches, known_length=False
                    )
        if logs is not None:
            logs.update(self.compute())
