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
`experiments.datasets` and `experiments.models`.

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

The modules: `runs` (one data set's setting, SGD, the deep ensemble, one chain), `tables` (the
lr, posterior, significance and signatures tables), `__main__` (the command); the 2-D check is
`benchmarks.langevin.toy2d`.
"""
