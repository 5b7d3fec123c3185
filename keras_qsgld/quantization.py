"""The QSGLD maths as pure `keras.ops` functions, shared by every optimizer.

Kept apart from the optimizer classes (as optax keeps its transformations) so the
formula can be tested on its own against a NumPy reference.
"""

import keras
from keras import ops

from keras_qsgld.backend.ops import optimization_barrier

ROUNDING_MODES = ("nearest", "floor", "stochastic", "dithered")
"""The values of the optimizers' `rounding`: `"nearest"` (the paper's `floor(y + 1/2)`),
`"floor"` (the authors' code), `"stochastic"` (`floor(y + u)`) and `"dithered"` (the
subtractive dither `floor(y + u + 1/2) - u`, whose error is exactly uniform), `u ~ U[0, 1)`."""

RANDOM_ROUNDING_MODES = ("stochastic", "dithered")
"""The rounding modes that draw a uniform `u ~ U[0, 1)` of the shape of the step (they take
the optimizers' `seed`)."""


def floor(y):
    """`ops.floor`, in the dtype of `y`.

    Keras 3.15 computes `ops.floor` of float64 in float32 on JAX (x64 mode) and torch, which
    loses every integer beyond 2**24; for float64 the floor is built from `ops.trunc`, which
    keeps the dtype on every backend.
    """
    if keras.backend.standardize_dtype(y.dtype) == "float64":
        t = ops.trunc(y)
        return ops.where(ops.less(y, t), ops.subtract(t, 1.0), t)
    return ops.floor(y)


def quantize(y, rounding="nearest", noise=None):
    """Rounds `y` to the integer grid; the result minus `y` is the quantization noise.

    - `"nearest"`: the paper's Gauss bracket `floor(y + 1/2)` (round half up; note that
      `ops.round` rounds half to even, which is not it). The error lies in [-1/2, 1/2), but
      is 0 for every `|y| < 1/2`: a dead zone where no noise is left.
    - `"floor"`: what the authors' released code runs; error in (-1, 0], mean -1/2.
    - `"stochastic"`: unbiased stochastic rounding `floor(y + u)`, `u = noise ~ U[0, 1)`.
      On the grid, `E[Q(y)] = y`, error variance `f (1 - f)` for the fractional part `f`.
    - `"dithered"`: subtractive dither `floor(y + u + 1/2) - u` with `u = noise - 1/2 ~
      U[-1/2, 1/2)`. Not on the grid, but the error is exactly uniform on [-1/2, 1/2),
      independent of `y`, variance 1/12: the white-noise hypothesis by construction.

    Args:
        y: the values, in grid units.
        rounding: one of `ROUNDING_MODES`.
        noise: for the random modes, uniform draws in [0, 1) of the shape of `y`.
    """
    if rounding == "nearest":
        # floor(y + 1/2) exactly. Computing y + 0.5 first would round: 0.5 - ulp gives 1, and
        # odd integers in [2**23, 2**24) (float32) tie to the even neighbour above.
        f = floor(y)
        return ops.where(
            ops.greater_equal(ops.subtract(y, f), 0.5), ops.add(f, 1.0), f
        )
    if rounding == "floor":
        return floor(y)
    if rounding in RANDOM_ROUNDING_MODES:
        if noise is None:
            raise ValueError(
                f"rounding={rounding!r} needs `noise`, uniform draws in [0, 1). Received: noise=None"
            )
        if rounding == "stochastic":
            return floor(ops.add(y, noise))
        # floor(y + d + 1/2) - d with d = noise - 1/2, without rounding the extra 1/2 in.
        return ops.subtract(floor(ops.add(y, noise)), ops.subtract(noise, 0.5))
    raise ValueError(
        f"Argument `rounding` must be one of {ROUNDING_MODES}. Received: rounding={rounding!r}"
    )


ROW = 32  # terms of the first-level sums: XLA's CPU backend leaves reductions this short alone
_PAD_RANK = 7  # leading 1-dims: a rank-9 reduction, which XLA does not hand to a library (rank <= 8)


def sum_of_squares(h):
    """`sum(h**2)` over the whole tensor, summed in two levels: rows of 32, then the rows.

    The summation order of a norm is free; this one is fast under XLA on the CPU, where one
    large reduction becomes a serial chain of scalar adds with the square unfused, or (JAX)
    a library call that first writes `h**2` out. The rows are a rank-9 view (so XLA keeps
    them in its own vectorized loop, with `h` and the square fused in) and an optimization
    barrier separates the levels (so XLA does not merge them back). Elsewhere it is two
    ordinary reductions. The last `size % 32` elements are summed on their own.
    """
    n = 1
    for dim in h.shape:
        n *= dim
    flat = ops.reshape(h, (n,))
    m = n // ROW * ROW
    if m == 0:
        return ops.sum(ops.square(flat))
    head = flat if m == n else flat[:m]
    rows = ops.sum(
        ops.square(ops.reshape(head, (1,) * _PAD_RANK + (m // ROW, ROW))),
        axis=-1,
    )
    (rows,) = optimization_barrier(rows)
    total = ops.sum(rows)
    if m < n:
        total = ops.add(total, ops.sum(ops.square(flat[m:])))
    return total


def compensation_term(h, step_size, gate, norm_source=None):
    """`r = gate * step_size * h / ||h||_F`, and 0 where `||h|| = 0`.

    The norm is the Frobenius norm of this one tensor, as in the authors' code.
    `norm_source`, if given, is `h` computed a second time (see `increment_and_error`); the
    norm is taken of it.
    """
    norm = ops.sqrt(sum_of_squares(h if norm_source is None else norm_source))
    positive = ops.greater(norm, 0)
    scale = ops.where(
        positive, gate * step_size / ops.where(positive, norm, 1), 0
    )
    return ops.multiply(scale, h)


def compensated_step(h, step_size=None, gate=None, norm_source=None):
    """`h + r`, the step before quantization; `gate=None` means `r = 0` (no norm computed)."""
    if gate is None:
        return h
    return ops.add(h, compensation_term(h, step_size, gate, norm_source))


def scaled_step(h, qp, step_size=None, gate=None):
    """`y = qp * (h + r)`: the compensated step in units of the grid `1 / qp`."""
    return ops.multiply(qp, compensated_step(h, step_size, gate))


def exact_integer_limit(dtype):
    """`2**24` (float32) or `2**53` (float64): from there on every float is an integer."""
    return (
        2.0**53
        if keras.backend.standardize_dtype(dtype) == "float64"
        else 2.0**24
    )


def increment_and_error(
    h,
    qp,
    step_size=None,
    gate=None,
    rounding="nearest",
    noise=None,
    norm_source=None,
):
    """The QSGLD increment and its rounding error in grid units.

    `delta = Q(y) * (1 / qp)` with `y = qp * (h + r)`, and `error = Q(y) - y`. Where `|y|` reaches
    `exact_integer_limit` the float format holds no fraction to round, so the step is
    applied as it is (`delta = h + r`, `error = 0`); this also keeps a finite step finite
    where `qp * (h + r)` would overflow, and gives the unrounded step where `qp = inf`.
    A `step_size` of 0 also applies the step unrounded and without noise (the random modes'
    noise does not depend on the step, so it would otherwise move frozen weights): with a
    learning rate of 0 the weights stay put, as with Keras' SGD (whose momentum, like
    QSGLD's, still carries earlier steps).

    `norm_source`: under XLA, the optimizers pass `h` computed a second time from inputs
    behind an optimization barrier, and the compensation's norm is taken of that copy: XLA
    then fuses each use of `h` with its own consumer instead of writing one `h` out for both
    (the same values; only the work is laid out differently).
    """
    delta, error, _ = increment_error_and_mask(
        h, qp, step_size, gate, rounding, noise, norm_source
    )
    return delta, error


def increment_error_and_mask(
    h,
    qp,
    step_size=None,
    gate=None,
    rounding="nearest",
    noise=None,
    norm_source=None,
):
    """`increment_and_error`, and where the step was rounded (a bool tensor: False where it
    was applied unrounded), which the noise statistics count."""
    x = compensated_step(h, step_size, gate, norm_source)
    y = ops.multiply(qp, x)
    q = quantize(y, rounding, noise)
    in_range = ops.less(ops.abs(y), exact_integer_limit(y.dtype))
    if step_size is not None:
        in_range = ops.logical_and(in_range, ops.greater(step_size, 0))
    # Q(y) times the cell 1 / qp, not Q(y) / qp: XLA rewrites a division by a broadcast scalar
    # into that product, so every backend and mode computes it this way and gets the same
    # bits for any qp (within one ulp of the division; the same for a power of two).
    cell = ops.divide(1.0, ops.convert_to_tensor(qp, dtype=y.dtype))
    delta = ops.where(in_range, ops.multiply(q, cell), x)
    error = ops.where(in_range, ops.subtract(q, y), 0.0)
    return delta, error, in_range


def quantized_increment(
    h, qp, step_size=None, gate=None, rounding="nearest", noise=None
):
    """The QSGLD increment `delta = Q(qp * (h + r)) / qp`.

    Args:
        h: the unquantized step (`-lr * g`, a momentum step, or Adam's step).
        qp: the resolution `Qp` (a scalar): increments lie on the grid `1 / qp`.
        step_size: the learning rate that scales the compensation (Adam's `a_k`).
        gate: the compensation gate `s` in [0, 1]; `None` means no compensation,
            which is then exactly quantized SGD.
        rounding: one of `ROUNDING_MODES` (see `quantize`).
        noise: uniform draws in [0, 1) of the shape of `h`, for the random modes.

    Returns:
        The increment, in the dtype of `h`, to add to the weights (see
        `increment_and_error` for steps beyond the float format's integer range).
    """
    return increment_and_error(h, qp, step_size, gate, rounding, noise)[0]
