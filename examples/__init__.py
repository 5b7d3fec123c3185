"""The example scripts, importable from the repository root: `python -m examples.fit`.

`fitting` is the training and comparison machinery of `fit.py` and `demo.py`. Python imports
this package before the script, so TensorFlow is loaded here, quietly, when Keras will run on
it (`experiments.quiet_startup`).
"""

from experiments import quiet_startup, require_extra

require_extra("examples")
quiet_startup()
