"""`keras_qsgld.losses.GaussianNegativeLogLikelihood` against NumPy: values, shapes, weights,
validation and serialization, on every backend."""

import math

import keras
import ml_dtypes
import numpy as np
import pytest

from keras_qsgld.losses import GaussianNegativeLogLikelihood


def numpy_nll(y, mean, variance):
    """Per-example Gaussian NLL, summed over an example's entries."""
    y, mean, variance = (np.asarray(a, np.float64) for a in (y, mean, variance))
    terms = (y - mean) ** 2 / (2 * variance) + 0.5 * np.log(
        2 * math.pi * variance
    )
    return terms.reshape(len(terms), -1).sum(axis=1)


def value(loss, y, pred, **kwargs):
    return float(keras.ops.convert_to_numpy(loss(y, pred, **kwargs)))


def test_known_noise_matches_numpy(rng):
    y = rng.normal(size=(8, 3)).astype("float32")
    mean = rng.normal(size=(8, 3)).astype("float32")
    loss = GaussianNegativeLogLikelihood(noise_std=0.7)
    expected = numpy_nll(y, mean, 0.49).mean()
    np.testing.assert_allclose(value(loss, y, mean), expected, rtol=1e-5)
    # A hand value: one example, y - mean = 1, sigma = 1: 1/2 + log(2 pi) / 2.
    one = GaussianNegativeLogLikelihood(noise_std=1.0)
    np.testing.assert_allclose(
        value(one, np.array([[1.0]]), np.array([[0.0]])),
        0.5 + 0.5 * math.log(2 * math.pi),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "y_shape, pred_shape", [((8,), (8, 1)), ((8, 1), (8,)), ((8, 1), (8, 1))]
)
def test_a_dense_1_regressor_pairs_with_flat_targets(rng, y_shape, pred_shape):
    """`(n,)` targets with `(n, 1)` predictions compare example by example, never as an
    `(n, n)` broadcast."""
    y = rng.normal(size=8)
    mean = rng.normal(size=8)
    loss = GaussianNegativeLogLikelihood(noise_std=2.0)
    got = value(loss, y.reshape(y_shape), mean.reshape(pred_shape))
    np.testing.assert_allclose(got, numpy_nll(y, mean, 4.0).mean(), rtol=1e-5)


def test_predicted_variance_matches_numpy(rng):
    y = rng.normal(size=(6, 2))
    mean = rng.normal(size=(6, 2))
    variance = rng.uniform(0.1, 3.0, size=(6, 2))
    pred = np.stack([mean, variance], axis=-1).astype("float32")  # (6, 2, 2)
    loss = GaussianNegativeLogLikelihood()
    np.testing.assert_allclose(
        value(loss, y.astype("float32"), pred),
        numpy_nll(y, mean, variance).mean(),
        rtol=1e-5,
    )
    # (n,) and (n, 1) targets with (n, 2) predictions.
    pred1 = np.stack([mean[:, 0], variance[:, 0]], axis=-1).astype("float32")
    expected = numpy_nll(y[:, 0], mean[:, 0], variance[:, 0]).mean()
    for target in (y[:, 0], y[:, :1]):
        np.testing.assert_allclose(
            value(loss, target.astype("float32"), pred1), expected, rtol=1e-5
        )


def test_known_variance_equals_the_homoscedastic_loss(rng):
    y = rng.normal(size=(5, 1)).astype("float32")
    mean = rng.normal(size=(5, 1)).astype("float32")
    pred = np.concatenate([mean, np.full_like(mean, 0.3**2)], axis=-1)
    np.testing.assert_allclose(
        value(GaussianNegativeLogLikelihood(), y, pred),
        value(GaussianNegativeLogLikelihood(noise_std=0.3), y, mean),
        rtol=1e-5,
    )


def test_sample_weights_and_reduction(rng):
    y = rng.normal(size=(4, 1)).astype("float32")
    mean = rng.normal(size=(4, 1)).astype("float32")
    weights = np.array([1.0, 0.0, 2.0, 0.5], "float32")
    per_example = numpy_nll(y, mean, 0.25)
    loss = GaussianNegativeLogLikelihood(noise_std=0.5)
    np.testing.assert_allclose(
        value(loss, y, mean, sample_weight=weights),
        (per_example * weights).sum() / 4,  # Keras' sum_over_batch_size
        rtol=1e-5,
    )
    total = GaussianNegativeLogLikelihood(noise_std=0.5, reduction="sum")
    np.testing.assert_allclose(
        value(total, y, mean), per_example.sum(), rtol=1e-5
    )


def test_mse_at_twice_the_variance_is_the_same_posterior(rng):
    """`N * MSE / (2 sigma**2)` is the NLL up to a constant: the gradients agree."""
    y = rng.normal(size=(8, 1)).astype("float32")
    mean = rng.normal(size=(8, 1)).astype("float32")
    sigma = 0.6
    nll = value(GaussianNegativeLogLikelihood(noise_std=sigma), y, mean)
    mse = float(np.mean((y - mean) ** 2))
    constant = math.log(sigma) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(nll, mse / (2 * sigma**2) + constant, rtol=1e-5)


def test_it_trains_and_round_trips_through_a_keras_file(tmp_path, rng):
    x = rng.normal(size=(32, 3)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.1 * rng.normal(size=32)).astype(
        "float32"
    )
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(
        optimizer="sgd", loss=GaussianNegativeLogLikelihood(noise_std=0.1)
    )
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, GaussianNegativeLogLikelihood)
    assert loaded.loss.noise_std == 0.1
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0),
        model.evaluate(x, y, verbose=0),
        rtol=1e-6,
    )


def test_config_round_trip():
    loss = GaussianNegativeLogLikelihood(noise_std=0.25, name="nll")
    again = GaussianNegativeLogLikelihood.from_config(loss.get_config())
    assert again.noise_std == 0.25 and again.name == "nll"
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, GaussianNegativeLogLikelihood)
    assert restored.noise_std == 0.25
    assert (
        GaussianNegativeLogLikelihood.from_config(
            GaussianNegativeLogLikelihood().get_config()
        ).noise_std
        is None
    )


@pytest.mark.parametrize(
    "number",
    [
        0.5,
        np.float32(0.5),
        np.array(0.5),
        np.float16(0.5),
        ml_dtypes.bfloat16(0.5),
    ],
)
def test_every_real_number_type_is_accepted(number):
    noise_std = GaussianNegativeLogLikelihood(noise_std=number).noise_std
    assert noise_std == 0.5 and type(noise_std) is float
    assert GaussianNegativeLogLikelihood(noise_std=2).noise_std == 2.0


@pytest.mark.parametrize(
    "bad", [0.0, -1.0, float("nan"), float("inf"), True, "1", [1.0], 1e-20]
)
def test_bad_noise_std_is_refused_by_name(bad):
    with pytest.raises(ValueError, match=r"`noise_std`.*Received: noise_std="):
        GaussianNegativeLogLikelihood(noise_std=bad)


def test_predictions_without_a_variance_axis_are_refused():
    with pytest.raises(ValueError, match=r"last axis \(length 2\).*\(4, 3\)"):
        GaussianNegativeLogLikelihood()(np.zeros((4,)), np.ones((4, 3)))


@pytest.mark.parametrize(
    "noise_std, y_shape, pred_shape",
    [
        (0.5, (3, 2), (3, 1)),  # one predicted mean broadcast over two targets
        (0.5, (3, 1), (1, 3)),  # the batch axes broadcast against each other
        (0.5, (3,), (1, 1)),
        (0.5, (3,), (3, 2)),
        (None, (3, 2), (3, 2)),  # a mean and a variance for one target of two
        (None, (4, 3), (4, 1, 2)),
    ],
)
def test_shapes_that_would_broadcast_are_refused(
    noise_std, y_shape, pred_shape
):
    """Keras' own losses broadcast here; a likelihood must not pair a target with other
    examples' or entries' predictions."""
    loss = GaussianNegativeLogLikelihood(noise_std=noise_std)
    y_pred = np.ones(pred_shape, "float32")
    if noise_std is None:
        y_pred[..., 1] = 1.0
    with pytest.raises(
        ValueError, match=r"`y_true` and `y_pred` must be of one shape"
    ):
        loss(np.zeros(y_shape, "float32"), y_pred)
