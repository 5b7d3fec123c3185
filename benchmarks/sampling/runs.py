"""One data set's setting, SGD and the deep ensemble, and one chain of `benchmarks.sampling`."""

import math
import time
import warnings

from benchmarks import common
from experiments import cli

common.use_backend(__name__, "jax", "runs on the JAX backend")

import keras
import numpy as np

import keras_qsgld
from benchmarks.optimizers import GaussianSGLD
from experiments.datasets import load_dataset
from experiments.defaults import DEFAULT_MODEL
from experiments.models import build_model
from keras_qsgld import calibration
from keras_qsgld.sampling import PosteriorSampler, posterior_predictive

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
            raise cli.UserError(
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
            raise cli.UserError(
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
        """The model's probabilities at `weights`, through the public predictive."""
        return self.predictive([weights], x)

    def predictive(self, members, x):
        """`keras_qsgld.posterior_predictive` of the members (weight lists) on `x`: the
        published averages go through the API they benchmark."""
        return posterior_predictive(
            self.eval_model, members, x, batch_size=len(x)
        )

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


def report(ctx, members):
    """Test metrics of the members' (weight lists') posterior predictive, and the mean
    single-member NLL and accuracy; returns (record, the predictive's probabilities)."""
    mean = ctx.predictive(members, ctx.x_test)
    rec = {
        k: float(v)
        for k, v in calibration.calibration_report(ctx.y_test, mean).items()
    }
    singles = [ctx.probabilities(w, ctx.x_test) for w in members]
    rec["single_nll"] = float(
        np.mean(
            [
                calibration.negative_log_likelihood(ctx.y_test, p)
                for p in singles
            ]
        )
    )
    rec["single_acc"] = float(
        np.mean([calibration.accuracy(ctx.y_test, p) for p in singles])
    )
    rec["diversity"] = rec["single_nll"] - rec["nll"]
    rec["members"] = len(members)
    return rec, mean


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
    cached = common.load_array(args, "w|" + key)
    if record is None or cached is None:
        trainer = trainers.get(lr) or trainers.setdefault(
            lr, SGDTrainer(ctx, lr)
        )
        weights, losses, seconds = trainer.train(seed, ctx.epochs)
        common.save_array(args, "w|" + key, _flat(weights))
        rec, probs = report(ctx, [weights])
        common.save_array(args, "p|" + key, probs)
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
    if record is not None and common.load_array(args, "p|" + key) is not None:
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
    members = [_unflat(ctx, common.load_array(args, "w|" + sgd_key))]
    trainer = trainers.get(lr) or trainers.setdefault(lr, SGDTrainer(ctx, lr))
    t0 = time.perf_counter()
    for k in range(1, ctx.samples):
        weights, _, _ = trainer.train(member_seed(seed, k), ctx.epochs)
        members.append(weights)
    rec, mean = report(ctx, members)
    rec["seconds"] = time.perf_counter() - t0
    common.save_array(args, "p|" + key, mean)
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
    metrics, mean = report(ctx, chain["samples"])
    rec.update(metrics)
    last, _ = report(ctx, [chain["end"]])
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
