"""Noise diagnostics: does QSGLD's rounding error behave as the white-noise hypothesis says?

Tables (`--tables`):

* `whitenoise`: during real training (digits MLP, the paper's schedules, a custom loop),
  per layer and epoch, for rounding nearest (the paper), floor (the authors' code) and
  dithered (uniform by construction, the control). The realised error of each increment,
  `e = Qp * (w_after - w_before) - y` with `y = Qp (h + r)` the optimizer's scaled step (in
  grid cells), is sampled on up to `--coords` fixed coordinates per layer: KS distance
  and p-value against the uniform law (U[-1/2, 1/2), or U(-1, 0] for floor), variance over
  1/12, lag-1 autocorrelation in time, share of exactly-zero increments (over all
  coordinates), median |y|, and the accumulated drift `sum_k mean(e_k) / Qp_k` against the
  floor prediction `-1/2 sum_k 1/Qp_k`.
* `stationary`: the 1-D quadratic `f = a x^2 / 2` with a fixed `Qp`, compensation off,
  many independent chains: the stationary variance of the iterates against
  `(lr^2 s_g^2 + Qp^-2 / 12) / (2 lr a - lr^2 a^2)` (`s_g` the std of added gradient noise,
  0 for the exact gradient: then the formula is `Qp^-2 / (12 (2 lr a - lr^2 a^2))`), and
  the floor's bias `-1/2 Qp^-1 / (lr a)` on the mean.

A TensorFlow-backend script (`tf.function`, `tf.GradientTape`, `tf.data`): it sets
`KERAS_BACKEND=tensorflow` itself. Run from the repository root:
`python -m benchmarks.langevin.diagnostics --quick`.
"""

import math

from benchmarks import common
from experiments import cli

# tf.function, tf.GradientTape and tf.data below: this script runs on the TensorFlow backend
# whatever KERAS_BACKEND says, set before Keras is imported.
common.use_tensorflow_backend(__name__)

import keras
import numpy as np
import tensorflow as tf
from scipy import stats

import keras_qsgld
from benchmarks import optimizers as bopt
from experiments.datasets import (
    load_dataset,
)
from experiments.defaults import DEFAULT_MODEL
from experiments.models import build_model
from keras_qsgld.quantization import ROUNDING_MODES, scaled_step
from keras_qsgld.schedules import (
    DEFAULT_ETA,
    DEFAULT_KAPPA,
    DEFAULT_WARMUP_FRACTION,
)

TABLES = ("whitenoise", "stationary")
DATASETS = ("digits", "mnist1d")
BATCH_SIZE = 32  # whitenoise table
QUICK_EXAMPLES = 300  # --quick: training examples


def build_parser():
    p = common.parser(
        __doc__.split("\n\n")[0], TABLES, "results/benchmarks/diagnostics"
    )
    p.add_argument(
        "--dataset",
        default="digits",
        choices=DATASETS,
        help="digits (MLP) or mnist1d (1-D CNN)",
    )
    p.add_argument(
        "--epochs",
        type=cli.positive_int,
        default=None,
        help="training epochs of the whitenoise table",
    )
    p.add_argument(
        "--lr",
        type=cli.positive_float,
        default=0.1,
        help="QSGLD learning rate of the whitenoise table",
    )
    p.add_argument("--roundings", default="nearest,floor,dithered")
    p.add_argument(
        "--coords",
        type=cli.positive_int,
        default=256,
        help="sampled coordinates per layer",
    )
    p.add_argument(
        "--chains",
        type=cli.positive_int,
        default=None,
        help="stationary table: independent chains",
    )
    return p


# -- white noise in real training ------------------------------------------------------------
def whitenoise_run(args, rounding, seed, epochs):
    """Trains once with QSGLD(rounding); returns per (epoch, layer) summary numbers."""
    keras.backend.clear_session()
    max_examples = QUICK_EXAMPLES if args.quick else None
    bundle = load_dataset(
        args.dataset,
        batch_size=BATCH_SIZE,
        seed=seed,
        max_examples=max_examples,
    )
    model = build_model(
        DEFAULT_MODEL[args.dataset],
        bundle.input_shape,
        bundle.num_classes,
        seed=seed,
    )
    opt = bopt.paper_qsgld(
        args.lr, bundle.steps_per_epoch, epochs, seed, rounding=rounding
    )
    variables = model.trainable_variables
    opt.build(variables)
    rng = np.random.default_rng(seed)
    sizes = [int(np.prod(v.shape)) for v in variables]
    coords = [
        tf.constant(rng.choice(n, min(args.coords, n), replace=False))
        for n in sizes
    ]
    step = error_sampling_step(model, opt, coords, args.lr)
    records = []
    drift = np.zeros(len(variables))
    floor_drift = 0.0
    for epoch in range(epochs):
        samples = [
            {"e": [], "y": [], "zeros": [], "y_zero": []} for _ in variables
        ]
        for x, y_true in bundle.train:
            out, qp = step(x, y_true)
            qp = float(qp)
            floor_drift += -0.5 / qp
            for i, (e, y, zeros, y_zero) in enumerate(out):
                e = e.numpy().astype("float64")
                samples[i]["e"].append(e)
                samples[i]["y"].append(y.numpy())
                samples[i]["zeros"].append(float(zeros))
                samples[i]["y_zero"].append(float(y_zero))
                drift[i] += e.mean() / qp
        common.log(
            f"whitenoise: {args.dataset} rounding={rounding} seed {seed} epoch {epoch + 1}/{epochs}"
        )
        gate = float(opt.gate_at(opt.schedule_step))
        for i, v in enumerate(variables):
            record = layer_summary(rounding, samples[i])
            record.update(
                epoch=epoch + 1,
                layer=v.path,
                size=sizes[i],
                drift=float(drift[i]),
                floor_drift=float(floor_drift),
                gate=gate,
            )
            records.append(record)
    return records


def error_sampling_step(model, opt, coords, lr):
    """A training step (`tf.function`) that also returns, per variable, the realised rounding
    error `e = Qp * (w_after - w_before) - y` and the scaled step `y` on the coordinates
    `coords`, the share of exactly-zero increments and of exactly-zero `y`, and `Qp`."""
    variables = model.trainable_variables
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function(autograph=False)
    def step(x, y_true):
        with tf.GradientTape() as tape:
            loss = loss_fn(y_true, model(x, training=True))
        grads = tape.gradient(loss, variables)
        k = opt.schedule_step  # where this update evaluates the schedules
        qp = opt.resolution_at(k)
        gate = opt.gate_at(k)
        ys = [
            scaled_step(-lr * g, qp, lr, gate) for g in grads
        ]  # the optimizer's y, in cells
        before = [tf.identity(v) for v in variables]
        with tf.control_dependencies(ys + before):
            opt.apply(grads, variables)
        out = []
        for v, b, y, idx in zip(variables, before, ys, coords):
            delta = tf.reshape(v - b, [-1])
            y_sample = tf.gather(tf.reshape(y, [-1]), idx)
            e = tf.gather(delta, idx) * qp - y_sample
            zeros = tf.reduce_mean(tf.cast(tf.equal(delta, 0.0), tf.float32))
            y_zero = tf.reduce_mean(tf.cast(tf.equal(y, 0.0), tf.float32))
            out.append((e, y_sample, zeros, y_zero))
        return out, qp

    return step


def uniform_ks(values, rounding):
    """KS test against the uniform law of the rounding error: U(-1, 0] for floor, else
    U[-1/2, 1/2)."""
    return stats.kstest(
        values,
        "uniform",
        args=(-1.0, 1.0) if rounding == "floor" else (-0.5, 1.0),
    )


def layer_summary(rounding, samples):
    """One layer's error statistics over an epoch (`samples`: per step, the sampled errors
    `e`, scaled steps `y`, and the shares of zero increments and zero `y`)."""
    e = np.stack(samples["e"])  # (steps, coords)
    flat = e.ravel()
    ks = uniform_ks(flat, rounding)
    rest = flat[
        np.stack(samples["y"]).ravel() != 0
    ]  # leave out exact zeros of y (zero gradient)
    if rest.size > 1:
        ks_nonzero, var_nonzero = (
            float(uniform_ks(rest, rounding).statistic),
            float(rest.var() * 12.0),
        )
    else:
        ks_nonzero, var_nonzero = float("nan"), float("nan")
    a, b = e[:-1].ravel(), e[1:].ravel()
    lag1 = (
        float(np.corrcoef(a, b)[0, 1])
        if a.size > 2 and a.std() > 0 and b.std() > 0
        else float("nan")
    )
    return {
        "ks": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "mean": float(flat.mean()),
        "var_ratio": float(flat.var() * 12.0),
        "ks_nonzero": ks_nonzero,
        "var_ratio_nonzero": var_nonzero,
        "lag1": lag1,
        "zeros": float(np.mean(samples["zeros"])),
        "y_zero": float(np.mean(samples["y_zero"])),
        "median_abs_y": float(np.median(np.abs(np.stack(samples["y"])))),
    }


def run_whitenoise(args):
    store = common.ResultStore(args.output_dir, "whitenoise", args.force)
    epochs = args.epochs or (1 if args.quick else 5)
    roundings = [r.strip() for r in args.roundings.split(",") if r.strip()]
    if not roundings or any(r not in ROUNDING_MODES for r in roundings):
        raise cli.UserError(
            f"Argument `--roundings` must name modes among {ROUNDING_MODES}. Received: {args.roundings!r}"
        )
    seed = args.seed_list[0]
    rows = []
    for rounding in roundings:
        key = store.make_key(
            d=args.dataset,
            r=rounding,
            seed=seed,
            epochs=epochs,
            lr=args.lr,
            c=args.coords,
            quick=args.quick,
        )
        recs = store.get(key)
        if recs is None:
            recs = store.put(key, whitenoise_run(args, rounding, seed, epochs))
        for r in recs:
            rows.append(
                [
                    rounding,
                    r["epoch"],
                    f"{r['layer']} ({r['size']})",
                    common.fmt(r["gate"]),
                    common.fmt(r["median_abs_y"]),
                    common.fmt(r["ks"]),
                    common.fmt(r["ks_p"]),
                    common.fmt(r["mean"]),
                    common.fmt(r["var_ratio"]),
                    common.fmt(r["ks_nonzero"]),
                    common.fmt(r["var_ratio_nonzero"]),
                    common.fmt(r["lag1"]),
                    common.fmt(r["zeros"]),
                    common.fmt(r["y_zero"]),
                    common.fmt(r["drift"] / r["floor_drift"])
                    if r["floor_drift"]
                    else "nan",
                ]
            )
    headers = [
        "rounding",
        "epoch",
        "layer (size)",
        "gate s at epoch end",
        "median |y| (cells)",
        "KS D",
        "KS p",
        "mean error (cells)",
        "variance / (1/12)",
        "KS D where y != 0",
        "variance / (1/12) where y != 0",
        "lag-1 autocorr.",
        "zero increments",
        "y exactly 0",
        "accumulated drift / (-1/2 sum 1/Qp)",
    ]
    notes = [
        f"{args.dataset}, QSGLD lr {args.lr}, batch {BATCH_SIZE}, paper's schedules (eta 2^{math.log2(DEFAULT_ETA):g}, "
        f"tau0 = {DEFAULT_WARMUP_FRACTION:g} x {epochs} epochs, kappa {DEFAULT_KAPPA:g}, logistic); seed {seed}; "
        f"{args.coords} sampled coordinates per layer (fixed), every step.",
        "The error is the realised one: Qp * (w_after - w_before) - y, with y recomputed from the same formula; "
        "float32 rounding of w + delta adds at most half an ulp of w (about 0.004 cells for |w| ~ 0.1).",
        "The hypothesis predicts KS D near 0, variance ratio 1, lag-1 autocorrelation 0 and, for floor, mean -1/2 and "
        "a drift ratio of 1 (nearest and dithered: mean 0, drift ratio 0). It is expected to fail where "
        "median |y| is below about 1 cell (dead zone of nearest rounding), and where y is exactly 0 (coordinates "
        "with a zero gradient, e.g. weights of always-blank digits pixels once the compensation is off): there "
        "nearest and floor give error 0 and no increment, dithered a uniform random step.",
        "The lag-1 autocorrelation pools the pairs (e_k, e_k+1) of all sampled coordinates: coordinates whose error "
        "mean differs (floor: 0 where y = 0, about -1/2 elsewhere) show up as a positive correlation.",
    ]
    return common.write_table(
        args,
        "whitenoise",
        f"White-noise hypothesis during training ({args.dataset}, lr {args.lr:g}), per layer and epoch",
        headers,
        rows,
        notes,
    )


# -- stationary variance on a quadratic ---------------------------------------------------------
def stationary_run(
    rounding, lr, a, qp, grad_noise_cells, chains, burn, steps, seed
):
    """Simulates `chains` independent QSGLD chains on f = a x^2 / 2; returns summary numbers."""
    opt = keras_qsgld.QSGLD(
        lr,
        resolution=float(qp),
        compensation=None,
        rounding=rounding,
        seed=seed,
    )
    sigma_g = grad_noise_cells / (
        lr * qp
    )  # gradient noise whose step lr * s_g is this many cells
    var_formula = (lr**2 * sigma_g**2 + qp**-2 / 12.0) / (
        2 * lr * a - lr**2 * a**2
    )
    # Start wider than both the formula's spread and the dead zone |x| < 1 / (2 lr a Qp), so
    # a chain that freezes shows it (a start at the formula's spread would hide it).
    start_std = max(3.0 * math.sqrt(var_formula), 4.0 / (lr * a * qp))
    rng = np.random.default_rng(seed)
    x = tf.Variable(rng.normal(0, start_std, chains).astype("float32"))
    opt.build([x])
    gen = tf.random.Generator.from_seed(seed)
    sums = tf.Variable(
        tf.zeros(4, tf.float64)
    )  # sum x, sum x^2, zero increments, count

    @tf.function
    def run(n, record):
        for _ in tf.range(n):
            g = a * x
            if grad_noise_cells:
                g = g + sigma_g * gen.normal([chains])
            before = tf.identity(x)
            opt.apply([g], [x])
            if record:
                xv = tf.cast(x, tf.float64)
                sums.assign_add(
                    tf.stack(
                        [
                            tf.reduce_sum(xv),
                            tf.reduce_sum(xv * xv),
                            tf.reduce_sum(
                                tf.cast(tf.equal(x, before), tf.float64)
                            ),
                            tf.constant(chains, tf.float64),
                        ]
                    )
                )
        return sums.read_value()

    run(tf.constant(burn), False)
    s = run(tf.constant(steps), True).numpy()
    mean = s[0] / s[3]
    var = s[1] / s[3] - mean**2
    return {
        "var": float(var),
        "var_formula": float(var_formula),
        "mean_cells": float(mean * qp),
        "zeros": float(s[2] / s[3]),
        "floor_bias_cells": -0.5 / (lr * a),
        "sigma_g": float(sigma_g),
    }


def run_stationary(args):
    store = common.ResultStore(args.output_dir, "stationary", args.force)
    chains = args.chains or (256 if args.quick else 4096)
    qp = 2.0**10
    lr = 0.01
    burn, steps = (50, 50) if args.quick else (3000, 3000)
    roundings = ["nearest", "floor", *bopt.EXTRA_ROUNDINGS]
    configs = [
        (la, noise)
        for la in ((0.1,) if args.quick else (0.05, 0.5))
        for noise in (0.0, 2.0)
    ]
    rows = []
    for rounding in roundings:
        for lambda_a, noise in configs:
            a = lambda_a / lr
            key = store.make_key(
                r=rounding,
                la=lambda_a,
                n=noise,
                c=chains,
                b=burn,
                s=steps,
                qp=qp,
                seed=args.seed_list[0],
            )
            rec = store.get(key)
            if rec is None:
                common.log(
                    f"stationary: rounding={rounding} lr*a={lambda_a} gradient noise {noise} cells"
                )
                rec = store.put(
                    key,
                    stationary_run(
                        rounding,
                        lr,
                        a,
                        qp,
                        noise,
                        chains,
                        burn,
                        steps,
                        args.seed_list[0],
                    ),
                )
            rows.append(
                [
                    rounding,
                    common.fmt(lambda_a),
                    common.fmt(noise),
                    common.fmt(rec["var"] * qp**2),
                    common.fmt(rec["var_formula"] * qp**2),
                    common.fmt(rec["var"] / rec["var_formula"]),
                    common.fmt(rec["mean_cells"]),
                    common.fmt(rec["floor_bias_cells"])
                    if rounding == "floor"
                    else "0",
                    common.fmt(rec["zeros"]),
                ]
            )
    headers = [
        "rounding",
        "lr a",
        "gradient noise lr s_g (cells)",
        "measured variance (cells^2)",
        "formula (cells^2)",
        "measured / formula",
        "mean (cells)",
        "predicted mean (cells)",
        "zero increments",
    ]
    notes = [
        f"f = a x^2 / 2, QSGLD with fixed Qp = {qp:g}, lr = {lr}, compensation off, "
        f"{chains} independent chains started wider than the formula's spread and the "
        f"dead zone, {burn} burn-in steps then {steps} recorded steps; variances in grid "
        "cells^2.",
        "Formula: (lr^2 s_g^2 + Qp^-2 / 12) / (2 lr a - lr^2 a^2), i.e. "
        "Qp^-2 / (12 (2 lr a - lr^2 a^2)) with the exact gradient. Floor's predicted "
        "mean: -1/2 Qp^-1 / (lr a).",
        "With the exact gradient the step lr a x is far below one cell at the predicted "
        "spread (nearest rounds it to 0: the chains freeze), so the white-noise formula "
        "cannot hold for the deterministic roundings; with gradient noise spreading y "
        "over cells it can. Dithered rounding makes the error uniform by construction.",
    ]
    return common.write_table(
        args,
        "stationary",
        "Stationary variance on a 1-D quadratic (fixed Qp)",
        headers,
        rows,
        notes,
    )


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    tf.get_logger().setLevel("ERROR")
    outputs = []
    if "whitenoise" in args.table_list:
        outputs.append(run_whitenoise(args))
    if "stationary" in args.table_list:
        outputs.append(run_stationary(args))
    return outputs


if __name__ == "__main__":
    common.run_benchmark(main)
