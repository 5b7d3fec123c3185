"""An independent NumPy (float64) reference of QSGLD, written from the formulas.

Nothing here imports `keras_qsgld` or keras: the tests compare the package against these
functions. Sources of the formulas: arXiv 2305.18864 and the authors' released code as
summarised in issue 2 (`shared/research/paper.md`, sections 1-4).

```
t      = step / steps_per_epoch
Qp     = eta * base ** floor(log_base(ln(t + 2)))
s      = 1 / (1 + exp(kappa * (t - tau0)))              # "logistic" (the paper)
s      = (tanh(-kappa * (t - tau0)) + 1) / 2            # "tanh" (the authors' code)
r      = s * step_size * h / ||h||_F                    # 0 where ||h|| = 0
y      = Qp * (h + r)
delta  = floor(y + 1/2) / Qp  ("nearest")  or  floor(y) / Qp  ("floor")
```
"""

import math

import numpy as np


# -- schedules -------------------------------------------------------------------------
def resolution(step, eta=2.0**19, base=2.0, steps_per_epoch=1):
    """`Qp` at optimizer step `step` (scalar or array), float64."""
    t = np.asarray(step, dtype=np.float64) / steps_per_epoch
    p = np.floor(np.log(np.log(t + 2.0)) / math.log(base))
    return eta * np.power(float(base), p)


def resolution_breakpoints(max_epoch, base=2.0):
    """Epochs `e ** (base ** p) - 2` in `(0, max_epoch]` where `Qp` changes."""
    points = []
    p = -10
    while True:
        t = math.exp(base**p) - 2.0
        if t > max_epoch:
            return points
        if t > 0:
            points.append(t)
        p += 1


def gate(step, kappa=2.0, tau0=10.0, steps_per_epoch=1, kind="logistic"):
    """The compensation gate `s` at `step` (scalar or array), float64."""
    t = np.asarray(step, dtype=np.float64) / steps_per_epoch
    x = -kappa * (t - tau0)
    if kind == "logistic":
        # 1 / (1 + e^-x), written to avoid overflow for large |x|.
        return np.where(
            x >= 0,
            1.0 / (1.0 + np.exp(-np.abs(x))),
            np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))),
        )
    if kind == "tanh":
        return (np.tanh(x) + 1.0) / 2.0
    raise ValueError(kind)


# -- the increment -----------------------------------------------------------------------
def quantize(y, rounding="nearest", noise=None):
    """`floor(y + 1/2)`, `floor(y)`, or with `noise = u ~ U[0, 1)`: `floor(y + u)`
    ("stochastic") and the subtractive dither `floor(y + (u - 1/2) + 1/2) - (u - 1/2)`."""
    y = np.asarray(y, dtype=np.float64)
    if rounding == "nearest":
        return np.floor(y + 0.5)
    if rounding == "floor":
        return np.floor(y)
    if rounding == "stochastic":
        return np.floor(y + noise)
    if rounding == "dithered":
        d = np.asarray(noise, dtype=np.float64) - 0.5
        return np.floor(y + d + 0.5) - d
    raise ValueError(rounding)


def compensation(h, step_size, s):
    """`r = s * step_size * h / ||h||_F`, 0 where the norm is 0."""
    h = np.asarray(h, dtype=np.float64)
    norm = math.sqrt(float(np.sum(h * h)))
    if norm == 0.0:
        return np.zeros_like(h)
    return s * step_size * h / norm


def scaled_step(h, qp, step_size=None, s=None):
    """`y = Qp * (h + r)` (r = 0 when `s` is None)."""
    h = np.asarray(h, dtype=np.float64)
    if s is not None:
        h = h + compensation(h, step_size, s)
    return qp * h


def increment(h, qp, step_size=None, s=None, rounding="nearest"):
    """`delta = Q(Qp (h + r)) / Qp`."""
    return quantize(scaled_step(h, qp, step_size, s), rounding) / qp


# -- trajectories --------------------------------------------------------------------------
def _schedule(value):
    """A float (constant), None, or a callable of the step."""
    if value is None or callable(value):
        return value
    return lambda step: float(value)


def qsgld_trajectory(
    w0,
    grads,
    lr,
    resolution_fn,
    compensation_fn=None,
    rounding="nearest",
    momentum=0.0,
    nesterov=False,
    noise=None,
):
    """Runs QSGLD on fixed gradients.

    Args:
        w0: list of initial arrays (one per variable).
        grads: list of arrays of shape `(steps,) + w.shape` (one per variable).
        lr: float learning rate, or a callable `step -> lr`.
        resolution_fn: float (fixed Qp) or callable `step -> Qp`.
        compensation_fn: None, a constant gate, or callable `step -> s`.
        noise: for the random roundings, `noise[k][i]`, the U[0, 1) draws of step k, variable i.

    Returns:
        dict with `weights` (list over steps of lists of arrays, after each step), `y`
        (the scaled steps `Qp (h + r)`), `qp` and `gate` per step, and the final `momentums`.
    """
    qp_fn, s_fn, lr_fn = (
        _schedule(resolution_fn),
        _schedule(compensation_fn),
        _schedule(lr),
    )
    w = [np.asarray(x, dtype=np.float64).copy() for x in w0]
    m = [np.zeros_like(x) for x in w]
    out = dict(weights=[], y=[], qp=[], gate=[])
    steps = len(grads[0])
    for k in range(steps):
        lr = lr_fn(k)
        qp = qp_fn(k)
        s = None if s_fn is None else s_fn(k)
        ys = []
        for i in range(len(w)):
            g = np.asarray(grads[i][k], dtype=np.float64)
            if momentum:
                m[i] = momentum * m[i] - lr * g
                h = momentum * m[i] - lr * g if nesterov else m[i]
            else:
                h = -lr * g
            y = scaled_step(h, qp, lr, s)
            w[i] = (
                w[i]
                + quantize(y, rounding, None if noise is None else noise[k][i])
                / qp
            )
            ys.append(y)
        out["weights"].append([x.copy() for x in w])
        out["y"].append(ys)
        out["qp"].append(qp)
        out["gate"].append(s)
    out["momentums"] = m
    return out


def qadam_trajectory(
    w0,
    grads,
    lr,
    resolution_fn,
    compensation_fn=None,
    rounding="nearest",
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-7,
    noise=None,
):
    """Runs QAdam on fixed gradients; bias correction and schedules at `k + 1`.

    Same arguments and return value as `qsgld_trajectory` (with `momentums` and
    `velocities` the final Adam moments, and `alpha` the step sizes per step).
    """
    qp_fn, s_fn, lr_fn = (
        _schedule(resolution_fn),
        _schedule(compensation_fn),
        _schedule(lr),
    )
    w = [np.asarray(x, dtype=np.float64).copy() for x in w0]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    out = dict(weights=[], y=[], qp=[], gate=[], alpha=[])
    steps = len(grads[0])
    for k in range(steps):
        lr = lr_fn(k)
        qp = qp_fn(k + 1)
        s = None if s_fn is None else s_fn(k + 1)
        alpha = (
            lr * math.sqrt(1.0 - beta_2 ** (k + 1)) / (1.0 - beta_1 ** (k + 1))
        )
        ys = []
        for i in range(len(w)):
            g = np.asarray(grads[i][k], dtype=np.float64)
            m[i] = beta_1 * m[i] + (1.0 - beta_1) * g
            v[i] = beta_2 * v[i] + (1.0 - beta_2) * g * g
            h = -alpha * m[i] / (np.sqrt(v[i]) + epsilon)
            y = scaled_step(h, qp, alpha, s)
            w[i] = (
                w[i]
                + quantize(y, rounding, None if noise is None else noise[k][i])
                / qp
            )
            ys.append(y)
        out["weights"].append([x.copy() for x in w])
        out["y"].append(ys)
        out["qp"].append(qp)
        out["gate"].append(s)
        out["alpha"].append(alpha)
    out["momentums"], out["velocities"] = m, v
    return out


# -- comparing a float32 implementation with this float64 reference -----------------------
def boundary_distance(y, rounding="nearest"):
    """Distance (in grid units) from `y` to the nearest rounding boundary."""
    y = np.asarray(y, dtype=np.float64)
    shifted = y + 0.5 if rounding == "nearest" else y
    return np.abs(shifted - np.round(shifted))


def assert_increment_matches(
    delta,
    y_ref,
    qp,
    rounding="nearest",
    rel_margin=1e-6,
    max_ambiguous=0.01,
    grid_atol=0.0,
):
    """Checks an implementation's increment `delta` against the reference's scaled step.

    `delta * qp` must be an integer everywhere (the grid); it must equal `Q(y_ref)` wherever
    `y_ref` lies further than `rel_margin * (1 + |y_ref|)` grid units from a rounding
    boundary (float32 rounding of the implementation may flip the others, by one cell at
    most), and at most a fraction `max_ambiguous` of the entries (or one) may be that close. `grid_atol` (in
    cells) allows for a `delta` measured as a difference of float32 weights.
    """
    cells = np.asarray(delta, dtype=np.float64) * float(qp)
    np.testing.assert_allclose(
        cells,
        np.round(cells),
        rtol=0,
        atol=grid_atol,
        err_msg="increment is not on the grid 1/Qp",
    )
    cells = np.round(cells)
    expected = quantize(y_ref, rounding)
    margin = rel_margin * (1.0 + np.abs(y_ref))
    clear = boundary_distance(y_ref, rounding) > margin
    assert np.sum(~clear) <= max(1, max_ambiguous * clear.size), (
        f"{np.sum(~clear)} entries are ambiguous"
    )
    np.testing.assert_array_equal(cells[clear], expected[clear])
    assert np.all(np.abs(cells - expected) <= 1)


# -- the random draws ------------------------------------------------------------------------
def _lowbias32(x):
    """Chris Wellons' `lowbias32` on uint32 NumPy arrays (wrapping uint32 arithmetic)."""
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def uniform_from_seed(shape, seed):
    """The package's counter-based draws, from their definition: two rounds of `lowbias32` of
    (element index XOR key_a) and key_b, keys derived from the two seed words; the 24 high
    bits as a float32 in [0, 1)."""
    seed = np.asarray(seed, np.int64).astype(np.uint32)
    with np.errstate(over="ignore"):
        key_a = _lowbias32(seed[0] ^ np.uint32(0x9E3779B9))
        key_b = _lowbias32(seed[1] + key_a)
        index = np.arange(int(np.prod(shape)), dtype=np.uint32)
        bits = _lowbias32(_lowbias32(index ^ key_a) + key_b)
    return (
        (bits >> np.uint32(8)).astype(np.float32) * np.float32(2.0**-24)
    ).reshape(shape)
