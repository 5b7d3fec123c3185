"""The benchmarks: every script's `--quick` mode runs and writes its tables (`benchmarks.speed`
on each backend, the TensorFlow scripts on TensorFlow); the Gaussian SGLD baseline and the
shared harness against independent references; one-line errors and Ctrl-C as commands see
them. Nothing here is timed.

`benchmarks` is a folder of the repository run as modules (`python -m benchmarks.speed`);
`tests/conftest.py` puts the repository root on the path.
"""

import importlib
import json
import math
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from benchmarks import common
from benchmarks import optimizers as bopt
from experiments import cli

BACKEND = keras.backend.backend()
ROOT = pathlib.Path(__file__).resolve().parents[2]
TENSORFLOW_SCRIPTS = (
    "quality",
    "global_opt",
    "langevin.diagnostics",
    "cifar",
    "langevin.double_well",
    "eager_xla",
)
# TensorFlow's own C++ log lines (start-up, device probes): not the scripts' output.
TF_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl)"
)


def run_module(module, *args, **kwargs):
    """`python -m benchmarks.MODULE ARGS` from the repository root -> CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def script_lines(stderr):
    """The lines of stderr that the script wrote (TensorFlow's C++ log lines left out)."""
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not TF_LOG_LINE.match(line)
    ]


def _table_rows(path):
    with open(path) as f:
        lines = [
            line for line in f.read().splitlines() if line.startswith("| ")
        ]
    return lines[
        1:
    ]  # without the header (the |---| line does not start with "| ")


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
def test_machine_description_names_the_settings_that_change_timings(
    monkeypatch,
):
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    monkeypatch.setenv("XLA_FLAGS", flag)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    text = common.machine_description(["jax"])
    assert f"XLA_FLAGS={flag}" in text.split("; ")
    assert "OMP_NUM_THREADS=1" in text.split("; ")
    monkeypatch.delenv("XLA_FLAGS")
    assert "XLA_FLAGS" not in common.machine_description(["jax"])


def test_parse_seeds():
    assert common.parse_seeds("3") == [0, 1, 2]
    assert common.parse_seeds("4,9") == [4, 9]
    for bad in ("0", "x", ","):
        with pytest.raises(cli.UserError, match="--seeds"):
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

    first = {}
    times = common.time_interleaved(
        {"a": make("a"), "b": make("b")}, repeats=3, warmup=2, first_calls=first
    )
    assert calls == {"a": 5, "b": 5}
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)
    assert sorted(first) == ["a", "b"] and all(t >= 0 for t in first.values())
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
    assert noise.mean() == pytest.approx(
        0.0, abs=5 * sigma / math.sqrt(noise.size)
    )
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
    from experiments.defaults import DEFAULT_LEARNING_RATE
    from keras_qsgld.schedules import DEFAULT_ETA, DEFAULT_WARMUP_FRACTION

    names = bopt.available()
    for name in (
        "sgd",
        "sgd_momentum",
        "adam",
        "adamw",
        "qsgld",
        "qsgd",
        "qadam",
        "sgld",
    ):
        assert name in names
    assert bopt.EXTRA_ROUNDINGS
    for mode in bopt.EXTRA_ROUNDINGS:
        assert f"qsgld_{mode}" in names
        assert bopt.build(f"qsgld_{mode}", 0.01, 10, 5, seed=0).rounding == mode
    assert bopt.build("qsgd", 0.01, 10, 5).compensation is None
    qsgld = bopt.build("qsgld", 0.01, 10, 5)
    assert qsgld.compensation.tau0 == pytest.approx(DEFAULT_WARMUP_FRACTION * 5)
    assert (
        qsgld.resolution.eta == DEFAULT_ETA
        and qsgld.resolution.steps_per_epoch == 10
    )
    # The ablations' knobs reach the schedules.
    variant = bopt.paper_qsgld(
        0.01,
        10,
        5,
        seed=3,
        compensation=False,
        rounding="dithered",
        eta=2.0**10,
    )
    assert (
        variant.compensation is None
        and variant.rounding == "dithered"
        and variant.resolution.eta == 2.0**10
    )
    assert bopt.default_learning_rate("qadam") == DEFAULT_LEARNING_RATE["qadam"]
    assert (
        bopt.default_learning_rate("qsgld_dithered")
        == DEFAULT_LEARNING_RATE["sgd"]
    )  # its family's
    with pytest.raises(cli.UserError, match="--optimizers"):
        bopt.parse_optimizers("sgd,nope", names)
    with pytest.raises(ValueError, match="name"):
        bopt.build("nope", 0.1)


# -- one-line errors and Ctrl-C, as a command -------------------------------------------------
@pytest.mark.backends(
    "tensorflow"
)  # subprocesses: once, not in every backend's run
@pytest.mark.parametrize(
    "module, args, message",
    [
        (
            "speed",
            ["--rounds", "0"],
            "argument --rounds: expected an integer >= 1, received '0'",
        ),
        (
            "speed",
            ["--backends", "tf"],
            "Argument `--backends` must name backends",
        ),
        ("report", ["--published", "no/such/folder"], "Argument `--published`"),
        ("global_opt", ["--dims", "2,x"], "Argument `--dims`"),
    ],
)
def test_user_error_is_one_line_and_exit_code_2(module, args, message):
    result = run_module(module, *args)
    assert result.returncode == 2, result.stderr
    lines = script_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert (
        lines[0].startswith(f"benchmarks.{module}: error: ")
        and message in lines[0]
    )


@pytest.mark.backends(
    "tensorflow"
)  # a subprocess of each backend: once, not in every run
def test_ctrl_c_is_one_line_that_says_how_to_resume(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) while a backend's own
    process measures: the parent says how to resume, in one line, and exits with 130."""
    args = [
        "--quick",
        "--backends",
        "jax,torch",
        "--tables",
        "apply",
        "--modes",
        "jit,eager",
        "--output-dir",
        str(tmp_path),
        "--force",
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.speed", *args],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        for line in process.stdout:  # wait until the jax process measures
            if "apply: building" in line:
                break
        time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    lines = script_lines(stderr)
    assert len(lines) == 1, stderr
    assert (
        lines[0].startswith("benchmarks.speed: interrupted")
        and "to resume" in lines[0]
    )
    # The command to rerun, without --force (which would recompute what is done).
    assert (
        "python -m benchmarks.speed --quick --backends jax,torch" in lines[0]
        and "--force" not in lines[0]
    )


def test_harness_imports_no_backend():
    """`benchmarks.speed` picks the backend after parsing its arguments: importing it (and the
    shared harness, and describing the machine) imports neither Keras nor a backend."""
    code = (
        "import sys; from benchmarks import common, speed; "
        "print(common.machine_description(['tensorflow', 'jax', 'torch'])); "
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    machine, imported = result.stdout.splitlines()
    assert imported == "[]"
    assert (
        "TensorFlow" in machine
        and "JAX" in machine
        and "PyTorch" in machine
        and "Keras" in machine
    )


@pytest.mark.backends("jax", "torch")
def test_tensorflow_scripts_refuse_another_backend_in_process():
    with pytest.raises(ImportError, match="TensorFlow backend"):
        common.use_tensorflow_backend("benchmarks.quality")


# -- every script's --quick mode ----------------------------------------------------------------
@pytest.mark.backends("tensorflow")
def test_global_opt_functions_against_numpy():
    import tensorflow as tf

    from benchmarks import global_opt

    x = np.array([[0.3, -1.2], [2.0, 0.1]], "float32")
    ref = {
        "rastrigin": 20 + np.sum(x**2 - 10 * np.cos(2 * np.pi * x), -1),
        "ackley": -20 * np.exp(-0.2 * np.sqrt(np.mean(x**2, -1)))
        - np.exp(np.mean(np.cos(2 * np.pi * x), -1))
        + 20
        + np.e,
        "styblinski_tang": 0.5 * np.sum(x**4 - 16 * x**2 + 5 * x, -1),
    }
    grad_st = 0.5 * (4 * x**3 - 32 * x + 5)
    for name, expected in ref.items():
        got = global_opt.value(name, tf.constant(x)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    np.testing.assert_allclose(
        global_opt.gradient("styblinski_tang", tf.constant(x)).numpy(),
        grad_st,
        rtol=1e-5,
    )
    # The minima and the Styblinski-Tang barrier are stationary points of the 1-D function.
    for root in (global_opt.ST_MIN, global_opt.ST_BARRIER):
        assert abs(4 * root**3 - 32 * root + 5) < 1e-5
    assert global_opt.f_star("styblinski_tang", 1) == pytest.approx(
        -39.16617, abs=1e-4
    )


@pytest.mark.backends("tensorflow")
def test_global_opt_quick(tmp_path):
    from benchmarks import global_opt

    out = str(tmp_path / "global")
    (path,) = global_opt.main(
        ["--quick", "--seeds", "1", "--output-dir", out, "--dims", "2"]
    )
    text, _ = _check_table(path, min_rows=3 * len(global_opt.methods()))
    assert "qsgld_anneal" in text and "sgld_fixed" in text
    # Resumable: a second run reads every result back instead of recomputing.
    with open(os.path.join(out, "global.jsonl")) as f:
        n = len(f.readlines())
    global_opt.main(
        ["--quick", "--seeds", "1", "--output-dir", out, "--dims", "2"]
    )
    with open(os.path.join(out, "global.jsonl")) as f:
        assert len(f.readlines()) == n


@pytest.mark.backends("jax")
def test_langevin_cost_quick_linear(tmp_path):
    """The sampling-cost benchmark's --quick mode on the linear problem (its NUTS-free
    table): keras-qsgld's two recipes and blackjax, each a row."""
    pytest.importorskip("blackjax")
    pytest.importorskip("arviz")
    from benchmarks.langevin import cost

    cost.main(["--quick", "--tables", "linear", "--output-dir", str(tmp_path)])
    _, rows = _check_table(str(tmp_path / "linear_jax.md"), min_rows=3)
    assert [r.split(" | ")[0] for r in rows] == [
        f"| {cost.LABELS[c]}" for c in cost.CANDIDATES["jax"]
    ]


@pytest.mark.backends("jax")  # a process of its own: XLA reads its flags once
@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64")
    or shutil.which("objdump") is None,
    reason="counts x86-64 instructions with objdump",
)
def test_xla_code_counts_the_kernels_of_each_update():
    """SGD's update is one elementwise kernel without a floor; QSGLD's has the norm's
    reduction and the rounded update, whose floor is vectorized."""
    result = run_module("xla_code", "--size", "65536")
    assert result.returncode == 0, result.stderr
    header, _, *rows = [
        line for line in result.stdout.splitlines() if line.startswith("|")
    ]
    columns = [c.strip() for c in header.strip("|").split("|")]
    kernels = {}
    for row in rows:
        cells = dict(
            zip(columns, (c.strip() for c in row.strip("|").split("|")))
        )
        kernels.setdefault(cells["update"], {})[cells["kernel"]] = cells
    assert set(kernels) == {"sgd", "qsgld"}
    assert all(k["vector floors"] == "0" for k in kernels["sgd"].values())
    assert any("reduce" in name for name in kernels["qsgld"])
    assert sum(int(k["vector floors"]) for k in kernels["qsgld"].values()) > 0
    assert (
        "XLA_FLAGS" not in result.stdout
    )  # the dump folder is not the machine's


@pytest.mark.backends("tensorflow")
def test_diagnostics_quick(tmp_path):
    from benchmarks.langevin import diagnostics

    paths = diagnostics.main(
        [
            "--quick",
            "--seeds",
            "1",
            "--output-dir",
            str(tmp_path),
            "--coords",
            "64",
        ]
    )
    assert [os.path.basename(p) for p in paths] == [
        "whitenoise.md",
        "stationary.md",
    ]
    _check_table(paths[0], min_rows=3)
    _check_table(paths[1], min_rows=4)
    # Dithered rounding makes the error uniform by construction: the measured stationary
    # variance must match the formula (4096/256 chains: a loose bound, not a timing).
    with open(os.path.join(str(tmp_path), "stationary.jsonl")) as f:
        records = [json.loads(line) for line in f]
    dithered = [r["record"] for r in records if "r=dithered" in r["key"]]
    if dithered:
        for rec in dithered:
            assert rec["var"] / rec["var_formula"] == pytest.approx(
                1.0, abs=0.35
            )


@pytest.mark.backends("tensorflow")
def test_quality_quick(tmp_path):
    from benchmarks import quality

    paths = quality.main(
        ["--quick", "--output-dir", str(tmp_path), "--datasets", "digits"]
    )
    names = [os.path.basename(p) for p in paths]
    assert names == ["quality.md", "ingredients.md", "ablation.md"]
    assert os.path.exists(tmp_path / "lr.md")
    text, _ = _check_table(paths[0], min_rows=2)
    assert "QSGLD" in text and os.path.exists(tmp_path / "quality_digits.png")
    _check_table(paths[1], min_rows=4)
    _check_table(paths[2], min_rows=2)


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param(b, marks=pytest.mark.backends(b))
        for b in ("tensorflow", "jax", "torch")
    ],
)
def test_speed_quick(backend, tmp_path):
    """Every table and mode of this backend, in this process (tiny sizes)."""
    from benchmarks import speed

    out = str(tmp_path)
    paths = speed.main(
        ["--quick", "--backends", backend, "--output-dir", out, "--warmup", "1"]
    )
    assert [os.path.basename(p) for p in paths] == [
        "apply.md",
        "step.md",
        "breakdown.md",
    ]
    apply_modes, step_modes = (
        speed.APPLY_MODES[backend],
        speed.STEP_MODES[backend],
    )
    variants = (
        2 if backend == "tensorflow" else 0
    )  # graph, eager: qsgld again with jit_compile=False
    text, rows = _check_table(
        paths[0], min_rows=2 * len(apply_modes) + variants
    )
    assert all(
        row.startswith(f"| {backend} (") for row in rows
    )  # "| jax (cpu) |": where it ran
    for mode in apply_modes:
        assert f"| {mode} | qsgld |" in text and f"| {mode} | sgd |" in text
    if backend == "tensorflow":
        assert (
            "| graph | qsgld (jit_compile=False) |" in text
            and "| eager | qsgld (jit_compile=False) |" in text
        )
    text, rows = _check_table(paths[1], min_rows=2 * len(step_modes))
    for mode in step_modes:
        assert f"| {mode} | qsgld |" in text
    assert all("| sgd |" in row for row in rows)  # QSGLD's baseline
    text, _ = _check_table(paths[2], min_rows=4 * len(apply_modes))
    assert (
        "per-tensor norms only, one reduction each" in text
        and "QSGLD's two-level sum" in text
    )
    # Resumable: a second run reads every record back instead of measuring again.
    sizes = {
        t: len(open(os.path.join(out, f"{t}.jsonl")).readlines())
        for t in ("apply", "step", "breakdown")
    }
    speed.main(
        ["--quick", "--backends", backend, "--output-dir", out, "--warmup", "1"]
    )
    assert sizes == {
        t: len(open(os.path.join(out, f"{t}.jsonl")).readlines()) for t in sizes
    }


@pytest.mark.backends(
    "tensorflow"
)  # runs JAX and PyTorch in processes of their own: once
def test_speed_gathers_the_backends_into_one_table(tmp_path):
    """Several backends: each measures in a process of its own (resumable per backend), and
    one table holds them all, each with its ratios to SGD of its own run."""
    from benchmarks import speed

    args = [
        "--quick",
        "--backends",
        "jax,torch",
        "--tables",
        "apply",
        "--modes",
        "jit,eager",
        "--output-dir",
        str(tmp_path),
        "--warmup",
        "1",
    ]
    (path,) = speed.main(args)
    text, rows = _check_table(path, min_rows=4)
    assert [row.split(" | ")[0] for row in rows] == ["| jax (cpu)"] * 2 + [
        "| torch (cpu)"
    ] * 2
    assert "| jit | sgd |" in text and "| eager | qsgld |" in text
    assert all(
        row.split(" | ")[6] == "1" for row in rows if "| sgd |" in row
    )  # ratio to SGD
    assert "JAX" in text and "PyTorch" in text  # the machine line names both
    with open(tmp_path / "apply.jsonl") as f:
        stored = f.readlines()
    assert len(stored) == 2  # one record per backend
    speed.main(args)  # resumes: nothing measured again
    with open(tmp_path / "apply.jsonl") as f:
        assert f.readlines() == stored


@pytest.mark.parametrize(
    "script",
    ["speed", "report"]
    + [
        pytest.param(name, marks=pytest.mark.backends("tensorflow"))
        for name in TENSORFLOW_SCRIPTS
    ],
)
def test_every_script_has_help(script, capsys):
    module = importlib.import_module(f"benchmarks.{script}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.backends("tensorflow")
@pytest.mark.backends("tensorflow")
def test_cifar_without_data_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.cifar",
            "--data-dir",
            str(tmp_path / "none"),
            "--output-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("benchmarks.cifar: error: ")
        and "--data-dir" in lines[0]
    )
    assert not (tmp_path / "cifar.md").exists()


@pytest.mark.backends("tensorflow")
def test_cifar_quick_and_report(tmp_path):
    from benchmarks import cifar, report

    published = tmp_path / "published"
    (path,) = cifar.main(
        ["--quick", "--output-dir", str(published / "gpu" / "cifar")]
    )
    text, _ = _check_table(path, min_rows=2)
    assert "synthetic" in text
    output = str(tmp_path / "BENCHMARKS.md")
    _, missing = report.build(str(published), output)
    with open(output) as f:
        md = f.read()
    assert "Short run of the paper's CIFAR protocol" in md
    assert (
        "speed/apply" in missing
        and "gpu/speed/apply" in missing
        and "gpu/cifar/cifar" not in missing
    )
    assert (
        "qsgld_lean" not in md and "LeanQSGLD" not in md
    )  # the removed prototype
