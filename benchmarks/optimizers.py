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

from keras_qsgld.backend import BackendQuantizedOptimizer
from keras_qsgld.optimizer import increment_dtype
from keras_qsgld.quantization import ROUNDING_MODES
from keras_qsgld.schedules import DEFAULT_ETA, DEFAULT_KAPPA, DEFAULT_WARMUP_FRACTION


class GaussianSGLD(BackendQuantizedOptimizer):
    """SGLD with Gaussian noise of QSGLD's per-step variance: the noise QSGLD replaces.

    ```python
    w = w - learning_rate * g + sigma * xi,   xi ~ N(0, 1),   sigma = 1 / (Qp(k) * sqrt(12))
    ```

    `Qp(k)` is whatever QSGLD's `resolution` accepts (a schedule, a fixed `Qp`, or a
    `Temperature`, for which `sigma**2 = 2 * lr * T`), evaluated by the same base class, so
    the per-coordinate, per-step noise variance `Qp**-2 / 12` equals that of QSGLD's
    rounding error under the white-noise hypothesis. The noise is drawn with
    `keras.random.normal(seed=SeedGenerator)`, the base class's tracked generator (saved
    and XLA-compilable). A benchmark baseline, not part of the public API.

    Args:
        learning_rate: real number >= 0 or a schedule.
        resolution: as `QSGLD`'s.
        seed: integer seed of the noise.
        rounding: unused (the noise is Gaussian); `"dithered"`, the mode whose noise it matches.
    """

    _default_name = "gaussian_sgld"

    def __init__(self, learning_rate=0.01, resolution=DEFAULT_ETA, seed=0, rounding="dithered", **kwargs):
        super().__init__(learning_rate=learning_rate, resolution=resolution, seed=seed, rounding=rounding, **kwargs)

    def update_step(self, gradient, variable, scalars):
        dtype = increment_dtype(variable)
        lr = ops.cast(scalars.learning_rate, dtype)
        sigma = ops.divide(1.0 / math.sqrt(12.0), ops.cast(scalars.resolution, dtype))
        noise = keras.random.normal(variable.shape, dtype=dtype, seed=self._seed_generator)
        step = ops.subtract(ops.multiply(sigma, noise), ops.multiply(lr, ops.cast(gradient, dtype)))
        self.assign_add(variable, ops.cast(step, variable.dtype))


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


def qsgld_schedules(
    steps_per_epoch, epochs, eta=DEFAULT_ETA, kappa=DEFAULT_KAPPA, warmup_fraction=DEFAULT_WARMUP_FRACTION, gate="logistic"
):
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
