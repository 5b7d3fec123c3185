"""Langevin check: at a fixed Qp, do the iterates sample the Gibbs density exp(-f / T_eff)?

A tilted 1-D double well `f(x) = (x**2 - 1)**2 + tilt * x`, with full gradients and a fixed
resolution `Qp`. The white-noise hypothesis gives QSGLD the temperature
`T_eff = Qp**-2 / (24 * lr)`; Gaussian SGLD is run at that same temperature. Every chain
starts in the shallower (right) well, so a method must cross the barrier to reach the Gibbs
weights. Each coordinate of one variable is an independent chain (the compensation term,
which couples coordinates through a norm, is off). After a burn-in, snapshots of all chains
are pooled and compared with the Gibbs density: total-variation distance on bins, the KS
statistic against the Gibbs CDF, the mass in the left (deeper) well, and the share of
increments that were exactly zero.

A TensorFlow-backend script (the chains run in `tf.function(jit_compile=True)` loops): it
sets `KERAS_BACKEND=tensorflow` itself. Run from the repository root:
`python -m benchmarks.langevin.double_well --quick`.
"""

import os

from benchmarks import common
from experiments import cli

# The chains run in tf.function(jit_compile=True) loops: this script runs on the TensorFlow
# backend whatever KERAS_BACKEND says, set before Keras is imported.
common.use_tensorflow_backend(__name__)

import keras
import numpy as np
import tensorflow as tf
from matplotlib.figure import Figure

import keras_qsgld
from benchmarks.optimizers import GaussianSGLD
from keras_qsgld.langevin import temperature_of

TABLES = ("double_well",)
METHODS = ("gd", "nearest", "floor", "stochastic", "dithered", "gaussian_sgld")
LABELS = {
    "gd": "plain GD (no noise)",
    "nearest": "QSGLD rounding=nearest",
    "floor": "QSGLD rounding=floor",
    "stochastic": "QSGLD rounding=stochastic",
    "dithered": "QSGLD rounding=dithered",
    "gaussian_sgld": "Gaussian SGLD at T_eff",
}


def energy(x, tilt):
    return (x**2 - 1.0) ** 2 + tilt * x


def gibbs_grid(tilt, temperature, lo=-2.5, hi=2.5, n=20001):
    """The Gibbs density on a fine grid (NumPy, float64): x, pdf, cdf."""
    x = np.linspace(lo, hi, n)
    logp = -energy(x, tilt) / temperature
    p = np.exp(logp - logp.max())
    dx = x[1] - x[0]
    p /= p.sum() * dx
    cdf = np.cumsum(p) * dx
    return x, p, cdf / cdf[-1]


def distances(samples, tilt, temperature, bin_width=0.05):
    """TV distance on bins of `bin_width`, KS statistic, and the left-well mass, vs Gibbs."""
    x, _, cdf = gibbs_grid(tilt, temperature)
    edges = np.arange(-2.5, 2.5 + bin_width / 2, bin_width)
    gibbs_bins = np.diff(np.interp(edges, x, cdf))
    counts, _ = np.histogram(np.clip(samples, -2.5, 2.5), bins=edges)
    tv = 0.5 * np.abs(counts / counts.sum() - gibbs_bins).sum()
    s = np.sort(samples)
    empirical = np.arange(1, len(s) + 1) / len(s)
    model = np.interp(s, x, cdf)
    ks = max(
        np.max(empirical - model), np.max(model - (empirical - 1.0 / len(s)))
    )
    left_gibbs = float(np.interp(0.0, x, cdf))
    return tv, ks, float(np.mean(samples < 0)), left_gibbs


def build_optimizer(method, lr, qp, seed):
    if method == "gd":
        return keras.optimizers.SGD(lr)
    if method == "gaussian_sgld":
        return GaussianSGLD(learning_rate=lr, resolution=qp, seed=seed)
    return keras_qsgld.QSGLD(
        learning_rate=lr,
        resolution=qp,
        compensation=None,
        rounding=method,
        seed=seed,
    )


def run_chains(method, chains, steps, burn_in, every, lr, qp, tilt, seed):
    """Runs `chains` independent chains; returns pooled snapshots and the zero-increment share."""
    opt = build_optimizer(method, lr, qp, seed)
    x = keras.Variable(np.ones(chains, "float32"), name="x")
    opt.build([x])

    @tf.function(jit_compile=True)
    def advance(n):
        zeros = tf.constant(0.0)
        for _ in tf.range(n):
            v = tf.identity(x.value)  # a snapshot, not the variable
            grad = 4.0 * v * (v * v - 1.0) + tilt
            opt.apply([grad], [x])
            zeros += tf.reduce_mean(tf.cast(tf.equal(x.value, v), tf.float32))
        return zeros

    zero_steps = float(advance(tf.constant(burn_in)))
    snapshots = []
    for _ in range((steps - burn_in) // every):
        zero_steps += float(advance(tf.constant(every)))
        snapshots.append(x.numpy().copy())
    return np.concatenate(snapshots), zero_steps / steps


def plot(path, results, tilt, temperature):
    x, p, _ = gibbs_grid(tilt, temperature)
    methods = [m for m in METHODS if m in results]
    columns = (len(methods) + 1) // 2
    fig = Figure(figsize=(4 * columns, 6.5))
    axes = fig.subplots(2, columns, squeeze=False)
    for ax, method in zip(axes.ravel(), methods):
        samples = results[method]
        ax.hist(
            np.clip(samples, -2.5, 2.5),
            bins=np.arange(-2.5, 2.55, 0.05),
            density=True,
            alpha=0.6,
            color="C0",
            label="iterates",
        )
        ax.plot(x, p, "k", lw=1.2, label="Gibbs exp(-f/T_eff)")
        ax.set_title(LABELS[method], fontsize=9)
        ax.set_xlim(-2.0, 2.0)
        ax.set_ylim(0, max(p.max() * 1.6, 1e-3))
    axes.ravel()[0].legend(fontsize=8)
    for ax in axes.ravel()[len(methods) :]:
        ax.axis("off")
    fig.suptitle(
        f"Tilted double well, fixed Qp, T_eff = Qp^-2/(24 lr) = {temperature:.3f}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build_parser():
    p = common.parser(
        __doc__.split("\n\n")[0], TABLES, "results/benchmarks/double_well"
    )
    p.add_argument(
        "--lr",
        type=cli.positive_float,
        default=0.01,
        help="learning rate (the SDE time step)",
    )
    p.add_argument(
        "--qp",
        type=cli.positive_float,
        default=4.0,
        help="fixed resolution Qp",
    )
    p.add_argument(
        "--tilt", type=float, default=0.3, help="tilt of the double well"
    )
    p.add_argument("--chains", type=cli.positive_int, default=4000)
    p.add_argument("--steps", type=cli.positive_int, default=30000)
    p.add_argument("--burn-in", type=cli.positive_int, default=10000)
    p.add_argument(
        "--every",
        type=cli.positive_int,
        default=200,
        help="steps between snapshots",
    )
    return p


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    if args.quick:
        args.chains, args.steps, args.burn_in, args.every = 200, 600, 200, 100
    if args.burn_in + args.every > args.steps:
        raise cli.UserError(
            "Arguments `--burn-in` + `--every` must not exceed `--steps` (no snapshot would be taken). "
            f"Received: --burn-in={args.burn_in}, --every={args.every}, --steps={args.steps}"
        )
    temperature = temperature_of(args.qp, args.lr)
    store = common.ResultStore(args.output_dir, "double_well", force=args.force)
    rows, samples_by_method = [], {}
    seed = args.seed_list[0]
    for method in METHODS:
        key = store.make_key(
            method=method,
            seed=seed,
            chains=args.chains,
            steps=args.steps,
            lr=args.lr,
            qp=args.qp,
            tilt=args.tilt,
        )
        common.log(
            f"double well: {method} (seed {seed}, {args.chains} chains, {args.steps} steps)"
        )
        samples_path = os.path.join(args.output_dir, f"samples_{method}.npy")
        record = store.get(key)
        if record is None or not os.path.exists(samples_path):
            samples, zero_share = run_chains(
                method,
                args.chains,
                args.steps,
                args.burn_in,
                args.every,
                args.lr,
                args.qp,
                args.tilt,
                seed,
            )
            tv, ks, left, left_gibbs = distances(
                samples, args.tilt, temperature
            )
            record = dict(
                tv=tv,
                ks=ks,
                left=left,
                left_gibbs=left_gibbs,
                zero_share=zero_share,
            )
            np.save(samples_path, samples)
            store.put(key, record)
        samples_by_method[method] = np.load(samples_path)
        rows.append(
            [
                LABELS[method],
                record["tv"],
                record["ks"],
                record["left"],
                record["left_gibbs"],
                record["zero_share"],
            ]
        )
    plot_path = os.path.join(args.output_dir, "double_well.png")
    plot(plot_path, samples_by_method, args.tilt, temperature)
    common.write_table(
        args,
        "double_well",
        "Langevin check on a tilted double well (fixed Qp, full gradients)",
        [
            "method",
            "TV distance",
            "KS statistic",
            "P(x<0)",
            "Gibbs P(x<0)",
            "zero increments",
        ],
        rows,
        notes=[
            f"f(x) = (x^2-1)^2 + {args.tilt} x, lr = {args.lr}, Qp = {args.qp}, "
            f"T_eff = Qp^-2/(24 lr) = {temperature:.4f}; {args.chains} chains start at x = 1 "
            f"(the shallower well); {args.steps} steps, snapshots every {args.every} after "
            f"{args.burn_in}; seed {seed}.",
            "TV on bins of width 0.05 over [-2.5, 2.5]; lower is closer to the Gibbs density.",
        ],
        extra_markdown=f"![double well]({os.path.basename(plot_path)})",
    )
    return rows


if __name__ == "__main__":
    common.run_benchmark(main)
