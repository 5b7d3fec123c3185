"""The random roundings' draws in torch ops: `keras_qsgld.random`'s counter hash, the same bits.

The first hash round, `lowbias32(position ^ key_a)`, depends on the position and the seed's
first word alone, which `SeedGenerator.next` never advances: the eager update keeps it from
one update to the next, and both forms compute it once for all variables.
"""

import torch

from keras_qsgld.random import FIRST_KEY, LOWBIAS32_ROUNDS


def to_int32(value):
    """A Python integer's low 32 bits as a signed int32 value."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def lowbias32_int(x):
    """`keras_qsgld.random.lowbias32` on a Python integer (uint32 bits)."""
    x &= 0xFFFFFFFF
    for shift, multiplier in LOWBIAS32_ROUNDS:
        x ^= x >> shift
        if multiplier is not None:
            x = (x * multiplier) & 0xFFFFFFFF
    return x


def lowbias32_(x, tmp):
    """`lowbias32` in place on an int32 tensor (its uint32 bits), with `tmp` as scratch."""
    for shift, multiplier in LOWBIAS32_ROUNDS:
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (32 - shift)) - 1))
        if multiplier is not None:
            x.mul_(to_int32(multiplier))
    return x


def lowbias32(x):
    """`lowbias32` of an int32 tensor, functional (for traced graphs)."""
    for shift, multiplier in LOWBIAS32_ROUNDS:
        x = x ^ ((x >> shift) & ((1 << (32 - shift)) - 1))
        if multiplier is not None:
            x = x * to_int32(multiplier)
    return x


def seed_keys(state, count):
    """`(key_a, [key_b of variable i])` for the update's `count` variables: the keys
    `keras_qsgld.random.uniform_from_seed` derives from the seed `(s0, s1 + i)` that the
    `i`-th variable's `SeedGenerator.next()` would return. Python integers (uint32 bits)."""
    s0, s1 = (to_int32(int(s)) for s in state)
    key_a = lowbias32_int(s0 ^ FIRST_KEY)
    return key_a, [
        lowbias32_int(to_int32(s1 + i) + key_a) for i in range(count)
    ]


def draw_uniform_(inner, key_b, bits, tmp, out):
    """`out` = the uniform draws in [0, 1) at the positions whose first hash round is
    `inner` (`lowbias32(position ^ key_a)`), for the second key `key_b`: a Python integer,
    or an int32 tensor of one key per row (shape `(rows, 1)`) of `inner` cut into rows.
    `bits`, `tmp`: int32 scratch."""
    if isinstance(key_b, int):
        torch.add(inner, to_int32(key_b), out=bits)
    else:
        rows = key_b.shape[0]
        torch.add(inner.view(rows, -1), key_b, out=bits.view(rows, -1))
    lowbias32_(bits, tmp)
    torch.bitwise_right_shift(bits, 8, out=tmp).bitwise_and_(0xFFFFFF)
    return out.copy_(tmp).mul_(2.0**-24)
