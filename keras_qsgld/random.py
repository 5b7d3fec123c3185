"""Counter-based uniform draws that are bitwise identical with and without XLA.

TensorFlow's stateless Philox ops give different streams under XLA and without it (the
kernels map key and counter differently), so a run compiled with `jit_compile=True` would
not reproduce an eager one. This generator hashes (seed, element index) with integer
`keras.ops` only, which every backend and XLA evaluate identically, and costs about as
much as Philox under XLA. Each value passes through two rounds of Wellons' `lowbias32`
integer hash; the 24 high bits become a float in [0, 1).
"""

from keras import ops

_MASK32 = 0xFFFFFFFF


def _u32(value):
    return ops.convert_to_tensor(value, dtype="uint32")


def lowbias32(x):
    """Chris Wellons' `lowbias32` integer hash, on uint32 tensors (wraps modulo 2**32)."""
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))
    x = ops.multiply(x, _u32(0x7FEB352D))
    x = ops.bitwise_xor(x, ops.right_shift(x, _u32(15)))
    x = ops.multiply(x, _u32(0x846CA68B))
    return ops.bitwise_xor(x, ops.right_shift(x, _u32(16)))


def uniform_from_seed(shape, seed, dtype="float32"):
    """Uniform draws in [0, 1) with 24 random bits, a pure function of `seed` and position.

    Args:
        shape: the output shape.
        seed: a length-2 integer tensor (a `keras.random.SeedGenerator` state); only the
            low 32 bits of each entry are used.
        dtype: a float dtype.
    """
    seed = ops.cast(ops.bitwise_and(ops.cast(seed, "int64"), _MASK32), "uint32")
    key_a = lowbias32(ops.bitwise_xor(seed[0], _u32(0x9E3779B9)))
    key_b = lowbias32(ops.add(seed[1], key_a))
    size = 1
    for dim in shape:
        size = size * dim
    index = ops.cast(ops.arange(size), "uint32")
    bits = lowbias32(ops.add(lowbias32(ops.bitwise_xor(index, key_a)), key_b))
    high = ops.cast(ops.right_shift(bits, _u32(8)), dtype)
    return ops.reshape(ops.multiply(high, 2.0**-24), shape)
