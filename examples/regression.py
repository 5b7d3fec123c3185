#!/usr/bin/env python
"""Bayesian linear regression with QSGLD, checked against its closed-form posterior.

    python -m examples.regression                        # diabetes, 4 full-batch chains (~2 min on JAX)
    python -m examples.regression --batch-size 32        # minibatches: the gradient noise's bias
    python -m examples.regression --learning-rate 0.01 --updates 100000

scikit-learn's diabetes data (442 patients, 10 standardized features, the standardized
disease progression as target) with a linear model `y = x w + b + noise`, the noise
Gaussian with a known standard deviation (`--noise-std`, by default the least-squares
residual's, 0.70 of the target's sd) and a Gaussian prior `N(0, prior_std**2)` on every
weight and the bias. Its posterior is Gaussian with precision
`P = X'X / sigma**2 + I / prior_std**2` (X with a column of ones) and mean
`P^-1 X'y / sigma**2`, in closed form.

1. **Sample**: `--chains` chains, each a `Dense(1)` model trained with
   `QSGLD(lr, resolution=Temperature(1 / N), rounding="dithered")`, the loss
   `GaussianNegativeLogLikelihood(noise_std=sigma)` (the mean negative log-likelihood: at
   `T = 1 / N` the chain samples the Bayesian posterior) and weight decay
   `T / prior_std**2` (the prior); a `PosteriorSampler` per chain keeps a sample every
   `--thin` updates after `--burn-in` updates.
2. **Diagnose**: split R-hat and effective sample sizes (ArviZ) over the chains.
3. **Compare** with the closed form: the error of the posterior mean in posterior standard
   deviations, and the sampled variance over the exact one, per weight (the marginals) and
   along the stiffest and softest directions of the posterior (the eigenvectors of `P`).
   With full batches the chain's own stationary law is known too: the Euler scheme's
   variance is larger by `1 / (1 - lr T lambda / 2)` along the eigenvalue `lambda` of `P`
   (the "Euler" column); minibatches add the gradient noise's bias on top.

The table goes to stdout and to `OUTPUT_DIR/results.md` (and `results.json`).
See docs/sampling.md, "Regression".
"""

import argparse
import json
import os
import sys
import time

# Run as a file, the script could not import the repository's experiments/ kit.
if not __package__:
    print(
        "regression.py: error: run it as a module, from the repository root: "
        "python -m examples.regression",
        file=sys.stderr,
    )
    sys.exit(2)

os.environ.setdefault(
    "TF_CPP_MIN_LOG_LEVEL", "2"
)  # before TensorFlow loads: no C++ info logs

import keras
import numpy as np

import keras_qsgld
from experiments import cli
from experiments.cli import non_negative_int, positive_float, positive_int
from experiments.linear_regression import (
    diabetes,
    exact_posterior,
    least_squares_noise_std,
)
from keras_qsgld.losses import GaussianNegativeLogLikelihood
from keras_qsgld.sampling import (
    PosteriorSampler,
    convergence_summary,
    to_inference_data,
)

PROG = "regression.py"
NUM_EXAMPLES = 442  # the diabetes data


def build_parser():
    p = cli.ArgumentParser(
        prog=PROG,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        default=0.05,
        help="learning rate (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=NUM_EXAMPLES,
        help=f"batch size; {NUM_EXAMPLES} (default) is the full batch, the exact gradient",
    )
    p.add_argument(
        "--chains",
        type=positive_int,
        default=4,
        help="independent chains (default %(default)s)",
    )
    p.add_argument(
        "--updates",
        type=positive_int,
        default=100_000,
        help="optimizer updates per chain, burn-in included (default %(default)s)",
    )
    p.add_argument(
        "--burn-in",
        type=non_negative_int,
        default=5_000,
        help="updates before the first sample (default %(default)s)",
    )
    p.add_argument(
        "--thin",
        type=positive_int,
        default=50,
        help="updates between two samples (default %(default)s)",
    )
    p.add_argument(
        "--noise-std",
        type=positive_float,
        default=None,
        help="the noise standard deviation in units of the standardized target "
        "(default: the least-squares residual's)",
    )
    p.add_argument(
        "--prior-std",
        type=positive_float,
        default=1.0,
        help="standard deviation of the Gaussian prior of each weight (default %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="seed of chain 0 (chain k uses seed + k) (default %(default)s)",
    )
    p.add_argument(
        "--output-dir",
        default=os.path.join("results", "regression"),
        help="folder for results.md and results.json (default %(default)s)",
    )
    return p


def sample_chain(x, y, args, noise_std, seed):
    """One chain: its samples as `[w, b]` vectors, `(samples, d + 1)`, and its seconds."""
    n, d = x.shape
    temperature = 1.0 / n
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((d,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=keras_qsgld.QSGLD(
            args.learning_rate,
            resolution=keras_qsgld.Temperature(temperature),
            rounding="dithered",
            seed=seed,
            weight_decay=temperature / args.prior_std**2,
        ),
        loss=GaussianNegativeLogLikelihood(noise_std=noise_std),
        # The sampler reads the model only after the updates it keeps: one execution per
        # sample saves the per-batch trips back to Python (not on PyTorch, which runs one
        # step per execution).
        steps_per_execution=1
        if keras.backend.backend() == "torch"
        else args.thin,
    )
    sampler = PosteriorSampler(
        burn_in=args.burn_in, burn_in_unit="steps", thin=args.thin, verbose=0
    )
    # Minibatches as SGD draws them: a new permutation of the data each epoch, batches running
    # on across epochs (so that a batch of all N examples is the full gradient), fed to `fit`
    # in blocks of about 1,000 updates. The sampler counts the optimizer's updates, so the
    # blocks make one chain.
    rng = np.random.default_rng(seed)
    xs, ys = x.astype("float32"), y.astype("float32")
    stream = np.empty(0, dtype=np.int64)
    block = args.thin * max(1, 1000 // args.thin)
    start = time.perf_counter()
    for first in range(0, args.updates, block):
        updates = min(block, args.updates - first)
        while len(stream) < updates * args.batch_size:
            stream = np.concatenate([stream, rng.permutation(n)])
        index, stream = (
            stream[: updates * args.batch_size],
            stream[updates * args.batch_size :],
        )
        model.fit(
            xs[index],
            ys[index],
            batch_size=args.batch_size,
            epochs=1,
            shuffle=False,  # the order above is the data order
            callbacks=[sampler],
            verbose=0,
        )
    seconds = time.perf_counter() - start
    return model, sampler, seconds


def run(args):
    if args.burn_in >= args.updates:
        raise cli.UserError(
            f"--burn-in ({args.burn_in}) must be less than --updates ({args.updates}): "
            "no sample would be kept"
        )
    x, y = diabetes()
    n, d = x.shape
    if args.batch_size > n:
        raise cli.UserError(
            f"--batch-size ({args.batch_size}) must be at most the {n} examples"
        )
    noise_std = args.noise_std or least_squares_noise_std(x, y)
    mean, precision = exact_posterior(x, y, noise_std, args.prior_std)
    covariance = np.linalg.inv(precision)

    models, chains, seconds = [], [], []
    for k in range(args.chains):
        model, sampler, s = sample_chain(x, y, args, noise_std, args.seed + k)
        models.append(model)
        chains.append(sampler)
        seconds.append(s)
    updates = args.chains * args.updates
    draws = min(len(c.samples) for c in chains)
    samples = [c.samples[:draws] for c in chains]
    idata = to_inference_data(samples, models[0])
    worst = convergence_summary(idata)
    # Every draw as the vector [kernel (d), bias (1)], the order of `mean`.
    vectors = np.concatenate(
        [
            idata.posterior[w.path].values.reshape(args.chains * draws, -1)
            for w in models[0].trainable_weights
        ],
        axis=1,
    )

    # -- against the closed form ----------------------------------------------------------
    sampled_mean = vectors.mean(axis=0)
    sampled_cov = np.cov(vectors, rowvar=False)
    sd = np.sqrt(np.diag(covariance))
    eigenvalues, eigenvectors = np.linalg.eigh(precision)
    temperature = 1.0 / n
    euler = 1.0 / (1.0 - args.learning_rate * temperature * eigenvalues / 2)

    def along(v):
        return float(v @ sampled_cov @ v / (v @ covariance @ v))

    marginal = np.diag(sampled_cov) / np.diag(covariance)
    row = {
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "chains": args.chains,
        "updates_per_chain": args.updates,
        "samples": args.chains * draws,
        "max_r_hat": max(v["r_hat"] for v in worst.values()),
        "min_ess_bulk": min(v["ess_bulk"] for v in worst.values()),
        "mean_error_sd": float(np.max(np.abs(sampled_mean - mean) / sd)),
        "marginal_variance_ratio_min": float(marginal.min()),
        "marginal_variance_ratio_max": float(marginal.max()),
        "stiffest_variance_ratio": along(eigenvectors[:, -1]),
        "stiffest_euler_ratio": float(euler[-1]),
        "softest_variance_ratio": along(eigenvectors[:, 0]),
        "softest_euler_ratio": float(euler[0]),
        "microseconds_per_update": 1e6 * sum(seconds) / updates,
    }
    table = markdown_table([row])
    backend = keras.backend.backend()
    print(
        f"diabetes (N = {n}, {d} features + bias), noise sd {noise_std:.4f}, prior sd "
        f"{args.prior_std:g}, T = 1/{n}; {backend}, seeds {args.seed}..{args.seed + args.chains - 1}\n"
    )
    print(table)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(
            {
                "settings": vars(args),
                "noise_std": noise_std,
                "backend": backend,
                "results": row,
            },
            f,
            indent=2,
        )
    return row


def markdown_table(rows):
    lines = [
        "| lr | batch | chains x updates | samples | max R-hat | min ESS | mean error (sd) "
        "| marginal var. ratio | stiffest: ratio (Euler) | softest: ratio (Euler) | us/update |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['learning_rate']:g} | {r['batch_size']} | {r['chains']} x {r['updates_per_chain']} "
            f"| {r['samples']} | {r['max_r_hat']:.3f} | {r['min_ess_bulk']:.0f} "
            f"| {r['mean_error_sd']:.2f} "
            f"| {r['marginal_variance_ratio_min']:.2f}-{r['marginal_variance_ratio_max']:.2f} "
            f"| {r['stiffest_variance_ratio']:.2f} ({r['stiffest_euler_ratio']:.2f}) "
            f"| {r['softest_variance_ratio']:.2f} ({r['softest_euler_ratio']:.2f}) "
            f"| {r['microseconds_per_update']:.0f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    args = build_parser().parse_args(argv)
    return cli.run_script(lambda: run(args), prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
