"""`keras_qsgld.sampling.to_inference_data` and `convergence_summary`: the samples of several
chains laid out for ArviZ, whose R-hat and ESS on known chains are ArviZ's own values; chains
that disagree are flagged; several chains feed `posterior_predictive`; validation."""

import arviz as az
import keras
import numpy as np
import pytest

import keras_qsgld
from keras_qsgld.sampling import (
    PosteriorSampler,
    convergence_summary,
    posterior_predictive,
    to_inference_data,
)

FEATURES, CLASSES = 3, 2


def model_of(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )


def ar1_chains(rng, chains, draws, rho, offsets=None):
    """`(chains, draws, FEATURES * CLASSES + CLASSES)` AR(1) draws with unit variance."""
    size = FEATURES * CLASSES + CLASSES
    z = np.empty((chains, draws, size))
    z[:, 0] = rng.normal(size=(chains, size))
    for t in range(1, draws):
        z[:, t] = rho * z[:, t - 1] + np.sqrt(1 - rho**2) * rng.normal(
            size=(chains, size)
        )
    if offsets is not None:
        z += np.asarray(offsets)[:, None, None]
    return z


def as_weight_lists(z):
    """Each draw as `[kernel (FEATURES, CLASSES), bias (CLASSES,)]` float32 arrays."""
    k = FEATURES * CLASSES
    return [
        [
            [
                d[:k].reshape(FEATURES, CLASSES).astype("float32"),
                d[k:].astype("float32"),
            ]
            for d in chain
        ]
        for chain in z
    ]


def test_layout_and_arviz_values_on_known_chains(rng):
    z = ar1_chains(rng, chains=4, draws=1000, rho=0.8)
    model = model_of()
    idata = to_inference_data(as_weight_lists(z), model)
    kernel, bias = (v.path for v in model.trainable_weights)
    assert set(idata.posterior.data_vars) == {kernel, bias}
    assert idata.posterior[kernel].shape == (4, 1000, FEATURES, CLASSES)
    assert idata.posterior[bias].shape == (4, 1000, CLASSES)
    # The draws are the samples (float32, as the model holds them), in chain and draw order.
    z32 = z.astype("float32").astype("float64")
    np.testing.assert_array_equal(
        idata.posterior[kernel].values.reshape(4, 1000, -1),
        z32[..., : FEATURES * CLASSES],
    )
    # R-hat and ESS are ArviZ's on the same arrays.
    direct = az.convert_to_dataset({"bias": z32[..., FEATURES * CLASSES :]})
    np.testing.assert_allclose(
        az.rhat(idata)[bias].values, az.rhat(direct)["bias"].values, rtol=1e-12
    )
    np.testing.assert_allclose(
        az.ess(idata)[bias].values, az.ess(direct)["bias"].values, rtol=1e-12
    )
    summary = convergence_summary(idata)
    assert set(summary) == {kernel, bias}
    assert summary[bias]["r_hat"] == pytest.approx(
        float(az.rhat(direct)["bias"].max()), rel=1e-12
    )
    assert summary[bias]["ess_bulk"] == pytest.approx(
        float(az.ess(direct, method="bulk")["bias"].min()), rel=1e-12
    )
    assert summary[bias]["ess_tail"] == pytest.approx(
        float(az.ess(direct, method="tail")["bias"].min()), rel=1e-12
    )
    # Mixed AR(1) chains: R-hat near 1, the ESS near 4000 * (1 - rho) / (1 + rho) = 444.
    assert max(v["r_hat"] for v in summary.values()) < 1.03
    assert 250 < min(v["ess_bulk"] for v in summary.values()) < 600


def test_chains_that_disagree_are_flagged(rng):
    z = ar1_chains(
        rng, chains=4, draws=200, rho=0.5, offsets=[0.0, 0.0, 0.0, 2.0]
    )
    summary = convergence_summary(
        to_inference_data(as_weight_lists(z), model_of())
    )
    assert min(v["r_hat"] for v in summary.values()) > 1.1


def test_files_and_chosen_weights(tmp_path, rng):
    """Samples on disk read back as in memory; `weights` chooses what is exported."""
    z = ar1_chains(rng, chains=2, draws=5, rho=0.5)
    lists = as_weight_lists(z)
    model = model_of()
    files = []
    for c, chain in enumerate(lists):
        paths = []
        for d, sample in enumerate(chain):
            model.set_weights(sample)
            path = tmp_path / f"c{c}-{d}.weights.h5"
            model.save_weights(path)
            paths.append(str(path))
        files.append(paths)
    before = [w.copy() for w in model_of(seed=1).get_weights()]
    model.set_weights(before)
    bias = model.trainable_weights[1].path
    from_files = to_inference_data(files, model, weights=[bias])
    from_memory = to_inference_data(lists, model, weights=[bias])
    assert list(from_files.posterior.data_vars) == [bias]
    np.testing.assert_array_equal(
        from_files.posterior[bias].values, from_memory.posterior[bias].values
    )
    for got, want in zip(
        model.get_weights(), before
    ):  # the model's own weights are back
        np.testing.assert_array_equal(got, want)


def test_predictions_group_holds_each_samples_probabilities(rng):
    z = ar1_chains(rng, chains=2, draws=3, rho=0.5)
    lists = as_weight_lists(z)
    model = model_of()
    x = rng.normal(size=(7, FEATURES)).astype("float32")
    idata = to_inference_data(lists, model, x=x)
    probs = idata.predictions["probabilities"].values
    assert probs.shape == (2, 3, 7, CLASSES)
    for c in range(2):
        for d in range(3):
            kernel, bias = lists[c][d]
            logits = x.astype("float64") @ kernel + bias
            want = np.exp(logits - logits.max(1, keepdims=True))
            want /= want.sum(1, keepdims=True)
            np.testing.assert_allclose(probs[c, d], want, rtol=1e-5, atol=1e-6)
    # The posterior predictive of the pooled chains is the mean of these.
    np.testing.assert_allclose(
        posterior_predictive(model, [s for chain in lists for s in chain], x),
        probs.mean(axis=(0, 1)),
        rtol=1e-12,
    )
    assert set(convergence_summary(idata, group="predictions")) == {
        "probabilities"
    }


def test_regression_predictions():
    # Softplus outputs: the second unit is a variance > 0.
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(2, activation="softplus")]
    )
    x = np.ones((3, 2), "float32")
    chains = [[model.get_weights()] * 2] * 2
    idata = to_inference_data(
        chains, model, x=x, task="regression", model_variance=False
    )
    assert idata.predictions["mean"].shape == (2, 2, 3, 2)
    idata = to_inference_data(
        chains,
        model,
        x=x,
        task="regression",
        model_variance=True,  # one output of two units: (mean, variance)
    )
    assert idata.predictions["mean"].shape == (2, 2, 3)
    assert idata.predictions["variance"].shape == (2, 2, 3)


def test_samplers_of_several_chains(rng):
    """PosteriorSamplers stand for their chains, here and in posterior_predictive."""
    x = rng.normal(size=(16, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, size=16)
    samplers = []
    for seed in range(2):
        model = model_of(seed)
        model.compile(
            optimizer=keras_qsgld.QSGLD(
                0.05,
                resolution=keras_qsgld.Temperature(1 / 16),
                rounding="dithered",
                seed=seed,
            ),
            loss="sparse_categorical_crossentropy",
        )
        sampler = PosteriorSampler(thin=2, verbose=0)
        model.fit(x, y, batch_size=4, epochs=2, callbacks=[sampler], verbose=0)
        samplers.append(sampler)
    assert [len(s.samples) for s in samplers] == [4, 4]
    idata = to_inference_data(samplers, model)
    assert (
        idata.posterior.sizes["chain"] == 2
        and idata.posterior.sizes["draw"] == 4
    )
    pooled = [w for s in samplers for w in s.samples]
    np.testing.assert_array_equal(
        posterior_predictive(model, samplers, x),
        posterior_predictive(model, pooled, x),
    )


@pytest.mark.parametrize(
    "chains, message",
    [
        ([], r"at least one chain"),
        ("abc", r"list of chains"),
        ([[1, 2], 3], r"chains\[1\] of type int"),
        ([[], []], r"one length >= 1.*\[0, 0\]"),
    ],
)
def test_bad_chains_are_refused(chains, message):
    with pytest.raises(ValueError, match=message):
        to_inference_data(chains, model_of())


def test_chains_of_different_lengths_and_unknown_weights(rng):
    z = ar1_chains(rng, chains=2, draws=3, rho=0.5)
    lists = as_weight_lists(z)
    with pytest.raises(ValueError, match=r"one length.*max_samples.*\[3, 2\]"):
        to_inference_data([lists[0], lists[1][:2]], model_of())
    with pytest.raises(ValueError, match=r"`weights` names a weight.*'nope'"):
        to_inference_data(lists, model_of(), weights=["nope"])
    with pytest.raises(
        ValueError, match=r"`weights` must be None or a non-empty list"
    ):
        to_inference_data(lists, model_of(), weights="dense/bias")
    with pytest.raises(
        ValueError, match=r"`weights` must be None or a non-empty list"
    ):
        to_inference_data(lists, model_of(), weights=[])
    with pytest.raises(ValueError, match=r"samples\[0\] is a list of 1 arrays"):
        to_inference_data([[[np.zeros(2)]]], model_of())
    with pytest.raises(ValueError, match=r"`group` must be a group"):
        convergence_summary(
            to_inference_data(lists, model_of()), group="predictions"
        )


def test_weights_named_twice_or_by_themselves(rng):
    """A path given twice is refused (it gave its draws twice, the other weights NaN-padded);
    a weight stands for its path."""
    lists = as_weight_lists(ar1_chains(rng, chains=2, draws=4, rho=0.5))
    model = model_of()
    kernel, bias = (v.path for v in model.weights)
    with pytest.raises(ValueError, match=r"names a weight twice.*" + bias):
        to_inference_data(lists, model, weights=[bias, kernel, bias])
    by_weight = to_inference_data(lists, model, weights=[model.weights[1]])
    by_path = to_inference_data(lists, model, weights=[bias])
    assert list(by_weight.posterior.data_vars) == [bias]
    np.testing.assert_array_equal(
        by_weight.posterior[bias].values, by_path.posterior[bias].values
    )
    assert by_weight.posterior[bias].shape == (2, 4, CLASSES)


@pytest.mark.parametrize("which", ["transposed", "flat", "scalar"])
def test_samples_of_other_shapes_are_refused(rng, which):
    """Weight lists with the right count but other shapes were read as they came."""
    lists = as_weight_lists(ar1_chains(rng, chains=2, draws=3, rho=0.5))
    kernel, bias = lists[1][2]
    bad = {
        "transposed": [kernel.T, bias],
        "flat": [kernel, np.zeros(CLASSES + 1, "float32")],
        "scalar": [np.float32(0.0), np.float32(0.0)],
    }[which]
    lists[1][2] = bad
    with pytest.raises(
        ValueError, match=r"samples\[2\] holds an array of shape"
    ):
        to_inference_data(lists, model_of())


def test_convergence_summary_wants_inference_data():
    with pytest.raises(
        ValueError, match=r"`idata` must be an `arviz.InferenceData`.*dict"
    ):
        convergence_summary({"a": 1})


def test_posterior_predictive_pools_chains_given_as_lists(rng):
    """The chains `to_inference_data` takes (lists of samples) are pooled by
    `posterior_predictive` as a list of samplers is."""
    lists = as_weight_lists(ar1_chains(rng, chains=2, draws=3, rho=0.5))
    model = model_of()
    x = rng.normal(size=(5, FEATURES)).astype("float32")
    pooled = posterior_predictive(model, lists[0] + lists[1], x)
    np.testing.assert_array_equal(posterior_predictive(model, lists, x), pooled)
