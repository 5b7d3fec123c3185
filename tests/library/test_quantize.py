"""The pure `keras.ops` maths in `keras_qsgld.quantization` against the NumPy reference."""

import numpy as np
import pytest
from keras import ops

import keras_qsgld as qmath  # the public pure functions: quantize, compensation_term, ...
from tests import reference as ref
from tests.backends import (
    FLOAT_DTYPES,
    float64_available,
    jit,
    requires_float64,
    tensor,
)

# Run again on JAX with x64 mode: float32 results must not change with it.
pytestmark = pytest.mark.x64

HALVES = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5], dtype=np.float32)


def test_nearest_is_round_half_up_not_half_to_even():
    got = ops.convert_to_numpy(qmath.quantize(HALVES, "nearest"))
    np.testing.assert_array_equal(got, [-2, -1, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(got, ref.quantize(HALVES, "nearest"))
    # ops.round is half to even, which is not the paper's Gauss bracket.
    assert not np.array_equal(ops.convert_to_numpy(ops.round(HALVES)), got)


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_quantize_matches_reference(rounding, dtype, rng):
    y = (rng.normal(0, 20, 5000)).astype(dtype)
    y[:8] = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 0.4999, -0.4999]
    got = ops.convert_to_numpy(qmath.quantize(tensor(y), rounding))
    np.testing.assert_array_equal(
        got, ref.quantize(y.astype(np.float64), rounding)
    )
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_nearest_is_exact_where_y_plus_half_would_round(dtype):
    """floor(y + 1/2) of the real number, not of the rounded sum y + 0.5: the largest
    float below 1/2, and odd integers in [2**23, 2**24) where float32 y + 0.5 ties to even."""
    below_half = np.nextafter(np.array(0.5, dtype), np.array(0.0, dtype))
    y = np.array(
        [
            below_half,
            -np.nextafter(np.array(0.5, dtype), np.array(1.0, dtype)),
            2**23 + 1,
            -(2**23 + 1),
            2**23 + 3,
            2**22 + 0.5,
            -(2**22 + 0.5),
            2**25,
            np.inf,
            -np.inf,
        ],
        dtype,
    )
    got = ops.convert_to_numpy(qmath.quantize(tensor(y), "nearest"))
    want = [
        0.0,
        -1.0,
        2**23 + 1,
        -(2**23 + 1),
        2**23 + 3,
        2**22 + 1,
        -(2**22),
        2**25,
        np.inf,
        -np.inf,
    ]
    np.testing.assert_array_equal(got, want)
    compiled = jit(lambda v: qmath.quantize(v, "nearest"))
    np.testing.assert_array_equal(
        ops.convert_to_numpy(compiled(tensor(y))), want
    )
    assert np.isnan(
        ops.convert_to_numpy(
            qmath.quantize(tensor(np.array([np.nan], dtype)), "nearest")
        )[0]
    )


@requires_float64
def test_compensation_term_matches_reference(rng):
    h = rng.normal(0, 1e-3, (13, 7))
    for gate, step_size in [(1.0, 0.1), (0.3, 0.05), (0.0, 0.1)]:
        got = ops.convert_to_numpy(
            qmath.compensation_term(tensor(h), step_size, gate)
        )
        np.testing.assert_allclose(
            got, ref.compensation(h, step_size, gate), rtol=1e-12, atol=0
        )
        # The term is a step of length gate * step_size along h.
        assert np.linalg.norm(got) == pytest.approx(
            gate * step_size, rel=1e-12, abs=1e-300
        )


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_zero_step_gives_zero_compensation_without_nan(dtype):
    h = tensor(np.zeros((4, 3), dtype))
    r = ops.convert_to_numpy(qmath.compensation_term(h, 0.1, 1.0))
    np.testing.assert_array_equal(r, np.zeros((4, 3)))
    delta = ops.convert_to_numpy(
        qmath.quantized_increment(h, 1024.0, 0.1, 1.0, "floor")
    )
    np.testing.assert_array_equal(delta, np.zeros((4, 3)))


@requires_float64
def test_scaled_step_without_gate_is_qp_times_h(rng):
    h = rng.normal(0, 1e-3, (6, 6)).astype(np.float32)
    got = ops.convert_to_numpy(qmath.scaled_step(tensor(h), np.float32(4096.0)))
    np.testing.assert_array_equal(got, np.float32(4096.0) * h)
    np.testing.assert_allclose(
        ops.convert_to_numpy(
            qmath.scaled_step(tensor(h.astype(np.float64)), 4096.0, 0.05, 0.7)
        ),
        ref.scaled_step(h, 4096.0, 0.05, 0.7),
        rtol=1e-12,
    )


@pytest.mark.parametrize("rounding", ["nearest", "floor"])
@pytest.mark.parametrize("gate", [None, 1.0, 0.25])
def test_quantized_increment_matches_reference_and_lies_on_grid(
    rounding, gate, rng
):
    h = rng.normal(0, 0.01, (50, 20))
    qp = 2.0**12
    y_ref = ref.scaled_step(h, qp, 0.05, gate)
    if float64_available():
        # float64 inputs: the same maths in the same precision, no ambiguous entries.
        delta64 = ops.convert_to_numpy(
            qmath.quantized_increment(tensor(h), qp, 0.05, gate, rounding)
        )
        np.testing.assert_array_equal(
            delta64, ref.increment(h, qp, 0.05, gate, rounding)
        )
    # float32 inputs: on the grid, and equal to the reference away from rounding boundaries.
    delta32 = ops.convert_to_numpy(
        qmath.quantized_increment(
            tensor(h.astype(np.float32)),
            np.float32(qp),
            np.float32(0.05),
            None if gate is None else np.float32(gate),
            rounding,
        )
    )
    assert delta32.dtype == np.float32
    ref.assert_increment_matches(delta32, y_ref, qp, rounding)


def test_quantized_increment_compiled(rng):
    h = rng.normal(0, 0.01, (30, 10)).astype(np.float32)
    fn = jit(
        lambda h, qp, s: qmath.quantized_increment(h, qp, 0.05, s, "nearest")
    )
    for qp in (256.0, 512.0, 1024.0):
        delta = ops.convert_to_numpy(
            fn(tensor(h), tensor(np.float32(qp)), tensor(np.float32(0.5)))
        )
        ref.assert_increment_matches(
            delta, ref.scaled_step(h.astype(np.float64), qp, 0.05, 0.5), qp
        )
    assert fn.traces() == 1


@pytest.mark.parametrize(
    "qp", [1000.0, 3.0**7, 1.0 / np.sqrt(24 * 0.05 * (1 / 64))]
)
def test_increment_bits_for_any_resolution_eager_and_compiled(qp, rng):
    """`Q(y) * (1 / qp)`, the same bits eager, compiled and in NumPy, for a `qp` that is
    not a power of two (where `Q(y) / qp` and XLA's rewrite of it into a product differ)."""
    h = (rng.normal(0, 30, 4000) / qp).astype(
        np.float32
    )  # steps of tens of cells
    qp32 = np.float32(qp)
    y = qp32 * h
    expected = np.floor(y + np.float32(0.5)) * (np.float32(1.0) / qp32)
    assert not np.array_equal(
        expected, np.floor(y + np.float32(0.5)) / qp32
    )  # the test can fail
    eager = ops.convert_to_numpy(
        qmath.quantized_increment(tensor(h), tensor(qp32))
    )
    fn = jit(lambda h, qp: qmath.quantized_increment(h, qp))
    compiled = ops.convert_to_numpy(fn(tensor(h), tensor(qp32)))
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(compiled, expected)


def test_rounding_error_is_white_noise_when_steps_span_many_cells(rng):
    """Q(y) - y is uniform on [-1/2, 1/2) (nearest) or (-1, 0] (floor): variance 1/12."""
    y = rng.normal(0, 30, 200_000).astype(np.float32)
    for rounding, mean in (("nearest", 0.0), ("floor", -0.5)):
        err = ops.convert_to_numpy(qmath.quantize(tensor(y), rounding)) - y
        assert abs(err.mean() - mean) < 0.005
        assert err.var() * 12 == pytest.approx(1.0, abs=0.02)


def test_float32_limit_no_rounding_beyond_2_pow_24(rng):
    """Where |Qp (h + r)| > 2**24 a float32 step is already an integer number of cells,
    so the rounding changes nothing: the increment carries no quantization noise."""
    qp = 2.0**20
    h = (
        rng.uniform(16.0, 100.0, 1000) * rng.choice([-1.0, 1.0], 1000)
        + rng.uniform(0, 1, 1000) / qp
    )
    y32 = np.float32(qp) * h.astype(np.float32)
    assert np.all(np.abs(y32) > 2**24)
    delta32 = ops.convert_to_numpy(
        qmath.quantized_increment(tensor(h.astype(np.float32)), np.float32(qp))
    )
    np.testing.assert_array_equal(
        delta32, h.astype(np.float32)
    )  # unchanged: error exactly 0
    if not float64_available():
        return
    # In float64 the same steps are rounded: the error is spread over [-1/2, 1/2) cells.
    err64 = (
        ops.convert_to_numpy(qmath.quantized_increment(tensor(h), qp)) - h
    ) * qp
    assert np.all(np.abs(err64) <= 0.5) and err64.var() * 12 == pytest.approx(
        1.0, abs=0.15
    )


def test_increment_and_error_beyond_the_exact_range_applies_the_step_unrounded():
    """|Qp (h + r)| >= 2**24 (float32) or 2**53 (float64): no fraction is left to round, so
    the step is added as it is, error 0, and a step whose Qp * h overflows stays finite."""
    from keras_qsgld.quantization import (
        exact_integer_limit,
        increment_and_error,
    )

    qp = np.float32(2.0**40)
    h = np.array([1e30, -3e38, 1.0, 0.3 / 2.0**40, -0.8 / 2.0**40], np.float32)
    delta, error = (
        ops.convert_to_numpy(t) for t in increment_and_error(tensor(h), qp)
    )
    np.testing.assert_array_equal(delta[:3], h[:3])
    np.testing.assert_array_equal(error[:3], 0.0)
    # Inside the range: the paper's rounding, with its error in grid units.
    np.testing.assert_array_equal(delta[3:] * qp, [0.0, -1.0])
    np.testing.assert_allclose(error[3:], [-0.3, -0.2], rtol=1e-6)
    assert (
        exact_integer_limit("float32") == 2.0**24
        and exact_integer_limit("float64") == 2.0**53
    )
    if not float64_available():
        return
    h64 = np.array(
        [2.0**30 + 0.25], np.float64
    )  # y = 2**30.x cells: float64 still rounds it
    delta64, error64 = (
        ops.convert_to_numpy(t) for t in increment_and_error(tensor(h64), 1.0)
    )
    np.testing.assert_array_equal(delta64, [2.0**30])
    np.testing.assert_array_equal(error64, [-0.25])


@pytest.mark.parametrize(
    "rounding", ["nearest", "floor", "stochastic", "dithered"]
)
def test_zero_step_size_applies_the_step_unrounded_and_without_noise(
    rounding, rng
):
    """A learning rate of 0 freezes the weights in every mode: the random modes' noise does
    not depend on the step, so without this rule `lr = 0` would still move weights."""
    h = tensor(np.zeros((50,), np.float32))
    noise = tensor(rng.uniform(0, 1, 50).astype(np.float32))
    for step_size, moves in ((0.0, False), (0.1, rounding == "dithered")):
        delta, error = (
            ops.convert_to_numpy(t)
            for t in qmath.increment_and_error(
                h,
                np.float32(16.0),
                np.float32(step_size),
                np.float32(0.5),
                rounding,
                noise,
            )
        )
        assert np.any(delta != 0) == moves
    # A nonzero step with step size 0 (momentum carrying earlier steps) is applied as it is.
    h = tensor(np.full((4,), 0.3, np.float32))
    delta, error = (
        ops.convert_to_numpy(t)
        for t in qmath.increment_and_error(h, np.float32(16.0), np.float32(0.0))
    )
    np.testing.assert_array_equal(delta, np.full((4,), 0.3, np.float32))
    np.testing.assert_array_equal(error, 0.0)


# -- the norm's summation order --------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", [(1,), (31,), (32,), (33,), (7, 5), (1000, 33), (3, 3, 64, 64)]
)
def test_sum_of_squares_matches_float64_eager_and_compiled(shape, rng):
    """Rows of 32, then the rows, plus the tail: the same sum (to float32 rounding) as a
    float64 evaluation, for sizes below, at and off multiples of 32."""
    h = rng.normal(0, 1e-3, shape).astype(np.float32)
    want = float(np.sum(h.astype(np.float64) ** 2))
    eager = float(ops.convert_to_numpy(qmath.sum_of_squares(tensor(h))))
    compiled = float(ops.convert_to_numpy(jit(qmath.sum_of_squares)(tensor(h))))
    assert eager == pytest.approx(want, rel=1e-6)
    assert compiled == pytest.approx(want, rel=1e-6)


def test_summation_order_moves_about_one_increment_in_a_million_by_one_cell(
    rng,
):
    """The summation order of the norm is free; it decides the last bits of `||h||`, which
    move an increment lying within float32 rounding of a cell boundary to the next cell.
    Against the same float32 maths with the correctly rounded norm, over 2**21 increments
    at the paper's resolution, eager and compiled (where XLA also contracts `h + s h` into
    fused multiply-adds): at most 8 increments differ, by one cell (measured over 5 seeds on
    TensorFlow and 3 on JAX: 0 eager, 0 or 1 compiled)."""
    n, qp, lr, gate = 2**21, 2.0**19, 0.01, 0.5
    f32 = np.float32
    h = (-f32(lr) * rng.normal(0, 1.0, n).astype(f32)).astype(f32)
    norm = f32(np.sqrt(np.sum(h.astype(np.float64) ** 2)))  # correctly rounded
    x = h + (f32(gate) * f32(lr) / norm) * h
    want = ref.quantize((f32(qp) * x).astype(np.float64))
    args = (f32(qp), f32(lr), f32(gate))
    eager = (
        ops.convert_to_numpy(qmath.quantized_increment(tensor(h), *args)) * qp
    )
    compiled = jit(lambda v, q, s, c: qmath.quantized_increment(v, q, s, c))
    compiled = (
        ops.convert_to_numpy(compiled(tensor(h), *map(tensor, args))) * qp
    )
    for cells in (eager, compiled):
        assert np.sum(cells != want) <= 8
        assert np.all(np.abs(cells - want) <= 1)
