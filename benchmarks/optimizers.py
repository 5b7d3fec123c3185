"""The optimizers the benchmarks compare, and the Gaussian-noise SGLD baseline.

`OPTIMIZERS` maps a name to an `OptimizerSpec`; `available()` lists them in table order.
Besides the paper's deterministic roundings, one `qsgld_<mode>` is listed for every random
rounding mode of `keras_qsgld.quantization.RANDOM_ROUNDING_MODES` (`EXTRA_ROUNDINGS`).
`paper_qsgld` builds QSGLD with the paper's schedules for a run of a given length (the
quality ablations and the noise diagnostics vary its arguments).
"""

import dataclasses
import math

import keras
from keras import ops

import keras_qsgld
from experiments.cli import UserError
from experiments.defaults import DEFAULT_LEARNING_RATE
from keras_qsgld import langevin
from keras_qsgld.langevin import Temperature
from keras_qsgld.optimizer import increment_dtype
from keras_qsgld.quantization import RANDOM_ROUNDING_MODES
from keras_qsgld.schedules import (
    DEFAULT_ETA,
    DEFAULT_KAPPA,
    DEFAULT_WARMUP_FRACTION,
    get_resolution,
)

EXTRA_ROUNDINGS = tuple(
    RANDOM_ROUNDING_MODES
)  # listed as qsgld_<mode>, besides "nearest"


class GaussianSGLD(keras.optimizers.Optimizer):
    """SGLD with Gaussian noise of QSGLD's per-step variance: the noise QSGLD replaces.

    ```python
    w = w - learning_rate * g + sigma * xi,   xi ~ N(0, 1),   sigma = 1 / (Qp(k) * sqrt(12))
    ```

    `Qp(k)` is whatever QSGLD's `resolution` accepts (a schedule, a fixed `Qp`, or a
    `Temperature`, for which `sigma**2 = 2 * lr * T`), evaluated as QSGLD evaluates it
    (`keras_qsgld.langevin.resolution_at`), so the per-coordinate, per-step noise variance
    `Qp**-2 / 12` equals that of QSGLD's rounding error under the white-noise hypothesis.
    The noise is drawn with `keras.random.normal(seed=SeedGenerator)`, a tracked generator
    (saved and XLA-compilable). A benchmark baseline, not part of the public API.

    Args:
        learning_rate: real number >= 0 or a schedule.
        resolution: as `QSGLD`'s.
        seed: integer seed of the noise.
    """

    def __init__(
        self, learning_rate=0.01, resolution=DEFAULT_ETA, seed=0, **kwargs
    ):
        kwargs.setdefault("name", "gaussian_sgld")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.resolution = get_resolution(resolution)
        self.compensation = (
            None  # no compensation term (for the shared caveats)
        )
        self.rounding = "gaussian"
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(
            seed, name=f"{self.name}_seed"
        )
        self._track_variable(self._seed_generator.state)

    def sampling_caveats(self):
        """As QSGLD's (`keras_qsgld.langevin.sampling_caveats`): empty at a `Temperature`."""
        if not isinstance(self.resolution, Temperature):
            return langevin.sampling_caveats(self)
        return []

    def extra_sampling_caveats(self):
        return []

    def update_step(self, gradient, variable, learning_rate):
        dtype = increment_dtype(variable)
        lr = ops.cast(learning_rate, dtype)
        qp = langevin.resolution_at(
            self.resolution, self.iterations, ops.cast(learning_rate, "float32")
        )
        sigma = ops.divide(1.0 / math.sqrt(12.0), ops.cast(qp, dtype))
        noise = keras.random.normal(
            variable.shape, dtype=dtype, seed=self._seed_generator
        )
        step = ops.subtract(
            ops.multiply(sigma, noise),
            ops.multiply(lr, ops.cast(gradient, dtype)),
        )
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


def qsgld_schedules(
    steps_per_epoch,
    epochs,
    eta=DEFAULT_ETA,
    kappa=DEFAULT_KAPPA,
    warmup_fraction=DEFAULT_WARMUP_FRACTION,
    gate="logistic",
):
    """The paper's schedules for a run of `epochs` epochs (tau0 = warmup_fraction * epochs)."""
    resolution = keras_qsgld.ResolutionSchedule(
        eta=eta, steps_per_epoch=steps_per_epoch
    )
    compensation = keras_qsgld.CompensationSchedule.from_budget(
        epochs,
        warmup_fraction=warmup_fraction,
        kappa=kappa,
        steps_per_epoch=steps_per_epoch,
        gate=gate,
    )
    return resolution, compensation


def paper_qsgld(
    lr,
    steps_per_epoch,
    epochs,
    seed,
    compensation=True,
    rounding="nearest",
    **schedule_kwargs,
):
    """QSGLD with the paper's schedules (`qsgld_schedules(**schedule_kwargs)`) for a run of
    `epochs` epochs; `compensation=False` leaves the compensation term out. `seed` seeds the
    random roundings (the deterministic ones draw nothing)."""
    resolution, comp = qsgld_schedules(
        steps_per_epoch, epochs, **schedule_kwargs
    )
    return keras_qsgld.QSGLD(
        learning_rate=lr,
        resolution=resolution,
        compensation=comp if compensation else None,
        rounding=rounding,
        seed=seed,
    )


def _qsgld(compensation=True, rounding="nearest"):
    def build(lr, steps_per_epoch, epochs, seed):
        return paper_qsgld(
            lr,
            steps_per_epoch,
            epochs,
            seed,
            compensation=compensation,
            rounding=rounding,
        )

    return build


def _qadam(lr, steps_per_epoch, epochs, seed):
    resolution, comp = qsgld_schedules(steps_per_epoch, epochs)
    return keras_qsgld.QAdam(
        learning_rate=lr, resolution=resolution, compensation=comp
    )


def _sgld(lr, steps_per_epoch, epochs, seed):
    resolution, _ = qsgld_schedules(steps_per_epoch, epochs)
    return GaussianSGLD(learning_rate=lr, resolution=resolution, seed=seed)


def _base_specs():
    specs = [
        OptimizerSpec(
            "sgd",
            "SGD",
            "sgd",
            lambda lr, spe, ep, seed: keras.optimizers.SGD(lr),
        ),
        OptimizerSpec(
            "sgd_momentum",
            "SGD+momentum 0.9",
            "sgd",
            lambda lr, spe, ep, seed: keras.optimizers.SGD(lr, momentum=0.9),
        ),
        OptimizerSpec(
            "adam",
            "Adam",
            "adam",
            lambda lr, spe, ep, seed: keras.optimizers.Adam(lr),
        ),
        OptimizerSpec(
            "adamw",
            "AdamW (wd 0.004)",
            "adam",
            lambda lr, spe, ep, seed: keras.optimizers.AdamW(lr),
        ),
        OptimizerSpec("qsgld", "QSGLD", "sgd", _qsgld(True), quantized=True),
        OptimizerSpec(
            "qsgd",
            "QSGLD, compensation off (quantized SGD)",
            "sgd",
            _qsgld(False),
            tie_lr_to="sgd",
            quantized=True,
        ),
        OptimizerSpec("qadam", "QAdam", "adam", _qadam, quantized=True),
        OptimizerSpec(
            "sgld",
            "Gaussian SGLD (same variance)",
            "sgd",
            _sgld,
            tie_lr_to="sgd",
        ),
    ]
    for mode in EXTRA_ROUNDINGS:
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


OPTIMIZERS = {spec.name: spec for spec in _base_specs()}

LR_GRIDS = {"sgd": (0.03, 0.1, 0.3, 1.0), "adam": (3e-4, 1e-3, 3e-3, 1e-2)}


def available():
    """Names of the optimizers, in table order."""
    return list(OPTIMIZERS)


def default_learning_rate(name):
    """The optimizer's default learning rate (`experiments.defaults`), or that of
    its family (`"sgd"`, `"adam"`) for the variants the table does not list."""
    return DEFAULT_LEARNING_RATE.get(
        name, DEFAULT_LEARNING_RATE[OPTIMIZERS[name].family]
    )


def build(name, lr, steps_per_epoch=1, epochs=1, seed=0):
    """Builds the optimizer `name` (a key of `OPTIMIZERS`)."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Argument `name` must be one of {list(OPTIMIZERS)}. Received: name={name!r}"
        )
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
        raise UserError(
            f"Argument `--optimizers` must be 'all' or names among {list(OPTIMIZERS)}. Received: {text!r}"
        )
    return names
