"""Counter-based uniform draws, bitwise identical on every backend, compiled or not.

TensorFlow's stateless Philox ops give different streams under XLA and without it, and each
Keras backend has its own generator, so neither would let a run reproduce across
`jit_compile` settings or backends. This generator hashes (seed, element index) with
Chris Wellons' `lowbias32` integer hash in `keras.ops`, and costs about as much as Philox
under XLA.

The arithmetic is done in int32, the one integer type every backend has in every mode
(JAX has no 64-bit integers without x64; Keras maps uint32 to int64 on torch, where the hash
would then never wrap). Two's-complement int32 multiplication wraps exactly as uint32
multiplication does, XOR is the same on both, and the logical right shift is an arithmetic
shift with the sign-extended bits masked off. The 24 high bits of the hash become a float
in [0, 1).
"""

from keras import ops


def _int32(value):
    """A uint32 constant as the int32 with the same bits."""
    value &= 0xFFFFFFFF
    return ops.convert_to_tensor(
        value - (1 << 32) if value >= 1 << 31 else value, dtype="int32"
    )


def _shift_right_logical(x, bits):
    """`x >> bits` on the uint32 bit pattern of the int32 `x`."""
    shifted = ops.right_shift(x, _int32(bits))
    return ops.bitwise_and(shifted, _int32((1 << (32 - bits)) - 1))


# `lowbias32`: per round, `x ^= x >> shift` (logical), then `x *= multiplier` (none last).
LOWBIAS32_ROUNDS = ((16, 0x7FEB352D), (15, 0x846CA68B), (16, None))
FIRST_KEY = 0x9E3779B9  # mixed into the seed's first word: `key_a`


def lowbias32(x):
    """Chris Wellons' `lowbias32` integer hash on the uint32 bits of int32 tensors."""
    for shift, multiplier in LOWBIAS32_ROUNDS:
        x = ops.bitwise_xor(x, _shift_right_logical(x, shift))
        if multiplier is not None:
            x = ops.multiply(x, _int32(multiplier))
    return x


def uniform_from_seed(shape, seed, dtype="float32"):
    """Uniform draws in [0, 1) with 24 random bits, a pure function of `seed` and position.

    Args:
        shape: the output shape.
        seed: a length-2 integer tensor (a `keras.random.SeedGenerator` state) whose entries
            lie in [0, 2**31).
        dtype: a float dtype.
    """
    seed = ops.cast(seed, "int32")
    key_a = lowbias32(ops.bitwise_xor(seed[0], _int32(FIRST_KEY)))
    key_b = lowbias32(ops.add(seed[1], key_a))
    size = 1
    for dim in shape:
        size = size * dim
    index = ops.arange(size, dtype="int32")
    bits = lowbias32(ops.add(lowbias32(ops.bitwise_xor(index, key_a)), key_b))
    high = ops.cast(_shift_right_logical(bits, 8), dtype)
    return ops.reshape(ops.multiply(high, 2.0**-24), shape)
