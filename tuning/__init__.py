"""KerasTuner search of QSGLD's hyperparameters: `python -m tuning.search`, from the repository root.

The hypermodel it searches with is `tuning.hypermodel`. Importing this package loads
TensorFlow quietly first, as `examples` does (`experiments.quiet_startup`)."""

from experiments import quiet_startup, require_extra

require_extra("tuning")
quiet_startup()
