"""What the package is: the library alone, importable without the scripts' dependencies, with
its public names where users import them."""

import subprocess
import sys
import zipfile

import pytest

from tests.programs import runner


def test_import_loads_neither_tensorflow_nor_the_scripts_dependencies():
    """`import keras_qsgld` adds no TensorFlow, KerasTuner, matplotlib, scikit-learn,
    tensorflow-datasets, ArviZ or the scripts' kit to what `import keras` loaded (Keras on
    TensorFlow imports TensorFlow itself; on JAX it imports matplotlib and scikit-learn)."""
    code = (
        "import sys\n"
        "import keras\n"
        "before = set(sys.modules)\n"
        "import keras_qsgld\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "heavy = {'tensorflow', 'keras_tuner', 'matplotlib', 'sklearn', "
        "'tensorflow_datasets', 'experiments', 'torch', 'jax', 'arviz'}\n"
        "print(sorted(new & heavy))\n"
    )
    result = runner.capture("-c", code)
    assert result.returncode == 0, result.stderr
    # PyTorch's backend module imports torch, which Keras on PyTorch has imported already.
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_public_names_keep_their_import_paths():
    """Names users import, where they imported them before the package was reorganised."""
    import keras_qsgld
    from keras_qsgld import langevin, sampling, schedules

    assert (
        schedules.Temperature is langevin.Temperature is keras_qsgld.Temperature
    )
    assert sampling.PosteriorSampler is keras_qsgld.PosteriorSampler
    assert sampling.posterior_predictive is keras_qsgld.posterior_predictive
    from keras_qsgld.sampling import (  # noqa: F401
        BURN_IN_UNITS,
        TASKS,
        sample_file_name,
    )
    from keras_qsgld.schedules import Temperature  # noqa: F401

    for name in keras_qsgld.__all__:
        assert getattr(keras_qsgld, name) is not None, name


@pytest.mark.backends("tensorflow")  # one build is enough; it needs no backend
def test_the_wheel_holds_the_library_only(tmp_path):
    """`pip wheel .` packs `keras_qsgld/` and nothing of the scripts' kit."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(runner.ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("keras_qsgld-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.endswith(".dist-info/")}
    top = {t for t in top if not t.endswith(".dist-info")}
    assert top == {"keras_qsgld"}, top
    assert "keras_qsgld/backend/torch/eager.py" in names
    assert not [
        n for n in names if "experiments" in n or n.startswith("tests/")
    ]
