"""`keras_qsgld.calibration` against values known exactly, scikit-learn, SciPy and loops."""

import math

import numpy as np
import pytest

from keras_qsgld import calibration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Four examples, two classes: predictions 0, 1, 1, 0 against labels 0, 0, 1, 1.
PROBS = np.array([[0.7, 0.3], [0.4, 0.6], [0.2, 0.8], [0.9, 0.1]])
LABELS = np.array([0, 0, 1, 1])


def loop_ece(labels, probs, num_bins):
    """The ECE written as Guo et al. define it, one bin and one example at a time."""
    total = 0.0
    n = len(labels)
    for b in range(num_bins):
        lo, hi = b / num_bins, (b + 1) / num_bins
        members = [i for i in range(n) if lo < probs[i].max() <= hi]
        if not members:
            continue
        acc = sum(int(np.argmax(probs[i]) == labels[i]) for i in members) / len(
            members
        )
        conf = sum(probs[i].max() for i in members) / len(members)
        total += len(members) / n * abs(acc - conf)
    return total


def random_problem(rng, n=200, k=4):
    logits = rng.normal(size=(n, k)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, k, size=n)
    return labels, probs


# -- known values ------------------------------------------------------------------------
def test_accuracy_counts_top1_hits():
    assert calibration.accuracy(LABELS, PROBS) == pytest.approx(0.5)
    assert calibration.accuracy([1, 1, 1, 0], PROBS) == pytest.approx(0.75)


def test_nll_is_the_mean_negative_log_probability_of_the_true_class():
    expected = (
        -(math.log(0.7) + math.log(0.4) + math.log(0.8) + math.log(0.1)) / 4
    )
    assert calibration.negative_log_likelihood(LABELS, PROBS) == pytest.approx(
        expected, rel=1e-6
    )


def test_nll_matches_scikit_learn_log_loss(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    labels, probs = random_problem(rng)
    expected = metrics.log_loss(labels, probs, labels=range(4))
    assert calibration.negative_log_likelihood(labels, probs) == pytest.approx(
        expected, rel=1e-5
    )


def test_brier_score_by_hand():
    # rows: 0.3^2+0.3^2, 0.6^2+0.6^2, 0.2^2+0.2^2, 0.9^2+0.9^2
    assert calibration.brier_score(LABELS, PROBS) == pytest.approx(
        (0.18 + 0.72 + 0.08 + 1.62) / 4, abs=1e-12
    )
    assert calibration.brier_score([0, 1], [[1.0, 0.0], [0.0, 1.0]]) == 0.0
    assert calibration.brier_score([1, 0], [[1.0, 0.0], [0.0, 1.0]]) == 2.0


def test_brier_score_against_scikit_learn(rng):
    metrics = pytest.importorskip("sklearn.metrics")
    # binary: scikit-learn sums over the positive class only, half of Brier's sum
    p = rng.uniform(size=50)
    y = (rng.uniform(size=50) < p).astype(int)
    assert calibration.brier_score(y, p) == pytest.approx(
        2 * metrics.brier_score_loss(y, p), rel=1e-12
    )
    labels, probs = random_problem(rng)
    try:  # scikit-learn >= 1.7 also has the multi-class definition
        expected = metrics.brier_score_loss(
            labels, probs, labels=range(4), scale_by_half=False
        )
    except (TypeError, ValueError):
        pytest.skip("this scikit-learn has no multi-class Brier score")
    assert calibration.brier_score(labels, probs) == pytest.approx(
        expected, rel=1e-12
    )


def test_ece_is_zero_when_every_bin_is_calibrated():
    # bin (0.8, 0.9]: ten examples at confidence 0.9, nine right; bin (0.5, 0.6]: five at
    # 0.6, three right. Accuracy equals confidence in each bin.
    probs = [[0.9, 0.1]] * 10 + [[0.6, 0.4]] * 5
    labels = [0] * 9 + [1] + [0] * 3 + [1] * 2
    assert calibration.expected_calibration_error(
        labels, probs, num_bins=10
    ) == pytest.approx(0.0, abs=1e-12)


def test_ece_known_value():
    # bin of confidence 0.9: 4 examples, 2 right (gap 0.4); bin of 0.6: 6 examples, 5 right
    # (gap 5/6 - 0.6). ECE = 0.4 * 0.4 + 0.6 * (5/6 - 0.6) = 0.3.
    probs = [[0.9, 0.05, 0.05]] * 4 + [[0.2, 0.6, 0.2]] * 6
    labels = [0, 0, 1, 2] + [1] * 5 + [0]
    assert calibration.expected_calibration_error(
        labels, probs
    ) == pytest.approx(0.3, abs=1e-12)
    # certain and always wrong: ECE 1
    assert calibration.expected_calibration_error(
        [1, 1], [[1.0, 0.0], [1.0, 0.0]]
    ) == pytest.approx(1.0)


def test_ece_matches_a_loop_over_bins(rng):
    labels, probs = random_problem(rng, n=300, k=3)
    for num_bins in (1, 5, 15):
        assert calibration.expected_calibration_error(
            labels, probs, num_bins
        ) == pytest.approx(loop_ece(labels, probs, num_bins), abs=1e-12)


def test_bins_put_edge_values_in_the_lower_bin():
    # (lo, hi]: a confidence on an edge belongs to the bin below it.
    probs = [
        [0.5, 0.5],
        [0.6, 0.4],
        [0.7, 0.3],
        [0.3, 0.7],
        [0.75, 0.25],
        [1.0, 0.0],
    ]
    labels = [0, 0, 0, 1, 1, 0]
    bins = calibration.calibration_bins(labels, probs, num_bins=10)
    assert bins["count"].tolist() == [0, 0, 0, 0, 1, 1, 2, 1, 0, 1]
    assert bins["edges"] == pytest.approx(np.linspace(0, 1, 11))
    assert bins["accuracy"][6] == 1.0 and bins["confidence"][
        6
    ] == pytest.approx(0.7)
    assert bins["accuracy"][7] == 0.0 and bins["confidence"][
        7
    ] == pytest.approx(0.75)
    assert np.isnan(bins["accuracy"][0]) and np.isnan(bins["confidence"][8])


def test_report_holds_the_four_metrics(rng):
    labels, probs = random_problem(rng)
    report = calibration.calibration_report(labels, probs, num_bins=10)
    assert report == {
        "accuracy": pytest.approx(calibration.accuracy(labels, probs)),
        "nll": pytest.approx(
            calibration.negative_log_likelihood(labels, probs)
        ),
        "brier": pytest.approx(calibration.brier_score(labels, probs)),
        "ece": pytest.approx(
            calibration.expected_calibration_error(labels, probs, 10)
        ),
    }
    assert all(isinstance(v, float) for v in report.values())


def test_label_and_probability_layouts_agree():
    one_hot = np.eye(2)[LABELS]
    assert calibration.calibration_report(
        one_hot, PROBS
    ) == calibration.calibration_report(LABELS, PROBS)
    assert calibration.calibration_report(
        LABELS[:, None], PROBS
    ) == calibration.calibration_report(LABELS, PROBS)
    # a binary classifier's p(class 1), as a vector or one column
    p1 = PROBS[:, 1]
    assert calibration.calibration_report(
        LABELS, p1
    ) == calibration.calibration_report(LABELS, PROBS)
    assert calibration.calibration_report(
        LABELS, p1[:, None]
    ) == calibration.calibration_report(LABELS, PROBS)
    # bool labels are the binary labels 0/1
    assert calibration.calibration_report(
        LABELS.astype(bool), p1
    ) == calibration.calibration_report(LABELS, PROBS)


def test_gaussian_nll_matches_scipy(rng):
    stats = pytest.importorskip("scipy.stats")
    y, mean = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    variance = rng.uniform(0.1, 2.0, size=(20, 2))
    expected = -np.mean(stats.norm.logpdf(y, mean, np.sqrt(variance)))
    assert calibration.gaussian_negative_log_likelihood(
        y, mean, variance
    ) == pytest.approx(expected, rel=1e-12)
    # a scalar variance broadcasts
    expected = -np.mean(stats.norm.logpdf(y, mean, 0.5))
    assert calibration.gaussian_negative_log_likelihood(
        y, mean, 0.25
    ) == pytest.approx(expected, rel=1e-12)
    # a Dense(1) regressor's (n, 1) outputs go with (n,) targets, and the other way round,
    # entry by entry (never every target against every prediction)
    y1, mean1, var1 = y[:, 0], mean[:, :1], variance[:, :1]
    expected = -np.mean(stats.norm.logpdf(y1, mean1[:, 0], np.sqrt(var1[:, 0])))
    for args in (
        (y1, mean1, var1),
        (y1[:, None], mean1[:, 0], var1[:, 0]),
        (y1, mean1, var1[:, 0]),
    ):
        assert calibration.gaussian_negative_log_likelihood(
            *args
        ) == pytest.approx(expected, rel=1e-12)


# -- bad inputs ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, probs, argument",
    [
        (LABELS, PROBS * 2, "y_prob"),  # rows sum to 2
        (LABELS, np.log(PROBS), "y_prob"),  # logits-like, negative
        (LABELS, [[0.5, np.nan]] * 4, "y_prob"),
        (LABELS, np.ones((4, 2, 2)) / 2, "y_prob"),
        (LABELS, np.zeros((0, 2)), "y_prob"),
        (LABELS, [["a", "b"]] * 4, "y_prob"),
        ([0, 1, 2, 0], PROBS, "y_true"),  # label 2 with two classes
        ([0, 1, -1, 0], PROBS, "y_true"),
        ([0, 1, 0], PROBS, "y_true"),  # three labels, four rows
        ([0.5, 1, 0, 0], PROBS, "y_true"),
        ([[1, 1], [0, 1], [1, 0], [1, 0]], PROBS, "y_true"),  # not one-hot
    ],
)
def test_bad_inputs_name_the_argument(labels, probs, argument):
    for function in (
        calibration.accuracy,
        calibration.negative_log_likelihood,
        calibration.brier_score,
        calibration.expected_calibration_error,
        calibration.calibration_report,
    ):
        with pytest.raises(ValueError, match=f"`{argument}`"):
            function(labels, probs)


@pytest.mark.parametrize("num_bins", [0, -3, 2.0, True, "15", None])
def test_bad_num_bins(num_bins):
    with pytest.raises(ValueError, match="`num_bins`.*Received: num_bins="):
        calibration.expected_calibration_error(LABELS, PROBS, num_bins=num_bins)


def test_num_bins_accepts_numpy_integers():
    assert calibration.expected_calibration_error(
        LABELS, PROBS, num_bins=np.int64(5)
    ) == pytest.approx(
        calibration.expected_calibration_error(LABELS, PROBS, num_bins=5)
    )


def test_gaussian_nll_bad_inputs():
    with pytest.raises(ValueError, match="`variance`"):
        calibration.gaussian_negative_log_likelihood(
            [1.0, 2.0], [1.0, 2.0], [1.0, 0.0]
        )
    with pytest.raises(ValueError, match="`mean`"):
        calibration.gaussian_negative_log_likelihood(
            [1.0, 2.0], [1.0], [1.0, 1.0]
        )
    with pytest.raises(ValueError, match="`y_true`"):
        calibration.gaussian_negative_log_likelihood(
            [1.0, np.inf], [1.0, 2.0], 1.0
        )


# -- the plot -------------------------------------------------------------------------------
def test_reliability_diagram_writes_a_png(tmp_path, rng):
    pytest.importorskip("matplotlib")
    labels, probs = random_problem(rng)
    path = calibration.reliability_diagram(
        labels, probs, tmp_path / "sub" / "one.png", title="one"
    )
    assert path == str(tmp_path / "sub" / "one.png")
    one = (tmp_path / "sub" / "one.png").read_bytes()
    assert one[:8] == PNG_MAGIC
    two = calibration.reliability_diagram(
        labels,
        {"sharp": probs, "flat": np.full_like(probs, 0.25)},
        tmp_path / "two.png",
        num_bins=10,
    )
    data = open(two, "rb").read()
    assert data[:8] == PNG_MAGIC
    # two panels side by side: about twice as wide (the PNG header's width field; the saved
    # image is cropped to its contents, so not exactly twice)
    width_one, width_two = (
        int.from_bytes(png[16:20], "big") for png in (one, data)
    )
    assert 1.8 * width_one < width_two < 2.2 * width_one


def test_reliability_diagram_leaves_pyplot_alone(tmp_path, rng):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    labels, probs = random_problem(rng)
    calibration.reliability_diagram(labels, probs, tmp_path / "r.png")
    assert plt.get_fignums() == before


def test_reliability_diagram_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="`y_prob`"):
        calibration.reliability_diagram(LABELS, {}, tmp_path / "r.png")
    with pytest.raises(ValueError, match="`y_prob`"):
        calibration.reliability_diagram(
            LABELS, {"a": PROBS * 2}, tmp_path / "r.png"
        )
    with pytest.raises(ValueError, match="`title`"):
        calibration.reliability_diagram(
            LABELS, PROBS, tmp_path / "r.png", title=3
        )
    with pytest.raises(ValueError, match="`path`"):
        calibration.reliability_diagram(LABELS, PROBS, None)
    assert not (tmp_path / "r.png").exists()
