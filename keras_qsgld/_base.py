"""What QSGLD and QAdam share: schedules, validation, noise statistics, config, eager XLA."""

import math

import keras
from keras import ops

from keras_qsgld.quantization import RANDOM_ROUNDING_MODES, ROUNDING_MODES, increment_and_error
from keras_qsgld.random import uniform_from_seed
from keras_qsgld.schedules import ResolutionSchedule

_SCHEDULE_KEYS = ("resolution", "compensation")
# Running sums read by `QSGLDMonitor`, each weighted by 1 / (number of trainable weights).
NOISE_STAT_NAMES = ("noise_count", "noise_zeros", "noise_error_sum", "noise_error_sq_sum")


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compute_dtype(variable):
    # float16 overflows (Qp * lr * g reaches 2e4 at the defaults) and bfloat16 has 8 bits of
    # mantissa: quantize in float32 at least; float64 variables keep float64.
    dtype = keras.backend.standardize_dtype(variable.dtype)
    return "float64" if dtype == "float64" else "float32"


def check_resolution(resolution):
    """None gives `ResolutionSchedule()`; a positive float (a fixed Qp) and callables pass."""
    if resolution is None:
        return ResolutionSchedule()
    if _is_number(resolution):
        if not (resolution > 0 and math.isfinite(resolution)):
            raise ValueError(
                "Argument `resolution` must be a ResolutionSchedule or a positive float "
                f"(a fixed Qp). Received: resolution={resolution!r}"
            )
        return float(resolution)
    if not callable(resolution):
        raise ValueError(
            "Argument `resolution` must be a ResolutionSchedule, a callable of the step "
            f"or a positive float. Received: resolution={resolution!r}"
        )
    return resolution


def schedule_value(schedule, step):
    """A constant (float) or a schedule evaluated at `step`, as a float32 scalar."""
    if isinstance(schedule, float):
        return ops.convert_to_tensor(schedule, "float32")
    return ops.cast(schedule(step), "float32")


def dense(gradient):
    """Densifies a sparse (`IndexedSlices`) gradient: the norm and the rounding see all rows."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return tf.convert_to_tensor(gradient)
    return gradient


def with_base_keyword_args(doc):
    """Fills `{{base_optimizer_keyword_args}}` as Keras' own optimizers do."""
    try:
        from keras.src.optimizers.optimizer import base_optimizer_keyword_args
    except ImportError:  # a private module: keep the placeholder's meaning in words
        base_optimizer_keyword_args = "**kwargs: the keyword arguments of keras.optimizers.Optimizer."
    return doc.replace("{{base_optimizer_keyword_args}}", base_optimizer_keyword_args.strip())


class QuantizedOptimizer(keras.optimizers.Optimizer):
    """Base class: turns a step `h` into a QSGLD increment and adds it to the variable.

    Subclasses compute `h` (and the step size that scales the compensation) in
    `update_step` and call `self._apply_increment`.
    """

    _default_name = "quantized_optimizer"
    _schedule_values = None  # (Qp, gate) of the update under way, set by _update_all

    def __init__(
        self,
        learning_rate,
        resolution=None,
        compensation=None,
        rounding="nearest",
        seed=None,
        track_noise=False,
        jit_compile=True,
        name=None,
        **kwargs,
    ):
        if name is None:
            name = _auto_name(self._default_name)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if _is_number(learning_rate) and not learning_rate >= 0:
            raise ValueError(
                f"Argument `learning_rate` must be >= 0. Received: learning_rate={learning_rate!r}"
            )
        resolution = check_resolution(resolution)
        if _is_number(compensation):
            if not 0 <= compensation <= 1:
                raise ValueError(
                    "Argument `compensation` must be a CompensationSchedule, a constant gate "
                    f"in [0, 1] or None. Received: compensation={compensation!r}"
                )
            compensation = float(compensation)
        elif compensation is not None and not callable(compensation):
            raise ValueError(
                "Argument `compensation` must be a CompensationSchedule, a constant gate "
                f"in [0, 1] or None. Received: compensation={compensation!r}"
            )
        if rounding not in ROUNDING_MODES:
            raise ValueError(
                f"Argument `rounding` must be one of {ROUNDING_MODES}. "
                f"Received: rounding={rounding!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Argument `seed` must be an integer or None. Received: seed={seed!r}")
        self.resolution = resolution
        self.compensation = compensation
        self.rounding = rounding
        self.seed = seed
        if rounding in RANDOM_ROUNDING_MODES:
            # The generator's state is an optimizer variable: saved with the model and
            # restored, so a resumed run draws exactly what the uninterrupted one would.
            self._seed_generator = keras.random.SeedGenerator(seed, name=f"{self.name}_seed")
            self._track_variable(self._seed_generator.state)
        self.track_noise = bool(track_noise)
        self.jit_compile = bool(jit_compile)
        self._xla_update_step = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._noise_stats = []
        if self.track_noise:
            self._noise_weight = 1.0 / max(1, sum(math.prod(v.shape) for v in variables))
            self._noise_stats = [
                self.add_variable((), initializer="zeros", dtype="float32", name=name)
                for name in NOISE_STAT_NAMES
            ]

    # -- schedules -------------------------------------------------------------------
    def resolution_at(self, step):
        """`Qp` at optimizer step `step`, a float32 scalar."""
        return schedule_value(self.resolution, step)

    def gate_at(self, step):
        """The compensation gate `s` at `step` (float32), or None when compensation is off."""
        if self.compensation is None:
            return None
        return schedule_value(self.compensation, step)

    def _schedule_step(self):
        """The step at which the schedules are evaluated (0 on the first update)."""
        return self.iterations

    # -- the update ------------------------------------------------------------------
    def _apply_increment(self, variable, h, step_size):
        """`variable += Q(Qp (h + r)) / Qp` with `r = s * step_size * h / ||h||`."""
        dtype = h.dtype
        if self._schedule_values is not None:
            qp, gate = self._schedule_values
        else:  # update_step called directly, outside apply()
            step = self._schedule_step()
            qp, gate = self.resolution_at(step), self.gate_at(step)
        qp = ops.cast(qp, dtype)
        if gate is not None:
            gate = ops.cast(gate, dtype)
        noise = None
        if self.rounding in RANDOM_ROUNDING_MODES:
            noise = self._uniform(ops.shape(h), dtype)
        delta, error = increment_and_error(h, qp, step_size, gate, self.rounding, noise)
        self.assign_add(variable, ops.cast(delta, variable.dtype))
        if self.track_noise:
            self._accumulate_noise(delta, error)

    def _uniform(self, shape, dtype):
        """Fresh U[0, 1) draws: one seed per call from the tracked `SeedGenerator`."""
        # Not keras.random (100x slower under XLA on CPU) nor TF's Philox (another stream
        # under XLA): a counter-based hash that is the same compiled or not.
        return uniform_from_seed(shape, self._seed_generator.next(), dtype)

    def _accumulate_noise(self, delta, error):
        count, zeros, error_sum, error_sq_sum = self._noise_stats
        error = ops.cast(error, "float32")
        w = self._noise_weight
        self.assign_add(count, ops.cast(ops.size(delta), "float32") * w)
        self.assign_add(zeros, ops.sum(ops.cast(ops.equal(delta, 0), "float32")) * w)
        self.assign_add(error_sum, ops.sum(error) * w)
        self.assign_add(error_sq_sum, ops.sum(ops.square(error)) * w)

    def noise_statistics(self, reset=True):
        """Quantization-noise statistics since the last reset (needs `track_noise=True`).

        Returns a dict of Python floats: `zero_fraction` (share of increments exactly 0),
        `error_mean` and `error_variance` of the rounding error `Q(y) - y` in grid units
        (the white-noise hypothesis says mean 0, or -1/2 for `"floor"`, and variance 1/12),
        and `variance_ratio`, the variance over 1/12. NaN before any update.
        """
        if not self.track_noise:
            raise ValueError(
                "noise_statistics() needs an optimizer built with track_noise=True. "
                f"Received: track_noise={self.track_noise!r}"
            )
        if not self.built:
            nan = float("nan")
            return dict(zero_fraction=nan, error_mean=nan, error_variance=nan, variance_ratio=nan)
        count, zeros, error_sum, error_sq_sum = (float(ops.convert_to_numpy(v)) for v in self._noise_stats)
        if count > 0:
            mean = error_sum / count
            variance = max(error_sq_sum / count - mean * mean, 0.0)
            stats = dict(zero_fraction=zeros / count, error_mean=mean, error_variance=variance)
        else:
            nan = float("nan")
            stats = dict(zero_fraction=nan, error_mean=nan, error_variance=nan)
        stats["variance_ratio"] = stats["error_variance"] * 12.0
        if reset:
            for v in self._noise_stats:
                v.assign(ops.zeros_like(v))
        return stats

    # -- eager XLA -------------------------------------------------------------------
    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Keras 2's optimizers compiled their update with XLA even in eager loops; do the
        # same for `optimizer.apply` outside any tf.function (TensorFlow, default strategy).
        if self.jit_compile and _eager_tensorflow_default_strategy():
            if self._xla_update_step is None:
                import tensorflow as tf

                # Stored around the attribute tracker: a tf.function is no optimizer state.
                self.__dict__["_xla_update_step"] = tf.function(
                    self._update_all, jit_compile=True, autograph=False
                )
            # tf.Variables (not Keras wrappers) so the function receives them as variables.
            trainable_variables = [
                v.value if isinstance(v, keras.Variable) else v for v in trainable_variables
            ]
            return self._xla_update_step(grads, trainable_variables, learning_rate)
        return self._update_all(grads, trainable_variables, learning_rate)

    def _update_all(self, grads, trainable_variables, learning_rate):
        # The schedules depend on the step alone: evaluate them once per update rather than
        # once per variable: without XLA those scalar ops were a large share of the update.
        step = self._schedule_step()
        self.__dict__["_schedule_values"] = (self.resolution_at(step), self.gate_at(step))
        try:
            super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self.__dict__["_schedule_values"] = None

    # -- config ----------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        for key in _SCHEDULE_KEYS:
            value = getattr(self, key)
            if value is not None and not isinstance(value, float):
                value = keras.saving.serialize_keras_object(value)
            config[key] = value
        config.update(
            rounding=self.rounding,
            seed=self.seed,
            track_noise=self.track_noise,
            jit_compile=self.jit_compile,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)  # the base class mutates the dict it is given
        for key in _SCHEDULE_KEYS:
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return super().from_config(config, custom_objects=custom_objects)


def _auto_name(prefix):
    """"qsgld", "qsgld_1", ... as Keras names its own optimizers."""
    try:
        from keras.src.utils.naming import auto_name
    except ImportError:  # a private module; a fixed name is a fine fallback
        return prefix
    return auto_name(prefix)


def _eager_tensorflow_default_strategy():
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.executing_eagerly() and not tf.distribute.has_strategy()
