"""Regression done right, on every backend: the guide's recipe (docs/sampling.md, "Regression")
runs as pasted, four chains, and recovers the closed-form posterior of a Bayesian linear
regression within its Monte-Carlo error, which ArviZ's effective sample sizes size."""

import warnings

import arviz as az
import numpy as np
import pytest

from tests.docs import code_block

# Standard errors allowed: with 4 + 4 means and 4 + 4 variances checked, a deviation of 4.5
# standard errors has a chance of about 1e-4 under a correct sampler.
Z = 4.5


@pytest.fixture(scope="module")
def recipe():
    pytest.importorskip("sklearn")
    namespace = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        exec(
            compile(
                code_block("sampling.md", "regression"),
                "docs/sampling.md",
                "exec",
            ),
            namespace,
        )
    namespace["warnings"] = [str(w.message) for w in record]
    return namespace


def test_the_recipe_runs_without_warnings_and_its_chains_mix(recipe, capsys):
    assert not [
        w for w in recipe["warnings"] if "PosteriorSampler" in w or "QSGLD" in w
    ]
    assert [len(s.samples) for s in recipe["samplers"]] == [900] * 4
    summary = recipe["convergence_summary"](recipe["idata"])
    assert max(v["r_hat"] for v in summary.values()) < 1.01
    assert min(v["ess_bulk"] for v in summary.values()) > 400
    mean, variance = recipe["line_mean"], recipe["line_variance"]
    assert mean.shape == variance.shape == (5, 1)
    assert np.all(recipe["predictive_sd"] > recipe["sigma"])


def test_the_samples_recover_the_closed_form_posterior(recipe):
    """Means and the variance along each eigenvector of the posterior precision, against the
    closed form. The chain's own stationary law (Euler scheme, full batches) has the
    posterior mean and the variance `1 / (lambda (1 - lr T lambda / 2))` along eigenvalue
    `lambda`; the tolerance is the Monte-Carlo error (ESS from ArviZ) plus, against the
    exact posterior, that known discretization factor."""
    draws, mean, precision = (
        recipe["draws"],
        recipe["mean"],
        recipe["precision"],
    )
    lr, temperature = 0.05, recipe["T"]
    chains = draws.reshape(4, 900, -1)

    def ess(values):  # values (4 chains, 900 draws)
        return float(az.ess(np.asarray(values)))

    covariance = np.linalg.inv(precision)
    for j in range(len(mean)):
        standard_error = np.sqrt(covariance[j, j] / ess(chains[:, :, j]))
        assert abs(draws[:, j].mean() - mean[j]) < Z * standard_error, j

    eigenvalues, eigenvectors = np.linalg.eigh(precision)
    euler = 1.0 / (1.0 - lr * temperature * eigenvalues / 2)
    for i, (lam, v) in enumerate(zip(eigenvalues, eigenvectors.T)):
        projected = (chains - mean) @ v  # (4, 900) along the direction
        exact = 1.0 / lam
        ratio = np.mean(projected**2) / exact
        # Var(p**2) = 2 var**2 for a Gaussian: the ratio's standard error.
        standard_error = np.sqrt(2.0 / ess(projected**2)) * euler[i]
        assert abs(ratio - euler[i]) < Z * standard_error, (i, ratio, euler[i])
        assert abs(ratio - 1.0) < Z * standard_error + (euler[i] - 1.0), (
            i,
            ratio,
        )
    # A test that can fail: the errors allowed are far below a wrong temperature's (x2).
    assert (
        max(
            np.sqrt(2.0 / ess(((chains - mean) @ v) ** 2))
            for v in eigenvectors.T
        )
        < 0.1
    )
