"""Statistics of the quantization noise, accumulated during updates with `track_noise=True`.

Four running sums, each weighted by `1 / (number of trainable weights)` so that they stay
small in float32: the count of rounded increments, of those exactly 0, and the sum and sum of
squares of the rounding error `Q(y) - y` in grid units. Increments applied unrounded (at a
learning rate of 0, or beyond the float format's integer range) are not counted. They are optimizer variables (so
that compiled and stateless updates, as on JAX, carry them) but not optimizer state:
`QuantizedOptimizer` leaves them out of saved files, so turning `track_noise` on or off
between a save and a resume restores everything else.
"""

import math

from keras import ops

STATISTIC_NAMES = (
    "noise_count",
    "noise_zeros",
    "noise_error_sum",
    "noise_error_sq_sum",
)


class NoiseStatistics:
    """The four running sums of one optimizer.

    Args:
        optimizer: the optimizer that owns the variables (created with its `add_variable`).
        variables: the trainable variables it updates (their total size sets the weight).
    """

    def __init__(self, optimizer, variables):
        self.weight = 1.0 / max(1, sum(math.prod(v.shape) for v in variables))
        self.variables = [
            optimizer.add_variable(
                (), initializer="zeros", dtype="float32", name=name
            )
            for name in STATISTIC_NAMES
        ]

    def accumulate(self, optimizer, delta, error, rounded):
        """Adds one tensor's increments `delta` and rounding errors `error` (grid units)
        where `rounded` (a bool tensor) says the step was rounded: a step applied unrounded
        (a learning rate of 0, a step beyond the float format's integer range) has no
        rounding error to count."""
        count, zeros, error_sum, error_sq_sum = self.variables
        error = ops.cast(error, "float32")
        w = self.weight
        optimizer.assign_add(count, ops.sum(ops.cast(rounded, "float32")) * w)
        optimizer.assign_add(
            zeros,
            ops.sum(
                ops.cast(
                    ops.logical_and(rounded, ops.equal(delta, 0)), "float32"
                )
            )
            * w,
        )
        optimizer.assign_add(error_sum, ops.sum(error) * w)
        optimizer.assign_add(error_sq_sum, ops.sum(ops.square(error)) * w)

    def summary(self, reset=True):
        """A dict of floats: `zero_fraction`, `error_mean`, `error_variance` and
        `variance_ratio` (the variance over 1/12); NaN where nothing was accumulated."""
        count, zeros, error_sum, error_sq_sum = (
            float(ops.convert_to_numpy(v)) for v in self.variables
        )
        nan = float("nan")
        if count > 0:
            mean = error_sum / count
            variance = max(error_sq_sum / count - mean * mean, 0.0)
            stats = dict(
                zero_fraction=zeros / count,
                error_mean=mean,
                error_variance=variance,
            )
        else:
            stats = dict(zero_fraction=nan, error_mean=nan, error_variance=nan)
        stats["variance_ratio"] = stats["error_variance"] * 12.0
        if reset:
            self.reset()
        return stats

    def reset(self):
        for v in self.variables:
            v.assign(0.0)
