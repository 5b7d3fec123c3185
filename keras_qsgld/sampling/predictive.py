"""`posterior_predictive`: a model's predictions averaged over posterior samples.

For each sample the model's weights are set to it (`keras_qsgld.sampling.store`) and the
model predicts; one reducer per task accumulates the average in float64, one sample at a
time: the mean probabilities (classification) or the mean and variance (regression).
"""

import keras
import numpy as np

from keras_qsgld.calibration import PROBABILITY_TOLERANCE, check_probabilities
from keras_qsgld.sampling import store
from keras_qsgld.validation import check_bool, check_choice, check_integer

TASKS = ("classification", "regression")


def _softmax(logits):
    shifted = logits - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=-1, keepdims=True)


def _sigmoid(logits):
    e = np.exp(-np.abs(logits))  # never overflows
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _check_not_probabilities(outputs):
    """A `ValueError` when logits (`from_logits=True`) look like probabilities already: every
    value >= 0 and every row summing to 1. A softmax of those would flatten every
    prediction towards uniform. (One output unit cannot be told apart: a logit in [0, 1]
    is as likely as a probability.)"""
    rows = outputs.reshape(-1, outputs.shape[-1])
    sums = rows.sum(axis=1)
    if np.all(rows >= 0) and np.all(
        np.abs(sums - 1.0) <= PROBABILITY_TOLERANCE
    ):
        raise ValueError(
            "Argument `from_logits=True` needs a model that outputs logits, but the model "
            "outputs are probabilities already (all >= 0, each row summing to 1: a softmax "
            "output layer?); a softmax of them would flatten the predictions. Pass "
            "from_logits=False for a model that ends in a softmax. Received: from_logits=True"
        )


def _as_float64(outputs):
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            # Keras returns a dict's outputs sorted by key, which need not be the
            # (mean, variance) order: which is which cannot be told.
            raise ValueError(
                "Argument `model` must return one output, or a list or tuple (mean, variance) "
                "with model_variance=True; a dict of several outputs has no order to tell the "
                f"mean from the variance. Received: a model with the outputs {sorted(outputs)}"
            )
        outputs = next(iter(outputs.values()))
    if isinstance(outputs, (list, tuple)):
        return [
            np.asarray(keras.ops.convert_to_numpy(o), dtype=np.float64)
            for o in outputs
        ]
    return np.asarray(keras.ops.convert_to_numpy(outputs), dtype=np.float64)


def _predict(model, x, batch_size, verbose):
    """`model.predict(x)` as float64 arrays.

    A NumPy array is cut into batches for `predict_on_batch` here: `predict` sets up its
    data pipeline at every call, which costs 0.1 s per sample on TensorFlow. The last
    batch is padded (repeating its last row) to the size of the others, so the compiled
    predict step is traced for one shape only; the padding rows are dropped.
    """
    if not isinstance(x, np.ndarray):
        return _as_float64(
            model.predict(x, batch_size=batch_size, verbose=verbose)
        )
    n = len(x)
    size = min(batch_size or 32, n)
    parts = []
    for start in range(0, n, size):
        batch = x[start : start + size]
        rows = len(batch)
        if rows < size:
            batch = np.concatenate(
                [batch, np.repeat(batch[-1:], size - rows, axis=0)]
            )
        out = _as_float64(model.predict_on_batch(batch))
        parts.append(
            [o[:rows] for o in out] if isinstance(out, list) else out[:rows]
        )
    if isinstance(parts[0], list):
        return [
            np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))
        ]
    return np.concatenate(parts)


def posterior_predictive(
    model,
    samples,
    x,
    batch_size=None,
    task="classification",
    from_logits=False,
    model_variance=False,
    verbose=0,
):
    """The posterior predictive of `model` averaged over weight samples.

    For each sample the model's weights are set to it and `model.predict(x)` runs (in
    batches of `batch_size`); the model's own weights are restored afterwards, also when
    an error interrupts. With `S` samples:

    - classification: `p(y | x) = (1/S) sum_s p(y | x, w_s)`, the mean of the predicted
      probabilities (never of the logits). With `from_logits=True` each sample's outputs
      go through a softmax (a sigmoid for a single output unit, `(n, 1)`, or one value per
      example, `(n,)`: a binary classifier's logit) first.
    - regression: the predictive mean `mu = (1/S) sum_s mu_s` and variance. Without
      `model_variance` the model's output is the mean `mu_s` and the variance is the
      spread of the means across samples, `(1/S) sum_s (mu_s - mu)**2` (the epistemic
      part; add your likelihood's noise variance for a predictive of `y`). With
      `model_variance=True` the model returns a pair `(mu_s, var_s)` (a Gaussian
      likelihood per input), and the variance is the mixture's, by the law of total
      variance: `(1/S) sum_s var_s + (1/S) sum_s (mu_s - mu)**2`.

    Averages are accumulated in float64, one sample at a time (memory of one prediction).

    Args:
        model: a built `keras.Model` with the architecture of the samples.
        samples: a list of samples, each a weight list (`model.get_weights()`, as
            `PosteriorSampler` keeps in memory) or the path of a `.weights.h5` file (as it
            writes to a directory); or a `PosteriorSampler` (its `samples`), or a list of
            chains, each a sampler or a list of samples (their samples pooled).
        x: inputs, anything `model.predict` takes (NumPy arrays, a `tf.data.Dataset` of
            `x` or `(x, y)`, ...). A dataset must give the same examples in the same
            order on every pass (no shuffling).
        batch_size: integer >= 1 or None (Keras' default, 32), for array inputs.
        task: `"classification"` (default) or `"regression"`.
        from_logits: bool, classification only: the model outputs logits. Default False
            (the outputs must be probabilities, or a ValueError says so). With True,
            outputs of two or more units that are already probabilities (all >= 0, rows
            summing to 1: a softmax layer) raise a ValueError too.
        model_variance: bool, regression only: the model returns a list or tuple
            `(mean, variance)` (not a dict: Keras sorts a dict's outputs by key, so the
            order would be lost), or one output of shape `(..., 2)` holding the mean and
            the variance in its last axis (as `keras_qsgld.losses.GaussianNegativeLogLikelihood()`
            trains). Default False.
        verbose: 0 (default), 1 or 2, `model.predict`'s progress display.

    Returns:
        Classification: the mean probabilities, a float64 array of the model's output
        shape, `(n, K)` (or `(n, 1)` or `(n,)` for a binary classifier: `p(class 1)`). Regression: a
        tuple `(mean, variance)` of float64 arrays of the model's (mean) output shape.

    Raises:
        ValueError: for a bad argument (naming it), a sample that does not fit the model,
            a model with a dict of several outputs, or, in classification, outputs that are not probabilities with
            `from_logits=False`, or already probabilities with `from_logits=True`.

    Examples:
        Two samples of a softmax layer that predict `(1/2, 1/2)` and `(3/4, 1/4)`: the
        posterior predictive is their mean.

        >>> import keras, numpy as np, keras_qsgld
        >>> model = keras.Sequential(
        ...     [keras.Input((2,)), keras.layers.Dense(2, activation="softmax")]
        ... )
        >>> kernel = np.zeros((2, 2), "float32")
        >>> samples = [
        ...     [kernel, np.array([0.0, 0.0], "float32")],
        ...     [kernel, np.array([np.log(3.0), 0.0], "float32")],
        ... ]
        >>> probs = keras_qsgld.posterior_predictive(
        ...     model, samples, np.ones((1, 2), "float32")
        ... )
        >>> print(np.round(probs, 4))
        [[0.625 0.375]]

    References:
        - [Welling & Teh, 2011](https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf),
          Bayesian Learning via Stochastic Gradient Langevin Dynamics.
        - [Wenzel et al., 2020](https://arxiv.org/abs/2002.02405), How Good is the Bayes
          Posterior in Deep Neural Networks Really?
    """
    samples = store.sample_list(samples)
    options = check_prediction_arguments(
        model, x, batch_size, task, from_logits, model_variance, verbose
    )
    reducer = (
        _ClassificationMean()
        if options["task"] == "classification"
        else _RegressionMoments(options["model_variance"])
    )
    for_each_prediction(model, samples, x, reducer.add, **options)
    return reducer.result()


def check_prediction_arguments(
    model, x, batch_size, task, from_logits, model_variance, verbose
):
    """The prediction options of `posterior_predictive`, checked; a dict of the keyword
    arguments of `for_each_prediction`."""
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"Argument `model` must be a keras.Model. Received: model of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            "Argument `model` must be built (call it on data, or build it) before predicting."
        )
    if isinstance(x, np.ndarray) and (x.ndim == 0 or len(x) == 0):
        raise ValueError(
            f"Argument `x` must hold at least one example. Received: x with shape {x.shape}"
        )
    if batch_size is not None:
        batch_size = check_integer(
            "batch_size", batch_size, minimum=1, description="a batch size"
        )
    task = check_choice("task", task, TASKS)
    from_logits = check_bool("from_logits", from_logits)
    model_variance = check_bool("model_variance", model_variance)
    if isinstance(verbose, (bool, np.bool_)) or verbose not in (0, 1, 2):
        raise ValueError(
            f"Argument `verbose` must be 0, 1 or 2. Received: verbose={verbose!r}"
        )
    if task == "regression" and from_logits:
        raise ValueError(
            "Argument `from_logits` applies to classification only. "
            "Received: from_logits=True with task='regression'"
        )
    if task == "classification" and model_variance:
        raise ValueError(
            "Argument `model_variance` applies to regression only. "
            "Received: model_variance=True with task='classification'"
        )
    return dict(
        batch_size=batch_size,
        task=task,
        from_logits=from_logits,
        model_variance=model_variance,
        verbose=verbose,
    )


def for_each_prediction(
    model,
    samples,
    x,
    consume,
    batch_size,
    task,
    from_logits,
    model_variance,
    verbose,
):
    """Calls `consume(prediction)` for each sample in turn, the model's weights set to it:
    the probabilities (classification) or a pair `(mean, variance)` (regression; the
    variance None without `model_variance`), float64 arrays. Restores the model's own
    weights afterwards, also when an error interrupts."""
    with store.restoring_weights(model):
        for index, sample in enumerate(samples):
            store.load_sample(model, sample, index)
            outputs = _predict(model, x, batch_size, verbose)
            consume(
                _probabilities(outputs, from_logits)
                if task == "classification"
                else _moments(outputs, model_variance)
            )


def _probabilities(outputs, from_logits):
    """One sample's predicted probabilities (a softmax or sigmoid of logits first)."""
    if isinstance(outputs, list):
        raise ValueError(
            "Argument `model` must have one output for classification. "
            f"Received: a model with {len(outputs)} outputs"
        )
    # One output unit, `(n, 1)`, or one value per example, `(n,)`: a binary
    # classifier's p(class 1) (or its logit).
    binary = outputs.ndim == 1 or outputs.shape[-1] == 1
    if from_logits:
        if not binary:
            _check_not_probabilities(outputs)
        return _sigmoid(outputs) if binary else _softmax(outputs)
    rows = (
        outputs.reshape(-1, outputs.shape[-1]) if outputs.ndim > 1 else outputs
    )
    check_probabilities(rows, name="model outputs")
    return outputs


def _moments(outputs, model_variance):
    """One sample's predicted `(mean, variance)`; the variance None without
    `model_variance`."""
    if not model_variance:
        if isinstance(outputs, list):
            raise ValueError(
                f"Argument `model` must have one output for regression without model_variance. "
                f"Received: a model with {len(outputs)} outputs (pass model_variance=True for "
                "(mean, variance))"
            )
        return outputs, None
    if isinstance(outputs, list) and len(outputs) == 2:
        mu, var = outputs
    elif not isinstance(outputs, list) and outputs.shape[-1:] == (2,):
        # One output holding (mean, variance) in its last axis: the model a
        # GaussianNegativeLogLikelihood() loss trains.
        mu, var = outputs[..., 0], outputs[..., 1]
    else:
        raise ValueError(
            "Argument `model_variance=True` needs a model that returns two outputs "
            "(mean, variance), or one output whose last axis (length 2) holds them. "
            "Received: a model with "
            + (
                f"{len(outputs)} outputs"
                if isinstance(outputs, list)
                else f"one output of shape {outputs.shape}"
            )
        )
    if var.shape != mu.shape or np.any(var < 0):
        raise ValueError(
            "Argument `model_variance=True` needs the second output to be variances "
            f">= 0 of the mean's shape {mu.shape}. Received: shape {var.shape}, minimum "
            f"{float(np.min(var)):g}"
        )
    return mu, var


class _ClassificationMean:
    """The mean of the samples' predicted probabilities."""

    def __init__(self):
        self.total = None
        self.count = 0

    def add(self, probabilities):
        self.total = (
            probabilities if self.total is None else self.total + probabilities
        )
        self.count += 1

    def result(self):
        return self.total / self.count


class _RegressionMoments:
    """The predictive mean and variance: the spread of the samples' means (Welford's
    update, without cancellation), plus the mean of the model's own variances with
    `model_variance` (the law of total variance)."""

    def __init__(self, model_variance):
        self.model_variance = model_variance
        self.mean = self.m2 = self.variances = None
        self.count = 0

    def add(self, moments):
        mu, var = moments
        if var is not None:
            self.variances = (
                var if self.variances is None else self.variances + var
            )
        self.count += 1
        if self.mean is None:
            self.mean, self.m2 = mu.copy(), np.zeros_like(mu)
        else:
            delta = mu - self.mean
            self.mean += delta / self.count
            self.m2 += delta * (mu - self.mean)

    def result(self):
        variance = self.m2 / self.count
        if self.model_variance:
            variance = variance + self.variances / self.count
        return self.mean, variance
