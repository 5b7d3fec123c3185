"""Gaussian likelihoods as Keras losses, for sampling regression posteriors.

A sampling run at temperature `T` draws from `exp(-L(w) / T)`, where `L` is the loss Keras
minimises: the mean over the `N` training examples of a per-example loss. At `T = 1 / N`
that is the Bayesian posterior only if the per-example loss is the example's negative
log-likelihood. For classification, `sparse_categorical_crossentropy` is. For regression,
`loss="mse"` is not: `N * MSE` is the negative log-likelihood of Gaussian noise of variance
`1/2` in the units of `y`, whatever the data, so `Temperature(1 / N)` with `"mse"` samples the
posterior of a model whose noise sd is `0.707`. `GaussianNegativeLogLikelihood` is the loss
to sample with: for a known noise standard deviation `sigma` (homoscedastic), or for a
model that predicts a variance per example (heteroscedastic).
"""

import math

import keras
import numpy as np
from keras import ops

from keras_qsgld.validation import check_real

_HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)


@keras.saving.register_keras_serializable(package="keras_qsgld")
class GaussianNegativeLogLikelihood(keras.losses.Loss):
    """Negative log-likelihood of the targets under Gaussian noise, in nats per example.

    Per example, summed over its output entries `j` (independent Gaussians):

    ```
    # noise_std=sigma (homoscedastic): y_pred is the mean
    nll = sum_j [ (y_j - mean_j)**2 / (2 sigma**2) + log(sigma) + log(2 pi) / 2 ]
    # noise_std=None (heteroscedastic): y_pred[..., 0] is the mean, y_pred[..., 1] the variance
    nll = sum_j [ (y_j - mean_j)**2 / (2 var_j) + log(var_j) / 2 + log(2 pi) / 2 ]
    ```

    and, as every Keras loss, averaged over the examples of a batch. So a sampling run
    with `resolution=keras_qsgld.Temperature(1 / N)` over `N` training examples samples the
    Bayesian posterior of the regression model with this likelihood (and the prior its
    weight decay sets, docs/sampling.md). The constant terms change no gradient; they make
    the value the true negative log-likelihood, comparable with
    `keras_qsgld.calibration.gaussian_negative_log_likelihood` (which averages over
    entries rather than summing over an example's entries: the two agree for one output).

    Equivalently, `loss="mse"` at `Temperature(2 * sigma**2 / N)` samples the same posterior
    (the weight decay `T / prior_std**2` then uses that `T`).

    For the heteroscedastic model, end it with a layer whose last axis holds the mean and
    the variance, the variance kept positive by its activation, for instance
    `Dense(2)` followed by
    `Lambda(lambda z: ops.stack([z[..., 0], ops.softplus(z[..., 1]) + 1e-6], axis=-1))`;
    `posterior_predictive(..., task="regression", model_variance=True)` accepts such a model.

    Args:
        noise_std: float > 0, the noise standard deviation `sigma` in the units of the
            targets, or None (default) for a model that predicts its variance.
        reduction: as every Keras loss (default `"sum_over_batch_size"`, the mean over the
            examples of a batch: keep it for `T = 1 / N`).
        name: the loss's name (default `"gaussian_negative_log_likelihood"`).
        dtype: as every Keras loss.

    Shapes:
        `noise_std` given: `y_true` and `y_pred` of one shape `(batch, ...)`, or `y_true` of
        shape `(batch,)` with `y_pred` of shape `(batch, 1)` (a `Dense(1)` regressor).
        `noise_std=None`: `y_pred` of shape `y_true.shape + (2,)`, or `(batch, 2)` with
        `y_true` of shape `(batch,)` or `(batch, 1)`.

    Raises:
        ValueError: for a `noise_std` that is not a finite real number > 0 (a bool
            included) or whose square underflows float32, and, when called, for shapes
            other than those above (`y_pred` whose last axis does not hold 2 entries with
            `noise_std=None`, targets that would broadcast against the predictions).

    References:
        Welling & Teh, 2011. Bayesian Learning via Stochastic Gradient Langevin Dynamics.
        Seok & Cho, 2023. https://arxiv.org/abs/2305.18864
    """

    def __init__(
        self,
        noise_std=None,
        reduction="sum_over_batch_size",
        name="gaussian_negative_log_likelihood",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if noise_std is not None:
            noise_std = check_real(
                "noise_std",
                noise_std,
                minimum=0.0,
                exclusive_minimum=True,
                description="a noise standard deviation",
            )
            if noise_std**2 < np.finfo(np.float32).tiny:
                raise ValueError(
                    "Argument `noise_std` must be a noise standard deviation whose square is "
                    "a normal float32 number (>= 1.2e-38; a smaller one makes the loss "
                    f"infinite). Received: noise_std={noise_std!r}"
                )
        self.noise_std = noise_std

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
        if self.noise_std is None:
            if y_pred.shape[-1] != 2:
                raise ValueError(
                    "With `noise_std=None`, `y_pred` must hold the mean and the variance in "
                    "its last axis (length 2). Received: y_pred with shape "
                    f"{tuple(y_pred.shape)}"
                )
            mean, variance = y_pred[..., 0], y_pred[..., 1]
            y_true = _match_rank(y_true, mean)
            _check_shapes(y_true, mean, y_pred)
            nll = (
                ops.square(y_true - mean) / (2.0 * variance)
                + 0.5 * ops.log(variance)
                + _HALF_LOG_TWO_PI
            )
        else:
            y_true = _match_rank(y_true, y_pred)
            _check_shapes(y_true, y_pred, y_pred)
            sigma = self.noise_std
            nll = ops.square(y_true - y_pred) / (2.0 * sigma**2) + (
                math.log(sigma) + _HALF_LOG_TWO_PI
            )
        # One value per example: the sum over its entries (independent Gaussians).
        axes = tuple(range(1, len(nll.shape)))
        return ops.sum(nll, axis=axes) if axes else nll

    def get_config(self):
        config = super().get_config()
        config["noise_std"] = self.noise_std
        return config


def _check_shapes(y_true, mean, y_pred):
    """A `ValueError` unless `y_true` (its rank matched) has the shape of the predicted
    mean: a broadcast would compare targets with other examples' or entries' predictions."""
    known = zip(y_true.shape, mean.shape)
    if len(y_true.shape) != len(mean.shape) or any(
        a is not None and b is not None and a != b for a, b in known
    ):
        raise ValueError(
            "Arguments `y_true` and `y_pred` must be of one shape (with `noise_std=None`, "
            "`y_pred` with a last axis of 2 more), or `(batch,)` against `(batch, 1)`. "
            f"Received: y_true with shape {tuple(y_true.shape)}, y_pred with shape "
            f"{tuple(y_pred.shape)}"
        )


def _match_rank(y_true, mean):
    """`y_true` with the rank of `mean`: a trailing axis of 1 added or dropped (never a
    broadcast of `(n,)` against `(n, 1)`, which would compare every target with every
    prediction)."""
    if len(y_true.shape) == len(mean.shape) + 1 and y_true.shape[-1] == 1:
        return ops.squeeze(y_true, axis=-1)
    if len(mean.shape) == len(y_true.shape) + 1 and mean.shape[-1] == 1:
        return ops.expand_dims(y_true, axis=-1)
    return y_true
