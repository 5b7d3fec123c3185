"""The Langevin temperature: one home for `T`, its grid `Qp`, and whether a run samples at `T`.

QSGLD's rounding error is its Langevin noise: uniform with variance `Qp**-2 / 12` per
coordinate and step (by construction with `rounding="dithered"`), which equals the `2 lr T`
of SGLD's Gaussian noise at the temperature

```python
T = Qp**-2 / (24 * lr_eff)      # temperature_of(Qp, lr_eff)
Qp = 1 / sqrt(24 * lr_eff * T)  # Temperature(T).resolution(lr_eff)
```

with `lr_eff` the optimizer's effective learning rate (`lr / (1 - momentum)` for QSGLD).

- `Temperature`: a fixed temperature in place of a resolution schedule: the optimizer sets
  `Qp` from each update's learning rate.
- `temperature_of` and `resolution_at`: the two directions of the formula, for every
  resolution the optimizers take.
- `sampling_caveats`: why an optimizer does not sample `exp(-L / T)` at its `Temperature`
  (the optimizers' `sampling_caveats()`, `PosteriorSampler` and the constructors' warning).
"""

import math
import warnings

import keras
from keras import ops

from keras_qsgld.validation import FLOAT32_MAX, FLOAT32_MIN_NORMAL, check_real


@keras.saving.register_keras_serializable(package="keras_qsgld")
class Temperature:
    """A Langevin temperature `T` in place of a resolution: `Qp = 1 / sqrt(24 * lr * T)`.

    With `rounding="dithered"` the rounding error of each coordinate is uniform with
    variance `Qp**-2 / 12` cells, which equals the `2 * lr * T` of SGLD's Gaussian noise:

    ```python
    Qp = 1 / sqrt(24 * lr_eff * T)      # at every update, from its learning rate
    lr_eff = lr / (1 - momentum)        # QSGLD; lr_eff = lr without momentum
    w = w - lr * g + noise,  Var(noise) = Qp**-2 / 12 = 2 * lr_eff * T   per coordinate
    ```

    so the chain samples `exp(-L(w) / T)`. `Qp` follows the learning rate of each update,
    so Keras learning-rate schedules (`CosineDecayRestarts`, ...) and
    `ReduceLROnPlateau` keep the temperature fixed. A learning rate of 0 gives `Qp = inf`:
    the update is then exactly 0.

    **Which temperature.** With the usual mean loss over `N` training examples,
    `L(w) = -(1/N) sum_i log p(y_i | x_i, w)`, the Bayesian posterior
    `p(w | data) ~ exp(-N L(w))` is sampled at `T = 1 / N`. Weight decay `wd` (Keras'
    decoupled `w -= lr * wd * w`, applied outside the momentum) adds the Gaussian prior
    `N(0, T / ((1 - momentum) wd))` per weight (variance `1 / (N wd)` at `T = 1/N` without
    momentum). `T < 1/N` samples a "cold"
    posterior, sharper than Bayes' rule (Wenzel et al., 2020); `T -> 0` is training.

    With the deterministic roundings (`"nearest"`, `"floor"`) the same `Qp` gives no noise
    wherever a step is below half a cell (the dead zone), so those runs do not sample at
    `T`; the optimizer warns when a temperature is paired with them.

    Args:
        temperature: real number > 0, finite: the temperature `T`, in units of the loss.

    Raises:
        ValueError: for a temperature that is not a positive finite number.

    Examples:
        The Bayesian posterior of a mean loss over 1437 examples, at `lr = 0.05`: the grid
        resolution that gives the dither the variance `2 lr T` of SGLD's noise.

        >>> import keras_qsgld
        >>> optimizer = keras_qsgld.QSGLD(
        ...     0.05,
        ...     resolution=keras_qsgld.Temperature(1 / 1437),
        ...     rounding="dithered",
        ...     seed=0,
        ... )
        >>> qp = float(optimizer.resolution_at(0, 0.05))  # 1 / sqrt(24 lr T)
        >>> round(qp, 2)
        34.6
        >>> round(qp**-2 / (24 * 0.05) * 1437, 4)  # the temperature, times N
        1.0

    References:
        - [Welling & Teh, 2011](https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf),
          Bayesian Learning via Stochastic Gradient Langevin Dynamics.
        - [Wenzel et al., 2020](https://arxiv.org/abs/2002.02405), How Good is the Bayes
          Posterior in Deep Neural Networks Really?
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), QSGLD.
    """

    def __init__(self, temperature, name="Temperature"):
        self.temperature = check_real(
            "temperature",
            temperature,
            minimum=FLOAT32_MIN_NORMAL,
            maximum=FLOAT32_MAX,
            description="a temperature, normal in float32,",
        )
        self.name = name

    def resolution(self, effective_learning_rate):
        """`Qp = 1 / sqrt(24 * lr_eff * T)` as a float32 scalar (inf where `lr_eff = 0`)."""
        lr = ops.cast(effective_learning_rate, "float32")
        # Qp = c / sqrt(lr) with c = 1 / sqrt(24 T), formed as scale * sqrt(b / lr): XLA
        # rewrites c / sqrt(lr) into c * rsqrt(lr), which is not correctly rounded, while a
        # quotient and a square root are, on every backend and mode. c = scale * sqrt(b) with
        # scale a power of two (an exact product) and b in [1, 4), so that b / lr overflows
        # only for a subnormal lr (and 24 lr T, formed directly, would overflow for large T).
        c = 1.0 / math.sqrt(24.0 * self.temperature)
        scale = 2.0 ** math.floor(math.log2(c))
        b = (c / scale) ** 2
        return ops.multiply(scale, ops.sqrt(ops.divide(b, lr)))

    def __repr__(self):
        return f"Temperature({self.temperature!r})"

    def get_config(self):
        return {"temperature": self.temperature, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def temperature_of(resolution, effective_learning_rate):
    """The Langevin temperature `Qp**-2 / (24 lr_eff)` of a grid `Qp` at the effective
    learning rate `lr_eff` (Python floats), 0 where `lr_eff <= 0` (no noise is added)."""
    if effective_learning_rate <= 0:
        return 0.0
    return resolution**-2 / (24.0 * effective_learning_rate)


def resolution_at(resolution, step, effective_learning_rate):
    """`Qp` as a float32 scalar: a `Temperature`'s at the effective learning rate, any
    other resolution's (a schedule, a `Constant`, a callable) at optimizer step `step`."""
    if isinstance(resolution, Temperature):
        return resolution.resolution(effective_learning_rate)
    return ops.cast(resolution(step), "float32")


def check_single_temperature(optimizer):
    """Raises for a `Temperature` given to an optimizer without one temperature (QAdam's
    per-coordinate preconditioning)."""
    if isinstance(optimizer.resolution, Temperature) and not getattr(
        optimizer, "supports_temperature", True
    ):
        raise ValueError(
            f"{type(optimizer).__name__} has no single Langevin temperature (its steps are "
            "preconditioned per coordinate): pass a ResolutionSchedule or a fixed Qp. "
            f"Received: resolution={optimizer.resolution.get_config()}"
        )


def sampling_caveats(optimizer):
    """Why `optimizer` does not sample `exp(-L / T)` at its `Temperature` `T`: a list of
    sentences, empty when it does (a `Temperature` resolution, the dithered rounding and
    nothing else that moves the weights). An optimizer adds its own through
    `extra_sampling_caveats()` (QSGLD: momentum)."""
    if not isinstance(getattr(optimizer, "resolution", None), Temperature):
        return [
            "its resolution is not a Temperature (an annealed or fixed Qp: the temperature "
            "Qp**-2 / (24 lr) changes with the learning rate and the schedule)"
        ]
    caveats = []
    rounding = optimizer.rounding
    if rounding in ("nearest", "floor"):
        caveats.append(
            f"rounding={rounding!r} adds no noise where a step is below half a grid cell "
            '(those increments are exactly 0): use rounding="dithered"'
        )
    elif rounding != "dithered":
        caveats.append(
            f"rounding={rounding!r} adds noise of variance f (1 - f) cells, not 1/12: "
            'use rounding="dithered"'
        )
    if optimizer.compensation is not None:
        caveats.append(
            "the compensation term adds a normalized-gradient step of length gate * lr per "
            "tensor, so the chain is colder than T while the gate is on: use compensation=None"
        )
    if optimizer.clipnorm or optimizer.clipvalue or optimizer.global_clipnorm:
        caveats.append(
            "gradient clipping changes the drift the temperature is measured against"
        )
    if optimizer.use_ema and optimizer.ema_overwrite_frequency:
        caveats.append(
            "ema_overwrite_frequency replaces the chain's weights by their average"
        )
    return caveats + list(optimizer.extra_sampling_caveats())


def warn_unless_sampling(optimizer, stacklevel=3):
    """Warns once, at construction, when a `Temperature` cannot give its temperature."""
    if isinstance(optimizer.resolution, Temperature):
        caveats = sampling_caveats(optimizer)
        if caveats:
            warnings.warn(
                f"{type(optimizer).__name__} with a Temperature does not sample at that "
                "temperature: " + "; ".join(caveats) + ".",
                UserWarning,
                stacklevel=stacklevel,
            )


def caveats_of(optimizer):
    """`sampling_caveats()` of an optimizer that has them (QSGLD, QAdam, a baseline that
    follows the protocol), or one sentence for an optimizer without Langevin noise."""
    method = getattr(optimizer, "sampling_caveats", None)
    if method is None:
        return ["it adds no Langevin noise"]
    return list(method())
