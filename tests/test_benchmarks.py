"""The benchmarks: every script's `--quick` mode runs and writes its tables; the Gaussian SGLD
baseline and the shared harness against independent references. Nothing here is timed."""

import json
import math
import os
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("scipy")

# `benchmarks` is a folder of the repository, not an installed package: make it importable
# also when pytest is run as a plain command (not `python -m pytest` from the root).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks import optimizers as bopt  # noqa: E402


def _table_rows(path):
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.startswith("| ")]
    return lines[1:]  # without the header (the |---| line does not start with "| ")


def _check_table(path, min_rows=1):
    assert os.path.exists(path), path
    with open(path) as f:
        text = f.read()
    assert "Command: `" in text and "Machine: " in text
    rows = _table_rows(path)
    assert len(rows) >= min_rows, text
    assert os.path.exists(path[:-3] + ".csv")
    return text, rows


# -- the harness ---------------------------------------------------------------------------
def test_parse_seeds():
    assert common.parse_seeds("3") == [0, 1, 2]
    assert common.parse_seeds("4,9") == [4, 9]
    for bad in ("0", "x", ","):
        with pytest.raises(ValueError, match="--seeds"):
            common.parse_seeds(bad)


def test_median_and_mean_std_against_numpy(rng):
    for n in (1, 2, 5, 6):
        values = list(rng.normal(size=n))
        assert common.median(values) == pytest.approx(float(np.median(values)))
        m, s = common.mean_std(values)
        assert m == pytest.approx(float(np.mean(values)))
        if n > 1:
            assert s == pytest.approx(float(np.std(values, ddof=1)))
        else:
            assert math.isnan(s)


def test_time_interleaved_calls_each_function_as_asked():
    calls = {"a": 0, "b": 0}

    def make(name):
        def fn():
            calls[name] += 1

        return fn

    times = common.time_interleaved({"a": make("a"), "b": make("b")}, repeats=3, warmup=2)
    assert calls == {"a": 5, "b": 5}
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    with pytest.raises(ValueError, match="repeats"):
        common.time_interleaved({"a": make("a")}, repeats=0)


def test_result_store_resumes_and_forces(tmp_path):
    store = common.ResultStore(str(tmp_path), "t")
    key = store.make_key(opt="qsgld", seed=1)
    assert store.get(key) is None
    store.put(key, {"acc": 0.5})
    again = common.ResultStore(str(tmp_path), "t")
    assert again.get(key) == {"acc": 0.5}
    assert again.get(key, force=True) is None  # not computed by this process
    again.put(key, {"acc": 0.7})
    assert again.get(key, force=True) == {"acc": 0.7}
    assert common.ResultStore(str(tmp_path), "t", force=True).get(key) is None


# -- the Gaussian SGLD baseline -------------------------------------------------------------
def test_gaussian_sgld_step_and_variance():
    qp, lr = 2.0**6, 0.1
    var = keras.Variable(np.zeros(20000, "float32"))
    grad = np.full(20000, 0.5, "float32")
    opt = bopt.GaussianSGLD(learning_rate=lr, resolution=qp, seed=3)
    opt.apply([keras.ops.convert_to_tensor(grad)], [var])
    step = keras.ops.convert_to_numpy(var) - 0.0
    noise = step + lr * grad  # NumPy reference: w1 = w0 - lr g + sigma xi
    sigma = 1.0 / (qp * math.sqrt(12.0))
    assert noise.mean() == pytest.approx(0.0, abs=5 * sigma / math.sqrt(noise.size))
    # Sample variance of 20000 normals: relative standard error sqrt(2 / n) = 1%.
    assert noise.var() == pytest.approx(sigma**2, rel=0.05)
    # The seed generator's state is an optimizer variable (saved, advanced every step).
    assert any("seed" in v.path for v in opt.variables)


def test_gaussian_sgld_is_seeded_and_rejects_bad_resolution():
    def run(seed):
        v = keras.Variable(np.zeros(64, "float32"))
        opt = bopt.GaussianSGLD(learning_rate=0.0, resolution=8.0, seed=seed)
        for _ in range(2):
            opt.apply([keras.ops.zeros((64,))], [v])
        return keras.ops.convert_to_numpy(v)

    a, b, c = run(1), run(1), run(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="resolution"):
        bopt.GaussianSGLD(resolution=-1.0)


def test_optimizer_list_is_data_driven():
    names = bopt.available()
    for name in ("sgd", "sgd_momentum", "adam", "adamw", "qsgld", "qsgd", "qadam", "sgld"):
        assert name in names
    for mode in bopt.extra_rounding_modes():
        assert f"qsgld_{mode}" in names
        assert bopt.build(f"qsgld_{mode}", 0.01, 10, 5, seed=0).rounding == mode
    assert bopt.build("qsgd", 0.01, 10, 5).compensation is None
    assert bopt.build("qsgld", 0.01, 10, 5).compensation.tau0 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="--optimizers"):
        bopt.parse_optimizers("sgd,nope", names)
    with pytest.raises(ValueError, match="name"):
        bopt.build("nope", 0.1)


# -- every script's --quick mode ----------------------------------------------------------------
def test_global_opt_functions_against_numpy():
    import tensorflow as tf

    from benchmarks import global_opt

    x = np.array([[0.3, -1.2], [2.0, 0.1]], "float32")
    ref = {
        "rastrigin": 20 + np.sum(x**2 - 10 * np.cos(2 * np.pi * x), -1),
        "ackley": -20 * np.exp(-0.2 * np.sqrt(np.mean(x**2, -1)))
        - np.exp(np.mean(np.cos(2 * np.pi * x), -1)) + 20 + np.e,
        "styblinski_tang": 0.5 * np.sum(x**4 - 16 * x**2 + 5 * x, -1),
    }
    grad_st = 0.5 * (4 * x**3 - 32 * x + 5)
    for name, expected in ref.items():
        got = global_opt.value(name, tf.constant(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(global_opt.gradient("styblinski_tang", tf.constant(x)).numpy(), grad_st, rtol=1e-5)
    # The minima and the Styblinski-Tang barrier are stationary points of the 1-D function.
    for root in (global_opt.ST_MIN, global_opt.ST_BARRIER):
        assert abs(4 * root**3 - 32 * root + 5) < 1e-5
    assert global_opt.f_star("styblinski_tang", 1) == pytest.approx(-39.16617, abs=1e-4)


def test_global_opt_quick(tmp_path):
    from benchmarks import global_opt

    out = str(tmp_path / "global")
    (path,) = global_opt.main(["--quick", "--seeds", "1", "--output-dir", out, "--dims", "2"])
    text, rows = _check_table(path, min_rows=3 * len(global_opt.methods(None)))
    assert "qsgld_anneal" in text and "sgld_fixed" in text
    # Resumable: a second run reads every result back instead of recomputing.
    with open(os.path.join(out, "global.jsonl")) as f:
        n = len(f.readlines())
    global_opt.main(["--quick", "--seeds", "1", "--output-dir", out, "--dims", "2"])
    with open(os.path.join(out, "global.jsonl")) as f:
        assert len(f.readlines()) == n


def test_diagnostics_quick(tmp_path):
    from benchmarks import diagnostics

    paths = diagnostics.main(["--quick", "--seeds", "1", "--output-dir", str(tmp_path), "--coords", "64"])
    assert [os.path.basename(p) for p in paths] == ["whitenoise.md", "stationary.md"]
    _, rows = _check_table(paths[0], min_rows=3)
    _, rows = _check_table(paths[1], min_rows=4)
    # Dithered rounding makes the error uniform by construction: the measured stationary
    # variance must match the formula (4096/256 chains: a loose bound, not a timing).
    with open(os.path.join(str(tmp_path), "stationary.jsonl")) as f:
        records = [json.loads(line) for line in f]
    dithered = [r["record"] for r in records if "r=dithered" in r["key"]]
    if dithered:
        for rec in dithered:
            assert rec["var"] / rec["var_formula"] == pytest.approx(1.0, abs=0.35)


def test_quality_quick(tmp_path):
    from benchmarks import quality

    paths = quality.main(["--quick", "--output-dir", str(tmp_path), "--datasets", "digits"])
    names = [os.path.basename(p) for p in paths]
    assert names == ["quality.md", "ingredients.md", "ablation.md"]
    assert os.path.exists(tmp_path / "lr.md")
    text, rows = _check_table(paths[0], min_rows=2)
    assert "QSGLD" in text and os.path.exists(tmp_path / "quality_digits.png")
    _check_table(paths[1], min_rows=4)
    _check_table(paths[2], min_rows=2)


def test_speed_quick(tmp_path):
    from benchmarks import speed

    paths = speed.main(["--quick", "--output-dir", str(tmp_path), "--warmup", "1"])
    text, rows = _check_table(paths[0], min_rows=2 * 3)
    assert "qsgld" in text and "xla" in text and "graph" in text
    _check_table(paths[1], min_rows=3)
    text, _ = _check_table(paths[2], min_rows=6)
    assert "per-tensor norms only" in text


@pytest.mark.parametrize("script", ["speed", "quality", "global_opt", "diagnostics", "cifar", "report"])
def test_every_script_has_help(script, capsys):
    import importlib

    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "--output" in capsys.readouterr().out


def test_cifar_quick_and_report(tmp_path):
    from benchmarks import cifar, report

    published = tmp_path / "published"
    (path,) = cifar.main(["--quick", "--output-dir", str(published / "gpu" / "cifar")])
    text, rows = _check_table(path, min_rows=2)
    assert "synthetic" in text
    output = str(tmp_path / "BENCHMARKS.md")
    _, missing = report.build(str(published), output)
    with open(output) as f:
        md = f.read()
    assert "Short run of the paper's CIFAR protocol" in md
    assert "speed/apply" in missing and "gpu/speed/apply" in missing and "gpu/cifar/cifar" not in missing
