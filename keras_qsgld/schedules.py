"""QSGLD's two schedules: the quantization resolution Qp(t) and the compensation gate s(t).

Both take the optimizer step and measure time in epochs, `t = step / steps_per_epoch`, as
the paper and the authors' code do. They subclass `LearningRateSchedule` only for its
protocol (`__call__(step)`, `get_config`, `from_config`); their values are not learning rates.
"""

import math

import keras
from keras import ops

GATES = ("logistic", "tanh")


def _epochs(step, steps_per_epoch):
    # float64 so that steps near a breakpoint land on the right side of it.
    return ops.divide(ops.cast(step, "float64"), float(steps_per_epoch))


def _check_steps_per_epoch(steps_per_epoch):
    if (
        isinstance(steps_per_epoch, bool)
        or not isinstance(steps_per_epoch, (int, float))
        or not steps_per_epoch > 0
    ):
        raise ValueError(
            "Argument `steps_per_epoch` must be a positive number. "
            f"Received: steps_per_epoch={steps_per_epoch!r}"
        )


@keras.saving.register_keras_serializable(package="keras_qsgld")
class ResolutionSchedule(keras.optimizers.schedules.LearningRateSchedule):
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

    Args:
        eta: float > 0, the scale `eta`. Default `2**19`, the authors' value.
        base: float > 1, the growth factor `b` between resolutions. Default 2.
        steps_per_epoch: number > 0 of optimizer steps per epoch (batches per epoch).
            Default 1, which makes the schedule count in steps.

    Returns (when called with the step): `Qp` as a float32 scalar.

    References:
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), Stochastic Gradient
          Langevin Dynamics Based on Quantization with Increasing Resolution.
    """

    def __init__(self, eta=2.0**19, base=2.0, steps_per_epoch=1, name="ResolutionSchedule"):
        super().__init__()
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 0:
            raise ValueError(f"Argument `eta` must be a positive float. Received: eta={eta!r}")
        if isinstance(base, bool) or not isinstance(base, (int, float)) or not base > 1:
            raise ValueError(f"Argument `base` must be a float > 1. Received: base={base!r}")
        _check_steps_per_epoch(steps_per_epoch)
        self.eta = float(eta)
        self.base = float(base)
        self.steps_per_epoch = steps_per_epoch
        self.name = name

    def exponent(self, step):
        """`p(t) = floor(log_base(ln(t + 2)))` as a float64 scalar."""
        t = _epochs(step, self.steps_per_epoch)
        return ops.floor(ops.divide(ops.log(ops.log(ops.add(t, 2.0))), math.log(self.base)))

    def __call__(self, step):
        with keras.name_scope(self.name):
            p = self.exponent(step)
            return ops.cast(ops.multiply(self.eta, ops.power(self.base, p)), "float32")

    def breakpoints(self, max_epoch):
        """Epochs `e ** (base ** p) - 2` in `(0, max_epoch]` where `Qp` changes (for plots)."""
        p = math.floor(math.log(math.log(2.0), self.base)) + 1
        points = []
        while (t := math.exp(self.base**p) - 2.0) <= max_epoch:
            points.append(t)
            p += 1
        return points

    def get_config(self):
        return {
            "eta": self.eta,
            "base": self.base,
            "steps_per_epoch": self.steps_per_epoch,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_qsgld")
class CompensationSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The gate `s(t)` of QSGLD's compensation term, which switches off around `tau0`.

    ```python
    t = step / steps_per_epoch                     # time in epochs
    s(t) = sigmoid(-kappa * (t - tau0))            # gate="logistic", the paper
    s(t) = (tanh(-kappa * (t - tau0)) + 1) / 2     # gate="tanh", the authors' code
    ```

    The optimizer adds `r = s(t) * lr * h / ||h||` to the step `h` before quantizing: a
    normalized-gradient step of length `s * lr` per tensor that dominates early training
    and is gone about `1 / kappa` epochs after `tau0`. Note that the tanh form equals
    `sigmoid(-2 * kappa * (t - tau0))`: it switches twice as fast.

    Args:
        kappa: float >= 0, the slope per epoch. Default 2 (the authors' value).
        tau0: float, the switch-off time in epochs. The paper uses 0.2 times the epoch
            budget (40 of 200 epochs); the default 10 is that fraction of a 50-epoch run.
            Use `CompensationSchedule.from_budget(epochs)` to set it from your budget.
        steps_per_epoch: number > 0 of optimizer steps per epoch. Default 1.
        gate: `"logistic"` (default, the paper) or `"tanh"` (the authors' code).

    Returns (when called with the step): `s` in [0, 1] as a float32 scalar.

    References:
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), Stochastic Gradient
          Langevin Dynamics Based on Quantization with Increasing Resolution.
    """

    def __init__(
        self, kappa=2.0, tau0=10.0, steps_per_epoch=1, gate="logistic", name="CompensationSchedule"
    ):
        super().__init__()
        if isinstance(kappa, bool) or not isinstance(kappa, (int, float)) or not kappa >= 0:
            raise ValueError(f"Argument `kappa` must be a float >= 0. Received: kappa={kappa!r}")
        if isinstance(tau0, bool) or not isinstance(tau0, (int, float)) or not math.isfinite(tau0):
            raise ValueError(f"Argument `tau0` must be a finite float. Received: tau0={tau0!r}")
        _check_steps_per_epoch(steps_per_epoch)
        if gate not in GATES:
            raise ValueError(f"Argument `gate` must be one of {GATES}. Received: gate={gate!r}")
        self.kappa = float(kappa)
        self.tau0 = float(tau0)
        self.steps_per_epoch = steps_per_epoch
        self.gate = gate
        self.name = name

    @classmethod
    def from_budget(cls, epochs, warmup_fraction=0.2, **kwargs):
        """The paper's choice `tau0 = warmup_fraction * epochs` (0.2 in the paper)."""
        if not 0 <= warmup_fraction <= 1:
            raise ValueError(
                "Argument `warmup_fraction` must be in [0, 1]. "
                f"Received: warmup_fraction={warmup_fraction!r}"
            )
        return cls(tau0=warmup_fraction * epochs, **kwargs)

    def __call__(self, step):
        with keras.name_scope(self.name):
            x = ops.multiply(-self.kappa, ops.subtract(_epochs(step, self.steps_per_epoch), self.tau0))
            if self.gate == "tanh":
                s = ops.divide(ops.add(ops.tanh(x), 1.0), 2.0)
            else:
                s = ops.sigmoid(x)
            return ops.cast(s, "float32")

    def get_config(self):
        return {
            "kappa": self.kappa,
            "tau0": self.tau0,
            "steps_per_epoch": self.steps_per_epoch,
            "gate": self.gate,
            "name": self.name,
        }
