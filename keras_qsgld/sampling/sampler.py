"""`PosteriorSampler`: which optimizer updates of a Langevin run are samples, and keeping them.

Where the samples live (memory or a folder) is `keras_qsgld.sampling.store`'s business.
"""

import os
import warnings

import keras
import numpy as np

from keras_qsgld import langevin
from keras_qsgld.callbacks import unwrap_optimizer
from keras_qsgld.sampling import store
from keras_qsgld.validation import check_choice, check_integer

BURN_IN_UNITS = ("epochs", "steps")


def _steps_per_execution(model):
    """The model's `steps_per_execution` (1 before compile), read without a state sync."""
    value = getattr(model, "steps_per_execution", 1)
    try:
        return max(int(value), 1)
    except (TypeError, ValueError):
        return 1


def _to_int(value):
    return int(keras.ops.convert_to_numpy(value))


@keras.saving.register_keras_serializable(package="keras_qsgld")
class PosteriorSampler(keras.callbacks.Callback):
    """Keeps posterior samples (weight snapshots) of a Langevin run in `fit`.

    **Which updates.** The sampler counts optimizer updates `u = optimizer.iterations`
    after each update (1 after the first; with `gradient_accumulation_steps` an update is
    one applied step). The first `B` updates are the burn-in (`burn_in` steps, or
    `burn_in` epochs of the updates `fit` runs per epoch). After it, it keeps the weights
    after updates

    - `u = B + thin, B + 2 thin, B + 3 thin, ...` (default), or, with `cycle_length=C`,
    - the last update of each cycle, `u = C, 2C, 3C, ...` and, with `samples_per_cycle=K`,
      also the `K - 1` updates `thin, 2 thin, ...` before each of those, all after `B`,

    until `max_samples` are kept. With `keras.optimizers.schedules.CosineDecayRestarts(
    lr, first_decay_steps=C, t_mul=1.0)` (cycles of `C` updates), the end of a cycle is
    where the learning rate is smallest (Zhang et al., 2020).

    **The burn-in counts the optimizer's updates since its creation**, not the updates of
    this `fit` or of this sampler: the burn-in is over at `optimizer.iterations == B`,
    whenever that was. A fresh optimizer (compile the model with a new `QSGLD` for the
    sampling run, as the examples do) starts at 0, so there the burn-in is the first `B`
    updates of the sampling run. With an optimizer that has already run (a sampler added to
    a later `fit` with the same optimizer), a burn-in of `B` updates from now is
    `PosteriorSampler(burn_in=int(model.optimizer.iterations) + B, burn_in_unit="steps")`;
    `burn_in=1` (epochs) would be over already. This is what makes resuming exact: every
    process agrees on which updates are samples. With `verbose=1` the sampler says where a
    `fit` starts (`starting at update 1200; burn-in until update 1500`).

    **Where.** With `directory=None` the samples are lists of NumPy arrays
    (`model.get_weights()`: every weight, trainable or not) held in memory. With a
    directory, each is a file `sample-<update>.weights.h5` there, written atomically
    (to a temporary name, then renamed), with the model's weights but not the
    optimizer's state; `model.load_weights(path, objects_to_skip=[model.optimizer])`
    (or `posterior_predictive`) reads it back.

    **Resuming.** The update index decides everything, so a run resumed from a backup
    (`keras.callbacks.BackupAndRestore`, or a new process that reloads the model and
    calls `fit` again) always keeps the sample *indices* of an uninterrupted run (the same
    updates, none twice, none lost). The *weights* after the resume point are bitwise
    those of the uninterrupted run only when the batches are too, i.e. with a
    deterministic data order: `fit(..., shuffle=False)`, or a seeded order that the
    resumed script replays from the restored epoch (`examples/fit.py --backup-dir` does,
    with `experiments.datasets.repeat_from_epoch`). With Keras' default
    `shuffle=True` on arrays, Keras does not restore the shuffle order: the resumed chain
    sees other batches and continues as another, equally valid, chain from the restored
    state. At the first epoch of each `fit`, the sampler reads the model's update count `u0` (after
    `BackupAndRestore` has restored it, wherever it is in the callbacks list). With a
    directory it scans the folder: samples at updates `<= u0` are kept and count towards
    `max_samples`; files from updates after `u0` (a run that went further than the backup
    it resumes from) are left out, with a warning, and overwritten when the run reaches
    those updates again. In memory, samples after `u0` are dropped (with a warning).
    Keep one directory per chain.

    **Checks.** At the start of `fit` it warns once when the burn-in does not end before
    the run's last update, or when `max_samples` cannot be reached in the run, naming
    both numbers; and, in one warning naming every reason, when the optimizer does not
    sample `exp(-L / T)` at a fixed temperature `T`: the reasons are
    `QuantizedOptimizer.sampling_caveats()` (a resolution that is not a `Temperature`, a
    rounding other than `"dithered"`, compensation, gradient clipping, an EMA that
    overwrites the weights, and for `QSGLD` a momentum > 0), or no Langevin noise at all
    (any other optimizer). Then the snapshots are a trajectory (e.g. a snapshot ensemble),
    not posterior samples. `QSGLD(lr, resolution=Temperature(T), rounding="dithered")`
    with the defaults otherwise (momentum 0) gives no warning; weight decay is allowed
    (it is the Gaussian prior, see docs/sampling.md).

    Args:
        burn_in: integer >= 0, the updates (or epochs, see `burn_in_unit`) discarded
            before the first sample. Default 0.
        burn_in_unit: `"epochs"` (default) or `"steps"` (optimizer updates). Epochs are
            converted to updates with the number of updates `fit` runs per epoch (the
            batches per epoch, divided by `gradient_accumulation_steps`).
        thin: integer >= 1, the updates between two samples. Default 1 (every update).
        max_samples: integer >= 1, or None (default: no limit): stop keeping samples once
            this many are kept (training goes on).
        directory: None (default: in memory), or a folder for `.weights.h5` files
            (created if needed).
        cycle_length: integer >= 1 or None (default): the updates per cycle of a
            cyclical learning rate; then samples are kept at the end of each cycle.
        samples_per_cycle: integer >= 1, with `cycle_length`: samples per cycle, `thin`
            updates apart and ending with the cycle's last update. Default 1.
            `(samples_per_cycle - 1) * thin` must be less than `cycle_length`.
        verbose: 0 (silent) or 1 (default): one progress line per epoch
            (`PosteriorSampler, epoch 13: 12/50 samples, last after update 585 (update 585)`),
            one when a run resumes with samples already kept, and one when a `fit` starts
            with an optimizer that has already made updates.

    Attributes:
        samples: the samples kept, in update order: lists of NumPy arrays (in memory) or
            file paths (with a directory; before any `fit`, the files in the folder).
        sample_steps: the update index of each sample.

    Raises:
        ValueError: for an argument of the wrong type or out of its range (naming it);
            at the start of `fit`, for a burn-in in epochs when `fit` does not know the
            number of batches per epoch (a dataset of unknown length).

    Examples:
        A sampling run of 6 epochs of 4 updates: after a burn-in of 2 epochs (8 updates),
        the weights after every 5th update.

        >>> import keras, numpy as np, keras_qsgld
        >>> x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        >>> y = (x[:, 0] > 0).astype("int32")
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), keras.layers.Dense(2, activation="softmax")]
        ... )
        >>> model.compile(
        ...     optimizer=keras_qsgld.QSGLD(
        ...         0.05,
        ...         resolution=keras_qsgld.Temperature(1 / 64),
        ...         rounding="dithered",
        ...         seed=0,
        ...     ),
        ...     loss="sparse_categorical_crossentropy",
        ... )
        >>> sampler = keras_qsgld.PosteriorSampler(burn_in=2, thin=5, verbose=0)
        >>> _ = model.fit(
        ...     x, y, batch_size=16, epochs=6, callbacks=[sampler], verbose=0
        ... )
        >>> sampler.sample_steps
        [13, 18, 23]
        >>> probs = keras_qsgld.posterior_predictive(model, sampler, x[:3])
        >>> probs.shape
        (3, 2)

    References:
        - [Welling & Teh, 2011](https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf),
          Bayesian Learning via Stochastic Gradient Langevin Dynamics.
        - [Zhang et al., 2020](https://arxiv.org/abs/1902.03932), Cyclical Stochastic
          Gradient MCMC for Bayesian Deep Learning.
        - [Seok & Cho, 2023](https://arxiv.org/abs/2305.18864), QSGLD.
    """

    def __init__(
        self,
        burn_in=0,
        burn_in_unit="epochs",
        thin=1,
        max_samples=None,
        directory=None,
        cycle_length=None,
        samples_per_cycle=1,
        verbose=1,
    ):
        super().__init__()
        self.burn_in = check_integer(
            "burn_in",
            burn_in,
            minimum=0,
            description="a number of updates or epochs",
        )
        self.burn_in_unit = check_choice(
            "burn_in_unit", burn_in_unit, BURN_IN_UNITS
        )
        self.thin = check_integer(
            "thin", thin, minimum=1, description="a number of updates"
        )
        self.max_samples = (
            None
            if max_samples is None
            else check_integer(
                "max_samples",
                max_samples,
                minimum=1,
                description="a number of samples",
            )
        )
        if directory is not None and not isinstance(
            directory, (str, os.PathLike)
        ):
            raise ValueError(
                f"Argument `directory` must be None or a folder path. Received: directory={directory!r}"
            )
        self.directory = None if directory is None else os.fspath(directory)
        self.cycle_length = (
            None
            if cycle_length is None
            else check_integer(
                "cycle_length",
                cycle_length,
                minimum=1,
                description="a number of updates",
            )
        )
        self.samples_per_cycle = check_integer(
            "samples_per_cycle",
            samples_per_cycle,
            minimum=1,
            description="a number of samples",
        )
        if self.cycle_length is None and self.samples_per_cycle != 1:
            raise ValueError(
                "Argument `samples_per_cycle` needs `cycle_length` (samples are kept per cycle of "
                f"a cyclical learning rate). Received: samples_per_cycle={samples_per_cycle!r} "
                "with cycle_length=None"
            )
        if (
            self.cycle_length is not None
            and (self.samples_per_cycle - 1) * self.thin >= self.cycle_length
        ):
            raise ValueError(
                f"Argument `samples_per_cycle` times `thin` must fit in a cycle: "
                f"(samples_per_cycle - 1) * thin = {(self.samples_per_cycle - 1) * self.thin} must be "
                f"less than cycle_length={self.cycle_length}. Received: "
                f"samples_per_cycle={samples_per_cycle!r}"
            )
        if isinstance(verbose, (bool, np.bool_)) or verbose not in (0, 1):
            raise ValueError(
                f"Argument `verbose` must be 0 or 1. Received: verbose={verbose!r}"
            )
        self.verbose = int(verbose)
        self._kept = {}  # update -> list of arrays (in memory) or path
        self._scanned = False
        self._stale = {}  # update -> path: files from after the restored update
        # In epochs, the burn-in is known in updates once fit gives the epoch length (0 is 0).
        self._burn_in_steps = (
            self.burn_in
            if self.burn_in_unit == "steps" or self.burn_in == 0
            else None
        )
        self._last = (
            None  # the update count at the previous check; None: not started
        )
        self._warned = set()

    # -- config -----------------------------------------------------------------------------
    def get_config(self):
        return {
            "burn_in": self.burn_in,
            "burn_in_unit": self.burn_in_unit,
            "thin": self.thin,
            "max_samples": self.max_samples,
            "directory": self.directory,
            "cycle_length": self.cycle_length,
            "samples_per_cycle": self.samples_per_cycle,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- the samples ------------------------------------------------------------------------
    @property
    def samples(self):
        """The samples kept, in update order: weight lists (in memory) or file paths."""
        self._scan_once()
        return [self._kept[u] for u in sorted(self._kept)]

    @property
    def sample_steps(self):
        """The optimizer update after which each sample of `samples` was taken."""
        self._scan_once()
        return sorted(self._kept)

    def _scan_once(self):
        if self.directory is not None and not self._scanned:
            self._kept = store.scan(self.directory)
            self._scanned = True

    # -- which updates ----------------------------------------------------------------------
    def is_sample_step(self, update):
        """True if the weights after optimizer update `update` (>= 1) are a sample.

        `max_samples` is not taken into account. With `burn_in_unit="epochs"` the burn-in
        is known once `fit` has started (before, this raises a `ValueError`).
        """
        update = check_integer(
            "update", update, minimum=0, description="an update count"
        )
        burn_in = self._require_burn_in()
        if update <= burn_in or update == 0:  # update 0: the initial weights
            return False
        if self.cycle_length is None:
            return (update - burn_in) % self.thin == 0
        before_end = (
            -update
        ) % self.cycle_length  # updates until the end of the cycle
        return (
            before_end % self.thin == 0
            and before_end // self.thin < self.samples_per_cycle
        )

    def _count_between(self, low, high):
        """How many sample updates lie in `(low, high]` (ignoring `max_samples`)."""
        burn_in = self._require_burn_in()
        low = max(low, burn_in)
        if high <= low:
            return 0
        if self.cycle_length is None:
            return (high - burn_in) // self.thin - (low - burn_in) // self.thin
        c = self.cycle_length
        # per sample slot j of a cycle: the updates u = -j * thin (mod c) in (low, high]
        offsets = (j * self.thin for j in range(self.samples_per_cycle))
        return sum((high + d) // c - (low + d) // c for d in offsets)

    def _require_burn_in(self):
        if self._burn_in_steps is None:
            raise ValueError(
                f"PosteriorSampler: the burn-in is {self.burn_in} epochs, and the updates per "
                "epoch are known only once `fit` has started. Received: burn_in_unit='epochs'"
            )
        return self._burn_in_steps

    # -- warnings and messages ----------------------------------------------------------------
    def _warn_once(self, key, message):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=3)

    def _say(self, message, epoch=None):
        if self.verbose:
            where = "" if epoch is None else f", epoch {epoch + 1}"
            print(f"PosteriorSampler{where}: {message}", flush=True)

    def _check_optimizer(self, optimizer):
        inner = unwrap_optimizer(optimizer)
        caveats = langevin.caveats_of(inner)
        if not caveats:
            return
        self._warn_once(
            "optimizer",
            f"PosteriorSampler: the optimizer ({type(inner).__name__}) does not sample "
            f"exp(-L / T) at a fixed temperature T: {'; '.join(caveats)}. The snapshots are a "
            "trajectory (e.g. a snapshot ensemble), not posterior samples. For posterior "
            'samples use keras_qsgld.QSGLD(lr, resolution=keras_qsgld.Temperature(T), rounding="dithered") '
            "with momentum=0 and no compensation, clipping or EMA overwrite.",
        )

    def _updates_after(self, optimizer, epochs):
        """Optimizer updates after `epochs` epochs of `fit`'s batches, or None if `fit` does
        not know its batches per epoch. With gradient accumulation, `iterations` counts
        `batches // gradient_accumulation_steps`."""
        batches = (self.params or {}).get("steps")
        if batches is None:
            return None
        accumulation = (
            getattr(
                unwrap_optimizer(optimizer), "gradient_accumulation_steps", None
            )
            or 1
        )
        return (epochs * batches) // accumulation

    def _resolve_burn_in(self, optimizer):
        if self.burn_in_unit == "steps" or self.burn_in == 0:
            self._burn_in_steps = self.burn_in
            return
        updates = self._updates_after(optimizer, self.burn_in)
        if updates is None:
            raise ValueError(
                f"PosteriorSampler: burn_in={self.burn_in} epochs, but fit does not know how many "
                "batches an epoch has (a dataset of unknown length). Pass burn_in_unit='steps' "
                "with the burn-in in optimizer updates, or give the data a known length "
                "(fit(steps_per_epoch=...), or tf.data.experimental.assert_cardinality). "
                "Received: burn_in_unit='epochs'"
            )
        self._burn_in_steps = updates

    def _check_run_length(self, start, end):
        """Warnings when the run [start, end] of updates keeps fewer samples than asked."""
        burn_in = self._burn_in_steps
        unit = (
            f"{self.burn_in} epochs = " if self.burn_in_unit == "epochs" else ""
        )
        if burn_in >= end:
            self._warn_once(
                "burn_in",
                f"PosteriorSampler: the burn-in ({unit}{burn_in} updates) does not end before the "
                f"run's last update ({end}): this fit keeps no samples. Shorten the burn-in or "
                "train longer.",
            )
            return
        if self._count_between(start, end) == 0:
            self._warn_once(
                "no_sample",
                f"PosteriorSampler: no update of this run ({start + 1} to {end}) is due for a "
                f"sample (burn-in {unit}{burn_in} updates, thin {self.thin}"
                + (
                    f", cycles of {self.cycle_length}"
                    if self.cycle_length is not None
                    else ""
                )
                + "): this fit keeps no samples. Lower thin or train longer.",
            )
            return
        if self.max_samples is None:
            return
        have = sum(1 for u in self._kept if u <= start)
        expected = have + self._count_between(start, end)
        if expected < self.max_samples:
            how = (
                f"every {self.thin} updates"
                if self.cycle_length is None
                else f"{self.samples_per_cycle} per cycle of {self.cycle_length} updates"
            )
            self._warn_once(
                "max_samples",
                f"PosteriorSampler: max_samples={self.max_samples} cannot be reached: the run ends "
                f"at update {end} and keeps {expected} samples ({have} already kept, burn-in "
                f"{unit}{burn_in} updates, {how}). Lower max_samples or thin, or train longer.",
            )

    # -- resuming -------------------------------------------------------------------------------
    def _start(self, model, epoch):
        optimizer = model.optimizer
        if optimizer is None:
            raise ValueError(
                "PosteriorSampler: the model has no optimizer; compile it before fit."
            )
        self._check_optimizer(optimizer)
        self._resolve_burn_in(optimizer)
        start = _to_int(optimizer.iterations)
        self._last = start
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
            store.remove_temporary_files(self.directory)
            found = store.scan(self.directory)
            self._scanned = True
            self._kept = {u: p for u, p in found.items() if u <= start}
            self._stale = {u: p for u, p in found.items() if u > start}
            if self._stale:
                steps = sorted(self._stale)
                self._warn_once(
                    ("stale", start),
                    f"PosteriorSampler: {self.directory} holds {len(steps)} samples from updates "
                    f"after the model's current update {start} (updates {steps[0]}..{steps[-1]}): "
                    "a run resumed from an earlier state, or a new run in an old folder. They are "
                    "left out, and overwritten when this run reaches those updates.",
                )
        else:
            later = sorted(u for u in self._kept if u > start)
            if later:
                self._warn_once(
                    ("dropped", start),
                    f"PosteriorSampler: {len(later)} samples in memory are from updates after the "
                    f"model's current update {start} (updates {later[0]}..{later[-1]}): a run "
                    "resumed from an earlier state, or a new optimizer. They are dropped.",
                )
                for u in later:
                    del self._kept[u]
        if self._kept and start > 0:
            self._say(
                f"resuming at update {start} with {len(self._kept)} samples kept"
            )
        elif start > 0:
            burn_in = self._burn_in_steps
            if burn_in > start:
                where = f"burn-in until update {burn_in}"
            elif burn_in > 0:
                where = f"the burn-in (until update {burn_in}, counted from the optimizer's first update) is over"
            else:
                where = "no burn-in"
            self._say(f"starting at update {start}; {where}")
        epochs = (self.params or {}).get("epochs")
        remaining = (
            None
            if epochs is None
            else self._updates_after(optimizer, max(epochs - epoch, 0))
        )
        if remaining is not None:
            self._check_run_length(start, start + remaining)
        self._check_thin_against_epoch(optimizer)
        self._check_executions(model, optimizer)

    def _check_executions(self, model, optimizer):
        """A warning when `steps_per_execution` moves samples: the batch callbacks run at
        the end of each execution, and Keras starts the executions anew at each epoch, so
        an update due for a sample inside an execution is replaced by the execution's last."""
        per_execution = _steps_per_execution(model)
        per_epoch = self._updates_after(optimizer, 1)
        if (
            per_execution == 1
            or per_epoch is None
            or per_epoch != self.params.get("steps")  # gradient accumulation
        ):
            return
        periods = {"the updates per epoch": per_epoch, "thin": self.thin}
        if self.cycle_length is None:
            periods["the burn-in"] = self._require_burn_in()
        else:
            periods["cycle_length"] = self.cycle_length
        off = [
            f"{name} ({n})" for name, n in periods.items() if n % per_execution
        ]
        if not off:
            return
        self._warn_once(
            ("executions", per_execution, per_epoch),
            f"PosteriorSampler: steps_per_execution={per_execution} does not divide "
            f"{', '.join(off)}: the callbacks run once per execution, the executions start "
            "anew at each epoch, and an update due for a sample inside an execution is "
            "replaced by the last update of that execution (`sample_steps` lists the "
            f"updates kept). Use a steps_per_execution that divides {', '.join(periods)}, "
            "or 1.",
        )

    def _check_thin_against_epoch(self, optimizer):
        """A warning when every sample falls at one point of the epoch: `thin` a multiple of
        the updates per epoch (with more than one batch per epoch; cycles set their own)."""
        per_epoch = self._updates_after(optimizer, 1)
        if (
            self.cycle_length is not None
            or per_epoch is None
            or per_epoch < 2
            or self.thin % per_epoch != 0
        ):
            return
        self._warn_once(
            ("thin", per_epoch),
            f"PosteriorSampler: thin={self.thin} is a multiple of the {per_epoch} updates per "
            "epoch, so every sample is taken at the same point of the epoch. The batches of "
            "an epoch are not independent (each example is seen once), and samples at one "
            "point of the epoch follow another law than samples anywhere. Take a thin that "
            f"is not a multiple of {per_epoch} (e.g. {self.thin + 1}).",
        )

    # -- callback hooks ---------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._last = None  # the update count is read at the first epoch (after any restore)

    def on_epoch_begin(self, epoch, logs=None):
        if self._last is None:
            self._start(self.model, epoch)
        # The index of the last batch seen in this epoch. Keras passes the first batch of
        # an execution (3.10-3.13) or its last (3.14 on): starting one execution before 0
        # makes the count below an upper bound of the updates made either way.
        self._batch = -_steps_per_execution(self._model)
        self._unread = (
            0  # at most this many updates since the count was last read
        )

    def on_train_batch_end(self, batch, logs=None):
        if self._last is None or self._full():
            return
        # Each batch makes at most one update: unless a sample can be due by now, the model
        # is not touched (on JAX, reading it syncs the whole training state into it).
        self._unread += max(batch - self._batch, 1)
        self._batch = batch
        if self._count_between(self._last, self._last + self._unread) == 0:
            return
        self._catch_up()

    def _catch_up(self):
        """Reads the update count and keeps a sample if one is due."""
        model = (
            self.model
        )  # on JAX this syncs the weights from the training state
        now = _to_int(model.optimizer.iterations)
        self._unread = 0
        if now <= self._last:
            return
        due = [
            u for u in range(self._last + 1, now + 1) if self.is_sample_step(u)
        ]
        self._last = now
        if not due or self._full():
            return
        if due[-1] != now or len(due) > 1:
            self._warn_once(
                "skipped",
                f"PosteriorSampler: updates {due} were due for samples, but the callback ran only "
                f"after update {now}; the weights of update {now} are kept instead. Either fit "
                "runs several updates per callback (steps_per_execution > 1: use 1, or a thin "
                "that is a multiple of it), or TensorFlow counted an update that no batch "
                "callback saw (a dataset of unknown length, whose last empty step at the end of "
                "an epoch still advances optimizer.iterations: give the dataset a known length "
                "with dataset.apply(tf.data.experimental.assert_cardinality(n))).",
            )
        self._keep(model, now)

    def on_epoch_end(self, epoch, logs=None):
        if self._last is None:
            return
        # Once an epoch, the true count: updates no batch callback saw are caught up here.
        self._catch_up()
        if not self.verbose:
            return
        now = self._last
        burn_in = self._burn_in_steps
        total = f"/{self.max_samples}" if self.max_samples is not None else ""
        if now <= burn_in:
            self._say(
                f"burn-in, update {now} of {burn_in}; {len(self._kept)}{total} samples",
                epoch,
            )
        else:
            last = max(self._kept) if self._kept else None
            where = f", last after update {last}" if last is not None else ""
            self._say(
                f"{len(self._kept)}{total} samples{where} (update {now})", epoch
            )

    def on_train_end(self, logs=None):
        self._last = None

    # -- keeping one sample -------------------------------------------------------------------------
    def _full(self):
        return (
            self.max_samples is not None and len(self._kept) >= self.max_samples
        )

    def _keep(self, model, update):
        if self.directory is None:
            self._kept[update] = store.keep_in_memory(model)
            return
        self._kept[update] = store.write_file(model, self.directory, update)
        self._stale.pop(update, None)
