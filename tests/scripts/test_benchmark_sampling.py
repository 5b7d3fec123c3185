"""`benchmarks.sampling --quick`: it runs, writes every table with the rows and columns it
should, and the numbers show what a sampler shows and a frozen chain does not (dithered
snapshots differ, QSGLD nearest at a temperature's Qp freezes); a rerun resumes without
recomputing; a bad argument is one line and exit code 2.

The script runs on the JAX backend in a process of its own (it sets `KERAS_BACKEND`
itself), so this test runs it as a command whatever backend this process has.
"""

import csv
import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backends("tensorflow")  # the script pins its backend

ROOT = pathlib.Path(__file__).resolve().parents[2]
TABLES = ("lr", "posterior", "significance", "signatures", "toy2d")


def run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("KERAS_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.sampling", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def number(cell):
    """The mean of a `mean ± std` cell, or a plain number."""
    return float(cell.split("±")[0].split("(")[0].strip())


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sampling")
    result = run("--quick", "--datasets", "digits", "--output-dir", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_quick_writes_every_table(quick_run):
    out, result = quick_run
    for table in TABLES:
        text = (out / f"{table}.md").read_text()
        assert (
            "Command: `python -m benchmarks.sampling --quick" in text
            and "Machine: " in text
        ), table
        assert (out / f"{table}.csv").exists(), table
    assert (out / "toy2d.png").exists() and (
        out / "reliability_digits.png"
    ).exists()
    assert (
        "backend jax" in result.stdout
    )  # the progress lines say where it runs


def test_posterior_rows_and_columns(quick_run):
    out, _ = quick_run
    headers, rows = read_csv(out / "posterior.csv")
    assert headers == [
        "data set",
        "chain start, lr",
        "predictions",
        "epochs",
        "accuracy % (mean ± std)",
        "NLL (mean ± std)",
        "ECE (mean ± std)",
        "Brier (mean ± std)",
        "ΔNLL vs SGD (p)",
        "ΔNLL vs no-noise chain (p)",
    ]
    labels = [(r[1].split(",")[0], r[2].split(":")[0]) for r in rows]
    chains = [
        "no noise (snapshot ensemble)",
        "QSGLD dithered, T = 1/N",
        "Gaussian SGLD, T = 1/N",
        "QSGLD nearest (same Qp), T = 1/N",
    ]
    assert labels == (
        [
            ("-", "SGD final weights"),
            ("-", "deep ensemble of 2 SGD runs"),
            (
                "warm",
                "SGD 2 epochs, then 4 at the chain's rate (no-noise chain's last iterate)",
            ),
        ]
        + [("warm", c) for c in chains]
        + [("scratch", c) for c in chains]
    )
    assert (
        len({r[1] for r in rows if r[1] != "-"}) == 2
    )  # warm and scratch, each at its rate
    for row in rows:
        assert (
            0 <= number(row[4]) <= 100 and number(row[5]) > 0
        )  # accuracy %, NLL
        assert (
            0 <= number(row[6]) <= 1 and 0 <= number(row[7]) <= 2
        )  # ECE, Brier
    epochs = {
        r[2].split(":")[0]: r[3] for r in rows if not r[1].startswith("scratch")
    }
    assert (
        epochs["SGD final weights"] == "2"
        and epochs["deep ensemble of 2 SGD runs"] == "2 x 2 = 4"
    )
    _, sig = read_csv(out / "significance.csv")
    assert len(sig) == len(rows) - 1  # every row but SGD's own


def test_signatures_tell_a_sampler_from_a_frozen_chain(quick_run):
    out, _ = quick_run
    headers, rows = read_csv(out / "signatures.csv")
    col = {h: i for i, h in enumerate(headers)}
    by = {
        (r[col["chain start, lr"]].split(",")[0], r[col["chain"]]): r
        for r in rows
    }
    dithered = by[("warm", "QSGLD dithered, T = 1/N")]
    nearest = by[("warm", "QSGLD nearest (same Qp), T = 1/N")]
    gaussian = by[("warm", "Gaussian SGLD, T = 1/N")]
    none = by[("warm", "no noise (snapshot ensemble)")]
    diversity = col["diversity (Δ)"]
    assert number(dithered[diversity]) > 10 * number(nearest[diversity])
    assert (
        number(dithered[diversity]) > 0.01
        and number(gaussian[diversity]) > 0.01
    )
    assert number(none[diversity]) >= 0  # Jensen
    assert (
        number(nearest[col["zero increments"]]) > 0.9
    )  # the dead zone: nearest freezes
    assert number(dithered[col["zero increments"]]) < 0.01
    ratio = headers.index("drift / predicted")  # the whole chain's
    assert (
        0.5 < number(dithered[ratio]) < 1.5
        and 0.5 < number(gaussian[ratio]) < 1.5
    )
    assert number(nearest[ratio]) < 0.1


def test_toy2d_dithered_samples_and_nearest_freezes(quick_run):
    out, _ = quick_run
    headers, rows = read_csv(out / "toy2d.csv")
    col = {h: i for i, h in enumerate(headers)}
    tv = col["TV distance (2-D histogram)"]
    for target in ("banana", "mixture"):
        by = {r[col["sampler"]]: r for r in rows if r[col["target"]] == target}
        assert set(by) == {
            "exact i.i.d. draws (floor)",
            "QSGLD dithered",
            "Gaussian SGLD (same T)",
            "QSGLD nearest (same Qp)",
        }
        floor = number(by["exact i.i.d. draws (floor)"][tv])
        for sampler in ("QSGLD dithered", "Gaussian SGLD (same T)"):
            assert number(by[sampler][tv]) < floor + 0.15, (target, sampler)
        assert number(by["QSGLD nearest (same Qp)"][tv]) > 0.5
        assert (
            number(by["QSGLD nearest (same Qp)"][col["zero increments"]]) > 0.99
        )


def test_rerun_resumes_without_recomputing(quick_run):
    out, _ = quick_run
    result = run(
        "--quick",
        "--datasets",
        "digits",
        "--output-dir",
        str(out),
        "--tables",
        "posterior,toy2d",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    computed = [
        line
        for line in result.stdout.splitlines()
        if " seed " in line and "wrote" not in line
    ]
    assert computed == [], computed


def test_bad_argument_is_one_line():
    result = run("--quick", "--datasets", "cifar10")
    assert result.returncode == 2
    lines = [
        line
        for line in result.stderr.splitlines()
        if line.startswith("benchmarks.sampling")
    ]
    assert len(lines) == 1 and "--datasets" in lines[0]


def test_help():
    result = run("--help")
    assert (
        result.returncode == 0
        and "usage:" in result.stdout
        and "--settings" in result.stdout
    )
