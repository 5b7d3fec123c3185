"""QAdam: Adam whose bias-corrected step is quantized as in QSGLD."""

import keras
from keras import ops

from keras_qsgld.backend.optimizer import BackendQuantizedOptimizer
from keras_qsgld.optimizer import increment_dtype, with_base_keyword_args
from keras_qsgld.validation import check_real


@keras.saving.register_keras_serializable(package="keras_qsgld")
class QAdam(BackendQuantizedOptimizer):
    """Adam with QSGLD's quantized increment (the paper's "ADAM-based" variant).

    Adam's bias-corrected step gets QSGLD's compensation and is quantized on the grid
    `1 / Qp`; the weights are never quantized. As in the authors' code, the bias
    correction and both schedules are evaluated at `k + 1`, with `k` the optimizer step
    before this update:

    ```python
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g**2
    a = learning_rate * sqrt(1 - beta_2**(k + 1)) / (1 - beta_1**(k + 1))
    h = -a * m / (sqrt(v) + epsilon)
    Qp = resolution(k + 1);  s = compensation(k + 1)      # r = 0 if compensation is None
    r = s * a * h / norm(h)                                # Frobenius norm; 0 if norm(h) = 0
    w = w + Q(Qp * (h + r)) / Qp                           # Q = floor(. + 1/2) or floor
    ```

    With `weight_decay` it is the quantized AdamW. Keras applies the decoupled decay
    `w -= lr * weight_decay * w` just before the update; the authors' QtAdamW applies it
    just after, a second-order difference. The maths runs in float32 at least; see
    `QSGLD` for the float32 limit and non-finite gradients.

    Args:
        learning_rate: real number >= 0, a `LearningRateSchedule`, or a callable.
            Default 0.001.
        beta_1: real number in [0, 1), decay of the first moment. Default 0.9.
        beta_2: real number in [0, 1), decay of the second moment. Default 0.999.
        epsilon: real number >= 0 added to `sqrt(v)`. Default 1e-7 (the authors use 1e-6).
        resolution: a `ResolutionSchedule` (or callable of the step), or a real number for
            a fixed `Qp`. None (default) means `ResolutionSchedule()`. Not a `Temperature`:
            Adam's per-coordinate preconditioning has no single Langevin temperature.
        compensation: a `CompensationSchedule` (or callable of the step), a constant gate
            in [0, 1], or None (default: off).
        rounding: `"nearest"` (default, the paper), `"floor"` (the authors' code),
            `"stochastic"` or `"dithered"` (random; see `QSGLD`).
        seed: integer in [0, 2**31) or None, seed of the random roundings (see `QSGLD`).
        track_noise: bool, accumulate rounding-error statistics (see `QSGLD`).
        jit_compile: bool, XLA-compile eager `apply` calls on TensorFlow; no effect on JAX
            and PyTorch (see `QSGLD`).
        {{base_optimizer_keyword_args}}

    Raises:
        ValueError: for an argument of the wrong type or out of its range (naming the
            argument and the value received), or a `Temperature` resolution.

    Examples:
        The first update is Adam's `-lr * sign(g)` (bias-corrected), here `(-0.1, 0.1)`,
        rounded on a fixed grid of `1 / 8` to `(-1, 1)` cells:

        >>> import keras, numpy as np, keras_qsgld
        >>> w = keras.Variable([0.3, -0.2])
        >>> optimizer = keras_qsgld.QAdam(0.1, resolution=8.0)
        >>> _ = optimizer.apply([keras.ops.convert_to_tensor([1.0, -2.0])], [w])
        >>> print(np.round(keras.ops.convert_to_numpy(w), 4))
        [ 0.175 -0.075]

    References:
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), Stochastic Gradient
          Langevin Dynamics Based on Quantization with Increasing Resolution.
        - [Kingma & Ba, 2014](https://arxiv.org/abs/1412.6980), Adam.
        - [Loshchilov & Hutter, 2017](https://arxiv.org/abs/1711.05101), AdamW.
    """

    _default_name = "qadam"
    supports_temperature = (
        False  # Adam's preconditioned step has no single temperature
    )

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        resolution=None,
        compensation=None,
        rounding="nearest",
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
        self.beta_1 = check_real(
            "beta_1", beta_1, minimum=0, maximum=1, exclusive_maximum=True
        )
        self.beta_2 = check_real(
            "beta_2", beta_2, minimum=0, maximum=1, exclusive_maximum=True
        )
        self.epsilon = check_real("epsilon", epsilon, minimum=0)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )

    @property
    def schedule_step(self):
        """`iterations + 1`: QAdam evaluates its schedules (and Adam's bias correction) at
        the step after this update's `k`, as the authors' code does."""
        return self.iterations + 1

    def update_step(self, gradient, variable, scalars):
        dtype = increment_dtype(variable)
        index = self._get_variable_index(variable)
        m_var, v_var = self._momentums[index], self._velocities[index]
        g = ops.cast(gradient, dtype)
        lr = ops.cast(scalars.learning_rate, dtype)
        # convert_to_tensor, not cast: casting a Python float goes through float32.
        beta_1 = ops.convert_to_tensor(self.beta_1, dtype)
        beta_2 = ops.convert_to_tensor(self.beta_2, dtype)
        m = ops.add(
            ops.multiply(beta_1, ops.cast(m_var, dtype)),
            ops.multiply(1 - beta_1, g),
        )
        v = ops.add(
            ops.multiply(beta_2, ops.cast(v_var, dtype)),
            ops.multiply(1 - beta_2, ops.square(g)),
        )
        self.assign(m_var, ops.cast(m, m_var.dtype))
        self.assign(v_var, ops.cast(v, v_var.dtype))
        alpha = self._bias_corrected_learning_rate(lr, dtype)
        inputs = (m, v, alpha, ops.convert_to_tensor(self.epsilon, dtype))
        h = _adam_step(*inputs)
        self._apply_increment(
            variable, h, alpha, scalars, step_fn=_adam_step, step_inputs=inputs
        )

    def _bias_corrected_learning_rate(self, lr, dtype):
        """`a = lr * sqrt(1 - beta_2**(k + 1)) / (1 - beta_1**(k + 1))` in `dtype`, from `lr`
        in `dtype`: the step size of this update (every backend computes it here)."""
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.convert_to_tensor(self.beta_1, dtype)
        beta_2 = ops.convert_to_tensor(self.beta_2, dtype)
        return ops.divide(
            ops.multiply(lr, ops.sqrt(1 - ops.power(beta_2, local_step))),
            1 - ops.power(beta_1, local_step),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon
        )
        return config


def _adam_step(m, v, alpha, epsilon):
    """`h = -alpha m / (sqrt(v) + epsilon)`, Adam's bias-corrected step."""
    return ops.negative(
        ops.divide(ops.multiply(alpha, m), ops.add(ops.sqrt(v), epsilon))
    )


QAdam.__doc__ = with_base_keyword_args(QAdam.__doc__)
