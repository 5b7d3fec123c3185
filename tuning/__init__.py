"""KerasTuner search of QSGLD's hyperparameters: `python -m tuning.search` (or `python tuning/search.py`).

The hypermodel it searches with is `keras_qsgld.experiments.hypermodel`. Importing this
package loads TensorFlow quietly first, as `examples` does (see `examples.quiet_startup`)."""

import sys

from examples import quiet_startup

# Only while Python imports this package on its way to a script (`python -m tuning.<script>`:
# sys.argv[0] is "-m" until the script itself runs), not when a test or another script
# imports a function from it and chooses its backend itself.
if sys.argv[:1] == ["-m"]:
    quiet_startup()
