"""The cost per effective sample: keras-qsgld's sampling recipe against blackjax's and
posteriors' SGLD, on two Bayesian regressions with a known posterior.

Two problems, each with a Gaussian prior `N(0, 1)` on every weight and the bias:

- `linear`: scikit-learn's diabetes data (442 patients, 10 standardized features), the
  standardized target with Gaussian noise of a known sd (the least-squares residual's). The
  posterior is Gaussian, in closed form.
- `logistic`: scikit-learn's breast cancer data (569 tumours, 30 standardized features), a
  logistic likelihood. The reference posterior is blackjax's NUTS (4 chains of 2,000 draws
  after a window adaptation; computed on the JAX run, cached in the output folder).

Every sampler runs SGLD with the same step, minibatch size, number of updates, burn-in and
thinning on `--chains` chains: keras-qsgld's `QSGLD(lr, resolution=Temperature(1/N),
rounding="dithered")` in `model.fit` with a `PosteriorSampler` (one execution per update,
and on JAX the fast recipe: `steps_per_execution=thin`), blackjax's `sgld` (`--backend jax`; its
step size `lr / N` is the same update, its steps in a jitted `lax.scan` per sample) and
posteriors' `sgmcmc.sgld` (`--backend torch`, its log posterior per example at temperature
`1/N`, the same update again). All draw the same kind of minibatches (a new permutation of
the data each epoch), so their chains follow the same law: their effective sample sizes
agree within noise, and the cost per effective sample is the time per update that differs.

Columns: wall-clock seconds of all chains (compilation included), the smallest bulk ESS over
the parameters (ArviZ, over the chains), milliseconds per effective sample, and the accuracy
against the reference: the largest error of a posterior mean in posterior sds, and the range
of the sampled marginal variances over the posterior's.

    python -m benchmarks.langevin.cost                  # JAX: keras-qsgld and blackjax
    python -m benchmarks.langevin.cost --backend torch  # PyTorch: keras-qsgld and posteriors

It needs the `peers` extra (blackjax, posteriors, ArviZ). The JAX run must come first: it
computes the NUTS reference of the logistic problem that the PyTorch run reads.
"""

import importlib.util
import os
import time

import numpy as np

from benchmarks import common
from experiments import cli
from experiments.linear_regression import (
    diabetes,
    exact_posterior,
    least_squares_noise_std,
)

TABLES = ("linear", "logistic")
# The SGLD run of each problem: (learning rate, batch size, updates per chain, burn-in, thin).
SETTINGS = {
    "linear": dict(
        lr=0.05, batch_size=32, updates=40_000, burn_in=4_000, thin=20
    ),
    "logistic": dict(
        lr=0.05, batch_size=32, updates=40_000, burn_in=4_000, thin=20
    ),
}
QUICK = dict(updates=600, burn_in=100, thin=10)
PRIOR_STD = 1.0
CANDIDATES = {
    "jax": ("keras_qsgld", "keras_qsgld_fast", "blackjax"),
    # Keras on PyTorch refuses steps_per_execution > 1: no fast recipe there.
    "torch": ("keras_qsgld", "posteriors"),
}
LABELS = {
    "keras_qsgld": "keras-qsgld, fit + PosteriorSampler",
    "keras_qsgld_fast": "keras-qsgld, fit + PosteriorSampler, steps_per_execution=thin",
    "blackjax": "blackjax.sgld, jitted lax.scan",
    "posteriors": "posteriors.sgmcmc.sgld, Python loop",
}


def build_parser():
    p = common.parser(
        __doc__.split("\n\n")[0],
        TABLES,
        os.path.join("results", "langevin_cost"),
    )
    p.add_argument(
        "--backend",
        choices=tuple(CANDIDATES),
        default="jax",
        help="the Keras backend, and the peer it is compared with",
    )
    p.add_argument(
        "--chains", type=cli.positive_int, default=4, help="chains per sampler"
    )
    return p


# -- the problems (NumPy, float64) -------------------------------------------------------
def load_problem(name):
    """`(x, y, noise_std)`: standardized features, targets (float64), and the noise sd of the
    linear problem (None for the logistic one)."""
    if name == "linear":
        x, y = diabetes()
        return x, y, least_squares_noise_std(x, y)
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x, y.astype(np.float64), None


def linear_reference(x, y, noise_std):
    """The closed-form posterior of `[w, b]`: mean and marginal variances."""
    mean, precision = exact_posterior(x, y, noise_std, PRIOR_STD)
    return mean, np.diag(np.linalg.inv(precision))


def logistic_reference(args, x, y):
    """NUTS (blackjax) draws of `[w, b]`, `(draws, d + 1)`, cached in the output folder."""
    cached = common.load_array(args, "logistic_nuts_reference")
    if cached is not None:
        return cached
    if args.backend != "jax":
        raise cli.UserError(
            "the logistic problem's NUTS reference is computed by the JAX run: run "
            "`python -m benchmarks.langevin.cost --backend jax` first (same --output-dir)"
        )
    import blackjax
    import jax
    import jax.numpy as jnp

    design = jnp.asarray(np.c_[x, np.ones(len(x))])
    labels = jnp.asarray(y)

    def logdensity(theta):
        logits = design @ theta
        loglik = jnp.sum(labels * logits - jnp.logaddexp(0.0, logits))
        return loglik - 0.5 * jnp.sum(theta**2) / PRIOR_STD**2

    draws = []
    for chain in range(4):
        key = jax.random.PRNGKey(1000 + chain)
        warm_key, run_key = jax.random.split(key)
        adaptation = blackjax.window_adaptation(blackjax.nuts, logdensity)
        (state, parameters), _ = adaptation.run(
            warm_key, jnp.zeros(design.shape[1]), num_steps=1000
        )
        kernel = blackjax.nuts(logdensity, **parameters).step

        def one(state, key):
            state, _ = kernel(key, state)
            return state, state.position

        _, positions = jax.lax.scan(one, state, jax.random.split(run_key, 2000))
        draws.append(np.asarray(positions))
    draws = np.concatenate(draws)
    common.save_array(args, "logistic_nuts_reference", draws)
    return draws


# -- minibatches: a new permutation of the data each epoch ----------------------------------
def initial_position(d, chain):
    """The starting point `[w (d), b]` of chain `chain`, the same for every sampler."""
    return np.random.default_rng(chain).normal(scale=0.1, size=d + 1)


def batch_indices(n, batch_size, updates, seed):
    """`(updates, batch_size)` example indices: epochs of fresh permutations, batches running
    on across epochs."""
    rng = np.random.default_rng(seed)
    epochs = -(-updates * batch_size // n)
    stream = np.concatenate([rng.permutation(n) for _ in range(epochs)])
    return stream[: updates * batch_size].reshape(updates, batch_size)


# -- the samplers: each returns (draws (chains, samples, d + 1), seconds) -------------------
def run_keras(problem, x, y, noise_std, s, chains, fast):
    import keras

    import keras_qsgld
    from keras_qsgld.losses import GaussianNegativeLogLikelihood
    from keras_qsgld.sampling import PosteriorSampler

    n, d = x.shape
    temperature = 1.0 / n
    loss = (
        GaussianNegativeLogLikelihood(noise_std=noise_std)
        if problem == "linear"
        else keras.losses.BinaryCrossentropy(from_logits=True)
    )
    xs, ys = x.astype("float32"), y.astype("float32")
    all_draws, seconds = [], 0.0
    for chain in range(chains):
        keras.utils.set_random_seed(chain)
        model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1)])
        start_at = initial_position(d, chain).astype("float32")
        model.set_weights([start_at[:d].reshape(d, 1), start_at[d:]])
        model.compile(
            optimizer=keras_qsgld.QSGLD(
                s["lr"],
                resolution=keras_qsgld.Temperature(temperature),
                rounding="dithered",
                seed=chain,
                weight_decay=temperature / PRIOR_STD**2,
            ),
            loss=loss,
            steps_per_execution=s["thin"] if fast else 1,
        )
        sampler = PosteriorSampler(
            burn_in=s["burn_in"],
            burn_in_unit="steps",
            thin=s["thin"],
            verbose=0,
        )
        index = batch_indices(
            n, s["batch_size"], s["updates"], seed=chain
        ).ravel()
        start = time.perf_counter()
        model.fit(
            xs[index],
            ys[index],
            batch_size=s["batch_size"],
            shuffle=False,
            epochs=1,
            callbacks=[sampler],
            verbose=0,
        )
        seconds += time.perf_counter() - start
        all_draws.append(
            [
                np.concatenate([np.ravel(w) for w in sample])
                for sample in sampler.samples
            ]
        )
    return np.array(all_draws, dtype=np.float64), seconds


def run_blackjax(problem, x, y, noise_std, s, chains):
    import blackjax
    import jax
    import jax.numpy as jnp

    n, d = x.shape
    design = jnp.asarray(np.c_[x, np.ones(n)], jnp.float32)
    labels = jnp.asarray(y, jnp.float32)

    def logprior(theta):
        return -0.5 * jnp.sum(theta**2) / PRIOR_STD**2

    def loglikelihood(theta, example):  # blackjax maps it over the minibatch
        row, target = example
        mean = row @ theta
        if problem == "linear":
            return -0.5 * (target - mean) ** 2 / noise_std**2
        return target * mean - jnp.logaddexp(0.0, mean)

    grad_estimator = blackjax.sgmcmc.gradients.grad_estimator(
        logprior, loglikelihood, n
    )
    sgld = blackjax.sgld(grad_estimator)
    step_size = s["lr"] / n  # lr * T: the same update as QSGLD's at T = 1/N

    @jax.jit
    def advance(state, key, index):  # `thin` updates: index (thin, batch)
        def one(carry, inputs):
            k, i = inputs
            batch = (design[i], labels[i])
            return sgld.step(k, carry, batch, step_size), None

        keys = jax.random.split(key, index.shape[0])
        state, _ = jax.lax.scan(one, state, (keys, index))
        return state

    all_draws, seconds = [], 0.0
    for chain in range(chains):
        index = batch_indices(n, s["batch_size"], s["updates"], seed=chain)
        index = jnp.asarray(index.reshape(-1, s["thin"], s["batch_size"]))
        key = jax.random.PRNGKey(chain)
        start = time.perf_counter()
        state = jnp.asarray(initial_position(d, chain), jnp.float32)
        draws = []
        for block in range(index.shape[0]):
            key, sub = jax.random.split(key)
            state = advance(state, sub, index[block])
            if (block + 1) * s["thin"] > s["burn_in"]:
                draws.append(np.asarray(state))
        seconds += time.perf_counter() - start
        all_draws.append(draws)
    return np.array(all_draws, dtype=np.float64), seconds


def run_posteriors(problem, x, y, noise_std, s, chains):
    import posteriors
    import torch

    n, d = x.shape
    design = torch.tensor(np.c_[x, np.ones(n)], dtype=torch.float32)
    labels = torch.tensor(y, dtype=torch.float32)

    def log_posterior(theta, batch):
        rows, target = batch
        mean = rows @ theta
        if problem == "linear":
            loglik = -0.5 * (target - mean) ** 2 / noise_std**2
        else:
            loglik = target * mean - torch.nn.functional.softplus(mean)
        # posteriors' convention: the log posterior per example, sampled at T = 1/N.
        value = loglik.mean() - 0.5 * (theta**2).sum() / PRIOR_STD**2 / n
        return value, value

    transform = posteriors.sgmcmc.sgld.build(
        log_posterior, lr=s["lr"], temperature=1.0 / n
    )
    all_draws, seconds = [], 0.0
    for chain in range(chains):
        torch.manual_seed(chain)
        index = torch.tensor(
            batch_indices(n, s["batch_size"], s["updates"], seed=chain)
        )
        start = time.perf_counter()
        state = transform.init(
            torch.tensor(initial_position(d, chain), dtype=torch.float32)
        )
        draws = []
        for u in range(s["updates"]):
            rows = index[u]
            state, _ = transform.update(
                state, (design[rows], labels[rows]), inplace=True
            )
            if u + 1 > s["burn_in"] and (u + 1) % s["thin"] == 0:
                draws.append(state.params.detach().numpy().copy())
        seconds += time.perf_counter() - start
        all_draws.append(draws)
    return np.array(all_draws, dtype=np.float64), seconds


# -- the table ----------------------------------------------------------------------------
def measure(args, problem, candidate, store):
    key = store.make_key(
        candidate=candidate, chains=args.chains, quick=args.quick
    )
    record = store.get(key, force=args.force)
    if record is not None:
        return record
    x, y, noise_std = load_problem(problem)
    s = dict(SETTINGS[problem], **(QUICK if args.quick else {}))
    common.log(
        f"{problem}: {LABELS[candidate]}, {args.chains} chains x {s['updates']} updates"
    )
    if candidate.startswith("keras_qsgld"):
        draws, seconds = run_keras(
            problem,
            x,
            y,
            noise_std,
            s,
            args.chains,
            fast=candidate.endswith("fast"),
        )
    elif candidate == "blackjax":
        draws, seconds = run_blackjax(problem, x, y, noise_std, s, args.chains)
    else:
        draws, seconds = run_posteriors(
            problem, x, y, noise_std, s, args.chains
        )
    if problem == "linear":
        mean, variance = linear_reference(x, y, noise_std)
    else:
        reference = logistic_reference(args, x, y)
        mean, variance = reference.mean(axis=0), reference.var(axis=0)
    import arviz as az

    ess = float(
        np.min(az.ess(az.convert_to_dataset({"theta": draws}))["theta"].values)
    )
    pooled = draws.reshape(-1, draws.shape[-1])
    ratio = pooled.var(axis=0) / variance
    record = {
        "seconds": seconds,
        "updates": args.chains * s["updates"],
        "samples": int(pooled.shape[0]),
        "ess": ess,
        "ms_per_effective_sample": 1e3 * seconds / ess,
        "us_per_update": 1e6 * seconds / (args.chains * s["updates"]),
        "mean_error_sd": float(
            np.max(np.abs(pooled.mean(axis=0) - mean) / np.sqrt(variance))
        ),
        "variance_ratio_min": float(ratio.min()),
        "variance_ratio_max": float(ratio.max()),
        "settings": s,
    }
    return store.put(key, record)


def main(argv=None):
    args = build_parser().parse_args(argv)
    common.use_backend(
        __name__,
        args.backend,
        "compares keras-qsgld with its peer on that backend",
    )
    args = common.finish_args(args, backends=[args.backend])
    peer = "blackjax" if args.backend == "jax" else "posteriors"
    missing = [
        m for m in (peer, "arviz") if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise cli.UserError(
            f"this benchmark needs {', '.join(missing)}: the 'peers' extra, "
            'pip install -e ".[peers]"'
        )
    for problem in args.table_list:
        store = common.ResultStore(
            args.output_dir, f"{problem}_{args.backend}", force=args.force
        )
        rows = []
        for candidate in CANDIDATES[args.backend]:
            r = measure(args, problem, candidate, store)
            rows.append(
                [
                    LABELS[candidate],
                    f"{r['seconds']:.1f}",
                    f"{r['us_per_update']:.0f}",
                    f"{r['ess']:.0f}",
                    f"{r['ms_per_effective_sample']:.2f}",
                    f"{r['mean_error_sd']:.2f}",
                    f"{r['variance_ratio_min']:.2f}-{r['variance_ratio_max']:.2f}",
                ]
            )
        s = dict(SETTINGS[problem], **(QUICK if args.quick else {}))
        common.write_table(
            args,
            f"{problem}_{args.backend}",
            f"Cost per effective sample, {problem} regression, {common.BACKEND_NAMES[args.backend]}",
            [
                "sampler",
                "seconds",
                "us per update",
                "min ESS",
                "ms per effective sample",
                "max mean error (sd)",
                "variance ratio",
            ],
            rows,
            notes=[
                f"SGLD at T = 1/N with a N(0, 1) prior: lr {s['lr']} (step size lr/N), batch "
                f"{s['batch_size']}, {args.chains} chains x {s['updates']} updates, burn-in "
                f"{s['burn_in']}, thin {s['thin']}; chain k starts from the same point for every "
                "sampler (N(0, 0.1**2) draws of seed k) and draws its minibatches and noise from "
                "seed k.",
                "min ESS: ArviZ's bulk ESS over the chains, the smallest over the parameters; "
                "seconds: all chains, compilation included.",
                "All samplers make the same update on the same kind of minibatches, so their "
                "chains follow one law and differ in ESS by Monte-Carlo noise only: where the "
                "ESS is small (a softest direction that has not mixed in this many updates, "
                "as the variance ratios far from 1 show), compare the cost per update.",
                "Reference: "
                + (
                    "the closed-form posterior."
                    if problem == "linear"
                    else "blackjax NUTS, 4 chains x 2,000 draws after 1,000 adaptation steps."
                ),
            ],
        )


if __name__ == "__main__":
    common.run_benchmark(main)
