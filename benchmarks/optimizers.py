"""The optimizers the benchmarks compare, and the Gaussian-noise SGLD baseline.

`OPTIMIZERS` maps a name to an `OptimizerSpec`; `available()` lists those this install can
build. The list is data-driven: the QSGLD rounding modes beyond `"nearest"` (`"stochastic"`,
`"dithered"`, ...) are added for every mode that `keras_qsgld.quantization.ROUNDING_MODES`
offers and that `QSGLD(rounding=mode, seed=...)` accepts.
"""

import dataclasses
import math

import keras
from keras import ops

import keras_qsgld

from keras_qsgld._base import check_resolution, compute_dtype, schedule_value
from keras_qsgld.quantization import ROUNDING_MODES


class GaussianSGLD(keras.optimizers.Optimizer):
    """SGLD with Gaussian noise of QSGLD's per-step variance: the noise QSGLD replaces.

    ```python
    w = w - learning_rate * g + sigma * xi,   xi ~ N(0, 1),   sigma = 1 / (Qp(k) * sqrt(12))
    ```

    `Qp(k)` is the same resolution (schedule) QSGLD uses, so the per-coordinate, per-step
    noise variance `Qp**-2 / 12` equals that of QSGLD's rounding error under the
    white-noise hypothesis (temperature `Qp**-2 / (24 * learning_rate)`). The noise is drawn
    with `keras.random.normal(seed=SeedGenerator)`; the generator's state is tracked as an
    optimizer variable, so it is saved and XLA-compilable. A benchmark baseline, not part of
    the public API.

    Args:
        learning_rate: float >= 0 or a schedule.
        resolution: a float > 0 (fixed `Qp`) or a callable of the step (a `ResolutionSchedule`).
        seed: int seed of the noise.
    """

    def __init__(self, learning_rate=0.01, resolution=2.0**19, seed=0, name="gaussian_sgld", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.resolution = check_resolution(resolution)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed, name="sgld_seed_generator")
        # Not tracked automatically (anchors.md s1.6): track it so it is saved and passed along.
        self._track_variable(self._seed_generator.state)

    def resolution_at(self, step):
        return schedule_value(self.resolution, step)

    def update_step(self, gradient, variable, learning_rate):
        dtype = compute_dtype(variable)
        lr = ops.cast(learning_rate, dtype)
        qp = ops.cast(self.resolution_at(self.iterations), dtype)
        sigma = ops.divide(1.0 / math.sqrt(12.0), qp)
        noise = keras.random.normal(variable.shape, dtype=dtype, seed=self._seed_generator)
        step = ops.subtract(ops.multiply(sigma, noise), ops.multiply(lr, ops.cast(gradient, dtype)))
        self.assign_add(variable, ops.cast(step, variable.dtype))

    def get_config(self):
        config = super().get_config()
        res = self.resolution
        if not isinstance(res, float):
            res = keras.saving.serialize_keras_object(res)
        config.update(resolution=res, seed=self.seed)
        return config


class LeanQSGLD(keras_qsgld.QSGLD):
    """A benchmark-only prototype of a cheaper QSGLD update (momentum 0, deterministic roundings).

    Two changes against `QSGLD`, proposed for the core after measuring them (`speed.py`):

    1. `Qp` and the gate are evaluated once per `apply`, not once per variable (in a graph
       without XLA every variable otherwise repeats the schedules' scalar ops).
    2. The compensated step is one scalar times the gradient: with `h = -lr g`,
       `h + r = -lr (1 + s / ||g||) g`, so `y = c * g` with the scalar
       `c = -Qp lr (1 + s / ||g||)` (`c = -Qp lr` without compensation, `s / ||g|| = 0` where
       `||g|| = 0`). That is 1 norm pass + `c * g`, `+ 1/2`, floor, `/ Qp`, add: fewer full-size
       temporaries than `h`, `r`, `h + r`, `Qp (h + r)`.

    Same maths as QSGLD, but not bitwise: `c * g` rounds differently from `Qp * (h + r)`, which
    can move a value lying within float32 rounding of a half-cell boundary to the next cell.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.momentum != 0 or self.rounding not in ("nearest", "floor"):
            raise ValueError("LeanQSGLD supports momentum=0 and rounding 'nearest' or 'floor' only.")
        self._once = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        import tensorflow as tf

        if not tf.executing_eagerly():  # eager tensors would be captured stale by the XLA path
            step = self._schedule_step()
            self._once = (super().resolution_at(step), super().gate_at(step))
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._once = None

    def resolution_at(self, step):
        return self._once[0] if self._once is not None else super().resolution_at(step)

    def gate_at(self, step):
        return self._once[1] if self._once is not None else super().gate_at(step)

    def update_step(self, gradient, variable, learning_rate):
        dtype = "float64" if keras.backend.standardize_dtype(variable.dtype) == "float64" else "float32"
        g = ops.cast(gradient, dtype)
        lr = ops.cast(learning_rate, dtype)
        step = self._schedule_step()
        qp = ops.cast(self.resolution_at(step), dtype)
        gate = self.gate_at(step)
        factor = 1.0
        if gate is not None:
            norm = ops.sqrt(ops.sum(ops.square(g)))
            positive = ops.greater(norm, 0)
            factor = 1.0 + ops.where(positive, ops.cast(gate, dtype) / ops.where(positive, norm, 1), 0)
        c = -qp * lr * factor
        y = ops.multiply(c, g)
        q = ops.floor(ops.add(y, 0.5)) if self.rounding == "nearest" else ops.floor(y)
        self.assign_add(variable, ops.cast(ops.divide(q, qp), variable.dtype))
        if self.track_noise:
            self._accumulate_noise(y, q)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """How to build one benchmarked optimizer.

    `family` groups optimizers that share a learning-rate grid (`"sgd"` or `"adam"`);
    `tie_lr_to`, when set, names the optimizer whose tuned learning rate this one reuses, so
    that their gap is the effect of the noise alone, at the same learning rate.
    """

    name: str
    label: str
    family: str
    build: object  # callable(lr, steps_per_epoch, epochs, seed) -> optimizer
    tie_lr_to: str = None
    quantized: bool = False
    benchmark_only: bool = False  # a prototype: built by name, not in the default lists


def qsgld_schedules(steps_per_epoch, epochs, eta=2.0**19, kappa=2.0, warmup_fraction=0.2, gate="logistic"):
    """The paper's schedules for a run of `epochs` epochs (tau0 = 0.2 * epochs)."""
    resolution = keras_qsgld.ResolutionSchedule(eta=eta, steps_per_epoch=steps_per_epoch)
    compensation = keras_qsgld.CompensationSchedule.from_budget(
        epochs, warmup_fraction=warmup_fraction, kappa=kappa, steps_per_epoch=steps_per_epoch, gate=gate
    )
    return resolution, compensation


def _qsgld(compensation=True, rounding="nearest", **extra):
    def build(lr, steps_per_epoch, epochs, seed):
        resolution, comp = qsgld_schedules(steps_per_epoch, epochs)
        kwargs = dict(extra)
        if rounding not in ("nearest", "floor"):
            kwargs["seed"] = seed
        return keras_qsgld.QSGLD(
            learning_rate=lr,
            resolution=resolution,
            compensation=comp if compensation else None,
            rounding=rounding,
            **kwargs,
        )

    return build


def _qadam(lr, steps_per_epoch, epochs, seed):
    resolution, comp = qsgld_schedules(steps_per_epoch, epochs)
    return keras_qsgld.QAdam(learning_rate=lr, resolution=resolution, compensation=comp)


def _lean(lr, steps_per_epoch, epochs, seed):
    resolution, comp = qsgld_schedules(steps_per_epoch, epochs)
    return LeanQSGLD(learning_rate=lr, resolution=resolution, compensation=comp)


def _sgld(lr, steps_per_epoch, epochs, seed):
    resolution, _ = qsgld_schedules(steps_per_epoch, epochs)
    return GaussianSGLD(learning_rate=lr, resolution=resolution, seed=seed)


def _base_specs():
    specs = [
        OptimizerSpec("sgd", "SGD", "sgd", lambda lr, spe, ep, seed: keras.optimizers.SGD(lr)),
        OptimizerSpec(
            "sgd_momentum",
            "SGD+momentum 0.9",
            "sgd",
            lambda lr, spe, ep, seed: keras.optimizers.SGD(lr, momentum=0.9),
        ),
        OptimizerSpec("adam", "Adam", "adam", lambda lr, spe, ep, seed: keras.optimizers.Adam(lr)),
        OptimizerSpec(
            "adamw", "AdamW (wd 0.004)", "adam", lambda lr, spe, ep, seed: keras.optimizers.AdamW(lr)
        ),
        OptimizerSpec("qsgld", "QSGLD", "sgd", _qsgld(True), quantized=True),
        OptimizerSpec(
            "qsgd", "QSGLD, compensation off (quantized SGD)", "sgd", _qsgld(False), tie_lr_to="sgd", quantized=True
        ),
        OptimizerSpec("qadam", "QAdam", "adam", _qadam, quantized=True),
        OptimizerSpec("sgld", "Gaussian SGLD (same variance)", "sgd", _sgld, tie_lr_to="sgd"),
    ]
    specs.append(
        OptimizerSpec(
            "qsgld_lean",
            "QSGLD, lean prototype (benchmarks only)",
            "sgd",
            _lean,
            tie_lr_to="qsgld",
            quantized=True,
            benchmark_only=True,
        )
    )
    for mode in extra_rounding_modes():
        specs.append(
            OptimizerSpec(
                f"qsgld_{mode}",
                f"QSGLD, rounding={mode}",
                "sgd",
                _qsgld(True, rounding=mode),
                tie_lr_to="qsgld",
                quantized=True,
            )
        )
    return specs


def extra_rounding_modes():
    """Rounding modes beyond nearest/floor that this install's QSGLD accepts (with `seed=`)."""
    modes = []
    for mode in ROUNDING_MODES:
        if mode in ("nearest", "floor"):
            continue
        try:
            keras_qsgld.QSGLD(rounding=mode, seed=0)
        except (TypeError, ValueError):
            continue
        modes.append(mode)
    return modes


OPTIMIZERS = {spec.name: spec for spec in _base_specs()}

LR_GRIDS = {"sgd": (0.03, 0.1, 0.3, 1.0), "adam": (3e-4, 1e-3, 3e-3, 1e-2)}


def available():
    """Names of the optimizers this install can build, in table order (prototypes excluded)."""
    return [name for name, spec in OPTIMIZERS.items() if not spec.benchmark_only]


def build(name, lr, steps_per_epoch=1, epochs=1, seed=0):
    """Builds the optimizer `name` (a key of `OPTIMIZERS`)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"Argument `name` must be one of {list(OPTIMIZERS)}. Received: name={name!r}")
    return OPTIMIZERS[name].build(lr, steps_per_epoch, epochs, seed)


def parse_optimizers(text, default):
    """A comma-separated list of names, where `all` stands for `available()` -> list of names."""
    if text in (None, "", "default"):
        return list(default)
    names = []
    for token in (n.strip() for n in text.split(",")):
        for name in available() if token == "all" else [token] if token else []:
            if name not in names:
                names.append(name)
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown or not names:
        raise ValueError(
            f"Argument `--optimizers` must be 'all' or names among {list(OPTIMIZERS)}. Received: {text!r}"
        )
    return names
