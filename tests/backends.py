"""What differs between the Keras backends in the tests: how a function or an update compiles.

`BACKEND` is the backend this process runs (`KERAS_BACKEND`; each backend's tests run in a
process of their own). `jit(fn)` compiles a function of tensors as the backend compiles:
XLA on TensorFlow (`tf.function(jit_compile=True)`) and JAX (`jax.jit`), `torch.compile` on
PyTorch. `CompiledApply` runs `optimizer.apply` the way compiled training runs it, and
counts its traces.
"""

import keras
import pytest

BACKEND = keras.backend.backend()


class _CountingTorchBackend:
    """A `torch.compile` backend that counts the graphs it compiles, then uses inductor."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        return compile_fx(graph_module, example_inputs)


class Compiled:
    """`fn` compiled for this backend; `traces()` says how often it was traced (compiled)."""

    def __init__(self, fn):
        self._count = 0
        if BACKEND == "tensorflow":
            import tensorflow as tf

            self._fn = tf.function(fn, jit_compile=True)
            self.traces = self._fn.experimental_get_tracing_count
        elif BACKEND == "jax":
            import jax

            def counted(*args):
                self._count += 1  # runs at trace time only
                return fn(*args)

            self._fn = jax.jit(counted)
            self.traces = lambda: self._count
        elif BACKEND == "torch":
            import torch

            backend = _CountingTorchBackend()
            self._fn = torch.compile(fn, backend=backend)
            self.traces = lambda: backend.graphs
        else:
            raise NotImplementedError(BACKEND)

    def __call__(self, *args):
        return self._fn(*args)


def jit(fn):
    return Compiled(fn)


class CompiledApply:
    """`optimizer.apply(grads, variables)`, compiled as the backend's trainers compile it:
    inside `tf.function(jit_compile=True)` on TensorFlow, `jax.jit` of `stateless_apply`
    on JAX (the new values are written back to the variables), `torch.compile` on PyTorch.
    `traces()` counts compilations (torch: graphs compiled, one per graph break)."""

    def __init__(self, optimizer, variables):
        self.optimizer = optimizer
        self.variables = list(variables)
        optimizer.build(self.variables)
        if BACKEND == "jax":
            self._step = Compiled(
                lambda opt_values, values, grads: optimizer.stateless_apply(
                    opt_values, grads, values
                )
            )
        else:
            self._step = Compiled(
                lambda grads: optimizer.apply(grads, self.variables)
            )
        self.traces = self._step.traces

    def __call__(self, grads):
        grads = [keras.ops.convert_to_tensor(g) for g in grads]
        if BACKEND != "jax":
            self._step(grads)
            return
        values, opt_values = self._step(
            [v.value for v in self.optimizer.variables],
            [v.value for v in self.variables],
            grads,
        )
        for variable, value in zip(self.variables, values):
            variable.assign(value)
        for variable, value in zip(self.optimizer.variables, opt_values):
            variable.assign(value)


def float64_available():
    """JAX computes in float32 where float64 is asked for unless x64 mode is on."""
    if BACKEND == "jax":
        import jax

        return bool(jax.config.jax_enable_x64)
    return True


def tensor(x):
    """`x` as a tensor of its own NumPy dtype (Keras would turn float64 arrays into floatx)."""
    import numpy as np

    x = np.asarray(x)
    return keras.ops.convert_to_tensor(x, dtype=x.dtype.name)


_FLOAT64_MARKS = [
    pytest.mark.float64,  # `pytest -m float64` selects them for the JAX x64 run
    pytest.mark.skipif(
        not float64_available(),
        reason="float64 on JAX needs x64 mode (JAX_ENABLE_X64=1)",
    ),
]


def requires_float64(test):
    """Marks a test that needs float64 maths (skipped on JAX without x64 mode)."""
    for mark in _FLOAT64_MARKS:
        test = mark(test)
    return test


FLOAT_DTYPES = ["float32", pytest.param("float64", marks=_FLOAT64_MARKS)]
