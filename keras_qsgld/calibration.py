"""How good predicted probabilities are: accuracy, NLL, Brier score, calibration error, plots.

For classification, every function takes the true labels `y_true` and the predicted class
probabilities `y_prob` (for instance the posterior predictive of
`keras_qsgld.sampling.posterior_predictive`):

- `accuracy`: share of examples whose most probable class is the true one (what
  `keras.metrics.SparseCategoricalAccuracy` computes).
- `negative_log_likelihood`: mean of `-log p(y_true)`, in nats, probabilities clipped at
  `1e-7` (what `keras.metrics.SparseCategoricalCrossentropy` computes).
- `brier_score`: mean over examples of `sum_k (p_k - onehot_k)**2` (Brier, 1950), in [0, 2].
- `expected_calibration_error`: `sum_b (n_b / n) |accuracy_b - confidence_b|` over
  equal-width bins of the confidence `max_k p_k` (Guo et al., 2017), in [0, 1].
- `calibration_bins`: the per-bin counts, confidences and accuracies behind the ECE.
- `calibration_report`: the four numbers above in a dict.
- `reliability_diagram`: a PNG of accuracy against confidence per bin.

For regression with a Gaussian predictive, `gaussian_negative_log_likelihood`.

Everything is computed with NumPy in float64 from the standard definitions (Keras' accuracy
and cross-entropy metrics give the same values, in float32: `0.6660000085830688` where
this gives `0.666`), returns Python floats (or NumPy arrays) and works on every Keras
backend. Labels may be integers, bools (binary: False/True are 0/1) or one-hot rows.
matplotlib is imported only by `reliability_diagram`.
"""

import math
import os

import keras
import numpy as np

from keras_qsgld.validation import check_integer

DEFAULT_NUM_BINS = 15  # Guo et al. (2017)
# Rows of `y_prob` must sum to 1 within this (float32 softmax outputs sum to 1 +- 1e-6).
PROBABILITY_TOLERANCE = 1e-3


# -- input checks -----------------------------------------------------------------------
def _as_array(name, value):
    try:
        return np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:  # lists, tuples, objects NumPy reads directly
        try:
            return np.asarray(value)
        except Exception as error:
            raise ValueError(
                f"Argument `{name}` must be an array. Received: {name} of type {type(value).__name__}"
            ) from error


def check_probabilities(y_prob, name="y_prob"):
    """`y_prob` as a float64 `(n, K)` array of class probabilities, or a `ValueError`.

    A 1-D array, or a 2-D array with one column, holds `p(class 1)` of a binary classifier
    (a sigmoid output); it becomes the two columns `[1 - p, p]`. Otherwise each row must
    hold `K >= 2` probabilities in [0, 1] summing to 1 (within 1e-3).
    """
    probs = _as_array(name, y_prob)
    if probs.dtype.kind not in "iuf" or probs.size == 0:
        raise ValueError(
            f"Argument `{name}` must be a non-empty array of probabilities. "
            f"Received: {name} with dtype {probs.dtype} and shape {probs.shape}"
        )
    probs = probs.astype(np.float64)
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    if probs.ndim != 2:
        raise ValueError(
            f"Argument `{name}` must have shape (n, num_classes), or (n,) for a binary "
            f"classifier's p(class 1). Received: {name} with shape {probs.shape}"
        )
    if not np.all(np.isfinite(probs)):
        raise ValueError(
            f"Argument `{name}` must be finite. Received: {name} with NaN or inf values"
        )
    low, high = float(probs.min()), float(probs.max())
    sums = probs.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if low < 0 or high > 1 or worst > PROBABILITY_TOLERANCE:
        raise ValueError(
            f"Argument `{name}` must hold probabilities: values in [0, 1], each row summing to "
            f"1. Received: {name} with values in [{low:g}, {high:g}] and row sums off by up to "
            f"{worst:g}. For logits, apply a softmax (a sigmoid for one output unit) first, or "
            "pass from_logits=True to posterior_predictive"
        )
    return probs


def check_labels(y_true, num_classes, num_examples, name="y_true"):
    """`y_true` as an int64 `(n,)` array of labels in `[0, num_classes)`, or a `ValueError`.

    Accepts integer labels of shape `(n,)` or `(n, 1)` (floats only when integral; bools as
    0 and 1), and one-hot rows of shape `(n, num_classes)`.
    """
    labels = _as_array(name, y_true)
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        one_hot = labels.astype(np.float64)
        if not (
            np.all((one_hot == 0) | (one_hot == 1))
            and np.all(one_hot.sum(axis=1) == 1)
        ):
            raise ValueError(
                f"Argument `{name}` of shape {labels.shape} must be one-hot (one 1 per row, "
                f"else 0), or integer labels of shape (n,). Received: {name} with other values"
            )
        labels = np.argmax(one_hot, axis=1)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype.kind == "b":  # False/True: the binary labels 0/1
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iuf":
        raise ValueError(
            f"Argument `{name}` must be integer labels of shape (n,) or one-hot rows of shape "
            f"(n, {num_classes}). Received: {name} with shape {labels.shape} and dtype {labels.dtype}"
        )
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(
            labels == np.round(labels)
        ):
            raise ValueError(
                f"Argument `{name}` must hold integer labels. Received: {name} with non-integer values"
            )
    labels = labels.astype(np.int64)
    if labels.shape[0] != num_examples:
        raise ValueError(
            f"Arguments `{name}` and `y_prob` must have one row per example: {name} has "
            f"{labels.shape[0]} and y_prob has {num_examples}. Received: {name} with shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Argument `{name}` must hold labels in [0, {num_classes}) for {num_classes} "
            f"classes. Received: {name} with values in [{labels.min()}, {labels.max()}]"
        )
    return labels


def _inputs(y_true, y_prob):
    probs = check_probabilities(y_prob)
    labels = check_labels(y_true, probs.shape[1], probs.shape[0])
    return labels, probs


def _num_bins(num_bins):
    return check_integer(
        "num_bins", num_bins, minimum=1, description="a number of bins"
    )


# What keras.losses.sparse_categorical_crossentropy clips probabilities to (Keras' epsilon()).
PROBABILITY_CLIP = 1e-7


# -- the metrics -------------------------------------------------------------------------
def accuracy(y_true, y_prob):
    """Share of examples whose most probable class is the true label.

    The mean of the per-example hits `argmax_k p_k == y` (ties go to the first class), in
    NumPy float64: `keras.metrics.SparseCategoricalAccuracy`'s definition, without its
    float32 result.

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities, shape `(n, K)`, rows summing to 1; or `(n,)`:
            `p(class 1)` of a binary classifier.

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: for inputs of the wrong shape, labels out of range, or rows that are
            not probabilities (naming the argument).
    """
    labels, probs = _inputs(y_true, y_prob)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def negative_log_likelihood(y_true, y_prob):
    """Mean negative log-likelihood `-(1/n) sum_i log p_i(y_i)`, in nats.

    Computed in NumPy float64 as `keras.metrics.SparseCategoricalCrossentropy` defines it
    (which gives the same value in float32): each row is divided by its sum, the
    probabilities are clipped to `[1e-7, 1 - 1e-7]` (Keras' `epsilon()`), and the
    per-example terms `-log p_i(y_i)` are averaged. A true class given probability 0 costs
    `-log(1e-7) = 16.1` nats, not infinity.

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities, shape `(n, K)`, rows summing to 1; or `(n,)`:
            `p(class 1)` of a binary classifier.

    Returns:
        A float >= 0, in nats per example.

    Raises:
        ValueError: for inputs of the wrong shape, labels out of range, or rows that are
            not probabilities.
    """
    labels, probs = _inputs(y_true, y_prob)
    probs = probs / probs.sum(
        axis=1, keepdims=True
    )  # rows sum to 1 within 1e-3 (checked)
    true_class = np.clip(
        probs[np.arange(len(labels)), labels],
        PROBABILITY_CLIP,
        1.0 - PROBABILITY_CLIP,
    )
    return float(np.mean(-np.log(true_class)))


def brier_score(y_true, y_prob):
    """The multi-class Brier score: mean over examples of `sum_k (p_k - onehot_k)**2`.

    This is Brier's (1950) original definition, in [0, 2] (0: certain and right; 2:
    certain and wrong). For a binary problem it is twice scikit-learn's
    `brier_score_loss(y, p)`, which sums over the positive class only.

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities, shape `(n, K)`, rows summing to 1; or `(n,)`:
            `p(class 1)` of a binary classifier.

    Returns:
        A float in [0, 2].

    Raises:
        ValueError: for inputs of the wrong shape, labels out of range, or rows that are
            not probabilities.

    References:
        - [Brier, 1950](https://doi.org/10.1175/1520-0493(1950)078%3C0001:VOFEIT%3E2.0.CO;2),
          Verification of forecasts expressed in terms of probability.
    """
    labels, probs = _inputs(y_true, y_prob)
    one_hot = np.zeros_like(probs)
    one_hot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


def calibration_bins(y_true, y_prob, num_bins=DEFAULT_NUM_BINS):
    """Equal-width bins of the confidence `max_k p_k`, with the accuracy in each.

    Example `i` falls in bin `b` (0-based) when `b / M < confidence_i <= (b + 1) / M`,
    computed as `ceil(confidence_i * M) - 1` in float64 (a confidence of exactly 0 would go
    to bin 0). Its prediction is the most probable class (the first on ties).

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities, shape `(n, K)`; or `(n,)` for a binary classifier.
        num_bins: integer >= 1, the number of bins `M`. Default 15 (Guo et al., 2017).

    Returns:
        A dict of NumPy arrays: `edges` (`M + 1` bin edges from 0 to 1), `count` (examples
        per bin, int64), `confidence` (mean confidence per bin) and `accuracy` (share of
        correct predictions per bin), both float64 and NaN in empty bins.

    Raises:
        ValueError: for inputs of the wrong shape or values, or `num_bins` < 1.

    References:
        - [Guo et al., 2017](https://arxiv.org/abs/1706.04599), On Calibration of Modern
          Neural Networks.
    """
    num_bins = _num_bins(num_bins)
    labels, probs = _inputs(y_true, y_prob)
    confidence = probs.max(axis=1)
    correct = (np.argmax(probs, axis=1) == labels).astype(np.float64)
    # ceil(c * M) - 1 puts c in (b / M, (b + 1) / M]; the clip keeps c = 0 in bin 0.
    index = np.clip(
        np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1
    )
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = (
            np.bincount(index, weights=confidence, minlength=num_bins) / count
        )
        mean_accuracy = (
            np.bincount(index, weights=correct, minlength=num_bins) / count
        )
    return {
        "edges": np.linspace(0.0, 1.0, num_bins + 1),
        "count": count.astype(np.int64),
        "confidence": np.where(count > 0, mean_confidence, np.nan),
        "accuracy": np.where(count > 0, mean_accuracy, np.nan),
    }


def _ece(bins):
    count = bins["count"]
    full = count > 0
    gaps = np.abs(bins["accuracy"][full] - bins["confidence"][full])
    return float(np.sum(count[full] * gaps) / np.sum(count))


def expected_calibration_error(y_true, y_prob, num_bins=DEFAULT_NUM_BINS):
    """Expected calibration error: `sum_b (n_b / n) |accuracy_b - confidence_b|`.

    The bins are `num_bins` equal-width intervals of the confidence `max_k p_k` (see
    `calibration_bins`); `accuracy_b` is the share of correct top-1 predictions in bin
    `b` and `confidence_b` their mean confidence. 0 means calibrated (in every bin the
    model is right as often as it says); the value depends on `num_bins`.

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities, shape `(n, K)`; or `(n,)` for a binary classifier.
        num_bins: integer >= 1, the number of bins. Default 15 (Guo et al., 2017).

    Returns:
        A float in [0, 1].

    Raises:
        ValueError: for inputs of the wrong shape or values, or `num_bins` < 1.

    References:
        - [Guo et al., 2017](https://arxiv.org/abs/1706.04599), On Calibration of Modern
          Neural Networks.
    """
    return _ece(calibration_bins(y_true, y_prob, num_bins))


def calibration_report(y_true, y_prob, num_bins=DEFAULT_NUM_BINS):
    """Accuracy, negative log-likelihood, Brier score and ECE of `y_prob`, in one dict.

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities, shape `(n, K)`; or `(n,)` for a binary classifier.
        num_bins: integer >= 1, the number of bins of the ECE. Default 15.

    Returns:
        A dict of floats with the keys `"accuracy"`, `"nll"` (nats per example),
        `"brier"` and `"ece"` (see the functions of the same names).

    Raises:
        ValueError: for inputs of the wrong shape or values, or `num_bins` < 1.
    """
    num_bins = _num_bins(num_bins)
    labels, probs = _inputs(y_true, y_prob)
    return {
        "accuracy": accuracy(labels, probs),
        "nll": negative_log_likelihood(labels, probs),
        "brier": brier_score(labels, probs),
        "ece": expected_calibration_error(labels, probs, num_bins),
    }


def gaussian_negative_log_likelihood(y_true, mean, variance):
    """Mean negative log-likelihood of `y_true` under `N(mean, variance)`, in nats.

    `(1/n) sum_i [log(2 pi var_i) / 2 + (y_i - mean_i)**2 / (2 var_i)]`, averaged over
    every entry (examples and output dimensions). Use it with the `(mean, variance)` of
    `posterior_predictive(..., task="regression")` (a Gaussian approximation of the
    predictive mixture). Keras has no such metric.

    A trailing axis of length 1 on either side is dropped: `y_true` of shape `(n,)` goes
    with the `(n, 1)` mean and variance `posterior_predictive` returns for a `Dense(1)`
    regressor, and `(n, 1)` targets with `(n,)` predictions. (Shapes are never broadcast
    against each other: `(n,)` against `(n, 1)` would compare every target with every
    prediction.)

    Args:
        y_true: targets, any shape.
        mean: predicted means, the shape of `y_true` (up to a trailing axis of 1).
        variance: predicted variances > 0, the shape of `y_true` (up to a trailing axis of
            1), or broadcastable to it (a scalar).

    Returns:
        A float, in nats per entry.

    Raises:
        ValueError: for shapes that do not match, non-finite values, or a variance <= 0.
    """
    y = _as_array("y_true", y_true).astype(np.float64)
    mu = _as_array("mean", mean).astype(np.float64)
    var = _as_array("variance", variance).astype(np.float64)
    if y.shape == mu.shape + (1,):  # (n, 1) targets, (n,) means
        y = y[..., 0]
    elif mu.shape == y.shape + (
        1,
    ):  # (n,) targets, (n, 1) means (a Dense(1) regressor)
        mu = mu[..., 0]
    if mu.shape != y.shape:
        raise ValueError(
            f"Argument `mean` must have the shape of `y_true` {y.shape} (up to a trailing axis "
            f"of 1). Received: mean with shape {mu.shape}"
        )
    if var.shape == y.shape + (1,):
        var = var[..., 0]
    elif y.shape == var.shape + (1,):
        var = var[..., None]
    try:
        var = np.broadcast_to(var, y.shape)
    except ValueError:
        raise ValueError(
            f"Argument `variance` must have the shape of `y_true` {y.shape} (up to a trailing "
            f"axis of 1), or broadcast to it. Received: variance with shape {var.shape}"
        ) from None
    for name, array in (("y_true", y), ("mean", mu), ("variance", var)):
        if array.size == 0 or not np.all(np.isfinite(array)):
            raise ValueError(
                f"Argument `{name}` must be non-empty and finite. Received: {name} with shape {array.shape}"
            )
    if np.any(var <= 0):
        raise ValueError(
            f"Argument `variance` must be > 0. Received: variance with minimum {float(var.min()):g}"
        )
    return float(
        np.mean(0.5 * np.log(2.0 * math.pi * var) + (y - mu) ** 2 / (2.0 * var))
    )


# -- the plot ----------------------------------------------------------------------------
def reliability_diagram(
    y_true, y_prob, path, num_bins=DEFAULT_NUM_BINS, title=None
):
    """Writes a reliability diagram (Guo et al., 2017, fig. 1) as a PNG.

    One column per set of predictions: on top, the share of examples per confidence bin,
    with the ECE in the title; below, the accuracy per bin (bars) against the diagonal of
    perfect calibration, with the gap between each bin's accuracy and its mean confidence
    hatched in red (above a bar where the predictions are overconfident, over it where
    they are underconfident). One legend, below the panels. Drawn with matplotlib's Agg
    canvas directly, so pyplot's backend and figures are left alone.

    Args:
        y_true: integer (or bool) labels, shape `(n,)` (or `(n, 1)`, or one-hot `(n, K)`).
        y_prob: class probabilities `(n, K)` (or `(n,)` for a binary classifier), or a
            dict `{label: y_prob}` of several sets of predictions of the same examples,
            drawn side by side (e.g. `{"last iterate": p1, "posterior average": p2}`).
        path: file path of the PNG; its folder is created if needed.
        num_bins: integer >= 1, the number of confidence bins. Default 15.
        title: optional string, the figure's title.

    Returns:
        `path`, as a string.

    Raises:
        ValueError: for inputs of the wrong shape or values, an empty dict, or
            `num_bins` < 1.
        ImportError: if matplotlib is not installed.

    References:
        - [Guo et al., 2017](https://arxiv.org/abs/1706.04599), On Calibration of Modern
          Neural Networks.
    """
    num_bins = _num_bins(num_bins)
    if isinstance(y_prob, dict):
        if not y_prob:
            raise ValueError(
                "Argument `y_prob` must not be an empty dict. Received: y_prob={}"
            )
        panels = {str(k): v for k, v in y_prob.items()}
    else:
        panels = {"": y_prob}
    if title is not None and not isinstance(title, str):
        raise ValueError(
            f"Argument `title` must be a string or None. Received: title={title!r}"
        )
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(
            f"Argument `path` must be a file path. Received: path={path!r}"
        )
    binned = {
        label: calibration_bins(y_true, probs, num_bins)
        for label, probs in panels.items()
    }
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError as error:
        raise ImportError(
            "reliability_diagram needs matplotlib: pip install matplotlib"
        ) from error

    columns = len(binned)
    figure = Figure(figsize=(4.0 * columns, 5.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(
        2, columns, squeeze=False, sharex=True, height_ratios=(1, 3)
    )
    for column, (label, bins) in enumerate(binned.items()):
        edges, count = bins["edges"], bins["count"]
        width = np.diff(edges)
        centers = edges[:-1] + width / 2
        top, bottom = axes[0, column], axes[1, column]
        top.bar(
            centers,
            count / count.sum(),
            width=width,
            color="tab:gray",
            edgecolor="black",
            linewidth=0.5,
        )
        top.set_ylabel("share of examples")
        ece = f"ECE = {_ece(bins):.4f}"
        top.set_title(f"{label}\n{ece}" if label else ece)
        full = count > 0  # empty bins draw nothing
        acc, conf = bins["accuracy"][full], bins["confidence"][full]
        bottom.bar(
            centers[full],
            acc,
            width=width[full],
            color="tab:blue",
            edgecolor="black",
            linewidth=0.5,
        )
        # The gap between accuracy and mean confidence: hatched, not filled, so that it reads
        # the same above a bar (accuracy below confidence) and over it (accuracy above).
        bottom.bar(
            centers[full],
            np.abs(conf - acc),
            bottom=np.minimum(acc, conf),
            width=width[full],
            facecolor="none",
            edgecolor="tab:red",
            hatch="///",
            linewidth=0.8,
        )
        bottom.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1)
        bottom.set_xlim(0, 1)
        bottom.set_ylim(0, 1)
        bottom.set_xlabel("confidence (max probability)")
        bottom.set_ylabel("accuracy")
    # One legend for all panels, below them, where it covers no bar.
    handles = [
        Patch(
            facecolor="tab:blue",
            edgecolor="black",
            linewidth=0.5,
            label="accuracy per bin",
        ),
        Patch(
            facecolor="none",
            edgecolor="tab:red",
            hatch="///",
            label="gap to the bin's mean confidence",
        ),
        Line2D(
            [0, 1],
            [0, 0],
            linestyle="--",
            color="black",
            linewidth=1,
            label="calibrated",
        ),
    ]
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=3 if columns > 1 else 1,
        fontsize="small",
        frameon=False,
    )
    if title:
        figure.suptitle(title)
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    # bbox_inches="tight": the saved image holds every label, whatever the fonts.
    figure.savefig(
        path, format="png", dpi=100, bbox_inches="tight", pad_inches=0.1
    )
    return path
