"""The example scripts, importable from the repository root: `python -m examples.fit`.

Python imports this package before the script, so this is where TensorFlow is loaded when
Keras will run on it, with stderr closed: TensorFlow 2.21 prints its start-up lines (oneDNN,
the CUDA probe) before it reads `TF_CPP_MIN_LOG_LEVEL`, and they would precede a script's
one-line error message. `tuning` and `benchmarks` use the same function.
"""

import importlib
import importlib.util
import os
import sys


def import_tensorflow_quietly():
    """Imports TensorFlow (if installed and not imported yet) with stderr closed, unless
    `TF_CPP_MIN_LOG_LEVEL` is 0 or empty (set to 2 if unset): a user who asks for
    TensorFlow's logs gets them. Errors are raised as usual (with their message)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] in (
        "",
        "0",
    ):
        return
    if importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def quiet_startup():
    """`import_tensorflow_quietly()` when Keras will run on TensorFlow (the default)."""
    if (
        os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow"
        and "keras" not in sys.modules
    ):
        import_tensorflow_quietly()


# Only while Python imports this package on its way to a script (`python -m examples.<script>`:
# sys.argv[0] is "-m" until the script itself runs), not when a test or another script
# imports a function from it and chooses its backend itself.
if sys.argv[:1] == ["-m"]:
    quiet_startup()
