"""Posterior sampling: does QSGLD's noise sample, and does the sampled average predict better?

Tables (`--tables`):

* `lr`: the learning rates. SGD's training rate: the grid 0.03, 0.1, 0.3, 1 on a tuning seed
  (not an evaluation seed), the lowest final training loss kept. Then the chain's rate: from
  that tuning seed's trained SGD solution, dithered QSGLD at every temperature (and plain SGD,
  no noise) runs one chain per rate of the grid 0.01 ... 1. A chain is *unstable* when its
  training loss becomes non-finite or blows up to chance level (any epoch at or above ln(10),
  a uniform guess). The evaluation's chains use the largest rate that is stable at every
  temperature and without noise, and (setting `warm_slow`) the next smaller rate of the grid.
  No test data is used to choose.
* `posterior`: accuracy, NLL, ECE and Brier score on the test split, mean +- std over the
  evaluation seeds, with the epoch cost, for SGD's final weights, a deep ensemble of K SGD
  runs, SGD trained as long as a chain, and each chain's average over its K snapshots: QSGLD
  dithered at T = 1/N and colder, Gaussian SGLD (`keras.random` noise of the same variance) at
  the same T, QSGLD with the paper's deterministic rounding (`"nearest"`) at the same Qp, and
  the same chain with no noise at all (SGD continued at the chain's rate, the same
  snapshots: a snapshot ensemble). Chain settings (`--settings`): `warm`, from each seed's
  trained SGD solution (the main setting); `scratch`, from the same random initialisation,
  given the SGD epochs as extra burn-in so that both cost the same; `warm_slow`, warm at the
  next smaller rate. Two-sided paired t-tests over the seeds (`scipy.stats.ttest_rel`) of
  the NLL against SGD and against the no-noise chain of the same setting.
* `significance`: the same paired t-tests for all four metrics (difference of the means and
  p-value), against SGD and against the no-noise chain.
* `signatures`: what only a sampler shows. Snapshot diversity: mean single-snapshot test NLL
  minus the NLL of their average (>= 0 by Jensen's inequality; 0 when the snapshots agree);
  the weight drift `||w_end - w_start||` against the free-diffusion prediction
  `sqrt(P * 2 * lr * T * steps)` of the temperature (P weights), over the whole chain and
  over the sampling phase (first to last snapshot); the share of quantized increments that
  are exactly 0; and the chain's final training loss.
* `toy2d`: a sampling check with no neural network. 2000 independent chains (one
  `(2000, 2)` variable, the loss the sum of the potentials) sample two 2-D targets with
  full gradients at T = 1: Haario et al.'s (1999) twisted-Gaussian banana
  `U = x**2 / 200 + (y + b x**2 - 100 b)**2 / 2` (b = 0.03), and a mixture of three
  Gaussians of unequal weights. After a burn-in, snapshots of all chains are compared with
  the exact density: total-variation distance on a 2-D histogram and the KS statistic of
  each axis against the exact marginal (computed by quadrature), for dithered QSGLD,
  Gaussian SGLD at the same temperature, QSGLD nearest at the same Qp, and, as the floor
  of these distances, exact i.i.d. draws of the same count.

Every chain uses plain SGD steps (no momentum, `lr_eff = lr`) and Keras' decoupled weight
decay `wd = 1 / (N prior_std**2)`: the Gaussian prior `N(0, prior_std**2)` on every weight,
tempered with the likelihood, so that a chain at temperature `T` samples
`(likelihood x prior)**(1 / (N T))` (T = 1/N: the Bayesian posterior; colder: Wenzel et
al.'s cold posterior) and the no-noise chain is the same dynamics without noise. SGD, the
ensemble members and the chains all train with that weight decay (SGD is the MAP estimate's
usual optimizer).

Data: scikit-learn digits (MLP) and MNIST-1D (1-D CNN), offline, through
`keras_qsgld.experiments.datasets` and `keras_qsgld.experiments.models`.

The backend. These models are tiny, so the time goes to per-step overhead and to
compiling each chain's train step. Measured on the 2-core development machine (shared, so
noisy; three runs each, in seconds for 20 epochs of one run including its compilation),
TensorFlow against JAX: digits, SGD 1.7-2.0 against 3.4-3.6 (JAX's first compilation in a
process included), QSGLD dithered 3.1-5.3 against 2.5-3.5, Gaussian SGLD 9.2-11.7 against
3.2-6.9; MNIST-1D, SGD 4.5-6.1 against 4.0-11.0, QSGLD 6.2-9.6 against 5.2-8.0, Gaussian
SGLD 11.1-13.5 against 9.8-13.2. The chains (QSGLD and Gaussian SGLD) dominate the run, so
this script runs on **JAX** (`jax.jit` in `fit`, and `jax.lax.fori_loop` over
`optimizer.stateless_apply` for the 2-D chains): it sets `KERAS_BACKEND=jax` itself before
Keras is imported (the data pipelines are still `tf.data`). Run from the
repository root: `python -m benchmarks.sampling --quick`.
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
import tensorflow as tf
from matplotlib.figure import Figure
from scipy import special, stats

import keras_qsgld
from benchmarks.optimizers import GaussianSGLD
from keras_qsgld import calibration
from keras_qsgld.experiments.datasets import (
    DatasetUnavailableError,
    load_dataset,
)
from keras_qsgld.experiments.defaults import DEFAULT_MODEL
from keras_qsgld.experiments.models import build_model
from keras_qsgld.sampling import PosteriorSampler

TABLES = ("lr", "posterior", "significance", "signatures", "toy2d")
# dataset: batch size, SGD epochs E, chain epochs C, burn-in epochs B of the warm chain.
SETUPS = {
    "digits": dict(batch=32, epochs=20, chain=20, burn_in=10),
    "mnist1d": dict(batch=64, epochs=30, chain=20, burn_in=10),
}
QUICK_SETUP = dict(epochs=2, chain=4, burn_in=2)
QUICK_EXAMPLES = 320
TEMPERATURES = (1.0, 0.1, 0.01)  # in units of 1/N
QUICK_TEMPERATURES = (1.0,)
SAMPLES = 10  # K: snapshots per chain, and members of the deep ensemble
QUICK_SAMPLES = 2
PRIOR_STD = 1.0
TUNING_SEED = 1000
SGD_LR_GRID = (0.03, 0.1, 0.3, 1.0)
CHAIN_LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)
QUICK_SGD_LR_GRID = (0.3,)
QUICK_CHAIN_LR_GRID = (0.1, 0.3)
NOISY = ("dithered", "gaussian", "nearest")
METHOD_LABELS = {
    "dithered": "QSGLD dithered",
    "gaussian": "Gaussian SGLD",
    "nearest": "QSGLD nearest (same Qp)",
    "none": "no noise (snapshot ensemble)",
}
CHANCE_LOSS = math.log(
    10.0
)  # a chain whose training loss reaches a uniform guess's is unstable
SETTINGS = ("warm", "scratch", "warm_slow")
QUICK_SETTINGS = ("warm", "scratch")
SETTING_HELP = (
    "warm: from the seed's SGD solution at the chain rate; scratch: from the seed's random "
    "initialisation at the chain rate; warm_slow: from the SGD solution at the next smaller rate of "
    "the grid"
)


def build_parser():
    p = common.parser(
        __doc__.split("\n\n")[0], TABLES, "results/benchmarks/sampling"
    )
    p.add_argument("--datasets", default="digits,mnist1d")
    p.add_argument(
        "--settings",
        default=None,
        help=f"chain settings among {', '.join(SETTINGS)} (default all; quick: warm,scratch). "
        + SETTING_HELP,
    )
    p.add_argument(
        "--temperatures",
        default=None,
        help="comma-separated temperatures in units of 1/N (default 1,0.1,0.01; quick: 1)",
    )
    p.add_argument(
        "--samples",
        type=common.positive_int,
        default=None,
        help=f"K, snapshots per chain and ensemble members (default {SAMPLES}; quick {QUICK_SAMPLES})",
    )
    p.add_argument(
        "--epochs",
        type=common.positive_int,
        default=None,
        help="SGD epochs E (default per data set)",
    )
    p.add_argument(
        "--chain-epochs",
        type=common.positive_int,
        default=None,
        help="chain epochs C of a warm chain, burn-in included (default per data set)",
    )
    p.add_argument(
        "--burn-in",
        type=common.positive_int,
        default=None,
        help="burn-in epochs B of a warm chain (default per data set)",
    )
    p.add_argument(
        "--chain-lr",
        type=common.positive_float,
        default=None,
        help="the chains' learning rate (default: chosen by the lr table)",
    )
    p.add_argument(
        "--toy-chains",
        type=common.positive_int,
        default=None,
        help="chains of the 2-D check (default 2000)",
    )
    return p


# -- the setting of one run --------------------------------------------------------------------
class Context:
    """One data set: its sizes, the test and train arrays, and a model to evaluate weights."""

    def __init__(self, args, dataset):
        self.dataset = dataset
        self.quick = args.quick
        setup = dict(SETUPS[dataset])
        if args.quick:
            setup.update(QUICK_SETUP)
        for key, value in (
            ("epochs", args.epochs),
            ("chain", args.chain_epochs),
            ("burn_in", args.burn_in),
        ):
            if value is not None:
                setup[key] = value
        if setup["burn_in"] >= setup["chain"]:
            raise common.UsageError(
                f"The burn-in ({setup['burn_in']} epochs) must be shorter than the chain "
                f"({setup['chain']} epochs). Received: --burn-in={setup['burn_in']} --chain-epochs={setup['chain']}"
            )
        self.batch = setup["batch"]
        self.epochs, self.chain, self.burn_in = (
            setup["epochs"],
            setup["chain"],
            setup["burn_in"],
        )
        self.samples = args.samples or (
            QUICK_SAMPLES if args.quick else SAMPLES
        )
        self.max_examples = QUICK_EXAMPLES if args.quick else None
        self.model_name = DEFAULT_MODEL[dataset]
        bundle = self.bundle(0)
        self.num_train, self.num_classes, self.input_shape = (
            bundle.num_train,
            bundle.num_classes,
            bundle.input_shape,
        )
        self.steps_per_epoch = bundle.steps_per_epoch
        self.x_test, self.y_test = _arrays(bundle.test)
        self.x_train, self.y_train = _arrays(bundle.train)
        self.weight_decay = 1.0 / (self.num_train * PRIOR_STD**2)
        sampling_updates = (self.chain - self.burn_in) * self.steps_per_epoch
        self.thin = sampling_updates // self.samples
        if self.thin < 1:
            raise common.UsageError(
                f"{self.samples} samples do not fit in {self.chain - self.burn_in} epochs of "
                f"{self.steps_per_epoch} updates after the burn-in. Received: --samples={self.samples}"
            )
        self.eval_model = build_model(
            self.model_name, self.input_shape, self.num_classes, seed=0
        )
        self.num_weights = int(
            sum(np.prod(w.shape) for w in self.eval_model.get_weights())
        )

    def bundle(self, seed):
        return load_dataset(
            self.dataset,
            batch_size=self.batch,
            seed=seed,
            max_examples=self.max_examples,
        )

    def probabilities(self, weights, x):
        self.eval_model.set_weights(weights)
        probs = np.asarray(
            self.eval_model.predict_on_batch(x), dtype=np.float64
        )
        return probs / probs.sum(axis=1, keepdims=True)

    def train_loss(self, weights):
        return calibration.negative_log_likelihood(
            self.y_train, self.probabilities(weights, self.x_train)
        )

    def describe(self):
        return (
            f"{self.dataset}: {self.model_name} ({self.num_weights} weights), N = {self.num_train}, "
            f"batch {self.batch} ({self.steps_per_epoch} updates/epoch)"
        )


def _arrays(ds):
    xs, ys = zip(*ds.as_numpy_iterator())
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)


def _flat(weights):
    return np.concatenate([np.asarray(w, np.float64).ravel() for w in weights])


def _unflat(ctx, vector):
    out, at = [], 0
    for w in ctx.eval_model.get_weights():
        size = int(np.prod(w.shape))
        out.append(
            np.asarray(vector[at : at + size], dtype=w.dtype).reshape(w.shape)
        )
        at += size
    return out


def report(ctx, probs_list):
    """Metrics of the average of `probs_list`, and the mean single-member NLL and accuracy."""
    mean = np.mean(probs_list, axis=0)
    rec = {
        k: float(v)
        for k, v in calibration.calibration_report(ctx.y_test, mean).items()
    }
    singles = [
        calibration.negative_log_likelihood(ctx.y_test, p) for p in probs_list
    ]
    rec["single_nll"] = float(np.mean(singles))
    rec["single_acc"] = float(
        np.mean([calibration.accuracy(ctx.y_test, p) for p in probs_list])
    )
    rec["diversity"] = rec["single_nll"] - rec["nll"]
    rec["members"] = len(probs_list)
    return rec, mean


# -- cache of weights and probabilities (ignored by git: .npy) ----------------------------------
def _cache_path(args, name):
    folder = os.path.join(args.output_dir, "cache")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(
        folder,
        name.replace("/", "_").replace("|", "_").replace("=", "-") + ".npy",
    )


def _save(args, name, array):
    path = _cache_path(args, name)
    np.save(path + ".tmp.npy", np.asarray(array))
    os.replace(path + ".tmp.npy", path)


def _load(args, name):
    path = _cache_path(args, name)
    return np.load(path) if os.path.exists(path) else None


# -- optimizers --------------------------------------------------------------------------------
def make_optimizer(ctx, method, lr, temperature_units, seed):
    """SGD ("none"), or a chain at temperature `temperature_units / N` with the prior's decay."""
    wd = ctx.weight_decay
    if method == "none":
        return keras.optimizers.SGD(lr, weight_decay=wd)
    temperature = keras_qsgld.Temperature(temperature_units / ctx.num_train)
    if method == "gaussian":
        return GaussianSGLD(
            lr, resolution=temperature, seed=seed, weight_decay=wd
        )
    with warnings.catch_warnings():
        # rounding="nearest" with a Temperature: the optimizer warns that it does not sample
        # at T (the dead zone). That is the point of this control.
        warnings.filterwarnings(
            "ignore",
            message=".* with a Temperature does not sample at that temperature",
        )
        return keras_qsgld.QSGLD(
            lr,
            resolution=temperature,
            rounding=method,
            seed=seed,
            weight_decay=wd,
            track_noise=True,
        )


# -- SGD and the deep ensemble ------------------------------------------------------------------
def member_seed(seed, k):
    """The init/data seed of ensemble member k of evaluation seed `seed` (member 0: the seed)."""
    return seed if k == 0 else 10_000 + 100 * seed + k


class SGDTrainer:
    """One compiled model that trains SGD runs one after another (no recompilation): each run
    sets fresh initial weights (`build_model(seed=...)`) and resets the step counter."""

    def __init__(self, ctx, lr):
        keras.backend.clear_session()
        self.ctx, self.lr = ctx, lr
        self.model = build_model(
            ctx.model_name, ctx.input_shape, ctx.num_classes, seed=0
        )
        self.model.compile(
            optimizer=keras.optimizers.SGD(lr, weight_decay=ctx.weight_decay),
            loss="sparse_categorical_crossentropy",
        )

    def train(self, seed, epochs):
        ctx = self.ctx
        init = build_model(
            ctx.model_name, ctx.input_shape, ctx.num_classes, seed=seed
        ).get_weights()
        self.model.set_weights(init)
        self.model.optimizer.iterations.assign(0)
        t0 = time.perf_counter()
        history = self.model.fit(
            ctx.bundle(seed).train, epochs=epochs, verbose=0
        )
        weights = self.model.get_weights()
        losses = [float(v) for v in history.history["loss"]]
        return weights, losses, time.perf_counter() - t0


def sgd_run(args, ctx, store, trainers, lr, seed, table):
    """SGD for E epochs from seed's init; the record, the final weights (cached) and test probs."""
    key = store.make_key(
        d=ctx.dataset,
        run="sgd",
        lr=lr,
        seed=seed,
        E=ctx.epochs,
        quick=args.quick,
    )
    record = store.get(key, force=args.force and table in args.table_list)
    cached = _load(args, "w|" + key)
    if record is None or cached is None:
        trainer = trainers.get(lr) or trainers.setdefault(
            lr, SGDTrainer(ctx, lr)
        )
        weights, losses, seconds = trainer.train(seed, ctx.epochs)
        _save(args, "w|" + key, _flat(weights))
        probs = ctx.probabilities(weights, ctx.x_test)
        _save(args, "p|" + key, probs)
        rec, _ = report(ctx, [probs])
        rec.update(
            train_loss=ctx.train_loss(weights),
            loss_curve=losses,
            seconds=seconds,
            finite=bool(np.all(np.isfinite(_flat(weights)))),
        )
        record = store.put(key, rec)
        common.log(
            f"{table}: {ctx.dataset} SGD lr {lr:g} seed {seed}: {ctx.epochs} epochs in {seconds:.1f} s, "
            f"train loss {rec['train_loss']:.4f}, test NLL {rec['nll']:.4f}"
        )
        cached = _flat(weights)
    record["_key"] = key
    return record, _unflat(ctx, cached)


def ensemble_run(args, ctx, store, trainers, lr, seed):
    """Deep ensemble of K SGD runs of E epochs (member 0 is seed's own SGD run)."""
    key = store.make_key(
        d=ctx.dataset,
        run="ensemble",
        lr=lr,
        seed=seed,
        E=ctx.epochs,
        K=ctx.samples,
        quick=args.quick,
    )
    record = store.get(key, force=args.force and "posterior" in args.table_list)
    if record is not None and _load(args, "p|" + key) is not None:
        record["_key"] = key
        return record
    sgd_key = store.make_key(
        d=ctx.dataset,
        run="sgd",
        lr=lr,
        seed=seed,
        E=ctx.epochs,
        quick=args.quick,
    )
    probs = [_load(args, "p|" + sgd_key)]
    trainer = trainers.get(lr) or trainers.setdefault(lr, SGDTrainer(ctx, lr))
    t0 = time.perf_counter()
    for k in range(1, ctx.samples):
        weights, _, _ = trainer.train(member_seed(seed, k), ctx.epochs)
        probs.append(ctx.probabilities(weights, ctx.x_test))
    rec, mean = report(ctx, probs)
    rec["seconds"] = time.perf_counter() - t0
    _save(args, "p|" + key, mean)
    common.log(
        f"posterior: {ctx.dataset} deep ensemble seed {seed}: {ctx.samples} members, "
        f"test NLL {rec['nll']:.4f}, diversity {rec['diversity']:.4f}"
    )
    record = store.put(key, rec)
    record["_key"] = key
    return record


# -- one chain -------------------------------------------------------------------------------
def run_chain(
    ctx,
    method,
    lr,
    temperature_units,
    start_weights,
    init_seed,
    data_seed,
    epochs,
    burn_in,
):
    """Runs one chain; returns its snapshots, final weights, loss curve, zero share, seconds."""
    keras.backend.clear_session()
    model = build_model(
        ctx.model_name, ctx.input_shape, ctx.num_classes, seed=init_seed
    )
    if start_weights is not None:
        model.set_weights(start_weights)
    start = model.get_weights()
    optimizer = make_optimizer(
        ctx, method, lr, temperature_units, seed=data_seed
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    sampler = PosteriorSampler(
        burn_in=burn_in, thin=ctx.thin, max_samples=ctx.samples, verbose=0
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # The sampler warns for every optimizer but dithered QSGLD at a Temperature (its
        # snapshots are then a trajectory, not posterior samples): the controls, knowingly.
        warnings.filterwarnings(
            "ignore", message="PosteriorSampler: the optimizer"
        )
        history = model.fit(
            ctx.bundle(data_seed).train,
            epochs=epochs,
            verbose=0,
            callbacks=[sampler],
        )
    seconds = time.perf_counter() - t0
    zero = float("nan")
    if getattr(optimizer, "track_noise", False):
        zero = optimizer.noise_statistics(reset=False)["zero_fraction"]
    return dict(
        start=start,
        end=model.get_weights(),
        samples=sampler.samples,
        steps=sampler.sample_steps,
        losses=[float(v) for v in history.history["loss"]],
        zero=zero,
        seconds=seconds,
        updates=int(keras.ops.convert_to_numpy(optimizer.iterations)),
    )


def chain_record(ctx, chain, lr, temperature_units):
    """Test metrics of the snapshots' average and of the last iterate, and the signatures."""
    finite = bool(np.all(np.isfinite(_flat(chain["end"])))) and all(
        math.isfinite(v) for v in chain["losses"]
    )
    rec = dict(
        finite=finite,
        loss_curve=chain["losses"],
        seconds=chain["seconds"],
        zero_fraction=chain["zero"],
        updates=chain["updates"],
        sample_steps=chain["steps"],
    )
    T = temperature_units / ctx.num_train
    P = ctx.num_weights
    rec["drift"] = float(
        np.linalg.norm(_flat(chain["end"]) - _flat(chain["start"]))
    )
    rec["drift_predicted"] = math.sqrt(P * 2 * lr * T * chain["updates"])
    if chain["samples"]:
        sampled = chain["steps"][-1] - chain["steps"][0]
        rec["drift_sampling"] = float(
            np.linalg.norm(
                _flat(chain["samples"][-1]) - _flat(chain["samples"][0])
            )
        )
        rec["drift_sampling_predicted"] = math.sqrt(P * 2 * lr * T * sampled)
    if not finite:
        rec.update(train_loss=float("inf"))
        return rec, None
    rec["train_loss"] = ctx.train_loss(chain["end"])
    rec["start_train_loss"] = ctx.train_loss(chain["start"])
    probs = [ctx.probabilities(w, ctx.x_test) for w in chain["samples"]]
    metrics, mean = report(ctx, probs)
    rec.update(metrics)
    last, _ = report(ctx, [ctx.probabilities(chain["end"], ctx.x_test)])
    rec["last"] = {k: last[k] for k in ("accuracy", "nll", "brier", "ece")}
    return rec, mean


def stability(rec):
    """A chain is stable when its losses stay finite and never blow up to chance level: every
    epoch's mean training loss, and the final weights' training loss, below ln(10) (a uniform
    guess over 10 classes: whatever training had found is lost, even if it recovers)."""
    if not rec["finite"]:
        return False
    return max(rec["loss_curve"] + [rec["train_loss"]]) < CHANCE_LOSS


def sampling_loss(ctx, rec):
    """Mean training loss (running minibatch means) over the epochs after the burn-in."""
    curve = rec["loss_curve"]
    return float(np.mean(curve[-(ctx.chain - ctx.burn_in) :]))


def chain_label(method, temperature_units):
    if method == "none":
        return METHOD_LABELS["none"]
    return f"{METHOD_LABELS[method]}, T = {temperature_units:g}/N"


# -- the lr table ---------------------------------------------------------------------------
def tune(args, ctx, store, trainers, temps):
    """SGD's rate (lowest final train loss) and the chains' rate (largest stable everywhere),
    on the tuning seed; rows of the lr table."""
    sgd_grid = QUICK_SGD_LR_GRID if args.quick else SGD_LR_GRID
    chain_grid = QUICK_CHAIN_LR_GRID if args.quick else CHAIN_LR_GRID
    losses, solutions = {}, {}
    for lr in sgd_grid:
        rec, weights = sgd_run(
            args, ctx, store, trainers, lr, TUNING_SEED, "lr"
        )
        losses[lr] = (
            rec["train_loss"]
            if rec["finite"] and math.isfinite(rec["train_loss"])
            else math.inf
        )
        solutions[lr] = weights
    sgd_lr = min(sgd_grid, key=lambda lr: losses[lr])
    rows = [
        [
            ctx.dataset,
            "SGD training (lowest final train loss)",
            f"{ctx.epochs} epochs",
        ]
        + [f"{lr:g}: {common.fmt(losses[lr])}" for lr in sgd_grid]
        + [""] * (len(chain_grid) - len(sgd_grid))
        + [f"{sgd_lr:g}"]
    ]
    stable_everywhere = set(chain_grid)
    for method, t in [("dithered", t) for t in temps] + [("none", 0.0)]:
        cells, stable = [], []
        for lr in chain_grid:
            key = store.make_key(
                d=ctx.dataset,
                run="tune",
                m=method,
                T=t,
                lr=lr,
                sgd_lr=sgd_lr,
                C=ctx.chain,
                E=ctx.epochs,
                quick=args.quick,
            )
            rec = store.get(key, force=args.force and "lr" in args.table_list)
            if rec is None:
                chain = run_chain(
                    ctx,
                    method,
                    lr,
                    t,
                    solutions[sgd_lr],
                    TUNING_SEED,
                    TUNING_SEED,
                    ctx.chain,
                    ctx.burn_in,
                )
                rec, _ = chain_record(ctx, chain, lr, t)
                rec = store.put(key, rec)
                common.log(
                    f"lr: {ctx.dataset} {chain_label(method, t)} lr {lr:g}: sampling-phase loss "
                    f"{common.fmt(sampling_loss(ctx, rec))}, max epoch loss {common.fmt(max(rec['loss_curve']))} "
                    f"(from {common.fmt(rec.get('start_train_loss'))}), "
                    f"{'stable' if stability(rec) else 'UNSTABLE'}, {rec['seconds']:.1f} s"
                )
            ok = stability(rec)
            if ok:
                stable.append(lr)
            cells.append(
                f"{lr:g}: {common.fmt(sampling_loss(ctx, rec))}, max {common.fmt(max(rec['loss_curve']))}"
                + ("" if ok else " (unstable)")
            )
        stable_everywhere &= set(stable)
        rows.append(
            [
                ctx.dataset,
                f"chain: {chain_label(method, t)}",
                f"{ctx.chain} epochs from SGD",
            ]
            + cells
            + [f"{max(stable):g}" if stable else "none stable"]
        )
    if args.chain_lr is not None:
        chain_lr, why = args.chain_lr, "--chain-lr"
    elif stable_everywhere:
        chain_lr, why = (
            max(stable_everywhere),
            "largest stable at every temperature and without noise",
        )
    else:
        chain_lr, why = min(chain_grid), "none stable everywhere: the smallest"
    smaller = [lr for lr in chain_grid if lr < chain_lr]
    slow_lr = max(smaller) if smaller else chain_lr / 3.0
    rows.append(
        [ctx.dataset, "chains of the evaluation", why]
        + [""] * len(chain_grid)
        + [f"{chain_lr:g}"]
    )
    rows.append(
        [
            ctx.dataset,
            "chains of the evaluation, warm_slow",
            "the next smaller rate",
        ]
        + [""] * len(chain_grid)
        + [f"{slow_lr:g}"]
    )
    return sgd_lr, chain_lr, slow_lr, rows, len(chain_grid)


def write_lr_table(args, rows_by_dataset, width):
    rows = [r for rows in rows_by_dataset for r in rows]
    headers = (
        ["data set", "run", "length"]
        + [f"lr {i + 1}: train loss" for i in range(width)]
        + ["chosen lr"]
    )
    notes = [
        f"Tuning seed {TUNING_SEED} (not an evaluation seed); no test data is used. SGD: the NLL of the final "
        "weights on the whole training set (no prior term); the lowest is kept.",
        "Chains start from the tuning seed's SGD solution at SGD's chosen rate. Cells: the mean training loss "
        "over the sampling phase (the epochs after the burn-in; running minibatch means, as fit reports them) "
        "and the largest epoch mean. Unstable: a non-finite loss, or any epoch (or the final weights) at or "
        "above ln(10), a uniform guess's loss: the chain lost what training found, even where it recovers later.",
        "The evaluation's chains run at the largest rate stable at every temperature and without noise (so that "
        "they move as far as they can in the budget), and, as the setting warm_slow, at the next smaller rate "
        "of the grid. A stable chain may still be a biased sampler at a large rate (discretization, and "
        "minibatch gradient noise, whose variance grows as lr^2 against the injected 2 lr T).",
    ]
    return common.write_table(
        args,
        "lr",
        "Learning rates: SGD's, and where each temperature's chain is stable",
        headers,
        rows,
        notes,
    )


# -- the evaluation ---------------------------------------------------------------------------
def chain_methods(temps):
    return [("none", 0.0)] + [(m, t) for t in temps for m in NOISY]


def setting_list(settings, chain_lr, slow_lr):
    """[(label, start, lr)] of the chain settings asked for."""
    out = []
    for name in settings:
        lr = slow_lr if name == "warm_slow" else chain_lr
        start = "scratch" if name == "scratch" else "warm"
        out.append((f"{start}, lr {lr:g}", start, lr))
    return out


def evaluate_dataset(args, ctx, store, trainers, sgd_lr, temps, settings):
    """{(setting, method, T): [record per seed]} plus SGD and ensemble records per seed."""
    results = {"sgd": [], "ensemble": []}
    for seed in args.seed_list:
        sgd_rec, sgd_weights = sgd_run(
            args, ctx, store, trainers, sgd_lr, seed, "posterior"
        )
        results["sgd"].append(sgd_rec)
        results["ensemble"].append(
            ensemble_run(args, ctx, store, trainers, sgd_lr, seed)
        )
        for setting, start, chain_lr in settings:
            for method, t in chain_methods(temps):
                key = store.make_key(
                    d=ctx.dataset,
                    run="chain",
                    start=start,
                    m=method,
                    T=t,
                    lr=chain_lr,
                    sgd_lr=sgd_lr,
                    seed=seed,
                    E=ctx.epochs,
                    C=ctx.chain,
                    B=ctx.burn_in,
                    K=ctx.samples,
                    quick=args.quick,
                )
                rec = store.get(
                    key, force=args.force and "posterior" in args.table_list
                )
                if rec is None:
                    if start == "warm":
                        chain = run_chain(
                            ctx,
                            method,
                            chain_lr,
                            t,
                            sgd_weights,
                            seed,
                            seed,
                            ctx.chain,
                            ctx.burn_in,
                        )
                    else:  # the SGD epochs as extra burn-in: the same cost as a warm chain
                        chain = run_chain(
                            ctx,
                            method,
                            chain_lr,
                            t,
                            None,
                            seed,
                            seed,
                            ctx.epochs + ctx.chain,
                            ctx.epochs + ctx.burn_in,
                        )
                    rec, mean = chain_record(ctx, chain, chain_lr, t)
                    if mean is not None:
                        _save(args, "p|" + key, mean)
                    rec = store.put(key, rec)
                    common.log(
                        f"posterior: {ctx.dataset} seed {seed} {setting} {chain_label(method, t)}: "
                        f"{rec['updates']} updates in {rec['seconds']:.1f} s, test NLL {common.fmt(rec.get('nll'))}, "
                        f"diversity {common.fmt(rec.get('diversity'))}, drift {common.fmt(rec['drift'])} "
                        f"(predicted {common.fmt(rec['drift_predicted'])}), zeros {common.fmt(rec['zero_fraction'])}"
                    )
                rec["_key"] = key
                results.setdefault((setting, method, t), []).append(rec)
    return results


def paired_p(a, b):
    """Two-sided paired t-test p-value (nan with fewer than 2 pairs, non-finite values, or no spread)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if (
        len(a) < 2
        or len(a) != len(b)
        or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)))
    ):
        return float("nan")
    d = a - b
    if np.all(d == d[0]):
        return float("nan") if d[0] == 0 else 0.0
    return float(stats.ttest_rel(a, b).pvalue)


METRICS = (
    ("accuracy", "accuracy %", 100.0),
    ("nll", "NLL", 1.0),
    ("ece", "ECE", 1.0),
    ("brier", "Brier", 1.0),
)


def _values(recs, metric, last=False):
    return [
        (r["last"][metric] if last else r.get(metric, float("nan")))
        if r.get("finite", True)
        else float("nan")
        for r in recs
    ]


def _diff_cell(a, b, scale=1.0):
    a, b = np.asarray(a, float) * scale, np.asarray(b, float) * scale
    if len(a) == 0 or not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return "n/a"
    d = float(np.mean(a - b))
    return f"{d:+.3g} (p = {common.fmt(paired_p(a, b), 2)})"


def posterior_rows(ctx, results, temps, settings):
    """Rows (label, setting, epochs, {metric: values}) of one data set, in table order."""
    E, C = ctx.epochs, ctx.chain
    rows = [
        (
            "SGD final weights",
            "-",
            f"{E}",
            {m: _values(results["sgd"], m) for m, _, _ in METRICS},
        ),
        (
            f"deep ensemble of {ctx.samples} SGD runs",
            "-",
            f"{ctx.samples} x {E} = {ctx.samples * E}",
            {m: _values(results["ensemble"], m) for m, _, _ in METRICS},
        ),
    ]
    for setting, start, _ in settings:
        none = results[(setting, "none", 0.0)]
        if start == "warm":
            rows.append(
                (
                    f"SGD {E} epochs, then {C} at the chain's rate (no-noise chain's last iterate)",
                    setting,
                    f"{E + C}",
                    {m: _values(none, m, last=True) for m, _, _ in METRICS},
                )
            )
        for method, t in chain_methods(temps):
            recs = results[(setting, method, t)]
            rows.append(
                (
                    f"{chain_label(method, t)}: average of {ctx.samples} snapshots",
                    setting,
                    f"{E + C}",
                    {m: _values(recs, m) for m, _, _ in METRICS},
                )
            )
    return rows


def run_posterior_tables(args, contexts, all_results, temps, settings_of):
    rows, sig_rows = [], []
    for ctx in contexts:
        results = all_results[ctx.dataset]
        sgd_vals = {m: _values(results["sgd"], m) for m, _, _ in METRICS}
        for label, setting, epochs, vals in posterior_rows(
            ctx, results, temps, settings_of[ctx.dataset]
        ):
            control = None
            if setting != "-":
                control = {
                    m: _values(results[(setting, "none", 0.0)], m)
                    for m, _, _ in METRICS
                }
            cells = [common.fmt_pm(vals[m], scale=s) for m, _, s in METRICS]
            is_sgd = label.startswith("SGD final")
            vs_sgd = "-" if is_sgd else _diff_cell(vals["nll"], sgd_vals["nll"])
            is_control = label.startswith(METHOD_LABELS["none"])
            vs_none = (
                "-"
                if control is None or is_control
                else _diff_cell(vals["nll"], control["nll"])
            )
            rows.append(
                [ctx.dataset, setting, label, epochs]
                + cells
                + [vs_sgd, vs_none]
            )
            if not is_sgd:
                sig = [ctx.dataset, setting, label]
                for m, _, s in METRICS:
                    sig.append(_diff_cell(vals[m], sgd_vals[m], s))
                for m, _, s in METRICS:
                    sig.append(
                        "-"
                        if control is None or is_control
                        else _diff_cell(vals[m], control[m], s)
                    )
                sig_rows.append(sig)
    seeds = args.seed_list
    setting = "; ".join(
        f"{c.describe()}, SGD lr {c.sgd_lr:g} for E = {c.epochs} epochs, chains at lr "
        f"{' and '.join(f'{lr:g}' for lr in sorted({s[2] for s in settings_of[c.dataset]}, reverse=True))}, "
        f"C = {c.chain} epochs (burn-in {c.burn_in}), a snapshot every {c.thin} updates, "
        f"K = {c.samples}, weight decay 1/N = {c.weight_decay:.3g}"
        for c in contexts
    )
    notes = [
        f"Seeds {seeds}; mean ± std over seeds. {setting}.",
        "Chains: warm, from the seed's SGD solution (E epochs), C epochs with a burn-in of B; scratch, from the "
        "same random initialisation as SGD, E + C epochs with a burn-in of E + B; lr: the chain's constant rate "
        "(the lr table). Epochs: the training epochs behind the prediction (the deep ensemble trains K models "
        "of E epochs).",
        "Every run trains with the decoupled weight decay 1/N (the Gaussian prior N(0, 1) per weight); a chain "
        "at T samples (likelihood x prior)^(1/(N T)). QSGLD nearest uses Qp = 1/sqrt(24 lr T) of the same T.",
        "ΔNLL: mean over seeds of the paired difference (negative: better than the reference), two-sided paired "
        f"t-test (scipy.stats.ttest_rel) over the {len(seeds)} seeds. With 5 seeds the power is low, and "
        "Wilcoxon's signed-rank test could not go below p = 0.0625; the p-values are not corrected for the "
        "many comparisons.",
        "ECE: 15 equal-width confidence bins; the test splits are small (digits 360, MNIST-1D 1000 examples).",
    ]
    extra = "\n".join(
        f"![reliability_{c.dataset}.png](reliability_{c.dataset}.png)"
        for c in contexts
        if os.path.exists(
            os.path.join(args.output_dir, f"reliability_{c.dataset}.png")
        )
    )
    headers = (
        ["data set", "chain start, lr", "predictions", "epochs"]
        + [f"{name} (mean ± std)" for _, name, _ in METRICS]
        + ["ΔNLL vs SGD (p)", "ΔNLL vs no-noise chain (p)"]
    )
    outputs = []
    if "posterior" in args.table_list:
        outputs.append(
            common.write_table(
                args,
                "posterior",
                "Posterior sampling: test accuracy, NLL, ECE and Brier",
                headers,
                rows,
                notes,
                extra,
            )
        )
    if "significance" in args.table_list:
        sig_headers = (
            ["data set", "chain start, lr", "predictions"]
            + [f"Δ{name} vs SGD (p)" for _, name, _ in METRICS]
            + [f"Δ{name} vs no-noise chain (p)" for _, name, _ in METRICS]
        )
        sig_notes = notes[:1] + [
            "Δ: mean over seeds of (method - reference), paired by seed; p: two-sided paired t-test "
            "(scipy.stats.ttest_rel). Lower is better for NLL, ECE and Brier, higher for accuracy. The reference "
            "'no-noise chain' is the snapshot average of the chain without noise from the same start at the same "
            "rate.",
            "n/a: a run diverged (non-finite weights) on some seed.",
        ]
        outputs.append(
            common.write_table(
                args,
                "significance",
                "Paired tests against SGD and against the no-noise chain",
                sig_headers,
                sig_rows,
                sig_notes,
            )
        )
    return outputs


def run_signatures_table(args, contexts, all_results, temps, settings_of):
    rows = []
    for ctx in contexts:
        results = all_results[ctx.dataset]
        ens = results["ensemble"]
        rows.append(
            [
                ctx.dataset,
                "-",
                f"deep ensemble of {ctx.samples} SGD runs",
                f"{len(ens)}/{len(ens)}",
                common.fmt_pm(_values(ens, "single_nll")),
                common.fmt_pm(_values(ens, "nll")),
                common.fmt_pm(_values(ens, "diversity")),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        )
        for setting, _, _ in settings_of[ctx.dataset]:
            for method, t in chain_methods(temps):
                recs = results[(setting, method, t)]
                ok = [r for r in recs if r["finite"]]
                drift = [r["drift"] for r in ok]
                pred = [r["drift_predicted"] for r in ok]
                drift_s = [r.get("drift_sampling", float("nan")) for r in ok]
                pred_s = [
                    r.get("drift_sampling_predicted", float("nan")) for r in ok
                ]
                ratio = (
                    "-"
                    if t == 0
                    else common.fmt_pm([d / p for d, p in zip(drift, pred)])
                )
                ratio_s = (
                    "-"
                    if t == 0
                    else common.fmt_pm([d / p for d, p in zip(drift_s, pred_s)])
                )
                zero = (
                    "-"
                    if method not in ("dithered", "nearest")
                    else common.fmt_pm([r["zero_fraction"] for r in ok])
                )
                rows.append(
                    [
                        ctx.dataset,
                        setting,
                        chain_label(method, t),
                        f"{len(ok)}/{len(recs)}",
                        common.fmt_pm([r["single_nll"] for r in ok]),
                        common.fmt_pm([r["nll"] for r in ok]),
                        common.fmt_pm([r["diversity"] for r in ok]),
                        common.fmt_pm(drift)
                        + (
                            ""
                            if t == 0
                            else f" (pred. {common.fmt(np.mean(pred))})"
                        ),
                        ratio,
                        common.fmt_pm(drift_s)
                        + (
                            ""
                            if t == 0
                            else f" (pred. {common.fmt(np.mean(pred_s))})"
                        ),
                        ratio_s,
                        zero,
                        common.fmt_pm([r["train_loss"] for r in ok]),
                    ]
                )
    headers = [
        "data set",
        "chain start, lr",
        "chain",
        "finite runs",
        "single-snapshot NLL",
        "NLL of the average",
        "diversity (Δ)",
        "drift whole chain ‖w_end - w_start‖",
        "drift / predicted",
        "drift sampling phase",
        "drift / predicted",
        "zero increments",
        "final train loss",
    ]
    notes = [
        "Diversity: mean single-snapshot test NLL minus the test NLL of the snapshots' average (>= 0 by "
        "Jensen's inequality); for the deep ensemble, over its members.",
        "Drift: Euclidean norm of the change of all P weights, over the whole chain (start: the SGD solution "
        "for warm, the random initialisation for scratch) and over the sampling phase (first to last snapshot). "
        "Predicted: sqrt(P 2 lr T steps), the spread that the injected noise alone gives a free random walk "
        "(no gradient, no prior); the gradient also moves the weights (the no-noise row shows that drift), "
        "and the likelihood's curvature and the prior hold the noise back (ratio < 1).",
        "Zero increments: share of the quantized increments that were exactly 0 over the chain (QSGLD's "
        "noise statistics); weight decay moves the weights outside the quantization. Final train loss: "
        "NLL of the chain's last weights on the whole training set.",
    ]
    return common.write_table(
        args,
        "signatures",
        "Signatures of a sampler: snapshot diversity and weight drift",
        headers,
        rows,
        notes,
    )


def reliability_plot(args, ctx, results, temps, seed, setting):
    """Reliability diagrams of one seed (warm chains)."""
    panels = {}
    for label, key in _diagram_keys(ctx, results, temps, setting):
        probs = _load(args, "p|" + key) if key else None
        if probs is not None:
            panels[label] = probs
    if not panels:
        return None
    path = os.path.join(args.output_dir, f"reliability_{ctx.dataset}.png")
    calibration.reliability_diagram(
        ctx.y_test,
        panels,
        path,
        title=f"{ctx.dataset}, seed {seed}, chains {setting}",
    )
    return path


def _diagram_keys(ctx, results, temps, setting):
    out = []
    for label, recs in (
        ("SGD", results["sgd"]),
        (f"ensemble of {ctx.samples}", results["ensemble"]),
    ):
        out.append((label, recs[0].get("_key")))
    for method, t in [
        ("none", 0.0),
        ("dithered", temps[0]),
        ("gaussian", temps[0]),
        ("dithered", temps[-1]),
    ]:
        recs = results.get((setting, method, t))
        if recs:
            out.append(
                (
                    chain_label(method, t).replace(" (snapshot ensemble)", ""),
                    recs[0].get("_key"),
                )
            )
    return out


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
            _save(
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
            samples = _load(args, f"toy|{name}|{method}")
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


# -- main ------------------------------------------------------------------------------------
def _parse_list(text, allowed, flag):
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise common.UsageError(
            f"Argument `{flag}` must name items among {tuple(allowed)}. Received: {text!r}"
        )
    return items


def _parse_temperatures(text, quick):
    if text is None:
        return QUICK_TEMPERATURES if quick else TEMPERATURES
    try:
        temps = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        temps = ()
    if not temps or not all(math.isfinite(t) and t > 0 for t in temps):
        raise common.UsageError(
            f"Argument `--temperatures` must be positive numbers (units of 1/N). Received: {text!r}"
        )
    return tuple(sorted(temps, reverse=True))


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    tf.get_logger().setLevel("ERROR")
    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    warnings.filterwarnings("ignore", message=".*PyDataset.*")
    datasets = _parse_list(args.datasets, SETUPS, "--datasets")
    settings = _parse_list(
        args.settings or ",".join(QUICK_SETTINGS if args.quick else SETTINGS),
        SETTINGS,
        "--settings",
    )
    temps = _parse_temperatures(args.temperatures, args.quick)
    if args.quick:
        args.seed_list = args.seed_list[:1]
    if TUNING_SEED in args.seed_list:
        raise common.UsageError(
            f"Argument `--seeds` must not include the tuning seed {TUNING_SEED}. Received: {args.seeds!r}"
        )
    common.log(
        f"sampling: tables {args.table_list}, data sets {datasets}, settings {settings}, temperatures "
        f"{[f'{t:g}/N' for t in temps]}, seeds {args.seed_list}, backend {keras.backend.backend()}"
    )
    outputs = []
    nn_tables = {"lr", "posterior", "significance", "signatures"} & set(
        args.table_list
    )
    if nn_tables:
        store = common.ResultStore(args.output_dir, "runs")
        contexts, lr_rows, settings_of, all_results, width = [], [], {}, {}, 0
        for dataset in datasets:
            ctx = Context(args, dataset)
            contexts.append(ctx)
            common.log(
                f"{ctx.describe()}; E = {ctx.epochs}, C = {ctx.chain}, B = {ctx.burn_in}, K = {ctx.samples}, "
                f"thin {ctx.thin}"
            )
            trainers = {}
            sgd_lr, chain_lr, slow_lr, rows, width = tune(
                args, ctx, store, trainers, temps
            )
            ctx.sgd_lr = sgd_lr
            lr_rows.append(rows)
            settings_of[dataset] = setting_list(settings, chain_lr, slow_lr)
            common.log(
                f"{dataset}: SGD lr {sgd_lr:g}, chain lr {chain_lr:g} (warm_slow: {slow_lr:g})"
            )
            if nn_tables - {"lr"}:
                all_results[dataset] = evaluate_dataset(
                    args,
                    ctx,
                    store,
                    trainers,
                    sgd_lr,
                    temps,
                    settings_of[dataset],
                )
                first = settings_of[dataset][0]
                reliability_plot(
                    args,
                    ctx,
                    all_results[dataset],
                    temps,
                    args.seed_list[0],
                    first[0],
                )
        if "lr" in args.table_list:
            outputs.append(write_lr_table(args, lr_rows, width))
        if {"posterior", "significance"} & set(args.table_list):
            outputs.extend(
                run_posterior_tables(
                    args, contexts, all_results, temps, settings_of
                )
            )
        if "signatures" in args.table_list:
            outputs.append(
                run_signatures_table(
                    args, contexts, all_results, temps, settings_of
                )
            )
    if "toy2d" in args.table_list:
        outputs.append(run_toy2d(args))
    return outputs


if __name__ == "__main__":
    common.run_script(main, user_errors=(DatasetUnavailableError,))
