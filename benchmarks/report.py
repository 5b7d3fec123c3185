"""Assembles `BENCHMARKS.md` from the tables the benchmark scripts wrote.

    python -m benchmarks.report [--published benchmarks/results] [--output BENCHMARKS.md]

Every table is quoted verbatim from `<published>/<script>/<table>.md`, which the script
wrote together with the exact command and the machine; this file adds only the prose
around them. A table that was not produced is listed as missing, never filled in.
"""

import os

from benchmarks import common
from experiments import cli

HEADER = """# Benchmarks and noise diagnostics

Everything below was produced by the scripts in `benchmarks/` and assembled by
`python -m benchmarks.report`; each table states the command that produced it and the
machine it ran on. No number in this file is typed by hand: to update a table, rerun its
command (each script resumes an interrupted run; `--tables NAME --force` recomputes one
table) and then `python -m benchmarks.report`.

Every script has `--help`, a `--quick` mode (tiny sizes; `tests/scripts/test_benchmarks.py` runs it in
CI) and `--seeds`, `--output-dir`, `--tables`, `--force`. Raw per-run records are kept as
`<table>.jsonl` next to the tables (not committed).

**Machine caveat.** The CPU tables were measured on a small shared development machine
(2 logical CPUs, TensorFlow limited to one intra-op thread, other jobs running at the same
time). Timings there are noisy: the optimizers are interleaved round-robin and medians are
reported so that background load hits all of them alike, but absolute times are not
representative of an unloaded machine, and the ratios are the meaningful part.
"""

SECTIONS = [
    (
        "Speed",
        [
            "speed_compiled/apply",
            "speed_compiled/step",
            "speed_depth_first/apply",
            "speed_depth_first/step",
            "speed/apply",
            "speed/step",
            "speed/breakdown",
            "speed_torch/apply",
            "speed_torch/step",
            "speed_torch/breakdown",
            "speed_torch_eager/apply",
            "speed_xeon/apply",
            "speed_xeon/breakdown",
            "speed_xeon/xla_code",
            "speed_0.1.0/apply",
            "speed_0.1.0/step",
            "speed_0.1.0/breakdown",
        ],
        """What one `optimizer.apply` costs over the trainable variables of a large and a small model,
per backend and mode, next to a memory-traffic floor: the parameter-sized tensors an ideal
fused update must read and write. Plain SGD reads the gradient and the weights and writes
the weights (3 tensors); QSGLD reads the gradient a second time for the per-tensor norm of
its compensation term (4 tensors, so 4/3 of SGD); Adam moves 7 (7/3). The
"Gaussian SGLD" row is the noise QSGLD replaces, written with `keras.random.normal` and a
`SeedGenerator` (`benchmarks/optimizers.py: GaussianSGLD`). Then whole training steps of a
19M-parameter MLP, where the optimizer is a visible share, and a breakdown of QSGLD's update.

The tables, in order: the compiled modes of TensorFlow and JAX measured alone on a quiet
machine (`speed_compiled`: the figures to read); the same with XLA's depth-first CPU
scheduler (`speed_depth_first`, `XLA_FLAGS` in the machine line); every mode of TensorFlow and JAX, both
models, measured while other jobs ran on the machine (`speed`: the ratios are noisier,
most of all on JAX); PyTorch (`speed_torch`); the XLA update on an Intel Xeon with AVX-512
(`speed_xeon`); and the same tables from release 0.1.0 (`speed_0.1.0`, TensorFlow only:
the "before").

What the tables show (CPU; the GPU picture may differ, see the last section):

* **Under XLA, QSGLD's update is at its traffic floor**: 1.36x SGD on TensorFlow (floor 1.33;
  3.47x in 0.1.0) and 1.26x under `jax.jit`; QAdam 1.21x Adam on TensorFlow (6.1x SGD in
  0.1.0, 2.2x Adam) and 1.28x on JAX. What changed: the per-tensor norm of the compensation
  is a sum of squares over rows of 32, then over the rows, with an optimization barrier
  between the levels (`keras_qsgld.quantization.sum_of_squares`); XLA's CPU backend had
  turned each large reduction into a serial chain of scalar adds (the breakdown's "one
  reduction each" row against "QSGLD's two-level sum").
* **Without XLA, TensorFlow runs the update XLA-compiled inside the graph**
  (`jit_compile=True`, the default): graph-mode QSGLD costs 0.69x graph SGD on ResNet50
  (but 1.6x on the small CIFAR ResNet-50, where the compiled call's per-variable overhead
  shows), and in eager loops less than Keras' op-by-op SGD; the op-by-op path
  (`jit_compile=False`) stays 3.6-11.5x SGD.
* **The random roundings cost more than 10 % over QSGLD**: dithered 1.14x and stochastic
  1.09x of QSGLD under TensorFlow XLA, 1.36x and 1.07x under JAX (the counter-based hash
  that makes the draws the same on every backend). Gaussian SGLD's `keras.random.normal` is
  far dearer on every backend.
* **Whole steps**: under TensorFlow XLA QSGLD adds 15 % to SGD's step and QAdam 10 % to
  Adam's; on TensorFlow without XLA they cost no more than SGD and Adam (JAX eager: 2.3x
  and 1.7x). Under `jax.jit` QSGLD adds 51 % and QAdam 12 %, although QSGLD's update alone
  costs 1.26x SGD's (+2.7 ms on the apply table's ResNet50). The cause is the order XLA's
  CPU compiler gives the step. By default it is breadth-first, and QSGLD's compensation
  puts a few small operations (the norm, the scale) between a gradient and its update. In
  that order, a dump of the step (`XLA_FLAGS="--xla_dump_to=DIR --xla_dump_hlo_as_text"`)
  shows each layer's update running after two more layers' gradients (16 MB each), when
  its own has likely left the cache.
* **With XLA's depth-first scheduler** (`speed_depth_first`; every optimizer run with
  `XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`, a process-wide flag;
  the weights are bitwise the same, tested on JAX) each update follows its gradient.
  - Whole step: QSGLD adds 5 % under TensorFlow XLA (1.053x) and 7 % under `jax.jit`;
    QAdam 7 % and 8 %.
  - The update alone: 1.34x and 1.37x SGD, against 1.36x and 1.26x in `speed_compiled`
    (separate runs: compare ratios, not times).
  - Against the targets (QSGLD within 5 %, QAdam within 10 %): QAdam's is met under both
    with this scheduler. QSGLD's is met on TensorFlow without XLA; under XLA it is at the
    line (1.053x) and under `jax.jit` just over it (1.07x). With XLA's default scheduler
    neither compiled backend meets either target (QAdam 1.10x and 1.12x).
  - Measured on 2 cores only; on many cores the default order's concurrency may be worth
    more, so the README presents the flag as something to time on one's own model.
* **The XLA update depends on the host.** On an Intel Xeon with AVX-512 (`speed_xeon`, 2
  cores) QSGLD's update costs 1.89x SGD under TensorFlow XLA and 1.95x under `jax.jit`,
  against 1.36x and 1.26x on the AMD EPYC of `speed_compiled`; QAdam 1.39x and 1.29x Adam.
  Where it goes, from that run's breakdown: the rounded update alone costs 1.02x and 1.05x
  SGD (the rounding is not compute-bound on that host) and quantization without the
  compensation (`qsgd`) 1.17x and 1.09x. The rest is the per-tensor norm of the
  compensation: the norms alone cost 1.2x (TensorFlow) and 1.26x (JAX) an SGD update in
  QSGLD's two-level sum, 2.17x and 0.64x as one plain reduction each. By bytes, a pass that
  only reads the gradients should cost a third of SGD's update (the 1.33x floor); XLA's
  reductions run at a fraction of the elementwise bandwidth on this host, and the norm of a
  tensor must be complete before any of its elements is updated, so it cannot be fused into
  the update's pass. The 1.4x target is not met on this host; we found no formulation XLA
  reduces faster there (the plain reduction is faster on JAX alone and was not adopted: it
  was not measured on the EPYC, where the two-level sum was tuned).
  Why the reduction is slow, from the code XLA generates (`benchmarks.xla_code`, same host,
  `jax.jit`, one variable of 2.36M elements; the table below the breakdown): XLA vectorizes
  the two-level sum across rows, 8 rows to a 256-bit register, and builds those registers
  one element at a time: 192 `vinsertps` (scalar-into-vector inserts) and 64 scalar loads,
  one per element of the 8 rows of 32 an iteration sums, among the kernel's 398
  instructions and 31 FMAs. It emits almost no 512-bit code (6 of the 398 instructions touch
  zmm registers). On Intel cores these inserts issue on one
  execution port, one per cycle, so the norm costs about a cycle per element however fast
  memory is; that matches the breakdown, where the norms alone cost 1.2-1.26x a whole SGD
  update that moves three times the bytes. The rounded update is not the problem: it is one
  loop (`select_add_fusion`) with its `floor` vectorized (`vroundps` on 256-bit registers),
  and it costs 1.02-1.05x SGD. AMD's cores issue such inserts on more ports, which is
  consistent with the EPYC's 1.26x, but no EPYC was at hand to dump its code.
* **PyTorch** (`speed_torch`: an Intel Xeon with AVX-512, 2 cores, PyTorch 2.13 CPU; each
  candidate compiled in a function of its own, from a fresh Inductor cache).
  - Eager, Keras' default on PyTorch: the update runs in direct, in-place torch ops over
    all variables at once (`keras_qsgld/backend/torch`, at most 20 operator calls per
    variable, tested). QSGLD costs 4.48x Keras' eager SGD on ResNet50 and 3.58x on the
    CIFAR ResNet-50 (release 0.2: 36-50x); Keras' SGD is one fused `torch._foreach` update,
    QSGLD's norm, compensation and rounding take several passes over each tensor. QAdam
    costs 0.74x and 0.91x Keras' eager Adam. The random roundings' counter-based hash (the
    same draws on every backend) is some fifteen integer operations per element; eagerly
    the update draws and rounds in one small kernel that Inductor compiles on first use
    (op by op, each a pass over the tensor, it was 1.87x and 1.35x QSGLD). In this table's
    run that kernel was called through `torch.compile`: dithered 1.37x QSGLD on ResNet50,
    1.13x on the CIFAR ResNet-50 and 1.16x on the MLP. Timed inside the update (a side
    script), the kernel cost 142 us per chunk of 2^18 elements, against about 75 us for the
    nearest rounding's four tensor operations, and some 35 us of each call were Dynamo's
    guards and wrappers, in about 100 calls an update. On a CPU the kernel is now compiled
    by `torch._inductor.standalone_compile` and called without them (7 us a call): in
    `speed_torch_eager` (a later eager-only run, same host, 21 rounds) dithered costs
    1.19x QSGLD on ResNet50, 1.10x on the CIFAR ResNet-50 and 1.03x on the MLP (from the
    medians; stochastic 1.17x, 1.13x, 1.11x), within the 1.3x target, and QSGLD 5.08x SGD
    on ResNet50 (4.48x in this table: the ratio moves with the host's load, SGD's update
    being the one bound by memory). The first update with a random rounding compiles:
    1.7 s there, 9.6 s for the first kernel of the process (Inductor's start). Inductor's
    code for dynamic sizes ran on one thread; it now lets OpenMP use both (82 against
    174 us per 2^18 elements, measured apart). On the small MLP (6 variables) QSGLD's eager
    update is 8.3x SGD's, 1.3 ms: per-call overhead.
  - Compiled (`jit_compile=True`, `torch.compile`): QSGLD 1.51x compiled SGD on ResNet50,
    0.96x on the CIFAR ResNet-50 and 0.74x on the MLP; dithered 2.21x, 1.04x and 1.41x
    (1.46x, 1.08x and 1.9x QSGLD). QAdam is 2.72x compiled Adam on ResNet50 (1.31x and 1.28x
    on the others), about twice its traffic floor: Inductor's code for it is not at the
    floor there. The first call compiles QSGLD's ResNet50 update in 35 s against SGD's
    10 s (32 s against 9 s on the CIFAR model), and the dithered update in 68 s and 59 s.
    That was 461 s and 333 s before the random roundings' keys and first hash round became
    operators of their own: Inductor inlines an elementwise result into each reader and
    lowers it again for each read, and each of the hash's shift-and-xor steps reads its
    input twice, so the three chained hashes of every kernel were lowered hundreds of times
    over (`keras_qsgld/backend/torch/draws.py`; the compiled update also runs faster, 2.21x
    SGD against 3.03x). The 2x-SGD target for the first call is not met: what is left is
    Inductor's fusion search over some 15 operations per variable, against SGD's one
    `torch._foreach_add_` for all. Compiled code is cached on disk, so a later process on
    the same machine compiles faster.
  - Whole training steps of the 19M-parameter MLP: compiled, QSGLD 0.99x SGD and QAdam 3.09x
    Adam (a noisy row: by their minima 68 and 38 ms, 1.8x); eager, QSGLD 1.59x SGD and
    QAdam 0.58x Keras' eager Adam.""",
    ),
    (
        "Quality on offline data",
        [
            "quality/lr",
            "quality/quality",
            "quality/ingredients",
            "quality/ablation",
        ],
        """scikit-learn digits (MLP) and MNIST-1D (1-D CNN), several seeds, the same epoch budget for
every optimizer. The learning rate of each optimizer is chosen on a separate tuning seed by
the lowest final training loss (first table); no test data is used to choose it. The
ingredients table puts SGD, quantized SGD (QSGLD with the compensation off), QSGLD and
Gaussian SGLD at the same learning rate, so that each difference isolates one ingredient.

What the tables show:

* **No gain from QSGLD on these data sets.** On digits every optimizer ends within about a
  point of test accuracy of the others, and SGD at its own rate is slightly above QSGLD. On
  MNIST-1D QSGLD is level with SGD and clearly below SGD with momentum, Adam, AdamW and QAdam
  (QAdam has the highest mean there, on par with Adam and AdamW). Nothing like the paper's
  reported CIFAR-100 gain over SGD shows here; CIFAR itself was not run (see the GPU section).
* **The quantization noise does nothing measurable at the paper's resolution**: quantized SGD
  against SGD, and Gaussian SGLD of the same variance against SGD, differ by less than the
  seed-to-seed spread (large p-values). The per-step noise `Qp^-1 / sqrt(12)` with
  `Qp` of order 2^19 is tiny next to the steps.
* **The compensation term is the ingredient that acts.** It lowers the training loss
  (digits, at QSGLD's rate, with no change in test accuracy), and at SGD's larger chosen rate
  on digits it makes QSGLD diverge: it adds a normalized step of length up to `lr` per
  tensor, which is why QSGLD's chosen rate is lower than SGD's there. The ablations agree:
  the resolution `eta` from 2^10 to 2^19 and the rounding mode make no difference, while
  switching the compensation off raises the final training loss and a longer compensation
  (tau0 = 0.5 of the budget) lowers it.
* One MNIST-1D run with stochastic rounding failed to train (chance accuracy), hence that
  row's large spread; at the chosen rate MNIST-1D training is close to unstable for all
  SGD-type optimizers (see the rate 1 column of the first table).""",
    ),
    (
        "Global optimization (the Langevin claim)",
        ["global_opt/global"],
        """Rastrigin, Ackley and Styblinski-Tang in 2, 10 and 100 dimensions, from the same random starts
for every method, with the exact gradient. Gaussian SGLD runs at the temperature
`Qp^-2 / (24 lr)` that the white-noise hypothesis assigns to QSGLD with the same `Qp`
(fixed or increasing), so any difference between the two rows is the difference between
rounding noise and the Gaussian noise it is supposed to mimic. Note the "zero increments"
column: QSGLD's rounding can only move a coordinate when its step is at least half a grid
cell, and the white-noise hypothesis needs steps of about a cell or more; at temperature
`T = Qp^-2 / (24 lr)` a step `lr |g|` spans `Qp lr |g|` cells, so the hypothesis can only
hold where `T` is below about `lr g^2 / 24`.

What the table shows:

* **Deterministic QSGLD (the paper's rounding) is not Langevin dynamics at a temperature
  high enough to matter.** At the hot setting (eta 2) almost every increment is exactly zero:
  the steps are below half a cell, the iterates freeze where the first steps left them,
  and QSGLD (fixed or increasing `Qp`, with or without compensation) ends worse than plain
  GD on every function and dimension. At the cold setting (eta 32) it ends close to GD.
* **Dithered rounding behaves like Gaussian SGLD of the same variance** in every row (its
  error is uniform by construction), and so does stochastic rounding where its steps are
  large enough. With the annealed hot schedule, both reach the global basin in far more
  2-D Ackley runs than GD, Adam or deterministic QSGLD, and end lower on Rastrigin in every
  dimension; on Styblinski-Tang and on higher-dimensional Ackley the noise does not help at
  this schedule.
* **The compensation term changes nothing here**: its per-tensor step `s lr` is far below a
  cell, so `qsgld_anneal` and `qsgld_anneal_comp` coincide.""",
    ),
    (
        "Noise diagnostics",
        [
            "diagnostics/whitenoise",
            "diagnostics_mnist1d/whitenoise",
            "diagnostics_mnist1d_lr0.001/whitenoise",
            "diagnostics/stationary",
            "double_well/double_well",
        ],
        """The white-noise hypothesis (the rounding error is i.i.d. uniform with variance 1/12 cell^2)
measured during real training, per layer and epoch, and the stationary variance of a 1-D
quadratic against the formula `Qp^-2 / (12 (2 lr a - lr^2 a^2))` (paper.md s8, checks 1, 2
and 8). The floor rounding of the authors' code has a mean error of -1/2 cell, hence a
drift of `-Qp^-1 / 2` per coordinate and step; the drift column compares the accumulated
realised drift with that prediction. The last table is the lead's double-well check
(`benchmarks/langevin/double_well.py`): the histogram of fixed-`Qp` iterates against the Gibbs
density.

What the tables show:

* **At the learning rates of the first two tables the hypothesis holds wherever the scaled step `y` is not
  exactly zero.** With the paper's `Qp` (2^18 to 2^20) the steps span many cells in every
  layer (median `|y|` well above one cell, also after the compensation has switched off),
  and where `y != 0` the KS distance to the uniform law is small and the variance is close
  to 1/12 for nearest and floor rounding alike; the lag-1 autocorrelation of nearest
  rounding is near zero.
* **It fails on the coordinates whose gradient is exactly zero** (weights of always-blank
  digit pixels, dead ReLU units): there `y = 0`, nearest and floor leave the weight
  untouched (no noise at all), and that share of frozen coordinates is what drives the
  pooled KS distance and variance away from the uniform law. Dithered rounding keeps
  adding uniform noise there and passes every check.
* **With ten times smaller steps it starts to fail** (MNIST-1D at lr 0.001): once the
  compensation is off, the median `|y|` of the kernels falls below one cell, nearest
  rounding leaves a large share of the increments exactly zero (its dead zone; close to half
  in the worst layer), and the error variance drops below 1/12 (floor: rises above it).
  Dithered rounding stays uniform there too.
* **Floor rounding drifts as predicted** on coordinates that move (mean error -1/2 cell);
  the accumulated drift falls short of `-1/2 sum 1/Qp` in proportion to the coordinates
  that never move.
* **On the 1-D quadratic with the exact gradient, the stationary-variance formula fails
  for nearest and floor rounding**: once `lr a x` is below half a cell every increment is
  zero and the chains freeze (zero increments: all), so the spread is wherever they
  stopped. With gradient noise that spreads `y` over a few cells, every rounding matches the
  formula, and floor's mean matches `-1/2 Qp^-1 / (lr a)`. Dithered rounding matches it in
  every case; stochastic rounding does not without gradient noise.""",
    ),
    (
        "Posterior sampling",
        [
            "sampling/toy2d",
            "sampling/lr",
            "sampling/posterior",
            "sampling/significance",
            "sampling/signatures",
        ],
        """Does `QSGLD(lr, resolution=Temperature(T), rounding="dithered")` sample, and does the
average over its samples predict better? `benchmarks/sampling/` (on JAX: the chains
dominate and compile faster there) compares, on two 2-D targets with exact densities and on
digits (MLP) and MNIST-1D (1-D CNN) over five seeds at the same epoch budget: SGD's final
weights, a deep ensemble of as many SGD runs as there are samples, the no-noise chain (SGD
continued at the chain's rate with the same snapshots: a snapshot ensemble), dithered QSGLD
at `T = 1/N` and colder, Gaussian SGLD at the same `T`, and QSGLD with the paper's rounding
at the same `Qp`. Chains start from each seed's SGD solution (`warm`) or from its random
initialisation (`scratch`, with SGD's epochs as extra burn-in), at the largest learning rate
where every temperature is stable (`lr` table) and, warm, at the next smaller one.

What the tables show:

* **Dithered QSGLD samples as Gaussian SGLD does.** On the 2-D targets its total-variation
  and KS distances to the exact density match Gaussian SGLD's at every learning rate (at the
  smallest rate both are within a few thousandths of the i.i.d. floor, and the mixture's
  mode masses 0.5 / 0.3 / 0.2 are recovered); at larger rates both carry a discretization
  bias, QSGLD's larger at the largest rate (TV 0.071 against 0.053 on the banana, 0.091
  against 0.064 on the mixture). In the networks, its weight drift over the sampling phase
  is about 0.9 to 1.1 times the free-diffusion prediction `sqrt(P 2 lr T steps)`, as
  Gaussian SGLD's is, and its snapshots are about as diverse (single-snapshot NLL minus the
  NLL of their average).
* **The paper's rounding at the same `Qp` does not sample**: at `T = 1/N` 99.6 to 100 % of
  its increments are exactly zero and the network chains drift 2 to 10 % of the prediction
  in the sampling phase (colder, where the steps come nearer a grid cell: 88 to 100 % zeros,
  drift up to about the prediction); the 2-D chains freeze where they start (TV 0.68 to
  0.94); from scratch at `T = 1/N` it does not even train on MNIST-1D (12 % test accuracy).
* **The posterior average does not beat SGD at the Bayesian temperature `T = 1/N`.** On
  digits the `T = 1/N` chains (dithered and Gaussian alike) are worse than SGD in NLL, ECE
  and Brier score (paired p < 0.05 in every setting), and level at `T = 0.01/N`. On MNIST-1D
  `T = 1/N` is level with SGD in NLL with a higher ECE (underconfident: accuracy above
  confidence in the reliability diagram), and the cold posterior `T = 0.1/N` from scratch
  improves the NLL over SGD and over the no-noise chain (paired p = 0.036 and 3.7e-04;
  Gaussian SGLD alike, 0.033 and 0.0023; warm at rate 0.3, p = 0.041 against SGD), a
  cold-posterior effect as in Wenzel et al. (2020). The snapshot ensemble without noise is
  level with SGD everywhere.
* **A deep ensemble of 10 SGD runs is the best predictor on MNIST-1D** (NLL 0.162 against
  0.195 for the best chain and 0.271 for SGD), at 10 times SGD's epochs against 1.7 times for a
  chain. On digits nothing beats SGD by more than the seed spread.
* **Stability**: the chains are stable up to the rate where SGD itself is (1 on digits,
  0.3 on MNIST-1D); at rate 1 MNIST-1D diverges with and without noise.""",
    ),
    (
        "Sampling cost",
        [
            "langevin_cost/linear_jax",
            "langevin_cost/logistic_jax",
            "langevin_cost/linear_torch",
            "langevin_cost/logistic_torch",
        ],
        """What an effective sample costs: keras-qsgld's sampling recipe (`model.fit` with a
`PosteriorSampler`, and on JAX the fast recipe with `steps_per_execution=thin`) against
blackjax's SGLD on JAX and posteriors' SGLD on PyTorch, on a Bayesian linear regression
(diabetes, closed-form posterior) and a Bayesian logistic regression (breast cancer, NUTS
reference), all at the same step, minibatches, starting points and number of updates
(`python -m benchmarks.langevin.cost`, an Intel Xeon, 2 cores).

What the tables show:

* **The chains are alike; the cost per update is not.** The samplers make the same update
  on the same minibatches from the same starting points, and their chains reach effective
  sample sizes of one order (73 against 75 on JAX, 58 against 90 on PyTorch, linear) and
  variance ratios alike; keras-qsgld's largest error of a posterior mean, 0.17-0.22
  posterior sds against the peers' 0.04, is within two Monte-Carlo standard errors
  (`1 / sqrt(ESS)`, about 0.12 sd) and was not investigated further. The cost per effective
  sample then follows the cost per update. On JAX keras-qsgld's fast recipe costs 66-68 us per update against
  blackjax's 18-20 us (3.3-3.8x), and `fit` with one execution per update 97-102 us. The
  difference is Keras' `fit` loop (its train step, its callbacks, its data adapter) against
  a jitted `lax.scan` over the whole chain: QSGLD's update itself is not where the time goes.
* **On PyTorch** Keras runs `fit` one step at a time, eagerly, and refuses
  `steps_per_execution > 1`: 1,365-1,467 us per update against posteriors' Python loop of
  `torch.func` steps at 326-338 us (4.0-4.5x).
* **The logistic regression has not mixed in 40,000 updates** (ESS 6, variance ratios 0.5
  to 1.5 for every sampler alike): its softest direction needs far more updates at this
  step; compare the cost per update there.""",
    ),
    (
        "GPU",
        [
            "gpu/speed/apply",
            "gpu/speed/breakdown",
            "gpu/speed/step",
            "gpu/cifar/cifar",
        ],
        """`benchmarks/gpu.sh` runs the speed tables at GPU scale (both models, every mode of every
installed backend, whole steps of the 19M-parameter MLP, every optimizer) and a short run of
the paper's CIFAR protocol with QSGLD and SGD
(`benchmarks/cifar.py`; real CIFAR needs internet or `--data-dir`). Its tables appear here
once it has been run on a GPU machine and `benchmarks/results/gpu/` holds them.""",
    ),
]


def table_text(published, table, output):
    path = os.path.join(published, f"{table}.md")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().rstrip() + "\n"
    base = os.path.relpath(
        os.path.dirname(os.path.abspath(path)),
        os.path.dirname(os.path.abspath(output)),
    )
    # Images are written next to the table: point their links at that folder.
    lines = []
    for line in text.splitlines():
        if (
            line.startswith("![")
            and "](" in line
            and "/" not in line.split("](", 1)[1]
        ):
            name, target = line[2:].split("](", 1)
            line = f"![{name}]({base}/{target}"
        lines.append(line)
    return "\n".join(lines).replace("### ", "#### ", 1) + "\n"


def build(published, output):
    parts = [HEADER]
    missing = []
    for title, tables, intro in SECTIONS:
        parts.append(f"## {title}\n\n{intro}\n")
        found = False
        for table in tables:
            text = table_text(published, table, output)
            if text is None:
                missing.append(table)
                continue
            found = True
            parts.append(text)
        if not found:
            if tables[0].startswith("gpu/"):
                parts.append(
                    "_Not run yet: no GPU machine was available when these tables were made. "
                    "The script is ready: `benchmarks/gpu.sh --data-dir DIR`._\n"
                )
            else:
                parts.append(
                    "_No table published yet: run the section's script without `--quick`._\n"
                )
    with open(output, "w") as f:
        f.write("\n".join(parts))
    return output, missing


def main(argv=None):
    p = cli.ArgumentParser(
        description="Assemble BENCHMARKS.md from the published tables."
    )
    p.add_argument(
        "--published",
        default="benchmarks/results",
        help="folder of <script>/<table>.md",
    )
    p.add_argument("--output", default="BENCHMARKS.md")
    args = p.parse_args(argv)
    if not os.path.isdir(args.published):
        raise cli.UserError(
            f"Argument `--published` must be a folder of tables. Received: {args.published!r}"
        )
    output, missing = build(args.published, args.output)
    print(
        f"wrote {output}"
        + (f"; missing tables: {', '.join(missing)}" if missing else "")
    )
    return output


if __name__ == "__main__":
    common.run_benchmark(main, resumable=False)
