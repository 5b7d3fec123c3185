"""The 2-D sampling check of `benchmarks.sampling` (table `toy2d`): no neural network.

2000 independent chains (one `(2000, 2)` variable, the loss the sum of the potentials) sample
two 2-D targets with full gradients at T = 1, against the exact density (see
`benchmarks.sampling`'s docstring).
"""

import math
import os
import time
import warnings

from benchmarks import common

common.use_backend(__name__, "jax", "runs on the JAX backend")

import jax
import jax.numpy as jnp
import keras
import numpy as np
from matplotlib.figure import Figure
from scipy import special, stats

import keras_qsgld
from benchmarks.optimizers import GaussianSGLD

# -- the 2-D check ---------------------------------------------------------------------------
BANANA_B = 0.03
MIX_WEIGHTS = np.array([0.5, 0.3, 0.2])
MIX_CENTERS = np.array(
    [
        [2.0 * math.cos(a), 2.0 * math.sin(a)]
        for a in np.radians([90.0, 210.0, 330.0])
    ]
)
MIX_STD = 0.6
TARGETS = {
    # name: (box (x_lo, x_hi, y_lo, y_hi), bins per axis, learning rates, steps, burn-in, every)
    "banana": (
        (-35.0, 35.0, -30.0, 8.0),
        50,
        (0.03, 0.1, 0.3),
        40_000,
        10_000,
        300,
    ),
    "mixture": (
        (-4.0, 4.0, -3.5, 4.5),
        50,
        (0.01, 0.03, 0.1),
        40_000,
        10_000,
        300,
    ),
}
QUICK_TOY = dict(chains=200, steps=3000, burn_in=1000, every=100)
TOY_SEEDS = 3


def potential_gradient(name, w):
    """The gradient of U at the rows of w (jax.numpy), in closed form."""
    x, y = w[:, 0], w[:, 1]
    if name == "banana":
        r = y + BANANA_B * x * x - 100.0 * BANANA_B
        return jnp.stack([x / 100.0 + 2.0 * BANANA_B * x * r, r], axis=1)
    d = w[:, None, :] - jnp.asarray(MIX_CENTERS, w.dtype)[None]  # (n, 3, 2)
    logs = jnp.log(jnp.asarray(MIX_WEIGHTS, w.dtype))[None] - jnp.sum(
        d * d, axis=2
    ) / (2 * MIX_STD**2)
    resp = jax.nn.softmax(logs, axis=1)  # responsibilities
    return jnp.sum(resp[:, :, None] * d, axis=1) / MIX_STD**2


def exact_samples(name, n, rng):
    if name == "banana":
        x = rng.normal(0.0, 10.0, n)
        y = rng.normal(0.0, 1.0, n) - BANANA_B * x * x + 100.0 * BANANA_B
        return np.stack([x, y], 1)
    k = rng.choice(3, size=n, p=MIX_WEIGHTS)
    return MIX_CENTERS[k] + rng.normal(0.0, MIX_STD, (n, 2))


def marginal_cdfs(name):
    """Exact marginal CDFs (x, y) of the target."""
    if name == "banana":
        nodes, weights = np.polynomial.hermite_e.hermegauss(
            201
        )  # E over x ~ N(0, 100)
        weights = weights / weights.sum()
        shift = -BANANA_B * (10.0 * nodes) ** 2 + 100.0 * BANANA_B

        def cdf_y(t):
            t = np.asarray(t, float)
            return (special.ndtr(t[..., None] - shift) * weights).sum(-1)

        return (lambda t: special.ndtr(np.asarray(t) / 10.0)), cdf_y

    def mix(axis):
        return lambda t: sum(
            w * special.ndtr((np.asarray(t, float) - c[axis]) / MIX_STD)
            for w, c in zip(MIX_WEIGHTS, MIX_CENTERS)
        )

    return mix(0), mix(1)


def bin_probabilities(name, box, bins):
    """Exact probability of each histogram bin (bins x bins), by quadrature."""
    x_edges = np.linspace(box[0], box[1], bins + 1)
    y_edges = np.linspace(box[2], box[3], bins + 1)
    if name == "mixture":
        out = 0.0
        for w, c in zip(MIX_WEIGHTS, MIX_CENTERS):
            px = np.diff(special.ndtr((x_edges - c[0]) / MIX_STD))
            py = np.diff(special.ndtr((y_edges - c[1]) / MIX_STD))
            out = out + w * np.outer(px, py)
        return x_edges, y_edges, out
    # banana: x ~ N(0, 100), y | x ~ N(100 b - b x**2, 1): integrate over x with 40 points per bin
    sub = 40
    out = np.zeros((bins, bins))
    for i in range(bins):
        xs = np.linspace(x_edges[i], x_edges[i + 1], sub + 1)
        xm = 0.5 * (xs[1:] + xs[:-1])
        wx = np.diff(special.ndtr(xs / 10.0))  # mass of each sub-interval in x
        mean = 100.0 * BANANA_B - BANANA_B * xm * xm
        py = np.diff(
            special.ndtr(y_edges[None, :] - mean[:, None]), axis=1
        )  # (sub, bins)
        out[i] = (wx[:, None] * py).sum(0)
    return x_edges, y_edges, out


def distances(name, samples):
    box, bins = TARGETS[name][0], TARGETS[name][1]
    x_edges, y_edges, exact = bin_probabilities(name, box, bins)
    counts, _, _ = np.histogram2d(
        samples[:, 0], samples[:, 1], bins=[x_edges, y_edges]
    )
    n = len(samples)
    inside = counts / n
    tv = 0.5 * (
        np.abs(inside - exact).sum()
        + abs((1.0 - inside.sum()) - (1.0 - exact.sum()))
    )
    cdf_x, cdf_y = marginal_cdfs(name)
    ks_x = stats.kstest(samples[:, 0], cdf_x).statistic
    ks_y = stats.kstest(samples[:, 1], cdf_y).statistic
    out = dict(tv=float(tv), ks_x=float(ks_x), ks_y=float(ks_y))
    if name == "mixture":
        d = ((samples[:, None, :] - MIX_CENTERS[None]) ** 2).sum(2)
        out["modes"] = [
            float(v) for v in np.bincount(np.argmin(d, 1), minlength=3) / n
        ]
    return out


def toy_optimizer(method, lr, seed):
    temperature = keras_qsgld.Temperature(1.0)
    if method == "gaussian":
        return GaussianSGLD(lr, resolution=temperature, seed=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=".* with a Temperature does not sample at that temperature",
        )
        return keras_qsgld.QSGLD(
            lr, resolution=temperature, rounding=method, seed=seed
        )


def toy_chains(name, method, lr, chains, steps, burn_in, every, seed):
    """`chains` independent chains as one (chains, 2) variable, started from N(0, I); pooled
    snapshots every `every` steps after `burn_in`, and the share of zero increments."""
    optimizer = toy_optimizer(method, lr, seed)
    x = keras.Variable(
        np.random.default_rng(seed).normal(size=(chains, 2)).astype("float32"),
        name="w",
    )
    optimizer.build([x])
    opt_vars = [v.value for v in optimizer.variables]

    @jax.jit
    def advance(w, opt_vars, n):
        def body(i, carry):
            w, opt_vars, zeros = carry
            (new,), opt_vars = optimizer.stateless_apply(
                opt_vars, [potential_gradient(name, w)], [w]
            )
            zeros = zeros + jnp.mean((new == w).astype("float32"))
            return new, opt_vars, zeros

        return jax.lax.fori_loop(
            0, n, body, (w, opt_vars, jnp.zeros((), "float32"))
        )

    t0 = time.perf_counter()
    w, opt_vars, zeros = advance(x.value, opt_vars, burn_in)
    total_zeros = float(zeros)
    snapshots = []
    for _ in range((steps - burn_in) // every):
        w, opt_vars, zeros = advance(w, opt_vars, every)
        total_zeros += float(zeros)
        snapshots.append(np.asarray(w, np.float64))
    return (
        np.concatenate(snapshots),
        total_zeros / steps,
        time.perf_counter() - t0,
    )


TOY_LABELS = {
    "dithered": "QSGLD dithered",
    "gaussian": "Gaussian SGLD (same T)",
    "nearest": "QSGLD nearest (same Qp)",
    "exact": "exact i.i.d. draws (floor)",
}


def _toy_record(
    args, store, name, method, lr, chains, steps, burn_in, every, seed, save
):
    key = store.make_key(
        target=name,
        m=method,
        lr=lr,
        chains=chains,
        steps=steps,
        seed=seed,
        quick=args.quick,
    )
    rec = store.get(key, force=args.force)
    if rec is None:
        if method == "exact":
            count = chains * ((steps - burn_in) // every)
            samples, zero, seconds = (
                exact_samples(name, count, np.random.default_rng(100 + seed)),
                float("nan"),
                0.0,
            )
        else:
            samples, zero, seconds = toy_chains(
                name, method, lr, chains, steps, burn_in, every, seed=seed
            )
        rec = dict(
            distances(name, samples),
            zero_fraction=zero,
            seconds=seconds,
            samples=len(samples),
            mean=[float(v) for v in samples.mean(0)],
            std=[float(v) for v in samples.std(0)],
        )
        if save:
            common.save_array(
                args,
                f"toy|{name}|{method}",
                samples[:: max(1, len(samples) // 200_000)].astype(np.float32),
            )
        rec = store.put(key, rec)
        common.log(
            f"toy2d: {name} {method} lr {lr:g} seed {seed}: TV {rec['tv']:.4f}, KS x {rec['ks_x']:.4f}, "
            f"KS y {rec['ks_y']:.4f}, zeros {common.fmt(rec['zero_fraction'])}, {seconds:.1f} s"
        )
    return rec


def _toy_row(name, lr, method, recs):
    modes = "-"
    if "modes" in recs[0]:
        modes = " / ".join(
            f"{np.mean([r['modes'][k] for r in recs]):.3f}" for k in range(3)
        )
    zero = (
        common.fmt(float(np.mean([r["zero_fraction"] for r in recs])))
        if method in ("dithered", "nearest")
        else "-"
    )
    return [
        name,
        lr,
        TOY_LABELS[method],
        recs[0]["samples"],
        common.fmt_pm([r["tv"] for r in recs]),
        common.fmt_pm([r["ks_x"] for r in recs]),
        common.fmt_pm([r["ks_y"] for r in recs]),
        modes,
        zero,
    ]


def run_toy2d(args):
    store = common.ResultStore(args.output_dir, "toy2d")
    chains = args.toy_chains or (QUICK_TOY["chains"] if args.quick else 2000)
    seeds = list(range(1 if args.quick else TOY_SEEDS))
    rows, plot_data = [], {}
    for name, (box, bins, lrs, steps, burn_in, every) in TARGETS.items():
        if args.quick:
            lrs = lrs[1:2]
            steps, burn_in, every = (
                QUICK_TOY["steps"],
                QUICK_TOY["burn_in"],
                QUICK_TOY["every"],
            )
        recs = [
            _toy_record(
                args,
                store,
                name,
                "exact",
                0.0,
                chains,
                steps,
                burn_in,
                every,
                seed,
                seed == 0,
            )
            for seed in seeds
        ]
        rows.append(_toy_row(name, "-", "exact", recs))
        for lr in lrs:
            for method in ("dithered", "gaussian", "nearest"):
                recs = [
                    _toy_record(
                        args,
                        store,
                        name,
                        method,
                        lr,
                        chains,
                        steps,
                        burn_in,
                        every,
                        seed,
                        seed == 0 and lr == lrs[0],
                    )
                    for seed in seeds
                ]
                rows.append(_toy_row(name, f"{lr:g}", method, recs))
        plot_data[name] = (box, lrs[0])
    path = toy_plot(args, plot_data)
    headers = [
        "target",
        "lr",
        "sampler",
        "samples pooled",
        "TV distance (2-D histogram)",
        "KS x",
        "KS y",
        "mass per mode (exact 0.5 / 0.3 / 0.2)",
        "zero increments",
    ]
    t = TARGETS
    notes = [
        "Banana: Haario et al. (1999) twisted Gaussian, U(x, y) = x^2/200 + "
        f"(y + {BANANA_B:g} x^2 - {100 * BANANA_B:g})^2/2. "
        f"Mixture: weights {', '.join(f'{w:g}' for w in MIX_WEIGHTS)}, centres on a "
        f"circle of radius 2 (90°, 210°, 330°), std {MIX_STD:g}. "
        "Both at T = 1 (density exp(-U)), full gradients in closed form, no prior.",
        f"{len(seeds)} runs (seeds {seeds}: initial points, noise, exact draws), mean ± std; each run "
        f"{chains} independent chains started from N(0, I); banana {t['banana'][3]} "
        f"steps (burn-in {t['banana'][4]}, a snapshot every {t['banana'][5]}), mixture "
        f"{t['mixture'][3]} (burn-in {t['mixture'][4]}, every {t['mixture'][5]})"
        + ("; quick mode: " + str(QUICK_TOY) if args.quick else "")
        + ". QSGLD uses Temperature(1) "
        "(Qp = 1/sqrt(24 lr)); Gaussian SGLD keras.random.normal of the same variance 2 lr; nearest the same Qp.",
        f"TV: half the L1 distance between the sample histogram on a {t['banana'][1]}x{t['banana'][1]} grid over "
        "the box shown in the figure (plus the mass outside it) and the exact bin probabilities (quadrature). KS: "
        "Kolmogorov-Smirnov statistic of each coordinate against the exact marginal CDF. Snapshots of one chain are "
        "correlated, so the i.i.d. row is a floor that the chains cannot reach with the same count; what is "
        "comparable is dithered against Gaussian at the same lr. Larger rates mix faster and carry a larger "
        "discretization bias (for both).",
    ]
    extra = (
        f"![{os.path.basename(path)}]({os.path.basename(path)})" if path else ""
    )
    return common.write_table(
        args,
        "toy2d",
        "2-D sampling check: sample histograms against the exact density",
        headers,
        rows,
        notes,
        extra,
    )


def toy_plot(args, boxes):
    methods = ("exact", "dithered", "gaussian", "nearest")
    fig = Figure(figsize=(3.2 * len(methods), 3.0 * len(boxes)))
    axes = fig.subplots(len(boxes), len(methods), squeeze=False)
    drawn = False
    for row, (name, (box, lr)) in enumerate(boxes.items()):
        x_edges, y_edges, exact = bin_probabilities(name, box, TARGETS[name][1])
        xc, yc = (
            0.5 * (x_edges[1:] + x_edges[:-1]),
            0.5 * (y_edges[1:] + y_edges[:-1]),
        )
        for col, method in enumerate(methods):
            ax = axes[row, col]
            samples = common.load_array(args, f"toy|{name}|{method}")
            if samples is not None:
                ax.hist2d(
                    samples[:, 0],
                    samples[:, 1],
                    bins=[x_edges, y_edges],
                    cmap="Blues",
                )
                drawn = True
            ax.contour(xc, yc, exact.T, levels=5, colors="k", linewidths=0.6)
            ax.set_title(
                f"{name}: {TOY_LABELS[method]}"
                + ("" if method == "exact" else f", lr {lr:g}"),
                fontsize=8,
            )
            ax.tick_params(labelsize=7)
    if not drawn:
        return None
    fig.suptitle(
        "sample histograms (blue) and exact density contours (black), T = 1"
    )
    fig.tight_layout()
    path = os.path.join(args.output_dir, "toy2d.png")
    fig.savefig(path, dpi=80)
    return path
