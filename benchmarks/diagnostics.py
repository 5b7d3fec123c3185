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
"""

import math
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common

common.setup_environment()

TABLES = ("whitenoise", "stationary")


def build_parser():
    p = common.parser(__doc__.split("\n\n")[0], TABLES, "results/benchmarks/diagnostics")
    p.add_argument("--dataset", default="digits", help="digits (MLP) or mnist1d (1-D CNN)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of the whitenoise table")
    p.add_argument("--lr", type=float, default=0.1, help="QSGLD learning rate of the whitenoise table")
    p.add_argument("--roundings", default="nearest,floor,dithered")
    p.add_argument("--coords", type=int, default=256, help="sampled coordinates per layer")
    p.add_argument("--chains", type=int, default=None, help="stationary table: independent chains")
    return p


# -- white noise in real training ------------------------------------------------------------
def whitenoise_run(args, rounding, seed, epochs):
    """Trains once with QSGLD(rounding); returns per (epoch, layer) summary numbers."""
    import numpy as np
    import tensorflow as tf
    import keras
    from scipy import stats

    import keras_qsgld
    from keras_qsgld.experiments.datasets import load_dataset
    from keras_qsgld.experiments.models import build_model
    from keras_qsgld.quantization import scaled_step

    from benchmarks.optimizers import qsgld_schedules

    model_name = {"digits": "mlp", "mnist1d": "cnn1d"}[args.dataset]
    keras.backend.clear_session()
    bundle = load_dataset(args.dataset, batch_size=32, seed=seed, max_examples=300 if args.quick else None)
    model = build_model(model_name, bundle.input_shape, bundle.num_classes, seed=seed)
    resolution, comp = qsgld_schedules(bundle.steps_per_epoch, epochs)
    kwargs = {"seed": seed} if rounding not in ("nearest", "floor") else {}
    opt = keras_qsgld.QSGLD(args.lr, resolution=resolution, compensation=comp, rounding=rounding, **kwargs)
    variables = model.trainable_variables
    opt.build(variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()
    rng = np.random.default_rng(seed)
    idxs = [
        tf.constant(rng.choice(int(np.prod(v.shape)), min(args.coords, int(np.prod(v.shape))), replace=False))
        for v in variables
    ]
    lr = float(args.lr)

    @tf.function(autograph=False)
    def step(x, y_true):
        with tf.GradientTape() as tape:
            loss = loss_fn(y_true, model(x, training=True))
        grads = tape.gradient(loss, variables)
        k = opt.iterations
        qp = opt.resolution_at(k)
        gate = opt.gate_at(k)
        ys = [scaled_step(-lr * g, qp, lr, gate) for g in grads]  # the optimizer's y, in cells
        before = [tf.identity(v) for v in variables]
        with tf.control_dependencies(ys + before):
            opt.apply(grads, variables)
        out = []
        for v, b, yv, idx in zip(variables, before, ys, idxs):
            delta = tf.reshape(v - b, [-1])
            e = tf.gather(delta, idx) * qp - tf.gather(tf.reshape(yv, [-1]), idx)
            zeros = tf.reduce_mean(tf.cast(tf.equal(delta, 0.0), tf.float32))
            y_zero = tf.reduce_mean(tf.cast(tf.equal(yv, 0.0), tf.float32))
            out.append((e, tf.gather(tf.reshape(yv, [-1]), idx), zeros, y_zero))
        return out, qp

    records = []
    drift = np.zeros(len(variables))
    floor_drift = 0.0
    for epoch in range(epochs):
        es = [[] for _ in variables]
        ys = [[] for _ in variables]
        zs = [[] for _ in variables]
        y0 = [[] for _ in variables]
        for x, y_true in bundle.train:
            out, qp = step(x, y_true)
            qp = float(qp)
            floor_drift += -0.5 / qp
            for i, (e, yv, z, yz) in enumerate(out):
                y0[i].append(float(yz))
                e = e.numpy().astype("float64")
                es[i].append(e)
                ys[i].append(yv.numpy())
                zs[i].append(float(z))
                drift[i] += e.mean() / qp
        common.log(f"whitenoise: {args.dataset} rounding={rounding} seed {seed} epoch {epoch + 1}/{epochs}")
        for i, v in enumerate(variables):
            e = np.stack(es[i])  # (steps, coords)
            flat = e.ravel()
            if rounding == "floor":
                ks = stats.kstest(flat, "uniform", args=(-1.0, 1.0))
            else:
                ks = stats.kstest(flat, "uniform", args=(-0.5, 1.0))
            nonzero = np.stack(ys[i]).ravel() != 0  # leave out exact zeros of y (zero gradient)
            rest = flat[nonzero]
            if rest.size > 1:
                ks_nz = stats.kstest(rest, "uniform", args=(-1.0, 1.0) if rounding == "floor" else (-0.5, 1.0))
                ks_nz_d, var_nz = float(ks_nz.statistic), float(rest.var() * 12.0)
            else:
                ks_nz_d, var_nz = float("nan"), float("nan")
            a, b = e[:-1].ravel(), e[1:].ravel()
            lag1 = float(np.corrcoef(a, b)[0, 1]) if a.size > 2 and a.std() > 0 and b.std() > 0 else float("nan")
            records.append({
                "epoch": epoch + 1,
                "layer": v.path if hasattr(v, "path") else v.name,
                "size": int(np.prod(v.shape)),
                "ks": float(ks.statistic),
                "ks_p": float(ks.pvalue),
                "mean": float(flat.mean()),
                "var_ratio": float(flat.var() * 12.0),
                "ks_nonzero": ks_nz_d,
                "var_ratio_nonzero": var_nz,
                "lag1": lag1,
                "zeros": float(np.mean(zs[i])),
                "y_zero": float(np.mean(y0[i])),
                "median_abs_y": float(np.median(np.abs(np.stack(ys[i])))),
                "drift": float(drift[i]),
                "floor_drift": float(floor_drift),
                "gate": float(opt.gate_at(opt.iterations)),
            })
    return records


def run_whitenoise(args):
    store = common.ResultStore(args.output_dir, "whitenoise", args.force)
    epochs = args.epochs or (1 if args.quick else 5)
    roundings = [r.strip() for r in args.roundings.split(",") if r.strip()]
    seed = args.seed_list[0]
    rows = []
    for rounding in roundings:
        key = store.make_key(d=args.dataset, r=rounding, seed=seed, epochs=epochs, lr=args.lr, c=args.coords, quick=args.quick)
        recs = store.get(key)
        if recs is None:
            recs = store.put(key, whitenoise_run(args, rounding, seed, epochs))
        for r in recs:
            rows.append([
                rounding, r["epoch"], f"{r['layer']} ({r['size']})", common.fmt(r["gate"]),
                common.fmt(r["median_abs_y"]), common.fmt(r["ks"]), common.fmt(r["ks_p"]),
                common.fmt(r["mean"]), common.fmt(r["var_ratio"]), common.fmt(r["ks_nonzero"]),
                common.fmt(r["var_ratio_nonzero"]), common.fmt(r["lag1"]),
                common.fmt(r["zeros"]), common.fmt(r["y_zero"]),
                common.fmt(r["drift"] / r["floor_drift"]) if r["floor_drift"] else "nan",
            ])
    headers = ["rounding", "epoch", "layer (size)", "gate s at epoch end", "median |y| (cells)", "KS D", "KS p",
               "mean error (cells)", "variance / (1/12)", "KS D where y != 0", "variance / (1/12) where y != 0",
               "lag-1 autocorr.", "zero increments", "y exactly 0",
               "accumulated drift / (-1/2 sum 1/Qp)"]
    notes = [
        f"{args.dataset}, QSGLD lr {args.lr}, batch 32, paper's schedules (eta 2^19, tau0 = 0.2 x {epochs} epochs, "
        f"kappa 2, logistic); seed {seed}; {args.coords} sampled coordinates per layer (fixed), every step.",
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
    return common.write_table(args, "whitenoise", f"White-noise hypothesis during training ({args.dataset}, lr {args.lr:g}), per layer and epoch",
                              headers, rows, notes)


# -- stationary variance on a quadratic ---------------------------------------------------------
def stationary_run(rounding, lr, a, qp, grad_noise_cells, chains, burn, steps, seed):
    """Simulates `chains` independent QSGLD chains on f = a x^2 / 2; returns summary numbers."""
    import numpy as np
    import tensorflow as tf

    import keras_qsgld

    kwargs = {"seed": seed} if rounding not in ("nearest", "floor") else {}
    opt = keras_qsgld.QSGLD(lr, resolution=float(qp), compensation=None, rounding=rounding, **kwargs)
    sigma_g = grad_noise_cells / (lr * qp)  # gradient noise whose step lr * s_g is this many cells
    var_formula = (lr**2 * sigma_g**2 + qp**-2 / 12.0) / (2 * lr * a - lr**2 * a**2)
    # Start wider than both the formula's spread and the dead zone |x| < 1 / (2 lr a Qp), so
    # a chain that freezes shows it (a start at the formula's spread would hide it).
    start_std = max(3.0 * math.sqrt(var_formula), 4.0 / (lr * a * qp))
    rng = np.random.default_rng(seed)
    x = tf.Variable(rng.normal(0, start_std, chains).astype("float32"))
    opt.build([x])
    gen = tf.random.Generator.from_seed(seed)
    sums = tf.Variable(tf.zeros(4, tf.float64))  # sum x, sum x^2, zero increments, count

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
                sums.assign_add(tf.stack([
                    tf.reduce_sum(xv), tf.reduce_sum(xv * xv),
                    tf.reduce_sum(tf.cast(tf.equal(x, before), tf.float64)), tf.constant(chains, tf.float64),
                ]))
        return sums.read_value()

    run(tf.constant(burn), False)
    s = run(tf.constant(steps), True).numpy()
    mean = s[0] / s[3]
    var = s[1] / s[3] - mean**2
    return {
        "var": float(var), "var_formula": float(var_formula), "mean_cells": float(mean * qp),
        "zeros": float(s[2] / s[3]), "floor_bias_cells": -0.5 / (lr * a),
        "sigma_g": float(sigma_g),
    }


def run_stationary(args):
    store = common.ResultStore(args.output_dir, "stationary", args.force)
    from benchmarks.optimizers import extra_rounding_modes

    chains = args.chains or (256 if args.quick else 4096)
    qp = 2.0**10
    lr = 0.01
    burn, steps = (50, 50) if args.quick else (3000, 3000)
    roundings = ["nearest", "floor"] + extra_rounding_modes()
    configs = [(la, noise) for la in ((0.1,) if args.quick else (0.05, 0.5)) for noise in (0.0, 2.0)]
    rows = []
    for rounding in roundings:
        for lambda_a, noise in configs:
            a = lambda_a / lr
            key = store.make_key(r=rounding, la=lambda_a, n=noise, c=chains, b=burn, s=steps, qp=qp, seed=args.seed_list[0])
            rec = store.get(key)
            if rec is None:
                common.log(f"stationary: rounding={rounding} lr*a={lambda_a} gradient noise {noise} cells")
                rec = store.put(key, stationary_run(rounding, lr, a, qp, noise, chains, burn, steps, args.seed_list[0]))
            rows.append([
                rounding, common.fmt(lambda_a), common.fmt(noise),
                common.fmt(rec["var"] * qp**2), common.fmt(rec["var_formula"] * qp**2),
                common.fmt(rec["var"] / rec["var_formula"]), common.fmt(rec["mean_cells"]),
                common.fmt(rec["floor_bias_cells"]) if rounding == "floor" else "0",
                common.fmt(rec["zeros"]),
            ])
    headers = ["rounding", "lr a", "gradient noise lr s_g (cells)", "measured variance (cells^2)",
               "formula (cells^2)", "measured / formula", "mean (cells)", "predicted mean (cells)", "zero increments"]
    notes = [
        f"f = a x^2 / 2, QSGLD with fixed Qp = {qp:g}, lr = {lr}, compensation off, {chains} independent chains "
        f"started wider than the formula's spread and the dead zone, {burn} burn-in steps then {steps} recorded steps; variances in grid cells^2.",
        "Formula: (lr^2 s_g^2 + Qp^-2 / 12) / (2 lr a - lr^2 a^2), i.e. Qp^-2 / (12 (2 lr a - lr^2 a^2)) with the exact "
        "gradient. Floor's predicted mean: -1/2 Qp^-1 / (lr a).",
        "With the exact gradient the step lr a x is far below one cell at the predicted spread (nearest rounds it "
        "to 0: the chains freeze), so the white-noise formula cannot hold for the deterministic roundings; with gradient noise "
        "spreading y over cells it can. Dithered rounding makes the error uniform by construction.",
    ]
    return common.write_table(args, "stationary", "Stationary variance on a 1-D quadratic (fixed Qp)", headers, rows, notes)


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    common.quiet_tensorflow()
    if args.dataset not in ("digits", "mnist1d"):
        raise ValueError(f"Argument `--dataset` must be 'digits' or 'mnist1d'. Received: {args.dataset!r}")
    outputs = []
    if "whitenoise" in args.table_list:
        outputs.append(run_whitenoise(args))
    if "stationary" in args.table_list:
        outputs.append(run_stationary(args))
    return outputs


if __name__ == "__main__":
    main()
