"""Argument checks shared by every public class, each message naming the argument and the value.

A real number is anything `numbers.Real` admits (Python and NumPy ints and floats, fractions)
or a 0-d array or tensor of an integer or float dtype (`np.float32(0.9)`,
`ds.cardinality().numpy()`, `np.array(3.0)`), the `ml_dtypes` floats (bfloat16, float8) and
PyTorch's bfloat16 tensors included. Bools and strings are never numbers here, and booleans
are accepted only where a bool is meant.
"""

import math
import numbers

import numpy as np

# Bounds of a normal float32, the precision of the update: Qp and a temperature must keep
# 1 / Qp and Qp * step finite and normal.
FLOAT32_MIN_NORMAL = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)

REAL_NUMBER = (
    "a real number is a Python, NumPy or ml_dtypes number (bfloat16 too), or a 0-d array "
    "or tensor of an integer or float dtype"
)


def _as_real(value):
    """`value` as a Python float, or None when it is not a real number."""
    if isinstance(value, (bool, np.bool_, str, bytes)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    try:  # 0-d NumPy arrays and backend tensors
        array = np.asarray(value)
    except Exception:  # a symbolic tensor, or a dtype NumPy cannot read
        return _tensor_as_real(value)
    if array.ndim != 0:
        return None
    if array.dtype.kind in "iuf":
        return float(array)
    if array.dtype.kind == "V" and array.dtype.names is None:
        try:  # ml_dtypes' floats (bfloat16, float8) convert to float64 exactly
            return float(array.astype(np.float64))
        except (TypeError, ValueError):
            return None
    return None


def _tensor_as_real(value):
    """A 0-d tensor NumPy cannot read (PyTorch's bfloat16) as a float, or None."""
    dtype = str(getattr(value, "dtype", "")).lower()
    if tuple(getattr(value, "shape", (None,))) != ():
        return None
    if not any(kind in dtype for kind in ("float", "int")) or "bool" in dtype:
        return None
    try:
        return float(value)
    except Exception:  # a symbolic tensor
        return None


def _number_text(x):
    """A bound as a reader wants it: whole numbers in full (2147483647, not 2.14748e+09)."""
    if float(x).is_integer() and abs(x) < 1e16:
        return str(int(x))
    return f"{x:g}"


def _range_text(minimum, maximum, exclusive_minimum, exclusive_maximum):
    parts = []
    if minimum is not None:
        parts.append(
            f"{'>' if exclusive_minimum else '>='} {_number_text(minimum)}"
        )
    if maximum is not None:
        parts.append(
            f"{'<' if exclusive_maximum else '<='} {_number_text(maximum)}"
        )
    return " and ".join(parts)


def check_real(
    name,
    value,
    minimum=None,
    maximum=None,
    exclusive_minimum=False,
    exclusive_maximum=False,
    allow_infinite=False,
    description="a real number",
):
    """Returns `value` as a Python float, or raises a `ValueError` naming `name`.

    Args:
        name: the argument's name, quoted in the message.
        value: what the caller passed.
        minimum, maximum: bounds (None: unbounded); `exclusive_*` make them strict.
        allow_infinite: accept +-inf (NaN is never accepted).
        description: what the argument is, for the message ("a learning rate", ...).
    """
    number = _as_real(value)
    wanted = description
    bounds = _range_text(minimum, maximum, exclusive_minimum, exclusive_maximum)
    if bounds:
        wanted += f" {bounds}"
    if not allow_infinite:
        wanted += ", finite"
    if number is None:
        raise ValueError(
            f"Argument `{name}` must be {wanted} ({REAL_NUMBER}). Received: {name}={value!r}"
        )
    if math.isnan(number) or (not allow_infinite and math.isinf(number)):
        raise ValueError(
            f"Argument `{name}` must be {wanted}. Received: {name}={value!r}"
        )
    too_low = minimum is not None and (
        number <= minimum if exclusive_minimum else number < minimum
    )
    too_high = maximum is not None and (
        number >= maximum if exclusive_maximum else number > maximum
    )
    if too_low or too_high:
        raise ValueError(
            f"Argument `{name}` must be {wanted}. Received: {name}={value!r}"
        )
    return number


def check_integer(
    name, value, minimum=None, maximum=None, description="an integer"
):
    """Returns `value` as a Python int: Python or NumPy integers and 0-d integer arrays.

    Floats are refused even when integral (a seed of 2.5 or 2.0 is a mistake).
    """
    if isinstance(value, (bool, np.bool_)):
        number = None
    elif isinstance(value, numbers.Integral):
        number = int(value)
    else:
        try:
            array = np.asarray(value)
            number = (
                int(array)
                if array.ndim == 0 and array.dtype.kind in "iu"
                else None
            )
        except Exception:
            number = None
    bounds = _range_text(minimum, maximum, False, False)
    wanted = f"{description} {bounds}" if bounds else description
    if (
        number is None
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
    ):
        raise ValueError(
            f"Argument `{name}` must be {wanted}. Received: {name}={value!r}"
        )
    return number


def check_bool(name, value):
    """Returns `value` if it is a bool (Python or NumPy); anything else raises."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ValueError(
        f"Argument `{name}` must be True or False. Received: {name}={value!r}"
    )


def check_choice(name, value, choices):
    """Returns `value` if it is one of `choices` (strings compared exactly)."""
    if isinstance(value, str) and value in choices:
        return value
    raise ValueError(
        f"Argument `{name}` must be one of {tuple(choices)}. Received: {name}={value!r}"
    )
