"""Convergence diagnostics over several chains, through ArviZ.

Whether a chain has mixed is told by comparing chains: split R-hat (within- against
between-chain variance) and the effective sample size (ESS) of Vehtari et al. (2021). Those
estimators are ArviZ's, a well-kept library for exactly this; this module only lays the
samples out as ArviZ wants them: `to_inference_data` turns the samples of `K` chains into an
`arviz.InferenceData` with one variable per model weight (dimensions chain, draw, then the
weight's shape) and, given inputs `x`, each sample's predictions on them. `convergence_summary`
reads the worst R-hat and the smallest ESS of each variable. Everything else (`az.summary`,
`az.plot_trace`, `az.ess(..., method="tail")`) applies to the `InferenceData` as it is.

Needs ArviZ: `pip install "keras-qsgld[diagnostics]"`.
"""

import warnings

import keras
import numpy as np

from keras_qsgld.sampling import predictive, store

#: The extra that installs ArviZ.
EXTRA = "diagnostics"


def _arviz():
    try:
        with warnings.catch_warnings():
            # ArviZ 0.2x announces its coming 1.0 at import, a FutureWarning about nothing
            # this module uses.
            warnings.simplefilter("ignore", FutureWarning)
            import arviz
    except ImportError as error:
        raise ImportError(
            "Convergence diagnostics need ArviZ: pip install "
            f"'keras-qsgld[{EXTRA}]' (or pip install arviz)"
        ) from error
    return arviz


def _chains(chains):
    """A list of `K >= 1` sample lists of one length."""
    if store.is_chain(chains) or not isinstance(chains, (list, tuple)):
        raise ValueError(
            "Argument `chains` must be a list of chains, each a PosteriorSampler or a list of "
            "samples (pass [sampler] for one chain). Received: chains of type "
            f"{type(chains).__name__}"
        )
    if not chains:
        raise ValueError(
            "Argument `chains` must hold at least one chain. Received: chains=[]"
        )
    lists = []
    for k, chain in enumerate(chains):
        if not store.is_chain(chain) and not isinstance(chain, (list, tuple)):
            raise ValueError(
                "Argument `chains` must hold chains, each a PosteriorSampler or a list of "
                f"samples. Received: chains[{k}] of type {type(chain).__name__}"
            )
        lists.append(list(chain.samples if store.is_chain(chain) else chain))
    lengths = [len(c) for c in lists]
    if min(lengths) == 0 or len(set(lengths)) != 1:
        raise ValueError(
            "Argument `chains` must hold chains of one length >= 1 (R-hat and ESS compare "
            "draws across chains; PosteriorSampler(max_samples=...) caps a chain). "
            f"Received: chains with {lengths} samples"
        )
    return lists


def _selected_weights(model, weights):
    """`[(name, index in model.weights)]` of the weights to export."""
    everything = {v.path: i for i, v in enumerate(model.weights)}
    if weights is None:
        return [(v.path, everything[v.path]) for v in model.trainable_weights]
    if (
        isinstance(weights, str)
        or not isinstance(weights, (list, tuple))
        or not weights
    ):
        raise ValueError(
            "Argument `weights` must be None or a non-empty list of weight paths (`v.path` "
            f"for v in model.weights) or weights. Received: weights={weights!r}"
        )
    chosen = []
    for weight in weights:
        name = getattr(weight, "path", weight)  # a weight stands for its path
        if not isinstance(name, str) or name not in everything:
            raise ValueError(
                f"Argument `weights` names a weight the model does not have. Received: "
                f"{weight!r}; the model's weights: {sorted(everything)}"
            )
        if any(name == seen for seen, _ in chosen):
            raise ValueError(
                f"Argument `weights` names a weight twice. Received: {name!r} twice in "
                f"weights={weights!r}"
            )
        chosen.append((name, everything[name]))
    return chosen


def _weight_draws(model, samples, chosen):
    """`{name: array (draws, *shape)}` of the chosen weights over one chain's samples."""
    draws = {name: [] for name, _ in chosen}
    with store.restoring_weights(model):
        for index, sample in enumerate(samples):
            if isinstance(sample, (list, tuple)):
                store.check_weight_list(sample, index, model.weights)
                values = sample
            else:  # a file: read it through the model
                store.load_sample(model, sample, index)
                values = [keras.ops.convert_to_numpy(v) for v in model.weights]
            for name, i in chosen:
                draws[name].append(np.array(values[i], dtype=np.float64))
    return {name: np.stack(d) for name, d in draws.items()}


def to_inference_data(
    chains,
    model,
    weights=None,
    x=None,
    batch_size=None,
    task="classification",
    from_logits=False,
    model_variance=False,
):
    """The samples of several chains as an `arviz.InferenceData`, for R-hat and ESS.

    ```
    posterior[weight path]       (chain, draw, *weight shape)  each chosen weight
    predictions["probabilities"] (chain, draw, n, ...)         with x, classification
    predictions["mean"]          (chain, draw, n, ...)         with x, regression
    predictions["variance"]      (chain, draw, n, ...)         with x, model_variance=True
    ```

    Draw `d` of chain `k` is the `d`-th sample of chain `k`; the chains must hold the same
    number of samples. Variables are looked up by name (ArviZ keeps them in its own
    order). `az.rhat(idata)` and `az.ess(idata)` then give split R-hat and the bulk ESS of
    every weight entry, `az.rhat(idata.predictions)` those of every prediction;
    `convergence_summary(idata)` the worst of each variable.

    Args:
        chains: a list of `K >= 1` chains, each a `PosteriorSampler` or a list of samples
            (weight lists as `model.get_weights()` returns, or `.weights.h5` paths).
        model: a built `keras.Model` with the samples' architecture (it names the weights,
            reads sample files and predicts; its own weights are restored afterwards).
        weights: None (default: every trainable weight) or a non-empty list of weight
            paths (`v.path for v in model.weights`) or of the weights themselves, each
            once: the ones to export. A sample of a large
            model is large: choose a few, or rely on the predictions.
        x: None (default) or inputs, anything `posterior_predictive` takes: each sample's
            predictions on them are exported too.
        batch_size: as in `posterior_predictive`, for the predictions on `x`.
        task: as in `posterior_predictive`: `"classification"` (default) or
            `"regression"`.
        from_logits: as in `posterior_predictive` (classification).
        model_variance: as in `posterior_predictive` (regression).

    Returns:
        An `arviz.InferenceData` with the groups `posterior` and, with `x`, `predictions`
        (float64 values).

    Raises:
        ImportError: without ArviZ (naming the extra to install).
        ValueError: for a bad argument (naming it): no chains, chains of different
            lengths, an unknown or repeated weight, a sample that does not fit the model
            (a weight list of other shapes), and
            what `posterior_predictive` refuses.

    References:
        Vehtari, Gelman, Simpson, Carpenter & Buerkner, 2021. Rank-normalization, folding,
        and localization: An improved R-hat for assessing convergence of MCMC.
        https://arxiv.org/abs/1903.08008
    """
    arviz = _arviz()
    chains = _chains(chains)
    options = predictive.check_prediction_arguments(
        model, x, batch_size, task, from_logits, model_variance, 0
    )
    chosen = _selected_weights(model, weights)
    per_chain = [_weight_draws(model, samples, chosen) for samples in chains]
    posterior = {
        name: np.stack([c[name] for c in per_chain]) for name, _ in chosen
    }
    groups = {"posterior": posterior}
    if x is not None:
        groups["predictions"] = _predictions(model, chains, x, options)
    return arviz.from_dict(**groups)


def _predictions(model, chains, x, options):
    """`{name: array (chain, draw, ...)}` of each sample's predictions on `x`."""
    per_chain = []
    for samples in chains:
        draws = []
        predictive.for_each_prediction(
            model, samples, x, draws.append, **options
        )
        per_chain.append(draws)
    if options["task"] == "classification":
        return {"probabilities": np.array(per_chain)}
    out = {"mean": np.array([[m for m, _ in c] for c in per_chain])}
    if options["model_variance"]:
        out["variance"] = np.array([[v for _, v in c] for c in per_chain])
    return out


def convergence_summary(idata, group="posterior"):
    """The worst split R-hat and the smallest bulk and tail ESS of each variable of a group.

    ```
    {name: {"r_hat": max over entries, "ess_bulk": min, "ess_tail": min}}
    ```

    computed by ArviZ (`az.rhat`, `az.ess(method="bulk")`, `az.ess(method="tail")`) over
    every entry of each variable (each weight entry, each prediction). Rules of thumb
    (Vehtari et al., 2021): R-hat below 1.01 and an ESS above 100 per chain before trusting
    means, and above 400 in all before trusting quantiles; an R-hat above 1.01 says the
    chains disagree: run them longer (more burn-in), or check that they sample the same
    posterior.

    Args:
        idata: an `arviz.InferenceData` (as `to_inference_data` makes).
        group: the group to read: `"posterior"` (default) or `"predictions"`.

    Returns:
        A dict of dicts of Python floats, one entry per variable of the group (NaN where
        ArviZ has no value for any entry: constant draws, or too few of them). R-hat
        compares chains: with one chain it is NaN; run two or more.

    Raises:
        ImportError: without ArviZ.
        ValueError: for an `idata` that is not an InferenceData, or a group it does not
            have.
    """
    arviz = _arviz()
    if not isinstance(idata, arviz.InferenceData):
        raise ValueError(
            "Argument `idata` must be an `arviz.InferenceData` (`to_inference_data` makes "
            f"one). Received: idata of type {type(idata).__name__}"
        )
    if group not in idata.groups():
        raise ValueError(
            f"Argument `group` must be a group of `idata`. Received: group={group!r}; "
            f"the groups: {list(idata.groups())}"
        )
    data = idata[group]
    rhat = arviz.rhat(data)
    bulk = arviz.ess(data, method="bulk")
    tail = arviz.ess(data, method="tail")
    return {
        name: {
            "r_hat": _worst(rhat[name].values, np.nanmax),
            "ess_bulk": _worst(bulk[name].values, np.nanmin),
            "ess_tail": _worst(tail[name].values, np.nanmin),
        }
        for name in data.data_vars
    }


def _worst(values, pick):
    """`pick` over the entries that are numbers; NaN when none is (ArviZ returns NaN for a
    constant entry, or for too few draws)."""
    values = np.asarray(values, dtype=np.float64)
    if np.all(np.isnan(values)):
        return float("nan")
    return float(pick(values))
