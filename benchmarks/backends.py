"""How the benchmarks compile and time work on the Keras backend of this process.

`BACKEND` is the backend this process runs (Keras reads `KERAS_BACKEND` once, at import;
`benchmarks.speed` runs each backend in a process of its own). Per backend, the modes:

* TensorFlow: `xla` (`tf.function(jit_compile=True)`), `graph` (`tf.function` without XLA),
  `eager` (no function: op by op, or the optimizer's own eager XLA update).
* JAX: `jit` (`jax.jit`), `eager`.
* PyTorch: `compiled` (`torch.compile`), `eager`.

`compile_fn(fn, mode)` compiles a function of tensors, each call a compiled function of its
own (on PyTorch a fresh code object: Dynamo keys its cache, and its limit of 8 recompiles,
by code object, and candidates sharing one ran uncompiled past the limit);
`warm_up_compiler(mode)` pays a process's one-time compiler start-up before the first timed
candidate; `apply_function` makes a callable that
runs `optimizer.apply` once in a mode and waits for it (on JAX: `jax.jit` of
`optimizer.stateless_apply`, the state carried from call to call and donated, as Keras' JAX
trainer does), and `update_function` the same for an update `(values, grads) -> new values`
written into the variables; `block` waits for a result.
`tests/backends.py` holds the tests' counterpart (`Compiled`, `CompiledApply`).

Only the backend in use is imported (in the branches that need it): a process must not
import TensorFlow and PyTorch both (it has crashed).
"""

import types

import keras
from keras import ops

BACKEND = keras.backend.backend()

# `model.compile` arguments of each mode, for whole training steps.
COMPILE_ARGS = {
    "xla": dict(jit_compile=True),
    "jit": dict(jit_compile=True),
    "compiled": dict(jit_compile=True),
    "graph": dict(jit_compile=False),
    "eager": dict(jit_compile=False, run_eagerly=True),
}


def device():
    """Where this backend computes: "cpu", or the accelerator it found ("gpu", "cuda", ...)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if BACKEND == "jax":
        import jax

        return jax.default_backend()
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compile_fn(fn, mode):
    """`fn` compiled as `mode` compiles it on this backend: TensorFlow "xla" or "graph", JAX
    "jit", PyTorch "compiled"; "eager" leaves it as it is."""
    if mode == "eager":
        return fn
    if BACKEND == "tensorflow" and mode in ("xla", "graph"):
        import tensorflow as tf

        return tf.function(fn, jit_compile=(mode == "xla"), autograph=False)
    if BACKEND == "jax" and mode == "jit":
        import jax

        return jax.jit(fn)
    if BACKEND == "torch" and mode == "compiled":
        import torch

        return torch.compile(_with_own_code(fn))
    raise ValueError(
        f"Argument `mode` names no mode of {BACKEND}. Received: mode={mode!r}"
    )


def _with_own_code(fn):
    """A copy of the function `fn` with a code object of its own."""
    return types.FunctionType(
        fn.__code__.replace(),  # a new code object, equal to the old
        fn.__globals__,
        fn.__name__,
        fn.__defaults__,
        fn.__closure__,
    )


def warm_up_compiler(mode):
    """Compiles a trivial function once in `mode`: the first compilation of a process also
    starts the compiler (TensorFlow's and JAX's XLA, PyTorch's Inductor: seconds), which
    would otherwise be charged to whichever candidate comes first."""
    if mode == "eager":
        return
    x = ops.ones((8,))
    block(compile_fn(lambda t: ops.add(ops.multiply(t, 2.0), 1.0), mode)(x))


def block(result):
    """Waits until `result` (a tensor or a list of tensors) is computed."""
    if BACKEND == "jax":
        import jax

        return jax.block_until_ready(result)
    leaves = keras.tree.flatten(result)
    if leaves:
        # One element of the last result: TensorFlow and PyTorch return (or, on a GPU,
        # copy back) only once the work queued before it is done.
        ops.convert_to_numpy(ops.reshape(leaves[-1], (-1,))[:1])
    return result


def apply_function(optimizer, grads, variables, mode):
    """A callable that runs `optimizer.apply(grads, variables)` once, as `mode` runs it, and
    waits for the result. The optimizer is built on `variables` first."""
    optimizer.build(variables)
    if BACKEND == "jax":
        return _jax_apply_function(optimizer, grads, variables, mode)

    def apply():
        optimizer.apply(grads, variables)
        return (
            optimizer.iterations + 0
        )  # a result to wait for, after every update

    compiled = compile_fn(apply, mode)
    return lambda: block(compiled())


def _jax_apply_function(optimizer, grads, variables, mode):
    """`optimizer.stateless_apply` on JAX, the state carried from call to call. It starts
    from copies of the variables' values, so that optimizers sharing the variables do not
    invalidate each other's buffers, and `jit` donates them as Keras' JAX trainer does."""
    import jax
    import jax.numpy as jnp

    def step(optimizer_values, values, grads):
        return optimizer.stateless_apply(optimizer_values, grads, values)

    if mode == "jit":
        step = jax.jit(step, donate_argnums=(0, 1))
    state = {
        "values": [jnp.array(v.value, copy=True) for v in variables],
        "optimizer": [
            jnp.array(v.value, copy=True) for v in optimizer.variables
        ],
    }

    def apply():
        state["values"], state["optimizer"] = step(
            state["optimizer"], state["values"], grads
        )
        return jax.block_until_ready(state["values"])

    return apply


def update_function(update, variables, grads, mode):
    """A callable that runs `update(values, grads) -> new values` once in `mode`, writes the
    new values into `variables` (on JAX: carries them from call to call, donated, as
    `apply_function` does) and waits for them: an update in place, as optimizers make it."""
    if BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        step = jax.jit(update, donate_argnums=0) if mode == "jit" else update
        state = {"values": [jnp.array(v.value, copy=True) for v in variables]}

        def run():
            state["values"] = step(state["values"], grads)
            return jax.block_until_ready(state["values"])

        return run

    def assign():
        for variable, value in zip(
            variables, update([v.value for v in variables], grads)
        ):
            variable.assign(value)

    compiled = compile_fn(assign, mode)

    def run():
        compiled()
        return block(variables[-1].value)

    return run
