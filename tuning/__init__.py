"""KerasTuner search of QSGLD's hyperparameters: `python -m tuning.search` (or `python tuning/search.py`).

The hypermodel it searches with is `keras_qsgld.experiments.hypermodel`. Importing this
package loads TensorFlow quietly first, as `examples` does (see `examples.quiet_startup`)."""

from examples import quiet_startup

quiet_startup()
