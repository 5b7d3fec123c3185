"""keras-qsgld: QSGLD (arXiv 2305.18864) as Keras 3 optimizers, on every Keras backend."""

from keras_qsgld import (  # noqa: F401
    calibration,
    callbacks,
    langevin,
    losses,
    sampling,
)
from keras_qsgld.callbacks import QSGLDMonitor
from keras_qsgld.langevin import Temperature
from keras_qsgld.qadam import QAdam
from keras_qsgld.qsgld import QSGLD
from keras_qsgld.quantization import (
    RANDOM_ROUNDING_MODES,
    ROUNDING_MODES,
    compensated_step,
    compensation_term,
    increment_and_error,
    quantize,
    quantized_increment,
    scaled_step,
    sum_of_squares,
)
from keras_qsgld.sampling import PosteriorSampler, posterior_predictive
from keras_qsgld.schedules import (
    CompensationSchedule,
    Constant,
    ResolutionSchedule,
)

__version__ = "0.2.0"

__all__ = [
    "QSGLD",
    "QAdam",
    "ResolutionSchedule",
    "CompensationSchedule",
    "Temperature",
    "Constant",
    "quantize",
    "quantized_increment",
    "compensation_term",
    "scaled_step",
    "compensated_step",
    "increment_and_error",
    "sum_of_squares",
    "ROUNDING_MODES",
    "RANDOM_ROUNDING_MODES",
    "QSGLDMonitor",
    "PosteriorSampler",
    "posterior_predictive",
]
