"""Posterior samples from a Langevin run, and predictions averaged over them.

- `PosteriorSampler`: a `keras.callbacks.Callback` that keeps weight snapshots of a
  sampling run after a burn-in, every `thin` optimizer updates (or at the end of each cycle
  of a cyclical learning rate), in memory or as `.weights.h5` files in a folder. It counts
  optimizer updates (`optimizer.iterations`), so a resumed run keeps the sample indices of
  an uninterrupted run: it neither repeats nor loses samples.
- `posterior_predictive`: the posterior predictive of a model over such samples: the mean
  of the predicted class probabilities (classification), or the mean and variance of the
  predictions (regression).
- `to_inference_data`, `convergence_summary`: the samples of several chains as an
  `arviz.InferenceData`, and the split R-hat and effective sample sizes ArviZ computes
  from it.

A sampling run is QSGLD at a fixed temperature with the dithered rounding and no momentum,
whose rounding error is exactly SGLD's Langevin noise (see `keras_qsgld.Temperature`; with
momentum the chain is hotter than `T` unless `lr * curvature << (1 - momentum)**2`, see
docs/sampling.md):

```python
n_train = 1437
model.compile(
    optimizer=keras_qsgld.QSGLD(0.05, resolution=keras_qsgld.Temperature(1 / n_train),
                                rounding="dithered", seed=0),
    loss="sparse_categorical_crossentropy",
)
sampler = keras_qsgld.PosteriorSampler(burn_in=5, thin=45, max_samples=50)
model.fit(train, epochs=55, callbacks=[sampler])
probs = keras_qsgld.posterior_predictive(model, sampler.samples, x_test)
keras_qsgld.calibration.calibration_report(y_test, probs)
```

Four modules: `sampler` (which updates are samples), `store` (where they live: memory or
a folder), `predictive` (the average over them) and `diagnostics` (R-hat and effective
sample sizes over several chains, through ArviZ, imported only when called). Only `keras.ops` and NumPy are used: it
runs on every Keras backend. docs/sampling.md is the user guide (temperature, priors,
burn-in, thinning, several chains, cyclical learning rates, calibration).
"""

from keras_qsgld.sampling.diagnostics import (
    convergence_summary,
    to_inference_data,
)
from keras_qsgld.sampling.predictive import TASKS, posterior_predictive
from keras_qsgld.sampling.sampler import BURN_IN_UNITS, PosteriorSampler
from keras_qsgld.sampling.store import sample_file_name

__all__ = [
    "PosteriorSampler",
    "posterior_predictive",
    "to_inference_data",
    "convergence_summary",
    "sample_file_name",
    "BURN_IN_UNITS",
    "TASKS",
]
