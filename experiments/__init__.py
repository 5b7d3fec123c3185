"""What the example, tuning and benchmark scripts share (repository only: not in the wheel).

It is not needed to use the optimizers: it serves the scripts under `examples/`, `tuning/` and
`benchmarks/`, and needs the `examples` extra (tensorflow-datasets, scikit-learn, mnist1d,
matplotlib). Importing this package imports neither Keras nor TensorFlow, so the benchmark
harness can pick a backend per process.

- `datasets`: the data sets as `tf.data` pipelines (on every backend), the resumed training
  stream, the validation hold-out;
- `models`: the paper's models and small ones for the offline data sets;
- `defaults`: the one table of default models, learning rates and the paper's presets;
- `linear_regression`: the diabetes regression's closed-form posterior, for the regression
  example and the sampling-cost benchmark;
- `cli`: the one command-line kit of every script: one-line errors (exit code 2), Ctrl-C (exit
  code 130), argument types, the QSGLD flags;
- here: `require_extra`, `import_tensorflow_quietly` and `quiet_startup`, which the script
  packages run on the way to a script.
"""

import importlib
import importlib.util
import os
import sys


def import_tensorflow_quietly():
    """Imports TensorFlow (if installed and not imported yet) with stderr closed, unless
    `TF_CPP_MIN_LOG_LEVEL` is 0 or empty (set to 2 if unset): a user who asks for
    TensorFlow's logs gets them. Errors are raised as usual (with their message).

    TensorFlow 2.21 prints its start-up lines (oneDNN, the CUDA probe) before it reads
    `TF_CPP_MIN_LOG_LEVEL`, and they would precede a script's one-line error message.
    When Keras runs on another backend, TensorFlow only reads data (`tf.data`): it is shown
    no GPU, so that it neither holds GPU memory that JAX or PyTorch need nor, on a machine
    without a GPU driver, prints its failed CUDA probe ("failed call to cuInit") later.
    """
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
            tf = importlib.import_module("tensorflow")
            if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
                tf.config.set_visible_devices([], "GPU")
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# The modules each script family's extra (pyproject.toml) brings: a script that misses one
# says which extra to install, in one line.
EXTRA_MODULES = {
    "diagnostics": ("arviz",),
    "examples": (
        "tensorflow",
        "tensorflow_datasets",
        "importlib_resources",
        "matplotlib",
        "sklearn",
        "mnist1d",
        "tensorboard",
        "arviz",
    ),
}
EXTRA_MODULES["tuning"] = EXTRA_MODULES["examples"] + ("keras_tuner", "scipy")
EXTRA_MODULES["benchmarks"] = EXTRA_MODULES["examples"] + ("scipy",)
EXTRA_MODULES["peers"] = EXTRA_MODULES["benchmarks"] + (
    "blackjax",
    "posteriors",
)


def require_extra(extra):
    """On the way to a script (`python -m PACKAGE.SCRIPT`), ends it with one line naming
    the extra to install, and exit code 2, when a module of `extra` is missing."""
    if sys.argv[:1] != ["-m"]:
        return
    missing = [
        m for m in EXTRA_MODULES[extra] if importlib.util.find_spec(m) is None
    ]
    if not missing:
        return
    argv = getattr(sys, "orig_argv", [])
    prog = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else extra
    print(
        f"{prog}: error: this script needs the '{extra}' extra, which is not installed "
        f'(missing: {", ".join(missing)}): pip install -e ".[{extra}]" '
        f'(with your backend\'s extra too, e.g. ".[jax,{extra}]")',
        file=sys.stderr,
    )
    raise SystemExit(2)


def quiet_startup():
    """What a script package runs while Python imports it on the way to a script
    (`python -m examples.fit`: `sys.argv[0]` is "-m" until the script itself runs), not when
    a test or another script imports a function from it and picks its backend itself:
    `import_tensorflow_quietly()`, on every backend (the scripts read their data with
    `tf.data`). On PyTorch, torch is imported first: TensorFlow and then torch in one
    process has crashed."""
    if sys.argv[:1] != ["-m"] or "keras" in sys.modules:
        return
    if os.environ.get("KERAS_BACKEND") == "torch" and importlib.util.find_spec(
        "torch"
    ):
        importlib.import_module("torch")
    import_tensorflow_quietly()
