"""The backend-specific questions the maths asks: XLA's, and whether torch.compile traces.

XLA's CPU backend rewrites a large reduction into a serial loop of scalar adds and will not
fuse a square into it (and JAX hands reductions of rank <= 8 to a library that first writes
their input out). `quantization.sum_of_squares` avoids both by summing in two levels; these
functions let it keep XLA from merging the levels back into one reduction.
"""

import keras


def under_xla(x):
    """True where `x` is being traced for XLA: inside `jax.jit`, or a TensorFlow graph that
    XLA compiles. False eagerly, in a TensorFlow graph without XLA, and on PyTorch."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    if backend == "tensorflow":
        return tensorflow_graph_under_xla()
    return False


def torch_compiling():
    """True while `torch.compile` traces (PyTorch only)."""
    if keras.backend.backend() != "torch":
        return False
    import torch

    return torch.compiler.is_compiling()


def tensorflow_graph_under_xla():
    """True inside a TensorFlow graph that XLA compiles (False eagerly)."""
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:  # private TensorFlow modules: without them, no barrier (slower, same maths)
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False
    return control_flow_util.GraphOrParentsInXlaContext(
        tf_ops.get_default_graph()
    )


def optimization_barrier(*xs):
    """The identity, which XLA's simplifier and common-subexpression elimination do not look
    through (an HLO `opt-barrier`, removed by XLA itself before fusion); the identity
    elsewhere. Returns a tuple with one entry per argument."""
    backend = keras.backend.backend()
    if backend == "jax" and any(under_xla(x) for x in xs):
        import jax

        return tuple(jax.lax.optimization_barrier(xs))
    if backend == "tensorflow" and xs and under_xla(xs[0]):
        try:
            from tensorflow.compiler.tf2xla.python import xla
        except ImportError:
            return xs
        return tuple(xla.optimization_barrier(*xs))
    return xs
