"""The QSGLD maths as pure `keras.ops` functions, shared by every optimizer.

Kept apart from the optimizer classes (as optax keeps its transformations) so the
formula can be tested on its own against a NumPy reference.
"""

from keras import ops

ROUNDING_MODES = ("nearest", "floor")


def quantize(y, rounding="nearest"):
    """Rounds `y` to the integer grid.

    `"nearest"` is the paper's Gauss bracket `floor(y + 1/2)` (round half up; note
    that `ops.round` rounds half to even, which is not it). `"floor"` is what the
    authors' released code runs.
    """
    if rounding == "nearest":
        return ops.floor(ops.add(y, 0.5))
    if rounding == "floor":
        return ops.floor(y)
    raise ValueError(
        f"Argument `rounding` must be one of {ROUNDING_MODES}. Received: rounding={rounding!r}"
    )


def compensation_term(h, step_size, gate):
    """`r = gate * step_size * h / ||h||_F`, and 0 where `||h|| = 0`.

    The norm is the Frobenius norm of this one tensor, as in the authors' code.
    """
    norm = ops.sqrt(ops.sum(ops.square(h)))
    positive = ops.greater(norm, 0)
    scale = ops.where(positive, gate * step_size / ops.where(positive, norm, 1), 0)
    return ops.multiply(scale, h)


def scaled_step(h, qp, step_size=None, gate=None):
    """`y = qp * (h + r)`: the compensated step in units of the grid `1 / qp`.

    `gate=None` means no compensation (`r = 0`, and no norm is computed).
    """
    if gate is not None:
        h = ops.add(h, compensation_term(h, step_size, gate))
    return ops.multiply(qp, h)


def quantized_increment(h, qp, step_size=None, gate=None, rounding="nearest"):
    """The QSGLD increment `delta = Q(qp * (h + r)) / qp`.

    Args:
        h: the unquantized step (`-lr * g`, a momentum step, or Adam's step).
        qp: the resolution `Qp` (a scalar): increments lie on the grid `1 / qp`.
        step_size: the learning rate that scales the compensation (Adam's `a_k`).
        gate: the compensation gate `s` in [0, 1]; `None` means no compensation,
            which is then exactly quantized SGD.
        rounding: `"nearest"` (`floor(. + 1/2)`) or `"floor"`.

    Returns:
        The increment, in the dtype of `h`, to add to the weights.
    """
    return ops.divide(quantize(scaled_step(h, qp, step_size, gate), rounding), qp)
