"""`QSGLDMonitor`: QSGLD's schedules and quantization noise in the epoch logs."""

import math
import warnings

import keras
from keras import ops

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
    """Adds QSGLD's state to each epoch's `logs` (so the progress bar, `CSVLogger`,
    `TensorBoard` and `History` show it).

    At the end of every epoch, with `k = optimizer.iterations` (the step the next update
    will use) and `lr` the learning rate at `k` (a schedule is evaluated):

    - `qsgld_qp`: the resolution `Qp(k)`;
    - `qsgld_gate`: the compensation gate `s(k)`, 0 when the optimizer has no compensation;
    - `qsgld_temperature`: the effective Langevin temperature `Qp**-2 / (24 * lr)` (the
      white-noise hypothesis: uniform rounding error of variance `Qp**-2 / 12` per step
      equals SGLD's `2 * lr * T`); `inf` when `lr == 0`;
    - `qsgld_zero_fraction`: the share of quantized increments that were exactly 0 during
      the epoch (weights that did not move);
    - `qsgld_noise_variance_ratio`: the measured variance of the rounding error in grid
      units over 1/12, over the epoch (1 under the white-noise hypothesis; it drops when
      most increments round to 0, since the error is then `-y`, not uniform).

    The last two come from `optimizer.noise_statistics()`, which needs an optimizer built
    with `track_noise=True`; without it only the first three are logged (with one
    warning). The monitor resets the statistics at the start of training and of each
    epoch. Its own cost is reading a few scalars per epoch; `track_noise=True` adds four
    reductions per variable to each update.

    Put it before `CSVLogger` and `TensorBoard` in the callbacks list: callbacks see the
    logs in list order. Wrappers such as `keras.optimizers.LossScaleOptimizer` are looked
    through (`inner_optimizer`). With an optimizer that is not QSGLD or QAdam it warns once
    and logs nothing.

    Args:
        prefix: the prefix of the log keys. Default `"qsgld_"`.
    """

    def __init__(self, prefix="qsgld_"):
        super().__init__()
        if not isinstance(prefix, str):
            raise ValueError(f"Argument `prefix` must be a string. Received: prefix={prefix!r}")
        self.prefix = prefix
        self._warned = set()

    def get_config(self):
        return {"prefix": self.prefix}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _quantized_optimizer(self):
        from keras_qsgld._base import QuantizedOptimizer

        optimizer = unwrap_optimizer(getattr(self.model, "optimizer", None))
        if not isinstance(optimizer, QuantizedOptimizer):
            self._warn_once(
                "type",
                f"QSGLDMonitor: the model's optimizer ({type(optimizer).__name__}) is not a "
                "QSGLD or QAdam optimizer; nothing is logged.",
            )
            return None
        return optimizer

    def _reset_noise(self):
        optimizer = self._quantized_optimizer()
        if optimizer is not None and optimizer.track_noise and optimizer.built:
            optimizer.noise_statistics(reset=True)

    def on_train_begin(self, logs=None):
        self._reset_noise()

    def on_epoch_begin(self, epoch, logs=None):
        self._reset_noise()

    def compute(self):
        """The monitor's values now, as a dict of floats keyed by the log names."""
        optimizer = self._quantized_optimizer()
        if optimizer is None:
            return {}
        step = optimizer.iterations
        qp = _scalar(optimizer.resolution_at(step))
        gate = optimizer.gate_at(step)
        gate = 0.0 if gate is None else _scalar(gate)
        lr = _scalar(optimizer.learning_rate)
        temperature = qp**-2 / (24.0 * lr) if lr > 0 else math.inf
        values = {"qp": qp, "gate": gate, "temperature": temperature}
        if optimizer.track_noise:
            stats = optimizer.noise_statistics(reset=False)
            values["zero_fraction"] = stats["zero_fraction"]
            values["noise_variance_ratio"] = stats["variance_ratio"]
        else:
            self._warn_once(
                "noise",
                "QSGLDMonitor: the optimizer was built with track_noise=False, so "
                f"{self.prefix}zero_fraction and {self.prefix}noise_variance_ratio are not "
                "logged. Pass track_noise=True to the optimizer to log them.",
            )
        return {self.prefix + key: value for key, value in values.items()}

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        logs.update(self.compute())
