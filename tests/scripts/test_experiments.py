"""The scripts' kit (`experiments/`): what every script gets on its way to running."""

import importlib.util
import pathlib
import re
import sys

import pytest

import experiments

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, capsys):
    """`python -m tuning.search` without KerasTuner: one line with the extra to install and
    exit code 2 (it was `ModuleNotFoundError: No module named 'keras_tuner'`, exit 1)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "keras_tuner" else real(name, *a),
    )
    monkeypatch.setattr(sys, "argv", ["-m"])
    monkeypatch.setattr(
        sys, "orig_argv", ["python", "-m", "tuning.search", "--smoke"]
    )
    with pytest.raises(SystemExit) as exit_info:
        experiments.require_extra("tuning")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "tuning.search: error: this script needs the 'tuning' extra"
    )
    assert "missing: keras_tuner" in err and 'pip install -e ".[tuning]"' in err
    assert 'e.g. ".[jax,tuning]")' in err


# Distribution names whose module is named otherwise.
MODULE_OF = {
    "tensorflow-datasets": "tensorflow_datasets",
    "scikit-learn": "sklearn",
    "keras-tuner": "keras_tuner",
}


def test_every_extra_of_the_scripts_is_checked():
    """Each package of the scripts' extras in pyproject.toml has its module in
    `experiments.EXTRA_MODULES` (an extra that names another extra brings its modules)."""
    text = (ROOT / "pyproject.toml").read_text()
    for extra in experiments.EXTRA_MODULES:
        block = re.search(rf"^{extra} = \[(.*?)^\]", text, re.M | re.S).group(1)
        for name in re.findall(
            r'"([A-Za-z0-9_.\-\[\],]+?)(?:[<>=!~].*?)?"', block
        ):
            if name.startswith("keras-qsgld["):  # another extra's packages
                inner = name[len("keras-qsgld[") : -1]
                assert set(experiments.EXTRA_MODULES[inner]) <= set(
                    experiments.EXTRA_MODULES[extra]
                ), (extra, inner)
                continue
            module = MODULE_OF.get(name, name.replace("-", "_"))
            assert module in experiments.EXTRA_MODULES[extra], (extra, name)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_tensorflow_is_shown_no_gpu_when_it_only_reads_data(
    monkeypatch, backend
):
    """On JAX and PyTorch the scripts' TensorFlow reads data only: it gets no GPU (no memory
    held there, no CUDA probe printed later); on TensorFlow its devices are left alone."""
    calls = []

    class Config:
        @staticmethod
        def set_visible_devices(devices, kind):
            calls.append((devices, kind))

    fake = type(sys)("tensorflow")
    fake.config = Config
    real_import = importlib.import_module
    monkeypatch.setattr(
        importlib,
        "import_module",
        lambda name, *a: (
            fake if name == "tensorflow" else real_import(name, *a)
        ),
    )
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    for name, expected in ((backend, [([], "GPU")]), ("tensorflow", [])):
        calls.clear()
        monkeypatch.setenv("KERAS_BACKEND", name)
        experiments.import_tensorflow_quietly()
        assert calls == expected, name
