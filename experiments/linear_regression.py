"""Bayesian linear regression on scikit-learn's diabetes data, in closed form: the exact
posterior that `examples/regression.py` and the sampling-cost benchmark
(`benchmarks/langevin/cost.py`) measure their chains against.

The model: `y = [x, 1] @ theta + noise`, noise `N(0, noise_std**2)`, prior
`theta ~ N(0, prior_std**2 I)`. Its posterior is Gaussian with precision
`D^T D / noise_std**2 + I / prior_std**2` (`D = [x, 1]`, the design) and mean
`precision^-1 D^T y / noise_std**2`.
"""

import numpy as np


def diabetes():
    """Standardized features `(442, 10)` and target `(442,)`, float64."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = (y - y.mean()) / y.std()
    return x, y


def least_squares_noise_std(x, y):
    """The residual standard deviation of the least-squares fit (with an intercept)."""
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    return float(np.sqrt(residual @ residual / (len(y) - design.shape[1])))


def exact_posterior(x, y, noise_std, prior_std):
    """The closed-form posterior of `[w, b]`: its mean and precision matrix."""
    design = np.c_[x, np.ones(len(x))]
    precision = (
        design.T @ design / noise_std**2
        + np.eye(design.shape[1]) / prior_std**2
    )
    mean = np.linalg.solve(precision, design.T @ y / noise_std**2)
    return mean, precision
