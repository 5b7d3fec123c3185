"""What differs between the Keras backends, picked at import as Keras picks its own.

- `keras_qsgld.backend.optimizer.BackendQuantizedOptimizer`: `QuantizedOptimizer` with what
  one backend needs on top: TensorFlow's XLA-compiled update outside XLA functions and its
  sparse gradients (`backend/tensorflow.py`); PyTorch's update in torch ops, chunk by chunk
  eagerly and as one graph under `torch.compile` (`backend/torch/`). JAX needs nothing beyond
  `keras.ops`: its compiled paths come from Keras' trainers.
- `keras_qsgld.backend.ops`: XLA's optimization barrier (for the fast norm), and whether
  XLA or `torch.compile` is tracing.

The private Keras contracts the package relies on, in one list: a Keras upgrade is checked
here. Each is guarded by CI's `make test` (Keras as pinned, every backend) and
`make test-keras-floor` (the oldest Keras allowed, TensorFlow and JAX), whose suites exercise
every line that uses it.

1. `Optimizer._backend_update_step(grads, trainable_variables, learning_rate)`: overridden
   (`optimizer.py`, `backend/tensorflow.py`, `backend/torch/__init__.py`) to evaluate the
   update's scalars once; they travel to each `update_step` in the `learning_rate` slot,
   which Keras' loop (and `tf.distribute`'s `extended.update`) hands on untouched.
2. `Optimizer._track_variable(variable)`: the seed generator's state becomes an optimizer
   variable, so it is saved and restored (`optimizer.py`).
3. `Optimizer._get_variable_index(variable)`: a variable's slots (momentum, Adam's moments),
   as Keras' own optimizers find them (`qsgld.py`, `qadam.py`, `backend/torch/steps.py`).
4. `keras.random.SeedGenerator`'s state `[seed, counter]`, whose `next()` returns it and adds 1
   to the counter: PyTorch's update reads it once and gives the `i`-th variable of an update
   `(seed, counter + i)`, the seeds `next()` would give (`backend/torch/`).
5. Attributes set through `self.__dict__`, around Keras' attribute tracker, for what is no
   optimizer state: TensorFlow's compiled update and its key, PyTorch's scratch buffers, the
   key of the last traced update (`backend/tensorflow.py`, `backend/torch/`, `optimizer.py`).
6. `keras.src.optimizers.optimizer.base_optimizer_keyword_args` (the docstrings' shared
   arguments) and `keras.src.utils.naming.auto_name` (optimizer names): each imported with
   a fallback should it move (`optimizer.py`).
7. On PyTorch, a Keras variable's `.value` is the `torch.nn.Parameter` that `assign` writes
   into (`copy_`), the same tensor for the variable's life: the eager update keeps it, and
   views of it, between updates (made again for other variables, or when its storage
   changes) (`backend/torch/eager.py`).
8. `keras.src.backend.common.stateless_scope.in_stateless_scope`: PyTorch's own update
   writes into the variables, so under `stateless_apply` the `keras.ops` update runs
   instead (`backend/torch/__init__.py`; without the module, the stateful update runs).
"""
