"""QSGLD: SGD whose increments are quantized on a grid of increasing resolution."""

import keras
from keras import ops

from keras_qsgld._base import QuantizedOptimizer, compute_dtype, dense, with_base_keyword_args


@keras.saving.register_keras_serializable(package="keras_qsgld")
class QSGLD(QuantizedOptimizer):
    """Stochastic gradient Langevin dynamics by quantization with increasing resolution.

    The Langevin noise is the rounding error of the increment: with the deterministic
    roundings no random numbers are drawn. Under the white-noise hypothesis it is uniform with variance `Qp**-2 / 12` per
    coordinate and step (an SGLD temperature `Qp**-2 / (24 * lr)`), annealed as `Qp` grows.
    The weights are never quantized, only each increment. Per variable, with `k` the
    optimizer step before this update (0 on the first one):

    ```python
    h = -learning_rate * g                       # momentum=0: the paper
    # momentum > 0 (as keras.optimizers.SGD):  m = momentum * m - learning_rate * g
    #   h = m,  or  h = momentum * m - learning_rate * g  with nesterov=True
    Qp = resolution(k)                           # ResolutionSchedule: eta * b**floor(log_b(ln(t+2)))
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
    without noise (this also keeps steps finite where `Qp * (h + r)` would overflow). Non-finite
    gradients give non-finite weights, as with Keras' own optimizers (`LossScaleOptimizer`
    skips such steps; `keras.callbacks.TerminateOnNaN` stops training).

    Paper against the authors' code: the paper defines `Q` as round half up and the gate
    as `sigmoid(-kappa (t - tau0))`; the released code runs `floor` and
    `(tanh(-kappa (t - tau0)) + 1) / 2`. `rounding="floor"` with
    `CompensationSchedule(gate="tanh")` reproduces the code step for step.

    Args:
        learning_rate: float >= 0, a `LearningRateSchedule`, or a callable. Default 0.01.
        resolution: a `ResolutionSchedule` (or any callable of the step), or a float > 0
            for a fixed `Qp`. None (default) means `ResolutionSchedule()`, which counts
            epochs only if its `steps_per_epoch` is set: pass your own for real runs.
        compensation: a `CompensationSchedule`, a constant gate in [0, 1], or None
            (default: no compensation term).
        rounding: how `Q` rounds, one of
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
              construction, also for tiny gradients; increments leave the grid.
            Use a deterministic mode to follow the paper; use `"dithered"` when you want
            Langevin noise of the stated temperature (sampling, escaping local minima).
        momentum: float in [0, 1). Default 0 (the paper).
        nesterov: bool, Nesterov momentum. Default False.
        seed: int or None, the seed of the random modes' `keras.random.SeedGenerator`,
            whose state is an optimizer variable (saved, restored, exact on resume).
            The draws hash (seed, position) with integer ops, so they are identical with
            and without XLA. Unused by the deterministic modes.
        track_noise: bool. If True, the optimizer accumulates statistics of the rounding
            error (read them with `noise_statistics()` or `QSGLDMonitor`). Default False.
        jit_compile: bool. If True (default), on TensorFlow the update is compiled with XLA
            when `apply` runs eagerly (custom training loops); inside `fit` or a
            `tf.function` it follows that function's own setting.
        {{base_optimizer_keyword_args}}

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
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(
                f"Argument `momentum` must be a float in [0, 1). Received: momentum={momentum!r}"
            )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        dtype = compute_dtype(variable)
        lr = ops.cast(learning_rate, dtype)
        step = ops.multiply(ops.cast(dense(gradient), dtype), lr)  # lr * g
        if self.momentum != 0:
            m = self.momentums[self._get_variable_index(variable)]
            # convert_to_tensor, not cast: casting a Python float goes through float32.
            momentum = ops.convert_to_tensor(self.momentum, dtype)
            velocity = ops.subtract(ops.multiply(ops.cast(m, dtype), momentum), step)
            self.assign(m, ops.cast(velocity, m.dtype))
            if self.nesterov:
                h = ops.subtract(ops.multiply(velocity, momentum), step)
            else:
                h = velocity
        else:
            h = ops.negative(step)
        self._apply_increment(variable, h, lr)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config


QSGLD.__doc__ = with_base_keyword_args(QSGLD.__doc__)
