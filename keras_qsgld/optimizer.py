"""`QuantizedOptimizer`: what QSGLD and QAdam share, in `keras.ops` only, on every backend.

One update, after Keras' own `apply` has clipped, decayed and accumulated the gradients:

1. `_backend_update_step(grads, variables, learning_rate)` runs once per update. It
   evaluates the learning rate and the schedules at `schedule_step` into an
   `UpdateScalars(learning_rate, resolution, gate)` and hands that to Keras' loop over the
   variables (which, on TensorFlow, runs it under `tf.distribute`).
2. `update_step(gradient, variable, scalars)` (in `QSGLD`, `QAdam`) computes the step `h`.
3. `_apply_increment` rounds it with `quantization.increment_and_error` and adds the
   increment to the variable.

Backend-specific behaviour (TensorFlow's eager XLA update, sparse gradients) lives in
`keras_qsgld/backend/`, in a subclass picked at import as Keras picks its own.
"""

import json
import typing
import warnings

import keras
import numpy as np
from keras import ops

from keras_qsgld import langevin
from keras_qsgld.backend.ops import (
    optimization_barrier,
    torch_compiling,
    under_xla,
)
from keras_qsgld.noise import NoiseStatistics
from keras_qsgld.quantization import (
    RANDOM_ROUNDING_MODES,
    ROUNDING_MODES,
    increment_error_and_mask,
)
from keras_qsgld.random import uniform_from_seed
from keras_qsgld.schedules import get_compensation, get_resolution
from keras_qsgld.validation import (
    check_bool,
    check_choice,
    check_integer,
    check_real,
)

SEED_LIMIT = (
    2**31 - 1
)  # the generator's int32 arithmetic takes seeds in [0, 2**31)


class UpdateScalars(typing.NamedTuple):
    """The scalars of one update, evaluated once and passed to every `update_step`.

    Attributes:
        learning_rate: float32 scalar, the learning rate of this update.
        resolution: float32 scalar, `Qp` (inf where a `Temperature` meets a learning rate of 0).
        gate: float32 scalar, the compensation gate `s` (0, unused, without compensation).
    """

    learning_rate: typing.Any
    resolution: typing.Any
    gate: typing.Any


def increment_dtype(variable):
    """The dtype the increment is computed in: float64 for float64 variables, else float32.

    float16 overflows (`Qp * lr * g` reaches 2e4 at the defaults) and bfloat16 keeps 8 bits
    of mantissa, so those variables are updated from float32 maths.
    """
    dtype = keras.backend.standardize_dtype(variable.dtype)
    return "float64" if dtype == "float64" else "float32"


def with_base_keyword_args(doc):
    """Fills `{{base_optimizer_keyword_args}}` as Keras' own optimizers do (None under -OO)."""
    if doc is None:
        return None
    try:
        from keras.src.optimizers.optimizer import base_optimizer_keyword_args
    except (
        ImportError
    ):  # a private module: keep the placeholder's meaning in words
        base_optimizer_keyword_args = (
            "**kwargs: the keyword arguments of keras.optimizers.Optimizer."
        )
    return doc.replace(
        "{{base_optimizer_keyword_args}}", base_optimizer_keyword_args.strip()
    )


class QuantizedOptimizer(keras.optimizers.Optimizer):
    """Base class: turns a step `h` into a QSGLD increment and adds it to the variable.

    Subclasses compute `h` (and the step size that scales the compensation) in
    `update_step(gradient, variable, scalars)` and call `self._apply_increment`.
    """

    _default_name = "quantized_optimizer"
    supports_temperature = True

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
        if not callable(learning_rate):
            learning_rate = check_real(
                "learning_rate",
                learning_rate,
                minimum=0,
                description="a learning rate",
            )
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.resolution = get_resolution(resolution)
        self.compensation = get_compensation(compensation)
        self.rounding = check_choice("rounding", rounding, ROUNDING_MODES)
        self.seed = (
            None
            if seed is None
            else check_integer("seed", seed, minimum=0, maximum=SEED_LIMIT)
        )
        self.track_noise = check_bool("track_noise", track_noise)
        self.jit_compile = check_bool("jit_compile", jit_compile)
        langevin.check_single_temperature(self)
        # Every optimizer has a seed generator, used or not, so that its saved state has the
        # same layout whatever the rounding. Its state is an optimizer variable: saved and
        # restored, so a resumed run draws exactly what the uninterrupted one would.
        self._seed_generator = keras.random.SeedGenerator(
            self.seed, name=f"{self.name}_seed"
        )
        self._track_variable(self._seed_generator.state)
        self._noise = None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        if self.track_noise:
            self._noise = NoiseStatistics(self, variables)

    # -- the schedules ------------------------------------------------------------------------
    @property
    def schedule_step(self):
        """The step at which the next update evaluates `resolution` and `compensation`.

        `iterations` (0 on the first update); QAdam uses `iterations + 1`, as the authors'
        code does. Use it to read what the next update will use:
        `optimizer.resolution_at(optimizer.schedule_step)`.
        """
        return self.iterations

    def sampling_caveats(self):
        """Why this optimizer does not sample `exp(-L / T)` at a `Temperature` `T`: a list of
        sentences, empty when it does (a `Temperature` resolution, the dithered rounding and
        nothing else that moves the weights). `PosteriorSampler` and the constructor warn
        with them (`keras_qsgld.langevin.sampling_caveats`)."""
        return langevin.sampling_caveats(self)

    def extra_sampling_caveats(self):
        """An optimizer's own reasons besides the shared ones (QSGLD: momentum)."""
        return []

    def effective_learning_rate(self, learning_rate):
        """The learning rate that, with `Qp`, sets the Langevin temperature `Qp**-2 / (24 lr)`."""
        return learning_rate

    def resolution_at(self, step, learning_rate=None):
        """`Qp` at optimizer step `step`, a float32 scalar.

        A `Temperature` resolution depends on the learning rate instead: `learning_rate`
        (default: the optimizer's current one) sets it.
        """
        if learning_rate is None:
            learning_rate = self.learning_rate
        lr = self.effective_learning_rate(ops.cast(learning_rate, "float32"))
        return langevin.resolution_at(self.resolution, step, lr)

    def gate_at(self, step):
        """The compensation gate `s` at `step` (float32), or None when compensation is off."""
        if self.compensation is None:
            return None
        return ops.cast(self.compensation(step), "float32")

    # -- the update ---------------------------------------------------------------------------
    def schedules_key(self):
        """What a compiled update takes from the schedules as constants (their configs,
        `steps_per_epoch` included): a function traced under another key is out of date.
        Compiled updates record the key they were traced under (`QSGLDMonitor` compares it
        at the start of `fit`; TensorFlow's eager XLA update is cached per key)."""
        return tuple(
            _config_key(schedule)
            for schedule in (self.resolution, self.compensation)
        )

    def _update_scalars(self, learning_rate):
        """This update's `UpdateScalars`, from Keras' current learning rate."""
        # Runs at every trace (and every eager update): the key the update is built on.
        # Not under torch.compile, whose guards on the schedules' attributes retrace by
        # themselves (and which cannot trace the key's JSON).
        if not torch_compiling():
            self.__dict__["_traced_schedules_key"] = self.schedules_key()
        # The scalars depend on the step alone: evaluate them once per update rather than
        # once per variable (without XLA those scalar ops were a large share of the update).
        step = self.schedule_step
        learning_rate = ops.cast(learning_rate, "float32")
        gate = self.gate_at(step)
        return UpdateScalars(
            learning_rate=learning_rate,
            resolution=self.resolution_at(step, learning_rate),
            gate=ops.zeros((), "float32") if gate is None else gate,
        )

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        scalars = self._update_scalars(learning_rate)
        super()._backend_update_step(grads, trainable_variables, scalars)

    def update_step(self, gradient, variable, scalars):
        """Updates one variable; `scalars` is this update's `UpdateScalars`."""
        raise NotImplementedError

    def _apply_increment(
        self, variable, h, step_size, scalars, step_fn=None, step_inputs=()
    ):
        """`variable += Q(Qp (h + r)) / Qp` with `r = s * step_size * h / ||h||`.

        `h == step_fn(*step_inputs)`: under XLA the norm is taken of `h` computed again from
        the inputs behind an optimization barrier (`increment_and_error`'s `norm_source`).
        """
        dtype = h.dtype
        qp = ops.cast(scalars.resolution, dtype)
        gate = (
            None if self.compensation is None else ops.cast(scalars.gate, dtype)
        )
        noise = None
        if self.rounding in RANDOM_ROUNDING_MODES:
            # Not keras.random (100x slower under XLA on CPU, another stream per backend):
            # a counter-based hash, identical compiled or not and on every backend.
            noise = uniform_from_seed(
                ops.shape(h), self._seed_generator.next(), dtype
            )
        norm_source = None
        if gate is not None and step_fn is not None and under_xla(h):
            norm_source = step_fn(*optimization_barrier(*step_inputs))
        delta, error, rounded = increment_error_and_mask(
            h, qp, step_size, gate, self.rounding, noise, norm_source
        )
        self.assign_add(variable, ops.cast(delta, variable.dtype))
        if self._noise is not None:
            self._noise.accumulate(self, delta, error, rounded)

    # -- noise statistics ---------------------------------------------------------------------
    def noise_statistics(self, reset=True):
        """Quantization-noise statistics since the last reset (needs `track_noise=True`).

        Returns a dict of Python floats: `zero_fraction` (share of increments exactly 0),
        `error_mean` and `error_variance` of the rounding error `Q(y) - y` in grid units
        (the white-noise hypothesis says mean 0, or -1/2 for `"floor"`, and variance 1/12),
        and `variance_ratio`, the variance over 1/12. NaN before any update.

        Raises:
            ValueError: if the optimizer was made with `track_noise=False`.
        """
        if not self.track_noise:
            raise ValueError(
                "noise_statistics() needs an optimizer built with track_noise=True. "
                f"Received: track_noise={self.track_noise!r}"
            )
        if self._noise is None:  # not built yet: nothing accumulated
            nan = float("nan")
            return dict(
                zero_fraction=nan,
                error_mean=nan,
                error_variance=nan,
                variance_ratio=nan,
            )
        return self._noise.summary(reset=reset)

    # -- saving -------------------------------------------------------------------------------
    def _state_variables(self):
        """The variables saved with the model: all but the noise statistics."""
        skipped = (
            {id(v) for v in self._noise.variables}
            if self._noise is not None
            else set()
        )
        return [v for v in self.variables if id(v) not in skipped]

    def save_own_variables(self, store):
        for i, variable in enumerate(self._state_variables()):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        if (
            not self.built
        ):  # Keras' own message says why nothing can be restored
            return super().load_own_variables(store)
        saved = [store[str(i)] for i in range(len(store.keys()))]
        layout = self._saved_layout(saved)
        if layout is None:
            warnings.warn(
                f"Optimizer '{self.name}' ({type(self).__name__}): its saved state was NOT "
                f"restored, since the file holds {len(saved)} optimizer variables whose shapes do "
                f"not match this optimizer's {len(self._state_variables())} (another optimizer, "
                "or other momentum or slot settings). `iterations` stays at "
                f"{int(ops.convert_to_numpy(self.iterations))}, so the resolution and "
                "compensation schedules continue from there, not from the saved step.",
                UserWarning,
                stacklevel=2,
            )
            return
        for variable, value in zip(layout, saved):
            if variable is not None:
                variable.assign(value)

    def _saved_layout(self, saved):
        """This optimizer's variable for each saved value (None: skip it), or None if the
        saved state does not fit. Besides today's layout, files of keras-qsgld 0.1.0 fit:
        they held the four noise statistics (with `track_noise=True`) and, with a
        deterministic rounding, no seed-generator state."""
        state = self._state_variables()
        at = next(
            i for i, v in enumerate(state) if v is self._seed_generator.state
        )
        head, seed, tail = state[:at], state[at], state[at + 1 :]
        statistics = [None] * 4
        for layout in (
            state,
            head + tail,
            head + statistics + tail,
            head + [seed] + statistics + tail,
        ):
            if len(layout) == len(saved) and all(
                v is None or tuple(v.shape) == tuple(np.shape(value))
                for v, value in zip(layout, saved)
            ):
                return layout
        return None

    # -- config -------------------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            resolution=keras.saving.serialize_keras_object(self.resolution),
            compensation=None
            if self.compensation is None
            else keras.saving.serialize_keras_object(self.compensation),
            rounding=self.rounding,
            seed=self.seed,
            track_noise=self.track_noise,
            jit_compile=self.jit_compile,
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)  # the base class mutates the dict it is given
        for key in ("resolution", "compensation"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return super().from_config(config, custom_objects=custom_objects)


def _config_key(schedule):
    """A schedule's config as a string (its identity for a callable without a config)."""
    if schedule is None:
        return None
    try:
        config = schedule.get_config()
    except (AttributeError, NotImplementedError):
        return f"{type(schedule).__name__} at {id(schedule)}"
    return json.dumps(config, sort_keys=True, default=repr)


def _auto_name(prefix):
    """ "qsgld", "qsgld_1", ... as Keras names its own optimizers."""
    try:
        from keras.src.utils.naming import auto_name
    except ImportError:  # a private module; a fixed name is a fine fallback
        return prefix
    return auto_name(prefix)
