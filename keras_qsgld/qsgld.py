"""QSGLD: SGD whose increments are quantized on a grid of increasing resolution."""

import keras
from keras import ops

from keras_qsgld import langevin
from keras_qsgld.backend.optimizer import BackendQuantizedOptimizer
from keras_qsgld.optimizer import increment_dtype, with_base_keyword_args
from keras_qsgld.validation import check_bool, check_real


@keras.saving.register_keras_serializable(package="keras_qsgld")
class QSGLD(BackendQuantizedOptimizer):
    """Stochastic gradient Langevin dynamics by quantization with increasing resolution.

    The Langevin noise is the rounding error of the increment: with the deterministic
    roundings no random numbers are drawn. Under the white-noise hypothesis it is uniform
    with variance `Qp**-2 / 12` per coordinate and step (an SGLD temperature
    `Qp**-2 / (24 * lr)`), annealed as `Qp` grows. The weights are never quantized, only
    each increment. Per variable, with `k` the optimizer step before this update (0 on the
    first one):

    ```python
    h = -learning_rate * g                       # momentum=0: the paper
    # momentum > 0 (as keras.optimizers.SGD):  m = momentum * m - learning_rate * g
    #   h = m,  or  h = momentum * m - learning_rate * g  with nesterov=True
    Qp = resolution(k)                           # ResolutionSchedule: eta * b**floor(log_b(ln(t+2)))
    #   or Qp = 1 / sqrt(24 * learning_rate / (1 - momentum) * T) for resolution=Temperature(T)
    s = compensation(k)                          # CompensationSchedule gate; r = 0 if None
    r = s * learning_rate * h / norm(h)          # Frobenius norm of this variable; 0 if norm(h) = 0
    delta = Q(Qp * (h + r)) / Qp                 # Q(y) = floor(y + 1/2) ("nearest"), floor(y),
                                                 #   floor(y + u) or floor(y + u + 1/2) - u
    w = w + delta
    ```

    The maths runs in float32 at least (float64 variables stay float64) and is cast
    back to the variable's dtype, so `mixed_float16` and bfloat16 variables work. Float32
    has a 24-bit mantissa: where `|Qp * (h + r)| >= 2**24` (`2**53` in float64) the step is
    already an integer number of grid cells, so it is applied as it is, unrounded and
    without noise (this also keeps steps finite where `Qp * (h + r)` would overflow). A
    learning rate of 0 applies the step unrounded and without noise too, so `lr = 0`
    freezes the weights in every rounding mode (momentum still carries earlier steps, as
    in Keras' SGD). Non-finite gradients give non-finite weights, as with Keras' own
    optimizers (`LossScaleOptimizer` skips such steps; `keras.callbacks.TerminateOnNaN`
    stops training).

    Paper against the authors' code: the paper defines `Q` as round half up and the gate
    as `sigmoid(-kappa (t - tau0))`; the released code runs `floor` and
    `(tanh(-kappa (t - tau0)) + 1) / 2`. `rounding="floor"` with
    `CompensationSchedule(gate="tanh")` reproduces the code step for step.

    Args:
        learning_rate: real number >= 0, a `LearningRateSchedule`, or a callable.
            Default 0.01.
        resolution: a `ResolutionSchedule` (or any callable of the step giving `Qp`), a
            `Temperature` (Langevin sampling at a fixed temperature), or a real number for
            a fixed `Qp` (normal and finite in float32). None (default) means
            `ResolutionSchedule()`. The epoch schedules need `steps_per_epoch`: give it, or
            let `QSGLDMonitor` set it from the data in `fit`.
        compensation: a `CompensationSchedule` (or any callable of the step), a constant
            gate in [0, 1], or None (default: no compensation term).
        rounding: how `Q` rounds, one of:

            - `"nearest"` (default, the paper): `floor(y + 1/2)`. Deterministic; every step
              smaller than half a grid cell is exactly 0 (a dead zone with no noise).
            - `"floor"` (the authors' code): `floor(y)`. Deterministic; a drift of
              `-1 / (2 Qp)` per coordinate and step.
            - `"stochastic"`: `floor(y + u)`, `u ~ U[0, 1)`. Unbiased, on the grid, error
              variance `f (1 - f)` cells^2 (`f` the fractional part): noise only where
              `y` is off the grid.
            - `"dithered"`: subtractive dither `floor(y + u + 1/2) - u`,
              `u ~ U[-1/2, 1/2)`. The error is exactly uniform with variance 1/12 cells^2,
              independent of the step, so the temperature `Qp**-2 / (24 lr)` holds by
              construction, also for tiny gradients; increments leave the grid. Since the
              noise does not depend on the gradient, a weight whose gradient is exactly 0
              still moves (Langevin noise), unless the learning rate is 0.
            Use a deterministic mode to follow the paper; use `"dithered"` when you want
            Langevin noise of the stated temperature (sampling, escaping local minima).
        momentum: real number in [0, 1). Default 0 (the paper).
        nesterov: bool, Nesterov momentum. Default False.
        seed: integer in [0, 2**31) or None, the seed of the random modes' draws; the
            generator's state is an optimizer variable (saved, restored, exact on resume).
            The draws hash (seed, position) with integer ops, so they are identical
            compiled or not and on every backend. Unused by the deterministic modes.
        track_noise: bool. If True, the optimizer accumulates statistics of the rounding
            error (read them with `noise_statistics()` or `QSGLDMonitor`); they are not
            saved with the model. Default False.
        jit_compile: bool. TensorFlow only: if True (default), an `apply` that runs eagerly
            (custom training loops) compiles its update with XLA; inside `fit` or a
            `tf.function` the update follows that function's own setting. It has no effect
            on JAX and PyTorch, where `model.compile(jit_compile=...)` decides.
        {{base_optimizer_keyword_args}}

    Raises:
        ValueError: for an argument of the wrong type or out of its range, naming the
            argument and the value received.

    Examples:
        One update on a fixed grid of `1 / 8` (`Qp = 8`): `h = -0.1 * g = (-0.1, 0.2)`,
        `Qp * h = (-0.8, 1.6)` rounds to `(-1, 2)` cells.

        >>> import keras, numpy as np, keras_qsgld
        >>> w = keras.Variable([0.3, -0.2])
        >>> optimizer = keras_qsgld.QSGLD(0.1, resolution=8.0)
        >>> _ = optimizer.apply([keras.ops.convert_to_tensor([1.0, -2.0])], [w])
        >>> print(np.round(keras.ops.convert_to_numpy(w), 4))
        [0.175 0.05 ]

        In `fit`, as the paper runs it (the monitor sets the epoch clock from the data):

        >>> optimizer = keras_qsgld.QSGLD(
        ...     0.05,
        ...     resolution=keras_qsgld.ResolutionSchedule(),
        ...     compensation=keras_qsgld.CompensationSchedule.from_budget(epochs=20),
        ... )
        >>> # model.compile(optimizer=optimizer, loss=...)
        >>> # model.fit(x, y, epochs=20, callbacks=[keras_qsgld.QSGLDMonitor()])

    References:
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), Stochastic Gradient
          Langevin Dynamics Based on Quantization with Increasing Resolution.
        - [Welling & Teh, 2011](https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf),
          Bayesian Learning via Stochastic Gradient Langevin Dynamics.
    """

    _default_name = "qsgld"

    def __init__(
        self,
        learning_rate=0.01,
        resolution=None,
        compensation=None,
        rounding="nearest",
        momentum=0.0,
        nesterov=False,
        seed=None,
        track_noise=False,
        jit_compile=True,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            resolution=resolution,
            compensation=compensation,
            rounding=rounding,
            seed=seed,
            track_noise=track_noise,
            jit_compile=jit_compile,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            **kwargs,
        )
        self.momentum = check_real(
            "momentum", momentum, minimum=0, maximum=1, exclusive_maximum=True
        )
        self.nesterov = check_bool("nesterov", nesterov)
        langevin.warn_unless_sampling(self)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def effective_learning_rate(self, learning_rate):
        # Momentum sums the steps: in the long run w moves by lr / (1 - momentum) * g, while
        # the rounding noise enters w once per update.
        return learning_rate / (1.0 - self.momentum)

    def extra_sampling_caveats(self):
        caveats = []
        if self.momentum:
            # The noise enters the weights, not the velocity: the stationary variance is T / a
            # only while lr * a << (1 - m)**2 for curvature a (measured: 1.95 x T / a at m = 0.9,
            # lr * a = 0.01; 11 x at m = 0.99, lr * a = 0.001).
            caveats.append(
                f"with momentum={self.momentum:g} the noise enters the weights, not the velocity, "
                "so the temperature holds only where lr * curvature << (1 - momentum)**2 (twice "
                "too hot at momentum 0.9 and lr * curvature 0.01): use momentum=0 to sample"
            )
        return caveats

    def update_step(self, gradient, variable, scalars):
        dtype = increment_dtype(variable)
        lr = ops.cast(scalars.learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        if self.momentum == 0:
            inputs = (g, lr)
            h = _sgd_step(*inputs)
        else:
            m = self.momentums[self._get_variable_index(variable)]
            # convert_to_tensor, not cast: casting a Python float goes through float32.
            momentum = ops.convert_to_tensor(self.momentum, dtype)
            inputs = (g, lr, ops.cast(m, dtype), momentum)
            h, velocity = self._momentum_step(*inputs)
            self.assign(m, ops.cast(velocity, m.dtype))
        self._apply_increment(
            variable,
            h,
            lr,
            scalars,
            step_fn=self._step_only,
            step_inputs=inputs,
        )

    def _momentum_step(self, g, lr, m, momentum):
        """`(h, new m)` as `keras.optimizers.SGD`: `m = momentum m - lr g`, `h = m` or Nesterov's."""
        lr_g = ops.multiply(g, lr)
        velocity = ops.subtract(ops.multiply(m, momentum), lr_g)
        if self.nesterov:
            return ops.subtract(
                ops.multiply(velocity, momentum), lr_g
            ), velocity
        return velocity, velocity

    def _step_only(self, *inputs):
        """`h` alone, from the inputs of `update_step`."""
        return (
            _sgd_step(*inputs)
            if self.momentum == 0
            else self._momentum_step(*inputs)[0]
        )

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


def _sgd_step(g, lr):
    """`h = -lr g`, the paper's step."""
    return ops.negative(ops.multiply(g, lr))


QSGLD.__doc__ = with_base_keyword_args(QSGLD.__doc__)
